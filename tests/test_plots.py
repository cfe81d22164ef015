"""Training plots (the one a run draws, `rnnlm plot`, a missing matplotlib) and the
TensorBoard logging."""

import sys

import pytest

from rnnlm import plots
from rnnlm.cli import main
from rnnlm.errors import RnnlmError
from tests.conftest import tiny_config

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def run_dir(logged_run):
    """A tiny run of 20 steps (conftest.logged_run)."""
    return logged_run


def is_png(path):
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC


def test_training_writes_the_plot_and_rnnlm_plot_redraws_it(run_dir, tmp_path, capsys):
    assert is_png(run_dir / plots.PLOT_NAME)
    out = tmp_path / "curves.png"
    assert main(["plot", str(run_dir), "--out", str(out)]) == 0
    assert is_png(out)
    assert str(out) in capsys.readouterr().out


def test_plot_of_a_folder_without_metrics_is_a_one_line_error(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "metrics.jsonl" in err and err.count("\n") == 1


def test_without_matplotlib_plot_says_how_to_install_it_and_training_still_finishes(tmp_path, monkeypatch, capsys,
                                                                                      text_file):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    with pytest.raises(RnnlmError, match="pip install matplotlib"):
        plots.pyplot()
    from rnnlm.train import train

    result = train(tiny_config(tmp_path, text_file, "train.max_steps=4"))
    assert result["steps"] == 4
    assert not (tmp_path / "run" / plots.PLOT_NAME).exists()
    assert "warning: no training plot: matplotlib is not installed; pip install matplotlib" in capsys.readouterr().err


def test_tensorboard_gets_the_scalars_when_asked(tmp_path, monkeypatch, text_file):
    class Writer:
        def __init__(self):
            self.scalars, self.closed = [], False

        def add_scalar(self, tag, value, global_step):
            self.scalars.append((tag, global_step))

        def close(self):
            self.closed = True

    writer = Writer()
    monkeypatch.setattr("rnnlm.run_dir.open_tensorboard", lambda out: writer)
    from rnnlm.train import train

    train(tiny_config(tmp_path, text_file, "train.max_steps=4", "train.eval_every=2", "train.tensorboard=true"))
    tags = {tag for tag, _ in writer.scalars}
    assert {"loss/train", "loss/valid", "bpc/valid", "optim/lr", "optim/grad_norm"} <= tags
    assert ("loss/train", 4) in writer.scalars and writer.closed


def test_tensorboard_missing_is_a_warning(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    assert plots.open_tensorboard(tmp_path) is None
    assert "pip install tensorboard" in capsys.readouterr().err
