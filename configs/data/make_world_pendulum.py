"""Writes ``world_pendulum.npz``, the episodes configs/world_model_pendulum.toml reads (run from
the repository root):

    .venv/bin/python configs/data/make_world_pendulum.py

100 episodes of 50 steps of gymnasium's Pendulum-v1 under a uniform random policy (torque in
[-2, 2]), seeded: x [N, T, 3] the observations (cos θ, sin θ, θ̇), inputs [N, T, 1] the actions
(inputs[:, t] the action that led into step t; inputs[:, 0] = 0), rewards [N, T] (rewards[:, t]
received on arriving at step t; rewards[:, 0] = 0), lengths [N]. The same layout as
``elbox collect`` writes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def pendulum_episodes(episodes: int, steps: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random-policy Pendulum-v1 episodes as the arrays of the ``.npz`` layout."""
    import gymnasium as gym

    env = gym.make("Pendulum-v1")
    rng = np.random.default_rng(seed)
    x = np.zeros((episodes, steps, 3), np.float32)
    actions = np.zeros((episodes, steps, 1), np.float32)
    rewards = np.zeros((episodes, steps), np.float32)
    for i in range(episodes):
        observation, _ = env.reset(seed=seed * 100_003 + i)
        x[i, 0] = observation
        for t in range(1, steps):
            action = rng.uniform(-2.0, 2.0, size=1).astype(np.float32)
            observation, reward, *_ = env.step(action)
            x[i, t], actions[i, t], rewards[i, t] = observation, action, reward
    env.close()
    return {"x": x, "inputs": actions, "rewards": rewards, "lengths": np.full(episodes, steps, np.int64)}


def main() -> None:
    np.savez_compressed(HERE / "world_pendulum.npz", **pendulum_episodes(100, 50, seed=0))


if __name__ == "__main__":
    main()
