r"""The Gumbel-Softmax (Concrete) relaxation of discrete latents, and its straight-through variant.

A categorical draw is the argmax of the logits plus Gumbel noise; replacing the argmax by a
softmax at temperature τ gives a point inside the simplex that is a differentiable function of
the logits (Jang et al. 2017; Maddison et al. 2017). For a binary variable the same holds with
logistic noise and a sigmoid. Both are drawn here from *the same* noise as an exact sample, so

- the exact sample (a vertex) gives the true ELBO, which is what is reported;
- the relaxed sample gives the gradient, biased for τ > 0 (less as τ → 0) and of a variance
  that grows as τ falls;
- straight-through uses the exact sample forward and the relaxed one's gradient backward.

References:
    Categorical Reparameterization with Gumbel-Softmax (Jang et al., 2017), https://arxiv.org/abs/1611.01144
    The Concrete Distribution (Maddison et al., 2017), https://arxiv.org/abs/1611.00712
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Bernoulli, Distribution, Independent, OneHotCategorical

from elbox._validation import check_bool, check_distribution, check_positive_int
from elbox.bounds._common import prepare
from elbox.bounds.elbo import Terms, _analytic_kl
from elbox.distributions.one_hot import softmax

__all__ = ["check_temperature", "gumbel_softmax", "relaxed_draws"]


def check_temperature(temperature, name: str = "temperature") -> float:
    """τ as a positive finite float, or a ValueError naming it."""
    if isinstance(temperature, Tensor) and temperature.numel() == 1:
        temperature = float(temperature)
    if isinstance(temperature, bool) or not isinstance(temperature, int | float):
        raise TypeError(f"{name} (the Gumbel-Softmax τ) must be a number; received {type(temperature).__name__}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"{name} (the Gumbel-Softmax τ) must be positive and finite; received {temperature}")
    return float(temperature)


def _base(q: Distribution, estimator: str) -> Distribution:
    """q's per-variable distribution: a one-hot categorical or a Bernoulli, or an error that names
    the estimator that fits q."""
    base = q.base_dist if isinstance(q, Independent) else q
    if isinstance(base, OneHotCategorical | Bernoulli):
        return base
    if q.has_rsample:
        raise TypeError(
            f"the {estimator!r} estimator relaxes a discrete q (one-hot categorical or Bernoulli); q is "
            f"{type(base).__name__}, continuous and reparameterized: use 'elbo' (or 'iwae'), whose pathwise gradient "
            "needs no relaxation"
        )
    raise TypeError(
        f"the {estimator!r} estimator needs q in the one-hot convention (elbox.guides.OneHotCategorical or "
        f"elbox.guides.Bernoulli, with a model that takes one-hot z); q is {type(base).__name__}: use "
        "'score_function', 'vimco' or 'enumerate', which take any discrete q"
    )


def relaxed_draws(q: Distribution, temperature: float, num_samples: int = 1) -> tuple[Tensor, Tensor]:
    r"""Exact and relaxed draws from a one-hot categorical or Bernoulli q, from the same noise.

    .. math:: y = \ell + g,\quad z = \mathrm{onehot}(\arg\max y),\quad
              \tilde z = \mathrm{softmax}(y / \tau)

    with g Gumbel noise (logistic noise and z = [y > 0], z̃ = σ(y/τ) for a Bernoulli).

    Args:
        q: ``Independent(OneHotCategorical)`` (z ``[B, N, K]``) or ``Independent(Bernoulli)``
            (z ``[B, N]``), or one of them without ``Independent``.
        temperature: τ > 0.
        num_samples: S.

    Returns:
        (z, z̃): the exact draws (no gradient) and the relaxed ones (differentiable in q's
        logits), each ``[S, *q.batch_shape, *q.event_shape]``.
    """
    check_distribution(q)
    tau = check_temperature(temperature)
    S = check_positive_int(num_samples, "num_samples")
    base = _base(q, "gumbel_softmax")
    logits = base.logits
    u = torch.rand((S, *logits.shape), dtype=logits.dtype, device=logits.device)
    tiny = torch.finfo(logits.dtype).tiny
    if isinstance(base, OneHotCategorical):
        y = logits - (-u.clamp_min(tiny).log()).log()  # + Gumbel(0, 1)
        soft = softmax(y / tau)
        top = y.detach()
        hard = (top == top.amax(-1, keepdim=True)).to(soft.dtype)  # the argmax (ties have probability 0)
    else:
        y = logits + u.clamp_min(tiny).log() - (-u).log1p()  # + Logistic(0, 1)
        soft = (y / tau).sigmoid()
        hard = (y.detach() > 0).to(soft.dtype)
    return hard, soft


def gumbel_softmax(model, guide, x, *, temperature: float, num_samples: int = 1, hard: bool = False,
                   index: Tensor | None = None) -> tuple[Terms, Tensor]:  # fmt: skip
    r"""The ELBO with the Gumbel-Softmax gradient (straight-through with ``hard=True``), per point.

    .. math:: \mathcal{L}(x) = \mathbb{E}_{q}[\log p_\theta(x \mid z)] - \mathrm{KL}(q \,\|\, p),
              \quad \nabla \approx \nabla\Big[\tfrac1S\textstyle\sum_s \log p_\theta(x \mid \tilde z_s)
              - \mathrm{KL}(q \,\|\, p)\Big]

    The value is the true ELBO: the reconstruction at the exact draws, the KL in closed form (or
    by Monte Carlo on the exact draws, with its score-function gradient, where no closed form is
    registered). The surrogate's gradient is the relaxed estimator's: the reconstruction at the
    relaxed draws (straight-through: at the exact draws, with the relaxed draws' gradient).

    Args:
        model: A model whose latent is in the one-hot convention (it takes relaxed z).
        guide: A guide returning a one-hot categorical or Bernoulli q.
        x: Data, ``[B, *data_shape]``, or a :class:`~elbox.data.Batch`.
        temperature: τ > 0.
        num_samples: S.
        hard: Straight-through: the exact draw forward, the relaxed draw's gradient backward.
        index: The data points' indices, for local guides.

    Returns:
        (terms, surrogate): the ELBO's :class:`~elbox.bounds.Terms` ``[B]``, and the surrogate
        ``[B]`` whose gradient is the estimator's.
    """
    hard = check_bool(hard, "hard")
    x, q, p = prepare(model, guide, x, index)
    z, z_relaxed = relaxed_draws(q, temperature, num_samples)  # [S, B, *event] each
    kl = _analytic_kl(q, p)
    kl_surrogate = kl
    if kl is None:  # by Monte Carlo on the exact draws; its gradient in φ by the score function
        log_q = q.log_prob(z)
        log_ratio = log_q - p.log_prob(z)  # [S, B]
        kl = log_ratio.mean(0)
        kl_surrogate = kl + (log_q * log_ratio.detach()).mean(0) - (log_q * log_ratio).mean(0).detach()
    if hard:
        z_st = z + (z_relaxed - z_relaxed.detach())  # the exact value, the relaxed gradient
        log_lik = model.log_likelihood(x, z_st)  # [S, B]
        reconstruction = log_lik.mean(0)
        surrogate = reconstruction - kl_surrogate
        reconstruction = reconstruction.detach()
    else:  # two decoder passes: the exact draws for the value (no graph), the relaxed ones for the gradient
        with torch.no_grad():
            reconstruction = model.log_likelihood(x, z).mean(0)  # [B]
        surrogate = model.log_likelihood(x, z_relaxed).mean(0) - kl_surrogate
    terms = Terms(value=reconstruction - kl.detach(), reconstruction=reconstruction, kl=kl.detach(),
                  kl_method="analytic" if kl_surrogate is kl else "mc")  # fmt: skip
    return terms, surrogate
