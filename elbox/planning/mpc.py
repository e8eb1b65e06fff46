"""Policies that act in an environment, one episode at a time: model-predictive control by the
cross-entropy method, and the uniform random policy it is compared with."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from elbox._validation import check_bool, check_seed, describe
from elbox.data.sequences import Sequences
from elbox.planning.cem import Plan, action_bounds, cem_plan, check_cem_options

__all__ = ["MPCPolicy", "UniformPolicy"]


class UniformPolicy:
    """Actions drawn uniformly between the bounds at every step: the random policy of the episodes
    here (:func:`run_episodes`; :class:`elbox.envs.RandomPolicy` is the same for ``elbox collect``).

    The protocol of every policy here: ``reset(observation, seed=...)`` at an episode's start,
    ``act()`` for the action at the latest observation (a numpy ``[A]``), ``observe(observation,
    reward)`` after each step.

    Args:
        action_low, action_high: Numbers or ``[A]``.
    """

    name = "random"

    def __init__(self, *, action_low, action_high):
        low, high = action_bounds(action_low, action_high, dtype=torch.float64)
        self.low, self.high = low.numpy(), high.numpy()
        self._rng = np.random.default_rng()

    def reset(self, observation=None, *, seed: int | None = None) -> None:
        self._rng = np.random.default_rng(check_seed(seed))

    def act(self) -> np.ndarray:
        return self._rng.uniform(self.low, self.high).astype(np.float32)

    def observe(self, observation, reward: float) -> None:
        pass


class MPCPolicy:
    """Receding-horizon control: at every step, filter the episode so far with ``dynamics.filter``,
    plan ``horizon`` actions with :func:`cem_plan` and execute the first; replan at the next step.

    The history is kept as one :class:`~elbox.data.Sequences` of batch 1 in the data convention of
    the world models: ``values[:, t]`` the observation at step t, ``inputs[:, t]`` the action that
    led into step t (zero at t = 0), ``rewards[:, t]`` the reward received on arriving at step t.
    The whole history is filtered at each step (exact, and cheap next to the planning itself).

    Args:
        dynamics: A :class:`~elbox.models.WorldModel` or :class:`TrueDynamics` (``filter`` and
            ``imagine``).
        action_low, action_high: The action bounds, numbers or ``[A]``.
        horizon, candidates, iterations, top_k: The planner's sizes (:func:`cem_plan`).
        sample: Imagine sampled latent paths (PlaNet) or their means.
        seed: Seeds the planner's candidates; ``reset(seed=...)`` reseeds it per episode.
        dtype: Of the observations and actions given to the model (default: the model's
            parameters' dtype, else torch's default).

    Example:
        >>> from elbox.planning import TrueDynamics
        >>> policy = MPCPolicy(TrueDynamics(), action_low=-2, action_high=2, candidates=100, iterations=2,
        ...                    top_k=10, seed=0)
        >>> policy.reset(np.array([-1.0, 0.0, 0.0]))  # hanging down
        >>> policy.act().shape
        (1,)
    """

    name = "cem"

    def __init__(
        self,
        dynamics,
        *,
        action_low,
        action_high,
        horizon: int = 12,
        candidates: int = 1000,
        iterations: int = 10,
        top_k: int = 100,
        sample: bool = True,
        seed: int | None = None,
        dtype: torch.dtype | None = None,
    ):
        for method in ("filter", "imagine"):
            if not callable(getattr(dynamics, method, None)):
                raise TypeError(f"dynamics must have filter and imagine methods (a WorldModel, TrueDynamics); "
                                f"{describe(dynamics)} has no {method}")  # fmt: skip
        self.dynamics = dynamics
        self.dtype = dtype or _parameter_dtype(dynamics)
        self.low, self.high = action_bounds(action_low, action_high, getattr(dynamics, "action_dim", None),
                                            dtype=self.dtype)  # fmt: skip
        self.horizon, self.candidates, self.iterations, self.top_k = check_cem_options(horizon, candidates,
                                                                                       iterations, top_k)
        self.sample = check_bool(sample, "sample")
        self.generator = torch.Generator()
        self._seed(check_seed(seed))
        self.last_plan: Plan | None = None
        self._action: np.ndarray | None = None
        self._observations: list[Tensor] = []
        self._actions: list[Tensor] = []
        self._rewards: list[float] = []

    def _seed(self, seed: int | None) -> None:
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)

    def reset(self, observation, *, seed: int | None = None) -> None:
        """Starts an episode at ``observation`` (``[*obs]``); ``seed`` reseeds the planner."""
        if seed is not None:
            self._seed(check_seed(seed))
        self._observations = [self._observation(observation)]
        self._actions = [torch.zeros_like(self.low)]
        self._rewards = [0.0]
        self.last_plan, self._action = None, None

    def history(self) -> Sequences:
        """The episode so far as a :class:`~elbox.data.Sequences` of batch 1."""
        if not self._observations:
            raise RuntimeError("the policy has no episode: call reset(observation) first")
        values = torch.stack(self._observations).unsqueeze(0)  # [1, t, *obs]
        inputs = torch.stack(self._actions).unsqueeze(0)  # [1, t, A]
        rewards = torch.tensor(self._rewards, dtype=self.dtype).unsqueeze(0)  # [1, t]
        return _sequences(values, inputs, rewards)

    @torch.no_grad()
    def act(self) -> np.ndarray:
        """Plans from the latest observation and returns the plan's first action (numpy ``[A]``).

        The model's own draws (the filtered state, the imagined latents) come from torch's global
        generator: it is seeded from the policy's generator for the call and restored after, so
        that an episode depends on its seed alone and the caller's random state is untouched."""
        history = self.history()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(2**62, (), generator=self.generator)))
            state = self.dynamics.filter(history)
            self.last_plan = cem_plan(
                self.dynamics, state, horizon=self.horizon, candidates=self.candidates, iterations=self.iterations,
                top_k=self.top_k, action_low=self.low, action_high=self.high, generator=self.generator,
                sample=self.sample, dtype=self.dtype,
            )  # fmt: skip
        self._action = self.last_plan.action.numpy().astype(np.float32)
        return self._action

    def observe(self, observation, reward: float) -> None:
        """Records the step just taken: the last planned action, the observation and reward it led to."""
        if self._action is None:
            raise RuntimeError("observe() follows act(): the policy has no action to record")
        self._actions.append(torch.from_numpy(self._action).to(self.dtype))  # as executed: float32
        self._observations.append(self._observation(observation))
        self._rewards.append(float(reward))
        self._action = None

    def _observation(self, observation) -> Tensor:
        obs = torch.as_tensor(np.asarray(observation)).to(self.dtype)
        if self._observations and obs.shape != self._observations[0].shape:
            raise ValueError(f"observation must have the episode's shape {list(self._observations[0].shape)}; "
                             f"received {describe(obs)}")  # fmt: skip
        return obs


def _parameter_dtype(module) -> torch.dtype:
    parameters = getattr(module, "parameters", None)
    if callable(parameters):
        for p in parameters():
            return p.dtype
    return torch.get_default_dtype()


def _sequences(values: Tensor, inputs: Tensor, rewards: Tensor) -> Sequences:
    # the episode is running while the policy plans: every step so far continues (c_t = 1)
    return Sequences(values, inputs=inputs, rewards=rewards, continues=torch.ones_like(rewards))
