r"""Estimators of the objective: pure functions of (model, guide, x) returning values per data point.

Nothing here averages over the batch or calls ``backward``; the training engine does.

Gradients. A bound is an expectation over q_φ(z | x), and there are two ways to differentiate
it with respect to φ. When q has a reparameterized sampler (``q.has_rsample``: z = g_φ(ε)
with ε from a fixed distribution, as for the normal and Beta families) the particles carry
the gradient themselves: the *pathwise* estimator, usually of low variance. When it has none
(categorical and other discrete q) the bound is still computed exactly as written, and a
*score-function* surrogate is added that is zero in value and whose gradient is
E[(f(z) − b) ∇_φ log q_φ(z)], with a leave-one-out baseline b over the particles (VIMCO's for
the importance-weighted bounds). So a reported bound is always the true number:
``value + (surrogate − surrogate.detach())``. A discrete q with enumerable support is summed
over exactly by :func:`elbo` instead, which needs neither estimator.

Discrete latents have more estimators (and the objectives of :mod:`elbox.objectives.discrete`
train with them): a sum over q's values, jointly (:func:`enumerate_joint`, exact) or one
variable at a time (:func:`local_expectation`); and, for a latent in the one-hot convention, the
Gumbel-Softmax relaxation (:func:`gumbel_softmax`), pathwise but biased by its temperature.

Shapes: particles lie along a leading dimension S: z is ``[S, B, *latent_shape]`` and
per-particle quantities ``[S, B]``.
"""

from elbox.bounds import _kl  # noqa: F401  (registers the closed-form KLs torch lacks)
from elbox.bounds.elbo import Terms, elbo
from elbox.bounds.enumerate import enumerate_joint, joint_support, local_expectation
from elbox.bounds.importance import cubo, iwae, log_weights, renyi
from elbox.bounds.relaxed import gumbel_softmax, relaxed_draws
from elbox.bounds.sequence import elbo_steps, fivo, smc

__all__ = [
    "Terms",
    "cubo",
    "elbo",
    "elbo_steps",
    "enumerate_joint",
    "fivo",
    "gumbel_softmax",
    "iwae",
    "joint_support",
    "local_expectation",
    "log_weights",
    "relaxed_draws",
    "renyi",
    "smc",
]
