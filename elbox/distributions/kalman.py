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

from elbox.distributions._gaussian import safe_cholesky
from elbox.distributions.gauss_markov import affine_scan, congruence_scan

__all__ = [
    "KalmanFilter",
    "LinearGaussian",
    "RTSSmoother",
    "kalman_covariances",
    "kalman_filter",
    "kalman_update",
    "riccati_scan",
    "rts_smoother",
]

PD_HINT = "Raise reg_covar, or check the data's scale."
#: Below this many steps of filter steady state, the smoothed covariances are found by the scan
#: rather than by the steady-state shortcut (which steps through the rest one at a time).
SCAN_FROM = 64
#: The filter's covariance recursion runs step by step this long at most (a slowly settling
#: model settles within it: 401 steps for a pole at 0.98); one still unsettled then, with more
#: steps than this to go, finishes by the parallel scan (:func:`riccati_scan`).
RICCATI_STEPS = 1024


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
    S = C @ P_pred @ C.T + R
    L_s = safe_cholesky(S, "the innovation covariance C P Cᵀ + R", PD_HINT)
    gain = torch.cholesky_solve(C @ P_pred, L_s).mT  # P Cᵀ S⁻¹, [*, D, obs]
    I_KC = torch.eye(P_pred.shape[-1], dtype=P_pred.dtype, device=P_pred.device) - gain @ C
    return L_s, gain, I_KC @ P_pred @ I_KC.mT + gain @ R @ gain.mT


def kalman_covariances(model: LinearGaussian, T: int) -> dict:
    """The data-free half of the filter, shared by every sequence: predicted and filtered
    covariances ``[T, D, D]``, gains ``[T, D, obs]`` and chol(S_t) ``[T, obs, obs]``.

    Once the predicted covariance stops changing, every later step repeats the last one, so
    the recursion stops there and the rest is a broadcast view. "Stops changing" is measured
    in the covariance's own metric: ‖L⁻¹ (P_{t+1} − P_t) L⁻ᵀ‖_F ≤ 100 ε with L = chol(P_t),
    the change whitened by P_t. That is the same number whatever the units (or any linear
    change of coordinates) of the state, so a small, slowly settling block is not frozen
    while a large one has settled. ``steady_state=False`` runs every step. A recursion that
    has not settled after :data:`RICCATI_STEPS` steps, with more than as many to go, finishes by
    a parallel prefix scan (:func:`riccati_scan`): log₂ T rounds instead of T steps.
    """
    A, C, Q, R = model.transition_matrix, model.observation_matrix, model.transition_covariance, \
        model.observation_covariance  # fmt: skip
    tol = 100 * torch.finfo(A.dtype).eps
    P_pred = model.initial_covariance
    out = {"pred": [], "filt": [], "gain": [], "chol_s": []}
    rest = None
    for t in range(T):
        if t == RICCATI_STEPS and T - t > RICCATI_STEPS:  # unsettled after so many steps: the rest by a scan
            rest = riccati_scan(model, P_pred, T - t)
            break
        L_s, gain, P = kalman_update(P_pred, C, R)
        for key, value in zip(out, (P_pred, P, gain, L_s)):
            out[key].append(value)
        P_next = A @ P @ A.T + Q
        if model.steady_state and t > 0 and settled(P_pred, P_next, tol):
            break
        P_pred = P_next
    if rest is not None:
        result = {key: torch.cat([torch.stack(v), rest[key]]) for key, v in out.items()}
        result["steps"] = T
        return result
    steady = T - len(out["pred"])
    result = {
        key: torch.cat([torch.stack(v), v[-1].expand(steady, *v[-1].shape)]) if steady else torch.stack(v)
        for key, v in out.items()
    }
    result["steps"] = T - steady  # how many steps the recursion ran before its steady state
    return result


def riccati_scan(model: LinearGaussian, P_pred: Tensor, n: int) -> dict:
    r"""The covariance half of the filter for the next ``n`` steps from the predicted covariance
    ``P_pred``, by a parallel prefix scan instead of n sequential steps (Särkkä & García-Fernández
    2021): each step is an element (A_k, C_k, J_k) of the filtering recursion, elements compose
    associatively,

    .. math:: A_{ij} = A_j (I + C_i J_j)^{-1} A_i, \quad
              C_{ij} = A_j (I + C_i J_j)^{-1} C_i A_j^\top + C_j, \quad
              J_{ij} = A_i^\top (I + J_j C_i)^{-1} J_j A_i + J_i,

    and the C of the first k composed is the k-th filtered covariance. log₂ n rounds of batched
    D × D products and solves. Returns the same keys as the sequential recursion, ``[n, …]``.

    References:
        Temporal Parallelization of Bayesian Smoothers (Särkkä & García-Fernández, 2021),
        https://arxiv.org/abs/1905.13002
    """
    A, C, Q, R = model.transition_matrix, model.observation_matrix, model.transition_covariance, \
        model.observation_covariance  # fmt: skip
    D = A.shape[-1]
    eye = torch.eye(D, dtype=A.dtype, device=A.device)
    # the first element starts from P_pred; every later one is the same (a time-invariant model)
    _, _, P_first = kalman_update(P_pred, C, R)
    L_q, gain_q, C_e = kalman_update(Q, C, R)  # a step from the previous filtered state: predicted Q around A m
    A_e = (eye - gain_q @ C) @ A
    S_inv_C = torch.cholesky_solve(C, L_q)  # S⁻¹ C, S = C Q Cᵀ + R
    J_e = A.T @ C.T @ S_inv_C @ A
    Ak = torch.cat([torch.zeros(1, D, D, dtype=A.dtype, device=A.device), A_e.expand(n - 1, D, D)])
    Ck = torch.cat([P_first.unsqueeze(0), C_e.expand(n - 1, D, D)])
    Jk = torch.cat([torch.zeros(1, D, D, dtype=A.dtype, device=A.device), J_e.expand(n - 1, D, D)])
    shift = 1
    while shift < n:
        Ai, Ci, Ji = Ak[:-shift], Ck[:-shift], Jk[:-shift]  # the earlier elements
        Aj, Cj, Jj = Ak[shift:], Ck[shift:], Jk[shift:]
        X = torch.linalg.solve(eye + Ci @ Jj, torch.cat([Ai, Ci @ Aj.mT], -1))  # (I + C_i J_j)⁻¹ [A_i, C_i A_jᵀ]
        Y = torch.linalg.solve(eye + Jj @ Ci, Jj @ Ai)  # (I + J_j C_i)⁻¹ J_j A_i
        A_new = Aj @ X[..., :D]
        C_new = Aj @ X[..., D:] + Cj
        J_new = Ai.mT @ Y + Ji
        Ak = torch.cat([Ak[:shift], A_new])
        Ck = torch.cat([Ck[:shift], 0.5 * (C_new + C_new.mT)])
        Jk = torch.cat([Jk[:shift], 0.5 * (J_new + J_new.mT)])
        shift *= 2
    filtered = Ck  # [n, D, D]
    predicted = torch.cat([P_pred.unsqueeze(0), A @ filtered[:-1] @ A.T + Q])
    L_s, gain, _ = kalman_update(predicted, C, R)
    return {"pred": predicted, "filt": filtered, "gain": gain, "chol_s": L_s}


def kalman_filter(model: LinearGaussian, values: Tensor, mask: Tensor, drive: Tensor | None = None) -> KalmanFilter:
    """The Kalman filter over a padded batch: observations ``values`` ``[B, T, obs]`` (zero past
    each end), ``mask`` ``[B, T]`` (a prefix of each row), and the inputs' drive B u_t into z_t for
    t ≥ 2, ``[B, T-1, D]``, or None."""
    B, T = mask.shape
    cov = kalman_covariances(model, T)
    A, C = model.transition_matrix, model.observation_matrix
    D, obs = A.shape[-1], C.shape[0]
    gain = cov["gain"]  # [T, D, obs]
    I_KC = torch.eye(D, dtype=A.dtype, device=A.device) - gain @ C  # [T, D, D]
    # m_t = (I − K_t C)(A m_{t-1} + B u_t) + K_t x_t: an affine recurrence, solved by a scan.
    pred_offset = model.initial_loc.expand(B, 1, -1)
    if drive is not None:
        pred_offset = torch.cat([pred_offset, drive], 1)  # [B, T, D]: μ_0, then B u_t
    else:
        pred_offset = torch.cat([pred_offset, pred_offset.new_zeros(B, T - 1, D)], 1)
    g = (I_KC @ pred_offset.unsqueeze(-1)).squeeze(-1) + (gain @ values.unsqueeze(-1)).squeeze(-1)
    means = affine_scan(I_KC @ A, g)  # [B, T, D]
    predicted = torch.cat([pred_offset[:, :1], means[:, :-1] @ A.T + pred_offset[:, 1:]], 1)  # [B, T, D]
    innovation = values - predicted @ C.T  # [B, T, obs]
    L_s = cov["chol_s"]  # [T, obs, obs]
    w = torch.linalg.solve_triangular(L_s, innovation.unsqueeze(-1), upper=False).squeeze(-1)
    log_norm = -0.5 * w.square().sum(-1) - L_s.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    log_norm = (log_norm - 0.5 * obs * math.log(2 * math.pi)) * mask  # [B, T]
    return KalmanFilter(cov, means, predicted, log_norm)


def rts_smoother(model: LinearGaussian, filtered: KalmanFilter, mask: Tensor, ragged: bool) -> RTSSmoother:
    """The Rauch–Tung–Striebel smoother from the filter's output, over a padded batch whose
    sequences end where ``mask`` ``[B, T]`` does (``ragged``: not all at T)."""
    cov, means, predicted = filtered.covariances, filtered.means, filtered.predicted
    T = mask.shape[1]
    A = model.transition_matrix
    D = A.shape[-1]
    eye = torch.eye(D, dtype=A.dtype, device=A.device)
    P, P_pred = cov["filt"], cov["pred"]  # [T, D, D]
    if T > 1:
        L_pred = safe_cholesky(P_pred[1:], "a predicted state covariance", PD_HINT)
        J = torch.cholesky_solve(A @ P[:-1], L_pred).mT  # J_t = P_t Aᵀ P_{t+1|t}⁻¹, [T-1, D, D]
    else:
        J = P.new_zeros(0, D, D)
    keep = mask[:, 1:, None, None] if ragged else mask.new_ones(1, T - 1, 1, 1)  # [b, T-1, 1, 1]
    J_kept = torch.where(keep, J, 0.0)  # [b, T-1, D, D]
    # Smoothed means: m^s_t = J_t m^s_{t+1} + (m_t − J_t m_{t+1|t}), a scan run backwards.
    h = means[:, :-1] - (J_kept @ predicted[:, 1:].unsqueeze(-1)).squeeze(-1)  # [B, T-1, D]
    g_rev = torch.cat([means[:, -1:], h.flip(1)], 1)
    M_rev = torch.cat([J_kept[:, :1], J_kept.flip(1)], 1)
    smoothed = affine_scan(M_rev, g_rev).flip(1)  # [B, T, D]
    steady_from = cov["steps"] - 1 if model.steady_state and not ragged else T
    P_s = smoothed_covariances(P, P_pred, J, keep, steady_from)  # [b, T, D, D]
    cross = J_kept @ P_s[:, 1:]  # Cov(z_t, z_{t+1} | x), [b, T-1, D, D]
    # The posterior as a reverse chain: z_T, then z_t | z_{t+1} ~ N(J z_{t+1} + m_t − J m_{t+1|t}, Σ_t).
    I_JA = eye - J @ A
    cond = I_JA @ P[:-1] @ I_JA.mT + J @ model.transition_covariance @ J.mT  # Joseph form of P_t − J P_{t+1|t} Jᵀ
    cond = torch.where(keep, cond, P[:-1])
    offset = torch.where(keep.squeeze(-1), h, means[:, :-1])
    return RTSSmoother(smoothed, P_s, cross, J_kept, offset, cond, keep)


def smoothed_covariances(P: Tensor, P_pred: Tensor, J: Tensor, keep: Tensor, steady_from: int) -> Tensor:
    """P^s_t = P_t + J_t (P^s_{t+1} − P_{t+1|t}) J_tᵀ, backwards from P^s_T = P_T, ``[b, T, D, D]``.

    Where the filter reached its steady state (from step ``steady_from`` on, P_t, P_{t+1|t} and
    J_t no longer change), this recursion runs with fixed coefficients and settles too, in
    the same metric as the filter's: from there down to the filter's steady state every step
    repeats the settled P^s, a broadcast rather than a step each. So one long sequence costs
    the steps before the filter settles and the few after the end's transient, not T. Ragged
    batches (each sequence ends at its own step) pass ``steady_from = T``: every step.
    """
    T, D = P.shape[0], P.shape[-1]
    b = keep.shape[0]
    tol = 100 * torch.finfo(P.dtype).eps
    if T - steady_from < SCAN_FROM:  # no steady state to shortcut over (or a short one): the scan
        return smoothed_covariances_by_scan(P, P_pred, J, keep)
    chunks = [P[-1].expand(b, 1, D, D)]  # in reverse order of time
    last = chunks[0][:, 0]
    t = T - 2
    while t >= 0:
        update = P[t] + J[t] @ (last - P_pred[t + 1]) @ J[t].T
        current = torch.where(keep[:, t], update, P[t])
        if t >= steady_from and settled(last[0], current[0], tol):
            repeat = t - steady_from + 1  # steps t, t−1, …, steady_from: all the settled value
            chunks.append(current.unsqueeze(1).expand(b, repeat, D, D))
            last, t = current, steady_from - 1
            continue
        chunks.append(current.unsqueeze(1))
        last, t = current, t - 1
    return torch.cat(chunks[::-1], 1)


def smoothed_covariances_by_scan(P: Tensor, P_pred: Tensor, J: Tensor, keep: Tensor) -> Tensor:
    """The same recursion as a congruence scan, P^s_t = J_t P^s_{t+1} J_tᵀ + (P_t − J_t P_{t+1|t}
    J_tᵀ), run backwards: log₂ T rounds of batched products; where a sequence has ended (``keep``
    false) the map is the reset P^s_t = P_t."""
    J = torch.where(keep, J, 0.0)  # [b, T-1, D, D]
    G = torch.where(keep, P[:-1] - J @ P_pred[1:] @ J.mT, P[:-1])  # [b, T-1, D, D]
    b = keep.shape[0]
    M_rev = torch.cat([J[:, :1], J.flip(1)], 1)  # M_0 unused
    G_rev = torch.cat([P[-1].expand(b, 1, *P.shape[-2:]), G.flip(1)], 1)
    P_s = congruence_scan(M_rev, G_rev).flip(1)  # [b, T, D, D]
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
