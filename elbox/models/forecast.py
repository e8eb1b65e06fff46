"""Forecasts of sequence models: the predictive distribution of the next k observations given a
sequence, with its intervals, as one object that every sequence model returns."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from elbox._validation import check_number, check_positive_int

__all__ = ["Forecast", "check_level", "check_steps", "mixture_quantiles"]


@dataclass(frozen=True)
class Forecast:
    r"""p(x_{T+1:T+k} | x_{1:T}) for each sequence of a batch, from its own last step T.

    Attributes:
        mean: E[x_{T+j} | x_{1:T}], ``[B, k, D]`` (categorical observations: the symbols'
            probabilities ``[B, k, M]``).
        variance: The marginal variance of each coordinate, ``[B, k, D]`` (None for symbols).
        lower, upper: The central ``level`` interval of each coordinate, ``[B, k, D]``: exact
            quantiles of the predictive marginal (Gaussian, or a mixture of Gaussians), not a
            normal approximation (None for symbols).
        level: The intervals' probability, e.g. 0.9.
        state_probs: An HMM's p(z_{T+j} = i | x_{1:T}), ``[B, k, K]`` (else None).
        state_mean, state_covariance: A linear-Gaussian model's predictive state, ``[B, k, S]``
            and ``[B, k, S, S]`` (else None).
        covariance: The linear-Gaussian model's joint covariance of x_{T+j}, ``[B, k, D, D]``.
        method: ``"exact"`` (closed form) or ``"simulation"`` (with the number of paths).
        num_samples: The simulated paths (0 for an exact forecast).
        mean_stderr, lower_stderr, upper_stderr: A simulated forecast's Monte Carlo standard
            errors of ``mean``, ``lower`` and ``upper``, ``[B, k, D]`` (None when exact).
    """

    mean: Tensor
    variance: Tensor | None
    lower: Tensor | None
    upper: Tensor | None
    level: float
    method: str = "exact"
    state_probs: Tensor | None = None
    state_mean: Tensor | None = None
    state_covariance: Tensor | None = None
    covariance: Tensor | None = None
    num_samples: int = 0
    mean_stderr: Tensor | None = None
    lower_stderr: Tensor | None = None
    upper_stderr: Tensor | None = None

    @property
    def steps(self) -> int:
        return self.mean.shape[1]

    def table(self, sequence: int = 0) -> list[dict]:
        """One row per step ahead (and observed coordinate) for sequence ``sequence``: mean,
        standard deviation and interval, as ``elbox forecast`` writes them."""
        rows = []
        for j in range(self.steps):
            for d in range(self.mean.shape[-1]):
                row = {"step": j + 1, "coordinate": d, "mean": float(self.mean[sequence, j, d])}
                if self.variance is not None:
                    row.update(sd=float(self.variance[sequence, j, d].sqrt()), lower=float(self.lower[sequence, j, d]),
                               upper=float(self.upper[sequence, j, d]), level=self.level)  # fmt: skip
                if self.mean_stderr is not None:  # a simulation's Monte Carlo errors
                    row["mean_se"] = float(self.mean_stderr[sequence, j, d])
                    if self.lower_stderr is not None:
                        row.update(lower_se=float(self.lower_stderr[sequence, j, d]),
                                   upper_se=float(self.upper_stderr[sequence, j, d]))  # fmt: skip
                rows.append(row)
        return rows


def check_steps(steps) -> int:
    """A forecast's horizon: a positive integer (an error naming ``steps`` otherwise)."""
    return check_positive_int(steps, "steps")


def check_level(level) -> float:
    level = check_number(level, "level", only_type=True)
    if not 0 < level < 1:
        raise ValueError(f"level must be a probability in (0, 1), e.g. 0.9 for a 90% interval; received {level}")
    return float(level)


def normal_interval(mean: Tensor, variance: Tensor, level: float) -> tuple[Tensor, Tensor]:
    """The central ``level`` interval of N(mean, variance), coordinate by coordinate."""
    z = math.sqrt(2.0) * torch.special.erfinv(torch.tensor(level, dtype=torch.float64)).item()
    half = z * variance.clamp_min(0).sqrt()
    return mean - half, mean + half


def mixture_quantiles(weights: Tensor, loc: Tensor, scale: Tensor, probs: tuple[float, ...],
                      iterations: int = 100) -> list[Tensor]:  # fmt: skip
    """Quantiles of one-dimensional Gaussian mixtures, by bisection on the mixture's CDF (which
    is monotone): ``weights`` ``[..., K]``, ``loc`` and ``scale`` ``[..., K]``; one tensor ``[...]``
    per probability in ``probs``, exact to the dtype's rounding after 100 halvings of the
    bracket [min μ − 40 max σ, max μ + 40 max σ]."""
    low0 = (loc - 40 * scale).amin(-1)
    high0 = (loc + 40 * scale).amax(-1)
    out = []
    for p in probs:
        low, high = low0.clone(), high0.clone()
        for _ in range(iterations):
            mid = 0.5 * (low + high)
            cdf = (weights * torch.special.ndtr((mid.unsqueeze(-1) - loc) / scale)).sum(-1)
            below = cdf < p
            low, high = torch.where(below, mid, low), torch.where(below, high, mid)
        out.append(0.5 * (low + high))
    return out
