"""Checkpoints: one self-contained file, written atomically, loaded safely.

A checkpoint is a plain dict of tensors and plain Python types, saved with ``torch.save``
and loaded with ``torch.load(weights_only=True)``, so a file that carries a pickle which
would run code is refused without running it. Its keys are the constants below, each
described in `SCHEMA`; every module reads and writes a checkpoint through them, and
`make_checkpoint` refuses a key that is not in `SCHEMA`. `SavedModel` is the part that
rebuilds the trained model (weights, config, tokenizer, vocabulary size): what inference
loads, and what a run started from another run's model takes.

A key added to the format after its first files has a value in `ABSENT`, what a file
without it means; `field` reads a key through it, so older checkpoints load as they are.
Tensors are moved to the CPU before saving, so a GPU-trained model loads anywhere.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rnnlm.errors import CannotWrite, RnnlmError
from rnnlm.files import atomic_write, kept_note, regular_file_problem

CHECKPOINT_FORMAT = 1

# The keys of a checkpoint file.
FORMAT_VERSION = "format_version"
MODEL = "model"
TRAINED_MODEL = "trained_model"
EMA_UPDATES = "ema_updates"
OPTIMIZER = "optimizer"
SCALER = "scaler"
CONFIG = "config"
TOKENIZER = "tokenizer"
VOCAB_SIZE = "vocab_size"
STEP = "step"
EPOCH = "epoch"
POSITION = "position"
TOKENS_SEEN = "tokens_seen"
ELAPSED_SECONDS = "elapsed_seconds"
BAD_STEPS_SKIPPED = "bad_steps_skipped"
BEST_VAL_LOSS = "best_val_loss"
EVALS_SINCE_BEST = "evals_since_best"
HIDDEN = "hidden"
RNG = "rng"
RNG_PER_RANK = "rng_per_rank"
TEXT_HASH = "text_hash"

SCHEMA = {
    FORMAT_VERSION: "int, CHECKPOINT_FORMAT",
    MODEL: "state_dict of the unwrapped model (no `module.` / `_orig_mod.` prefixes); the moving "
           "average of the weights with optim.ema_decay",
    TRAINED_MODEL: "with optim.ema_decay only: the raw weights, which training resumes from",
    EMA_UPDATES: "with optim.ema_decay only: the number of updates of the average",
    OPTIMIZER: "optimizer state_dict",
    SCALER: "fp16 gradient-scaler state_dict, or None",
    CONFIG: "the run's config as plain types, every `auto` resolved",
    TOKENIZER: "the tokenizer as its JSON string",
    VOCAB_SIZE: "int, the model's vocabulary size",
    STEP: "optimizer steps taken",
    EPOCH: "passes over the train split completed",
    POSITION: "offset of the next batch in every stream",
    TOKENS_SEEN: "training tokens seen (the global batch)",
    ELAPSED_SECONDS: "seconds of training so far, over all resumes",
    BAD_STEPS_SKIPPED: "steps skipped for a non-finite loss or gradient",
    BEST_VAL_LOSS: "float, the best validation loss so far (inf before the first evaluation)",
    EVALS_SINCE_BEST: "validations in a row without a new best (train.patience)",
    HIDDEN: "the carried hidden state of the whole (global) batch: a list (layers) of tuples of "
            "tensors, or None",
    RNG: "torch (and CUDA) generator states (rank 0's under torchrun)",
    RNG_PER_RANK: "list of every rank's generator states (one entry in a single process)",
    TEXT_HASH: "sha256 of the cleaned training text, so resume can refuse other data",
}
REQUIRED_KEYS = (FORMAT_VERSION, MODEL, CONFIG, TOKENIZER, VOCAB_SIZE)
# What a checkpoint without one of these keys means (keys added after the format's first files).
ABSENT = {TRAINED_MODEL: None, EMA_UPDATES: 0, SCALER: None, EVALS_SINCE_BEST: 0, RNG_PER_RANK: None,
          TEXT_HASH: None, STEP: 0}


def field(checkpoint: dict, key: str) -> Any:
    """checkpoint[key], or what a file without that key means (`ABSENT`)."""
    return checkpoint[key] if key in checkpoint else ABSENT[key]


@dataclass(frozen=True)
class SavedModel:
    """The part of a checkpoint that rebuilds the trained model."""

    weights: dict
    """state_dict of the model (`MODEL`)."""
    config: dict
    """The run's config as plain types (`CONFIG`); its `model` section builds the network."""
    tokenizer: str
    """The tokenizer's JSON string (`TOKENIZER`)."""
    vocab_size: int
    """The model's vocabulary size (`VOCAB_SIZE`)."""

    @classmethod
    def of(cls, checkpoint: dict) -> "SavedModel":
        return cls(weights=checkpoint[MODEL], config=checkpoint[CONFIG], tokenizer=checkpoint[TOKENIZER],
                   vocab_size=checkpoint[VOCAB_SIZE])

    def fields(self) -> dict:
        return {MODEL: self.weights, CONFIG: self.config, TOKENIZER: self.tokenizer, VOCAB_SIZE: self.vocab_size}


def make_checkpoint(model: SavedModel, fields: dict) -> dict:
    """A checkpoint of `model` and the run's other `fields` (keyed by the constants of
    `SCHEMA`, such as `OPTIMIZER`); a key outside the schema is a bug, refused."""
    unknown = sorted(set(fields) - set(SCHEMA))
    if unknown:
        raise ValueError(f"not checkpoint keys (add them to checkpoint.SCHEMA): {unknown}")
    return {FORMAT_VERSION: CHECKPOINT_FORMAT, **model.fields(), **fields}


def to_cpu(obj: Any) -> Any:
    """A copy of nested dicts/lists/tuples with every tensor moved to the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model inside DistributedDataParallel and/or torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def save_checkpoint(path: str | Path, checkpoint: dict,
                    elsewhere: str = "set train.out_dir to another disk") -> None:
    """Write `checkpoint` to `path` atomically and durably (see files.atomic_write).

    A full or read-only disk is a `CannotWrite` (the previous file kept, unchanged), as is
    any other failing write, so a caller can say what the run still has.
    """
    path = Path(path)
    existed = path.exists()
    try:
        atomic_write(path, lambda f: torch.save(to_cpu(checkpoint), f), durable=True, elsewhere=elsewhere)
    except OSError as e:  # not a full disk or a permission: an I/O error, a name too long, ...
        raise CannotWrite(path, e.strerror or str(e), kept_note(path, existed), elsewhere) from None


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict:
    """Load a checkpoint safely, turning every way it can be wrong into one clear line."""
    path = Path(path)
    if not path.exists():
        raise RnnlmError(f"checkpoint {str(path)!r} not found; pass the path of a last.pt or best.pt "
                         "written by training")
    if path.is_dir():
        raise RnnlmError(f"checkpoint {str(path)!r} is a directory; pass a file such as {path / 'best.pt'}")
    problem = regular_file_problem(path)
    if problem:  # a named pipe would wait for a writer forever
        raise RnnlmError(f"checkpoint {str(path)!r} {problem}; pass a last.pt or best.pt written by training")
    try:
        with warnings.catch_warnings():  # torch's remarks on a foreign file; our one line says it all
            warnings.simplefilter("ignore")
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # the unpickler fails in all sorts of ways on foreign bytes
        raise RnnlmError(_unloadable(path, e)) from None
    if not isinstance(checkpoint, dict) or any(k not in checkpoint for k in REQUIRED_KEYS):
        raise RnnlmError(f"checkpoint {str(path)!r} is not an rnnlm checkpoint (missing keys); "
                         "pass a last.pt or best.pt written by rnnlm training")
    if checkpoint[FORMAT_VERSION] != CHECKPOINT_FORMAT:
        raise RnnlmError(f"checkpoint {str(path)!r} has format {checkpoint[FORMAT_VERSION]}, "
                         f"this rnnlm reads format {CHECKPOINT_FORMAT}")
    return checkpoint


def _unloadable(path: Path, e: Exception) -> str:
    """Why torch.load(weights_only=True) refused `path`, in one line."""
    name = repr(str(path))
    code = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
    if code:
        return (f"checkpoint {name} holds Python objects that could run code when loaded ({code.group(1)}); "
                "refused without loading it: rnnlm checkpoints hold only tensors and plain types")
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        return f"checkpoint {name} is empty; use another file, e.g. best.pt or last.pt"
    if head == b"PK\x03\x04":  # torch.save writes a zip archive
        return (f"checkpoint {name} is truncated or corrupt (an incomplete PyTorch file); "
                "use another file, e.g. best.pt or last.pt")
    return (f"checkpoint {name} is not a PyTorch checkpoint (not written by torch.save); "
            "pass a last.pt or best.pt written by rnnlm training")
