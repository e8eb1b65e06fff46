"""Figures (matplotlib, imported lazily; nothing in the core imports this package)."""

from elbox.plots.rate_distortion import plot_rate_distortion
from elbox.plots.sequences import plot_state_path, plot_trajectory
from elbox.plots.traces import plot_traces

__all__ = ["plot_rate_distortion", "plot_state_path", "plot_trajectory", "plot_traces"]
