"""Training and generation throughput of rnnlm's recurrent layers vs torch.nn, side by side.

    python scripts/benchmark.py                    # the full table (a few minutes on 2 cores)
    python scripts/benchmark.py --quick            # a smoke run in seconds
    python scripts/benchmark.py --json bench.json  # also write the numbers as JSON

The logic lives in rnnlm/benchmark.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from rnnlm.benchmark import main  # noqa: E402

if __name__ == "__main__":
    main()
