"""The pieces a config schema is made of: a key with its default, check and meaning."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BOOL", "MAX_SIZE", "NON_NEGATIVE", "NON_NEGATIVE_INT", "NUMBER", "POSITIVE", "POSITIVE_INT", "SEED", "SIZE",
    "SIZES", "STRING", "Check", "ConfigError", "Key", "Registered", "choice", "is_bool", "is_list_of_positive_ints",
    "is_non_negative_int", "is_number", "is_positive", "is_positive_int", "is_size", "one_of",
]  # fmt: skip


class ConfigError(ValueError):
    """A config that cannot be run; the message names the key."""


@dataclass(frozen=True)
class Check:
    """A test of a config value and what it accepts, in words, written together."""

    test: Callable[[Any], bool]
    expected: str

    def __call__(self, value) -> bool:
        return self.test(value)


class Key:
    """A config key: its default, its check, what the check accepts (in words, for the error
    message) and what the key means (for the docs and the commented config).

    ``Key(default, check, help)`` with a :class:`Check` (or a :class:`Registered` name), which
    carries its words; or ``Key(default, check, expected, help)`` with any function of the value.
    """

    __slots__ = ("_expected", "check", "default", "help")

    def __init__(self, default: Any, check: Callable[[Any], bool], *text: str):
        if len(text) == 2:
            expected, help_ = text
        elif len(text) == 1 and hasattr(check, "expected"):
            expected, help_ = None, text[0]
        else:
            raise TypeError("Key takes (default, check, expected, help), or (default, Check, help) where the "
                            f"Check says what it expects; received a {type(check).__name__} and {len(text)} texts")
        self.default, self.check, self._expected, self.help = default, check, expected, help_

    @property
    def expected(self) -> str:
        """What the check accepts, in words (a registry's names as they are now)."""
        return self._expected if self._expected is not None else self.check.expected

    def __repr__(self) -> str:
        return f"Key({self.default!r}, expected={self.expected!r}, help={self.help!r})"


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


class Registered:
    """A name in a registry (model types, objectives, optimizers): the message lists the names
    registered when it is raised, plugins' included."""

    def __init__(self, registry: dict, what: str):
        self.registry, self.what = registry, what

    def __call__(self, value) -> bool:
        return isinstance(value, str) and value in self.registry

    @property
    def expected(self) -> str:
        return f"{self.what}: " + ", ".join(repr(k) for k in self.registry)


def one_of(*choices) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, str) and v in choices


def choice(*choices: str) -> Check:
    """One of the strings ``choices``, listed in the message: 'a', 'b' or 'c'."""
    names = [repr(c) for c in choices]
    expected = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
    return Check(one_of(*choices), expected)


POSITIVE_INT = Check(is_positive_int, "a positive integer")
SIZE = Check(is_size, f"a positive integer up to {MAX_SIZE:,}")
SIZES = Check(is_list_of_positive_ints, f"a list of positive integers up to {MAX_SIZE:,}")
NON_NEGATIVE_INT = Check(is_non_negative_int, "a non-negative integer")
NUMBER = Check(is_number, "a number")
POSITIVE = Check(is_positive, "a positive number")
NON_NEGATIVE = Check(lambda v: is_number(v) and 0 <= v < float("inf"), "a non-negative number")
BOOL = Check(is_bool, "true or false")
STRING = Check(lambda v: isinstance(v, str), "a string")
SEED = Check(lambda v: is_non_negative_int(v) and v < 2**63, "an integer in [0, 2**63)")
