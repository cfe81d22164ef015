"""Stopping and resuming a training run.

Exact resume: k steps + resume + (N - k) steps is bit-identical to N steps straight.
The runs use every source of randomness in training (locked dropout, DropConnect on the
hidden-to-hidden weights, embedding dropout), a cosine schedule, periodic evaluation and
an exponential moving average of the weights, and one of the resumes crosses an epoch
boundary (16 batches per epoch here).

A resume whose checkpoint cannot fit the run (another architecture, tokenizer or text) is
refused. However a run stops (SIGKILL at any moment, SIGINT/SIGTERM, a bug in the loop,
its time limit) it leaves a loadable last.pt to resume from.
"""

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

import rnnlm.train
from rnnlm.checkpoint import load_checkpoint
from rnnlm.cli import main
from rnnlm.config import load_config
from rnnlm.errors import RnnlmError
from rnnlm.train import TrainingInterrupted, train
from tests.conftest import REPO, read_metrics, tiny_config, tiny_overrides

N = 22
REGULARISED = ["model.num_layers=2", "model.dropout=0.2", "model.weight_drop=0.2", "model.embed_dropout=0.1",
               "train.batch_size=8", "train.seq_len=32", f"train.max_steps={N}", "train.eval_every=5",
               "train.checkpoint_every=4", "optim.ema_decay=0.8"]
# 3,994 train characters as 8 streams of 499: an epoch is ceil(498 / 32) = 16 steps.
STEPS_PER_EPOCH = 16


# ---------------------------------------------------------------------------------------
# Exact resume


def train_losses(run_dir) -> list[tuple]:
    return [(r["step"], r["epoch"], r["train_loss"], r["lr"], r["grad_norm"])
            for r in read_metrics(run_dir) if "train_loss" in r]


def assert_same_weights(run_a, run_b):
    a, b = load_checkpoint(run_a / "last.pt"), load_checkpoint(run_b / "last.pt")
    assert a["step"] == b["step"] == N
    for weights in ("model", "trained_model"):  # the weight average and the weights it averages
        assert a[weights].keys() == b[weights].keys()
        for name in a[weights]:
            assert torch.equal(a[weights][name], b[weights][name]), (weights, name)
    for name in ("epoch", "position", "tokens_seen"):
        assert a[name] == b[name], name


def interrupt_at_step(monkeypatch, k):
    """Send this process SIGINT while step k is being computed (the k-th batch is read)."""
    calls = []
    get_batch = rnnlm.train.get_batch

    def get_batch_then_signal(*args):
        calls.append(1)
        if len(calls) == k:
            signal.raise_signal(signal.SIGINT)
        return get_batch(*args)

    monkeypatch.setattr(rnnlm.train, "get_batch", get_batch_then_signal)


@pytest.mark.slow
@pytest.mark.parametrize("k", [9, STEPS_PER_EPOCH], ids=["resume-then-cross-epoch", "resume-at-epoch-end"])
def test_interrupt_and_resume_is_bit_identical_to_a_straight_run(tmp_path, text_file, monkeypatch, k):
    straight = tmp_path / "straight"
    train(tiny_config(straight, text_file, *REGULARISED))
    expected = train_losses(straight / "run")
    assert len(expected) == N and expected[-1][1] > 1.0, "the run must cross an epoch boundary"

    resumed = tmp_path / "resumed"
    cfg = tiny_config(resumed, text_file, *REGULARISED)
    with monkeypatch.context() as m:
        interrupt_at_step(m, k)
        with pytest.raises(TrainingInterrupted, match=f"SIGINT after step {k}"):
            train(cfg)
    assert load_checkpoint(resumed / "run" / "last.pt")["step"] == k
    assert train_losses(resumed / "run") == expected[:k]

    train(tiny_config(resumed, text_file, *REGULARISED, "train.resume=true"))
    assert train_losses(resumed / "run") == expected  # bit-identical losses, lr and gradient norms
    assert_same_weights(straight / "run", resumed / "run")


@pytest.mark.slow
@pytest.mark.parametrize("extra", [["model.cell=mingru"], ["model.cell=minlstm"],
                                   ["model.cell=gru", "train.precision=bf16"]], ids=["mingru", "minlstm", "gru-bf16"])
def test_minimal_cells_and_bf16_resume_bit_identically(tmp_path, text_file, extra):
    # No DropConnect (the minimal cells have no W_hh); a constant schedule, so the first
    # run may end early and be extended.
    common = [*(o for o in REGULARISED if not o.startswith("model.weight_drop")), "optim.schedule=constant", *extra]
    straight = tmp_path / "straight"
    train(tiny_config(straight, text_file, *common))
    resumed = tmp_path / "resumed"
    train(tiny_config(resumed, text_file, *common, "train.max_steps=9"))
    train(tiny_config(resumed, text_file, *common, "train.resume=true"))
    assert train_losses(resumed / "run") == train_losses(straight / "run")
    assert_same_weights(straight / "run", resumed / "run")


@pytest.mark.slow
def test_run_length_and_logging_may_change_on_resume(tmp_path, text_file):
    # A constant schedule, so the learning rate does not depend on max_steps.
    common = [*REGULARISED, "optim.schedule=constant"]
    straight = tmp_path / "straight"
    train(tiny_config(straight, text_file, *common))

    resumed = tmp_path / "resumed"
    train(tiny_config(resumed, text_file, *common, "train.max_steps=12"))  # a finished run ...
    train(tiny_config(resumed, text_file, *common, "train.resume=true", "train.log_every=2",  # ... extended
                      "train.eval_every=3", "train.checkpoint_every=7"))
    assert_same_weights(straight / "run", resumed / "run")
    steps = [r["step"] for r in read_metrics(resumed / "run") if "train_loss" in r]
    assert steps == list(range(1, 13)) + list(range(14, N + 1, 2))
    straight_loss = {s: loss for s, _, loss, _, _ in train_losses(straight / "run")}
    for record in read_metrics(resumed / "run"):
        if "train_loss" in record and record["step"] > 12:  # the mean of the two steps it covers
            s = record["step"]
            assert record["train_loss"] == pytest.approx((straight_loss[s - 1] + straight_loss[s]) / 2, rel=1e-6)


# ---------------------------------------------------------------------------------------
# Resumes that cannot fit, and the command line


def test_resume_with_another_architecture_or_tokenizer_is_refused_listing_the_differences(tmp_path, text_file):
    train(tiny_config(tmp_path, text_file, "train.max_steps=5"))
    with pytest.raises(RnnlmError) as e:
        train(tiny_config(tmp_path, text_file, "train.max_steps=10", "train.resume=true",
                          "model.hidden_size=48", "model.cell=gru", "tokenizer.kind=word"))
    message = str(e.value)
    assert "\n" not in message and "cannot resume" in message
    for diff in ("model.cell: 'lstm' -> 'gru'", "model.hidden_size: 32 -> 48", "tokenizer.kind: 'char' -> 'word'"):
        assert diff in message
    assert "optim" not in message and "max_steps" not in message
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 5  # untouched


def test_resume_with_other_split_fractions_is_refused(tmp_path, text_file):
    train(tiny_config(tmp_path, text_file, "train.max_steps=5"))
    with pytest.raises(RnnlmError, match=r"data.split: \[0.8, 0.1, 0.1\] -> \[0.9, 0.1, 0\]; undo"):
        train(tiny_config(tmp_path, text_file, "train.max_steps=10", "train.resume=true", "data.split=[0.9, 0.1, 0]"))


def test_resume_with_another_max_eval_chars_is_refused_once_the_text_is_read(tmp_path, text_file):
    train(tiny_config(tmp_path, text_file, "train.max_steps=5"))
    with pytest.raises(RnnlmError, match=r"this run trained on 3,996 characters of the text, where data.split "
                                         r"and data.max_eval_chars now leave 4,863; set them as the run had them"):
        train(tiny_config(tmp_path, text_file, "train.max_steps=10", "train.resume=true", "data.max_eval_chars=100"))
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 5  # untouched


def test_resume_on_another_text_is_refused(tmp_path, text_file):
    train(tiny_config(tmp_path, text_file, "train.max_steps=5"))
    text_file.write_text(text_file.read_text().replace("Napoleon", "Bonaparte"))
    with pytest.raises(RnnlmError, match="differs from the one this run was trained on"):
        train(tiny_config(tmp_path, text_file, "train.max_steps=10", "train.resume=true"))


@pytest.mark.slow
def test_resume_from_the_command_line_uses_the_runs_own_config(tmp_path, text_file, capsys):
    cfg = tiny_config(tmp_path, text_file, "train.max_steps=5")
    train(cfg)
    run_dir = tmp_path / "run"
    assert main(["train", "--resume", str(run_dir), "train.max_steps=8"]) == 0
    assert load_checkpoint(run_dir / "last.pt")["step"] == 8
    assert "resuming at step 5" in capsys.readouterr().out

    assert main(["train", "--resume", str(run_dir), "model.num_layers=2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: cannot resume") and "model.num_layers: 1 -> 2" in err

    assert main(["train", "--resume", str(tmp_path / "nowhere")]) == 2
    assert "last.pt not found" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------
# A real training process, killed or stopped by a signal


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
# A bug, the time limit


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
