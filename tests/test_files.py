"""Files a run writes and reads (rnnlm.files): an atomic write replaces the file whole or
leaves it as it was, with no temporary behind; leftover temporaries of a killed process
are removed by name; the .jsonl log skips a torn last line and lines that are not records."""

import json
import os

import pytest

from rnnlm.files import append_jsonl, atomic_write, read_jsonl, remove_temporaries, write_text_atomic


def test_atomic_write_replaces_the_file_and_creates_its_folder(tmp_path):
    path = tmp_path / "a" / "b" / "file.bin"
    atomic_write(path, lambda f: f.write(b"first"))
    atomic_write(path, lambda f: f.write(b"second"), durable=True)
    assert path.read_bytes() == b"second"
    write_text_atomic(path, "Natásha\n")
    assert path.read_bytes() == "Natásha\n".encode("utf-8")
    assert os.listdir(path.parent) == ["file.bin"]


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()],
                         ids=["disk-full", "ctrl-c"])
def test_a_write_that_fails_midway_leaves_the_old_file_and_no_temporary(tmp_path, error):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b"old and complete\n")

    def half_then_fail(f):
        f.write(b"half of the new")
        f.flush()  # the half really reached the temporary file
        raise error

    with pytest.raises(type(error)) as raised:  # raised as it came
        atomic_write(path, half_then_fail, durable=True)
    assert raised.value is error
    assert path.read_bytes() == b"old and complete\n"
    assert os.listdir(tmp_path) == ["metrics.jsonl"]


def test_a_failed_first_write_leaves_nothing(tmp_path):
    def fail(f):
        raise OSError(30, "Read-only file system")

    with pytest.raises(OSError, match="Read-only"):
        atomic_write(tmp_path / "new.pt", fail)
    assert os.listdir(tmp_path) == []


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
