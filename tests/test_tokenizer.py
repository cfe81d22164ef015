"""Tokenizers: lossless round trips, unknown words, serialisation, chunked encoding."""

import pytest

from rnnlm import tokenizer as T
from rnnlm.config import TOKENIZER_KINDS
from rnnlm.errors import RnnlmError

TEXT = (
    "CHAPTER I\n\n"
    "“Well, Prince, so Genoa and Lucca are now just family estates of the Buonapartes.\n"
    "But I warn you, if you don’t tell me that this means war, I will have nothing\n"
    "more to do with you.”\n\n"
    "It was in July, 1805, and the speaker was the well-known Anna Pávlovna Schérer.\n"
) * 20


@pytest.fixture(scope="module")
def bpe():
    return T.train_tokenizer("bpe", TEXT, 300)


def test_bpe_round_trip_including_unseen_characters(bpe):
    for text in [TEXT, "Napoleon was the Emperor of", "naïve 日本語 😀\n\n\ttabs\r\nand CRLF ", "\n", " x ", ""]:
        assert T.decode(bpe, T.encode(bpe, text)) == text
    assert T.unk_id(bpe) is None
    assert bpe.get_vocab_size() == 300


def test_bpe_needs_room_for_the_bytes():
    with pytest.raises(RnnlmError, match="at least 256"):
        T.train_tokenizer("bpe", TEXT, 100)


def test_char_round_trip_and_vocabulary():
    tok = T.train_tokenizer("char", TEXT, 4096)
    assert T.decode(tok, T.encode(tok, TEXT)) == TEXT
    assert tok.get_vocab_size() == len(set(TEXT)) + 1  # + <unk>
    ids = T.encode(tok, "ac\nd")
    assert len(ids) == 4 and T.unk_id(tok) not in ids
    assert T.encode(tok, "日")[0] == T.unk_id(tok)


def test_word_tokenizer_unknown_words_and_decoding():
    tok = T.train_tokenizer("word", TEXT, 4096)
    unk = T.unk_id(tok)
    assert unk is not None
    ids = T.encode(tok, "Prince Bolkónski was")
    assert ids[1] == unk and ids[0] != unk
    assert T.decode(tok, ids) == "Prince <unk> was"
    # Punctuation is a token of its own and spacing is re-made on decoding; paragraph
    # breaks survive, line-wrapping newlines do not.
    text = "“Well, Prince, so Genoa and Lucca.”\n\nIt was in July,\n1805."
    assert T.decode(tok, T.encode(tok, text)) == "“Well, Prince, so Genoa and Lucca.”\n\nIt was in July, 1805."
    assert T.decode(tok, T.encode(tok, "you don’t tell")) == "you don’t tell"


def test_word_vocab_size_keeps_the_most_frequent():
    tok = T.train_tokenizer("word", "a a a a b b b c c d", 3)
    assert tok.get_vocab_size() == 3
    assert T.unk_id(tok) not in T.encode(tok, "a b")
    assert T.encode(tok, "c d") == [T.unk_id(tok)] * 2


def test_unknown_kind_lists_the_valid_ones():
    with pytest.raises(RnnlmError, match="bpe, word, char"):
        T.train_tokenizer("sentencepiece", TEXT, 100)


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_json_round_trip(kind):
    tok = T.train_tokenizer(kind, TEXT, 300)
    again = T.from_json(T.to_json(tok))
    assert T.to_json(again) == T.to_json(tok)
    assert T.encode(again, TEXT) == T.encode(tok, TEXT)
    assert T.tokenizer_kind(again) == kind
    assert T.is_lossless(again) == (kind != "word")


@pytest.mark.parametrize("bad", ["", "{not json", '{"model": 3}', 17])
def test_corrupt_json_is_a_one_line_error(bad):
    with pytest.raises(RnnlmError) as e:
        T.from_json(bad)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_chunked_encoding_equals_whole_encoding(kind):
    # Many small chunks, cut at line breaks between words: the same ids as one encode.
    tok = T.train_tokenizer(kind, TEXT, 400)
    text = TEXT + "ends \n  with spaces\n\n\nand   newlines  \n \n"
    chunks = T._chunks(text, size=50)
    assert len(chunks) > 10 and "".join(chunks) == text
    assert T.encode(tok, text) == tok.encode(text, add_special_tokens=False).ids


def test_token_bytes_are_what_byte_level_decoding_joins(bpe):
    table = T.token_bytes(bpe)
    assert len(table) == bpe.get_vocab_size() and all(table)
    text = "naïve 日本語 😀 “Well”"
    ids = T.encode(bpe, text)
    assert b"".join(table[i] for i in ids) == text.encode("utf-8")
    assert T.token_bytes(T.train_tokenizer("char", TEXT, 400)) is None  # whole characters


def stream_pieces(tok, ids) -> tuple[list[str], T.TextStream]:
    stream = T.TextStream(tok)
    pieces = [stream.add(i) for i in ids]
    pieces.append(stream.close())
    assert "".join(pieces) == stream.text
    return pieces, stream


def test_text_stream_holds_back_a_character_until_its_last_byte(bpe):
    table = T.token_bytes(bpe)
    byte_id = {b: i for i, b in enumerate(table) if len(b) == 1}
    data = "a😀é".encode("utf-8")  # 1 + 4 + 2 bytes, fed one byte at a time
    pieces, stream = stream_pieces(bpe, [byte_id[bytes([b])] for b in data])
    assert pieces == ["a", "", "", "", "😀", "", "é", ""]
    assert not T.ends_mid_character(table, [byte_id[b"\xc3"], byte_id[b"\xa9"]])
    assert T.ends_mid_character(table, [byte_id[b"a"], byte_id[b"\xc3"]])


@pytest.mark.parametrize("data, text", [
    (b"\xa9ab", "\ufffdab"),            # a stray continuation byte
    (b"\xc3a", "\ufffda"),              # a lead byte whose character never comes
    (b"\xf0\x9f\x98a\xc3\xa9", "\ufffdaé"),  # three bytes of four, then a letter: one U+FFFD
    (b"ok\xe6\x97", "ok"),              # cut at the end: dropped
])
def test_bytes_that_can_never_complete_are_one_replacement_character(bpe, data, text):
    byte_id = {b: i for i, b in enumerate(T.token_bytes(bpe)) if len(b) == 1}
    pieces, stream = stream_pieces(bpe, [byte_id[bytes([b])] for b in data])
    assert stream.text == text
    if not data.endswith(b"\xe6\x97"):  # what decoding all of it at once gives, too
        assert text == data.decode("utf-8", "replace") == T.decode(bpe, [byte_id[bytes([b])] for b in data])


@pytest.mark.parametrize("kind", ["char", "word"])
def test_text_stream_of_whole_character_tokens_is_the_decoded_text(kind):
    tok = T.train_tokenizer(kind, TEXT, 400)
    ids = T.encode(tok, "Well, Prince, so Genoa and Lucca")
    pieces, stream = stream_pieces(tok, ids)
    assert stream.text == T.decode(tok, ids) and all(pieces[:-1])


def test_unknown_words_are_found_without_encoding_all_the_text_again():
    tok = T.train_tokenizer("word", TEXT, 400)
    text = "Zorglub met Prince Qwx.\n" + TEXT * 5 + "Blorf\n"
    assert T.unknown_words(tok, text, limit=2) == ["Zorglub", "met"]
    assert T.unknown_words(tok, text) == ["Zorglub", "met", "Qwx", "Blorf"]
