"""ANIL (Raghu et al. 2020, "Rapid learning or feature reuse?"): adapt only the head.

All parameters are meta-learned; within a task only the chosen ones (by default the last layer
that holds parameters) take inner steps, so the inner loop is cheap and the body learns features
that a linear head can reuse.
"""

from typing import Sequence

from torch import nn

from mamlkit.errors import MamlkitError
from mamlkit.maml import MAML


def head_patterns(model: nn.Module) -> list[str]:
    """fnmatch patterns naming the trainable parameters of the last module that owns any."""
    owners = [name for name, module in model.named_modules()
              if any(p.requires_grad for p in module.parameters(recurse=False))]
    if not owners:
        raise MamlkitError("ANIL needs a model with trainable parameters")
    return [f"{owners[-1]}.*" if owners[-1] else "*"]


def anil(model: nn.Module, loss_fn, inner_lr: float, inner_steps: int = 1, *,
         adapt_only: str | Sequence[str] | None = None, **options) -> MAML:
    """A ``MAML`` adapting only ``adapt_only`` (default: the head, see ``head_patterns``)."""
    return MAML(model, loss_fn, inner_lr, inner_steps, adapt_only=adapt_only or head_patterns(model), **options)
