"""The run directory: files written atomically, so a crash never leaves half a file."""

from elbox.io.files import atomic_write_bytes, atomic_write_text, write_json, write_jsonl
from elbox.io.run import NotARunError, RunDirectory, load_checkpoint, save_checkpoint

__all__ = [
    "NotARunError",
    "RunDirectory",
    "atomic_write_bytes",
    "atomic_write_text",
    "load_checkpoint",
    "save_checkpoint",
    "write_json",
    "write_jsonl",
]
