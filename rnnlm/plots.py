"""Looking at a run: training curves from metrics.jsonl, and optional TensorBoard logging.

Every run writes ``metrics.jsonl``, one JSON object per line. Training records hold
``step, epoch, tokens, train_loss, lr, grad_norm`` (the global norm before clipping),
``tokens_per_s, seconds``; evaluation records hold ``step, tokens, val_loss, val_bpc,
seconds``. ``plot_run`` draws them as one PNG:

    top:     training and validation loss (nats/token) against tokens seen
    bottom:  gradient norm before clipping (log scale), the clip threshold as a line

matplotlib is a dependency of the package, but a run goes on without it (one warning
line) when it is missing; it is imported only when a picture is drawn, with the Agg
backend so no display is needed.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from typing import Optional

import yaml

from rnnlm.errors import RnnlmError
from rnnlm.files import atomic_write, read_jsonl

PLOT_NAME = "training.png"
MATPLOTLIB_MISSING = "matplotlib is not installed; pip install matplotlib (a dependency of rnnlm: reinstall with pip install -e .) to draw plots"


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display), or a one-line error."""
    try:
        import matplotlib
    except ImportError:
        raise RnnlmError(MATPLOTLIB_MISSING) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def read_metrics(run_dir) -> list[dict]:
    """The records of run_dir/metrics.jsonl; a torn last line (a killed run) is skipped."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise RnnlmError(f"{path} not found; pass a run directory written by `rnnlm train` (train.out_dir)")
    records = read_jsonl(path)
    if not records:
        raise RnnlmError(f"{path} holds no metrics yet; train for at least train.log_every steps")
    return records


def clip_threshold(run_dir) -> Optional[float]:
    """optim.clip_grad_norm of the run from its config.yaml (None if unknown or 0 = off)."""
    path = Path(run_dir) / "config.yaml"
    try:
        clip = float(yaml.safe_load(path.read_text(encoding="utf-8"))["optim"]["clip_grad_norm"])
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
        return None
    return clip if clip > 0 else None


def plot_run(run_dir, out: Optional[str | Path] = None) -> Path:
    """Draw the training curves of run_dir into out (default run_dir/training.png)."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    train = [r for r in records if "train_loss" in r]
    val = [r for r in records if "val_loss" in r]
    clip = clip_threshold(run_dir)
    plt = pyplot()

    fig, (ax_loss, ax_grad) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True,
                                           gridspec_kw={"height_ratios": [3, 2]})
    if train:
        ax_loss.plot([r["tokens"] for r in train], [r["train_loss"] for r in train],
                     lw=1, color="tab:blue", label="train loss")
    if val:
        ax_loss.plot([r["tokens"] for r in val], [r["val_loss"] for r in val], "o-", ms=4,
                     color="tab:orange", label="validation loss")
        best = min(val, key=lambda r: r["val_loss"])
        ax_loss.annotate(f"best: {best['val_loss']:.3f} nats/token, {best['val_bpc']:.3f} bpc",
                         (best["tokens"], best["val_loss"]), textcoords="offset points", xytext=(-10, 12),
                         ha="right", fontsize=8, color="tab:orange")
    ax_loss.set_ylabel("loss (nats/token)")
    ax_loss.set_title(f"{run_dir.name}: loss against tokens seen")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()

    grad = [r for r in train if "grad_norm" in r and math.isfinite(r["grad_norm"]) and r["grad_norm"] > 0]
    if grad:
        ax_grad.plot([r["tokens"] for r in grad], [r["grad_norm"] for r in grad], lw=1, color="tab:green",
                     label="gradient norm (before clipping)")
        ax_grad.set_yscale("log")
    if clip is not None:
        ax_grad.axhline(clip, color="tab:red", ls="--", lw=1, label=f"clip threshold {clip:g}")
    ax_grad.set_ylabel("global gradient norm")
    ax_grad.set_xlabel("tokens seen")
    ax_grad.grid(alpha=0.3, which="both")
    ax_grad.legend(fontsize=8)
    fig.tight_layout()

    out = Path(out) if out is not None else run_dir / PLOT_NAME
    save_figure(fig, out, dpi=100, elsewhere=f"draw it elsewhere with: rnnlm plot {run_dir} --out FILE")
    return out


def save_figure(fig, out: str | Path, dpi: int, elsewhere: str = "pass another --out") -> None:
    """Write a matplotlib figure as a PNG, atomically (a full disk leaves the old picture and
    is one line, see files.atomic_write), and close it."""
    plt = pyplot()
    try:
        atomic_write(out, lambda f: fig.savefig(f, format="png", dpi=dpi), elsewhere=elsewhere)
    finally:
        plt.close(fig)


def plot_run_quietly(run_dir) -> Optional[Path]:
    """plot_run for the end of training: any failure is one warning line, never an error."""
    try:
        path = plot_run(run_dir)
    except RnnlmError as e:
        print(f"warning: no training plot: {e}", file=sys.stderr)
    except Exception as e:  # a plot must never cost a finished run
        print(f"warning: no training plot: {type(e).__name__}: {e}", file=sys.stderr)
    else:
        print(f"training curves: {path}")
        return path
    return None


# ---------------------------------------------------------------------------------------
# TensorBoard (optional: only when the `tensorboard` package is installed)


def open_tensorboard(run_dir):
    """A SummaryWriter logging into run_dir/tensorboard, or None (with a warning) without tensorboard."""
    if importlib.util.find_spec("tensorboard") is None:
        print("warning: train.tensorboard is on but tensorboard is not installed (pip install tensorboard); "
              "logging to metrics.jsonl only", file=sys.stderr)
        return None
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))


# metrics.jsonl key -> TensorBoard tag; the x axis is the optimizer step.
TENSORBOARD_TAGS = {
    "train_loss": "loss/train", "val_loss": "loss/valid", "val_bpc": "bpc/valid",
    "lr": "optim/lr", "grad_norm": "optim/grad_norm", "tokens_per_s": "speed/tokens_per_s",
}


def log_to_tensorboard(writer, record: dict) -> None:
    """Write the scalars of one metrics.jsonl record."""
    for key, tag in TENSORBOARD_TAGS.items():
        if key in record:
            writer.add_scalar(tag, record[key], global_step=record["step"])
