"""The command line, through typer's CliRunner, and the demo end to end in a temporary directory."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from elbox.cli.main import app

runner = CliRunner()


def test_help_lists_the_demo():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "demo" in result.output


def test_demo_end_to_end(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["demo", "--out", str(out), "--vi-epochs", "150", "--components", "4"])
    assert result.exit_code == 0, result.output
    assert "log p(x)" in result.output and "ELBO" in result.output and "EM" in result.output
    for name in ("config.toml", "metrics.jsonl", "report.json", "traces.png"):
        assert (out / name).stat().st_size > 0, name
    report = json.loads((out / "report.json").read_text())
    em_row, vi_row = report["rows"]
    assert abs(em_row["gap_kl"]) < 1e-10  # EM's q is the exact posterior
    assert vi_row["gap_kl"] > 0 and vi_row["elbo"] <= vi_row["log_evidence"]
    # The gap computed as KL(q ‖ posterior) and as log p(x) − ELBO agree: the identity.
    assert abs(vi_row["gap_kl"] - vi_row["gap_difference"]) < 1e-9
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == em_row["iterations"] + 150
    assert (out / "traces.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_rejects_bad_options(tmp_path):
    result = runner.invoke(app, ["demo", "--out", str(tmp_path), "--pca", "100"])
    assert result.exit_code != 0
    assert "pca" in result.output.lower()
