"""``elbox``: fit latent-variable models and report how far the ELBO is from the evidence."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
# Piped output gets a fixed width wide enough for the tables; a terminal keeps its own.
console = Console() if sys.stdout.isatty() else Console(width=120)


@app.callback()
def _root() -> None:
    """elbox: latent-variable models, the ELBO, and the gap to the evidence."""


@contextmanager
def _user_errors():
    """Bad input ends the command with its message and exit status 2, not a traceback."""
    from elbox.cli.config import ConfigError

    try:
        yield
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError) as error:
        console.print(f"[bold red]error:[/] {escape(str(error))}", soft_wrap=True)
        raise typer.Exit(code=2) from None


@app.command()
def fit(
    config: Path = typer.Argument(..., help="The TOML config (see configs/)."),
    out: Path = typer.Option(None, help="The run directory (default: runs/<config name>)."),
    resume: bool = typer.Option(False, help="Continue the run in --out from its last checkpoint."),
    progress: bool = typer.Option(True, help="Show the progress bar."),
) -> None:
    """Train the config's VAE into a run directory: metrics.jsonl, checkpoints, figures."""
    from elbox.cli.experiment import train_run

    out = out or Path("runs") / config.stem
    with _user_errors():
        result = train_run(config, out, resume=resume, progress=progress)
    history = result["history"]
    table = Table(title=f"elbox fit {config} → {out}")
    for column in ("epochs", "bound", "reconstruction", "KL", "validation", "best epoch", "sec"):
        table.add_column(column, justify="right")
    table.add_row(
        str(history.n_iter) + (" (stopped early)" if history.stopped_early else ""),
        f"{history.lower_bound[-1]:.3f}",
        f"{history.reconstruction[-1]:.3f}",
        f"{history.kl[-1]:.3f}",
        f"{history.validation[-1]:.3f}" if history.validation else "—",
        str(history.best_epoch),
        f"{result['seconds']:.1f}",
    )
    console.print(table)
    console.print(f"Run directory: {out}; evaluate it with `elbox evaluate {out}`")


def _evaluation_table(result: dict) -> Table:
    rows = result["rows"]
    table = Table(
        title=f"{result['data']} (nats per data point)",
        caption=(
            f"log p(x): importance sampling with the encoder as proposal, S = {result['num_samples']}; "
            f"± is the standard error over test points (Monte Carlo error {rows['log_px']['mc_stderr']:.1e})"
        ),
    )
    for column in ("quantity", "value", "± s.e.", "what it is"):
        table.add_column(column, justify="left" if column in ("quantity", "what it is") else "right")
    table.add_row("ELBO", f"{rows['elbo']['mean']:.3f}", f"{rows['elbo']['stderr']:.3f}", "a lower bound")
    table.add_row(
        "reconstruction", f"{rows['reconstruction']['mean']:.3f}", f"{rows['reconstruction']['stderr']:.3f}",
        escape("E_q[log p(x|z)]"),
    )  # fmt: skip
    table.add_row("KL", f"{rows['kl']['mean']:.3f}", f"{rows['kl']['stderr']:.3f}", "KL(q(z|x) ‖ p(z))")
    table.add_row(
        "log p(x)", f"{rows['log_px']['mean']:.3f}", f"{rows['log_px']['stderr']:.3f}",
        "an estimate (IWAE-S, low by ≈ s.e.²/2)",
    )  # fmt: skip
    table.add_row("gap", f"{result['gap']:.3f}", "", "log p̂(x) − ELBO ≈ KL(q ‖ p(z|x))")
    return table


@app.command()
def evaluate(
    run_dir: Path = typer.Argument(..., help="A run directory written by `elbox fit`."),
    num_samples: int = typer.Option(None, min=1, help="Importance samples per point (default: the config's)."),
    max_points: int = typer.Option(None, min=0, help="Evaluate the first N test points (0: all)."),
) -> None:
    """Test ELBO, reconstruction, KL and log p(x) ± s.e. by importance sampling; writes evaluation.json."""
    from rich.progress import Progress

    from elbox.cli.experiment import evaluate_run

    with _user_errors(), Progress(console=console, transient=True) as bar:
        task = bar.add_task("evaluating the test set", total=None)
        result = evaluate_run(
            run_dir, num_samples=num_samples, max_points=max_points,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )  # fmt: skip
    console.print(_evaluation_table(result))
    console.print(f"Written: {run_dir / 'evaluation.json'} ({result['seconds']:.1f} s)")


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="The run directory to write."),
    model: str = typer.Option("vae", help="'vae' (a VAE on the digits) or 'gmm' (a Gaussian mixture, EM vs VI)."),
    epochs: int = typer.Option(300, min=1, help="vae: training epochs."),
    sweep_epochs: int = typer.Option(100, min=0, help="vae: epochs per fit of the β sweep (0: no sweep)."),
    components: int = typer.Option(10, min=1, help="gmm: mixture components K."),
    pca: int = typer.Option(5, min=1, max=64, help="gmm: principal components kept of the 64 pixels."),
    vi_epochs: int = typer.Option(400, min=1, help="gmm: full-batch VI steps."),
    seed: int = typer.Option(0, help="Seeds the run."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Fit a VAE to the embedded digits and report its evidence (or, with --model gmm, a Gaussian
    mixture by EM and by VI, with the exact gap)."""
    if model not in ("vae", "gmm"):
        console.print(f"[bold red]error:[/] --model must be 'vae' or 'gmm'; received {model!r}")
        raise typer.Exit(code=2)
    if model == "gmm":
        _gmm_demo(out, components, pca, vi_epochs, seed)
        return
    from elbox.cli.demo import run_vae_demo

    with _user_errors():
        result = run_vae_demo(out, epochs=epochs, sweep_epochs=sweep_epochs, seed=seed, progress=progress,
                              console=console)  # fmt: skip
    console.print(_evaluation_table(result["evaluation"]))
    if result["sweep"]:
        table = Table(title="β sweep: the reconstruction/KL trade-off on the test set (nats)")
        for column in ("β", "rate KL", escape("distortion −E_q[log p(x|z)]"), "ELBO"):
            table.add_column(column, justify="right")
        for row in result["sweep"]:
            table.add_row(f"{row['beta']:g}", f"{row['kl']:.3f}", f"{row['distortion']:.3f}", f"{row['elbo']:.3f}")
        console.print(table)
    console.print(f"Run directory: {out} ({', '.join(result['figures'])}); {result['seconds']:.0f} s in all")


def _gmm_demo(out: Path, components: int, pca: int, vi_epochs: int, seed: int) -> None:
    from elbox.cli.demo import run_demo

    with console.status("fitting a Gaussian mixture to the digits by EM and by VI"):
        report = run_demo(out, components=components, pca=pca, vi_epochs=vi_epochs, seed=seed)
    table = Table(
        title=f"{report['model']}\non {report['data']} (nats per data point)",
        caption="gap = KL(q ‖ p(z|x)), computed apart from the bound; EM's q is the exact posterior",
    )
    for column in ("method", "log p(x)", "ELBO", "gap", "log p − ELBO", "iters", "sec"):
        table.add_column(column, justify="left" if column == "method" else "right", no_wrap=True)
    for row in report["rows"]:
        table.add_row(
            row["method"],
            f"{row['log_evidence']:.4f}",
            f"{row['elbo']:.4f}",
            f"{row['gap_kl']:.3e}",
            f"{row['gap_difference']:.3e}",
            str(row["iterations"]),
            f"{row['seconds']:.2f}",
        )
    console.print(table)
    console.print(f"Run directory: {out} (config.toml, metrics.jsonl, report.json, traces.png)")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
