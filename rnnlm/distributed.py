"""Data-parallel training across processes with PyTorch's own engine (DistributedDataParallel).

`torchrun --nproc_per_node=N scripts/train.py ...` starts N copies of the trainer and
tells each its RANK, LOCAL_RANK and WORLD_SIZE (environment variables); `process_group`
joins them (gloo on CPU, nccl on CUDA). The B parallel streams of the corpus are shared
out, contiguously, so a run on N processes makes the same updates as one process:

    streams 0 .. B-1 of the global batch     rank 0: 0 .. B/N-1    rank 1: B/N .. 2B/N-1   ...

Each rank's loss is the mean over its own B/N streams; DDP averages the gradients over
ranks, and a mean of equal-sized means is the global mean, so the averaged gradient is
the single-process gradient. Everything that decides the course of the run (elapsed
time, a stop signal, validation losses) is agreed between ranks with a collective, so all
ranks stop, checkpoint and pick the best model together; only rank 0 writes files.

Gradient accumulation (`train.grad_accum_steps = k`) is the same idea inside one
process: the rank's streams are processed as k groups one after another, each with its
own carried state and loss / k, before one optimizer step.

Without torchrun (WORLD_SIZE unset or 1) every helper here is a no-op on one process.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from typing import Iterator

import torch
import torch.distributed as dist

from rnnlm.errors import RnnlmError


def launched_world_size() -> int:
    """Number of processes torchrun started (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def describe() -> str:
    return f"{world_size()} processes ({dist.get_backend()})" if is_distributed() else "1 process"


def is_main() -> bool:
    """Rank 0: the process that prints, logs and writes checkpoints."""
    return rank() == 0


# ---------------------------------------------------------------------------------------
# Setup and teardown


def choose_backend(requested: str, device: torch.device) -> str:
    """auto: nccl for CUDA tensors, gloo for CPU ones; an explicit choice must fit the device."""
    if requested == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if requested == "nccl" and device.type != "cuda":
        raise RnnlmError(f"train.backend=nccl needs CUDA devices (this run uses {device.type}); "
                         "use train.backend=gloo or auto")
    return requested


def local_device(device: torch.device, device_setting: str) -> torch.device:
    """The device of this process: under torchrun each process takes cuda:LOCAL_RANK."""
    if launched_world_size() <= 1 or device.type != "cuda":
        if launched_world_size() > 1 and device.type == "mps":
            raise RnnlmError("distributed training does not support mps; use train.device=cpu under torchrun")
        return device
    if ":" in device_setting:
        raise RnnlmError(f"train.device={device_setting} pins every process to one GPU; under torchrun "
                         "use train.device=cuda (each process takes cuda:LOCAL_RANK)")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if local_rank >= torch.cuda.device_count():
        raise RnnlmError(f"process with LOCAL_RANK {local_rank} has no GPU ({torch.cuda.device_count()} visible); "
                         "set torchrun --nproc_per_node to at most the number of GPUs")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


@contextlib.contextmanager
def process_group(backend: str, device: torch.device) -> Iterator[None]:
    """Join the processes torchrun started for the duration of the block; a no-op without torchrun."""
    if launched_world_size() <= 1 or is_distributed():  # one process, or the caller set it up
        yield
        return
    if not dist.is_available():
        raise RnnlmError("this PyTorch build has no torch.distributed; run in a single process")
    dist.init_process_group(backend=choose_backend(backend, device), timeout=datetime.timedelta(minutes=30),
                            device_id=device if device.type == "cuda" else None)
    try:
        yield
        # All ranks leave together: a gloo rank whose peer has already torn down its group
        # can abort at exit ("terminate called without an active exception").
        dist.barrier()
    finally:
        dist.destroy_process_group()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (checks/cleans the run directory, fills the token
    cache), the other ranks after it, reading what it wrote. If rank 0 fails it never
    reaches the barrier; torchrun then stops the others."""
    if is_distributed() and not is_main():
        dist.barrier()
    yield
    if is_distributed() and is_main():
        dist.barrier()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def wrap_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around `model` when distributed (it broadcasts rank 0's weights)."""
    if not is_distributed():
        return model
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)


# ---------------------------------------------------------------------------------------
# Sharing out the streams, and putting them back together


def check_batch_split(batch_size: int, grad_accum_steps: int) -> None:
    parts = world_size() * grad_accum_steps
    if batch_size % parts:
        raise RnnlmError(f"train.batch_size {batch_size} must be divisible by {world_size()} processes x "
                         f"train.grad_accum_steps {grad_accum_steps} = {parts}; change one of them")


def shard_rows(data: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous share of the rows (streams) of data (B, ...) -> (B/N, ...)."""
    share = data.size(0) // world_size()
    return data[rank() * share: (rank() + 1) * share]


def shard_state(state):
    """This rank's rows of a global carried state (list of per-layer tuples of (B, H))."""
    if state is None or not is_distributed():
        return state
    return [tuple(shard_rows(t) for t in layer) for layer in state]


def gather_state(state):
    """The global carried state from every rank's rows, in stream order (a collective)."""
    if state is None or not is_distributed():
        return state
    gathered = []
    for layer in state:
        parts = []
        for t in layer:
            pieces = [torch.empty_like(t) for _ in range(world_size())]
            dist.all_gather(pieces, t.contiguous())
            parts.append(torch.cat(pieces))
        gathered.append(tuple(parts))
    return gathered


def micro_batches(x: torch.Tensor, y: torch.Tensor, state, k: int):
    """Split a (B, T) batch and its carried state into k groups of B/k streams."""
    xs, ys = x.chunk(k), y.chunk(k)
    if state is None:
        return [(xs[i], ys[i], None) for i in range(k)]
    states = [[tuple(t.chunk(k)[i] for t in layer) for layer in state] for i in range(k)]
    return list(zip(xs, ys, states))


def cat_states(states: list):
    """The k groups' states back into one state over all the rank's streams."""
    return [tuple(torch.cat(ts) for ts in zip(*layers)) for layers in zip(*states)]


def grad_sync(model: torch.nn.Module, sync: bool):
    """DDP's no_sync for all but the last micro-batch: all-reduce the gradients once per step."""
    if sync or not isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return model.no_sync()


# ---------------------------------------------------------------------------------------
# Agreeing on numbers and decisions


def from_main(value: float) -> float:
    """Rank 0's value of a number (e.g. elapsed time) on every rank, so all decide alike."""
    if not is_distributed():
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=_collective_device())
    dist.broadcast(t, src=0)
    return float(t)


def mean(value: torch.Tensor) -> torch.Tensor:
    """Average of a scalar over ranks (the global mean loss when each rank's share is equal)."""
    if not is_distributed():
        return value
    t = value.detach().to(_collective_device(), torch.float64).reshape(1)
    dist.all_reduce(t)
    return (t / world_size()).reshape(()).to(value.device, value.dtype)


def sum_over_ranks(*values: float) -> list[float]:
    """Element-wise sums of a few numbers over ranks (e.g. an NLL sum and a token count)."""
    if not is_distributed():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t)
    return t.tolist()


def seed_per_rank(seed: int) -> None:
    """After the (identical) model init, give each rank its own dropout masks; rank 0
    keeps the single-process stream."""
    if rank() > 0:
        torch.manual_seed(seed + rank())


def own_rng_state(rng, rng_per_rank):
    """The generator state this rank saved (from a checkpoint's `rng` and `rng_per_rank`),
    when resumed with the same world size, else rank 0's (then the other ranks re-seed,
    see seed_per_rank)."""
    if rng_per_rank and len(rng_per_rank) == world_size():
        return rng_per_rank[rank()]
    return rng if is_main() else None


def gather_objects(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank (small picklable objects)."""
    if not is_distributed():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def _collective_device() -> torch.device:
    # nccl moves only CUDA tensors; gloo takes CPU ones.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
