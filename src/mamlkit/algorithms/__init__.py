"""The MAML family by name, ``build_algorithm("metasgd", model, loss_fn, inner_lr=0.01)``: each entry is a
factory ``(model, loss_fn, **options) -> MAML`` taking MAML's options and its own, less its ``does_not_take``."""

import inspect
from functools import partial
from typing import Callable, Literal, Sequence

from torch import nn

from mamlkit.algorithms.imaml import IMAML
from mamlkit.algorithms.mamlpp import MAMLPlusPlus
from mamlkit.algorithms.protomaml import ProtoMAML
from mamlkit.algorithms.reptile import Reptile
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
    """ANIL (Raghu et al. 2020): a ``MAML`` adapting only ``adapt_only``, by default the head; the body is
    meta-learned but fixed within a task, so the inner loop is cheap and the body learns reusable features."""
    return MAML(model, loss_fn, inner_lr, inner_steps, adapt_only=adapt_only or head_patterns(model), **options)


ALGORITHMS: dict[str, Callable[..., MAML]] = {
    "maml": MAML,
    "metasgd": partial(MAML, learn_lr="metasgd"),
    "lslr": partial(MAML, learn_lr="lslr"),
    "mamlpp": MAMLPlusPlus,
    "anil": anil,
    "reptile": Reptile,
    "imaml": IMAML,
    "protomaml": ProtoMAML,
}
AlgorithmName = Literal[tuple(ALGORITHMS)]  # for config fields: the CLI lists and checks these names


def _keywords(name: str) -> set[str]:
    """The keywords the factory ``name`` or MAML's constructor declare."""
    return {*inspect.signature(ALGORITHMS[name]).parameters, *inspect.signature(MAML).parameters}


def accepts(name: str, option: str) -> bool:
    """Whether the algorithm ``name`` takes the keyword ``option`` (its own, or one of MAML's that applies)."""
    return option in _keywords(name) and option not in getattr(ALGORITHMS[name], "does_not_take", {})


def build_algorithm(name: str, model: nn.Module, loss_fn, **options) -> MAML:
    """The meta-learner ``name`` (a key of ``ALGORITHMS``) around ``model``; a refused option is a one-line error."""
    if name not in ALGORITHMS:
        raise MamlkitError(f"unknown algorithm {name!r}; choose one of {', '.join(ALGORITHMS)}")
    unknown = set(options) - _keywords(name)
    if unknown:
        raise MamlkitError(f"bad options for algorithm {name!r}: it has no option {', '.join(sorted(unknown))}; "
                           f"see docs/algorithms.md")
    return ALGORITHMS[name](model, loss_fn, **options)
