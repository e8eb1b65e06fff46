"""The run directory: files written atomically, so a crash never leaves half a file."""

from elbox.io.files import atomic_write_bytes, atomic_write_text, write_json, write_jsonl

__all__ = ["atomic_write_bytes", "atomic_write_text", "write_json", "write_jsonl"]
