"""Figures of a trained VAE: training curves, reconstructions, prior samples, the latent space."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
from torch import Tensor

from elbox._validation import check_positive_int
from elbox.plots._common import check_records, figure_data, save_png

__all__ = ["plot_latent_space", "plot_reconstructions", "plot_samples", "plot_training"]


def plot_training(records: Sequence[dict], path: str | os.PathLike | None = None, *, title: str = "Training"):
    """The bound (and validation bound), reconstruction and KL per epoch, from metrics.jsonl's
    records (``epoch``, ``bound``, ``reconstruction``, ``kl``, ``validation``).

    Returns:
        The matplotlib ``Figure``.
    """
    from matplotlib.figure import Figure

    records = check_records(records)
    epochs = [r["epoch"] for r in records]

    def series(name):
        return [math.nan if r.get(name) is None else r[name] for r in records]

    fig = Figure(figsize=(11, 3.6), layout="constrained")
    axes = fig.subplots(1, 3)
    axes[0].plot(epochs, series("bound"), label="training bound")
    if any(r.get("validation") is not None for r in records):
        axes[0].plot(epochs, series("validation"), label="validation bound")
    axes[0].set_title("bound (nats per point)")
    axes[0].legend(fontsize=8)
    axes[1].plot(epochs, series("reconstruction"), color="tab:green")
    axes[1].set_title("reconstruction E_q[log p(x|z)]")
    axes[2].plot(epochs, series("kl"), color="tab:red")
    axes[2].set_title("KL(q(z|x) ‖ p(z))")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    save_png(fig, path)
    return fig


def _image_side(dim: int) -> int | None:
    side = math.isqrt(dim)
    return side if side * side == dim else None


#: Flat RGB images of the convolutional VAE, 3 × 64 × 64, drawn in colour.
_RGB_DIM = 3 * 64 * 64


def _draw_grid(fig, rows: list[Tensor], labels: list[str] | None = None) -> None:
    """Each row a sequence of points: images where the dimension is square, else curves."""
    n_cols = max(r.shape[0] for r in rows)
    axes = fig.subplots(len(rows), n_cols, squeeze=False)
    side = _image_side(rows[0].shape[-1])
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= row.shape[0]:
                ax.axis("off")
                continue
            point = row[j].detach().cpu().float()
            if point.numel() == _RGB_DIM:  # channels first, as the convolutions read them
                ax.imshow(point.reshape(3, 64, 64).permute(1, 2, 0).clamp(0, 1).numpy())
            elif side is not None:
                ax.imshow(point.reshape(side, side).numpy(), cmap="gray_r", vmin=0, vmax=1)
            else:
                ax.plot(point.numpy(), lw=0.8)
        if labels is not None:
            axes[i][0].set_ylabel(labels[i], fontsize=8)


def plot_reconstructions(x: Tensor, reconstruction: Tensor, path: str | os.PathLike | None = None, *, title=None):
    """Inputs (top row) above their reconstructions (bottom row), ``[n, D]`` each."""
    from matplotlib.figure import Figure

    x = figure_data(x, "x", 2)
    reconstruction = figure_data(reconstruction, "reconstruction", 2, length=len(x))
    if reconstruction.shape != x.shape:
        raise ValueError(f"reconstruction must have x's shape {list(x.shape)}; received {list(reconstruction.shape)}")
    n = x.shape[0]
    fig = Figure(figsize=(max(n, 4) * 0.7, 1.9), layout="constrained")
    _draw_grid(fig, [x, reconstruction], ["input", "reconstruction"])
    fig.suptitle(title or "Inputs and their reconstructions E[x | z = E_q[z|x]]", fontsize=10)
    save_png(fig, path)
    return fig


def plot_samples(means: Tensor, path: str | os.PathLike | None = None, *, columns: int = 8, title=None):
    """Decoder means at draws z ~ p(z), ``[n, D]``, in rows of ``columns``."""
    from matplotlib.figure import Figure

    columns = check_positive_int(columns, "columns")
    rows = list(figure_data(means, "means", 2).split(columns))
    fig = Figure(figsize=(columns * 0.8, len(rows) * 0.85 + 0.4), layout="constrained")
    _draw_grid(fig, rows)
    fig.suptitle(title or "Samples from the prior: E[x | z], z ~ N(0, I)", fontsize=10)
    save_png(fig, path)
    return fig


def plot_latent_space(codes: Tensor, labels: Tensor | None = None, path: str | os.PathLike | None = None):
    """The encoder means E_q[z | x], ``[n, L]``: directly when L = 2, else projected onto their
    first two principal components; coloured by label where labels exist."""
    from matplotlib.figure import Figure

    codes = figure_data(codes, "codes", 2).double()
    if labels is not None:
        labels = figure_data(labels, "labels", 1, length=len(codes), integer=True)
    if codes.shape[1] == 1:
        points, axis_names = torch.cat([codes, torch.zeros_like(codes)], 1), ("z", "")
    elif codes.shape[1] == 2:
        points, axis_names = codes, ("z₁", "z₂")
    else:
        centred = codes - codes.mean(0)
        _, s, vh = torch.linalg.svd(centred, full_matrices=False)
        points = centred @ vh[:2].T
        share = (s[:2].square().sum() / s.square().sum()).item()
        axis_names = ("PC 1", f"PC 2 (two PCs: {share:.0%} of the variance)")
    fig = Figure(figsize=(6, 5), layout="constrained")
    ax = fig.add_subplot()
    if labels is None:
        ax.scatter(points[:, 0], points[:, 1], s=4, alpha=0.6)
    else:
        import numpy as np
        from matplotlib.colors import BoundaryNorm

        values = labels.cpu().numpy()
        lo, hi = int(values.min()), int(values.max())
        bounds = np.arange(lo - 0.5, hi + 1.5)  # one colour band per label, its tick in the middle
        norm = BoundaryNorm(bounds, 256)
        scatter = ax.scatter(points[:, 0], points[:, 1], c=values, cmap="tab10", norm=norm, s=4, alpha=0.7)
        fig.colorbar(scatter, ax=ax, label="label", ticks=np.arange(lo, hi + 1))
    ax.set_xlabel(axis_names[0])
    ax.set_ylabel(axis_names[1])
    ax.set_title(f"Latent space: encoder means ({codes.shape[1]}-d)")
    ax.grid(alpha=0.3)
    save_png(fig, path)
    return fig
