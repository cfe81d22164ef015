"""The exceptions a user sees: bad input, a file that cannot be written, and a training run
stopped by a signal.

Anything raised as ``RnnlmError`` is bad input or a bad environment, not a bug: the
command-line entry points print its message as a single line (``error: ...``) and exit
with status 2, without a traceback. The message names the problem and the fix.
``CannotWrite`` is the RnnlmError of a full or read-only disk. ``TrainingInterrupted``
says where a run stopped by SIGINT/SIGTERM saved its progress.
"""

import signal
from pathlib import Path
from typing import Optional


class RnnlmError(Exception):
    """A user-facing error: one line that names the problem and how to fix it."""


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM arrived; the checkpoint is written and the run can be resumed."""

    def __init__(self, signum: int, step: int, path: Path):
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name} after step {step}; progress saved to {path} "
                         f"(continue with: rnnlm train --resume {path.parent})")
        self.signum = signum


class CannotWrite(RnnlmError):
    """A file could not be written: the disk is full, read-only or not ours (see files.atomic_write).

    The temporary file is gone and the old file, if any, is unchanged (`kept` says so).
    ``what``, ``cause`` and ``fix`` are parts of the message, for callers that add what the
    failure means for them (training says which checkpoint it still has).
    """

    def __init__(self, path: Path, cause: str, kept: str, fix: str, elsewhere: Optional[str] = None):
        self.path, self.cause, self.fix = Path(path), cause, fix
        self.what = f"cannot write {path}: {cause} ({kept})"  # the message without the fix
        super().__init__(f"{self.what}; {fix}" + (f" or {elsewhere}" if elsewhere else ""))
