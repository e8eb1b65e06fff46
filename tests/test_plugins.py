"""A model type from a user's own file, outside the package: fitted, evaluated and reported by
``elbox`` in separate processes, the file named once (``elbox fit --import``) and recorded in the
run, so that ``evaluate``, ``report`` and ``elbox.load_run`` import it again by themselves."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import elbox
from elbox.runs.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]

PLUGIN = '''
"""A Gaussian mixture with tied spherical noise, registered as a model type of its own."""
import torch

from elbox.models import GaussianMixture
from elbox.runs import DataInfo, ModelType, register_model_type
from elbox.runs._schema import SIZE, Key


def build(m: dict, info: DataInfo):
    return GaussianMixture(m["clusters"], info.dim, covariance_type="diag")


def guide(model, m: dict, info: DataInfo):
    from elbox.guides import Categorical

    return Categorical(model.num_components, num_points=info.points)


register_model_type(ModelType(
    name="my_mixture", keys={"clusters": Key(2, SIZE, "the clusters")},
    build=build, guide=guide, method="em", init="kmeans++", sequences=False, dtype=torch.float64,
    description="a user's mixture",
))
'''


def _elbox(*args, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m elbox ARGS`` in a fresh process, from ``cwd`` (not the repository)."""
    return subprocess.run([sys.executable, "-m", "elbox", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)  # fmt: skip


def test_a_model_type_from_a_users_file_is_fitted_evaluated_and_reported_in_separate_processes(tmp_path):
    (tmp_path / "my_mixture.py").write_text(PLUGIN)
    torch.manual_seed(0)
    points, _ = elbox.GaussianMixture(2, 3, loc=5 * torch.randn(2, 3)).double().sample(120)
    np.save(tmp_path / "points.npy", points.numpy())
    (tmp_path / "config.toml").write_text('[data]\npath = "points.npy"\n[model]\ntype = "my_mixture"\nclusters = 2\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    fitted = _elbox("fit", tmp_path / "config.toml", "--import", "my_mixture.py", "--out", tmp_path / "run",
                    "--no-progress", cwd=tmp_path)  # fmt: skip
    assert fitted.returncode == 0, fitted.stdout + fitted.stderr
    assert str(tmp_path / "my_mixture.py") in (tmp_path / "run" / "config.toml").read_text()  # recorded, absolute
    evaluated = _elbox("evaluate", tmp_path / "run", cwd=elsewhere)
    assert evaluated.returncode == 0, evaluated.stdout + evaluated.stderr
    report = json.loads((tmp_path / "run" / "evaluation.json").read_text())["report"]
    assert report["log_evidence"]["method"] == "exact" and abs(report["gap"]) < 1e-6
    reported = _elbox("report", tmp_path / "run", cwd=elsewhere)
    assert reported.returncode == 0, reported.stdout + reported.stderr
    assert (tmp_path / "run" / "report.html").read_text().startswith("<!DOCTYPE html>")
    code = (f"import elbox; run = elbox.load_run({str(tmp_path / 'run')!r}); "
            "print(run.config['model']['type'], run.model.num_components)")  # fmt: skip
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=elsewhere, timeout=120)
    assert loaded.returncode == 0 and loaded.stdout.split() == ["my_mixture", "2"], loaded.stdout + loaded.stderr


def test_a_plugin_that_cannot_be_imported_is_named(tmp_path):
    (tmp_path / "config.toml").write_text('[plugins]\nimports = ["no_such_plugin_module"]\n')
    result = _elbox("fit", tmp_path / "config.toml", "--out", tmp_path / "run", cwd=tmp_path)
    assert result.returncode == 2 and "[plugins] imports: no_such_plugin_module" in result.stdout, result.stdout
    result = _elbox("fit", tmp_path / "config.toml", "--import", "missing.py", "--out", tmp_path / "run", cwd=tmp_path)
    assert result.returncode == 2 and "--import missing.py" in result.stdout and "does not exist" in result.stdout


def test_a_data_set_is_one_registration():
    """A DataSource registered from outside the package is a [data] name like the built-in ones:
    the config accepts it, load_data gives its splits (validation held out by the shared helper),
    an unknown name's message lists it, and a key that only another source reads is refused."""
    from elbox.runs import load_data
    from elbox.runs.config import parse_config
    from elbox.runs.sources import DATA_SOURCES, DataSource, register_data_source, split_by_seed

    def rings(config, split):
        angle = torch.linspace(0, 6.28, 120)
        x = torch.stack([angle.cos(), angle.sin()], -1) * (1 + (torch.arange(120) % 2)).unsqueeze(-1)
        return split_by_seed(x, torch.arange(120) % 2, split, 20, config["data"]["validation"], "the rings")

    if "rings_for_test" not in DATA_SOURCES:
        register_data_source(DataSource("rings_for_test", rings, "two rings", real_valued=True))
    config = parse_config({"data": {"name": "rings_for_test", "validation": 10, "binarization": "none"},
                           "model": {"type": "gmm"}})  # fmt: skip
    sizes = {split: len(load_data(config, split)[0]) for split in ("train", "validation", "test")}
    assert sizes == {"train": 90, "validation": 10, "test": 20}
    with pytest.raises(ConfigError, match="'rings_for_test'"):
        parse_config({"data": {"name": "ringz"}})
    with pytest.raises(ConfigError, match=r"\[data\] root applies to name = 'mnist' only"):
        parse_config({"data": {"name": "rings_for_test", "root": "/tmp", "binarization": "none"},
                      "model": {"type": "gmm"}})  # fmt: skip
    with pytest.raises(ConfigError, match="real-valued"):
        parse_config({"data": {"name": "rings_for_test", "binarization": "fixed"}, "model": {"type": "gmm"}})
    with pytest.raises(ValueError, match="registered already"):
        register_data_source(DataSource("digits", rings, "another digits"))
