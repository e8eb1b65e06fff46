r"""The particle filter (sequential Monte Carlo) over the latent paths of a Markov model, as a
plain function: a proposal q(z_t | z_{t-1}, x) and a target p(z_t | z_{t-1}) p(x_t | z_t) per
step, resampling when the effective sample size falls below a threshold.

Its log Ẑ is the log of an unbiased estimate of p(x); with resampling switched off it is the
importance-weighted (IWAE) bound over whole paths, drawn in the same order from the same random
numbers. The FIVO objective (:mod:`elbox.objectives.sequence`) and
``log_evidence(method="smc")`` call it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from elbox._validation import check_number, check_positive_int

__all__ = ["RESAMPLING", "ParticleFilter", "particle_filter", "resample_indices"]

#: How particles are resampled: ``"never"`` (importance sampling of whole paths),
#: ``"multinomial"`` or ``"systematic"``.
RESAMPLING = ("never", "multinomial", "systematic")


class ParticleFilter(NamedTuple):
    """What a run of the particle filter returns.

    Attributes:
        log_z: log Ẑ, ``[B]``: the sum of the increments.
        log_increments: log p̂(x_t | x_{<t}), ``[B, T]`` (zero past each end).
        ess: The effective sample size after weighting at each step, ``[B, T]``.
        resampled: Whether the particles were resampled after step t, ``[B, T]``.
        score: The resampling's score-function surrogate (zero in value) when asked for, else None.
        particles: The particles at each sequence's last step, ``[S, B, D]``, and
        log_weights: their normalized log-weights ``[S, B]``: the filtering distribution
            p(z_T | x_{1:T}) as a weighted sample (what a forecast starts from).
    """

    log_z: Tensor
    log_increments: Tensor
    ess: Tensor
    resampled: Tensor
    score: Tensor | None = None
    particles: Tensor | None = None
    log_weights: Tensor | None = None


def resample_indices(log_w: Tensor, method: str) -> Tensor:
    """Ancestor indices ``[S, B]`` drawn from normalized log-weights ``[S, B]``: multinomial (S
    independent draws) or systematic (one uniform, S evenly spaced points on the CDF)."""
    S, B = log_w.shape
    w = log_w.detach().exp().T  # [B, S]
    if method == "multinomial":
        return torch.multinomial(w, S, replacement=True).T
    cdf = w.cumsum(-1)
    cdf = cdf / cdf[:, -1:]  # exactly 1 at the end
    u = (torch.rand(B, 1, dtype=w.dtype, device=w.device) + torch.arange(S, dtype=w.dtype, device=w.device)) / S
    return torch.searchsorted(cdf, u).clamp_max(S - 1).T


def particle_filter(
    propose: Callable[[int, Tensor], tuple[Tensor, Tensor]],
    log_target: Callable[[int, Tensor, Tensor], Tensor],
    initial: Tensor,
    mask: Tensor,
    num_samples: int,
    *,
    resample: str = "systematic",
    ess_threshold: float = 0.5,
    resampling_gradient: bool = False,
) -> ParticleFilter:
    r"""Sequential Monte Carlo with the guide as proposal.

    At each step t every particle is extended by the proposal and weighted by

    .. math:: \alpha_t = \frac{p(z_t \mid z_{t-1})\, p(x_t \mid z_t)}{q(z_t \mid z_{t-1}, x)}, \qquad
              \hat p(x_t \mid x_{<t}) = \sum_s \bar w^s_{t-1} \alpha^s_t, \qquad
              \log \hat Z = \sum_t \log \hat p(x_t \mid x_{<t}),

    with :math:`\bar w` the normalized weights; when the effective sample size
    1 / Σ_s (w̄^s)² falls below ``ess_threshold`` · S the particles are resampled (per sequence)
    and the weights reset to uniform. Ẑ is unbiased for p(x); log Ẑ is the FIVO bound (Maddison
    et al. 2017; Le et al. 2018; Naesseth et al. 2018). With ``resample="never"`` it is the IWAE
    bound over whole paths.

    The gradient of log Ẑ through the particles is pathwise; the resampling's discrete choices
    carry the score-function term, which is dropped (as those papers do) unless
    ``resampling_gradient``: then ``score`` is the surrogate Σ_t log P(ancestors at t) ·
    (log Ẑ − log Ẑ_{1:t}), zero in value, for multinomial resampling.

    Args:
        propose: ``propose(t, z_prev) -> (z_t, log q(z_t | z_{t-1}))``, ``[S, B, D]`` and ``[S, B]``.
        log_target: ``log_target(t, z_prev, z_t) -> log p(z_t | z_{t-1}) + log p(x_t | z_t)``, ``[S, B]``.
        initial: z_0, ``[S, B, D]``.
        mask: ``[B, T]``, the steps that exist (a prefix mask).
        num_samples: S, the particles per sequence.
        resample: ``"systematic"``, ``"multinomial"`` or ``"never"``.
        ess_threshold: Resample when ESS < ess_threshold · S (1: at every step).
        resampling_gradient: Add the resampling's score-function surrogate.

    Returns:
        A :class:`ParticleFilter`.

    References:
        Filtering Variational Objectives (Maddison et al., 2017), https://arxiv.org/abs/1705.09279;
        Auto-Encoding Sequential Monte Carlo (Le et al., 2018), https://arxiv.org/abs/1705.10306;
        Variational Sequential Monte Carlo (Naesseth et al., 2018), https://arxiv.org/abs/1705.11140
    """
    S = check_positive_int(num_samples, "num_samples")
    if resample not in RESAMPLING:
        raise ValueError(f"resample must be one of {RESAMPLING}; received {resample!r}")
    ess_threshold = check_number(ess_threshold, "ess_threshold", minimum=0.0)
    if ess_threshold > 1:
        raise ValueError(f"ess_threshold is a fraction of the particles, in [0, 1]; received {ess_threshold}")
    if resampling_gradient and resample == "systematic":
        raise ValueError("resampling_gradient=True needs resample='multinomial' (the probability of a systematic "
                         "draw's ancestors is not a product over particles)")  # fmt: skip
    B, T = mask.shape
    lengths = mask.sum(-1)
    z = initial
    log_w = initial.new_full((S, B), -math.log(S))  # normalized log-weights, [S, B]
    increments, ess_steps, resampled_steps, scores = [], [], [], []
    arange = torch.arange(S, device=mask.device).unsqueeze(-1).expand(S, B)
    last = initial
    for t in range(T):
        keep = mask[:, t]  # [B]
        z_new, log_q = propose(t, z)
        log_alpha = torch.where(keep, log_target(t, z, z_new) - log_q, 0.0)  # [S, B]
        z = z_new
        # each sequence's particles at its own last step (never resampled after it; steps past it draw anew)
        last = torch.where((t == lengths - 1).view(1, B, *([1] * (z.dim() - 2))), z, last)
        unnormalized = log_w + log_alpha
        increment = unnormalized.logsumexp(0)  # log p̂(x_t | x_<t), [B]
        log_w = unnormalized - increment
        increments.append(torch.where(keep, increment, 0.0))
        ess = 1.0 / (2 * log_w.detach()).exp().sum(0)  # [B]
        ess_steps.append(ess)
        # resample where the ESS is low, except after a sequence's last step (it changes nothing)
        due = keep & (t < lengths - 1) & (ess < ess_threshold * S) if resample != "never" else torch.zeros_like(keep)
        resampled_steps.append(due)
        if bool(due.any()):
            ancestors = torch.where(due, resample_indices(log_w, resample), arange)  # [S, B]
            if resampling_gradient:
                scores.append(torch.where(due, log_w.gather(0, ancestors).sum(0), 0.0))
            z = z.gather(0, ancestors.unsqueeze(-1).expand_as(z))
            log_w = torch.where(due, torch.full_like(log_w, -math.log(S)), log_w)
        elif resampling_gradient:
            scores.append(torch.zeros_like(increment))
    log_increments = torch.stack(increments, -1)  # [B, T]
    log_z = log_increments.sum(-1)
    score = None
    if resampling_gradient:
        # each step's ancestor choice scored by the log Ẑ that follows it (what precedes it is a baseline)
        after = (log_z.unsqueeze(-1) - log_increments.cumsum(-1)).detach()  # [B, T]
        surrogate = (torch.stack(scores, -1) * after).sum(-1)
        score = surrogate - surrogate.detach()
    return ParticleFilter(log_z, log_increments, torch.stack(ess_steps, -1), torch.stack(resampled_steps, -1), score,
                          last, log_w)  # fmt: skip
