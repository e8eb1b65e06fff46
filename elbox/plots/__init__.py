"""Figures (matplotlib, imported lazily; nothing in the core imports this package)."""

from elbox.plots.frames import plot_frames
from elbox.plots.gradients import plot_annealing, plot_temperature_tradeoff
from elbox.plots.rate_distortion import plot_rate_distortion
from elbox.plots.report import plot_bracket, plot_gaps, plot_khat, plot_kl_per_dim, render_html, write_html_report
from elbox.plots.sequences import plot_forecast, plot_gap_over_time, plot_prediction, plot_state_path, plot_trajectory
from elbox.plots.traces import plot_traces
from elbox.plots.vae import plot_latent_space, plot_reconstructions, plot_samples, plot_training

__all__ = [
    "plot_annealing",
    "plot_bracket",
    "plot_frames",
    "plot_gap_over_time",
    "plot_gaps",
    "plot_khat",
    "plot_kl_per_dim",
    "plot_prediction",
    "plot_latent_space",
    "plot_rate_distortion",
    "plot_reconstructions",
    "plot_samples",
    "plot_state_path",
    "plot_temperature_tradeoff",
    "plot_training",
    "plot_traces",
    "plot_forecast",
    "plot_trajectory",
    "render_html",
    "write_html_report",
]
