"""Settings sized to the training text (`auto`): the rules, and a run that uses them."""

import re

import pytest

from rnnlm.checkpoint import load_checkpoint
from rnnlm.config import load_config
from rnnlm.errors import RnnlmError
from rnnlm.sizing import ANCHOR_CHARS, dropout_for, fit_to_corpus, max_epochs_for, vocab_size_for
from rnnlm.train import train
from tests.conftest import tiny_config


def test_the_rules_give_the_main_configs_values_on_war_and_peace():
    main = load_config("configs/war_and_peace.yaml")
    assert vocab_size_for(ANCHOR_CHARS) == main.tokenizer.vocab_size == 4096
    assert dropout_for(ANCHOR_CHARS) == main.model.dropout == 0.15
    # The main config is bound by its minutes (13.5 epochs on 2 CPU cores); the rule's
    # passes leave it so.
    assert main.train.max_epochs is None and max_epochs_for(ANCHOR_CHARS) == 50


@pytest.mark.parametrize("chars, vocab, dropout, epochs", [
    (50_000, 512, 0.5, 29),            # vocabulary and dropout at their bounds
    (547_193, 2048, 0.32, 11),         # Pride and Prejudice's train split
    (20_000_000, 4096, 0.05, 6),        # War and Peace's 50 passes of tokens: 6.4 passes
    (80_000_000, 4096, 0.05, 2),        # larger texts keep War and Peace's vocabulary
    (10**9, 4096, 0.0, 1),              # read once: nothing to learn by heart, no dropout
])
def test_smaller_texts_get_fewer_merges_more_dropout_and_fewer_passes(chars, vocab, dropout, epochs):
    assert vocab_size_for(chars) == vocab
    assert dropout_for(chars) == dropout
    assert max_epochs_for(chars) == epochs


def test_the_rules_are_monotonic_in_the_texts_size():
    sizes = [10_000 * 2 ** i for i in range(14)]
    vocabs = [vocab_size_for(n) for n in sizes]
    dropouts = [dropout_for(n) for n in sizes]
    assert vocabs == sorted(vocabs) and dropouts == sorted(dropouts, reverse=True)
    # Passes are fewest near a fifth of War and Peace and grow both ways up to it: more
    # dropout on a smaller text, more to learn in a larger one; above it the passes
    # share War and Peace's budget of tokens, fewer the larger the text.
    epochs = [max_epochs_for(n) for n in sizes]
    fewest = epochs.index(min(epochs[:9]))
    most = fewest + epochs[fewest:].index(max(epochs[fewest:]))
    assert 300_000 < sizes[fewest] < 1_000_000 and sizes[most - 1] < ANCHOR_CHARS < sizes[most + 1]
    assert epochs[:fewest + 1] == sorted(epochs[:fewest + 1], reverse=True)
    assert epochs[fewest:most + 1] == sorted(epochs[fewest:most + 1])
    assert epochs[most:] == sorted(epochs[most:], reverse=True) and epochs[-1] >= 1
    assert max_epochs_for(ANCHOR_CHARS + 1) == 50  # no jump at War and Peace
    assert all(v & (v - 1) == 0 for v in vocabs)  # powers of two


def test_fit_to_corpus_resolves_only_auto_and_says_what_it_chose():
    cfg = load_config("configs/war_and_peace.yaml", ["tokenizer.vocab_size=auto", "model.dropout=auto",
                                                     "train.max_epochs=auto"])
    sized, chosen = fit_to_corpus(cfg, 547_193)
    assert (sized.tokenizer.vocab_size, sized.model.dropout, sized.train.max_epochs) == (2048, 0.32, 11)
    assert chosen == ["tokenizer.vocab_size 2048", "model.dropout 0.32", "train.max_epochs 11"]
    assert cfg.tokenizer.vocab_size == "auto"  # the given config is left as it was
    explicit = load_config("configs/war_and_peace.yaml", ["model.dropout=0.25"])
    assert fit_to_corpus(explicit, 547_193) == (explicit, [])


@pytest.mark.parametrize("override, line", [
    ("tokenizer.vocab_size=big", "config: tokenizer.vocab_size must be int or auto, got 'big'"),
    ("model.dropout=lots", "config: model.dropout must be float or auto, got 'lots'"),
    ("model.embed_dropout=auto", "config: model.embed_dropout must be float, got 'auto' (str)"),
])
def test_auto_is_taken_only_where_documented(override, line):
    with pytest.raises(RnnlmError) as e:
        load_config(None, [override])
    assert str(e.value) == line


def test_a_run_with_auto_stores_the_sized_values_and_resumes(tmp_path, text_file, capsys):
    auto = ["tokenizer.kind=bpe", "tokenizer.vocab_size=auto", "model.dropout=auto", "train.max_epochs=auto"]
    train(tiny_config(tmp_path, text_file, *auto, "train.max_steps=6"))
    out = capsys.readouterr().out
    chars = int(re.search(r"sized to the ([\d,]+) training characters", out).group(1).replace(",", ""))
    epochs = max_epochs_for(chars)
    assert f"training characters (auto): tokenizer.vocab_size 512, model.dropout 0.5, train.max_epochs {epochs}" in out
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["config"]["tokenizer"]["vocab_size"] == 512 and ckpt["config"]["model"]["dropout"] == 0.5
    assert ckpt["config"]["train"]["max_epochs"] == epochs
    assert "vocab_size: 512" in (tmp_path / "run" / "config.yaml").read_text()
    # Resuming with the same `auto` config matches the values it was sized to.
    result = train(tiny_config(tmp_path, text_file, *auto, "train.max_steps=10", "train.resume=true"))
    assert result["steps"] == 10


def test_resolve_auto_resolves_the_sizes_and_the_precision_in_one_call():
    import torch

    from rnnlm.device import choose_precision
    from rnnlm.sizing import needs_text, resolve_auto

    cpu = torch.device("cpu")
    cfg = load_config("configs/war_and_peace.yaml", ["tokenizer.vocab_size=auto", "model.dropout=auto"])
    assert needs_text(cfg) and cfg.train.precision == "auto"
    resolved = resolve_auto(cfg, cpu, 547_193)
    assert (resolved.cfg.tokenizer.vocab_size, resolved.cfg.model.dropout) == (2048, 0.32)
    assert (resolved.cfg.train.precision, resolved.precision_reason) == choose_precision(cpu, "auto")
    assert resolved.sized == ["tokenizer.vocab_size 2048", "model.dropout 0.32"]
    with pytest.raises(ValueError, match="training text"):
        resolve_auto(cfg, cpu)  # sizes need the text's length
    explicit = load_config("configs/war_and_peace.yaml", ["train.precision=fp32"])
    assert not needs_text(explicit) and resolve_auto(explicit, cpu).cfg is explicit  # nothing to change


def test_a_runs_config_yaml_and_checkpoint_hold_the_resolved_precision(tmp_path, text_file, capsys):
    import torch

    from rnnlm.device import choose_precision

    precision, reason = choose_precision(torch.device("cpu"), "auto")
    train(tiny_config(tmp_path, text_file, "train.precision=auto", "train.max_steps=2"))
    assert f"precision {precision} ({reason})" in capsys.readouterr().out
    assert f"precision: {precision}\n" in (tmp_path / "run" / "config.yaml").read_text()
    assert load_checkpoint(tmp_path / "run" / "last.pt")["config"]["train"]["precision"] == precision
