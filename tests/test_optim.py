"""The optimizer and its schedule (rnnlm.optim): the learning rate's warmup, cosine and
constant schedules, how far a run is towards its limits, weight decay on matrices only,
and the moving average of the weights."""

import math
from types import SimpleNamespace

import pytest
import torch

from rnnlm.config import ModelConfig, load_config
from rnnlm.model import RNNLM
from rnnlm.optim import ExponentialMovingAverage, build_optimizer, get_lr, run_progress


def optim_config(*overrides):
    return load_config(None, list(overrides)).optim


def test_lr_schedule_warms_up_then_decays():
    cfg = load_config(None, ["optim.lr=1.0", "optim.warmup_steps=10", "optim.min_lr_ratio=0.1"]).optim
    assert get_lr(0, 0.0, cfg) == pytest.approx(0.1)
    assert get_lr(9, 0.0, cfg) == pytest.approx(1.0)
    assert get_lr(50, 0.5, cfg) == pytest.approx(0.55)
    assert get_lr(100, 1.0, cfg) == pytest.approx(0.1)
    assert math.isclose(get_lr(100, 2.0, cfg), 0.1)  # never below the floor


def test_constant_schedule_warms_up_then_holds_whatever_the_progress():
    cfg = optim_config("optim.lr=2.0", "optim.warmup_steps=4", "optim.schedule=constant")
    assert [get_lr(step, 0.0, cfg) for step in range(5)] == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.0])
    assert get_lr(100, 0.5, cfg) == get_lr(1000, 1.0, cfg) == get_lr(1000, 3.0, cfg) == 2.0


def test_without_warmup_the_cosine_starts_at_the_peak_and_ends_at_the_floor():
    cfg = optim_config("optim.lr=1.0", "optim.warmup_steps=0", "optim.min_lr_ratio=0.0")
    assert get_lr(0, 0.0, cfg) == 1.0
    assert get_lr(0, -0.5, cfg) == 1.0  # progress is clamped to [0, 1]
    assert get_lr(7, 0.25, cfg) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert get_lr(7, 1.0, cfg) == pytest.approx(0.0, abs=1e-12)


def limits(max_steps=None, max_epochs=None, max_minutes=None):
    return SimpleNamespace(max_steps=max_steps, max_epochs=max_epochs, max_minutes=max_minutes)


def test_run_progress_is_the_largest_fraction_of_the_limits_that_are_set():
    # step 50 of 100 (0.5), epoch 0.5 of 2 (0.25), 45 s of 1 minute (0.75)
    assert run_progress(50, 0.5, 45.0, limits(max_steps=100, max_epochs=2, max_minutes=1)) == 0.75
    assert run_progress(50, 0.5, 45.0, limits(max_steps=100, max_epochs=2)) == 0.5
    assert run_progress(50, 1.5, 45.0, limits(max_steps=100, max_epochs=2)) == 0.75
    assert run_progress(50, 0.5, 1e9, limits(max_epochs=1)) == 0.5  # a limit not set does not count
    assert run_progress(50, 0.5, 45.0, limits()) == 0.0


def test_weight_decay_goes_on_matrices_only():
    model = RNNLM(17, ModelConfig(hidden_size=8, num_layers=2))  # tied embedding: one tensor, twice
    for name in ("adamw", "sgd"):
        optimizer = build_optimizer(model, optim_config(f"optim.name={name}", "optim.weight_decay=0.05",
                                                        "optim.momentum=0.5"))
        decay, no_decay = optimizer.param_groups
        assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
        assert decay["params"] and all(p.dim() == 2 for p in decay["params"])
        assert no_decay["params"] and all(p.dim() == 1 for p in no_decay["params"])
        every = {id(p) for p in model.parameters()}
        assert {id(p) for p in decay["params"] + no_decay["params"]} == every
        assert len(decay["params"]) + len(no_decay["params"]) == len(every)  # each once
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["momentum"] == 0.5
    assert isinstance(build_optimizer(model, optim_config()), torch.optim.AdamW)


def test_moving_average_copies_the_first_weights_then_moves_towards_each_new_set():
    model = torch.nn.Linear(3, 2)
    ema = ExponentialMovingAverage(model, decay=0.75)
    assert ema.module is not model and ema.updates == 0
    assert not any(p.requires_grad for p in ema.module.parameters())
    history = []
    for value in (1.0, 2.0, 6.0):
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(value)
        ema.update_parameters(model)
        history.append(float(ema.module.weight[0, 0]))
    # avg_1 = w_1; avg_t = 0.75 avg_{t-1} + 0.25 w_t
    assert history == pytest.approx([1.0, 0.75 * 1 + 0.25 * 2, 0.75 * 1.25 + 0.25 * 6])
    assert ema.updates == 3
    assert torch.equal(ema.module.bias, torch.full((2,), history[-1]))
    assert float(model.weight.detach()[0, 0]) == 6.0  # the trained weights are left alone
