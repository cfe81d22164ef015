"""A trained model as a folder in the layout of Hugging Face's hub, and the one reader of a
model from either a checkpoint or such a folder.

`write_folder(folder, lm)` writes (``rnnlm export --format hf``):

    model.safetensors  the weights only (safetensors: no pickle, opens without rnnlm or torch)
    config.json        what rebuilds the model: its config section, the vocabulary size, the tokenizer's
                       section, the tied weights, the rnnlm version; and the rest of the run's config
    tokenizer.json     the model's tokenizer (Hugging Face `tokenizers`)
    README.md          a model card with YAML front matter (library_name, tags, language, license)

safetensors refuses two names for one tensor, so a tied output layer is stored once, as
``embedding.weight``; config.json's ``tied`` names it and the reader ties it again.

`read_model(path)` returns what a model is made of, a `Parent` (its config, tokenizer JSON,
weights, vocabulary size and how far it was trained), from a ``.pt`` checkpoint
(``torch.load(weights_only=True)``) or from a model folder (JSON and safetensors), so a
folder is loaded without unpickling anything. `inference.load_model` builds on it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

import torch
import yaml

from rnnlm import __version__
from rnnlm import tokenizer as tokenization
from rnnlm.checkpoint import load_checkpoint
from rnnlm.config import config_to_dict
from rnnlm.errors import RnnlmError
from rnnlm.evaluate import checkpoint_corpus, score_ids
from rnnlm.model import count_parameters

FOLDER_FORMAT = "rnnlm-model-folder"
FOLDER_VERSION = 1
WEIGHTS, CONFIG, TOKENIZER, CARD = "model.safetensors", "config.json", "tokenizer.json", "README.md"
# The config sections config.json keeps beside the model's own: how it was trained and sampled.
RUN_SECTIONS = ("data", "optim", "train", "sample")
# How far the source checkpoint was trained, kept in config.json's "trained".
TRAINED_KEYS = ("step", "epoch", "tokens_seen", "elapsed_seconds")
SAMPLE_TOKENS = 60  # length of the model card's sample completion
EVAL_SEQ_LEN = 128  # the card's scores are those of `rnnlm evaluate --split valid|test`
# An ONNX export's config.json format, export.EXPORT_FORMAT (export imports this module, not the reverse).
ONNX_FORMAT = "rnnlm-onnx"
FOLDER_HINT = "pass a best.pt or last.pt written by training, or a folder written by rnnlm export --format hf"


@dataclasses.dataclass
class Parent:
    """What a trained model is made of: the run's config (plain dicts), the tokenizer JSON,
    the weights (a state_dict on the CPU, tied weights tied), the vocabulary size, and
    `trained` (step, epoch, tokens_seen, elapsed_seconds, as far as known)."""

    config: dict
    tokenizer_json: str
    weights: dict
    vocab_size: int
    trained: dict


def read_model(path) -> Parent:
    """The `Parent` of a checkpoint file or a model folder; every way it can be wrong is one line."""
    path = Path(path)
    if not path.is_dir():
        ckpt = load_checkpoint(path, map_location="cpu")
        return Parent(ckpt["config"], ckpt["tokenizer"], ckpt["model"], int(ckpt["vocab_size"]),
                      {k: ckpt[k] for k in TRAINED_KEYS if k in ckpt})
    config = _folder_config(path)
    try:
        tokenizer_json = (path / TOKENIZER).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RnnlmError(f"model folder {str(path)!r} has no readable {TOKENIZER} ({_why(e)}); {FOLDER_HINT}") from None
    weights = _read_weights(path / WEIGHTS)
    for name, source in config["tied"].items():
        if source in weights:
            weights[name] = weights[source]
    run = {**config["run"], "model": config["model"], "tokenizer": config["tokenizer"]}
    return Parent(run, tokenizer_json, weights, config["vocab_size"], config["trained"])


def _why(e: BaseException) -> str:
    """An exception's cause in a few words: the OS's reason, else its message's first line."""
    if getattr(e, "strerror", None):
        return e.strerror
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _folder_config(path: Path) -> dict:
    """config.json of a model folder, checked to be one; an ONNX export or run folder is named as such."""
    file = path / CONFIG
    if not file.is_file():
        best = path / "best.pt"
        hint = f"pass {best}" if best.is_file() else FOLDER_HINT
        raise RnnlmError(f"{str(path)!r} is a folder without {CONFIG}, not a model folder; {hint}")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise RnnlmError(f"{file} is not readable JSON ({_why(e)}); {FOLDER_HINT}") from None
    kind = config.get("format") if isinstance(config, dict) else None
    if kind == ONNX_FORMAT:
        raise RnnlmError(f"{str(path)!r} is an ONNX export, which runs in onnxruntime, not in rnnlm; pass the "
                         "checkpoint it came from, or a folder written by rnnlm export --format hf")
    if kind != FOLDER_FORMAT:
        raise RnnlmError(f"{file} is not an rnnlm model folder's config (format {kind!r}); {FOLDER_HINT}")
    if config.get("format_version") != FOLDER_VERSION:
        raise RnnlmError(f"model folder {str(path)!r} has format version {config.get('format_version')}, this "
                         f"rnnlm (version {__version__}) reads version {FOLDER_VERSION}; update rnnlm")
    missing = [k for k in ("model", "tokenizer", "run", "vocab_size", "tied", "trained") if k not in config]
    if missing:
        raise RnnlmError(f"{file} lacks {', '.join(missing)}; export the model again with rnnlm export --format hf")
    return config


def _read_weights(file: Path) -> dict:
    """The tensors of a safetensors file on the CPU (safetensors parses a header and raw bytes, no pickle)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not file.is_file():
        raise RnnlmError(f"model folder {str(file.parent)!r} has no {WEIGHTS}; {FOLDER_HINT}")
    try:
        return load_file(file, device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise RnnlmError(f"{file} is not a readable safetensors file ({_why(e)}); "
                         "export the model again, or use the checkpoint it came from") from None


# ---------------------------------------------------------------------------------------
# Writing a folder


def stored_weights(model) -> tuple[dict, dict]:
    """(tensors to store, tied): the state_dict, contiguous on the CPU, with every tensor that is
    another's storage left out; ``tied`` maps each left-out name to the name stored."""
    tensors, tied, seen = {}, {}, {}
    for name, tensor in model.state_dict().items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key in seen:
            tied[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = tensor.detach().to("cpu").contiguous()
    return tensors, tied


def folder_config(lm, tied: dict) -> dict:
    """config.json: the format, the rnnlm version, what rebuilds the model and the run's other sections."""
    cfg = config_to_dict(lm.config)
    return {
        "format": FOLDER_FORMAT, "format_version": FOLDER_VERSION, "library_name": "rnnlm",
        "rnnlm_version": __version__, "model_type": f"rnnlm-{lm.config.model.cell}",
        "weights": WEIGHTS, "tokenizer_file": TOKENIZER,
        "vocab_size": lm.model.vocab_size, "model": cfg["model"], "tokenizer": cfg["tokenizer"], "tied": tied,
        "trained": dict(lm.trained), "run": {section: cfg[section] for section in RUN_SECTIONS},
    }


def write_folder(folder, lm, *, license: Optional[str] = None) -> dict:
    """Write the model folder's four files into the existing, empty `folder`; returns config.json's
    contents with the card's measurements (``measured``) added."""
    from safetensors.torch import save_file

    folder = Path(folder)
    tensors, tied = stored_weights(lm.model)
    save_file(tensors, str(folder / WEIGHTS), metadata={"format": "pt"})
    config = folder_config(lm, tied)
    (folder / CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (folder / TOKENIZER).write_text(tokenization.to_json(lm.tokenizer), encoding="utf-8")
    measured = measure(lm)
    (folder / CARD).write_text(model_card(lm, measured, sample_completion(lm), license=license), encoding="utf-8")
    return {**config, "measured": measured}


def measure(lm) -> dict:
    """The training text's size and the valid and test scores (as `rnnlm evaluate` gives them), or
    ``{"missing": why}`` when the text is not where the config says (it is never downloaded here)."""
    data = dataclasses.replace(lm.config.data, url=None)
    offline = dataclasses.replace(lm, config=dataclasses.replace(lm.config, data=data))
    try:
        corpus = checkpoint_corpus(offline)
    except RnnlmError as e:
        return {"missing": str(e)}
    scores = {split: score_ids(lm, corpus.ids[split], corpus.chars[split], batch_size=lm.config.train.batch_size,
                               seq_len=EVAL_SEQ_LEN)
              for split in ("valid", "test") if corpus.chars[split]}
    return {"train_chars": corpus.chars["train"], **scores}


def sample_completion(lm) -> dict:
    """The card's sample: the config's prompt continued with its sample settings and seed 0."""
    sc = lm.config.sample
    text = lm.generate(sc.prompt, max_new_tokens=SAMPLE_TOKENS, seed=0)
    separator = " " if lm.config.tokenizer.kind == "word" else ""
    return {"prompt": sc.prompt, "text": sc.prompt + separator + text, "temperature": sc.temperature,
            "top_k": sc.top_k, "top_p": sc.top_p}


# ---------------------------------------------------------------------------------------
# The model card


def front_matter(lm, license: Optional[str]) -> str:
    """The card's YAML metadata, as the hub reads it."""
    meta = {"library_name": "rnnlm", "language": ["en"], "pipeline_tag": "text-generation",
            "tags": ["rnnlm", "pytorch", "safetensors", "recurrent-neural-network", lm.config.model.cell,
                     "text-generation"]}
    if license:
        meta["license"] = license
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"


def describe(lm) -> str:
    """One sentence: the network, its size and its tokenizer."""
    mc, model = lm.config.model, lm.model
    tied = "the input embedding tied to the output layer" if mc.tie_weights else "untied embeddings"
    return (f"A next-word language model trained with rnnlm on its hand-written recurrent cells: "
            f"{mc.cell.upper()}, {mc.num_layers} layer{'s' if mc.num_layers > 1 else ''} of {mc.hidden_size} units, "
            f"embedding width {mc.embedding_size}, {tied}, {count_parameters(model):,} parameters; "
            f"a {lm.config.tokenizer.kind} tokenizer of {model.vocab_size:,} tokens.")


def training_lines(lm, measured: dict) -> list[str]:
    """The card's training and results bullets."""
    name, t = Path(lm.config.data.path).name, lm.trained
    size = f"{measured['train_chars']:,} characters of training text" if "train_chars" in measured else "size unknown"
    minutes = f" in {t['elapsed_seconds'] / 60:.1f} minutes" if "elapsed_seconds" in t else ""
    tokens = f" ({t['tokens_seen']:,} tokens)" if "tokens_seen" in t else ""
    lines = [f"- Training text: `{name}`, {size}.",
             f"- Trained for {t.get('step', 'an unknown number of')} steps{tokens}{minutes}."]
    if "missing" in measured:
        lines.append(f"- Validation and test bits per character: not measured at export ({measured['missing']}).")
    for split in ("valid", "test"):
        if split in measured:
            m = measured[split]
            lines.append(f"- {'Validation' if split == 'valid' else 'Test'}: **{m['bpc']:.4f} bits per character** "
                         f"(loss {m['loss']:.4f} nats per token, perplexity {m['perplexity']:.2f}, "
                         f"{m['tokens']:,} tokens).")
    return lines


def model_card(lm, measured: dict, sample: dict, *, license: Optional[str] = None) -> str:
    """README.md of the folder: metadata, what the model is, how it was trained and scores, a sample,
    the training config, how to load it and its limitations."""
    name, prompt = Path(lm.config.data.path).name, json.dumps(sample["prompt"], ensure_ascii=False)
    settings = f"temperature {sample['temperature']:g}, top-k {sample['top_k']}, top-p {sample['top_p']:g}, seed 0"
    config_yaml = yaml.safe_dump(config_to_dict(lm.config), sort_keys=False, allow_unicode=True)
    parts = [
        front_matter(lm, license),
        f"# rnnlm {lm.config.model.cell.upper()} {lm.config.model.num_layers}x{lm.config.model.hidden_size} "
        f"on {name}\n",
        describe(lm) + "\n",
        "## Training and results\n",
        "\n".join(training_lines(lm, measured)) + "\n",
        "Bits per character are scored as `rnnlm evaluate --split valid|test` scores them.\n",
        f"## Sample\n\nThe prompt continued for {SAMPLE_TOKENS} tokens ({settings}):\n",
        "```\n" + sample["text"].replace("```", "` ` `") + "\n```\n",
        "## How to use it\n",
        "With rnnlm installed (`pip install -e .` in its checkout), from this folder or from the hub:\n",
        f"```\nrnnlm generate --checkpoint THIS_FOLDER --prompt {prompt}\n```\n",
        "```python\nfrom huggingface_hub import snapshot_download\nfrom rnnlm import load_model\n\n"
        "lm = load_model(snapshot_download(\"USER/MODEL\"))   # or load_model(\"THIS_FOLDER\")\n"
        f"lm.generate({prompt}, max_new_tokens=50)\n"
        f"lm.next_words({prompt}, k=5)\n```\n",
        f"`{WEIGHTS}` holds the weights only and opens with `safetensors` alone; `{CONFIG}` says how to "
        f"rebuild the network; `{TOKENIZER}` loads with `tokenizers.Tokenizer.from_file`.\n",
        "## Training config\n",
        "```yaml\n" + config_yaml + "```\n",
        "## Limitations\n",
        f"A small recurrent model trained on one text ({name}): it continues prose in that text's style, "
        "knows nothing beyond it, and its completions are often ungrammatical or invented; not for "
        "factual, advisory or safety-relevant use.\n",
    ]
    return "\n".join(parts)
