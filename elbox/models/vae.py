"""The variational autoencoder: an MLP decoder p_θ(x | z) under a standard normal prior, with an
amortized encoder q_φ(z | x) as its guide."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Bernoulli, ContinuousBernoulli, Independent, Normal

from elbox._validation import check_number, check_positive_int
from elbox.distributions.flow import FLOW_TYPES, FlowDistribution, build_flow
from elbox.guides.amortized import Amortized, mlp
from elbox.guides.flow import FlowGuide
from elbox.models.base import LatentModel

__all__ = ["VAE"]

_DECODERS = ("bernoulli", "gaussian", "continuous_bernoulli")


class VAE(LatentModel):
    r"""A VAE: z ~ N(0, I), x | z ~ p_θ(x | z) with an MLP decoder; q_φ(z | x) = ``vae.guide``.

    .. math:: \mathcal{L}_\beta(x) = \mathbb{E}_{q_\phi(z|x)}[\log p_\theta(x \mid z)]
              - \beta\, \mathrm{KL}(q_\phi(z \mid x) \,\|\, \mathcal{N}(0, I))

    Decoders:

    - ``"bernoulli"``: logits, for binary data (binarize intensities first, or use
      ``"continuous_bernoulli"``, the normalized density on [0, 1], Loaiza-Ganem & Cunningham 2019);
    - ``"gaussian"``: N(μ_θ(z), σ² I) with σ² = ``observation_variance`` fixed, or learned per
      dimension with ``observation_variance="learned"``. A fixed σ² is the knob that trades
      reconstruction against regularization: the ELBO is −‖x − μ‖²/(2σ²) − KL + const, so a
      small σ² buys reconstruction with KL (a high rate), a large σ² the reverse.

    ``beta`` weights the KL in the *training* objective (β-VAE, Higgins et al. 2017);
    every bound elbox reports stays the true ELBO (β = 1). ``deterministic_encoder=True`` makes
    the guide a point mass: a plain autoencoder, trained on its reconstruction, whose KL to the
    prior and ELBO are reported as +∞ and −∞.

    With ``hidden=()`` and a Gaussian decoder, the decoder is linear and the model is
    probabilistic PCA, whose evidence and posterior are exact (the tests use this).

    Args:
        data_dim: D, the size of a (flattened) data point.
        latent_dim: The size of z.
        hidden: Hidden widths of the encoder (the decoder mirrors them).
        activation: ``"tanh"``, ``"relu"``, ``"elu"``, ``"gelu"`` or ``"softplus"``.
        decoder: ``"bernoulli"``, ``"gaussian"`` or ``"continuous_bernoulli"``.
        observation_variance: σ² for the Gaussian decoder: a positive number or ``"learned"``.
        beta: The KL weight of the training objective.
        deterministic_encoder: A plain autoencoder's encoder.
        guide: ``"gaussian"`` (the amortized diagonal Gaussian) or ``"flow"`` (a
            :class:`~elbox.guides.FlowGuide`: that Gaussian followed by an inverse autoregressive
            flow conditioned on the encoder's features); or a dict like the config's ``[guide]``
            table: ``{"type": "flow", "flow": "maf" | "nsf" | "realnvp", "transforms": 3,
            "hidden": [64, 64], "context_dim": 2 * latent_dim}``.
        prior: ``"normal"`` (N(0, I)) or ``"flow"`` (a learned flow density over z, as in
            zuko's VAE tutorial); or a dict ``{"type": "flow", "flow": …, "transforms": …,
            "hidden": …}``. With a flow on either side the KL is a Monte Carlo estimate.

    References:
        Auto-Encoding Variational Bayes (Kingma & Welling, 2014), https://arxiv.org/abs/1312.6114

    Example:
        >>> vae = VAE(64, 2, hidden=(128,), decoder="gaussian", observation_variance=0.1)
        >>> terms = elbox.elbo(vae, vae.guide, torch.rand(16, 64))
    """

    def __init__(
        self,
        data_dim: int,
        latent_dim: int,
        hidden=(200, 200),
        activation: str = "tanh",
        decoder: str = "bernoulli",
        observation_variance: float | str = 1.0,
        beta: float = 1.0,
        deterministic_encoder: bool = False,
        guide="gaussian",
        prior="normal",
    ):
        super().__init__()
        D = check_positive_int(data_dim, "data_dim")
        L = check_positive_int(latent_dim, "latent_dim")
        if isinstance(hidden, int | str) or not hasattr(hidden, "__iter__"):
            raise TypeError(f"hidden must be a sequence of layer widths, such as (200, 200); received {hidden!r}")
        hidden = [check_positive_int(h, "hidden") for h in hidden]
        if decoder not in _DECODERS:
            raise ValueError(f"decoder must be one of {_DECODERS}; received {decoder!r}")
        beta = check_number(beta, "beta", minimum=0.0)
        self.data_shape = (D,)
        self.decoder_type = decoder
        self.beta = float(beta)
        guide, prior = _flow_spec(guide, "guide", "gaussian", L), _flow_spec(prior, "prior", "normal", L)
        if guide["type"] == "flow" and deterministic_encoder:
            raise ValueError("guide='flow' is a distribution over z; deterministic_encoder=True asks for a point")
        self.guide_spec, self.prior_spec = guide, prior
        if guide["type"] == "flow":
            C = guide["context_dim"]
            encoder = mlp([D, *hidden, 2 * L + C], activation)
            self.guide = FlowGuide(L, encoder=encoder, context_dim=C, flow=guide["flow"],
                                   transforms=guide["transforms"], hidden=guide["hidden"])  # fmt: skip
        else:
            out = L if deterministic_encoder else 2 * L
            self.guide = Amortized(mlp([D, *hidden, out], activation), L, deterministic=deterministic_encoder)
        self.decoder = mlp([L, *reversed(hidden), D], activation)
        self.register_buffer("_zero", torch.zeros(L, dtype=torch.get_default_dtype()))
        # a flow over z in place of N(0, I), in the density direction: log p(z) in one pass
        self.prior_flow = (build_flow(prior["flow"], L, 0, prior["transforms"], prior["hidden"])
                           if prior["type"] == "flow" else None)  # fmt: skip
        self.learned_variance = observation_variance == "learned"
        if decoder == "gaussian":
            if self.learned_variance:
                self.log_variance = nn.Parameter(torch.zeros(D, dtype=torch.get_default_dtype()))
            else:
                value = None if isinstance(observation_variance, str) else check_number(
                    observation_variance, "observation_variance", only_type=True)  # fmt: skip
                if value is None or not (value > 0 and math.isfinite(value)):
                    raise ValueError(
                        "observation_variance must be a positive number or 'learned'; received "
                        + repr(observation_variance)
                    )
                observation_variance = value
                self.register_buffer("log_variance", torch.full((D,), math.log(observation_variance)))
        elif observation_variance not in (1.0, "learned"):
            raise ValueError(f"observation_variance applies to decoder='gaussian' only; this VAE's is {decoder!r}")

    @property
    def latent_dim(self) -> int:
        return self._zero.shape[0]

    @property
    def observation_variance(self) -> Tensor | None:
        """σ² per dimension ``[D]`` (Gaussian decoder), else None."""
        return self.log_variance.exp() if self.decoder_type == "gaussian" else None

    # The model.

    def prior(self):
        if self.prior_flow is not None:
            return FlowDistribution(self.prior_flow.transform(), self.prior_flow.base())
        return Independent(Normal(self._zero, torch.ones_like(self._zero), validate_args=False), 1, validate_args=False)

    def likelihood(self, z: Tensor):
        out = self.decoder(z)  # [*S, B, D]
        if self.decoder_type == "bernoulli":
            return Independent(Bernoulli(logits=out, validate_args=False), 1)
        if self.decoder_type == "continuous_bernoulli":
            return Independent(ContinuousBernoulli(logits=out, validate_args=False), 1)
        return Independent(Normal(out, (0.5 * self.log_variance).exp(), validate_args=False), 1)

    def log_likelihood(self, x: Tensor, z: Tensor) -> Tensor:
        """log p_θ(x | z), ``[*S, B]``, in fused closed forms (no distribution objects)."""
        out = self.decoder(z)  # [*S, B, D]
        if self.decoder_type == "gaussian":
            log_var = self.log_variance
            sq = (x - out).square() * (-log_var).exp()
            return -0.5 * (sq + log_var + math.log(2 * math.pi)).sum(-1)
        target = x.expand_as(out)
        log_p = -F.binary_cross_entropy_with_logits(out, target, reduction="none").sum(-1)
        if self.decoder_type == "continuous_bernoulli":
            log_p = log_p + ContinuousBernoulli(logits=out, validate_args=False)._cont_bern_log_norm().sum(-1)
        return log_p

    def reconstruct(self, x: Tensor) -> Tensor:
        """The decoder's mean at the encoder's mean: E[x | z = E_q[z | x]], ``[B, D]`` (for a flow
        guide, the mean of 64 draws)."""
        return self.likelihood(self.latent_mean(x)).mean

    def latent_mean(self, x: Tensor) -> Tensor:
        """E_q[z | x], ``[B, L]``: q's closed form, or for a flow guide the mean of 64 draws."""
        x = self.check_data(x)
        q = self.guide(x)
        return q.sample((64,)).mean(0) if isinstance(q, FlowDistribution) else q.mean

    def sample(self, n: int) -> tuple[Tensor, Tensor]:
        n = check_positive_int(n, "n")
        with torch.no_grad():
            z = self.prior().sample((n,))  # [n, L]
            return self.likelihood(z).sample(), z

    def _check_data(self, x) -> Tensor:
        x = super()._check_data(x)
        if self.decoder_type == "bernoulli" and not ((x == 0) | (x == 1)).all():
            raise ValueError(
                f"the Bernoulli decoder needs binary data; x holds values in [{float(x.min()):.3g}, "
                f"{float(x.max()):.3g}] that are not all 0 or 1. Binarize it (elbox.data.binarize, or "
                "dynamic binarization in fit), or use decoder='continuous_bernoulli' for intensities in [0, 1]"
            )
        if self.decoder_type == "continuous_bernoulli" and ((x < 0) | (x > 1)).any():
            raise ValueError(
                f"the continuous Bernoulli decoder needs data in [0, 1]; received values in "
                f"[{float(x.min()):.3g}, {float(x.max()):.3g}]"
            )
        return x

    def extra_repr(self) -> str:
        extra = ""
        if self.decoder_type == "gaussian":
            extra = ", observation_variance=" + (
                "'learned'" if self.learned_variance else f"{float(self.log_variance[0].exp()):g}"
            )
        for name, spec, default in (("guide", self.guide_spec, "gaussian"), ("prior", self.prior_spec, "normal")):
            if spec["type"] != default:
                extra += f", {name}={spec['type']!r} ({spec['flow']}, {spec['transforms']} transforms)"
        return (
            f"data_dim={self.data_shape[0]}, latent_dim={self.latent_dim}, decoder={self.decoder_type!r}{extra}, "
            f"beta={self.beta:g}"
        )


_FLOW_DEFAULTS = {"flow": "maf", "transforms": 3, "hidden": [64, 64]}


def _flow_spec(value, name: str, default: str, latent_dim: int) -> dict:
    """``guide=``/``prior=`` as a full table: a type name, or a dict like the config's ``[guide]``."""
    if isinstance(value, str):
        value = {"type": value}
    if not isinstance(value, dict):
        raise TypeError(f"{name} must be {default!r}, 'flow' or a dict such as {{'type': 'flow', 'transforms': 4}}; "
                        f"received {value!r}")  # fmt: skip
    keys = {"type", *_FLOW_DEFAULTS} | ({"context_dim"} if name == "guide" else set())
    unknown = sorted(set(value) - keys)
    if unknown:
        raise ValueError(f"{name} has no option {unknown[0]!r}; its options are {sorted(keys)}")
    spec = {"type": value.get("type", default), **_FLOW_DEFAULTS, **value}
    if spec["type"] not in (default, "flow"):
        raise ValueError(f"{name} type must be {default!r} or 'flow'; received {spec['type']!r}")
    if spec["flow"] not in FLOW_TYPES:
        raise ValueError(f"{name} flow must be one of {FLOW_TYPES}; received {spec['flow']!r}")
    spec["transforms"] = check_positive_int(spec["transforms"], f"{name} transforms")
    spec["hidden"] = [check_positive_int(h, f"{name} hidden") for h in spec["hidden"]]
    if name == "guide":
        spec["context_dim"] = check_positive_int(spec.get("context_dim", 2 * latent_dim), "guide context_dim",
                                                 minimum=0)  # fmt: skip
    return spec
