"""Training on a disk that fills up (or turns read-only): one line that names the file, the
cause and the checkpoint holding the progress, with its step; exit status 2, no traceback;
the previous last.pt and best.pt unchanged and no temporary left. When best.pt cannot be
written, last.pt is tried. The metrics log, the plot and the token cache only warn.

The faults are made by failing the writer (so the tests run anywhere); the last test fills
a real (tmpfs) disk when run as root."""

import errno
import os
import shutil
from pathlib import Path

import pytest
import torch

import rnnlm.files
import rnnlm.plots
import rnnlm.run_dir
import rnnlm.token_cache
import rnnlm.train
from rnnlm.checkpoint import load_checkpoint
from rnnlm.cli import main
from tests.conftest import cli_line, read_metrics, small_disk_free, small_text, tiny_overrides

DISK_FULL = OSError(errno.ENOSPC, "No space left on device")
TORCH_SHORT_WRITE = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 114432 vs 114326")


@pytest.fixture
def run_args(tmp_path) -> list[str]:
    text = tmp_path / "corpus.txt"
    text.write_text(small_text(), encoding="utf-8")
    return ["train", *tiny_overrides(tmp_path, text)]  # 20 steps; last.pt every 5, validation every 10


def half_then_fail(error):
    """A writer that writes some bytes, then fails as a full disk does."""
    def write(*args):
        f = next(a for a in args if hasattr(a, "write"))
        f.write(b"PK\x03\x04 half a file")
        f.flush()
        raise error
    return write


def fail_checkpoints(monkeypatch, when, error=DISK_FULL) -> dict:
    """Make the checkpoint writes for which when(path, step) holds fail midway; returns the
    bytes last.pt and best.pt held just before the first failure."""
    real_save = rnnlm.train.save_checkpoint
    before = {}

    def save(path, checkpoint, **kwargs):
        if not when(Path(path), checkpoint["step"]):
            return real_save(path, checkpoint, **kwargs)
        if not before:
            before.update({name: (path.parent / name).read_bytes() for name in ("last.pt", "best.pt")
                           if (path.parent / name).exists()})
        with monkeypatch.context() as m:
            m.setattr(torch, "save", half_then_fail(error))
            return real_save(path, checkpoint, **kwargs)

    monkeypatch.setattr(rnnlm.train, "save_checkpoint", save)
    return before


def assert_nothing_lost(run: Path, before: dict) -> None:
    for name, content in before.items():
        assert (run / name).read_bytes() == content, f"{name} changed"
        load_checkpoint(run / name)
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]


def test_last_pt_that_cannot_be_written_stops_the_run_naming_the_last_good_one(tmp_path, run_args, capsys,
                                                                                monkeypatch):
    run = tmp_path / "run"
    before = fail_checkpoints(monkeypatch, lambda path, step: path.name == "last.pt" and step >= 15)
    line = cli_line(capsys, run_args)
    assert line == (f"error: cannot write {run}/last.pt: no space left on the device (the previous last.pt is "
                    f"kept, unchanged); training stopped after step 15; the last good checkpoint is {run}/last.pt "
                    f"(step 10); free some disk space, then continue with: rnnlm train --resume {run}")
    assert set(before) == {"last.pt", "best.pt"}
    assert_nothing_lost(run, before)
    assert load_checkpoint(run / "last.pt")["step"] == 10

    monkeypatch.undo()  # room again: the run goes on from step 10 and finishes
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 0
    assert load_checkpoint(run / "last.pt")["step"] == 20


def test_best_pt_that_cannot_be_written_saves_last_pt_instead(tmp_path, run_args, capsys, monkeypatch):
    run = tmp_path / "run"
    before = fail_checkpoints(monkeypatch, lambda path, step: path.name == "best.pt")
    line = cli_line(capsys, run_args)
    assert line == (f"error: cannot write {run}/best.pt: no space left on the device (no best.pt was written); "
                    f"training stopped after step 10; saved {run}/last.pt (step 10) instead; "
                    f"free some disk space, then continue with: rnnlm train --resume {run}")
    assert list(before) == ["last.pt"]  # of step 5, replaced by the rescue
    assert_nothing_lost(run, {})
    saved = load_checkpoint(run / "last.pt")
    assert saved["step"] == 10 and saved["best_val_loss"] == float("inf")  # the best.pt on disk: none

    monkeypatch.undo()
    assert main(["train", "--resume", str(run)]) == 0
    assert load_checkpoint(run / "best.pt")["step"] == 20  # the resumed run writes best.pt again


def test_when_last_pt_cannot_be_written_either_the_line_names_the_older_one(tmp_path, run_args, capsys,
                                                                             monkeypatch):
    run = tmp_path / "run"
    before = fail_checkpoints(monkeypatch, lambda path, step: step >= 10, error=TORCH_SHORT_WRITE)
    line = cli_line(capsys, run_args)
    assert line == (f"error: cannot write {run}/best.pt: no space left on the device (no best.pt was written); "
                    f"training stopped after step 10; last.pt could not be written either; the last good "
                    f"checkpoint is {run}/last.pt (step 5); free some disk space, then continue with: "
                    f"rnnlm train --resume {run}")
    assert_nothing_lost(run, before)
    assert load_checkpoint(run / "last.pt")["step"] == 5


def test_a_run_that_could_write_no_checkpoint_says_so(tmp_path, run_args, capsys, monkeypatch):
    run = tmp_path / "run"
    fail_checkpoints(monkeypatch, lambda path, step: True, error=OSError(errno.EDQUOT, "Disk quota exceeded"))
    line = cli_line(capsys, run_args)
    assert line == (f"error: cannot write {run}/last.pt: the disk quota is used up (no last.pt was written); "
                    "training stopped after step 5; no checkpoint was written; free some of your quota or set "
                    "train.out_dir to another disk, then train again")
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "metrics.jsonl", "tokenizer.json"]


def test_a_run_directory_that_cannot_take_the_tokenizer_stops_before_training(tmp_path, run_args, capsys,
                                                                               monkeypatch):
    run = tmp_path / "run"
    real = rnnlm.train.write_text_atomic

    def write(path, text, **kwargs):
        if Path(path).name != "tokenizer.json":
            return real(path, text, **kwargs)
        with monkeypatch.context() as m:
            m.setattr(rnnlm.files.tempfile, "mkstemp", read_only)
            return real(path, text, **kwargs)

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(rnnlm.train, "write_text_atomic", write)
    line = cli_line(capsys, run_args, quiet=True)
    assert line == (f"error: cannot write {run}/tokenizer.json: the file system is read-only (no tokenizer.json "
                    "was written); make it writable or set train.out_dir to another disk")


def test_metrics_that_cannot_be_appended_warn_once_and_training_goes_on(tmp_path, run_args, capsys, monkeypatch):
    run = tmp_path / "run"
    real = rnnlm.run_dir.append_jsonl
    full = OSError(errno.ENOSPC, "No space left on device")

    def append(path, record, **kwargs):
        if not 3 <= record["step"] <= 6:
            return real(path, record, **kwargs)
        with monkeypatch.context() as m:  # the line is half written, then the disk is full
            m.setattr(rnnlm.files, "open", lambda *a, **k: HalfLine(open(*a, **k), full), raising=False)
            return real(path, record, **kwargs)

    monkeypatch.setattr(rnnlm.run_dir, "append_jsonl", append)
    line = cli_line(capsys, run_args, code=0, kind="warning")
    assert line == (f"warning: cannot write {run}/metrics.jsonl: no space left on the device (the previous "
                    "metrics.jsonl is kept, unchanged); training goes on without these records (from step 3) "
                    "until there is room; free some disk space")
    steps = [r["step"] for r in read_metrics(run) if "train_loss" in r]  # every line whole
    assert steps == [1, 2] + list(range(7, 21))
    assert load_checkpoint(run / "last.pt")["step"] == 20


class HalfLine:
    """A file whose write puts down half the text, then fails."""

    def __init__(self, f, error):
        self.f, self.error = f, error

    def write(self, text):
        self.f.write(text[: len(text) // 2])
        self.f.flush()
        raise self.error

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


@pytest.mark.parametrize("module, chosen, line", [
    (rnnlm.plots, lambda path: path.name == "training.png", "warning: no training plot: cannot write {run}/training.png: no space left on the "
     "device (no training.png was written); free some disk space or draw it elsewhere with: rnnlm plot {run} --out FILE"),
    (rnnlm.token_cache, lambda path: path.parent.name == "cache", "warning: token cache not saved (the next run tokenizes again): cannot write {file}: no "
     "space left on the device (no {name} was written); free some disk space or set data.cache_dir to another disk"),
], ids=["plot", "token-cache"])
def test_a_plot_or_token_cache_that_cannot_be_written_is_a_warning(tmp_path, run_args, capsys, monkeypatch,
                                                                   module, chosen, line):
    run = tmp_path / "run"
    real = module.atomic_write
    failed = []

    def write(path, fn, **kwargs):
        if not chosen(Path(path)):
            return real(path, fn, **kwargs)
        failed.append(Path(path))
        return real(path, half_then_fail(DISK_FULL), **kwargs)

    monkeypatch.setattr(module, "atomic_write", write)
    got = cli_line(capsys, run_args, code=0, kind="warning")
    (file,) = failed
    assert got == line.format(run=run, file=file, name=file.name)
    assert not file.exists() and not [p for p in file.parent.iterdir() if p.name.endswith(".tmp")]
    assert load_checkpoint(run / "best.pt")["step"] > 0


def test_a_really_full_disk(tmp_path, run_args, capsys, small_disk):
    """The CLI on a real tmpfs with room for two checkpoints but not a third: best.pt at step 10
    takes the room, last.pt of step 10 (its temporary beside the old one) does not fit."""
    probe = tmp_path / "probe"
    assert main(run_args + [f"train.out_dir={probe}", "train.max_steps=5"]) == 0
    size = (probe / "last.pt").stat().st_size
    shutil.rmtree(probe)
    filler = small_disk_free(small_disk) - int(2.5 * size) - 64 * 1024  # the run's small files: < 64 KiB
    (small_disk / "filler").write_bytes(b"x" * filler)
    run = small_disk / "run"
    capsys.readouterr()
    line = cli_line(capsys, run_args + [f"train.out_dir={run}"])
    assert line == (f"error: cannot write {run}/last.pt: no space left on the device (the previous last.pt is "
                    f"kept, unchanged); training stopped after step 10; the last good checkpoint is {run}/last.pt "
                    f"(step 5); free some disk space, then continue with: rnnlm train --resume {run}")
    assert load_checkpoint(run / "last.pt")["step"] == 5 and load_checkpoint(run / "best.pt")["step"] == 10
    assert sorted(os.listdir(run)) == ["best.pt", "config.yaml", "last.pt", "metrics.jsonl", "tokenizer.json"]
