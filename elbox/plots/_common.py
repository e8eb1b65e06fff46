"""What the figures share: checking their arguments, and writing a PNG atomically."""

from __future__ import annotations

import io
import os

from elbox._validation import as_data, as_tensor, describe

__all__ = ["figure_data", "save_png"]


def figure_data(x, name: str, ndim: int | tuple[int, ...], *, length: int | None = None, integer: bool = False):
    """A figure's array argument, checked: numbers with data (not on the meta device), finite, of
    ``ndim`` dimensions, with ``length`` rows where given and at least one; detached on the CPU."""
    x = (as_tensor(x, name) if integer else as_data(x, name)).detach().cpu()
    allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    if x.dim() not in allowed:
        raise ValueError(f"{name} must be {' or '.join(map(str, allowed))}-dimensional; received {describe(x)}")
    if len(x) == 0 or (length is not None and len(x) != length):
        expected = "at least one row" if length is None else f"{length} rows (one per step or point)"
        raise ValueError(f"{name} must have {expected}; received {describe(x)}")
    return x


def check_records(records, name: str = "records"):
    """Metrics records (metrics.jsonl's lines): a non-empty list of dicts, each with an ``epoch``."""
    if isinstance(records, str | bytes | dict) or not hasattr(records, "__iter__"):
        raise TypeError(f"{name} must be a list of metrics records (dicts, metrics.jsonl's lines); received "
                        f"{describe(records)}")  # fmt: skip
    records = list(records)
    if not records:
        raise ValueError(f"{name} must hold at least one epoch's record; received none")
    for record in records:
        if not isinstance(record, dict) or "epoch" not in record:
            raise TypeError(f"{name} must be dicts with an 'epoch' (metrics.jsonl's lines); received "
                            f"{describe(record)}")  # fmt: skip
    return records


def save_png(fig, path: str | os.PathLike | None, dpi: int = 120) -> None:
    """Writes ``fig`` to ``path`` as a PNG (atomically: no half-written file); None: nothing."""
    if path is None:
        return
    from elbox.io import atomic_write_bytes

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    atomic_write_bytes(path, buffer.getvalue())
