"""What the figures share: writing a PNG atomically."""

from __future__ import annotations

import io
import os

__all__ = ["save_png"]


def save_png(fig, path: str | os.PathLike | None, dpi: int = 120) -> None:
    """Writes ``fig`` to ``path`` as a PNG (atomically: no half-written file); None: nothing."""
    if path is None:
        return
    from elbox.io import atomic_write_bytes

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    atomic_write_bytes(path, buffer.getvalue())
