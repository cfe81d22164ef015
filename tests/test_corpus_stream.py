"""A corpus read as a stream: blocks cut anywhere, the book-by-book cleaning, cuts where
tokenizing in pieces gives the ids of the whole, the split found in the stream, the
memory-mapped token cache, and War and Peace exactly as the in-memory path gives it."""

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from rnnlm import data, documents, prepare, token_cache
from rnnlm import tokenizer as T
from rnnlm.config import TOKENIZER_KINDS, DataConfig, TokenizerConfig
from rnnlm.errors import CannotWrite, RnnlmError
from tests.conftest import small_text

START = "*** START OF THE PROJECT GUTENBERG EBOOK {} ***"
END = "*** END OF THE PROJECT GUTENBERG EBOOK {} ***"


def old_clean_text(text: str) -> str:
    """The cleaning of one book as it was before books were cleaned one by one (the reference)."""
    text = text.replace("\r\n", "\n")
    start = text.find("*** START OF")
    if start != -1:
        eol = text.find("\n", start)
        text = "" if eol == -1 else text[eol + 1:]
    end = text.find("*** END OF")
    if end != -1:
        text = text[:end]
    text = text.strip("\n")
    return text + "\n" if text else ""


def streamed(path, monkeypatch, block: int, **kwargs) -> str:
    monkeypatch.setattr(documents, "BLOCK_BYTES", block)
    return "".join(documents.cleaned_text([Path(path)], **kwargs))


def book(title: str, body: str) -> str:
    return f"Title: {title}\r\n\r\n{START.format(title)}\r\n\r\n\r\n{body}\r\n\r\n{END.format(title)}\r\nLicense.\r\n"


# --- blocks cut anywhere ----------------------------------------------------------------


def test_a_multibyte_character_and_a_crlf_cut_by_blocks_come_out_whole(tmp_path, monkeypatch):
    text = "\ufeffNapoléon — «Москва»\r\n北京 and 😀.\r\nend\r\n"
    path = tmp_path / "t.txt"
    path.write_bytes(text.encode("utf-8"))
    expected = data.clean_text(data.read_text(path))
    for block in range(1, 12):  # every cut: inside é, —, Cyrillic, CJK, the emoji, between \r and \n
        monkeypatch.setattr(documents, "BLOCK_BYTES", block)
        pieces = list(documents.decoded_blocks(path))
        assert "".join(pieces) == text[1:].replace("\r\n", "\n")
        assert not any(p.endswith("\r") for p in pieces[:-1])
        assert streamed(path, monkeypatch, block) == expected


def test_stream_errors_match_reading_whole(tmp_path, monkeypatch):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"first line\nsecond\nNapol\xe9on\n")
    with pytest.raises(RnnlmError) as whole:
        data.read_text(bad)
    for block in (1, 3, 1 << 20):
        monkeypatch.setattr(documents, "BLOCK_BYTES", block)
        with pytest.raises(RnnlmError) as stream:
            list(documents.decoded_blocks(bad))
        assert str(stream.value) == str(whole.value)  # byte 0xe9 at offset 23 (line 3)
    assert "offset 23 (line 3)" in str(whole.value)
    (tmp_path / "blank.txt").write_text(" \n\n", encoding="utf-8")
    with pytest.raises(RnnlmError, match="is empty"):
        list(documents.decoded_blocks(tmp_path / "blank.txt"))
    with pytest.raises(RnnlmError, match="does not exist"):
        list(documents.decoded_blocks(tmp_path / "nope.txt"))


# --- the Gutenberg cleaning, book by book -------------------------------------------------


def test_one_book_is_cleaned_as_before(tmp_path, monkeypatch):
    rng = random.Random(0)
    texts = [book("A", small_text()[:3000]), "no marks at all\n\nat all\n", "\n\n" + small_text()[:500],
             f"head\n{START.format('X')}", f"text\n{END.format('X')}\nafter",
             f"{END.format('X')}\n{START.format('Y')}\nbody\n",
             "x\r", "a\r\r\nb\n\n\n"]
    for i, text in enumerate(texts):
        path = tmp_path / f"{i}.txt"
        path.write_bytes(text.encode("utf-8"))
        assert data.clean_text(text) == old_clean_text(text)
        for block in (1, 2, 5, rng.randint(6, 40), 1 << 20):
            if old_clean_text(text).strip():
                assert streamed(path, monkeypatch, block) == old_clean_text(text), (i, block)


def test_a_file_of_many_books_keeps_every_book(tmp_path, monkeypatch):
    bodies = ["First book.\nIts text.", "Second book,\r\nin two lines.", "Third."]
    text = "".join(book(f"B{i}", body) for i, body in enumerate(bodies))
    path = tmp_path / "books.txt"
    path.write_bytes(text.encode("utf-8"))
    expected = "\n".join(body.replace("\r\n", "\n") + "\n" for body in bodies)
    assert data.clean_text(text) == expected
    for block in (1, 7, 64, 1 << 20):
        stats = documents.ReadStats()
        assert streamed(path, monkeypatch, block, stats=stats) == expected
        assert stats.documents == 3 and stats.files == 1
        assert stats.removed == len(text.replace("\r\n", "\n")) - (len(expected) - 2)  # 2 separators
        assert stats.describe().startswith("3 documents, ")


def test_documents_of_several_files_are_joined_by_the_separator(tmp_path):
    (tmp_path / "a.txt").write_text(book("A", "alpha"), encoding="utf-8")
    (tmp_path / "b.txt").write_text(book("B", ""), encoding="utf-8")  # nothing left: no separator for it
    (tmp_path / "c.txt").write_text("beta\n", encoding="utf-8")
    files = [tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "c.txt"]
    assert "".join(documents.cleaned_text(files, separator="\n---\n", warn=False)) == "alpha\n\n---\nbeta\n"
    with pytest.warns(UserWarning, match="skipped 1 of the 3 files"):
        assert "".join(documents.cleaned_text(files, warn=False)) == data.read_documents(files)


def test_the_characters_removed_count_only_what_the_files_held_and_the_text_lost(tmp_path):
    texts = {"a.txt": "no final newline", "b.txt": "\n\nthree trailing\n\n\n", "c.txt": "crlf\r\nends\r\n",
             "d.txt": book("D", "a book")}
    for name, text in texts.items():
        (tmp_path / name).write_bytes(text.encode("utf-8"))
    stats = documents.ReadStats()
    out = "".join(documents.cleaned_text(sorted(tmp_path.iterdir()), stats=stats, warn=False))
    assert out == "no final newline\n\nthree trailing\n\ncrlf\nends\n\na book\n"
    # b loses 2 leading and 2 of its 3 trailing newlines; d its Gutenberg header and footer.
    header_footer = len(book("D", "a book").replace("\r\n", "\n")) - len("a book\n")  # CRLF read as LF
    assert stats.removed == 4 + header_footer and stats.documents == 4


def test_a_stream_skips_a_folders_empty_files_as_reading_whole_does(tmp_path, monkeypatch):
    (tmp_path / "a.txt").write_text("first\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("  \n\t\n", encoding="utf-8")
    (tmp_path / "c.txt").write_text("*** START OF THE BOOK ***\n", encoding="utf-8")
    (tmp_path / "d.txt").write_text("", encoding="utf-8")
    (tmp_path / "e.txt").write_text("\n  last\n", encoding="utf-8")
    files = data.corpus_files(tmp_path)
    with pytest.warns(UserWarning) as caught:
        whole = data.read_documents(files)
    assert whole == "first\n\n  last\n"
    assert "".join(documents.cleaned_text(files, warn=False)) == whole
    dc = DataConfig(path=str(tmp_path), url=None, cache_dir=None, split=(0.5, 0.5, 0))
    with pytest.warns(UserWarning) as streamed_warnings:  # said once, by the first of the passes
        corpus = data.load_corpus(dc, TokenizerConfig(kind="char"), progress=False)
    assert [str(w.message) for w in streamed_warnings] == [str(caught[0].message)]
    assert str(caught[0].message).startswith(f"skipped 3 of the 5 files from {tmp_path}, which have no text: ")
    assert sum(corpus.chars.values()) == len(whole)
    for name in ("a.txt", "e.txt"):
        (tmp_path / name).write_text(" \n", encoding="utf-8")
    with pytest.raises(RnnlmError, match=f"^none of the 5 files from {tmp_path} has text"):
        data.load_corpus(dc, TokenizerConfig(kind="char"), progress=False)


def test_a_stream_refuses_what_is_not_a_regular_file(tmp_path):
    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)
    for path, problem in [(fifo, "is a named pipe (FIFO)"), (Path("/dev/zero"), "is a character device")]:
        with pytest.raises(RnnlmError) as e:
            list(documents.decoded_blocks(path))  # would wait for a writer, or read until memory runs out
        assert str(e.value) == f"data file {path} {problem}, not a regular file; set data.path to a text file"


def test_a_start_mark_far_into_a_file_is_found(tmp_path, monkeypatch):
    text = "preface " * 200 + "\n" + book("Late", "the book")
    path = tmp_path / "late.txt"
    path.write_text(text, encoding="utf-8")
    assert streamed(path, monkeypatch, 64) == "the book\n" == old_clean_text(text)
    utf16 = tmp_path / "late16.txt"
    utf16.write_text(text, encoding="utf-16")
    assert streamed(utf16, monkeypatch, 64, encoding="utf-16") == "the book\n"


# --- cuts where tokenizing in pieces gives the ids of the whole ---------------------------

AWKWARD = ("Line one.\n  indented line\n\n\n   \n  spaced\nword\n \nx\n\t\ttabbed\n“Quoted,” he said.\n"
           "don't stop\nNapoléon — Москва\n\n\nend")


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_pieces_encode_to_the_ids_of_the_whole(kind, monkeypatch):
    rng = random.Random(1)
    text = "\n".join(AWKWARD for _ in range(40)) + "\n" + "one long line of words " * 300
    tok = T.train_tokenizer(kind, text, 300)
    whole = tok.encode(text, add_special_tokens=False).ids
    monkeypatch.setattr(T, "_LONG_LINE", 500)  # so the long line is cut at its spaces
    for size in (1, 7, 50, 400):
        blocks, i = [], 0
        while i < len(text):
            k = rng.randint(1, 300)
            blocks.append(text[i:i + k])
            i += k
        pieces = list(T.safe_pieces(blocks, size))
        assert "".join(pieces) == text
        assert [i for part in T.encode_pieces(tok, blocks) for i in part] == whole
        assert [i for p in pieces for i in tok.encode(p, add_special_tokens=False).ids] == whole, size
    assert T.to_json(T.train_tokenizer(kind, iter(blocks), 300)) == T.to_json(tok)


# --- the split, found in the stream --------------------------------------------------------


@pytest.mark.parametrize("fractions", [(0.8, 0.1, 0.1), (0.9, 0.1, 0), (0.5, 0.25, 0.25)])
@pytest.mark.parametrize("max_eval_chars", [None, 7, 100])
def test_the_split_found_in_a_stream_is_the_split_of_the_whole(fractions, max_eval_chars):
    rng = random.Random(2)
    texts = ["ab\n", "abc", "a\nb\nc\n", "abcdefghij\n", "one line only, long enough\n", "x\n" * 5,
             "\n".join("w" * rng.randint(0, 9) for _ in range(200)) + "\n"]
    for text in texts:
        whole = data.split_text(text, fractions, max_eval_chars)
        n = len(text)
        blocks = [text[i:i + 3] for i in range(0, n, 3)]
        index = prepare.NewlineIndex(prepare.cut_points(n, fractions, max_eval_chars)).scan(iter(blocks))
        train_end, valid_end = prepare.split_points(n, fractions, index.find, max_eval_chars)
        assert (text[:train_end], text[train_end:valid_end], text[valid_end:]) == \
            (whole["train"], whole["valid"], whole["test"]), text


def test_a_large_text_holds_out_at_most_max_eval_chars_for_validation_and_for_test():
    text = "".join(f"line {i:05d}\n" for i in range(10_000))  # 110,000 characters, 11 a line
    parts = data.split_text(text, (0.8, 0.1, 0.1), max_eval_chars=5_000)
    # Each cut is after the first newline at or after the capped fraction's position.
    assert [len(parts[k]) for k in ("train", "valid", "test")] == [100_001, 5_005, 4_994]
    assert "".join(parts.values()) == text
    assert parts["test"].startswith("line 09546")
    # A text whose tenths are under the cap splits as without it (War and Peace's 320 K).
    assert data.split_text(text, (0.8, 0.1, 0.1), max_eval_chars=11_000) == data.split_text(text)
    assert data.split_text(text, (0.9, 0.1, 0), max_eval_chars=5_000)["test"] == ""


def test_a_capped_split_gives_training_the_rest_and_keys_its_own_token_cache(tmp_path, text_file):
    tc = TokenizerConfig(kind="char", vocab_size=100)
    corpus = {cap: data.load_corpus(DataConfig(path=str(text_file), url=None, max_eval_chars=cap,
                                               cache_dir=str(tmp_path / "cache")), tc, progress=False)
              for cap in (200, None)}
    cut, whole = corpus[200].chars, corpus[None].chars
    assert cut["valid"] < 300 and cut["test"] < 300 < whole["valid"]
    assert cut["train"] > whole["train"] and sum(cut.values()) == sum(whole.values())
    assert len(list((tmp_path / "cache").glob("*.ids"))) == 2  # neither read the other's ids
    assert len(corpus[200].ids["valid"]) == cut["valid"]  # char ids: one per character


# --- the token cache -------------------------------------------------------------------------


@pytest.mark.parametrize("vocab", [300, 70_000])
def test_the_token_cache_round_trips_through_a_memory_map(tmp_path, vocab):
    rng = np.random.default_rng(0)
    ids = {"train": rng.integers(0, vocab, 5000).tolist(), "valid": [vocab - 1, 0], "test": []}
    dtype = token_cache.dtype_for(vocab)
    assert dtype.itemsize == (2 if vocab <= 65536 else 4)

    def fill(writer):
        for name, values in ids.items():
            writer.write(name, [values[:1000], values[1000:]])
        return {"note": "kept"}
    file = tmp_path / "c.ids"
    meta, mapped = token_cache.write(file, dtype, fill, elsewhere="elsewhere")
    assert meta["note"] == "kept" and meta["counts"] == {name: len(v) for name, v in ids.items()}
    assert file.stat().st_size > 5002 * dtype.itemsize
    again_meta, again = token_cache.read(file)
    for name, values in ids.items():
        assert mapped[name].tolist() == values == again[name].tolist()
    assert again_meta == meta
    assert not list(tmp_path.glob(".*.tmp"))


def test_the_token_cache_is_written_atomically(tmp_path):
    file = tmp_path / "c.ids"
    token_cache.write(file, np.dtype("<u2"), lambda w: w.write("train", [[1, 2, 3]]) or {}, elsewhere="x")
    before = file.read_bytes()

    def broken(writer):
        writer.write("train", [[4, 5, 6]])
        raise KeyboardInterrupt  # killed halfway
    with pytest.raises(KeyboardInterrupt):
        token_cache.write(file, np.dtype("<u2"), broken, elsewhere="x")
    assert file.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))


def test_an_unwritable_cache_warns_and_maps_a_temporary_file(tmp_path, monkeypatch):
    def full(path, write, **kwargs):
        raise CannotWrite(Path(path), "no space left on the device", "no c.ids was written", "free some disk space",
                          "set data.cache_dir to another disk")
    monkeypatch.setattr(token_cache, "atomic_write", full)
    with pytest.warns(UserWarning, match="token cache not saved"):
        _, ids = token_cache.write(tmp_path / "c.ids", np.dtype("<u2"), lambda w: w.write("train", [[7, 8]]) or {},
                                   elsewhere="x")
    assert ids["train"].tolist() == [7, 8]


def test_a_cache_file_that_does_not_parse_reads_as_absent(tmp_path):
    file = tmp_path / "c.ids"
    token_cache.write(file, np.dtype("<u2"), lambda w: w.write("train", [[1, 2, 3]]) or {}, elsewhere="x")
    whole = file.read_bytes()
    for broken in (whole[:-1], whole[:3], b"", whole[:-8] + b"NOTMAGIC", b"\0\0" + whole,
                   whole.replace(b'"format": 2', b'"format": 9')):
        file.unlink()
        file.write_bytes(broken)
        assert token_cache.read(file) is None
    assert token_cache.read(tmp_path / "missing.ids") is None


# --- War and Peace, exactly as the in-memory path gives it -----------------------------------


def test_a_second_run_reads_the_text_once_for_its_split_and_ids(tmp_path, monkeypatch):
    path = tmp_path / "story.txt"
    path.write_text(small_text(), encoding="utf-8")
    dc = DataConfig(path=str(path), url=None, cache_dir=str(tmp_path / "cache"))
    first = data.load_corpus(dc, TokenizerConfig(kind="char"), progress=False)
    assert len(list((tmp_path / "cache").glob("*.split"))) == 1 and len(list((tmp_path / "cache").glob("*.ids"))) == 1
    passes, real = [], prepare.Sources.texts

    def texts(self, desc, *args, **kwargs):
        passes.append(desc)
        return real(self, desc, *args, **kwargs)

    monkeypatch.setattr(prepare.Sources, "texts", texts)
    again = data.load_corpus(dc, TokenizerConfig(kind="char"), progress=False)
    assert passes == ["reading"] and again.chars == first.chars
    (record,) = (tmp_path / "cache").glob("*.split")
    record.write_text('{"train": 1, "valid": 2, "test": 3}', encoding="utf-8")  # not a split of this text
    assert data.read_corpus(dc, progress=False).chars == first.chars and passes[-2:] == ["reading", "splitting"]


def test_a_run_without_a_token_cache_keeps_the_ids_in_a_temporary_file(tmp_path, text_file, capsys):
    from rnnlm.train import train
    from tests.conftest import tiny_config

    result = train(tiny_config(tmp_path, text_file, "data.cache_dir=null", "train.max_steps=2"))
    assert result["steps"] == 2 and not (tmp_path / "cache").exists()
    out = capsys.readouterr().out
    assert "characters (train / valid / test); 1 document, " in out and "; no token cache (data.cache_dir null)" in out


@pytest.mark.slow
@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_war_and_peace_gives_the_ids_of_the_in_memory_path(war_and_peace, tmp_path, kind, monkeypatch):
    # The reference: the whole text in memory, split, the tokenizer trained on the train
    # split as one string, and every split encoded in one call.
    splits = data.split_text(old_clean_text(data.read_text(war_and_peace)))
    tok = T.train_tokenizer(kind, splits["train"], 4096)
    monkeypatch.setattr(documents, "BLOCK_BYTES", 100_003)  # blocks cut inside lines and characters
    corpus = data.load_corpus(DataConfig(path=str(war_and_peace), url=None, cache_dir=str(tmp_path)),
                              TokenizerConfig(kind=kind, vocab_size=4096), progress=False)
    assert T.to_json(corpus.tokenizer) == T.to_json(tok)
    for name in data.SPLITS:
        assert corpus.chars[name] == len(splits[name])
        assert corpus.ids[name].tolist() == tok.encode(splits[name], add_special_tokens=False).ids
    assert corpus.ids["train"].dtype == torch.uint16
    assert corpus.chars == {"train": 2_561_316, "valid": 320_185, "test": 320_133}
