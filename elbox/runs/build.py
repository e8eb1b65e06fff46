"""A run's model, guide and objective, built from its config (and the record of its data)."""

from __future__ import annotations

import inspect

import torch
from torch import nn

from elbox.inference import temperature_annealing
from elbox.inference.options import FitOptions
from elbox.objectives import get_objective, make_objective
from elbox.runs.config import ConfigError, check_config
from elbox.runs.data import info_of_record
from elbox.runs.types import MODEL_TYPES, DataInfo

__all__ = ["Modules", "build_model", "build_objective", "built_model", "fit_options", "initialize"]


class Modules(nn.Module):
    """The model and, where it is not part of the model, the guide: the checkpoint's layout."""

    def __init__(self, model: nn.Module, guide: nn.Module | None):
        super().__init__()
        self.model = model
        if guide is not None and not any(m is guide for m in model.modules()):
            self.guide = guide


def build_model(config: dict, info: DataInfo | None = None):
    """The config's model and its guide (None where the run fits without one), not yet fitted:
    their parameters are drawn from torch's RNG seeded by ``[train] seed`` within the call, and the
    caller's RNG state is left as it was."""
    check_config(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config["train"]["seed"])
        return built_model(config, info)


def built_model(config: dict, info: DataInfo | None = None):
    """:func:`build_model`'s model and guide drawn from torch's RNG as it stands (what a run's
    training seeds once for the model, its guide and its objective, in that order)."""
    kind = MODEL_TYPES[config["model"]["type"]]
    info = info or info_of_record(config)
    dtype = kind.dtype or torch.get_default_dtype()
    model_config = {**config["model"], **{section: config[section] for section in kind.sections}}
    model = kind.build(model_config, info).to(dtype)
    train = config["train"]
    guide = None
    if train["method"] == "vi" and get_objective(train["objective"]).needs_guide:
        guide = kind.guide(model, config["model"], info)
        guide = guide.to(dtype) if guide is not None else None
    return model, guide


def build_objective(config: dict, model, guide):
    """The config's objective (``[train] objective`` with ``num_samples`` and the ``[objective]``
    table) on the model and guide; a bad option is a :class:`ConfigError` naming ``[objective]``."""
    t = check_config(config)["train"]
    options = dict(config["objective"])
    if "num_samples" in inspect.signature(get_objective(t["objective"]).__init__).parameters:
        options["num_samples"] = t["num_samples"]
    elif t["num_samples"] != 1:
        raise ConfigError(f"[train] num_samples = {t['num_samples']}: objective = {t['objective']!r} draws no "
                          "particles; remove num_samples")  # fmt: skip
    try:
        return make_objective(t["objective"], model, guide, **options)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"[objective] of objective = {t['objective']!r}: {error}") from None


def fit_options(config: dict) -> dict:
    """``fit``'s keyword arguments from the config: ``options``, a checked
    :class:`~elbox.inference.options.FitOptions` (the ``[train]`` keys of the same names, with
    the config's 0 for "none" where fit takes None), and ``schedules`` (the temperature's)."""
    t = config["train"]
    same = {name: t[name] for name in FitOptions.names() if name in t and name not in (*_NONE_AS_ZERO, "optimizer")}
    options = FitOptions(
        **same,
        **{name: t[name] or None for name in _NONE_AS_ZERO},
        optimizer={"name": t["optimizer"], **config["optimizer"]},
        binarization="dynamic" if config["data"]["binarization"] == "dynamic" else None,
        tensorboard=config["log"]["tensorboard"],
    )
    schedules = []
    if t["anneal_rate"] > 0:
        schedules.append(temperature_annealing(initial=config["objective"]["temperature"], minimum=t["min_temperature"],
                                               rate=t["anneal_rate"], every=t["anneal_every"]))  # fmt: skip
    return {"options": options, "schedules": schedules}


#: [train] keys whose 0 means "none" in the config (TOML has no null), None in FitOptions.
_NONE_AS_ZERO = ("clip_grad_norm", "patience")


def initialize(config: dict, model, x) -> None:
    """Sets a model's parameters from the training data where it can and ``[train] init`` asks."""
    init = config["train"]["init"]
    if init != "none" and hasattr(model, "initialize"):
        generator = torch.Generator().manual_seed(config["train"]["seed"])
        model.initialize(model.check_data(x), method=init, generator=generator)
