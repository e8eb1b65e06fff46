"""A categorical VAE (N variables × K classes, uniform prior) trained with every discrete estimator
for the same number of steps, side by side: the test ELBO of the discrete model (the true bound,
whatever the gradient), its log p(x) and gap, and seconds per epoch.

    python examples/discrete_latents.py                      # the digits, 10 × 10, 100 epochs
    python examples/discrete_latents.py --data mnist --variables 20 --categories 10 --epochs 10

Gumbel-Softmax anneals τ as Jang et al. (2017) do: τ = max(0.5, exp(−r t)) every 500 steps.
"""

from __future__ import annotations

import argparse

import torch

import elbox
from elbox.data import binarize, digits, mnist
from elbox.inference import temperature_annealing

ESTIMATORS = {
    "gumbel_softmax": {},
    "straight_through": {"bound": "gumbel_softmax", "hard": True},
    "score_function+nvil": {"bound": "score_function", "baseline": "nvil"},
    "vimco (S=5)": {"bound": "vimco", "num_samples": 5},
    "rws (S=5)": {"bound": "rws", "num_samples": 5},
}


def load(name: str, seed: int):
    if name == "digits":
        x, _ = digits()
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(x), generator=generator)
        return x[order[297:]], x[order[:297]]
    x_train, _ = mnist(split="train")
    x_test, _ = mnist(split="test")
    return x_train, x_test[:1000]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", choices=("digits", "mnist"), default="digits")
    parser.add_argument("--variables", type=int, default=10)
    parser.add_argument("--categories", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--anneal-rate", type=float, default=1e-4)
    parser.add_argument("--only", default="", help="comma-separated estimator names (default: all)")
    parser.add_argument("--eval-samples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    x_train, x_test = load(args.data, args.seed)
    x_test = binarize(x_test, method="fixed", generator=torch.Generator().manual_seed(args.seed))
    chosen = [n for n in ESTIMATORS if not args.only or n in args.only.split(",")]
    print(f"{args.variables} × {args.categories} categorical VAE on {args.data} ({len(x_train)} training points, "
          f"{args.epochs} epochs, batch {args.batch_size}); test bounds on {len(x_test)} points")  # fmt: skip
    print(f"{'estimator':22s} {'test ELBO':>16s} {'log p(x)':>16s} {'gap':>7s} {'s/epoch':>8s}")
    for name in chosen:
        options = dict(ESTIMATORS[name])
        bound = options.pop("bound", name)
        torch.manual_seed(args.seed)
        model = elbox.DiscreteVAE(x_train.shape[1], args.variables, args.categories)
        schedules = []
        if bound == "gumbel_softmax":
            schedules = [temperature_annealing(initial=1.0, minimum=0.5, rate=args.anneal_rate, every=500)]
        history = elbox.fit(model, model.guide, x_train, bound=bound, epochs=args.epochs, batch_size=args.batch_size,
                            lr=args.lr, seed=args.seed, binarization="dynamic", schedules=schedules, **options)
        report = elbox.evidence_report(model, model.guide, x_test, num_samples=args.eval_samples, refine_steps=0)
        seconds = history.seconds / history.n_iter
        elbo, log_p = report.elbo, report.log_evidence
        print(f"{name:22s} {elbo['mean']:9.2f} ± {elbo['stderr']:4.2f} {log_p['mean']:9.2f} ± {log_p['stderr']:4.2f} "
              f"{report.gap:7.2f} {seconds:8.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
