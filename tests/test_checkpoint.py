"""Checkpoints (rnnlm.checkpoint): a failing disk leaves the previous one intact, a run's
checkpoints hold only tensors and plain types, and loading one never runs code from it,
whatever the file holds. How a stopped run leaves a checkpoint to resume from (SIGKILL,
SIGINT/SIGTERM, a bug) is in test_train_resume.py."""

import os
import pickle
import random

import pytest
import torch

import rnnlm.checkpoint
from rnnlm.checkpoint import load_checkpoint, save_checkpoint
from rnnlm.errors import RnnlmError
from rnnlm.train import train
from tests.conftest import cli_line, tiny_config

# ---------------------------------------------------------------------------------------
# Writing


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 1, "w": torch.ones(3)})

    def disk_full(obj, f):
        f.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rnnlm.checkpoint.torch, "save", disk_full)
    with pytest.raises(RnnlmError) as raised:
        save_checkpoint(path, {"step": 2, "w": torch.zeros(3)})
    assert str(raised.value) == (f"cannot write {path}: no space left on the device (the previous last.pt is kept, "
                                 "unchanged); free some disk space or set train.out_dir to another disk")
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary left behind


def test_checkpoints_hold_only_tensors_and_plain_types(tmp_path, text_file):
    train(tiny_config(tmp_path, text_file, "train.max_steps=3", "model.cell=gru"))

    def plain(x):
        if isinstance(x, dict):
            return all(isinstance(k, (str, int)) and plain(v) for k, v in x.items())
        if isinstance(x, (list, tuple)):
            return all(plain(v) for v in x)
        return x is None or isinstance(x, (torch.Tensor, str, int, float, bool))

    for name in ("last.pt", "best.pt"):
        ckpt = load_checkpoint(tmp_path / "run" / name)
        assert plain(ckpt)
        assert all(t.device.type == "cpu" for t in ckpt["model"].values())


# ---------------------------------------------------------------------------------------
# Loading whatever the file holds


class RunsCode:
    """Unpickling this calls open(marker, "w"): code that runs at load time."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("as_zip", [True, False], ids=["torch.save", "raw-pickle"])
def test_a_checkpoint_that_would_run_code_is_refused_without_running_it(tmp_path, capsys, as_zip):
    marker = tmp_path / "the-code-ran"
    path = tmp_path / "evil.pt"
    payload = {"format_version": 1, "model": RunsCode(marker), "config": {}, "tokenizer": "", "vocab_size": 1}
    if as_zip:
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))  # torch's own protocol
    with pytest.raises(RnnlmError, match=r"could run code when loaded \(io.open\); refused without loading it"):
        load_checkpoint(path)
    for command in ("generate", "evaluate"):
        line = cli_line(capsys, [command, "--checkpoint", str(path)])
        assert "refused" in line
    assert not marker.exists()
    # The file is really armed: an unsafe load runs it.
    if as_zip:
        torch.load(path, weights_only=False)
    else:
        pickle.loads(path.read_bytes())
    assert marker.exists()


def foreign_files(tmp_path, real_checkpoint):
    data = real_checkpoint.read_bytes()
    files = {
        "truncated": data[: len(data) // 2],
        "truncated-header": data[:100],
        "empty": b"",
        "random-bytes": random.Random(0).randbytes(5000),
        "text": b"Napoleon was the Emperor of the French.\n" * 20,
    }
    paths = {}
    for name, content in files.items():
        paths[name] = tmp_path / f"{name}.pt"
        paths[name].write_bytes(content)
    paths["plain-tensor"] = tmp_path / "tensor.pt"
    torch.save(torch.ones(3), paths["plain-tensor"])
    paths["dict-of-tensors"] = tmp_path / "state_dict.pt"
    torch.save({"weight": torch.ones(3)}, paths["dict-of-tensors"])
    paths["directory"] = tmp_path
    paths["missing"] = tmp_path / "missing.pt"
    return paths


def test_truncated_and_foreign_files_give_one_line_errors_from_generate_and_evaluate(tmp_path, text_file, capsys):
    train(tiny_config(tmp_path, text_file, "train.max_steps=3"))
    seen = {}
    for name, path in foreign_files(tmp_path / "run", tmp_path / "run" / "last.pt").items():
        for command in ("generate", "evaluate"):
            line = cli_line(capsys, [command, "--checkpoint", str(path), "--device", "cpu"])
            assert str(path) in line
            seen[name] = line
    for name, line in seen.items():
        print(f"{name}: {line}")
    assert "not an rnnlm checkpoint" in seen["plain-tensor"] and "not an rnnlm checkpoint" in seen["dict-of-tensors"]
    for name in ("truncated", "truncated-header"):
        assert "is truncated or corrupt" in seen[name]
    for name in ("random-bytes", "text"):
        assert "is not a PyTorch checkpoint" in seen[name]


def test_a_checkpoint_that_is_a_named_pipe_is_one_line(tmp_path):
    path = tmp_path / "best.pt"
    os.mkfifo(path)  # torch.load would wait for a writer forever
    with pytest.raises(RnnlmError) as e:
        load_checkpoint(path)
    assert str(e.value) == f"checkpoint '{path}' is a named pipe (FIFO); pass a last.pt or best.pt written by training"
