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
from elbox.models.world import world_elbo_steps

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
