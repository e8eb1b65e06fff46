"""Fitting: EM for models with a closed-form M-step, stochastic VI for everything."""

from elbox.inference.em import em
from elbox.inference.fit import fit
from elbox.inference.history import ConvergenceWarning, History
from elbox.inference.refine import local_guide, refine

__all__ = ["ConvergenceWarning", "History", "em", "fit", "local_guide", "refine"]
