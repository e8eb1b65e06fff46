r"""Annealed importance sampling from the prior to the posterior, and its reverse (BDMC).

The path is geometric: f_β(z) = p(z) p_θ(x | z)^β for 0 = β_0 < β_1 < … < β_T = 1, so f_0 is
the prior (normalized) and f_1 the joint, whose normalizer is p_θ(x). A chain starts from the
prior; at each β_t it gains the log-weight (β_t − β_{t−1}) log p_θ(x | z) and then moves by a
Markov kernel that leaves f_{β_t}/Z_t invariant. The average of the weights over chains is an
unbiased estimate of p_θ(x), so its log is a stochastic lower bound (Neal, 2001).

Run backwards from an exact posterior sample, which data simulated from the model provide (the z
that drew x), the same path gives an unbiased estimate of 1/p_θ(x), and so a stochastic upper
bound: bidirectional Monte Carlo (Grosse, Ghahramani & Adams, 2015). The two bracket log p(x)
and their distance says how far the schedule is from exact.

Kernels, batched over chains and data points:

- continuous latents: Hamiltonian Monte Carlo (``"hmc"``, ``leapfrog_steps`` per move) or
  MALA (``"mala"``: one leapfrog step, which is MALA with its Metropolis correction), in the
  unconstrained space of the prior's support (``torch.distributions.transform_to``) with the
  log-Jacobian added. Each data point has its own step size, adapted after every move towards
  the kernel's target acceptance rate (0.65 for HMC, 0.574 for MALA), as Wu et al. (2017) do
  for decoder-based models.
- discrete latents (a mixture's component, an HMM's path): a systematic-scan Gibbs sweep that
  draws each site exactly from its tempered conditional, enumerating its K values.

References:
    Annealed Importance Sampling (Neal, 2001), https://arxiv.org/abs/physics/9803008
    Sandwiching the marginal likelihood using bidirectional Monte Carlo (Grosse et al., 2015),
    https://arxiv.org/abs/1511.02543
    On the Quantitative Analysis of Decoder-Based Generative Models (Wu et al., 2017),
    https://arxiv.org/abs/1611.04273
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.distributions import constraints, transform_to

from elbox._validation import check_model, check_number, check_positive_int, describe

__all__ = ["AIS", "annealing_schedule", "check_schedule"]

_KERNELS = {"hmc": 0.65, "mala": 0.574}


def annealing_schedule(num_steps: int, kind: str = "sigmoid", *, dtype=torch.float64) -> Tensor:
    """β_0 = 0 < … < β_T = 1 with ``num_steps`` = T moves.

    ``"sigmoid"`` (Grosse et al. 2015) spaces the β densely at both ends, where the target
    changes fastest relative to the step; ``"linear"`` spaces them evenly; ``"geometric"``
    evenly in log β from 10⁻⁴ (after β_0 = 0).
    """
    T = check_positive_int(num_steps, "num_steps")
    if kind == "linear":
        return torch.linspace(0, 1, T + 1, dtype=dtype)
    if kind == "geometric":
        inner = torch.logspace(-4, 0, T, dtype=dtype)
        return torch.cat([torch.zeros(1, dtype=dtype), inner])
    if kind == "sigmoid":
        s = torch.sigmoid(torch.linspace(-4, 4, T + 1, dtype=dtype))
        return (s - s[0]) / (s[-1] - s[0])
    raise ValueError(f"kind must be 'sigmoid', 'linear' or 'geometric'; received {kind!r}")


def check_schedule(schedule) -> Tensor:
    """The β schedule as a float64 tensor: an int T (a sigmoid schedule of T moves) or a
    sequence rising strictly from 0 to 1."""
    if isinstance(schedule, int) and not isinstance(schedule, bool):
        return annealing_schedule(check_positive_int(schedule, "schedule"))
    try:
        betas = torch.as_tensor(schedule, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(
            f"schedule must be a number of steps or a sequence of β from 0 to 1; received {describe(schedule)}"
        ) from None
    if betas.dim() != 1 or betas.numel() < 2:
        raise ValueError(f"schedule must be a 1-d sequence of at least two β; received shape {list(betas.shape)}")
    if not torch.isfinite(betas).all() or betas[0] != 0 or betas[-1] != 1:
        raise ValueError(
            f"schedule must start at β = 0 and end at β = 1; received {float(betas[0]):g} … {float(betas[-1]):g}"
        )
    steps = betas.diff()
    if (steps <= 0).any():
        at = int((steps <= 0).nonzero()[0])
        raise ValueError(
            f"schedule must increase strictly from 0 to 1; received β[{at}] = {float(betas[at]):g} followed by "
            f"β[{at + 1}] = {float(betas[at + 1]):g}"
        )
    return betas


@dataclass
class _Tempered:
    """log f_β(z) = log p(z) + β log p(x | z) for one batch, on the chains ``[C, B, *event]``."""

    model: object
    x: object
    prior: object

    def terms(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """(log p(z), log p(x | z)), each ``[C, B]``."""
        return self.prior.log_prob(z), self.model.log_likelihood(self.x, z)


class AIS:
    """Annealed importance sampling over one batch of data: see the module.

    Args:
        model: A :class:`~elbox.models.LatentModel`.
        schedule: T (a sigmoid schedule of T moves) or the β's, rising strictly from 0 to 1.
        kernel: ``"hmc"`` or ``"mala"`` for continuous latents (discrete ones use Gibbs).
        leapfrog_steps: Leapfrog steps per HMC move.
        step_size: The initial leapfrog step size.
    """

    def __init__(self, model, *, schedule=200, kernel: str = "hmc", leapfrog_steps: int = 10, step_size: float = 0.1):
        check_model(model)
        if kernel not in _KERNELS:
            raise ValueError(f"kernel must be one of {sorted(_KERNELS)}; received {kernel!r}")
        step_size = check_number(step_size, "step_size", only_type=True)
        if not (step_size > 0 and math.isfinite(step_size)):
            raise ValueError(f"step_size must be a positive number; received {describe(step_size)}")
        self.model = model
        self.betas = check_schedule(schedule)
        self.kernel = kernel
        self.leapfrog_steps = 1 if kernel == "mala" else check_positive_int(leapfrog_steps, "leapfrog_steps")
        self.step_size = float(step_size)
        self.target_accept = _KERNELS[kernel]

    def forward(self, x, num_chains: int) -> Tensor:
        """Chains from the prior to the posterior: log-weights ``[C, B]``, whose log-mean-exp
        over C estimates log p(x) from below."""
        C = check_positive_int(num_chains, "num_chains")
        target = _Tempered(self.model, x, self.model.prior_for(x))
        B = len(x)
        z = target.prior.sample((C,) if tuple(target.prior.batch_shape) == (B,) else (C, B))
        return self._run(target, z, self.betas)

    def reverse(self, x, z: Tensor) -> Tensor:
        """Chains from exact posterior samples ``z`` (``[C, B, *event]``) back to the prior:
        log-weights ``[C, B]`` of an unbiased estimate of 1/p(x), so that minus their
        log-mean-exp over C bounds log p(x) from above in expectation."""
        target = _Tempered(self.model, x, self.model.prior_for(x))
        return self._run(target, z, self.betas.flip(0))

    def _run(self, target: _Tempered, z: Tensor, betas: Tensor) -> Tensor:
        betas = betas.tolist()
        discrete = target.prior.support.is_discrete
        state = _Gibbs(target, z) if discrete else _HMC(target, z, self)
        log_w = torch.zeros(z.shape[:2], dtype=state.log_lik.dtype, device=z.device)
        for t in range(1, len(betas)):
            log_w += (betas[t] - betas[t - 1]) * state.log_lik
            if t < len(betas) - 1:  # the last move would not change the weights
                state.move(betas[t])
        return log_w


class _Gibbs:
    """Systematic-scan Gibbs over the sites of a discrete latent, each drawn from its tempered
    conditional by enumerating its values."""

    def __init__(self, target: _Tempered, z: Tensor):
        support = target.prior.support
        while isinstance(support, constraints.independent):
            support = support.base_constraint
        upper = getattr(support, "upper_bound", None)
        if upper is None:
            raise ValueError(f"AIS needs a finite discrete support to enumerate; the prior's is {support}")
        self.lower = int(getattr(support, "lower_bound", 0))
        self.target, self.num_values = target, int(upper) + 1 - self.lower
        self.z = z.clone()
        self.log_prior, self.log_lik = target.terms(self.z)

    def move(self, beta: float) -> None:
        C, B = self.z.shape[:2]
        sites = self.z.shape[2:].numel()
        K = self.num_values
        values = torch.arange(self.lower, self.lower + K, device=self.z.device)
        for site in range(sites):
            flat = self.z.reshape(C, B, sites).unsqueeze(0).repeat(K, 1, 1, 1)  # [K, C, B, sites]
            flat[..., site] = values.view(K, 1, 1).to(flat.dtype)
            candidates = flat.reshape(K * C, B, *self.z.shape[2:])
            log_prior, log_lik = self.target.terms(candidates)
            log_f = (log_prior + beta * log_lik).reshape(K, C, B)
            pick = torch.distributions.Categorical(logits=log_f.movedim(0, -1)).sample()  # [C, B]
            self.z = flat.gather(0, pick.view(1, C, B, 1).expand(1, C, B, sites))[0].reshape(self.z.shape)
            self.log_prior = log_prior.reshape(K, C, B).gather(0, pick.unsqueeze(0))[0]
            self.log_lik = log_lik.reshape(K, C, B).gather(0, pick.unsqueeze(0))[0]


class _HMC:
    """HMC (or MALA) moves in the unconstrained space of the prior's support, one step size per
    data point, adapted towards the target acceptance rate."""

    def __init__(self, target: _Tempered, z: Tensor, ais: AIS):
        self.target, self.leapfrog_steps, self.target_accept = target, ais.leapfrog_steps, ais.target_accept
        self.transform = transform_to(target.prior.support)
        self.u = self.transform.inv(z).detach()
        self.event_dims = self.u.dim() - 2
        B = self.u.shape[1]
        self.step = torch.full((B,), ais.step_size, dtype=self.u.dtype, device=self.u.device)
        self.beta = 0.0
        self.log_prior, self.log_lik, self.grad = self._evaluate(self.u, 0.0)

    def _per_chain(self, t: Tensor) -> Tensor:
        return t.reshape(*t.shape[:2], -1).sum(-1) if t.dim() > 2 else t

    def _evaluate(self, u: Tensor, beta: float) -> tuple[Tensor, Tensor, Tensor]:
        """log p(z) + log|J| and log p(x | z) at u ``[C, B]``, and the gradient of log f_β."""
        with torch.enable_grad():
            u = u.detach().requires_grad_(True)
            z = self.transform(u)
            log_prior, log_lik = self.target.terms(z)
            log_prior = log_prior + self._per_chain(self.transform.log_abs_det_jacobian(u, z))
            (grad,) = torch.autograd.grad((log_prior + beta * log_lik).sum(), u)
        return log_prior.detach(), log_lik.detach(), grad

    def _grad_at(self, beta: float) -> Tensor:
        if beta != self.beta:  # the gradient of log f_β is linear in β: recompute at the new β
            self.log_prior, self.log_lik, self.grad = self._evaluate(self.u, beta)
            self.beta = beta
        return self.grad

    def move(self, beta: float) -> None:
        grad = self._grad_at(beta)
        eps = self.step.view(1, -1, *([1] * self.event_dims))
        p = torch.randn_like(self.u)
        kinetic = 0.5 * self._per_chain(p.square())
        u, g = self.u, grad
        p_new = p + 0.5 * eps * g
        for i in range(self.leapfrog_steps):
            u = u + eps * p_new
            log_prior, log_lik, g = self._evaluate(u, beta)
            if i < self.leapfrog_steps - 1:
                p_new = p_new + eps * g
        p_new = p_new + 0.5 * eps * g
        current = self.log_prior + beta * self.log_lik - kinetic
        proposed = log_prior + beta * log_lik - 0.5 * self._per_chain(p_new.square())
        log_accept = (proposed - current).nan_to_num(nan=-math.inf)  # a diverged trajectory is refused
        accept = torch.rand_like(log_accept).log() < log_accept  # [C, B]
        keep = accept.view(*accept.shape, *([1] * self.event_dims))
        self.u = torch.where(keep, u, self.u)
        self.log_prior = torch.where(accept, log_prior, self.log_prior)
        self.log_lik = torch.where(accept, log_lik, self.log_lik)
        self.grad = torch.where(keep, g, self.grad)
        rate = accept.to(self.u.dtype).mean(0)  # [B]
        self.step = self.step * torch.where(rate > self.target_accept, 1.02, 0.98)
