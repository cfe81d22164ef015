"""Non-finite losses and gradients: the step is skipped and counted, the carried hidden
state stays finite, training stops after train.max_bad_steps in a row with a message
naming the saved weights, and no NaN ever reaches a checkpoint."""

import math

import pytest
import torch

import rnnlm.train
from rnnlm.checkpoint import load_checkpoint
from rnnlm.cli import main
from rnnlm.errors import RnnlmError
from rnnlm.model import RNNLM
from rnnlm.train import train
from tests.conftest import read_metrics, tiny_config, tiny_overrides


class NaNGradient(torch.autograd.Function):
    """Identity on the way forward, NaN on the way back: a finite loss with a NaN gradient."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def poison(monkeypatch, bad_calls, mode="loss"):
    """Make training forward passes number `bad_calls` (1-based) produce a NaN loss and a NaN
    hidden state (mode "loss") or a NaN gradient only (mode "grad"). Returns the list of the
    states every training forward pass received."""
    received = []

    class Poisoned(RNNLM):
        calls = 0

        def forward(self, idx, state=None):
            logits, new_state = super().forward(idx, state)
            if not self.training:
                return logits, new_state
            received.append(state)
            Poisoned.calls += 1
            if bad_calls(Poisoned.calls):
                if mode == "loss":
                    logits = logits * float("nan")
                    new_state = [tuple(t * float("nan") for t in layer) for layer in new_state]
                else:
                    logits = NaNGradient.apply(logits)
            return logits, new_state

    monkeypatch.setattr(rnnlm.train, "RNNLM", Poisoned)
    return received


def all_finite_checkpoint(path):
    ckpt = load_checkpoint(path)
    tensors = list(ckpt["model"].values()) + [t for s in ckpt["optimizer"]["state"].values() for t in s.values()]
    tensors += [t for layer in ckpt["hidden"] or [] for t in layer]
    return all(torch.isfinite(t).all() for t in tensors)


@pytest.mark.parametrize("mode", ["loss", "grad"])
def test_a_non_finite_step_is_skipped_counted_and_does_not_poison_the_hidden_state(
        tmp_path, text_file, monkeypatch, capsys, mode):
    received = poison(monkeypatch, lambda call: call in (4, 7), mode)
    result = train(tiny_config(tmp_path, text_file, "train.max_steps=10", "train.max_bad_steps=2",
                               "model.num_layers=2"))
    assert result["steps"] == 10 and len(received) == 12  # two extra passes for the two skipped steps
    assert all(state is None or all(torch.isfinite(t).all() for layer in state for t in layer)
               for state in received), "a NaN state was carried into the next step"
    if mode == "grad":  # the forward pass was sound: its state carries on as usual
        assert all(state is not None for state in received[1:])
    losses = [r["train_loss"] for r in read_metrics(tmp_path / "run") if "train_loss" in r]
    assert len(losses) == 10 and all(math.isfinite(x) for x in losses)
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["bad_steps_skipped"] == 2 and ckpt["step"] == 10
    assert all_finite_checkpoint(tmp_path / "run" / "last.pt")
    assert all_finite_checkpoint(tmp_path / "run" / "best.pt")
    assert "(2 non-finite steps skipped)" in capsys.readouterr().out


def test_too_many_bad_steps_in_a_row_stop_with_the_saved_checkpoint_named(tmp_path, text_file, monkeypatch, capsys):
    poison(monkeypatch, lambda call: call >= 8)  # steps 1-7 are good, then everything is NaN
    cfg = tiny_config(tmp_path, text_file, "train.max_bad_steps=3", "train.checkpoint_every=5")
    last = tmp_path / "run" / "last.pt"
    with pytest.raises(RnnlmError) as e:
        train(cfg)
    assert str(e.value) == (f"stopped: 3 steps in a row had a non-finite loss or gradient (after step 7); the last "
                            f"good weights (step 7) are saved in {last}; lower optim.lr or set optim.clip_grad_norm, "
                            "then --resume")
    ckpt = load_checkpoint(last)
    assert ckpt["step"] == 7 and ckpt["bad_steps_skipped"] == 3
    assert all_finite_checkpoint(last)

    # The same through the command line: one line, exit code 2; then a resume carries on.
    capsys.readouterr()
    overrides = [f"{k}={v}" for k, v in [("train.max_bad_steps", 3), ("train.checkpoint_every", 5)]]
    assert main(["train", "--resume", str(tmp_path / "run"), *overrides]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: stopped: 3 steps in a row")
    monkeypatch.undo()
    assert main(["train", "--resume", str(tmp_path / "run"), "train.max_steps=9"]) == 0
    assert load_checkpoint(last)["step"] == 9 and all_finite_checkpoint(last)


def test_a_learning_rate_that_blows_the_weights_up_never_writes_a_nan(tmp_path, text_file, capsys):
    # Unclipped SGD at lr 1e30 turns the weights to inf in the first step.
    code = main(["train", *tiny_overrides(tmp_path, text_file), "model.cell=rnn", "optim.name=sgd", "optim.lr=1e30",
                 "optim.clip_grad_norm=0", "optim.warmup_steps=0", "train.checkpoint_every=1",
                 "train.max_bad_steps=3"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "NaN or inf" in err and "Traceback" not in err, err
    for path in (tmp_path / "run").glob("*.pt"):
        assert all_finite_checkpoint(path), path
    print(err.strip())
