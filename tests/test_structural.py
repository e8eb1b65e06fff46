"""Structural time-series models (seasonal, AR(p), their sums) and the LGSSM's noise loading G:
statsmodels' log-likelihood at the same parameters, the Kalman filter with a singular Q against
the stacked Gaussian, EM's conditional M-step given G, and gradient fitting of the free part.

Reference figures from statsmodels 0.15.0 (not a dependency of elbox), printed by
``/work/sm-venv/bin/python tests/data/structural_reference.py``, which builds each model on the
closed-form series of :func:`_series` and evaluates ``model.loglike(params)`` (approximately
diffuse start of variance 1e6, ``loglikelihood_burn`` = the diffuse states; AR states stationary)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import elbox
from elbox.distributions.kalman import kalman_log_norm
from elbox.models.structural import (
    autoregressive,
    combine,
    diffuse_log_likelihood,
    local_level,
    local_linear_trend,
    seasonal,
    stationary_covariance,
)

# name = statsmodels' model.loglike(params): see tests/data/structural_reference.py
STATSMODELS = {
    "dummy_seasonal_4": -9489.330570738017,  # UC(y, irregular, seasonal=4), [σ²_ε, σ²_ω] = [1.3, 0.4], burn 3
    "trig_seasonal_4": -7625.855525429454,  # UC(y, irregular, freq_seasonal 4 (2 harmonics)), [1.3, 0.4], burn 4
    "trig_seasonal_12_h3": -3391.3125366182294,  # UC(y, irregular, freq_seasonal 12 (3)), [1.3, 0.4], burn 6
    "ar2_uc": -390.5119711366549,  # UC(y − ȳ, irregular, autoregressive=2), [σ²_ε, σ²_η, φ] = [0.7, 2.1, 0.6, −0.3]
    "ar2_sarimax": -484.7049503758282,  # SARIMAX(y − ȳ, (2, 0, 0), measurement_error), [0.6, −0.3, σ²_ε 2.1, σ²_η 0.7]
    "level_seasonal_4": -97.45543308046607,  # UC(y, "local level", seasonal=4), [1.3, 0.8, 0.4], burn 4
    "trend_seasonal_4_ar1": -93.8430116922495,  # UC(y, "local linear trend", seasonal=4, autoregressive=1),
    #   [σ²_ε 1.3, σ²_level 0.8, σ²_trend 0.05, σ²_ω 0.4, σ²_ar 0.9, φ 0.5], burn 5
}

MODELS = {
    "dummy_seasonal_4": (lambda: seasonal(4, 0.4, 1.3), False),
    "trig_seasonal_4": (lambda: seasonal(4, 0.4, 1.3, kind="trigonometric"), False),
    "trig_seasonal_12_h3": (lambda: seasonal(12, 0.4, 1.3, kind="trigonometric", harmonics=3), False),
    "ar2_uc": (lambda: autoregressive([0.6, -0.3], 2.1, 0.7), True),
    "ar2_sarimax": (lambda: autoregressive([0.6, -0.3], 0.7, 2.1), True),
    "level_seasonal_4": (lambda: combine(local_level(0.8), seasonal(4, 0.4), observation_variance=1.3), False),
    "trend_seasonal_4_ar1": (lambda: combine(local_linear_trend(0.8, 0.05), seasonal(4, 0.4),
                                             autoregressive([0.5], 0.9), observation_variance=1.3), False),
}  # name: (constructor, whether statsmodels saw the series centred)


@pytest.fixture(autouse=True)
def _float64():
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(dtype)


def _series(n: int = 48) -> torch.Tensor:
    """The reference script's series: trend, a period-4 pattern and two waves, ``[1, n, 1]``."""
    t = torch.arange(n, dtype=torch.float64)
    season = torch.tensor([4.0, -1.0, -5.0, 2.0])[torch.arange(n) % 4]
    return (10 + 0.5 * t + season + 2 * torch.sin(0.7 * t) + torch.cos(1.9 * t**2 / 7)).reshape(1, n, 1)


@pytest.mark.parametrize("name", sorted(STATSMODELS))
def test_log_likelihood_equals_statsmodels_at_the_same_parameters(name):
    make, centred = MODELS[name]
    y = _series()
    y = y - y.mean() if centred else y
    assert float(diffuse_log_likelihood(make(), y)) == pytest.approx(STATSMODELS[name], abs=1e-6)


# UC(seasonal_series(), irregular=True, seasonal=4).fit(disp=False, maxiter=1000): its maximum and
# [σ²_ε, σ²_ω] (tests/data/structural_reference.py)
STATSMODELS_SEASONAL_MAX = -201.1458799107423
STATSMODELS_SEASONAL_ARGMAX = (1.0835270540956954, 0.19668645685649347)


def _seasonal_series(n: int = 120) -> torch.Tensor:
    """The reference script's simulated quarterly series (Python's ``random.Random(0).gauss``)."""
    import random

    rng = random.Random(0)
    gamma, y = [3.0, -1.0, -2.5], []
    for _ in range(n):
        y.append(gamma[0] + rng.gauss(0.0, 1.0))
        gamma = [-sum(gamma) + rng.gauss(0.0, 0.5)] + gamma[:2]
    return torch.tensor(y).reshape(1, n, 1)


def _check_seasonal_maximum(model):
    y = _seasonal_series()
    assert float(diffuse_log_likelihood(model, y)) >= STATSMODELS_SEASONAL_MAX - 1e-4
    assert float(model.observation_covariance.detach()) == pytest.approx(STATSMODELS_SEASONAL_ARGMAX[0], rel=0.01)
    assert float(model.noise_covariance.detach()) == pytest.approx(STATSMODELS_SEASONAL_ARGMAX[1], rel=0.01)


def test_em_on_the_dummy_seasonal_reaches_statsmodels_maximum():
    model = seasonal(4, 1.0, 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", elbox.ConvergenceWarning)
        elbox.em(model, _seasonal_series(), max_iter=3000, tol=1e-12, init=None)
    _check_seasonal_maximum(model)


def test_gradient_fitting_of_the_dummy_seasonal_reaches_statsmodels_maximum():
    model = seasonal(4, 1.0, 1.0)
    elbox.fit(model, None, _seasonal_series(), bound="max_likelihood", epochs=400, lr=0.05, seed=0)
    _check_seasonal_maximum(model)


# UC(level_seasonal_series(), "local level", seasonal=4).fit(disp=False, maxiter=1000): its maximum and
# [σ²_ε, σ²_level, σ²_ω] (tests/data/structural_reference.py)
STATSMODELS_LEVEL_SEASONAL_MAX = -215.31026913308042
STATSMODELS_LEVEL_SEASONAL_ARGMAX = (1.1642004354039057, 0.06334028701583229, 0.19526464452039613)


def test_em_on_a_level_plus_seasonal_reaches_statsmodels_maximum_with_one_variance_per_component():
    import random

    rng = random.Random(1)
    level, path = 5.0, []
    for _ in range(120):  # the reference script's level_seasonal_series
        path.append(level)
        level += rng.gauss(0.0, 0.3)
    y = _seasonal_series(120) + torch.tensor(path).reshape(1, 120, 1)
    model = combine(local_level(1.0), seasonal(4, 1.0), observation_variance=1.0)
    assert model.noise_groups.tolist() == [0, 1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", elbox.ConvergenceWarning)
        history = elbox.em(model, y, max_iter=2000, tol=1e-12, init=None)
    assert all(b >= a - 1e-9 for a, b in zip(history.lower_bound, history.lower_bound[1:]))
    assert float(diffuse_log_likelihood(model, y)) >= STATSMODELS_LEVEL_SEASONAL_MAX - 1e-4
    Q_eta = model.noise_covariance.detach()
    assert float(Q_eta[0, 1]) == 0.0  # the components' noises stay independent
    found = (float(model.observation_covariance.detach()), float(Q_eta[0, 0]), float(Q_eta[1, 1]))
    assert found == pytest.approx(STATSMODELS_LEVEL_SEASONAL_ARGMAX, rel=0.01)


def test_noise_groups_tie_the_variances_through_em_gradients_and_setters():
    model = seasonal(6, 0.5, 1.0, kind="trigonometric")  # one σ²_ω for 6 states
    assert model.noise_groups.tolist() == [0] * 6
    torch.manual_seed(5)
    x, _ = seasonal(6, 0.2, 1.0, kind="trigonometric").sample(2, num_steps=60)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", elbox.ConvergenceWarning)
        elbox.em(model, x, max_iter=5, init=None)
    Q = model.noise_covariance.detach()
    torch.testing.assert_close(Q, Q[0, 0] * torch.eye(6), rtol=0, atol=0)
    value = model.log_evidence(x).sum()
    value.backward()
    grad = model._q_raw.grad
    assert float(grad.tril(-1).abs().max()) == 0.0 and torch.allclose(grad.diagonal(), grad[0, 0].expand(6))
    with pytest.raises(ValueError, match=r"noise_covariance must be diagonal with one variance per noise group"):
        model.noise_covariance = torch.diag(torch.arange(1.0, 7.0))
    with pytest.raises(ValueError, match="noise_groups must be 2 non-negative integer labels"):
        elbox.LinearGaussianSSM(2, 1, noise_groups=[0.5, 1.0])


def test_an_approximately_diffuse_start_is_filtered_to_rounding_at_every_length():
    """The first state_dim steps of a diffuse start run one at a time: short series (T ≤ D) and
    long ones, steady state or not, equal to the step-by-step filter (the stacked Gaussian loses
    the digits that 10⁶ costs it, so the reference here is the sequential recursion)."""
    model = seasonal(4, 0.4, 1.3, kind="trigonometric")  # 4 states, the last unobserved (Nyquist): 1e6 throughout
    y = _seasonal_series(40)

    def sequential(T):
        A, C = model.transition_matrix.detach(), model.observation_matrix.detach()
        Q, R = model.transition_covariance.detach(), model.observation_covariance.detach()
        m, P, total = model.initial_loc.detach(), model.initial_covariance.detach(), 0.0
        for t in range(T):
            if t:
                m, P = A @ m, A @ P @ A.T + Q
            S = C @ P @ C.T + R
            e = y[0, t] - C @ m
            total += float(torch.distributions.MultivariateNormal(torch.zeros(1), S).log_prob(e))
            K = P @ C.T @ torch.linalg.inv(S)
            I_KC = torch.eye(4) - K @ C
            m, P = m + K @ e, I_KC @ P @ I_KC.T + K @ R @ K.T
        return total

    for T in (1, 3, 4, 5, 40):
        for steady in (True, False):
            model.steady_state = steady
            assert float(model.log_evidence(y[:, :T]).detach()) == pytest.approx(sequential(T), abs=1e-7)


def test_structures_are_as_statsmodels_builds_them():
    dummy = seasonal(5)
    torch.testing.assert_close(dummy.transition_matrix.detach()[0], -torch.ones(4))
    torch.testing.assert_close(dummy.transition_matrix.detach()[1:], torch.eye(4)[:3])
    assert dummy.noise_dim == 1 and dummy.diffuse_states == 4
    assert torch.linalg.matrix_rank(dummy.transition_covariance.detach()) == 1
    trig = seasonal(6, kind="trigonometric")  # harmonics 1, 2, 3 (the last at the Nyquist frequency)
    assert trig.state_dim == 6 and trig.noise_dim == 6
    torch.testing.assert_close(trig.observation_matrix.detach(), torch.tensor([[1.0, 0, 1, 0, 1, 0]]))
    ar = autoregressive([0.5, -0.2, 0.1], 2.0, 1.0)
    A = ar.transition_matrix.detach()
    P0 = ar.initial_covariance.detach()
    torch.testing.assert_close(A @ P0 @ A.T + ar.transition_covariance.detach(), P0)  # stationary start
    assert ar.diffuse_states == 0 and "transition_matrix" not in ar.fixed
    # the AR(1) stationary variance, σ² / (1 − φ²)
    torch.testing.assert_close(stationary_covariance([[0.6]], [[2.0]]), torch.tensor([[2.0 / 0.64]]))


def _random_degenerate(seed: int, D: int = 4, k: int = 2, obs: int = 2) -> elbox.LinearGaussianSSM:
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(D, D, generator=g)
    W = torch.randn(k, k, generator=g)
    return elbox.LinearGaussianSSM(
        D, obs, transition_matrix=0.95 * A / torch.linalg.matrix_norm(A, 2),
        observation_matrix=torch.randn(obs, D, generator=g), noise_matrix=torch.randn(D, k, generator=g),
        noise_covariance=W @ W.T + 0.1 * torch.eye(k), observation_covariance=0.5 * torch.eye(obs),
        initial_loc=torch.randn(D, generator=g), initial_covariance=2 * torch.eye(D),
    )  # fmt: skip


def _stacked_log_likelihood(model: elbox.LinearGaussianSSM, x: torch.Tensor) -> torch.Tensor:
    """log N(vec x; mean, Σ) of the whole sequence, Σ built from the state covariances."""
    A, C = model.transition_matrix.detach(), model.observation_matrix.detach()
    Q, R = model.transition_covariance.detach(), model.observation_covariance.detach()
    T = x.shape[1]
    means, covs = [model.initial_loc.detach()], [model.initial_covariance.detach()]
    for _ in range(T - 1):
        means.append(A @ means[-1])
        covs.append(A @ covs[-1] @ A.T + Q)
    blocks = [[None] * T for _ in range(T)]
    for s in range(T):
        for t in range(T):  # Cov(z_t, z_s) = A^{t−s} P_s for t ≥ s
            cross = torch.linalg.matrix_power(A, abs(t - s)) @ covs[min(s, t)]
            blocks[t][s] = C @ (cross if t >= s else cross.T) @ C.T + (R if s == t else 0)
    cov = torch.cat([torch.cat(row, 1) for row in blocks], 0)
    mean = torch.cat([C @ m for m in means])
    return torch.distributions.MultivariateNormal(mean, cov).log_prob(x.reshape(x.shape[0], -1))


def test_the_filter_with_a_singular_q_equals_the_stacked_gaussian_on_every_path():
    model = _random_degenerate(0)
    Q = model.transition_covariance.detach()
    assert torch.linalg.matrix_rank(Q) == 2  # singular, 4 states
    x, _ = model.sample(3, num_steps=12)
    expected = _stacked_log_likelihood(model, x)
    with torch.no_grad():
        torch.testing.assert_close(model.log_evidence(x), expected, rtol=0, atol=1e-10)  # the chunked path
        torch.testing.assert_close(model._filter(model.check_data(x)).log_norm.sum(-1), expected, rtol=0, atol=1e-10)
        model.steady_state = False  # every step by doubling
        torch.testing.assert_close(model.log_evidence(x), expected, rtol=0, atol=1e-10)
        lg = model._linear_gaussian()
        long = model.sample(2, num_steps=300)[0]
        model.steady_state = True
        torch.testing.assert_close(kalman_log_norm(lg, long, torch.ones(2, 300, dtype=torch.bool)).sum(-1),
                                   model.log_evidence(long), rtol=1e-12, atol=1e-8)  # fmt: skip


def test_default_noise_matrix_leaves_the_model_and_its_checkpoint_unchanged():
    model = elbox.LinearGaussianSSM(3, 2)
    assert model.noise_matrix is None and model.noise_dim == 3
    assert sorted(model.state_dict()) == sorted(
        ["transition_matrix", "observation_matrix", "control_matrix", "initial_loc", "_q_raw", "_r_raw", "_p0_raw"]
    )
    torch.testing.assert_close(model.transition_covariance, model.noise_covariance)
    assert "noise_matrix" in _random_degenerate(1).state_dict()  # carried where given


def _expected_complete(model, x, posterior, A, Q_eta, R):
    """E_q[log p(x, z)] up to terms free of (A's free part, Q_η, R), for a noise loading G: the
    transitions as log N(G⁺ r_t; 0, Q_η), r_t = z_{t+1} − A z_t (in closed form from q's moments)."""
    means, covs, cross = posterior.moments()
    G_pinv = torch.linalg.pinv(model.noise_matrix)
    r = means[:, 1:] - means[:, :-1] @ A.T  # [B, T-1, D]
    AX = A @ cross
    cov_r = covs[:, 1:] + A @ covs[:, :-1] @ A.T - AX - AX.mT
    second = G_pinv @ (cov_r + r.unsqueeze(-1) * r.unsqueeze(-2)) @ G_pinv.T  # E[η ηᵀ]
    k = Q_eta.shape[0]
    trans = -0.5 * (torch.linalg.solve(Q_eta, second).diagonal(dim1=-2, dim2=-1).sum(-1) + torch.logdet(Q_eta)
                    + k * math.log(2 * math.pi))  # fmt: skip
    C = model.observation_matrix.detach()
    e = x - means @ C.T
    obs_second = C @ covs @ C.T + e.unsqueeze(-1) * e.unsqueeze(-2)
    obs = -0.5 * (torch.linalg.solve(R, obs_second).diagonal(dim1=-2, dim2=-1).sum(-1) + torch.logdet(R))
    return trans.sum() + obs.sum()


def test_the_m_step_maximizes_the_expected_log_joint_given_the_noise_loading():
    torch.manual_seed(0)
    truth = autoregressive([0.5, 0.3], 1.0, 0.5)
    x, _ = truth.sample(3, num_steps=80)
    model = autoregressive([0.2, 0.1], 2.0, 2.0)
    posterior, _ = model.e_step(x)
    A_old = model.transition_matrix.detach().clone()
    model.m_step(x, posterior)
    A, Q_eta, R = (t.detach().clone() for t in (model.transition_matrix, model.noise_covariance,
                                                  model.observation_covariance))  # fmt: skip
    torch.testing.assert_close(A[1:], A_old[1:], rtol=0, atol=0)  # the companion rows untouched
    assert not torch.equal(A[0], A_old[0])
    phi = A[0].clone().requires_grad_(True)
    Q_eta.requires_grad_(True)
    R.requires_grad_(True)
    value = _expected_complete(model, x, posterior, torch.cat([phi.unsqueeze(0), A[1:]]), Q_eta, R)
    grads = torch.autograd.grad(value, (phi, Q_eta, R))
    for g in grads:  # a stationary point (and the objective is concave in φ, in Q_η⁻¹ and R⁻¹)
        assert float(g.abs().max()) < 1e-9 * float(value.detach().abs())


def test_em_on_seasonal_and_ar_models_never_decreases_and_keeps_the_structure():
    torch.manual_seed(1)
    truth = combine(local_level(0.5), seasonal(4, 0.2), observation_variance=1.0)
    y, _ = truth.sample(2, num_steps=80)
    for model in (combine(local_level(2.0), seasonal(4, 1.0), observation_variance=3.0),
                  seasonal(4, 1.0, 3.0), autoregressive([0.1, 0.1], 2.0, 2.0)):  # fmt: skip
        structure = {n: getattr(model, n).detach().clone() for n in ("observation_matrix", "initial_covariance")}
        A = model.transition_matrix.detach().clone()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", elbox.ConvergenceWarning)
            history = elbox.em(model, y, max_iter=25, tol=0.0, init=None)
        bounds = history.lower_bound
        assert all(b >= a - 1e-9 * abs(a) for a, b in zip(bounds, bounds[1:]))
        assert bounds[-1] > bounds[0] + 1.0
        for n, v in structure.items():
            torch.testing.assert_close(getattr(model, n).detach(), v, rtol=0, atol=0)
        if "transition_matrix" in model.fixed:
            torch.testing.assert_close(model.transition_matrix.detach(), A, rtol=0, atol=0)
        else:  # AR: only the first row moves
            torch.testing.assert_close(model.transition_matrix.detach()[1:], A[1:], rtol=0, atol=0)


def test_em_recovers_ar_coefficients_within_their_standard_error():
    """φ̂ from long simulated AR(2) + noise against the truth, with the standard error from the
    observed information (the Hessian of log p(x) in φ by autograd) at the estimate."""
    torch.manual_seed(2)
    phi = torch.tensor([0.6, -0.3])
    truth = autoregressive(phi, 1.0, 0.3)
    x, _ = truth.sample(1, num_steps=2000)
    model = autoregressive([0.0, 0.0], 1.0, 0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", elbox.ConvergenceWarning)
        elbox.em(model, x, max_iter=60, tol=1e-10, init=None)
    estimate = model.transition_matrix.detach()[0]

    def log_lik(first_row):
        m = autoregressive([0.0, 0.0], 1.0, 0.3)
        m.load_state_dict(model.state_dict())
        A = torch.cat([first_row.unsqueeze(0), model.transition_matrix.detach()[1:]])
        lg = m._linear_gaussian()._replace(transition_matrix=A)
        return kalman_log_norm(lg, x, torch.ones(1, 2000, dtype=torch.bool)).sum()

    info = -torch.autograd.functional.hessian(log_lik, estimate)
    stderr = torch.linalg.inv(info).diagonal().sqrt()
    assert bool(((estimate - phi).abs() < 4 * stderr).all()), (estimate, phi, stderr)


def test_gradient_fitting_moves_only_the_free_part_of_a():
    torch.manual_seed(3)
    x, _ = autoregressive([0.5, 0.3], 1.0, 0.5).sample(2, num_steps=100)
    model = autoregressive([0.1, 0.1], 2.0, 2.0)
    A = model.transition_matrix.detach().clone()
    before = float(model.log_evidence(x).sum().detach())
    elbox.fit(model, None, x, bound="max_likelihood", epochs=60, lr=0.05, seed=0)
    torch.testing.assert_close(model.transition_matrix.detach()[1:], A[1:], rtol=0, atol=0)
    assert not torch.equal(model.transition_matrix.detach()[0], A[0])
    assert float(model.log_evidence(x).sum().detach()) > before


def test_the_posterior_with_a_singular_q_samples_trajectories_that_keep_the_structure():
    torch.manual_seed(4)
    model = seasonal(4, 0.3, 1.0)
    x, _ = model.sample(2, num_steps=30)
    posterior, log_px = model.e_step(x)
    torch.testing.assert_close(log_px, model.log_evidence(x))
    z = posterior.sample((5,))  # [5, 2, 30, 3]
    # (γ_t, γ_{t-1}, γ_{t-2}) → the lags shift exactly: z_{t+1}[1:] = z_t[:-1]
    assert float((z[..., 1:, 1:] - z[..., :-1, :-1]).abs().max()) < 1e-6 * float(z.abs().max())
    with pytest.raises(ValueError, match="log_joint: with noise_matrix of 1 columns for 3 states"):
        model.log_joint(x, z[0])


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="noise_matrix must be"):
        elbox.LinearGaussianSSM(3, 1, noise_matrix=torch.ones(3, 2))  # rank 1
    with pytest.raises(ValueError, match="noise_matrix must be"):
        elbox.LinearGaussianSSM(3, 1, noise_matrix=torch.ones(2, 1))
    with pytest.raises(ValueError, match="not both"):
        elbox.LinearGaussianSSM(2, 1, noise_matrix=[[1.0], [0.0]], noise_covariance=[[1.0]],
                                transition_covariance=torch.eye(2))  # fmt: skip
    with pytest.raises(ValueError, match="outside G's range"):
        elbox.LinearGaussianSSM(2, 1, noise_matrix=[[1.0], [0.0]], transition_covariance=torch.eye(2))
    with pytest.raises(ValueError, match="period must be an integer of at least 2"):
        seasonal(1)
    with pytest.raises(ValueError, match="kind must be 'dummy' or 'trigonometric'"):
        seasonal(4, kind="fourier")
    with pytest.raises(ValueError, match="harmonics must be an integer from 1 to period // 2 = 2"):
        seasonal(4, kind="trigonometric", harmonics=3)
    with pytest.raises(ValueError, match="harmonics is for kind='trigonometric'"):
        seasonal(4, harmonics=1)
    with pytest.raises(ValueError, match="spectral radius is 1.1"):
        autoregressive([1.1])
    with pytest.raises(ValueError, match="seasonal_variance must be a positive"):
        seasonal(4, -1.0)
    with pytest.raises(ValueError, match=r"components\[1\] must be a LinearGaussianSSM with obs_dim 1"):
        combine(local_level(), elbox.LinearGaussianSSM(2, 2))
    with pytest.raises(ValueError, match="at least one component"):
        combine()


# The config: [model] structure and fixed, by `elbox fit` on one series.


def _elbox(*args, cwd):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, "-m", "elbox", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)  # fmt: skip


def test_elbox_fit_fits_the_niles_local_level_from_a_config_with_its_structure_fixed(tmp_path):
    """`elbox fit` (a fresh process) on the Nile as a one-column .csv, split in time: A = C = 1 and
    the diffuse start held, R also fixed from the config at its initial value, Q fitted."""
    from elbox.data import nile

    flow, _ = nile()
    (tmp_path / "nile.csv").write_text("flow\n" + "\n".join(f"{v:g}" for v in flow.flatten().tolist()) + "\n")
    (tmp_path / "nile.toml").write_text(
        '[data]\npath = "nile.csv"\nsplit = "time"\ntest = 10\n'
        '[model]\ntype = "lgssm"\nstructure = "local_level"\nfixed = ["observation_covariance"]\n'
        '[train]\nmax_iter = 20\ninit = "none"\n'
    )
    done = _elbox("fit", "nile.toml", "--out", "run", "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    run = elbox.load_run(tmp_path / "run")
    model = run.model
    assert run.config["model"]["state_dim"] == 1 and run.config["model"]["structure"] == "local_level"
    assert model.fixed >= {"transition_matrix", "observation_matrix", "initial_loc", "initial_covariance",
                           "observation_covariance"}  # fmt: skip
    assert float(model.transition_matrix) == 1.0 and float(model.observation_matrix) == 1.0
    assert float(model.initial_covariance) == pytest.approx(1e6, rel=1e-12) and float(model.initial_loc) == 0.0
    assert float(model.observation_covariance) == pytest.approx(1.0, rel=1e-12)  # fixed from the config
    assert float(model.transition_covariance.detach()) != pytest.approx(1.0)  # the free variance moved


def test_the_config_builds_seasonal_ar_and_summed_structures():
    from elbox.runs.build import build_model
    from elbox.runs.config import parse_config
    from elbox.runs.types import DataInfo

    data = {"path": "series.csv", "split": "time"}
    cases = [({"structure": "seasonal", "period": 4}, 3, 1),
             ({"structure": "seasonal", "period": 12, "seasonal": "trigonometric", "harmonics": 2}, 4, 4),
             ({"structure": "autoregressive", "order": 3}, 3, 1),
             ({"structure": ["local_linear_trend", "seasonal", "autoregressive"], "period": 4, "order": 1}, 6, 4)]
    for keys, states, noise in cases:
        config = parse_config({"data": data, "model": {"type": "lgssm", **keys}})
        assert config["model"]["state_dim"] == states
        model = build_model(config, DataInfo(dim=1, points=1, steps=40))[0]
        assert (model.state_dim, model.noise_dim) == (states, noise)
        assert "observation_matrix" in model.fixed
    hmm = parse_config({"data": data, "model": {"type": "hmm", "fixed": ["transition_matrix"]}})
    assert build_model(hmm, DataInfo(dim=2, points=1, steps=40))[0].fixed == {"transition_matrix"}
    general = parse_config({"data": data, "model": {"type": "lgssm", "fixed": ["observation_matrix"]}})
    model = build_model(general, DataInfo(dim=2, points=1, steps=40))[0]
    assert model.fixed == {"observation_matrix"} and not model.observation_matrix.requires_grad


def test_config_errors_name_the_key():
    from elbox.runs.config import ConfigError, parse_config

    data = {"path": "series.csv", "split": "time"}

    def parse(**model):
        return parse_config({"data": data, "model": {"type": "lgssm", **model}})

    with pytest.raises(ConfigError, match=r"\[model\] fixed names 'A', which a 'lgssm' model does not have; it can "
                                          r"fix 'transition_matrix', 'observation_matrix'"):  # fmt: skip
        parse(fixed=["A"])
    with pytest.raises(ConfigError, match=r"\[model\] fixed names 'loc', which a 'hmm' model does not have"):
        parse_config({"data": data, "model": {"type": "hmm", "fixed": ["loc"]}})
    with pytest.raises(ConfigError, match=r"\[model\] fixed must be a list of parameter names"):
        parse(fixed="transition_matrix")
    with pytest.raises(ConfigError, match="structure 'seasonal' needs period"):
        parse(structure="seasonal")
    with pytest.raises(ConfigError, match="period applies to structure 'seasonal' only"):
        parse(structure="local_level", period=4)
    with pytest.raises(ConfigError, match="harmonics applies to seasonal = 'trigonometric', from 1 to period // 2 = 2"):
        parse(structure="seasonal", period=4, harmonics=3, seasonal="trigonometric")
    with pytest.raises(ConfigError, match="structure 'autoregressive' needs order"):
        parse(structure="autoregressive")
    with pytest.raises(ConfigError, match="state_dim = 3 does not match structure = 'local_level', which has 1"):
        parse(structure="local_level", state_dim=3)
    with pytest.raises(ConfigError, match=r"\[model\] structure must be 'none', one of 'local_level'"):
        parse(structure="level")
    with pytest.raises(ConfigError, match="singular state noise .* objective = 'elbo'"):
        parse_config({"data": data, "model": {"type": "lgssm", "structure": "autoregressive", "order": 1},
                      "train": {"method": "vi", "objective": "elbo"}})  # fmt: skip
