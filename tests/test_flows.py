"""Normalizing flows (zuko) in the three places they stand: a density over data (FlowDensity), a
posterior q(z | x) (FlowGuide) and a VAE's prior; their identities, their gaps and their errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal
from typer.testing import CliRunner

import elbox
from elbox.bounds._common import draw_with_log_prob
from elbox.cli.main import app
from elbox.guides import FlowGuide, FullRankNormal, MeanFieldNormal, mlp
from elbox.models import BetaBernoulli, FlowDensity, LatentModel, UniformDequantization

runner = CliRunner()


class Banana(LatentModel):
    """z ~ N(0, I₂), x | z ~ N((z₁, z₂ + b z₁²), s² I): a curved (for x₂ large, two-horned)
    posterior. p(x) integrates z₂ out in closed form and z₁ on a fine grid (float64)."""

    data_shape = (2,)

    def __init__(self, curvature: float = 1.0, noise: float = 0.5):
        super().__init__()
        self.b, self.s = curvature, noise
        self.register_buffer("_zero", torch.zeros(2, dtype=torch.float64))

    def prior(self):
        return Independent(Normal(self._zero, torch.ones_like(self._zero)), 1)

    def log_likelihood(self, x, z):
        mean = torch.stack([z[..., 0], z[..., 1] + self.b * z[..., 0] ** 2], -1)
        return Normal(mean, self.s).log_prob(x).sum(-1)

    def log_evidence(self, x):
        x = self.check_data(x)
        z1 = torch.linspace(-12, 12, 200001, dtype=torch.float64).unsqueeze(-1)  # [G, 1]
        f = (Normal(0.0, 1.0).log_prob(z1) + Normal(z1, self.s).log_prob(x[:, 0])
             + Normal(self.b * z1**2, math.sqrt(1 + self.s**2)).log_prob(x[:, 1]))  # fmt: skip
        return torch.logsumexp(f, 0) + (z1[1, 0] - z1[0, 0]).log()  # smooth, decaying fast: a Riemann sum

    def log_posterior(self, x, z):
        return self.log_joint(x, z) - self.log_evidence(x)


def _coin(seed: int):
    g = torch.Generator().manual_seed(seed)
    a, b = (0.5 + 3 * torch.rand(2, generator=g, dtype=torch.float64)).tolist()
    flips = (torch.rand(1, 4 + seed, generator=g, dtype=torch.float64) < 0.3).double()
    return BetaBernoulli(a, b, latent="logit").double(), flips


def _randomized(guide: FlowGuide, seed: int) -> FlowGuide:
    """Weights away from the initialization, so that q is a genuinely non-Gaussian density."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in guide.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return guide


# Identities, float64, random instances.


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_log_evidence_is_elbo_plus_kl_with_a_flow_q_on_the_coin_logit(seed):
    model, x = _coin(seed)
    torch.manual_seed(seed)
    guide = _randomized(FlowGuide(1, flow="nsf", transforms=2, hidden=(16,)).double(), seed)
    S = 200_000
    with torch.no_grad():
        elbo = elbox.elbo(model, guide, x, num_samples=S, kl="mc").value  # particles of its own
        # KL(q ‖ posterior) from independent particles, against the Beta pushed through the logit
        z, log_q = draw_with_log_prob(guide(x), S, pathwise=False)
        log_ratio = log_q - model.posterior(x).log_prob(z)
        kl = log_ratio.mean(0)
        w = model.log_joint(x, z) - log_q  # the ELBO's own terms, for its standard error
    se = math.hypot(float(log_ratio.std() / math.sqrt(S)), float(w.std() / math.sqrt(S)))
    error = float((elbo + kl - model.log_evidence(x)).abs())
    assert error < 4 * se, (error, se)
    assert float(kl) > 0.01  # a q that is not the posterior: the identity is not 0 = 0


@pytest.mark.parametrize("seed", [0, 1])
def test_log_evidence_is_elbo_plus_kl_with_a_flow_q_on_the_banana(seed):
    model = Banana(curvature=1.0 + seed, noise=0.5)
    x = torch.tensor([[0.3 * seed, 2.0]], dtype=torch.float64)
    torch.manual_seed(seed)
    guide = _randomized(FlowGuide(2, flow="maf", transforms=2, hidden=(16,)).double(), seed)
    S = 200_000
    with torch.no_grad():
        elbo = elbox.elbo(model, guide, x, num_samples=S, kl="mc").value
        z, log_q = draw_with_log_prob(guide(x), S, pathwise=False)
        log_ratio = log_q - model.log_posterior(x, z)
        kl = log_ratio.mean(0)
        w = model.log_joint(x, z) - log_q
    se = math.hypot(float(log_ratio.std() / math.sqrt(S)), float(w.std() / math.sqrt(S)))
    assert float((elbo + kl - model.log_evidence(x)).abs()) < 4 * se
    assert float(kl) > 0.01


def test_banana_evidence_by_quadrature_matches_importance_sampling():
    """The oracle itself: the grid's log p(x) against a plain prior-proposal estimate."""
    model = Banana()
    x = torch.tensor([[0.5, 1.5]], dtype=torch.float64)
    torch.manual_seed(0)
    estimate = elbox.log_evidence(model, x, method="importance", num_samples=400_000)
    assert abs(float(estimate.value - model.log_evidence(x))) < 4 * float(estimate.stderr)


@pytest.mark.parametrize("kind", ["maf", "nsf", "realnvp"])
def test_flow_guide_scores_its_draws_in_one_pass_as_log_prob_does(kind):
    torch.manual_seed(0)
    D, C = 3, 5
    guide = _randomized(FlowGuide(D, encoder=mlp([4, 8, 2 * D + C]), context_dim=C, flow=kind, transforms=2,
                                  hidden=(16,)).double(), 1)  # fmt: skip
    q = guide(torch.randn(6, 4, dtype=torch.float64))
    z, log_q = q.rsample_and_log_prob((7,))
    assert z.shape == (7, 6, D) and log_q.shape == (7, 6)
    torch.testing.assert_close(q.log_prob(z), log_q, rtol=0, atol=1e-10)


def _fit_q(model, guide, x, steps=600, S=256, lr=1e-2):
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(guide.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in range(steps):
        loss = -elbox.elbo(model, guide, x, num_samples=S, kl="mc").value.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return guide


def _gap(model, guide, x, S=20_000):
    with torch.no_grad():
        z, log_q = draw_with_log_prob(guide(x), S, pathwise=False)
        w = model.log_joint(x, z) - log_q
        return float(model.log_evidence(x) - w.mean()), float(w.std() / math.sqrt(S))


@pytest.mark.parametrize("problem", ["coin", "banana"])
def test_a_flow_q_shrinks_the_gap_that_a_gaussian_q_leaves(problem):
    """The same budget of steps for each q; the gap log p − ELBO with its Monte Carlo error."""
    torch.set_default_dtype(torch.float64)
    try:
        if problem == "coin":  # one head in eight flips: the logit's posterior is skewed
            model, x, D = BetaBernoulli(1.0, 1.0, latent="logit"), torch.tensor([[1.0, 0, 0, 0, 0, 0, 0, 0]]), 1
            gaussian = MeanFieldNormal(1)
        else:  # the two-horned banana
            model, x, D = Banana(), torch.tensor([[0.0, 2.0]]), 2
            gaussian = FullRankNormal(2)
        gaps = [_gap(model, _fit_q(model, gaussian, x), x)]
        for transforms in (1, 2):
            torch.manual_seed(0)
            flow = FlowGuide(D, flow="nsf", transforms=transforms, hidden=(16 * transforms,))
            gaps.append(_gap(model, _fit_q(model, flow, x), x))
    finally:
        torch.set_default_dtype(torch.float32)
    (g0, s0), (g1, s1), (g2, s2) = gaps
    assert g0 - g1 > 4 * math.hypot(s0, s1), gaps  # measurably smaller than the Gaussian's
    assert g0 - g2 > 4 * math.hypot(s0, s2), gaps
    assert g2 < g1 + 4 * math.hypot(s1, s2), gaps  # and no larger as the flow grows
    assert g2 < 0.25 * g0, gaps  # most of the Gaussian's gap is gone


# The flow density.


def test_flow_density_integrates_to_one_in_two_dimensions():
    torch.manual_seed(0)
    density = FlowDensity(2, flow="maf", transforms=3, hidden=(16,)).double()
    _randomized(density, 3)
    proposal = Independent(Normal(torch.zeros(2, dtype=torch.float64), 3 * torch.ones(2, dtype=torch.float64)), 1)
    S = 400_000
    with torch.no_grad():
        y = proposal.sample((S,))
        ratio = (density.log_density(y) - proposal.log_prob(y)).exp()
    se = float(ratio.std() / math.sqrt(S))
    assert abs(float(ratio.mean()) - 1) < 4 * se, (float(ratio.mean()), se)


@pytest.mark.parametrize("kind", ["maf", "nsf", "realnvp"])
def test_flow_log_determinant_is_autograd_jacobians(kind):
    torch.manual_seed(0)
    density = _randomized(FlowDensity(3, flow=kind, transforms=2, hidden=(16,)).double(), 4)
    x = torch.randn(5, 3, dtype=torch.float64)
    transform = density.flow().transform  # x → u, towards the base
    base = Independent(Normal(torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)), 1)
    for point in x:
        jacobian = torch.autograd.functional.jacobian(transform, point)
        expected = base.log_prob(transform(point)) + torch.linalg.slogdet(jacobian).logabsdet
        torch.testing.assert_close(density.log_evidence(point[None])[0], expected, rtol=0, atol=1e-10)


def test_flow_density_recovers_a_known_mixtures_log_likelihood():
    torch.manual_seed(0)
    truth = MixtureSameFamily(
        Categorical(torch.tensor([0.3, 0.7])),
        Independent(Normal(torch.tensor([[-1.5, 0.0], [1.0, 1.0]]), torch.tensor([[0.4, 0.6], [0.5, 0.3]])), 1),
    )
    x, held_out = truth.sample((4000,)), truth.sample((4000,))
    density = FlowDensity(2, flow="maf", transforms=4, hidden=(64, 64))
    history = elbox.fit(density, None, x, bound="max_likelihood", epochs=40, batch_size=200, lr=3e-3)
    assert history.n_iter == 40 and history.lower_bound[-1] > history.lower_bound[0]
    with torch.no_grad():
        excess = truth.log_prob(held_out) - density.log_evidence(held_out)  # its mean estimates KL(truth ‖ flow)
    kl, se = float(excess.mean()), float(excess.std() / math.sqrt(len(excess)))
    assert kl > -4 * se  # no density beats the truth on fresh data, beyond noise
    assert kl < 0.1, (kl, se)  # the stated tolerance: within 0.1 nats per point of the exact log-likelihood


def test_latent_free_report_says_the_gap_is_zero_and_why():
    torch.manual_seed(0)
    density = FlowDensity(2, transforms=2, hidden=(16,))
    x = torch.randn(50, 2)
    report = elbox.evidence_report(density, None, x)
    log_p = density.log_evidence(x).detach().double()
    assert report.gap == 0.0 and report.log_evidence["method"] == "exact"
    for name in ("elbo", "iwae", "log_evidence", "upper_bound"):
        assert getattr(report, name)["mean"] == pytest.approx(float(log_p.mean()), abs=1e-9)
    assert report.bits_per_dim["mean"] == pytest.approx(-float(log_p.mean()) / (2 * math.log(2)), abs=1e-9)
    assert any("no latent variable" in w and "zero by construction" in w for w in report.warnings)


def test_dequantized_density_is_a_uniform_latent_model_with_a_reported_gap():
    torch.manual_seed(0)
    x = torch.randint(0, 17, (60, 4)).float() / 16
    density = FlowDensity(4, transforms=2, hidden=(16,), dequantize=1 / 16)
    guide = UniformDequantization(density)
    elbox.fit(density, guide, x, bound="elbo", epochs=5, batch_size=20, lr=1e-2)
    u = torch.rand(1, 60, 4) / 16
    with torch.no_grad():  # the ELBO is E_u log p(x + u) + D log w
        terms = elbox.elbo(density, guide, x, num_samples=1)
        assert float(terms.kl.abs().max()) == 0.0
        expected = density.log_density(x + u[0]) + 4 * math.log(1 / 16)
        torch.testing.assert_close(density.log_likelihood(x, u)[0], expected)
    report = elbox.evidence_report(density, guide, x, num_samples=500)
    assert report.gap > -4 * math.hypot(report.gap_stderr, report.gap_mc_stderr)
    assert report.approximation_gap is None and report.active_units is None  # u is noise in a cell, not a code
    assert report.bits_per_dim["dims"] == 4
    with pytest.raises(NotImplementedError, match="integral over each grid cell"):
        density.log_evidence(x)


# Flows in the VAE, refine and the gap's split.


def test_vae_with_flow_guide_and_flow_prior_trains_and_reports_its_gap_split():
    torch.manual_seed(0)
    x = (torch.rand(120, 16) < 0.3).float()
    vae = elbox.VAE(16, 2, hidden=(32,), guide={"type": "flow", "transforms": 2, "hidden": [16]}, prior="flow")
    history = elbox.fit(vae, vae.guide, x, epochs=3, batch_size=40, lr=3e-3)
    assert all(math.isfinite(b) for b in history.lower_bound)
    assert elbox.elbo(vae, vae.guide, x).kl_method == "mc"  # KL(flow ‖ flow): sampled
    report = elbox.evidence_report(vae, vae.guide, x[:30], num_samples=100, refine_steps=30, refine_points=10)
    split = report.approximation_gap["mean"] + report.amortization_gap["mean"]
    assert split == pytest.approx(report.gap_refined, abs=1e-9)
    assert report.guide == "FlowGuide" and report.active_units is not None


def test_refine_optimizes_only_the_encodings_of_a_flow_guide():
    torch.manual_seed(0)
    x = (torch.rand(12, 16) < 0.3).float()
    vae = elbox.VAE(16, 2, hidden=(32,), guide="flow")
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    refined = elbox.refine(vae, vae.guide, x, steps=60, lr=5e-2, num_samples=8)
    assert [name for name, _ in refined.named_parameters()] == ["encoding"]
    assert refined.num_points == 12 and refined.flow is vae.guide.flow
    for k, v in vae.state_dict().items():
        assert torch.equal(v, before[k]), k  # neither the model nor the guide moved
    assert all(p.grad is None for p in vae.parameters())
    torch.manual_seed(1)
    amortized = elbox.elbo(vae, vae.guide, x, num_samples=2000).value.detach()
    local = elbox.elbo(vae, refined, x, num_samples=2000).value.detach()
    assert float((local - amortized).mean()) > 0


def test_a_local_flow_guide_trains_one_q_per_point_of_an_exact_model():
    """num_points=P: one encoding per data point, picked by the batch's indices in fit."""
    torch.manual_seed(0)
    model = elbox.FactorAnalysis(4, 2).double()
    x, _ = model.sample(40)
    model.requires_grad_(False)  # only q moves: its gap to the exact posterior must shrink
    guide = FlowGuide(2, num_points=40, transforms=1, hidden=(8,)).double()
    index = torch.arange(40)

    def gap() -> float:
        with torch.no_grad():
            torch.manual_seed(1)
            bound = elbox.elbo(model, guide, x, index=index, num_samples=500, kl="mc").value
            return float((model.log_evidence(x) - bound).mean())

    before = gap()
    elbox.fit(model, guide, x, epochs=60, batch_size=10, lr=3e-2, kl="mc", num_samples=8)
    after = gap()
    assert guide.encoding.shape == (40, 4) and after < 0.2 * before, (before, after)


# Bad input.


def test_flow_errors_name_what_was_expected():
    vae = elbox.VAE(16, 2, hidden=(8,))
    x = torch.zeros(3, 16)
    with pytest.raises(ValueError, match=r"latent shape is \[3\] but the model's prior has \[2\]"):
        elbox.elbo(vae, FlowGuide(3), x)
    wrong = FlowGuide(2, encoder=mlp([16, 8, 7]), context_dim=4)
    with pytest.raises(ValueError, match=r"2 \* latent_dim \+ context_dim\] = \[3, 8\].*context_dim"):
        wrong(x)
    with pytest.raises(ValueError, match="x must be finite|non-finite|NaN"):
        FlowDensity(2).log_evidence(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match="dequantize"):
        FlowDensity(2, dequantize=0.0)
    with pytest.raises(ValueError, match="grid of that step"):
        FlowDensity(2, dequantize=0.25).check_data(torch.tensor([[0.3, 0.5]]))
    with pytest.raises(ValueError, match="flow must be one of"):
        FlowGuide(2, flow="glow")
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        FlowDensity(1, flow="realnvp")
    with pytest.raises(ValueError, match="guide has no option 'layers'"):
        elbox.VAE(16, 2, guide={"type": "flow", "layers": 3})
    with pytest.raises(ValueError, match="prior type must be 'normal' or 'flow'"):
        elbox.VAE(16, 2, prior="gaussian")
    with pytest.raises(ValueError, match="deterministic_encoder"):
        elbox.VAE(16, 2, guide="flow", deterministic_encoder=True)
    with pytest.raises(ValueError, match="encoder=.*num_points="):
        FlowGuide(2, encoder=mlp([16, 4]), num_points=5)


# The command line.

_FLOW_FILE = """
[data]
path = "points.npy"
test = 40

[model]
type = "flow"
transforms = 2
hidden = [16]
dequantize = "none"

[train]
objective = "max_likelihood"
epochs = 3
batch_size = 40
"""

_VAE_FLOWS = """
[data]
name = "digits"
validation = 100
test = 60

[model]
latent_dim = 2
hidden = [32]

[guide]
type = "flow"
transforms = 2
hidden = [16]

[prior]
type = "flow"
transforms = 1

[train]
epochs = 2
batch_size = 100

[evaluate]
num_samples = 50
refine_steps = 5
refine_points = 10
"""


def test_cli_fits_evaluates_and_reports_flows(tmp_path):
    np.save(tmp_path / "points.npy", np.random.default_rng(0).normal(size=(200, 3)))
    (tmp_path / "flow.toml").write_text(_FLOW_FILE)
    (tmp_path / "vae.toml").write_text(_VAE_FLOWS)
    outputs = {}
    for name in ("flow", "vae"):
        run = tmp_path / name
        result = runner.invoke(app, ["fit", str(tmp_path / f"{name}.toml"), "--out", str(run), "--no-progress"])
        assert result.exit_code == 0, result.output
        result = runner.invoke(app, ["report", str(run)])
        assert result.exit_code == 0, result.output
        assert "bits per dimension" in result.output
        assert "bits per dimension" in (run / "report.html").read_text(encoding="utf-8")
        outputs[name] = " ".join(result.output.split())
    assert "zero by construction" in outputs["flow"] and "amortization gap" in outputs["vae"]
    loaded = elbox.load_run(tmp_path / "vae")
    assert type(loaded.guide).__name__ == "FlowGuide" and loaded.model.prior_flow is not None
    flow = elbox.load_run(tmp_path / "flow")
    assert flow.model.latent_free


def test_cli_config_errors_for_flows(tmp_path):
    cases = {
        '[model]\ntype = "gmm"\n[guide]\ntype = "flow"\n': "[guide] type = 'flow' applies to [model] type = 'vae'",
        '[model]\ntype = "flow"\n[data]\nbinarization = "none"\n[train]\nobjective = "max_likelihood"\n':
            "use [train] objective = 'elbo'",
        '[model]\ntype = "flow"\ndequantize = "none"\n[data]\nbinarization = "none"\n': "objective = 'max_likelihood'",
        '[model]\ntype = "flow"\n[data]\nbinarization = "dynamic"\n[train]\nobjective = "elbo"\n': "binarization",
        '[guide]\ntype = "flow"\ncontext_dim = -1\n': "[guide] context_dim must be",
    }
    for text, message in cases.items():
        config = tmp_path / "bad.toml"
        config.write_text(text)
        result = runner.invoke(app, ["fit", str(config), "--out", str(tmp_path / "run"), "--no-progress"])
        assert result.exit_code == 2, (text, result.output)
        assert message in " ".join(result.output.split()), (text, result.output)
        assert not (tmp_path / "run").exists()


def test_the_comparison_example_runs_end_to_end(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).parent.parent / "examples" / "flows_compare.py"
    result = subprocess.run([sys.executable, str(example), "--data", "digits", "--epochs", "1", "--num-samples", "30",
                             "--refine-points", "4", "--refine-steps", "3", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    for model in ("VAE, Gaussian q", "VAE, flow q", "VAE, flow prior", "flow density"):
        assert model in result.stdout
    assert (tmp_path / "flows_compare_digits.png").is_file() and (tmp_path / "flows_compare_digits.json").is_file()
