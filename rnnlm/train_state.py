"""Where a training run is: the counters, the carried hidden state and the random state.

`TrainState` is everything beyond the weights and the optimizer that a run needs to go
on exactly where it stopped, and every counter of the run lives here. It writes and
reads its own part of the checkpoint, under the keys of checkpoint.SCHEMA.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from rnnlm import distributed as ddp
from rnnlm.checkpoint import (BAD_STEPS_SKIPPED, BEST_VAL_LOSS, ELAPSED_SECONDS, EPOCH, EVALS_SINCE_BEST, HIDDEN,
                              POSITION, RNG, RNG_PER_RANK, STEP, TOKENS_SEEN, field)


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
    bad_in_a_row: int = 0
    """Steps in a row with a non-finite loss or gradient (train.max_bad_steps); not saved:
    a resumed run starts a new count."""
    hidden: Optional[list] = None
    """The state carried into the next batch (this process's streams), or None for zeros."""

    def epoch_float(self, stream_len: int) -> float:
        """Epochs done, with the fraction of the current one."""
        return self.epoch + self.position / max(1, stream_len - 1)

    def checkpoint_fields(self, device: torch.device) -> dict:
        """This state's part of a checkpoint. Under torchrun every process calls it (the
        hidden states and random states of all processes are gathered into one)."""
        global_hidden = ddp.gather_state(self.hidden)  # the collectives in the same order on every rank
        rngs = ddp.gather_objects(rng_state(device))
        return {
            STEP: self.step, EPOCH: self.epoch, POSITION: self.position, TOKENS_SEEN: self.tokens_seen,
            ELAPSED_SECONDS: self.elapsed, BAD_STEPS_SKIPPED: self.bad_steps_skipped,
            BEST_VAL_LOSS: self.best_val_loss, EVALS_SINCE_BEST: self.evals_since_best,
            HIDDEN: global_hidden, RNG: rngs[0], RNG_PER_RANK: rngs,
        }

    @classmethod
    def from_checkpoint(cls, checkpoint: dict, device: torch.device) -> "TrainState":
        """The state saved in `checkpoint`; also restores the random number generators,
        so call it after everything that draws random numbers while setting up."""
        hidden = checkpoint[HIDDEN]
        if hidden is not None:  # the global batch's state; distributed: this process's rows
            # In float32 whatever precision wrote it (bf16 holds no value float32 cannot),
            # so a run may resume at another train.precision.
            hidden = ddp.shard_state([tuple(t.to(device, torch.float32) for t in layer) for layer in hidden])
        rng = ddp.own_rng_state(checkpoint[RNG], field(checkpoint, RNG_PER_RANK))
        if rng is not None:
            set_rng_state(rng, device)
        return cls(step=checkpoint[STEP], epoch=checkpoint[EPOCH], position=checkpoint[POSITION],
                   tokens_seen=checkpoint[TOKENS_SEEN], elapsed=checkpoint[ELAPSED_SECONDS],
                   bad_steps_skipped=checkpoint[BAD_STEPS_SKIPPED], best_val_loss=checkpoint[BEST_VAL_LOSS],
                   evals_since_best=field(checkpoint, EVALS_SINCE_BEST), hidden=hidden)


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
