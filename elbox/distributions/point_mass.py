"""The point mass δ(z − m): the "posterior" of a deterministic encoder (a plain autoencoder)."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, Normal, constraints, register_kl

from elbox._validation import check_tensor

__all__ = ["PointMass"]


class PointMass(Distribution):
    r"""All mass at ``loc``: :math:`q(z) = \delta(z - m)`, event ``[D]``.

    Against Lebesgue measure its density is infinite at m, so log q(m) = +∞, its entropy is
    −∞, and KL(δ ‖ p) = +∞ for every density p: a deterministic encoder's ELBO is −∞. elbox
    reports those infinities as they are instead of dropping the term.
    """

    arg_constraints: dict = {}
    support = constraints.independent(constraints.real, 1)
    has_rsample = True

    def __init__(self, loc: Tensor):
        self.loc = check_tensor(loc, "loc", min_dim=1)
        super().__init__(loc.shape[:-1], loc.shape[-1:], validate_args=False)

    @property
    def mean(self) -> Tensor:
        return self.loc

    @property
    def variance(self) -> Tensor:
        return torch.zeros_like(self.loc)

    def rsample(self, sample_shape=()) -> Tensor:
        return self.loc.expand(*torch.Size(sample_shape), *self.loc.shape)

    def log_prob(self, z: Tensor) -> Tensor:
        at = (z == self.loc).all(-1)
        return torch.where(at, math.inf, -math.inf).to(self.loc.dtype)

    def entropy(self) -> Tensor:
        return torch.full(self.batch_shape, -math.inf, dtype=self.loc.dtype, device=self.loc.device)


@register_kl(PointMass, Independent)
@register_kl(PointMass, Normal)
def _kl_point_mass(q: PointMass, p) -> Tensor:
    return torch.full(q.batch_shape, math.inf, dtype=q.loc.dtype, device=q.loc.device)
