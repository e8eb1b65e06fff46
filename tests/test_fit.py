"""Variational inference with fit: convergence to exact posteriors, seeds, non-finite guards."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import kl_divergence

import elbox
from elbox.guides import Beta, Categorical, FullRankNormal, MeanFieldNormal


def test_vi_on_the_coin_converges_to_the_exact_posterior():
    model = elbox.BetaBernoulli(2.0, 3.0)
    x = torch.tensor([[1.0, 1, 0, 1, 1, 0, 1, 1, 1, 0, 1, 1]])
    guide = Beta()
    history = elbox.fit(model, guide, x, epochs=3000, lr=0.02, seed=0)
    kl = float(kl_divergence(guide(x), model.posterior(x)).detach())
    assert kl < 1e-4
    assert abs(history.final - float(model.log_evidence(x))) < 1e-4
    assert history.method == "vi:elbo" and len(history.steps) == 3000


def test_vi_with_sampled_expectation_still_reaches_the_posterior_mean():
    model = elbox.BetaBernoulli(1.0, 1.0)
    x = torch.tensor([[1.0, 0, 1, 1, 1, 1, 0, 1]])
    guide = Beta()
    elbox.fit(model, guide, x, epochs=1500, lr=0.02, num_samples=64, expectation="sample", seed=0)
    assert abs(float((guide(x).mean - model.posterior(x).mean).detach())) < 0.02


def test_full_rank_q_closes_the_gap_that_mean_field_leaves_on_the_hierarchical_model():
    model = elbox.HierarchicalNormal(3, group_size=2, hyper_scale=2.0, group_scale=0.5, fit_noise=False)
    x, _ = model.sample(1)
    gaps = {}
    for name, guide in (("mean-field", MeanFieldNormal(4)), ("full-rank", FullRankNormal(4))):
        elbox.fit(model, guide, x, epochs=3000, lr=0.02, optimize_model=False, seed=0)
        gaps[name] = float(kl_divergence(guide(x), model.posterior(x)).detach())
    assert gaps["full-rank"] < 1e-4
    assert gaps["mean-field"] > 100 * gaps["full-rank"]


def test_vi_on_a_mixture_reaches_the_em_optimum_from_the_same_start():
    truth = elbox.GaussianMixture(3, 2, loc=4 * torch.randn(3, 2))
    x, _ = truth.sample(300)
    em_model, vi_model = elbox.GaussianMixture(3, 2), elbox.GaussianMixture(3, 2)
    for m in (em_model, vi_model):
        m.initialize(x, "kmeans++", generator=torch.Generator().manual_seed(0))
    elbox.em(em_model, x, max_iter=500, tol=1e-10)
    guide = Categorical(3, num_points=300, init_logits=vi_model.posterior(x).logits.detach())
    history = elbox.fit(vi_model, guide, x, epochs=600, lr=0.05, batch_size=100, seed=0)
    assert len(history.lower_bound) == 600 and len(history.steps) == 1800
    assert abs(history.final - float(em_model.log_evidence(x).detach().mean())) < 5e-3


def test_fit_is_reproducible_and_leaves_the_global_rng_alone():
    model = elbox.FactorAnalysis(4, 2)
    x, _ = model.sample(40)
    state = torch.get_rng_state()
    runs = []
    for _ in range(2):
        m = elbox.FactorAnalysis(4, 2)
        g = MeanFieldNormal(2, num_points=40)
        runs.append(elbox.fit(m, g, x, epochs=5, batch_size=8, expectation="sample", seed=3).steps)
    assert runs[0] == runs[1]
    assert torch.equal(state, torch.get_rng_state())


def test_fit_stops_on_a_non_finite_bound_naming_the_term():
    model = elbox.FactorAnalysis(3, 1)
    x, _ = model.sample(5)
    guide = MeanFieldNormal(1)
    x = x * 1e200  # finite data whose squares overflow: the reconstruction is -inf
    with pytest.raises(FloatingPointError, match="non-finite term: reconstruction"):
        elbox.fit(model, guide, x, epochs=1)


def test_fit_rejects_bad_arguments():
    model = elbox.FactorAnalysis(3, 1)
    x, _ = model.sample(5)
    with pytest.raises(ValueError, match="bound must be one of"):
        elbox.fit(model, MeanFieldNormal(1), x, bound="cubo")
    with pytest.raises(ValueError, match="lr must be positive"):
        elbox.fit(model, MeanFieldNormal(1), x, lr=0.0)
    with pytest.raises(ValueError, match="nothing to optimize"):
        elbox.fit(elbox.BetaBernoulli(), elbox.guides.Exact(elbox.BetaBernoulli()), torch.ones(2, 3))


def test_iwae_and_renyi_bounds_train():
    model = elbox.FactorAnalysis(4, 2)
    x, _ = model.sample(50)
    for bound, extra in (("iwae", {}), ("renyi", {"alpha": 0.5})):
        guide = MeanFieldNormal(2, num_points=50)
        h = elbox.fit(
            model, guide, x, bound=bound, epochs=200, num_samples=8, lr=0.05, optimize_model=False, seed=0, **extra
        )
        assert h.lower_bound[-1] > h.lower_bound[0]
        assert h.final < float(model.log_evidence(x).detach().mean()) + 0.05


def test_progress_is_a_line_per_epoch_where_the_output_is_not_a_terminal(capsys):
    model = elbox.FactorAnalysis(3, 1)
    x, _ = model.sample(30)
    elbox.fit(model, MeanFieldNormal(1, num_points=30), x, epochs=40, progress=True, seed=0)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert lines[0].startswith("epoch 1/40 · bound") and lines[-1].startswith("epoch 40/40 · bound")
    assert len(lines) < 10  # rate-limited: the first, the last, and at most one every 5 s


@pytest.mark.parametrize("argument", ["data", "validation"])
def test_a_message_about_the_data_names_the_argument_wherever_it_comes_from(argument):
    """The models name the data as the caller calls them (check_data's ``name``), so a message
    from inside a model's own check (the Bernoulli decoder's, a sequence model's) names ``data`` or
    ``validation``, not ``x``. Before, fit rewrote messages that began with "x " and missed these."""
    torch.manual_seed(0)
    binary = (torch.rand(20, 6) > 0.5).float()
    bad = {"data": binary.clone(), "validation": binary.clone()}
    bad[argument][3, 2] = 0.5
    vae = elbox.VAE(6, 2, hidden=(8,))
    with pytest.raises(ValueError, match=f"binary data; {argument} holds"):
        elbox.fit(vae, vae.guide, bad["data"], validation=bad["validation"], epochs=1)
    hmm = elbox.HMM(2, dim=1)
    seqs = {"data": torch.randn(4, 5, 1), "validation": torch.randn(4, 5, 1)}
    seqs[argument] = torch.randn(4, 5, 2)
    with pytest.raises(ValueError, match=f"^{argument} must have shape"):
        elbox.fit(hmm, None, seqs["data"], validation=seqs["validation"], bound="max_likelihood", epochs=1)


def test_fit_options_are_declared_once_and_read_everywhere():
    """FitOptions is the one declaration: fit's signature shows its fields with their defaults,
    the checkpoint records exactly the resume options it marks, keyword options and an options
    object are the same call, and a bad value names the option."""
    import dataclasses
    import inspect

    from elbox.inference.fit import _RESUME_KEYS

    fields = {f.name: f.default for f in dataclasses.fields(elbox.FitOptions)}
    signature = inspect.signature(elbox.fit).parameters
    assert all(signature[name].default == default for name, default in fields.items())
    assert set(elbox.FitOptions.resume_names()) <= set(_RESUME_KEYS)
    assert set(_RESUME_KEYS) - set(elbox.FitOptions.resume_names()) == {"bound", "objective_options", "world_size"}
    torch.manual_seed(0)
    x = torch.randn(30, 3)

    def run(**how):
        model = elbox.FactorAnalysis(3, 1)
        return elbox.fit(model, MeanFieldNormal(1, num_points=30), x, **how).steps

    by_keyword = run(epochs=3, batch_size=10, lr=0.05, seed=4)
    by_object = run(options=elbox.FitOptions(epochs=3, batch_size=10, lr=0.05, seed=4))
    overridden = run(options=elbox.FitOptions(epochs=3, batch_size=10, lr=0.5, seed=4), lr=0.05)
    assert by_keyword == by_object == overridden
    with pytest.raises(ValueError, match="lr must be positive"):
        elbox.FitOptions(lr=-1.0)
    with pytest.raises(TypeError, match="options must be a FitOptions"):
        run(options={"lr": 0.1})


def test_a_checkpoint_records_the_resume_options(tmp_path):
    from elbox.inference.fit import _RESUME_KEYS
    from elbox.io.run import RunDirectory, load_checkpoint

    model = elbox.FactorAnalysis(3, 1)
    elbox.fit(model, MeanFieldNormal(1, num_points=20), torch.randn(20, 3), epochs=1, run_dir=tmp_path / "run", seed=1)
    _, meta = load_checkpoint(RunDirectory(tmp_path / "run").checkpoint())
    assert set(meta["options"]) == set(_RESUME_KEYS)
