r"""Data parallelism on torch.distributed: what :func:`elbox.fit`, :func:`elbox.evidence_report`
and :func:`elbox.log_evidence` do when a process group is initialized (``torchrun``).

Nothing here is home-made parallelism: gradients are averaged by
:class:`~torch.nn.parallel.DistributedDataParallel`, and the rest is a handful of collectives
(``all_reduce``, ``all_gather_object``, ``broadcast_object_list``) on whatever backend the group
was started with — ``gloo`` on the CPU, ``nccl`` on GPUs (:func:`init_from_environment` picks).

The promise is that a run on W processes is the run of one process, up to rounding:

* every rank draws the same global order of the training points from a generator seeded by
  (seed, epoch) — the order a single process draws — and takes its contiguous share of each
  global batch; dynamic binarization is drawn for the whole global batch on every rank, then
  sliced, so it is the single process's draw too;
* each rank's loss is its points' summed surrogate times W / (global batch), so DDP's average of
  the ranks' gradients is the gradient of the global batch mean, whatever the split (the last
  batch may split unevenly; a rank with no point of it contributes zero);
* the bound, its parts, the NaN flag and a received signal are summed across ranks at every
  step, so every rank records the same history and takes the same decisions;
* only rank 0 writes files; a checkpoint holds every rank's RNG state.

What differs is the particles: each rank draws its own from a stream seeded by (seed, rank), so
a stochastic objective's run on W processes equals one process's in distribution, and a
deterministic one's (an enumerated ELBO, a point-mass q, maximum likelihood) to rounding.

Evidence estimates shard batches of points across ranks; each batch's particles come from a
seed of (base, batch), so the report on W ranks equals the report on one, to rounding.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import sys

import torch
import torch.distributed as dist

__all__ = [
    "DistributedError",
    "agree",
    "all_sum",
    "all_sum_started",
    "base_seed",
    "broadcast",
    "from_rank0",
    "gather",
    "init_from_environment",
    "is_distributed",
    "map_batches",
    "rank",
    "rank0_context",
    "rng_devices",
    "seed_for",
    "seeded",
    "shard",
    "world_size",
]

_MIX = 0x9E3779B97F4A7C15  # the golden-ratio constant of splitmix64: decorrelates nearby seeds


class DistributedError(RuntimeError):
    """An error raised on every rank because one rank (named in the message) failed, so that no
    rank waits forever in a collective for another that stopped."""


def is_distributed() -> bool:
    """Whether a process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """The number of processes (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def init_from_environment() -> bool:
    """Starts the default process group from torchrun's environment (``WORLD_SIZE``, ``RANK``,
    ``MASTER_ADDR``…) when there is one and no group has been started: ``nccl`` where CUDA is
    available (each process on the GPU of its ``LOCAL_RANK``), else ``gloo``. Returns whether a
    group of more than one process is running."""
    if dist.is_available() and not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        rank_, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        dist.init_process_group(backend, store=_store(rank_, size), rank=rank_, world_size=size)
        atexit.register(_shut_down)
    return is_distributed()


def _store(rank_: int, size: int):
    """torchrun's store (its agent's, or rank 0's), under a prefix of the restart count: workers
    restarted by ``--max-restarts`` must not read the addresses their dead predecessors left in
    the agent's store (seen here: the restarted group's gloo setup then waits forever)."""
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), size,
                          is_master=not agent and rank_ == 0, multi_tenant=not agent)  # fmt: skip
    return dist.PrefixStore(f"elbox/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def _shut_down() -> None:
    """At exit: every rank waits for the others, then the group is destroyed (a rank that leaves
    while another still holds its connections can abort in gloo's teardown)."""
    if dist.is_initialized():
        with contextlib.suppress(RuntimeError):  # a peer that has failed already
            dist.barrier()
        dist.destroy_process_group()


def _device():
    """Where a collective's tensors must live: the GPU under nccl, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_sum(values: torch.Tensor) -> torch.Tensor:
    """``values`` summed over ranks (float64, on ``values``' device); the values themselves
    without a process group."""
    if not is_distributed():
        return values
    total, wait = all_sum_started(values)
    wait()
    return total.to(values.device)


def all_sum_started(values: torch.Tensor):
    """Starts summing ``values`` over ranks (float64) and returns ``(total, wait)``: ``total``
    holds the sum once ``wait()`` has returned, so that the caller can work meanwhile."""
    total = values.detach().to(device=_device() if is_distributed() else values.device, dtype=torch.float64).clone()
    if not is_distributed():
        return total, lambda: None
    work = dist.all_reduce(total, async_op=True)
    return total, work.wait


def broadcast(value):
    """Rank 0's ``value`` (any picklable object) on every rank."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value) -> list:
    """Every rank's ``value``, in rank order, on every rank."""
    if not is_distributed():
        return [value]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def agree(value, what: str) -> None:
    """Raises on every rank, naming the ranks that differ, unless ``value`` (a string, or an
    object that prints the same wherever it is equal) is the same on every rank."""
    if not is_distributed():
        return
    digest = hashlib.sha256(repr(value).encode()).hexdigest()
    digests = gather((digest, repr(value)[:200]))
    if len({d for d, _ in digests}) > 1:
        differing = ", ".join(f"rank {r}: {shown}" for r, (d, shown) in enumerate(digests) if d != digests[0][0])
        raise DistributedError(
            f"the ranks disagree on {what}: rank 0 has {digests[0][1]}, and {differing}; every rank must be "
            "started with the same command, config and data"
        )


def from_rank0(function, *args, **kwargs):
    """``function(*args, **kwargs)`` run on rank 0 alone, its result broadcast to every rank; an
    exception raised there is raised on every rank (the same type where it can be rebuilt from
    its message, else :class:`DistributedError`). Without a process group, the call itself."""
    if not is_distributed():
        return function(*args, **kwargs)
    result = error = None
    if dist.get_rank() == 0:
        try:
            result = function(*args, **kwargs)
        except Exception as caught:  # noqa: BLE001 - re-raised on every rank below
            error = caught
    result, error = broadcast((result, _portable(error)))
    if error is not None:
        raise error
    return result


@contextlib.contextmanager
def rank0_context(factory):
    """Enters ``factory()`` (a lock, say) on rank 0 alone; an error in entering it is raised on
    every rank. Without a process group, ``factory()`` itself."""
    if not is_distributed():
        with factory():
            yield
        return
    if dist.get_rank() != 0:
        from_rank0(None)
        yield
        return
    context = factory()
    from_rank0(context.__enter__)
    try:
        yield
    except BaseException:
        if not context.__exit__(*sys.exc_info()):
            raise
    else:
        context.__exit__(None, None, None)


def _portable(error: BaseException | None, source: int = 0):
    """An exception that pickles: the original where it does, else a DistributedError with its
    message, naming the rank it came from."""
    if error is None:
        return None
    import pickle

    try:
        copy = pickle.loads(pickle.dumps(error))
        if type(copy) is type(error) and str(copy) == str(error):
            return error
    except Exception:  # noqa: BLE001 - unpicklable exceptions are wrapped
        pass
    return DistributedError(f"rank {source}: {type(error).__name__}: {error}")


def shard(n: int, rank_: int | None = None, size: int | None = None) -> slice:
    """This rank's contiguous share of ``n`` items: sizes differ by at most one, the first
    ``n mod W`` ranks taking the larger (``torch.tensor_split``'s rule)."""
    rank_ = rank() if rank_ is None else rank_
    size = world_size() if size is None else size
    small, extra = divmod(n, size)
    begin = rank_ * small + min(rank_, extra)
    return slice(begin, begin + small + (1 if rank_ < extra else 0))


def seed_for(base: int, *keys: int) -> int:
    """A 63-bit seed from a base seed and keys (an epoch, a batch, a rank): splitmix64's mixing,
    so that seeds of neighbouring keys give unrelated streams."""
    z = base & 0xFFFFFFFFFFFFFFFF
    for key in keys:
        z = (z + _MIX * (key + 1)) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        z ^= z >> 31
    return z & 0x7FFFFFFFFFFFFFFF


def base_seed() -> int:
    """One draw from torch's global RNG (rank 0's, broadcast), the base of the per-batch seeds of
    an evidence estimate: seeding torch before the call makes the estimate reproducible."""
    return broadcast(int(torch.randint(0, 2**62, (1,))))


@contextlib.contextmanager
def seeded(seed: int):
    """Within the context torch's RNG (CPU, and the current GPU where CUDA is in use) is seeded
    with ``seed``; the states from before are put back after."""
    with torch.random.fork_rng(devices=rng_devices()):
        torch.manual_seed(seed)
        yield


def rng_devices() -> list[int]:
    """The GPUs whose RNG is forked besides the CPU's: the current one, where CUDA is in use."""
    return [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []


def map_batches(n: int, step: int, function, *, base: int, progress=None) -> list:
    """``function(begin, end)`` for each batch ``[begin, end)`` of ``n`` points ``step`` at a
    time, under the seed of (``base``, batch number), the batches dealt round-robin to the ranks;
    returns every batch's result, in batch order, on every rank. The results (and so a report
    built from them) are the same on any number of ranks.

    ``progress(done, total)`` is called on rank 0 after each of its batches (counting the batches
    the other ranks do alongside)."""
    begins = list(range(0, n, step))
    W, r = world_size(), rank()
    mine, error = {}, None
    try:
        for k in range(r, len(begins), W):
            begin = begins[k]
            with seeded(seed_for(base, k)):
                mine[k] = function(begin, min(begin + step, n))
            if progress is not None and r == 0:
                progress(min(n, (k + W) * step), n)
    except Exception as caught:  # noqa: BLE001 - raised on every rank below, after the gather
        if W == 1:
            raise
        error = caught
    if W == 1:
        return [mine[k] for k in range(len(begins))]
    merged: dict = {}
    parts = gather((mine, _portable(error, r)))
    if error is not None:
        raise error
    for part, failed in parts:
        if failed is not None:
            raise failed
        merged.update(part)
    return [merged[k] for k in range(len(begins))]
