"""The variational autoencoder: an MLP decoder p_θ(x | z) under a standard normal prior, with an
amortized encoder q_φ(z | x) as its guide."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Bernoulli, ContinuousBernoulli, Independent, Normal

from elbox._validation import as_data, check_bool, check_number, check_positive_int
from elbox.distributions.flow import FLOW_DEFAULTS, FLOW_TYPES, FlowDistribution, build_flow
from elbox.distributions.one_hot import OneHot
from elbox.guides.amortized import _ACTIVATIONS, Amortized, mlp
from elbox.guides.discrete import Bernoulli as BernoulliGuide
from elbox.guides.discrete import OneHotCategorical as CategoricalGuide
from elbox.guides.flow import FlowGuide
from elbox.models._conv import IMAGE_SIZE, ConvDecoder, ConvEncoder, image_shape
from elbox.models.base import LatentModel
from elbox.precision import network

__all__ = ["VAE", "DiscreteVAE"]

_DECODERS = ("bernoulli", "gaussian", "continuous_bernoulli")


class _Decoded(LatentModel):
    """What every VAE shares: an MLP decoder p_θ(x | z) over flat data ``[B, D]`` (Bernoulli,
    Gaussian or continuous Bernoulli), its fused log-likelihood, and the data's checks."""

    def _init_decoder(self, latent_size: int, D: int, hidden: list[int], activation: str, decoder: str,
                      observation_variance, network: nn.Module | None = None) -> None:  # fmt: skip
        if decoder not in _DECODERS:
            raise ValueError(f"decoder must be one of {_DECODERS}; received {decoder!r}")
        self.data_shape = (D,)
        self.decoder_type = decoder
        self.decoder = mlp([latent_size, *reversed(hidden), D], activation) if network is None else network
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
                self.register_buffer("log_variance", torch.full((D,), math.log(value)))
        elif observation_variance not in (1.0, "learned"):
            raise ValueError(f"observation_variance applies to decoder='gaussian' only; this VAE's is {decoder!r}")

    def _decode(self, z: Tensor) -> Tensor:
        """The decoder's output for z ``[*S, B, *latent]``: ``[*S, B, D]``."""
        return network(self.decoder, z)

    @property
    def observation_variance(self) -> Tensor | None:
        """σ² per dimension ``[D]`` (Gaussian decoder), else None."""
        return self.log_variance.exp() if self.decoder_type == "gaussian" else None

    def likelihood(self, z: Tensor):
        latent = tuple(self.latent_shape) if hasattr(self, "latent_shape") else (self.latent_dim,)
        if z.dim() < len(latent) or tuple(z.shape[z.dim() - len(latent) :]) != latent:
            raise ValueError(f"z must have shape [..., {', '.join(map(str, latent))}] (the latent's); received "
                             f"shape {list(z.shape)}")  # fmt: skip
        out = self._decode(z)  # [*S, B, D]
        if self.decoder_type == "bernoulli":
            return Independent(Bernoulli(logits=out, validate_args=False), 1)
        if self.decoder_type == "continuous_bernoulli":
            return Independent(ContinuousBernoulli(logits=out, validate_args=False), 1)
        return Independent(Normal(out, (0.5 * self.log_variance).exp(), validate_args=False), 1)

    def log_likelihood(self, x: Tensor, z: Tensor) -> Tensor:
        """log p_θ(x | z), ``[*S, B]``, in fused closed forms (no distribution objects)."""
        out = self._decode(z)  # [*S, B, D]
        if self.decoder_type == "gaussian":
            log_var = self.log_variance
            sq = (x - out).square() * (-log_var).exp()
            return -0.5 * (sq + log_var + math.log(2 * math.pi)).sum(-1)
        target = x.expand_as(out)
        log_p = -F.binary_cross_entropy_with_logits(out, target, reduction="none").sum(-1)
        if self.decoder_type == "continuous_bernoulli":
            log_p = log_p + ContinuousBernoulli(logits=out, validate_args=False)._cont_bern_log_norm().sum(-1)
        return log_p

    def sample(self, n: int) -> tuple[Tensor, Tensor]:
        n = check_positive_int(n, "n")
        with torch.no_grad():
            z = self.prior().sample((n,))  # [n, *latent]
            return self.likelihood(z).sample(), z

    def _check_data(self, x, name: str = "x") -> Tensor:
        x = super()._check_data(x, name)
        if self.decoder_type == "bernoulli" and not ((x == 0) | (x == 1)).all():
            raise ValueError(
                f"the Bernoulli decoder needs binary data; {name} holds values in [{float(x.min()):.3g}, "
                f"{float(x.max()):.3g}] that are not all 0 or 1. Binarize it (elbox.data.binarize, or "
                "dynamic binarization in fit), or use decoder='continuous_bernoulli' for intensities in [0, 1]"
            )
        if self.decoder_type == "continuous_bernoulli" and ((x < 0) | (x > 1)).any():
            raise ValueError(
                f"the continuous Bernoulli decoder needs data in [0, 1]; {name} holds values in "
                f"[{float(x.min()):.3g}, {float(x.max()):.3g}]"
            )
        return x

    def _decoder_repr(self) -> str:
        if self.decoder_type != "gaussian":
            return f"decoder={self.decoder_type!r}"
        variance = "'learned'" if self.learned_variance else f"{float(self.log_variance[0].exp()):g}"
        return f"decoder={self.decoder_type!r}, observation_variance={variance}"


def _widths(hidden) -> list[int]:
    if isinstance(hidden, int | str) or not hasattr(hidden, "__iter__"):
        raise TypeError(f"hidden must be a sequence of layer widths, such as (200, 200); received {hidden!r}")
    return [check_positive_int(h, "hidden") for h in hidden]


class VAE(_Decoded):
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

    ``encoder="conv"`` is for 64 × 64 images of C channels (``data_dim = C · 64 · 64``): the
    encoder is Dreamer's four stride-2 convolutions (:class:`~elbox.models._conv.ConvEncoder`,
    ReLU) followed by an MLP of widths ``hidden`` to q's parameters, and the decoder the mirror
    MLP followed by Dreamer's transposed convolutions (:class:`~elbox.models._conv.ConvDecoder`)
    to the likelihood's parameters per pixel. Data may be given flat ``[B, C·64·64]`` or as
    images ``[B, C, 64, 64]`` (``[B, 64, 64]`` for one channel); the model holds them flat.

    Args:
        data_dim: D, the size of a (flattened) data point.
        latent_dim: The size of z.
        hidden: Hidden widths of the encoder (the decoder mirrors them); with ``encoder="conv"``,
            of the MLP between the convolutional features and z.
        activation: ``"tanh"``, ``"relu"``, ``"elu"``, ``"gelu"`` or ``"softplus"`` (the MLP's).
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
        encoder: ``"mlp"`` or ``"conv"`` (64 × 64 images; see above).
        depth: The convolutions' depth with ``encoder="conv"`` (Dreamer: 32).

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
        encoder: str = "mlp",
        depth: int = 32,
    ):
        super().__init__()
        D = check_positive_int(data_dim, "data_dim")
        L = check_positive_int(latent_dim, "latent_dim")
        hidden = _widths(hidden)
        if encoder not in ("mlp", "conv"):
            raise ValueError(f"encoder must be 'mlp' or 'conv'; received {encoder!r}")
        self.encoder_type = encoder
        self.channels = 0
        if encoder == "conv":
            if D % IMAGE_SIZE**2:
                raise ValueError(f"encoder='conv' takes {IMAGE_SIZE} × {IMAGE_SIZE} images: data_dim must be C · "
                                 f"{IMAGE_SIZE**2} for C channels; received data_dim = {D}")  # fmt: skip
            self.channels, self.depth = D // IMAGE_SIZE**2, check_positive_int(depth, "depth")

        def encoder_net(out: int) -> nn.Module:
            if encoder == "mlp":
                return mlp([D, *hidden, out], activation)
            conv = ConvEncoder(self.channels, self.depth)
            unflatten = nn.Unflatten(-1, (self.channels, IMAGE_SIZE, IMAGE_SIZE))
            return nn.Sequential(unflatten, conv, mlp([conv.out_features, *hidden, out], activation))

        beta = check_number(beta, "beta", minimum=0.0)
        deterministic_encoder = check_bool(deterministic_encoder, "deterministic_encoder")
        self.beta = float(beta)
        guide, prior = _flow_spec(guide, "guide", "gaussian", L), _flow_spec(prior, "prior", "normal", L)
        if guide["type"] == "flow" and deterministic_encoder:
            raise ValueError("guide='flow' is a distribution over z; deterministic_encoder=True asks for a point")
        self.guide_spec, self.prior_spec = guide, prior
        if guide["type"] == "flow":
            C = guide["context_dim"]
            self.guide = FlowGuide(L, encoder=encoder_net(2 * L + C), context_dim=C, flow=guide["flow"],
                                   transforms=guide["transforms"], hidden=guide["hidden"])  # fmt: skip
        else:
            out = L if deterministic_encoder else 2 * L
            self.guide = Amortized(encoder_net(out), L, deterministic=deterministic_encoder)
        network = None
        if encoder == "conv":  # the mirror: an MLP to the transposed convolutions' input, then [.., C, 64, 64] flat
            head = [mlp([L, *reversed(hidden)], activation), _ACTIVATIONS[activation]()] if hidden else []
            convs = ConvDecoder(hidden[0] if hidden else L, self.channels, self.depth)
            network = nn.Sequential(*head, convs, nn.Flatten(-3))
        self._init_decoder(L, D, hidden, activation, decoder, observation_variance, network)
        self.register_buffer("_zero", torch.zeros(L, dtype=torch.get_default_dtype()))
        # a flow over z in place of N(0, I), in the density direction: log p(z) in one pass
        self.prior_flow = (build_flow(prior["flow"], L, 0, prior["transforms"], prior["hidden"])
                           if prior["type"] == "flow" else None)  # fmt: skip

    @property
    def latent_dim(self) -> int:
        return self._zero.shape[0]

    def _check_data(self, x, name: str = "x") -> Tensor:
        if self.encoder_type == "conv" and not isinstance(x, Tensor):
            x = as_data(x, name, dtype=self._zero.dtype, device=self._zero.device)
        if self.encoder_type == "conv" and x.dim() > 2:  # images [B, C, 64, 64]: flat
            C = self.channels
            if C == 1 and x.dim() == 3:
                x = x.unsqueeze(1)  # [B, 64, 64]: one channel
            image_shape(x, C, name)
            if x.dim() != 4:
                raise ValueError(f"{name} must be images [B, {C}, {IMAGE_SIZE}, {IMAGE_SIZE}] or flat [B, "
                                 f"{self.data_shape[0]}]; received shape {tuple(x.shape)}")  # fmt: skip
            x = x.flatten(1)
        return super()._check_data(x, name)

    # The model.

    def prior(self):
        if self.prior_flow is not None:
            return FlowDistribution(self.prior_flow.transform(), self.prior_flow.base())
        return Independent(Normal(self._zero, torch.ones_like(self._zero), validate_args=False), 1, validate_args=False)

    def reconstruct(self, x: Tensor) -> Tensor:
        """The decoder's mean at the encoder's mean: E[x | z = E_q[z | x]], ``[B, D]`` (for a flow
        guide, the mean of 64 draws)."""
        return self.likelihood(self.latent_mean(x)).mean

    def latent_mean(self, x: Tensor) -> Tensor:
        """E_q[z | x], ``[B, L]``: q's closed form, or for a flow guide the mean of 64 draws."""
        x = self.check_data(x)
        q = self.guide(x)
        return q.sample((64,)).mean(0) if isinstance(q, FlowDistribution) else q.mean

    def extra_repr(self) -> str:
        extra = ""
        for name, spec, default in (("guide", self.guide_spec, "gaussian"), ("prior", self.prior_spec, "normal")):
            if spec["type"] != default:
                extra += f", {name}={spec['type']!r} ({spec['flow']}, {spec['transforms']} transforms)"
        if self.encoder_type == "conv":
            extra += f", encoder='conv' ({self.channels} × {IMAGE_SIZE} × {IMAGE_SIZE}, depth {self.depth})"
        return (
            f"data_dim={self.data_shape[0]}, latent_dim={self.latent_dim}, {self._decoder_repr()}{extra}, "
            f"beta={self.beta:g}"
        )


_FLOW_DEFAULTS = {**FLOW_DEFAULTS, "hidden": list(FLOW_DEFAULTS["hidden"])}  # a table as the config writes it


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


_LATENTS = ("categorical", "bernoulli")


class DiscreteVAE(_Decoded):
    r"""A VAE with discrete latents: N categorical variables of K classes under a uniform prior
    (Jang et al.'s categorical VAE, 20 × 10 on MNIST), or N binary variables under
    Bernoulli(½); an MLP decoder, and an amortized discrete q as ``dvae.guide``.

    .. math:: z_n \sim \mathrm{Cat}(1/K)\ (n = 1..N),\quad x \mid z \sim p_\theta(x \mid z),\quad
              q_\phi(z \mid x) = \prod_n \mathrm{Cat}(z_n;\ \mathrm{softmax}(\ell_{\phi,n}(x)))

    The latents are in the one-hot convention (z ``[N, K]``; ``[N]`` for binary ones): the
    decoder reads z as numbers, so it takes the relaxed draws of the Gumbel-Softmax estimators
    (points inside the simplex) as well as exact ones. Train with any of the discrete
    estimators (``"gumbel_softmax"``, ``"score_function"``, ``"vimco"``, ``"enumerate"``,
    ``"rws"``); every bound reported is the discrete model's.

    Args:
        data_dim: D, the size of a (flattened) data point.
        num_variables: N.
        num_categories: K (for ``latent="categorical"``).
        latent: ``"categorical"`` or ``"bernoulli"``.
        hidden: The encoder's hidden widths (the decoder mirrors them); Jang et al. use (512, 256).
        activation: The hidden layers' activation.
        decoder: ``"bernoulli"``, ``"gaussian"`` or ``"continuous_bernoulli"``.
        observation_variance: σ² for the Gaussian decoder, or ``"learned"``.

    References:
        Categorical Reparameterization with Gumbel-Softmax (Jang et al., 2017), https://arxiv.org/abs/1611.01144

    Example:
        >>> dvae = DiscreteVAE(64, num_variables=4, num_categories=3, hidden=(32,))
        >>> x, z = dvae.sample(5)
        >>> z.shape
        torch.Size([5, 4, 3])
    """

    def __init__(
        self,
        data_dim: int,
        num_variables: int = 20,
        num_categories: int = 10,
        latent: str = "categorical",
        hidden=(512, 256),
        activation: str = "relu",
        decoder: str = "bernoulli",
        observation_variance: float | str = 1.0,
    ):
        super().__init__()
        D = check_positive_int(data_dim, "data_dim")
        N = check_positive_int(num_variables, "num_variables")
        if latent not in _LATENTS:
            raise ValueError(f"latent must be one of {_LATENTS}; received {latent!r}")
        K = check_positive_int(num_categories, "num_categories", minimum=2) if latent == "categorical" else 2
        hidden = _widths(hidden)
        self.latent_type = latent
        self.latent_unit_dims = 1 if latent == "categorical" else 0
        size = N * K if latent == "categorical" else N
        encoder = mlp([D, *hidden, size], activation)
        self.guide = CategoricalGuide(N, K, encoder) if latent == "categorical" else BernoulliGuide(N, encoder)
        self._init_decoder(size, D, hidden, activation, decoder, observation_variance)
        shape = (N, K) if latent == "categorical" else (N,)
        self.register_buffer("_prior_logits", torch.zeros(shape, dtype=torch.get_default_dtype()))

    @property
    def num_variables(self) -> int:
        return self._prior_logits.shape[0]

    @property
    def num_categories(self) -> int:
        """K (2 for binary latents)."""
        return self._prior_logits.shape[1] if self.latent_type == "categorical" else 2

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self._prior_logits.shape)

    def prior(self):
        if self.latent_type == "categorical":
            base = OneHot(self._prior_logits)
        else:
            base = Bernoulli(logits=self._prior_logits, validate_args=False)
        return Independent(base, 1, validate_args=False)

    def prior_for(self, x: Tensor):
        # batch [B]: torch's closed-form Bernoulli KL does not broadcast a batch-less prior against q
        return self.prior().expand(torch.Size([x.shape[0]]))

    def _decode(self, z: Tensor) -> Tensor:
        return network(self.decoder, z.flatten(-2) if self.latent_type == "categorical" else z)  # [*S, B, D]

    def reconstruct(self, x: Tensor) -> Tensor:
        """The decoder's mean at q's mean, E_q[z | x] (the class probabilities: a point inside
        the simplex, which the one-hot convention admits), ``[B, D]``."""
        return self.likelihood(self.latent_mean(x)).mean

    def latent_mean(self, x: Tensor) -> Tensor:
        """E_q[z | x]: q's class probabilities, ``[B, N, K]`` (``[B, N]`` for binary latents)."""
        return self.guide(self.check_data(x)).mean

    def extra_repr(self) -> str:
        shape = f"num_variables={self.num_variables}"
        shape += f", num_categories={self.num_categories}" if self.latent_type == "categorical" else ""
        return f"data_dim={self.data_shape[0]}, {shape}, latent={self.latent_type!r}, {self._decoder_repr()}"
