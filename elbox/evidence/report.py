r"""The evidence report: how far a fitted model's ELBO is from log p(x), bracketed from both
sides, the gap split into its approximation and amortization parts, with diagnostics."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor
from torch.distributions import Bernoulli, Independent, OneHotCategorical

from elbox._validation import check_model, check_number, check_positive_int, named
from elbox.bounds._common import draw_with_log_prob, log_mean_exp, prepare
from elbox.bounds.elbo import closed_forms
from elbox.data.batches import Batch
from elbox.distributed import base_seed, map_batches, seed_for, seeded
from elbox.evidence.ais import check_schedule
from elbox.evidence.diagnostics import (
    active_units,
    collapse_warning,
    kl_per_dimension,
    mutual_information,
    psis_khat,
    warn_collapse,
)
from elbox.evidence.estimate import (
    _first_chunk_shift,
    _log_mean_and_stderr,
    _mean_over_points,
    log_evidence,
    particle_chunk,
)
from elbox.precision import check_precision, matmul_precision

__all__ = ["EvidenceReport", "evidence_report"]

_METHODS = ("auto", "exact", "importance", "ais", "smc")


def _summary(values: Tensor) -> dict:
    """The mean over data points and its standard error (the spread over the points)."""
    v = values.double()
    n = v.numel()
    return {"mean": float(v.mean()), "stderr": float(v.std() / math.sqrt(n)) if n > 1 else math.nan}


@dataclass
class EvidenceReport:
    """What :func:`evidence_report` measured, every number in nats per data point.

    Each summary is a dict with ``mean`` and ``stderr``, the standard error of the mean over the
    data points (the spread of the points, which says how the mean would move on other data
    from the same source); ``elbo`` and ``log_evidence`` add ``mc_stderr``, the Monte Carlo
    standard error alone (how the mean would move with other particles on the same data; zero
    where a term is a closed form). The bracket
    is ``elbo`` ≤ ``iwae`` ≤ ``log_evidence`` ≤ ``upper_bound``: the first two are lower bounds
    (in expectation), the third an estimate (``exact``, or ``importance``/``ais``, which are
    lower bounds in expectation too), the last the CUBO, an upper bound in expectation as S
    grows.

    Attributes:
        model, guide: Their class names.
        num_points: The data points evaluated.
        elbo, reconstruction, kl: The ELBO and its terms.
        iwae: The IWAE bound with ``num_samples`` K particles.
        log_evidence: The estimate of log p(x), with ``method`` and ``num_samples``; in bfloat16
            also ``precision`` and ``precision_shift`` (mean, stderr over the points, max_abs):
            what the rounding moved log p̂ by, measured on the same draws.
        upper_bound: The CUBO of order ``n`` from ``num_samples`` particles.
        gap: log p̂(x) − ELBO; ``gap_stderr`` its standard error over the points, from the
            paired per-point differences; ``gap_mc_stderr`` its Monte Carlo standard error, from
            the same particles' joint influence on both terms (not two independent errors).
        approximation_gap, amortization_gap: Over the ``refined_points`` first points (None
            without refinement); they sum to ``gap_refined``, the gap on those points.
        psis_khat: Summary of the per-point k̂ (mean, max, fraction above 0.7), None when the
            weights are constant.
        active_units, latent_units, unit_variance: Burda et al.'s count, and each unit's
            Cov_x(E_q[z_u]).
        kl_per_dim: The mean over points of KL(q(z_u | x) ‖ p(z_u)), per latent unit.
        mutual_information: The estimate of I(x; z) under q, from ``mi_points`` points.
        bits_per_dim: log p(x) as −log₂ p(x) / D for data points that are vectors of D
            numbers (mean, stderr, mc_stderr, dims); None for sequences.
        warnings: Posterior collapse and unreliable importance weights, in words.
        per_point: Per data point: elbo, log_evidence, log_evidence_stderr, cubo, khat; and
            elbo_refined for the refined points.
        seconds: Wall-clock time of the evaluation.
    """

    model: str
    guide: str
    num_points: int
    elbo: dict
    reconstruction: dict
    kl: dict
    iwae: dict
    log_evidence: dict
    upper_bound: dict
    gap: float
    gap_stderr: float = math.nan
    gap_mc_stderr: float = math.nan
    approximation_gap: dict | None = None
    amortization_gap: dict | None = None
    gap_refined: float | None = None
    refined_points: int = 0
    refine_steps: int = 0
    psis_khat: dict | None = None
    active_units: int | None = None
    latent_units: int | None = None
    unit_variance: list | None = None
    kl_per_dim: list | None = None
    mutual_information: float | None = None
    mi_points: int = 0
    bits_per_dim: dict | None = None
    warnings: list = field(default_factory=list)
    per_point: dict = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        """Plain JSON types; a non-finite number becomes None."""
        return _finite(asdict(self))

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, data: dict) -> EvidenceReport:
        """The inverse of :meth:`to_dict`: a ``null`` where the schema holds a bound is read back
        as the infinity it stood for (−∞ for the ELBO, IWAE and log p̂; +∞ for the KL, the CUBO
        and the gap), and as NaN elsewhere."""
        data = json.loads(json.dumps(data))  # a copy
        for key, sign in _INFINITE_WHEN_NULL.items():
            entry = data.get(key)
            if isinstance(entry, dict) and entry.get("mean") is None:
                entry["mean"] = sign * math.inf
            elif key in data and entry is None:
                data[key] = sign * math.inf
        for entry in data.values():
            if isinstance(entry, dict):
                for k in ("stderr", "mc_stderr"):
                    if k in entry and entry[k] is None:
                        entry[k] = math.nan
        for key in ("gap_stderr", "gap_mc_stderr"):
            if key in data and data[key] is None:
                data[key] = math.nan
        return cls(**data)

    def bracket(self) -> list[tuple[str, float, float, str]]:
        """(name, mean, stderr, what it is) from the lowest to the highest."""
        e = self.log_evidence
        kind = "exact" if e["method"] == "exact" else f"an estimate ({e['method']}, S = {e['num_samples']})"
        if "initialization" in e:
            kind += f"; initial state {e['initialization'].split(':')[0]}"
        if "precision_shift" in e:
            shift = e["precision_shift"]
            kind += f", {e['precision']} products: shifted {shift['mean']:+.3g} ± {shift['stderr']:.2g} by rounding"
        return [
            ("ELBO", self.elbo["mean"], self.elbo["stderr"], "a lower bound"),
            (f"IWAE-{self.iwae['num_samples']}", self.iwae["mean"], self.iwae["stderr"], "a lower bound"),
            ("log p(x)", e["mean"], e["stderr"], kind),
            (f"CUBO-{self.upper_bound['n']:g}", self.upper_bound["mean"], self.upper_bound["stderr"],
             f"an upper bound as S grows (S = {self.upper_bound['num_samples']})"),
        ]  # fmt: skip


#: The fields whose JSON ``null`` stands for an infinity, and its sign.
_INFINITE_WHEN_NULL = {"elbo": -1, "iwae": -1, "log_evidence": -1, "reconstruction": -1, "kl": 1,
                       "upper_bound": 1, "gap": 1}  # fmt: skip


def _finite(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


@torch.no_grad()
def evidence_report(
    model,
    guide,
    x,
    *,
    num_samples: int = 1000,
    iwae_samples: int = 50,
    cubo_order: float = 2.0,
    elbo_samples: int = 10,
    method: str = "auto",
    ais_schedule=200,
    refine_steps: int = 200,
    refine_points: int = 500,
    refine_lr: float = 1e-2,
    mi_points: int = 1000,
    batch_size: int = 100,
    chunk_size: int | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    precision: str = "float32",
) -> EvidenceReport:
    r"""Evaluates a fitted model and guide on data ``x``: the bracket ELBO ≤ IWAE-K ≤ log p̂(x) ≤
    CUBO, the gap and its split, and diagnostics.

    One pass over the data, ``batch_size`` points and ``chunk_size`` particles at a time,
    draws ``num_samples`` importance weights per point with the guide as proposal; from them
    come log p̂(x) (unless the model's exact value or AIS is asked for), the IWAE bound of the
    first ``iwae_samples``, the CUBO, and the PSIS k-hat. The ELBO's expectation is analytic
    where the model and q allow, a sum over an enumerable discrete q, else the average over the
    same particles. Then :func:`~elbox.inference.refine` optimizes a q per point on the first
    ``refine_points`` points (``refine_steps`` Adam steps; 0 skips it) to split the gap there.
    Every number has its standard error over the points and its Monte Carlo standard error.

    Each batch's particles come from a seed of (one draw of torch's RNG, the batch), so seeding
    torch makes the report reproducible, and under torch.distributed the batches are dealt to
    the ranks and the report gathered on every rank equals the one a single process computes.

    Args:
        model: A :class:`~elbox.models.LatentModel`.
        guide: Its guide q(z | x) (a global or amortized one; local guides need their own data).
            For a model with no latent variable (a :class:`~elbox.models.FlowDensity` over
            continuous data) pass None: log p(x) is exact and every bound equals it.
        x: Data, ``[N, *data_shape]``.
        num_samples: S, importance samples per point.
        iwae_samples: K ≤ S for the IWAE bound in the bracket.
        cubo_order: n > 1 for the CUBO.
        elbo_samples: Particles per Adam step of the refinement (L[q*] itself is then evaluated
            with the S particles, as the ELBO is).
        method: log p(x) by ``"exact"``, ``"importance"``, ``"ais"``, ``"smc"`` (a sequence model's
            particle filter, ``num_samples`` particles, 10 runs), or ``"auto"`` (exact
            where the model has it, else importance).
        ais_schedule: The AIS schedule (T or the β's), for ``method="ais"``.
        refine_steps, refine_points, refine_lr: The per-point refinement.
        mi_points: Points for the mutual-information estimate.
        batch_size: Data points at a time.
        chunk_size: Particles at a time (default: 4 MB worth).
        progress: Called as ``progress(stage, done, total)``.
        precision: ``"float32"``, or ``"bfloat16"`` for the encoder's and decoder's products
            (:mod:`elbox.precision`; log p̂ by importance sampling only). Each batch then also
            measures the shift the rounding causes, on its first chunk of particles, reported as
            ``log_evidence["precision_shift"]``, with a warning where it exceeds log p̂'s Monte
            Carlo error.

    Returns:
        An :class:`EvidenceReport`.
    """
    precision = check_precision(precision)
    with matmul_precision(precision):
        return _evidence_report(model, guide, x, num_samples, iwae_samples, cubo_order, elbo_samples, method,
                                ais_schedule, refine_steps, refine_points, refine_lr, mi_points, batch_size,
                                chunk_size, progress, precision)  # fmt: skip


def _evidence_report(model, guide, x, num_samples, iwae_samples, cubo_order, elbo_samples, method, ais_schedule,
                     refine_steps, refine_points, refine_lr, mi_points, batch_size, chunk_size, progress,
                     precision) -> EvidenceReport:  # fmt: skip
    check_model(model)
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}; received {method!r}")
    elbo_samples = check_positive_int(elbo_samples, "elbo_samples")
    refine_steps = check_positive_int(refine_steps, "refine_steps", minimum=0)
    check_positive_int(refine_points, "refine_points")
    refine_lr = check_number(refine_lr, "refine_lr", minimum=0.0, strict=True)
    check_positive_int(mi_points, "mi_points")
    if chunk_size is not None:
        check_positive_int(chunk_size, "chunk_size")
    with named("ais_schedule", "schedule"):
        check_schedule(ais_schedule)
    S = check_positive_int(num_samples, "num_samples")
    K = check_positive_int(iwae_samples, "iwae_samples")
    if K > S:
        raise ValueError(f"iwae_samples must be at most num_samples = {S}; received {K}")
    if S < 25:  # the Pareto fit takes the largest S/5 weights and needs at least 5 of them
        raise ValueError(f"num_samples must be at least 25 for the PSIS k-hat's tail fit; received {S}")
    n = check_number(cubo_order, "cubo_order", only_type=True)
    if not (n > 1 and math.isfinite(n)):
        raise ValueError(f"cubo_order must be a finite number greater than 1; received {cubo_order!r}")
    step = check_positive_int(batch_size, "batch_size")
    if method == "auto":
        method = "exact" if getattr(model, "has_exact_evidence", False) else "importance"
    if precision != "float32" and method != "importance":
        raise ValueError(f"precision={precision!r} applies to log p̂ by importance sampling, where its shift is "
                         f"measured; this report's method is {method!r}")  # fmt: skip
    start = time.perf_counter()
    x = model.check_data(x)
    N = len(x)
    if N < 2:
        raise ValueError(f"x must hold at least two data points for a report; received {N}")
    if getattr(model, "latent_free", False):
        return _latent_free_report(model, guide, x, step, n, start)
    prepare(model, guide, x[:1])  # a guide that does not fit the model fails here, before any work
    if progress is True:
        progress = _LineProgress()
    elif progress is False or progress is None:
        progress = None
    elif not callable(progress):
        raise TypeError(f"progress must be True, False or a function (stage, done, total); received {progress!r}")
    report = progress or (lambda stage, done, total: None)

    # every batch's particles from a seed of (base, batch): the same report on any number of ranks
    base = base_seed()

    def batch_pass(begin: int, end: int) -> tuple[dict, str]:
        terms, log_w, means, kl_dims, proposal = _shared_pass(model, guide, x[begin:end], S, K, chunk_size)
        log_p, log_p_se = _log_mean_and_stderr(log_w)
        errors = _monte_carlo_errors(log_w, terms["sampled"], K, n)
        khat = psis_khat(log_w)
        # wⁿ has a finite variance only where k̂ < 1/(2n): elsewhere the CUBO has no Monte Carlo error to state
        errors["cubo"] = torch.where(khat.to(errors["cubo"]) < 1 / (2 * n), errors["cubo"], math.nan)
        values = {
            "elbo": terms["elbo"], "elbo_mc": terms["elbo_mc"], "reconstruction": terms["reconstruction"],
            "kl": terms["kl"], "log_p": log_p, "log_p_se": log_p_se, "iwae": terms["iwae"],
            "iwae_mc": errors["iwae"], "cubo": log_mean_exp(n * log_w) / n, "cubo_mc": errors["cubo"],
            "gap_mc": errors["gap"], "khat": khat, "reconstruction_mc": terms["reconstruction_mc"],
            "kl_mc": terms["kl_mc"], "means": means, "kl_dims": kl_dims,
        }  # fmt: skip
        if precision != "float32":  # after the shared pass's draws, which stay those of a float32 report
            values["shift"] = _first_chunk_shift(model, guide, x[begin:end], S, chunk_size)
        return {k: t.detach().double().cpu() for k, t in values.items() if t is not None}, proposal

    batches = map_batches(N, step, batch_pass, base=base, progress=lambda d, t: report("importance sampling", d, t))
    proposals = {proposal for _, proposal in batches}
    # per-unit quantities of sequences trimmed per batch to their own length have no common shape
    # to join (a deep Markov model's q over [T_batch, D]): left out, and with them active units
    ragged = {k for k in batches[0][0] if len({tuple(b[k].shape[1:]) for b, _ in batches}) > 1}
    v = {k: torch.cat([b[k] for b, _ in batches]) for k in batches[0][0] if k not in ragged}

    if method == "importance":
        log_p, log_p_se = v["log_p"], v["log_p_se"]
        evidence_samples = S
    else:
        estimate = log_evidence(
            model, x, guide=guide, method=method, num_samples=S if method in ("ais", "smc") else 1000, batch_size=step,
            schedule=ais_schedule, chunk_size=chunk_size, progress=lambda d, t: report(method, d, t),
        )  # fmt: skip
        log_p, log_p_se = estimate.value.double().cpu(), estimate.stderr.double().cpu()
        evidence_samples = estimate.num_samples
        # log p(x) from its own draws (or exact): its error and the ELBO's are independent
        v["gap_mc"] = (log_p_se.square() + v["elbo_mc"].square()).sqrt()
    log_evidence_summary = {
        **_summary(log_p),
        "mc_stderr": float(log_p_se.square().sum().sqrt() / N),
        "method": method,
        "num_samples": evidence_samples,
    }
    conventions = getattr(model, "initialization_conventions", None)
    if callable(conventions):  # which start of the series log p(x) assumes, and the others' values beside it
        name, others = conventions(x)
        log_evidence_summary["initialization"] = name
        log_evidence_summary.update({key: _summary(values.detach().double().cpu()) for key, values in others.items()})
    if "shift" in v:
        shift = _mean_over_points(v["shift"])
        log_evidence_summary["precision"] = precision
        log_evidence_summary["precision_shift"] = {"mean": shift.value, "stderr": shift.stderr,
                                                   "max_abs": float(v["shift"].abs().max())}  # fmt: skip
    if method == "importance" and proposals == {"prior"}:
        log_evidence_summary["proposal"] = "prior"
        messages_proposal = [
            "q has no density (a point mass: a deterministic encoder), so its ELBO and IWAE bound are −∞ and "
            "log p̂(x), the CUBO and k̂ use the prior as the proposal"
        ]
    else:
        messages_proposal = []
    bits = _bits_per_dim(x, log_p, log_p_se)
    khat = v["khat"]
    fitted = khat[khat > -math.inf]  # −∞: constant weights, q is the posterior
    khat_summary = None
    if fitted.numel():
        khat_summary = {
            "mean": float(fitted.mean()),
            "max": float(fitted.max()),
            "fraction_above_0.7": float((khat > 0.7).double().mean()),
            "fraction_above_0.5": float((khat > 0.5).double().mean()),
        }
    messages = list(messages_proposal)
    if "shift" in v and abs(log_evidence_summary["precision_shift"]["mean"]) > log_evidence_summary["mc_stderr"]:
        messages.append(
            f"{precision} products moved log p̂(x) by {log_evidence_summary['precision_shift']['mean']:+.3g} nats "
            f"(on the same draws), more than its Monte Carlo error, {log_evidence_summary['mc_stderr']:.2g}: the "
            "decoder's rounding changes the model; report the float32 figure"
        )
    unbounded = float(v["cubo_mc"].isnan().double().mean())
    if unbounded > 0 and proposals != {"prior"}:
        messages.append(
            f"the CUBO's Monte Carlo error cannot be stated: wⁿ (n = {n:g}) has no finite variance where k̂ ≥ "
            f"1/(2n) = {1 / (2 * n):.2g}, true of {100 * unbounded:.1f}% of points, so its estimate may be far from "
            "its limit whatever S"
        )
    if khat_summary is not None and khat_summary["fraction_above_0.7"] > 0:
        messages.append(
            f"PSIS k-hat > 0.7 for {100 * khat_summary['fraction_above_0.7']:.1f}% of points: there the importance "
            "weights are heavy-tailed and log p̂(x) may be far too low, whatever its standard error"
        )

    result = EvidenceReport(
        model=type(model).__name__,
        guide=type(guide).__name__,
        num_points=N,
        elbo={**_summary(v["elbo"]), "mc_stderr": _mc_stderr(v["elbo"], v["elbo_mc"])},
        reconstruction={**_summary(v["reconstruction"]),
                        "mc_stderr": _mc_stderr(v["reconstruction"], v["reconstruction_mc"])},
        kl={**_summary(v["kl"]), "mc_stderr": _mc_stderr(v["kl"], v["kl_mc"])},
        iwae={**_summary(v["iwae"]), "mc_stderr": _mc_stderr(v["iwae"], v["iwae_mc"]), "num_samples": K},
        log_evidence=log_evidence_summary,
        upper_bound={**_summary(v["cubo"]), "mc_stderr": _mc_stderr(v["cubo"], v["cubo_mc"]), "method": "cubo",
                     "n": n, "num_samples": S},  # fmt: skip
        gap=float((log_p - v["elbo"]).mean()),
        gap_stderr=_summary(log_p - v["elbo"])["stderr"],
        gap_mc_stderr=_mc_stderr(v["elbo"], v["gap_mc"]),
        psis_khat=khat_summary,
        bits_per_dim=bits,
        per_point={
            "elbo": v["elbo"].tolist(),
            "log_evidence": log_p.tolist(),
            "log_evidence_stderr": log_p_se.tolist(),
            "cubo": v["cubo"].tolist(),
            "khat": khat.tolist(),
        },
    )

    if "means" in v and getattr(model, "has_latent_code", True):
        count, variance = active_units(v["means"], unit_dims=getattr(model, "latent_unit_dims", 0))
        result.active_units, result.latent_units, result.unit_variance = count, variance.numel(), variance.tolist()
        message = collapse_warning(count, variance.numel(), result.kl["mean"])
        if message is not None:
            messages.append(message)
            warn_collapse(message)
    if "kl_dims" in v:
        result.kl_per_dim = v["kl_dims"].mean(0).tolist()
    M = min(N, check_positive_int(mi_points, "mi_points"))
    if M >= 2 and "means" in v and getattr(model, "has_latent_code", True):
        try:
            with seeded(seed_for(base, -1)):  # the same draws on every rank
                result.mutual_information = mutual_information(guide(x[:M]))
            result.mi_points = M
        except (NotImplementedError, ValueError, TypeError):  # a q without the densities it needs
            result.mutual_information = None

    # a point-mass q's gap is infinite: nothing to split; nor is there in a guide with nothing to optimize
    unrefinable = None
    if refine_steps and proposals != {"prior"} and getattr(guide, "refinable", True):
        from elbox.inference.refine import can_refine, family

        if not hasattr(guide, "local_guide"):
            with torch.no_grad():
                q = prepare(model, guide, x[:1])[1]
            unrefinable = None if can_refine(q) else family(q)
        if unrefinable is not None:
            messages.append(
                f"the gap is not split into approximation and amortization gaps: q's family ({unrefinable}) has no "
                "per-point refinement (teach it one with elbox.inference.register_local_guide)"
            )
    if refine_steps and proposals != {"prior"} and getattr(guide, "refinable", True) and unrefinable is None:
        from elbox.inference.refine import refine

        R = min(N, check_positive_int(refine_points, "refine_points"))

        def refined_pass(begin: int, end: int) -> tuple[Tensor, Tensor]:
            """q* of each point of the batch, then L[q*] and its Monte Carlo error by the shared pass."""
            with torch.enable_grad():
                refined = refine(model, guide, x[begin:end], steps=refine_steps, lr=refine_lr,
                                 num_samples=elbo_samples)  # fmt: skip
            terms = _shared_pass(model, refined, Batch(x[begin:end], torch.arange(end - begin)), S, 1, chunk_size)[0]
            return terms["elbo"].detach().double().cpu(), terms["elbo_mc"].detach().double().cpu()

        refined_parts = map_batches(R, step, refined_pass, base=seed_for(base, -2),
                                    progress=lambda d, t: report("refining q per point", d, t))  # fmt: skip
        refined_elbo = torch.cat([e for e, _ in refined_parts])
        refined_mc = torch.cat([m for _, m in refined_parts])
        # independent particles behind log p̂, L[q*] and L[q]: their errors add in quadrature
        approximation_mc = (log_p_se[:R] ** 2 + refined_mc**2).sqrt()
        amortization_mc = (refined_mc**2 + v["elbo_mc"][:R] ** 2).sqrt()
        result.approximation_gap = {**_summary(log_p[:R] - refined_elbo),
                                    "mc_stderr": _mc_stderr(refined_elbo, approximation_mc)}  # fmt: skip
        result.amortization_gap = {**_summary(refined_elbo - v["elbo"][:R]),
                                   "mc_stderr": _mc_stderr(refined_elbo, amortization_mc)}  # fmt: skip
        for name, split in (("approximation", result.approximation_gap), ("amortization", result.amortization_gap)):
            if abs(split["mean"]) < 2 * split["stderr"]:  # within its error of zero: no evidence of such a gap
                messages.append(
                    f"the {name} gap, {split['mean']:.3f} ± {split['stderr']:.3f} (over the points), is within two "
                    "standard errors of zero: these points show no evidence of it (refine more points, or longer, "
                    "to resolve it)"
                )
        result.gap_refined = float((log_p[:R] - v["elbo"][:R]).mean())
        result.refined_points, result.refine_steps = R, int(refine_steps)
        result.per_point["elbo_refined"] = refined_elbo.tolist()
    if math.isfinite(result.gap) and abs(result.gap) < 2 * math.hypot(result.gap_stderr, result.gap_mc_stderr):
        messages.append(
            f"the gap, {result.gap:.3g}, is within two standard errors of zero: at this precision q is "
            "indistinguishable from the posterior"
        )
    result.warnings = messages
    result.seconds = time.perf_counter() - start
    return result


def _bits_per_dim(x: Tensor, log_p: Tensor, log_p_se: Tensor) -> dict | None:
    """−log₂ p(x) / D for points that are D-vectors, with both errors; None for sequences."""
    if not isinstance(x, Tensor) or x.dim() != 2:
        return None
    scale = -1.0 / (x.shape[1] * math.log(2))
    N = len(log_p)
    return {**_summary(scale * log_p), "mc_stderr": float(abs(scale) * log_p_se.square().sum().sqrt() / N),
            "dims": int(x.shape[1])}  # fmt: skip


def _latent_free_report(model, guide, x: Tensor, step: int, n: float, start: float) -> EvidenceReport:
    """The report of a model with no latent variable (a flow density): log p(x) is exact, so every
    bound equals it, and the gap is zero by construction, not by measurement."""
    log_p = torch.cat([model.log_evidence(x[b : b + step]).detach().double().cpu() for b in range(0, len(x), step)])
    exact = {**_summary(log_p), "mc_stderr": 0.0}
    zero = torch.zeros_like(log_p)
    return EvidenceReport(
        model=type(model).__name__,
        guide="none" if guide is None else type(guide).__name__,
        num_points=len(x),
        elbo=dict(exact),
        reconstruction=dict(exact),
        kl={**_summary(zero), "mc_stderr": 0.0},
        iwae={**exact, "num_samples": 1},
        log_evidence={**exact, "method": "exact", "num_samples": 0},
        upper_bound={**exact, "method": "cubo", "n": n, "num_samples": 1},
        gap=0.0,
        gap_stderr=0.0,
        gap_mc_stderr=0.0,
        bits_per_dim=_bits_per_dim(x, log_p, zero),
        warnings=[
            f"{type(model).__name__} has no latent variable: log p(x) is computed exactly by the change of variables "
            "(one pass of an invertible map), so the ELBO, the IWAE bound and the CUBO all equal it and the gap is "
            "zero by construction"
        ],
        per_point={"elbo": log_p.tolist(), "log_evidence": log_p.tolist(), "log_evidence_stderr": zero.tolist(),
                   "cubo": log_p.tolist(), "khat": [-math.inf] * len(x)},  # fmt: skip
        seconds=time.perf_counter() - start,
    )


def _monte_carlo_errors(log_w: Tensor, sampled: Tensor | None, K: int, n: float) -> dict[str, Tensor]:
    """Per point, the Monte Carlo standard errors of IWAE-K, the CUBO and the gap log p̂ − ELBO from
    the S particles' weights ``log_w [S, B]`` (the delta method: each particle's influence on a
    log-mean is its weight over the mean weight), the gap's from the joint influence of each
    particle on log p̂ and on the ELBO's sampled part ``sampled [S, B]`` (None: the ELBO is a
    closed form), so that their covariance is counted."""
    S = log_w.shape[0]

    def influence(a: Tensor) -> Tensor:  # w_s / mean(w), from log-weights along dim 0
        return (a - log_mean_exp(a).unsqueeze(0)).exp()

    if not torch.isfinite(log_w).all():  # a point-mass q: the bounds are infinite, and so is their error
        nan = torch.full((log_w.shape[1],), math.nan, dtype=log_w.dtype, device=log_w.device)
        return {"iwae": nan, "cubo": nan, "gap": nan}
    gap = influence(log_w) - (0.0 if sampled is None else sampled)
    return {
        "iwae": influence(log_w[:K]).std(0) / math.sqrt(K) if K > 1 else torch.full_like(log_w[0], math.inf),
        "cubo": influence(n * log_w).std(0) / (n * math.sqrt(S)),
        "gap": gap.std(0) / math.sqrt(S),
    }


class _LineProgress:
    """``progress=True``: a line per stage to stderr as it advances, at most one a second and one
    at each stage's end, so it reads the same in a terminal, a log file or a notebook."""

    def __init__(self):
        self.last = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        import sys

        now = time.monotonic()
        if done < total and now - self.last.get(stage, -math.inf) < 1.0:
            return
        self.last[stage] = now
        print(f"{stage}: {done}/{total}", file=sys.stderr, flush=True)


def _mc_stderr(values: Tensor, mc_stderr: Tensor) -> float:
    """The Monte Carlo standard error of a mean over points from each point's own (0 where exact)."""
    return float(mc_stderr.square().sum().sqrt() / values.numel())


def _shared_pass(model, guide, x, S: int, K: int, chunk_size: int | None):
    """One call of the guide on the batch and S particles from its q, shared by every estimate.

    Returns the ELBO and its terms (closed forms where the model and q have them, a sum over a
    discrete q's values where it can be enumerated, else the particles' average), with the IWAE
    bound of the first K particles; the log-weights ``[S, B]`` for log p̂, the CUBO and k̂; q's
    means (for active units; the particles' mean where q has no closed-form mean); the KL per
    latent unit; and which proposal gave the weights (``"q"``, or ``"prior"`` where q has no
    density, a point mass).
    """
    x, q, p = prepare(model, guide, x)
    B = len(x)
    chunk = particle_chunk(x, S) if chunk_size is None else check_positive_int(chunk_size, "chunk_size")
    # q's density at its own draws: infinite for a point mass, which cannot serve as a proposal
    degenerate = bool(torch.isinf(draw_with_log_prob(q, 1, pathwise=False)[1]).any())
    prior = p if tuple(p.batch_shape) == (B,) else p.expand(torch.Size([B]) + p.batch_shape)
    proposal = prior if degenerate else q
    log_lik, log_ratio, log_w, total = [], [], [], None
    for begin in range(0, S, chunk):
        z, log_proposal = draw_with_log_prob(proposal, min(chunk, S - begin), pathwise=False)  # [s, B, *event], [s, B]
        lik = model.log_likelihood(x, z)  # [s, B]
        log_p = p.log_prob(z)
        log_w.append(lik + log_p - log_proposal)
        if not degenerate:
            log_lik.append(lik)
            log_ratio.append(log_proposal - log_p)
        total = z.sum(0) if total is None else total + z.sum(0)
    log_w = torch.cat(log_w)  # [S, B]
    means = _mean(q, total / S if not degenerate else None)
    if degenerate:
        minus_inf = torch.full((B,), -math.inf, dtype=log_w.dtype, device=log_w.device)
        lik = model.log_likelihood(x, q.sample((1,)))[0]
        terms = {"elbo": minus_inf, "elbo_mc": torch.full_like(minus_inf, math.nan), "reconstruction": lik,
                 "reconstruction_mc": torch.zeros_like(lik), "kl_mc": torch.full_like(minus_inf, math.nan),
                 "kl": -minus_inf, "iwae": minus_inf, "sampled": None}  # fmt: skip
        return terms, log_w, means, None, "prior"
    log_lik, log_ratio = torch.cat(log_lik), torch.cat(log_ratio)  # [S, B]
    expected, kl, _ = closed_forms(model, x, q, p)  # exactly as elbo() takes them
    reconstruction = log_lik.mean(0) if expected is None else expected
    kl_value = log_ratio.mean(0) if kl is None else kl
    # the Monte Carlo error of the ELBO per point: zero where both terms are closed forms
    sampled = (log_lik if expected is None else 0) - (log_ratio if kl is None else 0)
    mc = sampled.std(0) / math.sqrt(S) if torch.is_tensor(sampled) else torch.zeros(B, dtype=log_w.dtype)
    zero = torch.zeros(B, dtype=log_w.dtype, device=log_w.device)
    terms = {"elbo": reconstruction - kl_value, "elbo_mc": mc, "reconstruction": reconstruction, "kl": kl_value,
             "reconstruction_mc": log_lik.std(0) / math.sqrt(S) if expected is None else zero,
             "kl_mc": log_ratio.std(0) / math.sqrt(S) if kl is None else zero,
             "iwae": log_mean_exp(log_w[:K]), "sampled": sampled if torch.is_tensor(sampled) else None}  # fmt: skip
    return terms, log_w, means, kl_per_dimension(q, p), "q"


def _mean(q, particle_mean: Tensor | None) -> Tensor | None:
    """E_q[z]: q's closed form where it has one, else the particles' mean; for a discrete q in the
    one-hot convention its probabilities, and None for other discrete q (an index has no mean)."""
    if q.support.is_discrete:
        base = q.base_dist if isinstance(q, Independent) else q
        return base.probs if isinstance(base, OneHotCategorical | Bernoulli) else None
    try:
        return q.mean
    except NotImplementedError:
        return particle_mean
