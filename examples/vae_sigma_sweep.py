"""A Gaussian-decoder VAE on the embedded 8×8 digits for several observation variances σ², and
a plain autoencoder for contrast: the rate/distortion trade-off that σ² controls.

    python examples/vae_sigma_sweep.py [--out examples_out] [--epochs 60]

For each σ², the script prints the ELBO, the reconstruction term, the KL to the prior (the
rate), the squared reconstruction error (the distortion) and the number of active units. The
autoencoder's KL and ELBO are printed as what they are: infinite. It writes
rate_distortion.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import elbox
from elbox.data import digits
from elbox.plots import plot_rate_distortion


def train(x, epochs, **options):
    torch.manual_seed(0)
    vae = elbox.VAE(64, 8, hidden=(128,), decoder="gaussian", **options)
    elbox.fit(vae, vae.guide, x, epochs=epochs, batch_size=128, lr=3e-3, seed=0)
    with torch.no_grad():
        terms = elbox.elbo(vae, vae.guide, x)
        distortion = float((vae.reconstruct(x) - x).square().sum(-1).mean())
        q = vae.guide(x)
        active = int((q.mean.var(0) > 0.01).sum()) if hasattr(q, "base_dist") else vae.latent_dim
    return terms, distortion, active


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("examples_out"))
    parser.add_argument("--epochs", type=int, default=60)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    x, _ = digits()
    print(f"{'':14s} {'ELBO':>9s} {'recon':>9s} {'KL (rate)':>10s} {'sq. error':>10s} {'active':>7s}")
    points = []
    for variance in (0.003, 0.01, 0.03, 0.1, 0.3, 1.0):
        terms, distortion, active = train(x, args.epochs, observation_variance=variance)
        rate = float(terms.kl.mean())
        print(
            f"{'σ² = ' + format(variance, 'g'):14s} {float(terms.value.mean()):9.2f} "
            f"{float(terms.reconstruction.mean()):9.2f} {rate:10.2f} {distortion:10.3f} {active:7d}"
        )
        points.append((f"σ²={variance:g}", rate, distortion))
    terms, distortion, _ = train(x, args.epochs, observation_variance=0.01, deterministic_encoder=True)
    print(
        f"{'autoencoder':14s} {float(terms.value.mean()):9.2f} {float(terms.reconstruction.mean()):9.2f} "
        f"{float(terms.kl.mean()):10.2f} {distortion:10.3f} {'-':>7s}"
    )
    plot_rate_distortion(
        points, args.out / "rate_distortion.png", title="Gaussian VAE on 8×8 digits: σ² trades rate for distortion"
    )
    print(f"figure written to {args.out}/rate_distortion.png")


if __name__ == "__main__":
    main()
