r"""The optimizers :func:`elbox.fit` builds, by name: a registry of factories, each
``factory(params, lr, **options) -> torch.optim.Optimizer``, whose keyword options (with their
defaults) are what ``fit(optimizer={"name": …, **options})`` and a config's ``[optimizer]`` table
accept.

- ``"adam"`` (the default): Adam, fused where the parameters allow it;
- ``"adamw"``: Adam with decoupled weight decay (Loshchilov & Hutter 2019);
- ``"sgd"``: stochastic gradient with (Nesterov) momentum;
- ``"clipped_adam"``: Pyro's ``ClippedAdam``, which deep Markov models are trained with: every
  gradient element clipped to ``[-clip_value, clip_value]``, L2 weight decay, and the learning
  rate multiplied by ``lr_decay`` at every step (on top of ``fit``'s per-epoch schedule).

Gradient-norm clipping (``fit(clip_grad_norm=…)``) applies to every one of them.

References:
    Adam: A Method for Stochastic Optimization (Kingma & Ba, 2015), https://arxiv.org/abs/1412.6980
    Decoupled Weight Decay Regularization (Loshchilov & Hutter, 2019), https://arxiv.org/abs/1711.05101
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import torch

from elbox._validation import check_number

__all__ = ["OPTIMIZERS", "ClippedAdam", "make_optimizer", "optimizer_options", "register_optimizer"]

OPTIMIZERS: dict[str, Callable] = {}


def register_optimizer(name: str) -> Callable[[Callable], Callable]:
    """A decorator that registers ``factory(params, lr, **options)`` under ``name``."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"an optimizer's name must be an identifier-like string; received {name!r}")

    def register(factory: Callable) -> Callable:
        if not callable(factory):
            raise TypeError(f"register_optimizer({name!r}) decorates a factory(params, lr, **options); received "
                            f"{type(factory).__name__}")  # fmt: skip
        OPTIMIZERS[name] = factory
        return factory

    return register


def optimizer_options(name: str) -> dict[str, object]:
    """The keyword options of the optimizer registered as ``name``, with their defaults."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {tuple(OPTIMIZERS)}; received {name!r}")
    parameters = inspect.signature(OPTIMIZERS[name]).parameters.values()
    return {p.name: p.default for p in parameters if p.kind is p.KEYWORD_ONLY}


def make_optimizer(spec: str | dict, params: list, lr: float) -> tuple[torch.optim.Optimizer, dict]:
    """The optimizer of ``spec`` (a name, or a dict of ``name`` and options) over ``params``, and
    its full description (name and every option, defaults filled in), as a run records it.

    Raises:
        ValueError: For an unknown name, an unknown option (the message lists the known ones) or
            an option out of its range.
        TypeError: For a spec that is neither a string nor a dict with a ``name``.
    """
    if isinstance(spec, str):
        spec = {"name": spec}
    if not (isinstance(spec, dict) and isinstance(spec.get("name"), str)):
        raise TypeError(f"optimizer must be a name or a dict with 'name' and its options; received {spec!r}")
    name = spec["name"]
    known = optimizer_options(name)
    given = {k: v for k, v in spec.items() if k != "name"}
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ValueError(f"optimizer {name!r} has no option {unknown[0]!r}; its options are {sorted(known)}")
    options = {**known, **given}
    lr = check_number(lr, "lr", only_type=True)
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be positive and finite; received {lr}")
    params = list(params)
    if not params:
        raise ValueError("params must hold at least one parameter to optimize; received none")
    for key, value in options.items():
        bad = isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
        if bad or value < 0 or (key.startswith("beta") and value >= 1) or (key == "lr_decay" and not 0 < value <= 1):
            expected = {"lr_decay": "in (0, 1]"}.get(key, "in [0, 1)" if key.startswith("beta") else "non-negative")
            raise ValueError(f"optimizer {name!r}: {key} must be a finite number {expected}; received {value!r}")
    return OPTIMIZERS[name](params, lr, **options), {"name": name, **options}


def _fused(kind, params, **options) -> torch.optim.Optimizer:
    """``kind(params, fused=True, **options)`` (one kernel over every parameter) where the
    parameters allow it, else the plain implementation."""
    try:
        return kind(params, fused=True, **options)
    except (RuntimeError, ValueError):
        return kind(params, **options)


@register_optimizer("adam")
def adam(params, lr: float, *, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
         weight_decay: float = 0.0) -> torch.optim.Adam:  # fmt: skip
    """Adam (L2 weight decay), fused where the parameters allow."""
    return _fused(torch.optim.Adam, params, lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay)


@register_optimizer("adamw")
def adamw(params, lr: float, *, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
          weight_decay: float = 0.01) -> torch.optim.AdamW:  # fmt: skip
    """AdamW: the weight decay applied to the parameters, not added to the gradient; fused where
    the parameters allow."""
    return _fused(torch.optim.AdamW, params, lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay)


@register_optimizer("sgd")
def sgd(params, lr: float, *, momentum: float = 0.9, nesterov: float = 0, weight_decay: float = 0.0):
    """SGD with momentum (``nesterov = 1`` for Nesterov's)."""
    if nesterov not in (0, 1):
        raise ValueError(f"optimizer 'sgd': nesterov must be 0 or 1; received {nesterov!r}")
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=bool(nesterov) and momentum > 0,
                           weight_decay=weight_decay)  # fmt: skip


class ClippedAdam(torch.optim.Adam):
    """Adam whose gradients are clipped element-wise to ``[-clip_value, clip_value]`` and whose
    k-th step is taken at ``lr × lr_decay^k`` (Pyro's ``ClippedAdam``; ε enters as in torch's Adam,
    after the bias correction, where Pyro adds it before: a difference of ε's size early on). The
    decay is kept as a factor of its own in each parameter group (``decay``, checkpointed with the
    optimizer), so that a schedule that sets ``lr`` per epoch composes with it."""

    def __init__(self, params, lr: float, *, betas, eps: float, weight_decay: float, clip_value: float,
                 lr_decay: float):  # fmt: skip
        if isinstance(clip_value, bool) or not isinstance(clip_value, int | float) or not clip_value >= 0:
            raise ValueError(f"clip_value must be a non-negative number; received {clip_value!r}")
        if isinstance(lr_decay, bool) or not isinstance(lr_decay, int | float) or not 0 < lr_decay <= 1:
            raise ValueError(f"lr_decay must be a number in (0, 1]; received {lr_decay!r}")
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        for group in self.param_groups:
            group.update(clip_value=clip_value, lr_decay=lr_decay, decay=1.0)

    @torch.no_grad()
    def step(self, closure=None):
        rates = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.clamp_(-group["clip_value"], group["clip_value"])
            group["decay"] *= group["lr_decay"]  # step k at lr × lr_decay^k, as Pyro's
            rates.append(group["lr"])
            group["lr"] = group["lr"] * group["decay"]
        loss = super().step(closure)
        for group, rate in zip(self.param_groups, rates, strict=True):
            group["lr"] = rate
        return loss


@register_optimizer("clipped_adam")
def clipped_adam(params, lr: float, *, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                 weight_decay: float = 0.0, clip_value: float = 10.0,
                 lr_decay: float = 1.0) -> ClippedAdam:  # fmt: skip
    """:class:`ClippedAdam` (Pyro's defaults: clip 10, no decay; its DMM uses β₁ = 0.96, decay
    0.99996 per step and weight decay 2)."""
    return ClippedAdam(params, lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay, clip_value=clip_value,
                       lr_decay=lr_decay)  # fmt: skip
