"""`rnnlm export`: the ONNX step function against PyTorch in onnxruntime, for every cell kind,
the example that generates from the folder without torch, and the one-line errors."""

import errno
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO, cli_line, train_tiny_run, untrained_lm
from rnnlm import export
from rnnlm import tokenizer as tokenization
from rnnlm.cells import CELLS
from rnnlm.errors import RnnlmError

PROMPT = "The prince spoke to"
STEPS = 50
# One small model per cell kind, between them tied and untied, one and two layers, every tokenizer.
SETTINGS = {
    "rnn": ["model.num_layers=2", "model.tie_weights=false", "model.embedding_size=24"],
    "gru": ["tokenizer.kind=word"],
    "lstm": ["model.num_layers=2", "tokenizer.kind=bpe"],
    "mingru": ["model.num_layers=2", "model.tie_weights=false", "model.embedding_size=48"],
    "minlstm": [],
}
TRAIN = ["tokenizer.vocab_size=300", "train.max_steps=60", "model.hidden_size=48", "optim.lr=0.02",
         "train.eval_every=1000"]


def test_settings_cover_every_cell_kind():
    assert tuple(SETTINGS) == tuple(CELLS)


@pytest.mark.parametrize("cell", tuple(CELLS))
def test_step_graph_matches_the_model_in_pytorch(cell):
    """The graph that is exported (a scan over the reference cells), run in PyTorch, is the model."""
    lm = untrained_lm()
    lm.config.model.cell = cell
    from rnnlm.model import RNNLM

    torch.manual_seed(0)
    model = RNNLM(lm.model.vocab_size, lm.config.model).eval()
    tokens = torch.randint(0, model.vocab_size, (3, 6))
    state = model.init_state(3)
    state = [torch.randn_like(t) for layer in state for t in layer]
    logits, *new_state = export.StepGraph(model)(tokens, *state)
    k = model.layers[0].cell.num_states
    expected, expected_state = model(tokens, [tuple(state[i:i + k]) for i in range(0, len(state), k)])
    torch.testing.assert_close(logits, expected)
    torch.testing.assert_close(new_state, [t for layer in expected_state for t in layer])
    assert export.state_names(model) == (["h_0", "c_0"] if cell == "lstm" else ["h_0"])


def test_config_names_the_state_and_the_special_tokens():
    lm = untrained_lm("word")
    config = export.export_config(lm)
    assert config["vocab_size"] == lm.model.vocab_size and config["cell"] == lm.config.model.cell
    assert [s["name"] for s in config["state"]] == export.state_names(lm.model)
    assert all(s["shape"] == ["batch", 16] and s["next"] == s["name"] + "_next" for s in config["state"])
    assert config["special_tokens"] == {"<unk>": tokenization.unk_id(lm.tokenizer)}
    assert export.export_config(untrained_lm("bpe"))["special_tokens"] == {}


def test_unknown_format_is_one_line(capsys, tmp_path):
    line = cli_line(capsys, ["export", "--checkpoint", "x.pt", "--out", str(tmp_path / "o"), "--format", "tflite"])
    assert "unknown export format 'tflite'" in line and "onnx" in line


def test_existing_output_folder_is_refused_unless_overwrite(capsys, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    line = cli_line(capsys, ["export", "--checkpoint", "x.pt", "--out", str(out)])
    assert "already exists" in line and "--overwrite" in line
    line = cli_line(capsys, ["export", "--checkpoint", "x.pt", "--out", str(out), "--overwrite"])
    assert "not an rnnlm export" in line and (out / "notes.txt").exists()
    (out / "config.json").write_text(json.dumps({"format": export.EXPORT_FORMAT}))
    assert export._prepare_out(out, overwrite=True) == list(export.FIRST_EXPORT_FILES[export.EXPORT_FORMAT])  # an earlier export
    (tmp_path / "empty").mkdir()
    assert export._prepare_out(tmp_path / "empty", overwrite=False) == []  # an empty folder needs no --overwrite


def test_a_broken_symlink_as_out_is_one_line(capsys, tmp_path):
    (tmp_path / "o").symlink_to(tmp_path / "gone")
    line = cli_line(capsys, ["export", "--checkpoint", "x.pt", "--out", str(tmp_path / "o")])
    assert "broken symbolic link" in line


def test_an_earlier_exports_file_list_never_names_a_path_outside_it(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(
        {"format": export.EXPORT_FORMAT, "files": ["model.onnx", "../x", "/etc/passwd", "..", "a/b", 3]}))
    assert export._export_files(tmp_path) == ["model.onnx"]
    (tmp_path / "config.json").write_text(json.dumps(["not", "an", "object"]))
    assert export._export_files(tmp_path) is None


@pytest.fixture(scope="module")
def quick_checkpoint(tmp_path_factory):
    """A checkpoint of 2 training steps, for the tests of the output folder."""
    return train_tiny_run(tmp_path_factory.mktemp("quick"), "train.max_steps=2") / "best.pt"


@pytest.fixture
def quick_export(monkeypatch):
    """Export without torch.onnx (a stand-in graph file and check), for the output folder's tests."""
    for name in export.NEEDS:
        pytest.importorskip(name)
    monkeypatch.setattr(export, "_write_onnx", lambda graph, names, path: path.write_bytes(b"new graph"))
    monkeypatch.setattr(export, "check_onnx", lambda path, lm: 0.0)


def _earlier_export(folder, *extra):
    """An earlier export in `folder` (as format version 1 wrote it: no "files" list), and the user's `extra` files."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(b"old graph")
    (folder / "tokenizer.json").write_text("{}")
    (folder / "config.json").write_text(json.dumps({"format": export.EXPORT_FORMAT, "format_version": 1}))
    for name in extra:
        (folder / name).write_text("the user's")


@pytest.mark.parametrize("spelling", [".", "./", "../exp", "../exp/", "../link", "{abs}"])
def test_overwrite_replaces_an_earlier_export_in_place_and_keeps_the_users_files(
        spelling, quick_checkpoint, quick_export, tmp_path, monkeypatch, capsys):
    exp = tmp_path / "exp"
    _earlier_export(exp, "notes.txt", "run.sh")
    (tmp_path / "link").symlink_to(exp)
    monkeypatch.chdir(exp)
    out = spelling.format(abs=exp)
    from rnnlm.cli import main

    assert main(["export", "--checkpoint", str(quick_checkpoint), "--out", out, "--overwrite"]) == 0
    assert sorted(p.name for p in exp.iterdir()) == ["config.json", "model.onnx", "notes.txt", "run.sh",
                                                    "tokenizer.json"]
    assert (exp / "model.onnx").read_bytes() == b"new graph" and (exp / "notes.txt").read_text() == "the user's"
    assert sorted(json.loads((exp / "config.json").read_text())["files"]) == ["config.json", "model.onnx", "tokenizer.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_overwrite_removes_only_the_files_the_earlier_export_listed(quick_checkpoint, quick_export, tmp_path):
    out = tmp_path / "o"
    _earlier_export(out, "notes.txt", "weights.bin")
    (out / "config.json").write_text(json.dumps({"format": export.EXPORT_FORMAT, "files": ["weights.bin", "model.onnx",
                                                                                      "tokenizer.json", "config.json"]}))
    export.export_model(quick_checkpoint, out, overwrite=True)
    # weights.bin was the earlier export's and is gone; model.onnx and tokenizer.json are the new export's
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.onnx", "notes.txt", "tokenizer.json"]


def test_overwrite_never_replaces_a_file_the_earlier_export_did_not_write(quick_checkpoint, quick_export, tmp_path):
    out = tmp_path / "o"
    _earlier_export(out)
    (out / "config.json").write_text(json.dumps({"format": export.EXPORT_FORMAT, "files": ["config.json"]}))
    with pytest.raises(export.RnnlmError, match="holds model.onnx, which no earlier export wrote"):
        export.export_model(quick_checkpoint, out, overwrite=True)
    assert (out / "model.onnx").read_bytes() == b"old graph" and (out / "tokenizer.json").read_text() == "{}"
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.onnx", "tokenizer.json"]


@pytest.mark.parametrize("where", ["..", "run"])
def test_overwrite_refuses_a_folder_that_is_not_an_export_and_changes_nothing(
        where, quick_checkpoint, quick_export, tmp_path, monkeypatch, capsys):
    run = quick_checkpoint.parent
    exp = tmp_path / "exp"
    _earlier_export(exp)
    monkeypatch.chdir(exp)
    target = ".." if where == ".." else str(run)
    before = sorted(p.name for p in (exp.parent if where == ".." else run).iterdir())
    line = cli_line(capsys, ["export", "--checkpoint", str(quick_checkpoint), "--out", target, "--overwrite"])
    assert "not an rnnlm export" in line
    assert sorted(p.name for p in (exp.parent if where == ".." else run).iterdir()) == before


def test_an_empty_current_folder_takes_a_new_export(quick_checkpoint, quick_export, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    export.export_model(quick_checkpoint, ".")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.onnx", "tokenizer.json"]


def test_missing_onnx_says_what_to_install(capsys, tmp_path, monkeypatch):
    real = export.importlib.util.find_spec
    monkeypatch.setattr(export.importlib.util, "find_spec", lambda name: None if name == "onnxruntime" else real(name))
    line = cli_line(capsys, ["export", "--checkpoint", "x.pt", "--out", str(tmp_path / "o")])
    assert "onnxruntime" in line and 'pip install -e ".[export]"' in line


def test_a_file_that_is_not_a_checkpoint_is_one_line(capsys, tmp_path):
    for name in export.NEEDS:
        pytest.importorskip(name)
    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")
    line = cli_line(capsys, ["export", "--checkpoint", str(bad), "--out", str(tmp_path / "o")])
    assert "not a PyTorch checkpoint" in line and not (tmp_path / "o").exists()


def test_a_full_disk_is_one_line_and_leaves_no_folder(capsys, tmp_path, monkeypatch):
    for name in export.NEEDS:
        pytest.importorskip(name)
    run = train_tiny_run(tmp_path / "tiny", "train.max_steps=2")

    def full_disk(graph, names, path):
        path.write_bytes(b"part of a graph")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export, "_write_onnx", full_disk)
    line = cli_line(capsys, ["export", "--checkpoint", str(run / "best.pt"), "--out", str(tmp_path / "o")])
    assert line == (f"error: cannot write {tmp_path / 'o'}: no space left on the device (no o was written); "
                    "free some disk space or pass another --out")
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".o") or p.name == "o"]


def _onnx_logits(session, names, prompt_ids, steps):
    """Logits of the prompt primed in one call, then of `steps` single greedy steps: (1 + steps, V)."""
    state = {n: np.zeros((1, s), np.float32) for n, s in names}
    out, tokens = [], np.array([prompt_ids], np.int64)
    for _ in range(steps + 1):
        logits, *next_state = session.run(None, {"tokens": tokens, **state})
        state = dict(zip(state, next_state))
        out.append(logits[0, -1])
        tokens = np.array([[int(logits[0, -1].argmax())]], np.int64)
    return np.stack(out)


def _torch_logits(lm, prompt_ids, steps):
    """The same in PyTorch, as `rnnlm generate` runs it: the prompt in one pass, then the stepper."""
    with torch.no_grad():
        logits, state = lm.model(torch.tensor([prompt_ids]))
        out, step = [logits[0, -1]], lm.model.stepper()
        for _ in range(steps):
            logits, state = step(out[-1].argmax().view(1), state)
            out.append(logits[0])
    return torch.stack(out).numpy()


@pytest.mark.slow
@pytest.mark.parametrize("cell", tuple(CELLS))
def test_exported_model_matches_pytorch_in_onnxruntime(cell, tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    for name in export.NEEDS:
        pytest.importorskip(name)
    from rnnlm.cli import main
    from rnnlm.inference import load_model

    ckpt = train_tiny_run(tmp_path, f"model.cell={cell}", "tokenizer.kind=char", *TRAIN, *SETTINGS[cell]) / "best.pt"
    out = tmp_path / "onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    assert "onnxruntime matches PyTorch" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.onnx", "tokenizer.json"]
    config = json.loads((out / "config.json").read_text())
    lm = load_model(ckpt, "cpu")
    assert (out / "tokenizer.json").read_text() == tokenization.to_json(lm.tokenizer)

    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [(s["name"], s["shape"][1]) for s in config["state"]]
    ids = tokenization.encode(lm.tokenizer, PROMPT)
    diff = np.abs(_onnx_logits(session, names, ids, STEPS) - _torch_logits(lm, ids, STEPS)).max()
    print(f"{cell}: max |logits difference| {diff:.2e} over a prompt of {len(ids)} and {STEPS} steps")
    assert diff < 1e-4

    done = subprocess.run([sys.executable, str(REPO / "examples" / "onnx_generate.py"), str(out), PROMPT, str(STEPS)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    expected = lm.generate(PROMPT, max_new_tokens=STEPS, temperature=0)
    assert expected.strip() and done.stdout == expected + "\n"
    assert "ms per token" in done.stderr


def test_unknown_quantization_is_one_line(capsys, tmp_path):
    with pytest.raises(RnnlmError, match="unknown quantization 'int4'; use --quantize int8"):
        export.export_model("x.pt", tmp_path / "o", quantize="int4")
    line = cli_line(capsys, ["export", "--checkpoint", "x.pt", "--out", str(tmp_path / "o"), "--quantize", "int4"])
    assert "--quantize" in line and "int8" in line


def test_quantize_is_only_for_onnx(capsys, tmp_path):
    line = cli_line(capsys, ["export", "--checkpoint", "x.pt", "--out", str(tmp_path / "o"), "--format", "hf",
                             "--quantize", "int8"])
    assert "--quantize is for --format onnx" in line and not (tmp_path / "o").exists()


def _ops(graph) -> list[str]:
    """Every node's op type in an ONNX graph, the Scan bodies' included."""
    import onnx

    ops = []
    for node in graph.node:
        ops.append(node.op_type)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                ops += _ops(attr.g)
    return ops


@pytest.mark.slow
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_int8_export_quantizes_every_matmul_and_stays_close(cell, tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    for name in export.NEEDS:
        pytest.importorskip(name)
    import onnx

    from rnnlm.cli import main
    from rnnlm.inference import load_model

    ckpt = train_tiny_run(tmp_path, f"model.cell={cell}", "tokenizer.kind=bpe", *TRAIN) / "best.pt"
    for args in ([], ["--quantize", "int8"]):
        assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / f"onnx{len(args)}"), *args]) == 0
    float_dir, int8_dir = tmp_path / "onnx0", tmp_path / "onnx2"
    assert "int8 weights" in capsys.readouterr().out
    assert json.loads((int8_dir / "config.json").read_text())["quantization"] == "int8"
    assert json.loads((float_dir / "config.json").read_text())["quantization"] is None
    assert (int8_dir / "model.onnx").stat().st_size < 0.6 * (float_dir / "model.onnx").stat().st_size
    ops = _ops(onnx.load(str(int8_dir / "model.onnx")).graph)
    # The input and recurrent products of each step and the output layer all run in int8.
    assert ops.count("MatMulInteger") == 3 and "MatMul" not in ops and "Gemm" not in ops, ops

    lm = load_model(ckpt, "cpu")
    session = ort.InferenceSession(str(int8_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    config = json.loads((int8_dir / "config.json").read_text())
    names = [(s["name"], s["shape"][1]) for s in config["state"]]
    ids = tokenization.encode(lm.tokenizer, PROMPT)
    diff = np.abs(_onnx_logits(session, names, ids, STEPS) - _torch_logits(lm, ids, STEPS)).max()
    assert 1e-4 < diff < export.TOLERANCE["int8"], diff  # quantized (not the float graph), and close
    done = subprocess.run([sys.executable, str(REPO / "examples" / "onnx_generate.py"), str(int8_dir), PROMPT, "20"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() and "int8 weights" in done.stderr
