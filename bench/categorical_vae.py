"""Jang et al.'s categorical VAE (20 × 10 one-hot latents, uniform prior) on binarized MNIST, trained
for the same number of steps by each of elbox's discrete estimators and by Pyro, side by side.

    python bench/categorical_vae.py [--epochs 5] [--train 60000] [--skip-pyro]

The architecture is the paper's: encoder 784-512-256-200 and decoder 200-256-512-784, ReLU, a
Bernoulli decoder; Adam at lr 1e-3, batch 100, the same initial weights and dynamic binarization.
The Gumbel-Softmax runs anneal τ = max(0.5, exp(−1e-4 t)) every 500 steps, as the paper does.
elbox trains with Gumbel-Softmax, straight-through Gumbel-Softmax, the score function with NVIL's
baseline, and VIMCO (S = 5). Pyro trains the same modules with its RelaxedOneHotCategorical in
the guide and the prior, under Trace_ELBO (its relaxed KL is a Monte Carlo estimate between the
relaxed densities), with the same annealing.

Every run's weights are then scored by one function: the test ELBO of the *discrete* model (exact
one-hot draws from q, 10 per image, and the categorical KL in closed form) on one seeded
binarization of the 10,000 test images. The script prints −ELBO with its standard error, seconds
per epoch (the median epoch), and elbox's throughput against Pyro's on the same estimator.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import EpochTimer, environment, mnist_train_test  # noqa: E402

import elbox  # noqa: E402
from elbox.inference import temperature_annealing  # noqa: E402
from elbox.objectives import make_objective  # noqa: E402

D, N, K = 784, 20, 10
ANNEAL = {"initial": 1.0, "minimum": 0.5, "rate": 1e-4, "every": 500}

ELBOX_RUNS = {
    "gumbel_softmax": ("gumbel_softmax", {}),
    "straight_through": ("gumbel_softmax", {"hard": True}),
    "score_function+nvil": ("score_function", {"baseline": "nvil"}),
    "vimco (S=5)": ("vimco", {"num_samples": 5}),
}


def _model(init: dict | None = None) -> elbox.DiscreteVAE:
    model = elbox.DiscreteVAE(D, N, K, hidden=(512, 256), activation="relu")
    if init is not None:
        model.load_state_dict(init)
    return model


def train_elbox(name, x, init, epochs, batch_size, seed):
    bound, options = ELBOX_RUNS[name]
    model = _model(init)
    objective = make_objective(bound, model, model.guide, **options)
    schedules = [temperature_annealing(**ANNEAL)] if bound == "gumbel_softmax" else []
    lap = EpochTimer()
    elbox.fit(objective, x, epochs=epochs, batch_size=batch_size, lr=1e-3, seed=seed, binarization="dynamic",
              schedules=schedules, callbacks=lap)  # fmt: skip
    return model, lap.times


def train_pyro(x, init, epochs, batch_size, seed):
    import pyro
    import pyro.distributions as dist
    from pyro.infer import SVI, Trace_ELBO

    model_ = _model(init)
    encoder, decoder = model_.guide.encoder, model_.decoder
    anneal = temperature_annealing(**ANNEAL)
    uniform = torch.full((N, K), 1.0 / K)

    def model(batch, tau):
        pyro.module("decoder", decoder)
        with pyro.plate("data", batch.shape[0]):
            z = pyro.sample("z", dist.RelaxedOneHotCategorical(torch.tensor(tau), probs=uniform).to_event(1))
            logits = decoder(z.flatten(-2))
            pyro.sample("x", dist.Bernoulli(logits=logits, validate_args=False).to_event(1), obs=batch)

    def guide(batch, tau):
        pyro.module("encoder", encoder)
        with pyro.plate("data", batch.shape[0]):
            logits = encoder(batch).reshape(-1, N, K)
            pyro.sample("z", dist.RelaxedOneHotCategorical(torch.tensor(tau), logits=logits).to_event(1))

    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), loss=Trace_ELBO())
    times, step = [], 0
    for _ in range(epochs):
        start = time.perf_counter()
        order = torch.randperm(x.shape[0])
        for begin in range(0, x.shape[0], batch_size):
            tau = anneal.value(step // ANNEAL["every"] * ANNEAL["every"])
            # Pyro's loss is a sum over the batch; elbox averages. Scaled alike, Adam sees the same problem.
            with pyro.poutine.scale(scale=1.0 / batch_size):
                svi.step(torch.bernoulli(x[order[begin : begin + batch_size]]), tau)
            step += 1
        times.append(time.perf_counter() - start)
    return model_, times


@torch.no_grad()
def test_elbo(model, x_test, num_samples: int = 10) -> tuple[float, float]:
    """The discrete model's ELBO per image (mean, standard error over the images)."""
    torch.manual_seed(0)
    values = torch.cat([elbox.elbo(model, model.guide, x_test[i : i + 500], num_samples=num_samples).value
                        for i in range(0, len(x_test), 500)])  # fmt: skip
    return float(values.mean()), float(values.std() / math.sqrt(len(values)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--train", type=int, default=60000, help="training images used")
    parser.add_argument("--only", default="", help="comma-separated runs (default: all, and pyro)")
    parser.add_argument("--skip-pyro", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    x, x_test = mnist_train_test(args.train)
    torch.manual_seed(args.seed)
    init = _model().state_dict()
    steps = args.epochs * math.ceil(len(x) / args.batch_size)
    print(environment())
    print(f"MNIST, {len(x)} training images, batch {args.batch_size}, {args.epochs} epochs ({steps} steps), "
          f"{N} × {K} categorical VAE 784-512-256-{N * K}\n")  # fmt: skip

    names = [n for n in ELBOX_RUNS if not args.only or n in args.only.split(",")]
    trainers = [(f"elbox {n}", lambda *a, n=n: train_elbox(n, *a)) for n in names]
    if not args.skip_pyro and (not args.only or "pyro" in args.only.split(",")):
        trainers.append(("pyro relaxed (Trace_ELBO)", train_pyro))
    for _, trainer in trainers:  # warm-up: one pass over 2,000 images each
        trainer(x[:2000], init, 1, args.batch_size, args.seed)
    runs = {}
    for label, trainer in trainers:
        model, times = trainer(x, init, args.epochs, args.batch_size, args.seed)
        seconds = sorted(times)[len(times) // 2]
        elbo, se = test_elbo(model, x_test)
        runs[label] = seconds
        print(f"{label:>28}: test −ELBO {-elbo:7.2f} ± {se:.2f}   {seconds:6.2f} s/epoch   "
              f"(epochs: {', '.join(f'{t:.2f}' for t in times)})")  # fmt: skip
    pyro_label = "pyro relaxed (Trace_ELBO)"
    if pyro_label in runs:
        print()
        for label in runs:
            if label != pyro_label:
                print(f"{label} is {runs[pyro_label] / runs[label]:.2f}× the throughput of Pyro's relaxed categorical")


if __name__ == "__main__":
    main()
