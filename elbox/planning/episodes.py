"""Seeded episodes of a policy in a gymnasium environment, and their mean return with its error."""

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
        seeds: The seed of each episode (``env.reset(seed=...)`` and the policy's).
        steps: Steps per episode.
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


def run_episodes(policy, *, episodes: int = 10, seed: int = 0, steps: int = 200, env: str = "Pendulum-v1") -> (
        EpisodeReturns):
    """Runs ``episodes`` episodes of ``policy`` in the gymnasium environment ``env``, episode i
    started by ``env.reset(seed=seed + i)`` and the policy reseeded with the same seed, for at
    most ``steps`` steps each (fewer where the environment ends it).

    Args:
        policy: ``reset(observation, seed=...)``, ``act() -> action``, ``observe(observation, reward)``
            (:class:`MPCPolicy`, :class:`RandomPolicy`).
        episodes, seed, steps: As above; Pendulum-v1's episodes have 200 steps.
        env: A gymnasium environment id.

    Example:
        >>> from elbox.planning import RandomPolicy
        >>> result = run_episodes(RandomPolicy(action_low=-2, action_high=2), episodes=2, steps=20)
        >>> result.returns.shape
        (2,)
    """
    import gymnasium

    episodes = check_positive_int(episodes, "episodes")
    steps = check_positive_int(steps, "steps")
    seed = check_seed(seed)
    for method in ("reset", "act", "observe"):
        if not callable(getattr(policy, method, None)):
            raise TypeError(f"policy must have reset, act and observe methods (an MPCPolicy, a RandomPolicy); "
                            f"{describe(policy)} has no {method}")  # fmt: skip
    try:
        environment = gymnasium.make(env)
    except gymnasium.error.Error as error:
        raise ValueError(f"env must be a gymnasium environment id such as 'Pendulum-v1'; received {env!r} "
                         f"({error})") from None  # fmt: skip
    start = time.perf_counter()
    returns = np.zeros(episodes)
    seeds = [seed + i for i in range(episodes)]
    try:
        for i, episode_seed in enumerate(seeds):
            observation, _ = environment.reset(seed=episode_seed)
            policy.reset(observation, seed=episode_seed)
            for _ in range(steps):
                observation, reward, terminated, truncated, _ = environment.step(policy.act())
                returns[i] += float(reward)
                if terminated or truncated:
                    break
                policy.observe(observation, float(reward))
    finally:
        environment.close()
    return EpisodeReturns(returns=returns, seeds=seeds, steps=steps, seconds=time.perf_counter() - start)
