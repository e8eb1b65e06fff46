"""A run's forecast (``elbox forecast RUN --steps k``): each training sequence continued k steps
by the fitted model, written as forecast.csv and drawn as forecast.png."""

from __future__ import annotations

import csv
import inspect
import io
import os
from pathlib import Path

from elbox.io import RunDirectory, atomic_write_text
from elbox.models.forecast import check_level, check_steps
from elbox.runs.config import ConfigError
from elbox.runs.data import load_data
from elbox.runs.load import load_run

__all__ = ["forecast_run"]

_COLUMNS = ("sequence", "step", "coordinate", "mean", "sd", "lower", "upper", "level")
_SIMULATION_COLUMNS = ("mean_se", "lower_se", "upper_se")  # a simulated forecast's Monte Carlo errors


def forecast_run(run_dir: str | os.PathLike, steps: int, *, level: float = 0.9, sequence: int = 0) -> dict:
    """Forecasts every training sequence of a run ``steps`` steps past its end with the fitted
    model's ``forecast`` (exact for the HMM and the linear-Gaussian model; by simulation for the
    deep Markov model, its trained guide proposing in the filter, with Monte Carlo errors in the
    ``*_se`` columns), writes the table
    (``forecast.csv``: one row per sequence, step ahead and coordinate) and the figure of sequence
    ``sequence`` (``forecast.png``: history, mean, interval, and the held-out steps that followed
    where the run holds out the end of each series, ``[data] split = "time"``).

    Returns:
        ``{"forecast": Forecast, "table": path, "figure": path or None}``.
    """
    steps, level = check_steps(steps), check_level(level)
    run = load_run(run_dir)
    model = run.model
    if not callable(getattr(model, "forecast", None)):
        raise ConfigError(f"forecast: a {run.config['model']['type']!r} model has no forecast (the sequence models "
                          "have: 'hmm', 'lgssm', 'dmm')")  # fmt: skip
    x, _ = load_data(run.config, "train")
    if not 0 <= sequence < len(x):
        raise ValueError(f"sequence must index one of the {len(x)} training sequences; received {sequence}")
    options = {"guide": run.guide} if "guide" in inspect.signature(model.forecast).parameters else {}
    forecast = model.forecast(x, steps, level=level, **options)
    columns = _COLUMNS + (_SIMULATION_COLUMNS if forecast.mean_stderr is not None else ())
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for b in range(len(x)):
        for row in forecast.table(b):
            writer.writerow({"sequence": b, **row})
    directory = RunDirectory.open(run_dir).path
    table = atomic_write_text(Path(directory) / "forecast.csv", buffer.getvalue())
    figure = None
    if forecast.variance is not None:
        from elbox.plots import plot_forecast

        length = int(x.mask[sequence].sum())
        truth = _held_out(run.config, sequence, steps)
        figure = Path(directory) / "forecast.png"
        plot_forecast(x.values[sequence, :length], forecast, figure, sequence=sequence, truth=truth,
                      title=f"{run.config['model']['type']}: {steps} steps ahead of sequence {sequence}")  # fmt: skip
    return {"forecast": forecast, "table": table, "figure": figure}


def _held_out(config: dict, sequence: int, steps: int):
    """The steps that followed the training part of sequence ``sequence`` (validation, then test)
    where the run holds out the end of each series; None otherwise."""
    if config["data"].get("split") != "time":
        return None
    from elbox.runs.data import time_continuation

    return time_continuation(config, sequence, steps)
