"""Corpus: fetch, read, clean, split, tokenize (cached), and lay out as B parallel streams.

The split rule (docs/design.md, "The War and Peace split") is reproduced exactly by
:func:`clean_text` and :func:`split_text`: every tool that reports a number on "the test
split" means the same characters.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import http.client
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer

from . import documents, prepare, sizing, token_cache
from . import tokenizer as tokenization
from .config import AUTO, DataConfig, TokenizerConfig
from .errors import RnnlmError
from .files import atomic_write

SPLITS = ("train", "valid", "test")


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
    codec = documents.check_file(path, encoding, errors, what=what, settings=settings)
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
    only when none has text is that an error (documents.skip_empty_files)."""
    if len(files) == 1:
        return clean_text(read_text(files[0], encoding=encoding, errors=errors))
    texts = [clean_text(read_text(f, encoding=encoding, errors=errors, empty_ok=True)) for f in files]
    documents.skip_empty_files(files, [f for f, t in zip(files, texts) if not t.strip()])
    return separator.join(t for t in texts if t.strip())


# ---------------------------------------------------------------------------------------
# Cleaning and the 80/10/10 split (the rule in DESIGN.md, exactly)


def clean_text(text: str) -> str:
    """CRLF -> LF; Project Gutenberg headers and footers off, book by book; exactly one
    final newline.

    Everything through the line holding ``*** START OF`` (when present) and everything
    from ``*** END OF`` on is dropped; a text of several books keeps the text between
    every start line and the end mark after it, the books joined by a blank line (see
    documents.GutenbergCleaner). Then leading and trailing newlines are stripped and one
    newline ends the text. A text with nothing left is returned as "".
    """
    cleaner = documents.GutenbergCleaner(documents.ReadStats())
    return "".join(cleaner.clean([text.replace("\r\n", "\n")], has_start=documents.START_MARK in text))


def split_text(text: str, fractions: tuple = (0.8, 0.1, 0.1), max_eval_chars: int | None = None) -> dict[str, str]:
    """Split cleaned text into ``train``, ``valid``, ``test`` at line ends (80/10/10 by default;
    validation and test at most `max_eval_chars` characters each, see prepare.split_fractions).

    Train ends at the first newline at or after `fractions[0]` of the characters (the
    newline is train's), validation at the first newline at or after the first two
    fractions, test is the rest (empty when its fraction is 0). When there is no such
    newline that leaves the later splits non-empty (a text of one or a few lines), the
    cut falls at that character position instead. The fractions are taken as the
    decimals they are written as (0.8 is 4/5 exactly), so the cuts are exact.
    """
    train_end, valid_end = prepare.split_points(len(text), fractions, lambda p: text.find("\n", p), max_eval_chars)
    return {"train": text[:train_end], "valid": text[train_end:valid_end], "test": text[valid_end:]}


@dataclass
class Corpus:
    """A tokenized corpus: one 1-D id tensor and one character count per split."""

    tokenizer: Tokenizer
    ids: dict[str, torch.Tensor]  # split -> (N,) uint16 or uint32, over the token cache's memory map
    chars: dict[str, int]  # split -> characters after cleaning (the denominator of bpc)
    text_hash: str  # sha256 of the cleaned text: identifies the data a model saw
    source: str = ""  # what was read: the file, or "N files from FOLDER-OR-PATTERN"
    cleaning: str = ""  # what the cleaning found: "N documents, M characters of header/footer removed"


@dataclass
class CorpusText:
    """A corpus read as a stream, cleaned and split, not yet tokenized: where its text
    comes from (read again to tokenize), never the text itself."""

    sources: prepare.Sources  # the files, and how they are read, cleaned and split
    source: str  # what was read, as Corpus.source
    text_hash: str  # sha256 of the cleaned text, as Corpus.text_hash
    chars: dict[str, int]  # split -> its characters (0 for a split the data leaves out)
    cleaning: str = ""  # what the cleaning found, as Corpus.cleaning


def corpus_sources(dc: DataConfig, *, may_download: bool = True, progress: bool = True) -> tuple[prepare.Sources, str]:
    """(the files the `data` section names, what the startup line calls them): a text to
    split, or a pre-split dataset's files of each split (see pre_split_layout). A missing
    single file is downloaded from data.url only with `may_download`."""
    valid_path, test_path, path = pre_split_layout(dc.path, dc.valid_path, dc.test_path)
    sources = prepare.Sources(fractions=tuple(dc.split), max_eval_chars=dc.max_eval_chars, name=str(path),
                              separator=dc.separator, encoding=dc.encoding, errors=dc.errors, progress=progress)
    if valid_path is not None:
        sources.pre_split = {"train": corpus_files(path, dc.glob), "valid": corpus_files(valid_path, dc.glob),
                             "test": corpus_files(test_path, dc.glob) if test_path is not None else []}
        return sources, f"pre-split: train {path}, valid {valid_path}, " + (f"test {test_path}" if test_path else
                                                                             "no test")
    sources.files = corpus_files(path, dc.glob)
    if len(sources.files) == 1 and not sources.files[0].exists() and dc.url and may_download:
        download(dc.url, sources.files[0], progress=progress)
    single = len(sources.files) == 1 and sources.files[0] == Path(path)
    return sources, str(sources.files[0]) if single else f"{len(sources.files)} files from {path}"


def read_splits(dc: DataConfig, *, may_download: bool = True, progress: bool = True) -> tuple[dict[str, str], str, str]:
    """(train/valid/test texts, what was read, the text that identifies the data) of the
    `data` section's text to split, or of a pre-split dataset (see pre_split_layout), read
    whole into memory as it is; a missing single file is downloaded from data.url only with
    `may_download`. Training reads the same text as a stream instead (read_corpus)."""
    read = functools.partial(read_documents, separator=dc.separator, encoding=dc.encoding, errors=dc.errors)
    sources, source = corpus_sources(dc, may_download=may_download, progress=progress)
    if sources.pre_split is not None:
        splits = {name: read(files) if files else "" for name, files in sources.pre_split.items()}
        text = "\0".join(splits[name] for name in SPLITS)
    else:
        text = read(sources.files)
        splits = split_text(text, dc.split, dc.max_eval_chars) if text.strip() else {}
    if not any(t.strip() for t in splits.values()):
        raise RnnlmError(f"data file {sources.name} has no text left after removing the Project Gutenberg "
                         "header/footer; use another file")
    return splits, source, text


def splits_from_config(cfg, download: bool = False) -> dict[str, str]:
    """The train/valid/test texts of a run config's `data` section, read and split as
    training reads them, not tokenized; a missing War and Peace is downloaded only when
    `download` is set."""
    return read_splits(cfg.data, may_download=download, progress=False)[0]


def read_corpus(dc: DataConfig, *, progress: bool = True) -> CorpusText:
    """Read, clean and split the `data` section's text as a stream (prepare.py; downloading
    a single missing file from data.url), never whole: its hash and each split's characters.

    Where a text is cut into splits is kept in data.cache_dir beside the token cache
    (prepare.split_chars), so a run whose token cache exists reads the text only once."""
    sources, source = corpus_sources(dc, progress=progress)
    text_hash, counts, stats = prepare.scan(sources)
    record = None
    if dc.cache_dir is not None and sources.pre_split is None:
        key = _key("split", text_hash, repr(tuple(float(f) for f in dc.split)), str(dc.max_eval_chars))
        record = Path(dc.cache_dir) / f"{key}.split"
    chars = prepare.split_chars(sources, counts, record)
    return CorpusText(sources=sources, source=source, text_hash=text_hash, chars=chars, cleaning=stats.describe())


def tokenize_corpus(text: CorpusText, dc: DataConfig, tc: TokenizerConfig,
                    tokenizer_json: str | None = None) -> Corpus:
    """Tokenize the splits with a tokenizer of the `tokenizer` section trained on the train
    split, or with ``tokenizer_json`` when given (a run being resumed or evaluated must use
    its own tokenizer). tokenizer.vocab_size must be resolved (sizing.resolve_auto).

    The text is read again as a stream (prepare.py): memory does not grow with the corpus.
    The ids go to a token cache file in data.cache_dir (token_cache.py) named by a hash of
    the cleaned text and the tokenizer settings, and are read through a memory map, so a
    second run skips tokenization; a cache_dir of None keeps them in a temporary file.
    """
    if tokenizer_json is not None:
        settings = ["given", tokenizer_json]  # kind and vocab_size play no part then
    elif tc.vocab_size == AUTO:
        raise ValueError("tokenizer.vocab_size is auto: resolve it first (sizing.resolve_auto)")
    else:
        settings = [tc.kind, str(tc.vocab_size if tc.kind != "char" else 0)]
    if tuple(dc.split) != (0.8, 0.1, 0.1):  # the default keys as it always has
        settings.append(repr(tuple(float(f) for f in dc.split)))
    if _capped(text, dc):
        settings.append(f"valid and test at most {dc.max_eval_chars} characters")
    if sum(text.chars.values()) > prepare.TOKENIZER_CHARS:
        settings.append(f"learned from {prepare.TOKENIZER_CHARS}")
    key = _key(f"v{token_cache.FORMAT}", text.text_hash, *settings)
    cache_file = Path(dc.cache_dir) / f"{key}.ids" if dc.cache_dir is not None else None

    cached = _load_cache(cache_file) if cache_file is not None else None
    if cached is None:
        tok = tokenization.from_json(tokenizer_json) if tokenizer_json is not None else \
            prepare.train_tokenizer(text.sources, text.chars, tc.kind, tc.vocab_size)

        def fill(writer) -> dict:
            prepare.encode_into(writer, text.sources, text.chars, tok)
            return {"tokenizer_json": tokenization.to_json(tok), "chars": text.chars}
        _, ids = token_cache.write(cache_file, token_cache.dtype_for(tok.get_vocab_size()), fill,
                                   elsewhere="set data.cache_dir to another disk")
        cached = tok, {name: ids[name] for name in SPLITS}
    tok, ids = cached
    return Corpus(tokenizer=tok, ids=ids, chars=text.chars, text_hash=text.text_hash, source=text.source,
                  cleaning=text.cleaning)


def _capped(text: CorpusText, dc: DataConfig) -> bool:
    """Whether data.max_eval_chars moved the split rule's cuts for this text."""
    n = sum(text.chars.values())
    return (text.sources.pre_split is None
            and prepare.split_fractions(n, dc.split, dc.max_eval_chars) != prepare.split_fractions(n, dc.split))


def _key(*parts: str) -> str:
    """The name of a file in data.cache_dir: a hash of what it depends on."""
    return hashlib.sha256("\0".join(parts).encode("utf-8")).hexdigest()[:24]


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
    """(tokenizer, ids) from a token cache file, or None if absent or unusable (then rebuilt)."""
    mapped = token_cache.read(file)
    if mapped is None:
        return None
    meta, ids = mapped
    try:
        return tokenization.from_json(meta["tokenizer_json"]), {name: ids[name] for name in SPLITS}
    except (RnnlmError, KeyError, TypeError, ValueError):  # hand-edited or foreign: rebuilt
        return None



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
    x = data[:, i : i + t].long()  # (B, T); the ids may be stored as uint16 / uint32
    y = data[:, i + 1 : i + 1 + t].long()  # (B, T)
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
