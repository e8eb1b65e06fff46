"""float32 against bfloat16 products: the same VAE trained from several seeds in each precision,
each run's test ELBO (always evaluated in float32), and log p(x) by importance sampling in both
precisions on the same draws, with the shift elbox measures.

    python examples/precision.py                         # the digits, 3 seeds, 100 epochs
    python examples/precision.py --data mnist --epochs 5 --hidden 200 200 --latent 50

The documented rule (docs/precision.md): bfloat16 may be used where a bfloat16 training run lands
within the seed-to-seed spread of float32 runs, and a bfloat16 evaluation within the Monte Carlo
error of the float32 one. This script measures both on your data and machine.
"""

from __future__ import annotations

import argparse
import time

import torch

import elbox
from elbox.data import digits, mnist


def load(name: str):
    if name == "digits":
        x, _ = digits()
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
        return x[order[297:]], x[order[:297]]
    x_train, _ = mnist(split="train")
    x_test, _ = mnist(split="test")
    return x_train, x_test[:1000]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=("digits", "mnist"), default="digits")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--hidden", type=int, nargs="+", default=[128])
    parser.add_argument("--latent", type=int, default=8)
    parser.add_argument("--num-samples", type=int, default=1000, help="importance samples per test point")
    args = parser.parse_args()

    x_train, x_test = load(args.data)
    x_test = torch.bernoulli(x_test, generator=torch.Generator().manual_seed(1))  # one fixed binarization
    D = x_train.shape[1]
    print(f"{args.data}: {len(x_train)} training and {len(x_test)} test points, VAE {D}-{args.hidden}-{args.latent}, "
          f"{args.epochs} epochs, seeds 0..{args.seeds - 1}\n")  # fmt: skip
    scores: dict[str, list[float]] = {"float32": [], "bfloat16": []}
    seconds: dict[str, list[float]] = {"float32": [], "bfloat16": []}
    for seed in range(args.seeds):
        for precision in scores:
            torch.manual_seed(seed)
            vae = elbox.VAE(D, args.latent, hidden=tuple(args.hidden))
            history = elbox.fit(vae, vae.guide, x_train, epochs=args.epochs, batch_size=100, lr=1e-3,
                                binarization="dynamic", seed=seed, precision=precision)  # fmt: skip
            with torch.no_grad():
                scores[precision].append(float(elbox.elbo(vae, vae.guide, x_test, num_samples=10).value.mean()))
            seconds[precision].append(history.seconds / args.epochs)
        print(f"seed {seed}: test ELBO float32 {scores['float32'][-1]:.4f}, bfloat16 {scores['bfloat16'][-1]:.4f}")

    print("\nprecision   test ELBO (mean ± seed-to-seed sd)   s/epoch")
    for precision, values in scores.items():
        t = torch.tensor(values, dtype=torch.float64)
        spread = float(t.std()) if len(values) > 1 else float("nan")
        per_epoch = sum(seconds[precision]) / args.seeds
        print(f"{precision:>9}   {float(t.mean()):10.3f} ± {spread:.3f}{'':>19}{per_epoch:.3f}")

    # log p(x) of the last float32 model, in both precisions from the same seed: the same draws up to the
    # encoder's rounding, which does not bias an importance estimate; the decoder's rounding is what moves it
    estimates, took = {}, {}
    for precision in ("float32", "bfloat16"):
        torch.manual_seed(0)
        start = time.perf_counter()
        estimates[precision] = elbox.log_evidence(vae, x_test, guide=vae.guide, method="importance",
                                                  num_samples=args.num_samples, precision=precision)  # fmt: skip
        took[precision] = time.perf_counter() - start
    high, low = estimates["float32"].mean(), estimates["bfloat16"].mean()
    shift = estimates["bfloat16"].mean_shift()
    print(f"\nlog p(x), S = {args.num_samples}: float32 {high.value:.4f} ± {high.stderr:.4f} (Monte Carlo), "
          f"bfloat16 {low.value:.4f} ± {low.stderr:.4f}")  # fmt: skip
    print(f"bfloat16 − float32 = {low.value - high.value:+.4f} nats ({(low.value - high.value) / high.stderr:+.2f} "
          f"Monte Carlo s.e.); elbox's measured shift {shift.value:+.4f} ± {shift.stderr:.4f} (over the points)")
    print(f"seconds: float32 {took['float32']:.2f}, bfloat16 {took['bfloat16']:.2f}")


if __name__ == "__main__":
    main()
