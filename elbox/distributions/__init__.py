"""Distributions torch lacks: discrete and Gaussian Markov chains over latent sequences, and the
point mass of a deterministic encoder.

Importing this package registers their closed-form KL divergences in torch's registry.
"""

from elbox.distributions.gauss_markov import GaussMarkovChain, affine_scan
from elbox.distributions.markov import MarkovChain, viterbi
from elbox.distributions.point_mass import PointMass

__all__ = ["GaussMarkovChain", "MarkovChain", "PointMass", "affine_scan", "viterbi"]
