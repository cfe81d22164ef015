"""Config: every shipped config loads; bad keys, types, values and YAML are named clearly."""

from pathlib import Path

import pytest

from rnnlm.config import Config, config_from_dict, config_to_dict, dump_config, load_config
from rnnlm.errors import RnnlmError

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load_and_round_trip(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert cfg.train.max_steps or cfg.train.max_epochs or cfg.train.max_minutes, "every config must end by itself"
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_defaults_and_overrides():
    cfg = load_config(None, ["optim.lr=3e-3", "model.cell=gru", "train.max_steps=10", "model.hidden_size=64"])
    assert cfg.optim.lr == 3e-3 and cfg.model.cell == "gru" and cfg.train.max_steps == 10
    assert cfg.model.embedding_size == 64  # follows hidden_size when not set


def test_int_is_accepted_for_float():
    assert load_config(None, ["optim.lr=1"]).optim.lr == 1.0


def _error(*overrides, path=None):
    with pytest.raises(RnnlmError) as e:
        load_config(path, list(overrides))
    message = str(e.value)
    assert "\n" not in message
    return message


def test_unknown_key_names_the_key_and_closest_valid_one():
    message = _error("optim.lerning_rate=1")
    assert "optim.lerning_rate" in message and "valid keys" in message
    assert "did you mean 'lr'" in message
    assert "hiden_size" in _error("model.hiden_size=3") and "'hidden_size'" in _error("model.hiden_size=3")
    assert "'model'" in _error("modle.cell=gru")


def test_unknown_key_in_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  max_stesp: 3\n")
    message = _error(path=path)
    assert "train.max_stesp" in message and "max_steps" in message


def test_wrong_type_is_named():
    message = _error("train.batch_size=abc")
    assert "train.batch_size" in message and "int" in message
    assert "model.tie_weights" in _error("model.tie_weights=3")


@pytest.mark.parametrize("override, key", [
    ("optim.lr=0", "optim.lr"), ("optim.lr=-1", "optim.lr"),
    ("model.dropout=1.0", "model.dropout"), ("model.dropout=-0.1", "model.dropout"),
    ("model.hidden_size=0", "model.hidden_size"), ("model.cell=transformer", "model.cell"),
    ("tokenizer.kind=sentencepiece", "tokenizer.kind"), ("train.seq_len=0", "train.seq_len"),
    ("sample.temperature=-1", "sample.temperature"), ("train.device=tpu", "train.device"),
])
def test_out_of_range_values_are_named(override, key):
    assert key in _error(override)


def test_yaml_syntax_error_gives_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  cell: lstm\n  hidden_size: [1, 2\n")
    message = _error(path=path)
    assert "YAML syntax error" in message and "line" in message


def test_missing_config_file():
    assert "not found" in _error(path="no/such/config.yaml")


def test_bad_override_syntax():
    assert "section.key=value" in _error("optim.lr")


def test_dump_config_is_yaml_of_plain_types():
    text = dump_config(load_config(None))
    assert "betas:" in text and "!!" not in text


def test_docs_document_every_config_field():
    from rnnlm.config import field_docs, reference_table

    design = (Path(__file__).parents[1] / "docs" / "design.md").read_text(encoding="utf-8")
    assert all(doc for _, doc in field_docs().values()), "every config field needs a docstring line"
    assert reference_table() in design, "docs/design.md's configuration reference is stale: paste reference_table()"
