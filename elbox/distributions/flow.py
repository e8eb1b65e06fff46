r"""Normalizing flows from zuko (MAF, NSF, RealNVP), built by name, and the distribution they
give with the support and event shape that elbox's checks read.

A flow is an invertible map between a base variable u ~ p(u) and the variable of interest; its
density comes from the change of variables. zuko stores the map in the direction *towards* the
base, f: z → u, and scores z in one pass of f, while a draw needs one pass of f⁻¹. For an
autoregressive flow the two directions cost differently: f is one network pass, f⁻¹ one pass
per dimension. So:

- a **density** (a flow over data, a flow prior) keeps zuko's direction, the masked
  autoregressive flow (MAF): log p(x) in one pass, where it is needed;
- a **posterior** q(z | x) is inverted, the inverse autoregressive flow (IAF, Kingma et al.
  2016): a draw and its log-density come out of the same single pass
  (``rsample_and_log_prob``), which is all the bounds ask of q. Scoring a z that q did not draw
  is then the slow direction; elbox never needs it in training.

Coupling flows (RealNVP) are one pass either way.

References:
    Masked Autoregressive Flow for Density Estimation (Papamakarios et al., 2017),
    https://arxiv.org/abs/1705.07057;
    Improved Variational Inference with Inverse Autoregressive Flow (Kingma et al., 2016),
    https://arxiv.org/abs/1606.04934;
    Neural Spline Flows (Durkan et al., 2019), https://arxiv.org/abs/1906.04032;
    Density estimation using Real NVP (Dinh et al., 2017), https://arxiv.org/abs/1605.08803
"""

from __future__ import annotations

import torch
from torch.distributions import constraints

from elbox._validation import check_positive_int

__all__ = ["FLOW_TYPES", "FlowDistribution", "build_flow"]

#: The flows a config or constructor can name.
FLOW_TYPES = ("maf", "nsf", "realnvp")
#: A flow's defaults where it transforms a latent (the VAE's q and prior, the flow guide):
#: zuko's MAF, 3 transformations of two hidden layers of 64. Every constructor and config reads them here.
FLOW_DEFAULTS = {"flow": "maf", "transforms": 3, "hidden": (64, 64)}


def _zuko():
    try:
        import zuko
    except ImportError as error:  # pragma: no cover - a dependency of elbox
        raise ImportError("normalizing flows need the zuko package: pip install zuko") from error
    return zuko


def build_flow(kind: str, features: int, context: int = 0, transforms: int = FLOW_DEFAULTS["transforms"],
               hidden=FLOW_DEFAULTS["hidden"],
               *, sample_fast: bool = False):  # fmt: skip
    """A zuko flow over ``features`` dimensions, conditioned on ``context`` features (0: none).

    Args:
        kind: ``"maf"`` (affine autoregressive), ``"nsf"`` (rational-quadratic spline
            autoregressive; defined on [−5, 5], the identity outside) or ``"realnvp"`` (affine
            coupling).
        features: The dimension of the variable.
        context: The size of the conditioning vector.
        transforms: The number of stacked transformations.
        hidden: The hidden widths of each transformation's network.
        sample_fast: Invert an autoregressive flow so that drawing is one pass (the IAF
            direction, for a posterior); by default scoring is (the MAF direction, for a density).

    Returns:
        A ``zuko.flows.Flow`` module; ``flow(c)`` is a distribution over ``[*c.shape[:-1], features]``.
    """
    if kind not in FLOW_TYPES:
        raise ValueError(f"flow must be one of {FLOW_TYPES}; received {kind!r}")
    features = check_positive_int(features, "features")
    context = check_positive_int(context, "context_dim", minimum=0)
    transforms = check_positive_int(transforms, "transforms")
    if isinstance(hidden, int | str) or not hasattr(hidden, "__iter__"):
        raise TypeError(f"hidden must be a sequence of layer widths, such as (64, 64); received {hidden!r}")
    hidden = tuple(check_positive_int(h, "hidden") for h in hidden)
    zuko = _zuko()
    if kind == "maf":
        flow = zuko.flows.MAF(features, context, transforms=transforms, hidden_features=hidden)
    elif kind == "nsf":
        flow = zuko.flows.NSF(features, context, transforms=transforms, hidden_features=hidden)
    else:
        if features < 2:
            raise ValueError("flow='realnvp' couples halves of the variable and needs at least 2 dimensions; "
                             "use 'maf' or 'nsf' for a 1-dimensional one")  # fmt: skip
        flow = zuko.flows.RealNVP(features, context, transforms=transforms, hidden_features=hidden)
    if sample_fast and kind != "realnvp":
        flow.transform = flow.transform.inv
    return flow


class FlowDistribution(torch.distributions.Distribution):
    """zuko's ``NormalizingFlow`` over real vectors, with what torch's checks read: the support
    ℝᴰ and a batch of ``[B]``. Draws and their log-densities come from one pass
    (:meth:`rsample_and_log_prob`); ``mean`` is not in closed form (elbox uses the particles').

    Args:
        transform: The transformation towards the base (zuko's convention).
        base: The base distribution, event shape ``[D]``.
    """

    has_rsample = True
    arg_constraints: dict = {}
    support = constraints.independent(constraints.real, 1)

    def __init__(self, transform, base):
        from zuko.distributions import NormalizingFlow

        if not isinstance(base, torch.distributions.Distribution):
            raise TypeError(f"base must be a torch.distributions.Distribution; received {type(base).__name__}")

        self.flow = NormalizingFlow(transform, base)
        super().__init__(self.flow.batch_shape, self.flow.event_shape, validate_args=False)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(FlowDistribution, _instance)
        new.flow = self.flow.expand(torch.Size(batch_shape))
        super(FlowDistribution, new).__init__(new.flow.batch_shape, new.flow.event_shape, validate_args=False)
        return new

    def log_prob(self, value):
        return self.flow.log_prob(value)

    def rsample(self, sample_shape=()):
        return self.flow.rsample(torch.Size(sample_shape))

    def rsample_and_log_prob(self, sample_shape=()):
        return self.flow.rsample_and_log_prob(torch.Size(sample_shape))
