"""Where a training run is: the counters, the carried hidden state and the random state.

`TrainState` is everything beyond the weights and the optimizer that a run needs to go
on exactly where it stopped. It writes and reads its own part of the checkpoint (see
checkpoint.py for the whole file's keys), so that part of the format is written once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from rnnlm import distributed as ddp


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    position: int = 0
    """Offset of the next batch in every stream."""
    tokens_seen: int = 0
    elapsed: float = 0.0
    """Seconds of training so far, over all resumes."""
    bad_steps_skipped: int = 0
    best_val_loss: float = math.inf
    evals_since_best: int = 0
    """Validations in a row without a new best validation loss (train.patience)."""
    hidden: Optional[list] = None
    """The state carried into the next batch (this process's streams), or None for zeros."""

    def epoch_float(self, stream_len: int) -> float:
        """Epochs done, with the fraction of the current one."""
        return self.epoch + self.position / max(1, stream_len - 1)

    def checkpoint_fields(self, device: torch.device) -> dict:
        """This state's part of a checkpoint. Under torchrun every process calls it (the
        hidden states and random states of all processes are gathered into one)."""
        global_hidden = ddp.gather_state(self.hidden)
        rngs = ddp.gather_objects(rng_state(device))
        return {
            "step": self.step, "epoch": self.epoch, "position": self.position,
            "tokens_seen": self.tokens_seen, "elapsed_seconds": self.elapsed,
            "bad_steps_skipped": self.bad_steps_skipped, "best_val_loss": self.best_val_loss,
            "evals_since_best": self.evals_since_best,
            "hidden": [list(layer) for layer in global_hidden] if global_hidden is not None else None,
            "rng": rngs[0], "rng_per_rank": rngs,
        }

    @classmethod
    def from_checkpoint(cls, checkpoint: dict, device: torch.device) -> "TrainState":
        """The state saved in `checkpoint`; also restores the random number generators,
        so call it after everything that draws random numbers while setting up."""
        hidden = checkpoint["hidden"]
        if hidden is not None:  # the global batch's state; distributed: this process's rows
            # In float32 whatever precision wrote it (bf16 holds no value float32 cannot),
            # so a run may resume at another train.precision.
            hidden = ddp.shard_state([tuple(t.to(device, torch.float32) for t in layer) for layer in hidden])
        rng = ddp.own_rng_state(checkpoint)
        if rng is not None:
            set_rng_state(rng, device)
        return cls(step=checkpoint["step"], epoch=checkpoint["epoch"], position=checkpoint["position"],
                   tokens_seen=checkpoint["tokens_seen"], elapsed=checkpoint["elapsed_seconds"],
                   bad_steps_skipped=checkpoint["bad_steps_skipped"], best_val_loss=checkpoint["best_val_loss"],
                   evals_since_best=checkpoint.get("evals_since_best", 0), hidden=hidden)


def rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def all_finite(*tensors: torch.Tensor) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def nonfinite_tensors(tree, prefix: str = "") -> list[str]:
    """Names of the floating-point tensors in nested dicts/lists that hold a NaN or inf."""
    if isinstance(tree, torch.Tensor):
        return [prefix] if tree.is_floating_point() and not bool(torch.isfinite(tree).all()) else []
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else []
    return [name for k, v in items for name in nonfinite_tensors(v, f"{prefix}.{k}" if prefix else str(k))]
