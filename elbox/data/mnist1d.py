"""MNIST-1D (Greydanus, 2020): 1-d signals of 40 samples made from ten digit templates."""

from __future__ import annotations

import torch
from torch import Tensor

from elbox._validation import check_dtype, check_positive_int

__all__ = ["mnist1d"]


def mnist1d(
    num_samples: int = 5000, *, split: str = "train", seed: int = 42, dtype: torch.dtype | None = None
) -> tuple[Tensor, Tensor]:
    """MNIST-1D, generated locally by the ``mnist1d`` package (never downloaded).

    Args:
        num_samples: Signals generated in all; 80% form the training split, 20% the test split
            (the package's defaults: 5,000 and seed 42 reproduce its published data set).
        split: ``"train"`` or ``"test"``.
        seed: The generator's seed.
        dtype: The floating dtype (default torch's default).

    Returns:
        Signals ``[N, 40]`` (real-valued, roughly standardized: use a Gaussian decoder) and
        labels ``[N]``.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test'; received {split!r}")
    num_samples = check_positive_int(num_samples, "num_samples", minimum=10)
    seed = check_positive_int(seed, "seed", minimum=0)
    if seed >= 2**32:
        raise ValueError(f"seed must be an integer in [0, 2**32) (numpy's generator's range); received {seed}")
    check_dtype(dtype)
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as error:
        raise ImportError("mnist1d needs the mnist1d package: pip install mnist1d") from error
    args = get_dataset_args()
    args.num_samples, args.seed = num_samples, seed
    data = make_dataset(args)
    x, y = (data["x"], data["y"]) if split == "train" else (data["x_test"], data["y_test"])
    return torch.as_tensor(x).to(dtype or torch.get_default_dtype()), torch.as_tensor(y).long()
