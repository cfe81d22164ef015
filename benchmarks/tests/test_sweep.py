"""benchmarks/sweep.py: trials side by side, and --equal-time giving each trial the same time."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import sweep
from tests.conftest import tiny_overrides

REPO = Path(__file__).resolve().parents[2]


def run_sweep(tmp_path, text_file, *args):
    out = tmp_path / "rows.json"
    code = sweep.main(["--config", str(REPO / "configs" / "tiny.yaml"), "--out", str(tmp_path / "trials"),
                       "--json", str(out), "--set", *tiny_overrides(tmp_path, text_file), *args])
    return code, (json.loads(out.read_text()) if out.exists() else None)


@pytest.mark.slow
def test_equal_time_gives_a_slower_model_fewer_steps(tmp_path, text_file, capsys):
    # A 16x wider layer costs many times the step: it must get fewer steps, the first trial exactly N.
    code, rows = run_sweep(tmp_path, text_file, "--steps", "8", "--equal-time",
                           "--trial", "narrow", "model.hidden_size=32",
                           "--trial", "wide", "model.hidden_size=512")
    assert code == 0
    printed = capsys.readouterr().out
    assert "ms/step" in printed
    narrow, wide = rows
    assert narrow["steps"] == 8
    assert 1 <= wide["steps"] < 8
    assert wide["overrides"][-1] == f"train.max_steps={wide['steps']}"
    assert all(r["val_bpc"] > 0 and r["test_bpc"] > 0 for r in rows)


def test_equal_time_needs_a_step_budget(tmp_path, text_file, capsys):
    with pytest.raises(SystemExit) as e:
        run_sweep(tmp_path, text_file, "--minutes", "1", "--equal-time", "--trial", "base")
    assert e.value.code == 2
    assert "--equal-time needs --steps" in capsys.readouterr().err


def test_equal_time_reports_a_bad_trial_setting_in_one_line(tmp_path, text_file, capsys):
    code, rows = run_sweep(tmp_path, text_file, "--steps", "4", "--equal-time",
                           "--trial", "base", "--trial", "typo", "model.hiden_size=64")
    assert code == 2 and rows is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "hiden_size" in err


@pytest.mark.slow
def test_runs_as_a_script_from_the_repository_root():
    # benchmarks/ is not installed: the script must find both packages from a checkout.
    done = subprocess.run([sys.executable, "benchmarks/sweep.py", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--equal-time" in done.stdout and "--trial" in done.stdout


def test_equal_time_sizes_auto_settings_to_the_text_as_training_does(tmp_path, text_file):
    # The model timed must be the one the trial trains: `auto` resolved from the training text.
    from rnnlm.config import load_config
    from rnnlm.data import splits_from_config
    from rnnlm.sizing import vocab_size_for

    overrides = tiny_overrides(tmp_path, text_file) + ["tokenizer.kind=bpe", "tokenizer.vocab_size=auto",
                                                       "model.dropout=auto"]
    cfg = load_config(REPO / "configs" / "tiny.yaml", overrides)
    sized = sweep.sized_config(cfg)
    assert sized.tokenizer.vocab_size == vocab_size_for(len(splits_from_config(cfg)["train"]))
    assert isinstance(sized.model.dropout, float)
    assert sweep.sized_config(sized) is sized  # nothing `auto`: the text is not read
    assert len(sweep.step_seconds(str(REPO / "configs" / "tiny.yaml"), [overrides], rounds=1, reps=1)) == 1
