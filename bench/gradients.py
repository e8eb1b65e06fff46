"""log p(x) and its gradient: the compiled passes (the HMM's forward–backward with its closed-form
gradient, the Kalman filter and smoother with Fisher's identity) against autograd through the
torch kernels, the path gradients took before, in one run; float64, medians of ``--repeats``.
Then the marginals' gradient, which stays on the torch pass: its loop over time against its chunks.

    python bench/gradients.py [--repeats 7]

The torch kernels run with ``ELBOX_COMPILED=0`` (read at every call). Each row checks that the
two gradients agree and prints the largest relative difference.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, median_time  # noqa: E402

import elbox  # noqa: E402
from elbox.distributions.hmm_kernels import hmm_log_evidence  # noqa: E402


def _hmm_row(B: int, T: int, K: int):
    leaves = [torch.randn(K, requires_grad=True), torch.randn(K, K, requires_grad=True),
              (3 * torch.randn(B, T, K)).requires_grad_()]  # fmt: skip
    return lambda: torch.autograd.grad(hmm_log_evidence(*leaves).sum(), leaves)


def _kalman_row(B: int, T: int, settling: bool):
    if settling:
        A, a, r = torch.randn(4, 4), torch.randn(4, 4), torch.randn(2, 2)
        model = elbox.LinearGaussianSSM(4, 2, transition_matrix=0.9 * A / torch.linalg.matrix_norm(A, 2),
                                        observation_matrix=torch.randn(2, 4),
                                        transition_covariance=a @ a.T / 4 + 0.1 * torch.eye(4),
                                        observation_covariance=r @ r.T / 2 + 0.1 * torch.eye(2))  # fmt: skip
    else:  # an unobserved random walk beside an observed AR(1): never settles
        model = elbox.LinearGaussianSSM(2, 1, transition_matrix=torch.diag(torch.tensor([0.9, 1.0])),
                                        observation_matrix=torch.tensor([[1.0, 0.0]]),
                                        transition_covariance=torch.diag(torch.tensor([0.5, 0.01])),
                                        observation_covariance=torch.eye(1))  # fmt: skip
    x = model.sample(B, num_steps=T)[0]
    params = [p for p in model.parameters() if p.requires_grad]
    return lambda: torch.autograd.grad(model.log_evidence(x).sum(), params, allow_unused=True, materialize_grads=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    rows = [("HMM, K=8, 200 x 500", _hmm_row(200, 500, 8)), ("HMM, K=8, 32 x 100", _hmm_row(32, 100, 8)),
            ("HMM, K=8, 4 x 2,000", _hmm_row(4, 2000, 8)), ("HMM, K=8, 1 x 100,000", _hmm_row(1, 100_000, 8)),
            ("Kalman, settled, 256 x 2,000", _kalman_row(256, 2000, True)),
            ("Kalman, settled, 16 x 200", _kalman_row(16, 200, True)),
            ("Kalman, never settling, 1 x 2,000", _kalman_row(1, 2000, False)),
            ("Kalman, never settling, 1 x 100,000", _kalman_row(1, 100_000, False))]  # fmt: skip
    print("# log p(x) and its gradient: autograd through the torch kernels against the compiled passes, float64")
    print(f"# {environment()}")
    print(f"{'':38s} {'torch (ms)':>11s} {'compiled (ms)':>14s} {'ratio':>7s} {'max rel diff':>13s}")
    for label, step in rows:
        os.environ["ELBOX_COMPILED"] = "0"
        before, expected = median_time(step, args.repeats)
        os.environ["ELBOX_COMPILED"] = "1"
        after, ours = median_time(step, args.repeats)
        pairs = [(a, b) for a, b in zip(ours, expected) if b.numel()]
        diff = max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-300)) for a, b in pairs)
        print(f"{label:38s} {1e3 * before:11.2f} {1e3 * after:14.2f} {before / after:6.1f}x {diff:13.1e}")
    print("# ratio = torch / compiled (above 1: the compiled passes faster)")
    _marginals(args.repeats)


def _marginals(repeats: int) -> None:
    """The marginals' gradient (forward–backward under autograd, which the compiled passes do not
    take): the torch pass's loop over time against its chunks (chunk_length's rule with a
    gradient: chunks from 64 steps where the products pay)."""
    import elbox.distributions.hmm_kernels as kernels

    rule = kernels.chunk_length
    print("# the marginals' and log p's gradient through the torch forward–backward: loop against chunks")
    print(f"{'':38s} {'loop (ms)':>11s} {'chunks (ms)':>14s} {'ratio':>7s} {'max rel diff':>13s}")
    for B, T, K in [(1, 50, 3), (1, 100, 8), (4, 500, 8), (1, 1000, 4), (4, 1500, 8)]:
        leaves = [torch.randn(K, requires_grad=True), torch.randn(K, K, requires_grad=True),
                  (3 * torch.randn(B, T, K)).requires_grad_()]  # fmt: skip
        mask, probe = torch.ones(B, T, dtype=torch.bool), torch.randn(B, T, K)

        def step(leaves=leaves, mask=mask, probe=probe):
            fb = kernels.forward_backward(*leaves, mask)
            return torch.autograd.grad((fb.marginals * probe).sum() + fb.log_norm.sum(), leaves)

        kernels.chunk_length = lambda *a, **k: 0
        loop, expected = median_time(step, repeats)
        kernels.chunk_length = rule
        chunks, ours = median_time(step, repeats)
        diff = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(ours, expected))
        label = f"HMM, K={K}, {B} x {T:,}"
        print(f"{label:38s} {1e3 * loop:11.2f} {1e3 * chunks:14.2f} {loop / chunks:6.1f}x {diff:13.1e}")


if __name__ == "__main__":
    main()
