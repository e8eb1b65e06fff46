r"""A normalizing-flow guide: a diagonal Gaussian followed by an inverse autoregressive flow
(Kingma et al., 2016), amortized by an encoder, global, or one per data point."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import Independent, Normal

from elbox._validation import check_number, check_positive_int, describe
from elbox.distributions.flow import FLOW_DEFAULTS, FLOW_TYPES, FlowDistribution, build_flow
from elbox.guides.base import Guide

__all__ = ["FlowGuide"]


class FlowGuide(Guide):
    r"""q(z | x): z₀ ~ N(μ, diag σ²), then K invertible maps conditioned on features h,
    z = f_K ∘ … ∘ f_1(z₀; h), with

    .. math:: \log q(z \mid x) = \log \mathcal{N}(z_0; \mu, \sigma^2)
              - \sum_k \log\left|\det \partial f_k / \partial z_{k-1}\right|.

    The encoding e = [μ, log σ, h] (size 2D + C) comes from one of three places:

    - an ``encoder`` (amortized: ``encoder(x)`` is ``[B, 2D + C]``), the VAE's case;
    - one parameter shared by every x (global: no encoder, ``num_points=None``), for a model
      with one latent for the whole data set (the coin's bias);
    - one parameter per data point (local: ``num_points=P``), which is also what
      :func:`~elbox.inference.refine` makes of an amortized flow guide to measure its
      amortization gap: the family is every q this flow gives for some encoding.

    The flows run in the inverse-autoregressive direction (for ``"maf"`` and ``"nsf"``): a draw
    and its log-density come out of one network pass (``rsample_and_log_prob``), which is what
    every bound asks of q; scoring a z that q did not draw costs one pass per dimension.
    With its maps at the identity it is the Gaussian guide, so it can only do better.

    Args:
        latent_dim: D.
        encoder: A module mapping ``[B, *data_shape]`` to ``[B, 2D + C]``, or None.
        context_dim: C, the features h the flow is conditioned on (0: the flow is the same for
            every x and only the Gaussian moves).
        flow: ``"maf"`` (affine), ``"nsf"`` (splines) or ``"realnvp"`` (affine coupling).
        transforms: K.
        hidden: The hidden widths of each map's network.
        num_points: None for a global or amortized q, or P for one encoding per data point.
        init_scale: The initial σ of a global or local guide.
        shared_flow: A flow module to use, held by reference rather than owned (a refined local
            copy optimizes only its encodings).

    References:
        Improved Variational Inference with Inverse Autoregressive Flow (Kingma et al., 2016),
        https://arxiv.org/abs/1606.04934
    """

    def __init__(self, latent_dim: int, *, encoder: nn.Module | None = None, context_dim: int = 0,
                 flow: str = FLOW_DEFAULTS["flow"], transforms: int = FLOW_DEFAULTS["transforms"],
                 hidden=FLOW_DEFAULTS["hidden"], num_points: int | None = None,
                 init_scale: float = 1.0, shared_flow: nn.Module | None = None):  # fmt: skip
        super().__init__(num_points)
        D = self.latent_dim = check_positive_int(latent_dim, "latent_dim")
        self.context_dim = check_positive_int(context_dim, "context_dim", minimum=0)
        if flow not in FLOW_TYPES:
            raise ValueError(f"flow must be one of {FLOW_TYPES}; received {flow!r}")
        if encoder is not None and num_points is not None:
            raise ValueError("a FlowGuide is amortized (encoder=) or local (num_points=), not both")
        if encoder is not None and not isinstance(encoder, nn.Module):
            raise TypeError(f"encoder must be an nn.Module mapping x to [B, 2 * latent_dim + context_dim]; received "
                            f"{describe(encoder)}")  # fmt: skip
        init_scale = check_number(init_scale, "init_scale", minimum=0.0, strict=True)
        self.kind, self.transforms = flow, check_positive_int(transforms, "transforms")
        self.encoder = encoder
        if shared_flow is None:
            self.flow = build_flow(flow, D, self.context_dim, self.transforms, hidden, sample_fast=True)
        else:
            object.__setattr__(self, "flow", shared_flow)  # not a submodule: not optimized, not saved
        if encoder is None:
            e = torch.cat([torch.zeros(D), torch.full((D,), math.log(init_scale)), torch.zeros(self.context_dim)])
            lead = () if num_points is None else (self.num_points,)
            self.encoding = nn.Parameter(e.expand(*lead, e.numel()).clone())

    @property
    def encoding_size(self) -> int:
        """2D + C: the size of e = [μ, log σ, h]."""
        return 2 * self.latent_dim + self.context_dim

    def encode(self, x: Tensor, index: Tensor | None = None) -> Tensor:
        """The encodings e = [μ, log σ, h] of a batch, ``[B, 2D + C]``."""
        if self.encoder is None:
            return self._rows(self.encoding, x, index)
        e = self.encoder(x)
        if e.dim() != 2 or e.shape[0] != x.shape[0] or e.shape[1] != self.encoding_size:
            raise ValueError(
                f"the flow guide's encoder must return [B, 2 * latent_dim + context_dim] = [{x.shape[0]}, "
                f"{self.encoding_size}] (latent_dim = {self.latent_dim}, context_dim = {self.context_dim}); it "
                f"returned {describe(e)}: make its last layer's width {self.encoding_size}, or set context_dim "
                "to match it"
            )
        return e

    def distribution(self, e: Tensor) -> FlowDistribution:
        """q for encodings ``e`` ``[B, 2D + C]``."""
        D = self.latent_dim
        loc, log_scale, h = e[..., :D], e[..., D : 2 * D], e[..., 2 * D :]
        base = Independent(Normal(loc, log_scale.clamp(-15.0, 15.0).exp(), validate_args=False), 1,
                           validate_args=False)  # fmt: skip
        return FlowDistribution(self.flow.transform(h if self.context_dim else None), base)

    def forward(self, x: Tensor, index: Tensor | None = None) -> FlowDistribution:
        return self.distribution(self.encode(x, index))

    def local_guide(self, x: Tensor, index: Tensor | None = None) -> FlowGuide:
        """One q per point of ``x``, started at this guide's, sharing (not copying) its flow:
        what :func:`~elbox.inference.refine` optimizes."""
        with torch.no_grad():
            e = self.encode(x, index)
        local = FlowGuide(self.latent_dim, context_dim=self.context_dim, flow=self.kind, transforms=self.transforms,
                          num_points=len(x), shared_flow=self.flow)  # fmt: skip
        local = local.to(dtype=e.dtype, device=e.device)
        with torch.no_grad():
            local.encoding.copy_(e)
        return local

    def extra_repr(self) -> str:
        where = "amortized" if self.encoder is not None else ("global" if self.num_points is None else
                                                                f"local, num_points={self.num_points}")  # fmt: skip
        return (f"latent_dim={self.latent_dim}, context_dim={self.context_dim}, flow={self.kind!r}, "
                f"transforms={self.transforms}, {where}")  # fmt: skip
