"""The optimizer, its learning-rate schedule and weight averaging."""

from __future__ import annotations

import copy
import math

import torch


def build_optimizer(model: torch.nn.Module, cfg) -> torch.optim.Optimizer:
    """AdamW or SGD; weight decay on matrices only (not on biases)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    try:
        # One fused kernel over all parameters where this torch has it (CUDA; CPU since
        # torch 2.4): about a third of the time of the default (foreach) AdamW (docs/speed.md).
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=True)
    except (RuntimeError, ValueError):  # older torch, or a device without the fused kernel
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


class ExponentialMovingAverage:
    """An exponential moving average of a model's weights, kept in a copy of the model.

        avg_1 = w_1,    avg_t = decay * avg_{t-1} + (1 - decay) * w_t

    after every optimizer step t (Polyak averaging with exponential weights: the last
    1 / (1 - decay) steps count most). Averaging irons out the step-to-step noise of
    small-batch training; `module` is the averaged model, for evaluation and checkpoints.
    Off by default (``optim.ema_decay: 0``); docs/tuning.md compares runs with and
    without it after a cosine schedule.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.module = copy.deepcopy(model).requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update_parameters(self, model: torch.nn.Module) -> None:
        for avg, w in zip(self.module.parameters(), model.parameters()):
            if self.updates == 0:
                avg.copy_(w)
            else:
                avg.lerp_(w, 1 - self.decay)
        self.updates += 1


def get_lr(step: int, progress: float, cfg) -> float:
    """Learning rate at `step`: linear warmup over warmup_steps, then cosine by `progress`.

    `progress` in [0, 1] is how far the run is towards its limit (steps, epochs or
    minutes, whichever is nearest), so the cosine ends at min_lr_ratio * lr exactly when
    the run does, also for a run bounded only by time.
    """
    warmup = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
    if cfg.schedule == "constant":
        return cfg.lr * warmup
    progress = min(max(progress, 0.0), 1.0)
    cosine = cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return cfg.lr * warmup * cosine


def run_progress(step: int, epoch_float: float, seconds: float, tc) -> float:
    """Fraction of the run done: the largest of the fractions of each limit that is set."""
    fractions = [0.0]
    if tc.max_steps:
        fractions.append(step / tc.max_steps)
    if tc.max_epochs:
        fractions.append(epoch_float / tc.max_epochs)
    if tc.max_minutes:
        fractions.append(seconds / (60 * tc.max_minutes))
    return max(fractions)
