"""Learned inner learning rates (Meta-SGD, LSLR) as a module, so they are ordinary meta-parameters."""

import torch
from torch import Tensor, nn

from mamlkit.errors import MamlkitError
from mamlkit.functional import Params

LEARN_LR = (None, "metasgd", "lslr")


class LearnedRates(nn.Module):
    """One rate tensor per adapted parameter, under the parameter's own dotted name. ``metasgd``: one per element
    (Li et al. 2017), saved as ``inner_lr.<name>``; ``lslr``: one per tensor and inner step (MAML++), learned as
    multiples of α (``inner_lr_scale.<name>``): Adam moves a parameter by about its learning rate whatever its
    size, so a 0.01 rate learned directly changed ~10% per iteration and diverged (benchmarks/mamlpp_rates.py)."""

    def __init__(self, kind: str | None, params: Params, inner_lr: float, inner_steps: int):
        super().__init__()
        if kind not in LEARN_LR:
            raise MamlkitError(f"learn_lr must be one of {LEARN_LR}, got {kind!r}")
        if kind is not None and inner_steps < 1:
            raise MamlkitError(f"learn_lr={kind!r} needs inner_steps >= 1 (rates are learned through the inner steps)")
        self.kind, self.inner_lr = kind, inner_lr
        for name, p in params.items() if kind else ():
            shape, initial = (p.shape, inner_lr) if kind == "metasgd" else ((inner_steps,), 1.0)
            self._owner(name).register_parameter(name.rsplit(".", 1)[-1], nn.Parameter(
                torch.full(shape, initial, dtype=p.dtype, device=p.device)))

    def _owner(self, name: str) -> nn.Module:
        """The (new) submodule that holds the rate of parameter ``name``: ``a.b.w`` lives in ``self.a.b``."""
        owner = self
        for part in name.split(".")[:-1]:
            owner = owner._modules.setdefault(part, nn.Module())
        return owner

    def schedule(self, rates: dict[str, Tensor] | None = None):
        """The inner ``lr``: α, Meta-SGD's mapping or LSLR's function of the step; ``rates`` replace the learned."""
        rates = dict(self.named_parameters()) if rates is None else rates
        if self.kind == "metasgd":
            return dict(rates)
        if self.kind == "lslr":  # step sizes, never negative (see project)
            return lambda step: {n: self.inner_lr * r[min(step, r.shape[0] - 1)].clamp(min=0)
                                 for n, r in rates.items()}
        return self.inner_lr

    @torch.no_grad()
    def project(self) -> None:
        """Project LSLR scales the last meta-update pushed below zero back to zero: a negative step is ascent,
        compounding over the steps, and clamping only where used would leave the rate with zero gradient
        forever. Meta-SGD keeps signed rates (its paper learns directions)."""
        if self.kind == "lslr":
            for rate in self.parameters():
                rate.clamp_(min=0)
