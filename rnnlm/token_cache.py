"""The token cache: a corpus's token ids in one file on disk, read through a memory map.

One file per corpus and tokenizer (named by the caller's key), laid out as

    ids of train | ids of valid | ids of test | meta (JSON, UTF-8) | meta length (8 bytes) | MAGIC

The ids are uint16 when the vocabulary fits (at most 65,536 tokens), else uint32, in
little-endian order; the meta holds the format, the dtype, each split's number of tokens
and whatever the caller adds (the tokenizer's JSON, each split's characters). The ids are
written while they are made, a batch at a time, to a temporary file that is renamed
when complete (files.atomic_write), so a killed run never leaves half a cache, and they
are read back as a memory map: a run's resident memory holds only the pages it reads,
not the corpus. A file that does not parse (truncated, foreign, another format) reads
as absent, and the caller builds it again.
"""

from __future__ import annotations

import json
import struct
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from .errors import CannotWrite
from .files import atomic_write

FORMAT = 2
MAGIC = b"RNNLMIDS"
_TAIL = struct.Struct("<Q")  # the meta's length in bytes


def dtype_for(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id of a vocabulary."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


class IdsWriter:
    """Appends the ids of one split after another to an open binary file."""

    def __init__(self, f, dtype: np.dtype):
        self.f, self.dtype = f, dtype
        self.counts: dict[str, int] = {}

    def write(self, split: str, parts: Iterable[list[int]]) -> None:
        """Write a split's ids, given as a stream of lists."""
        count = 0
        for part in parts:
            self.f.write(np.asarray(part, dtype=self.dtype).tobytes())
            count += len(part)
        self.counts[split] = count


def write(file: Path | None, dtype: np.dtype, fill: Callable[[IdsWriter], dict], elsewhere: str):
    """Make the ids with `fill` (which writes the splits and returns the meta to keep)
    and map them: (meta, {split: ids}).

    With a `file`, they are written there atomically; when that fails (a full disk) or
    `file` is None, they go to an unnamed temporary file instead, which lives as long as
    the map (one warning line says the next run tokenizes again).
    """
    if file is not None:
        try:
            atomic_write(file, lambda f: _write_all(f, dtype, fill), elsewhere=elsewhere)
            mapped = read(file)
            if mapped is not None:
                return mapped
        except CannotWrite as e:
            warnings.warn(f"token cache not saved (the next run tokenizes again): {e}", stacklevel=2)
    with tempfile.TemporaryFile(prefix="rnnlm-ids-") as f:
        _write_all(f, dtype, fill)
        f.flush()
        return _map(f, f.seek(0, 2))


def _write_all(f, dtype: np.dtype, fill: Callable[[IdsWriter], dict]) -> None:
    writer = IdsWriter(f, dtype)
    meta = {**fill(writer), "format": FORMAT, "dtype": dtype.str, "counts": writer.counts}
    blob = json.dumps(meta).encode("utf-8")
    f.write(blob + _TAIL.pack(len(blob)) + MAGIC)


def read(file: Path):
    """(meta, {split: ids as a 1-D tensor over a memory map}) of a cache file, or None
    when it is absent or does not parse (then it is built again)."""
    try:
        with open(file, "rb") as f:
            return _map(f, f.seek(0, 2))
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None


def _map(f, size: int):
    """Parse the tail of an open cache file and map its ids; None when it does not parse."""
    tail = len(MAGIC) + _TAIL.size
    if size < tail:
        return None
    f.seek(size - tail)
    end = f.read(tail)
    (meta_len,) = _TAIL.unpack(end[:_TAIL.size])
    if end[_TAIL.size:] != MAGIC or meta_len > size - tail:
        return None
    f.seek(size - tail - meta_len)
    meta = json.loads(f.read(meta_len).decode("utf-8"))
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("dtype") not in ("<u2", "<u4"):
        return None
    dtype, counts = np.dtype(meta["dtype"]), meta["counts"]
    total = sum(int(n) for n in counts.values())
    if total * dtype.itemsize != size - tail - meta_len or any(int(n) < 0 for n in counts.values()):
        return None
    # Copy-on-write: the pages are the file's until written (nothing writes them), and the
    # array is writable, which torch.from_numpy asks for.
    ids = torch.from_numpy(np.memmap(f, dtype=dtype, mode="c", shape=(total,)) if total else np.zeros(0, dtype))
    splits, at = {}, 0
    for name, n in counts.items():
        splits[name] = ids[at: at + int(n)]
        at += int(n)
    return meta, splits
