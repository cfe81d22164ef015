"""Training end to end on a tiny config: it learns, checkpoints load, generation is seeded."""

import json
import math

import pytest
import torch

from rnnlm.checkpoint import load_checkpoint
from rnnlm.config import load_config
from rnnlm.errors import RnnlmError
from rnnlm.inference import load_model
from rnnlm.sample import generate
from rnnlm.train import get_lr, train
from tests.conftest import tiny_config


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


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


def test_generation_streams_the_same_text_it_returns(tmp_path, text_file):
    train(tiny_config(tmp_path, text_file, "tokenizer.kind=bpe", "tokenizer.vocab_size=300"))
    lm = load_model(tmp_path / "run" / "last.pt")
    pieces = []
    texts = generate(lm, "The army", max_new_tokens=25, seed=1, on_text=pieces.append)
    assert "".join(pieces) == texts[0]


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


def test_lr_schedule_warms_up_then_decays():
    cfg = load_config(None, ["optim.lr=1.0", "optim.warmup_steps=10", "optim.min_lr_ratio=0.1"]).optim
    assert get_lr(0, 0.0, cfg) == pytest.approx(0.1)
    assert get_lr(9, 0.0, cfg) == pytest.approx(1.0)
    assert get_lr(50, 0.5, cfg) == pytest.approx(0.55)
    assert get_lr(100, 1.0, cfg) == pytest.approx(0.1)
    assert math.isclose(get_lr(100, 2.0, cfg), 0.1)  # never below the floor


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
