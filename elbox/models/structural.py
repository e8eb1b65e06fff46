"""Structural time-series models as linear-Gaussian state-space models with their structure held
fixed: the local level and the local linear trend (Durbin & Koopman, *Time Series Analysis by
State Space Methods*), approximately diffuse at the start as statsmodels' ``UnobservedComponents``."""

from __future__ import annotations

import torch
from torch import Tensor

from elbox._validation import check_number
from elbox.distributions import kalman
from elbox.models.lgssm import LinearGaussianSSM

__all__ = ["DIFFUSE_VARIANCE", "diffuse_log_likelihood", "exact_diffuse_log_likelihood", "local_level",
           "local_linear_trend"]

#: The initial state's variance of an approximately diffuse start (statsmodels' default, 1e6).
DIFFUSE_VARIANCE = 1e6

_STRUCTURE = ("transition_matrix", "observation_matrix", "initial_loc", "initial_covariance")


def _variance(value, name: str) -> float:
    value = check_number(value, name, only_type=True)
    if not (value > 0 and value != float("inf")):
        raise ValueError(f"{name} must be a positive, finite variance; received {value}")
    return float(value)


def local_level(level_variance: float = 1.0, observation_variance: float = 1.0, *,
                diffuse_variance: float = DIFFUSE_VARIANCE) -> LinearGaussianSSM:  # fmt: skip
    r"""The local level model: a random walk observed with noise,

    .. math:: x_t = \mu_t + \varepsilon_t,\ \varepsilon_t \sim \mathcal{N}(0, \sigma^2_\varepsilon), \quad
              \mu_{t+1} = \mu_t + \eta_t,\ \eta_t \sim \mathcal{N}(0, \sigma^2_\eta),

    A = C = 1 held fixed (``fixed``), μ_1 ~ N(0, ``diffuse_variance``) also fixed (approximately
    diffuse); EM and gradient fitting estimate the two variances. Score it as the literature does
    with :func:`diffuse_log_likelihood` (the first observation's term burnt in).

    Args:
        level_variance: σ²_η, the level's step variance (Q).
        observation_variance: σ²_ε, the observation noise (R).
        diffuse_variance: The initial level's variance.
    """
    q, r = _variance(level_variance, "level_variance"), _variance(observation_variance, "observation_variance")
    p0 = _variance(diffuse_variance, "diffuse_variance")
    one = torch.ones(1, 1)
    model = LinearGaussianSSM(1, 1, transition_matrix=one, observation_matrix=one, transition_covariance=q * one,
                              observation_covariance=r * one, initial_loc=torch.zeros(1),
                              initial_covariance=p0 * one, fixed=_STRUCTURE)  # fmt: skip
    model.initialization = "approximately diffuse"  # named in the evidence report
    return model


def local_linear_trend(level_variance: float = 1.0, slope_variance: float = 1.0, observation_variance: float = 1.0,
                       *, diffuse_variance: float = DIFFUSE_VARIANCE) -> LinearGaussianSSM:  # fmt: skip
    r"""The local linear trend: a level that moves by a slope, itself a random walk,

    .. math:: x_t = \mu_t + \varepsilon_t, \quad \mu_{t+1} = \mu_t + \nu_t + \xi_t, \quad
              \nu_{t+1} = \nu_t + \zeta_t,

    state (μ_t, ν_t), A = [[1, 1], [0, 1]] and C = [1, 0] held fixed, Q = diag(σ²_ξ, σ²_ζ) given
    (EM estimates a full Q; hold ``transition_covariance`` fixed to keep it diagonal), the start
    approximately diffuse.
    """
    variances = [_variance(v, n) for v, n in ((level_variance, "level_variance"), (slope_variance, "slope_variance"))]
    r = _variance(observation_variance, "observation_variance")
    p0 = _variance(diffuse_variance, "diffuse_variance")
    model = LinearGaussianSSM(2, 1, transition_matrix=torch.tensor([[1.0, 1.0], [0.0, 1.0]]),
                              observation_matrix=torch.tensor([[1.0, 0.0]]),
                              transition_covariance=torch.diag(torch.tensor(variances)),
                              observation_covariance=torch.tensor([[r]]), initial_loc=torch.zeros(2),
                              initial_covariance=p0 * torch.eye(2), fixed=_STRUCTURE)  # fmt: skip
    model.initialization = "approximately diffuse"  # named in the evidence report
    return model


@torch.no_grad()
def diffuse_log_likelihood(model: LinearGaussianSSM, x, burn: int | None = None) -> Tensor:
    """log p(x_{d+1:T} | x_{1:d}) per sequence, ``[B]``: the approximately diffuse convention of
    statsmodels (``loglikelihood_burn``) and of Durbin & Koopman's tables, where the first d terms
    (d = the number of diffuse states, ``state_dim``, by default), which depend on the arbitrary
    large initial variance, are left out. ``model.log_evidence`` is the whole log p(x)."""
    x = model.check_data(x)
    d = model.state_dim if burn is None else burn
    if not isinstance(d, int) or isinstance(d, bool) or d < 0:
        raise ValueError(f"burn must be a non-negative integer number of steps; received {burn!r}")
    terms = model._filter(x).log_norm  # log p(x_t | x_{<t}), [B, T]
    return terms[:, d:].sum(-1)


def exact_diffuse_log_likelihood(model: LinearGaussianSSM, x, diffuse=None) -> Tensor:
    r"""The exact diffuse log-likelihood per sequence, ``[B]``: the initial states named by ``diffuse``
    (indices into the state; default all of them, as in the structural models) have an infinite
    variance, taken as a limit rather than approximated by a large one, log L_d = lim_{κ→∞}
    [log p_κ(x) + (q/2) log κ] (Durbin & Koopman 2012, ch. 5; statsmodels' ``use_exact_diffuse``),
    computed exactly by de Jong's augmented filter
    (:func:`~elbox.distributions.kalman.diffuse_log_likelihood`). The other states keep their
    ``initial_loc`` and ``initial_covariance`` (its rows and columns of the diffuse states are not
    read). Missing observations (NaN) are skipped. Differentiable: gradient fitting can maximize it.

    The three conventions for the start of a series: known (``model.log_evidence``, z_1 ~ N(μ_0,
    P_0): the ELBO's and the evidence report's), approximately diffuse (a large P_0 and the first d
    terms burnt in, :func:`diffuse_log_likelihood`) and exact diffuse (this).

    Args:
        model: The model (its initial covariance of the diffuse states is ignored).
        x: The sequences, ``[B, T, obs_dim]``, NaN where missing.
        diffuse: The diffuse states' indices (default: every state).
    """
    x = model.check_data(x)
    D = model.state_dim
    index = list(range(D)) if diffuse is None else diffuse
    if isinstance(index, int) or not all(isinstance(i, int) and not isinstance(i, bool) for i in index) or \
            not index or len(set(index)) != len(index) or not all(0 <= i < D for i in index):  # fmt: skip
        raise ValueError(f"diffuse must be distinct state indices in [0, {D}), at least one; received {diffuse!r}")
    ref = model.transition_matrix
    S = torch.eye(D, dtype=ref.dtype, device=ref.device)[:, index]  # [D, q]
    return kalman.diffuse_log_likelihood(model._linear_gaussian(), x.values, x.mask, S, model._drive(x),
                                         model._observed(x))  # fmt: skip
