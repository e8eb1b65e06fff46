"""Compiled loops over time for the exact sequence kernels (numba): the Kalman filter's
covariances, log-likelihood and means, the RTS smoother's means, and the HMM's forward and
forward–backward passes, one step at a time at the cost of the step's arithmetic.

They compute what the pure-torch kernels compute (:mod:`elbox.distributions.kalman`,
:mod:`elbox.distributions.hmm_kernels`), in the same order of operations where it matters, and
``tests/test_compiled.py`` holds each equal to its torch counterpart. They run where nothing
needs a gradient (numba's arrays carry none) on CPU tensors of float32 or float64; everything
else, and every input whose pass they decline (a covariance that is not positive definite, a
probability that underflows), takes the torch path, which raises or recovers as before.
:func:`use_compiled` is that rule, written once. ``ELBOX_COMPILED=0`` turns the compiled path
off (the torch kernels then run everywhere).

The functions are compiled on first use and cached on disk (numba's ``cache=True``): the first
call in a fresh environment takes a second or two per function and dtype.
"""

from __future__ import annotations

import math
import os
from functools import cache

import numpy as np
import torch
from torch import Tensor

__all__ = ["compiled_enabled", "use_compiled"]


def compiled_enabled() -> bool:
    """Whether the compiled kernels may run: numba imports and ``ELBOX_COMPILED`` is not ``0``."""
    return os.environ.get("ELBOX_COMPILED", "1") != "0" and _kernels() is not None


def use_compiled(*tensors: Tensor) -> bool:
    """The dispatch rule: the compiled loop runs when it is enabled, no input needs a gradient
    (or gradients are off), and every input is a CPU tensor of float32 or float64 (all of one
    dtype)."""
    if not tensors or not compiled_enabled():
        return False
    dtype = tensors[0].dtype
    if dtype not in (torch.float32, torch.float64):
        return False
    grad = torch.is_grad_enabled()
    return all(t.device.type == "cpu" and t.dtype == dtype and not (grad and t.requires_grad) for t in tensors)


def _np(t: Tensor) -> np.ndarray:
    return t.detach().numpy()


@cache
def _kernels():
    """The numba functions, compiled lazily (None where numba does not import)."""
    try:
        from numba import njit
    except ImportError:  # pragma: no cover - numba is a dependency; a broken install falls back
        return None

    jit = njit(cache=True, nogil=True, fastmath=False)
    BLOCK = 64  # sequences advanced together (measured: 64 best of 8–256 for 256 × 2,000 steps here)

    @jit
    def cholesky(S, L):
        """L = chol(S) in place for a small n × n matrix; False where S is not positive definite."""
        n = S.shape[0]
        for j in range(n):
            s = S[j, j]
            for k in range(j):
                s -= L[j, k] * L[j, k]
            if not s > 0.0:
                return False
            L[j, j] = math.sqrt(s)
            for i in range(j + 1, n):
                v = S[i, j]
                for k in range(j):
                    v -= L[i, k] * L[j, k]
                L[i, j] = v / L[j, j]
            for i in range(j):
                L[i, j] = 0.0
        return True

    @jit
    def tril_inverse(L, W):
        """W = L⁻¹ for lower-triangular L (forward substitution)."""
        n = L.shape[0]
        for i in range(n):
            for j in range(n):
                W[i, j] = 0.0
        for j in range(n):
            W[j, j] = 1.0 / L[j, j]
            for i in range(j + 1, n):
                v = 0.0
                for k in range(j, i):
                    v -= L[i, k] * W[k, j]
                W[i, j] = v / L[i, i]

    @jit
    def product(X, Y, out):
        """out = X Y for small matrices."""
        for i in range(X.shape[0]):
            for j in range(Y.shape[1]):
                v = 0.0
                for k in range(X.shape[1]):
                    v += X[i, k] * Y[k, j]
                out[i, j] = v

    @jit
    def product_transposed(X, Y, add, out):
        """out = X Yᵀ + add for small matrices (``out`` may be ``add``: each entry is read before it is written)."""
        for i in range(X.shape[0]):
            for j in range(Y.shape[0]):
                v = add[i, j]
                for k in range(X.shape[1]):
                    v += X[i, k] * Y[j, k]
                out[i, j] = v

    @jit
    def riccati(A, C, Q, R, P0, T, steady, tol, pred, filt, gain, chol_s, white):
        """The covariance recursion of the Kalman filter, step by step: predicted and filtered
        covariances (Joseph form, symmetrized), gains P Cᵀ S⁻¹, chol(S) and chol(S)⁻¹ for
        t < T; with ``steady``, it stops at the first t ≥ 1 whose P_{t|t-1} and P_{t+1|t} have
        settled (the whitened change ‖L⁻¹ ΔP L⁻ᵀ‖_F ≤ ``tol``, L = chol(P_{t|t-1})), as
        :func:`elbox.distributions.kalman.kalman_covariances` does. Returns how many steps it
        kept, or −1 − t where S_t is not positive definite (a predicted covariance that is not
        counts as unsettled, as in torch's check)."""
        D, obs = A.shape[0], C.shape[0]
        CP = np.empty((obs, D))
        S = np.empty((obs, obs))
        WCP = np.empty((obs, D))
        IKC = np.empty((D, D))
        tmp = np.empty((D, D))
        F = np.empty((D, D))
        Lp = np.empty((D, D))
        Wp = np.empty((D, D))
        half = np.empty((D, D))
        KR = np.empty((D, obs))
        zero = np.zeros((D, D))
        for i in range(D):
            for j in range(D):
                pred[0, i, j] = P0[i, j]
        for t in range(T):
            P = pred[t]
            if t >= 2 and steady:  # the pair (P_{t-1|t-2}, P_{t|t-1}): settled keeps t steps
                if cholesky(pred[t - 1], Lp):
                    tril_inverse(Lp, Wp)
                    for i in range(D):
                        for j in range(D):
                            v = 0.0
                            for k in range(i + 1):
                                v += Wp[i, k] * (P[k, j] - pred[t - 1, k, j])
                            half[i, j] = v
                    norm = 0.0
                    for i in range(D):
                        for j in range(D):
                            v = 0.0
                            for k in range(j + 1):
                                v += half[i, k] * Wp[j, k]
                            norm += v * v
                    if math.sqrt(norm) <= tol:
                        return t
            # S = C P Cᵀ + R, L = chol(S), W = L⁻¹
            product(C, P, CP)
            product_transposed(CP, C, R, S)
            if not cholesky(S, chol_s[t]):
                return -1 - t
            tril_inverse(chol_s[t], white[t])
            W = white[t]
            # K = (W C P)ᵀ W
            for i in range(obs):
                for j in range(D):
                    v = 0.0
                    for k in range(i + 1):
                        v += W[i, k] * CP[k, j]
                    WCP[i, j] = v
            K = gain[t]
            for i in range(D):
                for j in range(obs):
                    v = 0.0
                    for k in range(j, obs):
                        v += WCP[k, i] * W[k, j]
                    K[i, j] = v
            # F = (I − K C) P (I − K C)ᵀ + K R Kᵀ, symmetrized
            for i in range(D):
                for j in range(D):
                    v = 1.0 if i == j else 0.0
                    for k in range(obs):
                        v -= K[i, k] * C[k, j]
                    IKC[i, j] = v
            product(IKC, P, tmp)
            product(K, R, KR)
            product_transposed(KR, K, zero, F)  # K R Kᵀ
            product_transposed(tmp, IKC, F, F)
            for i in range(D):
                for j in range(D):
                    filt[t, i, j] = 0.5 * (F[i, j] + F[j, i])
            if t + 1 < T:  # P_{t+1|t} = A F Aᵀ + Q
                product(A, filt[t], tmp)
                product_transposed(tmp, A, Q, pred[t + 1])
        return T

    @jit
    def filter_steps(A, C, gain, white, half_logdet, mu0, x, lengths, drive, has_drive, full, means, predicted,
                     log_norm):  # fmt: skip
        """The means' pass of the Kalman filter over x ``[B, T, obs]`` with shared gains and
        chol(S)⁻¹ (``[n, ·, ·]``, the last repeated past n): log p(x_t | x_{<t}) into ``log_norm``
        ``[B, T]`` up to each length; with ``full``, every step's filtered and predicted means
        into ``means`` and ``predicted`` ``[T, D, B]`` over all T (the padding too, as the torch
        kernel does). The batch is the innermost (vectorized) loop, in blocks of ``BLOCK``
        sequences held in local arrays."""
        B, T, obs = x.shape
        D = A.shape[0]
        n = gain.shape[0]
        m = np.empty((D, BLOCK))
        p = np.empty((D, BLOCK))
        e = np.empty((obs, BLOCK))
        w = np.empty(BLOCK)
        q = np.empty(BLOCK)
        for b0 in range(0, B, BLOCK):
            nb = min(BLOCK, B - b0)
            stop = 0
            for lane in range(nb):
                stop = max(stop, T if full else lengths[b0 + lane])
            for t in range(stop):
                k = t if t < n else n - 1
                for i in range(D):  # p = A m + B u_t (μ_0 at the first step)
                    if t == 0:
                        for lane in range(nb):
                            p[i, lane] = mu0[i]
                        continue
                    for lane in range(nb):
                        p[i, lane] = drive[b0 + lane, t - 1, i] if has_drive else 0.0
                    for j in range(D):
                        a = A[i, j]
                        for lane in range(nb):
                            p[i, lane] += a * m[j, lane]
                for i in range(obs):  # e = x_t − C p
                    for lane in range(nb):
                        e[i, lane] = x[b0 + lane, t, i]
                    for j in range(D):
                        c = C[i, j]
                        for lane in range(nb):
                            e[i, lane] -= c * p[j, lane]
                for lane in range(nb):
                    q[lane] = 0.0
                for i in range(obs):  # q = |L⁻¹ e|²
                    for lane in range(nb):
                        w[lane] = 0.0
                    for j in range(i + 1):
                        c = white[k, i, j]
                        for lane in range(nb):
                            w[lane] += c * e[j, lane]
                    for lane in range(nb):
                        q[lane] += w[lane] * w[lane]
                h = half_logdet[k]
                for lane in range(nb):
                    if t < lengths[b0 + lane]:
                        log_norm[b0 + lane, t] = -0.5 * q[lane] - h
                for i in range(D):  # m = p + K e
                    for lane in range(nb):
                        m[i, lane] = p[i, lane]
                    for j in range(obs):
                        g = gain[k, i, j]
                        for lane in range(nb):
                            m[i, lane] += g * e[j, lane]
                if full:
                    for i in range(D):
                        for lane in range(nb):
                            means[t, i, b0 + lane] = m[i, lane]
                            predicted[t, i, b0 + lane] = p[i, lane]

    @jit
    def smoother_means(J, means, predicted, lengths, out, offset):
        """The RTS smoother's means, backwards: m^s_t = J_t m^s_{t+1} + o_t with the offset
        o_t = m_t − J_t m_{t+1|t} while t + 1 is inside the sequence; o_t = m^s_t = m_t from its
        last step on (``J`` ``[n, D, D]``, the last repeated past n). Time first, the batch
        last: means, predicted and ``out`` ``[T, D, B]``, ``offset`` ``[T-1, D, B]``."""
        T, D, B = means.shape
        n = J.shape[0]
        o = np.empty(B)
        v = np.empty(B)
        for i in range(D):
            for b in range(B):
                out[T - 1, i, b] = means[T - 1, i, b]
        for t in range(T - 2, -1, -1):
            k = t if t < n else n - 1
            for i in range(D):
                for b in range(B):
                    o[b] = means[t, i, b]
                    v[b] = 0.0
                for j in range(D):
                    c = J[k, i, j]
                    for b in range(B):
                        o[b] -= c * predicted[t + 1, j, b]
                        v[b] += c * out[t + 1, j, b]
                for b in range(B):
                    inside = t + 1 < lengths[b]
                    offset[t, i, b] = o[b] if inside else means[t, i, b]
                    out[t, i, b] = o[b] + v[b] if inside else means[t, i, b]

    @jit
    def hmm_forward(pi, A, e, keep, alpha, c):
        """The scaled forward pass over e ``[T, K, B]`` (the emissions' probabilities, each step's
        largest 1): a_t = (α_{t-1} A) ⊙ e_t, c_t = Σ a_t, α_t = a_t / c_t; the normalizers into
        ``c`` ``[T, B]`` and, with ``keep``, α into ``alpha`` ``[T, K, B]``. The batch is the
        innermost loop, in blocks; no test inside it (the caller checks c > 0 and α's zeros)."""
        T, K, B = e.shape
        a = np.empty((K, BLOCK))
        prev = np.empty((K, BLOCK))
        total = np.empty(BLOCK)
        for b0 in range(0, B, BLOCK):
            nb = min(BLOCK, B - b0)
            for t in range(T):
                et = e[t]
                if t == 0:
                    for k in range(K):
                        for lane in range(nb):
                            a[k, lane] = pi[k] * et[k, b0 + lane]
                else:
                    for k in range(K):
                        for lane in range(nb):
                            a[k, lane] = 0.0
                    for i in range(K):
                        for k in range(K):
                            aik = A[i, k]
                            for lane in range(nb):
                                a[k, lane] += prev[i, lane] * aik
                    for k in range(K):
                        for lane in range(nb):
                            a[k, lane] *= et[k, b0 + lane]
                for lane in range(nb):
                    total[lane] = 0.0
                for k in range(K):
                    for lane in range(nb):
                        total[lane] += a[k, lane]
                ct = c[t]
                for lane in range(nb):
                    ct[b0 + lane] = total[lane]
                for k in range(K):
                    for lane in range(nb):
                        prev[k, lane] = a[k, lane] / total[lane]
                if keep:
                    at = alpha[t]
                    for k in range(K):
                        for lane in range(nb):
                            at[k, b0 + lane] = prev[k, lane]

    @jit
    def hmm_backward(A, e, c, alpha, lengths, gamma, tally):
        """The backward pass from the forward's α and normalizers (``[T, K, B]``, ``[T, B]``):
        w_t = (e_t / c_t) ⊙ β_t, β_{t-1} = A w_t (β = 1 at T); the smoothed marginals γ ∝ α ⊙ β
        into ``gamma`` ``[T, K, B]`` (1/K past each end) and Σ_t α_t(i) w_{t+1}(j) over the steps
        inside each sequence into ``tally`` ``[K, K, B]`` (the expected transitions are A ⊙ that).
        No test inside the loops: an overflowed ratio leaves non-finite marginals, which the
        caller checks."""
        T, K, B = e.shape
        beta = np.empty((K, BLOCK))
        w_next = np.empty((K, BLOCK))
        ws = np.empty((K, BLOCK))
        norm = np.empty(BLOCK)
        inside = np.empty(BLOCK)
        for i in range(K):
            for j in range(K):
                for b in range(B):
                    tally[i, j, b] = 0.0
        for b0 in range(0, B, BLOCK):
            nb = min(BLOCK, B - b0)
            for t in range(T - 1, -1, -1):
                at, et, gt, ct = alpha[t], e[t], gamma[t], c[t]
                if t == T - 1:
                    for k in range(K):
                        for lane in range(nb):
                            beta[k, lane] = 1.0
                else:
                    for lane in range(nb):
                        inside[lane] = 1.0 if t + 1 < lengths[b0 + lane] else 0.0
                    for j in range(K):
                        for lane in range(nb):
                            ws[j, lane] = w_next[j, lane] * inside[lane]
                    for i in range(K):
                        for lane in range(nb):
                            beta[i, lane] = 0.0
                        for j in range(K):
                            aij = A[i, j]
                            for lane in range(nb):
                                beta[i, lane] += aij * w_next[j, lane]
                        for j in range(K):
                            for lane in range(nb):
                                tally[i, j, b0 + lane] += at[i, b0 + lane] * ws[j, lane]
                for lane in range(nb):
                    norm[lane] = 0.0
                for k in range(K):
                    for lane in range(nb):
                        norm[lane] += at[k, b0 + lane] * beta[k, lane]
                for k in range(K):
                    for lane in range(nb):
                        w_next[k, lane] = et[k, b0 + lane] / ct[b0 + lane] * beta[k, lane]
                        inner = at[k, b0 + lane] * beta[k, lane] / norm[lane]
                        gt[k, b0 + lane] = inner if t < lengths[b0 + lane] else 1.0 / K

    @jit
    def hmm_forward_rows(pi, A, log_e, alpha, log_c, keep):
        """One sequence at a time (few sequences: no lanes to fill), the scaled forward
        pass: α_t ∝ (α_{t-1} A) ⊙ e_t with e_t = exp(log_e_t − max), the
        normalizers' logs plus the shifts into ``log_c`` ``[B, T]``; α ``[B, T, K]`` when ``keep``.
        Returns 0 where a normalizer underflowed to zero (the caller redoes the pass in log
        space), 2 where some filtered probability is zero, else 1."""
        B, T, K = log_e.shape
        a = np.empty(K)
        prev = np.empty(K)
        e = np.empty(K)
        ok = 1
        for b in range(B):
            for t in range(T):
                shift = log_e[b, t, 0]
                for k in range(1, K):
                    if log_e[b, t, k] > shift:
                        shift = log_e[b, t, k]
                for k in range(K):
                    e[k] = math.exp(log_e[b, t, k] - shift)
                if t == 0:
                    for k in range(K):
                        a[k] = pi[k] * e[k]
                else:
                    for k in range(K):
                        a[k] = 0.0
                    for i in range(K):
                        w = prev[i]
                        for k in range(K):
                            a[k] += w * A[i, k]
                    for k in range(K):
                        a[k] *= e[k]
                c = 0.0
                for k in range(K):
                    c += a[k]
                if not c > 0.0:
                    return 0
                for k in range(K):
                    prev[k] = a[k] / c
                    if keep:
                        alpha[b, t, k] = prev[k]
                    if prev[k] == 0.0:
                        ok = 2
                log_c[b, t] = math.log(c) + shift
        return ok

    @jit
    def hmm_backward_rows(A, log_e, alpha, log_c, lengths, gamma, counts):
        """The backward pass from the forward's α and log c: w_t = r_t ⊙ β_t with r_t =
        exp(log_e_t − log c_t), β_{t-1} = A w_t; the smoothed marginals γ ∝ α ⊙ β (1/K past each
        end) and the expected transitions Σ_t α_t(i) A_ij w_{t+1}(j) over the steps inside each
        sequence, ``[B, K, K]``. Returns False where a ratio overflowed (log space then)."""
        B, T, K = log_e.shape
        beta = np.empty(K)
        w = np.empty(K)
        w_next = np.empty(K)
        for b in range(B):
            for i in range(K):
                for j in range(K):
                    counts[b, i, j] = 0.0
            for t in range(T - 1, -1, -1):
                if t == T - 1:
                    for k in range(K):
                        beta[k] = 1.0
                else:
                    for i in range(K):
                        v = 0.0
                        for j in range(K):
                            v += A[i, j] * w_next[j]
                        beta[i] = v
                    if t + 1 < lengths[b]:
                        for i in range(K):
                            ai = alpha[b, t, i]
                            for j in range(K):
                                counts[b, i, j] += ai * A[i, j] * w_next[j]
                norm = 0.0
                for k in range(K):
                    w[k] = math.exp(log_e[b, t, k] - log_c[b, t]) * beta[k]
                    if not math.isfinite(w[k]):
                        return False
                    norm += alpha[b, t, k] * beta[k]
                if t < lengths[b]:
                    for k in range(K):
                        gamma[b, t, k] = alpha[b, t, k] * beta[k] / norm
                else:
                    for k in range(K):
                        gamma[b, t, k] = 1.0 / K
                for k in range(K):
                    w_next[k] = w[k]
        return True

    @jit
    def hmm_score_rows(pi, A, log_e, lengths, out):
        """log p(x) ``[B]`` by the scaled forward pass without its filtered distributions, up to
        each length. Returns False where a normalizer underflowed."""
        B, T, K = log_e.shape
        a = np.empty(K)
        prev = np.empty(K)
        for b in range(B):
            total = 0.0
            for t in range(lengths[b]):
                shift = log_e[b, t, 0]
                for k in range(1, K):
                    if log_e[b, t, k] > shift:
                        shift = log_e[b, t, k]
                if t == 0:
                    for k in range(K):
                        a[k] = pi[k] * math.exp(log_e[b, t, k] - shift)
                else:
                    for k in range(K):
                        a[k] = 0.0
                    for i in range(K):
                        w = prev[i]
                        for k in range(K):
                            a[k] += w * A[i, k]
                    for k in range(K):
                        a[k] *= math.exp(log_e[b, t, k] - shift)
                c = 0.0
                for k in range(K):
                    c += a[k]
                if not c > 0.0:
                    return False
                for k in range(K):
                    prev[k] = a[k] / c
                total += math.log(c) + shift
            out[b] = total
        return True

    return {"riccati": riccati, "filter_steps": filter_steps, "smoother_means": smoother_means,
            "hmm_forward": hmm_forward, "hmm_backward": hmm_backward, "hmm_forward_rows": hmm_forward_rows,
            "hmm_backward_rows": hmm_backward_rows, "hmm_score_rows": hmm_score_rows}  # fmt: skip


# The torch-facing wrappers. Each returns None where the compiled pass declines; the caller then
# runs its torch kernel.


def kalman_covariances(model, T: int) -> dict | None:
    """:func:`elbox.distributions.kalman.kalman_covariances` by the step-by-step recursion (the
    same dict: ``pred``, ``filt``, ``gain``, ``chol_s``, ``white`` ``[T, ·, ·]``, the settled
    tail as a broadcast view, and ``steps``), or None."""
    A, C, Q, R, P0 = (model.transition_matrix, model.observation_matrix, model.transition_covariance,
                      model.observation_covariance, model.initial_covariance)  # fmt: skip
    D, obs = A.shape[-1], C.shape[0]
    new = lambda *shape: torch.empty(T, *shape, dtype=A.dtype)  # noqa: E731
    pred, filt, gain, chol_s, white = new(D, D), new(D, D), new(D, obs), new(obs, obs), new(obs, obs)
    tol = 100 * torch.finfo(A.dtype).eps
    steps = _kernels()["riccati"](_np(A), _np(C), _np(Q), _np(R), _np(P0), T, bool(model.steady_state), tol,
                                  *(_np(v) for v in (pred, filt, gain, chol_s, white)))  # fmt: skip
    if steps < 0:
        return None
    out = {"pred": pred, "filt": filt, "gain": gain, "chol_s": chol_s, "white": white}
    if steps < T:
        out = {key: torch.cat([v[:steps], v[steps - 1].expand(T - steps, *v.shape[1:])]) for key, v in out.items()}
    out["steps"] = steps
    return out


def half_logdet(cov: dict) -> Tensor:
    """½ log det S_t + (obs / 2) log 2π of each computed step, ``[steps]``."""
    L_s = cov["chol_s"][: cov["steps"]]
    return L_s.diagonal(dim1=-2, dim2=-1).log().sum(-1) + 0.5 * L_s.shape[-1] * math.log(2 * math.pi)


def kalman_steps(model, cov: dict, values: Tensor, mask: Tensor, drive: Tensor | None, full: bool):
    """The means' pass of the Kalman filter with the shared covariances ``cov``: log p(x_t | x_{<t})
    ``[B, T]`` (zero past each end) and, with ``full``, the filtered and predicted means
    ``[B, T, D]`` (views of ``[T, D, B]`` memory)."""
    B, T, _ = values.shape
    D = model.transition_matrix.shape[-1]
    n = cov["steps"]
    lengths = mask.sum(-1).to(torch.int64)
    log_norm = values.new_zeros(B, T)
    means, predicted = values.new_empty(T if full else 0, D, B), values.new_empty(T if full else 0, D, B)
    has_drive = drive is not None
    drive = drive.contiguous() if has_drive else values.new_zeros(0, 0, 0)
    _kernels()["filter_steps"](_np(model.transition_matrix), _np(model.observation_matrix),
                               _np(cov["gain"][:n].contiguous()), _np(cov["white"][:n].contiguous()),
                               _np(half_logdet(cov)), _np(model.initial_loc), _np(values.contiguous()),
                               lengths.numpy(), _np(drive), has_drive, full, _np(means), _np(predicted),
                               _np(log_norm))  # fmt: skip
    return log_norm, means.permute(2, 0, 1), predicted.permute(2, 0, 1)


def smoother_means(J: Tensor, means: Tensor, predicted: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """The RTS smoother's means ``[B, T, D]`` and its reverse chain's offsets ``[B, T-1, D]`` from the
    filter's means ``[B, T, D]``, with the gains ``J`` ``[n, D, D]`` (the last repeated past n);
    views of ``[T, D, B]`` memory."""
    B, T, D = means.shape
    out, offset = means.new_empty(T, D, B), means.new_empty(T - 1, D, B)
    lengths = mask.sum(-1).to(torch.int64)
    batch_last = lambda v: v.permute(1, 2, 0).contiguous()  # noqa: E731  (free for the filter's own output)
    _kernels()["smoother_means"](_np(J.contiguous()), _np(batch_last(means)), _np(batch_last(predicted)),
                                 lengths.numpy(), _np(out), _np(offset))  # fmt: skip
    return out.permute(2, 0, 1), offset.permute(2, 0, 1)


def by_lanes(B: int) -> bool:
    """The HMM passes' rule: a batch of at least ``LANES`` sequences runs with the sequences as the
    vectorized inner loop (a step of all K states for a block of sequences at once); fewer run one
    sequence at a time, whose loops over the K states are the inner ones (measured here, K = 8:
    one sequence of 100,000 steps takes ~10× longer by lanes; 200 sequences of 500 ~2× longer
    one by one)."""
    return B >= LANES


LANES = 16


def _scaled_emissions(log_e: Tensor) -> tuple[Tensor, Tensor]:
    """e = exp(log_e − max_k log_e) as ``[T, K, B]`` (each step's largest entry 1) and the shifts ``[B, T]``."""
    shift = log_e.amax(-1, keepdim=True)  # [B, T, 1]
    return (log_e - shift).exp_().permute(1, 2, 0).contiguous(), shift.squeeze(-1)


def hmm_forward(initial_logits: Tensor, transition_logits: Tensor, log_e: Tensor, positive: bool = False,
                keep: bool = True):  # fmt: skip
    """Filtered p(z_t | x_{1:t}) ``[B, T, K]`` (None without ``keep``) and log p(x_t | x_{<t})
    ``[B, T]``, or None where a normalizer underflowed (with ``positive``, also where a filtered
    probability is zero)."""
    B, T, K = log_e.shape
    if not by_lanes(B):
        pi, A = _np(initial_logits.softmax(-1)), _np(transition_logits.softmax(-1))
        alpha, log_c = log_e.new_empty((B, T, K) if keep else (0, 0, 0)), log_e.new_empty(B, T)
        status = _kernels()["hmm_forward_rows"](pi, A, _np(log_e.contiguous()), _np(alpha), _np(log_c), keep)
        return None if status == 0 or (status == 2 and positive) else ((alpha if keep else None), log_c)
    lanes = _forward_lanes(initial_logits, transition_logits, log_e, positive, keep)
    if lanes is None:
        return None
    alpha, c, _, shift = lanes
    return (alpha.permute(2, 0, 1) if keep else None), c.log().T + shift


def _forward_lanes(initial_logits: Tensor, transition_logits: Tensor, log_e: Tensor, positive: bool, keep: bool):
    """The forward pass by lanes: α ``[T, K, B]``, the normalizers ``[T, B]``, the scaled emissions
    ``[T, K, B]`` and their shifts ``[B, T]``; or None (underflow, or a zero α with ``positive``)."""
    B, T, K = log_e.shape
    e, shift = _scaled_emissions(log_e)
    alpha, c = log_e.new_empty((T, K, B) if keep else (0, 0, 0)), log_e.new_empty(T, B)
    _kernels()["hmm_forward"](_np(initial_logits.softmax(-1)), _np(transition_logits.softmax(-1)), _np(e), keep,
                              _np(alpha), _np(c))  # fmt: skip
    if not bool(c.amin() > 0) or (positive and not bool(alpha.amin() > 0)):  # underflow (NaN fails too)
        return None
    return alpha, c, e, shift


def hmm_forward_backward(initial_logits: Tensor, transition_logits: Tensor, log_e: Tensor, mask: Tensor,
                         positive: bool = True):  # fmt: skip
    """(α, γ, expected transitions ``[B, K, K]``, log c) of the scaled forward–backward pass (α and
    γ ``[B, T, K]``), or None (with ``positive``, also where a filtered probability is zero)."""
    B, T, K = log_e.shape
    A = _np(transition_logits.softmax(-1))
    lengths = mask.sum(-1).to(torch.int64).numpy()
    if not by_lanes(B):
        forward = hmm_forward(initial_logits, transition_logits, log_e, positive=positive)
        if forward is None:
            return None
        alpha, log_c = forward
        gamma, counts = log_e.new_empty(B, T, K), log_e.new_empty(B, K, K)
        ok = _kernels()["hmm_backward_rows"](A, _np(log_e.contiguous()), _np(alpha), _np(log_c), lengths, _np(gamma),
                                             _np(counts))  # fmt: skip
        return (alpha, gamma, counts, log_c) if ok else None
    lanes = _forward_lanes(initial_logits, transition_logits, log_e, positive, True)
    if lanes is None:
        return None
    alpha, c, e, shift = lanes
    gamma, tally = log_e.new_empty(T, K, B), log_e.new_empty(K, K, B)
    _kernels()["hmm_backward"](A, _np(e), _np(c), _np(alpha), lengths, _np(gamma), _np(tally))
    if not bool(torch.isfinite(gamma.sum())):  # a ratio overflowed (inf or NaN in the marginals)
        return None
    counts = tally.permute(2, 0, 1) * transition_logits.softmax(-1)  # α_t(i) A_ij w_{t+1}(j), summed
    return alpha.permute(2, 0, 1), gamma.permute(2, 0, 1), counts, c.log().T + shift


def hmm_log_evidence(initial_logits: Tensor, transition_logits: Tensor, log_e: Tensor) -> Tensor | None:
    """log p(x) ``[B]`` over all T steps (the padding's emissions are the caller's: zero log-densities
    there add nothing), or None."""
    B, T, _ = log_e.shape
    if not by_lanes(B):
        out = log_e.new_empty(B)
        lengths = torch.full((B,), T, dtype=torch.int64).numpy()
        ok = _kernels()["hmm_score_rows"](_np(initial_logits.softmax(-1)), _np(transition_logits.softmax(-1)),
                                          _np(log_e.contiguous()), lengths, _np(out))  # fmt: skip
        return out if ok else None
    lanes = _forward_lanes(initial_logits, transition_logits, log_e, False, False)
    return None if lanes is None else lanes[1].log().sum(0) + lanes[3].sum(-1)
