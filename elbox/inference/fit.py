"""The training engine: maximize a bound over the guide's (and model's) parameters by stochastic
gradient, with schedules, validation, early stopping, a run directory and exact resume."""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable

import torch

from elbox._validation import as_data, check_positive_int
from elbox.bounds import elbo, iwae, renyi
from elbox.inference._progress import Progress
from elbox.inference.history import History
from elbox.inference.schedules import LRSchedule, kl_weight, lr_schedule
from elbox.io.run import RunDirectory, load_checkpoint, save_checkpoint

__all__ = ["fit"]

_BOUNDS = ("elbo", "iwae", "renyi")
# Options that must be the same when a run is resumed, for the result to equal an uninterrupted run.
_RESUME_KEYS = (
    "bound", "batch_size", "lr", "num_samples", "seed", "beta", "kl_warmup", "clip_grad_norm", "schedule",
    "adam_eps", "binarization", "optimize_model", "bound_options",
)  # fmt: skip


def _bound_value(bound: str, model, guide, x, index, options: dict, beta: float):
    """The bound per data point, the objective to maximize, and the ELBO's terms.

    For the ELBO the objective is reconstruction − β·KL (the bound itself when β = 1); where q
    is a point mass (a deterministic encoder) the KL is +∞ and the objective is the
    reconstruction alone, while the bound is reported as −∞.
    """
    if bound == "elbo":
        terms = elbo(model, guide, x, index=index, **options)
        parts = {"reconstruction": terms.reconstruction, "kl": terms.kl}
        if getattr(guide, "deterministic", False):  # a point-mass q: train the reconstruction
            return terms.value, terms.reconstruction, parts
        objective = terms.value if beta == 1.0 else terms.reconstruction - beta * terms.kl
        return terms.value, objective, parts
    if bound == "iwae":
        value = iwae(model, guide, x, index=index, **options)
    else:
        value = renyi(model, guide, x, index=index, **options)
    return value, value, {}


def fit(
    model,
    guide,
    data,
    *,
    bound: str = "elbo",
    epochs: int | None = 100,
    batch_size: int | None = None,
    lr: float = 1e-2,
    num_samples: int = 1,
    optimize_model: bool = True,
    seed: int | None = None,
    callback: Callable | None = None,
    beta: float | None = None,
    kl_warmup: int = 0,
    clip_grad_norm: float | None = None,
    schedule: str | LRSchedule | None = None,
    adam_eps: float = 1e-8,
    binarization: str | None = None,
    validation=None,
    patience: int | None = None,
    run_dir=None,
    resume: bool = False,
    checkpoint_every: int = 1,
    config: str | None = None,
    progress: bool = False,
    **bound_options,
) -> History:
    r"""Maximizes a bound over the guide's parameters (and the model's) by stochastic gradient.

    Each epoch visits the data once in shuffled mini-batches; each step maximizes the batch mean
    of the bound with (fused) Adam, its particles drawn as one ``[S, B, ...]`` tensor. Local
    guides receive the batch's indices. The value recorded per step and per epoch is the bound
    itself, not a surrogate (with β ≠ 1 the objective is reconstruction − β·KL, and the true
    ELBO is still what is recorded).

    With ``run_dir`` the run is kept on disk: one record per epoch appended to
    ``metrics.jsonl``, and ``checkpoints/last.safetensors`` (every ``checkpoint_every`` epochs)
    and ``checkpoints/best.safetensors`` (at each new best validation bound) written
    atomically, holding the parameters, the optimizer's state, the RNG state, the history and
    ``config``. ``resume=True`` continues from ``last``: the result equals an uninterrupted
    run's, bit for bit.

    Args:
        model: A :class:`~elbox.models.LatentModel`.
        guide: A guide over the model's latents.
        data: ``[N, *data_shape]``.
        bound: ``"elbo"``, ``"iwae"`` or ``"renyi"`` (give ``alpha=`` for the last).
        epochs: Passes over the data (None: the schedule's length, e.g. 3,280 for ``"iwae"``).
        batch_size: Points per step (default: all of them).
        lr: Adam's learning rate (the schedule multiplies it).
        num_samples: Particles per data point.
        optimize_model: Whether θ is fitted too, or only the guide.
        seed: Seeds the shuffling, binarization and particles (torch's global RNG is left as
            it was).
        callback: Called as ``callback(epoch, history)`` after each epoch.
        beta: The KL weight of the ELBO objective (default the model's ``beta``, else 1).
        kl_warmup: Epochs over which the KL weight rises linearly from 0 to ``beta``
            (Sønderby et al. 2016); 0 for none.
        clip_grad_norm: If given, gradients are clipped to this total norm.
        schedule: The learning-rate schedule: None or ``"constant"``, ``"iwae"`` (Burda et al.
            2016: 3^i passes at lr·10^(−i/7), i = 0..7), ``"cosine"``, ``"exponential"``, or an
            :class:`~elbox.inference.schedules.LRSchedule`.
        adam_eps: Adam's ε (Burda et al. use 1e-4).
        binarization: ``"dynamic"``: each batch is a fresh Bernoulli draw from the intensities
            in ``data`` (and ``validation`` is binarized once, reproducibly).
        validation: Held-out data, ``[M, *data_shape]``: its bound is computed after each epoch
            (needs a guide that takes new points, e.g. an amortized one).
        patience: Early stopping: stop when the validation bound (the training bound without
            validation) has not improved for this many epochs, and restore the best parameters.
        run_dir: A directory for metrics and checkpoints (see above).
        resume: Continue the run in ``run_dir`` from its last checkpoint.
        checkpoint_every: Epochs between checkpoints of ``last``.
        config: Text saved in each checkpoint (the CLI saves its TOML config).
        progress: Show a progress bar with the bound, reconstruction and KL.
        **bound_options: Passed to the bound (``kl=``, ``expectation=``, ``alpha=``).

    Returns:
        A :class:`History`: the bound per epoch (data-weighted mean over the epoch's steps), per
        step, and per epoch the reconstruction, KL, validation bound and learning rate.

    Raises:
        FloatingPointError: If the bound or a parameter becomes non-finite; the message names
            the term, and the last good checkpoint is left as it was.
        FileExistsError: If ``run_dir`` already holds a checkpoint and ``resume`` is False.
    """
    if bound not in _BOUNDS:
        raise ValueError(f"bound must be one of {_BOUNDS}; received {bound!r}")
    schedule = lr_schedule(schedule, epochs)
    if epochs is None:
        if schedule.epochs is None:
            raise ValueError(f"epochs=None needs a schedule of fixed length; the {schedule.name!r} schedule has none")
        epochs = schedule.epochs
    epochs = check_positive_int(epochs, "epochs")
    if binarization not in (None, "dynamic"):
        raise ValueError(f"binarization must be None or 'dynamic'; received {binarization!r}")
    x = _checked_data(model, data, binarization, "data")
    N = x.shape[0]
    batch_size = N if batch_size is None else min(check_positive_int(batch_size, "batch_size"), N)
    if not lr > 0:
        raise ValueError(f"lr must be positive; received {lr}")
    if not adam_eps > 0:
        raise ValueError(f"adam_eps must be positive; received {adam_eps}")
    beta = float(getattr(model, "beta", 1.0) if beta is None else beta)
    if not beta >= 0:
        raise ValueError(f"beta must be non-negative; received {beta}")
    kl_warmup = check_positive_int(kl_warmup, "kl_warmup", minimum=0)
    if clip_grad_norm is not None and not clip_grad_norm > 0:
        raise ValueError(f"clip_grad_norm must be positive; received {clip_grad_norm}")
    if patience is not None:
        patience = check_positive_int(patience, "patience")
    checkpoint_every = check_positive_int(checkpoint_every, "checkpoint_every")
    valid = None if validation is None else _checked_data(model, validation, binarization, "validation")
    if bound != "elbo" or num_samples != 1:
        bound_options["num_samples"] = check_positive_int(num_samples, "num_samples")
    run = None if run_dir is None else RunDirectory(run_dir)
    if resume and run is None:
        raise ValueError("resume=True needs run_dir, the run to continue")
    if run is not None and not resume and run.has_checkpoint():
        raise FileExistsError(
            f"{run.checkpoint()} exists: {run.path} holds a run already. Pass resume=True to continue it, "
            "or choose a new run directory (nothing was overwritten)"
        )
    if resume and not run.has_checkpoint():
        raise FileNotFoundError(f"nothing to resume in {run.path}: {run.checkpoint()} does not exist")

    guide.to(dtype=x.dtype if x.dtype.is_floating_point else model._reference().dtype, device=x.device)
    params = list(guide.parameters())
    if optimize_model:
        params += [p for p in model.parameters() if p.requires_grad]
    params = list({id(p): p for p in params if p.requires_grad}.values())
    if not params:
        raise ValueError("nothing to optimize: neither the guide nor the model has trainable parameters")
    optimizer = _adam(params, lr, adam_eps)
    options = {
        "bound": bound, "batch_size": batch_size, "lr": lr, "num_samples": num_samples, "seed": seed,
        "beta": beta, "kl_warmup": kl_warmup, "clip_grad_norm": clip_grad_norm, "adam_eps": adam_eps,
        "schedule": [schedule.name, schedule.epochs, schedule.stages, schedule.gamma, schedule.final],
        "binarization": binarization, "optimize_model": optimize_model,
        "bound_options": {k: v for k, v in bound_options.items() if isinstance(v, int | float | str | bool)},
    }  # fmt: skip
    modules = {"model": model} if any(m is guide for m in model.modules()) else {"model": model, "guide": guide}

    history = History(method=f"vi:{bound}")
    best = {"value": -math.inf, "epoch": 0, "state": None, "waited": 0}
    devices = [x.device] if x.device.type == "cuda" else []
    start = time.perf_counter()
    with torch.random.fork_rng(devices=devices), Progress(progress, epochs) as bar:
        first = 0
        if resume:
            first = _restore(run, modules, optimizer, history, best, options, devices)
            run.truncate_metrics(first)
            bar.resume(first)
        elif seed is not None:
            torch.manual_seed(seed)
        if valid is not None and binarization == "dynamic":
            generator = torch.Generator(device=valid.device).manual_seed(0 if seed is None else seed)
            valid = torch.bernoulli(valid, generator=generator)
        for epoch in range(first, epochs):
            epoch_start = time.perf_counter()
            rate = lr * schedule.multiplier(epoch)
            for group in optimizer.param_groups:
                group["lr"] = rate
            weight = kl_weight(epoch, beta, kl_warmup)
            order = torch.randperm(N, device=x.device)
            values, means = [], {}
            for begin in range(0, N, batch_size):  # batches of checked data: not checked again
                index = order[begin : begin + batch_size]  # [B]
                batch = x[index]
                if binarization == "dynamic":
                    batch = torch.bernoulli(batch)
                with model.trusting_data():
                    value, objective, terms = _bound_value(bound, model, guide, batch, index, bound_options, weight)
                loss = -objective.mean()
                if not torch.isfinite(loss.detach()):
                    _raise_non_finite(bound, epoch, len(values), terms, run)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if clip_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
                optimizer.step()
                values.append(-loss.detach() if objective is value else value.detach().mean())
                for name, term in terms.items():
                    means.setdefault(name, []).append(term.detach().mean())
            if not all(bool(torch.isfinite(p).all()) for p in params):
                _raise_non_finite(bound, epoch, len(values), {"parameters": torch.tensor(math.nan)}, run)
            step_values = torch.stack(values).double()  # [steps]
            sizes = torch.full_like(step_values, batch_size)
            sizes[-1] = N - batch_size * (len(values) - 1)
            history.steps.extend(step_values.tolist())
            history.lower_bound.append(float((step_values * sizes).sum() / N))
            for name in ("reconstruction", "kl"):
                mean = float((torch.stack(means[name]).double() * sizes).sum() / N) if name in means else math.nan
                getattr(history, name).append(mean)
            history.lr.append(rate)
            if valid is not None:
                history.validation.append(_validate(bound, model, guide, valid, bound_options, batch_size))
            history.n_iter = epoch + 1
            monitored = history.validation[-1] if valid is not None else history.lower_bound[-1]
            improved = monitored > best["value"]
            if improved:
                best.update(value=monitored, epoch=epoch + 1, waited=0)
                history.best_epoch = epoch + 1
                if patience is not None and run is None:
                    best["state"] = {k: copy.deepcopy(m.state_dict()) for k, m in modules.items()}
            else:
                best["waited"] += 1
            stop = patience is not None and best["waited"] >= patience
            history.stopped_early = stop
            seconds = time.perf_counter() - epoch_start
            if run is not None:
                record = {
                    "epoch": epoch + 1, "step": len(history.steps), "lr": rate, "beta": weight,
                    "bound": history.lower_bound[-1], "reconstruction": history.reconstruction[-1],
                    "kl": history.kl[-1], "validation": history.validation[-1] if valid is not None else None,
                    "seconds": seconds,
                }  # fmt: skip
                run.append_metrics(record)
                if improved and (valid is not None or patience is not None):
                    _save(run, "best", modules, optimizer, history, best, options, devices, config, epoch + 1)
                if stop or epoch + 1 == epochs or (epoch + 1) % checkpoint_every == 0:
                    _save(run, "last", modules, optimizer, history, best, options, devices, config, epoch + 1)
            bar.epoch(epoch, history)
            if callback is not None:
                callback(epoch, history)
            if stop:
                break
    if patience is not None and best["epoch"] and best["epoch"] != history.n_iter:
        _restore_best(run, modules, best)
    history.seconds = time.perf_counter() - start
    history.converged = history.stopped_early
    return history


def _checked_data(model, data, binarization: str | None, name: str):
    """The data in the model's dtype, checked once (batches of it are then trusted)."""
    if binarization is None:
        return model.check_data(data)
    x = as_data(data, name, dtype=model._reference().dtype, device=model._reference().device)
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError(
            f"binarization='dynamic' needs intensities in [0, 1]; {name} holds values in "
            f"[{float(x.min()):.3g}, {float(x.max()):.3g}]"
        )
    model.check_data((x[:1] > 0.5).to(x.dtype))  # the shape, as the model sees a binary point
    return x


def _adam(params, lr: float, eps: float) -> torch.optim.Adam:
    """Fused Adam (one kernel over all parameters) where the parameters allow it."""
    try:
        return torch.optim.Adam(params, lr=lr, eps=eps, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(params, lr=lr, eps=eps)


@torch.no_grad()
def _validate(bound: str, model, guide, x, options: dict, batch_size: int) -> float:
    """The bound's mean over held-out data, in chunks."""
    chunk = max(batch_size, 1000)
    total = 0.0
    with model.trusting_data():
        for begin in range(0, x.shape[0], chunk):
            value, _, _ = _bound_value(bound, model, guide, x[begin : begin + chunk], None, options, 1.0)
            total += float(value.sum())
    return total / x.shape[0]


def _save(run, name, modules, optimizer, history, best, options, devices, config, epoch) -> None:
    tensors = {f"{key}.{k}": v for key, m in modules.items() for k, v in m.state_dict().items()}
    state = optimizer.state_dict()
    for index, slots in state["state"].items():
        for k, v in slots.items():
            tensors[f"optimizer.{index}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    tensors["rng.cpu"] = torch.get_rng_state()
    for i, device in enumerate(devices):
        tensors[f"rng.cuda.{i}"] = torch.cuda.get_rng_state(device)
    tensors["history.steps"] = torch.tensor(history.steps, dtype=torch.float64)
    record = history.to_dict()
    record.pop("steps")
    metadata = {
        "format": "elbox-checkpoint-1",
        "epoch": epoch,
        "options": options,
        "optimizer_groups": state["param_groups"],
        "history": record,
        "best": {k: v for k, v in best.items() if k != "state"},
        "config": config,
    }
    save_checkpoint(run.checkpoint(name), tensors, metadata)


def _restore(run, modules, optimizer, history, best, options, devices) -> int:
    """Loads ``last`` into the modules, the optimizer, the RNG and the history; returns its epoch."""
    tensors, meta = load_checkpoint(run.checkpoint())
    saved = meta.get("options", {})
    for key in _RESUME_KEYS:
        if key in saved and _jsonable(saved[key]) != _jsonable(options[key]):
            raise ValueError(
                f"cannot resume {run.path} exactly: it was fitted with {key}={saved[key]!r}, and this call "
                f"passes {key}={options[key]!r}"
            )
    _load_modules(modules, tensors)
    slots: dict = {}
    for k, v in tensors.items():
        if k.startswith("optimizer."):
            _, index, name = k.split(".", 2)
            slots.setdefault(int(index), {})[name] = v
    optimizer.load_state_dict({"state": slots, "param_groups": meta["optimizer_groups"]})
    torch.set_rng_state(tensors["rng.cpu"])
    for i, device in enumerate(devices):
        torch.cuda.set_rng_state(tensors[f"rng.cuda.{i}"], device)
    for k, v in meta["history"].items():
        setattr(history, k, v)
    history.steps = tensors["history.steps"].tolist()
    best.update(meta["best"])
    return int(meta["epoch"])


def _restore_best(run, modules, best) -> None:
    """Puts the best epoch's parameters back (early stopping)."""
    if run is not None:
        _load_modules(modules, load_checkpoint(run.checkpoint("best"))[0])
    elif best["state"] is not None:
        for key, module in modules.items():
            module.load_state_dict(best["state"][key])


def _load_modules(modules: dict, tensors: dict) -> None:
    """Loads each module's state from the checkpoint tensors under its prefix ("model.", "guide.")."""
    for key, module in modules.items():
        prefix = key + "."
        module.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})


def _jsonable(value):
    return json.loads(json.dumps(value))


def _raise_non_finite(bound: str, epoch: int, step: int, terms: dict, run) -> None:
    bad = [name for name, t in terms.items() if not torch.isfinite(t).all()] or [bound]
    kept = ""
    if run is not None and run.has_checkpoint():
        kept = f"; the last good checkpoint, {run.checkpoint()}, is intact"
    raise FloatingPointError(
        f"the {bound} became non-finite in epoch {epoch}, step {step} (non-finite term: {', '.join(bad)}); "
        f"lower lr, clip gradients (clip_grad_norm), or check the data and the model's parameters{kept}"
    )
