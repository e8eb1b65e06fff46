"""What `elbox fit`, `elbox evaluate`, `elbox report` and `elbox demo` run: a config's data and
model, trained by EM or VI into a run directory, loaded back from it, evaluated and drawn."""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import tomllib
import torch
from torch import nn

from elbox.cli.config import (
    RECORD,
    ConfigError,
    config_differences,
    load_config,
    parse_config,
    read_toml,
    to_toml,
)
from elbox.cli.models import MODEL_TYPES, DataInfo
from elbox.data.sequences import Sequences
from elbox.distributed import agree, from_rank0, is_distributed, rank0_context
from elbox.inference import History, em, fit, temperature_annealing
from elbox.io import (
    NotARunError,
    RunDirectory,
    RunLock,
    atomic_write_text,
    load_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
    write_json,
)
from elbox.objectives import make_objective

__all__ = ["Run", "evaluate_run", "load_data", "load_run", "make_figures", "report_run", "train_run"]

_SPLIT_SEED = 0  # the train/test split does not depend on the run's seed
_DIGITS_TEST = 297
#: What a run directory may hold before its first checkpoint: such a directory is started afresh.
_OWN_FILES = {"config.toml", "metrics.jsonl", ".lock", "checkpoints"}


# Data.


def load_data(config: dict, split: str):
    """The split ``"train"``, ``"validation"`` or ``"test"`` of the config's data (``[N, D]``, or
    :class:`Sequences` for sequence models) and its labels (None for a user's file). Training
    data keep their intensities under dynamic binarization (the engine draws per batch);
    held-out splits are binarized once, reproducibly."""
    data = config["data"]
    name, held_out = data["name"], data["validation"]
    if split == "validation" and held_out == 0:
        raise ConfigError("[data] validation is 0: there is no validation split")
    if name == "mnist":
        from elbox.data import mnist

        root = data["root"] or None
        if root is not None and not Path(root).expanduser().is_dir():
            raise FileNotFoundError(f"[data] root: the MNIST directory {root} does not exist")
        x, y = mnist(root, split=split, validation=held_out)
        return _binarized(x, data["binarization"], split, config["train"]["seed"]), y
    if name == "file":
        x, y = _user_file(config), None
        N = len(x)
        test = data["test"] or max(1, N // 5)
        if test + held_out >= N:
            raise ConfigError(f"[data] test + validation = {test + held_out} leaves no training points of {N} in "
                              f"{data['path']}")  # fmt: skip
        order = torch.randperm(N, generator=torch.Generator().manual_seed(_SPLIT_SEED))
        train_index, test_index = order[:-test], order[-test:]
    elif name == "digits":
        from elbox.data import digits

        x, y = digits()
        order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(_SPLIT_SEED))
        test = data["test"] or _DIGITS_TEST
        if test + held_out >= x.shape[0]:
            raise ConfigError(f"[data] test + validation = {test + held_out} leaves no training digits of {x.shape[0]}")
        train_index, test_index = order[:-test], order[-test:]
    else:
        from elbox.data import mnist1d

        x_train, y_train = mnist1d(data["num_samples"], split="train")
        x_test, y_test = mnist1d(data["num_samples"], split="test")
        x, y = torch.cat([x_train, x_test]), torch.cat([y_train, y_test])
        train_index = torch.arange(x_train.shape[0])
        test_index = torch.arange(x_train.shape[0], x.shape[0])
    if held_out >= train_index.numel():
        raise ConfigError(f"[data] validation = {held_out} leaves no training points of {train_index.numel()}")
    cut = train_index.numel() - held_out
    index = {"train": train_index[:cut], "validation": train_index[cut:], "test": test_index}[split]
    x = x[index]
    y = None if y is None else y[index]
    if isinstance(x, Sequences):
        return x, y
    return _binarized(x, data["binarization"], split, config["train"]["seed"]), y


def _user_file(config: dict):
    """The user's file as the model type needs it: points ``[N, D]``, or sequences."""
    from elbox.data import load_file

    path = config["data"]["path"]
    x = load_file(path)
    recorded = config.get(RECORD, {}).get("sha256")
    if recorded:
        from elbox.data.files import file_checksum

        if file_checksum(path) != recorded:
            raise ConfigError(
                f"[data] path: {path} has changed since the run was trained (its SHA-256 differs from the one "
                "recorded); evaluate on the file the run was trained on, or train a new run"
            )
    if MODEL_TYPES[config["model"]["type"]].sequences and not isinstance(x, Sequences):
        if x.dim() == 2 and x.is_floating_point():
            x = x.unsqueeze(-1)  # [N, T] numbers: sequences of one value per step
        x = Sequences(x)
    return x


def _binarized(x: torch.Tensor, method: str, split: str, seed: int) -> torch.Tensor:
    """A split as the run sees it: training data under dynamic binarization keep their
    intensities (the engine draws per batch); held-out data are one seeded draw."""
    from elbox.data import binarize

    if method == "none" or (method == "dynamic" and split == "train"):
        return x
    if method == "threshold":
        return binarize(x, method="threshold")
    generator = torch.Generator().manual_seed(seed + {"train": 0, "validation": 1, "test": 2}[split])
    return binarize(x, method="fixed", generator=generator)


def _data_info(x) -> DataInfo:
    """The data's shape, as the model is built from it."""
    if isinstance(x, Sequences):
        values = x.values
        symbols = int(values.max()) + 1 if not values.is_floating_point() and values.dim() == 2 else 0
        dim = 0 if symbols else int(values.shape[-1])
        inputs = 0 if x.inputs is None else int(x.inputs.shape[-1])
        return DataInfo(dim=dim, symbols=symbols, points=len(x), steps=int(values.shape[1]), inputs=inputs)
    if x.dim() != 2:
        raise ConfigError(f"[data]: this model takes points [N, D]; the data have shape {list(x.shape)} (for "
                          "sequences choose a sequence model: [model] type = 'hmm' or 'lgssm')")  # fmt: skip
    return DataInfo(dim=int(x.shape[1]), points=len(x))


def _record(config: dict, x) -> dict:
    info = _data_info(x)
    record = {"dim": info.dim, "symbols": info.symbols, "points": info.points, "steps": info.steps,
              "inputs": info.inputs, "sha256": ""}  # fmt: skip
    if config["data"]["name"] == "file":
        from elbox.data.files import file_checksum

        record["sha256"] = file_checksum(config["data"]["path"])
    return record


def _info(config: dict) -> DataInfo:
    r = config[RECORD]
    return DataInfo(dim=r["dim"], symbols=r["symbols"], points=r["points"], steps=r["steps"], inputs=r["inputs"])


# Models.


class _Modules(nn.Module):
    """The model and, where it is not part of the model, the guide: the checkpoint's layout."""

    def __init__(self, model: nn.Module, guide: nn.Module | None):
        super().__init__()
        self.model = model
        if guide is not None and not any(m is guide for m in model.modules()):
            self.guide = guide


def build_model(config: dict, info: DataInfo | None = None):
    """The config's model and its guide (None where the run fits without one), parameters seeded
    by ``[train] seed`` and not yet fitted."""
    kind = MODEL_TYPES[config["model"]["type"]]
    info = info or _info(config)
    torch.manual_seed(config["train"]["seed"])
    dtype = kind.dtype or torch.get_default_dtype()
    model_config = {**config["model"], **{section: config[section] for section in kind.sections}}
    model = kind.build(model_config, info).to(dtype)
    train = config["train"]
    guide = None
    if train["method"] == "vi" and train["objective"] != "max_likelihood":
        guide = kind.guide(model, config["model"], info)
        guide = guide.to(dtype) if guide is not None else None
    return model, guide


def build_objective(config: dict, model, guide):
    """The config's objective (``[train] objective`` with ``num_samples`` and the ``[objective]``
    table) on the model and guide; a bad option is a :class:`ConfigError` naming ``[objective]``."""
    t = config["train"]
    options = dict(config["objective"])
    if t["objective"] != "max_likelihood" and (t["num_samples"] != 1 or t["objective"] != "elbo"):
        options["num_samples"] = t["num_samples"]
    try:
        return make_objective(t["objective"], model, guide, **options)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"[objective] of objective = {t['objective']!r}: {error}") from None


def _fit_options(config: dict) -> dict:
    """``fit``'s options from the config, besides the objective's own (see :func:`build_objective`)."""
    t = config["train"]
    options = {
        "epochs": t["epochs"],
        "batch_size": t["batch_size"],
        "lr": t["lr"],
        "schedule": t["schedule"],
        "adam_eps": t["adam_eps"],
        "kl_warmup": t["kl_warmup"],
        "clip_grad_norm": t["clip_grad_norm"] or None,
        "patience": t["patience"] or None,
        "checkpoint_every": t["checkpoint_every"],
        "seed": t["seed"],
        "binarization": "dynamic" if config["data"]["binarization"] == "dynamic" else None,
        "tensorboard": config["log"]["tensorboard"],
        "precision": t["precision"],
        "compile": t["compile"],
    }
    if t["anneal_rate"] > 0:
        options["schedules"] = [temperature_annealing(initial=config["objective"]["temperature"],
                                                      minimum=t["min_temperature"], rate=t["anneal_rate"],
                                                      every=t["anneal_every"])]  # fmt: skip
    return options


# Training.


def train_run(
    config_path: str | os.PathLike | None,
    run_dir: str | os.PathLike,
    *,
    resume: bool = False,
    progress: bool = False,
    config: dict | None = None,
) -> dict:
    """Fits the config's model (by EM or VI) into ``run_dir``, or continues the run there, and
    draws its figures. The directory is locked while it runs.

    Raises:
        FileExistsError: If ``run_dir`` holds a run, or other files, and ``resume`` is False
            (nothing is overwritten; a directory whose run never reached its first checkpoint is
            started again).
        ConfigError: For a bad config, or, on resume, one that differs from the run's.
        RunLockedError: If another process is writing ``run_dir``.
    """
    run = RunDirectory(run_dir)
    if config is None:
        config = load_config(config_path)
    if is_distributed():  # under torchrun: the same config on every rank, and VI (EM runs in one process)
        agree(to_toml(config), f"the config ({config_path})")
        if config["train"]["method"] == "em":
            raise ConfigError(
                f"[train] method = \"em\" runs in one process (its statistics are cheap); run `elbox fit "
                f"{config_path}` without torchrun, or use method = \"vi\" for data-parallel training"
            )
    # what can be refused is refused before the directory is touched: rank 0 reads it, every rank is told
    config = from_rank0(_checked_start, run, config, config_path, resume)
    if config["log"]["tensorboard"]:
        try:
            import torch.utils.tensorboard  # noqa: F401
        except ImportError:
            raise ConfigError("[log] tensorboard = true needs the tensorboard package: pip install "
                              "'elbox[tensorboard]' (or tensorboard)") from None  # fmt: skip
    x, _ = load_data(config, "train")
    valid = load_data(config, "validation")[0] if config["data"]["validation"] else None
    if not resume:
        config = {**config, RECORD: _record(config, x)}
    with rank0_context(lambda: RunLock(run.path)):
        text = to_toml(config)
        from_rank0(_prepare_directory, run, resume, text)
        model, guide = build_model(config)
        start = time.perf_counter()
        if config["train"]["method"] == "em":
            history = _em_run(run, config, model, x, text)
        else:
            _initialize(config, model, x)
            objective = build_objective(config, model, guide)
            history = fit(objective, x, validation=valid, run_dir=run.path, resume=resume, progress=progress,
                          config=text, **_fit_options(config))  # fmt: skip
        seconds = time.perf_counter() - start
        from_rank0(make_figures, run, config, model)
    return {"history": history, "seconds": seconds, "model": model, "guide": guide, "run": run, "config": config}


def _prepare_directory(run: RunDirectory, resume: bool, text: str) -> None:
    remove_stale_temporaries(run.path)
    if not resume:
        _clear_unstarted(run)
    atomic_write_text(run.config, text)


def _checked_start(run: RunDirectory, config: dict, config_path, resume: bool) -> dict:
    """Refuses a directory that holds a run (unless resuming) and a resumed run's changed config;
    returns the config, with the run's record when resuming."""
    if resume:
        run = RunDirectory.open(run.path)
        stored = config_of_record(run)
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


def _initialize(config: dict, model, x) -> None:
    init = config["train"]["init"]
    if init != "none" and hasattr(model, "initialize"):
        generator = torch.Generator().manual_seed(config["train"]["seed"])
        model.initialize(model.check_data(x), method=init, generator=generator)


def _em_run(run: RunDirectory, config: dict, model, x, text: str) -> History:
    """EM into the run directory: one metrics record per iteration, and the fitted model as the
    run's checkpoint."""
    t = config["train"]
    records = []

    def record(iteration, model, posterior, log_evidence):
        records.append({"epoch": iteration + 1, "bound": float(log_evidence.mean()), "reconstruction": None,
                        "kl": None, "validation": None})  # fmt: skip

    init = None if t["init"] == "none" else t["init"]
    history = em(model, x, max_iter=t["max_iter"], tol=t["tol"], init=init, n_init=t["n_init"] if init else 1,
                 seed=t["seed"], callback=record)  # fmt: skip
    records = records[-history.n_iter :]  # the kept restart's iterations
    run.truncate_metrics(0)
    for r in records:
        run.append_metrics(r)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    meta = {"format": "elbox-checkpoint-1", "epoch": history.n_iter, "method": "em", "history": history.to_dict(),
            "config": text}  # fmt: skip
    save_checkpoint(run.checkpoint(), tensors, meta)
    return history


# Loading a run back.


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
    run = RunDirectory.open(path)
    name = checkpoint if run.has_checkpoint(checkpoint) else "last"
    config = config_of_record(run, name)
    tensors, meta = load_checkpoint(run.checkpoint(name))
    model, guide = build_model(config)
    modules = _Modules(model, guide)
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


# Evaluation.


def evaluation_settings(config: dict, evaluate_config: str | os.PathLike | None = None, **overrides) -> dict:
    """The ``[evaluate]`` settings: the run's, then a separate TOML file's ``[evaluate]`` table,
    then the command line's options (those not None)."""
    settings = dict(config["evaluate"])
    if evaluate_config is not None:
        path = Path(evaluate_config)
        raw = read_toml(path, "--evaluate-config:")
        extra = [s for s in raw if s != "evaluate"]
        if extra:
            raise ConfigError(f"{path}: an evaluation config holds [evaluate] alone; received [{extra[0]}]")
        given = raw.get("evaluate", {})
        parsed = parse_config({"evaluate": given}, str(path))["evaluate"]
        settings.update({k: parsed[k] for k in given})
    settings.update({k: v for k, v in overrides.items() if v is not None})
    return settings


def evaluate_run(
    run_dir: str | os.PathLike,
    *,
    num_samples: int | None = None,
    max_points: int | None = None,
    evaluate_config: str | os.PathLike | None = None,
    progress=None,
) -> dict:
    """The evidence report of a run's model on its test set (:func:`elbox.evidence_report`),
    written to ``evaluation.json``. Exact models report their exact log p(x), and the gap of their
    q (the exact posterior of an EM fit: zero); a VI fit of an exact model also reports the exact
    gap of its trained q on the training points.

    Returns:
        evaluation.json's content: ``run``, ``data``, ``checkpoint``, ``settings`` and ``report``.
    """
    from elbox.evidence import evidence_report
    from elbox.guides import Exact

    loaded = load_run(run_dir)
    run, config, model = loaded.directory, loaded.config, loaded.model
    e = evaluation_settings(config, evaluate_config, num_samples=num_samples, max_points=max_points)
    with rank0_context(lambda: RunLock(run.path)):
        x, _ = load_data(config, "test")
        if e["max_points"]:
            x = x[: e["max_points"]]
        exact = getattr(model, "has_exact_evidence", False)
        if e["precision"] != "float32" and (exact or e["method"] != "importance"):
            raise ConfigError(f"[evaluate] precision = {e['precision']!r} applies to log p(x) by importance sampling; "
                              + (f"this run's {type(model).__name__} has exact evidence" if exact else
                                 f"[evaluate] method = {e['method']!r}"))  # fmt: skip
        guide = Exact(model) if exact else loaded.guide
        S = e["num_samples"]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(e["seed"])  # each batch's particles from a seed of (this seed, the batch)
            report = evidence_report(
                model, guide, x, num_samples=max(S, 5), iwae_samples=min(e["iwae_samples"], max(S, 5)),
                cubo_order=e["cubo_order"], method="exact" if exact else e["method"], ais_schedule=e["ais_steps"],
                refine_steps=0 if exact else e["refine_steps"], refine_points=e["refine_points"],
                batch_size=e["batch_size"], chunk_size=e["chunk_size"] or None, progress=progress,
                precision=e["precision"],
            )  # fmt: skip
        result = {
            "run": str(run.path),
            "data": f"{_data_name(config)} test set, {len(x)} points",
            "checkpoint": loaded.checkpoint,
            "settings": e,
            "report": report.to_dict(),
        }
        if exact and not isinstance(loaded.guide, Exact):
            result["training_gap"] = _training_gap(config, model, loaded.guide)
        from_rank0(write_json, run.path / "evaluation.json", result)
    return result


def _data_name(config: dict) -> str:
    return Path(config["data"]["path"]).name if config["data"]["name"] == "file" else config["data"]["name"]


@torch.no_grad()
def _training_gap(config: dict, model, guide) -> dict:
    """A VI fit's local q on its own training points: the exact gap log p(x) − ELBO = KL(q ‖ p(z|x))."""
    from elbox.bounds import elbo

    x, _ = load_data(config, "train")
    index = torch.arange(len(x))
    log_px = model.log_evidence(x).double()
    bound = elbo(model, guide, x, index=index, num_samples=100).value.double()
    gap = log_px - bound
    stderr = float(gap.std() / len(x) ** 0.5) if len(x) > 1 else None
    return {"points": len(x), "log_evidence": float(log_px.mean()), "elbo": float(bound.mean()),
            "gap": float(gap.mean()), "gap_stderr": stderr}  # fmt: skip


def report_run(run_dir: str | os.PathLike, *, fresh: bool = False, evaluate_config=None, progress=None) -> dict:
    """Writes ``report.json`` and the self-contained ``report.html`` (the bracket, the gaps, KL
    per unit, k-hat, the training curves) to the run directory, from its ``evaluation.json``
    (evaluated first when there is none, when ``fresh``, or when settings are given)."""

    loaded = load_run(run_dir)  # refuses an edited config.toml before anything is written
    run = loaded.directory
    run.read_metrics()  # and damaged metrics, before the evaluation is written
    path = run.path / "evaluation.json"
    evaluation = None if fresh or evaluate_config or not path.is_file() else json.loads(path.read_text())
    if evaluation is None or "report" not in evaluation:  # none yet, or one from before the report
        evaluation = evaluate_run(run_dir, evaluate_config=evaluate_config, progress=progress)
    with rank0_context(lambda: RunLock(run.path)):
        from_rank0(_write_report, run, evaluation)
    return {"evaluation": evaluation, "paths": [run.path / "report.json", run.path / "report.html"]}


def _write_report(run: RunDirectory, evaluation: dict) -> None:
    from elbox.plots import write_html_report

    metrics = run.read_metrics()
    content = {**evaluation, "training": metrics}
    write_json(run.path / "report.json", content)
    context = {"run directory": evaluation["run"], "data": evaluation["data"],
               "checkpoint": evaluation["checkpoint"], "epochs trained": len(metrics)}  # fmt: skip
    write_html_report(evaluation["report"], run.path / "report.html", title=f"Evidence report: {run.path.name}",
                      training=metrics, context=context)  # fmt: skip


# Figures.


@torch.no_grad()
def make_figures(run: RunDirectory, config: dict, model) -> list[Path]:
    """The training curves for every model; for a VAE also reconstructions beside inputs, prior
    samples and the latent space."""
    from elbox import plots

    kind = config["model"]["type"]
    paths = {"training": run.path / "training.png"}
    records = run.read_metrics()
    if records:
        plots.plot_training(records, paths["training"], title=f"{kind} on {_data_name(config)}")
    if kind not in ("vae", "discrete_vae"):
        return [p for p in paths.values() if p.exists()]
    x, labels = load_data(config, "test")
    x = model.check_data(x[:2000])
    labels = labels[:2000] if labels is not None else torch.zeros(len(x), dtype=torch.long)
    was_training = model.training
    model.eval()
    paths.update({name: run.path / f"{name}.png" for name in ("reconstructions", "samples", "latent_space")})
    plots.plot_reconstructions(x[:16], model.reconstruct(x[:16]), paths["reconstructions"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config["train"]["seed"])
        means = model.likelihood(model.prior().sample((32,))).mean
    plots.plot_samples(means, paths["samples"])
    plots.plot_latent_space(model.latent_mean(x).flatten(1), labels, paths["latent_space"])  # one-hot z: [n, N K]
    model.train(was_training)
    return list(paths.values())


def demo_config(epochs: int = 300, seed: int = 0) -> dict:
    """The demo's config: a VAE on the embedded digits (configs/vae_digits.toml, shorter)."""
    return parse_config(
        {
            "data": {"name": "digits", "binarization": "dynamic", "validation": 200, "test": 297},
            "model": {"latent_dim": 8, "hidden": [256, 256], "activation": "tanh", "decoder": "bernoulli"},
            "train": {"epochs": epochs, "batch_size": 100, "lr": 1e-3, "seed": seed, "patience": 50},
            "evaluate": {"num_samples": 1000, "batch_size": 100, "refine_points": 297},
        },
        "the demo's config",
    )
