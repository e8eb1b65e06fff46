"""Closed-form KLs that torch's registry lacks, registered into it (not a second registry)."""

from __future__ import annotations

import torch
from torch.distributions import Independent, MultivariateNormal, Normal, kl_divergence, register_kl

__all__: list[str] = []


def _as_mvn(d: Independent) -> MultivariateNormal:
    if not isinstance(d.base_dist, Normal) or d.reinterpreted_batch_ndims != 1:
        raise NotImplementedError
    return MultivariateNormal(d.base_dist.loc, scale_tril=torch.diag_embed(d.base_dist.scale))


@register_kl(MultivariateNormal, Independent)
def _kl_mvn_diagonal(p: MultivariateNormal, q: Independent):
    return kl_divergence(p, _as_mvn(q))


@register_kl(Independent, MultivariateNormal)
def _kl_diagonal_mvn(p: Independent, q: MultivariateNormal):
    return kl_divergence(_as_mvn(p), q)
