"""Gaussian HMM scoring and Baum–Welch: elbox against hmmlearn, same parameters, one run.

    python bench/hmm.py [--sequences 200] [--steps 500] [--states 8] [--dim 4] [--iterations 50]
                        [--single-steps 100000]

Both score the same sequences with the same parameters (hmmlearn's compiled forward pass,
one call over all sequences; elbox's batched forward algorithm), then run the same number of
EM iterations from the same start with tol disabled (all of them run), in float64; last, one long sequence is
scored alone, and its posterior marginals computed (forward–backward: hmmlearn's predict_proba
against elbox's posterior, by chunks). The script prints seconds, ratios, and both log-likelihoods, which must agree.

With ``--dynamax``, the rows of issue 30 against dynamax (``hmm_filter`` / ``hmm_smoother`` under
``jax.jit``, ``vmap`` for the batch, the emissions' log-densities inside the compiled function;
``DiagonalGaussianHMM.fit_em`` for EM), each side in its own process (bench/_dynamax.py, run by
``$ELBOX_BENCH_PYTHON``), medians of ``--repeats`` (of three fits for EM, every one running all
its iterations: ``tol=None``), JAX's compilation reported apart:

    ELBOX_BENCH_PYTHON=/path/to/bench-venv/bin/python python bench/hmm.py --dynamax

``--pomegranate`` runs the same rows against pomegranate 1.x (``DenseHMM`` with diagonal ``Normal``
states, in float64; bench/_pomegranate.py, in the same environment), whose EM also learns end
probabilities: its EM row compares time only.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from hmmlearn import hmm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, median_time, run_peer, timed  # noqa: E402

import elbox  # noqa: E402


def _peer(model: elbox.HMM, iterations: int) -> hmm.GaussianHMM:
    peer = hmm.GaussianHMM(
        model.num_states,
        covariance_type="diag",
        init_params="",
        params="stmc",
        n_iter=iterations,
        tol=-np.inf,
        covars_prior=0.0,
        means_weight=0.0,
        min_covar=0.0,
    )
    peer.startprob_ = model.initial_probs.detach().numpy()
    peer.transmat_ = model.transition_matrix.detach().numpy()
    peer.means_ = model.emissions.loc.detach().numpy()
    peer.covars_ = model.emissions.covariance.detach().numpy()
    return peer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=200)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--states", type=int, default=8)
    parser.add_argument("--dim", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5, help="scoring is timed as the best of this many")
    parser.add_argument("--single-steps", type=int, default=100_000,
                        help="the one long sequence scored by itself (0: skip)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dynamax", action="store_true", help="issue 30's rows against dynamax instead")
    parser.add_argument("--pomegranate", action="store_true", help="the same rows against pomegranate instead")
    args = parser.parse_args()
    B, T, K, D, n_iter = args.sequences, args.steps, args.states, args.dim, args.iterations
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(args.seed)

    transition = 0.6 * torch.eye(K) + 0.4 * torch.distributions.Dirichlet(torch.ones(K)).sample((K,))
    truth = elbox.HMM(
        K, "gaussian", dim=D, loc=3 * torch.randn(K, D), covariance=0.5 + torch.rand(K, D), transition_matrix=transition
    )
    x, _ = truth.sample(B, num_steps=T)  # [B, T, D]
    X, lengths = x.reshape(B * T, D).numpy(), np.full(B, T)
    model = elbox.HMM(K, "gaussian", dim=D, reg_covar=0.0)
    model.initialize(x, "kmeans++", generator=torch.Generator().manual_seed(args.seed))
    if args.dynamax or args.pomegranate:
        return _against_peer(truth, model, x, args, "dynamax" if args.dynamax else "pomegranate")
    peer = _peer(model, n_iter)

    times: dict[str, float] = {}
    best = {"hmmlearn": np.inf, "elbox": np.inf}
    with torch.no_grad():
        for _ in range(args.repeats):
            with timed(times, "hmmlearn"):
                hl_score = peer.score(X, lengths)
            with timed(times, "elbox"):
                el_score = float(model.log_evidence(x).sum())
            best = {k: min(best[k], times[k]) for k in best}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with timed(times, "hmmlearn_em"):
            peer.fit(X, lengths)  # n_iter E-steps and M-steps
        with timed(times, "elbox_em"):
            history = elbox.em(model, x, max_iter=n_iter + 1, tol=None)  # n_iter M-steps (+1 E-step), all run
    assert history.n_iter == n_iter + 1, history.n_iter
    hl_final = peer.monitor_.history[-1]
    el_final = history.lower_bound[-2] * B  # the bound before the last M-step, as hmmlearn records it

    print(f"# Gaussian HMM: {B} sequences x {T} steps, K={K} states, D={D} diagonal emissions, float64")
    print(f"# {environment()}")
    print(f"{'':22s} {'hmmlearn':>12s} {'elbox':>12s} {'ratio':>8s}")
    print(
        f"{'score (s, best of ' + str(args.repeats) + ')':22s} {best['hmmlearn']:12.4f} {best['elbox']:12.4f} "
        f"{best['hmmlearn'] / best['elbox']:7.1f}x"
    )
    print(
        f"{'EM, ' + str(n_iter) + ' iterations (s)':22s} {times['hmmlearn_em']:12.3f} {times['elbox_em']:12.3f} "
        f"{times['hmmlearn_em'] / times['elbox_em']:7.1f}x"
    )
    for label, a, b in (("at the start", hl_score, el_score), ("after EM", hl_final, el_final)):
        print(f"log-likelihood {label:13s} hmmlearn {a:.6f}, elbox {b:.6f} (diff {abs(a - b):.1e})")
    if args.single_steps:
        _single_sequence(truth, args.single_steps, args.repeats)


def _single_sequence(truth: elbox.HMM, steps: int, repeats: int) -> None:
    """One long sequence scored with the generating parameters: hmmlearn's compiled forward
    pass against elbox's log_evidence (a balanced tree of matrix products here); then the
    posterior marginals, hmmlearn's compiled forward–backward against elbox's (chunks)."""
    x, _ = truth.sample(1, num_steps=steps)
    peer = _peer(truth, 1)
    X = x[0].numpy()
    times: dict[str, float] = {}
    best = {"hmmlearn": np.inf, "elbox": np.inf, "hmmlearn_post": np.inf, "elbox_post": np.inf}
    with torch.no_grad():
        for _ in range(repeats):
            with timed(times, "hmmlearn"):
                hl = peer.score(X)
            with timed(times, "elbox"):
                el = float(truth.log_evidence(x)[0])
            with timed(times, "hmmlearn_post"):
                hl_post = peer.predict_proba(X)
            with timed(times, "elbox_post"):
                el_post = truth.posterior(x).marginals()[0].numpy()
            best = {k: min(best[k], times[k]) for k in best}
    print(f"# one sequence of {steps} steps, K={truth.num_states}, the generating parameters")
    print(f"{'score (s, best of ' + str(repeats) + ')':22s} {best['hmmlearn']:12.4f} {best['elbox']:12.4f} "
          f"{best['hmmlearn'] / best['elbox']:7.1f}x")  # fmt: skip
    print(f"{'posterior (s)':22s} {best['hmmlearn_post']:12.4f} {best['elbox_post']:12.4f} "
          f"{best['hmmlearn_post'] / best['elbox_post']:7.1f}x")  # fmt: skip
    print(f"log-likelihood        hmmlearn {hl:.6f}, elbox {el:.6f} (relative diff {abs(hl - el) / abs(hl):.1e})")
    print(f"posterior marginals   largest difference {np.abs(hl_post - el_post).max():.1e}")


def _against_peer(truth: elbox.HMM, start: elbox.HMM, x, args, name: str) -> None:
    """Issue 30's rows: elbox timed here, the peer (dynamax or pomegranate) in its own process."""
    import copy

    get = lambda t: t.detach().numpy()  # noqa: E731
    B, T = x.shape[:2]
    xl, _ = truth.sample(1, num_steps=args.single_steps)
    arrays = {"pi": get(truth.initial_probs), "A": get(truth.transition_matrix), "loc": get(truth.emissions.loc),
              "var": get(truth.emissions.covariance), "em_pi": get(start.initial_probs),
              "em_A": get(start.transition_matrix), "em_loc": get(start.emissions.loc),
              "em_var": get(start.emissions.covariance), "em_iterations": args.iterations,
              "score:long": xl[0].numpy(), "posterior:long": xl[0].numpy(), "score:batch": x.numpy(),
              "em:batch": x.numpy()}  # fmt: skip
    arrays["rows"] = np.array(["score:long", "posterior:long", "score:batch", "em:batch"])
    peer = run_peer("hmm", arrays, args.repeats, name)
    rows = []
    with torch.no_grad():
        seconds, ours = median_time(lambda: truth.log_evidence(xl).numpy(), args.repeats)
        rows.append((f"score, 1 x {args.single_steps:,} steps", seconds, "score:long", ours))
        seconds, ours = median_time(lambda: truth.posterior(xl).marginals()[0].numpy(), args.repeats)
        rows.append((f"posterior marginals, 1 x {args.single_steps:,}", seconds, "posterior:long", ours))
        seconds, ours = median_time(lambda: truth.log_evidence(x).numpy(), args.repeats)
        rows.append((f"score, {B} x {T} steps", seconds, "score:batch", ours))
    seconds = []
    for _ in range(3):  # the median of three fits (dynamax's row too)
        fitted = copy.deepcopy(start)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with timed(times := {}, "em"):
                history = elbox.em(fitted, x, max_iter=args.iterations, tol=None)  # as many as the peer's
        assert history.n_iter == args.iterations, history.n_iter
        seconds.append(times["em"])
    rows.append((f"EM, {B} x {T}, {args.iterations} iterations", float(np.median(seconds)), "em:batch", None))
    print(f"# issue 30: elbox against {name}, K={truth.num_states}, float64, medians of {args.repeats}")
    print(f"# {environment()}; {peer['versions'] if peer else 'no ' + name}")
    first_label = "jit+1st (s)" if name == "dynamax" else "1st (s)"
    print(f"{'':36s} {'elbox (ms)':>11s} {name + ' (ms)':>16s} {'ratio':>7s} {first_label:>11s} {'max |diff|':>11s}")
    for label, seconds, key, ours in rows:
        theirs = peer[key + ":time"] if peer else np.nan
        if ours is None or not peer:
            diff = np.nan
        elif key.startswith("score"):
            diff = np.abs(ours - peer[key]).max() / np.abs(peer[key]).max()
        else:
            diff = np.abs(ours - peer[key]).max()
        first = peer[key + ":first"] if peer else np.nan
        ratio = theirs / seconds
        print(f"{label:36s} {1e3 * seconds:11.2f} {1e3 * theirs:16.2f} {ratio:6.2f}x {first:11.2f} {diff:11.1e}")
    if peer:  # dynamax's EM is MAP under its default priors, pomegranate's learns end probabilities too:
        # neither path is elbox's maximum likelihood, so only the start's log-likelihood is compared
        print(f"# EM: first log-likelihood elbox {history.lower_bound[0] * B:.4f}, {name} {peer['em:batch'][0]:.4f}")
    print(f"# ratio = {name} / elbox; max |diff|: relative for scores, absolute for marginals")


if __name__ == "__main__":
    main()
