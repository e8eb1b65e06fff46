"""The world model's simulated forecast carries its Monte Carlo errors (the deep Markov model's
convention: independent filter-and-simulate runs, the spread of their figures over √runs): they
shrink as 1/√particles, the linear configuration's forecast agrees with the Kalman forecast
within them, and ``elbox forecast`` writes them for a world run."""

from __future__ import annotations

import math

import pytest
import torch

from tests.test_world import _episodes, _linear_world


def _wide_posterior_world():
    """The linear world model with its posterior's scale widened (softplus(ρ + 2): about 2.5 times),
    so that the filter's weights are bounded and the central limit theorem's 1/√S holds (with the
    narrower posterior of _linear_world some sequences' weights are heavy-tailed and their errors
    shrink more slowly)."""
    model = _linear_world(A=1)
    with torch.no_grad():
        model.guide().raw_scale.add_(2.0)
    return model


def test_the_monte_carlo_error_shrinks_as_one_over_root_particles():
    model = _wide_posterior_world()
    lengths = torch.tensor([6, 4, 6, 5, 6, 3, 6, 5])
    x = model.check_data(_episodes(model, lengths))
    future = torch.randn(len(lengths), 3, 1, dtype=torch.float64)
    torch.manual_seed(0)
    R = 16
    # 400 and 1,600 particles a run: past the few-particle regime, where a quantile's error shrinks slower
    small = model.forecast(x, 3, inputs=future, num_samples=6400, num_runs=R)
    large = model.forecast(x, 3, inputs=future, num_samples=25600, num_runs=R)
    assert small.num_samples == 6400 and large.num_samples == 25600 and small.method == "simulation"
    for name in ("mean_stderr", "lower_stderr", "upper_stderr"):
        a, b = getattr(small, name), getattr(large, name)
        assert a.shape == small.mean.shape and (a > 0).all()
        # four times the particles: half the error. Each squared error is a variance estimated from
        # R runs (relative SE √(2/(R−1))); pooled over the B independent sequences, the log of the
        # ratio of the mean squared errors has SE √(2 · 2 / ((R − 1) B)); 4 of them on the ratio of errors
        ratio = (a.square().mean() / b.square().mean()).sqrt()
        tolerance = 4 * 0.5 * math.sqrt(4 / ((R - 1) * len(lengths)))
        assert abs(math.log(ratio) - math.log(2)) < tolerance, (name, float(ratio))


def test_the_linear_forecast_agrees_with_the_kalman_forecast_within_its_monte_carlo_error():
    model = _wide_posterior_world()
    x = model.check_data(_episodes(model, torch.tensor([6, 4, 6, 5])))
    future = torch.randn(4, 3, 1, dtype=torch.float64)
    exact = model.to_lgssm().forecast(x, 3, inputs=future)
    torch.manual_seed(1)
    forecast = model.forecast(x, 3, inputs=future, num_samples=3200, num_runs=16)
    # t with 15 degrees of freedom over 24 entries: 5 standard errors is a bound that a correct
    # estimator exceeds with probability below 1e-3 for any of them
    z = (forecast.mean - exact.mean) / forecast.mean_stderr
    assert z.abs().max() < 5, float(z.abs().max())
    exact_sd = exact.variance.sqrt()
    normal = torch.distributions.Normal(exact.mean, exact_sd)
    for tail, estimate, se in ((0.05, forecast.lower, forecast.lower_stderr), (0.95, forecast.upper,
                                                                               forecast.upper_stderr)):
        z = (estimate - normal.icdf(torch.full_like(estimate, tail))) / se
        assert z.abs().max() < 5, (tail, float(z.abs().max()))


def test_one_run_has_no_monte_carlo_error_and_a_bad_count_is_refused():
    model = _linear_world(A=1)
    x = _episodes(model, torch.tensor([6, 4]))
    future = torch.zeros(2, 2, 1, dtype=torch.float64)
    one = model.forecast(x, 2, inputs=future, num_samples=50)
    assert one.num_samples == 50 and one.mean_stderr is None and one.lower_stderr is None
    with pytest.raises(ValueError, match="num_runs"):
        model.forecast(x, 2, inputs=future, num_runs=0)


def test_elbox_forecast_writes_and_prints_the_monte_carlo_errors_of_a_world_run(tmp_path):
    import csv

    import numpy as np
    from typer.testing import CliRunner

    import elbox
    from elbox.cli.main import app
    from elbox.runs import load_config, train_run
    from tests.test_world import _pendulum

    x = _pendulum(10, 8)
    np.savez(tmp_path / "episodes.npz", x=x.values.numpy(), inputs=x.inputs.numpy(), rewards=x.rewards.numpy(),
             lengths=np.full(10, 8))  # fmt: skip
    config = load_config(elbox.runs.config.Path(__file__).parents[1] / "configs" / "world_model_pendulum.toml")
    config["data"].update(path=str(tmp_path / "episodes.npz"), test=2)
    config["model"].update(deter_dim=8, hidden=16, latent_dim=3)
    config["train"]["epochs"] = 1
    train_run(None, tmp_path / "run", config=config)
    np.save(tmp_path / "actions.npy", np.zeros((8, 2, 1)))
    result = CliRunner().invoke(app, ["forecast", str(tmp_path / "run"), "--steps", "2", "--inputs",
                                      str(tmp_path / "actions.npy")])  # fmt: skip
    assert result.exit_code == 0, result.output
    printed = " ".join(result.output.split())  # the table's title may wrap
    assert "1000 paths; ± Monte Carlo standard error" in printed and printed.count(" ± ") >= 2 * 3 * 3
    rows = list(csv.DictReader((tmp_path / "run" / "forecast.csv").open()))
    assert len(rows) == 8 * 2 * 3
    assert all(float(r["mean_se"]) > 0 and float(r["lower_se"]) > 0 and float(r["upper_se"]) > 0 for r in rows)
