"""Four models of the same binary images, side by side: a VAE with a Gaussian q, the same VAE with
a flow q (an inverse autoregressive flow after the Gaussian), the VAE with a flow prior, and a flow
density (dequantized, no latent code).

    python examples/flows_compare.py --data digits [--epochs 200] [--out examples_out]
    python examples/flows_compare.py --data mnist --epochs 10 --test-points 1000
    python examples/flows_compare.py --data mnist --models gaussian,flow-q --epochs 30

Every model sees the same binarized images (one seeded Bernoulli draw of the intensities), so
their log p(x) are probabilities of the same discrete data and compare directly: the VAEs' by
importance sampling over z, the flow's by importance sampling over the dequantization noise u
(P(x) = ∫ p(x + u) du over the unit cell). For each: the test log-likelihood with its bracket
(ELBO ≤ log p̂ ≤ CUBO), the gap and its split into approximation and amortization (refining q
per point), seconds per training epoch, and milliseconds to infer q for one new point: one
encoder pass, or the encoder plus the per-point refinement; the flow density needs none. A
table on the terminal and flows_compare_<data>.png (the bracket and the gap's split per model).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import elbox
from elbox.data import binarize, digits
from elbox.models import FlowDensity, UniformDequantization

MODELS = {"gaussian": "VAE, Gaussian q", "flow-q": "VAE, flow q", "flow-prior": "VAE, flow prior",
          "density": "flow density"}  # fmt: skip


def load(name: str, seed: int = 0):
    """Binarized train and test images, one seeded draw."""
    generator = torch.Generator().manual_seed(seed)
    if name == "digits":
        x, _ = digits()
        x = x[torch.randperm(len(x), generator=generator)]
        train, test = x[:1500], x[1500:]
    else:
        from elbox.data import mnist

        train, test = mnist(split="train")[0], mnist(split="test")[0]
    return binarize(train, method="fixed", generator=generator), binarize(test, method="fixed", generator=generator)


def build(label: str, dim: int, latent: int, hidden: tuple[int, ...], flow_hidden: tuple[int, ...]):
    if label == "flow density":
        density = FlowDensity(dim, flow="maf", transforms=5, hidden=(1024,), dequantize=1.0)
        return density, UniformDequantization(density)
    guide = {"type": "flow", "transforms": 3, "hidden": list(flow_hidden)} if label == "VAE, flow q" else "gaussian"
    prior = {"type": "flow", "transforms": 3, "hidden": list(flow_hidden)} if label == "VAE, flow prior" else "normal"
    vae = elbox.VAE(dim, latent, hidden=hidden, guide=guide, prior=prior)
    return vae, vae.guide


def inference_ms(model, guide, point, refine_steps: int) -> tuple[float | None, float | None]:
    """Milliseconds for q of one new point: an encoder pass, and encoder + refinement."""
    if isinstance(model, FlowDensity):
        return None, None
    with torch.no_grad():
        guide(point)  # warm
        start = time.perf_counter()
        for _ in range(100):
            guide(point)
        encoder = 1e3 * (time.perf_counter() - start) / 100
    start = time.perf_counter()
    elbox.refine(model, guide, point, steps=refine_steps, num_samples=10)
    return encoder, 1e3 * (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=("digits", "mnist"), default="digits")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--test-points", type=int, default=0, help="evaluate the first N test images (0: all)")
    parser.add_argument("--num-samples", type=int, default=1000, help="importance samples per test point")
    parser.add_argument("--refine-points", type=int, default=100)
    parser.add_argument("--refine-steps", type=int, default=200)
    parser.add_argument("--models", default=",".join(MODELS), help="which, comma-separated: " + ",".join(MODELS))
    parser.add_argument("--out", type=Path, default=Path("examples_out"))
    args = parser.parse_args()
    unknown = [m for m in args.models.split(",") if m not in MODELS]
    if unknown:
        parser.error(f"--models: unknown model {unknown[0]!r}; choose from {','.join(MODELS)}")
    models = [MODELS[m] for m in args.models.split(",")]

    train, test = load(args.data)
    if args.test_points:
        test = test[: args.test_points]
    D = train.shape[1]
    latent, hidden, flow_hidden = (8, (256, 256), (64, 64)) if args.data == "digits" else (32, (500, 500), (256, 256))
    rows = []
    for label in models:
        torch.manual_seed(0)
        model, guide = build(label, D, latent, hidden, flow_hidden)
        start = time.perf_counter()
        elbox.fit(model, guide, train, epochs=args.epochs, batch_size=100, lr=1e-3, seed=0)
        per_epoch = (time.perf_counter() - start) / args.epochs
        torch.manual_seed(1)
        report = elbox.evidence_report(model, guide, test, num_samples=args.num_samples,
                                       iwae_samples=min(50, args.num_samples),
                                       refine_points=args.refine_points, refine_steps=args.refine_steps)  # fmt: skip
        encoder_ms, refined_ms = inference_ms(model, guide, test[:1], args.refine_steps)
        rows.append({"model": label, "report": report.to_dict(), "seconds_per_epoch": per_epoch,
                     "encoder_ms": encoder_ms, "refined_ms": refined_ms})  # fmt: skip
        print(f"{label}: log p̂ {report.log_evidence['mean']:.2f}, ELBO {report.elbo['mean']:.2f}, "
              f"{per_epoch:.2f} s/epoch", flush=True)  # fmt: skip
    print_table(rows, args.data, len(test))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"flows_compare_{args.data}.json").write_text(json.dumps(rows, indent=1))
    plot(rows, args.out / f"flows_compare_{args.data}.png", args.data)
    print(f"Written: {args.out / f'flows_compare_{args.data}.png'}, {args.out / f'flows_compare_{args.data}.json'}")


def _cell(summary: dict | None, key: str = "mean") -> str:
    if summary is None or summary.get(key) is None:
        return "—"
    return f"{summary[key]:.2f} ± {summary['stderr']:.2f}"


def print_table(rows: list[dict], data: str, points: int) -> None:
    print(f"\n{data}, {points} test images (binarized), nats per image; ± the standard error over the images")
    header = (f"{'model':<17} {'log p̂(x)':>15} {'ELBO':>15} {'CUBO':>15} {'gap':>6} {'approx.':>7} {'amort.':>7} "
              f"{'s/epoch':>8} {'q: encoder ms':>13} {'+ refine ms':>11}")  # fmt: skip
    print(header)
    print("-" * len(header))
    for row in rows:
        r = row["report"]
        approx = r["approximation_gap"]["mean"] if r["approximation_gap"] else None
        amort = r["amortization_gap"]["mean"] if r["amortization_gap"] else None
        ms = "—" if row["encoder_ms"] is None else f"{row['encoder_ms']:.3f}"
        refined = "none needed" if row["refined_ms"] is None else f"{row['refined_ms']:.0f}"
        print(f"{row['model']:<17} {_cell(r['log_evidence']):>15} {_cell(r['elbo']):>15} {_cell(r['upper_bound']):>15} "
              f"{r['gap']:>6.2f} {'—' if approx is None else f'{approx:.2f}':>7} "
              f"{'—' if amort is None else f'{amort:.2f}':>7} {row['seconds_per_epoch']:>8.2f} {ms:>13} "
              f"{refined:>11}")  # fmt: skip
    if any(row["model"] == MODELS["density"] for row in rows):
        print("The flow density's gap is the dequantization gap, log P(x) − E_u log p(x + u): it has no latent code,\n"
              "so no approximation/amortization split and no q to infer.")  # fmt: skip


def plot(rows: list[dict], path: Path, data: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for i, row in enumerate(rows):
        r = row["report"]
        low, mid, high = r["elbo"]["mean"], r["log_evidence"]["mean"], r["upper_bound"]["mean"]
        left.plot([i, i], [low, high], color="0.6", lw=6, solid_capstyle="butt")
        left.plot(i, low, "v", color="C0", label="ELBO" if i == 0 else None)
        left.errorbar(i, mid, yerr=2 * r["log_evidence"]["stderr"], fmt="o", color="C3", capsize=4,
                      label="log p̂(x) ± 2 s.e." if i == 0 else None)  # fmt: skip
        left.plot(i, high, "^", color="C2", label="CUBO" if i == 0 else None)
        approx = r["approximation_gap"]["mean"] if r["approximation_gap"] else r["gap"]
        amort = r["amortization_gap"]["mean"] if r["amortization_gap"] else 0.0
        right.bar(i, approx, color="C1", label="approximation (or dequantization) gap" if i == 0 else None)
        right.bar(i, amort, bottom=approx, color="C4", label="amortization gap" if i == 0 else None)
        right.annotate(f"{r['gap']:.2f} ± {r['gap_stderr']:.2f}", (i, approx + amort), xytext=(0, 2),
                       textcoords="offset points", ha="center", va="bottom", fontsize=8)  # fmt: skip
    for ax in (left, right):
        ax.set_xticks(range(len(rows)), [row["model"] for row in rows], rotation=15)
    left.set_ylabel("nats per image")
    left.set_title(f"{data}: the bracket per model")
    left.legend(loc="lower right", fontsize=8)
    right.set_ylabel("nats per image")
    right.set_title("the gap log p̂ − ELBO (all points) and its split (refined points)")
    right.margins(y=0.1)
    right.legend(fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
