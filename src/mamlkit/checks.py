"""Shape, dtype and value checks at the library's boundary, each failing with a one-line fix."""

import math
import typing

import torch
from torch import Tensor

from mamlkit.errors import MamlkitError

_NAMES = ("support_x", "support_y", "query_x", "query_y")


def check_steps(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MamlkitError(f"{name} must be a whole number >= 0, got {value!r}")
    return value


def check_count(value, name: str) -> int:
    """A count that is not a number of steps (epochs per schedule, iterations per epoch): at least 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise MamlkitError(f"{name} must be a whole number >= 1, got {value!r}")
    return value


def check_learning_rate(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise MamlkitError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _check_input_dtype(name: str, x: Tensor, reference: Tensor) -> None:
    if x.is_floating_point() and x.dtype != reference.dtype:
        raise MamlkitError(
            f"{name} is {x.dtype} but the model's parameters are {reference.dtype}; "
            f"convert one of them (e.g. {name}.to({reference.dtype}) or model.to({x.dtype}))")
    if x.device != reference.device:
        raise MamlkitError(f"{name} is on {x.device} but the model is on {reference.device}; "
                           f"move them to the same device")


def _check_finite_data(named: dict[str, Tensor]) -> None:
    """One pass over all floating tensors (one host sync, not one each: it runs before every step);
    only when that finds a non-finite value, which tensor holds it."""
    floats = {name: t for name, t in named.items() if t.is_floating_point()}
    if not floats or torch.isfinite(torch.cat([t.reshape(-1) for t in floats.values()])).all():
        return
    name = next(name for name, t in floats.items() if not torch.isfinite(t).all())
    raise MamlkitError(f"{name} holds NaN or infinite values; clean the data (check_finite=False skips this check)")


def check_task_batch(tensors: tuple[Tensor, ...], reference: Tensor | None, finite: bool = False) -> None:
    """Tensors ``[T, n, ...]`` for support/query inputs and targets, consistent with each other,
    with at least one task and one example per set, finite where ``finite``."""
    for name, t in zip(_NAMES, tensors):
        if not isinstance(t, Tensor):
            raise MamlkitError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() < 2:
            raise MamlkitError(f"{name} has shape {tuple(t.shape)}; task batches need a leading task "
                               f"dimension and an example dimension [T, n, ...] (use x.unsqueeze(0) for one task)")
    sx, sy, qx, qy = tensors
    tasks = {name: t.shape[0] for name, t in zip(_NAMES, tensors)}
    if len(set(tasks.values())) > 1:
        raise MamlkitError(f"the task dimension differs between tensors {tasks}; every tensor needs the same leading size T")
    if sx.shape[0] == 0:
        raise MamlkitError("the meta-batch holds no tasks (T = 0); pass at least one task")
    for name, t in (("support_x", sx), ("query_x", qx)):
        if t.shape[1] == 0:
            raise MamlkitError(f"{name} holds no examples per task; every task needs at least one support "
                               f"and one query example")
    for x_name, x, y_name, y in (("support_x", sx, "support_y", sy), ("query_x", qx, "query_y", qy)):
        if x.shape[1] != y.shape[1]:
            raise MamlkitError(f"{x_name} has {x.shape[1]} examples per task but {y_name} has {y.shape[1]}; "
                               f"inputs and targets need one row each")
    if sx.shape[2:] != qx.shape[2:]:
        raise MamlkitError(f"support_x examples have shape {tuple(sx.shape[2:])} but query_x examples have "
                           f"{tuple(qx.shape[2:])}; support and query inputs must match")
    if sy.shape[2:] != qy.shape[2:] or sy.dtype != qy.dtype:
        raise MamlkitError(f"support_y ({tuple(sy.shape[2:])}, {sy.dtype}) and query_y ({tuple(qy.shape[2:])}, "
                           f"{qy.dtype}) targets differ in shape or dtype; they must match")
    if reference is not None:
        for name, t in zip(_NAMES, tensors):
            _check_input_dtype(name, t, reference)
    if finite:
        _check_finite_data(dict(zip(_NAMES, tensors)))


def check_task(x: Tensor, y: Tensor, reference: Tensor | None, finite: bool = False) -> None:
    """One task's ``x [n, ...]`` and ``y [n, ...]``."""
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, Tensor) or t.dim() < 1:
            raise MamlkitError(f"{name} must be a tensor with an example dimension [n, ...]")
    if x.shape[0] != y.shape[0]:
        raise MamlkitError(f"x has {x.shape[0]} examples but y has {y.shape[0]}; they need one row each")
    if x.shape[0] == 0:
        raise MamlkitError("x holds no examples; adapting needs at least one support example")
    if reference is not None:
        _check_input_dtype("x", x, reference)
        _check_input_dtype("y", y, reference)
    if finite:
        _check_finite_data({"x": x, "y": y})


def check_model_takes(forward, loss_fn, x: Tensor, y: Tensor) -> None:
    """Run ``loss_fn(forward(x), y)`` once for a task whose inputs or targets are not floating point,
    so a dtype the model or loss cannot take is a one-line error before vmap or a loop is chosen."""
    if x.is_floating_point() and y.is_floating_point():
        return
    try:
        with torch.no_grad():
            loss_fn(forward(x), y)
    except MamlkitError:
        raise
    except (RuntimeError, TypeError, ValueError) as error:
        reason = " ".join(str(error).split())[:200]
        raise MamlkitError(f"the model and loss fail on inputs of dtype {x.dtype} with targets of dtype {y.dtype} "
                           f"({reason}); convert them to the dtypes they expect (e.g. x.float(), y.long())") from None


def check_finite_result(value, what: str) -> None:
    """A loss, metrics or adapted parameters with NaN/inf: the inner loop diverged."""
    tensors = value.values() if isinstance(value, dict) else [value]
    if not all(bool(torch.isfinite(t.detach()).all()) for t in tensors):
        raise MamlkitError(f"{what} became NaN or infinite: the inner loop diverged; lower inner_lr or the number "
                           f"of inner steps (check_finite=False skips this check)")


def check_finite(loss: float, iteration: int, hint: str) -> None:
    if not math.isfinite(loss):
        raise MamlkitError(f"the loss became {loss} at iteration {iteration}; {hint}")


def check_config(config, whole=(), positive=(), rates=(), widths=()) -> None:
    """Validate a config dataclass: whole numbers >= 0, numbers >= 1, learning rates, layer widths
    (tuples of numbers >= 1), and every ``Literal`` field against its values (the CLI checks those
    at parse time, a config file here)."""
    for name in widths:
        if any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in getattr(config, name)):
            raise MamlkitError(f"{name} must be layer widths of at least 1, got {getattr(config, name)}")
    for name in whole:
        check_steps(getattr(config, name), name)
    for name in positive:
        if getattr(config, name) < 1:
            raise MamlkitError(f"{name} must be at least 1, got {getattr(config, name)}")
    for name in rates:
        check_learning_rate(getattr(config, name), name)
    for name, hint in typing.get_type_hints(type(config)).items():
        allowed = typing.get_args(hint) if typing.get_origin(hint) is typing.Literal else None
        if allowed and getattr(config, name) not in allowed:
            raise MamlkitError(f"{name} must be one of {', '.join(map(str, allowed))}, got {getattr(config, name)!r}")
