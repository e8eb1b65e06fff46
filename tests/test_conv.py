"""Dreamer's convolutional encoder and decoder (elbox/models/_conv.py) and the image VAE built on
them (``encoder="conv"``): shapes, the architecture, training on pendulum frames generated in the
test, the run layer on image files, and the errors for images that are not 64 × 64."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import elbox
from elbox.cli.main import app
from elbox.envs import collect
from elbox.models import VAE
from elbox.models._conv import ConvDecoder, ConvEncoder

runner = CliRunner()


@pytest.fixture(scope="module")
def frames():
    """48 pendulum frames [48, 3, 64, 64] in [0, 1], from 3 random episodes of 16 steps."""
    return torch.from_numpy(collect("pendulum", 3, steps=16, pixels=True, seed=0).observations()).flatten(0, 1)


@pytest.mark.parametrize("depth", [4, 8, 32])
def test_the_encoder_is_four_stride_2_convolutions_to_32_depth_features(depth):
    encoder = ConvEncoder(channels=3, depth=depth)
    assert encoder.out_features == 32 * depth  # 8 depth channels of 2 × 2
    convs = [m for m in encoder.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [depth, 2 * depth, 4 * depth, 8 * depth]
    assert all(c.kernel_size == (4, 4) and c.stride == (2, 2) and c.padding == (0, 0) for c in convs)
    x = torch.rand(2, 5, 3, 64, 64)
    out = encoder(x)
    assert out.shape == (2, 5, 32 * depth)
    # leading dimensions are a batch: an image alone gives the features it gives in the batch
    torch.testing.assert_close(encoder(x[1, 3]), out[1, 3])


@pytest.mark.parametrize("channels", [1, 3])
def test_the_decoder_maps_features_to_64_by_64_images(channels):
    decoder = ConvDecoder(7, channels=channels, depth=4)
    convs = [m for m in decoder.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [c.kernel_size[0] for c in convs] == [5, 5, 6, 6] and all(c.stride == (2, 2) for c in convs)
    assert [c.out_channels for c in convs] == [16, 8, 4, channels]
    assert decoder.linear.out_features == 32 * 4
    z = torch.randn(2, 3, 7)
    out = decoder(z)
    assert out.shape == (2, 3, channels, 64, 64)
    torch.testing.assert_close(out[1, 2], decoder(z[1, 2]))


def test_images_not_64_by_64_and_wrong_widths_are_refused_naming_the_shape():
    encoder = ConvEncoder(3, depth=4)
    with pytest.raises(ValueError, match=r"x must be images \[\.\.\., 3, 64, 64\].*received Tensor of shape "
                                         r"\(2, 3, 32, 32\)"):  # fmt: skip
        encoder(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match=r"shape \(2, 1, 64, 64\)"):
        encoder(torch.rand(2, 1, 64, 64))
    with pytest.raises(ValueError, match=r"features must be \[\.\.\., in_features\] = \[\.\.\., 5\]"):
        ConvDecoder(5, depth=4)(torch.randn(2, 6))
    with pytest.raises(ValueError, match="activation must be one of"):
        ConvEncoder(3, activation="tanh")
    with pytest.raises(ValueError, match="depth must be an integer >= 1; received 0"):
        ConvEncoder(3, depth=0)


def test_a_conv_vae_takes_images_or_flat_points_alike():
    vae = VAE(3 * 64 * 64, 4, hidden=(16,), decoder="gaussian", encoder="conv", depth=4)
    assert vae.channels == 3 and "encoder='conv'" in repr(vae)
    x = torch.rand(5, 3, 64, 64)
    torch.manual_seed(1)
    images = elbox.elbo(vae, vae.guide, x).value
    torch.manual_seed(1)
    flat = elbox.elbo(vae, vae.guide, x.flatten(1)).value
    torch.testing.assert_close(images, flat)
    assert images.shape == (5,) and torch.isfinite(images).all()
    assert vae.reconstruct(x).shape == (5, 3 * 64 * 64)
    gray = VAE(64 * 64, 2, hidden=(), decoder="gaussian", encoder="conv", depth=4)
    assert gray.channels == 1 and elbox.elbo(gray, gray.guide, torch.rand(3, 64, 64)).value.shape == (3,)
    # the flow guide's encoder is convolutional too
    flow = VAE(3 * 64 * 64, 2, hidden=(), decoder="gaussian", encoder="conv", depth=4, guide="flow")
    assert torch.isfinite(elbox.elbo(flow, flow.guide, x, kl="mc").value).all()


def test_a_conv_vae_refuses_data_that_are_not_64_by_64_images():
    with pytest.raises(ValueError, match=r"encoder='conv' takes 64 × 64 images: data_dim must be C · 4096 for C "
                                         "channels; received data_dim = 3072"):  # fmt: skip
        VAE(3072, 2, encoder="conv")
    with pytest.raises(ValueError, match="encoder must be 'mlp' or 'conv'; received 'resnet'"):
        VAE(4096, 2, encoder="resnet")
    vae = VAE(3 * 64 * 64, 2, hidden=(), decoder="gaussian", encoder="conv", depth=4)
    with pytest.raises(ValueError, match=r"x must be images \[\.\.\., 3, 64, 64\].*shape \(4, 3, 32, 32\)"):
        elbox.elbo(vae, vae.guide, torch.rand(4, 3, 32, 32))
    with pytest.raises(ValueError, match=r"x must be images \[B, 3, 64, 64\] or flat \[B, 12288\]; received shape "
                                         r"\(2, 2, 3, 64, 64\)"):  # fmt: skip
        elbox.elbo(vae, vae.guide, torch.rand(2, 2, 3, 64, 64))


def test_a_conv_vae_trains_on_pendulum_frames_and_its_elbo_improves(frames):
    torch.manual_seed(0)
    vae = VAE(3 * 64 * 64, 4, hidden=(), decoder="gaussian", observation_variance=0.05, encoder="conv", depth=4)

    def elbo_per_frame():  # [48], each frame's ELBO from 8 draws
        with torch.no_grad():
            return elbox.elbo(vae, vae.guide, frames, num_samples=8).value

    before = elbo_per_frame()
    history = elbox.fit(vae, vae.guide, frames, epochs=15, batch_size=16, lr=2e-3, progress=False)
    after = elbo_per_frame()
    assert torch.isfinite(after).all() and all(np.isfinite(history.lower_bound))
    gain = after - before  # paired over the same frames
    assert gain.mean() > 4 * gain.std() / len(gain) ** 0.5
    assert history.lower_bound[-1] > history.lower_bound[0]


CONFIG = """
[data]
name = "file"
path = "{path}"
test = 8

[model]
type = "vae"
encoder = "conv"
depth = 4
latent_dim = 2
hidden = []
decoder = "gaussian"
observation_variance = 0.05

[train]
epochs = 2
batch_size = 16
seed = 0
"""


def test_elbox_fit_trains_a_conv_vae_on_an_image_file_and_on_collected_episodes(tmp_path, frames):
    images = tmp_path / "frames.npy"
    np.save(images, frames.numpy().astype(np.float32))
    config = tmp_path / "conv.toml"
    config.write_text(CONFIG.format(path=images))
    result = runner.invoke(app, ["fit", str(config), "--out", str(tmp_path / "run"), "--no-progress"])
    assert result.exit_code == 0, result.output
    run = elbox.load_run(tmp_path / "run")
    record = run.config["record"]
    assert run.model.channels == 3 and record["dim"] == 3 * 64 * 64 and record["points"] == 40  # 48 - 8 held out
    assert (tmp_path / "run" / "reconstructions.png").exists()
    # frames of episodes (x uint8 with meta.pixels, lengths): every frame of every episode is a point
    episodes = collect("pendulum", 2, steps=10, pixels=True, seed=1)
    path = tmp_path / "episodes.npz"
    np.savez(path, x=episodes.x, lengths=episodes.lengths, meta=np.array(json.dumps(episodes.meta)))
    config.write_text(CONFIG.format(path=path).replace("test = 8", "test = 4"))
    result = runner.invoke(app, ["fit", str(config), "--out", str(tmp_path / "episodes"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert elbox.load_run(tmp_path / "episodes").config["record"]["points"] == 16  # 20 frames, 4 held out
    # images that are not 64 × 64: the error names the key and the shape
    small = tmp_path / "small.npy"
    np.save(small, np.random.default_rng(0).random((10, 3, 32, 32)))
    config.write_text(CONFIG.format(path=small))
    result = runner.invoke(app, ["fit", str(config), "--out", str(tmp_path / "small"), "--no-progress"])
    assert result.exit_code == 2
    assert "[model] encoder = 'conv' takes images [N, C, 64, 64]" in " ".join(result.output.split())
    assert "[10, 3, 32, 32]" in result.output
