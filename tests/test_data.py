"""Data: download, reading errors, cleaning, the exact split, the id cache, batches."""

import functools
import http.server
import os
import socket
import threading
from pathlib import Path

import pytest
import torch

from rnnlm import data, token_cache
from rnnlm import tokenizer as T
from rnnlm.config import DataConfig, TokenizerConfig
from rnnlm.errors import RnnlmError
from tests.conftest import cli_line, small_text


def load(path, kind="bpe", vocab_size=4096, tokenizer_json=None, **data_keys):
    """data.load_corpus of `path` read with `data_keys` (by default: no download, no cache)."""
    dc = DataConfig(path=str(path), **{"url": None, "cache_dir": None, **data_keys})
    return data.load_corpus(dc, TokenizerConfig(kind=kind, vocab_size=vocab_size), tokenizer_json=tokenizer_json,
                            progress=False)

PROSE = "".join(
    f"Line {i} of the story, where Pierre and Natásha talk about the war.\n" + ("\n" if i % 5 == 4 else "")
    for i in range(400)
)


def one_line_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    return msg


# --- cleaning and splitting -------------------------------------------------------------


def test_war_and_peace_split_reproduces_the_design_counts(war_and_peace):
    splits = data.split_text(data.clean_text(data.read_text(war_and_peace)))
    assert {k: len(v) for k, v in splits.items()} == {"train": 2_561_316, "valid": 320_185, "test": 320_133}
    assert splits["train"].endswith("\n") and splits["valid"].endswith("\n") and splits["test"].endswith("\n")
    assert not splits["test"].endswith("\n\n") and "*** END OF" not in splits["test"]


@pytest.mark.slow
def test_war_and_peace_bpe_round_trip_on_the_whole_train_split(war_and_peace):
    train = data.split_text(data.clean_text(data.read_text(war_and_peace)))["train"]
    tok = T.train_tokenizer("bpe", train, 512)
    assert T.decode(tok, T.encode(tok, train)) == train


def test_clean_removes_gutenberg_header_and_footer():
    raw = (
        "\ufeffThe Project Gutenberg eBook of Something\r\n\r\nlicense blah\r\n"
        "*** START OF THE PROJECT GUTENBERG EBOOK SOMETHING ***\r\n\r\n\r\n"
        "CHAPTER I\r\n\r\nThe story.\r\n\r\n\r\n"
        "*** END OF THE PROJECT GUTENBERG EBOOK SOMETHING ***\r\nmore license\r\n"
    )
    assert data.clean_text(raw) == "CHAPTER I\n\nThe story.\n"


def test_clean_without_markers_only_normalises_newlines():
    assert data.clean_text("\n\nplain\r\ntext\n\n\n") == "plain\ntext\n"
    assert data.clean_text("no final newline") == "no final newline\n"
    assert data.clean_text("\n\n") == ""


def test_split_cuts_after_the_first_newline_at_or_after_80_and_90_percent():
    text = "".join(f"{i:04d}\n" for i in range(100))  # 500 characters, 5 per line
    splits = data.split_text(text)
    # 80% is index 400, the "0" of line 80: the next newline (404) ends train; 90% -> 454.
    assert [len(splits[s]) for s in data.SPLITS] == [405, 50, 45]
    assert "".join(splits.values()) == text
    text = "x" * 13 + "\n" + "y" * 6 + "\n"  # 80% = 16 -> newline at 20 is the last one
    splits = data.split_text(text)
    assert all(splits.values()) and "".join(splits.values()) == text


def test_split_falls_back_to_a_character_cut_for_one_line():
    text = data.clean_text("abcdefghij")
    splits = data.split_text(text)
    assert [len(splits[s]) for s in data.SPLITS] == [9, 1, 1]
    assert data.split_text("ab\n") == {"train": "a", "valid": "b", "test": "\n"}


def test_split_refuses_a_text_too_short_for_three_splits():
    with pytest.raises(RnnlmError, match="too few") as e:
        data.split_text("a\n")
    one_line_error(e)


# --- reading ----------------------------------------------------------------------------


def test_read_text_errors_are_one_clear_line(tmp_path):
    with pytest.raises(RnnlmError, match="does not exist.*data.path.*data.url") as e:
        data.read_text(tmp_path / "missing.txt")
    one_line_error(e)
    with pytest.raises(RnnlmError, match="is a directory") as e:
        data.read_text(tmp_path)
    one_line_error(e)

    binary = tmp_path / "model.bin"
    binary.write_bytes(b"PK\x03\x04\x00\x00\x01\x02" * 10)
    with pytest.raises(RnnlmError, match="binary") as e:
        data.read_text(binary)
    one_line_error(e)

    latin = tmp_path / "latin1.txt"
    latin.write_bytes("first line\nNapoléon\n".encode("latin-1"))
    with pytest.raises(RnnlmError) as e:
        data.read_text(latin)
    msg = one_line_error(e)
    assert "offset 16" in msg and "line 2" in msg and "data.encoding" in msg and "data.errors=replace" in msg
    assert data.read_text(latin, encoding="latin-1") == "first line\nNapoléon\n"
    assert data.read_text(latin, errors="replace") == "first line\nNapol\ufffdon\n"

    for content in [b"", b"  \n\r\n\t "]:
        empty = tmp_path / "empty.txt"
        empty.write_bytes(content)
        with pytest.raises(RnnlmError, match="empty") as e:
            data.read_text(empty)
        one_line_error(e)

    with pytest.raises(RnnlmError, match="data.encoding") as e:
        data.read_text(latin, encoding="no-such-codec")
    one_line_error(e)


def test_read_text_unreadable_file(tmp_path, monkeypatch):
    locked = tmp_path / "locked.txt"
    locked.write_text("secret\n")

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)  # chmod 0 does not stop root
    with pytest.raises(RnnlmError, match="cannot read .*Permission denied.*permissions") as e:
        data.read_text(locked)
    one_line_error(e)


def test_read_text_drops_a_byte_order_mark(tmp_path):
    f = tmp_path / "bom.txt"
    f.write_bytes("\ufeffhello\n".encode("utf-8"))
    assert data.read_text(f) == "hello\n"


# --- download ---------------------------------------------------------------------------


@pytest.fixture
def http_root(tmp_path):
    """A local HTTP server (127.0.0.1, ephemeral port) serving tmp_path/'www'."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_download_from_a_local_server(http_root, tmp_path):
    root, base = http_root
    body = ("War and Peace, in short.\r\n" * 5000).encode("utf-8")
    (root / "pg2600.txt").write_bytes(body)
    target = tmp_path / "data" / "book.txt"
    assert data.download(f"{base}/pg2600.txt", target, progress=False) == target
    assert target.read_bytes() == body
    assert [p.name for p in target.parent.iterdir()] == ["book.txt"]  # no temp file left


def test_load_corpus_downloads_a_missing_file(http_root, tmp_path):
    root, base = http_root
    (root / "book.txt").write_text(PROSE, encoding="utf-8")
    target = tmp_path / "data" / "book.txt"
    corpus = load(target, "char", url=f"{base}/book.txt")
    assert target.read_text(encoding="utf-8") == PROSE
    assert sum(corpus.chars.values()) == len(data.clean_text(PROSE))


def test_download_failure_names_the_url_and_the_manual_fix(http_root, tmp_path):
    _, base = http_root
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/pg2600.txt"
    target = tmp_path / "data" / "book.txt"
    for url in [dead, f"{base}/no-such-file.txt"]:
        with pytest.raises(RnnlmError) as e:
            data.download(url, target, progress=False)
        msg = one_line_error(e)
        assert url in msg and str(target) in msg and "by hand" in msg
    assert list(target.parent.iterdir()) == []  # no partial file


def test_an_interrupted_download_leaves_nothing_behind(tmp_path):
    class Truncating(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"only the beginning\n")
            self.close_connection = True

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Truncating)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    target = tmp_path / "data" / "book.txt"
    try:
        with pytest.raises(RnnlmError, match="by hand") as e:
            data.download(f"http://127.0.0.1:{server.server_address[1]}/book.txt", target, progress=False)
        one_line_error(e)
    finally:
        server.shutdown()
        server.server_close()
    assert list(target.parent.iterdir()) == []


# --- corpus and cache -------------------------------------------------------------------


def test_load_corpus_uses_the_cache_on_the_second_call(tmp_path, monkeypatch):
    path = tmp_path / "story.txt"
    path.write_text(PROSE, encoding="utf-8")
    cache = tmp_path / "cache"
    first = load(path, "bpe", 300, cache_dir=str(cache))
    assert len(list(cache.glob("*.ids"))) == 1

    def no_training(*args, **kwargs):
        raise AssertionError("the tokenizer was trained again instead of read from the cache")

    monkeypatch.setattr(T, "train_tokenizer", no_training)
    monkeypatch.setattr(T, "encode", no_training)
    monkeypatch.setattr(T, "encode_pieces", no_training)
    second = load(path, "bpe", 300, cache_dir=str(cache))
    for split in data.SPLITS:
        assert torch.equal(first.ids[split], second.ids[split])
        assert second.ids[split].dtype == torch.uint16 and second.ids[split].dim() == 1
    assert T.to_json(second.tokenizer) == T.to_json(first.tokenizer)
    assert second.chars == first.chars and second.text_hash == first.text_hash


def test_corpus_splits_decode_to_the_split_text(tmp_path):
    path = tmp_path / "story.txt"
    path.write_text(PROSE, encoding="utf-8")
    corpus = load(path, "bpe", 300)
    splits = data.split_text(data.clean_text(PROSE))
    for split in data.SPLITS:
        assert T.decode(corpus.tokenizer, corpus.ids[split]) == splits[split]
        assert corpus.chars[split] == len(splits[split])


def test_cache_key_depends_on_tokenizer_settings_and_given_tokenizer(tmp_path):
    path = tmp_path / "story.txt"
    path.write_text(PROSE, encoding="utf-8")
    cache = tmp_path / "cache"
    bpe = load(path, "bpe", 300, cache_dir=str(cache))
    char = load(path, "char", cache_dir=str(cache))
    assert char.tokenizer.get_vocab_size() < 300 and len(list(cache.glob("*.ids"))) == 2
    # A given tokenizer (resume / evaluate) is used as is, not retrained.
    given = load(path, "char", tokenizer_json=T.to_json(bpe.tokenizer), cache_dir=str(cache))
    assert T.to_json(given.tokenizer) == T.to_json(bpe.tokenizer)
    assert torch.equal(given.ids["valid"], bpe.ids["valid"])


def test_a_corrupt_cache_file_is_rebuilt(tmp_path):
    path = tmp_path / "story.txt"
    path.write_text(PROSE, encoding="utf-8")
    cache = tmp_path / "cache"
    first = load(path, "char", cache_dir=str(cache))
    (entry,) = cache.glob("*.ids")
    whole = entry.read_bytes()
    entry.unlink()  # a new file: truncating the mapped one in place would pull the pages from under `first`
    entry.write_bytes(whole[:100])  # truncated
    again = load(path, "char", cache_dir=str(cache))
    assert torch.equal(again.ids["train"], first.ids["train"])
    assert entry.read_bytes() == whole  # rewritten whole
    entry.unlink()
    entry.write_bytes(whole.replace(b'"tokenizer_json": "{', b'"tokenizer_json": "['))
    assert token_cache.read(entry) is not None  # the file parses, its tokenizer does not
    again = load(path, "char", cache_dir=str(cache))
    assert torch.equal(again.ids["valid"], first.ids["valid"])
    assert entry.read_bytes() == whole


def test_load_corpus_reports_a_missing_file_and_empty_content(tmp_path):
    with pytest.raises(RnnlmError, match="does not exist") as e:
        load(tmp_path / "nope.txt")
    one_line_error(e)
    only_license = tmp_path / "license.txt"
    only_license.write_text("*** START OF THE BOOK ***\n\n*** END OF THE BOOK ***\nlicense\n")
    with pytest.raises(RnnlmError, match="no text left") as e:
        load(only_license)
    one_line_error(e)


# --- batches ----------------------------------------------------------------------------


def test_batchify_lays_out_contiguous_streams():
    ids = torch.arange(26)
    batched = data.batchify(ids, 4)
    assert batched.shape == (4, 6) and batched.dtype == ids.dtype
    for b in range(4):
        assert torch.equal(batched[b], ids[b * 6 : (b + 1) * 6])


def test_get_batch_targets_are_inputs_shifted_by_one():
    batched = data.batchify(torch.arange(100), 4)  # (4, 25)
    x, y = data.get_batch(batched, 0, 10)
    assert x.shape == y.shape == (4, 10)
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, -1], batched[:, 10])
    x, y = data.get_batch(batched, 20, 10)  # the last batch is shorter
    assert x.shape == y.shape == (4, 4)
    assert torch.equal(x, batched[:, 20:24]) and torch.equal(y, batched[:, 21:25])
    # Walking i = 0, T, 2T, ... predicts every id after the first of each stream exactly once.
    targets = [data.get_batch(batched, i, 7)[1] for i in range(0, 24, 7)]
    assert torch.equal(torch.cat(targets, dim=1), batched[:, 1:])


def test_too_short_corpus_says_how_many_tokens_are_needed():
    data.check_enough_tokens(33 * 4, 4, 32, "train")  # exactly enough
    with pytest.raises(RnnlmError) as e:
        data.check_enough_tokens(100, 4, 32, "valid")
    msg = one_line_error(e)
    assert "valid" in msg and "100" in msg and "132" in msg and "train.batch_size" in msg and "train.seq_len" in msg


# --- corpus sources: a file, a folder, a glob -----------------------------------------------


def test_a_folder_is_its_text_files_in_name_order_joined_by_a_blank_line(tmp_path):
    folder = tmp_path / "poems"
    (folder / "b").mkdir(parents=True)
    (folder / "z.txt").write_text("last poem\n", encoding="utf-8")
    (folder / "a.txt").write_text("first poem\r\nline two\n\n", encoding="utf-8")
    (folder / "b" / "m.txt").write_text("middle poem\n", encoding="utf-8")
    (folder / "notes.md").write_text("not read\n", encoding="utf-8")
    files = data.corpus_files(folder)
    assert files == [folder / "a.txt", folder / "b" / "m.txt", folder / "z.txt"]
    assert data.read_documents(files) == "first poem\nline two\n\nmiddle poem\n\nlast poem\n"
    assert data.read_documents(files, separator="") == "first poem\nline two\nmiddle poem\nlast poem\n"
    assert data.corpus_files(folder, "*.md") == [folder / "notes.md"]
    assert data.corpus_files(str(folder / "*.txt")) == [folder / "a.txt", folder / "z.txt"]
    assert data.corpus_files(str(folder / "**" / "*.txt")) == files


@pytest.mark.parametrize("name", ["notes [draft].txt", "ch[1].txt", "what?.txt", "a*.txt"])
def test_a_file_whose_name_looks_like_a_pattern_is_that_file(tmp_path, name):
    path = tmp_path / name
    path.write_text("some text\n", encoding="utf-8")
    (tmp_path / "abc.txt").write_text("another text, which the name as a pattern would match\n", encoding="utf-8")
    (tmp_path / "what1.txt").write_text("another text, which the name as a pattern would match\n", encoding="utf-8")
    assert data.corpus_files(path) == [path]
    assert path in data.corpus_files(str(tmp_path / "*.txt"))  # a pattern that matches it is still a pattern


@pytest.mark.parametrize("pattern", ["/abs/**/*.txt", ""])
def test_a_glob_the_folder_cannot_take_is_one_line(tmp_path, pattern):
    (tmp_path / "a.txt").write_text("text\n", encoding="utf-8")
    with pytest.raises(RnnlmError, match="not a pattern relative to the folder") as e:
        data.corpus_files(tmp_path, pattern)
    one_line_error(e)


def test_what_is_not_a_regular_file_is_refused_in_one_line(tmp_path):
    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)
    for path, problem in [(fifo, "is a named pipe (FIFO)"), (Path("/dev/zero"), "is a character device")]:
        with pytest.raises(RnnlmError) as e:
            data.read_text(path)  # would wait for a writer, or read until memory runs out
        assert one_line_error(e) == f"data file {path} {problem}, not a regular file; set data.path to a text file"
    (tmp_path / "real.txt").write_text("text\n", encoding="utf-8")
    assert data.corpus_files(tmp_path) == [fifo, tmp_path / "real.txt"]  # a folder's member too, when read:
    with pytest.raises(RnnlmError, match="named pipe"):
        data.read_documents(data.corpus_files(tmp_path))


def test_a_folder_skips_its_empty_files_with_a_warning_and_refuses_only_when_none_has_text(tmp_path):
    (tmp_path / "a.txt").write_text("first\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("  \n", encoding="utf-8")
    (tmp_path / "c.txt").write_text("*** START OF THE BOOK ***\n", encoding="utf-8")
    (tmp_path / "d.txt").write_text("last\n", encoding="utf-8")
    with pytest.warns(UserWarning) as caught:
        assert data.read_documents(data.corpus_files(tmp_path)) == "first\n\nlast\n"
    assert str(caught[0].message) == (f"skipped 2 of the 4 files from {tmp_path}, which have no text: "
                                      f"{tmp_path / 'b.txt'}, {tmp_path / 'c.txt'}")
    for name in ("a.txt", "d.txt"):
        (tmp_path / name).write_text("", encoding="utf-8")
    with pytest.raises(RnnlmError) as e:
        data.read_documents(data.corpus_files(tmp_path))
    assert one_line_error(e).startswith(f"none of the 4 files from {tmp_path} has text")


def test_a_single_file_reads_as_before(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("one\r\ntwo\n", encoding="utf-8")
    assert data.corpus_files(path) == [path]
    assert data.read_documents([path]) == data.clean_text(data.read_text(path))


@pytest.mark.parametrize("source", ["folder", "glob"])
def test_a_folder_or_glob_trains_evaluates_and_resumes(tmp_path, capsys, source):
    from rnnlm.cli import main
    from rnnlm.train import train
    from tests.conftest import tiny_config

    folder = tmp_path / "chapters"
    folder.mkdir()
    text = small_text()
    half = len(text) // 2
    (folder / "01.txt").write_text(text[:half], encoding="utf-8")
    (folder / "02.txt").write_text(text[half:], encoding="utf-8")
    (folder / "notes.md").write_text("not part of the corpus\n", encoding="utf-8")
    path = folder if source == "folder" else folder / "*.txt"
    result = train(tiny_config(tmp_path, path, "train.max_steps=3", "train.checkpoint_every=3"))
    assert result["steps"] == 3
    out = capsys.readouterr().out
    assert f"data: 2 files from {path}, split " in out and "(train / valid / test); 2 documents, 0 characters" in out
    result = train(tiny_config(tmp_path, path, "train.max_steps=5", "train.resume=true"))
    assert result["steps"] == 5 and result["test"]["chars"] > 0
    assert main(["evaluate", "--checkpoint", str(tmp_path / "run" / "best.pt"), "--split", "test"]) == 0


# --- split fractions ---------------------------------------------------------------------


def test_split_fractions_cut_at_line_ends_and_may_leave_no_test():
    text = "".join(f"line {i:02d}\n" for i in range(20))  # 20 lines of 8 characters
    assert data.split_text(text) == data.split_text(text, (0.8, 0.1, 0.1))
    # Each cut is after the first newline at or after its fraction: 50% is character 80,
    # the start of line 10, whose newline ends train at 88; 75% (120) ends valid at 128.
    parts = data.split_text(text, (0.5, 0.25, 0.25))
    assert [len(parts[k]) for k in ("train", "valid", "test")] == [88, 40, 32]
    parts = data.split_text(text, (0.9, 0.1, 0))
    assert [len(parts[k]) for k in ("train", "valid", "test")] == [152, 8, 0]
    assert "".join(parts.values()) == text


def test_a_run_without_a_test_split_trains_and_evaluate_says_there_is_none(tmp_path, text_file, capsys):
    from rnnlm.cli import main
    from rnnlm.train import train
    from tests.conftest import tiny_config

    result = train(tiny_config(tmp_path, text_file, "data.split=[0.9, 0.1, 0]", "train.max_steps=3"))
    assert result["test"] is None and result["steps"] == 3
    assert "no test split (data.split gives it 0)" in capsys.readouterr().out
    line = cli_line(capsys, ["evaluate", "--checkpoint", str(tmp_path / "run" / "best.pt"), "--split", "test"])
    assert line == ("error: this model's text has no test split (data.split is [0.9, 0.1, 0]); "
                    "use --split valid, or --text FILE")
    assert main(["evaluate", "--checkpoint", str(tmp_path / "run" / "best.pt"), "--split", "valid"]) == 0


# --- pre-split datasets ------------------------------------------------------------------


def write_pre_split(folder: Path, test: bool = True) -> Path:
    """train.txt / valid.txt (/ test.txt) of small_text(), as WikiText-2 and the PyTorch example lay them out."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = small_text().splitlines(keepends=True)
    (folder / "train.txt").write_text("".join(lines[:30]), encoding="utf-8")
    (folder / "valid.txt").write_text("".join(lines[30:35]), encoding="utf-8")
    if test:
        (folder / "test.txt").write_text("".join(lines[35:]), encoding="utf-8")
    return folder


def test_a_pre_split_folder_is_read_as_it_is_split(tmp_path):
    folder = write_pre_split(tmp_path / "wiki")
    corpus = load(folder, "char")
    assert corpus.source == f"pre-split: train {folder / 'train.txt'}, valid {folder / 'valid.txt'}, " \
                            f"test {folder / 'test.txt'}"
    for name in ("train", "valid", "test"):
        assert corpus.chars[name] == len((folder / f"{name}.txt").read_text(encoding="utf-8"))
    named = load(folder / "train.txt", "char", valid_path=str(folder / "valid.txt"))
    assert named.chars["valid"] == corpus.chars["valid"] and named.chars["test"] == 0
    assert named.text_hash != corpus.text_hash


def test_a_pre_split_folder_trains_evaluates_and_resumes(tmp_path, capsys):
    from rnnlm.cli import main
    from rnnlm.train import train
    from tests.conftest import tiny_config

    folder = write_pre_split(tmp_path / "wiki")
    train(tiny_config(tmp_path, folder, "train.max_steps=3", "train.checkpoint_every=3"))
    assert f"data: pre-split: train {folder / 'train.txt'}" in capsys.readouterr().out
    result = train(tiny_config(tmp_path, folder, "train.max_steps=5", "train.resume=true"))
    assert result["steps"] == 5 and result["test"]["chars"] > 0
    assert main(["evaluate", "--checkpoint", str(tmp_path / "run" / "best.pt"), "--split", "test"]) == 0


@pytest.mark.parametrize("present, missing", [(["train", "test"], "valid.txt"), (["valid", "test"], "train.txt"),
                                              (["test"], "train.txt or valid.txt"), (["train"], "valid.txt")])
def test_a_folder_that_is_half_pre_split_is_refused_naming_what_is_missing(tmp_path, present, missing):
    folder = write_pre_split(tmp_path / "wiki")
    for name in {"train", "valid", "test"} - set(present):
        (folder / f"{name}.txt").unlink()
    with pytest.raises(RnnlmError) as e:
        load(folder, kind="char")
    assert "looks pre-split" in one_line_error(e) and f"has no {missing};" in str(e.value)


@pytest.mark.parametrize("overrides, message", [
    (["data.test_path=t.txt"], "config: data.test_path needs data.valid_path too (a pre-split dataset names its "
                               "validation text)"),
    (["data.valid_path=v.txt"], "config: data.valid_path needs data.path set to the training text of the same "
                                "dataset"),
])
def test_pre_split_settings_that_do_not_fit_are_one_line(overrides, message):
    from rnnlm.config import load_config

    with pytest.raises(RnnlmError) as e:
        load_config(None, overrides)
    assert str(e.value) == message


def test_a_split_too_short_to_score_is_one_line():
    data.check_scorable(2, "valid")
    with pytest.raises(RnnlmError) as e:
        data.check_scorable(1, "valid")
    assert str(e.value) == ("the valid split has 1 token(s), too few to score (the first token is context): use a "
                            "longer text, other data.split fractions, or a longer validation file")
