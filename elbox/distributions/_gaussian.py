"""The conjugate linear-Gaussian update shared by the Gaussian models.

For a prior z ~ N(m, S) and observations y = H z + ε, ε ~ N(0, R), the posterior precision
and information vector are Λ = S⁻¹ + Hᵀ R⁻¹ H and η = S⁻¹ m + Hᵀ R⁻¹ y, and completing the
square in z gives the evidence

    log p(y) = −½ (yᵀR⁻¹y + mᵀS⁻¹m − ηᵀΛ⁻¹η) − ½ log|R| − ½ log|S| − ½ log|Λ| − (M/2) log 2π.

Models pass the terms in whatever form their structure makes cheap (sufficient statistics,
Woodbury), so that nothing of size M × M is ever formed.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Independent, MultivariateNormal, Normal

__all__ = [
    "conjugate_gaussian",
    "covariance_to_raw",
    "gaussian_moments",
    "raw_to_tril",
    "safe_cholesky",
    "tril_inverse",
    "tril_logdet",
    "tril_to_raw",
]


def safe_cholesky(matrix: Tensor, name: str, hint: str = "") -> Tensor:
    """The Cholesky factor of ``matrix``, or a ValueError that names it and suggests a fix."""
    L, info = torch.linalg.cholesky_ex(matrix)
    if bool((info != 0).any()):
        bad = [int(i) for i in (info != 0).nonzero().flatten()]
        where = f" (batch entries {bad[:5]})" if matrix.dim() > 2 else ""
        raise ValueError(
            f"{name} is not positive definite{where}. {hint}".rstrip()
        )
    return L


def conjugate_gaussian(
    prior_precision: Tensor,
    prior_eta: Tensor,
    prior_quad: Tensor,
    prior_logdet: Tensor,
    obs_precision: Tensor,
    obs_eta: Tensor,
    obs_quad: Tensor,
    obs_logdet: Tensor,
    obs_dim: int,
) -> tuple[MultivariateNormal, Tensor]:
    """The exact posterior N(Λ⁻¹η, Λ⁻¹) and log-evidence of a linear-Gaussian model.

    Args:
        prior_precision: S⁻¹, ``[D, D]``.
        prior_eta: S⁻¹ m, ``[D]``.
        prior_quad: mᵀ S⁻¹ m, a scalar.
        prior_logdet: log |S|, a scalar.
        obs_precision: Hᵀ R⁻¹ H, ``[D, D]`` (shared by the batch) or ``[B, D, D]``.
        obs_eta: Hᵀ R⁻¹ y, ``[B, D]``.
        obs_quad: yᵀ R⁻¹ y, ``[B]``.
        obs_logdet: log |R|, a scalar or ``[B]``.
        obs_dim: M, the number of scalar observations per data point.

    Returns:
        The posterior (batch ``[B]``, event ``[D]``) and log p(y), ``[B]``.
    """
    precision = prior_precision + obs_precision  # [D, D] or [B, D, D]
    L = safe_cholesky(precision, "the posterior precision")
    eta = prior_eta + obs_eta  # [B, D]
    # Λ⁻¹η through the factor: u = L⁻¹η, so ηᵀΛ⁻¹η = |u|² and the mean is L⁻ᵀu.
    if L.dim() == 2:  # one precision for the batch: one solve with B right-hand sides
        u = torch.linalg.solve_triangular(L, eta.mT, upper=False)  # [D, B]
        loc = torch.linalg.solve_triangular(L.mT, u, upper=True).mT  # [B, D]
        u = u.mT
    else:
        u = torch.linalg.solve_triangular(L, eta.unsqueeze(-1), upper=False).squeeze(-1)  # [B, D]
        loc = torch.linalg.solve_triangular(L.mT, u.unsqueeze(-1), upper=True).squeeze(-1)
    logdet_precision = tril_logdet(L)
    log_evidence = (
        -0.5 * (obs_quad + prior_quad - u.square().sum(-1))
        - 0.5 * obs_logdet
        - 0.5 * prior_logdet
        - 0.5 * logdet_precision
        - 0.5 * obs_dim * math.log(2 * math.pi)
    )
    # The posterior's scale_tril is L⁻ᵀ up to an orthogonal factor; torch wants a lower one,
    # so it is taken from the covariance Λ⁻¹ = L⁻ᵀ L⁻¹.
    L_inv = tril_inverse(L)
    covariance = L_inv.mT @ L_inv
    scale_tril = torch.linalg.cholesky(covariance)
    # Valid by construction (a Cholesky factor), so torch's check, which would scan the
    # batch-expanded [B, D, D] factor on every call, is skipped.
    posterior = MultivariateNormal(
        loc, scale_tril=scale_tril.expand(loc.shape + loc.shape[-1:]), validate_args=False
    )
    return posterior, log_evidence


def gaussian_moments(q) -> tuple[Tensor, Tensor] | None:
    """The mean ``[B, D]`` and covariance ``[B, D, D]`` of a Gaussian q, or None if q is not one."""
    if isinstance(q, MultivariateNormal):
        return q.mean, q.covariance_matrix
    if isinstance(q, Independent) and isinstance(q.base_dist, Normal) and q.reinterpreted_batch_ndims == 1:
        return q.base_dist.loc, torch.diag_embed(q.base_dist.scale.square())
    return None


def tril_to_raw(scale_tril: Tensor) -> Tensor:
    """The unconstrained form of a lower-triangular factor: its log-diagonal on the diagonal."""
    raw = scale_tril.tril(-1)
    return raw + torch.diag_embed(scale_tril.diagonal(dim1=-2, dim2=-1).log())


def raw_to_tril(raw: Tensor) -> Tensor:
    """Inverse of :func:`tril_to_raw`: a lower-triangular factor with a positive diagonal."""
    return raw.tril(-1) + torch.diag_embed(raw.diagonal(dim1=-2, dim2=-1).exp())


def covariance_to_raw(covariance: Tensor, name: str, hint: str = "") -> Tensor:
    """Checks a covariance is symmetric positive definite and returns its unconstrained factor."""
    if covariance.shape[-1] != covariance.shape[-2]:
        raise ValueError(f"{name} must be square; received shape {tuple(covariance.shape)}")
    if not torch.allclose(covariance, covariance.mT, atol=1e-8, rtol=1e-6):
        raise ValueError(f"{name} must be symmetric")
    return tril_to_raw(safe_cholesky(covariance, name, hint))


def tril_inverse(scale_tril: Tensor) -> Tensor:
    """L⁻¹ for a lower-triangular L (batched)."""
    eye = torch.eye(scale_tril.shape[-1], dtype=scale_tril.dtype, device=scale_tril.device)
    return torch.linalg.solve_triangular(scale_tril, eye.expand_as(scale_tril), upper=False)


def tril_logdet(scale_tril: Tensor) -> Tensor:
    """log |L Lᵀ| for a lower-triangular L (batched)."""
    return 2 * scale_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
