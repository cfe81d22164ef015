"""Compare settings by short trials: validation bits per character against minutes.

    python scripts/sweep.py --config configs/war_and_peace.yaml --minutes 3 \\
        --trial "lstm 512" model.hidden_size=512 \\
        --trial "gru 512" model.cell=gru \\
        --trial "no dropout" model.dropout=0

Each trial trains the base config with its overrides (plus the common `--set` ones) for
the same budget, one after another in this process, then the table lists each trial's
validation bpc, steps, tokens/s and minutes. `--json FILE` also writes the rows.
Run it on an otherwise idle machine: trials with a time budget compete for the CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from rnnlm.config import load_config  # noqa: E402
from rnnlm.errors import RnnlmError  # noqa: E402
from rnnlm.train import train  # noqa: E402


def run_trial(config: str, overrides: list[str], out_dir: Path) -> dict:
    cfg = load_config(config, overrides + [f"train.out_dir={out_dir}", "train.progress=false",
                                           "train.overwrite=true"])
    with contextlib.redirect_stdout(io.StringIO()):
        result = train(cfg)
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    speeds = [r["tokens_per_s"] for r in records if "tokens_per_s" in r]
    return {
        "val_bpc": result["valid"]["bpc"], "test_bpc": result["test"]["bpc"],
        "steps": result["steps"], "tokens": result["tokens"], "minutes": result["minutes"],
        "tokens_per_s": sorted(speeds)[len(speeds) // 2] if speeds else float("nan"),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="base YAML config")
    p.add_argument("--minutes", type=float, default=None, help="train.max_minutes of every trial")
    p.add_argument("--steps", type=int, default=None, help="train.max_steps of every trial (instead of minutes)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides common to all trials")
    p.add_argument("--trial", nargs="+", action="append", required=True, metavar=("NAME", "KEY=VALUE"),
                   help="a trial: its name, then its overrides")
    p.add_argument("--out", default=None, help="folder for the trials' run directories (default: a temp dir)")
    p.add_argument("--json", default=None, help="also write the table's rows to this file")
    args = p.parse_args(argv)

    budget = []
    if args.minutes:
        budget += [f"train.max_minutes={args.minutes}", "train.max_steps=null", "train.max_epochs=null"]
    if args.steps:
        budget += [f"train.max_steps={args.steps}", "train.max_minutes=null", "train.max_epochs=null"]
    root = Path(args.out or tempfile.mkdtemp(prefix="rnnlm-sweep-"))
    rows = []
    print(f"{'trial':<28} {'val bpc':>8} {'test bpc':>8} {'steps':>6} {'tok/s':>7} {'min':>5}")
    for i, (name, *overrides) in enumerate(args.trial):
        try:
            row = run_trial(args.config, budget + args.set + overrides, root / f"trial{i}")
        except RnnlmError as e:
            print(f"{name:<28} error: {e}")
            continue
        rows.append({"trial": name, "overrides": overrides, **row})
        print(f"{name:<28} {row['val_bpc']:8.4f} {row['test_bpc']:8.4f} {row['steps']:6d} "
              f"{row['tokens_per_s']:7.0f} {row['minutes']:5.1f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
