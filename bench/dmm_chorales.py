"""DMMs on the chorale piano rolls: −ELBO, IWAE-k and FIVO-k NLL per frame on the test split, with
their Monte Carlo errors, for one guide per run (and Pyro's DMM on the same data and budget).

    python bench/dmm_chorales.py --guide st-r [--iafs 2] [--epochs 30] [--k 10 100] [--runs 3]
    python bench/dmm_chorales.py --pyro [--epochs 30]        # Pyro's model and guide, scored the same way

Every run starts from the same initial weights (Pyro's DMM module drawn from ``--seed``; the guide's
layers Pyro has not, e.g. MF-LR's second RNN, from elbox's initialization), trains ``--epochs``
epochs at batch 20 with Pyro's ClippedAdam (bench/dmm.py), β = 1, one path per sequence, then scores the
74 test chorales (configs/dmm_chorales.toml's split): −ELBO per frame (``--elbo-paths`` paths),
and for each k the IWAE-k and FIVO-k bounds as NLL per frame (the particle filter with the
guide proposing; IWAE-k is the filter without resampling, FIVO-k resamples systematically at
ESS < k/2), each the mean of ``--runs`` independent runs ± their standard error, over the total
test frames. Not the JSB split of the literature (see docs/sequences.md).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment  # noqa: E402
from dmm import PyroDMM, chorale_splits, elbox_from_pyro, train_elbox, train_pyro  # noqa: E402

import elbox  # noqa: E402
from elbox.bounds.sequence import smc  # noqa: E402


@torch.no_grad()
def scores(model, guide, test, ks, runs: int, elbo_paths: int) -> dict:
    model.eval()
    guide.eval()
    frames = float(test.mask.sum())
    torch.manual_seed(0)
    elbo = torch.stack([elbox.elbo(model, guide, test).value.sum() for _ in range(elbo_paths)]) / frames
    out = {"elbo": (-float(elbo.mean()), float(elbo.std() / math.sqrt(elbo_paths)))}
    for k in ks:
        for name, resample in (("iwae", "never"), ("fivo", "systematic")):
            values = torch.stack([smc(model, guide, test, num_samples=k, resample=resample).log_z.sum()
                                  for _ in range(runs)]) / frames  # fmt: skip
            error = float(values.std() / math.sqrt(runs)) if runs > 1 else math.nan
            out[f"{name}-{k}"] = (-float(values.mean()), error)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--guide", default="st-r", choices=["st-r", "st-lr", "mf-lr", "st-l"])
    parser.add_argument("--iafs", type=int, default=0)
    parser.add_argument("--pyro", action="store_true", help="train Pyro's DMM instead")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--k", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--elbo-paths", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(environment())
    x, test = chorale_splits(0)
    torch.manual_seed(args.seed)
    dmm = PyroDMM()
    start = time.perf_counter()
    if args.pyro:
        train_pyro(dmm, x, args.epochs, args.seed, jit=False)
        model, guide = elbox_from_pyro(dmm)
        name = "Pyro ST-R (Trace_ELBO)"
    else:
        model, guide = elbox_from_pyro(dmm)
        if args.guide != "st-r" or args.iafs:
            torch.manual_seed(args.seed)
            guide = model.guide(args.guide, rnn_dim=600, iafs=args.iafs, iaf_dim=100)
        train_elbox(model, guide, x, args.epochs, args.seed)
        name = f"elbox {args.guide.upper()}" + (f"+IAF×{args.iafs}" if args.iafs else "")
    seconds = time.perf_counter() - start
    result = scores(model, guide, test, args.k, args.runs, args.elbo_paths)
    cells = " | ".join(f"{key} {v:.3f} ± {e:.3f}" for key, (v, e) in result.items())
    print(f"{name}, {args.epochs} epochs ({seconds:.0f} s training): per test frame: {cells}")


if __name__ == "__main__":
    main()
