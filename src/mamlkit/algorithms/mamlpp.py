"""MAML++ (Antoniou, Edwards & Storkey, "How to train your MAML", ICLR 2019), each trick a switch.

- ``multi_step_loss``: the meta-objective is Σ_s v_s L_query(θ_s) over the inner steps, with the
  importance vector v annealed from uniform toward the last step over ``msl_epochs`` epochs
  (non-final weights never below 0.03/N), then the last step's loss alone.
- ``per_step_bn``: the model's BatchNorm layers become ``PerStepBatchNorm`` with weights, biases
  and running statistics per inner step (BNWB + BNRS).
- ``learn_lr="lslr"``: one learned rate per parameter tensor and inner step (LSLR).
- ``first_order_epochs``: derivative-order annealing, first order for the first epochs.
- ``cosine_iterations``: cosine annealing of the meta learning rate to ``min_meta_lr``
  (``maml.lr_scheduler(optimizer)`` returns the scheduler; step it once per meta-iteration).

Schedules count meta-iterations: each ``meta_backward`` call is one (when you call ``meta_loss``
yourself, add 1 to ``maml.iteration`` after each meta-update); an epoch is
``iterations_per_epoch`` of them (500 in the paper). ``iteration`` is saved in ``state_dict()``.
"""

from typing import Sequence

import torch
from torch import Tensor, nn

from mamlkit.checks import check_learning_rate, check_steps
from mamlkit.errors import MamlkitError
from mamlkit.maml import MAML
from mamlkit.models.per_step_bn import per_step_batchnorm

ITERATION_KEY = "mamlpp.iteration"


def importance_weights(steps: int, epoch: int, msl_epochs: int) -> list[float]:
    """MAML++'s per-step loss weights at ``epoch``: uniform at 0, moving linearly to the last step;
    each non-final weight stays ≥ 0.03/steps and the weights sum to 1."""
    decay = 1.0 / steps / msl_epochs
    floor = 0.03 / steps
    weights = [max(1.0 / steps - epoch * decay, floor) for _ in range(steps - 1)]
    return weights + [min(1.0 / steps + epoch * (steps - 1) * decay, 1.0 - (steps - 1) * floor)]


class MAMLPlusPlus(MAML):
    """MAML with MAML++'s training tricks; every switch defaults to the paper's setting.

    Args (beyond ``MAML``'s):
        multi_step_loss: weighted query losses after every inner step while ``epoch < msl_epochs``.
        msl_epochs: epochs over which the importance vector anneals (paper: 10).
        per_step_bn: convert the model's BatchNorm layers in place to ``PerStepBatchNorm`` with
            ``inner_steps + 1`` sets (build the optimizer from ``maml.parameters()`` afterwards).
        first_order_epochs: use first-order gradients while ``epoch < first_order_epochs`` (paper: 50).
        cosine_iterations: total meta-iterations of the cosine meta-learning-rate schedule (None: off).
        min_meta_lr: the schedule's final learning rate.
        iterations_per_epoch: meta-iterations per epoch for the epoch-based schedules.
    """

    def __init__(self, model: nn.Module, loss_fn, inner_lr: float, inner_steps: int = 5, *,
                 eval_inner_steps: int | None = None, first_order: bool = False, batching: str = "auto",
                 compile: bool = False, learn_lr: str | None = "lslr", adapt_only: str | Sequence[str] | None = None,
                 checkpoint_inner: bool = False, multi_step_loss: bool = True, msl_epochs: int = 10,
                 per_step_bn: bool = True, first_order_epochs: int = 50, cosine_iterations: int | None = None,
                 min_meta_lr: float = 1e-5, iterations_per_epoch: int = 500):
        self.multi_step_loss = bool(multi_step_loss)
        self.msl_epochs = check_steps(msl_epochs, "msl_epochs")
        self.first_order_epochs = check_steps(first_order_epochs, "first_order_epochs")
        self.cosine_iterations = None if cosine_iterations is None else check_steps(cosine_iterations,
                                                                                    "cosine_iterations")
        self.min_meta_lr = check_learning_rate(min_meta_lr, "min_meta_lr")
        self.iterations_per_epoch = check_steps(iterations_per_epoch, "iterations_per_epoch")
        if self.iterations_per_epoch < 1:
            raise MamlkitError("iterations_per_epoch must be at least 1")
        self.iteration = 0
        if per_step_bn:
            per_step_batchnorm(model, check_steps(inner_steps, "inner_steps") + 1)
        super().__init__(model, loss_fn, inner_lr, inner_steps, eval_inner_steps=eval_inner_steps,
                         first_order=first_order, batching=batching, compile=compile, learn_lr=learn_lr,
                         adapt_only=adapt_only, checkpoint_inner=checkpoint_inner)

    @property
    def epoch(self) -> int:
        return self.iteration // self.iterations_per_epoch

    @property
    def first_order(self) -> bool:
        """The user's ``first_order``, or first order anyway during the first ``first_order_epochs``."""
        return self._first_order or self.epoch < self.first_order_epochs

    @first_order.setter
    def first_order(self, value: bool) -> None:
        self._first_order = bool(value)

    def _step_weights(self) -> Tensor | None:
        if not self.multi_step_loss or self.epoch >= self.msl_epochs or self.inner_steps < 2:
            return None
        like = self._reference_tensor()
        return torch.tensor(importance_weights(self.inner_steps, self.epoch, self.msl_epochs),
                            dtype=like.dtype, device=like.device)

    def meta_backward(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor) -> Tensor:
        """``MAML.meta_backward``, then one meta-iteration more for the schedules."""
        loss = super().meta_backward(support_x, support_y, query_x, query_y)
        self.iteration += 1
        return loss

    def lr_scheduler(self, optimizer: torch.optim.Optimizer):
        """Cosine annealing from the optimizer's learning rate to ``min_meta_lr`` over
        ``cosine_iterations`` meta-iterations, or None when that switch is off."""
        if self.cosine_iterations is None:
            return None
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.cosine_iterations,
                                                          eta_min=self.min_meta_lr)

    def state_dict(self) -> dict[str, Tensor]:
        return {**super().state_dict(), ITERATION_KEY: torch.tensor(self.iteration)}

    def load_state_dict(self, state) -> None:
        if ITERATION_KEY not in state:
            raise MamlkitError(f"the state has no '{ITERATION_KEY}'; it was not saved by MAMLPlusPlus.state_dict()")
        super().load_state_dict({k: v for k, v in state.items() if k != ITERATION_KEY})
        self.iteration = int(state[ITERATION_KEY])
