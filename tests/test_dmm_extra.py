"""Deep Markov models, continued: a categorical z_t against the HMM's forward algorithm (float64
identities by enumeration over every path, SMC unbiasedness)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import elbox
from elbox import DeepMarkovModel, Sequences
from elbox.bounds.sequence import elbo_steps, smc
from elbox.guides.sequence import GUIDE_KINDS
from tests.test_dmm import _linear_dmm

LENGTHS = torch.tensor([4, 2, 1, 4])


def _categorical_dmm(emission: str, K: int = 3, obs: int = 4, seed: int = 0) -> DeepMarkovModel:
    """A DMM with K discrete states (an HMM whose emissions come from an MLP of the one-hot state)."""
    torch.manual_seed(seed)
    model = DeepMarkovModel(obs, K, latent="categorical", emission=emission, emission_hidden=(5,))
    with torch.no_grad():
        model.initial_logits.normal_()
        model.transition_logits.normal_()
    return model


def _perturbed(guide, scale: float):
    with torch.no_grad():
        for p in guide.parameters():
            p.add_(scale * torch.randn_like(p))
    return guide


def _every_path(K: int, T: int, B: int) -> torch.Tensor:
    """All K^T paths, for every sequence, ``[K^T, B, T]`` (past each end too: there uniform under p and q)."""
    return torch.tensor(list(itertools.product(range(K), repeat=T))).unsqueeze(1).expand(-1, B, -1)


@pytest.mark.parametrize("emission", ["gaussian", "categorical", "bernoulli"])
def test_a_categorical_dmm_has_the_forward_algorithms_evidence_and_posterior(emission):
    model = _categorical_dmm(emission)
    x, _ = model.sample(len(LENGTHS), num_steps=int(LENGTHS.max()))
    x = Sequences(x, lengths=LENGTHS)
    log_px = model.log_evidence(x)
    paths = _every_path(3, int(LENGTHS.max()), len(LENGTHS))
    log_joint = model.log_joint(x, paths)  # [K^T, B]
    torch.testing.assert_close(log_joint.logsumexp(0), log_px, rtol=0, atol=1e-10)  # brute force over paths
    torch.testing.assert_close(model.posterior(x).log_prob(paths), log_joint - log_px, rtol=0, atol=1e-10)
    if emission != "bernoulli":  # the HMM class itself (it has no Bernoulli emissions)
        hmm = model.to_hmm()
        torch.testing.assert_close(hmm.log_evidence(x), log_px, rtol=0, atol=1e-10)
    else:
        with pytest.raises(TypeError, match="Bernoulli"):
            model.to_hmm()
    assert model.has_exact_evidence


@pytest.mark.parametrize("kind", GUIDE_KINDS)
@pytest.mark.parametrize("emission", ["gaussian", "categorical"])
def test_log_evidence_is_the_exact_elbo_plus_kl_to_the_posterior_by_enumeration(kind, emission):
    model = _categorical_dmm(emission)
    x, _ = model.sample(len(LENGTHS), num_steps=int(LENGTHS.max()))
    x = Sequences(x, lengths=LENGTHS)
    guide = _perturbed(model.guide(kind, rnn_dim=6), 0.5)
    log_px = model.to_hmm().log_evidence(x)  # the HMM's forward algorithm
    terms = elbox.elbo(model, guide, x)
    assert terms.kl_method == "analytic"
    # KL(q ‖ p(z | x)) by enumeration over every path, p(z | x) = p(x, z) / p(x)
    paths = _every_path(3, int(LENGTHS.max()), len(LENGTHS))
    q = guide(model.check_data(x))
    log_q = q.log_prob(paths)
    assert torch.allclose(log_q.logsumexp(0), torch.zeros(len(LENGTHS)), atol=1e-12)  # q is normalized
    kl = (log_q.exp() * (log_q - model.log_joint(x, paths) + log_px)).sum(0)
    torch.testing.assert_close(terms.value + kl, log_px, rtol=0, atol=1e-10)
    assert (kl > 0).all()
    # the registered chain-to-chain KL against the forward–backward posterior is the same number
    torch.testing.assert_close(torch.distributions.kl_divergence(q, model.posterior(x)), kl, rtol=0, atol=1e-10)
    # the ELBO per step is exact too, and sums to it
    steps = elbo_steps(model, guide, x)
    mask = model.check_data(x).mask
    assert steps.kl_method == "enumerate" and (steps.value[~mask] == 0).all() and (steps.kl[mask] >= 0).all()
    torch.testing.assert_close(steps.value.sum(-1), terms.value, rtol=0, atol=1e-10)


def test_the_exact_posterior_as_guide_closes_the_gap():
    """ELBO = log p(x) when q is p(z | x): the KL and the reconstruction taken over the same chain."""
    model = _categorical_dmm("categorical")
    x, _ = model.sample(3, num_steps=5)
    terms = elbox.elbo(model, elbox.guides.Exact(model), x)
    torch.testing.assert_close(terms.value, model.log_evidence(x), rtol=0, atol=1e-10)


@pytest.mark.parametrize("emission", ["gaussian", "bernoulli"])
def test_smc_over_discrete_paths_is_unbiased_for_the_forward_algorithm(emission):
    model = _categorical_dmm(emission)
    x, _ = model.sample(len(LENGTHS), num_steps=int(LENGTHS.max()))
    xs = model.check_data(Sequences(x, lengths=LENGTHS))
    log_px = model.log_evidence(xs)
    guide = _perturbed(model.guide("st-r", rnn_dim=6), 0.3)
    R, B = 3000, len(LENGTHS)
    replicas = Sequences(xs.values.repeat(R // 2, 1, 1), xs.mask.repeat(R // 2, 1))  # runs side by side
    torch.manual_seed(1)
    with torch.no_grad():
        runs = torch.cat([smc(model, guide, replicas, num_samples=4, resample=resample).log_z.view(R // 2, B)
                          for resample in ("systematic", "multinomial")])  # fmt: skip  # [R, B]
    ratio = (runs - log_px).exp()  # Ẑ / p(x)
    mean, se = ratio.mean(0), ratio.std(0) / math.sqrt(R)
    assert ((mean - 1).abs() < 4 * se).all(), (mean, se)
    assert (runs.mean(0) < log_px).all()  # log Ẑ is biased low (Jensen)
    estimate = elbox.log_evidence(model, xs, guide=guide, method="smc", num_samples=64, num_runs=8)
    assert ((estimate.value - log_px).abs() < 4 * estimate.stderr + 1e-3).all()


def test_a_categorical_dmm_trains_by_the_exact_elbo_and_refuses_fivo():
    torch.manual_seed(0)
    model = _categorical_dmm("categorical")
    x, _ = model.sample(16, num_steps=6)
    guide = model.guide("st-r", rnn_dim=8)
    before = elbox.elbo(model, guide, x).value.mean()
    history = elbox.fit(model, guide, x, epochs=20, batch_size=16, lr=3e-2)
    after = elbox.elbo(model, guide, x).value
    assert all(math.isfinite(v) for v in history.lower_bound) and after.mean() > before  # exact: no noise
    assert (after <= model.log_evidence(x) + 1e-10).all()
    with pytest.raises(TypeError, match="pathwise"):
        elbox.objectives.FIVO(model, guide)


def test_a_categorical_dmm_refuses_a_guide_for_another_number_of_states_and_inputs():
    model = _categorical_dmm("categorical")
    x, _ = model.sample(2, num_steps=3)
    other = DeepMarkovModel(4, 5, latent="categorical", emission="categorical").guide(rnn_dim=4)
    with pytest.raises(ValueError, match="support"):
        elbox.elbo(model, other, x)
    with pytest.raises(ValueError, match="input_dim"):
        DeepMarkovModel(4, 3, latent="categorical", input_dim=2)
    with pytest.raises(ValueError, match="latent must be one of"):
        DeepMarkovModel(4, 3, latent="poisson")
    with pytest.raises(TypeError, match="latent='categorical'"):
        DeepMarkovModel(4, 3, emission_hidden=()).log_evidence(torch.zeros(1, 2, 4))


# Forecasts by simulation, against the exact forecast of the same model as an LGSSM.




@pytest.mark.parametrize("proposal", ["prior", "guide"])
def test_a_simulated_forecast_agrees_with_the_exact_lgssm_forecast_within_its_error(proposal):
    """Means and interval bounds of the linear-Gaussian DMM's simulated forecast (filter, then
    transitions) within 5 Monte Carlo standard errors of the Kalman forecast of to_lgssm(), ragged
    sequences each from its own end; the errors are the spread of 32 independent runs (t with 31
    degrees of freedom: P(|t| > 5) ≈ 2e-5 per figure, 90 figures)."""
    model = _linear_dmm()
    x, _ = model.sample(5, num_steps=6)
    x = Sequences(x, lengths=torch.tensor([6, 4, 1, 6, 3]))
    exact = model.to_lgssm().forecast(x, 3, level=0.8)
    guide = model.guide("st-r", rnn_dim=8) if proposal == "guide" else None
    torch.manual_seed(3)
    forecast = model.forecast(x, steps=3, level=0.8, guide=guide, num_samples=4096, num_particles=256, num_runs=32)
    assert forecast.method == "simulation" and forecast.num_samples == 4096 and forecast.level == 0.8
    for simulated, truth, se in [(forecast.mean, exact.mean, forecast.mean_stderr),
                                 (forecast.lower, exact.lower, forecast.lower_stderr),
                                 (forecast.upper, exact.upper, forecast.upper_stderr)]:  # fmt: skip
        assert simulated.shape == truth.shape == se.shape == (5, 3, 2)
        assert ((simulated - truth).abs() < 5 * se).all(), ((simulated - truth) / se).abs().max()
        assert (se < 0.1).all()  # and the errors are small enough for the comparison to mean something
    # the variance: the emission's plus the spread of the simulated means (a few per cent off at most)
    torch.testing.assert_close(forecast.variance, exact.variance, rtol=0.1, atol=0)
    row = forecast.table(1)[0]
    assert {"mean_se", "lower_se", "upper_se"} <= set(row) and row["lower"] < row["mean"] < row["upper"]


def test_forecasts_of_other_emissions_and_of_a_categorical_latent():
    torch.manual_seed(0)
    model = DeepMarkovModel(5, 2, transition_dim=8, emission_hidden=(8,))  # Bernoulli: probabilities, no interval
    x, _ = model.sample(3, num_steps=4)
    forecast = model.forecast(x, steps=2, num_samples=64, num_particles=16, num_runs=4)
    assert forecast.variance is None and forecast.lower is None and forecast.mean.shape == (3, 2, 5)
    assert ((forecast.mean > 0) & (forecast.mean < 1)).all() and forecast.mean_stderr.shape == (3, 2, 5)
    hmm_like = _categorical_dmm("gaussian")  # exact: the HMM's forecast
    y, _ = hmm_like.sample(3, num_steps=4)
    exact = hmm_like.forecast(y, steps=2)
    assert exact.method == "exact" and exact.state_probs.shape == (3, 2, 3)
    torch.testing.assert_close(exact.mean, hmm_like.to_hmm().forecast(y, 2).mean)
    with pytest.raises(ValueError, match="num_runs"):
        model.forecast(x, steps=2, num_runs=1)
    with pytest.raises(ValueError, match="inputs"):
        model.forecast(x, steps=2, inputs=torch.zeros(3, 2, 1))


def test_a_dmm_run_forecasts_from_the_command_line(tmp_path):
    from typer.testing import CliRunner

    from elbox.cli.main import app
    from elbox.runs import load_config, train_run

    config = load_config(elbox.runs.config.Path(__file__).parents[1] / "configs" / "dmm_lgssm.toml")
    config["train"]["epochs"] = 1
    train_run(None, tmp_path / "run", config=config)
    result = CliRunner().invoke(app, ["forecast", str(tmp_path / "run"), "--steps", "3"])
    assert result.exit_code == 0, result.output
    assert "simulated" in result.output and "±" in result.output
    header = (tmp_path / "run" / "forecast.csv").read_text().splitlines()[0].split(",")
    assert header[-3:] == ["mean_se", "lower_se", "upper_se"] and (tmp_path / "run" / "forecast.png").is_file()


# The per-step table of the evidence report.


def test_the_step_table_averages_each_step_over_the_sequences_that_reach_it():
    from elbox.evidence.smc import sequence_report, step_table

    model = _linear_dmm()
    x, _ = model.sample(5, num_steps=6)
    x = Sequences(x, lengths=torch.tensor([6, 4, 1, 6, 3]))
    torch.manual_seed(0)
    report = sequence_report(model, model.guide(rnn_dim=8), x, num_samples=16, num_runs=3, elbo_samples=4)
    rows = step_table(report.to_dict(), max_steps=4)
    assert [r["steps"] for r in rows] == ["1", "2", "3", "4", "5–6"]
    assert [r["sequences"] for r in rows] == [5, 4, 4, 3, 2]
    elbo, inc = torch.tensor(report.elbo_steps), torch.tensor(report.log_increments)
    reach = torch.tensor([True, True, False, True, True])  # the sequences with a second step
    assert rows[1]["elbo"] == pytest.approx(float(elbo[reach, 1].mean()), abs=1e-12)
    assert rows[1]["gap_stderr"] == pytest.approx(float((inc - elbo)[reach, 1].std() / 2), abs=1e-12)
    se_e, se_i = torch.tensor(report.elbo_steps_mc_stderr), torch.tensor(report.log_increments_mc_stderr)
    assert rows[0]["gap_mc_stderr"] == pytest.approx(float((se_e[:, 0] ** 2 + se_i[:, 0] ** 2).sum().sqrt() / 5))
    # the last row: each sequence's per-step mean over steps 5–6, averaged over the two that reach them
    later = torch.stack([(inc - elbo)[0, 4:].mean(), (inc - elbo)[3, 4:].mean()])
    assert rows[-1]["gap"] == pytest.approx(float(later.mean()), abs=1e-12) and math.isnan(rows[-1]["gap_mc_stderr"])
    assert report.step_table(10)[-1]["steps"] == "6"


def test_the_html_report_of_a_dmm_run_has_the_per_step_table(tmp_path):
    import re
    import subprocess

    from elbox.runs import load_config, report_run, train_run
    from tests.test_html_report import _chromium

    config = load_config(elbox.runs.config.Path(__file__).parents[1] / "configs" / "dmm_lgssm.toml")
    config["train"]["epochs"] = 1
    config["evaluate"].update(num_samples=30, iwae_samples=5)
    train_run(None, tmp_path / "run", config=config)
    result = report_run(tmp_path / "run")
    page = tmp_path / "run" / "report.html"
    dom = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120, check=True).stdout  # fmt: skip
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))
    assert "The gap at every time step" in text and 'id="step-table"' in dom and 'id="gap_over_time"' in dom
    sequence = result["evaluation"]["sequence"]
    first = elbox.evidence.smc.step_table(sequence)[0]
    cells = f"{first['elbo']:.3f} {first['elbo_stderr']:.3f} {first['elbo_mc_stderr']:.4f}"
    assert f" 1 {first['sequences']} {cells}" in text
    frames = sequence["nll_per_frame"]["total_frames"]
    assert f"{frames['mean']:.3f} {frames['stderr']:.3f} {frames['mc_stderr']:.4f}" in text


# Under torchrun.


def test_a_dmm_fits_under_torchrun_with_two_processes_and_its_checkpoint_loads(tmp_path):
    """`elbox fit configs/dmm_lgssm.toml --quick` on two gloo processes: every epoch recorded once, the
    checkpoint written by rank 0 with both ranks' RNG state, loaded back as the DMM and its ST-R guide.
    (Its parameters are not one process's: the ELBO's paths are drawn per rank, as for every
    stochastic objective; test_distributed.py holds the parity of deterministic ones.)"""
    from elbox.io import RunDirectory, load_checkpoint
    from tests.test_distributed import ROOT, _finish, _torchrun

    out = tmp_path / "run"
    rc, output = _finish(_torchrun("-m", "elbox", "fit", ROOT / "configs" / "dmm_lgssm.toml", "--quick", "--out", out,
                                   "--no-progress"), timeout=240)  # fmt: skip
    assert rc == 0, output
    assert output.count("Run directory:") == 1  # rank 0 alone prints
    metrics = RunDirectory(out).read_metrics()
    assert [m["epoch"] for m in metrics] == list(range(1, 11)) and metrics[-1]["bound"] > metrics[0]["bound"]
    _, meta = load_checkpoint(RunDirectory(out).checkpoint())
    assert meta["world_size"] == 2
    run = elbox.load_run(out)
    assert type(run.model).__name__ == "DeepMarkovModel" and run.guide.kind == "st-r"
    x, _ = run.model.sample(4, num_steps=5)
    assert torch.isfinite(elbox.elbo(run.model, run.guide, x).value).all()


def test_log_evidence_by_smc_without_a_guide_is_the_bootstrap_filter():
    """guide=None: the prior proposes (PriorProposal), within its error of the Kalman filter."""
    model = _linear_dmm()
    x, _ = model.sample(4, num_steps=5)
    torch.manual_seed(0)
    estimate = elbox.log_evidence(model, x, method="smc", num_samples=256, num_runs=16)
    assert ((estimate.value - model.to_lgssm().log_evidence(x)).abs() < 4 * estimate.stderr + 1e-3).all()
