"""The VAE: a linear-Gaussian VAE is PPCA (exact evidence), the σ² and β trade-offs, the plain
autoencoder's infinite KL, decoders' log-densities, and bad input."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import kl_divergence

import elbox
from elbox.data import binarize, digits


def _perturb(module, scale=0.5):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))


@pytest.mark.parametrize("variance", [0.3, 2.0])
def test_linear_gaussian_vae_elbo_plus_gap_is_the_ppca_evidence(variance):
    """Catches any constant dropped from the Gaussian likelihood: the ELBO (Monte Carlo) plus
    KL(q ‖ exact posterior) must equal PPCA's exact evidence within 4 standard errors."""
    D, K, B, R = 6, 2, 5, 20000
    vae = elbox.VAE(D, K, hidden=(), decoder="gaussian", observation_variance=variance)
    _perturb(vae)
    ppca = elbox.FactorAnalysis(D, K, isotropic=True)
    with torch.no_grad():
        ppca.loading.copy_(vae.decoder[0].weight)
        ppca.loc.copy_(vae.decoder[0].bias)
        ppca.noise_variance = torch.tensor([variance])
    x, _ = ppca.sample(B)
    index = torch.arange(B).repeat(R)  # R independent one-particle estimates per point
    values = elbox.elbo(vae, vae.guide, x[index], expectation="sample").value.detach().reshape(R, B)
    mean, se = values.mean(0), values.std(0) / R**0.5
    gap = kl_divergence(vae.guide(x), ppca.posterior(x)).detach()
    error = mean + gap - ppca.log_evidence(x).detach()
    assert (error.abs() < 4 * se).all(), error / se


def test_decoder_log_likelihoods_equal_torch_distributions():
    z = torch.randn(3, 4, 2)  # [S, B, L]
    for decoder, data in (
        ("bernoulli", torch.randint(2, (4, 5)).double()),
        ("continuous_bernoulli", torch.rand(4, 5)),
        ("gaussian", torch.randn(4, 5)),
    ):
        kwargs = {"observation_variance": "learned"} if decoder == "gaussian" else {}
        vae = elbox.VAE(5, 2, hidden=(7,), decoder=decoder, **kwargs)
        _perturb(vae)
        torch.testing.assert_close(
            vae.log_likelihood(data, z), vae.likelihood(z).log_prob(data), rtol=1e-12, atol=1e-10
        )


def _fit_on_digits(epochs=25, **vae_options):
    x, _ = digits()
    torch.manual_seed(0)
    vae = elbox.VAE(64, 4, hidden=(64,), decoder="gaussian", **vae_options)
    elbox.fit(vae, vae.guide, x, epochs=epochs, batch_size=128, lr=3e-3, seed=0)
    with torch.no_grad():
        terms = elbox.elbo(vae, vae.guide, x)
        distortion = (vae.reconstruct(x) - x).square().sum(-1).mean()
    return float(terms.kl.mean()), float(distortion)


def test_observation_variance_trades_distortion_for_rate():
    """A smaller σ² weights reconstruction more: more KL (rate), less squared error (distortion)."""
    results = [_fit_on_digits(observation_variance=v) for v in (0.01, 0.1, 1.0)]
    rates, distortions = zip(*results)
    assert rates[0] > rates[1] > rates[2], rates
    assert distortions[0] < distortions[1] < distortions[2], distortions


def test_beta_trades_the_same_way():
    low = _fit_on_digits(observation_variance=0.1, beta=0.25)
    high = _fit_on_digits(observation_variance=0.1, beta=4.0)
    assert low[0] > high[0] and low[1] < high[1]


def test_plain_autoencoder_reports_infinite_kl_and_elbo_and_trains_on_reconstruction():
    x, _ = digits()
    ae = elbox.VAE(64, 4, hidden=(32,), decoder="gaussian", observation_variance=0.1, deterministic_encoder=True)
    before = elbox.elbo(ae, ae.guide, x)
    assert torch.isposinf(before.kl).all() and torch.isneginf(before.value).all()
    assert torch.isfinite(before.reconstruction).all()
    history = elbox.fit(ae, ae.guide, x, epochs=5, batch_size=256, lr=3e-3, seed=0)
    assert all(v == float("-inf") for v in history.lower_bound)  # reported as what it is
    after = elbox.elbo(ae, ae.guide, x)
    assert float(after.reconstruction.detach().mean()) > float(before.reconstruction.detach().mean())


def test_kl_warmup_and_clipping_run_and_record_the_true_bound():
    x = binarize(digits()[0], method="fixed", generator=torch.Generator().manual_seed(0))[:300]
    vae = elbox.VAE(64, 3, hidden=(32,))
    history = elbox.fit(vae, vae.guide, x, epochs=4, batch_size=100, lr=1e-3, kl_warmup=3, clip_grad_norm=5.0, seed=0)
    assert len(history.lower_bound) == 4 and all(v < 0 for v in history.lower_bound)
    with pytest.raises(ValueError, match="clip_grad_norm must be positive"):
        elbox.fit(vae, vae.guide, x, epochs=1, clip_grad_norm=0.0)


def test_vae_rejects_bad_input_with_clear_errors():
    vae = elbox.VAE(64, 2, hidden=(8,))
    with pytest.raises(ValueError, match="needs binary data.*continuous_bernoulli"):
        vae.check_data(torch.rand(3, 64))
    with pytest.raises(ValueError, match=r"x must have shape \[B, 64\] for VAE; received shape \(3, 784\)"):
        vae.check_data(torch.ones(3, 784))
    with pytest.raises(ValueError, match="decoder must be one of"):
        elbox.VAE(4, 2, decoder="poisson")
    with pytest.raises(ValueError, match="observation_variance must be a positive number or 'learned'"):
        elbox.VAE(4, 2, decoder="gaussian", observation_variance=0.0)
    with pytest.raises(ValueError, match="data in \\[0, 1\\]"):
        elbox.VAE(4, 2, decoder="continuous_bernoulli").check_data(torch.full((2, 4), 1.5))
