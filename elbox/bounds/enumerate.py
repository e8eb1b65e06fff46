r"""Enumeration of discrete latents: the exact ELBO and its exact gradient by a sum over the joint
support, or the unbiased local-expectation gradient that sums over each variable's values in turn.

For q = Π_n q_n(z_n) over N variables of K values each, the joint sum has K^N terms: exact, and
the oracle every other estimator is tested against, where K^N is small. Factor by factor
(Titsias & Lázaro-Gredilla 2015) the gradient in q_n's parameters is taken as a sum over z_n's K
values with the other variables at a draw from q:

.. math:: \nabla_{\phi} \mathcal{L} = \sum_n \mathbb{E}_{q(z_{-n})}\Big[\sum_k \nabla_\phi q_n(k)\,
          \big(\log p_\theta(x, z_{-n}, z_n{=}k) - \log q_n(k)\big)\Big],

N·K model evaluations per draw instead of K^N, unbiased, and of far lower variance than the
score function's.

References:
    Local Expectation Gradients for Black Box Variational Inference (Titsias & Lázaro-Gredilla, 2015),
    https://arxiv.org/abs/1503.01494
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Bernoulli, Categorical, Distribution, Independent, OneHotCategorical

from elbox._validation import check_positive_int
from elbox.bounds._common import prepare
from elbox.bounds.elbo import Terms, _analytic_kl

__all__ = ["enumerate_joint", "joint_support", "local_expectation"]


def _variables(q: Distribution, estimator: str) -> tuple[int, Tensor, Tensor]:
    """N, each variable's values ``[K, *value]``, and the log-probability of each value for each
    variable ``[B, N, K]``."""
    if isinstance(q, Independent):
        if q.reinterpreted_batch_ndims != 1:
            raise TypeError(f"the {estimator!r} estimator enumerates a product over one axis of variables; q "
                            f"reinterprets {q.reinterpreted_batch_ndims}")  # fmt: skip
        base = q.base_dist
    else:
        base = q
    if not isinstance(base, OneHotCategorical | Bernoulli | Categorical):
        raise TypeError(
            f"the {estimator!r} estimator sums over the values of a discrete q (categorical, one-hot categorical or "
            f"Bernoulli); q is {type(base).__name__}: use 'elbo', 'iwae' or 'rws' for a continuous q"
        )
    logits = base.logits
    if isinstance(base, Bernoulli):
        values = torch.tensor([0.0, 1.0], dtype=logits.dtype, device=logits.device)
        log_p1 = torch.nn.functional.logsigmoid(logits)
        log_probs = torch.stack([log_p1 - logits, log_p1], -1)  # log(1 − p), log p
    else:
        K = logits.shape[-1]
        log_probs = logits - logits.logsumexp(-1, keepdim=True)
        values = (torch.eye(K, dtype=logits.dtype, device=logits.device) if isinstance(base, OneHotCategorical)
                  else torch.arange(K, device=logits.device))  # fmt: skip
    if not isinstance(q, Independent):  # one variable: N = 1
        log_probs = log_probs.unsqueeze(1)
    return log_probs.shape[1], values, log_probs  # [B, N, K]


def joint_support(q: Distribution, max_support: int = 65536) -> Tensor:
    """Every value of a discrete q's latent, ``[M, B, *event]`` with M = K^N (in q's order).

    Raises:
        ValueError: Where K^N exceeds ``max_support``; the message names the factorwise strategy.
    """
    N, values, log_probs = _variables(q, "enumerate")
    K, B = values.shape[0], log_probs.shape[0]
    M = K**N
    if M > check_positive_int(max_support, "max_support"):
        raise ValueError(
            f"the joint support of q has K^N = {K}^{N} = {M:,} values, more than max_support = {max_support:,}: use "
            "strategy='factorwise' (local expectations, N·K evaluations per draw) or another estimator"
        )
    digits = torch.arange(M, device=values.device).unsqueeze(1) // (K ** torch.arange(N - 1, -1, -1,
                                                                                         device=values.device)) % K
    z = values[digits]  # [M, N, *value]
    if not isinstance(q, Independent):
        z = z.squeeze(1)
    return z.unsqueeze(1).expand(M, B, *z.shape[1:])


def enumerate_joint(model, guide, x, *, max_support: int = 65536, index: Tensor | None = None) -> Terms:
    r"""The exact ELBO, a sum over q's joint support, per point; its gradient is exact too.

    .. math:: \mathcal{L}(x) = \sum_z q(z \mid x)\,\big[\log p_\theta(x, z) - \log q(z \mid x)\big]
    """
    x, q, p = prepare(model, guide, x, index)
    z = joint_support(q, max_support)  # [M, B, *event]
    log_q = q.log_prob(z)  # [M, B]
    probs = log_q.exp()
    reconstruction = (probs * model.log_likelihood(x, z)).sum(0)
    kl = _analytic_kl(q, p)
    kl = kl if kl is not None else (probs * (log_q - p.log_prob(z))).sum(0)
    return Terms(value=reconstruction - kl, reconstruction=reconstruction, kl=kl, kl_method="enumerate")


def local_expectation(model, guide, x, *, num_samples: int = 1, index: Tensor | None = None) -> tuple[Terms, Tensor]:
    """The ELBO estimated at S draws from q, with the local-expectation gradient (see the module).

    Returns:
        (terms, surrogate): the ELBO's :class:`~elbox.bounds.Terms` ``[B]`` (reconstruction at
        the draws, the KL in closed form where registered, else at the draws), and the
        surrogate ``[B]`` whose gradient is the estimator's.
    """
    x, q, p = prepare(model, guide, x, index)
    S = check_positive_int(num_samples, "num_samples")
    N, values, log_probs = _variables(q, "enumerate")
    K = values.shape[0]
    z = q.sample((S,))  # [S, B, *event]
    single = not isinstance(q, Independent)
    zn = z.unsqueeze(2) if single else z  # [S, B, N, *value]
    value_dims = values.dim() - 1
    # z with variable n set to its k-th value, for every (n, k): [N, K, S, B, N, *value]
    mask = torch.eye(N, dtype=torch.bool, device=z.device).reshape(N, 1, 1, 1, N, *(1,) * value_dims)
    grid = torch.where(mask, values.reshape(1, K, 1, 1, 1, *values.shape[1:]), zn.unsqueeze(0).unsqueeze(0))
    grid = grid.reshape(N * K, *zn.shape)
    if single:
        grid = grid.squeeze(3)
    kl = _analytic_kl(q, p)
    with torch.no_grad():  # the sums' terms carry no gradient: only q_n(k) does
        flat = grid.reshape(N * K * S, *grid.shape[2:])  # [N K S, B, *event]
        if kl is not None:
            f = model.log_likelihood(x, flat).reshape(N, K, S, -1)  # [N, K, S, B]
        else:  # log p(x, z_{-n}, k) − log q_n(k)
            f = model.log_joint(x, flat).reshape(N, K, S, -1) - log_probs.permute(1, 2, 0).unsqueeze(2)
        f = f.permute(2, 3, 0, 1)  # [S, B, N, K]
    # φ: Σ_n Σ_k q_n(k) f(z_{-n}, k); θ: log p(x, z) at the draws
    log_lik = model.log_likelihood(x, z)  # [S, B]
    phi = (log_probs.exp().unsqueeze(0) * f).sum((-1, -2)).mean(0)  # [B]
    if kl is not None:
        value_kl, kl_method = kl, "analytic"
        surrogate = log_lik.mean(0) + phi - phi.detach() - kl
    else:
        log_ratio = q.log_prob(z) - p.log_prob(z)  # [S, B]
        value_kl, kl_method = log_ratio.mean(0), "mc"
        surrogate = log_lik.mean(0) + p.log_prob(z).mean(0) + phi - phi.detach()
    reconstruction = log_lik.mean(0).detach()
    terms = Terms(value=reconstruction - value_kl.detach(), reconstruction=reconstruction, kl=value_kl.detach(),
                  kl_method=kl_method)  # fmt: skip
    return terms, surrogate
