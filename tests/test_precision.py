"""Precision as an option: bfloat16 matrix products inside the networks, everything the bound is
made of in the data's dtype, and the shift the rounding causes measured and reported."""

from __future__ import annotations

import importlib
import json
import math

import pytest
import torch
from typer.testing import CliRunner

import elbox
from elbox.cli.main import app
from elbox.evidence import precision_shift
from elbox.objectives import make_objective
from elbox.precision import check_precision, current_precision, matmul_precision, network
from elbox.runs.config import ConfigError, parse_config

runner = CliRunner()


@pytest.fixture(autouse=True)
def float32():
    """bfloat16 rounds float32 networks (autocast leaves float64 alone): these tests run in float32."""
    torch.set_default_dtype(torch.float32)


def _vae(seed=0, data_dim=24, scale=1.0):
    torch.manual_seed(seed)
    model = elbox.VAE(data_dim=data_dim, latent_dim=3, hidden=(32,))
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.mul_(scale)
    x = (torch.rand(40, data_dim) < 0.4).float()
    return model, x


def test_network_runs_bfloat16_products_inside_the_block_only():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 8))
    x = torch.randn(5, 16)
    assert torch.equal(network(net, x), net(x))  # float32 by default: the module itself
    with matmul_precision("bfloat16"):
        assert current_precision() == "bfloat16"
        low = network(net, x)
        with matmul_precision("float32"):  # nested blocks restore what was there
            assert torch.equal(network(net, x), net(x))
        assert current_precision() == "bfloat16"
    assert current_precision() == "float32"
    assert low.dtype == torch.float32
    # bfloat16 operands: a relative rounding of 2⁻⁸ per operand, float32 accumulation
    reference = net(x)
    error = (low - reference).abs().max()
    assert 0 < error < 0.05 * reference.abs().max()


def test_a_float64_network_refuses_bfloat16_rather_than_ignoring_it():
    net = torch.nn.Linear(4, 2).double()
    x = torch.randn(3, 4, dtype=torch.float64)
    assert network(net, x).dtype == torch.float64
    with matmul_precision("bfloat16"), pytest.raises(ValueError, match="float32 networks; this network's input is "
                                                                       "torch.float64"):  # fmt: skip
        network(net, x)
    model, data = _vae()
    model.double()
    with pytest.raises(ValueError, match="use precision='float32', or model.float"):
        elbox.fit(model, model.guide, data.double(), epochs=1, precision="bfloat16")


@pytest.mark.parametrize("bad", ["fp16", "float16", 16, None, "BFLOAT16"])
def test_a_bad_precision_names_the_argument(bad):
    with pytest.raises(ValueError, match=r"precision must be one of \('float32', 'bfloat16'\); received"):
        check_precision(bad)
    with pytest.raises(ValueError, match="precision must be one of"):
        with matmul_precision(bad):
            pass
    model, x = _vae()
    with pytest.raises(ValueError, match="precision must be one of"):
        elbox.fit(model, model.guide, x, epochs=1, precision=bad)
    with pytest.raises(ValueError, match="precision must be one of"):
        elbox.log_evidence(model, x, guide=model.guide, method="importance", num_samples=4, precision=bad)
    with pytest.raises(ValueError, match="precision must be one of"):
        elbox.evidence_report(model, model.guide, x, num_samples=25, precision=bad)


def test_the_bfloat16_gradient_points_where_the_float32_one_does():
    """The same draws, the same parameters: bfloat16 products change the gradient by rounding only."""
    model, x = _vae()
    objective = make_objective("elbo", model, model.guide)
    grads = {}
    for precision in ("float32", "bfloat16"):
        objective.zero_grad()
        torch.manual_seed(3)
        with matmul_precision(precision):
            out = objective(x)
        (-out.surrogate.mean()).backward()
        assert out.value.dtype == torch.float32 and out.surrogate.dtype == torch.float32
        grads[precision] = torch.cat([p.grad.flatten() for p in objective.parameters()])
        assert all(p.grad.dtype == torch.float32 for p in objective.parameters())
    a, b = grads["float32"], grads["bfloat16"]
    assert not torch.equal(a, b)  # the products did run in bfloat16
    assert float(torch.nn.functional.cosine_similarity(a, b, dim=0)) > 0.999
    assert float((a - b).norm() / a.norm()) < 0.05


def test_fit_in_bfloat16_records_its_precision_and_refuses_another_on_resume(tmp_path):
    model, x = _vae()
    history = elbox.fit(model, model.guide, x, epochs=3, batch_size=20, seed=0, precision="bfloat16",
                        run_dir=tmp_path / "run")  # fmt: skip
    assert all(math.isfinite(v) for v in history.lower_bound)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with pytest.raises(ValueError, match="fitted with precision='bfloat16', and this call passes precision='float32'"):
        elbox.fit(model, model.guide, x, epochs=4, batch_size=20, seed=0, run_dir=tmp_path / "run", resume=True)
    # resumed in its own precision, it goes on
    elbox.fit(model, model.guide, x, epochs=4, batch_size=20, seed=0, precision="bfloat16", run_dir=tmp_path / "run",
              resume=True)  # fmt: skip


def test_precision_shift_is_the_rounding_alone_on_the_same_draws():
    model, x = _vae(scale=3.0)
    # outside a bfloat16 block the two evaluations are the same computation
    assert torch.equal(precision_shift(model, model.guide, x, num_samples=16), torch.zeros(len(x)))
    with matmul_precision("bfloat16"):
        torch.manual_seed(5)
        shift = precision_shift(model, model.guide, x, num_samples=16)
        # by hand, from the same draws
        torch.manual_seed(5)
        q = model.guide(x)
        z = q.sample((16,))
        log_q = q.log_prob(z)
        low = (model.log_joint(x, z) - log_q).logsumexp(0)
    with matmul_precision("float32"):
        high = (model.log_joint(x, z) - log_q).logsumexp(0)
    torch.testing.assert_close(shift, low - high)
    assert shift.abs().max() > 0


def test_log_evidence_in_bfloat16_measures_its_shift():
    model, x = _vae(scale=3.0)
    torch.manual_seed(1)
    e32 = elbox.log_evidence(model, x, guide=model.guide, method="importance", num_samples=200, batch_size=16)
    torch.manual_seed(1)
    e16 = elbox.log_evidence(model, x, guide=model.guide, method="importance", num_samples=200, batch_size=16,
                             precision="bfloat16")  # fmt: skip
    assert e32.precision == "float32" and e32.precision_shift is None and e32.mean_shift() is None
    assert e16.precision == "bfloat16" and e16.precision_shift.shape == (len(x),)
    shift = e16.mean_shift()
    assert shift.value == pytest.approx(float(e16.precision_shift.mean()))
    assert shift.stderr == pytest.approx(float(e16.precision_shift.std()) / math.sqrt(len(x)))
    # the draws are those of the float32 estimate up to the encoder's rounding: the estimates differ by
    # the rounding's shift, within the spread of the per-point shifts and both Monte Carlo errors
    difference = float((e16.value - e32.value).mean())
    tolerance = 4 * math.hypot(shift.stderr, e16.mean().stderr, e32.mean().stderr)
    assert abs(difference - shift.value) < tolerance + 4 * float(e16.precision_shift.std())


@pytest.mark.parametrize("method", ["exact", "ais"])
def test_bfloat16_evidence_is_refused_where_its_shift_is_not_measured(method):
    model, x = _vae()
    with pytest.raises(ValueError, match=f"precision='bfloat16' applies to method='importance'.*{method}"):
        elbox.log_evidence(model, x, guide=model.guide, method=method, num_samples=4, precision="bfloat16")
    gmm = elbox.GaussianMixture(2, 3)
    with pytest.raises(ValueError, match="applies to log p̂ by importance sampling.*'exact'"):
        elbox.evidence_report(gmm, elbox.guides.Exact(gmm), torch.randn(10, 3), num_samples=25, iwae_samples=5,
                              precision="bfloat16")


@pytest.mark.filterwarnings("ignore:.*latent units are inactive|posterior collapse")  # z is ignored on purpose
def test_the_report_states_the_shift_and_warns_where_it_exceeds_the_monte_carlo_error():
    small, x = _vae()
    torch.manual_seed(0)
    report = elbox.evidence_report(small, small.guide, x, num_samples=100, refine_steps=0, precision="bfloat16")
    e = report.log_evidence
    assert e["precision"] == "bfloat16" and set(e["precision_shift"]) == {"mean", "stderr", "max_abs"}
    assert "bfloat16 products: shifted" in report.bracket()[2][3]
    # q = p(z) and a decoder that ignores z, with large weights: every weight is p(x), so log p̂ has no Monte Carlo
    # error, while the large logits' bfloat16 rounding moves it
    large, x = _vae(scale=30.0)
    with torch.no_grad():
        large.decoder[0].weight.zero_()
        large.guide.encoder[-1].weight.zero_()
        large.guide.encoder[-1].bias.zero_()
    torch.manual_seed(0)
    report = elbox.evidence_report(large, large.guide, x, num_samples=100, refine_steps=0, precision="bfloat16")
    e = report.log_evidence
    assert abs(e["precision_shift"]["mean"]) > e["mc_stderr"]
    assert any("bfloat16 products moved log p̂(x)" in w and "report the float32 figure" in w for w in report.warnings)
    # JSON round trip keeps it
    again = elbox.EvidenceReport.from_dict(json.loads(report.to_json()))
    assert again.log_evidence["precision_shift"] == e["precision_shift"]


def test_the_config_refuses_bfloat16_where_nothing_would_be_rounded():
    with pytest.raises(ConfigError, match=r"\[train\] precision = 'bfloat16' applies to the networks"):
        parse_config({"model": {"type": "gmm"}, "train": {"precision": "bfloat16"}}, "c.toml")
    with pytest.raises(ConfigError, match=r"\[evaluate\] precision = 'bfloat16' applies to method = 'importance'"):
        parse_config({"evaluate": {"precision": "bfloat16", "method": "ais"}}, "c.toml")
    with pytest.raises(ConfigError, match=r"\[train\] precision must be 'float32' or 'bfloat16'; received 'half'"):
        parse_config({"train": {"precision": "half"}}, "c.toml")


def test_a_bfloat16_run_end_to_end(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(
        '[data]\nname = "digits"\ntest = 60\n[model]\nlatent_dim = 2\nhidden = [16]\n'
        '[train]\nepochs = 2\nbatch_size = 200\nprecision = "bfloat16"\n'
        '[evaluate]\nnum_samples = 32\nrefine_steps = 0\nprecision = "bfloat16"\n'
    )
    out = tmp_path / "run"
    result = runner.invoke(app, ["fit", str(config), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["evaluate", str(out)])
    assert result.exit_code == 0, result.output
    assert "bfloat16 shift" in result.output
    e = json.loads((out / "evaluation.json").read_text())["report"]["log_evidence"]
    assert e["precision"] == "bfloat16" and math.isfinite(e["precision_shift"]["mean"])


# Compilation: an option of fit, with a fallback and a message where it cannot be had.


def _tiny(seed=0):
    torch.manual_seed(seed)
    model = elbox.VAE(data_dim=16, latent_dim=2, hidden=(8,))
    x = (torch.rand(40, 16) < 0.4).float()
    return model, x, {k: v.clone() for k, v in model.state_dict().items()}


def test_a_compiled_fit_is_the_eager_fit_to_rounding():
    model, x, init = _tiny()
    compiled = elbox.fit(model, model.guide, x, epochs=2, batch_size=20, seed=0, compile=True)
    model.load_state_dict(init)
    eager = elbox.fit(model, model.guide, x, epochs=2, batch_size=20, seed=0)
    assert compiled.lower_bound == pytest.approx(eager.lower_bound, rel=1e-5)


def test_compile_without_a_compiler_says_so_and_trains_eagerly(monkeypatch):
    fit_module = importlib.import_module("elbox.inference.fit")  # the module, which elbox.inference.fit shadows

    def missing():
        raise RuntimeError("no C++ compiler found: tried ('g++',)")

    monkeypatch.setattr(fit_module, "_cpp_compiler", missing)
    model, x, init = _tiny()
    with pytest.warns(elbox.inference.CompileWarning, match=r"needs a C\+\+ compiler.*no C\+\+ compiler.*eagerly"):
        fallback = elbox.fit(model, model.guide, x, epochs=2, batch_size=20, seed=0, compile=True)
    model.load_state_dict(init)
    eager = elbox.fit(model, model.guide, x, epochs=2, batch_size=20, seed=0)
    assert fallback.lower_bound == eager.lower_bound  # the same computation


def test_a_failed_compilation_falls_back_to_eager(monkeypatch):
    calls = []

    def broken(module):
        def run(batch):
            calls.append(1)
            raise torch._dynamo.exc.BackendCompilerFailed(lambda *a: None, RuntimeError("cc1plus: fatal error"), None)

        return run

    monkeypatch.setattr(torch, "compile", broken)
    model, x, init = _tiny()
    with pytest.warns(elbox.inference.CompileWarning, match="torch.compile failed on the objective.*eagerly"):
        fallback = elbox.fit(model, model.guide, x, epochs=2, batch_size=20, seed=0, compile=True)
    assert calls == [1]  # tried once, then eager for good
    model.load_state_dict(init)
    assert elbox.fit(model, model.guide, x, epochs=2, batch_size=20, seed=0).lower_bound == fallback.lower_bound


def test_compile_must_be_a_bool():
    model, x, _ = _tiny()
    with pytest.raises(TypeError, match="compile must be True or False; received 'yes'"):
        elbox.fit(model, model.guide, x, epochs=1, compile="yes")


def test_the_precision_example_runs_end_to_end():
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).parent.parent / "examples" / "precision.py"
    arguments = ["--epochs", "2", "--seeds", "2", "--num-samples", "20", "--hidden", "16", "--latent", "2"]
    result = subprocess.run([sys.executable, str(example), *arguments], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for line in ("seed 1: test ELBO float32", "seed-to-seed sd", "bfloat16 − float32 =", "elbox's measured shift"):
        assert line in result.stdout, line
