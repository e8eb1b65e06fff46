"""Structural time-series models as linear-Gaussian state-space models with their structure held
fixed: the local level, the local linear trend, seasonals (dummy and trigonometric), AR(p) in
companion form, and their sums (Durbin & Koopman, *Time Series Analysis by State Space Methods*),
approximately diffuse at the start as statsmodels' ``UnobservedComponents`` (an AR component
starts from its stationary distribution)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from elbox._validation import check_number
from elbox.distributions import kalman
from elbox.models.lgssm import LinearGaussianSSM

__all__ = [
    "DIFFUSE_VARIANCE",
    "autoregressive",
    "combine",
    "diffuse_log_likelihood",
    "exact_diffuse_log_likelihood",
    "local_level",
    "local_linear_trend",
    "seasonal",
    "stationary_covariance",
]

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
    return LinearGaussianSSM(1, 1, transition_matrix=one, observation_matrix=one, transition_covariance=q * one,
                             observation_covariance=r * one, initial_loc=torch.zeros(1), initial_covariance=p0 * one,
                             fixed=_STRUCTURE, **_diffuse(1))  # fmt: skip


def local_linear_trend(level_variance: float = 1.0, slope_variance: float = 1.0, observation_variance: float = 1.0,
                       *, diffuse_variance: float = DIFFUSE_VARIANCE) -> LinearGaussianSSM:  # fmt: skip
    r"""The local linear trend: a level that moves by a slope, itself a random walk,

    .. math:: x_t = \mu_t + \varepsilon_t, \quad \mu_{t+1} = \mu_t + \nu_t + \xi_t, \quad
              \nu_{t+1} = \nu_t + \zeta_t,

    state (μ_t, ν_t), A = [[1, 1], [0, 1]] and C = [1, 0] held fixed, Q = diag(σ²_ξ, σ²_ζ) kept
    diagonal by EM and gradient fitting alike (``noise_groups``), the start approximately diffuse.
    """
    variances = [_variance(v, n) for v, n in ((level_variance, "level_variance"), (slope_variance, "slope_variance"))]
    r = _variance(observation_variance, "observation_variance")
    p0 = _variance(diffuse_variance, "diffuse_variance")
    model = LinearGaussianSSM(2, 1, transition_matrix=torch.tensor([[1.0, 1.0], [0.0, 1.0]]),
                              observation_matrix=torch.tensor([[1.0, 0.0]]),
                              transition_covariance=torch.diag(torch.tensor(variances)), noise_groups=[0, 1],
                              observation_covariance=torch.tensor([[r]]), initial_loc=torch.zeros(2),
                              initial_covariance=p0 * torch.eye(2), fixed=_STRUCTURE, **_diffuse(2))  # fmt: skip
    return model


def _diffuse(states: int) -> dict:
    """The constructor's start convention for ``states`` diffuse states (a large variance), the
    others (an AR component's) stationary."""
    return {"initialization": "approximately diffuse" if states else "stationary", "diffuse_states": states}


def seasonal(period: int, seasonal_variance: float = 1.0, observation_variance: float = 1.0, *,
             kind: str = "dummy", harmonics: int | None = None,
             diffuse_variance: float = DIFFUSE_VARIANCE) -> LinearGaussianSSM:  # fmt: skip
    r"""A seasonal of period s observed with noise, as statsmodels' ``UnobservedComponents``
    (``seasonal=s``, or ``freq_seasonal=[{"period": s, "harmonics": h}]``).

    ``kind="dummy"``: the s effects sum to a zero-mean noise over any s consecutive steps,

    .. math:: \gamma_{t+1} = -\sum_{j=1}^{s-1} \gamma_{t+1-j} + \omega_t,\
              \omega_t \sim \mathcal{N}(0, \sigma^2_\omega), \quad x_t = \gamma_t + \varepsilon_t,

    state (γ_t, …, γ_{t-s+2}) of s − 1 states, A the companion matrix of 1 + L + … + L^{s-1}
    (first row −1, ones below the diagonal), the noise entering the first state only:
    ``noise_matrix`` G = e_1, a singular Q = σ²_ω e_1 e_1ᵀ.

    ``kind="trigonometric"``: h harmonics (default ⌊s/2⌋), each a pair (γ_j, γ*_j) rotated by
    λ_j = 2πj/s, [[cos λ_j, sin λ_j], [−sin λ_j, cos λ_j]], every state with its own noise of the
    one variance σ²_ω (Q = σ²_ω I), x_t = Σ_j γ_{j,t} + ε_t; 2h states.

    A, C, μ_0 = 0 and P_0 = ``diffuse_variance`` I are held fixed; EM and gradient fitting
    estimate σ²_ε and σ²_ω (for the trigonometric kind one σ²_ω for all 2h states:
    ``noise_groups``).

    Args:
        period: s ≥ 2, steps per season.
        seasonal_variance: σ²_ω.
        observation_variance: σ²_ε.
        kind: ``"dummy"`` or ``"trigonometric"``.
        harmonics: h, 1 ≤ h ≤ ⌊s/2⌋, for the trigonometric kind.
        diffuse_variance: Every state's initial variance.
    """
    if isinstance(period, bool) or not isinstance(period, int) or period < 2:
        raise ValueError(f"period must be an integer of at least 2 steps per season; received {period!r}")
    if kind not in ("dummy", "trigonometric"):
        raise ValueError(f"kind must be 'dummy' or 'trigonometric'; received {kind!r}")
    q = _variance(seasonal_variance, "seasonal_variance")
    r = _variance(observation_variance, "observation_variance")
    p0 = _variance(diffuse_variance, "diffuse_variance")
    if kind == "dummy":
        if harmonics is not None:
            raise ValueError(f"harmonics is for kind='trigonometric'; received harmonics={harmonics!r} with "
                             "kind='dummy'")  # fmt: skip
        D = period - 1
        A = torch.diag(torch.ones(D - 1), -1)
        A[0] = -1.0
        G = torch.zeros(D, 1)
        G[0, 0] = 1.0
        C = G.T
        options = {"noise_matrix": G, "noise_covariance": torch.tensor([[q]])}
    else:
        h = period // 2 if harmonics is None else harmonics
        if isinstance(h, bool) or not isinstance(h, int) or not 1 <= h <= period // 2:
            raise ValueError(f"harmonics must be an integer from 1 to period // 2 = {period // 2}; received "
                             f"{harmonics!r}")  # fmt: skip
        D = 2 * h
        A = torch.zeros(D, D)
        for j in range(1, h + 1):
            lam = 2 * math.pi * j / period
            c, s_ = math.cos(lam), math.sin(lam)
            A[2 * j - 2 : 2 * j, 2 * j - 2 : 2 * j] = torch.tensor([[c, s_], [-s_, c]])
        C = torch.zeros(1, D)
        C[0, 0::2] = 1.0
        options = {"transition_covariance": q * torch.eye(D), "noise_groups": [0] * D}
    model = LinearGaussianSSM(D, 1, transition_matrix=A, observation_matrix=C, observation_covariance=[[r]],
                              initial_loc=torch.zeros(D), initial_covariance=p0 * torch.eye(D), fixed=_STRUCTURE,
                              **options, **_diffuse(D))  # fmt: skip
    return model


def stationary_covariance(transition_matrix, transition_covariance) -> Tensor:
    """P solving P = A P Aᵀ + Q (the stationary covariance of z_{t+1} = A z_t + w_t), by the
    Kronecker system (I − A ⊗ A) vec P = vec Q; A's spectral radius must be below 1."""
    A = torch.as_tensor(transition_matrix, dtype=torch.get_default_dtype())
    Q = torch.as_tensor(transition_covariance, dtype=A.dtype)
    radius = float(torch.linalg.eigvals(A).abs().max())
    if not radius < 1:
        raise ValueError(f"the AR coefficients must be stationary (the companion matrix's eigenvalues inside the "
                         f"unit circle); its spectral radius is {radius:.6g}")  # fmt: skip
    D = A.shape[0]
    P = torch.linalg.solve(torch.eye(D * D, dtype=A.dtype) - torch.kron(A, A), Q.reshape(-1)).reshape(D, D)
    return 0.5 * (P + P.T)


def autoregressive(coefficients, variance: float = 1.0, observation_variance: float = 1.0) -> LinearGaussianSSM:
    r"""AR(p) observed with noise, in companion form: statsmodels' ``SARIMAX(order=(p, 0, 0),
    measurement_error=True)`` and ``UnobservedComponents(autoregressive=p, irregular=True)``,

    .. math:: y_t = \phi_1 y_{t-1} + \dots + \phi_p y_{t-p} + \eta_t,\ \eta_t \sim \mathcal{N}(0, \sigma^2_\eta),
              \quad x_t = y_t + \varepsilon_t,

    state (y_t, …, y_{t-p+1}), A the companion matrix (φ its first row, ones below the
    diagonal), the noise entering the first state only (``noise_matrix`` G = e_1), C = e_1ᵀ,
    started from the stationary distribution N(0, P_∞), P_∞ = A P_∞ Aᵀ + σ²_η e_1 e_1ᵀ.

    The AR coefficients are learnable: with G = e_1 only A's first row can move (EM's M-step
    regresses y_{t+1} on the smoothed lags, gradient fitting has the other rows' gradient
    projected out), so the companion structure stays. C, μ_0 and P_0 are held fixed, P_0 at
    the stationary covariance of the given coefficients: after fitting it is the stationary
    start of the first coefficients, not of the fitted ones (statsmodels recomputes it), a
    difference in the first steps' terms only.

    The measurement noise must be positive (a positive definite R): the pure AR(p) is its limit.

    Args:
        coefficients: φ_1, …, φ_p, stationary.
        variance: σ²_η.
        observation_variance: σ²_ε.
    """
    phi = torch.as_tensor(coefficients, dtype=torch.get_default_dtype()).reshape(-1)
    if phi.numel() == 0 or not bool(phi.isfinite().all()):
        raise ValueError(f"coefficients must be p ≥ 1 finite AR coefficients; received {coefficients!r}")
    q, r = _variance(variance, "variance"), _variance(observation_variance, "observation_variance")
    D = phi.numel()
    A = torch.diag(torch.ones(D - 1), -1)
    A[0] = phi
    G = torch.zeros(D, 1)
    G[0, 0] = 1.0
    P0 = stationary_covariance(A, q * G @ G.T)
    model = LinearGaussianSSM(D, 1, transition_matrix=A, observation_matrix=G.T, noise_matrix=G,
                              noise_covariance=[[q]], observation_covariance=[[r]], initial_loc=torch.zeros(D),
                              initial_covariance=P0, fixed=("observation_matrix", "initial_loc", "initial_covariance"),
                              **_diffuse(0))  # fmt: skip
    return model


def combine(*components: LinearGaussianSSM, observation_variance: float = 1.0) -> LinearGaussianSSM:
    r"""The sum of univariate components observed with one noise, x_t = Σ_i C_i z^{(i)}_t + ε_t,
    ε_t ~ N(0, σ²_ε) (the components' own observation noises are dropped): the state stacks the
    components', A, G, Q_η and P_0 block-diagonal, C side by side; e.g. the basic structural
    model ``combine(local_linear_trend(...), seasonal(4, ...), observation_variance=...)``, as
    statsmodels' ``UnobservedComponents("local linear trend", seasonal=4)``.

    A, C, μ_0 and P_0 are held fixed (the AR coefficients of a component too: EM could free A
    only as a whole noise-range part, which would free the level and seasonal rows as well). EM
    and gradient fitting estimate σ²_ε and the components' noise variances, each component's
    own (``noise_groups``, as statsmodels' ``UnobservedComponents``), where every component has
    one noise or its own ``noise_groups``; else a full Q_η, cross-covariances included.

    Args:
        components: Models of this module (or any with ``obs_dim`` 1 and no inputs).
        observation_variance: σ²_ε.
    """
    if not components:
        raise ValueError("combine needs at least one component, e.g. combine(local_level(), seasonal(4))")
    for i, m in enumerate(components):
        if not isinstance(m, LinearGaussianSSM) or m.obs_dim != 1 or m.input_dim:
            raise ValueError(f"components[{i}] must be a LinearGaussianSSM with obs_dim 1 and no inputs; received "
                             f"{m!r}")  # fmt: skip
    r = _variance(observation_variance, "observation_variance")
    groups, offset = [], 0
    for m in components:
        if m.noise_groups is None and m.noise_dim > 1:
            groups = None
            break
        own = m.noise_groups.tolist() if m.noise_groups is not None else [0]
        groups += [g + offset for g in own]
        offset += max(own) + 1
    with torch.no_grad():
        G = torch.block_diag(*[m.noise_matrix if m.noise_matrix is not None else torch.eye(m.state_dim)
                               for m in components])  # fmt: skip
        model = LinearGaussianSSM(
            G.shape[0], 1,
            transition_matrix=torch.block_diag(*[m.transition_matrix for m in components]),
            observation_matrix=torch.cat([m.observation_matrix for m in components], 1),
            noise_matrix=G if G.shape[1] < G.shape[0] else None,
            noise_covariance=torch.block_diag(*[m.noise_covariance for m in components]), noise_groups=groups,
            observation_covariance=[[r]], initial_loc=torch.cat([m.initial_loc for m in components]),
            initial_covariance=torch.block_diag(*[m.initial_covariance for m in components]), fixed=_STRUCTURE,
            **_diffuse(sum(m.diffuse_states for m in components)),
        )  # fmt: skip
    return model


@torch.no_grad()
def diffuse_log_likelihood(model: LinearGaussianSSM, x, burn: int | None = None) -> Tensor:
    """log p(x_{d+1:T} | x_{1:d}) per sequence, ``[B]``: the approximately diffuse convention of
    statsmodels (``loglikelihood_burn``) and of Durbin & Koopman's tables, where the first d terms
    (d = the number of diffuse states by default: ``model.diffuse_states`` as this module's
    constructors set it, an AR component's stationary states not counted, as statsmodels does;
    else ``state_dim``), which depend on the arbitrary large initial variance, are left out.
    ``model.log_evidence`` is the whole log p(x)."""
    x = model.check_data(x)
    d = model.diffuse_states if burn is None else burn
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
