"""elbox: latent-variable models fitted by the ELBO, with the gap to the evidence reported."""

from elbox import distributed, distributions, guides, models, objectives
from elbox.bounds import Terms, cubo, elbo, iwae, renyi
from elbox.data import Batch, Sequences
from elbox.evidence import Estimate, EvidenceReport, bdmc, evidence_report, log_evidence
from elbox.inference import (
    ConvergenceWarning,
    DivergenceWarning,
    FitOptions,
    History,
    Interrupted,
    Schedule,
    em,
    fit,
    gradient_report,
    refine,
    select,
)
from elbox.models import (
    HMM,
    VAE,
    BetaBernoulli,
    DeepMarkovModel,
    DiscreteVAE,
    FactorAnalysis,
    FlowDensity,
    GaussianMixture,
    HierarchicalNormal,
    LatentModel,
    LinearGaussianSSM,
    NormalNormal,
    WorldModel,
)
from elbox.objectives import Objective, register_objective

__version__ = "0.1.0"


def __getattr__(name: str):
    # load_run rebuilds a run from its config (the run layer, elbox.runs): imported on first use, so
    # that `import elbox` stays free of it
    if name in ("load_run", "Run"):
        from elbox import runs

        return getattr(runs, name)
    raise AttributeError(f"module 'elbox' has no attribute {name!r}")


__all__ = [
    "HMM",
    "Batch",
    "BetaBernoulli",
    "ConvergenceWarning",
    "DeepMarkovModel",
    "DiscreteVAE",
    "DivergenceWarning",
    "Estimate",
    "EvidenceReport",
    "FactorAnalysis",
    "FitOptions",
    "FlowDensity",
    "GaussianMixture",
    "HierarchicalNormal",
    "History",
    "Interrupted",
    "LatentModel",
    "LinearGaussianSSM",
    "NormalNormal",
    "Objective",
    "Run",
    "Schedule",
    "Sequences",
    "Terms",
    "VAE",
    "WorldModel",
    "bdmc",
    "cubo",
    "elbo",
    "distributed",
    "distributions",
    "em",
    "evidence_report",
    "fit",
    "gradient_report",
    "guides",
    "iwae",
    "load_run",
    "log_evidence",
    "models",
    "objectives",
    "refine",
    "register_objective",
    "renyi",
    "select",
]
