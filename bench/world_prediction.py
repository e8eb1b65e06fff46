"""Prediction measured as a likelihood: the world model against three baselines on pendulum states.

    python bench/world_prediction.py [--epochs 300] [--schedule constant|cosine] [--min-std 0.1]
                                     [--context 20] [--horizon 30] [--particles 200] [--cache DIR]

(docs/world-models.md's table: ``--epochs 1500 --schedule cosine --min-std 0.1 --particles 1000``.)

Data: the 100 random-policy Pendulum-v1 episodes of 50 steps of configs/data/world_pendulum.npz
(training) and 50 more episodes of 50 steps drawn the same way with another seed (test). From
the first c = ``--context`` observed steps of each test episode, each model predicts the next
k = ``--horizon`` observations under the logged actions; per horizon j the score is the
j-step-ahead predictive log-likelihood log p(o_{c+j} | o_{1:c}, a) and the squared error of the
predicted mean (summed over the 3 coordinates):

- ``world``: the RSSM (WorldModel, Gaussian latents) trained by the true ELBO (world_elbo), the
  learning rate 3e-3 constant or (``--schedule cosine``) decayed along a cosine to 0;
  its predictive by a particle filter over the context (``--particles``, the posterior proposing)
  rolled forward by the prior; ± MC from 2 independent filter runs;
- ``world, no actions``: the same model and training with the actions switched off;
- ``lgssm``: elbox's LinearGaussianSSM with the actions as inputs (state 6), fitted by EM (2,000
  iterations at most); its exact predictive from the Kalman forecast;
- ``repeat last``: o_{c+j} ~ N(o_c, diag v_j), v_j the mean squared j-step change on the
  training episodes.

With ``--surrogates``: instead, the world model trained by the ELBO and by each surrogate (free
nats 3 per step, as PlaNet; 1 on the batch mean, as DreamerV1; KL balancing 0.8, as DreamerV2),
each scored by the true ELBO (10 paths), log p̂ by the particle filter (4 runs) with the gap,
and the predictive log-likelihood at horizons 1, 10 and 30, on the test episodes.

Printed per horizon: each model's mean over the test episodes ± the standard error over episodes,
and world − each baseline with its paired standard error over episodes. The JSON goes to
``--out`` (default bench/world_prediction.json).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment  # noqa: E402

import elbox  # noqa: E402
from elbox import Sequences, WorldModel  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "configs" / "data"))
from make_world_pendulum import pendulum_episodes  # noqa: E402


def _sequences(arrays: dict) -> Sequences:
    return Sequences(torch.from_numpy(arrays["x"]), inputs=torch.from_numpy(arrays["inputs"]),
                     rewards=torch.from_numpy(arrays["rewards"]))  # fmt: skip


def _gaussian_log_prob(x, mean, variance):
    return (-0.5 * ((x - mean).square() / variance + variance.log() + math.log(2 * math.pi))).sum(-1)


def _train_world(train: Sequences, use_actions: bool, epochs: int, min_std: float, cache: str | None = None,
                 seed: int = 0, schedule: str = "constant") -> tuple[WorldModel, float]:  # fmt: skip
    torch.manual_seed(seed)
    model = WorldModel(3, 1, latent_dim=8, deter_dim=64, hidden=64, observation_variance="learned",
                       use_actions=use_actions, min_std=min_std)  # fmt: skip
    tag = "" if schedule == "constant" else f"_{schedule}"
    path = Path(cache) / f"world_actions{int(use_actions)}_epochs{epochs}_minstd{min_std}{tag}.pt" if cache else None
    if path is not None and path.is_file():  # trained by an earlier call with the same settings
        saved = torch.load(path)
        model.load_state_dict(saved["state"])
        print(f"  world (use_actions={use_actions}): loaded from {path} (trained in {saved['seconds']:.0f} s)")
        return model, saved["seconds"]
    start = time.perf_counter()
    history = elbox.fit(model, model.guide(), train, bound="world_elbo", epochs=epochs, batch_size=20, lr=3e-3,
                        seed=seed, schedule=None if schedule == "constant" else schedule)  # fmt: skip
    print(f"  world (use_actions={use_actions}): {epochs} epochs in {time.perf_counter() - start:.0f} s, "
          f"training ELBO per episode {history.lower_bound[-1]:.1f}", flush=True)  # fmt: skip
    seconds = time.perf_counter() - start
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state": model.state_dict(), "seconds": seconds}, path)
    return model, seconds


def _surrogates(train: Sequences, test: Sequences, args) -> dict:
    """The true ELBO, log p̂ and the predictive log-likelihood of the world model trained by the
    ELBO and by each surrogate (free nats per step, as PlaNet; KL balancing, as DreamerV2)."""
    c, k = args.context, args.horizon
    variants = {"elbo": {}, "free_nats = 3 (step)": {"free_nats": 3.0},
                "free_nats = 1 (batch)": {"free_nats": 1.0, "free_nats_mode": "batch"},
                "kl_balance = 0.8": {"kl_balance": 0.8}}  # fmt: skip
    rows = {}
    B = len(test)
    for name, options in variants.items():
        torch.manual_seed(0)
        model = WorldModel(3, 1, latent_dim=8, deter_dim=64, hidden=64, observation_variance="learned",
                           min_std=args.min_std)  # fmt: skip
        elbox.fit(model, model.guide(), train, bound="world_elbo", epochs=args.epochs, batch_size=20, lr=3e-3, seed=0,
                  **options)  # fmt: skip
        torch.manual_seed(2)
        with torch.no_grad():
            elbo = elbox.models.world.world_elbo_steps(model, test, num_samples=10).value.sum(-1).double()
            log_p = elbox.log_evidence(model, test, guide=model.guide(), method="smc", num_samples=args.particles,
                                       num_runs=4)  # fmt: skip
        value = log_p.value.double()
        predictive = model.predictive_log_likelihood(test, context=c, horizon=k, num_samples=args.particles,
                                                     num_runs=1)["log_likelihood"].double()  # fmt: skip
        at = [j for j in (1, 10, 30) if j <= k]
        rows[name] = {
            "elbo": float(elbo.mean()), "elbo_stderr": float(elbo.std() / math.sqrt(B)),
            "log_p": float(value.mean()), "log_p_stderr": float(value.std() / math.sqrt(B)),
            "log_p_mc_stderr": float(log_p.stderr.double().square().mean().sqrt() / math.sqrt(B)),
            "gap": float((value - elbo).mean()), "gap_stderr": float((value - elbo).std() / math.sqrt(B)),
            "predictive": {j: [float(predictive[:, j - 1].mean()), float(predictive[:, j - 1].std() / math.sqrt(B))]
                           for j in at},
        }  # fmt: skip
        r = rows[name]
        print(f"  {name:<22} ELBO {r['elbo']:9.2f} ± {r['elbo_stderr']:.2f}   log p̂ {r['log_p']:9.2f} ± "
              f"{r['log_p_stderr']:.2f} (± MC {r['log_p_mc_stderr']:.2f})   "
              f"gap {r['gap']:6.2f} ± {r['gap_stderr']:.2f}   "
              + "   ".join(f"j={j}: {m:6.2f} ± {e:.2f}" for j, (m, e) in r["predictive"].items()), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--context", type=int, default=20)
    parser.add_argument("--horizon", type=int, default=30)
    parser.add_argument("--particles", type=int, default=200)
    parser.add_argument("--test", type=int, default=50)
    parser.add_argument("--min-std", type=float, default=0.1, help="the latents' std floor (PlaNet: 0.1)")
    parser.add_argument("--schedule", default="constant", choices=("constant", "cosine"),
                        help="the learning rate's schedule: constant 3e-3, or cosine from 3e-3 to 0 at the last epoch")
    parser.add_argument("--cache", default=None, help="a directory where trained world models are kept and reused "
                        "(a long run split into several calls)")
    parser.add_argument("--surrogates", action="store_true",
                        help="instead: the ELBO, log p̂ and prediction of the model trained by each surrogate")
    parser.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    args = parser.parse_args()
    c, k = args.context, args.horizon
    print(environment())
    train = _sequences(pendulum_episodes(100, 50, seed=0))
    test = _sequences(pendulum_episodes(args.test, c + k, seed=1))
    if args.surrogates:
        print(f"held-out episodes ({len(test)} of {c + k} steps): per episode, ± over episodes; predictive per step "
              f"from c = {c}")  # fmt: skip
        rows = _surrogates(train, test, args)
        Path(args.out).write_text(json.dumps({"environment": environment(), "epochs": args.epochs,
                                              "particles": args.particles, "surrogates": rows}, indent=1))
        print(f"written: {args.out}")
        return
    target = test.values[:, c : c + k].double()  # [B, k, 3]
    scores: dict[str, dict] = {}

    # repeat the last observation, with the j-step change's variance from the training episodes
    o = train.values.double()
    variance = torch.stack([(o[:, j:] - o[:, :-j]).square().mean((0, 1)) for j in range(1, k + 1)])  # [k, 3]
    last = test.values[:, c - 1].double().unsqueeze(1)  # [B, 1, 3]
    scores["repeat last"] = {"log_likelihood": _gaussian_log_prob(target, last, variance),
                             "squared_error": (target - last).square().sum(-1)}  # fmt: skip

    # the LGSSM with the actions as inputs, by EM; its exact forecast
    torch.manual_seed(0)
    lgssm = elbox.LinearGaussianSSM(6, 3, 1).double()
    start = time.perf_counter()
    elbox.em(lgssm, train.to(torch.float64), max_iter=2000, init="random", seed=0)
    print(f"  lgssm: EM in {time.perf_counter() - start:.0f} s", flush=True)
    head = Sequences(test.values[:, :c].double(), inputs=test.inputs[:, :c].double())
    forecast = lgssm.forecast(head, k, inputs=test.inputs[:, c : c + k].double())
    exact = torch.distributions.MultivariateNormal(forecast.mean, forecast.covariance).log_prob(target)
    scores["lgssm"] = {"log_likelihood": exact, "squared_error": (forecast.mean - target).square().sum(-1)}

    # the world model, with and without actions
    seconds = {}
    for name, use_actions in (("world", True), ("world, no actions", False)):
        model, seconds[name] = _train_world(train, use_actions, args.epochs, args.min_std, args.cache,
                                            schedule=args.schedule)  # fmt: skip
        torch.manual_seed(1)
        result = model.predictive_log_likelihood(test, context=c, horizon=k, num_samples=args.particles,
                                                 method="smc", num_runs=2)  # fmt: skip
        scores[name] = {"log_likelihood": result["log_likelihood"].double(), "mc_stderr": result["mc_stderr"],
                        "squared_error": result["squared_error"].double()}  # fmt: skip

    B = target.shape[0]
    table = {}
    for name, s in scores.items():
        ll, se = s["log_likelihood"], s["squared_error"]
        table[name] = {"log_likelihood": ll.mean(0).tolist(),
                       "log_likelihood_stderr": (ll.std(0) / math.sqrt(B)).tolist(),
                       "mse": se.mean(0).tolist(), "mse_stderr": (se.std(0) / math.sqrt(B)).tolist()}  # fmt: skip
        if "mc_stderr" in s:
            table[name]["log_likelihood_mc_stderr"] = s["mc_stderr"].mean(0).tolist()
    differences = {}
    for name in ("world, no actions", "lgssm", "repeat last"):
        d = scores["world"]["log_likelihood"] - scores[name]["log_likelihood"]
        differences[name] = {"mean": d.mean(0).tolist(), "stderr": (d.std(0) / math.sqrt(B)).tolist()}
    print(f"\nj-step-ahead log p(o_(c+j) | o_(1:c), a), nats per step, mean over {B} test episodes ± stderr over "
          f"episodes (c = {c})")  # fmt: skip
    names = list(scores)
    print("  j  " + "".join(f"{n:>22}" for n in names) + "".join(f"   world − {n:<18}" for n in differences))
    for j in range(k):
        row = "".join(f"{table[n]['log_likelihood'][j]:>14.2f} ± {table[n]['log_likelihood_stderr'][j]:<5.2f}"
                      for n in names)  # fmt: skip
        row += "".join(f"   {differences[n]['mean'][j]:>9.2f} ± {differences[n]['stderr'][j]:<14.2f}"
                       for n in differences)  # fmt: skip
        print(f"{j + 1:>3}  {row}")
    print("\nsquared error of the predicted mean (sum over coordinates), mean ± stderr over episodes")
    for j in (0, 4, 9, 19, k - 1):
        if j < k:
            print(f"{j + 1:>3}  " + "".join(f"{table[n]['mse'][j]:>14.3f} ± {table[n]['mse_stderr'][j]:<5.3f}"
                                            for n in names))  # fmt: skip
    above = all(differences[n]["mean"][j] - 2 * differences[n]["stderr"][j] > 0 for n in differences for j in range(k))
    print(f"\nworld above every baseline at every horizon by more than 2 paired standard errors: {above}")
    out = {"environment": environment(), "context": c, "horizon": k, "test_episodes": B, "epochs": args.epochs,
           "particles": args.particles, "min_std": args.min_std, "schedule": args.schedule, "train_seconds": seconds,
           "table": table, "world_minus": differences, "world_above_every_baseline": above}  # fmt: skip
    Path(args.out).write_text(json.dumps(out, indent=1))
    from elbox.plots import plot_prediction

    figure = Path(args.out).with_suffix(".png")
    plot_prediction(table, figure, title=f"Pendulum, {B} held-out episodes, context c = {c}: prediction against "
                                         "horizon (bands ± 2 SE over episodes)")  # fmt: skip
    print(f"written: {args.out}, {figure}")


if __name__ == "__main__":
    main()
