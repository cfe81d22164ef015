"""The benchmark's smoke run: every row is produced and the JSON carries the table."""

import json
from pathlib import Path

from rnnlm.benchmark import main

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "war_and_peace.yaml"


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
