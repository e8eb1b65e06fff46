"""The training engine: maximize an objective by stochastic gradient, one readable loop that
composes schedules, checkpoints, early stopping, metrics and progress."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import math
import time
import warnings
from collections.abc import Callable, Sequence
from signal import SIGTERM

import torch

from elbox._validation import as_data, check_bool, check_path, check_points, describe
from elbox.data.batches import BatchIterator, binarize
from elbox.distributed import (
    agree,
    all_sum,
    all_sum_started,
    broadcast,
    from_rank0,
    rank,
    rng_devices,
    seed_for,
    seeded,
    shard,
    world_size,
)
from elbox.inference._progress import Progress
from elbox.inference.callbacks import (
    Callback,
    Checkpointer,
    EarlyStopping,
    FitState,
    FunctionCallback,
    Interrupted,
    MetricsLog,
    SignalGuard,
)
from elbox.inference.history import DivergenceWarning, History
from elbox.inference.optimizers import OPTIMIZERS, make_optimizer, optimizer_options
from elbox.inference.options import FitOptions
from elbox.inference.schedules import Schedule, lr_schedule
from elbox.inference.schedules import kl_warmup as warmup_schedule
from elbox.io.run import RunDirectory, RunLock, load_checkpoint, remove_stale_temporaries
from elbox.objectives import Objective, make_objective
from elbox.precision import matmul_precision

__all__ = ["CompileWarning", "fit"]

# Options that must be the same when a run is resumed, for the result to equal an uninterrupted run:
# the objective, the world size, and the options FitOptions marks (elbox/inference/options.py).
_RESUME_KEYS = ("bound", "objective_options", *FitOptions.resume_names(), "world_size")


def fit(
    objective,
    *args,
    bound: str | None = None,
    callbacks: Sequence[Callback | Callable] | Callback | Callable = (),
    schedules: Sequence[Schedule] = (),
    validation=None,
    run_dir=None,
    resume: bool = False,
    config: str | None = None,
    options: FitOptions | None = None,
    **kwargs,
) -> History:
    r"""Maximizes an objective over the guide's parameters (and the model's) by stochastic gradient.

    Called as ``fit(objective, data)`` with an :class:`~elbox.objectives.Objective`, or as
    ``fit(model, guide, data, bound="elbo", **options)``, which builds the objective registered
    under ``bound`` (``"elbo"``, ``"iwae"``, ``"renyi"``, ``"max_likelihood"`` with
    ``guide=None``, or one registered by user code) from ``options`` (``num_samples=``,
    ``beta=``, ``kl=``, ``expectation=``, ``alpha=``, …).

    Each epoch visits the data once in shuffled mini-batches; each step maximizes the batch mean
    of the objective's surrogate with (fused) Adam. What is recorded, per step and per epoch, is
    the bound itself, never the surrogate. Schedules set the learning rate at the start of each
    epoch, and any attribute of the objective (β, a temperature) at the start of each epoch or
    every N steps (:func:`~elbox.inference.schedules.temperature_annealing`).

    With ``run_dir`` the run is kept on disk under a lock (one writer): a checkpoint before the
    first step (so that every interrupted run can be resumed), one record per epoch appended to
    ``metrics.jsonl``, ``checkpoints/last.safetensors`` every ``checkpoint_every`` epochs and
    ``best.safetensors`` at each new best, written atomically with the objective's state, the
    optimizer's, the RNG's, the history and ``config``. SIGTERM or SIGINT finishes the current
    step, writes ``last`` (mid-epoch position included) and raises
    :class:`~elbox.inference.Interrupted`. ``resume=True`` continues from ``last``: the result
    equals an uninterrupted run's, bit for bit.

    The epoch's order of the points (and dynamic binarization) comes from a generator of its
    own, seeded by (seed, epoch); the particles from torch's global RNG, seeded by ``seed``.

    Under ``torchrun`` (a process group of W > 1 processes, :mod:`elbox.distributed`) the same
    call trains data-parallel: every rank draws the same global order, takes its share of each
    global batch of ``batch_size`` points (which W must divide), and DDP averages the gradients
    of the global batch mean; the bound and its parts are summed across ranks at every step, so
    every rank records the same history and takes the same decisions; only rank 0 writes to
    ``run_dir``, and its checkpoints hold every rank's RNG state. A deterministic objective's
    parameters equal one process's to rounding; a stochastic one's particles differ per rank.

    Args:
        objective: An :class:`~elbox.objectives.Objective`, or a model (then ``guide`` and
            ``data`` follow).
        *args: ``data``, or ``guide, data``.
        bound: The registered objective's name when a model is given (default ``"elbo"``).
        callbacks: :class:`~elbox.inference.callbacks.Callback` objects or ``f(epoch, history)``
            functions (or one of them), called after each epoch.
        schedules: :class:`~elbox.inference.schedules.Schedule` objects driving attributes of
            the objective.
        validation: Held-out data: its bound is computed after each epoch (needs a guide that
            takes new points, e.g. an amortized one).
        run_dir: A directory for metrics and checkpoints (see above).
        resume: Continue the run in ``run_dir`` from its last checkpoint.
        config: Text saved in each checkpoint: the config of record (the CLI's TOML).
        options: A :class:`~elbox.inference.options.FitOptions`; options given by keyword
            override its fields.
        **kwargs: The training options, the fields of :class:`~elbox.inference.options.FitOptions`
            (``epochs=100``, ``batch_size``, ``lr=1e-2``, ``optimize_model``, ``seed``, ``beta``,
            ``kl_warmup``, ``clip_grad_norm``, ``schedule``, ``adam_eps``, ``optimizer="adam"``,
            ``binarization``, ``patience``, ``checkpoint_every``, ``progress``, ``tensorboard``,
            ``precision``, ``compile``: each field's help says what it does); any other keyword is
            an option of the objective built by name (``num_samples=``, ``kl=``, ``alpha=``, …).
            ``compile=True`` needs a C++ compiler on the CPU (without one, or if compilation fails,
            a :class:`CompileWarning` says so and training runs eagerly); measured on these CPUs it
            is slower than eager for the VAEs (BENCHMARKS.md). ``precision="bfloat16"`` rounds the
            encoders' and decoders' products only (:mod:`elbox.precision`); log-densities, their
            reductions and the bound stay in the data's dtype.

    Returns:
        A :class:`History`: the bound per epoch (data-weighted mean over the epoch's steps) and
        per step, and per epoch the reconstruction, KL, validation bound and learning rate;
        ``diverged`` when the final bound fell far below the first epoch's.

    Raises:
        FloatingPointError: If the bound or a parameter becomes non-finite; the message names
            the term, and the last good checkpoint is left as it was.
        FileExistsError: If ``run_dir`` already holds a checkpoint and ``resume`` is False.
        RunLockedError: If another process is writing ``run_dir``.
        Interrupted: On SIGTERM or SIGINT, after the checkpoint is written.
    """
    training = {k: kwargs.pop(k) for k in FitOptions.names() if k in kwargs}
    opts = (options if options is not None else FitOptions()).replace(**training) if training or options is None \
        else options  # fmt: skip
    if not isinstance(opts, FitOptions):
        raise TypeError(f"options must be a FitOptions; received {type(opts).__name__}")
    objective, data = _objective(objective, args, bound, opts.beta, kwargs)
    model = objective.model
    schedule = lr_schedule(opts.schedule, opts.epochs)
    epochs = opts.epochs
    if epochs is None:
        if schedule.epochs is None:
            raise ValueError(f"epochs=None needs a schedule of fixed length; the {schedule.name!r} schedule has none")
        epochs = schedule.epochs
    if schedule.name == "cosine" and schedule.epochs > epochs:
        raise ValueError(
            f"schedule: the cosine schedule spans {schedule.epochs} epochs, more than the run's epochs={epochs}, so "
            f"its learning rate would never come down to final={schedule.final:g}; pass schedule='cosine' (it then "
            f"spans the run) or lr_schedule('cosine', {epochs})"
        )
    binarization, lr, seed, patience = opts.binarization, opts.lr, opts.seed, opts.patience
    x = check_points(_checked_data(model, data, binarization, "data"), "data")
    N = len(x)
    batch_size = N if opts.batch_size is None else min(opts.batch_size, N)
    warmup, clip_grad_norm = opts.kl_warmup, opts.clip_grad_norm
    if warmup > epochs:
        raise ValueError(
            f"kl_warmup must be at most epochs ({epochs}): β rises over kl_warmup epochs and would never reach its "
            f"value in a run this short; received kl_warmup={warmup}"
        )
    check_bool(resume, "resume")
    if config is not None and not isinstance(config, str):
        raise TypeError(f"config must be the config's text (a string) or None; received {describe(config)}")
    if run_dir is not None:
        check_path(run_dir, "run_dir")
    if not (isinstance(callbacks, Callback) or callable(callbacks)):
        if isinstance(callbacks, str | bytes) or not hasattr(callbacks, "__iter__"):
            raise TypeError(f"callbacks must be a list of Callback objects or functions f(epoch, history); received "
                            f"{describe(callbacks)}")  # fmt: skip
        callbacks = list(callbacks)
        for c in callbacks:
            if not (isinstance(c, Callback) or callable(c)):
                raise TypeError(f"callbacks must be Callback objects or functions f(epoch, history); received "
                                f"{describe(c)}")  # fmt: skip
    guide = objective.guide
    if guide is not None and getattr(guide, "is_local", False):
        if guide.num_points != N:
            raise ValueError(
                f"the guide ({type(guide).__name__}) is local, one q per training point, with num_points="
                f"{guide.num_points}, but data hold {N} points: build it with num_points={N}"
            )
        if validation is not None:
            raise ValueError(
                f"validation needs a guide that takes new points (an amortized one); {type(guide).__name__} is local "
                "(one q per training point) and has no q for held-out points"
            )
    valid = None if validation is None else check_points(_checked_data(model, validation, binarization, "validation"),
                                                         "validation")  # fmt: skip
    if isinstance(schedules, Schedule | str) or not hasattr(schedules, "__iter__"):
        raise TypeError(f"schedules must be a list of Schedule objects (schedules=[...]); received "
                        f"{describe(schedules)}")  # fmt: skip
    schedules = list(schedules)
    if not all(isinstance(s, Schedule) for s in schedules):
        raise TypeError(f"schedules must be Schedule objects; received {[type(s).__name__ for s in schedules]}")
    stepwise = [s for s in schedules if s.every is not None]
    if warmup:
        if not hasattr(objective, "beta"):
            raise ValueError(f"kl_warmup schedules β, which the {objective.name!r} objective does not have")
        schedules.append(warmup_schedule(float(objective.beta), warmup))
    run = None if run_dir is None else RunDirectory(run_dir)
    if resume and run is None:
        raise ValueError("resume=True needs run_dir, the run to continue")

    W, R = world_size(), rank()
    if W > 1:
        if batch_size % W:
            raise ValueError(
                f"batch_size is the global batch, shared by the {W} processes, and must be divisible by their number; "
                f"received {batch_size}" + (" (all the points: set [train] batch_size)" if batch_size == N else "")
            )
        if validation is not None and len(valid) < W:
            raise ValueError(f"validation needs at least one point per process ({W}); received {len(valid)}")
    reference = model._reference() if hasattr(model, "_reference") else next(model.parameters())
    objective.to(dtype=x.dtype if torch.is_tensor(x) and x.dtype.is_floating_point else reference.dtype,
                 device=reference.device)  # fmt: skip
    params = [p for p in objective.parameters() if p.requires_grad]
    if not opts.optimize_model:
        own = {id(p) for p in model.parameters()}
        guide_params = {id(p) for p in objective.guide.parameters()} if objective.guide is not None else set()
        params = [p for p in params if id(p) not in own or id(p) in guide_params]
    if not params:
        raise ValueError("nothing to optimize: neither the guide nor the model has trainable parameters")
    spec = {"name": opts.optimizer} if isinstance(opts.optimizer, str) else opts.optimizer
    if isinstance(spec, dict) and spec.get("name") in OPTIMIZERS and "eps" in optimizer_options(spec["name"]) \
            and "eps" not in spec:
        spec = {**spec, "eps": opts.adam_eps}
    optimizer, optimizer_record = make_optimizer(spec, params, lr)
    # the record a resumed run must match: the options as resolved (the batch, β, the schedule, the optimizer)
    resolved = {
        "bound": objective.name or type(objective).__name__, "objective_options": objective.options(),
        "batch_size": batch_size, "beta": float(objective.beta) if hasattr(objective, "beta") else None,
        "schedule": [schedule.name, schedule.epochs, schedule.stages, schedule.gamma, schedule.final],
        "optimizer": optimizer_record, "world_size": W,
    }  # fmt: skip
    options = {key: resolved[key] if key in resolved else getattr(opts, key) for key in _RESUME_KEYS}
    if W > 1:  # one command, one config, one data set on every rank, or a clear error on all of them
        agree({**options, "epochs": epochs, "run_dir": run_dir is not None, "resume": resume,
               "data": _fingerprint(x), "validation": None if valid is None else _fingerprint(valid)},
              "fit's options and data")  # fmt: skip
    state = FitState(objective, optimizer, History(method=f"vi:{options['bound']}"), options)
    # the pieces the loop calls after each epoch, in order: stopping decides, then files are written
    checkpointer = None
    if run is not None:
        early = valid is not None or patience is not None
        checkpointer = Checkpointer(run, opts.checkpoint_every, config, epochs, early)
    elif opts.tensorboard:
        raise ValueError("tensorboard=True needs run_dir, where the event files are written")
    # under DDP the best parameters are kept in memory (the same on every rank), not read back from rank 0's disk
    callbacks = [callbacks] if isinstance(callbacks, Callback) or callable(callbacks) else list(callbacks)
    user = [c if isinstance(c, Callback) else FunctionCallback(c) for c in callbacks]
    pieces: list[Callback] = [c for c in user if c.measures]  # measurements join the epoch's record first
    pieces += [EarlyStopping(patience, checkpointer if W == 1 else None)] if patience is not None else []
    pieces += [MetricsLog(run, opts.tensorboard)] if run is not None and R == 0 else []
    pieces += [checkpointer] if run is not None else []
    pieces += [c for c in user if not c.measures]

    # batches of the data checked above: the order and binarization from a generator seeded per epoch
    # (every rank draws the same global batch and takes its share), the particles from torch's RNG
    device = x.device if torch.is_tensor(x) else x.values.device
    data_rng = torch.Generator(device=device)
    batches = BatchIterator(x, batch_size, binarization=binarization, generator=data_rng, checked=True,
                            shard=(R, W) if W > 1 else None)  # fmt: skip
    start = time.perf_counter()
    lock = RunLock(run.path) if run is not None and R == 0 else contextlib.nullcontext()
    with lock, torch.random.fork_rng(devices=rng_devices()), SignalGuard(run is not None) as signals, \
            Progress(opts.progress and R == 0, epochs) as bar, matmul_precision(opts.precision):  # fmt: skip
        partial = _start(run, resume, checkpointer, state, epochs, seed)
        # DDP wraps the objective (after the parameters are restored: it broadcasts rank 0's)
        # buffers (β, a temperature) are set alike on every rank by the schedules: synced once, not every forward
        forward = objective if W == 1 else torch.nn.parallel.DistributedDataParallel(objective,
                                                                                      forward_sync_buffers=False)
        if opts.compile:
            forward = _compiled(forward, device)
        bar.resume(state.epoch)
        if valid is not None and binarization == "dynamic":  # one reproducible draw, comparable across epochs
            generator = torch.Generator(device=valid.device).manual_seed(0 if seed is None else seed)
            valid = binarize(valid, method="fixed", generator=generator)
        for epoch in range(state.epoch, epochs):
            epoch_start = time.perf_counter()
            # the epoch's settings: learning rate, then every scheduled attribute of the objective
            rate = lr * schedule.multiplier(epoch)
            for group in optimizer.param_groups:
                group["lr"] = rate
            scheduled = {s.attribute: s.apply(objective, epoch) for s in schedules if s.every is None}
            # a fresh order (or, resuming mid-epoch, the interrupted epoch's order and steps so far)
            if partial is None:
                data_rng.manual_seed(seed_for(state.data_seed, epoch))
                partial = {"order": batches.order(), "values": [], "parts": {}}
            elif "data_rng" in partial:
                data_rng.set_state(partial["data_rng"])
            values, parts = partial["values"], partial["parts"]
            for batch in batches.batches(partial["order"], start=len(values)):
                # one step: the step's scheduled settings, the objective on the batch, the NaN guard, the gradient step
                for s in stepwise:
                    scheduled[s.attribute] = s.apply(objective, len(state.history.steps) + len(values))
                out = forward(batch)
                size = min(batch_size, N - len(values) * batch_size)
                loss, reduced = _step_loss(out, size, signals.received)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                value, terms, stop = reduced()  # under DDP, summed over the ranks during the backward pass
                if stop == "non-finite":  # before the step: the parameters stay as they were
                    _raise_non_finite(state, epoch, len(values), terms, run)
                if clip_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
                optimizer.step()
                values.append(value)
                for name, term in terms.items():
                    parts.setdefault(name, []).append(term)
                if stop is not None:  # SIGTERM / SIGINT (on any rank): checkpoint mid-epoch, then stop
                    partial["data_rng"] = data_rng.get_state()
                    state.epoch, state.partial = epoch, partial
                    checkpointer.save(state)
                    raise Interrupted(signals.received or stop, run.checkpoint())
            partial = state.partial = None
            if not all(bool(torch.isfinite(p).all()) for p in params):
                _raise_non_finite(state, epoch, len(values), {"parameters": torch.tensor(math.nan)}, run)
            # the epoch's record: the bound and its parts (data-weighted), validation, best so far
            _record(state, epoch, values, parts, N, batch_size, rate, scheduled, valid, objective)
            state.record["seconds"] = time.perf_counter() - epoch_start
            for piece in pieces:
                piece.on_epoch_end(state)
            bar.epoch(epoch, state.history)
            if state.stop:
                break
        for piece in pieces:
            piece.on_fit_end(state)
    history = state.history
    history.seconds = time.perf_counter() - start
    if history.diverged:
        warnings.warn(
            f"the run diverged: the bound fell from {history.steps[0]:.4g} at the first step to "
            f"{history.lower_bound[-1]:.4g}; lower lr, or clip gradients (clip_grad_norm)",
            DivergenceWarning,
            stacklevel=2,
        )
    return history


def _signature() -> inspect.Signature:
    """fit's signature as help() and editors show it: the training options (FitOptions' fields,
    with their defaults) as keyword parameters, then the objective's own options."""
    own = [p for p in inspect.signature(fit).parameters.values() if p.kind is not p.VAR_KEYWORD]
    training = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type)
                for f in dataclasses.fields(FitOptions)]  # fmt: skip
    rest = inspect.Parameter("objective_options", inspect.Parameter.VAR_KEYWORD)
    return inspect.signature(fit).replace(parameters=[*own, *training, rest])


fit.__signature__ = _signature()


def _objective(objective, args: tuple, bound: str | None, beta, options: dict) -> tuple[Objective, object]:
    """The objective and the data from ``fit``'s positional arguments."""
    if isinstance(objective, Objective):
        if len(args) != 1:
            raise TypeError(f"fit(objective, data) takes the data alone after an objective; received {len(args)} "
                            "positional arguments")  # fmt: skip
        given = dict(options, **({"bound": bound} if bound else {}), **({"beta": beta} if beta is not None else {}))
        if given:
            raise TypeError(
                f"fit(objective, data): {', '.join(sorted(given))} belong to the objective; set them when building it"
            )
        return objective, args[0]
    if len(args) != 2:
        raise TypeError(f"fit(model, guide, data) needs a guide (None for 'max_likelihood') and the data; received "
                        f"{len(args)} positional arguments after the model")  # fmt: skip
    guide, data = args
    name = bound or "elbo"
    if beta is not None:
        options["beta"] = beta
    return make_objective(name, objective, guide, argument="bound", **options), data


def _start(run, resume: bool, checkpointer, state: FitState, epochs: int, seed) -> dict | None:
    """Opens the run: a resumed run's state, or a fresh one's seeds and epoch-0 checkpoint. Rank 0
    reads and writes the directory; what it finds (or refuses) is every rank's."""
    if run is None or not resume:
        if run is not None:
            from_rank0(_open_fresh, run)
        _seed(state, seed)
        if run is not None:
            checkpointer.save(state)  # epoch 0: every interrupted run can be resumed
        return None
    loaded = from_rank0(_open_resumed, run)
    partial = checkpointer.restore(state, _RESUME_KEYS, loaded)
    if state.epoch > epochs or (state.epoch == epochs and partial is not None):
        raise ValueError(
            f"cannot resume {run.path} with epochs={epochs}: it has done {state.epoch} epochs already "
            f"(resume with epochs >= {state.epoch}; nothing was changed)"
        )
    if rank() == 0:
        run.truncate_metrics(state.epoch)
    return partial


def _open_fresh(run) -> None:
    remove_stale_temporaries(run.path)
    if run.has_checkpoint():
        raise FileExistsError(
            f"{run.checkpoint()} exists: {run.path} holds a run already. Pass resume=True to continue it, "
            "or choose a new run directory (nothing was overwritten)"
        )
    run.truncate_metrics(0)


def _open_resumed(run) -> tuple[dict, dict]:
    remove_stale_temporaries(run.path)
    if not run.has_checkpoint():
        raise FileNotFoundError(f"nothing to resume in {run.path}: {run.checkpoint()} does not exist")
    return load_checkpoint(run.checkpoint())


def _seed(state: FitState, seed: int | None) -> None:
    """Seeds the particles (rank 0 with ``seed`` itself, as one process; rank r with a seed of
    (seed, r)) and fixes the data's seed, from which each epoch's order is drawn."""
    R = rank()
    if seed is None:  # rank 0's draw, the same on every rank
        base = broadcast(int(torch.randint(0, 2**62, (1,))))
        if R > 0:
            torch.manual_seed(seed_for(base, R))
        state.data_seed = base
        return
    torch.manual_seed(seed if R == 0 else seed_for(seed, R))
    state.data_seed = seed


def _step_loss(out, size: int, signal):
    """One step's loss (minus the batch mean of the surrogate) and the function that gives the
    step's mean bound and parts with one decision: ``"non-finite"`` where the loss is not finite,
    else the signal received (None if none). One body for one process and for DDP: under DDP
    each rank's loss is its share of the global batch mean (``size`` points in all), and the
    bound, parts and decisions are summed over the ranks while the backward pass runs, so every
    rank records the same numbers and stops at the same step."""
    W = world_size()
    if W == 1:
        loss = -out.surrogate.mean()
        value, terms = out.value.detach().mean(), {k: t.detach().mean() for k, t in out.parts.items()}

        def local():
            if not torch.isfinite(loss.detach()):
                return value, terms, "non-finite"
            return value, terms, signal

        return loss, local
    share = shard(size, rank(), W)
    weight = W / size if share.stop > share.start else 0.0
    loss = -out.surrogate.sum() * weight
    return loss, _reduction(out, loss, weight, size, signal)


def _reduction(out, loss, weight: float, size: int, signal):
    """Starts summing the step's bound, parts and flags over the ranks; returns the function that
    waits for the sums and gives the global batch's mean bound and parts, with one decision for
    every rank: ``"non-finite"`` where any rank's loss is, else the signal any rank received
    (None if none)."""
    mine = weight > 0
    local = [out.value.detach().sum() if mine else out.value.new_zeros(())]
    local += [t.detach().sum() if mine else t.new_zeros(()) for t in out.parts.values()]
    bad = (~torch.isfinite(loss.detach())).to(torch.float64) * float(mine)
    received = torch.tensor(float(signal is not None), dtype=torch.float64, device=bad.device)
    totals, wait = all_sum_started(torch.stack([*(v.double() for v in local), bad, received]))

    def result():
        wait()
        value = totals[0] / size
        terms = {name: totals[1 + i] / size for i, name in enumerate(out.parts)}
        if totals[-2] > 0:
            return value, {**terms, **({} if torch.isfinite(value) else {"value": value})}, "non-finite"
        return value, terms, (signal or SIGTERM) if totals[-1] > 0 else None

    return result


def _fingerprint(x) -> tuple:
    """The data's shape, dtype and two weighted sums: equal on ranks that loaded the same data."""
    values = x if torch.is_tensor(x) else x.values
    flat = values.reshape(-1).double()
    ramp = torch.linspace(1.0, 2.0, flat.numel(), dtype=torch.float64, device=flat.device)
    return tuple(values.shape), str(values.dtype), float(flat.sum()), float((flat * ramp).sum())


def _record(state: FitState, epoch, values, parts, N, batch_size, rate, scheduled, valid, objective) -> None:
    """Appends the epoch to the history, updates the best, and builds the metrics record."""
    history = state.history
    step_values = torch.stack(values).double()  # [steps]
    sizes = torch.full_like(step_values, batch_size)
    sizes[-1] = N - batch_size * (len(values) - 1)
    history.steps.extend(step_values.tolist())
    history.lower_bound.append(float((step_values * sizes).sum() / N))
    for name in ("reconstruction", "kl"):
        mean = float((torch.stack(parts[name]).double() * sizes).sum() / N) if name in parts else math.nan
        getattr(history, name).append(mean)
    history.lr.append(rate)
    if valid is not None:
        history.validation.append(_validate(objective, valid, batch_size, state.data_seed))
    history.n_iter = state.epoch = epoch + 1
    monitored = history.validation[-1] if valid is not None else history.lower_bound[-1]
    if monitored > state.best["value"]:
        state.best.update(value=monitored, epoch=epoch + 1, waited=0)
        history.best_epoch = epoch + 1
    else:
        state.best["waited"] += 1
    # diverged: the bound fell below the first step's (the initial parameters') by more than its magnitude
    first, last = history.steps[0], history.lower_bound[-1]
    history.diverged = bool(last < first - (abs(first) + 1.0))
    state.record = {
        "epoch": epoch + 1, "step": len(history.steps), "lr": rate,
        "beta": float(objective.beta) if hasattr(objective, "beta") else None, **scheduled,
        "bound": history.lower_bound[-1], "reconstruction": history.reconstruction[-1], "kl": history.kl[-1],
        "validation": history.validation[-1] if valid is not None else None, "diverged": history.diverged,
    }  # fmt: skip
    # the objective's other parts (a world model's observation and reward terms, and the surrogate
    # maximized where one is on, beside the true bound), each the epoch's mean per point
    for name in parts:
        if name not in ("reconstruction", "kl"):
            state.record[name] = float((torch.stack(parts[name]).double() * sizes).sum() / N)


class CompileWarning(UserWarning):
    """``fit(compile=True)`` could not compile the objective and trains it eagerly instead."""


def _cpp_compiler() -> str:
    """The C++ compiler torch.compile would use on the CPU; raises where there is none."""
    from torch._inductor.cpp_builder import get_cpp_compiler

    return get_cpp_compiler()


def _compiled(module, device: torch.device):
    """``torch.compile(module)``, or ``module`` itself with a :class:`CompileWarning` where the
    CPU has no C++ compiler or the first compilation fails."""
    if device.type == "cpu":
        try:
            _cpp_compiler()
        except Exception as error:  # noqa: BLE001 - torch raises several kinds for a missing or broken compiler
            warnings.warn(f"compile=True needs a C++ compiler for torch.compile on the CPU (g++ or clang++, or one "
                          f"named by $CXX), and found none ({type(error).__name__}: {error}); training runs eagerly",
                          CompileWarning, stacklevel=3)  # fmt: skip
            return module
    compiled = torch.compile(module)

    def forward(batch):
        nonlocal compiled
        if compiled is None:  # compilation failed once: eager from then on
            return module(batch)
        try:
            return compiled(batch)
        except torch._dynamo.exc.BackendCompilerFailed as error:
            warnings.warn(f"torch.compile failed on the objective ({str(error).splitlines()[0]}); training runs "
                          "eagerly", CompileWarning, stacklevel=2)  # fmt: skip
            compiled = None
            return module(batch)

    return forward


def _checked_data(model, data, binarization: str | None, name: str):
    """The data in the model's dtype, checked once here, at the entry point; a message about the
    data names the argument (``data`` or ``validation``)."""
    # the data named as the caller names them (a model of a user's own without check_data's `name`: as x)
    named = {"name": name} if "name" in inspect.signature(model.check_data).parameters else {}
    if binarization is None:
        return model.check_data(data, **named)
    x = as_data(data, name, dtype=model._reference().dtype, device=model._reference().device)
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError(
            f"binarization='dynamic' needs intensities in [0, 1]; {name} holds values in "
            f"[{float(x.min()):.3g}, {float(x.max()):.3g}]"
        )
    model.check_data((x[:1] > 0.5).to(x.dtype), **named)  # the shape, as the model sees a binary point
    return x


@torch.no_grad()
def _validate(objective, x, batch_size: int, data_seed: int) -> float:
    """The bound's mean over held-out data, in chunks (each rank its share, summed). The particles
    are the same every epoch (common random numbers: one seed), so that the epoch-to-epoch changes
    early stopping compares are the parameters', not the draws'; the training stream is untouched."""
    chunk = max(batch_size, 1000)
    share = x[shard(len(x))] if world_size() > 1 else x
    total = torch.zeros((), dtype=torch.float64)
    with seeded(seed_for(data_seed, 2**32, rank())):
        for begin in range(0, len(share), chunk):
            total += objective(share[begin : begin + chunk]).value.double().sum().cpu()
    return float(all_sum(total)) / len(x)


def _raise_non_finite(state: FitState, epoch: int, step: int, terms: dict, run) -> None:
    name = state.options["bound"]
    bad = [k for k, t in terms.items() if not torch.isfinite(t).all()] or [name]
    kept = ""
    if run is not None and run.has_checkpoint():
        kept = f"; the last good checkpoint, {run.checkpoint()}, is intact"
    raise FloatingPointError(
        f"the {name} became non-finite in epoch {epoch}, step {step} (non-finite term: {', '.join(bad)}); "
        f"lower lr, clip gradients (clip_grad_norm), or check the data and the model's parameters{kept}"
    )
