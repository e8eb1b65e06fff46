"""The demos: a VAE on the embedded digits with its evidence and a β sweep; a Gaussian mixture on
the digits, fitted by EM and by VI, with the exact gap."""

from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path

import torch
from torch.distributions import kl_divergence

from elbox.bounds import elbo
from elbox.data import digits
from elbox.guides import Categorical, Exact
from elbox.inference import em, fit
from elbox.io import RunLock, atomic_write_text, write_json, write_jsonl
from elbox.models import GaussianMixture

__all__ = ["run_demo", "run_vae_demo"]


def _row(method: str, model, guide, x, history) -> dict:
    """Exact log p(x), the ELBO, and the gap computed independently as KL(q ‖ posterior)."""
    with torch.no_grad():
        log_px = model.log_evidence(x)
        bound = elbo(model, guide, x).value
        gap = kl_divergence(guide(x), model.posterior(x))
    return {
        "method": method,
        "log_evidence": float(log_px.mean()),
        "elbo": float(bound.mean()),
        "gap_kl": float(gap.mean()),
        "gap_difference": float((log_px - bound).mean()),
        "iterations": history.n_iter,
        "seconds": history.seconds,
    }


def run_demo(
    out: str | Path = "runs/demo",
    *,
    components: int = 10,
    pca: int = 5,
    vi_epochs: int = 400,
    lr: float = 0.05,
    seed: int = 0,
    force: bool = False,
) -> dict:
    """Fits a full-covariance Gaussian mixture to the PCA-reduced digits by EM and by VI.

    EM alternates the exact posterior with closed-form updates; VI optimizes a local
    categorical q per digit and the mixture's parameters by Adam on the enumerated ELBO, from
    the same k-means++ start. Writes config.toml, metrics.jsonl, report.json and traces.png to
    ``out`` and returns the report.
    """
    out = Path(out)
    _fresh(out, force)
    with RunLock(out):
        return _gmm_demo(out, components, pca, vi_epochs, lr, seed)


def _gmm_demo(out: Path, components: int, pca: int, vi_epochs: int, lr: float, seed: int) -> dict:
    x, _ = digits(pca_components=pca, dtype=torch.float64)  # [1797, pca]
    N = x.shape[0]
    start = time.perf_counter()

    def initialized() -> GaussianMixture:
        model = GaussianMixture(components, pca, covariance_type="full").double()
        model.initialize(x, "kmeans++", generator=torch.Generator().manual_seed(seed))
        return model

    em_model = initialized()
    em_history = em(em_model, x, max_iter=500, tol=1e-6)
    vi_model = initialized()
    with torch.no_grad():  # VI's q starts where EM's first E-step does
        start_logits = vi_model.posterior(x).logits
    guide = Categorical(components, num_points=N, init_logits=start_logits).double()
    vi_history = fit(vi_model, guide, x, epochs=vi_epochs, lr=lr, seed=seed)

    rows = [
        _row("EM", em_model, Exact(em_model), x, em_history),
        _row("VI, local categorical q", vi_model, guide, x, vi_history),
    ]
    report = {
        "data": f"digits, {N} points, PCA to {pca} dimensions",
        "model": f"GaussianMixture({components}, {pca}, covariance_type='full')",
        "rows": rows,
        "seconds": time.perf_counter() - start,
    }
    config = (
        "# elbox demo\n"
        f'data = "digits"\npca = {pca}\ncomponents = {components}\n'
        f"vi_epochs = {vi_epochs}\nlr = {lr}\nseed = {seed}\n"
    )
    atomic_write_text(out / "config.toml", config)
    metrics = [{"method": "em", "iteration": i + 1, "lower_bound": v} for i, v in enumerate(em_history.lower_bound)]
    metrics += [{"method": "vi", "epoch": i + 1, "lower_bound": v} for i, v in enumerate(vi_history.lower_bound)]
    write_jsonl(out / "metrics.jsonl", metrics)
    write_json(out / "report.json", report)
    from elbox.plots import plot_traces

    plot_traces(
        {"EM": em_history, "VI": vi_history},
        out / "traces.png",
        log_evidence=rows[0]["log_evidence"],
        title=f"Gaussian mixture (K={components}) on digits: EM vs VI",
    )
    report["figure"] = str(out / "traces.png")
    return report


def _fresh(out: Path, force: bool) -> None:
    """Refuses an ``out`` that holds anything, as ``elbox fit`` does; with ``force``, replaces a
    previous elbox run there (never a directory of other files). Holds the run's lock meanwhile."""
    if not out.exists() or not any(p.name != ".lock" for p in out.iterdir()):
        return
    if not (out / "config.toml").is_file():
        raise FileExistsError(
            f"{out} is not empty and holds no elbox run; the demo writes only to a new directory or, with --force, "
            "over a previous run (nothing was overwritten)"
        )
    if not force:
        raise FileExistsError(
            f"run directory {out} holds a run already; choose another --out, or pass --force to replace it "
            "(nothing was overwritten)"
        )
    with RunLock(out):
        for path in out.iterdir():
            if path.name != ".lock":
                shutil.rmtree(path) if path.is_dir() else path.unlink()


def run_vae_demo(
    out: str | Path = "runs/demo",
    *,
    epochs: int = 300,
    sweep_epochs: int = 100,
    betas=(0.25, 0.5, 1.0, 2.0, 4.0),
    seed: int = 0,
    progress: bool = False,
    console=None,
    force: bool = False,
) -> dict:
    """Trains a VAE on the embedded digits into the run directory ``out``, evaluates it (ELBO,
    reconstruction, KL, log p(x) by importance sampling), draws its figures, and sweeps β to show
    the rate/distortion trade-off, and ends by writing the evidence report (report.html,
    report.json). Returns the evaluation, the sweep, the figure names and the report's path."""
    from elbox.runs import evaluate_run, load_data, report_run, train_run

    out = Path(out)
    start = time.perf_counter()
    config = demo_config(epochs=epochs, seed=seed)
    _fresh(out, force)
    with RunLock(out):  # one writer for the whole demo
        train_run(None, out, config=config, progress=progress)
        evaluation = evaluate_run(out)
        sweep = []
        if sweep_epochs:
            x, _ = load_data(config, "train")
            x_test, _ = load_data(config, "test")
            status = console.status("β sweep") if console is not None else contextlib.nullcontext()
            with status:
                sweep = [_sweep_point(config, x, x_test, beta, sweep_epochs, seed, status) for beta in betas]
            from elbox.plots import plot_rate_distortion

            plot_rate_distortion(
                [(f"β={row['beta']:g}", row["kl"], row["distortion"]) for row in sweep],
                out / "beta_sweep.png",
                title=f"β-VAE on the digits: rate against distortion ({sweep_epochs} epochs each)",
                distortion_label="distortion: −E_q[log p(x|z)] (nats)",
            )
            write_json(out / "beta_sweep.json", sweep)
        report_run(out)  # report.html and report.json, from the evaluation above
    figures = sorted(p.name for p in out.glob("*.png"))
    return {"evaluation": evaluation, "sweep": sweep, "figures": figures, "report": out / "report.html",
            "seconds": time.perf_counter() - start}  # fmt: skip


def _sweep_point(config: dict, x, x_test, beta: float, epochs: int, seed: int, status) -> dict:
    """One β of the sweep: a VAE like the demo's, trained at that β; its test rate and distortion."""

    if hasattr(status, "update"):
        status.update(f"β sweep: training at β = {beta:g}")
    from elbox.runs import build_model
    from elbox.runs.types import DataInfo

    # the run's own VAE at this β, built by the run layer from the demo's config (seeded by its seed)
    at_beta = {**config, "model": {**config["model"], "beta": beta}}
    vae, _ = build_model(at_beta, DataInfo(dim=x.shape[1], points=len(x)))
    fit(vae, vae.guide, x, epochs=epochs, batch_size=100, lr=1e-3, seed=seed, binarization="dynamic")
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the test ELBO's draws, the same on every call
        terms = elbo(vae, vae.guide, x_test)
    return {
        "beta": beta, "kl": float(terms.kl.mean()), "distortion": float(-terms.reconstruction.mean()),
        "elbo": float(terms.value.mean()),
    }  # fmt: skip


def demo_config(epochs: int = 300, seed: int = 0) -> dict:
    """The demo's config: a VAE on the embedded digits (configs/vae_digits.toml, shorter)."""
    from elbox.runs.config import parse_config

    return parse_config(
        {
            "data": {"name": "digits", "binarization": "dynamic", "validation": 200, "test": 297},
            "model": {"latent_dim": 8, "hidden": [256, 256], "activation": "tanh", "decoder": "bernoulli"},
            "train": {"epochs": epochs, "batch_size": 100, "lr": 1e-3, "seed": seed, "patience": 50},
            "evaluate": {"num_samples": 1000, "batch_size": 100, "refine_points": 297},
        },
        "the demo's config",
    )
