r"""Gradient diagnostics: an estimator's bias against the exact gradient and its variance over draws.

For a model and a guide with a discrete q of small support, the exact gradient of the ELBO is a
sum (:func:`~elbox.bounds.enumerate_joint`); every estimator's gradient is a random vector whose
mean and spread are measured here from R independent draws, each under its own seed:

.. math:: \mathrm{bias} = \big\|\bar g - \nabla\mathcal{L}\big\|, \qquad
          \mathrm{variance} = \mathrm{tr}\,\widehat{\mathrm{Cov}}(g) = \sum_j \widehat{\mathrm{Var}}(g_j),

each with its standard error. The relaxed estimators trade one for the other through τ;
:func:`temperature_sweep` measures that trade-off and :class:`GradientVariance` records the
variance over a training run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from elbox._validation import check_positive_int, check_seed, describe
from elbox.distributed import seed_for, seeded
from elbox.inference.callbacks import Callback, FitState

__all__ = ["GradientReport", "GradientStats", "GradientVariance", "gradient_report", "temperature_sweep"]

_WITH_RESPECT_TO = ("guide", "model", "all")


@dataclass
class GradientStats:
    """One estimator's gradient over R draws, against the exact gradient where there is one.

    Attributes:
        name: The estimator (the objective's registered name, with its options).
        repeats: R, the draws.
        variance: tr Cov(g), the summed variance of the gradient's coordinates.
        variance_stderr: Its standard error (normal approximation, √(2 Σ_j Var_j² / (R − 1))).
        bias: ‖mean g − exact‖ (None without an exact gradient).
        bias_stderr: √(tr Cov(g) / R), the noise in the mean: a bias below about twice it is not
            resolved by R draws.
        max_z: The largest |mean g_j − exact_j| / se_j over the P coordinates. Of an unbiased
            estimator it is about √(2 ln P) (3.0 for 100 coordinates, 4.1 for 5,000): far above
            that, the estimator is biased at this resolution.
        cosine: The cosine between the mean gradient and the exact one.
        seconds: Seconds per gradient draw.
        temperature: τ where the objective has one.
    """

    name: str
    repeats: int
    variance: float
    variance_stderr: float
    bias: float | None = None
    bias_stderr: float | None = None
    max_z: float | None = None
    cosine: float | None = None
    seconds: float = math.nan
    temperature: float | None = None


@dataclass
class GradientReport:
    """The gradient statistics of several estimators on the same model, guide and data.

    Attributes:
        estimators: One :class:`GradientStats` per estimator, in the order given.
        exact_norm: ‖exact gradient‖ (None without one), the scale the biases are read against.
        parameters: Which parameters the gradient is of (``"guide"``, ``"model"`` or ``"all"``).
        num_parameters: Their number of coordinates.
    """

    estimators: list[GradientStats] = field(default_factory=list)
    exact_norm: float | None = None
    parameters: str = "guide"
    num_parameters: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        """A plain-text table, one estimator per line."""
        lines = [f"gradient of the {self.parameters}'s {self.num_parameters} parameters"]
        if self.exact_norm is not None:
            typical = math.sqrt(2 * math.log(max(self.num_parameters, 2)))
            lines[0] += (f"; ‖exact‖ = {self.exact_norm:.4g}; an unbiased estimator's max |z| is about "
                         f"√(2 ln P) = {typical:.1f}")  # fmt: skip
        lines.append(f"{'estimator':40s} {'bias ± se':>20s} {'max |z|':>8s} {'variance ± se':>22s} {'ms/draw':>8s}")
        for s in self.estimators:
            bias = f"{s.bias:.3g} ± {s.bias_stderr:.2g}" if s.bias is not None else "—"
            z = f"{s.max_z:.1f}" if s.max_z is not None else "—"
            lines.append(f"{s.name:40s} {bias:>20s} {z:>8s} {f'{s.variance:.3g} ± {s.variance_stderr:.2g}':>22s} "
                         f"{1000 * s.seconds:8.2f}")  # fmt: skip
        return "\n".join(lines)


def _parameters(objective, wrt: str) -> list[Tensor]:
    if wrt not in _WITH_RESPECT_TO:
        raise ValueError(f"parameters must be one of {_WITH_RESPECT_TO}; received {wrt!r}")
    if wrt == "guide":
        if objective.guide is None:
            raise TypeError(f"parameters='guide': the {objective.name!r} objective has no guide")
        params = [p for p in objective.guide.parameters() if p.requires_grad]
    elif wrt == "model":
        guide_ids = {id(p) for p in objective.guide.parameters()} if objective.guide is not None else set()
        params = [p for p in objective.model.parameters() if p.requires_grad and id(p) not in guide_ids]
    else:
        params = [p for p in objective.model.parameters() if p.requires_grad]
        if objective.guide is not None:
            seen = {id(p) for p in params}
            params += [p for p in objective.guide.parameters() if p.requires_grad and id(p) not in seen]
    if not params:
        raise ValueError(f"parameters={wrt!r}: there are no trainable parameters to take the gradient of")
    return params


def _gradient(objective, x, params: list[Tensor]) -> Tensor:
    """One draw of the estimator's gradient of the batch mean, flattened ``[P]``."""
    surrogate = objective(x).surrogate.mean()
    grads = torch.autograd.grad(surrogate, params, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)])


def _exact_gradient(model, guide, x, params) -> Tensor:
    from elbox.objectives.discrete import Enumerate

    return _gradient(Enumerate(model, guide, strategy="joint"), x, params).detach()


def _label(objective) -> str:
    options = {k: v for k, v in objective.options().items() if k not in ("max_support", "decay", "hidden")}
    text = ", ".join(f"{k}={v}" for k, v in options.items())
    return f"{objective.name or type(objective).__name__}" + (f" ({text})" if text else "")


def _stats(objective, x, params, exact: Tensor | None, repeats: int, seed: int, name: str) -> GradientStats:
    # the estimator's own state (moving averages) is put back after: the report changes nothing
    saved = {k: v.clone() for k, v in objective.state_dict().items()}
    rows = []
    start = time.perf_counter()
    try:
        for r in range(repeats):
            with seeded(seed_for(seed, r)):
                rows.append(_gradient(objective, x, params).detach().double())
    finally:
        objective.load_state_dict(saved)
    seconds = (time.perf_counter() - start) / repeats
    G = torch.stack(rows)  # [R, P]
    mean, var = G.mean(0), G.var(0)
    variance = float(var.sum())
    stats = GradientStats(
        name=name, repeats=repeats, variance=variance,
        variance_stderr=float((2 * var.square().sum() / (repeats - 1)).sqrt()), seconds=seconds,
        temperature=float(objective.temperature) if hasattr(objective, "temperature") else None,
    )  # fmt: skip
    if exact is not None:
        exact = exact.double()
        difference = mean - exact
        se = (var / repeats).sqrt()
        stats.bias = float(difference.norm())
        stats.bias_stderr = math.sqrt(variance / repeats)
        resolved = se > 0
        stats.max_z = float((difference[resolved].abs() / se[resolved]).max()) if resolved.any() else 0.0
        if (~resolved).any() and bool((difference[~resolved].abs() > 1e-9 * (1 + exact.abs().max())).any()):
            stats.max_z = math.inf  # a deterministic estimator that is off
        denominator = float(mean.norm() * exact.norm())
        stats.cosine = float(mean @ exact) / denominator if denominator > 0 else None
    return stats


def gradient_report(
    objectives,
    x,
    *,
    repeats: int = 500,
    parameters: str = "guide",
    exact: bool | None = None,
    seed: int = 0,
) -> GradientReport:
    r"""Each estimator's gradient on the same model, guide and data: its variance over ``repeats``
    draws and, where q's support can be enumerated, its bias against the exact ELBO gradient.

    The exact gradient is the joint enumeration's (:class:`~elbox.objectives.Enumerate`), the
    ELBO's: for an objective of another bound (IWAE, VIMCO, RWS, Rényi) the bias includes the
    difference between the bounds' gradients.

    Args:
        objectives: An :class:`~elbox.objectives.Objective`, a list of them, or a mapping from a
            label to one; all of the same model and guide.
        x: Data ``[B, *data_shape]``: each draw is the gradient of the mean over these points.
        repeats: R, the draws of each estimator (each under its own seed).
        parameters: The gradient of the guide's parameters (``"guide"``), the model's (``"model"``),
            or both (``"all"``).
        exact: Compare with the exact gradient (default: where q's joint support is enumerable).
        seed: Seeds the draws (torch's global RNG is left as it was).

    Returns:
        A :class:`GradientReport`.

    Example:
        >>> model = DiscreteVAE(6, num_variables=2, num_categories=3, hidden=(8,))
        >>> x, _ = model.sample(4)
        >>> make = elbox.objectives.make_objective
        >>> report = gradient_report({"gumbel-softmax": make("gumbel_softmax", model, model.guide),
        ...                           "nvil": make("score_function", model, model.guide, baseline="nvil")},
        ...                          x, repeats=50)
        >>> [s.name for s in report.estimators]
        ['gumbel-softmax', 'nvil']
    """
    from elbox.objectives import Objective

    if isinstance(objectives, Objective):
        objectives = {_label(objectives): objectives}
    elif not isinstance(objectives, Mapping):
        objectives = list(objectives) if isinstance(objectives, Iterable) else [objectives]
        objectives = {_label(o) if isinstance(o, Objective) else repr(o): o for o in objectives}
    if not objectives:
        raise ValueError("objectives must hold at least one objective")
    for label, o in objectives.items():
        if not isinstance(o, Objective):
            raise TypeError(f"objectives[{label!r}] must be an elbox Objective; received {type(o).__name__}")
    first = next(iter(objectives.values()))
    model, guide = first.model, first.guide
    for label, o in objectives.items():
        if o.model is not model or o.guide is not guide:
            raise ValueError(f"objectives[{label!r}] is of another model or guide: compare estimators on the same ones")
    repeats = check_positive_int(repeats, "repeats", minimum=2)
    seed = check_seed(seed) or 0
    x = model.check_data(x)
    params = _parameters(first, parameters)
    if exact is None or exact:
        try:
            reference = _exact_gradient(model, guide, x, params)
        except (TypeError, ValueError) as error:
            if exact:
                raise ValueError(f"exact=True needs a q whose joint support can be enumerated: {error}") from None
            reference = None
    else:
        reference = None
    report = GradientReport(parameters=parameters, num_parameters=sum(p.numel() for p in params),
                            exact_norm=float(reference.norm()) if reference is not None else None)  # fmt: skip
    for i, (label, objective) in enumerate(objectives.items()):
        report.estimators.append(_stats(objective, x, params, reference, repeats, seed_for(seed, i), label))
    return report


def temperature_sweep(objective, x, temperatures, *, repeats: int = 500, parameters: str = "guide",
                      seed: int = 0) -> GradientReport:  # fmt: skip
    r"""A relaxed estimator's bias and variance at each temperature: the trade-off that annealing
    answers (high τ: biased, low variance; low τ: less biased, noisier), measured. The
    objective's temperature is put back after.

    Args:
        objective: An objective with a ``temperature`` (``"gumbel_softmax"``).
        x: Data.
        temperatures: The τ's.
        repeats, parameters, seed: As for :func:`gradient_report`.

    Returns:
        A :class:`GradientReport` with one entry per τ (``temperature`` set on each).
    """
    from elbox.bounds.relaxed import check_temperature

    if not hasattr(objective, "temperature"):
        raise TypeError(f"temperature_sweep needs an objective with a temperature (gumbel_softmax); "
                        f"{objective.name or type(objective).__name__!r} has none")  # fmt: skip
    if isinstance(temperatures, str | bytes) or not hasattr(temperatures, "__iter__"):
        raise TypeError(f"temperatures must be a list of τ > 0; received {describe(temperatures)}")
    taus = [check_temperature(t, "temperatures") for t in temperatures]
    if not taus:
        raise ValueError("temperatures must hold at least one τ")
    before = objective.temperature.clone()
    report = None
    try:
        for tau in taus:
            objective.temperature.fill_(tau)
            one = gradient_report({f"τ = {tau:g}": objective}, x, repeats=repeats, parameters=parameters, seed=seed)
            if report is None:
                report = one
            else:
                report.estimators += one.estimators
    finally:
        objective.temperature.copy_(before)
    return report


class GradientVariance(Callback):
    """After every ``every``-th epoch: the training objective's gradient variance (tr Cov of the
    guide's gradient over ``repeats`` draws) on a fixed batch ``x``, recorded in the epoch's
    metrics as ``gradient_variance`` (and kept in :attr:`values` as (epoch, variance)).

    Args:
        x: The batch the gradient is taken on (the same every time).
        repeats: Draws per measurement.
        every: Epochs between measurements.
        parameters: ``"guide"``, ``"model"`` or ``"all"``.
        seed: Seeds the draws (the training stream is untouched).
    """

    measures = True

    def __init__(self, x, *, repeats: int = 50, every: int = 1, parameters: str = "guide", seed: int = 0):
        self.x = x
        self.repeats = check_positive_int(repeats, "repeats", minimum=2)
        self.every = check_positive_int(every, "every")
        if parameters not in _WITH_RESPECT_TO:
            raise ValueError(f"parameters must be one of {_WITH_RESPECT_TO}; received {parameters!r}")
        self.parameters = parameters
        self.seed = check_seed(seed) or 0
        self.values: list[tuple[int, float]] = []

    def on_epoch_end(self, state: FitState) -> None:
        epoch = state.epoch
        if epoch % self.every:
            return
        objective = state.objective
        x = objective.model.check_data(self.x)
        params = _parameters(objective, self.parameters)
        stats = _stats(objective, x, params, None, self.repeats, seed_for(self.seed, epoch), "")
        self.values.append((epoch, stats.variance))
        state.record["gradient_variance"] = stats.variance
