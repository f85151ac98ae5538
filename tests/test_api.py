"""The public API: batching choice, running statistics, compile, adapt/predict/evaluate, errors."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mamlkit import MAML, MamlkitError
from reference import reference_meta_grad, relative_error, trainable
from zoo import image_batch, mlp, regression_batch


def grads_of(model):
    return {n: p.grad.clone() for n, p in trainable(model).items()}


def running_stats_model():
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).double()


def test_running_statistics_fall_back_to_loop_with_one_warning():
    torch.manual_seed(0)
    model = running_stats_model()
    batch = tuple(t.double() if t.is_floating_point() else t for t in image_batch())
    expected = reference_meta_grad(model, F.cross_entropy, 0.5, 1, batch)
    maml = MAML(model, F.cross_entropy, inner_lr=0.5)
    with pytest.warns(UserWarning, match="running statistics.*track_running_stats=False"):
        maml.meta_backward(*batch)
    assert relative_error(grads_of(model), expected) < 1e-10
    assert model[2].num_batches_tracked.item() > 0  # the loop really updated the statistics


def test_running_statistics_refused_on_explicit_vmap():
    model = running_stats_model()
    with pytest.raises(MamlkitError, match="track_running_stats=False"):
        MAML(model, F.cross_entropy, inner_lr=0.5, batching="vmap").meta_loss(
            *tuple(t.double() if t.is_floating_point() else t for t in image_batch()))


class DataDependent(nn.Module):
    """Python control flow on a tensor value: vmap cannot take it, a loop can."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 1)

    def forward(self, x):
        out = self.linear(x)
        return out * 2 if out.sum().item() > 0 else out


def test_vmap_failure_switches_to_loop_once():
    torch.manual_seed(0)
    model = DataDependent()
    batch = regression_batch()
    maml = MAML(model, F.mse_loss, inner_lr=0.1)
    with pytest.warns(UserWarning, match="vmap cannot take this model"):
        first = maml.meta_loss(*batch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = maml.meta_loss(*batch)
    assert torch.equal(first, second)


def test_compiled_meta_backward_equals_eager():
    torch.manual_seed(0)
    model = mlp().double()
    batch = tuple(t.double() for t in regression_batch())
    eager = MAML(model, F.mse_loss, inner_lr=0.3, inner_steps=2)
    eager.meta_backward(*batch)
    expected = grads_of(model)
    model.zero_grad(set_to_none=True)
    MAML(model, F.mse_loss, inner_lr=0.3, inner_steps=2, compile=True).meta_backward(*batch)
    assert relative_error(grads_of(model), expected) < 1e-12


def test_adapt_reduces_support_loss_and_predict_uses_adapted_weights():
    torch.manual_seed(0)
    model = mlp()
    x, y = regression_batch()[0][0], regression_batch()[1][0]
    maml = MAML(model, F.mse_loss, inner_lr=0.05, inner_steps=1, eval_inner_steps=5)
    adapted = maml.adapt(x, y)
    assert F.mse_loss(maml.predict(x, adapted), y) < F.mse_loss(model(x), y)
    assert torch.equal(maml.predict(x), model(x))


def test_adapt_takes_eval_inner_steps_by_default():
    torch.manual_seed(0)
    x, y = regression_batch()[0][0], regression_batch()[1][0]
    maml = MAML(mlp(), F.mse_loss, inner_lr=0.05, inner_steps=1, eval_inner_steps=3)
    default, three, one = maml.adapt(x, y), maml.adapt(x, y, steps=3), maml.adapt(x, y, steps=1)
    assert all(torch.equal(default[n], three[n]) for n in three)
    assert not all(torch.equal(default[n], one[n]) for n in one)


def test_evaluate_curve_shape_and_step_zero_is_unadapted():
    torch.manual_seed(0)
    model = mlp()
    batch = regression_batch(tasks=5)
    maml = MAML(model, F.mse_loss, inner_lr=0.05, eval_inner_steps=4)
    curves = maml.evaluate(*batch, metrics={"mse": F.mse_loss, "mae": F.l1_loss}, chunk_size=2)
    assert curves["mse"].shape == (5, 5) and curves["mae"].shape == (5, 5)
    with torch.no_grad():
        unadapted = torch.stack([F.mse_loss(model(batch[2][i]), batch[3][i]) for i in range(5)])
    assert torch.allclose(curves["mse"][:, 0], unadapted)
    looped = MAML(model, F.mse_loss, inner_lr=0.05, eval_inner_steps=4, batching="loop").evaluate(*batch)
    assert torch.allclose(looped["loss"], curves["mse"], atol=1e-6)


@pytest.mark.parametrize("change, message", [
    (lambda b: (b[0], b[1], b[2][:2], b[3][:2]), "task dimension differs"),
    (lambda b: (b[0], b[1][:, :3], b[2], b[3]), "examples per task"),
    (lambda b: (b[0], b[1], b[2][..., :1], b[3]), "support and query inputs must match"),
    (lambda b: (b[0].double(), b[1], b[2], b[3]), "torch.float64 but the model's parameters are torch.float32"),
    (lambda b: (b[0][0, :, 0], b[1], b[2], b[3]), "leading task dimension"),
    (lambda b: (b[0].tolist(), b[1], b[2], b[3]), "must be a torch.Tensor"),
])
def test_bad_task_batches_get_one_line_errors(change, message):
    maml = MAML(mlp(), F.mse_loss, inner_lr=0.1)
    with pytest.raises(MamlkitError, match=message) as error:
        maml.meta_loss(*change(regression_batch()))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("kwargs, message", [
    ({"inner_steps": -1}, "inner_steps must be a whole number >= 0"),
    ({"inner_steps": 1.5}, "inner_steps must be a whole number"),
    ({"inner_lr": float("nan")}, "inner_lr must be a finite number"),
    ({"batching": "pmap"}, "batching must be one of"),
    ({"batching": "loop", "compile": True}, "compile=True needs the vmap path"),
])
def test_bad_configuration_gets_one_line_errors(kwargs, message):
    arguments = {"inner_lr": 0.1, **kwargs}
    with pytest.raises(MamlkitError, match=message):
        MAML(mlp(), F.mse_loss, **arguments)
