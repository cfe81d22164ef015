"""Config (rnnlm.config): every shipped config loads; bad keys, types, values and YAML are
named clearly; the config reference in docs/design.md is current; the sampling settings
follow one rule wherever they are given."""

from pathlib import Path

import pytest

from rnnlm.config import (Config, check_sampling, config_from_dict, config_to_dict, dump_config, load_config,
                          sampling_error)
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
    assert design.count("| key | default | meaning |") == 1, "docs/design.md holds the reference more than once"
    assert all(line.startswith("|") for line in reference_table().splitlines()), "a default broke a table row"


# ---------------------------------------------------------------------------------------
# The sampling settings: one rule for the config, the command line, the Python API and
# the interactive mode, each naming the setting its own way.


@pytest.mark.parametrize("key, value, problem", [
    ("top_p", 1.0, None), ("top_p", 1e-6, None),
    ("top_p", 0.0, "must be in (0, 1]"), ("top_p", 1.5, "must be in (0, 1]"),
    ("temperature", 0.0, None), ("temperature", -0.1, "must be >= 0 (0 = greedy)"),
    ("top_k", 0, None), ("top_k", -1, "must be >= 0"),
    ("max_new_tokens", 0, None), ("max_new_tokens", -5, "must be >= 0"),
    ("num_samples", 1, None), ("num_samples", 0, "must be at least 1"),
])
def test_sampling_error_says_what_a_setting_must_be(key, value, problem):
    assert sampling_error(key, value) == problem


def test_one_sampling_rule_named_for_the_config_the_command_line_the_python_api_and_the_prompt():
    from rnnlm.interactive import apply_command
    from rnnlm.sample import generate
    from tests.conftest import untrained_lm

    assert _error("sample.top_p=1.5") == "config: sample.top_p must be in (0, 1], got 1.5"
    with pytest.raises(RnnlmError) as e:
        check_sampling({"top_p": 1.5}, name=lambda key: "--" + key.replace("_", "-"))  # as the command line names it
    assert str(e.value) == "--top-p must be in (0, 1], got 1.5"
    with pytest.raises(RnnlmError) as e:
        generate(untrained_lm(), "The army", top_k=-1)
    assert str(e.value) == "top-k must be >= 0, got -1"
    assert apply_command("/top-p 1.5", {"top_p": 1.0}) == "/top-p must be in (0, 1], got 1.5"


def test_check_sampling_names_the_first_bad_setting_and_ignores_other_keys():
    check_sampling({"prompt": "", "seed": -3, "top_p": 1.0})  # not sampling ranges: not its business
    with pytest.raises(RnnlmError) as e:
        check_sampling({"temperature": -1, "top_k": -1})
    assert str(e.value) == "temperature must be >= 0 (0 = greedy), got -1"


def test_patience_is_off_by_default_and_must_be_positive_or_null():
    assert load_config(None).train.patience is None
    with pytest.raises(RnnlmError, match="train.patience must be positive or null, got 0"):
        load_config(None, ["train.patience=0"])


@pytest.mark.parametrize("value, problem", [
    ("[0.8, 0.1]", "must be three fractions >= 0 (train, valid, test) that sum to 1, got [0.8, 0.1]"),
    ("[0.8, 0.1, 0.2]", "must be three fractions >= 0 (train, valid, test) that sum to 1, got [0.8, 0.1, 0.2]"),
    ("[1.1, 0.1, -0.2]", "must be three fractions >= 0 (train, valid, test) that sum to 1, got [1.1, 0.1, -0.2]"),
    ("[0, 0.5, 0.5]", "must leave text for training and validation (only test may be 0), got [0, 0.5, 0.5]"),
    ("[0.9, 0, 0.1]", "must leave text for training and validation (only test may be 0), got [0.9, 0, 0.1]"),
])
def test_bad_split_fractions_are_one_line(value, problem):
    with pytest.raises(RnnlmError) as e:
        load_config(None, [f"data.split={value}"])
    assert str(e.value) == f"config: data.split {problem}"


@pytest.mark.parametrize("value", ["0", "-5", "true", "1.5", "'many'"])
def test_a_bad_max_eval_chars_is_one_line(value):
    with pytest.raises(RnnlmError) as e:
        load_config(None, [f"data.max_eval_chars={value}"])
    assert "data.max_eval_chars" in str(e.value) and "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------
# NaN and infinity: refused in every number of every section, whichever way it is given.
# The fields are found by introspection, so a field added later is covered too.


def number_fields() -> list[tuple[str, object]]:
    """(section.key, a valid value) for every float field and every tuple of numbers."""
    import dataclasses
    import typing

    defaults = config_to_dict(Config())
    found = []
    for section in dataclasses.fields(Config):
        for key, tp in typing.get_type_hints(typing.get_type_hints(Config)[section.name]).items():
            if float in (tp, *typing.get_args(tp)) or tp is tuple:
                default = defaults[section.name][key]
                found.append((f"{section.name}.{key}", default if default is not None else 1.0))
    return found


NUMBER_FIELDS = number_fields()
NOT_FINITE = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}
YAML_SPELLING = {"nan": ".nan", "inf": ".inf", "-inf": "-.inf"}


def test_number_fields_are_found():
    keys = [key for key, _ in NUMBER_FIELDS]
    for key in ("optim.lr", "optim.betas", "model.dropout", "data.split", "train.max_minutes", "sample.top_p"):
        assert key in keys
    assert "train.max_steps" not in keys  # an int: the type check refuses a float there


@pytest.mark.parametrize("key, valid", NUMBER_FIELDS, ids=[k for k, _ in NUMBER_FIELDS])
@pytest.mark.parametrize("name", NOT_FINITE)
def test_nan_and_infinity_are_refused_in_every_number_field(tmp_path, key, valid, name):
    section, field = key.split(".")
    bad = NOT_FINITE[name]
    if isinstance(valid, list):  # a tuple of numbers: the first one is bad
        value, shown, what = [bad, *valid[1:]], str([bad, *valid[1:]]), "hold finite numbers"
        override, spelled = f"{key}={[name, *valid[1:]]}".replace("'", ""), f"[{YAML_SPELLING[name]}, " + \
            ", ".join(map(str, valid[1:])) + "]"
    else:
        value, shown, what = bad, name, "be a finite number"
        override, spelled = f"{key}={name}", YAML_SPELLING[name]
    expected = f"config: {key} must {what} (not NaN or infinity), got {shown}"
    yaml_file = tmp_path / "bad.yaml"
    yaml_file.write_text(f"{section}:\n  {field}: {spelled}\n", encoding="utf-8")
    for make in (lambda: config_from_dict({section: {field: value}}),   # the Python API
                 lambda: load_config(None, [override]),                  # a command-line override
                 lambda: load_config(yaml_file)):                        # a YAML file
        with pytest.raises(RnnlmError) as e:
            make()
        assert str(e.value) == expected


def test_a_section_built_directly_refuses_nan_too():
    import math

    from rnnlm.config import OptimConfig, TrainConfig

    with pytest.raises(RnnlmError, match=r"^config: optim.lr must be a finite number \(not NaN or infinity\), got inf$"):
        OptimConfig(lr=math.inf)
    with pytest.raises(RnnlmError, match=r"^config: train.max_epochs must be a finite number"):
        TrainConfig(max_epochs=math.nan)


def test_a_list_setting_of_things_that_are_not_numbers_is_one_line():
    assert _error("optim.betas=[fast, 0.99]") == "config: optim.betas must be a list of numbers, got ['fast', 0.99]"
    assert load_config(None, ["data.split=[8e-1, 1e-1, 1e-1]"]).data.split == (0.8, 0.1, 0.1)  # YAML's strings


@pytest.mark.parametrize("key, value, problem", [
    ("temperature", float("nan"), "must be a finite number"), ("temperature", float("inf"), "must be a finite number"),
    ("top_p", float("nan"), "must be a finite number"), ("top_p", float("-inf"), "must be a finite number"),
    ("max_new_tokens", float("inf"), "must be a whole number"), ("top_k", 2.5, "must be a whole number"),
    ("num_samples", float("nan"), "must be a whole number"), ("temperature", "0.7", "must be a number"),
])
def test_sampling_settings_must_be_finite_numbers(key, value, problem):
    assert sampling_error(key, value) == problem


def test_the_python_api_and_the_prompt_refuse_nan_and_infinity():
    import math

    from rnnlm.interactive import apply_command
    from tests.conftest import untrained_lm

    lm = untrained_lm()
    for kwargs, line in [({"temperature": math.nan}, "temperature must be a finite number, got nan"),
                         ({"top_p": math.inf}, "top-p must be a finite number, got inf"),
                         ({"max_new_tokens": math.inf}, "max-new-tokens must be a whole number, got inf")]:
        with pytest.raises(RnnlmError) as e:
            lm.generate("The army", **kwargs)
        assert str(e.value) == line
    for kwargs, line in [({"dynamic_lr": math.nan}, "dynamic evaluation needs a learning rate >= 0 (dynamic_lr), got nan"),
                         ({"dynamic_lr": 0.1, "dynamic_decay": math.inf},
                          "dynamic evaluation needs a decay in [0, 1) (dynamic_decay), got inf"),
                         ({"seq_len": math.nan}, "seq_len must be a whole number, got nan"),
                         ({"dynamic_lr": 0.1, "dynamic_rms": math.inf}, "dynamic_rms must be a whole number, got inf")]:
        with pytest.raises(RnnlmError) as e:
            lm.score("The army crossed the river at dawn.", **kwargs)
        assert str(e.value) == line
    with pytest.raises(RnnlmError, match="^k must be a whole number, got nan$"):
        lm.next_words("The army", k=math.nan)
    assert apply_command("/temperature nan", {"temperature": 0.8}) == "/temperature must be a finite number, got nan"
    assert apply_command("/top-p inf", {"top_p": 1.0}) == "/top-p must be a finite number, got inf"
