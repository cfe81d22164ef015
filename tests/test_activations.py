"""rnnlm.activations: per-character hidden states, the text's signals and the unit ranking."""

import random

import pytest
import torch
import torch.nn.functional as F

from conftest import small_text, untrained_lm
from rnnlm import activations as A
from rnnlm import tokenizer as tokenization
from rnnlm.config import load_config
from rnnlm.data import split_text
from rnnlm.errors import RnnlmError
from rnnlm.inference import LoadedModel
from rnnlm.model import RNNLM


def model_of(cell: str, kind: str = "char", layers: int = 2, hidden: int = 12) -> LoadedModel:
    """An untrained `cell` model of `layers` layers with a `kind` tokenizer of small_text()."""
    cfg = load_config(None, [f"model.cell={cell}", f"model.num_layers={layers}", f"model.hidden_size={hidden}",
                             f"tokenizer.kind={kind}", "tokenizer.vocab_size=300"])
    tok = tokenization.train_tokenizer(kind, small_text(), cfg.tokenizer.vocab_size)
    torch.manual_seed(0)
    return LoadedModel(RNNLM(tok.get_vocab_size(), cfg.model).eval(), tok, cfg, torch.device("cpu"), 0)


@torch.no_grad()
def states_by_forward(lm, ids) -> list[list[tuple]]:
    """Each layer's state after each token, by the layers' forward pass one token at a time."""
    model, out = lm.model, []
    state = model.init_state(1)
    for token in ids:
        x = F.embedding(torch.tensor([[token]]), model.embedding.weight)  # (T=1, B=1, E)
        new = []
        for layer, layer_state in zip(model.layers, state):
            x, layer_state = layer(x, layer_state)
            new.append(layer_state)
        state = new
        out.append([tuple(t[0].clone() for t in s) for s in state])
    return out


@pytest.mark.parametrize("cell", ["gru", "lstm", "minlstm"])
def test_activations_are_the_states_after_each_token(cell):
    lm = model_of(cell, "bpe")
    text = "Pierre looked at the old count."
    acts = A.activations(lm, text)
    enc = lm.tokenizer.encode(text, add_special_tokens=False)
    expected = states_by_forward(lm, enc.ids)
    assert acts.kinds == A.state_kinds(cell)
    for i, (start, end) in enumerate(enc.offsets):
        for k, kind in enumerate(acts.kinds):
            for layer in range(2):
                assert torch.allclose(acts.values[kind][start:end, layer], expected[i][layer][k].expand(end - start, -1),
                                      atol=1e-5), (cell, kind, i, layer)


@pytest.mark.parametrize("kind", ["word", "char", "bpe"])
def test_every_character_gets_a_value_for_every_tokenizer(kind):
    lm = model_of("lstm", kind, layers=1)
    text = "The prince spoke  to Anna.\nPierre smiled."
    acts = A.activations(lm, text)
    assert acts.values["h"].shape == (len(text), 1, 12) and acts.values["c"].shape == (len(text), 1, 12)
    covered = {i for start, end in acts.offsets for i in range(start, end)}
    for i in range(1, len(text)):
        if i not in covered:  # e.g. a space the word tokenizer drops: the state of the token before
            assert torch.equal(acts.values["h"][i], acts.values["h"][i - 1]), i
    for start, end in acts.offsets:
        assert torch.equal(acts.values["h"][start], acts.values["h"][end - 1])
    assert (kind == "word") == (len(covered) < len(text))


def test_char_rows_map_characters_to_the_last_token_begun():
    # tokens "ab" (0-2), "cd" (3-5) with a gap at 2, nothing for the first or last characters
    rows = A.char_rows([(1, 2), (3, 5)], 7)
    assert rows.tolist() == [0, 1, 1, 2, 2, 2, 2]


def test_signals():
    text = 'a “b’s” (c)\n"d"'
    s = A.signals(text)
    assert s["quote"].tolist() == [0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 1, 1, 0]
    assert s["parentheses"].tolist() == [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0]
    assert s["line_position"].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0, 1, 2, 3]
    assert s["after_newline"].tolist() == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]


def test_correlations():
    signal = torch.tensor([0.0, 1, 1, 0, 1])
    values = torch.stack([signal, -2 * signal + 3, torch.ones(5), torch.tensor([1.0, 0, 1, 0, 1])], dim=1)
    r = A.correlations(values, signal)
    assert r[0].item() == pytest.approx(1) and r[1].item() == pytest.approx(-1)
    assert r[2].item() == 0
    assert -1 < r[3].item() < 1
    assert torch.isnan(A.correlations(values, torch.ones(5))).all()


def test_ranked_units_find_a_planted_unit():
    text = 'He said “yes, I will go” and left.\nShe said “no” (later).\n' * 3
    sig = A.signals(text)
    g = torch.Generator().manual_seed(0)
    values = torch.randn(len(text), 2, 8, generator=g) * 0.3
    values[:, 1, 5] += sig["quote"]
    values[:, 0, 2] -= sig["line_position"] / 10
    acts = A.Activations(text, {"h": values}, [])
    ranked = A.ranked_units(acts, top=3)
    assert [ranked["quote"][0][key] for key in ("kind", "layer", "unit")] == ["h", 1, 5]
    assert ranked["quote"][0]["r"] > 0.8
    assert (ranked["line_position"][0]["layer"], ranked["line_position"][0]["unit"]) == (0, 2)
    assert ranked["line_position"][0]["r"] < -0.8
    assert len(ranked["after_newline"]) == 3
    assert A.ranked_units(A.Activations("plain words", {"h": torch.randn(11, 1, 4)}, []))["quote"] == []


def test_unit_and_text_errors_are_one_line():
    lm = untrained_lm("char")
    acts = A.activations(lm, "The army")
    assert acts.unit(0, "c", 3).shape == (8,)
    for args, words in [((1, "h", 0), "layer"), ((0, "h", 16), "unit"), ((0, "x", 0), "unknown state"),
                        ((0, "h", -1), "unit")]:
        with pytest.raises(RnnlmError, match=words) as e:
            acts.unit(*args)
        assert "\n" not in str(e.value)
    with pytest.raises(RnnlmError, match="empty"):
        A.activations(lm, "")


def test_validation_text_reads_the_runs_split(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(small_text(), encoding="utf-8")
    cfg = load_config(None, [f"data.path={path}", "data.url=null"])
    assert A.validation_text(cfg) == split_text(small_text())["valid"]
    cfg = load_config(None, [f"data.path={tmp_path / 'gone.txt'}"])
    with pytest.raises(RnnlmError, match="validation text is not available") as e:
        A.validation_text(cfg)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "gone.txt").exists()  # nothing downloaded


def test_random_window_starts_at_a_line():
    text = small_text()
    window = A.random_window(text, 300, random.Random(1))
    assert len(window) == 300 and window in text
    assert text[text.index(window) - 1] == "\n"
    assert A.random_window("short\n", 300, random.Random(1)) == "short\n"
