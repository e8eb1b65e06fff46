"""Generative models p_θ(x, z): the base class, the models with exact evidence, and the VAE.

Structural time-series models (the local level, the local linear trend) are built by the
functions of :mod:`elbox.models.structural`."""

from elbox.models.base import LatentModel
from elbox.models.conjugate import BetaBernoulli, HierarchicalNormal, MixturePrior, NormalNormal
from elbox.models.dmm import DeepMarkovModel
from elbox.models.factor import FactorAnalysis
from elbox.models.flow import FlowDensity, UniformDequantization
from elbox.models.hmm import HMM, HMMPosterior
from elbox.models.lgssm import LinearGaussianSSM
from elbox.models.mixture import GaussianMixture
from elbox.models.vae import VAE, DiscreteVAE
from elbox.models.world import WorldModel

__all__ = [
    "HMM",
    "BetaBernoulli",
    "DeepMarkovModel",
    "FactorAnalysis",
    "FlowDensity",
    "GaussianMixture",
    "HMMPosterior",
    "HierarchicalNormal",
    "LatentModel",
    "LinearGaussianSSM",
    "MixturePrior",
    "NormalNormal",
    "UniformDequantization",
    "VAE",
    "DiscreteVAE",
    "WorldModel",
]
