"""What `elbox fit`, `elbox evaluate` and `elbox demo` run: a config's data and VAE, trained
into a run directory, evaluated from it, and drawn."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from elbox.cli.config import ConfigError, load_config, parse_config, to_toml
from elbox.inference import fit
from elbox.io import RunDirectory, atomic_write_text, load_checkpoint, write_json
from elbox.models import VAE

__all__ = ["evaluate_run", "load_data", "load_run", "make_figures", "report_run", "train_run"]

_DATA_DIM = {"digits": 64, "mnist": 784, "mnist1d": 40}
_SPLIT_SEED = 0  # the digits' fixed train/test split does not depend on the run's seed


def load_data(config: dict, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The split ``"train"``, ``"validation"`` or ``"test"`` of the config's data, ``[N, D]``,
    and its labels. Training data keeps its intensities under dynamic binarization (the engine
    draws per batch); held-out splits are binarized once, reproducibly."""
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
    else:
        if name == "digits":
            from elbox.data import digits

            x, y = digits()
            order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(_SPLIT_SEED))
            test = data["test"]
            if test + held_out >= x.shape[0]:
                raise ConfigError(
                    f"[data] test + validation = {test + held_out} leaves no training digits of {x.shape[0]}"
                )
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
        x, y = x[index], y[index]
    return _binarized(x, data["binarization"], split, config["train"]["seed"]), y


def _binarized(x: torch.Tensor, method: str, split: str, seed: int) -> torch.Tensor:
    if method == "none" or (method == "dynamic" and split == "train"):
        return x
    if method == "threshold":
        return (x > 0.5).to(x.dtype)
    generator = torch.Generator().manual_seed(seed + {"train": 0, "validation": 1, "test": 2}[split])
    return torch.bernoulli(x, generator=generator)


def build_model(config: dict, data_dim: int) -> VAE:
    m = config["model"]
    torch.manual_seed(config["train"]["seed"])
    return VAE(
        data_dim,
        m["latent_dim"],
        hidden=tuple(m["hidden"]),
        activation=m["activation"],
        decoder=m["decoder"],
        observation_variance=m["observation_variance"],
        beta=m["beta"],
        deterministic_encoder=m["deterministic_encoder"],
    )


def _fit_options(config: dict) -> dict:
    t = config["train"]
    return {
        "bound": t["bound"],
        "num_samples": t["num_samples"],
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
    }


def train_run(
    config_path: str | os.PathLike | None,
    run_dir: str | os.PathLike,
    *,
    resume: bool = False,
    progress: bool = False,
    config: dict | None = None,
) -> dict:
    """Trains the config's VAE into ``run_dir`` (or continues it) and draws its figures.

    Raises:
        FileExistsError: If ``run_dir`` holds files and ``resume`` is False (nothing is
            overwritten).
        ConfigError: For a bad config, or one that differs from the run's on resume.
    """
    run = RunDirectory(run_dir)
    if config is None:
        config = load_config(config_path)
    if resume:
        run = RunDirectory.open(run_dir)
        saved = load_config(run.config)
        for section, values in saved.items():
            for key, value in values.items():
                if key == "epochs" and section == "train":
                    continue
                if config[section][key] != value:
                    raise ConfigError(
                        f"cannot resume {run.path}: [{section}] {key} is {config[section][key]!r} in "
                        f"{config_path}, but the run was started with {value!r}"
                    )
    elif run.path.exists() and any(run.path.iterdir()):
        raise FileExistsError(
            f"run directory {run.path} exists and is not empty; choose a new one, or pass --resume to continue "
            "the run in it (nothing was overwritten)"
        )
    x, _ = load_data(config, "train")
    valid = load_data(config, "validation")[0] if config["data"]["validation"] else None
    model = build_model(config, x.shape[1])
    text = to_toml(config)
    atomic_write_text(run.config, text)
    start = time.perf_counter()
    history = fit(
        model, model.guide, x, validation=valid, run_dir=run.path, resume=resume, progress=progress, config=text,
        **_fit_options(config),
    )  # fmt: skip
    seconds = time.perf_counter() - start
    make_figures(run, config, model)
    return {"history": history, "seconds": seconds, "model": model, "run": run}


def load_run(run_dir: str | os.PathLike, checkpoint: str = "best") -> tuple[RunDirectory, dict, VAE]:
    """A run directory's config and its model at the ``best`` checkpoint (``last`` if none)."""
    run = RunDirectory.open(run_dir)
    config = load_config(run.config)
    name = checkpoint if run.has_checkpoint(checkpoint) else "last"
    tensors, _ = load_checkpoint(run.checkpoint(name))
    model = build_model(config, _DATA_DIM[config["data"]["name"]])
    model.load_state_dict({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")})
    model.eval()
    return run, config, model


def evaluate_run(
    run_dir: str | os.PathLike, *, num_samples: int | None = None, max_points: int | None = None, progress=None
) -> dict:
    """The evidence report of a run's model on its test set (:func:`elbox.evidence_report` with
    the config's ``[evaluate]`` settings), written to ``evaluation.json`` in the run directory.

    ``progress`` is called as ``progress(stage, done, total)``.

    Returns:
        evaluation.json's content: ``run``, ``data``, ``checkpoint`` and ``report`` (the
        :class:`~elbox.evidence.EvidenceReport` as a dict).
    """
    from elbox.evidence import evidence_report

    run, config, model = load_run(run_dir)
    e = config["evaluate"]
    S = e["num_samples"] if num_samples is None else num_samples
    limit = e["max_points"] if max_points is None else max_points
    x, _ = load_data(config, "test")
    if limit:
        x = x[:limit]
    report = evidence_report(
        model, model.guide, x, num_samples=S, iwae_samples=min(e["iwae_samples"], S), cubo_order=e["cubo_order"],
        method=e["method"], ais_schedule=e["ais_steps"], refine_steps=e["refine_steps"],
        refine_points=e["refine_points"], batch_size=e["batch_size"], chunk_size=e["chunk_size"] or None,
        progress=progress,
    )  # fmt: skip
    result = {
        "run": str(run.path),
        "data": f"{config['data']['name']} test set, {x.shape[0]} points",
        "checkpoint": "best" if run.has_checkpoint("best") else "last",
        "report": report.to_dict(),
    }
    write_json(run.path / "evaluation.json", result)
    return result


def report_run(run_dir: str | os.PathLike, *, fresh: bool = False, progress=None) -> dict:
    """Writes ``report.json`` and the self-contained ``report.html`` (the bracket, the gaps, KL
    per unit, k-hat, the training curves) to the run directory, from its ``evaluation.json``
    (evaluated first when there is none, or when ``fresh``)."""
    from elbox.plots import write_html_report

    run = RunDirectory.open(run_dir)
    import json

    path = run.path / "evaluation.json"
    evaluation = None if fresh or not path.is_file() else json.loads(path.read_text())
    if evaluation is None or "report" not in evaluation:  # none yet, or one from before the report
        evaluation = evaluate_run(run_dir, progress=progress)
    metrics = run.read_metrics()
    content = {**evaluation, "training": metrics}
    write_json(run.path / "report.json", content)
    context = {"run directory": evaluation["run"], "data": evaluation["data"], "checkpoint": evaluation["checkpoint"],
               "epochs trained": len(metrics)}  # fmt: skip
    write_html_report(evaluation["report"], run.path / "report.html", title=f"Evidence report: {run.path.name}",
                      training=metrics, context=context)  # fmt: skip
    return {"evaluation": evaluation, "paths": [run.path / "report.json", run.path / "report.html"]}


@torch.no_grad()
def make_figures(run: RunDirectory, config: dict, model: VAE) -> list[Path]:
    """Training curves, reconstructions beside inputs, prior samples and the latent space."""
    from elbox import plots

    x, labels = load_data(config, "test")
    x, labels = x[:2000], labels[:2000]
    was_training = model.training
    model.eval()
    paths = {name: run.path / f"{name}.png" for name in ("training", "reconstructions", "samples", "latent_space")}
    plots.plot_training(run.read_metrics(), paths["training"], title=f"VAE on {config['data']['name']}")
    plots.plot_reconstructions(x[:16], model.reconstruct(x[:16]), paths["reconstructions"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config["train"]["seed"])
        means = model.likelihood(model.prior().sample((32,))).mean
    plots.plot_samples(means, paths["samples"])
    plots.plot_latent_space(model.guide(x).mean, labels, paths["latent_space"])
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
