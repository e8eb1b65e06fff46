"""Strips of frames: rows of images side by side over time (true frames above a world model's imagined ones)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from elbox._validation import describe
from elbox.plots._common import figure_data, save_png

__all__ = ["plot_frames"]


def plot_frames(rows, path: str | os.PathLike | None = None, *, first_step: int = 1, every: int = 1,
                title: str | None = None, scale: float = 0.9):  # fmt: skip
    """Rows of frames, one column per step: e.g. an episode's true frames above the frames a world
    model imagined for the same steps (``model.imagine(...).observations[0]``).

    Args:
        rows: A dict ``{label: frames}``, each ``[K, C, H, W]`` channels first (C = 1 or 3) or
            ``[K, H, W]``, all of the same K, H and W: floats in [0, 1] (clipped there: a decoder's
            mean may stray) or uint8 0–255.
        path: If given, the PNG is written there (atomically); the path is returned.
        first_step: The step number of the first column (the columns are labelled with steps).
        every: Draw every ``every``-th step (1: all K).
        title: The figure's title.
        scale: Inches per frame.

    Returns:
        ``path`` as a :class:`~pathlib.Path` where given, else the matplotlib ``Figure``.

    Example:
        >>> import torch
        >>> from elbox.plots import plot_frames
        >>> true = torch.rand(6, 3, 64, 64)
        >>> figure = plot_frames({"true": true, "imagined": true.flip(-1)}, first_step=11)
        >>> len(figure.axes)
        12
    """
    from matplotlib.figure import Figure

    if not isinstance(rows, dict) or not rows:
        raise TypeError(f"rows must be a non-empty dict {{label: frames [K, C, H, W]}}; received {describe(rows)}")
    if not isinstance(every, int) or isinstance(every, bool) or every < 1:
        raise ValueError(f"every must be a positive integer; received {every!r}")
    if not isinstance(first_step, int) or isinstance(first_step, bool):
        raise TypeError(f"first_step must be an integer; received {first_step!r}")
    images, shape = {}, None
    for label, frames in rows.items():
        name = f"rows[{label!r}]"
        if torch.is_tensor(frames) and frames.dtype == torch.uint8:
            frames = frames.float() / 255
        frames = figure_data(frames, name, (3, 4))
        if frames.dim() == 3:
            frames = frames.unsqueeze(1)  # one channel
        if frames.shape[1] not in (1, 3):
            raise ValueError(f"{name} must be frames [K, C, H, W] channels first with C = 1 or 3 (or [K, H, W]); "
                             f"received {describe(frames)}")  # fmt: skip
        if shape is not None and (len(frames), *frames.shape[2:]) != shape:
            first = f"[{shape[0]}, ·, {shape[1]}, {shape[2]}]"
            raise ValueError(f"every row must have the same number of frames of the same size [K, ·, H, W]; {name} "
                             f"is {list(frames.shape)}, the first row {first}")  # fmt: skip
        shape = (len(frames), *frames.shape[2:])
        images[str(label)] = frames[::every].clamp(0, 1).permute(0, 2, 3, 1).numpy()  # [K', H, W, C]
    K = len(next(iter(images.values())))
    fig = Figure(figsize=(scale * K + 0.9, scale * len(images) + (0.45 if title else 0.2)), layout="constrained")
    axes = fig.subplots(len(images), K, squeeze=False)
    for i, (label, frames) in enumerate(images.items()):
        for k in range(K):
            ax = axes[i, k]
            frame = frames[k]
            ax.imshow(frame.squeeze(-1) if frame.shape[-1] == 1 else frame, cmap="gray", vmin=0, vmax=1,
                      interpolation="nearest")  # fmt: skip
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(str(first_step + k * every), fontsize=7)
        axes[i, 0].set_ylabel(label, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    if path is None:
        return fig
    save_png(fig, path)
    return Path(path)
