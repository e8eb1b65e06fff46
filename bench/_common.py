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


def run_peer(kind: str, arrays: dict, repeats: int, peer: str = "dynamax") -> dict | None:
    """Times a peer's side of a benchmark in its own process (bench/_dynamax.py or
    bench/_pomegranate.py) on ``arrays`` (written to a temporary .npz) and returns its times and
    results, or None where the peer is not installed. The interpreter is ``$ELBOX_BENCH_PYTHON``
    (a virtual environment with the ``bench`` extra), else this one."""
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    python = os.environ.get("ELBOX_BENCH_PYTHON", sys.executable)
    probe = subprocess.run([python, "-c", {"dynamax": "import dynamax, jax"}.get(peer, f"import {peer}")],
                           capture_output=True)  # fmt: skip
    if probe.returncode:
        print(f"# {peer} is not installed for {python}: its rows are skipped (pip install -e '.[bench]')")
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path_in, path_out = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        np.savez(path_in, **arrays)
        script = Path(__file__).resolve().parent / f"_{peer}.py"
        subprocess.run([python, str(script), kind, str(path_in), str(path_out), str(repeats)], check=True)
        return {key: value for key, value in np.load(path_out).items()}


def median_time(fn, repeats: int) -> tuple[float, object]:
    """The median of ``repeats`` timed calls of ``fn`` (after one untimed call) and its last result."""
    out = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), out
