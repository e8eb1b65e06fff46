"""Checks of user input: each error names the argument, what was expected and what came."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["as_data", "check_positive_int", "check_probabilities", "describe"]


def describe(x) -> str:
    """A short description of a value for an error message."""
    if isinstance(x, Tensor | np.ndarray):
        return f"{type(x).__name__} of shape {tuple(x.shape)} and dtype {x.dtype}"
    return f"{type(x).__name__} {x!r}"


def as_data(
    x,
    name: str = "x",
    *,
    ndim: int | tuple[int, ...] | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | None = None,
) -> Tensor:
    """Converts ``x`` to a floating tensor and checks that it is finite and of the right rank.

    Args:
        x: A tensor, an array or a nested sequence of numbers.
        name: The argument's name, for the error message.
        ndim: The accepted number(s) of dimensions.
        dtype: The floating dtype to convert to (default: torch's default dtype, or that of
            ``x`` when it is already a floating tensor).
        device: The device to move to.

    Raises:
        TypeError: If ``x`` is not numeric.
        ValueError: If ``x`` has the wrong number of dimensions or a NaN or infinite entry.
    """
    if not isinstance(x, Tensor):
        try:
            x = torch.as_tensor(np.asarray(x))
        except (TypeError, ValueError) as error:
            raise TypeError(f"{name} must be numeric data; received {describe(x)}") from error
    if x.is_complex():
        raise TypeError(f"{name} must be real-valued; received {describe(x)}")
    if dtype is None:
        dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
    x = x.to(dtype=dtype, device=device)
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.dim() not in allowed:
            expected = " or ".join(str(n) for n in allowed)
            raise ValueError(
                f"{name} must have {expected} dimensions; received {describe(x)}"
            )
    bad = ~torch.isfinite(x)
    if bad.any():
        where = tuple(int(i) for i in bad.nonzero()[0])
        kind = "NaN" if torch.isnan(x[where]) else "an infinite value"
        raise ValueError(
            f"{name} must be finite; it holds {int(bad.sum())} non-finite entries, the first "
            f"({kind}) at index {where}. Remove or impute them before fitting."
        )
    return x


def check_probabilities(p: Tensor, name: str, *, dim: int | None = None) -> Tensor:
    """Checks that ``p`` lies in [0, 1] and, with ``dim``, sums to one along it."""
    p = as_data(p, name)
    if (p < 0).any() or (p > 1).any():
        lo, hi = float(p.min()), float(p.max())
        raise ValueError(f"{name} must be probabilities in [0, 1]; received values in [{lo}, {hi}]")
    if dim is not None:
        total = p.sum(dim)
        tol = 1e-6 if p.dtype == torch.float64 else 1e-4
        if not torch.allclose(total, torch.ones_like(total), atol=tol, rtol=0):
            worst = float((total - 1).abs().max())
            raise ValueError(
                f"{name} must sum to one along dimension {dim}; the sums are off by up to {worst:.3g}"
            )
    return p


def check_positive_int(value, name: str, *, minimum: int = 1) -> int:
    """Checks that ``value`` is an integer of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an integer >= {minimum}; received {describe(value)}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; received {value}")
    return int(value)
