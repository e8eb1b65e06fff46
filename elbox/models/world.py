r"""World models: the recurrent state-space model (RSSM) of PlaNet and Dreamer, an
action-conditioned sequence latent-variable model trained by the true ELBO.

The state at step t is s_t = [h_t, z_t]: a deterministic part h_t, a function of the past
states and actions, and a stochastic part z_t. Under the prior and the posterior alike

.. math:: h_t = f(h_{t-1}, z_{t-1}, a_{t-1}), \qquad
          p(z_t \mid h_t), \qquad q(z_t \mid h_t, o_t), \qquad
          p(o_t \mid h_t, z_t), \quad p(r_t \mid h_t, z_t), \quad p(c_t \mid h_t, z_t),

so a path's h is fixed by its z and the actions, and every density ratio of two paths
distributions is the ratio of their z-steps: the ELBO is
Σ_t E_q[log p(o_t | ·) + log p(r_t | ·) + log p(c_t | ·) − KL(q(z_t | h_t, o_t) ‖ p(z_t | h_t))] exactly
(the continuation flag c_t's Bernoulli term only with ``continuation=True``).
The paths are :class:`WorldPath` (a :class:`~elbox.distributions.MarkovPath` over the states),
so ``elbox.elbo``, ``elbox.bounds.elbo_steps``, FIVO/SMC and ``log_evidence(method="smc")``
take them as they take a deep Markov model's.

Data convention: episodes are :class:`~elbox.data.Sequences` with values the observations o_t
``[B, T, obs_dim]``, inputs the actions with ``inputs[:, t]`` the action a_{t-1} that led into
step t (``inputs[:, 0]`` unused), ``rewards[:, t]`` the reward received on arriving at o_t
(``rewards[:, 0]`` unused), and (a model with a continuation head) ``continues[:, t]`` the flag c_t,
0 where step t is terminal (the episode ended there) and 1 where it goes on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Distribution, constraints

from elbox._validation import as_data, check_number, check_positive_int
from elbox.data.sequences import Sequences, as_sequences
from elbox.distributions.markov_path import MarkovPath
from elbox.guides.base import Guide
from elbox.models.base import LatentModel

__all__ = ["Imagined", "WorldModel", "WorldPath", "WorldPosterior", "WorldState", "WorldSteps", "world_elbo_steps"]

_LATENTS = ("gaussian", "categorical")
_TRANSITIONS = ("rssm", "linear")
_ENCODERS = ("mlp", "conv")
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _mlp(sizes: tuple[int, ...]) -> nn.Sequential:
    """Linear layers with ELU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ELU())
    return nn.Sequential(*layers)


def _normal_log_prob(z: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
    return (-0.5 * ((z - loc) / scale).square() - scale.log() - _HALF_LOG_2PI).sum(-1)


def _normal_kl(q_loc: Tensor, q_scale: Tensor, p_loc: Tensor, p_scale: Tensor) -> Tensor:
    ratio = (q_scale / p_scale).square()
    return 0.5 * (ratio + ((q_loc - p_loc) / p_scale).square() - 1 - ratio.log()).sum(-1)


@dataclass
class WorldState:
    """A world model's state after a sequence's last observed step: ``h [B, H]`` (deterministic)
    and ``z [B, Z]`` (stochastic; categorical latents one-hot, flattened)."""

    h: Tensor
    z: Tensor

    def __len__(self) -> int:
        return self.h.shape[0]


@dataclass
class Imagined:
    """What :meth:`WorldModel.imagine` returns for N action sequences of K steps.

    Attributes:
        rewards: The predicted mean reward of each step, ``[N, K]`` (None without a reward head).
        observations: The predicted mean observation, ``[N, K, obs_dim]``.
        h, z: The imagined states, ``[N, K, H]`` and ``[N, K, Z]``.
        continues: The predicted probability that each step is not terminal, p(c_t = 1 | h_t, z_t),
            ``[N, K]`` (None without a continuation head).
    """

    rewards: Tensor | None
    observations: Tensor
    h: Tensor
    z: Tensor
    continues: Tensor | None = None


class WorldSteps(NamedTuple):
    """The world model's ELBO per step, each ``[B, T]`` (zero past each end), averaged over
    particles: ``value`` = ``observation`` + ``reward`` + ``continuation`` − ``kl`` (the
    continuation's term zero without a continuation head)."""

    value: Tensor
    observation: Tensor
    reward: Tensor
    kl: Tensor
    continuation: Tensor


class WorldPath(MarkovPath):
    r"""Paths of a world model's states s_{1:T}, s_t = [h_t, z_t] ``[*S, B, T, H + Z]``, under its
    prior p(z_t | h_t) (``embedding=None``) or its posterior q(z_t | h_t, e(o_t)); h_t =
    f(h_{t-1}, z_{t-1}, a_{t-1}) under both. Densities are those of the z-steps: a path's h is
    the deterministic function of its z and the actions, and :meth:`log_prob` reads the h the
    path carries (as drawn by either distribution). Past each sequence's end z_t is N(0, I)
    (uniform categories) under both, so those steps cancel from every log-ratio.
    """

    arg_constraints: dict = {}
    has_rsample = True
    support = constraints.independent(constraints.real, 2)

    def __init__(self, model: WorldModel, mask: Tensor, actions: Tensor | None, embedding: Tensor | None = None,
                 posterior: WorldPosterior | None = None):  # fmt: skip
        B, T = mask.shape
        self.model, self.posterior = model, posterior
        self.mask, self.actions, self.embedding = mask, actions, embedding
        self._all_kept = bool(mask.all())  # no step past an end: masking is the identity
        self.initial = model.initial_state()
        self.latent_dim = model.state_dim
        self.flow, self.scan, self.ignores_previous, self.step, self.context = None, None, False, None, None
        # the actions' and observations' share of the first layers, every step at once
        self._drive = model._action_drive(actions)  # [B, T, *] or None
        self._evidence = posterior._evidence(embedding) if embedding is not None else None
        Distribution.__init__(self, torch.Size([B]), torch.Size([T, model.state_dim]), validate_args=False)

    @property
    def is_posterior(self) -> bool:
        return self.embedding is not None

    def _stats(self, h: Tensor, t: int | None):
        """The z-step's parameters given h ``[*, B, H]`` (one step t) or ``[*, B, T, H]`` (t None)."""
        if not self.is_posterior:
            return self.model._prior_stats(h)
        evidence = self._evidence if t is None else self._evidence[:, t]
        return self.posterior._stats(h, evidence)

    def _masked(self, stats, keep: Tensor):
        """Past each end: N(0, I) (loc 0, scale 1), or uniform categories (logits 0)."""
        if self._all_kept:
            return tuple(stats)
        if self.model.latent == "gaussian":
            loc, scale = stats
            return torch.where(keep, loc, 0.0), torch.where(keep, scale, 1.0)
        return (torch.where(keep.unsqueeze(-1), stats[0], 0.0),)

    def step_parameters(self, t: int, z_prev: Tensor):
        """(h_t, the z-step's parameters) given the previous states ``[*S, B, D]``."""
        drive = None if self._drive is None else self._drive[:, t]
        h = self.model._deterministic(z_prev, drive, first=t == 0)
        return h, self._masked(self._stats(h, t), self.mask[:, t, None])

    def step_rsample(self, t: int, z_prev: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        h, stats = self.step_parameters(t, z_prev)
        z = self.model._draw(stats)
        return torch.cat([h, z], -1), self.model._log_prob(z, stats), h, z

    def step_log_prob(self, t: int, z_prev: Tensor, z: Tensor) -> Tensor:
        """log p(z_t | h_t) (or q's) of states ``z [*S, B, H + Z]``, h_t read from them: the same
        deterministic function of ``z_prev`` under both distributions (one GRU step saved in the
        particle filter, whose proposal has just computed it)."""
        H = self.model.deter_dim
        stats = self._masked(self._stats(z[..., :H], t), self.mask[:, t, None])
        return self.model._log_prob(z[..., H:], stats)

    def conditionals(self, z: Tensor):
        """The z-steps' parameters at every step from the path's own h, one batched pass."""
        H = self.model.deter_dim
        return self._masked(self._stats(z[..., :H], None), self.mask.unsqueeze(-1))

    def step_log_probs(self, z: Tensor) -> Tensor:
        return self.model._log_prob(z[..., self.model.deter_dim:], self.conditionals(z))

    def rsample_steps(self, sample_shape=()):
        """Paths ``[*S, B, T, H + Z]``, log q(z_t | h_t, ·) ``[*S, B, T]`` and the steps'
        parameters (a tuple of ``[*S, B, T, …]``): sequential over t, batched over S and B. The
        RSSM's Gaussian posterior runs its recursion through :class:`_PosteriorScan` (the same
        numbers as the step-by-step loop, a backward pass by hand)."""
        sample_shape = torch.Size(sample_shape)
        model = self.model
        if self.is_posterior and model.transition_kind == "rssm" and model.latent == "gaussian":
            return self._posterior_scan(sample_shape)
        B, T = self.mask.shape
        s = self.initial.expand(*sample_shape, B, self.latent_dim)
        states, stats_steps = [], []
        for t in range(T):
            h, stats = self.step_parameters(t, s)
            s = torch.cat([h, self.model._draw(stats)], -1)
            states.append(s)
            stats_steps.append(stats)
        path = torch.stack(states, -2)
        stats = tuple(torch.stack(parts, -2 if self.model.latent == "gaussian" else -3)
                      for parts in zip(*stats_steps))  # fmt: skip
        return path, self.model._log_prob(path[..., self.model.deter_dim:], stats), *stats

    def _posterior_scan(self, sample_shape: torch.Size):
        """:meth:`rsample_steps` of the RSSM's Gaussian posterior by :class:`_PosteriorScan`."""
        model, head = self.model, self.posterior.head
        B, T = self.mask.shape
        H, Z = model.deter_dim, model.stoch_dim
        lead = (*sample_shape, B)
        N = math.prod(lead)
        ref = self._evidence
        # step t's draws are the t-th block of one stream, as the loop's randn_like at each step
        noise = torch.randn(T, N, Z, dtype=ref.dtype, device=ref.device)

        def flat(v: Tensor) -> Tensor:  # [B, T, *] -> [N, T, *] (the same for every draw)
            return v if N == B else v.expand(*sample_shape, *v.shape).reshape(N, *v.shape[1:])

        keep = None if self._all_kept else flat(self.mask)
        z_0 = model.z_0.expand(N, Z)
        h_0 = z_0.new_zeros(N, H)
        sa, gru = model.state_action, model.gru
        h, loc, scale = _PosteriorScan.apply(
            z_0, h_0, None if self._drive is None else flat(self._drive), flat(self._evidence), noise, keep,
            sa.weight[:, :Z], sa.bias, gru.weight_ih, gru.weight_hh, gru.bias_ih, gru.bias_hh,
            head[0].weight[:, :H], head[2].weight, head[2].bias, model.min_std)  # fmt: skip
        z = loc + scale * noise.transpose(0, 1)
        path = torch.cat([h, z], -1).view(*lead, T, H + Z)
        loc, scale = loc.view(*lead, T, Z), scale.view(*lead, T, Z)
        return path, model._log_prob(path[..., H:], (loc, scale)), loc, scale

    def rsample_and_log_prob(self, sample_shape=()) -> tuple[Tensor, Tensor]:
        """Paths ``[*S, B, T, H + Z]`` and their log-density ``[*S, B]``, from one sequential pass."""
        path, log_q, *_ = self.rsample_steps(sample_shape)
        return path, log_q.sum(-1)

    def rsample(self, sample_shape=()) -> Tensor:
        return self.rsample_steps(sample_shape)[0]

    def path_steps(self, model, x, p: WorldPath, num_samples: int, kl: str = "analytic"):
        """:class:`~elbox.bounds.sequence.StepTerms` for paths of this posterior against the prior
        ``p`` (the hook :func:`elbox.bounds.sequence.path_steps` calls)."""
        from elbox.bounds.sequence import StepTerms

        steps, method = world_steps(model, x, self, p, num_samples, kl)
        return StepTerms(steps.value, steps.observation + steps.reward + steps.continuation, steps.kl, method)

    def __repr__(self) -> str:
        kind = "posterior" if self.is_posterior else "prior"
        return f"WorldPath({kind}, batch {list(self.batch_shape)}, event {list(self.event_shape)})"


class _PosteriorScan(torch.autograd.Function):
    r"""The RSSM's posterior recursion over every step, with a backward pass by hand (as the deep
    Markov model's :class:`~elbox.guides.sequence._CombinerScan`): per step, the forward's five
    products and five backward (for z_{t-1}, h_{t-1} and the step's inner layers); the weights'
    gradients are one product each over all steps at the end, not T small ones accumulated (and
    no weight slice's gradient zero-filled at every step).

    Forward, for t = 1..T (N rows: draws × sequences):

    .. math:: a_t = W_z z_{t-1} + b + d_t, \quad x_t = \mathrm{elu}(a_t), \quad
              h_t = \mathrm{GRUCell}(x_t, h_{t-1}), \quad
              [\mu_t, \rho_t] = V\,\mathrm{elu}(W_q h_t + e_t) + v, \quad
              \sigma_t = \mathrm{softplus}(\rho_t) + \sigma_{\min}, \quad z_t = \mu_t + \sigma_t \varepsilon_t,

    d_t the actions' drive (none at t = 1), e_t the observation's evidence (its bias included);
    past each end (``keep`` False) μ_t = 0 and σ_t = 1. Returns h, μ, σ ``[N, T, *]``; z is
    recomposed outside (z = μ + σ ε), and the gradient that reaches each z_t through the next
    step is added here.
    """

    @staticmethod
    def forward(ctx, z_0, h_0, drive, evidence, noise, keep, W_z, b_z, W_ih, W_hh, b_ih, b_hh, W_q, V, v, min_std):
        # inside, every per-step tensor is [T, N, *]: each step's slice contiguous
        drive = None if drive is None else drive.transpose(0, 1)
        evidence, keep = evidence.transpose(0, 1), None if keep is None else keep.T
        T, H, Z = evidence.shape[0], h_0.shape[-1], z_0.shape[-1]
        N, D = z_0.shape[0], W_z.shape[0]
        new = evidence.new_empty  # each step writes its results into these: no copies
        xs, gh, ru, n, hs, es = new(T, N, D), new(T, N, 3 * H), new(T, N, 2 * H), new(T, N, H), new(T, N, H), \
            new(T, N, W_q.shape[0])  # fmt: skip
        outs, locs, scales, zs = new(T, N, 2 * Z), new(T, N, Z), new(T, N, Z), new(T, N, Z)
        z, h = z_0, h_0
        for t in range(T):
            a = torch.addmm(b_z, z, W_z.T)
            if drive is not None and t > 0:
                a = a + drive[t]
            x = torch._C._nn.elu(a, out=xs[t])
            gi = torch.addmm(b_ih, x, W_ih.T)
            torch.addmm(b_hh, h, W_hh.T, out=gh[t])
            torch.sigmoid(gi[:, : 2 * H] + gh[t, :, : 2 * H], out=ru[t])
            r, u = ru[t, :, :H], ru[t, :, H:]
            torch.tanh(torch.addcmul(gi[:, 2 * H :], r, gh[t, :, 2 * H :]), out=n[t])
            h = torch.addcmul(n[t], u, h - n[t], out=hs[t])
            e = torch._C._nn.elu(torch.addmm(evidence[t], h, W_q.T), out=es[t])
            out = torch.addmm(v, e, V.T, out=outs[t])
            loc, scale = out[:, :Z], torch.add(F.softplus(out[:, Z:]), min_std, out=scales[t])
            if keep is not None:
                k = keep[t, :, None]
                loc, scale = torch.where(k, loc, 0.0), torch.where(k, scale, 1.0)
                scales[t] = scale
            locs[t] = loc
            z = torch.addcmul(loc, scale, noise[t], out=zs[t])
        ghn, raw = gh[..., 2 * H :], outs[..., Z:]
        ctx.save_for_backward(z_0, h_0, noise, keep, xs, hs, ru, n, ghn, es, raw, zs, W_z, W_ih, W_hh, W_q, V)
        ctx.has_drive = drive is not None
        return hs.transpose(0, 1), locs.transpose(0, 1), scales.transpose(0, 1)

    @staticmethod
    def backward(ctx, g_h, g_loc, g_scale):
        z_0, h_0, noise, keep, xs, hs, ru, n, ghn, es, raw, zs, W_z, W_ih, W_hh, W_q, V = ctx.saved_tensors
        T, N, H = hs.shape
        Z = z_0.shape[-1]
        elu_backward = torch.ops.aten.elu_backward.grad_input
        g_h = torch.zeros_like(hs) if g_h is None else g_h.transpose(0, 1)
        g_loc = torch.zeros_like(zs) if g_loc is None else g_loc.transpose(0, 1)
        g_scale = torch.zeros_like(zs) if g_scale is None else g_scale.transpose(0, 1)
        # every step's local derivatives at once: ∂h_t/∂ each gate's pre-activation, [T, N, 3, H]
        h_prev = torch.cat([h_0.unsqueeze(0), hs[:-1]])
        r, u = ru[..., :H], ru[..., H:]
        d_n = (1 - u) * (1 - n.square())
        d_gates = torch.stack([d_n * ghn * r * (1 - r), (h_prev - n) * u * (1 - u), d_n], 2)
        r_gates = torch.cat([torch.ones_like(ru), r], -1)  # gi's gradient to gh's
        slope_s = torch.sigmoid(raw)  # softplus′
        new = hs.new_empty  # each step writes its gradients into these
        g_out, g_c, g_gi, g_gh, g_a = new(T, N, 2 * Z), torch.empty_like(es), new(T, N, 3 * H), new(T, N, 3 * H), \
            torch.empty_like(xs)  # fmt: skip
        g_z, g_hn = torch.zeros_like(z_0), torch.zeros_like(h_0)  # through step t + 1
        for t in range(T - 1, -1, -1):
            g_mu = torch.add(g_loc[t], g_z, out=g_out[t, :, :Z])
            g_sigma = torch.addcmul(g_scale[t], g_z, noise[t])
            if keep is not None:
                k = keep[t, :, None]
                g_out[t, :, :Z] = torch.where(k, g_mu, 0.0)
                g_sigma = torch.where(k, g_sigma, 0.0)
            torch.mul(g_sigma, slope_s[t], out=g_out[t, :, Z:])
            elu_backward(g_out[t] @ V, 1.0, 1.0, 1.0, True, es[t], grad_input=g_c[t])
            g_ht = torch.addmm(g_h[t] + g_hn, g_c[t], W_q)
            torch.mul(g_ht.unsqueeze(1), d_gates[t], out=g_gi[t].view(N, 3, H))
            torch.mul(g_gi[t], r_gates[t], out=g_gh[t])
            g_hn = torch.addmm(g_ht * u[t], g_gh[t], W_hh)
            elu_backward(g_gi[t] @ W_ih, 1.0, 1.0, 1.0, True, xs[t], grad_input=g_a[t])
            g_z = g_a[t] @ W_z

        def outer(g: Tensor, x: Tensor) -> Tensor:  # Σ over steps and rows of g ⊗ x
            return g.flatten(0, 1).T @ x.flatten(0, 1)

        g_drive = None
        if ctx.has_drive:
            g_drive = g_a.clone()
            g_drive[0] = 0.0
            g_drive = g_drive.transpose(0, 1)
        z_prev = torch.cat([z_0.unsqueeze(0), zs[:-1]])
        return (g_z, g_hn, g_drive, g_c.transpose(0, 1), None, None,
                outer(g_a, z_prev), g_a.sum((0, 1)), outer(g_gi, xs), outer(g_gh, h_prev), g_gi.sum((0, 1)),
                g_gh.sum((0, 1)), outer(g_c, hs), outer(g_out, es), g_out.sum((0, 1)), None)  # fmt: skip


def world_steps(model: WorldModel, x: Sequences, q: WorldPath, p: WorldPath, num_samples: int,
                kl: str = "analytic", *, raw: bool = False):  # fmt: skip
    """The ELBO's parts per step from ``num_samples`` paths of q: (:class:`WorldSteps`, the KL's
    method); with ``raw``, also the per-particle parts and both steps' parameters (for the
    surrogates of :class:`~elbox.objectives.world.WorldELBO`)."""
    x = x.trimmed()  # a mini-batch gathered from checked data keeps the data set's padding; q's paths do not
    path, log_q, *q_stats = q.rsample_steps((num_samples,))
    observation, reward, continuation = model.step_log_likelihoods(x, path)
    p_stats = p.conditionals(path)
    if kl == "analytic":
        kl_steps, method = model._kl(tuple(q_stats), p_stats), "analytic"
    else:
        kl_steps, method = log_q - p.step_log_probs(path), "mc"
    kl_steps = torch.where(q.mask, kl_steps, 0.0)
    steps = WorldSteps(observation.mean(0) + reward.mean(0) + continuation.mean(0) - kl_steps.mean(0),
                       observation.mean(0), reward.mean(0), kl_steps.mean(0), continuation.mean(0))  # fmt: skip
    if raw:
        return steps, method, (observation, reward, continuation, kl_steps, tuple(q_stats), p_stats)
    return steps, method


def world_elbo_steps(model: WorldModel, x, *, num_samples: int = 1, kl: str = "analytic") -> WorldSteps:
    r"""A world model's ELBO per step and per sequence, its guide the model's own posterior:

    .. math:: \mathrm{ELBO}_t = \mathbb{E}_q\big[\log p(o_t \mid h_t, z_t) + \log p(r_t \mid h_t, z_t)
              + \log p(c_t \mid h_t, z_t) - \mathrm{KL}\big(q(z_t \mid h_t, o_t) \,\|\, p(z_t \mid h_t)\big)\big],

    the KL analytic given the drawn past (``kl="analytic"``) or sampled (``"mc"``); the
    continuation flag's term only with a continuation head.

    Returns:
        :class:`WorldSteps`, each ``[B, T]``.
    """
    x = model.check_data(x)
    S = check_positive_int(num_samples, "num_samples")
    if kl not in ("analytic", "mc"):
        raise ValueError(f"kl must be 'analytic' or 'mc'; received {kl!r}")
    return world_steps(model, x, model.representation(x), model.prior_for(x), S, kl)[0]


class WorldPosterior(Guide):
    r"""The world model's posterior q(z_t | h_t, e(o_t)) (PlaNet's and Dreamer's representation
    model): an encoder e of each observation and a head over [h_t, e_t]; h_t is the model's.
    It is part of the model (``model.guide()`` returns it), so it is trained and saved with it.
    ``guide(x)`` returns the posterior's :class:`WorldPath`.
    """

    refinable = False

    def __init__(self, model: WorldModel, hidden: int, embed_dim: int):
        super().__init__()
        object.__setattr__(self, "_model", model)  # not a submodule: the model owns this guide
        Z, H = model.stoch_dim, model.deter_dim
        if model.encoder_kind == "conv":
            from elbox.models._conv import ConvEncoder

            self.encoder = ConvEncoder(model.obs_dim, model.depth)
            self.embed_dim = self.encoder.out_features
            out = 2 * Z if model.latent == "gaussian" else Z
            self.head = nn.Sequential(nn.Linear(H + self.embed_dim, hidden), nn.ELU(), nn.Linear(hidden, out))
        elif model.transition_kind == "linear":
            # q(z_t | h_t, o_t) = N(W h_t + V o_t + b, diag softplus(ρ)²): a linear filter's form
            self.encoder = nn.Identity()
            self.head = nn.Linear(H + model.obs_dim, Z)
            self.raw_scale = nn.Parameter(torch.zeros(Z))
            self.embed_dim = model.obs_dim
        else:
            self.encoder = _mlp((model.obs_dim, hidden, embed_dim))
            self.embed_dim = embed_dim
            out = 2 * Z if model.latent == "gaussian" else Z
            self.head = nn.Sequential(nn.Linear(H + embed_dim, hidden), nn.ELU(), nn.Linear(hidden, out))

    def _evidence(self, embedding: Tensor) -> Tensor:
        """The observation's share of the head's first layer, every step at once, ``[B, T, *]``."""
        first = self.head if isinstance(self.head, nn.Linear) else self.head[0]
        H = self._model.deter_dim
        return F.linear(embedding, first.weight[:, H:], first.bias)

    def _stats(self, h: Tensor, evidence: Tensor):
        first = self.head if isinstance(self.head, nn.Linear) else self.head[0]
        H = self._model.deter_dim
        pre = F.linear(h, first.weight[:, :H]) + evidence
        if isinstance(self.head, nn.Linear):
            return pre, F.softplus(self.raw_scale).expand_as(pre)
        return self._model._stats_from(self.head[2](F.elu(pre)))

    def embed(self, x: Sequences) -> Tensor:
        """e(o_t) for every step, ``[B, T, embed_dim]`` (frames in [0, 1] enter the convolutions
        centred, o_t − 0.5, as Dreamer's do: a mostly white frame is otherwise a large constant input)."""
        return self.encoder(x.values - 0.5 if self._model.encoder_kind == "conv" else x.values)

    def forward(self, x, index: Tensor | None = None) -> WorldPath:
        model = self._model
        x = model.check_data(x, min_length=1)
        return WorldPath(model, x.mask, model._actions(x), self.embed(x), self)


class WorldModel(LatentModel):
    r"""The recurrent state-space model (PlaNet; Dreamer V1–V3), trained by the true ELBO.

    .. math:: h_t = \mathrm{GRU}\big(h_{t-1}, \mathrm{elu}(W[z_{t-1}, a_{t-1}])\big), \quad
              z_t \sim p(z_t \mid h_t), \quad
              o_t \sim \mathcal{N}(\mu(h_t, z_t), \sigma^2), \quad r_t \sim \mathcal{N}(\rho(h_t, z_t), 1), \quad
              c_t \sim \mathrm{Bernoulli}(\sigma(\kappa(h_t, z_t))),

    with the posterior q(z_t | h_t, e(o_t)) (:class:`WorldPosterior`, the guide, part of the
    model). Latents are Gaussian (``latent_dim`` of them; std softplus + ``min_std``, as
    PlaNet's) or categorical (``latent_dim`` variables of ``classes`` classes, one-hot, drawn
    with straight-through gradients and a ``unimix`` uniform mix, as DreamerV2/3). With
    ``transition="linear"`` the model is exactly a linear-Gaussian state-space model with the
    actions as inputs (h_t = A z_{t-1} + B a_{t-1}, the prior N(h_t, diag σ²), o_t = C z_t + noise):
    :meth:`to_lgssm` gives it as a :class:`~elbox.models.LinearGaussianSSM`, the oracle. The
    continuation flag c_t (Dreamer's continue predictor: 0 at a terminal step) is optional
    (``continuation=True``); its Bernoulli log-likelihood is one more observed-data term of the
    ELBO, of the particle filter's weights and of the evidence.

    Paths are ``[*S, B, T, H + Z]`` states s_t = [h_t, z_t] (:class:`WorldPath`); ragged
    episodes by masks. ``elbox.elbo(model, model.guide(), x)`` is the bound (the objective
    ``world_elbo`` adds PlaNet's free nats and DreamerV2's KL balancing as labelled surrogates);
    ``elbox.log_evidence(model, x, guide=model.guide(), method="smc")`` estimates the evidence.

    Planning interface (what a planner calls):

    - ``model.filter(x) -> WorldState``: the posterior state after each sequence's last observed
      step, ``h [B, H]``, ``z [B, Z]`` (a draw, or the mean with ``sample=False``); no gradient.
    - ``model.imagine(state, actions [N, K, A], sample=True) -> Imagined``: rolls the prior
      forward under N action sequences of K steps; ``actions[:, 0]`` is applied from the state's
      step (it leads into the first imagined step). ``.rewards [N, K]`` the predicted mean
      reward of each step, ``.observations [N, K, obs_dim]`` the predicted means,
      ``.continues [N, K]`` the predicted probabilities that each step is not terminal (with a
      continuation head). A state of batch 1 broadcasts over the N candidates.

    Args:
        obs_dim: The size of o_t (``encoder="conv"``: the images' channels C; o_t ``[C, 64, 64]``).
        action_dim: The size of a_t (0: none).
        latent: ``"gaussian"`` or ``"categorical"``.
        latent_dim: Gaussian latents: their number (PlaNet: 30); categorical: the number of
            variables (DreamerV2: 32).
        classes: Categorical latents: the classes per variable (32).
        deter_dim: The GRU's state size H (PlaNet: 200). The linear transition's h is Z-sized.
        hidden: The MLPs' width.
        reward: Whether there is a reward head (the data must then carry rewards).
        continuation: Whether there is a continuation head p(c_t | h_t, z_t), a Bernoulli of the
            flag c_t (0: step t is terminal); the data must then carry ``continues``.
        transition: ``"rssm"`` or ``"linear"``.
        use_actions: False: a model that ignores the actions (a baseline on the same data).
        encoder: ``"mlp"`` (vector observations) or ``"conv"`` (64 × 64 images: Dreamer's
            convolutional encoder and decoder, ``depth`` their width; σ² one number).
        depth: The convolutional networks' depth (Dreamer: 32).
        observation_variance: The Gaussian observation's σ² (a positive number, or ``"learned"``).
        min_std: The Gaussian latents' floor on the std (RSSM only).
        unimix: The categorical latents' uniform mix (DreamerV3: 0.01).

    Example:
        >>> model = WorldModel(3, 1, latent_dim=4, deter_dim=8, hidden=16)
        >>> x = Sequences(torch.randn(2, 5, 3), inputs=torch.randn(2, 5, 1), rewards=torch.randn(2, 5))
        >>> elbox.bounds.elbo_steps(model, model.guide(), x).value.shape
        torch.Size([2, 5])
    """

    def __init__(self, obs_dim: int, action_dim: int = 0, *, latent: str = "gaussian", latent_dim: int = 30,
                 classes: int = 32, deter_dim: int = 200, hidden: int = 200, reward: bool = True,
                 transition: str = "rssm", use_actions: bool = True, encoder: str = "mlp",
                 observation_variance: float | str = 1.0, min_std: float = 0.1, unimix: float = 0.01,
                 depth: int = 32, continuation: bool = False):  # fmt: skip
        super().__init__()
        self.obs_dim = check_positive_int(obs_dim, "obs_dim")
        self.action_dim = check_positive_int(action_dim, "action_dim", minimum=0)
        if latent not in _LATENTS:
            raise ValueError(f"latent must be one of {_LATENTS}; received {latent!r}")
        if transition not in _TRANSITIONS:
            raise ValueError(f"transition must be one of {_TRANSITIONS}; received {transition!r}")
        if encoder not in _ENCODERS:
            raise ValueError(f"encoder must be one of {_ENCODERS}; received {encoder!r}")
        if encoder == "conv" and transition == "linear":
            raise ValueError("encoder='conv' needs transition='rssm' (the linear model's emission is linear)")
        for name, value in (("reward", reward), ("use_actions", use_actions), ("continuation", continuation)):
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be True or False; received {value!r}")
        if transition == "linear" and latent != "gaussian":
            raise ValueError(f"transition='linear' is a linear-Gaussian model: it needs latent='gaussian'; received "
                             f"latent={latent!r}")  # fmt: skip
        self.latent, self.transition_kind, self.encoder_kind = latent, transition, encoder
        self.depth = check_positive_int(depth, "depth")
        #: One observation's shape: ``(obs_dim,)``, or ``(C, 64, 64)`` for images.
        self.obs_shape = (self.obs_dim,) if encoder == "mlp" else (self.obs_dim, 64, 64)
        self.has_reward, self.use_actions, self.has_continuation = reward, use_actions, continuation
        self.latent_dim = check_positive_int(latent_dim, "latent_dim")
        self.classes = check_positive_int(classes, "classes", minimum=2)
        self.stoch_dim = self.latent_dim * (self.classes if latent == "categorical" else 1)
        Z = self.stoch_dim
        self.hidden = check_positive_int(hidden, "hidden")
        self.min_std = check_number(min_std, "min_std", minimum=0.0)
        self.unimix = check_number(unimix, "unimix", minimum=0.0, maximum=1.0)
        A = self.action_dim if use_actions else 0
        if transition == "linear":
            self.deter_dim = Z
            self.transition_matrix = nn.Linear(Z, Z, bias=False)
            with torch.no_grad():
                self.transition_matrix.weight.copy_(torch.eye(Z))
            self.control = nn.Linear(A, Z, bias=False) if A else None
            self.raw_scale = nn.Parameter(torch.full((Z,), math.log(math.e - 1)))  # softplus⁻¹(1)
            self.observation = nn.Linear(Z, self.obs_dim, bias=False)
            self.reward_head = nn.Linear(Z, 1) if reward else None
            self.continuation_head = nn.Linear(Z, 1) if continuation else None
        else:
            H = self.deter_dim = check_positive_int(deter_dim, "deter_dim")
            self.state_action = nn.Linear(Z + A, self.hidden)
            self.gru = nn.GRUCell(self.hidden, H)
            self.prior_head = _mlp((H, self.hidden, 2 * Z if latent == "gaussian" else Z))
            if encoder == "conv":
                from elbox.models._conv import ConvDecoder

                self.observation = ConvDecoder(H + Z, self.obs_dim, self.depth)
            else:
                self.observation = _mlp((H + Z, self.hidden, self.hidden, self.obs_dim))
            self.reward_head = _mlp((H + Z, self.hidden, 1)) if reward else None
            self.continuation_head = _mlp((H + Z, self.hidden, 1)) if continuation else None
        self.z_0 = nn.Parameter(torch.zeros(Z))
        self.learned_variance = observation_variance == "learned"
        variance = 1.0 if self.learned_variance else check_number(observation_variance, "observation_variance",
                                                                  minimum=0.0, strict=True)  # fmt: skip
        log_scale = torch.full((self.obs_dim,) if encoder == "mlp" else (1, 1, 1), 0.5 * math.log(variance))
        if self.learned_variance:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)
        self.representation = WorldPosterior(self, self.hidden, self.hidden)

    # Sizes and data.

    @property
    def state_dim(self) -> int:
        """H + Z: the size of a state s_t = [h_t, z_t]."""
        return self.deter_dim + self.stoch_dim

    @property
    def data_shape(self) -> tuple:  # type: ignore[override]
        return (None, *self.obs_shape)

    def check_data(self, x, *, name: str = "x", min_length: int = 2) -> Sequences:
        """``x`` as checked :class:`~elbox.data.Sequences`: observations ``[B, T, obs_dim]``, actions
        ``[B, T, action_dim]`` as inputs, rewards ``[B, T]`` where the model has a reward head,
        continuation flags ``[B, T]`` where it has a continuation head, every episode of at least
        ``min_length`` steps (an episode of one step has no action and no reward; :meth:`filter`
        takes them); trailing steps no sequence reaches dropped."""
        if isinstance(x, Sequences) and x.inputs is not None and self.action_dim \
                and (x.inputs.dim() != 3 or x.inputs.shape[-1] != self.action_dim):  # fmt: skip
            raise ValueError(f"{name}: the actions (the sequences' inputs) must be [B, T, action_dim={self.action_dim}]"
                             f"; received {list(x.inputs.shape)}")  # fmt: skip
        if isinstance(x, Sequences) and self.has_reward and x.rewards is None:
            raise ValueError(f"{name}: this WorldModel has a reward head (reward=True): the sequences must carry "
                             "rewards [B, T] (Sequences(o, inputs=a, rewards=r)); or build it with reward=False")
        if isinstance(x, Sequences) and self.has_continuation and x.continues is None:
            raise ValueError(f"{name}: this WorldModel has a continuation head (continuation=True): the sequences must "
                             "carry continues [B, T], 0 at a terminal step and 1 elsewhere (Sequences(o, inputs=a, "
                             "rewards=r, continues=c)); or build it with continuation=False")  # fmt: skip
        x = as_sequences(x, event_shape=self.obs_shape, name=name, num_inputs=self.action_dim, owner="WorldModel",
                         rewards=self.has_reward, continues=self.has_continuation, dtype=self._reference().dtype,
                         device=self._reference().device)  # fmt: skip
        lengths = x.mask.sum(-1)
        if bool((lengths < min_length).any()):
            b = int((lengths < min_length).nonzero()[0])
            raise ValueError(f"{name}: sequence {b} has {int(lengths[b])} step; a world model's episodes need at least "
                             f"{min_length} steps (an observation, an action, and what it led to)")  # fmt: skip
        return x.trimmed()

    def _actions(self, x: Sequences) -> Tensor | None:
        """a_{t-1} leading into each step t, ``[B, T, A]`` (zero into the first), or None."""
        if not (self.use_actions and self.action_dim):
            return None
        a = x.inputs.clone()
        a[:, 0] = 0.0
        return a

    def _action_drive(self, actions: Tensor | None) -> Tensor | None:
        """The actions' share of the transition's first layer, ``[B, T, *]``."""
        if actions is None:
            return None
        if self.transition_kind == "linear":
            return self.control(actions)
        return F.linear(actions, self.state_action.weight[:, self.stoch_dim:])

    def initial_state(self) -> Tensor:
        """s_0 = [h_0, z_0] (h_0 = 0), ``[H + Z]``."""
        return torch.cat([self.z_0.new_zeros(self.deter_dim), self.z_0])

    # The transition, the latents' distributions and the heads.

    def _deterministic(self, s_prev: Tensor, drive: Tensor | None, first: bool = False) -> Tensor:
        """h_t from the previous states ``[*, B, H + Z]`` and the actions' drive ``[B, *]``."""
        H = self.deter_dim
        h_prev, z_prev = s_prev[..., :H], s_prev[..., H:]
        if self.transition_kind == "linear":
            h = self.transition_matrix(z_prev)
            return h if drive is None or first else h + drive
        pre = F.linear(z_prev, self.state_action.weight[:, : self.stoch_dim], self.state_action.bias)
        if drive is not None and not first:
            pre = pre + drive
        lead = pre.shape[:-1]
        h_prev = h_prev.expand(*lead, H)
        return self.gru(F.elu(pre).reshape(-1, pre.shape[-1]), h_prev.reshape(-1, H)).view(*lead, H)

    def _stats_from(self, out: Tensor):
        """A head's output as the latent's parameters: (loc, scale) or (logits ``[*, V, K]``,)."""
        if self.latent == "gaussian":
            loc, raw = out.chunk(2, -1)
            return loc, F.softplus(raw) + self.min_std
        logits = out.unflatten(-1, (self.latent_dim, self.classes))
        if self.unimix > 0:
            probs = (1 - self.unimix) * logits.softmax(-1) + self.unimix / self.classes
            logits = probs.log()
        return (logits,)

    def _prior_stats(self, h: Tensor):
        if self.transition_kind == "linear":
            return h, F.softplus(self.raw_scale).expand_as(h)
        return self._stats_from(self.prior_head(h))

    def _draw(self, stats) -> Tensor:
        """z ~ the step's distribution, reparameterized (categorical: one-hot, straight-through)."""
        if self.latent == "gaussian":
            loc, scale = stats
            return loc + scale * torch.randn_like(loc)
        logits = stats[0]
        probs = logits.softmax(-1)
        index = torch.multinomial(probs.detach().reshape(-1, self.classes), 1).view(probs.shape[:-1])
        one_hot = F.one_hot(index, self.classes).to(probs.dtype)
        return (one_hot + probs - probs.detach()).flatten(-2)

    def _log_prob(self, z: Tensor, stats) -> Tensor:
        if self.latent == "gaussian":
            return _normal_log_prob(z, *stats)
        logits = stats[0].log_softmax(-1)
        return (z.unflatten(-1, (self.latent_dim, self.classes)) * logits).sum((-2, -1))

    def _kl(self, q_stats, p_stats) -> Tensor:
        if self.latent == "gaussian":
            return _normal_kl(*q_stats, *p_stats)
        q_log, p_log = q_stats[0].log_softmax(-1), p_stats[0].log_softmax(-1)
        return (q_log.exp() * (q_log - p_log)).sum((-2, -1))

    def _features(self, s: Tensor) -> Tensor:
        """What the heads read: [h, z] (the linear model's: z)."""
        return s[..., self.deter_dim:] if self.transition_kind == "linear" else s

    def observation_mean(self, s: Tensor) -> Tensor:
        """E[o_t | s_t], ``[*, *obs_shape]``."""
        return self.observation(self._features(s))

    def reward_mean(self, s: Tensor) -> Tensor:
        """E[r_t | s_t], ``[*]``."""
        if self.reward_head is None:
            raise TypeError("this WorldModel has no reward head (reward=False)")
        return self.reward_head(self._features(s)).squeeze(-1)

    def continuation_logits(self, s: Tensor) -> Tensor:
        """The logit of p(c_t = 1 | s_t), that step t is not terminal, ``[*]``."""
        if self.continuation_head is None:
            raise TypeError("this WorldModel has no continuation head (continuation=False)")
        return self.continuation_head(self._features(s)).squeeze(-1)

    def continuation_probability(self, s: Tensor) -> Tensor:
        """p(c_t = 1 | s_t): the probability that step t is not terminal, ``[*]``."""
        return self.continuation_logits(s).sigmoid()

    def _observation_log_prob(self, o: Tensor, s: Tensor) -> Tensor:
        w = (o - self.observation_mean(s)) * torch.exp(-self.log_scale)
        return (-0.5 * w.square() - self.log_scale - _HALF_LOG_2PI).flatten(-len(self.obs_shape)).sum(-1)

    def step_log_likelihoods(self, x: Sequences, s: Tensor, t: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(log p(o_t | s_t), log p(r_t | s_t), log p(c_t | s_t)) per step ``[*S, B, T]`` (zero past
        each end; the reward's zero without a head, and at t = 1, where no reward was received; the
        continuation's zero without a head, counted at every step); with ``t``, of that step alone
        from states ``[*S, B, D]``."""
        o, mask = (x.values, x.mask) if t is None else (x.values[:, t], x.mask[:, t])
        obs = torch.where(mask, self._observation_log_prob(o, s), 0.0)
        cont = torch.zeros_like(obs)
        if self.continuation_head is not None:
            c = x.continues if t is None else x.continues[:, t]
            logits = self.continuation_logits(s)
            cont = torch.where(mask, c * F.logsigmoid(logits) + (1 - c) * F.logsigmoid(-logits), 0.0)
        if self.reward_head is None:
            return obs, torch.zeros_like(obs), cont
        r = x.rewards if t is None else x.rewards[:, t]
        w = r - self.reward_mean(s)
        rew = -0.5 * w.square() - _HALF_LOG_2PI
        counted = mask.clone()
        if t is None:
            counted[:, 0] = False
        elif t == 0:
            counted = torch.zeros_like(mask)
        return obs, torch.where(counted, rew, 0.0), cont

    def step_log_likelihood(self, x, s: Tensor, t: int | None = None) -> Tensor:
        """log p(o_t, r_t, c_t | s_t) per step, ``[*S, B, T]`` (with ``t``: that step, ``[*S, B]``, of
        checked Sequences: the particle filter's call at every step does not check them again)."""
        x = x.trimmed() if t is not None and isinstance(x, Sequences) else self.check_data(x)
        obs, rew, cont = self.step_log_likelihoods(x, s, t)
        return obs + rew + cont

    def log_likelihood(self, x, z: Tensor) -> Tensor:
        """Σ_t log p(o_t, r_t, c_t | s_t) over each sequence's steps, ``[*S, B]``."""
        return self.step_log_likelihood(self.check_data(x), z).sum(-1)

    def log_joint(self, x, z: Tensor) -> Tensor:
        x = self.check_data(x)
        return self.prior_for(x).log_prob(z) + self.log_likelihood(x, z)

    def prior_for(self, x) -> WorldPath:
        """p(s_{1:T} | a) over the batch's paths, a :class:`WorldPath`."""
        x = self.check_data(x, min_length=1)
        return WorldPath(self, x.mask, self._actions(x))

    @torch.no_grad()
    def initialize(self, x, method: str = "mean", generator: torch.Generator | None = None) -> None:
        """Starts the observation decoder's output at the data's mean: the bias of its last layer
        set to the mean observation over every observed step of ``x`` (frames: each channel's mean
        intensity), so that the decoder starts from the mean frame rather than from 0, and the
        rest of training goes into what changes. What ``[train] init = "mean"`` runs. Frames of a
        small object on a plain background (the pendulum's rod on white) are otherwise left at
        the background for hundreds of steps, and the posterior learns to carry nothing.

        Args:
            x: Episodes, as :meth:`check_data` takes them.
            method: ``"mean"``.
            generator: Unused (the initialization is deterministic).
        """
        if method != "mean":
            raise ValueError(f"WorldModel.initialize: method must be 'mean'; received {method!r}")
        if self.transition_kind == "linear":
            raise TypeError("WorldModel.initialize: the linear model's emission has no bias to start at the mean")
        x = self.check_data(x)
        mask = x.mask.reshape(*x.mask.shape, *(1,) * len(self.obs_shape))
        mean = (x.values * mask).sum((0, 1)) / x.mask.sum()  # [*obs_shape]
        last = self.observation.net[-1] if self.encoder_kind == "conv" else self.observation[-1]
        last.bias.copy_(mean.mean((-2, -1)) if self.encoder_kind == "conv" else mean)

    def guide(self, *args, **kwargs) -> WorldPosterior:
        """The posterior q(z_t | h_t, o_t): part of the model (:class:`WorldPosterior`)."""
        if args or kwargs:
            raise TypeError(f"WorldModel.guide() takes no options (the posterior is part of the model); received "
                            f"{args or kwargs}")  # fmt: skip
        return self.representation

    # Planning: filter and imagine.

    @torch.no_grad()
    def filter(self, x, *, sample: bool = True) -> WorldState:
        """The posterior state after each sequence's last observed step (no gradient): ``h [B, H]``
        and ``z [B, Z]``, a draw of q (or, with ``sample=False``, each step's mean: the Gaussian's
        loc, or the categorical's probabilities)."""
        x = self.check_data(x, min_length=1)
        q = self.representation(x)
        B, T = x.mask.shape
        s = q.initial.expand(B, self.state_dim)
        last = x.mask.sum(-1) - 1
        out = torch.empty(B, self.state_dim, dtype=s.dtype, device=s.device)
        for t in range(T):
            h, stats = q.step_parameters(t, s)
            z = self._draw(stats) if sample else self._mean(stats)
            s = torch.cat([h, z], -1)
            done = last == t
            out[done] = s[done]
        return WorldState(out[:, : self.deter_dim].clone(), out[:, self.deter_dim:].clone())

    def _mean(self, stats) -> Tensor:
        return stats[0] if self.latent == "gaussian" else stats[0].softmax(-1).flatten(-2)

    def _check_actions(self, actions, name: str = "actions") -> Tensor:
        ref = self._reference()
        actions = as_data(actions, name, ndim=3, dtype=ref.dtype, device=ref.device)
        if actions.shape[-1] != self.action_dim:
            raise ValueError(f"{name} must be [N, K, action_dim={self.action_dim}]; received {list(actions.shape)}")
        return actions

    @torch.no_grad()
    def imagine(self, state: WorldState, actions, *, sample: bool = True) -> Imagined:
        """Rolls the prior forward from ``state`` under ``actions [N, K, A]`` (``actions[:, 0]``
        applied from the state's step); see the class docstring. A state of batch 1 broadcasts
        over the N sequences; otherwise its batch must be N."""
        actions = self._check_actions(actions)
        N, K = actions.shape[:2]
        if len(state) not in (1, N):
            raise ValueError(f"state has batch {len(state)}; imagine needs 1 (broadcast) or N={N}, the action "
                             "sequences'")  # fmt: skip
        s = torch.cat([state.h, state.z], -1).to(actions.dtype).expand(N, self.state_dim)
        drive = self._action_drive(actions if self.use_actions and self.action_dim else None)
        states = []
        for k in range(K):
            h = self._deterministic(s, None if drive is None else drive[:, k])
            stats = self._prior_stats(h)
            s = torch.cat([h, self._draw(stats) if sample else self._mean(stats)], -1)
            states.append(s)
        path = torch.stack(states, 1)  # [N, K, D]
        rewards = self.reward_mean(path) if self.reward_head is not None else None
        continues = self.continuation_probability(path) if self.continuation_head is not None else None
        return Imagined(rewards, self.observation_mean(path), path[..., : self.deter_dim], path[..., self.deter_dim:],
                        continues)  # fmt: skip

    # Sampling, forecasting and prediction.

    @torch.no_grad()
    def sample(self, n: int, num_steps: int = 10, inputs=None) -> tuple[Tensor, Tensor]:
        """``n`` episodes under the actions ``inputs [n, T, action_dim]``: (observations
        ``[n, T, obs_dim]``, states ``[n, T, H + Z]``)."""
        n, T = check_positive_int(n, "n"), check_positive_int(num_steps, "num_steps")
        ref = self._reference()
        if self.action_dim:
            if inputs is None:
                raise ValueError(f"this model has action_dim={self.action_dim}: pass inputs [n, T, {self.action_dim}]")
            inputs = self._check_actions(inputs, "inputs")
        fake = Sequences(torch.zeros(n, T, *self.obs_shape, dtype=ref.dtype, device=ref.device), inputs=inputs,
                         rewards=torch.zeros(n, T, dtype=ref.dtype, device=ref.device),
                         continues=torch.ones(n, T, dtype=ref.dtype, device=ref.device))  # fmt: skip
        s = self.prior_for(fake).rsample()
        o = self.observation_mean(s)
        return o + torch.randn_like(o) * self.log_scale.exp(), s

    @torch.no_grad()
    def forecast(self, x, steps: int, *, level: float = 0.9, inputs=None, num_samples: int = 1000,
                 num_runs: int = 1):  # fmt: skip
        r"""p(o_{T+1:T+k} | o_{1:T}, a) by simulation, from each sequence's own end:

        .. math:: s_T \sim \textstyle\sum_p \bar w^p\, \delta_{s^p_T} \approx p(s_T \mid o_{1:T}, a), \qquad
                  s_{T+j} \sim p(s_{T+j} \mid s_{T+j-1}, a_{T+j-1}), \qquad
                  \mathbb{E}[o_{T+j}] \approx \textstyle\sum_p \bar w^p\, \mu(s^p_{T+j}).

        The filtering distribution is a particle filter's weighted particles at the last step (the
        posterior proposing, systematic resampling at ESS < P/2), each rolled forward by the prior
        under the future actions ``inputs [B, k, action_dim]``. The mean is the weighted average of
        the observation's mean (no observation noise), the variance adds σ², and the ``level``
        interval of each coordinate is the exact pair of quantiles of the weighted mixture of
        N(μ(s^p_{T+j}), σ²).

        Monte Carlo error (the deep Markov model's convention), with ``num_runs`` R ≥ 2: the whole
        computation is run as R independent filters and simulations of P = ``num_samples / R``
        particles each, side by side; the forecast pools them (each run's mixture weighted 1/R),
        and ``mean_stderr``, ``lower_stderr`` and ``upper_stderr`` are the spread of the runs' own
        figures over √R (the filter's error and the simulation's together). ``elbox forecast``
        runs 8. With R = 1 (the default) one filter of all the particles, and no error.

        Args:
            x: The sequences (ragged batches forecast each from its own end).
            steps: k, the steps ahead.
            level: The intervals' probability.
            inputs: ``[B, k, action_dim]``, the future steps' actions (models with actions).
            num_samples: The particles per sequence, over all runs.
            num_runs: Independent runs: 1, or at least 2 for the Monte Carlo errors.

        Returns:
            A :class:`~elbox.models.forecast.Forecast` with ``method="simulation"`` and
            ``num_samples`` the particles used (runs × particles per run).
        """
        from elbox.models.forecast import Forecast, check_level, check_steps, mixture_quantiles

        k, level = check_steps(steps), check_level(level)
        N = check_positive_int(num_samples, "num_samples")
        R = check_positive_int(num_runs, "num_runs")
        if self.encoder_kind == "conv":
            raise TypeError("forecast gives per-coordinate intervals of vector observations; for images use "
                            "imagine(filter(x), actions) for the predicted frames")  # fmt: skip
        x = self.check_data(x, min_length=1)
        B = len(x)
        future = self._future_actions(inputs, B, k)
        P = -(-N // R)  # particles per run
        # R independent filters side by side: the batch repeated, sequence b of run r at r B + b
        runs = x if R == 1 else x[torch.arange(B, device=x.mask.device).repeat(R)]
        s, log_w = self._filtered_particles(runs, P, "systematic")  # [P, R B, D], [P, R B]
        paths = self._roll(s, future.repeat(R, 1, 1) if future is not None else k)  # [P, R B, k, D]
        means = self.observation_mean(paths).view(P, R, B, k, self.obs_dim)
        w = log_w.softmax(0).view(P, R, B, 1, 1)  # within each run
        run_means = (w * means).sum(0)  # [R, B, k, O]
        mean = run_means.mean(0)
        sd = self.log_scale.exp()
        variance = (w * means.square()).sum(0).mean(0) - mean.square() + sd.square()
        tails = ((1 - level) / 2, (1 + level) / 2)

        def quantiles(weights: Tensor, locs: Tensor) -> list[Tensor]:  # of the mixtures over the last dimension
            return mixture_quantiles(weights, locs, sd[:, None].expand_as(locs), tails)

        locs = means.permute(1, 2, 3, 4, 0)  # [R, B, k, O, P]
        within = w.view(P, R, B, 1).permute(1, 2, 3, 0).unsqueeze(-2).expand_as(locs)  # [R, B, k, O, P]
        lower, upper = quantiles((within / R).permute(1, 2, 3, 0, 4).flatten(-2),
                                 locs.permute(1, 2, 3, 0, 4).flatten(-2))  # pooled: [B, k, O]  # fmt: skip
        if R == 1:
            return Forecast(mean, variance, lower, upper, level, method="simulation", num_samples=P)
        run_lower, run_upper = quantiles(within, locs)  # [R, B, k, O]
        return Forecast(mean, variance, lower, upper, level, method="simulation", num_samples=P * R,
                        mean_stderr=run_means.std(0) / math.sqrt(R), lower_stderr=run_lower.std(0) / math.sqrt(R),
                        upper_stderr=run_upper.std(0) / math.sqrt(R))  # fmt: skip

    def _future_actions(self, inputs, B: int, k: int) -> Tensor | None:
        if not self.action_dim:
            if inputs is not None:
                raise ValueError("inputs: this model has no actions (action_dim=0)")
            return None
        if inputs is None:
            raise ValueError(f"this model has action_dim={self.action_dim}: pass inputs, the future steps' actions "
                             f"[{B}, {k}, {self.action_dim}]")  # fmt: skip
        future = self._check_actions(inputs, "inputs")
        if tuple(future.shape[:2]) != (B, k):
            raise ValueError(f"inputs must have shape [{B}, {k}, {self.action_dim}] (sequences, steps ahead, "
                             f"actions); received {list(future.shape)}")  # fmt: skip
        return future if self.use_actions else None

    def _filtered_particles(self, x: Sequences, S: int, resample: str) -> tuple[Tensor, Tensor]:
        """A particle filter over each sequence (the posterior proposing): the states after each
        sequence's last step ``[S, B, D]`` and their normalized log-weights ``[S, B]``."""
        from elbox.distributions.smc import resample_indices

        q, p = self.representation(x), self.prior_for(x)
        B, T = x.mask.shape
        s = q.initial.expand(S, B, self.state_dim)
        log_w = s.new_full((S, B), -math.log(S))
        last = x.mask.sum(-1) - 1
        out_s, out_w = torch.empty_like(s), torch.empty_like(log_w)
        for t in range(T):
            keep = x.mask[:, t]
            new, log_q, h, z = q.step_rsample(t, s)
            alpha = p.step_log_prob(t, s, new) + self.step_log_likelihood(x, new, t) - log_q
            log_w = torch.where(keep, log_w + alpha, log_w)
            log_w = log_w - log_w.logsumexp(0)
            s = torch.where(keep[:, None], new, s)
            done = last == t
            out_s[:, done], out_w[:, done] = s[:, done], log_w[:, done]
            ess = 1.0 / (2 * log_w).exp().sum(0)
            due = keep & (t < last) & (ess < 0.5 * S) if resample != "never" else torch.zeros_like(keep)
            if bool(due.any()):
                idx = torch.where(due, resample_indices(log_w, resample),
                                  torch.arange(S, device=s.device)[:, None].expand(S, B))  # fmt: skip
                s = s.gather(0, idx.unsqueeze(-1).expand_as(s))
                log_w = torch.where(due, torch.full_like(log_w, -math.log(S)), log_w)
        return out_s, out_w

    def _roll(self, s: Tensor, future: Tensor | int) -> Tensor:
        """States ``[S, B, D]`` rolled forward by the prior under the future actions ``[B, k, A]``
        (an int k: k steps without actions), ``[S, B, k, D]``."""
        k = future if isinstance(future, int) else future.shape[1]
        drive = None if isinstance(future, int) else self._action_drive(future)
        states = []
        for j in range(k):
            h = self._deterministic(s, None if drive is None else drive[:, j])
            s = torch.cat([h, self._draw(self._prior_stats(h))], -1)
            states.append(s)
        return torch.stack(states, -2)

    @torch.no_grad()
    def predictive_log_likelihood(self, x, *, context: int, horizon: int, num_samples: int = 100,
                                  method: str = "smc", num_runs: int = 1) -> dict:  # fmt: skip
        r"""The j-step-ahead predictive log-likelihood for j = 1..k,

        .. math:: \log p(o_{c+j} \mid o_{1:c}, a_{1:c+j}) \approx
                  \log \sum_s \bar w^s\, p(o_{c+j} \mid s^s_{c+j}),

        with ``num_samples`` particles filtered over the first c = ``context`` observations (the
        posterior proposing; ``method="smc"`` resamples when the ESS falls below S/2, ``"is"``
        never: importance sampling of whole paths) and each rolled forward by the prior under the
        logged actions; and the squared error of the predicted mean Σ_s w̄^s E[o_{c+j} | s^s].

        Every sequence must have at least c + k steps. Returns a dict: ``log_likelihood [B, k]``
        (averaged over ``num_runs`` independent runs), ``mc_stderr [B, k]`` (the standard error
        over those runs; NaN for one run), ``squared_error [B, k]`` (summed over coordinates), and
        per horizon ``mean``/``stderr`` over sequences (``"stderr"``: the spread over sequences).
        """
        if method not in ("is", "smc"):
            raise ValueError(f"method must be 'is' or 'smc'; received {method!r}")
        x = self.check_data(x)
        c, k = check_positive_int(context, "context"), check_positive_int(horizon, "horizon")
        S, R = check_positive_int(num_samples, "num_samples"), check_positive_int(num_runs, "num_runs")
        short = x.mask.sum(-1) < c + k
        if bool(short.any()):
            b = int(short.nonzero()[0])
            raise ValueError(f"x: sequence {b} has {int(x.mask[b].sum())} steps; predictive_log_likelihood needs "
                             f"context + horizon = {c + k}")  # fmt: skip
        head = _prefix(x, c)
        target = x.values[:, c : c + k]  # [B, k, *obs_shape]
        future = None if not (self.use_actions and self.action_dim) else x.inputs[:, c : c + k]
        logs, errors = [], []
        for _ in range(R):
            s, log_w = self._filtered_particles(head, S, "never" if method == "is" else "systematic")
            paths = self._roll(s, future if future is not None else k)  # [S, B, k, D]
            log_f = self._observation_log_prob(target, paths)  # [S, B, k]
            logs.append((log_w.unsqueeze(-1) + log_f).logsumexp(0))
            weights = log_w.softmax(0).view(*log_w.shape, 1, *(1,) * len(self.obs_shape))
            mean = (weights * self.observation_mean(paths)).sum(0)
            errors.append((mean - target).square().flatten(-len(self.obs_shape)).sum(-1))
        log_lik = torch.stack(logs)  # [R, B, k]
        mc = log_lik.std(0) / math.sqrt(R) if R > 1 else torch.full_like(log_lik[0], math.nan)
        per_seq = log_lik.mean(0)
        error = torch.stack(errors).mean(0)
        B = per_seq.shape[0]
        spread = per_seq.std(0) / math.sqrt(B) if B > 1 else torch.full_like(per_seq[0], math.nan)
        return {"log_likelihood": per_seq, "mc_stderr": mc, "squared_error": error, "mean": per_seq.mean(0),
                "stderr": spread, "mse": error.mean(0),
                "mse_stderr": error.std(0) / math.sqrt(B) if B > 1 else torch.full_like(per_seq[0], math.nan),
                "method": method, "num_samples": S, "num_runs": R}  # fmt: skip

    # The exact oracle.

    def to_lgssm(self):
        """The linear configuration as a :class:`~elbox.models.LinearGaussianSSM` with the actions
        as inputs: z_1 ~ N(A z_0, diag σ²), z_t = A z_{t-1} + B a_{t-1} + w_t, o_t = C z_t + v_t.
        Its Kalman filter is this model's exact evidence p(o | a), its RTS smoother the exact
        posterior.

        Raises:
            TypeError: For an RSSM transition, a reward head or a continuation head (the LGSSM has
                Gaussian observations only).
        """
        from elbox.models.dmm import linear_gaussian_ssm

        if self.transition_kind != "linear" or self.has_reward or self.has_continuation:
            raise TypeError(f"to_lgssm needs transition='linear', reward=False and continuation=False; this model has "
                            f"transition={self.transition_kind!r}, reward={self.has_reward}, continuation="
                            f"{self.has_continuation}")  # fmt: skip
        dtype = self._reference().dtype
        U = self.action_dim if self.use_actions else 0
        with torch.no_grad():
            return linear_gaussian_ssm(self.transition_matrix.weight, self.observation.weight,
                                       self.control.weight if U else None, self.z_0, F.softplus(self.raw_scale),
                                       self.log_scale.exp(), dtype)  # fmt: skip

    def extra_repr(self) -> str:
        return (f"obs_dim={self.obs_dim}, action_dim={self.action_dim}, latent={self.latent!r}, "
                f"latent_dim={self.latent_dim}, deter_dim={self.deter_dim}, transition={self.transition_kind!r}, "
                f"reward={self.has_reward}, continuation={self.has_continuation}, use_actions={self.use_actions}, "
                f"encoder={self.encoder_kind!r}")  # fmt: skip


def _prefix(x: Sequences, c: int) -> Sequences:
    """The first ``c`` steps of every sequence (each has at least c)."""
    out = Sequences.__new__(Sequences)
    out.values, out.mask = x.values[:, :c], x.mask[:, :c]
    out.inputs = None if x.inputs is None else x.inputs[:, :c]
    out.rewards = None if x.rewards is None else x.rewards[:, :c]
    out.continues = None if x.continues is None else x.continues[:, :c]
    return out
