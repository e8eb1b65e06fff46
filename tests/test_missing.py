"""Missing observations (NaN in the values) in the LGSSM and the HMM: the masked Kalman filter
against pykalman's masked arrays and against the stacked Gaussian of the observed values, the
smoother against Gaussian conditioning, EM with gaps, draws of the missing values, the HMM's
forward algorithm against enumeration, and the errors."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from torch.distributions import MultivariateNormal
from typer.testing import CliRunner

import elbox
from elbox import HMM, LinearGaussianSSM, Sequences
from elbox.cli.main import app
from elbox.data import nile
from elbox.distributions.kalman import (
    kalman_filter,
    masked_covariances,
    masked_kalman_filter,
    masked_rts_smoother,
    masked_scan_pays,
    rts_smoother,
)
from elbox.models.structural import (
    diffuse_log_likelihood,
    exact_diffuse_log_likelihood,
    local_level,
    local_linear_trend,
)
from tests.conftest import _dirichlet, _random_covariance

NAN = float("nan")


def _lgssm(D=2, obs=3, input_dim=0, P0=None):
    A = torch.randn(D, D)
    return LinearGaussianSSM(
        D, obs, input_dim, transition_matrix=0.95 * A / torch.linalg.matrix_norm(A, 2),
        observation_matrix=torch.randn(obs, D), control_matrix=torch.randn(D, input_dim),
        transition_covariance=_random_covariance(D), observation_covariance=_random_covariance(obs),
        initial_loc=torch.randn(D), initial_covariance=_random_covariance(D) if P0 is None else P0,
    )  # fmt: skip


def _with_gaps(x: torch.Tensor, rate: float, whole: bool, generator: torch.Generator) -> torch.Tensor:
    """``x`` with NaN at random entries (whole steps with ``whole``), keeping each sequence's first value."""
    B, T, O = x.shape
    shape = (B, T, 1) if whole else (B, T, O)
    gap = (torch.rand(shape, generator=generator) < rate).expand(B, T, O).clone()
    gap[:, 0] = False
    return torch.where(gap, NAN, x)


def _dense(model: LinearGaussianSSM, T: int):
    """The stacked Gaussian of (z_1..z_T, x_1..x_T) of a model without inputs: mean and covariance."""
    A, C, Q, R = (t for t in (model.transition_matrix, model.observation_matrix,
                                       model.transition_covariance, model.observation_covariance))  # fmt: skip
    mu, V = [model.initial_loc], [model.initial_covariance]
    for _ in range(T - 1):
        mu.append(A @ mu[-1])
        V.append(A @ V[-1] @ A.T + Q)
    D = A.shape[0]
    Sz = torch.zeros(T * D, T * D)
    for s in range(T):
        for t in range(s, T):
            block = torch.linalg.matrix_power(A, t - s) @ V[s]  # Cov(z_t, z_s)
            Sz[t * D : (t + 1) * D, s * D : (s + 1) * D] = block
            Sz[s * D : (s + 1) * D, t * D : (t + 1) * D] = block.T
    Cb = torch.block_diag(*[C] * T)
    mean = torch.cat([torch.cat(mu), Cb @ torch.cat(mu)])
    Sx = Cb @ Sz @ Cb.T + torch.block_diag(*[R] * T)
    cov = torch.cat([torch.cat([Sz, Sz @ Cb.T], 1), torch.cat([Cb @ Sz, Sx], 1)])
    return mean, cov


def _dense_conditional(model, x_b: torch.Tensor):
    """log p(x_obs), E[z, x | x_obs] and Cov[z, x | x_obs] for one sequence ``[T, obs]`` with NaN gaps."""
    T, O = x_b.shape
    D = model.state_dim
    mean, cov = _dense(model, T)
    flat = x_b.reshape(-1)
    seen = torch.cat([torch.zeros(T * D, dtype=torch.bool), ~torch.isnan(flat)])
    rest = ~seen
    value = flat[~torch.isnan(flat)]
    S_oo = cov[seen][:, seen]
    log_px = MultivariateNormal(mean[seen], S_oo).log_prob(value)
    gain = cov[rest][:, seen] @ torch.linalg.inv(S_oo)
    cond_mean = mean[rest] + gain @ (value - mean[seen])
    cond_cov = cov[rest][:, rest] - gain @ cov[seen][:, rest]
    return log_px, cond_mean, cond_cov, rest


# The LGSSM: the filter and the smoother.


def test_the_masked_filter_equals_pykalman_on_whole_missing_steps_in_a_ragged_batch():
    pykalman = pytest.importorskip("pykalman")
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    model = _lgssm()
    lengths = [12, 7, 10, 2]
    x, _ = model.sample(4, num_steps=12)
    x = _with_gaps(x, 0.3, True, g)
    x[0, :3] = NAN  # the first steps missing too (a sequence need not start observed)
    x[0, 5] = 1.0
    seqs = Sequences(x, lengths=lengths)
    with torch.no_grad():
        log_px = model.log_evidence(seqs)
        checked = model.check_data(seqs)
        filtered = model._filter(checked)
        post = model.posterior(seqs)
        means, covs, _ = post.moments()
    params = [t.detach().numpy() for t in (model.transition_matrix, model.observation_matrix,
                                           model.transition_covariance, model.observation_covariance,
                                           model.initial_loc, model.initial_covariance)]  # fmt: skip
    for b, T in enumerate(lengths):
        kf = pykalman.KalmanFilter(*params[:4], initial_state_mean=params[4], initial_state_covariance=params[5])
        X = x[b, :T].numpy()
        obs = np.ma.array(np.nan_to_num(X), mask=np.isnan(X))
        f_mean, f_cov = kf.filter(obs)
        s_mean, s_cov = kf.smooth(obs)
        assert float(log_px[b]) == pytest.approx(kf.loglikelihood(obs), abs=1e-10)
        np.testing.assert_allclose(filtered.means[b, :T].numpy(), f_mean, atol=1e-10)
        np.testing.assert_allclose(filtered.covariances["filt"][b, :T].numpy(), f_cov, atol=1e-10)
        np.testing.assert_allclose(means[b, :T].numpy(), s_mean, atol=1e-10)
        np.testing.assert_allclose(covs[b, :T].numpy(), s_cov, atol=1e-10)


def test_partially_observed_vectors_equal_the_stacked_gaussian_of_the_observed_values():
    """Some coordinates of a step observed: log p(x_obs) and the posterior of every state (the
    missing steps' too) equal Gaussian conditioning of the stacked (z, x) on the observed entries."""
    torch.manual_seed(2)
    g = torch.Generator().manual_seed(3)
    model = _lgssm(D=2, obs=3)
    lengths = [8, 5, 8]
    x, _ = model.sample(3, num_steps=8)
    x = _with_gaps(x, 0.4, False, g)
    x[1, 2] = NAN  # a whole step
    seqs = Sequences(x, lengths=lengths)
    with torch.no_grad():
        log_px = model.log_evidence(seqs)
        means, covs, cross = model.posterior(seqs).moments()
        draws = model.impute(seqs, 1)
    D = model.state_dim
    for b, T in enumerate(lengths):
        expected, cond_mean, cond_cov, _ = _dense_conditional(model, x[b, :T])
        assert float(log_px[b]) == pytest.approx(float(expected.detach()), abs=1e-10)
        z_mean = cond_mean[: T * D].reshape(T, D)
        z_cov = cond_cov[: T * D, : T * D]
        torch.testing.assert_close(means[b, :T], z_mean, atol=1e-10, rtol=0)
        for t in range(T):
            torch.testing.assert_close(covs[b, t], z_cov[t * D : (t + 1) * D, t * D : (t + 1) * D], atol=1e-10, rtol=0)
        for t in range(T - 1):  # Cov(z_t, z_{t+1} | x_obs)
            torch.testing.assert_close(cross[b, t], z_cov[t * D : (t + 1) * D, (t + 1) * D : (t + 2) * D],
                                       atol=1e-10, rtol=0)  # fmt: skip
        # the observed values come back as they are, the missing ones are drawn (finite)
        seen = ~torch.isnan(x[b, :T])
        torch.testing.assert_close(draws[0, b, :T][seen], x[b, :T][seen], atol=0, rtol=0)
        assert bool(torch.isfinite(draws[0, b, :T]).all())


def test_the_masked_path_on_complete_data_equals_the_fast_path():
    """Nothing missing takes the shared-covariance kernels, unchanged; the per-sequence kernels on the
    same data (every coordinate observed) agree with them: filter, log p(x), smoother."""
    torch.manual_seed(4)
    model = _lgssm(D=3, obs=2, input_dim=1)
    x, _ = model.sample(3, num_steps=40, inputs=torch.randn(3, 40, 1))
    seqs = model.check_data(Sequences(x, lengths=[40, 33, 17], inputs=torch.randn(3, 40, 1)))
    assert seqs.missing is None
    params, drive = model._linear_gaussian(), model._drive(seqs)
    observed = seqs.mask.unsqueeze(-1).expand(-1, -1, 2)
    with torch.no_grad():
        fast = kalman_filter(params, seqs.values, seqs.mask, drive)
        masked = masked_kalman_filter(params, seqs.values, observed, drive)
        fast_s = rts_smoother(params, fast, seqs.mask, True)
        masked_s = masked_rts_smoother(params, masked, seqs.mask)
    valid = seqs.mask
    torch.testing.assert_close(masked.log_norm, fast.log_norm, atol=1e-10, rtol=0)
    torch.testing.assert_close(masked.means[valid], fast.means[valid], atol=1e-10, rtol=0)
    torch.testing.assert_close(masked.covariances["filt"][:, :17], fast.covariances["filt"][:17].expand(3, -1, -1, -1),
                               atol=1e-10, rtol=0)  # fmt: skip
    torch.testing.assert_close(masked_s.means[valid], fast_s.means[valid], atol=1e-10, rtol=0)
    torch.testing.assert_close(masked_s.covariances[valid], fast_s.covariances[valid], atol=1e-10, rtol=0)


def test_the_two_routes_of_the_masked_covariances_agree_and_shared_patterns_are_computed_once():
    """The Hillis–Steele scan of per-step Riccati elements and the step-by-step recursion give the
    same covariances (1e-10), on random gaps where some sequences share their pattern of gaps."""
    torch.manual_seed(15)
    g = torch.Generator().manual_seed(16)
    model = _lgssm(D=3, obs=2)
    observed = torch.rand(5, 37, 2, generator=g) > 0.3
    observed[3] = observed[0]  # a shared pattern
    observed[4, 30:] = False  # a sequence that ends early
    params = model._linear_gaussian()
    with torch.no_grad():
        scan = masked_covariances(params, observed, scan=True)
        steps = masked_covariances(params, observed, scan=False)
        alone = masked_covariances(params, observed[:1])
    for key in ("pred", "filt", "gain", "chol_s"):
        torch.testing.assert_close(scan[key], steps[key], atol=1e-10, rtol=0)
    torch.testing.assert_close(scan["filt"][3], alone["filt"][0], atol=1e-10, rtol=0)
    assert masked_scan_pays(1, 2000, 4) and not masked_scan_pays(256, 2000, 4)


def test_with_gaps_log_joint_minus_the_posterior_is_the_evidence_and_gradients_flow():
    """log p(x_obs, z) − log p(z | x_obs) = log p(x_obs) at any z: the likelihood of the observed
    coordinates and the posterior agree; and the gradient of log p(x_obs) is autograd's of the
    stacked Gaussian."""
    torch.manual_seed(5)
    g = torch.Generator().manual_seed(6)
    model = _lgssm(D=2, obs=2)
    x, _ = model.sample(3, num_steps=6)
    x = _with_gaps(x, 0.4, False, g)
    seqs = Sequences(x, lengths=[6, 4, 6])
    with torch.no_grad():
        post = model.posterior(seqs)
        z = post.sample((5,))  # [5, 3, 6, 2]
        identity = model.log_joint(seqs, z) - post.log_prob(z)
        log_px = model.log_evidence(seqs)
    torch.testing.assert_close(identity, log_px.expand(5, 3), atol=1e-9, rtol=0)
    model.zero_grad()
    model.log_evidence(seqs).sum().backward()
    grad = model.observation_matrix.grad.clone()
    model.zero_grad()
    sum(_dense_conditional(model, x[b, :T])[0] for b, T in enumerate([6, 4, 6])).backward()
    torch.testing.assert_close(grad, model.observation_matrix.grad, atol=1e-9, rtol=0)


# The LGSSM: EM and draws of the missing values.


def test_em_with_gaps_never_decreases_the_likelihood_and_its_m_step_is_the_maximum():
    torch.manual_seed(7)
    g = torch.Generator().manual_seed(8)
    truth = _lgssm(D=2, obs=3)
    x, _ = truth.sample(6, num_steps=30)
    x = _with_gaps(x, 0.3, False, g)
    x[2, 10:20] = NAN
    seqs = Sequences(x, lengths=[30, 30, 25, 30, 12, 30])
    model = LinearGaussianSSM(2, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", elbox.ConvergenceWarning)
        history = elbox.em(model, seqs, init="random", seed=0, max_iter=40, tol=0)
    bound = history.lower_bound
    assert all(b >= a - 1e-10 * abs(a) for a, b in zip(bound, bound[1:]))
    assert bound[-1] > bound[0] + 1.0
    # One M-step maximizes E_q[log p(x_obs, x_miss, z)]: any nudge of C or R from it lowers the
    # expected complete-data log-likelihood, computed here by brute force for one sequence.
    with torch.no_grad():
        post = model.posterior(seqs)
        old = {n: p.detach().clone() for n, p in model.named_parameters()}
        model.m_step(seqs, post)
        new_C, new_R = model.observation_matrix.detach().clone(), model.observation_covariance.detach().clone()
        for n, p in model.named_parameters():
            p.copy_(old[n])
    means, covs, _ = post.moments()
    checked = model.check_data(seqs)
    G, _ = model._imputation(checked)

    def expected(C, R):  # Σ_t E[log N(x_t; C z_t, R)] over the joint posterior of (z_t, x_t,miss)
        total = 0.0
        I_G = torch.eye(3) - G
        for b in range(6):
            for t in range(int(checked.mask[b].sum())):
                m, P = means[b, t], covs[b, t]
                Cm_old = model.observation_matrix.detach() @ m
                x_hat = Cm_old + G[b, t] @ (checked.values[b, t] - Cm_old)
                H = I_G[b, t] @ model.observation_matrix.detach()
                r = x_hat - C @ m
                cov_r = (H - C) @ P @ (H - C).T + I_G[b, t] @ model.observation_covariance.detach()
                total = total + MultivariateNormal(torch.zeros(3), R).log_prob(r) - 0.5 * torch.trace(
                    torch.linalg.solve(R, cov_r))  # fmt: skip
        return total

    best = expected(new_C, new_R)
    for _ in range(3):
        dC, dR = 0.01 * torch.randn(3, 2), 0.01 * _random_covariance(3)
        assert expected(new_C + dC, new_R) < best
        assert expected(new_C, new_R + dR) < best
        assert expected(new_C - dC, new_R) < best


def test_draws_of_the_missing_values_have_the_conditional_mean_and_variance():
    torch.manual_seed(9)
    g = torch.Generator().manual_seed(10)
    model = _lgssm(D=2, obs=2)
    x, _ = model.sample(1, num_steps=6)
    x = _with_gaps(x, 0.5, False, g)
    x[0, 3] = NAN
    S = 20_000
    with torch.no_grad():
        draws = model.impute(x, S, generator=torch.Generator().manual_seed(11))  # [S, 1, 6, 2]
    _, cond_mean, cond_cov, rest = _dense_conditional(model, x[0])
    flat_missing = torch.isnan(x[0].reshape(-1))
    D = model.state_dim
    x_rest = rest[6 * D :]  # the conditional's x entries are the missing ones
    assert int(x_rest.sum()) == int(flat_missing.sum())
    want_mean = cond_mean[6 * D :]
    want_var = cond_cov[6 * D :, 6 * D :].diagonal()
    got = draws[:, 0].reshape(S, -1)[:, flat_missing]  # [S, m]
    stderr = (want_var / S).sqrt()
    assert bool(((got.mean(0) - want_mean).abs() < 4 * stderr).all())
    # the variance: its standard error for a normal is σ² √(2 / S)
    assert bool(((got.var(0) - want_var).abs() < 4 * want_var * math.sqrt(2 / S)).all())


# Which models take NaN, and a series with nothing observed.


def test_a_series_of_all_missing_values_is_refused_and_other_models_refuse_nan():
    model = LinearGaussianSSM(1, 2)
    x = torch.randn(2, 5, 2)
    x[1] = NAN
    with pytest.raises(ValueError, match="sequence 1 is a series of all-missing values"):
        model.log_evidence(x)
    hmm = HMM(2, "gaussian", dim=2)
    with pytest.raises(ValueError, match="sequence 1 is a series of all-missing values"):
        hmm.log_evidence(x)
    x[1, 0, 0] = 1.0  # one value observed: accepted
    assert bool(torch.isfinite(model.log_evidence(x)).all())
    dmm = elbox.models.DeepMarkovModel(2, 2, transition_dim=4, emission="gaussian", emission_hidden=(4,))
    with pytest.raises(ValueError, match="DeepMarkovModel has no missing-data model"):
        dmm.check_data(x)
    with pytest.raises(ValueError, match="must be finite"):
        elbox.FactorAnalysis(2, 1).log_evidence(torch.tensor([[NAN, 1.0]]))
    inf = torch.randn(1, 3, 2)
    inf[0, 1, 0] = float("inf")
    with pytest.raises(ValueError, match="must be finite"):
        model.log_evidence(inf)


# The HMM: a missing step's emission log-probability is 0.


def _hmm(emission: str, K=3):
    common = dict(initial_probs=_dirichlet(K), transition_matrix=_dirichlet(K, K))
    if emission == "categorical":
        return HMM(K, "categorical", num_symbols=4, emission_probs=_dirichlet(K, 4), **common)
    return HMM(K, "gaussian", dim=2, loc=2 * torch.randn(K, 2), covariance=0.3 + torch.rand(K, 2), **common)


@pytest.mark.parametrize("emission", ["gaussian", "categorical"])
def test_the_hmm_with_missing_steps_equals_enumeration_over_the_observed_steps(emission):
    """log p(x_obs) = log Σ_z p(z) Π_{t observed} p(x_t | z_t) over all K^T paths, and the smoothed
    marginals of every step (the missing ones too) are the enumeration's, in a ragged batch."""
    torch.manual_seed(12)
    model = _hmm(emission)
    K, T = 3, 6
    x, _ = model.sample(3, num_steps=T)
    x = x.to(torch.float64)
    gaps = torch.zeros(3, T, dtype=torch.bool)
    gaps[0, [1, 2]] = True
    gaps[1, 0] = True
    gaps[2, [3, 5]] = True
    x[gaps] = NAN
    lengths = [6, 4, 6]
    seqs = Sequences(x, lengths=lengths)
    with torch.no_grad():
        log_px = model.log_evidence(seqs)
        post = model.posterior(seqs)
        marginals = post.marginals()
        draws = post.sample((2,))
    clean = torch.where(torch.isnan(x), 0.0, x)
    if emission == "categorical":
        clean = clean.long()
    log_e = model.emission_log_prob(Sequences(clean, lengths=lengths)).detach()  # every step's, [B, T, K]
    pi, A = model.initial_probs.detach(), model.transition_matrix.detach()
    for b, Tb in enumerate(lengths):
        paths = torch.tensor(list(itertools.product(range(K), repeat=Tb)))  # [K^Tb, Tb]
        log_p = pi.log()[paths[:, 0]] + A.log()[paths[:, :-1], paths[:, 1:]].sum(-1)
        seen = ~gaps[b, :Tb]
        log_p = log_p + (log_e[b, torch.arange(Tb), paths] * seen).sum(-1)
        assert float(log_px[b]) == pytest.approx(float(log_p.logsumexp(0)), abs=1e-10)
        weight = (log_p - log_p.logsumexp(0)).exp()
        for t in range(Tb):
            want = torch.zeros(K).index_add_(0, paths[:, t], weight)
            torch.testing.assert_close(marginals[b, t], want, atol=1e-10, rtol=0)
    assert draws.shape == (2, 3, T)


@pytest.mark.parametrize("emission", ["gaussian", "categorical"])
def test_baum_welch_with_missing_steps_never_decreases_the_likelihood(emission):
    torch.manual_seed(13)
    truth = _hmm(emission)
    x, _ = truth.sample(8, num_steps=40)
    x = x.to(torch.float64)
    gaps = torch.rand(8, 40) < 0.25
    gaps[:, 0] = False
    x[gaps] = NAN
    model = _hmm(emission)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", elbox.ConvergenceWarning)
        history = elbox.em(model, x, max_iter=30, tol=0, init="random", seed=1)
    bound = history.lower_bound
    assert all(b >= a - 1e-10 * abs(a) for a, b in zip(bound, bound[1:]))
    assert bound[-1] > bound[0]
    forecast = model.forecast(x, steps=3)
    assert bool(torch.isfinite(forecast.mean).all())


# The Nile with gaps (Durbin & Koopman's observations 21–40 and 61–80 missing) and the exact diffuse start.
#
# Reference figures from statsmodels 0.15.0 in a separate venv (statsmodels is not a dependency):
#   y = statsmodels.datasets.nile.load_pandas().data["volume"].values; g = y.copy(); g[20:40] = g[60:80] = nan
#   m = sm.tsa.UnobservedComponents(data, "local level", use_exact_diffuse=exact)   # params [σ²_ε, σ²_η]
#   m.loglike(params), m.fit(disp=False).llf, m.fit(disp=False).params
# and "local linear trend" ([σ²_ε, σ²_level, σ²_slope]) for the two-state diffuse start.
SM_EXACT_FULL_AT_DK = -633.4645636489  # y, exact, loglike([15099, 1469.1])
SM_EXACT_FULL_MAX = -633.4646423212  # y, exact, fit().llf (params 15067.6, 1484.8: it stops short)
SM_EXACT_GAPS_AT = -380.9266712914  # g, exact, loglike([17890, 686])
SM_EXACT_GAPS_MAX = -380.9266717536  # g, exact, fit().llf (params 17889.6, 685.86)
SM_APPROX_GAPS_AT = -379.9900927038  # g, approximately diffuse (burn 1), loglike([17890, 686])
SM_APPROX_GAPS_MAX = -379.9899829828  # g, approximately diffuse, fit().llf (params 17913.1, 679.39)
SM_EXACT_TREND = (-633.4202028356, -380.8740181765)  # y, g: "local linear trend", loglike([15000, 1000, 10])


def _nile(gaps: bool):
    flow, _ = nile()
    x = flow.reshape(1, 100, 1).clone()
    if gaps:
        x[0, 20:40] = NAN
        x[0, 60:80] = NAN
    return x


def test_the_exact_and_approximate_diffuse_likelihoods_equal_statsmodels_with_and_without_gaps():
    with torch.no_grad():
        dk = local_level(1469.1, 15099.0)
        assert float(exact_diffuse_log_likelihood(dk, _nile(False))) == pytest.approx(SM_EXACT_FULL_AT_DK, abs=1e-6)
        model = local_level(686.0, 17890.0)
        assert float(exact_diffuse_log_likelihood(model, _nile(True))) == pytest.approx(SM_EXACT_GAPS_AT, abs=1e-6)
        assert float(diffuse_log_likelihood(model, _nile(True))) == pytest.approx(SM_APPROX_GAPS_AT, abs=1e-6)
        trend = local_linear_trend(1000.0, 10.0, 15000.0)  # two diffuse states
        for gaps, expected in zip((False, True), SM_EXACT_TREND):
            assert float(exact_diffuse_log_likelihood(trend, _nile(gaps))) == pytest.approx(expected, abs=1e-6)
        # the limit it is: log p_κ(x) + ½ log κ approaches it as κ grows (error O(σ²_ε / κ))
        far = local_level(686.0, 17890.0, diffuse_variance=1e12)
        limit = float(far.log_evidence(_nile(True))) + 0.5 * math.log(1e12)
        assert limit == pytest.approx(SM_EXACT_GAPS_AT, abs=1e-5)
    with pytest.raises(ValueError, match="diffuse must be distinct state indices"):
        exact_diffuse_log_likelihood(trend, _nile(False), diffuse=[0, 0])


def test_the_nile_with_gaps_reaches_statsmodels_maxima_by_em_and_by_gradient():
    """EM and gradient fitting with A, C and the start fixed: with P_0 = 10⁶ (approximately
    diffuse) the maximum of the burnt-in likelihood; with P_0 = 10¹⁰ (the exact diffuse limit to
    O(1/κ)) the exact diffuse maximum, σ²_ε and σ²_η within 2% of statsmodels'."""
    x = _nile(True)
    for kappa, score, best, variances in (
        (1e6, diffuse_log_likelihood, SM_APPROX_GAPS_MAX, (17913.1, 679.39)),
        (1e10, exact_diffuse_log_likelihood, SM_EXACT_GAPS_MAX, (17889.6, 685.86)),
    ):
        by_em = local_level(1000.0, 10000.0, diffuse_variance=kappa)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", elbox.ConvergenceWarning)
            history = elbox.em(by_em, x, max_iter=3000, tol=1e-12, init=None)
        assert all(b >= a - 1e-9 for a, b in zip(history.lower_bound, history.lower_bound[1:]))
        by_gradient = local_level(1000.0, 10000.0, diffuse_variance=kappa)
        elbox.fit(by_gradient, None, x, bound="max_likelihood", epochs=500, lr=0.1, seed=0)
        for model in (by_em, by_gradient):
            with torch.no_grad():
                assert float(score(model, x)) >= best - 1e-4
            assert float(model.observation_covariance.detach()) == pytest.approx(variances[0], rel=0.02)
            assert float(model.transition_covariance.detach()) == pytest.approx(variances[1], rel=0.02)


def test_the_exact_diffuse_likelihood_is_maximized_by_its_own_gradient():
    """The exact diffuse log-likelihood is differentiable: L-BFGS on it (the variances' log-Cholesky
    parameters) reaches statsmodels' exact-diffuse maximum of the full Nile."""
    x = _nile(False)
    model = local_level(1000.0, 10000.0)
    params = [model._q_raw, model._r_raw]
    optimizer = torch.optim.LBFGS(params, lr=1, max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-14,
                                  line_search_fn="strong_wolfe")  # fmt: skip

    def closure():
        optimizer.zero_grad()
        loss = -exact_diffuse_log_likelihood(model, x).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        assert float(exact_diffuse_log_likelihood(model, x)) >= SM_EXACT_FULL_MAX - 1e-4
    assert float(model.observation_covariance.detach()) == pytest.approx(15099.0, rel=0.02)
    assert float(model.transition_covariance.detach()) == pytest.approx(1469.1, rel=0.02)


def test_the_evidence_report_names_the_initialization_and_gives_the_diffuse_conventions_beside_it():
    torch.manual_seed(14)
    model = local_level(1.0, 2.0)
    x, _ = model.sample(3, num_steps=30)
    x[:, 5:9] = NAN
    report = elbox.evidence_report(model, elbox.guides.Exact(model), x, num_samples=50, iwae_samples=5,
                                   refine_steps=0)  # fmt: skip
    e = report.log_evidence
    assert e["initialization"].startswith("approximately diffuse")
    assert "initial state approximately diffuse" in report.bracket()[2][3]
    with torch.no_grad():
        assert e["mean"] == pytest.approx(float(model.log_evidence(x).mean()), abs=1e-10)
        assert e["approximately_diffuse_burnt_in"]["mean"] == pytest.approx(
            float(diffuse_log_likelihood(model, x).mean()), abs=1e-10)  # fmt: skip
        exact = float(exact_diffuse_log_likelihood(model, x).mean())
        assert e["exact_diffuse"]["mean"] == pytest.approx(exact, abs=1e-10)
    assert abs(report.gap) < 1e-8  # the exact posterior with gaps: no gap
    known = LinearGaussianSSM(1, 1)
    assert known.initialization_conventions(x)[0].startswith("known")


def test_the_command_line_fits_evaluates_and_forecasts_a_series_with_gaps(tmp_path, monkeypatch):
    """A .csv with NaN rows (the Nile with its gaps): `elbox fit` with split = "time", `evaluate`
    (the test steps given the past, by the filter) and `forecast` (the figure draws the gaps)."""
    monkeypatch.chdir(tmp_path)
    np.savetxt("nile.csv", _nile(True)[0].numpy(), delimiter=",", header="flow", comments="")
    (tmp_path / "nile.toml").write_text('[data]\npath = "nile.csv"\nsplit = "time"\ntest = 10\n\n'
                                        '[model]\ntype = "lgssm"\nstate_dim = 1\n')  # fmt: skip
    runner = CliRunner()
    for args in (["fit", "nile.toml", "--out", "run"], ["evaluate", "run"], ["forecast", "run", "--steps", "5"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    scores = (tmp_path / "run" / "evaluation.json").read_text()
    assert "NaN" not in scores and (tmp_path / "run" / "forecast.png").exists()
