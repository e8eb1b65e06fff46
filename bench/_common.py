"""What the benchmarks share: a timer and the line that says how the run was made."""

from __future__ import annotations

import os
import platform
import time
from contextlib import contextmanager

import numpy as np
import torch


def environment() -> str:
    return (
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), numpy {np.__version__}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    )


@contextmanager
def timed(result: dict, key: str):
    start = time.perf_counter()
    yield
    result[key] = time.perf_counter() - start


def mnist_train_test(train: int):
    """The first ``train`` MNIST training images (intensities, binarized per batch by the runs) and
    the 10,000 test images binarized once, by a seeded draw."""
    from elbox.data import mnist

    x, _ = mnist(split="train")
    x_test, _ = mnist(split="test")
    return x[:train], torch.bernoulli(x_test, generator=torch.Generator().manual_seed(0))


class EpochTimer:
    """A ``fit`` callback that records each epoch's seconds in :attr:`times` (from its creation, then
    from the previous epoch's end)."""

    def __init__(self):
        self.times: list[float] = []
        self._start = time.perf_counter()

    def __call__(self, epoch, history) -> None:
        now = time.perf_counter()
        self.times.append(now - self._start)
        self._start = now
