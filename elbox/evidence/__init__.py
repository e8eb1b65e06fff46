"""Estimates of the evidence log p(x) and how far a bound is from it."""

from elbox.evidence.estimate import Estimate, log_evidence

__all__ = ["Estimate", "log_evidence"]
