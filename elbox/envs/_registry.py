"""The registered environments: gymnasium's Pendulum-v1 and CartPole-v1 (and dm_control's cartpole
swing-up where dm_control is installed), each behind one small interface with action *vectors*."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["ENVIRONMENTS", "IMAGE_SIZE", "Environment", "Simulator", "get_environment", "make_env",
           "register_environment"]

#: The side of a pixel observation: frames are rendered, then resized to IMAGE_SIZE × IMAGE_SIZE.
IMAGE_SIZE = 64


@dataclass(frozen=True)
class Environment:
    """A registered environment.

    Attributes:
        name: The name ``elbox collect`` and :func:`~elbox.envs.collect` take.
        source: Where it comes from (``"gymnasium:Pendulum-v1"``).
        observation_dim: The size of a state observation.
        action_dim: A, the size of an action vector.
        discrete: Whether the actions are discrete choices, one-hot encoded as the action vector.
        action_low: The smallest value of each action entry (0 for one-hot vectors).
        action_high: The largest.
        max_steps: The observations of one full episode: the reset and every step until the
            environment's own time limit (Pendulum-v1: 1 + 200), the default ``steps``.
        description: One line for the docs and the CLI's help.
        make: ``make(pixels) -> Simulator`` (imports the environment's library).
    """

    name: str
    source: str
    observation_dim: int
    action_dim: int
    discrete: bool
    action_low: float
    action_high: float
    max_steps: int
    description: str
    make: Callable[[bool], Simulator]


class Simulator:
    """One running episode's environment: ``reset(seed) -> observation`` and ``step(action)``
    ``-> (observation, reward, terminated)``, where ``action`` is the action vector ``[A]`` and an
    observation is the state ``[observation_dim]`` (float32) or the frame ``[3, 64, 64]`` (uint8)."""

    def reset(self, seed: int) -> np.ndarray:
        raise NotImplementedError

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool]:
        raise NotImplementedError

    def close(self) -> None:
        pass


ENVIRONMENTS: dict[str, Environment] = {}


def register_environment(environment: Environment) -> Environment:
    """Adds an environment to :data:`ENVIRONMENTS` (and so to ``elbox collect``)."""
    if not isinstance(environment, Environment):
        raise TypeError(f"environment must be an elbox.envs.Environment; received {type(environment).__name__}")
    ENVIRONMENTS[environment.name] = environment
    return environment


def make_env(name: str, *, pixels: bool = False) -> Simulator:
    """A simulator of the registered environment ``name`` (state or 64 × 64 pixel observations)."""
    return get_environment(name).make(bool(pixels))


def get_environment(name) -> Environment:
    if not isinstance(name, str) or name not in ENVIRONMENTS:
        raise ValueError(f"env must be one of {sorted(ENVIRONMENTS)}; received {name!r}")
    return ENVIRONMENTS[name]


def _import(module: str, extra: str, what: str):
    """The optional dependency ``module``, or an ImportError that says how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(f"{what} needs {module.split('.')[0]!r}, which is not installed ({error}); install it with "
                          f"`pip install {extra}`") from None  # fmt: skip


def _resize(frame: np.ndarray) -> np.ndarray:
    """An RGB frame ``[H, W, 3]`` resized with antialiasing (PIL's Lanczos filter) to ``[3, 64, 64]`` uint8.

    ``reducing_gap=3`` first averages boxes of pixels down to at least 3 × 64 (what the filter would
    average anyway): 2.6 times faster on Pendulum's 500 × 500 frames, within 2 of 255 of the plain filter."""
    from PIL import Image

    small = Image.fromarray(np.ascontiguousarray(frame)).resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS,
                                                                reducing_gap=3.0)  # fmt: skip
    return np.asarray(small, dtype=np.uint8).transpose(2, 0, 1).copy()  # [3, 64, 64]


class _Gymnasium(Simulator):
    """A gymnasium classic-control task; its time limit lifted (the collector stops episodes)."""

    def __init__(self, env_id: str, pixels: bool, discrete: bool):
        if pixels:
            # pygame-ce draws the frames off-screen: no display, no banner on stdout
            os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
            os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
        gym = _import("gymnasium", "'elbox[envs]'", f"the environment {env_id}")
        if pixels:
            _import("pygame", "'elbox[envs]'", f"pixel observations of {env_id}")
        # max_episode_steps=None keeps the registered TimeLimit; a huge one lifts it
        self.env = gym.make(env_id, render_mode="rgb_array" if pixels else None, max_episode_steps=10**9)
        self.pixels, self.discrete = pixels, discrete

    def _observe(self, state: np.ndarray) -> np.ndarray:
        return _resize(self.env.render()) if self.pixels else np.asarray(state, dtype=np.float32)

    def reset(self, seed: int) -> np.ndarray:
        state, _ = self.env.reset(seed=int(seed))
        return self._observe(state)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool]:
        command = int(np.argmax(action)) if self.discrete else np.asarray(action, dtype=np.float32)
        state, reward, terminated, _, _ = self.env.step(command)
        return self._observe(state), float(reward), bool(terminated)

    def close(self) -> None:
        self.env.close()


class _DMControl(Simulator):
    """dm_control's cartpole swing-up (MuJoCo): state = position (3) and velocity (2); frames from
    camera 0, rendered at 64 × 64 directly (MUJOCO_GL=egl unless set)."""

    def __init__(self, pixels: bool):
        if pixels:
            os.environ.setdefault("MUJOCO_GL", "egl")
        self.suite = _import("dm_control.suite", "dm_control", "the environment cartpole_swingup")
        self.pixels = pixels
        self.env = None

    def _observe(self, time_step) -> np.ndarray:
        if self.pixels:
            frame = self.env.physics.render(height=IMAGE_SIZE, width=IMAGE_SIZE, camera_id=0)  # [64, 64, 3]
            return np.asarray(frame, dtype=np.uint8).transpose(2, 0, 1).copy()
        o = time_step.observation
        return np.concatenate([np.ravel(o["position"]), np.ravel(o["velocity"])]).astype(np.float32)

    def reset(self, seed: int) -> np.ndarray:
        if self.env is not None:
            self.env.close()
        # the episode's randomness (the initial pose) comes from the task's own seeded generator
        self.env = self.suite.load("cartpole", "swingup", task_kwargs={"random": int(seed) % 2**32})
        return self._observe(self.env.reset())

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool]:
        time_step = self.env.step(np.asarray(action, dtype=np.float64))
        # the swing-up has no terminal state: its episodes end at the time limit (1000 steps)
        return self._observe(time_step), float(time_step.reward or 0.0), bool(time_step.last())

    def close(self) -> None:
        if self.env is not None:
            self.env.close()


register_environment(Environment(
    name="pendulum", source="gymnasium:Pendulum-v1", observation_dim=3, action_dim=1, discrete=False,
    action_low=-2.0, action_high=2.0, max_steps=201,
    description="gymnasium's Pendulum-v1: observation (cos θ, sin θ, θ̇), torque in [-2, 2], reward "
                "-(θ² + 0.1 θ̇² + 0.001 u²)",
    make=lambda pixels: _Gymnasium("Pendulum-v1", pixels, discrete=False),
))  # fmt: skip
register_environment(Environment(
    name="cartpole", source="gymnasium:CartPole-v1", observation_dim=4, action_dim=2, discrete=True,
    action_low=0.0, action_high=1.0, max_steps=501,
    description="gymnasium's CartPole-v1: observation (x, ẋ, θ, θ̇), push left/right one-hot, reward 1 per step; "
                "episodes end when the pole falls (ragged)",
    make=lambda pixels: _Gymnasium("CartPole-v1", pixels, discrete=True),
))  # fmt: skip
register_environment(Environment(
    name="cartpole_swingup", source="dm_control:cartpole/swingup", observation_dim=5, action_dim=1, discrete=False,
    action_low=-1.0, action_high=1.0, max_steps=1001,
    description="dm_control's cartpole swing-up (MuJoCo; optional: needs dm_control): observation (position 3, "
                "velocity 2), force in [-1, 1]",
    make=lambda pixels: _DMControl(pixels),
))  # fmt: skip
