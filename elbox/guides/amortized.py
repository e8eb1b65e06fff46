"""Amortized guides: an encoder network maps each x to the parameters of its q(z | x)."""

from __future__ import annotations

from torch import Tensor, nn
from torch.distributions import Independent, Normal

from elbox._validation import check_bool, check_positive_int, check_sizes, describe
from elbox.distributions.point_mass import PointMass
from elbox.guides.base import Guide
from elbox.precision import network

__all__ = ["Amortized", "mlp"]

_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU, "softplus": nn.Softplus}


def mlp(sizes: list[int], activation: str = "tanh") -> nn.Sequential:
    """Linear layers between consecutive ``sizes``, with ``activation`` between them (none after
    the last)."""
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}; received {activation!r}")
    sizes = check_sizes(sizes, "sizes", minimum_length=2)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(_ACTIVATIONS[activation]())
    return nn.Sequential(*layers)

#: The clamp on the encoder's log σ (|log σ| ≤ 15): one constant, which the fused VAE step reads too.
LOG_SCALE_BOUND = 15.0


class Amortized(Guide):
    r"""q_φ(z | x) = N(μ_φ(x), diag σ_φ(x)²), one encoder shared by every x (Kingma & Welling).

    With ``deterministic=True`` the encoder gives a point: q = δ(z − f_φ(x)), a plain
    autoencoder's code, whose KL to the prior (and so whose ELBO) is infinite.

    Args:
        encoder: A module mapping ``[B, *data_shape]`` to ``[B, 2 D]`` (means and log-scales;
            ``[B, D]`` when deterministic).
        latent_dim: D.
        deterministic: A point mass instead of a Gaussian.
    """

    def __init__(self, encoder: nn.Module, latent_dim: int, deterministic: bool = False):
        super().__init__()
        if not isinstance(encoder, nn.Module):
            raise TypeError(f"encoder must be an nn.Module mapping x to [B, 2 * latent_dim]; received "
                            f"{describe(encoder)}")  # fmt: skip
        self.encoder = encoder
        self.latent_dim = check_positive_int(latent_dim, "latent_dim")
        self.deterministic = check_bool(deterministic, "deterministic")

    def forward(self, x: Tensor, index: Tensor | None = None):
        out = network(self.encoder, x)  # [B, 2D] or [B, D]
        D = self.latent_dim
        width = D if self.deterministic else 2 * D
        if out.shape[-1:] != (width,):
            raise ValueError(f"the encoder must return [B, {'latent_dim' if self.deterministic else '2 * latent_dim'}] "
                             f"= [B, {width}] (latent_dim = {D}); it returned {describe(out)}")  # fmt: skip
        if self.deterministic:
            return PointMass(out)
        loc, log_scale = out[..., :D], out[..., D:]
        # the scale is an exp, so positive: torch's argument checks (each a device sync) are skipped
        scale = log_scale.clamp(-LOG_SCALE_BOUND, LOG_SCALE_BOUND).exp()
        return Independent(Normal(loc, scale, validate_args=False), 1, validate_args=False)

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}, deterministic={self.deterministic}"
