"""The chunked sequence kernels against the plain loops over time they replace: values and
gradients in float64, at the boundaries of their dispatch rules (one step, short, prime and
long lengths, one sequence and batches, settled and never-settling models, ragged batches,
inputs)."""

from __future__ import annotations

import math

import pytest
import torch

from elbox import LinearGaussianSSM, Sequences
from elbox.distributions import affine_recurrence, congruence_recurrence
from elbox.distributions.gauss_markov import recurrence_chunk
from elbox.distributions.kalman import kalman_covariances, kalman_filter, kalman_log_norm, kalman_update, settled

LENGTHS_T = [1, 2, 3, 7, 37, 64, 101, 300]  # one step, tiny, prime (steps left over), square, a divisor


@pytest.fixture(autouse=True)
def _float64(monkeypatch):
    # these hold the torch kernels to the loops; tests/test_compiled.py holds the compiled loops
    # (which take over wherever no gradient is wanted) to the torch kernels
    monkeypatch.setenv("ELBOX_COMPILED", "0")
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(old)


# The recurrences.


def _affine_loop(M, g):
    """y_0 = g_0, y_t = M_t y_{t-1} + g_t, step by step; M [T, D, D] or [T, B, D, D], g [T, B, D]."""
    y, out = g[0], [g[0]]
    for t in range(1, g.shape[0]):
        y = (M[t] @ y.unsqueeze(-1)).squeeze(-1) + g[t]
        out.append(y)
    return torch.stack(out)


def _congruence_loop(M, G):
    Y, out = G[:, 0], [G[:, 0]]
    for t in range(1, G.shape[1]):
        Y = M[:, t] @ Y @ M[:, t].mT + G[:, t]
        out.append(Y)
    return torch.stack(out, 1)


@pytest.mark.parametrize("T", LENGTHS_T)
@pytest.mark.parametrize("shared", [True, False])
def test_affine_recurrence_equals_the_loop_in_value_and_gradient(T, shared):
    B, D = 3, 4
    M = (0.5 * torch.randn(T, D, D) if shared else 0.5 * torch.randn(T, B, D, D)).requires_grad_()
    g = torch.randn(T, B, D, requires_grad=True)
    weights = torch.randn(T, B, D)
    ours, expected = affine_recurrence(M, g), _affine_loop(M, g)
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)
    grads = torch.autograd.grad((ours * weights).sum(), (M, g), allow_unused=True)
    expected_grads = torch.autograd.grad((expected * weights).sum(), (M, g), allow_unused=True)
    for a, b in zip(grads, expected_grads):
        if b is not None:  # (M_0 is unused: with one step, M is)
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("T", LENGTHS_T)
@pytest.mark.parametrize("b", [1, 3])
def test_congruence_recurrence_equals_the_loop_in_value_and_gradient(T, b):
    D = 3
    M = (0.6 * torch.randn(b, T, D, D)).requires_grad_()
    G = torch.randn(b, T, D, D, requires_grad=True)
    weights = torch.randn(b, T, D, D)
    ours, expected = congruence_recurrence(M, G), _congruence_loop(M, G)
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-11)
    grads = torch.autograd.grad((ours * weights).sum(), (M, G), allow_unused=True)
    expected_grads = torch.autograd.grad((expected * weights).sum(), (M, G), allow_unused=True)
    for a, b_ in zip(grads, expected_grads):
        if b_ is not None:
            torch.testing.assert_close(a, b_, rtol=1e-10, atol=1e-11)


def test_the_chunk_rule_balances_the_calls_and_prefers_divisors():
    assert recurrence_chunk(1) == 1
    assert recurrence_chunk(2000) == 40 and 2000 % 40 == 0  # √2000 ≈ 44.7: the nearest divisor
    assert recurrence_chunk(100_000) == 320 or 100_000 % recurrence_chunk(100_000) == 0
    assert recurrence_chunk(101) == 11  # prime: ⌈√101⌉, the last 2 steps one by one
    assert recurrence_chunk(2000, 8.0) == 16  # √(2000 / 8) ≈ 15.8: calls ≈ 8 L + T / L, least there
    for T in (10, 1000, 99_991):
        L = recurrence_chunk(T)
        assert 0.5 * math.sqrt(T) <= L <= 2 * math.sqrt(T) + 1


# The Kalman filter and smoother.


def _lgssm(D=3, Dx=2, input_dim=0, settling=True):
    if not settling:  # an unobserved random walk beside an observed AR(1): never settles
        return LinearGaussianSSM(2, 1, transition_matrix=torch.diag(torch.tensor([0.9, 1.0])),
                                 observation_matrix=torch.tensor([[1.0, 0.0]]),
                                 transition_covariance=torch.diag(torch.tensor([0.5, 0.01])),
                                 observation_covariance=torch.eye(1), initial_loc=torch.randn(2))  # fmt: skip
    A, a, r = torch.randn(D, D), torch.randn(D, D), torch.randn(Dx, Dx)
    return LinearGaussianSSM(
        D, Dx, input_dim=input_dim, transition_matrix=0.9 * A / torch.linalg.matrix_norm(A, 2),
        observation_matrix=torch.randn(Dx, D), transition_covariance=a @ a.T / D + 0.1 * torch.eye(D),
        observation_covariance=r @ r.T / Dx + 0.1 * torch.eye(Dx), initial_loc=torch.randn(D),
        control_matrix=torch.randn(D, input_dim) if input_dim else None,
    )  # fmt: skip


def _covariances_by_steps(model, T):
    """The old loop: the Riccati recursion step by step, stopped at its steady state."""
    A, C, Q, R = model.transition_matrix, model.observation_matrix, model.transition_covariance, \
        model.observation_covariance  # fmt: skip
    tol = 100 * torch.finfo(A.dtype).eps
    P_pred, out = model.initial_covariance, {"pred": [], "filt": [], "gain": [], "chol_s": []}
    for t in range(T):
        L_s, gain, P = kalman_update(P_pred, C, R)
        for key, value in zip(out, (P_pred, P, gain, L_s)):
            out[key].append(value)
        P_next = A @ P @ A.T + Q
        if model.steady_state and t > 0 and settled(P_pred, P_next, tol):
            break
        P_pred = P_next
    steps = len(out["pred"])
    result = {key: torch.stack(v) for key, v in out.items()}
    result = {key: torch.cat([v, v[-1].expand(T - steps, *v.shape[1:])]) for key, v in result.items()}
    result["steps"] = steps
    return result


def _filter_by_steps(model, values, mask, inputs=None):
    """The Kalman filter and RTS smoother step by step over each sequence: log p(x_t | x_{<t}) [B, T],
    smoothed means [B, T, D] and covariances [B, T, D, D] (each up to its own length)."""
    A, C, Q, R = model.transition_matrix, model.observation_matrix, model.transition_covariance, \
        model.observation_covariance  # fmt: skip
    B, T = mask.shape
    log_norm, means, covs = [], [], []
    for b in range(B):
        n = int(mask[b].sum())
        m, P = model.initial_loc, model.initial_covariance
        rows, filt, pred = [], [], []
        for t in range(n):
            if t:
                m = A @ m + (model.control_matrix @ inputs[b, t] if inputs is not None else 0)
                P = A @ P @ A.T + Q
            pred.append((m, P))
            S = C @ P @ C.T + R
            rows.append(torch.distributions.MultivariateNormal(C @ m, S).log_prob(values[b, t]))
            K = P @ C.T @ torch.linalg.inv(S)
            m, P = m + K @ (values[b, t] - C @ m), P - K @ S @ K.T
            filt.append((m, P))
        sm, sP = [filt[-1][0]], [filt[-1][1]]
        for t in range(n - 2, -1, -1):
            J = filt[t][1] @ A.T @ torch.linalg.inv(pred[t + 1][1])
            sm.append(filt[t][0] + J @ (sm[-1] - pred[t + 1][0]))
            sP.append(filt[t][1] + J @ (sP[-1] - pred[t + 1][1]) @ J.T)
        pad = T - n
        log_norm.append(torch.cat([torch.stack(rows), torch.zeros(pad)]))
        means.append(torch.cat([torch.stack(sm[::-1]), torch.zeros(pad, m.shape[0])]))
        covs.append(torch.cat([torch.stack(sP[::-1]), torch.eye(m.shape[0]).expand(pad, -1, -1)]))
    return torch.stack(log_norm), torch.stack(means), torch.stack(covs)


@pytest.mark.parametrize("settling", [True, False])
@pytest.mark.parametrize("T", [1, 2, 3, 10, 64, 700])
def test_kalman_covariances_by_doubling_equal_the_recursion(settling, T):
    with torch.no_grad():
        model = _lgssm(settling=settling)._linear_gaussian()
        ours, expected = kalman_covariances(model, T), _covariances_by_steps(model, T)
        assert ours["steps"] == expected["steps"]
        if not settling:
            assert ours["steps"] == T  # never settled: every step computed
        for key in ("pred", "filt", "gain", "chol_s"):
            torch.testing.assert_close(ours[key], expected[key], rtol=1e-10, atol=1e-12)
        unsettled = kalman_covariances(model._replace(steady_state=False), T)
        assert unsettled["steps"] == T
        torch.testing.assert_close(unsettled["filt"], ours["filt"], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", ["one", "batch", "ragged", "inputs", "never settling"])
def test_the_kalman_kernels_equal_the_loop_in_value_and_gradient(case):
    """log p(x) by the chunked filter (no means kept), and by the filter that keeps them, and the
    smoothed means and covariances: all equal the loop over time, and so do their gradients."""
    T = 150
    model = _lgssm(input_dim=2 if case == "inputs" else 0, settling=case != "never settling")
    B = 1 if case in ("one", "never settling") else 3
    x = torch.randn(B, T, 2) if case == "inputs" else model.sample(B, num_steps=T)[0]
    lengths = torch.tensor([T, 97, 40]) if case == "ragged" else torch.full((B,), T)
    inputs = torch.randn(B, T, 2) if case == "inputs" else None
    seqs = Sequences(x, lengths=lengths, inputs=inputs)
    checked = model.check_data(seqs)
    expected_norm, expected_means, expected_covs = _filter_by_steps(model, checked.values, checked.mask, inputs)
    params = model._linear_gaussian()
    drive = model._drive(checked)
    log_norm = kalman_log_norm(params, checked.values, checked.mask, drive)
    torch.testing.assert_close(log_norm, expected_norm, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(
        kalman_filter(params, checked.values, checked.mask, drive).log_norm, expected_norm, rtol=1e-10, atol=1e-10
    )
    means, covs, _ = model.e_step(seqs)[0].moments()
    torch.testing.assert_close(means, expected_means, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(covs.expand_as(expected_covs), expected_covs, rtol=1e-9, atol=1e-10)
    # gradients with respect to every parameter, of log p(x) and of the smoothed moments
    weights = torch.randn_like(expected_means)
    parameters = [p for p in model.parameters() if p.requires_grad]
    for ours, theirs in (
        (model.log_evidence(seqs).sum(), expected_norm.sum()),
        (
            (means * weights).sum() + covs.expand_as(expected_covs).sum(),
            (expected_means * weights).sum() + expected_covs.sum(),
        ),
    ):
        grads = torch.autograd.grad(ours, parameters, allow_unused=True)
        expected_grads = torch.autograd.grad(theirs, parameters, allow_unused=True, retain_graph=True)
        for a, b in zip(grads, expected_grads):
            if b is not None:
                torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)
