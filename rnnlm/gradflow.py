"""Gradient flow through time: how much does the loss at step T care about the state at t?

For a window of T tokens of real text, take the loss at the last step only, L_T, and
measure the norm of its gradient with respect to every step's hidden state,

    g(t) = || dL_T / dh_t ||        plotted against the distance T - t.

Backpropagation through time multiplies by the Jacobian dh_t/dh_{t-1} once per step.
For the plain tanh cell that is diag(1 - h_t^2) W_hh: its norm is usually below 1, so
g shrinks geometrically with the distance (the vanishing gradient) and the loss can
barely learn from anything far back; when W_hh is large, the products grow instead (the
exploding gradient). The LSTM's cell state c_t = f * c_{t-1} + ... carries gradients
additively (multiplied only by the forget gate), and the GRU's h_t = (1 - z) n + z h_{t-1}
likewise, so their g(t) falls far more slowly.

The hidden states are caught with forward hooks on the per-step cell (the reference
implementation unrolls it step by step), with ``retain_grad`` so that after backward each
h_t holds the total derivative dL_T/dh_t, through every later step and layer.

The exploding case is also shown the way training meets it: a few SGD steps on the same
text with clipping off and on, recording the gradient norm before clipping and the loss.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Optional

import torch

from rnnlm.errors import RnnlmError
from rnnlm.model import RNNLM, lm_loss


@dataclass
class Curve:
    """One model's measurement: norms[d] = mean over windows of ||dL_T/dh_{T-d}||, d = 0..T-1."""

    label: str
    group: str  # panel title: "untrained", "trained", ...
    norms: list[float]


@dataclass
class ClipRun:
    """A few SGD steps: the gradient norm before clipping and the loss, per step."""

    label: str
    grad_norms: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)


def text_windows(ids: torch.Tensor, num_windows: int, seq_len: int) -> torch.Tensor:
    """num_windows windows of seq_len + 1 tokens spread evenly over ids -> (B, T + 1)."""
    need = seq_len + 1
    if ids.numel() < need:
        raise RnnlmError(f"the text has {ids.numel()} tokens but one window needs {need}; lower --seq-len")
    num_windows = max(1, min(num_windows, ids.numel() // need))
    stride = (ids.numel() - need) // max(1, num_windows - 1) if num_windows > 1 else 0
    return torch.stack([ids[i * stride: i * stride + need] for i in range(num_windows)]).long()  # (B, T + 1)


def gradient_flow(model: RNNLM, windows: torch.Tensor, layer: int = -1) -> list[float]:
    """||dL_T/dh_t|| of `layer`'s hidden state for distances d = T - t = 0..T-1, averaged over windows.

    windows: (B, T + 1) token ids; inputs are the first T, L_T is the loss of predicting
    the last token from step T. Distance d = T - t counts steps back from the loss.
    """
    model = copy.deepcopy(model)  # the hooks and impl switch must not touch the caller's model
    model.eval()  # no dropout: the measurement is of the network itself
    for module in model.layers:
        module.impl = "reference"  # step by step, so each h_t is a tensor of its own
    states: list[torch.Tensor] = []

    def keep(_cell, _inputs, state):
        state[0].retain_grad()
        states.append(state[0])

    handle = model.layers[layer].cell.register_forward_hook(keep)
    try:
        x, y = windows[:, :-1], windows[:, -1]  # (B, T), (B,)
        with torch.enable_grad():
            logits, _ = model(x)
            # Summed, not averaged: each window's gradient is its own dL_T/dh_t.
            loss = lm_loss(logits[:, -1], y, reduction="sum")
            loss.backward()
    finally:
        handle.remove()
    T = x.size(1)
    # states[i] is the state after step i + 1; the loss is read after step T = states[T - 1].
    return [float(states[T - 1 - d].grad.norm(dim=-1).mean()) for d in range(T)]


def untrained_models(model_cfg, cells: list[str], vocab_size: int, *, seed: int,
                     hh_scale: Optional[float] = None) -> list[RNNLM]:
    """A freshly initialised model of each cell kind (dropout off), all from the same seed,
    with W_hh scaled by `hh_scale` when given."""
    models = []
    for cell in cells:
        torch.manual_seed(seed)
        model = RNNLM(vocab_size, dataclasses.replace(model_cfg, cell=cell, dropout=0.0))
        if hh_scale:
            scale_hh(model, hh_scale)
        models.append(model)
    return models


def scale_hh(model: RNNLM, scale: float) -> RNNLM:
    """Multiply every W_hh by `scale` (in place): scale > 1 pushes a plain rnn into the exploding regime.
    (The minimal cells have no W_hh: nothing to scale.)"""
    with torch.no_grad():
        for module in model.layers:
            if module.cell.recurrent_weights:
                module.cell.weight_hh.mul_(scale)
    return model


def clipping_run(model: RNNLM, windows: torch.Tensor, *, steps: int, lr: float, clip: float,
                 label: str) -> ClipRun:
    """`steps` plain SGD steps on windows (B, T + 1), clipping the global norm at `clip` (0: off).

    The norm recorded is the one before clipping (what clip_grad_norm_ returns). A run
    whose loss or gradient is no longer finite stops there: that is the explosion.
    """
    model = copy.deepcopy(model)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    run = ClipRun(label)
    x, y = windows[:, :-1], windows[:, 1:]
    for _ in range(steps):
        logits, _ = model(x)
        loss = lm_loss(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip if clip > 0 else math.inf)
        run.grad_norms.append(norm.item())
        run.losses.append(loss.item())
        if not (math.isfinite(run.grad_norms[-1]) and math.isfinite(run.losses[-1])):
            break
        optimizer.step()
    return run


def format_table(curves: list[Curve], distances=(0, 1, 5, 10, 20, 50, 100, 200, 500)) -> str:
    """The norms at a few distances, one row per curve."""
    T = max(len(c.norms) for c in curves)
    cols = [d for d in distances if d < T]
    width = max(len(f"{c.label} ({c.group})") for c in curves)
    lines = [f"{'||dL_T/dh_t||':<{width}}  " + "  ".join(f"{'T-t=' + str(d):>9}" for d in cols)]
    for c in curves:
        cells = [f"{c.norms[d]:9.2e}" if d < len(c.norms) else f"{'':>9}" for d in cols]
        lines.append(f"{c.label + ' (' + c.group + ')':<{width}}  " + "  ".join(cells))
    return "\n".join(lines)


def plot_gradient_flow(curves: list[Curve], out, *, clip_runs: Optional[list[ClipRun]] = None,
                       clip: Optional[float] = None, title: str = "") -> None:
    """One log-scale panel per group of curves, plus a panel of the clipping runs."""
    from rnnlm.plots import pyplot, save_figure

    plt = pyplot()
    groups = list(dict.fromkeys(c.group for c in curves))
    n = len(groups) + (1 if clip_runs else 0)
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 4), squeeze=False)
    axes = axes[0]
    colors = {"rnn": "tab:red", "gru": "tab:green", "lstm": "tab:blue"}
    for ax, group in zip(axes, groups):
        for c in (c for c in curves if c.group == group):
            d = range(len(c.norms))
            ax.plot(d, c.norms, lw=1.5, label=c.label, color=colors.get(c.label.split()[0].rstrip(",")))
        ax.set_yscale("log")
        ax.set_xlabel("distance T - t (steps back from the loss)")
        ax.set_ylabel("||dL_T / dh_t||")
        ax.set_title(group)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    # One y range for all gradient panels, so that curves in different panels compare.
    lows, highs = zip(*(ax.get_ylim() for ax in axes[:len(groups)]))
    for ax in axes[:len(groups)]:
        ax.set_ylim(min(lows), max(highs))
    if clip_runs:
        ax = axes[-1]
        for run, color in zip(clip_runs, ("tab:red", "tab:blue", "tab:purple")):
            steps = range(1, len(run.grad_norms) + 1)
            ax.plot(steps, run.grad_norms, "o-", ms=3, lw=1.5, color=color, label=f"{run.label}: gradient norm")
            ax.plot(steps, run.losses, "s:", ms=3, lw=1.5, color=color, label=f"{run.label}: loss")
            if not (math.isfinite(run.grad_norms[-1]) and math.isfinite(run.losses[-1])):
                finite = [v for v in run.grad_norms + run.losses if math.isfinite(v)]
                ax.annotate(f"{run.label}: inf/NaN at step {len(steps)}", (len(steps), max(finite, default=1.0)),
                            textcoords="offset points", xytext=(8, -4), fontsize=8, color=color)
        if clip:
            ax.axhline(clip, color="gray", ls="--", lw=1, label=f"clip threshold {clip:g}")
        ax.set_yscale("log")
        ax.set_xlabel("SGD step")
        ax.set_title("training steps: clipping off / on")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, out, dpi=80)
