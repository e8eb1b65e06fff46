"""Discrete latents: the one-hot convention, the Gumbel-Softmax draws, every estimator's gradient
against the exact one by enumeration (unbiasedness within 4 standard errors, the relaxed
estimators' bias and variance against τ, the baselines' variance), temperature annealing through
fit and its checkpoint, the discrete VAE's evidence report, and the bad-input errors."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from scipy import stats

import elbox
from elbox import plots
from elbox.bounds._common import prepare
from elbox.guides import Bernoulli, MeanFieldNormal, OneHotCategorical
from elbox.inference import temperature_annealing
from elbox.objectives import make_objective

REPEATS = 1000


def _problem(latent="categorical", seed=1):
    """A small discrete VAE on random parameters, 4 points drawn from it, and a local q with random
    logits: the joint support has 9 (or 8) values, so the exact gradient is a sum."""
    torch.manual_seed(seed)
    if latent == "categorical":
        model = elbox.DiscreteVAE(6, num_variables=2, num_categories=3, hidden=(8,))
        guide = OneHotCategorical(2, 3, num_points=4, init_logits=torch.randn(4, 2, 3))
    else:
        model = elbox.DiscreteVAE(6, num_variables=3, latent="bernoulli", hidden=(8,))
        guide = Bernoulli(3, num_points=4, init_logits=torch.randn(4, 3))
    x, _ = model.sample(4)
    return model, guide, x


def _one_point(latent: str):
    """:func:`_problem`'s model with its first point alone, and a local q for it."""
    model, guide, x = _problem(latent)
    shape = guide.logits.shape[1:]
    local = (OneHotCategorical(*shape, num_points=1, init_logits=guide.logits[:1].detach()) if latent == "categorical"
             else Bernoulli(*shape, num_points=1, init_logits=guide.logits[:1].detach()))  # fmt: skip
    return model, local, x[:1]


def _gradients(objective, guide, x, repeats: int) -> torch.Tensor:
    """The estimator's gradient in q's logits, one row per call ``[repeats, P]``."""
    rows = []
    for _ in range(repeats):
        guide.logits.grad = None
        objective(x).surrogate.sum().backward()
        rows.append(guide.logits.grad.flatten().clone())
    return torch.stack(rows)


def _exact(model, guide, x) -> torch.Tensor:
    return _gradients(make_objective("enumerate", model, guide), guide, x, 1)[0]


def _exact_iwae(model, guide, x, S: int = 2) -> torch.Tensor:
    """The exact gradient of the IWAE bound with S = 2, a sum over every pair of values."""
    guide.logits.grad = None
    x, q, _ = prepare(model, guide, x)
    z = elbox.bounds.joint_support(q)  # [M, B, N, K]
    log_q = q.log_prob(z)  # [M, B]
    log_w = model.log_joint(x, z) - log_q
    pair = (log_q.unsqueeze(0) + log_q.unsqueeze(1)).exp()  # [M, M, B]
    log_mean = torch.logaddexp(log_w.unsqueeze(0), log_w.unsqueeze(1)) - math.log(2)
    (pair * log_mean).sum().backward()
    return guide.logits.grad.flatten().clone()


# The one-hot convention and the relaxation.


@pytest.mark.parametrize("latent", ["categorical", "bernoulli"])
def test_the_exact_draws_are_distributed_as_q(latent):
    """A chi-square test: the argmax of Gumbel-perturbed logits (a threshold of logistic-perturbed
    ones) is a draw from q; the relaxed draw is its softmax (sigmoid) and lies in the simplex."""
    torch.manual_seed(0)
    logits = torch.tensor([[0.5, -1.0, 1.5, 0.0]]) if latent == "categorical" else torch.tensor([[0.8]])
    q = (torch.distributions.OneHotCategorical(logits=logits) if latent == "categorical"
         else torch.distributions.Bernoulli(logits=logits))  # fmt: skip
    n = 20000
    z, soft = elbox.bounds.relaxed_draws(q, 0.5, n)
    if latent == "categorical":
        counts = z.reshape(n, -1).sum(0)
        expected = n * q.probs.reshape(-1)
        assert torch.allclose(soft.sum(-1), torch.ones(n, 1))
        assert torch.equal(soft.argmax(-1), z.argmax(-1))
    else:
        ones = z.sum()
        counts, expected = torch.stack([n - ones, ones]), n * torch.cat([1 - q.probs, q.probs]).reshape(-1)
        assert torch.equal(soft > 0.5, z > 0.5)
    _, p = stats.chisquare(counts.numpy(), expected.numpy())
    assert p > 1e-3, (counts, expected)
    assert ((soft >= 0) & (soft <= 1)).all()


def test_the_model_takes_relaxed_and_exact_latents_and_the_reported_value_is_the_true_elbo():
    """The decoder reads a point inside the simplex as well as a vertex; the Gumbel-Softmax
    objective's value, averaged over draws, is the exact ELBO (within 4 standard errors)."""
    model, guide, x = _problem()
    soft = torch.full((5, 4, 2, 3), 1 / 3)
    assert model.log_likelihood(x, soft).shape == (5, 4)
    exact = make_objective("enumerate", model, guide)(x).value  # [B]
    for hard in (False, True):
        objective = make_objective("gumbel_softmax", model, guide, temperature=0.5, hard=hard, num_samples=2000)
        value = objective(x).value
        # the reconstruction's spread per draw, for the error of the mean of 2000
        _, q, _ = prepare(model, guide, x)
        draws = model.log_likelihood(x, q.sample((2000,)))
        assert ((value - exact).abs() < 4 * draws.std(0) / math.sqrt(2000)).all()


def test_the_functional_estimators_are_the_objectives():
    """elbox.bounds' functions give the objectives' numbers, draw for draw."""
    model, guide, x = _problem()
    with elbox.distributed.seeded(5):
        terms, surrogate = elbox.bounds.gumbel_softmax(model, guide, x, temperature=0.7, num_samples=3)
    with elbox.distributed.seeded(5):
        out = make_objective("gumbel_softmax", model, guide, temperature=0.7, num_samples=3)(x)
    torch.testing.assert_close(terms.value, out.value, rtol=0, atol=0)
    torch.testing.assert_close(surrogate, out.surrogate, rtol=0, atol=0)
    exact = elbox.bounds.enumerate_joint(model, guide, x)
    torch.testing.assert_close(exact.value, make_objective("enumerate", model, guide)(x).value, rtol=0, atol=0)
    assert elbox.bounds.joint_support(guide(x)).shape == (9, 4, 2, 3)
    with elbox.distributed.seeded(5):
        local, _ = elbox.bounds.local_expectation(model, guide, x, num_samples=2)
    with elbox.distributed.seeded(5):
        out = make_objective("enumerate", model, guide, strategy="factorwise", num_samples=2)(x)
    torch.testing.assert_close(local.value, out.value, rtol=0, atol=0)
    # the identity, exactly: log p(x) − ELBO = KL(q ‖ p(z | x)) > 0
    _, q, p = prepare(model, guide, x)
    z = elbox.bounds.joint_support(q)
    log_joint, log_q = model.log_joint(x, z), q.log_prob(z)  # [9, B]
    log_px = log_joint.logsumexp(0)
    gap = (log_q.exp() * (log_q - (log_joint - log_px))).sum(0)  # KL(q ‖ p(z | x)), summed
    assert (gap > 0).all()
    torch.testing.assert_close(exact.value + gap, log_px, rtol=0, atol=1e-10)


# Gradients against the exact one.


@pytest.mark.parametrize(
    "name, options",
    [
        ("score_function", {"baseline": "none"}),
        ("score_function", {"baseline": "moving_average"}),
        ("score_function", {"baseline": "nvil"}),
        ("score_function", {"baseline": "leave_one_out", "num_samples": 2}),
        ("enumerate", {"strategy": "factorwise"}),
    ],
)
@pytest.mark.parametrize("latent", ["categorical", "bernoulli"])
def test_the_unbiased_estimators_average_to_the_exact_gradient(name, options, latent):
    model, guide, x = _problem(latent)
    exact = _exact(model, guide, x)
    G = _gradients(make_objective(name, model, guide, **options), guide, x, REPEATS)
    se = G.std(0) / math.sqrt(REPEATS)
    assert ((G.mean(0) - exact).abs() < 4 * se + 1e-12).all(), ((G.mean(0) - exact) / se).abs().max()


class _CurrentStepBaseline(elbox.objectives.ScoreFunction):
    """The moving average updated with this step's draws before it is used: b depends on z_s, the
    defect the baselines must not have (the float64 moving average had it, through an alias)."""

    def _baseline(self, f, x):
        self._track(f.mean(), None)
        return self.signal_mean.to(f.dtype, copy=True).expand_as(f), 0.0


def _bias_in_standard_errors(objective, model, guide, x) -> float:
    """The largest |mean gradient − exact| / its standard error over q's logits, ``REPEATS`` draws; the
    exact gradient by enumeration in float64."""
    exact = _exact(*(copy.deepcopy(m).double() for m in (model, guide)), x.double()).to(guide.logits.dtype)
    G = _gradients(objective, guide, x, REPEATS)
    se = G.std(0) / math.sqrt(REPEATS)
    # float32's rounding of the mean of REPEATS terms, beside the Monte Carlo error
    rounding = 4 * torch.finfo(G.dtype).eps * math.sqrt(REPEATS) * G.abs().mean(0)
    return float(((G.mean(0) - exact).abs() / (se + rounding + 1e-300)).max())


@pytest.mark.parametrize(
    "options",
    [
        {"baseline": "none"},
        {"baseline": "moving_average", "decay": 0.3},
        {"baseline": "moving_average", "decay": 0.9},
        {"baseline": "nvil"},
        {"baseline": "nvil", "decay": 0.3},
        {"baseline": "leave_one_out", "num_samples": 2},
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("latent", ["categorical", "bernoulli"])
def test_every_baseline_is_unbiased_in_either_dtype_its_statistics_taken_before_the_update(options, dtype, latent):
    """The moving statistics are read as values before this step's update: in float64 the buffer
    (float64) was read by alias and updated before use, so b held (1 − decay) × this step's mean f.
    One data point, where that share of this step's draws is largest."""
    model, guide, x = _one_point(latent)
    model, guide, x = model.to(dtype), guide.to(dtype), x.to(dtype)
    objective = make_objective("score_function", model, guide, **options).to(dtype)  # as fit moves it
    assert objective.signal_mean.dtype == guide.logits.dtype == dtype
    assert _bias_in_standard_errors(objective, model, guide, x) < 4


def test_a_baseline_of_the_current_draws_is_caught_as_biased():
    """The check above has the power to see the defect: the same estimator with b updated by this
    step's draws first is far outside the error."""
    for latent in ("categorical", "bernoulli"):
        model, guide, x = _one_point(latent)
        objective = _CurrentStepBaseline(model, guide, baseline="moving_average", decay=0.3)
        assert _bias_in_standard_errors(objective, model, guide, x) > 10


def test_vimco_averages_to_the_exact_gradient_of_the_importance_weighted_bound():
    model, guide, x = _problem()
    exact = _exact_iwae(model, guide, x)
    G = _gradients(make_objective("vimco", model, guide, num_samples=2), guide, x, REPEATS)
    se = G.std(0) / math.sqrt(REPEATS)
    assert ((G.mean(0) - exact).abs() < 4 * se).all(), ((G.mean(0) - exact) / se).abs().max()


def test_nvil_and_vimco_have_lower_variance_than_the_plain_score_function():
    """The same problem: NVIL's baseline (after its network and averages have trained for 200
    steps) against no baseline; VIMCO against the plain score function of the same bound (every
    particle's signal the bound itself)."""
    model, guide, x = _problem()
    plain = _gradients(make_objective("score_function", model, guide, baseline="none"), guide, x, 300)
    nvil = make_objective("score_function", model, guide, baseline="nvil")
    optimizer = torch.optim.Adam(nvil.baseline_net.parameters(), lr=1e-2)
    for _ in range(200):  # the baseline's own loss trains its network; q and the model stay as they are
        optimizer.zero_grad()
        (-nvil(x).surrogate.sum()).backward()
        optimizer.step()
    with_nvil = _gradients(nvil, guide, x, 300)
    assert with_nvil.var(0).sum() < 0.1 * plain.var(0).sum()

    vimco = _gradients(make_objective("vimco", model, guide, num_samples=2), guide, x, 300)
    naive = []
    for _ in range(300):  # the bound's score function with no control variate
        guide.logits.grad = None
        log_w, log_q = elbox.bounds.log_weights(model, guide, x, num_samples=2)
        bound = log_w.logsumexp(0) - math.log(2)
        (bound + (log_q.sum(0) * bound.detach())).sum().backward()
        naive.append(guide.logits.grad.flatten().clone())
    assert vimco.var(0).sum() < 0.1 * torch.stack(naive).var(0).sum()


def test_the_relaxed_estimators_bias_falls_and_variance_rises_as_the_temperature_falls():
    """The trade-off annealing answers, measured: the Gumbel-Softmax gradient's bias (its mean's
    distance from the exact gradient) and its variance at τ = 2, 1, 0.5, 0.1."""
    model, guide, x = _problem()
    exact = _exact(model, guide, x)
    bias, variance = [], []
    for tau in (2.0, 1.0, 0.5, 0.1):
        G = _gradients(make_objective("gumbel_softmax", model, guide, temperature=tau), guide, x, REPEATS)
        se = (G.var(0).sum() / REPEATS).sqrt()  # the error of the mean's norm, at most
        bias.append((float((G.mean(0) - exact).norm()), float(se)))
        variance.append(float(G.var(0).sum()))
    # down from τ = 2 to 1 to 0.5 beyond the errors; at τ = 0.1 it is within its (larger) error of zero
    for (b_hi, se_hi), (b_lo, se_lo) in zip(bias[:3], bias[1:3]):
        assert b_lo < b_hi - 2 * (se_hi + se_lo), bias
    assert bias[3][0] < bias[2][0] + 2 * (bias[2][1] + bias[3][1]) and bias[3][0] < 3 * bias[3][1], bias
    assert variance == sorted(variance), variance
    # and the bias is real: at τ = 2 the mean is many standard errors from the exact gradient
    assert bias[0][0] > 10 * bias[0][1]


# Annealing through fit.


def test_temperature_annealing_follows_jang_et_al_and_is_checkpointed(tmp_path):
    torch.manual_seed(0)
    model = elbox.DiscreteVAE(6, num_variables=2, num_categories=3, hidden=(8,))
    x, _ = model.sample(40)
    anneal = temperature_annealing(initial=1.0, minimum=0.5, rate=0.05, every=3)
    assert [anneal.value(t) for t in (0, 3, 30)] == [1.0, math.exp(-0.15), 0.5]

    def run(run_dir, epochs, resume=False):
        torch.manual_seed(0)
        m = elbox.DiscreteVAE(6, num_variables=2, num_categories=3, hidden=(8,))
        objective = make_objective("gumbel_softmax", m, m.guide, temperature=1.0)
        history = elbox.fit(objective, x, epochs=epochs, batch_size=10, lr=1e-2, seed=3, schedules=[anneal],
                            run_dir=run_dir, resume=resume)  # fmt: skip
        return objective, history

    whole, history = run(tmp_path / "whole", 4)
    steps = len(history.steps)  # 16 steps: the last update at step 15
    assert float(whole.temperature) == pytest.approx(max(0.5, math.exp(-0.05 * (steps - 1) // 3 * 3)))
    run(tmp_path / "split", 2)
    resumed, history2 = run(tmp_path / "split", 4, resume=True)
    assert float(resumed.temperature) == float(whole.temperature)
    assert history2.lower_bound == history.lower_bound
    saved = elbox.io.load_checkpoint(tmp_path / "whole" / "checkpoints" / "last.safetensors")[0]
    assert float(saved["temperature"]) == float(whole.temperature)


# The discrete VAE.


@pytest.mark.parametrize("latent", ["categorical", "bernoulli"])
def test_a_discrete_vae_trains_and_reports_its_evidence(latent):
    torch.manual_seed(0)
    x = (elbox.data.digits()[0][:200] > 0.5).double()
    model = elbox.DiscreteVAE(64, num_variables=4, num_categories=4, latent=latent, hidden=(64,))
    before = float(make_objective("enumerate", model, model.guide)(x).value.mean())
    history = elbox.fit(model, model.guide, x, bound="gumbel_softmax", epochs=20, batch_size=50, lr=3e-3, seed=0)
    after = float(make_objective("enumerate", model, model.guide)(x).value.mean())
    assert after > before + 5 and history.lower_bound[-1] > history.lower_bound[0]
    report = elbox.evidence_report(model, model.guide, x[:60], num_samples=200, refine_steps=0)
    assert report.elbo["mean"] <= report.log_evidence["mean"] + 4 * report.log_evidence["stderr"]
    assert report.psis_khat is not None and report.active_units is not None
    units = 4  # per variable: the spread over x of q's class probabilities, summed over the classes
    assert report.latent_units == units and 0 <= report.active_units <= units
    # the gap's split: a discrete q refined per point (by the score function over 10 particles)
    split = elbox.evidence_report(model, model.guide, x[:20], num_samples=200, refine_steps=30, refine_points=20)
    assert split.amortization_gap is not None and split.refined_points == 20
    gap = split.amortization_gap
    assert gap["mean"] > -4 * math.hypot(gap["stderr"], gap["mc_stderr"])  # q* is no worse than q


# Bad input.


def test_temperatures_must_be_positive_and_finite():
    model, guide, x = _problem()
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="temperature .*positive and finite"):
            make_objective("gumbel_softmax", model, guide, temperature=bad)
    with pytest.raises(ValueError, match="minimum"):
        temperature_annealing(initial=1.0, minimum=2.0)
    with pytest.raises(ValueError, match="rate"):
        temperature_annealing(rate=-1.0)
    objective = make_objective("gumbel_softmax", model, guide)
    objective.temperature.fill_(0.0)  # as a schedule might set it
    with pytest.raises(ValueError, match="as scheduled"):
        objective(x)


def test_estimators_asked_of_the_wrong_q_name_the_one_that_works():
    torch.manual_seed(0)
    gaussian = elbox.VAE(6, 2, hidden=(8,))
    x = (torch.rand(5, 6) > 0.5).double()
    with pytest.raises(TypeError, match="reparameterized: use 'elbo'"):
        make_objective("gumbel_softmax", gaussian, gaussian.guide)(x)
    with pytest.raises(TypeError, match="use 'elbo'"):
        make_objective("score_function", gaussian, gaussian.guide)(x)
    with pytest.raises(TypeError, match="use 'iwae'"):
        make_objective("vimco", gaussian, gaussian.guide)(x)
    with pytest.raises(TypeError, match="use 'elbo', 'iwae' or 'rws'"):
        make_objective("enumerate", gaussian, gaussian.guide)(x)
    mixture = elbox.GaussianMixture(3, 2)
    y, _ = mixture.sample(10)
    index_q = elbox.guides.Categorical(3, num_points=10)
    with pytest.raises(TypeError, match="one-hot convention.*'score_function', 'vimco' or 'enumerate'"):
        make_objective("gumbel_softmax", mixture, index_q)(y)
    # but enumeration and the score function take it
    assert make_objective("enumerate", mixture, index_q)(y).value.shape == (10,)
    assert make_objective("score_function", mixture, index_q)(y).value.shape == (10,)


def test_a_joint_support_too_large_names_the_factorwise_strategy():
    torch.manual_seed(0)
    model = elbox.DiscreteVAE(6, num_variables=20, num_categories=10, hidden=(8,))
    x, _ = model.sample(3)
    with pytest.raises(ValueError, match="10\\^20.*strategy='factorwise'"):
        make_objective("enumerate", model, model.guide)(x)
    out = make_objective("enumerate", model, model.guide, strategy="factorwise")(x)
    assert out.value.shape == (3,)


@pytest.mark.parametrize(
    "name, options, error",
    [
        ("score_function", {"baseline": "mean"}, "baseline must be one of"),
        ("score_function", {"baseline": "leave_one_out"}, "needs num_samples >= 2"),
        ("score_function", {"decay": 1.0}, "decay must be in"),
        ("score_function", {"normalize": True}, "normalize applies to baseline='nvil'"),
        ("gumbel_softmax", {"hard": "yes"}, "hard must be True or False"),
        ("vimco", {"num_samples": 1}, "num_samples"),
        ("rws", {"num_samples": 1}, "num_samples"),
        ("enumerate", {"strategy": "all"}, "strategy must be one of"),
    ],
)
def test_bad_options(name, options, error):
    model, guide, _ = _problem()
    with pytest.raises((ValueError, TypeError), match=error):
        make_objective(name, model, guide, **options)


def test_guides_check_their_encoders_and_logits():
    with pytest.raises(ValueError, match="not both"):
        OneHotCategorical(2, 3, encoder=torch.nn.Linear(4, 6), num_points=5)
    with pytest.raises(ValueError, match="init_logits must have shape"):
        OneHotCategorical(2, 3, init_logits=torch.zeros(3, 2))
    with pytest.raises(ValueError, match="num_categories"):
        OneHotCategorical(2, 1)
    guide = OneHotCategorical(2, 3, encoder=torch.nn.Linear(4, 5))
    with pytest.raises(ValueError, match="logits \\[B, 6\\]"):
        guide(torch.zeros(7, 4))
    with pytest.raises(ValueError, match="latent must be one of"):
        elbox.DiscreteVAE(6, latent="gaussian")
    q = MeanFieldNormal(2)(torch.zeros(3, 1))
    with pytest.raises(TypeError, match="reparameterized"):
        elbox.bounds.relaxed_draws(q, 1.0)


# The command line.

_CONFIG = """
[data]
name = "digits"
test = 100

[model]
type = "discrete_vae"
num_variables = 4
num_categories = 3
hidden = [32]

[train]
objective = "{objective}"
epochs = 2
batch_size = 200
anneal_rate = {rate}
anneal_every = 2
min_temperature = 0.5

[objective]
{objective_options}

[evaluate]
num_samples = 50
refine_steps = 0
"""


def _config(tmp_path, objective="gumbel_softmax", rate=0.1, objective_options="temperature = 1.0"):
    path = tmp_path / "dvae.toml"
    path.write_text(_CONFIG.format(objective=objective, rate=rate, objective_options=objective_options))
    return path


def test_elbox_fit_trains_a_discrete_vae_with_an_annealed_temperature_and_resumes(tmp_path):
    from typer.testing import CliRunner

    from elbox.cli.main import app
    from elbox.runs.config import load_config

    runner = CliRunner()
    config = _config(tmp_path, objective_options="temperature = 1.0\nhard = true")
    result = runner.invoke(app, ["fit", str(config), "--out", str(tmp_path / "run"), "--no-progress"])
    assert result.exit_code == 0, result.output
    run = elbox.load_run(tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = records[-1]["step"]  # 1,497 training digits in batches of 200: 8 steps per epoch
    assert records[-1]["temperature"] == pytest.approx(max(0.5, math.exp(-0.1 * ((steps - 1) // 2 * 2))))
    stored = load_config(tmp_path / "run" / "config.toml")
    assert stored["objective"] == {"temperature": 1.0, "hard": True}
    assert isinstance(run.model, elbox.DiscreteVAE)
    saved = elbox.io.load_checkpoint(tmp_path / "run" / "checkpoints" / "last.safetensors")[0]
    assert float(saved["temperature"]) == pytest.approx(records[-1]["temperature"])  # the checkpoint holds τ
    result = runner.invoke(app, ["evaluate", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "active units" in result.output
    # a value the objective refuses is a config error naming the table
    bad = _config(tmp_path, "enumerate", 0.0, 'strategy = "all"')
    result = runner.invoke(app, ["fit", str(bad), "--out", str(tmp_path / "bad"), "--no-progress"])
    assert result.exit_code == 2 and "[objective] of objective = 'enumerate': strategy must be one of" in result.output


@pytest.mark.parametrize(
    "objective, rate, options, error",
    [
        ("gumbel_softmax", 0.1, "temprature = 1.0", "unknown key 'temprature' in \\[objective\\]; did you mean "
                                                     "'temperature'"),
        ("score_function", 0.1, "baseline = \"nvil\"", "anneal_rate anneals the objective's temperature"),
        ("gumbel_softmax", 0.1, "temperature = 0.25", "min_temperature \\(0.5\\) must be at most"),
        ("gumbel_softmax", 0.0, "hard = 1", "\\[objective\\] hard must be true or false"),
    ],
)
def test_bad_configs_name_the_key(tmp_path, objective, rate, options, error):
    from elbox.runs.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=error):
        load_config(_config(tmp_path, objective, rate, options))


# Gradient diagnostics.


def test_gradient_report_measures_bias_against_the_enumerated_gradient(tmp_path):
    from elbox.inference import GradientVariance, temperature_sweep

    model, guide, x = _problem()
    objectives = {
        "relaxed": make_objective("gumbel_softmax", model, guide, temperature=2.0),
        "factorwise": make_objective("enumerate", model, guide, strategy="factorwise"),
        "exact": make_objective("enumerate", model, guide),
    }
    moving = make_objective("score_function", model, guide)
    before = {k: v.clone() for k, v in moving.state_dict().items()}
    report = elbox.gradient_report({**objectives, "moving": moving}, x, repeats=400)
    relaxed, factorwise, exact, moving_stats = report.estimators
    assert report.num_parameters == guide.logits.numel() and report.exact_norm > 0
    assert relaxed.bias > 10 * relaxed.bias_stderr and relaxed.max_z > 10  # biased, and resolved as such
    assert factorwise.max_z < 4.5 and moving_stats.max_z < 4.5  # √(2 ln 24) ≈ 2.5: unbiased
    assert exact.bias < 1e-12 and exact.variance < 1e-20 and exact.max_z == 0.0
    assert relaxed.temperature == 2.0 and factorwise.temperature is None
    assert all(torch.equal(before[k], v) for k, v in moving.state_dict().items())  # its state put back
    assert "max |z|" in report.table()
    # the same seed, the same numbers
    again = elbox.gradient_report({"relaxed": objectives["relaxed"]}, x, repeats=400)
    assert again.estimators[0].variance == relaxed.variance

    sweep = temperature_sweep(objectives["relaxed"], x, [2.0, 0.5], repeats=200)
    assert [s.temperature for s in sweep.estimators] == [2.0, 0.5]
    assert float(objectives["relaxed"].temperature) == 2.0  # put back
    fig = plots.plot_temperature_tradeoff(sweep, tmp_path / "tradeoff.png", references=report)
    assert fig is not None and (tmp_path / "tradeoff.png").stat().st_size > 0

    # a Gaussian q has no exact gradient to compare with: the variance alone
    vae = elbox.VAE(6, 2, hidden=(8,))
    y = (torch.rand(5, 6) > 0.5).double()
    alone = elbox.gradient_report(make_objective("elbo", vae, vae.guide), y, repeats=20)
    assert alone.estimators[0].bias is None and alone.exact_norm is None
    with pytest.raises(ValueError, match="exact=True needs a q whose joint support"):
        elbox.gradient_report(make_objective("elbo", vae, vae.guide), y, repeats=20, exact=True)
    with pytest.raises(ValueError, match="another model or guide"):
        elbox.gradient_report([make_objective("elbo", vae, vae.guide), objectives["exact"]], y, repeats=20)
    with pytest.raises(ValueError, match="parameters must be one of"):
        elbox.gradient_report(objectives["exact"], x, parameters="encoder")
    with pytest.raises(TypeError, match="needs an objective with a temperature"):
        temperature_sweep(objectives["exact"], x, [1.0])

    # the variance over a run, in the metrics beside τ
    variance = GradientVariance(x, repeats=10)
    objective = make_objective("gumbel_softmax", model, guide)
    elbox.fit(objective, x, epochs=3, lr=1e-2, seed=0, callbacks=[variance], run_dir=tmp_path / "run",
              schedules=[temperature_annealing(1.0, 0.5, rate=0.5, every=1)])  # fmt: skip
    records = elbox.io.RunDirectory(tmp_path / "run").read_metrics()
    assert [r["gradient_variance"] for r in records] == [v for _, v in variance.values]
    assert records[-1]["temperature"] == pytest.approx(max(0.5, math.exp(-0.5 * 2)))
    plots.plot_annealing(records, tmp_path / "annealing.png")
    assert (tmp_path / "annealing.png").stat().st_size > 0
