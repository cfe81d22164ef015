"""Files a run writes and reads: atomic writes and the metrics log.

Every file rnnlm writes for later (checkpoints, the token cache, the tokenizer, a
download) goes through `atomic_write`: the bytes go to a temporary file in the same
folder, which is renamed over the target only once complete. os.replace is atomic on
POSIX and Windows, so a reader, or a process killed at any moment, sees either the old
complete file or the new complete one, never half of one.

``metrics.jsonl`` holds one JSON object per line, appended as training goes; a run
killed mid-write can leave a torn last line, which `read_jsonl` skips.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None], *, durable: bool = False) -> None:
    """Call ``write(f)`` on a temporary file beside `path`, then rename it to `path`.

    On any error the temporary file is removed and the error is raised as it came (an
    OSError for a full disk or a read-only folder): `path` is then as it was. With
    `durable`, the bytes and the rename are flushed to disk before returning, so the new
    file also survives a power cut.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        _fsync_dir(path.parent)


def write_text_atomic(path: str | Path, text: str) -> None:
    """`atomic_write` of a UTF-8 text."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def remove_temporaries(folder: str | Path, name: str) -> None:
    """Remove the temporary files `atomic_write` left beside `name` when its process was killed."""
    for tmp in Path(folder).glob(f".{name}.*.tmp"):
        tmp.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself survive a power cut (POSIX; not possible on Windows).
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_jsonl(path: str | Path) -> list[dict]:
    """The JSON objects of a .jsonl file, one per line; torn or foreign lines are skipped."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one JSON object as a line."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
