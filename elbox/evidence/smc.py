r"""The evidence of sequence models by sequential Monte Carlo, and the gap at every time step:
ELBO_t beside log p̂(x_t | x_{<t}) from the particle filter's increments, summed to the whole
sequence's gap; per-frame figures under both conventions in use."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from elbox._validation import check_positive_int
from elbox.bounds.sequence import elbo_steps, smc

__all__ = ["SequenceReport", "sequence_report", "smc_log_evidence", "step_table"]


def _log_mean_and_stderr(log_z: Tensor) -> tuple[Tensor, Tensor]:
    """log of the mean of Ẑ over runs (dim 0), and its delta-method standard error."""
    from elbox.evidence.estimate import _log_mean_and_stderr as log_mean

    return log_mean(log_z)


def _proposal(model, guide):
    """The guide, or the model's prior (the bootstrap filter) where there is none."""
    from elbox.guides.sequence import PriorProposal

    return guide if guide is not None else PriorProposal(model)


@torch.no_grad()
def smc_runs(model, guide, x, *, num_samples: int, num_runs: int, resample: str = "systematic",
             ess_threshold: float = 0.5) -> tuple[Tensor, Tensor]:  # fmt: skip
    """``num_runs`` independent particle filters: log Ẑ ``[R, B]`` and the increments
    log p̂(x_t | x_{<t}) ``[R, B, T]``."""
    R = check_positive_int(num_runs, "num_runs")
    proposal = _proposal(model, guide)
    runs = [smc(model, proposal, x, num_samples=num_samples, resample=resample, ess_threshold=ess_threshold)
            for _ in range(R)]  # fmt: skip
    return torch.stack([r.log_z for r in runs]), torch.stack([r.log_increments for r in runs])


def smc_log_evidence(model, guide, x, *, num_samples: int, num_runs: int = 10, resample: str = "systematic",
                     ess_threshold: float = 0.5) -> tuple[Tensor, Tensor]:  # fmt: skip
    r"""log p(x) per sequence from ``num_runs`` independent particle filters of ``num_samples``
    particles, the guide proposing (the prior where ``guide`` is None):

    .. math:: \log \hat p(x) = \log \frac1R \sum_r \hat Z_r, \qquad
              \mathrm{se} \approx \frac{\mathrm{sd}_r(\hat Z_r)}{\sqrt R\, \bar Z},

    unbiased in Ẑ, so a lower bound in expectation in log space (by about se²/2).

    Returns:
        (value, stderr): each ``[B]``.
    """
    log_z, _ = smc_runs(model, guide, x, num_samples=num_samples, num_runs=num_runs, resample=resample,
                        ess_threshold=ess_threshold)  # fmt: skip
    return _log_mean_and_stderr(log_z)


def _per_frame(total: Tensor, lengths: Tensor, mc: Tensor) -> dict:
    """A per-sequence quantity ``[B]`` (and its Monte Carlo spread ``[R, B]`` over runs) per frame
    under both conventions: over the total frames, and each sequence's per-step mean averaged."""
    frames = lengths.sum()
    B = total.numel()

    def spread(values: Tensor) -> float:
        return float(values.std() / math.sqrt(values.numel())) if values.numel() > 1 else math.nan

    per_total = total / lengths  # [B]
    out = {
        "total_frames": {"mean": float(total.sum() / frames),
                         # the points' spread: the ratio estimator's standard error over sequences
                         "stderr": spread(total - lengths * total.sum() / frames) * B / float(frames),
                         "mc_stderr": spread(mc.sum(-1) / frames) if mc.shape[0] > 1 else math.nan},
        "per_sequence": {"mean": float(per_total.mean()), "stderr": spread(per_total),
                         "mc_stderr": spread((mc / lengths).mean(-1)) if mc.shape[0] > 1 else math.nan},
    }  # fmt: skip
    return out


@dataclass
class SequenceReport:
    """What :func:`sequence_report` measured: per sequence ``[B]`` and per step ``[B, T]``, in nats.

    Attributes:
        elbo_steps: ELBO_t, ``[B][T]`` lists (zero past each end); ``kl_method`` how its KL was taken.
        log_increments: log p̂(x_t | x_{<t}) from the particle filter, averaged over runs.
        gap_steps: log p̂(x_t | x_{<t}) − ELBO_t; summed over t, each sequence's gap.
        elbo, log_evidence, gap: per sequence.
        log_evidence_stderr: per sequence, over independent filter runs.
        negative_elbo_per_frame, nll_per_frame: under both conventions (``total_frames``: the sum
            over sequences divided by the total frames; ``per_sequence``: each sequence's per-frame
            value averaged over sequences), each with ``stderr`` (the spread over sequences) and
            ``mc_stderr`` (over particles and filter runs).
        num_samples, num_runs, resample: The filter's settings; ``elbo_samples`` the ELBO's paths.
        elbo_steps_mc_stderr, log_increments_mc_stderr: The Monte Carlo standard errors of ELBO_t
            (over the ELBO's paths) and of log p̂(x_t | x_{<t}) (over the filter runs), ``[B][T]``.
    """

    elbo_steps: list
    log_increments: list
    gap_steps: list
    lengths: list
    elbo: list
    log_evidence: list
    log_evidence_stderr: list
    gap: list
    negative_elbo_per_frame: dict
    nll_per_frame: dict
    kl_method: str
    num_samples: int
    num_runs: int
    resample: str
    elbo_samples: int
    extra: dict = field(default_factory=dict)
    elbo_steps_mc_stderr: list = field(default_factory=list)
    log_increments_mc_stderr: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def step_table(self, max_steps: int = 20) -> list[dict]:
        """:func:`step_table` of this report."""
        return step_table(self, max_steps)

    def mean_gap_by_step(self) -> list[float]:
        """The gap at each step averaged over the sequences that reach it."""
        gap = torch.tensor(self.gap_steps)
        lengths = torch.tensor(self.lengths)
        mask = torch.arange(gap.shape[1]) < lengths.unsqueeze(-1)
        return ((gap * mask).sum(0) / mask.sum(0).clamp_min(1)).tolist()


@torch.no_grad()
def sequence_report(model, guide, x, *, num_samples: int = 100, num_runs: int = 10, elbo_samples: int = 10,
                    resample: str = "systematic", ess_threshold: float = 0.5) -> SequenceReport:  # fmt: skip
    r"""The gap between the ELBO and the evidence at every time step of every sequence.

    .. math:: \mathrm{gap}_t = \log \hat p(x_t \mid x_{<t}) - \mathrm{ELBO}_t, \qquad
              \sum_t \mathrm{gap}_t = \log \hat p(x) - \mathrm{ELBO},

    ELBO_t from ``elbo_samples`` paths of the guide (:func:`elbox.bounds.elbo_steps`), the
    increments from ``num_runs`` particle filters of ``num_samples`` particles (the guide
    proposing), averaged over runs. The per-frame figures come under both conventions: the total
    over the total frames, and each sequence's per-frame value averaged over sequences; each with
    ± over sequences and ± Monte Carlo.

    Example:
        >>> model = elbox.DeepMarkovModel(4, 2, transition_dim=8, emission_hidden=(8,))
        >>> x, _ = model.sample(3, num_steps=5)
        >>> report = elbox.evidence.sequence_report(model, model.guide(rnn_dim=8), x, num_samples=8, num_runs=2)
        >>> len(report.gap_steps), len(report.gap_steps[0])
        (3, 5)
    """
    x = model.check_data(x)
    S, R = check_positive_int(num_samples, "num_samples"), check_positive_int(num_runs, "num_runs")
    E = check_positive_int(elbo_samples, "elbo_samples")
    # the ELBO per step, E paths at a time with its spread over them for the Monte Carlo error
    draws = [elbo_steps(model, guide, x, num_samples=1) for _ in range(E)]
    elbo_draws = torch.stack([d.value for d in draws])  # [E, B, T]
    elbo_t = elbo_draws.mean(0)  # [B, T]
    elbo_mc = torch.stack([d.value.sum(-1) for d in draws])  # [E, B]
    log_z, increments = smc_runs(model, guide, x, num_samples=S, num_runs=R, resample=resample,
                                 ess_threshold=ess_threshold)  # fmt: skip
    log_px, log_px_se = _log_mean_and_stderr(log_z)
    inc = increments.mean(0)  # [B, T]
    lengths = x.mask.sum(-1).to(elbo_t.dtype)
    elbo = elbo_t.sum(-1)
    gap_t = torch.where(x.mask, inc - elbo_t, 0.0)
    # the increments' mean sums to the mean of log Ẑ; the report's log p̂(x) is log of the mean Ẑ (higher)
    return SequenceReport(
        elbo_steps=elbo_t.tolist(), log_increments=inc.tolist(), gap_steps=gap_t.tolist(),
        lengths=lengths.long().tolist(), elbo=elbo.tolist(), log_evidence=log_px.tolist(),
        log_evidence_stderr=log_px_se.tolist(), gap=(log_px - elbo).tolist(),
        negative_elbo_per_frame=_per_frame(-elbo, lengths, -elbo_mc),
        nll_per_frame=_per_frame(-log_px, lengths, -log_z),
        kl_method=draws[0].kl_method, num_samples=S, num_runs=R, resample=resample, elbo_samples=E,
        elbo_steps_mc_stderr=_spread(elbo_draws, x.mask).tolist(),
        log_increments_mc_stderr=_spread(increments, x.mask).tolist(),
    )  # fmt: skip


def _spread(draws: Tensor, mask: Tensor) -> Tensor:
    """The standard error of the mean over independent draws (dim 0), ``[B, T]``: NaN from one
    draw, zero past each end."""
    n = draws.shape[0]
    se = draws.std(0) / math.sqrt(n) if n > 1 else torch.full_like(draws[0], math.nan)
    return torch.where(mask, se, 0.0)


def step_table(report, max_steps: int = 20) -> list[dict]:
    r"""The per-step table of a :class:`SequenceReport` (or its ``to_dict()``): for each of the first
    ``max_steps`` steps, over the sequences that reach it, the means of ELBO_t,
    log p̂(x_t | x_{<t}) and their difference gap_t, each with ± over those sequences
    (``*_stderr``) and ± Monte Carlo (``*_mc_stderr``: over the ELBO's paths and the filter runs,
    independent of each other); then one row for the steps after those, their per-step mean per
    sequence averaged over sequences (± over sequences; no Monte Carlo error: the steps of one
    path are not independent).

    Returns:
        Rows ``{"steps": "t" or "a–b", "sequences", "elbo", "elbo_stderr", "elbo_mc_stderr",
        "log_increment", …, "gap", …}``.
    """
    r = report.to_dict() if isinstance(report, SequenceReport) else report
    elbo, inc = torch.tensor(r["elbo_steps"], dtype=torch.float64), torch.tensor(r["log_increments"],
                                                                                  dtype=torch.float64)  # fmt: skip
    B, T = elbo.shape
    mask = torch.arange(T) < torch.tensor(r["lengths"]).unsqueeze(-1)  # [B, T]
    mc_e = torch.tensor(r["elbo_steps_mc_stderr"], dtype=torch.float64) if r.get("elbo_steps_mc_stderr") else None
    mc_i = torch.tensor(r["log_increments_mc_stderr"], dtype=torch.float64) if r.get("log_increments_mc_stderr") \
        else None  # fmt: skip
    values = {"elbo": (elbo, mc_e), "log_increment": (inc, mc_i),
              "gap": (inc - elbo, None if mc_e is None or mc_i is None else (mc_e.square() + mc_i.square()).sqrt())}

    def stderr(v: Tensor) -> float:
        return float(v.std() / math.sqrt(len(v))) if len(v) > 1 else math.nan

    rows = []
    for t in range(min(T, max_steps)):
        reach = mask[:, t]
        n = int(reach.sum())
        row = {"steps": str(t + 1), "sequences": n}
        for name, (v, mc) in values.items():
            row[name], row[name + "_stderr"] = float(v[reach, t].mean()), stderr(v[reach, t])
            row[name + "_mc_stderr"] = math.nan if mc is None else float(mc[reach, t].square().sum().sqrt() / n)
        rows.append(row)
    if T > max_steps:
        later = mask[:, max_steps:]
        reach = later.any(-1)
        count = later.sum(-1)[reach]
        row = {"steps": f"{max_steps + 1}–{T}", "sequences": int(reach.sum())}
        for name, (v, _) in values.items():
            per_sequence = (v[:, max_steps:] * later).sum(-1)[reach] / count  # each sequence's per-step mean there
            row[name], row[name + "_stderr"] = float(per_sequence.mean()), stderr(per_sequence)
            row[name + "_mc_stderr"] = math.nan
        rows.append(row)
    return rows
