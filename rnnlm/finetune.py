"""Starting a run from a trained model (``train.init_from``): the parent read and checked,
its shape kept, its coverage of the new text measured, and where the run came from recorded.

A run started from a parent takes the parent's weights (a checkpoint's ``model``: its
averaged weights when it kept an EMA), its tokenizer byte for byte, and the keys of
`SHAPE_KEYS`. Everything else (data, dropout, optimizer, schedule, limits) comes from the
run's own config; the optimizer state, schedule, step count and hidden state start new.
A resumed run needs only its own last.pt: the parent is read when a run starts, never after.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Optional

import torch

from rnnlm import tokenizer as tokenization
from rnnlm.config import AUTO, Config, config_from_dict, config_values
from rnnlm.errors import RnnlmError
from rnnlm.model_folder import Parent, read_model

# The settings that decide the shape of the weights and the meaning of the token ids.
SHAPE_KEYS = ("model.cell", "model.hidden_size", "model.num_layers", "model.embedding_size", "model.tie_weights",
              "tokenizer.kind", "tokenizer.vocab_size")
UNSET = (None, AUTO)  # a shape key with one of these values is the parent's
_SLICE = 1 << 24  # tokens counted at a time for the <unk> share


@dataclasses.dataclass
class StartingPoint:
    """A parent read for a new run: the model, the path it was read from, and its record."""

    parent: Parent
    record: dict
    """What the checkpoints keep (checkpoint.PARENT): path, weights_sha256, step, text (its file's
    name), train_chars, best_val_bpc."""


def load_run_config(path=None, overrides=None) -> Config:
    """The config of a training run, as `config.load_config` reads it, except that with
    ``train.init_from`` (and not resuming) every shape key the config leaves out, null or
    auto is the parent's; a shape key it sets to another value is refused in one line."""
    values = config_values(path, overrides)
    train = values.get("train")
    init_from = train.get("init_from") if isinstance(train, dict) else None
    if isinstance(init_from, str) and init_from and train.get("resume") is not True:
        theirs = parent_config(read_parent(init_from))
        for key in SHAPE_KEYS:
            section, name = key.split(".")
            if values.get(section) is None:
                values[section] = {}
            mine = values[section]
            if not isinstance(mine, dict):
                continue  # not a mapping: config_from_dict says so
            if mine.get(name) in UNSET:
                mine[name] = _value(theirs, key)
            elif mine[name] != _value(theirs, key):
                raise RnnlmError(shape_error(key, mine[name], _value(theirs, key), init_from))
    return config_from_dict(values)


def open_parent(cfg: Config) -> tuple[Config, Optional[StartingPoint]]:
    """(the run's config fitted to its parent, the parent) for a new run with train.init_from;
    (cfg, None) without one, and when resuming. Every way the parent is wrong is one line:
    missing, not a model, inside the run directory, another shape or other weights."""
    tc = cfg.train
    if not tc.init_from or tc.resume:
        return cfg, None
    path = Path(tc.init_from)
    parent = read_parent(path)
    out = Path(tc.out_dir).resolve()
    if path.resolve() == out or out in path.resolve().parents:
        raise RnnlmError(f"train.init_from {str(path)!r} is inside train.out_dir {str(tc.out_dir)!r}, which the "
                         "new run fills with its own files; set train.out_dir to a new folder")
    cfg = fit_to_parent(cfg, parent, str(path))
    digest = weights_sha256(parent.weights)
    if tc.init_from_sha256 and tc.init_from_sha256 != digest:
        raise RnnlmError(f"train.init_from {str(path)!r} has other weights (sha256 {digest[:16]}...) than "
                         f"train.init_from_sha256 ({tc.init_from_sha256[:16]}...) says; point train.init_from at "
                         "that parent, or remove train.init_from_sha256 to start from this one")
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, init_from_sha256=digest))
    trained = parent.trained
    record = {"path": str(path.resolve()), "weights_sha256": digest, "step": trained.get("step"),
              "text": Path(parent_config(parent).data.path).name, "train_chars": trained.get("train_chars"),
              "best_val_bpc": trained.get("best_val_bpc")}
    return cfg, StartingPoint(parent, record)


def read_parent(path) -> Parent:
    """The parent model at `path`, a checkpoint or a model folder; its errors name the key."""
    try:
        return read_model(path)
    except RnnlmError as e:
        raise RnnlmError(f"train.init_from: {e}") from None


def parent_config(parent: Parent) -> Config:
    """The parent's config with today's defaults for keys added since it was written."""
    return config_from_dict(parent.config)


def _value(cfg: Config, key: str):
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def shape_error(key: str, asked, theirs, parent: str) -> str:
    return (f"{key}={asked} differs from the parent's {key}={theirs} ({parent}); a run started from a trained "
            f"model keeps its shape: set {key}={theirs} or leave it out (configs/finetune.yaml does)")


def fit_to_parent(cfg: Config, parent: Parent, name: str) -> Config:
    """`cfg` with its unset (auto) shape keys taken from `parent`; a key set otherwise is refused."""
    theirs = parent_config(parent)
    sections = {"model": cfg.model, "tokenizer": cfg.tokenizer}
    for key in SHAPE_KEYS:
        section, field = key.split(".")
        mine = getattr(sections[section], field)
        if mine in UNSET:
            sections[section] = dataclasses.replace(sections[section], **{field: _value(theirs, key)})
        elif mine != _value(theirs, key):
            raise RnnlmError(shape_error(key, mine, _value(theirs, key), name))
    return dataclasses.replace(cfg, **sections)


def weights_sha256(weights: dict) -> str:
    """sha256 of a state_dict: every tensor's name, dtype, shape and bytes, in name order (the
    same for a checkpoint and the model folder exported from it)."""
    digest = hashlib.sha256()
    for name in sorted(weights):
        t = weights[name].detach().to("cpu").contiguous()
        digest.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode("utf-8"))
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load_weights(start: StartingPoint, model: torch.nn.Module, ema=None) -> None:
    """The parent's weights into `model` (and into the weight average, which starts from them)."""
    for module in [model] + ([ema.module] if ema is not None else []):
        try:
            module.load_state_dict(start.parent.weights)
        except RuntimeError as e:
            raise RnnlmError(f"train.init_from {start.record['path']}: its weights do not fit the model "
                             f"({str(e).splitlines()[-1].strip()}); export it again with this rnnlm") from None


def unknown_share(tok, train_ids: torch.Tensor, limit: float) -> Optional[float]:
    """The share of the training tokens that are <unk> under the parent's tokenizer (None for
    byte-level BPE, which encodes every text); above `limit`, the run is refused."""
    unk = tokenization.unk_id(tok)
    if unk is None:
        return None
    # In slices: the ids may be a memory map of a corpus larger than memory.
    count = sum(int((train_ids[i:i + _SLICE] == unk).sum()) for i in range(0, train_ids.numel(), _SLICE))
    share = count / max(1, train_ids.numel())
    if share > limit:
        raise RnnlmError(f"the parent's tokenizer maps {share:.1%} of the training tokens to <unk>, above "
                         f"train.max_unknown_share={limit:g}: start from a parent with a bpe tokenizer (it covers "
                         "any text), train from scratch without train.init_from, or raise train.max_unknown_share")
    return share


def describe(record: dict) -> str:
    """The startup line's account of the parent."""
    step, chars, bpc = record.get("step"), record.get("train_chars"), record.get("best_val_bpc")
    return (f"started from {record['path']}: "
            + (f"{step:,} steps" if step is not None else "an unrecorded number of steps")
            + (f" on {chars:,} characters of {record['text']}" if chars else f" on {record['text']}")
            + (f", valid {bpc:.4f} bpc" if bpc is not None else " (its valid bpc not recorded)")
            + f"; weights sha256 {record['weights_sha256'][:12]}; its tokenizer and shape kept, "
            "a new optimizer, schedule and step count")
