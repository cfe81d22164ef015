"""Training (rnnlm.train) end to end on a tiny config: it learns, checkpoints load,
generation from them is seeded, metrics.jsonl holds every field, the run stops at its
limit, clipping and weight averaging do what they say, compiled training matches eager;
and the loop's parts: the progress bar, the loss window, the signal handlers.

Non-finite steps are in test_train_nonfinite.py, stopping and resuming in
test_train_resume.py, data-parallel training in test_distributed.py.
"""

import math
import os
import re
import signal
import threading
import warnings

import pytest
import torch

import rnnlm.train
from rnnlm.checkpoint import load_checkpoint
from rnnlm.errors import RnnlmError
from rnnlm.inference import load_model
from rnnlm.sample import generate
from rnnlm.train import LossWindow, stop_on_signals, train
from tests.conftest import read_metrics, tiny_config


@pytest.mark.slow
@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_tiny_model_overfits_a_short_text(tmp_path, text_file, cell):
    cfg = tiny_config(tmp_path, text_file, f"model.cell={cell}", "train.max_steps=150", "model.hidden_size=64",
                      "optim.lr=0.02", "train.eval_every=1000")
    result = train(cfg)
    losses = [r["train_loss"] for r in read_metrics(tmp_path / "run") if "train_loss" in r]
    # A uniform guess over ~30 characters costs ln(30) = 3.4 nats; the text is highly repetitive.
    assert losses[0] > 2.5
    assert sum(losses[-10:]) / 10 < 1.0, losses[-10:]
    assert result["valid"]["loss"] < 1.5
    for name in ("last.pt", "best.pt", "config.yaml", "tokenizer.json", "metrics.jsonl"):
        assert (tmp_path / "run" / name).exists()


def test_checkpoint_is_self_contained_and_generation_is_seeded(tmp_path, text_file):
    train(tiny_config(tmp_path, text_file))
    ckpt = load_checkpoint(tmp_path / "run" / "best.pt")
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in ckpt["model"])
    assert all(t.device.type == "cpu" for t in ckpt["model"].values())
    lm = load_model(tmp_path / "run" / "best.pt", "cpu")
    a = generate(lm, "Napoleon was", max_new_tokens=30, temperature=1.0, seed=7)
    b = generate(lm, "Napoleon was", max_new_tokens=30, temperature=1.0, seed=7)
    c = generate(lm, "Napoleon was", max_new_tokens=30, temperature=1.0, seed=8)
    assert a == b and a != c
    assert len(a[0]) == 30  # char tokenizer: one character per token
    greedy = generate(lm, "Napoleon was", max_new_tokens=10, temperature=0, num_samples=2)
    assert greedy[0] == greedy[1]


@pytest.mark.slow
def test_existing_run_directory_is_not_overwritten(tmp_path, text_file):
    train(tiny_config(tmp_path, text_file, "train.max_steps=5"))
    with pytest.raises(RnnlmError, match="already exists"):
        train(tiny_config(tmp_path, text_file, "train.max_steps=5"))
    train(tiny_config(tmp_path, text_file, "train.max_steps=5", "train.overwrite=true"))


def test_training_needs_a_limit(tmp_path, text_file):
    cfg = tiny_config(tmp_path, text_file, "train.max_steps=null")
    with pytest.raises(RnnlmError, match="max_steps"):
        train(cfg)


@pytest.mark.slow
def test_max_epochs_stops_after_one_pass(tmp_path, text_file):
    result = train(tiny_config(tmp_path, text_file, "train.max_steps=null", "train.max_epochs=1"))
    n_train = result["tokens"]
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["epoch"] == 1 or ckpt["position"] >= 1
    assert n_train > 0


@pytest.mark.slow
def test_clipping_keeps_a_plain_rnn_finite_where_an_unclipped_run_blows_up(tmp_path, text_file):
    # Plain SGD at lr 50: unclipped, the rnn's loss explodes by orders of magnitude.
    common = ["model.cell=rnn", "optim.name=sgd", "optim.lr=50", "optim.warmup_steps=0",
              "model.hidden_size=64", "train.max_steps=30", "train.max_bad_steps=1000", "optim.weight_decay=0"]
    runs = {}
    for clip in (0.25, 0):
        train(tiny_config(tmp_path / str(clip), text_file, *common, f"optim.clip_grad_norm={clip}"))
        runs[clip] = [r["train_loss"] for r in read_metrics(tmp_path / str(clip) / "run") if "train_loss" in r]
        ckpt = load_checkpoint(tmp_path / str(clip) / "run" / "last.pt")
        assert all(torch.isfinite(t).all() for t in ckpt["model"].values()), "a NaN reached a checkpoint"
    assert all(math.isfinite(x) and x < 100 for x in runs[0.25]), runs[0.25]
    assert max(runs[0]) > 1000 or len(runs[0]) < 30, runs[0]


@pytest.mark.slow
def test_ema_checkpoint_holds_the_average_of_the_raw_weights_and_validation_scores_it(tmp_path, text_file):
    # Constant lr without warmup, so runs of 1, 2 and 3 steps follow one trajectory.
    common = ["optim.schedule=constant", "optim.warmup_steps=0", "model.dropout=0.2"]
    raw = []
    for steps in (1, 2, 3):
        train(tiny_config(tmp_path / f"raw{steps}", text_file, *common, f"train.max_steps={steps}"))
        raw.append(load_checkpoint(tmp_path / f"raw{steps}" / "run" / "last.pt")["model"])
        assert "trained_model" not in load_checkpoint(tmp_path / f"raw{steps}" / "run" / "last.pt")

    cfg = tiny_config(tmp_path / "ema", text_file, *common, "train.max_steps=3", "optim.ema_decay=0.75")
    result = train(cfg)
    ckpt = load_checkpoint(tmp_path / "ema" / "run" / "last.pt")
    assert ckpt["ema_updates"] == 3
    for name, w3 in raw[2].items():
        assert torch.equal(ckpt["trained_model"][name], w3), name  # averaging leaves training alone
        expected = raw[0][name].clone().lerp_(raw[1][name], 0.25).lerp_(raw[2][name], 0.25)
        assert torch.equal(ckpt["model"][name], expected), name
        assert not torch.equal(expected, w3), name

    # The run's validation (and its best.pt) are those of the averaged weights.
    from rnnlm.data import corpus_from_config
    from rnnlm.model import RNNLM
    from rnnlm.train import split_metrics

    corpus = corpus_from_config(cfg)
    model = RNNLM(ckpt["vocab_size"], cfg.model)
    scores = {}
    for key in ("model", "trained_model"):
        model.load_state_dict(ckpt[key])
        scores[key] = split_metrics(model, corpus, "valid", cfg, torch.device("cpu"))["loss"]
    assert result["valid"]["loss"] == pytest.approx(scores["model"], rel=1e-6)
    assert scores["model"] != pytest.approx(scores["trained_model"], rel=1e-6)
    assert torch.equal(load_checkpoint(tmp_path / "ema" / "run" / "best.pt")["model"]["embedding.weight"],
                       ckpt["model"]["embedding.weight"])


def test_metrics_hold_every_field(logged_run):
    records = read_metrics(logged_run)  # 20 steps, logged every 2
    train = [r for r in records if "train_loss" in r]
    evals = [r for r in records if "val_loss" in r]
    assert len(train) == 10 and len(evals) >= 2
    for r in train:
        assert {"step", "tokens", "train_loss", "lr", "grad_norm", "tokens_per_s", "seconds"} <= set(r)
    for r in evals:
        assert {"step", "tokens", "val_loss", "val_bpc", "seconds"} <= set(r)
    assert [r["tokens"] for r in train] == sorted(r["tokens"] for r in train)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("RNNLM_SLOW_TESTS"),
                    reason="torch.compile (inductor) makes this test take ~3 minutes on the 2-core "
                           "development CPU (it passed there); set RNNLM_SLOW_TESTS=1 to run")
def test_compiled_training_matches_eager(tmp_path, text_file):
    # Constant lr and no dropout: the two runs take the same steps.
    settings = ["optim.schedule=constant", "train.max_steps=3", "train.eval_every=5", "train.checkpoint_every=5",
                "train.log_every=1"]
    train(tiny_config(tmp_path, text_file, *settings, f"train.out_dir={tmp_path / 'eager'}"))
    train(tiny_config(tmp_path, text_file, *settings, f"train.out_dir={tmp_path / 'compiled'}", "train.compile=true"))

    def losses(run_dir) -> dict:
        return {r["step"]: r["train_loss"] for r in read_metrics(run_dir) if "train_loss" in r}

    eager, compiled = losses(tmp_path / "eager"), losses(tmp_path / "compiled")
    for step in eager:
        assert compiled[step] == pytest.approx(eager[step], abs=1e-4)
    ckpt = load_checkpoint(tmp_path / "compiled" / "last.pt")
    assert not any(k.startswith("_orig_mod.") for k in ckpt["model"])



def test_bf16_autocast_training_on_the_cpu_keeps_fp32_weights(tmp_path, text_file, capsys):
    # train.precision=auto picks bf16 on a CPU with AMX or AVX-512 BF16; the tiny config pins fp32.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a CPU without native bf16 warns that it is slower
        result = train(tiny_config(tmp_path, text_file, "train.precision=bf16", "train.max_steps=4"))
    assert "precision bf16 (as configured)" in capsys.readouterr().out
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in ckpt["model"].values())
    assert all(math.isfinite(r["train_loss"]) for r in read_metrics(tmp_path / "run") if "train_loss" in r)
    assert math.isfinite(result["valid"]["loss"]) and math.isfinite(result["test"]["loss"])


@pytest.mark.parametrize("cell", ["mingru", "minlstm"])
def test_minimal_cells_train_and_generate(tmp_path, text_file, cell):
    result = train(tiny_config(tmp_path, text_file, f"model.cell={cell}", "train.max_steps=5"))
    losses = [r["train_loss"] for r in read_metrics(tmp_path / "run") if "train_loss" in r]
    assert result["steps"] == 5 and len(losses) == 5 and all(math.isfinite(x) for x in losses)
    lm = load_model(tmp_path / "run" / "best.pt", "cpu")
    assert lm.config.model.cell == cell
    greedy = generate(lm, "Napoleon was", max_new_tokens=8, temperature=0, num_samples=2)
    assert greedy[0] == greedy[1] and greedy[0]

# ---------------------------------------------------------------------------------------
# The loop's parts: progress bar, loss window, signals

BAR = re.compile(r"step (\d+) +(\d+)%\|")  # ProgressBar's "step N  P%|████| [elapsed<left, ...]"


def bar_states(stderr: str) -> list[tuple[int, int]]:
    """(step, percent) of every state of the progress bar written to stderr, in order."""
    return [(int(step), int(pct)) for step, pct in BAR.findall(stderr)]


def test_progress_bar_of_a_step_bounded_run_reaches_100_percent_at_the_last_step(tmp_path, text_file, capsys):
    train(tiny_config(tmp_path, text_file, "train.progress=true", "train.max_steps=20"))
    err = capsys.readouterr().err
    states = bar_states(err)
    assert states[0] == (0, 0) and states[-1] == (20, 100), err
    assert all(pct == 5 * step for step, pct in states), states  # step s of 20 is s / 20 of the run
    last_line = err.replace("\r", "\n").rstrip().splitlines()[-1]
    assert last_line.startswith("step 20 100%|") and "loss=" in last_line, last_line


def test_progress_bar_of_a_time_bounded_run_shows_the_share_of_the_time(tmp_path, text_file, capsys):
    result = train(tiny_config(tmp_path, text_file, "train.progress=true", "train.max_steps=null",
                               "train.max_minutes=0.003"))  # 0.18 s
    states = bar_states(capsys.readouterr().err)
    assert states[0] == (0, 0)
    assert states[-1][0] == result["steps"] >= 1 and 0 < states[-1][1] <= 100, states
    assert [pct for _, pct in states] == sorted(pct for _, pct in states)


def test_loss_window_gives_the_mean_loss_and_tokens_per_second_since_the_last_flush(monkeypatch):
    clock = iter([100.0, 102.0, 103.0])  # created, first flush, second flush
    monkeypatch.setattr(rnnlm.train.time, "perf_counter", lambda: next(clock))
    window = LossWindow()
    window.add(2.0, 64)
    window.add(3.0, 64)
    assert window.flush() == (2.5, 64.0)  # 128 tokens in 2 s
    window.add(1.0, 32)
    assert window.flush() == (1.0, 32.0)  # the window started again at the flush


def test_a_first_signal_is_recorded_a_second_interrupts_and_the_handlers_are_restored():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    received = []
    with stop_on_signals(received):
        assert signal.getsignal(signal.SIGTERM) not in (before[1], signal.SIG_DFL)
        signal.raise_signal(signal.SIGINT)  # the loop finishes its step, saves and stops
        assert received == [signal.SIGINT]
        with pytest.raises(KeyboardInterrupt):  # a second one: now
            signal.raise_signal(signal.SIGINT)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_signal_handlers_are_left_alone_outside_the_main_thread():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    seen = []

    def run():
        with stop_on_signals([]):
            seen.append((signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert seen == [before]


def test_patience_stops_a_run_whose_validation_stops_improving_and_resume_keeps_the_count(tmp_path, text_file,
                                                                                          capsys):
    # A learning rate too small to change a float32 weight: validation never improves after the first.
    common = ["optim.lr=1e-30", "train.eval_every=1", "train.patience=2", "train.max_steps=20"]
    result = train(tiny_config(tmp_path, text_file, *common))
    out = capsys.readouterr().out
    assert result["steps"] == 3 and result["best_step"] == 1
    assert ("stopping early at step 3: the validation loss has not improved for 2 evaluations "
            "(train.patience=2); best.pt holds the best") in out
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert last["step"] == 3 and last["evals_since_best"] == 2
    resumed = train(tiny_config(tmp_path, text_file, *common, "train.resume=true"))
    assert resumed["steps"] == 3 and "stopping early at step 3" in capsys.readouterr().out


def test_a_trainer_is_whole_once_built_and_no_step_adds_an_attribute(tmp_path, text_file):
    # Every attribute is set by the constructor; fit() and finish() only change their values.
    cfg = tiny_config(tmp_path, text_file, "train.max_steps=4", "train.eval_every=2")
    trainer = rnnlm.train.Trainer(cfg, torch.device("cpu"))
    built = set(vars(trainer))
    try:
        trainer.fit()
        trainer.finish()
        assert set(vars(trainer)) == built
    finally:
        trainer.cleanup()
    assert trainer.state.step == 4 and trainer.state.bad_in_a_row == 0  # the run's counters: TrainState
