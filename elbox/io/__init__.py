"""The run directory: files written atomically, so a crash never leaves half a file; a lock that
keeps a run to one writer."""

from elbox.io.files import atomic_write_bytes, atomic_write_text, write_json, write_jsonl
from elbox.io.run import (
    NotARunError,
    RunDirectory,
    RunLock,
    RunLockedError,
    load_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
)

__all__ = [
    "NotARunError",
    "RunDirectory",
    "RunLock",
    "RunLockedError",
    "atomic_write_bytes",
    "atomic_write_text",
    "load_checkpoint",
    "remove_stale_temporaries",
    "save_checkpoint",
    "write_json",
    "write_jsonl",
]
