"""Checkpoints (rnnlm.checkpoint): a failing disk leaves the previous one intact, a run's
checkpoints hold only tensors and plain types, and loading one never runs code from it,
whatever the file holds. How a stopped run leaves a checkpoint to resume from (SIGKILL,
SIGINT/SIGTERM, a bug) is in test_train_resume.py."""

import os
import pickle
import random

import pytest
import torch

import rnnlm.checkpoint
from rnnlm.checkpoint import load_checkpoint, save_checkpoint
from rnnlm.errors import RnnlmError
from rnnlm.train import train
from tests.conftest import REPO, cli_line, tiny_config

# ---------------------------------------------------------------------------------------
# Writing


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 1, "w": torch.ones(3)})

    def disk_full(obj, f):
        f.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rnnlm.checkpoint.torch, "save", disk_full)
    with pytest.raises(RnnlmError) as raised:
        save_checkpoint(path, {"step": 2, "w": torch.zeros(3)})
    assert str(raised.value) == (f"cannot write {path}: no space left on the device (the previous last.pt is kept, "
                                 "unchanged); free some disk space or set train.out_dir to another disk")
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary left behind


def test_checkpoints_hold_only_tensors_and_plain_types(tmp_path, text_file):
    train(tiny_config(tmp_path, text_file, "train.max_steps=3", "model.cell=gru"))

    def plain(x):
        if isinstance(x, dict):
            return all(isinstance(k, (str, int)) and plain(v) for k, v in x.items())
        if isinstance(x, (list, tuple)):
            return all(plain(v) for v in x)
        return x is None or isinstance(x, (torch.Tensor, str, int, float, bool))

    for name in ("last.pt", "best.pt"):
        ckpt = load_checkpoint(tmp_path / "run" / name)
        assert plain(ckpt)
        assert all(t.device.type == "cpu" for t in ckpt["model"].values())


# ---------------------------------------------------------------------------------------
# Loading whatever the file holds


class RunsCode:
    """Unpickling this calls open(marker, "w"): code that runs at load time."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("as_zip", [True, False], ids=["torch.save", "raw-pickle"])
def test_a_checkpoint_that_would_run_code_is_refused_without_running_it(tmp_path, capsys, as_zip):
    marker = tmp_path / "the-code-ran"
    path = tmp_path / "evil.pt"
    payload = {"format_version": 1, "model": RunsCode(marker), "config": {}, "tokenizer": "", "vocab_size": 1}
    if as_zip:
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))  # torch's own protocol
    with pytest.raises(RnnlmError, match=r"could run code when loaded \(io.open\); refused without loading it"):
        load_checkpoint(path)
    for command in ("generate", "evaluate"):
        line = cli_line(capsys, [command, "--checkpoint", str(path)])
        assert "refused" in line
    assert not marker.exists()
    # The file is really armed: an unsafe load runs it.
    if as_zip:
        torch.load(path, weights_only=False)
    else:
        pickle.loads(path.read_bytes())
    assert marker.exists()


def foreign_files(tmp_path, real_checkpoint):
    data = real_checkpoint.read_bytes()
    files = {
        "truncated": data[: len(data) // 2],
        "truncated-header": data[:100],
        "empty": b"",
        "random-bytes": random.Random(0).randbytes(5000),
        "text": b"Napoleon was the Emperor of the French.\n" * 20,
    }
    paths = {}
    for name, content in files.items():
        paths[name] = tmp_path / f"{name}.pt"
        paths[name].write_bytes(content)
    paths["plain-tensor"] = tmp_path / "tensor.pt"
    torch.save(torch.ones(3), paths["plain-tensor"])
    paths["dict-of-tensors"] = tmp_path / "state_dict.pt"
    torch.save({"weight": torch.ones(3)}, paths["dict-of-tensors"])
    paths["directory"] = tmp_path
    paths["missing"] = tmp_path / "missing.pt"
    return paths


def test_truncated_and_foreign_files_give_one_line_errors_from_generate_and_evaluate(tmp_path, text_file, capsys):
    train(tiny_config(tmp_path, text_file, "train.max_steps=3"))
    seen = {}
    for name, path in foreign_files(tmp_path / "run", tmp_path / "run" / "last.pt").items():
        for command in ("generate", "evaluate"):
            line = cli_line(capsys, [command, "--checkpoint", str(path), "--device", "cpu"])
            assert str(path) in line
            seen[name] = line
    for name, line in seen.items():
        print(f"{name}: {line}")
    assert "not an rnnlm checkpoint" in seen["plain-tensor"] and "not an rnnlm checkpoint" in seen["dict-of-tensors"]
    for name in ("truncated", "truncated-header"):
        assert "is truncated or corrupt" in seen[name]
    for name in ("random-bytes", "text"):
        assert "is not a PyTorch checkpoint" in seen[name]


# ---------------------------------------------------------------------------------------
# The schema: one module's keys, and checkpoints written before it


def test_a_run_writes_exactly_the_keys_of_the_schema_and_the_docs_list_them(tmp_path, text_file):
    from rnnlm.checkpoint import EMA_UPDATES, SCHEMA, TRAINED_MODEL

    train(tiny_config(tmp_path, text_file, "train.max_steps=2", "optim.ema_decay=0.5"))
    written = set(load_checkpoint(tmp_path / "run" / "last.pt"))
    assert written == set(SCHEMA)  # with optim.ema_decay every key is written
    train(tiny_config(tmp_path / "raw", text_file, "train.max_steps=2"))
    assert set(load_checkpoint(tmp_path / "raw" / "run" / "last.pt")) == set(SCHEMA) - {TRAINED_MODEL, EMA_UPDATES}
    docs = (REPO / "docs" / "design.md").read_text(encoding="utf-8")
    section = docs[docs.index("## Run directory and checkpoints"):docs.index("## Training curves")]
    assert [key for key in SCHEMA if f"`{key}`" not in section] == []


def test_make_checkpoint_refuses_a_key_outside_the_schema():
    from rnnlm.checkpoint import OPTIMIZER, SavedModel, make_checkpoint

    model = SavedModel(weights={}, config={}, tokenizer="{}", vocab_size=2)
    assert make_checkpoint(model, {OPTIMIZER: {}})["optimizer"] == {}
    with pytest.raises(ValueError, match="'optimiser'"):
        make_checkpoint(model, {"optimiser": {}})


# tests/data/checkpoint_format1.pt was written by the trainer before the checkpoint's keys
# moved into checkpoint.py: a char LSTM (hidden 16) trained for 6 steps on small_text(),
# with optim.ema_decay=0.5, train.patience=5 and model.dropout=auto (the settings below).
FORMAT1 = REPO / "tests" / "data" / "checkpoint_format1.pt"
FORMAT1_SETTINGS = ["model.hidden_size=16", "train.eval_every=3", "train.checkpoint_every=3", "optim.ema_decay=0.5",
                    "train.patience=5", "model.dropout=auto"]


def test_a_checkpoint_written_before_the_schema_module_loads_for_inference():
    from rnnlm.inference import load_model

    raw = torch.load(FORMAT1, weights_only=True)
    lm = load_model(FORMAT1, "cpu")
    assert lm.checkpoint_step == raw["step"] == 6
    assert all(torch.equal(lm.model.state_dict()[k], v) for k, v in raw["model"].items())
    assert lm.config.model.dropout == raw["config"]["model"]["dropout"] == 0.5  # `auto`, resolved when written
    assert isinstance(lm.generate("The army", max_new_tokens=5, seed=1), str)


def test_a_checkpoint_written_before_the_schema_module_resumes(tmp_path, text_file):
    from rnnlm.checkpoint import BEST_VAL_LOSS, STEP, TOKENS_SEEN
    from rnnlm.train_state import TrainState

    raw = torch.load(FORMAT1, weights_only=True)
    state = TrainState.from_checkpoint(raw, torch.device("cpu"))
    assert (state.step, state.tokens_seen, state.best_val_loss) == (raw["step"], raw["tokens_seen"],
                                                                      raw["best_val_loss"])
    assert [tuple(t.shape) for t in state.hidden[0]] == [(4, 16), (4, 16)]  # LSTM (h, c) of 4 streams
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(FORMAT1.read_bytes())
    result = train(tiny_config(tmp_path, text_file, *FORMAT1_SETTINGS, "train.max_steps=9", "train.resume=true"))
    resumed = load_checkpoint(run / "last.pt")
    assert result["steps"] == resumed[STEP] == 9
    assert resumed[TOKENS_SEEN] == raw["tokens_seen"] + 3 * 4 * 16
    assert resumed[BEST_VAL_LOSS] <= raw["best_val_loss"]


def test_a_checkpoint_that_is_a_named_pipe_is_one_line(tmp_path):
    path = tmp_path / "best.pt"
    os.mkfifo(path)  # torch.load would wait for a writer forever
    with pytest.raises(RnnlmError) as e:
        load_checkpoint(path)
    assert str(e.value) == f"checkpoint '{path}' is a named pipe (FIFO); pass a last.pt or best.pt written by training"
