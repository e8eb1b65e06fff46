"""Shared fixtures and the table of exact-evidence models that the generic tests loop over."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

import elbox
from elbox import guides


@pytest.fixture(autouse=True)
def float64_and_seed():
    """Every test runs in float64 from a fixed seed; torch's global state is restored after."""
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield
    torch.set_default_dtype(dtype)


@dataclass
class Case:
    """An exact model on random parameters, data drawn from it, and a random q of its family."""

    name: str
    make: Callable[[], tuple]  # () -> (model, x, guide with random parameters, random z [S, B, ...])


def _perturb(module: torch.nn.Module, scale: float = 0.5) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))


def _random_covariance(d: int) -> torch.Tensor:
    a = torch.randn(d, d)
    return a @ a.T / d + 0.5 * torch.eye(d)


def _beta_bernoulli():
    model = elbox.BetaBernoulli(1 + 3 * torch.rand(()).item(), 1 + 3 * torch.rand(()).item())
    x, _ = model.sample(6, num_flips=9)
    guide = guides.Beta(num_points=6)
    _perturb(guide)
    z = torch.distributions.Beta(2.0, 2.0).sample((7, 6))
    return model, x, guide, z


def _normal_normal():
    D = 3
    model = elbox.NormalNormal(
        D, prior_loc=torch.randn(D), prior_covariance=_random_covariance(D), noise_covariance=_random_covariance(D)
    )
    x, _ = model.sample(5, num_obs=4)
    guide = guides.FullRankNormal(D, num_points=5, init_scale=0.5)
    _perturb(guide)
    return model, x, guide, 2 * torch.randn(7, 5, D)


def _hierarchical_normal():
    model = elbox.HierarchicalNormal(
        4, group_size=3, hyper_loc=torch.randn(()).item(), hyper_scale=3.0, group_scale=1.5,
        noise_scale=0.5 + torch.rand(4),
    )
    x, _ = model.sample(5)
    guide = guides.MeanFieldNormal(5, num_points=5, init_scale=0.5)
    _perturb(guide)
    return model, x, guide, 2 * torch.randn(7, 5, 5)


def _mixture(covariance_type: str):
    def make():
        K, D = 4, 3
        cov = torch.stack([_random_covariance(D) for _ in range(K)])
        model = elbox.GaussianMixture(
            K, D, covariance_type=covariance_type, weights=torch.distributions.Dirichlet(torch.ones(K)).sample(),
            loc=3 * torch.randn(K, D), covariance=cov if covariance_type == "full" else cov.diagonal(dim1=-2, dim2=-1),
        )
        x, _ = model.sample(6)
        guide = guides.Categorical(K, num_points=6)
        _perturb(guide, 1.0)
        return model, x, guide, torch.randint(K, (7, 6))

    return make


def _factor(isotropic: bool):
    def make():
        D, K = 6, 2
        model = elbox.FactorAnalysis(D, K, isotropic=isotropic)
        _perturb(model)
        x, _ = model.sample(8)
        guide = guides.FullRankNormal(K, num_points=8, init_scale=0.5)
        _perturb(guide)
        return model, x, guide, 2 * torch.randn(7, 8, K)

    return make


CASES = [
    Case("BetaBernoulli", _beta_bernoulli),
    Case("NormalNormal", _normal_normal),
    Case("HierarchicalNormal", _hierarchical_normal),
    Case("GaussianMixture-full", _mixture("full")),
    Case("GaussianMixture-diag", _mixture("diag")),
    Case("FactorAnalysis", _factor(False)),
    Case("PPCA", _factor(True)),
]


def case_params():
    return pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
