"""MAML's public parameter and state-dict names: the model's own keys, the learned rates under their prefix
and MAML++'s counter as ``mamlpp.iteration``, so a MAML checkpoint is a model checkpoint plus rates."""

from functools import partial
from typing import Mapping, Sequence

from torch import nn

from mamlkit.errors import MamlkitError

RATE_PREFIX = {"metasgd": "inner_lr.", "lslr": "inner_lr_scale."}  # LSLR learns multiples of inner_lr (rates.py)


def rename(key: str, prefix: str, pairs) -> str:
    """``key`` with its first matching ``prefix + old`` replaced by ``prefix + new``."""
    for old, new in pairs:
        if key.startswith(prefix + old):
            return prefix + new + key[len(prefix + old):]
    return key


def _rename_keys(module, state: dict, prefix: str, *hook_args, pairs) -> None:
    """The state_dict hook and load_state_dict pre-hook; a partial of a module-level function, so a MAML pickles."""
    for key in [k for k in state if k.startswith(prefix)]:
        state[rename(key, prefix, pairs)] = state.pop(key)


def publish(module: nn.Module, learn_lr: str | None) -> tuple[tuple[str, str], ...]:
    """Give ``module``'s state dict the public names of its ``rates``, ``schedule`` and ``model`` attributes;
    returns the (attribute prefix, public prefix) pairs, for ``named_parameters``."""
    pairs = (("rates.", RATE_PREFIX.get(learn_lr, "inner_lr.")), ("schedule.", "mamlpp."), ("model.", ""))
    module.register_state_dict_post_hook(partial(_rename_keys, pairs=pairs))
    module.register_load_state_dict_pre_hook(partial(_rename_keys, pairs=tuple((b, a) for a, b in pairs)))
    return pairs


def check_rates(state: Mapping, learn_lr: str | None, names: Sequence[str]) -> None:
    """A state must hold exactly the rates (of parameters ``names``) this MAML learns; an LSLR state from
    before its rates were multiples of inner_lr is told how to convert."""
    held = sorted(k for k in state if k.startswith(tuple(RATE_PREFIX.values())))
    if held != sorted(RATE_PREFIX.get(learn_lr, "") + n for n in names):
        old_lslr = learn_lr == "lslr" and any(k.startswith("inner_lr.") for k in held)
        raise MamlkitError(
            f"the state holds learned rates {held[:2] or 'for no parameters'}{'...' * (len(held) > 2)} but this "
            f"MAML (learn_lr={learn_lr!r}) learns {len(names) or 'no'} rate tensors; " + (
                "it is an LSLR state saved before LSLR learned multiples of inner_lr: save each "
                "inner_lr.<name> divided by inner_lr as inner_lr_scale.<name>" if old_lslr else
                "build it with the learn_lr and adapt_only the state was saved with"))
