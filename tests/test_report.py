"""The evidence report's parts on every exact model: AIS and BDMC, the CUBO, the gap split by
refinement, PSIS k-hat, and the report itself; and their errors on bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.distributions import Beta, Categorical, MultivariateNormal

import elbox
from elbox.evidence import importance_log_weights, psis_khat
from elbox.guides import Exact, FullRankNormal, MeanFieldNormal
from tests.conftest import CASES, _dirichlet, case_params
from tests.test_evidence import Overdispersed

DISCRETE = ("GaussianMixture", "HMM")


class Mismatched(elbox.guides.Guide):
    """The posterior narrowed to 0.2 of its scale and shifted by one posterior s.d.: its
    importance weights are heavy-tailed (k̂ > 0.7). For a discrete posterior, the posterior
    mixed half and half with the uniform distribution at every step."""

    def __init__(self, model):
        super().__init__()
        object.__setattr__(self, "model", model)

    def forward(self, x, index=None):
        post = self.model.posterior(x)
        if isinstance(post, Beta):
            mean = 0.5 * post.mean + 0.05
            total = 50 * (post.concentration1 + post.concentration0)
            return Beta(mean * total, (1 - mean) * total)
        if isinstance(post, Categorical):
            return Categorical(probs=0.5 * post.probs + 0.5 / post.probs.shape[-1])
        if isinstance(post, elbox.distributions.MarkovChain):
            K = post.num_states
            mix = lambda logits: (0.5 * logits.exp() + 0.5 / K).log()  # noqa: E731
            return elbox.distributions.MarkovChain(mix(post.initial_logits), mix(post.transition_logits), reverse=True)
        if isinstance(post, elbox.distributions.GaussMarkovChain):
            return elbox.distributions.GaussMarkovChain(
                post.initial_loc + 1.0, 0.2 * post.initial_scale_tril, post.transition_matrix,
                post.transition_offset, 0.2 * post.transition_scale_tril, reverse=True,
            )  # fmt: skip
        L = post.scale_tril
        shift = (L @ torch.ones(L.shape[:-1]).unsqueeze(-1)).squeeze(-1)
        return MultivariateNormal(post.loc + shift, scale_tril=0.2 * L)


def _within(estimate, exact, k: float = 4.0) -> torch.Tensor:
    """|estimate − exact| within k standard errors, plus the se²/2 low bias of a log-mean."""
    return (estimate.value - exact).abs() < k * estimate.stderr + estimate.stderr**2


# AIS and BDMC.


@case_params()
def test_ais_converges_to_the_exact_evidence_within_its_standard_error(case):
    model, x, _, _ = case.make()
    exact = model.log_evidence(x).detach()
    estimate = elbox.log_evidence(model, x, method="ais", num_samples=48, schedule=300, leapfrog_steps=5)
    assert estimate.method == "ais" and estimate.num_samples == 48
    assert _within(estimate, exact).all(), ((estimate.value - exact) / estimate.stderr).tolist()
    # It is an estimate worth having: far tighter than the prior as proposal with as many samples.
    assert estimate.stderr.max() < 0.5


def test_mala_kernel_and_an_explicit_schedule():
    model, x, _, _ = CASES[5].make()  # factor analysis
    betas = torch.linspace(0, 1, 401) ** 3
    estimate = elbox.log_evidence(model, x, method="ais", num_samples=48, schedule=betas, kernel="mala")
    assert _within(estimate, model.log_evidence(x).detach()).all()


def test_ais_batches_over_data_points():
    model, x, _, _ = CASES[5].make()
    estimate = elbox.log_evidence(model, x, method="ais", num_samples=32, schedule=200, batch_size=3)
    assert estimate.value.shape == (len(x),)
    assert _within(estimate, model.log_evidence(x).detach()).all()


@pytest.mark.parametrize("name", ["BetaBernoulli", "FactorAnalysis", "PPCA", "GaussianMixture-full"])
def test_bdmc_brackets_the_exact_evidence_on_simulated_data(name):
    case = next(c for c in CASES if c.name == name)
    model = case.make()[0]
    x, z = model.sample(6, num_flips=9) if name == "BetaBernoulli" else model.sample(6)
    exact = model.log_evidence(x).detach()
    lower, upper = elbox.bdmc(model, x, z, num_chains=32, schedule=300)
    assert upper.method == "bdmc-upper"
    assert (lower.value < exact + 4 * lower.stderr + 1e-9).all()
    assert (upper.value > exact - 4 * upper.stderr - 1e-9).all()
    # Both close in on log p(x): the bracket is narrow at this schedule.
    assert ((upper.value - lower.value).abs() < 0.5).all(), (upper.value - lower.value).tolist()
    # No intermediate distribution (importance sampling from the prior one way, the harmonic
    # mean the other) gives a far wider bracket.
    short_lower, short_upper = elbox.bdmc(model, x, z, num_chains=32, schedule=1)
    assert (short_upper.value - short_lower.value).mean() > (upper.value - lower.value).mean()


# CUBO.


@case_params()
def test_elbo_is_below_the_evidence_and_cubo_above(case):
    model, x, guide, _ = case.make()
    exact = model.log_evidence(x).detach()
    with torch.no_grad():
        assert (elbox.elbo(model, guide, x, num_samples=2000).value < exact).all()
        # An overdispersed q has E_q[w²] finite: the CUBO's estimate is above log p(x) within its error.
        log_w = importance_log_weights(model, Overdispersed(model), x, num_samples=20000)
        cubo = torch.logsumexp(2 * log_w, 0).sub(math.log(log_w.shape[0])).div(2)
        w2 = (2 * log_w - 2 * log_w.max(0).values).exp()
        stderr = w2.std(0) / (math.sqrt(log_w.shape[0]) * w2.mean(0)) / 2
        assert (cubo > exact - 4 * stderr).all(), ((cubo - exact) / stderr).tolist()
        assert (cubo - exact).mean() > 0
        # The exact posterior closes the bracket: CUBO = log p(x) = ELBO.
        torch.testing.assert_close(elbox.cubo(model, Exact(model), x, num_samples=8), exact, rtol=0, atol=1e-9)


def test_cubo_is_the_renyi_bound_of_order_one_minus_n():
    model, x, guide, _ = CASES[1].make()
    torch.manual_seed(1)
    a = elbox.cubo(model, guide, x, num_samples=64, n=3)
    torch.manual_seed(1)
    b = elbox.renyi(model, guide, x, alpha=-2, num_samples=64)
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="n must be a finite number greater than 1"):
        elbox.cubo(model, guide, x, num_samples=4, n=1)


# The gap decomposed.


def test_refine_reaches_the_analytic_mean_field_optimum_and_the_gap_splits():
    """Factor analysis has a Gaussian posterior N(m, Λ⁻¹); the best diagonal normal has mean m
    and variances 1/Λ_ii, so L[q*] is known in closed form. A global q (the same for every x)
    starts far from it: a large amortization gap."""
    model, x, _, _ = CASES[5].make()
    K = model.posterior(x).event_shape[0]
    guide = MeanFieldNormal(K)
    refined = elbox.refine(model, guide, x, steps=1500, lr=0.05)
    assert refined.num_points == len(x)
    post = model.posterior(x)
    optimum = MeanFieldNormal(K, num_points=len(x))
    with torch.no_grad():
        optimum.loc.copy_(post.loc)
        optimum.log_scale.copy_(-0.5 * post.precision_matrix.diagonal(dim1=-2, dim2=-1).log())
        best = elbox.elbo(model, optimum, x).value
        got = elbox.elbo(model, refined, x).value
        start = elbox.elbo(model, guide, x).value
        exact = model.log_evidence(x)
    torch.testing.assert_close(got, best, rtol=0, atol=1e-4)
    approximation, amortization = exact - got, got - start
    torch.testing.assert_close(approximation + amortization, exact - start)
    assert (approximation > 0).all() and (amortization > 0).all()
    # With a full-rank family q* is the posterior: no approximation gap is left.
    full = elbox.refine(model, FullRankNormal(K), x, steps=1500, lr=0.05)
    with torch.no_grad():
        torch.testing.assert_close(elbox.elbo(model, full, x).value, exact, rtol=0, atol=1e-4)


def test_refine_keeps_the_model_fixed_and_accepts_each_family():
    model, x, _, _ = CASES[0].make()  # Beta–Bernoulli
    before = {k: v.clone() for k, v in model.state_dict().items()}
    refined = elbox.refine(model, elbox.guides.Beta(), x, steps=300, lr=0.05, num_samples=8, batch_size=4)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k])
    assert all(p.requires_grad for p in model.parameters())
    assert isinstance(refined, elbox.guides.Beta) and refined.num_points == len(x)
    mixture, y, _, _ = CASES[3].make()
    local = elbox.refine(mixture, elbox.guides.Categorical(4), y, steps=1000, lr=0.3)
    with torch.no_grad():  # the enumerated ELBO's per-point optimum is the posterior itself
        torch.testing.assert_close(elbox.elbo(mixture, local, y).value, mixture.log_evidence(y), rtol=0, atol=1e-2)
    lgssm, sequences, _, _ = CASES[10].make()  # its exact posterior is a Gauss–Markov chain
    with pytest.raises(TypeError, match="refine needs q of a family"):
        elbox.refine(lgssm, Exact(lgssm), sequences, steps=1)


# PSIS k-hat.


@case_params()
def test_khat_is_low_for_the_exact_posterior_and_high_for_a_mismatched_q(case):
    model, x, _, _ = case.make()
    exact_k = psis_khat(importance_log_weights(model, Exact(model), x, num_samples=1000))
    assert (exact_k < 0.5).all()
    bad_k = psis_khat(importance_log_weights(model, Mismatched(model), x, num_samples=10000))
    if case.name.startswith(DISCRETE):
        # A q over a handful of values (4 components, 3^5 short paths) has bounded weights: their
        # variance is finite whatever q is, and k̂ must not flag them (the long-path HMM below is
        # where a discrete q's weights become heavy-tailed).
        assert (bad_k < 0.7).all(), bad_k.tolist()
    else:
        assert (bad_k > 0.7).all(), bad_k.tolist()


def test_khat_is_high_for_a_mismatched_q_over_long_hmm_paths():
    """With 3^40 paths the weights take many values and their tail is fitted."""
    K = 3
    model = elbox.HMM(K, "gaussian", dim=2, loc=2 * torch.randn(K, 2), covariance=0.5 + torch.rand(K, 2),
                      initial_probs=_dirichlet(K), transition_matrix=_dirichlet(K, K))  # fmt: skip
    x, _ = model.sample(4, num_steps=40)
    assert (psis_khat(importance_log_weights(model, Mismatched(model), x, num_samples=2000)) > 0.7).all()
    assert (psis_khat(importance_log_weights(model, Exact(model), x, num_samples=2000)) < 0.5).all()


def test_khat_rejects_too_few_particles():
    with pytest.raises(ValueError, match="S >= 5"):
        psis_khat(torch.zeros(3, 2))


# The report.


@pytest.mark.parametrize("name", ["FactorAnalysis", "NormalNormal", "BetaBernoulli"])
def test_report_on_an_exact_model_sums_and_serializes(name):
    case = next(c for c in CASES if c.name == name)
    model, _, _, _ = case.make()
    x = model.sample(40, num_flips=9)[0] if name == "BetaBernoulli" else model.sample(40, num_obs=4)[0] \
        if name == "NormalNormal" else model.sample(40)[0]  # fmt: skip
    report = elbox.evidence_report(model, Overdispersed(model), x, num_samples=2000, refine_steps=300,
                                   refine_lr=0.05, refine_points=20, batch_size=16)  # fmt: skip
    exact = float(model.log_evidence(x).detach().mean())
    assert report.log_evidence["method"] == "exact" and report.log_evidence["mean"] == pytest.approx(exact)
    # IWAE-50 is a lower bound in expectation; its estimate lies within Monte Carlo error of log p(x) here
    assert report.elbo["mean"] < report.iwae["mean"] < exact + 4 * report.iwae["mc_stderr"]
    assert report.upper_bound["mean"] > exact - 4 * report.upper_bound["stderr"]
    assert report.gap == pytest.approx(exact - report.elbo["mean"])
    total = report.approximation_gap["mean"] + report.amortization_gap["mean"]
    assert total == pytest.approx(report.gap_refined, abs=1e-9)
    assert report.amortization_gap["mean"] > 0 and report.approximation_gap["mean"] > -0.05
    assert len(report.per_point["elbo_refined"]) == 20 and report.refined_points == 20
    text = report.to_json()
    again = elbox.EvidenceReport.from_dict(json.loads(text))
    assert again.gap == report.gap and again.per_point["khat"] == report.to_dict()["per_point"]["khat"]


def test_report_with_the_exact_posterior_has_no_gap():
    model, _, _, _ = CASES[5].make()
    x, _ = model.sample(30)
    report = elbox.evidence_report(model, Exact(model), x, num_samples=100, refine_steps=0)
    assert abs(report.gap) < 1e-8 and report.psis_khat is None and report.approximation_gap is None
    assert report.upper_bound["mean"] == pytest.approx(report.log_evidence["mean"], abs=1e-8)
    assert json.loads(report.to_json())["per_point"]["khat"][0] is None  # −∞ is written as null


def test_report_of_a_collapsed_vae_warns():
    vae = elbox.VAE(8, 3, hidden=(16,), decoder="gaussian")
    with torch.no_grad():  # an encoder that ignores x and returns the prior: total collapse
        for p in vae.guide.encoder.parameters():
            p.zero_()
    x = torch.randn(50, 8)
    with pytest.warns(elbox.evidence.PosteriorCollapseWarning, match="posterior collapse"):
        report = elbox.evidence_report(vae, vae.guide, x, num_samples=50, refine_steps=0)
    assert report.active_units == 0 and report.latent_units == 3
    assert report.mutual_information == pytest.approx(0, abs=1e-6)
    assert report.kl_per_dim == pytest.approx([0, 0, 0], abs=1e-9)
    assert any("posterior collapse" in w for w in report.warnings)


def test_mutual_information_of_an_informative_q_is_near_log_n():
    N = 64
    q = torch.distributions.Independent(torch.distributions.Normal(10 * torch.randn(N, 2), 0.01), 1)
    assert elbox.evidence.mutual_information(q) == pytest.approx(math.log(N), abs=1e-3)


# Chunking.


def test_particle_chunks_give_the_same_weights():
    model, x, _, _ = CASES[5].make()
    guide = Overdispersed(model)
    torch.manual_seed(3)
    whole = importance_log_weights(model, guide, x, num_samples=100, chunk_size=100)
    torch.manual_seed(3)
    chunked = importance_log_weights(model, guide, x, num_samples=100, chunk_size=7)
    torch.testing.assert_close(chunked, whole)


# Bad input.


def test_bad_input_gets_clear_errors():
    model, x, _, _ = CASES[5].make()  # factor analysis, 2 latent dimensions
    wrong = MeanFieldNormal(3)
    with pytest.raises(ValueError, match=r"latent shape is \[3\] but the model's prior has \[2\]"):
        elbox.evidence_report(model, wrong, x)
    with pytest.raises(ValueError, match=r"latent shape is \[3\]"):
        elbox.log_evidence(model, x, guide=wrong, method="importance")
    with pytest.raises(ValueError, match="num_samples must be an integer >= 1"):
        elbox.log_evidence(model, x, method="ais", num_samples=0)
    with pytest.raises(ValueError, match="num_samples must be an integer >= 1"):
        elbox.evidence_report(model, Exact(model), x, num_samples=0)
    with pytest.raises(ValueError, match=r"schedule must increase strictly from 0 to 1; received β\[1\] = 0.5"):
        elbox.log_evidence(model, x, method="ais", schedule=[0.0, 0.5, 0.5, 1.0])
    with pytest.raises(ValueError, match="schedule must start at β = 0 and end at β = 1"):
        elbox.log_evidence(model, x, method="ais", schedule=[0.1, 0.5, 1.0])
    with pytest.raises(ValueError, match="schedule must start at β = 0 and end at β = 1"):
        elbox.log_evidence(model, x, method="ais", schedule=[0.0, 0.5, 0.9])
    with pytest.raises(ValueError, match="schedule must be a 1-d sequence"):
        elbox.log_evidence(model, x, method="ais", schedule=[[0.0, 1.0]])
    with pytest.raises(ValueError, match="kernel must be one of"):
        elbox.log_evidence(model, x, method="ais", kernel="nuts")
    with pytest.raises(ValueError, match="z must be posterior samples of shape"):
        elbox.bdmc(model, x, torch.zeros(len(x), 5))
    with pytest.raises(ValueError, match="iwae_samples must be at most num_samples"):
        elbox.evidence_report(model, Exact(model), x, num_samples=10, iwae_samples=20)


def test_two_evaluations_with_different_seeds_agree_within_the_reported_monte_carlo_errors():
    """Each number's Monte Carlo error is calibrated: across seeds (same model, same points) the
    spread of each mean matches its reported Monte Carlo standard error (a χ² band with 5 degrees of
    freedom at 99.8%), and any two evaluations agree within 4 combined standard errors."""
    from elbox.data import binarize, digits

    torch.manual_seed(0)
    x, _ = digits()
    x = binarize(x[:260].float(), method="fixed", generator=torch.Generator().manual_seed(0))
    vae = elbox.VAE(64, 4, hidden=(64,))
    elbox.fit(vae, vae.guide, x[:200], epochs=30, batch_size=50, lr=3e-3, seed=0)
    reports = []
    for seed in range(6):
        torch.manual_seed(seed)
        reports.append(elbox.evidence_report(vae, vae.guide, x[200:], num_samples=200, refine_steps=0))
    quantities = {
        "ELBO": lambda r: (r.elbo["mean"], r.elbo["mc_stderr"]),
        "IWAE": lambda r: (r.iwae["mean"], r.iwae["mc_stderr"]),
        "log p": lambda r: (r.log_evidence["mean"], r.log_evidence["mc_stderr"]),
        "CUBO": lambda r: (r.upper_bound["mean"], r.upper_bound["mc_stderr"]),
        "gap": lambda r: (r.gap, r.gap_mc_stderr),
    }
    for name, get in quantities.items():
        means, errors = map(torch.tensor, zip(*(get(r) for r in reports)))
        if name == "CUBO" and errors.isnan().all():  # wⁿ without a finite variance: no error stated, and why
            assert all(any("CUBO's Monte Carlo error cannot be stated" in w for w in r.warnings) for r in reports)
            assert all(r.psis_khat["max"] >= 0.25 for r in reports)
            continue
        assert (errors > 0).all(), name  # a sampled number is never reported as exact
        ratio = float(means.std() / errors.mean())
        assert 0.2 < ratio < 2.05, (name, ratio)  # the spread is what the error says
        a, b = (get(r) for r in reports[:2])
        assert abs(a[0] - b[0]) < 4 * math.hypot(a[1], b[1]), name
        # the points' spread is another error, and much larger here: the Monte Carlo one is not it
        assert reports[0].elbo["stderr"] > 5 * reports[0].elbo["mc_stderr"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_report_takes_the_elbos_expectation_as_elbo_does(seed):
    """One decision (elbox.bounds.closed_forms) for both: where the reconstruction and the KL have
    closed forms (a sum over a categorical q; a Gaussian q under factor analysis) the report's
    per-point ELBO equals elbo()'s, in float64 on random instances (global guides: the report
    evaluates q on new points), with no Monte Carlo error."""
    torch.manual_seed(seed)
    x = torch.randn(7, 3, dtype=torch.float64)
    mixture = elbox.GaussianMixture(2, 3).double()
    mixture.initialize(x)
    factor = elbox.FactorAnalysis(3, 1).double()
    factor.initialize(x)
    for model, guide in ((mixture, elbox.guides.Categorical(2)), (factor, elbox.guides.MeanFieldNormal(1))):
        guide = guide.double()
        with torch.no_grad():
            for p in guide.parameters():
                p.normal_()
        report = elbox.evidence_report(model, guide, x, num_samples=50, iwae_samples=5, refine_steps=0)
        expected = elbox.elbo(model, guide, x).value
        torch.testing.assert_close(torch.tensor(report.per_point["elbo"], dtype=torch.float64), expected,
                                   rtol=1e-12, atol=1e-12)  # fmt: skip
        assert report.elbo["mc_stderr"] == 0.0
