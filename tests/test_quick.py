"""`--quick`: a config's [quick] overrides, put in place of its own values by `elbox fit --quick`
(and `train_run(quick=True)`), checked like any other key, and recorded in the run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import tomllib
from typer.testing import CliRunner

from elbox.cli.main import app
from elbox.io import RunDirectory, load_checkpoint
from elbox.runs import load_run, train_run
from elbox.runs.config import ConfigError, load_config, parse_config

runner = CliRunner()
ROOT = Path(__file__).parent.parent
CONFIGS = sorted((ROOT / "configs").glob("*.toml"))

SMALL = """
[data]
name = "digits"
validation = 100
test = 100

[model]
latent_dim = 2
hidden = [32]

[train]
epochs = 40
batch_size = 200
lr = 3e-3
seed = 1

[evaluate]
num_samples = 400
batch_size = 50

[quick]
train.epochs = 2
evaluate.num_samples = 32
evaluate.max_points = 40
evaluate.refine_steps = 5
"""


def _write(tmp_path: Path, text: str = SMALL, name: str = "small.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _flat(output: str) -> str:
    return " ".join(output.split())


def test_fit_quick_applies_the_overrides_and_the_run_records_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = _write(tmp_path)
    result = runner.invoke(app, ["fit", str(config), "--quick", "--no-progress"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "runs" / "small-quick"  # the default directory of a quick run is not the full run's
    assert "--quick" in result.output and str(Path("runs") / "small-quick") in result.output
    run = RunDirectory.open(out)
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2]

    # config.toml and the checkpoint's config: the values used, the [quick] table, and that it was applied
    text = run.config.read_text()
    _, meta = load_checkpoint(run.checkpoint())
    assert meta["config"] == text and meta["epoch"] == 2
    assert text.startswith("# Fitted with --quick")
    stored = tomllib.loads(text)
    assert stored["train"]["epochs"] == 2 and stored["evaluate"]["num_samples"] == 32
    assert stored["evaluate"]["max_points"] == 40 and stored["record"]["quick"] is True
    assert stored["quick"] == {"train": {"epochs": 2}, "evaluate": {"num_samples": 32, "max_points": 40,
                                                                    "refine_steps": 5}}  # fmt: skip
    loaded = load_run(out)
    assert loaded.config["train"]["epochs"] == 2 and loaded.config["record"]["quick"] is True
    assert loaded.config["quick"]["train.epochs"] == 2

    # the run's own evaluation settings are the quick ones
    result = runner.invoke(app, ["evaluate", str(out)])
    assert result.exit_code == 0, result.output
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["settings"]["num_samples"] == 32 and evaluation["data"] == "digits test set, 40 points"
    assert evaluation["quick"] is True

    # resuming with another --quick than the run's is refused; with the same, it continues
    result = runner.invoke(app, ["fit", str(config), "--out", str(out), "--resume", "--no-progress"])
    assert result.exit_code == 2 and "fitted with --quick" in _flat(result.output), result.output
    more = _write(tmp_path, SMALL.replace("train.epochs = 2", "train.epochs = 3"), "more.toml")
    result = runner.invoke(app, ["fit", str(more), "--out", str(out), "--resume", "--quick", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2, 3]


def test_without_quick_the_config_keeps_its_values_and_its_quick_table(tmp_path):
    config = load_config(_write(tmp_path))
    assert config["train"]["epochs"] == 40 and config["evaluate"]["num_samples"] == 400
    assert config["record"]["quick"] is False
    assert config["quick"] == {"train.epochs": 2, "evaluate.num_samples": 32, "evaluate.max_points": 40,
                               "evaluate.refine_steps": 5}  # fmt: skip
    quick = load_config(_write(tmp_path), quick=True)
    assert quick["train"]["epochs"] == 2 and quick["evaluate"]["max_points"] == 40 and quick["record"]["quick"]
    # the other values are the config's own, and a parsed config applies its [quick] the same way
    assert {k: v for k, v in quick["model"].items()} == config["model"]
    assert parse_config(config, quick=True) == quick


def test_the_python_entry_point_agrees_with_the_command(tmp_path):
    path = _write(tmp_path)
    cli = tmp_path / "cli"
    assert runner.invoke(app, ["fit", str(path), "--quick", "--out", str(cli), "--no-progress"]).exit_code == 0
    result = train_run(path, tmp_path / "python", quick=True)
    assert result["config"]["train"]["epochs"] == 2 and result["history"].n_iter == 2
    assert (tmp_path / "python" / "config.toml").read_text() == (cli / "config.toml").read_text()
    # a parsed config passed as such gets its [quick] applied too
    result = train_run(None, tmp_path / "parsed", config=load_config(path), quick=True)
    assert (tmp_path / "parsed" / "config.toml").read_text() == (cli / "config.toml").read_text()


def test_evaluate_quick_uses_the_runs_quick_evaluation_settings(tmp_path):
    out = tmp_path / "run"
    full = SMALL.replace("epochs = 40", "epochs = 1")  # a full run (no --quick), one epoch to be short
    result = runner.invoke(app, ["fit", str(_write(tmp_path, full)), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert tomllib.loads((out / "config.toml").read_text())["record"]["quick"] is False
    result = runner.invoke(app, ["evaluate", str(out), "--quick"])
    assert result.exit_code == 0, result.output
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["quick"] is True and evaluation["settings"]["num_samples"] == 32
    assert evaluation["settings"]["refine_steps"] == 5 and evaluation["data"] == "digits test set, 40 points"
    # the options still override the quick settings
    result = runner.invoke(app, ["evaluate", str(out), "--quick", "--num-samples", "30", "--max-points", "20"])
    assert result.exit_code == 0, result.output
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["settings"]["num_samples"] == 30 and evaluation["data"] == "digits test set, 20 points"
    # report --quick evaluates again, with the quick settings
    result = runner.invoke(app, ["report", str(out), "--quick"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "report.json").read_text())["settings"]["num_samples"] == 32


BAD = {
    "unknown key": ("train.epoch = 2", "unknown key 'epoch' in [quick] train.epoch; did you mean 'epochs'?"),
    "unknown section": ("trian.epochs = 2", "[quick] trian: [trian] is not a section; did you mean 'train'?"),
    "bad value": ("train.epochs = 0", "[quick] train.epochs must be a positive integer; received 0"),
    "bad type": ('evaluate.num_samples = "many"', "[quick] evaluate.num_samples must be a positive integer"),
    "not a key": ("train = 3", "[quick] train must name a key, as in train.key = value"),
    "record": ("record.points = 3", "[quick] record: [record] cannot be overridden"),
    "another type's key": ("model.states = 3", "unknown key 'states' in [quick] model.states"),
    "inconsistent": ('data.binarization = "none"',
                     "with its [quick] overrides: [model] decoder = 'bernoulli' needs binary data"),
}  # fmt: skip


@pytest.mark.parametrize("quick", [False, True], ids=["without --quick", "with --quick"])
@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_a_bad_quick_entry_is_a_config_error_naming_it(tmp_path, case, quick):
    line, message = BAD[case]
    text = SMALL.split("[quick]")[0] + "[quick]\n" + line + "\n"
    with pytest.raises(ConfigError) as error:
        load_config(_write(tmp_path, text), quick=quick)
    assert message in str(error.value)
    # the command says the same with status 2, and writes nothing
    args = ["fit", str(tmp_path / "small.toml"), "--out", str(tmp_path / "out")] + (["--quick"] if quick else [])
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and message in _flat(result.output), result.output
    assert not (tmp_path / "out").exists()


def test_quick_without_a_quick_table_is_an_error(tmp_path):
    path = _write(tmp_path, SMALL.split("[quick]")[0])
    load_config(path)  # fine without --quick
    result = runner.invoke(app, ["fit", str(path), "--quick", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "has no [quick] table, so --quick has nothing to apply" in _flat(result.output)
    assert not (tmp_path / "out").exists()
    # and a run whose [quick] has no evaluate.* entries has no quick evaluation
    path = _write(tmp_path, SMALL.split("[quick]")[0].replace("epochs = 40", "epochs = 1") + "[quick]\n"
                  "train.epochs = 1\n", "train_only.toml")  # fmt: skip
    out = tmp_path / "run"
    assert runner.invoke(app, ["fit", str(path), "--out", str(out), "--no-progress"]).exit_code == 0
    result = runner.invoke(app, ["evaluate", str(out), "--quick"])
    assert result.exit_code == 2 and "no evaluate.* overrides in its [quick] table" in _flat(result.output)
    assert not (out / "evaluation.json").exists()


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_has_a_quick_variant_that_validates_and_is_smaller(path):
    full, quick = load_config(path), load_config(path, quick=True)
    assert quick["record"]["quick"] and quick["quick"], f"{path.name} has no [quick] table"
    assert full["quick"] == quick["quick"]
    method = full["train"]["method"]
    work = ("epochs",) if method == "vi" else ("max_iter", "n_init")
    # less training (and never more of anything that costs time), on the same model and data
    assert any(quick["train"][k] < full["train"][k] for k in work), path.name
    assert all(quick["train"][k] <= full["train"][k] for k in work), path.name
    assert quick["model"] == full["model"] and quick["data"] == full["data"], path.name
    points = lambda c: c["evaluate"]["max_points"] or float("inf")  # noqa: E731
    assert points(quick) <= points(full) and quick["evaluate"]["num_samples"] <= full["evaluate"]["num_samples"]


def test_docs_list_every_shipped_config_with_its_times():
    """docs/cli.md's table of configs names each one, with its full and its --quick time."""
    page = (ROOT / "docs" / "cli.md").read_text()
    for path in CONFIGS:
        rows = [line for line in page.splitlines() if line.startswith(f"| `{path.name}`")]
        assert len(rows) == 1, f"docs/cli.md lists {path.name} {len(rows)} times in its table of configs"
        cells = rows[0].split("|")
        assert re.search(r"\d", cells[-3]) and re.search(r"\d", cells[-2]), rows[0]  # the two times


def test_a_shipped_digits_config_fits_and_evaluates_with_quick(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = ROOT / "configs" / "vae_digits.toml"
    result = runner.invoke(app, ["fit", str(config), "--quick", "--no-progress"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "runs" / "vae_digits-quick"
    expected = load_config(config, quick=True)
    assert len(RunDirectory.open(out).read_metrics()) <= expected["train"]["epochs"] < load_config(config)["train"][
        "epochs"]  # fmt: skip
    result = runner.invoke(app, ["evaluate", str(out)])
    assert result.exit_code == 0, result.output
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["quick"] and evaluation["settings"] == expected["evaluate"]
