"""The evidence lower bound and its decomposition into reconstruction and KL."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from torch import Tensor
from torch.distributions import kl_divergence

from elbox._validation import check_positive_int
from elbox.bounds._common import draw, draw_with_log_prob, prepare, score_surrogate
from elbox.bounds.sequence import path_terms
from elbox.distributions.markov_path import MarkovPath

__all__ = ["ClosedForms", "Terms", "closed_forms", "elbo"]

_KL_METHODS = ("analytic", "mc")
_EXPECTATIONS = ("auto", "analytic", "enumerate", "sample")


@dataclass(frozen=True)
class Terms:
    """The ELBO and its two terms, each per data point ``[B]``: value = reconstruction − kl.

    Attributes:
        value: The ELBO.
        reconstruction: E_q[log p_θ(x | z)].
        kl: KL(q(z | x) ‖ p(z)), the regularization term.
        kl_method: How ``kl`` was computed: ``"analytic"``, ``"mc"`` or ``"enumerate"``.
        score: Where q is not reparameterized, the score-function surrogate already inside
            ``value``: zero in value, its gradient the estimator's (None otherwise). An objective
            that reweights the terms (β ≠ 1) adds it back.
    """

    value: Tensor
    reconstruction: Tensor
    kl: Tensor
    kl_method: str
    score: Tensor | None = None


def elbo(
    model,
    guide,
    x: Tensor,
    *,
    num_samples: int = 1,
    kl: str = "analytic",
    expectation: str = "auto",
    index: Tensor | None = None,
) -> Terms:
    r"""The evidence lower bound, per data point.

    .. math:: \mathcal{L}(x) = \mathbb{E}_{q(z|x)}[\log p_\theta(x \mid z)]
              - \mathrm{KL}(q(z \mid x) \,\|\, p(z)) \le \log p_\theta(x).

    The expectation E_q[log p_θ(x | z)] is taken, with ``expectation="auto"``, exactly where
    that can be done: a sum over the values of a discrete q with enumerable support
    (``"enumerate"``), or the model's closed form for this q (``"analytic"``, e.g. a Gaussian q
    under a linear-Gaussian model; the KL is then analytic too); otherwise it is an average over
    ``num_samples`` particles drawn along a leading dimension (``"sample"``, which can be
    forced). The KL is taken in closed form from
    torch's ``kl_divergence`` registry when ``kl="analytic"`` and one is registered, else by
    Monte Carlo from the same particles (``Terms.kl_method`` says which). With ``kl="mc"`` the
    estimator is the mean of log w = log p(x, z) − log q(z | x), whose variance vanishes when
    q is the exact posterior.

    Where q has no reparameterized sampler the returned value is the same number and its
    gradient is the score-function estimator's (with a leave-one-out baseline when
    ``num_samples > 1``).

    References:
        Auto-Encoding Variational Bayes (Kingma & Welling, 2014), https://arxiv.org/abs/1312.6114

    Args:
        model: A :class:`~elbox.models.LatentModel`.
        guide: A guide; ``guide(x, index)`` gives q with batch ``[B]``.
        x: Data, ``[B, *data_shape]``, or an :class:`~elbox.data.Batch` (data and indices).
        num_samples: S, the particles per data point.
        kl: ``"analytic"`` or ``"mc"``.
        expectation: ``"auto"``, ``"analytic"``, ``"enumerate"`` or ``"sample"``.
        index: The data points' indices, for local guides.

    Returns:
        :class:`Terms`, each ``[B]``.

    Example:
        >>> model = BetaBernoulli(1.0, 1.0)
        >>> x = torch.tensor([[1.0, 0.0, 1.0]])
        >>> terms = elbo(model, Beta(), x, num_samples=100)
    """
    num_samples = check_positive_int(num_samples, "num_samples")
    if kl not in _KL_METHODS:
        raise ValueError(f"kl must be one of {_KL_METHODS}; received {kl!r}")
    if expectation not in _EXPECTATIONS:
        raise ValueError(f"expectation must be one of {_EXPECTATIONS}; received {expectation!r}")
    x, q, p = prepare(model, guide, x, index)
    if isinstance(p, MarkovPath) and isinstance(q, MarkovPath):  # paths of Markov steps: the KL step by step
        return path_terms(model, x, q, p, num_samples, kl)
    exact = closed_forms(model, x, q, p, expectation=expectation, kl=kl)
    if exact.reconstruction is not None and exact.kl is not None:
        value = exact.reconstruction - exact.kl
        return Terms(value=value, reconstruction=exact.reconstruction, kl=exact.kl, kl_method=exact.kl_method)
    sample_kl = exact.kl is None
    if sample_kl:  # q's density at its own draws: one pass for a flow (rsample_and_log_prob)
        z, log_q = draw_with_log_prob(q, num_samples)  # [S, B, *event], [S, B]
    else:
        z, log_q = draw(q, num_samples), None
    if exact.reconstruction is None:
        log_lik = model.log_likelihood(x, z)  # [S, B]
        reconstruction, signal = log_lik.mean(0), log_lik
    else:  # the closed form, with a KL that has none: only the KL is sampled
        reconstruction, signal = exact.reconstruction, 0.0
    if sample_kl:
        log_ratio = log_q - p.log_prob(z)  # [S, B]
        kl_value, kl_method, signal = log_ratio.mean(0), "mc", signal - log_ratio
    else:
        kl_value, kl_method = exact.kl, exact.kl_method
    value = reconstruction - kl_value
    score = None
    if not q.has_rsample:
        score = score_surrogate(q.log_prob(z) if log_q is None else log_q, signal)
        value = value + score
    return Terms(value=value, reconstruction=reconstruction, kl=kl_value, kl_method=kl_method, score=score)


class ClosedForms(NamedTuple):
    """The ELBO's terms that have a closed form for this model and q (None where one must be
    sampled): the reconstruction E_q[log p(x | z)] and KL(q ‖ p), and how the KL was taken
    (``"analytic"``, ``"enumerate"``; ``"mc"`` when it is None)."""

    reconstruction: Tensor | None
    kl: Tensor | None
    kl_method: str


def closed_forms(model, x, q, p, *, expectation: str = "auto", kl: str = "analytic") -> ClosedForms:
    """The one decision of how the ELBO's expectation is taken, shared by :func:`elbo` and the
    evidence report (:func:`~elbox.evidence.evidence_report`), so that the two always agree.

    The reconstruction is exact where it can be: a sum over a discrete q's enumerable support
    (``"enumerate"``), else the model's closed form for this q (``"analytic"``, e.g. a Gaussian q
    under a linear-Gaussian model); ``"sample"`` (or neither available) leaves it to particles.
    The KL is taken from torch's ``kl_divergence`` registry when ``kl="analytic"`` and one is
    registered, else summed over an enumerable q, else left to particles. An explicit
    ``expectation`` that cannot be honoured is an error; ``"auto"`` takes what exists.
    """
    enumerable = q.support.is_discrete and q.has_enumerate_support
    if expectation == "enumerate" and not enumerable:
        raise ValueError(f"expectation='enumerate' needs a discrete q with enumerable support; q is {type(q).__name__}")
    analytic = _analytic_kl(q, p) if kl == "analytic" else None
    if expectation == "enumerate" or (expectation == "auto" and enumerable):
        values = q.enumerate_support(expand=True)  # [K, B]
        log_q = q.log_prob(values)  # [K, B]
        probs = log_q.exp()
        reconstruction = (probs * model.log_likelihood(x, values)).sum(0)
        kl_value = analytic if analytic is not None else (probs * (log_q - p.log_prob(values))).sum(0)
        return ClosedForms(reconstruction, kl_value, "enumerate")
    if expectation in ("auto", "analytic"):
        expected = model.expected_log_likelihood(x, q)
        if expected is None and expectation == "analytic":
            raise ValueError(
                f"expectation='analytic': {type(model).__name__} has no closed-form E_q[log p(x | z)] "
                f"for q = {type(q).__name__}; use expectation='sample'"
            )
        if expected is not None:
            if analytic is None and expectation == "analytic":
                raise ValueError(
                    f"expectation='analytic' needs a registered KL({type(q).__name__} ‖ {type(p).__name__})"
                )
            return ClosedForms(expected, analytic, "analytic" if analytic is not None else "mc")
    return ClosedForms(None, analytic, "analytic" if analytic is not None else "mc")


def _analytic_kl(q, p) -> Tensor | None:
    try:
        return kl_divergence(q, p)
    except NotImplementedError:
        return None
