"""The figures a run directory holds: the training curves of every run, and the model type's own
(a VAE's reconstructions, samples and latent space)."""

from __future__ import annotations

from pathlib import Path

import torch

from elbox.io import RunDirectory
from elbox.runs.config import check_config
from elbox.runs.data import data_name
from elbox.runs.types import MODEL_TYPES

__all__ = ["make_figures"]


@torch.no_grad()
def make_figures(run: RunDirectory, config: dict, model) -> list[Path]:
    """The training curves for every model, then the figures its model type draws
    (:attr:`~elbox.runs.ModelType.figures`); returns the paths written."""
    from elbox import plots

    if not isinstance(run, RunDirectory):
        raise TypeError(f"run must be an elbox.io.RunDirectory; received {type(run).__name__}")
    kind = MODEL_TYPES[check_config(config)["model"]["type"]]
    paths = []
    records = run.read_metrics()
    if records:
        paths.append(run.path / "training.png")
        plots.plot_training(records, paths[0], title=f"{kind.name} on {data_name(config)}")
    if kind.figures is not None:
        paths += list(kind.figures(run.path, config, model))
    return paths
