"""Checkpoints: one self-contained file, written atomically, loaded safely.

A checkpoint is a plain dict of tensors and plain Python types, saved with ``torch.save``
and loaded with ``torch.load(weights_only=True)``, so a file that carries a pickle which
would run code is refused without running it. Keys:

    format_version   int, CHECKPOINT_FORMAT
    model            state_dict of the unwrapped model (no `module.` / `_orig_mod.` prefixes)
    optimizer        optimizer state_dict
    scaler           fp16 gradient-scaler state_dict or None
    config           the run's config as plain types
    tokenizer        the tokenizer as its JSON string
    vocab_size       int
    step, epoch, position (the offset of the next batch in every stream),
    tokens_seen, elapsed_seconds, bad_steps_skipped
    best_val_loss    float (inf before the first evaluation)
    evals_since_best validations in a row without a new best (train.patience; 0 when absent)
    hidden           the carried hidden state of the whole (global) batch: list (layers) of lists of tensors
    rng              torch (and CUDA) generator states (rank 0's under torchrun)
    rng_per_rank     list of every rank's generator states (one entry in a single process)
    text_hash        hash of the cleaned training text, so resume can refuse other data

Tensors are moved to the CPU before saving, so a GPU-trained model loads anywhere.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import torch

from rnnlm.errors import CannotWrite, RnnlmError
from rnnlm.files import atomic_write, kept_note, regular_file_problem

CHECKPOINT_FORMAT = 1
REQUIRED_KEYS = ("format_version", "model", "config", "tokenizer", "vocab_size")


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
    if checkpoint["format_version"] != CHECKPOINT_FORMAT:
        raise RnnlmError(f"checkpoint {str(path)!r} has format {checkpoint['format_version']}, "
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
