"""Files a run writes and reads: atomic writes, the metrics log, and what may be read as a file.

Every file rnnlm writes for later (checkpoints, the token cache, the tokenizer, a
download, plots) goes through `atomic_write`: the bytes go to a temporary file in the same
folder, which is renamed over the target only once complete. os.replace is atomic on
POSIX and Windows, so a reader, or a process killed at any moment, sees either the old
complete file or the new complete one, never half of one.

A write that fails for want of room or rights (a full disk or quota, a read-only file
system, a folder that is not ours; also torch.save's "unexpected pos" when the disk fills
under it) is a `CannotWrite`: one line naming the file, the cause and the fix, with the
temporary file removed and the old file as it was.

``metrics.jsonl`` holds one JSON object per line, appended as training goes; a run
killed mid-write can leave a torn last line, which `read_jsonl` skips; an append that
fails is cut back off, so the file stays as it was.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Optional

from rnnlm.errors import CannotWrite

# errno -> (the cause, in words; the fix, before "or <elsewhere>")
WRITE_FAILURES = {
    errno.ENOSPC: ("no space left on the device", "free some disk space"),
    errno.EDQUOT: ("the disk quota is used up", "free some of your quota"),
    errno.EFBIG: ("the file is larger than this file system allows", "use another file system"),
    errno.EROFS: ("the file system is read-only", "make it writable"),
    errno.EACCES: ("permission denied", "make the folder writable"),
    errno.EPERM: ("operation not permitted", "make the folder writable"),
}
# torch.save's C++ writer says this (and nothing about the disk) when a write came up short.
TORCH_SHORT_WRITE = ("unexpected pos", "PytorchStreamWriter failed", "enforce fail at inline_container")


# What a path that is not a regular file is, for the one-line refusal (a FIFO may wait forever
# for a writer; a device such as /dev/zero never ends).
NOT_REGULAR = ((stat.S_ISDIR, "is a directory"), (stat.S_ISFIFO, "is a named pipe (FIFO)"),
               (stat.S_ISCHR, "is a character device"), (stat.S_ISBLK, "is a block device"),
               (stat.S_ISSOCK, "is a socket"))


def regular_file_problem(path: str | Path, *, fifo_ok: bool = False) -> Optional[str]:
    """What keeps `path` from being read as a text file ("does not exist", "is a directory",
    "is a character device", ...), or None for a regular file (or, with `fifo_ok`, a pipe:
    a prompt given as <(command) is one). Follows symbolic links."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "is a broken symbolic link" if Path(path).is_symlink() else "does not exist"
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    if stat.S_ISREG(mode) or (fifo_ok and stat.S_ISFIFO(mode)):
        return None
    return next((problem for test, problem in NOT_REGULAR if test(mode)), "is not a regular file")


def write_failure(error: BaseException) -> Optional[tuple[str, str]]:
    """(cause, fix) when `error`, or an error it arose from, says the disk is full, read-only or
    not ours; None for any other error (a bug, a network error inside `write`, Ctrl-C)."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in WRITE_FAILURES:
            return WRITE_FAILURES[seen.errno]
        seen = seen.__cause__ or seen.__context__
    if isinstance(error, RuntimeError) and any(s in str(error) for s in TORCH_SHORT_WRITE):
        return WRITE_FAILURES[errno.ENOSPC]  # a short write: in practice, the disk filled up
    return None


def cannot_write(path: Path, error: BaseException, elsewhere: str, existed: bool) -> Optional[CannotWrite]:
    """The one-line CannotWrite for a failed write of `path`, or None when `error` is not a write failure."""
    failure = write_failure(error)
    if failure is None:
        return None
    cause, fix = failure
    return CannotWrite(path, cause, kept_note(path, existed), fix, elsewhere)


def kept_note(path: Path, existed: bool) -> str:
    """What a failed write of `path` left: the old file, or none."""
    return f"the previous {path.name} is kept, unchanged" if existed else f"no {path.name} was written"


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None], *, durable: bool = False,
                 elsewhere: str = "write it to another place") -> None:
    """Call ``write(f)`` on a temporary file beside `path`, then rename it to `path`.

    On any error the temporary file is removed and `path` is as it was. A full disk, a
    read-only or foreign folder is raised as `CannotWrite`, whose fix ends with
    `elsewhere` (e.g. "set train.out_dir to another disk"); any other error is raised as it
    came. With `durable`, the bytes and the rename are flushed to disk before returning,
    so the new file also survives a power cut.
    """
    path = Path(path)
    existed = path.exists()
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        failure = cannot_write(path, e, elsewhere, existed)
        if failure is None:
            raise
        raise failure from None
    if durable:
        _fsync_dir(path.parent)


def write_text_atomic(path: str | Path, text: str, *, elsewhere: str = "write it to another place") -> None:
    """`atomic_write` of a UTF-8 text."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")), elsewhere=elsewhere)


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


def append_jsonl(path: str | Path, record: dict, *, elsewhere: str = "write it to another place") -> None:
    """Append one JSON object as a line; a failed append is cut back off (`CannotWrite` on a full
    disk, as in `atomic_write`), so the file holds whole lines only."""
    path = Path(path)
    existed = path.exists()
    size = path.stat().st_size if existed else 0
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
    except BaseException as e:
        _truncate_quietly(path, size)
        failure = cannot_write(path, e, elsewhere, existed)
        if failure is None:
            raise
        raise failure from None


def _truncate_quietly(path: Path, size: int) -> None:
    # Shrinking a file needs no new space, so this works on a full disk.
    try:
        os.truncate(path, size)
    except OSError:
        pass
