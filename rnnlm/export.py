"""Export a trained model: to run without rnnlm or PyTorch, an ONNX step function that carries
its state (``--format onnx``); to share, a model folder in the hub's layout (``--format hf``,
written by model_folder.write_folder: safetensors weights, config.json, tokenizer.json, a card).

`export_model(checkpoint, out)` writes a self-contained ONNX folder:

    model.onnx      tokens (batch, T) int64 and the state in -> logits (batch, T, vocab) and the new state out
    tokenizer.json  the checkpoint's own tokenizer (Hugging Face `tokenizers`)
    config.json     vocabulary size, cell kind, layer sizes, the state's names and shapes, the special tokens

The state is one float32 tensor (batch, hidden_size) per layer and state kind, named
``h_0, h_1, ...`` (and ``c_0, c_1, ...`` for an LSTM's cell state), all zeros to start; the
graph returns the new state as ``h_0_next, ...``. Batch and T are dynamic: a prompt is
primed in one call, then generation steps with T = 1, feeding each ``*_next`` back in.

The graph is the plain per-step cells of rnnlm.cells (the equations as written, the path
``model.impl=reference`` unrolls), not the fast paths: ONNX cannot hold fused.py's
hand-written backward or MKL's packed GEMM, nor scan.py's in-place loop. The time loop is a
``torch.ops.higher_order.scan`` over the cell, which the dynamo exporter turns into an ONNX
``Scan``, so T stays dynamic. Each export runs the result in onnxruntime against PyTorch.

``quantize="int8"`` (``rnnlm export --quantize int8``) writes the same graph with int8
weights: onnxruntime's dynamic quantization of every matrix product, those inside the
``Scan`` bodies included, with the activations quantized on the fly in each call.
"""

from __future__ import annotations

import importlib.util
import json
import contextlib
import logging
import os
import shutil
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnlm import model_folder
from rnnlm import tokenizer as tokenization
from rnnlm.errors import RnnlmError
from rnnlm.files import cannot_write
from rnnlm.inference import load_model

FORMATS = ("onnx", "hf")
QUANTIZATIONS = ("int8",)
EXPORT_FORMAT = "rnnlm-onnx"
EXPORT_VERSION = 1
INSTALL = 'pip install -e ".[export]"'
# Packages the export needs: the graph is written with onnx and onnxscript and checked in onnxruntime.
NEEDS = ("onnx", "onnxscript", "onnxruntime")
# The largest |logit| difference an export may show against PyTorch before it is refused: float32
# graphs differ by rounding alone; int8 weights move logits by tenths, and more than this means a
# broken graph, not quantization noise (docs/export.md has the measured differences).
TOLERANCE = {None: 1e-3, "int8": 1.0}


def state_names(model) -> list[str]:
    """The state's input names, in the graph's order: layer by layer, h (then c for an LSTM)."""
    kinds = model.layers[0].cell.state_names
    return [f"{kind}_{layer}" for layer in range(len(model.layers)) for kind in kinds]


def _scan_cell(cell: nn.Module, x: Tensor, state: tuple) -> tuple[Tensor, tuple]:
    """Run the per-step `cell` over x (T, B, I) from `state` with a scan: (y (T, B, H), last state)."""
    from torch._higher_order_ops.scan import scan

    def step(carry: tuple, x_t: Tensor):
        carry = tuple(cell(x_t, carry))
        return carry, carry[0].clone()  # a scan's outputs may not alias its carry

    last, y = scan(step, tuple(state), x)
    return y, tuple(last)


class StepGraph(nn.Module):
    """The model as the exported graph sees it: ``forward(tokens (B, T), *state) -> (logits (B, T, V), *new_state)``,
    the state flat in `state_names` order. Runs the reference cells in eval mode."""

    def __init__(self, model):
        super().__init__()
        self.model = model.eval()
        self.num_states = model.layers[0].cell.num_states

    def forward(self, tokens: Tensor, *state: Tensor):
        m, k = self.model, self.num_states
        x = F.embedding(tokens.t(), m.embedding.weight)  # (T, B, E)
        new_state = []
        for i, layer in enumerate(m.layers):
            x, layer_state = _scan_cell(layer.cell, x, state[i * k: (i + 1) * k])
            new_state.extend(layer_state)
        return (m.decoder(x.transpose(0, 1)), *new_state)  # (B, T, V)


def require_onnx() -> None:
    """Refuse in one line, saying what to install, when a package the export needs is missing."""
    missing = [name for name in NEEDS if importlib.util.find_spec(name) is None]
    if missing:
        raise RnnlmError(f"export needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                         f"not installed; install the export extra: {INSTALL}")


def export_config(lm, quantize: Optional[str] = None) -> dict:
    """What config.json holds: everything another program needs to tokenize, step and detokenize."""
    m, cfg = lm.model, lm.config.model
    unk = tokenization.unk_id(lm.tokenizer)
    hidden = [layer.hidden_size for layer in m.layers]
    return {
        "format": EXPORT_FORMAT, "format_version": EXPORT_VERSION,
        "model": "model.onnx", "tokenizer": "tokenizer.json",
        "tokenizer_kind": tokenization.tokenizer_kind(lm.tokenizer),
        "vocab_size": m.vocab_size, "cell": cfg.cell, "num_layers": len(m.layers),
        "embedding_size": cfg.embedding_size, "hidden_size": cfg.hidden_size, "tie_weights": cfg.tie_weights,
        "inputs": {"tokens": {"shape": ["batch", "T"], "dtype": "int64"}},
        "outputs": {"logits": {"shape": ["batch", "T", m.vocab_size], "dtype": "float32"}},
        "state": [{"name": name, "next": f"{name}_next", "layer": int(name.split("_")[1]),
                   "shape": ["batch", hidden[int(name.split("_")[1])]], "dtype": "float32", "initial": "zeros"}
                  for name in state_names(m)],
        "special_tokens": {} if unk is None else {tokenization.UNK: unk},
        "encode": {"add_special_tokens": False}, "decode": {"skip_special_tokens": False},
        "checkpoint_step": lm.checkpoint_step, "quantization": quantize,
    }


@contextlib.contextmanager
def _quiet_logger(name: Optional[str] = None):
    """Only errors from the logger `name` (the root logger by default) while the block runs."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _write_onnx(graph: StepGraph, names: list[str], path: Path) -> None:
    """torch.onnx's dynamo exporter on example inputs of batch 2 and T 3, batch and T dynamic, quietly."""
    B, T = 2, 3
    tokens = torch.zeros(B, T, dtype=torch.long)
    state = [torch.zeros(B, graph.model.layers[int(n.split("_")[1])].hidden_size) for n in names]
    batch, steps = torch.export.Dim("batch"), torch.export.Dim("T")
    dynamic = ({0: batch, 1: steps}, tuple({0: batch} for _ in names))  # as forward's arguments: tokens, *state
    # Quiet: torch.onnx logs e.g. "torchvision is not installed", nothing to do with us.
    with _quiet_logger("torch.onnx"), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, (tokens, *state), str(path), dynamo=True, verbose=False,
                          input_names=["tokens", *names], output_names=["logits", *[f"{n}_next" for n in names]],
                          dynamic_shapes=dynamic, external_data=False)


def quantize_int8(path: Path) -> None:
    """Rewrite the float32 graph at `path` with int8 weights (onnxruntime's dynamic quantization).

    Pre-processing first folds constants, so the tied output layer's transposed embedding
    becomes a weight of its own that can be quantized, and turns the cells' Gemm into MatMul;
    ``EnableSubgraph`` reaches the MatMuls inside the Scan bodies, where the recurrent weights are.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    folded = path.with_name(path.stem + ".folded.onnx")
    try:  # quiet: the quantizer warns on the root logger about every input it leaves as it is (the int64 tokens)
        with _quiet_logger():
            quant_pre_process(str(path), str(folded), skip_symbolic_shape=True)
            quantize_dynamic(str(folded), str(path), weight_type=QuantType.QInt8,
                             extra_options={"EnableSubgraph": True})
    finally:
        folded.unlink(missing_ok=True)


def check_onnx(path: Path, lm, seed: int = 0) -> float:
    """Largest |logit| difference between onnxruntime and PyTorch on random tokens, batch 2:
    7 steps primed in one call, then 3 single steps carrying the state, against one PyTorch pass."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = state_names(lm.model)
    tokens = torch.randint(0, lm.model.vocab_size, (2, 10), generator=torch.Generator().manual_seed(seed))
    state = [t.numpy() for layer in lm.model.init_state(2, torch.device("cpu")) for t in layer]
    logits = []
    for chunk in tokens.split([7, 1, 1, 1], dim=1):
        out = session.run(None, {"tokens": chunk.numpy(), **dict(zip(names, state))})
        logits.append(out[0])
        state = out[1:]
    with torch.no_grad():
        expected = lm.model(tokens)[0].numpy()
    return float(np.abs(np.concatenate(logits, axis=1) - expected).max())


# The files an export of each format wrote before config.json listed them under "files".
FIRST_EXPORT_FILES = {EXPORT_FORMAT: ("model.onnx", "tokenizer.json", "config.json"),
                      model_folder.FOLDER_FORMAT: ("model.safetensors", "config.json", "tokenizer.json", "README.md")}


def _prepare_out(out: Path, overwrite: bool) -> list[str] | None:
    """Check that the export may be written to `out`; returns None for a new folder, else the
    names of the earlier export's files there, which the new export replaces (none for an empty
    folder). A folder that is not empty is refused unless `overwrite`, and then unless it holds
    an earlier export."""
    if out.is_symlink() and not out.exists():
        raise RnnlmError(f"output {str(out)!r} is a broken symbolic link; remove it or pass another --out")
    if not out.exists():
        return None
    if not out.is_dir():
        raise RnnlmError(f"output {str(out)!r} is a file; pass a folder that does not exist yet with --out")
    if not any(out.iterdir()):
        return []
    if not overwrite:
        raise RnnlmError(f"output folder {str(out)!r} already exists; pass --overwrite to replace it "
                         "or another --out")
    earlier = _export_files(out)
    if earlier is None:
        raise RnnlmError(f"output folder {str(out)!r} is not an rnnlm export and not empty; --overwrite "
                         "only replaces an earlier export: pass another --out")
    return earlier


def _export_files(folder: Path) -> list[str] | None:
    """The names of the files the export in `folder` wrote (its config.json's "files"), or None
    when `folder` holds no rnnlm export. Only plain names count: never a path out of the folder."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict) or config.get("format") not in FIRST_EXPORT_FILES:
        return None
    files = config.get("files", FIRST_EXPORT_FILES[config["format"]])
    if not isinstance(files, list | tuple):
        return None
    return [name for name in files if isinstance(name, str) and name == Path(name).name and name not in ("", ".", "..")]


def _staging_folder(out: Path, earlier: list[str] | None) -> Path:
    """Where the export is written before it is moved into place: inside an existing `out`
    (any spelling of it: ".", "..", a symbolic link), else beside it, on the same disk either way."""
    if earlier is not None:
        return out / f".rnnlm-export-{os.getpid()}"
    resolved = out.resolve()
    return resolved.parent / f".{resolved.name}.export-{os.getpid()}"


def _move_into_place(staged: Path, out: Path, earlier: list[str] | None) -> None:
    """Make the staged export `out`: rename the staged folder to a new `out`; or, into an existing
    folder, move each new file over its old one and remove the earlier export's files the new one
    did not write. Nothing else in the folder is touched."""
    if earlier is None:
        staged.rename(out.resolve())
        return
    written = sorted(p.name for p in staged.iterdir())
    theirs = [name for name in written if name not in earlier and os.path.lexists(out / name)]
    if theirs:
        raise RnnlmError(f"output folder {str(out)!r} holds {theirs[0]}, which no earlier export wrote; move it "
                         "away or pass another --out (nothing was changed)")
    for name in written:
        os.replace(staged / name, out / name)
    for name in set(earlier) - set(written):
        old = out / name
        if old.is_file() or old.is_symlink():
            old.unlink()
    staged.rmdir()


def export_model(checkpoint, out, *, fmt: str = "onnx", overwrite: bool = False,
                 license: Optional[str] = None, quantize: Optional[str] = None) -> dict:
    """Write the export folder `out` from `checkpoint` (a .pt or a model folder) in format `fmt`
    (ONNX with int8 weights when `quantize` is "int8"); returns its config.json, with the ONNX
    check's ``max_abs_diff`` (onnxruntime against PyTorch) or the model card's ``measured``
    scores added. A new folder appears whole or not at all; in an earlier export's folder the
    files are written first, then moved over the old ones (see _move_into_place). A full or
    read-only disk is one line (a `CannotWrite`) and leaves no temporary folder."""
    if fmt not in FORMATS:
        raise RnnlmError(f"unknown export format {fmt!r}; the formats are: {', '.join(FORMATS)}")
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise RnnlmError(f"unknown quantization {quantize!r}; use --quantize int8, or leave it out for float32")
    if quantize is not None and fmt != "onnx":
        raise RnnlmError("--quantize is for --format onnx; a model folder (--format hf) keeps float32 weights")
    out = Path(out)
    earlier = _prepare_out(out, overwrite)
    if fmt == "onnx":
        require_onnx()
    lm = load_model(checkpoint, "cpu")
    tmp = _staging_folder(out, earlier)
    existed = earlier is not None
    try:
        tmp.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        if fmt == "onnx":
            done = _write_onnx_folder(tmp, lm, quantize)
        else:
            done = model_folder.write_folder(tmp, lm, license=license)
        _list_files(tmp)
        _move_into_place(tmp, out, earlier)
    except BaseException as e:  # a full or read-only disk is one line (files.cannot_write); the rest as it came
        failure = cannot_write(out, e, "pass another --out", existed)
        if failure is None:
            raise
        raise failure from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return done


def _list_files(folder: Path) -> None:
    """Name every file of the export in its config.json ("files"), so a later --overwrite
    replaces exactly these and nothing else that lies beside them."""
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config["files"] = sorted({*(p.name for p in folder.iterdir()), "config.json"})
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def _write_onnx_folder(folder: Path, lm, quantize: Optional[str] = None) -> dict:
    """model.onnx (int8 weights when `quantize` is "int8", checked in onnxruntime), tokenizer.json
    and config.json into `folder`; returns the config with ``max_abs_diff`` added."""
    _write_onnx(StepGraph(lm.model), state_names(lm.model), folder / "model.onnx")
    if quantize:
        quantize_int8(folder / "model.onnx")
    diff, tolerance = check_onnx(folder / "model.onnx", lm), TOLERANCE[quantize]
    if not diff <= tolerance:
        raise RnnlmError(f"the exported graph's logits differ from PyTorch's by {diff:.2g} (over {tolerance:g}); "
                         "please report this with the checkpoint's config")
    config = export_config(lm, quantize)
    (folder / "tokenizer.json").write_text(tokenization.to_json(lm.tokenizer), encoding="utf-8")
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return {**config, "max_abs_diff": diff}
