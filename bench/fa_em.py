"""Factor analysis by maximum likelihood: elbox's EM against scikit-learn's FactorAnalysis.

    python bench/fa_em.py [--n 100000] [--dim 50] [--factors 10] [--tol 1e-8]

Both fit the same data in float64 to the same tolerance on the average log-likelihood.
scikit-learn's FactorAnalysis is not EM: it iterates an SVD of the noise-whitened data
(Barber, 2012, 21.2.2), which takes fewer, costlier iterations. So the script prints seconds
per iteration, iterations, total seconds to convergence, the ratios, and both final average
log-likelihoods (which must agree: the maximum is unique up to a rotation of the factors).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch
from sklearn.decomposition import FactorAnalysis as SkFactorAnalysis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, timed  # noqa: E402

import elbox  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=50)
    parser.add_argument("--factors", type=int, default=10)
    parser.add_argument("--tol", type=float, default=1e-8)
    parser.add_argument("--max-iter", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    N, D, K = args.n, args.dim, args.factors
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(args.seed)
    truth = elbox.FactorAnalysis(D, K)
    with torch.no_grad():
        truth.loading.copy_(torch.randn(D, K))
        truth.loc.copy_(torch.randn(D))
        truth.noise_variance = 0.2 + torch.rand(D)
    x, _ = truth.sample(N)
    x_np = x.numpy()

    times: dict[str, float] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk = SkFactorAnalysis(n_components=K, tol=args.tol, max_iter=args.max_iter, random_state=args.seed)
        with timed(times, "sklearn"):
            sk.fit(x_np)
        model = elbox.FactorAnalysis(D, K)
        with timed(times, "elbox"):
            history = elbox.em(model, x, init="pca", max_iter=args.max_iter, tol=args.tol)
    sk_ll, el_ll = float(sk.score(x_np)), history.final
    sk_iter, el_iter = sk.n_iter_, history.n_iter

    print(f"# FactorAnalysis: N={N}, D={D}, K={K}, tol={args.tol:g} on the average log-likelihood, float64")
    print(f"# {environment()}")
    print(f"{'':10s} {'s/iteration':>12s} {'iterations':>11s} {'total s':>9s} {'final avg log-lik':>20s}")
    print(f"{'sklearn':10s} {times['sklearn'] / sk_iter:12.5f} {sk_iter:11d} {times['sklearn']:9.3f} {sk_ll:20.10f}")
    print(f"{'elbox':10s} {times['elbox'] / el_iter:12.5f} {el_iter:11d} {times['elbox']:9.3f} {el_ll:20.10f}")
    per_iter = (times["sklearn"] / sk_iter) / (times["elbox"] / el_iter)
    print(
        f"speed-up (sklearn / elbox): {per_iter:.1f}x per iteration, "
        f"{times['sklearn'] / times['elbox']:.1f}x in total; "
        f"log-lik difference (elbox − sklearn) = {el_ll - sk_ll:+.2e}"
    )


if __name__ == "__main__":
    main()
