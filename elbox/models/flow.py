r"""A normalizing flow as a density over the data: log p(x) exact, no latent to integrate out, so
no gap; and, for discrete data, uniform dequantization, whose small gap elbox reports as such."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Independent, Uniform

from elbox._validation import check_number, check_positive_int
from elbox.distributions.flow import FLOW_TYPES, build_flow
from elbox.guides.base import Guide
from elbox.models.base import LatentModel

__all__ = ["FlowDensity", "UniformDequantization"]


class FlowDensity(LatentModel):
    r"""p_θ(x) by a normalizing flow (zuko's MAF, NSF or RealNVP) over the D data dimensions.

    For **continuous data** log p_θ(x) is computed exactly by the change of variables,
    :math:`\log p(x) = \log \mathcal{N}(f(x); 0, I) + \log|\det \partial f / \partial x|`, one
    network pass: there is no latent variable to integrate out, so no bound, and the gap is
    zero by construction. It is trained by the ``"max_likelihood"`` objective and
    :func:`~elbox.evidence_report` reports log p(x) with every bound equal to it.

    For **discrete data** (pixels on a grid of step w, such as the digits' 17 levels, w = 1/16)
    a density would put infinite likelihood on the grid points. Uniform dequantization (Theis et
    al. 2016) models the probability of each cell instead,
    :math:`P(x) = \int_{[0, w)^D} p_\theta(x + u)\, du`. elbox writes this as what it is, a
    latent-variable model with a uniform latent u: p(u) = U[0, w)ᴰ and
    p(x | u) = p_θ(x + u) wᴰ, so that p(x) = P(x). Its guide
    (:class:`UniformDequantization`) is q(u | x) = p(u), its ELBO is the usual dequantized
    objective E_u[log p_θ(x + u)] + D log w (trained by ``"elbo"``), and the report gives the
    dequantization gap log P(x) − ELBO with its errors, from importance sampling over u.
    Bits per dimension are −log P(x) / (D log 2).

    Args:
        data_dim: D.
        flow: ``"maf"``, ``"nsf"`` or ``"realnvp"``.
        transforms: The number of stacked transformations.
        hidden: The hidden widths of each transformation's network.
        dequantize: None for continuous data, or the grid step w of discrete data.

    References:
        Masked Autoregressive Flow for Density Estimation (Papamakarios et al., 2017),
        https://arxiv.org/abs/1705.07057; A note on the evaluation of generative models (Theis
        et al., 2016), https://arxiv.org/abs/1511.01844

    Example:
        >>> density = FlowDensity(2, flow="maf", transforms=2, hidden=(16,))
        >>> density.log_evidence(torch.randn(5, 2)).shape
        torch.Size([5])
    """

    #: The latent of a dequantized flow is noise inside a grid cell, not a code of x: the report
    #: counts no active units for it.
    has_latent_code = False

    #: The density's defaults (a flow over the data is deeper and wider than one over a latent);
    #: ``[model] type = "flow"`` reads them here.
    DEFAULTS = {"flow": "maf", "transforms": 5, "hidden": (128, 128)}

    def __init__(self, data_dim: int, flow: str = DEFAULTS["flow"], transforms: int = DEFAULTS["transforms"],
                 hidden=DEFAULTS["hidden"],
                 dequantize: float | None = None):  # fmt: skip
        super().__init__()
        D = check_positive_int(data_dim, "data_dim")
        if flow not in FLOW_TYPES:
            raise ValueError(f"flow must be one of {FLOW_TYPES}; received {flow!r}")
        self.data_shape = (D,)
        self.kind, self.transforms = flow, check_positive_int(transforms, "transforms")
        self.flow = build_flow(flow, D, 0, self.transforms, hidden)
        width = None if dequantize is None else check_number(dequantize, "dequantize", minimum=0.0, strict=True)
        if width is not None and not math.isfinite(width):
            raise ValueError(f"dequantize must be a finite grid step; received {dequantize!r}")
        self.dequantize = width
        self.register_buffer("_zero", torch.zeros(D, dtype=torch.get_default_dtype()))

    @property
    def latent_free(self) -> bool:
        """True for continuous data: log p(x) is exact and there is no latent variable."""
        return self.dequantize is None

    @property
    def has_exact_evidence(self) -> bool:
        return self.latent_free

    def density(self):
        """The flow's distribution over x, ``[D]``."""
        return self.flow()

    def log_density(self, y: Tensor) -> Tensor:
        """log p_θ(y) of the continuous density at any ``y`` ``[*, D]``."""
        return self.flow().log_prob(y)

    def log_evidence(self, x: Tensor) -> Tensor:
        if not self.latent_free:
            raise NotImplementedError(
                "a dequantized FlowDensity's log P(x) is an integral over each grid cell: estimate it with "
                "elbox.log_evidence(model, x, guide=UniformDequantization(model)) or read evidence_report"
            )
        return self.log_density(self.check_data(x))

    # The dequantized model: a uniform latent u in each cell.

    def prior(self) -> Independent:
        if self.latent_free:
            raise TypeError("a FlowDensity over continuous data has no latent variable (so no prior)")
        w = torch.full_like(self._zero, self.dequantize)
        return Independent(Uniform(torch.zeros_like(self._zero), w, validate_args=False), 1, validate_args=False)

    def log_likelihood(self, x: Tensor, z: Tensor) -> Tensor:
        """log p(x | u) = log p_θ(x + u) + D log w, ``[*S, B]``."""
        return self.log_density(x + z) + self.data_shape[0] * math.log(self.dequantize)

    def sample(self, n: int) -> tuple[Tensor, Tensor]:
        """``n`` points and their latents: for continuous data the base variable f(x); for
        dequantized data the cell's corner x and the offset u inside it."""
        n = check_positive_int(n, "n")
        with torch.no_grad():
            y = self.flow().sample((n,))
            if self.latent_free:
                return y, self.flow().transform(y)
            x = torch.floor(y / self.dequantize) * self.dequantize
            return x, y - x

    def _check_data(self, x, name: str = "x") -> Tensor:
        x = super()._check_data(x, name)
        if self.dequantize is not None:
            cells = x / self.dequantize
            off = (cells - cells.round()).abs()
            if bool((off > 1e-4).any()):
                bad = x.flatten()[off.flatten().argmax()].item()
                raise ValueError(
                    f"dequantize = {self.dequantize:g} needs data on a grid of that step (multiples of it); "
                    f"{name} holds "
                    f"{bad:.6g}, which is not: give the data's own step (1/16 for the digits, 1/255 for MNIST) or "
                    "dequantize=None for continuous data"
                )
            x = cells.round() * self.dequantize
        return x

    def extra_repr(self) -> str:
        extra = "" if self.dequantize is None else f", dequantize={self.dequantize:g}"
        return f"data_dim={self.data_shape[0]}, flow={self.kind!r}, transforms={self.transforms}{extra}"


class UniformDequantization(Guide):
    """q(u | x) = U[0, w)ᴰ, the prior of a dequantized :class:`FlowDensity`: its ELBO is the
    dequantized log-likelihood E_u[log p_θ(x + u)] + D log w. No parameters, so nothing to refine.

    Args:
        model: The dequantized :class:`FlowDensity` (held by reference).
    """

    #: Nothing to optimize per point: the report skips the gap's split.
    refinable = False

    def __init__(self, model: FlowDensity):
        super().__init__()
        if getattr(model, "dequantize", None) is None:
            raise TypeError("UniformDequantization needs a FlowDensity with dequantize set (the grid step)")
        object.__setattr__(self, "model", model)

    def forward(self, x: Tensor, index: Tensor | None = None) -> Independent:
        return self.model.prior().expand(torch.Size([x.shape[0]]))

    def extra_repr(self) -> str:
        return f"width={self.model.dequantize:g}"
