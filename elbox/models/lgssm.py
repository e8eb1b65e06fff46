"""Linear-Gaussian state-space models: the Kalman filter, the RTS smoother and their EM."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import Independent, MultivariateNormal, Normal

from elbox._validation import as_data, check_number, check_positive_int
from elbox.data.sequences import Sequences, as_sequences
from elbox.distributions._gaussian import covariance_to_raw, raw_to_tril, safe_cholesky, tril_to_raw
from elbox.distributions.gauss_markov import GaussMarkovChain
from elbox.distributions.kalman import PD_HINT as _PD_HINT
from elbox.distributions.kalman import (
    KalmanFilter,
    LinearGaussian,
    kalman_filter,
    kalman_log_evidence,
    masked_kalman_filter,
    masked_observation,
    masked_rts_smoother,
    rts_smoother,
)
from elbox.models.base import LatentModel
from elbox.models.forecast import Forecast, check_level, check_steps, normal_interval

#: The starts of a series an LGSSM can assume (``initialization``).
_INITIALIZATIONS = ("known", "approximately diffuse", "stationary")

__all__ = ["LinearGaussianSSM"]

class LinearGaussianSSM(LatentModel):
    r"""A linear-Gaussian state-space model (a Kalman filter model), with optional inputs u_t.

    .. math:: z_1 \sim \mathcal{N}(\mu_0, P_0), \quad
              z_t = A z_{t-1} + B u_t + G \eta_t,\ \eta_t \sim \mathcal{N}(0, Q_\eta), \quad
              x_t = C z_t + v_t,\ v_t \sim \mathcal{N}(0, R),

    so Q = G Q_η Gᵀ; G = I (the default) makes it the usual w_t ~ N(0, Q).

    A data point is a whole sequence x ``[B, T, obs_dim]`` (or a :class:`~elbox.data.Sequences`
    for ragged lengths and inputs ``[B, T, input_dim]``; u_1 is unused); z is the trajectory
    ``[B, T, state_dim]``. Steps past a sequence's end carry no data; their states are
    N(0, I), independent of θ, under the prior and the posterior alike.

    ``log_evidence`` is the Kalman filter's prediction-error decomposition, Σ_t log N(x_t;
    C m_{t|t-1}, S_t), with Cholesky-factored innovation covariances and the Joseph-form
    update. The covariance recursion does not depend on the data, so it is run once for the
    whole batch, and stops once it has reached its steady state (to rounding); the means, a
    linear recurrence, are solved by a parallel scan over time rather than step by step.
    ``posterior`` is a reverse :class:`~elbox.distributions.GaussMarkovChain` built from the
    RTS smoother (sampled by forward-filtering backward-sampling); :meth:`m_step` is the EM
    of Shumway & Stoffer (1982) for A, B, C, Q, R, μ_0 and P_0.

    A NaN in x is a missing observation (a whole step or some of its coordinates): the update
    uses the observed rows of C and R alone, with each sequence's own covariance recursion
    (:func:`~elbox.distributions.kalman.masked_kalman_filter`); ``log_evidence`` is then
    log p(x_obs), the posterior covers every step, :meth:`impute` draws the missing values, and
    the M-step takes the missing coordinates' expected statistics (Shumway & Stoffer 2000).

    Args:
        state_dim: The dimension of z.
        obs_dim: The dimension of x.
        input_dim: The dimension of u (0: no inputs).
        transition_matrix: A (default the identity); control_matrix: B (default zeros);
        observation_matrix: C (default the identity's first rows); transition_covariance: Q,
        observation_covariance: R, initial_covariance: P_0 (default identities);
        initial_loc: μ_0 (default zeros).
        noise_matrix: G ``[state_dim, noise_dim]``, a fixed loading of the state noise, full
            column rank (default None: G = I). With fewer noise columns than states Q is
            singular, as in structural models where the noise enters only some states; then
            the free part of A (and B) is G G⁺ A, the rows the noise enters for a selection G:
            the rest is structure, held by EM (any other change would give the smoothed
            trajectories zero density) and by gradient fitting (its gradient is projected
            on G G⁺; exactly kept by a per-coordinate optimizer such as Adam where G selects
            states, as every structural model's G does). ``log_joint`` has no density then
            (it says so); the posterior's moments and samples are exact, its ``log_prob`` and
            ``entropy`` are not defined (a degenerate Gaussian) and must not be read.
        noise_covariance: Q_η ``[noise_dim, noise_dim]`` (default the identity); give it or
            ``transition_covariance`` (which must then lie in G's range), not both.
        noise_groups: A group label per noise coordinate (``noise_dim`` integers), making Q_η
            diagonal with one variance per group, diag(σ²_{g_1}, …), as statsmodels' structural
            models have it (default None: a full Q_η). EM's M-step then sets σ²_g to the mean of
            E[η_i²] over the group (the constrained maximizer), gradient fitting moves one
            log-scale per group (the mean of its coordinates' raw diagonals).
        reg_covar: Added to the diagonals of Q_η, R and P_0 estimated by the M-step.
        steady_state: Stop the covariance recursion once it has settled (to 100 ε in the
            covariance's own metric) and reuse its last step; False runs every step.
        fixed: Parameters held at their given values (:meth:`fix`): any of ``"transition_matrix"``,
            ``"observation_matrix"``, ``"control_matrix"``, ``"transition_covariance"``,
            ``"observation_covariance"``, ``"initial_loc"``, ``"initial_covariance"``. EM's M-step
            maximizes over the others given them (a conditional M-step, so EM still never
            decreases the likelihood), and gradient fitting leaves them alone.
        initialization: The start of the series that ``log_evidence`` assumes, named in the
            evidence report: ``"known"`` (z_1 ~ N(μ_0, P_0) as given), ``"approximately diffuse"``
            (a large P_0 standing in for an infinite one, as the structural constructors set it;
            :meth:`initialization_conventions`) or ``"stationary"`` (P_0 the stationary covariance).
        diffuse_states: How many of the states start diffuse (default: all), the terms
            :func:`~elbox.models.structural.diffuse_log_likelihood` burns in by default.

    References:
        An Approach to Time Series Smoothing and Forecasting Using the EM Algorithm
        (Shumway & Stoffer, 1982), https://doi.org/10.1111/j.1467-9892.1982.tb00349.x

    Example:
        >>> model = LinearGaussianSSM(2, 1, transition_matrix=0.9 * torch.eye(2))
        >>> x, z = model.sample(8, num_steps=100)
        >>> model.log_evidence(x).shape
        torch.Size([8])
    """

    def __init__(
        self,
        state_dim: int,
        obs_dim: int,
        input_dim: int = 0,
        *,
        transition_matrix=None,
        observation_matrix=None,
        control_matrix=None,
        transition_covariance=None,
        observation_covariance=None,
        initial_loc=None,
        initial_covariance=None,
        reg_covar: float = 0.0,
        steady_state: bool = True,
        fixed=(),
        noise_matrix=None,
        noise_covariance=None,
        noise_groups=None,
        initialization: str = "known",
        diffuse_states: int | None = None,
    ):
        super().__init__()
        Dz = check_positive_int(state_dim, "state_dim")
        Dx = check_positive_int(obs_dim, "obs_dim")
        U = check_positive_int(input_dim, "input_dim", minimum=0)
        reg_covar = check_number(reg_covar, "reg_covar", minimum=0.0)
        self.reg_covar = float(reg_covar)
        if not isinstance(steady_state, bool):
            raise TypeError(f"steady_state must be True or False; received {steady_state!r}")
        self.steady_state = steady_state
        if initialization not in _INITIALIZATIONS:
            raise ValueError(f"initialization must be one of {_INITIALIZATIONS}; received {initialization!r}")
        self.initialization = initialization
        d = Dz if diffuse_states is None else check_positive_int(diffuse_states, "diffuse_states", minimum=0)
        if d > Dz:
            raise ValueError(f"diffuse_states must be at most state_dim={Dz}; received {diffuse_states}")
        self.diffuse_states = d
        self.data_shape = (None, Dx)
        dtype = torch.get_default_dtype()
        self.transition_matrix = nn.Parameter(
            self._matrix(transition_matrix, "transition_matrix", (Dz, Dz), torch.eye(Dz))
        )
        self.observation_matrix = nn.Parameter(
            self._matrix(observation_matrix, "observation_matrix", (Dx, Dz), torch.eye(Dx, Dz))
        )
        self.control_matrix = nn.Parameter(self._matrix(control_matrix, "control_matrix", (Dz, U), torch.zeros(Dz, U)))
        self.initial_loc = nn.Parameter(self._matrix(initial_loc, "initial_loc", (Dz,), torch.zeros(Dz)))
        if noise_matrix is None:
            self.noise_matrix = None
            K = Dz
        else:
            G = as_data(noise_matrix, "noise_matrix", ndim=2, dtype=dtype)
            if G.shape[0] != Dz or not 1 <= G.shape[1] <= Dz or int(torch.linalg.matrix_rank(G)) != G.shape[1]:
                raise ValueError(f"noise_matrix must be [state_dim={Dz}, noise_dim] of full column rank, noise_dim ≤ "
                                 f"{Dz}; received shape {list(G.shape)} of rank {int(torch.linalg.matrix_rank(G))}")
            self.register_buffer("noise_matrix", G)
            K = G.shape[1]
        self._q_raw = nn.Parameter(torch.zeros(K, K, dtype=dtype))
        if noise_groups is None:
            self.noise_groups = None
        else:
            groups = torch.as_tensor(noise_groups)
            if groups.shape != (K,) or groups.is_floating_point() or groups.is_complex() or bool((groups < 0).any()):
                raise ValueError(f"noise_groups must be {K} non-negative integer labels, one per noise coordinate; "
                                 f"received {noise_groups!r}")  # fmt: skip
            self.register_buffer("noise_groups", groups.long())
        self._r_raw = nn.Parameter(torch.zeros(Dx, Dx, dtype=dtype))
        self._p0_raw = nn.Parameter(torch.zeros(Dz, Dz, dtype=dtype))
        if transition_covariance is not None and noise_covariance is not None:
            raise ValueError("give transition_covariance (Q) or noise_covariance (Q_η), not both")
        for name, value in (
            ("noise_covariance", noise_covariance),
            ("transition_covariance", transition_covariance),
            ("observation_covariance", observation_covariance),
            ("initial_covariance", initial_covariance),
        ):
            if value is not None:
                setattr(self, name, value)
        if isinstance(fixed, str) or not all(isinstance(f, str) for f in fixed):
            raise TypeError(f"fixed must be a list of parameter names, e.g. ['transition_matrix']; received {fixed!r}")
        self.fix(*fixed)

    _FIXABLE = {
        "transition_matrix": ("transition_matrix",), "observation_matrix": ("observation_matrix",),
        "control_matrix": ("control_matrix",), "transition_covariance": ("_q_raw",),
        "observation_covariance": ("_r_raw",), "initial_loc": ("initial_loc",), "initial_covariance": ("_p0_raw",),
    }  # fmt: skip

    @staticmethod
    def _matrix(value, name: str, shape: tuple[int, ...], default: Tensor) -> Tensor:
        dtype = torch.get_default_dtype()
        if value is None:
            return default.to(dtype)
        value = as_data(value, name, dtype=dtype)
        if tuple(value.shape) != shape:
            raise ValueError(f"{name} must have shape {list(shape)}; received {list(value.shape)}")
        return value.clone()  # a parameter of its own, never the caller's tensor (nor another parameter's)

    # Dimensions and covariances.

    @property
    def state_dim(self) -> int:
        return self.transition_matrix.shape[0]

    @property
    def obs_dim(self) -> int:
        return self.observation_matrix.shape[0]

    @property
    def input_dim(self) -> int:
        return self.control_matrix.shape[1]

    def _set_covariance(self, raw: nn.Parameter, value, name: str) -> None:
        value = self._matrix(value, name, tuple(raw.shape), torch.empty(0))
        with torch.no_grad():
            raw.copy_(covariance_to_raw(value.to(raw.dtype), name, "A covariance must be symmetric positive definite."))

    @property
    def noise_dim(self) -> int:
        """The number of noise columns (``state_dim`` unless ``noise_matrix`` says otherwise)."""
        return self._q_raw.shape[0]

    def _group_mean(self, v: Tensor) -> Tensor:
        """Each coordinate's value replaced by its noise group's mean, ``[noise_dim]``."""
        one_hot = torch.nn.functional.one_hot(self.noise_groups).to(v.dtype)  # [k, groups]
        return one_hot @ ((v @ one_hot) / one_hot.sum(0).clamp_min(1))

    def _noise_tril(self) -> Tensor:
        """chol(Q_η), ``[noise_dim, noise_dim]`` (diagonal, one scale per group, with ``noise_groups``)."""
        if self.noise_groups is None:
            return raw_to_tril(self._q_raw)
        return torch.diag_embed(self._group_mean(self._q_raw.diagonal()).exp())

    @property
    def noise_covariance(self) -> Tensor:
        """Q_η, ``[noise_dim, noise_dim]``: the state noise's covariance before its loading G."""
        L = self._noise_tril()
        return L @ L.mT

    @noise_covariance.setter
    def noise_covariance(self, value) -> None:
        self._set_noise(value, "noise_covariance")

    def _set_noise(self, value, name: str) -> None:
        if self.noise_groups is not None:
            value = self._matrix(value, name, tuple(self._q_raw.shape), torch.empty(0))
            v = value.diagonal()
            if not (torch.equal(value, torch.diag(v)) and torch.allclose(self._group_mean(v), v, rtol=1e-12)):
                raise ValueError(f"{name} must be diagonal with one variance per noise group "
                                 f"{self.noise_groups.tolist()}; received {value.tolist()}")  # fmt: skip
        self._set_covariance(self._q_raw, value, name)

    @property
    def transition_covariance(self) -> Tensor:
        """Q = G Q_η Gᵀ, ``[state_dim, state_dim]`` (singular where G has fewer columns than states)."""
        Q = self.noise_covariance
        G = self.noise_matrix
        return Q if G is None else G @ Q @ G.T

    @transition_covariance.setter
    def transition_covariance(self, value) -> None:
        G = self.noise_matrix
        if G is None:
            self._set_noise(value, "transition_covariance")
            return
        D = self.state_dim
        Q = self._matrix(value, "transition_covariance", (D, D), torch.empty(0)).to(G.dtype)
        G_pinv = torch.linalg.pinv(G)
        Q_eta = G_pinv @ Q @ G_pinv.T
        if not torch.allclose(G @ Q_eta @ G.T, Q, rtol=1e-6, atol=1e-12 * float(Q.abs().max().clamp_min(1.0))):
            raise ValueError("transition_covariance must be G Q_η Gᵀ for the noise_matrix G (it has entries outside "
                             "G's range); pass noise_covariance, Q_η, instead")  # fmt: skip
        self._set_noise(torch.where(Q_eta.abs() > 1e-12 * Q_eta.abs().max(), _sym(Q_eta), 0.0), "transition_covariance")

    def _degenerate(self) -> bool:
        """Whether Q is singular by construction (fewer noise columns than states)."""
        return self.noise_dim < self.state_dim

    def _noise_projection(self) -> Tensor | None:
        """G G⁺, the orthogonal projection on the noise's range, ``[D, D]``; None where G = I."""
        if not self._degenerate():
            return None
        G = self.noise_matrix
        return G @ torch.linalg.pinv(G)

    def _free(self, M: Tensor) -> Tensor:
        """``M`` (A or B), whose gradient flows only through its free part G G⁺ M (its value unchanged)."""
        P = self._noise_projection()
        if P is None or not M.requires_grad:
            return M
        fixed = M.detach()
        return fixed + P @ (M - fixed)

    def _noise_scale(self) -> Tensor:
        """A square factor L ``[D, D]`` with L Lᵀ = Q: chol(Q_η) loaded by G, padded with zero columns."""
        L = self._noise_tril()
        if self.noise_matrix is None:
            return L
        GL = self.noise_matrix @ L  # [D, k]
        return torch.cat([GL, GL.new_zeros(self.state_dim, self.state_dim - self.noise_dim)], -1)

    @property
    def observation_covariance(self) -> Tensor:
        """R, ``[obs_dim, obs_dim]``."""
        L = raw_to_tril(self._r_raw)
        return L @ L.mT

    @observation_covariance.setter
    def observation_covariance(self, value) -> None:
        self._set_covariance(self._r_raw, value, "observation_covariance")

    @property
    def initial_covariance(self) -> Tensor:
        """P_0, ``[state_dim, state_dim]``."""
        L = raw_to_tril(self._p0_raw)
        return L @ L.mT

    @initial_covariance.setter
    def initial_covariance(self, value) -> None:
        self._set_covariance(self._p0_raw, value, "initial_covariance")

    # Data.

    def check_data(self, x, *, name: str = "x") -> Sequences:
        """``x`` as a checked :class:`~elbox.data.Sequences` of ``[B, T, obs_dim]`` observations; a NaN
        is a missing observation (a whole step or some coordinates of it)."""
        return as_sequences(x, event_shape=(self.obs_dim,), num_inputs=self.input_dim, name=name, missing=True,
                            **self._sequence_options())  # fmt: skip

    @staticmethod
    def _observed(x: Sequences) -> Tensor | None:
        """Where a coordinate is observed, ``[B, T, obs_dim]`` (False past each end), or None
        when nothing is missing."""
        return None if x.missing is None else ~x.missing & x.mask.unsqueeze(-1)

    def _drive(self, x: Sequences) -> Tensor | None:
        """B u_t for t ≥ 2 (the input driving the step into z_t), ``[B, T-1, state_dim]``, or None."""
        if x.inputs is None:
            return None
        return x.inputs[:, 1:] @ self._free(self.control_matrix).T

    # The model.

    def prior(self, num_steps: int = 1) -> GaussMarkovChain:
        """The Gauss–Markov prior over trajectories of ``num_steps`` states (no inputs)."""
        T = check_positive_int(num_steps, "num_steps")
        D = self.state_dim
        L_q = self._noise_scale()
        return GaussMarkovChain(
            self.initial_loc,
            raw_to_tril(self._p0_raw),
            self.transition_matrix.expand(T - 1, D, D),
            self.initial_loc.new_zeros(T - 1, D),
            L_q.expand(T - 1, D, D),
        )

    def prior_for(self, x) -> GaussMarkovChain:
        """The prior over the batch's trajectories: driven by its inputs, N(0, I) past each end."""
        x = self.check_data(x)
        B, T = x.mask.shape
        drive = self._drive(x)
        if not x.ragged and drive is None:
            return self.prior(T)
        D = self.state_dim
        keep = x.mask[:, 1:, None, None] if x.ragged else x.mask.new_ones(1, T - 1, 1, 1)  # [B or 1, T-1, 1, 1]
        eye = torch.eye(D, dtype=self.initial_loc.dtype, device=self.initial_loc.device)
        F = torch.where(keep, self.transition_matrix, 0.0)
        L = torch.where(keep, self._noise_scale(), eye)
        offset = self.initial_loc.new_zeros(B, T - 1, D) if drive is None else drive * keep.squeeze(-1)
        return GaussMarkovChain(self.initial_loc, raw_to_tril(self._p0_raw), F, offset, L)

    def likelihood(self, z: Tensor) -> Independent:
        """x_t | z_t ~ N(C z_t, R) at every step (of full-length sequences), event ``[T, obs_dim]``."""
        loc = z @ self.observation_matrix.T
        return Independent(MultivariateNormal(loc, scale_tril=raw_to_tril(self._r_raw)), 1)

    def log_likelihood(self, x, z: Tensor) -> Tensor:
        """Σ_t log N(x_t; C z_t, R) over observed steps, for trajectories ``[*S, B, T, D]``; with missing
        coordinates, each step's observed ones, log N(x_{t,o}; C_o z_t, R_oo)."""
        x = self.check_data(x)
        if x.missing is not None:
            L_t, C_t, seen = self._observed_noise(x)
            resid = x.values - (C_t @ z.unsqueeze(-1)).squeeze(-1)  # zero where missing, [*S, B, T, obs]
            w = torch.linalg.solve_triangular(L_t, resid.unsqueeze(-1), upper=False).squeeze(-1)
            per_step = -0.5 * w.square().sum(-1) - L_t.diagonal(dim1=-2, dim2=-1).log().sum(-1) - 0.5 * math.log(
                2 * math.pi) * seen  # fmt: skip
            return per_step.sum(-1)
        L_r = raw_to_tril(self._r_raw)
        resid = x.values - z @ self.observation_matrix.T  # [*S, B, T, obs]
        w = torch.linalg.solve_triangular(L_r, resid.unsqueeze(-1), upper=False).squeeze(-1)
        per_step = -0.5 * w.square().sum(-1) - L_r.diagonal().log().sum() - 0.5 * self.obs_dim * math.log(2 * math.pi)
        return (per_step * x.mask).sum(-1)

    def log_joint(self, x, z: Tensor) -> Tensor:
        if self._degenerate():
            raise ValueError(f"log_joint: with noise_matrix of {self.noise_dim} columns for {self.state_dim} states Q "
                             "is singular and the trajectories have no density; use log_evidence, EM, or gradient "
                             "fitting of the evidence (objective 'max_likelihood')")  # fmt: skip
        return self.prior_for(x).log_prob(z) + self.log_likelihood(x, z)

    def expected_log_likelihood(self, x, q) -> Tensor | None:
        """Σ_t [log N(x_t; C m_t, R) − ½ tr(R⁻¹ C P_t Cᵀ)] for a Gaussian q over trajectories."""
        if isinstance(q, GaussMarkovChain):
            means, covs, _ = q.moments()
        elif isinstance(q, Independent) and isinstance(q.base_dist, Normal) and q.reinterpreted_batch_ndims == 2:
            means, covs = q.base_dist.loc, torch.diag_embed(q.base_dist.scale.square())
        else:
            return None
        x = self.check_data(x)
        if x.missing is not None:  # the observed coordinates' own: R_oo, C_o at each step
            L_t, C_t, seen = self._observed_noise(x)
            W = torch.linalg.solve_triangular(L_t, C_t, upper=False)  # L_t⁻¹ C_t, [B, T, obs, D]
            w = torch.linalg.solve_triangular(L_t, (x.values - (C_t @ means.unsqueeze(-1)).squeeze(-1)).unsqueeze(-1),
                                              upper=False).squeeze(-1)  # fmt: skip
            trace = ((W @ covs) * W).sum((-2, -1))
            per_step = -0.5 * (w.square().sum(-1) + trace) - L_t.diagonal(dim1=-2, dim2=-1).log().sum(-1) \
                - 0.5 * math.log(2 * math.pi) * seen  # fmt: skip
            return per_step.sum(-1)
        C, L_r = self.observation_matrix, raw_to_tril(self._r_raw)
        L_inv = torch.linalg.solve_triangular(L_r, torch.eye(self.obs_dim, dtype=C.dtype, device=C.device), upper=False)
        W = L_inv @ C  # [obs, state]: R⁻¹ = L⁻ᵀL⁻¹
        w = (x.values - means @ C.T) @ L_inv.T  # [B, T, obs]
        trace = ((W @ covs) * W).sum((-2, -1))  # tr(R⁻¹ C P_t Cᵀ), [B, T]
        per_step = (
            -0.5 * (w.square().sum(-1) + trace)
            - L_r.diagonal().log().sum()
            - 0.5 * self.obs_dim * math.log(2 * math.pi)
        )
        return (per_step * x.mask).sum(-1)

    @property
    def em_regularizer(self) -> str | None:
        return f"reg_covar={self.reg_covar:g}" if self.reg_covar > 0 else None

    # The Kalman filter and smoother (elbox.distributions.kalman).

    def _linear_gaussian(self) -> LinearGaussian:
        return LinearGaussian(
            self._free(self.transition_matrix), self.observation_matrix, self.transition_covariance,
            self.observation_covariance, self.initial_loc, self.initial_covariance, self.steady_state,
        )  # fmt: skip

    def _filter(self, x: Sequences) -> KalmanFilter:
        observed = self._observed(x)
        if observed is not None:  # gaps: each sequence's own covariances (elbox.distributions.kalman)
            return masked_kalman_filter(self._linear_gaussian(), x.values, observed, self._drive(x))
        return kalman_filter(self._linear_gaussian(), x.values, x.mask, self._drive(x))

    def log_evidence(self, x) -> Tensor:
        """log p(x) by the Kalman filter, ``[B]`` (its innovations only: no means are kept); with
        missing observations, log p(x_obs), the observed values' own density."""
        x = self.check_data(x)
        if x.missing is not None:
            return self._filter(x).log_norm.sum(-1)
        return kalman_log_evidence(self._linear_gaussian(), x.values, x.mask, self._drive(x))

    def e_step(self, x) -> tuple[GaussMarkovChain, Tensor]:
        """The Kalman filter and the RTS smoother: the posterior over trajectories and log p(x)."""
        x = self.check_data(x)
        params = self._linear_gaussian()
        filtered = self._filter(x)
        if x.missing is not None:
            smoothed = masked_rts_smoother(params, filtered, x.mask)
            P_last = filtered.covariances["filt"][:, -1]  # each sequence's own, [B, D, D]
        else:
            smoothed = rts_smoother(params, filtered, x.mask, x.ragged)
            P_last = filtered.covariances["filt"][-1]
        T, D = x.mask.shape[1], self.state_dim
        eye = torch.eye(D, dtype=self.transition_matrix.dtype, device=self.transition_matrix.device)
        padded = x.ragged or x.missing is not None
        valid = x.mask[:, :, None] if padded else x.mask.new_ones(1, T, 1)
        last = valid[:, -1]
        # past each end: zero means, identity covariances (nothing to replace in a batch of equal lengths)
        where = torch.where if padded else (lambda condition, value, other: value)
        moments = (
            where(valid, smoothed.means, 0.0),
            where(valid.unsqueeze(-1), smoothed.covariances, eye),
            where(smoothed.keep, smoothed.cross, 0.0),
        )
        # With a singular Q, z_t given z_{t+1} is partly determined: its covariance is only semidefinite
        factor = _psd_factor if self._degenerate() else safe_cholesky
        posterior = GaussMarkovChain(
            where(last, filtered.means[:, -1], 0.0),
            factor(where(last.unsqueeze(-1), P_last, eye), "a filtered state covariance", _PD_HINT),
            smoothed.gains,
            where(valid[:, :-1], smoothed.offset, 0.0),
            factor(where(valid[:, :-1, :, None], smoothed.cond, eye), "a smoothing covariance", _PD_HINT),
            reverse=True,
            moments=moments,
        )
        return posterior, filtered.log_norm.sum(-1)

    @torch.no_grad()
    def initialization_conventions(self, x) -> tuple[str, dict]:
        """The convention of :meth:`log_evidence` in words, and the other conventions' log-likelihoods
        per sequence (``[B]`` each) where they apply: for an approximately diffuse start, the first d
        terms burnt in (``approximately_diffuse_burnt_in``, d = ``diffuse_states``) and the exact diffuse
        limit (``exact_diffuse``; left out where the data do not identify the diffuse state). What
        :func:`~elbox.evidence_report` reports beside log p(x)."""
        if self.initialization == "stationary":
            return "stationary: z_1 ~ N(0, P_∞), the AR states' stationary distribution; log p(x) keeps every term", {}
        if self.initialization != "approximately diffuse":
            return "known: z_1 ~ N(μ_0, P_0) as given; log p(x) keeps every term", {}
        from elbox.models.structural import diffuse_log_likelihood, exact_diffuse_log_likelihood

        d = self.diffuse_states  # a sum with an AR component: its states are not diffuse
        name = (f"approximately diffuse: z_1 ~ N(μ_0, P_0) with a large P_0, log p(x) keeps every term; beside it "
                f"the first {d} terms burnt in" + (", and the exact diffuse limit" if d == self.state_dim else ""))
        others = {"approximately_diffuse_burnt_in": diffuse_log_likelihood(self, x, burn=d)}
        if d == self.state_dim:  # which states of a mixed start are diffuse is not recorded: left out there
            try:
                others["exact_diffuse"] = exact_diffuse_log_likelihood(self, x)
            except ValueError:  # the data do not identify the diffuse state: no exact diffuse likelihood
                pass
        return name, others

    # Forecasts.

    @torch.no_grad()
    def forecast(self, x, steps: int, *, level: float = 0.9, inputs=None) -> Forecast:
        r"""p(x_{T+1:T+k} | x_{1:T}) for each sequence, from its own last step: the Kalman filter's
        last state, then k predictions, z_{T+j} ~ N(A m + B u, A P Aᵀ + Q) and
        x_{T+j} ~ N(C m, C P Cᵀ + R), with the central ``level`` interval of every coordinate.

        Args:
            x: The sequences (ragged batches forecast each from its own end).
            steps: k, the steps ahead.
            level: The intervals' probability.
            inputs: ``[B, k, input_dim]``, the inputs of the k future steps (models with inputs).

        Returns:
            A :class:`~elbox.models.forecast.Forecast` with the predictive state too.
        """
        k, level = check_steps(steps), check_level(level)
        x = self.check_data(x)
        B = len(x)
        future = None
        if self.input_dim:
            if inputs is None:
                raise ValueError(f"this model has input_dim={self.input_dim}: pass inputs, the future steps' inputs "
                                 f"[{B}, {k}, {self.input_dim}]")  # fmt: skip
            ref = self._reference()
            future = as_data(inputs, "inputs", ndim=3, dtype=ref.dtype, device=ref.device)
            if tuple(future.shape) != (B, k, self.input_dim):
                raise ValueError(f"inputs must have shape [{B}, {k}, {self.input_dim}] (sequences, steps ahead, "
                                 f"inputs); received {list(future.shape)}")  # fmt: skip
            future = future @ self.control_matrix.T  # [B, k, D]
        elif inputs is not None:
            raise ValueError("inputs: this model has no inputs (input_dim=0)")
        filtered = self._filter(x)
        last = x.mask.sum(1) - 1  # [B]
        m = filtered.means[torch.arange(B), last]  # [B, D]
        P = filtered.covariances["filt"]
        P = P[torch.arange(B), last] if x.missing is not None else P[last]  # [B, D, D]
        A, C, Q, R = self.transition_matrix, self.observation_matrix, self.transition_covariance, \
            self.observation_covariance  # fmt: skip
        means, covs = [], []
        for j in range(k):  # k steps of B small products each: the horizon, not the data's length
            m = m @ A.T + (future[:, j] if future is not None else 0.0)
            P = A @ P @ A.T + Q
            means.append(m)
            covs.append(P)
        state_mean, state_cov = torch.stack(means, 1), torch.stack(covs, 1)  # [B, k, D], [B, k, D, D]
        mean = state_mean @ C.T
        cov = C @ state_cov @ C.T + R  # [B, k, obs, obs]
        variance = cov.diagonal(dim1=-2, dim2=-1)
        lower, upper = normal_interval(mean, variance, level)
        return Forecast(mean, variance, lower, upper, level, state_mean=state_mean, state_covariance=state_cov,
                        covariance=cov)  # fmt: skip

    # EM.

    @torch.no_grad()
    def m_step(self, x, posterior) -> None:
        """A, B, C, Q, R, μ_0 and P_0 maximizing E_q[log p(x, z)] for a Gaussian q over
        trajectories (the RTS posterior, or any :class:`~elbox.distributions.GaussMarkovChain`
        or mean-field normal q).

        With a noise matrix G (full column rank), z_{t+1} = A z_t + B u + G η_t puts the posterior's
        residuals r_t = z_{t+1} − A z_t − B u in G's range, where η_t = G⁺ r_t; so
        E_q[log p(z_{t+1} | z_t)] = E_q[log N(G⁺ r_t; 0, Q_η)] + const, maximized by
        Q_η = G⁺ (Σ_t E_q[r_t r_tᵀ] / n) G⁺ᵀ, and only A's part in G's range, G G⁺ A, can move
        (any other change leaves the residuals outside the range: zero density). That part is the
        unconstrained regression's, G G⁺ Â (the free rows' regression needs no other row), so
        A = (I − G G⁺) A_old + G G⁺ Â; B alike."""
        x = self.check_data(x)
        B, T = x.mask.shape
        if isinstance(posterior, GaussMarkovChain):
            means, covs, cross = posterior.moments()
        elif isinstance(posterior, Independent) and isinstance(posterior.base_dist, Normal):
            means, covs = posterior.base_dist.loc, torch.diag_embed(posterior.base_dist.scale.square())
            cross = None
        else:
            raise ValueError(f"posterior must be a Gaussian over trajectories; received {type(posterior).__name__}")
        D, Dx = self.state_dim, self.obs_dim
        if means.shape != (B, T, D):
            raise ValueError(f"posterior must have means [{B}, {T}, {D}]; received {list(means.shape)}")
        w = x.mask.to(means.dtype)  # [B, T]
        # Sums over the batch and time of E[z zᵀ] = P + m mᵀ (and the cross terms) are taken apart:
        # the covariances are often one [1, T, D, D] for the whole batch, never expanded to [B, T, D, D].
        # The means' sums are one batched product over time with the batch last (_moments), the
        # layout the compiled kernels write; the data join them in it, and so does the residual.
        full = not (x.ragged or x.missing is not None)
        moments = lambda weight, a, b: _moments(None if full else weight, a, b)  # noqa: E731
        means = _batch_last(means)
        eye_z, eye_x = torch.eye(D, dtype=means.dtype), torch.eye(Dx, dtype=means.dtype)
        # Observation model: C = Σ x E[z]ᵀ (Σ E[z zᵀ])⁻¹, then R from the new C.
        xv = _batch_last(x.values)
        P_sum = _weighted_sum(w, covs)  # Σ w_t P_t, [D, D]
        S_zz = P_sum + moments(w, means, means)
        fixed = self.fixed
        if x.missing is None:
            S_xz, S_xx = moments(w, xv, means), None
        else:  # the missing coordinates' expected statistics (Shumway & Stoffer 2000)
            S_xz, S_xx = self._imputed_statistics(x, means, covs)
        C = self.observation_matrix.detach() if "observation_matrix" in fixed else torch.linalg.solve(S_zz, S_xz.T).T
        if S_xx is None:
            resid = xv - _linear(means, C)
            R = (moments(w, resid, resid) + C @ P_sum @ C.T) / w.sum()
        else:  # E[(x − C z)(x − C z)ᵀ] from the expected moments
            CS = C @ S_xz.T
            R = (S_xx - CS - CS.T + C @ S_zz @ C.T) / w.sum()
        # Dynamics: regress z_{t+1} on [z_t, u_{t+1}] over the steps between observed states.
        if T > 1:
            pair = w[:, 1:]  # [B, T-1]
            X_sum = _weighted_sum(pair, cross) if cross is not None else means.new_zeros(D, D)  # Σ Cov(z_t, z_{t+1})
            P_prev = _weighted_sum(pair, covs[:, :-1])  # Σ P_t over the pairs
            S_prev = P_prev + moments(pair, means[:, :-1], means[:, :-1])
            S_np = X_sum.T + moments(pair, means[:, 1:], means[:, :-1])
            A_fixed, B_fixed = "transition_matrix" in fixed, "control_matrix" in fixed
            if self.input_dim:
                u = _batch_last(x.inputs)[:, 1:]
                S_zu = moments(pair, means[:, :-1], u)
                S_uu = moments(pair, u, u)
                S_nu = moments(pair, means[:, 1:], u)
                if A_fixed and B_fixed:
                    A, Bm = self.transition_matrix.detach(), self.control_matrix.detach()
                elif A_fixed:  # B S_uu = S_nu − A S_zu
                    A = self.transition_matrix.detach()
                    Bm = torch.linalg.solve(S_uu, (S_nu - A @ S_zu).T).T
                elif B_fixed:  # A S_prev = S_np − B S_zuᵀ
                    Bm = self.control_matrix.detach()
                    A = torch.linalg.solve(S_prev, (S_np - Bm @ S_zu.T).T).T
                else:
                    gram = torch.cat([torch.cat([S_prev, S_zu], 1), torch.cat([S_zu.T, S_uu], 1)], 0)
                    AB = torch.linalg.solve(gram, torch.cat([S_np, S_nu], 1).T).T
                    A, Bm = AB[:, :D], AB[:, D:]
                drive = _linear(u, Bm)
            else:
                A = self.transition_matrix.detach() if A_fixed else torch.linalg.solve(S_prev, S_np.T).T
                Bm, drive = self.control_matrix, 0.0
            project = self._noise_projection()
            if project is not None:  # only G G⁺ A moves (see above)
                A_old, B_old = self.transition_matrix.detach(), self.control_matrix.detach()
                A = A_old + project @ (A - A_old)
                Bm = B_old + project @ (Bm - B_old)
                drive = _linear(u, Bm) if self.input_dim else 0.0
            r = means[:, 1:] - _linear(means[:, :-1], A) - drive  # [B, T-1, D]
            # Σ Cov(r_t) = Σ P_{t+1} + A P_t Aᵀ − A X_t − (A X_t)ᵀ
            AX = A @ X_sum
            cov_r = _weighted_sum(pair, covs[:, 1:]) + A @ P_prev @ A.T
            Q = (moments(pair, r, r) + cov_r - AX - AX.T) / pair.sum()
            if self.noise_matrix is not None:  # Q_η = G⁺ Q̂ G⁺ᵀ
                G_pinv = torch.linalg.pinv(self.noise_matrix)
                Q = G_pinv @ Q @ G_pinv.T
            self.transition_matrix.copy_(A)
            self.control_matrix.copy_(Bm)
            if self.noise_groups is not None:  # σ²_g = the group's mean of E[η_i²]
                Q = torch.diag(self._group_mean(Q.diagonal()))
            if "transition_covariance" not in fixed:
                eye_q = torch.eye(self.noise_dim, dtype=means.dtype)
                self._q_raw.copy_(tril_to_raw(safe_cholesky(_sym(Q) + self.reg_covar * eye_q, "the estimated Q",
                                                            _PD_HINT)))  # fmt: skip
        # Initial state: μ_0, then P_0 around the μ_0 in use.
        mu0 = self.initial_loc.detach() if "initial_loc" in fixed else means[:, 0].mean(0)
        d0 = means[:, 0] - mu0
        P0 = covs[:, 0].mean(0) + (d0.unsqueeze(-1) * d0.unsqueeze(-2)).mean(0)
        self.observation_matrix.copy_(C)
        if "observation_covariance" not in fixed:
            self._r_raw.copy_(tril_to_raw(safe_cholesky(_sym(R) + self.reg_covar * eye_x, "the estimated R", _PD_HINT)))
        self.initial_loc.copy_(mu0)
        if "initial_covariance" not in fixed:
            self._p0_raw.copy_(tril_to_raw(safe_cholesky(_sym(P0) + self.reg_covar * eye_z, "the estimated P_0",
                                                         _PD_HINT)))  # fmt: skip

    def _observed_noise(self, x: Sequences) -> tuple[Tensor, Tensor, Tensor]:
        """For data with gaps: chol(R_t) of each step's observed block (the identity elsewhere,
        :func:`~elbox.distributions.kalman.masked_observation`) ``[B, T, obs, obs]``, C_t (the missing
        rows zero) ``[B, T, obs, D]`` and the number observed ``[B, T]`` (zero past each end)."""
        observed = self._observed(x)
        C_t, R_t = masked_observation(self.observation_matrix, self.observation_covariance, observed)
        L_t = safe_cholesky(R_t, "R's observed block", _PD_HINT)
        return L_t, C_t, observed.sum(-1).to(C_t.dtype)

    def _imputation(self, x: Sequences) -> tuple[Tensor, Tensor]:
        r"""G_t = R W_t, W_t the inverse of R's observed block (zero elsewhere), ``[B, T, obs, obs]``, and
        ``observed`` ``[B, T, obs]``: given z_t and the observed x_{t,o}, the missing coordinates are

        .. math:: x_t \mid z_t, x_{t,o} \sim \mathcal{N}\big(C z_t + G_t (x_t - C z_t),\ (I - G_t) R\big),

        with x_t zero where missing (G_t's rows of observed coordinates are the identity's, so those
        stay as observed, with no variance)."""
        observed = self._observed(x)
        R = self.observation_covariance
        _, R_t = masked_observation(self.observation_matrix, R, observed)
        o = observed.to(R.dtype)
        W = torch.cholesky_inverse(safe_cholesky(R_t, "R's observed block", _PD_HINT))
        W = W * o.unsqueeze(-1) * o.unsqueeze(-2)  # R_oo⁻¹ in the observed block, zero elsewhere
        return R @ W, observed

    def _imputed_statistics(self, x: Sequences, means: Tensor, covs: Tensor) -> tuple[Tensor, Tensor]:
        r"""Σ_t E[x_t zᵀ_t] and Σ_t E[x_t xᵀ_t] ``[obs, D]``, ``[obs, obs]`` over the steps of each
        sequence, the missing coordinates imputed under the current parameters (Shumway & Stoffer
        2000; Ghahramani & Hinton 1996): with x_t = H_t z_t + G_t x_t + e_t, H_t = (I − G_t) C,
        e_t ~ N(0, (I − G_t) R) (:meth:`_imputation`) and z_t ~ N(m_t, P_t),

        .. math:: E[x_t] = \hat x_t = C m_t + G_t (x_t - C m_t), \quad
                  E[x_t z_t^\top] = \hat x_t m_t^\top + H_t P_t, \quad
                  E[x_t x_t^\top] = \hat x_t \hat x_t^\top + H_t P_t H_t^\top + (I - G_t) R.

        A step with nothing missing has G_t = I (its own x, no variance); one with nothing observed
        G_t = 0 (the model's prediction C m_t with C P_t Cᵀ + R)."""
        G, _ = self._imputation(x)
        C, R = self.observation_matrix, self.observation_covariance
        w = x.mask.to(means.dtype)  # [B, T]
        eye = torch.eye(self.obs_dim, dtype=C.dtype, device=C.device)
        Cm = means @ C.T  # [B, T, obs]
        x_hat = Cm + (G @ (x.values - Cm).unsqueeze(-1)).squeeze(-1)
        I_G = eye - G
        H = I_G @ C  # [B, T, obs, D]
        HP = H @ covs  # [B, T, obs, D]
        S_xz = torch.einsum("bt,bti,btj->ij", w, x_hat, means) + torch.einsum("bt,btij->ij", w, HP)
        spread = HP @ H.mT + I_G @ R  # [B, T, obs, obs]
        S_xx = torch.einsum("bt,bti,btj->ij", w, x_hat, x_hat) + torch.einsum("bt,btij->ij", w, spread)
        return S_xz, S_xx

    @torch.no_grad()
    def impute(self, x, num_samples: int = 1, *, generator: torch.Generator | None = None) -> Tensor:
        r"""Draws of the missing values from p(x_miss | x_obs): ``[num_samples, B, T, obs_dim]``, the
        observed values as they are and the missing ones drawn, by sampling the trajectory from
        the posterior (forward-filtering backward-sampling) and then

        .. math:: x_{t,\mathrm{miss}} \mid z_t, x_{t,\mathrm{obs}} \sim
                  \mathcal{N}\big(C_m z_t + R_{mo} R_{oo}^{-1} (x_{t,o} - C_o z_t),\
                  R_{mm} - R_{mo} R_{oo}^{-1} R_{om}\big),

        drawn as C z + G (x − C z) + (I − G) v with v ~ N(0, R) (:meth:`_imputation`; (I − G) R (I − G)ᵀ
        = (I − G) R). Steps past a sequence's end are zero.

        Args:
            x: Sequences with NaN where a value is missing.
            num_samples: How many draws.
            generator: For reproducible draws (used for the trajectories' and the noise's normals).
        """
        S = check_positive_int(num_samples, "num_samples")
        x = self.check_data(x)
        if x.missing is None:
            return x.values.expand(S, *x.values.shape).clone()
        post = self.posterior(x)
        if generator is None:
            z = post.sample((S,))  # [S, B, T, D]
            v = torch.randn(S, *x.values.shape, dtype=x.values.dtype, device=x.values.device)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(torch.randint(2**62, (), generator=generator)))
                z = post.sample((S,))
                v = torch.randn(S, *x.values.shape, dtype=x.values.dtype)
        G, _ = self._imputation(x)
        C, L_r = self.observation_matrix, raw_to_tril(self._r_raw)
        Cz = z @ C.T  # [S, B, T, obs]
        noise = v @ L_r.T  # ~ N(0, R)
        eye = torch.eye(self.obs_dim, dtype=C.dtype, device=C.device)
        draw = Cz + (G @ (x.values - Cz).unsqueeze(-1)).squeeze(-1) + ((eye - G) @ noise.unsqueeze(-1)).squeeze(-1)
        draw = torch.where(x.missing, draw, x.values)  # the observed values exactly
        return torch.where(x.mask.unsqueeze(-1), draw, 0.0)

    @torch.no_grad()
    def initialize(self, x, method: str = "random", generator: torch.Generator | None = None) -> None:
        """Random parameters for EM: A a random contraction (spectral norm 0.9), C Gaussian
        scaled to the data, Q = I, R the data's covariance, μ_0 = 0, P_0 = I."""
        if method != "random":
            raise ValueError(f"method must be 'random'; received {method!r}")
        with self._keeping_fixed():  # a fixed parameter keeps its value
            self._initialize(self.check_data(x), generator)

    def _initialize(self, x: Sequences, generator: torch.Generator | None) -> None:
        D, Dx = self.state_dim, self.obs_dim
        dtype = self.transition_matrix.dtype
        A = torch.randn(D, D, generator=generator, dtype=dtype)
        A = 0.9 * A / torch.linalg.matrix_norm(A, 2)
        project = self._noise_projection()
        if project is not None:  # only the free part G G⁺ A is drawn: the rest is structure
            A = self.transition_matrix + project @ (A - self.transition_matrix)
        self.transition_matrix.copy_(A)
        frames = x.values[x.mask]  # [N, obs]
        if x.missing is not None and not bool((~x.missing[x.mask]).all(-1).sum() > Dx):
            # too few whole frames: each coordinate's variance over its own observed values
            seen = ~x.missing[x.mask]  # [N, obs]
            count = seen.sum(0)
            mean = (frames * seen).sum(0) / count.clamp_min(1)
            var = ((frames - mean).square() * seen).sum(0) / (count - 1).clamp_min(1)
            var = torch.where(count > 1, var, 1.0)
            scale, R = var.sqrt().clamp_min(1e-6), torch.diag(var)
        else:
            if x.missing is not None:
                frames = frames[(~x.missing[x.mask]).all(-1)]  # the whole frames
            scale = frames.std(0).clamp_min(1e-6) if len(frames) > 1 else torch.ones(Dx, dtype=dtype)
            R = torch.cov(frames.T).reshape(Dx, Dx) if len(frames) > 1 else torch.eye(Dx, dtype=dtype)
        self.observation_matrix.copy_(
            torch.randn(Dx, D, generator=generator, dtype=dtype) * scale.unsqueeze(-1) / D**0.5
        )
        self.control_matrix.zero_()
        self.initial_loc.zero_()
        eye = torch.eye(D, dtype=dtype)
        self._q_raw.copy_(tril_to_raw(torch.eye(self.noise_dim, dtype=dtype)))
        self._p0_raw.copy_(tril_to_raw(eye))
        self._r_raw.copy_(
            tril_to_raw(safe_cholesky(R + 1e-6 * torch.eye(Dx, dtype=dtype), "the data's covariance", _PD_HINT))
        )

    def sample(self, n: int, num_steps: int = 10, inputs=None) -> tuple[Tensor, Tensor]:
        """``n`` sequences: (x ``[n, T, obs_dim]``, z ``[n, T, state_dim]``); ``inputs [n, T, input_dim]``
        where the model has inputs (pass them on as ``Sequences(x, inputs=inputs)``)."""
        n = check_positive_int(n, "n")
        T = check_positive_int(num_steps, "num_steps")
        with torch.no_grad():
            if self.input_dim:
                if inputs is None:
                    raise ValueError(f"this model has input_dim={self.input_dim}: pass inputs [n, T, {self.input_dim}]")
                seqs = self.check_data(Sequences(torch.zeros(n, T, self.obs_dim), inputs=inputs))
                prior = self.prior_for(seqs)
            else:
                prior = None
            z = prior.sample() if prior is not None else self.prior(T).sample((n,))  # [n, T, D]
            x = self.likelihood(z).sample()
        return x, z

    def extra_repr(self) -> str:
        return f"state_dim={self.state_dim}, obs_dim={self.obs_dim}, input_dim={self.input_dim}"


def _sym(m: Tensor) -> Tensor:
    return 0.5 * (m + m.mT)


def _psd_factor(matrix: Tensor, name: str, hint: str = "") -> Tensor:
    """A square factor L with L Lᵀ = ``matrix`` for semidefinite matrices ``[*, D, D]``: the Cholesky
    factor where it exists, else the symmetric root V diag(√λ⁺) Vᵀ (negative rounding clipped)."""
    L, info = torch.linalg.cholesky_ex(matrix)
    if not bool((info != 0).any()):
        return L
    lam, V = torch.linalg.eigh(_sym(matrix))
    if bool((lam < -1e-6 * lam.abs().amax(-1, keepdim=True).clamp_min(1e-300)).any()):
        raise ValueError(f"{name} is not positive semidefinite. {hint}".rstrip())
    root = V * lam.clamp_min(0.0).sqrt().unsqueeze(-2)  # V diag(√λ)
    return torch.where((info == 0)[..., None, None], L, root @ V.mT)


def _weighted_sum(weight: Tensor, X: Tensor) -> Tensor:
    """Σ_b Σ_t weight[b, t] X[b, t], ``[D, D]``, for ``X`` ``[B, T, D, D]`` or one ``[1, T, D, D]`` for
    the whole batch (then the weights are summed over the batch first: no [B, T, D, D] array)."""
    if X.shape[0] == 1:
        return torch.einsum("t,tij->ij", weight.sum(0), X[0])
    return torch.einsum("bt,btij->ij", weight, X)


def _batch_last(v: Tensor) -> Tensor:
    """``v`` ``[B, T, d]`` as a view of ``[T, d, B]`` memory (a copy unless it is one already)."""
    return v.permute(1, 2, 0).contiguous().permute(2, 0, 1)


def _moments(weight: Tensor | None, a: Tensor, b: Tensor) -> Tensor:
    """Σ_b Σ_t weight[b, t] a[b, t] b[b, t]ᵀ, ``[i, j]``, for ``a`` ``[B, T, i]`` and ``b`` ``[B, T, j]``
    (``weight`` None: all ones): one product per time step, batched, on views of ``[T, ·, B]``
    memory (:func:`_batch_last`), with no copy."""
    at, bt = a.permute(1, 2, 0), b.permute(1, 2, 0)  # [T, i, B], [T, j, B]
    if weight is not None:
        at = at * weight.T.unsqueeze(1)
    return torch.bmm(at, bt.mT).sum(0)


def _linear(v: Tensor, M: Tensor) -> Tensor:
    """v Mᵀ for ``v`` ``[B, T, d]`` of ``[T, d, B]`` memory, in that layout (M ``[k, d]``)."""
    return (M @ v.permute(1, 2, 0)).permute(2, 0, 1)
