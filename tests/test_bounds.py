"""Bounds: ordering, special cases, gradients (pathwise, score-function, analytic) and checks."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Independent, MultivariateNormal, Normal, kl_divergence

import elbox
from elbox.guides import Categorical, Exact, FullRankNormal, MeanFieldNormal


def _fa_case():
    model = elbox.FactorAnalysis(5, 2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    x, _ = model.sample(4)
    guide = MeanFieldNormal(2, num_points=4, init_scale=0.6)
    with torch.no_grad():
        guide.loc.add_(torch.randn_like(guide.loc))
    return model, x, guide


def _replicates(fn, R: int = 2000) -> tuple[torch.Tensor, torch.Tensor]:
    values = torch.stack([fn().detach() for _ in range(R)])  # [R, B]
    return values.mean(0), values.std(0) / R**0.5


def test_iwae_below_evidence_and_increasing_in_num_samples():
    model, x, guide = _fa_case()
    log_px = model.log_evidence(x).detach()
    previous = None
    for S in (1, 4, 16, 64):
        mean, se = _replicates(lambda S=S: elbox.iwae(model, guide, x, num_samples=S), R=1000)
        assert (mean < log_px + 4 * se).all()
        if previous is not None:
            assert (mean > previous[0] - 4 * (se**2 + previous[1] ** 2).sqrt()).all()
            assert (mean > previous[0]).any()
        previous = (mean, se)
    elbo_value = elbox.elbo(model, guide, x).value.detach()
    assert (previous[0] > elbo_value).all()


def test_iwae_with_one_sample_is_the_sampled_elbo():
    model, x, guide = _fa_case()
    torch.manual_seed(3)
    a = elbox.iwae(model, guide, x, num_samples=1)
    torch.manual_seed(3)
    b = elbox.elbo(model, guide, x, num_samples=1, kl="mc", expectation="sample").value
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_renyi_special_cases():
    model, x, guide = _fa_case()
    torch.manual_seed(5)
    a1 = elbox.renyi(model, guide, x, alpha=1.0, num_samples=8)
    torch.manual_seed(5)
    e = elbox.elbo(model, guide, x, num_samples=8, kl="mc", expectation="sample").value
    torch.testing.assert_close(a1, e, rtol=0, atol=1e-12)
    torch.manual_seed(5)
    a0 = elbox.renyi(model, guide, x, alpha=0.0, num_samples=8)
    torch.manual_seed(5)
    iw = elbox.iwae(model, guide, x, num_samples=8)
    torch.testing.assert_close(a0, iw, rtol=0, atol=1e-12)
    # Rényi bounds decrease in α (same particles): α = 0.5 lies between IWAE and the ELBO.
    torch.manual_seed(5)
    half = elbox.renyi(model, guide, x, alpha=0.5, num_samples=8)
    assert (half <= a0 + 1e-12).all() and (half >= a1 - 1e-12).all()
    with pytest.raises(ValueError, match="alpha"):
        elbox.renyi(model, guide, x, alpha=float("inf"), num_samples=2)


def test_analytic_elbo_gradient_matches_finite_differences():
    model, x, _ = _fa_case()
    guide = FullRankNormal(2, num_points=4, init_scale=0.7)
    params = [guide.loc, guide._raw]

    def objective(loc, raw):
        guide.loc.data, guide._raw.data = loc, raw
        q = MultivariateNormal(loc, scale_tril=elbox.distributions._gaussian.raw_to_tril(raw))
        return model.expected_log_likelihood(x, q) - kl_divergence(q, model.prior())

    inputs = tuple(p.detach().clone().requires_grad_() for p in params)
    assert torch.autograd.gradcheck(objective, inputs)
    # ... and at the exact posterior the gradient of the ELBO with respect to q vanishes.
    post = model.posterior(x)
    loc = post.loc.detach().clone().requires_grad_()
    scale_tril = post.scale_tril.detach().clone().requires_grad_()
    q = MultivariateNormal(loc, scale_tril=scale_tril)
    value = (model.expected_log_likelihood(x, q) - kl_divergence(q, model.prior())).sum()
    grads = torch.autograd.grad(value, (loc, scale_tril))
    assert max(float(g.tril().abs().max()) for g in grads) < 1e-8


def test_pathwise_gradient_is_unbiased_for_the_analytic_gradient():
    model, x, guide = _fa_case()
    exact = elbox.elbo(model, guide, x).value.sum()
    exact_grad = torch.autograd.grad(exact, [guide.loc, guide.log_scale])
    R = 2000
    index = torch.arange(4).repeat(R)
    sampled = elbox.elbo(model, guide, x[index], index=index, expectation="sample", kl="mc").value
    per_rep = sampled.reshape(R, 4)
    grads = [torch.stack(g) for g in zip(*[
        torch.autograd.grad(per_rep[r].sum(), [guide.loc, guide.log_scale], retain_graph=True) for r in range(0, R, 10)
    ])]  # [R/10, ...]
    for g, e in zip(grads, exact_grad):
        mean, se = g.mean(0), g.std(0) / g.shape[0] ** 0.5
        assert ((mean - e).abs() < 4 * se + 1e-12).all()


def test_score_function_gradient_is_unbiased_for_the_enumerated_gradient():
    """For a categorical q the sampled ELBO's gradient (score function) averages to the exact one."""
    K = 3
    model = elbox.GaussianMixture(K, 2, loc=torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]]))
    x, _ = model.sample(2)
    guide = Categorical(K, num_points=2, init_logits=torch.randn(2, K))
    exact = torch.autograd.grad(elbox.elbo(model, guide, x).value.sum(), guide.logits)[0]
    samples = []
    for _ in range(3000):
        value = elbox.elbo(model, guide, x, expectation="sample", num_samples=4).value.sum()
        samples.append(torch.autograd.grad(value, guide.logits)[0])
    samples = torch.stack(samples)
    mean, se = samples.mean(0), samples.std(0) / samples.shape[0] ** 0.5
    assert ((mean - exact).abs() < 4 * se).all(), (mean - exact) / se


def test_sampled_value_is_the_true_bound_not_the_surrogate():
    K = 3
    model = elbox.GaussianMixture(K, 2)
    x, _ = model.sample(5)
    guide = Categorical(K, num_points=5)
    torch.manual_seed(1)
    terms = elbox.elbo(model, guide, x, expectation="sample", num_samples=6, kl="mc")
    torch.testing.assert_close(terms.value, terms.reconstruction - terms.kl, rtol=0, atol=1e-12)
    torch.manual_seed(1)
    iw = elbox.iwae(model, guide, x, num_samples=6)
    torch.manual_seed(1)
    log_w, _ = elbox.bounds.log_weights(model, guide, x, num_samples=6)
    torch.testing.assert_close(iw, log_w.logsumexp(0) - torch.log(torch.tensor(6.0)), rtol=0, atol=1e-12)


def test_registered_kl_between_full_and_diagonal_gaussians():
    loc_q, loc_p = torch.randn(4, 3), torch.randn(3)
    sq, sp = torch.rand(4, 3) + 0.2, torch.rand(3) + 0.2
    diag_q = Independent(Normal(loc_q, sq), 1)
    diag_p = Independent(Normal(loc_p, sp), 1)
    expected = kl_divergence(diag_q, diag_p)
    full_q = MultivariateNormal(loc_q, scale_tril=torch.diag_embed(sq))
    full_p = MultivariateNormal(loc_p, scale_tril=torch.diag(sp))
    torch.testing.assert_close(kl_divergence(full_q, diag_p), expected)
    torch.testing.assert_close(kl_divergence(diag_q, full_p), expected)


def test_guide_that_does_not_match_the_model_is_rejected():
    model, x, _ = _fa_case()
    with pytest.raises(ValueError, match=r"latent shape is \[3\] but the model's prior has \[2\]"):
        elbox.elbo(model, MeanFieldNormal(3), x)
    coin = elbox.BetaBernoulli()

    class RealLine(elbox.guides.Guide):
        def forward(self, x, index=None):
            return Normal(torch.zeros(x.shape[0]), 1.0)

    with pytest.raises(ValueError, match="does not cover the model's latent space"):
        elbox.elbo(coin, RealLine(), torch.ones(3, 4))
    with pytest.raises(ValueError, match="does not cover"):
        elbox.elbo(coin, Categorical(2), torch.ones(3, 4))
    with pytest.raises(ValueError, match="num_points=7.*no index"):
        elbox.elbo(model, MeanFieldNormal(2, num_points=7), x)
    with pytest.raises(ValueError, match=r"index must lie in \[0, 4\)"):
        elbox.elbo(model, MeanFieldNormal(2, num_points=4), x, index=torch.tensor([0, 1, 2, 9]))
    with pytest.raises(ValueError, match="num_samples must be an integer >= 1"):
        elbox.iwae(model, MeanFieldNormal(2), x, num_samples=0)
    with pytest.raises(ValueError, match="kl must be one of"):
        elbox.elbo(model, MeanFieldNormal(2), x, kl="exact")
    with pytest.raises(ValueError, match="no closed-form"):
        mixture = elbox.GaussianMixture(2, 5)
        elbox.elbo(mixture, Categorical(2), x, expectation="analytic")


def test_exact_guide_needs_a_tractable_model():
    with pytest.raises(TypeError, match="exact posterior"):
        Exact(torch.nn.Linear(2, 2))
