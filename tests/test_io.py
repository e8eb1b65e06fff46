"""Atomic writes: an interrupted write leaves the previous file whole and no temporary behind."""

from __future__ import annotations

import json
import os

import pytest

from elbox.io import atomic_write_text, write_json, write_jsonl


def test_write_and_replace(tmp_path):
    path = tmp_path / "sub" / "report.json"
    write_json(path, {"elbo": -1.5})
    write_json(path, {"elbo": -1.25})
    assert json.loads(path.read_text()) == {"elbo": -1.25}
    write_jsonl(tmp_path / "m.jsonl", [{"a": 1}, {"a": 2}])
    assert (tmp_path / "m.jsonl").read_text().splitlines() == ['{"a": 1}', '{"a": 2}']


def test_interrupted_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "report.json"
    atomic_write_text(path, "old")

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
