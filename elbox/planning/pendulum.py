r"""Pendulum-v1's true dynamics in torch, vectorized: the planner's upper bound."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from elbox._validation import as_tensor, check_number, describe
from elbox.data.sequences import Sequences

__all__ = ["Rollout", "TrueDynamics"]


@dataclass
class Rollout:
    """What :meth:`TrueDynamics.imagine` returns: ``rewards [N, K]`` the reward of each action,
    ``observations [N, K, 3]`` and ``states [N, K, 2]`` (θ, θ̇) after it."""

    rewards: Tensor
    observations: Tensor
    states: Tensor


class TrueDynamics:
    r"""gymnasium's Pendulum-v1 as a model: the same ``filter`` / ``imagine`` protocol as
    :class:`~elbox.models.WorldModel`, from the true state (θ, θ̇) instead of a latent one. With
    g = 10, m = l = 1, dt = 0.05, torque clipped to ±2 and θ̇ to ±8, a step is

    .. math:: r = -(\mathrm{norm}(\theta)^2 + 0.1\,\dot\theta^2 + 0.001\,u^2), \quad
              \dot\theta' = \mathrm{clip}(\dot\theta + (\tfrac{3g}{2l}\sin\theta + \tfrac{3}{ml^2}u)\,dt),
              \quad \theta' = \theta + \dot\theta'\,dt,

    computed in the order gymnasium computes it, in float64 by default (equal to gymnasium's
    step up to the last bits of ``sin``). The observation is (cos θ, sin θ, θ̇).

    Args:
        g: Gravity (Pendulum-v1's default 10).
        dtype: Of the states and rewards.

    Example:
        >>> pendulum = TrueDynamics()
        >>> state = torch.tensor([[math.pi, 0.0]], dtype=torch.float64)  # hanging down, at rest
        >>> rollout = pendulum.imagine(state, torch.zeros(1, 3, 1))
        >>> [round(r, 4) for r in rollout.rewards[0].tolist()]  # -π² at each step
        [-9.8696, -9.8696, -9.8696]
    """

    action_dim = 1
    observation_dim = 3
    max_speed, max_torque, dt, m, l = 8.0, 2.0, 0.05, 1.0, 1.0  # noqa: E741

    def __init__(self, *, g: float = 10.0, dtype: torch.dtype = torch.float64):
        self.g = check_number(g, "g", minimum=0)
        self.dtype = dtype

    def state_from_observation(self, observation) -> Tensor:
        """``[..., 3]`` observations (cos θ, sin θ, θ̇) as ``[..., 2]`` states (θ, θ̇), θ in (-π, π]."""
        obs = as_tensor(observation, "observation").to(self.dtype)
        if obs.dim() < 1 or obs.shape[-1] != 3:
            raise ValueError(f"observation must be [..., 3] (cos θ, sin θ, θ̇); received {describe(obs)}")
        return torch.stack([torch.atan2(obs[..., 1], obs[..., 0]), obs[..., 2]], -1)

    def observe(self, state: Tensor) -> Tensor:
        """``[..., 2]`` states as ``[..., 3]`` observations (cos θ, sin θ, θ̇)."""
        return torch.stack([torch.cos(state[..., 0]), torch.sin(state[..., 0]), state[..., 1]], -1)

    def step(self, state: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        """One step of every state ``[..., 2]`` under its action ``[..., 1]``: the next states
        ``[..., 2]`` and the rewards ``[...]``, as Pendulum-v1's ``step``."""
        th, thdot = state[..., 0], state[..., 1]
        u = torch.clamp(action[..., 0], -self.max_torque, self.max_torque)  # in the action's dtype, as gymnasium
        costs = _angle_normalize(th) ** 2 + 0.1 * thdot**2 + 0.001 * (u**2)
        g, m, l, dt = self.g, self.m, self.l, self.dt  # noqa: E741
        newthdot = thdot + (3 * g / (2 * l) * torch.sin(th) + 3.0 / (m * l**2) * u) * dt
        newthdot = torch.clamp(newthdot, -self.max_speed, self.max_speed)
        newth = th + newthdot * dt
        return torch.stack([newth, newthdot], -1), -costs

    def filter(self, x: Sequences) -> Tensor:
        """The state ``[B, 2]`` after each sequence's last observed step (the observations alone
        determine it: θ = atan2(sin θ, cos θ))."""
        if not isinstance(x, Sequences):
            raise TypeError(f"x must be Sequences of observations [B, T, 3]; received {describe(x)}")
        if x.values.dim() != 3 or x.values.shape[-1] != 3:
            raise ValueError(f"x must hold observations [B, T, 3] (cos θ, sin θ, θ̇); received values of shape "
                             f"{list(x.values.shape)}")  # fmt: skip
        last = x.lengths - 1  # [B]
        return self.state_from_observation(x.values[torch.arange(len(x)), last])

    def imagine(self, state: Tensor, actions: Tensor, *, sample: bool = True) -> Rollout:
        """Rolls ``state`` (``[N, 2]``, or ``[1, 2]`` broadcast over N) forward under ``actions
        [N, K, 1]``: the reward of each action and the observation after it. ``sample`` is
        accepted for the protocol's sake: these dynamics are deterministic."""
        actions = as_tensor(actions, "actions", ndim=3)
        if actions.shape[-1] != 1:
            raise ValueError(f"actions must be [N, K, 1] (one torque per step); received {describe(actions)}")
        state = as_tensor(state, "state", ndim=2).to(self.dtype)
        if state.shape[-1] != 2 or state.shape[0] not in (1, actions.shape[0]):
            raise ValueError(f"state must be [N, 2] or [1, 2] (θ, θ̇) with N = {actions.shape[0]}; received "
                             f"{describe(state)}")  # fmt: skip
        state = state.expand(actions.shape[0], 2)
        rewards, states = [], []
        for k in range(actions.shape[1]):  # K steps, each vectorized over the N rollouts
            state, reward = self.step(state, actions[:, k])
            rewards.append(reward)
            states.append(state)
        states = torch.stack(states, 1)  # [N, K, 2]
        return Rollout(rewards=torch.stack(rewards, 1), observations=self.observe(states), states=states)


def _angle_normalize(x: Tensor) -> Tensor:
    return ((x + math.pi) % (2 * math.pi)) - math.pi
