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
