"""The filtering variational objective (FIVO) as an objective: the particle filter's log Ẑ over
the paths of a sequence model, the guide as proposal. ``elbo`` and ``iwae`` train the same models
through :func:`elbox.elbo` and :func:`elbox.iwae`, which read their paths."""

from __future__ import annotations

from torch import Tensor

from elbox._validation import check_number, check_positive_int
from elbox.bounds.sequence import smc
from elbox.data.batches import Batch
from elbox.distributions.smc import RESAMPLING
from elbox.objectives.base import Objective, Output, register_objective

__all__ = ["FIVO"]


@register_objective("fivo")
class FIVO(Objective):
    r"""The filtering variational objective (Maddison et al. 2017; Le et al. 2018; Naesseth et al.
    2018): log Ẑ of a particle filter with S particles, the guide proposing each step,

    .. math:: \mathrm{FIVO}_S(x) = \mathbb{E}\Big[\sum_t \log \sum_s \bar w^s_{t-1}
              \frac{p(z^s_t \mid z^s_{t-1})\, p(x_t \mid z^s_t)}{q(z^s_t \mid z^s_{t-1}, x)}\Big] \le \log p(x),

    resampling when the effective sample size falls below ``ess_threshold`` · S. With
    ``resample = "never"`` it is IWAE over whole paths. The resampling's score-function gradient
    is dropped, as in those papers, unless ``resampling_gradient`` (multinomial only).

    Args:
        model: A sequence model with a :class:`~elbox.distributions.MarkovPath` prior
            (:class:`~elbox.models.DeepMarkovModel`).
        guide: Its guide (the proposal).
        num_samples: S.
        resample: ``"systematic"``, ``"multinomial"`` or ``"never"``.
        ess_threshold: The fraction of S below which the ESS triggers resampling.
        resampling_gradient: Keep the resampling's score-function term.
    """

    option_help = {"resample": "'systematic', 'multinomial' or 'never' (never: IWAE over paths)",
                   "ess_threshold": "resample when the effective sample size < ess_threshold × num_samples",
                   "resampling_gradient": "keep the resampling's score-function gradient (multinomial only)",
                   }  # fmt: skip

    def __init__(self, model, guide, *, num_samples: int = 4, resample: str = "systematic",
                 ess_threshold: float = 0.5, resampling_gradient: bool = False):  # fmt: skip
        super().__init__(model, guide)
        from elbox.models.dmm import DeepMarkovModel  # a world model's categorical latents are straight-through

        if isinstance(model, DeepMarkovModel) and model.latent == "categorical":
            raise TypeError("fivo: a DeepMarkovModel with latent='categorical' draws discrete paths, which carry no "
                            "pathwise gradient; train it by 'elbo' (exact over its states) and estimate its evidence "
                            "with log_evidence (exact) or method='smc'")  # fmt: skip
        self.num_samples = check_positive_int(num_samples, "num_samples")
        if resample not in RESAMPLING:
            raise ValueError(f"resample must be one of {RESAMPLING}; received {resample!r}")
        self.resample = resample
        self.ess_threshold = check_number(ess_threshold, "ess_threshold", minimum=0.0, maximum=1.0)
        if not isinstance(resampling_gradient, bool):
            raise TypeError(f"resampling_gradient must be True or False; received {resampling_gradient!r}")
        if resampling_gradient and resample != "multinomial":
            raise ValueError("resampling_gradient=True needs resample='multinomial'")
        self.resampling_gradient = resampling_gradient

    def options(self) -> dict:
        return {"num_samples": self.num_samples, "resample": self.resample, "ess_threshold": self.ess_threshold,
                "resampling_gradient": self.resampling_gradient}  # fmt: skip

    def forward(self, batch: Batch | Tensor) -> Output:
        result = smc(self.model, self.guide, self.batch(batch), num_samples=self.num_samples, resample=self.resample,
                     ess_threshold=self.ess_threshold, resampling_gradient=self.resampling_gradient)  # fmt: skip
        surrogate = result.log_z if result.score is None else result.log_z + result.score
        resampled = result.resampled.float().sum(-1)
        return Output(result.log_z.detach(), surrogate, {"resampled": resampled})
