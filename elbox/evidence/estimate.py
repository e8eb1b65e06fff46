r"""Estimates of the evidence log p_θ(x): exact where tractable, else by importance sampling or
annealed importance sampling; and bidirectional Monte Carlo's bracket on simulated data."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from elbox._validation import as_tensor, check_callable, check_model, check_points, check_positive_int
from elbox.bounds._common import draw_with_log_prob, prepare
from elbox.distributed import base_seed, map_batches
from elbox.evidence.ais import AIS
from elbox.precision import check_precision, matmul_precision

__all__ = ["Estimate", "Mean", "bdmc", "importance_log_weights", "log_evidence", "particle_chunk", "precision_shift"]

_METHODS = ("exact", "importance", "ais", "smc")

#: Particles × data points × data size held at once by default (float32: 4 MB). Chunks of this
#: size stay in the allocator's reused memory; much larger ones are fresh pages every time.
_ELEMENT_BUDGET = 1 << 20


class Mean(NamedTuple):
    """An average over data points and its Monte Carlo standard error (``value, stderr = ...``)."""

    value: float
    stderr: float


@dataclass(frozen=True)
class Estimate:
    """An estimate of log p(x) per data point, with its standard error.

    Attributes:
        value: ``[B]``.
        stderr: ``[B]``; zero for exact values.
        method: ``"exact"``, ``"importance"``, ``"ais"``, or ``"bdmc-upper"`` (reverse AIS).
        num_samples: Particles (or AIS chains) per data point; None for exact values.
        precision: The networks' products: ``"float32"`` or ``"bfloat16"`` (:mod:`elbox.precision`).
        precision_shift: In bfloat16, ``[B]``: what the rounding of the products moved each
            point's log p̂ by, measured on the first particles (:func:`precision_shift`); None in
            float32.
    """

    value: Tensor
    stderr: Tensor
    method: str
    num_samples: int | None = None
    precision: str = "float32"
    precision_shift: Tensor | None = None

    def mean(self) -> Mean:
        """The average over data points and its Monte Carlo standard error (the points' errors
        taken independent), as ``Mean(value, stderr)``."""
        n = self.value.numel()
        return Mean(float(self.value.mean()), float(self.stderr.square().sum().sqrt() / n))

    def mean_shift(self) -> Mean | None:
        """The average over data points of :attr:`precision_shift`, with its standard error over the
        points; None in float32. The documented rule for bfloat16: its magnitude within the mean's
        Monte Carlo error (``mean().stderr``)."""
        if self.precision_shift is None:
            return None
        return _mean_over_points(self.precision_shift)


def _mean_over_points(values: Tensor) -> Mean:
    n = values.numel()
    spread = float(values.double().std()) / math.sqrt(n) if n > 1 else math.nan
    return Mean(float(values.double().mean()), spread)


def _log_mean_and_stderr(log_w: Tensor) -> tuple[Tensor, Tensor]:
    """log of the mean of the weights over dim 0, and its delta-method standard error
    sd(w) / (√S · mean(w))."""
    S = log_w.shape[0]
    value = log_w.logsumexp(0) - math.log(S)
    if S == 1:
        return value, torch.full_like(value, math.inf)
    w = (log_w - log_w.max(0).values).exp()
    return value, w.std(0) / (math.sqrt(S) * w.mean(0))


def particle_chunk(x, num_samples: int) -> int:
    """Particles drawn at a time for a batch ``x``: at most ``num_samples``, and few enough that
    particles × points × data size stays within a fixed budget (4 MB of float32)."""
    size = len(x) * max(1, x.shape[1:].numel() if isinstance(x, Tensor) else x.values.shape[1:].numel())
    return max(1, min(num_samples, _ELEMENT_BUDGET // size))


def importance_log_weights(model, guide, x, *, num_samples: int, chunk_size: int | None = None, index=None) -> Tensor:
    """log w_s = log p_θ(x, z_s) − log q(z_s | x) for S particles from the guide (the prior when
    ``guide`` is None), drawn ``chunk_size`` at a time: ``[S, B]``."""
    S = check_positive_int(num_samples, "num_samples")
    x, proposal = _proposal(model, guide, x, index)
    chunk = particle_chunk(x, S) if chunk_size is None else check_positive_int(chunk_size, "chunk_size")
    log_w = []
    for begin in range(0, S, chunk):
        z, log_q = draw_with_log_prob(proposal, min(chunk, S - begin), pathwise=False)  # [s, B, *event], [s, B]
        log_w.append(model.log_joint(x, z) - log_q)
    return torch.cat(log_w)


def _proposal(model, guide, x, index):
    """The checked data and the importance proposal: the guide's q(z | x), or the prior."""
    if guide is not None:
        x, proposal, _ = prepare(model, guide, x, index)
        return x, proposal
    x = model.check_data(x)
    prior = model.prior_for(x)
    B = len(x)
    return x, prior if tuple(prior.batch_shape) == (B,) else prior.expand(torch.Size([B]) + prior.batch_shape)


@torch.no_grad()
def precision_shift(model, guide, x, *, num_samples: int, index=None) -> Tensor:
    r"""What the networks' current precision moves log p̂(x) by, per point ``[B]``.

    Draws S particles from the proposal once, and evaluates their log-weights twice, with the
    networks' products in the current precision (:func:`elbox.precision.matmul_precision`) and
    in float32: the result is log (1/S) Σ_s w_s − log (1/S) Σ_s w_s^(float32), the same draws
    in both (common random numbers), so what remains is the rounding's effect alone. Outside a
    bfloat16 block it is zero.

    Example:
        >>> import torch, elbox
        >>> from elbox.precision import matmul_precision
        >>> _ = torch.manual_seed(0)
        >>> model = elbox.VAE(data_dim=16, latent_dim=2, hidden=(32,)).float()  # bfloat16 rounds float32 networks
        >>> x = (torch.rand(5, 16) < 0.5).float()
        >>> with matmul_precision("bfloat16"):
        ...     shift = elbox.evidence.precision_shift(model, model.guide, x, num_samples=64)
        >>> shift.shape, bool(shift.abs().max() < 0.5)
        (torch.Size([5]), True)
    """
    S = check_positive_int(num_samples, "num_samples")
    x, proposal = _proposal(model, guide, x, index)
    z, log_q = draw_with_log_prob(proposal, S, pathwise=False)
    low = model.log_joint(x, z) - log_q
    with matmul_precision("float32"):
        high = model.log_joint(x, z) - log_q
    return low.logsumexp(0) - high.logsumexp(0)


def _first_chunk_shift(model, guide, x, S: int, chunk_size: int | None, index=None) -> Tensor:
    """:func:`precision_shift` on one chunk of particles (the estimate's own chunk size), as a
    bfloat16 estimate measures it per batch."""
    chunk = particle_chunk(x, S) if chunk_size is None else chunk_size
    return precision_shift(model, guide, x, num_samples=chunk, index=index)


@torch.no_grad()
def log_evidence(
    model,
    x,
    *,
    guide=None,
    method: str = "exact",
    num_samples: int = 1000,
    chunk_size: int | None = None,
    batch_size: int | None = None,
    index: Tensor | None = None,
    schedule=200,
    kernel: str = "hmc",
    leapfrog_steps: int = 10,
    step_size: float = 0.1,
    progress: Callable[[int, int], None] | None = None,
    precision: str = "float32",
    num_runs: int = 10,
    resample: str = "systematic",
) -> Estimate:
    r"""log p_θ(x) per data point.

    ``"exact"`` asks the model (forward algorithm, Kalman filter, closed forms).
    ``"importance"`` averages S importance weights w_s = p_θ(x, z_s) / q(z_s | x) with the
    guide as proposal (the prior when ``guide`` is None):

    .. math:: \log \hat p(x) = \log \frac{1}{S}\sum_s w_s, \quad
              \mathrm{se} \approx \frac{\mathrm{sd}(w)}{\sqrt{S}\,\bar w}

    (the delta method). The estimate is the IWAE bound of that S, biased low by about
    se²/2, so it is consistent but a lower bound in expectation.

    ``"ais"`` runs ``num_samples`` chains of annealed importance sampling from the prior to the
    posterior along the geometric path p(z) p_θ(x | z)^β (:mod:`elbox.evidence.ais`), with HMC
    or MALA moves for continuous latents and Gibbs sweeps for discrete ones; its standard error
    is the same delta-method one, over chains. It needs no guide.

    ``"smc"`` runs ``num_runs`` independent particle filters of ``num_samples`` particles over the
    paths of a sequence model (:mod:`elbox.evidence.smc`; the guide proposes, the prior where
    there is none; ``resample`` as in :func:`elbox.bounds.fivo`): log of the mean of their
    unbiased Ẑ, with the delta-method standard error over runs.

    Data points are taken ``batch_size`` at a time and particles ``chunk_size`` at a time, so
    the memory held is bounded whatever B and S are. Each batch's draws come from a seed of (one
    draw of torch's RNG, the batch); under torch.distributed the batches are dealt to the ranks,
    and the estimate gathered on every rank equals one process's.

    Args:
        model: A :class:`~elbox.models.LatentModel`.
        x: Data, ``[B, *data_shape]`` (or :class:`~elbox.data.Sequences`).
        guide: The proposal, for ``"importance"``.
        method: ``"exact"``, ``"importance"``, ``"ais"`` or ``"smc"``.
        num_samples: S, the particles (or AIS chains) per data point.
        chunk_size: Particles drawn at a time (default: as many as fit in 4 MB of data-sized
            tensors).
        batch_size: Data points at a time (default: all).
        index: The data points' indices, for local guides.
        schedule: AIS: T moves (a sigmoid schedule) or the β's, rising strictly from 0 to 1.
        kernel: AIS: ``"hmc"`` or ``"mala"``.
        leapfrog_steps: AIS: leapfrog steps per HMC move.
        step_size: AIS: the initial step size (adapted per data point).
        progress: Called as ``progress(points_done, points_total)`` after each batch.
        num_runs: SMC: independent filters, for the standard error.
        resample: SMC: ``"systematic"``, ``"multinomial"`` or ``"never"``.
        precision: ``"float32"``, or ``"bfloat16"`` for the encoder's and decoder's products
            (``"importance"`` only). The encoder's rounding changes only the proposal, which
            leaves the estimate's target alone; the decoder's changes the model, so each batch
            also measures the shift on its first chunk of particles
            (:attr:`Estimate.precision_shift`).

    Returns:
        An :class:`Estimate`.
    """
    check_model(model)
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}; received {method!r}")
    check_callable(progress, "progress", "a function progress(points_done, points_total)", optional=True)
    if check_precision(precision) != "float32" and method != "importance":
        raise ValueError(
            f"precision={precision!r} applies to method='importance', where its shift is measured; received "
            f"method={method!r}" + (" (exact evidence has no network products to round)" if method == "exact" else "")
        )
    if method == "exact":
        if not getattr(model, "has_exact_evidence", False):
            raise ValueError(
                f"{type(model).__name__} has no exact evidence; use method='importance' with a guide, or 'ais'"
            )
        value = model.log_evidence(check_points(model.check_data(x)))
        return Estimate(value=value, stderr=torch.zeros_like(value), method="exact")
    S = check_positive_int(num_samples, "num_samples")
    if chunk_size is not None:
        check_positive_int(chunk_size, "chunk_size")
    ais = AIS(model, schedule=schedule, kernel=kernel, leapfrog_steps=leapfrog_steps, step_size=step_size) \
        if method == "ais" else None  # fmt: skip
    x = check_points(model.check_data(x))
    B = len(x)
    step = B if batch_size is None else check_positive_int(batch_size, "batch_size")

    def estimate(begin: int, end: int) -> tuple[Tensor, ...]:
        batch = x[begin:end]
        if ais is not None:
            return _log_mean_and_stderr(ais.forward(batch, S))
        if method == "smc":
            from elbox.evidence.smc import smc_log_evidence

            return smc_log_evidence(model, guide, batch, num_samples=S, num_runs=num_runs, resample=resample)
        rows = None if index is None else index[begin:end]
        with matmul_precision(precision):
            log_w = importance_log_weights(model, guide, batch, num_samples=S, chunk_size=chunk_size, index=rows)
            if precision == "float32":
                return _log_mean_and_stderr(log_w)
            shift = _first_chunk_shift(model, guide, batch, S, chunk_size, index=rows)
        return (*_log_mean_and_stderr(log_w), shift)

    # each batch's draws from a seed of (base, batch): the same estimate on any number of ranks
    parts = map_batches(B, step, estimate, base=base_seed(), progress=progress)
    device = parts[0][0].device
    value, stderr, *shift = (torch.cat([p[i].to(device) for p in parts]) for i in range(len(parts[0])))
    return Estimate(value=value, stderr=stderr, method=method, num_samples=S, precision=precision,
                    precision_shift=shift[0] if shift else None)  # fmt: skip


@torch.no_grad()
def bdmc(
    model,
    x,
    z: Tensor,
    *,
    num_chains: int = 10,
    schedule=200,
    kernel: str = "hmc",
    leapfrog_steps: int = 10,
    step_size: float = 0.1,
) -> tuple[Estimate, Estimate]:
    r"""Bidirectional Monte Carlo: log p(x) bracketed by forward and reverse AIS.

    Forward AIS from the prior gives a stochastic lower bound; reverse AIS from exact posterior
    samples ``z`` gives an unbiased estimate of 1/p(x), so minus the log of its mean is a
    stochastic upper bound. For data simulated from the model, the latent that drew each x is an
    exact posterior sample (Grosse et al., 2015). The true log p(x) lies between the two in
    expectation, and they meet as the schedule lengthens.

    Args:
        model: A :class:`~elbox.models.LatentModel` with continuous or discrete latents.
        x: Data, ``[B, *data_shape]``.
        z: Exact posterior samples: ``[B, *latent_shape]`` (one per point, shared by every reverse
            chain) or ``[C, B, *latent_shape]``.
        num_chains: C, chains per data point in each direction.
        schedule, kernel, leapfrog_steps, step_size: As for ``log_evidence(method="ais")``.

    Returns:
        (lower, upper): two :class:`Estimate`, ``method`` ``"ais"`` and ``"bdmc-upper"``.
    """
    C = check_positive_int(num_chains, "num_chains")
    x = check_points(check_model(model).check_data(x))
    prior = model.prior_for(x)
    event = tuple(prior.event_shape)
    z = as_tensor(z, "z")
    lead = z.dim() - len(event)  # 1: [B, *event]; 2: [C, B, *event]
    if lead not in (1, 2) or tuple(z.shape[lead:]) != event or z.shape[lead - 1] != len(x):
        raise ValueError(
            f"z must be posterior samples of shape [B, *latent_shape] = {[len(x), *event]} or [C, B, *latent_shape]; "
            f"received {list(z.shape)}"
        )
    if lead == 1:
        z = z.expand(C, *z.shape)
    ais = AIS(model, schedule=schedule, kernel=kernel, leapfrog_steps=leapfrog_steps, step_size=step_size)
    lower = _log_mean_and_stderr(ais.forward(x, C))
    neg_upper, stderr = _log_mean_and_stderr(ais.reverse(x, z))
    return (
        Estimate(value=lower[0], stderr=lower[1], method="ais", num_samples=C),
        Estimate(value=-neg_upper, stderr=stderr, method="bdmc-upper", num_samples=z.shape[0]),
    )
