"""An experiment's algorithm settings (config fields and ``--algo-options`` pairs) to a meta-learner."""

import ast
from typing import Sequence

from torch import nn

from mamlkit.algorithms import build_algorithm
from mamlkit.errors import MamlkitError
from mamlkit.maml import MAML


def parse_options(pairs: Sequence[str]) -> dict:
    """``("lam=2.0", "head=classifier")`` -> ``{"lam": 2.0, "head": "classifier"}``: the CLI's
    ``--algo-options``; values are Python literals where they parse, strings otherwise."""
    options = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.isidentifier():
            raise MamlkitError(f"algorithm option {pair!r} is not KEY=VALUE; e.g. --algo-options lam=2.0 cg_steps=5")
        try:
            options[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            options[key] = text
    return options


def from_settings(name: str, model: nn.Module, loss_fn, options: Sequence[str] = (), **settings) -> MAML:
    """``build_algorithm`` from an experiment's config: switches that are off (``False``) are left
    out, so algorithms without them still build, while one that is on but unsupported (say
    ``first_order`` for Reptile) is a one-line error; ``options`` are ``--algo-options`` pairs."""
    settings = {key: value for key, value in settings.items() if value is not False}
    return build_algorithm(name, model, loss_fn, **settings, **parse_options(options))
