"""Choosing K: BIC and AIC as scikit-learn and hmmlearn count them, and select picking the number
of components that generated the data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hmmlearn import hmm as hmmlearn
from sklearn.mixture import GaussianMixture as SklearnMixture
from sklearn.mixture._gaussian_mixture import _compute_precision_cholesky

import elbox
from elbox.models import HMM, FactorAnalysis, GaussianMixture


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_bic_is_scikit_learns_at_the_same_parameters(covariance):
    torch.manual_seed(0)
    x, _ = GaussianMixture(3, 4, loc=3 * torch.randn(3, 4)).sample(300)
    found = elbox.select(lambda k: GaussianMixture(k, 4, covariance_type=covariance), x, [2, 3], n_init=1)
    for k, model, bic, aic in zip(found.candidates, found.models, found.bic, found.aic, strict=True):
        peer = SklearnMixture(k, covariance_type=covariance)
        peer.weights_, peer.means_ = model.weights.detach().numpy(), model.loc.detach().numpy()
        peer.covariances_ = model.covariance.detach().numpy()
        peer.precisions_cholesky_ = _compute_precision_cholesky(peer.covariances_, covariance)
        assert model.num_free_parameters == peer._n_parameters()
        assert bic == pytest.approx(peer.bic(x.numpy()), rel=1e-10)
        assert aic == pytest.approx(peer.aic(x.numpy()), rel=1e-10)


@pytest.mark.parametrize("kind, options, peer", [
    ("gaussian", {"dim": 3, "covariance_type": "diag"}, lambda: hmmlearn.GaussianHMM(4, covariance_type="diag")),
    ("gaussian", {"dim": 3, "covariance_type": "full"}, lambda: hmmlearn.GaussianHMM(4, covariance_type="full")),
    ("categorical", {"num_symbols": 3}, lambda: hmmlearn.CategoricalHMM(4)),
])  # fmt: skip
def test_an_hmms_free_parameters_are_hmmlearns(kind, options, peer):
    model, other = HMM(4, kind, **options), peer()
    other.n_features = options.get("dim", options.get("num_symbols"))
    assert model.num_free_parameters == sum(other._get_n_fit_scalars_per_param().values())


def test_factor_analysis_counts_its_loadings_up_to_rotation():
    assert FactorAnalysis(5, 2).num_free_parameters == 5 + 5 * 2 - 1 + 5
    assert FactorAnalysis(5, 2, isotropic=True).num_free_parameters == 5 + 5 * 2 - 1 + 1


def test_select_finds_the_number_of_components_and_states():
    torch.manual_seed(1)
    x, _ = GaussianMixture(3, 2, loc=5 * torch.randn(3, 2)).sample(500)
    found = elbox.select(lambda k: GaussianMixture(k, 2), x[:400], [1, 2, 3, 4, 5, 6], x_valid=x[400:])
    assert found.best["bic"] == 3 and found.num_observations == 400
    assert len(found.held_out) == 6 and all(math.isfinite(s) and s > 0 for s in found.held_out_stderr)
    assert "K" in found.table() and found.table().count("b") >= 1
    loc = torch.tensor([[-6.0, 0.0], [0.0, 6.0], [6.0, 0.0]])  # three well-separated states
    truth = HMM(3, "gaussian", dim=2, loc=loc, transition_matrix=torch.full((3, 3), 0.05) + 0.85 * torch.eye(3))
    sequences, _ = truth.sample(20, num_steps=60)
    found = elbox.select(lambda k: HMM(k, "gaussian", dim=2), sequences, [1, 2, 3, 4, 5])
    assert found.best["bic"] == 3 and found.num_observations == 20 * 60


@pytest.mark.parametrize("candidates, error, match", [
    ([], ValueError, "positive integers"), ([2, 0], ValueError, "positive integers"),
    ([2, 2], ValueError, "distinct"), ([1.5], ValueError, "positive integers"),
])  # fmt: skip
def test_bad_candidates_are_named(candidates, error, match):
    with pytest.raises(error, match=match):
        elbox.select(lambda k: GaussianMixture(k, 2), torch.randn(20, 2), candidates)


def test_a_model_that_cannot_count_its_parameters_is_named():
    with pytest.raises(TypeError, match="num_free_parameters.*make\\(2\\) returned a LinearGaussianSSM"):
        elbox.select(lambda k: elbox.LinearGaussianSSM(k, 2), torch.randn(4, 5, 2), [2])
    with pytest.raises(TypeError, match="make must be a function"):
        elbox.select(None, np.zeros((3, 2)), [1])
