"""The compiled loops (elbox.distributions._compiled) against the torch kernels they stand in
for: every output equal in float64 on random instances (settled and never-settling models,
diffuse starts, ragged batches, inputs, one step and long sequences; HMMs with padding, missing
steps and structural zeros), the rule that picks them, and their refusals falling back to torch."""

from __future__ import annotations

import pytest
import torch

from elbox import HMM, LinearGaussianSSM, Sequences
from elbox.distributions import _compiled
from elbox.distributions.hmm_kernels import forward, forward_backward, hmm_log_evidence
from elbox.distributions.kalman import LinearGaussian, kalman_covariances, kalman_filter, kalman_log_norm, rts_smoother
from tests.test_kernels import _covariances_by_steps, _filter_by_steps, _lgssm

pytestmark = pytest.mark.skipif(not _compiled.compiled_enabled(), reason="numba is a dependency; ELBOX_COMPILED=0")


@pytest.fixture(autouse=True)
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(old)


def _both(monkeypatch, f):
    """f() by the torch kernels, then by the compiled ones."""
    monkeypatch.setenv("ELBOX_COMPILED", "0")
    expected = f()
    monkeypatch.setenv("ELBOX_COMPILED", "1")
    return expected, f()


def _close(ours, expected, rtol=1e-10, atol=1e-10):
    if isinstance(expected, dict):
        for key in ("pred", "filt", "gain", "chol_s", "white"):
            torch.testing.assert_close(ours[key], expected[key], rtol=rtol, atol=atol)
    elif isinstance(expected, tuple | list):
        for a, b in zip(ours, expected, strict=True):
            _close(a, b, rtol, atol)
    elif isinstance(expected, torch.Tensor):
        torch.testing.assert_close(ours, expected, rtol=rtol, atol=atol)


# The rule.


def test_the_rule_takes_the_compiled_loop_only_where_no_gradient_is_wanted(monkeypatch):
    a, b = torch.randn(3), torch.randn(3, requires_grad=True)
    assert _compiled.use_compiled(a)
    assert not _compiled.use_compiled(a, b)  # a gradient wanted
    with torch.no_grad():
        assert _compiled.use_compiled(a, b)
    assert not _compiled.use_compiled(a.float(), a)  # mixed dtypes
    assert _compiled.use_compiled(a.float())
    assert not _compiled.use_compiled(a.half())
    assert not _compiled.use_compiled(a.long())
    assert not _compiled.use_compiled()
    monkeypatch.setenv("ELBOX_COMPILED", "0")
    assert not _compiled.use_compiled(a) and not _compiled.compiled_enabled()


# Kalman.


@pytest.mark.parametrize("settling", [True, False])
@pytest.mark.parametrize("T", [1, 2, 3, 10, 64, 700])
def test_compiled_covariances_equal_the_recursion_and_the_doubling(monkeypatch, settling, T):
    with torch.no_grad():
        model = _lgssm(settling=settling)._linear_gaussian()
        doubled, ours = _both(monkeypatch, lambda: kalman_covariances(model, T))
        expected = _covariances_by_steps(model, T)
        assert ours["steps"] == expected["steps"]
        for key in ("pred", "filt", "gain", "chol_s"):
            torch.testing.assert_close(ours[key], expected[key], rtol=1e-10, atol=1e-12)
        _close(ours, doubled, rtol=1e-10, atol=1e-12)
        unsettled = kalman_covariances(model._replace(steady_state=False), T)
        assert unsettled["steps"] == T
        torch.testing.assert_close(unsettled["filt"], ours["filt"], rtol=1e-10, atol=1e-12)


def test_compiled_covariances_from_an_approximately_diffuse_start(monkeypatch):
    with torch.no_grad():
        model = _lgssm(D=4)._linear_gaussian()
        model = model._replace(initial_covariance=1e7 * torch.eye(4))
        expected, ours = _both(monkeypatch, lambda: kalman_covariances(model, 300))
        _close(ours, expected, rtol=1e-8, atol=1e-8)


def test_a_covariance_that_is_not_positive_definite_falls_back_to_torchs_error():
    D = 2
    bad = LinearGaussian(0.5 * torch.eye(D), torch.eye(D), torch.eye(D), -2.0 * torch.eye(D), torch.zeros(D),
                         torch.eye(D) * 0.1)  # fmt: skip
    assert _compiled.kalman_covariances(bad, 10) is None  # S = C P Cᵀ + R < 0: declined
    with torch.no_grad(), pytest.raises(ValueError, match="innovation covariance"):
        kalman_covariances(bad, 10)


@pytest.mark.parametrize("case", ["one", "batch", "ragged", "inputs", "never settling", "single step", "float32"])
def test_the_compiled_filter_and_smoother_equal_the_torch_kernels(monkeypatch, case):
    T = 1 if case == "single step" else 150
    model = _lgssm(input_dim=2 if case == "inputs" else 0, settling=case != "never settling")
    B = 1 if case in ("one", "never settling") else 4
    x = torch.randn(B, T, 2) if case == "inputs" else model.sample(B, num_steps=T)[0]
    lengths = torch.tensor([T, 97, 40, 1]) if case == "ragged" else torch.full((B,), T)
    inputs = torch.randn(B, T, 2) if case == "inputs" else None
    if case == "float32":
        model, x = model.float(), x.float()
    seqs = Sequences(x, lengths=lengths, inputs=inputs)
    rtol = 1e-4 if case == "float32" else 1e-10
    with torch.no_grad():
        checked = model.check_data(seqs)
        params, drive = model._linear_gaussian(), model._drive(checked)

        def kernels():
            filtered = kalman_filter(params, checked.values, checked.mask, drive)
            smoothed = rts_smoother(params, filtered, checked.mask, checked.ragged)
            return (kalman_log_norm(params, checked.values, checked.mask, drive), filtered.log_norm, filtered.means,
                    filtered.predicted, filtered.covariances, *smoothed, model.e_step(seqs)[0].moments(),
                    model.log_evidence(seqs))  # fmt: skip

        expected, ours = _both(monkeypatch, kernels)
        _close(ours, expected, rtol=rtol, atol=rtol)
        if case != "float32":  # and both the loop over time
            norm, means, covs = _filter_by_steps(model, checked.values, checked.mask, inputs)
            torch.testing.assert_close(ours[0], norm, rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(ours[-2][0], means, rtol=1e-9, atol=1e-10)


def test_gradients_take_the_torch_kernels_and_agree_with_the_compiled_values():
    model = _lgssm()
    x = model.sample(3, num_steps=80)[0]
    value = model.log_evidence(x)  # parameters want gradients: torch
    assert value.requires_grad
    grads = torch.autograd.grad(value.sum(), [model.transition_matrix, model.observation_matrix])
    assert all(torch.isfinite(g).all() for g in grads)
    with torch.no_grad():
        torch.testing.assert_close(model.log_evidence(x), value.detach(), rtol=1e-10, atol=1e-10)


@pytest.mark.filterwarnings("ignore::elbox.inference.ConvergenceWarning")
def test_lgssm_em_is_unchanged_by_the_compiled_kernels(monkeypatch):
    import copy

    import elbox

    data = _lgssm(D=3).sample(6, num_steps=120)[0]
    start = LinearGaussianSSM(3, 2)

    def fit():
        model = copy.deepcopy(start)
        history = elbox.em(model, data, max_iter=15, tol=0.0)
        return torch.tensor(history.lower_bound), model.transition_matrix.detach().clone()

    expected, ours = _both(monkeypatch, fit)
    _close(ours, expected, rtol=1e-8, atol=1e-8)


# HMM.


def _hmm_inputs(B, T, K, zeros=False, lengths=None):
    initial, transition = torch.randn(K), torch.randn(K, K)
    if zeros:  # structural zeros: a left-to-right chain
        transition = transition.masked_fill(torch.ones(K, K).tril(-1).bool(), float("-inf"))
        initial = torch.full((K,), float("-inf")).index_fill(0, torch.tensor([0]), 0.0)
    log_e = 3 * torch.randn(B, T, K)
    mask = torch.ones(B, T, dtype=torch.bool)
    if lengths is not None:
        mask = torch.arange(T) < torch.tensor(lengths).unsqueeze(-1)
        log_e = torch.where(mask.unsqueeze(-1), log_e, 0.0)
    log_e[:, T // 3] = 0.0 if T > 2 else log_e[:, T // 3]  # a missing step: zero log-densities
    return initial, transition, log_e, mask


@pytest.mark.parametrize("shape", [(1, 1, 3), (1, 2, 2), (3, 17, 4), (2, 3000, 8), (50, 40, 5)])
@pytest.mark.parametrize("ragged", [False, True])
def test_compiled_hmm_passes_equal_the_torch_kernels(monkeypatch, shape, ragged):
    B, T, K = shape
    lengths = [max(T - 3 * b, 1) for b in range(B)] if ragged else None
    initial, transition, log_e, mask = _hmm_inputs(B, T, K, lengths=lengths)
    with torch.no_grad():
        expected, ours = _both(monkeypatch, lambda: (
            forward(initial, transition, log_e), hmm_log_evidence(initial, transition, log_e),
            forward_backward(initial, transition, log_e, mask)))  # fmt: skip
    _close(ours[0], expected[0])
    _close(ours[1], expected[1], rtol=1e-10, atol=1e-9)
    fb, fb_expected = ours[2], expected[2]
    for name in ("marginals", "transition_counts", "log_norm"):
        _close(getattr(fb, name), getattr(fb_expected, name))


def test_structural_zeros_fall_back_to_log_space(monkeypatch):
    initial, transition, log_e, mask = _hmm_inputs(2, 30, 4, zeros=True)
    with torch.no_grad():
        expected, ours = _both(monkeypatch, lambda: forward_backward(initial, transition, log_e, mask))
        assert ours.log_filtered is not None  # a filtered probability is zero: the log-space pass ran
        for name in ("marginals", "transition_counts", "log_norm"):
            _close(getattr(ours, name), getattr(expected, name))
        # underflow: one impossible observation after another
        far = log_e.clone()
        far[:, 5] = torch.tensor([0.0, -1e4, -1e4, -1e4])
        far[:, 6] = torch.tensor([-1e4, -1e4, -1e4, 0.0])
        expected, ours = _both(monkeypatch, lambda: hmm_log_evidence(initial, transition, far))
        _close(ours, expected)


@pytest.mark.filterwarnings("ignore::elbox.inference.ConvergenceWarning")
def test_hmm_model_results_are_unchanged(monkeypatch):
    import copy

    import elbox

    truth = HMM(3, dim=2)
    x, _ = truth.sample(5, num_steps=200)
    model = HMM(3, dim=2)

    model.initialize(x, generator=torch.Generator().manual_seed(0))

    def fit():
        fitted = copy.deepcopy(model)
        history = elbox.em(fitted, x, max_iter=10, tol=0.0)
        return torch.tensor(history.lower_bound), fitted.log_evidence(x).detach()

    expected, ours = _both(monkeypatch, fit)
    assert expected[0][-1] > expected[0][0] + 1.0  # EM moved
    _close(ours, expected, rtol=1e-9, atol=1e-9)


def test_zero_filtered_probabilities_keep_the_compiled_pass_and_exact_logs(monkeypatch):
    initial, transition, log_e, mask = _hmm_inputs(2, 30, 4, zeros=True)
    with torch.no_grad():
        expected, ours = _both(monkeypatch, lambda: forward_backward(initial, transition, log_e, mask, zeros_ok=True))
        assert expected.log_filtered is not None and ours.filtered is not None  # torch: log space; compiled: kept
        for name in ("marginals", "transition_counts", "log_norm"):
            _close(getattr(ours, name), getattr(expected, name))
    # an HMM whose filtered probabilities underflow: its posterior's reverse chain takes the exact logs
    truth = HMM(3, dim=2, loc=40 * torch.randn(3, 2))
    x, _ = truth.sample(3, num_steps=60)
    with torch.no_grad():
        def posterior():
            q = truth.e_step(x)[0]
            assert q._alpha is None or not bool(q._alpha.amin() > 0)  # zeros: underflow, as meant
            torch.manual_seed(1)
            z = q.sample()
            return q.marginals(), q.log_prob(z), z

        expected, ours = _both(monkeypatch, posterior)
        assert torch.equal(ours[2], expected[2])  # the same paths drawn
        _close(ours[:2], expected[:2], rtol=1e-9, atol=1e-9)
        assert torch.isfinite(ours[1]).all()


# The HMM's lanes: emissions computed inside the loop, the vectorized exp, the blocks, the cache.


def _hmm_batch(covariance_type="diag", B=40, T=60, K=4, D=3, emission="gaussian"):
    if emission == "categorical":
        truth = HMM(K, "categorical", num_symbols=5)
    else:
        truth = HMM(K, dim=D, covariance_type=covariance_type, loc=2 * torch.randn(K, D))
    x, _ = truth.sample(B, num_steps=T)
    return truth, x


@pytest.mark.parametrize("case", ["diag", "full", "categorical", "ragged", "missing", "float32"])
def test_hmm_on_lanes_equals_the_torch_kernels(monkeypatch, case):
    """A batch taken by lanes (B ≥ 16): Gaussian emissions computed inside the forward loop
    (LinearEmissions, never stored), or laid out [K, T, B] where the model computes them
    (categorical, ragged, missing steps); log p(x), the marginals, the expected transitions and
    the filtered probabilities equal the torch kernels'."""
    from elbox.distributions.hmm_kernels import LinearEmissions

    emission = "categorical" if case == "categorical" else "gaussian"
    truth, x = _hmm_batch("full" if case == "full" else "diag", emission=emission)
    if case in ("ragged", "missing"):
        x = x.clone()
        lengths = torch.randint(20, 61, (len(x),))
        if case == "ragged":
            x = Sequences.from_list([x[b, : int(n)] for b, n in enumerate(lengths)])
        else:
            x[torch.rand(x.shape[:2]) < 0.1] = float("nan")
    if case == "float32":
        truth, x = truth.float(), x.float()
    rtol, atol = (1e-4, 1e-4) if case == "float32" else (1e-10, 1e-9)
    with torch.no_grad():
        kind = type(truth._kernel_emissions(truth.check_data(x)))
        assert (kind is LinearEmissions) == (case in ("diag", "full", "float32"))

        def run():
            q, log_p = truth.e_step(x)
            return truth.log_evidence(x), log_p, q.marginals(), q.transition_counts, q._alpha

        expected, ours = _both(monkeypatch, run)
    for a, b in zip(ours, expected):
        _close(a, b, rtol=rtol, atol=atol)


@pytest.mark.filterwarnings("ignore::elbox.inference.ConvergenceWarning")
@pytest.mark.parametrize("covariance_type", ["diag", "full"])
def test_hmm_em_on_lanes_takes_the_torch_kernels_iterates(monkeypatch, covariance_type):
    import copy

    import elbox

    truth, x = _hmm_batch(covariance_type, B=24, T=80)
    model = HMM(4, dim=3, covariance_type=covariance_type)
    model.initialize(x, generator=torch.Generator().manual_seed(0))

    def fit():
        fitted = copy.deepcopy(model)
        history = elbox.em(fitted, x, max_iter=8, tol=None)
        return torch.tensor(history.lower_bound), fitted.emissions.loc.detach(), fitted.transition_matrix.detach()

    expected, ours = _both(monkeypatch, fit)
    assert expected[0][-1] > expected[0][0] + 0.1  # EM moved
    _close(ours, expected, rtol=1e-9, atol=1e-9)


def test_the_vectorized_exp_is_within_two_ulp_of_libm_and_keeps_zeros_and_nans():
    import numpy as np

    from elbox.distributions._numba_kernels import scaled_exp

    rng = np.random.default_rng(0)
    d = np.concatenate([-rng.exponential(30.0, 20_000), -rng.uniform(0, 760, 20_000), -np.logspace(-300, 2.5, 2_000),
                        [0.0, -0.0, -1e-320, -708.39, -709.8, -744.4, -745.2, -746.0, -np.inf, np.nan]])  # fmt: skip
    le = d.reshape(1, -1).copy()
    e = np.empty_like(le)
    low, high = np.empty(le.shape, np.int64), np.empty(le.shape, np.int64)
    scaled_exp(le, le.shape[1], np.zeros(le.shape[1]), e, low, high)
    ours, libm = e[0], np.exp(d)
    normal = libm >= np.finfo(np.float64).tiny
    assert np.all(np.abs(ours[normal] - libm[normal]) <= 2 * np.spacing(libm[normal]))
    subnormal = ~normal & np.isfinite(d)  # two roundings there: within one unit of the smallest subnormal
    assert np.all(np.abs(ours[subnormal] - libm[subnormal]) <= 2 * np.spacing(0.0))
    assert ours[-2] == 0.0 and np.isnan(ours[-1])


@pytest.mark.parametrize("B, threads, block", [  # as many blocks as threads, 128 lanes at most, multiples of 8
    (16, 2, 8), (17, 2, 16), (200, 2, 104), (200, 1, 104), (256, 2, 128), (257, 2, 72), (1000, 2, 128),
    (1000, 1, 128), (20, 1, 24)])  # fmt: skip
def test_lane_blocks_split_the_batch_over_the_threads(B, threads, block):
    assert _compiled._block(B, threads) == block


def test_the_lanes_follow_torchs_thread_count_and_put_numbas_back():
    import numba

    old, before = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(1)
    try:
        with _compiled._lane_threads() as threads:
            assert threads == 1 == numba.get_num_threads()
        assert numba.get_num_threads() == before
    finally:
        torch.set_num_threads(old)


def test_the_compiled_kernels_load_from_numbas_cache_in_a_new_process():
    """Every kernel a process ran is cached on disk and loads in the next process without being
    compiled again (a kernel whose helpers were closures missed the cache in every process)."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import torch
        from elbox import HMM, LinearGaussianSSM
        from elbox.distributions import _compiled
        torch.set_default_dtype(torch.float64)
        with torch.no_grad():
            hmm = HMM(3, dim=2)
            x, _ = hmm.sample(20, num_steps=30)
            hmm.log_evidence(x); hmm.e_step(x); hmm.log_evidence(x[:2]); hmm.e_step(x[:2])
            ssm = LinearGaussianSSM(2, 2)
            ssm.e_step(torch.randn(3, 30, 2))
        misses = {name: sum(f.stats.cache_misses.values()) for name, f in _compiled._kernels().items()}
        print(sum(misses.values()), misses)
    """)
    first = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    second = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert second.stdout.split()[0] == "0", second.stdout


# The HMM's log-evidence with a gradient: the compiled forward–backward pass and its closed form.


@pytest.mark.parametrize("shape", [(1, 1, 3), (3, 50, 4), (20, 2, 2), (40, 30, 5), (2, 3000, 8)])
@pytest.mark.parametrize("case", ["plain", "ragged", "zeros", "float32"])
def test_hmm_log_evidence_gradient_equals_autograd_through_the_torch_kernels(monkeypatch, shape, case):
    """∂ log p / ∂ (π's logits, A's logits, log e) by the closed form of the compiled pass
    (γ, and ξ less A times its row sums) against autograd through the torch kernels, each
    sequence's log p weighted at random; ragged batches (log e zero past each end, as callers
    pass it), structural zeros, float32."""
    from elbox.distributions.hmm_kernels import _CompiledLogEvidence

    B, T, K = shape
    lengths = [max(T - 7 * b, 1) for b in range(B)] if case == "ragged" else None
    initial, transition, log_e, _ = _hmm_inputs(B, T, K, zeros=case == "zeros", lengths=lengths)
    dtype = torch.float32 if case == "float32" else torch.float64
    leaves = [t.to(dtype).requires_grad_() for t in (initial, transition, log_e)]
    weights = torch.randn(B, dtype=dtype)

    def value_and_grads():
        value = hmm_log_evidence(*leaves)
        grads = torch.autograd.grad((value * weights).sum(), leaves, allow_unused=True, materialize_grads=True)
        return value.detach(), grads, type(value.grad_fn).__name__

    expected, ours = _both(monkeypatch, value_and_grads)
    assert ours[2] == _CompiledLogEvidence.__name__ + "Backward" and expected[2] != ours[2]
    rtol, atol = (1e-4, 1e-4) if case == "float32" else (1e-10, 1e-10)
    _close(ours[0], expected[0], rtol=rtol, atol=atol * max(1.0, float(expected[0].abs().max())))
    for a, b in zip(ours[1], expected[1]):
        _close(torch.nan_to_num(a), torch.nan_to_num(b), rtol=rtol, atol=atol)


def test_hmm_log_evidence_gradient_declines_to_the_torch_kernels_and_refuses_a_second_derivative(monkeypatch):
    from elbox.distributions.hmm_kernels import _CompiledLogEvidence

    initial, transition, log_e, _ = _hmm_inputs(2, 30, 4, zeros=True)  # left to right
    far = log_e.clone()
    far[:, 5] = torch.tensor([-1e4, -1e4, -1e4, 0.0])
    far[:, 6] = torch.tensor([0.0, -1e4, -1e4, -1e4])  # state 3, then 0, which the chain cannot go back to
    leaves = [t.clone().requires_grad_() for t in (initial, transition, far)]

    def value_and_grads():
        value = hmm_log_evidence(*leaves)
        return value.detach(), torch.autograd.grad(value.sum(), leaves), type(value.grad_fn).__name__

    expected, ours = _both(monkeypatch, value_and_grads)
    assert ours[2] != _CompiledLogEvidence.__name__ + "Backward"  # declined: the normalizer underflowed
    assert torch.isfinite(ours[0]).all()
    for a, b in zip(ours[1], expected[1]):
        _close(torch.nan_to_num(a), torch.nan_to_num(b))
    leaves = [t.clone().requires_grad_() for t in _hmm_inputs(2, 30, 4)[:3]]
    with pytest.raises(RuntimeError, match="differentiable once.*ELBOX_COMPILED=0"):
        torch.autograd.grad(hmm_log_evidence(*leaves).sum(), leaves[2], create_graph=True)
    monkeypatch.setenv("ELBOX_COMPILED", "0")  # the torch kernels' second derivative
    (g,) = torch.autograd.grad(hmm_log_evidence(*leaves).sum(), leaves[2], create_graph=True)
    assert torch.isfinite(torch.autograd.grad(g.sum(), leaves[0])[0]).all()


# The Kalman log-evidence with a gradient: the compiled filter and smoother, and Fisher's identity.


@pytest.mark.parametrize("case", ["settled", "never settling", "ragged", "inputs", "one step", "float32"])
def test_kalman_log_evidence_gradient_equals_autograd_through_the_torch_kernels(monkeypatch, case):
    """∇ log p(x) for every parameter of the model (through its parametrization) and for the data
    (and the inputs' matrix), by Fisher's identity on the compiled smoother's moments, against
    autograd through the torch kernels; each sequence's log p weighted at random."""
    from elbox.distributions.kalman import _CompiledKalmanLogEvidence

    model = _lgssm(input_dim=2 if case == "inputs" else 0, settling=case != "never settling")
    T = {"one step": 1, "never settling": 300}.get(case, 60)
    inputs = torch.randn(4, T, 2) if case == "inputs" else None
    data = model.sample(4, num_steps=T, inputs=inputs)[0]
    if case == "float32":
        model, data = model.float(), data.float()
    data.requires_grad_()
    lengths = torch.tensor([T - 9 * b for b in range(4)]) if case == "ragged" else None
    x = Sequences(data, lengths=lengths, inputs=inputs) if case in ("ragged", "inputs") else data
    weights = torch.randn(4, dtype=data.dtype)
    params = [p for p in model.parameters() if p.requires_grad]

    def value_and_grads():
        value = model.log_evidence(x)
        grads = torch.autograd.grad((value * weights).sum(), [*params, data], allow_unused=True, materialize_grads=True)
        return value.detach(), grads, type(value.grad_fn).__name__

    expected, ours = _both(monkeypatch, value_and_grads)
    assert ours[2] == _CompiledKalmanLogEvidence.__name__ + "Backward" and expected[2] != ours[2]
    rtol, atol = (1e-3, 1e-3) if case == "float32" else (1e-9, 1e-9)
    _close(ours[0], expected[0], rtol=rtol, atol=atol)
    for a, b in zip(ours[1], expected[1]):
        _close(a, b, rtol=rtol, atol=atol * max(1.0, float(b.abs().amax()) if b.numel() else 1.0))


def test_kalman_log_evidence_gradient_refuses_a_second_derivative(monkeypatch):
    model = _lgssm()
    x = model.sample(2, num_steps=30)[0]
    params = [p for p in model.parameters() if p.requires_grad]
    with pytest.raises(RuntimeError, match="differentiable once.*ELBOX_COMPILED=0"):
        torch.autograd.grad(model.log_evidence(x).sum(), params, create_graph=True)


def test_kalman_log_evidence_gradient_takes_the_torch_kernels_for_a_singular_covariance(monkeypatch):
    """A deterministic state component (Q singular, as in structural models) has no complete-data
    density for Fisher's identity: the gradient is autograd's through the torch kernels."""
    from elbox.distributions.kalman import _CompiledKalmanLogEvidence, kalman_log_evidence

    A = torch.tensor([[1.0, 1.0], [0.0, 1.0]], requires_grad=True)  # a local linear trend
    Q = torch.diag(torch.tensor([0.3, 0.0])).requires_grad_()  # the slope is fixed
    model = LinearGaussian(A, torch.tensor([[1.0, 0.0]]), Q, torch.eye(1), torch.zeros(2), torch.eye(2))
    values = torch.randn(3, 40, 1)
    mask = torch.ones(3, 40, dtype=torch.bool)
    value = kalman_log_evidence(model, values, mask)
    assert type(value.grad_fn).__name__ != _CompiledKalmanLogEvidence.__name__ + "Backward"
    expected = torch.autograd.grad(kalman_log_norm(model, values, mask).sum(), [A, Q])
    for a, b in zip(torch.autograd.grad(value.sum(), [A, Q]), expected):
        _close(a, b)


@pytest.mark.parametrize("B", [63, 64])
def test_kalman_log_evidence_gradient_rule_at_its_boundary(B):
    from elbox.distributions.kalman import GRADIENT_LANES, _CompiledKalmanLogEvidence

    model = _lgssm()
    x = model.sample(B, num_steps=20)[0]
    compiled = type(model.log_evidence(x).grad_fn).__name__ == _CompiledKalmanLogEvidence.__name__ + "Backward"
    assert compiled == (B < GRADIENT_LANES)


def test_chunk_length_rule_at_its_boundaries():
    from elbox.distributions.hmm_kernels import chunk_length

    assert chunk_length(4, 63, 8, differentiable=True) == 0 and chunk_length(4, 64, 8, differentiable=True) == 8
    assert chunk_length(4, 2047, 8) == 0 and chunk_length(4, 2048, 8) == 46
    assert chunk_length(200, 500, 8, differentiable=True) == 0  # the products do not pay: the loop


@pytest.mark.parametrize("shape", [(1, 100, 8), (3, 257, 4)])
def test_forward_backward_gradient_by_chunks_equals_the_loops(monkeypatch, shape):
    """With a gradient the torch pass runs in chunks from 64 steps: its marginals, log-normalizers
    and their gradient equal the loop over time's (forced by a zero chunk length)."""
    import elbox.distributions.hmm_kernels as kernels

    B, T, K = shape
    initial, transition, log_e, mask = _hmm_inputs(B, T, K, lengths=[T - 11 * b for b in range(B)])
    leaves = [t.clone().requires_grad_() for t in (initial, transition, log_e)]
    probe = torch.randn(B, T, K)

    def run():
        fb = forward_backward(*leaves, mask)
        value = (fb.marginals * probe).sum() + fb.log_norm.sum()
        return value.detach(), torch.autograd.grad(value, leaves)

    ours = run()
    monkeypatch.setattr(kernels, "chunk_length", lambda *args, **kwargs: 0)
    expected = run()
    _close(ours[0], expected[0])
    for a, b in zip(ours[1], expected[1]):
        _close(a, b)
