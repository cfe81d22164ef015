"""The cell registry: a cell kind is one class registered by name, and nothing else in the
package knows the names. A toy cell registered here alone trains, resumes, generates,
predicts and exports like the built-in ones. And what inference needs of a model is the
four fields of model.ModelBundle."""

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from conftest import read_metrics, small_text, tiny_config, train_tiny_run, untrained_lm
from rnnlm.cells import CELLS, Cell, RecurrentLayer, cell_class, register
from rnnlm.config import ModelConfig
from rnnlm.errors import RnnlmError

PACKAGE = Path(__file__).resolve().parents[1] / "rnnlm"


class LeakyCell(Cell):
    """A leaky Elman cell, the reference only (no fast path of its own):

        h' = h + (tanh(W_ih x + b_ih + W_hh h + b_hh) - h) / 2
    """

    kind = "leaky"

    def forward(self, x, state, weight_hh=None):
        (h,) = state
        W_hh = self.weight_hh if weight_hh is None else weight_hh
        target = torch.tanh(F.linear(x, self.weight_ih, self.bias_ih) + F.linear(h, W_hh, self.bias_hh))
        return (h + (target - h) / 2,)


@pytest.fixture
def leaky():
    """LeakyCell registered for one test, then taken out again."""
    register(LeakyCell)
    yield LeakyCell
    del CELLS[LeakyCell.kind]


def test_the_built_in_cells_are_registered_under_their_kind():
    builtin = ("rnn", "gru", "lstm", "mingru", "minlstm")
    assert {kind: cls.kind for kind, cls in CELLS.items()} == {k: k for k in builtin}


def test_an_unknown_cell_is_one_line_naming_the_valid_ones():
    with pytest.raises(RnnlmError, match=r"unknown cell 'toy': valid cells are rnn, gru, lstm, mingru, minlstm$"):
        cell_class("toy")
    with pytest.raises(RnnlmError, match="model.cell.*rnn, gru, lstm, mingru, minlstm"):
        ModelConfig(cell="toy")


def test_a_kind_is_registered_once(leaky):
    register(LeakyCell)  # the same class again: nothing changes
    other = type("OtherLeaky", (LeakyCell,), {})
    with pytest.raises(ValueError, match="'leaky' is already LeakyCell"):
        register(other)
    with pytest.raises(TypeError, match="needs a class attribute kind"):
        register(type("Nameless", (Cell,), {}))


def test_a_registered_cell_is_a_valid_model_cell(leaky):
    assert ModelConfig(cell="leaky", weight_drop=0.2).cell == "leaky"  # it has W_hh: DropConnect applies


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_a_cell_without_fast_paths_runs_its_reference_in_both(leaky, impl):
    torch.manual_seed(0)
    layer = RecurrentLayer("leaky", 5, 6, impl=impl).eval()
    x, h0 = torch.randn(4, 3, 5), torch.randn(3, 6)
    y, (h,) = layer(x, (h0,))
    expected = [h0]
    for x_t in x:
        expected.append(expected[-1] + (torch.tanh(x_t @ layer.cell.weight_ih.T + layer.cell.bias_ih
                                                   + expected[-1] @ layer.cell.weight_hh.T + layer.cell.bias_hh)
                                        - expected[-1]) / 2)
    torch.testing.assert_close(y, torch.stack(expected[1:]))
    torch.testing.assert_close(h, expected[-1])
    with torch.no_grad():
        step = layer.stepper()
        state = (h0,)
        for t in range(len(x)):
            out, state = step(x[t], state)
            torch.testing.assert_close(out, y[t])


def test_no_module_but_cells_compares_a_cell_name():
    kinds = "|".join(CELLS)
    name = rf"""["']({kinds})["']"""
    comparison = re.compile(rf"""(==|!=)\s*{name}|{name}\s*(==|!=)|\bin\s*[(\[{{][^)\]}}]*{name}""")
    found = [f"{path.name}:{n}: {line.strip()}" for path in sorted(PACKAGE.glob("*.py")) if path.name != "cells.py"
             for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if comparison.search(line)]
    assert not found, found


@pytest.mark.slow
def test_a_toy_cell_trains_resumes_generates_and_exports(leaky, tmp_path, capsys):
    from rnnlm.cli import main
    from rnnlm.export import NEEDS
    from rnnlm.inference import load_model
    from rnnlm.train import train

    # A constant schedule, so that the first part of the resumed run may end early and be extended.
    common = ("model.cell=leaky", "optim.schedule=constant", "train.max_steps=12", "train.checkpoint_every=6",
              "train.eval_every=6")
    straight = train_tiny_run(tmp_path / "straight", *common)
    text_path = tmp_path / "corpus.txt"
    text_path.write_text(small_text(), encoding="utf-8")
    train(tiny_config(tmp_path / "resumed", text_path, *common, "train.max_steps=6"))
    train(tiny_config(tmp_path / "resumed", text_path, *common, "train.resume=true"))
    losses = [[r["train_loss"] for r in read_metrics(run) if "train_loss" in r]
              for run in (straight, tmp_path / "resumed" / "run")]
    assert len(losses[0]) == 12 and losses[0] == losses[1]  # resumed exactly where it stopped

    lm = load_model(straight / "best.pt", "cpu")
    assert isinstance(lm.model.layers[0].cell, LeakyCell)
    assert lm.generate("The army", max_new_tokens=10, temperature=0)
    assert lm.next_words("The army", k=3)

    for name in NEEDS:
        pytest.importorskip(name)
    capsys.readouterr()
    assert main(["export", "--checkpoint", str(straight / "best.pt"), "--out", str(tmp_path / "onnx")]) == 0
    assert "onnxruntime matches PyTorch" in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["bpe", "word"])
def test_inference_needs_only_a_model_bundle(kind):
    """Generation, prediction, scoring and the activations read the four fields of
    model.ModelBundle and nothing else of a loaded model."""
    from rnnlm.activations import activations
    from rnnlm.evaluate import score_text
    from rnnlm.predict import next_words
    from rnnlm.sample import generate

    loaded = untrained_lm(kind)
    bundle = SimpleNamespace(model=loaded.model, tokenizer=loaded.tokenizer, config=loaded.config,
                             device=loaded.device)
    assert generate(bundle, "The army", max_new_tokens=5, seed=0) == generate(loaded, "The army", max_new_tokens=5,
                                                                               seed=0)
    assert next_words(bundle, "The army", k=3) == loaded.next_words("The army", k=3)
    assert score_text(bundle, small_text(2)) == loaded.score(small_text(2))
    assert activations(bundle, "The army.").values["h"].shape == (9, 1, 16)
