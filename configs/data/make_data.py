"""Writes the small sequence data sets the ready configs read (run from the repository root):

    .venv/bin/python configs/data/make_data.py

- ``hmm_sequences.npz``: 120 sequences of 20–60 steps from a 3-state HMM with 2-d Gaussian
  emissions (x [N, T, 2] padded, lengths [N]);
- ``lgssm_tracks.npz``: 100 noisy 2-d observations of 40 steps of a damped rotation in a 2-d
  state (x [N, T, 2]).

Both are draws from known models, so a fit can be compared with the truth (docs/hmm.md,
docs/lgssm.md). Seeded: the files are the same on every run.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

import elbox

HERE = Path(__file__).resolve().parent


def main() -> None:
    torch.manual_seed(0)
    hmm = elbox.HMM(3, "gaussian", dim=2, loc=torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 3.0]]),
                    transition_matrix=torch.tensor([[0.9, 0.05, 0.05], [0.1, 0.85, 0.05], [0.1, 0.1, 0.8]]))
    x, _ = hmm.sample(120, num_steps=60)
    lengths = np.random.default_rng(0).integers(20, 61, size=120)
    np.savez(HERE / "hmm_sequences.npz", x=x.numpy().astype(np.float32), lengths=lengths)

    angle = 0.2
    rotation = 0.97 * torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    ssm = elbox.LinearGaussianSSM(2, 2, transition_matrix=rotation, observation_covariance=0.3 * torch.eye(2))
    y, _ = ssm.sample(100, num_steps=40)
    np.savez(HERE / "lgssm_tracks.npz", x=y.numpy().astype(np.float32))


if __name__ == "__main__":
    main()
