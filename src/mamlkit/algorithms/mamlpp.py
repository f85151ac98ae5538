"""MAML++ (Antoniou, Edwards & Storkey, "How to train your MAML", ICLR 2019), each trick a switch. Schedules
count meta-iterations, one per ``meta_backward`` (training with ``meta_loss``, add 1 to ``maml.iteration``)."""

import torch
from torch import Tensor, nn

from mamlkit.checks import check_count, check_learning_rate, check_steps
from mamlkit.maml import MAML
from mamlkit.models.per_step_bn import per_step_batchnorm


def importance_weights(steps: int, epoch: int, msl_epochs: int) -> list[float]:
    """MAML++'s per-step loss weights at ``epoch``: uniform at 0, moving linearly to the last step;
    each non-final weight stays ≥ 0.03/steps and the weights sum to 1."""
    decay, floor = 1.0 / steps / msl_epochs, 0.03 / steps
    weights = [max(1.0 / steps - epoch * decay, floor) for _ in range(steps - 1)]
    return weights + [min(1.0 / steps + epoch * (steps - 1) * decay, 1.0 - (steps - 1) * floor)]


class MAMLPlusPlus(MAML):
    """MAML with MAML++'s training tricks, each a switch defaulting to the paper's setting (derivative order: the
    official configs'). Args beyond ``MAML``'s (docs/algorithms.md): ``learn_lr`` (default LSLR); ``multi_step_loss``:
    while ``epoch < msl_epochs`` the meta-objective is Σ_s v_s L_query(θ_s), v annealed from uniform toward the
    last step; ``per_step_bn``: the model's BatchNorms become ``PerStepBatchNorm``, in place (build the optimizer
    afterwards); first order while ``epoch < first_order_epochs`` (0, the official configs'; the paper's text
    says 50, which trained worse on the sinusoid); ``cosine_iterations``: cosine annealing of the meta learning
    rate to ``min_meta_lr`` (``lr_scheduler``); ``iterations_per_epoch`` (paper: 500)."""

    def __init__(self, model: nn.Module, loss_fn, inner_lr: float, inner_steps: int = 5, *,
                 learn_lr: str | None = "lslr", multi_step_loss: bool = True, msl_epochs: int = 10,
                 per_step_bn: bool = True, first_order_epochs: int = 0, cosine_iterations: int | None = None,
                 min_meta_lr: float = 1e-5, iterations_per_epoch: int = 500, **options):
        self.msl_epochs, self.first_order_epochs = check_steps(msl_epochs, "msl_epochs"), check_steps(
            first_order_epochs, "first_order_epochs")  # all checked before per_step_bn changes the model
        self.cosine_iterations = None if cosine_iterations is None else check_count(cosine_iterations,
                                                                                    "cosine_iterations")
        self.min_meta_lr = check_learning_rate(min_meta_lr, "min_meta_lr")
        self.iterations_per_epoch, self.multi_step_loss = check_count(iterations_per_epoch, "iterations_per_epoch"), \
            bool(multi_step_loss)
        if per_step_bn:
            per_step_batchnorm(model, check_steps(inner_steps, "inner_steps") + 1)
        super().__init__(model, loss_fn, inner_lr, inner_steps, learn_lr=learn_lr, **options)
        self.schedule = nn.Module()  # its buffer is saved as "mamlpp.iteration"
        self.schedule.register_buffer("iteration", torch.tensor(0))

    @property
    def iteration(self) -> int:
        """Meta-iterations so far: each ``meta_backward`` adds one; saved in ``state_dict()``."""
        return int(self.schedule.iteration)

    @iteration.setter
    def iteration(self, value: int) -> None:
        self.schedule.iteration.fill_(value)

    @property
    def epoch(self) -> int:
        return self.iteration // self.iterations_per_epoch

    def training_options(self) -> tuple[bool, Tensor | None]:
        """First order during the first ``first_order_epochs``; importance weights while the multi-step loss is on."""
        first_order = self.first_order or self.epoch < self.first_order_epochs
        if not self.multi_step_loss or self.epoch >= self.msl_epochs or self.inner_steps < 2:
            return first_order, None
        like = self._reference()
        return first_order, torch.tensor(importance_weights(self.inner_steps, self.epoch, self.msl_epochs),
                                         dtype=like.dtype, device=like.device)

    def meta_backward(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor) -> Tensor:
        """``MAML.meta_backward``, then one meta-iteration more for the schedules."""
        loss = super().meta_backward(support_x, support_y, query_x, query_y)
        self.iteration += 1
        return loss

    def lr_scheduler(self, optimizer: torch.optim.Optimizer):
        """Cosine annealing to ``min_meta_lr`` over ``cosine_iterations``, or None when that switch is off."""
        return None if self.cosine_iterations is None else torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=self.cosine_iterations, eta_min=self.min_meta_lr)
