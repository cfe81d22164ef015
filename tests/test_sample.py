"""Generation (rnnlm.sample): top-k and top-p keep the right tokens and always the most
likely one, temperature 0 is the argmax, an empty prompt is refused, and the streamed
text is the text returned. Seeded generation from a trained checkpoint is in
test_train.py; the sampling settings' ranges in test_config.py."""

import math

import pytest
import torch

from rnnlm import tokenizer as tokenization
from rnnlm.errors import RnnlmError
from rnnlm.inference import load_model
from rnnlm.model import PRIME_CHUNK
from rnnlm.sample import FINISH_CHARACTER_TOKENS, encode_prompt, filter_logits, generate, sample_next
from rnnlm.train import train
from tests.conftest import scripted_lm, small_text, tiny_config, untrained_lm

# Probabilities in a shuffled order, so the kept tokens must be put back in place.
PROBS = [0.15, 0.5, 0.05, 0.3]  # by rank: token 1 (0.5), 3 (0.3), 0 (0.15), 2 (0.05)
LOGITS = torch.tensor([PROBS]).log()


def kept(logits: torch.Tensor) -> list[list[int]]:
    """The token ids left finite in each row."""
    return [torch.isfinite(row).nonzero().flatten().tolist() for row in logits]


def test_top_k_keeps_the_k_most_likely_tokens():
    assert kept(filter_logits(LOGITS, top_k=1)) == [[1]]
    assert kept(filter_logits(LOGITS, top_k=2)) == [[1, 3]]
    assert kept(filter_logits(LOGITS, top_k=3)) == [[0, 1, 3]]
    for no_filter in (0, 4, 100):  # 0 = all; k >= the vocabulary leaves every token
        assert torch.equal(filter_logits(LOGITS, top_k=no_filter), LOGITS)


def test_top_k_keeps_the_values_of_the_tokens_it_keeps():
    filtered = filter_logits(LOGITS, top_k=2)
    assert torch.equal(filtered[0, [1, 3]], LOGITS[0, [1, 3]])
    assert filtered[0, 0] == filtered[0, 2] == -math.inf


@pytest.mark.parametrize("top_p, tokens", [
    (0.4, [1]),  # the top token alone covers 0.4
    (0.75, [1, 3]),  # 0.5 < 0.75, 0.5 + 0.3 covers it
    (0.9, [0, 1, 3]),
    (0.99, [0, 1, 2, 3]),
    (1.0, [0, 1, 2, 3]),
])
def test_top_p_keeps_the_smallest_set_of_likeliest_tokens_that_covers_p(top_p, tokens):
    assert kept(filter_logits(LOGITS, top_p=top_p)) == [tokens]


def test_the_most_likely_token_always_stays():
    assert kept(filter_logits(LOGITS, top_p=1e-9)) == [[1]]
    peaked = torch.tensor([[0.0, 30.0, 0.0]])  # the top token alone is ~all the mass
    assert kept(filter_logits(peaked, top_k=1, top_p=1e-9)) == [[1]]


def test_rows_are_filtered_each_on_their_own():
    logits = torch.cat([LOGITS, LOGITS.flip(-1)])  # (2, V): the second row's ranking reversed in place
    assert kept(filter_logits(logits, top_k=2)) == [[1, 3], [0, 2]]
    assert kept(filter_logits(logits, top_p=0.75)) == [[1, 3], [0, 2]]


def test_top_k_then_top_p_of_what_is_left():
    # top-k 3 leaves 0.5, 0.3, 0.15 (renormalised: 0.526, 0.316, 0.158); top-p 0.8 then keeps two.
    assert kept(filter_logits(LOGITS, top_k=3, top_p=0.8)) == [[1, 3]]


def test_temperature_zero_is_the_argmax_of_each_row():
    logits = torch.randn(6, 11, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sample_next(logits, 0, 0, 1.0, None), logits.argmax(-1))
    assert torch.equal(sample_next(logits, 0, 5, 0.5, None), logits.argmax(-1))  # filters do not matter


@pytest.mark.parametrize("temperature, top_p", [(1e-300, 1.0), (1e-40, 1.0), (1e-30, 1.0), (1.0, 1e-300),
                                                 (1e-300, 1e-300)])
def test_settings_too_small_for_float32_behave_as_their_limit(temperature, top_p):
    """A tiny temperature is greedy and a tiny top-p keeps the most likely token alone, whatever float32 rounds them to."""
    logits = torch.randn(6, 11, generator=torch.Generator().manual_seed(0)) * 50
    assert torch.equal(sample_next(logits, temperature, 0, top_p, torch.Generator().manual_seed(0)), logits.argmax(-1))
    assert kept(filter_logits(LOGITS, top_p=1e-300)) == [[1]]


def test_generation_at_a_tiny_temperature_is_greedy():
    lm = untrained_lm("char")
    greedy = generate(lm, "The army", max_new_tokens=20, temperature=0)
    assert generate(lm, "The army", max_new_tokens=20, temperature=1e-300, top_p=1e-300, seed=0) == greedy


def test_sampling_draws_only_kept_tokens_and_is_seeded():
    logits = LOGITS.expand(2000, -1)
    draws = sample_next(logits, 1.0, 0, 0.75, torch.Generator().manual_seed(1))
    assert set(draws.tolist()) == {1, 3}
    share = (draws == 1).float().mean().item()
    assert share == pytest.approx(0.5 / 0.8, abs=0.04)  # renormalised over the nucleus
    again = sample_next(logits, 1.0, 0, 0.75, torch.Generator().manual_seed(1))
    assert torch.equal(draws, again)
    assert set(sample_next(logits, 5.0, 1, 1.0, None).tolist()) == {1}  # top-k 1 at any temperature


def test_an_empty_prompt_is_refused():
    lm = untrained_lm("char")
    with pytest.raises(RnnlmError) as e:
        encode_prompt(lm.tokenizer, "")
    assert str(e.value) == "the prompt is empty; give some text with --prompt, --prompt-file or on stdin"
    assert encode_prompt(lm.tokenizer, "The army") == lm.tokenizer.encode("The army").ids


def test_a_prompt_of_no_tokens_is_refused():
    lm = untrained_lm("word")
    with pytest.raises(RnnlmError) as e:
        encode_prompt(lm.tokenizer, "  \n ")  # words only: whitespace makes no token
    assert str(e.value) == "the prompt encodes to no tokens; give some text with --prompt"


def test_no_new_tokens_is_an_empty_continuation_per_sample():
    pieces = []
    assert generate(untrained_lm("char"), "The army", max_new_tokens=0, num_samples=2,
                    on_text=pieces.append) == ["", ""]
    assert pieces == []


def test_generation_streams_the_same_text_it_returns(tmp_path, text_file):
    train(tiny_config(tmp_path, text_file, "tokenizer.kind=bpe", "tokenizer.vocab_size=300"))
    lm = load_model(tmp_path / "run" / "last.pt")
    pieces = []
    texts = generate(lm, "The army", max_new_tokens=25, seed=1, on_text=pieces.append)
    assert "".join(pieces) == texts[0]


def test_a_long_prompt_is_read_once_in_chunks_and_continues_as_after_one_pass(monkeypatch):
    lm = untrained_lm("char")
    prompt = small_text(40)  # about 7,000 tokens
    ids = encode_prompt(lm.tokenizer, prompt)
    assert len(ids) > 3 * PRIME_CHUNK
    with torch.no_grad():  # the old way: the whole prompt in one pass, then greedy steps
        logits, state = lm.model(torch.tensor([ids]))
        token, expected = logits[:, -1].argmax(-1), []
        for _ in range(15):
            expected.append(int(token))
            logits, state = lm.model.step(token, state)
            token = logits.argmax(-1)
    calls = []
    features = lm.model.features
    monkeypatch.setattr(lm.model, "features", lambda idx, state=None: calls.append(idx.shape) or features(idx, state))
    texts = generate(lm, prompt, max_new_tokens=15, temperature=0, num_samples=3)
    assert texts == [tokenization.decode(lm.tokenizer, expected)] * 3
    assert all(b == 1 and t <= PRIME_CHUNK for b, t in calls)  # once for all samples, a chunk at a time
    assert sum(t for _, t in calls) == len(ids)


# A byte-level model that cuts characters in two: Cyrillic letters are two bytes in UTF-8
# ("Н" = d0 9d, "а" = d0 b0, "ш" = d1 88), and the script emits them one byte at a time.
NASH = [b"\xd0", b"\x9d", b"\xd0", b"\xb0", b"\xd1", b"\x88", b"!"]


def streamed(lm, max_new_tokens: int, num_samples: int = 1) -> tuple[list[str], list[str]]:
    pieces = []
    texts = generate(lm, "x", max_new_tokens=max_new_tokens, temperature=0, num_samples=num_samples,
                     on_text=pieces.append)
    assert "".join(pieces) == texts[0]
    return pieces, texts


@pytest.mark.parametrize("max_new_tokens, expected", [(1, "Н"), (2, "Н"), (3, "На"), (5, "Наш"), (7, "Наш!")])
def test_a_character_cut_by_max_new_tokens_is_finished_in_every_sample(max_new_tokens, expected):
    pieces, texts = streamed(scripted_lm(NASH), max_new_tokens, num_samples=3)
    assert texts == [expected] * 3  # before: "\ufffd" at the end of each
    assert pieces == list(expected)  # one piece per whole character, never a half


def test_a_character_still_cut_after_the_extra_tokens_is_dropped():
    # d0 9d = "Н", then lead bytes that never get their continuation byte.
    lm = scripted_lm([b"\xd0", b"\x9d", b"\xd0", b"\xd0", b"\xd0", b"\xd0", b"\xd0", b"\xd0"])
    pieces, texts = streamed(lm, 3)
    # Each lead byte followed by another lead byte can never complete: U+FFFD. After the
    # FINISH_CHARACTER_TOKENS extra tokens the last lead byte is still waiting: dropped.
    assert FINISH_CHARACTER_TOKENS == 3
    assert texts == ["Н" + "\ufffd" * 3]
    assert pieces == ["Н", "\ufffd", "\ufffd", "\ufffd"]


def test_a_stray_continuation_byte_is_one_replacement_character_in_stream_and_text():
    script = [b"\xd0", b"\x9d", b"\x9d", b"\xd0", b"\xb0", b"a"]
    pieces, texts = streamed(scripted_lm(script), len(script))
    assert texts == ["Н\ufffdаa"] == [b"".join(script).decode("utf-8", "replace")]
    assert pieces == ["Н", "\ufffd", "а", "a"]
