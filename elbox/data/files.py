"""A user's own data file: ``.npy``, ``.npz`` (arrays only, never pickles) or ``.csv``."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from elbox._validation import check_path, describe
from elbox.data.sequences import Sequences

__all__ = ["FILE_SUFFIXES", "file_checksum", "load_file"]

FILE_SUFFIXES = (".npy", ".npz", ".csv")
#: The names an .npz file may give its data array, tried in order.
_VALUE_KEYS = ("x", "values", "data")


def load_file(path: str | os.PathLike, *, frame_dtype: torch.dtype = torch.float64) -> Tensor | Sequences:
    """Reads a data file into a tensor ``[N, *data_shape]`` or, for sequences, :class:`Sequences`.

    - ``.npy``: one numeric array, ``[N, D]`` (points) or ``[N, T, D]`` / ``[N, T]`` (N sequences
      of T steps; integers ``[N, T]`` are symbols for a categorical HMM).
    - ``.npz``: the data under ``x`` (or ``values``, or ``data``); for sequences of different
      lengths, ``lengths [N]`` (the values padded to the longest), and optionally ``inputs
      [N, T, U]`` for a state-space model with controls, ``rewards [N, T]`` and ``continues [N, T]``
      (a world model's: continuation flags, 0 at a terminal step; ``elbox collect`` writes ``x``,
      ``inputs``, ``rewards``, ``continues`` and ``lengths``); ``meta``, a JSON
      object in a string (the provenance ``elbox collect`` records), is read only for its ``pixels``
      flag: frames stored as ``uint8`` under ``pixels: true`` become intensities in [0, 1] (divided by 255),
      of ``frame_dtype`` (float64; the run layer reads a pixel world model's frames as float32, in one
      conversion).
    - ``.csv``: a table of numbers, one row per point (a first row of column names is skipped);
      comma-separated.

    Arrays are read with ``allow_pickle=False``: a file holding Python objects is refused rather
    than executed. Floating data become float64 tensors (the model converts them to its dtype).

    Raises:
        FileNotFoundError: If there is no such file.
        ValueError: For an unknown suffix, a file that is not the format its suffix says, or
            content that is not numeric data of a usable shape (the message names it).
    """
    path = Path(check_path(path)).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"[data] path: the data file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix not in FILE_SUFFIXES:
        raise ValueError(f"[data] path must be a {', '.join(FILE_SUFFIXES)} file; received {path.name!r}")
    try:
        if suffix == ".npy":
            return _tensor(np.load(path, allow_pickle=False), path)
        if suffix == ".npz":
            return _from_npz(path, frame_dtype)
        return _tensor(_read_csv(path), path)
    except (ValueError, OSError, EOFError) as error:
        if isinstance(error, ValueError) and str(error).startswith(f"{path}"):
            raise
        raise ValueError(f"{path} is not a readable {suffix} data file: {error}") from error


def file_checksum(path: str | os.PathLike) -> str:
    """The file's SHA-256 (a run records it, so that evaluating on a changed file is refused)."""
    digest = hashlib.sha256()
    with open(Path(path).expanduser(), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _tensor(array: np.ndarray, path: Path) -> Tensor:
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{path} must hold numbers; it holds an array of dtype {array.dtype}")
    if array.ndim < 2 or array.shape[0] == 0:
        raise ValueError(
            f"{path} must hold an array [N, D] of N points (or [N, T, D] sequences); received shape {array.shape}"
        )
    x = torch.from_numpy(np.ascontiguousarray(array))
    return x.double() if x.is_floating_point() else x


def _from_npz(path: Path, frame_dtype: torch.dtype = torch.float64) -> Tensor | Sequences:
    with np.load(path, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    key = next((k for k in _VALUE_KEYS if k in arrays), None)
    if key is None:
        raise ValueError(
            f"{path} must hold the data under one of {list(_VALUE_KEYS)}; it holds {sorted(arrays) or 'nothing'}"
        )
    meta = _meta(arrays.pop("meta", None), path)
    unknown = sorted(set(arrays) - {key, "lengths", "inputs", "rewards", "continues"})
    if unknown:
        raise ValueError(f"{path}: unexpected arrays {unknown} (known: {key!r}, 'lengths', 'inputs', 'rewards', "
                         "'continues', 'meta')")  # fmt: skip
    values = _tensor(arrays[key], path)
    if meta.get("pixels") and arrays[key].dtype == np.uint8:
        values = values.to(frame_dtype).div_(255)  # frames stored as bytes (elbox collect --pixels): in [0, 1]
    if not {"lengths", "inputs", "rewards", "continues"} & set(arrays):
        return values
    lengths = arrays.get("lengths")
    inputs = arrays.get("inputs")
    rewards = arrays.get("rewards")
    continues = arrays.get("continues")
    if lengths is not None and lengths.dtype.kind not in "iu":
        raise ValueError(f"{path}: lengths must be integers; received {describe(lengths)}")
    if rewards is not None and rewards.dtype.kind not in "biuf":
        raise ValueError(f"{path}: rewards must be numbers; received {describe(rewards)}")
    if continues is not None and continues.dtype.kind not in "biuf":
        raise ValueError(f"{path}: continues must be 0/1 flags; received {describe(continues)}")
    return Sequences(
        values,
        lengths=None if lengths is None else torch.from_numpy(lengths.astype(np.int64)),
        inputs=None if inputs is None else torch.from_numpy(np.ascontiguousarray(inputs)).double(),
        rewards=None if rewards is None else torch.from_numpy(np.ascontiguousarray(rewards)).double(),
        continues=None if continues is None else torch.from_numpy(np.ascontiguousarray(continues)).double(),
    )


def _meta(meta: np.ndarray | None, path: Path) -> dict:
    """The provenance ``elbox collect`` stores as array ``meta``: a JSON object in a string."""
    if meta is None:
        return {}
    if meta.dtype.kind != "U" or meta.ndim != 0:
        raise ValueError(f"{path}: meta must be a JSON object in a string (as elbox collect writes it); received "
                         f"{describe(meta)}")  # fmt: skip
    try:
        meta = json.loads(str(meta))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: meta must be a JSON object in a string; it does not parse: {error}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: meta must be a JSON object in a string; received a JSON {type(meta).__name__}")
    return meta


def _read_csv(path: Path) -> np.ndarray:
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines:
        raise ValueError(f"{path} is empty")
    first = lines[0].split(",")
    try:
        [float(v) for v in first]
        skip = 0
    except ValueError:
        skip = 1  # a header of column names
    array = np.loadtxt(path, delimiter=",", skiprows=skip, ndmin=2, dtype=np.float64)
    return array
