"""The run directory: created or checked before training, and the metrics log inside it.

A run directory (``train.out_dir``) holds config.yaml, tokenizer.json, metrics.jsonl,
last.pt and best.pt. A fresh run never overwrites one without ``train.overwrite``; a
resumed run must keep the settings its checkpoint's weights and data position depend on.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

from rnnlm import distributed as ddp
from rnnlm.checkpoint import CONFIG, STEP, load_checkpoint
from rnnlm.config import AUTO, Config, config_from_dict, config_to_dict
from rnnlm.errors import CannotWrite, RnnlmError
from rnnlm.files import append_jsonl, read_jsonl, remove_temporaries, write_text_atomic
from rnnlm.plots import log_to_tensorboard, open_tensorboard

# Settings whose change makes a checkpoint's weights or data position meaningless. The
# data itself is checked by the hash of its text (so a moved file may still resume);
# run length, logging, evaluation, checkpointing and optimizer settings may change.
RESUME_MUST_MATCH = ("model", "tokenizer", "train.batch_size", "data.split")
RUN_FILES = ("last.pt", "best.pt", "metrics.jsonl", "config.yaml", "tokenizer.json")


def prepare_run_dir(cfg: Config) -> Optional[dict]:
    """Create out_dir; return the checkpoint to resume from, if resuming.

    A resume is refused, before any data is read, when the architecture, tokenizer or
    batch layout differs from the checkpoint's: its weights or data position would be
    meaningless. A fresh run never overwrites a run directory without train.overwrite.
    """
    out = Path(cfg.train.out_dir)
    if out.exists() and not out.is_dir():
        raise RnnlmError(f"train.out_dir {out} is a file, not a directory; set train.out_dir to a folder")
    if cfg.train.resume:
        return _checkpoint_to_resume(cfg, out)
    if out.exists() and any(out.iterdir()):
        if not cfg.train.overwrite:
            raise RnnlmError(f"run directory {out} already exists; continue it with --resume "
                             "(train.resume=true), start over with --overwrite, or set train.out_dir")
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
        _remove_stale_temporaries(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RnnlmError(f"cannot create run directory {out} ({e.strerror}); set train.out_dir to a writable place") from None
    return None


def _checkpoint_to_resume(cfg: Config, out: Path) -> dict:
    last = out / "last.pt"
    if not last.exists():
        raise RnnlmError(f"cannot resume: {last} not found; start a new run without --resume")
    checkpoint = load_checkpoint(last)
    # The saved config read back with today's defaults, so a key added since is not a difference.
    diffs = config_differences(config_to_dict(config_from_dict(checkpoint[CONFIG])), config_to_dict(cfg))
    if diffs:
        raise RnnlmError(f"cannot resume {last}: settings differ from the checkpoint's: " + "; ".join(diffs)
                         + "; undo these changes, or start a new run with another train.out_dir or --overwrite")
    _remove_stale_temporaries(out)
    truncate_metrics(out / "metrics.jsonl", checkpoint[STEP])
    return checkpoint


def config_differences(saved: dict, current: dict, keys=RESUME_MUST_MATCH) -> list[str]:
    """`section.key: saved -> current` for each setting that must match on resume.

    A current `auto` matches the value it was resolved to: it is sized to the training
    text, and a resumed run must have that same text (checked by its hash)."""
    diffs = []
    for key in keys:
        section, _, name = key.partition(".")
        a, b = saved.get(section, {}), current.get(section, {})
        pairs = {name: (a.get(name), b.get(name))} if name else \
            {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b))}
        for k, (x, y) in pairs.items():
            if x != y and y != AUTO:
                diffs.append(f"{section}.{k}: {x!r} -> {y!r}")
    return diffs


def _remove_stale_temporaries(out: Path) -> None:
    # A process killed while saving leaves its temporary file (never the checkpoint) behind.
    for name in ("last.pt", "best.pt"):
        remove_temporaries(out, name)


def truncate_metrics(path: Path, step: int) -> None:
    """Drop the metrics logged after the checkpoint's step (and a half-written last line):
    the resumed run logs those steps again."""
    if not path.exists():
        return
    kept = [r for r in read_jsonl(path) if r.get("step", 0) <= step]
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept), elsewhere="set train.out_dir to another disk")


class MetricsLog:
    """Appends records to out_dir/metrics.jsonl (and TensorBoard); only the main process writes.

    A record that cannot be appended (a full disk) is a warning, once until appending works
    again, not the end of the run: the log is worth less than the training, and the next
    checkpoint that cannot be written stops the run, saying which one holds its progress.
    """

    def __init__(self, out: Path, tensorboard: bool):
        self.path = out / "metrics.jsonl"
        self.enabled = ddp.is_main()
        self.tensorboard = open_tensorboard(out) if tensorboard and self.enabled else None
        self.failing = False  # the last append failed (and was warned about)

    def __call__(self, record: dict) -> None:
        if not self.enabled:
            return
        try:
            append_jsonl(self.path, record, elsewhere="set train.out_dir to another disk")
            self.failing = False
        except CannotWrite as e:
            if not self.failing:
                print(f"warning: {e.what}; training goes on without these records (from step "
                      f"{record.get('step')}) until there is room; {e.fix}", file=sys.stderr)
            self.failing = True
        if self.tensorboard is not None:
            log_to_tensorboard(self.tensorboard, record)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None
