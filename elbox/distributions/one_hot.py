"""A one-hot categorical that is cheap to build and to differentiate: the q and the prior of the
discrete VAE, called on every batch."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Categorical, Distribution, OneHotCategorical, register_kl

from elbox._validation import check_tensor

__all__ = ["OneHot", "log_softmax", "softmax"]


def softmax(y: Tensor) -> Tensor:
    """softmax over the last dimension, as exp(y − max) / Σ: the same numbers as ``Tensor.softmax``
    and, for the short last dimensions of categorical latents (K = 10), several times faster on the
    CPU, forward and backward."""
    e = (y - y.detach().amax(-1, keepdim=True)).exp()
    return e / e.sum(-1, keepdim=True)


def log_softmax(y: Tensor) -> Tensor:
    """y − log Σ exp(y) over the last dimension (see :func:`softmax`); a row of −∞ stays −∞."""
    top = y.detach().amax(-1, keepdim=True).clamp_min(torch.finfo(y.dtype).min)
    shifted = y - top
    return shifted - shifted.exp().sum(-1, keepdim=True).log()


class OneHot(OneHotCategorical):
    r"""torch's :class:`~torch.distributions.OneHotCategorical` from logits, built without
    argument validation (its inner Categorical is otherwise validated on every call), with
    ``probs = exp(normalized logits)`` instead of a second softmax, and a closed-form KL between
    two of them registered in torch's registry.

    Args:
        logits: ``[*batch, K]``, unnormalized.

    Example:
        >>> from torch.distributions import Independent, kl_divergence
        >>> q = Independent(OneHot(torch.tensor([[2.0, 0.0, 0.0]])), 1)
        >>> p = Independent(OneHot(torch.zeros(1, 3)), 1)
        >>> round(float(kl_divergence(q, p)), 4)
        0.433
    """

    def __init__(self, logits: Tensor):
        check_tensor(logits, "logits", min_dim=1)
        # the inner Categorical, given its normalized logits as they are (its own constructor would
        # normalize again, by a logsumexp that is slow for short rows, and validate)
        normalized = log_softmax(logits)
        categorical = Categorical.__new__(Categorical)
        categorical.logits = categorical._param = normalized
        categorical._num_events = normalized.shape[-1]
        Distribution.__init__(categorical, normalized.shape[:-1], validate_args=False)
        self._categorical = categorical
        Distribution.__init__(self, normalized.shape[:-1], normalized.shape[-1:], validate_args=False)

    @property
    def logits(self) -> Tensor:
        return self._categorical.logits

    @property
    def probs(self) -> Tensor:
        return self._categorical.logits.exp()

    @property
    def param_shape(self) -> torch.Size:
        return self._categorical.param_shape

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        return OneHot(self.logits.expand(batch_shape + self.param_shape[-1:]))

    def log_prob(self, value: Tensor) -> Tensor:
        """Σ_k z_k log p_k: for a one-hot z its log-probability (for a point inside the simplex,
        the same linear form)."""
        return torch.where(value == 0, 0.0, value * self.logits).sum(-1)  # 0 · (−∞) is 0 here, not NaN


@register_kl(OneHot, OneHot)
def _kl_one_hot(q: OneHot, p: OneHot) -> Tensor:
    """Σ_k q_k (log q_k − log p_k): +∞ where q has mass p has not; a class q excludes adds nothing."""
    log_q, log_p = q.logits, p.logits
    terms = q.probs * (log_q - log_p)
    terms = torch.where(log_q == -math.inf, 0.0, terms)
    return terms.sum(-1)
