"""Schedules: the learning rate's multiplier per epoch, and any attribute of the objective per epoch or
per N steps (the KL weight's warm-up, the Gumbel-Softmax temperature's annealing)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from elbox._validation import check_number, check_positive_int, describe

__all__ = [
    "LRSchedule",
    "SCHEDULES",
    "Schedule",
    "iwae_schedule",
    "kl_warmup",
    "kl_weight",
    "lr_schedule",
    "temperature_annealing",
]

SCHEDULES = ("constant", "iwae", "cosine", "exponential")


@dataclass(frozen=True)
class LRSchedule:
    """The learning rate of each epoch as ``lr · multiplier(epoch)`` (epochs counted from 0).

    Attributes:
        name: ``"constant"``, ``"iwae"``, ``"cosine"`` or ``"exponential"``.
        epochs: The epochs the schedule spans (None: unbounded).
        stages: For ``"iwae"``, the number of stages.
        gamma: For ``"exponential"``, the per-epoch factor.
        final: For ``"cosine"``, the multiplier reached at the last epoch.
    """

    name: str = "constant"
    epochs: int | None = None
    stages: int = 8
    gamma: float = 1.0
    final: float = 0.0

    def __post_init__(self):
        if self.name not in SCHEDULES:
            raise ValueError(f"name must be one of {SCHEDULES}; received {self.name!r}")
        if self.epochs is not None or self.name == "cosine":  # the cosine's span is its epochs
            check_positive_int(self.epochs, "epochs")
        check_positive_int(self.stages, "stages")
        _check_gamma(self.gamma)
        _check_final(self.final)

    def multiplier(self, epoch: int) -> float:
        if self.name == "constant":
            return 1.0
        if self.name == "exponential":
            return self.gamma**epoch
        if self.name == "cosine":
            span = max(self.epochs - 1, 1)
            t = min(epoch, span) / span
            return self.final + (1.0 - self.final) * 0.5 * (1.0 + math.cos(math.pi * t))
        # iwae: stage i lasts 3^i passes at 10^(-i/7); past the last stage, the last rate
        passes, stage = 0, 0
        while stage < self.stages - 1 and epoch >= passes + 3**stage:
            passes += 3**stage
            stage += 1
        return 10.0 ** (-stage / 7.0)

    def stage(self, epoch: int) -> int:
        """For ``"iwae"``, the stage i of ``epoch``; 0 for the other schedules."""
        if self.name != "iwae":
            return 0
        return round(-7.0 * math.log10(self.multiplier(epoch)))


def iwae_schedule(stages: int = 8) -> LRSchedule:
    """Burda, Grosse & Salakhutdinov (2016): stage i = 0..stages−1 runs 3^i passes over the data
    at ``lr · 10^(−i/7)`` (with lr = 1e-3: 3,280 passes in all for 8 stages).

    References:
        Importance Weighted Autoencoders, section 5, https://arxiv.org/abs/1509.00519
    """
    stages = check_positive_int(stages, "stages")
    return LRSchedule("iwae", epochs=sum(3**i for i in range(stages)), stages=stages)


def lr_schedule(name: str | LRSchedule | None, epochs: int | None = None, **options) -> LRSchedule:
    """A schedule by name: ``"constant"``, ``"iwae"`` (``stages=``), ``"cosine"`` (to ``final=``
    times the rate at the last of ``epochs``) or ``"exponential"`` (``gamma=`` per epoch)."""
    if name is None:
        return LRSchedule()
    if isinstance(name, LRSchedule):
        return name
    if name not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}; received {name!r}")
    known = {"iwae": {"stages"}, "exponential": {"gamma"}, "cosine": {"final"}}.get(name, set())
    if set(options) - known:
        raise TypeError(f"the {name!r} schedule takes {sorted(known) or 'no options'}; received {sorted(options)}")
    if name == "iwae":
        return iwae_schedule(options.get("stages", 8))
    if name == "exponential":
        return LRSchedule("exponential", gamma=_check_gamma(options.get("gamma", 0.99)))
    if name == "cosine":
        final = _check_final(options.get("final", 0.0))
        return LRSchedule("cosine", epochs=check_positive_int(epochs, "epochs"), final=final)
    return LRSchedule()


def _check_gamma(gamma) -> float:
    gamma = check_number(gamma, "gamma", only_type=True)
    if not 0 < gamma <= 1:
        raise ValueError(f"gamma (the exponential schedule's factor) must be in (0, 1]; received {gamma}")
    return gamma


def _check_final(final) -> float:
    final = check_number(final, "final", only_type=True)
    if not 0 <= final <= 1:
        raise ValueError(f"final (the cosine schedule's last multiplier) must be in [0, 1]; received {final}")
    return final


def kl_weight(epoch: int, beta: float, warmup: int) -> float:
    """β during KL warm-up: rising linearly to ``beta`` over the first ``warmup`` epochs
    (Sønderby et al. 2016; reached at epoch ``warmup − 1``), then constant."""
    check_positive_int(warmup, "warmup", minimum=0)
    check_positive_int(epoch, "epoch", minimum=0)
    return beta * min(1.0, (epoch + 1) / warmup) if warmup else beta


@dataclass(frozen=True)
class Schedule:
    """Sets an attribute of the objective: ``objective.<attribute> = value(t)``, at the start of
    every epoch (t the epoch, counted from 0), or with ``every=N`` before every step, held for N
    steps at a time (t the number of steps taken, rounded down to a multiple of N). The attribute
    can be anything the objective holds: β, a temperature, a number of particles; a tensor
    attribute (a buffer, so checkpointed) is filled in place.

    Example:
        >>> model = elbox.FactorAnalysis(4, 2)
        >>> x, _ = model.sample(50)
        >>> guide = elbox.guides.MeanFieldNormal(2, num_points=50)
        >>> anneal = Schedule("beta", lambda epoch: min(1.0, (epoch + 1) / 10))
        >>> history = elbox.fit(model, guide, x, epochs=20, schedules=[anneal])

    Attributes:
        attribute: The objective's attribute, a dotted path for a submodule's (``"model.beta"``).
        value: ``value(t) -> float``.
        every: None for a value per epoch; N for a value per N steps.
    """

    attribute: str
    value: object
    every: int | None = None

    def __post_init__(self):
        if not isinstance(self.attribute, str):
            raise TypeError(f"attribute must be the name of an attribute of the objective, such as 'beta'; received "
                            f"{describe(self.attribute)}")  # fmt: skip
        if not all(part.isidentifier() for part in self.attribute.split(".")):
            raise ValueError(f"attribute must name an attribute of the objective, such as 'beta' or 'model.beta'; "
                             f"received {describe(self.attribute)}")  # fmt: skip
        if self.every is not None:
            check_positive_int(self.every, "every")
        if not callable(self.value):
            raise TypeError(f"a schedule's value must be a function of the epoch (or step); received {self.value!r}")

    def apply(self, objective, t: int) -> float:
        """Sets the attribute to its value at epoch t (``every=None``) or after t steps."""
        if self.every is not None:
            t = t // self.every * self.every
        *path, name = self.attribute.split(".")
        owner = objective
        for part in path:
            owner = getattr(owner, part)
        if not hasattr(owner, name):
            raise AttributeError(
                f"the schedule drives {self.attribute!r}, which {type(objective).__name__} does not have"
            )
        value = self.value(t)
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"the schedule of {self.attribute!r} must give a number; at t = {t} it gave "
                            f"{describe(value)}") from None  # fmt: skip
        if not math.isfinite(value):
            raise ValueError(f"the schedule of {self.attribute!r} must give finite numbers; at t = {t} it gave {value}")
        current = getattr(owner, name)
        if hasattr(current, "fill_"):
            current.fill_(value)
        else:
            setattr(owner, name, type(current)(value) if isinstance(current, int | float) else value)
        return value


def temperature_annealing(initial: float = 1.0, minimum: float = 0.5, rate: float = 1e-4, every: int = 500,
                          attribute: str = "temperature") -> Schedule:  # fmt: skip
    r"""The Gumbel-Softmax temperature annealed as Jang et al. (2017) do, every ``every`` steps:

    .. math:: \tau(t) = \max\big(\tau_{\min},\ \tau_0\, e^{-r t}\big)

    (they use τ₀ = 1, τ_min = 0.5, r ∈ {1e-5, 1e-4}, every 500 steps). The temperature is a
    buffer of the objective, so a checkpoint holds it, and a resumed run goes on from the same τ.

    Args:
        initial: τ₀ > 0.
        minimum: τ_min, in (0, τ₀].
        rate: r ≥ 0 per step.
        every: N, the steps between updates.
        attribute: The objective's attribute it drives.

    References:
        Categorical Reparameterization with Gumbel-Softmax (Jang et al., 2017), https://arxiv.org/abs/1611.01144
    """
    from elbox.bounds.relaxed import check_temperature

    initial = check_temperature(initial, "initial")
    minimum = check_temperature(minimum, "minimum")
    if minimum > initial:
        raise ValueError(f"minimum (τ_min) must be at most initial (τ₀ = {initial}); received {minimum}")
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not (math.isfinite(rate) and rate >= 0):
        raise ValueError(f"rate (the annealing rate r per step) must be non-negative and finite; received {rate!r}")
    every = check_positive_int(every, "every")
    return Schedule(attribute, _Annealing(float(initial), float(minimum), float(rate)), every=every)


@dataclass(frozen=True)
class _Annealing:
    initial: float
    minimum: float
    rate: float

    def __call__(self, t: int) -> float:
        return max(self.minimum, self.initial * math.exp(-self.rate * t))


def kl_warmup(beta: float, epochs: int) -> Schedule:
    """The KL weight rising linearly to ``beta`` over ``epochs`` epochs (Sønderby et al. 2016),
    as a :class:`Schedule` of the objective's ``beta``."""
    beta = check_number(beta, "beta", minimum=0.0)
    epochs = check_positive_int(epochs, "epochs")
    return Schedule("beta", lambda epoch: kl_weight(epoch, beta, epochs))
