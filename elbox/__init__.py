"""elbox: latent-variable models fitted by the ELBO, with the gap to the evidence reported."""

from elbox import distributions, guides, models
from elbox.bounds import Terms, cubo, elbo, iwae, renyi
from elbox.data import Sequences
from elbox.evidence import Estimate, EvidenceReport, bdmc, evidence_report, log_evidence
from elbox.inference import ConvergenceWarning, History, em, fit, refine
from elbox.models import (
    HMM,
    VAE,
    BetaBernoulli,
    FactorAnalysis,
    GaussianMixture,
    HierarchicalNormal,
    LatentModel,
    LinearGaussianSSM,
    NormalNormal,
)

__version__ = "0.1.0"

__all__ = [
    "HMM",
    "BetaBernoulli",
    "ConvergenceWarning",
    "Estimate",
    "EvidenceReport",
    "FactorAnalysis",
    "GaussianMixture",
    "HierarchicalNormal",
    "History",
    "LatentModel",
    "LinearGaussianSSM",
    "NormalNormal",
    "Sequences",
    "Terms",
    "VAE",
    "bdmc",
    "cubo",
    "elbo",
    "distributions",
    "em",
    "evidence_report",
    "fit",
    "guides",
    "iwae",
    "log_evidence",
    "models",
    "refine",
    "renyi",
]
