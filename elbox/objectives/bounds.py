"""The bounds of :mod:`elbox.bounds` as objectives: ELBO (with β), IWAE, Rényi-α, and maximum
likelihood for models whose evidence is exact."""

from __future__ import annotations

import torch
from torch import Tensor

from elbox._validation import check_number, check_positive_int
from elbox.bounds.elbo import _EXPECTATIONS, _KL_METHODS, Terms, elbo
from elbox.bounds.importance import iwae, renyi
from elbox.data.batches import Batch
from elbox.objectives._fused import fused_elbo_parts
from elbox.objectives.base import Objective, Output, register_objective

__all__ = ["ELBO", "IWAE", "MaxLikelihood", "Renyi"]


@register_objective("elbo")
class ELBO(Objective):
    r"""The evidence lower bound, trained as reconstruction − β·KL.

    .. math:: \mathcal{L}_\beta(x) = \mathbb{E}_{q(z|x)}[\log p_\theta(x \mid z)]
              - \beta\,\mathrm{KL}(q(z \mid x) \,\|\, p(z))

    The value reported is always the ELBO itself (β = 1); β ≠ 1 changes only what is maximized
    (Higgins et al.'s β-VAE, and KL warm-up, which schedules β from 0). Where the KL is +∞ (a
    point-mass q, the autoencoder limit) the reconstruction alone is maximized and the bound is
    reported as −∞. β is a buffer: checkpointed, and driven by schedules.

    Args:
        model: A :class:`~elbox.models.LatentModel`.
        guide: A guide q(z | x).
        beta: The KL weight (default the model's ``beta`` attribute, else 1).
        num_samples: Particles per data point where the expectation is sampled.
        kl: ``"analytic"`` (where registered) or ``"mc"``.
        expectation: ``"auto"``, ``"analytic"``, ``"enumerate"`` or ``"sample"`` (see
            :func:`elbox.elbo`).
    """

    option_help = {"kl": "'analytic' (where registered) or 'mc'",
                   "expectation": "'auto', 'analytic', 'enumerate' or 'sample': how E_q[log p(x | z)] is taken"}

    def __init__(self, model, guide, *, beta: float | None = None, num_samples: int = 1, kl: str = "analytic",
                 expectation: str = "auto"):  # fmt: skip
        super().__init__(model, guide)
        beta = check_number(getattr(model, "beta", 1.0) if beta is None else beta, "beta", minimum=0.0)
        if kl not in _KL_METHODS:
            raise ValueError(f"kl must be one of {_KL_METHODS}; received {kl!r}")
        if expectation not in _EXPECTATIONS:
            raise ValueError(f"expectation must be one of {_EXPECTATIONS}; received {expectation!r}")
        self.register_buffer("beta", torch.tensor(beta, dtype=torch.float64))
        self.num_samples = check_positive_int(num_samples, "num_samples")
        self.kl, self.expectation = kl, expectation

    def options(self) -> dict:
        return {"num_samples": self.num_samples, "kl": self.kl, "expectation": self.expectation}

    def forward(self, batch: Batch | Tensor) -> Output:
        batch = self.batch(batch)
        # the Gaussian VAE's one-particle ELBO, gradient by hand, where it is exactly this computation
        fused = fused_elbo_parts(self.model, self.guide, batch, self.num_samples, self.kl, self.expectation)
        if fused is not None:
            reconstruction, kl = fused
            terms = Terms(value=reconstruction - kl, reconstruction=reconstruction, kl=kl, kl_method="analytic")
        else:
            terms = elbo(self.model, self.guide, batch, num_samples=self.num_samples, kl=self.kl,
                         expectation=self.expectation)  # fmt: skip
        parts = {"reconstruction": terms.reconstruction, "kl": terms.kl}
        beta = float(self.beta)
        if beta == 1.0:
            surrogate = terms.value
        else:
            surrogate = terms.reconstruction - beta * terms.kl
            if terms.score is not None:  # a non-reparameterized q: its score-function gradient
                surrogate = surrogate + terms.score
        # KL = +∞ (a point-mass q): the reconstruction alone carries a gradient
        surrogate = torch.where(torch.isposinf(terms.kl), terms.reconstruction, surrogate)
        return Output(terms.value, surrogate, parts)


@register_objective("iwae")
class IWAE(Objective):
    r"""The importance-weighted bound with S particles (Burda et al., 2016); VIMCO's
    score-function estimator where q is not reparameterized.

    Args:
        model, guide: As for :class:`ELBO`.
        num_samples: S.
    """

    def __init__(self, model, guide, *, num_samples: int = 5):
        super().__init__(model, guide)
        self.num_samples = check_positive_int(num_samples, "num_samples")

    def options(self) -> dict:
        return {"num_samples": self.num_samples}

    def forward(self, batch: Batch | Tensor) -> Output:
        value = iwae(self.model, self.guide, self.batch(batch), num_samples=self.num_samples)
        return Output(value.detach(), value)


@register_objective("renyi")
class Renyi(Objective):
    r"""The Rényi bound of order α (Li & Turner, 2016): α = 1 is the ELBO, α = 0 the IWAE bound.

    Args:
        model, guide: As for :class:`ELBO`.
        alpha: α, a finite real number (α < 0 is not a lower bound).
        num_samples: S.
    """

    option_help = {"alpha": "α of the Rényi bound (1: the ELBO; 0: IWAE)"}

    def __init__(self, model, guide, *, alpha: float = 0.5, num_samples: int = 5):
        super().__init__(model, guide)
        alpha = check_number(alpha, "alpha")
        self.alpha = alpha
        self.num_samples = check_positive_int(num_samples, "num_samples")

    def options(self) -> dict:
        return {"alpha": self.alpha, "num_samples": self.num_samples}

    def forward(self, batch: Batch | Tensor) -> Output:
        value = renyi(self.model, self.guide, self.batch(batch), alpha=self.alpha, num_samples=self.num_samples)
        return Output(value.detach(), value)


@register_objective("max_likelihood")
class MaxLikelihood(Objective):
    r"""The exact log-likelihood log p_θ(x), for models whose evidence is tractable (mixtures,
    factor analysis, HMMs, linear-Gaussian state-space models, and exact-likelihood densities):
    no guide, and no gap.

    .. math:: \ell(\theta; x) = \log p_\theta(x)

    Args:
        model: A model with :meth:`~elbox.models.LatentModel.log_evidence`.
    """

    needs_guide = False

    def __init__(self, model):
        if not getattr(model, "has_exact_evidence", False):
            raise TypeError(
                f"the 'max_likelihood' objective needs a model with exact evidence; {type(model).__name__} has "
                "none: fit it with a bound ('elbo', 'iwae') and a guide"
            )
        super().__init__(model)

    def forward(self, batch: Batch | Tensor) -> Output:
        x, _ = self.batch(batch)
        value: Tensor = self.model.log_evidence(x)
        return Output(value.detach(), value)
