r"""Estimators for discrete latents as objectives: Gumbel-Softmax and straight-through, the score
function with its baselines (moving average, NVIL), VIMCO, enumeration, and reweighted
wake-sleep (which takes any q).

Each reports the true bound of the discrete model and q (the ELBO, or the importance-weighted
bound for VIMCO and RWS); what differs is the gradient, through the surrogate.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import kl_divergence

from elbox._validation import check_number, check_positive_int
from elbox.bounds._common import log_mean_exp, prepare
from elbox.bounds.enumerate import enumerate_joint, local_expectation
from elbox.bounds.importance import _with_score, log_weights
from elbox.bounds.relaxed import check_temperature, gumbel_softmax
from elbox.data.batches import Batch
from elbox.objectives.base import Objective, Output, register_objective

__all__ = ["RWS", "VIMCO", "Enumerate", "GumbelSoftmax", "ScoreFunction"]


def _parts(terms) -> dict[str, Tensor]:
    return {"reconstruction": terms.reconstruction, "kl": terms.kl}


def _require_discrete(objective: Objective, q, instead: str) -> None:
    if q.has_rsample:
        raise TypeError(
            f"the {objective.name!r} estimator is for a q without a pathwise gradient (a discrete q); this q "
            f"({type(q).__name__}) is reparameterized: use {instead}"
        )


@register_objective("gumbel_softmax")
class GumbelSoftmax(Objective):
    r"""The ELBO with the Gumbel-Softmax (Concrete) gradient, or straight-through with ``hard=True``.

    The reported value is the true ELBO of the discrete q; the gradient is the relaxed one, at
    temperature τ (a buffer: checkpointed, and annealed by
    :func:`~elbox.inference.schedules.temperature_annealing`). See :mod:`elbox.bounds.relaxed`.

    Args:
        model, guide: A model in the one-hot convention and a one-hot categorical or Bernoulli guide.
        temperature: τ > 0 (Jang et al. start at 1 and anneal to 0.5).
        hard: Straight-through Gumbel-Softmax.
        num_samples: Particles per data point.

    References:
        Categorical Reparameterization with Gumbel-Softmax (Jang et al., 2017), https://arxiv.org/abs/1611.01144
    """

    option_help = {"temperature": "τ of the relaxation (the initial τ₀ when [train] anneal_rate > 0)",
                   "hard": "straight-through: the exact draw forward, the relaxed gradient backward"}

    def __init__(self, model, guide, *, temperature: float = 1.0, hard: bool = False, num_samples: int = 1):
        super().__init__(model, guide)
        self.register_buffer("temperature", torch.tensor(check_temperature(temperature), dtype=torch.float64))
        if not isinstance(hard, bool):
            raise TypeError(f"hard must be True or False; received {hard!r}")
        self.hard = hard
        self.num_samples = check_positive_int(num_samples, "num_samples")

    def options(self) -> dict:
        return {"hard": self.hard, "num_samples": self.num_samples}

    def forward(self, batch: Batch | Tensor) -> Output:
        tau = check_temperature(float(self.temperature), "temperature (the objective's, as scheduled)")
        terms, surrogate = gumbel_softmax(self.model, self.guide, self.batch(batch), temperature=tau,
                                          num_samples=self.num_samples, hard=self.hard)  # fmt: skip
        return Output(terms.value, surrogate, _parts(terms))


_BASELINES = ("none", "moving_average", "nvil", "leave_one_out")


@register_objective("score_function")
class ScoreFunction(Objective):
    r"""The ELBO with the score-function (REINFORCE) gradient and a control variate b:

    .. math:: \nabla_\phi \mathcal{L} \approx \frac1S\sum_s \big(f(z_s) - b\big)\,
              \nabla_\phi \log q_\phi(z_s \mid x) - \nabla_\phi \mathrm{KL}(q \,\|\, p),
              \quad f = \log p_\theta(x \mid z)

    (f = log p(x, z) − log q(z | x) and no KL term where the KL has no closed form). Unbiased
    for any b that does not depend on z_s. Baselines:

    - ``"none"``;
    - ``"moving_average"``: b an exponential moving average of f over the steps;
    - ``"nvil"`` (Mnih & Gregor 2014): b = c + b_ψ(x), a small network of x (owned by the
      objective, trained on its own loss E[(f − b)²]) plus a moving average c of its residual;
      with ``normalize=True`` the centred signal is also divided by a moving estimate of its
      standard deviation (at least 1), as in NVIL: that rescales the score term against the
      pathwise ones, so the gradient is no longer the ELBO's in expectation;
    - ``"leave_one_out"``: with S ≥ 2 particles, the mean of the other particles' f.

    Args:
        model, guide: Any model and a guide with a discrete (or any non-reparameterized) q.
        baseline: One of the above.
        num_samples: S.
        decay: The moving averages' decay α (c ← α c + (1 − α) mean f).
        hidden: NVIL's baseline network's hidden width (one tanh layer).
        normalize: NVIL's variance normalization (off by default: see above).

    References:
        Neural Variational Inference and Learning in Belief Networks (Mnih & Gregor, 2014),
        https://arxiv.org/abs/1402.0030
    """

    option_help = {"baseline": "'none', 'moving_average', 'nvil' or 'leave_one_out' (num_samples >= 2)",
                   "decay": "the moving averages' decay", "hidden": "nvil: the baseline network's hidden width",
                   "normalize": "nvil: divide the signal by its moving standard deviation (rescales the gradient)"}

    def __init__(self, model, guide, *, baseline: str = "moving_average", num_samples: int = 1, decay: float = 0.9,
                 hidden: int = 100, normalize: bool = False):  # fmt: skip
        super().__init__(model, guide)
        if baseline not in _BASELINES:
            raise ValueError(f"baseline must be one of {_BASELINES}; received {baseline!r}")
        self.num_samples = check_positive_int(num_samples, "num_samples")
        if baseline == "leave_one_out" and self.num_samples < 2:
            raise ValueError(f"baseline='leave_one_out' needs num_samples >= 2; received {num_samples}")
        decay = check_number(decay, "decay", minimum=0.0)
        if not decay < 1:
            raise ValueError(f"decay must be in [0, 1); received {decay}")
        self.baseline, self.decay = baseline, decay
        self.hidden = check_positive_int(hidden, "hidden")
        if not isinstance(normalize, bool):
            raise TypeError(f"normalize must be True or False; received {normalize!r}")
        if normalize and baseline != "nvil":
            raise ValueError(f"normalize applies to baseline='nvil'; received baseline={baseline!r}")
        self.normalize = normalize
        self.register_buffer("signal_mean", torch.zeros((), dtype=torch.float64))
        self.register_buffer("signal_var", torch.ones((), dtype=torch.float64))
        self.register_buffer("started", torch.zeros((), dtype=torch.bool))
        self.baseline_net = None
        if baseline == "nvil":
            shape = getattr(model, "data_shape", ())
            if not shape or any(d is None for d in shape):
                raise TypeError(f"baseline='nvil' needs a model with a fixed data shape (its network reads x); "
                                f"{type(model).__name__}'s is {shape!r}")  # fmt: skip
            size = math.prod(shape)
            self.baseline_net = nn.Sequential(nn.Flatten(), nn.Linear(size, self.hidden), nn.Tanh(),
                                              nn.Linear(self.hidden, 1))  # fmt: skip

    def options(self) -> dict:
        return {"baseline": self.baseline, "num_samples": self.num_samples, "decay": self.decay, "hidden": self.hidden,
                "normalize": self.normalize}  # fmt: skip

    def forward(self, batch: Batch | Tensor) -> Output:
        x, q, p = prepare(self.model, self.guide, self.batch(batch))
        _require_discrete(self, q, "'elbo', whose pathwise gradient has lower variance")
        z = q.sample((self.num_samples,))  # [S, B, *event]: no path from φ
        log_q = q.log_prob(z)  # [S, B]
        log_lik = self.model.log_likelihood(x, z)  # [S, B]
        try:
            kl = kl_divergence(q, p)
            f, value = log_lik, log_lik.mean(0) - kl
            pathwise = log_lik.mean(0) - kl  # θ through log p(x | z), φ (and the prior's θ) through the closed form
        except NotImplementedError:
            log_p = p.log_prob(z)
            kl = (log_q - log_p).mean(0)
            f, value = log_lik + log_p - log_q, (log_lik + log_p - log_q).mean(0)
            pathwise = (log_lik + log_p).mean(0)  # E[∇φ log q] = 0: that term is left out
        f = f.detach()
        baseline, baseline_loss = self._baseline(f, x)
        score = (log_q * (f - baseline)).mean(0)
        # the baseline network's own loss enters with its own parameters only (f is detached)
        surrogate = pathwise + score - score.detach() - baseline_loss
        return Output(value.detach(), surrogate, {"reconstruction": log_lik.mean(0).detach(), "kl": kl.detach()})

    def _baseline(self, f: Tensor, x: Tensor) -> tuple[Tensor, Tensor | float]:
        """b for each particle ``[S, B]`` (NVIL: f − (f − b)/scale, the normalized signal's
        equivalent), the baseline network's loss ``[B]`` (0 without one), and the moving
        statistics' update (in training, with gradients on)."""
        update = self.training and torch.is_grad_enabled()
        if self.baseline == "none":
            return torch.zeros_like(f), 0.0
        if self.baseline == "leave_one_out":
            return (f.sum(0, keepdim=True) - f) / (f.shape[0] - 1), 0.0
        started = bool(self.started)
        # the moving statistics as values (copies) taken before this step's update, so that b depends on
        # earlier steps' draws alone: Tensor.to returns the buffer itself where the dtype already matches
        c = self.signal_mean.to(f.dtype, copy=True) if started else f.new_zeros(())
        if self.baseline == "moving_average":
            if update:
                self._track(f.mean(), None)
            return c.expand_as(f), 0.0
        # NVIL: b_ψ(x) + c (normalize: the centred signal divided by max(1, its moving standard deviation))
        net = self.baseline_net
        learned = net(x.to(net[1].weight.dtype)).squeeze(-1).to(f.dtype)  # [B]
        residual = f - learned.detach()  # [S, B]
        centred = residual - c
        scale = self.signal_var.to(f.dtype, copy=True).sqrt().clamp_min(1.0) if self.normalize and started else 1.0
        if update:
            self._track(residual.mean(), centred.var() if centred.numel() > 1 else None)
        loss = (f - learned - c.detach()).square().mean(0)  # [B]
        return (f - centred / scale).detach(), loss

    @torch.no_grad()
    def _track(self, mean: Tensor, var: Tensor | None) -> None:
        a = self.decay
        if not bool(self.started):
            self.signal_mean.fill_(float(mean))
            if var is not None:
                self.signal_var.fill_(float(var))
            self.started.fill_(True)
            return
        self.signal_mean.mul_(a).add_((1 - a) * mean.double())
        if var is not None:
            self.signal_var.mul_(a).add_((1 - a) * var.double())


class _Particles(Objective):
    """An objective of S ≥ 2 particles per point and no other option (VIMCO, RWS)."""

    def __init__(self, model, guide, *, num_samples: int = 5):
        super().__init__(model, guide)
        self.num_samples = check_positive_int(num_samples, "num_samples", minimum=2)

    def options(self) -> dict:
        return {"num_samples": self.num_samples}


@register_objective("vimco")
class VIMCO(_Particles):
    r"""The importance-weighted bound with S particles for a discrete q, with VIMCO's
    leave-one-out score-function estimator (Mnih & Rezende, 2016).

    .. math:: \hat{\mathcal{L}}_S = \log \frac1S \sum_s w_s,\quad
              \nabla_\phi \approx \sum_s \big(\hat{\mathcal{L}}_S - \hat{\mathcal{L}}_{S}^{(-s)}\big)
              \nabla_\phi \log q(z_s \mid x) + \sum_s \tilde w_s \nabla_\phi \log w_s

    with L̂^(−s) the bound with w_s replaced by the geometric mean of the others.

    Args:
        model, guide: A model and a guide with a discrete q.
        num_samples: S ≥ 2.

    References:
        Variational Inference for Monte Carlo Objectives (Mnih & Rezende, 2016), https://arxiv.org/abs/1602.06725
    """

    def forward(self, batch: Batch | Tensor) -> Output:
        log_w, log_q = log_weights(self.model, self.guide, self.batch(batch), num_samples=self.num_samples)
        if log_q is None:  # log_weights gives q's log-density only for a q drawn without a path
            raise TypeError("the 'vimco' estimator is for a q without a pathwise gradient (a discrete q); this "
                            "guide's q is reparameterized: use 'iwae', the same bound with the pathwise gradient")
        value = _with_score(log_mean_exp(log_w), log_w, log_q)
        return Output(value.detach(), value)


_STRATEGIES = ("joint", "factorwise")


@register_objective("enumerate")
class Enumerate(Objective):
    r"""The ELBO with sums over the values of a discrete q instead of draws.

    ``strategy="joint"``: over q's whole support (K^N values), the exact ELBO and its exact
    gradient, the oracle for every other estimator; ``"factorwise"``: the local-expectation
    gradient (N·K evaluations per draw, unbiased; Titsias & Lázaro-Gredilla 2015), the ELBO
    itself estimated at the draws. See :mod:`elbox.bounds.enumerate`.

    Args:
        model, guide: A model and a guide with a categorical, one-hot categorical or Bernoulli q.
        strategy: ``"joint"`` or ``"factorwise"``.
        num_samples: Draws for ``"factorwise"``.
        max_support: The largest joint support ``"joint"`` sums over.
    """

    option_help = {"strategy": "'joint' (the exact sum over q's support) or 'factorwise' (local expectations)",
                   "max_support": "joint: the largest support summed over"}

    def __init__(self, model, guide, *, strategy: str = "joint", num_samples: int = 1, max_support: int = 65536):
        super().__init__(model, guide)
        if strategy not in _STRATEGIES:
            raise ValueError(f"strategy must be one of {_STRATEGIES}; received {strategy!r}")
        self.strategy = strategy
        self.num_samples = check_positive_int(num_samples, "num_samples")
        self.max_support = check_positive_int(max_support, "max_support")

    def options(self) -> dict:
        return {"strategy": self.strategy, "num_samples": self.num_samples, "max_support": self.max_support}

    def forward(self, batch: Batch | Tensor) -> Output:
        if self.strategy == "joint":
            terms = enumerate_joint(self.model, self.guide, self.batch(batch), max_support=self.max_support)
            return Output(terms.value.detach(), terms.value, _parts(terms))
        terms, surrogate = local_expectation(self.model, self.guide, self.batch(batch), num_samples=self.num_samples)
        return Output(terms.value, surrogate, _parts(terms))


@register_objective("rws")
class RWS(_Particles):
    r"""Reweighted wake-sleep (Bornschein & Bengio, 2015): the model climbs the IWAE bound, and q
    the wake-φ update, a step on the forward KL(p(z | x) ‖ q(z | x)) by self-normalized
    importance sampling:

    .. math:: \nabla_\theta \log \frac1S\sum_s w_s, \qquad
              \nabla_\phi: \ \sum_s \tilde w_s \nabla_\phi \log q_\phi(z_s \mid x),
              \quad \tilde w_s = w_s / \textstyle\sum_t w_t.

    The draws carry no gradient, so q may be discrete or continuous; forward KL makes q cover
    the posterior's mass where the ELBO's reverse KL seeks one mode. The reported value is the
    IWAE bound with the same S particles.

    Args:
        model, guide: Any model and guide.
        num_samples: S ≥ 2 (with S = 1 the weights are all 1 and q does not learn).

    References:
        Reweighted Wake-Sleep (Bornschein & Bengio, 2015), https://arxiv.org/abs/1406.2751
    """

    def forward(self, batch: Batch | Tensor) -> Output:
        x, q, p = prepare(self.model, self.guide, self.batch(batch))
        z = q.sample((self.num_samples,))  # [S, B, *event]: sample, never rsample
        log_q = q.log_prob(z)  # [S, B]
        log_w = self.model.log_joint(x, z) - log_q.detach()  # [S, B]: the model's gradient only
        value = log_mean_exp(log_w)
        weights = (log_w - log_w.logsumexp(0, keepdim=True)).exp().detach()  # w̃, [S, B]
        wake_phi = (weights * log_q).sum(0)
        ess = 1.0 / weights.square().sum(0)
        return Output(value.detach(), value + wake_phi - wake_phi.detach(), {"ess": ess})

