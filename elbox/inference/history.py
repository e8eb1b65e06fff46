"""The record of a fit: the bound per iteration or epoch, and how the run ended."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

__all__ = ["BoundDecreaseWarning", "BoundaryWarning", "ConvergenceWarning", "DivergenceWarning", "History"]


class ConvergenceWarning(UserWarning):
    """An iterative fit stopped at its iteration limit before meeting its tolerance."""


class BoundDecreaseWarning(UserWarning):
    """EM's bound fell by more than rounding (never convergence); the run stopped at its best."""


class BoundaryWarning(UserWarning):
    """A fit's optimum is set by a floor the model enforces, not by the data (a Heywood case)."""


class DivergenceWarning(UserWarning):
    """A fit ended with its bound far below the first epoch's: it diverged."""


@dataclass
class History:
    """What :func:`elbox.em` and :func:`elbox.fit` return.

    Attributes:
        method: ``"em"`` or ``"vi:<bound>"``.
        lower_bound: The bound averaged per data point, after each EM iteration's E-step (where
            it equals the exact log-likelihood) or at the end of each VI epoch.
        steps: For VI, the bound per optimizer step (mini-batch average).
        converged: For EM, whether the tolerance was met. VI by stochastic gradient has no
            convergence test: False (whether early stopping ended it is ``stopped_early``).
        n_iter: EM iterations or VI epochs run.
        seconds: Wall time of the fit.
        restarts: For EM with ``n_init > 1``, each restart's final bound; the best is kept.
        reconstruction: For VI with the ELBO, E_q[log p(x | z)] per epoch (mean per point).
        kl: For VI with the ELBO, KL(q ‖ p(z)) per epoch (mean per point).
        validation: For VI with held-out data, its bound after each epoch.
        lr: For VI, the learning rate of each epoch.
        best_epoch: For VI, the epoch (from 1) with the best validation (else training) bound.
        stopped_early: For VI, whether early stopping ended the run.
        decreased: For EM, whether the run stopped because its bound fell beyond rounding (the
            model then holds the best iteration's parameters).
        diverged: For VI, whether the last epoch's bound fell below the first step's (the
            initial parameters') by more than that bound's magnitude plus one nat.
    """

    method: str
    lower_bound: list[float] = field(default_factory=list)
    steps: list[float] = field(default_factory=list)
    converged: bool = False
    n_iter: int = 0
    seconds: float = 0.0
    restarts: list[float] = field(default_factory=list)
    reconstruction: list[float] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)
    validation: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False
    decreased: bool = False
    diverged: bool = False

    @property
    def final(self) -> float:
        """The last recorded bound."""
        if not self.lower_bound:
            raise ValueError("the history is empty: nothing was fitted")
        return self.lower_bound[-1]

    def to_dict(self) -> dict:
        return asdict(self)
