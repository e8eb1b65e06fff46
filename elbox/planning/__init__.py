"""Planning in a learned model: model-predictive control by the cross-entropy method (PlaNet's
planner) over a world model's imagined rewards, the true pendulum dynamics as its upper bound, and
seeded episodes with their mean return and its standard error.

Nothing here imports gymnasium until episodes are run (:func:`run_episodes`).
"""

from elbox.planning.cem import Plan, action_bounds, cem_plan
from elbox.planning.episodes import EpisodeReturns, run_episodes
from elbox.planning.mpc import MPCPolicy, RandomPolicy
from elbox.planning.pendulum import Imagined, TrueDynamics

__all__ = [
    "EpisodeReturns",
    "Imagined",
    "MPCPolicy",
    "Plan",
    "RandomPolicy",
    "TrueDynamics",
    "action_bounds",
    "cem_plan",
    "run_episodes",
]
