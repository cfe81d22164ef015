"""Shared test helpers: a small text, a tiny config that trains in a second or two, tiny
trained runs shared by the test modules, and an untrained model for the unit tests."""

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


# The tests' model and optimizer, whatever the built-in defaults (the default config's GRU with
# dropout): an LSTM, so the runs carry both h and c, without dropout, so that tiny runs learn
# their text quickly; no time limit and whole-split validations.
TEST_MODEL = ["model.cell=lstm", "model.dropout=0.0", "optim.weight_decay=0.01", "optim.min_lr_ratio=0.1",
              "train.max_minutes=null", "train.eval_tokens=null"]


def tiny_overrides(tmp_path: Path, text_path: Path) -> list[str]:
    """The command-line overrides of a tiny model on `text_path`, run directory and caches inside tmp_path."""
    return [
        *TEST_MODEL,
        f"data.path={text_path}", "data.url=null", f"data.cache_dir={tmp_path / 'cache'}",
        "tokenizer.kind=char", "model.hidden_size=32", "model.num_layers=1",
        "optim.lr=0.01", "optim.warmup_steps=2", f"train.out_dir={tmp_path / 'run'}",
        "train.batch_size=4", "train.seq_len=16", "train.max_steps=20", "train.eval_every=10",
        "train.checkpoint_every=5", "train.log_every=1", "train.progress=false", "train.device=cpu",
        "train.precision=fp32",  # the same numbers on every CPU, whatever bf16 support it has
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


@pytest.fixture(scope="session")
def logged_run(tmp_path_factory) -> Path:
    """The run directory of a tiny run of 20 steps, logged every 2 (shared by test_train.py,
    test_plots.py and test_gradflow.py: do not write into it)."""
    return train_tiny_run(tmp_path_factory.mktemp("logged"), "train.max_steps=20", "train.log_every=2")


# One tiny trained run per tokenizer kind, shared by test_predict.py and test_interactive.py.
TOKENIZER_RUN_SETTINGS = ["tokenizer.vocab_size=300", "train.max_steps=80", "model.hidden_size=64", "optim.lr=0.02",
                          "train.eval_every=1000"]


@pytest.fixture(scope="session")
def tokenizer_runs(tmp_path_factory) -> dict:
    """{kind: best.pt} of a tiny run trained on small_text() for each tokenizer kind (word, char, bpe)."""
    return {kind: train_tiny_run(tmp_path_factory.mktemp(kind), f"tokenizer.kind={kind}", *TOKENIZER_RUN_SETTINGS)
            / "best.pt" for kind in ("word", "char", "bpe")}


@pytest.fixture(scope="session")
def tokenizer_models(tokenizer_runs) -> dict:
    """{kind: inference.LoadedModel} of `tokenizer_runs`, on the CPU."""
    from rnnlm.inference import load_model

    return {kind: load_model(path, "cpu") for kind, path in tokenizer_runs.items()}


def untrained_lm(kind: str = "char", hidden_size: int = 16, seed: int = 0):
    """An untrained one-layer model with a `kind` tokenizer of small_text(), as an
    inference.LoadedModel on the CPU: for unit tests that need a model but not a trained one."""
    import torch

    from rnnlm import tokenizer as tokenization
    from rnnlm.inference import LoadedModel
    from rnnlm.model import RNNLM

    cfg = load_config(None, [*TEST_MODEL, f"tokenizer.kind={kind}", "tokenizer.vocab_size=300",
                             f"model.hidden_size={hidden_size}", "model.num_layers=1"])
    tok = tokenization.train_tokenizer(kind, small_text(), cfg.tokenizer.vocab_size)
    torch.manual_seed(seed)
    model = RNNLM(tok.get_vocab_size(), cfg.model).eval()
    return LoadedModel(model, tok, cfg, torch.device("cpu"), 0)


@pytest.fixture
def small_disk(tmp_path):
    """A folder on a 1 MiB tmpfs, for tests of a really full disk (root only: skipped
    elsewhere, where the tests that make the writer fail cover the same ground)."""
    import subprocess

    folder = tmp_path / "small_disk"
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def small_disk_free(folder: Path) -> int:
    """Bytes free on the file system of `folder`."""
    stat = os.statvfs(folder)
    return stat.f_bavail * stat.f_frsize


class ScriptedModel:
    """A stand-in for RNNLM that writes a fixed token sequence under greedy sampling: the
    logits after the prompt favour script[0], those after the n-th new token script[n]
    (the last one repeats). Its state is the step count. It has what generation and
    prediction use: features and decoder (for model.prime), stepper, eval, vocab_size.
    `runner_up` (step -> token) gives a second, less likely token at a step."""

    def __init__(self, vocab_size: int, script: list[int], runner_up: dict | None = None):
        self.vocab_size, self.script, self.runner_up = vocab_size, script, runner_up or {}

    def eval(self):
        return self

    def logits(self, steps):
        import torch

        out = torch.zeros(len(steps), self.vocab_size)
        for row, n in enumerate(steps.tolist()):
            out[row, self.script[min(n, len(self.script) - 1)]] = 10.0
            if n in self.runner_up:
                out[row, self.runner_up[n]] = 9.0
        return out

    def features(self, idx, state=None):
        import torch

        return torch.zeros(idx.size(0), idx.size(1), 1), [(torch.zeros(idx.size(0), dtype=torch.long),)]

    def decoder(self, h):
        import torch

        return self.logits(torch.zeros(h.size(0), dtype=torch.long))

    def stepper(self):
        def step(token, state):
            steps = state[0][0] + 1
            return self.logits(steps), [(steps,)]

        return step


RUSSIAN = "Наполеон был императором Франции. Пьер и Наташа в Москве. Андрей и армия. " * 4


def scripted_lm(script_bytes: list[bytes], runner_up: dict | None = None):
    """A LoadedModel of a ScriptedModel with a byte-level BPE tokenizer of Russian text;
    the script is given as the tokens' bytes (single bytes cut characters in two)."""
    import torch

    from rnnlm import tokenizer as tokenization
    from rnnlm.config import Config
    from rnnlm.inference import LoadedModel

    tok = tokenization.train_tokenizer("bpe", RUSSIAN, 300)
    table = tokenization.token_bytes(tok)
    id_of = {b: i for i, b in enumerate(table)}
    script = [id_of[b] for b in script_bytes]
    runner_up = {n: id_of[b] for n, b in (runner_up or {}).items()}
    model = ScriptedModel(tok.get_vocab_size(), script, runner_up)
    return LoadedModel(model, tok, Config(), torch.device("cpu"), 0)
