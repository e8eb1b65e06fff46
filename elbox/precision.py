r"""The precision of the networks' matrix products: float32, or bfloat16 where the CPU has the
units for it (AMX and AVX-512 BF16) or on a GPU.

A VAE's time goes into its encoder's and decoder's matrix products; everything else — the
log-densities, their sums over data dimensions, log-sum-exp over particles, the bound — is a
reduction whose rounding decides the reported number. So precision is scoped, not global:

* inside :func:`matmul_precision` ``("bfloat16")``, each network call made through
  :func:`network` (the MLP encoders of :class:`~elbox.guides.Amortized`,
  :class:`~elbox.guides.OneHotCategorical` and :class:`~elbox.guides.Bernoulli`, the decoders of
  :class:`~elbox.models.VAE` and :class:`~elbox.models.DiscreteVAE`) runs under
  ``torch.autocast(dtype=torch.bfloat16)``: its linear layers multiply bfloat16 operands with
  float32 accumulation;
* its output returns to float32 before anything reads it, so every log-density, reduction and
  the bound stay in float32 (float64 models keep float64 throughout, and refuse bfloat16).

Flows, the classical models' algebra and NVIL's baseline network keep their dtype.

What it costs is the network's own rounding: a decoder evaluated in bfloat16 is a slightly
different model. For importance sampling the encoder's rounding costs nothing (the proposal may
be any distribution, and log q is evaluated in float32 for the draws it made), but the decoder's
moves log p̂; :func:`elbox.log_evidence` measures that shift on every estimate it makes in
bfloat16 (:attr:`~elbox.Estimate.precision_shift`). ``fit``, ``log_evidence``,
``evidence_report`` and the command line take ``precision=``; float32 is the default.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch
from torch import Tensor, nn

__all__ = ["PRECISIONS", "check_precision", "current_precision", "matmul_precision", "network"]

#: The precisions the networks' products can run in.
PRECISIONS = ("float32", "bfloat16")

_current: contextvars.ContextVar[str] = contextvars.ContextVar("elbox_precision", default="float32")


def check_precision(precision, name: str = "precision") -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else a ValueError naming ``name``."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"{name} must be one of {PRECISIONS}; received {precision!r}")
    return precision


def current_precision() -> str:
    """The precision :func:`network` calls run in here: ``"float32"`` outside any
    :func:`matmul_precision` block."""
    return _current.get()


@contextlib.contextmanager
def matmul_precision(precision: str = "float32") -> Iterator[None]:
    """Within the block, the networks' matrix products run in ``precision``; the previous setting
    comes back on exit.

    Example:
        >>> import torch
        >>> from elbox.precision import check_precision, current_precision, matmul_precision, network
        >>> net = torch.nn.Linear(4, 3, dtype=torch.float32)
        >>> x = torch.randn(2, 4, dtype=torch.float32)
        >>> with matmul_precision("bfloat16"):
        ...     inside = current_precision()
        ...     y = network(net, x)
        >>> inside, current_precision(), check_precision("bfloat16")
        ('bfloat16', 'float32', 'bfloat16')
        >>> y.dtype  # the product ran in bfloat16; its result is back in x's dtype
        torch.float32
        >>> bool((y - net(x)).abs().max() < 0.05)
        True
    """
    token = _current.set(check_precision(precision))
    try:
        yield
    finally:
        _current.reset(token)


def network(module: nn.Module, x: Tensor) -> Tensor:
    """``module(x)``, with its matrix products in the current precision and its output in ``x``'s
    dtype; bfloat16 needs a float32 ``x`` (and network): a ValueError otherwise, rather than a
    request silently ignored (autocast leaves float64 alone)."""
    if _current.get() == "float32":
        return module(x)
    if x.dtype != torch.float32:
        raise ValueError(
            f"precision='bfloat16' rounds the products of float32 networks; this network's input is {x.dtype} "
            "(a float64 model keeps its precision: use precision='float32', or model.float() and float32 data)"
        )
    with torch.autocast(x.device.type, dtype=torch.bfloat16):
        out = module(x)
    return out.to(x.dtype)
