"""Training a run: a config's model fitted by EM or VI into a run directory, under its lock, resumable."""

from __future__ import annotations

import os
import shutil
import time

import torch

from elbox._validation import check_path
from elbox.distributed import agree, from_rank0, is_distributed, rank0_context
from elbox.inference import History, em, fit
from elbox.inference.callbacks import CHECKPOINT_FORMAT
from elbox.io import (
    RunDirectory,
    RunLock,
    atomic_write_text,
    load_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
)
from elbox.runs.build import build_objective, built_model, fit_options, initialize
from elbox.runs.config import RECORD, ConfigError, check_config, load_config, parse_config, to_toml
from elbox.runs.data import load_data, record_of
from elbox.runs.figures import make_figures
from elbox.runs.load import config_of_record
from elbox.runs.plugins import import_plugins, resolved

__all__ = ["train_run"]

#: What a run directory may hold before its first checkpoint: such a directory is started afresh.
_OWN_FILES = {"config.toml", "metrics.jsonl", ".lock", "checkpoints"}


def train_run(
    config_path: str | os.PathLike | None,
    run_dir: str | os.PathLike,
    *,
    resume: bool = False,
    progress: bool = False,
    config: dict | None = None,
    imports: list[str] | tuple[str, ...] = (),
    quick: bool = False,
) -> dict:
    """Fits the config's model (by EM or VI) into ``run_dir``, or continues the run there, and
    draws its figures. The directory is locked while it runs.

    With ``quick`` (``elbox fit --quick``), the config's ``[quick]`` overrides are put in place of
    its own values (fewer epochs, a smaller evaluation): the same code on a short run. The run's
    config records the values used and ``[record] quick = true``.

    Raises:
        FileExistsError: If ``run_dir`` holds a run, or other files, and ``resume`` is False
            (nothing is overwritten; a directory whose run never reached its first checkpoint is
            started again).
        ConfigError: For a bad config (with ``quick``, one without a ``[quick]`` table), or, on
            resume, one that differs from the run's or a ``quick`` that differs from its; for a
            plugin in ``imports`` (modules or ``.py`` files that register model types or
            objectives, recorded in the run's ``[plugins] imports``) that cannot be imported.
        RunLockedError: If another process is writing ``run_dir``.
    """
    check_path(run_dir, "run_dir")
    if config is None and config_path is None:
        raise ValueError("train_run needs config_path (a TOML file) or config= (a parsed config); received neither")
    if config is not None:
        check_config(config)
    run = RunDirectory(run_dir)
    import_plugins(imports)
    if config is None:
        config = load_config(config_path, quick=quick)
    elif quick:  # a parsed config reads as a document: its [quick] applied, and everything checked again
        config = parse_config(config, str(config_path or "config"), quick=True)
    if imports:  # recorded in the run, so that evaluate, report and load_run import them again
        recorded = config["plugins"]["imports"]
        config = {**config, "plugins": {"imports": recorded + [p for p in resolved(imports) if p not in recorded]}}
    if is_distributed():  # under torchrun: the same config on every rank, and VI (EM runs in one process)
        agree(to_toml(config), f"the config ({config_path})")
        if config["train"]["method"] == "em":
            raise ConfigError(
                f"[train] method = \"em\" runs in one process (its statistics are cheap); run `elbox fit "
                f"{config_path}` without torchrun, or use method = \"vi\" for data-parallel training"
            )
    # what can be refused is refused before the directory is touched: rank 0 reads it, every rank is told
    config = from_rank0(_checked_start, run, config, config_path, resume, quick)
    if config["log"]["tensorboard"]:
        try:
            from torch.utils import tensorboard  # noqa: F401
        except ImportError:
            raise ConfigError("[log] tensorboard = true needs the tensorboard package: pip install "
                              "'elbox[tensorboard]' (or tensorboard)") from None  # fmt: skip
    x, _ = load_data(config, "train")
    valid = load_data(config, "validation")[0] if config["data"]["validation"] else None
    if not resume:
        config = {**config, RECORD: {**record_of(config, x), "quick": quick}}
    with rank0_context(lambda: RunLock(run.path)):
        text = to_toml(config)
        from_rank0(_prepare_directory, run, resume, text)
        # the model, its guide and the objective's own parameters from one stream seeded by [train] seed,
        # the caller's RNG left as it was (EM and fit seed themselves)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config["train"]["seed"])
            model, guide = built_model(config)
            if config["train"]["method"] == "vi":
                initialize(config, model, x)
                objective = build_objective(config, model, guide)
        start = time.perf_counter()
        if config["train"]["method"] == "em":
            history = _em_run(run, config, model, x, text)
        else:
            history = fit(objective, x, validation=valid, run_dir=run.path, resume=resume, progress=progress,
                          config=text, **fit_options(config))  # fmt: skip
        seconds = time.perf_counter() - start
        from_rank0(make_figures, run, config, model)
    return {"history": history, "seconds": seconds, "model": model, "guide": guide, "run": run, "config": config}


def _prepare_directory(run: RunDirectory, resume: bool, text: str) -> None:
    remove_stale_temporaries(run.path)
    if not resume:
        _clear_unstarted(run)
    atomic_write_text(run.config, text)


def _checked_start(run: RunDirectory, config: dict, config_path, resume: bool, quick: bool) -> dict:
    """Refuses a directory that holds a run (unless resuming) and a resumed run's changed config;
    returns the config, with the run's record when resuming."""
    if resume:
        run = RunDirectory.open(run.path)
        stored = config_of_record(run)
        if stored[RECORD]["quick"] != quick:
            raise ConfigError(
                f"cannot resume {run.path}: it was fitted " + ("with" if stored[RECORD]["quick"] else "without")
                + " --quick; resume it " + ("with" if stored[RECORD]["quick"] else "without") + " --quick too, or "
                "start a new run"
            )  # fmt: skip
        for section in ("data", "model", "train", "log"):
            for key, value in stored[section].items():
                if (section, key) == ("train", "epochs"):
                    continue
                if config[section][key] != value:
                    raise ConfigError(
                        f"cannot resume {run.path}: [{section}] {key} is {config[section][key]!r} in "
                        f"{config_path}, but the run was started with {value!r}"
                    )
        if stored["train"]["method"] == "em":
            raise ConfigError(f"cannot resume {run.path}: it was fitted by EM, which is not resumed; start a "
                              "new run (EM runs are fast)")  # fmt: skip
        done = int(load_checkpoint(run.checkpoint())[1].get("epoch", 0))
        if config["train"]["epochs"] < done:
            raise ConfigError(
                f"cannot resume {run.path} with [train] epochs = {config['train']['epochs']}: it has done {done} "
                f"epochs already (resume with epochs >= {done}; nothing was changed)"
            )
        return {**config, RECORD: stored[RECORD]}
    _clear_unstarted(run, dry_run=True)
    return config


def _clear_unstarted(run: RunDirectory, dry_run: bool = False) -> None:
    """Refuses a directory that holds a run or other files; clears one whose run never reached its
    first checkpoint (killed while loading its data, say), so that it starts again (with
    ``dry_run``, only refuses)."""
    if run.path.exists() and not run.path.is_dir():
        raise FileExistsError(f"--out {run.path} is a file, not a directory; choose a directory for the run")
    for parent in run.path.parents:
        if parent.exists() and not parent.is_dir():
            raise FileExistsError(f"--out {run.path} lies under {parent}, which is a file, not a directory")
    if not run.path.exists() or not any(p.name != ".lock" for p in run.path.iterdir()):
        return
    names = {p.name for p in run.path.iterdir()}
    checkpoints = run.path / "checkpoints"
    unstarted = names <= _OWN_FILES and not (checkpoints.is_dir() and any(checkpoints.glob("*.safetensors")))
    if not unstarted:
        raise FileExistsError(
            f"run directory {run.path} exists and is not empty; choose a new one, or pass --resume to continue "
            "the run in it (nothing was overwritten)"
        )
    if dry_run:
        return
    for name in names - {".lock"}:
        path = run.path / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def _em_run(run: RunDirectory, config: dict, model, x, text: str) -> History:
    """EM into the run directory: one metrics record per iteration of the kept restart (the
    history em returns), and the fitted model as the run's checkpoint. No callback: a model whose
    EM runs on summary statistics (factor analysis) keeps that fast path."""
    t = config["train"]
    init = None if t["init"] == "none" else t["init"]
    history = em(model, x, max_iter=t["max_iter"], tol=t["tol"], init=init, n_init=t["n_init"] if init else 1,
                 seed=t["seed"])  # fmt: skip
    run.truncate_metrics(0)
    for iteration, bound in enumerate(history.lower_bound):
        run.append_metrics({"epoch": iteration + 1, "bound": bound, "reconstruction": None, "kl": None,
                            "validation": None})  # fmt: skip
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    meta = {"format": CHECKPOINT_FORMAT, "epoch": history.n_iter, "method": "em", "history": history.to_dict(),
            "config": text}  # fmt: skip
    save_checkpoint(run.checkpoint(), tensors, meta)
    return history
