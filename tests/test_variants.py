"""Meta-SGD, LSLR, MAML++, ANIL and inner-loop checkpointing, checked in float64 against an
independent plain-autograd loop written here (it shares no code with mamlkit) and finite differences."""

import warnings

import pytest
import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn
from torch.func import functional_call

from mamlkit import MAML, MamlkitError
from mamlkit.algorithms import ALGORITHMS, accepts, build_algorithm
from mamlkit.algorithms.mamlpp import MAMLPlusPlus, importance_weights
from mamlkit.models.per_step_bn import PerStepBatchNorm
from reference import relative_error
from zoo import conv_batchnorm, image_batch, regression_batch


pytestmark = pytest.mark.usefixtures("float64")  # every check here runs in float64


# -- the independent reference ------------------------------------------------------------------
def plain_forward(model):
    return lambda params, x, step: functional_call(model, params, (x,))


def reference_objective(forward, loss_fn, params, batch, steps, lr_of, adapted, first_order=False, weights=None):
    """mean_i of the query loss after ``steps`` unrolled steps θ_n ← θ_n − lr_of(s, n) ∇_n L_support
    for the names in ``adapted``; with ``weights`` Σ_s weights[s] L_query(θ_{s+1}) instead.
    ``forward(params, x, s)`` runs the network with the parameters after s steps."""
    support_x, support_y, query_x, query_y = batch
    total = 0.0
    for i in range(support_x.shape[0]):
        fast, losses = dict(params), []
        for s in range(steps):
            loss = loss_fn(forward(fast, support_x[i], s), support_y[i])
            grads = torch.autograd.grad(loss, [fast[n] for n in adapted], create_graph=True, allow_unused=True)
            grads = [torch.zeros_like(fast[n]) if g is None else g for n, g in zip(adapted, grads)]
            if first_order:
                grads = [g.detach() for g in grads]
            fast = {**fast, **{n: fast[n] - lr_of(s, n) * g for n, g in zip(adapted, grads)}}
            if weights is not None:
                losses.append(weights[s] * loss_fn(forward(fast, query_x[i], s + 1), query_y[i]))
        total = total + (sum(losses) if weights is not None else loss_fn(forward(fast, query_x[i], steps), query_y[i]))
    return total / support_x.shape[0]


def reference_grads(objective, leaves: dict) -> dict:
    grads = torch.autograd.grad(objective, list(leaves.values()), allow_unused=True)
    return {n: torch.zeros_like(p) if g is None else g for (n, p), g in zip(leaves.items(), grads)}


def mamlkit_grads(maml, batch) -> dict:
    for p in maml.parameters():
        p.grad = None
    maml.meta_backward(*batch)
    return {n: p.grad.clone() for n, p in maml.named_parameters() if p.grad is not None}


RATES = ("inner_lr.", "inner_lr_scale.")  # Meta-SGD's rates; LSLR's multiples of inner_lr


def lr_function(maml):
    """The rate of parameter n at step s, read off the learned tensors (or α)."""
    rates = maml.inner_lrs
    if maml.learn_lr == "metasgd":
        return lambda s, n: rates[n]
    if maml.learn_lr == "lslr":
        return lambda s, n: maml.inner_lr * rates[n][min(s, rates[n].shape[0] - 1)]
    return lambda s, n: maml.inner_lr


def randomize_rates(maml, seed=5):
    """Rates between 0.05 and 0.3 (LSLR holds them as multiples of inner_lr)."""
    g = torch.Generator().manual_seed(seed)
    unit = maml.inner_lr if maml.learn_lr == "lslr" else 1.0
    with torch.no_grad():
        for rate in maml.inner_lrs.values():
            rate.copy_((0.05 + 0.25 * torch.rand(rate.shape, generator=g)) / unit)


def reference_for(maml, batch, forward=None, first_order=False, weights=None):
    """The reference meta-gradient with respect to every meta-parameter of ``maml``."""
    leaves = {n: p for n, p in maml.named_parameters() if p.requires_grad}
    params = {n: p for n, p in maml.model.named_parameters() if p.requires_grad}
    objective = reference_objective(forward or plain_forward(maml.model), maml.loss_fn, params, batch,
                                    maml.inner_steps, lr_function(maml), list(maml.parameters_to_adapt()),
                                    first_order, weights)
    return reference_grads(objective, leaves)


def tanh_mlp():
    return nn.Sequential(nn.Linear(2, 12), nn.Tanh(), nn.Linear(12, 12), nn.Tanh(), nn.Linear(12, 1))


# -- Meta-SGD and LSLR ---------------------------------------------------------------------------
@pytest.mark.parametrize("learn_lr", ["metasgd", "lslr"])
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("batching", ["vmap", "loop"])
@pytest.mark.parametrize("first_order", [False, True])
def test_learned_rates_match_reference(learn_lr, steps, batching, first_order):
    torch.manual_seed(0)
    maml = MAML(tanh_mlp(), F.mse_loss, inner_lr=0.1, inner_steps=steps, learn_lr=learn_lr, batching=batching,
                first_order=first_order)
    randomize_rates(maml)
    batch = regression_batch()
    expected = reference_for(maml, batch, first_order=first_order)
    actual = mamlkit_grads(maml, batch)
    assert set(actual) == set(expected) and any(n.startswith(RATES) for n in actual)
    assert relative_error(actual, expected) < 1e-10
    rate_grads = {n: g for n, g in actual.items() if n.startswith(RATES)}
    assert relative_error(rate_grads, {n: expected[n] for n in rate_grads}) < 1e-10


@pytest.mark.parametrize("learn_lr", ["metasgd", "lslr"])
def test_learned_rates_match_finite_differences(learn_lr):
    torch.manual_seed(0)
    maml = MAML(tanh_mlp(), F.mse_loss, inner_lr=0.1, inner_steps=2, learn_lr=learn_lr)
    randomize_rates(maml)
    batch = regression_batch()
    grads = mamlkit_grads(maml, batch)
    leaves = dict(maml.named_parameters())
    g = torch.Generator().manual_seed(3)
    for _ in range(2):
        direction = {n: torch.randn(p.shape, generator=g) for n, p in leaves.items()}
        analytic = sum((grads[n] * direction[n]).sum() for n in leaves).item()
        values = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                shifted = {n: (p + sign * 1e-6 * direction[n]).requires_grad_() for n, p in leaves.items()}
            rates = {n.split(".", 1)[1]: t for n, t in shifted.items() if n.startswith(RATES)}
            lr_of = (lambda s, n: rates[n]) if learn_lr == "metasgd" else (lambda s, n: 0.1 * rates[n][s])
            params = {n: t for n, t in shifted.items() if not n.startswith(RATES)}
            values.append(reference_objective(plain_forward(maml.model), F.mse_loss, params, batch, 2, lr_of,
                                              list(params)).item())
        numeric = (values[0] - values[1]) / 2e-6
        assert abs(analytic - numeric) <= 1e-6 * max(abs(analytic), 1e-3)


def test_lslr_has_one_rate_per_tensor_and_step_and_reuses_the_last_beyond():
    torch.manual_seed(0)
    maml = MAML(tanh_mlp(), F.mse_loss, inner_lr=0.1, inner_steps=2, learn_lr="lslr")
    assert all(r.shape == (2,) for r in maml.inner_lrs.values())
    randomize_rates(maml)
    x, y = regression_batch()[0][0], regression_batch()[1][0]
    adapted = maml.adapt(x, y, steps=4)
    params = {n: p for n, p in maml.model.named_parameters()}
    expected = reference_objective(plain_forward(maml.model), F.mse_loss, params,
                                   (x[None], y[None], x[None], y[None]), 4, lr_function(maml), list(params))
    assert torch.allclose(F.mse_loss(maml.predict(x, adapted), y), expected, rtol=1e-12)


def test_metasgd_rates_have_the_parameter_shapes_and_are_meta_learned_by_adam():
    torch.manual_seed(0)
    maml = MAML(tanh_mlp(), F.mse_loss, inner_lr=0.1, learn_lr="metasgd")
    assert {n: r.shape for n, r in maml.inner_lrs.items()} == {n: p.shape for n, p in maml.model.named_parameters()}
    before = {n: r.detach().clone() for n, r in maml.inner_lrs.items()}
    optimizer = torch.optim.Adam(maml.parameters(), lr=1e-2)
    maml.meta_backward(*regression_batch())
    optimizer.step()
    assert all(not torch.equal(before[n], r) for n, r in maml.inner_lrs.items())


def test_evaluate_uses_the_learned_rates():
    torch.manual_seed(0)
    maml = MAML(tanh_mlp(), F.mse_loss, inner_lr=0.1, inner_steps=2, learn_lr="lslr", eval_inner_steps=3)
    randomize_rates(maml)
    batch = regression_batch()
    curve = maml.evaluate(*batch)["loss"]
    for i in range(3):
        for steps in range(4):
            adapted = maml.adapt(batch[0][i], batch[1][i], steps=steps)
            assert torch.allclose(curve[i, steps], F.mse_loss(maml.predict(batch[2][i], adapted), batch[3][i]),
                                  rtol=1e-10)


@pytest.mark.parametrize("batching", ["vmap", "loop"])
def test_lslr_rates_below_zero_act_as_zero_and_are_projected_back_to_zero(batching):
    """An LSLR rate pushed below zero by a meta-update is a step size of 0 (no ascent), and the next
    meta_backward resets it to 0, where its meta-gradient lives (projected gradient descent)."""
    torch.manual_seed(0)
    maml = MAML(tanh_mlp(), F.mse_loss, inner_lr=0.1, inner_steps=2, learn_lr="lslr", batching=batching)
    randomize_rates(maml)
    with torch.no_grad():
        maml.inner_lrs["2.weight"][0] = -0.4
    x, y = regression_batch()[0][0], regression_batch()[1][0]
    zeroed = {n: r.detach().clamp(min=0) for n, r in maml.inner_lrs.items()}
    params = {n: p for n, p in maml.model.named_parameters()}
    expected = reference_objective(plain_forward(maml.model), F.mse_loss, params, (x[None], y[None], x[None], y[None]),
                                   2, lambda s, n: 0.1 * zeroed[n][s], list(params))
    assert torch.allclose(F.mse_loss(maml.predict(x, maml.adapt(x, y)), y), expected, rtol=1e-12)

    batch = regression_batch()
    actual = mamlkit_grads(maml, batch)
    assert maml.inner_lrs["2.weight"][0].item() == 0.0
    assert actual["inner_lr_scale.2.weight"][0] != 0  # alive at zero, so the meta-optimizer can raise it again
    assert relative_error(actual, reference_for(maml, batch)) < 1e-10

    signed = MAML(tanh_mlp(), F.mse_loss, inner_lr=0.1, learn_lr="metasgd", batching=batching)
    with torch.no_grad():
        signed.inner_lrs["2.weight"].fill_(-0.4)
    signed.meta_backward(*batch)
    assert (signed.inner_lrs["2.weight"] == -0.4).all()  # Meta-SGD's rates keep their sign


# -- parameters and checkpoints ---------------------------------------------------------------
def test_state_dict_round_trip_restores_model_and_rates():
    torch.manual_seed(0)
    maml = MAML(tanh_mlp(), F.mse_loss, inner_lr=0.1, inner_steps=2, learn_lr="lslr")
    randomize_rates(maml)
    state = maml.state_dict()
    assert sum(k.startswith("inner_lr_scale.") for k in state) == len(maml.inner_lrs)
    other = MAML(tanh_mlp(), F.mse_loss, inner_lr=0.1, inner_steps=2, learn_lr="lslr")
    other.load_state_dict(state)
    batch = regression_batch()
    assert torch.equal(other.meta_loss(*batch), maml.meta_loss(*batch))


def test_plain_maml_state_is_the_model_state_and_mismatched_rates_are_refused():
    model = tanh_mlp()
    plain = MAML(model, F.mse_loss, inner_lr=0.1)
    assert plain.state_dict().keys() == model.state_dict().keys()
    assert [id(p) for p in plain.parameters()] == [id(p) for p in model.parameters()]
    with pytest.raises(MamlkitError, match="learn_lr"):
        MAML(tanh_mlp(), F.mse_loss, inner_lr=0.1, learn_lr="metasgd").load_state_dict(model.state_dict())


# -- ANIL -------------------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("batching", ["vmap", "loop"])
@pytest.mark.parametrize("case", ["mlp", "conv"])
def test_anil_matches_reference(steps, batching, case):
    torch.manual_seed(0)
    model, batch, loss_fn = ((tanh_mlp(), regression_batch(), F.mse_loss) if case == "mlp"
                             else (conv_batchnorm(), image_batch(), F.cross_entropy))
    maml = build_algorithm("anil", model, loss_fn, inner_lr=0.3, inner_steps=steps, batching=batching)
    head = {n for n, _ in model[-1].named_parameters(prefix=str(len(model) - 1))}
    assert set(maml.parameters_to_adapt()) == head
    expected = reference_for(maml, batch)
    actual = mamlkit_grads(maml, batch)
    assert relative_error(actual, expected) < 1e-10
    assert all(actual[n].abs().sum() > 0 for n in actual if n not in head)  # the body is meta-learned


def test_anil_inner_loop_leaves_the_body_unchanged():
    torch.manual_seed(0)
    model = tanh_mlp()
    maml = MAML(model, F.mse_loss, inner_lr=0.3, inner_steps=3, adapt_only=["4.*"])
    x, y, qx, _ = (t[0] for t in regression_batch())
    adapted = maml.adapt(x, y)
    assert set(adapted) == {"4.weight", "4.bias"}
    assert not torch.equal(adapted["4.weight"], model[4].weight)
    expected = F.linear(model[:4](qx), adapted["4.weight"], adapted["4.bias"])
    assert torch.allclose(maml.predict(qx, adapted), expected, rtol=1e-14)


# -- MAML++ -------------------------------------------------------------------------------------
def test_importance_weights_anneal_from_uniform_to_the_last_step():
    steps, msl_epochs = 5, 10
    assert importance_weights(steps, 0, msl_epochs) == [1 / steps] * steps
    previous = importance_weights(steps, 0, msl_epochs)
    for epoch in range(1, 2 * msl_epochs):
        weights = importance_weights(steps, epoch, msl_epochs)
        assert abs(sum(weights) - 1) < 1e-12
        assert all(w <= p for w, p in zip(weights[:-1], previous[:-1])) and weights[-1] >= previous[-1]
        assert min(weights[:-1]) >= 0.03 / steps - 1e-15
        previous = weights
    assert importance_weights(steps, msl_epochs, msl_epochs)[:-1] == [0.03 / steps] * (steps - 1)


def official_importance_vector(steps, epoch, msl_epochs):
    """get_per_step_loss_importance_vector of the MAML++ authors' code (HowToTrainYourMAMLPytorch,
    few_shot_learning_system.py), transcribed loop for loop."""
    loss_weights = [1.0 / steps] * steps
    decay_rate = 1.0 / steps / msl_epochs
    min_value_for_non_final_losses = 0.03 / steps
    for i in range(len(loss_weights) - 1):
        loss_weights[i] = max(loss_weights[i] - epoch * decay_rate, min_value_for_non_final_losses)
    loss_weights[-1] = min(loss_weights[-1] + epoch * (steps - 1) * decay_rate,
                           1.0 - (steps - 1) * min_value_for_non_final_losses)
    return loss_weights


def test_importance_weights_equal_the_papers_code():
    assert importance_weights(5, 3, 10) == pytest.approx([0.14, 0.14, 0.14, 0.14, 0.44], abs=1e-15)
    assert importance_weights(5, 9, 10) == pytest.approx([0.02] * 4 + [0.92], abs=1e-15)
    assert importance_weights(5, 10, 10) == pytest.approx([0.006] * 4 + [0.976], abs=1e-15)
    for steps, msl_epochs in ((2, 3), (3, 4), (5, 10), (8, 10)):
        for epoch in range(msl_epochs + 2):
            assert importance_weights(steps, epoch, msl_epochs) == pytest.approx(
                official_importance_vector(steps, epoch, msl_epochs), abs=1e-15)


def test_mamlpp_uses_the_weights_of_the_current_epoch():
    maml = MAMLPlusPlus(tanh_mlp(), F.mse_loss, inner_lr=0.1, inner_steps=3, msl_epochs=4, iterations_per_epoch=3)
    maml.iteration = 7  # epoch 2: decay 1/12 per epoch, so 1/3 − 2/12 before the last step
    assert maml.training_options()[1].tolist() == pytest.approx([1 / 6, 1 / 6, 2 / 3], abs=1e-15)


def bn_mlp(track=False):
    return nn.Sequential(nn.Linear(2, 8), nn.BatchNorm1d(8, track_running_stats=track), nn.Tanh(), nn.Linear(8, 1))


def per_step_bn_forward(maml, training):
    """The per-step BatchNorm network written out: set min(s, sets - 1) after s steps."""
    bn = maml.model[1]

    def forward(p, x, s):
        k = min(s, bn.steps - 1)
        h = F.linear(x, p["0.weight"], p["0.bias"])
        if training:
            h = F.batch_norm(h, None, None, p["1.weight"][k], p["1.bias"][k], training=True, eps=bn.eps)
        else:
            h = F.batch_norm(h, bn.running_mean[k], bn.running_var[k], p["1.weight"][k], p["1.bias"][k],
                             training=False, eps=bn.eps)
        return F.linear(torch.tanh(h), p["3.weight"], p["3.bias"])
    return forward


def randomize_bn(bn, seed=7):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in (bn.weight, bn.bias):
            t.copy_(torch.randn(t.shape, generator=g) * 0.5 + (1.0 if t is bn.weight else 0.0))
        if bn.track_running_stats:
            bn.running_mean.copy_(torch.randn(bn.running_mean.shape, generator=g))
            bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=g) + 0.5)


@pytest.mark.parametrize("batching", ["vmap", "loop"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_mamlpp_matches_reference(batching, mode):
    """Multi-step loss, LSLR and per-step BatchNorm (batch statistics in train mode, each step's
    running statistics in eval mode), second order."""
    torch.manual_seed(0)
    maml = MAMLPlusPlus(bn_mlp(track=mode == "eval"), F.mse_loss, inner_lr=0.1, inner_steps=3, batching=batching,
                        first_order_epochs=0, msl_epochs=4, iterations_per_epoch=1)
    maml.iteration = 2  # mid-annealing: weights neither uniform nor one-hot
    assert isinstance(maml.model[1], PerStepBatchNorm) and maml.model[1].steps == 4
    randomize_rates(maml)
    randomize_bn(maml.model[1])
    maml.model.train(mode == "train")
    batch = regression_batch()
    weights = importance_weights(3, 2, 4)
    expected = reference_for(maml, batch, per_step_bn_forward(maml, mode == "train"), weights=weights)
    actual = mamlkit_grads(maml, batch)
    assert relative_error(actual, expected) < 1e-10
    assert maml.iteration == 3


def test_mamlpp_anneals_derivative_order_and_turns_multi_step_loss_off():
    torch.manual_seed(0)
    maml = MAMLPlusPlus(tanh_mlp(), F.mse_loss, inner_lr=0.1, inner_steps=2, first_order_epochs=1,
                        msl_epochs=2, iterations_per_epoch=2)
    randomize_rates(maml)
    batch = regression_batch()
    for iteration in range(5):
        first_order, weights = iteration < 2, importance_weights(2, iteration // 2, 2) if iteration < 4 else None
        expected = reference_for(maml, batch, first_order=first_order, weights=weights)
        assert maml.training_options()[0] == first_order
        assert relative_error(mamlkit_grads(maml, batch), expected) < 1e-10
    state = maml.state_dict()
    again = MAMLPlusPlus(tanh_mlp(), F.mse_loss, inner_lr=0.1, inner_steps=2, first_order_epochs=1)
    again.load_state_dict(state)
    assert again.iteration == 5


def test_mamlpp_cosine_meta_learning_rate():
    maml = MAMLPlusPlus(tanh_mlp(), F.mse_loss, inner_lr=0.1, cosine_iterations=10, min_meta_lr=1e-4)
    optimizer = torch.optim.Adam(maml.parameters(), lr=1e-2)
    scheduler = maml.lr_scheduler(optimizer)
    rates = []
    for _ in range(10):
        optimizer.step()
        scheduler.step()
        rates.append(optimizer.param_groups[0]["lr"])
    assert abs(rates[4] - (1e-2 + 1e-4) / 2) < 1e-12 and abs(rates[-1] - 1e-4) < 1e-12
    assert all(a > b for a, b in zip(rates, rates[1:]))
    assert MAMLPlusPlus(tanh_mlp(), F.mse_loss, inner_lr=0.1).lr_scheduler(optimizer) is None


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_evaluate_runs_each_step_with_its_own_batchnorm_set(mode):
    """Per-step sets made to differ: after s steps, the curve must use set min(s, N)."""
    torch.manual_seed(0)
    maml = MAMLPlusPlus(bn_mlp(track=mode == "eval"), F.mse_loss, inner_lr=0.1, inner_steps=2, eval_inner_steps=4,
                        batching="loop" if mode == "eval" else "vmap")
    randomize_rates(maml)
    randomize_bn(maml.model[1])
    maml.model.train(mode == "train")
    batch = regression_batch()
    curves = maml.evaluate(*batch)["loss"]
    forward = per_step_bn_forward(maml, mode == "train")
    params = {n: p.detach().requires_grad_() for n, p in maml.model.named_parameters()}
    for i in range(3):
        for steps in range(5):
            task = tuple(t[i:i + 1] for t in batch)
            expected = reference_objective(forward, F.mse_loss, params, task, steps, lr_function(maml), list(params))
            assert torch.allclose(curves[i, steps], expected, rtol=1e-10)


def test_per_step_batchnorm_train_updates_only_the_current_steps_statistics():
    torch.manual_seed(0)
    maml = MAMLPlusPlus(bn_mlp(track=True), F.mse_loss, inner_lr=0.1, inner_steps=2, batching="loop")
    bn = maml.model[1]
    x, y = regression_batch()[0][0], regression_batch()[1][0]
    with torch.no_grad():
        expected_mean = bn.running_mean.clone()
        h = maml.model[0](x)
    maml.predict(x, step=1)  # train mode: batch statistics, set 1's running statistics move
    expected_mean[1] = 0.9 * expected_mean[1] + 0.1 * h.mean(0)
    assert torch.allclose(bn.running_mean, expected_mean, rtol=1e-12)
    before, output = bn.running_mean.clone(), maml.predict(x, step=1).detach()
    with torch.no_grad():
        bn.running_mean[1].add_(5.0)  # batch statistics do not depend on the running ones
    assert torch.allclose(maml.predict(x, step=1), output, rtol=1e-12)
    maml.model.eval()
    with torch.no_grad():
        bn.running_mean.copy_(before)
        for step in range(4):
            k = min(step, 2)
            manual = F.linear(torch.tanh(F.batch_norm(h, bn.running_mean[k], bn.running_var[k], bn.weight[k],
                                                      bn.bias[k], training=False, eps=bn.eps)),
                              maml.model[3].weight, maml.model[3].bias)
            assert torch.allclose(maml.predict(x, step=step), manual, rtol=1e-12)
        assert torch.equal(bn.running_mean, before)  # eval never updates


def test_per_step_batchnorm_meta_training_updates_every_steps_statistics_once_per_task():
    torch.manual_seed(0)
    maml = MAMLPlusPlus(bn_mlp(track=True), F.mse_loss, inner_lr=0.1, inner_steps=2, batching="loop")
    bn = maml.model[1]
    batch = regression_batch(tasks=2)
    maml.meta_loss(*batch)
    assert (bn.running_mean != 0).all()  # sets 0, 1 (support forwards) and 2 (query forward) moved
    with pytest.raises(MamlkitError, match="track_running_stats=False"):
        MAMLPlusPlus(bn_mlp(track=True), F.mse_loss, inner_lr=0.1, batching="vmap").meta_loss(*batch)


# -- inner-loop checkpointing ---------------------------------------------------------------------
@pytest.mark.parametrize("algorithm, options", [
    ("maml", {}), ("metasgd", {}), ("lslr", {}), ("anil", {}),
    ("mamlpp", {"first_order_epochs": 0, "iterations_per_epoch": 1}),
])
def test_checkpointed_inner_loop_gives_the_same_gradient(algorithm, options):
    batch = regression_batch()

    def grads(checkpoint_inner, via_meta_loss=False):
        torch.manual_seed(1)  # the same initial model every time
        maml = build_algorithm(algorithm, bn_mlp(), F.mse_loss, inner_lr=0.1, inner_steps=3, batching="loop",
                               checkpoint_inner=checkpoint_inner, **options)
        randomize_rates(maml)
        if via_meta_loss:  # all tasks in one graph, not meta_backward's task-by-task backward
            leaves = dict(maml.named_parameters())
            return dict(zip(leaves, torch.autograd.grad(maml.meta_loss(*batch), list(leaves.values()))))
        return mamlkit_grads(maml, batch)

    plain = grads(False)
    assert relative_error(grads(True, via_meta_loss=True), plain) < 1e-10
    calls = []
    original = torch.utils.checkpoint.checkpoint

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    torch.utils.checkpoint.checkpoint = counting
    try:
        checkpointed = grads(True)
    finally:
        torch.utils.checkpoint.checkpoint = original
    assert len(calls) == 3 * 3  # every inner step of every task was checkpointed
    assert relative_error(checkpointed, plain) < 1e-10


def test_checkpointing_picks_the_loop_with_one_warning_and_refuses_vmap():
    with pytest.warns(UserWarning, match="checkpoint_inner.*Python loop"):
        maml = MAML(tanh_mlp(), F.mse_loss, inner_lr=0.1, checkpoint_inner=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        maml.meta_loss(*regression_batch())
    for bad in ({"batching": "vmap"}, {"compile": True}):
        with pytest.raises(MamlkitError, match="checkpoint_inner"):
            MAML(tanh_mlp(), F.mse_loss, inner_lr=0.1, checkpoint_inner=True, **bad)
    with pytest.raises(MamlkitError, match="running statistics twice"):
        MAML(bn_mlp(track=True), F.mse_loss, inner_lr=0.1, checkpoint_inner=True,
             batching="loop").meta_loss(*regression_batch())


# -- compile -----------------------------------------------------------------------------------
def test_compiled_mamlpp_with_anil_equals_eager():
    torch.manual_seed(0)
    batch = regression_batch()

    def grads(compile):
        torch.manual_seed(0)
        maml = MAMLPlusPlus(bn_mlp(), F.mse_loss, inner_lr=0.1, inner_steps=2, adapt_only=["1.*", "3.*"],
                            compile=compile, first_order_epochs=1, iterations_per_epoch=1)
        randomize_rates(maml)
        first, second = mamlkit_grads(maml, batch), mamlkit_grads(maml, batch)  # first, then second order
        return {**{f"fo.{n}": g for n, g in first.items()}, **{f"so.{n}": g for n, g in second.items()}}

    eager, compiled = grads(False), grads(True)
    assert set(compiled) == set(eager) and any("inner_lr_scale." in n for n in eager)
    assert relative_error(compiled, eager) < 1e-12


# -- registry and errors ---------------------------------------------------------------------
def test_registry_builds_every_variant():
    for name in ("maml", "metasgd", "lslr", "mamlpp", "anil"):
        maml = build_algorithm(name, tanh_mlp(), F.mse_loss, inner_lr=0.1, inner_steps=2)
        assert isinstance(maml, MAML) and name in ALGORITHMS
        assert torch.isfinite(maml.meta_loss(*regression_batch()))
    with pytest.raises(MamlkitError, match="unknown algorithm 'mamlx'; choose one of"):
        build_algorithm("mamlx", tanh_mlp(), F.mse_loss, inner_lr=0.1)
    with pytest.raises(MamlkitError, match="bad options for algorithm 'anil'"):
        build_algorithm("anil", tanh_mlp(), F.mse_loss, inner_lr=0.1, adapt_steps=3)


def test_accepts_knows_maml_options_that_a_variant_refuses():
    assert accepts("protomaml", "compile") and accepts("imaml", "lam") and accepts("reptile", "meta_batch_chunk")
    assert not accepts("reptile", "compile") and not accepts("imaml", "learn_lr") and not accepts("maml", "lam")


@pytest.mark.parametrize("kwargs, message", [
    ({"learn_lr": "meta-sgd"}, "learn_lr must be one of"),
    ({"learn_lr": "lslr", "inner_steps": 0}, "needs inner_steps >= 1"),
    ({"adapt_only": "head.*"}, "matches none of the trainable parameters"),
])
def test_bad_variant_options_get_one_line_errors(kwargs, message):
    with pytest.raises(MamlkitError, match=message) as error:
        MAML(tanh_mlp(), F.mse_loss, **{"inner_lr": 0.1, **kwargs})
    assert "\n" not in str(error.value)
