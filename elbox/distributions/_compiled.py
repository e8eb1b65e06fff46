"""Compiled loops over time for the exact sequence kernels (numba): the Kalman filter's
covariances, log-likelihood and means, the RTS smoother's means, and the HMM's forward and
forward–backward passes, one step at a time at the cost of the step's arithmetic.

They compute what the pure-torch kernels compute (:mod:`elbox.distributions.kalman`,
:mod:`elbox.distributions.hmm_kernels`), in the same order of operations where it matters, and
``tests/test_compiled.py`` holds each equal to its torch counterpart. They run where nothing
needs a gradient (numba's arrays carry none) on CPU tensors of float32 or float64; everything
else, and every input whose pass they decline (a covariance that is not positive definite, a
probability that underflows), takes the torch path, which raises or recovers as before.
:func:`use_compiled` is that rule, written once. ``ELBOX_COMPILED=0`` turns the compiled path
off (the torch kernels then run everywhere).

The numba functions themselves are in :mod:`elbox.distributions._numba_kernels` (this module
holds the rule and the torch-facing wrappers). They are compiled on first use and cached on disk
(numba's ``cache=True``): the first call in a fresh environment takes a second or two per
function and dtype (about 10 s for the HMM's parallel lanes), later processes load them.

The HMM's lanes run on numba's parallel threads, as many as torch's (``torch.set_num_threads``).
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from functools import cache

import numpy as np
import torch
from torch import Tensor

__all__ = ["compiled_enabled", "use_compiled"]


def compiled_enabled() -> bool:
    """Whether the compiled kernels may run: numba imports and ``ELBOX_COMPILED`` is not ``0``."""
    return os.environ.get("ELBOX_COMPILED", "1") != "0" and _kernels() is not None


def use_compiled(*tensors: Tensor, differentiable: bool = False) -> bool:
    """The dispatch rule: the compiled loop runs when it is enabled, no input needs a gradient
    (or gradients are off), and every input is a CPU tensor of float32 or float64 (all of one
    dtype). ``differentiable``: the caller's compiled pass has its own backward (the HMM's
    log-evidence), so inputs that need a gradient are taken too."""
    if not tensors or not compiled_enabled():
        return False
    dtype = tensors[0].dtype
    if dtype not in (torch.float32, torch.float64):
        return False
    grad = torch.is_grad_enabled() and not differentiable
    return all(t.device.type == "cpu" and t.dtype == dtype and not (grad and t.requires_grad) for t in tensors)


def wants_gradient(*tensors: Tensor) -> bool:
    """Whether autograd is recording through any of ``tensors``."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def refuse_graph(what: str, source: str) -> None:
    """The compiled gradients' guard, called first in their backward passes: a backward pass
    that builds a graph (``create_graph=True``: a second derivative is coming) raises, since
    their gradient comes from a compiled pass (``source``) that autograd cannot see into."""
    if torch.is_grad_enabled():
        raise RuntimeError(
            f"the {what}'s compiled gradient is differentiable once ({source}): for second derivatives set "
            "ELBOX_COMPILED=0, which takes autograd through the torch kernels"
        )


def _np(t: Tensor) -> np.ndarray:
    return t.detach().numpy()


@cache
def _kernels():
    """The numba functions (:mod:`elbox.distributions._numba_kernels`), compiled or loaded from
    numba's cache on first use (None where numba does not import)."""
    try:
        from elbox.distributions._numba_kernels import KERNELS
    except ImportError:  # pragma: no cover - numba is a dependency; a broken install falls back
        return None
    return KERNELS


# The torch-facing wrappers. Each returns None where the compiled pass declines; the caller then
# runs its torch kernel.


def kalman_covariances(model, T: int) -> dict | None:
    """:func:`elbox.distributions.kalman.kalman_covariances` by the step-by-step recursion (the
    same dict: ``pred``, ``filt``, ``gain``, ``chol_s``, ``white`` ``[T, ·, ·]``, the settled
    tail as a broadcast view, and ``steps``), or None."""
    A, C, Q, R, P0 = (model.transition_matrix, model.observation_matrix, model.transition_covariance,
                      model.observation_covariance, model.initial_covariance)  # fmt: skip
    D, obs = A.shape[-1], C.shape[0]
    new = lambda *shape: torch.empty(T, *shape, dtype=A.dtype)  # noqa: E731
    pred, filt, gain, chol_s, white = new(D, D), new(D, D), new(D, obs), new(obs, obs), new(obs, obs)
    tol = 100 * torch.finfo(A.dtype).eps
    steps = _kernels()["riccati"](_np(A), _np(C), _np(Q), _np(R), _np(P0), T, bool(model.steady_state), tol,
                                  *(_np(v) for v in (pred, filt, gain, chol_s, white)))  # fmt: skip
    if steps < 0:
        return None
    out = {"pred": pred, "filt": filt, "gain": gain, "chol_s": chol_s, "white": white}
    if steps < T:
        out = {key: torch.cat([v[:steps], v[steps - 1].expand(T - steps, *v.shape[1:])]) for key, v in out.items()}
    out["steps"] = steps
    return out


def half_logdet(cov: dict) -> Tensor:
    """½ log det S_t + (obs / 2) log 2π of each computed step, ``[steps]``."""
    L_s = cov["chol_s"][: cov["steps"]]
    return L_s.diagonal(dim1=-2, dim2=-1).log().sum(-1) + 0.5 * L_s.shape[-1] * math.log(2 * math.pi)


def kalman_steps(model, cov: dict, values: Tensor, mask: Tensor, drive: Tensor | None, full: bool):
    """The means' pass of the Kalman filter with the shared covariances ``cov``: log p(x_t | x_{<t})
    ``[B, T]`` (zero past each end) and, with ``full``, the filtered and predicted means
    ``[B, T, D]`` (views of ``[T, D, B]`` memory)."""
    B, T, _ = values.shape
    D = model.transition_matrix.shape[-1]
    n = cov["steps"]
    lengths = mask.sum(-1).to(torch.int64)
    log_norm = values.new_zeros(B, T)
    means, predicted = values.new_empty(T if full else 0, D, B), values.new_empty(T if full else 0, D, B)
    has_drive = drive is not None
    drive = drive.contiguous() if has_drive else values.new_zeros(0, 0, 0)
    _kernels()["filter_steps"](_np(model.transition_matrix), _np(model.observation_matrix),
                               _np(cov["gain"][:n].contiguous()), _np(cov["white"][:n].contiguous()),
                               _np(half_logdet(cov)), _np(model.initial_loc), _np(values.contiguous()),
                               lengths.numpy(), _np(drive), has_drive, full, _np(means), _np(predicted),
                               _np(log_norm))  # fmt: skip
    return log_norm, means.permute(2, 0, 1), predicted.permute(2, 0, 1)


def smoother_means(J: Tensor, means: Tensor, predicted: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """The RTS smoother's means ``[B, T, D]`` and its reverse chain's offsets ``[B, T-1, D]`` from the
    filter's means ``[B, T, D]``, with the gains ``J`` ``[n, D, D]`` (the last repeated past n);
    views of ``[T, D, B]`` memory."""
    B, T, D = means.shape
    out, offset = means.new_empty(T, D, B), means.new_empty(T - 1, D, B)
    lengths = mask.sum(-1).to(torch.int64)
    batch_last = lambda v: v.permute(1, 2, 0).contiguous()  # noqa: E731  (free for the filter's own output)
    _kernels()["smoother_means"](_np(J.contiguous()), _np(batch_last(means)), _np(batch_last(predicted)),
                                 lengths.numpy(), _np(out), _np(offset))  # fmt: skip
    return out.permute(2, 0, 1), offset.permute(2, 0, 1)


def by_lanes(B: int) -> bool:
    """The HMM passes' rule: a batch of at least ``LANES`` sequences runs with the sequences as the
    vectorized inner loop (a step of all K states for a block of sequences at once); fewer run one
    sequence at a time, whose loops over the K states are the inner ones (measured here, K = 8:
    one sequence of 100,000 steps takes ~10× longer by lanes; 200 sequences of 500 ~2× longer
    one by one)."""
    return B >= LANES


LANES = 16


def _batch_last(log_e: Tensor) -> Tensor:
    """The log-emissions ``[B, T, K]`` as the lanes' ``[K, T, B]`` array: a view where the caller
    laid them out so (:func:`elbox.distributions.hmm_kernels.emissions_batch_last`), else a copy."""
    lanes = log_e.permute(2, 1, 0)
    return lanes if lanes.is_contiguous() else lanes.contiguous()


def _block(B: int, threads: int) -> int:
    """Lanes per block: the batch split into as many blocks as threads (more where a block would
    pass 128 lanes), each a multiple of 8 lanes (measured here, K = 8, 200 × 500 steps: two
    blocks of 104 take 0.5 ms, four of 64 0.8 ms, one thread 1.0 ms)."""
    blocks = threads * -(-B // (threads * 128))
    per_block = -(-B // blocks)
    return 8 * -(-per_block // 8)


@contextmanager
def _lane_threads():
    """Numba's thread count set to torch's (``torch.set_num_threads``) for the lanes' parallel
    kernels, and put back after them; yields it."""
    import numba

    before = numba.get_num_threads()
    threads = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(threads)
    try:
        yield threads
    finally:
        numba.set_num_threads(before)


def _rows_input(log_e) -> np.ndarray:
    """The one-sequence-at-a-time kernels' input: the log-emissions ``[B, T, K]``, contiguous."""
    return _np((log_e.log_prob() if _linear(log_e) else log_e).contiguous())


def _linear(log_e) -> bool:
    return not isinstance(log_e, Tensor)  # hmm_kernels.LinearEmissions (computed in the loop)


def hmm_forward(initial_logits: Tensor, transition_logits: Tensor, log_e, positive: bool = False,
                keep: bool = True):  # fmt: skip
    """Filtered p(z_t | x_{1:t}) ``[B, T, K]`` (None without ``keep``) and log p(x_t | x_{<t})
    ``[B, T]``, or None where a normalizer underflowed (with ``positive``, also where a filtered
    probability is zero). ``log_e``: a ``[B, T, K]`` tensor or
    :class:`~elbox.distributions.hmm_kernels.LinearEmissions`."""
    B, T, K = log_e.shape
    if not by_lanes(B):
        pi, A = _np(initial_logits.softmax(-1)), _np(transition_logits.softmax(-1))
        alpha, log_c = initial_logits.new_empty((B, T, K) if keep else (0, 0, 0)), initial_logits.new_empty(B, T)
        status = _kernels()["hmm_forward_rows"](pi, A, _rows_input(log_e), _np(alpha), _np(log_c), keep)
        return None if status == 0 or (status == 2 and positive) else ((alpha if keep else None), log_c)
    lanes = _forward_lanes(initial_logits, transition_logits, log_e, positive, keep)
    if lanes is None:
        return None
    alpha, c, shift, _ = lanes
    return (alpha.permute(2, 1, 0) if keep else None), (c.log() + shift).T


def _lane_inputs(log_e) -> tuple:
    """The log-emissions as the lanes' kernels take them: (table, frames, centre, rows, cols, W,
    linear), the unused half empty."""
    if _linear(log_e):
        W = _np(log_e.weights.contiguous())
        return (np.empty((0, 0, 0), W.dtype), _np(log_e.frames.contiguous()), _np(log_e.centre), log_e.rows.numpy(),
                log_e.cols.numpy(), W, True)  # fmt: skip
    table, none = _np(_batch_last(log_e)), np.empty(0, np.int64)
    dtype = table.dtype
    return table, np.empty((0, 0, 0), dtype), np.empty(0, dtype), none, none, np.empty((0, 0), dtype), False


def _forward_lanes(initial_logits: Tensor, transition_logits: Tensor, log_e, positive: bool, keep: bool):
    """The forward pass by lanes: α ``[K, T, B]`` (empty without ``keep``), the normalizers and
    the shifts ``[T, B]``, each sequence's smallest filtered probability ``[B]``; or None
    (underflow, or a zero α with ``positive``)."""
    B, T, K = log_e.shape
    new = initial_logits.new_empty
    alpha, c, shift, smallest = new((K, T, B) if keep else (0, 0, 0)), new(T, B), new(T, B), new(B)
    with _lane_threads() as threads:
        _kernels()["hmm_forward"](_np(initial_logits.softmax(-1)), _np(transition_logits.softmax(-1)),
                                  *_lane_inputs(log_e), _block(B, threads), keep, _np(alpha), _np(c), _np(shift),
                                  _np(smallest))  # fmt: skip
    if not bool(c.amin() > 0) or (positive and not bool(smallest.amin() > 0)):  # underflow (NaN fails too)
        return None
    return alpha, c, shift, smallest


def hmm_forward_backward(initial_logits: Tensor, transition_logits: Tensor, log_e, mask: Tensor,
                         positive: bool = True):  # fmt: skip
    """(α, γ, expected transitions ``[B, K, K]``, log c, the smallest α) of the scaled
    forward–backward pass (α and γ ``[B, T, K]``), or None (with ``positive``, also where a
    filtered probability is zero)."""
    B, T, K = log_e.shape
    A = _np(transition_logits.softmax(-1))
    lengths = mask.sum(-1).to(torch.int64).numpy()
    if not by_lanes(B):
        forward = hmm_forward(initial_logits, transition_logits, log_e, positive=positive)
        if forward is None:
            return None
        alpha, log_c = forward
        gamma, counts = alpha.new_empty(B, T, K), alpha.new_empty(B, K, K)
        ok = _kernels()["hmm_backward_rows"](A, _rows_input(log_e), _np(alpha), _np(log_c), lengths, _np(gamma),
                                             _np(counts))  # fmt: skip
        return (alpha, gamma, counts, log_c, alpha.amin()) if ok else None
    new = initial_logits.new_empty
    alpha, c, shift, smallest = new(K, T, B), new(T, B), new(T, B), new(B)
    gamma, tally, check = new(K, T, B), new(K, K, B), new(B)
    with _lane_threads() as threads:
        _kernels()["hmm_forward_backward"](_np(initial_logits.softmax(-1)), A, *_lane_inputs(log_e), lengths,
                                           _block(B, threads), _np(alpha), _np(c), _np(shift), _np(smallest),
                                           _np(gamma), _np(tally), _np(check))  # fmt: skip
    if not bool(c.amin() > 0) or (positive and not bool(smallest.amin() > 0)):  # underflow (NaN fails too)
        return None
    if not bool(torch.isfinite(check).all()):  # a ratio overflowed (inf or NaN in the marginals)
        return None
    counts = tally.permute(2, 0, 1) * transition_logits.softmax(-1)  # α_t(i) A_ij w_{t+1}(j), summed
    return alpha.permute(2, 1, 0), gamma.permute(2, 1, 0), counts, (c.log() + shift).T, smallest.amin()


def hmm_log_evidence(initial_logits: Tensor, transition_logits: Tensor, log_e) -> Tensor | None:
    """log p(x) ``[B]`` over all T steps (the padding's emissions are the caller's: zero log-densities
    there add nothing), or None."""
    B, T, _ = log_e.shape
    if not by_lanes(B):
        out = initial_logits.new_empty(B)
        lengths = torch.full((B,), T, dtype=torch.int64).numpy()
        ok = _kernels()["hmm_score_rows"](_np(initial_logits.softmax(-1)), _np(transition_logits.softmax(-1)),
                                          _rows_input(log_e), lengths, _np(out))  # fmt: skip
        return out if ok else None
    lanes = _forward_lanes(initial_logits, transition_logits, log_e, False, False)
    return None if lanes is None else (lanes[1].log() + lanes[2]).sum(0)
