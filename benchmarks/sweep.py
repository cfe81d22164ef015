"""Compare settings by short trials: validation bits per character against minutes.

    python benchmarks/sweep.py --config configs/war_and_peace.yaml --minutes 3 \\
        --trial "lstm 512" model.hidden_size=512 \\
        --trial "gru 512" model.cell=gru \\
        --trial "no dropout" model.dropout=0

Each trial trains the base config with its overrides (plus the common `--set` ones) for
the same budget, one after another in this process, then the table lists each trial's
validation bpc, steps, tokens/s and minutes. `--json FILE` also writes the rows.
Run it on an otherwise idle machine: trials with a time budget compete for the CPU.

A time budget (`--minutes`) lets the machine's speed of the moment decide: on a shared
machine the same trial can run at a third of its speed at another hour. A step budget
(`--steps N`) computes the same thing at any speed, but a slower setting (a larger
vocabulary, a wider model) gets the same steps as a faster one. `--steps N --equal-time`
does both: it first times one training step of every trial's model side by side in this
process (random tokens, alternating rounds: benchmarks/timing.py, so a change of machine
speed hits all alike), then gives the first trial N steps and every other trial the
steps that take the same time: N * t_first / t_trial.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from a checkout

from benchmarks.timing import at_precision, interleaved, lm_train_step_fn  # noqa: E402
from rnnlm.config import load_config  # noqa: E402
from rnnlm.errors import RnnlmError  # noqa: E402
from rnnlm.files import read_jsonl  # noqa: E402
from rnnlm.train import train  # noqa: E402


def step_seconds(config: str, trial_overrides: list[list[str]], rounds: int = 7, reps: int = 3) -> list[float]:
    """Median seconds of one training step (forward, backward, clipping, AdamW) of each
    trial's model at its train.precision, on random tokens, timed side by side
    (benchmarks.timing.interleaved).
    The vocabulary size is tokenizer.vocab_size; where a setting is `auto`, the training
    text is read (not tokenized) to size it as training will."""
    import torch

    from rnnlm.model import RNNLM

    steps = {}
    for i, overrides in enumerate(trial_overrides):
        cfg = sized_config(load_config(config, overrides))  # train.precision too: as the trainer runs it on this CPU
        V, B, T = cfg.tokenizer.vocab_size, cfg.train.batch_size, cfg.train.seq_len
        torch.manual_seed(0)
        model = RNNLM(V, cfg.model).train()
        step = lm_train_step_fn(model, torch.randint(V, (B, T)), torch.randint(V, (B, T)),
                                cfg.optim.clip_grad_norm or float("inf"))
        steps[i] = at_precision(step, cfg.train.precision)
    secs = interleaved(steps, rounds, reps)
    return [secs[i] for i in range(len(trial_overrides))]


def sized_config(cfg):
    """`cfg` with its `auto` settings resolved as the trainer resolves them on this CPU
    (rnnlm.sizing.resolve_auto); the text is read only when a setting is sized to it."""
    import torch

    from rnnlm.data import splits_from_config
    from rnnlm.sizing import needs_text, resolve_auto

    chars = len(splits_from_config(cfg, download=True)["train"]) if needs_text(cfg) else None
    return resolve_auto(cfg, torch.device("cpu"), chars).cfg


def run_trial(config: str, overrides: list[str], out_dir: Path) -> dict:
    """Train one trial quietly into out_dir; its bpc, steps, tokens, minutes and median tokens/s."""
    cfg = load_config(config, overrides + [f"train.out_dir={out_dir}", "train.progress=false",
                                           "train.overwrite=true"])
    with contextlib.redirect_stdout(io.StringIO()):
        result = train(cfg)
    speeds = [r["tokens_per_s"] for r in read_jsonl(out_dir / "metrics.jsonl") if "tokens_per_s" in r]
    return {
        "val_bpc": result["valid"]["bpc"], "test_bpc": result["test"]["bpc"] if result["test"] else float("nan"),
        "steps": result["steps"], "tokens": result["tokens"], "minutes": result["minutes"],
        "tokens_per_s": statistics.median_high(speeds) if speeds else float("nan"),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; --equal-time without --steps is an error (exit 2)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="base YAML config")
    p.add_argument("--minutes", type=float, default=None, help="train.max_minutes of every trial")
    p.add_argument("--steps", type=int, default=None, help="train.max_steps of every trial (instead of minutes)")
    p.add_argument("--equal-time", action="store_true",
                   help="with --steps: scale each trial's steps by its measured step time, so every trial "
                        "trains as long as the first one's --steps take")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides common to all trials")
    p.add_argument("--trial", nargs="+", action="append", required=True, metavar=("NAME", "KEY=VALUE"),
                   help="a trial: its name, then its overrides")
    p.add_argument("--out", default=None, help="folder for the trials' run directories (default: a temp dir)")
    p.add_argument("--json", default=None, help="also write the table's rows to this file")
    args = p.parse_args(argv)
    if args.equal_time and not args.steps:
        p.error("--equal-time needs --steps N (the first trial's steps)")
    return args


def budget_overrides(minutes: float | None, steps: int | None) -> list[str]:
    """The overrides that bound every trial by --minutes or --steps alone (no epoch limit)."""
    budget = []
    if minutes:
        budget += [f"train.max_minutes={minutes}", "train.max_steps=null", "train.max_epochs=null"]
    if steps:
        budget += [f"train.max_steps={steps}", "train.max_minutes=null", "train.max_epochs=null"]
    return budget


def equal_time_trials(config: str, common: list[str], trials: list[tuple[str, list[str]]],
                      steps: int) -> list[tuple[str, list[str]]]:
    """Each trial with train.max_steps appended: `steps` for the first, the same time's steps for the others.
    Prints each trial's measured step time; a bad setting raises RnnlmError."""
    secs = step_seconds(config, [common + overrides for _, overrides in trials])
    scaled = []
    for i, (name, overrides) in enumerate(trials):
        n = max(1, round(steps * secs[0] / secs[i]))
        print(f"{name:<28} {1e3 * secs[i]:7.1f} ms/step ({secs[i] / secs[0]:.3f}x): {n} steps")
        scaled.append((name, overrides + [f"train.max_steps={n}"]))
    return scaled


def main(argv: list[str] | None = None) -> int:
    """Run the trials one after another and print (and with --json write) a row for each; 2 on a bad setting."""
    args = parse_args(argv)
    budget = budget_overrides(args.minutes, args.steps)
    root = Path(args.out or tempfile.mkdtemp(prefix="rnnlm-sweep-"))
    trials = [(name, overrides) for name, *overrides in args.trial]
    if args.equal_time:
        try:
            trials = equal_time_trials(args.config, args.set, trials, args.steps)
        except RnnlmError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    rows = []
    print(f"{'trial':<28} {'val bpc':>8} {'test bpc':>8} {'steps':>6} {'tok/s':>7} {'min':>5}")
    for i, (name, overrides) in enumerate(trials):
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
