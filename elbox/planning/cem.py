r"""The cross-entropy method over action sequences (PlaNet's planner, Hafner et al. 2019)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from elbox._validation import check_bool, check_positive_int, describe

__all__ = ["Plan", "action_bounds", "cem_plan"]


@dataclass
class Plan:
    """What :func:`cem_plan` returns.

    Attributes:
        action: ``[A]``, the first action of the plan: the one to execute.
        actions: ``[H, A]``, the final mean of the search distribution (the plan).
        std: ``[H, A]``, its final standard deviation.
        predicted_return: The mean predicted return of the last iteration's ``top_k`` candidates
            (the model's prediction, not an observed return).
    """

    action: Tensor
    actions: Tensor
    std: Tensor
    predicted_return: float


def action_bounds(low, high, action_dim: int | None = None, *, dtype=None) -> tuple[Tensor, Tensor]:
    """``low`` and ``high`` as two ``[A]`` tensors, checked: finite, ``low < high`` in every
    coordinate. Numbers broadcast to ``action_dim`` coordinates (1 where it is None).

    Raises:
        TypeError: If a bound is not numeric.
        ValueError: If the bounds are not finite, not of one width ``A`` (or not ``action_dim``
            wide), or some ``low >= high``.
    """
    dtype = dtype or torch.get_default_dtype()
    bounds = []
    for name, value in (("action_low", low), ("action_high", high)):
        try:
            tensor = torch.as_tensor(np.asarray(value, dtype=np.float64) if not isinstance(value, Tensor) else value)
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be a number or a 1-D sequence of numbers (one per action coordinate); "
                            f"received {describe(value)}") from None  # fmt: skip
        if tensor.dim() > 1 or not (tensor.is_floating_point() or tensor.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"{name} must be a number or a 1-D sequence of numbers (one per action coordinate); "
                            f"received {describe(value)}")  # fmt: skip
        if not torch.isfinite(tensor).all():
            raise ValueError(f"{name} must be finite (the planner samples inside the bounds); received {value!r}")
        bounds.append(tensor.to(dtype).reshape(-1))
    widths = {b.numel() for b in bounds if b.numel() != 1}
    if action_dim is not None:
        widths.add(action_dim)
    if len(widths) > 1:
        expected = f"action_dim = {action_dim}" if action_dim is not None else "one width"
        raise ValueError(f"action_low and action_high must have {expected} coordinates (or be numbers); received "
                         f"{bounds[0].numel()} and {bounds[1].numel()}")  # fmt: skip
    width = widths.pop() if widths else 1
    low, high = (b.expand(width).clone() for b in bounds)
    if not (low < high).all():
        i = int((low >= high).nonzero()[0])
        raise ValueError(f"action_low must be below action_high in every coordinate; coordinate {i} has low "
                         f"{float(low[i]):g} >= high {float(high[i]):g}")  # fmt: skip
    return low, high


def check_cem_options(horizon, candidates, iterations, top_k) -> tuple[int, int, int, int]:
    """The planner's sizes, checked (``top_k <= candidates``)."""
    horizon = check_positive_int(horizon, "horizon")
    candidates = check_positive_int(candidates, "candidates")
    iterations = check_positive_int(iterations, "iterations")
    top_k = check_positive_int(top_k, "top_k")
    if top_k > candidates:
        raise ValueError(f"top_k must be at most candidates = {candidates} (the elite is chosen among them); "
                         f"received top_k = {top_k}")  # fmt: skip
    return horizon, candidates, iterations, top_k


@torch.no_grad()
def cem_plan(
    dynamics,
    state,
    *,
    horizon: int = 12,
    candidates: int = 1000,
    iterations: int = 10,
    top_k: int = 100,
    action_low,
    action_high,
    generator: torch.Generator | None = None,
    sample: bool = True,
    dtype: torch.dtype | None = None,
) -> Plan:
    r"""Plans ``horizon`` actions from ``state`` by the cross-entropy method, as PlaNet does: a
    Gaussian over action sequences, refitted ``iterations`` times to the ``top_k`` of
    ``candidates`` sequences ranked by their predicted return,

    .. math:: a^{(n)} = \mathrm{clip}(\mu + \sigma \odot \epsilon^{(n)}), \quad
              R^{(n)} = \textstyle\sum_{k=1}^{H} \hat r_k(a^{(n)}), \quad
              (\mu, \sigma^2) \leftarrow \text{mean and variance of the top } k \text{ by } R,

    starting from the middle of the bounds with half their width as the standard deviation.
    All candidates are imagined in one call: ``dynamics.imagine(state, actions [N, H, A])``.
    Where the imagination also predicts continuation probabilities (``.continues [N, H]``, a
    world model with a continuation head), each reward is weighted by the probability that the
    episode is still running when it is received, as Dreamer does:
    R = Σ_k r̂_k Π_{j<k} ĉ_j (the reward of the step that ends the episode counts; those after it
    do not).

    References:
        Learning Latent Dynamics for Planning from Pixels (Hafner et al., 2019),
        https://arxiv.org/abs/1811.04551

    Args:
        dynamics: Anything with ``imagine(state, actions, *, sample) -> .rewards [N, H]``, such
            as a :class:`~elbox.models.WorldModel` or :class:`TrueDynamics`.
        state: A state of batch 1 (from ``dynamics.filter``), broadcast over the candidates.
        horizon, candidates, iterations, top_k: PlaNet's 12, 1000, 10 and 100 by default.
        action_low, action_high: The bounds, numbers or ``[A]``; candidates are clipped to them.
        generator: Seeds the candidates.
        sample: Passed to ``imagine``: draw the latent path (PlaNet) or follow its mean.
        dtype: Of the actions (default: torch's default dtype).

    Returns:
        A :class:`Plan`: ``plan.action`` is the action to execute.

    Example:
        >>> from elbox.planning import TrueDynamics
        >>> pendulum = TrueDynamics()
        >>> state = torch.tensor([[3.0, 0.0]], dtype=torch.float64)  # θ, θ̇: hanging down
        >>> plan = cem_plan(pendulum, state, candidates=200, iterations=3, top_k=20, action_low=-2,
        ...                 action_high=2, generator=torch.Generator().manual_seed(0))
        >>> plan.actions.shape
        torch.Size([12, 1])
    """
    horizon, candidates, iterations, top_k = check_cem_options(horizon, candidates, iterations, top_k)
    sample = check_bool(sample, "sample")
    if not callable(getattr(dynamics, "imagine", None)):
        raise TypeError(f"dynamics must have an imagine(state, actions) method (a WorldModel, TrueDynamics); "
                        f"received {describe(dynamics)}")  # fmt: skip
    low, high = action_bounds(action_low, action_high, getattr(dynamics, "action_dim", None), dtype=dtype)
    device = generator.device if generator is not None else low.device
    low, high = low.to(device), high.to(device)
    mean = ((low + high) / 2).expand(horizon, -1).clone()  # [H, A]
    std = ((high - low) / 2).expand(horizon, -1).clone()  # [H, A]
    for _ in range(iterations):
        noise = torch.randn((candidates, *mean.shape), generator=generator, dtype=mean.dtype, device=device)
        actions = torch.clamp(mean + std * noise, low, high)  # [N, H, A]
        imagined = dynamics.imagine(state, actions, sample=sample)
        returns = _returns(imagined.rewards, getattr(imagined, "continues", None))  # [N]
        if returns.shape != (candidates,):
            raise ValueError(f"dynamics.imagine must return rewards [N, H] = [{candidates}, {horizon}]; the sum over "
                             f"the horizon has shape {list(returns.shape)}")  # fmt: skip
        if not torch.isfinite(returns).all():
            raise FloatingPointError(f"dynamics.imagine predicted non-finite rewards for "
                                     f"{int((~torch.isfinite(returns)).sum())} of {candidates} candidates")  # fmt: skip
        best, index = returns.topk(top_k)
        elite = actions[index].to(mean.dtype)  # [top_k, H, A]
        mean = elite.mean(0)
        std = (elite.var(0, correction=0) + 1e-6).sqrt()  # PlaNet's floor on the variance
    return Plan(action=mean[0], actions=mean, std=std, predicted_return=float(best.mean()))


def _returns(rewards: Tensor, continues: Tensor | None) -> Tensor:
    """Σ_k r_k, or with continuation probabilities ``[N, H]`` Σ_k r_k Π_{j<k} c_j."""
    if continues is None:
        return rewards.sum(-1)
    if continues.shape != rewards.shape:
        raise ValueError(f"dynamics.imagine must return continues of the rewards' shape {list(rewards.shape)}; "
                         f"received {list(continues.shape)}")  # fmt: skip
    running = torch.cat([torch.ones_like(continues[:, :1]), continues[:, :-1]], 1).cumprod(1)
    return (rewards * running).sum(-1)
