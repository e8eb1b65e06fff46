"""Datasets (the embedded default: scikit-learn's 8×8 digits) and the padded batch of sequences."""

from elbox.data.digits import digits
from elbox.data.sequences import Sequences

__all__ = ["Sequences", "digits"]
