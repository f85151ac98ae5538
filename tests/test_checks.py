"""The Python API's boundary: one-line MamlkitErrors for data, models and options it cannot use,
and for results that are no longer numbers; the module behaviour of MAML (devices, modes, DDP)."""

import pickle
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mamlkit import MAML, MamlkitError
from mamlkit.algorithms.imaml import IMAML
from mamlkit.algorithms.mamlpp import MAMLPlusPlus
from mamlkit.algorithms.reptile import Reptile
from reference import relative_error
from zoo import image_batch, mlp, regression_batch


def one_line_error(message, call):
    with pytest.raises(MamlkitError, match=message) as error:
        call()
    assert "\n" not in str(error.value)


def with_value(batch, index, value):
    changed = [t.clone() for t in batch]
    changed[index][1, 2, 0] = value
    return changed


@pytest.mark.parametrize("index, name", [(0, "support_x"), (1, "support_y"), (2, "query_x"), (3, "query_y")])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_task_data_is_refused_unless_the_check_is_off(index, name, value):
    batch = with_value(regression_batch(), index, value)
    maml = MAML(mlp(), F.mse_loss, inner_lr=0.1)
    for call in (maml.meta_loss, maml.meta_backward, maml.evaluate):
        one_line_error(f"{name} holds NaN or infinite values.*check_finite=False", lambda: call(*batch))
    support = (batch[0][1], batch[1][1]) if index < 2 else (torch.full((3, 2), value), torch.zeros(3, 1))
    one_line_error(f"{'xy'[index % 2] if index < 2 else 'x'} holds NaN", lambda: maml.adapt(*support))
    unchecked = MAML(mlp(), F.mse_loss, inner_lr=0.1, check_finite=False)
    assert not torch.isfinite(unchecked.meta_loss(*batch))  # the opt-out really skips the check


def test_a_diverging_inner_loop_is_an_error_not_a_nan():
    torch.manual_seed(0)
    batch = regression_batch()
    for maml in (MAML(mlp(), F.mse_loss, 1e30, 3), Reptile(mlp(), F.mse_loss, 1e30, 3)):
        one_line_error("the adapted parameters became NaN or infinite.*lower inner_lr",
                       lambda: maml.adapt(batch[0][0], batch[1][0]))
        one_line_error("the evaluation metrics became NaN", lambda: maml.evaluate(*batch))
        # the meta-loss is returned, not raised: the training loop names the iteration it diverged at
        assert not torch.isfinite(maml.meta_backward(*batch))
    imaml = IMAML(mlp(), F.mse_loss, 1e30, 3, lam=1.0)  # refuses every step that does not descend, so φ stays at θ
    adapted = imaml.adapt(batch[0][0], batch[1][0])
    assert all(torch.equal(adapted[n], p.detach()) for n, p in imaml.parameters_to_adapt().items())
    assert torch.isfinite(imaml.meta_backward(*batch))


def test_integer_inputs_are_a_dtype_error_before_a_path_is_chosen():
    batch = regression_batch()
    integer = (batch[0].long(), batch[1], batch[2].long(), batch[3])
    for batching in ("auto", "vmap", "loop"):
        maml = MAML(mlp(), F.mse_loss, inner_lr=0.1, batching=batching)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no misleading "vmap cannot take this model" first
            one_line_error("fail on inputs of dtype torch.int64 with targets of dtype torch.float32",
                           lambda: maml.meta_loss(*integer))
    one_line_error("torch.int64", lambda: MAML(mlp(), F.mse_loss, inner_lr=0.1).adapt(integer[0][0], batch[1][0]))


def test_models_that_take_integer_inputs_still_train():
    """The dtype check runs the model once; it does not refuse integer inputs a model can take."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(8, 3))
    g = torch.Generator().manual_seed(0)
    tokens = lambda: torch.randint(0, 10, (2, 6, 2), generator=g)  # noqa: E731
    labels = lambda: torch.randint(0, 3, (2, 6), generator=g)  # noqa: E731
    loss = MAML(model, F.cross_entropy, inner_lr=0.1).meta_loss(tokens(), labels(), tokens(), labels())
    assert torch.isfinite(loss)


def test_classification_targets_pass_the_dtype_check_without_touching_running_statistics():
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    before = {n: b.clone() for n, b in model.named_buffers()}
    maml = MAML(model, F.cross_entropy, inner_lr=0.1, batching="loop")
    maml._check_dtypes(image_batch()[0][0], image_batch()[1][0])
    assert all(torch.equal(before[n], b) for n, b in model.named_buffers())


@pytest.mark.parametrize("change, message", [
    (lambda b: tuple(t[:0] for t in b), r"no tasks \(T = 0\)"),
    (lambda b: (b[0][:, :0], b[1][:, :0], b[2], b[3]), "support_x holds no examples per task"),
    (lambda b: (b[0], b[1], b[2][:, :0], b[3][:, :0]), "query_x holds no examples per task"),
])
def test_empty_tasks_are_one_line_errors(change, message):
    maml = MAML(mlp(), F.mse_loss, inner_lr=0.1)
    for call in (maml.meta_loss, maml.meta_backward, maml.evaluate):
        one_line_error(message, lambda: call(*change(regression_batch())))
    one_line_error("x holds no examples", lambda: maml.adapt(torch.zeros(0, 2), torch.zeros(0, 1)))


@pytest.mark.parametrize("model", [nn.Tanh(), nn.Sequential(nn.Linear(2, 1)).requires_grad_(False)])
def test_models_without_trainable_parameters_are_refused(model):
    one_line_error("has no trainable parameters", lambda: MAML(model, F.mse_loss, inner_lr=0.1))


@pytest.mark.parametrize("build, message", [
    (lambda: MAMLPlusPlus(mlp(), F.mse_loss, 0.1, cosine_iterations=0), "cosine_iterations must be .* >= 1"),
    (lambda: MAMLPlusPlus(mlp(), F.mse_loss, 0.1, iterations_per_epoch=0), "iterations_per_epoch must be .* >= 1"),
    (lambda: MAMLPlusPlus(mlp(), F.mse_loss, 0.1, msl_epochs=-1), "msl_epochs must be a whole number >= 0"),
    (lambda: IMAML(mlp(), F.mse_loss, 0.1, cg_steps=0), "cg_steps must be a whole number >= 1"),
])
def test_counts_that_are_not_steps_must_be_positive(build, message):
    one_line_error(message, build)


def test_zero_epoch_schedules_mean_off():
    """msl_epochs=0 and first_order_epochs=0 are valid: no multi-step loss, second order from the start."""
    maml = MAMLPlusPlus(mlp(), F.mse_loss, 0.1, inner_steps=2, msl_epochs=0, first_order_epochs=0)
    assert maml.training_options() == (False, None)
    assert torch.isfinite(maml.meta_backward(*regression_batch()))


# -- MAML is an nn.Module ---------------------------------------------------------------------
def test_maml_moves_switches_mode_and_round_trips_its_state_like_a_module():
    maml = MAML(mlp(), F.mse_loss, inner_lr=0.1, learn_lr="metasgd")
    maml.double()
    assert all(p.dtype == torch.float64 for p in maml.parameters())
    assert all(r.dtype == torch.float64 for r in maml.inner_lrs.values())
    maml.eval()
    assert not maml.model.training and not maml.training
    state = maml.state_dict()
    assert list(state) == [*maml.model.state_dict(), *(f"inner_lr.{n}" for n in maml.inner_lrs)]
    again = MAML(mlp().double(), F.mse_loss, inner_lr=0.1, learn_lr="metasgd")
    again.load_state_dict(state)
    assert all(torch.equal(state[k], v) for k, v in again.state_dict().items())
    copied = pickle.loads(pickle.dumps(maml))  # a whole MAML saves and copies like any module
    assert copied.state_dict().keys() == state.keys() and copied.inner_lrs.keys() == maml.inner_lrs.keys()
    narrower = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1)).double()
    wrong = MAML(narrower, F.mse_loss, inner_lr=0.1, learn_lr="metasgd")  # the same names, other shapes
    one_line_error("the state does not fit this MAML .*size mismatch", lambda: wrong.load_state_dict(state))


def test_maml_inside_distributed_data_parallel_gives_the_meta_gradient(tmp_path):
    batch = regression_batch()
    torch.manual_seed(0)
    maml = MAML(mlp(), F.mse_loss, inner_lr=0.1, inner_steps=2, learn_lr="lslr")
    maml.meta_backward(*batch)
    expected = {n: p.grad.clone() for n, p in maml.named_parameters()}
    maml.zero_grad()
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        wrapped = DistributedDataParallel(maml)
        wrapped(*batch).backward()
        del wrapped  # its reducer holds the group: freed after destroy_process_group, teardown could hang
    finally:
        dist.destroy_process_group()
    assert relative_error({n: p.grad for n, p in maml.named_parameters()}, expected) < 1e-6


def test_a_state_in_the_format_before_maml_was_a_module_still_loads_and_old_lslr_rates_say_how_to_convert():
    """Old run folders hold the model's own keys, ``inner_lr.<name>`` rates and ``mamlpp.iteration``; LSLR
    now learns multiples of inner_lr (``inner_lr_scale.<name>``), so its old absolute rates are refused."""
    torch.manual_seed(0)
    model = mlp()
    legacy = {**{k: v.clone() for k, v in model.state_dict().items()},
              **{f"inner_lr.{n}": torch.full((2,), 0.3) for n, _ in model.named_parameters()},
              "mamlpp.iteration": torch.tensor(17)}
    maml = MAMLPlusPlus(mlp(), F.mse_loss, inner_lr=0.1, inner_steps=2, per_step_bn=False)
    one_line_error("LSLR state saved before .* divided by inner_lr as inner_lr_scale", lambda: maml.load_state_dict(legacy))
    converted = {k.replace("inner_lr.", "inner_lr_scale."): v / 0.1 if k.startswith("inner_lr.") else v
                 for k, v in legacy.items()}
    maml.load_state_dict(converted)
    assert maml.iteration == 17 and all(torch.allclose(r, torch.full((2,), 3.0)) for r in maml.inner_lrs.values())
    assert all(torch.equal(maml.model.state_dict()[k], v) for k, v in model.state_dict().items())
    assert maml.state_dict().keys() == converted.keys()
    metasgd = MAML(mlp(), F.mse_loss, inner_lr=0.1, learn_lr="metasgd")
    one_line_error("build it with the learn_lr and adapt_only", lambda: metasgd.load_state_dict(converted))
