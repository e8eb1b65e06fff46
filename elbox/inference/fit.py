"""Variational inference: maximize a bound over the guide's (and model's) parameters with Adam."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from elbox._validation import check_positive_int
from elbox.bounds import elbo, iwae, renyi
from elbox.inference.history import History

__all__ = ["fit"]

_BOUNDS = ("elbo", "iwae", "renyi")


def _bound_value(bound: str, model, guide, x, index, options: dict, beta: float):
    """The bound per data point, the objective to maximize, and the ELBO's terms.

    For the ELBO the objective is reconstruction − β·KL (the bound itself when β = 1); where q
    is a point mass (a deterministic encoder) the KL is +∞ and the objective is the
    reconstruction alone, while the bound is reported as −∞.
    """
    if bound == "elbo":
        terms = elbo(model, guide, x, index=index, **options)
        parts = {"reconstruction": terms.reconstruction, "kl": terms.kl}
        if bool(torch.isposinf(terms.kl).all()):  # a point-mass q: train the reconstruction
            return terms.value, terms.reconstruction, parts
        objective = terms.value if beta == 1.0 else terms.reconstruction - beta * terms.kl
        return terms.value, objective, parts
    if bound == "iwae":
        value = iwae(model, guide, x, index=index, **options)
    else:
        value = renyi(model, guide, x, index=index, **options)
    return value, value, {}


def fit(
    model,
    guide,
    data,
    *,
    bound: str = "elbo",
    epochs: int = 100,
    batch_size: int | None = None,
    lr: float = 1e-2,
    num_samples: int = 1,
    optimize_model: bool = True,
    seed: int | None = None,
    callback: Callable | None = None,
    beta: float | None = None,
    kl_warmup: int = 0,
    clip_grad_norm: float | None = None,
    **bound_options,
) -> History:
    r"""Maximizes a bound over the guide's parameters (and the model's) by stochastic gradient.

    Each epoch visits the data once in shuffled mini-batches; each step maximizes the batch mean
    of the bound with Adam. Local guides receive the batch's indices. The value recorded per
    step and per epoch is the bound itself, not a surrogate.

    Args:
        model: A :class:`~elbox.models.LatentModel`.
        guide: A guide over the model's latents.
        data: ``[N, *data_shape]``.
        bound: ``"elbo"``, ``"iwae"`` or ``"renyi"`` (give ``alpha=`` for the last).
        epochs: Passes over the data.
        batch_size: Points per step (default: all of them).
        lr: Adam's learning rate.
        num_samples: Particles per data point.
        optimize_model: Whether θ is fitted too, or only the guide.
        seed: Seeds the shuffling and the particles (torch's global RNG is left as it was).
        callback: Called as ``callback(epoch, history)`` after each epoch.
        beta: The KL weight of the ELBO objective (default the model's ``beta``, else 1). The
            recorded bound is always the true ELBO.
        kl_warmup: Epochs over which the KL weight rises linearly from 0 to ``beta``
            (Sønderby et al. 2016); 0 for none.
        clip_grad_norm: If given, gradients are clipped to this total norm.
        **bound_options: Passed to the bound (``kl=``, ``expectation=``, ``alpha=``).

    Returns:
        A :class:`History`: the bound per epoch (data-weighted mean over the epoch's steps) and
        per step.

    Raises:
        FloatingPointError: If the bound becomes non-finite; the message names the term.
    """
    if bound not in _BOUNDS:
        raise ValueError(f"bound must be one of {_BOUNDS}; received {bound!r}")
    epochs = check_positive_int(epochs, "epochs")
    x = model.check_data(data)
    N = x.shape[0]
    batch_size = N if batch_size is None else min(check_positive_int(batch_size, "batch_size"), N)
    if not lr > 0:
        raise ValueError(f"lr must be positive; received {lr}")
    beta = float(getattr(model, "beta", 1.0) if beta is None else beta)
    if not beta >= 0:
        raise ValueError(f"beta must be non-negative; received {beta}")
    kl_warmup = check_positive_int(kl_warmup, "kl_warmup", minimum=0)
    if clip_grad_norm is not None and not clip_grad_norm > 0:
        raise ValueError(f"clip_grad_norm must be positive; received {clip_grad_norm}")
    if bound != "elbo" or num_samples != 1:
        bound_options["num_samples"] = num_samples
    guide.to(dtype=x.dtype if x.dtype.is_floating_point else model._reference().dtype, device=x.device)
    params = list(guide.parameters())
    if optimize_model:
        params += [p for p in model.parameters() if p.requires_grad]
    params = list({id(p): p for p in params if p.requires_grad}.values())
    if not params:
        raise ValueError("nothing to optimize: neither the guide nor the model has trainable parameters")
    optimizer = torch.optim.Adam(params, lr=lr)

    history = History(method=f"vi:{bound}")
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        for epoch in range(epochs):
            order = torch.randperm(N, device=x.device)
            total = 0.0
            weight = beta * min(1.0, (epoch + 1) / kl_warmup) if kl_warmup else beta
            for begin in range(0, N, batch_size):
                index = order[begin : begin + batch_size]  # [B]
                value, objective, terms = _bound_value(bound, model, guide, x[index], index, bound_options, weight)
                mean, loss = value.mean(), -objective.mean()
                if not torch.isfinite(loss.detach()):
                    _raise_non_finite(bound, epoch, objective, terms)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if clip_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
                optimizer.step()
                step_value = float(mean.detach())
                history.steps.append(step_value)
                total += step_value * index.numel()
            history.lower_bound.append(total / N)
            history.n_iter = epoch + 1
            if callback is not None:
                callback(epoch, history)
    history.seconds = time.perf_counter() - start
    return history


def _raise_non_finite(bound: str, epoch: int, value, terms: dict) -> None:
    bad = [name for name, t in terms.items() if not torch.isfinite(t).all()] or [bound]
    raise FloatingPointError(
        f"the {bound} became non-finite in epoch {epoch} (non-finite term: {', '.join(bad)}); "
        "lower lr, or check the data and the model's parameters"
    )


