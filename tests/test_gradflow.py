"""The gradient-flow measurement (rnnlm.gradflow): dL/dh_t against the chain rule by
hand, vanishing and exploding gradients, clipping, and the gradient-flow command."""

import pytest
import torch
import torch.nn.functional as F

from rnnlm import gradflow
from rnnlm.cli import main
from rnnlm.config import dump_config, load_config
from rnnlm.model import RNNLM
from tests.conftest import small_text, tiny_config

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def run_dir(logged_run):
    """A tiny run of 20 steps (conftest.logged_run), for the command's trained-model row."""
    return logged_run


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    """A YAML config of a tiny untrained model on small_text()."""
    root = tmp_path_factory.mktemp("gradflow")
    text = root / "corpus.txt"
    text.write_text(small_text(), encoding="utf-8")
    path = root / "tiny.yaml"
    path.write_text(dump_config(tiny_config(root, text, "model.cell=rnn")), encoding="utf-8")
    return path


def is_png(path):
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC


def untrained(cell="rnn", hidden=16, vocab=20, seed=0):
    torch.manual_seed(seed)
    cfg = load_config(None, [f"model.cell={cell}", f"model.hidden_size={hidden}", "model.num_layers=1",
                             "model.dropout=0.0"]).model
    return RNNLM(vocab, cfg)


def test_gradient_flow_matches_the_chain_rule_of_the_elman_cell():
    model = untrained("rnn")
    windows = torch.randint(0, 20, (3, 9))
    norms = gradflow.gradient_flow(model, windows)
    assert len(norms) == 8

    # By hand: h_t from the layer, then dL/dh_T = W_y^T (softmax - onehot) and one step back
    # dL/dh_{T-1} = W_hh^T (dL/dh_T * (1 - h_T^2)).
    x, y = windows[:, :-1], windows[:, -1]
    with torch.no_grad():
        h, _ = model.layers[0](F.embedding(x.t(), model.embedding.weight))  # (T, B, H)
        p = torch.softmax(model.decoder(h[-1]), dim=-1) - F.one_hot(y, 20)  # (B, V)
        g_T = p @ model.decoder.weight  # (B, H)
        g_T1 = (g_T * (1 - h[-1] ** 2)) @ model.layers[0].cell.weight_hh  # (B, H)
    assert norms[0] == pytest.approx(float(g_T.norm(dim=-1).mean()), rel=1e-5)
    assert norms[1] == pytest.approx(float(g_T1.norm(dim=-1).mean()), rel=1e-5)
    assert model.layers[0].impl == "fast"  # the caller's model is left as it was


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_gradients_vanish_for_small_recurrent_weights_and_explode_for_large(cell):
    windows = torch.randint(0, 20, (4, 41))
    small = gradflow.gradient_flow(gradflow.scale_hh(untrained(cell), 0.5), windows)
    assert small[30] < 1e-3 * small[0]
    if cell == "rnn":
        large = gradflow.gradient_flow(gradflow.scale_hh(untrained(cell, hidden=32), 6.0), windows)
        assert large[30] > 10 * large[0]


def test_clipping_keeps_an_exploding_rnn_training(config_file):
    cfg = load_config(config_file)
    from rnnlm.config import TokenizerConfig
    from rnnlm.data import load_corpus

    corpus = load_corpus(cfg.data, TokenizerConfig(kind="char"), progress=False)
    windows = gradflow.text_windows(corpus.ids["train"], 4, 30)
    model = gradflow.scale_hh(untrained("rnn", hidden=32, vocab=corpus.tokenizer.get_vocab_size()), 4.0)
    off = gradflow.clipping_run(model, windows, steps=15, lr=2.0, clip=0, label="off")
    on = gradflow.clipping_run(model, windows, steps=15, lr=2.0, clip=0.5, label="on")
    assert off.grad_norms[0] == pytest.approx(on.grad_norms[0])  # same model, same text
    assert max(off.losses) > max(on.losses)
    assert on.losses[-1] < on.losses[0]


@pytest.mark.slow
def test_gradient_flow_command_compares_cells_and_draws_the_picture(run_dir, config_file, tmp_path, capsys):
    out = tmp_path / "flow.png"
    assert main(["gradient-flow", "--checkpoint", str(run_dir / "best.pt"), "--config", str(config_file),
                 "--cells", "rnn,gru,lstm", "--seq-len", "20", "--windows", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert is_png(out)
    for row in ("lstm, run step 20 (trained)", "rnn (untrained)", "gru (untrained)", "lstm (untrained)"):
        assert row in printed
    out2 = tmp_path / "explode.png"
    assert main(["gradient-flow", "--config", str(config_file), "--hh-scale", "4", "--seq-len", "20",
                 "--windows", "2", "--steps", "3", "--out", str(out2)]) == 0
    printed = capsys.readouterr().out
    assert "rnn (untrained, W_hh x 4)" in printed and "no clipping" in printed and "clip 1" in printed
    assert is_png(out2)


@pytest.mark.parametrize("argv, message", [
    ([], "needs --checkpoint"),
    (["--cells", "rnn,tree"], "unknown cell 'tree'"),
    (["--seq-len", "1"], "--seq-len"),
])
def test_gradient_flow_errors_are_one_line(argv, message, config_file, capsys):
    if argv:
        argv = ["--config", str(config_file)] + argv
    assert main(["gradient-flow"] + argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
