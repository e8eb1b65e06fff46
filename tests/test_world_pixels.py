"""The pixel world model's run layer: configs/world_model_pendulum_pixels.toml through ``elbox fit
--quick``, ``evaluate`` and ``report`` on tiny episodes of frames collected in the test, the frames'
layout and its errors, and ``elbox.plots.plot_frames``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tomllib
import torch
from typer.testing import CliRunner

import elbox
from elbox.cli.main import app
from elbox.envs import collect
from elbox.plots import plot_frames
from elbox.runs import load_config, load_data

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "world_model_pendulum_pixels.toml"


@pytest.fixture(scope="module")
def episodes():
    """6 random-policy Pendulum-v1 episodes of 6 steps, frames [6, 6, 3, 64, 64] uint8."""
    return collect("pendulum", 6, steps=6, pixels=True, seed=3)


def _config(tmp_path: Path, data: Path) -> Path:
    """The pixel config with its data path pointed at ``data`` and 2 test episodes."""
    text = CONFIG.read_text()
    assert 'path = "data/world_pendulum_pixels.npz"' in text and "test = 20" in text
    config = tmp_path / "pixels.toml"
    config.write_text(text.replace('path = "data/world_pendulum_pixels.npz"', f'path = "{data}"')
                      .replace("test = 20", "test = 2"))  # fmt: skip
    return config


def _fit(config: Path, out: Path):
    return runner.invoke(app, ["fit", str(config), "--quick", "--out", str(out), "--no-progress"])


def test_the_pixel_config_fits_evaluates_and_reports_quick(tmp_path, episodes):
    data = episodes.save(tmp_path / "frames.npz")
    config = _config(tmp_path, data)
    result = _fit(config, tmp_path / "run")
    assert result.exit_code == 0, result.output
    run = elbox.load_run(tmp_path / "run")
    model = run.model
    assert type(model).__name__ == "WorldModel" and model.encoder_kind == "conv" and model.depth == 16
    assert model.obs_shape == (3, 64, 64) and model.action_dim == 1
    record = run.config["record"]
    assert record["dim"] == 3 and record["inputs"] == 1 and record["points"] == 4 and record["steps"] == 6
    assert (tmp_path / "run" / "imagined_frames.png").stat().st_size > 1000
    assert (tmp_path / "run" / "gap_over_time.png").is_file()
    result = runner.invoke(app, ["evaluate", str(tmp_path / "run"), "--quick"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["report", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    evaluation = (tmp_path / "run" / "evaluation.json").read_text()
    assert '"smc"' in evaluation and (tmp_path / "run" / "report.html").is_file()
    # the test split as the model reads it: float32 intensities, the collected bytes / 255
    x, _ = load_data(run.config, "test")
    assert x.values.dtype == torch.float32 and x.values.shape[1:] == (6, 3, 64, 64)
    frames = torch.from_numpy(episodes.x).float() / 255
    assert any(torch.equal(x.values[0], frames[i]) for i in range(6))


def test_the_committed_frames_read_as_float32_intensities():
    config = load_config(CONFIG)
    x, _ = load_data(config, "test")
    assert x.values.dtype == torch.float32 and tuple(x.values.shape) == (20, 50, 3, 64, 64)
    assert float(x.values.min()) >= 0 and float(x.values.max()) == 1.0
    assert x.inputs.shape == (20, 50, 1) and x.rewards.shape == (20, 50)
    # one conversion of the bytes: the float64 reader's frames, rounded to float32
    path = config["data"]["path"]
    wide = elbox.data.load_file(path)
    narrow = elbox.data.load_file(path, frame_dtype=torch.float32)
    assert wide.values.dtype == torch.float64 and narrow.values.dtype == torch.float32
    torch.testing.assert_close(narrow.values[:3], wide.values[:3].float(), rtol=0, atol=0)


def test_uint8_frames_without_meta_are_intensities(tmp_path, episodes):
    # a user's own file of bytes (no elbox collect meta): the run layer divides by 255 itself
    path = tmp_path / "bytes.npz"
    np.savez(path, x=episodes.x, inputs=episodes.inputs, rewards=episodes.rewards, lengths=episodes.lengths)
    config = load_config(_config(tmp_path, path))
    x, _ = load_data(config, "train")
    assert x.values.dtype == torch.float32 and float(x.values.max()) == 1.0 and float(x.values.min()) >= 0


@pytest.mark.parametrize("layout", ["channels_last", "small", "vectors_of_pixels"])
def test_frames_of_the_wrong_layout_or_size_are_refused_naming_both(tmp_path, episodes, layout):
    x = {"channels_last": episodes.x.transpose(0, 1, 3, 4, 2),  # [N, T, 64, 64, 3]
         "small": episodes.x[..., ::2, ::2],  # [N, T, 3, 32, 32]
         "vectors_of_pixels": episodes.x.reshape(6, 6, -1)}[layout]  # fmt: skip
    path = tmp_path / f"{layout}.npz"
    np.savez(path, x=x, inputs=episodes.inputs, rewards=episodes.rewards, lengths=episodes.lengths)
    result = _fit(_config(tmp_path, path), tmp_path / "run")
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert "[model] encoder = 'conv' takes episodes of frames [N, T, C, 64, 64] (channels first" in message
    assert str(list(x.shape)).replace(" ", "") in message.replace(" ", "")
    if layout == "channels_last":
        assert "channels last" in message and "np.moveaxis(x, -1, 2)" in message


def test_plot_frames_draws_rows_of_frames_and_checks_them(tmp_path):
    torch.manual_seed(0)
    true = torch.rand(5, 3, 64, 64)
    figure = plot_frames({"true": true, "imagined": true * 1.5 - 0.2, "gray": true[:, 0]}, first_step=11)
    assert len(figure.axes) == 15
    assert [a.get_title() for a in figure.axes[:5]] == ["11", "12", "13", "14", "15"]
    assert figure.axes[5].get_ylabel() == "imagined"
    # clipped to [0, 1]: the image drawn is the frame clamped
    drawn = figure.axes[5].images[0].get_array()
    np.testing.assert_allclose(np.asarray(drawn), (true[0] * 1.5 - 0.2).clamp(0, 1).permute(1, 2, 0).numpy())
    assert len(plot_frames({"a": true}, every=2).axes) == 3
    uint8 = plot_frames({"bytes": (true * 255).to(torch.uint8)})
    np.testing.assert_allclose(np.asarray(uint8.axes[0].images[0].get_array()),
                               ((true[0] * 255).to(torch.uint8).float() / 255).permute(1, 2, 0).numpy())  # fmt: skip
    path = plot_frames({"true": true}, tmp_path / "strip.png")
    assert path == tmp_path / "strip.png" and path.read_bytes()[:4] == b"\x89PNG"
    assert figure.axes[10].images[0].get_array().shape == (64, 64)  # one channel: drawn in grey
    with pytest.raises(ValueError, match=r"the same size \[K, ·, H, W\]; rows\['b'\] is \[4, 3, 64, 64\]"):
        plot_frames({"a": true, "b": true[:4]})
    with pytest.raises(ValueError, match=r"rows\['a'\] must be frames \[K, C, H, W\] channels first with C = 1 or 3"):
        plot_frames({"a": true.permute(0, 2, 3, 1)})
    with pytest.raises(TypeError, match="rows must be a non-empty dict"):
        plot_frames([true])
    with pytest.raises(ValueError, match="every must be a positive integer"):
        plot_frames({"a": true}, every=0)


def test_initialize_starts_the_decoder_at_the_mean_observation():
    from elbox import Sequences, WorldModel
    from elbox.runs.config import ConfigError

    torch.manual_seed(0)
    frames = torch.rand(3, 5, 3, 64, 64, dtype=torch.float64) * torch.tensor([0.2, 0.5, 0.9]).view(3, 1, 1).double()
    x = Sequences(frames, inputs=torch.randn(3, 5, 1), rewards=torch.randn(3, 5), lengths=[5, 3, 2])
    model = WorldModel(3, 1, encoder="conv", depth=4, latent_dim=4, deter_dim=8, hidden=16).double()
    model.initialize(x)
    observed = torch.cat([frames[0, :5], frames[1, :3], frames[2, :2]])  # the padding is not averaged
    torch.testing.assert_close(model.observation.net[-1].bias, observed.mean((0, 2, 3)))
    vectors = WorldModel(2, 1, latent_dim=2, deter_dim=4, hidden=8).double()
    o = torch.randn(4, 6, 2, dtype=torch.float64) + torch.tensor([3.0, -1.0], dtype=torch.float64)
    vectors.initialize(Sequences(o, inputs=torch.randn(4, 6, 1), rewards=torch.randn(4, 6)))
    torch.testing.assert_close(vectors.observation[-1].bias, o.mean((0, 1)))
    with pytest.raises(ValueError, match="method must be 'mean'; received 'pca'"):
        vectors.initialize(Sequences(o, inputs=torch.randn(4, 6, 1), rewards=torch.randn(4, 6)), method="pca")
    with pytest.raises(TypeError, match="the linear model's emission has no bias"):
        WorldModel(2, 1, transition="linear", latent_dim=2, reward=False).initialize(torch.randn(2, 3, 2))
    text = CONFIG.read_text()
    with pytest.raises(ConfigError, match="a 'world' model takes 'mean'"):
        elbox.runs.parse_config(tomllib.loads(text.replace('init = "mean"', 'init = "kmeans++"')), "x.toml")
