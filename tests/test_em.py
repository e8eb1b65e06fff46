"""EM: coordinate ascent on the ELBO, never decreasing, equal to the log-likelihood after E-steps."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch

import elbox
from elbox.guides import Guide
from tests.conftest import CASES


class Fixed(Guide):
    """A guide that returns one stored distribution: q held fixed across an M-step."""

    def __init__(self, q):
        super().__init__()
        self.q = q

    def forward(self, x, index=None):
        return self.q


EM_CASES = [c for c in CASES if c.name != "BetaBernoulli"]


@pytest.mark.filterwarnings("ignore::elbox.ConvergenceWarning")
@pytest.mark.parametrize("case", EM_CASES, ids=[c.name for c in EM_CASES])
def test_em_is_coordinate_ascent_on_the_elbo(case):
    model, x, _, _ = case.make()
    if case.draw is not None:
        x = case.draw(model, 60)
    else:
        x = model.sample(60)[0] if case.name not in ("NormalNormal",) else model.sample(60, num_obs=3)[0]
    if hasattr(model, "initialize"):
        model.initialize(x, "random", generator=torch.Generator().manual_seed(0))
    trace = []

    def record(iteration, model, posterior, log_evidence):
        q = copy.deepcopy(posterior)
        after_e = float(elbox.elbo(model, Fixed(q), x).value.mean())
        trace.append((q, after_e, float(log_evidence.mean())))
        if iteration > 0:  # the previous q under the new θ: the M-step's value
            previous_q = trace[-2][0]
            after_m = float(elbox.elbo(model, Fixed(previous_q), x).value.mean())
            trace[-2] = trace[-2] + (after_m,)

    history = elbox.em(model, x, max_iter=25, tol=0.0, callback=record)
    bounds = history.lower_bound
    for t, entry in enumerate(trace):
        _, after_e, log_lik = entry[:3]
        assert abs(after_e - log_lik) < 1e-8 * max(1.0, abs(log_lik))  # E-step: gap closed
        assert log_lik == bounds[t]
        if len(entry) == 4:  # M-step raised the bound with q fixed; next E-step raised it again
            slack = 1e-10 * max(1.0, abs(log_lik))
            assert entry[3] >= after_e - slack
            assert bounds[t + 1] >= entry[3] - slack
    assert all(b >= a - 1e-10 * max(1.0, abs(a)) for a, b in zip(bounds, bounds[1:]))
    torch.testing.assert_close(model.log_evidence(x).detach().mean(), torch.tensor(history.final), rtol=0, atol=1e-10)


def test_em_restarts_keep_the_best_bound_and_warn_when_not_converged():
    truth = elbox.GaussianMixture(4, 2, loc=4 * torch.randn(4, 2))
    x, _ = truth.sample(400)
    model = elbox.GaussianMixture(4, 2)
    with pytest.warns(elbox.ConvergenceWarning, match="did not converge in max_iter=3"):
        history = elbox.em(model, x, init="kmeans++", n_init=4, seed=0, max_iter=3, tol=1e-12)
    assert len(history.restarts) == 4
    assert history.final == max(history.restarts)
    assert abs(float(model.log_evidence(x).detach().mean()) - history.final) < 1e-10


def test_em_without_tol_runs_every_iteration_past_the_bounds_own_stop():
    """tol=None is a fixed budget: the run that stops by itself at tol=0 (the bound no longer
    rises) goes on to max_iter E-steps with no ConvergenceWarning, its bound unchanged since."""
    torch.manual_seed(3)
    truth = elbox.GaussianMixture(2, 2, loc=6 * torch.randn(2, 2, dtype=torch.float64))
    x, _ = truth.sample(200)
    stopped = elbox.em(elbox.GaussianMixture(2, 2).double(), x, init="kmeans++", seed=0, max_iter=500, tol=0.0)
    assert stopped.converged and stopped.n_iter < 500
    budget = stopped.n_iter + 20
    with warnings.catch_warnings():
        warnings.simplefilter("error", elbox.ConvergenceWarning)
        fixed = elbox.em(elbox.GaussianMixture(2, 2).double(), x, init="kmeans++", seed=0, max_iter=budget, tol=None)
    assert fixed.n_iter == budget and not fixed.converged
    assert fixed.lower_bound[: stopped.n_iter] == stopped.lower_bound
    assert abs(fixed.final - stopped.final) <= 1e-12 * abs(stopped.final)


def test_em_is_reproducible_from_a_seed():
    truth = elbox.GaussianMixture(3, 2, loc=3 * torch.randn(3, 2))
    x, _ = truth.sample(300)
    a = elbox.em(elbox.GaussianMixture(3, 2), x, init="kmeans++", seed=7)
    b = elbox.em(elbox.GaussianMixture(3, 2), x, init="kmeans++", seed=7)
    assert a.lower_bound == b.lower_bound


def test_em_refuses_models_without_m_step_and_bad_arguments():
    coin = elbox.BetaBernoulli()
    with pytest.raises(TypeError, match="no closed-form M-step"):
        elbox.em(coin, torch.ones(2, 3))
    model = elbox.GaussianMixture(2, 2)
    x = torch.randn(10, 2)
    with pytest.raises(ValueError, match="n_init > 1 needs init="):
        elbox.em(model, x, n_init=3)
    with pytest.raises(ValueError, match="max_iter must be an integer >= 1"):
        elbox.em(model, x, max_iter=0)
    with pytest.raises(ValueError, match="tol must be non-negative"):
        elbox.em(model, x, tol=-1.0)


def test_factor_analysis_em_on_its_moments_takes_the_per_point_steps_iterates():
    """EM for factor analysis reads the data only through their mean and scatter: the moments
    path (no callback) and the per-point path (a callback) give the same iterates, float64."""
    torch.manual_seed(3)
    truth = elbox.FactorAnalysis(12, 3).double()
    with torch.no_grad():
        truth.loading.copy_(torch.randn(12, 3, dtype=torch.float64))
        truth.loc.copy_(torch.randn(12, dtype=torch.float64))
        truth.noise_variance = 0.2 + torch.rand(12, dtype=torch.float64)
    x, _ = truth.sample(700)
    runs = []
    for callback in (None, lambda *step: None):
        model = elbox.FactorAnalysis(12, 3).double()
        history = elbox.em(model, x, init="pca", max_iter=60, tol=0.0, callback=callback)
        runs.append((history, model))
    (moments, a), (points, b) = runs
    np.testing.assert_allclose(moments.lower_bound, points.lower_bound, rtol=1e-12, atol=0)
    for name in ("loading", "loc", "log_noise"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=1e-9, atol=1e-12)
    assert float(a.log_evidence(x).mean()) == pytest.approx(moments.final, rel=1e-12)


def test_factor_analysis_moments_hand_over_to_the_points_near_a_heywood_case():
    """A collinear column drives a noise variance to its floor: there the moments' trace would
    cancel catastrophically, so those iterations take the per-point steps; the bound reported is
    the model's own log-likelihood, and the floor is named."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, 5, generator=g, dtype=torch.float64)
    x[:, 1] = 2 * x[:, 0]
    model = elbox.FactorAnalysis(5, 2).double()
    with pytest.warns(elbox.inference.BoundaryWarning, match="Heywood"):
        history = elbox.em(model, x, init="pca", max_iter=500, on_failure="warn")
    assert float(model.log_evidence(x).detach().mean()) == pytest.approx(history.final, rel=1e-12)
