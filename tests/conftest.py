"""Shared test helpers: a small text and a tiny config that trains in a second or two."""

import os
from pathlib import Path

import pytest

from rnnlm.config import load_config

REPO = Path(__file__).resolve().parents[1]

# War and Peace, for the tests that check the real corpus: where the project keeps it
# (configs/war_and_peace.yaml downloads it there), or wherever this variable says.
WAR_AND_PEACE_ENV = "RNNLM_WAR_AND_PEACE"
WAR_AND_PEACE_DEFAULT = Path("data") / "war_and_peace.txt"  # relative to REPO, not the working directory


def war_and_peace_path() -> Path:
    """$RNNLM_WAR_AND_PEACE if set, else data/war_and_peace.txt in this repository (it may not exist)."""
    given = os.environ.get(WAR_AND_PEACE_ENV)
    return Path(given).expanduser().resolve() if given else REPO / WAR_AND_PEACE_DEFAULT


@pytest.fixture
def war_and_peace() -> Path:
    """The path of War and Peace; skips the test, saying how to get the file, when it is absent."""
    path = war_and_peace_path()
    if not path.is_file():
        where = f"{path} (from {WAR_AND_PEACE_ENV})" if os.environ.get(WAR_AND_PEACE_ENV) else WAR_AND_PEACE_DEFAULT
        pytest.skip(f"War and Peace not found at {where}; download it with `python scripts/train.py --config "
                    f"configs/war_and_peace.yaml` (run from the repository root) or set {WAR_AND_PEACE_ENV} "
                    "to the path of a copy")
    return path


SENTENCES = [
    "Napoleon was the Emperor of the French.",
    "The prince spoke to Anna Pavlovna in French.",
    "Pierre looked at the old count and smiled.",
    "The army crossed the river at dawn.",
    "Natasha ran into the drawing room laughing.",
]


def small_text(repeats: int = 40) -> str:
    """A few thousand characters of repetitive English: easy to overfit, quick to tokenize."""
    lines = []
    for i in range(repeats):
        lines.append(" ".join(SENTENCES[(i + j) % len(SENTENCES)] for j in range(3)))
    return "\n".join(lines) + "\n"


@pytest.fixture
def text_file(tmp_path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(small_text(), encoding="utf-8")
    return path


def tiny_overrides(tmp_path: Path, text_path: Path) -> list[str]:
    """The command-line overrides of a tiny model on `text_path`, run directory and caches inside tmp_path."""
    return [
        f"data.path={text_path}", "data.url=null", f"data.cache_dir={tmp_path / 'cache'}",
        "tokenizer.kind=char", "model.hidden_size=32", "model.num_layers=1",
        "optim.lr=0.01", "optim.warmup_steps=2", f"train.out_dir={tmp_path / 'run'}",
        "train.batch_size=4", "train.seq_len=16", "train.max_steps=20", "train.eval_every=10",
        "train.checkpoint_every=5", "train.log_every=1", "train.progress=false", "train.device=cpu",
        "sample.max_new_tokens=20",
    ]


def tiny_config(tmp_path: Path, text_path: Path, *overrides: str):
    """A tiny model on `text_path`, run directory and caches inside tmp_path."""
    return load_config(None, tiny_overrides(tmp_path, text_path) + list(overrides))


def read_metrics(run_dir: Path) -> list[dict]:
    """The records of a run's metrics.jsonl, in order."""
    import json

    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def cli_line(capsys, argv: list[str], code: int = 2, kind: str = "error", quiet: bool = False) -> str:
    """Run the command line in this process; expect exit `code` and exactly one `kind: ...`
    line on stderr, no traceback (and with `quiet`, nothing on stdout). Returns that line."""
    from rnnlm.cli import main

    capsys.readouterr()
    assert main(list(argv)) == code
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    assert not quiet or out == "", out
    assert err.count("\n") == 1 and err.startswith(f"{kind}: "), err
    return err.strip()


def train_tiny_run(root: Path, *overrides: str) -> Path:
    """Train a tiny model on small_text() under `root` (quietly); returns its run directory.

    For module-scoped fixtures: train once, share the run among a module's tests.
    """
    import contextlib
    import io

    from rnnlm.train import train

    root.mkdir(parents=True, exist_ok=True)
    text_path = root / "corpus.txt"
    text_path.write_text(small_text(), encoding="utf-8")
    with contextlib.redirect_stdout(io.StringIO()):
        train(tiny_config(root, text_path, *overrides))
    return root / "run"
