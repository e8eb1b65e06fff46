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
_SIMULATION_RUNS = 8  # a simulated forecast's independent runs (the deep Markov model's default)


def forecast_run(run_dir: str | os.PathLike, steps: int, *, level: float = 0.9, sequence: int = 0,
                 inputs: str | os.PathLike | None = None) -> dict:  # fmt: skip
    """Forecasts every training sequence of a run ``steps`` steps past its end with the fitted
    model's ``forecast`` (exact for the HMM and the linear-Gaussian model; by simulation for the
    deep Markov model, its trained guide proposing in the filter, and the world model, each as 8
    independent runs with Monte Carlo errors in the ``*_se`` columns), writes the table
    (``forecast.csv``: one row per sequence, step ahead and coordinate) and the figure of sequence
    ``sequence`` (``forecast.png``: history, mean, interval, and the held-out steps that followed
    where the run holds out the end of each series, ``[data] split = "time"``).

    A model with inputs (an LGSSM with controls, a DMM with covariates, a world model's actions)
    needs the future steps' inputs: ``inputs``, a ``.npy`` file of ``[sequences, steps, input size]``.

    Returns:
        ``{"forecast": Forecast, "table": path, "figure": path or None}``.
    """
    steps, level = check_steps(steps), check_level(level)
    run = load_run(run_dir)
    model = run.model
    if not callable(getattr(model, "forecast", None)):
        raise ConfigError(f"forecast: a {run.config['model']['type']!r} model has no forecast (the sequence models "
                          "have: 'hmm', 'lgssm', 'dmm', 'world')")  # fmt: skip
    x, _ = load_data(run.config, "train")
    if not 0 <= sequence < len(x):
        raise ValueError(f"sequence must index one of the {len(x)} training sequences; received {sequence}")
    parameters = inspect.signature(model.forecast).parameters
    options = {"guide": run.guide} if "guide" in parameters else {}
    if "num_runs" in parameters:  # a simulated forecast: independent runs, for its Monte Carlo errors
        options["num_runs"] = _SIMULATION_RUNS
    width = getattr(model, "action_dim", 0) or getattr(model, "input_dim", 0)
    if inputs is not None and not width:
        raise ConfigError(f"--inputs: a {run.config['model']['type']!r} model of this run takes no inputs")
    if width:
        if inputs is None:
            kind = run.config["model"]["type"]
            raise ConfigError(f"forecast: this {kind!r} model takes {width} input(s) a step: pass the future steps' "
                              f"inputs as --inputs FILE.npy, an array [{len(x)}, {steps}, {width}] (sequences, steps "
                              "ahead, inputs)")  # fmt: skip
        options["inputs"] = _future_inputs(inputs)
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


def _future_inputs(path):
    """The ``.npy`` array of the future steps' inputs (the model checks its shape)."""
    import numpy as np
    import torch

    path = Path(path)
    if path.suffix != ".npy" or not path.is_file():
        raise ConfigError(f"--inputs must be an existing .npy file; received {str(path)!r}")
    array = np.load(path, allow_pickle=False)
    if array.dtype.kind not in "biuf":
        raise ConfigError(f"--inputs: {path} must hold numbers; it holds {array.dtype}")
    return torch.from_numpy(np.ascontiguousarray(array)).double()


def _held_out(config: dict, sequence: int, steps: int):
    """The steps that followed the training part of sequence ``sequence`` (validation, then test)
    where the run holds out the end of each series; None otherwise."""
    if config["data"].get("split") != "time":
        return None
    from elbox.runs.data import time_continuation

    return time_continuation(config, sequence, steps)
