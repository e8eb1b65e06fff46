"""World models (the RSSM): the linear configuration against the Kalman filter with inputs
(float64 identities, SMC unbiased), both latent kinds through the bounds, the objective's
surrogates, prediction, the planning interface, the config, bad input."""

from __future__ import annotations

import math

import pytest
import torch

import elbox
from elbox import Sequences, WorldModel
from elbox.bounds.sequence import elbo_steps, smc
from elbox.models.world import WorldState, world_elbo_steps

LENGTHS = torch.tensor([6, 4, 2, 6, 3])


def _linear_world(Z=2, obs=2, A=1, seed=0) -> WorldModel:
    """A linear world model (an LGSSM with the actions as inputs) with random parameters and a
    perturbed posterior, in float64."""
    torch.manual_seed(seed)
    model = WorldModel(obs, A, transition="linear", latent_dim=Z, reward=False, observation_variance=0.5).double()
    with torch.no_grad():
        M = torch.randn(Z, Z, dtype=torch.float64)
        model.transition_matrix.weight.copy_(0.8 * M / torch.linalg.matrix_norm(M, 2))
        model.raw_scale.copy_(torch.randn(Z) * 0.3)
        model.observation.weight.copy_(torch.randn(obs, Z))
        model.control.weight.copy_(torch.randn(Z, A))
        model.z_0.copy_(torch.randn(Z))
        # q(z_t | h_t, o_t) = N(W h_t + V o_t + b, diag s²): near the prior, randomly off it
        guide = model.guide()
        guide.head.weight.copy_(torch.cat([torch.eye(Z), torch.zeros(Z, obs)], 1) + 0.2 * torch.randn(Z, Z + obs))
        guide.head.bias.copy_(0.2 * torch.randn(Z))
        guide.raw_scale.copy_(model.raw_scale + 0.2 * torch.randn(Z))
    return model


def _episodes(model, lengths=LENGTHS, seed=1) -> Sequences:
    torch.manual_seed(seed)
    T = int(lengths.max())
    a = torch.randn(len(lengths), T, model.action_dim, dtype=torch.float64)
    a[:, 0] = 0.0
    o, _ = model.sample(len(lengths), num_steps=T, inputs=a)
    r = torch.randn(len(lengths), T, dtype=torch.float64) if model.has_reward else None
    return Sequences(o, lengths=lengths, inputs=a, rewards=r)


# The linear configuration is an LGSSM with inputs: exact identities in float64.


def test_the_linear_world_model_has_the_kalman_filters_evidence_and_posterior():
    model = _linear_world()
    x = _episodes(model)
    lgssm = model.to_lgssm()
    log_px = lgssm.log_evidence(x)
    posterior = lgssm.posterior(x)
    H = model.deter_dim
    for path in (model.prior_for(x).rsample((5,)), model.guide()(model.check_data(x)).rsample((5,))):
        # log p(o, z | a) − log p(z | o, a) = log p(o | a) for every path
        torch.testing.assert_close(model.log_joint(x, path) - posterior.log_prob(path[..., H:]), log_px.expand(5, -1),
                                   rtol=0, atol=1e-9)  # fmt: skip


def test_log_evidence_is_elbo_plus_kl_to_the_exact_posterior():
    model = _linear_world()
    x = _episodes(model)
    lgssm = model.to_lgssm()
    log_px = lgssm.log_evidence(x)
    q = model.guide()(model.check_data(x))
    path, log_q = q.rsample_and_log_prob((64,))
    elbo_draws = model.log_joint(x, path) - log_q  # [S, B]
    kl_draws = log_q - lgssm.posterior(x).log_prob(path[..., model.deter_dim:])
    # the same particles: ELBO + KL(q ‖ p(z | o, a)) = log p(o | a) to rounding
    torch.testing.assert_close(elbo_draws.mean(0) + kl_draws.mean(0), log_px, rtol=0, atol=1e-9)
    assert (kl_draws.mean(0) > 0).all()
    # the step-by-step ELBO with analytic KLs estimates the same bound: within 5 standard errors
    torch.manual_seed(2)
    S = 4000
    steps = elbo_steps(model, model.guide(), x, num_samples=S)
    assert steps.kl_method == "analytic"
    torch.manual_seed(3)
    path, log_q = q.rsample_and_log_prob((S,))
    draws = model.log_joint(x, path) - log_q
    se = draws.std(0) / math.sqrt(S)
    assert ((steps.value.sum(-1) - draws.mean(0)).abs() < 5 * math.sqrt(2) * se).all()
    terms = elbox.elbo(model, model.guide(), x, num_samples=4)
    assert terms.kl_method == "analytic" and (terms.value < log_px).all()


def test_smc_evidence_is_unbiased_within_its_standard_error():
    model = _linear_world()
    x = model.check_data(_episodes(model))
    log_px = model.to_lgssm().log_evidence(x)
    R, B = 2000, len(x)
    replicas = Sequences(x.values.repeat(R, 1, 1), x.mask.repeat(R, 1), inputs=x.inputs.repeat(R, 1, 1))
    torch.manual_seed(4)
    with torch.no_grad():
        runs = smc(model, model.guide(), replicas, num_samples=4).log_z.view(R, B)
    ratio = (runs - log_px).exp()  # Ẑ / p(o | a)
    mean, se = ratio.mean(0), ratio.std(0) / math.sqrt(R)
    assert ((mean - 1).abs() < 4 * se).all(), (mean, se)
    assert (runs.mean(0) < log_px).all()  # log Ẑ biased low: FIVO is a bound
    estimate = elbox.log_evidence(model, x, guide=model.guide(), method="smc", num_samples=256, num_runs=8)
    assert ((estimate.value - log_px).abs() < 4 * estimate.stderr + 1e-3).all()


def test_the_linear_models_predictive_likelihood_is_the_kalman_forecasts():
    model = _linear_world(A=2)
    lengths = torch.full((6,), 8)
    x = model.check_data(_episodes(model, lengths))
    c, k = 5, 3
    lgssm = model.to_lgssm()
    head = Sequences(x.values[:, :c], inputs=x.inputs[:, :c])
    forecast = lgssm.forecast(head, k, inputs=x.inputs[:, c : c + k])
    exact = torch.distributions.MultivariateNormal(forecast.mean, forecast.covariance).log_prob(x.values[:, c:])
    torch.manual_seed(5)
    result = model.predictive_log_likelihood(x, context=c, horizon=k, num_samples=2000, method="smc", num_runs=8)
    # a ratio estimator: consistent, within a few Monte Carlo standard errors at this size
    assert ((result["log_likelihood"] - exact).abs() < 5 * result["mc_stderr"] + 0.02).all(), \
        (result["log_likelihood"] - exact, result["mc_stderr"])  # fmt: skip
    expected_error = (forecast.mean - x.values[:, c:]).square().sum(-1)
    torch.testing.assert_close(result["squared_error"], expected_error, rtol=0.1, atol=0.05)


# Both latent kinds through the bounds and objectives.


def _pendulum(episodes=6, steps=12, seed=0) -> Sequences:
    """A tiny fixture: random-policy Pendulum-v1 episodes generated here (gymnasium)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "configs" / "data"))
    from make_world_pendulum import pendulum_episodes

    arrays = pendulum_episodes(episodes, steps, seed=seed)
    return Sequences(torch.from_numpy(arrays["x"]), inputs=torch.from_numpy(arrays["inputs"]),
                     rewards=torch.from_numpy(arrays["rewards"]))  # fmt: skip


def _small(latent="gaussian", **options) -> WorldModel:
    torch.manual_seed(0)
    return WorldModel(3, 1, latent=latent, latent_dim=4, classes=3, deter_dim=8, hidden=16, **options)


@pytest.mark.parametrize("latent", ["gaussian", "categorical"])
def test_the_per_step_terms_vanish_past_each_end_and_sum_to_the_elbo(latent):
    model = _small(latent)
    x = _pendulum()
    x = Sequences(x.values, lengths=torch.tensor([12, 5, 2, 12, 7, 3]), inputs=x.inputs, rewards=x.rewards)
    torch.manual_seed(3)
    steps = world_elbo_steps(model, x, num_samples=3)
    torch.manual_seed(3)
    terms = elbox.elbo(model, model.guide(), x, num_samples=3)
    mask = model.check_data(x).mask
    assert (steps.value[~mask] == 0).all() and (steps.kl[~mask] == 0).all() and (steps.kl[mask] >= 0).all()
    assert (steps.reward[:, 0] == 0).all()  # no reward is received on arriving at the first observation
    torch.testing.assert_close(steps.value.sum(-1), terms.value)
    torch.testing.assert_close(steps.observation + steps.reward - steps.kl, steps.value)
    # the padding does not change a sequence's bound: sequence 2 (2 steps) alone, and padded to 12
    # beside sequence 0, each 1,000 independent one-path draws; within 4 standard errors
    torch.manual_seed(4)
    alone = world_elbo_steps(model, x[torch.full((1000,), 2)]).value.sum(-1)
    padded = world_elbo_steps(model, x[torch.tensor([2, 0]).repeat(1000)]).value.sum(-1)[::2]
    se = math.sqrt(float(alone.detach().var() + padded.detach().var()) / 1000)
    assert abs(float(alone.mean() - padded.mean())) < 4 * se, (alone.mean(), padded.mean(), se)


@pytest.mark.parametrize("latent", ["gaussian", "categorical"])
@pytest.mark.parametrize("bound", ["world_elbo", "iwae", "fivo"])
def test_both_latents_train_with_elbo_iwae_and_fivo(latent, bound):
    model = _small(latent, observation_variance=0.1)
    x = _pendulum()
    options = {} if bound == "world_elbo" else {"num_samples": 4}
    torch.manual_seed(0)
    before = elbox.elbo(model, model.guide(), x, num_samples=50).value.mean()
    history = elbox.fit(model, model.guide(), x, bound=bound, epochs=25, lr=1e-2, seed=0, **options)
    torch.manual_seed(0)
    after = elbox.elbo(model, model.guide(), x, num_samples=50).value.mean()
    assert math.isfinite(history.final) and after > before + 10, (before, after)


def test_the_categorical_draw_is_one_hot_with_the_straight_through_gradient():
    model = _small("categorical", unimix=0.01)
    logits = torch.randn(5, 4, 3, requires_grad=True)
    stats = model._stats_from(logits.flatten(-2))  # (mixed logits [5, 4, 3],)
    z = model._draw(stats)
    one_hot = z.unflatten(-1, (4, 3))
    torch.testing.assert_close(one_hot, one_hot.round())  # one-hot to rounding (+ probs − probs, detached)
    assert (one_hot.round().sum(-1) == 1).all()
    probs = stats[0].softmax(-1)
    assert (probs >= 0.01 / 3 - 1e-7).all()  # the uniform mix bounds every class away from 0
    (z * torch.randn_like(z)).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


# The objective: the true ELBO always, surrogates labelled.


def test_surrogates_change_what_is_maximized_and_never_the_reported_bound():
    model = _small()
    x = _pendulum()
    plain = elbox.objectives.make_objective("world_elbo", model, model.guide())
    torch.manual_seed(1)
    out = plain(x)
    assert "surrogate" not in out.parts and torch.equal(out.value, out.surrogate)
    torch.testing.assert_close(out.parts["reconstruction"] - out.parts["kl"], out.value)
    for options in ({"kl_balance": 0.8}, {"free_nats": 0.5}, {"free_nats": 0.5, "free_nats_mode": "batch"}):
        objective = elbox.objectives.make_objective("world_elbo", model, model.guide(), **options)
        torch.manual_seed(1)
        result = objective(x)
        torch.testing.assert_close(result.value, out.value)  # the same paths: the same true ELBO
        assert "surrogate" in result.parts
    # balancing alone: the surrogate's value is the ELBO's; the prior's gradient is α times the plain one
    grads = []
    for alpha in (0.0, 0.8):
        objective = elbox.objectives.make_objective("world_elbo", model, model.guide(), kl_balance=alpha)
        model.zero_grad()
        torch.manual_seed(1)
        result = objective(x)
        torch.testing.assert_close(result.surrogate, result.value)
        result.surrogate.sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.prior_head.parameters()]))
    torch.testing.assert_close(grads[1], 0.8 * grads[0])
    # free nats far above every step's KL: the KL enters as F per step (per step) or F × length (batch)
    steps = world_elbo_steps(model, x, num_samples=1)
    F = float(steps.kl.max()) + 10
    for mode in ("step", "batch"):
        objective = elbox.objectives.make_objective("world_elbo", model, model.guide(), free_nats=F,
                                                    free_nats_mode=mode)  # fmt: skip
        torch.manual_seed(1)
        result = objective(x)
        torch.testing.assert_close(result.surrogate, result.parts["reconstruction"] - F * 12)
    with pytest.raises(ValueError, match="kl_balance"):
        elbox.objectives.make_objective("world_elbo", model, model.guide(), kl_balance=1.0)
    with pytest.raises(ValueError, match="free_nats_mode"):
        elbox.objectives.make_objective("world_elbo", model, model.guide(), free_nats_mode="episode")


# Planning: filter and imagine.


def test_imagine_rolls_the_linear_model_forward_exactly_and_broadcasts_a_state():
    model = _linear_world(A=2)
    x = _episodes(model, torch.tensor([6, 4, 3]))
    state = model.filter(x, sample=False)
    assert state.h.shape == (3, model.deter_dim) and state.z.shape == (3, model.stoch_dim)
    actions = torch.randn(5, 4, 2, dtype=torch.float64)
    imagined = model.imagine(WorldState(state.h[:1], state.z[:1]), actions, sample=False)
    assert imagined.observations.shape == (5, 4, 2) and imagined.rewards is None
    A, B, C = model.transition_matrix.weight, model.control.weight, model.observation.weight
    z = state.z[:1].expand(5, -1)
    for k in range(4):  # actions[:, 0] leads out of the state's step
        z = z @ A.T + actions[:, k] @ B.T
        torch.testing.assert_close(imagined.observations[:, k], z @ C.T)
    # the filter's last state is the state at each sequence's own last step
    q = model.guide()(model.check_data(x))
    assert torch.isfinite(q.rsample()).all()


def test_imagine_predicts_rewards_and_refuses_a_mismatched_batch():
    model = _small()
    x = _pendulum(3, 6)
    state = model.filter(x)
    imagined = model.imagine(state, torch.randn(3, 7, 1))
    assert imagined.rewards.shape == (3, 7) and imagined.observations.shape == (3, 7, 3)
    with pytest.raises(ValueError, match="state has batch 3"):
        model.imagine(state, torch.randn(4, 7, 1))
    with pytest.raises(ValueError, match="action_dim=1"):
        model.imagine(state, torch.randn(3, 7, 2))
    # a single first observation can be filtered (the planner's first step)
    first = model.filter(Sequences(x.values[:1, :1], inputs=x.inputs[:1, :1], rewards=x.rewards[:1, :1]))
    assert first.h.shape == (1, 8)


def test_forecast_by_simulation_matches_the_kalman_forecast():
    model = _linear_world(A=1)
    x = model.check_data(_episodes(model, torch.full((4,), 6)))
    future = torch.randn(4, 3, 1, dtype=torch.float64)
    exact = model.to_lgssm().forecast(x, 3, inputs=future)
    torch.manual_seed(6)
    runs = [model.forecast(x, 3, inputs=future, num_samples=4000) for _ in range(10)]
    assert runs[0].method == "simulation" and runs[0].num_samples == 4000  # the DMM's convention (the CLI reads it)
    # the weighted particles' mean, a ratio estimator: within 4 standard errors over the 10 runs
    means = torch.stack([r.mean for r in runs])
    se = means.std(0) / math.sqrt(10)
    assert ((means.mean(0) - exact.mean).abs() < 4 * se + 1e-3 * exact.variance.sqrt()).all()
    variances = torch.stack([r.variance for r in runs])
    assert ((variances.mean(0) - exact.variance).abs() < 4 * variances.std(0) / math.sqrt(10) + 0.01).all()
    inside = ((exact.mean > runs[0].lower) & (exact.mean < runs[0].upper)).all()
    assert inside


# Bad input.


def test_bad_episodes_are_refused_naming_the_argument():
    model = _small()
    x = _pendulum(3, 6)
    with pytest.raises(ValueError, match=r"actions .*action_dim=1"):
        model.check_data(Sequences(x.values, inputs=torch.randn(3, 6, 2), rewards=x.rewards))
    with pytest.raises(ValueError, match="reward head"):
        elbox.elbo(model, model.guide(), Sequences(x.values, inputs=x.inputs))
    with pytest.raises(ValueError, match="sequence 1 has 1 step"):
        elbox.elbo(model, model.guide(), Sequences(x.values, lengths=[6, 1, 4], inputs=x.inputs, rewards=x.rewards))
    with pytest.raises(ValueError, match="sequence 0 has 6 steps; predictive"):
        model.predictive_log_likelihood(x, context=4, horizon=3)
    with pytest.raises(ValueError, match="non-finite reward"):
        bad = x.rewards.clone()
        bad[2, 3] = math.nan
        model.check_data(Sequences(x.values, inputs=x.inputs, rewards=bad))
    with pytest.raises(ValueError, match="transition='linear'"):
        WorldModel(3, 1, transition="linear", latent="categorical")
    with pytest.raises(TypeError, match="to_lgssm"):
        model.to_lgssm()


# The config, through fit, evaluate and report; and the .npz rewards.


def test_a_world_run_fits_evaluates_and_reports(tmp_path):
    import numpy as np

    from elbox.runs import evaluate_run, load_config, train_run

    x = _pendulum(12, 10)
    path = tmp_path / "episodes.npz"
    np.savez(path, x=x.values.numpy(), inputs=x.inputs.numpy(), rewards=x.rewards.numpy(), lengths=np.full(12, 10))
    loaded = elbox.data.load_file(path)
    torch.testing.assert_close(loaded.rewards, x.rewards.double())
    config = load_config(elbox.runs.config.Path(__file__).parents[1] / "configs" / "world_model_pendulum.toml")
    config["data"]["path"] = str(path)
    config["data"]["test"] = 4
    config["model"].update(deter_dim=8, hidden=16, latent_dim=3)
    config["train"]["epochs"] = 2
    config["objective"].update(free_nats=1.0, kl_balance=0.8)
    config["evaluate"].update(num_samples=30, iwae_samples=30)
    result = train_run(None, tmp_path / "run", config=config)
    assert type(result["model"]).__name__ == "WorldModel"
    metrics = [line for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"bound"' in line]
    assert '"surrogate"' in metrics[-1] and '"observation"' in metrics[-1]  # the surrogate beside the true bound
    evaluation = evaluate_run(tmp_path / "run")
    assert evaluation["report"]["log_evidence"]["method"] == "smc"
    assert len(evaluation["sequence"]["gap_steps"]) == 4
    run = elbox.load_run(tmp_path / "run")
    assert run.guide is run.model.guide()

    # the forecast of a run with actions takes the future actions from a file, and says so without one
    from elbox.runs.config import ConfigError
    from elbox.runs.forecast import forecast_run

    with pytest.raises(ConfigError, match=r"--inputs FILE.npy, an array \[8, 3, 1\]"):
        forecast_run(tmp_path / "run", 3)
    np.save(tmp_path / "actions.npy", np.zeros((8, 3, 1)))
    result = forecast_run(tmp_path / "run", 3, inputs=tmp_path / "actions.npy")
    forecast = result["forecast"]
    assert forecast.method == "simulation" and forecast.num_samples > 0 and forecast.mean.shape == (8, 3, 3)
    assert (forecast.lower <= forecast.mean).all() and (forecast.mean <= forecast.upper).all()
    assert result["table"].is_file() and result["figure"].is_file()
    np.save(tmp_path / "wrong.npy", np.zeros((8, 3, 2)))
    with pytest.raises(ValueError, match="inputs"):
        forecast_run(tmp_path / "run", 3, inputs=tmp_path / "wrong.npy")


def test_pixel_observations_through_the_convolutional_encoder_and_decoder():
    torch.manual_seed(0)
    model = WorldModel(3, 1, encoder="conv", depth=4, latent_dim=4, deter_dim=8, hidden=16)
    x = Sequences(torch.rand(2, 4, 3, 64, 64), inputs=torch.randn(2, 4, 1), rewards=torch.randn(2, 4), lengths=[4, 2])
    steps = elbo_steps(model, model.guide(), x, num_samples=2)
    assert steps.value.shape == (2, 4) and (steps.value[1, 2:] == 0).all()
    assert torch.isfinite(smc(model, model.guide(), x, num_samples=3).log_z).all()
    imagined = model.imagine(model.filter(x[:1]), torch.randn(3, 5, 1))
    assert imagined.observations.shape == (3, 5, 3, 64, 64) and imagined.rewards.shape == (3, 5)
    with pytest.raises(ValueError, match=r"\[B, T, 3, 64, 64\]"):
        model.check_data(Sequences(torch.rand(2, 4, 3, 32, 32), inputs=torch.randn(2, 4, 1), rewards=torch.randn(2, 4)))


def test_sequences_carry_rewards_through_padding_indexing_and_conversion():
    seqs = Sequences.from_list([torch.randn(5, 2), torch.randn(3, 2)], inputs=[torch.randn(5, 1), torch.randn(3, 1)],
                               rewards=[torch.arange(5.0), torch.arange(3.0)])  # fmt: skip
    assert seqs.rewards.shape == (2, 5) and seqs.rewards[1, 3:].eq(0).all()
    torch.testing.assert_close(seqs[1].rewards, torch.tensor([[0.0, 1.0, 2.0, 0.0, 0.0]]))
    assert seqs[1:].trimmed().rewards.shape == (1, 3) and seqs.to(torch.float64).rewards.dtype == torch.float64
    assert "rewards" in repr(seqs) and Sequences(torch.zeros(2, 3, 1)).rewards is None
    with pytest.raises(ValueError, match=r"rewards must have shape \[B, T\] = \[2, 3\]"):
        Sequences(torch.zeros(2, 3, 1), rewards=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="rewards must hold one array per sequence"):
        Sequences.from_list([torch.randn(5, 2)], rewards=[torch.zeros(5), torch.zeros(3)])
    # a model without a reward head drops them from its checked batch
    assert elbox.DeepMarkovModel(2, 2, emission="gaussian", input_dim=1).check_data(seqs).rewards is None


@pytest.mark.parametrize("actions", [1, 0])
def test_the_posterior_scan_has_the_step_loops_numbers_and_gradients(actions):
    # float64, ragged episodes, two draws: the hand-written backward against autograd through the loop
    torch.manual_seed(0)
    model = WorldModel(3, actions, latent_dim=4, deter_dim=8, hidden=16, reward=False).double()
    with torch.no_grad():
        model.z_0.copy_(torch.randn(4))
    x = model.check_data(Sequences(torch.randn(5, 6, 3, dtype=torch.float64), lengths=LENGTHS,
                                   inputs=torch.randn(5, 6, actions, dtype=torch.float64) if actions else None))
    q = model.guide()(x)
    S, (B, T), Z = 2, x.mask.shape, model.stoch_dim
    torch.manual_seed(1)
    path, log_q, loc, scale = q.rsample_steps((S,))
    torch.manual_seed(1)
    noise = torch.randn(T, S, B, Z, dtype=torch.float64)
    s, states, locs, scales = q.initial.expand(S, B, model.state_dim), [], [], []
    for t in range(T):  # the step-by-step loop, the same draws
        h, (mu, sigma) = q.step_parameters(t, s)
        s = torch.cat([h, mu + sigma * noise[t]], -1)
        states.append(s), locs.append(mu), scales.append(sigma)
    expected = (torch.stack(states, -2), torch.stack(locs, -2), torch.stack(scales, -2))
    for got, want in zip((path, loc, scale), expected):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert (scale[:, ~x.mask] == 1).all() and (loc[:, ~x.mask] == 0).all()
    params = [p for p in model.parameters() if p.requires_grad]
    weights = [torch.randn_like(v) for v in expected]  # a random linear function of every output

    def grads(outputs):
        return torch.autograd.grad(sum((w * v).sum() for w, v in zip(weights, outputs)), params, allow_unused=True,
                                   retain_graph=True)  # fmt: skip

    for got, want in zip(grads((path, loc, scale)), grads(expected)):
        if want is None:
            assert got is None or (got == 0).all()
        else:
            torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    torch.testing.assert_close(log_q, model._log_prob(path[..., model.deter_dim:], (loc, scale)))
