r"""A distribution over the latent paths of a nonlinear Gaussian Markov chain: each step a
diagonal normal whose mean and scale are any function of the previous state and of per-step
features (a deep Markov model's transition, or a structured guide's combiner), optionally
followed by a flow.

Given a path, every step's conditional is known, so :meth:`MarkovPath.log_prob` and
:meth:`MarkovPath.conditionals` are one batched pass over all steps; a draw is sequential (one
step at a time, vectorized over particles and sequences). Steps past a sequence's end (its mask
False) are N(0, I), independent of everything, under every MarkovPath alike: they cancel from
every log-ratio of two paths distributions on the same batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints

__all__ = ["MarkovPath", "StepFunction"]

#: ``step(z_prev, context) -> (loc, scale)``: z_prev ``[*, B, D]`` (or ``[*, B, T, D]`` for every
#: step at once), context ``[B, C]`` (or ``[B, T, C]``) or None; loc and scale of z_prev's shape.
StepFunction = Callable[[Tensor, Tensor | None], tuple[Tensor, Tensor]]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _normal_log_prob(z: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
    """Σ_d log N(z_d; loc_d, scale_d²) over the last dimension."""
    return (-0.5 * ((z - loc) / scale).square() - scale.log() - _HALF_LOG_2PI).sum(-1)


class MarkovPath(Distribution):
    r"""Paths z_{1:T} of a Markov chain with diagonal-normal steps given by a function:

    .. math:: q(z_{1:T}) = \prod_{t=1}^{T} \mathcal{N}\big(z_t;\ \mu(z_{t-1}, c_t),
              \operatorname{diag}\sigma(z_{t-1}, c_t)^2\big), \qquad z_0 \text{ given},

    and, with a ``flow`` f, z_t = f(y_t) with y_t drawn from that normal (an inverse
    autoregressive flow per step, Pyro's DMM with IAFs). Steps where ``mask`` is False are
    N(0, I). Batch shape ``[B]``, event shape ``[T, D]``.

    Args:
        step: The conditional's ``(loc, scale)`` (:data:`StepFunction`); it must broadcast over
            leading particle dimensions and take all steps at once (``[*, B, T, D]`` with context
            ``[B, T, C]``) as well as one (``[*, B, D]`` with ``[B, C]``).
        initial: z_0, ``[D]`` or ``[B, D]``.
        mask: ``[B, T]`` booleans, a prefix mask.
        context: ``[B, T, C]`` per-step features (an RNN's outputs, inputs u_t), or None.
        flow: A zuko transform (towards the base; drawn in one pass) applied to each observed
            step, or None.
        ignores_previous: True where ``step`` does not read z_{t-1} (a mean-field guide): the
            draw is then one batched pass too.
        scan: Optionally, the whole recursion at once, ``scan(z_0 [*S, B, D], noise [*S, B, T, D])
            -> (loc, scale)`` for every step (unmasked), equal to iterating ``step`` with
            z_t = loc_t + scale_t · noise_t; a guide gives one with a hand-written backward pass.
    """

    arg_constraints: dict = {}
    has_rsample = True
    support = constraints.independent(constraints.real, 2)

    def __init__(self, step: StepFunction, initial: Tensor, mask: Tensor, context: Tensor | None = None, *,
                 flow=None, ignores_previous: bool = False, scan=None):  # fmt: skip
        B, T = mask.shape
        D = initial.shape[-1]
        self.step, self.initial, self.mask, self.context = step, initial, mask, context
        self.flow, self.ignores_previous, self.scan = flow, ignores_previous, scan
        self.latent_dim = D
        super().__init__(torch.Size([B]), torch.Size([T, D]), validate_args=False)

    @property
    def num_steps(self) -> int:
        return self.mask.shape[1]

    def _context(self, t: int) -> Tensor | None:
        return None if self.context is None else self.context[:, t]

    def _start(self, sample_shape: torch.Size) -> Tensor:
        """z_0 for a draw of ``sample_shape``, ``[*S, B, D]``."""
        B, D = self.mask.shape[0], self.latent_dim
        return self.initial.expand(*sample_shape, B, D)

    # One step: what the particle filter and the sequential draw call.

    def step_parameters(self, t: int, z_prev: Tensor) -> tuple[Tensor, Tensor]:
        """The loc and scale of z_t given z_{t-1} ``[*S, B, D]``, with N(0, I) past each end."""
        loc, scale = self.step(z_prev, self._context(t))
        keep = self.mask[:, t, None]  # [B, 1]
        return torch.where(keep, loc, 0.0), torch.where(keep, scale, 1.0)

    def step_rsample(self, t: int, z_prev: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """z_t drawn given z_{t-1} ``[*S, B, D]``, with log q(z_t | z_{t-1}) ``[*S, B]`` and the base
        normal's loc and scale."""
        loc, scale = self.step_parameters(t, z_prev)
        y = loc + scale * torch.randn_like(loc)
        log_q = _normal_log_prob(y, loc, scale)
        if self.flow is None:
            return y, log_q, loc, scale
        # z = f⁻¹(y) in one pass: log q(z) = log N(y) − log|det ∂z/∂y|
        z, ladj = self.flow.inv.call_and_ladj(y)
        keep = self.mask[:, t, None]
        return torch.where(keep, z, y), torch.where(keep[:, 0], log_q - ladj, log_q), loc, scale

    def step_log_prob(self, t: int, z_prev: Tensor, z: Tensor) -> Tensor:
        """log q(z_t | z_{t-1}), ``[*S, B]``."""
        loc, scale = self.step_parameters(t, z_prev)
        if self.flow is None:
            return _normal_log_prob(z, loc, scale)
        y, ladj = self.flow.call_and_ladj(z)
        keep = self.mask[:, t]
        return torch.where(keep, _normal_log_prob(y, loc, scale) + ladj, _normal_log_prob(z, loc, scale))

    # Every step at once, given a path.

    def previous(self, z: Tensor) -> Tensor:
        """z_{t-1} for each step t of paths ``[*S, B, T, D]``: z_0, z_1, …, z_{T-1}."""
        start = self.initial.expand(*z.shape[:-2], self.latent_dim).unsqueeze(-2)  # [*S, B, 1, D]
        return torch.cat([start, z[..., :-1, :]], -2)

    def conditionals(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """The loc and scale of every step given the path's previous states, ``[*S, B, T, D]``
        (0 and 1 past each end)."""
        loc, scale = self.step(self.previous(z), self.context)
        keep = self.mask.unsqueeze(-1)  # [B, T, 1]
        return torch.where(keep, loc, 0.0), torch.where(keep, scale, 1.0)

    def step_log_probs(self, z: Tensor) -> Tensor:
        """log q(z_t | z_{t-1}) for every step of paths ``[*S, B, T, D]``, ``[*S, B, T]``: one pass."""
        loc, scale = self.conditionals(z)
        if self.flow is None:
            return _normal_log_prob(z, loc, scale)
        y, ladj = self.flow.call_and_ladj(z)  # the slow direction of an IAF: D passes
        return torch.where(self.mask, _normal_log_prob(y, loc, scale) + ladj, _normal_log_prob(z, loc, scale))

    def log_prob(self, z: Tensor) -> Tensor:
        """log q(z_{1:T}), ``[*S, B]``."""
        return self.step_log_probs(z).sum(-1)

    # Draws.

    def rsample_steps(self, sample_shape=()) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """A draw of paths and, per step, log q(z_t | z_{t-1}) and the base normal's loc and scale:
        ``([*S, B, T, D], [*S, B, T], [*S, B, T, D], [*S, B, T, D])``. Sequential, one step at a
        time (one batched pass where the steps ignore z_{t-1})."""
        sample_shape = torch.Size(sample_shape)
        if self.ignores_previous and self.flow is None:
            start = self._start(sample_shape).unsqueeze(-2).expand(*sample_shape, *self.mask.shape, self.latent_dim)
            loc, scale = self.step(start, self.context)
            keep = self.mask.unsqueeze(-1)
            loc, scale = torch.where(keep, loc, 0.0), torch.where(keep, scale, 1.0)
            z = loc + scale * torch.randn_like(loc)
            return z, _normal_log_prob(z, loc, scale), loc, scale
        z_prev = self._start(sample_shape)
        if self.flow is not None:
            zs, log_qs, locs, scales = [], [], [], []
            for t in range(self.num_steps):
                z_prev, log_q, loc, scale = self.step_rsample(t, z_prev)
                zs.append(z_prev)
                log_qs.append(log_q)
                locs.append(loc)
                scales.append(scale)
            return torch.stack(zs, -2), torch.stack(log_qs, -1), torch.stack(locs, -2), torch.stack(scales, -2)
        if self.scan is not None:  # the recursion by the guide's own scan: the same numbers, a faster gradient
            # per step, as drawn below
            noise = torch.stack([torch.randn_like(z_prev) for _ in range(self.num_steps)], -2)
            keep = self.mask.unsqueeze(-1)
            loc, scale = self.scan(z_prev, noise)
            loc, scale = torch.where(keep, loc, 0.0), torch.where(keep, scale, 1.0)
            z = loc + scale * noise
            return z, _normal_log_prob(z, loc, scale), loc, scale
        # the recursion alone in the loop; the masks and densities after it, over every step at once
        contexts = [None] * self.num_steps if self.context is None else self.context.unbind(1)  # [B, C] each
        locs, scales, noises = [], [], []
        for t in range(self.num_steps):
            loc, scale = self.step(z_prev, contexts[t])
            noise = torch.randn_like(loc)
            z_prev = loc + scale * noise
            locs.append(loc)
            scales.append(scale)
            noises.append(noise)
        keep = self.mask.unsqueeze(-1)  # [B, T, 1]
        loc = torch.where(keep, torch.stack(locs, -2), 0.0)  # [*S, B, T, D]
        scale = torch.where(keep, torch.stack(scales, -2), 1.0)
        z = loc + scale * torch.stack(noises, -2)  # past each end: the N(0, I) draw itself
        return z, _normal_log_prob(z, loc, scale), loc, scale

    def rsample_and_log_prob(self, sample_shape=()) -> tuple[Tensor, Tensor]:
        """Paths ``[*S, B, T, D]`` and their log-density ``[*S, B]``, from one sequential pass."""
        z, log_q, _, _ = self.rsample_steps(sample_shape)
        return z, log_q.sum(-1)

    def rsample(self, sample_shape=()) -> Tensor:
        return self.rsample_steps(sample_shape)[0]

    def expand(self, batch_shape, _instance=None):
        if tuple(batch_shape) != tuple(self.batch_shape):
            raise NotImplementedError("a MarkovPath's batch is its sequences; it does not expand")
        return self

    def __repr__(self) -> str:
        flow = ", flow" if self.flow is not None else ""
        return f"MarkovPath(batch {list(self.batch_shape)}, event {list(self.event_shape)}{flow})"
