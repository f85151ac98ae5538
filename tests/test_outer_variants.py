"""Reptile, iMAML and ProtoMAML, each checked in float64 against references that share no code with mamlkit."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from mamlkit.algorithms.imaml import IMAML
from mamlkit.algorithms.protomaml import ProtoMAML
from mamlkit.algorithms.reptile import Reptile
from mamlkit.errors import MamlkitError
from mamlkit.linalg import conjugate_gradient
from mamlkit.models.conv import omniglot_conv


pytestmark = pytest.mark.usefixtures("float64")  # every check here runs in float64


def regression_tasks(tasks=3, n=6, features=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(tasks, n, d, generator=g) for d in (features, 1, features, 1))


def tanh_mlp(features=2, hidden=4, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(features, hidden), nn.Tanh(), nn.Linear(hidden, 1))


def flat_grad(model):
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


# -- Reptile ---------------------------------------------------------------------------------
@pytest.mark.parametrize("batching", ["vmap", "loop"])
@pytest.mark.parametrize("inner_data", ["support", "all"])
def test_reptile_update_is_k_sgd_steps_then_interpolation(batching, inner_data):
    model, batch = tanh_mlp(), regression_tasks()
    sx, sy, qx, qy = batch
    theta = [p.detach().clone() for p in model.parameters()]
    lr, steps, meta_lr = 0.3, 3, 0.7
    adapted, query_losses = [], []
    for t in range(sx.shape[0]):
        x, y = (sx[t], sy[t]) if inner_data == "support" else (torch.cat([sx[t], qx[t]]), torch.cat([sy[t], qy[t]]))
        fast = [w.clone().requires_grad_() for w in theta]
        for _ in range(steps):
            h = torch.tanh(x @ fast[0].T + fast[1])
            grads = torch.autograd.grad(((h @ fast[2].T + fast[3] - y) ** 2).mean(), fast)
            fast = [(w - lr * g).detach().requires_grad_() for w, g in zip(fast, grads)]
        adapted.append(fast)
        query_losses.append(((torch.tanh(qx[t] @ fast[0].T + fast[1]) @ fast[2].T + fast[3] - qy[t]) ** 2).mean())
    expected = [w + meta_lr * (torch.stack([a[i] for a in adapted]).mean(0) - w) for i, w in enumerate(theta)]

    reptile = Reptile(model, F.mse_loss, lr, steps, inner_data=inner_data, batching=batching)
    optimizer = torch.optim.SGD(model.parameters(), lr=meta_lr)
    optimizer.zero_grad()
    loss = reptile.meta_backward(*batch)
    optimizer.step()
    for w, e in zip(model.parameters(), expected):
        assert rel(w.detach(), e) < 1e-12
    assert abs(loss.item() - torch.stack(query_losses).mean().item()) < 1e-12


def test_reptile_accumulates_like_backward_and_refuses_meta_loss():
    model, batch = tanh_mlp(), regression_tasks()
    reptile = Reptile(model, F.mse_loss, 0.1, 2)
    reptile.meta_backward(*batch)
    once = flat_grad(model).clone()
    reptile.meta_backward(*batch)
    assert rel(flat_grad(model), 2 * once) < 1e-14
    with pytest.raises(MamlkitError, match="meta_backward"):
        reptile.meta_loss(*batch)


# -- iMAML -----------------------------------------------------------------------------------
def closed_form_proximal_solution(theta, x, y, lam):
    """argmin_φ mean((x̃φ − y)²) + λ/2 ‖φ − θ‖² for a linear model, φ = [w, b], by a linear solve."""
    xt = torch.cat([x, torch.ones(x.shape[0], 1)], dim=1)
    a = 2 * xt.T @ xt / x.shape[0]
    return torch.linalg.solve(a + lam * torch.eye(a.shape[0]), 2 * xt.T @ y[:, 0] / x.shape[0] + lam * theta)


@pytest.mark.parametrize("batching", ["vmap", "loop"])
def test_imaml_equals_true_gradient_through_the_exact_inner_solution_of_linear_regression(batching):
    """Linear regression: φ*(θ) has a closed form, so autograd through it is the true meta-gradient."""
    torch.manual_seed(0)
    model, batch, lam = nn.Linear(3, 1), regression_tasks(features=3), 0.5
    sx, sy, qx, qy = batch
    theta = torch.cat([model.weight.detach().flatten(), model.bias.detach()]).requires_grad_()
    total = 0
    for t in range(sx.shape[0]):
        phi = closed_form_proximal_solution(theta, sx[t], sy[t], lam)
        total = total + ((qx[t] @ phi[:3] + phi[3] - qy[t][:, 0]) ** 2).mean()
    expected = torch.autograd.grad(total / sx.shape[0], theta)[0]

    imaml = IMAML(model, F.mse_loss, inner_lr=0.2, inner_steps=400, lam=lam, cg_steps=4, cg_tol=0.0,
                  batching=batching)
    imaml.meta_backward(*batch)
    assert rel(flat_grad(model), expected) < 1e-10


@pytest.mark.parametrize("batching", ["vmap", "loop"])
def test_imaml_after_few_steps_equals_autograd_through_those_steps_on_a_quadratic_loss(batching):
    """Three steps do not solve the inner problem (the implicit gradient alone is off by far more than
    the tolerance); on linear regression the Hessian is constant, so the meta-gradient with the
    unsolved part P g is exact: equal to autograd through the three proximal gradient steps."""
    torch.manual_seed(0)
    model, batch, lam, lr, steps = nn.Linear(3, 1), regression_tasks(features=3), 0.5, 0.05, 3
    sx, sy, qx, qy = batch
    theta = torch.cat([model.weight.detach().flatten(), model.bias.detach()]).requires_grad_()
    total = 0
    for t in range(sx.shape[0]):
        phi = theta
        for _ in range(steps):
            support = ((sx[t] @ phi[:3] + phi[3] - sy[t][:, 0]) ** 2).mean() + lam / 2 * ((phi - theta) ** 2).sum()
            phi = phi - lr * torch.autograd.grad(support, phi, create_graph=True)[0]
        total = total + ((qx[t] @ phi[:3] + phi[3] - qy[t][:, 0]) ** 2).mean()
    expected = torch.autograd.grad(total / sx.shape[0], theta)[0]

    IMAML(model, F.mse_loss, lr, steps, lam=lam, cg_steps=4, cg_tol=0.0, batching=batching).meta_backward(*batch)
    assert rel(flat_grad(model), expected) < 1e-10
    implicit_only = sum(((qx[t] @ phi[:3] + phi[3] - qy[t][:, 0]) ** 2).mean() for t in range(sx.shape[0])
                        for phi in [closed_form_proximal_solution(theta, sx[t], sy[t], lam)])
    assert rel(torch.autograd.grad(implicit_only / sx.shape[0], theta)[0], expected) > 1e-2


def newton_solve(loss_of, start, steps=30):
    phi = start.clone()
    for _ in range(steps):
        g = torch.autograd.functional.jacobian(loss_of, phi)
        phi = phi - torch.linalg.solve(torch.autograd.functional.hessian(loss_of, phi), g)
    return phi


@pytest.mark.parametrize("batching", ["vmap", "loop"])
def test_imaml_equals_exact_implicit_gradient_of_a_small_mlp(batching):
    """Inner problem solved to convergence by Newton, full Hessian, (I + H/λ)⁻¹ by a dense solve."""
    model, batch, lam = tanh_mlp(), regression_tasks(), 2.0
    sx, sy, qx, qy = batch
    shapes = [p.shape for p in model.parameters()]
    theta = torch.cat([p.detach().flatten() for p in model.parameters()])

    def loss(flat, x, y):
        w1, b1, w2, b2 = (piece.view(s) for piece, s in zip(flat.split([s.numel() for s in shapes]), shapes))
        return ((torch.tanh(x @ w1.T + b1) @ w2.T + b2 - y) ** 2).mean()

    expected = 0
    for t in range(sx.shape[0]):
        phi = newton_solve(lambda f: loss(f, sx[t], sy[t]) + lam / 2 * ((f - theta) ** 2).sum(), theta)
        hessian = torch.autograd.functional.hessian(lambda f: loss(f, sx[t], sy[t]), phi)
        system = torch.eye(theta.numel()) + hessian / lam
        assert torch.linalg.eigvalsh(system).min() > 0  # the problem is one CG can solve
        query_grad = torch.autograd.functional.jacobian(lambda f: loss(f, qx[t], qy[t]), phi)
        expected = expected + torch.linalg.solve(system, query_grad) / sx.shape[0]

    imaml = IMAML(model, F.mse_loss, inner_lr=0.3, inner_steps=300, lam=lam, cg_steps=theta.numel(),
                  cg_tol=1e-14, batching=batching)
    imaml.meta_backward(*batch)
    assert rel(flat_grad(model), expected) < 1e-8

    model.zero_grad()
    IMAML(model, F.mse_loss, inner_lr=0.3, inner_steps=300, lam=lam, cg_steps=1).meta_backward(*batch)
    assert rel(flat_grad(model), expected) > 1e-4  # cg_steps is used: one iteration is not the solve


def test_conjugate_gradient_solves_positive_definite_systems_and_stops_on_negative_curvature():
    g = torch.Generator().manual_seed(4)
    m = torch.randn(6, 6, generator=g)
    b = {"v": torch.randn(6, generator=g)}
    solve = lambda a, steps: conjugate_gradient(lambda v: {"v": a @ v["v"]}, b, steps, 0.0)["v"]  # noqa: E731
    positive = m @ m.T + 0.1 * torch.eye(6)
    assert rel(solve(positive, 6), torch.linalg.solve(positive, b["v"])) < 1e-8
    assert torch.equal(solve(-positive, 6), b["v"])  # negative curvature at once: the right-hand side
    indefinite = torch.diag(torch.tensor([1.0, 2.0, 3.0, -1.0, -2.0, -3.0]))
    first = solve(indefinite, 1)
    assert (b["v"] @ indefinite @ b["v"]) > 0 and torch.equal(solve(indefinite, 6), first)


def test_imaml_cg_tolerance_stops_iterating():
    model, batch = tanh_mlp(), regression_tasks()
    # 300 steps solve the inner problem, so the right-hand side is g itself; the zero start already meets the tolerance
    IMAML(model, F.mse_loss, 0.3, 300, lam=1.0, cg_tol=1.0).meta_backward(*batch)
    assert flat_grad(model).abs().max() < 1e-12
    model.zero_grad()
    exact = IMAML(model, F.mse_loss, 0.1, 5, lam=1.0, cg_steps=17, cg_tol=0.0)
    exact.meta_backward(*batch)
    full = flat_grad(model).clone()
    model.zero_grad()
    IMAML(model, F.mse_loss, 0.1, 5, lam=1.0, cg_steps=17, cg_tol=1e-3).meta_backward(*batch)
    assert 0 < rel(flat_grad(model), full) < 1e-2


def test_imaml_default_lam_makes_the_steps_leave_at_most_one_over_e_unsolved():
    """λ = 1/(α k): along a direction of zero curvature k steps shrink the unsolved part to (1 − αλ)^k."""
    for lr, steps in ((0.01, 10), (0.1, 5), (0.4, 1)):
        lam = IMAML(tanh_mlp(), F.mse_loss, lr, steps).strategy.lam
        assert lam == pytest.approx(1 / (lr * steps)) and (1 - lr * lam) ** steps <= math.exp(-1)
    assert IMAML(tanh_mlp(), F.mse_loss, 0.01, 10, lam=2.0).strategy.lam == 2.0


def test_imaml_evaluate_and_adapt_follow_the_proximal_inner_loop():
    model, batch, lam, lr, steps = tanh_mlp(), regression_tasks(), 0.7, 0.2, 4
    sx, sy, qx, qy = batch
    imaml = IMAML(model, F.mse_loss, lr, steps, lam=lam)
    curves = imaml.evaluate(*batch)["loss"]
    names = [n for n, _ in model.named_parameters()]
    theta = [p.detach() for p in model.parameters()]
    forward = lambda weights, x: functional_call(model, dict(zip(names, weights)), (x,))  # noqa: E731
    for t in range(sx.shape[0]):
        fast = [w.clone() for w in theta]
        for step in range(steps + 1):
            assert abs(((forward(fast, qx[t]) - qy[t]) ** 2).mean().item() - curves[t, step].item()) < 1e-12
            if step < steps:
                fast = [w.requires_grad_() for w in fast]
                grads = torch.autograd.grad(((forward(fast, sx[t]) - sy[t]) ** 2).mean(), fast)
                fast = [(w - lr * (g + lam * (w - w0))).detach() for w, g, w0 in zip(fast, grads, theta)]
        adapted = imaml.adapt(sx[t], sy[t])
        assert rel(torch.cat([adapted[n].flatten() for n in names]), torch.cat([w.flatten() for w in fast])) < 1e-12
    loss = imaml.meta_backward(*batch)  # reports the query loss at the adapted weights
    assert abs(loss.item() - curves[:, steps].mean().item()) < 1e-12


@pytest.mark.parametrize("batching", ["vmap", "loop"])
def test_imaml_inner_loop_halves_a_task_step_that_would_not_descend(batching):
    """With α far beyond 2/curvature plain gradient descent on the proximal problem explodes; iMAML's
    inner loop refuses each step that does not decrease the objective by 1e-4 α ‖∇‖² and halves that
    task's α, so it descends monotonically: checked against a hand-written loop doing the same."""
    model, batch, lam, lr, steps = tanh_mlp(), regression_tasks(), 0.5, 8.0, 12
    sx, sy, qx, qy = batch
    names = [n for n, _ in model.named_parameters()]
    theta = [p.detach() for p in model.parameters()]
    forward = lambda weights, x: functional_call(model, dict(zip(names, weights)), (x,))  # noqa: E731

    def objective_and_gradient(weights, t):
        weights = [w.detach().requires_grad_() for w in weights]
        value = ((forward(weights, sx[t]) - sy[t]) ** 2).mean() + lam / 2 * sum(
            ((w - w0) ** 2).sum() for w, w0 in zip(weights, theta))
        return value.detach(), [g.detach() for g in torch.autograd.grad(value, weights)]

    imaml = IMAML(model, F.mse_loss, lr, steps, lam=lam, batching=batching)
    curves = imaml.evaluate(*batch)["loss"]
    for t in range(sx.shape[0]):
        fast, rate, halvings, plain = theta, lr, 0, theta
        value, grads = objective_and_gradient(fast, t)
        for step in range(steps + 1):
            assert abs(((forward(fast, qx[t]) - qy[t]) ** 2).mean().item() - curves[t, step].item()) < 1e-10
            if step == steps:
                break
            candidate = [w - rate * g for w, g in zip(fast, grads)]
            candidate_value, candidate_grads = objective_and_gradient(candidate, t)
            if candidate_value <= value - 1e-4 * rate * sum((g ** 2).sum() for g in grads):
                fast, value, grads = candidate, candidate_value, candidate_grads
            else:
                rate, halvings = rate / 2, halvings + 1
            plain = [w - lr * g for w, g in zip(plain, objective_and_gradient(plain, t)[1])]
        assert halvings > 0 and value < objective_and_gradient(theta, t)[0]
        assert objective_and_gradient(plain, t)[0] > 1e3 * value  # what the unguarded loop would have done
        adapted = imaml.adapt(sx[t], sy[t])
        assert rel(torch.cat([adapted[n].flatten() for n in names]), torch.cat([w.flatten() for w in fast])) < 1e-10


# -- ProtoMAML -------------------------------------------------------------------------------
class Net(nn.Module):
    def __init__(self, features=3, hidden=5, ways=3):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(features, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh())
        self.head = nn.Linear(hidden, ways)

    def forward(self, x):
        return self.head(self.body(x))


def classification_tasks(tasks=3, ways=3, shots=2, queries=2, features=3, seed=2):
    g = torch.Generator().manual_seed(seed)
    labels = lambda k: torch.arange(ways).repeat(k)[torch.randperm(ways * k, generator=g)]  # noqa: E731
    support_y = torch.stack([labels(shots) for _ in range(tasks)])
    query_y = torch.stack([labels(queries) for _ in range(tasks)])
    return (torch.randn(tasks, ways * shots, features, generator=g), support_y,
            torch.randn(tasks, ways * queries, features, generator=g), query_y)


def reference_protomaml_loss(model, body_params, batch, lr, steps, first_order):
    """Per task: prototypes by a loop over classes, head = (2c, −‖c‖²), then SGD on (body, head)
    as independent variables (the head's start is a function of θ, its inner gradient is not).
    ``lr``: a number, or ``lr(step)`` -> one rate per tensor of (body, head weight, head bias)."""
    sx, sy, qx, qy = batch
    names = list(body_params)
    ways = model.head.out_features

    def logits(body, weight, bias, x):
        z = functional_call(model.body, dict(zip(names, body)), (x,))
        return z @ weight.T + bias

    total = 0
    for t in range(sx.shape[0]):
        z = functional_call(model.body, body_params, (sx[t],))
        c = torch.stack([z[sy[t] == k].mean(0) for k in range(ways)])
        start = [*body_params.values(), 2 * c, -(c * c).sum(1)]
        fast = [w.view_as(w) for w in start]  # new nodes: the inner gradient is the partial derivative
        for step in range(steps):
            support = F.cross_entropy(logits(fast[:-2], fast[-2], fast[-1], sx[t]), sy[t])
            grads = torch.autograd.grad(support, fast, create_graph=not first_order)
            rates = lr(step) if callable(lr) else [lr] * len(fast)
            fast = [w - r * g for w, r, g in zip(fast, rates, grads)]
        total = total + F.cross_entropy(logits(fast[:-2], fast[-2], fast[-1], qx[t]), qy[t])
    return total / sx.shape[0]


def body_parameters(model):
    return {n: p for n, p in model.body.named_parameters()}


def protomaml_grad(model, batch, first_order, batching, lr=0.5, steps=2):
    model.zero_grad()
    protomaml = ProtoMAML(model, F.cross_entropy, lr, steps, head="head", first_order=first_order, batching=batching)
    protomaml.meta_loss(*batch).backward()
    assert model.head.weight.grad is None  # the module's own head is never used
    return torch.cat([p.grad.flatten() for p in model.body.parameters()])


@pytest.mark.parametrize("batching", ["vmap", "loop"])
@pytest.mark.parametrize("first_order", [False, True])
def test_protomaml_meta_gradient_matches_plain_autograd_reference(batching, first_order):
    torch.manual_seed(0)
    model, batch = Net(), classification_tasks()
    params = body_parameters(model)
    expected = torch.autograd.grad(reference_protomaml_loss(model, params, batch, 0.5, 2, first_order),
                                   list(params.values()))
    assert rel(protomaml_grad(model, batch, first_order, batching), torch.cat([g.flatten() for g in expected])) < 1e-10


def test_protomaml_second_order_matches_finite_differences_and_differs_from_first_order():
    torch.manual_seed(0)
    model, batch = Net(), classification_tasks()
    second = protomaml_grad(model, batch, False, "vmap")
    params = body_parameters(model)
    g = torch.Generator().manual_seed(5)
    for _ in range(2):
        direction = {n: torch.randn(p.shape, generator=g) for n, p in params.items()}
        values = [reference_protomaml_loss(model, {n: (p.detach() + s * 1e-6 * direction[n]).requires_grad_()
                                                                   for n, p in params.items()},
                                           batch, 0.5, 2, False).item() for s in (1, -1)]
        numeric = (values[0] - values[1]) / 2e-6
        analytic = (second * torch.cat([d.flatten() for d in direction.values()])).sum().item()
        assert abs(numeric - analytic) < 1e-6 * max(1.0, abs(analytic))
    assert rel(protomaml_grad(model, batch, True, "vmap"), second) > 1e-3


@pytest.mark.parametrize("options", [
    {"learn_lr": "metasgd"}, {"learn_lr": "lslr", "first_order": True}, {"checkpoint_inner": True, "batching": "loop"},
    {"compile": True, "batching": "vmap"}, {"adapt_only": "body.2.*"},
])
def test_protomaml_takes_mamls_options_exactly(options):
    """Learned rates (the head's too), checkpointing, compile and ANIL-style selection against the reference."""
    torch.manual_seed(0)
    model, batch = Net(), classification_tasks()
    protomaml = ProtoMAML(model, F.cross_entropy, 0.5, 2, **options)
    rates = list(protomaml.inner_lrs.values())
    with torch.no_grad():  # rates apart from their common start, so a rate used for the wrong tensor shows
        for rate in rates:
            rate.uniform_(0.2, 0.8)
    protomaml.meta_backward(*batch)
    prefix = options.get("adapt_only", "body.*")[:-1]
    adapted = {n: p for n, p in model.body.named_parameters() if f"body.{n}".startswith(prefix)}
    lslr = options.get("learn_lr") == "lslr"
    lr = (lambda step: [0.5 * r[step] if lslr else r for r in rates]) if rates else 0.5  # LSLR: multiples of α
    meta = [*model.body.parameters(), *rates]
    reference = reference_protomaml_loss(model, adapted, batch, lr, 2, options.get("first_order", False))
    expected = torch.autograd.grad(reference, meta)
    assert len(rates) == (len(adapted) + 2 if "learn_lr" in options else 0)
    assert rel(torch.cat([p.grad.flatten() for p in meta]), torch.cat([g.flatten() for g in expected])) < 1e-10


@pytest.mark.parametrize("variant", [Reptile, IMAML])
@pytest.mark.parametrize("option", [{"learn_lr": "metasgd"}, {"compile": True}, {"checkpoint_inner": True}])
def test_reptile_and_imaml_refuse_the_options_of_a_gradient_through_the_loop(variant, option):
    with pytest.raises(MamlkitError, match=f"{variant.__name__} does not take {next(iter(option))}=") as error:
        variant(tanh_mlp(), F.mse_loss, 0.1, 2, **option)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("variant", [Reptile, IMAML])
def test_reptile_and_imaml_back_propagate_in_chunks_of_tasks(variant):
    grads = []
    for chunk in (None, 2):  # 3 tasks: a chunk of 2, then 1
        model = tanh_mlp()
        variant(model, F.mse_loss, 0.1, 3, meta_batch_chunk=chunk, first_order=True).meta_backward(*regression_tasks())
        grads.append(flat_grad(model))
    assert rel(grads[1], grads[0]) < 1e-12


def test_protomaml_starts_as_the_prototype_classifier():
    torch.manual_seed(0)
    model, (sx, sy, qx, qy) = Net(), classification_tasks()
    protomaml = ProtoMAML(model, F.cross_entropy, 0.5, 1)
    with torch.no_grad():
        z_support, z_query = model.body(sx[0]), model.body(qx[0])
        prototypes = torch.stack([z_support[sy[0] == k].mean(0) for k in range(3)])
        logits = protomaml.predict(qx[0], protomaml.adapt(sx[0], sy[0], steps=0))
        offset = logits + torch.cdist(z_query, prototypes) ** 2  # = ‖z‖², one constant per example
        assert (offset - offset[:, :1]).abs().max() < 1e-12
        assert rel(offset[:, 0], (z_query ** 2).sum(1)) < 1e-12
        curves = protomaml.evaluate(sx, sy, qx, qy, steps=1)["loss"]
        assert abs(curves[0, 0].item() - F.cross_entropy(logits, qy[0]).item()) < 1e-12
        assert abs(curves[:, 1].mean().item() - protomaml.meta_loss(sx, sy, qx, qy).item()) < 1e-12


# -- the paper's conv net (transductive BatchNorm): the vmapped path equals the task loop ---------
@pytest.mark.parametrize("build", [
    lambda model, batching: Reptile(model, F.cross_entropy, 0.3, 2, batching=batching),
    lambda model, batching: IMAML(model, F.cross_entropy, 0.3, 3, lam=1.0, cg_steps=3, batching=batching),
    lambda model, batching: ProtoMAML(model, F.cross_entropy, 0.3, 2, batching=batching),
], ids=["reptile", "imaml", "protomaml"])
def test_vmap_equals_loop_on_the_paper_conv_net(build):
    g = torch.Generator().manual_seed(3)
    labels = torch.arange(3).repeat(2).expand(2, 6)
    batch = (torch.randn(2, 6, 1, 6, 6, generator=g), labels, torch.randn(2, 6, 1, 6, 6, generator=g), labels)
    grads = {}
    for batching in ("vmap", "loop"):
        torch.manual_seed(0)
        model = omniglot_conv(3, filters=4)
        build(model, batching).meta_backward(*batch)
        grads[batching] = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    assert rel(grads["vmap"], grads["loop"]) < 1e-10


# -- bad options -----------------------------------------------------------------------------
class LinearThenTanh(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(3, 3)

    def forward(self, x):
        return torch.tanh(self.head(x))


@pytest.mark.parametrize("build, message", [
    (lambda: Reptile(tanh_mlp(), F.mse_loss, 0.1, 0), "inner_steps >= 1"),
    (lambda: Reptile(tanh_mlp(), F.mse_loss, 0.1, 2, inner_data="query"), "inner_data"),
    (lambda: IMAML(tanh_mlp(), F.mse_loss, 0.1, cg_steps=0), "cg_steps"),
    (lambda: IMAML(tanh_mlp(), F.mse_loss, 0.1, cg_steps=-2), "cg_steps"),
    (lambda: IMAML(tanh_mlp(), F.mse_loss, 0.1, lam=0), "lam"),
    (lambda: IMAML(tanh_mlp(), F.mse_loss, 0.1, lam=-1.0), "lam"),
    (lambda: IMAML(tanh_mlp(), F.mse_loss, 0.1, lam=float("nan")), "lam"),
    (lambda: IMAML(tanh_mlp(), F.mse_loss, 0.0), "by default 1 / \\(inner_lr · inner_steps\\)\\) must be .* got None"),
    (lambda: IMAML(tanh_mlp(), F.mse_loss, 0.1, cg_tol=-1e-3), "cg_tol"),
    (lambda: ProtoMAML(nn.Sequential(nn.Conv1d(1, 1, 1)), F.cross_entropy, 0.1), "has none"),
    (lambda: ProtoMAML(Net(), F.cross_entropy, 0.1, head="classifier"), "not a submodule"),
    (lambda: ProtoMAML(Net(), F.cross_entropy, 0.1, head="body.1"), "must be an nn.Linear, got Tanh"),
    (lambda: ProtoMAML(nn.Sequential(nn.Linear(3, 3, bias=False)), F.cross_entropy, 0.1), "without bias"),
])
def test_bad_options_raise_one_line_errors(build, message):
    with pytest.raises(MamlkitError, match=message) as error:
        build()
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("model, labels, message", [
    (LinearThenTanh, None, "not the model's last operation"),
    (Net, lambda sy, qy: (sy.double(), qy.double()), "integer class labels"),
    (Net, lambda sy, qy: (sy, qy + 1), r"lie in \[0, 3\)"),
    (Net, lambda sy, qy: (torch.zeros_like(sy), qy), "no support example"),
])
def test_protomaml_bad_models_and_labels(model, labels, message):
    sx, sy, qx, qy = classification_tasks()
    sy, qy = labels(sy, qy) if labels else (sy, qy)
    with pytest.raises(MamlkitError, match=message) as error:
        ProtoMAML(model(), F.cross_entropy, 0.1).meta_loss(sx, sy, qx, qy)
    assert "\n" not in str(error.value)
