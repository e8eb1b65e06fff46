"""Seeded episodes of a policy in one of :mod:`elbox.envs`' environments, and their mean return
with its standard error."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from elbox._validation import check_positive_int, check_seed, describe

__all__ = ["EpisodeReturns", "run_episodes"]


@dataclass
class EpisodeReturns:
    """The returns of seeded episodes.

    Attributes:
        returns: ``[episodes]``, the undiscounted return of each episode.
        seeds: The seed of each episode (the environment's reset and the policy's).
        steps: Actions per episode (fewer where the environment ended one).
        seconds: Wall-clock seconds for all of them.
    """

    returns: np.ndarray
    seeds: list[int]
    steps: int
    seconds: float = field(default=math.nan)

    @property
    def mean(self) -> float:
        return float(np.mean(self.returns))

    @property
    def stderr(self) -> float:
        """The standard error of the mean over episodes, s / √n (NaN for one episode)."""
        n = len(self.returns)
        return float(np.std(self.returns, ddof=1) / math.sqrt(n)) if n > 1 else math.nan

    def __str__(self) -> str:
        return f"{self.mean:.1f} ± {self.stderr:.1f} (SE over {len(self.returns)} episodes)"


def run_episodes(policy, *, env: str = "pendulum", episodes: int = 10, seed: int = 0, steps: int | None = None) -> (
        EpisodeReturns):
    """Runs ``episodes`` episodes of ``policy`` in the environment ``env`` (a name in
    :data:`elbox.envs.ENVIRONMENTS`, from states), episode i started by ``reset(seed + i)`` and the
    policy reseeded with the same seed, for ``steps`` actions (fewer where the environment ends
    the episode: CartPole's pole fell).

    Args:
        policy: ``reset(observation, seed=...)``, ``act() -> action [A]``, ``observe(observation,
            reward)`` (:class:`MPCPolicy`, :class:`UniformPolicy`).
        env: ``"pendulum"`` (Pendulum-v1; continuous torques, as the planner needs), or another
            registered environment with continuous actions.
        episodes, seed: As above.
        steps: Actions per episode; default: the environment's full episode (Pendulum-v1: 200).

    Example:
        >>> from elbox.planning import UniformPolicy
        >>> result = run_episodes(UniformPolicy(action_low=-2, action_high=2), episodes=2, steps=20)
        >>> result.returns.shape
        (2,)
    """
    from elbox.envs import get_environment

    environment = get_environment(env)
    if environment.discrete:
        raise ValueError(f"env must have continuous actions (the planner samples action vectors); {env!r} has "
                         f"{environment.action_dim} discrete choices")  # fmt: skip
    episodes = check_positive_int(episodes, "episodes")
    steps = environment.max_steps - 1 if steps is None else check_positive_int(steps, "steps")
    seed = check_seed(seed)
    for method in ("reset", "act", "observe"):
        if not callable(getattr(policy, method, None)):
            raise TypeError(f"policy must have reset, act and observe methods (an MPCPolicy, a UniformPolicy); "
                            f"{describe(policy)} has no {method}")  # fmt: skip
    simulator = environment.make(False)
    start = time.perf_counter()
    returns = np.zeros(episodes)
    seeds = [seed + i for i in range(episodes)]
    try:
        for i, episode_seed in enumerate(seeds):
            observation = simulator.reset(episode_seed)
            policy.reset(observation, seed=episode_seed)
            for _ in range(steps):
                observation, reward, terminated = simulator.step(policy.act())
                returns[i] += reward
                if terminated:
                    break
                policy.observe(observation, reward)
    finally:
        simulator.close()
    return EpisodeReturns(returns=returns, seeds=seeds, steps=steps, seconds=time.perf_counter() - start)
