"""Objectives as modules: the registry, an objective defined outside elbox trained through fit and
`elbox fit`, schedules driving the objective's attributes, the Batch, and the data checks (no
caches keyed on tensors: inference mode and numpy-shared memory)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import elbox
from elbox.bounds import elbo, iwae
from elbox.data import Batch, Sequences
from elbox.guides import Categorical, MeanFieldNormal
from elbox.inference import Schedule
from elbox.objectives import ELBO, IWAE, OBJECTIVES, MaxLikelihood, Objective, Output, register_objective


@register_objective("test_tempered_elbo")
class TemperedELBO(Objective):
    """An objective written outside elbox: the ELBO with the reconstruction tempered by τ (a buffer,
    so a schedule can drive it and a checkpoint keeps it)."""

    def __init__(self, model, guide, *, temperature: float = 1.0, num_samples: int = 1):
        super().__init__(model, guide)
        self.register_buffer("temperature", torch.tensor(float(temperature)))
        self.num_samples = num_samples
        self.calls = 0

    def options(self) -> dict:
        return {"num_samples": self.num_samples}

    def forward(self, batch) -> Output:
        self.calls += 1
        x, index = self.batch(batch)
        terms = elbo(self.model, self.guide, x, num_samples=self.num_samples, index=index)
        surrogate = terms.reconstruction / self.temperature - terms.kl
        return Output(terms.value, surrogate, {"reconstruction": terms.reconstruction, "kl": terms.kl})


def _fa_data(n=60, seed=0):
    torch.manual_seed(seed)
    truth = elbox.FactorAnalysis(4, 2)
    with torch.no_grad():
        truth.loading.copy_(torch.randn(4, 2))
    return truth.sample(n)[0]


def test_the_registry_holds_the_builtin_objectives_and_refuses_clashes():
    assert {"elbo", "iwae", "renyi", "max_likelihood", "test_tempered_elbo"} <= set(OBJECTIVES)
    with pytest.raises(ValueError, match="registered already"):

        @register_objective("elbo")
        class Other(Objective):
            pass

    with pytest.raises(TypeError, match="decorates Objective subclasses"):
        register_objective("not_a_class")(42)
    with pytest.raises(ValueError, match=r"bound must be one of .*\(the registered objectives\)"):
        elbox.fit(elbox.FactorAnalysis(4, 2), MeanFieldNormal(2), _fa_data(), bound="nope")
    with pytest.raises(TypeError, match="needs a guide"):
        ELBO(elbox.FactorAnalysis(4, 2), None)
    with pytest.raises(TypeError, match="needs a model with exact evidence"):
        MaxLikelihood(elbox.VAE(4, 2))


def test_an_objective_defined_outside_elbox_trains_through_fit():
    x = _fa_data()
    model, guide = elbox.FactorAnalysis(4, 2), MeanFieldNormal(2, num_points=len(x))
    objective = TemperedELBO(model, guide, temperature=2.0)
    anneal = Schedule("temperature", lambda epoch: max(1.0, 2.0 - epoch / 10))
    history = elbox.fit(objective, x, epochs=40, batch_size=20, lr=0.05, seed=0, schedules=[anneal])
    assert objective.calls == 40 * 3
    assert float(objective.temperature) == 1.0  # annealed to 1 by epoch 10
    assert history.method == "vi:test_tempered_elbo"
    assert history.lower_bound[-1] > history.lower_bound[0] + 1.0
    # by name, through the registry, like the built-in objectives
    model2, guide2 = elbox.FactorAnalysis(4, 2), MeanFieldNormal(2, num_points=len(x))
    h = elbox.fit(model2, guide2, x, bound="test_tempered_elbo", temperature=1.5, epochs=5, batch_size=20, seed=0)
    assert h.method == "vi:test_tempered_elbo" and len(h.lower_bound) == 5
    with pytest.raises(TypeError, match="belong to the objective"):
        elbox.fit(objective, x, num_samples=3)


def test_objectives_report_the_bound_and_train_the_surrogate():
    x = _fa_data(30)
    model, guide = elbox.FactorAnalysis(4, 2).double(), MeanFieldNormal(2, num_points=30).double()
    x = x.double()
    batch = Batch(x, torch.arange(30))
    out = ELBO(model, guide, beta=0.5)(batch)
    terms = elbo(model, guide, x, index=torch.arange(30))
    torch.testing.assert_close(out.value, terms.value)  # the value is the ELBO, whatever β
    torch.testing.assert_close(out.surrogate, terms.reconstruction - 0.5 * terms.kl)
    torch.manual_seed(1)
    a = IWAE(model, guide, num_samples=7)(batch).value
    torch.manual_seed(1)
    torch.testing.assert_close(a, iwae(model, guide, x, num_samples=7, index=torch.arange(30)))
    exact = MaxLikelihood(model)(x)
    torch.testing.assert_close(exact.value, model.log_evidence(x))
    # a plain tensor is a Batch without indices; a Batch unpacks as (data, index)
    data, index = batch
    assert data is x and torch.equal(index, torch.arange(30))
    with pytest.raises(ValueError, match="one position per data point"):
        Batch(x, torch.arange(3))


def test_beta_is_a_checkpointed_buffer_and_the_schedule_drives_it(tmp_path):
    x = _fa_data()
    model, guide = elbox.FactorAnalysis(4, 2), MeanFieldNormal(2, num_points=len(x))
    objective = ELBO(model, guide)
    seen = []
    elbox.fit(objective, x, epochs=4, batch_size=30, seed=0, kl_warmup=4, run_dir=tmp_path,
              callbacks=lambda epoch, history: seen.append(float(objective.beta)))  # fmt: skip
    assert seen == [0.25, 0.5, 0.75, 1.0]
    tensors, _ = elbox.io.load_checkpoint(tmp_path / "checkpoints" / "last.safetensors")
    assert float(tensors["beta"]) == 1.0 and any(k.startswith("guide.") for k in tensors)
    with pytest.raises(AttributeError, match="does not have"):
        elbox.fit(ELBO(model, guide), x, epochs=1, schedules=[Schedule("temperature", lambda e: 1.0)])


def test_max_likelihood_fits_an_exact_model_without_a_guide():
    torch.manual_seed(0)
    truth = elbox.GaussianMixture(2, 2, loc=torch.tensor([[-3.0, 0.0], [3.0, 0.0]])).double()
    x, _ = truth.sample(200)
    model = elbox.GaussianMixture(2, 2).double()
    model.initialize(x, generator=torch.Generator().manual_seed(0))
    before = float(model.log_evidence(x).detach().mean())
    history = elbox.fit(model, None, x, bound="max_likelihood", epochs=50, lr=0.05, seed=0)
    assert history.final > before
    assert history.final == pytest.approx(float(model.log_evidence(x).detach().mean()), abs=0.05)


def test_a_deterministic_encoder_trains_its_reconstruction_and_reports_minus_infinity():
    torch.manual_seed(0)
    ae = elbox.VAE(16, 2, hidden=(16,), decoder="gaussian", deterministic_encoder=True)
    x = torch.randn(40, 16)
    out = ELBO(ae, ae.guide)(x)
    assert torch.isneginf(out.value).all() and torch.isfinite(out.surrogate).all()
    history = elbox.fit(ae, ae.guide, x, epochs=30, lr=1e-2, seed=0)
    assert history.reconstruction[-1] > history.reconstruction[0]


# Data checks: once, at the entry points; nothing remembered about a tensor.


def _model_cases():
    torch.manual_seed(0)
    return [
        (elbox.BetaBernoulli(2.0, 3.0), {}),
        (elbox.NormalNormal(2), {}),
        (elbox.HierarchicalNormal(3, group_size=2), {}),
        (elbox.GaussianMixture(3, 2, loc=3 * torch.randn(3, 2)), {}),
        (elbox.FactorAnalysis(4, 2), {}),
        (elbox.HMM(2, "gaussian", dim=2, loc=torch.randn(2, 2)), {"num_steps": 5}),
        (elbox.HMM(2, "categorical", num_symbols=3), {"num_steps": 5}),
        (elbox.LinearGaussianSSM(2, 2), {"num_steps": 5}),
    ]


@pytest.mark.parametrize("index", range(8))
def test_every_model_works_under_inference_mode(index):
    model, options = _model_cases()[index]
    x, _ = model.sample(4, **options)
    expected = model.log_evidence(x)
    with torch.inference_mode():
        value = model.log_evidence(x)
        posterior, log_px = model.e_step(x)
        terms = elbo(model, elbox.guides.Exact(model), x)
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(log_px, expected)
    torch.testing.assert_close(terms.value, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("index", [0, 1, 3, 4, 5, 7])
def test_a_numpy_shared_tensor_changed_in_place_gives_the_new_evidence(index):
    model, options = _model_cases()[index]
    x, _ = model.sample(4, **options)
    array = x.detach().numpy().copy()
    shared = torch.from_numpy(array)  # shares memory with the array
    first = model.log_evidence(shared)
    torch.testing.assert_close(first, model.log_evidence(x))
    if index == 0:  # coin flips: flip them
        array[:] = 1 - array
    else:
        array *= 1.7  # changed behind torch's back: the version counter does not see it
        array += 0.3
    fresh = torch.from_numpy(array.copy())
    again = model.log_evidence(shared)
    torch.testing.assert_close(again, model.log_evidence(fresh))
    assert not torch.allclose(again, first)


def test_em_reuses_statistics_it_holds_itself_and_agrees_with_the_plain_steps():
    torch.manual_seed(0)
    truth = elbox.GaussianMixture(3, 2, loc=torch.randn(3, 2)).double()  # overlapping: EM takes its time
    x, _ = truth.sample(300)
    a, b = elbox.GaussianMixture(3, 2).double(), elbox.GaussianMixture(3, 2).double()
    for m in (a, b):
        m.initialize(x, method="random", generator=torch.Generator().manual_seed(0))
    history = elbox.em(a, x, max_iter=20, tol=1e-12)
    assert history.n_iter >= 10
    for i in range(history.n_iter):  # the same iterations with no statistics passed: the same bounds
        posterior, log_px = b.e_step(x)
        assert float(log_px.detach().mean()) == pytest.approx(history.lower_bound[i], abs=1e-10)
        if i < history.n_iter - 1:
            b.m_step(x, posterior)
    torch.testing.assert_close(a.log_evidence(x), b.log_evidence(x), rtol=0, atol=1e-10)
    assert not hasattr(a, "_moment_cache") and "_data_cache" not in a.__dict__


def test_sequences_are_checked_on_every_call():
    model = elbox.HMM(2, "gaussian", dim=1)
    values = torch.randn(3, 4, 1, dtype=torch.float64)
    seqs = Sequences(values)
    model.log_evidence(seqs)
    seqs.values[0, 0, 0] = math.inf  # the same object, changed in place (a NaN is now a missing value for the HMM)
    with pytest.raises(ValueError, match="must be finite"):
        model.log_evidence(seqs)


def test_local_guides_get_the_batch_indices():
    torch.manual_seed(0)
    model = elbox.GaussianMixture(2, 1, loc=torch.tensor([[-2.0], [2.0]])).double()
    x, _ = model.sample(40)
    guide = Categorical(2, num_points=40).double()
    history = elbox.fit(model, guide, x, epochs=100, batch_size=10, lr=0.1, optimize_model=False, seed=0)
    gap = float((model.log_evidence(x) - elbo(model, guide, x).value).mean())
    assert history.final > history.lower_bound[0] and 0 <= gap < 0.05


runner = CliRunner()


def test_an_objective_registered_in_a_test_file_trains_through_elbox_fit(tmp_path):
    from elbox.cli.main import app
    from elbox.io import load_checkpoint

    x = _fa_data(80).double().numpy()
    np.save(tmp_path / "points.npy", x)
    config = tmp_path / "fa.toml"
    config.write_text(f'[data]\npath = "{tmp_path / "points.npy"}"\n[model]\ntype = "fa"\nlatent_dim = 2\n'
                      '[train]\nmethod = "vi"\nobjective = "test_tempered_elbo"\nepochs = 5\nbatch_size = 16\n'
                      'lr = 0.05\n')  # fmt: skip
    result = runner.invoke(app, ["fit", str(config), "--out", str(tmp_path / "run"), "--no-progress"])
    assert result.exit_code == 0, result.output
    _, meta = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.safetensors")
    assert meta["objective"] == "test_tempered_elbo" and meta["epoch"] == 5
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 5


def test_the_documented_example_runs_and_elbox_fit_imports_it(tmp_path, capsys):
    import runpy
    from pathlib import Path

    from elbox.cli.main import app

    example = Path(__file__).parent.parent / "examples" / "custom_objective.py"
    runpy.run_path(str(example), run_name="__main__")
    out = capsys.readouterr().out
    assert "τ at the end: 1.000" in out and "gap 0.0" in out
    np.save(tmp_path / "points.npy", _fa_data(60).double().numpy())
    config = tmp_path / "fa.toml"
    config.write_text('[data]\npath = "points.npy"\n[model]\ntype = "fa"\n'
                      '[train]\nmethod = "vi"\nobjective = "tempered_elbo"\nepochs = 3\nbatch_size = 20\n')  # fmt: skip
    result = runner.invoke(app, ["fit", "--import", str(example), str(config), "--out", str(tmp_path / "run"),
                                 "--no-progress"])  # fmt: skip
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["fit", "--import", "no_such_module_here", str(config), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "no_such_module_here" in result.output
