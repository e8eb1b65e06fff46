"""The pieces a config schema is made of: a key with its default, check and meaning."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["MAX_SIZE", "ConfigError", "Key", "is_bool", "is_list_of_positive_ints", "is_non_negative_int", "is_number",
           "is_positive", "is_positive_int", "is_size", "one_of"]  # fmt: skip


class ConfigError(ValueError):
    """A config that cannot be run; the message names the key."""


@dataclass(frozen=True)
class Key:
    default: Any
    check: Callable[[Any], bool]
    expected: str
    help: str


#: The largest size a config may give a model (a layer width, a latent size, a number of
#: components): beyond it, the parameters alone would not fit in memory.
MAX_SIZE = 100_000


def is_positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def is_size(v) -> bool:
    """A positive integer no larger than :data:`MAX_SIZE`."""
    return is_positive_int(v) and v <= MAX_SIZE


def is_non_negative_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def is_positive(v) -> bool:
    return is_number(v) and v > 0 and v != float("inf")


def is_bool(v) -> bool:
    return isinstance(v, bool)


def is_list_of_positive_ints(v) -> bool:
    return isinstance(v, list) and all(is_size(h) for h in v)


def one_of(*choices) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, str) and v in choices
