"""A run directory loaded back: the model, the guide, the config of record and the history."""

from __future__ import annotations

import os
from dataclasses import dataclass

import tomllib
import torch
from torch import nn

from elbox._validation import check_path
from elbox.inference import History
from elbox.io import NotARunError, RunDirectory, load_checkpoint
from elbox.runs.build import Modules, build_model
from elbox.runs.config import ConfigError, config_differences, load_config, parse_config

__all__ = ["Run", "config_of_record", "load_run"]


@dataclass
class Run:
    """A trained run directory, loaded back (:func:`elbox.load_run`).

    Attributes:
        model: The fitted model (in eval mode).
        guide: Its guide: the VAE's encoder, the trained local guide of a VI fit, or the exact
            posterior (:class:`~elbox.guides.Exact`) of an EM fit.
        config: The config of record (the one stored in the checkpoint), defaults filled in.
        history: The training history.
        directory: The :class:`~elbox.io.RunDirectory`.
        checkpoint: ``"best"`` or ``"last"``: which checkpoint was loaded.
    """

    model: nn.Module
    guide: nn.Module
    config: dict
    history: History
    directory: RunDirectory
    checkpoint: str


def config_of_record(run: RunDirectory, checkpoint: str = "last") -> dict:
    """The config stored in the run's checkpoint; refuses a config.toml that was edited since.

    Raises:
        ConfigError: If config.toml differs from the config of record (the message lists the
            changed keys) or the checkpoint holds no config.
    """
    _, meta = load_checkpoint(run.checkpoint(checkpoint))
    text = meta.get("config")
    if not text:
        raise NotARunError(f"{run.checkpoint(checkpoint)} holds no config: it was not written by `elbox fit`")
    stored = parse_config(tomllib.loads(text), f"the config stored in {run.checkpoint(checkpoint)}", record=True)
    try:
        on_disk = load_config(run.config, record=True)
    except ConfigError as error:
        raise ConfigError(f"{run.config} was edited and no longer reads as a config ({error}); the run's config of "
                          "record is the one in its checkpoint: put config.toml back as it was") from None  # fmt: skip
    changed = config_differences(stored, on_disk)
    if changed:
        raise ConfigError(
            f"{run.config} was edited since the run was written ({'; '.join(changed)}). The run's config of record "
            "is the one stored in its checkpoint, and the numbers would no longer be this run's: put config.toml "
            "back as it was, or start a new run with the edited config. Evaluation settings go on the command line "
            "or in --evaluate-config"
        )
    return stored


def load_run(path: str | os.PathLike, checkpoint: str = "best") -> Run:
    """Loads a run directory written by ``elbox fit``: the model, the guide, the config of record
    and the history, at the ``best`` checkpoint (``last`` where there is none).

    Example:
        >>> from elbox.runs import train_run
        >>> _ = train_run("configs/gmm_digits.toml", "runs/gmm_digits")  # `elbox fit configs/gmm_digits.toml`
        >>> run = elbox.load_run("runs/gmm_digits")
        >>> run.config["model"]["components"], type(run.guide).__name__
        (10, 'Exact')

    Raises:
        NotARunError: If ``path`` holds no run.
        ConfigError: If its config.toml was edited since the run was written.
    """
    from elbox.guides import Exact

    if checkpoint not in ("best", "last"):
        raise ValueError(f"checkpoint must be 'best' or 'last'; received {checkpoint!r}")
    run = RunDirectory.open(check_path(path))
    name = checkpoint if run.has_checkpoint(checkpoint) else "last"
    config = config_of_record(run, name)
    tensors, meta = load_checkpoint(run.checkpoint(name))
    model, guide = build_model(config)
    modules = Modules(model, guide)
    own = modules.state_dict()
    path = run.checkpoint(name)
    missing = [k for k in own if k not in tensors]
    extra = [k for k in tensors if k.startswith(("model.", "guide.")) and k not in own]
    if missing or extra:
        what = f"it lacks {missing[:3]}" if missing else f"it holds unknown tensors {extra[:3]}"
        raise ValueError(f"{path} does not fit the model its config builds: {what}")
    for key in own:
        if tensors[key].shape != own[key].shape:
            raise ValueError(f"{path} does not fit the model its config builds: {key} has shape "
                             f"{list(tensors[key].shape)}, the model's is {list(own[key].shape)}")  # fmt: skip
        if tensors[key].is_floating_point() and not torch.isfinite(tensors[key]).all():
            raise ValueError(f"{path} holds non-finite values in {key}: the run cannot be evaluated from it")
    modules.load_state_dict({k: tensors[k] for k in own})
    model.eval()
    history = History(**{k: v for k, v in meta.get("history", {}).items() if k in History.__dataclass_fields__})
    if "history.steps" in tensors:
        history.steps = tensors["history.steps"].tolist()
    if guide is None:
        guide = Exact(model)
    return Run(model=model, guide=guide, config=config, history=history, directory=run, checkpoint=name)
