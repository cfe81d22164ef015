"""Tokenizers: text <-> token ids, built on Hugging Face ``tokenizers``.

Three kinds, all trained on the train split only and all serialisable to one JSON string
(saved as ``tokenizer.json`` in the run directory and inside every checkpoint):

``bpe``  (the default) byte-level BPE, as in GPT-2. The text is first mapped to bytes, so
         every string encodes, including characters never seen in training, and
         ``decode(encode(x)) == x`` always holds. Lossless, so bits per character are
         exact and comparable with ``char``. Use it unless you have a reason not to.
``word`` word-level: words, punctuation marks and paragraph breaks are the tokens; the
         ``vocab_size`` most frequent are kept and everything else becomes ``<unk>``.
         The classic next-word setting (Penn Treebank, WikiText). Lossy: spacing is
         re-made on decoding and unknown words come back as ``<unk>``, so its bits per
         character are not comparable with the lossless kinds.
``char`` one token per character (newline included); the vocabulary is the characters
         of the training text plus ``<unk>``. Lossless for any text whose characters
         were seen in training. The char-rnn setting: small vocabulary, long sequences.
"""

from __future__ import annotations

import codecs
import json
import re
from typing import Iterable, Iterator

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from .config import TOKENIZER_KINDS
from .errors import RnnlmError

UNK = "<unk>"

# Word-level tokens: paragraph breaks, clitics ("’s", "’t" glue back onto their word when
# decoding), words, and single punctuation marks. Single newlines (line wrapping in the
# source file) and spaces are not tokens: they carry no meaning in prose.
_WORD_PATTERN = r"\n\n|['’]\w+|\w+|[^\w\s]"
_PARAGRAPH = "\n\n"
# On decoding, word tokens are joined with spaces; these marks take no space before
# (closing) or after (opening) them.
_NO_SPACE_BEFORE = [".", ",", ";", ":", "!", "?", ")", "]", "}", "”", "’", "'", "%", "—", "-"]
_NO_SPACE_AFTER = ["(", "[", "{", "“", "‘", "—", "-"]

# Encoding is batched over chunks of about this many characters (see safe_pieces); a
# line longer than _LONG_LINE is cut at a space instead.
_CHUNK_CHARS = 16_384
_LONG_LINE = 64 * _CHUNK_CHARS
# Chunks encoded in one parallel call when encoding a stream (about 1 MB of text).
_BATCH_CHUNKS = 64
# A surrogate code point alone: what Python makes of bytes that are not UTF-8 on the command
# line or stdin (surrogateescape) and of a JSON "\ud83d" escape without its pair. No text
# holds one, and the tokenizers refuse it.
_SURROGATE = re.compile("[\ud800-\udfff]")


def train_tokenizer(kind: str, text: str | Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a tokenizer of the given kind (``bpe``, ``word`` or ``char``) on ``text``.

    ``text`` is a string or an iterator of its pieces (a corpus read as a stream): the
    pieces are re-cut where every kind tokenizes alike (see `safe_pieces`), so the
    tokenizer is the same as from the joined string. ``vocab_size`` is the target
    vocabulary for ``bpe`` (at least the 256 bytes) and ``word`` (``<unk>`` included);
    ``char`` takes every character of ``text`` and ignores it. Pass the train split only,
    so that validation and test stay unseen.
    """
    if kind not in TOKENIZER_KINDS:
        raise RnnlmError(f"unknown tokenizer kind {kind!r}; use one of: {', '.join(TOKENIZER_KINDS)}")
    if not isinstance(vocab_size, int) or vocab_size < 1:
        raise RnnlmError(f"tokenizer vocab_size must be a positive integer, got {vocab_size!r}")
    pieces = safe_pieces([text] if isinstance(text, str) else text)
    if kind == "bpe":
        return _train_bpe(pieces, vocab_size)
    if kind == "word":
        return _train_word(pieces, vocab_size)
    return _train_char(pieces)


def _train_bpe(pieces: Iterator[str], vocab_size: int) -> Tokenizer:
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet):
        raise RnnlmError(
            f"bpe vocab_size {vocab_size} is smaller than the {len(alphabet)} bytes it must "
            f"hold; set tokenizer.vocab_size to at least {len(alphabet)}"
        )
    tok = Tokenizer(models.BPE())
    # add_prefix_space=False keeps the text exactly as written: nothing is inserted, so
    # decoding gives back the original string byte for byte.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=alphabet, special_tokens=[], show_progress=False
    )
    tok.train_from_iterator(pieces, trainer=trainer, length=None)
    return tok


def _train_word(pieces: Iterator[str], vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.normalizer = _word_normalizer()
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(_WORD_PATTERN), behavior="removed", invert=True)
    tok.decoder = _word_decoder()
    trainer = trainers.WordLevelTrainer(
        vocab_size=vocab_size, min_frequency=1, special_tokens=[UNK], show_progress=False
    )
    tok.train_from_iterator(pieces, trainer=trainer)
    return tok


def _word_normalizer():
    # Any run of whitespace holding a blank line is one paragraph break.
    return normalizers.Replace(Regex(r"\s*\n[^\S\n]*\n\s*"), _PARAGRAPH)


def _word_decoder():
    # WordPiece (with a prefix that never occurs) joins the tokens with spaces; Fuse makes
    # one string of them, so the Replace steps below can see across token boundaries.
    steps = [decoders.WordPiece(prefix="\x00##", cleanup=False), decoders.Fuse()]
    steps.append(decoders.Replace(Regex(r" ?\n\n ?"), _PARAGRAPH))
    steps += [decoders.Replace(" " + mark, mark) for mark in _NO_SPACE_BEFORE]
    steps += [decoders.Replace(mark + " ", mark) for mark in _NO_SPACE_AFTER]
    return decoders.Sequence(steps)


def _train_char(pieces: Iterator[str]) -> Tokenizer:
    # The vocabulary is known exactly (sorted, so it does not depend on hashing order);
    # WordLevel over single-character pieces gives one token per character.
    seen: set[str] = set()
    for piece in pieces:
        seen.update(piece)
    chars = sorted(seen - {UNK})
    vocab = {UNK: 0, **{c: i + 1 for i, c in enumerate(chars)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return tok


def _chunks(text: str, size: int = _CHUNK_CHARS) -> list[str]:
    """``text`` cut into pieces of about ``size`` characters for batched encoding (see `safe_pieces`)."""
    return list(safe_pieces([text], size))


def safe_pieces(texts: Iterable[str], size: int = _CHUNK_CHARS) -> Iterator[str]:
    """The text given as `texts` (a stream of pieces cut anywhere), re-cut into pieces of
    about ``size`` characters where tokenizing in pieces gives the ids of the whole.

    Cuts go right after a newline with non-space characters on both sides (an ordinary
    line break inside prose): every kind tokenizes such a newline the same way alone as
    in context (byte-level BPE makes it a piece of its own; word drops it as whitespace;
    char is per character), so encoding the pieces and concatenating gives exactly the
    ids of encoding the whole text, however the text was given. A stretch of
    `_LONG_LINE` characters without such a newline (a file of one line) is cut before a
    space between a non-space character and a letter instead (byte-level BPE starts a
    piece " word" there; word and char drop or keep the space alike); a text with
    neither is one piece.
    """
    buf = ""
    for text in texts:
        buf += text
        at = 0  # where the next piece starts
        while len(buf) - at > size:
            cut = _safe_cut(buf, at + size)
            if cut is None and len(buf) - at > _LONG_LINE:
                cut = _space_cut(buf, at + size)
            if cut is None:
                break
            yield buf[at:cut]
            at = cut
        buf = buf[at:]
    if buf:
        yield buf


def _safe_cut(text: str, pos: int) -> int | None:
    """Index just after the first newline at or after ``pos`` with non-space on both sides."""
    while True:
        i = text.find("\n", pos)
        if i == -1 or i + 1 >= len(text):
            return None
        if i > 0 and _plain(text[i - 1]) and _plain(text[i + 1]):
            return i + 1
        pos = i + 1


def _space_cut(text: str, pos: int) -> int | None:
    """Index of the first space at or after ``pos`` between a non-space character and a letter."""
    while True:
        i = text.find(" ", pos)
        if i == -1 or i + 1 >= len(text):
            return None
        if i > 0 and _plain(text[i - 1]) and text[i + 1].isalpha():
            return i
        pos = i + 1


def _plain(c: str) -> bool:
    # Printable and not a space by every definition (Python's and the regex engine's).
    return c.isprintable() and not c.isspace()


def replace_surrogates(text: str) -> tuple[str, int]:
    """`text` with each lone surrogate replaced by U+FFFD (as decoding with errors=replace
    does for a byte that is not UTF-8), and how many were replaced."""
    return _SURROGATE.subn("\ufffd", text)


def encode(tok: Tokenizer, text: str) -> list[int]:
    """Token ids of ``text``; long texts are encoded in parallel chunks (same result). A lone
    surrogate is encoded as U+FFFD (see replace_surrogates)."""
    if not text:
        return []
    text = replace_surrogates(text)[0]
    ids: list[int] = []
    for part in encode_pieces(tok, [text]):
        ids.extend(part)
    return ids


def encode_pieces(tok: Tokenizer, texts: Iterable[str]) -> Iterator[list[int]]:
    """Token ids of the text given as a stream of pieces (cut anywhere), a batch of
    chunks at a time: joined, they are the ids of the joined text (see `safe_pieces`)."""
    batch: list[str] = []
    for piece in safe_pieces(t for t in texts if t):
        batch.append(piece)
        if len(batch) == _BATCH_CHUNKS:
            yield _encode_batch(tok, batch)
            batch = []
    if batch:
        yield _encode_batch(tok, batch)


def _encode_batch(tok: Tokenizer, pieces: list[str]) -> list[int]:
    ids: list[int] = []
    for enc in tok.encode_batch_fast(pieces, add_special_tokens=False):
        ids.extend(enc.ids)
    return ids


def unknown_words(tok: Tokenizer, text: str, limit: int = 5) -> list[str]:
    """The first `limit` pieces of ``text`` that encode to ``<unk>`` (read chunk by chunk,
    stopping once found, so a whole book is not encoded again to name a few)."""
    unk, found = unk_id(tok), []
    for piece in _chunks(replace_surrogates(text)[0]):
        enc = tok.encode(piece, add_special_tokens=False)
        found += [piece[a:b] for i, (a, b) in zip(enc.ids, enc.offsets) if i == unk]
        if len(found) >= limit:
            break
    return found[:limit]


def decode(tok: Tokenizer, ids) -> str:
    """Text of a sequence of token ids (``<unk>`` is kept, shown as ``<unk>``)."""
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    return tok.decode(list(ids), skip_special_tokens=False)


def _byte_level_alphabet() -> dict[str, int]:
    """Byte-level BPE's stand-in character for each byte -> the byte (GPT-2's table:
    printable Latin-1 bytes stand for themselves, the others are moved to 256 and up)."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    moved = [b for b in range(256) if b not in kept]
    return {**{chr(b): b for b in kept}, **{chr(256 + n): b for n, b in enumerate(moved)}}


def token_bytes(tok: Tokenizer) -> list[bytes] | None:
    """The bytes of every token id of a byte-level BPE tokenizer; None for word and char,
    whose tokens are whole characters. A byte-level token may hold part of a character."""
    if tokenizer_kind(tok) != "bpe":
        return None
    alphabet = _byte_level_alphabet()
    table = [b""] * tok.get_vocab_size()
    for token, i in tok.get_vocab().items():
        if all(c in alphabet for c in token):
            table[i] = bytes(alphabet[c] for c in token)
        else:  # an added token, stored as plain text
            table[i] = token.encode("utf-8")
    return table


class TextStream:
    """Token ids in, text out piece by piece, never part of a character.

    A byte-level BPE token can end inside a multi-byte UTF-8 character (Cyrillic, CJK,
    curly quotes). Its bytes are held back until the character is complete; bytes that
    can never complete one (a stray continuation byte, a lead byte followed by a
    non-continuation) come out as one U+FFFD each maximal bad run, as Python's
    ``bytes.decode("utf-8", "replace")`` does. ``pending`` says whether a character is
    waiting for more bytes; `close` drops such a cut character (it was cut by the end of
    the sequence, not made invalid by the model). The pieces joined are `text`.

    Word and char tokens are whole characters; their pieces are what decoding all the ids
    adds to the text already given out (word decoding re-spaces across tokens).
    """

    def __init__(self, tok: Tokenizer, table: list[bytes] | None = None):
        self.tok = tok
        self.table = table if table is not None else token_bytes(tok)
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.ids: list[int] = []
        self.text = ""

    @property
    def pending(self) -> bool:
        """True while the bytes given so far end inside a character."""
        return self.table is not None and bool(self.utf8.getstate()[0])

    def add(self, token_id: int) -> str:
        """Take one token; returns the text it completes ("" when it is held back)."""
        self.ids.append(token_id)
        return self._give(self.utf8.decode(self.table[token_id]) if self.table is not None else self._decoded_rest())

    def close(self) -> str:
        """The rest of the text at the end of the sequence (a cut character is dropped)."""
        return self._give(self._decoded_rest()) if self.table is None else ""

    def _decoded_rest(self) -> str:
        """What decoding all the ids adds to the text given out ("" if re-spacing changed it)."""
        full = decode(self.tok, self.ids)
        return full[len(self.text):] if full.startswith(self.text) else ""

    def _give(self, piece: str) -> str:
        self.text += piece
        return piece


def ends_mid_character(table: list[bytes] | None, ids) -> bool:
    """True when byte-level tokens `ids` end inside a UTF-8 character (never for word/char)."""
    if table is None:
        return False
    stream = TextStream(None, table)
    for i in ids:
        stream.add(i)
    return stream.pending


def to_json(tok: Tokenizer) -> str:
    """The tokenizer as one JSON string (what ``tokenizer.json`` and checkpoints hold)."""
    return tok.to_str()


def from_json(s: str) -> Tokenizer:
    """Rebuild a tokenizer from :func:`to_json`'s string; a corrupt string is an RnnlmError."""
    if not isinstance(s, str):
        raise RnnlmError(f"tokenizer JSON must be a string, got {type(s).__name__}; re-create the run or checkpoint")
    try:
        return Tokenizer.from_str(s)
    except Exception as e:  # the Rust side raises a plain Exception
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise RnnlmError(
            f"tokenizer JSON is corrupt ({first}); re-create it by training again or use an intact checkpoint"
        ) from None


def unk_id(tok: Tokenizer) -> int | None:
    """Id of the unknown token, or None when every text encodes (byte-level BPE)."""
    unk = getattr(tok.model, "unk_token", None)
    return None if unk is None else tok.token_to_id(unk)


def tokenizer_kind(tok: Tokenizer) -> str:
    """Which of ``bpe`` / ``word`` / ``char`` built this tokenizer (read from its JSON)."""
    spec = json.loads(tok.to_str())
    model = (spec.get("model") or {}).get("type")
    if model == "BPE":
        return "bpe"
    pre = spec.get("pre_tokenizer") or {}
    if model == "WordLevel" and pre.get("type") == "Split" and pre.get("behavior") == "Isolated":
        return "char"
    return "word"


def word_separator(tok: Tokenizer) -> str:
    """What goes between a prompt and the text generated after it: a space for ``word``
    (its tokens are words, decoded without the space before the first), else nothing."""
    return " " if tokenizer_kind(tok) == "word" else ""


def is_lossless(tok: Tokenizer) -> bool:
    """True for ``bpe`` and ``char``: decoding gives back the text (so bpc is exact)."""
    return tokenizer_kind(tok) in ("bpe", "char")
