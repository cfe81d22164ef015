"""Data-parallel training (rnnlm.distributed): 2 gloo processes on 127.0.0.1 make the same
updates as one process with the same global batch; gradient accumulation likewise; the
batch must split evenly; nccl needs CUDA; the ranks' evaluation shards add up to the whole."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from rnnlm import distributed as ddp
from rnnlm.checkpoint import load_checkpoint
from rnnlm.config import ModelConfig
from rnnlm.errors import RnnlmError
from rnnlm.evaluate import evaluate_ids
from rnnlm.model import RNNLM
from rnnlm.train import train
from tests.conftest import REPO, tiny_config, tiny_overrides

# Constant lr, so a 5-step run is the first 5 steps of an 8-step one (resume test);
# no dropout, so runs with different numbers of processes draw no different masks.
SETTINGS = ["optim.schedule=constant", "train.max_steps=8", "train.eval_every=5", "train.checkpoint_every=5",
            "train.log_every=1"]


def losses(run_dir) -> dict:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train_loss"] for r in records if "train_loss" in r}


def val_losses(run_dir) -> dict:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["val_loss"] for r in records if "val_loss" in r}


def assert_same_weights(a: dict, b: dict, atol=1e-5):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=atol, rtol=0), (name, (a[name] - b[name]).abs().max())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int, overrides: list[str], timeout: int = 120) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node=N scripts/train.py ...` on 127.0.0.1, killed if it hangs."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(REPO / "scripts" / "train.py"),
           *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


@pytest.mark.slow
@pytest.mark.parametrize("cell", ["lstm", "mingru"])
def test_two_gloo_processes_match_one_process_and_resume_in_one(tmp_path, text_file, cell):
    settings = [*SETTINGS, f"model.cell={cell}"]
    train(tiny_config(tmp_path, text_file, *settings, f"train.out_dir={tmp_path / 'one'}"))
    train(tiny_config(tmp_path, text_file, *settings, f"train.out_dir={tmp_path / 'one5'}", "train.max_steps=5"))

    # The same global batch (4 streams) as 2 processes x 2 streams, for the first 5 steps: the
    # one-process runs' overrides exactly, so that no built-in default differs between them.
    overrides = [*tiny_overrides(tmp_path, text_file), *settings, f"train.out_dir={tmp_path / 'two'}",
                 "train.max_steps=5"]
    run = torchrun(2, overrides)
    print(run.stdout[-2000:], run.stderr[-3000:])
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("trained 5 steps") == 1  # only rank 0 prints
    assert "2 processes (gloo)" in run.stdout

    reference, distributed = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert list(distributed) == [1, 2, 3, 4, 5]
    for step, loss in distributed.items():
        assert loss == pytest.approx(reference[step], abs=1e-5), step
    assert val_losses(tmp_path / "two")[5] == pytest.approx(val_losses(tmp_path / "one")[5], abs=1e-5)
    at5 = load_checkpoint(tmp_path / "one5" / "last.pt")
    ckpt = load_checkpoint(tmp_path / "two" / "last.pt")
    assert at5["step"] == ckpt["step"] == 5
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in ckpt["model"])
    assert_same_weights(ckpt["model"], at5["model"])
    # The carried state is the whole global batch's, in stream order, gathered from both ranks.
    assert ckpt["hidden"][0][0].shape == (4, 32)
    assert_same_weights(dict(enumerate(ckpt["hidden"][0])), dict(enumerate(at5["hidden"][0])))

    # Resume the 2-process run in one process: steps 6..8 as in the uninterrupted run.
    train(tiny_config(tmp_path, text_file, *settings, f"train.out_dir={tmp_path / 'two'}", "train.resume=true"))
    resumed = losses(tmp_path / "two")
    for step in (6, 7, 8):
        assert resumed[step] == pytest.approx(reference[step], abs=1e-5), step
    assert_same_weights(load_checkpoint(tmp_path / "two" / "last.pt")["model"],
                        load_checkpoint(tmp_path / "one" / "last.pt")["model"])


@pytest.mark.slow
def test_grad_accumulation_makes_the_full_batch_update(tmp_path, text_file):
    train(tiny_config(tmp_path, text_file, *SETTINGS, f"train.out_dir={tmp_path / 'k1'}"))
    train(tiny_config(tmp_path, text_file, *SETTINGS, f"train.out_dir={tmp_path / 'k2'}",
                      "train.grad_accum_steps=2"))
    full, accumulated = losses(tmp_path / "k1"), losses(tmp_path / "k2")
    assert list(full) == list(accumulated) == list(range(1, 9))
    for step in full:
        assert accumulated[step] == pytest.approx(full[step], abs=1e-5), step
    a, b = load_checkpoint(tmp_path / "k1" / "last.pt"), load_checkpoint(tmp_path / "k2" / "last.pt")
    assert_same_weights(a["model"], b["model"])
    assert_same_weights(dict(enumerate(a["hidden"][0])), dict(enumerate(b["hidden"][0])))


def test_batch_must_split_evenly_over_processes_and_groups(monkeypatch, tmp_path, text_file):
    with pytest.raises(RnnlmError, match="train.grad_accum_steps"):
        tiny_config(tmp_path, text_file, "train.batch_size=4", "train.grad_accum_steps=3")
    monkeypatch.setattr(ddp, "world_size", lambda: 2)
    ddp.check_batch_split(8, 2)
    with pytest.raises(RnnlmError, match=r"batch_size 6 must be divisible by 2 processes x .* = 4"):
        ddp.check_batch_split(6, 2)


def test_nccl_needs_cuda():
    assert ddp.choose_backend("auto", torch.device("cpu")) == "gloo"
    with pytest.raises(RnnlmError, match="train.backend=nccl needs CUDA"):
        ddp.choose_backend("nccl", torch.device("cpu"))


def test_shards_of_the_evaluation_streams_add_up_to_the_whole():
    torch.manual_seed(0)
    model = RNNLM(11, ModelConfig(hidden_size=8, num_layers=1))
    ids = torch.randint(0, 11, (300,))
    nll, n = evaluate_ids(model, ids, batch_size=5, seq_len=8)
    parts = [evaluate_ids(model, ids, batch_size=5, seq_len=8, shard=(i, 3)) for i in range(3)]
    assert sum(p[1] for p in parts) == n == 299
    assert sum(p[0] for p in parts) == pytest.approx(nll, rel=1e-6)
