"""The speed benchmark's smoke run: every row is produced and the JSON carries the table."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.speed import main

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "war_and_peace.yaml"


def test_quick_benchmark_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    main(["--quick", "--cells", "lstm", "--config", str(CONFIG), "--json", str(out)])
    printed = capsys.readouterr().out
    assert "matmul peak" in printed and "ours lstm" in printed and "torch.nn.LSTM" in printed
    result = json.loads(out.read_text())
    assert result["matmul_peak_flops"] > 0
    tasks = {(r["task"], r["contender"]) for r in result["rows"]}
    for task in ["train", "generate", "lm train", "lm generate"]:
        assert any(t == task and c.startswith("ours") for t, c in tasks), task
    for r in result["rows"]:
        assert r["tokens_per_s"] > 0 and r["mfu"] > 0
        if r["task"] in ("train", "lm train"):  # MFU against the peak timed in the same rounds
            assert r["peak_flops"] > 0
            assert abs(r["mfu"] - r["tokens_per_s"] * r["flops_per_token"] / r["peak_flops"]) < 1e-9 * r["mfu"]


def test_unknown_cell_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--quick", "--cells", "lstm,tcn"])
    assert e.value.code == 2
    assert "unknown cell 'tcn'" in capsys.readouterr().err


@pytest.mark.slow
def test_runs_as_a_script_from_the_repository_root():
    # benchmarks/ is not installed: the script must find both packages from a checkout.
    done = subprocess.run([sys.executable, "benchmarks/speed.py", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--quick" in done.stdout and "--json" in done.stdout and "--rounds" in done.stdout
