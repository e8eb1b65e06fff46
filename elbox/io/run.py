"""The run directory: config.toml, metrics.jsonl, checkpoints/*.safetensors and figures.

Every file is written atomically (a temporary beside it, then a rename), so an interrupted run
leaves the previous checkpoint whole; metrics are appended one complete line per epoch.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from torch import Tensor

from elbox.io.files import atomic_write_bytes, write_jsonl

__all__ = [
    "NotARunError",
    "RunDirectory",
    "RunLock",
    "RunLockedError",
    "load_checkpoint",
    "remove_stale_temporaries",
    "save_checkpoint",
]

_METADATA_KEY = "elbox"


class NotARunError(FileNotFoundError):
    """A path given as a run directory holds no run."""


def save_checkpoint(path: str | os.PathLike, tensors: dict[str, Tensor], metadata: dict) -> Path:
    """Writes ``tensors`` and JSON ``metadata`` to one safetensors file, atomically."""
    from safetensors.torch import save

    data = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic_write_bytes(path, save(data, metadata={_METADATA_KEY: json.dumps(metadata)}))


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict]:
    """Reads a checkpoint written by :func:`save_checkpoint`: ``(tensors, metadata)``."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = json.loads((f.metadata() or {}).get(_METADATA_KEY, "{}"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as error:  # safetensors raises its own error types for damaged files
        raise ValueError(f"{path} is not a readable elbox checkpoint: {error}") from error
    return tensors, metadata


class RunDirectory:
    """Paths and files of one run.

    Layout::

        RUN_DIR/config.toml               what was run (the CLI writes it)
        RUN_DIR/metrics.jsonl             one JSON record per epoch
        RUN_DIR/checkpoints/last.safetensors   the latest completed epoch (resume from it)
        RUN_DIR/checkpoints/best.safetensors   the best validation bound so far
        RUN_DIR/*.png, evaluation.json    figures and evaluations
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @property
    def config(self) -> Path:
        return self.path / "config.toml"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    def checkpoint(self, name: str = "last") -> Path:
        return self.path / "checkpoints" / f"{name}.safetensors"

    def has_checkpoint(self, name: str = "last") -> bool:
        return self.checkpoint(name).is_file()

    @classmethod
    def open(cls, path: str | os.PathLike) -> RunDirectory:
        """An existing run: a directory with config.toml and a checkpoint.

        Raises:
            NotARunError: naming what is missing.
        """
        run = cls(path)
        if not run.path.is_dir():
            raise NotARunError(f"run directory {run.path} does not exist")
        missing = [str(p.relative_to(run.path)) for p in (run.config, run.checkpoint()) if not p.is_file()]
        if missing:
            raise NotARunError(
                f"{run.path} is not an elbox run directory: it lacks {' and '.join(missing)} "
                "(a run directory is what `elbox fit CONFIG.toml` writes)"
            )
        return run

    def read_metrics(self) -> list[dict]:
        """The records of metrics.jsonl. An incomplete last line (a crash while appending) is
        dropped; a line in the middle that is not a JSON object means the file was damaged or
        edited, and is an error naming it (later records are never silently dropped)."""
        if not self.metrics.is_file():
            return []
        try:
            lines = self.metrics.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as error:
            raise ValueError(f"{self.metrics} is not UTF-8 text ({error.reason} at byte {error.start})") from None
        records = []
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if number == len(lines) and not self.metrics.read_bytes().endswith(b"\n"):
                    break  # the last line, cut short by a crash
                raise ValueError(f"{self.metrics}, line {number}, is not JSON: {line[:60]!r}") from None
            if not isinstance(record, dict):
                raise ValueError(f"{self.metrics}, line {number}, is not a record (a JSON object): {line[:60]!r}")
            records.append(record)
        return records

    def append_metrics(self, record: dict) -> None:
        """Appends one record as one line, flushed to disk (NaN, which JSON lacks, as null)."""
        record = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in record.items()}
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.metrics, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def truncate_metrics(self, epochs: int) -> None:
        """Keeps the records of the first ``epochs`` epochs (on resume: those the checkpoint has)."""
        records = [r for r in self.read_metrics() if r.get("epoch", 0) <= epochs]
        write_jsonl(self.metrics, records)

    def __repr__(self) -> str:
        return f"RunDirectory({str(self.path)!r})"


class RunLockedError(RuntimeError):
    """Another process is writing the run directory."""


_HELD: dict[str, list] = {}  # run directories this process has locked: [file, depth]


class RunLock:
    """An OS file lock on ``RUN_DIR/.lock`` (``flock``), so that one process at a time writes a
    run. The operating system releases it when the process exits in any way (a crash or a
    SIGKILL included), so a stale lock never blocks a later run. Re-entrant within a process
    (the demo trains, then evaluates, the same run).

    Raises:
        RunLockedError: On entry, when another process holds the lock; the message names it.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __enter__(self) -> RunLock:
        import fcntl

        self.path.mkdir(parents=True, exist_ok=True)
        key = str(self.path.resolve())
        if key in _HELD:
            _HELD[key][1] += 1
            return self
        lock = self.path / ".lock"
        f = open(lock, "a+", encoding="utf-8")  # noqa: SIM115  (held for the lock's lifetime)
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise RunLockedError(
                f"{self.path} is being written by {holder}; wait for it to finish (or stop it), or choose "
                "another run directory"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"process {os.getpid()} on {os.uname().nodename}\n")
        f.flush()
        _HELD[key] = [f, 1]
        return self

    def __exit__(self, *exc) -> None:
        key = str(self.path.resolve())
        entry = _HELD.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del _HELD[key]
            entry[0].close()  # closing the descriptor releases the flock


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Removes the temporaries that an interrupted atomic write left in a run directory (named
    ``.NAME.*.tmp``; a finished write renames its temporary, so any left is stale). Call it with
    the run's lock held."""
    path = Path(path)
    stale = [p for p in path.rglob(".*.tmp") if p.is_file()] if path.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
