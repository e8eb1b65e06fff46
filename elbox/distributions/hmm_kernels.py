"""The exact kernels of hidden Markov models, as plain functions: the forward algorithm
(scaled, in chunks for long sequences, or in log space), log p(x) by a balanced tree of matrix
products, and forward–backward.

Every function takes the chain's logits (π ``[K]``, A ``[K, K]``, rows normalized by softmax)
and the emissions' log-probabilities log p(x_t | z_t = k) ``[B, T, K]``, zero past each
sequence's end and at missing steps (a missing observation says nothing about the state);
:class:`~elbox.models.HMM` calls them, and so can any model with a discrete Markov latent chain.
Which algorithm runs is decided by one cost rule, :func:`product_tree_pays`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from elbox.distributions import _compiled

__all__ = [
    "ForwardBackward",
    "chunk_length",
    "forward",
    "forward_backward",
    "hmm_log_evidence",
    "product_tree_pays",
]


class ForwardBackward(NamedTuple):
    """Forward–backward's output: the filtered p(z_t | x_{1:t}) as probabilities ``filtered`` or,
    where the pass ran in log space (structural zeros, underflow), as ``log_filtered`` (the
    other is None), ``[B, T, K]``; the smoothed ``marginals`` p(z_t | x) ``[B, T, K]`` (uniform
    past each end); the expected ``transition_counts`` between observed steps ``[B, K, K]``; and
    ``log_norm``, log p(x_t | x_{<t}) ``[B, T]``, whose sum over t is log p(x)."""

    filtered: Tensor | None
    log_filtered: Tensor | None
    marginals: Tensor
    transition_counts: Tensor
    log_norm: Tensor
    #: The smallest filtered probability (0-dim), where the pass had it at no cost; else None.
    smallest_filtered: Tensor | None = None


class LinearEmissions(NamedTuple):
    """Log-emissions linear in moment features of the frames, as Gaussian ones are:
    log p(x_t | z_t = k) = Σ_f W[f, k] φ_f(x_t), φ = (1, x_c, x_c[rows] ⊙ x_c[cols]) for the
    frames x_c less a centre (:meth:`~elbox.models.GaussianMixture._weights` makes W). The kernels
    take them in place of the ``[B, T, K]`` tensor: the compiled forward pass computes them inside
    its loop, a block of sequences at a time, and never stores them; every other path
    materializes them (:meth:`log_prob`). Only for batches whose every step is observed."""

    frames: Tensor  #: ``[D, T, B]`` (the batch innermost)
    centre: Tensor  #: ``[D]``, subtracted from every frame
    rows: Tensor  #: the second moments' coordinates, ``[M]`` (int64)
    cols: Tensor
    weights: Tensor  #: ``[1 + D + M, K]``

    @property
    def shape(self) -> torch.Size:
        """``[B, T, K]``, as the tensor's."""
        D, T, B = self.frames.shape
        return torch.Size([B, T, self.weights.shape[1]])

    def log_prob(self) -> Tensor:
        """The log-emissions ``[B, T, K]`` (a view of a ``[K, T, B]`` tensor)."""
        from elbox.models.mixture import moment_features

        D, T, B = self.frames.shape
        centred = self.frames.reshape(D, T * B) - self.centre.unsqueeze(-1)
        features = moment_features(centred, self.rows, self.cols)
        return (self.weights.T @ features).view(-1, T, B).permute(2, 1, 0)


def _materialized(log_e: Tensor | LinearEmissions) -> Tensor:
    return log_e.log_prob() if isinstance(log_e, LinearEmissions) else log_e


def _compiled_inputs(initial_logits: Tensor, transition_logits: Tensor, log_e: Tensor | LinearEmissions) -> bool:
    """The compiled kernels' rule (:func:`elbox.distributions._compiled.use_compiled`) on these inputs."""
    tensors = (log_e.frames, log_e.centre, log_e.weights) if isinstance(log_e, LinearEmissions) else (log_e,)
    return _compiled.use_compiled(initial_logits, transition_logits, *tensors)


def emissions_batch_last(B: int) -> bool:
    """Whether the kernels would read a batch of ``B`` sequences' log-emissions with the batch
    innermost (the compiled passes by lanes, :func:`elbox.distributions._compiled.by_lanes`, where
    no gradient is being recorded): a model that computes them laid out as ``[K, T, B]`` and hands
    over the ``[B, T, K]`` view (``permute(2, 1, 0)``) spares the kernels a transposition. Any
    layout gives the same values."""
    return not torch.is_grad_enabled() and _compiled.compiled_enabled() and _compiled.by_lanes(B)


def product_tree_pays(B: int, K: int) -> bool:
    """The cost rule: batched K × K products (B K³ work per step, one call per level or chunk)
    against the loop over time (B K² per step, but one call per step, about 14 µs each); measured
    on 2 cores, the products win while B K³ < 15,000 + 1.4 B K² (one or a few long sequences,
    few states)."""
    return B * K**3 < 15_000 + 1.4 * B * K**2


def chunk_length(B: int, T: int, K: int, differentiable: bool = False) -> int:
    """The chunk length for forward–backward over long sequences (0: the plain loop over time):
    chunks of √T steps where the products pay (:func:`product_tree_pays`) and the sequence is
    long enough for chunking to pay: 2,048 steps, or 64 where a gradient is taken through the
    pass (``differentiable``; measured on 2 cores, K = 8, the marginals' and log p's gradient:
    3.7 ms either way at 50 steps, 5.1 against 7.1 ms at 100, 16 against 47 ms for 4 × 500,
    40 against 179 ms for 4 × 1,500, where the loop's backward is another T steps of Python)."""
    if T < (64 if differentiable else 2048) or not product_tree_pays(B, K):
        return 0
    return math.isqrt(T - 1) + 1


def forward(initial_logits: Tensor, transition_logits: Tensor, log_e: Tensor) -> tuple[Tensor, Tensor]:
    """The forward pass: filtered p(z_t | x_{1:t}) ``[B, T, K]`` and the log normalizers
    log p(x_t | x_{1:t-1}) ``[B, T]``, whose sum over t is log p(x). Scaled probabilities (a
    compiled loop where no gradient is wanted, :mod:`elbox.distributions._compiled`; else in
    chunks for long sequences, :func:`chunk_length`); in log space where they underflow."""
    if _compiled_inputs(initial_logits, transition_logits, log_e):
        result = _compiled.hmm_forward(initial_logits, transition_logits, log_e)
        if result is not None:
            return result
    log_e = _materialized(log_e)
    shift = log_e.amax(-1, keepdim=True)  # [B, T, 1]
    e = (log_e - shift).exp()  # [B, T, K], each step's largest entry is 1
    pi, A = initial_logits.softmax(-1), transition_logits.softmax(-1)
    differentiable = _compiled.wants_gradient(initial_logits, transition_logits, log_e)
    chunk = chunk_length(*log_e.shape, differentiable=differentiable)
    if chunk:
        alpha, c = forward_chunked(pi, A, e, chunk)
    else:
        a = pi * e[:, 0]
        c = a.sum(-1, keepdim=True)
        alpha, norms = [a / c], [c]
        for t in range(1, e.shape[1]):
            a = (alpha[-1] @ A) * e[:, t]  # [B, K]
            c = a.sum(-1, keepdim=True)
            alpha.append(a / c)
            norms.append(c)
        alpha, c = torch.stack(alpha, 1), torch.cat(norms, -1)
    log_c = c.log() + shift.squeeze(-1)  # [B, T]
    if not torch.isfinite(log_c).all():  # scaled probabilities underflowed (α is finite where c is)
        return forward_log_space(initial_logits, transition_logits, log_e)  # redo in log space
    return alpha, log_c


def forward_chunked(pi: Tensor, A: Tensor, e: Tensor, L: int) -> tuple[Tensor, Tensor]:
    r"""The forward pass over ``e`` ``[B, T, K]`` (scaled emission probabilities) in chunks of
    L steps, about 3√T batched calls instead of T: (1) each chunk's transfer matrix
    Q_c = Π_t A diag(e_t), for all chunks at once, its rows scaled to a largest entry of 1
    (their logs carried); (2) the filtered distribution at each chunk's start, chunk by chunk
    from the initial one, weighting Q_c's rows in log space; (3) the ordinary recursion inside
    every chunk at once, from those starts. Returns the filtered α ``[B, T, K]`` and the
    normalizers of the scaled emissions ``[B, T]``."""
    B, T, K = e.shape
    a = pi * e[:, 0]
    c0 = a.sum(-1, keepdim=True)
    start = first = a / c0
    n = T - 1
    C = -(-n // L)
    steps = torch.cat([e[:, 1:], e.new_ones(B, C * L - n, K)], 1).view(B, C, L, K)  # past the end: e = 1
    Q = torch.eye(K, dtype=e.dtype, device=e.device).expand(B, C, K, K)
    log_rows = e.new_zeros(B, C, K)
    for j in range(L):
        Q = (Q @ A) * steps[:, :, j].unsqueeze(-2)
        top = Q.amax(-1, keepdim=True)
        Q = Q / top
        log_rows = log_rows + top.squeeze(-1).log()
    starts = []
    for chunk in range(C):
        starts.append(start)
        weight = start.log() + log_rows[:, chunk]
        weight = (weight - weight.amax(-1, keepdim=True)).exp()
        a = (weight.unsqueeze(-2) @ Q[:, chunk]).squeeze(-2)
        start = a / a.sum(-1, keepdim=True)
    previous = torch.stack(starts, 1)  # [B, C, K]
    alphas, norms = [], []
    for j in range(L):
        a = (previous @ A) * steps[:, :, j]
        norm = a.sum(-1, keepdim=True)
        previous = a / norm
        alphas.append(previous)
        norms.append(norm)
    alpha = torch.stack(alphas, 2).reshape(B, C * L, K)[:, :n]
    c = torch.cat(norms, -1).reshape(B, C * L)[:, :n]
    return torch.cat([first.unsqueeze(1), alpha], 1), torch.cat([c0, c], 1)


def backward_chunked(A: Tensor, ratio: Tensor, alpha: Tensor, L: int) -> tuple[Tensor, Tensor]:
    r"""The backward pass β_{t-1} = A (r_t ⊙ β_t), β = 1 past the end, in chunks of L steps:
    each chunk's transfer G_c = Π_t A diag(r_t) with its rows scaled (their logs carried),
    β at the chunk ends from the last chunk back, each rescaled so that α_t · β_t = 1 (which
    the exact β satisfies), then the recursion inside every chunk at once. Returns β and
    w = r ⊙ β, ``[B, T, K]``."""
    B, T, K = ratio.shape
    C = -(-T // L)
    steps = torch.cat([ratio, ratio.new_ones(B, C * L - T, K)], 1).view(B, C, L, K)  # past the end: r = 1
    G = torch.eye(K, dtype=ratio.dtype, device=ratio.device).expand(B, C, K, K)
    log_rows = ratio.new_zeros(B, C, K)  # G = diag(exp(log_rows)) G', the scales on the left, where they commute
    for j in range(L):
        G = (G @ A) * steps[:, :, j].unsqueeze(-2)
        top = G.amax(-1, keepdim=True)
        G = G / top
        log_rows = log_rows + top.squeeze(-1).log()
    ends = [ratio.new_ones(B, K)]  # β at the last chunk's end
    for chunk in range(C - 2, -1, -1):  # β at chunk c's end = G_{c+1} β at chunk c+1's end
        log_b = (G[:, chunk + 1] @ ends[-1].unsqueeze(-1)).squeeze(-1).log() + log_rows[:, chunk + 1]
        b = (log_b - log_b.amax(-1, keepdim=True)).exp()
        ends.append(b / (alpha[:, (chunk + 1) * L - 1] * b).sum(-1, keepdim=True))
    current = torch.stack(ends[::-1], 1)  # [B, C, K]
    betas, ws = [], []
    for j in range(L - 1, -1, -1):
        w = steps[:, :, j] * current
        betas.append(current)
        ws.append(w)
        current = w @ A.T
    beta = torch.stack(betas[::-1], 2).reshape(B, C * L, K)[:, :T]
    return beta, torch.stack(ws[::-1], 2).reshape(B, C * L, K)[:, :T]


def forward_log_space(
    initial_logits: Tensor, transition_logits: Tensor, log_e: Tensor, log_values: bool = False
) -> tuple[Tensor, Tensor]:
    """:func:`forward` in log space: exact with structural zeros and where scaled probabilities
    underflow. Returns the filtered distributions (their logs with ``log_values``) and log p(x_t | x_{<t})."""
    log_A = transition_logits.log_softmax(-1)
    log_a = initial_logits.log_softmax(-1) + log_e[:, 0]
    log_alpha, log_c = [], []
    for t in range(log_e.shape[1]):
        if t:
            log_a = (log_alpha[-1].unsqueeze(-1) + log_A).logsumexp(-2) + log_e[:, t]
        norm = log_a.logsumexp(-1, keepdim=True)
        log_alpha.append(log_a - norm)
        log_c.append(norm)
    log_alpha = torch.stack(log_alpha, 1)
    return (log_alpha if log_values else log_alpha.exp()), torch.cat(log_c, -1)


def hmm_log_evidence(initial_logits: Tensor, transition_logits: Tensor, log_e: Tensor) -> Tensor:
    """log p(x), ``[B]``: by a balanced tree of matrix products (O(log T) sequential steps,
    :func:`log_evidence_by_products`) where the products pay (:func:`product_tree_pays`), else
    by the forward algorithm. The two agree to rounding (``tests/test_sequence_models.py``).
    Without a gradient, the compiled forward pass (:mod:`elbox.distributions._compiled`); with
    one, the compiled forward–backward pass and its closed-form gradient
    (:class:`_CompiledLogEvidence`)."""
    B, T, K = log_e.shape
    if _compiled_inputs(initial_logits, transition_logits, log_e):
        value = _compiled.hmm_log_evidence(initial_logits, transition_logits, log_e)
        if value is not None:
            return value
    log_e = _materialized(log_e)
    inputs = (initial_logits, transition_logits, log_e)
    if (_compiled.wants_gradient(*inputs) and initial_logits.dim() == 1
            and transition_logits.dim() == 2 and _compiled.use_compiled(*inputs, differentiable=True)):  # fmt: skip
        try:
            return _CompiledLogEvidence.apply(initial_logits, transition_logits, log_e)
        except _Declined:  # underflow or overflow: the torch kernels below, in log space where needed
            pass
    if T > 1 and product_tree_pays(B, K):
        value = log_evidence_by_products(initial_logits, transition_logits, log_e, chunk_length(B, T, K))
        if bool(torch.isfinite(value).all()):
            return value
    if T > 1 and not chunk_length(B, T, K) and not _compiled.wants_gradient(*inputs):
        value = _log_evidence_forward(initial_logits, transition_logits, log_e)
        if value is not None:
            return value
    return forward(initial_logits, transition_logits, log_e)[1].sum(-1)


class _Declined(Exception):
    """The compiled pass declined these inputs (a normalizer underflowed, a ratio overflowed)."""


class _CompiledLogEvidence(torch.autograd.Function):
    r"""log p(x) ``[B]`` over all T steps by the compiled forward–backward pass, with its gradient
    in closed form from the same pass (Baum–Welch's identities): ∂ log p / ∂ log e_t(k) = γ_t(k),
    ∂ / ∂ initial_logits = γ_1 − π, ∂ / ∂ transition_logits_ij = ξ_ij − A_ij Σ_j' ξ_ij' for the
    smoothed marginals γ and the expected transitions ξ (each weighted by the incoming gradient
    of its sequence). No step of it is Python; ``tests/test_compiled.py`` holds it to autograd
    through the torch kernels. Differentiable once: a backward pass that builds a graph
    (``create_graph=True``) raises, and ``ELBOX_COMPILED=0`` takes the torch kernels instead."""

    @staticmethod
    def forward(ctx, initial_logits, transition_logits, log_e):
        B, T, _ = log_e.shape
        every = torch.ones(B, T, dtype=torch.bool)  # the gradient of every entry of log_e, padding too
        result = _compiled.hmm_forward_backward(initial_logits, transition_logits, log_e, every, positive=False)
        if result is None:
            raise _Declined
        _, gamma, counts, log_c, _ = result
        ctx.save_for_backward(initial_logits, transition_logits, gamma, counts)
        return log_c.sum(-1)

    @staticmethod
    def backward(ctx, grad):
        _compiled.refuse_graph("HMM log-evidence", "γ and ξ come from a compiled pass")
        initial_logits, transition_logits, gamma, counts = ctx.saved_tensors
        d_log_e = gamma * grad[:, None, None]
        first = grad @ gamma[:, 0]  # Σ_b g_b γ_b1, [K]
        d_initial = first - initial_logits.softmax(-1) * grad.sum()
        xi = (counts * grad[:, None, None]).sum(0)  # [K, K]
        d_transition = xi - transition_logits.softmax(-1) * xi.sum(-1, keepdim=True)
        return d_initial, d_transition, d_log_e


def _log_evidence_forward(initial_logits: Tensor, transition_logits: Tensor, log_e: Tensor) -> Tensor | None:
    """log p(x) ``[B]`` by the scaled forward pass without its filtered distributions: two
    operations a step (a product and a scaling in place), the scale taken out every few steps
    rather than at each (16 in float64, 4 in lower precision). Each step's emissions are scaled to
    a largest entry of 1 and A's rows sum to 1, so the mass only falls between scalings. A state
    whose share of the mass is below tiny / c (c the mass before its scaling) underflows to 0,
    where the step-by-step pass keeps shares down to tiny (the dtype's smallest normal number):
    where any c fell below √tiny (1e-154 in float64, 1e-19 in float32), so that shares the full
    pass would keep above √tiny could be lost, it returns None and the caller runs the full pass.
    No gradient (it writes in place)."""
    every = 16 if log_e.dtype == torch.float64 else 4
    shift = log_e.amax(-1, keepdim=True)  # [B, T, 1]
    e = (log_e - shift).exp()
    A = transition_logits.softmax(-1)
    a = initial_logits.softmax(-1) * e[:, 0]
    scales = []
    for t in range(1, e.shape[1]):
        if t % every == 0:
            c = a.sum(-1, keepdim=True)
            scales.append(c)
            a = a / c
        a = torch.mm(a, A).mul_(e[:, t])
    scales.append(a.sum(-1, keepdim=True))
    scales = torch.cat(scales, -1)
    if not bool((scales >= torch.finfo(scales.dtype).tiny ** 0.5).all()):
        return None
    return scales.log().sum(-1) + shift.squeeze(-1).sum(-1)


def log_evidence_by_products(initial_logits: Tensor, transition_logits: Tensor, log_e: Tensor, L: int = 0) -> Tensor:
    r"""log p(x) = log(α₁ᵀ M₂ ⋯ M_T 1) with M_t = A diag(e_t), the product taken as a balanced
    tree: pairs multiplied together in one batched call per level, each product divided by
    its largest entry (whose log is carried), so log₂ T levels instead of T steps. Every
    entry is non-negative: no cancellation, and the relative error grows with the depth
    (log T), not with T. Steps past a sequence's end have e_t = 1, so M_t = A and A 1 = 1:
    they do not change the product. Not finite where probabilities underflow; the caller
    then takes the forward algorithm, which falls back to log space.

    With ``L`` (a chunk length, :func:`chunk_length`), the tree's leaves are the products of L
    consecutive steps, accumulated step by step for all chunks at once (Q ← Q A diag(e), one
    matrix product of all chunks' rows by A): no ``[B, T, K, K]`` array is formed, and the
    tree has log₂ (T / L) levels."""
    shift = log_e.amax(-1, keepdim=True)  # [B, T, 1]
    e = (log_e - shift).exp()  # [B, T, K]
    first = initial_logits.softmax(-1) * e[:, 0]  # [B, K]
    A = transition_logits.softmax(-1)
    B, T, K = e.shape
    log_scale = shift.sum((-2, -1))  # [B]
    C = (T - 1) // L if L else 0
    if C > 1:
        steps = e[:, 1 : 1 + C * L].view(B, C, L, K).unbind(2)  # L × [B, C, K]
        Q = A * steps[0].unsqueeze(-2)  # [B, C, K, K]
        tops = []
        for j in range(1, L):
            Q = (Q @ A) * steps[j].unsqueeze(-2)
            top = Q.amax((-2, -1), keepdim=True)
            Q = Q / top
            tops.append(top)
        log_scale = log_scale + torch.stack(tops).log().sum((0, 2, 3, 4))
        rest = A * e[:, 1 + C * L :].unsqueeze(-2)  # the steps after the last whole chunk, [B, r, K, K]
        m = torch.cat([Q, rest], 1)
    else:
        m = A * e[:, 1:].unsqueeze(-2)  # [B, T-1, K, K]
    while m.shape[1] > 1:
        if m.shape[1] % 2:  # an odd one out waits for the next level, paired with the identity
            eye = torch.eye(m.shape[-1], dtype=m.dtype, device=m.device).expand(m.shape[0], 1, -1, -1)
            m = torch.cat([m, eye], 1)
        m = m[:, 0::2] @ m[:, 1::2]
        top = m.amax((-2, -1), keepdim=True)  # [B, n, 1, 1]
        m = m / top
        log_scale = log_scale + top.log().sum((1, 2, 3))
    total = (first.unsqueeze(-2) @ m[:, 0]).sum((-2, -1))  # α₁ᵀ P 1, [B]
    return total.log() + log_scale


def forward_backward(
    initial_logits: Tensor, transition_logits: Tensor, log_e: Tensor, mask: Tensor, *, zeros_ok: bool = False
) -> ForwardBackward:
    """The smoothed marginals, the expected transitions and log p(x_t | x_{<t}) of a padded batch
    whose sequences end where ``mask`` ``[B, T]`` does. Scaled probabilities (a compiled loop where
    no gradient is wanted, :mod:`elbox.distributions._compiled`; else in chunks for long
    sequences); the whole pass in log space where a filtered probability is zero (structurally or
    by underflow) or a ratio overflows. With ``zeros_ok`` (a caller that takes the exact log of
    the filtered probabilities elsewhere when it needs them, as :class:`~elbox.models.HMM` does),
    the compiled pass keeps zero filtered probabilities: the marginals and expected transitions
    are exact to the smallest normal number either way."""
    if _compiled_inputs(initial_logits, transition_logits, log_e):
        result = _compiled.hmm_forward_backward(initial_logits, transition_logits, log_e, mask,
                                                positive=not zeros_ok)  # fmt: skip
        if result is not None:
            alpha, gamma, counts, log_c, smallest = result
            return ForwardBackward(alpha, None, gamma, counts, log_c, smallest)
    log_e = _materialized(log_e)
    alpha, log_c = forward(initial_logits, transition_logits, log_e)
    if bool(alpha.amin() == 0):  # (α ≥ 0: its minimum says whether any entry is zero)
        # a filtered probability is zero, structurally or by underflow: the posterior's reverse
        # chain needs log α exactly, so the whole pass runs in log space
        return forward_backward_log_space(initial_logits, transition_logits, log_e, mask)
    ratio = (log_e - log_c.unsqueeze(-1)).exp()  # p(x_t | z_t) / p(x_t | x_{1:t-1}), [B, T, K]
    A = transition_logits.softmax(-1)
    # Backward: β_t = A (r_{t+1} β_{t+1}), kept as w_t = r_t β_t; β is 1 past the end.
    B, T, K = ratio.shape
    chunk = chunk_length(B, T, K, differentiable=_compiled.wants_gradient(initial_logits, transition_logits, log_e))
    if chunk:
        beta, w = backward_chunked(A, ratio, alpha, chunk)
    else:
        w = [ratio[:, -1]]
        beta = [torch.ones_like(alpha[:, -1])]
        for t in range(T - 2, -1, -1):
            b = w[-1] @ A.T
            beta.append(b)
            w.append(ratio[:, t] * b)
        beta.reverse()
        w.reverse()
        beta, w = torch.stack(beta, 1), torch.stack(w, 1)  # [B, T, K]
    mask = mask.unsqueeze(-1)
    if not bool(torch.isfinite(w.amax())):  # w ≥ 0, and β = w Aᵀ is finite where w is; NaN propagates
        # a ratio overflowed: an emission far likelier in a state the chain cannot be in (a
        # structural zero) than in those it can; the same recursion in log space
        return forward_backward_log_space(initial_logits, transition_logits, log_e, mask.squeeze(-1))
    gamma = torch.where(mask, alpha * beta, 1.0 / K)
    gamma = gamma / gamma.sum(-1, keepdim=True)
    # Expected transitions of the observed steps: Σ_t α_t(i) A_ij w_{t+1}(j), [B, K, K].
    counts = (alpha[:, :-1].mT @ (w[:, 1:] * mask[:, 1:])) * A if T > 1 else alpha.new_zeros(B, K, K)
    return ForwardBackward(alpha, None, gamma, counts, log_c)


def forward_backward_log_space(
    initial_logits: Tensor, transition_logits: Tensor, log_e: Tensor, mask: Tensor
) -> ForwardBackward:
    """:func:`forward_backward` in log space: exact with structural zeros, and where scaled
    probabilities underflow or overflow."""
    log_alpha, log_c = forward_log_space(initial_logits, transition_logits, log_e, log_values=True)
    log_ratio = log_e - log_c.unsqueeze(-1)  # [B, T, K]
    log_A = transition_logits.log_softmax(-1)  # [K, K], −∞ at structural zeros
    T, K = log_e.shape[1], log_e.shape[2]
    log_w = [log_ratio[:, -1]]
    log_beta = [torch.zeros_like(log_ratio[:, -1])]
    for t in range(T - 2, -1, -1):
        b = (log_A + log_w[-1].unsqueeze(-2)).logsumexp(-1)  # log Σ_j A_ij w_{t+1}(j), [B, K]
        log_beta.append(b)
        log_w.append(log_ratio[:, t] + b)
    log_beta.reverse()
    log_w.reverse()
    log_beta, log_w = torch.stack(log_beta, 1), torch.stack(log_w, 1)  # [B, T, K]
    mask = mask.unsqueeze(-1)
    log_gamma = log_alpha + log_beta
    gamma = torch.where(mask, (log_gamma - log_gamma.logsumexp(-1, keepdim=True)).exp(), 1.0 / K)
    if T > 1:  # ξ_t(i, j) = α_t(i) A_ij w_{t+1}(j) ≤ 1, summed over the observed steps
        log_xi = log_alpha[:, :-1].unsqueeze(-1) + log_A + log_w[:, 1:].unsqueeze(-2)  # [B, T-1, K, K]
        counts = torch.where(mask[:, 1:].unsqueeze(-1), log_xi.exp(), 0.0).sum(1)
    else:
        counts = log_alpha.new_zeros(len(log_alpha), K, K)
    return ForwardBackward(None, log_alpha, gamma, counts, log_c)
