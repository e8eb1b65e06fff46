"""Conjugate models with closed-form evidence: the coin, the Gaussian mean, random effects, and a
latent from a mixture prior (a posterior with several modes)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import (
    Bernoulli,
    Beta,
    Categorical,
    Independent,
    MixtureSameFamily,
    MultivariateNormal,
    Normal,
    TransformedDistribution,
)
from torch.distributions.transforms import SigmoidTransform

from elbox._validation import as_data, check_bool, check_distribution, check_number, check_positive_int
from elbox.distributions._gaussian import (
    conjugate_gaussian,
    covariance_to_raw,
    gaussian_moments,
    raw_to_tril,
    safe_cholesky,
    tril_inverse,
    tril_logdet,
    tril_to_raw,
)
from elbox.models.base import LatentModel

__all__ = ["BetaBernoulli", "HierarchicalNormal", "MixturePrior", "NormalNormal"]


def _positive(value, name: str) -> float:
    value = check_number(value, name, only_type=True)
    if not value > 0 or not math.isfinite(value):
        raise ValueError(f"{name} must be a positive finite number; received {value}")
    return value


class BetaBernoulli(LatentModel):
    r"""The coin: a bias z ~ Beta(a, b) and N flips x_i | z ~ Bernoulli(z).

    A data point is one sequence of N flips, ``[N]``; sequences in a batch may have any common
    length. The evidence is a ratio of Beta functions and the posterior a Beta:

    .. math:: \log p(x) = \log B(a + h, b + t) - \log B(a, b), \quad
              p(z \mid x) = \mathrm{Beta}(a + h, b + t),

    with h heads and t tails.

    With ``latent="logit"`` the latent is the bias's log-odds, a vector of one real number
    ``[1]`` (the same model, reparameterized): its prior and posterior are the Betas pushed
    through the logit, skewed and not Gaussian, which real-valued families (normal guides,
    flows) can then fit.

    Args:
        concentration1: a, the prior's pseudo-count of heads.
        concentration0: b, the prior's pseudo-count of tails.
        latent: ``"bias"`` (z in (0, 1)) or ``"logit"`` (z = log(bias / (1 − bias)), shape ``[1]``).

    Example:
        >>> model = BetaBernoulli(2.0, 2.0)
        >>> x = torch.tensor([[1.0, 1.0, 0.0, 1.0]])
        >>> model.posterior(x).concentration1
        tensor([5.])
    """

    data_shape = (None,)

    def __init__(self, concentration1: float = 1.0, concentration0: float = 1.0, latent: str = "bias"):
        super().__init__()
        self.register_buffer("concentration1", torch.tensor(_positive(concentration1, "concentration1")))
        self.register_buffer("concentration0", torch.tensor(_positive(concentration0, "concentration0")))
        if latent not in ("bias", "logit"):
            raise ValueError(f"latent must be 'bias' or 'logit'; received {latent!r}")
        self.latent = latent

    def _on_latent_scale(self, a: Tensor, b: Tensor):
        """Beta(a, b) over the bias, or pushed through the logit as a 1-vector."""
        if self.latent == "bias":
            return Beta(a, b)
        beta = Beta(a.unsqueeze(-1), b.unsqueeze(-1))
        return Independent(TransformedDistribution(beta, [SigmoidTransform().inv]), 1)

    def prior(self):
        return self._on_latent_scale(self.concentration1, self.concentration0)

    def likelihood(self, z: Tensor) -> Bernoulli:
        """Each flip is Bernoulli(z): batch ``z.shape + [1]``, broadcasting over the N flips."""
        if self.latent == "logit":
            return Bernoulli(logits=z)
        return Bernoulli(probs=z.unsqueeze(-1))

    def _check_data(self, x, name: str = "x") -> Tensor:
        x = super()._check_data(x, name)
        if ((x != 0) & (x != 1)).any():
            bad = x[(x != 0) & (x != 1)][0].item()
            raise ValueError(f"{name} must hold coin flips, each 0 or 1; received the value {bad}")
        return x

    def _counts(self, x: Tensor) -> tuple[Tensor, Tensor]:
        heads = x.sum(-1)
        return heads, x.shape[-1] - heads

    def log_likelihood(self, x: Tensor, z: Tensor) -> Tensor:
        heads, tails = self._counts(x)
        if self.latent == "logit":
            z = z.squeeze(-1)
            return heads * F.logsigmoid(z) + tails * F.logsigmoid(-z)
        return heads * z.log() + tails * torch.log1p(-z)

    def expected_log_likelihood(self, x: Tensor, q) -> Tensor | None:
        """h E[log z] + t E[log(1 − z)] for a Beta q, through the digamma function."""
        if not isinstance(q, Beta) or self.latent == "logit":
            return None
        heads, tails = self._counts(x)
        a, b = q.concentration1, q.concentration0
        total = torch.digamma(a + b)
        return heads * (torch.digamma(a) - total) + tails * (torch.digamma(b) - total)

    def log_evidence(self, x: Tensor) -> Tensor:
        x = self.check_data(x)
        heads, tails = self._counts(x)
        a, b = self.concentration1, self.concentration0
        return _log_beta(a + heads, b + tails) - _log_beta(a, b)

    def posterior(self, x: Tensor):
        x = self.check_data(x)
        heads, tails = self._counts(x)
        return self._on_latent_scale(self.concentration1 + heads, self.concentration0 + tails)

    def sample(self, n: int, num_flips: int = 10) -> tuple[Tensor, Tensor]:
        n = check_positive_int(n, "n")
        num_flips = check_positive_int(num_flips, "num_flips")
        z = self.prior().sample((n,))  # [n] (or [n, 1] of logits)
        bias = torch.sigmoid(z) if self.latent == "logit" else z.unsqueeze(-1)
        x = Bernoulli(probs=bias.expand(n, num_flips)).sample()  # [n, N]
        return x, z


def _log_beta(a: Tensor, b: Tensor) -> Tensor:
    return torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)


class NormalNormal(LatentModel):
    r"""The conjugate Gaussian mean: z ~ N(m, S) in R^D and N draws x_i | z ~ N(z, R).

    A data point is a set of N observations, ``[N, D]`` (N may differ between calls). The
    evidence and posterior are Gaussian and computed in information form (nothing of size
    ND × ND is formed):

    .. math:: p(z \mid x) = \mathcal{N}\big(\Lambda^{-1}(S^{-1}m + R^{-1}\textstyle\sum_i x_i),
              \Lambda^{-1}\big), \quad \Lambda = S^{-1} + N R^{-1}.

    Args:
        dim: D, the dimension of z and of each observation.
        prior_loc: m, ``[D]`` (default zeros).
        prior_covariance: S, ``[D, D]`` (default the identity).
        noise_covariance: R, ``[D, D]`` (default the identity).
        reg_covar: Added to the diagonal of covariances estimated by :meth:`m_step`.
    """

    def __init__(
        self,
        dim: int,
        prior_loc: Tensor | None = None,
        prior_covariance: Tensor | None = None,
        noise_covariance: Tensor | None = None,
        reg_covar: float = 1e-6,
    ):
        super().__init__()
        dim = check_positive_int(dim, "dim")
        self.data_shape = (None, dim)
        reg_covar = check_number(reg_covar, "reg_covar", minimum=0.0)
        eye = torch.eye(dim)
        loc = torch.zeros(dim) if prior_loc is None else as_data(prior_loc, "prior_loc", ndim=1)
        if loc.shape != (dim,):
            raise ValueError(f"prior_loc must have shape [{dim}]; received {tuple(loc.shape)}")
        self.prior_loc = nn.Parameter(loc.to(torch.get_default_dtype()))
        for name, value in (("prior_covariance", prior_covariance), ("noise_covariance", noise_covariance)):
            cov = eye if value is None else as_data(value, name, ndim=2)
            if cov.shape != (dim, dim):
                raise ValueError(f"{name} must have shape [{dim}, {dim}]; received {tuple(cov.shape)}")
            raw = covariance_to_raw(cov.to(torch.get_default_dtype()), name)
            setattr(self, "_" + name.replace("covariance", "raw"), nn.Parameter(raw))
        self.reg_covar = reg_covar

    @property
    def dim(self) -> int:
        return self.prior_loc.shape[-1]

    @property
    def prior_scale_tril(self) -> Tensor:
        return raw_to_tril(self._prior_raw)

    @property
    def noise_scale_tril(self) -> Tensor:
        return raw_to_tril(self._noise_raw)

    def prior(self) -> MultivariateNormal:
        return MultivariateNormal(self.prior_loc, scale_tril=self.prior_scale_tril)

    def likelihood(self, z: Tensor) -> Independent:
        """The N draws given z; ``log_prob`` of ``[B, N, D]`` data sums over the N draws."""
        base = MultivariateNormal(z.unsqueeze(-2), scale_tril=self.noise_scale_tril)
        return Independent(base, 1)

    def expected_log_likelihood(self, x: Tensor, q) -> Tensor | None:
        """Σ_i log N(x_i; m, R) − (N/2) tr(R⁻¹ S) for a Gaussian q = N(m, S)."""
        moments = gaussian_moments(q)
        if moments is None:
            return None
        mean, cov = moments
        noise_L_inv = tril_inverse(self.noise_scale_tril)
        trace = (noise_L_inv @ cov @ noise_L_inv.mT).diagonal(dim1=-2, dim2=-1).sum(-1)  # [B]
        return self.likelihood(mean).log_prob(x) - 0.5 * x.shape[1] * trace

    def e_step(self, x: Tensor) -> tuple[MultivariateNormal, Tensor]:
        x = self.check_data(x)  # [B, N, D]
        n = x.shape[1]
        prior_L_inv = tril_inverse(self.prior_scale_tril)
        noise_L_inv = tril_inverse(self.noise_scale_tril)
        prior_prec = prior_L_inv.mT @ prior_L_inv
        noise_prec = noise_L_inv.mT @ noise_L_inv
        white_loc = prior_L_inv @ self.prior_loc
        white_x = x @ noise_L_inv.mT  # [B, N, D]
        return conjugate_gaussian(
            prior_precision=prior_prec,
            prior_eta=prior_prec @ self.prior_loc,
            prior_quad=white_loc.square().sum(),
            prior_logdet=tril_logdet(self.prior_scale_tril),
            obs_precision=n * noise_prec,
            obs_eta=x.sum(1) @ noise_prec,  # [B, D]
            obs_quad=white_x.square().sum((-2, -1)),
            obs_logdet=n * tril_logdet(self.noise_scale_tril),
            obs_dim=n * self.dim,
        )

    @torch.no_grad()
    def m_step(self, x: Tensor, posterior: MultivariateNormal) -> None:
        """Empirical Bayes: the prior that best explains the posteriors, and the noise."""
        x = self.check_data(x)
        check_distribution(posterior, "posterior", batch_shape=(len(x),), event_shape=(self.dim,),
                           kind=MultivariateNormal)  # fmt: skip
        mean, cov = posterior.mean, posterior.covariance_matrix  # [B, D], [B, D, D]
        eye = self.reg_covar * torch.eye(self.dim, dtype=x.dtype, device=x.device)
        loc = mean.mean(0)
        centred = mean - loc
        prior_cov = (cov + centred.unsqueeze(-1) * centred.unsqueeze(-2)).mean(0) + eye
        resid = x - mean.unsqueeze(1)  # [B, N, D]
        noise_cov = (resid.mT @ resid).sum(0) / (x.shape[0] * x.shape[1]) + cov.mean(0) + eye
        hint = f"Increase reg_covar (now {self.reg_covar:g}) or give more data points."
        self.prior_loc.copy_(loc)
        self._prior_raw.copy_(tril_to_raw(safe_cholesky(prior_cov, "the estimated prior covariance", hint)))
        self._noise_raw.copy_(tril_to_raw(safe_cholesky(noise_cov, "the estimated noise covariance", hint)))

    def sample(self, n: int, num_obs: int = 1) -> tuple[Tensor, Tensor]:
        n = check_positive_int(n, "n")
        num_obs = check_positive_int(num_obs, "num_obs")
        with torch.no_grad():
            z = self.prior().sample((n,))  # [n, D]
            noise = torch.randn(n, num_obs, self.dim, dtype=z.dtype) @ self.noise_scale_tril.mT
        return z.unsqueeze(1) + noise, z


class HierarchicalNormal(LatentModel):
    r"""Random effects: a population mean, group means drawn around it, observations per group.

    .. math:: \mu \sim \mathcal{N}(m_0, s_0^2), \quad
              \theta_j \mid \mu \sim \mathcal{N}(\mu, \tau^2), \quad
              x_{ji} \mid \theta_j \sim \mathcal{N}(\theta_j, \sigma_j^2),

    for J groups of N observations. The latent z = (μ, θ_1, …, θ_J) has dimension J + 1 and a
    correlated Gaussian posterior (μ couples the groups), so a mean-field q keeps a gap that a
    full-rank q closes. The evidence is exact. A data point is one study, ``[J, N]``.

    Args:
        num_groups: J.
        group_size: N, the observations per group (N = 1 with known σ_j is "eight schools").
        hyper_loc: m_0.
        hyper_scale: s_0.
        group_scale: τ, the spread of the group means (a parameter; EM and VI fit it).
        noise_scale: σ_j, a float or ``[J]`` (a parameter unless ``fit_noise=False``).
        fit_noise: Whether the M-step updates σ_j.
    """

    def __init__(
        self,
        num_groups: int,
        group_size: int = 1,
        hyper_loc: float = 0.0,
        hyper_scale: float = 10.0,
        group_scale: float = 1.0,
        noise_scale: float | Tensor = 1.0,
        fit_noise: bool = True,
    ):
        super().__init__()
        J = check_positive_int(num_groups, "num_groups")
        N = check_positive_int(group_size, "group_size")
        self.data_shape = (J, N)
        self.register_buffer("hyper_loc", torch.tensor(check_number(hyper_loc, "hyper_loc")))
        self.register_buffer("hyper_scale", torch.tensor(_positive(hyper_scale, "hyper_scale")))
        self.log_group_scale = nn.Parameter(torch.tensor(math.log(_positive(group_scale, "group_scale"))))
        sigma = as_data(noise_scale, "noise_scale", ndim=(0, 1)).to(torch.get_default_dtype())
        if (sigma <= 0).any():
            raise ValueError(f"noise_scale must be positive; received {sigma.tolist()}")
        if sigma.dim() == 1 and sigma.shape[0] != J:
            raise ValueError(f"noise_scale must be one number or [num_groups] = [{J}]; received shape "
                             f"{list(sigma.shape)}")  # fmt: skip
        fit_noise = check_bool(fit_noise, "fit_noise")
        sigma = sigma.expand(J).clone()
        self.log_noise_scale = nn.Parameter(sigma.log(), requires_grad=fit_noise)
        self.fit_noise = fit_noise

    @property
    def num_groups(self) -> int:
        return self.data_shape[0]

    @property
    def group_size(self) -> int:
        return self.data_shape[1]

    def _prior_moments(self) -> tuple[Tensor, Tensor]:
        J = self.num_groups
        s2 = self.hyper_scale.square()
        t2 = (2 * self.log_group_scale).exp()
        loc = self.hyper_loc.expand(J + 1)
        cov = s2 * torch.ones(J + 1, J + 1, dtype=t2.dtype, device=t2.device)
        cov = cov + t2 * torch.diag(torch.cat([t2.new_zeros(1), t2.new_ones(J)]))
        return loc, cov

    def prior(self) -> MultivariateNormal:
        loc, cov = self._prior_moments()
        return MultivariateNormal(loc, covariance_matrix=cov)

    def likelihood(self, z: Tensor) -> Independent:
        theta = z[..., 1:].unsqueeze(-1).expand(*z.shape[:-1], *self.data_shape)
        scale = self.log_noise_scale.exp().unsqueeze(-1).expand(self.data_shape)
        return Independent(Normal(theta, scale), 2)

    def expected_log_likelihood(self, x: Tensor, q) -> Tensor | None:
        """Σ_ji log N(x_ji; m_j, σ_j²) − (N/2) Σ_j S_jj / σ_j² for a Gaussian q = N(m, S)."""
        moments = gaussian_moments(q)
        if moments is None:
            return None
        mean, cov = moments
        var = cov.diagonal(dim1=-2, dim2=-1)[..., 1:]  # Var θ_j, [B, J]
        inv_noise = (-2 * self.log_noise_scale).exp()
        return self.likelihood(mean).log_prob(x) - 0.5 * self.group_size * (var * inv_noise).sum(-1)

    def e_step(self, x: Tensor) -> tuple[MultivariateNormal, Tensor]:
        x = self.check_data(x)  # [B, J, N]
        J, N = self.data_shape
        s2 = self.hyper_scale.square()
        t2 = (2 * self.log_group_scale).exp()
        # The prior precision of (μ, θ) in closed form, from p(μ) Π_j p(θ_j | μ).
        prec = torch.zeros(J + 1, J + 1, dtype=x.dtype, device=x.device)
        prec[0, 0] = 1 / s2 + J / t2
        prec[0, 1:] = prec[1:, 0] = -1 / t2
        prec[1:, 1:] = torch.eye(J, dtype=x.dtype, device=x.device) / t2
        inv_noise = (-2 * self.log_noise_scale).exp()  # [J]
        zero = inv_noise.new_zeros(1)
        obs_eta = torch.cat([zero.expand(x.shape[0], 1), x.sum(-1) * inv_noise], -1)  # [B, J+1]
        return conjugate_gaussian(
            prior_precision=prec,
            prior_eta=torch.cat([(self.hyper_loc / s2).reshape(1), zero.expand(J)]),
            prior_quad=self.hyper_loc.square() / s2,
            prior_logdet=s2.log() + J * t2.log(),
            obs_precision=torch.diag(torch.cat([zero, N * inv_noise])),
            obs_eta=obs_eta,
            obs_quad=(x.square().sum(-1) * inv_noise).sum(-1),
            obs_logdet=2 * N * self.log_noise_scale.sum(),
            obs_dim=J * N,
        )

    @torch.no_grad()
    def m_step(self, x: Tensor, posterior: MultivariateNormal) -> None:
        """τ² and σ_j² set to their expected squared deviations under the posterior."""
        x = self.check_data(x)
        check_distribution(posterior, "posterior", batch_shape=(len(x),), event_shape=(self.num_groups + 1,),
                           kind=MultivariateNormal)  # fmt: skip
        mean, cov = posterior.mean, posterior.covariance_matrix  # [B, J+1], [B, J+1, J+1]
        mu, theta = mean[:, :1], mean[:, 1:]
        var = cov.diagonal(dim1=-2, dim2=-1)
        # E[(θ_j − μ)²] = (E θ_j − E μ)² + Var θ_j + Var μ − 2 Cov(μ, θ_j)
        dev = (theta - mu).square() + var[:, 1:] + var[:, :1] - 2 * cov[:, 0, 1:]
        self.log_group_scale.copy_(0.5 * dev.mean().log())
        if self.fit_noise:
            resid = (x - theta.unsqueeze(-1)).square().mean(-1) + var[:, 1:]  # [B, J]
            self.log_noise_scale.copy_(0.5 * resid.mean(0).log())

    def sample(self, n: int) -> tuple[Tensor, Tensor]:
        n = check_positive_int(n, "n")
        with torch.no_grad():
            z = self.prior().sample((n,))  # [n, J+1]
            sigma = self.log_noise_scale.exp().unsqueeze(-1)  # [J, 1]
            x = z[:, 1:].unsqueeze(-1) + sigma * torch.randn(n, *self.data_shape, dtype=z.dtype)
        return x, z


class MixturePrior(LatentModel):
    r"""A latent from a mixture of normals, observed with Gaussian noise: a posterior with several
    modes, in closed form.

    .. math:: z \sim \sum_k \pi_k\, \mathcal{N}(\mu_k, \mathrm{diag}\, s_k^2), \quad
              x \mid z \sim \mathcal{N}(z, \sigma^2 I), \quad
              p(z \mid x) = \sum_k w_k(x)\, \mathcal{N}\big(m_k(x), \mathrm{diag}\, v_k\big)

    with v_k = (s_k⁻² + σ⁻²)⁻¹, m_k = v_k (μ_k / s_k² + x / σ²) and w_k ∝ π_k N(x; μ_k, s_k² + σ²):
    each component is conjugate. The oracle for fitting a unimodal q to a multimodal posterior,
    where the divergence decides what q becomes (reverse KL: one mode; forward KL: both). Its
    parameters are fixed (buffers): it is a target, not a model to fit.

    Args:
        loc: μ, ``[K, D]``.
        scale: s, ``[K, D]`` or ``[K]`` (default ones).
        weights: π, ``[K]`` (default uniform).
        noise_scale: σ > 0.

    Example:
        >>> model = MixturePrior(torch.tensor([[-2.0], [2.0]]), noise_scale=1.0)
        >>> model.posterior(torch.zeros(1, 1)).mean
        tensor([[0.]])
    """

    def __init__(self, loc, scale=None, weights=None, noise_scale: float = 1.0):
        super().__init__()
        loc = as_data(loc, "loc", ndim=2).to(torch.get_default_dtype())
        K, D = loc.shape
        scale = torch.ones(K, D) if scale is None else as_data(scale, "scale", ndim=(1, 2))
        scale = scale.to(loc.dtype)
        if scale.dim() == 1 and scale.shape[0] == K:
            scale = scale.unsqueeze(-1).expand(K, D)
        if scale.shape != (K, D) or not (scale > 0).all():
            raise ValueError(f"scale must be positive, of shape [{K}, {D}] or [{K}]; received {list(scale.shape)}")
        weights = torch.full((K,), 1.0 / K) if weights is None else as_data(weights, "weights", ndim=1)
        if weights.shape != (K,) or (weights < 0).any() or abs(float(weights.sum()) - 1) > 1e-6:
            raise ValueError(f"weights must be {K} non-negative numbers summing to 1; received {weights.tolist()}")
        self.data_shape = (D,)
        self.register_buffer("loc", loc.clone())
        self.register_buffer("scale", scale.clone())
        self.register_buffer("log_weights", weights.to(loc.dtype).log())
        self.register_buffer("noise_scale", torch.tensor(_positive(noise_scale, "noise_scale"), dtype=loc.dtype))

    def prior(self):
        components = Independent(Normal(self.loc, self.scale), 1)
        return MixtureSameFamily(Categorical(logits=self.log_weights), components)

    def likelihood(self, z: Tensor) -> Independent:
        return Independent(Normal(z, self.noise_scale), 1)

    def _marginals(self, x: Tensor) -> Tensor:
        """log π_k N(x; μ_k, s_k² + σ²), ``[B, K]``."""
        spread = (self.scale.square() + self.noise_scale.square()).sqrt()  # [K, D]
        return self.log_weights + Independent(Normal(self.loc, spread), 1).log_prob(x.unsqueeze(-2))

    def log_evidence(self, x: Tensor) -> Tensor:
        x = self.check_data(x)
        return self._marginals(x).logsumexp(-1)

    def posterior(self, x: Tensor):
        x = self.check_data(x)  # [B, D]
        precision = self.scale.pow(-2) + self.noise_scale.pow(-2)  # [K, D]
        mean = (self.loc / self.scale.square() + x.unsqueeze(-2) / self.noise_scale.square()) / precision  # [B, K, D]
        components = Independent(Normal(mean, precision.rsqrt().expand_as(mean)), 1)
        return MixtureSameFamily(Categorical(logits=self._marginals(x)), components)

    def sample(self, n: int) -> tuple[Tensor, Tensor]:
        n = check_positive_int(n, "n")
        with torch.no_grad():
            z = self.prior().sample((n,))
            return self.likelihood(z).sample(), z
