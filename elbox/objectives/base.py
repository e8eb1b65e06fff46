"""The objective as a module: what the training engine maximizes, and the registry of them by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import Tensor, nn

from elbox.data.batches import Batch, as_batch

__all__ = ["OBJECTIVES", "Objective", "Output", "get_objective", "make_objective", "register_objective"]

#: The registered objectives by name; :func:`register_objective` adds to it.
OBJECTIVES: dict[str, type[Objective]] = {}


@dataclass
class Output:
    """What an objective returns for one batch, every tensor per data point ``[B]``.

    Attributes:
        value: The bound itself, the true number that is reported (never a surrogate).
        surrogate: What is maximized: its gradient is the estimator's (it equals ``value`` where
            the estimator is the plain pathwise gradient of the bound).
        parts: The named terms of the bound (``reconstruction``, ``kl``, …), for the metrics.
    """

    value: Tensor
    surrogate: Tensor
    parts: dict[str, Tensor] = field(default_factory=dict)


class Objective(nn.Module):
    r"""A bound to maximize, as a module: ``Objective(model, guide, **options)``.

    ``forward(batch)`` returns an :class:`Output`: the bound per data point, the surrogate whose
    gradient is the estimator's, and the named parts. The model and the guide are submodules, so
    ``objective.parameters()`` is everything that is trained. State the estimator owns (β, a
    temperature, a learned baseline network, running statistics) lives here as buffers,
    parameters and submodules: it is checkpointed, restored and scheduled with the rest. Options
    that are plain numbers are returned by :meth:`options` and recorded in checkpoints, so a run
    is resumed only with the same estimator.

    Subclasses set ``needs_guide`` (False for objectives of the model alone, such as maximum
    likelihood) and implement :meth:`forward`; :func:`register_objective` makes them available by
    name to :func:`elbox.fit`, the configs and the command line.
    """

    #: The name under which the class is registered (set by :func:`register_objective`).
    name: str = ""
    #: Whether the objective needs a guide q(z | x).
    needs_guide: bool = True
    #: What each keyword option means, for the config's ``[objective]`` table (whose keys are the
    #: constructor's keyword options with a number, string or true/false default).
    option_help: dict[str, str] = {}

    def __init__(self, model: nn.Module, guide: nn.Module | None = None):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an elbox model (an nn.Module); received {type(model).__name__}")
        if self.needs_guide and guide is None:
            raise TypeError(f"the {self.name or type(self).__name__!r} objective needs a guide q(z | x); received None")
        if guide is not None and not isinstance(guide, nn.Module):
            raise TypeError(f"guide must be an elbox guide (an nn.Module); received {type(guide).__name__}")
        self.model = model
        # A guide that is part of the model (the VAE's encoder) is reached through it; one that is
        # not is registered here, so that its parameters are trained and checkpointed once.
        if guide is None or any(m is guide for m in model.modules()):
            object.__setattr__(self, "guide", guide)
        else:
            self.guide = guide

    def forward(self, batch: Batch | Tensor) -> Output:
        raise NotImplementedError

    def options(self) -> dict:
        """The estimator's settings as plain numbers and strings (recorded in checkpoints)."""
        return {}

    def batch(self, batch) -> Batch:
        """``batch`` as a :class:`~elbox.data.Batch` (a tensor or Sequences is wrapped)."""
        return as_batch(batch)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options().items())


def register_objective(name: str) -> Callable[[type[Objective]], type[Objective]]:
    """A class decorator that registers an :class:`Objective` under ``name``.

    Code outside elbox registers its own objectives the same way; ``elbox.fit(model, guide, x,
    bound=name)`` and ``[train] objective = "name"`` in a config then find them.

    Example:
        >>> from elbox.bounds import elbo
        >>> @register_objective("half_elbo")
        ... class HalfELBO(Objective):
        ...     def forward(self, batch):
        ...         terms = elbo(self.model, self.guide, batch)
        ...         return Output(terms.value, 0.5 * terms.value)
        >>> model = elbox.FactorAnalysis(3, 1)
        >>> x, _ = model.sample(20)
        >>> history = elbox.fit(model, elbox.guides.MeanFieldNormal(1), x, bound="half_elbo", epochs=3)
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"an objective's name must be an identifier-like string; received {name!r}")

    def register(cls: type[Objective]) -> type[Objective]:
        if not (isinstance(cls, type) and issubclass(cls, Objective)):
            raise TypeError(f"register_objective({name!r}) decorates Objective subclasses; received {cls!r}")
        previous = OBJECTIVES.get(name)
        if previous is not None and previous.__qualname__ != cls.__qualname__:
            raise ValueError(f"an objective named {name!r} is registered already ({previous.__qualname__})")
        cls.name = name
        OBJECTIVES[name] = cls
        return cls

    return register


def get_objective(name: str, argument: str = "objective") -> type[Objective]:
    """The objective class registered as ``name``; the error lists the registered names."""
    if not isinstance(name, str):
        raise TypeError(f"{argument} must be the name of a registered objective, one of {tuple(OBJECTIVES)}; "
                        f"received {type(name).__name__} {name!r}")  # fmt: skip
    if name not in OBJECTIVES:
        names = tuple(OBJECTIVES)
        raise ValueError(f"{argument} must be one of {names} (the registered objectives); received {name!r}")
    return OBJECTIVES[name]


def make_objective(name: str, model, guide=None, *, argument: str = "objective", **options) -> Objective:
    """``OBJECTIVES[name](model, guide, **options)``, with a clear error for an unknown name or option."""
    cls = get_objective(name, argument)
    if not cls.needs_guide and guide is not None:
        raise TypeError(f"the {name!r} objective fits the model alone and takes no guide; received guide "
                        f"{type(guide).__name__}: pass None")  # fmt: skip
    try:
        return cls(model, guide, **options) if cls.needs_guide else cls(model, **options)
    except TypeError as error:
        if "unexpected keyword argument" in str(error):
            raise TypeError(f"the {name!r} objective does not take that option: {error}") from None
        raise
