"""EM for a full-covariance Gaussian mixture: elbox against scikit-learn, same start, one run.

    python bench/gmm_em.py [--n 100000] [--dim 10] [--components 16] [--iterations 100]

Both fit the same data from the same weights, means and covariances for the same number of
M-steps in float64, with tol=0 so that neither stops early; the script prints seconds per
iteration, the ratio, and both final average log-likelihoods (which must agree).

``--pomegranate`` adds pomegranate 1.x (``GeneralMixtureModel`` of full-covariance ``Normal``s,
float64, the same start and iterations) as a third column, timed in its own process from the
``bench`` extra's environment (``$ELBOX_BENCH_PYTHON``; bench/_pomegranate.py).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning as SkConvergenceWarning
from sklearn.mixture import GaussianMixture as SkGaussianMixture

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, run_peer, timed  # noqa: E402

import elbox  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=10)
    parser.add_argument("--components", type=int, default=16)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pomegranate", action="store_true", help="pomegranate as a third column")
    args = parser.parse_args()
    N, D, K, T = args.n, args.dim, args.components, args.iterations
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(args.seed)

    # Data from a random mixture; the start is one M-step on random responsibilities.
    a = torch.randn(K, D, D)
    truth = elbox.GaussianMixture(K, D, loc=3 * torch.randn(K, D), covariance=a @ a.mT / D + 0.1 * torch.eye(D))
    x, _ = truth.sample(N)
    model = elbox.GaussianMixture(K, D)
    model.initialize(x, "random", generator=torch.Generator().manual_seed(args.seed))
    weights = model.weights.detach().numpy().copy()  # copies: EM writes the parameters in place
    means = model.loc.detach().numpy().copy()
    precisions = np.linalg.inv(model.covariance.detach().numpy())
    x_np = x.numpy()

    times: dict[str, float] = {}
    sk = SkGaussianMixture(
        K,
        covariance_type="full",
        tol=0.0,
        max_iter=T,
        init_params="random_from_data",
        weights_init=weights,
        means_init=means,
        precisions_init=precisions,
        reg_covar=model.reg_covar,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkConvergenceWarning)
        warnings.simplefilter("ignore", elbox.ConvergenceWarning)
        with timed(times, "sklearn"):
            sk.fit(x_np)  # T E-steps and T M-steps, then one more E-step
        with timed(times, "elbox"):
            history = elbox.em(model, x, max_iter=T + 1, tol=None)  # T + 1 E-steps, T M-steps, never stopping early
    assert history.n_iter == T + 1, history.n_iter
    sk_ll = float(sk.score(x_np))
    peer = None
    if args.pomegranate:  # the same start: the weights, means and covariances elbox started from
        start = {"x": x_np, "weights": weights, "means": means, "covariances": np.linalg.inv(precisions),
                 "iterations": T}  # fmt: skip
        peer = run_peer("gmm", start, 1, "pomegranate")
    el_ll = history.final

    per_sk, per_el = times["sklearn"] / T, times["elbox"] / T
    print(f"# GaussianMixture EM: N={N}, D={D}, K={K} full covariances, {T} iterations, float64")
    print(f"# {environment()}")
    print(f"{'':10s} {'s/iteration':>12s} {'final avg log-lik':>20s}")
    print(f"{'sklearn':10s} {per_sk:12.4f} {sk_ll:20.10f}")
    print(f"{'elbox':10s} {per_el:12.4f} {el_ll:20.10f}")
    if peer:
        done = int(peer["em:iterations"])
        per_pg, pg_ll = float(peer["em:time"]) / max(done, 1), float(peer["em"][0])
        note = "" if done == T else f", failed at iteration {done + 1} (time per completed iteration)"
        print(f"{'pomegranate':10s} {per_pg:12.4f} {pg_ll:20.10f}   # {peer['versions']}{note}")
    print(f"speed-up (sklearn / elbox): {per_sk / per_el:.1f}x;  |log-lik difference| = {abs(sk_ll - el_ll):.2e}")
    if peer:
        print(f"speed-up (pomegranate / elbox): {per_pg / per_el:.1f}x;  "
              f"|log-lik difference| = {abs(pg_ll - el_ll):.2e}")


if __name__ == "__main__":
    main()
