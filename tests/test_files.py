"""Files a run writes and reads (rnnlm.files): an atomic write replaces the file whole or
leaves it as it was, with no temporary behind; a full, read-only or foreign disk is one
line naming the file, the cause and the fix; leftover temporaries of a killed process
are removed by name; the .jsonl log skips a torn last line and lines that are not records."""

import errno
import json
import os

import pytest

import rnnlm.files
from rnnlm.errors import CannotWrite
from rnnlm.files import append_jsonl, atomic_write, read_jsonl, remove_temporaries, write_text_atomic
from tests.conftest import small_disk_free


def test_atomic_write_replaces_the_file_and_creates_its_folder(tmp_path):
    path = tmp_path / "a" / "b" / "file.bin"
    atomic_write(path, lambda f: f.write(b"first"))
    atomic_write(path, lambda f: f.write(b"second"), durable=True)
    assert path.read_bytes() == b"second"
    write_text_atomic(path, "Natásha\n")
    assert path.read_bytes() == "Natásha\n".encode("utf-8")
    assert os.listdir(path.parent) == ["file.bin"]


def test_a_write_interrupted_midway_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b"old and complete\n")
    error = KeyboardInterrupt()

    def half_then_fail(f):
        f.write(b"half of the new")
        f.flush()  # the half really reached the temporary file
        raise error

    with pytest.raises(KeyboardInterrupt) as raised:  # raised as it came
        atomic_write(path, half_then_fail, durable=True)
    assert raised.value is error
    assert path.read_bytes() == b"old and complete\n"
    assert os.listdir(tmp_path) == ["metrics.jsonl"]


# ---------------------------------------------------------------------------------------
# A full, read-only or foreign disk: one line naming the file, the cause and the fix; the
# temporary removed, the old file as it was.

TORCH_SHORT_WRITE = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 114432 vs 114326")
WRITE_FAILURES = [
    (OSError(errno.ENOSPC, "No space left on device"), "no space left on the device", "free some disk space"),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), "the disk quota is used up", "free some of your quota"),
    (OSError(errno.EROFS, "Read-only file system"), "the file system is read-only", "make it writable"),
    (OSError(errno.EACCES, "Permission denied"), "permission denied", "make the folder writable"),
    (TORCH_SHORT_WRITE, "no space left on the device", "free some disk space"),
]
FAILURE_IDS = ["ENOSPC", "EDQUOT", "EROFS", "EACCES", "torch-unexpected-pos"]


@pytest.mark.parametrize("error, cause, fix", WRITE_FAILURES, ids=FAILURE_IDS)
def test_a_full_disk_is_one_line_and_the_old_file_stays(tmp_path, error, cause, fix):
    path = tmp_path / "last.pt"
    path.write_bytes(b"old and complete")

    def half_then_fail(f):
        f.write(b"half of the new")
        f.flush()
        raise error

    with pytest.raises(CannotWrite) as raised:
        atomic_write(path, half_then_fail, durable=True, elsewhere="set train.out_dir to another disk")
    assert str(raised.value) == (f"cannot write {path}: {cause} (the previous last.pt is kept, unchanged); "
                                 f"{fix} or set train.out_dir to another disk")
    assert raised.value.__suppress_context__  # no chained traceback behind the line
    assert path.read_bytes() == b"old and complete"
    assert os.listdir(tmp_path) == ["last.pt"]


def test_a_short_write_inside_torch_save_is_traced_to_the_error_it_arose_from(tmp_path):
    def torch_like(f):
        try:
            raise OSError(errno.EROFS, "Read-only file system")
        except OSError:  # torch's writer turns the OSError of its write callback into this
            raise TORCH_SHORT_WRITE

    with pytest.raises(CannotWrite, match=r"new.pt: the file system is read-only \(no new.pt was written\)"):
        atomic_write(tmp_path / "new.pt", torch_like)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("error", [OSError(errno.ETIMEDOUT, "timed out"), ValueError("a bug"),
                                   RuntimeError("not a write")], ids=["network", "bug", "runtime"])
def test_other_errors_are_raised_as_they_came_and_leave_nothing(tmp_path, error):
    def fail(f):
        f.write(b"half")
        raise error

    with pytest.raises(type(error)) as raised:
        atomic_write(tmp_path / "new.pt", fail)
    assert raised.value is error
    assert os.listdir(tmp_path) == []


def test_a_folder_that_cannot_hold_the_temporary_is_one_line(tmp_path, monkeypatch):
    def no_room(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")  # not even an empty file (no inodes left)

    monkeypatch.setattr(rnnlm.files.tempfile, "mkstemp", no_room)
    with pytest.raises(CannotWrite, match="tokenizer.json: no space left on the device"):
        write_text_atomic(tmp_path / "tokenizer.json", "{}")


@pytest.mark.parametrize("error, cause, fix", WRITE_FAILURES[:4], ids=FAILURE_IDS[:4])
def test_an_append_that_fails_is_cut_back_off(tmp_path, monkeypatch, error, cause, fix):
    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, {"step": 1})
    real_open = open

    class HalfWriter:  # writes half of the line, then the disk is full
        def __init__(self, *args, **kwargs):
            self.f = real_open(*args, **kwargs)

        def write(self, text):
            self.f.write(text[: len(text) // 2])
            self.f.flush()
            raise error

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(rnnlm.files, "open", HalfWriter, raising=False)
    with pytest.raises(CannotWrite) as raised:
        append_jsonl(path, {"step": 2, "train_loss": 3.25})
    assert str(raised.value) == (f"cannot write {path}: {cause} (the previous metrics.jsonl is kept, unchanged); "
                                 f"{fix} or write it to another place")
    monkeypatch.undo()
    assert path.read_text() == '{"step": 1}\n'  # no torn half line for the next record to stick to
    append_jsonl(path, {"step": 3})
    assert read_jsonl(path) == [{"step": 1}, {"step": 3}]


def test_a_really_full_disk(small_disk):
    """On a real (tmpfs) file system filled up: torch.save's own error, the append, the text."""
    import torch

    path = small_disk / "last.pt"
    atomic_write(path, lambda f: torch.save({"w": torch.ones(10)}, f))
    before = path.read_bytes()
    append_jsonl(small_disk / "metrics.jsonl", {"step": 1})
    (small_disk / "filler").write_bytes(b"x" * (small_disk_free(small_disk) - 8192))  # nearly full
    with pytest.raises(CannotWrite, match="last.pt: no space left on the device"):
        atomic_write(path, lambda f: torch.save({"w": torch.zeros(100_000)}, f), durable=True)
    with pytest.raises(CannotWrite, match="metrics.jsonl: no space left on the device"):
        append_jsonl(small_disk / "metrics.jsonl", {"step": 2, "text": "x" * 200_000})
    with pytest.raises(CannotWrite, match="tokenizer.json: no space left on the device"):
        write_text_atomic(small_disk / "tokenizer.json", "x" * 200_000)
    assert path.read_bytes() == before
    assert read_jsonl(small_disk / "metrics.jsonl") == [{"step": 1}]
    assert sorted(os.listdir(small_disk)) == ["filler", "last.pt", "metrics.jsonl"]


def test_remove_temporaries_removes_only_the_temporaries_of_that_name(tmp_path):
    keep = ["last.pt", "best.pt", ".best.pt.x1y2.tmp", ".last.pt.x1y2", "last.pt.tmp", "x.last.pt.ab.tmp",
            ".last.pt.ab.tmp.bak"]
    stale = [".last.pt.x1y2.tmp", ".last.pt.q_9z.tmp"]  # atomic_write's names for last.pt
    for name in keep + stale:
        (tmp_path / name).write_bytes(b"x")
    remove_temporaries(tmp_path, "last.pt")
    assert sorted(os.listdir(tmp_path)) == sorted(keep)
    remove_temporaries(tmp_path / "missing-folder", "last.pt")  # nothing there: nothing to do


def test_atomic_write_temporaries_match_what_remove_temporaries_looks_for(tmp_path):
    seen = []
    atomic_write(tmp_path / "last.pt", lambda f: seen.append(sorted(os.listdir(tmp_path))))
    (temporary,) = seen[0]  # the file being written, under its temporary name
    (tmp_path / temporary).write_bytes(b"left behind by a killed process")
    remove_temporaries(tmp_path, "last.pt")
    assert os.listdir(tmp_path) == ["last.pt"]


def test_read_jsonl_skips_a_torn_last_line_and_lines_that_are_not_records(tmp_path):
    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, {"step": 1, "train_loss": 3.5})
    append_jsonl(path, {"step": 2, "val_loss": 3.25})
    with open(path, "a", encoding="utf-8") as f:
        f.write('[1, 2]\n42\n"text"\nnull\n\n')  # valid JSON, but not records
        f.write(json.dumps({"step": 3, "train_loss": 3.0}) + "\n")
        f.write('{"step": 4, "train_lo')  # a run killed mid-write
    assert read_jsonl(path) == [{"step": 1, "train_loss": 3.5}, {"step": 2, "val_loss": 3.25},
                                {"step": 3, "train_loss": 3.0}]
