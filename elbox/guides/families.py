"""Parametric variational families: normal (mean-field, full-rank), categorical, Beta."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import Beta as _Beta
from torch.distributions import Categorical as _Categorical
from torch.distributions import Independent, MultivariateNormal, Normal

from elbox._validation import as_data, check_positive_int
from elbox.guides.base import Guide
from elbox.models._gaussian import raw_to_tril

__all__ = ["Beta", "Categorical", "FullRankNormal", "MeanFieldNormal"]


def _init_param(shape: tuple[int, ...], num_points: int | None, value: Tensor) -> nn.Parameter:
    lead = () if num_points is None else (num_points,)
    return nn.Parameter(value.expand(torch.Size(lead + shape)).clone())


def _initial_loc(init_loc, latent_dim: int, num_points: int | None) -> Tensor:
    """Zeros, or ``init_loc`` of shape [D] (shared) or [P, D] (one row per local q)."""
    if init_loc is None:
        return torch.zeros(latent_dim)
    loc = as_data(init_loc, "init_loc", ndim=(1, 2), dtype=torch.get_default_dtype())
    if loc.shape[-1] != latent_dim or (loc.dim() == 2 and loc.shape[0] != num_points):
        raise ValueError(
            f"init_loc must have shape [{latent_dim}] or [num_points, {latent_dim}]; "
            f"received {list(loc.shape)}"
        )
    return loc


class MeanFieldNormal(Guide):
    r"""A diagonal Gaussian :math:`q(z) = \prod_d \mathcal{N}(z_d; m_d, s_d^2)`.

    Args:
        latent_dim: D.
        num_points: None for one global q, or the training set's size for a local q per point.
        init_scale: The initial s_d.
        init_loc: The initial means, ``[D]`` or ``[num_points, D]`` (default zeros).
    """

    def __init__(self, latent_dim: int, num_points: int | None = None, init_scale: float = 1.0, init_loc=None):
        super().__init__(num_points)
        D = check_positive_int(latent_dim, "latent_dim")
        self.loc = _init_param((D,), self.num_points, _initial_loc(init_loc, D, self.num_points))
        self.log_scale = _init_param((D,), self.num_points, torch.tensor(math.log(init_scale)))

    def forward(self, x: Tensor, index: Tensor | None = None) -> Independent:
        loc, log_scale = self._rows(self.loc, x, index), self._rows(self.log_scale, x, index)
        return Independent(Normal(loc, log_scale.exp()), 1)


class FullRankNormal(Guide):
    r"""A Gaussian with a full covariance :math:`q(z) = \mathcal{N}(z; m, L L^\top)`.

    Args:
        latent_dim: D.
        num_points: None for one global q, or the training set's size for a local q per point.
        init_scale: The initial diagonal of L.
        init_loc: The initial means, ``[D]`` or ``[num_points, D]`` (default zeros).
    """

    def __init__(self, latent_dim: int, num_points: int | None = None, init_scale: float = 1.0, init_loc=None):
        super().__init__(num_points)
        D = check_positive_int(latent_dim, "latent_dim")
        self.loc = _init_param((D,), self.num_points, _initial_loc(init_loc, D, self.num_points))
        raw = math.log(init_scale) * torch.eye(D)  # log-diagonal, zero off-diagonal
        self._raw = _init_param((D, D), self.num_points, raw)

    @property
    def scale_tril(self) -> Tensor:
        return raw_to_tril(self._raw)

    def forward(self, x: Tensor, index: Tensor | None = None) -> MultivariateNormal:
        loc = self._rows(self.loc, x, index)
        return MultivariateNormal(loc, scale_tril=raw_to_tril(self._rows(self._raw, x, index)))


class Categorical(Guide):
    """A categorical q over K values (a discrete latent such as a mixture component).

    Args:
        num_categories: K.
        num_points: None for one global q, or the training set's size for a local q per point.
        init_logits: ``[K]`` or ``[num_points, K]`` (default uniform).
    """

    def __init__(self, num_categories: int, num_points: int | None = None, init_logits=None):
        super().__init__(num_points)
        K = check_positive_int(num_categories, "num_categories")
        logits = torch.zeros(K) if init_logits is None else as_data(init_logits, "init_logits", ndim=(1, 2))
        if logits.shape[-1] != K or (logits.dim() == 2 and logits.shape[0] != self.num_points):
            raise ValueError(f"init_logits must have shape [{K}] or [num_points, {K}]; received {list(logits.shape)}")
        self.logits = _init_param((K,), self.num_points, logits.to(torch.get_default_dtype()))

    def forward(self, x: Tensor, index: Tensor | None = None) -> _Categorical:
        return _Categorical(logits=self._rows(self.logits, x, index))


class Beta(Guide):
    """A Beta q over a probability (the coin's bias).

    Args:
        num_points: None for one global q, or the training set's size for a local q per point.
        concentration1: The initial first concentration (pseudo-count of ones).
        concentration0: The initial second concentration (pseudo-count of zeros).
    """

    def __init__(self, num_points: int | None = None, concentration1: float = 1.0, concentration0: float = 1.0):
        super().__init__(num_points)
        if not (concentration1 > 0 and concentration0 > 0):
            raise ValueError(
                f"concentration1 and concentration0 must be positive; received {concentration1}, {concentration0}"
            )
        self.log_concentration1 = _init_param((), self.num_points, torch.tensor(math.log(concentration1)))
        self.log_concentration0 = _init_param((), self.num_points, torch.tensor(math.log(concentration0)))

    def forward(self, x: Tensor, index: Tensor | None = None) -> _Beta:
        c1 = self._rows(self.log_concentration1, x, index).exp()
        c0 = self._rows(self.log_concentration0, x, index).exp()
        return _Beta(c1, c0)
