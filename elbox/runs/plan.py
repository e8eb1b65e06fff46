"""A world-model run's planner (``elbox plan RUN``): seeded episodes of the random policy, of the
cross-entropy-method planner on the true dynamics and of the same planner on the run's world model;
mean returns with standard errors, written as plan.json and drawn as plan.png."""

from __future__ import annotations

import os
from pathlib import Path

from elbox._validation import check_positive_int
from elbox.io import RunDirectory, write_json
from elbox.runs.config import ConfigError
from elbox.runs.load import load_run

__all__ = ["PLAN_DEFAULTS", "plan_run"]

#: The planner's sizes for ``elbox plan``: PlaNet's horizon, a tenth of its 1000 candidates × 10
#: iterations (10 episodes of 200 steps on a world model in minutes on 2 cores; docs/planning.md
#: measures what the reduction costs).
PLAN_DEFAULTS = {"horizon": 12, "candidates": 300, "iterations": 4, "top_k": 30}


def plan_run(run_dir: str | os.PathLike, *, episodes: int = 10, seed: int = 0, steps: int | None = None,
             env: str = "pendulum", horizon: int = PLAN_DEFAULTS["horizon"],
             candidates: int = PLAN_DEFAULTS["candidates"], iterations: int = PLAN_DEFAULTS["iterations"],
             top_k: int = PLAN_DEFAULTS["top_k"], true_dynamics: bool = True, figure: bool = True,
             progress=None) -> dict:  # fmt: skip
    """Runs ``episodes`` seeded episodes of ``env`` under three policies: uniformly random actions,
    model-predictive control by :func:`~elbox.planning.cem_plan` on the true dynamics (the upper
    bound: Pendulum-v1 only; ``true_dynamics=False`` leaves it out) and the same planner on the
    run's world model, the same episode seeds for all three. Writes ``plan.json`` (each policy's
    returns, mean and standard error, seconds, and the settings) and ``plan.png`` atomically into
    the run directory.

    Args:
        run_dir: A run of a world model (``[model] type = "world"``) with actions and a reward head.
        episodes, seed, steps: Episode i starts from ``reset(seed + i)``; ``steps`` actions each
            (default: the environment's full episode, Pendulum-v1: 200).
        env: The environment's name in :data:`elbox.envs.ENVIRONMENTS` (the one the run's data
            came from).
        horizon, candidates, iterations, top_k: The planner's sizes.
        progress: Called as ``progress(policy_name)`` before each policy's episodes.

    Returns:
        ``{"rows": [{"policy", "returns", "mean", "stderr", "seconds"}, ...], "settings": {...},
        "table": path, "figure": path or None}``.
    """
    from elbox.envs import get_environment
    from elbox.planning import MPCPolicy, TrueDynamics, UniformPolicy, run_episodes
    from elbox.planning.cem import check_cem_options

    episodes = check_positive_int(episodes, "episodes")
    horizon, candidates, iterations, top_k = check_cem_options(horizon, candidates, iterations, top_k)
    environment = get_environment(env)
    run = load_run(run_dir)
    model = run.model
    if not (callable(getattr(model, "filter", None)) and callable(getattr(model, "imagine", None))):
        raise ConfigError(f"plan: a {run.config['model']['type']!r} model cannot be planned with (it needs filter and "
                          "imagine: [model] type = 'world')")  # fmt: skip
    if not getattr(model, "has_reward", False) or not getattr(model, "use_actions", False) or not model.action_dim:
        raise ConfigError("plan: the world model must predict rewards from actions ([model] reward = true, "
                          "use_actions = true, and data with actions)")  # fmt: skip
    if (model.obs_dim, model.action_dim) != (environment.observation_dim, environment.action_dim):
        raise ValueError(f"env {env!r} has observations of size {environment.observation_dim} and actions of size "
                         f"{environment.action_dim}; the run's model has {model.obs_dim} and {model.action_dim}: pass "
                         "the environment its data came from")  # fmt: skip
    bounds = {"action_low": environment.action_low, "action_high": environment.action_high}
    sizes = {"horizon": horizon, "candidates": candidates, "iterations": iterations, "top_k": top_k}
    policies = {"random": UniformPolicy(**bounds)}
    if true_dynamics and env == "pendulum":
        policies["CEM, true dynamics"] = MPCPolicy(TrueDynamics(), **bounds, **sizes)
    policies["CEM, world model"] = MPCPolicy(model, **bounds, **sizes)
    rows = []
    for name, policy in policies.items():
        if progress is not None:
            progress(name)
        result = run_episodes(policy, env=env, episodes=episodes, seed=seed, steps=steps)
        rows.append({"policy": name, "returns": result.returns.tolist(), "mean": result.mean,
                     "stderr": result.stderr, "seconds": result.seconds})  # fmt: skip
    settings = {"env": env, "episodes": episodes, "seed": seed, "steps": result.steps, **sizes,
                "checkpoint": run.checkpoint, "stderr": "standard error of the mean over episodes, s / sqrt(n)"}
    directory = Path(RunDirectory.open(run_dir).path)
    table = write_json(directory / "plan.json", {"rows": rows, "settings": settings})
    path = None
    if figure:
        from elbox.plots.planning import plot_returns

        path = plot_returns(rows, directory / "plan.png",
                            title=f"{env}: return over {episodes} episodes of {result.steps} steps (± SE)")
    return {"rows": rows, "settings": settings, "table": table, "figure": path}
