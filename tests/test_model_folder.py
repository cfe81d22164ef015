"""Model folders (`rnnlm export --format hf`): safetensors weights, config.json, tokenizer.json
and a model card; the folder loads as the model it came from, without unpickling anything."""

import json
import pickle
import subprocess
import sys

import pytest
import torch
import yaml

from conftest import cli_line, small_text, train_tiny_run, untrained_lm
from rnnlm import load_model, model_folder
from rnnlm.export import export_model

PROMPT = "The prince spoke to"


def lm_on_text(tmp_path, kind="char", **model):
    """An untrained model whose config reads small_text() from tmp_path (no download, cache there)."""
    lm = untrained_lm(kind)
    text = tmp_path / "corpus.txt"
    text.write_text(small_text(), encoding="utf-8")
    lm.config.data.path, lm.config.data.url, lm.config.data.cache_dir = str(text), None, str(tmp_path / "cache")
    for key, value in model.items():
        setattr(lm.config.model, key, value)
    if model:
        from rnnlm.model import RNNLM

        torch.manual_seed(1)
        lm.model = RNNLM(lm.model.vocab_size, lm.config.model).eval()
    return lm


def write(tmp_path, lm, **kwargs):
    folder = tmp_path / "folder"
    folder.mkdir()
    return folder, model_folder.write_folder(folder, lm, **kwargs)


@pytest.mark.parametrize("settings", [{}, {"cell": "gru", "num_layers": 2, "tie_weights": False, "embedding_size": 24}])
def test_folder_loads_as_the_model_it_came_from(tmp_path, settings):
    lm = lm_on_text(tmp_path, **settings)
    folder, _ = write(tmp_path, lm)
    back = load_model(folder, "cpu")
    assert back.model.state_dict().keys() == lm.model.state_dict().keys()
    for name, tensor in lm.model.state_dict().items():
        assert torch.equal(back.model.state_dict()[name], tensor), name
    assert (back.model.decoder.weight is back.model.embedding.weight) == lm.config.model.tie_weights
    assert back.config == lm.config
    assert back.generate(PROMPT, max_new_tokens=30, temperature=0) == lm.generate(PROMPT, max_new_tokens=30,
                                                                                  temperature=0)
    assert back.score(small_text(3)) == lm.score(small_text(3))


def test_tied_weight_is_stored_once_and_named_in_config(tmp_path):
    lm = lm_on_text(tmp_path)
    folder, config = write(tmp_path, lm)
    assert config["tied"] == {"decoder.weight": "embedding.weight"}
    tensors, tied = model_folder.stored_weights(lm.model)
    assert "decoder.weight" not in tensors and tied == config["tied"]
    on_disk = json.loads((folder / "config.json").read_text())
    assert on_disk["model"]["cell"] == "lstm" and on_disk["vocab_size"] == lm.model.vocab_size
    assert on_disk["tokenizer"]["kind"] == "char" and on_disk["rnnlm_version"]
    assert set(on_disk["run"]) == {"data", "optim", "train", "sample"}


def test_weights_open_with_safetensors_alone(tmp_path):
    """Without torch (blocked in the subprocess): safetensors and numpy read every tensor."""
    lm = lm_on_text(tmp_path)
    folder, _ = write(tmp_path, lm)
    code = ("import sys, json; sys.modules['torch'] = None; from safetensors.numpy import load_file; "
            "print(json.dumps({k: list(v.shape) for k, v in load_file(sys.argv[1]).items()}))")
    done = subprocess.run([sys.executable, "-c", code, str(folder / "model.safetensors")], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    expected = {k: list(v.shape) for k, v in lm.model.state_dict().items() if k != "decoder.weight"}
    assert json.loads(done.stdout) == expected


def test_loading_a_folder_never_unpickles(tmp_path, monkeypatch):
    lm = lm_on_text(tmp_path)
    folder, _ = write(tmp_path, lm)

    def refuse(*args, **kwargs):
        raise AssertionError("unpickling while loading a model folder")

    for module, name in ((torch, "load"), (pickle, "load"), (pickle, "loads"), (pickle, "Unpickler")):
        monkeypatch.setattr(module, name, refuse)
    assert load_model(folder, "cpu").generate(PROMPT, max_new_tokens=5, temperature=0) == \
        lm.generate(PROMPT, max_new_tokens=5, temperature=0)


def test_model_card_has_metadata_scores_sample_and_config(tmp_path):
    lm = lm_on_text(tmp_path)
    folder, config = write(tmp_path, lm, license="mit")
    card = (folder / "README.md").read_text()
    _, meta, body = card.split("---\n", 2)
    meta = yaml.safe_load(meta)
    assert meta["library_name"] == "rnnlm" and meta["language"] == ["en"] and meta["license"] == "mit"
    assert "lstm" in meta["tags"] and meta["pipeline_tag"] == "text-generation"
    measured = config["measured"]
    from rnnlm.evaluate import score_split

    for split in ("valid", "test"):
        expected = score_split(lm, split, batch_size=lm.config.train.batch_size, seq_len=model_folder.EVAL_SEQ_LEN)
        assert measured[split]["bpc"] == expected["bpc"]
        assert f"{expected['bpc']:.4f} bits per character" in body
    assert f"{measured['train_chars']:,} characters" in body and "corpus.txt" in body
    sample = lm.generate(lm.config.sample.prompt, max_new_tokens=model_folder.SAMPLE_TOKENS, seed=0)
    assert lm.config.sample.prompt + sample in body
    assert "load_model(" in body and "## Limitations" in body
    config_block = body.split("```yaml\n")[1].split("```")[0]
    assert yaml.safe_load(config_block)["model"]["hidden_size"] == lm.config.model.hidden_size
    assert "license" not in yaml.safe_load(model_folder.front_matter(lm, None).strip("-\n"))


def test_card_without_the_training_text_says_so_and_downloads_nothing(tmp_path, monkeypatch):
    lm = lm_on_text(tmp_path)
    lm.config.data.path, lm.config.data.url = str(tmp_path / "gone.txt"), "http://127.0.0.1:9/never"
    monkeypatch.setattr("rnnlm.data.download", lambda *a, **k: pytest.fail("downloaded the training text"))
    folder, config = write(tmp_path, lm)
    assert "missing" in config["measured"] and "gone.txt" in config["measured"]["missing"]
    assert "not measured at export" in (folder / "README.md").read_text()
    assert load_model(folder, "cpu").config.data.url == "http://127.0.0.1:9/never"  # the config is kept as it was


def test_read_model_gives_the_same_parent_for_checkpoint_and_folder(tmp_path):
    from rnnlm.checkpoint import save_checkpoint
    from rnnlm.config import config_to_dict
    from rnnlm.tokenizer import to_json

    lm = lm_on_text(tmp_path)
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, {"format_version": 1, "model": lm.model.state_dict(), "config": config_to_dict(lm.config),
                           "tokenizer": to_json(lm.tokenizer), "vocab_size": lm.model.vocab_size, "step": 7,
                           "tokens_seen": 700})
    from_ckpt = model_folder.read_model(ckpt)
    lm = load_model(ckpt, "cpu")
    assert lm.trained == {"step": 7, "tokens_seen": 700} and lm.checkpoint_step == 7
    folder, _ = write(tmp_path, lm)
    from_folder = model_folder.read_model(folder)
    assert from_folder.config == from_ckpt.config and from_folder.tokenizer_json == from_ckpt.tokenizer_json
    assert from_folder.vocab_size == from_ckpt.vocab_size and from_folder.trained == from_ckpt.trained
    assert from_folder.weights.keys() == from_ckpt.weights.keys()
    assert all(torch.equal(from_folder.weights[k], from_ckpt.weights[k]) for k in from_ckpt.weights)


def broken_folders(folder):
    """(what to break, what the error line says) for a written model folder."""
    return [
        (lambda: (folder / "model.safetensors").unlink(), "has no model.safetensors"),
        (lambda: (folder / "model.safetensors").write_bytes(b"not safetensors"), "not a readable safetensors file"),
        (lambda: (folder / "config.json").write_text("{"), "is not readable JSON"),
        (lambda: (folder / "config.json").write_text('{"format": "rnnlm-onnx"}'), "is an ONNX export"),
        (lambda: (folder / "config.json").write_text('{"format": "other"}'), "not an rnnlm model folder"),
        (lambda: (folder / "config.json").unlink(), "a folder without config.json"),
        (lambda: (folder / "tokenizer.json").unlink(), "no readable tokenizer.json"),
    ]


@pytest.mark.parametrize("case", range(7))
def test_a_broken_folder_is_one_line(tmp_path, capsys, case):
    lm = lm_on_text(tmp_path)
    folder, _ = write(tmp_path, lm)
    breaking, message = broken_folders(folder)[case]
    breaking()
    line = cli_line(capsys, ["generate", "--checkpoint", str(folder), "--prompt", "x"], quiet=True)
    assert message in line, line


def test_the_onnx_format_name_is_export_s():
    from rnnlm import export

    assert model_folder.ONNX_FORMAT == export.EXPORT_FORMAT


def test_a_run_folder_points_at_its_best_pt(tmp_path, capsys):
    (tmp_path / "best.pt").write_bytes(b"")
    line = cli_line(capsys, ["evaluate", "--checkpoint", str(tmp_path)], quiet=True)
    assert f"pass {tmp_path / 'best.pt'}" in line


def test_license_is_only_for_hf(tmp_path, capsys):
    line = cli_line(capsys, ["export", "--checkpoint", "x.pt", "--out", str(tmp_path / "o"), "--license", "mit"])
    assert "--license" in line and "--format hf" in line


def test_an_hf_export_is_replaced_by_overwrite_and_appears_whole(tmp_path):
    lm = lm_on_text(tmp_path)
    ckpt_folder, _ = write(tmp_path, lm)
    out = tmp_path / "out"
    export_model(ckpt_folder, out, fmt="hf")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors", "tokenizer.json"]
    with pytest.raises(Exception, match="already exists"):
        export_model(ckpt_folder, out, fmt="hf")
    export_model(ckpt_folder, out, fmt="hf", overwrite=True)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.export")]
    assert load_model(out, "cpu").generate(PROMPT, max_new_tokens=10, temperature=0) == \
        lm.generate(PROMPT, max_new_tokens=10, temperature=0)


@pytest.mark.slow
def test_cli_export_hf_generates_and_scores_as_the_checkpoint(tmp_path, capsys, monkeypatch):
    """Train, export with the command line, then generate greedily, score and predict from both."""
    from rnnlm.cli import main

    run = train_tiny_run(tmp_path, "tokenizer.kind=bpe", "tokenizer.vocab_size=300", "train.max_steps=40")
    out = tmp_path / "hf"
    monkeypatch.chdir(tmp_path)

    def rnnlm(*args):
        capsys.readouterr()
        assert main([str(a) for a in args]) == 0, capsys.readouterr().err
        return capsys.readouterr().out

    said = rnnlm("export", "--checkpoint", run / "best.pt", "--out", out, "--format", "hf")
    assert "model.safetensors" in said and "test" in said and "bpc" in said
    for command in (["generate", "--prompt", PROMPT, "--temperature", "0", "--max-new-tokens", "40"],
                    ["evaluate", "--split", "test", "--json"], ["predict", PROMPT, "-k", "5"]):
        from_ckpt = rnnlm(command[0], "--checkpoint", run / "best.pt", *command[1:])
        from_folder = rnnlm(command[0], "--checkpoint", out, *command[1:])
        if command[0] == "evaluate":
            from_ckpt, from_folder = (json.loads(s) for s in (from_ckpt, from_folder))
            assert from_folder.pop("checkpoint") != from_ckpt.pop("checkpoint")
        assert from_folder == from_ckpt, command
    test_bpc = json.loads(rnnlm("evaluate", "--checkpoint", out, "--split", "test", "--json"))["bpc"]
    assert f"{test_bpc:.4f} bits per character" in (out / "README.md").read_text()
