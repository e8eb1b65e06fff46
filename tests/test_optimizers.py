"""The optimizers fit builds by name: Pyro's ClippedAdam reproduced step for step, every optimizer
training, clipped Adam's decay resumed exactly from a checkpoint, and bad options refused."""

from __future__ import annotations

import pytest
import torch
from pyro.optim.clipped_adam import ClippedAdam as PyroClippedAdam

import elbox
from elbox.inference.optimizers import OPTIMIZERS, make_optimizer
from elbox.runs.config import ConfigError, parse_config


def _steps(optimizer, p: torch.Tensor, target: torch.Tensor, n: int = 60) -> torch.Tensor:
    for _ in range(n):
        optimizer.zero_grad()
        (30 * (p - target) ** 4).sum().backward()  # steep: gradients beyond the clip
        optimizer.step()
    return p.detach().clone()


def test_clipped_adam_takes_pyros_steps():
    """Element-wise clipping, L2 weight decay and the per-step decay lr × lrd^k, as Pyro's
    ClippedAdam (with ε = 0, where the two place ε alike)."""
    start, target = torch.randn(5, 3), torch.randn(5, 3)
    options = {"beta1": 0.96, "beta2": 0.99, "eps": 0.0, "weight_decay": 0.3, "clip_value": 2.0, "lr_decay": 0.97}
    mine = start.clone().requires_grad_()
    optimizer, record = make_optimizer({"name": "clipped_adam", **options}, [mine], 0.05)
    theirs = start.clone().requires_grad_()
    pyro = PyroClippedAdam([theirs], lr=0.05, betas=(0.96, 0.99), eps=0.0, weight_decay=0.3, clip_norm=2.0, lrd=0.97)
    torch.testing.assert_close(_steps(optimizer, mine, target), _steps(pyro, theirs, target), rtol=0, atol=1e-12)
    assert record == {"name": "clipped_adam", **options}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_trains_and_is_recorded(name, tmp_path):
    torch.manual_seed(0)
    model = elbox.FactorAnalysis(4, 1)
    x, _ = model.sample(64)
    fitted = elbox.FactorAnalysis(4, 1)
    history = elbox.fit(fitted, None, x, bound="max_likelihood", epochs=20, batch_size=16, lr=0.02, seed=0,
                        optimizer=name, run_dir=tmp_path)  # fmt: skip
    assert history.lower_bound[-1] > history.lower_bound[0]
    _, meta = elbox.io.load_checkpoint(elbox.io.RunDirectory(tmp_path).checkpoint())
    assert meta["options"]["optimizer"]["name"] == name


def test_clipped_adams_decay_resumes_exactly(tmp_path):
    """The decay is optimizer state: a run resumed from its checkpoint ends where an uninterrupted
    one does, bit for bit."""
    torch.manual_seed(0)
    x, _ = elbox.FactorAnalysis(4, 1).sample(64)
    spec = {"name": "clipped_adam", "lr_decay": 0.9, "clip_value": 0.5}

    def run(epochs, path, resume=False, seed_model=1):
        torch.manual_seed(seed_model)
        model = elbox.FactorAnalysis(4, 1)
        elbox.fit(model, None, x, bound="max_likelihood", epochs=epochs, batch_size=16, lr=0.05, seed=0,
                  optimizer=spec, run_dir=path, resume=resume)  # fmt: skip
        return model.state_dict()

    whole = run(4, tmp_path / "whole")
    run(2, tmp_path / "parts")
    resumed = run(4, tmp_path / "parts", resume=True)
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


@pytest.mark.parametrize("spec, error, match", [
    ("adagrad", ValueError, "optimizer must be one of"),
    ({"lr_decay": 0.9}, TypeError, "with 'name'"),
    ({"name": "adam", "momentum": 0.9}, ValueError, "has no option 'momentum'; its options are"),
    ({"name": "adam", "beta1": 1.0}, ValueError, "beta1 must be a finite number in \\[0, 1\\)"),
    ({"name": "clipped_adam", "lr_decay": 0.0}, ValueError, "lr_decay must be a finite number in \\(0, 1\\]"),
    ({"name": "sgd", "weight_decay": float("nan")}, ValueError, "weight_decay must be a finite number"),
    ({"name": "sgd", "nesterov": 2}, ValueError, "nesterov must be 0 or 1"),
])  # fmt: skip
def test_bad_optimizers_are_refused_naming_the_option(spec, error, match):
    model = elbox.FactorAnalysis(3, 1)
    with pytest.raises(error, match=match):
        elbox.fit(model, None, torch.randn(8, 3), bound="max_likelihood", epochs=1, optimizer=spec)


def test_the_config_names_the_optimizer_and_its_options():
    config = parse_config({"train": {"optimizer": "clipped_adam"}, "optimizer": {"beta1": 0.96, "lr_decay": 0.99996}})
    assert config["optimizer"] == {"beta1": 0.96, "beta2": 0.999, "weight_decay": 0.0, "clip_value": 10.0,
                                   "lr_decay": 0.99996}  # fmt: skip
    with pytest.raises(ConfigError, match="unknown key 'momentum' in \\[optimizer\\].*optimizer = 'adam'"):
        parse_config({"optimizer": {"momentum": 0.5}})
    with pytest.raises(ConfigError, match="\\[train\\] optimizer must be"):
        parse_config({"train": {"optimizer": "adagrad"}})
