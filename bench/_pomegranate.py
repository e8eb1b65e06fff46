"""The pomegranate side of bench/hmm.py and bench/gmm_em.py (``--pomegranate``), run in its own
process from the ``bench`` extra's environment (pomegranate is not in requirements.lock): reads
the workloads from an .npz, times each as the median of ``repeats`` runs after one untimed call,
and writes the times and the results to another .npz.

    python bench/_pomegranate.py hmm|gmm IN.npz OUT.npz REPEATS

pomegranate 1.x is PyTorch too (float32 by default; every model here is cast with ``.double()``).
Its HMM also learns end probabilities, so its EM path is not plain Baum–Welch: the EM row compares
time per iteration, and the log-likelihoods at the start only.
"""

from __future__ import annotations

import sys
import time
import warnings

import numpy as np
import torch

warnings.filterwarnings("ignore")


def _timed(fn, repeats):
    """(first call seconds, median of ``repeats`` later calls, last result)."""
    start = time.perf_counter()
    out = fn()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return first, float(np.median(times)), out


def hmm(d, repeats):
    from pomegranate.distributions import Normal
    from pomegranate.hmm import DenseHMM

    def model(pi, A, loc, var, **options):
        K = len(pi)
        new = lambda a: torch.tensor(a)  # noqa: E731  (a copy: pomegranate's fit writes its parameters in place)
        states = [Normal(new(loc[k]), new(var[k]), covariance_type="diag") for k in range(K)]
        ends = torch.ones(K, dtype=torch.float64)  # log 1 = 0: no end term, as elbox's and dynamax's HMMs
        return DenseHMM(states, edges=new(A), starts=new(pi), ends=ends, **options).double()

    truth = model(d["pi"], d["A"], d["loc"], d["var"])
    out = {}
    with torch.no_grad():
        for name in d["rows"]:
            name = str(name)
            y = torch.as_tensor(d[name])
            y = y[None] if y.ndim == 2 else y
            if name.startswith("score"):
                first, med, value = _timed(lambda y=y: truth.log_probability(y), repeats)
                out[name] = value.numpy()
            elif name.startswith("posterior"):
                first, med, value = _timed(lambda y=y: truth.predict_proba(y)[0], repeats)
                out[name] = value.numpy()
            elif name.startswith("em"):
                iters = int(d["em_iterations"])

                def fit(n, y=y):
                    m = model(d["em_pi"], d["em_A"], d["em_loc"], d["em_var"], max_iter=n, tol=0.0)
                    return m.fit(y)

                start = time.perf_counter()
                fit(1)
                first = time.perf_counter() - start
                start = time.perf_counter()
                fitted = fit(iters)
                med = time.perf_counter() - start
                out[name] = np.array([float(model(d["em_pi"], d["em_A"], d["em_loc"], d["em_var"])
                                            .log_probability(y).sum()), float(fitted.log_probability(y).sum())])
            out[name + ":time"], out[name + ":first"] = med, first
    return out


def gmm(d, repeats):
    """EM one iteration per ``fit`` call (each continues from the last), so that a failure names its
    iteration: pomegranate's Normal has no covariance regularizer (its ``min_cov`` is stored, never
    applied), and a covariance that loses definiteness stops the fit with a Cholesky error."""
    from pomegranate.distributions import Normal
    from pomegranate.gmm import GeneralMixtureModel

    x = torch.as_tensor(d["x"])
    iters = int(d["iterations"])

    def start():
        K = len(d["weights"])
        parts = [Normal(torch.tensor(d["means"][k]), torch.tensor(d["covariances"][k]), covariance_type="full")
                 for k in range(K)]  # fmt: skip  (copies: pomegranate's fit writes its parameters in place)
        return GeneralMixtureModel(parts, priors=torch.tensor(d["weights"]), max_iter=1, tol=0.0).double()

    begin = time.perf_counter()
    start().fit(x)
    first = time.perf_counter() - begin
    model, done = start(), 0
    begin = time.perf_counter()
    try:
        while done < iters:
            model.fit(x)
            done += 1
    except torch.linalg.LinAlgError as error:  # the iteration that failed is not counted
        print(f"# pomegranate failed at EM iteration {done + 1}: {str(error).splitlines()[0]}", file=sys.stderr)
    seconds = time.perf_counter() - begin
    with torch.no_grad():
        final = float(model.log_probability(x).mean()) if done == iters else float("nan")
    return {"em": np.array([final]), "em:time": seconds, "em:first": first, "em:iterations": done}


if __name__ == "__main__":
    kind, path_in, path_out, repeats = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    data = dict(np.load(path_in, allow_pickle=False))
    result = (hmm if kind == "hmm" else gmm)(data, repeats)
    result["versions"] = np.array(f"pomegranate {__import__('pomegranate').__version__}, torch {torch.__version__}")
    np.savez(path_out, **result)
