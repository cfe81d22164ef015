"""Starting a run from a trained model (train.init_from, --init-from).

The parent's weights, tokenizer (byte for byte) and shape are the new run's; the config
decides the rest. A parent that cannot be used (missing, not a model, another shape,
inside the run directory, other weights than recorded, a tokenizer that does not cover
the text) is one line. The result generates, scores, exports and serves as any run does,
and resumes bit-identically without its parent.
"""

import contextlib
import http.client
import io
import json
import re
import shutil
import threading
import time

import pytest
import torch

from rnnlm.checkpoint import PARENT, load_checkpoint
from rnnlm.cli import main, parse
from rnnlm.config import load_config, override
from rnnlm.errors import RnnlmError
from rnnlm.finetune import load_run_config, weights_sha256
from rnnlm.model_folder import read_model
from rnnlm.train import Trainer, train
from tests.conftest import cli_line, read_metrics, small_text, tiny_config, tiny_overrides, train_tiny_run

# A text the parent never saw: other sentences, the same alphabet (the parent is char-level).
OTHER_TEXT = "\n".join(f"The letter {i} came to the house on the hill, and she read it twice." for i in range(60)) + "\n"


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    """best.pt of a tiny char LSTM trained on small_text() (do not write into its run)."""
    return train_tiny_run(tmp_path_factory.mktemp("parent"), "train.max_steps=20") / "best.pt"


@pytest.fixture
def other_text(tmp_path):
    path = tmp_path / "other.txt"
    path.write_text(OTHER_TEXT, encoding="utf-8")
    return path


def child_config(tmp_path, text, parent, *overrides):
    """The tiny test config on `text`, started from `parent`."""
    return tiny_config(tmp_path, text, f"train.init_from={parent}", *overrides)


def quietly(fn, *args):
    with contextlib.redirect_stdout(io.StringIO()) as out:
        result = fn(*args)
    return result, out.getvalue()


# ---------------------------------------------------------------------------------------
# The config: the parent's shape, the config's other settings


def test_the_shape_the_config_leaves_out_is_the_parents(parent, other_text):
    cfg = load_run_config("finetune", [f"train.init_from={parent}", f"data.path={other_text}"])
    m, t = cfg.model, cfg.tokenizer
    assert (m.cell, m.hidden_size, m.num_layers, m.embedding_size, m.tie_weights) == ("lstm", 32, 1, 32, True)
    assert t.kind == "char"
    assert cfg.optim.lr == load_config("finetune").optim.lr  # the rest is the config's


def test_a_shape_the_config_asks_for_is_one_line_naming_the_parents_value(parent, other_text, tmp_path, capsys):
    out = tmp_path / "never"
    line = cli_line(capsys, ["train", "--config", "own_text", "--init-from", str(parent), f"data.path={other_text}",
                             f"train.out_dir={out}"])
    assert "model.cell=gru differs from the parent's model.cell=lstm" in line and str(parent) in line
    assert not out.exists()
    with pytest.raises(RnnlmError, match="model.hidden_size=64 differs from the parent's model.hidden_size=32"):
        train(child_config(tmp_path, other_text, parent, "model.hidden_size=64"))  # a Config built directly


@pytest.mark.parametrize("what", ["missing", "text file", "empty folder", "run folder"])
def test_a_parent_that_is_not_a_model_is_one_line(parent, other_text, tmp_path, capsys, what):
    given = {"missing": tmp_path / "nope.pt", "text file": other_text, "empty folder": tmp_path / "empty",
             "run folder": parent.parent}[what]
    (tmp_path / "empty").mkdir()
    line = cli_line(capsys, ["train", "--config", "finetune", "--init-from", str(given), f"data.path={other_text}",
                             f"train.out_dir={tmp_path / 'run'}"])
    assert line.startswith("error: train.init_from: ") and str(given) in line
    assert not (tmp_path / "run").exists()


def test_a_parent_inside_the_run_directory_is_refused_and_kept(tmp_path, text_file):
    run = train_tiny_run(tmp_path / "first", "train.max_steps=5")
    before = (run / "best.pt").read_bytes()
    with pytest.raises(RnnlmError, match="inside train.out_dir"):
        train(tiny_config(tmp_path / "first", text_file, f"train.init_from={run / 'best.pt'}", "train.overwrite=true"))
    assert (run / "best.pt").read_bytes() == before


def test_a_parent_with_other_weights_than_recorded_is_refused(parent, other_text, tmp_path):
    with pytest.raises(RnnlmError, match="has other weights"):
        train(child_config(tmp_path, other_text, parent, "train.init_from_sha256=deadbeef"))


def test_values_given_as_options_stay_strings_and_overrides_go_anywhere():
    for value in ("null", "1e3", "yes", "a: b", "[x]", "'quoted'", "dir with spaces/best.pt", "ünï/cödé"):
        assert load_config(None, [override("train.out_dir", value)]).train.out_dir == value
    from rnnlm.cli import ArgumentParser, add_train_args

    p = ArgumentParser(prog="t")
    add_train_args(p)
    args = parse(p, ["data.path=a.txt", "--config", "tiny", "train.max_steps=3", "--init-from", "p.pt", "x.y=1"])
    assert args.overrides == ["data.path=a.txt", "train.max_steps=3", "x.y=1"] and args.init_from == "p.pt"


# ---------------------------------------------------------------------------------------
# The run


def test_the_model_starts_from_the_parents_weights_for_every_cell(tmp_path, other_text):
    for cell in ("rnn", "gru", "mingru", "minlstm"):
        run = train_tiny_run(tmp_path / cell, f"model.cell={cell}", "train.max_steps=3")
        trainer, _ = quietly(Trainer, child_config(tmp_path / f"{cell}-child", other_text, run / "best.pt",
                                                   f"model.cell={cell}"), torch.device("cpu"))
        try:
            parent_weights = load_checkpoint(run / "best.pt")["model"]
            for name, tensor in trainer.model.state_dict().items():
                assert torch.equal(tensor, parent_weights[name]), (cell, name)
            assert trainer.state.step == 0
        finally:
            trainer.cleanup()


def test_a_parent_that_averaged_its_weights_gives_its_average(tmp_path, other_text):
    run = train_tiny_run(tmp_path / "ema", "optim.ema_decay=0.8", "train.max_steps=6")
    saved = load_checkpoint(run / "best.pt")
    assert any(not torch.equal(saved["model"][k], saved["trained_model"][k]) for k in saved["model"])
    trainer, _ = quietly(Trainer, child_config(tmp_path / "child", other_text, run / "best.pt"), torch.device("cpu"))
    try:
        for name, tensor in trainer.model.state_dict().items():
            assert torch.equal(tensor, saved["model"][name]), name
    finally:
        trainer.cleanup()


def test_a_fine_tuned_run_keeps_the_parents_tokenizer_and_records_it(parent, other_text, tmp_path):
    metrics, out = quietly(train, child_config(tmp_path, other_text, parent))
    run = tmp_path / "run"
    assert (run / "tokenizer.json").read_bytes() == (parent.parent / "tokenizer.json").read_bytes()
    digest = weights_sha256(load_checkpoint(parent)["model"])
    assert f"started from {parent.resolve()}: 20 steps" in out and digest[:12] in out
    assert re.search(r"<unk> is \d+\.\d\d% of the training tokens", out)  # its digits are new to the parent
    config = (run / "config.yaml").read_text()
    assert f"init_from: {parent}" in config and f"init_from_sha256: {digest}" in config
    for name in ("best.pt", "last.pt"):
        record = load_checkpoint(run / name)[PARENT]
        assert record["weights_sha256"] == digest and record["path"] == str(parent.resolve())
        assert record["step"] == 20 and record["train_chars"] > 0 and record["text"] == "corpus.txt"
    first = [r for r in read_metrics(run) if "val_loss" in r][0]
    assert first["step"] == 0  # the parent is scored on the new text before the first step
    assert metrics["steps"] == 20


def test_the_result_generates_scores_exports_and_serves(parent, other_text, tmp_path, capsys):
    quietly(train, child_config(tmp_path, other_text, parent))
    best = tmp_path / "run" / "best.pt"
    for argv in (["generate", "--checkpoint", str(best), "--prompt", "The", "--max-new-tokens", "10"],
                 ["evaluate", "--checkpoint", str(best)],
                 ["export", "--checkpoint", str(best), "--out", str(tmp_path / "hf"), "--format", "hf"]):
        assert main(argv) == 0, argv
    assert read_model(tmp_path / "hf").trained[PARENT]["weights_sha256"] == load_checkpoint(best)[PARENT][
        "weights_sha256"]
    pytest.importorskip("uvicorn")
    from rnnlm import server
    from rnnlm.inference import load_model

    sock = server.listen("127.0.0.1", 0)
    srv = server.make_server(load_model(best, "cpu"), sock)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", sock.getsockname()[1], timeout=30)
        conn.request("GET", "/api/info")
        response = conn.getresponse()
        assert response.status == 200 and json.loads(response.read())["cell"] == "lstm"
    finally:
        srv.should_exit = True
        thread.join(10)


def test_a_model_folder_is_the_same_parent_as_its_checkpoint(parent, other_text, tmp_path):
    assert main(["export", "--checkpoint", str(parent), "--out", str(tmp_path / "hf"), "--format", "hf"]) == 0
    quietly(train, child_config(tmp_path / "from_pt", other_text, parent))
    quietly(train, child_config(tmp_path / "from_hf", other_text, tmp_path / "hf"))
    a, b = (load_checkpoint(tmp_path / where / "run" / "last.pt") for where in ("from_pt", "from_hf"))
    assert a[PARENT]["weights_sha256"] == b[PARENT]["weights_sha256"]
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    tokenizers = [(tmp_path / where / "run" / "tokenizer.json").read_bytes() for where in ("from_pt", "from_hf")]
    assert tokenizers[0] == tokenizers[1]


def test_a_resumed_fine_tuned_run_is_bit_identical_and_needs_no_parent(parent, other_text, tmp_path):
    parent_copy = tmp_path / "parent" / "best.pt"
    parent_copy.parent.mkdir()
    shutil.copy(parent, parent_copy)
    shutil.copy(parent.parent / "tokenizer.json", parent_copy.parent / "tokenizer.json")
    common = ["model.dropout=0.2", "optim.schedule=constant", "train.max_steps=16", "train.eval_every=5",
              "train.checkpoint_every=4"]
    quietly(train, child_config(tmp_path / "straight", other_text, parent_copy, *common))
    quietly(train, child_config(tmp_path / "resumed", other_text, parent_copy, *common, "train.max_steps=7"))
    parent_copy.unlink()  # a resume reads only its own last.pt
    quietly(main, ["train", "--resume", str(tmp_path / "resumed" / "run"), "train.max_steps=16"])

    def losses(run):
        return [(r["step"], r["train_loss"], r["lr"], r["grad_norm"]) for r in read_metrics(run) if "train_loss" in r]
    assert losses(tmp_path / "resumed" / "run") == losses(tmp_path / "straight" / "run")
    a, b = (load_checkpoint(tmp_path / where / "run" / "last.pt") for where in ("straight", "resumed"))
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    assert b[PARENT] == a[PARENT]


# ---------------------------------------------------------------------------------------
# A tokenizer that does not cover the new text


def test_a_word_parent_that_covers_little_of_the_text_is_refused_in_one_line(tmp_path, capsys):
    run = train_tiny_run(tmp_path / "word", "tokenizer.kind=word", "tokenizer.vocab_size=300", "train.max_steps=3")
    text = tmp_path / "new.txt"
    text.write_text(small_text(4) + "Quixotic zebras jumped over lazy marmalade jars.\n" * 60, encoding="utf-8")
    argv = ["train", "--init-from", str(run / "best.pt"), *tiny_overrides(tmp_path, text), "tokenizer.kind=word",
            "tokenizer.vocab_size=300", "train.max_steps=2", "train.out_dir=" + str(tmp_path / "child")]
    line = cli_line(capsys, argv)
    assert "<unk>" in line and "train.max_unknown_share=0.2" in line and "bpe" in line
    capsys.readouterr()
    assert main(argv + ["train.max_unknown_share=1.0"]) == 0
    assert "<unk> is " in capsys.readouterr().out


def test_the_python_api_starts_from_a_parent_in_bf16(parent, other_text, tmp_path):
    import rnnlm

    metrics, out = quietly(lambda: rnnlm.train_model("finetune", *tiny_overrides(tmp_path, other_text),
                                                     "train.max_steps=3", "train.precision=bf16", init_from=parent))
    assert metrics["steps"] == 3 and "started from" in out
    assert load_checkpoint(tmp_path / "run" / "last.pt")[PARENT]["path"] == str(parent.resolve())


@pytest.mark.slow
def test_two_gloo_processes_start_from_the_parent_as_one_does(parent, other_text, tmp_path):
    from tests.test_distributed import torchrun

    settings = ["train.max_steps=4", "train.eval_every=2", f"train.init_from={parent}"]
    quietly(train, tiny_config(tmp_path / "one", other_text, *settings))
    run = torchrun(2, [*tiny_overrides(tmp_path / "two", other_text), *settings])
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("started from") == 1 and "2 processes (gloo)" in run.stdout

    def losses(where):
        return {r["step"]: r["train_loss"] for r in read_metrics(where / "run") if "train_loss" in r}
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert list(two) == [1, 2, 3, 4]
    for step in two:
        assert two[step] == pytest.approx(one[step], abs=1e-5), step
