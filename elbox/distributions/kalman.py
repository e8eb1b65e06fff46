"""The exact kernels of linear-Gaussian state-space models, as plain functions: the Kalman
filter (covariances by a recursion that stops at its steady state or finishes by a parallel
Riccati scan; means by an affine scan), and the Rauch–Tung–Striebel smoother.

:class:`~elbox.models.LinearGaussianSSM` calls them, and so can any model whose latent dynamics
are linear-Gaussian given its parameters: nothing here holds state.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from elbox.distributions import _compiled
from elbox.distributions._gaussian import safe_cholesky
from elbox.distributions.gauss_markov import affine_recurrence, congruence_recurrence, recurrence_chunk

__all__ = [
    "KalmanFilter",
    "LinearGaussian",
    "RTSSmoother",
    "diffuse_log_likelihood",
    "kalman_covariances",
    "kalman_filter",
    "kalman_log_norm",
    "kalman_update",
    "masked_covariances",
    "masked_kalman_filter",
    "masked_observation",
    "masked_rts_smoother",
    "masked_scan_pays",
    "rts_smoother",
]

PD_HINT = "Raise reg_covar, or check the data's scale."


class LinearGaussian(NamedTuple):
    r"""The parameters of z_1 ~ N(μ_0, P_0), z_t = A z_{t-1} + B u_t + w_t, w_t ~ N(0, Q),
    x_t = C z_t + v_t, v_t ~ N(0, R); the inputs' drive B u_t is passed to the filter apart."""

    transition_matrix: Tensor  # A [D, D]
    observation_matrix: Tensor  # C [obs, D]
    transition_covariance: Tensor  # Q [D, D]
    observation_covariance: Tensor  # R [obs, obs]
    initial_loc: Tensor  # μ_0 [D]
    initial_covariance: Tensor  # P_0 [D, D]
    steady_state: bool = True  # stop the covariance recursion once it has settled


class KalmanFilter(NamedTuple):
    """The filter's output: ``covariances`` (a dict of predicted ``pred`` and filtered ``filt``
    covariances ``[T, D, D]``, gains ``gain`` ``[T, D, obs]``, chol(S_t) ``chol_s`` ``[T, obs, obs]``
    and ``steps``, how many steps ran before the steady state), filtered ``means`` and
    ``predicted`` means ``[B, T, D]``, and ``log_norm``, log p(x_t | x_{<t}) ``[B, T]`` (zero past
    each sequence's end), whose sum over t is log p(x)."""

    covariances: dict
    means: Tensor
    predicted: Tensor
    log_norm: Tensor


class RTSSmoother(NamedTuple):
    """The smoother's output: smoothed means ``[B, T, D]``, covariances ``[b, T, D, D]`` and
    cross-covariances Cov(z_t, z_{t+1} | x) ``[b, T-1, D, D]`` (b is 1 for a batch of equal
    lengths); the posterior as a reverse chain z_t | z_{t+1} ~ N(J_t z_{t+1} + offset_t, cond_t)
    with the gains ``J`` ``[b, T-1, D, D]`` (zero past each end); ``keep`` ``[b, T-1, 1, 1]``, whether
    the step into t+1 is observed."""

    means: Tensor
    covariances: Tensor
    cross: Tensor
    gains: Tensor
    offset: Tensor
    cond: Tensor
    keep: Tensor


def kalman_update(P_pred: Tensor, C: Tensor, R: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The measurement update of predicted covariances ``[*, D, D]``: chol(S), the gain and the
    filtered covariance (Joseph form: it stays symmetric positive definite)."""
    S = C @ P_pred @ C.mT + R
    L_s = safe_cholesky(S, "the innovation covariance C P Cᵀ + R", PD_HINT)
    gain = torch.cholesky_solve(C @ P_pred, L_s).mT  # P Cᵀ S⁻¹, [*, D, obs]
    I_KC = torch.eye(P_pred.shape[-1], dtype=P_pred.dtype, device=P_pred.device) - gain @ C
    return L_s, gain, I_KC @ P_pred @ I_KC.mT + gain @ R @ gain.mT


def kalman_covariances(model: LinearGaussian, T: int) -> dict:
    r"""The data-free half of the filter, shared by every sequence: predicted and filtered
    covariances ``[T, D, D]``, gains ``[T, D, obs]`` and chol(S_t) ``[T, obs, obs]``.

    The filtered covariances by doubling (the Riccati recursion's elements of Särkkä &
    García-Fernández, :func:`riccati_element`): a step of the filter is one element e, the same
    at every step of a time-invariant model; with P_0, …, P_{m-1} in hand and e^m, the power
    of m steps, one batched application gives P_m, …, P_{2m-1}, and e^{2m} = e^m ∘ e^m. So
    log₂ T rounds of batched D × D solves (2T applications in all) instead of T steps of
    Python, on settled and never-settling models alike.

    Once the predicted covariance stops changing, every later step repeats the last one, so
    the doubling stops there and the rest is a broadcast view. "Stops changing" is measured
    in the covariance's own metric: ‖L⁻¹ (P_{t+1} − P_t) L⁻ᵀ‖_F ≤ 100 ε with L = chol(P_t),
    the change whitened by P_t. That is the same number whatever the units (or any linear
    change of coordinates) of the state, so a small, slowly settling block is not frozen
    while a large one has settled. ``steady_state=False`` computes every step.

    References:
        Temporal Parallelization of Bayesian Smoothers (Särkkä & García-Fernández, 2021),
        https://arxiv.org/abs/1905.13002
    """
    A, C, Q, R = model.transition_matrix, model.observation_matrix, model.transition_covariance, \
        model.observation_covariance  # fmt: skip
    P0 = model.initial_covariance
    if _compiled.use_compiled(A, C, Q, R, P0):  # no gradient wanted: the recursion step by step, compiled
        out = _compiled.kalman_covariances(model, T)
        if out is not None:
            return out
    tol = 100 * torch.finfo(A.dtype).eps
    head = [kalman_update(P0, C, R)[2]]  # P_{0|0}
    # An approximately diffuse start (P_0 far above Q) costs the doubling's (I + P J)⁻¹ about as
    # many digits as P_0 / Q has: its first D steps, while the data resolve the observable
    # directions, run one at a time (the Joseph update), and the doubling starts from there.
    for _ in range(1, min(T, A.shape[-1]) if _diffuse_start(P0, Q) else 1):
        head.append(kalman_update(A @ head[-1] @ A.T + Q, C, R)[2])
    base = len(head) - 1  # the doubling's first step
    filt = head[-1].unsqueeze(0)  # [1, D, D]
    power = riccati_element(model) if T > base + 1 else None  # e^m, m = len(filt)
    steps = T - base
    while len(filt) < T - base:
        m = len(filt)
        filt = torch.cat([filt, riccati_apply(power, filt[: min(m, T - base - m)])])  # P_{m+k|m+k} = e^m(P_{k|k})
        if model.steady_state and _settled_by(filt, model, tol):
            steps = _first_settled(filt, model, tol, m)
            filt = filt[:steps]
            break
        if len(filt) < T - base:
            power = riccati_compose(power, power)
    if base:
        filt = torch.cat([torch.stack(head[:-1]), filt])
        steps += base
    filt = 0.5 * (filt + filt.mT)
    pred = torch.cat([P0.unsqueeze(0), A @ filt[:-1] @ A.T + Q])  # [steps, D, D]
    CP = C @ pred  # [steps, obs, D]
    L_s = safe_cholesky(CP @ C.T + R, "the innovation covariance C P Cᵀ + R", PD_HINT)
    white = tril_inverse(L_s)  # L⁻¹, [steps, obs, obs]
    gain = (white @ CP).mT @ white  # P Cᵀ S⁻¹ = (L⁻¹ C P)ᵀ L⁻¹
    out = {"pred": pred, "filt": filt, "gain": gain, "chol_s": L_s, "white": white}
    steady = T - steps
    if steady:
        out = {key: torch.cat([v, v[-1].expand(steady, *v.shape[1:])]) for key, v in out.items()}
    out["steps"] = steps  # how many steps ran before the steady state
    return out


def _diffuse_start(P0: Tensor, Q: Tensor) -> bool:
    """Whether P_0 is approximately diffuse: its largest variance 10⁴ times Q's (or more)."""
    return bool(P0.diagonal().max() > 1e4 * Q.diagonal().max())


def _predicted(filt: Tensor, model: LinearGaussian) -> Tensor:
    return model.transition_matrix @ filt @ model.transition_matrix.T + model.transition_covariance


def _settled_by(filt: Tensor, model: LinearGaussian, tol: float) -> bool:
    """Whether the last two predicted covariances after ``filt`` have settled."""
    pred = _predicted(filt[-2:], model)
    return settled(pred[0], pred[1], tol)


def _first_settled(filt: Tensor, model: LinearGaussian, tol: float, m: int) -> int:
    """How many steps to keep: t + 1 for the first t ≥ 1 whose P_{t|t-1} and P_{t+1|t} have
    settled, among the pairs that ``filt`` (filtered covariances, its last doubling from step m)
    newly decides."""
    lo = max(m - 1, 0)  # pair t = (P_{t|t-1}, P_{t+1|t}): P_{t+1|t} needs filt[t]
    pred = _predicted(filt[max(lo - 1, 0) :], model)  # P_{t+1|t} from filt[t]
    if lo == 0:
        pred = torch.cat([model.initial_covariance.unsqueeze(0), pred])  # P_{0|-1}: P_0
    calm = settled_steps(pred[:-1], pred[1:], tol)  # pair i is t = lo + i
    if lo == 0:
        calm[0] = False  # the first pair never counts (the recursion checks from t = 1)
    return lo + int(calm.nonzero()[0]) + 1 if bool(calm.any()) else len(filt)


def tril_inverse(L: Tensor) -> Tensor:
    """The inverse of lower-triangular matrices ``[*, k, k]`` by forward substitution, a row at a
    time over the whole batch (k small: the observations' size): k steps of batched products
    instead of a LAPACK call per matrix."""
    k = L.shape[-1]
    eye = torch.eye(k, dtype=L.dtype, device=L.device)
    rows = []
    for i in range(k):
        row = (
            eye[i] - (L[..., i : i + 1, :i] @ torch.stack(rows, -2)).squeeze(-2)
            if i
            else eye[i].expand(*L.shape[:-2], k)
        )
        rows.append(row / L[..., i, i, None])
    return torch.stack(rows, -2)


def riccati_element(model: LinearGaussian) -> tuple[Tensor, Tensor, Tensor]:
    r"""The element (A_e, C_e, J_e) of one filter step from a filtered covariance to the next,
    the same at every step of a time-invariant model (Särkkä & García-Fernández 2021). Elements
    compose associatively (:func:`riccati_compose`),

    .. math:: A_{ij} = A_j (I + C_i J_j)^{-1} A_i, \quad
              C_{ij} = A_j (I + C_i J_j)^{-1} C_i A_j^\top + C_j, \quad
              J_{ij} = A_i^\top (I + J_j C_i)^{-1} J_j A_i + J_i,

    and the C of the first k composed is the k-th filtered covariance.

    References:
        Temporal Parallelization of Bayesian Smoothers (Särkkä & García-Fernández, 2021),
        https://arxiv.org/abs/1905.13002
    """
    A, C, Q, R = model.transition_matrix, model.observation_matrix, model.transition_covariance, \
        model.observation_covariance  # fmt: skip
    eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    L_q, gain_q, C_e = kalman_update(Q, C, R)  # from the previous filtered state: predicted Q around A m
    A_e = (eye - gain_q @ C) @ A
    J_e = A.T @ C.T @ torch.cholesky_solve(C, L_q) @ A  # Aᵀ Cᵀ S⁻¹ C A, S = C Q Cᵀ + R
    return A_e, C_e, 0.5 * (J_e + J_e.mT)


def riccati_compose(first: tuple, then: tuple) -> tuple[Tensor, Tensor, Tensor]:
    """The element of ``first`` followed by ``then`` (each (A, C, J), batched alike)."""
    Ai, Ci, Ji = first
    Aj, Cj, Jj = then
    D = Ai.shape[-1]
    eye = torch.eye(D, dtype=Ai.dtype, device=Ai.device)
    inv = torch.linalg.inv(eye + Ci @ Jj)  # (I + C_i J_j)⁻¹; its transpose is (I + J_j C_i)⁻¹
    X = inv @ torch.cat([Ai, Ci @ Aj.mT], -1)  # (I + C_i J_j)⁻¹ [A_i, C_i A_jᵀ]
    Y = inv.mT @ (Jj @ Ai)  # (I + J_j C_i)⁻¹ J_j A_i
    C_new = Aj @ X[..., D:] + Cj
    J_new = Ai.mT @ Y + Ji
    return Aj @ X[..., :D], 0.5 * (C_new + C_new.mT), 0.5 * (J_new + J_new.mT)


def riccati_apply(element: tuple, P: Tensor) -> Tensor:
    """The filtered covariance after ``element``'s steps from filtered covariances ``P``
    ``[n, D, D]``: the C of (0, P, 0) followed by (A, C, J), A (I + P J)⁻¹ P Aᵀ + C."""
    A, C, J = element
    eye = torch.eye(P.shape[-1], dtype=P.dtype, device=P.device)
    return A @ torch.linalg.solve(eye + P @ J, P) @ A.mT + C  # (symmetrized by the caller)


def settled_steps(P: Tensor, P_next: Tensor, tol: float) -> Tensor:
    """:func:`settled` for each pair of ``[n, D, D]``: a bool ``[n]`` (false where P is not
    positive definite)."""
    L, info = torch.linalg.cholesky_ex(P)
    half = torch.linalg.solve_triangular(L, P_next - P, upper=False)
    white = torch.linalg.solve_triangular(L, half.mT, upper=False)
    return (torch.linalg.matrix_norm(white) <= tol) & (info == 0)


def kalman_filter(model: LinearGaussian, values: Tensor, mask: Tensor, drive: Tensor | None = None) -> KalmanFilter:
    """The Kalman filter over a padded batch: observations ``values`` ``[B, T, obs]`` (zero past
    each end), ``mask`` ``[B, T]`` (a prefix of each row), and the inputs' drive B u_t into z_t for
    t ≥ 2, ``[B, T-1, D]``, or None. The means are solved time first (:func:`affine_recurrence`,
    the shared matrices never copied per sequence) and returned as ``[B, T, D]`` views."""
    B, T = mask.shape
    cov = kalman_covariances(model, T)
    if _compiled.use_compiled(*model[:6], values, *([] if drive is None else [drive])):
        log_norm, means, predicted = _compiled.kalman_steps(model, cov, values, mask, drive, full=True)
        return KalmanFilter(cov, means, predicted, log_norm)
    A, C = model.transition_matrix, model.observation_matrix
    D = A.shape[-1]
    gain = cov["gain"]  # [T, D, obs]
    I_KC = torch.eye(D, dtype=A.dtype, device=A.device) - gain @ C  # [T, D, D]
    x = values.transpose(0, 1)  # [T, B, obs]
    # m_t = (I − K_t C)(A m_{t-1} + o_t) + K_t x_t, o_1 = μ_0, o_t = B u_t: an affine recurrence.
    g = torch.bmm(x, gain.mT)  # [T, B, D]
    first = g[:1] + model.initial_loc @ I_KC[0].T
    if drive is not None:
        offset = drive.transpose(0, 1)  # [T-1, B, D]
        g = torch.cat([first, torch.baddbmm(g[1:], offset, I_KC[1:].mT)])
        predicted = torch.cat([model.initial_loc.expand(1, B, D), offset], 0)  # o_t, completed below
    else:
        g = torch.cat([first, g[1:]])
        predicted = None
    means = affine_recurrence(I_KC @ A, g)  # [T, B, D]
    carried = means[:-1] @ A.T  # A m_{t-1}, [T-1, B, D]
    carried = carried if predicted is None else carried + predicted[1:]  # + B u_t
    predicted = torch.cat([model.initial_loc.expand(1, B, D), carried])
    innovation = x - predicted @ C.T  # [T, B, obs]
    w = torch.bmm(innovation, cov["white"].mT)  # L_t⁻¹ (x_t − C m_{t|t-1}), [T, B, obs]
    log_norm = _log_norm(w.square().sum(-1), cov, mask)
    return KalmanFilter(cov, means.transpose(0, 1), predicted.transpose(0, 1), log_norm)


def kalman_log_norm(model: LinearGaussian, values: Tensor, mask: Tensor, drive: Tensor | None = None) -> Tensor:
    r"""log p(x_t | x_{<t}) ``[B, T]`` (zero past each end) of :func:`kalman_filter`, without its
    means: each step's state and whitened innovation come out of one product,

    .. math:: [m_t,\ w_t] = [m_{t-1},\ x_t,\ o_t] \begin{bmatrix} ((I - K_t C) A)^\top & -(CA)^\top L_t^{-\top} \\
              K_t^\top & L_t^{-\top} \\ (I - K_t C)^\top & -C^\top L_t^{-\top} \end{bmatrix},

    run in chunks (:func:`_chunked_filter`) where no ``[B, T, D]`` array is ever formed: what the
    log-likelihood of a batch costs is reading the data twice.
    """
    B, T = mask.shape
    cov = kalman_covariances(model, T)
    if _compiled.use_compiled(*model[:6], values, *([] if drive is None else [drive])):
        return _compiled.kalman_steps(model, cov, values, mask, drive, full=False)[0]
    A, C = model.transition_matrix, model.observation_matrix
    D = A.shape[-1]
    gain, white = cov["gain"], cov["white"]  # [T, D, obs], [T, obs, obs]
    I_KC = torch.eye(D, dtype=A.dtype, device=A.device) - gain @ C  # [T, D, D]
    x = values.permute(1, 2, 0).contiguous()  # [T, obs, B]: time first, the batch as columns
    # step 1: the prior's mean μ_0 is the prediction
    e0 = x[0] - (C @ model.initial_loc).unsqueeze(-1)  # [obs, B]
    m0 = model.initial_loc.unsqueeze(-1) + gain[0] @ e0  # [D, B]
    q0 = (white[0] @ e0).square().sum(0)  # [B]
    if T == 1:
        return _log_norm(q0.unsqueeze(0), cov, mask)
    # [m_t; w_t] = [(I − K C) A; −L⁻¹ C A] m_{t-1} + [K; L⁻¹] x_t + [I − K C; −L⁻¹ C] o_t
    W = torch.cat([I_KC[1:] @ A, -(white[1:] @ C @ A)], -2)  # [T-1, D + obs, D]
    Wx = torch.cat([gain[1:], white[1:]], -2)  # [T-1, D + obs, obs]
    u = x[1:]
    if drive is not None:  # the drive joins the data as more inputs
        Wx = torch.cat([Wx, torch.cat([I_KC[1:], -(white[1:] @ C)], -2)], -1)
        u = torch.cat([u, drive.permute(1, 2, 0)], 1)  # [T-1, obs + D, B]
    q = _chunked_filter(W, Wx, u, m0)  # [T-1, B]
    return _log_norm(torch.cat([q0.unsqueeze(0), q]), cov, mask)


GRADIENT_LANES = 64  # from this batch on, autograd through the torch kernels (measured: bench/gradients.py)


def kalman_log_evidence(model: LinearGaussian, values: Tensor, mask: Tensor, drive: Tensor | None = None) -> Tensor:
    """log p(x) ``[B]``: :func:`kalman_log_norm` summed over time. Where a gradient is wanted and
    the compiled loops may run, below ``GRADIENT_LANES`` sequences, the compiled filter and
    smoother, with the gradient from Fisher's identity (:class:`_CompiledKalmanLogEvidence`): no
    step of it is Python. The rule, measured (bench/gradients.py, 2 cores): 1.9–2.3× autograd
    through the torch kernels for 16 × 200 steps and one never-settling sequence of 2,000, 1.1×
    for one of 100,000, but 0.9× for 256 × 2,000, where the torch filter's chunks without means
    and their autograd cost less than the compiled smoother's moments."""
    leaves = [*model[:6], values, *([] if drive is None else [drive])]
    wanted = _compiled.wants_gradient(*leaves)
    shapes = model.transition_matrix.dim() == 2 and model.initial_loc.dim() == 1
    if (wanted and shapes and values.shape[0] < GRADIENT_LANES and _compiled.use_compiled(*leaves, differentiable=True)
            and not _diffuse_start(model.initial_covariance, model.transition_covariance)
            and all(_well_conditioned(model[i]) for i in (2, 3, 5))):  # fmt: skip
        return _CompiledKalmanLogEvidence.apply(values, mask, drive, model.steady_state, *model[:6])
    return kalman_log_norm(model, values, mask, drive).sum(-1)


def _well_conditioned(cov: Tensor) -> bool:
    """Whether a covariance is safely positive definite (its Cholesky pivots above 10⁻⁴ of the
    largest standard deviation): Fisher's identity needs the complete-data density, which a
    singular Q, R or P_0 (a structural model's deterministic parts) does not have."""
    L, info = torch.linalg.cholesky_ex(cov.detach())
    if int(info) != 0:
        return False
    pivots = L.diagonal()
    return bool(pivots.min() > 1e-4 * cov.detach().diagonal().max().sqrt())


class _CompiledKalmanLogEvidence(torch.autograd.Function):
    r"""log p(x) ``[B]`` by the compiled Kalman filter, and its gradient by Fisher's identity,
    ∇ log p(x) = E_{p(z | x)}[∇ log p(x, z)]: the gradient, at the same parameters, of the expected
    complete-data log-likelihood under the smoothed posterior (the E-step's Q function), which
    depends on the data only through the smoothed moments' sums over time. Each sequence's term is
    weighted by the incoming gradient of its log p. That Q is written in torch and differentiated
    by autograd inside the backward pass (O(B T D²) for the sums, then O(D³)); no step is Python.
    ``tests/test_compiled.py`` holds it to autograd through the torch kernels. Differentiable once:
    a backward pass that builds a graph raises (``ELBOX_COMPILED=0`` takes the torch kernels)."""

    @staticmethod
    def forward(ctx, values, mask, drive, steady_state, A, C, Q, R, m0, P0):
        model = LinearGaussian(A, C, Q, R, m0, P0, steady_state)
        ragged = not bool(mask.all())
        filtered = kalman_filter(model, values, mask, drive)
        smoothed = rts_smoother(model, filtered, mask, ragged)
        ctx.save_for_backward(values, mask, drive, A, C, Q, R, m0, P0, smoothed.means, smoothed.covariances,
                              smoothed.cross)  # fmt: skip
        return filtered.log_norm.sum(-1)

    @staticmethod
    def backward(ctx, grad):
        _compiled.refuse_graph("Kalman log-evidence", "Fisher's identity on the compiled smoother's moments")
        values, mask, drive, *params, means, covs, cross = ctx.saved_tensors
        wants = ctx.needs_input_grad
        inputs = [values, drive, *params]
        needs = [wants[0], wants[2], *wants[4:]]
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_(n) if t is not None else None for t, n in zip(inputs, needs)]
            surrogate = _expected_log_joint(grad, mask, means, covs, cross, *leaves)
            wanted = [t for t, n in zip(leaves, needs) if n]
            found = iter(torch.autograd.grad(surrogate, wanted, allow_unused=True, materialize_grads=True))
        out = [next(found) if n else None for n in needs]
        return out[0], None, out[1], None, *out[2:]


def _expected_log_joint(weight, mask, means, covs, cross, values, drive, A, C, Q, R, m0, P0) -> Tensor:
    """Σ_b weight_b E_q[log p(x_b, z_b)] for the smoothed moments q (means ``[B, T, D]``,
    covariances ``[b, T, D, D]``, Cov(z_t, z_{t+1}) ``[b, T-1, D, D]``), as a function of the
    parameters and the data (all up to each sequence's end): Fisher's identity makes its gradient
    that of Σ_b weight_b log p(x_b). The sums over the batch and time are products over the
    time-major layout ``[T, D, B]`` that the compiled kernels write."""
    B, T, D = means.shape
    time_major = lambda v: v.permute(1, 2, 0).contiguous()  # [T, ·, B]; a view where it is laid out so  # noqa: E731
    m, x = time_major(means), time_major(values)
    w = (weight.unsqueeze(-1) * mask).T.contiguous()  # [T, B]

    def outer(a, b, weights):  # Σ_t Σ_b w a bᵀ for a [T', Da, B], b [T', Db, B]
        return torch.bmm(a * weights.unsqueeze(1), b.mT).sum(0)

    def spread(cov, weights):  # Σ_t Σ_b w cov for cov [b, T', D, D] (b = 1: shared by the batch)
        if cov.shape[0] == 1:
            return (weights.sum(1) @ cov[0].flatten(1)).view(D, D)
        return (weights.T.reshape(-1) @ cov.flatten(2).flatten(0, 1)).view(D, D)

    def gauss(S, N, cov):  # −½ (N log|2π cov| + tr(cov⁻¹ S))
        L = torch.linalg.cholesky(cov)
        logdet = 2 * L.diagonal().log().sum() + cov.shape[0] * math.log(2 * math.pi)
        return -0.5 * (N * logdet + torch.cholesky_solve(S, L).diagonal().sum())

    # z_1 ~ N(μ_0, P_0)
    total = weight.sum()
    S0 = outer(m[:1], m[:1], weight.unsqueeze(0)) + spread(covs[:, :1], weight.unsqueeze(0))
    mean1 = m[0] @ weight
    S0 = S0 - torch.outer(m0, mean1) - torch.outer(mean1, m0) + total * torch.outer(m0, m0)
    value = gauss(S0, total, P0)
    # x_t ~ N(C z_t, R)
    Szz = outer(m, m, w) + spread(covs, w)
    Sxz, Sxx = outer(x, m, w), outer(x, x, w)
    value = value + gauss(Sxx - C @ Sxz.T - Sxz @ C.T + C @ Szz @ C.T, w.sum(), R)
    if T > 1:  # z_t ~ N(A z_{t-1} + u_t, Q), t ≥ 2
        wt = w[1:]
        cur, prev = m[1:], m[:-1]
        Scc = outer(cur, cur, wt) + spread(covs[:, 1:], wt)
        Spp = outer(prev, prev, wt) + spread(covs[:, :-1], wt)
        Spc = outer(prev, cur, wt) + spread(cross, wt)  # E[z_{t-1} z_tᵀ] summed
        S = Scc - A @ Spc - Spc.T @ A.T + A @ Spp @ A.T
        if drive is not None:
            u = time_major(drive)
            Uc, Up, Uu = outer(u, cur, wt), outer(u, prev, wt), outer(u, u, wt)
            S = S - Uc - Uc.T + A @ Up.T + Up @ A.T + Uu
        value = value + gauss(S, wt.sum(), Q)
    return value


def _chunked_filter(W: Tensor, Wx: Tensor, u: Tensor, start: Tensor) -> Tensor:
    """Runs [y_t; w_t] = W_t y_{t-1} + Wx_t u_t from y = ``start`` ``[D, B]`` (``W`` ``[T, D + k, D]``,
    ``Wx`` ``[T, D + k, n]``, the inputs ``u`` ``[T, n, B]``, the batch as columns) and returns
    |w_t|² ``[T, B]``, in chunks as :func:`affine_recurrence` does: every chunk from zero with its
    transfer (L steps, all chunks at once), the state at each chunk's start (T / L steps), then
    every chunk again from there, keeping only |w_t|²: nothing of size T × D × B is stored."""
    T, _, B = u.shape
    D = start.shape[0]
    L = recurrence_chunk(T, 8.0)  # 9 calls a chunk step (both passes), 1 a carry
    C = T // L
    Wc = W[: C * L].view(C, L, *W.shape[1:]).unbind(1)  # L × [C, D + k, D]
    Wxc = Wx[: C * L].view(C, L, *Wx.shape[1:]).unbind(1)  # L × [C, D + k, n]
    steps = u[: C * L].view(C, L, *u.shape[1:]).unbind(1)  # L × [C, n, B]
    local, prod = torch.bmm(Wxc[0][:, :D], steps[0]), Wc[0][:, :D]  # from zero
    for j in range(1, L):  # (1) every chunk from zero, and its transfer
        N = Wc[j][:, :D]
        local = torch.baddbmm(torch.bmm(Wxc[j][:, :D], steps[j]), N, local)
        prod = torch.bmm(N, prod)
    last_local, last_prod = local.unbind(0), prod.unbind(0)
    carry, starts = start, [start]
    for c in range(C - 1):  # (2) the state before each chunk
        carry = torch.addmm(last_local[c], last_prod[c], carry)
        starts.append(carry)
    y = torch.stack(starts)  # [C, D, B]
    norms = []
    for j in range(L):  # (3) every chunk again, from its true start
        out = torch.baddbmm(torch.bmm(Wxc[j], steps[j]), Wc[j], y)  # [C, D + k, B]
        y = out[:, :D]
        norms.append(out[:, D:].square().sum(1))
    q = torch.stack(norms, 1).view(C * L, B)  # [C L, B]
    if C * L < T:
        rest = [q]
        y = y[-1]
        for t in range(C * L, T):  # the steps after the last whole chunk
            out = torch.addmm(Wx[t] @ u[t], W[t], y)
            y = out[:D]
            rest.append(out[D:].square().sum(0, keepdim=True))
        q = torch.cat(rest)
    return q


def _log_norm(q: Tensor, cov: dict, mask: Tensor) -> Tensor:
    """log N(x_t; C m_{t|t-1}, S_t) from the squared whitened innovations ``q`` ``[T, B]``, ``[B, T]``
    (zero past each end)."""
    L_s = cov["chol_s"]  # [T, obs, obs]
    obs = L_s.shape[-1]
    half_logdet = L_s.diagonal(dim1=-2, dim2=-1).log().sum(-1) + 0.5 * obs * math.log(2 * math.pi)  # [T]
    log_norm = q.mul(-0.5).sub_(half_logdet.unsqueeze(-1)).mT  # [B, T]
    return log_norm if bool(mask.all()) else torch.where(mask, log_norm, 0.0)


def rts_smoother(model: LinearGaussian, filtered: KalmanFilter, mask: Tensor, ragged: bool) -> RTSSmoother:
    """The Rauch–Tung–Striebel smoother from the filter's output, over a padded batch whose
    sequences end where ``mask`` ``[B, T]`` does (``ragged``: not all at T). Means and
    covariances by backward recurrences in chunks (:func:`affine_recurrence`,
    :func:`congruence_recurrence`)."""
    cov = filtered.covariances
    means, predicted = filtered.means.transpose(0, 1), filtered.predicted.transpose(0, 1)  # [T, B, D]
    T = mask.shape[1]
    A = model.transition_matrix
    D = A.shape[-1]
    eye = torch.eye(D, dtype=A.dtype, device=A.device)
    P, P_pred = cov["filt"], cov["pred"]  # [T, D, D]
    if T > 1:
        # J_t = P_t Aᵀ P_{t+1|t}⁻¹, [T-1, D, D]; past the filter's steady state every J is the last
        n = min(cov["steps"], T - 1)
        L_pred = safe_cholesky(P_pred[1 : n + 1], "a predicted state covariance", PD_HINT)
        J = torch.cholesky_solve(A @ P[:n], L_pred).mT
        if n < T - 1:
            J = torch.cat([J, J[-1].expand(T - 1 - n, D, D)])
    else:
        J = P.new_zeros(0, D, D)
    keep = mask[:, 1:, None, None] if ragged else mask.new_ones(1, T - 1, 1, 1)  # [b, T-1, 1, 1]
    J_kept = torch.where(keep, J, 0.0)  # [b, T-1, D, D]
    # Smoothed means: m^s_t = J_t m^s_{t+1} + (m_t − J_t m_{t+1|t}), a recurrence run backwards.
    if T > 1 and _compiled.use_compiled(J, filtered.means, filtered.predicted):
        smoothed, offset = _compiled.smoother_means(J[: min(cov["steps"], T - 1)], filtered.means, filtered.predicted,
                                                    mask)  # fmt: skip
    else:
        if ragged:
            J_t = J_kept.transpose(0, 1)  # [T-1, B, D, D]
            h = means[:-1] - (J_t @ predicted[1:].unsqueeze(-1)).squeeze(-1)  # [T-1, B, D]
            M_rev = torch.cat([J_t[:1], J_t.flip(0)])
        else:
            h = means[:-1] - torch.bmm(predicted[1:], J.mT)  # [T-1, B, D]
            M_rev = torch.cat([J[:1], J.flip(0)])
        smoothed = affine_recurrence(M_rev, torch.cat([means[-1:], h.flip(0)])).flip(0).transpose(0, 1)  # [B, T, D]
        offset = torch.where(keep.squeeze(-1), h.transpose(0, 1), filtered.means[:, :-1])
    P_s = smoothed_covariances(P, P_pred, J, keep)  # [b, T, D, D]
    cross = J_kept @ P_s[:, 1:]  # Cov(z_t, z_{t+1} | x), [b, T-1, D, D]
    # The posterior as a reverse chain: z_T, then z_t | z_{t+1} ~ N(J z_{t+1} + m_t − J m_{t+1|t}, Σ_t).
    I_JA = eye - J @ A
    cond = I_JA @ P[:-1] @ I_JA.mT + J @ model.transition_covariance @ J.mT  # Joseph form of P_t − J P_{t+1|t} Jᵀ
    cond = torch.where(keep, cond, P[:-1])
    return RTSSmoother(smoothed, P_s, cross, J_kept, offset, cond, keep)


def smoothed_covariances(P: Tensor, P_pred: Tensor, J: Tensor, keep: Tensor) -> Tensor:
    """P^s_t = P_t + J_t (P^s_{t+1} − P_{t+1|t}) J_tᵀ, backwards from P^s_T = P_T, ``[b, T, D, D]``:
    the congruence recurrence P^s_t = J_t P^s_{t+1} J_tᵀ + (P_t − J_t P_{t+1|t} J_tᵀ) run in
    chunks (:func:`congruence_recurrence`); where a sequence has ended (``keep`` false) the map
    is the reset P^s_t = P_t."""
    J = torch.where(keep, J, 0.0)  # [b, T-1, D, D]
    G = torch.where(keep, P[:-1] - J @ P_pred[1:] @ J.mT, P[:-1])  # [b, T-1, D, D]
    b = keep.shape[0]
    M_rev = torch.cat([J[:, :1], J.flip(1)], 1)  # M_0 unused
    G_rev = torch.cat([P[-1].expand(b, 1, *P.shape[-2:]), G.flip(1)], 1)
    P_s = congruence_recurrence(M_rev, G_rev).flip(1)  # [b, T, D, D]
    return 0.5 * (P_s + P_s.mT)


def settled(P: Tensor, P_next: Tensor, tol: float) -> bool:
    """Whether ‖L⁻¹ (P_next − P) L⁻ᵀ‖_F ≤ tol for L = chol(P): the change relative to P in P's own
    metric, invariant under any invertible linear map of the state. A P that is not positive
    definite (a deterministic state) never counts as settled: the recursion runs on."""
    L, info = torch.linalg.cholesky_ex(P)
    if bool(info):
        return False
    half = torch.linalg.solve_triangular(L, P_next - P, upper=False)  # L⁻¹ Δ
    white = torch.linalg.solve_triangular(L, half.mT, upper=False)  # L⁻¹ Δᵀ L⁻ᵀ
    return bool(torch.linalg.matrix_norm(white) <= tol)


# Missing observations: a filter whose covariances differ from one sequence to another.


def masked_observation(C: Tensor, R: Tensor, observed: Tensor) -> tuple[Tensor, Tensor]:
    r"""Each step's observation model with its missing coordinates taken out, exactly, at full
    size: ``observed`` ``[B, T, obs]`` (True where x_t's coordinate is observed) gives

    .. math:: C_t = O_t C, \qquad R_t = O_t R O_t + (I - O_t), \qquad O_t = \mathrm{diag}(o_t),

    ``[B, T, obs, D]`` and ``[B, T, obs, obs]``. With the missing entries of x_t set to zero, a
    missing coordinate's innovation is 0 and its innovation variance 1, uncorrelated with the
    rest: the update is the one with the observed rows of C and R alone, and log N(x_t; C m, S_t)
    is the observed coordinates' own plus ½ log 2π for each missing one (taken back by the caller)."""
    o = observed.to(C.dtype)
    R_t = (o.unsqueeze(-1) * o.unsqueeze(-2)) * R + torch.diag_embed(1.0 - o)
    return o.unsqueeze(-1) * C, R_t


def masked_covariances(model: LinearGaussian, observed: Tensor, scan: bool | None = None) -> dict:
    r"""The filter's covariances for a batch with missing observations, one recursion per
    sequence (which coordinates are observed changes it): predicted and filtered covariances
    ``[B, T, D, D]``, gains ``[B, T, D, obs]``, chol(S_t) and its inverse ``[B, T, obs, obs]``, and
    the steps' observation matrices ``C`` (:func:`masked_observation`).

    Sequences with the same pattern of observed coordinates share their covariances, so the
    recursion runs once per distinct pattern (U of them), by one of two exact routes, chosen by
    :func:`masked_scan_pays` (or ``scan``): a Hillis–Steele scan over time of per-step Riccati
    elements (:func:`riccati_element` with that step's C_t and R_t; all prefixes e_1 ∘ … ∘ e_t in
    log₂ T rounds of batched D × D solves, P_{t|t} = (e_1 ∘ … ∘ e_t)(P_{0|0})), or the recursion
    step by step over the U patterns at once. A fully missing step is the prediction alone."""
    A, C, Q, R = model.transition_matrix, model.observation_matrix, model.transition_covariance, \
        model.observation_covariance  # fmt: skip
    B, T, obs = observed.shape
    D = A.shape[-1]
    patterns, inverse = torch.unique(observed.reshape(B, T * obs), dim=0, return_inverse=True)
    U = len(patterns)
    C_t, R_t = masked_observation(C, R, patterns.view(U, T, obs))  # [U, T, obs, D], [U, T, obs, obs]
    P0 = model.initial_covariance
    if scan if scan is not None else masked_scan_pays(U, T, D):
        filt = _masked_filtered_by_scan(model, C_t, R_t)
    else:
        filt = _masked_filtered_by_steps(model, C_t, R_t)
    filt = 0.5 * (filt + filt.mT)
    pred = torch.cat([P0.expand(U, 1, D, D), A @ filt[:, :-1] @ A.T + Q], 1)  # [U, T, D, D]
    CP = C_t @ pred  # [U, T, obs, D]
    L_s = safe_cholesky(CP @ C_t.mT + R_t, "the innovation covariance C P Cᵀ + R", PD_HINT)
    white = tril_inverse(L_s)
    gain = (white @ CP).mT @ white  # P Cᵀ S⁻¹, [U, T, D, obs]
    out = {"pred": pred, "filt": filt, "gain": gain, "chol_s": L_s, "white": white, "C": C_t}
    # each sequence its pattern's (torch.unique sorts the patterns: indexed back even where U = B)
    out = {key: v.expand(B, *v.shape[1:]) if U == 1 else v[inverse] for key, v in out.items()}
    return {**out, "observed": observed, "steps": T, "per_sequence": True}


def masked_scan_pays(U: int, T: int, D: int) -> bool:
    """The rule between :func:`masked_covariances`' two routes for U patterns of T steps and D
    states, measured on 2 cores (float64, D = 1 and 4, U = 1 to 64, T = 100 and 2,000): the
    scan costs about U T log₂ T (0.1 + 0.01 D³) µs (log₂ T rounds over every element), the step
    loop about T (110 + 0.03 U D³) µs (a dozen calls a step); the scan wins while
    U log₂ T (0.1 + 0.01 D³) < 110 + 0.03 U D³, i.e. for one or a few patterns."""
    return U * max(math.log2(max(T, 2)), 1.0) * (0.1 + 0.01 * D**3) < 110 + 0.03 * U * D**3


def _masked_filtered_by_scan(model: LinearGaussian, C_t: Tensor, R_t: Tensor) -> Tensor:
    """P_{t|t} ``[U, T, D, D]`` by the Hillis–Steele scan of per-step Riccati elements."""
    A, Q = model.transition_matrix, model.transition_covariance
    U, T = C_t.shape[:2]
    eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    first = kalman_update(model.initial_covariance, C_t[:, 0], R_t[:, 0])[2]  # P_{0|0}, [U, D, D]
    if T == 1:
        return first.unsqueeze(1)
    L_q, gain_q, C_e = kalman_update(Q, C_t[:, 1:], R_t[:, 1:])  # [U, T-1, ...]
    A_e = (eye - gain_q @ C_t[:, 1:]) @ A
    CA = C_t[:, 1:] @ A
    J_e = CA.mT @ torch.cholesky_solve(CA, L_q)  # Aᵀ C_tᵀ S⁻¹ C_t A
    element = (A_e, 0.5 * (C_e + C_e.mT), 0.5 * (J_e + J_e.mT))
    shift = 1
    while shift < T - 1:  # Hillis–Steele: element t becomes e_{t-2s+1} ∘ … ∘ e_t
        joined = riccati_compose(tuple(e[:, :-shift] for e in element), tuple(e[:, shift:] for e in element))
        element = tuple(torch.cat([e[:, :shift], j], 1) for e, j in zip(element, joined))
        shift *= 2
    later = riccati_apply(element, first.unsqueeze(1))  # P_{t|t}, t ≥ 1, [U, T-1, D, D]
    return torch.cat([first.unsqueeze(1), later], 1)


def _masked_filtered_by_steps(model: LinearGaussian, C_t: Tensor, R_t: Tensor) -> Tensor:
    """P_{t|t} ``[U, T, D, D]`` by the recursion, a step at a time over all U patterns (Joseph form;
    one positive-definiteness check at the end, none per step)."""
    A, Q = model.transition_matrix, model.transition_covariance
    U, T = C_t.shape[:2]
    eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    P = model.initial_covariance.expand(U, *A.shape)
    filt, failed = [], torch.zeros(U, T, dtype=torch.bool, device=A.device)
    for t in range(T):
        if t:
            P = A @ filt[-1] @ A.T + Q
        C, R = C_t[:, t], R_t[:, t]
        CP = C @ P  # [U, obs, D]
        L_s, info = torch.linalg.cholesky_ex(CP @ C.mT + R)
        failed[:, t] = info != 0
        gain = torch.cholesky_solve(CP, L_s).mT  # [U, D, obs]
        I_KC = eye - gain @ C
        filt.append(I_KC @ P @ I_KC.mT + gain @ R @ gain.mT)
    if bool(failed.any()):
        raise ValueError(f"the innovation covariance C P Cᵀ + R is not positive definite. {PD_HINT}")
    return torch.stack(filt, 1)


def masked_kalman_filter(
    model: LinearGaussian, values: Tensor, observed: Tensor, drive: Tensor | None = None
) -> KalmanFilter:
    """:func:`kalman_filter` over a batch with missing observations: ``values`` ``[B, T, obs]``
    zero where ``observed`` ``[B, T, obs]`` is False (missing, or past a sequence's end; a step
    with nothing observed is a prediction alone). The covariances are per sequence
    (:func:`masked_covariances`); the means, an affine recurrence with per-sequence matrices
    (:func:`affine_recurrence`). ``log_norm`` is zero at steps with nothing observed."""
    cov = masked_covariances(model, observed)
    A = model.transition_matrix
    B, T, _ = values.shape
    D = A.shape[-1]
    C_t, gain = cov["C"], cov["gain"]
    I_KC = torch.eye(D, dtype=A.dtype, device=A.device) - gain @ C_t  # [B, T, D, D]
    g = (gain @ values.unsqueeze(-1)).squeeze(-1)  # K_t x_t, [B, T, D]
    first = g[:, :1] + (I_KC[:, :1] @ model.initial_loc.unsqueeze(-1)).squeeze(-1)
    rest = g[:, 1:]
    if drive is not None:  # m_t = (I − K_t C_t)(A m_{t-1} + B u_t) + K_t x_t
        rest = rest + (I_KC[:, 1:] @ drive.unsqueeze(-1)).squeeze(-1)
    means = affine_recurrence((I_KC @ A).transpose(0, 1), torch.cat([first, rest], 1).transpose(0, 1))  # [T, B, D]
    means = means.transpose(0, 1)  # [B, T, D]
    carried = means[:, :-1] @ A.T if drive is None else means[:, :-1] @ A.T + drive
    predicted = torch.cat([model.initial_loc.expand(B, 1, D), carried], 1)  # [B, T, D]
    innovation = values - (C_t @ predicted.unsqueeze(-1)).squeeze(-1)  # zero where missing, [B, T, obs]
    w = (cov["white"] @ innovation.unsqueeze(-1)).squeeze(-1)
    half_logdet = cov["chol_s"].diagonal(dim1=-2, dim2=-1).log().sum(-1)  # missing coordinates: log 1
    seen = observed.sum(-1).to(values.dtype)  # [B, T]
    log_norm = -0.5 * w.square().sum(-1) - half_logdet - 0.5 * math.log(2 * math.pi) * seen
    return KalmanFilter(cov, means, predicted, log_norm)


def masked_rts_smoother(model: LinearGaussian, filtered: KalmanFilter, mask: Tensor) -> RTSSmoother:
    """:func:`rts_smoother` for :func:`masked_kalman_filter`'s per-sequence covariances ``[B, T, D, D]``;
    the same recurrences, with each sequence's own gains, reset past each end as there."""
    cov = filtered.covariances
    means, predicted = filtered.means, filtered.predicted  # [B, T, D]
    P, P_pred = cov["filt"], cov["pred"]  # [B, T, D, D]
    A = model.transition_matrix
    B, T, D = means.shape
    eye = torch.eye(D, dtype=A.dtype, device=A.device)
    keep = mask[:, 1:, None, None]  # [B, T-1, 1, 1]
    L_pred = safe_cholesky(P_pred[:, 1:], "a predicted state covariance", PD_HINT)
    J = torch.cholesky_solve(A @ P[:, :-1], L_pred).mT  # P_t Aᵀ P_{t+1|t}⁻¹, [B, T-1, D, D]
    J_kept = torch.where(keep, J, 0.0)
    h = means[:, :-1] - (J_kept @ predicted[:, 1:].unsqueeze(-1)).squeeze(-1)  # [B, T-1, D]
    M_rev = torch.cat([J_kept[:, :1], J_kept.flip(1)], 1)  # [B, T, D, D], M_0 unused
    smoothed = affine_recurrence(M_rev.transpose(0, 1), torch.cat([means[:, -1:], h.flip(1)], 1).transpose(0, 1))
    smoothed = smoothed.flip(0).transpose(0, 1)  # [B, T, D]
    G = torch.where(keep, P[:, :-1] - J_kept @ P_pred[:, 1:] @ J_kept.mT, P[:, :-1])
    P_s = congruence_recurrence(M_rev, torch.cat([P[:, -1:], G.flip(1)], 1)).flip(1)
    P_s = 0.5 * (P_s + P_s.mT)
    cross = J_kept @ P_s[:, 1:]
    I_JA = eye - J @ A
    cond = I_JA @ P[:, :-1] @ I_JA.mT + J @ model.transition_covariance @ J.mT
    cond = torch.where(keep, cond, P[:, :-1])
    offset = torch.where(keep.squeeze(-1), h, means[:, :-1])
    return RTSSmoother(smoothed, P_s, cross, J_kept, offset, cond, keep)


def diffuse_log_likelihood(
    model: LinearGaussian,
    values: Tensor,
    mask: Tensor,
    diffuse: Tensor,
    drive: Tensor | None = None,
    observed: Tensor | None = None,
) -> Tensor:
    r"""The exact diffuse log-likelihood, ``[B]``: z_1 = μ_0 + S δ + η with δ ~ N(0, κ I), κ → ∞ (the
    diffuse states, S = ``diffuse`` ``[D, q]``, a selection of columns of I) and η ~ N(0, P_*), P_* the
    initial covariance with the diffuse rows and columns zeroed (Durbin & Koopman 2012, ch. 5).

    By de Jong's augmented filter (D&K §5.7): the filter from P_* gives innovations v_t (with δ = 0)
    and, run again from each column of S with no data, their sensitivities V_t to δ (the innovations
    are linear in δ: v_t − V_t δ); whitened by the same chol(F_t), ŵ_t = L_t⁻¹ v_t and U_t = L_t⁻¹ V_t,

    .. math:: \log L_d = \sum_t \log \mathcal{N}(v_t; 0, F_t) + \tfrac12 b^\top S_n^{-1} b
              - \tfrac12 \log |S_n|, \quad S_n = \sum_t U_t^\top U_t, \quad b = \sum_t U_t^\top \hat w_t,

    the limit of log p_κ(x) + (q/2) log κ: what D&K's exact initial Kalman filter computes (and
    statsmodels' ``use_exact_diffuse``). It needs the data to identify δ (S_n nonsingular): the
    observed steps must determine the diffuse states, as the first d observations do for the
    structural models. With ``observed`` ``[B, T, obs]`` (missing values), the masked filter.

    References:
        The Diffuse Kalman Filter (de Jong, 1991), https://doi.org/10.1214/aos/1176348139
    """
    D, q = diffuse.shape
    keep = 1.0 - diffuse.sum(-1).clamp_max(1.0)  # 1 for the states that are not diffuse, [D]
    P_star = model.initial_covariance * keep.unsqueeze(-1) * keep.unsqueeze(-2)
    start = model._replace(initial_covariance=P_star)

    def whitened(run: KalmanFilter, x: Tensor) -> Tensor:  # L_t⁻¹ (x_t − C_t m_{t|t-1}), [B, T, obs]
        cov = run.covariances
        if cov.get("per_sequence"):
            innovation = x - (cov["C"] @ run.predicted.unsqueeze(-1)).squeeze(-1)
            return (cov["white"] @ innovation.unsqueeze(-1)).squeeze(-1)
        innovation = x - run.predicted @ model.observation_matrix.T
        w = (cov["white"].unsqueeze(1) @ innovation.transpose(0, 1).unsqueeze(-1)).squeeze(-1).transpose(0, 1)
        return w * mask.unsqueeze(-1)

    def run_filter(params: LinearGaussian, x: Tensor, u: Tensor | None) -> KalmanFilter:
        if observed is not None:
            return masked_kalman_filter(params, x, observed, u)
        return kalman_filter(params, x, mask, u)

    data = run_filter(start, values, drive)
    w = whitened(data, values)  # [B, T, obs]
    zeros = torch.zeros_like(values)
    # the sensitivities: the same filter from z_1 = s_j with no data, one run per diffuse column
    U = torch.stack([-whitened(run_filter(start._replace(initial_loc=diffuse[:, j]), zeros, None), zeros)
                     for j in range(q)], -1)  # fmt: skip  # [B, T, obs, q]
    S_n = torch.einsum("btoi,btoj->bij", U, U)  # [B, q, q]
    b = torch.einsum("btoi,bto->bi", U, w)  # [B, q]
    L, info = torch.linalg.cholesky_ex(S_n)
    if bool(info.any()):
        raise ValueError(
            f"the data do not identify the diffuse initial state (sequence {int(info.nonzero()[0])}): its "
            f"{q} diffuse states need enough observed steps to determine them; the exact diffuse likelihood "
            "is not defined there (use the approximately diffuse one, with a burn-in)"
        )
    half = torch.linalg.solve_triangular(L, b.unsqueeze(-1), upper=False).squeeze(-1)  # L⁻¹ b
    return data.log_norm.sum(-1) + 0.5 * half.square().sum(-1) - L.diagonal(dim1=-2, dim2=-1).log().sum(-1)
