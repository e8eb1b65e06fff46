"""Forecasts of the sequence models: exact one-step identities against the evidence, calibrated
intervals on simulated data, and clear errors for bad horizons and levels."""

from __future__ import annotations

import math

import pytest
import torch

import elbox
from elbox.data import Sequences
from elbox.models.forecast import mixture_quantiles
from tests.test_sequence_models import _categorical_hmm, _gaussian_hmm, _lgssm


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_one_step_lgssm_forecast_is_the_evidence_of_the_next_step(seed):
    """log N(x_{T+1}; forecast mean, covariance) = log p(x_{1:T+1}) − log p(x_{1:T}), per sequence
    of a ragged batch, float64, on random models: the forecast is the filter's own prediction."""
    torch.manual_seed(seed)
    model = _lgssm(D=3, Dx=2)
    lengths = torch.tensor([4, 9, 17])
    x, _ = model.sample(3, num_steps=18)
    forecast = model.forecast(Sequences(x, lengths=lengths), steps=1)
    nxt = x[torch.arange(3), lengths]  # [B, obs]: the step after each sequence's end
    log_q = torch.distributions.MultivariateNormal(forecast.mean[:, 0], forecast.covariance[:, 0]).log_prob(nxt)
    with torch.no_grad():
        more = model.log_evidence(Sequences(x, lengths=lengths + 1)) - model.log_evidence(Sequences(x, lengths=lengths))
    torch.testing.assert_close(log_q, more, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("make", [_gaussian_hmm, _categorical_hmm], ids=["gaussian", "categorical"])
def test_a_one_step_hmm_forecast_is_the_evidence_of_the_next_step(make):
    torch.manual_seed(3)
    model = make()
    lengths = torch.tensor([3, 8, 12])
    x, _ = model.sample(3, num_steps=13)
    forecast = model.forecast(Sequences(x, lengths=lengths), steps=2)
    nxt = x[torch.arange(3), lengths]
    with torch.no_grad():
        more = model.log_evidence(Sequences(x, lengths=lengths + 1)) - model.log_evidence(Sequences(x, lengths=lengths))
        if model.emission == "categorical":
            log_q = forecast.mean[torch.arange(3), 0, nxt].log()
        else:
            log_e = model.emissions.component_log_prob(nxt)  # [B, K]
            log_q = (forecast.state_probs[:, 0].log() + log_e).logsumexp(-1)
    torch.testing.assert_close(log_q, more, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(forecast.state_probs.sum(-1), torch.ones(3, 2, dtype=torch.float64))


def _coverage(model, n: int, history: int, steps: int, level: float) -> tuple[float, float]:
    """The share of held-out values inside the forecast's intervals, over n simulated series, and
    its standard error (series are independent; steps and coordinates within one are not)."""
    x, _ = model.sample(n, num_steps=history + steps)
    forecast = model.forecast(x[:, :history], steps=steps, level=level)
    truth = x[:, history:]
    inside = ((truth >= forecast.lower) & (truth <= forecast.upper)).double().mean((1, 2))  # [n]
    return float(inside.mean()), float(inside.std() / math.sqrt(n))


@pytest.mark.parametrize("kind", ["lgssm", "hmm"])
def test_forecast_intervals_are_calibrated(kind):
    """The 90% intervals cover the truth at 90% ± 2 standard errors over 4,000 seeded series,
    the models' own simulations (the LGSSM's Gaussian intervals; the HMM's mixture quantiles)."""
    torch.manual_seed(11)
    model = _lgssm(D=2, Dx=2) if kind == "lgssm" else _gaussian_hmm(K=3, D=2)
    covered, se = _coverage(model, 4000, history=20, steps=5, level=0.9)
    assert abs(covered - 0.9) < 2 * se, (covered, se)


def test_mixture_quantiles_invert_the_mixture_cdf():
    torch.manual_seed(0)
    w = torch.softmax(torch.randn(5, 3, dtype=torch.float64), -1)
    loc, scale = 3 * torch.randn(5, 3, dtype=torch.float64), 0.2 + torch.rand(5, 3, dtype=torch.float64)
    q05, q95 = mixture_quantiles(w, loc, scale, (0.05, 0.95))
    for q, p in ((q05, 0.05), (q95, 0.95)):
        cdf = (w * torch.special.ndtr((q.unsqueeze(-1) - loc) / scale)).sum(-1)
        torch.testing.assert_close(cdf, torch.full_like(cdf, p), rtol=0, atol=1e-12)


@pytest.mark.parametrize(("steps", "level", "error", "match"), [
    (0, 0.9, ValueError, "steps"), (-3, 0.9, ValueError, "steps"), (2.5, 0.9, TypeError, "steps"),
    (2, 1.0, ValueError, "level"), (2, 0.0, ValueError, "level"), (2, "90%", TypeError, "level"),
])  # fmt: skip
def test_a_bad_horizon_or_level_is_named(steps, level, error, match):
    model = elbox.LinearGaussianSSM(1, 1)
    x, _ = model.sample(1, num_steps=5)
    with pytest.raises(error, match=match):
        model.forecast(x, steps=steps, level=level)
    with pytest.raises(error, match=match):
        elbox.HMM(2, dim=1).forecast(x, steps=steps, level=level)


def test_future_inputs_are_required_by_a_model_with_inputs():
    model = elbox.LinearGaussianSSM(2, 1, input_dim=1)
    u = torch.randn(2, 6, 1)
    x, _ = model.sample(2, num_steps=6, inputs=u)
    with pytest.raises(ValueError, match="inputs"):
        model.forecast(Sequences(x, inputs=u), steps=3)
    with pytest.raises(ValueError, match=r"inputs must have shape \[2, 3, 1\]"):
        model.forecast(Sequences(x, inputs=u), steps=3, inputs=torch.randn(2, 4, 1))
    assert model.forecast(Sequences(x, inputs=u), steps=3, inputs=torch.randn(2, 3, 1)).mean.shape == (2, 3, 1)
