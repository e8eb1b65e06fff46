"""Pyro's deep Markov model (examples/dmm.py) against elbox's, side by side in one run.

    python bench/dmm.py [--epochs 2] [--seeds 1] [--train 0] [--eval-samples 10] [--kl analytic|mc] [--jit]

Both train the same architecture (Pyro's: z 100, transition 200, emission 100, RNN 600 with ReLU,
ST-R guide, no IAF) from the same initial weights, on the same sequences (the training split of
configs/data/chorales.npz as configs/dmm_chorales.toml splits it; ``--train N`` keeps the first
N), at the same mini-batch size (20) and with the same optimizer (ClippedAdam: lr 3e-4, β₁ 0.96,
β₂ 0.999, clip 10, lr decay 0.99996 per step, weight decay 2, on Pyro's summed loss; elbox's clip
and decay divided by the batch size, as it steps on the batch's mean: the same update), β = 1 (no KL
annealing), one path per sequence. Pyro's model and guide below are its examples/dmm.py, with its data loader's
batching helpers (Apache-2.0, Uber Technologies), run with Trace_ELBO (``--jit``: JitTrace_ELBO) as
that script does by default.

Printed: seconds per epoch and sequences per second for each, their ratio, each one's training
−ELBO per frame per epoch (as Pyro's script reports it: the epoch's summed loss over the
training frames), and then both trained weight sets scored by the same function, elbox's ELBO
with ``--eval-samples`` paths on the test split, −ELBO per frame ± its Monte Carlo error.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment  # noqa: E402

import elbox  # noqa: E402
from elbox import Sequences  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LR, BETAS, CLIP, LRD, WD, BATCH = 3e-4, (0.96, 0.999), 10.0, 0.99996, 2.0, 20


# Pyro's pyro/contrib/examples/polyphonic_data_loader.py helpers (that module imports torchvision).


def reverse_sequences(mini_batch, seq_lengths):
    reversed_mini_batch = torch.zeros_like(mini_batch)
    for b in range(mini_batch.size(0)):
        T = seq_lengths[b]
        time_slice = torch.arange(T - 1, -1, -1, device=mini_batch.device)
        reversed_sequence = torch.index_select(mini_batch[b, :, :], 0, time_slice)
        reversed_mini_batch[b, 0:T, :] = reversed_sequence
    return reversed_mini_batch


def pad_and_reverse(rnn_output, seq_lengths):
    rnn_output, _ = nn.utils.rnn.pad_packed_sequence(rnn_output, batch_first=True)
    return reverse_sequences(rnn_output, seq_lengths)


def get_mini_batch_mask(mini_batch, seq_lengths):
    mask = torch.zeros(mini_batch.shape[0:2])
    for b in range(mini_batch.shape[0]):
        mask[b, 0 : seq_lengths[b]] = torch.ones(seq_lengths[b])
    return mask


def get_mini_batch(mini_batch_indices, sequences, seq_lengths):
    seq_lengths = seq_lengths[mini_batch_indices]
    _, sorted_seq_length_indices = torch.sort(seq_lengths)
    sorted_seq_length_indices = sorted_seq_length_indices.flip(0)
    sorted_seq_lengths = seq_lengths[sorted_seq_length_indices]
    sorted_mini_batch_indices = mini_batch_indices[sorted_seq_length_indices]
    T_max = torch.max(seq_lengths)
    mini_batch = sequences[sorted_mini_batch_indices, 0:T_max, :]
    mini_batch_reversed = reverse_sequences(mini_batch, sorted_seq_lengths)
    mini_batch_mask = get_mini_batch_mask(mini_batch, sorted_seq_lengths)
    mini_batch_reversed = nn.utils.rnn.pack_padded_sequence(mini_batch_reversed, sorted_seq_lengths, batch_first=True)
    return mini_batch, mini_batch_reversed, mini_batch_mask, sorted_seq_lengths


# Pyro's examples/dmm.py: Emitter, GatedTransition, Combiner and the model and guide (as there).


class Emitter(nn.Module):
    def __init__(self, input_dim, z_dim, emission_dim):
        super().__init__()
        self.lin_z_to_hidden = nn.Linear(z_dim, emission_dim)
        self.lin_hidden_to_hidden = nn.Linear(emission_dim, emission_dim)
        self.lin_hidden_to_input = nn.Linear(emission_dim, input_dim)
        self.relu = nn.ReLU()

    def forward(self, z_t):
        h1 = self.relu(self.lin_z_to_hidden(z_t))
        h2 = self.relu(self.lin_hidden_to_hidden(h1))
        return torch.sigmoid(self.lin_hidden_to_input(h2))


class GatedTransition(nn.Module):
    def __init__(self, z_dim, transition_dim):
        super().__init__()
        self.lin_gate_z_to_hidden = nn.Linear(z_dim, transition_dim)
        self.lin_gate_hidden_to_z = nn.Linear(transition_dim, z_dim)
        self.lin_proposed_mean_z_to_hidden = nn.Linear(z_dim, transition_dim)
        self.lin_proposed_mean_hidden_to_z = nn.Linear(transition_dim, z_dim)
        self.lin_sig = nn.Linear(z_dim, z_dim)
        self.lin_z_to_loc = nn.Linear(z_dim, z_dim)
        self.lin_z_to_loc.weight.data = torch.eye(z_dim)
        self.lin_z_to_loc.bias.data = torch.zeros(z_dim)
        self.relu = nn.ReLU()
        self.softplus = nn.Softplus()

    def forward(self, z_t_1):
        _gate = self.relu(self.lin_gate_z_to_hidden(z_t_1))
        gate = torch.sigmoid(self.lin_gate_hidden_to_z(_gate))
        _proposed_mean = self.relu(self.lin_proposed_mean_z_to_hidden(z_t_1))
        proposed_mean = self.lin_proposed_mean_hidden_to_z(_proposed_mean)
        loc = (1 - gate) * self.lin_z_to_loc(z_t_1) + gate * proposed_mean
        scale = self.softplus(self.lin_sig(self.relu(proposed_mean)))
        return loc, scale


class Combiner(nn.Module):
    def __init__(self, z_dim, rnn_dim):
        super().__init__()
        self.lin_z_to_hidden = nn.Linear(z_dim, rnn_dim)
        self.lin_hidden_to_loc = nn.Linear(rnn_dim, z_dim)
        self.lin_hidden_to_scale = nn.Linear(rnn_dim, z_dim)
        self.tanh = nn.Tanh()
        self.softplus = nn.Softplus()

    def forward(self, z_t_1, h_rnn):
        h_combined = 0.5 * (self.tanh(self.lin_z_to_hidden(z_t_1)) + h_rnn)
        return self.lin_hidden_to_loc(h_combined), self.softplus(self.lin_hidden_to_scale(h_combined))


class PyroDMM(nn.Module):
    def __init__(self, input_dim=88, z_dim=100, emission_dim=100, transition_dim=200, rnn_dim=600):
        super().__init__()
        self.emitter = Emitter(input_dim, z_dim, emission_dim)
        self.trans = GatedTransition(z_dim, transition_dim)
        self.combiner = Combiner(z_dim, rnn_dim)
        self.rnn = nn.RNN(input_size=input_dim, hidden_size=rnn_dim, nonlinearity="relu", batch_first=True,
                          bidirectional=False, num_layers=1)  # fmt: skip
        self.z_0 = nn.Parameter(torch.zeros(z_dim))
        self.z_q_0 = nn.Parameter(torch.zeros(z_dim))
        self.h_0 = nn.Parameter(torch.zeros(1, 1, rnn_dim))

    def model(self, mini_batch, mini_batch_reversed, mini_batch_mask, mini_batch_seq_lengths, annealing_factor=1.0):
        import pyro
        import pyro.distributions as dist
        import pyro.poutine as poutine

        T_max = mini_batch.size(1)
        pyro.module("dmm", self)
        z_prev = self.z_0.expand(mini_batch.size(0), self.z_0.size(0))
        with pyro.plate("z_minibatch", len(mini_batch)):
            for t in pyro.markov(range(1, T_max + 1)):
                z_loc, z_scale = self.trans(z_prev)
                with poutine.scale(scale=annealing_factor):
                    z_t = pyro.sample(f"z_{t}", dist.Normal(z_loc, z_scale)
                                      .mask(mini_batch_mask[:, t - 1 : t]).to_event(1))  # fmt: skip
                emission_probs_t = self.emitter(z_t)
                pyro.sample(f"obs_x_{t}", dist.Bernoulli(emission_probs_t).mask(mini_batch_mask[:, t - 1 : t])
                            .to_event(1), obs=mini_batch[:, t - 1, :])  # fmt: skip
                z_prev = z_t

    def guide(self, mini_batch, mini_batch_reversed, mini_batch_mask, mini_batch_seq_lengths, annealing_factor=1.0):
        import pyro
        import pyro.distributions as dist

        T_max = mini_batch.size(1)
        pyro.module("dmm", self)
        h_0_contig = self.h_0.expand(1, mini_batch.size(0), self.rnn.hidden_size).contiguous()
        rnn_output, _ = self.rnn(mini_batch_reversed, h_0_contig)
        rnn_output = pad_and_reverse(rnn_output, mini_batch_seq_lengths)
        z_prev = self.z_q_0.expand(mini_batch.size(0), self.z_q_0.size(0))
        with pyro.plate("z_minibatch", len(mini_batch)):
            for t in pyro.markov(range(1, T_max + 1)):
                z_loc, z_scale = self.combiner(z_prev, rnn_output[:, t - 1, :])
                with pyro.poutine.scale(scale=annealing_factor):
                    z_t = pyro.sample(f"z_{t}", dist.Normal(z_loc, z_scale)
                                      .mask(mini_batch_mask[:, t - 1 : t]).to_event(1))  # fmt: skip
                z_prev = z_t


# The same weights in elbox's modules.


def elbox_from_pyro(dmm: PyroDMM):
    model = elbox.DeepMarkovModel(88, 100, transition_dim=200, emission_hidden=(100, 100))
    guide = model.guide("st-r", rnn_dim=600)
    e, t, c = dmm.emitter, dmm.trans, dmm.combiner
    pairs = [
        (model.emitter[0], e.lin_z_to_hidden), (model.emitter[2], e.lin_hidden_to_hidden),
        (model.emitter[4], e.lin_hidden_to_input), (model.transition.gate_hidden, t.lin_gate_z_to_hidden),
        (model.transition.gate_out, t.lin_gate_hidden_to_z), (model.transition.mean_hidden,
                                                              t.lin_proposed_mean_z_to_hidden),
        (model.transition.mean_out, t.lin_proposed_mean_hidden_to_z), (model.transition.scale, t.lin_sig),
        (model.transition.linear, t.lin_z_to_loc), (guide.z_to_hidden, c.lin_z_to_hidden),
        (guide.hidden_to_loc, c.lin_hidden_to_loc), (guide.hidden_to_scale, c.lin_hidden_to_scale),
    ]  # fmt: skip
    with torch.no_grad():
        for mine, theirs in pairs:
            mine.load_state_dict(theirs.state_dict())
        guide.backward_rnn.load_state_dict(dmm.rnn.state_dict())
        model.z_0.copy_(dmm.z_0)
        guide.z_q_0.copy_(dmm.z_q_0)
        guide.h_0.copy_(dmm.h_0.view(1, -1))
    return model, guide


def chorale_splits(train_limit: int):
    from elbox.runs import load_config
    from elbox.runs.data import load_data

    config = load_config(ROOT / "configs" / "dmm_chorales.toml")
    train, _ = load_data(config, "train")
    test, _ = load_data(config, "test")
    if train_limit:
        train = train[:train_limit]
    as_float = lambda s: Sequences(s.values.float(), s.mask)  # noqa: E731
    return as_float(train), as_float(test)


def train_pyro(dmm: PyroDMM, x: Sequences, epochs: int, seed: int, jit: bool):
    import pyro
    from pyro.infer import SVI, JitTrace_ELBO, Trace_ELBO
    from pyro.optim import ClippedAdam

    pyro.clear_param_store()
    torch.manual_seed(seed)
    adam = ClippedAdam({"lr": LR, "betas": BETAS, "clip_norm": CLIP, "lrd": LRD, "weight_decay": WD})
    svi = SVI(dmm.model, dmm.guide, adam, loss=JitTrace_ELBO() if jit else Trace_ELBO())
    lengths = x.mask.sum(-1)
    frames = float(lengths.sum())
    N = len(x)
    times, losses = [], []
    for epoch in range(epochs):
        start = time.perf_counter()
        order = torch.randperm(N, generator=torch.Generator().manual_seed(seed + epoch))
        total = 0.0
        for begin in range(0, N, BATCH):
            index = order[begin : begin + BATCH]
            batch, reversed_, mask, seq_lengths = get_mini_batch(index, x.values, lengths)
            total += svi.step(batch, reversed_, mask, seq_lengths)
        times.append(time.perf_counter() - start)
        losses.append(total / frames)
    return times, losses


def train_elbox(model, guide, x: Sequences, epochs: int, seed: int, kl: str = "analytic"):
    times, bounds = [], []
    frames = float(x.mask.sum())
    start = [time.perf_counter()]

    def lap(epoch, history):
        now = time.perf_counter()
        times.append(now - start[0])
        start[0] = now
        bounds.append(-history.lower_bound[-1] * len(x) / frames)

    # Pyro's SVI steps on the mini-batch's summed loss, elbox's fit on its mean: Adam's step is the same
    # for both gradients, but not the element-wise clip nor the L2 decay added to the gradient. Dividing
    # both by the batch size gives elbox the very update Pyro's ClippedAdam takes (up to Adam's ε).
    optimizer = {"name": "clipped_adam", "beta1": BETAS[0], "beta2": BETAS[1], "clip_value": CLIP / BATCH,
                 "lr_decay": LRD, "weight_decay": WD / BATCH}  # fmt: skip
    elbox.fit(model, guide, x, epochs=epochs, batch_size=BATCH, lr=LR, optimizer=optimizer, seed=seed,
              callbacks=lap, kl=kl)  # fmt: skip
    return times, bounds


@torch.no_grad()
def score(model, guide, x: Sequences, samples: int) -> tuple[float, float]:
    """−ELBO per frame over the total frames, ± its Monte Carlo error (over ``samples`` paths)."""
    frames = float(x.mask.sum())
    torch.manual_seed(0)
    draws = torch.stack([-elbox.elbo(model, guide, x).value.sum() / frames for _ in range(samples)])
    return float(draws.mean()), float(draws.std() / math.sqrt(samples)) if samples > 1 else math.nan


def _mean_se(values: list[float]) -> tuple[float, float]:
    """The mean and its standard error over independent values (NaN from one)."""
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std() / math.sqrt(len(t))) if len(t) > 1 else math.nan


def _verdict(differences: list[float]) -> str:
    """Equal within error when the mean paired difference lies within 2 standard errors of zero."""
    mean, se = _mean_se(differences)
    if math.isnan(se):
        return "one seed: no error over seeds, no verdict"
    return (f"{mean:+.4f} ± {se:.4f}: " + ("equal within error (|difference| < 2 se)" if abs(mean) < 2 * se
                                            else "NOT equal within error (|difference| ≥ 2 se)"))  # fmt: skip


def run_seed(x: Sequences, test: Sequences, epochs: int, seed: int, jit: bool, eval_samples: int,
             kl: str = "analytic") -> dict:  # fmt: skip
    """One seed: both engines trained from the same initial weights (drawn from this seed), timed
    per epoch, then scored on the test split by the same function."""
    torch.manual_seed(seed)
    dmm = PyroDMM()
    init = {k: v.clone() for k, v in dmm.state_dict().items()}
    model, guide = elbox_from_pyro(dmm)
    t_elbox, b_elbox = train_elbox(model, guide, x, epochs, seed, kl)
    t_pyro, b_pyro = train_pyro(dmm, x, epochs, seed, jit)
    pyro_model, pyro_guide = elbox_from_pyro(dmm)
    start_model, start_guide = elbox_from_pyro(_loaded(init))
    scores = {}
    for name, (m, g) in {"initial": (start_model, start_guide), "elbox": (model, guide),
                         "pyro": (pyro_model, pyro_guide)}.items():  # fmt: skip
        for m_ in (m, g):
            m_.eval()
        scores[name] = score(m, g, test, eval_samples)
    return {"t_elbox": t_elbox, "t_pyro": t_pyro, "b_elbox": b_elbox, "b_pyro": b_pyro, "scores": scores}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train", type=int, default=0, help="first N training chorales (0: all)")
    parser.add_argument("--eval-samples", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="the first seed")
    parser.add_argument("--seeds", type=int, default=1, help="independent seeds (initial weights, order, particles)")
    parser.add_argument("--jit", action="store_true")
    parser.add_argument("--kl", choices=("analytic", "mc"), default="analytic",
                        help="elbox's KL per step: analytic given z_{t-1} (its default), or sampled as Pyro's "
                             "Trace_ELBO does (the same gradient estimator as Pyro's)")  # fmt: skip
    args = parser.parse_args()
    print(environment())
    x, test = chorale_splits(args.train)
    print(f"data: {len(x)} training chorales, {int(x.mask.sum())} frames (T max {x.values.shape[1]}); "
          f"{len(test)} test chorales, {int(test.mask.sum())} frames; batch {BATCH}, {args.epochs} epochs, "
          f"{args.seeds} seed(s); elbox's KL {args.kl}")
    runs = []
    for seed in range(args.seed, args.seed + args.seeds):
        run = run_seed(x, test, args.epochs, seed, args.jit, args.eval_samples, args.kl)
        runs.append(run)
        print(f"\nseed {seed}")
        print(f"{'epoch':>5} {'elbox s':>9} {'Pyro s':>9} {'ratio':>7} {'elbox −ELBO/frame':>18} "
              f"{'Pyro loss/frame':>16}")
        for i in range(args.epochs):
            print(f"{i + 1:>5} {run['t_elbox'][i]:>9.2f} {run['t_pyro'][i]:>9.2f} "
                  f"{run['t_pyro'][i] / run['t_elbox'][i]:>6.2f}× {run['b_elbox'][i]:>18.4f} {run['b_pyro'][i]:>16.4f}")
        for name, (value, err) in run["scores"].items():
            print(f"test −ELBO per frame, {name:>8} weights: {value:.4f} ± {err:.4f} (MC, {args.eval_samples} paths)")

    later = slice(1, None) if args.epochs > 1 else slice(None)  # the first epoch carries the warm-up
    se = sum(sum(r["t_elbox"][later]) for r in runs) / sum(len(r["t_elbox"][later]) for r in runs)
    sp = sum(sum(r["t_pyro"][later]) for r in runs) / sum(len(r["t_pyro"][later]) for r in runs)
    print(f"\nthroughput: elbox {len(x) / se:.1f} sequences/s, Pyro {len(x) / sp:.1f} sequences/s: "
          f"elbox {sp / se:.2f}× Pyro's (epochs {'2..' if args.epochs > 1 else '1..'}{args.epochs} of every seed)")
    print(f"\n−ELBO per frame at equal epochs, mean ± standard error over the {len(runs)} seeds; the difference "
          "elbox − Pyro paired by seed (same initial weights)")
    print(f"{'epoch':>5} {'elbox train':>18} {'Pyro train':>18} {'difference (verdict)':>24}")
    for i in range(args.epochs):
        (me, ee), (mp, ep) = _mean_se([r["b_elbox"][i] for r in runs]), _mean_se([r["b_pyro"][i] for r in runs])
        print(f"{i + 1:>5} {me:>10.4f} ± {ee:.4f} {mp:>10.4f} ± {ep:.4f}   "
              f"{_verdict([r['b_elbox'][i] - r['b_pyro'][i] for r in runs])}")
    (me, ee), (mp, ep) = (_mean_se([r["scores"][k][0] for r in runs]) for k in ("elbox", "pyro"))
    print(f" test {me:>10.4f} ± {ee:.4f} {mp:>10.4f} ± {ep:.4f}   "
          f"{_verdict([r['scores']['elbox'][0] - r['scores']['pyro'][0] for r in runs])}")
    print(f"verdict at epoch {args.epochs}, test split (the same scoring function for both): "
          f"{_verdict([r['scores']['elbox'][0] - r['scores']['pyro'][0] for r in runs])}")


def _loaded(state: dict) -> PyroDMM:
    dmm = PyroDMM()
    dmm.load_state_dict(state)
    return dmm


if __name__ == "__main__":
    main()
