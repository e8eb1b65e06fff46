"""The pieces the training loop composes: checkpoints, early stopping, the metrics log, the
progress bar, and user callbacks. Each sees the loop's :class:`FitState` after every epoch."""

from __future__ import annotations

import copy
import json
import math
import signal
import threading
from dataclasses import dataclass, field

import torch

from elbox._validation import check_bool, check_positive_int, describe
from elbox.distributed import from_rank0, gather, rank, rng_devices
from elbox.inference.history import History
from elbox.io.run import RunDirectory, load_checkpoint, save_checkpoint

__all__ = ["Callback", "Checkpointer", "EarlyStopping", "FitState", "Interrupted", "MetricsLog", "SignalGuard"]

CHECKPOINT_FORMAT = "elbox-checkpoint-1"  # version 1 plus optional keys (objective state, mid-epoch position)


@dataclass
class FitState:
    """What the loop holds, shared with its callbacks.

    Attributes:
        objective: The :class:`~elbox.objectives.Objective` being maximized.
        optimizer: Its optimizer.
        history: The :class:`History` so far.
        epoch: Epochs completed.
        record: The last epoch's metrics (what metrics.jsonl receives).
        options: The settings a resumed run must share (recorded in checkpoints).
        best: The early-stopping record: ``value``, ``epoch``, ``waited``.
        stop: Set by a callback to end the run after this epoch.
        partial: Mid-epoch position, set while a checkpoint of an interrupted epoch is written.
        data_seed: The seed each epoch's order of the points is drawn from, with the epoch.
    """

    objective: torch.nn.Module
    optimizer: torch.optim.Optimizer
    history: History
    options: dict
    epoch: int = 0
    record: dict = field(default_factory=dict)
    best: dict = field(default_factory=lambda: {"value": -math.inf, "epoch": 0, "waited": 0})
    stop: bool = False
    partial: dict | None = None
    data_seed: int = 0


def _check_run(run) -> None:
    if not isinstance(run, RunDirectory):
        raise TypeError(f"run must be an elbox.io.RunDirectory (RunDirectory(path)); received {describe(run)}")


class Callback:
    """Called by :func:`elbox.fit` after each epoch (``on_epoch_end``) and when it ends.

    A callback with ``measures = True`` adds to the epoch's record (``state.record``): it is
    called before the record is written to the metrics and before the checkpoint."""

    #: Whether the callback adds measurements to ``state.record`` (then it runs first).
    measures: bool = False

    def on_epoch_end(self, state: FitState) -> None:
        pass

    def on_fit_end(self, state: FitState) -> None:
        pass


class FunctionCallback(Callback):
    """``callback(epoch, history)`` after each epoch (epochs from 0)."""

    def __init__(self, function):
        self.function = function

    def on_epoch_end(self, state: FitState) -> None:
        self.function(state.epoch - 1, state.history)


class MetricsLog(Callback):
    """One JSON line per epoch in ``metrics.jsonl``, and optionally TensorBoard event files
    (torch's own ``SummaryWriter``, which needs the ``tensorboard`` package)."""

    def __init__(self, run: RunDirectory, tensorboard: bool = False):
        _check_run(run)
        self.run, self.writer = run, None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as error:
                raise ImportError(
                    "[log] tensorboard = true needs the tensorboard package: pip install tensorboard"
                ) from error
            self.writer = SummaryWriter(log_dir=str(run.path / "tensorboard"))

    def on_epoch_end(self, state: FitState) -> None:
        self.run.append_metrics(state.record)
        if self.writer is not None:
            for key, value in state.record.items():
                if isinstance(value, int | float) and not isinstance(value, bool) and key not in ("epoch", "step"):
                    self.writer.add_scalar(key, value, state.epoch)
            self.writer.flush()

    def on_fit_end(self, state: FitState) -> None:
        if self.writer is not None:
            self.writer.close()


class EarlyStopping(Callback):
    """Stops when the monitored bound (validation, else training) has not improved for
    ``patience`` epochs, and puts the best parameters back at the end (from the ``best``
    checkpoint, or from memory without a run directory)."""

    def __init__(self, patience: int, checkpointer: Checkpointer | None):
        patience = check_positive_int(patience, "patience")
        if checkpointer is not None and not isinstance(checkpointer, Checkpointer):
            raise TypeError(f"checkpointer must be a Checkpointer or None; received {describe(checkpointer)}")
        self.patience, self.checkpointer, self.state = patience, checkpointer, None

    def on_epoch_end(self, state: FitState) -> None:
        if state.best["epoch"] == state.epoch and self.checkpointer is None:  # improved this epoch
            self.state = copy.deepcopy(state.objective.state_dict())
        if state.best["waited"] >= self.patience:
            state.stop = state.history.stopped_early = True

    def on_fit_end(self, state: FitState) -> None:
        best = state.best["epoch"]
        if not best or best == state.history.n_iter:
            return
        if self.checkpointer is not None:
            tensors, _ = load_checkpoint(self.checkpointer.run.checkpoint("best"))
            load_modules(state.objective, tensors)
        elif self.state is not None:
            state.objective.load_state_dict(self.state)


class Checkpointer(Callback):
    """Writes ``checkpoints/last.safetensors`` every ``every`` epochs (and at the end) and
    ``best.safetensors`` at each new best monitored bound: the objective's state (model, guide
    and the estimator's own), the optimizer's, the RNG's, the history, the options and the config
    of record. Every write is atomic.

    Under torch.distributed every rank calls :meth:`save` (it gathers each rank's RNG state) and
    rank 0 alone writes; an error in the write is raised on every rank."""

    def __init__(self, run: RunDirectory, every: int, config: str | None, epochs: int, keep_best: bool):
        _check_run(run)
        every, epochs = check_positive_int(every, "every"), check_positive_int(epochs, "epochs")
        if config is not None and not isinstance(config, str):
            raise TypeError(f"config must be the config's text (a string) or None; received {describe(config)}")
        keep_best = check_bool(keep_best, "keep_best")
        self.run, self.every, self.config, self.epochs, self.keep_best = run, every, config, epochs, keep_best

    def on_epoch_end(self, state: FitState) -> None:
        if self.keep_best and state.best["epoch"] == state.epoch:
            self.save(state, "best")
        if state.stop or state.epoch == self.epochs or state.epoch % self.every == 0:
            self.save(state, "last")

    def save(self, state: FitState, name: str = "last") -> None:
        rngs = gather(_rng_state())  # every rank's, in rank order
        from_rank0(self._write, state, name, rngs)

    def _write(self, state: FitState, name: str, rngs: list[dict]) -> None:
        tensors = {k: v for k, v in state.objective.state_dict().items()}
        opt = state.optimizer.state_dict()
        for index, slots in opt["state"].items():
            for k, v in slots.items():
                tensors[f"optimizer.{index}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
        for r, states in enumerate(rngs):  # rank 0's under the names one process uses, the others' by rank
            for device, value in states.items():
                tensors[f"rng.{device}" if r == 0 else f"rng.{device}.{r}"] = value
        tensors["history.steps"] = torch.tensor(state.history.steps, dtype=torch.float64)
        partial = None
        if state.partial is not None:
            tensors["epoch.order"] = state.partial["order"]
            tensors["epoch.values"] = torch.stack(state.partial["values"]) if state.partial["values"] else \
                torch.zeros(0)  # fmt: skip
            for part, values in state.partial["parts"].items():
                tensors[f"epoch.parts.{part}"] = torch.stack(values)
            partial = {"step": len(state.partial["values"]), "parts": sorted(state.partial["parts"])}
            if "data_rng" in state.partial:
                tensors["epoch.data_rng"] = state.partial["data_rng"]
        record = state.history.to_dict()
        record.pop("steps")
        metadata = {
            "format": CHECKPOINT_FORMAT,
            "epoch": state.epoch,
            "partial": partial,
            "objective": type(state.objective).name or type(state.objective).__name__,
            "options": state.options,
            "optimizer_groups": opt["param_groups"],
            "history": record,
            "best": state.best,
            "config": self.config,
            "data_seed": str(state.data_seed),  # 63 bits: a string, which JSON keeps exact
            "world_size": len(rngs),
        }
        save_checkpoint(self.run.checkpoint(name), tensors, metadata)

    def restore(self, state: FitState, resume_keys: tuple[str, ...], loaded: tuple[dict, dict] | None = None
                ) -> dict | None:  # fmt: skip
        """Loads ``last`` (or the ``(tensors, metadata)`` already read from it, as rank 0 sends them
        to the other ranks) into the objective, optimizer, RNG and history; returns the mid-epoch
        position (order, step, values, parts) when the run was interrupted inside an epoch."""
        tensors, meta = load_checkpoint(self.run.checkpoint()) if loaded is None else loaded
        saved = meta.get("options", {})
        for key in resume_keys:
            if key in saved and _jsonable(saved[key]) != _jsonable(state.options.get(key)):
                raise ValueError(
                    f"cannot resume {self.run.path} exactly: it was fitted with {key}={saved[key]!r}, and this call "
                    f"passes {key}={state.options.get(key)!r}"
                )
        load_modules(state.objective, tensors)
        slots: dict = {}
        for k, v in tensors.items():
            if k.startswith("optimizer."):
                _, index, name = k.split(".", 2)
                slots.setdefault(int(index), {})[name] = v
        state.optimizer.load_state_dict({"state": slots, "param_groups": meta["optimizer_groups"]})
        suffix = f".{rank()}" if rank() > 0 else ""
        torch.set_rng_state(tensors["rng.cpu" + suffix])
        if "rng.cuda" + suffix in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state(tensors["rng.cuda" + suffix])
        # checkpoints from before the data had a generator of their own: the seed, as the options hold it
        state.data_seed = int(meta.get("data_seed") or (state.options.get("seed") or 0))
        for k, v in meta["history"].items():
            setattr(state.history, k, v)
        state.history.steps = tensors["history.steps"].tolist()
        state.best.update(meta["best"])
        state.epoch = int(meta["epoch"])
        partial = meta.get("partial")
        if not partial:
            return None
        values = tensors["epoch.values"]
        restored = {
            "order": tensors["epoch.order"],
            "values": list(values.unbind(0)) if values.numel() else [],
            "parts": {p: list(tensors[f"epoch.parts.{p}"].unbind(0)) for p in partial["parts"]},
        }
        if "epoch.data_rng" in tensors:
            restored["data_rng"] = tensors["epoch.data_rng"]
        return restored


def _rng_state() -> dict:
    """This process's RNG states: the CPU's, and the current GPU's where CUDA is in use."""
    states = {"cpu": torch.get_rng_state()}
    if rng_devices():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def load_modules(objective: torch.nn.Module, tensors: dict) -> None:
    """Loads the objective's state from checkpoint tensors (the optimizer's, RNG's and history's
    entries are skipped; a checkpoint from before objectives had state of their own, such as β,
    keeps the objective's current values of it)."""
    own = objective.state_dict()
    state = {k: v for k, v in tensors.items() if k in own}
    missing = [k for k in own if k not in state and (k.startswith("model.") or k.startswith("guide."))]
    if missing:
        raise ValueError(
            f"the checkpoint does not fit this model and guide: it lacks {', '.join(missing[:5])}"
            + (" …" if len(missing) > 5 else "")
        )
    objective.load_state_dict({**own, **state})


def _jsonable(value):
    return json.loads(json.dumps(value))


class Interrupted(KeyboardInterrupt):
    """A fit stopped by SIGTERM or SIGINT after finishing its current step, with a checkpoint
    written to resume from.

    Attributes:
        signal: The signal's number.
        checkpoint: The checkpoint written.
        exit_code: 128 + the signal's number (143 for SIGTERM, 130 for SIGINT), the exit status
            a command line should end with.
    """

    def __init__(self, signum: int, checkpoint):
        self.signal, self.checkpoint, self.exit_code = signum, checkpoint, 128 + signum
        name = signal.Signals(signum).name
        super().__init__(f"{name} received: the current step was finished and {checkpoint} written")


class SignalGuard:
    """Within the context, SIGTERM and SIGINT set a flag instead of killing the process, so the
    loop finishes its step, writes a checkpoint and raises :class:`Interrupted`. Installed only
    in the main thread (where Python delivers signals); elsewhere the defaults stay."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, enabled: bool = True):
        self.enabled = check_bool(enabled, "enabled") and threading.current_thread() is threading.main_thread()
        self.received: int | None = None
        self._previous: dict = {}

    def _handler(self, signum, frame) -> None:
        if self.received is None:
            self.received = signum

    def __enter__(self) -> SignalGuard:
        if self.enabled:
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
