"""Deep Markov models: the linear-Gaussian configuration against the Kalman filter (float64
identities, SMC unbiasedness, IWAE/FIVO monotone in particles), guides, objectives, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import elbox
from elbox import DeepMarkovModel, Sequences
from elbox.bounds.sequence import elbo_steps, smc
from elbox.distributions import MarkovPath
from elbox.distributions.smc import particle_filter, resample_indices
from elbox.guides import Guide, StructuredGuide
from elbox.guides.sequence import GUIDE_KINDS, reverse_sequences

LENGTHS = torch.tensor([6, 4, 1, 6, 3])


def _linear_dmm(D=2, obs=2, seed=0) -> DeepMarkovModel:
    """A DMM whose transition and emission are linear-Gaussian: an LGSSM."""
    torch.manual_seed(seed)
    model = DeepMarkovModel(obs, D, transition="linear", emission="gaussian", emission_hidden=(),
                            observation_variance=0.5)  # fmt: skip
    with torch.no_grad():
        A = torch.randn(D, D)
        model.transition.linear.weight.copy_(0.8 * A / torch.linalg.matrix_norm(A, 2))
        model.transition.raw_scale.copy_(torch.randn(D) * 0.3)
        model.emitter[0].weight.copy_(torch.randn(obs, D))
        model.emitter[0].bias.zero_()
        model.z_0.copy_(torch.randn(D))
    return model


def _data(model, lengths=LENGTHS):
    x, _ = model.sample(len(lengths), num_steps=int(lengths.max()))
    return Sequences(x, lengths=lengths)


class PriorGuide(Guide):
    """The bootstrap proposal: q = the model's prior (the particle filter of Gordon et al.)."""

    def __init__(self, model):
        super().__init__()
        object.__setattr__(self, "model", model)
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x, index=None):
        return self.model.prior_for(x)


def _perturbed_guide(model, kind="st-r", **options) -> StructuredGuide:
    guide = model.guide(kind, rnn_dim=8, **options)
    with torch.no_grad():
        for p in guide.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return guide


# The linear-Gaussian DMM is an LGSSM: exact identities in float64.


def test_the_linear_gaussian_dmm_has_the_kalman_filters_evidence_and_posterior():
    model = _linear_dmm()
    lgssm = model.to_lgssm()
    x = _data(model)
    log_px = lgssm.log_evidence(x)
    posterior = lgssm.posterior(x)
    z = torch.randn(7, len(LENGTHS), int(LENGTHS.max()), 2) * 2  # any paths at all
    # log p(x, z) − log p(z | x) = log p(x) for every z
    torch.testing.assert_close(model.log_joint(x, z) - posterior.log_prob(z), log_px.expand(7, -1), rtol=0, atol=1e-9)


@pytest.mark.parametrize("kind", GUIDE_KINDS)
def test_log_evidence_is_elbo_plus_kl_to_the_posterior_for_any_structured_guide(kind):
    model = _linear_dmm()
    x = _data(model)
    log_px = model.to_lgssm().log_evidence(x)
    guide = _perturbed_guide(model, kind)
    q = guide(model.check_data(x))
    z, log_q = q.rsample_and_log_prob((64,))
    elbo_draws = model.log_joint(x, z) - log_q  # [S, B]
    kl_draws = log_q - model.to_lgssm().posterior(x).log_prob(z)
    # the same particles: ELBO + KL(q ‖ p(z | x)) = log p(x) to rounding
    torch.testing.assert_close(elbo_draws.mean(0) + kl_draws.mean(0), log_px, rtol=0, atol=1e-9)
    assert (kl_draws.mean(0) > 0).all()
    # the step-by-step ELBO with analytic KLs estimates the same bound: within 4 standard errors
    torch.manual_seed(1)
    S = 2000
    steps = elbo_steps(model, guide, x, num_samples=S)
    assert steps.kl_method == "analytic"
    spread = elbo_draws.std(0) / math.sqrt(64) + 1e-12
    assert ((steps.value.sum(-1) - elbo_draws.mean(0)).abs() < 5 * spread + 0.05).all()
    terms = elbox.elbo(model, guide, x, num_samples=4)
    assert terms.kl_method == "analytic" and (terms.value < log_px).all()


def test_the_per_step_terms_vanish_past_each_end_and_sum_to_the_elbo():
    model = _linear_dmm()
    x = _data(model)
    guide = _perturbed_guide(model)
    torch.manual_seed(3)
    steps = elbox.bounds.elbo_steps(model, guide, x, num_samples=3)
    torch.manual_seed(3)
    terms = elbox.elbo(model, guide, x, num_samples=3)
    mask = model.check_data(x).mask
    assert (steps.value[~mask] == 0).all() and (steps.kl[~mask] == 0).all()
    torch.testing.assert_close(steps.value.sum(-1), terms.value)
    assert (steps.kl[mask] >= 0).all()


def test_smc_evidence_is_unbiased_within_its_standard_error():
    model = _linear_dmm()
    x = _data(model)
    log_px = model.to_lgssm().log_evidence(x)
    guide = PriorGuide(model)
    R = 4000
    xs = model.check_data(x)
    B = len(xs)
    replicas = Sequences(xs.values.repeat(R // 2, 1, 1), xs.mask.repeat(R // 2, 1))  # runs side by side
    with torch.no_grad():
        runs = torch.cat([smc(model, guide, replicas, num_samples=4, resample=resample).log_z.view(R // 2, B)
                          for resample in ("systematic", "multinomial")])  # [R, B]
    ratio = (runs - log_px).exp()  # Ẑ / p(x)
    mean, se = ratio.mean(0), ratio.std(0) / math.sqrt(R)
    assert ((mean - 1).abs() < 4 * se).all(), (mean, se)
    # and log Ẑ is biased low (Jensen): FIVO is a lower bound
    assert (runs.mean(0) < log_px).all()


def test_log_evidence_by_smc_agrees_with_the_kalman_filter():
    model = _linear_dmm()
    x = _data(model)
    log_px = model.to_lgssm().log_evidence(x)
    estimate = elbox.log_evidence(model, x, guide=PriorGuide(model), method="smc", num_samples=256, num_runs=16)
    assert estimate.method == "smc" and estimate.num_samples == 256
    assert ((estimate.value - log_px).abs() < 4 * estimate.stderr + 1e-3).all()


def test_iwae_is_fivo_without_resampling_from_the_same_random_numbers():
    model = _linear_dmm()
    x = _data(model)
    guide = _perturbed_guide(model)
    torch.manual_seed(5)
    iwae = elbox.iwae(model, guide, x, num_samples=7)
    torch.manual_seed(5)
    fivo = elbox.bounds.fivo(model, guide, x, num_samples=7, resample="never")
    torch.testing.assert_close(iwae, fivo, rtol=0, atol=1e-10)
    torch.manual_seed(5)
    assert not torch.allclose(fivo, elbox.bounds.fivo(model, guide, x, num_samples=7, ess_threshold=1.0))


def test_iwae_and_fivo_increase_with_particles_towards_the_evidence():
    model = _linear_dmm()
    x = _data(model)
    log_px = model.to_lgssm().log_evidence(x).sum()
    guide = _perturbed_guide(model)
    R = 200
    xs = model.check_data(x)
    replicas = Sequences(xs.values.repeat(R, 1, 1), xs.mask.repeat(R, 1))  # R runs side by side
    with torch.no_grad():
        for resample in ("never", "systematic"):
            means = []
            for S in (1, 8, 64):
                runs = smc(model, guide, replicas, num_samples=S, resample=resample).log_z.view(R, -1).sum(-1)
                means.append((float(runs.mean()), float(runs.std()) / math.sqrt(R)))
            for (a, sa), (b, sb) in zip(means, means[1:]):
                assert b > a - 2 * math.hypot(sa, sb), (resample, means)
            assert means[-1][0] < float(log_px) + 2 * means[-1][1]
            assert means[-1][0] - means[0][0] > 2 * math.hypot(means[0][1], means[-1][1])


def test_the_particle_filter_resamples_at_the_threshold_and_not_after_the_end():
    model = _linear_dmm()
    x = _data(model)
    guide = PriorGuide(model)
    always = elbox.bounds.smc(model, guide, x, num_samples=16, ess_threshold=1.0)
    mask = model.check_data(x).mask
    last = mask & ~torch.cat([mask[:, 1:], torch.zeros_like(mask[:, :1])], 1)
    assert not always.resampled[last | ~mask].any()
    assert always.resampled[mask & ~last].all()
    never = smc(model, guide, x, num_samples=16, ess_threshold=0.0)
    assert not never.resampled.any()
    assert ((always.ess > 0) & (always.ess <= 16 + 1e-9)).all()


def test_resampling_draws_ancestors_in_proportion_to_the_weights():
    torch.manual_seed(0)
    w = torch.tensor([0.1, 0.2, 0.3, 0.4])
    for method in ("multinomial", "systematic"):
        counts = torch.zeros(4)
        for _ in range(500):
            a = resample_indices(w.log().unsqueeze(-1).expand(4, 3), method)  # [S, B]
            counts += torch.bincount(a.flatten(), minlength=4)
        freq = counts / counts.sum()
        assert (freq - w).abs().max() < 0.02, (method, freq)
    # systematic: each ancestor appears floor(S w) or ceil(S w) times
    a = resample_indices(torch.tensor([0.5, 0.25, 0.25, 0.0]).log().unsqueeze(-1), "systematic")
    assert torch.bincount(a.flatten(), minlength=4).tolist() == [2, 1, 1, 0]


def test_the_resampling_gradient_term_is_zero_in_value_and_changes_the_gradient():
    model = _linear_dmm()
    x = _data(model)
    guide = _perturbed_guide(model)
    torch.manual_seed(2)
    plain = elbox.bounds.fivo(model, guide, x, num_samples=8, resample="multinomial", ess_threshold=1.0)
    torch.manual_seed(2)
    scored = elbox.bounds.fivo(model, guide, x, num_samples=8, resample="multinomial", ess_threshold=1.0,
                               resampling_gradient=True)  # fmt: skip
    torch.testing.assert_close(plain, scored)
    g1 = torch.autograd.grad(plain.sum(), guide.hidden_to_loc.weight)[0]
    g2 = torch.autograd.grad(scored.sum(), guide.hidden_to_loc.weight)[0]
    assert not torch.allclose(g1, g2)
    with pytest.raises(ValueError, match="multinomial"):
        elbox.bounds.fivo(model, guide, x, num_samples=4, resample="systematic", resampling_gradient=True)


# The model and guides on their own.


def test_reversal_within_each_length_is_its_own_inverse():
    v = torch.arange(12.0).view(2, 6, 1)
    lengths = torch.tensor([6, 3])
    r = reverse_sequences(v, lengths)
    assert r[1, :, 0].tolist() == [8.0, 7.0, 6.0, 9.0, 10.0, 11.0]
    assert torch.equal(reverse_sequences(r, lengths), v)


@pytest.mark.parametrize("kind", GUIDE_KINDS)
def test_a_guides_path_ignores_the_padding_and_scores_its_own_draws(kind):
    model = DeepMarkovModel(5, 3, transition_dim=8, emission_hidden=(8,))
    x = _data(model)
    guide = model.guide(kind, rnn_dim=8)
    xs = model.check_data(x)
    q = guide(xs)
    z, log_q = q.rsample_and_log_prob((4,))
    assert z.shape == (4, 5, 6, 3) and log_q.shape == (4, 5)
    torch.testing.assert_close(q.log_prob(z), log_q)
    # changing the padded values changes nothing: the RNNs read each sequence within its own length
    noisy = Sequences(torch.where(xs.mask.unsqueeze(-1), xs.values, 1.0), xs.mask)
    loc, _ = q.conditionals(z)
    loc2, _ = guide(model.check_data(noisy)).conditionals(z)
    torch.testing.assert_close(loc[:, xs.mask], loc2[:, xs.mask])


def test_an_iaf_guide_draws_and_scores_consistently_with_a_sampled_kl():
    model = DeepMarkovModel(5, 3, transition_dim=8, emission_hidden=(8,))
    x = _data(model)
    guide = model.guide("st-r", rnn_dim=8, iafs=2, iaf_dim=8)
    q = guide(model.check_data(x))
    z, log_q = q.rsample_and_log_prob((3,))
    torch.testing.assert_close(q.log_prob(z), log_q)
    assert elbox.elbo(model, guide, x).kl_method == "mc"


@pytest.mark.parametrize("emission", ["bernoulli", "gaussian", "categorical"])
def test_every_emission_trains_with_elbo_iwae_and_fivo(emission):
    model = DeepMarkovModel(4, 2, transition_dim=8, emission=emission, emission_hidden=(8,), input_dim=1,
                            observation_variance="learned" if emission == "gaussian" else 1.0)  # fmt: skip
    u = torch.randn(6, 5, 1)
    x, _ = model.sample(6, num_steps=5, inputs=u)
    x = Sequences(x, lengths=torch.tensor([5, 3, 2, 5, 1, 4]), inputs=u)
    for bound in ("elbo", "iwae", "fivo"):
        guide = model.guide("st-r", rnn_dim=8)
        history = elbox.fit(model, guide, x, bound=bound, epochs=3, batch_size=3, lr=1e-2,
                            **({} if bound == "elbo" else {"num_samples": 3}))  # fmt: skip
        assert all(math.isfinite(v) for v in history.lower_bound)


def test_kl_warmup_drives_the_elbos_beta_on_a_dmm():
    model = DeepMarkovModel(3, 2, transition_dim=4, emission_hidden=())
    x, _ = model.sample(8, num_steps=4)
    schedule = elbox.Schedule("beta", lambda step: 0.2 + 0.8 * min(1.0, step / 4), every=1)
    history = elbox.fit(model, model.guide(rnn_dim=4), x, epochs=2, batch_size=4, schedules=[schedule])
    assert len(history.lower_bound) == 2


def test_a_path_distribution_is_vectorized_over_particles():
    model = DeepMarkovModel(3, 2, transition_dim=4, emission_hidden=())
    x = _data(model)
    p = model.prior_for(x)
    assert isinstance(p, MarkovPath) and p.batch_shape == (5,) and p.event_shape == (6, 2)
    z = p.rsample((2, 3))
    assert z.shape == (2, 3, 5, 6, 2) and p.log_prob(z).shape == (2, 3, 5)


def test_the_filter_kernel_is_a_plain_function():
    # a one-step filter of a N(0, 1) latent observed through N(z, 1): log Ẑ estimates log N(x; 0, 2)
    x = torch.tensor([1.5])
    mask = torch.ones(1, 1, dtype=torch.bool)
    normal = torch.distributions.Normal

    def propose(t, z_prev):
        z = torch.randn_like(z_prev)
        return z, normal(0.0, 1.0).log_prob(z).sum(-1)

    def log_target(t, z_prev, z):
        return normal(0.0, 1.0).log_prob(z).sum(-1) + normal(z.squeeze(-1), 1.0).log_prob(x)

    out = particle_filter(propose, log_target, torch.zeros(20000, 1, 1), mask, 20000)
    assert abs(float(out.log_z) - float(normal(0.0, 2**0.5).log_prob(x))) < 0.02


# Bad input: clear errors naming the sequence and step.


def test_bad_sequences_are_refused_with_the_sequence_and_step_named():
    model = DeepMarkovModel(3, 2, transition_dim=4, emission_hidden=(), emission="gaussian", input_dim=2)
    guide = model.guide(rnn_dim=4)
    u = torch.randn(2, 4, 2)
    x = torch.randn(2, 4, 3)
    with pytest.raises(ValueError, match="T = 0"):
        elbox.elbo(model, guide, Sequences(torch.zeros(2, 0, 3), inputs=torch.zeros(2, 0, 2)))
    with pytest.raises(ValueError, match="lengths must lie in"):
        Sequences(x, lengths=torch.tensor([5, 2]), inputs=u)
    with pytest.raises(ValueError, match="lengths must be B=2"):
        Sequences(x, lengths=torch.tensor([4, 2, 1]), inputs=u)
    with pytest.raises(ValueError, match=r"inputs must have shape \[B, T, 2\]"):
        elbox.elbo(model, guide, Sequences(x, inputs=torch.randn(2, 4, 3)))
    bad = x.clone()
    bad[1, 2, 0] = float("nan")
    with pytest.raises(ValueError, match="sequence 1 .* step 2"):
        elbox.elbo(model, guide, Sequences(bad, inputs=u))
    # a NaN in the padding is no data, and no error
    padded = Sequences(bad, lengths=torch.tensor([4, 2]), inputs=u)
    assert torch.isfinite(elbox.elbo(model, guide, padded).value).all()
    other = DeepMarkovModel(3, 5, transition_dim=4, emission_hidden=(), emission="gaussian", input_dim=2)
    with pytest.raises(ValueError, match=r"latent shape is \[4, 5\] but the model's prior has \[4, 2\]"):
        elbox.elbo(model, other.guide(rnn_dim=4), Sequences(x, inputs=u))
    with pytest.raises(ValueError, match="resample must be one of"):
        elbox.bounds.fivo(model, guide, Sequences(x, inputs=u), num_samples=2, resample="stratified")


# The run layer: one registration, the ready configs.


def test_a_dmm_run_fits_evaluates_by_smc_and_draws_the_gap_over_time(tmp_path):
    from elbox.runs import evaluate_run, load_config, train_run

    config = load_config(elbox.runs.config.Path(__file__).parents[1] / "configs" / "dmm_lgssm.toml")
    config["train"]["epochs"] = 2
    config["evaluate"].update(num_samples=30, iwae_samples=5)
    result = train_run(None, tmp_path / "run", config=config)
    assert type(result["model"]).__name__ == "DeepMarkovModel" and (tmp_path / "run" / "gap_over_time.png").is_file()
    evaluation = evaluate_run(tmp_path / "run")
    assert evaluation["report"]["log_evidence"]["method"] == "smc"
    steps = evaluation["sequence"]
    assert steps["kl_method"] == "analytic" and set(steps["nll_per_frame"]) == {"total_frames", "per_sequence"}
    assert len(steps["gap_steps"]) == 20
    run = elbox.load_run(tmp_path / "run")
    assert run.guide.kind == "st-r"


def test_the_chorales_config_reads_the_embedded_piano_rolls():
    from elbox.runs import load_config
    from elbox.runs.data import load_data

    config = load_config(elbox.runs.config.Path(__file__).parents[1] / "configs" / "dmm_chorales.toml")
    train, _ = load_data(config, "train")
    test, _ = load_data(config, "test")
    assert train.values.shape[-1] == 88 and len(train) + len(test) + 37 == 371
    assert config["model"]["type"] == "dmm" and config["optimizer"]["beta1"] == 0.96


@pytest.mark.parametrize("kind", ["st-r", "st-lr", "st-l"])
def test_the_combiners_hand_written_backward_is_autograds(kind):
    model = DeepMarkovModel(5, 3, transition_dim=8, emission_hidden=(8,))
    x = _data(model)
    guide = model.guide(kind, rnn_dim=6)
    q = guide(model.check_data(x))
    loop = MarkovPath(q.step, q.initial, q.mask, q.context)  # the same steps, iterated under autograd
    weights = torch.randn(2, 5, 6, 3)
    grads = []
    for path in (q, loop):
        torch.manual_seed(7)
        z, log_q, loc, scale = path.rsample_steps((2,))
        loss = (weights * z).sum() + log_q.sum() + (loc * scale).sum()
        grads.append(torch.autograd.grad(loss, list(guide.parameters()), allow_unused=True, retain_graph=True))
    for a, b in zip(*grads):
        if a is not None or b is not None:
            torch.testing.assert_close(a, b)
    z0, h = torch.randn(3, 3), torch.randn(3, 4, 6)
    noise = torch.randn(3, 4, 3)
    from elbox.guides.sequence import _CombinerScan

    params = [torch.randn(6, 3), torch.randn(6), torch.randn(6, 6), torch.randn(6)]
    inputs = [z0, h, noise, *params]
    for t in inputs:
        t.requires_grad_(t is not noise)
    assert torch.autograd.gradcheck(lambda *a: _CombinerScan.apply(*a, 2.0), inputs)


@pytest.mark.parametrize("nonlinearity", ["relu", "tanh"])
def test_the_guides_rnn_is_torchs_with_its_gradient(nonlinearity):
    from elbox.guides.sequence import _rnn

    rnn = nn.RNN(3, 5, nonlinearity=nonlinearity, batch_first=True)
    x, h_0 = torch.randn(4, 7, 3, requires_grad=True), torch.randn(4, 5, requires_grad=True)
    ours, theirs = _rnn(rnn, x, h_0), rnn(x, h_0.unsqueeze(0))[0]
    torch.testing.assert_close(ours, theirs)
    weights = torch.randn(4, 7, 5)
    params = [x, h_0, *rnn.parameters()]
    for a, b in zip(torch.autograd.grad((weights * ours).sum(), params),
                    torch.autograd.grad((weights * theirs).sum(), params)):  # fmt: skip
        torch.testing.assert_close(a, b)


def test_a_trained_st_r_guide_closes_the_gap_and_mean_fields_stays_above_it_at_every_step():
    """On LGSSM data with the model at the truth: the Kalman filter's increments are the exact
    log p(x_t | x_<t), so the gap at each step is exact up to the ELBO's own Monte Carlo error."""
    model = _linear_dmm(seed=3)
    x, _ = model.sample(64, num_steps=12)
    lgssm = model.to_lgssm()
    exact_steps = lgssm._filter(lgssm.check_data(x)).log_norm  # log p(x_t | x_<t), [B, T]
    gaps = {}
    for kind in ("st-r", "mf-lr"):
        torch.manual_seed(0)
        guide = model.guide(kind, rnn_dim=16, nonlinearity="tanh")
        elbox.fit(model, guide, x, epochs=150, batch_size=64, lr=2e-2, optimize_model=False, seed=0)
        with torch.no_grad():
            steps = elbo_steps(model, guide, x, num_samples=64)
        gaps[kind] = (exact_steps - steps.value).mean(0)  # [T], averaged over sequences
        if kind == "st-r":
            # the evidence by SMC with the trained guide: within its error of the exact value, over the data
            estimate = elbox.log_evidence(model, x, guide=guide, method="smc", num_samples=64, num_runs=16)
            mean = estimate.mean()
            assert abs(mean.value - float(exact_steps.sum(-1).mean().detach())) < 4 * mean.stderr + 1e-3, mean
    assert gaps["st-r"].sum() < 0.7 * gaps["mf-lr"].sum(), gaps
    assert (gaps["mf-lr"][1:] > gaps["st-r"][1:]).float().mean() >= 0.75, gaps


def test_a_sequence_of_length_zero_or_past_the_padding_is_named():
    x = torch.randn(3, 4, 2)
    with pytest.raises(ValueError, match="sequence 1 has length 0: a sequence needs at least one step"):
        Sequences(x, lengths=torch.tensor([4, 0, 2]))
    with pytest.raises(ValueError, match="sequence 2 has length 5"):
        Sequences(x, lengths=torch.tensor([4, 1, 5]))
    with pytest.raises(ValueError, match="sequences\\[1\\] must be"):
        Sequences.from_list([torch.randn(3, 2), torch.randn(0, 2)])


def test_a_batch_padded_past_its_longest_sequence_has_the_same_bounds():
    model = _linear_dmm()
    x = _data(model)
    xs = model.check_data(x)
    padded = Sequences(torch.cat([xs.values, torch.zeros(5, 3, 2)], 1), torch.cat([xs.mask, xs.mask[:, :3] & False], 1))
    guide = _perturbed_guide(model)
    for bound in (elbox.iwae, elbox.bounds.fivo):
        torch.manual_seed(4)
        a = bound(model, guide, x, num_samples=3)
        torch.manual_seed(4)
        torch.testing.assert_close(bound(model, guide, padded, num_samples=3), a)


def test_the_particle_filter_on_a_categorical_latent_is_unbiased_for_the_hmms_forward_algorithm():
    """The filter kernel with a discrete z_t (one-hot particles) against the exact forward algorithm:
    a categorical-state model, proposals from a perturbed chain, ragged lengths."""
    from elbox.distributions.hmm_kernels import forward, hmm_log_evidence

    K, B, T, R = 3, 4, 6, 3000
    init, trans = torch.randn(K), torch.randn(K, K)
    log_e = torch.randn(B, T, K)  # log p(x_t | z_t = k)
    lengths = torch.tensor([6, 3, 1, 5])
    mask = torch.arange(T) < lengths.unsqueeze(-1)
    log_e = log_e * mask.unsqueeze(-1)  # no data past each end
    exact = hmm_log_evidence(init, trans, log_e)
    torch.testing.assert_close(forward(init, trans, log_e)[1].sum(-1), exact)
    proposal_init, proposal_trans = init + 0.5 * torch.randn(K), trans + 0.5 * torch.randn(K, K)
    replicas = mask.repeat(R, 1)  # R filters side by side, [R B, T]
    table = log_e.repeat(R, 1, 1)

    def logits(t, z_prev, a, b):
        return a.expand(*z_prev.shape[:-1], K) if t == 0 else z_prev @ b  # z one-hot, [S, N, K]

    def propose(t, z_prev):
        q = torch.distributions.OneHotCategorical(logits=logits(t, z_prev, proposal_init, proposal_trans))
        z = q.sample()
        return z, q.log_prob(z)

    def log_target(t, z_prev, z):
        p = torch.distributions.OneHotCategorical(logits=logits(t, z_prev, init, trans))
        return p.log_prob(z) + (z * table[:, t]).sum(-1)

    for resample in ("systematic", "multinomial"):
        out = particle_filter(propose, log_target, torch.zeros(8, R * B, K), replicas, 8, resample=resample)
        ratio = (out.log_z.view(R, B) - exact).exp()  # Ẑ / p(x)
        assert ((ratio.mean(0) - 1).abs() < 4 * ratio.std(0) / math.sqrt(R)).all(), (resample, ratio.mean(0))


def test_any_guide_over_whole_paths_gets_the_sampled_kl():
    model = _linear_dmm()
    x, _ = model.sample(6, num_steps=5)
    guide = elbox.guides.MeanFieldNormal((5, 2), num_points=6)
    terms = elbox.elbo(model, guide, x, num_samples=8)
    assert terms.kl_method == "mc" and (terms.value < model.to_lgssm().log_evidence(x)).all()
