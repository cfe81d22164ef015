"""The one exception type a user ever sees.

Anything raised as ``RnnlmError`` is bad input or a bad environment, not a bug: the
command-line entry points print its message as a single line (``error: ...``) and exit
with status 2, without a traceback. The message names the problem and the fix.
"""


class RnnlmError(Exception):
    """A user-facing error: one line that names the problem and how to fix it."""
