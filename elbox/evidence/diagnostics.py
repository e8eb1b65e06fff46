r"""Diagnostics of a q beside its bound: PSIS k-hat, active units, KL per latent dimension, the
mutual information I(x; z) under q, and posterior collapse."""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, Normal, kl_divergence

from elbox._validation import as_tensor, check_distribution, check_number, check_positive_int

__all__ = [
    "PosteriorCollapseWarning",
    "active_units",
    "kl_per_dimension",
    "mutual_information",
    "psis_khat",
]

#: Log-weights whose spread is below this are constant: q is the posterior to rounding error.
_CONSTANT = 1e-9


class PosteriorCollapseWarning(UserWarning):
    """Latent dimensions whose q(z_u | x) does not depend on x: the KL pays nothing for them and
    the decoder ignores them."""


def psis_khat(log_weights: Tensor) -> Tensor:
    r"""The Pareto k-hat of the importance weights of each data point, ``[B]`` from ``[S, B]``.

    A generalized Pareto distribution is fitted to the largest weights (the M = 3√S largest,
    Vehtari et al.'s rule) by arviz-stats' PSIS; its shape k says how many moments the weights
    have (1/k of them). k < 0.5: the variance is finite and the importance estimate and its
    standard error are reliable; 0.5 ≤ k < 0.7: usable but slow; k ≥ 0.7: the estimate is
    unreliable whatever its reported standard error, because q misses mass of the posterior.
    Weights whose largest values are all equal (q is the exact posterior, or a discrete q with
    few values) have a bounded tail: k̂ = −∞.

    References:
        Pareto Smoothed Importance Sampling (Vehtari et al., 2024), https://arxiv.org/abs/1507.02646
        Yes, but Did It Work?: Evaluating Variational Inference (Yao et al., 2018),
        https://arxiv.org/abs/1802.02538
    """
    from arviz_stats.base.array import array_stats

    log_weights = as_tensor(log_weights, "log_weights", finite=False)  # −∞: a weight of zero
    if log_weights.dim() != 2 or log_weights.shape[0] < 5:
        raise ValueError(
            f"log_weights must be [S, B] with S >= 5 particles per point; received shape {list(log_weights.shape)}"
        )
    lw = log_weights.detach().double().cpu()
    S = lw.shape[0]
    khat = torch.full((lw.shape[1],), -math.inf, dtype=torch.float64)
    finite = torch.isfinite(lw).all(0)
    # The fitted tail: the 3√S largest weights (S/5 for small S), as arviz-stats takes it.
    M = int(3 * math.sqrt(S)) if S > 225 else S // 5
    tail = lw.topk(min(M + 1, S), dim=0).values  # [M + 1, B], descending
    spread = tail[0] - tail[-1]
    # A tail that is one value (constant weights, or a discrete q with few values) is bounded: k̂ = −∞.
    varied = finite & (spread > _CONSTANT * (1 + tail[0].abs()))
    if varied.any():
        # psislw takes log-likelihoods and weights by their negatives: pass −log w
        with np.errstate(divide="ignore", invalid="ignore"):  # a tail of near-equal weights
            _, k = array_stats.psislw((-lw[:, varied]).T.numpy(), r_eff=1.0, axis=-1)
        khat[varied] = torch.as_tensor(k, dtype=torch.float64).reshape(-1)
    khat[~finite] = math.inf  # a particle with zero probability under p or q
    return khat


def active_units(means: Tensor, threshold: float = 0.01, *, unit_dims: int = 0) -> tuple[int, Tensor]:
    r"""Burda et al.'s active units: dimension u is active if Cov_x(E_q[z_u | x]) > ``threshold``.

    Args:
        means: E_q[z | x] for N data points, ``[N, *latent_shape]`` (flattened to units).
        threshold: The variance above which a unit counts as active.
        unit_dims: Trailing dimensions that make one unit, their variances summed: 1 for
            categorical variables in the one-hot convention (``[N, variables, K]``: a variable is
            active if its class probabilities move with x).

    Returns:
        (the number of active units, the variance of each unit's mean across x ``[U]``).
    """
    means = as_tensor(means, "means", finite=False)
    threshold = check_number(threshold, "threshold", minimum=0.0)
    unit_dims = check_positive_int(unit_dims, "unit_dims", minimum=0)
    if means.dim() < 1 + unit_dims or means.shape[0] < 2:
        raise ValueError(f"means must be [N, *latent_shape] with N >= 2 (and unit_dims = {unit_dims} trailing "
                         f"dimensions per unit); received shape {list(means.shape)}")  # fmt: skip
    variance = means.detach().double().var(0)
    if unit_dims:
        variance = variance.sum(tuple(range(-unit_dims, 0)))
    variance = variance.reshape(-1)
    return int((variance > threshold).sum()), variance


def kl_per_dimension(q: Distribution, prior: Distribution) -> Tensor | None:
    """KL(q(z_u | x) ‖ p(z_u)) for each latent dimension u, ``[B, U]``, where both factorize
    over dimensions as diagonal normals; None otherwise."""
    check_distribution(q)
    check_distribution(prior, "prior")
    if not (isinstance(q, Independent) and isinstance(q.base_dist, Normal)):
        return None
    p = prior.base_dist if isinstance(prior, Independent) else prior
    if not isinstance(p, Normal):
        return None
    kl = kl_divergence(q.base_dist, p)  # [B, *latent_shape]
    return kl.reshape(kl.shape[0], -1)


@torch.no_grad()
def mutual_information(q: Distribution, *, chunk_size: int = 256) -> float:
    r"""An estimate of the mutual information I(x; z) under q(x, z) = p_data(x) q(z | x), from
    the N data points of q's batch:

    .. math:: I = \frac{1}{N}\sum_i \Big[\log q(z_i \mid x_i)
              - \log \frac{1}{N}\sum_j q(z_i \mid x_j)\Big], \quad z_i \sim q(z \mid x_i),

    the aggregate posterior q(z) taken as the mixture of the N q's (He et al., 2019). It is
    at most log N, so use enough points; a value near 0 means z carries nothing about x.
    """
    check_distribution(q)
    if len(q.batch_shape) != 1:
        raise ValueError(f"q must have batch shape [N], one q(z | x) per data point; received {type(q).__name__} "
                         f"with batch shape {list(q.batch_shape)}")  # fmt: skip
    N = q.batch_shape[0]
    check_positive_int(chunk_size, "chunk_size")
    z = q.sample()  # [N, *event]
    event_dims = len(q.event_shape)
    log_own = q.log_prob(z)  # [N]
    log_aggregate = []
    for begin in range(0, N, chunk_size):
        zi = z[begin : begin + chunk_size]
        cross = q.log_prob(zi.reshape(zi.shape[0], 1, *zi.shape[1:]) if event_dims else zi.unsqueeze(1))  # [c, N]
        log_aggregate.append(cross.logsumexp(1) - math.log(N))
    return float((log_own - torch.cat(log_aggregate)).mean())


def collapse_warning(active: int, units: int, total_kl: float) -> str | None:
    """The message of a posterior-collapse warning, or None: issued when some latent units are
    inactive, and as a full collapse when none is active or the KL is below 0.01 nats."""
    if active == 0 or total_kl < 0.01:
        return (
            f"posterior collapse: q(z | x) ≈ p(z) for every x ({active} of {units} units active, KL {total_kl:.3g} "
            "nats); the decoder ignores z"
        )
    if active < units:
        return (
            f"{units - active} of {units} latent units are inactive (Cov_x(E_q[z_u]) ≤ 0.01): posterior collapse in "
            "those dimensions"
        )
    return None


def warn_collapse(message: str | None) -> None:
    if message is not None:
        warnings.warn(message, PosteriorCollapseWarning, stacklevel=3)
