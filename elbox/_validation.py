"""Checks of user input: each error names the argument, what was expected and what came."""

from __future__ import annotations

import contextlib
import math
import os

import numpy as np
import torch
from torch import Tensor

__all__ = ["as_data", "as_tensor", "check_bool", "check_callable", "check_distribution", "check_dtype", "check_guide",
           "check_model",
           "check_number", "check_path", "check_points", "check_positive_int", "check_probabilities", "check_seed",
           "check_sizes", "check_tensor", "describe", "named"]  # fmt: skip


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
    if x.device.type == "meta":
        raise TypeError(f"{name} is on the meta device and holds no data; received {describe(x)}")
    if x.dtype == torch.bool or not (x.is_floating_point() or x.is_complex() or _is_integer(x)):
        raise TypeError(f"{name} must be numeric data; received {describe(x)}")
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
    if bool(torch.isfinite(x.sum())):  # one pass: every entry finite (an overflowing sum looks closer)
        return x
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


def _is_integer(x: Tensor) -> bool:
    return x.dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def check_number(
    value,
    name: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    strict: bool = False,
    allow_inf: bool = False,
    only_type: bool = False,
) -> float:
    """Checks that ``value`` is a real number (not a string, a bool or a tensor of several
    values), finite unless ``allow_inf``, and at least ``minimum`` (greater, with ``strict``) and
    at most ``maximum``; returns it as a float. ``only_type`` checks the type alone (the caller
    words the range's message)."""
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"{name} must be a number; received {describe(value)}")
    value = float(value)
    if only_type:
        return value
    if math.isnan(value) or (math.isinf(value) and not allow_inf):
        raise ValueError(f"{name} must be a finite number; received {value}")
    if minimum is not None and (value < minimum or (strict and value == minimum)):
        relation = "greater than" if strict else "at least"
        raise ValueError(f"{name} must be {relation} {minimum:g}; received {value:g}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be at most {maximum:g}; received {value:g}")
    return value


def check_seed(value, name: str = "seed") -> int | None:
    """None, or an integer in [0, 2⁶³) (what torch's generators take)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an integer in [0, 2**63) or None; received {describe(value)}")
    if not 0 <= int(value) < 2**63:
        raise ValueError(f"{name} must be an integer in [0, 2**63); received {value}")
    return int(value)


def check_points(x, name: str = "x", minimum: int = 1):
    """Checks that a batch holds at least ``minimum`` data points."""
    if len(x) < minimum:
        points = "one data point" if minimum == 1 else f"{minimum} data points"
        raise ValueError(f"{name} must hold at least {points}; received {len(x)}")
    return x


def check_positive_int(value, name: str, *, minimum: int = 1) -> int:
    """Checks that ``value`` is an integer of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an integer >= {minimum}; received {describe(value)}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; received {value}")
    return int(value)


def check_bool(value, name: str) -> bool:
    """Checks that ``value`` is True or False (a string such as ``"no"`` would be truthy)."""
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{name} must be True or False; received {describe(value)}")
    return bool(value)


def check_callable(value, name: str, what: str = "a function", *, optional: bool = False):
    """Checks that ``value`` can be called (or is None, with ``optional``)."""
    if value is None and optional:
        return None
    if not callable(value):
        raise TypeError(f"{name} must be {what}; received {describe(value)}")
    return value


def check_sizes(sizes, name: str, *, minimum_length: int = 0) -> list[int]:
    """A sequence of positive integers (layer widths), at least ``minimum_length`` of them."""
    if isinstance(sizes, int | str | bytes) or not hasattr(sizes, "__iter__"):
        raise TypeError(f"{name} must be a sequence of positive integers, such as (64, 64); received {describe(sizes)}")
    sizes = [check_positive_int(size, name) for size in sizes]
    if len(sizes) < minimum_length:
        raise ValueError(f"{name} must hold at least {minimum_length} sizes; received {sizes}")
    return sizes


def check_model(model, name: str = "model"):
    """Checks that ``model`` is an elbox model (a :class:`~elbox.models.LatentModel`: a module
    with ``check_data`` and ``prior_for``)."""
    if not (isinstance(model, torch.nn.Module) and hasattr(model, "check_data") and hasattr(model, "prior_for")):
        raise TypeError(f"{name} must be an elbox model (a LatentModel, such as elbox.FactorAnalysis); "
                        f"received {describe(model)}")  # fmt: skip
    return model


def check_guide(guide, name: str = "guide"):
    """Checks that ``guide`` is a module that can be called on data (``guide(x, index)`` → q)."""
    if not (isinstance(guide, torch.nn.Module) and callable(guide)):
        raise TypeError(f"{name} must be a guide (an nn.Module whose guide(x) returns q(z | x), such as "
                        f"elbox.guides.MeanFieldNormal); received {describe(guide)}")  # fmt: skip
    return guide


def check_distribution(q, name: str = "q", *, batch_shape: tuple | None = None, event_shape: tuple | None = None,
                       kind: type | tuple[type, ...] | None = None):  # fmt: skip
    """Checks that ``q`` is a ``torch.distributions.Distribution`` (of ``kind``, with these batch and
    event shapes where given): a posterior passed to an M-step, a q passed to a diagnostic."""
    kind = kind or torch.distributions.Distribution
    if not isinstance(q, kind):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise TypeError(f"{name} must be a torch.distributions {names}; received {describe(q)}")
    for which, want in (("batch", batch_shape), ("event", event_shape)):
        got = tuple(getattr(q, which + "_shape"))
        if want is not None and got != tuple(want):
            raise ValueError(f"{name} must have {which} shape {list(want)}; received {type(q).__name__} with "
                             f"{which} shape {list(got)}")  # fmt: skip
    return q


def check_tensor(x, name: str, *, min_dim: int = 0) -> Tensor:
    """Checks that ``x`` is a tensor of at least ``min_dim`` dimensions, and nothing more: for the
    distributions built in the hot loops (their values are not read here, which would cost a
    device synchronization per call)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a tensor; received {describe(x)}")
    if x.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dimensions; received {describe(x)}")
    return x


def check_dtype(dtype, name: str = "dtype") -> torch.dtype | None:
    """None, or a floating torch dtype (``torch.float32``, ``torch.float64``)."""
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"{name} must be a floating torch dtype such as torch.float32, or None; received "
                        f"{describe(dtype)}")  # fmt: skip
    return dtype


def check_path(path, name: str = "path"):
    """Checks that ``path`` is a string or an ``os.PathLike``."""
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"{name} must be a path (a string or a pathlib.Path); received {describe(path)}")
    return path


def as_tensor(x, name: str, *, ndim: int | tuple[int, ...] | None = None, finite: bool = True) -> Tensor:
    """Like :func:`as_data` but keeping the dtype (integer latents stay integers): a real tensor
    with data (not on the meta device), of the right rank, finite where it is floating (unless
    ``finite=False``)."""
    if not isinstance(x, Tensor):
        try:
            x = torch.as_tensor(np.asarray(x))
        except (TypeError, ValueError) as error:
            raise TypeError(f"{name} must be numeric; received {describe(x)}") from error
    if x.device.type == "meta":
        raise TypeError(f"{name} is on the meta device and holds no data; received {describe(x)}")
    if x.is_complex() or not (x.is_floating_point() or _is_integer(x) or x.dtype == torch.bool):
        raise TypeError(f"{name} must be real-valued; received {describe(x)}")
    if ndim is not None and x.dim() not in ((ndim,) if isinstance(ndim, int) else tuple(ndim)):
        expected = " or ".join(str(n) for n in ((ndim,) if isinstance(ndim, int) else ndim))
        raise ValueError(f"{name} must have {expected} dimensions; received {describe(x)}")
    if finite and x.is_floating_point() and not torch.isfinite(x).all():
        raise ValueError(f"{name} must be finite; it holds {int((~torch.isfinite(x)).sum())} non-finite entries")
    return x


@contextlib.contextmanager
def named(name: str, default: str = "x"):
    """Re-raises a TypeError or ValueError about the argument ``default`` (a message that starts
    with ``"x "``, as the models' data checks word it) as one about ``name``: an entry point whose
    argument is called ``data`` says so."""
    try:
        yield
    except (TypeError, ValueError) as error:
        message = str(error)
        if name == default or type(error) not in (TypeError, ValueError) or not message.startswith(default + " "):
            raise
        raise type(error)(name + message[len(default):]) from None
