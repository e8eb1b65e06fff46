"""elbox: latent-variable models fitted by the ELBO, with the gap to the evidence reported."""

from elbox import guides, models
from elbox.bounds import Terms, elbo, iwae, renyi
from elbox.evidence import Estimate, log_evidence
from elbox.inference import ConvergenceWarning, History, em, fit
from elbox.models import (
    BetaBernoulli,
    FactorAnalysis,
    GaussianMixture,
    HierarchicalNormal,
    LatentModel,
    NormalNormal,
)

__version__ = "0.1.0"

__all__ = [
    "BetaBernoulli",
    "ConvergenceWarning",
    "Estimate",
    "FactorAnalysis",
    "GaussianMixture",
    "HierarchicalNormal",
    "History",
    "LatentModel",
    "NormalNormal",
    "Terms",
    "elbo",
    "em",
    "fit",
    "guides",
    "iwae",
    "log_evidence",
    "models",
    "renyi",
]
