"""The Gaussian VAE's fused one-particle ELBO (elbox/objectives/_fused.py): the same values and
the same gradients as autograd through the general path, in float64 on random instances, and
taken exactly where it computes what the general path does."""

from __future__ import annotations

import pytest
import torch

import elbox
from elbox.bounds import elbo
from elbox.data import Batch
from elbox.objectives import _fused, make_objective
from elbox.precision import matmul_precision


def _instance(seed, activation="tanh", decoder="bernoulli", variance=1.0, hidden=(7, 5), D=12, L=3, B=9):
    torch.manual_seed(seed)
    vae = elbox.VAE(D, L, hidden=hidden, activation=activation, decoder=decoder, observation_variance=variance)
    with torch.no_grad():  # away from the initialization's symmetries
        for p in vae.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = (torch.rand(B, D) < 0.5).double() if decoder == "bernoulli" else torch.randn(B, D)
    return vae, x


@pytest.fixture
def spy(monkeypatch):
    """Counts the fused path's calls."""
    calls = []
    apply = _fused._FusedELBO.apply

    def counted(*args):
        calls.append(1)
        return apply(*args)

    monkeypatch.setattr(_fused._FusedELBO, "apply", counted)
    return calls


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(("activation", "decoder", "variance", "hidden"), [
    ("tanh", "bernoulli", 1.0, (7, 5)),
    ("relu", "bernoulli", 1.0, (6,)),
    ("tanh", "bernoulli", 1.0, ()),
    ("tanh", "gaussian", 0.5, (7, 5)),
    ("relu", "gaussian", "learned", (7, 5, 4)),
])  # fmt: skip
@pytest.mark.parametrize("beta", [1.0, 0.3])
def test_fused_values_and_gradients_equal_autograd_through_the_general_path(
    seed, activation, decoder, variance, hidden, beta, spy
):
    vae, x = _instance(seed, activation, decoder, variance, hidden)
    objective = make_objective("elbo", vae, vae.guide, beta=beta)
    weights = torch.randn(len(x))  # any upstream gradient, not only the batch mean's
    torch.manual_seed(100 + seed)
    out = objective(x)
    assert spy == [1]
    (out.surrogate * weights).sum().backward()
    fused = {name: p.grad.clone() for name, p in objective.named_parameters()}
    objective.zero_grad()
    torch.manual_seed(100 + seed)  # the same draw: the fused path consumes the RNG as Normal.rsample does
    terms = elbo(vae, vae.guide, x)
    ((terms.reconstruction - beta * terms.kl) * weights).sum().backward()
    assert spy == [1]  # the bound function itself is the general path
    torch.testing.assert_close(out.value, terms.value, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.parts["reconstruction"], terms.reconstruction, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.parts["kl"], terms.kl, rtol=1e-12, atol=1e-12)
    for name, p in objective.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(fused[name], p.grad, rtol=1e-10, atol=1e-12, msg=name)


def test_a_clamped_log_scale_passes_no_gradient_as_in_autograd(spy):
    vae, x = _instance(0)
    with torch.no_grad():
        vae.guide.encoder[-1].bias[3:] = torch.tensor([40.0, -40.0, 0.0])  # two log σ beyond ±15
    objective = make_objective("elbo", vae, vae.guide)
    torch.manual_seed(1)
    objective(x).surrogate.sum().backward()
    fused = vae.guide.encoder[-1].bias.grad.clone()
    objective.zero_grad()
    torch.manual_seed(1)
    elbo(vae, vae.guide, x).value.sum().backward()
    assert spy == [1] and fused[3] == 0 and fused[4] == 0 and fused[5] != 0
    torch.testing.assert_close(fused, vae.guide.encoder[-1].bias.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", ["flow guide", "two particles", "mc kl", "elu", "continuous bernoulli",
                                  "deterministic", "subclass", "bfloat16"])  # fmt: skip
def test_everything_else_takes_the_general_path(case, spy):
    options = {"hidden": (6,)}
    if case == "flow guide":
        options["guide"] = "flow"
    if case == "elu":
        options["activation"] = "elu"
    if case == "continuous bernoulli":
        options["decoder"] = "continuous_bernoulli"
    if case == "deterministic":
        options["deterministic_encoder"] = True
    cls = type("MyVAE", (elbox.VAE,), {}) if case == "subclass" else elbox.VAE
    vae = cls(10, 2, **options)
    if case == "bfloat16":
        vae.float()
    x = (torch.rand(4, 10) < 0.5).to(next(vae.parameters()).dtype)
    if case == "continuous bernoulli":
        x = torch.rand(4, 10)
    bound = {"two particles": {"num_samples": 2}, "mc kl": {"kl": "mc"}}.get(case, {})
    objective = make_objective("elbo", vae, vae.guide, **bound)
    with matmul_precision("bfloat16" if case == "bfloat16" else "float32"):
        objective(x)
    assert spy == []


def test_a_fit_by_the_fused_path_is_the_general_paths_fit(monkeypatch, spy):
    vae, _ = _instance(0, hidden=(8,), D=16, B=1)
    x = torch.rand(60, 16)  # intensities: dynamic binarization, as the VAEs are trained
    init = {k: v.clone() for k, v in vae.state_dict().items()}
    fused = elbox.fit(vae, vae.guide, x, epochs=3, batch_size=20, seed=0, binarization="dynamic")
    assert len(spy) == 9
    monkeypatch.setattr("elbox.objectives.bounds.fused_elbo_parts", lambda *args: None)
    vae.load_state_dict(init)
    general = elbox.fit(vae, vae.guide, x, epochs=3, batch_size=20, seed=0, binarization="dynamic")
    assert len(spy) == 9
    assert fused.steps == pytest.approx(general.steps, rel=1e-12)
    assert fused.lower_bound == pytest.approx(general.lower_bound, rel=1e-12)


def test_unchecked_data_are_checked_on_the_fused_path(spy):
    vae, _ = _instance(0)
    objective = make_objective("elbo", vae, vae.guide)
    with pytest.raises(ValueError, match="the Bernoulli decoder needs binary data"):
        objective(torch.full((3, 12), 0.5))
    objective(Batch(torch.full((3, 12), 1.0), None, checked=True))  # what fit has checked is not checked again
    assert spy == [1]
