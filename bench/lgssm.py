"""Kalman-filter log-likelihood: elbox against pykalman, same model and data, one run.

    python bench/lgssm.py [--state-dim 4] [--obs-dim 2] [--steps 2000] [--batch 256]

Two workloads: one sequence of ``--steps`` steps, and ``--batch`` sequences of the same
length (pykalman filters one sequence per call, so it loops; elbox filters the batch at
once). Both in float64; the script prints seconds, the ratios and the largest difference
between the log-likelihoods, which must agree. Then the smoother on one sequence of
``--smooth-steps`` steps: pykalman's ``smooth`` against elbox's ``e_step`` (filter, RTS smoother
and the posterior's moments), with the largest difference of the smoothed means and covariances.

    python bench/lgssm.py --smooth-steps 100000     # the long-sequence case of issue 16

With ``--unsettled-steps N``, the same two on a model whose covariance recursion never settles
(an unobserved random walk beside the observed state).

With ``--dynamax``, the rows of issue 30 against dynamax (``lgssm_filter`` / ``lgssm_smoother``
under ``jax.jit``, ``vmap`` for the batch; ``fit_em`` for EM), each side in its own process
(bench/_dynamax.py, run by ``$ELBOX_BENCH_PYTHON``, a virtual environment with the ``bench``
extra), medians of ``--repeats`` after one untimed call, JAX's compilation reported apart:

    ELBOX_BENCH_PYTHON=/path/to/bench-venv/bin/python python bench/lgssm.py --dynamax
"""

from __future__ import annotations

import argparse
import copy
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from pykalman import KalmanFilter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, median_time, run_peer, timed  # noqa: E402

import elbox  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dim", type=int, default=4)
    parser.add_argument("--obs-dim", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--smooth-steps", type=int, default=None, help="the smoother's sequence (default --steps)")
    parser.add_argument("--unsettled-steps", type=int, default=0, help="a never-settling model's sequence (0: none)")
    parser.add_argument("--repeats", type=int, default=5, help="elbox is timed as the best of this many")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dynamax", action="store_true", help="issue 30's rows against dynamax instead")
    parser.add_argument("--unsettled", default="2000,3000,100000", help="--dynamax: the never-settling lengths")
    parser.add_argument("--em-iterations", type=int, default=20, help="--dynamax: EM on the batch (0: skip)")
    args = parser.parse_args()
    D, Dx, T, B = args.state_dim, args.obs_dim, args.steps, args.batch
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(args.seed)

    A = torch.randn(D, D)
    a, r = torch.randn(D, D), torch.randn(Dx, Dx)
    model = elbox.LinearGaussianSSM(
        D,
        Dx,
        transition_matrix=0.95 * A / torch.linalg.matrix_norm(A, 2),
        observation_matrix=torch.randn(Dx, D),
        transition_covariance=a @ a.T / D + 0.1 * torch.eye(D),
        observation_covariance=r @ r.T / Dx + 0.1 * torch.eye(Dx),
        initial_loc=torch.randn(D),
    )
    x, _ = model.sample(B, num_steps=T)  # [B, T, Dx]
    if args.dynamax:
        return _against_dynamax(model, x, args)
    peer = _peer(model)
    x_np = x.numpy()

    times: dict[str, float] = {}
    rows = []
    with torch.no_grad():
        for label, batch in (("1 sequence", x[:1]), (f"{B} sequences", x)):
            with timed(times, "pykalman"):
                expected = np.array([peer.loglikelihood(x_np[b]) for b in range(len(batch))])
            best = np.inf
            for _ in range(args.repeats):
                with timed(times, "elbox"):
                    ours = model.log_evidence(batch).numpy()
                best = min(best, times["elbox"])
            rows.append((label, times["pykalman"], best, np.abs(ours - expected).max()))

        # the smoother: posterior means and covariances of one long sequence
        Ts = args.smooth_steps or T
        xs, _ = model.sample(1, num_steps=Ts)
        with timed(times, "pykalman"):
            means_pk, covs_pk = peer.smooth(xs[0].numpy())
        best = np.inf
        for _ in range(min(args.repeats, 3)):
            with timed(times, "elbox"):
                means, covs, _ = model.e_step(xs)[0].moments()
            best = min(best, times["elbox"])
        diff = max(np.abs(means[0].numpy() - means_pk).max(), np.abs(covs[0].numpy() - covs_pk).max())
        rows.append((f"smoother, {Ts:,} steps", times["pykalman"], best, diff))
        if args.unsettled_steps:
            rows += _unsettled(args.unsettled_steps, min(args.repeats, 3), times)

    print(f"# Kalman log-likelihood: state {D}, observations {Dx}, {T} steps, float64")
    print(f"# {environment()}")
    print(f"{'':24s} {'pykalman (s)':>13s} {'elbox (s)':>11s} {'ratio':>8s} {'max |diff|':>11s}")
    for label, peer_s, ours_s, diff in rows:
        print(f"{label:24s} {peer_s:13.4f} {ours_s:11.5f} {peer_s / ours_s:7.0f}x {diff:11.1e}")


def _peer(model) -> KalmanFilter:
    """pykalman's filter of the same model."""
    return KalmanFilter(
        transition_matrices=model.transition_matrix.detach().numpy(),
        observation_matrices=model.observation_matrix.detach().numpy(),
        transition_covariance=model.transition_covariance.detach().numpy(),
        observation_covariance=model.observation_covariance.detach().numpy(),
        initial_state_mean=model.initial_loc.detach().numpy(),
        initial_state_covariance=model.initial_covariance.detach().numpy(),
    )


def _unsettled(T: int, repeats: int, times: dict) -> list:
    """Log-likelihood and smoother rows for a model whose Riccati recursion never settles."""
    model = elbox.LinearGaussianSSM(2, 1, transition_matrix=torch.diag(torch.tensor([0.9, 1.0])),
                                    observation_matrix=torch.tensor([[1.0, 0.0]]),
                                    transition_covariance=torch.diag(torch.tensor([0.5, 0.01])),
                                    observation_covariance=torch.eye(1))  # fmt: skip
    peer = _peer(model)
    x, _ = model.sample(1, num_steps=T)
    rows = []
    with timed(times, "pykalman"):
        expected = peer.loglikelihood(x[0].numpy())
    best = np.inf
    for _ in range(repeats):
        with timed(times, "elbox"):
            ours = float(model.log_evidence(x))
        best = min(best, times["elbox"])
    rows.append((f"unsettled, {T:,} steps", times["pykalman"], best, abs(ours - expected) / abs(expected)))
    with timed(times, "pykalman"):
        means_pk, covs_pk = peer.smooth(x[0].numpy())
    best = np.inf
    for _ in range(repeats):
        with timed(times, "elbox"):
            means, covs, _ = model.e_step(x)[0].moments()
        best = min(best, times["elbox"])
    diff = max(np.abs(means[0].numpy() - means_pk).max(), np.abs(covs[0].numpy() - covs_pk).max())
    rows.append((f"unsettled smoother {T:,}", times["pykalman"], best, diff))
    return rows


def _unsettled_model() -> elbox.LinearGaussianSSM:
    """An unobserved random walk beside an observed AR(1): the Riccati recursion never settles."""
    return elbox.LinearGaussianSSM(2, 1, transition_matrix=torch.diag(torch.tensor([0.9, 1.0])),
                                   observation_matrix=torch.tensor([[1.0, 0.0]]),
                                   transition_covariance=torch.diag(torch.tensor([0.5, 0.01])),
                                   observation_covariance=torch.eye(1))  # fmt: skip


def _arrays(model, prefix: str) -> dict:
    get = lambda t: t.detach().numpy()  # noqa: E731
    return {prefix + "m0": get(model.initial_loc), prefix + "P0": get(model.initial_covariance),
            prefix + "A": get(model.transition_matrix), prefix + "Q": get(model.transition_covariance),
            prefix + "C": get(model.observation_matrix), prefix + "R": get(model.observation_covariance)}  # fmt: skip


def _against_dynamax(model, x, args) -> None:
    """Issue 30's rows: elbox timed here (torch only), dynamax in its own process."""
    B, T = x.shape[:2]
    unsettled = _unsettled_model()
    lengths = [int(n) for n in args.unsettled.split(",") if n]
    xs, _ = model.sample(1, num_steps=args.smooth_steps or T)
    arrays = {**_arrays(model, "s"), **_arrays(unsettled, "u"), "em_iterations": args.em_iterations}
    # (row key, label, elbox model, data, what)
    rows = [("loglik:s:1", f"log-lik, settled, {T:,} steps, 1 sequence", model, x[:1], "loglik"),
            ("loglik:s:B", f"log-lik, settled, {T:,} steps, {B} sequences", model, x, "loglik"),
            ("smooth:s:1", f"RTS smoother, settled, {xs.shape[1]:,} steps", model, xs, "smooth")]  # fmt: skip
    for n in lengths:
        xu, _ = unsettled.sample(1, num_steps=n)
        rows.append((f"loglik:u:{n}", f"log-lik, never settling, {n:,} steps", unsettled, xu, "loglik"))
        if n == max(lengths):
            rows.append((f"smooth:u:{n}", f"RTS smoother, never settling, {n:,} steps", unsettled, xu, "smooth"))
    for key, _, _, data, _ in rows:
        arrays[key] = data[0].numpy() if key.endswith(":1") or key.startswith(("loglik:u", "smooth")) else data.numpy()
    if args.em_iterations:  # both from the same start: A = I / 2, a random C, the default covariances
        start = elbox.LinearGaussianSSM(model.state_dim, model.obs_dim)
        torch.manual_seed(args.seed + 1)
        with torch.no_grad():
            start.transition_matrix.copy_(0.5 * torch.eye(model.state_dim))
            start.observation_matrix.copy_(torch.randn(model.obs_dim, model.state_dim))
        arrays.update(_arrays(start, "e"))
        arrays["em:e:B"] = x.numpy()
        rows.append(("em:e:B", f"EM, {B} x {T:,} steps, {args.em_iterations} iterations", start, x, "em"))
    arrays["rows"] = np.array([key for key, *_ in rows])
    peer = run_peer("lgssm", arrays, args.repeats)
    results = []
    with torch.no_grad():
        for key, label, m, data, what in rows:
            if what == "loglik":
                seconds, ours = median_time(lambda m=m, data=data: m.log_evidence(data).numpy(), args.repeats)
                theirs = peer[key] if peer else None
                diff = np.abs(ours - theirs).max() / np.abs(theirs).max() if peer else np.nan
            elif what == "smooth":
                seconds, (means, covs, _) = median_time(
                    lambda m=m, data=data: m.e_step(data)[0].moments(), min(args.repeats, 3)
                )
                diff = max(np.abs(means[0].numpy() - peer[key + ":means"]).max(),
                           np.abs(covs[0].numpy() - peer[key + ":covs"]).max()) if peer else np.nan  # fmt: skip
            else:
                def fit(m=m, data=data):
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        return elbox.em(copy.deepcopy(m), data, max_iter=args.em_iterations, tol=None)  # all run

                seconds, history = median_time(fit, 3)  # the median of three fits, as dynamax's row
                assert history.n_iter == args.em_iterations, history.n_iter
                # dynamax records the log-likelihood before each M-step, as the bound after each E-step
                theirs = peer[key] if peer else None
                ours = np.asarray(history.lower_bound) * B
                diff = np.abs(ours[0] - theirs[0]) / abs(theirs[0]) if peer else np.nan
            results.append((label, seconds, peer[key + ":time"] if peer else np.nan,
                            peer[key + ":first"] if peer else np.nan, diff))  # fmt: skip
    print(f"# issue 30: elbox against dynamax, float64, medians of {args.repeats} (each side in its own process)")
    print(f"# {environment()}; {peer['versions'] if peer else 'no dynamax'}")
    print(f"{'':48s} {'elbox (ms)':>11s} {'dynamax (ms)':>13s} {'ratio':>7s} {'jit+1st (s)':>11s} {'max |diff|':>11s}")
    for label, ours_s, theirs_s, first_s, diff in results:
        print(f"{label:48s} {1e3 * ours_s:11.2f} {1e3 * theirs_s:13.2f} {theirs_s / ours_s:6.2f}x "
              f"{first_s:11.2f} {diff:11.1e}")  # fmt: skip
    print("# ratio = dynamax / elbox (above 1: elbox faster); max |diff|: relative for log-likelihoods, absolute for")
    print("# smoothed means and covariances; EM: relative difference of the first iteration's log-likelihood")


if __name__ == "__main__":
    main()
