"""Episode returns of several policies: each episode a dot, the mean with its standard error."""

from __future__ import annotations

import math
import os
from pathlib import Path

from elbox.plots._common import save_png

__all__ = ["plot_returns"]


def plot_returns(rows, path: str | os.PathLike | None = None, *, title: str = "Episode returns (mean ± SE)"):
    """One column per policy: every episode's return as a dot, the mean as a bar with ± one standard
    error.

    Args:
        rows: ``[{"policy": name, "returns": [...], "mean": m, "stderr": se}, ...]`` (what
            :func:`elbox.runs.plan.plan_run` returns).
        path: If given, the PNG is written there (atomically); the path is returned.
        title: The figure's title.

    Returns:
        ``path`` as a :class:`~pathlib.Path` where given, else the matplotlib ``Figure``.
    """
    from matplotlib.figure import Figure

    rows = list(rows)
    if not rows or not all(isinstance(r, dict) and {"policy", "returns", "mean", "stderr"} <= set(r) for r in rows):
        raise ValueError("rows must be a non-empty list of {'policy', 'returns', 'mean', 'stderr'} dicts; received "
                         f"{rows!r}"[:200])  # fmt: skip
    fig = Figure(figsize=(1.8 + 1.6 * len(rows), 4), layout="constrained")
    ax = fig.add_subplot()
    for i, row in enumerate(rows):
        n = len(row["returns"])
        offsets = [i + 0.25 * ((j + 0.5) / n - 0.5) for j in range(n)]
        ax.scatter(offsets, row["returns"], s=12, color="0.55", zorder=2)
        stderr = row["stderr"] if math.isfinite(row["stderr"]) else 0.0
        ax.errorbar([i], [row["mean"]], yerr=[stderr], fmt="o", color="C0", capsize=6, markersize=7, zorder=3)
        ax.annotate(f"{row['mean']:.0f} ± {stderr:.0f}", (i, row["mean"]), xytext=(12, 0),
                    textcoords="offset points", va="center", fontsize=8)  # fmt: skip
    ax.set_xticks(range(len(rows)), [row["policy"] for row in rows])
    ax.set_xlim(-0.6, len(rows) - 0.4)
    ax.set_ylabel("return (sum of rewards)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    if path is None:
        return fig
    save_png(fig, path)
    return Path(path)
