"""Figures (matplotlib, imported lazily; nothing in the core imports this package)."""

from elbox.plots.traces import plot_traces

__all__ = ["plot_traces"]
