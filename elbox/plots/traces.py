"""The bound against iterations, for several fits of the same model on one figure."""

from __future__ import annotations

import os
from collections.abc import Mapping

__all__ = ["plot_traces"]


def plot_traces(
    histories: Mapping[str, object],
    path: str | os.PathLike | None = None,
    *,
    log_evidence: float | None = None,
    title: str = "Bound per iteration",
):
    """Plots each history's bound per iteration (EM) or per epoch (VI) on one set of axes.

    Args:
        histories: Label → :class:`~elbox.History`.
        path: If given, the PNG is written there (atomically).
        log_evidence: A reference line: the exact log p(x) per data point at the final
            parameters, which every ELBO lies below.
        title: The figure's title.

    Returns:
        The matplotlib ``Figure`` (no pyplot state is touched).
    """
    from matplotlib.figure import Figure

    from elbox.plots._common import save_png

    if not isinstance(histories, Mapping) or not histories:
        raise TypeError(f"histories must be a non-empty dict of label → elbox.History; received "
                        f"{type(histories).__name__} {histories!r}"[:200])  # fmt: skip
    for label, history in histories.items():
        if not hasattr(history, "lower_bound"):
            raise TypeError(f"histories[{label!r}] must be an elbox.History (from fit or em); received "
                            f"{type(history).__name__}")  # fmt: skip
    fig = Figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for label, history in histories.items():
        values = history.lower_bound
        ax.plot(range(1, len(values) + 1), values, label=f"{label} ({history.method})", lw=1.8)
    if log_evidence is not None:
        ax.axhline(log_evidence, color="0.3", ls="--", lw=1, label="exact log p(x), final θ")
    ax.set_xscale("log")
    ax.set_xlabel("iteration (EM) / epoch (VI)")
    ax.set_ylabel("bound per data point (nats)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    save_png(fig, path)
    return fig
