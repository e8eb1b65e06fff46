"""A world model of Pendulum-v1 from 64 × 64 frames: trained by the config, then scored on new
episodes by what it imagines from a few observed frames under the logged actions.

    python bench/world_pixels.py [--run /tmp/pixcache/run] [--episodes 50] [--context 10] [--horizon 30]

1. Trains ``configs/world_model_pendulum_pixels.toml`` into ``--run`` (``elbox.runs.train_run``,
   what ``elbox fit`` runs; timed), unless that directory holds the trained run already.
2. Collects ``--episodes`` new random-policy episodes (``elbox.envs.collect``, seed ``--seed``, not
   the training file's 0) of context + horizon steps, frames and states (the same episodes).
3. From each episode's first c = ``--context`` frames: the posterior's mean state after them
   (``model.filter(..., sample=False)``), rolled forward by the prior's means under the logged
   actions (``model.imagine(..., sample=False)``): the imagined frames of steps c + 1 .. c + k.
4. Per horizon j, per episode: the pixel MSE of the imagined frame against the true one (over the
   3 × 64 × 64 values in [0, 1]); the same for two baselines, the last context frame repeated and
   the mean training frame; and the pendulum's angle read from each frame (the centroid of the
   red rod's pixels about the pivot, weighted by red minus green: the rod is red on white, the
   pivot and the torque arrow grey or black), its error against the true frame's angle
   (wrapped to [0, π]). The reader's own error is measured on the true frames against the
   simulator's angle, its sign and offset fitted on the episodes' context frames (never scored).
5. Also the predictive log-likelihood per horizon by the particle filter
   (``model.predictive_log_likelihood``, ``--particles`` particles), nats per frame.

Every number: the mean over the episodes ± the standard error over episodes; differences are
paired per episode. Writes ``--out`` (JSON) and the strip ``--figure`` (true frames above the
imagined ones for the first 3 episodes, every step ahead), with ``elbox.plots.plot_frames``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment  # noqa: E402

import elbox  # noqa: E402
from elbox import Sequences  # noqa: E402
from elbox.plots import plot_frames  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "world_model_pendulum_pixels.toml"


def mean_se(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mean over episodes (axis 0) and its standard error."""
    return v.mean(0), v.std(0, ddof=1) / math.sqrt(len(v))


def rod_angle(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rod's angle about the pivot from frames ``[..., 3, 64, 64]`` in [0, 1]: the direction of
    the centroid of the red-minus-green weight (the rod is red, (204, 77, 77), on white; black and grey
    have none), in radians; and the weight's sum (0: no rod drawn)."""
    w = np.clip(frames[..., 0, :, :] - frames[..., 1, :, :] - 0.1, 0, None)  # [..., 64, 64]
    grid = np.arange(64) - 31.5
    total = w.sum((-2, -1))
    dx = (w * grid[None, :]).sum((-2, -1)) / np.maximum(total, 1e-8)
    dy = (w * grid[:, None]).sum((-2, -1)) / np.maximum(total, 1e-8)
    return np.arctan2(dx, -dy), total


def wrapped(a: np.ndarray) -> np.ndarray:
    """|a| wrapped to [0, π]."""
    return np.abs((a + np.pi) % (2 * np.pi) - np.pi)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--run", type=Path, default=Path("/tmp/pixcache/run"))
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--context", type=int, default=10)
    parser.add_argument("--horizon", type=int, default=30)
    parser.add_argument("--particles", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("/tmp/pixcache/world_pixels.json"))
    parser.add_argument("--figure", type=Path, default=ROOT / "docs" / "figures" / "world_pixels_strip.png")
    args = parser.parse_args()
    torch.manual_seed(0)
    result: dict = {"environment": environment(), "config": str(args.config), "run": str(args.run)}

    if not (args.run / "checkpoints").is_dir():
        start = time.perf_counter()
        elbox.runs.train_run(args.config, args.run)
        result["train_seconds"] = time.perf_counter() - start
        print(f"trained in {result['train_seconds']:.0f} s", flush=True)
    run = elbox.load_run(args.run)
    model = run.model.eval()
    train, _ = elbox.runs.load_data(run.config, "train")
    mean_frame = (train.values * train.mask[..., None, None, None]).sum((0, 1)) / train.mask.sum()  # [3, 64, 64]
    result["epochs"] = len(run.directory.read_metrics())

    c, k, E = args.context, args.horizon, args.episodes
    from elbox.envs import collect

    frames_data = collect("pendulum", E, steps=c + k, pixels=True, seed=args.seed)
    states = collect("pendulum", E, steps=c + k, pixels=False, seed=args.seed).x  # [E, T, 3]: cos, sin, θ̇
    x = Sequences(torch.from_numpy(frames_data.observations()), inputs=torch.from_numpy(frames_data.inputs),
                  rewards=torch.from_numpy(frames_data.rewards))  # fmt: skip
    true = x.values[:, c:].numpy()  # [E, k, 3, 64, 64]

    start = time.perf_counter()
    with torch.no_grad():
        head = Sequences(x.values[:, :c], inputs=x.inputs[:, :c], rewards=x.rewards[:, :c])
        state = model.filter(head, sample=False)
        imagined = model.imagine(state, x.inputs[:, c:], sample=False).observations.clamp(0, 1).numpy()
    result["imagine_seconds"] = time.perf_counter() - start

    def mse(pred: np.ndarray) -> np.ndarray:  # [E, k]
        return ((pred - true) ** 2).mean((-3, -2, -1))

    predictors = {"world model": imagined,
                  "repeat last context frame": np.broadcast_to(x.values[:, c - 1: c].numpy(), true.shape),
                  "mean training frame": np.broadcast_to(mean_frame.numpy(), true.shape)}  # fmt: skip
    errors = {name: mse(p) for name, p in predictors.items()}
    rows = {}
    for name, e in errors.items():
        m, se = mean_se(e)
        rows[name] = {"mse": m.tolist(), "mse_stderr": se.tolist()}
        if name != "world model":
            d_m, d_se = mean_se(errors["world model"] - e)
            rows[name]["world_minus_this"] = d_m.tolist()
            rows[name]["world_minus_this_stderr"] = d_se.tolist()

    # the angle: the reader calibrated (sign, offset) on the context frames against the simulator
    theta = np.arctan2(states[..., 1], states[..., 0])  # [E, T]
    read_all, weight_all = rod_angle(x.values.numpy())  # [E, T]
    ctx_read, ctx_theta = read_all[:, :c].ravel(), theta[:, :c].ravel()
    fits = {}
    for sign in (1.0, -1.0):
        offset = np.angle(np.exp(1j * (ctx_read - sign * ctx_theta)).mean())
        fits[sign] = (offset, wrapped(ctx_read - sign * ctx_theta - offset).mean())
    sign = min(fits, key=lambda s: fits[s][1])
    offset = fits[sign][0]
    truth = sign * theta[:, c:] + offset  # the simulator's angle in the reader's convention
    reader_error = wrapped(read_all[:, c:] - truth)  # [E, k]: the reader on the true frames
    angle_rows = {}
    for name, p in (("world model", imagined), ("repeat last context frame", predictors["repeat last context frame"])):
        read, weight = rod_angle(p)
        error = wrapped(read - read_all[:, c:])  # against the angle read from the true frame
        m, se = mean_se(error)
        angle_rows[name] = {"error": m.tolist(), "error_stderr": se.tolist(),
                            "rod_weight_fraction": float((weight / weight_all[:, c:]).mean())}  # fmt: skip
    m, se = mean_se(reader_error)
    angle_rows["reader on the true frames vs the simulator"] = {"error": m.tolist(), "error_stderr": se.tolist()}
    result["angle_calibration"] = {"sign": sign, "offset": float(offset)}

    start = time.perf_counter()
    with torch.no_grad():  # 10 episodes at a time: S · 10 · k decoded frames in memory at once
        torch.manual_seed(0)
        per_episode = torch.cat([model.predictive_log_likelihood(x[i: i + 10], context=c, horizon=k,
                                                                 num_samples=args.particles)["log_likelihood"]
                                 for i in range(0, E, 10)]).numpy()  # [E, k]  # fmt: skip
    result["predictive_seconds"] = time.perf_counter() - start
    m, se = mean_se(per_episode)
    result["predictive_log_likelihood"] = {"mean": m.tolist(), "stderr": se.tolist(), "num_samples": args.particles,
                                           "method": "smc, the posterior proposing; nats per frame"}  # fmt: skip
    result.update({"episodes": E, "seed": args.seed, "context": c, "horizon": k, "pixel_mse": rows,
                   "angle_error_radians": angle_rows})  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))

    strip = {}
    for e in range(3):
        strip[f"true {e + 1}"] = torch.from_numpy(true[e])
        strip[f"imagined {e + 1}"] = torch.from_numpy(imagined[e])
    plot_frames(strip, args.figure, first_step=c + 1, scale=0.55,
                            title=f"New episodes (seed {args.seed}): true frames and the frames imagined from "
                                  f"the first {c} under the logged actions (columns: the step)")  # fmt: skip

    print(result["environment"])
    print(f"{E} episodes, context {c}; mean ± standard error over episodes")
    print("j | MSE world | repeat last | mean frame | world − repeat | world − mean | angle world | angle repeat "
          "| reader | log p (nats/frame)")
    for j in sorted({1, 2, 3, 5, 10, 15, 20, 25, 30} & set(range(1, k + 1))):
        i = j - 1
        w, r, f = rows["world model"], rows["repeat last context frame"], rows["mean training frame"]
        aw, ar = angle_rows["world model"], angle_rows["repeat last context frame"]
        rd = angle_rows["reader on the true frames vs the simulator"]
        lp = result["predictive_log_likelihood"]
        print(f"{j} | {w['mse'][i]:.5f} ± {w['mse_stderr'][i]:.5f} | {r['mse'][i]:.5f} ± {r['mse_stderr'][i]:.5f} | "
              f"{f['mse'][i]:.5f} ± {f['mse_stderr'][i]:.5f} | {r['world_minus_this'][i]:+.5f} ± "
              f"{r['world_minus_this_stderr'][i]:.5f} | {f['world_minus_this'][i]:+.5f} ± "
              f"{f['world_minus_this_stderr'][i]:.5f} | {aw['error'][i]:.3f} ± {aw['error_stderr'][i]:.3f} | "
              f"{ar['error'][i]:.3f} ± {ar['error_stderr'][i]:.3f} | {rd['error'][i]:.3f} ± {rd['error_stderr'][i]:.3f}"
              f" | {lp['mean'][i]:.0f} ± {lp['stderr'][i]:.0f}")  # fmt: skip
    print(f"rod weight imagined / true: {angle_rows['world model']['rod_weight_fraction']:.2f}; "
          f"written {args.out}, {args.figure}")


if __name__ == "__main__":
    main()
