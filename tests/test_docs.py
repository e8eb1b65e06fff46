"""Every code block in README.md and docs/, and every docstring example, runs as written.

A page's blocks run in order in one namespace, as a reader pastes them one after another, in a
fresh directory that holds a copy of configs/ (runs are written there). Docstring examples run
with doctest, in their module's namespace plus `torch`, `elbox` and elbox's public names."""

from __future__ import annotations

import doctest
import importlib
import re
import shutil
from pathlib import Path

import matplotlib
import pytest
import torch

import elbox

ROOT = Path(__file__).resolve().parent.parent
PAGES = [p for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))] if "```python" in p.read_text()]


def _blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), re.S)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    matplotlib.use("Agg")
    return tmp_path


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_the_code_blocks_of_a_page_run(page, workdir):
    namespace = {"__name__": "__docs__"}
    for i, block in enumerate(_blocks(page)):
        exec(compile(block, f"{page.relative_to(ROOT)}, block {i + 1}", "exec"), namespace)  # noqa: S102


MODULES = sorted({
    importlib.import_module(path.relative_to(ROOT).with_suffix("").as_posix().replace("/", "."))
    for path in (ROOT / "elbox").rglob("*.py") if ">>> " in path.read_text()
}, key=lambda m: m.__name__)  # fmt: skip


def test_there_are_docstring_examples_to_run():
    assert len(MODULES) >= 8


@pytest.mark.parametrize("module", MODULES, ids=[m.__name__ for m in MODULES])
def test_the_docstring_examples_of_a_module_run(module, workdir):
    torch.manual_seed(0)
    names = {"torch": torch, "elbox": elbox, **{n: getattr(elbox, n) for n in elbox.__all__},
             **{n: getattr(elbox.guides, n) for n in elbox.guides.__all__}}  # fmt: skip
    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tests = [t for t in finder.find(module, module.__name__, extraglobs=names) if t.examples]
    assert tests, module.__name__
    for test in tests:
        runner.run(test)
    assert runner.failures == 0, f"{runner.failures} docstring example(s) of {module.__name__} failed (see above)"
