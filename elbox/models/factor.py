"""Factor analysis and probabilistic PCA: x = W z + μ + ε with diagonal or isotropic noise."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor, nn
from torch.distributions import Independent, MultivariateNormal, Normal

from elbox._validation import as_data, check_bool, check_distribution, check_number, check_positive_int
from elbox.distributions._gaussian import conjugate_gaussian, gaussian_moments
from elbox.models.base import LatentModel

__all__ = ["FactorAnalysis"]


class FactorAnalysis(LatentModel):
    r"""Factor analysis, and probabilistic PCA as its isotropic-noise case.

    .. math:: z \sim \mathcal{N}(0, I_K), \quad x \mid z \sim \mathcal{N}(W z + \mu, \Psi),
              \quad p(x) = \mathcal{N}(x; \mu, W W^\top + \Psi),

    with Ψ diagonal (factor analysis) or σ²I (PPCA, ``isotropic=True``). The evidence and the
    posterior use the Woodbury identity, so their cost is linear in D.

    References:
        EM algorithms for ML factor analysis (Rubin & Thayer, 1982).
        Probabilistic principal component analysis (Tipping & Bishop, 1999).

    Args:
        dim: D, the data dimension.
        latent_dim: K, the number of factors.
        isotropic: PPCA (one noise variance) instead of factor analysis.
        min_noise: The floor on noise variances that the M-step enforces (Heywood cases). The
            floor used is never below 10 ε of each dimension's variance, ε the dtype's
            resolution: a noise variance smaller than that is rounding, not a variance.
    """

    def __init__(self, dim: int, latent_dim: int, isotropic: bool = False, min_noise: float = 1e-12):
        super().__init__()
        D = check_positive_int(dim, "dim")
        K = check_positive_int(latent_dim, "latent_dim")
        if K > D:
            raise ValueError(f"latent_dim ({K}) must not exceed dim ({D})")
        self.data_shape = (D,)
        self.isotropic = check_bool(isotropic, "isotropic")
        self.min_noise = check_number(min_noise, "min_noise", minimum=0.0)
        dtype = torch.get_default_dtype()
        self.loc = nn.Parameter(torch.zeros(D, dtype=dtype))
        self.loading = nn.Parameter(torch.eye(D, K, dtype=dtype))
        self.log_noise = nn.Parameter(torch.zeros(1 if isotropic else D, dtype=dtype))

    @property
    def dim(self) -> int:
        return self.loading.shape[0]

    @property
    def latent_dim(self) -> int:
        return self.loading.shape[1]

    @property
    def num_free_parameters(self) -> int:
        """The free parameters, for BIC: the mean (D), the loadings up to a rotation of the factors
        (D K − K(K−1)/2) and the noise variances (D, or 1 for PPCA)."""
        D, K = self.dim, self.latent_dim
        return D + D * K - K * (K - 1) // 2 + (1 if self.isotropic else D)

    @property
    def noise_variance(self) -> Tensor:
        """Ψ's diagonal, ``[D]``."""
        return self.log_noise.exp().expand(self.dim)

    @noise_variance.setter
    def noise_variance(self, value) -> None:
        value = as_data(value, "noise_variance", ndim=(0, 1), dtype=self.loc.dtype)
        if value.dim() == 1 and value.shape[0] not in (1, self.dim):
            raise ValueError(f"noise_variance must be one number or [dim] = [{self.dim}]; received shape "
                             f"{list(value.shape)}")  # fmt: skip
        value = value.expand(self.dim)
        if (value <= 0).any():
            raise ValueError(f"noise_variance must be positive; received minimum {float(value.min())}")
        if self.isotropic and not torch.allclose(value, value[0]):
            raise ValueError("noise_variance must be one number for PPCA (isotropic=True)")
        with torch.no_grad():
            self.log_noise.copy_(value[: self.log_noise.numel()].log())

    def prior(self) -> Independent:
        zeros = self.loading.new_zeros(self.latent_dim)
        return Independent(Normal(zeros, torch.ones_like(zeros)), 1)

    def likelihood(self, z: Tensor) -> Independent:
        if z.shape[-1:] != (self.latent_dim,):
            raise ValueError(f"z must have shape [..., latent_dim] = [..., {self.latent_dim}]; received shape "
                             f"{list(z.shape)}")  # fmt: skip
        return Independent(Normal(z @ self.loading.T + self.loc, self.noise_variance.sqrt()), 1)

    def marginal(self) -> MultivariateNormal:
        """p(x) = N(μ, W Wᵀ + Ψ) as a distribution (forms the D × D covariance)."""
        cov = self.loading @ self.loading.T + torch.diag(self.noise_variance)
        return MultivariateNormal(self.loc, covariance_matrix=cov)

    def expected_log_likelihood(self, x: Tensor, q) -> Tensor | None:
        """log N(x; W m + μ, Ψ) − ½ tr(Ψ⁻¹ W S Wᵀ) for a Gaussian q = N(m, S)."""
        moments = gaussian_moments(q)
        if moments is None:
            return None
        mean, cov = moments
        spread = ((self.loading @ cov) * self.loading).sum(-1)  # diag(W S Wᵀ), [B, D]
        return self.likelihood(mean).log_prob(x) - 0.5 * (spread / self.noise_variance).sum(-1)

    def em_statistics(self, x: Tensor) -> _Moments:
        """The data mean c and scatter S = (1/N) Σ (x − c)(x − c)ᵀ (and, on demand, the centred
        data): EM for factor analysis depends on the data only through them."""
        return _Moments.of(self.check_data(x))

    # EM on the moments: each iteration costs O(D²K + K³), whatever N.

    @torch.no_grad()
    def em_bound(self, statistics: _Moments) -> Tensor | None:
        r"""The mean log-likelihood per point from the moments alone,
        −½ [D log 2π + log|C| + tr(C⁻¹ (S + d dᵀ))] with C = W Wᵀ + Ψ and d = c − μ (Woodbury
        for C⁻¹ and log|C|).

        None where a noise variance has fallen below 10⁻⁴ of its dimension's variance (towards a
        Heywood case): the trace is then a difference of terms of order S / Ψ that cancel, and
        the per-point steps, which do not form them, take over."""
        S, d = statistics.scatter, statistics.centre - self.loc
        if bool((self.noise_variance.expand(self.dim) < 1e-4 * statistics.variances).any()):
            return None
        inv_psi = (-self.log_noise).exp().expand(self.dim)
        w_scaled = self.loading * inv_psi.unsqueeze(-1)  # Ψ⁻¹ W
        chol = torch.linalg.cholesky(torch.eye(self.latent_dim, dtype=S.dtype, device=S.device)
                                     + self.loading.T @ w_scaled)  # fmt: skip
        logdet = self.log_noise.expand(self.dim).sum() + 2 * chol.diagonal().log().sum()
        # tr(C⁻¹ M) = tr(Ψ⁻¹ M) − tr(G Wᵀ Ψ⁻¹ M Ψ⁻¹ W), G = (I + Wᵀ Ψ⁻¹ W)⁻¹, M = S + d dᵀ
        a = S @ w_scaled + torch.outer(d, d @ w_scaled)  # M Ψ⁻¹ W, [D, K]
        trace = (S.diagonal() + d.square()) @ inv_psi - torch.cholesky_solve(w_scaled.T @ a, chol).trace()
        return -0.5 * (self.dim * math.log(2 * math.pi) + logdet + trace)

    @torch.no_grad()
    def em_update(self, statistics: _Moments) -> None:
        """The M-step of :meth:`m_step` computed from the moments: the posterior's sums over the
        points are β (S + d dᵀ) βᵀ + G and β S (with β = G Wᵀ Ψ⁻¹), so no point is visited."""
        S, c = statistics.scatter, statistics.centre
        d, K = c - self.loc, self.latent_dim
        inv_psi = (-self.log_noise).exp().expand(self.dim)
        w_scaled = self.loading * inv_psi.unsqueeze(-1)
        chol = torch.linalg.cholesky(torch.eye(K, dtype=S.dtype, device=S.device) + self.loading.T @ w_scaled)
        beta = torch.cholesky_solve(w_scaled.T, chol)  # G Wᵀ Ψ⁻¹, [K, D]
        g = torch.cholesky_inverse(chol)  # the posterior covariance, [K, K]
        bs = beta @ S  # (1/N) Σ E[z] xcᵀ, [K, D]
        bd = beta @ d  # (1/N) Σ E[z], [K]
        second = S.new_empty(K + 1, K + 1)  # (1/N) Σ E[z̃ z̃ᵀ], z̃ = (z, 1)
        second[:K, :K] = g + bs @ beta.T + torch.outer(bd, bd)
        second[:K, K] = second[K, :K] = bd
        second[K, K] = 1.0
        cross = torch.cat([bs, S.new_zeros(1, self.dim)])  # (1/N) Σ E[z̃] xcᵀ: the centred data sum to 0
        coef = torch.linalg.solve(second, cross)  # [W b]ᵀ
        psi = S.diagonal() - (coef * cross).sum(0)
        self._set(coef, c, psi, statistics.variances)

    def e_step(self, x: Tensor, statistics=None) -> tuple[MultivariateNormal, Tensor]:
        x = self.check_data(x)
        centre, xc, xc2 = _centred_moments(x) if statistics is None else statistics.centred
        inv_psi = (-self.log_noise).exp().expand(self.dim)  # [D]
        w_scaled = self.loading * inv_psi.unsqueeze(-1)  # Ψ⁻¹ W, [D, K]
        shift = self.loc - centre  # x − μ = xc − shift, without forming it
        K = self.latent_dim
        eye = torch.eye(K, dtype=x.dtype, device=x.device)
        return conjugate_gaussian(
            prior_precision=eye,
            prior_eta=x.new_zeros(K),
            prior_quad=x.new_zeros(()),
            prior_logdet=x.new_zeros(()),
            obs_precision=self.loading.T @ w_scaled,
            obs_eta=xc @ w_scaled - shift @ w_scaled,
            obs_quad=xc2 @ inv_psi - 2 * xc @ (shift * inv_psi) + (shift.square() * inv_psi).sum(),
            obs_logdet=self.log_noise.expand(self.dim).sum(),
            obs_dim=self.dim,
        )

    @torch.no_grad()
    def m_step(self, x: Tensor, posterior: MultivariateNormal, statistics=None) -> None:
        """The exact M-step: regress x on (z, 1) under the posterior, then the residual noise."""
        x = self.check_data(x)
        B, K = x.shape[0], self.latent_dim
        check_distribution(posterior, "posterior", batch_shape=(B,), event_shape=(K,), kind=MultivariateNormal)
        ez = posterior.mean  # [B, K]
        ez1 = torch.cat([ez, ez.new_ones(B, 1)], -1)  # E[(z, 1)], [B, K+1]
        second = ez1.T @ ez1  # Σ E[z̃] E[z̃]ᵀ, [K+1, K+1]
        cov = posterior.covariance_matrix.expand(B, K, K)
        second[:K, :K] += B * cov[0] if cov.stride(0) == 0 else cov.sum(0)  # shared: no sum needed
        # The regression of x on z̃ = (z, 1), done on the centred data xc = x − c (then μ = b + c).
        centre, xc, xc2 = _centred_moments(x) if statistics is None else statistics.centred
        cross = ez1.T @ xc  # Σ E[z̃] xcᵀ, [K+1, D]
        coef = torch.linalg.solve(second, cross)  # [W b]ᵀ, [K+1, D]
        psi = (xc2.sum(0) - (coef * cross).sum(0)) / B  # diag(Σ xc xcᵀ − [W b] Σ E[z̃] xcᵀ)/B
        self._set(coef, centre, psi, xc2.mean(0))

    def _set(self, coef: Tensor, centre: Tensor, psi: Tensor, variances: Tensor) -> None:
        """W, μ and Ψ from the regression's coefficients [W b]ᵀ and the residual variances."""
        psi = torch.maximum(psi, self._noise_floor(variances))
        if self.isotropic:
            psi = psi.mean(0, keepdim=True)
        K = self.latent_dim
        self.loading.copy_(coef[:K].T)
        self.loc.copy_(coef[K] + centre)
        self.log_noise.copy_(psi.log())

    def _noise_floor(self, variances: Tensor) -> Tensor:
        """The floor on each noise variance: ``min_noise``, and never below 10 ε of the dimension's
        variance (``variances``, [D])."""
        return (10 * torch.finfo(variances.dtype).eps * variances).clamp_min(self.min_noise)

    def em_failure(self, x, statistics=None) -> str | None:
        """Noise variances at their floor (a Heywood case): the likelihood grows without bound as
        they shrink, so the optimum reached is the floor's, not the data's."""
        x = self.check_data(x)
        variances = _centred_moments(x)[2].mean(0) if statistics is None else statistics.variances
        floor = self._noise_floor(variances)
        at = (self.noise_variance <= floor * (1 + 1e-3)).nonzero().flatten().tolist()
        if not at:
            return None
        return (
            f"FactorAnalysis: the noise variance of dimension(s) {at[:10]} sits at its floor (a Heywood case): those "
            "dimensions are reproduced exactly by the factors, the likelihood grows without bound as their noise "
            "shrinks, and the optimum reached is set by the floor (min_noise, and 10 ε of the dimension's variance "
            f"in {str(x.dtype).replace('torch.', '')}), not by the data. Use fewer factors, more data points than "
            "dimensions, or remove duplicated or collinear columns"
        )

    @torch.no_grad()
    def initialize(self, x: Tensor, method: str = "pca", generator: torch.Generator | None = None) -> None:
        """Sets μ to the data mean and W, Ψ from principal components (or at random).

        ``"pca"``: W = the top-K principal directions scaled by the square root of their excess
        variance over the average of the rest, Ψ = the per-dimension residual variance (the
        PPCA maximum-likelihood solution when noise is isotropic). ``"random"``: W ~ N(0, 0.1²)
        and Ψ = the per-dimension variance.
        """
        x = self.check_data(x)
        N, D, K = x.shape[0], self.dim, self.latent_dim
        if N < 2:
            raise ValueError(f"x must hold at least 2 data points to initialize; received {N}")
        mean = x.mean(0)
        var = x.var(0, unbiased=False).clamp_min(self.min_noise)
        self.loc.copy_(mean)
        if method == "pca":
            cov = (x - mean).T @ (x - mean) / N
            evals, evecs = torch.linalg.eigh(cov)  # ascending
            evals, evecs = evals.flip(0), evecs.flip(1)
            rest = evals[K:].mean() if K < D else evals.new_tensor(self.min_noise)
            scale = (evals[:K] - rest).clamp_min(0).sqrt()
            self.loading.copy_(evecs[:, :K] * scale)
            psi = (var - self.loading.square().sum(-1)).clamp_min(max(self.min_noise, 1e-3 * float(var.mean())))
        elif method == "random":
            self.loading.copy_(0.1 * torch.randn(D, K, generator=generator, dtype=x.dtype))
            psi = var
        else:
            raise ValueError(f"method must be 'pca' or 'random'; received {method!r}")
        if self.isotropic:
            psi = psi.mean(0, keepdim=True)
        self.log_noise.copy_(psi.log())

    def sample(self, n: int) -> tuple[Tensor, Tensor]:
        n = check_positive_int(n, "n")
        with torch.no_grad():
            z = self.prior().sample((n,))  # [n, K]
            x = self.likelihood(z).sample()  # [n, D]
        return x, z

    def extra_repr(self) -> str:
        kind = "PPCA" if self.isotropic else "factor analysis"
        return f"dim={self.dim}, latent_dim={self.latent_dim}, {kind}"



@dataclass
class _Moments:
    """What EM reads of the data: their mean and scatter matrix (and the centred data themselves
    for the per-point steps, made once on first use)."""

    data: Tensor
    centre: Tensor
    scatter: Tensor

    @classmethod
    @torch.no_grad()
    def of(cls, x: Tensor) -> _Moments:
        centre = x.mean(0)
        xc = x - centre
        return cls(x, centre, (xc.T @ xc) / x.shape[0])

    @property
    def variances(self) -> Tensor:
        return self.scatter.diagonal()

    @cached_property
    def centred(self) -> tuple[Tensor, Tensor, Tensor]:
        return _centred_moments(self.data)


@torch.no_grad()
def _centred_moments(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The data mean c, the centred data x − c and its squares."""
    centre = x.mean(0)
    xc = x - centre
    return centre, xc, xc.square()
