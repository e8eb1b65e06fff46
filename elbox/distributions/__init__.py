"""Distributions torch lacks: discrete and Gaussian Markov chains over latent sequences, and the
point mass of a deterministic encoder; a one-hot categorical cheap to build; and zuko's
normalizing flows, built by name. The exact sequence kernels are plain functions here:
forward–backward (:mod:`~elbox.distributions.hmm_kernels`), the Kalman filter and the RTS
smoother (:mod:`~elbox.distributions.kalman`).

Importing this package registers their closed-form KL divergences in torch's registry.
"""

from elbox.distributions.flow import FLOW_TYPES, FlowDistribution, build_flow
from elbox.distributions.gauss_markov import (
    GaussMarkovChain,
    affine_recurrence,
    affine_scan,
    congruence_recurrence,
    congruence_scan,
)
from elbox.distributions.hmm_kernels import ForwardBackward, forward_backward, hmm_log_evidence
from elbox.distributions.kalman import KalmanFilter, LinearGaussian, RTSSmoother, kalman_filter, rts_smoother
from elbox.distributions.markov import MarkovChain, viterbi
from elbox.distributions.markov_path import MarkovPath
from elbox.distributions.one_hot import OneHot
from elbox.distributions.point_mass import PointMass
from elbox.distributions.smc import ParticleFilter, particle_filter

__all__ = [
    "FLOW_TYPES",
    "FlowDistribution",
    "ForwardBackward",
    "GaussMarkovChain",
    "KalmanFilter",
    "LinearGaussian",
    "MarkovChain",
    "MarkovPath",
    "OneHot",
    "ParticleFilter",
    "PointMass",
    "RTSSmoother",
    "affine_recurrence",
    "affine_scan",
    "build_flow",
    "congruence_recurrence",
    "congruence_scan",
    "forward_backward",
    "hmm_log_evidence",
    "kalman_filter",
    "particle_filter",
    "rts_smoother",
    "viterbi",
]
