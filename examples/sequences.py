"""Fit an HMM and a linear-Gaussian state-space model to data drawn from known models, and
plot the inferred states against the true ones.

    python examples/sequences.py [--out examples_out]

1. A 3-state Gaussian HMM generates 40 sequences of ragged lengths (60 to 200 steps). A fresh
   HMM is fitted by EM (Baum–Welch) from a k-means++ start. The script prints the
   log-likelihood per sequence under the true and the fitted parameters.
   - Fitted states are matched to true states by their means; the script then reports how
     often the Viterbi path equals the true path.
   - hmm_states.png shows the posterior state probabilities, the true path and the Viterbi
     path for one sequence.
2. A 2-d rotating state observed through a 3-d noisy projection (a damped oscillator) gives 20
   sequences of 300 steps. The Kalman filter scores them; EM fits a fresh model from a random
   start.
   - The smoother's states are compared with the truth. A state-space model is identifiable
     only up to an invertible linear map of z, so the script regresses the true states on the
     fitted model's smoothed means and reports R².
   - lgssm_states.png shows the true model's smoothed states, ±2 sd, against the true
     trajectory.
"""

from __future__ import annotations

import argparse
import math
import warnings
from pathlib import Path

import torch

import elbox
from elbox.plots import plot_state_path, plot_trajectory


def hmm_part(out: Path) -> None:
    K, D = 3, 2
    truth = elbox.HMM(
        K, "gaussian", dim=D,
        loc=torch.tensor([[-3.0, 0.0], [0.0, 2.5], [3.0, 0.0]]),
        covariance=torch.full((K, D), 0.8),
        transition_matrix=torch.tensor([[0.90, 0.08, 0.02], [0.05, 0.90, 0.05], [0.02, 0.08, 0.90]]),
    )
    x, z = truth.sample(40, num_steps=200)
    lengths = torch.randint(60, 201, (40,))
    seqs = elbox.Sequences(x, lengths=lengths)

    model = elbox.HMM(K, "gaussian", dim=D)
    history = elbox.em(model, seqs, init="kmeans++", seed=0, max_iter=200, tol=1e-8)
    fitted, true_ll = history.final, float(truth.log_evidence(seqs).detach().mean())
    print(f"HMM: EM converged={history.converged} in {history.n_iter} iterations")
    print(f"  log-likelihood per sequence: fitted {fitted:.3f}, true parameters {true_ll:.3f}")

    # Label switching: match fitted states to true states by their means.
    distance = torch.cdist(model.emissions.loc.detach(), truth.emissions.loc.detach())  # [fitted, true]
    relabel = distance.argmin(1)
    path, _ = model.viterbi(seqs)
    decoded = relabel[path.clamp_min(0)]
    accuracy = float((decoded == z)[seqs.mask].double().mean())
    print(f"  Viterbi path equals the true state at {100 * accuracy:.1f}% of steps")

    b = 0
    marginals = model.posterior(seqs).marginals()[b, : lengths[b]]  # [T_b, K] in fitted labels
    true_order = torch.zeros_like(marginals).index_add_(1, relabel, marginals)  # columns in true labels
    plot_state_path(
        true_order, out / "hmm_states.png", true_states=z[b, : lengths[b]], decoded=decoded[b, : lengths[b]],
        observations=x[b, : lengths[b]], title="HMM fitted by EM: p(z_t | x), true path, Viterbi path",
    )


def lgssm_part(out: Path) -> None:
    angle = 2 * math.pi / 50
    rotation = 0.98 * torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    truth = elbox.LinearGaussianSSM(
        2, 3, transition_matrix=rotation,
        observation_matrix=torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]]),
        transition_covariance=0.05 * torch.eye(2), observation_covariance=0.3 * torch.eye(3),
        initial_covariance=4 * torch.eye(2),
    )
    x, z = truth.sample(20, num_steps=300)
    true_ll = float(truth.log_evidence(x).detach().mean())
    print(f"LGSSM: log-likelihood per sequence under the true parameters {true_ll:.3f}")

    model = elbox.LinearGaussianSSM(2, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", elbox.ConvergenceWarning)
        history = elbox.em(model, x, init="random", seed=0, max_iter=300, tol=1e-6)
    print(f"  EM: {history.n_iter} iterations, log-likelihood per sequence {history.final:.3f}")

    # z is identified only up to an invertible map: regress the true states on the fitted ones.
    fitted = model.posterior(x).mean.detach().reshape(-1, 2)  # [B T, 2]
    design = torch.cat([fitted, torch.ones(len(fitted), 1)], 1)
    target = z.reshape(-1, 2)
    coef = torch.linalg.lstsq(design, target).solution
    resid = target - design @ coef
    r2 = 1 - resid.square().sum(0) / (target - target.mean(0)).square().sum(0)
    print(f"  true states explained by the fitted model's smoothed states: R² = {r2[0]:.3f}, {r2[1]:.3f}")

    post = truth.posterior(x)
    plot_trajectory(
        post.mean[0], post.variance[0], out / "lgssm_states.png", true_states=z[0],
        title="Kalman smoother (true parameters): smoothed states ± 2 sd against the truth",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("examples_out"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    hmm_part(args.out)
    lgssm_part(args.out)
    print(f"figures written to {args.out}/hmm_states.png and {args.out}/lgssm_states.png")


if __name__ == "__main__":
    main()
