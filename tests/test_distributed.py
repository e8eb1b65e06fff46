"""Data parallelism on torch.distributed (gloo, two processes on the CPU): the result of W
processes is the result of one, resume and worker restarts are exact, and bad input ends every
rank with its message, none waiting for another."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from elbox.data import BatchIterator
from elbox.distributed import map_batches, seed_for, shard
from elbox.io import RunDirectory, load_checkpoint
from tests import ddp_worker
from tests.test_runs import _wait_for

ROOT = Path(__file__).resolve().parents[1]


def _torchrun(*args, nproc: int = 2, **kwargs) -> subprocess.Popen:
    """``torchrun --standalone --nproc_per_node=nproc ARGS`` in its own session (a free port, and
    signals reach the launcher alone, which forwards them to its workers)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               *map(str, args)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=ROOT, start_new_session=True, **kwargs)  # fmt: skip


def _finish(process: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise AssertionError(f"torchrun did not finish in {timeout} s: {process.communicate()[0]}") from None
    return process.returncode, output


def _model_tensors(path: Path) -> dict:
    tensors, _ = load_checkpoint(path)
    return {k: v for k, v in tensors.items() if k.startswith(("model.", "guide."))}


# Without a process group.


def test_shards_cover_every_point_once_in_order_sizes_differing_by_one():
    for n in range(0, 23):
        for size in (1, 2, 3, 5):
            shares = [shard(n, r, size) for r in range(size)]
            assert [i for s in shares for i in range(n)[s]] == list(range(n))
            lengths = [s.stop - s.start for s in shares]
            assert max(lengths) - min(lengths) <= 1 and lengths == sorted(lengths, reverse=True)


def test_seeds_of_neighbouring_keys_differ_and_repeat():
    seeds = {seed_for(0, k) for k in range(1000)} | {seed_for(1, k) for k in range(1000)}
    assert len(seeds) == 2000 and all(0 <= s < 2**63 for s in seeds)
    assert seed_for(7, 3) == seed_for(7, 3) and seed_for(7, 3, 1) != seed_for(7, 3)


def test_a_rank_share_of_a_binarized_batch_is_the_slice_of_one_process_batch():
    x = torch.rand(23, 5)
    whole = list(BatchIterator(x, 8, binarization="dynamic", generator=torch.Generator().manual_seed(3)).batches(
        torch.randperm(23, generator=torch.Generator().manual_seed(1))))  # fmt: skip
    for rank in range(3):
        iterator = BatchIterator(x, 8, binarization="dynamic", generator=torch.Generator().manual_seed(3),
                                 shard=(rank, 3))  # fmt: skip
        shares = list(iterator.batches(torch.randperm(23, generator=torch.Generator().manual_seed(1))))
        for batch, share in zip(whole, shares, strict=True):
            part = shard(len(batch), rank, 3)
            part = part if part.stop > part.start else slice(0, 1)  # the last batch of 7 has a point for each
            assert torch.equal(share.data, batch.data[part]) and torch.equal(share.index, batch.index[part])


def test_map_batches_seeds_each_batch_by_its_number_alone():
    def draw(begin, end):
        return torch.rand(end - begin)

    a = torch.cat(map_batches(10, 3, draw, base=5))
    b = torch.cat([map_batches(10, 3, draw, base=5)[k] for k in range(4)])
    assert torch.equal(a, b) and not torch.equal(a, torch.cat(map_batches(10, 3, draw, base=6)))
    state = torch.get_rng_state()
    map_batches(10, 3, draw, base=5)
    assert torch.equal(state, torch.get_rng_state())  # torch's own stream is left as it was


# Two processes against one.


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("ddp") / "results.json"
    rc, output = _finish(_torchrun("tests/ddp_worker.py", "results", path))
    assert rc == 0, output
    return json.loads(path.read_text())


def test_two_processes_give_one_process_parameters_after_k_steps(two_processes):
    """The pattern of PyTorch's _test_DDP_niter: the same global batches and seed, deterministic
    objectives (a point-mass q on dynamically binarized data with an uneven last batch; a local
    guide with a last batch of one point, fewer than the processes)."""
    for name, case in ddp_worker.CASES.items():
        module, history = case()
        one = {k: v.double() for k, v in module.state_dict().items()}
        two = {k: torch.tensor(v, dtype=torch.float64) for k, v in two_processes[name]["state"].items()}
        assert one.keys() == two.keys()
        assert max(float((one[k] - two[k]).abs().max()) for k in one) < 1e-6, name
        assert two_processes[name]["bound"] == pytest.approx(history.lower_bound, rel=1e-9, abs=1e-9)


def test_the_parity_cases_are_not_decided_by_rounding():
    """A case whose fitted parameters move far more than a tiny change of its start cannot show that
    two processes equal one (they round differently): the mixture started at the constructor's
    equal components was one, a change of 1e-15 moving its parameters by 0.11."""
    module, _ = ddp_worker.local_mixture()
    moved, _ = ddp_worker.local_mixture(perturbation=1e-12)
    start, end = module.state_dict(), moved.state_dict()
    assert max(float((start[k] - end[k]).abs().max()) for k in start) < 1e-9


def _assert_same(a, b, where: str = "report") -> None:
    """Equal structure and strings; numbers equal to 1e-9 relative (NaN and None alike)."""
    if isinstance(a, dict):
        assert a.keys() - {"seconds"} == b.keys() - {"seconds"}, where
        for k in a.keys() - {"seconds"}:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (u, v) in enumerate(zip(a, b, strict=True)):
            _assert_same(u, v, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert b == pytest.approx(a, rel=1e-9, abs=1e-12, nan_ok=True), where
    else:
        assert a == b, where


def test_the_evidence_report_on_two_ranks_is_the_one_process_report(two_processes):
    one = ddp_worker.evidence()
    two = two_processes["evidence"]
    assert two["log_evidence"] == pytest.approx(one["log_evidence"], rel=1e-10)
    _assert_same(one["report"], two["report"])
    assert one["report"]["refined_points"] == 9 and one["report"]["mutual_information"] is not None


# The command line under torchrun.

VAE = """
[data]
name = "digits"
test = 60
[model]
latent_dim = 2
hidden = [32]
[train]
epochs = {epochs}
batch_size = {batch_size}
lr = 1e-3
seed = 3
[evaluate]
num_samples = 30
refine_points = 10
refine_steps = 5
"""


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[Path, Path]:
    """A 2-process run of 3 epochs of 450 steps (global batches of 4)."""
    root = tmp_path_factory.mktemp("cli")
    config = root / "vae.toml"
    config.write_text(VAE.format(epochs=3, batch_size=4))
    out = root / "whole"
    rc, output = _finish(_torchrun("-m", "elbox", "fit", config, "--out", out, "--no-progress"))
    assert rc == 0, output
    assert [r["epoch"] for r in RunDirectory(out).read_metrics()] == [1, 2, 3]
    return config, out


def test_a_two_process_run_stopped_mid_epoch_resumes_to_the_uninterrupted_parameters(uninterrupted, tmp_path):
    config, whole = uninterrupted
    out = tmp_path / "stopped"
    process = _torchrun("-m", "elbox", "fit", config, "--out", out, "--no-progress")
    run = RunDirectory(out)
    _wait_for(lambda: run.metrics.is_file() and len(run.read_metrics()) >= 1, timeout=180.0, process=process)
    time.sleep(0.5)  # inside the second epoch
    process.send_signal(signal.SIGTERM)  # to torchrun, which passes it to both workers
    rc, output = _finish(process)
    assert rc != 0 and "interrupted" in output, output
    _, meta = load_checkpoint(run.checkpoint())
    assert meta["partial"] is not None and meta["world_size"] == 2, meta  # mid-epoch, both ranks' RNG kept
    rc, output = _finish(_torchrun("-m", "elbox", "fit", config, "--out", out, "--resume", "--no-progress"))
    assert rc == 0, output
    expected, found = _model_tensors(RunDirectory(whole).checkpoint()), _model_tensors(run.checkpoint())
    assert all(torch.equal(expected[k], found[k]) for k in expected)
    assert [r["bound"] for r in run.read_metrics()] == [r["bound"] for r in RunDirectory(whole).read_metrics()]


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the worker through /proc")
def test_a_worker_killed_by_sigkill_is_restarted_by_torchrun_and_the_run_finishes_as_if_never_killed(
    uninterrupted, tmp_path
):
    config, whole = uninterrupted
    out = tmp_path / "killed"
    process = _torchrun("--max-restarts=1", "-m", "elbox", "fit", config, "--out", out, "--no-progress")
    run = RunDirectory(out)
    _wait_for(lambda: run.metrics.is_file() and len(run.read_metrics()) >= 1, timeout=180.0, process=process)
    time.sleep(0.5)
    workers = _children(process.pid)
    assert len(workers) == 2, workers
    os.kill(max(workers), signal.SIGKILL)
    rc, output = _finish(process)
    assert rc == 0, output
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2, 3]
    expected, found = _model_tensors(RunDirectory(whole).checkpoint()), _model_tensors(run.checkpoint())
    assert all(torch.equal(expected[k], found[k]) for k in expected)


def test_evaluate_under_torchrun_writes_the_one_process_evaluation(uninterrupted):
    _, whole = uninterrupted
    rc, output = _finish(_torchrun("-m", "elbox", "evaluate", whole))
    assert rc == 0, output
    assert output.count("Evidence report") == 1  # the table, from rank 0 alone
    two = json.loads((whole / "evaluation.json").read_text())["report"]
    # with the thread count torchrun gives each worker (OMP_NUM_THREADS=1): a float32 product may sum in
    # another order on another number of threads, and the promise is the same numbers for the same arithmetic
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one_process = subprocess.run([sys.executable, "-m", "elbox", "evaluate", str(whole)], capture_output=True,
                                 text=True, cwd=ROOT, timeout=300, env=env)  # fmt: skip
    assert one_process.returncode == 0, one_process.stdout + one_process.stderr
    one = json.loads((whole / "evaluation.json").read_text())["report"]
    _assert_same(one, two)


# Bad input: every rank ends with the message, none waits for another.


def test_a_global_batch_the_processes_cannot_share_is_refused_on_every_rank(tmp_path):
    config = tmp_path / "vae.toml"
    config.write_text(VAE.format(epochs=1, batch_size=75))
    rc, output = _finish(_torchrun("-m", "elbox", "fit", config, "--out", tmp_path / "run", "--no-progress"),
                         timeout=120)  # fmt: skip
    assert rc != 0
    assert output.count("must be divisible by their number; received 75") == 2, output
    assert not RunDirectory(tmp_path / "run").has_checkpoint()


def test_ranks_with_different_options_all_raise(tmp_path):
    path = tmp_path / "error"
    rc, output = _finish(_torchrun("tests/ddp_worker.py", "mismatched", path), timeout=120)
    assert rc != 0
    messages = [Path(f"{path}.{r}").read_text() for r in (0, 1)]
    assert all("the ranks disagree on fit's options and data" in m and "'lr': 0.02" in m for m in messages), messages


def test_a_nan_on_one_rank_stops_every_rank_with_the_message(tmp_path):
    path = tmp_path / "error"
    rc, output = _finish(_torchrun("tests/ddp_worker.py", "poisoned", path), timeout=120)
    assert rc != 0
    messages = [Path(f"{path}.{r}").read_text() for r in (0, 1)]
    assert messages[0] == messages[1] and "became non-finite in epoch 0" in messages[0], messages


def test_em_under_torchrun_is_refused_with_the_way_out(tmp_path):
    rc, output = _finish(_torchrun("-m", "elbox", "fit", ROOT / "configs" / "gmm_digits.toml", "--out",
                                   tmp_path / "run", "--no-progress"), timeout=120)  # fmt: skip
    assert rc != 0 and output.count('method = "em" runs in one process') == 2, output


def test_a_world_model_fits_under_torchrun_with_two_processes_and_its_checkpoint_loads_and_evaluates(tmp_path):
    """`elbox fit configs/world_model_pendulum.toml --quick` on two gloo processes (as the DMM's in
    test_dmm_extra.py): every epoch recorded once, the checkpoint written by rank 0 with world size
    2, loaded back as the world model (its posterior, part of the model, the guide), which
    evaluates: finite ELBO, SMC evidence and predictive log-likelihood on held-out episodes."""
    import elbox
    from elbox.runs.data import load_data

    out = tmp_path / "run"
    rc, output = _finish(_torchrun("-m", "elbox", "fit", ROOT / "configs" / "world_model_pendulum.toml", "--quick",
                                   "--out", out, "--no-progress"), timeout=240)  # fmt: skip
    assert rc == 0, output
    assert output.count("Run directory:") == 1  # rank 0 alone prints
    metrics = RunDirectory(out).read_metrics()
    assert [m["epoch"] for m in metrics] == list(range(1, 6))
    _, meta = load_checkpoint(RunDirectory(out).checkpoint())
    assert meta["world_size"] == 2
    run = elbox.load_run(out)
    assert type(run.model).__name__ == "WorldModel" and run.guide is run.model.guide()
    test, _ = load_data(run.config, "test")
    x = test[:4]
    torch.manual_seed(0)
    assert torch.isfinite(elbox.elbo(run.model, run.guide, x).value).all()
    estimate = elbox.log_evidence(run.model, x, guide=run.guide, method="smc", num_samples=32, num_runs=2)
    assert torch.isfinite(estimate.value).all()
    result = run.model.predictive_log_likelihood(x, context=10, horizon=3, num_samples=16)
    assert torch.isfinite(result["log_likelihood"]).all()
