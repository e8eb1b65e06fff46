"""The choice of divergence: the bimodal oracle (MixturePrior) against quadrature, and one Gaussian q
fitted to its posterior by reverse KL (one mode) and forward KL (both), with examples/divergences.py."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

import elbox
from elbox.models import MixturePrior

ROOT = Path(__file__).resolve().parent.parent


def _example():
    spec = importlib.util.spec_from_file_location("divergences_example", ROOT / "examples" / "divergences.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _random_model(D: int, K: int = 3) -> MixturePrior:
    return MixturePrior(3 * torch.randn(K, D), scale=0.5 + torch.rand(K, D),
                        weights=torch.distributions.Dirichlet(torch.ones(K)).sample(), noise_scale=0.3 + torch.rand(()))


def test_the_evidence_is_the_integral_of_the_joint():
    """log p(x) against the trapezoid rule on a fine grid, for random 1-d instances."""
    for _ in range(3):
        model = _random_model(1)
        x, _ = model.sample(4)
        z = torch.linspace(-25, 25, 100001).reshape(-1, 1, 1)
        joint = model.log_joint(x, z).exp()  # [grid, B]
        quadrature = torch.trapezoid(joint, z.reshape(-1), dim=0).log()
        torch.testing.assert_close(model.log_evidence(x), quadrature, rtol=0, atol=1e-8)


def test_joint_minus_posterior_is_evidence_for_every_z():
    model = _random_model(2)
    x, _ = model.sample(5)
    z = 4 * torch.randn(7, 5, 2)
    pointwise = model.log_joint(x, z) - model.posterior(x).log_prob(z)
    torch.testing.assert_close(pointwise, model.log_evidence(x).expand_as(pointwise), rtol=0, atol=1e-10)
    # and a Gaussian q's sampled ELBO lies below it (the bound's Monte Carlo error is tiny at 20,000 draws)
    guide = elbox.guides.MeanFieldNormal(2, num_points=5)
    elbo = elbox.elbo(model, guide, x, num_samples=20000).value
    assert (elbo < model.log_evidence(x)).all()


def test_bad_parameters_are_named():
    with pytest.raises(ValueError, match="scale must be positive"):
        MixturePrior(torch.zeros(2, 1), scale=torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="weights must be 2 non-negative numbers summing to 1"):
        MixturePrior(torch.zeros(2, 1), weights=torch.tensor([0.7, 0.7]))
    with pytest.raises(ValueError, match="noise_scale must be a positive"):
        MixturePrior(torch.zeros(2, 1), noise_scale=0.0)


def test_reverse_kl_finds_one_mode_and_forward_kl_covers_both():
    """The example's fits, from the same start N(1.5, 2²), nearer the right mode: reverse KL (the ELBO)
    settles on that mode, N(2.5, ½) — its mean within 0.2 of it and its spread that of one
    component; forward KL (reweighted wake-sleep) spreads over both, its mean within 0.5 of the
    posterior's (0) and its standard deviation at least 80% of the posterior's (2.6)."""
    example = _example()
    model, x = example.bimodal()
    truth = model.posterior(x)
    mode, component_sd = 2.5, math.sqrt(0.5)
    example.DIVERGENCES = {k: v for k, v in example.DIVERGENCES.items() if k.startswith(("reverse", "forward"))}
    fits = example.fit_all(model, x, steps=1500)
    loc, scale = fits["reverse KL (ELBO)"]
    assert abs(loc - mode) < 0.2 and abs(scale - component_sd) < 0.2, (loc, scale)
    loc, scale = fits["forward KL (RWS)"]
    assert abs(loc) < 0.5 and scale > 0.8 * float(truth.variance.sqrt()), (loc, scale)
