"""Fitting: EM for models with a closed-form M-step, stochastic VI for everything."""

from elbox.inference.callbacks import Callback, FitState, Interrupted
from elbox.inference.em import em
from elbox.inference.fit import CompileWarning, fit
from elbox.inference.gradients import (
    GradientReport,
    GradientStats,
    GradientVariance,
    gradient_report,
    temperature_sweep,
)
from elbox.inference.history import (
    BoundaryWarning,
    BoundDecreaseWarning,
    ConvergenceWarning,
    DivergenceWarning,
    History,
)
from elbox.inference.options import FitOptions
from elbox.inference.refine import can_refine, local_guide, refine, register_local_guide
from elbox.inference.schedules import Schedule, temperature_annealing
from elbox.inference.select import Selection, select

__all__ = [
    "BoundDecreaseWarning",
    "BoundaryWarning",
    "Callback",
    "CompileWarning",
    "ConvergenceWarning",
    "DivergenceWarning",
    "FitOptions",
    "FitState",
    "GradientReport",
    "GradientStats",
    "GradientVariance",
    "History",
    "Interrupted",
    "Schedule",
    "Selection",
    "can_refine",
    "em",
    "fit",
    "gradient_report",
    "local_guide",
    "register_local_guide",
    "refine",
    "select",
    "temperature_annealing",
    "temperature_sweep",
]
