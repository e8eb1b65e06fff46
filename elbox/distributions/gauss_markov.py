"""Gaussian distributions over trajectories with Markov structure (the state-space model's
prior and posterior), and the affine scan that solves their linear recurrences in parallel."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, Normal, constraints, register_kl

from elbox._validation import check_tensor

__all__ = ["GaussMarkovChain", "affine_recurrence", "affine_scan", "congruence_recurrence", "congruence_scan"]


def affine_scan(M: Tensor, g: Tensor) -> Tensor:
    r"""Solves y_0 = g_0, y_t = M_t y_{t-1} + g_t for all t at once, ``[*, T, D]``.

    A Hillis–Steele prefix scan over the affine maps (M_t, g_t): log₂ T rounds of batched
    matrix products instead of T sequential steps. ``M`` is ``[*, T, D, D]`` (``M_0`` is
    unused) and broadcasts against ``g [*, T, D]``.
    """
    check_tensor(M, "M", min_dim=3)
    check_tensor(g, "g", min_dim=2)
    if M.shape[-2:] != (g.shape[-1], g.shape[-1]) or M.shape[-3] not in (1, g.shape[-2]):
        raise ValueError(f"M must be [*, T, D, D] (or [*, 1, D, D]) for g [*, T, D] = {list(g.shape)}; received shape "
                         f"{list(M.shape)}")  # fmt: skip
    T = g.shape[-2]
    M = M.expand(*M.shape[:-3], T, *M.shape[-2:]) if M.shape[-3] == 1 else M
    shift = 1
    while shift < T:
        carried = (M[..., shift:, :, :] @ g[..., :-shift, :].unsqueeze(-1)).squeeze(-1)
        g = torch.cat([g[..., :shift, :], g[..., shift:, :] + carried], -2)
        if 2 * shift < T:
            M = torch.cat([M[..., :shift, :, :], M[..., shift:, :, :] @ M[..., :-shift, :, :]], -3)
        shift *= 2
    return g


def congruence_scan(M: Tensor, G: Tensor) -> Tensor:
    r"""Solves Y_0 = G_0, Y_t = M_t Y_{t-1} M_tᵀ + G_t for all t at once, ``[*, T, D, D]``.

    The matrix recursion of covariances carried through linear maps (the RTS smoother's
    backward pass, a Lyapunov recursion). Maps of this form compose into one of the same form,
    (M, G) then (M', G') being (M' M, M' G M'ᵀ + G'), so a Hillis–Steele prefix scan solves it
    in log₂ T rounds of batched matrix products, as :func:`affine_scan` does for vectors.
    ``M`` is ``[*, T, D, D]`` (``M_0`` is unused).

    Example:
        >>> M, G = torch.full((3, 1, 1), 0.5), torch.ones(3, 1, 1)
        >>> congruence_scan(M, G).flatten().tolist()  # 1, 0.25·1 + 1, 0.25·1.25 + 1
        [1.0, 1.25, 1.3125]
    """
    check_tensor(M, "M", min_dim=3)
    check_tensor(G, "G", min_dim=3)
    if G.shape[-1] != G.shape[-2] or M.shape[-3:] != G.shape[-3:]:
        raise ValueError(f"M and G must both be [*, T, D, D]; received shapes {list(M.shape)} and {list(G.shape)}")
    T = G.shape[-3]
    shift = 1
    while shift < T:
        later = M[..., shift:, :, :]
        carried = later @ G[..., :-shift, :, :] @ later.mT
        G = torch.cat([G[..., :shift, :, :], G[..., shift:, :, :] + carried], -3)
        if 2 * shift < T:
            M = torch.cat([M[..., :shift, :, :], later @ M[..., :-shift, :, :]], -3)
        shift *= 2
    return G


def recurrence_chunk(T: int, ratio: float = 1.0) -> int:
    """The chunk length L of the chunked recurrences (:func:`affine_recurrence`,
    :func:`congruence_recurrence`, the Kalman filter's): a chunk step costs ``ratio`` times the
    calls of a carry between chunks, so L steps inside the chunks and T / L carries cost
    ratio · L + T / L calls, least at L = √(T / ratio); the arithmetic is the same whatever L.
    A divisor of T within a factor of 2 of that (the nearest) where there is one, so that no
    step is left over; else the rounded-up optimum, and the steps after the last whole chunk
    run one by one."""
    root = max(math.isqrt(max(int(T / ratio) - 1, 0)) + 1, 1)
    for d in range(root):  # the nearest divisor first
        for L in (root - d, root + d):
            if 2 * L >= root and L <= 2 * root and L > 0 and T % L == 0:
                return L
    return root


def affine_recurrence(M: Tensor, g: Tensor) -> Tensor:
    r"""Solves y_0 = g_0, y_t = M_t y_{t-1} + g_t for all t, time first: ``g`` and the result
    are ``[T, B, D]``.

    The T steps are cut into C chunks of L = ⌈√T⌉ (:func:`recurrence_chunk`): (1) every
    chunk's recursion from zero and its transfer Π M, all chunks at once, L batched steps;
    (2) the state at each chunk's start, chunk by chunk, C small steps; (3) the recursion
    again inside every chunk at once, now from its true start. About 2L + C batched calls
    where the loop over time makes T, twice the loop's arithmetic (plus one D × D product a
    step), and no log₂ T rounds of T-sized products and copies as in :func:`affine_scan`.

    Args:
        M: ``[T, D, D]``, shared by the batch (never copied per sequence), or ``[T, B, D, D]``,
            one per sequence; ``M_0`` is unused.
        g: ``[T, B, D]``.

    Example:
        >>> M, g = torch.full((3, 1, 1), 0.5), torch.ones(3, 1, 1)
        >>> affine_recurrence(M, g).flatten().tolist()  # 1, 0.5 + 1, 0.75 + 1
        [1.0, 1.5, 1.75]
    """
    T, B, D = g.shape
    if T == 1:
        return g
    L = recurrence_chunk(T, 3.0)  # 5 calls a chunk step (both passes), 1–2 a carry
    C = T // L  # whole chunks; the r < L steps after them run one by one at the end
    shared = M.dim() == 3
    N = M.mT  # rows: y_t = y_{t-1} N_t + g_t
    if shared:  # batched over the C chunks, the B sequences as rows
        Nc = N[: C * L].view(C, L, D, D).unbind(1)  # L × [C, D, D]
        steps = g[: C * L].view(C, L, B, D).unbind(1)  # L × [C, B, D]
    else:  # batched over (chunk, sequence), one row each
        Nc = [n.reshape(C * B, D, D) for n in N[: C * L].view(C, L, B, D, D).unbind(1)]
        steps = [s.reshape(C * B, 1, D) for s in g[: C * L].view(C, L, B, D).unbind(1)]
    local, prod = steps[0], Nc[0]
    for j in range(1, L):  # (1) every chunk from zero, and its transfer
        local = torch.bmm(local, Nc[j]) + steps[j]
        prod = torch.bmm(prod, Nc[j])
    last_local = local.view(C, B, D).unbind(0)  # C × [B, D]
    last_prod = prod.view(C, -1, D, D).unbind(0)  # C × [1, D, D] (shared) or [B, D, D]
    carry = local.new_zeros(B, D)
    starts = [carry]
    for c in range(C - 1):  # (2) the state before each chunk
        if shared:
            carry = torch.addmm(last_local[c], carry, last_prod[c][0])
        else:
            carry = torch.bmm(carry.unsqueeze(1), last_prod[c]).squeeze(1) + last_local[c]
        starts.append(carry)
    y = torch.stack(starts).view(C, B, D) if shared else torch.stack(starts).view(C * B, 1, D)
    path = []
    for j in range(L):  # (3) every chunk again, from its true start
        y = torch.bmm(y, Nc[j]) + steps[j]
        path.append(y)
    if shared:
        y = torch.stack(path, 1).view(C * L, B, D)
    else:
        y = torch.stack(path, 1).view(C, B, L, D).transpose(1, 2).reshape(C * L, B, D)
    if C * L == T:
        return y
    last, rest = y[-1], [y]
    for t in range(C * L, T):  # the steps after the last whole chunk
        last = (last.unsqueeze(1) @ N[t]).squeeze(1) + g[t]  # [B, D]
        rest.append(last.unsqueeze(0))
    return torch.cat(rest)


def congruence_recurrence(M: Tensor, G: Tensor) -> Tensor:
    r"""Solves Y_0 = G_0, Y_t = M_t Y_{t-1} M_tᵀ + G_t for all t, ``[b, T, D, D]``, in chunks
    of ⌈√T⌉ steps as :func:`affine_recurrence` does for vectors: every chunk from zero with its
    transfer Π M (L batched steps), the carry chunk by chunk (C steps), then each step's share
    of the carry, Π Y Πᵀ, in one batched product. ``M`` and ``G`` are ``[b, T, D, D]`` (``M_0``
    is unused).

    Example:
        >>> M, G = torch.full((1, 3, 1, 1), 0.5), torch.ones(1, 3, 1, 1)
        >>> congruence_recurrence(M, G).flatten().tolist()  # 1, 0.25·1 + 1, 0.25·1.25 + 1
        [1.0, 1.25, 1.3125]
    """
    b, T, D = G.shape[0], G.shape[1], G.shape[-1]
    if T == 1:
        return G
    M = M.expand(b, *M.shape[1:])
    L = recurrence_chunk(T)
    C = -(-T // L)
    pad = C * L - T
    if pad:
        eye = torch.eye(D, dtype=M.dtype, device=M.device)
        M = torch.cat([M, eye.expand(b, pad, D, D)], 1)
        G = torch.cat([G, G.new_zeros(b, pad, D, D)], 1)
    M = M.reshape(b * C, L, D, D).transpose(0, 1).unbind(0)  # L × [b C, D, D]
    steps = G.reshape(b * C, L, D, D).transpose(0, 1).unbind(0)
    local, prod = steps[0], M[0]
    locals_, prods = [local], [prod]
    for j in range(1, L):  # (1) inside every chunk at once, from zero
        local = torch.baddbmm(steps[j], M[j] @ local, M[j].mT)
        prod = M[j] @ prod
        locals_.append(local)
        prods.append(prod)
    last_local = local.view(b, C, D, D).unbind(1)
    last_prod = prod.view(b, C, D, D).unbind(1)
    carry = local.new_zeros(b, D, D)
    carries = [carry]
    for c in range(C - 1):  # (2) Y at each chunk's end
        carry = torch.baddbmm(last_local[c], last_prod[c] @ carry, last_prod[c].mT)
        carries.append(carry)
    carries = torch.stack(carries, 1).view(b * C, 1, D, D)
    prods = torch.stack(prods, 1)  # [b C, L, D, D]
    Y = torch.stack(locals_, 1) + prods @ carries @ prods.mT  # (3)
    return Y.view(b, C * L, D, D)[:, :T]


def _logdet_tril(L: Tensor) -> Tensor:
    return 2 * L.diagonal(dim1=-2, dim2=-1).log().sum(-1)


class GaussMarkovChain(Distribution):
    r"""A Gaussian over trajectories z = (z_1, …, z_T) ∈ R^{T×D} that is Markov in time:

    .. math:: z_{\mathrm{first}} \sim \mathcal{N}(m_0, P_0), \qquad
              z_{\mathrm{next}} = F_t z_{\mathrm{prev}} + b_t + \varepsilon_t,
              \quad \varepsilon_t \sim \mathcal{N}(0, \Sigma_t),

    run forward (first = z_1, z_t → z_{t+1}: a state-space model's prior) or in reverse
    (first = z_T, z_{t+1} → z_t: its posterior as the Kalman filter and RTS smoother leave
    it, sampled by forward-filtering backward-sampling). Nothing of size TD × TD is formed:
    ``log_prob`` and ``entropy`` are vectorized over time, sampling is one pass.

    Args:
        initial_loc: m_0, ``[*batch, D]``.
        initial_scale_tril: chol(P_0), ``[*batch, D, D]``.
        transition_matrix: F, ``[*batch, T-1, D, D]``; entry t acts between times t and t+1.
        transition_offset: b, ``[*batch, T-1, D]``.
        transition_scale_tril: chol(Σ), ``[*batch, T-1, D, D]``.
        reverse: The chain's direction.
        moments: Optional precomputed (means ``[*, T, D]``, covariances ``[*, T, D, D]``,
            cross-covariances Cov(z_t, z_{t+1}) ``[*, T-1, D, D]``), e.g. from a smoother.
    """

    arg_constraints: dict = {}
    support = constraints.independent(constraints.real, 2)
    has_rsample = True

    def __init__(
        self,
        initial_loc: Tensor,
        initial_scale_tril: Tensor,
        transition_matrix: Tensor,
        transition_offset: Tensor,
        transition_scale_tril: Tensor,
        reverse: bool = False,
        moments: tuple[Tensor, Tensor, Tensor] | None = None,
    ):
        D = initial_loc.shape[-1]
        T = transition_offset.shape[-2] + 1
        for name, t, tail in (
            ("initial_scale_tril", initial_scale_tril, (D, D)),
            ("transition_matrix", transition_matrix, (D, D)),
            ("transition_offset", transition_offset, (D,)),
            ("transition_scale_tril", transition_scale_tril, (D, D)),
        ):
            if tuple(t.shape[-len(tail) :]) != tail:
                raise ValueError(f"{name} must end in {list(tail)}; received shape {tuple(t.shape)}")
        self.initial_loc, self.initial_scale_tril = initial_loc, initial_scale_tril
        self.transition_matrix, self.transition_offset = transition_matrix, transition_offset
        self.transition_scale_tril = transition_scale_tril
        self.reverse = bool(reverse)
        self._moments = moments
        batch = torch.broadcast_shapes(
            initial_loc.shape[:-1],
            initial_scale_tril.shape[:-2],
            transition_matrix.shape[:-3],
            transition_offset.shape[:-2],
            transition_scale_tril.shape[:-3],
        )
        super().__init__(batch, torch.Size([T, D]), validate_args=False)

    @property
    def num_steps(self) -> int:
        return self.event_shape[0]

    def expand(self, batch_shape, _instance=None):
        batch = torch.Size(batch_shape)
        moments = None
        if self._moments is not None:
            means, covs, cross = self._moments
            moments = (
                means.expand(*batch, *means.shape[-2:]),
                covs.expand(*batch, *covs.shape[-3:]),
                cross.expand(*batch, *cross.shape[-3:]),
            )
        return GaussMarkovChain(
            self.initial_loc.expand(*batch, -1),
            self.initial_scale_tril.expand(*batch, -1, -1),
            self.transition_matrix.expand(*batch, -1, -1, -1),
            self.transition_offset.expand(*batch, -1, -1),
            self.transition_scale_tril.expand(*batch, -1, -1, -1),
            reverse=self.reverse,
            moments=moments,
        )

    def _pairs(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(first, prev, next) in the chain's direction, time-indexed like the transitions."""
        if self.reverse:
            return z[..., -1, :], z[..., 1:, :], z[..., :-1, :]
        return z[..., 0, :], z[..., :-1, :], z[..., 1:, :]

    def log_prob(self, z: Tensor) -> Tensor:
        """log p(z) for trajectories ``[*sample, *batch, T, D]``, ``[*sample, *batch]``."""
        D = self.event_shape[1]
        first, prev, nxt = self._pairs(z)
        const = 0.5 * D * math.log(2 * math.pi)
        r0 = torch.linalg.solve_triangular(
            self.initial_scale_tril, (first - self.initial_loc).unsqueeze(-1), upper=False
        ).squeeze(-1)
        log_p = -0.5 * r0.square().sum(-1) - 0.5 * _logdet_tril(self.initial_scale_tril) - const
        if self.num_steps > 1:
            resid = nxt - (self.transition_matrix @ prev.unsqueeze(-1)).squeeze(-1) - self.transition_offset
            w = torch.linalg.solve_triangular(self.transition_scale_tril, resid.unsqueeze(-1), upper=False)
            step = -0.5 * w.squeeze(-1).square().sum(-1) - 0.5 * _logdet_tril(self.transition_scale_tril) - const
            log_p = log_p + step.sum(-1)
        return log_p

    def rsample(self, sample_shape=()) -> Tensor:
        """One ancestral pass in the chain's direction (pathwise differentiable), ``[*sample, *batch, T, D]``."""
        shape = self._extended_shape(sample_shape)  # [*sample, *batch, T, D]
        T = self.num_steps
        eps = torch.randn(shape, dtype=self.initial_loc.dtype, device=self.initial_loc.device)
        first = eps[..., -1, :] if self.reverse else eps[..., 0, :]
        state = self.initial_loc + (self.initial_scale_tril @ first.unsqueeze(-1)).squeeze(-1)
        if T == 1:
            return state.unsqueeze(-2)
        rest = eps[..., :-1, :] if self.reverse else eps[..., 1:, :]
        drive = self.transition_offset + (self.transition_scale_tril @ rest.unsqueeze(-1)).squeeze(-1)  # [*, T-1, D]
        F = self.transition_matrix
        path = [state]
        for t in range(T - 2, -1, -1) if self.reverse else range(T - 1):
            state = (F[..., t, :, :] @ state.unsqueeze(-1)).squeeze(-1) + drive[..., t, :]
            path.append(state)
        if self.reverse:
            path.reverse()
        return torch.stack(path, -2)

    def moments(self) -> tuple[Tensor, Tensor, Tensor]:
        """Marginal means ``[*, T, D]``, covariances ``[*, T, D, D]`` and the cross-covariances
        Cov(z_t, z_{t+1}) ``[*, T-1, D, D]``, in time order."""
        if self._moments is None:
            L0 = self.initial_scale_tril
            m, P = self.initial_loc, L0 @ L0.mT
            F, b, L = self.transition_matrix, self.transition_offset, self.transition_scale_tril
            Sigma = L @ L.mT
            means, covs, cross = [m], [P], []
            for t in range(self.num_steps - 2, -1, -1) if self.reverse else range(self.num_steps - 1):
                Ft = F[..., t, :, :]
                cross.append(P @ Ft.mT)  # Cov(prev, next)
                m = (Ft @ m.unsqueeze(-1)).squeeze(-1) + b[..., t, :]
                P = Ft @ P @ Ft.mT + Sigma[..., t, :, :]
                means.append(m)
                covs.append(P)
            if self.reverse:
                means.reverse()
                covs.reverse()
                cross = [c.mT for c in reversed(cross)]  # Cov(z_{t+1}, z_t)ᵀ
            D = self.event_shape[1]
            batch = self.batch_shape
            if cross:
                cross_t = torch.stack([c.expand(*batch, D, D) for c in cross], -3)
            else:
                cross_t = m.new_zeros(*batch, 0, D, D)
            self._moments = (
                torch.stack([x.expand(*batch, D) for x in means], -2),
                torch.stack([x.expand(*batch, D, D) for x in covs], -3),
                cross_t,
            )
        return self._moments

    @property
    def mean(self) -> Tensor:
        return self.moments()[0]

    @property
    def variance(self) -> Tensor:
        return self.moments()[1].diagonal(dim1=-2, dim2=-1)

    def expected_log_prob(self, means: Tensor, covs: Tensor, cross: Tensor | None = None) -> Tensor:
        """E_q[log p(z)] for a Gaussian q given by its marginal moments in time order (``cross``
        = Cov_q(z_t, z_{t+1}); None when q factorizes over time)."""
        D = self.event_shape[1]
        const = 0.5 * D * math.log(2 * math.pi)
        first_m, prev_m, next_m = self._pairs(means)
        first_c = covs[..., -1, :, :] if self.reverse else covs[..., 0, :, :]
        value = _expected_gaussian(first_m - self.initial_loc, first_c, self.initial_scale_tril) - const
        if self.num_steps == 1:
            return value
        prev_c, next_c = (
            (covs[..., 1:, :, :], covs[..., :-1, :, :]) if self.reverse else (covs[..., :-1, :, :], covs[..., 1:, :, :])
        )
        F = self.transition_matrix
        resid_mean = next_m - (F @ prev_m.unsqueeze(-1)).squeeze(-1) - self.transition_offset
        resid_cov = next_c + F @ prev_c @ F.mT
        if cross is not None:
            prev_next = cross.mT if self.reverse else cross  # Cov(prev, next)
            FC = F @ prev_next
            resid_cov = resid_cov - FC - FC.mT
        steps = _expected_gaussian(resid_mean, resid_cov, self.transition_scale_tril) - const
        return value + steps.sum(-1)

    def entropy(self) -> Tensor:
        D = self.event_shape[1]
        per_step = 0.5 * D * (1 + math.log(2 * math.pi))
        h = 0.5 * _logdet_tril(self.initial_scale_tril) + per_step
        if self.num_steps > 1:
            h = h + (0.5 * _logdet_tril(self.transition_scale_tril) + per_step).sum(-1)
        return h.expand(self.batch_shape)


def _expected_gaussian(resid_mean: Tensor, resid_cov: Tensor, scale_tril: Tensor) -> Tensor:
    """E[log N(r; 0, LLᵀ)] + (D/2) log 2π for r with the given mean and covariance."""
    L_inv = torch.linalg.solve_triangular(
        scale_tril, torch.eye(scale_tril.shape[-1], dtype=scale_tril.dtype, device=scale_tril.device), upper=False
    )
    w = (L_inv @ resid_mean.unsqueeze(-1)).squeeze(-1)
    trace = ((L_inv @ resid_cov) * L_inv).sum((-2, -1))  # tr(Σ⁻¹ C)
    return -0.5 * (w.square().sum(-1) + trace) - 0.5 * _logdet_tril(scale_tril)


def _mean_field_moments(q: Independent) -> tuple[Tensor, Tensor]:
    if not (isinstance(q.base_dist, Normal) and q.reinterpreted_batch_ndims == 2):
        raise NotImplementedError
    return q.base_dist.loc, torch.diag_embed(q.base_dist.scale.square())


@register_kl(GaussMarkovChain, GaussMarkovChain)
def _kl_gauss_chain(q: GaussMarkovChain, p: GaussMarkovChain) -> Tensor:
    return -q.entropy() - p.expected_log_prob(*q.moments())


@register_kl(Independent, GaussMarkovChain)
def _kl_mean_field_gauss_chain(q: Independent, p: GaussMarkovChain) -> Tensor:
    means, covs = _mean_field_moments(q)
    return -q.base_dist.entropy().sum((-2, -1)) - p.expected_log_prob(means, covs)
