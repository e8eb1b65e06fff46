"""Figures: the traces of EM and VI, and the figures of a trained VAE."""

from __future__ import annotations

import pytest
import torch

import elbox
from elbox.guides import Categorical
from elbox.plots import plot_traces


def test_em_and_vi_traces_on_one_figure(tmp_path):
    truth = elbox.GaussianMixture(2, 2, loc=3 * torch.randn(2, 2))
    x, _ = truth.sample(100)
    em_model, vi_model = elbox.GaussianMixture(2, 2), elbox.GaussianMixture(2, 2)
    h_em = elbox.em(em_model, x, init="kmeans++", seed=0)
    vi_model.initialize(x, "kmeans++", generator=torch.Generator().manual_seed(0))
    h_vi = elbox.fit(vi_model, Categorical(2, num_points=100), x, epochs=30, lr=0.05)
    path = tmp_path / "traces.png"
    fig = plot_traces({"EM": h_em, "VI": h_vi}, path, log_evidence=h_em.final)
    ax = fig.axes[0]
    assert len(ax.lines) == 3
    assert list(ax.lines[0].get_ydata()) == h_em.lower_bound
    assert list(ax.lines[1].get_ydata()) == h_vi.lower_bound
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_state_path_and_trajectory_figures(tmp_path):
    from elbox.plots import plot_state_path, plot_trajectory

    hmm = elbox.HMM(2, "gaussian", dim=1, loc=torch.tensor([[-2.0], [2.0]]))
    x, z = hmm.sample(1, num_steps=30)
    post = hmm.posterior(x)
    path, _ = hmm.viterbi(x)
    fig = plot_state_path(post.marginals()[0], tmp_path / "states.png", true_states=z[0], decoded=path[0],
                          observations=x[0])
    ax = fig.axes[-1]
    assert list(ax.lines[0].get_ydata()) == z[0].tolist() and list(ax.lines[1].get_ydata()) == path[0].tolist()
    assert (tmp_path / "states.png").read_bytes()[:4] == b"\x89PNG"

    ssm = elbox.LinearGaussianSSM(2, 1, transition_matrix=0.9 * torch.eye(2))
    x, z = ssm.sample(1, num_steps=25)
    post = ssm.posterior(x)
    fig = plot_trajectory(post.mean[0], post.variance[0], tmp_path / "traj.png", true_states=z[0])
    assert len(fig.axes) == 2
    assert list(fig.axes[1].lines[1].get_ydata()) == z[0, :, 1].tolist()
    assert (tmp_path / "traj.png").read_bytes()[:4] == b"\x89PNG"


def test_rate_distortion_figure(tmp_path):
    from elbox.plots import plot_rate_distortion

    fig = plot_rate_distortion([("a", 3.0, 1.0), ("b", 1.0, 2.0)], tmp_path / "rd.png")
    assert list(fig.axes[0].lines[0].get_xdata()) == [1.0, 2.0]
    assert (tmp_path / "rd.png").read_bytes()[:4] == b"\x89PNG"


def test_prediction_figure_draws_each_predictor_against_horizon(tmp_path):
    from elbox.plots import plot_prediction

    rows = {name: {"log_likelihood": [3.0 - j - shift for j in range(5)], "log_likelihood_stderr": [0.1] * 5,
                   "mse": [0.1 * (j + 1) + shift for j in range(5)], "mse_stderr": [0.01] * 5}
            for shift, name in enumerate(("world", "lgssm"))}  # fmt: skip
    fig = plot_prediction(rows, tmp_path / "prediction.png")
    top, bottom = fig.axes
    assert [line.get_label() for line in top.lines] == ["world", "lgssm"]
    assert list(top.lines[1].get_ydata()) == rows["lgssm"]["log_likelihood"]
    assert list(bottom.lines[0].get_xdata()) == [1, 2, 3, 4, 5]
    assert (tmp_path / "prediction.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match=r"table\['world'\] lacks \['mse_stderr'\]"):
        plot_prediction({"world": {k: v for k, v in rows["world"].items() if k != "mse_stderr"}})


def test_vae_figures_for_images_signals_and_any_latent_size(tmp_path):
    from elbox.plots import plot_latent_space, plot_reconstructions, plot_samples, plot_training

    records = [{"epoch": e, "bound": -10.0 + e, "reconstruction": -8.0 + e, "kl": 2.0, "validation": None}
               for e in range(1, 4)]  # fmt: skip
    plot_training(records, tmp_path / "training.png")
    images, signals = torch.rand(6, 64), torch.randn(6, 40)
    plot_reconstructions(images, images.flip(0), tmp_path / "recon_images.png")
    plot_samples(signals, tmp_path / "samples_signals.png", columns=3)  # 40 is not square: curves
    labels = torch.arange(6) % 3
    for dim in (1, 2, 5):
        fig = plot_latent_space(torch.randn(6, dim), labels, tmp_path / f"latent_{dim}.png")
        xlabel = fig.axes[0].get_xlabel()
        assert xlabel == {1: "z", 2: "z₁", 5: "PC 1"}[dim]
    for path in tmp_path.iterdir():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    with pytest.raises(ValueError, match="at least one epoch"):
        plot_training([])
    with pytest.raises(ValueError, match="codes must be"):
        plot_latent_space(torch.randn(6))
