"""The numba kernels of :mod:`elbox.distributions._compiled`, at module level (imported on first
use, which compiles or loads them: a kernel that calls another must find it as a global, not in a
closure, for numba's on-disk cache to recognize it in the next process)."""

import math

import numpy as np
from numba import njit, prange

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


# the lanes' kernels may contract a product and a sum into one fused multiply–add (rounding
# at the last bit, as a BLAS does; tests/test_compiled.py holds them to the torch kernels)
pjit = njit(cache=True, nogil=True, parallel=True, fastmath={"contract"})
vjit = njit(cache=True, nogil=True, fastmath={"contract"})


@vjit
def scaled_exp(le, nb, shift, e, low, high):
    """e[k, l] = exp(le[k, l] − shift[l]) for a block of lanes, vectorized: numba's ``math.exp``
    is a scalar call (the pip llvmlite has no vector math library), so the exponential is
    written out: n = round(d / ln 2), r = d − n ln 2 (Cody–Waite, |r| ≤ ln 2 / 2), eʳ by the
    polynomial of degree 11 interpolating it at the Chebyshev nodes of that interval (relative
    error 1.7e-17, computed in 40-digit arithmetic), times 2ⁿ built in the exponent bits of
    ``low`` and ``high`` (2^⌊n/2⌋ and 2^⌈n/2⌉, so that subnormal results come out too).
    Within 2 ulp of libm's (tests/test_compiled.py); −∞ gives 0, NaN stays NaN."""
    K = e.shape[0]
    for k in range(K):
        for lane in range(nb):
            d = le[k, lane] - shift[lane]
            d = d if not d < -750.0 else -750.0  # below, e^d is 0 (NaN passes the test)
            n = (d * 1.4426950408889634 + 6755399441055744.0) - 6755399441055744.0  # round(d / ln 2)
            r = (d - n * 6.93147180369123816490e-01) - n * 1.90821492927058770002e-10
            p = 2.5110037605963777e-08
            p = p * r + 2.763263963904103e-07
            p = p * r + 2.755724091857897e-06
            p = p * r + 2.4801485482328494e-05
            p = p * r + 0.00019841269890047113
            p = p * r + 0.0013888888952314775
            p = p * r + 0.008333333333319601
            p = p * r + 0.0416666666664881
            p = p * r + 0.1666666666666668
            p = p * r + 0.5000000000000019
            p = p * r + 1.0
            e[k, lane] = p * r + 1.0
            half = np.int64(n) >> 1
            low[k, lane] = (half + 1023) << 52
            high[k, lane] = (np.int64(n) - half + 1023) << 52
    low_f, high_f = low.view(np.float64), high.view(np.float64)
    for k in range(K):
        for lane in range(nb):
            e[k, lane] = e[k, lane] * low_f[k, lane] * high_f[k, lane]


@vjit
def linear_emissions(x, centre, rows, cols, W, t, b0, nb, xs, f, le):
    """log p(x_t | k) for a block of lanes from the frames ``x`` ``[D, T, B]`` less ``centre``:
    Σ_f W[f, k] φ_f with φ = (1, x_c, x_c[rows] ⊙ x_c[cols]), the Gaussian's moment features
    (:meth:`elbox.models.GaussianMixture._weights`), into ``le`` ``[K, block]``."""
    D, K, M = x.shape[0], W.shape[1], rows.shape[0]
    for k in range(K):
        w = W[0, k]
        for lane in range(nb):
            le[k, lane] = w
    for d in range(D):
        v = centre[d]
        for lane in range(nb):
            xs[d, lane] = x[d, t, b0 + lane] - v
        for k in range(K):
            w = W[1 + d, k]
            for lane in range(nb):
                le[k, lane] += w * xs[d, lane]
    for m in range(M):
        r, q = rows[m], cols[m]
        for lane in range(nb):
            f[lane] = xs[r, lane] * xs[q, lane]
        for k in range(K):
            w = W[1 + D + m, k]
            for lane in range(nb):
                le[k, lane] += w * f[lane]


@vjit
def predict(prev, A, nb, out):
    """The predicted state probabilities of a block of lanes, out = prev A: out[k, l] =
    Σ_i prev[i, l] A[i, k] (``[K, block]``)."""
    K = A.shape[0]
    for k in range(K):
        for lane in range(nb):
            out[k, lane] = 0.0
    for i in range(K):
        for k in range(K):
            aik = A[i, k]
            for lane in range(nb):
                out[k, lane] += prev[i, lane] * aik


@vjit
def forward_block(j, pi, A, log_e, x, centre, rows, cols, W, linear, block, keep, alpha, c, shift, smallest):
    """The scaled forward pass over the ``j``-th block of ``block`` sequences, the sequences as
    the vectorized inner loop: e_t = exp(log e_t − max_k), a_t = (α_{t-1} A) ⊙ e_t,
    c_t = Σ a_t, α_t = a_t / c_t. The log-emissions are read from ``log_e`` ``[K, T, B]`` (the
    batch innermost), or, with ``linear``, computed in the block from the frames ``x``
    ``[D, T, B]``, their ``centre`` and the weights ``W`` (:func:`linear_emissions`). The
    normalizers into ``c`` and the shifts into ``shift`` (both ``[T, B]``), each sequence's
    smallest filtered probability into ``smallest`` ``[B]``; with ``keep``, α into ``alpha``
    ``[K, T, B]``. No test inside the loops (the caller checks c > 0, which NaN fails, and
    α's zeros)."""
    K = A.shape[0]
    T, B = (x.shape[1], x.shape[2]) if linear else (log_e.shape[1], log_e.shape[2])
    b0 = j * block
    nb = min(block, B - b0)
    a = np.empty((K, block))
    prev = np.empty((K, block))
    le = np.empty((K, block))
    e = np.empty((K, block))
    low = np.empty((K, block), np.int64)
    high = np.empty((K, block), np.int64)
    xs = np.empty((x.shape[0], block))
    f = np.empty(block)
    m = np.empty(block)
    total = np.empty(block)
    low_p = np.ones(block)
    for t in range(T):
        if linear:
            linear_emissions(x, centre, rows, cols, W, t, b0, nb, xs, f, le)
        else:
            for k in range(K):
                for lane in range(nb):
                    le[k, lane] = log_e[k, t, b0 + lane]
        for lane in range(nb):
            m[lane] = le[0, lane]
        for k in range(1, K):
            for lane in range(nb):
                v = le[k, lane]
                m[lane] = v if v > m[lane] else m[lane]
        scaled_exp(le, nb, m, e, low, high)
        if t == 0:
            for k in range(K):
                for lane in range(nb):
                    a[k, lane] = pi[k] * e[k, lane]
        else:
            predict(prev, A, nb, a)
            for k in range(K):
                for lane in range(nb):
                    a[k, lane] *= e[k, lane]
        for lane in range(nb):
            total[lane] = 0.0
        for k in range(K):
            for lane in range(nb):
                total[lane] += a[k, lane]
        for lane in range(nb):
            c[t, b0 + lane] = total[lane]
            shift[t, b0 + lane] = m[lane]
            total[lane] = 1.0 / total[lane]  # one division, K products
        for k in range(K):
            for lane in range(nb):
                v = a[k, lane] * total[lane]
                prev[k, lane] = v
                low_p[lane] = v if v < low_p[lane] else low_p[lane]
        if keep:
            for k in range(K):
                for lane in range(nb):
                    alpha[k, t, b0 + lane] = prev[k, lane]
    for lane in range(nb):
        smallest[b0 + lane] = low_p[lane]


@vjit
def backward_block(j, A, alpha, lengths, block, gamma, tally, check):
    """The backward pass over the ``j``-th block from the forward's α ``[K, T, B]`` alone:
    w_t = (e_t / c_t) ⊙ β_t, β_{t-1} = A w_t (β = 1 at T), with e_t / c_t = α_t / p_t for the
    predicted p_t = α_{t-1} A (π at t = 0), since α_t = p_t ⊙ e_t / c_t: no emission is read or
    computed again, and where p_t(k) = 0 so is α_t(k), whose w then counts for nothing (it is
    set to 0). The smoothed marginals γ ∝ α ⊙ β into ``gamma`` ``[K, T, B]`` (1/K past each
    end) and Σ_t α_t(i) w_{t+1}(j) over the steps inside each sequence into ``tally``
    ``[K, K, B]`` (the expected transitions are A ⊙ that). Each step's α is copied once into
    the block's scratch (reading it in place in the inner loops is 1.7× slower here). No test
    inside the loops: an overflowed ratio makes some normalizer Σ α β infinite, NaN or zero,
    and ``check`` ``[B]`` (Σ_t of each and of its inverse) then not finite, which the caller
    tests."""
    K, T, B = alpha.shape
    b0 = j * block
    nb = min(block, B - b0)
    beta = np.empty((K, block))
    w_next = np.empty((K, block))
    ws = np.empty((K, block))
    p = np.empty((K, block))
    cur = np.empty((K, block))
    prv = np.empty((K, block))
    norm = np.empty(block)
    inside = np.empty(block)
    sums = np.zeros(block)
    acc = np.zeros((K, K, block))
    for k in range(K):
        for lane in range(nb):
            cur[k, lane] = alpha[k, T - 1, b0 + lane]
    for t in range(T - 1, -1, -1):
        if t == T - 1:
            for k in range(K):
                for lane in range(nb):
                    beta[k, lane] = 1.0
        else:
            for lane in range(nb):
                inside[lane] = 1.0 if t + 1 < lengths[b0 + lane] else 0.0
            for k in range(K):
                for lane in range(nb):
                    ws[k, lane] = w_next[k, lane] * inside[lane]
            for i in range(K):
                for lane in range(nb):
                    beta[i, lane] = 0.0
                for k in range(K):
                    aik = A[i, k]
                    for lane in range(nb):
                        beta[i, lane] += aik * w_next[k, lane]
                for k in range(K):
                    for lane in range(nb):
                        acc[i, k, lane] += cur[i, lane] * ws[k, lane]
        for lane in range(nb):
            norm[lane] = 0.0
        for k in range(K):
            for lane in range(nb):
                norm[lane] += cur[k, lane] * beta[k, lane]
        for lane in range(nb):
            sums[lane] += norm[lane]
            norm[lane] = 1.0 / norm[lane]
            sums[lane] += norm[lane]
        for k in range(K):
            for lane in range(nb):
                inner = cur[k, lane] * beta[k, lane] * norm[lane]
                gamma[k, t, b0 + lane] = inner if t < lengths[b0 + lane] else 1.0 / K
        if t > 0:
            for k in range(K):
                for lane in range(nb):
                    prv[k, lane] = alpha[k, t - 1, b0 + lane]
            predict(prv, A, nb, p)
            for k in range(K):
                for lane in range(nb):
                    ratio = cur[k, lane] / p[k, lane]
                    w_next[k, lane] = ratio * beta[k, lane] if p[k, lane] > 0.0 else 0.0
                    cur[k, lane] = prv[k, lane]
    for i in range(K):
        for k in range(K):
            for lane in range(nb):
                tally[i, k, b0 + lane] = acc[i, k, lane]
    for lane in range(nb):
        check[b0 + lane] = sums[lane]


@pjit
def hmm_forward(pi, A, log_e, x, centre, rows, cols, W, linear, block, keep, alpha, c, shift, smallest):
    """The forward pass (:func:`forward_block`), the blocks of ``block`` sequences in parallel."""
    B = x.shape[2] if linear else log_e.shape[2]
    for j in prange((B + block - 1) // block):
        forward_block(j, pi, A, log_e, x, centre, rows, cols, W, linear, block, keep, alpha, c, shift, smallest)


@pjit
def hmm_forward_backward(pi, A, log_e, x, centre, rows, cols, W, linear, lengths, block, alpha, c, shift,
                         smallest, gamma, tally, check):  # fmt: skip
    """Forward then backward (:func:`forward_block`, :func:`backward_block`) for each block of
    ``block`` sequences, the blocks in parallel: one parallel region, and each block's α is
    read back while it is still in the cache."""
    B = x.shape[2] if linear else log_e.shape[2]
    for j in prange((B + block - 1) // block):
        forward_block(j, pi, A, log_e, x, centre, rows, cols, W, linear, block, True, alpha, c, shift, smallest)
        backward_block(j, A, alpha, lengths, block, gamma, tally, check)


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


KERNELS = {"riccati": riccati, "filter_steps": filter_steps, "smoother_means": smoother_means,
        "hmm_forward": hmm_forward, "hmm_forward_backward": hmm_forward_backward, "hmm_forward_rows": hmm_forward_rows,
        "hmm_backward_rows": hmm_backward_rows, "hmm_score_rows": hmm_score_rows}  # fmt: skip
