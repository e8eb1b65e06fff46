"""Datasets: the embedded default (scikit-learn's 8×8 digits)."""

from elbox.data.digits import digits

__all__ = ["digits"]
