"""Estimates of the evidence log p_θ(x): exact where tractable, else by importance sampling."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from elbox._validation import check_positive_int
from elbox.bounds._common import prepare

__all__ = ["Estimate", "log_evidence"]

_METHODS = ("exact", "importance")


@dataclass(frozen=True)
class Estimate:
    """An estimate of log p(x) per data point, with its standard error.

    Attributes:
        value: ``[B]``.
        stderr: ``[B]``; zero for exact values.
        method: ``"exact"`` or ``"importance"``.
        num_samples: Particles per data point (None for exact).
    """

    value: Tensor
    stderr: Tensor
    method: str
    num_samples: int | None = None

    def mean(self) -> tuple[float, float]:
        """The average over data points and its standard error (errors taken independent)."""
        n = self.value.numel()
        return float(self.value.mean()), float(self.stderr.square().sum().sqrt() / n)


@torch.no_grad()
def log_evidence(
    model,
    x,
    *,
    guide=None,
    method: str = "exact",
    num_samples: int = 1000,
    chunk_size: int | None = None,
    index: Tensor | None = None,
) -> Estimate:
    r"""log p_θ(x) per data point.

    ``"exact"`` asks the model (forward algorithm, Kalman filter, closed forms).
    ``"importance"`` averages S importance weights w_s = p_θ(x, z_s) / q(z_s | x) with the
    guide as proposal (the prior when ``guide`` is None):

    .. math:: \log \hat p(x) = \log \frac{1}{S}\sum_s w_s, \quad
              \mathrm{se} \approx \frac{\mathrm{sd}(w)}{\sqrt{S}\,\bar w}

    (the delta method). The estimate is the IWAE bound of that S, biased low by about
    se²/2, so it is consistent but a lower bound in expectation.

    Args:
        model: A :class:`~elbox.models.LatentModel`.
        x: Data, ``[B, *data_shape]``.
        guide: The proposal, for ``"importance"``.
        method: ``"exact"`` or ``"importance"``.
        num_samples: S, for ``"importance"``.
        chunk_size: Particles drawn at a time (default: all), to bound memory.
        index: The data points' indices, for local guides.

    Returns:
        An :class:`Estimate`.
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}; received {method!r}")
    if method == "exact":
        if not getattr(model, "has_exact_evidence", False):
            raise ValueError(
                f"{type(model).__name__} has no exact evidence; use method='importance' with a guide"
            )
        value = model.log_evidence(x)
        return Estimate(value=value, stderr=torch.zeros_like(value), method="exact")

    S = check_positive_int(num_samples, "num_samples")
    chunk = S if chunk_size is None else check_positive_int(chunk_size, "chunk_size")
    if guide is None:
        x = model.check_data(x)
        prior = model.prior_for(x)
        B = x.shape[0]
        proposal = prior if tuple(prior.batch_shape) == (B,) else prior.expand(torch.Size([B]) + prior.batch_shape)
    else:
        x, proposal, _ = prepare(model, guide, x, index)
    log_w = []
    for begin in range(0, S, chunk):
        z = proposal.sample((min(chunk, S - begin),))  # [s, B, *event]
        log_w.append(model.log_joint(x, z) - proposal.log_prob(z))  # [s, B]
    log_w = torch.cat(log_w)  # [S, B]
    value = log_w.logsumexp(0) - math.log(S)
    w = (log_w - log_w.max(0).values).exp()  # [S, B], scaled weights
    stderr = w.std(0) / (math.sqrt(S) * w.mean(0)) if S > 1 else torch.full_like(value, math.inf)
    return Estimate(value=value, stderr=stderr, method="importance", num_samples=S)
