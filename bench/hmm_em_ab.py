"""Seconds for 50 EM iterations of the Gaussian HMM of bench/hmm.py (K = 8, D = 4, 200 sequences
of 500 steps), for the elbox in a given checkout: run it for two checkouts, alternating, to
compare two versions on the same machine.

    git worktree add /tmp/old 15c6924
    .venv/bin/python bench/hmm_em_ab.py /tmp/old; .venv/bin/python bench/hmm_em_ab.py .
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import torch


def main() -> None:
    checkout = Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
    sys.path.insert(0, str(checkout))
    import elbox

    warnings.simplefilter("ignore")  # 50 iterations with tol=0 do not "converge"
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    K, D, B, T = 8, 4, 200, 500
    transition = 0.6 * torch.eye(K) + 0.4 * torch.distributions.Dirichlet(torch.ones(K)).sample((K,))
    truth = elbox.HMM(K, "gaussian", dim=D, loc=3 * torch.randn(K, D), transition_matrix=transition)
    x, _ = truth.sample(B, num_steps=T)  # [B, T, D]
    model = elbox.HMM(K, "gaussian", dim=D, reg_covar=0.0)
    model.initialize(x, "kmeans++", generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    history = elbox.em(model, x, max_iter=50, tol=0.0)
    print(f"{checkout}  {time.perf_counter() - start:.3f} s  {history.n_iter} iterations  final {history.final:.6f}")


if __name__ == "__main__":
    main()
