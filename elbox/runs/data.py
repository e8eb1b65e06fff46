"""The data a run trains and is evaluated on: a config's data source, split and binarized, and the
record of its shape that the model is built from."""

from __future__ import annotations

from pathlib import Path

import torch

from elbox.data.sequences import Sequences
from elbox.runs.config import RECORD, ConfigError, check_config
from elbox.runs.sources import DATA_SOURCES, DataSource, register_data_source, split_by_seed
from elbox.runs.types import MODEL_TYPES, DataInfo

__all__ = ["data_info", "data_name", "info_of_record", "load_data", "record_of"]

def load_data(config: dict, split: str):
    """The split ``"train"``, ``"validation"`` or ``"test"`` of the config's data source
    (``[data] name``, from :data:`~elbox.runs.sources.DATA_SOURCES`): ``[N, D]``, or
    :class:`Sequences` for sequence models, and its labels (None where it has none). Training
    data keep their intensities under dynamic binarization (the engine draws per batch);
    held-out splits are binarized once, reproducibly."""
    if split not in ("train", "validation", "test"):
        raise ValueError(f"split must be 'train', 'validation' or 'test'; received {split!r}")
    data = check_config(config)["data"]
    if split == "validation" and data["validation"] == 0:
        raise ConfigError("[data] validation is 0: there is no validation split")
    x, y = DATA_SOURCES[data["name"]].load(config, split)
    if isinstance(x, Sequences):
        return x, y
    return _binarized(x, data["binarization"], split, config["train"]["seed"]), y


def _file(config: dict, split: str) -> tuple:
    """The user's own file (``[data] path``): a fifth of it (or ``[data] test`` points) held out
    at random as the test set."""
    x = _user_file(config)
    return split_by_seed(x, None, split, config["data"]["test"] or max(1, len(x) // 5), config["data"]["validation"],
                         config["data"]["path"])  # fmt: skip


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


def data_info(x) -> DataInfo:
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


def record_of(config: dict, x) -> dict:
    """The record of the data kept in the run's config: the shape the model is built from, and a
    user's file's checksum."""
    info = data_info(x)
    record = {"dim": info.dim, "symbols": info.symbols, "points": info.points, "steps": info.steps,
              "inputs": info.inputs, "sha256": ""}  # fmt: skip
    if config["data"]["name"] == "file":
        from elbox.data.files import file_checksum

        record["sha256"] = file_checksum(config["data"]["path"])
    return record


def info_of_record(config: dict) -> DataInfo:
    """The data's shape, from the run's record of it."""
    r = config[RECORD]
    return DataInfo(dim=r["dim"], symbols=r["symbols"], points=r["points"], steps=r["steps"], inputs=r["inputs"])



def data_name(config: dict) -> str:
    """The data's name as tables and figures show it: the file's name, or the data set's."""
    return Path(config["data"]["path"]).name if config["data"]["name"] == "file" else config["data"]["name"]


register_data_source(DataSource("file", _file, "your own .npy, .npz or .csv file ([data] path): points [N, D], or "
                                "sequences (x, lengths, inputs)", keys=("path",)))  # fmt: skip
