"""Structured distributions over latent sequences: discrete and Gaussian Markov chains.

Importing this package registers their closed-form KL divergences in torch's registry.
"""

from elbox.distributions.gauss_markov import GaussMarkovChain, affine_scan
from elbox.distributions.markov import MarkovChain, viterbi

__all__ = ["GaussMarkovChain", "MarkovChain", "affine_scan", "viterbi"]
