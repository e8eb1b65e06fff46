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
    draw: Callable | None = None  # (model, n) -> n data points, where model.sample(n)[0] is not it


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


def _dirichlet(*shape):
    return torch.distributions.Dirichlet(torch.ones(shape[-1])).sample(shape[:-1])


LENGTHS = torch.tensor([5, 3, 1, 5, 4, 2])  # ragged: the mask and the uniform states past each end are exercised


def _hmm(emission: str, covariance_type: str = "diag", ragged: bool = True):
    def make():
        K, D, M, T = 3, 2, 4, 5
        common = dict(initial_probs=_dirichlet(K), transition_matrix=_dirichlet(K, K))
        if emission == "categorical":
            model = elbox.HMM(K, "categorical", num_symbols=M, emission_probs=_dirichlet(K, M), **common)
        else:
            full = torch.stack([_random_covariance(D) for _ in range(K)])
            cov = 0.3 + torch.rand(K, D) if covariance_type == "diag" else full
            model = elbox.HMM(K, "gaussian", dim=D, covariance_type=covariance_type, loc=2 * torch.randn(K, D),
                              covariance=cov, **common)
        x, _ = model.sample(len(LENGTHS), num_steps=T)
        x = elbox.Sequences(x, lengths=LENGTHS) if ragged else x
        guide = guides.Categorical(K, num_points=len(LENGTHS), event_shape=(T,))
        _perturb(guide, 1.0)
        return model, x, guide, torch.randint(K, (7, len(LENGTHS), T))

    return make


def _lgssm(inputs: bool):
    def make():
        D, Dx, U, T = 3, 2, 2, 5
        model = elbox.LinearGaussianSSM(
            D, Dx, U if inputs else 0, transition_matrix=0.5 * torch.randn(D, D), observation_matrix=torch.randn(Dx, D),
            control_matrix=torch.randn(D, U) if inputs else None, transition_covariance=_random_covariance(D),
            observation_covariance=_random_covariance(Dx), initial_loc=torch.randn(D),
            initial_covariance=_random_covariance(D),
        )
        x = _draw_lgssm(model, len(LENGTHS), T)
        if not inputs:
            x = elbox.Sequences(x.values, lengths=LENGTHS)
        guide = guides.MeanFieldNormal((T, D), num_points=len(LENGTHS), init_scale=0.5)
        _perturb(guide)
        return model, x, guide, 2 * torch.randn(7, len(LENGTHS), T, D)

    return make


def _draw_lgssm(model, n, num_steps=10):
    u = torch.randn(n, num_steps, model.input_dim) if model.input_dim else None
    x, _ = model.sample(n, num_steps, inputs=u)
    return elbox.Sequences(x, inputs=u)


CASES = [
    Case("BetaBernoulli", _beta_bernoulli),
    Case("NormalNormal", _normal_normal),
    Case("HierarchicalNormal", _hierarchical_normal),
    Case("GaussianMixture-full", _mixture("full")),
    Case("GaussianMixture-diag", _mixture("diag")),
    Case("FactorAnalysis", _factor(False)),
    Case("PPCA", _factor(True)),
    Case("HMM-gaussian-diag", _hmm("gaussian", "diag")),
    Case("HMM-gaussian-full", _hmm("gaussian", "full", ragged=False)),
    Case("HMM-categorical", _hmm("categorical")),
    Case("LinearGaussianSSM", _lgssm(inputs=False), draw=_draw_lgssm),
    Case("LinearGaussianSSM-inputs", _lgssm(inputs=True), draw=_draw_lgssm),
]


def case_params():
    return pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
