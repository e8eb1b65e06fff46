"""Inferred latent sequences against the truth: HMM state paths and state-space trajectories."""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import Tensor

from elbox.plots._common import figure_data, save_png

__all__ = ["plot_gap_over_time", "plot_state_path", "plot_trajectory"]


def plot_state_path(
    marginals: Tensor,
    path: str | os.PathLike | None = None,
    *,
    true_states: Tensor | None = None,
    decoded: Tensor | None = None,
    observations: Tensor | None = None,
    title: str = "HMM: posterior state probabilities",
):
    """One sequence's smoothed p(z_t = k | x) as a heat map, with the true and Viterbi paths.

    Args:
        marginals: ``[T, K]``, e.g. ``model.posterior(x).marginals()[b]``.
        path: If given, the PNG is written there (atomically).
        true_states: ``[T]``, the states that generated the data, where known.
        decoded: ``[T]``, e.g. the Viterbi path.
        observations: ``[T, D]`` or ``[T]``, drawn in a panel above.
        title: The figure's title.

    Returns:
        The matplotlib ``Figure`` (no pyplot state is touched).
    """
    from matplotlib.figure import Figure

    probs = figure_data(marginals, "marginals", 2).numpy()
    T, K = probs.shape
    true_states = None if true_states is None else figure_data(true_states, "true_states", 1, length=T, integer=True)
    decoded = None if decoded is None else figure_data(decoded, "decoded", 1, length=T, integer=True)
    if observations is not None and len(figure_data(observations, "observations", (1, 2))) != T:
        raise ValueError(f"observations must have T = {T} rows (one per step); received shape "
                         f"{list(observations.shape)}")  # fmt: skip
    rows = 2 if observations is not None else 1
    fig = Figure(figsize=(9, 2.2 + 1.8 * rows), layout="constrained")
    axes = fig.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
    if observations is not None:
        obs = observations.detach().cpu().numpy().reshape(T, -1)
        axes[0].plot(obs, lw=0.9)
        axes[0].set_ylabel("x_t")
    ax = axes[-1]
    ax.imshow(
        probs.T,
        aspect="auto",
        origin="lower",
        cmap="Blues",
        vmin=0,
        vmax=1.4,
        extent=(-0.5, T - 0.5, -0.5, K - 0.5),
        interpolation="nearest",
    )
    if true_states is not None:
        ax.plot(true_states.detach().cpu().numpy(), "o", ms=3, color="tab:orange", label="true state")
    if decoded is not None:
        ax.plot(decoded.detach().cpu().numpy(), "-", lw=1, color="tab:red", label="Viterbi path")
    ax.set_xlabel("t")
    ax.set_yticks(range(K))
    ax.set_ylabel("state (shade: p(z_t | x))")
    if true_states is not None or decoded is not None:
        ax.legend(loc="upper right", fontsize=8)
    axes[0].set_title(title)
    save_png(fig, path)
    return fig


def plot_trajectory(
    mean: Tensor,
    variance: Tensor,
    path: str | os.PathLike | None = None,
    *,
    true_states: Tensor | None = None,
    title: str = "State-space model: smoothed states",
):
    """Each state dimension's smoothed mean with a ±2 sd band, against the true trajectory.

    Args:
        mean: ``[T, D]``, e.g. ``model.posterior(x).mean[b]``.
        variance: ``[T, D]``, e.g. ``model.posterior(x).variance[b]``.
        path: If given, the PNG is written there (atomically).
        true_states: ``[T, D]``, where known.
        title: The figure's title.

    Returns:
        The matplotlib ``Figure``.
    """
    from matplotlib.figure import Figure

    m = figure_data(mean, "mean", 2).numpy()
    T, D = m.shape
    variance = figure_data(variance, "variance", 2, length=T)
    if tuple(variance.shape) != (T, D) or (variance < 0).any():
        raise ValueError(f"variance must be non-negative, of mean's shape [{T}, {D}]; received shape "
                         f"{list(variance.shape)}")  # fmt: skip
    sd = variance.numpy() ** 0.5
    if true_states is not None and tuple(figure_data(true_states, "true_states", 2).shape) != (T, D):
        raise ValueError(f"true_states must have mean's shape [{T}, {D}]; received shape {list(true_states.shape)}")
    fig = Figure(figsize=(9, 1.2 + 1.6 * D), layout="constrained")
    axes = fig.subplots(D, 1, sharex=True, squeeze=False)[:, 0]
    t = range(T)
    for d, ax in enumerate(axes):
        ax.fill_between(t, m[:, d] - 2 * sd[:, d], m[:, d] + 2 * sd[:, d], color="tab:blue", alpha=0.2, lw=0)
        ax.plot(t, m[:, d], color="tab:blue", lw=1.2, label="smoothed mean ± 2 sd")
        if true_states is not None:
            ax.plot(t, true_states[:, d].detach().cpu().numpy(), color="tab:orange", lw=1, label="true state")
        ax.set_ylabel(f"z[{d}]")
    axes[0].legend(loc="upper right", fontsize=8)
    axes[0].set_title(title)
    axes[-1].set_xlabel("t")
    save_png(fig, path)
    return fig


def plot_forecast(
    history: Tensor,
    forecast,
    path: str | os.PathLike | None = None,
    *,
    sequence: int = 0,
    truth: Tensor | None = None,
    title: str = "Forecast",
):
    """One sequence's history, its forecast's mean and central interval, and (where known) what
    followed, one panel per coordinate.

    Args:
        history: The observed steps ``[T, D]`` of that sequence (NaN where missing: a gap in the line).
        forecast: A :class:`~elbox.models.forecast.Forecast` (its sequence ``sequence`` is drawn).
        path: If given, the PNG is written there (atomically).
        sequence: Which of the forecast's sequences.
        truth: ``[k', D]``, the steps that did follow (held-out data), drawn beside the forecast.
        title: The figure's title.

    Returns:
        The matplotlib ``Figure``.
    """
    from matplotlib.figure import Figure

    raw = history if isinstance(history, Tensor) else torch.as_tensor(np.asarray(history))
    gaps = torch.isnan(raw.detach().cpu()) if raw.is_floating_point() else None  # missing observations
    h = figure_data(raw if gaps is None else torch.where(gaps, 0.0, raw.detach().cpu()), "history", 2).numpy()
    if gaps is not None and bool(gaps.any()):
        h[gaps.numpy()] = np.nan  # a gap in the line
    T, D = h.shape
    if forecast.variance is None:
        raise ValueError("forecast: symbols' probabilities have no interval to draw; plot forecast.mean instead")
    mean = forecast.mean[sequence].detach().cpu().numpy()
    lower, upper = forecast.lower[sequence].detach().cpu().numpy(), forecast.upper[sequence].detach().cpu().numpy()
    k = mean.shape[0]
    if mean.shape[1] != D:
        raise ValueError(f"history must have the forecast's {mean.shape[1]} coordinates; received {D}")
    fig = Figure(figsize=(9, 1.2 + 1.8 * D), layout="constrained")
    axes = fig.subplots(D, 1, sharex=True, squeeze=False)[:, 0]
    ahead = range(T, T + k)
    for d, ax in enumerate(axes):
        ax.plot(range(T), h[:, d], color="black", lw=1, label="observed")
        ax.fill_between(ahead, lower[:, d], upper[:, d], color="tab:blue", alpha=0.25, lw=0,
                        label=f"{100 * forecast.level:g}% interval")  # fmt: skip
        ax.plot(ahead, mean[:, d], color="tab:blue", lw=1.5, label="forecast mean")
        if truth is not None:
            t = figure_data(truth, "truth", 2).numpy()
            ax.plot(range(T, T + len(t)), t[:, d], color="tab:orange", lw=1, label="held out")
        ax.set_ylabel(f"x[{d}]")
    axes[0].legend(loc="upper left", fontsize=8)
    axes[-1].set_xlabel("step")
    fig.suptitle(title)
    save_png(fig, path)
    return fig


def plot_gap_over_time(report, path: str | os.PathLike | None = None, *, title: str | None = None):
    """The gap log p̂(x_t | x_<t) − ELBO_t at each step, averaged over the sequences that reach it,
    with ELBO_t and the filter's increments beside it (a :class:`~elbox.evidence.SequenceReport`).

    Returns:
        The matplotlib ``Figure`` (no pyplot state is touched).
    """
    import torch
    from matplotlib.figure import Figure

    gap = report.mean_gap_by_step()
    lengths = torch.tensor(report.lengths)
    mask = torch.arange(len(gap)) < lengths.unsqueeze(-1)
    count = mask.sum(0).clamp_min(1)
    elbo_t = ((torch.tensor(report.elbo_steps) * mask).sum(0) / count).tolist()
    inc_t = ((torch.tensor(report.log_increments) * mask).sum(0) / count).tolist()
    fig = Figure(figsize=(9, 5), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.plot(inc_t, lw=1, label="log p̂(x_t | x_<t) (SMC)")
    top.plot(elbo_t, lw=1, label=f"ELBO_t (KL {report.kl_method})")
    top.set_ylabel("nats")
    top.legend(loc="lower right", fontsize=8)
    bottom.plot(gap, lw=1, color="tab:red")
    bottom.axhline(0.0, color="0.6", lw=0.6)
    bottom.set_ylabel("gap_t (nats)")
    bottom.set_xlabel("time step t")
    total = sum(report.gap) / max(len(report.gap), 1)
    fig.suptitle(title or f"The gap at every time step: {total:.2f} nats per sequence on average "
                          f"({len(report.gap)} sequences, {report.num_samples} particles × {report.num_runs} runs)")
    if path is not None:
        save_png(fig, path)
    return fig


def plot_prediction(table: dict, path: str | os.PathLike | None = None, *, title: str | None = None):
    """Prediction against horizon: the j-step-ahead log-likelihood (top) and squared error of the
    predicted mean (bottom) of several predictors, each with a band of ± 2 standard errors over
    the test sequences.

    Args:
        table: ``{name: {"log_likelihood": [k], "log_likelihood_stderr": [k], "mse": [k],
            "mse_stderr": [k]}}``, as ``bench/world_prediction.py`` writes it.
        path: Where to write the PNG (None: only return the figure).
        title: The figure's title.

    Returns:
        The matplotlib ``Figure`` (no pyplot state is touched).
    """
    from matplotlib.figure import Figure

    if not isinstance(table, dict) or not table:
        raise ValueError(f"table must map predictor names to their per-horizon rows; received {table!r}")
    fig = Figure(figsize=(9, 6), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    for name, row in table.items():
        missing = {"log_likelihood", "log_likelihood_stderr", "mse", "mse_stderr"} - set(row)
        if missing:
            raise ValueError(f"table[{name!r}] lacks {sorted(missing)}")
        horizon = range(1, len(row["log_likelihood"]) + 1)
        for axes, key in ((top, "log_likelihood"), (bottom, "mse")):
            mean, se = row[key], row[key + "_stderr"]
            (line,) = axes.plot(horizon, mean, lw=1.2, label=name)
            axes.fill_between(horizon, [m - 2 * s for m, s in zip(mean, se)], [m + 2 * s for m, s in zip(mean, se)],
                              color=line.get_color(), alpha=0.2, lw=0)  # fmt: skip
    top.set_ylabel("log p(o_{c+j} | o_{1:c}, a) (nats)")
    top.legend(fontsize=8)
    bottom.set_ylabel("squared error of the mean")
    bottom.set_yscale("log")
    bottom.set_xlabel("horizon j (steps after the context)")
    fig.suptitle(title or "Prediction against horizon (bands: ± 2 standard errors over the test sequences)")
    if path is not None:
        save_png(fig, path)
    return fig
