"""The evidence report's figures, and the self-contained HTML page that shows them with the
numbers (figures embedded as base64 PNG: one file to open, send or archive)."""

from __future__ import annotations

import base64
import html
import io
import math
import os
from collections.abc import Sequence

from elbox.plots._common import save_png

__all__ = ["plot_bracket", "plot_gaps", "plot_khat", "plot_kl_per_dim", "render_html", "write_html_report"]


def _report(report) -> dict:
    """The report as a dict whose infinite bounds are infinities (JSON's null read back)."""
    from dataclasses import asdict

    from elbox.evidence import EvidenceReport

    if not isinstance(report, EvidenceReport | dict):
        raise TypeError(f"report must be an EvidenceReport (or its dict, as report.json holds); received "
                        f"{type(report).__name__}")  # fmt: skip
    return asdict(report if isinstance(report, EvidenceReport) else EvidenceReport.from_dict(report))


def _bracket(r: dict) -> list[tuple[str, float, float, str]]:
    from elbox.evidence import EvidenceReport

    return EvidenceReport.from_dict(r).bracket()


def plot_bracket(report, path: str | os.PathLike | None = None):
    """ELBO ≤ IWAE-K ≤ log p̂(x) ≤ CUBO on one axis, each with its standard error over the data
    points; bounds as triangles pointing at log p(x), the estimate as a dot."""
    from matplotlib.figure import Figure

    r = _report(report)
    rows = _bracket(r)
    fig = Figure(figsize=(9, 2.8), layout="constrained")
    ax = fig.subplots()
    markers = [">", ">", "o", "<"]
    colors = ["tab:blue", "tab:cyan", "black", "tab:red"]
    finite = [row[1] for row in rows if row[1] is not None and math.isfinite(row[1])] or [0.0]
    lo, hi = min(finite), max(finite)
    pad = 0.15 * (hi - lo) + 1e-3
    for i, ((name, mean, se, kind), marker, color) in enumerate(zip(rows, markers, colors)):
        se = 0.0 if se is None or not math.isfinite(se) else se
        if mean is None or not math.isfinite(mean):  # an infinite bound: drawn at the edge, said in words
            edge = lo - 0.8 * pad if (mean or 0) < 0 else hi + 0.8 * pad
            ax.plot([edge], [i], marker="<" if (mean or 0) < 0 else ">", color=color, markersize=9)
            label = "−∞" if (mean or 0) < 0 else "+∞"
            ax.annotate(f"{name} = {label}\n({kind})", (edge, i), xytext=(8, 4), textcoords="offset points",
                        fontsize=8)  # fmt: skip
            continue
        ax.errorbar([mean], [i], xerr=[se], fmt=marker, color=color, markersize=9, capsize=4)
        right = mean > (lo + hi) / 2  # a label on the right half points left, so it stays inside the axes
        ax.annotate(f"{name} = {mean:.3f}\n({kind})", (mean, i), xytext=(-8 if right else 8, 4),
                    textcoords="offset points", fontsize=8, ha="right" if right else "left")  # fmt: skip
    ax.set_yticks(range(len(rows)), [row[0] for row in rows])
    if math.isfinite(r["log_evidence"]["mean"]):
        ax.axvline(r["log_evidence"]["mean"], color="0.6", lw=0.8, ls="--")
    ax.set_xlim(lo - 2.5 * pad, hi + 2.5 * pad)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_xlabel("nats per data point (mean ± s.e. over points)")
    ax.set_title("The bracket: lower bounds, the estimate of log p(x), the upper bound")
    ax.grid(axis="x", alpha=0.3)
    save_png(fig, path)
    return fig


def plot_gaps(report, path: str | os.PathLike | None = None):
    """The gap log p̂(x) − ELBO as a stacked bar: approximation gap (the family's limit) under
    the amortization gap (the encoder's), beside the total gap on all points."""
    from matplotlib.figure import Figure

    r = _report(report)
    fig = Figure(figsize=(7, 3.8), layout="constrained")
    ax = fig.subplots()
    gap = r["gap"]
    if not math.isfinite(gap):  # q is a point mass: nothing finite to draw
        ax.text(0.5, 0.5, f"the gap is {'+∞' if gap > 0 else 'undefined'}:\nq has no density (a point mass)",
                ha="center", va="center", transform=ax.transAxes)  # fmt: skip
        ax.set_axis_off()
        save_png(fig, path)
        return fig
    ax.bar(["all points"], [gap], color="0.6", label="total gap")
    if r.get("approximation_gap"):
        approx, amort = r["approximation_gap"]["mean"], r["amortization_gap"]["mean"]
        label = f"first {r['refined_points']} points"
        ax.bar([label], [approx], color="tab:purple", label=f"approximation {approx:.3f}")
        ax.bar([label], [amort], bottom=[approx], color="tab:orange", label=f"amortization {amort:.3f}")
    ax.set_ylabel("nats per data point")
    ax.set_title(f"The gap, {r['gap']:.3f} nats, split")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)  # beside the bars
    ax.grid(axis="y", alpha=0.3)
    save_png(fig, path)
    return fig


def plot_kl_per_dim(report, path: str | os.PathLike | None = None):
    """Mean KL(q(z_u | x) ‖ p(z_u)) per latent unit, largest first; inactive units (Cov_x of
    the mean ≤ 0.01) in grey."""
    from matplotlib.figure import Figure

    r = _report(report)
    kl = r.get("kl_per_dim")
    if not kl:
        raise ValueError("the report has no KL per dimension (q and p are not diagonal normals)")
    variance = r.get("unit_variance") or [1.0] * len(kl)
    order = sorted(range(len(kl)), key=lambda u: -kl[u])
    fig = Figure(figsize=(max(5, 0.18 * len(kl) + 2), 3.6), layout="constrained")
    ax = fig.subplots()
    ax.bar(range(len(kl)), [kl[u] for u in order],
           color=["tab:blue" if variance[u] > 0.01 else "0.7" for u in order])  # fmt: skip
    ax.set_xticks(range(len(kl)), [str(u) for u in order], fontsize=7 if len(kl) > 20 else 9)
    ax.set_xlabel("latent unit (sorted)")
    ax.set_ylabel("KL (nats)")
    ax.set_title(f"KL per latent unit: {r.get('active_units')} of {len(kl)} active (grey: inactive)")
    ax.grid(axis="y", alpha=0.3)
    save_png(fig, path)
    return fig


def plot_khat(report, path: str | os.PathLike | None = None):
    """The per-point PSIS k̂ as a histogram, with the 0.5 and 0.7 thresholds."""
    from matplotlib.figure import Figure

    r = _report(report)
    values = [k for k in r["per_point"]["khat"] if k is not None and math.isfinite(k)]
    fig = Figure(figsize=(5.5, 3.6), layout="constrained")
    ax = fig.subplots()
    if values:
        ax.hist(values, bins=40, color="tab:blue")
    else:
        ax.text(0.5, 0.5, "constant weights: q is the posterior", ha="center", transform=ax.transAxes)
    for threshold, color in ((0.5, "tab:orange"), (0.7, "tab:red")):
        ax.axvline(threshold, color=color, ls="--", lw=1, label=f"k̂ = {threshold}")
    ax.set_xlabel("PSIS k̂ of the importance weights")
    ax.set_ylabel("data points")
    ax.set_title("Reliability of the importance weights")
    ax.legend(fontsize=8)
    save_png(fig, path)
    return fig


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _number(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float) and math.isinf(value):
        return "+∞" if value > 0 else "−∞"
    return f"{value:.{digits}f}"


_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1000px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { padding: 4px 12px; border-bottom: 1px solid #ddd; text-align: right; }
th:first-child, td:first-child, td.what { text-align: left; }
.warning { background: #fff4e5; border-left: 4px solid #f0a030; padding: 8px 12px; margin: 8px 0; }
img { max-width: 100%; display: block; margin: 1em 0; }
.small { color: #666; font-size: 0.9em; }
"""


def _sequence_section(sequence, esc) -> str:
    """A sequence model's gap at every time step (:func:`~elbox.evidence.sequence_report`, as a
    dict): the per-frame figures under both conventions, then ELBO_t, log p̂(x_t | x_<t) and
    gap_t per step, averaged over the sequences that reach it, each ± sequences ± Monte Carlo."""
    from elbox.evidence.smc import step_table

    r = sequence.to_dict() if hasattr(sequence, "to_dict") else sequence
    frame_rows = []
    for quantity, key in (("−ELBO per frame", "negative_elbo_per_frame"), ("NLL per frame (SMC)", "nll_per_frame")):
        for convention, label in (("total_frames", "total over the total frames"),
                                  ("per_sequence", "each sequence's per-frame value, averaged")):  # fmt: skip
            v = r[key][convention]
            frame_rows.append(f"<tr><td>{esc(quantity)}</td><td class='what'>{esc(label)}</td><td>{_number(v['mean'])}"
                              f"</td><td>{_number(v['stderr'])}</td><td>{_number(v['mc_stderr'], 4)}</td></tr>")
    cells = "".join(
        f"<tr><td>{esc(row['steps'])}</td><td>{row['sequences']}</td>"
        + "".join(f"<td>{_number(row[name])}</td><td>{_number(row[name + '_stderr'])}</td>"
                  f"<td>{_number(row[name + '_mc_stderr'], 4)}</td>" for name in ("elbo", "log_increment", "gap"))
        + "</tr>"
        for row in step_table(r)
    )  # fmt: skip
    header = "".join(f"<th>{h}</th><th>± seq.</th><th>± MC</th>" for h in ("ELBO_t", "log p̂(x_t | x_&lt;t)", "gap_t"))
    return f"""<h2>The gap at every time step</h2>
<table id="frame-table"><tr><th>quantity</th><th>convention</th><th>value</th><th>± sequences</th><th>± MC</th></tr>
{"".join(frame_rows)}</table>
<table id="step-table"><tr><th>step t</th><th>sequences</th>{header}</tr>{cells}</table>
<p class="small">Nats, per step t averaged over the sequences that reach it; ± seq.: the standard error over those
sequences; ± MC: over the ELBO's {r['elbo_samples']} paths (KL {esc(r['kl_method'])}) and the particle filter's
{r['num_runs']} runs of {r['num_samples']} particles ({esc(r['resample'])} resampling). gap_t = log p̂(x_t | x_&lt;t)
− ELBO_t; over all t it sums to each sequence's gap (with the runs' mean of log Ẑ, a little below the log of the
mean Ẑ in the tables above). The last row, where there is one, averages each sequence's per-step values over the
steps after those listed.</p>
"""


def render_html(report, *, title: str = "elbox evidence report", training: Sequence[dict] | None = None,
                context: dict | None = None, sequence=None) -> str:  # fmt: skip
    """The report as one self-contained HTML page: tables of the numbers and the figures; with
    ``sequence`` (a :class:`~elbox.evidence.SequenceReport` or its dict), the gap at every time step
    of a sequence model too."""
    from elbox.plots.vae import plot_training

    r = _report(report)
    esc = html.escape
    exact = r["log_evidence"]["method"] == "exact"
    mc = [r["elbo"].get("mc_stderr"), r["iwae"].get("mc_stderr"), 0.0 if exact else r["log_evidence"].get("mc_stderr"),
          r["upper_bound"].get("mc_stderr")]  # fmt: skip
    rows = "".join(
        f"<tr><td>{esc(name)}</td><td>{_number(mean)}</td><td>{_number(se)}</td><td>{_number(m, 4)}</td>"
        f"<td class='what'>{esc(kind)}</td></tr>"
        for (name, mean, se, kind), m in zip(_bracket(r), mc)
    )
    gap_rows = [("gap log p̂(x) − ELBO (all points)", r["gap"], r.get("gap_stderr"), r.get("gap_mc_stderr"))]
    if r.get("approximation_gap"):
        gap_rows += [
            (f"approximation gap log p̂ − L[q*] (first {r['refined_points']} points)",
             r["approximation_gap"]["mean"], r["approximation_gap"]["stderr"],
             r["approximation_gap"].get("mc_stderr")),
            (f"amortization gap L[q*] − L[q] ({r['refine_steps']} refinement steps)",
             r["amortization_gap"]["mean"], r["amortization_gap"]["stderr"], r["amortization_gap"].get("mc_stderr")),
            ("their sum: the gap on those points", r["gap_refined"], None, None),
        ]  # fmt: skip
    gaps = "".join(f"<tr><td>{esc(n)}</td><td>{_number(v)}</td><td>{_number(s)}</td><td>{_number(m, 4)}</td></tr>"
                   for n, v, s, m in gap_rows)  # fmt: skip
    k = r.get("psis_khat")
    diag_rows = [
        ("reconstruction E_q[log p(x|z)]", _number(r["reconstruction"]["mean"])),
        ("KL(q(z|x) ‖ p(z))", _number(r["kl"]["mean"])),
        ("PSIS k̂: mean / max", f"{_number(k['mean'], 2)} / {_number(k['max'], 2)}" if k else "— (constant weights)"),
        ("points with k̂ > 0.7", f"{100 * k['fraction_above_0.7']:.1f}%" if k else "0%"),
        ("active units", f"{r['active_units']} of {r['latent_units']}" if r.get("active_units") is not None else "—"),
        (f"mutual information I(x; z) under q ({r['mi_points']} points)", _number(r.get("mutual_information"))),
        ("log p(x): Monte Carlo standard error", _number(r["log_evidence"].get("mc_stderr"), 4)),
    ]
    shift = r["log_evidence"].get("precision_shift")
    if shift:
        diag_rows.append((f"log p(x): shift by {r['log_evidence']['precision']} rounding (same draws)",
                          f"{_number(shift['mean'], 4)} ± {_number(shift['stderr'], 4)} (points)"))  # fmt: skip
    b = r.get("bits_per_dim")
    if b:
        diag_rows.append((f"bits per dimension −log₂ p(x) / D, D = {b['dims']}",
                          f"{_number(b['mean'], 4)} ± {_number(b['stderr'], 4)} (points), "
                          f"± {_number(b['mc_stderr'], 4)} (Monte Carlo)"))  # fmt: skip
    diagnostics = "".join(f"<tr><td>{esc(n)}</td><td>{esc(v)}</td></tr>" for n, v in diag_rows)
    warnings = "".join(f"<div class='warning'>{esc(w)}</div>" for w in r.get("warnings", []))
    figures = [("bracket", plot_bracket(r)), ("gaps", plot_gaps(r)), ("khat", plot_khat(r))]
    if r.get("kl_per_dim"):
        figures.append(("kl_per_dim", plot_kl_per_dim(r)))
    if training:
        figures.append(("training", plot_training(training, title="training curves")))
    if sequence is not None:
        from elbox.evidence.smc import SequenceReport
        from elbox.plots.sequences import plot_gap_over_time

        steps = sequence if isinstance(sequence, SequenceReport) else SequenceReport(**sequence)
        figures.append(("gap_over_time", plot_gap_over_time(steps)))
    images = "".join(f"<img id='{name}' alt='{name}' src='data:image/png;base64,{_png(fig)}'>" for name, fig in figures)
    about = "".join(f"<li>{esc(str(key))}: {esc(str(value))}</li>" for key, value in (context or {}).items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title><style>{_STYLE}</style></head>
<body>
<h1>{esc(title)}</h1>
<p class="small">{esc(r['model'])} with guide {esc(r['guide'])}, {r['num_points']} data points; nats per data point,
± the standard error over the points. Evaluated in {r['seconds']:.1f} s.</p>
<ul class="small">{about}</ul>
{warnings}
<h2>The bracket</h2>
<table id="bracket-table"><tr><th>quantity</th><th>value</th><th>± points</th><th>± MC</th><th>what it is</th></tr>
{rows}</table>
<h2>The gap</h2>
<table id="gap-table"><tr><th>quantity</th><th>value</th><th>± points</th><th>± MC</th></tr>{gaps}</table>
<p class="small">± points: the standard error over the data points (how the mean would move on other data from
the same source). ± MC: the Monte Carlo standard error (how it would move with other particles on the same data;
0 for a closed form); the gap's is from the same particles' joint influence on log p̂(x) and the ELBO.</p>
{_sequence_section(sequence, esc) if sequence is not None else ""}<h2>Diagnostics</h2>
<table id="diagnostics-table"><tr><th>diagnostic</th><th>value</th></tr>{diagnostics}</table>
<h2>Figures</h2>
{images}
</body></html>
"""


def write_html_report(report, path: str | os.PathLike, **kwargs) -> None:
    """Writes :func:`render_html`'s page to ``path`` atomically."""
    from elbox.io import atomic_write_text

    atomic_write_text(path, render_html(report, **kwargs))
