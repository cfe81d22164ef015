"""The Python API (rnnlm.inference): `from rnnlm import load_model`, then the LoadedModel's
generate, next_words and score."""

import math

import pytest

from rnnlm import RnnlmError, load_model
from rnnlm.evaluate import score_text
from rnnlm.predict import next_words
from rnnlm.sample import generate
from tests.conftest import SENTENCES, scripted_lm, train_tiny_run


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    run = train_tiny_run(tmp_path_factory.mktemp("inference"), "train.max_steps=60", "model.hidden_size=64",
                         "optim.lr=0.02", "sample.max_new_tokens=15", "sample.temperature=1.0")
    return load_model(run / "best.pt", device="cpu")


def test_generate_uses_the_checkpoint_settings_unless_given(lm):
    a = lm.generate("The army", seed=3)
    assert len(a) == 15  # char tokenizer: sample.max_new_tokens characters
    assert a == lm.generate("The army", seed=3) != lm.generate("The army", seed=4)
    assert a == generate(lm, "The army", max_new_tokens=15, temperature=1.0, seed=3)[0]
    greedy = lm.generate("The army", max_new_tokens=8, temperature=0)
    assert len(greedy) == 8 and greedy == lm.generate("The army", max_new_tokens=8, temperature=0, seed=9)


def test_next_words(lm):
    words = lm.next_words("Napoleon was the Emperor of", 4)
    assert words == next_words(lm, "Napoleon was the Emperor of", 4)
    assert len(words) == 4 and all(isinstance(w, str) and 0 < p <= 1 for w, p in words)


def test_score_gives_loss_perplexity_and_bits_per_character(lm):
    text = " ".join(SENTENCES)
    m = lm.score(text)
    assert m == score_text(lm, text)
    assert m["perplexity"] == pytest.approx(math.exp(m["loss"]))
    assert m["bpc"] == pytest.approx(m["loss"] * m["tokens"] / math.log(2) / m["chars"])
    assert m["tokens"] == len(text) - 1  # char tokenizer: every character but the first is scored
    assert lm.score(text)["loss"] < lm.score("zqxj vkw pqz jxq zvk")["loss"]  # it learned English-ish text
    assert lm.score(text, seq_len=8, dynamic_lr=0.1) == score_text(lm, text, seq_len=8, dynamic_lr=0.1)
    assert lm.score(text, seq_len=8, dynamic_lr=0.0)["loss"] == pytest.approx(lm.score(text, batch_size=1)["loss"])


def test_errors_are_rnnlm_errors(lm, tmp_path):
    with pytest.raises(RnnlmError, match="not found"):
        load_model(tmp_path / "missing.pt")
    with pytest.raises(RnnlmError, match="too short"):
        lm.score("a")
    with pytest.raises(RnnlmError, match="empty"):
        lm.generate("")


def test_generate_returns_whole_characters():
    # Five byte-level tokens end on the first byte of "ш" ("Наш" is d0 9d d0 b0 d1 88).
    lm = scripted_lm([b"\xd0", b"\x9d", b"\xd0", b"\xb0", b"\xd1", b"\x88", b"!"])
    assert lm.generate("Вот", max_new_tokens=5, temperature=0) == "Наш"
