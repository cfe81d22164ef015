"""The package's modules import one way: errors, the recurrent kernels and cells, and the
configuration at the bottom, the command line on top, and loading a model for inference
never imports the training code."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rnnlm"

# Each module may import only modules of a lower layer.
LAYERS = [
    ["errors"],
    ["fused", "scan"],
    ["cells"],
    ["config", "device", "files"],
    ["distributed", "documents", "sizing", "token_cache", "tokenizer"],
    ["prepare"],
    ["data", "checkpoint", "plots"],
    ["model"],
    ["evaluate", "optim"],
    ["sample", "train_state", "run_dir", "gradflow", "model_folder"],
    ["finetune"],
    ["predict", "train", "activations"],
    ["inference"],
    ["interactive", "export", "server"],
    ["cli"],
    ["__main__"],
]
TRAINING = {"train", "train_state", "run_dir", "optim"}


def imports_of(module: str) -> set[str]:
    """The rnnlm modules that `module` imports, at its top or inside a function."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:  # from . import x / from .x import y
                found.add(node.module or node.names[0].name)
            elif node.module == "rnnlm":
                found.update(alias.name for alias in node.names)
            elif node.module and node.module.startswith("rnnlm."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("rnnlm."))
    return {m for m in found if (PACKAGE / f"{m}.py").exists()} - {module}


def closure(module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        for m in imports_of(todo.pop()) - seen:
            seen.add(m)
            todo.append(m)
    return seen


def test_every_module_has_a_layer():
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    placed = [m for layer in LAYERS for m in layer]
    assert sorted(placed) == sorted(set(placed)), "a module is in two layers"
    assert modules == set(placed), f"place these in LAYERS: {modules ^ set(placed)}"


def test_modules_import_only_lower_layers():
    layer_of = {m: i for i, layer in enumerate(LAYERS) for m in layer}
    upward = [f"{m} imports {d}" for m in layer_of for d in sorted(imports_of(m)) if layer_of[d] >= layer_of[m]]
    assert not upward, upward


def test_no_import_cycles():
    cycles = [m for m in (p.stem for p in PACKAGE.glob("*.py")) if m != "__init__" and m in closure(m)]
    assert not cycles, cycles


def test_inference_never_imports_training():
    for module in ("inference", "sample", "predict", "evaluate", "interactive", "export", "activations", "server",
                   "model_folder"):
        assert not closure(module) & TRAINING, (module, closure(module) & TRAINING)


@pytest.mark.slow
def test_loading_a_model_does_not_import_the_trainer(tmp_path):
    from conftest import train_tiny_run

    ckpt = train_tiny_run(tmp_path) / "best.pt"
    code = ("import sys, rnnlm; lm = rnnlm.load_model(sys.argv[1]); lm.generate('The army', max_new_tokens=5); "
            "lm.next_words('The army', k=3); lm.score('The army crossed the river.'); "
            "assert 'rnnlm.train' not in sys.modules, sorted(m for m in sys.modules if m.startswith('rnnlm'))")
    done = subprocess.run([sys.executable, "-c", code, str(ckpt)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "Failed to initialize NumPy" not in done.stderr
