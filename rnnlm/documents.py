"""Reading a corpus as a stream of cleaned text, a block at a time, never whole.

A file is read in blocks of `BLOCK_BYTES` and decoded incrementally, so a block holds
whole characters (a multi-byte character cut by a block boundary waits for its other
bytes) and Windows line ends become ``\\n`` even when the ``\\r`` ends one block and the
``\\n`` starts the next. The text then goes through the Project Gutenberg cleaning
(`GutenbergCleaner`), book by book: a file of many concatenated books (``cat *.txt``)
keeps the text between every ``*** START OF`` line and the ``*** END OF`` that follows.
Each book (or file without marks) is one document; documents are stripped of leading and
trailing newlines, end with one newline and are joined by the corpus's separator. A
document of only whitespace is none; of several files, those without a document (empty,
or only a Project Gutenberg header) are skipped with a warning (`skip_empty_files`).

For one book this gives exactly what ``data.clean_text`` gives for the whole file, and a
folder's documents are joined as ``data.read_documents`` joins them: the same text, read
in bounded memory.
"""

from __future__ import annotations

import codecs
import functools
import mmap
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .errors import RnnlmError
from .files import regular_file_problem

START_MARK = "*** START OF"
END_MARK = "*** END OF"
BLOCK_BYTES = 1 << 20
_SETTINGS = ("data.path", "data.encoding", "data.errors")


@dataclass
class ReadStats:
    """What a pass over the corpus read and removed."""

    files: int = 0
    documents: int = 0  # non-empty documents: books, or files without Gutenberg marks
    removed: int = 0  # characters of headers, footers and the blank lines around texts
    chars: int = 0  # characters of the cleaned corpus, separators included

    def describe(self) -> str:
        """The startup line's account of the cleaning, e.g. '3 documents, 52,114 characters of
        header/footer removed'."""
        return (f"{self.documents:,} document{'s' * (self.documents != 1)}, "
                f"{self.removed:,} characters of header/footer removed")


def decoded_blocks(path, encoding: str = "utf-8", errors: str = "strict", *, what: str = "data file",
                   settings: tuple[str, str, str] = _SETTINGS, on_bytes: Callable[[int], None] = lambda n: None,
                   empty_ok: bool = False) -> Iterator[str]:
    """The text of a file as blocks of whole characters, with ``\\r\\n`` turned into ``\\n``.

    The same checks and one-line errors as ``data.read_text`` (missing, not a regular file,
    an unknown codec, binary, undecodable with the byte's offset and line, empty unless
    `empty_ok`); a leading byte-order mark is dropped. `on_bytes` is told the size of every
    block read.
    """
    path = Path(path)
    set_path, set_encoding, set_errors = settings
    decoder = _Decoder(check_file(path, encoding, errors, what=what, settings=settings), errors)
    offset = lines = 0
    held, seen_text, at_start = "", False, True  # held: a "\r" that may start a "\r\n" in the next block
    with _open(path, what, set_path) as f:
        while block := f.read(BLOCK_BYTES):  # looked up at each call, so tests can make it small
            if offset == 0 and not decoder.utf_wide and b"\x00" in block[:8192]:
                raise RnnlmError(f"{what} {path} looks binary (it has NUL bytes); set {set_path} to a plain text file")
            text = _decode(decoder.decode, block, offset, lines, path, what, encoding, settings)
            if at_start and text:  # the first character, whichever block completes it
                text, at_start = text.removeprefix("\ufeff"), False
            offset, lines = offset + len(block), lines + block.count(b"\n")
            on_bytes(len(block))
            text = (held + text).replace("\r\n", "\n")
            held, text = ("\r", text[:-1]) if text.endswith("\r") else ("", text)
            seen_text = seen_text or not text.isspace() and bool(text)
            if text:
                yield text
        text = held + _decode(decoder.decode, b"", offset, lines, path, what, encoding, settings, final=True)
        seen_text = seen_text or not text.isspace() and bool(text)
        if text:
            yield text
    if not seen_text and not empty_ok:
        raise RnnlmError(f"{what} {path} is empty (or only whitespace); set {set_path} to a file with text in it")


class _Decoder:
    def __init__(self, codec: codecs.CodecInfo, errors: str):
        self.decode = codec.incrementaldecoder(errors).decode
        # NUL bytes do not occur in text, except in the UTF-16/32 encodings.
        self.utf_wide = codec.name.startswith(("utf-16", "utf-32"))


def check_file(path: Path, encoding: str, errors: str, *, what: str = "data file",
               settings: tuple[str, str, str] = _SETTINGS) -> codecs.CodecInfo:
    """The codec to read a file with, once the file is there, a regular file, and the
    settings are known; else a one-line error naming the fix (`what` and `settings` as in
    `decoded_blocks`)."""
    set_path, set_encoding, set_errors = settings
    problem = regular_file_problem(path)
    if problem == "does not exist":
        fetch = ", or data.url to download one there" if set_path == "data.path" else ""
        raise RnnlmError(f"{what} {path} does not exist; set {set_path} to a text file{fetch}")
    if problem == "is a directory":
        raise RnnlmError(f"{what} {path} is a directory; set {set_path} to a text file inside it")
    if problem:  # a FIFO would wait for a writer, a device such as /dev/zero never ends
        raise RnnlmError(f"{what} {path} {problem}, not a regular file; set {set_path} to a text file")
    try:
        codec = codecs.lookup(encoding)
        codecs.lookup_error(errors)
    except LookupError as e:
        raise RnnlmError(f"{e}; set {set_encoding} to e.g. utf-8 or latin-1 and {set_errors} to strict, replace "
                         "or ignore") from None
    return codec


def _open(path: Path, what: str, set_path: str):
    try:
        return open(path, "rb")
    except OSError as e:
        raise RnnlmError(f"cannot read {what} {path} ({e.strerror}); check its permissions or set {set_path} "
                         "to another file") from None


def _decode(decode, block: bytes, offset: int, lines: int, path: Path, what: str, encoding: str, settings,
            final: bool = False) -> str:
    """One block decoded; an undecodable byte is named by its offset and line in the file."""
    try:
        return decode(block, final)
    except UnicodeDecodeError as e:
        start = offset - (len(e.object) - len(block)) + e.start  # e.object: bytes held back + this block
        line = lines - e.object[:len(e.object) - len(block)].count(b"\n") + e.object[:e.start].count(b"\n") + 1
        raise RnnlmError(
            f"{what} {path} is not valid {encoding}: byte 0x{e.object[e.start]:02x} at offset {start} "
            f"(line {line}); set {settings[1]} to the file's encoding (e.g. latin-1) or {settings[2]}=replace"
        ) from None


# ---------------------------------------------------------------------------------------
# The Gutenberg cleaning, book by book


class GutenbergCleaner:
    """Cleans a stream of text blocks, book by book, and joins the documents.

    Outside a book (before the first ``*** START OF``, between an ``*** END OF`` and the
    next start) text is dropped; inside one it is kept up to the next ``*** END OF``.
    The line holding the start mark is dropped with it. A text with no start mark at all
    is kept from its beginning (to its first end mark, if any): `has_start` says which.
    Each document loses its leading and trailing newlines, ends with one newline and is
    preceded by `separator` when a document came before it (in this or an earlier file).
    """

    def __init__(self, stats: ReadStats, separator: str = "\n"):
        self.stats, self.separator = stats, separator
        self.any_document = False
        self.added = 0  # characters given out that no file held: separators, missing final newlines
        self.doc = _Document()

    def clean(self, blocks: Iterable[str], has_start: bool) -> Iterator[str]:
        """The cleaned text of one file's blocks."""
        state, buf, read, out_before = ("seek" if has_start else "body"), "", 0, self.stats.chars - self.added
        for block in blocks:
            read += len(block)
            buf += block
            more = True
            while more:
                state, buf, out, more = self._step(state, buf, final=False)
                yield from self._counted(out)
        while buf:
            state, buf, out, _ = self._step(state, buf, final=True)
            yield from self._counted(out)
        yield from self._counted(self._close())
        self.stats.removed += read - (self.stats.chars - self.added - out_before)

    def _step(self, state: str, buf: str, final: bool) -> tuple[str, str, str, bool]:
        """(next state, text left in buf, text out, whether buf may hold more work)."""
        if state == "start line":
            eol = buf.find("\n")
            return ("start line", "", "", False) if eol == -1 else ("body", buf[eol + 1:], "", True)
        mark = START_MARK if state == "seek" else END_MARK
        at = buf.find(mark)
        if at == -1:  # keep what may be the beginning of a mark cut by the block boundary
            keep = 0 if final else min(len(mark) - 1, len(buf))
            out = self._body(buf[:len(buf) - keep]) if state == "body" else ""
            return state, buf[len(buf) - keep:], out, False
        if state == "seek":
            return "start line", buf[at:], "", True
        return "seek", buf[at:], self._body(buf[:at]) + self._close(), True

    def _close(self) -> str:
        """End a document: its final newline (if it has text); the next one starts afresh."""
        out = "\n" if self.doc.started else ""
        self.added += self.doc.started and not self.doc.pending  # the text did not end with a newline
        self.stats.documents += self.doc.started
        self.doc = _Document()
        return out

    def _body(self, text: str) -> str:
        """A document's text, preceded by the separator when it is the first text of a later document."""
        out = self.doc.add(text)
        if out and not self.doc.announced:
            self.doc.announced = True
            if self.any_document:
                out = self.separator + out
                self.added += len(self.separator)
            self.any_document = True
        return out

    def _counted(self, out: str) -> Iterator[str]:
        if out:
            self.stats.chars += len(out)
            yield out


class _Document:
    """Strips the leading and trailing newlines of a document given in pieces; a document
    of only whitespace gives out nothing and does not start."""

    def __init__(self):
        self.started = self.announced = False
        self.lead = ""  # whitespace after the leading newlines, held back until other text comes
        self.pending = 0  # newlines held back: trailing ones, unless more text follows

    def add(self, text: str) -> str:
        """The part of `text` that is certainly the document's (held-back newlines included)."""
        if not self.started:
            text = self.lead + text if self.lead else text.lstrip("\n")
            if not text or text.isspace():
                self.lead = text
                return ""
            self.started, self.lead = True, ""
        body = text.rstrip("\n")
        if not body:
            self.pending += len(text)
            return ""
        out = "\n" * self.pending + body
        self.pending = len(text) - len(body)
        return out


@functools.lru_cache(maxsize=64)
def has_start_mark(path: str, size: int, mtime_ns: int, encoding: str) -> bool:
    """Whether a file holds a Gutenberg start mark anywhere (cached by size and time).

    The bytes are searched through a memory map when the encoding writes the mark as
    ASCII (UTF-8, Latin-1, the Windows code pages); other encodings are decoded."""
    mark = START_MARK.encode("ascii")
    try:
        ascii_like = START_MARK.encode(encoding) == mark and "\n".encode(encoding) == b"\n"
    except (LookupError, UnicodeError):
        ascii_like = False
    if size == 0:
        return False
    if ascii_like:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            return m.find(mark) != -1
    tail = ""
    for block in decoded_blocks(path, encoding, "replace"):
        if START_MARK in tail + block:
            return True
        tail = block[-len(START_MARK):]
    return False


def cleaned_text(files: list[Path], separator: str = "\n", encoding: str = "utf-8", errors: str = "strict",
                 stats: ReadStats | None = None, on_bytes: Callable[[int], None] = lambda n: None,
                 warn: bool = True) -> Iterator[str]:
    """The cleaned corpus of `files` as a stream of text pieces (see the module's doc). Of
    several files, those without text are skipped, with a warning when `warn` (see
    `skip_empty_files`; a corpus read in several passes warns in one)."""
    stats = stats if stats is not None else ReadStats()
    cleaner = GutenbergCleaner(stats, separator)
    empty = []
    for file in files:
        blocks = decoded_blocks(file, encoding, errors, on_bytes=on_bytes, empty_ok=len(files) > 1)
        first = next(blocks, "")  # the checks of an unreadable file come before anything else
        stats.files += 1
        before = stats.documents
        yield from cleaner.clean(_chain(first, blocks), _starts_a_book(file, first, encoding))
        if stats.documents == before:
            empty.append(file)
    if len(files) > 1:
        skip_empty_files(files, empty, warn=warn)


def skip_empty_files(files: list[Path], empty: list[Path], warn: bool = True) -> None:
    """Of several `files`, those in `empty` have no text (empty, whitespace or only a Project
    Gutenberg header) and were skipped: a warning names them (when `warn`); when none has
    text, a one-line error."""
    where = os.path.commonpath([str(f.parent) for f in files])
    if len(empty) == len(files):
        raise RnnlmError(f"none of the {len(files)} files from {where} has text (each is empty, whitespace or "
                         "only a Project Gutenberg header); put text in them or set data.path to another folder")
    if empty and warn:
        shown = ", ".join(str(f) for f in empty[:3]) + (", ..." if len(empty) > 3 else "")
        warnings.warn(f"skipped {len(empty)} of the {len(files)} files from {where}, which have no text: {shown}",
                      stacklevel=3)


def _chain(first: str, rest: Iterator[str]) -> Iterator[str]:
    yield first
    yield from rest


def _starts_a_book(file: Path, first_block: str, encoding: str) -> bool:
    """Whether the file has a start mark: in its first block (a Gutenberg file), else anywhere."""
    if START_MARK in first_block:
        return True
    st = file.stat()
    return has_start_mark(str(file), st.st_size, st.st_mtime_ns, encoding)
