r"""Objectives: the bounds of :mod:`elbox.bounds` as ``nn.Module``\ s that the training engine
maximizes, found by name in a registry that code outside elbox adds to.

``Objective(model, guide, **options)(batch)`` returns an :class:`Output`: the bound per data
point ``[B]`` (the true number, always what is reported), the surrogate whose gradient is the
estimator's, and the named parts. The estimator's own state (β, particles, temperatures,
learned baselines) lives in the module, so it is trained, scheduled and checkpointed with the
model and the guide.
"""

from elbox.objectives.base import (
    OBJECTIVES,
    Objective,
    Output,
    get_objective,
    make_objective,
    register_objective,
)
from elbox.objectives.bounds import ELBO, IWAE, MaxLikelihood, Renyi
from elbox.objectives.discrete import RWS, VIMCO, Enumerate, GumbelSoftmax, ScoreFunction
from elbox.objectives.sequence import FIVO
from elbox.objectives.world import WorldELBO

__all__ = [
    "ELBO",
    "FIVO",
    "WorldELBO",
    "IWAE",
    "RWS",
    "VIMCO",
    "Enumerate",
    "GumbelSoftmax",
    "OBJECTIVES",
    "MaxLikelihood",
    "Objective",
    "Output",
    "Renyi",
    "ScoreFunction",
    "get_objective",
    "make_objective",
    "register_objective",
]
