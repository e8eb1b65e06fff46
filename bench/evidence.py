"""Importance-sampling evaluation of a VAE on the MNIST test set: elbox's log_evidence (float32,
and bfloat16 products) against Pyro's vectorized importance weights on the same model, side by
side in one run.

    python bench/evidence.py [--run runs/vae_mnist] [--samples 5000] [--points 10000] [--train-epochs 0]

Both estimate log p(x) per test image with S importance samples from the encoder's q(z | x),
on the same weights (a run directory's best checkpoint, or fresh weights if there is none),
the same seeded binarization of the test images, the same batches of 100 images, and the same
particles per chunk. Pyro's per-image weights come from its vectorized importance traces
(`pyro.infer.importance.vectorized_importance_weights`): the site log-densities, summed over
sites but not over the data plate. The script prints each one's seconds, the ratio, both mean
estimates and the largest per-image difference in units of the Monte Carlo standard error.
Without a run directory, ``--train-epochs N`` first trains the fresh weights N epochs on the
MNIST training set (elbox, float32), so that the bfloat16 comparison is made on a fitted decoder.
The bfloat16 estimate draws from the same seed; the script prints its difference from the float32
one against the float32 Monte Carlo error (the documented rule), and the shift elbox measured.
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

import elbox  # noqa: E402
from elbox.evidence.estimate import particle_chunk  # noqa: E402

D, H, L = 784, 200, 50


def _model(run: Path | None) -> elbox.VAE:
    if run is not None and (run / "config.toml").is_file():
        from elbox.runs import load_run

        return load_run(run).model
    torch.manual_seed(0)
    return elbox.VAE(D, L, hidden=(H, H), activation="tanh", decoder="bernoulli").eval()


@torch.no_grad()
def pyro_log_evidence(vae: elbox.VAE, x: torch.Tensor, S: int, batch: int, chunk: int) -> tuple[torch.Tensor, ...]:
    import pyro
    import pyro.distributions as dist
    from pyro.infer.importance import vectorized_importance_weights

    encoder, decoder = vae.guide.encoder, vae.decoder

    def model(data):
        with pyro.plate("data", data.shape[0]):
            z = pyro.sample("z", dist.Normal(data.new_zeros(L), data.new_ones(L)).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z), validate_args=False).to_event(1), obs=data)

    def guide(data):
        with pyro.plate("data", data.shape[0]):
            loc, log_scale = encoder(data).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))

    values, errors = [], []
    for begin in range(0, x.shape[0], batch):
        data = x[begin : begin + batch]
        log_w = []
        for done in range(0, S, chunk):
            s = min(chunk, S - done)
            _, model_trace, guide_trace = vectorized_importance_weights(
                model, guide, data, num_samples=s, max_plate_nesting=1
            )
            per_point = sum(site["log_prob"] for site in model_trace.nodes.values() if site["type"] == "sample")
            per_point = per_point - sum(site["log_prob"] for site in guide_trace.nodes.values()
                                        if site["type"] == "sample")  # fmt: skip
            log_w.append(per_point.reshape(s, data.shape[0]))  # [s, b]
        log_w = torch.cat(log_w)
        values.append(log_w.logsumexp(0) - math.log(S))
        w = (log_w - log_w.max(0).values).exp()
        errors.append(w.std(0) / (math.sqrt(S) * w.mean(0)))
    return torch.cat(values), torch.cat(errors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/vae_mnist"))
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--points", type=int, default=10000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--train-epochs", type=int, default=0, help="train fresh weights first (no --run)")
    args = parser.parse_args()

    from elbox.data import mnist

    x, _ = mnist(split="test")
    x = torch.bernoulli(x[: args.points], generator=torch.Generator().manual_seed(2))
    vae = _model(args.run)
    trained = (args.run / "config.toml").is_file()
    if not trained and args.train_epochs:
        x_train, _ = mnist(split="train")
        elbox.fit(vae, vae.guide, x_train, epochs=args.train_epochs, batch_size=100, lr=1e-3, adam_eps=1e-4,
                  binarization="dynamic", seed=0)  # fmt: skip
        vae.eval()
    chunk = particle_chunk(x[: args.batch], args.samples)
    print(environment())
    print(f"{x.shape[0]} test images, S = {args.samples}, batches of {args.batch}, {chunk} particles per chunk; "
          f"weights: {args.run if trained else f'fresh, trained {args.train_epochs} epochs here'}")  # fmt: skip

    torch.manual_seed(0)
    start = time.perf_counter()
    ours = elbox.log_evidence(vae, x, guide=vae.guide, method="importance", num_samples=args.samples,
                              batch_size=args.batch, chunk_size=chunk)  # fmt: skip
    t_elbox = time.perf_counter() - start
    torch.manual_seed(0)
    start = time.perf_counter()
    theirs, theirs_se = pyro_log_evidence(vae, x, args.samples, args.batch, chunk)
    t_pyro = time.perf_counter() - start
    torch.manual_seed(0)
    start = time.perf_counter()
    low = elbox.log_evidence(vae, x, guide=vae.guide, method="importance", num_samples=args.samples,
                             batch_size=args.batch, chunk_size=chunk, precision="bfloat16")  # fmt: skip
    t_low = time.perf_counter() - start

    value, mc = ours.mean()
    print(f"elbox  {t_elbox:8.1f} s   log p(x) = {value:.3f} (Monte Carlo s.e. {mc:.4f})")
    theirs_mc = float(theirs_se.square().sum().sqrt() / theirs.numel())
    print(f"Pyro   {t_pyro:8.1f} s   log p(x) = {float(theirs.mean()):.3f} (Monte Carlo s.e. {theirs_mc:.4f})")
    diff = (ours.value - theirs).abs() / (ours.stderr.square() + theirs_se.square()).sqrt()
    print(f"largest per-image difference: {float(diff.max()):.2f} combined standard errors")
    print(f"ratio: elbox is {t_pyro / t_elbox:.2f}x as fast as Pyro")
    low_value, low_mc = low.mean()
    shift = low.mean_shift()
    print(f"\nelbox bfloat16 {t_low:8.1f} s   log p(x) = {low_value:.4f} (Monte Carlo s.e. {low_mc:.4f}); "
          f"float32 {value:.4f}")  # fmt: skip
    print(f"  bfloat16 − float32 = {low_value - value:+.4f} nats = {(low_value - value) / mc:+.2f} float32 Monte Carlo "
          f"s.e.; the shift elbox measured: {shift.value:+.4f} ± {shift.stderr:.4f} (over the points)")  # fmt: skip
    print(f"  ratio: elbox bfloat16 is {t_pyro / t_low:.2f}x as fast as Pyro, {t_elbox / t_low:.2f}x elbox float32")


if __name__ == "__main__":
    main()
