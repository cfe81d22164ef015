"""Bad input gets one clear line and a non-zero exit, never a traceback.

Every case goes through the real command line (`rnnlm.cli.main`, and one real process),
and checks the exit code, that stderr is exactly one `error:` (or `warning:`) line, and
what the line says.
"""

import builtins
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rnnlm.cli import main
from tests.conftest import REPO, cli_line, small_text, tiny_overrides


def train_error(capsys, tmp_path, text_file, *extra, config=None) -> str:
    argv = ["train", *(["--config", str(config)] if config else []), *tiny_overrides(tmp_path, text_file), *extra]
    line = cli_line(capsys, argv)
    print(line)
    return line


def write(path: Path, content) -> Path:
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


# ---------------------------------------------------------------------------------------
# The data file


def test_missing_data_file(tmp_path, capsys):
    line = train_error(capsys, tmp_path, tmp_path / "nowhere.txt")
    assert line == f"error: data file {tmp_path / 'nowhere.txt'} does not exist; set data.path to a text file, " \
                   "or data.url to download one there"


def test_unreadable_data_file(tmp_path, text_file, capsys, monkeypatch):
    # chmod 000 does not stop root (as in CI containers): make the read itself fail.
    real = Path.read_bytes

    def read_bytes(self):
        if self == text_file:
            raise PermissionError(13, "Permission denied")
        return real(self)

    real_open = builtins.open

    def open_(file, *args, **kwargs):  # the corpus is read as a stream, through open
        if isinstance(file, (str, Path)) and Path(file) == text_file:
            raise PermissionError(13, "Permission denied")
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    monkeypatch.setattr(builtins, "open", open_)
    line = train_error(capsys, tmp_path, text_file)
    assert line == f"error: cannot read data file {text_file} (Permission denied); check its permissions or " \
                   "set data.path to another file"


def test_a_folder_or_glob_without_files_is_one_line(tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    write(tmp_path / "notes" / "a.md", "some text\n")
    assert train_error(capsys, tmp_path, tmp_path / "notes") == (
        f"error: folder {tmp_path / 'notes'} has no files matching '**/*.txt'; put text files in it or set "
        "data.glob to the pattern of its files (e.g. '**/*.md')")
    pattern = str(tmp_path / "notes" / "*.rst")
    assert train_error(capsys, tmp_path, pattern) == (
        f"error: data.path {pattern!r} matches no files; check the pattern (e.g. 'poems/*.txt') "
        "or set data.path to a file or folder")


def test_a_bad_file_among_many_is_named(tmp_path, capsys):
    folder = tmp_path / "docs"
    folder.mkdir()
    write(folder / "a.txt", small_text())
    bad = write(folder / "b.txt", "caf\xe9\n".encode("latin-1"))
    line = train_error(capsys, tmp_path, folder)
    assert line.startswith(f"error: data file {bad} is not valid utf-8: byte 0xe9 at offset 3 (line 1)")


@pytest.mark.parametrize("content", ["", " \n\n\t\n"], ids=["empty", "whitespace"])
def test_empty_corpus(tmp_path, capsys, content):
    path = write(tmp_path / "empty.txt", content)
    assert train_error(capsys, tmp_path, path) == \
        f"error: data file {path} is empty (or only whitespace); set data.path to a file with text in it"


def test_corpus_too_short_for_one_batch_says_how_many_tokens_are_needed(tmp_path, capsys):
    path = write(tmp_path / "short.txt", "Napoleon was here.\n" * 3)
    line = train_error(capsys, tmp_path, path)
    assert line == ("error: the train split has 46 tokens but batch_size 4 x (seq_len 16 + 1) needs at least 68; "
                    "lower train.batch_size or train.seq_len, or use a longer text")


def test_non_utf8_bytes_give_the_offset_and_the_settings_that_fix_it(tmp_path, capsys):
    path = write(tmp_path / "latin1.txt", small_text().replace("Pierre", "Pièrre").encode("latin-1"))
    offset = small_text().encode("utf-8").index(b"Pierre") + 2
    line = train_error(capsys, tmp_path, path)
    assert line == (f"error: data file {path} is not valid utf-8: byte 0xe8 at offset {offset} (line 1); "
                    "set data.encoding to the file's encoding (e.g. latin-1) or data.errors=replace")
    # Either hint works.
    assert main(["train", *tiny_overrides(tmp_path, path), "train.max_steps=2", "data.encoding=latin-1"]) == 0
    assert main(["train", *tiny_overrides(tmp_path, path), "train.max_steps=2", "data.errors=replace",
                 "--overwrite"]) == 0


def test_binary_file(tmp_path, capsys):
    path = write(tmp_path / "model.bin", bytes(range(256)) * 40)
    assert train_error(capsys, tmp_path, path) == \
        f"error: data file {path} looks binary (it has NUL bytes); set data.path to a plain text file"


@pytest.mark.slow
def test_a_real_process_prints_one_line_for_bad_data(tmp_path):
    path = write(tmp_path / "latin1.txt", "Pièrre\n".encode("latin-1") * 100)
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), *tiny_overrides(tmp_path, path)],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"error: data file {path} is not valid utf-8: byte 0xe8 at offset 2 "
                                        "(line 1); set data.encoding to the file's encoding (e.g. latin-1) or "
                                        "data.errors=replace"]


# ---------------------------------------------------------------------------------------
# The config


def test_yaml_syntax_error_gives_the_line(tmp_path, text_file, capsys):
    config = write(tmp_path / "bad.yaml", "model:\n  cell: lstm\n  hidden_size: [64\ntrain:\n  max_steps: 3\n")
    line = train_error(capsys, tmp_path, text_file, config=config)
    assert line == f"error: config file '{config}': YAML syntax error at line 4, column 6: expected ',' or ']', " \
                   "but got ':'"


def test_missing_config_file(tmp_path, text_file, capsys):
    line = train_error(capsys, tmp_path, text_file, config=tmp_path / "nope.yaml")
    assert line.startswith(f"error: config file '{tmp_path / 'nope.yaml'}' not found")


@pytest.mark.parametrize("override, closest", [
    ("optim.lerning_rate=3e-3", "lr"), ("optim.learning_rate=3e-3", "lr"), ("model.hiden_size=64", "hidden_size"),
    ("train.max_step=10", "max_steps"), ("modle.cell=gru", "model"),
])
def test_unknown_key_names_the_closest_valid_key(tmp_path, text_file, capsys, override, closest):
    line = train_error(capsys, tmp_path, text_file, override)
    assert f"unknown key '{override.split('=')[0].removeprefix('modle.')}'" in line or "'modle'" in line
    assert f"(did you mean '{closest}'?)" in line and "valid keys: " in line


def test_unknown_key_in_a_yaml_file(tmp_path, text_file, capsys):
    config = write(tmp_path / "typo.yaml", "train:\n  max_stesp: 3\n")
    line = train_error(capsys, tmp_path, text_file, config=config)
    assert "unknown key 'train.max_stesp' (did you mean 'max_steps'?)" in line


@pytest.mark.parametrize("override, message", [
    ("model.hidden_size=abc", "model.hidden_size must be int, got 'abc' (str)"),
    ("model.hidden_size=1.5", "model.hidden_size must be int, got 1.5 (float)"),
    ("train.max_steps=true", "train.max_steps must be int, got True (bool)"),
    ("optim.lr=fast", "optim.lr must be float, got 'fast' (str)"),
    ("model.tie_weights=maybe", "model.tie_weights must be bool, got 'maybe' (str)"),
])
def test_wrong_type(tmp_path, text_file, capsys, override, message):
    assert train_error(capsys, tmp_path, text_file, override) == f"error: config: {message}"


@pytest.mark.parametrize("override, message", [
    ("optim.lr=0", "optim.lr must be positive, got 0.0"),
    ("optim.lr=-1", "optim.lr must be positive, got -1.0"),
    ("model.dropout=1", "model.dropout must be in [0, 1), got 1.0"),
    ("model.weight_drop=-0.1", "model.weight_drop must be in [0, 1), got -0.1"),
    ("model.hidden_size=0", "model.hidden_size must be positive, got 0"),
    ("model.num_layers=-2", "model.num_layers must be positive, got -2"),
    ("train.batch_size=0", "train.batch_size must be positive, got 0"),
    ("optim.clip_grad_norm=-1", "optim.clip_grad_norm must be >= 0, got -1.0"),
    ("tokenizer.vocab_size=100", "tokenizer.vocab_size must be at least 257 for bpe (256 bytes + merges), got 100"),
])
def test_out_of_range_values(tmp_path, text_file, capsys, override, message):
    extra = ["tokenizer.kind=bpe"] if override.startswith("tokenizer") else []
    assert train_error(capsys, tmp_path, text_file, *extra, override) == f"error: config: {message}"


@pytest.mark.parametrize("override, message", [
    ("model.cell=transformer", "model.cell must be one of rnn, gru, lstm, mingru, minlstm, got 'transformer'"),
    ("tokenizer.kind=sentencepiece", "tokenizer.kind must be one of bpe, word, char, got 'sentencepiece'"),
])
def test_unknown_cell_or_tokenizer_kind(tmp_path, text_file, capsys, override, message):
    assert train_error(capsys, tmp_path, text_file, override) == f"error: config: {message}"


def test_malformed_overrides_and_options(tmp_path, text_file, capsys):
    assert "must look like section.key=value" in train_error(capsys, tmp_path, text_file, "optim.lr")
    assert "must name section.key" in train_error(capsys, tmp_path, text_file, "lr=3")
    assert cli_line(capsys, ["train", "--bogus"]) == "error: unrecognized arguments: --bogus (see rnnlm --help)"


# ---------------------------------------------------------------------------------------
# generate and evaluate


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A char-level and a word-level (vocabulary of 40 words) tiny model."""
    out = {}
    for kind in ("char", "word"):
        tmp = tmp_path_factory.mktemp(kind)
        text = write(tmp / "corpus.txt", small_text())
        assert main(["train", *tiny_overrides(tmp, text), f"tokenizer.kind={kind}", "tokenizer.vocab_size=40",
                     "train.max_steps=3"]) == 0
        out[kind] = str(tmp / "run" / "last.pt")
    return out


@pytest.mark.parametrize("options, message", [
    (["--temperature", "-1"], "--temperature must be >= 0 (0 = greedy), got -1.0"),
    (["--temperature", "hot"], "argument --temperature: must be a number, got 'hot' (see rnnlm generate --help)"),
    (["--temperature", "nan"], "argument --temperature: must be a finite number (not NaN or infinity), got 'nan' "
                               "(see rnnlm generate --help)"),
    (["--top-k", "-1"], "--top-k must be >= 0, got -1"),
    (["--top-p", "0"], "--top-p must be in (0, 1], got 0.0"),
    (["--num-samples", "0"], "--num-samples must be at least 1, got 0"),
    (["--max-new-tokens", "-5"], "--max-new-tokens must be >= 0, got -5"),
    (["--prompt", ""], "the prompt is empty; give some text with --prompt, --prompt-file or on stdin"),
    (["--device", "tpu9"], "unknown device 'tpu9'; use auto, cpu, cuda, cuda:N or mps"),
])
def test_bad_generate_options(checkpoints, capsys, options, message):
    line = cli_line(capsys, ["generate", "--checkpoint", checkpoints["char"], *options], quiet=True)
    assert line == f"error: {message}"  # and nothing printed before it
    print(line)


def float_options() -> list[tuple[str, str]]:
    """(command, option) for every option of every command that takes a number with a point."""
    from rnnlm.cli import COMMANDS, ArgumentParser, finite_float

    found = []
    for command, (add_args, _, _) in COMMANDS.items():
        parser = ArgumentParser(prog=f"rnnlm {command}")
        add_args(parser)
        for action in parser._actions:
            assert action.type is not float, f"rnnlm {command} {action.option_strings[0]}: use type=finite_float"
            if action.type is finite_float:
                found.append((command, action.option_strings[-1]))
    return found


FLOAT_OPTIONS = float_options()


def test_the_float_options_are_found():
    assert {("generate", "--temperature"), ("generate", "--top-p"), ("evaluate", "--dynamic"),
            ("evaluate", "--dynamic-decay"), ("gradient-flow", "--lr")} <= set(FLOAT_OPTIONS)


@pytest.mark.parametrize("command, option", FLOAT_OPTIONS, ids=lambda x: x)
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN"])
def test_every_float_option_refuses_nan_and_infinity(capsys, command, option, value):
    # The number is checked as the command line is read: before any checkpoint is loaded.
    line = cli_line(capsys, [command, f"{option}={value}", "--checkpoint", "never-read.pt"], quiet=True)
    assert line == (f"error: argument {option}: must be a finite number (not NaN or infinity), got {value!r} "
                    f"(see rnnlm {command} --help)")


def test_generate_temperature_nan_on_a_checkpoint_is_one_line(checkpoints, capsys):
    line = cli_line(capsys, ["generate", "--checkpoint", checkpoints["char"], "--temperature", "nan"], quiet=True)
    assert line == ("error: argument --temperature: must be a finite number (not NaN or infinity), got 'nan' "
                    "(see rnnlm generate --help)")


@pytest.mark.parametrize("override, key, shown", [
    ("optim.lr=nan", "optim.lr", "nan"), ("train.max_minutes=.inf", "train.max_minutes", "inf"),
    ("data.split=[.nan, 0.1, 0.1]", "data.split", "[nan, 0.1, 0.1]"),
])
def test_train_refuses_nan_and_infinity_in_overrides(tmp_path, text_file, capsys, override, key, shown):
    what = "hold finite numbers" if key == "data.split" else "be a finite number"
    assert train_error(capsys, tmp_path, text_file, override) == \
        f"error: config: {key} must {what} (not NaN or infinity), got {shown}"
    assert not (tmp_path / "run").exists()  # refused before anything was written


LATIN1 = "Napoléon".encode("latin-1")  # b"Napol\xe9on": not UTF-8
NOT_UTF8 = ("warning: the prompt from {} is not UTF-8: 1 byte(s) replaced by U+FFFD; give it as UTF-8 "
            "(e.g. convert it with iconv -f latin1 -t utf-8)")


def strict_stdin(data: bytes):
    """A stdin that raises on bytes that are not UTF-8, as Python's does under a UTF-8 locale."""
    import io

    return io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", errors="strict")


@pytest.mark.parametrize("how", ["argument", "file", "stdin", "piped", "interactive", "predict"])
def test_a_prompt_that_is_not_utf8_is_read_with_a_replacement_character(checkpoints, capsys, tmp_path, monkeypatch,
                                                                        how):
    options, source = ["--prompt", os.fsdecode(LATIN1)], "the command line"  # how Python hands on argv's bytes
    if how == "file":
        options, source = ["--prompt-file", str(write(tmp_path / "prompt.txt", LATIN1))], f"prompt file {tmp_path}/prompt.txt"
    elif how in ("stdin", "piped", "interactive"):
        monkeypatch.setattr(sys, "stdin", strict_stdin(LATIN1 + b"\n"))
        monkeypatch.setattr("rnnlm.cli._stdin_has_data", lambda: True)
        options = {"stdin": ["--prompt", "-"], "piped": [], "interactive": ["-i"]}[how]
        source = "an input line" if how == "interactive" else "stdin"
    command = ["predict", os.fsdecode(LATIN1)] if how == "predict" else ["generate", *options, "--max-new-tokens", "3"]
    capsys.readouterr()
    assert main([*command, "--checkpoint", checkpoints["char"]]) == 0
    out, err = capsys.readouterr()
    assert err.splitlines()[0] == NOT_UTF8.format(source) and "Traceback" not in err, err
    assert how == "predict" or "Napol\ufffdon" in out


@pytest.mark.parametrize("path, problem", [("/dev/zero", "is a character device"), ("missing.txt", "does not exist"),
                                           (".", "is a directory")])
def test_a_prompt_file_that_is_not_a_text_file_is_one_line(checkpoints, capsys, path, problem):
    line = cli_line(capsys, ["generate", "--checkpoint", checkpoints["char"], "--prompt-file", path])
    assert line == f"error: prompt file '{path}' {problem}; pass a UTF-8 text file with --prompt-file"


def test_evaluate_text_that_is_a_device_or_a_pipe_is_one_line(checkpoints, capsys, tmp_path):
    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)
    for path, problem in [("/dev/zero", "is a character device"), (str(fifo), "is a named pipe (FIFO)")]:
        line = cli_line(capsys, ["evaluate", "--checkpoint", checkpoints["char"], "--text", path])
        assert line == f"error: text file {path} {problem}, not a regular file; set --text to a text file"


def test_top_k_larger_than_the_vocabulary_is_clamped_with_a_warning(checkpoints, capsys):
    line = cli_line(capsys, ["generate", "--checkpoint", checkpoints["char"], "--top-k", "1000",
                             "--max-new-tokens", "5", "--prompt", "The army", "--seed", "1"], code=0, kind="warning")
    print(line)
    assert line == "warning: top-k 1000 is larger than the vocabulary (31); using 31"


def test_a_prompt_word_unknown_to_a_word_tokenizer_is_named_and_replaced(checkpoints, capsys):
    line = cli_line(capsys, ["generate", "--checkpoint", checkpoints["word"], "--prompt", "Napoleon met Zorglub",
                             "--max-new-tokens", "3", "--seed", "1"], code=0, kind="warning")
    print(line)
    assert line == "warning: 2 prompt token(s) unknown to this tokenizer ('met', 'Zorglub') were replaced by <unk>"


def test_an_empty_stdin_is_not_taken_as_the_prompt(checkpoints, capsys, monkeypatch):
    # Under cron or CI stdin is often /dev/null: the checkpoint's default prompt is used.
    with open("/dev/null") as devnull:
        monkeypatch.setattr(sys, "stdin", devnull)
        assert main(["generate", "--checkpoint", checkpoints["char"], "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.startswith("Napoleon was the Emperor of")


@pytest.mark.parametrize("content, message", [
    (None, "text file {path} does not exist; set --text to a text file"),
    (b"\x00\x01\x02" * 100, "text file {path} looks binary (it has NUL bytes); set --text to a plain text file"),
    ("Pièrre\n".encode("latin-1"), "text file {path} is not valid utf-8: byte 0xe8 at offset 2 (line 1); "
                                   "set --encoding to the file's encoding (e.g. latin-1) or --errors=replace"),
    (b"\n\n", "text file {path} is empty (or only whitespace); set --text to a file with text in it"),
], ids=["missing", "binary", "latin-1", "empty"])
def test_bad_evaluate_text(checkpoints, capsys, tmp_path, content, message):
    path = tmp_path / "text.txt"
    if content is not None:
        write(path, content)
    line = cli_line(capsys, ["evaluate", "--checkpoint", checkpoints["char"], "--text", str(path)])
    print(line)
    assert line == "error: " + message.format(path=path)


def test_evaluate_reads_another_encoding_when_told(checkpoints, capsys, tmp_path):
    path = write(tmp_path / "text.txt", small_text(4).replace("Pierre", "Pièrre").encode("latin-1"))
    assert main(["evaluate", "--checkpoint", checkpoints["char"], "--text", str(path), "--encoding", "latin-1"]) == 0
    assert "bits/char" in capsys.readouterr().out


def test_an_existing_run_directory_is_not_overwritten(tmp_path, text_file, capsys):
    assert main(["train", *tiny_overrides(tmp_path, text_file), "train.max_steps=2"]) == 0
    line = train_error(capsys, tmp_path, text_file, "train.max_steps=2")
    assert line == (f"error: run directory {tmp_path / 'run'} already exists; continue it with --resume "
                    "(train.resume=true), start over with --overwrite, or set train.out_dir")
    assert main(["train", *tiny_overrides(tmp_path, text_file), "train.max_steps=2", "--overwrite"]) == 0
