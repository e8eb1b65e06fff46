"""Environments generated in code, for world models: gymnasium's Pendulum-v1 and CartPole-v1 (state
or 64 × 64 pixel observations, rendered headless by pygame-ce) and, where dm_control is installed,
its cartpole swing-up; :func:`collect` records episodes under a policy (what ``elbox collect`` runs).

gymnasium and pygame-ce are optional (``pip install 'elbox[envs]'``): imported when an environment
is made, never by ``import elbox``."""

from elbox.envs._collect import Episodes, RandomPolicy, collect, load_episodes
from elbox.envs._registry import (
    ENVIRONMENTS,
    IMAGE_SIZE,
    Environment,
    Simulator,
    get_environment,
    make_env,
    register_environment,
)

__all__ = [
    "ENVIRONMENTS",
    "IMAGE_SIZE",
    "Environment",
    "Episodes",
    "RandomPolicy",
    "Simulator",
    "collect",
    "get_environment",
    "load_episodes",
    "make_env",
    "register_environment",
]
