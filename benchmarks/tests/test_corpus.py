"""benchmarks/corpus.py: synthetic corpora of a given size, made of many varied books."""

import argparse

import pytest

from benchmarks import corpus
from rnnlm import documents
from tests.conftest import small_text


def test_sizes_are_read_in_binary_units():
    assert corpus.parse_size("10M") == 10 << 20 and corpus.parse_size("1G") == 1 << 30
    assert corpus.parse_size("500k") == 500 << 10 and corpus.parse_size("123") == 123
    with pytest.raises(argparse.ArgumentTypeError, match="10M"):
        corpus.parse_size("ten")


def test_a_synthetic_corpus_is_many_varied_books_of_the_size_asked(tmp_path):
    book = tmp_path / "book.txt"
    book.write_text(small_text(200).replace(". ", ".\n\n"), encoding="utf-8")
    path = corpus.make_corpus(tmp_path / "c.txt", 2 << 20, [book])
    assert 2 << 20 <= path.stat().st_size < (2 << 20) + (3 << 20)
    stats = documents.ReadStats()
    text = "".join(documents.cleaned_text([path], stats=stats))
    assert stats.documents >= 1 and "*** START OF" not in text and "*** END OF" not in text
    paragraphs = text.split("\n\n")
    assert len(set(paragraphs)) > 10 and paragraphs[:20] != paragraphs[20:40]  # not one string repeated
    plain = corpus.make_corpus(tmp_path / "plain.txt", 1 << 20, [book], marks=False)
    assert "*** START OF" not in plain.read_text(encoding="utf-8")
