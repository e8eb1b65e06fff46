"""Planning in a learned model: model-predictive control by the cross-entropy method (PlaNet's
planner) over a world model's imagined rewards, the true pendulum dynamics as its upper bound, and
seeded episodes with their mean return and its standard error.

Nothing here imports gymnasium until episodes are run (:func:`run_episodes`, in the environments of
:mod:`elbox.envs`).
"""

from elbox.planning.cem import Plan, action_bounds, cem_plan
from elbox.planning.episodes import EpisodeReturns, run_episodes
from elbox.planning.mpc import MPCPolicy, UniformPolicy
from elbox.planning.pendulum import Rollout, TrueDynamics

__all__ = [
    "EpisodeReturns",
    "MPCPolicy",
    "Plan",
    "Rollout",
    "TrueDynamics",
    "UniformPolicy",
    "action_bounds",
    "cem_plan",
    "run_episodes",
]
