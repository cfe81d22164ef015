"""Next-word prediction (word tokens directly, bpe/char by a search to the word boundary)
and the interactive prompt."""

import io
import math

import pytest
import torch

from rnnlm import tokenizer as tokenization
from rnnlm.cli import main
from rnnlm.interactive import apply_command, run_session
from rnnlm.predict import PUNCT, WORD, next_words, token_class
from rnnlm.inference import load_model
from rnnlm.sample import generate
from tests.conftest import train_tiny_run

PROMPT = "Napoleon was the Emperor of"
COMMON = ["train.max_steps=80", "model.hidden_size=64", "optim.lr=0.02", "train.eval_every=1000"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One tiny trained run per tokenizer kind: {kind: best.pt}."""
    return {kind: train_tiny_run(tmp_path_factory.mktemp(kind), f"tokenizer.kind={kind}",
                                 "tokenizer.vocab_size=300", *COMMON) / "best.pt"
            for kind in ("word", "char", "bpe")}


@pytest.fixture(scope="module")
def models(runs):
    return {kind: load_model(path, "cpu") for kind, path in runs.items()}


def test_token_classes():
    assert token_class("the") == WORD and token_class(" the") != WORD
    assert token_class(",") == PUNCT and token_class(" “") == PUNCT
    assert token_class("\n") == token_class(" ") != PUNCT


def test_word_tokenizer_gives_the_softmax_of_the_next_token(models):
    lm = models["word"]
    words = next_words(lm, PROMPT, 5)
    ids = tokenization.encode(lm.tokenizer, PROMPT)
    with torch.no_grad():
        probs = torch.softmax(lm.model(torch.tensor([ids]))[0][0, -1], dim=-1)
    top = torch.topk(probs, 5)
    assert [w for w, _ in words] == [tokenization.decode(lm.tokenizer, [i]) for i in top.indices.tolist()]
    assert [p for _, p in words] == pytest.approx(top.values.tolist())
    assert words[0][0] == "the"  # the text always says "Emperor of the French"


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_bpe_and_char_predictions_are_whole_words_with_probabilities(models, kind):
    words = next_words(models[kind], PROMPT, 8)
    assert len(words) == 8
    probs = [p for _, p in words]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    for word, _ in words:
        assert word and not any(c.isspace() for c in word)
        assert word.isalnum() or not any(c.isalnum() for c in word)  # a word, or a punctuation mark
    assert words[0][0] == "the"


def test_char_word_probability_is_the_product_along_its_spelling(models):
    # P(next word = "the") = p(" ") p("t") p("h") p("e") * p(a boundary after "the"), plus
    # other spellings (two spaces, a line break first) that this model all but never uses.
    lm = models["char"]
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


def test_predict_command_prints_a_table(runs, capsys):
    assert main(["predict", "--checkpoint", str(runs["bpe"]), "-k", "3", PROMPT]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["#", "next", "word", "probability"] and len(lines) == 5
    assert lines[2].split()[:2] == ["1", "the"] and 0 < float(lines[2].split()[-1]) <= 1


def test_predict_command_errors(runs, capsys):
    assert main(["predict", "--checkpoint", "nope.pt", PROMPT]) == 2
    assert main(["predict", "--checkpoint", str(runs["char"]), "-k", "0", PROMPT]) == 2
    assert capsys.readouterr().err.count("error: ") == 2


# ---------------------------------------------------------------------------------------
# interactive


def test_commands_change_the_settings():
    settings = {"temperature": 0.8, "top_k": 0, "top_p": 1.0, "max_new_tokens": 100, "seed": None}
    assert apply_command("/temperature 0.7", settings) == "temperature = 0.7"
    apply_command("/top-k 20", settings)
    apply_command("/top-p 0.9", settings)
    apply_command("/max-new-tokens 5", settings)
    assert settings == {"temperature": 0.7, "top_k": 20, "top_p": 0.9, "max_new_tokens": 5, "seed": None}
    assert "needs a number" in apply_command("/temperature warm", settings)
    assert apply_command("/top-p 2", settings) == "/top-p must be in (0, 1], got 2"
    assert "unknown command" in apply_command("/tempreature 1", settings)
    assert settings["temperature"] == 0.7 and settings["top_p"] == 0.9


def test_session_completes_each_line_with_the_current_settings(models):
    lm = models["char"]
    settings = {"temperature": 0.8, "top_k": 0, "top_p": 1.0, "max_new_tokens": 30, "seed": None}
    out = []
    lines = ["/temperature 0\n", "/max-new-tokens 12\n", "The army\n", "\n", "/top-k 3\n", "Pierre looked\n"]
    assert run_session(lm, settings, iter(lines), out.append) == 2
    text = "".join(out)
    greedy = [generate(lm, p, max_new_tokens=12, temperature=0)[0] for p in ("The army", "Pierre looked")]
    assert f"The army{greedy[0]}\n" in text and f"Pierre looked{greedy[1]}\n" in text
    assert "temperature = 0.0" in text and "top_k = 3" in text


def test_generate_interactive_reads_stdin_until_it_ends(runs, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("/max-new-tokens 7\nNapoleon was\nThe prince\n"))
    assert main(["generate", "--checkpoint", str(runs["word"]), "--interactive", "--temperature", "0"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "max_new_tokens = 7"
    assert out[1].startswith("Napoleon was ") and out[2].startswith("The prince ")
    assert len(out) == 3


def test_the_prompt_last_word_is_complete(models):
    # The model would glue "or" onto "Emper"; that is the prompt's word going on, not a next word.
    lm = models["char"]
    prompt = "Napoleon was the Emper"
    ids = tokenization.encode(lm.tokenizer, prompt)
    with torch.no_grad():
        p = torch.softmax(lm.model(torch.tensor([ids]))[0][0, -1], dim=-1)
    glue = sum(float(p[i]) for i in range(lm.model.vocab_size) if tokenization.decode(lm.tokenizer, [i]).isalnum())
    assert glue > 0.5
    words = dict(next_words(lm, prompt, 20))
    assert "or" not in words and sum(words.values()) <= 1 - glue + 1e-6
