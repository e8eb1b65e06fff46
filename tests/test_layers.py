"""The package's layers import downward only: the core (models, guides, bounds, objectives,
inference, evidence, distributions, data, io) imports neither the run layer, the command line nor
the plots; the run layer never imports the command line; ``elbox.load_run`` loads without it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "elbox"
IMPORT = re.compile(r"^\s*(?:from\s+elbox(?:\.(\w+))?\s+import\s+([\w, ()]+)|import\s+elbox\.(\w+))", re.MULTILINE)


def _imported_layers(path: Path) -> set[str]:
    """The top-level subpackages of elbox a file imports, wherever in the file (lazy imports too)."""
    layers = set()
    for sub, names, plain in IMPORT.findall(path.read_text()):
        if sub or plain:
            layers.add(sub or plain)
        else:  # from elbox import a, b
            layers.update(n.strip(" ()") for n in names.split(","))
    return layers


@pytest.mark.parametrize("layer, forbidden", [
    ("core", {"runs", "cli", "plots"}),
    ("runs", {"cli"}),
])  # fmt: skip
def test_layers_import_downward_only(layer, forbidden):
    # the package's own __init__ (a lazy load_run) and __main__ (the command) stand above every layer
    core = [p for p in PACKAGE.rglob("*.py") if len(p.relative_to(PACKAGE).parts) > 1
            and p.relative_to(PACKAGE).parts[0] not in ("runs", "cli", "plots")]  # fmt: skip
    files = core if layer == "core" else list((PACKAGE / layer).rglob("*.py"))
    offending = {str(p.relative_to(PACKAGE)): sorted(_imported_layers(p) & forbidden) for p in files}
    assert files and not {k: v for k, v in offending.items() if v}


def test_load_run_needs_no_command_line():
    code = "import sys, elbox; elbox.load_run; print(sorted(m for m in sys.modules if m.startswith('elbox.cli')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_config_keys_words_are_written_with_its_check():
    """A key's "expected" text comes from its check (one place), and a registry's names are read
    when the message is written, so a plugin registered later is listed."""
    from elbox.runs._schema import POSITIVE_INT, Key, Registered, choice

    key = Key("a", choice("a", "b", "c"), "a letter")
    assert key.expected == "'a', 'b' or 'c'" and key.check("b") and not key.check("d") and key.help == "a letter"
    assert Key(1, POSITIVE_INT, "a count").expected == "a positive integer"
    registry = {"x": 1}
    named = Key("x", Registered(registry, "a registered thing"), "a thing")
    registry["y"] = 2
    assert named.expected == "a registered thing: 'x', 'y'" and named.check("y") and not named.check("z")
    assert Key(1, lambda v: v == 1, "one", "the one").expected == "one"  # any function, with its words beside it
    with pytest.raises(TypeError, match="Key takes"):
        Key(1, lambda v: v == 1, "words but no meaning")
