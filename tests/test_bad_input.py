"""Bad input, table-driven: through the Python API, the command line and tampered run files,
every case gets elbox's own error, of the right type, naming the culprit (the argument, key or
file), and a command that fails changes no file."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import elbox
import elbox.plots  # imported lazily by elbox itself
from elbox.cli.main import app
from elbox.data import Sequences
from elbox.guides import FullRankNormal, MeanFieldNormal
from elbox.runs.config import SCHEMA, ConfigError

runner = CliRunner()
X = torch.randn(12, 3)


def _report(**options):
    return elbox.evidence_report(elbox.FactorAnalysis(3, 1), MeanFieldNormal(1), X, num_samples=30, iwae_samples=5,
                                 **options)  # fmt: skip


def _fit(**options):
    return lambda: elbox.fit(elbox.FactorAnalysis(3, 1), MeanFieldNormal(1), X, epochs=1, **options)


# Real-valued options: a string, a bool or a list is a TypeError; NaN, ±∞ or a value out of range a ValueError.
NUMBERS = {
    "reg_covar": lambda v: elbox.GaussianMixture(2, 2, reg_covar=v),
    "min_noise": lambda v: elbox.FactorAnalysis(3, 1, min_noise=v),
    "init_scale": lambda v: MeanFieldNormal(2, init_scale=v),
    "init_scale ": lambda v: FullRankNormal(2, init_scale=v),  # the full-rank family's
    "beta": lambda v: elbox.VAE(4, 2, beta=v),
    "observation_variance": lambda v: elbox.VAE(4, 2, decoder="gaussian", observation_variance=v),
    "reg_covar  ": lambda v: elbox.LinearGaussianSSM(2, 2, reg_covar=v),  # the state-space model's
    "lr": lambda v: _fit(lr=v)(),
    "adam_eps": lambda v: _fit(adam_eps=v)(),
    "clip_grad_norm": lambda v: _fit(clip_grad_norm=v)(),
    "tol": lambda v: elbox.em(elbox.FactorAnalysis(3, 1), X, tol=v),
    "beta  ": lambda v: elbox.objectives.ELBO(elbox.FactorAnalysis(3, 1), MeanFieldNormal(1), beta=v),  # ELBO's
    "alpha": lambda v: elbox.objectives.Renyi(elbox.FactorAnalysis(3, 1), MeanFieldNormal(1), alpha=v),
    "alpha ": lambda v: elbox.renyi(elbox.FactorAnalysis(3, 1), MeanFieldNormal(1), X, alpha=v, num_samples=2),
    "concentration1": lambda v: elbox.BetaBernoulli(v, 1.0),
    "concentration0": lambda v: elbox.guides.Beta(concentration0=v),
    "hyper_scale": lambda v: elbox.HierarchicalNormal(2, hyper_scale=v),
    "hyper_loc": lambda v: elbox.HierarchicalNormal(2, hyper_loc=v),
    "noise_scale": lambda v: elbox.models.MixturePrior(torch.zeros(2, 1), noise_scale=v),
    "reg_covar   ": lambda v: elbox.NormalNormal(2, reg_covar=v),  # the conjugate model's
    "lr ": lambda v: elbox.refine(elbox.FactorAnalysis(3, 1), MeanFieldNormal(1), X, lr=v, steps=1),  # refine's
    "refine_lr": lambda v: _report(refine_lr=v),
    "cubo_order": lambda v: _report(cubo_order=v),
    "step_size": lambda v: elbox.log_evidence(elbox.FactorAnalysis(3, 1), X, method="ais", num_samples=2, step_size=v),
    "threshold": lambda v: elbox.evidence.active_units(torch.randn(10, 2), threshold=v),
    "gamma": lambda v: elbox.inference.schedules.lr_schedule("exponential", gamma=v),
    "final": lambda v: elbox.inference.schedules.lr_schedule("cosine", 5, final=v),
    "beta   ": lambda v: elbox.inference.schedules.kl_warmup(v, 5),  # the warm-up's
}
BAD_NUMBERS = {"'1e-3'": ("1e-3", TypeError), "True": (True, TypeError), "[1.0]": ([1.0], TypeError),
               "nan": (float("nan"), ValueError), "inf": (float("inf"), ValueError),
               "-1": (-1.0, ValueError)}  # fmt: skip
NUMBER_CASES = [
    (name.strip(), make, value, ValueError if name == "observation_variance" and label == "'1e-3'" else error)
    for name, make in NUMBERS.items()
    for label, (value, error) in BAD_NUMBERS.items()
    if not (name.strip() in ("alpha", "hyper_loc") and label == "-1")  # α < 0 is defined (not a lower bound); a
]  # negative population mean is a mean  # observation_variance takes one string, 'learned': another is a ValueError


@pytest.mark.parametrize(("name", "make", "value", "error"), NUMBER_CASES,
                         ids=[f"{c[0]}={c[2]!r}" for c in NUMBER_CASES])  # fmt: skip
def test_real_valued_options(name, make, value, error):
    with pytest.raises(error, match=name):
        make(value)


# Integer options: 0 or negative is a ValueError; a float, a string or a bool a TypeError.
INTEGERS = {
    "num_components": lambda v: elbox.GaussianMixture(v, 2),
    "dim": lambda v: elbox.FactorAnalysis(v, 1),
    "latent_dim": lambda v: elbox.FactorAnalysis(3, v),
    "num_states": lambda v: elbox.HMM(v, "gaussian", dim=1),
    "state_dim": lambda v: elbox.LinearGaussianSSM(v, 2),
    "data_dim": lambda v: elbox.VAE(v, 2),
    "epochs": lambda v: elbox.fit(elbox.FactorAnalysis(3, 1), MeanFieldNormal(1), X, epochs=v),
    "batch_size": lambda v: _fit(batch_size=v)(),
    "checkpoint_every": lambda v: _fit(checkpoint_every=v)(),
    "patience": lambda v: _fit(patience=v)(),
    "max_iter": lambda v: elbox.em(elbox.FactorAnalysis(3, 1), X, max_iter=v),
    "n_init": lambda v: elbox.em(elbox.FactorAnalysis(3, 1), X, n_init=v, init="pca"),
    "num_samples": lambda v: elbox.elbo(elbox.FactorAnalysis(3, 1), MeanFieldNormal(1), X, num_samples=v),
    "num_samples ": lambda v: elbox.iwae(elbox.FactorAnalysis(3, 1), MeanFieldNormal(1), X, num_samples=v),
    "num_samples  ": lambda v: elbox.log_evidence(elbox.FactorAnalysis(3, 1), X, guide=MeanFieldNormal(1),
                                                  method="importance", num_samples=v),
    "num_samples   ": lambda v: elbox.objectives.IWAE(elbox.FactorAnalysis(3, 1), MeanFieldNormal(1), num_samples=v),
    "steps": lambda v: elbox.refine(elbox.FactorAnalysis(3, 1), MeanFieldNormal(1), X, steps=v),
    "n": lambda v: elbox.FactorAnalysis(3, 1).sample(v),
    "elbo_samples": lambda v: _report(elbo_samples=v),
    "refine_points": lambda v: _report(refine_points=v),
    "mi_points": lambda v: _report(mi_points=v),
    "chunk_size": lambda v: _report(chunk_size=v),
    "epochs ": lambda v: elbox.inference.schedules.kl_warmup(1.0, v),  # the warm-up's
    "patience ": lambda v: elbox.inference.callbacks.EarlyStopping(v, None),
    "columns": lambda v: elbox.plots.plot_samples(torch.rand(4, 16), columns=v),
    "num_samples    ": lambda v: elbox.runs.evaluate_run("no-such-run", num_samples=v),
}  # fmt: skip
BAD_INTEGERS = {"0": (0, ValueError), "-2": (-2, ValueError), "1.5": (1.5, TypeError), "'3'": ("3", TypeError),
                "True": (True, TypeError)}  # fmt: skip
INTEGER_CASES = [(name.strip(), make, value, error) for name, make in INTEGERS.items()
                 for value, error in BAD_INTEGERS.values()]  # fmt: skip


@pytest.mark.parametrize(("name", "make", "value", "error"), INTEGER_CASES,
                         ids=[f"{c[0]}={c[2]!r}" for c in INTEGER_CASES])  # fmt: skip
def test_integer_options(name, make, value, error):
    with pytest.raises(error, match=name):
        make(value)


SEED_CASES = [(where, value, error) for where in ("fit", "em")
              for value, error in (("abc", TypeError), (-1, ValueError), (2**70, ValueError), (1.5, TypeError),
                                   (True, TypeError))]  # fmt: skip


@pytest.mark.parametrize(("where", "value", "error"), SEED_CASES, ids=[f"{w}-{v!r}" for w, v, _ in SEED_CASES])
def test_seeds(where, value, error):
    with pytest.raises(error, match="seed"):
        if where == "fit":
            _fit(seed=value)()
        else:
            elbox.em(elbox.FactorAnalysis(3, 1), X, seed=value)


# Data that no model can take, at each entry point.
def _models():
    return {
        "GaussianMixture": (elbox.GaussianMixture(2, 3), torch.randn(5, 3)),
        "FactorAnalysis": (elbox.FactorAnalysis(3, 1), torch.randn(5, 3)),
        "HMM": (elbox.HMM(2, "gaussian", dim=3), torch.randn(5, 4, 3)),
        "LinearGaussianSSM": (elbox.LinearGaussianSSM(2, 3), torch.randn(5, 4, 3)),
        "NormalNormal": (elbox.NormalNormal(3), torch.randn(5, 2, 3)),
    }


BAD_DATA = {
    "a NaN": (lambda x: x.index_fill(0, torch.tensor([1]), float("nan")), ValueError, "finite"),
    "an infinity": (lambda x: x.index_fill(0, torch.tensor([2]), float("inf")), ValueError, "finite"),
    "complex values": (lambda x: x.to(torch.complex64), TypeError, "real-valued"),
    "the meta device": (lambda x: torch.empty(x.shape, device="meta"), TypeError, "meta device"),
    "strings": (lambda x: np.array([["a"] * x.shape[-1]] * 2), TypeError, "numeric"),
    "one dimension too few": (lambda x: x[0], ValueError, "shape|dimensions"),
    "the wrong size": (lambda x: torch.cat([x, x[..., :1]], -1), ValueError, "shape"),
    "booleans": (lambda x: x > 0, TypeError, "numeric"),
}
DATA_CASES = [(model, bad) for model in _models() for bad in BAD_DATA]


@pytest.mark.parametrize(("model", "bad"), DATA_CASES, ids=[f"{m}-{b}" for m, b in DATA_CASES])
def test_bad_data_is_named(model, bad):
    instance, x = _models()[model]
    transform, error, words = BAD_DATA[bad]
    with pytest.raises(error, match=rf"\bx\b.*({words})|({words}).*\bx\b"):
        instance.log_evidence(transform(x))


def _vae():
    return elbox.VAE(3, 1, hidden=(4,), decoder="gaussian")


# The same bad data through entry points whose argument is not the models' x: the message names the
# argument (select passes its x to em, whose argument is data).
ARGUMENTS = {
    "em(data)": ("data", lambda x: elbox.em(elbox.FactorAnalysis(3, 1), x)),
    "select(x)": ("x", lambda x: elbox.select(lambda k: elbox.GaussianMixture(k, 3), x, [1])),
    "select(x_valid)": ("x_valid", lambda x: elbox.select(lambda k: elbox.GaussianMixture(k, 3), X, [1], x_valid=x)),
}  # fmt: skip
ARGUMENT_CASES = [(entry, bad) for entry in ARGUMENTS for bad in BAD_DATA]


@pytest.mark.parametrize(("entry", "bad"), ARGUMENT_CASES, ids=[f"{e}-{b}" for e, b in ARGUMENT_CASES])
def test_bad_data_is_named_by_the_argument(entry, bad):
    name, call = ARGUMENTS[entry]
    transform, error, words = BAD_DATA[bad]
    with pytest.raises(error, match=rf"^{name}\b.*({words})|({words}).*\b{name}\b"):
        call(transform(X))


ENTRY_POINTS = {
    "em": lambda x: elbox.em(elbox.FactorAnalysis(3, 1), x),
    "fit": lambda x: elbox.fit(elbox.FactorAnalysis(3, 1), MeanFieldNormal(1), x, epochs=1),
    "refine": lambda x: elbox.refine(elbox.FactorAnalysis(3, 1), MeanFieldNormal(1), x),
    "log_evidence": lambda x: elbox.log_evidence(elbox.FactorAnalysis(3, 1), x),
    "evidence_report": lambda x: elbox.evidence_report(elbox.FactorAnalysis(3, 1), MeanFieldNormal(1), x),
    "elbo": lambda x: elbox.elbo(elbox.FactorAnalysis(3, 1), MeanFieldNormal(1), x),
    "iwae": lambda x: elbox.iwae(elbox.FactorAnalysis(3, 1), MeanFieldNormal(1), x, num_samples=2),
    "an objective": lambda x: elbox.objectives.IWAE(elbox.FactorAnalysis(3, 1), MeanFieldNormal(1))(x),
    "fit's validation": lambda x: elbox.fit((v := _vae()), v.guide, X, validation=x, epochs=1),
    "select": lambda x: elbox.select(lambda k: elbox.GaussianMixture(k, 3), x, [1]),
    "select's x_valid": lambda x: elbox.select(lambda k: elbox.GaussianMixture(k, 3), X, [1], x_valid=x),
}


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_empty_data_is_refused_at_every_entry_point(entry):
    with pytest.raises(ValueError, match="at least (one data point|two data points)"):
        ENTRY_POINTS[entry](torch.empty(0, 3))


MISC = {
    "hidden as an int": (lambda: elbox.VAE(4, 2, hidden=8), TypeError, "hidden"),
    "activation": (lambda: elbox.VAE(4, 2, activation="sigmoidal"), ValueError, "activation"),
    "decoder": (lambda: elbox.VAE(4, 2, decoder="poisson"), ValueError, "decoder"),
    "covariance_type": (lambda: elbox.GaussianMixture(2, 2, covariance_type="tied"), ValueError, "covariance_type"),
    "emission": (lambda: elbox.HMM(2, "poisson", dim=1), ValueError, "emission"),
    "latent_dim > dim": (lambda: elbox.FactorAnalysis(2, 3), ValueError, "latent_dim"),
    "weights": (lambda: elbox.GaussianMixture(2, 2, weights=torch.tensor([0.9, 0.3])), ValueError, "weights"),
    "bound": (lambda: _fit(bound="cubo")(), ValueError, "bound"),
    "kl": (lambda: elbox.elbo(elbox.FactorAnalysis(3, 1), MeanFieldNormal(1), X, kl="exact"), ValueError, "kl"),
    "expectation": (lambda: elbox.elbo(elbox.FactorAnalysis(3, 1), MeanFieldNormal(1), X, expectation="all"),
                    ValueError, "expectation"),
    "binarization": (lambda: _fit(binarization="fixed")(), ValueError, "binarization"),
    "schedule": (lambda: _fit(schedule="linear")(), ValueError, "schedule"),
    "a guide of the wrong latent size": (lambda: elbox.elbo(elbox.FactorAnalysis(3, 1), MeanFieldNormal(2), X),
                                         ValueError, "guide"),
    "a local guide too small": (lambda: elbox.fit(elbox.FactorAnalysis(3, 1), MeanFieldNormal(1, num_points=5), X,
                                                  epochs=1), ValueError, "num_points"),
    "a local guide with validation": (lambda: elbox.fit(elbox.FactorAnalysis(3, 1), MeanFieldNormal(1, num_points=12),
                                                        X, validation=X[:4], epochs=1), ValueError, "validation"),
    "validation of the wrong shape": (lambda: elbox.fit((v := elbox.VAE(3, 1, decoder="gaussian")), v.guide, X,
                                                        validation=torch.randn(4, 5), epochs=1), ValueError,
                                      "validation must have shape"),
    "too few particles for k-hat": (lambda: elbox.evidence_report(elbox.FactorAnalysis(3, 1), MeanFieldNormal(1), X,
                                                                  num_samples=10, iwae_samples=5), ValueError,
                                    "num_samples must be at least 25"),
    "progress of the wrong kind": (lambda: elbox.evidence_report(elbox.FactorAnalysis(3, 1), MeanFieldNormal(1), X,
                                                                 num_samples=30, iwae_samples=5, progress="yes"),
                                   TypeError, "progress"),
    "on_failure": (lambda: elbox.em(elbox.FactorAnalysis(3, 1), X, on_failure="ignore"), ValueError, "on_failure"),
    "method": (lambda: elbox.log_evidence(elbox.FactorAnalysis(3, 1), X, method="vi"), ValueError, "method"),
    "an unknown objective option": (lambda: _fit(bound="iwae", temperature=2.0)(), TypeError, "iwae"),
    "a schedule of a missing attribute": (lambda: elbox.fit(elbox.objectives.IWAE(elbox.FactorAnalysis(3, 1),
                                                            MeanFieldNormal(1)), X, epochs=1,
                                                            schedules=[elbox.Schedule("beta", lambda e: 1.0)]),
                                          AttributeError, "beta"),
    "kl_warmup without a beta": (lambda: _fit(bound="iwae", kl_warmup=3)(), ValueError, "kl_warmup"),
    "resume without a run": (lambda: _fit(resume=True)(), ValueError, "run_dir"),
    "tensorboard without a run": (lambda: _fit(tensorboard=True)(), ValueError, "tensorboard"),
    "max_likelihood on a VAE": (lambda: elbox.objectives.MaxLikelihood(elbox.VAE(4, 2)), TypeError, "exact evidence"),
    "score of a VAE": (lambda: elbox.VAE(4, 2).score(torch.rand(3, 4)), TypeError, "score"),
    "predict_proba of a continuous latent": (lambda: elbox.FactorAnalysis(3, 1).predict_proba(X), TypeError,
                                             "predict_proba"),
    "an index of the wrong length": (lambda: elbox.data.Batch(X, torch.arange(3)), ValueError, "index"),
    "a file of another format": (lambda: elbox.data.load_file(Path(__file__)), ValueError, r"\.npy"),
}  # fmt: skip


@pytest.mark.parametrize("case", MISC)
def test_other_bad_arguments(case):
    make, error, words = MISC[case]
    with pytest.raises(error, match=words):
        make()


def _fa():
    return elbox.FactorAnalysis(3, 1)


def _dvae():
    return elbox.DiscreteVAE(4, num_variables=2, num_categories=3, hidden=(8,))


def _mvn(batch: int, dim: int):
    return torch.distributions.MultivariateNormal(torch.zeros(batch, dim), torch.eye(dim))


_schedules, _optimizers, _callbacks = elbox.inference.schedules, elbox.inference.optimizers, elbox.inference.callbacks
_select = functools.partial(elbox.select, lambda k: elbox.GaussianMixture(k, 3), X)

# Every public module's worst arguments (the probe of issue 25, item 8): what each was before is in the commit log.
API = {
    # models and their methods
    "noise_scale of the wrong length": (lambda: elbox.HierarchicalNormal(3, noise_scale=torch.ones(2)), ValueError,
                                        "noise_scale must be one number or \\[num_groups\\]"),
    "fit_noise not a bool": (lambda: elbox.HierarchicalNormal(2, fit_noise="no"), TypeError, "fit_noise"),
    "a mixture prior's scale of the wrong shape": (lambda: elbox.models.MixturePrior(torch.zeros(2, 3),
                                                   scale=torch.ones(3)), ValueError, "scale must be"),
    "isotropic not a bool": (lambda: elbox.FactorAnalysis(3, 1, isotropic="yes"), TypeError, "isotropic"),
    "deterministic_encoder not a bool": (lambda: elbox.VAE(4, 2, deterministic_encoder="yes"), TypeError,
                                         "deterministic_encoder"),
    "noise_variance of the wrong shape": (lambda: setattr(_fa(), "noise_variance", torch.ones(2)), ValueError,
                                          "noise_variance must be one number or \\[dim\\]"),
    "a mixture's posterior that is not one": (lambda: elbox.GaussianMixture(2, 3).m_step(X, "abc"), TypeError,
                                              "posterior"),
    "a posterior of the wrong latent size": (lambda: _fa().m_step(X, _mvn(12, 2)), ValueError,
                                             "posterior must have event shape \\[1\\]"),
    "a posterior of the wrong batch": (lambda: _fa().m_step(X, _mvn(5, 1)), ValueError,
                                       "posterior must have batch shape \\[12\\]"),
    "a conjugate posterior of the wrong batch": (lambda: elbox.NormalNormal(3).m_step(torch.randn(4, 2, 3),
                                                 _mvn(2, 3)), ValueError, "posterior must have batch shape"),
    "a random-effects posterior that is not one": (lambda: elbox.HierarchicalNormal(2).m_step(torch.randn(4, 2, 1),
                                                   "abc"), TypeError, "posterior"),
    "z of the wrong latent size": (lambda: _fa().log_joint(X, torch.randn(12, 2)), ValueError, "z must have shape"),
    "a VAE's z of the wrong latent size": (lambda: elbox.VAE(4, 2).likelihood(torch.randn(5, 3)), ValueError,
                                           "z must have shape"),
    "no sequences": (lambda: elbox.HMM(2, dim=3).log_evidence(torch.empty(0, 4, 3)), ValueError,
                     "x must hold at least one sequence"),
    # guides
    "event_shape as an int": (lambda: elbox.guides.Categorical(2, event_shape=3), TypeError, "event_shape"),
    "an encoder that is a string": (lambda: elbox.guides.Amortized("mlp", 2), TypeError, "encoder"),
    "an encoder too narrow": (lambda: elbox.guides.Amortized(torch.nn.Linear(3, 3), 2)(torch.randn(4, 3)), ValueError,
                              "encoder must return"),
    "an encoder too wide": (lambda: elbox.guides.Amortized(torch.nn.Linear(3, 5), 2)(torch.randn(4, 3)), ValueError,
                            "encoder must return"),
    "deterministic not a bool": (lambda: elbox.guides.Amortized(torch.nn.Linear(3, 4), 2, deterministic="yes"),
                                 TypeError, "deterministic"),
    "a flow guide's encoder that is a string": (lambda: elbox.guides.FlowGuide(2, encoder="mlp"), TypeError,
                                                "encoder"),
    "a layer of width 0": (lambda: elbox.guides.mlp([4, 0, 2]), ValueError, "sizes"),
    "one layer size": (lambda: elbox.guides.mlp([4]), ValueError, "sizes"),
    "sizes as an int": (lambda: elbox.guides.mlp(5), TypeError, "sizes"),
    # bounds and objectives
    "a model that is not one": (lambda: elbox.elbo("fa", MeanFieldNormal(1), X), TypeError, "model must be"),
    "a guide that is not one": (lambda: elbox.elbo(_fa(), "q", X), TypeError, "guide must be"),
    "no guide": (lambda: elbox.iwae(_fa(), None, X, num_samples=2), TypeError, "guide must be"),
    "n as a string": (lambda: elbox.cubo(_fa(), MeanFieldNormal(1), X, num_samples=2, n="2"), TypeError,
                      "n must be a number"),
    "hard not a bool": (lambda: elbox.bounds.gumbel_softmax((d := _dvae()), d.guide, torch.ones(3, 4),
                                                            temperature=1.0, hard="yes"), TypeError, "hard"),
    "relaxed draws of a string": (lambda: elbox.bounds.relaxed_draws("q", 1.0), TypeError, "q must be"),
    "an objective's name that is a list": (lambda: elbox.objectives.get_objective([]), TypeError, "objective"),
    "max_likelihood with a guide": (lambda: elbox.fit(_fa(), MeanFieldNormal(1), X, bound="max_likelihood",
                                                      epochs=1), TypeError, "takes no guide"),
    # fit, em, refine, select
    "kl_warmup longer than the run": (lambda: elbox.fit(_fa(), MeanFieldNormal(1), X, epochs=2, kl_warmup=5),
                                      ValueError, "kl_warmup must be at most epochs"),
    "a cosine schedule longer than the run": (lambda: elbox.fit(_fa(), MeanFieldNormal(1), X, epochs=3,
                                                                schedule=_schedules.lr_schedule("cosine", 100)),
                                              ValueError, "schedule: the cosine schedule spans 100"),
    "callbacks as a number": (lambda: _fit(callbacks=5)(), TypeError, "callbacks"),
    "callbacks of strings": (lambda: _fit(callbacks=["print"])(), TypeError, "callbacks"),
    "one Schedule, not a list": (lambda: _fit(schedules=elbox.Schedule("beta", lambda e: 1.0))(), TypeError,
                                 "schedules"),
    "run_dir as a number": (lambda: _fit(run_dir=5)(), TypeError, "run_dir"),
    "optimize_model not a bool": (lambda: _fit(optimize_model="no")(), TypeError, "optimize_model"),
    "progress not a bool": (lambda: _fit(progress="yes")(), TypeError, "progress"),
    "config not text": (lambda: _fit(config={"train": {}})(), TypeError, "config"),
    "em's callback not a function": (lambda: elbox.em(_fa(), X, callback=5), TypeError, "callback"),
    "em's init unknown": (lambda: elbox.em(elbox.GaussianMixture(2, 3), X, init="kmeans"), ValueError,
                          "init must be"),
    "refine's progress not a function": (lambda: elbox.refine(_fa(), MeanFieldNormal(1), X, steps=1, progress=5),
                                         TypeError, "progress"),
    "candidates as an int": (lambda: _select(3), TypeError, "candidates"),
    "temperatures as a number": (lambda: elbox.inference.temperature_sweep(elbox.objectives.GumbelSoftmax(
        (d := _dvae()), d.guide), torch.ones(3, 4), 1.0, repeats=2), TypeError, "temperatures"),
    "a gradient monitor's parameters": (lambda: elbox.inference.GradientVariance(X, parameters="encoder"),
                                        ValueError, "parameters"),
    "local_guide of a string": (lambda: elbox.inference.local_guide("q"), TypeError, "q must be"),
    "can_refine of a string": (lambda: elbox.inference.can_refine("q"), TypeError, "q must be"),
    # schedules, optimizers, callbacks
    "a schedule's attribute as a number": (lambda: elbox.Schedule(5, lambda e: 1.0), TypeError, "attribute"),
    "a schedule's attribute empty": (lambda: elbox.Schedule("", lambda e: 1.0), ValueError, "attribute"),
    "a schedule giving text": (lambda: elbox.fit(elbox.objectives.ELBO(_fa(), MeanFieldNormal(1)), X, epochs=1,
                                                 schedules=[elbox.Schedule("beta", lambda e: "high")]), TypeError,
                               "schedule of 'beta' must give a number"),
    "a schedule giving NaN": (lambda: elbox.fit(elbox.objectives.ELBO(_fa(), MeanFieldNormal(1)), X, epochs=1,
                                                schedules=[elbox.Schedule("beta", lambda e: float("nan"))]),
                              ValueError, "schedule of 'beta' must give finite numbers"),
    "an LRSchedule of an unknown name": (lambda: _schedules.LRSchedule("linear"), ValueError, "name must be"),
    "a cosine LRSchedule without epochs": (lambda: _schedules.LRSchedule("cosine"), TypeError, "epochs"),
    "an LRSchedule's gamma": (lambda: _schedules.LRSchedule("exponential", gamma=-1.0), ValueError, "gamma"),
    "an LRSchedule's final": (lambda: _schedules.LRSchedule("cosine", epochs=5, final=2.0), ValueError, "final"),
    "an option of another schedule": (lambda: _schedules.lr_schedule("exponential", gama=0.9), TypeError, "gama"),
    "a negative warm-up": (lambda: _schedules.kl_weight(0, 1.0, -2), ValueError, "warmup"),
    "an optimizer's lr of 0": (lambda: _optimizers.make_optimizer("adam", [torch.nn.Parameter(torch.zeros(2))], 0.0),
                               ValueError, "lr must be positive"),
    "an optimizer's lr as text": (lambda: _optimizers.make_optimizer("adam", [torch.nn.Parameter(torch.zeros(2))],
                                                                     "0.1"), TypeError, "lr"),
    "an optimizer of nothing": (lambda: _optimizers.make_optimizer("adam", [], 0.1), ValueError, "params"),
    "ClippedAdam's lr_decay": (lambda: _optimizers.ClippedAdam([torch.nn.Parameter(torch.zeros(2))], 0.1,
                                                               betas=(0.9, 0.99), eps=1e-8, weight_decay=0.0,
                                                               clip_value=10.0, lr_decay=2.0), ValueError, "lr_decay"),
    "an optimizer's name as a number": (lambda: _optimizers.register_optimizer(5), ValueError, "name"),
    "a checkpointer's run as text": (lambda: _callbacks.Checkpointer("run", 1, None, 5, False), TypeError, "run"),
    "a metrics log's run as text": (lambda: _callbacks.MetricsLog("run"), TypeError, "run"),
    "a signal guard's enabled": (lambda: _callbacks.SignalGuard("yes"), TypeError, "enabled"),
    # evidence
    "log_evidence of a string": (lambda: elbox.log_evidence("fa", X), TypeError, "model must be"),
    "log_evidence's progress": (lambda: elbox.log_evidence(_fa(), X, guide=MeanFieldNormal(1), method="importance",
                                                           num_samples=2, progress=5), TypeError, "progress"),
    "an AIS schedule of no moves": (lambda: elbox.log_evidence(_fa(), X, method="ais", num_samples=2, schedule=0),
                                    ValueError, "schedule must be"),
    "a report's AIS schedule of no moves": (lambda: _report(ais_schedule=0), ValueError, "ais_schedule must be"),
    "AIS of a string": (lambda: elbox.evidence.AIS("fa"), TypeError, "model must be"),
    "bdmc's z on the meta device": (lambda: elbox.bdmc(_fa(), X, torch.empty(12, 1, device="meta"), num_chains=2,
                                                       schedule=3), TypeError, "z is on the meta device"),
    "bdmc's z with NaN": (lambda: elbox.bdmc(_fa(), X, torch.full((12, 1), float("nan")), num_chains=2, schedule=3),
                          ValueError, "z must be finite"),
    "k-hat of text": (lambda: elbox.evidence.psis_khat([["a"]]), TypeError, "log_weights"),
    "k-hat on the meta device": (lambda: elbox.evidence.psis_khat(torch.empty(50, 2, device="meta")), TypeError,
                                 "log_weights"),
    "active units of the meta device": (lambda: elbox.evidence.active_units(torch.empty(10, 2, device="meta")),
                                        TypeError, "means"),
    "active units' unit_dims": (lambda: elbox.evidence.active_units(torch.randn(10, 2), unit_dims=-1), ValueError,
                                "unit_dims"),
    "KL per dimension of a string": (lambda: elbox.evidence.kl_per_dimension("q", _fa().prior()), TypeError,
                                     "q must be"),
    "mutual information of a string": (lambda: elbox.evidence.mutual_information("q"), TypeError, "q must be"),
    # data
    "sequences of strings": (lambda: elbox.Sequences([[["a"]]]), TypeError, "values must be numeric"),
    "sequences on the meta device": (lambda: elbox.Sequences(torch.empty(2, 4, 3, device="meta")), TypeError,
                                     "values is on the meta device"),
    "inputs of strings": (lambda: elbox.Sequences(torch.randn(2, 4, 1), inputs=[[["a"]] * 4] * 2), TypeError,
                          "inputs must be numeric"),
    "Batch.checked not a bool": (lambda: elbox.Batch(X, checked="yes"), TypeError, "checked"),
    "a Batch of None with an index": (lambda: elbox.Batch(None, torch.arange(3)), TypeError, "Batch.data"),
    "a batch iterator over an array": (lambda: elbox.data.BatchIterator(X.numpy(), 4), TypeError, "x must be"),
    "a shard past the world": (lambda: elbox.data.BatchIterator(X, 4, shard=(3, 2)), ValueError, "shard"),
    "binarizing values above 1": (lambda: elbox.data.binarize(X), ValueError, "x must hold intensities"),
    "draws of a string": (lambda: elbox.data.draws("fa", 3), TypeError, "model must be"),
    "an integer dtype": (lambda: elbox.data.digits(dtype=torch.int64), TypeError, "dtype"),
    "mnist1d's negative seed": (lambda: elbox.data.mnist1d(100, seed=-1), ValueError, "seed"),
    "mnist's root as a number": (lambda: elbox.data.mnist(root=5), TypeError, "root"),
    "a file path as a number": (lambda: elbox.data.load_file(5), TypeError, "path"),
    "an IDX path as None": (lambda: elbox.data.load_idx(None), TypeError, "path"),
    # distributions
    "a Markov chain's initial logits 0-d": (lambda: elbox.distributions.MarkovChain(torch.tensor(0.0),
                                            torch.zeros(3, 2, 2)), ValueError, "initial_logits"),
    "one-hot logits as text": (lambda: elbox.distributions.OneHot("a"), TypeError, "logits"),
    "a point mass at a string": (lambda: elbox.distributions.PointMass("a"), TypeError, "loc"),
    "a point mass 0-d": (lambda: elbox.distributions.PointMass(torch.tensor(1.0)), ValueError, "loc"),
    "an affine scan of mismatched steps": (lambda: elbox.distributions.affine_scan(torch.randn(4, 2, 2),
                                           torch.randn(3, 2)), ValueError, "M must be"),
    "a congruence scan of mismatched steps": (lambda: elbox.distributions.congruence_scan(torch.randn(4, 2, 2),
                                              torch.randn(3, 2, 2)), ValueError, "M and G"),
    "Viterbi of mismatched K": (lambda: elbox.distributions.viterbi(torch.zeros(2), torch.zeros(3, 3, 3)), ValueError,
                                "transition_logits"),
    "Viterbi of mismatched T": (lambda: elbox.distributions.viterbi(torch.zeros(2), torch.zeros(3, 2, 2),
                                                                    torch.zeros(5, 2)), ValueError, "emission_logits"),
    "a flow over a string": (lambda: elbox.distributions.FlowDistribution(None, "a"), TypeError, "base"),
    # plots
    "codes with NaN": (lambda: elbox.plots.plot_latent_space(torch.full((10, 2), float("nan"))), ValueError, "codes"),
    "codes on the meta device": (lambda: elbox.plots.plot_latent_space(torch.empty(10, 2, device="meta")), TypeError,
                                 "codes"),
    "labels of the wrong length": (lambda: elbox.plots.plot_latent_space(torch.randn(10, 2), torch.zeros(3)),
                                   ValueError, "labels"),
    "reconstructions of the wrong count": (lambda: elbox.plots.plot_reconstructions(torch.rand(4, 16),
                                           torch.rand(3, 16)), ValueError, "reconstruction"),
    "no samples": (lambda: elbox.plots.plot_samples(torch.rand(0, 16)), ValueError, "means"),
    "marginals of three dimensions": (lambda: elbox.plots.plot_state_path(torch.rand(1, 5, 3)), ValueError,
                                      "marginals"),
    "true states of the wrong length": (lambda: elbox.plots.plot_state_path(torch.rand(5, 3),
                                                                            true_states=torch.zeros(3)),
                                        ValueError, "true_states"),
    "variances of the wrong length": (lambda: elbox.plots.plot_trajectory(torch.randn(5, 2), torch.rand(4, 2)),
                                      ValueError, "variance"),
    "records as text": (lambda: elbox.plots.plot_training("metrics.jsonl"), TypeError, "records"),
    "records of numbers": (lambda: elbox.plots.plot_training([5]), TypeError, "records"),
    "histories as a list": (lambda: elbox.plots.plot_traces([]), TypeError, "histories"),
    "a history that is a number": (lambda: elbox.plots.plot_traces({"em": 5}), TypeError, "histories"),
    "no rate-distortion points": (lambda: elbox.plots.plot_rate_distortion([]), ValueError, "points"),
    "a report that is text": (lambda: elbox.plots.plot_bracket("report.json"), TypeError, "report"),
    "an HTML report of None": (lambda: elbox.plots.render_html(None), TypeError, "report"),
    "a temperature trade-off of text": (lambda: elbox.plots.plot_temperature_tradeoff("sweep"), TypeError, "report"),
    # the run layer
    "load_run of a number": (lambda: elbox.load_run(5), TypeError, "path"),
    "parse_config of text": (lambda: elbox.runs.parse_config("[train]"), TypeError, "raw"),
    "load_config of a number": (lambda: elbox.runs.load_config(5), TypeError, "path"),
    "build_model of text": (lambda: elbox.runs.build_model("config.toml"), TypeError, "config"),
    "build_model of a raw table": (lambda: elbox.runs.build_model({"model": {"type": "gmm"}}), ValueError,
                                   "config must be a parsed config"),
    "build_objective of text": (lambda: elbox.runs.build_objective("config.toml", _fa(), None), TypeError, "config"),
    "load_data of an unknown split": (lambda: elbox.runs.load_data(elbox.runs.parse_config({}), "dev"), ValueError,
                                      "split"),
    "train_run without a config": (lambda: elbox.runs.train_run(None, "run"), ValueError, "config_path"),
    "register_model_type of text": (lambda: elbox.runs.register_model_type("gmm"), TypeError, "model_type"),
    "make_figures of text": (lambda: elbox.runs.make_figures("run", elbox.runs.parse_config({}), _fa()), TypeError,
                             "run"),
    "a config whose warm-up outlasts the run": (lambda: elbox.runs.parse_config({"train": {"epochs": 2,
                                                "kl_warmup": 5}}), ConfigError, "\\[train\\] kl_warmup"),
}  # fmt: skip


@pytest.mark.parametrize("case", API)
def test_bad_arguments_across_the_api(case):
    make, error, words = API[case]
    with pytest.raises(error, match=words):
        make()


# The command line: every config key with a value of the wrong kind, and the paths around it.

SMALL = """
[data]
name = "digits"
test = 100
[model]
latent_dim = 2
hidden = [16]
[train]
epochs = 2
batch_size = 200
seed = 1
[evaluate]
num_samples = 40
refine_steps = 0
"""


def _snapshot(directory: Path) -> dict:
    return {p: p.read_bytes() for p in directory.rglob("*") if p.is_file()}


def _wrong(key) -> object:
    """A value of the wrong kind for a key: a string where a number or a bool belongs, a number
    where a string or a list does."""
    default = key.default
    if isinstance(default, bool) or isinstance(default, int | float) or isinstance(default, list):
        return "many"
    return 12345


KEY_CASES = [(section, name) for section, keys in SCHEMA.items() if section != "record" for name in keys
             if (section, name) != ("model", "type")]  # fmt: skip
KEY_CASES += [("model", name) for name in elbox.runs.types.MODEL_TYPES["vae"].keys]


def _toml(value) -> str:
    return json.dumps(value)


@pytest.mark.parametrize(("section", "name"), KEY_CASES, ids=[f"[{s}] {n}" for s, n in KEY_CASES])
def test_every_config_key_with_a_wrong_value(tmp_path, section, name):
    keys = elbox.runs.config.section_keys(section, {"model": {"type": "vae"}})
    config = tmp_path / "bad.toml"
    line = f"{name} = {_toml(_wrong(keys[name]))}"
    lines = [entry for entry in SMALL.splitlines() if not entry.startswith(f"{name} = ")]  # no duplicate key
    text = "\n".join(lines).replace(f"[{section}]", f"[{section}]\n{line}") + "\n"
    if f"[{section}]" not in SMALL:
        text += f"\n[{section}]\n{line}\n"
    config.write_text(text)
    before = _snapshot(tmp_path)
    result = runner.invoke(app, ["fit", str(config), "--out", str(tmp_path / "run"), "--no-progress"])
    assert result.exit_code == 2, result.output
    assert f"[{section}] {name}" in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output and _snapshot(tmp_path) == before


CLI_CASES = {
    "a config that is a directory": (lambda d: [str(d)], "is a directory"),
    "a config that is not UTF-8": (lambda d: [str(_write(d, b"[data]\nname = \"\xff\"\n"))], "not UTF-8"),
    "a seed past 2**63": (lambda d: [str(_write(d, SMALL.replace("seed = 1", "seed = 1180591620717411303424")))],
                          "[train] seed"),
    "a latent size of 10**12": (lambda d: [str(_write(d, SMALL.replace("latent_dim = 2",
                                                                       "latent_dim = 1000000000000")))],
                                "[model] latent_dim"),
    "--out that is a file": (lambda d: [str(_write(d, SMALL)), "--out", str(_write(d, "x", "file.txt"))], "is a file"),
    "--out under a file": (lambda d: [str(_write(d, SMALL)), "--out", str(_write(d, "x", "file.txt") / "run")],
                           "is a file"),
    "an unknown model type": (lambda d: [str(_write(d, SMALL.replace("[model]", "[model]\ntype = \"gmmm\"")))],
                              "[model] type"),
    "a sequence model without a file": (lambda d: [str(_write(d, "[model]\ntype = \"hmm\"\n"))], "path"),
    "a data file that is missing": (lambda d: [str(_write(d, '[data]\npath = "absent.npy"\n[model]\ntype = "gmm"\n'))],
                                    "absent.npy"),
    "both a name and a path": (lambda d: [str(_write(d, "[data]\nname = \"digits\"\npath = \"x.npy\"\n"))],
                               "not both"),
    "EM for a VAE": (lambda d: [str(_write(d, SMALL.replace("seed = 1", "seed = 1\nmethod = \"em\"")))],
                     "method = 'em'"),
    "an unknown objective": (lambda d: [str(_write(d, SMALL.replace("seed = 1", "seed = 1\nobjective = \"elbow\"")))],
                             "[train] objective"),
    "an --import that does not exist": (lambda d: ["--import", "no_such_module", str(_write(d, SMALL))],
                                        "no_such_module"),
}  # fmt: skip


def _write(directory: Path, text, name: str = "config.toml") -> Path:
    path = directory / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


@pytest.mark.parametrize("case", CLI_CASES)
def test_command_line_paths_and_values(tmp_path, case):
    make, words = CLI_CASES[case]
    args = make(tmp_path)
    before = _snapshot(tmp_path)
    out = [] if "--out" in args else ["--out", str(tmp_path / "run")]
    result = runner.invoke(app, ["fit", *args, *out, "--no-progress"])
    assert result.exit_code == 2, result.output
    assert words in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output and _snapshot(tmp_path) == before


def test_an_unwritable_directory(tmp_path):
    out = Path("/proc/elbox-no-such-run")  # not writable, even by root
    result = runner.invoke(app, ["fit", str(_write(tmp_path, SMALL)), "--out", str(out), "--no-progress"])
    assert result.exit_code == 2 and str(out) in result.output and "Traceback" not in result.output, result.output


# Run files, tampered: evaluate refuses them by name and writes nothing.


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("trained")
    result = runner.invoke(app, ["fit", str(_write(directory, SMALL)), "--out", str(directory / "run"),
                                 "--no-progress"])  # fmt: skip
    assert result.exit_code == 0, result.output
    return directory / "run"


def _retensor(path: Path, change) -> None:
    from safetensors import safe_open
    from safetensors.torch import save

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors, metadata = change(tensors, metadata)
    path.write_bytes(save(tensors, metadata=metadata))


def _first_model_key(tensors):
    return next(k for k in tensors if k.startswith("model.") and k.endswith("weight"))


RUN_CASES = {
    "a tensor of the wrong shape": (lambda t, m: ({**t, _first_model_key(t): torch.zeros(3, 3)}, m),
                                    "has shape"),
    "a missing tensor": (lambda t, m: ({k: v for k, v in t.items() if k != _first_model_key(t)}, m), "lacks"),
    "an extra tensor": (lambda t, m: ({**t, "model.extra.weight": torch.zeros(2)}, m), "unknown tensors"),
    "NaN parameters": (lambda t, m: ({**t, _first_model_key(t): t[_first_model_key(t)] * float("nan")}, m),
                       "non-finite"),
    "no metadata": (lambda t, m: (t, {}), "holds no config"),
    "a config of record that does not parse": (lambda t, m: (t, {"elbox": json.dumps(
        {**json.loads(m["elbox"]), "config": "[model]\nlatent_dim = -4\n"})}), "latent_dim"),
}  # fmt: skip


@pytest.mark.parametrize("case", RUN_CASES)
def test_tampered_checkpoints(trained, tmp_path, case):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    change, words = RUN_CASES[case]
    for name in ("last", "best"):
        path = run / "checkpoints" / f"{name}.safetensors"
        if path.is_file():
            _retensor(path, change)
    before = _snapshot(tmp_path)
    result = runner.invoke(app, ["evaluate", str(run)])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert words in text and "safetensors" in text or "config" in text, result.output
    assert "Traceback" not in result.output and _snapshot(tmp_path) == before


METRICS_CASES = {
    "a line that is JSON but not an object": ('[1, 2]\n', "line 2, is not a record"),
    "a garbage line in the middle": ("}{ not json\n", "line 2, is not JSON"),
}


@pytest.mark.parametrize("case", METRICS_CASES)
def test_damaged_metrics_are_named_not_dropped(trained, tmp_path, case):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    inserted, words = METRICS_CASES[case]
    (run / "metrics.jsonl").write_text(lines[0] + inserted + "".join(lines[1:]))
    before = _snapshot(tmp_path)
    result = runner.invoke(app, ["report", str(run)])
    assert result.exit_code == 2 and words in " ".join(result.output.split()), result.output
    with pytest.raises(ValueError, match="metrics.jsonl"):
        elbox.io.RunDirectory(run).read_metrics()
    assert _snapshot(tmp_path) == before
    # a last line cut short by a crash is dropped, not an error
    (run / "metrics.jsonl").write_text("".join(lines) + '{"epoch": 3, "bou')
    assert len(elbox.io.RunDirectory(run).read_metrics()) == len(lines)


def test_the_table_has_at_least_two_hundred_cases():
    count = (len(NUMBER_CASES) + len(INTEGER_CASES) + len(SEED_CASES) + len(DATA_CASES) + len(ARGUMENT_CASES)
             + len(ENTRY_POINTS) + len(MISC) + len(API) + len(KEY_CASES) + len(CLI_CASES) + len(RUN_CASES)
             + len(METRICS_CASES))  # fmt: skip
    assert count >= 200, count


def test_sequences_with_bad_lengths():
    with pytest.raises(ValueError, match="lengths"):
        Sequences(torch.randn(2, 4, 1), lengths=[5, 2])
    with pytest.raises(ConfigError, match="validation"):
        elbox.runs.load_data(elbox.runs.config.parse_config({}), "validation")
