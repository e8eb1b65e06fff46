"""Planning: the cross-entropy method on a quadratic problem solved in closed form, the true pendulum
against gymnasium's step, model-predictive control against the random policy, and bad input."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from elbox import Sequences, WorldModel
from elbox.planning import MPCPolicy, TrueDynamics, UniformPolicy, cem_plan, run_episodes

gymnasium = pytest.importorskip("gymnasium")


@dataclass
class _Rollout:
    rewards: torch.Tensor


class Integrator:
    """s_{k+1} = s_k + a_k in R^A with reward -(|s_{k+1}|² + c |a_k|²): the best plan from s_0 is
    a* = -(LᵀL + cI)⁻¹ Lᵀ 1 s_0 per coordinate (L the lower-triangular matrix of ones)."""

    def __init__(self, c: float, action_dim: int = 2):
        self.c, self.action_dim = c, action_dim

    def imagine(self, state, actions, *, sample=True):
        positions = state + actions.cumsum(1)  # [N, K, A]
        return _Rollout(rewards=-(positions**2).sum(-1) - self.c * (actions**2).sum(-1))

    def optimum(self, state, horizon):
        L = torch.tril(torch.ones(horizon, horizon, dtype=torch.float64))
        gain = torch.linalg.solve(L.T @ L + self.c * torch.eye(horizon, dtype=torch.float64), L.T @ torch.ones(horizon))
        return -gain[:, None] * state  # [H, A]


class Target:
    """Reward -|a_k - 3|² per step, whatever the state; no action width of its own."""

    def imagine(self, state, actions, *, sample=True):
        return _Rollout(rewards=-((actions - 3) ** 2).sum(-1))


def test_cem_finds_the_optimum_of_a_quadratic_problem():
    model, state = Integrator(c=0.5), torch.tensor([[1.0, -0.5]], dtype=torch.float64)
    best = model.optimum(state, 5)
    plan = cem_plan(model, state, horizon=5, candidates=1000, iterations=15, top_k=100, action_low=-2,
                    action_high=2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)  # fmt: skip
    # the final search distribution has collapsed (σ under 0.5% of the range) and covers the optimum
    assert plan.std.max() < 0.02
    assert ((plan.actions - best).abs() < 2 * plan.std).all(), (plan.actions, best, plan.std)
    assert torch.equal(plan.action, plan.actions[0])
    # every candidate's return is at most the optimum; the elite's within 1% of it
    optimal_return = float(model.imagine(state, best[None]).rewards.sum())
    assert optimal_return * 1.01 <= plan.predicted_return <= optimal_return


def test_cem_keeps_to_the_bounds():
    # reward -(a - 3)² per step: the best action inside [-1, 0.5] is the upper bound
    plan = cem_plan(Target(), None, horizon=3, candidates=200, iterations=5, top_k=20, action_low=-1, action_high=0.5,
                    generator=torch.Generator().manual_seed(1))  # fmt: skip
    assert torch.allclose(plan.actions, torch.full((3, 1), 0.5), atol=1e-3)
    assert (plan.actions <= 0.5).all()


def test_cem_is_seeded():
    model, state = Integrator(c=0.1), torch.tensor([[0.3, 0.2]])
    plans = [cem_plan(model, state, candidates=50, iterations=2, top_k=5, action_low=-1, action_high=1,
                      generator=torch.Generator().manual_seed(3)) for _ in range(2)]  # fmt: skip
    assert torch.equal(plans[0].actions, plans[1].actions)


@pytest.mark.parametrize("action_dtype", [np.float64, np.float32])
def test_true_dynamics_match_gymnasium(action_dtype):
    env = gymnasium.make("Pendulum-v1").unwrapped
    rng = np.random.default_rng(0)
    pendulum = TrueDynamics()
    n = 500
    states = rng.uniform([-10, -8], [10, 8], size=(n, 2))  # θ beyond ±π, θ̇ to the speed limit
    actions = rng.uniform(-3, 3, size=(n, 1)).astype(action_dtype)  # beyond the ±2 torque limit
    expected_states, expected_rewards, expected_obs = [], [], []
    for s, u in zip(states, actions):
        env.state = s.copy()
        obs, reward, *_ = env.step(u)
        expected_states.append(env.state)
        expected_rewards.append(reward)
        expected_obs.append(obs)
    next_states, rewards = pendulum.step(torch.tensor(states), torch.tensor(actions))  # all n at once
    # float64 throughout; gymnasium's scalar sin and ** differ from torch's vectorized ones in the last
    # bit of a few results: a few ulp of the largest term (|θ|² + 0.1 θ̇² ≤ π² + 6.4)
    ulp = 16 * np.finfo(np.float64).eps
    np.testing.assert_allclose(next_states.numpy(), np.array(expected_states), rtol=0, atol=4 * 8 * ulp)
    # a float32 torque's 0.001 u² is computed in float32 (as gymnasium does), where numpy's scalar power
    # is not correctly rounded: one float32 ulp of 0.004
    atol = 4 * ulp if action_dtype == np.float64 else 0.004 * np.finfo(np.float32).eps
    np.testing.assert_allclose(rewards.numpy(), np.array(expected_rewards), rtol=0, atol=atol)
    np.testing.assert_array_equal(pendulum.observe(next_states).float().numpy(), np.array(expected_obs))


def test_true_dynamics_rollout_and_filter():
    pendulum = TrueDynamics()
    env = gymnasium.make("Pendulum-v1")
    obs, _ = env.reset(seed=4)
    actions = torch.from_numpy(np.random.default_rng(4).uniform(-2, 2, (1, 6, 1)).astype(np.float32))
    observations, rewards = [obs], []
    for k in range(6):
        obs, reward, *_ = env.step(actions[0, k].numpy())
        observations.append(obs)
        rewards.append(reward)
    # filter reads the state off the first observation (float32: θ to float32's precision)
    state = pendulum.filter(Sequences(torch.tensor(np.array(observations[:1]))[None]))
    rollout = pendulum.imagine(state, actions)
    assert rollout.rewards.shape == (1, 6) and rollout.observations.shape == (1, 6, 3)
    np.testing.assert_allclose(rollout.rewards[0].numpy(), rewards, rtol=1e-5)
    np.testing.assert_allclose(rollout.observations[0].numpy(), np.array(observations[1:]), atol=1e-5)
    # a batch-1 state broadcasts over the candidates; filter takes each sequence's own last step
    assert pendulum.imagine(state, actions.expand(4, -1, -1)).rewards.shape == (4, 6)
    x = Sequences.from_list([torch.tensor(np.array(observations[:3])), torch.tensor(np.array(observations[:2]))])
    both = pendulum.filter(x)
    torch.testing.assert_close(both, pendulum.state_from_observation(torch.tensor(np.array(observations)[[2, 1]])))


def test_mpc_on_the_true_dynamics_beats_random():
    settings = {"episodes": 3, "steps": 100, "seed": 10}  # swung up within 100 steps
    random = run_episodes(UniformPolicy(action_low=-2, action_high=2), **settings)
    planner = MPCPolicy(TrueDynamics(), action_low=-2, action_high=2, horizon=12, candidates=200, iterations=4,
                        top_k=20)  # fmt: skip
    cem = run_episodes(planner, **settings)
    assert cem.returns.shape == (3,) and cem.seeds == [10, 11, 12]
    # a margin of three standard errors of the difference of the means
    assert cem.mean - random.mean > 3 * math.hypot(cem.stderr, random.stderr), (str(cem), str(random))
    # the same seeds give the same episodes
    np.testing.assert_array_equal(run_episodes(planner, **settings).returns, cem.returns)


def test_mpc_keeps_the_history_in_the_world_model_convention():
    policy = MPCPolicy(TrueDynamics(), action_low=-2, action_high=2, candidates=20, iterations=1, top_k=2, seed=0)
    policy.reset(np.array([1.0, 0.0, 0.5], dtype=np.float32))
    first = policy.act()
    policy.observe(np.array([0.9, 0.1, 0.4], dtype=np.float32), -1.5)
    x = policy.history()
    assert x.values.shape == (1, 2, 3) and x.inputs.shape == (1, 2, 1)
    assert x.inputs[0, 0, 0] == 0 and x.inputs[0, 1, 0] == float(first[0])  # the action that led into step 1
    assert x.rewards.tolist() == [[0.0, -1.5]]  # the reward on arriving at step 1


def test_mpc_plans_in_a_world_model():
    model = WorldModel(3, 1, latent_dim=4, deter_dim=8, hidden=16)
    policy = MPCPolicy(model, action_low=-2, action_high=2, horizon=5, candidates=30, iterations=2, top_k=5)
    before = torch.random.get_rng_state()
    result = run_episodes(policy, episodes=2, steps=4, seed=3)
    # the model's draws come from a generator seeded per step: the caller's random state is untouched
    assert torch.equal(torch.random.get_rng_state(), before)
    np.testing.assert_array_equal(run_episodes(policy, episodes=2, steps=4, seed=3).returns, result.returns)
    assert policy.history().values.shape == (1, 5, 3)  # the last episode: the reset and 4 steps
    assert policy.last_plan.actions.shape == (5, 1) and policy.last_plan.actions.abs().max() <= 2


def test_bad_input():
    model, state = Integrator(c=0.1, action_dim=1), torch.zeros(1, 1)
    options = {"action_low": -1, "action_high": 1}
    with pytest.raises(ValueError, match="horizon must be an integer >= 1; received 0"):
        cem_plan(model, state, horizon=0, **options)
    with pytest.raises(TypeError, match="candidates must be an integer"):
        cem_plan(model, state, candidates=10.5, **options)
    with pytest.raises(ValueError, match="top_k must be at most candidates = 50.*received top_k = 100"):
        cem_plan(model, state, candidates=50, top_k=100, **options)
    with pytest.raises(ValueError, match="action_low must be below action_high.*coordinate 0 has low 1 >= high -1"):
        cem_plan(model, state, action_low=1, action_high=-1)
    with pytest.raises(ValueError, match="coordinate 1 has low 2 >= high 2"):
        cem_plan(Integrator(c=0.1), state, action_low=[0, 2], action_high=[1, 2])
    with pytest.raises(ValueError, match="action_low and action_high must have one width.*received 2 and 3"):
        cem_plan(Target(), state, action_low=[0, 0], action_high=[1, 1, 1])
    with pytest.raises(ValueError, match="action_high must be finite"):
        cem_plan(model, state, action_low=-1, action_high=math.inf)
    with pytest.raises(TypeError, match="action_low must be a number or a 1-D sequence"):
        cem_plan(model, state, action_low="low", action_high=1)
    with pytest.raises(ValueError, match="action_dim = 1 coordinates.*received 2 and 2"):
        MPCPolicy(TrueDynamics(), action_low=[-1, -1], action_high=[1, 1])
    with pytest.raises(TypeError, match="dynamics must have an imagine"):
        cem_plan(object(), state, **options)
    with pytest.raises(TypeError, match="dynamics must have filter and imagine methods"):
        MPCPolicy(model, **options)
    wrong = type("Wrong", (), {"imagine": lambda self, s, a, sample=True: _Rollout(torch.zeros(3))})()
    with pytest.raises(ValueError, match=r"rewards \[N, H\] = \[10, 12\]"):
        cem_plan(wrong, state, candidates=10, top_k=2, **options)
    with pytest.raises(ValueError, match="episodes must be an integer >= 1; received 0"):
        run_episodes(UniformPolicy(**options), episodes=0)
    with pytest.raises(ValueError, match="env must be one of"):
        run_episodes(UniformPolicy(**options), env="Pendulum-v1")
    with pytest.raises(ValueError, match="env must have continuous actions.*'cartpole' has 2 discrete choices"):
        run_episodes(UniformPolicy(**options), env="cartpole")
    with pytest.raises(ValueError, match=r"actions must be \[N, K, 1\]"):
        TrueDynamics().imagine(torch.zeros(1, 2), torch.zeros(4, 5, 2))
    with pytest.raises(ValueError, match=r"state must be \[N, 2\] or \[1, 2\]"):
        TrueDynamics().imagine(torch.zeros(3, 2), torch.zeros(4, 5, 1))


def test_plan_command_end_to_end(tmp_path):
    from typer.testing import CliRunner

    from elbox.cli.main import app
    from elbox.envs import collect

    collect("pendulum", 8, steps=6, seed=0).save(tmp_path / "episodes.npz")
    (tmp_path / "world.toml").write_text(
        '[data]\npath = "episodes.npz"\ntest = 2\n\n'
        '[model]\ntype = "world"\nlatent_dim = 2\ndeter_dim = 4\nhidden = 8\n\n'
        '[train]\nmethod = "vi"\nobjective = "world_elbo"\nepochs = 2\nbatch_size = 3\nlr = 1e-2\nseed = 0\n'
    )  # fmt: skip
    runner, run = CliRunner(), tmp_path / "run"
    result = runner.invoke(app, ["fit", str(tmp_path / "world.toml"), "--out", str(run), "--no-progress"])
    assert result.exit_code == 0, result.output
    options = ["--episodes", "2", "--steps", "5", "--candidates", "10", "--iterations", "1", "--top-k", "2"]
    result = runner.invoke(app, ["plan", str(run), *options])
    assert result.exit_code == 0, result.output
    assert "CEM, world model" in result.output and "CEM, true dynamics" in result.output
    written = json.loads((run / "plan.json").read_text())
    assert [row["policy"] for row in written["rows"]] == ["random", "CEM, true dynamics", "CEM, world model"]
    for row in written["rows"]:
        assert len(row["returns"]) == 2 and math.isfinite(row["mean"]) and math.isfinite(row["stderr"])
        assert row["mean"] == pytest.approx(np.mean(row["returns"]))
    assert written["settings"]["candidates"] == 10 and (run / "plan.png").stat().st_size > 0
    # the environment must be the data's: cartpole's observations have 4 entries, the model's 3
    result = runner.invoke(app, ["plan", str(run), "--env", "cartpole", *options])
    assert result.exit_code == 2 and "env 'cartpole' has observations of size 4" in result.output
    result = runner.invoke(app, ["plan", str(run), "--candidates", "5", "--top-k", "6"])
    assert result.exit_code == 2 and "top_k must be at most candidates = 5" in result.output
