"""The exceptions a user sees: bad input, and a training run stopped by a signal.

Anything raised as ``RnnlmError`` is bad input or a bad environment, not a bug: the
command-line entry points print its message as a single line (``error: ...``) and exit
with status 2, without a traceback. The message names the problem and the fix.
``TrainingInterrupted`` says where a run stopped by SIGINT/SIGTERM saved its progress.
"""

import signal
from pathlib import Path


class RnnlmError(Exception):
    """A user-facing error: one line that names the problem and how to fix it."""


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM arrived; the checkpoint is written and the run can be resumed."""

    def __init__(self, signum: int, step: int, path: Path):
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name} after step {step}; progress saved to {path} "
                         f"(continue with: rnnlm train --resume {path.parent})")
        self.signum = signum
