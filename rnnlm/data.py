"""Corpus: fetch, read, clean, split, tokenize (cached), and lay out as B parallel streams.

The split rule (docs/design.md, "The War and Peace split") is reproduced exactly by
:func:`clean_text` and :func:`split_text`: every tool that reports a number on "the test
split" means the same characters.
"""

from __future__ import annotations

import codecs
import functools
import glob
import hashlib
import http.client
import os
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import torch
from tokenizers import Tokenizer

from . import sizing
from . import tokenizer as tokenization
from .config import AUTO, DataConfig, TokenizerConfig
from .errors import CannotWrite, RnnlmError
from .files import atomic_write, regular_file_problem

SPLITS = ("train", "valid", "test")
_START_MARK = "*** START OF"
_END_MARK = "*** END OF"
_CACHE_FORMAT = 1


# ---------------------------------------------------------------------------------------
# Getting the text


def download(url: str, path, progress: bool = True) -> Path:
    """Download ``url`` to ``path`` with a progress bar.

    Written with files.atomic_write, so an interrupted download never leaves a
    truncated ``path`` behind.
    """
    from tqdm import tqdm

    path = Path(path)
    hint = f"download it by hand and save it as {path} (or set data.path to a local text file)"

    def fetch(out) -> None:
        request = urllib.request.Request(url, headers={"User-Agent": "rnnlm"})
        with urllib.request.urlopen(request, timeout=60) as response:
            total = response.headers.get("Content-Length")
            total = int(total) if total and total.isdigit() else None
            got = 0
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                      desc=f"downloading {path.name}", disable=not progress) as bar:
                while chunk := response.read(1 << 16):
                    out.write(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
        if total is not None and got < total:
            raise RnnlmError(f"download of {url} stopped after {got} of {total} bytes; try again, or {hint}")

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RnnlmError(f"cannot write the download into {path.parent} ({e.strerror}); "
                         "set data.path to a writable place") from None
    try:
        atomic_write(path, fetch, elsewhere="set data.path to another disk")
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or e
        raise RnnlmError(f"cannot download {url} ({reason}); {hint}") from None
    return path


def read_text(path, encoding: str = "utf-8", errors: str = "strict", *, what: str = "data file",
              settings: tuple[str, str, str] = ("data.path", "data.encoding", "data.errors"),
              empty_ok: bool = False) -> str:
    """The text of a regular file, or a one-line RnnlmError saying what is wrong and how to fix it.

    `what` names the file in messages and `settings` the (path, encoding, errors) options a
    user changes to fix it: config keys for the training data, flags for a command's file.
    A leading byte-order mark is dropped: it marks the encoding, it is not text. A file of
    only whitespace is refused, unless `empty_ok` (one file of a folder's several).
    """
    path = Path(path)
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
    try:
        data = path.read_bytes()
    except OSError as e:
        raise RnnlmError(f"cannot read {what} {path} ({e.strerror}); check its permissions or set {set_path} "
                         "to another file") from None
    # NUL bytes do not occur in text, except in the UTF-16/32 encodings.
    if not codec.name.startswith(("utf-16", "utf-32")) and b"\x00" in data[:8192]:
        raise RnnlmError(f"{what} {path} looks binary (it has NUL bytes); set {set_path} to a plain text file")
    try:
        text = data.decode(encoding, errors)
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise RnnlmError(
            f"{what} {path} is not valid {encoding}: byte 0x{data[e.start]:02x} at offset {e.start} "
            f"(line {line}); set {set_encoding} to the file's encoding (e.g. latin-1) or {set_errors}=replace"
        ) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    if not text.strip() and not empty_ok:
        raise RnnlmError(f"{what} {path} is empty (or only whitespace); set {set_path} to a file with text in it")
    return text


def corpus_files(path, pattern: str = "**/*.txt") -> list[Path]:
    """The files `data.path` names: a file itself (also when its name holds ``*?[``); a
    folder's files matching `pattern` (relative to it, recursively with ``**``) in name order;
    or a glob pattern's matches in name order."""
    name = str(path)
    if any(c in name for c in "*?[") and not Path(path).exists():
        files = sorted(Path(p) for p in glob.glob(name, recursive=True) if not Path(p).is_dir())
        if not files:
            raise RnnlmError(f"data.path {name!r} matches no files; check the pattern (e.g. 'poems/*.txt') "
                             "or set data.path to a file or folder")
        return files
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in _folder_matches(path, pattern) if not p.is_dir())
        if not files:
            raise RnnlmError(f"folder {path} has no files matching {pattern!r}; put text files in it or set "
                             "data.glob to the pattern of its files (e.g. '**/*.md')")
        return files
    return [path]


def _folder_matches(folder: Path, pattern: str) -> list[Path]:
    """`folder`.glob(`pattern`), with a pattern it cannot take (absolute, empty) as one line."""
    unusable = RnnlmError(f"data.glob {pattern!r} is not a pattern relative to the folder {folder}; set "
                          "data.glob to e.g. '**/*.txt', or data.path to the absolute pattern itself")
    if Path(pattern).is_absolute():
        raise unusable
    try:
        return list(folder.glob(pattern))
    except ValueError:  # an empty pattern, or "**" inside a name
        raise unusable from None


def pre_split_layout(path, valid_path, test_path) -> tuple:
    """(valid_path, test_path, train path) of a pre-split dataset: as given, or, for a
    folder holding train.txt and valid.txt (and maybe test.txt; the PyTorch example's
    layout), those files; (None, None, path) for a text to split. A folder holding only
    some of train.txt and valid.txt (say train.txt and test.txt) is refused, naming what is
    missing, rather than read as a text to split."""
    folder = Path(path)
    if valid_path is not None or not folder.is_dir():
        return valid_path, test_path, path
    present = [name for name in ("train.txt", "valid.txt", "test.txt") if (folder / name).is_file()]
    if not present:
        return None, None, path
    missing = [name for name in ("train.txt", "valid.txt") if name not in present]
    if missing:
        raise RnnlmError(f"folder {folder} looks pre-split (it has {' and '.join(present)}) but has no "
                         f"{' or '.join(missing)}; add {' and '.join(missing)}, or set data.valid_path, or move "
                         f"{' and '.join(present)} out to have the folder's files split 80/10/10")
    test = folder / "test.txt"
    return folder / "valid.txt", test if test.is_file() else None, folder / "train.txt"


def read_documents(files: list[Path], separator: str = "\n", encoding: str = "utf-8",
                   errors: str = "strict") -> str:
    """The files' texts, each cleaned (clean_text), joined by `separator`; a file that
    cannot be read is named in a one-line error. Of several files, those with no text
    (empty, or only a Project Gutenberg header) are skipped with a warning naming them;
    only when none has text is that an error."""
    if len(files) == 1:
        return clean_text(read_text(files[0], encoding=encoding, errors=errors))
    texts = [clean_text(read_text(f, encoding=encoding, errors=errors, empty_ok=True)) for f in files]
    empty = [f for f, t in zip(files, texts) if not t.strip()]
    where = os.path.commonpath([str(f.parent) for f in files])
    if len(empty) == len(files):
        raise RnnlmError(f"none of the {len(files)} files from {where} has text (each is empty, whitespace or "
                         "only a Project Gutenberg header); put text in them or set data.path to another folder")
    if empty:
        shown = ", ".join(str(f) for f in empty[:3]) + (", ..." if len(empty) > 3 else "")
        warnings.warn(f"skipped {len(empty)} of the {len(files)} files from {where}, which have no text: {shown}",
                      stacklevel=2)
    return separator.join(t for t in texts if t.strip())


# ---------------------------------------------------------------------------------------
# Cleaning and the 80/10/10 split (the rule in DESIGN.md, exactly)


def clean_text(text: str) -> str:
    """CRLF -> LF; Project Gutenberg header and footer off; exactly one final newline.

    Everything through the line holding ``*** START OF`` (when present) and everything
    from ``*** END OF`` on is dropped; then leading and trailing newlines are stripped
    and one newline ends the text. A text with nothing left is returned as "".
    """
    text = text.replace("\r\n", "\n")
    start = text.find(_START_MARK)
    if start != -1:
        eol = text.find("\n", start)
        text = "" if eol == -1 else text[eol + 1:]
    end = text.find(_END_MARK)
    if end != -1:
        text = text[:end]
    text = text.strip("\n")
    return text + "\n" if text else ""


def split_text(text: str, fractions: tuple = (0.8, 0.1, 0.1)) -> dict[str, str]:
    """Split cleaned text into ``train``, ``valid``, ``test`` at line ends (80/10/10 by default).

    Train ends at the first newline at or after `fractions[0]` of the characters (the
    newline is train's), validation at the first newline at or after the first two
    fractions, test is the rest (empty when its fraction is 0). When there is no such
    newline that leaves the later splits non-empty (a text of one or a few lines), the
    cut falls at that character position instead. The fractions are taken as the
    decimals they are written as (0.8 is 4/5 exactly), so the cuts are exact.
    """
    train, valid, test = (Fraction(str(f)) for f in fractions)
    n = len(text)
    parts = 3 if test else 2
    if n < parts:
        raise RnnlmError(f"the text has {n} character(s) after cleaning, too few for train, validation"
                         + (" and test splits" if test else " splits") + "; use a longer text")
    train_end = _cut(text, train, lo=1, hi=n - parts + 1)
    valid_end = _cut(text, train + valid, lo=train_end + 1, hi=n - 1) if test else n
    return {"train": text[:train_end], "valid": text[train_end:valid_end], "test": text[valid_end:]}


def _cut(text: str, fraction: Fraction, lo: int, hi: int) -> int:
    """End (exclusive) of a split: after the first newline at or after `fraction` of the
    text, if that end lies in [lo, hi]; else the character position itself, clamped."""
    at = -(-len(text) * fraction.numerator // fraction.denominator)  # ceil, in exact integer arithmetic
    nl = text.find("\n", max(at, lo - 1))
    if nl != -1 and lo <= nl + 1 <= hi:
        return nl + 1
    return min(max(at, lo), hi)


@dataclass
class Corpus:
    """A tokenized corpus: one 1-D id tensor and one character count per split."""

    tokenizer: Tokenizer
    ids: dict[str, torch.Tensor]  # split -> (N,) int64
    chars: dict[str, int]  # split -> characters after cleaning (the denominator of bpc)
    text_hash: str  # sha256 of the cleaned text: identifies the data a model saw
    source: str = ""  # what was read: the file, or "N files from FOLDER-OR-PATTERN"


@dataclass
class CorpusText:
    """A corpus read, cleaned and split, not yet tokenized."""

    splits: dict[str, str]  # split -> its text ("" for a split the data leaves out)
    source: str  # what was read, as Corpus.source
    text_hash: str  # sha256 of the cleaned text, as Corpus.text_hash

    @property
    def chars(self) -> dict[str, int]:
        return {name: len(self.splits[name]) for name in SPLITS}


def read_splits(dc: DataConfig, *, may_download: bool = True, progress: bool = True) -> tuple[dict[str, str], str, str]:
    """(train/valid/test texts, what was read, the text that identifies the data) of the
    `data` section's text to split, or of a pre-split dataset (see pre_split_layout), read
    as it is; a missing single file is downloaded from data.url only with `may_download`."""
    read = functools.partial(read_documents, separator=dc.separator, encoding=dc.encoding, errors=dc.errors)
    valid_path, test_path, path = pre_split_layout(dc.path, dc.valid_path, dc.test_path)
    if valid_path is not None:
        splits = {"train": read(corpus_files(path, dc.glob)), "valid": read(corpus_files(valid_path, dc.glob)),
                  "test": read(corpus_files(test_path, dc.glob)) if test_path is not None else ""}
        source = f"pre-split: train {path}, valid {valid_path}, " + (f"test {test_path}" if test_path else "no test")
        text = "\0".join(splits[name] for name in SPLITS)
    else:
        files = corpus_files(path, dc.glob)
        if len(files) == 1 and not files[0].exists() and dc.url and may_download:
            download(dc.url, files[0], progress=progress)
        text = read(files)
        source = str(files[0]) if len(files) == 1 and files[0] == Path(path) else f"{len(files)} files from {path}"
        splits = split_text(text, dc.split) if text.strip() else {}
    if not any(t.strip() for t in splits.values()):
        raise RnnlmError(f"data file {path} has no text left after removing the Project Gutenberg "
                         "header/footer; use another file")
    return splits, source, text


def splits_from_config(cfg, download: bool = False) -> dict[str, str]:
    """The train/valid/test texts of a run config's `data` section, read and split as
    training reads them, not tokenized; a missing War and Peace is downloaded only when
    `download` is set."""
    return read_splits(cfg.data, may_download=download, progress=False)[0]


def read_corpus(dc: DataConfig, *, progress: bool = True) -> CorpusText:
    """Read, clean and split the `data` section's text (downloading a single missing file
    from data.url): see read_splits."""
    splits, source, text = read_splits(dc, progress=progress)
    return CorpusText(splits=splits, source=source, text_hash=hashlib.sha256(text.encode("utf-8")).hexdigest())


def tokenize_corpus(text: CorpusText, dc: DataConfig, tc: TokenizerConfig,
                    tokenizer_json: str | None = None) -> Corpus:
    """Tokenize the splits with a tokenizer of the `tokenizer` section trained on the train
    split, or with ``tokenizer_json`` when given (a run being resumed or evaluated must use
    its own tokenizer). tokenizer.vocab_size must be resolved (sizing.resolve_auto).

    Tokenizer and ids are cached in data.cache_dir under a hash of the cleaned text and the
    tokenizer settings, so a second run skips tokenization; a cache_dir of None turns the
    cache off.
    """
    if tokenizer_json is not None:
        settings = ["given", tokenizer_json]  # kind and vocab_size play no part then
    elif tc.vocab_size == AUTO:
        raise ValueError("tokenizer.vocab_size is auto: resolve it first (sizing.resolve_auto)")
    else:
        settings = [tc.kind, str(tc.vocab_size if tc.kind != "char" else 0)]
    if tuple(dc.split) != (0.8, 0.1, 0.1):  # the default keys as it always has
        settings.append(repr(tuple(float(f) for f in dc.split)))
    key = hashlib.sha256("\0".join([f"v{_CACHE_FORMAT}", text.text_hash, *settings]).encode("utf-8")).hexdigest()[:24]
    cache_file = Path(dc.cache_dir) / f"{key}.pt" if dc.cache_dir is not None else None

    cached = _load_cache(cache_file) if cache_file is not None else None
    if cached is not None:
        tok, ids = cached
    else:
        tok = tokenization.from_json(tokenizer_json) if tokenizer_json is not None else \
            tokenization.train_tokenizer(tc.kind, text.splits["train"], tc.vocab_size)
        ids = {name: torch.tensor(tokenization.encode(tok, text.splits[name]), dtype=torch.long) for name in SPLITS}
        if cache_file is not None:
            _save_cache(cache_file, {
                "format": _CACHE_FORMAT,
                "tokenizer_json": tokenization.to_json(tok),
                # int32 halves the file; any vocabulary fits.
                "ids": {name: t.to(torch.int32) for name, t in ids.items()},
            })
    return Corpus(tokenizer=tok, ids=ids, chars=text.chars, text_hash=text.text_hash, source=text.source)


def load_corpus(dc: DataConfig, tc: TokenizerConfig, *, tokenizer_json: str | None = None,
                progress: bool = True) -> Corpus:
    """Read, clean, split and tokenize the text the `data` section names: read_corpus, then
    tokenize_corpus (tokenizer.vocab_size must not be `auto`)."""
    return tokenize_corpus(read_corpus(dc, progress=progress), dc, tc, tokenizer_json)


def corpus_from_config(cfg, tokenizer_json: str | None = None, progress: bool = True) -> Corpus:
    """The corpus of a run config (evaluation and tools): its `data` section read, its
    `auto` sizes resolved for the text (sizing.fit_to_corpus), tokenized."""
    text = read_corpus(cfg.data, progress=progress)
    if sizing.needs_text(cfg):
        cfg = sizing.fit_to_corpus(cfg, text.chars["train"])[0]
    return tokenize_corpus(text, cfg.data, cfg.tokenizer, tokenizer_json)


def _load_cache(file: Path):
    """(tokenizer, ids) from a cache file, or None if absent or unusable (then rebuilt)."""
    if not file.is_file():
        return None
    try:
        entry = torch.load(file, weights_only=True, map_location="cpu")
        if not (isinstance(entry, dict) and entry.get("format") == _CACHE_FORMAT):
            return None
        tok = tokenization.from_json(entry["tokenizer_json"])
        ids = {name: entry["ids"][name] for name in SPLITS}
        if not all(isinstance(t, torch.Tensor) and t.dim() == 1 for t in ids.values()):
            return None
        return tok, {name: t.long() for name, t in ids.items()}
    except Exception:  # truncated, foreign or hand-edited: not worth more than a rebuild
        return None


def _save_cache(file: Path, entry: dict) -> None:
    # Atomic, so concurrent runs never see half a file. A cache that cannot be written
    # (a full disk) only costs time on the next run: one warning line, and on.
    try:
        atomic_write(file, lambda f: torch.save(entry, f), elsewhere="set data.cache_dir to another disk")
    except CannotWrite as e:
        warnings.warn(f"token cache not saved (the next run tokenizes again): {e}", stacklevel=2)
    except OSError:
        pass


# ---------------------------------------------------------------------------------------
# Batches for truncated backpropagation through time
#
# batchify cuts the token stream into B contiguous streams, one per row. With the
# alphabet as the corpus and B = 4 (the trailing "y z" does not fill a row: dropped):
#
#   ids = a b c d ... x y z   ->   data (B=4, N=6) =  ┌ a b c d e f ┐  stream 0
#                                                     │ g h i j k l │  stream 1
#                                                     │ m n o p q r │  stream 2
#                                                     └ s t u v w x ┘  stream 3
#
# get_batch(data, i, seq_len=2) then reads a (B, T) window and its targets one step on:
#
#   i = 0:  x = ┌ a b ┐  y = ┌ b c ┐      i = 2:  x = ┌ c d ┐  y = ┌ d e ┐
#               │ g h │      │ h i │                  │ i j │      │ j k │
#               │ m n │      │ n o │                  │ o p │      │ p q │
#               └ s t ┘      └ t u ┘                  └ u v ┘      └ v w ┘
#
# Row b of one batch continues exactly where row b of the previous batch ended, which is
# why the model may carry its hidden state from batch to batch (detached, so gradients
# stop at the batch boundary: truncated BPTT).


def batchify(ids: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(N_total,) ids -> (B, N): B contiguous streams; the remainder that does not fill a
    row is dropped. Row b holds ids[b*N:(b+1)*N]."""
    if batch_size < 1:
        raise RnnlmError(f"batch_size must be at least 1, got {batch_size}")
    n = ids.numel() // batch_size
    return ids[: n * batch_size].reshape(batch_size, n)  # (B, N)


def get_batch(data: torch.Tensor, i: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-token targets at time offset ``i``: x = data[:, i:i+T],
    y = data[:, i+1:i+1+T], both (B, T); T = seq_len, or less for the last batch."""
    t = min(seq_len, data.size(1) - 1 - i)
    x = data[:, i : i + t]  # (B, T)
    y = data[:, i + 1 : i + 1 + t]  # (B, T)
    return x, y


def check_scorable(n_tokens: int, split: str) -> None:
    """Refuse a validation or test split too short to score: its first token is context only."""
    if n_tokens < 2:
        raise RnnlmError(f"the {split} split has {n_tokens} token(s), too few to score (the first token is "
                         "context): use a longer text, other data.split fractions, or a longer "
                         f"{'validation' if split == 'valid' else 'test'} file")


def check_enough_tokens(n_tokens: int, batch_size: int, seq_len: int, split: str) -> None:
    """Refuse a split too short to give even one (batch_size, seq_len) batch plus targets."""
    need = batch_size * (seq_len + 1)
    if n_tokens < need:
        raise RnnlmError(
            f"the {split} split has {n_tokens} tokens but batch_size {batch_size} x (seq_len {seq_len} + 1) "
            f"needs at least {need}; lower train.batch_size or train.seq_len, or use a longer text"
        )
