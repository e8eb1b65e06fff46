"""Generative models p_θ(x, z): the base class and the models with exact evidence."""

from elbox.models.base import LatentModel
from elbox.models.conjugate import BetaBernoulli, HierarchicalNormal, NormalNormal
from elbox.models.factor import FactorAnalysis
from elbox.models.mixture import GaussianMixture

__all__ = [
    "BetaBernoulli",
    "FactorAnalysis",
    "GaussianMixture",
    "HierarchicalNormal",
    "LatentModel",
    "NormalNormal",
]
