"""Run directories you can trust: every model type from a config on a user's file, load_run, the
config of record, the lock, and faults (SIGKILL, SIGTERM, divergence, NaN) on real processes."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import elbox
import elbox.runs
from elbox.cli.main import app
from elbox.io import RunDirectory, load_checkpoint

runner = CliRunner()


def _elbox(*args, **kwargs) -> subprocess.Popen:
    """``python -m elbox ARGS`` in a new process (its own session, so signals reach it alone)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "elbox", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True, **kwargs)  # fmt: skip


def _wait_for(condition, timeout=120.0, process=None):
    start = time.monotonic()
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the process ended first (rc {process.returncode}): {process.stdout.read()}")
        if time.monotonic() - start > timeout:
            raise AssertionError("timed out")
        time.sleep(0.005)


def _model_tensors(path: Path) -> dict:
    tensors, _ = load_checkpoint(path)
    return {k: v for k, v in tensors.items() if k.startswith("model.")}


SLOW_VAE = """
[data]
name = "digits"
test = 100
[model]
latent_dim = 2
hidden = [48]
[train]
epochs = {epochs}
batch_size = {batch_size}
lr = 1e-3
seed = 3
"""


def test_sigkill_before_the_first_epoch_ends_leaves_a_resumable_run(tmp_path):
    config = tmp_path / "vae.toml"
    config.write_text(SLOW_VAE.format(epochs=2, batch_size=2))  # ~850 steps in the first epoch
    out = tmp_path / "run"
    process = _elbox("fit", config, "--out", out, "--no-progress")
    run = RunDirectory(out)
    _wait_for(run.has_checkpoint, process=process)  # the epoch-0 checkpoint, written before the first step
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    _, meta = load_checkpoint(run.checkpoint())
    assert meta["epoch"] == 0 and not run.read_metrics()  # killed inside the first epoch
    result = runner.invoke(app, ["fit", str(config), "--out", str(out), "--resume", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2]


def test_sigterm_mid_run_checkpoints_exits_143_and_resumes_bit_for_bit(tmp_path):
    config = tmp_path / "vae.toml"
    config.write_text(SLOW_VAE.format(epochs=12, batch_size=20))
    straight = _elbox("fit", config, "--out", tmp_path / "straight", "--no-progress")
    interrupted = _elbox("fit", config, "--out", tmp_path / "b", "--no-progress")
    run = RunDirectory(tmp_path / "b")
    _wait_for(lambda: len(run.read_metrics()) >= 1, process=interrupted)
    os.killpg(interrupted.pid, signal.SIGTERM)
    output = interrupted.communicate(timeout=120)[0]
    assert interrupted.returncode == 143, output
    assert "SIGTERM" in output and "--resume" in output and "Traceback" not in output
    _, meta = load_checkpoint(run.checkpoint())
    done = meta["epoch"]
    assert 1 <= done < 12
    resumed = _elbox("fit", config, "--out", tmp_path / "b", "--resume", "--no-progress")
    assert resumed.wait(timeout=300) == 0, resumed.stdout.read()
    assert straight.wait(timeout=300) == 0, straight.stdout.read()
    a = _model_tensors(RunDirectory(tmp_path / "straight").checkpoint())
    b = _model_tensors(run.checkpoint())
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    bounds = [r["bound"] for r in RunDirectory(tmp_path / "straight").read_metrics()]
    assert [r["bound"] for r in run.read_metrics()] == bounds


def test_a_second_writer_is_refused_naming_the_first(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from elbox.io import RunLock\n"
        f"with RunLock({str(out)!r}):\n    print('locked', flush=True); time.sleep(60)"
    )], stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        config = tmp_path / "vae.toml"
        config.write_text(SLOW_VAE.format(epochs=1, batch_size=100))
        result = runner.invoke(app, ["fit", str(config), "--out", str(out), "--no-progress"])
        assert result.exit_code == 2, result.output
        text = " ".join(result.output.split())
        assert f"is being written by process {holder.pid}" in text
        assert not (out / "checkpoints").exists()
    finally:
        holder.kill()
        holder.wait()
    # the OS released the lock with the process: the run starts now
    result = runner.invoke(app, ["fit", str(config), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output


SMALL = SLOW_VAE.format(epochs=3, batch_size=200)


def test_an_edited_config_toml_is_refused_naming_the_key(tmp_path):
    config = tmp_path / "vae.toml"
    config.write_text(SMALL)
    out = tmp_path / "run"
    assert runner.invoke(app, ["fit", str(config), "--out", str(out), "--no-progress"]).exit_code == 0
    stored = (out / "config.toml").read_text()
    (out / "config.toml").write_text(stored.replace('activation = "tanh"', 'activation = "relu"'))
    for command in (["evaluate", str(out)], ["report", str(out)],
                    ["fit", str(config), "--out", str(out), "--resume", "--no-progress"]):  # fmt: skip
        result = runner.invoke(app, command)
        text = " ".join(result.output.split())
        assert result.exit_code == 2 and "[model] activation: 'tanh' → 'relu'" in text, (command, result.output)
    with pytest.raises(elbox.runs.config.ConfigError, match="was edited"):
        elbox.load_run(out)
    assert not (out / "evaluation.json").exists()
    # put back, it evaluates; settings come from the command line or a separate file
    (out / "config.toml").write_text(stored)
    settings = tmp_path / "eval.toml"
    settings.write_text("[evaluate]\nnum_samples = 40\nrefine_steps = 0\n")
    result = runner.invoke(app, ["evaluate", str(out), "--evaluate-config", str(settings), "--max-points", "30"])
    assert result.exit_code == 0, result.output
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["settings"]["num_samples"] == 40 and evaluation["report"]["num_points"] == 30
    assert evaluation["report"]["approximation_gap"] is None


def test_a_diverged_run_warns_and_flags_its_metrics(tmp_path):
    config = tmp_path / "vae.toml"
    config.write_text(SLOW_VAE.format(epochs=3, batch_size=100).replace("lr = 1e-3", "lr = 10.0"))
    result = runner.invoke(app, ["fit", str(config), "--out", str(tmp_path / "run"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "diverged" in result.output and "warning" in result.output
    records = RunDirectory(tmp_path / "run").read_metrics()
    assert records[-1]["diverged"] is True


def test_a_non_finite_bound_ends_with_the_message_and_status_1(tmp_path):
    x = np.random.default_rng(0).normal(size=(60, 5)) * 1e200  # squares overflow: the bound is -inf
    np.save(tmp_path / "huge.npy", x)
    config = tmp_path / "fa.toml"
    config.write_text(f'[data]\npath = "{tmp_path / "huge.npy"}"\n[model]\ntype = "fa"\nlatent_dim = 1\n'
                      '[train]\nmethod = "vi"\ninit = "none"\nepochs = 2\n')  # fmt: skip
    result = runner.invoke(app, ["fit", str(config), "--out", str(tmp_path / "run"), "--no-progress"])
    assert result.exit_code == 1, result.output
    assert "non-finite" in result.output and "Traceback" not in result.output
    assert RunDirectory(tmp_path / "run").has_checkpoint()  # the epoch-0 checkpoint, intact


def test_options_that_cannot_be_right_are_refused_up_front(tmp_path):
    x = torch.rand(20, 4)
    vae = elbox.VAE(4, 2, decoder="continuous_bernoulli")
    for bad in ({"adam_eps": float("inf")}, {"lr": float("inf")}, {"lr": float("nan")}):
        with pytest.raises(ValueError, match="positive and finite"):
            elbox.fit(vae, vae.guide, x, epochs=1, **bad)
    config = tmp_path / "vae.toml"
    config.write_text(SMALL.replace("lr = 1e-3", "lr = 1e-3\nadam_eps = inf"))
    result = runner.invoke(app, ["fit", str(config), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "[train] adam_eps must be a positive number" in " ".join(result.output.split())


def test_resume_refuses_fewer_epochs_and_stale_temporaries_are_removed(tmp_path):
    config = tmp_path / "vae.toml"
    config.write_text(SMALL)
    out = tmp_path / "run"
    assert runner.invoke(app, ["fit", str(config), "--out", str(out), "--no-progress"]).exit_code == 0
    before = (out / "config.toml").read_bytes(), RunDirectory(out).checkpoint().read_bytes()
    fewer = tmp_path / "fewer.toml"
    fewer.write_text(SMALL.replace("epochs = 3", "epochs = 2"))
    result = runner.invoke(app, ["fit", str(fewer), "--out", str(out), "--resume", "--no-progress"])
    assert result.exit_code == 2 and "has done 3 epochs" in " ".join(result.output.split())
    assert ((out / "config.toml").read_bytes(), RunDirectory(out).checkpoint().read_bytes()) == before
    stale = out / "checkpoints" / ".last.safetensors.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    more = tmp_path / "more.toml"
    more.write_text(SMALL.replace("epochs = 3", "epochs = 4"))
    assert runner.invoke(app, ["fit", str(more), "--out", str(out), "--resume", "--no-progress"]).exit_code == 0
    assert not stale.exists() and [r["epoch"] for r in RunDirectory(out).read_metrics()] == [1, 2, 3, 4]


def test_a_run_killed_before_its_first_checkpoint_is_started_again(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.toml").write_text("# a run that died while loading its data\n")
    config = tmp_path / "vae.toml"
    config.write_text(SMALL)
    assert runner.invoke(app, ["fit", str(config), "--out", str(out), "--no-progress"]).exit_code == 0
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    result = runner.invoke(app, ["fit", str(config), "--out", str(tmp_path / "mine"), "--no-progress"])
    assert result.exit_code == 2 and (tmp_path / "mine" / "notes.txt").read_text() == "keep"


# Every model type, from a config, on the user's own file.


def _files(tmp_path: Path) -> dict:
    torch.manual_seed(0)
    points, _ = elbox.GaussianMixture(3, 2, loc=4 * torch.randn(3, 2)).double().sample(150)
    np.save(tmp_path / "points.npy", points.numpy())
    np.savetxt(tmp_path / "points.csv", points.numpy(), delimiter=",", header="a,b", comments="")
    seqs, _ = elbox.HMM(2, "gaussian", dim=2, loc=3 * torch.randn(2, 2)).double().sample(30, num_steps=8)
    np.save(tmp_path / "seqs.npy", seqs.numpy())
    paths, _ = elbox.LinearGaussianSSM(2, 3).double().sample(25, num_steps=6)
    lengths = np.random.default_rng(0).integers(2, 7, size=25)
    np.savez(tmp_path / "paths.npz", x=paths.numpy(), lengths=lengths)
    intensities = torch.rand(120, 6, dtype=torch.float64)
    np.savetxt(tmp_path / "intensities.csv", intensities.numpy(), delimiter=",")
    return {"npy": tmp_path / "points.npy", "csv": tmp_path / "points.csv", "seqs": tmp_path / "seqs.npy",
            "npz": tmp_path / "paths.npz", "unit": tmp_path / "intensities.csv"}  # fmt: skip


CASES = {
    "gmm-npy": ("npy", 'type = "gmm"\ncomponents = 3', ""),
    "gmm-csv": ("csv", 'type = "gmm"\ncomponents = 2\ncovariance = "diag"', ""),
    "fa-csv": ("csv", 'type = "fa"\nlatent_dim = 1', ""),
    "ppca-npy": ("npy", 'type = "ppca"\nlatent_dim = 1', ""),
    "hmm-npy": ("seqs", 'type = "hmm"\nstates = 2', ""),
    "lgssm-npz": ("npz", 'type = "lgssm"\nstate_dim = 2', "max_iter = 10\n"),
    "gmm-vi": ("npy", 'type = "gmm"\ncomponents = 3', 'method = "vi"\nepochs = 5\nbatch_size = 50\nlr = 0.05\n'),
    "fa-ml": ("csv", 'type = "fa"\nlatent_dim = 1',
              'method = "vi"\nobjective = "max_likelihood"\nepochs = 5\nbatch_size = 50\nlr = 0.05\n'),
    "vae-csv": ("unit", 'type = "vae"\nlatent_dim = 2\nhidden = [16]\ndecoder = "continuous_bernoulli"',
                "epochs = 3\nbatch_size = 40\n"),
}  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_every_model_type_fits_evaluates_reports_and_loads_from_a_users_file(tmp_path, case):
    files = _files(tmp_path)
    data, model, train = CASES[case]
    config = tmp_path / f"{case}.toml"
    config.write_text(f'[data]\npath = "{files[data]}"\n\n[model]\n{model}\n\n[train]\n{train}\n'
                      "[evaluate]\nnum_samples = 50\nrefine_steps = 20\nrefine_points = 10\n")  # fmt: skip
    out = tmp_path / "run"
    result = runner.invoke(app, ["fit", str(config), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["evaluate", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "evaluation.json").read_text())["report"]
    run = elbox.load_run(out)
    exact = run.model.has_exact_evidence
    if exact:  # the exact log p(x), and the exact gap of its q (EM's: the exact posterior)
        assert report["log_evidence"]["method"] == "exact" and abs(report["gap"]) < 1e-6
        assert "log p(x) − ELBO = KL" in " ".join(result.output.split())
    else:
        assert report["log_evidence"]["method"] == "importance" and report["gap"] > -0.5
    result = runner.invoke(app, ["report", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "report.html").read_text().startswith("<!DOCTYPE html>")
    # load_run round-trips the run: the checkpoint's parameters, the config of record, the history
    tensors = _model_tensors(RunDirectory(out).checkpoint())
    state = run.model.state_dict()
    assert all(torch.equal(state[k[len("model."):]], v) for k, v in tensors.items())
    assert run.config["model"]["type"] == model.split('"')[1] and run.config["record"]["sha256"]
    records = RunDirectory(out).read_metrics()
    assert run.history.n_iter == len(records) and run.history.final == pytest.approx(records[-1]["bound"])
    if exact:
        x = elbox.runs.load_data(run.config, "test")[0]
        log_px = float(run.model.log_evidence(x).detach().mean())
        assert log_px == pytest.approx(report["log_evidence"]["mean"], abs=1e-9)


def test_evaluating_on_a_changed_data_file_is_refused(tmp_path):
    files = _files(tmp_path)
    config = tmp_path / "gmm.toml"
    config.write_text(f'[data]\npath = "{files["npy"]}"\n[model]\ntype = "gmm"\n')
    out = tmp_path / "run"
    assert runner.invoke(app, ["fit", str(config), "--out", str(out), "--no-progress"]).exit_code == 0
    np.save(files["npy"], np.load(files["npy"]) + 1.0)
    result = runner.invoke(app, ["evaluate", str(out)])
    assert result.exit_code == 2 and "has changed since the run was trained" in " ".join(result.output.split())


def test_bad_user_files_get_clear_errors(tmp_path):
    from elbox.data import load_file

    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="not a readable .npy"):
        load_file(tmp_path / "objects.npy")
    np.savez(tmp_path / "keys.npz", weights=np.ones(3))
    with pytest.raises(ValueError, match=r"must hold the data under one of \['x', 'values', 'data'\]"):
        load_file(tmp_path / "keys.npz")
    (tmp_path / "text.csv").write_text("a,b\n1,2\nx,4\n")
    with pytest.raises(ValueError, match="not a readable .csv"):
        load_file(tmp_path / "text.csv")
    (tmp_path / "data.txt").write_text("1 2\n")
    with pytest.raises(ValueError, match=r"must be a .npy, .npz, .csv file"):
        load_file(tmp_path / "data.txt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_file(tmp_path / "absent.npy")
    np.save(tmp_path / "flat.npy", np.ones(5))
    with pytest.raises(ValueError, match=r"must hold an array \[N, D\]"):
        load_file(tmp_path / "flat.npy")


def test_a_deterministic_encoder_is_reported_with_infinite_bounds_not_a_crash(tmp_path):
    from elbox.evidence import EvidenceReport

    config = tmp_path / "ae.toml"
    config.write_text(SMALL.replace("hidden = [48]", "hidden = [48]\ndeterministic_encoder = true")
                      + "[evaluate]\nnum_samples = 40\nrefine_points = 10\n")  # fmt: skip
    out = tmp_path / "run"
    assert runner.invoke(app, ["fit", str(config), "--out", str(out), "--no-progress"]).exit_code == 0
    result = runner.invoke(app, ["report", str(out)])
    assert result.exit_code == 0, result.output
    assert "−∞" in result.output and "point mass" in " ".join(result.output.split())
    saved = json.loads((out / "evaluation.json").read_text())["report"]
    assert saved["elbo"]["mean"] is None and saved["gap"] is None  # JSON has no infinities
    report = EvidenceReport.from_dict(saved)  # and the schema reads them back
    assert report.elbo["mean"] == -math.inf and report.iwae["mean"] == -math.inf and report.gap == math.inf
    assert report.kl["mean"] == math.inf and math.isfinite(report.log_evidence["mean"])
    assert report.log_evidence["proposal"] == "prior"


def test_tensorboard_event_files_hold_the_metrics(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = tmp_path / "vae.toml"
    config.write_text(SMALL + "\n[log]\ntensorboard = true\n")
    out = tmp_path / "run"
    assert runner.invoke(app, ["fit", str(config), "--out", str(out), "--no-progress"]).exit_code == 0
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    bounds = [e.value for e in events.Scalars("bound")]
    assert bounds == pytest.approx([r["bound"] for r in RunDirectory(out).read_metrics()], rel=1e-6)
    assert {"kl", "reconstruction", "lr"} <= set(events.Tags()["scalars"])


def test_training_and_loading_a_run_leave_the_callers_random_state_as_it_was(tmp_path):
    """Building a run's model seeds torch's RNG with [train] seed inside the call alone: train_run and
    load_run (a notebook's calls between its own draws) put the caller's state back, and the model
    is the same whatever that state was."""
    from elbox.runs import build_model, train_run

    files = _files(tmp_path)
    config = tmp_path / "vae.toml"
    config.write_text(f'[data]\npath = "{files["unit"]}"\n[model]\ntype = "vae"\nlatent_dim = 2\nhidden = [8]\n'
                      "[train]\nepochs = 1\nbatch_size = 40\n")  # fmt: skip
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    train_run(config, tmp_path / "run")
    assert torch.equal(torch.random.get_rng_state(), state)
    run = elbox.load_run(tmp_path / "run")
    assert torch.equal(torch.random.get_rng_state(), state)
    first = build_model(run.config)[0].state_dict()
    torch.manual_seed(7)
    again = build_model(run.config)[0].state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)


def test_em_metrics_are_the_kept_restarts_and_factor_analysis_keeps_its_fast_path(tmp_path, monkeypatch):
    """With n_init > 1 the metrics were the last restart's iterations, not the kept one's; and the
    metrics callback sent factor analysis down its per-point E-steps instead of its statistics."""
    from elbox.runs import train_run

    torch.manual_seed(0)
    points, _ = elbox.GaussianMixture(4, 2, loc=3 * torch.randn(4, 2)).double().sample(200)
    np.save(tmp_path / "points.npy", points.numpy())
    config = tmp_path / "gmm.toml"
    config.write_text('[data]\npath = "points.npy"\n[model]\ntype = "gmm"\ncomponents = 4\n'
                      "[train]\nn_init = 4\nseed = 1\n")  # fmt: skip
    history = train_run(config, tmp_path / "gmm")["history"]
    assert history.restarts[-1] != max(history.restarts)  # the last restart is not the kept one
    bounds = [r["bound"] for r in RunDirectory(tmp_path / "gmm").read_metrics()]
    assert bounds == history.lower_bound and bounds[-1] == max(history.restarts)

    steps = []
    e_step = elbox.FactorAnalysis.e_step
    monkeypatch.setattr(elbox.FactorAnalysis, "e_step", lambda self, *a, **k: steps.append(1) or e_step(self, *a, **k))
    factors, _ = elbox.FactorAnalysis(6, 2).double().sample(300)
    np.save(tmp_path / "factors.npy", factors.numpy())
    config = tmp_path / "fa.toml"
    config.write_text('[data]\npath = "factors.npy"\n[model]\ntype = "fa"\nlatent_dim = 2\n'
                      '[train]\ninit = "random"\ntol = 1e-9\n')  # fmt: skip
    history = train_run(config, tmp_path / "fa")["history"]
    assert history.n_iter > 2 and len(steps) < history.n_iter  # the iterations ran on the statistics
