"""Preparing a corpus in bounded memory: read, clean, split, learn the vocabulary,
tokenize and cache, every step over a stream of text pieces, never the whole text.

The cleaned corpus (documents.cleaned_text) is read in passes, each with a progress bar
of megabytes read, its rate and the time left:

1. reading: the cleaned text's characters and its sha256, which names the token cache;
   when the cache holds this text with these tokenizer settings, that is all a run reads;
2. splitting: where the split rule (`split_points`) cuts, from the newlines it finds
   (kept beside the token cache, so that a second run need not look again); the
   settings sized to the text (`auto`) are resolved from the train split's characters
   then (sizing.resolve_auto), before the vocabulary is learned;
3. learning the vocabulary: the tokenizer is trained from an iterator over the train
   split (bpe and word on its first `TOKENIZER_CHARS` characters: see below; char on all
   of it);
4. tokenizing: each split is encoded a batch of chunks at a time, the ids written to the
   token cache (token_cache.py) as they come, which is then mapped, not loaded.

So memory holds a block of text, a batch of ids and the tokenizer's counts, whatever the
corpus's size. The split is the same rule as for one text in memory (a text's 80%, then
the first newline), found by position in the stream; a pre-split dataset's texts are
read as they are split.

The vocabulary cap: byte-level BPE and word vocabularies are learned from at most the
first `TOKENIZER_CHARS` (100 million) characters of the train split. A vocabulary of
4,096 tokens (what `auto` gives a large text) or 16,384 is settled long before that,
while counting the words of a gigabyte would take most of a run's preparation and
memory; every character is still tokenized and trained on.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator

from tokenizers import Tokenizer

from . import token_cache
from . import tokenizer as tokenization
from .documents import ReadStats, cleaned_text
from .errors import CannotWrite, RnnlmError
from .files import write_text_atomic

SPLITS = ("train", "valid", "test")
TOKENIZER_CHARS = 100_000_000


def split_fractions(n: int, fractions: tuple, max_eval_chars: int | None = None) -> tuple[Fraction, ...]:
    """The split rule's (train, valid, test) fractions of a text of `n` characters:
    `fractions` taken as the decimals they are written as (0.8 is 4/5 exactly), with the
    validation and the test fraction each lowered to `max_eval_chars` characters' worth
    where it would hold more, the rest going to training: a large text needs no more
    held-out text to score it precisely, and scoring it takes time."""
    train, valid, test = (Fraction(str(f)) for f in fractions)
    if max_eval_chars is not None and n > 0:
        cap = Fraction(max_eval_chars, n)
        valid, test = min(valid, cap), min(test, cap)
        train = 1 - valid - test
    return train, valid, test


def split_points(n: int, fractions: tuple, find: Callable[[int], int],
                 max_eval_chars: int | None = None) -> tuple[int, int]:
    """(end of train, end of validation) of a text of `n` characters by the split rule:
    train ends after the first newline at or after the train fraction of the characters,
    validation after the first at or after the first two fractions (at `n` when the test
    fraction is 0), the fractions being `split_fractions`'. Where no such newline leaves
    the later splits non-empty (a text of a few lines), the cut falls at that character
    position instead. `find(p)` is the index of the first newline at or after p (-1 when
    none). The cuts are exact (integer arithmetic on the fractions)."""
    train, valid, test = split_fractions(n, fractions, max_eval_chars)
    parts = 3 if test else 2
    if n < parts:
        raise RnnlmError(f"the text has {n} character(s) after cleaning, too few for train, validation"
                         + (" and test splits" if test else " splits") + "; use a longer text")
    train_end = _cut(n, find, train, lo=1, hi=n - parts + 1)
    valid_end = _cut(n, find, train + valid, lo=train_end + 1, hi=n - 1) if test else n
    return train_end, valid_end


def _cut(n: int, find, fraction: Fraction, lo: int, hi: int) -> int:
    """End (exclusive) of a split: after the first newline at or after `fraction` of the
    text, if that end lies in [lo, hi]; else the character position itself, clamped."""
    at = -(-n * fraction.numerator // fraction.denominator)  # ceil, in exact integer arithmetic
    nl = find(max(at, lo - 1))
    if nl != -1 and lo <= nl + 1 <= hi:
        return nl + 1
    return min(max(at, lo), hi)


def cut_points(n: int, fractions: tuple, max_eval_chars: int | None = None) -> list[int]:
    """The positions `split_points` may ask `find` about, before it has an answer: every
    `find(p)` it makes is at one of these or right after the newline found for one."""
    train, valid, _ = split_fractions(n, fractions, max_eval_chars)
    ats = [-(-n * f.numerator // f.denominator) for f in (train, train + valid)]
    return sorted({p for at in ats for p in (at, max(at, 1), min(at, n))} | {0, 1, max(n - 2, 0)})


class NewlineIndex:
    """Answers `find(p)` for the points of `cut_points` from one pass over the text: for
    each point, the first newline at or after it and the newline after that one."""

    def __init__(self, points: list[int]):
        self.points = points
        self.first: dict[int, int] = {}  # point -> first newline at or after it
        self.next: dict[int, int] = {}  # newline found above -> the next newline

    def scan(self, pieces: Iterator[str]) -> "NewlineIndex":
        offset = 0
        for piece in pieces:
            self._look(piece, offset)
            offset += len(piece)
            if len(self.first) == len(self.points) and all(nl in self.next for nl in self.first.values()):
                break
        return self

    def _look(self, piece: str, offset: int) -> None:
        for p in self.points:
            if p not in self.first and p < offset + len(piece):
                i = piece.find("\n", max(p - offset, 0))
                if i != -1:
                    self.first[p] = offset + i
        for nl in set(self.first.values()) - set(self.next):
            if nl + 1 < offset + len(piece):
                i = piece.find("\n", max(nl + 1 - offset, 0))
                if i != -1:
                    self.next[nl] = offset + i

    def find(self, p: int) -> int:
        if p in self.points:
            return self.first.get(p, -1)
        return self.next.get(p - 1, -1)  # right after a newline found for a point


class Stream:
    """A stream of text pieces read off in consecutive spans of given lengths."""

    def __init__(self, pieces: Iterator[str]):
        self.pieces, self.rest = iter(pieces), ""

    def take(self, n: int) -> Iterator[str]:
        """The next `n` characters, as pieces."""
        while n > 0:
            piece = self.rest or next(self.pieces, "")
            if not piece:
                return
            out, self.rest = piece[:n], piece[n:]
            n -= len(out)
            yield out


@dataclass
class Sources:
    """What a corpus is read from: the files of one text to split by `fractions`, or,
    pre-split, the files of each split (`pre_split`: split -> files; none for no test)."""

    files: list[Path] = field(default_factory=list)
    pre_split: dict[str, list[Path]] | None = None
    fractions: tuple = (0.8, 0.1, 0.1)
    max_eval_chars: int | None = None  # see split_fractions
    name: str = ""  # data.path, as messages name it
    separator: str = "\n"
    encoding: str = "utf-8"
    errors: str = "strict"
    progress: bool = True

    def texts(self, desc: str, stats: ReadStats | None = None, warn: bool = False) -> dict[str, Iterator[str]]:
        """The cleaned text of each stream read (one "text" to split, or each split), each
        with a progress bar of the megabytes read; `warn`: say which files were skipped as
        empty (the first pass says it)."""
        groups = self.pre_split if self.pre_split is not None else {"text": self.files}
        return {name: self._read(files, desc if name == "text" else f"{desc} {name}", stats, warn)
                for name, files in groups.items()}

    def _read(self, files: list[Path], desc: str, stats: ReadStats | None, warn: bool) -> Iterator[str]:
        bar = _bar(desc, sum(_size(f) for f in files), self.progress)
        try:
            yield from cleaned_text(files, self.separator, self.encoding, self.errors, stats, bar.update, warn)
        finally:
            bar.close()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _bar(desc: str, total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, disable=not enabled,
                dynamic_ncols=True, leave=False)


def scan(sources: Sources) -> tuple[str, dict[str, int], ReadStats]:
    """Pass 1: (sha256 of the cleaned text, characters of each stream, what was read).

    The hash is of the text as one string; a pre-split dataset's splits are joined by a
    NUL character for it. A corpus with no text left after cleaning is refused."""
    stats, digest, chars, texty = ReadStats(), hashlib.sha256(), {}, False
    for i, (name, pieces) in enumerate(sources.texts("reading", stats, warn=True).items()):
        digest.update(b"\0" * (i > 0))
        chars[name] = 0
        for piece in pieces:
            digest.update(piece.encode("utf-8"))
            chars[name] += len(piece)
            texty = texty or not piece.isspace()
    if not texty:
        raise RnnlmError(f"data file {sources.name} has no text left after removing the Project Gutenberg "
                         "header/footer; use another file")
    return digest.hexdigest(), chars, stats


def split_chars(sources: Sources, chars: dict[str, int], record: Path | None = None) -> dict[str, int]:
    """Pass 2: each split's characters (for a text to split, where the rule cuts it).

    With a `record` (a file named by the text's hash and the split rule's settings), the
    split found is kept there, and read from it instead of the text the next time; a
    record that cannot be written or read only costs this pass again."""
    if sources.pre_split is not None:
        return {name: chars.get(name, 0) for name in SPLITS}
    n = chars["text"]
    recalled = _recall(record, n) if record is not None else None
    if recalled is not None:
        return recalled
    fractions, cap = sources.fractions, sources.max_eval_chars
    index = NewlineIndex(cut_points(n, fractions, cap)).scan(sources.texts("splitting")["text"])
    train_end, valid_end = split_points(n, fractions, index.find, cap)
    found = {"train": train_end, "valid": valid_end - train_end, "test": n - valid_end}
    if record is not None:
        try:
            write_text_atomic(record, json.dumps(found))
        except (CannotWrite, OSError):  # a full disk: the token cache says so
            pass
    return found


def _recall(record: Path, n: int) -> dict[str, int] | None:
    """The split kept in `record`, when it is there and is a split of `n` characters."""
    try:
        kept = json.loads(record.read_text(encoding="utf-8"))
        found = {name: int(kept[name]) for name in SPLITS}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return found if sum(found.values()) == n and min(found.values()) >= 0 else None


def split_texts(sources: Sources, chars: dict[str, int], desc: str) -> Iterator[tuple[str, Iterator[str]]]:
    """(split, its text as pieces) for train, valid and test in turn, from one read."""
    texts = sources.texts(desc)
    if sources.pre_split is not None:
        for name in SPLITS:
            yield name, texts.get(name, iter(()))
        return
    stream = Stream(texts["text"])
    for name in SPLITS:
        yield name, stream.take(chars[name])


def train_tokenizer(sources: Sources, chars: dict[str, int], kind: str, vocab_size: int) -> Tokenizer:
    """Pass 3: a tokenizer trained from the train split, read as a stream (see the cap above)."""
    name, train = next(split_texts(sources, chars, "learning the vocabulary"))
    limit = chars["train"] if kind == "char" else min(chars["train"], TOKENIZER_CHARS)
    return tokenization.train_tokenizer(kind, Stream(train).take(limit), vocab_size)


def encode_into(writer: token_cache.IdsWriter, sources: Sources, chars: dict[str, int], tok: Tokenizer) -> None:
    """Pass 4: every split's ids, written as they are made."""
    for name, text in split_texts(sources, chars, "tokenizing"):
        writer.write(name, tokenization.encode_pieces(tok, text))
