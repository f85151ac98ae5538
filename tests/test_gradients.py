"""The meta-gradient, checked in float64 against an independent loop and finite differences."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mamlkit import MAML
from mamlkit.exact_norm import ExactNormalization
from reference import (finite_difference_directional, reference_meta_grad, relative_error,
                       trainable)
from zoo import CASES, smooth


pytestmark = pytest.mark.usefixtures("float64")  # every check here runs in float64


def build(case, seed=0):
    make_model, make_batch, loss_fn = CASES[case]
    torch.manual_seed(seed)
    return make_model(), make_batch(), loss_fn


def mamlkit_grad(model, loss_fn, batch, steps, first_order=False, batching="vmap", lr=0.3, **kwargs):
    maml = MAML(model, loss_fn, inner_lr=lr, inner_steps=steps, first_order=first_order,
                batching=batching, **kwargs)
    model.zero_grad(set_to_none=True)
    maml.meta_backward(*batch)
    return {n: p.grad.clone() for n, p in trainable(model).items()}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("batching", ["vmap", "loop"])
def test_second_order_matches_reference_loop(case, steps, batching):
    model, batch, loss_fn = build(case)
    expected = reference_meta_grad(model, loss_fn, 0.3, steps, batch)
    actual = mamlkit_grad(model, loss_fn, batch, steps, batching=batching)
    assert relative_error(actual, expected) < 1e-10


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("steps", [1, 3])
def test_second_order_matches_finite_differences(case, steps):
    model, batch, loss_fn = build(case)
    smooth(model)
    grad = mamlkit_grad(model, loss_fn, batch, steps)
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        direction = {n: torch.randn(p.shape, generator=g) for n, p in grad.items()}
        analytic = sum((grad[n] * direction[n]).sum() for n in grad).item()
        numeric = finite_difference_directional(model, loss_fn, 0.3, steps, batch, direction)
        assert abs(analytic - numeric) <= 1e-6 * max(abs(analytic), 1e-3)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("steps", [1, 3])
def test_first_order_matches_reference_with_detached_inner_gradient(case, steps):
    model, batch, loss_fn = build(case)
    expected = reference_meta_grad(model, loss_fn, 0.3, steps, batch, first_order=True)
    second = reference_meta_grad(model, loss_fn, 0.3, steps, batch)
    actual = mamlkit_grad(model, loss_fn, batch, steps, first_order=True)
    assert relative_error(actual, expected) < 1e-10
    assert relative_error(actual, second) > 1e-6  # the switch really drops second-order terms


@pytest.mark.parametrize("case", list(CASES))
def test_vmap_equals_loop(case):
    model, batch, loss_fn = build(case)
    vmapped = mamlkit_grad(model, loss_fn, batch, 2, batching="vmap")
    looped = mamlkit_grad(model, loss_fn, batch, 2, batching="loop")
    assert relative_error(vmapped, looped) < 1e-12


def test_meta_loss_backward_equals_meta_backward():
    model, batch, loss_fn = build("mlp")
    maml = MAML(model, loss_fn, inner_lr=0.3)
    loss = maml.meta_loss(*batch)
    via_loss = dict(zip(trainable(model), torch.autograd.grad(loss, list(trainable(model).values()))))
    assert relative_error(mamlkit_grad(model, loss_fn, batch, 1), via_loss) < 1e-14


def test_zero_inner_steps_is_plain_query_loss():
    model, batch, loss_fn = build("mlp")
    loss = MAML(model, loss_fn, inner_lr=0.3, inner_steps=0).meta_loss(*batch)
    expected = torch.stack([loss_fn(model(batch[2][i]), batch[3][i]) for i in range(3)]).mean()
    assert torch.allclose(loss, expected, rtol=1e-14)


def test_frozen_parameter_is_not_adapted_and_gets_no_gradient():
    model, batch, loss_fn = build("frozen")
    maml = MAML(model, loss_fn, inner_lr=0.3)
    adapted = maml.adapt(batch[0][0], batch[1][0])
    assert "0.weight" not in adapted
    maml.meta_backward(*batch)
    assert model[0].weight.grad is None and model[0].bias.grad is not None


def test_tied_weights_stay_tied():
    model, batch, loss_fn = build("tied")
    adapted = MAML(model, loss_fn, inner_lr=0.3).adapt(batch[0][0], batch[1][0])
    assert "second.weight" not in adapted  # one adapted tensor serves both modules
    predicted = MAML(model, loss_fn, inner_lr=0.3).predict(batch[2][0], adapted)
    head = F.linear(torch.tanh(F.linear(torch.tanh(F.linear(batch[2][0], adapted["first.weight"],
                    adapted["first.bias"])), adapted["first.weight"], adapted["second.bias"])),
                    adapted["head.weight"], adapted["head.bias"])
    assert torch.allclose(predicted, head, rtol=1e-14)


LAYER_KINDS = {
    "linear": lambda: nn.Sequential(nn.Flatten(), nn.Linear(36, 3)),
    "conv2d": lambda: nn.Sequential(nn.Conv2d(1, 3, 3), nn.Flatten(), nn.Linear(48, 3)),
    "batchnorm2d": lambda: nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3, track_running_stats=False),
                                         nn.Flatten(), nn.Linear(48, 3)),
    "batchnorm1d": lambda: nn.Sequential(nn.Flatten(), nn.Linear(36, 8), nn.BatchNorm1d(8, track_running_stats=False),
                                         nn.Linear(8, 3)),
    "batchnorm_eval_running_stats": lambda: nn.Sequential(nn.Flatten(), nn.Linear(36, 8),
                                                          nn.BatchNorm1d(8).eval(), nn.Linear(8, 3)),
    "layernorm": lambda: nn.Sequential(nn.Conv2d(1, 3, 3), nn.LayerNorm([3, 4, 4]), nn.Flatten(), nn.Linear(48, 3)),
    "groupnorm": lambda: nn.Sequential(nn.Conv2d(1, 4, 3), nn.GroupNorm(2, 4), nn.Flatten(), nn.Linear(64, 3)),
    "instancenorm": lambda: nn.Sequential(nn.Conv2d(1, 3, 3), nn.InstanceNorm2d(3, affine=True), nn.Flatten(),
                                          nn.Linear(48, 3)),
    "maxpool": lambda: nn.Sequential(nn.Conv2d(1, 3, 3), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(12, 3)),
    "avgpool": lambda: nn.Sequential(nn.Conv2d(1, 3, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 3)),
    "activations": lambda: nn.Sequential(nn.Flatten(), nn.Linear(36, 8), nn.GELU(), nn.Linear(8, 8), nn.ELU(),
                                         nn.Linear(8, 8), nn.Sigmoid(), nn.Linear(8, 3)),
    "conv1d": lambda: nn.Sequential(nn.Flatten(1, 2), nn.Conv1d(6, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(16, 3)),
}


@pytest.mark.parametrize("kind", list(LAYER_KINDS))
def test_every_layer_kind_is_exact_on_the_vmap_path(kind):
    """Proves each layer kind's vmapped second-order path exact against the reference loop."""
    torch.manual_seed(0)
    model = LAYER_KINDS[kind]()
    batch = CASES["conv_batchnorm"][1]()
    expected = reference_meta_grad(model, F.cross_entropy, 0.5, 2, batch)
    actual = mamlkit_grad(model, F.cross_entropy, batch, 2, batching="vmap", lr=0.5)
    assert relative_error(actual, expected) < 1e-10


@pytest.mark.parametrize("kind", list(LAYER_KINDS))
def test_every_layer_kind_is_exact_on_the_loop_path(kind):
    """The task loop keeps the native norm kernels (fast, fused). Outside vmap their double backward is
    exact: the loop's gradient is the reference's with every norm rebuilt from exact primitives."""
    torch.manual_seed(0)
    model = LAYER_KINDS[kind]()
    batch = CASES["conv_batchnorm"][1]()
    with ExactNormalization():
        expected = reference_meta_grad(model, F.cross_entropy, 0.5, 2, batch)
    actual = mamlkit_grad(model, F.cross_entropy, batch, 2, batching="loop", lr=0.5)
    assert relative_error(actual, expected) < 1e-10


@pytest.mark.parametrize("norm", [
    lambda: nn.BatchNorm2d(3, eps=0.3, track_running_stats=False),
    lambda: nn.InstanceNorm2d(3, eps=0.3, affine=True),
    lambda: nn.LayerNorm([3, 4, 4], eps=0.3),
], ids=["batchnorm", "instancenorm", "layernorm"])
def test_vmap_exact_normalization_uses_the_layers_eps(norm):
    """The exact primitives that replace native norms under vmap keep a non-default eps."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), norm(), nn.Flatten(), nn.Linear(48, 3))
    batch = CASES["conv_batchnorm"][1]()
    expected = reference_meta_grad(model, F.cross_entropy, 0.5, 2, batch)
    actual = mamlkit_grad(model, F.cross_entropy, batch, 2, batching="vmap", lr=0.5)
    assert relative_error(actual, expected) < 1e-10
