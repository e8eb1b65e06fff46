r"""Choosing the number of components or states: each candidate fitted by EM and scored by BIC,
AIC and (given held-out data) the held-out log-likelihood, the way scikit-learn users compare
``GaussianMixture(n_components=k).bic(x)`` by hand.

.. math:: \mathrm{BIC} = -2 \log p_{\hat\theta}(x) + p \log N, \qquad
          \mathrm{AIC} = -2 \log p_{\hat\theta}(x) + 2 p,

with p the free parameters (:attr:`~elbox.models.LatentModel.num_free_parameters`) and N the
observations (points; for sequences, observed time steps, as hmmlearn counts them). Lower is
better for both.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from elbox._validation import check_points, describe, named
from elbox.data.sequences import Sequences
from elbox.inference.em import em
from elbox.inference.history import ConvergenceWarning

__all__ = ["Selection", "select"]


@dataclass
class Selection:
    """What :func:`select` found, one entry per candidate, in the order given.

    Attributes:
        candidates: The numbers tried (K).
        log_likelihood: Each fit's total log-likelihood of the training data.
        num_parameters: Each model's free parameters p.
        num_observations: N, the count that BIC's penalty uses.
        bic, aic: Each model's criteria (lower is better).
        held_out: Each model's mean log-likelihood per held-out point (None without held-out data).
        held_out_stderr: Its standard error over the held-out points.
        models: The fitted models.
        best: The K each criterion picks: ``{"bic": …, "aic": …, "held_out": …}``.
    """

    candidates: list[int]
    log_likelihood: list[float] = field(default_factory=list)
    num_parameters: list[int] = field(default_factory=list)
    num_observations: int = 0
    bic: list[float] = field(default_factory=list)
    aic: list[float] = field(default_factory=list)
    held_out: list[float] | None = None
    held_out_stderr: list[float] | None = None
    models: list = field(default_factory=list)
    best: dict = field(default_factory=dict)

    def table(self) -> str:
        """The candidates as a text table, the chosen ones marked."""
        rows = [f"{'K':>4} {'params':>7} {'log-lik':>12} {'BIC':>12} {'AIC':>12} {'held-out':>18}"]
        for i, k in enumerate(self.candidates):
            held = "—" if self.held_out is None else f"{self.held_out[i]:.4f} ± {self.held_out_stderr[i]:.4f}"
            marks = "".join(m for m, c in (("b", "bic"), ("a", "aic"), ("h", "held_out")) if self.best.get(c) == k)
            rows.append(f"{k:>4} {self.num_parameters[i]:>7} {self.log_likelihood[i]:>12.2f} {self.bic[i]:>12.2f} "
                        f"{self.aic[i]:>12.2f} {held:>18} {marks}")  # fmt: skip
        return "\n".join(rows) + "\n(b: lowest BIC, a: lowest AIC, h: highest held-out log-likelihood)"


def _observations(model, x) -> int:
    if isinstance(x, Sequences):
        return int(x.mask.sum())
    values = model.check_data(x)
    if isinstance(values, Sequences):
        return int(values.mask.sum())
    return len(values)


def select(
    make: Callable[[int], object],
    x,
    candidates: Sequence[int],
    *,
    x_valid=None,
    init: str = "kmeans++",
    n_init: int = 3,
    max_iter: int = 500,
    tol: float = 1e-4,
    seed: int | None = 0,
) -> Selection:
    """Fits ``make(k)`` to ``x`` by EM for each k of ``candidates`` and scores it.

    Args:
        make: ``make(k) -> model``: a model with a closed-form M-step and exact evidence
            (:class:`~elbox.models.GaussianMixture`, :class:`~elbox.models.HMM`,
            :class:`~elbox.models.FactorAnalysis`).
        x: Training data.
        candidates: The numbers to try (positive, distinct).
        x_valid: Held-out data, scored by each fitted model's mean log-likelihood.
        init, n_init, max_iter, tol, seed: EM's (:func:`elbox.em`); every candidate gets the seed.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> truth = GaussianMixture(3, 2, loc=4 * torch.randn(3, 2))
        >>> x, _ = truth.sample(400)
        >>> found = select(lambda k: GaussianMixture(k, 2), x[:300], [1, 2, 3, 4, 5], x_valid=x[300:])
        >>> found.best["bic"]
        3
    """
    if isinstance(candidates, str | bytes) or not hasattr(candidates, "__iter__"):
        raise TypeError(f"candidates must be a list of positive integers; received {describe(candidates)}")
    ks = list(candidates)
    if not ks or not all(isinstance(k, int) and not isinstance(k, bool) and k > 0 for k in ks):
        raise ValueError(f"candidates must be positive integers; received {ks!r}")
    if len(set(ks)) != len(ks):
        raise ValueError(f"candidates must be distinct; received {ks!r}")
    if not callable(make):
        raise TypeError(f"make must be a function k -> model; received {type(make).__name__}")
    result = Selection(candidates=ks, held_out=None if x_valid is None else [],
                       held_out_stderr=None if x_valid is None else [])  # fmt: skip
    for k in ks:
        model = make(k)
        if not hasattr(model, "num_free_parameters"):
            raise TypeError(f"select needs a model that counts its free parameters (num_free_parameters); "
                            f"make({k}) returned a {type(model).__name__}")  # fmt: skip
        if x_valid is not None and k == ks[0]:  # held-out data the models cannot score fail before any fit
            with named("x_valid"):
                check_points(model.check_data(x_valid), "x_valid")
        with warnings.catch_warnings(), named("x", "data"):  # em's data is select's x
            warnings.simplefilter("ignore", ConvergenceWarning)  # reported below, per candidate, if any
            history = em(model, x, max_iter=max_iter, tol=tol, init=init, n_init=n_init, seed=seed)
        if not history.converged:
            warnings.warn(f"select: EM for K = {k} did not converge in max_iter={max_iter} iterations; its scores "
                          "may be too low (raise max_iter)", ConvergenceWarning, stacklevel=2)  # fmt: skip
        with torch.no_grad():
            total = float(model.log_evidence(x).double().sum())
            if x_valid is not None:
                held = model.log_evidence(x_valid).double()
                result.held_out.append(float(held.mean()))
                result.held_out_stderr.append(float(held.std() / math.sqrt(len(held))) if len(held) > 1 else math.nan)
        N = _observations(model, x)
        p = int(model.num_free_parameters)
        result.num_observations = N
        result.models.append(model)
        result.log_likelihood.append(total)
        result.num_parameters.append(p)
        result.bic.append(-2 * total + p * math.log(N))
        result.aic.append(-2 * total + 2 * p)
    result.best = {"bic": ks[min(range(len(ks)), key=result.bic.__getitem__)],
                   "aic": ks[min(range(len(ks)), key=result.aic.__getitem__)]}  # fmt: skip
    if x_valid is not None:
        result.best["held_out"] = ks[max(range(len(ks)), key=result.held_out.__getitem__)]
    return result
