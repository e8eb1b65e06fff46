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
