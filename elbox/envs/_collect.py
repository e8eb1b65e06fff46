"""Episodes collected from a registered environment under a policy, and their ``.npz`` file."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np

from elbox._validation import check_bool, check_path, check_positive_int, check_seed, describe
from elbox.envs._registry import IMAGE_SIZE, Environment, get_environment

__all__ = ["Episodes", "RandomPolicy", "collect", "load_episodes"]

#: Episodes run side by side (one simulator each); the policy sees their observations as one batch.
_BATCH = 16


class RandomPolicy:
    """Uniform random actions: a torque drawn uniformly from the action bounds, or a one-hot vector of
    a uniformly drawn choice. Each episode draws from its own generator, seeded by :func:`collect`,
    so that an episode depends on the seed and its index alone.

    Example:
        >>> policy = RandomPolicy(get_environment("pendulum"))
        >>> policy.reset([1, 2])
        >>> policy(np.zeros((2, 3)), 0).shape
        (2, 1)
    """

    name = "random"

    def __init__(self, environment: Environment):
        self.environment = environment
        self._generators: list[np.random.Generator] = []

    def reset(self, seeds) -> None:
        """Starts a batch of episodes, one generator per seed."""
        self._generators = [np.random.default_rng(int(s)) for s in seeds]

    def __call__(self, observations: np.ndarray, step: int) -> np.ndarray:
        env, n = self.environment, len(observations)
        if len(self._generators) != n:
            raise RuntimeError(f"RandomPolicy.reset(seeds) must be called with one seed per episode ({n}) first")
        if env.discrete:
            choice = np.array([g.integers(env.action_dim) for g in self._generators])
            return np.eye(env.action_dim, dtype=np.float32)[choice]  # [n, A] one-hot
        draws = [g.uniform(env.action_low, env.action_high, env.action_dim) for g in self._generators]
        return np.stack(draws).astype(np.float32)  # [n, A]


@dataclass
class Episodes:
    """N episodes of at most T observations, in the layout of elbox's sequence data.

    Attributes:
        x: Observations ``[N, T, obs_dim]`` float32, or frames ``[N, T, 3, 64, 64]`` uint8
            (RGB intensities 0–255: divide by 255 for values in [0, 1]).
        inputs: Actions ``[N, T, A]`` float32: ``inputs[:, t]`` is the action a_{t-1} taken at
            step t − 1, which led *into* step t; ``inputs[:, 0]`` is 0 (unused).
        rewards: ``[N, T]`` float32: ``rewards[:, t]`` is the reward received on arriving at
            step t (for the action ``inputs[:, t]``); ``rewards[:, 0]`` is 0 (unused).
        lengths: ``[N]`` int64, the observations of each episode; the steps after an episode's
            end (CartPole's pole fell) are zeros.
        meta: Provenance: the environment and its library's version, the seed, the policy, the
            layout.
        continues: ``[N, T]`` float32 continuation flags: ``continues[:, t]`` is 0 where step t is
            terminal (the environment ended the episode there: CartPole's pole fell) and 1 where it
            goes on or was only cut at ``steps`` (Pendulum-v1 never terminates); 1 past each end.
            None for a file written before the flags were recorded.
    """

    x: np.ndarray
    inputs: np.ndarray
    rewards: np.ndarray
    lengths: np.ndarray
    meta: dict = field(default_factory=dict)
    continues: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.x)

    @property
    def pixels(self) -> bool:
        return self.x.dtype == np.uint8

    def observations(self) -> np.ndarray:
        """``x`` as floats: the states, or the frames divided by 255 (values in [0, 1])."""
        return self.x.astype(np.float32) / 255 if self.pixels else self.x

    def save(self, path: str | os.PathLike) -> Path:
        """Writes the arrays and ``meta`` (a JSON string, array ``meta``) to a compressed ``.npz``,
        atomically: a reader sees the old file or the new one, never part of one."""
        from elbox.io.files import atomic_write_bytes

        path = Path(check_path(path, "out")).expanduser()
        if path.suffix.lower() != ".npz":
            raise ValueError(f"out must be a .npz file; received {path.name!r}")
        buffer = io.BytesIO()
        flags = {} if self.continues is None else {"continues": self.continues}
        np.savez_compressed(buffer, x=self.x, inputs=self.inputs, rewards=self.rewards, lengths=self.lengths,
                            meta=np.array(json.dumps(self.meta, sort_keys=True)), **flags)  # fmt: skip
        return atomic_write_bytes(path, buffer.getvalue())


def load_episodes(path: str | os.PathLike) -> Episodes:
    """Reads a file written by :meth:`Episodes.save` (or ``elbox collect``)."""
    path = Path(check_path(path)).expanduser()
    with np.load(path, allow_pickle=False) as archive:
        missing = sorted({"x", "inputs", "rewards", "lengths"} - set(archive.files))
        if missing:
            raise ValueError(f"{path} is not a file of episodes: it lacks the arrays {missing}")
        meta = json.loads(str(archive["meta"])) if "meta" in archive.files else {}
        continues = archive["continues"] if "continues" in archive.files else None
        return Episodes(archive["x"], archive["inputs"], archive["rewards"], archive["lengths"], meta, continues)


def collect(
    env: str,
    episodes: int,
    *,
    steps: int | None = None,
    pixels: bool = False,
    policy: str | Callable = "random",
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> Episodes:
    """Runs ``episodes`` episodes of the registered environment ``env`` and records them.

    Each episode starts from ``reset(seed=…)`` with its own seed, drawn from ``seed`` and its index
    (so the same ``seed`` gives the same episodes, however many are collected), and runs until
    it has ``steps`` observations or the environment ends it (CartPole: the pole fell).

    A policy is ``"random"`` or a callable ``policy(observations, step) -> actions``: the current
    observations of the episodes running side by side (``[n, obs_dim]`` states, or ``[n, 3, 64,
    64]`` frames as floats in [0, 1]) and the step's index t (the action a_t leads into step
    t + 1) to action vectors ``[n, A]``. A policy with a ``reset(seeds)`` method is told when a
    batch of episodes starts, with one integer seed per episode. Continuous actions are clipped to
    the environment's bounds; a discrete one is the vector's largest entry. The recorded actions are
    the ones executed (clipped; one-hot).

    Args:
        env: A name in :data:`~elbox.envs.ENVIRONMENTS`: ``"pendulum"``, ``"cartpole"``,
            ``"cartpole_swingup"`` (needs dm_control).
        episodes: N.
        steps: T, the observations per episode (the reset's and one per action), at least 2;
            default: a full episode of the environment (Pendulum-v1: 201).
        pixels: Record 64 × 64 RGB frames instead of the state.
        policy: ``"random"`` or a callable (see above).
        seed: Seeds the episodes' initial states and the random policy.
        progress: Called as ``progress(done, total)`` after each batch of episodes.

    Returns:
        :class:`Episodes`, padded to the longest episode.

    Example:
        >>> data = collect("pendulum", 2, steps=5, seed=0)
        >>> data.x.shape, data.inputs.shape, data.rewards.shape
        ((2, 5, 3), (2, 5, 1), (2, 5))
    """
    environment = get_environment(env)
    N = check_positive_int(episodes, "episodes")
    T = environment.max_steps if steps is None else check_positive_int(steps, "steps")
    if T < 2:
        raise ValueError(f"steps must be at least 2: an episode of length 1 has one observation and no action or "
                         f"reward to learn from; received steps = {T}")  # fmt: skip
    pixels = check_bool(pixels, "pixels")
    seed = check_seed(seed, "seed")
    if isinstance(policy, str):
        if policy != "random":
            raise ValueError(f"policy must be 'random' or a callable policy(observations, step); received {policy!r}")
        policy = RandomPolicy(environment)
    elif not callable(policy):
        raise TypeError(f"policy must be 'random' or a callable policy(observations, step); received "
                        f"{describe(policy)}")  # fmt: skip
    A = environment.action_dim
    shape = (3, IMAGE_SIZE, IMAGE_SIZE) if pixels else (environment.observation_dim,)
    x = np.zeros((N, T, *shape), dtype=np.uint8 if pixels else np.float32)
    inputs = np.zeros((N, T, A), dtype=np.float32)
    rewards = np.zeros((N, T), dtype=np.float32)
    continues = np.ones((N, T), dtype=np.float32)
    lengths = np.zeros(N, dtype=np.int64)
    # two seeds per episode, from the run's seed and the episode's index: the reset's, the policy's
    seeds = np.stack([s.generate_state(2) for s in np.random.SeedSequence(seed).spawn(N)]).astype(np.int64)
    simulators = [environment.make(pixels) for _ in range(min(N, _BATCH))]
    try:
        for start in range(0, N, _BATCH):
            index = np.arange(start, min(N, start + _BATCH))
            rows = slice(index[0], index[-1] + 1)
            _run_batch(environment, simulators[: len(index)], policy, seeds[index], x[rows], inputs[rows],
                       rewards[rows], lengths[rows], continues[rows])  # fmt: skip
            if progress is not None:
                progress(int(index[-1]) + 1, N)
    finally:
        for simulator in simulators:
            simulator.close()
    longest = int(lengths.max())
    meta = {
        "env": environment.name,
        "source": environment.source,
        "versions": _versions(environment, pixels),
        "episodes": N,
        "steps": T,
        "seed": seed,
        "policy": getattr(policy, "name", getattr(policy, "__name__", type(policy).__name__)),
        "pixels": pixels,
        "observation": (f"RGB frames [3, {IMAGE_SIZE}, {IMAGE_SIZE}] uint8 0-255 (divide by 255)" if pixels
                        else f"state [{environment.observation_dim}] float32"),  # fmt: skip
        "action": f"[{A}] float32, " + ("one-hot" if environment.discrete else
                                        f"in [{environment.action_low:g}, {environment.action_high:g}]"),
        "layout": "inputs[:, t] = action a_{t-1} into step t, rewards[:, t] = reward on arriving at step t "
                  "(both 0 at t = 0); continues[:, t] = 0 where step t is terminal, else 1; steps at and after "
                  "lengths[n] are zeros (continues: ones)",
    }  # fmt: skip
    return Episodes(x[:, :longest], inputs[:, :longest], rewards[:, :longest], lengths, meta,
                    continues[:, :longest])  # fmt: skip


def _run_batch(environment: Environment, simulators, policy, seeds, x, inputs, rewards, lengths, continues) -> None:
    """Runs len(simulators) episodes side by side, writing into the views x, inputs, rewards, lengths and
    continues (0 at a step where the environment terminated the episode)."""
    n, T = len(simulators), x.shape[1]
    current = np.stack([sim.reset(int(s)) for sim, s in zip(simulators, seeds[:, 0])])  # [n, *obs]
    x[:, 0] = current
    lengths[:] = 1
    if hasattr(policy, "reset"):
        policy.reset(seeds[:, 1])
    alive = np.ones(n, dtype=bool)
    for t in range(1, T):
        seen = current.astype(np.float32) / 255 if current.dtype == np.uint8 else current
        actions = _check_actions(policy(seen, t - 1), n, environment)  # a_{t-1}: [n, A]
        for i in np.flatnonzero(alive):
            observation, reward, terminated = simulators[i].step(actions[i])
            x[i, t], inputs[i, t], rewards[i, t] = observation, actions[i], reward
            current[i] = observation
            lengths[i] = t + 1
            alive[i] = not terminated
            continues[i, t] = 0.0 if terminated else 1.0
        if not alive.any():
            break


def _check_actions(actions, n: int, environment: Environment) -> np.ndarray:
    """The policy's actions ``[n, A]`` as executed: clipped to the bounds, or one-hot."""
    A = environment.action_dim
    try:
        actions = np.asarray(actions, dtype=np.float32)
    except (TypeError, ValueError):
        raise TypeError(f"the policy must return actions [n, A] = [{n}, {A}] as numbers; it returned "
                        f"{describe(actions)}") from None  # fmt: skip
    if actions.shape != (n, A):
        raise ValueError(f"the policy must return actions [n, A] = [{n}, {A}] for {environment.name}; it returned "
                         f"shape {list(actions.shape)}")  # fmt: skip
    if not np.isfinite(actions).all():
        raise ValueError(f"the policy returned a non-finite action for {environment.name}: {actions.tolist()}")
    if environment.discrete:
        return np.eye(A, dtype=np.float32)[actions.argmax(-1)]
    return np.clip(actions, environment.action_low, environment.action_high)


def _versions(environment: Environment, pixels: bool) -> dict:
    packages = [environment.source.split(":")[0]] + (["pygame-ce", "pillow"] if pixels else [])
    versions = {}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "unknown"
    from elbox import __version__

    versions["elbox"] = __version__
    return versions
