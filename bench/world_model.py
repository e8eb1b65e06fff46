"""elbox's WorldModel against torchrl's RSSM and a hand-written PlaNet loop: training throughput,
side by side in one run.

    python bench/world_model.py [--episodes 500] [--steps 50] [--epochs 4] [--batch-size 50]

All three train PlaNet's recurrent state-space model at PlaNet's sizes (latent 30, deterministic
state 200, hidden layers 200, ELU) on the same random-policy Pendulum-v1 episodes (``elbox.envs
.collect``: observations (cos θ, sin θ, θ̇), torques, rewards), at the same mini-batch size, with
the same optimizer (fused Adam, lr 6e-4, PlaNet's) and the same loss, minus the true ELBO per
sequence averaged over the batch:

    Σ_t log N(o_t; dec(h_t, z_t), I) + log N(r_t; rew(h_t, z_t), 1) − KL(q(z_t | h_t, e(o_t)) ‖ p(z_t | h_t)),

one path per sequence, the reward's term from the second step on (none is received at the first).
The networks are the same: encoder e = obs → 200 → 200, h_t = GRUCell(elu(W[z_{t−1}, a_{t−1}]),
h_{t−1}), prior 200 → 200 → 2·30, posterior [h, e] → 200 → 2·30 (std softplus, floored at 0.1:
elbox and the loop add 0.1, torchrl clamps), decoder [h, z] → 200 → 200 → 3, reward [h, z] → 200 → 1.

- elbox: ``WorldModel`` trained by ``elbox.fit`` with the ``world_elbo`` objective (the actions'
  and observations' shares of the first layers computed for every step at once; the posterior's
  recursion, GRU and head, by ``elbox.models.world._PosteriorScan`` with a backward pass by hand
  whose weight gradients are one product over all steps; the prior head, KLs, decoder and reward
  over all steps at once after it).
- torchrl: its ``RSSMPrior``, ``RSSMPosterior`` and ``RSSMRollout`` wired as its Dreamer helper
  ``_dreamer_make_world_model`` wires them (TensorDict modules), the encoder, decoder and reward
  head torchrl ``MLP`` s, applied to every step at once; the loss computed from the rollout's
  outputs. Skipped (with a message) where torchrl is not installed: it installs against torch
  2.13 without pulling another torch (``pip install --no-deps torchrl==0.14.1
  tensordict==0.14.3 hoptorch pyvers orjson``; its Requires-Dist is torch>=2.1).
- loop: the same model written as PlaNet's step loop, in plain PyTorch modules.

Printed: seconds per epoch (the median over epochs 2..E: the first carries the warm-up),
sequences and steps per second, elbox's ratio to each peer, and each one's training ELBO per step
over its last epoch (they train the same model: the numbers should be alike).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import EpochTimer, environment  # noqa: E402

import elbox  # noqa: E402
from elbox import Sequences, WorldModel  # noqa: E402

LATENT, DETER, HIDDEN, MIN_STD, LR = 30, 200, 200, 0.1, 6e-4
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def pendulum(episodes: int, steps: int, seed: int) -> Sequences:
    from elbox.envs import collect

    data = collect("pendulum", episodes, steps=steps, seed=seed)
    t = lambda a: torch.from_numpy(a).float()  # noqa: E731
    return Sequences(t(data.x), inputs=t(data.inputs), rewards=t(data.rewards))


def gaussian_log_prob(x, loc):  # N(x; loc, I) summed over the last dimension
    return (-0.5 * (x - loc).square() - HALF_LOG_2PI).sum(-1)


def normal_kl(q_loc, q_scale, p_loc, p_scale):
    ratio = (q_scale / p_scale).square()
    return 0.5 * (ratio + ((q_loc - p_loc) / p_scale).square() - 1 - ratio.log()).sum(-1)


def elbo_per_sequence(o, r, post_loc, post_scale, prior_loc, prior_scale, obs_mean, reward_mean):
    """The true ELBO of each sequence ``[B]`` from every step's parameters ``[B, T, *]``."""
    log_po = gaussian_log_prob(o, obs_mean)  # [B, T]
    log_pr = (-0.5 * (r - reward_mean).square() - HALF_LOG_2PI)[:, 1:]  # [B, T-1]: none received at t = 0
    kl = normal_kl(post_loc, post_scale, prior_loc, prior_scale)  # [B, T]
    return log_po.sum(-1) + log_pr.sum(-1) - kl.sum(-1)


def mlp(*sizes: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers += [nn.Linear(a, b)] + ([nn.ELU()] if i < len(sizes) - 2 else [])
    return nn.Sequential(*layers)


class PlaNetLoop(nn.Module):
    """PlaNet's RSSM as a plain step loop (planet/models/rssm.py's transition and posterior)."""

    def __init__(self, obs_dim: int, action_dim: int):
        super().__init__()
        Z, H, D = LATENT, DETER, HIDDEN
        self.encoder = mlp(obs_dim, D, D)
        self.state_action = nn.Linear(Z + action_dim, D)
        self.gru = nn.GRUCell(D, H)
        self.prior = mlp(H, D, 2 * Z)
        self.posterior = mlp(H + D, D, 2 * Z)
        self.decoder = mlp(H + Z, D, D, obs_dim)
        self.reward = mlp(H + Z, D, 1)

    @staticmethod
    def stats(out):
        loc, raw = out.chunk(2, -1)
        return loc, F.softplus(raw) + MIN_STD

    def forward(self, o, a, r):
        B, T, _ = o.shape
        embedded = self.encoder(o)  # [B, T, D]
        z, h = o.new_zeros(B, LATENT), o.new_zeros(B, DETER)
        hs, zs, posts, priors = [], [], [], []
        for t in range(T):
            h = self.gru(F.elu(self.state_action(torch.cat([z, a[:, t]], -1))), h)
            prior = self.stats(self.prior(h))
            post = self.stats(self.posterior(torch.cat([h, embedded[:, t]], -1)))
            z = post[0] + post[1] * torch.randn_like(post[1])
            hs.append(h), zs.append(z), posts.append(post), priors.append(prior)
        s = torch.cat([torch.stack(hs, 1), torch.stack(zs, 1)], -1)  # [B, T, H + Z]
        post_loc, post_scale = (torch.stack(p, 1) for p in zip(*posts))
        prior_loc, prior_scale = (torch.stack(p, 1) for p in zip(*priors))
        return elbo_per_sequence(o, r, post_loc, post_scale, prior_loc, prior_scale, self.decoder(s),
                                 self.reward(s).squeeze(-1))  # fmt: skip


class TorchRLRSSM(nn.Module):
    """torchrl's RSSM modules, wired as its Dreamer helper wires them, with MLP heads for states."""

    def __init__(self, obs_dim: int, action_dim: int):
        super().__init__()
        from tensordict.nn import TensorDictModule
        from torchrl.data import Bounded
        from torchrl.modules import MLP
        from torchrl.modules.models.model_based import RSSMPosterior, RSSMPrior, RSSMRollout

        Z, H, D = LATENT, DETER, HIDDEN
        spec = Bounded(-2.0, 2.0, shape=(action_dim,))
        self.prior = RSSMPrior(spec, hidden_dim=D, rnn_hidden_dim=H, state_dim=Z, scale_lb=MIN_STD,
                               action_dim=action_dim)  # fmt: skip
        self.post = RSSMPosterior(hidden_dim=D, state_dim=Z, scale_lb=MIN_STD, rnn_hidden_dim=H, obs_embed_dim=D)
        self.rollout = RSSMRollout(
            TensorDictModule(self.prior, in_keys=["state", "belief", "action"],
                             out_keys=[("next", "prior_mean"), ("next", "prior_std"), "_", ("next", "belief")]),
            TensorDictModule(self.post, in_keys=[("next", "belief"), ("next", "encoded_latents")],
                             out_keys=[("next", "posterior_mean"), ("next", "posterior_std"), ("next", "state")]),
        )  # fmt: skip
        self.encoder = MLP(in_features=obs_dim, out_features=D, num_cells=[D], activation_class=nn.ELU)
        self.decoder = MLP(in_features=H + Z, out_features=obs_dim, num_cells=[D, D], activation_class=nn.ELU)
        self.reward = MLP(in_features=H + Z, out_features=1, num_cells=[D], activation_class=nn.ELU)

    def forward(self, o, a, r):
        from tensordict import TensorDict

        B, T, _ = o.shape
        td = TensorDict({
            "state": o.new_zeros(B, T, LATENT), "belief": o.new_zeros(B, T, DETER), "action": a,
            "next": {"encoded_latents": self.encoder(o)},
        }, batch_size=[B, T])  # fmt: skip
        out = self.rollout(td)["next"]
        s = torch.cat([out["belief"], out["state"]], -1)  # [B, T, H + Z]
        return elbo_per_sequence(o, r, out["posterior_mean"], out["posterior_std"], out["prior_mean"],
                                 out["prior_std"], self.decoder(s), self.reward(s).squeeze(-1))  # fmt: skip


def train_peer(module: nn.Module, x: Sequences, epochs: int, batch_size: int, seed: int):
    """Seconds per epoch and the last epoch's training ELBO per step, trained as elbox.fit trains."""
    optimizer = torch.optim.Adam(module.parameters(), lr=LR, fused=True)
    o, a, r = x.values, x.inputs, x.rewards
    N, T = o.shape[:2]
    times, bound = [], math.nan
    for epoch in range(epochs):
        start, total = time.perf_counter(), 0.0
        order = torch.randperm(N, generator=torch.Generator().manual_seed(seed + epoch))
        for begin in range(0, N, batch_size):
            index = order[begin : begin + batch_size]
            value = module(o[index], a[index], r[index])  # [B]
            loss = -value.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(value.detach().sum())
        times.append(time.perf_counter() - start)
        bound = total / (N * T)
    return times, bound


def train_elbox(x: Sequences, epochs: int, batch_size: int, seed: int):
    model = WorldModel(x.values.shape[-1], x.inputs.shape[-1], latent_dim=LATENT, deter_dim=DETER, hidden=HIDDEN,
                       min_std=MIN_STD)  # fmt: skip
    objective = elbox.objectives.WorldELBO(model, model.guide())
    timer = EpochTimer()
    history = elbox.fit(objective, x, epochs=epochs, batch_size=batch_size, lr=LR, seed=seed, callbacks=timer)
    return model, timer.times, history.lower_bound[-1] / x.values.shape[1]


def parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=500)
    parser.add_argument("--steps", type=int, default=50, help="observations per episode (the sequence length T)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(environment())
    x = pendulum(args.episodes, args.steps, args.seed)
    N, T = x.values.shape[:2]
    print(f"data: {N} random-policy Pendulum-v1 episodes of {T} steps; batch {args.batch_size}, {args.epochs} epochs; "
          f"latent {LATENT}, deterministic {DETER}, hidden {HIDDEN}")  # fmt: skip

    rows = {}
    torch.manual_seed(args.seed)
    model, times, bound = train_elbox(x, args.epochs, args.batch_size, args.seed)
    rows["elbox WorldModel"] = (times, bound, parameters(model))
    try:
        import torchrl  # noqa: F401

        torch.manual_seed(args.seed)
        peer = TorchRLRSSM(x.values.shape[-1], x.inputs.shape[-1])
        rows[f"torchrl {torchrl.__version__} RSSM"] = (*train_peer(peer, x, args.epochs, args.batch_size, args.seed),
                                                       parameters(peer))  # fmt: skip
    except ImportError as error:
        print(f"# torchrl is not installed ({error}): its row is skipped (see this script's docstring)")
    torch.manual_seed(args.seed)
    loop = PlaNetLoop(x.values.shape[-1], x.inputs.shape[-1])
    rows["hand-written loop"] = (*train_peer(loop, x, args.epochs, args.batch_size, args.seed), parameters(loop))

    later = slice(1, None) if args.epochs > 1 else slice(None)
    base = statistics.median(rows["elbox WorldModel"][0][later])
    print(f"\n{'':<24} {'params':>8} {'s/epoch':>8} {'seq/s':>8} {'steps/s':>9} {'elbox ×':>8} {'ELBO/step':>10}")
    for name, (times, bound, count) in rows.items():
        seconds = statistics.median(times[later])
        print(f"{name:<24} {count:>8} {seconds:>8.3f} {N / seconds:>8.1f} {N * T / seconds:>9.0f} "
              f"{seconds / base:>7.2f}× {bound:>10.3f}")  # fmt: skip
    print(f"(s/epoch: median over epochs {'2..' if args.epochs > 1 else '1..'}{args.epochs}; elbox ×: the row's "
          "seconds per epoch over elbox's; ELBO/step: the training bound over the last epoch, nats per step)")


if __name__ == "__main__":
    main()
