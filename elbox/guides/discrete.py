r"""Discrete variational families in the one-hot convention: N categorical variables of K
classes as one-hot vectors ``[N, K]``, or N binary variables ``[N]``.

A model with such a latent computes with z as numbers, so a relaxed sample (a point inside the
simplex, or inside [0, 1]) goes through the same code as an exact one (a vertex): that is what
lets the Gumbel-Softmax estimators of :mod:`elbox.bounds.relaxed` differentiate through z,
while every bound elbox reports is computed on exact draws of this discrete q.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli as _Bernoulli
from torch.distributions import Independent

from elbox._validation import as_data, check_positive_int, describe
from elbox.distributions.one_hot import OneHot
from elbox.guides.base import Guide
from elbox.precision import network

__all__ = ["Bernoulli", "OneHotCategorical"]


class _Discrete(Guide):
    """Logits from an encoder (amortized), or held as parameters (one global q, or one per point)."""

    def __init__(self, shape: tuple[int, ...], encoder: nn.Module | None, num_points: int | None, init_logits):
        if encoder is not None and num_points is not None:
            raise ValueError("give an encoder (an amortized q) or num_points (a local q per point), not both")
        if encoder is not None and not isinstance(encoder, nn.Module):
            raise TypeError(f"encoder must be an nn.Module mapping x to logits; received {type(encoder).__name__}")
        super().__init__(num_points)
        self.shape = shape
        self.encoder = encoder
        if encoder is None:
            logits = torch.zeros(shape) if init_logits is None else self._initial(init_logits)
            lead = () if num_points is None else (self.num_points,)
            self.logits = nn.Parameter(logits.expand(*lead, *shape).clone().to(torch.get_default_dtype()))
        elif init_logits is not None:
            raise ValueError("init_logits applies to a guide without an encoder")

    def _initial(self, init_logits) -> Tensor:
        shape = self.shape
        logits = as_data(init_logits, "init_logits", ndim=(len(shape), len(shape) + 1))
        per_point = logits.dim() > len(shape)
        if tuple(logits.shape[-len(shape) :]) != shape or (per_point and logits.shape[0] != self.num_points):
            raise ValueError(f"init_logits must have shape {list(shape)} or [num_points, "
                             f"{', '.join(map(str, shape))}]; received {list(logits.shape)}")  # fmt: skip
        return logits

    def _logits(self, x: Tensor, index: Tensor | None) -> Tensor:
        """``[B, *shape]``."""
        if self.encoder is None:
            return self._rows(self.logits, x, index)
        out = network(self.encoder, x)
        expected = math.prod(self.shape)
        if out.dim() != 2 or out.shape[0] != x.shape[0] or out.shape[1] != expected:
            raise ValueError(f"{type(self).__name__}'s encoder must return logits [B, {expected}] for a batch of "
                             f"{x.shape[0]} points; it returned {describe(out)}")  # fmt: skip
        return out.reshape(x.shape[0], *self.shape)


class OneHotCategorical(_Discrete):
    r"""N independent categorical variables of K classes, each a one-hot vector:
    :math:`q(z \mid x) = \prod_{n=1}^N \mathrm{Cat}(z_n;\ \mathrm{softmax}(\ell_n(x)))`,
    z of shape ``[N, K]``.

    Args:
        num_variables: N.
        num_categories: K.
        encoder: A module mapping ``[B, *data_shape]`` to logits ``[B, N·K]`` (an amortized q);
            None for logits held as parameters.
        num_points: Without an encoder: None for one global q, or the training set's size for a
            local q per point.
        init_logits: Without an encoder: ``[N, K]`` or ``[num_points, N, K]`` (default uniform).

    Example:
        >>> guide = OneHotCategorical(3, 4)
        >>> q = guide(torch.zeros(2, 5))
        >>> q.sample().shape
        torch.Size([2, 3, 4])
    """

    def __init__(self, num_variables: int, num_categories: int, encoder: nn.Module | None = None,
                 num_points: int | None = None, init_logits=None):  # fmt: skip
        N = check_positive_int(num_variables, "num_variables")
        K = check_positive_int(num_categories, "num_categories", minimum=2)
        super().__init__((N, K), encoder, num_points, init_logits)

    @property
    def num_variables(self) -> int:
        return self.shape[0]

    @property
    def num_categories(self) -> int:
        return self.shape[1]

    def forward(self, x: Tensor, index: Tensor | None = None) -> Independent:
        logits = self._logits(x, index)  # [B, N, K]
        return Independent(OneHot(logits), 1, validate_args=False)

    def extra_repr(self) -> str:
        return f"num_variables={self.shape[0]}, num_categories={self.shape[1]}, amortized={self.encoder is not None}"


class Bernoulli(_Discrete):
    r"""N independent binary variables:
    :math:`q(z \mid x) = \prod_{n=1}^N \mathrm{Bernoulli}(z_n;\ \sigma(\ell_n(x)))`, z of shape ``[N]``.

    Args:
        num_variables: N.
        encoder: A module mapping ``[B, *data_shape]`` to logits ``[B, N]``; None for logits
            held as parameters.
        num_points: Without an encoder: None for one global q, or a local q per point.
        init_logits: Without an encoder: ``[N]`` or ``[num_points, N]`` (default probability ½).
    """

    def __init__(self, num_variables: int, encoder: nn.Module | None = None, num_points: int | None = None,
                 init_logits=None):  # fmt: skip
        N = check_positive_int(num_variables, "num_variables")
        super().__init__((N,), encoder, num_points, init_logits)

    @property
    def num_variables(self) -> int:
        return self.shape[0]

    def forward(self, x: Tensor, index: Tensor | None = None) -> Independent:
        logits = self._logits(x, index)  # [B, N]
        return Independent(_Bernoulli(logits=logits, validate_args=False), 1, validate_args=False)

    def extra_repr(self) -> str:
        return f"num_variables={self.shape[0]}, amortized={self.encoder is not None}"
