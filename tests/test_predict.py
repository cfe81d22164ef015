"""Next-word prediction (word tokens directly, bpe/char by a search to the word boundary)
and the predict command."""

import math

import pytest
import torch

from rnnlm import tokenizer as tokenization
from rnnlm.cli import main
from rnnlm.inference import load_model
from rnnlm.predict import PUNCT, WORD, format_table, next_words, token_class
from tests.conftest import scripted_lm, small_text

PROMPT = "Napoleon was the Emperor of"


def test_token_classes():
    assert token_class("the") == WORD and token_class(" the") != WORD
    assert token_class(",") == PUNCT and token_class(" “") == PUNCT
    assert token_class("\n") == token_class(" ") != PUNCT


def test_word_tokenizer_gives_the_softmax_of_the_next_token(tokenizer_models):
    lm = tokenizer_models["word"]
    words = next_words(lm, PROMPT, 5)
    ids = tokenization.encode(lm.tokenizer, PROMPT)
    with torch.no_grad():
        probs = torch.softmax(lm.model(torch.tensor([ids]))[0][0, -1], dim=-1)
    top = torch.topk(probs, 5)
    assert [w for w, _ in words] == [tokenization.decode(lm.tokenizer, [i]) for i in top.indices.tolist()]
    assert [p for _, p in words] == pytest.approx(top.values.tolist(), rel=1e-5)  # chunked priming: float rounding
    assert words[0][0] == "the"  # the text always says "Emperor of the French"


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_bpe_and_char_predictions_are_whole_words_with_probabilities(tokenizer_models, kind):
    words = next_words(tokenizer_models[kind], PROMPT, 8)
    assert len(words) == 8
    probs = [p for _, p in words]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    for word, _ in words:
        assert word and not any(c.isspace() for c in word)
        assert word.isalnum() or not any(c.isalnum() for c in word)  # a word, or a punctuation mark
    assert words[0][0] == "the"


def test_char_word_probability_is_the_product_along_its_spelling(tokenizer_models):
    # P(next word = "the") = p(" ") p("t") p("h") p("e") * p(a boundary after "the"), plus
    # other spellings (two spaces, a line break first) that this model all but never uses.
    lm = tokenizer_models["char"]
    ids = tokenization.encode(lm.tokenizer, PROMPT + " the")
    with torch.no_grad():
        logp = torch.log_softmax(lm.model(torch.tensor([ids]))[0][0], dim=-1)  # (P + 4, V)
    n = len(ids) - 4
    spelled = sum(float(logp[n - 1 + j, ids[n + j]]) for j in range(4))
    vocab = [tokenization.decode(lm.tokenizer, [i]) for i in range(lm.model.vocab_size)]
    boundary = sum(float(logp[-1, i].exp()) for i, s in enumerate(vocab) if not s[0].isalnum())
    by_hand = math.exp(spelled) * boundary
    got = dict(next_words(lm, PROMPT, 10))["the"]
    assert by_hand <= got * (1 + 1e-5) and got == pytest.approx(by_hand, rel=0.02)


def test_the_prompt_last_word_is_complete(tokenizer_models):
    # The model would glue "or" onto "Emper"; that is the prompt's word going on, not a next word.
    lm = tokenizer_models["char"]
    prompt = "Napoleon was the Emper"
    ids = tokenization.encode(lm.tokenizer, prompt)
    with torch.no_grad():
        p = torch.softmax(lm.model(torch.tensor([ids]))[0][0, -1], dim=-1)
    glue = sum(float(p[i]) for i in range(lm.model.vocab_size) if tokenization.decode(lm.tokenizer, [i]).isalnum())
    assert glue > 0.5
    words = dict(next_words(lm, prompt, 20))
    assert "or" not in words and sum(words.values()) <= 1 - glue + 1e-6


def test_predict_command_prints_a_table(tokenizer_runs, capsys):
    assert main(["predict", "--checkpoint", str(tokenizer_runs["bpe"]), "-k", "3", PROMPT]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["#", "next", "word", "probability"] and len(lines) == 5
    assert lines[2].split()[:2] == ["1", "the"] and 0 < float(lines[2].split()[-1]) <= 1


def test_predict_and_generate_read_a_long_prompt_from_a_file(tokenizer_runs, tmp_path, capsys):
    # A prompt of over 100,000 characters (more than one command-line argument may hold
    # on Linux), primed in chunks.
    path = tmp_path / "long.txt"
    text = small_text(900) + PROMPT
    path.write_text(text, encoding="utf-8")
    assert len(text) > 100_000
    checkpoint = str(tokenizer_runs["bpe"])
    assert main(["predict", "--checkpoint", checkpoint, "-k", "3", "--prompt-file", str(path)]) == 0
    table = capsys.readouterr().out
    assert table == format_table(next_words(load_model(checkpoint, "cpu"), text, 3)) + "\n"
    assert main(["generate", "--checkpoint", checkpoint, "--prompt-file", str(path), "--max-new-tokens", "5",
                 "--temperature", "0"]) == 0
    assert capsys.readouterr().out.startswith(text)
    assert main(["predict", "--checkpoint", checkpoint, "--prompt-file", str(path), PROMPT]) == 2
    assert "not both" in capsys.readouterr().err


def test_predict_command_errors(tokenizer_runs, capsys):
    assert main(["predict", "--checkpoint", "nope.pt", PROMPT]) == 2
    assert main(["predict", "--checkpoint", str(tokenizer_runs["char"]), "-k", "0", PROMPT]) == 2
    assert capsys.readouterr().err.count("error: ") == 2


def test_a_word_is_never_cut_inside_a_character():
    # After the prompt the model is sure of the first byte of "Н" (d0 9d), then rates a
    # full stop above the second byte: cut there, the word would be half a character.
    lm = scripted_lm([b"\xd0", b".", b"."], runner_up={1: b"\x9d"})
    words = next_words(lm, "Вот ", 3)
    assert words[0][0] == "Н"  # before: "\ufffd", the lone first byte
    V = lm.model.vocab_size  # every other token has logit 0
    first, second = math.exp(10) / (math.exp(10) + V - 1), math.exp(9) / (math.exp(10) + math.exp(9) + V - 2)
    assert words[0][1] == pytest.approx(first * second, rel=0.02)  # and then almost surely the full stop
    assert all(not w.endswith("\ufffd") for w, _ in words)
