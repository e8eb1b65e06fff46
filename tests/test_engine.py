"""The training engine: run directories, exact resume, the NaN guard, schedules, validation and
early stopping."""

from __future__ import annotations

import json
import math

import pytest
import torch

import elbox
from elbox.inference.schedules import iwae_schedule, kl_weight, lr_schedule
from elbox.io import RunDirectory, load_checkpoint
from elbox.objectives import ELBO, Output


def _data(n=240, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.rand(4, 16, generator=g)
    return centers[torch.randint(0, 4, (n,), generator=g)].clamp(0.05, 0.95)  # intensities in [0, 1]


def _vae(seed=1):
    torch.manual_seed(seed)
    return elbox.VAE(16, 3, hidden=(24,), decoder="bernoulli")


OPTIONS = dict(epochs=6, batch_size=50, lr=3e-3, seed=0, binarization="dynamic", num_samples=2)


def _same_parameters(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _interrupt_after(calls: int, monkeypatch):
    """Makes the engine's objective raise KeyboardInterrupt on its ``calls + 1``-th call (mid-epoch)."""
    real, count = ELBO.forward, {"n": 0}

    def interrupted(self, batch):
        count["n"] += 1
        if count["n"] > calls:
            raise KeyboardInterrupt
        return real(self, batch)

    monkeypatch.setattr(ELBO, "forward", interrupted)


# Each epoch calls the bound 6 times: 5 steps and one validation. 12: interrupted as epoch 3
# begins; 15: in the middle of epoch 3.
@pytest.mark.parametrize("steps_before_interrupt", [12, 15])
def test_resume_equals_an_uninterrupted_run(tmp_path, monkeypatch, steps_before_interrupt):
    x, valid = _data(), _data(60, seed=1)
    straight = _vae()
    history = elbox.fit(straight, straight.guide, x, validation=valid, run_dir=tmp_path / "a", **OPTIONS)

    resumed = _vae()
    with monkeypatch.context() as m:
        _interrupt_after(steps_before_interrupt, m)
        with pytest.raises(KeyboardInterrupt):
            elbox.fit(resumed, resumed.guide, x, validation=valid, run_dir=tmp_path / "b", **OPTIONS)
    run = RunDirectory(tmp_path / "b")
    _, meta = load_checkpoint(run.checkpoint())
    assert meta["epoch"] == 2  # the partial epoch is lost
    resumed = _vae(seed=7)  # different initial values: all state must come from the checkpoint
    again = elbox.fit(resumed, resumed.guide, x, validation=valid, run_dir=tmp_path / "b", resume=True, **OPTIONS)

    assert _same_parameters(straight, resumed)
    assert again.steps == history.steps and again.lower_bound == history.lower_bound
    assert again.validation == history.validation and again.kl == history.kl
    a, b = RunDirectory(tmp_path / "a").read_metrics(), run.read_metrics()
    assert [r["epoch"] for r in b] == list(range(1, 7))
    assert [r["bound"] for r in a] == [r["bound"] for r in b]


def test_resume_can_extend_a_finished_run(tmp_path):
    x = _data()
    straight = _vae()
    elbox.fit(straight, straight.guide, x, **OPTIONS)
    short = _vae()
    elbox.fit(short, short.guide, x, run_dir=tmp_path, **{**OPTIONS, "epochs": 4})
    elbox.fit(short, short.guide, x, run_dir=tmp_path, resume=True, **OPTIONS)
    assert _same_parameters(straight, short)


def test_resume_refuses_changed_options_and_fresh_fits_refuse_an_existing_run(tmp_path):
    x = _data()
    vae = _vae()
    elbox.fit(vae, vae.guide, x, run_dir=tmp_path, **{**OPTIONS, "epochs": 2})
    before = RunDirectory(tmp_path).checkpoint().read_bytes()
    with pytest.raises(FileExistsError, match="resume=True"):
        elbox.fit(vae, vae.guide, x, run_dir=tmp_path, **OPTIONS)
    with pytest.raises(ValueError, match="batch_size=50"):
        elbox.fit(vae, vae.guide, x, run_dir=tmp_path, resume=True, **{**OPTIONS, "batch_size": 40})
    assert RunDirectory(tmp_path).checkpoint().read_bytes() == before
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        elbox.fit(vae, vae.guide, x, run_dir=tmp_path / "empty", resume=True, **OPTIONS)
    with pytest.raises(ValueError, match="run_dir"):
        elbox.fit(vae, vae.guide, x, resume=True, **OPTIONS)


def test_nan_guard_names_the_term_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    x = _data()
    vae = _vae()
    real, calls, saved = ELBO.forward, {"n": 0}, {}

    def poisoned(self, batch):
        out = real(self, batch)
        calls["n"] += 1
        if calls["n"] == 12:  # epoch 3 (from 1), second step
            out = Output(out.value, out.surrogate * math.nan, {**out.parts, "kl": out.parts["kl"] * math.nan})
        return out

    def remember(epoch, history):
        saved[epoch] = RunDirectory(tmp_path).checkpoint().read_bytes()

    monkeypatch.setattr(ELBO, "forward", poisoned)
    with pytest.raises(FloatingPointError, match=r"non-finite in epoch 2, step 1 \(non-finite term: kl\).*intact"):
        elbox.fit(vae, vae.guide, x, run_dir=tmp_path, callbacks=remember, **OPTIONS)
    assert RunDirectory(tmp_path).checkpoint().read_bytes() == saved[1]
    tensors, meta = load_checkpoint(RunDirectory(tmp_path).checkpoint())
    assert meta["epoch"] == 2 and all(torch.isfinite(t).all() for k, t in tensors.items() if k.startswith("model."))
    assert len(RunDirectory(tmp_path).read_metrics()) == 2


def test_checkpoints_hold_the_config_and_are_written_atomically(tmp_path, monkeypatch):
    import os

    x = _data()
    vae = _vae()
    elbox.fit(vae, vae.guide, x, run_dir=tmp_path, config="[train]\nepochs = 2\n", **{**OPTIONS, "epochs": 2})
    path = RunDirectory(tmp_path).checkpoint()
    before = path.read_bytes()
    _, meta = load_checkpoint(path)
    assert meta["config"].startswith("[train]") and meta["format"] == "elbox-checkpoint-1"

    def crash(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        elbox.fit(vae, vae.guide, x, run_dir=tmp_path, resume=True, **{**OPTIONS, "epochs": 3})
    assert path.read_bytes() == before
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_history_and_metrics_record_the_terms(tmp_path):
    x = _data()
    vae = _vae()
    history = elbox.fit(vae, vae.guide, x, run_dir=tmp_path, kl_warmup=4, **OPTIONS)
    records = RunDirectory(tmp_path).read_metrics()
    assert [r["beta"] for r in records] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    for r, bound, rec, kl in zip(records, history.lower_bound, history.reconstruction, history.kl):
        assert r["bound"] == bound and r["reconstruction"] == rec and r["kl"] == kl
        # per epoch, the recorded ELBO is reconstruction − KL (β does not enter it)
        assert bound == pytest.approx(rec - kl, rel=1e-5)
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 30


def test_iwae_schedule_is_the_papers():
    schedule = iwae_schedule()
    assert schedule.epochs == 3280
    multipliers = [schedule.multiplier(e) for e in range(3280)]
    for i in range(8):
        start = sum(3**j for j in range(i))
        stage = multipliers[start : start + 3**i]
        assert len(stage) == 3**i and all(m == pytest.approx(10 ** (-i / 7)) for m in stage)
        assert schedule.stage(start) == i
    assert schedule.multiplier(5000) == pytest.approx(10**-1)


def test_the_engine_applies_the_schedule(tmp_path):
    x = _data(40)
    vae = _vae()
    history = elbox.fit(vae, vae.guide, x, epochs=None, schedule=iwae_schedule(3), lr=1e-3, batch_size=40,
                        seed=0, binarization="dynamic")  # fmt: skip
    assert history.n_iter == 13
    expected = [1e-3] + [1e-3 * 10 ** (-1 / 7)] * 3 + [1e-3 * 10 ** (-2 / 7)] * 9
    assert history.lr == pytest.approx(expected)
    cosine = lr_schedule("cosine", 5, final=0.1)
    assert [round(cosine.multiplier(e), 6) for e in (0, 4)] == [1.0, 0.1]
    assert kl_weight(0, 2.0, 4) == 0.5 and kl_weight(10, 2.0, 4) == 2.0
    with pytest.raises(ValueError, match="schedule must be one of"):
        lr_schedule("linear")
    with pytest.raises(ValueError, match="epochs=None"):
        elbox.fit(vae, vae.guide, x, epochs=None, binarization="dynamic")


def test_early_stopping_restores_the_best_parameters(tmp_path):
    x, valid = _data(), _data(60, seed=1)
    vae = _vae()
    # lr so large that the validation bound soon stops improving
    history = elbox.fit(vae, vae.guide, x, epochs=200, batch_size=50, lr=0.05, seed=0, binarization="dynamic",
                        validation=valid, patience=3, run_dir=tmp_path)  # fmt: skip
    assert history.stopped_early and history.n_iter < 200
    assert history.n_iter - history.best_epoch == 3
    assert max(history.validation) == history.validation[history.best_epoch - 1]
    tensors, meta = load_checkpoint(RunDirectory(tmp_path).checkpoint("best"))
    assert meta["epoch"] == history.best_epoch
    best = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    assert all(torch.equal(v, best[k]) for k, v in vae.state_dict().items())
    # without a run directory, the best parameters are kept in memory
    other = _vae()
    h = elbox.fit(other, other.guide, x, epochs=200, batch_size=50, lr=0.05, seed=0, binarization="dynamic",
                  validation=valid, patience=3)  # fmt: skip
    assert h.best_epoch == history.best_epoch and _same_parameters(other, vae)


def test_dynamic_binarization_checks_intensities():
    vae = _vae()
    with pytest.raises(ValueError, match=r"intensities in \[0, 1\]"):
        elbox.fit(vae, vae.guide, _data() * 2, epochs=1, binarization="dynamic")
    with pytest.raises(ValueError, match="binarization must be"):
        elbox.fit(vae, vae.guide, _data(), epochs=1, binarization="fixed")
    with pytest.raises(ValueError, match="the Bernoulli decoder needs binary data"):
        elbox.fit(vae, vae.guide, _data(), epochs=1)
    with pytest.raises(ValueError, match="shape"):
        elbox.fit(vae, vae.guide, torch.rand(10, 15), epochs=1, binarization="dynamic")


def test_progress_bar_runs(capsys):
    x = _data()
    vae = _vae()
    elbox.fit(vae, vae.guide, x, progress=True, **{**OPTIONS, "epochs": 2})
    assert "bound" in capsys.readouterr().out


def test_stopping_early_is_not_convergence():
    """Early stopping says the validation bound stopped improving, not that a tolerance was met:
    history.converged (EM's tolerance) stays False for a stochastic-gradient fit."""
    x, valid = _data(), _data(60, seed=1)
    vae = _vae()
    history = elbox.fit(vae, vae.guide, x, epochs=200, batch_size=50, lr=0.05, seed=0, binarization="dynamic",
                        validation=valid, patience=3)  # fmt: skip
    assert history.stopped_early and not history.converged
