"""Run under torchrun by tests/test_distributed.py (and in-process for the one-process side):
fits and evidence estimates whose results the tests compare across world sizes."""

from __future__ import annotations

import dataclasses
import json
import sys

import torch

import elbox
from elbox import distributed


def data(n: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.rand(n, 12, generator=generator, dtype=torch.float64)


def autoencoder(n: int = 203):
    """A point-mass q (deterministic) on dynamically binarized data: the order and the draws are
    the data generator's, so two processes must equal one to rounding."""
    torch.manual_seed(1)
    model = elbox.VAE(12, 2, hidden=(8,), deterministic_encoder=True).double()
    history = elbox.fit(model, model.guide, data(n), epochs=3, batch_size=50, seed=3, lr=1e-2,
                        binarization="dynamic")  # fmt: skip
    return model, history


def local_mixture(n: int = 201, perturbation: float = 0.0):
    """A local guide (one categorical q per point, enumerated ELBO): the last batch has one point,
    fewer than the processes.

    The components start from k-means++ on the data, not at the constructor's zeros: K equal
    components under a uniform q are a saddle point of the ELBO, where the gradient separating the
    components is rounding noise that Adam's normalization turns into full-size steps, so that the
    fitted parameters are decided by rounding (a change of 1e-15 in one parameter moved them by
    0.11). ``perturbation`` is added to one parameter, for the test that this case is not such a one.
    """
    torch.manual_seed(2)
    x = data(n)
    model = elbox.GaussianMixture(3, 12).double()
    model.initialize(x, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        model.loc[0, 0] += perturbation
    guide = elbox.guides.Categorical(3, num_points=n).double()
    history = elbox.fit(model, guide, x, epochs=3, batch_size=50, seed=3, lr=5e-2)
    return torch.nn.ModuleDict({"model": model, "guide": guide}), history


def evidence() -> dict:
    """The evidence report and log p̂(x) of a stochastic VAE (fixed weights), seeded."""
    torch.manual_seed(4)
    model = elbox.VAE(12, 2, hidden=(8,)).double()
    x = (data(37) > 0.5).double()
    torch.manual_seed(5)
    report = elbox.evidence_report(model, model.guide, x, num_samples=50, iwae_samples=10, refine_points=9,
                                   refine_steps=5, mi_points=20, batch_size=4)  # fmt: skip
    estimate = elbox.log_evidence(model, x, guide=model.guide, method="importance", num_samples=30, batch_size=5)
    return {"report": report.to_dict(), "log_evidence": estimate.value.tolist()}


CASES = {"autoencoder": autoencoder, "local_mixture": local_mixture}


def results() -> dict:
    out = {}
    for name, case in CASES.items():
        module, history = case()
        out[name] = {"state": {k: v.tolist() for k, v in module.state_dict().items()}, "bound": history.lower_bound}
    out["evidence"] = evidence()
    return out


class PoisonedPoint(elbox.objectives.ELBO):
    """The ELBO, made NaN at one training point (index 150): one rank meets it, every rank stops."""

    def forward(self, batch):
        out = super().forward(batch)
        bad = batch.index == 150
        return dataclasses.replace(out, value=torch.where(bad, torch.nan, out.value),
                                   surrogate=torch.where(bad, torch.nan, out.surrogate))  # fmt: skip


def poisoned() -> None:
    torch.manual_seed(0)
    model = elbox.VAE(12, 2, hidden=(8,)).double()
    elbox.fit(PoisonedPoint(model, model.guide), (data(200) > 0.5).double(), epochs=2, batch_size=50, seed=0)


def mismatched() -> None:
    """Rank-dependent options: every rank must raise, none hang."""
    model = elbox.VAE(12, 2, hidden=(8,)).double()
    lr = 1e-2 if distributed.rank() == 0 else 2e-2
    elbox.fit(model, model.guide, (data(40) > 0.5).double(), epochs=1, batch_size=20, lr=lr, seed=0)


if __name__ == "__main__":
    torch.set_default_dtype(torch.float64)  # as the test suite runs
    distributed.init_from_environment()
    what, path = sys.argv[1], sys.argv[2]
    if what in ("mismatched", "poisoned"):
        try:
            mismatched() if what == "mismatched" else poisoned()
        except (distributed.DistributedError, FloatingPointError) as error:
            with open(f"{path}.{distributed.rank()}", "w") as file:
                file.write(str(error))
            sys.exit(3)
    else:
        found = results()
        if distributed.rank() == 0:
            with open(path, "w") as file:
                json.dump(found, file)
