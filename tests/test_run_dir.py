"""The run directory (rnnlm.run_dir): which settings a resume must keep, the metrics log cut
back to the checkpoint's step, and a fresh run's directory checked and cleaned (the
refusal's full message through the command line is in test_errors.py)."""

import json
import os

import pytest

from rnnlm.config import config_to_dict, load_config
from rnnlm.errors import RnnlmError
from rnnlm.files import read_jsonl
from rnnlm.run_dir import RUN_FILES, config_differences, prepare_run_dir, truncate_metrics


def test_config_differences_lists_only_the_must_match_settings_that_changed():
    saved = config_to_dict(load_config(None, ["model.cell=lstm", "model.hidden_size=32", "train.batch_size=4"]))
    current = config_to_dict(load_config(None, [
        "model.hidden_size=48", "model.cell=gru", "tokenizer.kind=char", "train.batch_size=8",  # must match
        "optim.lr=0.5", "train.max_steps=99", "train.seq_len=7", "data.path=elsewhere.txt", "sample.top_k=3",
    ]))
    assert config_differences(saved, current) == [
        "model.cell: 'lstm' -> 'gru'", "model.embedding_size: 32 -> 48",  # follows hidden_size
        "model.hidden_size: 32 -> 48", "tokenizer.kind: 'bpe' -> 'char'", "train.batch_size: 4 -> 8",
    ]
    assert config_differences(saved, saved) == []


def test_config_differences_names_a_setting_only_one_side_has():
    saved = config_to_dict(load_config(None))
    del saved["model"]["impl"]  # a checkpoint from before the setting existed
    assert config_differences(saved, config_to_dict(load_config(None))) == ["model.impl: None -> 'fast'"]


def test_truncate_metrics_drops_the_records_after_the_step_and_a_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    records = [{"step": s, "train_loss": 4.0 - s / 10} for s in range(1, 7)]
    records.insert(5, {"step": 5, "val_loss": 3.4})
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 7, "train_lo', encoding="utf-8")
    truncate_metrics(path, 5)
    assert read_jsonl(path) == [r for r in records if r["step"] <= 5]
    assert path.read_text(encoding="utf-8").endswith("}\n")  # the next record starts on a line of its own
    assert os.listdir(tmp_path) == ["metrics.jsonl"]


def test_truncate_metrics_without_a_log_does_nothing(tmp_path):
    truncate_metrics(tmp_path / "metrics.jsonl", 5)
    assert os.listdir(tmp_path) == []


def run_config(out, *overrides):
    return load_config(None, [f"train.out_dir={out}", *overrides])


def test_a_fresh_run_creates_its_directory_or_takes_an_empty_one(tmp_path):
    assert prepare_run_dir(run_config(tmp_path / "a" / "run")) is None
    assert (tmp_path / "a" / "run").is_dir()
    (tmp_path / "empty").mkdir()
    assert prepare_run_dir(run_config(tmp_path / "empty")) is None


def test_overwrite_removes_the_run_files_and_stale_temporaries_and_nothing_else(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    others = ["notes.txt", "training.png", "tensorboard"]
    for name in [*RUN_FILES, ".last.pt.k3j.tmp", ".best.pt.k3j.tmp", "notes.txt", "training.png"]:
        (out / name).write_text("x")
    (out / "tensorboard").mkdir()
    with pytest.raises(RnnlmError, match="already exists"):
        prepare_run_dir(run_config(out))
    assert len(os.listdir(out)) == len(RUN_FILES) + 5  # refused: nothing touched
    assert prepare_run_dir(run_config(out, "train.overwrite=true")) is None
    assert sorted(os.listdir(out)) == sorted(others)


@pytest.mark.parametrize("flags", [[], ["train.overwrite=true"], ["train.resume=true"]],
                         ids=["fresh", "overwrite", "resume"])
def test_a_file_as_out_dir_is_refused_and_left_alone(tmp_path, flags):
    out = tmp_path / "run"
    out.write_text("not a folder")
    with pytest.raises(RnnlmError) as e:
        prepare_run_dir(run_config(out, *flags))
    assert str(e.value) == f"train.out_dir {out} is a file, not a directory; set train.out_dir to a folder"
    assert out.read_text() == "not a folder"
