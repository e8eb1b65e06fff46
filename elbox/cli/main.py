"""``elbox``: fit latent-variable models and report how far the ELBO is from the evidence."""

from __future__ import annotations

import os
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
    """Bad input ends the command with its message and exit status 2, a run that failed (a
    non-finite bound) with its message and status 1, never a traceback; warnings raised on the
    way (divergence, posterior collapse) are printed as such."""
    import warnings

    from elbox.distributed import DistributedError
    from elbox.io import RunLockedError
    from elbox.runs import ConfigError

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        except FloatingPointError as error:
            console.print(f"[bold red]error:[/] {escape(str(error))}", soft_wrap=True)
            raise typer.Exit(code=1) from None
        # OSError: unwritable paths
        except (ConfigError, OSError, ValueError, TypeError, RunLockedError, DistributedError) as error:
            console.print(f"[bold red]error:[/] {escape(str(error))}", soft_wrap=True)
            raise typer.Exit(code=2) from None
        finally:
            for w in caught:
                if issubclass(w.category, UserWarning) and w.category.__module__.startswith("elbox"):
                    console.print(f"[yellow]warning:[/] {escape(str(w.message))}", soft_wrap=True)


def _start_process_group() -> None:
    """Under torchrun, the process group (gloo on the CPU, nccl on GPUs); nothing otherwise."""
    from elbox.distributed import DistributedError, init_from_environment

    try:
        init_from_environment()
    except (RuntimeError, ValueError) as error:
        raise DistributedError(f"could not start the process group from torchrun's environment: {error}") from None


# escaped: rich reads "[quick]" as markup and would drop it from --help
_QUICK_FIT_HELP = escape(
    "Apply the config's [quick] overrides (fewer epochs, a smaller evaluation): the same code on a short run. The "
    "run's config.toml records the values used and [record] quick = true; the default --out is "
    "runs/<config name>-quick."
)
_QUICK_EVALUATE_HELP = escape(
    "Evaluate with the evaluate.* entries of the run's [quick] table (fewer points and samples); --evaluate-config "
    "and the options still override them."
)

_IMPORTS_HELP = ("A module or .py file to import first: one that registers objectives or model types of its own "
                 "(repeatable; fit records it in the run, which evaluate and report import again).")


@app.command()
def fit(
    config: Path = typer.Argument(..., help="The TOML config (see configs/)."),
    out: Path = typer.Option(None, help="The run directory (default: runs/<config name>)."),
    resume: bool = typer.Option(False, help="Continue the run in --out from its last checkpoint."),
    progress: bool = typer.Option(True, help="Show the progress bar."),
    imports: list[str] = typer.Option(None, "--import", help=_IMPORTS_HELP),
    quick: bool = typer.Option(False, "--quick", help=_QUICK_FIT_HELP),
) -> None:
    """Fit the config's model (any registered type, by EM or VI with any registered objective)
    into a run directory: config.toml, metrics.jsonl, checkpoints, figures.

    SIGTERM or Ctrl-C finishes the current step, writes a checkpoint and exits with 143 or 130;
    --resume continues exactly.

    --quick applies the config's quick table (every config in configs/ has one): the MNIST
    configs take minutes to hours on 2 cores (iwae_paper_vae.toml ≈ 6 hours), their quick
    variants under a minute.

    Under torchrun (`torchrun --nproc_per_node=N -m elbox fit CONFIG`) the same command trains
    data-parallel: [train] batch_size is the global batch; rank 0 writes the run directory. Workers
    restarted by torchrun --max-restarts resume from the last checkpoint by themselves."""
    from elbox.distributed import rank
    from elbox.inference import Interrupted
    from elbox.io import RunDirectory
    from elbox.runs import train_run

    out = out or Path("runs") / (config.stem + ("-quick" if quick else ""))
    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0 and RunDirectory(out).has_checkpoint():
        resume = True  # torchrun --max-restarts restarted the workers: continue from the last checkpoint
    try:
        with _user_errors():
            _start_process_group()
            result = train_run(config, out, resume=resume, progress=progress, imports=imports or (), quick=quick)
    except Interrupted as stop:
        if rank() == 0:
            console.print(f"[yellow]interrupted:[/] {escape(str(stop))}. Resume with: elbox fit {config} --out {out} "
                          f"--resume{' --quick' if quick else ''}", soft_wrap=True)  # fmt: skip
        raise typer.Exit(code=stop.exit_code) from None
    if rank() != 0:  # one table, from rank 0
        return
    history = result["history"]
    method = result["config"]["train"]["method"]
    kind = result["config"]["model"]["type"]
    table = Table(title=f"elbox fit {config}{' --quick' if quick else ''} → {out} ({kind}, {method})")

    def number(values):
        return f"{values[-1]:.3f}" if values and values[-1] == values[-1] else "—"

    columns = ("iterations" if method == "em" else "epochs", "bound", "reconstruction", "KL", "validation",
               "best epoch", "sec")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="right")
    table.add_row(
        str(history.n_iter) + (" (stopped early)" if history.stopped_early else ""),
        number(history.lower_bound), number(history.reconstruction), number(history.kl), number(history.validation),
        str(history.best_epoch) if method == "vi" else "—", f"{result['seconds']:.1f}",
    )  # fmt: skip
    console.print(table)
    if history.diverged:
        console.print("[yellow]warning:[/] the run diverged (metrics.jsonl: diverged = true); lower [train] lr or "
                      "set clip_grad_norm", soft_wrap=True)  # fmt: skip
    console.print(f"Run directory: {out}; evaluate it with `elbox evaluate {out}`")


def _evaluation_table(evaluation: dict) -> Table:
    """The evidence report as a table: the bracket, the gap and its split, the diagnostics; each
    number with its standard error over the points and its Monte Carlo standard error."""
    r = evaluation["report"]
    if r is None:  # one series under a time split: its exact log-likelihoods alone
        return _series_table(evaluation)
    table = Table(
        title=f"Evidence report: {evaluation['data']} (nats per data point)",
        caption="± points: the standard error over the data points (how the mean would move on other data); "
        "± MC: the Monte Carlo standard error (how it would move with other particles, same data; 0 for a closed "
        "form); bounds hold in expectation",
    )
    for column in ("quantity", "value", "± points", "± MC", "what it is"):
        table.add_column(column, justify="left" if column in ("quantity", "what it is") else "right")

    def number(value, digits=3):
        if value is None or value != value:
            return "—"
        if value in (float("inf"), float("-inf")):
            return "+∞" if value > 0 else "−∞"
        return f"{value:.{digits}f}"

    def row(name, summary, what, mc=None, **options):
        table.add_row(name, number(summary["mean"]), number(summary.get("stderr")),
                      number(summary.get("mc_stderr") if mc is None else mc, 4), what, **options)  # fmt: skip

    e, u = r["log_evidence"], r["upper_bound"]
    kind = "exact" if e["method"] == "exact" else f"an estimate ({e['method']}, S = {e['num_samples']})"
    if e.get("proposal") == "prior":
        kind += ", the prior as proposal"
    row("ELBO", r["elbo"], "a lower bound" + ("" if r["elbo"].get("mc_stderr") else " (closed form)"))
    row("  reconstruction", r["reconstruction"], escape("E_q[log p(x|z)]"))
    row("  KL", r["kl"], "KL(q(z|x) ‖ p(z))")
    row(f"IWAE-{r['iwae']['num_samples']}", r["iwae"], "a lower bound")
    row("log p(x)", e, kind, mc=0.0 if e["method"] == "exact" else None)
    if "precision_shift" in e:  # what the products' rounding moved log p̂ by, on the same draws
        row(f"  {e['precision']} shift", e["precision_shift"],
            escape(f"log p̂ in {e['precision']} − in float32, same draws (± points)"), mc=float("nan"))  # fmt: skip
    if r.get("bits_per_dim"):
        b = r["bits_per_dim"]
        row("  bits per dimension", b, escape(f"−log₂ p(x) / D, D = {b['dims']}"), mc=0.0 if e["method"] == "exact"
            else None)  # fmt: skip
    row(f"CUBO-{u['n']:g}", u, f"an upper bound as S grows (S = {u['num_samples']})")
    exact_gap = e["method"] == "exact"
    row("gap", {"mean": r["gap"], "stderr": r.get("gap_stderr"), "mc_stderr": r.get("gap_mc_stderr")},
        "log p(x) − ELBO = KL(q ‖ p(z|x))" if exact_gap else "log p̂(x) − ELBO ≈ KL(q ‖ p(z|x))",
        end_section=True)  # fmt: skip
    if r.get("approximation_gap"):
        row("  approximation gap", r["approximation_gap"],
            escape(f"log p̂ − L[q*], q* refined per point ({r['refined_points']} points)"))  # fmt: skip
        row("  amortization gap", r["amortization_gap"], escape("L[q*] − L[q]: the encoder's share"))
    k = r.get("psis_khat")
    above = f"{100 * k['fraction_above_0.7']:.1f}% of points above 0.7" if k else "constant weights"
    table.add_row("PSIS k̂ (mean, max)", f"{number(k['mean'], 2)}, {number(k['max'], 2)}" if k else "—", "", "", above)
    if r.get("active_units") is not None:
        units = f"{r['active_units']} / {r['latent_units']}"
        table.add_row("active units", units, "", "", escape("Cov_x(E_q[z_u]) > 0.01"))
    if r.get("mutual_information") is not None:
        table.add_row("I(x; z) under q", number(r["mutual_information"]), "", "", f"at most log {r['mi_points']}")
    c = evaluation.get("test_log_likelihood")
    if c:
        table.add_row(f"test log-lik per step ({c['steps']} steps)", number(c["per_step"]),
                      number(c["per_sequence_stderr"] / c["steps"]) if c["per_sequence_stderr"] else "—", "0",
                      escape("log p(x_test | x_before) by the filter (exact), over the sequences"))  # fmt: skip
    t = evaluation.get("training_gap")
    if t:
        table.add_row("gap of the fitted q", number(t["gap"]), number(t["gap_stderr"]), "",
                      f"exact log p(x) − ELBO of the VI fit's q on its {t['points']} training points")  # fmt: skip
    return table


def _series_table(evaluation: dict) -> Table:
    table = Table(title=f"Log-likelihoods: {evaluation['data']} (nats)")
    for column in ("quantity", "total", "per step", "steps", "what it is"):
        table.add_column(column, justify="left" if column in ("quantity", "what it is") else "right")
    t, c = evaluation["training_log_likelihood"], evaluation["test_log_likelihood"]
    table.add_row("training part", f"{t['total']:.4f}", f"{t['per_step']:.4f}", str(t["steps"]),
                  escape("log p(x_train), exact"))  # fmt: skip
    table.add_row("test steps", f"{c['total']:.4f}", f"{c['per_step']:.4f}", str(c["steps"] * c["sequences"]),
                  escape("log p(x_test | x_before), exact, by the filter"))  # fmt: skip
    return table


def _print_warnings(evaluation: dict) -> None:
    if evaluation["report"] is None:
        return
    for message in evaluation["report"].get("warnings", []):
        console.print(f"[yellow]warning:[/] {escape(message)}", soft_wrap=True)


@contextmanager
def _stage_progress():
    """A rich bar per stage of an evaluation, or, where the output is not a terminal, a plain line
    per stage at most every 5 seconds and at each stage's end; yields the ``progress(stage, done,
    total)`` callback."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if not sys.stdout.isatty():
        import time

        last: dict[str, float] = {}

        def line(stage: str, done: int, total: int) -> None:
            now = time.monotonic()
            if done >= total or now - last.get(stage, -1e9) >= 5.0:
                last[stage] = now
                console.print(f"{stage}: {done}/{total}", soft_wrap=True)

        yield line
        return

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:  # fmt: skip
        tasks: dict[str, int] = {}

        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield update


@app.command()
def evaluate(
    run_dir: Path = typer.Argument(..., help="A run directory written by `elbox fit`."),
    num_samples: int = typer.Option(None, min=1, help="Importance samples per point (default: the run's)."),
    max_points: int = typer.Option(None, min=0, help="Evaluate the first N test points (0: all)."),
    evaluate_config: Path = typer.Option(None, help="A TOML file with an \\[evaluate] table of settings."),
    imports: list[str] = typer.Option(None, "--import", help=_IMPORTS_HELP),
    quick: bool = typer.Option(False, "--quick", help=_QUICK_EVALUATE_HELP),
) -> None:
    """The evidence report on the test set: ELBO ≤ IWAE ≤ log p̂(x) ≤ CUBO, the gap split, k-hat,
    active units (exact models: the exact log p(x) and gap); writes evaluation.json.

    The run's config of record is the one in its checkpoint: an edited config.toml is refused.
    Settings come from the run, then the evaluate.* entries of its quick table (with
    --quick), then --evaluate-config, then the options."""
    from elbox.distributed import rank
    from elbox.runs import evaluate_run
    from elbox.runs.plugins import import_plugins

    with _user_errors(), _stage_progress() as progress:
        _start_process_group()  # under torchrun the test points are shared out; the report is one process's
        import_plugins(imports or ())
        result = evaluate_run(run_dir, num_samples=num_samples, max_points=max_points,
                              evaluate_config=evaluate_config, quick=quick, progress=progress)  # fmt: skip
    if rank() != 0:
        return
    console.print(_evaluation_table(result))
    _print_warnings(result)
    seconds = f" ({result['report']['seconds']:.1f} s)" if result["report"] is not None else ""
    console.print(f"Written: {run_dir / 'evaluation.json'}{seconds}")


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="A run directory written by `elbox fit`."),
    fresh: bool = typer.Option(False, help="Evaluate again even if evaluation.json exists."),
    evaluate_config: Path = typer.Option(None, help="A TOML file with an \\[evaluate] table (evaluates again)."),
    imports: list[str] = typer.Option(None, "--import", help=_IMPORTS_HELP),
    quick: bool = typer.Option(False, "--quick", help=_QUICK_EVALUATE_HELP + " Evaluates again."),
) -> None:
    """Write report.html (self-contained: the bracket, the gaps, KL per unit, k-hat, training
    curves) and report.json to the run directory."""
    from elbox.distributed import rank
    from elbox.runs import report_run
    from elbox.runs.plugins import import_plugins

    with _user_errors(), _stage_progress() as progress:
        _start_process_group()
        import_plugins(imports or ())
        result = report_run(run_dir, fresh=fresh, evaluate_config=evaluate_config, quick=quick, progress=progress)
    if rank() != 0:
        return
    console.print(_evaluation_table(result["evaluation"]))
    _print_warnings(result["evaluation"])
    console.print(f"Written: {', '.join(str(p) for p in result['paths'])}")


@app.command()
def forecast(
    run_dir: Path = typer.Argument(..., help="A run directory written by `elbox fit` (an HMM, LGSSM, DMM or world "
                                   "model run)."),
    steps: int = typer.Option(..., "--steps", help="How many steps ahead."),
    level: float = typer.Option(0.9, help="The intervals' probability."),
    sequence: int = typer.Option(0, help="The sequence drawn in forecast.png."),
    inputs: Path = typer.Option(None, "--inputs", help="A .npy of the future steps' inputs [sequences, steps, inputs]: "
                                "needed by a model with inputs (an LGSSM's controls, a world model's actions)."),
    imports: list[str] = typer.Option(None, "--import", help=_IMPORTS_HELP),
) -> None:
    """Continue every training sequence --steps steps with the fitted model: forecast.csv (mean,
    sd and interval per step and coordinate) and forecast.png (history, forecast, interval, and
    the held-out steps where the run holds out the end of each series, [data] split = "time")."""
    from elbox.runs.forecast import forecast_run
    from elbox.runs.plugins import import_plugins

    with _user_errors():
        import_plugins(imports or ())
        result = forecast_run(run_dir, steps, level=level, sequence=sequence, inputs=inputs)
    rows = result["forecast"].table(sequence)
    simulated = result["forecast"].method == "simulation"
    how = f" (simulated, {result['forecast'].num_samples} paths; ± Monte Carlo standard error)" if simulated else ""
    table = Table(title=f"Forecast of sequence {sequence}, {steps} steps ahead{how}")
    for column in ("step", "coordinate", "mean", "sd", f"{100 * level:g}% interval"):
        table.add_column(column, justify="right")

    def value(row: dict, key: str) -> str:
        return f"{row[key]:.4g}" + (f" ± {row[key + '_se']:.2g}" if key + "_se" in row else "")

    for row in rows:
        interval = f"[{value(row, 'lower')}, {value(row, 'upper')}]" if "lower" in row else "—"
        table.add_row(str(row["step"]), str(row["coordinate"]), value(row, "mean"),
                      f"{row['sd']:.4g}" if "sd" in row else "—", interval)  # fmt: skip
    console.print(table)
    written = [str(result["table"])] + ([str(result["figure"])] if result["figure"] else [])
    console.print(f"Written: {', '.join(written)}")


@app.command()
def collect(
    env: str = typer.Argument(..., help="The environment: pendulum, cartpole or cartpole_swingup (needs dm_control)."),
    episodes: int = typer.Option(..., "--episodes", help="How many episodes."),
    out: Path = typer.Option(..., "--out", help="The .npz file to write."),
    policy: str = typer.Option("random", help="The policy that acts: 'random' (uniform actions)."),
    steps: int = typer.Option(None, help="Observations per episode, at least 2 (default: a full episode)."),
    pixels: bool = typer.Option(False, "--pixels", help="Record 64 × 64 RGB frames instead of the state."),
    seed: int = typer.Option(0, help="Seeds the episodes' initial states and the random policy."),
    force: bool = typer.Option(False, help="Replace an existing --out file."),
) -> None:
    """Collect episodes of an environment generated in code into an .npz: x (observations; frames
    as uint8), inputs (inputs[:, t] is the action that led into step t), rewards (rewards[:, t] is
    the reward on arriving at step t), continues (continues[:, t] is 0 where step t is terminal, else
    1), lengths, and meta (provenance, a JSON string). The file is
    written atomically; a sequence model trains on it through the config's data path."""
    import time

    import numpy as np

    from elbox.envs import collect as collect_episodes

    with _user_errors():
        if not str(out).lower().endswith(".npz"):
            raise ValueError(f"--out must be a .npz file; received {str(out)!r}")
        if out.exists() and not force:
            raise ValueError(f"--out {out} exists; pass --force to replace it (a run trained on it records its "
                             "checksum and would refuse the new file)")  # fmt: skip
        try:
            with _stage_progress() as progress:
                start = time.perf_counter()
                data = collect_episodes(env, episodes, steps=steps, pixels=pixels, policy=policy, seed=seed,
                                        progress=lambda done, total: progress("episodes", done, total))  # fmt: skip
                seconds = time.perf_counter() - start
        except ImportError as error:
            raise ValueError(str(error)) from None
        data.save(out)
    returns, lengths = data.rewards.sum(1).astype(np.float64), data.lengths.astype(np.float64)

    def mean_se(v):
        se = v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else float("nan")
        return f"{v.mean():.3f} ± {se:.3f}" if se == se else f"{v.mean():.3f}"

    table = Table(title=f"elbox collect {env} → {out}", caption="± the standard error over the episodes")
    for column in ("episodes", "observation", "steps (T)", "mean length", "mean return", "steps/s", "size"):
        table.add_column(column, justify="right")
    observation = "3 × 64 × 64 uint8" if data.pixels else f"{data.x.shape[-1]} float32"
    table.add_row(str(len(data)), observation, str(data.x.shape[1]), mean_se(lengths), mean_se(returns),
                  f"{int(lengths.sum()) / seconds:,.0f}", f"{out.stat().st_size / 2**20:.2f} MiB")  # fmt: skip
    console.print(table)


@app.command()
def plan(
    run_dir: Path = typer.Argument(..., help="A run directory of a world model ([model] type = 'world') with actions "
                                             "and a reward head."),
    episodes: int = typer.Option(10, min=1, help="Seeded episodes per policy (episode i: reset(seed + i))."),
    seed: int = typer.Option(0, min=0, help="The first episode's seed."),
    steps: int = typer.Option(None, min=1, help="Actions per episode (default: the environment's full episode)."),
    env: str = typer.Option("pendulum", help="The environment the run's data came from (elbox collect's name)."),
    horizon: int = typer.Option(12, min=1, help="The planner's horizon (PlaNet: 12)."),
    candidates: int = typer.Option(300, min=1, help="Action sequences per iteration (PlaNet: 1000)."),
    iterations: int = typer.Option(4, min=1, help="Refits of the search distribution per step (PlaNet: 10)."),
    top_k: int = typer.Option(30, "--top-k", min=1, help="The elite refitted to (PlaNet: 100)."),
    true_dynamics: bool = typer.Option(True, help="Also plan on the true dynamics (pendulum): the upper bound."),
    imports: list[str] = typer.Option(None, "--import", help=_IMPORTS_HELP),
) -> None:
    """Plan with the run's world model by the cross-entropy method (model-predictive control, replanning
    every step) and compare it, on the same seeded episodes, with random actions and with the same
    planner on the true dynamics: mean return ± standard error. Writes plan.json and plan.png."""
    from elbox.runs.plan import plan_run
    from elbox.runs.plugins import import_plugins

    with _user_errors():
        import_plugins(imports or ())
        with console.status("planning") as status:
            result = plan_run(run_dir, episodes=episodes, seed=seed, steps=steps, env=env, horizon=horizon,
                              candidates=candidates, iterations=iterations, top_k=top_k, true_dynamics=true_dynamics,
                              progress=lambda name: status.update(f"episodes of {name}"))  # fmt: skip
    settings = result["settings"]
    table = Table(
        title=f"{env}: return over {episodes} seeded episodes of {settings['steps']} steps",
        caption=f"CEM: horizon {horizon}, {candidates} candidates, {iterations} iterations, top {top_k}; ± the "
                "standard error of the mean over episodes",
    )  # fmt: skip
    for column in ("policy", "mean return", "± SE", "min", "max", "seconds"):
        table.add_column(column, justify="left" if column == "policy" else "right")
    for row in result["rows"]:
        table.add_row(row["policy"], f"{row['mean']:.1f}", f"{row['stderr']:.1f}", f"{min(row['returns']):.1f}",
                      f"{max(row['returns']):.1f}", f"{row['seconds']:.0f}")  # fmt: skip
    console.print(table)
    written = [str(result["table"])] + ([str(result["figure"])] if result["figure"] else [])
    console.print(f"Written: {', '.join(written)}")


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
    force: bool = typer.Option(False, help="Replace a previous run in --out (never a directory of other files)."),
) -> None:
    """Fit a VAE to the embedded digits and report its evidence (or, with --model gmm, a Gaussian
    mixture by EM and by VI, with the exact gap)."""
    if model not in ("vae", "gmm"):
        console.print(f"[bold red]error:[/] --model must be 'vae' or 'gmm'; received {model!r}")
        raise typer.Exit(code=2)
    if model == "gmm":
        _gmm_demo(out, components, pca, vi_epochs, seed, force)
        return
    from elbox.runs.demo import run_vae_demo

    with _user_errors():
        result = run_vae_demo(out, epochs=epochs, sweep_epochs=sweep_epochs, seed=seed, progress=progress,
                              console=console, force=force)  # fmt: skip
    console.print(_evaluation_table(result["evaluation"]))
    _print_warnings(result["evaluation"])
    if result["sweep"]:
        table = Table(title="β sweep: the reconstruction/KL trade-off on the test set (nats)")
        for column in ("β", "rate KL", escape("distortion −E_q[log p(x|z)]"), "ELBO"):
            table.add_column(column, justify="right")
        for row in result["sweep"]:
            table.add_row(f"{row['beta']:g}", f"{row['kl']:.3f}", f"{row['distortion']:.3f}", f"{row['elbo']:.3f}")
        console.print(table)
    console.print(f"Run directory: {out} ({', '.join(result['figures'])}); {result['seconds']:.0f} s in all")
    console.print(f"Evidence report: {result['report']} (open it in a browser)")


def _gmm_demo(out: Path, components: int, pca: int, vi_epochs: int, seed: int, force: bool) -> None:
    from elbox.runs.demo import run_demo

    with _user_errors(), console.status("fitting a Gaussian mixture to the digits by EM and by VI"):
        report = run_demo(out, components=components, pca=pca, vi_epochs=vi_epochs, seed=seed, force=force)
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
