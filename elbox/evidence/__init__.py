"""Estimates of the evidence log p(x) and how far a bound is from it: exact, importance
sampling, annealed importance sampling (and BDMC's bracket), diagnostics, and the report."""

from elbox.evidence.ais import AIS, annealing_schedule
from elbox.evidence.diagnostics import (
    PosteriorCollapseWarning,
    active_units,
    kl_per_dimension,
    mutual_information,
    psis_khat,
)
from elbox.evidence.estimate import Estimate, bdmc, importance_log_weights, log_evidence, precision_shift
from elbox.evidence.report import EvidenceReport, evidence_report
from elbox.evidence.smc import SequenceReport, sequence_report, smc_log_evidence

__all__ = [
    "AIS",
    "Estimate",
    "EvidenceReport",
    "PosteriorCollapseWarning",
    "SequenceReport",
    "active_units",
    "annealing_schedule",
    "bdmc",
    "evidence_report",
    "importance_log_weights",
    "kl_per_dimension",
    "log_evidence",
    "mutual_information",
    "precision_shift",
    "psis_khat",
    "sequence_report",
    "smc_log_evidence",
]
