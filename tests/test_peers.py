"""Agreement with scikit-learn: the same parameters score the same; EM reaches the same optimum."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA
from sklearn.decomposition import FactorAnalysis as SkFactorAnalysis
from sklearn.exceptions import ConvergenceWarning as SkConvergenceWarning
from sklearn.mixture import GaussianMixture as SkGaussianMixture
from sklearn.mixture._gaussian_mixture import _compute_precision_cholesky

import elbox


def _mixture_data(K=3, D=3, N=600, seed=0):
    g = torch.Generator().manual_seed(seed)
    loc = 4 * torch.randn(K, D, generator=g)
    a = torch.randn(K, D, D, generator=g)
    cov = a @ a.mT / D + 0.3 * torch.eye(D)
    truth = elbox.GaussianMixture(K, D, loc=loc, covariance=cov)
    x, _ = truth.sample(N)
    return x


def _sklearn_mixture(model: elbox.GaussianMixture) -> SkGaussianMixture:
    sk = SkGaussianMixture(model.num_components, covariance_type=model.covariance_type)
    sk.weights_ = model.weights.detach().numpy()
    sk.means_ = model.loc.detach().numpy()
    sk.covariances_ = model.covariance.detach().numpy()
    sk.precisions_cholesky_ = _compute_precision_cholesky(sk.covariances_, model.covariance_type)
    return sk


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_mixture_log_evidence_equals_sklearn_score_samples(covariance_type):
    x = _mixture_data()
    model = elbox.GaussianMixture(3, 3, covariance_type=covariance_type)
    model.initialize(x, "random", generator=torch.Generator().manual_seed(1))
    expected = _sklearn_mixture(model).score_samples(x.numpy())
    np.testing.assert_allclose(model.log_evidence(x).detach().numpy(), expected, rtol=0, atol=1e-8)


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
@pytest.mark.parametrize("iterations", [1, 5, 30])
def test_mixture_em_matches_sklearn_iteration_for_iteration(covariance_type, iterations):
    x = _mixture_data(seed=2)
    model = elbox.GaussianMixture(3, 3, covariance_type=covariance_type)
    model.initialize(x, "random", generator=torch.Generator().manual_seed(3))
    cov = model.covariance.detach().numpy()
    precisions = np.linalg.inv(cov) if covariance_type == "full" else 1 / cov
    sk = SkGaussianMixture(
        3, covariance_type=covariance_type, tol=0.0, max_iter=iterations, init_params="random_from_data",
        weights_init=model.weights.detach().numpy(), means_init=model.loc.detach().numpy(),
        precisions_init=precisions, reg_covar=model.reg_covar,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkConvergenceWarning)
        warnings.simplefilter("ignore", elbox.ConvergenceWarning)
        sk.fit(x.numpy())
        history = elbox.em(model, x, max_iter=iterations, tol=0.0)
    # sklearn's lower_bound_ after k iterations is the log-likelihood of the parameters of the
    # (k-1)-th M-step, which is what elbox records after its k-th E-step.
    assert abs(history.final - sk.lower_bound_) < 1e-9


def test_mixture_em_converges_to_sklearn_optimum():
    x = _mixture_data(K=4, D=2, N=800, seed=4)
    model = elbox.GaussianMixture(4, 2)
    model.initialize(x, "kmeans++", generator=torch.Generator().manual_seed(0))
    sk = SkGaussianMixture(
        4, tol=1e-10, max_iter=2000, weights_init=model.weights.detach().numpy(),
        means_init=model.loc.detach().numpy(), precisions_init=np.linalg.inv(model.covariance.detach().numpy()),
    ).fit(x.numpy())
    history = elbox.em(model, x, max_iter=2000, tol=1e-10)
    assert history.converged
    assert abs(float(model.log_evidence(x).detach().mean()) - sk.score(x.numpy())) < 1e-4


def _factor_data(N=1500, D=8, K=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    truth = elbox.FactorAnalysis(D, K)
    with torch.no_grad():
        truth.loading.copy_(torch.randn(D, K, generator=g))
        truth.loc.copy_(torch.randn(D, generator=g))
        truth.noise_variance = 0.1 + torch.rand(D, generator=g)
    x, _ = truth.sample(N)
    return x


def test_factor_analysis_log_evidence_equals_sklearn_score_samples():
    x = _factor_data()
    model = elbox.FactorAnalysis(8, 3)
    model.initialize(x, "random", generator=torch.Generator().manual_seed(0))
    sk = SkFactorAnalysis(n_components=3).fit(x.numpy()[:50])  # fitted only to exist; overwritten
    sk.components_ = model.loading.detach().numpy().T
    sk.noise_variance_ = model.noise_variance.detach().numpy()
    sk.mean_ = model.loc.detach().numpy()
    np.testing.assert_allclose(model.log_evidence(x).detach().numpy(), sk.score_samples(x.numpy()), rtol=0, atol=1e-8)


def test_factor_analysis_em_reaches_sklearn_maximum_likelihood():
    x = _factor_data(seed=1)
    sk = SkFactorAnalysis(n_components=3, tol=1e-10, max_iter=20000, svd_method="lapack").fit(x.numpy())
    model = elbox.FactorAnalysis(8, 3)
    history = elbox.em(model, x, init="pca", max_iter=20000, tol=1e-10)
    assert history.converged
    assert abs(history.final - sk.score(x.numpy())) < 1e-4


def test_ppca_em_reaches_the_closed_form_maximum_likelihood_of_sklearn_pca():
    x = _factor_data(seed=2)
    model = elbox.FactorAnalysis(8, 3, isotropic=True)
    history = elbox.em(model, x, init="random", seed=0, max_iter=20000, tol=1e-11)
    assert history.converged
    assert abs(history.final - PCA(n_components=3).fit(x.numpy()).score(x.numpy())) < 1e-4


# score / predict / predict_proba: the interfaces scikit-learn's and hmmlearn's users reach for first.


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_mixture_score_predict_predict_proba_equal_sklearns(covariance_type):
    x = _mixture_data(seed=4)
    model = elbox.GaussianMixture(3, 3, covariance_type=covariance_type)
    model.initialize(x, "random", generator=torch.Generator().manual_seed(5))
    sk = _sklearn_mixture(model)
    X = x.numpy()
    assert float(model.score(x)) == pytest.approx(sk.score(X), abs=1e-10)
    assert np.array_equal(model.predict(x).numpy(), sk.predict(X))
    np.testing.assert_allclose(model.predict_proba(x).numpy(), sk.predict_proba(X), rtol=0, atol=1e-10)
    assert not model.score(x).requires_grad and not model.predict_proba(x).requires_grad
    assert model.score(x, grad=True).requires_grad  # a graph only when asked


def test_factor_analysis_score_and_predict_equal_sklearns():
    x = _mixture_data(K=1, D=5, seed=6)
    model = elbox.FactorAnalysis(5, 2)
    elbox.em(model, x, init="pca", max_iter=50, tol=1e-8)
    sk = SkFactorAnalysis(2)
    sk.mean_ = model.loc.detach().numpy()
    sk.components_ = model.loading.detach().numpy().T
    sk.noise_variance_ = model.noise_variance.detach().numpy()
    X = x.numpy()
    assert float(model.score(x)) == pytest.approx(sk.score(X), abs=1e-10)
    np.testing.assert_allclose(model.predict(x).numpy(), sk.transform(X), rtol=0, atol=1e-10)  # posterior means
    with pytest.raises(TypeError, match="continuous"):
        model.predict_proba(x)
    with pytest.raises(TypeError, match="exact evidence"):
        elbox.VAE(4, 2).score(torch.rand(3, 4))
