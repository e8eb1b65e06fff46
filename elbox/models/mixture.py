"""Gaussian mixtures: z is the component, x | z is Gaussian (full or diagonal covariance)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution, Independent, MultivariateNormal, Normal, OneHotCategorical

from elbox._validation import as_data, check_distribution, check_number, check_positive_int, check_probabilities
from elbox.distributions._gaussian import covariance_to_raw, raw_to_tril, safe_cholesky, tril_inverse, tril_to_raw
from elbox.models.base import LatentModel

__all__ = ["GaussianMixture"]

_COVARIANCE_TYPES = ("full", "diag")
_COLLAPSE_HINT = (
    "A component has collapsed onto too few points: increase reg_covar (now {:g}), use fewer "
    "components, or scale the input."
)


class GaussianMixture(LatentModel):
    r"""A mixture of K Gaussians in R^D.

    .. math:: z \sim \mathrm{Categorical}(\pi), \quad x \mid z \sim \mathcal{N}(\mu_z, \Sigma_z),
              \quad \log p(x) = \log \textstyle\sum_k \pi_k \mathcal{N}(x; \mu_k, \Sigma_k).

    The E-step and M-step are written as two matrix products over moment features of the data
    (x and the upper triangle of x xᵀ, taken about the data mean), so one EM iteration over
    N points costs two GEMMs of size N × D(D+1)/2 × K rather than a loop over components.

    Args:
        num_components: K.
        dim: D.
        covariance_type: ``"full"`` or ``"diag"``.
        reg_covar: Added to the diagonal of every covariance the M-step estimates
            (scikit-learn's ``reg_covar``): raise it if a component collapses.
        weights: π, ``[K]`` (default uniform).
        loc: μ, ``[K, D]`` (default zeros; :meth:`initialize` sets them from data).
        covariance: Σ, ``[K, D, D]`` for full or ``[K, D]`` variances for diag (default
            identities).

    Example:
        >>> model = GaussianMixture(3, 2)
        >>> x, z = model.sample(100)
        >>> history = elbox.em(model, x, init="kmeans++", seed=0)
    """

    def __init__(
        self,
        num_components: int,
        dim: int,
        covariance_type: str = "full",
        reg_covar: float = 1e-6,
        weights: Tensor | None = None,
        loc: Tensor | None = None,
        covariance: Tensor | None = None,
    ):
        super().__init__()
        K = check_positive_int(num_components, "num_components")
        D = check_positive_int(dim, "dim")
        if covariance_type not in _COVARIANCE_TYPES:
            raise ValueError(
                f"covariance_type must be one of {_COVARIANCE_TYPES}; received {covariance_type!r}"
            )
        reg_covar = check_number(reg_covar, "reg_covar", minimum=0.0)
        self.data_shape = (D,)
        self.covariance_type = covariance_type
        self.reg_covar = float(reg_covar)
        dtype = torch.get_default_dtype()
        self.logits = nn.Parameter(torch.zeros(K, dtype=dtype))
        self.loc = nn.Parameter(torch.zeros(K, D, dtype=dtype))
        if covariance_type == "full":
            self._raw = nn.Parameter(torch.zeros(K, D, D, dtype=dtype))
        else:
            self._log_var = nn.Parameter(torch.zeros(K, D, dtype=dtype))
        with torch.no_grad():
            if weights is not None:
                self.weights = weights
            if loc is not None:
                self.loc.copy_(self._checked(loc, "loc", (K, D)))
            if covariance is not None:
                self.covariance = covariance

    @property
    def em_regularizer(self) -> str | None:
        return f"reg_covar={self.reg_covar:g}" if self.reg_covar > 0 else None

    # Parameters, constrained.

    @property
    def num_components(self) -> int:
        return self.loc.shape[0]

    @property
    def dim(self) -> int:
        return self.loc.shape[1]

    @property
    def num_free_parameters(self) -> int:
        """The free parameters (scikit-learn's count, for BIC): K − 1 weights, K D means and K
        covariances of D(D+1)/2 (full) or D (diag) entries."""
        K, D = self.num_components, self.dim
        covariance = D * (D + 1) // 2 if self.covariance_type == "full" else D
        return K - 1 + K * D + K * covariance

    def _checked(self, value, name: str, shape: tuple[int, ...]) -> Tensor:
        value = as_data(value, name, dtype=self.loc.dtype)
        if tuple(value.shape) != shape:
            raise ValueError(f"{name} must have shape {list(shape)}; received {list(value.shape)}")
        return value

    @property
    def weights(self) -> Tensor:
        return self.logits.softmax(-1)

    @weights.setter
    def weights(self, value) -> None:
        value = check_probabilities(self._checked(value, "weights", (self.num_components,)), "weights", dim=0)
        with torch.no_grad():
            self.logits.copy_(value.clamp_min(torch.finfo(value.dtype).tiny).log())

    @property
    def covariance(self) -> Tensor:
        """Σ: ``[K, D, D]`` (full) or the variances ``[K, D]`` (diag)."""
        if self.covariance_type == "full":
            L = self.scale_tril
            return L @ L.mT
        return self._log_var.exp()

    @covariance.setter
    def covariance(self, value) -> None:
        K, D = self.num_components, self.dim
        hint = f"Increase reg_covar (now {self.reg_covar:g}) or scale the input."
        with torch.no_grad():
            if self.covariance_type == "full":
                value = self._checked(value, "covariance", (K, D, D))
                self._raw.copy_(covariance_to_raw(value, "covariance", hint))
            else:
                value = self._checked(value, "covariance", (K, D))
                if (value <= 0).any():
                    raise ValueError(f"covariance (variances, diag) must be positive. {hint}")
                self._log_var.copy_(value.log())

    @property
    def scale_tril(self) -> Tensor:
        """The Cholesky factors of the covariances, ``[K, D, D]``."""
        if self.covariance_type == "full":
            return raw_to_tril(self._raw)
        return torch.diag_embed((0.5 * self._log_var).exp())

    # The model.

    def prior(self) -> Categorical:
        return Categorical(logits=self.logits)

    def likelihood(self, z: Tensor) -> Distribution:
        if self.covariance_type == "full":
            return MultivariateNormal(self.loc[z], scale_tril=self.scale_tril[z])
        return Independent(Normal(self.loc[z], (0.5 * self._log_var[z]).exp()), 1)

    def em_statistics(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The data mean c, and the features F = [1, x − c, second moments of x − c] per point
        (the upper triangle of (x − c)(x − c)ᵀ for full covariances, (x − c)² for diagonal).

        Every Gaussian log-density is linear in F, so the E-step is F @ W and the M-step's
        statistics are Rᵀ F: one matrix product each. F depends on x alone, so an EM run
        computes it once and passes it to every E-step and M-step.
        """
        with torch.no_grad():
            return self._moments(self.check_data(x))

    def _moments(self, x: Tensor, columns: bool = False) -> tuple[Tensor, Tensor]:
        """The centre and the moment features of the points ``x`` ``[B, D]``: ``[B, 1 + D + M]``
        (M second moments). With ``columns``, the points are the columns, ``x`` ``[D, B]`` and the
        features ``[1 + D + M, B]`` (an HMM's frames, time-major)."""
        if columns:
            centre = x.mean(1)
            xc = x - centre.unsqueeze(-1)
        else:
            centre = x.mean(0)
            xc = (x - centre).T  # [D, B]: the features are built by rows either way
        features = moment_features(xc, *self._second_moments(x.device))  # [1 + D + M, B]
        return centre, (features if columns else features.T)

    def _second_moments(self, device) -> tuple[Tensor, Tensor]:
        """The coordinates (rows, cols) of the M second moments among the features: the upper
        triangle of x xᵀ (full covariances) or its diagonal."""
        if self.covariance_type == "full":
            return _triu(self.dim, device)
        d = torch.arange(self.dim, device=device)
        return d, d

    def _weights(self, centre: Tensor) -> Tensor:
        """W such that F @ W = log N(x; μ_k, Σ_k), ``[1 + D + M, K]`` (M second moments)."""
        D = self.dim
        mc = self.loc - centre  # [K, D]
        if self.covariance_type == "full":
            L_inv = tril_inverse(self.scale_tril)  # [K, D, D]
            precision = L_inv.mT @ L_inv
            logdet = -2 * L_inv.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # log|Σ_k|
            rows, cols = _triu(D, centre.device)
            quad = precision[:, rows, cols] * torch.where(rows == cols, 1.0, 2.0).to(centre.dtype)  # [K, M]
            p_mu = (precision @ mc.unsqueeze(-1)).squeeze(-1)  # [K, D]
        else:
            precision = (-self._log_var).exp()  # [K, D]
            logdet = self._log_var.sum(-1)
            quad = precision
            p_mu = precision * mc
        const = -0.5 * ((mc * p_mu).sum(-1) + logdet + D * math.log(2 * math.pi))  # [K]
        # log N = −½ (xᵀPx − 2 xᵀPμ + μᵀPμ + log|Σ| + D log 2π), with x, μ centred.
        return torch.cat([const.unsqueeze(-1), p_mu, -0.5 * quad], -1).T

    def component_log_prob(self, x: Tensor, statistics: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """log N(x_n; μ_k, Σ_k) for every point and component, ``[B, K]`` (``statistics``: the
        :meth:`em_statistics` of ``x``, when the caller holds them)."""
        centre, features = self._moments(x) if statistics is None else statistics
        return features @ self._weights(centre)

    def log_likelihood(self, x: Tensor, z: Tensor) -> Tensor:
        comp = self.component_log_prob(x)  # [B, K]
        return comp.expand(*z.shape, -1).gather(-1, z.unsqueeze(-1)).squeeze(-1)

    def e_step(self, x: Tensor, statistics: tuple[Tensor, Tensor] | None = None) -> tuple[Categorical, Tensor]:
        x = self.check_data(x)
        centre, features = self._moments(x) if statistics is None else statistics
        weights = self._weights(centre)
        weights[0] = weights[0] + self.logits.log_softmax(-1)  # the constant row takes log π_k
        log_joint = features @ weights  # [B, K]
        log_evidence = log_joint.logsumexp(-1)
        return Categorical(logits=log_joint - log_evidence.unsqueeze(-1)), log_evidence

    @torch.no_grad()
    def m_step(self, x: Tensor, posterior: Categorical, statistics: tuple[Tensor, Tensor] | None = None) -> None:
        """Weights, means and covariances from the responsibilities (scikit-learn's M-step)."""
        x = self.check_data(x)
        check_distribution(posterior, "posterior", kind=(Categorical, OneHotCategorical))
        resp = posterior.probs  # [B, K]
        if resp.shape != (x.shape[0], self.num_components):
            raise ValueError(
                f"posterior must have probs of shape [{x.shape[0]}, {self.num_components}]; "
                f"received {list(resp.shape)}"
            )
        nk = self.fit_components(x, resp, statistics)
        self.logits.copy_((nk / nk.sum()).log())

    @torch.no_grad()
    def fit_components(self, x: Tensor, resp: Tensor, statistics: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Sets each component's mean and covariance to the weighted moments of ``x [B, D]``
        under the weights ``resp [B, K]`` (any non-negative weights; rows need not sum to one,
        which is how an HMM's state occupancies use it). Returns the total weights ``[K]``."""
        D = self.dim
        centre, features = self._moments(x) if statistics is None else statistics
        stats = resp.T @ features  # [K, 1 + D + M]: Σ r, Σ r x, Σ r (second moments)
        nk = stats[:, 0] + 10 * torch.finfo(x.dtype).eps  # [K]
        mean_c = stats[:, 1 : 1 + D] / nk.unsqueeze(-1)  # [K, D]
        second = stats[:, 1 + D :] / nk.unsqueeze(-1)  # [K, M]
        self.loc.copy_(mean_c + centre)
        if self.covariance_type == "full":
            rows, cols = _triu(D, x.device)
            moment = x.new_zeros(self.num_components, D, D)
            moment[:, rows, cols] = second
            moment[:, cols, rows] = second
            cov = moment - mean_c.unsqueeze(-1) * mean_c.unsqueeze(-2)
            cov.diagonal(dim1=-2, dim2=-1).add_(self.reg_covar)
            L = safe_cholesky(cov, "an estimated component covariance", _COLLAPSE_HINT.format(self.reg_covar))
            # Moments minus the squared mean carry a rounding error of about D ε |moment|: a
            # pivot below that is noise, and the component has in fact collapsed.
            floor = 10 * D * torch.finfo(x.dtype).eps * moment.diagonal(dim1=-2, dim2=-1).amax(-1)
            if (L.diagonal(dim1=-2, dim2=-1).square().amin(-1) <= floor).any():
                raise ValueError(
                    "an estimated component covariance is not positive definite (numerically "
                    "singular). " + _COLLAPSE_HINT.format(self.reg_covar)
                )
            self._raw.copy_(tril_to_raw(L))
        else:
            var = second - mean_c.square() + self.reg_covar
            if (var <= 10 * torch.finfo(x.dtype).eps * second).any():
                raise ValueError(
                    "an estimated variance is not positive. " + _COLLAPSE_HINT.format(self.reg_covar)
                )
            self._log_var.copy_(var.log())
        return nk

    @torch.no_grad()
    def initialize(self, x: Tensor, method: str = "kmeans++", generator: torch.Generator | None = None) -> None:
        """Sets the parameters from data: k-means++ seeding and Lloyd steps, or random responsibilities.

        Args:
            x: Data, ``[N, D]``.
            method: ``"kmeans++"`` (k-means++ seeds refined by 10 Lloyd iterations, then one
                M-step on the hard assignments) or ``"random"`` (one M-step on random
                responsibilities).
            generator: The random generator (default torch's global one).
        """
        x = self.check_data(x)
        N, K = x.shape[0], self.num_components
        if K > N:
            raise ValueError(
                f"num_components ({K}) must not exceed the number of data points ({N}); "
                "use fewer components or more data"
            )
        if method == "kmeans++":
            labels = _kmeans(x, K, generator)
            resp = nn.functional.one_hot(labels, K).to(x.dtype)
        elif method == "random":
            resp = torch.rand(N, K, generator=generator, dtype=x.dtype, device=x.device)
            resp = resp / resp.sum(-1, keepdim=True)
        else:
            raise ValueError(f"method must be 'kmeans++' or 'random'; received {method!r}")
        self.m_step(x, Categorical(probs=resp))

    def sample(self, n: int) -> tuple[Tensor, Tensor]:
        n = check_positive_int(n, "n")
        with torch.no_grad():
            z = self.prior().sample((n,))  # [n]
            noise = torch.randn(n, self.dim, 1, dtype=self.loc.dtype, device=self.loc.device)
            x = self.loc[z] + (self.scale_tril[z] @ noise).squeeze(-1)  # [n, D]
        return x, z


def moment_features(xc: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """The moment features of centred points as columns, ``xc`` ``[D, N]`` → ``[1 + D + M, N]``:
    (1, x_c, x_c[rows] ⊙ x_c[cols]), whose products with :meth:`GaussianMixture._weights` are the
    components' log-densities."""
    second = xc.square() if rows.shape[0] == xc.shape[0] and bool((rows == cols).all()) else xc[rows] * xc[cols]
    return torch.cat([xc.new_ones(1, xc.shape[1]), xc, second])


def _triu(D: int, device) -> tuple[Tensor, Tensor]:
    rows, cols = torch.triu_indices(D, D, device=device)
    return rows, cols


def _kmeans(x: Tensor, k: int, generator: torch.Generator | None, iterations: int = 10) -> Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii, 2007) and Lloyd steps; returns labels [N]."""
    N = x.shape[0]
    sq = x.square().sum(-1)  # [N]
    if not torch.isfinite(sq).all():
        largest = float(x.abs().max())
        raise ValueError(
            f"x holds values as large as {largest:.3g}, whose squares overflow {str(x.dtype)[6:]}: distances between "
            "points (and every Gaussian density) cannot be computed. Rescale the data (standardize each column)"
        )
    first = torch.randint(N, (1,), generator=generator, device=x.device)
    centres = [x[first[0]]]
    d2 = (x - centres[0]).square().sum(-1)
    for _ in range(1, k):
        total = d2.sum()
        probs = d2 / total if total > 0 else torch.full_like(d2, 1 / N)
        pick = torch.multinomial(probs, 1, generator=generator)[0]
        centres.append(x[pick])
        d2 = torch.minimum(d2, (x - x[pick]).square().sum(-1))
    centres = torch.stack(centres)  # [k, D]
    for _ in range(iterations):
        dist = sq.unsqueeze(-1) - 2 * x @ centres.T + centres.square().sum(-1)  # [N, k]
        labels = dist.argmin(-1)
        counts = torch.bincount(labels, minlength=k).to(x.dtype)  # [k]
        sums = torch.zeros_like(centres).index_add_(0, labels, x)
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled].unsqueeze(-1)
    dist = sq.unsqueeze(-1) - 2 * x @ centres.T + centres.square().sum(-1)
    return dist.argmin(-1)
