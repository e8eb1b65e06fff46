"""The LGSSM with missing observations against complete data: log p(x) and the posterior's moments,
4-d state, 2-d observations, 2,000 steps, float64, medians of 5 (3 for the last row).

    OMP_NUM_THREADS=2 python bench/missing.py
"""

from __future__ import annotations

import time

import torch

import elbox


def _median(f, n: int = 5) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return sorted(times)[n // 2]


def main() -> None:
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    A = torch.randn(4, 4)
    model = elbox.LinearGaussianSSM(4, 2, transition_matrix=0.95 * A / torch.linalg.matrix_norm(A, 2),
                                    observation_matrix=torch.randn(2, 4))  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    for B in (1, 256):
        x, _ = model.sample(B, num_steps=2000)
        shared = x.clone()  # the same gaps in every sequence: one pattern
        shared[:, 100:200] = float("nan")
        shared[:, 500:900, 1] = float("nan")
        rows = [("complete", x, 5), ("shared gaps", shared, 5)]
        if B > 1:  # 10% of the values missing at random: a pattern per sequence
            own = x.clone()
            own[torch.rand(B, 2000, 2, generator=generator) < 0.1] = float("nan")
            rows.append(("own gaps", own, 3))
        with torch.no_grad():
            for name, data, n in rows:
                log_px = _median(lambda data=data: model.log_evidence(data), n)
                moments = _median(lambda data=data: model.posterior(data).moments(), n)
                print(f"B = {B:3d}, {name:11s}: log_evidence {1000 * log_px:7.1f} ms, posterior moments "
                      f"{1000 * moments:7.1f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
