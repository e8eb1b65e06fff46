"""The data a run trains and is evaluated on: a config's data source, split and binarized, and the
record of its shape that the model is built from."""

from __future__ import annotations

from pathlib import Path

import torch

from elbox.data.sequences import Sequences
from elbox.runs.config import RECORD, ConfigError, check_config
from elbox.runs.sources import DATA_SOURCES, DataSource, register_data_source, split_by_seed, test_size
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
    at random as the test set; with ``split = "time"``, the last steps of every sequence."""
    x = _user_file(config)
    data = config["data"]
    if data["split"] == "time":
        return _time_split(x, split, data), None
    return split_by_seed(x, None, split, test_size(data, max(1, len(x) // 5)), data["validation"], data["path"])


def time_steps(data: dict, lengths) -> tuple[int, int]:
    """``split = "time"``: the steps held out at the end of every sequence, (validation, test)."""
    test = test_size(data, max(1, int(lengths.min()) // 5))
    return data["validation"], test


def _time_split(x: Sequences, split: str, data: dict) -> Sequences:
    """The time split of sequences: the training part is each sequence without its last
    validation + test steps; the validation part adds the validation steps, the test part is the
    whole sequence. A held-out part is scored given what precedes it (:func:`held_out_steps`)."""
    lengths = x.lengths
    validation, test = time_steps(data, lengths)
    keep = lengths - validation - test
    if bool((keep < 1).any()):
        b = int((keep < 1).nonzero()[0])
        raise ConfigError(f"[data] validation + test = {validation + test} steps leave no training steps of sequence "
                          f"{b}, which has {int(lengths[b])}")  # fmt: skip
    if split == "test" and test == 0:
        raise ConfigError("[data] test = 0: no test steps are held out (split = 'time'); set [data] test to a number "
                          "of steps")  # fmt: skip
    end = {"train": keep, "validation": keep + validation, "test": lengths}[split]
    return _prefix(x, end)


def _prefix(x: Sequences, lengths) -> Sequences:
    """Each sequence cut to its first ``lengths[b]`` steps (padded to the longest)."""
    T = int(lengths.max())
    mask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(-1)  # [B, T]
    values = x.values[:, :T]
    zero = torch.zeros((), dtype=values.dtype)
    values = torch.where(mask.reshape(mask.shape + (1,) * (values.dim() - 2)), values, zero)
    inputs = None if x.inputs is None else x.inputs[:, :T]
    rewards = None if x.rewards is None else torch.where(mask, x.rewards[:, :T], 0.0)
    continues = None
    if x.continues is not None:  # a sequence cut short goes on past its new end (1 there)
        cut = (lengths < x.lengths).unsqueeze(-1) & (torch.arange(T) == lengths.unsqueeze(-1) - 1)
        continues = torch.where(mask & ~cut, x.continues[:, :T], 1.0)
    return Sequences(values, mask, inputs=inputs, rewards=rewards, continues=continues)


def held_out_steps(config: dict, split: str) -> int:
    """How many final steps of each sequence of the split ``split`` are its own, scored given the
    steps before them (``split = "time"``); 0 for a random split, where whole points are held out."""
    data = config["data"]
    if data["split"] != "time" or split == "train":
        return 0
    x = _user_file(config)
    validation, test = time_steps(data, x.lengths)
    return validation if split == "validation" else test


def time_continuation(config: dict, sequence: int, steps: int):
    """``split = "time"``: the held-out steps (validation, then test) that follow the training part
    of sequence ``sequence``, at most ``steps`` of them, ``[k', D]``."""
    x = _user_file(config)
    validation, test = time_steps(config["data"], x.lengths)
    end = int(x.lengths[sequence])
    start = end - validation - test
    return x.values[sequence, start : min(end, start + steps)]


def _user_file(config: dict):
    """The user's file as the model type needs it: points ``[N, D]``, or sequences."""
    from elbox.data import load_file

    path = config["data"]["path"]
    sequences = MODEL_TYPES[config["model"]["type"]].sequences
    frames = config["model"].get("encoder") == "conv" and sequences
    # frames stored as bytes become float32 intensities in one conversion (float64 would double the set)
    x = load_file(path, frame_dtype=torch.float32) if frames else load_file(path)
    recorded = config.get(RECORD, {}).get("sha256")
    if recorded:
        from elbox.data.files import file_checksum

        if file_checksum(path) != recorded:
            raise ConfigError(
                f"[data] path: {path} has changed since the run was trained (its SHA-256 differs from the one "
                "recorded); evaluate on the file the run was trained on, or train a new run"
            )
    if config["model"].get("encoder") == "conv" and not sequences:
        x = _flat_images(x, path)
    if frames:
        x = _episode_frames(x, path)
    if sequences and not isinstance(x, Sequences):
        if str(path).lower().endswith(".csv") and x.dim() == 2:
            x = x.unsqueeze(0)  # a table: one series, a row per step and a column per variable
        elif x.dim() == 2 and x.is_floating_point():
            x = x.unsqueeze(-1)  # [N, T] numbers: sequences of one value per step
        x = Sequences(x)
    return x


def _flat_images(x: torch.Tensor, path) -> torch.Tensor:
    """``[model] encoder = "conv"``: images ``[N, C, 64, 64]`` (or ``[N, 64, 64]``, or the frames of
    episodes ``[N, T, C, 64, 64]`` with lengths) as the model holds them, flat ``[N, C · 64 · 64]``;
    flat data pass as they are (the model checks their size)."""
    from elbox.models._conv import IMAGE_SIZE

    if isinstance(x, Sequences):  # episodes of frames (elbox collect --pixels): every frame, in order
        x = x.values[x.mask]  # [frames, C, 64, 64]
    if x.dim() == 3:
        x = x.unsqueeze(1)  # one channel
    if x.dim() == 4 and tuple(x.shape[2:]) == (IMAGE_SIZE, IMAGE_SIZE):
        return x.flatten(1)
    if x.dim() != 2:
        raise ConfigError(f"[model] encoder = 'conv' takes images [N, C, {IMAGE_SIZE}, {IMAGE_SIZE}] (or [N, "
                          f"{IMAGE_SIZE}, {IMAGE_SIZE}]); [data] path {path} holds shape {list(x.shape)}")  # fmt: skip
    return x


def _episode_frames(x, path):
    """A sequence model's ``encoder = "conv"``: episodes of frames ``[N, T, C, 64, 64]`` (channels
    first, as ``elbox collect --pixels`` writes them; ``[N, T, 64, 64]``: one channel) as Sequences
    of float frames. Bytes (uint8, 0–255) not read as frames by :func:`~elbox.data.load_file` (a
    file without ``elbox collect``'s meta) become intensities in [0, 1] here; frames of another
    size or channels last are refused with the layout expected."""
    from elbox.models._conv import IMAGE_SIZE

    values = x.values if isinstance(x, Sequences) else x
    side = (IMAGE_SIZE, IMAGE_SIZE)
    expected = (f"[model] encoder = 'conv' takes episodes of frames [N, T, C, {IMAGE_SIZE}, {IMAGE_SIZE}] (channels "
                f"first, as `elbox collect ENV --pixels` writes them; uint8 0-255 or floats in [0, 1])")  # fmt: skip
    shape = list(values.shape)
    if values.dim() == 5 and tuple(shape[2:4]) == side and tuple(shape[3:]) != side:
        raise ConfigError(f"{expected}; [data] path {path} holds frames channels last, shape {shape}: store them as "
                          "np.moveaxis(x, -1, 2)")  # fmt: skip
    if values.dim() == 4 and tuple(shape[2:]) == side:
        values = values.unsqueeze(2)  # one channel
    elif values.dim() != 5 or tuple(shape[3:]) != side:
        raise ConfigError(f"{expected}; [data] path {path} holds shape {shape}")
    if values.dtype == torch.uint8:
        values = values.to(torch.float32).div_(255)
    elif not values.is_floating_point():
        raise ConfigError(f"{expected}; [data] path {path} holds frames of dtype {values.dtype}")
    if not isinstance(x, Sequences):
        return Sequences(values)
    return Sequences(values, x.mask, inputs=x.inputs, rewards=x.rewards)


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
        # frames [N, T, C, H, W]: the channels (the model's obs_dim)
        dim = 0 if symbols else int(values.shape[2] if values.dim() == 5 else values.shape[-1])
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
