"""Rate against distortion: what a sweep of σ² (or β) trades."""

from __future__ import annotations

import os
from collections.abc import Sequence

from elbox.plots._common import save_png

__all__ = ["plot_rate_distortion"]


def plot_rate_distortion(
    points: Sequence[tuple[str, float, float]],
    path: str | os.PathLike | None = None,
    *,
    title: str = "Rate against distortion",
    distortion_label: str = "distortion: mean squared error",
):
    """One labelled point per fit: rate (KL(q ‖ p(z)), nats) against distortion.

    Args:
        points: ``(label, rate, distortion)`` per fit, in sweep order (joined by a line).
        path: If given, the PNG is written there (atomically).
        title: The figure's title.
        distortion_label: The x-axis label.

    Returns:
        The matplotlib ``Figure``.
    """
    from matplotlib.figure import Figure

    points = list(points)
    if not points or not all(isinstance(p, tuple | list) and len(p) == 3 for p in points):
        raise ValueError(f"points must be a non-empty list of (label, rate, distortion) triples; received "
                         f"{points!r}"[:200])  # fmt: skip
    fig = Figure(figsize=(6, 4.2), layout="constrained")
    ax = fig.add_subplot()
    rates = [p[1] for p in points]
    distortions = [p[2] for p in points]
    ax.plot(distortions, rates, "o-", color="tab:blue")
    middle = (min(distortions) + max(distortions)) / 2
    for label, rate, distortion in points:  # labels point inwards, so none is clipped at an edge
        right = distortion > middle
        ax.annotate(label, (distortion, rate), textcoords="offset points", xytext=(-6 if right else 6, 4),
                    ha="right" if right else "left", fontsize=9)  # fmt: skip
    ax.margins(x=0.08, y=0.12)
    ax.set_xlabel(distortion_label)
    ax.set_ylabel("rate: KL(q(z|x) ‖ p(z)) (nats)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    save_png(fig, path)
    return fig
