"""Entry point: `python scripts/train.py --help` (same as the `rnnlm-train` command)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from rnnlm.cli import train_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(train_main())
