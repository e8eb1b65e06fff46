"""Parametric variational families: normal (mean-field, full-rank), categorical, Beta."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import Beta as _Beta
from torch.distributions import Categorical as _Categorical
from torch.distributions import Independent, MultivariateNormal, Normal

from elbox._validation import as_data, check_number, check_positive_int
from elbox.distributions._gaussian import raw_to_tril
from elbox.guides.base import Guide

__all__ = ["Beta", "Categorical", "FullRankNormal", "MeanFieldNormal"]


def _init_param(shape: tuple[int, ...], num_points: int | None, value: Tensor) -> nn.Parameter:
    lead = () if num_points is None else (num_points,)
    return nn.Parameter(value.expand(torch.Size(lead + shape)).clone())


def _latent_shape(latent_dim) -> tuple[int, ...]:
    if isinstance(latent_dim, tuple | list | torch.Size):
        return tuple(check_positive_int(d, "latent_dim") for d in latent_dim)
    return (check_positive_int(latent_dim, "latent_dim"),)


def _initial_loc(init_loc, shape, num_points: int | None) -> Tensor:
    """Zeros, or ``init_loc`` of shape [*shape] (shared) or [P, *shape] (one row per local q)."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    if init_loc is None:
        return torch.zeros(shape)
    loc = as_data(init_loc, "init_loc", ndim=(len(shape), len(shape) + 1), dtype=torch.get_default_dtype())
    if tuple(loc.shape[-len(shape):]) != shape or (loc.dim() > len(shape) and loc.shape[0] != num_points):
        raise ValueError(
            f"init_loc must have shape {list(shape)} or [num_points, {', '.join(map(str, shape))}]; "
            f"received {list(loc.shape)}"
        )
    return loc


class MeanFieldNormal(Guide):
    r"""A diagonal Gaussian :math:`q(z) = \prod_d \mathcal{N}(z_d; m_d, s_d^2)`.

    Args:
        latent_dim: D, or a latent shape such as ``(T, D)`` for a sequence of states (the
            mean-field q over a :class:`~elbox.models.LinearGaussianSSM`'s trajectory).
        num_points: None for one global q, or the training set's size for a local q per point.
        init_scale: The initial s_d.
        init_loc: The initial means, ``[*shape]`` or ``[num_points, *shape]`` (default zeros).
    """

    def __init__(self, latent_dim, num_points: int | None = None, init_scale: float = 1.0, init_loc=None):
        super().__init__(num_points)
        init_scale = check_number(init_scale, "init_scale", minimum=0.0, strict=True)
        shape = _latent_shape(latent_dim)
        self.loc = _init_param(shape, self.num_points, _initial_loc(init_loc, shape, self.num_points))
        self.log_scale = _init_param(shape, self.num_points, torch.tensor(math.log(init_scale)))

    def forward(self, x: Tensor, index: Tensor | None = None) -> Independent:
        loc, log_scale = self._rows(self.loc, x, index), self._rows(self.log_scale, x, index)
        return Independent(Normal(loc, log_scale.exp()), self.loc.dim() - (1 if self.is_local else 0))


class FullRankNormal(Guide):
    r"""A Gaussian with a full covariance :math:`q(z) = \mathcal{N}(z; m, L L^\top)`.

    Args:
        latent_dim: D.
        num_points: None for one global q, or the training set's size for a local q per point.
        init_scale: The initial diagonal of L.
        init_loc: The initial means, ``[D]`` or ``[num_points, D]`` (default zeros).
    """

    def __init__(self, latent_dim: int, num_points: int | None = None, init_scale: float = 1.0, init_loc=None):
        init_scale = check_number(init_scale, "init_scale", minimum=0.0, strict=True)
        super().__init__(num_points)
        D = check_positive_int(latent_dim, "latent_dim")
        self.loc = _init_param((D,), self.num_points, _initial_loc(init_loc, (D,), self.num_points))
        raw = math.log(init_scale) * torch.eye(D)  # log-diagonal, zero off-diagonal
        self._raw = _init_param((D, D), self.num_points, raw)

    @property
    def scale_tril(self) -> Tensor:
        return raw_to_tril(self._raw)

    def forward(self, x: Tensor, index: Tensor | None = None) -> MultivariateNormal:
        loc = self._rows(self.loc, x, index)
        return MultivariateNormal(loc, scale_tril=raw_to_tril(self._rows(self._raw, x, index)))


class Categorical(Guide):
    """A categorical q over K values (a discrete latent such as a mixture component), or a
    mean-field product of them over ``event_shape`` (an HMM's state path: ``event_shape=(T,)``).

    Args:
        num_categories: K.
        num_points: None for one global q, or the training set's size for a local q per point.
        init_logits: ``[*event_shape, K]`` or ``[num_points, *event_shape, K]`` (default uniform).
        event_shape: The shape of the latent (default a single value).
    """

    def __init__(self, num_categories: int, num_points: int | None = None, init_logits=None, event_shape=()):
        super().__init__(num_points)
        K = check_positive_int(num_categories, "num_categories")
        if isinstance(event_shape, int | str) or not hasattr(event_shape, "__iter__"):
            raise TypeError(f"event_shape must be a tuple of positive integers, such as (T,); received "
                            f"{type(event_shape).__name__} {event_shape!r}")  # fmt: skip
        event = tuple(check_positive_int(d, "event_shape") for d in event_shape)
        shape = (*event, K)
        if init_logits is None:
            logits = torch.zeros(shape)
        else:
            logits = as_data(init_logits, "init_logits", ndim=(len(shape), len(shape) + 1))
            per_point = logits.dim() > len(shape)
            if tuple(logits.shape[-len(shape) :]) != shape or (per_point and logits.shape[0] != self.num_points):
                raise ValueError(
                    f"init_logits must have shape {list(shape)} or [num_points, {', '.join(map(str, shape))}]; "
                    f"received {list(logits.shape)}"
                )
        self.event_shape = event
        self.logits = _init_param(shape, self.num_points, logits.to(torch.get_default_dtype()))

    def forward(self, x: Tensor, index: Tensor | None = None):
        q = _Categorical(logits=self._rows(self.logits, x, index))
        return Independent(q, len(self.event_shape)) if self.event_shape else q


class Beta(Guide):
    """A Beta q over a probability (the coin's bias).

    Args:
        num_points: None for one global q, or the training set's size for a local q per point.
        concentration1: The initial first concentration (pseudo-count of ones).
        concentration0: The initial second concentration (pseudo-count of zeros).
    """

    def __init__(self, num_points: int | None = None, concentration1: float = 1.0, concentration0: float = 1.0):
        super().__init__(num_points)
        concentration1 = check_number(concentration1, "concentration1", minimum=0.0, strict=True)
        concentration0 = check_number(concentration0, "concentration0", minimum=0.0, strict=True)
        self.log_concentration1 = _init_param((), self.num_points, torch.tensor(math.log(concentration1)))
        self.log_concentration0 = _init_param((), self.num_points, torch.tensor(math.log(concentration0)))

    def forward(self, x: Tensor, index: Tensor | None = None) -> _Beta:
        c1 = self._rows(self.log_concentration1, x, index).exp()
        c0 = self._rows(self.log_concentration0, x, index).exp()
        return _Beta(c1, c0)
