"""Regenerates the statsmodels reference log-likelihoods in tests/test_structural.py.

statsmodels is not a dependency of elbox: run this in a venv that has it (statsmodels 0.15.0),
``/work/sm-venv/bin/python tests/data/structural_reference.py``, and paste its output into the test.
The series is the closed formula of ``series()`` in the test, evaluated in float64 by numpy here."""

import random
import warnings

import numpy as np
from statsmodels.tsa.statespace.sarimax import SARIMAX
from statsmodels.tsa.statespace.structural import UnobservedComponents


def series(n: int = 48) -> np.ndarray:
    t = np.arange(n, dtype=np.float64)
    season = np.array([4.0, -1.0, -5.0, 2.0])[np.arange(n) % 4]
    return 10 + 0.5 * t + season + 2 * np.sin(0.7 * t) + np.cos(1.9 * t**2 / 7)


def seasonal_series(n: int = 120) -> np.ndarray:
    """A dummy seasonal of period 4 (σ_ω = 0.5) plus noise (σ_ε = 1), drawn by Python's own
    ``random.Random(0).gauss`` so that numpy and torch see the same numbers."""
    rng = random.Random(0)
    gamma = [3.0, -1.0, -2.5]  # γ_t, γ_{t-1}, γ_{t-2}
    y = []
    for _ in range(n):
        y.append(gamma[0] + rng.gauss(0.0, 1.0))
        gamma = [-sum(gamma) + rng.gauss(0.0, 0.5)] + gamma[:2]
    return np.array(y)


def level_seasonal_series(n: int = 120) -> np.ndarray:
    """:func:`seasonal_series` plus a random-walk level (σ_η = 0.3, from ``random.Random(1)``)."""
    rng = random.Random(1)
    level, out = 5.0, []
    for _ in range(n):
        out.append(level)
        level += rng.gauss(0.0, 0.3)
    return seasonal_series(n) + np.array(out)


CASES = {
    # name: (model, parameters in statsmodels' order)
    "dummy_seasonal_4": (lambda y: UnobservedComponents(y, irregular=True, seasonal=4), [1.3, 0.4]),
    "trig_seasonal_4": (lambda y: UnobservedComponents(y, irregular=True,
                                                       freq_seasonal=[{"period": 4, "harmonics": 2}]), [1.3, 0.4]),
    "trig_seasonal_12_h3": (lambda y: UnobservedComponents(y, irregular=True,
                                                           freq_seasonal=[{"period": 12, "harmonics": 3}]),
                            [1.3, 0.4]),
    "ar2_uc": (lambda y: UnobservedComponents(y - y.mean(), irregular=True, autoregressive=2), [0.7, 2.1, 0.6, -0.3]),
    "ar2_sarimax": (lambda y: SARIMAX(y - y.mean(), order=(2, 0, 0), measurement_error=True), [0.6, -0.3, 2.1, 0.7]),
    "level_seasonal_4": (lambda y: UnobservedComponents(y, "local level", seasonal=4), [1.3, 0.8, 0.4]),
    "trend_seasonal_4_ar1": (lambda y: UnobservedComponents(y, "local linear trend", seasonal=4, autoregressive=1),
                             [1.3, 0.8, 0.05, 0.4, 0.9, 0.5]),
}

if __name__ == "__main__":
    y = series()
    for name, (make, params) in CASES.items():
        model = make(y)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            print(f"{name} = {float(model.loglike(np.array(params)))!r}  # {model.param_names} = {params}, "
                  f"burn {model.loglikelihood_burn}")
    # the dummy seasonal's maximum on a simulated quarterly series, for the fit tests
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = UnobservedComponents(seasonal_series(), irregular=True, seasonal=4).fit(disp=False, maxiter=1000)
    print(f"dummy_seasonal_4_max = {float(fit.llf)!r}  # {fit.model.param_names} = {[float(p) for p in fit.params]}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = UnobservedComponents(level_seasonal_series(), "local level", seasonal=4).fit(disp=False, maxiter=1000)
    print(f"level_seasonal_4_max = {float(fit.llf)!r}  # {fit.model.param_names} = {[float(p) for p in fit.params]}")
