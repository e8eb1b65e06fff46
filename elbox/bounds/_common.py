"""What every bound shares: checking a guide against a model, drawing particles, log-weights."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints

from elbox._validation import check_guide, check_model, check_points, check_positive_int
from elbox.data.batches import Batch

__all__ = ["draw", "draw_with_log_prob", "leave_one_out_log_mean", "log_mean_exp", "prepare", "score_surrogate"]


def _support_kind(c) -> tuple:
    while isinstance(c, constraints.independent | constraints.MixtureSameFamilyConstraint):
        c = c.base_constraint  # a product's or a mixture's support is its components'
    bounds = tuple(
        float(b) if not isinstance(b, Tensor) or b.numel() == 1 else None
        for b in (getattr(c, "lower_bound", None), getattr(c, "upper_bound", None))
        if b is not None
    )
    return type(c).__name__.lstrip("_"), bounds


def prepare(model, guide, x, index=None) -> tuple[Tensor, Distribution, Distribution]:
    """Checks x, calls the guide and checks its q against the model's prior.

    ``x`` may be an :class:`~elbox.data.Batch`: its index is used where ``index`` is None, and
    its data are not checked again when the engine marked it as gathered from checked data.

    Returns:
        (x, q, prior): the data in the model's dtype, q with batch ``[B]``, and p(z).
    """
    check_model(model)
    check_guide(guide)
    if isinstance(x, Batch):
        index = x.index if index is None else index
        x = x.data if x.checked else check_points(model.check_data(x.data))
    else:
        x = check_points(model.check_data(x))
    q = guide(x, index=index) if index is not None else guide(x)
    p = model.prior_for(x)
    name = type(guide).__name__
    if tuple(q.batch_shape) != (x.shape[0],):
        raise ValueError(
            f"the guide ({name}) must return one q per data point, batch shape [{x.shape[0]}]; "
            f"it returned batch shape {list(q.batch_shape)}"
        )
    if tuple(q.event_shape) != tuple(p.event_shape):
        raise ValueError(
            f"the guide ({name}) does not match the model ({type(model).__name__}): its latent shape "
            f"is {list(q.event_shape)} but the model's prior has {list(p.event_shape)}"
        )
    if q.support.is_discrete != p.support.is_discrete or _support_kind(q.support) != _support_kind(p.support):
        raise ValueError(
            f"the guide ({name}) does not cover the model's latent space: q's support is "
            f"{q.support} but the prior's ({type(p).__name__}) is {p.support}"
        )
    return x, q, p


def draw(q: Distribution, num_samples: int) -> Tensor:
    """``num_samples`` particles from q, ``[S, B, *event]``: pathwise where q allows it."""
    S = check_positive_int(num_samples, "num_samples")
    return q.rsample((S,)) if q.has_rsample else q.sample((S,))


def draw_with_log_prob(q: Distribution, num_samples: int, *, pathwise: bool = True) -> tuple[Tensor, Tensor]:
    """``num_samples`` particles and q's log-density at them, ``([S, B, *event], [S, B])``: in one
    pass where q offers ``rsample_and_log_prob`` (a normalizing flow computes both together),
    else a draw and then its score. ``pathwise=False`` is for estimates rather than gradients:
    the draw is ``q.sample`` (no graph through z), except where q computes both in one pass."""
    S = check_positive_int(num_samples, "num_samples")
    if hasattr(q, "rsample_and_log_prob") and (q.has_rsample or not pathwise):
        return q.rsample_and_log_prob((S,))
    z = draw(q, S) if pathwise else q.sample((S,))
    return z, q.log_prob(z)


def log_mean_exp(a: Tensor, dim: int = 0) -> Tensor:
    """log (1/S) Σ_s exp(a_s) along ``dim``, computed stably."""
    return a.logsumexp(dim) - math.log(a.shape[dim])


def leave_one_out_log_mean(a: Tensor) -> Tensor:
    """VIMCO's baselines: for each s, log-mean-exp of ``a`` with a_s replaced by the mean of the
    others, ``[S, B]`` from ``[S, B]`` (Mnih & Rezende, 2016)."""
    S = a.shape[0]
    others = (a.sum(0, keepdim=True) - a) / (S - 1)  # [S, B]
    swapped = a.unsqueeze(0).expand(S, *a.shape).clone()  # [S (replaced), S, B]
    idx = torch.arange(S, device=a.device)
    swapped[idx, idx] = others
    return log_mean_exp(swapped, dim=1)


def score_surrogate(log_q: Tensor, signal: Tensor) -> Tensor:
    """Zero in value; its gradient is the score-function term mean_s (f_s − b_s) ∇ log q(z_s).

    ``signal`` f is ``[S, B]``; the baseline b_s is the mean of the other particles' f
    (none when S = 1). Returns ``[B]``.
    """
    f = signal.detach()
    S = f.shape[0]
    baseline = (f.sum(0, keepdim=True) - f) / (S - 1) if S > 1 else torch.zeros_like(f)
    surrogate = (log_q * (f - baseline)).mean(0)
    return surrogate - surrogate.detach()
