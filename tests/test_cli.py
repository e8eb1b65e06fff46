"""The command line end to end in temporary directories (typer's CliRunner): fit, evaluate and
the demos, and the errors for bad input, which leave every existing file as it was."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from elbox.cli.main import app
from elbox.io import RunDirectory, load_checkpoint
from elbox.runs.config import SCHEMA, ConfigError, load_config, parse_config

runner = CliRunner()
CONFIGS = Path(__file__).parent.parent / "configs"

SMALL = """
[data]
name = "digits"
validation = 100
test = 100

[model]
latent_dim = 2
hidden = [32]

[train]
epochs = 4
batch_size = 200
lr = 3e-3
seed = 1

[evaluate]
num_samples = 64
chunk_size = 32
batch_size = 50
"""


def _write(tmp_path, text=SMALL, name="small.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _snapshot(directory: Path) -> dict:
    return {p: p.read_bytes() for p in directory.rglob("*") if p.is_file()}


def test_help_lists_the_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("fit", "evaluate", "demo"):
        assert command in result.output


def test_fit_then_evaluate_end_to_end(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["fit", str(_write(tmp_path)), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    run = RunDirectory.open(out)
    assert len(run.read_metrics()) == 4
    for name in ("training.png", "reconstructions.png", "samples.png", "latent_space.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    saved = load_config(run.config)  # the run keeps its full config, defaults filled in
    assert saved["model"]["latent_dim"] == 2 and saved["train"]["adam_eps"] == 1e-8
    _, meta = load_checkpoint(run.checkpoint())
    assert meta["epoch"] == 4 and "latent_dim = 2" in meta["config"]

    result = runner.invoke(app, ["evaluate", str(out)])
    assert result.exit_code == 0, result.output
    for word in ("ELBO", "reconstruction", "KL", "IWAE-50", "log p(x)", "CUBO-2", "gap", "approximation gap",
                 "amortization gap", "k̂", "active units"):  # fmt: skip
        assert word in result.output, word
    evaluation = json.loads((out / "evaluation.json").read_text())
    r = evaluation["report"]
    assert r["log_evidence"]["num_samples"] == 64 and evaluation["data"] == "digits test set, 100 points"
    assert r["elbo"]["mean"] == pytest.approx(r["reconstruction"]["mean"] - r["kl"]["mean"], abs=1e-9)
    # ELBO < IWAE-50 and ELBO < log p̂ < CUBO on average over the points (IWAE-50 ≤ IWAE-64 holds only
    # in expectation: here the 50 are the first of the same 64 particles)
    assert r["elbo"]["mean"] < r["iwae"]["mean"] and r["elbo"]["mean"] < r["log_evidence"]["mean"]
    assert r["log_evidence"]["mean"] < r["upper_bound"]["mean"]
    assert r["approximation_gap"]["mean"] + r["amortization_gap"]["mean"] == pytest.approx(r["gap_refined"])
    assert len(r["per_point"]["khat"]) == 100 and r["latent_units"] == 2

    # `elbox report` writes the page and the JSON from that evaluation, without evaluating again
    result = runner.invoke(app, ["report", str(out)])
    assert result.exit_code == 0, result.output
    page = (out / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count("data:image/png;base64,") == 5
    assert f"{r['gap']:.3f}" in page
    saved = json.loads((out / "report.json").read_text())
    assert saved["report"] == r and len(saved["training"]) == 4

    # --resume continues to more epochs
    more = _write(tmp_path, SMALL.replace("epochs = 4", "epochs = 6"), "more.toml")
    result = runner.invoke(app, ["fit", str(more), "--out", str(out), "--resume", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2, 3, 4, 5, 6]


def test_fit_errors_name_the_key_and_overwrite_nothing(tmp_path):
    out = tmp_path / "run"
    assert runner.invoke(app, ["fit", str(_write(tmp_path)), "--out", str(out), "--no-progress"]).exit_code == 0
    before = _snapshot(tmp_path)

    cases = {
        "typo.toml": (SMALL.replace("latent_dim", "latnt_dim"),
                      "unknown key 'latnt_dim' in [model]; did you mean 'latent_dim'"),
        "value.toml": (SMALL.replace("lr = 3e-3", "lr = -1"), "[train] lr must be a positive number; received -1"),
        "type.toml": (SMALL.replace("epochs = 4", 'epochs = "four"'), "[train] epochs must be a positive integer"),
        "section.toml": (SMALL + "\n[trian]\n", "unknown section [trian]; did you mean 'train'"),
        "broken.toml": ("[data\n", "not valid TOML"),
        "bernoulli.toml": (SMALL.replace('name = "digits"', 'name = "digits"\nbinarization = "none"'),
                           "decoder = 'bernoulli' needs binary data"),
        "mnist.toml": (SMALL.replace('name = "digits"', f'name = "mnist"\nroot = "{tmp_path / "nowhere"}"'),
                       "the MNIST directory"),
    }  # fmt: skip
    for name, (text, message) in cases.items():
        result = runner.invoke(app, ["fit", str(_write(tmp_path, text, name)), "--out", str(tmp_path / f"out-{name}")])
        assert result.exit_code == 2, (name, result.output)
        assert message in " ".join(result.output.split()), (name, result.output)
        assert not (tmp_path / f"out-{name}").exists()
        before[tmp_path / name] = (tmp_path / name).read_bytes()

    # an existing run is not overwritten by a fresh fit; a missing config is named
    result = runner.invoke(app, ["fit", str(_write(tmp_path)), "--out", str(out)])
    assert result.exit_code == 2 and "not empty" in result.output
    result = runner.invoke(app, ["fit", str(tmp_path / "missing.toml"), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "missing.toml does not exist" in " ".join(result.output.split())
    # resuming with a changed config names the key
    changed = _write(tmp_path, SMALL.replace("latent_dim = 2", "latent_dim = 3"), "changed.toml")
    before[changed] = changed.read_bytes()
    result = runner.invoke(app, ["fit", str(changed), "--out", str(out), "--resume"])
    assert result.exit_code == 2 and "[model] latent_dim is 3" in " ".join(result.output.split())
    assert _snapshot(tmp_path) == before


def test_evaluate_rejects_what_is_not_a_run(tmp_path):
    (tmp_path / "notes.txt").write_text("not a run")
    before = _snapshot(tmp_path)
    result = runner.invoke(app, ["evaluate", str(tmp_path)])
    assert result.exit_code == 2 and "is not an elbox run directory" in " ".join(result.output.split())
    assert "config.toml" in result.output
    result = runner.invoke(app, ["evaluate", str(tmp_path / "absent")])
    assert result.exit_code == 2 and "does not exist" in result.output
    assert _snapshot(tmp_path) == before


def test_ready_configs_are_valid_and_the_iwae_one_is_the_papers():
    for path in CONFIGS.glob("*.toml"):
        load_config(path)
    paper = load_config(CONFIGS / "iwae_paper_vae.toml")
    assert paper["model"]["hidden"] == [200, 200] and paper["model"]["latent_dim"] == 50
    assert paper["model"]["activation"] == "tanh" and paper["data"]["binarization"] == "dynamic"
    assert paper["train"]["batch_size"] == 20 and paper["train"]["adam_eps"] == 1e-4
    assert paper["train"]["schedule"] == "iwae" and paper["train"]["epochs"] == 3280
    assert paper["evaluate"]["num_samples"] == 5000


def test_every_schema_default_is_accepted():
    config = parse_config({})
    assert set(config) == set(SCHEMA)
    with pytest.raises(ConfigError, match="must be a table"):
        parse_config({"train": 3})


def test_vae_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--epochs", "3", "--sweep-epochs", "2", "--no-progress"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "log p(x)" in result.output and "β sweep" in result.output
    for name in ("training", "reconstructions", "samples", "latent_space", "beta_sweep"):
        assert (out / f"{name}.png").stat().st_size > 0, name
    sweep = json.loads((out / "beta_sweep.json").read_text())
    assert [row["beta"] for row in sweep] == [0.25, 0.5, 1.0, 2.0, 4.0]
    # an existing run is refused, as `elbox fit` refuses it; --force replaces the demo's own previous run, but
    # never a directory of other files
    before = (out / "config.toml").read_bytes()
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "--force" in result.output and (out / "config.toml").read_bytes() == before
    assert runner.invoke(app, [*args, "--force"]).exit_code == 0
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    result = runner.invoke(app, ["demo", "--out", str(other), "--epochs", "1", "--sweep-epochs", "0", "--force"])
    assert result.exit_code == 2 and (other / "keep.txt").read_text() == "mine"


def test_gmm_demo_end_to_end(tmp_path):
    out = tmp_path / "run"
    args = ["demo", "--model", "gmm", "--out", str(out), "--vi-epochs", "150", "--components", "4"]
    result = runner.invoke(app, args)
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


def test_demo_rejects_bad_options(tmp_path):
    result = runner.invoke(app, ["demo", "--model", "gmm", "--out", str(tmp_path / "a"), "--pca", "100"])
    assert result.exit_code != 0 and "pca" in result.output.lower()
    result = runner.invoke(app, ["demo", "--model", "hmm", "--out", str(tmp_path / "b")])
    assert result.exit_code == 2 and "--model must be 'vae' or 'gmm'" in result.output


def test_an_objective_without_num_samples_gets_its_own_default_recorded_in_the_config():
    """[train] objective = "iwae" without num_samples trained the ELBO (one particle), silently: the
    objective's own default (IWAE's 5) is used and written in the config of record."""
    from elbox.runs import build_model, build_objective

    record = {"dim": 64, "symbols": 0, "points": 10, "steps": 0, "inputs": 0, "sha256": ""}
    config = parse_config({"data": {"name": "digits"}, "model": {"latent_dim": 2, "hidden": [8]},
                           "train": {"objective": "iwae"}, "record": record})  # fmt: skip
    assert config["train"]["num_samples"] == 5
    assert build_objective(config, *build_model(config)).num_samples == 5
    assert parse_config({"train": {"objective": "iwae", "num_samples": 2}})["train"]["num_samples"] == 2
    assert parse_config({})["train"]["num_samples"] == 1


def test_whether_a_guide_is_built_is_the_objectives_to_say_not_its_name():
    """A guide was built unless the objective was named "max_likelihood": an objective of the
    model alone registered under another name got one, and num_samples was passed to objectives
    that take none."""
    from elbox.objectives import MaxLikelihood, register_objective
    from elbox.runs import build_model, build_objective

    @register_objective("likelihood_alone")
    class LikelihoodAlone(MaxLikelihood):
        pass

    record = {"dim": 3, "symbols": 0, "points": 10, "steps": 0, "inputs": 0, "sha256": ""}
    config = parse_config({"data": {"path": "x.npy"}, "model": {"type": "fa", "latent_dim": 1},
                           "train": {"method": "vi", "objective": "likelihood_alone"}, "record": record})  # fmt: skip
    model, guide = build_model(config)
    assert guide is None and build_objective(config, model, guide).guide is None
    config["train"]["num_samples"] = 4
    with pytest.raises(ConfigError, match="num_samples = 4: objective = 'likelihood_alone' draws no particles"):
        build_objective(config, model, guide)
