"""The installed package is the whole product: the configs ship inside it and are found by
name from any folder, the built-in defaults are the default config, `rnnlm configs`,
`rnnlm --version` and `python -m rnnlm` work, and a built wheel holds all of it."""

import email
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import rnnlm
from rnnlm.config import (CONFIGS_DIR, DEFAULT_CONFIG, builtin_configs, config_from_dict, config_summary, find_config,
                          load_config)
from rnnlm.errors import RnnlmError
from tests.conftest import cli_line

REPO = Path(__file__).resolve().parents[1]
REPO_CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def test_the_package_configs_are_the_repository_configs():
    assert [p.name for p in builtin_configs().values()] == [p.name for p in REPO_CONFIGS]
    assert CONFIGS_DIR.resolve() == (REPO / "configs").resolve()  # one copy, not a second set
    for name, file in builtin_configs().items():
        assert file.read_bytes() == (REPO / "configs" / f"{name}.yaml").read_bytes()


def test_the_built_in_defaults_are_the_default_config():
    assert config_from_dict({}) == load_config(DEFAULT_CONFIG) == load_config(REPO / "configs" / "war_and_peace.yaml")
    assert load_config(None) == load_config(DEFAULT_CONFIG)  # `rnnlm train` with no --config


def test_a_config_is_found_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("tiny", "own_text", "war_and_peace"):
        assert load_config(name) == load_config(REPO / "configs" / f"{name}.yaml")
        assert find_config(f"{name}.yaml") == builtin_configs()[name]


def test_a_path_still_wins_over_a_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("tiny.yaml").write_text("model:\n  hidden_size: 16\n")
    assert load_config("tiny.yaml").model.hidden_size == 16  # the file in this folder
    assert load_config("tiny").model.hidden_size == 64        # the name: the built-in config
    assert load_config(tmp_path / "tiny.yaml").model.hidden_size == 16


def test_an_unknown_config_is_one_line_that_lists_the_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RnnlmError) as e:
        load_config("war_and_piece")
    message = str(e.value)
    assert "\n" not in message and "'war_and_piece' not found" in message
    assert all(name in message for name in builtin_configs())
    with pytest.raises(RnnlmError, match=r"the built-in config of that name is --config tiny"):
        load_config("configs/tiny.yaml")  # the checkout's path, outside a checkout


@pytest.mark.parametrize("file", REPO_CONFIGS, ids=lambda p: p.name)
def test_every_config_opens_with_a_one_line_summary(file):
    first = file.read_text(encoding="utf-8").split("\n", 1)[0]
    assert first.startswith("# ") and len(first) <= 100, first
    summary = config_summary(file)
    assert any(unit in summary for unit in ("minutes", "seconds")), "say how long it takes: " + summary


def test_rnnlm_configs_lists_each_config_on_one_line(capsys):
    from rnnlm.cli import main

    assert main(["configs"]) == 0
    out = capsys.readouterr().out
    for name, file in builtin_configs().items():
        assert [line for line in out.splitlines() if line.split()[:1] == [name]] == \
            [f"  {name:<18}  {config_summary(file)}"]
    assert f"default: {DEFAULT_CONFIG}" in out and str(CONFIGS_DIR) in out


def test_rnnlm_configs_name_prints_the_file(capsys):
    from rnnlm.cli import main

    assert main(["configs", "tiny"]) == 0
    assert capsys.readouterr().out == (REPO / "configs" / "tiny.yaml").read_text(encoding="utf-8")
    assert "'nope' not found" in cli_line(capsys, ["configs", "nope"], quiet=True)


def test_version(capsys):
    from rnnlm.cli import main

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"rnnlm {rnnlm.__version__}\n"


def test_python_dash_m_rnnlm(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "rnnlm", "configs"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "tiny" in done.stdout and "war_and_peace" in done.stdout


def _setuptools_for_the_build() -> bool:
    try:
        import setuptools
    except ImportError:
        return False
    return int(setuptools.__version__.split(".")[0]) >= 77


@pytest.mark.slow
@pytest.mark.skipif(not _setuptools_for_the_build(), reason="building the wheel offline needs setuptools>=77")
def test_the_wheel_holds_the_configs_the_entry_points_and_complete_metadata(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                    "--wheel-dir", str(tmp_path), str(REPO)], check=True, timeout=300)
    (wheel,) = tmp_path.glob("rnnlm-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        for file in REPO_CONFIGS:
            assert z.read(f"rnnlm/configs/{file.name}") == file.read_bytes()
        assert "rnnlm/__main__.py" in names and "rnnlm/static/index.html" in names
        info = next(n.rsplit("/", 1)[0] for n in names if n.endswith(".dist-info/METADATA"))
        meta = email.message_from_bytes(z.read(f"{info}/METADATA"))
        entry_points = z.read(f"{info}/entry_points.txt").decode()
        assert any(n.startswith(f"{info}/licenses/LICENSE") for n in names)
    assert meta["Version"] == rnnlm.__version__ and meta["License-Expression"] == "MIT"
    assert meta["Requires-Python"] and meta.get_all("Classifier")
    assert "rnnlm = rnnlm.cli:main" in entry_points
