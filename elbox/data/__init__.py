"""Datasets and data handling: the embedded digits, MNIST (offline), MNIST-1D, draws from a model,
binarization, an in-memory batch iterator, and padded batches of sequences."""

from elbox.data.batches import Batch, BatchIterator, as_batch, binarize, draws
from elbox.data.digits import digits
from elbox.data.files import load_file
from elbox.data.mnist import load_idx, mnist
from elbox.data.mnist1d import mnist1d
from elbox.data.nile import nile
from elbox.data.sequences import Sequences, as_sequences

__all__ = [
    "Batch",
    "BatchIterator",
    "Sequences",
    "as_batch",
    "as_sequences",
    "binarize",
    "digits",
    "draws",
    "load_file",
    "load_idx",
    "mnist",
    "mnist1d",
    "nile",
]
