"""BatchNorm with one set of weights, biases and running statistics per inner step (MAML++).

MAML shares one BatchNorm across inner steps although the features it normalises change with every
step. MAML++ (Antoniou et al. 2019) gives each step its own affine parameters (BNWB) and running
statistics (BNRS). Which set a forward uses is read from the ``step`` buffer, which ``MAML``
overrides per inner step through ``functional_call``; so the layer stays a pure function of its
parameters and buffers and works under vmap and compile. Parameters after s inner steps use set
``min(s, steps - 1)``: a model built for N training steps has ``steps = N + 1`` sets.
"""

import torch
import torch.nn.functional as F
from torch import nn

from mamlkit.errors import MamlkitError
from mamlkit.models.layers import TransductiveBatchNorm


class PerStepBatchNorm(nn.Module):
    """Batch norm over dimension 1 of an ``[N, C, ...]`` input with ``steps`` sets of (γ, β, mean, var).

    Training mode normalises with batch statistics and, with ``track_running_stats``, updates the
    running statistics of the current step only; eval mode normalises with that step's running
    statistics. Without ``track_running_stats`` it always uses batch statistics (transductive).
    """

    def __init__(self, num_features: int, steps: int, eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = True, track_running_stats: bool = True):
        super().__init__()
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise MamlkitError(f"PerStepBatchNorm needs steps >= 1 (inner steps + 1), got {steps!r}")
        self.num_features, self.steps, self.eps, self.momentum = num_features, steps, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        if affine:
            self.weight = nn.Parameter(torch.ones(steps, num_features))
            self.bias = nn.Parameter(torch.zeros(steps, num_features))
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(steps, num_features))
            self.register_buffer("running_var", torch.ones(steps, num_features))
        self.register_buffer("step", torch.zeros((), dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        index = self.step.clamp(0, self.steps - 1)
        weight, bias = (self.weight[index], self.bias[index]) if self.affine else (None, None)
        if not self.track_running_stats:
            return F.batch_norm(x, None, None, weight, bias, True, 0.0, self.eps)
        if self.training:  # a Python index gives views, so batch_norm updates this step's rows in place
            s = int(index)
            return F.batch_norm(x, self.running_mean[s], self.running_var[s], weight, bias, True,
                                self.momentum, self.eps)
        return F.batch_norm(x, self.running_mean[index], self.running_var[index], weight, bias, False, 0.0, self.eps)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, steps={self.steps}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}")


def per_step_batchnorm(model: nn.Module, steps: int, track_running_stats: bool | None = None) -> nn.Module:
    """Replace every BatchNorm1d/2d/3d and TransductiveBatchNorm of ``model`` in place by a
    ``PerStepBatchNorm`` with ``steps`` sets, each initialised from the layer it replaces; return ``model``.

    ``track_running_stats`` defaults to the replaced layer's (TransductiveBatchNorm: False).
    Build the optimizer after converting: the new layers hold new parameters.
    """
    for name, child in model.named_children():
        if isinstance(child, (nn.modules.batchnorm._BatchNorm, TransductiveBatchNorm)):
            transductive = isinstance(child, TransductiveBatchNorm)
            tracks = (not transductive and child.track_running_stats) if track_running_stats is None \
                else track_running_stats
            channels = child.bias.shape[0] if transductive else child.num_features
            layer = PerStepBatchNorm(channels, steps, eps=child.eps, momentum=getattr(child, "momentum", None) or 0.1,
                                     affine=transductive or child.affine, track_running_stats=tracks)
            like = next(t for t in (*child.parameters(), *child.buffers(), torch.empty(0)) if t.is_floating_point())
            layer.to(like.device, like.dtype)
            with torch.no_grad():
                for field in ("weight", "bias", "running_mean", "running_var"):
                    source, target = getattr(child, field, None), getattr(layer, field, None)
                    if source is not None and target is not None:
                        target.copy_(source.expand_as(target))
            setattr(model, name, layer)
        else:
            per_step_batchnorm(child, steps, track_running_stats)
    return model
