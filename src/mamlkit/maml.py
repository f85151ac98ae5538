"""The public MAML module: any ``nn.Module`` plus a loss becomes a meta-learner."""

from functools import partial
from typing import Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

from mamlkit import functional as fn
from mamlkit.checks import (check_finite_result, check_learning_rate, check_model_takes, check_steps, check_task,
                            check_task_batch)
from mamlkit.errors import MamlkitError
from mamlkit.mapping import TaskMapping
from mamlkit.models.per_step_bn import PerStepBatchNorm
from mamlkit.rates import LearnedRates
from mamlkit.selection import ParameterSelection
from mamlkit.state_names import check_rates, publish, rename
from mamlkit.strategies import Strategy

class MAML(nn.Module):
    """Model-Agnostic Meta-Learning around an unmodified ``nn.Module``.

    ``meta_loss`` (also ``maml(*batch)``) is the mean query loss after ``inner_steps`` gradient steps on
    each task's support set, differentiable in ``maml.parameters()`` (the model's, plus learned rates),
    so any ``torch.optim`` optimizer over them performs the meta-update.

    Args (docs/algorithms.md says more):
        model: any module; frozen parameters are used but not adapted, buffers passed through, tied weights stay tied.
        loss_fn: ``loss_fn(prediction, target) -> scalar``, in the inner loop and on the query set.
        inner_lr, inner_steps, eval_inner_steps: α (where learned rates start), the inner steps of meta-training
            and of ``evaluate``/``adapt`` (default: ``inner_steps``).
        first_order: stop the gradient through the inner gradient.
        batching: ``"vmap"``, ``"loop"`` (plain autograd, task by task) or ``"auto"``: vmap unless the model
            cannot take it, and ``meta_backward`` times vmap, vmap in chunks and the loop (on image batches also
            the loop on channels-last images) and keeps the fastest.
        compile: ``torch.compile`` the meta-gradient of ``meta_backward`` (vmap only).
        learn_lr: ``"metasgd"``, a rate per parameter element (Li et al. 2017); ``"lslr"``, one per parameter
            tensor and inner step (MAML++; later steps reuse the last); ``None``: α fixed.
        adapt_only: fnmatch pattern(s) of the parameters the inner loop adapts (ANIL: ``"head.*"``); the others
            are meta-learned but fixed within a task.
        checkpoint_inner: recompute each inner step in backward instead of storing its graph (tasks then run
            in a loop: ``torch.utils.checkpoint`` does not compose with vmap in torch 2.13).
        meta_batch_chunk: ``meta_backward`` back-propagates this many tasks at a time (same gradient).
        check_finite: refuse NaN/inf in task data, adapted weights and evaluation metrics.
        strategy: how the meta-gradient is formed (the families pass theirs); a family refuses the
            options that do not apply to it in ``does_not_take``, each with the reason.
    """

    does_not_take: dict[str, str] = {}

    def __init__(self, model: nn.Module, loss_fn, inner_lr: float, inner_steps: int = 1, *,
                 eval_inner_steps: int | None = None, first_order: bool = False, batching: str = "auto",
                 compile: bool = False, learn_lr: str | None = None, adapt_only: str | Sequence[str] | None = None,
                 checkpoint_inner: bool = False, check_finite: bool = True, meta_batch_chunk: int | None = None,
                 strategy: Strategy | None = None):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise MamlkitError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        for option, value in (("learn_lr", learn_lr), ("compile", compile), ("checkpoint_inner", checkpoint_inner)):
            if value and option in self.does_not_take:
                raise MamlkitError(f"{type(self).__name__} does not take {option}={value!r}: "
                                   f"{self.does_not_take[option]}")
        if compile and (batching == "loop" or checkpoint_inner):
            raise MamlkitError("compile=True needs the vmap path; use batching='auto' or 'vmap' and "
                               "checkpoint_inner=False")
        self.model, self.loss_fn = model, loss_fn
        self.inner_lr = check_learning_rate(inner_lr, "inner_lr")
        self.inner_steps = check_steps(inner_steps, "inner_steps")
        self.eval_inner_steps = check_steps(inner_steps if eval_inner_steps is None else eval_inner_steps,
                                            "eval_inner_steps")
        self.first_order, self.compile, self.learn_lr = bool(first_order), compile, learn_lr
        self.checkpoint_inner, self.check_finite = bool(checkpoint_inner), bool(check_finite)
        self.strategy = strategy or Strategy()
        self.mapping = TaskMapping(model, batching, self.checkpoint_inner, meta_batch_chunk)
        self.selection = ParameterSelection(model, adapt_only, self.strategy.excluded)
        stepped = {**self.parameters_to_adapt(), **{n: p for n, p in model.named_parameters()
                                                    if n in self.strategy.excluded}}  # ProtoMAML's head steps too
        self.rates = LearnedRates(learn_lr, stepped, self.inner_lr, self.inner_steps)
        self._step_buffers = [f"{name}.step" if name else "step" for name, m in model.named_modules()
                              if isinstance(m, PerStepBatchNorm)]
        self._checked_dtypes = set()
        self._public = publish(self, learn_lr)

    @property
    def inner_lrs(self) -> dict[str, nn.Parameter]:
        """The learned rates by parameter name (empty unless ``learn_lr`` is set)."""
        return dict(self.rates.named_parameters())

    def parameters_to_adapt(self) -> fn.Params:
        """θ: the parameters the inner loop adapts, by name (tied ones once)."""
        return self.selection.adapted()

    def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True):
        """The meta-parameters: the model's parameters (its own names), then the rates as ``inner_lr.<name>``
        (LSLR: ``inner_lr_scale.<name>``)."""
        for name, p in super().named_parameters(prefix, recurse, remove_duplicate):
            yield rename(name, prefix + "." if prefix else "", self._public), p

    def load_state_dict(self, state: Mapping[str, Tensor], strict: bool = True, assign: bool = False):
        """Load ``state_dict()`` output (a plain model state dict where no rates are learned)."""
        check_rates(state, self.learn_lr, list(self.inner_lrs))
        try:
            return super().load_state_dict(state, strict, assign)
        except RuntimeError as error:
            reason = " ".join(str(error).split())[:300]
            raise MamlkitError(f"the state does not fit this {type(self).__name__} ({reason}); build it with "
                               f"the model and options the state was saved with") from None

    def lr_scheduler(self, optimizer: torch.optim.Optimizer):
        """The meta-learning-rate schedule this algorithm asks for (MAML++: cosine), or None."""
        return None

    def training_options(self) -> tuple[bool, Tensor | None]:
        """(first order?, weights of the query losses after each inner step or None) for this meta-iteration."""
        return self.first_order, None

    def _forward(self, constants: fn.Params, params: fn.Params, x: Tensor, step: int = 0) -> Tensor:
        """The model on ``x``; ``step`` selects the per-step BatchNorm sets (parameters after ``step`` steps)."""
        if self._step_buffers:
            like = constants[self._step_buffers[0]]
            index = torch.full((), step, dtype=like.dtype, device=like.device)
            constants = {**constants, **dict.fromkeys(self._step_buffers, index)}
        return functional_call(self.model, (params, constants), (x,))

    def inner_loop(self, constants: fn.Params, rates: Mapping[str, Tensor] | None = None) -> fn.InnerLoop:
        """The inner loop's forward, loss and rate; ``rates`` replace the learned ones (compile, evaluate)."""
        return fn.InnerLoop(at=lambda step: partial(self._forward, constants, step=step), loss_fn=self.loss_fn,
                            lr=self.rates.schedule(rates), checkpoint=self.checkpoint_inner)

    def _reference(self) -> Tensor:
        """A parameter whose dtype and device the task data must match."""
        return next(iter(self.model.parameters()))

    def _check_batch(self, *batch: Tensor) -> tuple[Tensor, ...]:
        """A meta-batch as the strategies take it: checked, and LSLR's rates projected after the last update."""
        check_task_batch(batch, self._reference(), self.check_finite)
        self._check_dtypes(batch[0][0], batch[1][0])
        self.strategy.check_labels(batch[1], batch[3])
        self.rates.project()
        return batch

    def _steps(self, steps: int | None) -> int:
        return self.eval_inner_steps if steps is None else check_steps(steps, "steps")

    def _check_dtypes(self, x: Tensor, y: Tensor) -> None:
        """Before a path is chosen: a model that cannot take these dtypes is a one-line error."""
        if (x.dtype, y.dtype) not in self._checked_dtypes:
            check_model_takes(partial(self._forward, {n: t.clone() for n, t in self.selection.constants().items()},
                                      self.parameters_to_adapt()), self.loss_fn, x, y)
            self._checked_dtypes.add((x.dtype, y.dtype))

    def _finite(self, value, what: str):
        if self.check_finite:
            check_finite_result(value, what)
        return value

    def forward(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor) -> Tensor:
        """``meta_loss``: calling the module (also inside DistributedDataParallel) gives the meta-objective."""
        return self.meta_loss(support_x, support_y, query_x, query_y)

    def meta_loss(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor) -> Tensor:
        """Mean post-adaptation query loss over the meta-batch (tensors ``[T, n, ...]``)."""
        return self.strategy.meta_loss(self, self._check_batch(support_x, support_y, query_x, query_y))

    def meta_backward(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor) -> Tensor:
        """Accumulate the meta-gradient into ``.grad`` of ``maml.parameters()``; return the mean query loss.
        For differentiable families the gradient of ``meta_loss`` (the strategy says how it is formed)."""
        return self.strategy.meta_backward(self, self._check_batch(support_x, support_y, query_x, query_y))

    def adapt(self, x: Tensor, y: Tensor, steps: int | None = None) -> fn.Params:
        """Adapted parameters for one task (``x [n, ...]``) after ``steps`` (default ``eval_inner_steps``)
        inner steps, differentiable unless first order."""
        check_task(x, y, self._reference(), self.check_finite)
        self._check_dtypes(x, y)
        self.strategy.check_labels(y)
        gradient = fn.func_gradient if self.mapping.uses_vmap() else fn.autograd_gradient
        adapted = fn.last(self.strategy.path(self.inner_loop(self.selection.constants()), self.parameters_to_adapt(),
                                             x, y, self._steps(steps), gradient, self.first_order))
        return self._finite(adapted, "the adapted parameters")

    def predict(self, x: Tensor, params: Mapping[str, Tensor] | None = None, step: int | None = None) -> Tensor:
        """The model on ``x`` with ``params`` (e.g. from ``adapt``) in place of its own; ``step`` (per-step
        BatchNorm) is how many inner steps produced them: by default ``eval_inner_steps``, 0 without params."""
        if params is None and self.strategy.excluded:
            raise MamlkitError(f"{type(self).__name__} builds part of the model from a support set: pass "
                               f"params=maml.adapt(x, y)")
        if step is None:
            step = 0 if params is None else self.eval_inner_steps
        return self._forward(self.selection.constants(), dict(params or self.parameters_to_adapt()), x, step=step)

    @torch.no_grad()
    def evaluate(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor,
                 steps: int | None = None, metrics: Mapping | None = None,
                 chunk_size: int | None = None) -> dict[str, Tensor]:
        """Query metrics before and after every inner step, per task: ``{name: [T, steps + 1]}``; ``metrics``
        maps names to ``metric(prediction, target) -> scalar`` (default: the loss); ``chunk_size`` bounds memory."""
        batch, steps = self._check_batch(support_x, support_y, query_x, query_y), self._steps(steps)
        metrics = dict(metrics or {"loss": self.loss_fn})
        loop = self.inner_loop(self.selection.constants(), {n: r.detach() for n, r in self.inner_lrs.items()})
        params = {name: p.detach() for name, p in self.parameters_to_adapt().items()}

        def per_task(gradient, sx, sy, qx, qy):
            path = self.strategy.path(loop, params, sx, sy, steps, gradient, first_order=True)
            return fn.adaptation_curve(loop, metrics, path, qx, qy)

        curves = self._finite(self.mapping(per_task, batch, chunk_size), "the evaluation metrics")
        return {name: curves[:, :, j] for j, name in enumerate(metrics)}

