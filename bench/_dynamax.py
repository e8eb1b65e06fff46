"""The dynamax side of bench/lgssm.py and bench/hmm.py, run in its own process (JAX's thread pool
never shares one with torch's): reads the workloads from an .npz, times each under ``jax.jit``
(``vmap`` for batches) as the median of ``repeats`` runs after one compiling call, whose time is
reported apart, and writes the times and the results to another .npz.

    python bench/_dynamax.py lgssm|hmm IN.npz OUT.npz REPEATS

Needs the ``bench`` extra (jax CPU build, dynamax); not imported by elbox or its tests.
"""

from __future__ import annotations

import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)
warnings.filterwarnings("ignore")


def _timed(fn, args, repeats):
    """(compile + first run seconds, median steady-state seconds, result)."""
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return first, float(np.median(times)), out


def _fit_em(model, params, props, y, iters, repeats=3):
    """dynamax's ``fit_em``: (seconds of a 1-iteration call, the median seconds of ``repeats``
    calls of ``iters`` iterations, the log-likelihoods). Each call waits for its result: JAX
    dispatches asynchronously, so a timer stopped when ``fit_em`` returns measures the dispatch,
    not the fit (this script did so until 2026-12-05: its EM rows were 4–5× too fast). Each call
    also traces and compiles its steps again (``fit_em`` jits them inside), which a user pays on
    every call: it is in the time, and the 1-iteration call shows about how much of it."""
    start = time.perf_counter()
    jax.block_until_ready(model.fit_em(params, props, y, num_iters=1, verbose=False))
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        _, lls = jax.block_until_ready(model.fit_em(params, props, y, num_iters=iters, verbose=False))
        times.append(time.perf_counter() - start)
    return first, float(np.median(times)), np.asarray(lls)


def _lgssm_params(d, prefix):
    from dynamax.linear_gaussian_ssm.inference import make_lgssm_params

    return make_lgssm_params(
        jnp.asarray(d[prefix + "m0"]), jnp.asarray(d[prefix + "P0"]), jnp.asarray(d[prefix + "A"]),
        jnp.asarray(d[prefix + "Q"]), jnp.asarray(d[prefix + "C"]), jnp.asarray(d[prefix + "R"]),
    )  # fmt: skip


def lgssm(d, repeats):
    from dynamax.linear_gaussian_ssm import LinearGaussianSSM
    from dynamax.linear_gaussian_ssm.inference import lgssm_filter, lgssm_smoother

    out = {}
    loglik = jax.jit(lambda p, y: lgssm_filter(p, y).marginal_loglik)
    loglik_batch = jax.jit(jax.vmap(lambda p, y: lgssm_filter(p, y).marginal_loglik, in_axes=(None, 0)))
    smooth = jax.jit(lambda p, y: (lambda s: (s.smoothed_means, s.smoothed_covariances))(lgssm_smoother(p, y)))
    for name in d["rows"]:
        name = str(name)
        kind, prefix = name.split(":")[0], name.split(":")[1]
        params, y = _lgssm_params(d, prefix), jnp.asarray(d[name])
        if kind == "loglik":
            fn = loglik_batch if y.ndim == 3 else loglik
            first, med, value = _timed(fn, (params, y), repeats)
            out[name] = np.atleast_1d(np.asarray(value))
        elif kind == "smooth":
            first, med, (means, covs) = _timed(smooth, (params, y), repeats)
            out[name + ":means"], out[name + ":covs"] = np.asarray(means), np.asarray(covs)
        elif kind == "em":
            model = LinearGaussianSSM(int(d[prefix + "A"].shape[0]), int(d[prefix + "C"].shape[0]),
                                      has_dynamics_bias=False, has_emissions_bias=False)  # fmt: skip
            start_params, props = model.initialize(
                jax.random.PRNGKey(0), initial_mean=jnp.asarray(d[prefix + "m0"]),
                initial_covariance=jnp.asarray(d[prefix + "P0"]), dynamics_weights=jnp.asarray(d[prefix + "A"]),
                dynamics_covariance=jnp.asarray(d[prefix + "Q"]), emission_weights=jnp.asarray(d[prefix + "C"]),
                emission_covariance=jnp.asarray(d[prefix + "R"]),
            )  # fmt: skip
            first, med, out[name] = _fit_em(model, start_params, props, y, int(d["em_iterations"]))
        out[name + ":time"], out[name + ":first"] = med, first
    return out


def hmm(d, repeats):
    from dynamax.hidden_markov_model import DiagonalGaussianHMM
    from dynamax.hidden_markov_model.inference import hmm_filter, hmm_smoother

    pi, A = jnp.asarray(d["pi"]), jnp.asarray(d["A"])
    loc, var = jnp.asarray(d["loc"]), jnp.asarray(d["var"])

    def log_e(y):  # diagonal Gaussian emissions, [T, K]
        return -0.5 * (((y[:, None, :] - loc) ** 2 / var) + jnp.log(2 * jnp.pi * var)).sum(-1)

    score = jax.jit(lambda y: hmm_filter(pi, A, log_e(y)).marginal_loglik)
    score_batch = jax.jit(jax.vmap(lambda y: hmm_filter(pi, A, log_e(y)).marginal_loglik))
    posterior = jax.jit(lambda y: hmm_smoother(pi, A, log_e(y)).smoothed_probs)
    out = {}
    for name in d["rows"]:
        name = str(name)
        y = jnp.asarray(d[name])
        if name.startswith("score"):
            first, med, value = _timed(score_batch if y.ndim == 3 else score, (y,), repeats)
            out[name] = np.atleast_1d(np.asarray(value))
        elif name.startswith("posterior"):
            first, med, value = _timed(posterior, (y,), repeats)
            out[name] = np.asarray(value)
        elif name.startswith("em"):
            K, D = loc.shape
            model = DiagonalGaussianHMM(K, D)
            params, props = model.initialize(
                initial_probs=jnp.asarray(d["em_pi"]), transition_matrix=jnp.asarray(d["em_A"]),
                emission_means=jnp.asarray(d["em_loc"]), emission_scale_diags=jnp.sqrt(jnp.asarray(d["em_var"])),
            )  # fmt: skip
            first, med, out[name] = _fit_em(model, params, props, y, int(d["em_iterations"]))
        out[name + ":time"], out[name + ":first"] = med, first
    return out


if __name__ == "__main__":
    kind, path_in, path_out, repeats = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    data = dict(np.load(path_in, allow_pickle=False))
    result = (lgssm if kind == "lgssm" else hmm)(data, repeats)
    result["versions"] = np.array(f"jax {jax.__version__}, dynamax {__import__('dynamax').__version__}")
    np.savez(path_out, **result)
