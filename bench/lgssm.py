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
(an unobserved random walk beside the observed state): the filter's covariances then take the
parallel scan after 1,024 steps.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from pykalman import KalmanFilter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, timed  # noqa: E402

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


if __name__ == "__main__":
    main()
