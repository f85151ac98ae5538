"""The public MAML object: any ``nn.Module`` plus a loss becomes a meta-learner."""

import fnmatch
import warnings
from functools import partial
from typing import Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

from mamlkit import functional as fn
from mamlkit.checks import check_learning_rate, check_steps, check_task, check_task_batch
from mamlkit.errors import MamlkitError
from mamlkit.exact_norm import ExactNormalization
from mamlkit.models.per_step_bn import PerStepBatchNorm

BATCHING = ("auto", "vmap", "loop")
LEARN_LR = (None, "metasgd", "lslr")
RATE_PREFIX = "inner_lr."  # learned rates in parameters() / state_dict(): "inner_lr.<parameter name>"


def _running_stats_module(model: nn.Module) -> str | None:
    """Name of a batch/instance norm that would update running statistics in this forward, if any."""
    for name, module in model.named_modules():
        if (isinstance(module, (nn.modules.batchnorm._NormBase, PerStepBatchNorm)) and module.training
                and module.track_running_stats):
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


def accumulate_grad(tensors: Mapping[str, Tensor], grads: Mapping[str, Tensor]) -> None:
    """Add ``grads`` into ``.grad`` as ``backward()`` would, so ``optimizer.step()`` applies them
    (cloned: a gradient may be a view into a buffer shared by all parameters)."""
    for name, p in tensors.items():
        g = grads[name].detach()
        p.grad = g.clone() if p.grad is None else p.grad + g


def _select(names: Sequence[str], patterns: str | Sequence[str] | None) -> list[str]:
    """The names matching any of the fnmatch ``patterns`` (all names when ``patterns`` is None)."""
    if patterns is None:
        return list(names)
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    chosen = [n for n in names if any(fnmatch.fnmatchcase(n, pattern) for pattern in patterns)]
    if not chosen:
        raise MamlkitError(f"adapt_only={patterns} matches none of the trainable parameters "
                           f"{list(names)}; give fnmatch patterns such as 'head.*'")
    return chosen


class MAML:
    """Model-Agnostic Meta-Learning around an unmodified ``nn.Module``.

    The module's parameters (plus any learned inner learning rates) are the meta-parameters:
    ``meta_loss`` returns the mean query loss after ``inner_steps`` steps of gradient descent on
    each task's support set, differentiable with respect to ``maml.parameters()``, so any
    ``torch.optim`` optimizer over ``maml.parameters()`` performs the meta-update.

    Args:
        model: any module; parameters with ``requires_grad=False`` are used but not adapted, buffers
            are passed through, tied weights stay tied.
        loss_fn: ``loss_fn(prediction, target) -> scalar`` used in the inner loop and on the query set.
        inner_lr: α, the inner-loop step size (the initial value of learned rates).
        inner_steps: inner steps during meta-training.
        eval_inner_steps: inner steps for ``evaluate``/``adapt`` (defaults to ``inner_steps``).
        first_order: drop second derivatives (stop the gradient through the inner gradient).
        batching: ``"vmap"`` runs the meta-batch as one vectorised call, ``"loop"`` one task at a
            time with plain autograd, ``"auto"`` picks vmap unless the model cannot take it (then
            warns once and loops).
        compile: ``torch.compile`` the meta-gradient computed by ``meta_backward`` (vmap only).
        learn_lr: ``"metasgd"`` learns one rate per parameter element (Meta-SGD, Li et al. 2017),
            ``"lslr"`` one rate per parameter tensor and inner step (MAML++'s LSLR; steps beyond
            ``inner_steps`` reuse the last step's rates); ``None`` keeps α fixed.
        adapt_only: fnmatch pattern(s) of the parameter names the inner loop adapts (ANIL, Raghu
            et al. 2020: e.g. ``"head.*"``); the others are meta-learned but fixed within a task.
        checkpoint_inner: recompute each inner step during the backward pass instead of storing
            its graph, so memory grows by one copy of the adapted parameters per step instead of
            the step's activations; ``meta_backward`` then also back-propagates task by task. Uses
            ``torch.utils.checkpoint``, which does not compose with vmap/``torch.func.grad`` in
            torch 2.13: with ``batching="auto"`` tasks run in a Python loop (one warning).
    """

    def __init__(self, model: nn.Module, loss_fn, inner_lr: float, inner_steps: int = 1, *,
                 eval_inner_steps: int | None = None, first_order: bool = False,
                 batching: str = "auto", compile: bool = False, learn_lr: str | None = None,
                 adapt_only: str | Sequence[str] | None = None, checkpoint_inner: bool = False):
        if not isinstance(model, nn.Module):
            raise MamlkitError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if batching not in BATCHING:
            raise MamlkitError(f"batching must be one of {BATCHING}, got {batching!r}")
        if compile and batching == "loop":
            raise MamlkitError("compile=True needs the vmap path; use batching='auto' or 'vmap'")
        if learn_lr not in LEARN_LR:
            raise MamlkitError(f"learn_lr must be one of {LEARN_LR}, got {learn_lr!r}")
        if checkpoint_inner and (compile or batching == "vmap"):
            raise MamlkitError("checkpoint_inner=True runs tasks in a Python loop (torch.utils.checkpoint does "
                               "not compose with vmap in torch 2.13); use batching='auto' or 'loop' and compile=False")
        self.model = model
        self.loss_fn = loss_fn
        self.inner_lr = check_learning_rate(inner_lr, "inner_lr")
        self.inner_steps = check_steps(inner_steps, "inner_steps")
        self.eval_inner_steps = check_steps(inner_steps if eval_inner_steps is None else eval_inner_steps,
                                            "eval_inner_steps")
        self.first_order = bool(first_order)
        self.batching = batching
        self.compile = compile
        self.learn_lr = learn_lr
        self.checkpoint_inner = bool(checkpoint_inner)
        self.adapt_only = adapt_only
        self._step_buffers = [f"{name}.step" if name else "step" for name, m in model.named_modules()
                              if isinstance(m, PerStepBatchNorm)]
        self.inner_lrs = self._init_rates()  # also checks adapt_only
        self._vmap_failed = False
        self._compiled_meta_grad = {}
        if self.checkpoint_inner and batching == "auto":
            warnings.warn("mamlkit: checkpoint_inner=True: torch.utils.checkpoint does not compose with vmap in "
                          "torch 2.13, so tasks run in a Python loop", stacklevel=2)

    def _init_rates(self) -> dict[str, nn.Parameter]:
        if self.learn_lr is not None and self.inner_steps < 1:
            raise MamlkitError(f"learn_lr={self.learn_lr!r} needs inner_steps >= 1 (the rates are learned "
                               f"through the inner steps)")
        params = self.parameters_to_adapt()
        if self.learn_lr == "metasgd":
            return {n: nn.Parameter(torch.full_like(p.detach(), self.inner_lr)) for n, p in params.items()}
        if self.learn_lr == "lslr":
            return {n: nn.Parameter(torch.full((self.inner_steps,), self.inner_lr, dtype=p.dtype, device=p.device))
                    for n, p in params.items()}
        return {}

    # -- parameters -------------------------------------------------------------------------
    def parameters_to_adapt(self) -> fn.Params:
        """θ: the trainable parameters the inner loop adapts, by name (tied parameters appear once)."""
        trainable = {name: p for name, p in self.model.named_parameters() if p.requires_grad}
        return {name: trainable[name] for name in _select(list(trainable), self.adapt_only)}

    def _constants(self) -> fn.Params:
        """What the inner loop holds fixed: frozen parameters, buffers and (ANIL) the trainable
        parameters that are meta-learned but not adapted."""
        adapted = self.parameters_to_adapt()
        fixed = {name: p for name, p in self.model.named_parameters() if name not in adapted}
        return {**fixed, **dict(self.model.named_buffers())}

    def _fixed_trainable(self) -> fn.Params:
        adapted = self.parameters_to_adapt()
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad and n not in adapted}

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """The meta-parameters: the model's parameters, then the learned rates as ``inner_lr.<name>``."""
        yield from self.model.named_parameters()
        for name, rate in self.inner_lrs.items():
            yield RATE_PREFIX + name, rate

    def parameters(self) -> Iterator[nn.Parameter]:
        """What the meta-optimizer updates: ``torch.optim.Adam(maml.parameters(), lr=...)``."""
        return (p for _, p in self.named_parameters())

    def state_dict(self) -> dict[str, Tensor]:
        """The model's state dict plus the learned rates (``inner_lr.<name>``)."""
        return {**self.model.state_dict(), **{RATE_PREFIX + n: r.detach().clone() for n, r in self.inner_lrs.items()}}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Load ``state_dict()`` output (a plain model state dict where no rates are learned)."""
        rates = {k[len(RATE_PREFIX):]: v for k, v in state.items() if k.startswith(RATE_PREFIX)}
        if set(rates) != set(self.inner_lrs):
            raise MamlkitError(f"the state holds learned rates for {sorted(rates) or 'no parameters'} but this MAML "
                               f"(learn_lr={self.learn_lr!r}) learns {sorted(self.inner_lrs) or 'none'}; build it "
                               f"with the learn_lr and adapt_only the state was saved with")
        self.model.load_state_dict({k: v for k, v in state.items() if not k.startswith(RATE_PREFIX)})
        with torch.no_grad():
            for name, rate in self.inner_lrs.items():
                rate.copy_(rates[name])

    def lr_scheduler(self, optimizer: torch.optim.Optimizer):
        """The meta-learning-rate schedule this algorithm asks for (MAML++: cosine), or None."""
        return None

    def _forward(self, constants: fn.Params, params: fn.Params, x: Tensor, step: int | None = None) -> Tensor:
        """The model on ``x``; ``step`` selects the per-step BatchNorm sets (parameters after ``step`` steps)."""
        if step is not None and self._step_buffers:
            like = constants[self._step_buffers[0]]
            index = torch.full((), step, dtype=like.dtype, device=like.device)
            constants = {**constants, **dict.fromkeys(self._step_buffers, index)}
        return functional_call(self.model, (params, constants), (x,))

    def _forward_at(self, constants: fn.Params):
        """``forward_at`` for the functional inner loop: only models with per-step layers need one."""
        return partial(self._step_forward, constants) if self._step_buffers else None

    def _step_forward(self, constants: fn.Params, step: int):
        return partial(self._forward, constants, step=step)

    def _learning_rate(self, rates: Mapping[str, Tensor]):
        """The inner ``lr`` for the functional core: α, the Meta-SGD mapping, or LSLR's function of the step."""
        if self.learn_lr == "metasgd":
            return dict(rates)
        if self.learn_lr == "lslr":
            return lambda step: {n: r[min(step, r.shape[0] - 1)] for n, r in rates.items()}
        return self.inner_lr

    def _step_weights(self) -> Tensor | None:
        """Weights of the query losses after each inner step (MAML++'s multi-step loss), or None: final step only."""
        return None

    def _reference_tensor(self) -> Tensor | None:
        return next(iter(self.model.parameters()), None)

    # -- batching choice --------------------------------------------------------------------
    def _uses_vmap(self) -> bool:
        blocker = _running_stats_module(self.model)
        if self.batching == "vmap" and blocker:
            raise MamlkitError(f"BatchNorm '{blocker}' updates running statistics, which vmap cannot do per "
                               f"task; build it with track_running_stats=False (the paper's transductive mode) "
                               f"or use batching='loop'")
        if self.checkpoint_inner and blocker:
            raise MamlkitError(f"checkpoint_inner=True recomputes forwards, which would update BatchNorm "
                               f"'{blocker}' running statistics twice; use track_running_stats=False or "
                               f"checkpoint_inner=False")
        if self.batching == "loop" or self._vmap_failed or self.checkpoint_inner:
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
                   query_x: Tensor, query_y: Tensor, map_tasks=None, *, rates: Mapping[str, Tensor] | None = None,
                   step_weights: Tensor | None = None, first_order: bool | None = None) -> Tensor:
        """Mean query loss; ``rates`` default to the learned rates, ``first_order`` to ``self.first_order``."""
        forward = partial(self._forward, constants)
        lr = self._learning_rate(self.inner_lrs if rates is None else rates)
        first_order = self.first_order if first_order is None else first_order

        def per_task(gradient, sx, sy, qx, qy):
            return fn.query_loss(forward, self.loss_fn, params, sx, sy, qx, qy, lr, self.inner_steps, first_order,
                                 gradient, forward_at=self._forward_at(constants), checkpoint=self.checkpoint_inner,
                                 step_weights=step_weights)

        return (map_tasks or self._map_tasks)(per_task, (support_x, support_y, query_x, query_y)).mean()

    def _variant_options(self) -> dict:
        """Keyword arguments of ``_objective`` this configuration needs (none for plain MAML)."""
        weights = self._step_weights()
        return {} if weights is None else {"step_weights": weights}

    def meta_loss(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor) -> Tensor:
        """Mean post-adaptation query loss over the meta-batch (tensors ``[T, n, ...]``)."""
        check_task_batch((support_x, support_y, query_x, query_y), self._reference_tensor())
        return self._objective(self.parameters_to_adapt(), self._constants(),
                               support_x, support_y, query_x, query_y, **self._variant_options())

    def meta_backward(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor) -> Tensor:
        """Accumulate the meta-gradient into ``.grad`` of ``maml.parameters()``; return the loss.

        The same gradient as ``meta_loss(...).backward()``; with ``compile=True`` it is computed by
        a compiled ``torch.func.grad_and_value`` of the whole objective (one compilation per
        derivative order); with ``checkpoint_inner=True`` task by task, to bound memory.
        """
        if self.checkpoint_inner:
            return self._meta_backward_by_task(support_x, support_y, query_x, query_y)
        if not (self.compile and self._uses_vmap()):
            loss = self.meta_loss(support_x, support_y, query_x, query_y)
            loss.backward()
            return loss.detach()
        check_task_batch((support_x, support_y, query_x, query_y), self._reference_tensor())
        if self.first_order not in self._compiled_meta_grad:
            self._compiled_meta_grad[self.first_order] = torch.compile(
                torch.func.grad_and_value(partial(self._meta_objective, first_order=self.first_order)))
        meta = {"params": self.parameters_to_adapt(), "fixed": self._fixed_trainable(), "rates": self.inner_lrs}
        constants = {n: t for n, t in self._constants().items() if n not in meta["fixed"]}
        grads, loss = self._compiled_meta_grad[self.first_order](meta, constants, support_x, support_y, query_x,
                                                                 query_y, **self._variant_options())
        for group, tensors in meta.items():
            accumulate_grad(tensors, grads[group])
        return loss.detach()

    def _meta_backward_by_task(self, *batch: Tensor) -> Tensor:
        """With ``checkpoint_inner`` tasks run one by one anyway: back-propagate each task's share of the
        loss as soon as it exists, so one task's chain of stored parameters is alive at a time, not T."""
        check_task_batch(batch, self._reference_tensor())
        tasks, losses = batch[0].shape[0], []
        for i in range(tasks):
            loss = self._objective(self.parameters_to_adapt(), self._constants(), *(t[i:i + 1] for t in batch),
                                   **self._variant_options()) / tasks
            loss.backward()
            losses.append(loss.detach())
        return torch.stack(losses).sum()

    def _meta_objective(self, meta: dict[str, fn.Params], constants: fn.Params, *batch, first_order: bool,
                        **options) -> Tensor:
        """``_objective`` as a function of every meta-parameter, for ``grad_and_value``."""
        extra = {"rates": meta["rates"]} if meta["rates"] else {}
        return self._objective(meta["params"], {**constants, **meta["fixed"]}, *batch, map_tasks=_vmap_tasks,
                               first_order=first_order, **extra, **options)

    # -- adaptation and evaluation ----------------------------------------------------------
    def adapt(self, x: Tensor, y: Tensor, steps: int | None = None) -> fn.Params:
        """Adapted parameters for one task (``x [n, ...]``), differentiable unless first order."""
        check_task(x, y, self._reference_tensor())
        steps = self.eval_inner_steps if steps is None else check_steps(steps, "steps")
        gradient = fn.func_gradient if self._uses_vmap() else fn.autograd_gradient
        constants = self._constants()
        return fn.adapt(partial(self._forward, constants), self.loss_fn, self.parameters_to_adapt(), x, y,
                        self._learning_rate(self.inner_lrs), steps, self.first_order, gradient,
                        forward_at=self._forward_at(constants), checkpoint=self.checkpoint_inner)

    def predict(self, x: Tensor, params: Mapping[str, Tensor] | None = None, step: int | None = None) -> Tensor:
        """Run the model on ``x`` with ``params`` (e.g. from ``adapt``) in place of its own.

        ``step`` (per-step BatchNorm only) is how many inner steps produced ``params``: by default
        ``eval_inner_steps`` when ``params`` are given, else 0.
        """
        if step is None:
            step = 0 if params is None else self.eval_inner_steps
        return self._forward(self._constants(), dict(params or self.parameters_to_adapt()), x, step=step)

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
        constants = self._constants()
        forward = partial(self._forward, constants)
        params = {name: p.detach() for name, p in self.parameters_to_adapt().items()}
        lr = self._learning_rate({n: r.detach() for n, r in self.inner_lrs.items()})

        def per_task(gradient, sx, sy, qx, qy):
            return fn.adaptation_curve(forward, self.loss_fn, metrics, params, sx, sy, qx, qy, lr, steps, gradient,
                                       forward_at=self._forward_at(constants))

        return self._curves_by_metric(per_task, tensors, metrics, chunk_size)

    def _curves_by_metric(self, per_task, tensors: tuple[Tensor, ...], metrics: Mapping,
                          chunk_size: int | None) -> dict[str, Tensor]:
        """``evaluate``'s result from a per-task curve ``[steps + 1, len(metrics)]``, in chunks of tasks."""
        chunk_size = chunk_size or tensors[0].shape[0]
        curves = torch.cat([self._map_tasks(per_task, tuple(t[i:i + chunk_size] for t in tensors))
                            for i in range(0, tensors[0].shape[0], chunk_size)])
        return {name: curves[:, :, j] for j, name in enumerate(metrics)}
