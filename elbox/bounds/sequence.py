r"""Bounds over the latent paths of sequence models with nonlinear Markov latents (deep Markov
models): the ELBO with its KL per time step, and the particle filter's FIVO bound, of which IWAE
over whole paths is the case without resampling."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from elbox._validation import check_positive_int
from elbox.distributions.markov import MarkovChain
from elbox.distributions.markov_path import MarkovPath
from elbox.distributions.smc import ParticleFilter, particle_filter

__all__ = ["StepTerms", "chain_steps", "elbo_steps", "fivo", "path_steps", "path_terms", "smc"]


class StepTerms(NamedTuple):
    """The ELBO per time step, each ``[B, T]`` (zero past each end), averaged over particles:
    ``value`` = ``reconstruction`` − ``kl``, E_q[log p(x_t | z_t)] and the step's KL term;
    ``kl_method`` says whether the KL was analytic (given the same z_{t-1}) or sampled."""

    value: Tensor
    reconstruction: Tensor
    kl: Tensor
    kl_method: str


def _normal_kl(q_loc: Tensor, q_scale: Tensor, p_loc: Tensor, p_scale: Tensor) -> Tensor:
    """Σ_d KL(N(q_loc, q_scale²) ‖ N(p_loc, p_scale²)) over the last dimension."""
    ratio = (q_scale / p_scale).square()
    return 0.5 * (ratio + ((q_loc - p_loc) / p_scale).square() - 1 - ratio.log()).sum(-1)


def path_steps(model, x, q: MarkovPath, p: MarkovPath, num_samples: int, kl: str = "analytic") -> StepTerms:
    """:class:`StepTerms` from ``num_samples`` paths drawn from q (one sequential pass; the prior's
    conditionals and the emissions at every step in one batched pass each). A path distribution
    with its own per-step terms (a world model's, whose steps share a deterministic state) gives them."""
    if hasattr(q, "path_steps"):
        return q.path_steps(model, x, p, num_samples, kl)
    z, log_q, q_loc, q_scale = q.rsample_steps((num_samples,))  # [S, B, T, D], [S, B, T], …
    reconstruction = model.step_log_likelihood(x, z)  # [S, B, T]
    p_loc, p_scale = p.conditionals(z)
    if kl == "analytic" and q.flow is None:
        # KL(q(z_t | z_{t-1}, x) ‖ p(z_t | z_{t-1})) at the drawn z_{t-1}: zero past each end
        kl_steps, method = _normal_kl(q_loc, q_scale, p_loc, p_scale), "analytic"
    else:
        log_p = torch.distributions.Normal(p_loc, p_scale, validate_args=False).log_prob(z).sum(-1)
        kl_steps, method = log_q - log_p, "mc"
    kl_steps = torch.where(q.mask, kl_steps, 0.0)
    reconstruction, kl_steps = reconstruction.mean(0), kl_steps.mean(0)
    return StepTerms(reconstruction - kl_steps, reconstruction, kl_steps, method)


def path_terms(model, x, q, p: MarkovPath, num_samples: int, kl: str):
    """The ELBO's :class:`~elbox.bounds.Terms` over paths: :func:`path_steps` summed over time
    (what :func:`elbox.elbo` returns for a model whose prior is a MarkovPath)."""
    from elbox.bounds.elbo import Terms

    _check_paths(q, p)
    steps = path_steps(model, x, q, p, num_samples, kl)
    return Terms(value=steps.value.sum(-1), reconstruction=steps.reconstruction.sum(-1), kl=steps.kl.sum(-1),
                 kl_method=steps.kl_method)  # fmt: skip


def elbo_steps(model, guide, x, *, num_samples: int = 1, kl: str = "analytic") -> StepTerms:
    r"""The ELBO of a sequence model split over time steps, per sequence:

    .. math:: \mathrm{ELBO}_t = \mathbb{E}_q\big[\log p(x_t \mid z_t)\big]
              - \mathbb{E}_q\big[\mathrm{KL}\big(q(z_t \mid z_{t-1}, x) \,\|\, p(z_t \mid z_{t-1})\big)\big],
              \qquad \mathrm{ELBO} = \sum_t \mathrm{ELBO}_t,

    the KL analytic given the drawn z_{t-1} where both steps are diagonal normals (``kl="analytic"``;
    a Rao–Blackwellized estimate of the path KL), sampled otherwise (a flow in q, or ``kl="mc"``).

    Args:
        model: A sequence model whose ``prior_for(x)`` is a :class:`~elbox.distributions.MarkovPath`
            (a :class:`~elbox.models.DeepMarkovModel`).
        guide: Its guide (``guide(x)`` a MarkovPath, e.g. :class:`~elbox.guides.StructuredGuide`).
        x: Sequences.
        num_samples: Paths per sequence.
        kl: ``"analytic"`` or ``"mc"``.

    Returns:
        :class:`StepTerms`, each ``[B, T]``.
    """
    from elbox.bounds._common import prepare

    x, q, p = prepare(model, guide, x)
    num_samples = check_positive_int(num_samples, "num_samples")
    if _is_chain(q, p):
        return chain_steps(model, x, q, p)
    _check_paths(q, p)
    return path_steps(model, x, q, p, num_samples, kl)


def chain_steps(model, x, q: MarkovChain, p: MarkovChain) -> StepTerms:
    r""":class:`StepTerms` of a discrete latent path, exact: from q's marginals m_t and pairwise
    marginals m_{t-1,t}, with ℓ_t(k) = log p(x_t | z_t = k) (``model.emission_log_prob``),

    .. math:: \mathrm{ELBO}_t = \sum_k m_t(k)\, \ell_t(k) - \sum_{i,j} m_{t-1,t}(i, j)
              \log \frac{q(z_t = j \mid z_{t-1} = i)}{p(z_t = j \mid z_{t-1} = i)}

    (the first step's KL that of q(z_1) to p(z_1)); ``kl_method`` is ``"enumerate"``."""
    floor = torch.finfo(q.initial_logits.dtype).min  # 0 · log 0 counts as 0
    marginals = q.marginals()  # [B, T, K]
    reconstruction = (marginals * model.emission_log_prob(x)).sum(-1)  # [B, T]
    first = (q.initial_logits.exp() * (q.initial_logits - p.initial_logits).clamp_min(floor)).sum(-1)  # [B]
    if q.num_steps > 1:
        log_ratio = (q.transition_logits - p.transition_logits).clamp_min(floor)  # [B, T-1, K, K]
        later = (q.pairwise_marginals() * log_ratio).sum((-2, -1))  # [B, T-1]
        kl = torch.cat([first.unsqueeze(-1), later], -1)
    else:
        kl = first.unsqueeze(-1)
    kl = torch.where(x.mask, kl, 0.0)
    return StepTerms(reconstruction - kl, reconstruction, kl, "enumerate")


def _is_chain(q, p) -> bool:
    """Whether q and p are forward chains over discrete paths (a DMM with a categorical latent)."""
    return isinstance(q, MarkovChain) and isinstance(p, MarkovChain) and not (q.reverse or p.reverse)


def _check_paths(q, p) -> None:
    if not isinstance(p, MarkovPath) or not isinstance(q, MarkovPath):
        raise TypeError(f"the bounds over paths need a MarkovPath prior and guide (or forward MarkovChains over "
                        f"discrete states); received p = {type(p).__name__}, q = {type(q).__name__}")  # fmt: skip


def smc(model, guide, x, *, num_samples: int, resample: str = "systematic", ess_threshold: float = 0.5,
        resampling_gradient: bool = False) -> ParticleFilter:  # fmt: skip
    """The particle filter with the guide as proposal on the model's paths
    (:func:`elbox.distributions.smc.particle_filter`); the data are checked and the guide matched
    to the model as in every bound."""
    from elbox.bounds._common import prepare

    x, q, p = prepare(model, guide, x)
    S = check_positive_int(num_samples, "num_samples")
    x = x.trimmed()  # the steps the paths have: those some sequence of the batch reaches
    if _is_chain(q, p):
        return _chain_filter(q, p, model, x, S, resample, ess_threshold, resampling_gradient)
    _check_paths(q, p)
    return _filter(q, p, model, x, S, resample, ess_threshold, resampling_gradient)


def _chain_filter(q: MarkovChain, p: MarkovChain, model, x, S: int, resample: str, ess_threshold: float,
                  resampling_gradient: bool) -> ParticleFilter:  # fmt: skip
    """The filter over discrete paths: particles are states ``[S, B, 1]`` (held as floats, the filter's
    dtype), each step drawn from q's row at the particle's previous state (its first from q(z_1))
    and weighted by p's."""
    B = len(x)

    def row(chain: MarkovChain, t: int, z_prev: Tensor) -> Tensor:  # log-probabilities of z_t, [S, B, K]
        if t == 0:
            return chain.initial_logits.expand(S, B, -1)
        table = chain.transition_logits[:, t - 1]  # [B, K, K]
        index = z_prev.long().unsqueeze(-1).expand(S, B, 1, table.shape[-1])  # [S, B, 1, K]
        return table.expand(S, *table.shape).gather(-2, index).squeeze(-2)

    def propose(t: int, z_prev: Tensor) -> tuple[Tensor, Tensor]:
        log_q = row(q, t, z_prev)
        z = torch.distributions.Categorical(logits=log_q, validate_args=False).sample().unsqueeze(-1)  # [S, B, 1]
        return z.to(log_q.dtype), log_q.gather(-1, z).squeeze(-1)

    def log_target(t: int, z_prev: Tensor, z: Tensor) -> Tensor:
        z = z.long()
        return row(p, t, z_prev).gather(-1, z).squeeze(-1) + model.step_log_likelihood(x, z.squeeze(-1), t)

    initial = q.initial_logits.new_zeros(S, B, 1)  # unread: step 1 draws from q(z_1)
    return particle_filter(propose, log_target, initial, x.mask, S, resample=resample, ess_threshold=ess_threshold,
                           resampling_gradient=resampling_gradient)  # fmt: skip


def _filter(q: MarkovPath, p: MarkovPath, model, x, S: int, resample: str, ess_threshold: float,
            resampling_gradient: bool) -> ParticleFilter:  # fmt: skip
    """The filter with z_{t-1} at t = 1 read as each distribution's own z_0 (the guide's z_q_0 and the
    model's z_0 differ): the particles hold the path, and step 1 conditions on the starts."""
    B = len(x)

    def propose(t: int, z_prev: Tensor) -> tuple[Tensor, Tensor]:
        z, log_q, _, _ = q.step_rsample(t, z_prev if t else q.initial.expand(S, B, -1))
        return z, log_q

    def log_target(t: int, z_prev: Tensor, z: Tensor) -> Tensor:
        prev = z_prev if t else p.initial.expand(S, B, -1)
        return p.step_log_prob(t, prev, z) + model.step_log_likelihood(x, z, t)

    initial = q.initial.new_zeros(S, B, q.latent_dim)  # a placeholder: step 1 reads the starts above
    return particle_filter(propose, log_target, initial, x.mask, S, resample=resample, ess_threshold=ess_threshold,
                           resampling_gradient=resampling_gradient)  # fmt: skip


def fivo(model, guide, x, *, num_samples: int, resample: str = "systematic", ess_threshold: float = 0.5,
         resampling_gradient: bool = False) -> Tensor:  # fmt: skip
    r"""The filtering variational objective, per sequence ``[B]``: the log of the particle filter's
    unbiased estimate of p(x),

    .. math:: \mathrm{FIVO}_S(x) = \mathbb{E}\big[\log \hat Z_S\big] \le \log p(x),

    with the guide as proposal and resampling when the ESS falls below ``ess_threshold`` · S. With
    ``resample="never"`` it is the IWAE bound over whole paths. Its gradient is pathwise through
    the particles; the resampling's score-function term is added only with
    ``resampling_gradient`` (multinomial resampling).

    References:
        Filtering Variational Objectives (Maddison et al., 2017), https://arxiv.org/abs/1705.09279
    """
    result = smc(model, guide, x, num_samples=num_samples, resample=resample, ess_threshold=ess_threshold,
                 resampling_gradient=resampling_gradient)  # fmt: skip
    return result.log_z if result.score is None else result.log_z + result.score
