"""scikit-learn's 8×8 handwritten digits: the data set elbox embeds (no download)."""

from __future__ import annotations

import torch
from torch import Tensor

from elbox._validation import check_dtype, check_positive_int

__all__ = ["digits"]


def digits(pca_components: int | None = None, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
    """The 1,797 digits as pixels in [0, 1], ``[1797, 64]``, and their labels, ``[1797]``.

    Args:
        pca_components: If given, project the pixels onto this many principal components
            (centred; scikit-learn's PCA) instead of returning raw pixels.
        dtype: The floating dtype (default torch's default).

    Returns:
        (x, labels).
    """
    check_dtype(dtype)
    if pca_components is not None:
        check_positive_int(pca_components, "pca_components")
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.data / 16.0
    if pca_components is not None:
        from sklearn.decomposition import PCA

        k = check_positive_int(pca_components, "pca_components")
        if k > x.shape[1]:
            raise ValueError(f"pca_components must be at most {x.shape[1]}; received {k}")
        x = PCA(n_components=k, random_state=0).fit_transform(x)
    dtype = dtype or torch.get_default_dtype()
    return torch.as_tensor(x, dtype=dtype), torch.as_tensor(bunch.target, dtype=torch.long)
