"""Data: MNIST from IDX files, an .npz and the shipped copy; MNIST-1D; binarization; batches."""

from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest
import torch

import elbox
from elbox.data import BatchIterator, binarize, draws, load_idx, mnist, mnist1d


def _write_idx(path, array: np.ndarray, gz: bool = False) -> None:
    code = {np.dtype(np.uint8): 0x08}[array.dtype]
    header = bytes([0, 0, code, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + array.tobytes()
    (gzip.open if gz else open)(path, "wb").write(payload)


@pytest.fixture
def idx_dir(tmp_path):
    rng = np.random.default_rng(0)
    images = {
        "train": rng.integers(0, 256, (30, 28, 28), dtype=np.uint8),
        "t10k": rng.integers(0, 256, (7, 28, 28), dtype=np.uint8),
    }
    labels = {"train": rng.integers(0, 10, 30, dtype=np.uint8), "t10k": rng.integers(0, 10, 7, dtype=np.uint8)}
    for split in ("train", "t10k"):
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", images[split], gz=True)
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte", labels[split])
    return tmp_path, images, labels


def test_mnist_reads_idx_files_with_a_validation_hold_out(idx_dir):
    root, images, labels = idx_dir
    x, y = mnist(root, validation=5)
    assert x.shape == (25, 784) and x.dtype == torch.float64
    np.testing.assert_allclose(x.numpy(), images["train"][:25].reshape(25, -1) / 255.0)
    assert y.tolist() == labels["train"][:25].tolist()
    xv, yv = mnist(root, split="validation", validation=5)
    assert xv.shape == (5, 784) and yv.tolist() == labels["train"][25:].tolist()
    xt, _ = mnist(root, split="test")
    assert xt.shape == (7, 784)


def test_mnist_reads_an_npz(tmp_path):
    rng = np.random.default_rng(1)
    arrays = {k: rng.integers(0, 256, (n, 28, 28), dtype=np.uint8) for k, n in (("x_train", 12), ("x_test", 4))}
    np.savez(tmp_path / "mnist.npz", y_train=np.arange(12) % 10, y_test=np.arange(4), **arrays)
    x, y = mnist(tmp_path)
    assert x.shape == (12, 784) and y.tolist() == (np.arange(12) % 10).tolist()


def test_mnist_falls_back_to_the_shipped_copy():
    x, y = mnist(split="test", dtype=torch.float32)
    assert x.shape == (10000, 784) and y.shape == (10000,)
    assert 0 <= float(x.min()) and float(x.max()) <= 1
    x_train, _ = mnist(validation=10000)
    assert x_train.shape == (50000, 784)


def test_mnist_errors_name_what_is_missing_or_wrong(tmp_path, idx_dir):
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        mnist(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="neither mnist.npz nor train-images-idx3-ubyte"):
        mnist(empty)
    root, _, _ = idx_dir
    bad = root / "t10k-labels-idx1-ubyte"
    bad.write_bytes(bad.read_bytes()[:-2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        mnist(root, split="test")
    with pytest.raises(ValueError, match="split must be one of"):
        mnist(root, split="dev")
    with pytest.raises(ValueError, match="needs validation="):
        mnist(root, split="validation")
    with pytest.raises(ValueError, match="not an IDX file"):
        load_idx(_text(tmp_path))


def _text(tmp_path):
    path = tmp_path / "note.txt"
    path.write_text("hello")
    return path


def test_the_unpickler_refuses_anything_but_arrays(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "mnist.pkl.gz"
    with gzip.open(path, "wb") as f:
        pickle.dump((np.zeros(3), Evil()), f)
    from elbox.data.mnist import _read_pickle

    with pytest.raises(pickle.UnpicklingError, match="refusing to load builtins.print"):
        _read_pickle(path)


def test_mnist1d_is_generated_locally():
    x, y = mnist1d(num_samples=200)
    assert x.shape == (160, 40) and y.shape == (160,)
    xt, _ = mnist1d(num_samples=200, split="test")
    assert xt.shape == (40, 40)
    assert torch.equal(mnist1d(num_samples=200)[0], x)  # seeded


def test_binarization_and_batches():
    x = torch.rand(101, 5)
    fixed = binarize(x, method="fixed", generator=torch.Generator().manual_seed(0))
    assert torch.equal(fixed, binarize(x, method="fixed", generator=torch.Generator().manual_seed(0)))
    assert set(fixed.unique().tolist()) <= {0.0, 1.0}
    # A dynamic binarization's mean is the intensity (within 4.5 standard errors).
    draws_ = torch.stack([binarize(x) for _ in range(2000)])
    se = (x * (1 - x) / 2000).sqrt().clamp_min(1e-6)
    assert ((draws_.mean(0) - x).abs() <= 4.5 * se + 1e-3).all()
    with pytest.raises(ValueError, match="intensities in \\[0, 1\\]"):
        binarize(x + 1)
    batches = list(BatchIterator(x, 25, generator=torch.Generator().manual_seed(0)))
    assert [len(b) for b, _ in batches] == [25, 25, 25, 25, 1]
    index = torch.cat([i for _, i in batches])
    assert sorted(index.tolist()) == list(range(101))
    assert all(torch.equal(b, x[i]) for b, i in batches)
    assert len(BatchIterator(x, 25, drop_last=True)) == 4


def test_draws_from_any_model():
    x, z = draws(elbox.GaussianMixture(2, 3), 10)
    assert x.shape == (10, 3) and z.shape == (10,)
    x, z = draws(elbox.HMM(2, "gaussian", dim=1), 4, num_steps=7)
    assert x.shape == (4, 7, 1)
