"""One long series as a statistician has it: a table of one row per step, the end of the series
held out in time (split = "time"), scored given its past, and forecast, from the command line."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import elbox
from elbox.runs import load_data
from elbox.runs.config import ConfigError, parse_config

ROOT = Path(__file__).resolve().parents[1]


def _series(path: Path, T: int = 150, seed: int = 0) -> np.ndarray:
    torch.manual_seed(seed)
    model = elbox.LinearGaussianSSM(2, 2, transition_matrix=torch.tensor([[0.95, 0.1], [0.0, 0.9]]),
                                    observation_covariance=0.3 * torch.eye(2)).double()  # fmt: skip
    x = model.sample(1, T)[0][0].numpy()
    np.savetxt(path, x, delimiter=",", header="a,b", comments="")
    return x


def _config(tmp_path: Path, **data) -> dict:
    _series(tmp_path / "series.csv")
    return parse_config({"data": {"path": str(tmp_path / "series.csv"), "split": "time", **data},
                         "model": {"type": "lgssm", "state_dim": 2}})  # fmt: skip


def test_a_csv_is_one_series_and_a_time_split_holds_out_its_end(tmp_path):
    config = _config(tmp_path, test=10, validation=5)
    full = np.loadtxt(tmp_path / "series.csv", delimiter=",", skiprows=1)
    parts = {split: load_data(config, split)[0] for split in ("train", "validation", "test")}
    assert [len(p) for p in parts.values()] == [1, 1, 1]  # one series, in every part
    assert [int(p.lengths[0]) for p in parts.values()] == [135, 140, 150]
    np.testing.assert_allclose(parts["test"].values[0].numpy(), full)  # the test part is the whole series
    np.testing.assert_allclose(parts["train"].values[0, :135].numpy(), full[:135])


def test_time_split_errors_name_the_keys(tmp_path):
    with pytest.raises(ConfigError, match="split = 'time'.*takes points"):
        parse_config({"data": {"split": "time"}, "model": {"type": "gmm"}})
    with pytest.raises(ConfigError, match="leave no training steps of sequence 0"):
        load_data(_config(tmp_path, test=100, validation=60), "train")
    with pytest.raises(ConfigError, match="test = 0"):
        load_data(_config(tmp_path, test=0), "test")
    with pytest.raises(ConfigError, match=r"\[data\] split must be 'random' or 'time'"):
        parse_config({"data": {"split": "chronological"}})
    with pytest.raises(ConfigError, match=r"\[data\] test must be 'auto' or a non-negative integer"):
        parse_config({"data": {"test": -1}})


def test_no_test_set_is_test_zero(tmp_path):
    """test = 0 holds out nothing (the whole file trains); asking for the test split says so."""
    np.save(tmp_path / "points.npy", np.random.default_rng(0).normal(size=(40, 3)))
    config = parse_config({"data": {"path": str(tmp_path / "points.npy"), "test": 0}, "model": {"type": "gmm"}})
    assert len(load_data(config, "train")[0]) == 40
    with pytest.raises(ConfigError, match="test = 0"):
        load_data(config, "test")


def _elbox(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, "-m", "elbox", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)  # fmt: skip


def test_fit_evaluate_and_forecast_one_series_in_fresh_processes(tmp_path):
    """The must-show of the time-series issue: `elbox fit` on a single-series .csv with split =
    "time", then `elbox evaluate` and `elbox forecast`, each a fresh process. The test score is
    log p(x_test | x_before), exactly the difference of the filter's log-likelihoods."""
    x = _series(tmp_path / "series.csv")
    (tmp_path / "ts.toml").write_text('[data]\npath = "series.csv"\nsplit = "time"\ntest = 10\n'
                                      '[model]\ntype = "lgssm"\nstate_dim = 2\n[train]\nmax_iter = 30\n')  # fmt: skip
    for args in (("fit", "ts.toml", "--out", "run", "--no-progress"), ("evaluate", "run"),
                 ("forecast", "run", "--steps", "7")):  # fmt: skip
        done = _elbox(*args, cwd=tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
    evaluation = json.loads((tmp_path / "run" / "evaluation.json").read_text())
    run = elbox.load_run(tmp_path / "run")
    series = torch.as_tensor(x).unsqueeze(0)
    with torch.no_grad():
        expected = float(run.model.log_evidence(series) - run.model.log_evidence(series[:, :140]))
    assert evaluation["test_log_likelihood"]["total"] == pytest.approx(expected, rel=1e-10)
    assert evaluation["test_log_likelihood"]["steps"] == 10
    with open(tmp_path / "run" / "forecast.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 7 * 2 and (tmp_path / "run" / "forecast.png").stat().st_size > 0
    forecast = run.model.forecast(series[:, :140], 7)
    assert float(rows[0]["mean"]) == pytest.approx(float(forecast.mean[0, 0, 0]), rel=1e-9)
    refused = _elbox("report", "run", cwd=tmp_path)
    assert refused.returncode == 2 and "one series" in refused.stdout
