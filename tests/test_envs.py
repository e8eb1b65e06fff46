"""Environments generated in code and `elbox collect`: shapes, the alignment of actions and rewards
with the observations (checked against Pendulum-v1's equations), ragged CartPole episodes,
determinism by seed, the atomic write, the .npz reader, and the errors for bad input."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from elbox.cli.main import app
from elbox.data import Sequences, load_file
from elbox.envs import ENVIRONMENTS, Episodes, RandomPolicy, collect, get_environment, load_episodes

runner = CliRunner()
GYM = ["pendulum", "cartpole"]


@pytest.fixture(scope="module")
def small():
    """3 episodes of 8 observations of each gymnasium environment, as states and as pixels."""
    return {(env, pixels): collect(env, 3, steps=8, pixels=pixels, seed=5) for env in GYM for pixels in (False, True)}


@pytest.mark.parametrize("env", GYM)
@pytest.mark.parametrize("pixels", [False, True], ids=["states", "pixels"])
def test_shapes_dtypes_and_the_zero_first_step(small, env, pixels):
    data, spec = small[env, pixels], get_environment(env)
    T = int(data.lengths.max())
    assert T <= 8 and data.lengths.shape == (3,) and data.lengths.dtype == np.int64
    observation = (3, 64, 64) if pixels else (spec.observation_dim,)
    assert data.x.shape == (3, T, *observation)
    assert data.x.dtype == (np.uint8 if pixels else np.float32)
    assert data.inputs.shape == (3, T, spec.action_dim) and data.rewards.shape == (3, T)
    # step 0 is the reset: no action led into it, no reward was received on arriving there
    assert (data.inputs[:, 0] == 0).all() and (data.rewards[:, 0] == 0).all()
    for n, length in enumerate(data.lengths):
        # the steps of an episode carry its actions; the padding after its end is zeros
        assert (data.inputs[n, 1:length] != 0).any(-1).all()
        assert (data.x[n, length:] == 0).all() and (data.inputs[n, length:] == 0).all()
        assert (data.rewards[n, length:] == 0).all()
    if pixels:  # a frame is not blank: the background and the drawing both show
        frame = data.x[0, 0]
        assert frame.max() == 255 and frame.min() < 128
    assert data.meta["env"] == env and data.meta["pixels"] == pixels and data.meta["seed"] == 5
    assert data.meta["versions"]["gymnasium"] == "1.4.0" and data.meta["policy"] == "random"


def test_the_pixels_record_the_same_episodes_as_the_states(small):
    # rendering changes nothing about the dynamics: the same seed, the same actions and rewards
    for env in GYM:
        states, pixels = small[env, False], small[env, True]
        np.testing.assert_array_equal(states.inputs, pixels.inputs)
        np.testing.assert_array_equal(states.rewards, pixels.rewards)
        np.testing.assert_array_equal(states.lengths, pixels.lengths)


def test_pendulum_actions_and_rewards_align_with_the_observations():
    """x[:, t] is Pendulum-v1's step from x[:, t-1] under inputs[:, t], and rewards[:, t] its cost."""
    data = collect("pendulum", 3, steps=30, seed=1)
    x, u, r = data.x.astype(np.float64), data.inputs[..., 0].astype(np.float64), data.rewards.astype(np.float64)
    theta, theta_dot = np.arctan2(x[..., 1], x[..., 0]), x[..., 2]  # [N, T]
    g, m, length, dt = 10.0, 1.0, 1.0, 0.05
    th, thd, a = theta[:, :-1], theta_dot[:, :-1], u[:, 1:]  # the state before each step and its action
    new_thd = np.clip(thd + (3 * g / (2 * length) * np.sin(th) + 3.0 / (m * length**2) * a) * dt, -8, 8)
    new_th = th + new_thd * dt
    np.testing.assert_allclose(x[:, 1:, 2], new_thd, atol=1e-5)
    np.testing.assert_allclose(x[:, 1:, 0], np.cos(new_th), atol=1e-5)
    np.testing.assert_allclose(x[:, 1:, 1], np.sin(new_th), atol=1e-5)
    angle = (th + np.pi) % (2 * np.pi) - np.pi
    np.testing.assert_allclose(r[:, 1:], -(angle**2 + 0.1 * thd**2 + 0.001 * a**2), atol=1e-4)
    assert (np.abs(u) <= 2).all()


def test_cartpole_episodes_are_ragged_and_end_when_the_pole_falls():
    data = collect("cartpole", 6, steps=200, seed=0)
    lengths = data.lengths
    assert (lengths < 200).all() and len(set(lengths.tolist())) > 1  # random play drops the pole early
    assert data.x.shape[1] == lengths.max()  # padded to the longest episode
    for n, length in enumerate(lengths):
        assert (data.rewards[n, 1:length] == 1).all() and (data.rewards[n, length:] == 0).all()
        actions = data.inputs[n, 1:length]
        assert ((actions == 0) | (actions == 1)).all() and (actions.sum(-1) == 1).all()  # one-hot
        position, angle = data.x[n, length - 1, 0], data.x[n, length - 1, 2]
        assert abs(position) > 2.4 or abs(angle) > 12 * 2 * np.pi / 360  # the last step is the fall
        before = data.x[n, : length - 1]
        assert (np.abs(before[:, 0]) <= 2.4).all() and (np.abs(before[:, 2]) <= 12 * 2 * np.pi / 360).all()
    sequences = Sequences(torch.from_numpy(data.x), lengths=torch.from_numpy(lengths),
                          inputs=torch.from_numpy(data.inputs))  # fmt: skip
    assert sequences.ragged


def test_the_random_actions_are_uniform_over_the_bounds():
    data = collect("pendulum", 20, steps=51, seed=3)
    a = data.inputs[:, 1:, 0].astype(np.float64).ravel()  # 1000 draws from U(-2, 2): mean 0, variance 4/3
    assert abs(a.mean()) < 4 * np.sqrt(4 / 3 / a.size)
    assert abs(a.var() - 4 / 3) < 4 * np.sqrt((16 / 5 - (4 / 3) ** 2) / a.size)  # E a⁴ = 16/5
    choices = collect("cartpole", 20, steps=30, seed=3)
    pushes = np.concatenate([choices.inputs[n, 1 : choices.lengths[n], 0] for n in range(20)])
    assert abs(pushes.mean() - 0.5) < 4 * np.sqrt(0.25 / pushes.size)


def test_the_same_seed_gives_the_same_episodes_and_an_episode_depends_on_its_index_alone():
    a, b = collect("pendulum", 3, steps=10, seed=7), collect("pendulum", 3, steps=10, seed=7)
    for name in ("x", "inputs", "rewards", "lengths"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    other = collect("pendulum", 3, steps=10, seed=8)
    assert not np.array_equal(a.x, other.x)
    # more episodes (beyond one batch of 16 run side by side) leave the first ones as they were
    many = collect("pendulum", 18, steps=10, seed=7)
    np.testing.assert_array_equal(many.x[:3], a.x)
    np.testing.assert_array_equal(many.inputs[:3], a.inputs)
    assert len({tuple(many.x[n, 0]) for n in range(18)}) == 18  # and every episode starts elsewhere


def test_a_policy_is_called_with_the_observations_and_its_actions_are_executed_clipped():
    seen = []

    def push(observations, step):
        seen.append((observations.copy(), step))
        return np.full((len(observations), 1), 5.0)  # beyond the torque bound 2

    data = collect("pendulum", 2, steps=4, policy=push, seed=0)
    assert [step for _, step in seen] == [0, 1, 2]
    np.testing.assert_array_equal(seen[0][0], data.x[:, 0])
    np.testing.assert_array_equal(seen[2][0], data.x[:, 2])
    assert (data.inputs[:, 1:] == 2.0).all() and data.meta["policy"] == "push"

    def frames(observations, step):
        assert observations.shape == (2, 3, 64, 64) and observations.dtype == np.float32
        assert 0 <= observations.min() and observations.max() <= 1
        return np.array([[0.2, 0.9], [0.7, 0.1]])  # scores: the largest is the push executed

    data = collect("cartpole", 2, steps=3, pixels=True, policy=frames, seed=0)
    np.testing.assert_array_equal(data.inputs[:, 1], [[0, 1], [1, 0]])


def test_a_saved_file_reads_back_and_the_write_is_atomic(tmp_path, monkeypatch):
    data = collect("cartpole", 3, steps=20, seed=0)
    path = data.save(tmp_path / "episodes.npz")
    back = load_episodes(path)
    for name in ("x", "inputs", "rewards", "lengths"):
        np.testing.assert_array_equal(getattr(back, name), getattr(data, name))
    assert back.meta == json.loads(json.dumps(data.meta))
    before = path.read_bytes()

    def crash(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        collect("cartpole", 5, steps=20, seed=1).save(path)
    assert path.read_bytes() == before  # the old file, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["episodes.npz"]  # no partial file left


def test_the_npz_reader_accepts_meta_and_reads_frames_as_intensities(tmp_path):
    data = collect("pendulum", 2, steps=5, pixels=True, seed=0)
    path = tmp_path / "frames.npz"
    meta = np.array(json.dumps(data.meta))
    np.savez(path, x=data.x, inputs=data.inputs, lengths=data.lengths, meta=meta)
    sequences = load_file(path)
    assert isinstance(sequences, Sequences) and sequences.values.dtype == torch.float64
    assert sequences.values.shape == (2, 5, 3, 64, 64)
    torch.testing.assert_close(sequences.values, torch.from_numpy(data.x).double() / 255)
    assert float(sequences.values.max()) == 1.0
    states = collect("pendulum", 2, steps=5, seed=0)
    np.savez(path, x=states.x, inputs=states.inputs, lengths=states.lengths, meta=np.array(json.dumps(states.meta)))
    torch.testing.assert_close(load_file(path).values, torch.from_numpy(states.x).double())
    np.savez(path, x=states.x, meta=np.array("not json"))
    with pytest.raises(ValueError, match="meta must be a JSON object in a string; it does not parse"):
        load_file(path)
    np.savez(path, x=states.x, meta=np.arange(3))
    with pytest.raises(ValueError, match="meta must be a JSON object in a string"):
        load_file(path)


def test_bad_input_is_refused_with_the_argument_named():
    with pytest.raises(ValueError, match=r"env must be one of \['cartpole', 'cartpole_swingup', 'pendulum'\]; "
                                         "received 'acrobot'"):  # fmt: skip
        collect("acrobot", 2)
    with pytest.raises(ValueError, match="episodes must be an integer >= 1; received 0"):
        collect("pendulum", 0)
    with pytest.raises(ValueError, match="an episode of length 1 has one observation and no action"):
        collect("pendulum", 2, steps=1)
    with pytest.raises(TypeError, match="pixels must be True or False"):
        collect("pendulum", 2, pixels="yes")
    with pytest.raises(ValueError, match="policy must be 'random' or a callable"):
        collect("pendulum", 2, policy="greedy")
    with pytest.raises(ValueError, match=r"the policy must return actions \[n, A\] = \[2, 1\] for pendulum; it "
                                         r"returned shape \[2, 2\]"):  # fmt: skip
        collect("pendulum", 2, steps=3, policy=lambda o, t: np.zeros((2, 2)))
    with pytest.raises(ValueError, match="non-finite action"):
        collect("pendulum", 2, steps=3, policy=lambda o, t: np.full((2, 1), np.nan))
    with pytest.raises(ValueError, match="out must be a .npz file; received 'x.npy'"):
        collect("pendulum", 2, steps=3).save("x.npy")


def test_dm_control_cartpole_swingup_runs_where_installed_and_says_what_to_install_otherwise():
    assert "cartpole_swingup" in ENVIRONMENTS
    if importlib.util.find_spec("dm_control") is None:
        with pytest.raises(ImportError, match="needs 'dm_control', which is not installed.*pip install dm_control"):
            collect("cartpole_swingup", 2, steps=3)
        return
    data = collect("cartpole_swingup", 2, steps=5, seed=0)
    assert data.x.shape == (2, 5, 5) and data.inputs.shape == (2, 5, 1) and (data.lengths == 5).all()


def test_random_policy_needs_a_reset_per_batch():
    policy = RandomPolicy(get_environment("cartpole"))
    with pytest.raises(RuntimeError, match="reset"):
        policy(np.zeros((2, 4)), 0)
    policy.reset([0, 1])
    actions = policy(np.zeros((2, 4)), 0)
    assert actions.shape == (2, 2) and (actions.sum(-1) == 1).all()


def test_cli_collect_writes_the_file_and_prints_returns_with_standard_errors(tmp_path):
    out = tmp_path / "pendulum.npz"
    result = runner.invoke(app, ["collect", "pendulum", "--episodes", "4", "--steps", "12", "--out", str(out),
                                 "--seed", "2"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "mean return" in result.output and "±" in result.output and "steps/s" in result.output
    data = load_episodes(out)
    expected = collect("pendulum", 4, steps=12, seed=2)
    np.testing.assert_array_equal(data.x, expected.x)
    assert data.meta["seed"] == 2 and data.meta["steps"] == 12
    before = out.read_bytes()
    again = runner.invoke(app, ["collect", "pendulum", "--episodes", "2", "--out", str(out)])
    assert again.exit_code == 2 and "exists; pass --force" in again.output
    assert out.read_bytes() == before
    forced = runner.invoke(app, ["collect", "pendulum", "--episodes", "2", "--steps", "3", "--out", str(out),
                                 "--force"])  # fmt: skip
    assert forced.exit_code == 0 and load_episodes(out).x.shape == (2, 3, 3)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["acrobot", "--episodes", "2"], "env must be one of"),
        (["pendulum", "--episodes", "0"], "episodes must be an integer >= 1; received 0"),
        (["pendulum", "--episodes", "2", "--steps", "1"], "an episode of length 1"),
        (["pendulum", "--episodes", "2", "--policy", "greedy"], "policy must be 'random'"),
    ],
)
def test_cli_collect_bad_input_exits_2_and_writes_nothing(tmp_path, arguments, message):
    out = tmp_path / "x.npz"
    result = runner.invoke(app, ["collect", *arguments, "--out", str(out)])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not out.exists()
    wrong = runner.invoke(app, ["collect", "pendulum", "--episodes", "1", "--out", str(tmp_path / "x.npy")])
    assert wrong.exit_code == 2 and "--out must be a .npz file" in wrong.output


def test_episodes_observations_are_floats():
    data = Episodes(np.full((1, 2, 3, 64, 64), 255, np.uint8), np.zeros((1, 2, 1), np.float32),
                    np.zeros((1, 2), np.float32), np.array([2]))  # fmt: skip
    assert data.pixels and data.observations().dtype == np.float32 and data.observations().max() == 1.0
