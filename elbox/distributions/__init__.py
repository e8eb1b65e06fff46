"""Distributions torch lacks: discrete and Gaussian Markov chains over latent sequences, and the
point mass of a deterministic encoder; a one-hot categorical cheap to build; and zuko's
normalizing flows, built by name.

Importing this package registers their closed-form KL divergences in torch's registry.
"""

from elbox.distributions.flow import FLOW_TYPES, FlowDistribution, build_flow
from elbox.distributions.gauss_markov import GaussMarkovChain, affine_scan, congruence_scan
from elbox.distributions.markov import MarkovChain, viterbi
from elbox.distributions.one_hot import OneHot
from elbox.distributions.point_mass import PointMass

__all__ = [
    "FLOW_TYPES",
    "FlowDistribution",
    "GaussMarkovChain",
    "MarkovChain",
    "OneHot",
    "PointMass",
    "affine_scan",
    "congruence_scan",
    "build_flow",
    "viterbi",
]
