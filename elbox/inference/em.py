"""Expectation-maximization: coordinate ascent on the ELBO for models with a closed-form M-step."""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable

import torch

from elbox._validation import check_callable, check_number, check_points, check_positive_int, check_seed, named
from elbox.data.batches import Batch
from elbox.inference.history import BoundaryWarning, BoundDecreaseWarning, ConvergenceWarning, History
from elbox.models.base import LatentModel

__all__ = ["em"]


def em(
    model,
    data,
    *,
    max_iter: int = 100,
    tol: float | None = 1e-3,
    init: str | None = None,
    n_init: int = 1,
    seed: int | None = None,
    callback: Callable | None = None,
    on_failure: str = "raise",
) -> History:
    r"""Fits ``model`` to ``data`` by EM, in place, and returns the history of the bound.

    EM maximizes the ELBO :math:`\mathcal{L}(q, \theta) = \log p_\theta(x) - \mathrm{KL}(q \,\|\,
    p_\theta(z \mid x))` by coordinate ascent: the E-step sets q to the exact posterior, which
    closes the gap (so the bound then *equals* the log-likelihood), and the M-step maximizes
    over θ with q fixed. Neither step can lower the bound, so ``History.lower_bound`` (the
    log-likelihood per data point after each E-step) never decreases.

    Iteration stops when the bound improves by less than ``tol`` per data point. The model is
    left at the parameters whose E-step was recorded last, so its ``log_evidence(data).mean()``
    equals ``History.final``.

    Args:
        model: A model with ``m_step`` (and ``initialize`` if ``init`` is given).
        data: ``[N, *data_shape]``.
        max_iter: The most E-steps per restart.
        tol: The convergence threshold on the change of the per-point bound; ``None`` runs
            all ``max_iter`` iterations (a fixed budget, as for timing against a library that
            runs a set number: the bound's own stop at ``tol=0`` can come earlier).
        init: ``None`` to start from the model's current parameters, or a method for
            ``model.initialize`` (``"kmeans++"`` or ``"random"`` for mixtures, ``"pca"`` or
            ``"random"`` for factor analysis).
        n_init: Restarts from fresh initializations; the one with the highest bound is kept.
        seed: Seeds the initializations (each restart draws from one generator).
        callback: Called as ``callback(iteration, model, posterior, log_evidence)`` after each
            E-step, before the M-step.
        on_failure: What a numerical failure of the fit does: ``"raise"`` (the default) or
            ``"warn"``. Two are caught. A fall of the bound beyond rounding (10³ ε of its size),
            which neither step can cause and which is never convergence: the run stops, the model
            is put back to its best iteration's parameters, and a ``FloatingPointError`` is raised
            (or a :class:`BoundDecreaseWarning` given). And an optimum set by the model's own floor
            rather than by the data (:meth:`~elbox.models.LatentModel.em_failure`: a noise
            variance of factor analysis at its floor, where the likelihood grows without bound as
            it shrinks): a ``ValueError`` (or a :class:`BoundaryWarning`).

    Returns:
        The :class:`History` of the best restart, with every restart's final bound.

    Warns:
        ConvergenceWarning: If the best restart did not converge within ``max_iter``.
    """
    if not getattr(model, "has_m_step", False):
        raise TypeError(f"{type(model).__name__} has no closed-form M-step; fit it by VI with elbox.fit")
    max_iter = check_positive_int(max_iter, "max_iter")
    n_init = check_positive_int(n_init, "n_init")
    if tol is not None:
        tol = check_number(tol, "tol", only_type=True)
        if not (tol >= 0 and math.isfinite(tol)):
            raise ValueError(f"tol must be non-negative and finite, or None; received {tol}")
    seed = check_seed(seed)
    if on_failure not in ("raise", "warn"):
        raise ValueError(f"on_failure must be 'raise' or 'warn'; received {on_failure!r}")
    if init is None and n_init > 1:
        raise ValueError("n_init > 1 needs init= (restarts from the same parameters would all agree)")
    check_callable(callback, "callback", "a function callback(iteration, model, posterior, log_evidence)",
                   optional=True)  # fmt: skip
    with named("data"):
        x = check_points(model.check_data(data), "data")
    generator = torch.Generator(device=x.device)
    generator.manual_seed(seed if seed is not None else int(torch.randint(2**62, ())))

    best, best_state = None, None
    finals = []
    start = time.perf_counter()
    statistics = model.em_statistics(x)  # what every iteration of every restart reuses
    x = Batch(x, checked=True)  # checked above: the steps take it as it is
    for _ in range(n_init):
        if init is not None:
            with named("init", "method"), named("data"):  # initialize(x, method=...) is em(data, init=...)
                model.initialize(x, method=init, generator=generator)
        history = _run(model, x, max_iter, tol, callback, statistics, on_failure)
        finals.append(history.final)
        if best is None or history.final > best.final:
            best, best_state = history, copy.deepcopy(model.state_dict())
    if n_init > 1:
        model.load_state_dict(best_state)
    with torch.no_grad():
        failure = model.em_failure(x, statistics)
    if failure is not None:
        if on_failure == "raise":
            raise ValueError(failure)
        warnings.warn(failure, BoundaryWarning, stacklevel=2)
    best.restarts = finals
    best.seconds = time.perf_counter() - start
    if tol is not None and not best.converged and not best.decreased:
        warnings.warn(
            f"EM did not converge in max_iter={max_iter} iterations (last change "
            f"{_last_change(best):.3g} > tol={tol:g}); increase max_iter or tol",
            ConvergenceWarning,
            stacklevel=2,
        )
    return best


def _run(model, x, max_iter: int, tol: float, callback, statistics, on_failure: str) -> History:
    """One EM run from the model's current parameters; ``statistics`` (the model's
    :meth:`~elbox.models.LatentModel.em_statistics` of x, held by this run) go to every step.

    Neither step can lower the bound, so a fall beyond rounding is a numerical failure, never
    convergence: the run stops, the model gets back the parameters of its best E-step, and the
    fall is raised (``on_failure="raise"``) or warned of (``"warn"``, with
    :class:`BoundDecreaseWarning`)."""
    history = History(method="em")
    reuse = {} if statistics is None else {"statistics": statistics}
    # a model whose EM reads the data only through its statistics iterates on them alone (a
    # callback, which is handed the posterior of every point, takes the per-point steps)
    summary = statistics is not None and callback is None and type(model).em_bound is not LatentModel.em_bound
    best_state = None
    with torch.no_grad():
        for iteration in range(max_iter):
            # the mean over the points, 0-dim; None where the model cannot trust its statistics now
            log_evidence = model.em_bound(statistics) if summary else None
            on_statistics = log_evidence is not None
            if not on_statistics:
                posterior, log_evidence = model.e_step(x, **reuse)
            bound = float(log_evidence.mean())
            if not math.isfinite(bound):
                raise FloatingPointError(
                    f"the log-likelihood became {bound} at EM iteration {iteration}; check the data's "
                    "scale, or raise the model's regularizer (reg_covar for mixtures)"
                )
            history.lower_bound.append(bound)
            history.n_iter = iteration + 1
            if callback is not None:
                callback(iteration, model, posterior, log_evidence)
            if iteration > 0:
                previous = max(history.lower_bound[:-1])
                change = bound - previous
                if change < -_rounding(previous, bound, log_evidence.dtype):
                    model.load_state_dict(best_state)
                    _fell(model, history, iteration, previous, bound, log_evidence.dtype, on_failure)
                    return history
                if tol is not None and change < tol:
                    history.converged = True
                    break
            if bound >= max(history.lower_bound):
                best_state = copy.deepcopy(model.state_dict())
            if iteration + 1 < max_iter:
                if on_statistics:
                    model.em_update(statistics)
                else:
                    model.m_step(x, posterior, **reuse)
    return history


def _rounding(previous: float, bound: float, dtype: torch.dtype) -> float:
    """How far a bound of this size can move by rounding alone: 10³ ε of its magnitude."""
    return 1e3 * torch.finfo(dtype).eps * max(1.0, abs(previous), abs(bound))


def _fell(model, history: History, iteration: int, previous: float, bound: float, dtype, on_failure: str) -> None:
    best = history.lower_bound.index(max(history.lower_bound)) + 1
    history.lower_bound = history.lower_bound[:best]  # the model holds the best iteration's parameters
    history.n_iter = best
    history.decreased = True
    regularizer = getattr(model, "em_regularizer", None)
    if regularizer is not None:  # a penalized M-step: the likelihood may fall with no numerical fault
        warnings.warn(
            f"EM's bound fell from {previous:.6g} to {bound:.6g} at iteration {iteration + 1} "
            f"({type(model).__name__}): its M-step is regularized ({regularizer}), so it maximizes a penalized "
            f"likelihood, which EM's monotonicity does not cover. The run stopped at iteration {best}, the best "
            "(not converged); a smaller regularizer keeps it closer to the likelihood's own optimum",
            BoundDecreaseWarning,
            stacklevel=4,
        )
        return
    message = (
        f"EM's bound fell from {previous:.6g} to {bound:.6g} at iteration {iteration + 1} ({type(model).__name__}, "
        f"{str(dtype).replace('torch.', '')}): by more than rounding, so the fit has become numerically unstable, "
        "not converged. Typical causes: float32 precision (fit in float64: model.double() and float64 data), or a "
        "variance at its floor (a component or a noise variance collapsing onto the data: raise reg_covar or "
        f"min_noise, or remove duplicated or collinear columns). The model holds iteration {best}'s parameters, "
        "the best"
    )
    if on_failure == "raise":
        raise FloatingPointError(message)
    warnings.warn(message, BoundDecreaseWarning, stacklevel=4)


def _last_change(history: History) -> float:
    lb = history.lower_bound
    return lb[-1] - lb[-2] if len(lb) > 1 else math.inf
