"""MAML-RL correctness: the policy-gradient estimator, the meta-gradient through the inner
policy-gradient step against a plain loop written here, and the TRPO step's guarantees."""

import math

import pytest
import torch

from mamlkit.rl.advantages import advantages, discounted_returns, fit_linear_baseline
from mamlkit.rl.algorithms import (MetaBatch, MetaObjective, TRPOSettings, pg_inputs, pg_loss, trpo_step,
                                   log_prob_forward)
from mamlkit.rl.envs import Navigation2D
from mamlkit.rl.policy import GaussianPolicy
from mamlkit.rl.sampler import Episodes, per_task, sample


class Bandit:
    """One step; reward −|a − c|² with a fixed target c, observation fixed at ones."""
    obs_dim, act_dim, horizon = 3, 2, 1
    target = torch.tensor([0.3, -0.2], dtype=torch.float64)

    def sample_tasks(self, n, generator):
        return torch.zeros(n, 1)

    def reset(self, tasks, per_task, generator):
        return torch.ones(tasks.shape[0], per_task, self.obs_dim, dtype=torch.float64)

    def step(self, actions):
        reward = -(actions - self.target).pow(2).sum(-1)
        return torch.ones(*actions.shape[:-1], self.obs_dim, dtype=torch.float64), reward, torch.ones_like(reward).bool()


def flat(grads) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in (grads.values() if isinstance(grads, dict) else grads)])


def test_policy_gradient_estimator_is_unbiased_on_a_bandit_with_known_gradient():
    torch.manual_seed(0)
    env, policy = Bandit(), GaussianPolicy(3, 2, hidden=(4,), init_std=0.5).double()
    params = policy.params()
    # J(θ) = E[−|a − c|²] = −|μ(θ) − c|² − Σ σ(θ)²  in closed form.
    mean, log_std = policy.distribution(params, torch.ones(3, dtype=torch.float64))
    exact = flat(torch.autograd.grad(-(mean - env.target).pow(2).sum() - torch.exp(2 * log_std).sum(),
                                     list(params.values())))
    estimates = []
    generator = torch.Generator().manual_seed(1)
    for _ in range(40):
        episodes = sample(env, policy, per_task(params, 1), torch.zeros(1, 1), 500, generator)
        adv = advantages(episodes, gamma=1.0, normalize=False, baseline=False)
        x, weights = pg_inputs(episodes, adv)
        loss = pg_loss(log_prob_forward(policy)(params, x[0]), weights[0])
        estimates.append(-flat(torch.autograd.grad(loss, list(params.values()))))
    estimates = torch.stack(estimates)
    error = (estimates.mean(0) - exact).abs()
    standard_error = estimates.std(0) / math.sqrt(len(estimates))
    assert (error < 4 * standard_error + 1e-12).all(), (error / standard_error).max()
    # ... and a biased estimator (the sign of one weight flipped) would be caught:
    assert ((estimates.mean(0) + exact).abs() > 4 * standard_error).any()


def small_meta_batch(first_order=False, dtype=torch.float64, inner_lr=0.1):
    torch.manual_seed(0)
    env = Navigation2D(horizon=12, dtype=dtype)
    policy = GaussianPolicy(2, 2, hidden=(16, 16), init_std=0.3).to(dtype)
    generator = torch.Generator().manual_seed(3)
    tasks = env.sample_tasks(3, generator)
    objective = MetaObjective(policy, inner_lr, first_order)
    params = policy.params()
    pre = sample(env, policy, per_task(params, 3), tasks, 4, generator)
    pre_adv = advantages(pre)
    adapted = objective.adapted(params, MetaBatch(pre, pre_adv, pre, pre_adv, None, None, None))
    post = sample(env, policy, adapted, tasks, 4, generator)
    batch = MetaBatch(pre, pre_adv, post, advantages(post), None, None, None)
    objective.linearise(params, batch)  # records the collecting policy's terms
    return policy, objective, batch


def reference_log_prob(params, obs, actions):
    """log N(a; MLP(s), σ²) with the two-hidden-layer MLP written out by hand."""
    h = torch.relu(obs @ params["mean.0.weight"].T + params["mean.0.bias"])
    h = torch.relu(h @ params["mean.2.weight"].T + params["mean.2.bias"])
    mean, log_std = h @ params["mean.4.weight"].T + params["mean.4.bias"], params["log_std"]
    return (-0.5 * ((actions - mean) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def reference_meta_objective(params: dict, batch: MetaBatch, lr: float, first_order: bool):
    """A Python loop over tasks: inner REINFORCE step by torch.autograd.grad, then the surrogate and
    the mean KL(old ‖ new) on the post-update trajectories."""
    names, losses, kls = list(params), [], []
    for t in range(batch.post.obs.shape[0]):
        pre, post = batch.pre, batch.post
        valid = pre.mask[t].sum()
        inner = -(reference_log_prob(params, pre.obs[t], pre.actions[t]) * batch.pre_adv[t] * pre.mask[t]).sum() / valid
        grads = torch.autograd.grad(inner, list(params.values()), create_graph=not first_order)
        fast = {n: params[n] - lr * (g.detach() if first_order else g) for n, g in zip(names, grads)}
        log_prob = reference_log_prob(fast, post.obs[t], post.actions[t])
        count = post.mask[t].sum()
        losses.append(-(torch.exp(log_prob - batch.old_log_prob[t]) * batch.post_adv[t] * post.mask[t]).sum() / count)
        h = torch.relu(post.obs[t] @ fast["mean.0.weight"].T + fast["mean.0.bias"])
        h = torch.relu(h @ fast["mean.2.weight"].T + fast["mean.2.bias"])
        mean, log_std = h @ fast["mean.4.weight"].T + fast["mean.4.bias"], fast["log_std"]
        old_mean, old_std, std = batch.old_mean[t], batch.old_log_std[t].exp(), log_std.exp()
        kl = (torch.log(std / old_std) + (old_std ** 2 + (old_mean - mean) ** 2) / (2 * std ** 2) - 0.5).sum(-1)
        kls.append((kl * post.mask[t]).sum() / count)
    return torch.stack(losses).mean(), torch.stack(kls).mean()


@pytest.mark.parametrize("first_order", [False, True])
def test_meta_gradient_and_kl_hessian_match_a_plain_loop_in_float64(first_order):
    policy, objective, batch = small_meta_batch(first_order)
    params = policy.params()
    leaves = list(params.values())
    loss, kl = objective(params, batch)
    ref_loss, ref_kl = reference_meta_objective(params, batch, 0.1, first_order)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(kl, ref_kl, rtol=0, atol=1e-12)  # zero at the collecting policy
    grad, ref_grad = (flat(torch.autograd.grad(value, leaves)) for value in (loss, ref_loss))
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)
    assert grad.norm() > 1e-3
    # The Fisher-vector product TRPO uses equals the reference KL's Hessian (by double backward) times v.
    v = torch.randn(grad.numel(), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ref_kl_grad = flat(torch.autograd.grad(reference_meta_objective(params, batch, 0.1, first_order)[1], leaves,
                                           create_graph=True))
    expected = flat(torch.autograd.grad(ref_kl_grad @ v, leaves))
    fisher_v = objective.linearise(params, batch)[1](v)
    torch.testing.assert_close(fisher_v, expected, rtol=1e-9, atol=1e-12)
    assert v @ fisher_v > 0


def test_second_order_meta_gradient_differs_from_first_order():
    (policy, so, batch), (_, fo, _) = small_meta_batch(False), small_meta_batch(True)
    leaves = list(policy.params().values())
    exact = flat(torch.autograd.grad(so(policy.params(), batch)[0], leaves))
    first = flat(torch.autograd.grad(fo(policy.params(), batch)[0], leaves))
    assert (exact - first).norm() > 1e-3 * exact.norm()


def test_trpo_step_stays_within_the_kl_bound_and_improves_the_surrogate():
    policy, objective, batch = small_meta_batch()
    params = policy.params()
    before = {n: p.detach().clone() for n, p in params.items()}
    with torch.no_grad():
        loss_before, _ = objective(params, batch)
    settings = TRPOSettings(max_kl=0.01)
    info = trpo_step(params, lambda p: objective(p, batch), lambda p: objective.linearise(p, batch), settings)
    with torch.no_grad():
        loss_after, kl_after = objective(policy.params(), batch)
    assert info["accepted"] == 1.0
    assert loss_after < loss_before
    assert 0 < kl_after <= settings.max_kl
    assert math.isclose(kl_after.item(), info["kl"], rel_tol=1e-9)
    assert any(not torch.equal(before[n], p) for n, p in policy.params().items())
    # The quadratic model puts the full step on the bound, so the first accepted steps land close to it.
    assert kl_after > 0.1 * settings.max_kl


def test_discounted_returns_and_baseline_follow_their_definitions():
    generator = torch.Generator().manual_seed(0)
    rewards = torch.randn(2, 3, 5, dtype=torch.float64, generator=generator)
    mask = torch.ones_like(rewards)
    mask[0, 0, 3:] = 0
    returns = discounted_returns(rewards, mask, 0.9)
    expected = sum(0.9 ** k * rewards[1, 2, 1 + k] for k in range(4))
    torch.testing.assert_close(returns[1, 2, 1], expected)
    torch.testing.assert_close(returns[0, 0, 2], rewards[0, 0, 2])  # the episode ended after step 2
    # Returns that are a linear function of the features are fitted exactly, per task.
    obs = torch.randn(2, 3, 5, 2, dtype=torch.float64, generator=generator)
    episodes = Episodes(obs, torch.zeros(2, 3, 5, 1, dtype=torch.float64), rewards, torch.ones_like(rewards))
    target = torch.stack([obs[0, ..., 0] * 2 - obs[0, ..., 1] ** 2, obs[1, ..., 1] + 1])
    torch.testing.assert_close(fit_linear_baseline(episodes, target), target, rtol=1e-4, atol=1e-4)  # ridge 1e-5
    # GAE with λ = 1 is returns minus the baseline; advantages are normalised per task.
    adv = advantages(episodes, gamma=0.9, gae_lambda=1.0, normalize=False)
    gae = advantages(episodes, gamma=0.9, gae_lambda=0.999999, normalize=False)
    torch.testing.assert_close(adv, gae, rtol=1e-4, atol=1e-4)
    normalized = advantages(episodes, gamma=0.9)
    torch.testing.assert_close(normalized.mean((1, 2)), torch.zeros(2, dtype=torch.float64), atol=1e-9, rtol=0)


def test_advantages_subtract_a_baseline_fitted_on_discounted_returns():
    """Rewards built so that the discounted returns are a linear function of the baseline's
    features: the fitted baseline is the returns, so the advantages vanish (a baseline fitted on
    the rewards would leave about γ R_{t+1})."""
    generator = torch.Generator().manual_seed(1)
    obs = torch.randn(2, 4, 6, 2, dtype=torch.float64, generator=generator)
    returns = 3.0 + 2.0 * obs[..., 0] - obs[..., 1] ** 2
    gamma = 0.9
    rewards = returns - gamma * torch.cat([returns[..., 1:], torch.zeros_like(returns[..., :1])], dim=-1)
    episodes = Episodes(obs, torch.zeros(2, 4, 6, 1, dtype=torch.float64), rewards, torch.ones_like(rewards))
    torch.testing.assert_close(discounted_returns(rewards, episodes.mask, gamma), returns)
    adv = advantages(episodes, gamma=gamma, normalize=False)
    assert adv.abs().max() < 1e-3 < returns.abs().min()


def test_normalised_advantages_have_zero_mean_and_unit_std_per_task():
    generator = torch.Generator().manual_seed(2)
    rewards = 10.0 * torch.randn(2, 3, 5, dtype=torch.float64, generator=generator)
    mask = torch.ones_like(rewards)
    mask[1, 0, 2:] = 0
    episodes = Episodes(torch.randn(2, 3, 5, 2, dtype=torch.float64, generator=generator),
                        torch.zeros(2, 3, 5, 1, dtype=torch.float64), rewards, mask)
    raw = advantages(episodes, gamma=0.9, normalize=False)
    adv = advantages(episodes, gamma=0.9)
    count = mask.sum((1, 2))
    mean = (raw * mask).sum((1, 2)) / count
    std = (((raw - mean[:, None, None]) ** 2 * mask).sum((1, 2)) / count).sqrt()
    assert (std - 1).abs().min() > 0.5  # raw advantages are far from unit scale
    torch.testing.assert_close((adv * mask).sum((1, 2)) / count, torch.zeros(2, dtype=torch.float64),
                               atol=1e-9, rtol=0)
    torch.testing.assert_close(((adv ** 2 * mask).sum((1, 2)) / count).sqrt(), torch.ones(2, dtype=torch.float64),
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(adv, (raw - mean[:, None, None]) / std[:, None, None] * mask, atol=1e-6, rtol=0)


def test_navigation_scales_and_clips_actions_rewards_distance_and_ends_at_the_goal():
    env = Navigation2D()
    tasks = torch.tensor([[0.05, 0.0], [0.3, -0.4]])
    obs = env.reset(tasks, 2, torch.Generator())
    assert obs.shape == (2, 2, 2) and obs.abs().sum() == 0
    obs, reward, done = env.step(torch.tensor([[[3.0, 0.0], [0.5, 0.0]], [[0.0, -5.0], [0.0, 0.0]]]))
    torch.testing.assert_close(obs[0, 0], torch.tensor([0.1, 0.0]))       # clipped to 1, scaled by 0.1
    torch.testing.assert_close(obs[0, 1], torch.tensor([0.05, 0.0]))      # rllab's normalize: 0.1 · a
    torch.testing.assert_close(reward[0, 0], torch.tensor(-0.05))
    assert done.tolist() == [[False, True], [False, False]]
    torch.testing.assert_close(reward[1, 0], -torch.tensor([0.3, -0.3]).norm())
    goals = env.sample_tasks(1000, torch.Generator().manual_seed(0))
    assert goals.min() >= -0.5 and goals.max() <= 0.5 and goals.std() > 0.25


def test_sampler_masks_steps_after_an_episode_ends():
    torch.manual_seed(0)
    env, policy = Navigation2D(horizon=30), GaussianPolicy(2, 2, hidden=(8,))
    tasks = torch.zeros(2, 2)  # the goal is the start: ends only when a step lands within 0.01
    episodes = sample(env, policy, per_task(policy.params(), 2), tasks, 3, torch.Generator().manual_seed(0))
    assert episodes.obs.shape[:2] == (2, 3) and episodes.obs.shape[2] <= 30
    mask = episodes.mask
    assert (mask[..., 1:] <= mask[..., :-1]).all()  # once ended, stays ended
    assert ((episodes.rewards != 0) <= (mask > 0)).all()
