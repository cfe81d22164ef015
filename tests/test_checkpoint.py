"""Checkpoints survive anything: SIGKILL at any moment, SIGINT/SIGTERM, a failing disk;
and loading one never runs code from it, whatever the file holds."""

import os
import pickle
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

import rnnlm.checkpoint
from rnnlm.checkpoint import load_checkpoint, save_checkpoint
from rnnlm.config import load_config
from rnnlm.errors import RnnlmError
from rnnlm.train import train
from tests.conftest import REPO, cli_line, read_metrics, tiny_config, tiny_overrides

# ---------------------------------------------------------------------------------------
# A real training process, killed


def train_command(tmp_path, text_file, *overrides):
    """`python -m rnnlm.cli train` on the tiny config; one thread, so it shares the machine."""
    base = tiny_overrides(tmp_path, text_file) + ["train.max_steps=100000", "train.eval_every=100000",
                                                  "train.num_threads=1"]
    return [sys.executable, "-m", "rnnlm.cli", "train", *base, *overrides]


def start(command):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, process, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"training exited early ({process.returncode}): {process.stderr.read()}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("training made no progress in time")
        time.sleep(0.05)


def checkpoint_step(path):
    """The step of a loadable checkpoint, or -1 while there is none."""
    if not path.exists():
        return -1
    return load_checkpoint(path)["step"]  # read while training rewrites it: must always load


@pytest.mark.slow
def test_sigkill_at_random_moments_always_leaves_a_loadable_last_pt_and_resume_runs(tmp_path, text_file):
    last = tmp_path / "run" / "last.pt"
    rng = random.Random()
    step, moments = -1, []
    for round_ in range(3):
        extra = ["train.checkpoint_every=1"] + (["--resume", str(tmp_path / "run")] if round_ else [])
        process = start(train_command(tmp_path, text_file, *extra))
        wait_for(lambda: checkpoint_step(last) > step, process)  # the first run, then each resume, makes progress
        moments.append(round(rng.uniform(0.0, 0.5), 3))
        time.sleep(moments[-1])
        process.send_signal(signal.SIGKILL)
        process.communicate()
        ckpt = load_checkpoint(last)
        assert ckpt["step"] > step, (moments, ckpt["step"], step)
        assert all(torch.isfinite(t).all() for t in ckpt["model"].values())
        step = ckpt["step"]
    print(f"killed after {moments} s of checkpointing; last.pt at step {step}")
    # One more resume, in this process, runs to the end and leaves no temporary file behind.
    result = train(load_config(tmp_path / "run" / "config.yaml",
                               ["train.resume=true", f"train.max_steps={step + 2}", "train.num_threads=null"]))
    assert result["steps"] == load_checkpoint(last)["step"] == step + 2
    assert not list((tmp_path / "run").glob("*.tmp"))


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_sigint_and_sigterm_finish_the_step_save_and_exit_non_zero(tmp_path, text_file, sig):
    # checkpoint_every is never reached: only the signal can have written last.pt.
    process = start(train_command(tmp_path, text_file, "train.checkpoint_every=100000"))
    metrics = tmp_path / "run" / "metrics.jsonl"
    wait_for(lambda: metrics.exists() and metrics.stat().st_size > 0, process)
    process.send_signal(sig)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 128 + sig, err
    assert "Traceback" not in err
    step = load_checkpoint(tmp_path / "run" / "last.pt")["step"]
    # The step in flight was finished and logged, then saved.
    assert [r["step"] for r in read_metrics(tmp_path / "run") if "train_loss" in r][-1] == step
    assert err.strip().splitlines()[-1] == (f"interrupted: stopped by {sig.name} after step {step}; progress saved to "
                                            f"{tmp_path / 'run' / 'last.pt'} (continue with: rnnlm train --resume "
                                            f"{tmp_path / 'run'})")


# ---------------------------------------------------------------------------------------
# Writing


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 1, "w": torch.ones(3)})

    def disk_full(obj, f):
        f.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rnnlm.checkpoint.torch, "save", disk_full)
    with pytest.raises(RnnlmError, match="No space left on device.*previous last.pt is intact"):
        save_checkpoint(path, {"step": 2, "w": torch.zeros(3)})
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


# ---------------------------------------------------------------------------------------
# Never lose progress


def test_a_bug_inside_training_leaves_the_last_checkpoint_and_says_where(tmp_path, text_file, monkeypatch, capsys):
    import rnnlm.train

    calls = []
    get_batch = rnnlm.train.get_batch

    def failing_get_batch(*args):
        calls.append(1)
        if len(calls) == 12:
            raise IndexError("a bug")
        return get_batch(*args)

    monkeypatch.setattr(rnnlm.train, "get_batch", failing_get_batch)
    with pytest.raises(IndexError, match="a bug"):
        train(tiny_config(tmp_path, text_file, "train.checkpoint_every=5"))
    last = tmp_path / "run" / "last.pt"
    assert load_checkpoint(last)["step"] == 10
    assert (f"training failed after step 11 with an unexpected error; {last} holds the last checkpoint, "
            "of step 10 (continue with --resume)") in capsys.readouterr().err
    monkeypatch.undo()
    train(tiny_config(tmp_path, text_file, "train.resume=true"))
    assert load_checkpoint(last)["step"] == 20


def test_a_run_stopped_by_max_minutes_writes_last_pt(tmp_path, text_file):
    result = train(tiny_config(tmp_path, text_file, "train.max_steps=null", "train.max_minutes=0.002",
                               "train.checkpoint_every=100000", "train.eval_every=100000"))
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["step"] == result["steps"] >= 1
