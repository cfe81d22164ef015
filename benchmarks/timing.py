"""Timing side by side, shared by the speed benchmark (speed.py) and the sweep (sweep.py).

A machine shared with other work changes speed by tens of percent within minutes, so
two things timed one after the other can differ by the machine rather than by
themselves. `interleaved` therefore times every contender once per round, reversing the
order every other round, and reports each one's median over rounds: a change of load
hits all contenders alike.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch
from torch import nn

from rnnlm.config import OptimConfig
from rnnlm.device import autocast_context
from rnnlm.model import lm_loss
from rnnlm.optim import build_optimizer


def interleaved(contenders: dict[str, Callable[[], None]], rounds: int, reps: int) -> dict[str, float]:
    """Median seconds per call of each contender, timed `reps` calls at a time, alternating."""
    for fn in contenders.values():  # warm-up: allocator, thread pool, lazy init
        fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            fn = contenders[name]
            start = time.perf_counter()
            for _ in range(reps):
                fn()
            times[name].append((time.perf_counter() - start) / reps)
    return {name: statistics.median(ts) for name, ts in times.items()}


def adamw(model: nn.Module) -> torch.optim.Optimizer:
    """The trainer's AdamW (rnnlm.optim.build_optimizer: fused where this torch has it), for every contender alike."""
    return build_optimizer(model, OptimConfig(lr=1e-4))


def lm_train_step_fn(model: nn.Module, idx: torch.Tensor, target: torch.Tensor, clip: float) -> Callable[[], None]:
    """One step of a language model as the trainer takes it: rnnlm.model.lm_loss, backward,
    clip_grad_norm_, AdamW. `model(idx)` returns (logits, state), as RNNLM does."""
    opt = adamw(model)

    def step():
        opt.zero_grad(set_to_none=True)
        logits, _ = model(idx)
        lm_loss(logits, target).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()

    return step


def at_precision(step: Callable[[], None], precision: str) -> Callable[[], None]:
    """`step` under the CPU autocast of `precision` (rnnlm.device.autocast_context), as the
    trainer would run it; fp32: `step` itself."""
    if precision == "fp32":
        return step
    autocast = autocast_context(torch.device("cpu"), precision)

    def run():
        with autocast():
            step()

    return run

