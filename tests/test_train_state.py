"""Where a training run is (rnnlm.train_state): TrainState's part of a checkpoint restores
the counters, the carried hidden state and the random number stream (in one process; the
ranks of a torchrun are in test_distributed.py), and the non-finite tensors of nested
state dicts are named."""

import io
import math

import pytest
import torch

from rnnlm.train_state import TrainState, all_finite, nonfinite_tensors

CPU = torch.device("cpu")


def through_a_file(fields: dict) -> dict:
    """`fields` saved and loaded as a checkpoint is (torch.save, then a weights-only load)."""
    buffer = io.BytesIO()
    torch.save(fields, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_checkpoint_fields_round_trip_restores_counters_hidden_state_and_the_random_stream():
    hidden = [(torch.randn(4, 8), torch.randn(4, 8)), (torch.randn(4, 8), torch.randn(4, 8))]  # 2 lstm layers
    state = TrainState(step=7, epoch=1, position=48, tokens_seen=1792, elapsed=12.5, bad_steps_skipped=2,
                       best_val_loss=1.25, hidden=hidden)
    torch.manual_seed(3)
    torch.rand(5)
    fields = through_a_file(state.checkpoint_fields(CPU))
    expected = torch.rand(20)  # what the run would draw next
    torch.rand(100)  # setting up a resumed run draws random numbers too (initial weights)

    restored = TrainState.from_checkpoint(fields, CPU)
    assert torch.equal(torch.rand(20), expected)  # the stream goes on where it was saved
    for name in ("step", "epoch", "position", "tokens_seen", "elapsed", "bad_steps_skipped", "best_val_loss"):
        assert getattr(restored, name) == getattr(state, name), name
    assert len(restored.hidden) == 2
    for got, saved in zip(restored.hidden, hidden):
        assert isinstance(got, tuple) and len(got) == 2
        assert all(torch.equal(a, b) for a, b in zip(got, saved))


def test_a_fresh_state_round_trips_too():
    restored = TrainState.from_checkpoint(through_a_file(TrainState().checkpoint_fields(CPU)), CPU)
    assert restored.hidden is None and restored.step == 0 and restored.best_val_loss == math.inf


def test_epoch_float_counts_the_share_of_the_current_epoch():
    assert TrainState(epoch=2, position=25).epoch_float(stream_len=101) == 2.25
    assert TrainState(epoch=0, position=0).epoch_float(stream_len=1) == 0.0  # no division by zero


def test_nonfinite_tensors_names_the_bad_tensors_in_nested_dicts_and_lists():
    tree = {
        "model": {"embedding.weight": torch.ones(3), "decoder.bias": torch.tensor([0.0, math.nan])},
        "optimizer": {0: {"step": torch.tensor(5), "exp_avg": torch.tensor([math.inf]),
                          "exp_avg_sq": torch.zeros(2)},
                      1: {"exp_avg": torch.tensor([-math.inf, 1.0])}},
        "hidden": [(torch.zeros(2), torch.full((2,), math.nan))],
        "ids": torch.tensor([1, 2, 3]),  # integer tensors are never non-finite
        "note": "not a tensor",
    }
    assert nonfinite_tensors(tree) == ["model.decoder.bias", "optimizer.0.exp_avg", "optimizer.1.exp_avg",
                                       "hidden.0.1"]
    assert nonfinite_tensors({"model": {"w": torch.ones(2, 2)}}) == []
    assert nonfinite_tensors(torch.tensor(math.nan), "loss") == ["loss"]


@pytest.mark.parametrize("values, finite", [
    ([1.0, 2.0], True), ([1.0, math.nan], False), ([math.inf], False), ([-math.inf, 0.0], False)])
def test_all_finite(values, finite):
    assert all_finite(torch.tensor(0.5), torch.tensor(values)) is finite
