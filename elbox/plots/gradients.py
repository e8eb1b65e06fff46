"""Figures of gradient estimators: the relaxation's bias and variance against τ, and τ, the bound
and the gradient's variance over a training run."""

from __future__ import annotations

import os
from collections.abc import Sequence

__all__ = ["plot_annealing", "plot_temperature_tradeoff"]


def plot_temperature_tradeoff(report, path: str | os.PathLike | None = None, *, references=None,
                              title: str = "Gumbel-Softmax: bias and variance against τ"):  # fmt: skip
    """Bias (with two standard errors) and variance of a relaxed estimator's gradient against τ,
    from :func:`~elbox.inference.temperature_sweep`; the unbiased estimators of ``references``
    (a :class:`~elbox.inference.GradientReport`) as horizontal lines of their variance.

    Returns:
        The matplotlib ``Figure``.
    """
    from matplotlib.figure import Figure

    from elbox.inference.gradients import GradientReport
    from elbox.plots._common import save_png

    if not isinstance(report, GradientReport):
        raise TypeError(f"report must be a GradientReport (from temperature_sweep); received {type(report).__name__}")
    rows = [s for s in report.estimators if s.temperature is not None]
    if not rows or rows[0].bias is None:
        raise ValueError("plot_temperature_tradeoff needs a temperature sweep against the exact gradient "
                         "(temperature_sweep on a q whose support can be enumerated)")  # fmt: skip
    rows.sort(key=lambda s: s.temperature)
    taus = [s.temperature for s in rows]
    fig = Figure(figsize=(9, 3.8), layout="constrained")
    ax_bias, ax_var = fig.subplots(1, 2)
    ax_bias.errorbar(taus, [s.bias for s in rows], yerr=[2 * s.bias_stderr for s in rows], marker="o", capsize=3,
                     label="‖mean − exact‖")  # fmt: skip
    ax_bias.plot(taus, [s.bias_stderr for s in rows], ls=":", color="0.4", label="noise floor (1 se)")
    ax_bias.set_ylabel("bias of the gradient")
    ax_var.plot(taus, [s.variance for s in rows], marker="o", label="relaxed")
    if references is not None:
        for i, s in enumerate(references.estimators):
            ax_var.axhline(s.variance, ls="--", lw=1, color=f"C{i + 1}", label=s.name)
    ax_var.set_ylabel("variance of the gradient (tr Cov)")
    for ax in (ax_bias, ax_var):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("temperature τ")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    save_png(fig, path)
    return fig


def plot_annealing(records: Sequence[dict], path: str | os.PathLike | None = None, *,
                   title: str = "Annealing: τ, the bound and the gradient's variance"):  # fmt: skip
    """τ, the training bound and (where measured by :class:`~elbox.inference.GradientVariance`)
    the gradient's variance per epoch, from the metrics records (``metrics.jsonl``'s lines, or
    dicts with ``epoch``, ``temperature``, ``bound`` and ``gradient_variance``).

    Returns:
        The matplotlib ``Figure``.
    """
    from matplotlib.figure import Figure

    from elbox.plots._common import save_png

    if not records or "temperature" not in records[0]:
        raise ValueError("plot_annealing needs metrics records with a 'temperature' (a run with a temperature "
                         "schedule)")  # fmt: skip
    epochs = [r["epoch"] for r in records]
    measured = [(r["epoch"], r["gradient_variance"]) for r in records if r.get("gradient_variance") is not None]
    panels = 3 if measured else 2
    fig = Figure(figsize=(7, 2.3 * panels), layout="constrained")
    axes = fig.subplots(panels, 1, sharex=True)
    axes[0].plot(epochs, [r["temperature"] for r in records], color="C3")
    axes[0].set_ylabel("τ")
    axes[1].plot(epochs, [r["bound"] for r in records], color="C0")
    axes[1].set_ylabel("bound (nats)")
    if measured:
        axes[2].plot(*zip(*measured), marker=".", color="C2")
        axes[2].set_yscale("log")
        axes[2].set_ylabel("gradient variance")
    axes[-1].set_xlabel("epoch")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].set_title(title)
    save_png(fig, path)
    return fig
