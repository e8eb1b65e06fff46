"""Data-parallel training on the CPU: the IWAE paper's MNIST VAE (784-200-200-50, tanh,
Bernoulli decoder, dynamic binarization, global batch 100 or --batch-size, Adam) trained by `elbox.fit` in one
process and under torchrun in W processes (gloo), side by side in one run.

    python bench/ddp.py [--train 20000] [--epochs 3] [--procs 2] [--batch-size 100]

Each configuration runs in fresh processes: one process with one thread, one process with all
the threads (torch's default), and W processes with one thread each (torchrun's default). The
script prints the median seconds per epoch of each, the throughput ratios, and the scaling
efficiency T(1 process, 1 thread) / (W · T(W processes)). The first epoch (first-call costs) is
left out of the median.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def worker(train: int, epochs: int, batch_size: int, out: str) -> None:
    """One fit (in each process of a group under torchrun); rank 0 writes the epoch times."""
    import elbox
    from elbox import distributed
    from elbox.data import mnist

    distributed.init_from_environment()
    x, _ = mnist(split="train")
    x = x[:train]
    torch.manual_seed(0)
    vae = elbox.VAE(784, 50, hidden=(200, 200), activation="tanh", decoder="bernoulli")
    laps = [time.perf_counter()]
    history = elbox.fit(vae, vae.guide, x, epochs=epochs, batch_size=batch_size, lr=1e-3, adam_eps=1e-4, seed=0,
                        binarization="dynamic",
                        callbacks=lambda epoch, h: laps.append(time.perf_counter()))  # fmt: skip
    if distributed.rank() == 0:
        times = [b - a for a, b in zip(laps, laps[1:])]
        Path(out).write_text(
            json.dumps(
                {
                    "epochs": times,
                    "bound": history.lower_bound[-1],
                    "world": distributed.world_size(),
                    "threads": torch.get_num_threads(),
                }
            )
        )


def run(procs: int, threads: int, train: int, epochs: int, batch_size: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
        script = [str(Path(__file__).resolve()), "--worker", "--train", str(train), "--epochs", str(epochs),
                  "--batch-size", str(batch_size), "--out", str(out)]  # fmt: skip
        if procs == 1:
            command = [sys.executable, *script]
        else:
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
                       *script]  # fmt: skip
        done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
        return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=20000, help="training images used")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=100, help="the global batch")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.train, args.epochs, args.batch_size, args.out)
        return
    cores = os.cpu_count() or 1
    print(environment())
    print(
        f"MNIST VAE 784-200-200-50, {args.train} images, global batch {args.batch_size}, {args.epochs} epochs "
        "(first left out)\n"
    )
    rows = {}
    for label, procs, threads in (("1 process, 1 thread", 1, 1), (f"1 process, {cores} threads", 1, cores),
                                  (f"{args.procs} processes, 1 thread each", args.procs, 1)):  # fmt: skip
        result = run(procs, threads, args.train, args.epochs, args.batch_size)
        steady = sorted(result["epochs"][1:])[len(result["epochs"][1:]) // 2]
        rows[label] = steady
        print(
            f"{label:>28}: {steady:6.2f} s/epoch  {args.train / steady:8.0f} images/s   final bound "
            f"{result['bound']:.2f}   (epochs: {', '.join(f'{t:.2f}' for t in result['epochs'])})"
        )
    one, threads, many = rows.values()
    print(
        f"\n{args.procs} processes are {one / many:.2f}x one single-threaded process (scaling efficiency "
        f"{one / (args.procs * many):.0%}) and {threads / many:.2f}x one process on {cores} threads"
    )


if __name__ == "__main__":
    main()
