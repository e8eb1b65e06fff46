"""A run evaluated (the evidence report on its test set, evaluation.json) and reported (report.json, report.html)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from elbox._validation import check_positive_int
from elbox.distributed import from_rank0, rank0_context
from elbox.io import RunDirectory, RunLock, write_json
from elbox.runs.config import QUICK, RECORD, ConfigError, parse_config, read_toml
from elbox.runs.data import data_name, load_data
from elbox.runs.load import load_run

__all__ = ["evaluate_run", "evaluation_settings", "report_run"]


def evaluation_settings(
    config: dict, evaluate_config: str | os.PathLike | None = None, *, quick: bool = False, **overrides
) -> dict:
    """The ``[evaluate]`` settings: the run's, then (with ``quick``) the ``evaluate.*`` entries of
    its ``[quick]`` table, then a separate TOML file's ``[evaluate]`` table, then the command
    line's options (those not None).

    Raises:
        ConfigError: With ``quick``, for a run whose config has no ``evaluate.*`` in ``[quick]``.
    """
    settings = dict(config["evaluate"])
    if quick:
        given = {k.removeprefix("evaluate."): v for k, v in config.get(QUICK, {}).items() if k.startswith("evaluate.")}
        if not given:
            raise ConfigError("--quick: the run's config has no evaluate.* overrides in its [quick] table; give the "
                              "evaluation's size with --num-samples and --max-points, or in --evaluate-config")
        settings.update(given)
    if evaluate_config is not None:
        path = Path(evaluate_config)
        raw = read_toml(path, "--evaluate-config:")
        extra = [s for s in raw if s != "evaluate"]
        if extra:
            raise ConfigError(f"{path}: an evaluation config holds [evaluate] alone; received [{extra[0]}]")
        given = raw.get("evaluate", {})
        parsed = parse_config({"evaluate": given}, str(path))["evaluate"]
        settings.update({k: parsed[k] for k in given})
    settings.update({k: v for k, v in overrides.items() if v is not None})
    return settings


def evaluate_run(
    run_dir: str | os.PathLike,
    *,
    num_samples: int | None = None,
    max_points: int | None = None,
    evaluate_config: str | os.PathLike | None = None,
    quick: bool = False,
    progress=None,
) -> dict:
    """The evidence report of a run's model on its test set (:func:`elbox.evidence_report`),
    written to ``evaluation.json``. Exact models report their exact log p(x), and the gap of their
    q (the exact posterior of an EM fit: zero); a VI fit of an exact model also reports the exact
    gap of its trained q on the training points.

    Settings come from the run's config, then (with ``quick``: ``elbox evaluate --quick``) the
    ``evaluate.*`` entries of its ``[quick]`` table, then ``evaluate_config``, then ``num_samples``
    and ``max_points`` (:func:`evaluation_settings`).

    Returns:
        evaluation.json's content: ``run``, ``data``, ``checkpoint``, ``settings``, ``quick`` (true
        with ``quick``, or for a run fitted with ``--quick``, whose own settings are its quick ones)
        and ``report``.
    """
    from elbox.evidence import evidence_report
    from elbox.guides import Exact

    if num_samples is not None:
        check_positive_int(num_samples, "num_samples")
    if max_points is not None:
        check_positive_int(max_points, "max_points", minimum=0)  # 0: every test point
    loaded = load_run(run_dir)
    run, config, model = loaded.directory, loaded.config, loaded.model
    e = evaluation_settings(config, evaluate_config, quick=quick, num_samples=num_samples, max_points=max_points)
    time_split = config["data"]["split"] == "time"
    with rank0_context(lambda: RunLock(run.path)):
        # a time split's report is on the steps trained on; its test score conditions on them
        x, _ = load_data(config, "train" if time_split else "test")
        if e["max_points"]:
            x = x[: e["max_points"]]
        exact = getattr(model, "has_exact_evidence", False)
        if e["precision"] != "float32" and (exact or e["method"] != "importance"):
            raise ConfigError(f"[evaluate] precision = {e['precision']!r} applies to log p(x) by importance sampling; "
                              + (f"this run's {type(model).__name__} has exact evidence" if exact else
                                 f"[evaluate] method = {e['method']!r}"))  # fmt: skip
        guide = Exact(model) if exact else loaded.guide
        S = e["num_samples"]
        if time_split and len(x) < 2:  # one series: no spread over points to report; its exact log-likelihoods
            result = {"run": str(run.path), "data": f"{data_name(config)}, one series (split = 'time')",
                      "checkpoint": loaded.checkpoint, "settings": e, "report": None,
                      "training_log_likelihood": _training_log_likelihood(model, x),
                      "test_log_likelihood": _conditional_test(config, model)}  # fmt: skip
            from_rank0(write_json, run.path / "evaluation.json", result)
            return result
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(e["seed"])  # each batch's particles from a seed of (this seed, the batch)
            report = evidence_report(
                model, guide, x, num_samples=max(S, 5), iwae_samples=min(e["iwae_samples"], max(S, 5)),
                cubo_order=e["cubo_order"], method="exact" if exact else e["method"], ais_schedule=e["ais_steps"],
                refine_steps=0 if exact else e["refine_steps"], refine_points=e["refine_points"],
                batch_size=e["batch_size"], chunk_size=e["chunk_size"] or None, progress=progress,
                precision=e["precision"],
            )  # fmt: skip
        described = f"{data_name(config)} test set, {len(x)} points"
        if time_split:
            described = (f"{data_name(config)}, the training part of {len(x)} sequences (split = 'time'; the test "
                         "steps are scored in test_log_likelihood)")  # fmt: skip
        result = {
            "run": str(run.path),
            "data": described,
            "checkpoint": loaded.checkpoint,
            "settings": e,
            "quick": quick or bool(config[RECORD]["quick"]),  # --quick here, or a run fitted with --quick
            "report": report.to_dict(),
        }
        if exact and not isinstance(loaded.guide, Exact):
            result["training_gap"] = _training_gap(config, model, loaded.guide)
        if time_split:
            result["test_log_likelihood"] = _conditional_test(config, model)
        if not exact and loaded.guide is not None and _has_paths(model, x):  # a DMM: the gap at every step
            from elbox.evidence.smc import sequence_report

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(e["seed"])
                result["sequence"] = sequence_report(model, guide, x, num_samples=min(S, 100), num_runs=4,
                                                     elbo_samples=4).to_dict()  # fmt: skip
        from_rank0(write_json, run.path / "evaluation.json", result)
    return result


def _has_paths(model, x) -> bool:
    """Whether the model's prior is over Markov paths with per-step conditionals (a deep Markov model)."""
    from elbox.distributions import MarkovPath

    return isinstance(model.prior_for(x[:1]), MarkovPath)


@torch.no_grad()
def _training_log_likelihood(model, x) -> dict:
    """The exact log p(x) of the training part, in all and per step."""
    if not getattr(model, "has_exact_evidence", False):
        raise ConfigError(f"[data] split = 'time' on one series reports exact log-likelihoods, which a "
                          f"{type(model).__name__} has not")  # fmt: skip
    total = float(model.log_evidence(x).double().sum())
    steps = int(x.mask.sum())
    return {"method": "exact, by the filter", "total": total, "steps": steps, "per_step": total / steps}


@torch.no_grad()
def _conditional_test(config: dict, model) -> dict:
    """``split = "time"``: log p(x_test | x_before) of each sequence's last n steps given all the
    steps before them, exactly, as log p(x_{1:T}) − log p(x_{1:T−n}) by the model's filter; its
    mean per sequence and per step, with the standard error over the sequences."""
    from elbox.runs.data import _prefix, held_out_steps

    if not getattr(model, "has_exact_evidence", False):
        raise ConfigError(f"[data] split = 'time' scores the test steps given the steps before them, which needs a "
                          f"model with exact evidence; a {type(model).__name__} has none")  # fmt: skip
    x, _ = load_data(config, "test")
    n = held_out_steps(config, "test")
    before = _prefix(x, x.lengths - n)
    per_sequence = (model.log_evidence(x) - model.log_evidence(before)).double()  # [B]
    B = len(per_sequence)
    stderr = float(per_sequence.std() / B**0.5) if B > 1 else None
    return {"method": "exact: log p(x_{T-n+1:T} | x_{1:T-n}) = log p(x_{1:T}) - log p(x_{1:T-n}), by the filter",
            "steps": n, "sequences": B, "total": float(per_sequence.sum()),
            "per_sequence": float(per_sequence.mean()), "per_sequence_stderr": stderr,
            "per_step": float(per_sequence.sum() / (B * n)), "values": per_sequence.tolist()}  # fmt: skip


@torch.no_grad()
def _training_gap(config: dict, model, guide) -> dict:
    """A VI fit's local q on its own training points: the exact gap log p(x) − ELBO = KL(q ‖ p(z|x))."""
    from elbox.bounds import elbo

    x, _ = load_data(config, "train")
    index = torch.arange(len(x))
    log_px = model.log_evidence(x).double()
    bound = elbo(model, guide, x, index=index, num_samples=100).value.double()
    gap = log_px - bound
    stderr = float(gap.std() / len(x) ** 0.5) if len(x) > 1 else None
    return {"points": len(x), "log_evidence": float(log_px.mean()), "elbo": float(bound.mean()),
            "gap": float(gap.mean()), "gap_stderr": stderr}  # fmt: skip


def report_run(
    run_dir: str | os.PathLike, *, fresh: bool = False, evaluate_config=None, quick: bool = False, progress=None
) -> dict:
    """Writes ``report.json`` and the self-contained ``report.html`` (the bracket, the gaps, KL
    per unit, k-hat, the training curves) to the run directory, from its ``evaluation.json``
    (evaluated first when there is none, when ``fresh``, or when settings are given: an
    ``evaluate_config``, or ``quick``, the run's ``[quick]`` evaluation settings)."""

    loaded = load_run(run_dir)  # refuses an edited config.toml before anything is written
    run = loaded.directory
    run.read_metrics()  # and damaged metrics, before the evaluation is written
    path = run.path / "evaluation.json"
    again = fresh or evaluate_config or quick or not path.is_file()
    evaluation = None if again else json.loads(path.read_text())
    if evaluation is None or "report" not in evaluation:  # none yet, or one from before the report
        evaluation = evaluate_run(run_dir, evaluate_config=evaluate_config, quick=quick, progress=progress)
    if evaluation["report"] is None:
        raise ConfigError(f"{run.path} holds one series (split = 'time'): there is no evidence report over points to "
                          "draw; evaluation.json holds its exact log-likelihoods, and `elbox forecast` its forecast")
    with rank0_context(lambda: RunLock(run.path)):
        from_rank0(_write_report, run, evaluation)
    return {"evaluation": evaluation, "paths": [run.path / "report.json", run.path / "report.html"]}


def _write_report(run: RunDirectory, evaluation: dict) -> None:
    from elbox.plots import write_html_report

    metrics = run.read_metrics()
    content = {**evaluation, "training": metrics}
    write_json(run.path / "report.json", content)
    context = {"run directory": evaluation["run"], "data": evaluation["data"],
               "checkpoint": evaluation["checkpoint"], "epochs trained": len(metrics)}  # fmt: skip
    write_html_report(evaluation["report"], run.path / "report.html", title=f"Evidence report: {run.path.name}",
                      training=metrics, context=context, sequence=evaluation.get("sequence"))  # fmt: skip
