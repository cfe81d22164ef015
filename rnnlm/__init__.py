"""rnnlm: next-word language models on hand-written recurrent cells, in PyTorch."""

from rnnlm.errors import RnnlmError

__all__ = ["RnnlmError"]
__version__ = "0.1.0"
