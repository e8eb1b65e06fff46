r"""Per-data-point refinement of a q: what the amortization gap is measured against.

An amortized encoder gives every x its q_φ(z | x) from one network; the best q of the same
family for that x alone, q*(z | x) = argmax_q L[q], is at least as good. So the gap splits
(Cremer, Li & Duvenaud, 2018):

.. math:: \log p(x) - \mathcal{L}[q_\phi] =
          \underbrace{\log p(x) - \mathcal{L}[q^*]}_{\text{approximation gap}}
        + \underbrace{\mathcal{L}[q^*] - \mathcal{L}[q_\phi]}_{\text{amortization gap}}.

:func:`refine` finds q* by gradient ascent on each point's ELBO, started from the guide's q.

References:
    Inference Suboptimality in Variational Autoencoders (Cremer et al., 2018),
    https://arxiv.org/abs/1801.03558
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.distributions import Bernoulli as _Bernoulli
from torch.distributions import Beta as _Beta
from torch.distributions import Categorical as _Categorical
from torch.distributions import Distribution, Independent, MultivariateNormal, Normal
from torch.distributions import OneHotCategorical as _OneHotCategorical

from elbox._validation import check_callable, check_distribution, check_number, check_points, check_positive_int
from elbox.bounds import elbo
from elbox.bounds._common import prepare
from elbox.distributions._gaussian import tril_to_raw
from elbox.guides import Bernoulli as BernoulliGuide
from elbox.guides import Beta, Categorical, FullRankNormal, Guide, MeanFieldNormal, OneHotCategorical

__all__ = ["can_refine", "local_guide", "refine", "register_local_guide"]


#: The families refine can optimize per point: ``(matches, make)`` pairs, the last registered tried first.
_LOCAL_GUIDES: list[tuple[Callable[[Distribution], bool], Callable[[Distribution, int], tuple]]] = []


def register_local_guide(matches: Callable[[Distribution], bool],
                         make: Callable[[Distribution, int], tuple[Guide, dict]]) -> None:  # fmt: skip
    """Teaches :func:`refine` (and so the evidence report's gap split) a family of q.

    Args:
        matches: ``matches(q) -> bool``: whether a distribution returned by a guide is of the family.
        make: ``make(q, B) -> (guide, values)``: a local guide of the family with one q per data point
            (``num_points=B``), and the values of its parameters that reproduce ``q`` (each
            ``[B, ...]``, by parameter name).

    Families registered later are tried first, so a registration can refine a narrower case of a
    built-in family. A guide with its own ``local_guide(x, index)`` method needs none.
    """
    if not (callable(matches) and callable(make)):
        raise TypeError(f"register_local_guide takes two functions, matches(q) and make(q, B); received "
                        f"{type(matches).__name__} and {type(make).__name__}")  # fmt: skip
    _LOCAL_GUIDES.insert(0, (matches, make))


def family(q: Distribution) -> str:
    """q's family as messages name it: ``Independent(Laplace)``, ``MultivariateNormal``."""
    base = getattr(q, "base_dist", None)
    return f"{type(q).__name__}({type(base).__name__})" if base is not None else type(q).__name__


def can_refine(q: Distribution) -> bool:
    """Whether :func:`local_guide` knows q's family."""
    check_distribution(q)
    return any(matches(q) for matches, _ in _LOCAL_GUIDES)


def local_guide(q: Distribution) -> Guide:
    """A local guide of q's family with one q per data point of q's batch, started at q.

    Families: a diagonal normal (``Independent(Normal)``), a full-rank normal, a categorical (or
    a product of them), one-hot categoricals and Bernoullis (the discrete VAE's), a Beta, and any
    registered with :func:`register_local_guide`. A guide with its own ``local_guide(x, index)``
    method (the :class:`~elbox.guides.FlowGuide`) makes its local copy itself.

    Raises:
        TypeError: For a family nothing registered.
    """
    check_distribution(q)
    B = q.batch_shape[0]
    for matches, make in _LOCAL_GUIDES:
        if matches(q):
            guide, values = make(q, B)
            break
    else:
        raise TypeError(
            f"refine needs q of a family it can optimize per point (diagonal or full-rank normal, categorical, one-hot "
            f"categorical, Bernoulli, Beta, or one registered with elbox.inference.register_local_guide); the guide "
            f"returned {family(q)}"
        )
    reference = values[next(iter(values))]
    guide = guide.to(dtype=reference.dtype if reference.is_floating_point() else None, device=reference.device)
    with torch.no_grad():
        for name, value in values.items():
            getattr(guide, name).copy_(value.expand_as(getattr(guide, name)))
    return guide


def _independent_of(kind):
    return lambda q: isinstance(q, Independent) and isinstance(q.base_dist, kind)


def _categorical(q) -> bool:
    return isinstance(q, _Categorical) or (isinstance(q, Independent) and isinstance(q.base_dist, _Categorical))


def _local_categorical(q, B):
    base = q.base_dist if isinstance(q, Independent) else q
    guide = Categorical(base.logits.shape[-1], num_points=B, event_shape=tuple(q.event_shape))
    return guide, {"logits": base.logits}


register_local_guide(lambda q: isinstance(q, _Beta), lambda q, B: (
    Beta(num_points=B), {"log_concentration1": q.concentration1.log(), "log_concentration0": q.concentration0.log()}))
register_local_guide(_categorical, _local_categorical)
register_local_guide(_independent_of(_Bernoulli), lambda q, B: (
    BernoulliGuide(q.event_shape[0], num_points=B), {"logits": q.base_dist.logits}))
register_local_guide(_independent_of(_OneHotCategorical), lambda q, B: (
    OneHotCategorical(*q.event_shape, num_points=B), {"logits": q.base_dist.logits}))
register_local_guide(lambda q: isinstance(q, MultivariateNormal), lambda q, B: (
    FullRankNormal(q.event_shape[0], num_points=B), {"loc": q.loc, "_raw": tril_to_raw(q.scale_tril)}))
register_local_guide(_independent_of(Normal), lambda q, B: (
    MeanFieldNormal(tuple(q.event_shape), num_points=B),
    {"loc": q.base_dist.loc, "log_scale": q.base_dist.scale.log()}))


def _localized(model, guide, x, index) -> Guide:
    """The local guide refinement starts from: the guide's own (a flow guide's encodings, its
    flow shared), else one of q's family."""
    if hasattr(guide, "local_guide"):
        prepare(model, guide, x[:1], None if index is None else index[:1])  # a mismatched guide fails here
        return guide.local_guide(x, index)
    with torch.no_grad():
        _, q, _ = prepare(model, guide, x, index)
    return local_guide(q)


def refine(
    model,
    guide,
    x,
    *,
    steps: int = 200,
    lr: float = 1e-2,
    num_samples: int = 1,
    batch_size: int | None = None,
    index=None,
    progress: Callable[[int, int], None] | None = None,
) -> Guide:
    """Optimizes one q per data point, starting from the guide's q(z | x): the per-point
    optimum q* of the guide's family, and with it L[q*].

    Each point's ELBO is maximized by Adam on its own parameters (their gradients do not mix,
    so the points are optimized together, ``batch_size`` at a time). The model is held fixed. A
    q without a pathwise gradient (a discrete one, not summed over exactly) is refined with at
    least 8 particles: the score-function gradient's leave-one-out baseline needs several to be of
    use.

    Args:
        model: A :class:`~elbox.models.LatentModel`.
        guide: The guide to refine (amortized or not).
        x: Data, ``[B, *data_shape]``.
        steps: Adam steps per point.
        lr: Adam's learning rate.
        num_samples: Particles per ELBO estimate where it is not analytic.
        batch_size: Data points optimized at a time (default: all).
        index: The data points' indices, for a local guide.
        progress: Called as ``progress(points_done, points_total)`` after each batch.

    Returns:
        A local guide with ``num_points = B``: call it on ``x`` (or rows with ``index=``).
    """
    steps = check_positive_int(steps, "steps")
    num_samples = check_positive_int(num_samples, "num_samples")
    lr = check_number(lr, "lr", only_type=True)
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive number; received {lr!r}")
    check_callable(progress, "progress", "a function progress(points_done, points_total)", optional=True)
    x = check_points(model.check_data(x))
    B = len(x)
    step = B if batch_size is None else check_positive_int(batch_size, "batch_size")
    # the model and the guide stay as they are: only the local copies' parameters move
    frozen = list({id(p): p for m in (model, guide) for p in m.parameters() if p.requires_grad}.values())
    states: list[dict] = []
    try:
        for p in frozen:
            p.requires_grad_(False)
        for begin in range(0, B, step):
            batch = x[begin : begin + step]
            rows = None if index is None else index[begin : begin + step]
            local = _localized(model, guide, batch, rows)
            optimizer = torch.optim.Adam(local.parameters(), lr=lr)
            with torch.no_grad():
                q = local(batch)
            particles = num_samples if q.has_rsample or q.has_enumerate_support else max(num_samples, 8)
            for _ in range(steps):
                loss = -elbo(model, local, batch, num_samples=particles).value.sum()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            states.append({k: v.detach() for k, v in local.state_dict().items()})
            if progress is not None:
                progress(min(begin + step, B), B)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    if hasattr(guide, "local_guide"):
        result = guide.local_guide(x, index)
    else:
        with torch.no_grad():
            _, q, _ = prepare(model, guide, x[:1], None if index is None else index[:1])
        result = local_guide(q.expand(torch.Size([B])))
    result.load_state_dict({k: torch.cat([s[k] for s in states]) for k in states[0]})
    return result
