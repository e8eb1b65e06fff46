r"""The deep Markov model: a nonlinear state-space model with a gated transition and a neural
emitter (Krishnan, Shalit & Sontag, 2017), trained by the ELBO, IWAE or FIVO."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Bernoulli, Categorical, Independent, Normal

from elbox._validation import as_data, check_number, check_positive_int
from elbox.data.sequences import Sequences, as_sequences
from elbox.distributions._gaussian import tril_to_raw
from elbox.distributions.hmm_kernels import forward_backward, hmm_log_evidence
from elbox.distributions.markov import MarkovChain
from elbox.distributions.markov_path import MarkovPath
from elbox.models.base import LatentModel
from elbox.models.forecast import Forecast, check_level, check_steps, mixture_quantiles

__all__ = ["DeepMarkovModel", "GatedTransition"]

_EMISSIONS = ("bernoulli", "gaussian", "categorical")
_TRANSITIONS = ("gated", "linear")
_LATENTS = ("gaussian", "categorical")


class GatedTransition(nn.Module):
    r"""p(z_t | z_{t-1}, u_t) = N(μ, diag σ²) with Pyro's gated mean (Krishnan et al., section 5):

    .. math:: g = \mathrm{sigmoid}(W_2\,\mathrm{relu}(W_1 z_{t-1})), \quad
              m = V_2\,\mathrm{relu}(V_1 z_{t-1}), \quad
              \mu = (1 - g) \odot (A z_{t-1} + b) + g \odot m, \quad
              \sigma = \mathrm{softplus}(S\,\mathrm{relu}(m)),

    A initialized to the identity. Inputs u_t enter both hidden layers and the linear path.
    """

    def __init__(self, latent_dim: int, hidden: int, input_dim: int = 0):
        super().__init__()
        D, H = latent_dim, hidden
        self.gate_hidden = nn.Linear(D, H)
        self.gate_out = nn.Linear(H, D)
        self.mean_hidden = nn.Linear(D, H)
        self.mean_out = nn.Linear(H, D)
        self.scale = nn.Linear(D, D)
        self.linear = nn.Linear(D, D)
        with torch.no_grad():
            self.linear.weight.copy_(torch.eye(D))
            self.linear.bias.zero_()
        self.inputs = nn.Linear(input_dim, 2 * H + D, bias=False) if input_dim else None

    def forward(self, z_prev: Tensor, u: Tensor | None = None) -> tuple[Tensor, Tensor]:
        a, b, c = self.gate_hidden(z_prev), self.mean_hidden(z_prev), self.linear(z_prev)
        if u is not None:
            H = self.gate_hidden.out_features
            drive = self.inputs(u)  # [B, (T,) 2H + D], broadcast over the particles
            a, b, c = a + drive[..., :H], b + drive[..., H : 2 * H], c + drive[..., 2 * H :]
        gate = torch.sigmoid(self.gate_out(F.relu(a)))
        proposed = self.mean_out(F.relu(b))
        loc = (1 - gate) * c + gate * proposed
        return loc, F.softplus(self.scale(F.relu(proposed)))


class LinearTransition(nn.Module):
    """p(z_t | z_{t-1}, u_t) = N(A z_{t-1} + B u_t + b, diag σ²): a linear-Gaussian DMM, which is a
    :class:`~elbox.models.LinearGaussianSSM` (the exact oracle of the tests)."""

    def __init__(self, latent_dim: int, input_dim: int = 0):
        super().__init__()
        self.linear = nn.Linear(latent_dim, latent_dim)
        with torch.no_grad():
            self.linear.weight.copy_(torch.eye(latent_dim))
            self.linear.bias.zero_()
        self.inputs = nn.Linear(input_dim, latent_dim, bias=False) if input_dim else None
        self.raw_scale = nn.Parameter(torch.full((latent_dim,), math.log(math.e - 1)))  # softplus⁻¹(1)

    def forward(self, z_prev: Tensor, u: Tensor | None = None) -> tuple[Tensor, Tensor]:
        loc = self.linear(z_prev)
        if u is not None:
            loc = loc + self.inputs(u)
        return loc, F.softplus(self.raw_scale).expand_as(loc)


class DeepMarkovModel(LatentModel):
    r"""A deep Markov model: a latent path z_{1:T} ∈ ℝ^{T×D} with

    .. math:: z_t \sim \mathcal{N}\big(\mu_\theta(z_{t-1}, u_t), \operatorname{diag}\sigma_\theta(z_{t-1}, u_t)^2\big),
              \qquad x_t \sim p_\theta(x_t \mid z_t),

    z_0 learned, the transition Pyro's gated one (:class:`GatedTransition`) or linear, and the
    emitter an MLP (``emission_hidden`` widths; none: linear) to Bernoulli logits (piano rolls),
    a Gaussian mean (variance fixed or learned) or categorical logits over ``obs_dim`` symbols.

    A data point is a whole sequence: ``[B, T, obs_dim]`` values (``[B, T]`` integer symbols for
    categorical emissions), or a :class:`~elbox.data.Sequences` with ragged lengths and inputs
    ``[B, T, input_dim]``. Time has its own axis: paths are ``[*S, B, T, D]``, and everything
    but a draw is one batched pass over the steps. Steps past a sequence's end carry no data;
    their states are N(0, I) under the prior and every guide alike.

    The guides are in :mod:`elbox.guides.sequence` (ST-R, ST-LR, MF-LR, ST-L, with IAFs);
    :meth:`guide` builds one of them for this model. ``elbo``, ``iwae`` and ``fivo`` train it;
    ``log_evidence(model, x, guide=..., method="smc")`` estimates its evidence.

    Args:
        obs_dim: The size of x_t (the number of symbols, for categorical emissions).
        latent_dim: D.
        input_dim: The size of the inputs u_t (0: none).
        transition: ``"gated"`` or ``"linear"``.
        transition_dim: The gated transition's hidden width.
        emission: ``"bernoulli"``, ``"gaussian"`` or ``"categorical"``.
        emission_hidden: The emitter's hidden widths (``()``: a linear map).
        observation_variance: The Gaussian emission's σ² (a positive number, or ``"learned"``:
            one per coordinate).
        latent: ``"gaussian"`` (z_t ∈ ℝ^D, the DMM of the paper) or ``"categorical"``: z_t one of
            K = ``latent_dim`` states with a learned initial distribution and K × K transition
            table (``transition`` and ``transition_dim`` do not apply; no inputs), the emitter
            read at the one-hot state. Any emitter then is a K-row table: the model is an HMM,
            with the exact :meth:`log_evidence` (the forward algorithm) and :meth:`posterior`
            (forward–backward); paths are integer ``[*S, B, T]``, the guide a
            :class:`~elbox.guides.StructuredCategoricalGuide`, the ELBO exact (no sampling).

    References:
        Structured Inference Networks for Nonlinear State Space Models (Krishnan, Shalit &
        Sontag, 2017), https://arxiv.org/abs/1609.09869

    Example:
        >>> model = DeepMarkovModel(88, latent_dim=8, transition_dim=16, emission_hidden=(16,))
        >>> x, z = model.sample(4, num_steps=10)
        >>> x.shape, z.shape
        (torch.Size([4, 10, 88]), torch.Size([4, 10, 8]))
    """

    def __init__(
        self,
        obs_dim: int,
        latent_dim: int = 100,
        *,
        input_dim: int = 0,
        transition: str = "gated",
        transition_dim: int = 200,
        emission: str = "bernoulli",
        emission_hidden=(100, 100),
        observation_variance: float | str = 1.0,
        latent: str = "gaussian",
    ):
        super().__init__()
        self.obs_dim = check_positive_int(obs_dim, "obs_dim")
        D = self.latent_dim = check_positive_int(latent_dim, "latent_dim")
        self.input_dim = check_positive_int(input_dim, "input_dim", minimum=0)
        if transition not in _TRANSITIONS:
            raise ValueError(f"transition must be one of {_TRANSITIONS}; received {transition!r}")
        if emission not in _EMISSIONS:
            raise ValueError(f"emission must be one of {_EMISSIONS}; received {emission!r}")
        if latent not in _LATENTS:
            raise ValueError(f"latent must be one of {_LATENTS}; received {latent!r}")
        if emission == "categorical" and self.obs_dim < 2:
            raise ValueError(f"categorical emissions need obs_dim >= 2 symbols; received {obs_dim}")
        self.transition_kind, self.emission, self.latent = transition, emission, latent
        if latent == "categorical":
            if D < 2:
                raise ValueError(f"latent='categorical' needs latent_dim >= 2 states; received {latent_dim}")
            if self.input_dim:
                raise ValueError(f"latent='categorical' takes no inputs; received input_dim={input_dim}")
            self.transition_kind = "table"
            self.initial_logits = nn.Parameter(torch.zeros(D))  # log π, [K]
            self.transition_logits = nn.Parameter(torch.zeros(D, D))  # log A, [K, K]
        elif transition == "gated":
            self.transition = GatedTransition(D, check_positive_int(transition_dim, "transition_dim"), self.input_dim)
        else:
            self.transition = LinearTransition(D, self.input_dim)
        hidden = tuple(check_positive_int(h, "emission_hidden") for h in emission_hidden)
        sizes = (D, *hidden, self.obs_dim)
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        self.emitter = nn.Sequential(*layers)
        self.emission_hidden = hidden
        if latent == "gaussian":
            self.z_0 = nn.Parameter(torch.zeros(D))
        self.learned_variance = observation_variance == "learned"
        if emission == "gaussian":
            variance = 1.0 if self.learned_variance else check_number(observation_variance, "observation_variance",
                                                                      minimum=0.0, strict=True)  # fmt: skip
            log_scale = torch.full((self.obs_dim,), 0.5 * math.log(variance))
            if self.learned_variance:
                self.log_scale = nn.Parameter(log_scale)
            else:
                self.register_buffer("log_scale", log_scale)
        elif observation_variance != 1.0:
            raise ValueError(f"observation_variance applies to emission='gaussian'; received {observation_variance!r}")

    # Data.

    @property
    def data_shape(self) -> tuple:  # type: ignore[override]
        return (None,) if self.emission == "categorical" else (None, self.obs_dim)

    def check_data(self, x, *, name: str = "x") -> Sequences:
        """``x`` as a checked :class:`~elbox.data.Sequences`; a NaN or an infinity is an error that
        names its sequence and step. Trailing steps that no sequence of the batch reaches are
        dropped (a mini-batch of short sequences costs its own length, not the data set's)."""
        if isinstance(x, Sequences) or torch.is_tensor(x):
            values = x.values if isinstance(x, Sequences) else x
            if values.is_floating_point() and values.dim() >= 2 and values.numel():
                mask = x.mask if isinstance(x, Sequences) else torch.ones(values.shape[:2], dtype=torch.bool)
                bad = ~torch.isfinite(values.reshape(*values.shape[:2], -1)).all(-1) & mask.to(values.device)
                if bool(bad.any()):
                    b, t = (int(i) for i in bad.nonzero()[0])
                    step = values[b, t].flatten()
                    raise ValueError(
                        f"{name}: sequence {b} has a non-finite value ({float(step[~torch.isfinite(step)][0])}) "
                        f"at step {t}; {type(self).__name__} has no missing-data model: drop or impute that step"
                    )
        x = as_sequences(x, event_shape=(self.obs_dim,), integer=self.emission == "categorical", name=name,
                         num_inputs=self.input_dim, **self._sequence_options())  # fmt: skip
        return x.trimmed()

    # The model.

    def _step(self, z_prev: Tensor, u: Tensor | None) -> tuple[Tensor, Tensor]:
        return self.transition(z_prev, u)

    def prior_for(self, x) -> MarkovPath | MarkovChain:
        """p(z_{1:T} | u_{1:T}) over the batch's paths, a :class:`~elbox.distributions.MarkovPath` (a
        :class:`~elbox.distributions.MarkovChain` for a categorical latent)."""
        x = self.check_data(x)
        if self.latent == "categorical":  # uniform, θ-free states past each end (the HMM's convention)
            B, T = x.mask.shape
            K = self.latent_dim
            logits = torch.where(x.mask[:, 1:, None, None], self.transition_logits.expand(B, T - 1, K, K), 0.0)
            return MarkovChain(self.initial_logits, logits)  # [B, T-1, K, K]
        return MarkovPath(self._step, self.z_0, x.mask, x.inputs)

    def prior(self, num_steps: int = 1) -> MarkovPath | MarkovChain:
        """The prior over paths of ``num_steps`` steps of one sequence (no inputs)."""
        T = check_positive_int(num_steps, "num_steps")
        if self.latent == "categorical":
            K = self.latent_dim
            return MarkovChain(self.initial_logits, self.transition_logits.expand(T - 1, K, K))
        if self.input_dim:
            raise ValueError(f"this model has input_dim={self.input_dim}: the prior depends on the inputs; use "
                             "prior_for(Sequences(x, inputs=u))")  # fmt: skip
        return MarkovPath(self._step, self.z_0, torch.ones(1, T, dtype=torch.bool, device=self.z_0.device))

    def emission_parameters(self, z: Tensor) -> Tensor:
        """The emitter's output for states ``[*, D]`` (integer states ``[*]`` for a categorical latent):
        logits, or the Gaussian mean, ``[*, obs_dim]``."""
        if self.latent == "categorical":
            table = self.emitter(torch.eye(self.latent_dim, dtype=self.initial_logits.dtype,
                                           device=self.initial_logits.device))  # [K, obs_dim]  # fmt: skip
            return table[z.long()]
        return self.emitter(z)

    def emission_log_prob(self, x) -> Tensor:
        """log p(x_t | z_t = k) for every step and state of a categorical latent, ``[B, T, K]`` (zero
        past each end): the table the forward algorithm reads."""
        self._require_categorical("emission_log_prob")
        x = self.check_data(x)
        states = torch.arange(self.latent_dim, device=x.mask.device).view(-1, 1, 1)  # [K, 1, 1]
        return self.step_log_likelihood(x, states).permute(1, 2, 0)  # [K, B, T] -> [B, T, K]

    def step_log_likelihood(self, x, z: Tensor, t: int | None = None) -> Tensor:
        """log p(x_t | z_t) per step, ``[*S, B, T]`` (zero past each end); with ``t``, of that step
        alone from states ``[*S, B, D]``, ``[*S, B]``."""
        x = self.check_data(x) if not isinstance(x, Sequences) else x.trimmed()
        values, mask = (x.values, x.mask) if t is None else (x.values[:, t], x.mask[:, t])
        out = self.emission_parameters(z)
        out = out.expand(*torch.broadcast_shapes(out.shape[:-1], values.shape[:-1] if self.emission != "categorical"
                                                 else values.shape), out.shape[-1])  # fmt: skip
        if self.emission == "bernoulli":
            log_p = -F.binary_cross_entropy_with_logits(out, values.expand_as(out), reduction="none").sum(-1)
        elif self.emission == "categorical":
            log_p = out.log_softmax(-1).gather(-1, values.expand(out.shape[:-1]).unsqueeze(-1)).squeeze(-1)
        else:
            log_scale = self.log_scale
            w = (values - out) * torch.exp(-log_scale)
            log_p = (-0.5 * w.square() - log_scale - 0.5 * math.log(2 * math.pi)).sum(-1)
        return torch.where(mask, log_p, 0.0)

    def likelihood(self, z: Tensor):
        """x_t | z_t at every step (of full-length sequences), event ``[T, obs_dim]`` (``[T]`` for symbols)."""
        out = self.emission_parameters(z)
        if self.emission == "bernoulli":
            return Independent(Bernoulli(logits=out, validate_args=False), 2)
        if self.emission == "categorical":
            return Independent(Categorical(logits=out, validate_args=False), 1)
        return Independent(Normal(out, self.log_scale.exp(), validate_args=False), 2)

    def log_likelihood(self, x, z: Tensor) -> Tensor:
        """Σ_t log p(x_t | z_t) over each sequence's steps, ``[*S, B]``."""
        return self.step_log_likelihood(self.check_data(x), z).sum(-1)

    def log_joint(self, x, z: Tensor) -> Tensor:
        x = self.check_data(x)
        return self.prior_for(x).log_prob(z) + self.log_likelihood(x, z)

    @torch.no_grad()
    def sample(self, n: int, num_steps: int = 10, inputs=None) -> tuple[Tensor, Tensor]:
        """``n`` sequences: (x ``[n, T, obs_dim]`` (``[n, T]`` symbols), z ``[n, T, D]``)."""
        n = check_positive_int(n, "n")
        T = check_positive_int(num_steps, "num_steps")
        ref = self._reference()
        if self.latent == "categorical":
            z = self.prior(T).expand([n]).sample()  # [n, T]
            return self.likelihood(z).sample(), z
        mask = torch.ones(n, T, dtype=torch.bool, device=ref.device)
        if self.input_dim:
            if inputs is None:
                raise ValueError(f"this model has input_dim={self.input_dim}: pass inputs [n, T, {self.input_dim}]")
            inputs = torch.as_tensor(inputs, dtype=ref.dtype, device=ref.device)
        z = MarkovPath(self._step, self.z_0, mask, inputs).rsample()
        return self.likelihood(z).sample(), z

    # Forecasts.

    @torch.no_grad()
    def forecast(self, x, steps: int, *, level: float = 0.9, guide=None, num_samples: int = 1024,
                 num_particles: int = 256, num_runs: int = 8, inputs=None) -> Forecast:  # fmt: skip
        r"""p(x_{T+1:T+k} | x_{1:T}) for each sequence, from its own last step, by simulation:

        .. math:: z_T \sim \sum_s \bar w^s\, \delta_{z^s_T} \approx p(z_T \mid x_{1:T}), \qquad
                  z_{T+j} \sim p(z_{T+j} \mid z_{T+j-1}, u_{T+j}), \qquad
                  \mathbb{E}[x_{T+j}] \approx \tfrac1N \textstyle\sum_n \mathbb{E}[x_{T+j} \mid z^n_{T+j}].

        The filtering distribution is the particle filter's weighted particles at the last step
        (``num_particles`` of them; ``guide`` proposing, the prior where None: the bootstrap
        filter); ``num_samples`` paths are drawn from it and simulated k steps through the
        transition. The mean is the average of the emission's mean over the paths (Rao–Blackwell:
        no emission noise), the variance adds the emission's; Gaussian emissions get the central
        ``level`` interval of each coordinate as the exact quantiles of the simulated mixture
        E_n N(μ_n, σ²); Bernoulli and categorical ones the probabilities alone (no interval).

        Monte Carlo error: the whole computation is run as ``num_runs`` independent filters and
        simulations (``num_samples / num_runs`` paths each) side by side; the forecast pools them,
        and ``mean_stderr``, ``lower_stderr`` and ``upper_stderr`` are the spread of the runs'
        own figures over √runs (the filter's error and the simulation's together). A
        categorical latent's forecast is exact instead (the HMM's, :meth:`to_hmm`).

        Args:
            x: The sequences (ragged batches forecast each from its own end).
            steps: k, the steps ahead.
            level: The intervals' probability.
            guide: The filter's proposal (a trained guide of this model), or None (the prior).
            num_samples: N, the simulated paths per sequence (over all runs).
            num_particles: The filter's particles per run.
            num_runs: Independent runs (at least 2), for the Monte Carlo errors.
            inputs: ``[B, k, input_dim]``, the future steps' inputs (models with inputs).

        Returns:
            A :class:`~elbox.models.forecast.Forecast` with ``method="simulation"``.

        Example:
            >>> model = DeepMarkovModel(2, 2, transition_dim=8, emission="gaussian", emission_hidden=(8,))
            >>> x, _ = model.sample(3, num_steps=5)
            >>> model.forecast(x, steps=4, num_samples=64, num_particles=32).mean.shape
            torch.Size([3, 4, 2])
        """
        from elbox.bounds.sequence import smc
        from elbox.guides.sequence import PriorProposal

        k, level = check_steps(steps), check_level(level)
        if self.latent == "categorical":
            if self.emission == "bernoulli":
                raise TypeError("forecast: a categorical latent with Bernoulli emissions has no HMM to forecast "
                                "with; use emission='categorical' or 'gaussian'")  # fmt: skip
            return self.to_hmm().forecast(x, k, level=level)
        N, S = check_positive_int(num_samples, "num_samples"), check_positive_int(num_particles, "num_particles")
        R = check_positive_int(num_runs, "num_runs", minimum=2)
        x = self.check_data(x)
        B, ref = len(x), self._reference()
        future = None
        if self.input_dim:
            if inputs is None:
                raise ValueError(f"this model has input_dim={self.input_dim}: pass inputs, the future steps' inputs "
                                 f"[{B}, {k}, {self.input_dim}]")  # fmt: skip
            future = as_data(inputs, "inputs", ndim=3, dtype=ref.dtype, device=ref.device)
            if tuple(future.shape) != (B, k, self.input_dim):
                raise ValueError(f"inputs must have shape [{B}, {k}, {self.input_dim}] (sequences, steps ahead, "
                                 f"inputs); received {list(future.shape)}")  # fmt: skip
            future = future.repeat(R, 1, 1)  # [R B, k, U]
        elif inputs is not None:
            raise ValueError("inputs: this model has no inputs (input_dim=0)")
        # R independent filters side by side: the batch repeated, sequence b of run r at r B + b
        repeat = (R,) + (1,) * (x.values.dim() - 1)
        runs = Sequences(x.values.repeat(*repeat), x.mask.repeat(R, 1),
                         inputs=None if x.inputs is None else x.inputs.repeat(R, 1, 1))  # fmt: skip
        filtered = smc(self, guide if guide is not None else PriorProposal(self), runs, num_samples=S)
        M = -(-N // R)  # paths per run
        ancestors = torch.multinomial(filtered.log_weights.T.exp(), M, replacement=True).T  # [M, R B]
        z = filtered.particles.gather(0, ancestors.unsqueeze(-1).expand(M, R * B, self.latent_dim))  # [M, R B, D]
        means = []
        for j in range(k):  # k transitions of M R B states each: the horizon, not the data's length
            loc, scale = self.transition(z, None if future is None else future[:, j])
            z = loc + scale * torch.randn_like(loc)
            out = self.emission_parameters(z)  # [M, R B, obs]
            means.append(out if self.emission == "gaussian" else out.sigmoid() if self.emission == "bernoulli"
                         else out.softmax(-1))  # fmt: skip
        paths = torch.stack(means, -2).view(M, R, B, k, -1)  # E[x_{T+j} | z_{T+j}] per path, [M, R, B, k, obs]
        run_means = paths.mean(0)  # [R, B, k, obs]
        mean, mean_se = run_means.mean(0), run_means.std(0) / math.sqrt(R)
        common = {"method": "simulation", "num_samples": M * R, "mean_stderr": mean_se}
        if self.emission != "gaussian":
            return Forecast(mean, None, None, None, level, **common)
        var = (2 * self.log_scale).exp()  # σ², [obs]
        variance = paths.square().mean((0, 1)) - mean.square() + var
        tails = ((1 - level) / 2, (1 + level) / 2)
        scale = var.sqrt()

        def quantiles(locs: Tensor) -> list[Tensor]:  # of the mixture over the last dimension's paths
            weights = torch.full_like(locs, 1 / locs.shape[-1])
            return mixture_quantiles(weights, locs, scale.unsqueeze(-1).expand_as(locs), tails)

        lower, upper = quantiles(paths.permute(2, 3, 4, 1, 0).flatten(-2))  # pooled: [B, k, obs, R M]
        run_lower, run_upper = quantiles(paths.permute(1, 2, 3, 4, 0))  # each run's: [R, B, k, obs]
        return Forecast(mean, variance, lower, upper, level, lower_stderr=run_lower.std(0) / math.sqrt(R),
                        upper_stderr=run_upper.std(0) / math.sqrt(R), **common)  # fmt: skip

    # The guides and the exact oracle.

    def guide(self, kind: str = "st-r", **options):
        """A structured guide for this model (:class:`~elbox.guides.StructuredGuide`): ``"st-r"``,
        ``"st-lr"``, ``"mf-lr"`` or ``"st-l"``."""
        from elbox.guides.sequence import StructuredCategoricalGuide, StructuredGuide

        if self.latent == "categorical":
            return StructuredCategoricalGuide(self.obs_dim, self.latent_dim, kind=kind,
                                              symbols=self.emission == "categorical",
                                              **options).to(self._reference().dtype)  # fmt: skip
        return StructuredGuide(self.obs_dim, self.latent_dim, kind=kind, input_dim=self.input_dim,
                               symbols=self.emission == "categorical", **options).to(self._reference().dtype)

    # A categorical latent: the model is an HMM, exact.

    def _require_categorical(self, what: str) -> None:
        if self.latent != "categorical":
            raise TypeError(f"{what} needs latent='categorical' (a DMM with discrete states is an HMM); this model's "
                            "latent is Gaussian: use elbox.log_evidence(model, x, guide=..., method='smc'), or "
                            "to_lgssm() for a linear-Gaussian one")  # fmt: skip

    @property
    def has_exact_evidence(self) -> bool:
        """True for a categorical latent (the forward algorithm), False for a Gaussian one."""
        return self.latent == "categorical"

    def expected_log_likelihood(self, x, q) -> Tensor | None:
        """Σ_t Σ_k q(z_t = k) log p(x_t | z_t = k) for a q over discrete paths with marginals
        (a :class:`~elbox.distributions.MarkovChain`); None otherwise (a Gaussian latent)."""
        if self.latent != "categorical" or not hasattr(q, "marginals"):
            return None
        return (q.marginals() * self.emission_log_prob(x)).sum((-2, -1))

    def log_evidence(self, x) -> Tensor:
        """The exact log p(x), ``[B]``, of a categorical latent: the HMM's forward algorithm
        (:func:`~elbox.distributions.hmm_kernels.hmm_log_evidence`) on the emitter's table."""
        self._require_categorical("log_evidence")
        return hmm_log_evidence(self.initial_logits, self.transition_logits, self.emission_log_prob(x))

    def posterior(self, x):
        """The exact p(z | x) of a categorical latent by forward–backward: an
        :class:`~elbox.models.hmm.HMMPosterior` (a reverse Markov chain over the paths)."""
        from elbox.models.hmm import HMMPosterior

        self._require_categorical("posterior")
        x = self.check_data(x)
        fb = forward_backward(self.initial_logits, self.transition_logits, self.emission_log_prob(x), x.mask)
        return HMMPosterior(fb.filtered, self.transition_logits.log_softmax(-1), x.mask, fb.marginals,
                            fb.transition_counts, log_filtered=fb.log_filtered)  # fmt: skip

    def to_hmm(self):
        """The same model as an :class:`~elbox.models.HMM` (a categorical latent with categorical or
        Gaussian emissions: the emitter's table becomes the emission probabilities, or the
        states' means with this model's variances).

        Raises:
            TypeError: For a Gaussian latent or Bernoulli emissions (the HMM has none; this model's
                :meth:`log_evidence` is the forward algorithm all the same).
        """
        from elbox.models.hmm import HMM

        self._require_categorical("to_hmm")
        K, dtype = self.latent_dim, self.initial_logits.dtype
        with torch.no_grad():
            table = self.emission_parameters(torch.arange(K, device=self.initial_logits.device))  # [K, obs_dim]
            if self.emission == "categorical":
                hmm = HMM(K, "categorical", num_symbols=self.obs_dim, emission_probs=table.softmax(-1).to(dtype))
            elif self.emission == "gaussian":
                var = (2 * self.log_scale).exp().expand(K, -1)
                hmm = HMM(K, "gaussian", dim=self.obs_dim, loc=table.to(dtype), covariance=var.to(dtype))
            else:
                raise TypeError("to_hmm: the HMM has no Bernoulli emissions; this model's log_evidence and "
                                "posterior are its forward algorithm and forward–backward all the same")  # fmt: skip
            hmm = hmm.to(dtype)
            hmm.initial_logits.copy_(self.initial_logits)
            hmm.transition_logits.copy_(self.transition_logits)
        return hmm

    def to_lgssm(self):
        """The same model as a :class:`~elbox.models.LinearGaussianSSM`, where it is one: a linear
        transition and a linear Gaussian emitter (``emission_hidden=()``). Its Kalman filter is
        this model's exact evidence, and its RTS smoother the exact posterior.

        Raises:
            TypeError: For a gated transition, hidden emission layers or non-Gaussian emissions.
        """
        if self.transition_kind != "linear" or self.emission != "gaussian" or self.emission_hidden:
            raise TypeError("to_lgssm needs transition='linear', emission='gaussian' and emission_hidden=(); this "
                            f"model has transition={self.transition_kind!r}, emission={self.emission!r}, "
                            f"emission_hidden={self.emission_hidden}")  # fmt: skip
        if self.input_dim:
            raise TypeError("to_lgssm: with inputs, the LGSSM's first state ignores u_1 and this model's does not")
        dtype = self._reference().dtype
        with torch.no_grad():
            tr, em = self.transition, self.emitter[0]
            if bool(tr.linear.bias.abs().max() > 0) or bool(em.bias.abs().max() > 0):
                raise TypeError("to_lgssm: the transition's and emitter's biases must be zero (an LGSSM has none)")
            return linear_gaussian_ssm(tr.linear.weight, em.weight, None, self.z_0, F.softplus(tr.raw_scale),
                                       self.log_scale.exp(), dtype)  # fmt: skip

    def extra_repr(self) -> str:
        return (f"obs_dim={self.obs_dim}, latent_dim={self.latent_dim}, input_dim={self.input_dim}, "
                f"latent={self.latent!r}, transition={self.transition_kind!r}, emission={self.emission!r}")  # fmt: skip


def linear_gaussian_ssm(A: Tensor, C: Tensor, B: Tensor | None, z_0: Tensor, scale: Tensor, obs_scale: Tensor, dtype):
    """The :class:`~elbox.models.LinearGaussianSSM` of a linear-Gaussian sequence model (the DMM's and
    the world model's linear configurations, their exact oracle): z_1 ~ N(A z_0, diag scale²),
    z_t = A z_{t-1} (+ B u_t) + N(0, diag scale²), x_t = C z_t + N(0, diag obs_scale²)."""
    from elbox.models.lgssm import LinearGaussianSSM

    L_q = torch.diag(scale)
    lgssm = LinearGaussianSSM(A.shape[0], C.shape[0], 0 if B is None else B.shape[1]).to(dtype)
    with torch.no_grad():
        lgssm.transition_matrix.copy_(A)
        lgssm.observation_matrix.copy_(C)
        if B is not None:
            lgssm.control_matrix.copy_(B)
        lgssm.initial_loc.copy_(A @ z_0)
        lgssm._q_raw.copy_(tril_to_raw(L_q))
        lgssm._p0_raw.copy_(tril_to_raw(L_q))
        lgssm._r_raw.copy_(tril_to_raw(torch.diag(obs_scale)))
    return lgssm
