"""The Nile (Durbin & Koopman's local level): statsmodels' likelihood at given parameters, its
maximum by EM and by gradient with the structure held fixed, and the fixed parameters honoured.

Reference figures from statsmodels 0.15.0, ``UnobservedComponents(nile, "local level")``
(approximately diffuse, loglikelihood_burn = 1), computed in a separate venv (statsmodels is not
a dependency) by ``m.loglike([15099, 1469.1])`` and ``m.fit().llf``; Durbin & Koopman's published
maximum-likelihood variances are σ²_ε = 15099, σ²_η = 1469.1."""

from __future__ import annotations

import warnings

import pytest
import torch

import elbox
from elbox.data import nile
from elbox.models.structural import diffuse_log_likelihood, local_level, local_linear_trend

STATSMODELS_AT_DK = -632.5376950475525  # m.loglike([15099, 1469.1])
STATSMODELS_MAX = -632.5377605785011  # m.fit(disp=False).llf (its optimizer stops a little short)
DK = {"observation": 15099.0, "level": 1469.1}


def _series():
    flow, _ = nile()
    return flow.reshape(1, 100, 1)


def test_the_local_levels_likelihood_equals_statsmodels_at_the_published_parameters():
    model = local_level(DK["level"], DK["observation"])
    assert float(diffuse_log_likelihood(model, _series())) == pytest.approx(STATSMODELS_AT_DK, abs=1e-6)
    # the whole log p(x) under the N(0, 1e6) start keeps the first observation's term (−8.45)
    with torch.no_grad():
        first = float(model.log_evidence(_series()) - diffuse_log_likelihood(model, _series()))
    assert first == pytest.approx(-8.45, abs=0.01)


def _check_maximum(model):
    x = _series()
    assert float(diffuse_log_likelihood(model, x)) >= STATSMODELS_MAX - 1e-4
    assert float(model.transition_covariance.detach()) == pytest.approx(DK["level"], rel=0.02)
    assert float(model.observation_covariance.detach()) == pytest.approx(DK["observation"], rel=0.02)
    # the structure held fixed: A = C = 1, the diffuse start untouched
    assert float(model.transition_matrix) == 1.0 and float(model.observation_matrix) == 1.0
    assert float(model.initial_covariance) == pytest.approx(1e6) and float(model.initial_loc) == 0.0


def test_em_with_the_structure_fixed_reaches_the_maximum():
    model = local_level(1000.0, 10000.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", elbox.ConvergenceWarning)
        history = elbox.em(model, _series(), max_iter=2000, tol=1e-12, init=None)
    assert all(b >= a - 1e-9 for a, b in zip(history.lower_bound, history.lower_bound[1:]))  # never decreases
    _check_maximum(model)


def test_gradient_fitting_with_the_structure_fixed_reaches_the_maximum():
    model = local_level(1000.0, 10000.0)
    elbox.fit(model, None, _series(), bound="max_likelihood", epochs=600, lr=0.1, seed=0)
    _check_maximum(model)


def test_fixed_parameters_survive_initialization_and_em_and_a_bad_name_is_refused():
    torch.manual_seed(0)
    truth = local_linear_trend(0.5, 0.05, 2.0)
    x, _ = truth.sample(4, num_steps=60)
    model = local_linear_trend(1.0, 1.0, 1.0).fix("transition_covariance")
    Q = model.transition_covariance.detach().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", elbox.ConvergenceWarning)
        elbox.em(model, x, max_iter=20, init="random")
    torch.testing.assert_close(model.transition_covariance.detach(), Q)
    torch.testing.assert_close(model.transition_matrix.detach(), torch.tensor([[1.0, 1.0], [0.0, 1.0]]))
    assert float(model.observation_covariance) != 1.0  # the free one moved
    with pytest.raises(ValueError, match="fixed: LinearGaussianSSM has no parameter 'A'"):
        elbox.LinearGaussianSSM(1, 1, fixed=["A"])
    with pytest.raises(TypeError, match="fixed must be a list"):
        elbox.LinearGaussianSSM(1, 1, fixed="transition_matrix")
    with pytest.raises(ValueError, match="does not support fixed parameters"):
        elbox.GaussianMixture(2, 2).fix("weights")


def test_a_fixed_hmm_block_stays_and_em_still_climbs():
    torch.manual_seed(1)
    truth = elbox.HMM(3, dim=2, loc=3 * torch.randn(3, 2))
    x, _ = truth.sample(20, num_steps=40)
    A = torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])
    model = elbox.HMM(3, dim=2, transition_matrix=A, fixed=["transition_matrix"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", elbox.ConvergenceWarning)
        history = elbox.em(model, x, max_iter=30)
    torch.testing.assert_close(model.transition_matrix.detach(), A)
    assert all(b >= a - 1e-9 for a, b in zip(history.lower_bound, history.lower_bound[1:]))
