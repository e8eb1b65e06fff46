"""Seconds per epoch of `elbox.fit` on the MNIST VAE, for the elbox in a given checkout: run it
for two checkouts, alternating, to compare two versions of the engine on the same machine.

    git worktree add /tmp/old 15c6924          # the code before the engine issue
    .venv/bin/python bench/engine_ab.py /tmp/old; .venv/bin/python bench/engine_ab.py .

The 784-200-200-50 tanh VAE, Bernoulli decoder, dynamic binarization, batch 100, Adam (lr 1e-3,
ε 1e-4), on the first 20,000 training images: one warm-up epoch on 2,000, then 3 epochs timed.
Prints the checkout, seconds per epoch and the final bound (equal across versions that compute
the same thing).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch


def main() -> None:
    checkout = Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
    sys.path.insert(0, str(checkout))
    import elbox
    from elbox.data import mnist

    assert Path(elbox.__file__).resolve().is_relative_to(checkout), f"elbox imported from {elbox.__file__}"
    x, _ = mnist(split="train")
    x = x[:20000]
    torch.manual_seed(0)
    vae = elbox.VAE(784, 50, hidden=(200, 200), activation="tanh", decoder="bernoulli")
    options = dict(batch_size=100, lr=1e-3, adam_eps=1e-4, seed=0, binarization="dynamic")
    elbox.fit(vae, vae.guide, x[:2000], epochs=1, **options)
    start = time.perf_counter()
    history = elbox.fit(vae, vae.guide, x, epochs=3, **options)
    print(f"{checkout}  {(time.perf_counter() - start) / 3:.4f} s/epoch  final bound {history.final:.4f}")


if __name__ == "__main__":
    main()
