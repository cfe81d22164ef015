"""Exact resume: k steps + resume + (N - k) steps is bit-identical to N steps straight.

The runs use every source of randomness in training (locked dropout, DropConnect on the
hidden-to-hidden weights, embedding dropout), a cosine schedule, periodic evaluation and
an exponential moving average of the weights, and one of the resumes crosses an epoch
boundary (16 batches per epoch here).
"""

import signal

import pytest
import torch

import rnnlm.train
from rnnlm.checkpoint import load_checkpoint
from rnnlm.cli import main
from rnnlm.errors import RnnlmError
from rnnlm.train import TrainingInterrupted, train
from tests.conftest import read_metrics, tiny_config

N = 22
REGULARISED = ["model.num_layers=2", "model.dropout=0.2", "model.weight_drop=0.2", "model.embed_dropout=0.1",
               "train.batch_size=8", "train.seq_len=32", f"train.max_steps={N}", "train.eval_every=5",
               "train.checkpoint_every=4", "optim.ema_decay=0.8"]
# 3,994 train characters as 8 streams of 499: an epoch is ceil(498 / 32) = 16 steps.
STEPS_PER_EPOCH = 16


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
