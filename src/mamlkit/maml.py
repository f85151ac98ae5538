"""The public MAML object: any ``nn.Module`` plus a loss becomes a meta-learner."""

import warnings
from functools import partial
from typing import Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call

from mamlkit import functional as fn
from mamlkit.checks import check_learning_rate, check_steps, check_task, check_task_batch
from mamlkit.errors import MamlkitError
from mamlkit.exact_norm import ExactNormalization

BATCHING = ("auto", "vmap", "loop")


def _running_stats_module(model: nn.Module) -> str | None:
    """Name of a batch/instance norm that would update running statistics in this forward, if any."""
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._NormBase) and module.training and module.track_running_stats:
            return name or type(module).__name__
    return None


def _vmap_tasks(per_task, tensors: tuple[Tensor, ...]) -> Tensor:
    """``per_task(gradient, *task_tensors)`` for every task as one vectorised call."""
    with ExactNormalization():
        return torch.vmap(partial(per_task, fn.func_gradient), randomness="different")(*tensors)


def _loop_tasks(per_task, tensors: tuple[Tensor, ...]) -> Tensor:
    """``per_task(gradient, *task_tensors)`` task by task, with plain autograd."""
    return torch.stack([per_task(fn.autograd_gradient, *(t[i] for t in tensors))
                        for i in range(tensors[0].shape[0])])


class MAML:
    """Model-Agnostic Meta-Learning around an unmodified ``nn.Module``.

    The module's parameters are the meta-parameters θ: ``meta_loss`` returns the mean query loss
    after ``inner_steps`` steps of gradient descent on each task's support set, differentiable with
    respect to ``model.parameters()``, so any ``torch.optim`` optimizer performs the meta-update.

    Args:
        model: any module; parameters with ``requires_grad=False`` are used but not adapted, buffers
            are passed through, tied weights stay tied.
        loss_fn: ``loss_fn(prediction, target) -> scalar`` used in the inner loop and on the query set.
        inner_lr: α, the inner-loop step size.
        inner_steps: inner steps during meta-training.
        eval_inner_steps: inner steps for ``evaluate``/``adapt`` (defaults to ``inner_steps``).
        first_order: drop second derivatives (stop the gradient through the inner gradient).
        batching: ``"vmap"`` runs the meta-batch as one vectorised call, ``"loop"`` one task at a
            time with plain autograd, ``"auto"`` picks vmap unless the model cannot take it (then
            warns once and loops).
        compile: ``torch.compile`` the meta-gradient computed by ``meta_backward`` (vmap only).
    """

    def __init__(self, model: nn.Module, loss_fn, inner_lr: float, inner_steps: int = 1, *,
                 eval_inner_steps: int | None = None, first_order: bool = False,
                 batching: str = "auto", compile: bool = False):
        if not isinstance(model, nn.Module):
            raise MamlkitError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if batching not in BATCHING:
            raise MamlkitError(f"batching must be one of {BATCHING}, got {batching!r}")
        if compile and batching == "loop":
            raise MamlkitError("compile=True needs the vmap path; use batching='auto' or 'vmap'")
        self.model = model
        self.loss_fn = loss_fn
        self.inner_lr = check_learning_rate(inner_lr, "inner_lr")
        self.inner_steps = check_steps(inner_steps, "inner_steps")
        self.eval_inner_steps = check_steps(inner_steps if eval_inner_steps is None else eval_inner_steps,
                                            "eval_inner_steps")
        self.first_order = bool(first_order)
        self.batching = batching
        self.compile = compile
        self._vmap_failed = False
        self._compiled_meta_grad = None

    # -- parameters -------------------------------------------------------------------------
    def parameters_to_adapt(self) -> fn.Params:
        """θ: the trainable parameters, by name (tied parameters appear once)."""
        return {name: p for name, p in self.model.named_parameters() if p.requires_grad}

    def _constants(self) -> fn.Params:
        frozen = {name: p for name, p in self.model.named_parameters() if not p.requires_grad}
        return {**frozen, **dict(self.model.named_buffers())}

    def _forward(self, constants: fn.Params, params: fn.Params, x: Tensor) -> Tensor:
        return functional_call(self.model, (params, constants), (x,))

    def _reference_tensor(self) -> Tensor | None:
        return next(iter(self.model.parameters()), None)

    # -- batching choice --------------------------------------------------------------------
    def _uses_vmap(self) -> bool:
        blocker = _running_stats_module(self.model)
        if self.batching == "vmap" and blocker:
            raise MamlkitError(f"BatchNorm '{blocker}' updates running statistics, which vmap cannot do per "
                               f"task; build it with track_running_stats=False (the paper's transductive mode) "
                               f"or use batching='loop'")
        if self.batching == "loop" or self._vmap_failed:
            return False
        if self.batching == "auto" and blocker:
            warnings.warn(f"mamlkit: BatchNorm '{blocker}' tracks running statistics, so tasks run in a "
                          f"Python loop; use track_running_stats=False to batch them with vmap", stacklevel=3)
            return False
        return True

    def _map_tasks(self, per_task, tensors: tuple[Tensor, ...]) -> Tensor:
        """vmap over tasks where the model allows it, else (or after vmap fails) a Python loop."""
        if self._uses_vmap():
            try:
                return _vmap_tasks(per_task, tensors)
            except (RuntimeError, NotImplementedError) as error:
                if self.batching == "vmap":
                    raise
                self._vmap_failed = True
                reason = str(error).strip().splitlines()[0][:160]
                warnings.warn(f"mamlkit: vmap cannot take this model ({reason}); tasks now run in a Python loop",
                              stacklevel=3)
        return _loop_tasks(per_task, tensors)

    # -- meta-training ----------------------------------------------------------------------
    def _objective(self, params: fn.Params, constants: fn.Params, support_x: Tensor, support_y: Tensor,
                   query_x: Tensor, query_y: Tensor, map_tasks=None) -> Tensor:
        forward = partial(self._forward, constants)

        def per_task(gradient, sx, sy, qx, qy):
            return fn.query_loss(forward, self.loss_fn, params, sx, sy, qx, qy, self.inner_lr,
                                 self.inner_steps, self.first_order, gradient)

        return (map_tasks or self._map_tasks)(per_task, (support_x, support_y, query_x, query_y)).mean()

    def meta_loss(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor) -> Tensor:
        """Mean post-adaptation query loss over the meta-batch (tensors ``[T, n, ...]``)."""
        check_task_batch((support_x, support_y, query_x, query_y), self._reference_tensor())
        return self._objective(self.parameters_to_adapt(), self._constants(),
                               support_x, support_y, query_x, query_y)

    def meta_backward(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor) -> Tensor:
        """Accumulate the meta-gradient into ``.grad`` of the model's parameters; return the loss.

        The same gradient as ``meta_loss(...).backward()``; with ``compile=True`` it is computed by
        a compiled ``torch.func.grad_and_value`` of the whole objective.
        """
        if not (self.compile and self._uses_vmap()):
            loss = self.meta_loss(support_x, support_y, query_x, query_y)
            loss.backward()
            return loss.detach()
        check_task_batch((support_x, support_y, query_x, query_y), self._reference_tensor())
        if self._compiled_meta_grad is None:
            self._compiled_meta_grad = torch.compile(
                torch.func.grad_and_value(partial(self._objective, map_tasks=_vmap_tasks)))
        params = self.parameters_to_adapt()
        grads, loss = self._compiled_meta_grad(params, self._constants(), support_x, support_y, query_x, query_y)
        for name, p in params.items():
            p.grad = grads[name] if p.grad is None else p.grad + grads[name]
        return loss.detach()

    # -- adaptation and evaluation ----------------------------------------------------------
    def adapt(self, x: Tensor, y: Tensor, steps: int | None = None) -> fn.Params:
        """Adapted parameters for one task (``x [n, ...]``), differentiable unless first order."""
        check_task(x, y, self._reference_tensor())
        steps = self.eval_inner_steps if steps is None else check_steps(steps, "steps")
        gradient = fn.func_gradient if self._uses_vmap() else fn.autograd_gradient
        return fn.adapt(partial(self._forward, self._constants()), self.loss_fn, self.parameters_to_adapt(),
                        x, y, self.inner_lr, steps, self.first_order, gradient)

    def predict(self, x: Tensor, params: Mapping[str, Tensor] | None = None) -> Tensor:
        """Run the model on ``x`` with ``params`` (e.g. from ``adapt``) in place of its own."""
        return self._forward(self._constants(), dict(params or self.parameters_to_adapt()), x)

    @torch.no_grad()
    def evaluate(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor,
                 steps: int | None = None, metrics: Mapping | None = None,
                 chunk_size: int | None = None) -> dict[str, Tensor]:
        """Query metrics before and after every inner step, per task: ``{name: [T, steps + 1]}``.

        ``metrics`` maps names to ``metric(prediction, target) -> scalar`` (default: the loss).
        Tasks run in chunks of ``chunk_size`` to bound memory.
        """
        tensors = (support_x, support_y, query_x, query_y)
        check_task_batch(tensors, self._reference_tensor())
        steps = self.eval_inner_steps if steps is None else check_steps(steps, "steps")
        metrics = dict(metrics or {"loss": self.loss_fn})
        forward = partial(self._forward, self._constants())
        params = {name: p.detach() for name, p in self.parameters_to_adapt().items()}

        def per_task(gradient, sx, sy, qx, qy):
            return fn.adaptation_curve(forward, self.loss_fn, metrics, params, sx, sy, qx, qy,
                                       self.inner_lr, steps, gradient)

        chunk_size = chunk_size or support_x.shape[0]
        curves = torch.cat([self._map_tasks(per_task, tuple(t[i:i + chunk_size] for t in tensors))
                            for i in range(0, support_x.shape[0], chunk_size)])
        return {name: curves[:, :, j] for j, name in enumerate(metrics)}
