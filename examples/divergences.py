"""The choice of divergence, shown: one Gaussian q fitted to a bimodal posterior.

The model is elbox.models.MixturePrior: z ~ ½ N(−5, 1) + ½ N(5, 1), x | z ~ N(z, 1), observed at
x = 0, so p(z | x) = ½ N(−2.5, ½) + ½ N(2.5, ½), known exactly. The same q = N(m, s²) is fitted by

- reverse KL(q ‖ p), the ELBO: mode-seeking, q settles on one mode;
- forward KL(p ‖ q), reweighted wake-sleep: mass-covering, q spreads over both;
- Rényi-α bounds (α = 1 is the ELBO; α = 0 the IWAE bound; α = 2 seeks a mode harder than the ELBO).

    python examples/divergences.py --out figures    # writes divergences.png, prints each fit
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

import elbox
from elbox.guides import MeanFieldNormal
from elbox.models import MixturePrior

#: label → (objective, its options)
DIVERGENCES = {
    "reverse KL (ELBO)": ("elbo", {"num_samples": 10}),
    "Rényi α = 2": ("renyi", {"alpha": 2.0, "num_samples": 50}),
    "Rényi α = 0.5": ("renyi", {"alpha": 0.5, "num_samples": 50}),
    "Rényi α = 0 (IWAE)": ("renyi", {"alpha": 0.0, "num_samples": 50}),
    "forward KL (RWS)": ("rws", {"num_samples": 50}),
}


def bimodal(separation: float = 5.0) -> tuple[MixturePrior, torch.Tensor]:
    """The model and its one observation x = 0: a symmetric posterior with modes at ±separation/2."""
    model = MixturePrior(torch.tensor([[-separation], [separation]]), noise_scale=1.0)
    return model, torch.zeros(1, 1)


def fit_all(model, x, *, steps: int = 2000, lr: float = 1e-2, seed: int = 0) -> dict[str, tuple[float, float]]:
    """Each divergence's fitted q, as (mean, standard deviation), from the same start N(1.5, 2²)."""
    fits = {}
    for label, (objective, options) in DIVERGENCES.items():
        torch.manual_seed(seed)
        guide = MeanFieldNormal(1, init_loc=torch.tensor([1.5]), init_scale=2.0)  # wide, nearer the right mode
        elbox.fit(model, guide, x, bound=objective, epochs=steps, lr=lr, seed=seed, optimize_model=False, **options)
        fits[label] = (float(guide.loc.detach()), float(guide.log_scale.detach().exp()))
    return fits


def plot(model, x, fits, path) -> None:
    from matplotlib.figure import Figure

    from elbox.plots._common import save_png

    z = torch.linspace(-6, 6, 961)
    posterior = model.posterior(x).log_prob(z.reshape(-1, 1, 1)).exp().squeeze(-1)
    fig = Figure(figsize=(8, 4.2), layout="constrained")
    ax = fig.add_subplot()
    ax.fill_between(z, posterior, color="0.85", label="p(z | x), exact")
    for i, (label, (loc, scale)) in enumerate(fits.items()):
        density = torch.exp(-0.5 * ((z - loc) / scale) ** 2) / (scale * math.sqrt(2 * math.pi))
        ax.plot(z, density, lw=1.8, color=f"C{i}", label=f"{label}: N({loc:.2f}, {scale:.2f}²)")
    ax.set_xlabel("z")
    ax.set_ylabel("density")
    ax.set_title("One Gaussian q fitted to a bimodal posterior, by divergence")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    save_png(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model, x = bimodal()
    truth = model.posterior(x)
    print(f"p(z | x): mean {float(truth.mean):.3f}, standard deviation {float(truth.variance.sqrt()):.3f}; "
          f"modes at ±{float(truth.component_distribution.mean[0, 1]):.2f}")  # fmt: skip
    fits = fit_all(model, x, steps=args.steps, seed=args.seed)
    for label, (loc, scale) in fits.items():
        print(f"{label:22s} q = N({loc:6.3f}, {scale:.3f}²)")
    plot(model, x, fits, args.out / "divergences.png")
    print(f"figure: {args.out / 'divergences.png'}")


if __name__ == "__main__":
    main()
