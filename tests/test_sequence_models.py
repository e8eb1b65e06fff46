"""HMM and linear-Gaussian state-space model: brute force, stacked Gaussians, hmmlearn, pykalman."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch
from torch.distributions import MultivariateNormal

import elbox
from elbox import HMM, LinearGaussianSSM, Sequences
from elbox.distributions import congruence_scan
from elbox.distributions import hmm_kernels as fb
from elbox.distributions.kalman import kalman_covariances
from tests.conftest import LENGTHS, _dirichlet, _random_covariance


def _gaussian_hmm(K=3, D=2, covariance_type="diag", reg_covar=1e-6):
    cov = (
        0.3 + torch.rand(K, D) if covariance_type == "diag" else torch.stack([_random_covariance(D) for _ in range(K)])
    )
    return HMM(
        K,
        "gaussian",
        dim=D,
        covariance_type=covariance_type,
        reg_covar=reg_covar,
        loc=2 * torch.randn(K, D),
        covariance=cov,
        initial_probs=_dirichlet(K),
        transition_matrix=_dirichlet(K, K),
    )


def _categorical_hmm(K=3, M=4):
    return HMM(
        K,
        "categorical",
        num_symbols=M,
        emission_probs=_dirichlet(K, M),
        initial_probs=_dirichlet(K),
        transition_matrix=_dirichlet(K, K),
    )


def _all_paths(K, T, B):
    paths = torch.tensor(list(itertools.product(range(K), repeat=T)))  # [K^T, T]
    return paths.unsqueeze(1).expand(-1, B, -1)  # [K^T, B, T]


# The HMM.


@pytest.mark.parametrize("make", [_gaussian_hmm, _categorical_hmm], ids=["gaussian", "categorical"])
def test_forward_equals_brute_force_over_all_paths(make):
    model = make()
    T = 5
    x, _ = model.sample(len(LENGTHS), num_steps=T)
    seqs = Sequences(x, lengths=LENGTHS)
    paths = _all_paths(model.num_states, T, len(LENGTHS))
    brute = model.log_joint(seqs, paths).logsumexp(0)  # Σ over K^T paths (uniform states past each end sum out)
    torch.testing.assert_close(model.log_evidence(seqs), brute, rtol=0, atol=1e-10)
    # The posterior over paths is p(x, z) / p(x), and the Viterbi path is the arg max.
    post = model.posterior(seqs)
    torch.testing.assert_close(post.log_prob(paths).exp().sum(0), torch.ones(len(LENGTHS)), rtol=0, atol=1e-12)
    path, log_p = model.viterbi(Sequences(x))  # full length: the maximum is over the whole path
    full = model.log_joint(x, paths)
    torch.testing.assert_close(log_p, full.max(0).values, rtol=0, atol=1e-10)
    assert torch.equal(path, paths[full.argmax(0), torch.arange(len(LENGTHS))])


def test_forward_survives_emissions_far_in_the_tails():
    """Observations a hundred standard deviations out: the scaled recursion must not underflow."""
    model = _gaussian_hmm()
    x, _ = model.sample(3, num_steps=6)
    x[1, 2] += 300.0
    with torch.no_grad():
        model.transition_matrix = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5], [0.5, 0.0, 0.5]])
    paths = _all_paths(3, 6, 3)
    brute = model.log_joint(x, paths).logsumexp(0)
    torch.testing.assert_close(model.log_evidence(x), brute, rtol=1e-12, atol=1e-9)
    assert torch.isfinite(model.posterior(x).marginals()).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_score_only_forward_without_gradients_equals_the_full_forward(seed, dtype):
    """log p(x) with no gradient takes a forward pass that scales every few steps and keeps no
    filtered distributions: equal to the full pass on ragged batches with missing steps, and
    redone by it where the deferred scaling underflows (a step far in the tails)."""
    from elbox.distributions import hmm_kernels as kernels

    g = torch.Generator().manual_seed(seed)
    B, T, K = 7, 53, 4
    pi, A = torch.randn(K, generator=g, dtype=dtype), torch.randn(K, K, generator=g, dtype=dtype)
    log_e = 3 * torch.randn(B, T, K, generator=g, dtype=dtype)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    log_e = torch.where((torch.arange(T) < lengths.unsqueeze(-1)).unsqueeze(-1), log_e, 0.0)  # zero past each end
    log_e[2, 5] = 0.0  # a missing step
    full = kernels.forward(pi, A, log_e)[1].sum(-1)
    with torch.no_grad():
        fast = kernels.hmm_log_evidence(pi, A, log_e)
        direct = kernels._log_evidence_forward(pi, A, log_e)
    tol = dict(rtol=1e-12, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(fast, full, **tol)
    torch.testing.assert_close(direct, full, **tol)
    # every state nearly absorbing and each step's emissions favouring another one: the mass falls by
    # e^-60 a step, below √tiny before the next scaling, so the full pass must take over
    sticky = 60 * torch.eye(K, dtype=dtype)
    tails = torch.full((B, T, K), -200.0, dtype=dtype)
    tails[torch.arange(B)[:, None], torch.arange(T), torch.arange(T) % K] = 0.0
    assert kernels._log_evidence_forward(pi, sticky, tails) is None
    with torch.no_grad():
        fast = kernels.hmm_log_evidence(pi, sticky, tails)
    torch.testing.assert_close(fast, kernels.forward(pi, sticky, tails)[1].sum(-1), **tol)


@pytest.mark.parametrize("make", [_gaussian_hmm, _categorical_hmm], ids=["gaussian", "categorical"])
@pytest.mark.parametrize("seed", [0, 1])
def test_log_evidence_by_a_tree_of_products_equals_the_forward_loop(make, seed):
    """The balanced tree of normalized transition products against the forward recursion,
    float64, on random HMMs and ragged batches (steps past an end leave the product alone), with
    a structural zero, and their gradients."""
    torch.manual_seed(seed)
    model = make(K=4)
    with torch.no_grad():
        A = model.transition_matrix.clone()
        A[0, 1] = 0.0
        model.transition_matrix = A / A.sum(-1, keepdim=True)
    lengths = torch.tensor([1, 2, 37, 64, 129])
    x, _ = model.sample(len(lengths), num_steps=int(lengths.max()))
    seqs = Sequences(x, lengths=lengths)
    log_e = model.emission_log_prob(seqs)
    pi, A = model.initial_logits, model.transition_logits
    tree = fb.log_evidence_by_products(pi, A, log_e)
    loop = fb.forward(pi, A, log_e)[1].sum(-1)
    torch.testing.assert_close(tree, loop, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(model.log_evidence(seqs), loop, rtol=1e-12, atol=1e-10)
    params = [p for p in model.parameters() if p.requires_grad]
    ways = (lambda e: fb.log_evidence_by_products(pi, A, e), lambda e: fb.forward(pi, A, e)[1].sum(-1))
    grads = [torch.autograd.grad(f(model.emission_log_prob(seqs)).sum(), params) for f in ways]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("make", [_gaussian_hmm, _categorical_hmm], ids=["gaussian", "categorical"])
@pytest.mark.parametrize("seed", [0, 1])
def test_forward_backward_in_chunks_equals_the_loop_over_time(make, seed):
    """The chunked forward and backward passes (transfer matrices per chunk, boundaries chunk by
    chunk, the recursion inside all chunks at once) against the loop, float64, on random HMMs,
    ragged batches and chunk lengths that do not divide T: α, the normalizers, β and r ⊙ β, and
    the gradient of log p(x)."""
    torch.manual_seed(seed)
    model = make(K=4)
    lengths = torch.tensor([1, 2, 37, 64, 129])
    x, _ = model.sample(len(lengths), num_steps=int(lengths.max()))
    seqs = Sequences(x, lengths=lengths)
    log_e = model.emission_log_prob(seqs)
    e = (log_e - log_e.amax(-1, keepdim=True)).exp()
    A, T = model.transition_matrix, log_e.shape[1]
    a = model.initial_probs * e[:, 0]
    alphas, norms = [a / a.sum(-1, keepdim=True)], [a.sum(-1)]
    for t in range(1, T):
        a = (alphas[-1] @ A) * e[:, t]
        alphas.append(a / a.sum(-1, keepdim=True))
        norms.append(a.sum(-1))
    alpha, c = torch.stack(alphas, 1), torch.stack(norms, 1)
    ratio = e / c.unsqueeze(-1)
    betas, ws = [torch.ones_like(alpha[:, -1])], [ratio[:, -1]]
    for t in range(T - 2, -1, -1):
        betas.append(ws[-1] @ A.T)
        ws.append(ratio[:, t] * betas[-1])
    beta, w = torch.stack(betas[::-1], 1), torch.stack(ws[::-1], 1)
    for L in (1, 3, 8, 11, 128, 200):
        chunked_alpha, chunked_c = fb.forward_chunked(model.initial_probs, A, e, L)
        torch.testing.assert_close(chunked_alpha, alpha, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(chunked_c, c, rtol=1e-12, atol=1e-14)
        chunked_beta, chunked_w = fb.backward_chunked(A, ratio, alpha, L)
        torch.testing.assert_close(chunked_beta, beta, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(chunked_w, w, rtol=1e-10, atol=1e-12)
    params = [p for p in model.parameters() if p.requires_grad]

    def log_p(L):
        e = model.emission_log_prob(seqs)
        shift = e.amax(-1, keepdim=True)
        chunked = fb.forward_chunked(model.initial_probs, model.transition_matrix, (e - shift).exp(), L)
        return (chunked[1].log() + shift.squeeze(-1)).sum()

    for a, b in zip(torch.autograd.grad(log_p(11), params), torch.autograd.grad(log_p(T), params)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_a_long_sequence_posterior_by_chunks_equals_the_loop(monkeypatch):
    """e_step on one sequence of 6,000 steps takes the chunks (about 3√T calls each way; the speed
    is bench/hmm.py's): the posterior's marginals, expected transitions and log p(x) equal the
    loop's."""
    torch.manual_seed(0)
    model = _gaussian_hmm(K=5, D=2)
    x, _ = model.sample(1, num_steps=6000)
    assert fb.chunk_length(1, 6000, 5) == 78
    post, log_p = model.e_step(x)
    monkeypatch.setattr(fb, "chunk_length", lambda B, T, K, differentiable=False: 0)
    post_loop, log_p_loop = model.e_step(x)
    torch.testing.assert_close(log_p, log_p_loop, rtol=1e-12, atol=0)
    torch.testing.assert_close(post.marginals(), post_loop.marginals(), rtol=0, atol=1e-12)
    torch.testing.assert_close(post.transition_counts, post_loop.transition_counts, rtol=1e-11, atol=1e-9)


def test_one_long_sequence_is_scored_by_the_tree_and_agrees_with_hmmlearn():
    from hmmlearn import hmm

    torch.manual_seed(0)
    model = _gaussian_hmm(K=4, D=2)
    x, _ = model.sample(1, num_steps=20_000)
    peer = hmm.GaussianHMM(4, covariance_type="diag", init_params="", params="")
    peer.startprob_ = model.initial_probs.detach().numpy()
    peer.transmat_ = model.transition_matrix.detach().numpy()
    peer.means_ = model.emissions.loc.detach().numpy()
    peer.covars_ = model.emissions.covariance.detach().numpy()
    value = float(model.log_evidence(x)[0])
    assert value == pytest.approx(peer.score(x[0].numpy()), rel=1e-8)


def test_posterior_samples_have_the_smoothed_marginals():
    model = _gaussian_hmm()
    x, _ = model.sample(4, num_steps=6)
    seqs = Sequences(x, lengths=[6, 4, 2, 5])
    post = model.posterior(seqs)
    S = 20000
    freq = torch.nn.functional.one_hot(post.sample((S,)), model.num_states).double().mean(0)  # [B, T, K]
    p = post.marginals()
    se = (p * (1 - p) / S).sqrt().clamp_min(1e-12)
    assert ((freq - p).abs() <= 4.5 * se + 1e-12).all()
    # Pairwise marginals are consistent with the marginals on both sides.
    pair = post.pairwise_marginals()
    torch.testing.assert_close(pair.sum(-1), p[:, :-1], rtol=0, atol=1e-12)
    torch.testing.assert_close(pair.sum(-2), p[:, 1:], rtol=0, atol=1e-12)


def _hmmlearn(model: HMM, **options):
    from hmmlearn import hmm

    if model.emission == "categorical":
        peer = hmm.CategoricalHMM(model.num_states, init_params="", params="ste", **options)
        peer.n_features = model.num_symbols
        peer.emissionprob_ = model.emission_probs.detach().numpy()
    else:
        e = model.emissions
        peer = hmm.GaussianHMM(
            model.num_states,
            covariance_type=e.covariance_type,
            init_params="",
            params="stmc",
            covars_prior=0.0,
            means_weight=0.0,
            min_covar=0.0,
            **options,
        )
        peer.means_ = e.loc.detach().numpy()
        peer.covars_ = e.covariance.detach().numpy()
    peer.startprob_ = model.initial_probs.detach().numpy()
    peer.transmat_ = model.transition_matrix.detach().numpy()
    return peer


def _concatenated(seqs: Sequences) -> tuple[np.ndarray, np.ndarray]:
    lengths = seqs.lengths.numpy()
    rows = [seqs.values[b, : lengths[b]].numpy() for b in range(len(lengths))]
    X = np.concatenate(rows)
    return (X[:, None] if X.ndim == 1 else X), lengths


@pytest.mark.parametrize(
    "make",
    [_gaussian_hmm, lambda: _gaussian_hmm(covariance_type="full"), _categorical_hmm],
    ids=["diag", "full", "categorical"],
)
def test_log_evidence_equals_hmmlearn_score_per_sequence(make):
    model = make()
    x, _ = model.sample(6, num_steps=40)
    seqs = Sequences(x, lengths=[40, 17, 1, 33, 40, 8])
    peer = _hmmlearn(model)
    X, lengths = _concatenated(seqs)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    expected = [peer.score(X[s : s + n]) for s, n in zip(starts, lengths)]
    np.testing.assert_allclose(model.log_evidence(seqs).detach().numpy(), expected, rtol=0, atol=1e-8)
    # Smoothed marginals and Viterbi agree too.
    _, hl_post = peer.score_samples(X, lengths)
    ours = model.posterior(seqs).marginals()[seqs.mask].detach().numpy()
    np.testing.assert_allclose(ours, hl_post, rtol=0, atol=1e-8)
    hl_logp, hl_path = peer.decode(X, lengths, algorithm="viterbi")
    path, log_p = model.viterbi(seqs)
    np.testing.assert_allclose(float(log_p.detach().sum()), hl_logp, rtol=1e-12)
    assert np.array_equal(path[seqs.mask].numpy(), hl_path)


@pytest.mark.parametrize("covariance_type", ["diag", "full"])
def test_baum_welch_matches_hmmlearn_iteration_for_iteration(covariance_type):
    truth = _gaussian_hmm(K=3, D=2, covariance_type=covariance_type)
    x, _ = truth.sample(12, num_steps=60)
    seqs = Sequences(x, lengths=torch.randint(20, 61, (12,)))
    model = HMM(3, "gaussian", dim=2, covariance_type=covariance_type, reg_covar=0.0)
    model.initialize(seqs, "kmeans++", generator=torch.Generator().manual_seed(0))
    peer = _hmmlearn(model, n_iter=15, tol=-np.inf)
    X, lengths = _concatenated(seqs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peer.fit(X, lengths)
        history = elbox.em(model, seqs, max_iter=16, tol=0.0)
    totals = np.array(history.lower_bound) * len(lengths)  # ours is per sequence
    np.testing.assert_allclose(totals[:15], peer.monitor_.history, rtol=1e-10)
    assert all(b >= a - 1e-9 for a, b in zip(totals, totals[1:]))  # never decreases
    np.testing.assert_allclose(model.transition_matrix.detach().numpy(), peer.transmat_, atol=1e-8)
    np.testing.assert_allclose(model.emissions.loc.detach().numpy(), peer.means_, atol=1e-8)
    peer_cov = peer.covars_ if covariance_type == "full" else np.diagonal(peer.covars_, axis1=1, axis2=2)
    np.testing.assert_allclose(model.emissions.covariance.detach().numpy(), peer_cov, atol=1e-8)


def test_categorical_baum_welch_matches_hmmlearn():
    truth = _categorical_hmm(K=2, M=3)
    x, _ = truth.sample(10, num_steps=50)
    seqs = Sequences(x, lengths=torch.randint(10, 51, (10,)))
    model = HMM(2, "categorical", num_symbols=3)
    model.initialize(seqs, "random", generator=torch.Generator().manual_seed(1))
    peer = _hmmlearn(model, n_iter=10, tol=-np.inf)
    X, lengths = _concatenated(seqs)
    peer.fit(X.astype(int), lengths)
    history = elbox.em(model, seqs, max_iter=11, tol=0.0)
    np.testing.assert_allclose(np.array(history.lower_bound[:10]) * len(lengths), peer.monitor_.history, rtol=1e-10)
    np.testing.assert_allclose(model.emission_probs.detach().numpy(), peer.emissionprob_, atol=1e-8)


def test_vi_with_a_mean_field_guide_closes_in_on_the_posterior():
    model = _categorical_hmm()
    x, _ = model.sample(4, num_steps=6)
    seqs = Sequences(x, lengths=[6, 3, 5, 1])
    guide = elbox.guides.Categorical(3, num_points=4, event_shape=(6,))
    history = elbox.fit(model, guide, seqs, epochs=300, batch_size=4, lr=0.1, optimize_model=False, seed=0)
    assert history.lower_bound[-1] > history.lower_bound[0]
    q = guide(seqs)
    terms = elbox.elbo(model, guide, seqs)
    gap = torch.distributions.kl_divergence(q, model.posterior(seqs))
    torch.testing.assert_close(terms.value + gap, model.log_evidence(seqs), rtol=0, atol=1e-8)
    assert (gap >= 0).all() and float(gap.max()) < 1.0  # mean-field cannot close it: states are correlated


# The linear-Gaussian state-space model.


def _stable(D):
    A = torch.randn(D, D)
    return 0.95 * A / torch.linalg.matrix_norm(A, 2)


def _lgssm(D=3, Dx=2):
    return LinearGaussianSSM(
        D,
        Dx,
        transition_matrix=_stable(D),
        observation_matrix=torch.randn(Dx, D),
        transition_covariance=_random_covariance(D),
        observation_covariance=_random_covariance(Dx),
        initial_loc=torch.randn(D),
        initial_covariance=_random_covariance(D),
    )


def _stacked_log_density(model: LinearGaussianSSM, x: torch.Tensor) -> torch.Tensor:
    """log N(vec x; mean, cov) of all T observations at once (cov is TD × TD): the brute force."""
    A, C = model.transition_matrix, model.observation_matrix
    Q, R, P0 = model.transition_covariance, model.observation_covariance, model.initial_covariance
    T, D = x.shape[0], model.state_dim
    means, covs = [model.initial_loc], [P0]
    for _ in range(1, T):
        means.append(A @ means[-1])
        covs.append(A @ covs[-1] @ A.T + Q)
    Z = torch.zeros(T * D, T * D)
    for s in range(T):
        for t in range(s, T):
            block = torch.linalg.matrix_power(A, t - s) @ covs[s]  # Cov(z_t, z_s)
            Z[t * D : (t + 1) * D, s * D : (s + 1) * D] = block
            Z[s * D : (s + 1) * D, t * D : (t + 1) * D] = block.T
    H = torch.block_diag(*[C] * T)
    cov = H @ Z @ H.T + torch.block_diag(*[R] * T)
    return MultivariateNormal(H @ torch.cat(means), cov).log_prob(x.reshape(-1))


def test_kalman_log_evidence_equals_the_stacked_gaussian():
    model = _lgssm()
    x, _ = model.sample(len(LENGTHS), num_steps=5)
    seqs = Sequences(x, lengths=LENGTHS)
    expected = torch.stack([_stacked_log_density(model, x[b, :n]) for b, n in enumerate(LENGTHS.tolist())])
    torch.testing.assert_close(model.log_evidence(seqs), expected, rtol=0, atol=1e-10)


def test_kalman_steady_state_shortcut_is_exact_on_long_sequences():
    model = _lgssm()
    x, _ = model.sample(2, num_steps=300)
    cov = kalman_covariances(model._linear_gaussian(), 300)
    assert cov["steps"] < 150  # the steady state was reached, and reused from there on
    # The same log-likelihood as a step-by-step filter with no shortcut (pykalman's).
    expected = [_pykalman(model).loglikelihood(x[b].numpy()) for b in range(2)]
    np.testing.assert_allclose(model.log_evidence(x).detach().numpy(), expected, rtol=1e-10)


def _sequential_smoothed_covariances(model, lengths, T: int) -> torch.Tensor:
    """The RTS covariances step by step, from each sequence's own end: the reference ``[b, T, D, D]``."""
    cov = kalman_covariances(model._linear_gaussian(), T)
    P, P_pred, A = cov["filt"], cov["pred"], model.transition_matrix
    out = []
    for n in lengths:
        P_s = [P[n - 1]]
        for t in range(n - 2, -1, -1):
            J = torch.linalg.solve(P_pred[t + 1], A @ P[t]).mT  # P_t Aᵀ P_{t+1|t}⁻¹
            P_s.append(P[t] + J @ (P_s[-1] - P_pred[t + 1]) @ J.mT)
        out.append(torch.stack(P_s[::-1] + [torch.eye(P.shape[-1])] * (T - n)))
    return torch.stack(out)


@pytest.mark.parametrize("steady_state", [True, False])
def test_kalman_smoothed_covariances_equal_the_step_by_step_recursion(steady_state):
    """The chunked congruence recurrence against the plain recursion, where the filter settles
    (its covariances broadcast over the steady stretch) and where it does not (steady_state=False),
    for equal and ragged lengths."""
    with torch.no_grad():
        model = _lgssm(D=3, Dx=2)
        model.steady_state = steady_state
        x, _ = model.sample(2, num_steps=600)
        for lengths in ([600, 600], [600, 450]):
            seqs = Sequences(x, lengths=torch.tensor(lengths))
            covs = model.e_step(seqs)[0].moments()[1]  # [b, T, D, D]
            expected = _sequential_smoothed_covariances(model, lengths, 600)
            if lengths[0] == lengths[1]:
                expected = expected[:1]
            torch.testing.assert_close(covs.expand_as(expected), expected, rtol=1e-9, atol=1e-10)


def test_a_filter_that_never_settles_finishes_by_the_scan_and_equals_pykalman():
    """An unobserved random walk: its variance grows by Q every step, so the Riccati recursion
    never settles; every step's covariance comes from doubling the Riccati element. The
    log-likelihood, smoothed means and covariances equal pykalman's step-by-step filter and smoother."""
    with torch.no_grad():
        model = LinearGaussianSSM(2, 1, transition_matrix=torch.tensor([[0.9, 0.0], [0.0, 1.0]]),
                                  observation_matrix=torch.tensor([[1.0, 0.0]]),
                                  transition_covariance=torch.diag(torch.tensor([0.5, 0.01])),
                                  observation_covariance=torch.eye(1), initial_loc=torch.randn(2))  # fmt: skip
        T = 3000
        x, _ = model.sample(1, num_steps=T)
        assert kalman_covariances(model._linear_gaussian(), T)["steps"] == T  # never settled
        peer = _pykalman(model)
        np.testing.assert_allclose(model.log_evidence(x).numpy(), [peer.loglikelihood(x[0].numpy())], rtol=1e-10)
        means, covs, _ = model.e_step(x)[0].moments()
        means_pk, covs_pk = peer.smooth(x[0].numpy())
        np.testing.assert_allclose(means[0].numpy(), means_pk, rtol=1e-8, atol=1e-8)
        np.testing.assert_allclose(covs[0].numpy(), covs_pk, rtol=1e-8, atol=1e-10)


def test_the_congruence_scan_is_the_recursion():
    M, G = 0.7 * torch.randn(3, 50, 4, 4), torch.randn(3, 50, 4, 4)
    Y, expected = G[:, 0], [G[:, 0]]
    for t in range(1, 50):
        Y = M[:, t] @ Y @ M[:, t].mT + G[:, t]
        expected.append(Y)
    torch.testing.assert_close(congruence_scan(M, G), torch.stack(expected, 1), rtol=1e-10, atol=1e-10)


def _pykalman(model: LinearGaussianSSM):
    from pykalman import KalmanFilter

    return KalmanFilter(
        transition_matrices=model.transition_matrix.detach().numpy(),
        observation_matrices=model.observation_matrix.detach().numpy(),
        transition_covariance=model.transition_covariance.detach().numpy(),
        observation_covariance=model.observation_covariance.detach().numpy(),
        initial_state_mean=model.initial_loc.detach().numpy(),
        initial_state_covariance=model.initial_covariance.detach().numpy(),
    )


def test_kalman_equals_pykalman_loglikelihood_and_smoother():
    model = _lgssm(D=4, Dx=2)
    x, _ = model.sample(3, num_steps=80)
    seqs = Sequences(x, lengths=[80, 51, 7])
    peer = _pykalman(model)
    for b, n in enumerate(seqs.lengths.tolist()):
        assert abs(float(model.log_evidence(seqs)[b]) - peer.loglikelihood(x[b, :n].numpy())) < 1e-6
    post = model.posterior(seqs)
    means, covs, _ = post.moments()
    for b, n in enumerate(seqs.lengths.tolist()):
        sm, sc = peer.smooth(x[b, :n].numpy())
        np.testing.assert_allclose(means[b, :n].detach().numpy(), sm, atol=1e-8)
        np.testing.assert_allclose(covs[min(b, len(covs) - 1), :n].detach().numpy(), sc, atol=1e-8)


def test_lgssm_em_matches_pykalman():
    truth = _lgssm(D=2, Dx=2)
    x, _ = truth.sample(1, num_steps=200)
    model = LinearGaussianSSM(2, 2)
    model.initialize(x, generator=torch.Generator().manual_seed(0))
    peer = _pykalman(model)
    em_vars = [
        "transition_matrices",
        "observation_matrices",
        "transition_covariance",
        "observation_covariance",
        "initial_state_mean",
        "initial_state_covariance",
    ]
    peer = peer.em(x[0].numpy(), n_iter=10, em_vars=em_vars)
    history = elbox.em(model, x, max_iter=11, tol=0.0)
    assert all(b >= a - 1e-9 for a, b in zip(history.lower_bound, history.lower_bound[1:]))
    np.testing.assert_allclose(model.transition_matrix.detach().numpy(), peer.transition_matrices, atol=1e-7)
    np.testing.assert_allclose(model.observation_matrix.detach().numpy(), peer.observation_matrices, atol=1e-7)
    np.testing.assert_allclose(model.transition_covariance.detach().numpy(), peer.transition_covariance, atol=1e-7)
    np.testing.assert_allclose(model.observation_covariance.detach().numpy(), peer.observation_covariance, atol=1e-7)
    np.testing.assert_allclose(float(model.log_evidence(x)), peer.loglikelihood(x[0].numpy()), rtol=1e-9)


def test_lgssm_posterior_samples_match_the_smoother():
    model = _lgssm()
    x, _ = model.sample(2, num_steps=6)
    post = model.posterior(Sequences(x, lengths=[6, 4]))
    S = 40000
    z = post.sample((S,))  # [S, B, T, D]
    means, covs, cross = post.moments()
    se = (covs.diagonal(dim1=-2, dim2=-1) / S).sqrt()
    assert ((z.mean(0) - means).abs() <= 4.5 * se).all()
    centred = z - means
    emp_cross = (centred[:, :, :-1].unsqueeze(-1) * centred[:, :, 1:].unsqueeze(-2)).mean(0)
    scale = (
        covs[:, :-1].diagonal(dim1=-2, dim2=-1).unsqueeze(-1) * covs[:, 1:].diagonal(dim1=-2, dim2=-1).unsqueeze(-2)
    ).sqrt()
    assert ((emp_cross - cross).abs() <= 5 * scale * (2 / S) ** 0.5).all()


def test_gradients_of_the_kalman_log_evidence_match_the_stacked_gaussian():
    model = _lgssm(D=2, Dx=2)
    x, _ = model.sample(1, num_steps=4)
    model.log_evidence(x).sum().backward()
    params = [p for p in model.parameters() if p.numel()]
    ours = [p.grad.clone() for p in params]
    model.zero_grad()
    _stacked_log_density(model, x[0]).backward()
    for a, p in zip(ours, params):
        torch.testing.assert_close(a, p.grad, rtol=1e-8, atol=1e-10)


def test_affine_scan_equals_the_sequential_recurrence():
    M, g = 0.5 * torch.randn(3, 37, 4, 4), torch.randn(3, 37, 4)
    y, expected = g[:, 0], [g[:, 0]]
    for t in range(1, 37):
        y = (M[:, t] @ y.unsqueeze(-1)).squeeze(-1) + g[:, t]
        expected.append(y)
    torch.testing.assert_close(elbox.distributions.affine_scan(M, g), torch.stack(expected, 1), rtol=1e-10, atol=1e-12)


# Bad input.


def test_sequence_models_reject_bad_input_with_clear_errors():
    with pytest.raises(ValueError, match="transition_matrix \\(each row\\) must sum to one"):
        HMM(2, "gaussian", dim=2, transition_matrix=torch.tensor([[0.5, 0.4], [0.5, 0.5]]))
    with pytest.raises(ValueError, match="initial_probs must be probabilities"):
        HMM(2, "gaussian", dim=2, initial_probs=torch.tensor([1.5, -0.5]))
    model = _gaussian_hmm(D=2)
    with pytest.raises(
        ValueError, match=r"x must have shape \[B, T, 2\] for HMM; received Tensor of shape \(4, 5, 3\)"
    ):
        model.log_evidence(torch.randn(4, 5, 3))
    x = torch.randn(4, 5, 2)
    x[2, 3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"x must be finite.*\(NaN\) at index \(2, 3, 1\)"):
        model.log_evidence(x)
    x[2, 3, 1] = 0.0
    with pytest.raises(ValueError, match="mask must be a prefix mask.*row 1 is 10110"):
        Sequences(x, mask=torch.tensor([[1, 1, 1, 1, 1], [1, 0, 1, 1, 0], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="symbols in \\[0, 4\\)"):
        _categorical_hmm(M=4).log_evidence(torch.tensor([[0, 1, 4]]))
    with pytest.raises(ValueError, match="observation_covariance is not positive definite"):
        LinearGaussianSSM(2, 2, observation_covariance=torch.tensor([[1.0, 2.0], [2.0, 1.0]]))
    with pytest.raises(ValueError, match="transition_covariance must be symmetric"):
        LinearGaussianSSM(2, 2, transition_covariance=torch.tensor([[1.0, 0.5], [0.0, 1.0]]))
    with pytest.raises(ValueError, match=r"x must have shape \[B, T, 2\] for LinearGaussianSSM"):
        LinearGaussianSSM(3, 2).log_evidence(torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match="has input_dim=1: pass the inputs"):
        LinearGaussianSSM(3, 2, 1).log_evidence(torch.randn(2, 5, 2))


def test_sequences_pad_index_and_describe_ragged_batches():
    seqs = Sequences.from_list([torch.randn(5, 2), torch.randn(3, 2), torch.randn(1, 2)])
    assert seqs.shape == (3, 5, 2) and seqs.lengths.tolist() == [5, 3, 1] and seqs.ragged
    assert seqs[torch.tensor([2, 0])].lengths.tolist() == [1, 5]
    assert "lengths 1..5" in repr(seqs)
    model = _gaussian_hmm(D=2)
    padded = seqs.values.clone()
    padded[1, 3:] = float("nan")  # padding is never read
    assert torch.allclose(model.log_evidence(Sequences(padded, lengths=[5, 3, 1])), model.log_evidence(seqs))
    with pytest.raises(ValueError, match="lengths must lie in \\[1, T=5\\]"):
        Sequences(seqs.values, lengths=[5, 0, 1])


@pytest.mark.parametrize("make", [_gaussian_hmm, _categorical_hmm], ids=["gaussian", "categorical"])
def test_hmm_score_predict_predict_proba_equal_hmmlearns(make):
    model = make()
    x, _ = model.sample(5, num_steps=30)
    seqs = Sequences(x, lengths=[30, 12, 30, 4, 21])
    peer = _hmmlearn(model)
    X, lengths = _concatenated(seqs)
    assert float(model.score(seqs)) * len(lengths) == pytest.approx(peer.score(X, lengths), rel=1e-12)
    assert np.array_equal(model.predict(seqs)[seqs.mask].numpy(), peer.predict(X, lengths))
    assert (model.predict(seqs)[~seqs.mask] == -1).all()
    np.testing.assert_allclose(model.predict_proba(seqs)[seqs.mask].numpy(), peer.predict_proba(X, lengths),
                               rtol=0, atol=1e-10)  # fmt: skip


def test_lgssm_predict_is_pykalmans_smoothed_mean():
    model = _lgssm(D=3, Dx=2)
    x, _ = model.sample(2, num_steps=30)
    peer = _pykalman(model)
    means = model.predict(x)
    for b in range(2):
        np.testing.assert_allclose(means[b].numpy(), peer.smooth(x[b].numpy())[0], atol=1e-8)
    assert float(model.score(x)) == pytest.approx(np.mean([peer.loglikelihood(x[b].numpy()) for b in range(2)]),
                                                  abs=1e-6)  # fmt: skip
