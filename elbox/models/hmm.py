"""Hidden Markov models: a discrete Markov chain of states, each emitting an observation."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution, Independent
from torch.distributions.utils import lazy_property

from elbox._validation import as_data, check_positive_int, check_probabilities
from elbox.data.sequences import Sequences, as_sequences
from elbox.distributions.hmm_kernels import (
    LinearEmissions,
    emissions_batch_last,
    forward,
    forward_backward,
    forward_log_space,
    hmm_log_evidence,
)
from elbox.distributions.markov import MarkovChain, viterbi
from elbox.models.base import LatentModel
from elbox.models.forecast import Forecast, check_level, check_steps, mixture_quantiles
from elbox.models.mixture import GaussianMixture

__all__ = ["HMM", "HMMPosterior"]

_EMISSIONS = ("gaussian", "categorical")


class HMM(LatentModel):
    r"""A hidden Markov model with K states and categorical or Gaussian emissions.

    .. math:: z_1 \sim \pi, \quad z_{t+1} \mid z_t \sim A_{z_t,\cdot}, \quad
              x_t \mid z_t \sim p(x \mid \theta_{z_t}), \qquad
              \log p(x) = \log \textstyle\sum_{z} \pi_{z_1} \prod_t A_{z_t z_{t+1}} \prod_t p(x_t \mid z_t).

    A data point is a whole sequence: x is ``[B, T, D]`` (Gaussian) or ``[B, T]`` (symbols), or
    a :class:`~elbox.data.Sequences` for ragged lengths. The latent z is the state path
    ``[B, T]``. Steps past a sequence's end carry no data; their states are uniform and
    independent of θ under the prior and the posterior alike, so they change neither the
    evidence, nor the ELBO's gap, nor the M-step.

    ``log_evidence`` runs the forward algorithm batched over sequences, in log space (filtered
    probabilities normalized at each step, their log normalizers summed; a log-sum-exp
    recursion takes over if they underflow). ``posterior`` is an :class:`HMMPosterior`, a
    distribution over whole paths that forward-filtering backward-sampling draws from, with
    smoothed and pairwise marginals; :meth:`viterbi` decodes; :meth:`m_step` is Baum–Welch.

    Args:
        num_states: K.
        emission: ``"gaussian"`` or ``"categorical"``.
        dim: D, for Gaussian emissions.
        num_symbols: M, for categorical emissions.
        covariance_type: ``"diag"`` or ``"full"`` (Gaussian emissions).
        reg_covar: Added to the variances the M-step estimates.
        initial_probs: π, ``[K]`` (default uniform).
        transition_matrix: A, ``[K, K]``, rows summing to one (default uniform).
        loc: Emission means ``[K, D]``; covariance: ``[K, D]`` (diag) or ``[K, D, D]`` (full).
        emission_probs: ``[K, M]``, rows summing to one (categorical; default random).
        fixed: Parameters held at their given values (:meth:`fix`): any of ``"initial_probs"``,
            ``"transition_matrix"``, ``"emissions"`` (Gaussian: means and covariances) or
            ``"emission_probs"`` (categorical); EM updates the others, gradient fitting too.

    References:
        A Tutorial on Hidden Markov Models (Rabiner, 1989), https://doi.org/10.1109/5.18626

    Example:
        >>> model = HMM(3, "gaussian", dim=2, loc=3 * torch.randn(3, 2))
        >>> x, z = model.sample(10, num_steps=50)
        >>> model.log_evidence(x).shape
        torch.Size([10])
    """

    def __init__(
        self,
        num_states: int,
        emission: str = "gaussian",
        *,
        dim: int | None = None,
        num_symbols: int | None = None,
        covariance_type: str = "diag",
        reg_covar: float = 1e-6,
        initial_probs=None,
        transition_matrix=None,
        loc=None,
        covariance=None,
        emission_probs=None,
        fixed=(),
    ):
        super().__init__()
        K = check_positive_int(num_states, "num_states")
        if emission not in _EMISSIONS:
            raise ValueError(f"emission must be one of {_EMISSIONS}; received {emission!r}")
        self.emission = emission
        dtype = torch.get_default_dtype()
        self.initial_logits = nn.Parameter(torch.zeros(K, dtype=dtype))
        self.transition_logits = nn.Parameter(torch.zeros(K, K, dtype=dtype))
        if emission == "gaussian":
            if dim is None or num_symbols is not None:
                raise ValueError("emission='gaussian' needs dim= (and no num_symbols)")
            self.emissions = GaussianMixture(K, check_positive_int(dim, "dim"), covariance_type, reg_covar)
            self.emissions.logits.requires_grad_(False)  # the mixture's weights play no part here
            self.data_shape = (None, self.emissions.dim)
            with torch.no_grad():
                if loc is not None:
                    self.emissions.loc.copy_(self.emissions._checked(loc, "loc", (K, self.emissions.dim)))
                if covariance is not None:
                    self.emissions.covariance = covariance
        else:
            if num_symbols is None or dim is not None or loc is not None or covariance is not None:
                raise ValueError("emission='categorical' needs num_symbols= (and no dim, loc or covariance)")
            M = check_positive_int(num_symbols, "num_symbols")
            self.emission_logits = nn.Parameter(torch.randn(K, M, dtype=dtype))
            self.data_shape = (None,)
            if emission_probs is not None:
                self.emission_probs = emission_probs
        if initial_probs is not None:
            self.initial_probs = initial_probs
        if transition_matrix is not None:
            self.transition_matrix = transition_matrix
        if isinstance(fixed, str) or not all(isinstance(f, str) for f in fixed):
            raise TypeError(f"fixed must be a list of parameter names, e.g. ['transition_matrix']; received {fixed!r}")
        if "emissions" in fixed and emission == "categorical" or "emission_probs" in fixed and emission == "gaussian":
            raise ValueError(f"fixed: {'emissions' if emission == 'categorical' else 'emission_probs'} applies to "
                             f"{'Gaussian' if emission == 'categorical' else 'categorical'} emissions")  # fmt: skip
        self.fix(*fixed)

    #: Baum–Welch's M-step updates π, A and the emissions each on its own, so holding some fixed
    #: and updating the rest is the conditional maximum. The Gaussian emissions' means and
    #: covariances are one block (the covariances are taken around the new means).
    _FIXABLE = {
        "initial_probs": ("initial_logits",), "transition_matrix": ("transition_logits",),
        "emission_probs": ("emission_logits",), "emissions": ("emissions.loc", "emissions._raw", "emissions._log_var"),
    }  # fmt: skip

    # Parameters, constrained.

    @property
    def num_free_parameters(self) -> int:
        """The free parameters (hmmlearn's count, for BIC): K − 1 initial probabilities, K(K − 1)
        transitions, and the emissions' (Gaussian: K D means and K covariances of D(D+1)/2 or D
        entries; categorical: K(M − 1))."""
        K = self.num_states
        if self.emission == "gaussian":
            emissions = self.emissions.num_free_parameters - (K - 1)  # the mixture's weights play no part
        else:
            emissions = K * (self.num_symbols - 1)
        return K - 1 + K * (K - 1) + emissions

    @property
    def num_states(self) -> int:
        return self.initial_logits.shape[0]

    @property
    def dim(self) -> int | None:
        return self.emissions.dim if self.emission == "gaussian" else None

    @property
    def num_symbols(self) -> int | None:
        return self.emission_logits.shape[1] if self.emission == "categorical" else None

    def _set_probs(self, param: nn.Parameter, value, name: str) -> None:
        value = as_data(value, name, dtype=param.dtype)
        if value.shape != param.shape:
            raise ValueError(f"{name} must have shape {list(param.shape)}; received {list(value.shape)}")
        value = check_probabilities(value, name + (" (each row)" if value.dim() == 2 else ""), dim=-1)
        with torch.no_grad():
            param.copy_(value.log())  # a zero stays a zero (log-probability −∞): a structural zero

    @property
    def initial_probs(self) -> Tensor:
        """π, ``[K]``."""
        return self.initial_logits.softmax(-1)

    @initial_probs.setter
    def initial_probs(self, value) -> None:
        self._set_probs(self.initial_logits, value, "initial_probs")

    @property
    def transition_matrix(self) -> Tensor:
        """A, ``[K, K]``: A[i, j] = p(z_{t+1} = j | z_t = i)."""
        return self.transition_logits.softmax(-1)

    @transition_matrix.setter
    def transition_matrix(self, value) -> None:
        self._set_probs(self.transition_logits, value, "transition_matrix")

    @property
    def emission_probs(self) -> Tensor:
        """``[K, M]`` (categorical emissions)."""
        return self.emission_logits.softmax(-1)

    @emission_probs.setter
    def emission_probs(self, value) -> None:
        self._set_probs(self.emission_logits, value, "emission_probs")

    @property
    def em_regularizer(self) -> str | None:
        return self.emissions.em_regularizer if self.emission == "gaussian" else None

    # Data.

    def check_data(self, x, *, name: str = "x") -> Sequences:
        """``x`` as a checked :class:`~elbox.data.Sequences` (see :func:`as_sequences`); a step whose
        value is NaN (every coordinate, for Gaussian emissions) is missing: its emission
        log-probability is 0 (it tells nothing about the state), which the forward–backward pass,
        the evidence, the forecast and Baum–Welch then skip."""
        if self.emission == "categorical":
            return as_sequences(x, event_shape=(self.num_symbols,), integer=True, name=name, missing=True,
                                **self._sequence_options())  # fmt: skip
        x = as_sequences(x, event_shape=(self.dim,), name=name, missing=True, **self._sequence_options())
        if x.missing is not None and x.missing.dim() == 3:
            partial = x.missing.any(-1) & ~x.missing.all(-1)
            if bool(partial.any()):
                b, t = (int(i) for i in partial.nonzero()[0])
                d = int(x.missing[b, t].nonzero()[0])
                raise ValueError(
                    f"{name} must be finite, or NaN in every coordinate of a missing step: step {t} of sequence {b} "
                    f"is partly missing, its first (NaN) at index ({b}, {t}, {d}) ({int(partial.sum())} such steps). "
                    "The HMM takes a missing step as a whole: set the whole step to NaN, or use a "
                    "LinearGaussianSSM, which conditions on the observed coordinates."
                )
        return x

    @staticmethod
    def _seen(x: Sequences) -> Tensor:
        """The steps that carry an observation, ``[B, T]``: inside the sequence and not missing."""
        if x.missing is None:
            return x.mask
        return x.mask & ~(x.missing if x.missing.dim() == 2 else x.missing.all(-1))  # whole steps are missing

    def emission_log_prob(self, x) -> Tensor:
        """log p(x_t | z_t = k) for every step and state, ``[B, T, K]``; zero past a sequence's end."""
        return self._emission_log_prob(self.check_data(x))

    def _emission_log_prob(self, x: Sequences, statistics=None) -> Tensor:
        """``[B, T, K]``; laid out in memory as ``[K, T, B]`` where the compiled kernels take the
        sequences as lanes (:func:`~elbox.distributions.hmm_kernels.emissions_batch_last`), so
        that they read it without a transposition."""
        B, T = x.mask.shape
        lanes = emissions_batch_last(B)
        if self.emission == "categorical":
            table = self.emission_logits.log_softmax(-1)  # [K, M]
            log_e = table[:, x.values.T].permute(2, 1, 0) if lanes else table.T[x.values]  # [B, T, K]
        else:
            centre, features = self._frame_moments(x) if statistics is None else statistics
            weights = self.emissions._weights(centre)  # [F, K]
            if lanes:  # [K, F] @ [F, T B]
                log_e = (weights.T @ features).view(-1, T, B).permute(2, 1, 0)
            else:
                log_e = (features.T @ weights).view(T, B, -1).transpose(0, 1)
        if not x.ragged and x.missing is None:  # every step seen: nothing to zero
            return log_e
        seen = self._seen(x).unsqueeze(-1)
        return torch.where(seen.permute(2, 1, 0), log_e.permute(2, 1, 0), 0.0).permute(2, 1, 0) if lanes else \
            torch.where(seen, log_e, 0.0)  # fmt: skip

    def _kernel_emissions(self, x: Sequences, statistics=None) -> Tensor | LinearEmissions:
        """The log-emissions as the exact kernels take them: Gaussian ones of a batch that the
        compiled passes take by lanes, every step observed, as
        :class:`~elbox.distributions.hmm_kernels.LinearEmissions` (the centred frames and the
        weights, computed inside the forward loop and never stored); else the tensor."""
        B, T = x.mask.shape
        if self.emission == "categorical" or x.ragged or x.missing is not None or not emissions_batch_last(B):
            return self._emission_log_prob(x, statistics)
        if statistics is None:  # centred at the components' mean (any centre gives the same values)
            frames, centre = x.values.permute(2, 1, 0).contiguous(), self.emissions.loc.mean(0)  # [D, T, B]
            weights = self.emissions._weights(centre)
        else:  # the features' rows 1..D are the frames less their centre
            centre, features = statistics
            frames, weights = features[1 : 1 + self.dim].view(self.dim, T, B), self.emissions._weights(centre)
            centre = torch.zeros_like(centre)
        rows, cols = self.emissions._second_moments(centre.device)
        return LinearEmissions(frames, centre, rows, cols, weights)

    def _frame_moments(self, x: Sequences) -> tuple[Tensor, Tensor]:
        """Gaussian emissions: the centre of the frames and their moment features as columns in
        time-major order, ``[F, T B]`` (column t B + b is step t of sequence b)."""
        B, T, D = x.values.shape
        return self.emissions._moments(x.values.permute(2, 1, 0).reshape(D, T * B), columns=True)

    def em_statistics(self, x):
        """Gaussian emissions: the frames' moment features (:meth:`_frame_moments`), which each
        E-step and M-step of an EM run reads (None for categorical emissions)."""
        if self.emission == "categorical":
            return None
        with torch.no_grad():
            return self._frame_moments(self.check_data(x))

    # The model.

    def prior(self, num_steps: int = 1) -> MarkovChain:
        """The Markov chain over paths of ``num_steps`` states."""
        T = check_positive_int(num_steps, "num_steps")
        K = self.num_states
        return MarkovChain(self.initial_logits, self.transition_logits.expand(T - 1, K, K))

    def prior_for(self, x) -> MarkovChain:
        """The prior over the padded batch's paths: uniform, θ-free states past each end."""
        x = self.check_data(x)
        T = x.mask.shape[1]
        if not x.ragged:
            return self.prior(T)
        keep = x.mask[:, 1:, None, None]  # [B, T-1, 1, 1]: the step into t+1 is real
        K = self.num_states
        logits = torch.where(keep, self.transition_logits.expand(T - 1, K, K), 0.0)  # [B, T-1, K, K]
        return MarkovChain(self.initial_logits, logits)

    def log_likelihood(self, x, z: Tensor) -> Tensor:
        """log p(x | z) = Σ_t log p(x_t | z_t) for paths ``[*S, B, T]``, ``[*S, B]``."""
        log_e = self.emission_log_prob(x)  # [B, T, K]
        z = z.long()
        return log_e.expand(*z.shape, -1).gather(-1, z.unsqueeze(-1)).squeeze(-1).sum(-1)

    def log_joint(self, x, z: Tensor) -> Tensor:
        return self.prior_for(x).log_prob(z) + self.log_likelihood(x, z)

    def expected_log_likelihood(self, x, q) -> Tensor | None:
        """Σ_t Σ_k q(z_t = k) log p(x_t | k) for q a chain over paths or mean-field over steps."""
        marginals = _marginals(q)
        if marginals is None:
            return None
        return (marginals * self.emission_log_prob(x)).sum((-2, -1))

    # Exact inference (elbox.distributions.hmm_kernels).

    def log_evidence(self, x) -> Tensor:
        """log p(x), ``[B]``: by a balanced tree of matrix products or the forward algorithm,
        whichever one cost rule (:func:`~elbox.distributions.hmm_kernels.product_tree_pays`)
        says is cheaper."""
        log_e = self._kernel_emissions(self.check_data(x))
        return hmm_log_evidence(self.initial_logits, self.transition_logits, log_e)

    def e_step(self, x, statistics=None) -> tuple[HMMPosterior, Tensor]:
        """Forward–backward: the posterior over paths and log p(x), ``[B]``."""
        x = self.check_data(x)
        log_e = self._kernel_emissions(x, statistics)
        fb = forward_backward(self.initial_logits, self.transition_logits, log_e, x.mask, zeros_ok=True)
        exact = None
        smallest = fb.smallest_filtered
        if smallest is None and fb.filtered is not None:
            smallest = fb.filtered.amin()
        if fb.filtered is not None and not bool(smallest > 0):  # zeros, perhaps underflow:
            initial, transition = self.initial_logits, self.transition_logits  # the exact logs on demand
            table = log_e.log_prob if isinstance(log_e, LinearEmissions) else lambda: log_e
            exact = lambda: forward_log_space(initial, transition, table(), log_values=True)[0]  # noqa: E731
        posterior = HMMPosterior(fb.filtered, self.transition_logits.log_softmax(-1), x.mask, fb.marginals,
                                 fb.transition_counts, log_filtered=fb.log_filtered,
                                 exact_log_filtered=exact)  # fmt: skip
        return posterior, fb.log_norm.sum(-1)

    @torch.no_grad()
    def forecast(self, x, steps: int, *, level: float = 0.9) -> Forecast:
        r"""p(x_{T+1:T+k} | x_{1:T}) for each sequence, from its own last step: the filtered
        p(z_T | x_{1:T}) carried k steps by the transition matrix, p(z_{T+j}) = α_T A^j, and the
        emissions mixed by it. Gaussian emissions: the mixture's mean, variance and the exact
        central ``level`` interval of each coordinate (the mixture's quantiles); categorical
        ones: the symbols' probabilities (no interval).

        Returns:
            A :class:`~elbox.models.forecast.Forecast` with ``state_probs`` ``[B, k, K]``.
        """
        k, level = check_steps(steps), check_level(level)
        x = self.check_data(x)
        alpha, _ = forward(self.initial_logits, self.transition_logits, self._emission_log_prob(x))
        B = len(x)
        p = alpha[torch.arange(B), x.mask.sum(1) - 1]  # p(z_T | x_{1:T}), [B, K]
        A = self.transition_matrix
        probs = []
        for _ in range(k):  # k products of [B, K] by [K, K]: the horizon, not the data's length
            p = p @ A
            probs.append(p)
        state_probs = torch.stack(probs, 1)  # [B, k, K]
        if self.emission == "categorical":
            return Forecast(state_probs @ self.emission_probs, None, None, None, level, state_probs=state_probs)
        loc = self.emissions.loc  # [K, D]
        var = self.emissions.covariance
        var = var.diagonal(dim1=-2, dim2=-1) if var.dim() == 3 else var  # [K, D]
        mean = state_probs @ loc  # [B, k, D]
        variance = state_probs @ (var + loc.square()) - mean.square()
        weights = state_probs.unsqueeze(-2).expand(*state_probs.shape[:2], loc.shape[1], -1)  # [B, k, D, K]
        lower, upper = mixture_quantiles(weights, loc.T, var.sqrt().T, ((1 - level) / 2, (1 + level) / 2))
        return Forecast(mean, variance, lower, upper, level, state_probs=state_probs)

    def posterior(self, x) -> HMMPosterior:
        return self.e_step(x)[0]

    def predict(self, x, *, grad: bool = False) -> Tensor:
        """The Viterbi path of each sequence, ``[B, T]`` (−1 past a sequence's end): hmmlearn's
        ``predict``."""
        with torch.set_grad_enabled(grad):
            return self.viterbi(x)[0]

    def viterbi(self, x) -> tuple[Tensor, Tensor]:
        """The most probable state paths and their log p(x, z*): ``([B, T], [B])``.

        Entries past a sequence's end are -1.
        """
        x = self.check_data(x)
        log_e = self._emission_log_prob(x)
        T, K = log_e.shape[1], self.num_states
        logits = (
            torch.where(x.mask[:, 1:, None, None], self.transition_logits.log_softmax(-1), 0.0)
            if T > 1
            else log_e.new_zeros(len(log_e), 0, K, K)
        )
        path, log_p = viterbi(self.initial_logits.log_softmax(-1), logits, log_e)
        return torch.where(x.mask, path, -1), log_p

    # EM.

    @torch.no_grad()
    def m_step(self, x, posterior: Distribution, statistics=None) -> None:
        """Baum–Welch: π, A and the emissions maximizing E_q[log p(x, z)] for q = ``posterior``
        (an :class:`HMMPosterior`, any :class:`~elbox.distributions.MarkovChain`, or a
        mean-field categorical q over the steps)."""
        with self._keeping_fixed():  # the blocks are updated on their own: a fixed one is put back
            self._m_step(self.check_data(x), posterior, statistics)

    def _m_step(self, x: Sequences, posterior: Distribution, statistics) -> None:
        gamma = _marginals(posterior)
        B, T = x.mask.shape
        K = self.num_states
        if gamma is None or gamma.shape != (B, T, K):
            raise ValueError(
                f"posterior must be a distribution over paths with marginals [{B}, {T}, {K}]; "
                f"received {type(posterior).__name__}"
            )
        if isinstance(posterior, HMMPosterior):
            counts = posterior.transition_counts
        elif isinstance(posterior, MarkovChain):
            counts = (posterior.pairwise_marginals() * x.mask[:, 1:, None, None]).sum(1)
        else:  # factorizes over time
            counts = gamma[:, :-1].mT @ (gamma[:, 1:] * x.mask[:, 1:, None])
        tiny = torch.finfo(gamma.dtype).tiny
        start = gamma[:, 0].sum(0)
        self.initial_logits.copy_((start / start.sum()).log())  # a zero stays a zero (−∞)
        totals = counts.sum(0)  # [K, K]
        rows = totals.sum(-1, keepdim=True)
        new_A = torch.where(
            rows > 0, totals / rows.clamp_min(tiny), self.transition_matrix
        )  # states never left keep their row
        self.transition_logits.copy_(new_A.log())
        weights = gamma if not x.ragged and x.missing is None else gamma * self._seen(x).unsqueeze(-1)
        if self.emission == "gaussian":  # [B, T, K], only observed steps; as rows, time-major as the features
            centre, features = self._frame_moments(x) if statistics is None else statistics
            resp = weights.transpose(0, 1).reshape(T * B, K)  # a view where γ is laid out [K, T, B]
            self.emissions.fit_components(_frames(x), resp, (centre, features.T))
        else:
            M = self.num_symbols
            counts_km = weights.new_zeros(K, M).index_add_(1, x.values.reshape(-1), weights.reshape(B * T, K).T)
            self.emission_logits.copy_(
                (counts_km / counts_km.sum(-1, keepdim=True).clamp_min(tiny)).clamp_min(tiny).log()
            )

    @torch.no_grad()
    def initialize(self, x, method: str = "kmeans++", generator: torch.Generator | None = None) -> None:
        """Sets the parameters from data before EM.

        ``"kmeans++"`` (Gaussian emissions): emission means and covariances from k-means++ on the
        observed frames (as a mixture's), π uniform, A with 0.5 on the diagonal. ``"random"``:
        π and the rows of A (and of the emission table) from a flat Dirichlet, Gaussian
        emissions from random responsibilities.
        """
        if method not in ("kmeans++", "random"):
            raise ValueError(f"method must be 'kmeans++' or 'random'; received {method!r}")
        with self._keeping_fixed():  # a fixed parameter keeps its value
            self._initialize(self.check_data(x), method, generator)

    def _initialize(self, x: Sequences, method: str, generator: torch.Generator | None) -> None:
        K = self.num_states
        dtype = self.initial_logits.dtype
        dirichlet = _Dirichlet(generator, dtype)
        if method == "kmeans++":
            if self.emission == "categorical":
                raise ValueError("method='kmeans++' needs Gaussian emissions; use 'random' for categorical ones")
            self.initial_probs = torch.full((K,), 1.0 / K, dtype=dtype)
            self.transition_matrix = 0.5 * torch.eye(K, dtype=dtype) + 0.5 / K
        else:
            self.initial_probs = dirichlet((K,))
            self.transition_matrix = dirichlet((K, K))
        if self.emission == "gaussian":
            frames = x.values[self._seen(x)]  # [N, D], observed steps only
            self.emissions.initialize(frames, method=method, generator=generator)
        else:
            self.emission_probs = dirichlet((K, self.num_symbols))

    def sample(self, n: int, num_steps: int = 10) -> tuple[Tensor, Tensor]:
        """``n`` sequences of ``num_steps`` steps: (x ``[n, T, D]`` or ``[n, T]``, z ``[n, T]``)."""
        n = check_positive_int(n, "n")
        with torch.no_grad():
            z = self.prior(num_steps).sample((n,))  # [n, T]
            if self.emission == "categorical":
                x = Categorical(logits=self.emission_logits[z]).sample()
            else:
                x = self.emissions.likelihood(z).sample()
        return x, z

    def extra_repr(self) -> str:
        detail = f"dim={self.dim}" if self.emission == "gaussian" else f"num_symbols={self.num_symbols}"
        return f"num_states={self.num_states}, emission={self.emission!r}, {detail}"


class HMMPosterior(MarkovChain):
    r"""The exact posterior p(z | x) over an HMM's state paths, as forward filtering leaves it:

    .. math:: p(z \mid x) = p(z_T \mid x_{1:T}) \prod_t p(z_t \mid z_{t+1}, x_{1:t}), \quad
              p(z_t = i \mid z_{t+1} = j, x_{1:t}) \propto p(z_t = i \mid x_{1:t}) A_{ij},

    a reverse :class:`~elbox.distributions.MarkovChain`: ``sample`` is forward-filtering
    backward-sampling, ``log_prob`` is exact, :meth:`marginals` are the smoothed
    p(z_t | x) from the forward–backward pass and :meth:`pairwise_marginals` p(z_t, z_{t+1} | x).
    States past a sequence's end are uniform.
    """

    def __init__(
        self,
        filtered: Tensor | None,
        log_transition: Tensor,
        mask: Tensor,
        marginals: Tensor,
        counts: Tensor,
        log_filtered: Tensor | None = None,
        exact_log_filtered: Callable[[], Tensor] | None = None,
    ):
        B, T, K = marginals.shape
        # the filtered p(z_t | x_{1:t}) as probabilities, or as log-probabilities where they were
        # computed in log space (zeros and underflow); their log is taken only when needed. Where
        # the probabilities hold zeros that may be underflow, ``exact_log_filtered`` computes the
        # log-space pass, run only if the reverse chain is used (sampling, log_prob)
        self._alpha, self._log_alpha, self._log_A, self._mask = filtered, log_filtered, log_transition, mask
        self._exact_log_alpha = exact_log_filtered
        self._setup(torch.Size([B]), T, K, reverse=True)
        self._moments["marginals"] = marginals
        #: Expected numbers of each transition between observed steps, per sequence, ``[B, K, K]``.
        self.transition_counts = counts

    @lazy_property
    def _log_filtered(self) -> Tensor:
        K = self.num_states
        if self._log_alpha is None and self._exact_log_alpha is not None:
            self._log_alpha = self._exact_log_alpha()
        log_alpha = self._log_alpha if self._log_alpha is not None else self._alpha.log()
        return torch.where(self._mask.unsqueeze(-1), log_alpha, -math.log(K))  # [B, T, K]

    @property
    def initial_logits(self) -> Tensor:
        return self._log_filtered[:, -1]

    @lazy_property
    def transition_logits(self) -> Tensor:
        # [t, z_{t+1} = j, z_t = i] = log p(z_t = i | x_{1:t}) + log A_ij (past the end: z_t alone).
        log_A = torch.where(self._mask[:, 1:, None, None], self._log_A.T, 0.0)  # [B, T-1, j, i]
        logits = (self._log_filtered[:, :-1].unsqueeze(-2) + log_A).log_softmax(-1)
        # rows of states unreachable at t+1 (all −∞): any row will do, as they carry no mass;
        # a structural zero stays −∞
        return logits.nan_to_num(nan=-math.log(self.num_states), neginf=-math.inf)

    def expand(self, batch_shape, _instance=None):
        if torch.Size(batch_shape) == self.batch_shape:
            return self
        return MarkovChain(self.initial_logits, self.transition_logits, reverse=True).expand(batch_shape)


def _frames(x: Sequences) -> Tensor:
    """The checked batch's steps as rows ``[B T, D]`` (a view)."""
    return x.values.reshape(-1, x.values.shape[-1])


def _marginals(q) -> Tensor | None:
    """q(z_t = k), ``[B, T, K]``, for a chain or a mean-field categorical q; else None."""
    if isinstance(q, MarkovChain):
        return q.marginals()
    if isinstance(q, Independent) and isinstance(q.base_dist, Categorical) and q.reinterpreted_batch_ndims == 1:
        return q.base_dist.probs
    return None


class _Dirichlet:
    """Draws from a flat Dirichlet with an optional generator (rows along the last dimension)."""

    def __init__(self, generator: torch.Generator | None, dtype: torch.dtype):
        self.generator, self.dtype = generator, dtype

    def __call__(self, shape: tuple[int, ...]) -> Tensor:
        u = torch.rand(shape, generator=self.generator, dtype=self.dtype).clamp_min(1e-12)
        g = -u.log()  # Exp(1) draws, normalized: Dirichlet(1, …, 1)
        return g / g.sum(-1, keepdim=True)
