"""The gradient estimators of a discrete latent, measured against the exact gradient.

1. A categorical VAE small enough to enumerate (3 variables × 4 classes: 64 values of z), trained
   briefly on the digits; on 32 test digits, every estimator's gradient in the encoder's
   parameters is drawn 1,000 times and compared with the exact one (the sum over all 64 values):
   bias, variance, and the time per draw.
2. The Gumbel-Softmax gradient's bias and variance against τ: `gradient_tradeoff.png`.
3. A 10 × 10 categorical VAE trained with τ annealed (τ = max(0.5, exp(−r t)) every 50 steps),
   the gradient's variance measured after each epoch: `annealing.png`.

    python examples/gradient_tradeoff.py --out figures
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import elbox
from elbox import plots
from elbox.data import binarize, digits
from elbox.inference import GradientVariance, temperature_annealing, temperature_sweep
from elbox.objectives import make_objective


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--repeats", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=60, help="epochs of the annealed run (part 3)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    x = binarize(digits()[0], method="fixed", generator=torch.Generator().manual_seed(args.seed))
    x_train, x_probe = x[:1500], x[1500:1532]

    # 1. every estimator on one small model, against the exact gradient
    model = elbox.DiscreteVAE(64, num_variables=3, num_categories=4, hidden=(64,))
    elbox.fit(model, model.guide, x_train, bound="enumerate", epochs=10, batch_size=100, lr=3e-3, seed=args.seed)
    estimators = {
        "gumbel_softmax (τ = 1)": make_objective("gumbel_softmax", model, model.guide),
        "straight-through (τ = 1)": make_objective("gumbel_softmax", model, model.guide, hard=True),
        "score function": make_objective("score_function", model, model.guide, baseline="none"),
        "score function + moving average": make_objective("score_function", model, model.guide),
        "score function + NVIL": make_objective("score_function", model, model.guide, baseline="nvil"),
        "VIMCO (S = 5)": make_objective("vimco", model, model.guide, num_samples=5),
        "local expectations": make_objective("enumerate", model, model.guide, strategy="factorwise"),
        "RWS (S = 5)": make_objective("rws", model, model.guide, num_samples=5),
    }
    # NVIL's network learns its baseline first (its own loss only: the model and q stay as they are)
    nvil = estimators["score function + NVIL"]
    optimizer = torch.optim.Adam(nvil.baseline_net.parameters(), lr=1e-3)
    for _ in range(300):
        batch = x_train[torch.randint(0, len(x_train), (100,))]
        optimizer.zero_grad()
        (-nvil(batch).surrogate.mean()).backward()
        optimizer.step()
    report = elbox.gradient_report(estimators, x_probe, repeats=args.repeats, seed=args.seed)
    print(report.table())

    # 2. the relaxation's trade-off against τ
    sweep = temperature_sweep(estimators["gumbel_softmax (τ = 1)"], x_probe, [5, 2, 1, 0.5, 0.2, 0.1, 0.05],
                              repeats=args.repeats, seed=args.seed)  # fmt: skip
    print(sweep.table())
    unbiased = elbox.inference.GradientReport(
        [s for s in report.estimators if s.name in ("score function + NVIL", "local expectations")])
    plots.plot_temperature_tradeoff(sweep, args.out / "gradient_tradeoff.png", references=unbiased)

    # 3. τ, the bound and the gradient's variance over an annealed run
    torch.manual_seed(args.seed)
    model = elbox.DiscreteVAE(64, num_variables=10, num_categories=10, hidden=(256,))
    objective = make_objective("gumbel_softmax", model, model.guide)
    variance = GradientVariance(x_probe, repeats=50)
    run_dir = args.out / "annealing_run"
    history = elbox.fit(objective, x_train, epochs=args.epochs, batch_size=100, lr=1e-3, seed=args.seed,
                        schedules=[temperature_annealing(1.0, 0.5, rate=1e-3, every=50)], callbacks=[variance],
                        run_dir=run_dir, resume=(run_dir / "checkpoints" / "last.safetensors").exists())  # fmt: skip
    records = elbox.io.RunDirectory(run_dir).read_metrics()
    plots.plot_annealing(records, args.out / "annealing.png")
    print(f"annealed run: bound {history.lower_bound[0]:.2f} → {history.lower_bound[-1]:.2f}, τ "
          f"{records[0]['temperature']:.3f} → {records[-1]['temperature']:.3f}; figures in {args.out}")  # fmt: skip


if __name__ == "__main__":
    main()
