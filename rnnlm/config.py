"""Typed configuration: YAML file -> nested dataclasses, plus dotted command-line overrides.

    cfg = load_config("war_and_peace", ["optim.lr=3e-3", "model.cell=gru"])   # a built-in config by name
    cfg = load_config("my_config.yaml")                                          # or any YAML file

The built-in defaults (``Config()``, ``load_config(None)``) are the default config,
configs/war_and_peace.yaml, key for key (a test holds them together). The configs ship
inside the package (rnnlm/configs is the repository's configs/), so a name finds them
from any folder.

Every section is a dataclass with one docstring line per field and checks in
``__post_init__``. An unknown key, a value of the wrong type or out of range is a
``RnnlmError`` that names the key (and, for a typo, the closest valid one). NaN and
infinity (YAML ``.nan``, ``.inf``; ``nan`` in an override) are refused in every number of
every section by one check (`finite_numbers`), before the ranges, which NaN would slip past:
every comparison with NaN is False.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import numbers
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from rnnlm.cells import CELLS
from rnnlm.errors import RnnlmError

WAR_AND_PEACE_PATH = "data/war_and_peace.txt"
WAR_AND_PEACE_URL = "https://www.gutenberg.org/cache/epub/2600/pg2600.txt"
# The configs that ship with the package, found by name: rnnlm/configs links to the repository's configs/.
CONFIGS_DIR = Path(__file__).parent / "configs"
DEFAULT_CONFIG = "war_and_peace"
TOKENIZER_KINDS = ("bpe", "word", "char")
# A value that keys such as tokenizer.vocab_size take to be sized to the training text (sizing.py).
AUTO = "auto"


def number_error(value, integer: bool = False) -> Optional[str]:
    """"must be ..." when `value` is not a finite number (a whole one with `integer`), else None."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral if integer else numbers.Real):
        return "must be a whole number" if integer else "must be a number"
    if not math.isfinite(value):
        return "must be a finite number"
    return None


def check_number(name: str, value, integer: bool = False) -> None:
    """Refuse, in one line naming `name`, a value that is not a finite number (e.g. NaN from Python)."""
    problem = number_error(value, integer)
    if problem:
        raise RnnlmError(f"{name} {problem}, got {value!r}")


# What each sampling setting must be: one rule for the config's sample section, the
# command line, the Python API and the interactive mode. Each is first a finite number
# (whole, for the counts), then in its range.
SAMPLING_RULES = {
    "max_new_tokens": (int, lambda v: v >= 0, ">= 0"),
    "temperature": (float, lambda v: v >= 0, ">= 0 (0 = greedy)"),
    "top_k": (int, lambda v: v >= 0, ">= 0"),
    "top_p": (float, lambda v: 0 < v <= 1, "in (0, 1]"),
    "num_samples": (int, lambda v: v >= 1, "at least 1"),
}


def sampling_error(key: str, value) -> Optional[str]:
    """"must be ..." when `value` is not allowed for the sampling setting `key`, else None."""
    kind, ok, allowed = SAMPLING_RULES[key]
    problem = number_error(value, integer=kind is int)
    return problem or (None if ok(value) else f"must be {allowed}")


def check_sampling(settings: dict, name=lambda key: key.replace("_", "-")) -> None:
    """Refuse, in one line, the first sampling setting out of its range; `name` shows a key."""
    for key, value in settings.items():
        problem = sampling_error(key, value) if key in SAMPLING_RULES else None
        if problem:
            raise RnnlmError(f"{name(key)} {problem}, got {value}")


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise RnnlmError(f"config: {key} {message}")


def finite_numbers(cls):
    """Class decorator of a config section: before its own checks, every float of the section
    (also inside a tuple, such as data.split) must be finite. Ranges written as comparisons
    let NaN through (every comparison with NaN is False), and no setting means anything at
    infinity (a run limit says so with null)."""
    section = cls.__name__.removesuffix("Config").lower()
    own_checks = cls.__post_init__

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (tuple, list)):
                _check(not any(isinstance(v, float) and not math.isfinite(v) for v in value), f"{section}.{f.name}",
                       f"must hold finite numbers (not NaN or infinity), got {list(value)}")
            else:
                _check(not (isinstance(value, float) and not math.isfinite(value)), f"{section}.{f.name}",
                       f"must be a finite number (not NaN or infinity), got {value}")
        own_checks(self)

    cls.__post_init__ = __post_init__
    return cls


@finite_numbers
@dataclass
class DataConfig:
    """Where the text comes from and how it is read."""

    path: str = WAR_AND_PEACE_PATH
    """Text to train on: a file, a folder (its files matching data.glob, in name order) or a glob pattern such as poems/*.txt; relative to the working directory."""
    glob: str = "**/*.txt"
    """When data.path is a folder: the pattern of the files to read in it (** reaches into subfolders)."""
    separator: str = "\n"
    """Put between the documents of a folder or glob, after each one's final newline (one newline: a blank line)."""
    split: tuple = (0.8, 0.1, 0.1)
    """Fractions of the text for train, validation and test, cut at line ends; e.g. [0.9, 0.1, 0] for no test split."""
    max_eval_chars: Optional[int] = 1_000_000
    """Most characters the validation and the test split each take of a text to split; a larger text gives the rest to training (null: the fractions alone)."""
    valid_path: Optional[str] = None
    """A pre-split dataset's validation text (file, folder or glob): data.path is then the training text as it is, not split."""
    test_path: Optional[str] = None
    """A pre-split dataset's test text, with data.valid_path (null: no test split)."""
    url: Optional[str] = WAR_AND_PEACE_URL
    """Downloaded to `path` when that file is missing; null never downloads."""
    encoding: str = "utf-8"
    """Text encoding of the file."""
    errors: str = "strict"
    """What to do with undecodable bytes: strict (stop with the byte offset) | replace | ignore."""
    cache_dir: Optional[str] = "data/cache"
    """Folder for cached tokenizers and token ids, so a second run does not re-tokenize (null: no cache)."""

    def __post_init__(self):
        self.split = tuple(self.split)
        ok = (len(self.split) == 3 and all(isinstance(f, (int, float)) and not isinstance(f, bool) and f >= 0
                                           for f in self.split) and abs(sum(self.split) - 1) < 1e-9)
        _check(ok, "data.split", f"must be three fractions >= 0 (train, valid, test) that sum to 1, "
                                 f"got {list(self.split)}")
        _check(self.split[0] > 0 and self.split[1] > 0, "data.split",
               f"must leave text for training and validation (only test may be 0), got {list(self.split)}")
        cap = self.max_eval_chars
        _check(cap is None or (isinstance(cap, int) and not isinstance(cap, bool) and cap > 0),
               "data.max_eval_chars", f"must be a whole number > 0 or null, got {cap!r}")
        _check(self.test_path is None or self.valid_path is not None, "data.test_path",
               "needs data.valid_path too (a pre-split dataset names its validation text)")
        _check(self.valid_path is None or self.path != WAR_AND_PEACE_PATH, "data.valid_path",
               "needs data.path set to the training text of the same dataset")
        _check(self.errors in ("strict", "replace", "ignore"), "data.errors",
               f"must be strict, replace or ignore, got {self.errors!r}")
        try:
            "".encode(self.encoding)
        except LookupError:
            raise RnnlmError(f"config: data.encoding {self.encoding!r} is not a known text encoding "
                             "(try utf-8 or latin-1)") from None


@finite_numbers
@dataclass
class TokenizerConfig:
    """How text becomes token ids (Hugging Face `tokenizers`, trained on the train split)."""

    kind: str = "bpe"
    """bpe (byte-level, lossless) | word (word-level with <unk>) | char."""
    vocab_size: Union[int, Literal["auto"]] = 4096
    """Vocabulary size for bpe and word (auto: sized to the training text, see docs/tuning.md); char uses every character of the train split."""

    def __post_init__(self):
        _check(self.kind in TOKENIZER_KINDS, "tokenizer.kind",
               f"must be one of {', '.join(TOKENIZER_KINDS)}, got {self.kind!r}")
        if self.vocab_size == AUTO:
            return
        _check(self.vocab_size >= 2, "tokenizer.vocab_size", f"must be at least 2, got {self.vocab_size}")
        if self.kind == "bpe":
            _check(self.vocab_size >= 257, "tokenizer.vocab_size",
                   f"must be at least 257 for bpe (256 bytes + merges), got {self.vocab_size}")


@finite_numbers
@dataclass
class ModelConfig:
    """Embedding -> stacked recurrent layers -> output layer."""

    cell: str = "gru"
    """Recurrent cell: rnn (Elman, tanh) | gru | lstm | mingru | minlstm (gates from the input alone: a linear recurrence, Feng et al. 2024)."""
    embedding_size: Optional[int] = None
    """Width of the token embedding (null: hidden_size; must equal it when tie_weights is on)."""
    hidden_size: int = 448
    """Width of each recurrent layer's hidden state."""
    num_layers: int = 2
    """Number of stacked recurrent layers."""
    dropout: Union[float, Literal["auto"]] = 0.15
    """Variational (locked) dropout on each layer's output: one mask per sequence (auto: sized to the training text)."""
    embed_dropout: float = 0.0
    """Drops whole tokens of the vocabulary from the embedding (AWD-LSTM)."""
    weight_drop: float = 0.0
    """DropConnect on the hidden-to-hidden weights, one mask per batch (AWD-LSTM)."""
    tie_weights: bool = True
    """Share the input embedding with the output layer (Press & Wolf 2017)."""
    impl: str = "fast"
    """Recurrent layer implementation: fast (default) | reference (plain per-step autograd)."""

    def __post_init__(self):
        _check(self.cell in CELLS, "model.cell", f"must be one of {', '.join(CELLS)}, got {self.cell!r}")
        _check(not (self.weight_drop > 0 and not CELLS[self.cell].recurrent_weights), "model.weight_drop",
               f"(DropConnect on W_hh) must be 0 for {self.cell}, which has no hidden-to-hidden weights")
        for name in ("hidden_size", "num_layers", "embedding_size"):
            value = getattr(self, name)
            _check(value is None or value > 0, f"model.{name}", f"must be positive, got {value}")
        if self.embedding_size is None:
            self.embedding_size = self.hidden_size
        for name in ("dropout", "embed_dropout", "weight_drop"):
            value = getattr(self, name)
            _check(value == AUTO or 0.0 <= value < 1.0, f"model.{name}", f"must be in [0, 1), got {value}")
        _check(self.impl in ("fast", "reference"), "model.impl",
               f"must be fast or reference, got {self.impl!r}")
        if self.tie_weights:
            _check(self.embedding_size == self.hidden_size, "model.tie_weights",
                   f"needs embedding_size == hidden_size ({self.embedding_size} != {self.hidden_size}); "
                   "set them equal or tie_weights: false")


@finite_numbers
@dataclass
class OptimConfig:
    """Optimizer, learning-rate schedule and gradient clipping."""

    name: str = "adamw"
    """adamw | sgd."""
    lr: float = 0.006
    """Peak learning rate."""
    weight_decay: float = 0.2
    """Decoupled weight decay (AdamW) or L2 (SGD); not applied to biases."""
    betas: tuple = (0.9, 0.99)
    """AdamW's moving-average coefficients."""
    momentum: float = 0.0
    """SGD momentum."""
    clip_grad_norm: float = 1.0
    """Clip the global gradient norm to this; 0 turns clipping off."""
    warmup_steps: int = 100
    """Linear warmup from 0 to lr over this many steps."""
    schedule: str = "cosine"
    """After warmup: cosine (decay to min_lr_ratio * lr at the end of the run) | constant."""
    min_lr_ratio: float = 0.02
    """Final learning rate as a fraction of lr for the cosine schedule."""
    ema_decay: float = 0.0
    """Moving average of the weights, avg <- d * avg + (1 - d) * w every step (0 = off); evaluation and the checkpoint's model use avg."""

    def __post_init__(self):
        _check(self.name in ("adamw", "sgd"), "optim.name", f"must be adamw or sgd, got {self.name!r}")
        _check(self.lr > 0, "optim.lr", f"must be positive, got {self.lr}")
        _check(self.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {self.weight_decay}")
        self.betas = tuple(self.betas)
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "optim.betas",
               f"must be two numbers in [0, 1), got {list(self.betas)}")
        _check(0 <= self.momentum < 1, "optim.momentum", f"must be in [0, 1), got {self.momentum}")
        _check(self.clip_grad_norm >= 0, "optim.clip_grad_norm", f"must be >= 0, got {self.clip_grad_norm}")
        _check(self.warmup_steps >= 0, "optim.warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        _check(self.schedule in ("cosine", "constant"), "optim.schedule",
               f"must be cosine or constant, got {self.schedule!r}")
        _check(0 <= self.min_lr_ratio <= 1, "optim.min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}")
        _check(0 <= self.ema_decay < 1, "optim.ema_decay", f"must be in [0, 1), got {self.ema_decay}")


@finite_numbers
@dataclass
class TrainConfig:
    """The training loop: batches, length of the run, evaluation, checkpoints, device."""

    out_dir: str = "runs/war_and_peace"
    """Run directory: config.yaml, tokenizer.json, last.pt, best.pt, metrics.jsonl."""
    batch_size: int = 32
    """Number of parallel streams through the corpus (B)."""
    seq_len: int = 32
    """Steps of backpropagation through time per batch (T)."""
    max_steps: Optional[int] = None
    """Stop after this many optimizer steps (null: no limit)."""
    max_epochs: Union[float, Literal["auto"], None] = None
    """Stop after this many passes over the train split (null: no limit; auto: sized to the training text)."""
    max_minutes: Optional[float] = 13.0
    """Stop after this many minutes of training (null: no limit)."""
    eval_every: int = 500
    """Evaluate on the validation split every this many steps (and at the end)."""
    eval_tokens: Optional[int] = 50000
    """Cap on validation tokens per periodic evaluation (null: the whole split)."""
    checkpoint_every: int = 250
    """Write last.pt every this many steps (and at the end)."""
    log_every: int = 20
    """Update the progress bar and metrics.jsonl every this many steps."""
    seed: int = 1337
    """Seed for every random number generator."""
    device: str = "auto"
    """auto (cuda, then mps, then cpu) | cpu | cuda | cuda:N | mps."""
    precision: str = "auto"
    """auto (bf16 where the device computes it natively: a CUDA GPU with bf16, a CPU with AMX or AVX-512 BF16; else fp32) | fp32 | bf16 | fp16 (CUDA, with a gradient scaler)."""
    compile: bool = False
    """Wrap the model in torch.compile (worth it on a GPU; compiling takes minutes on a CPU)."""
    grad_accum_steps: int = 1
    """Run each batch as this many groups of batch_size / k streams, one optimizer step (same update, less memory)."""
    backend: str = "auto"
    """torch.distributed backend under torchrun: auto (nccl on CUDA, gloo on CPU) | gloo | nccl."""
    num_threads: Optional[int] = None
    """CPU threads for torch (null: torch's default)."""
    resume: bool = False
    """Continue from out_dir/last.pt."""
    overwrite: bool = False
    """Allow starting a fresh run in an out_dir that already holds a run."""
    init_from: Optional[str] = None
    """Start from a trained model (a best.pt / last.pt, or a folder from rnnlm export --format hf): its weights, tokenizer and shape; new optimizer, schedule and step count (docs/tuning.md#starting-from-a-trained-model)."""
    init_from_sha256: Optional[str] = None
    """sha256 of the parent's weights: training writes it; when set, a parent with other weights is refused."""
    max_unknown_share: float = 0.2
    """With init_from and a word or char parent: the largest share of training tokens that may be <unk>."""
    progress: bool = True
    """Show a tqdm progress bar."""
    max_bad_steps: int = 5
    """Stop after this many optimizer steps in a row with a non-finite loss or gradient."""
    patience: Optional[int] = None
    """Stop early after this many validations in a row without a new best validation loss (null: never)."""
    tensorboard: bool = False
    """Also log metrics to out_dir/tensorboard (needs the tensorboard package; else a warning)."""

    def __post_init__(self):
        for name in ("batch_size", "seq_len", "eval_every", "checkpoint_every", "log_every", "max_bad_steps",
                     "grad_accum_steps"):
            value = getattr(self, name)
            _check(value > 0, f"train.{name}", f"must be positive, got {value}")
        for name in ("max_steps", "max_epochs", "max_minutes", "eval_tokens", "num_threads", "patience"):
            value = getattr(self, name)
            _check(value is None or value == AUTO or value > 0, f"train.{name}", f"must be positive or null, got {value}")
        _check(self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps"), "train.device",
               f"must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")
        _check(self.precision in ("auto", "fp32", "bf16", "fp16"), "train.precision",
               f"must be auto, fp32, bf16 or fp16, got {self.precision!r}")
        _check(self.batch_size % self.grad_accum_steps == 0, "train.grad_accum_steps",
               f"must divide train.batch_size ({self.batch_size}), got {self.grad_accum_steps}")
        _check(self.backend in ("auto", "gloo", "nccl"), "train.backend",
               f"must be auto, gloo or nccl, got {self.backend!r}")
        _check(0.0 <= self.max_unknown_share <= 1.0, "train.max_unknown_share",
               f"must be in [0, 1], got {self.max_unknown_share}")


@finite_numbers
@dataclass
class SampleConfig:
    """Defaults for generation from a checkpoint."""

    prompt: str = "Napoleon was the Emperor of"
    """Text the model continues."""
    max_new_tokens: int = 100
    """Number of tokens to generate."""
    temperature: float = 0.8
    """Softmax temperature; 0 picks the most likely token (greedy)."""
    top_k: int = 0
    """Sample only among the k most likely tokens (0: all)."""
    top_p: float = 1.0
    """Sample only among the most likely tokens whose probabilities sum to p (nucleus)."""

    def __post_init__(self):
        check_sampling(dataclasses.asdict(self), name=lambda key: f"config: sample.{key}")


@dataclass
class Config:
    """A whole run. Sections: data, tokenizer, model, optim, train, sample."""

    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)


# ---------------------------------------------------------------------------------------
# Building dataclasses from plain dicts, with errors that name the key.


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp, key: str) -> Any:
    """Check `value` against the annotation `tp`, converting int -> float where harmless."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:  # Optional[X], or X that may also be "auto"
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        if Literal[AUTO] not in args:
            return _coerce(value, args[0], key)
        if value == AUTO:
            return AUTO
        try:
            return _coerce(value, args[0], key)
        except RnnlmError:
            raise RnnlmError(f"config: {key} must be {_type_name(args[0])} or {AUTO}, got {value!r}") from None
    if tp is float:
        number = _number(value)
        if number is not None:
            return float(number)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is bool and isinstance(value, bool):
        return value
    if tp is str and isinstance(value, str):
        return value
    if tp is tuple and isinstance(value, (list, tuple)):  # the config's tuples hold numbers (split, betas)
        numbers_ = [_number(v) for v in value]
        if all(n is not None for n in numbers_):
            return tuple(numbers_)
        raise RnnlmError(f"config: {key} must be a list of numbers, got {list(value)}")
    shown = "null" if value is None else repr(value)
    raise RnnlmError(f"config: {key} must be {_type_name(tp)}, got {shown} ({type(value).__name__})")


def _number(value: Any) -> Optional[int | float]:
    """`value` as an int or float, or None if it is not a number. PyYAML reads 3e-3 (no dot)
    and nan as strings: they are taken as the numbers they are meant to be."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


# Names other tools use for our keys, so a typo of them still finds the right key.
ALIASES = {"learning_rate": "lr", "n_layers": "num_layers", "nlayers": "num_layers", "layers": "num_layers",
           "nhid": "hidden_size", "hidden_dim": "hidden_size", "emsize": "embedding_size",
           "embedding_dim": "embedding_size", "bptt": "seq_len", "block_size": "seq_len", "batch": "batch_size",
           "clip": "clip_grad_norm", "grad_clip": "clip_grad_norm", "epochs": "max_epochs", "steps": "max_steps",
           "vocab": "vocab_size", "rnn_type": "cell", "model_type": "cell", "type": "kind", "temp": "temperature"}


def _unknown_key(section: str, key: str, valid: list[str]) -> RnnlmError:
    where = f"{section}.{key}" if section else key
    aliases = {alias: name for alias, name in ALIASES.items() if name in valid}
    close = [aliases.get(k, k) for k in difflib.get_close_matches(key, valid + list(aliases), n=1)]
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return RnnlmError(f"config: unknown key {where!r}{hint}; valid keys: {', '.join(valid)}")


def _build(cls, values: Any, section: str):
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise RnnlmError(f"config: section {section!r} must be a mapping of keys to values, "
                         f"got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise _unknown_key(section, str(key), list(fields))
        full = f"{section}.{key}" if section else key
        if dataclasses.is_dataclass(hints[key]):
            kwargs[key] = _build(hints[key], value, full)
        else:
            kwargs[key] = _coerce(value, hints[key], full)
    return cls(**kwargs)


def config_from_dict(values: Any) -> Config:
    """Build a checked Config from plain nested dicts (as read from YAML or a checkpoint)."""
    return _build(Config, values, "")


def config_to_dict(cfg) -> dict:
    """The config as plain types (lists, not tuples), ready for YAML or a checkpoint."""
    def plain(x):
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        return x
    return plain(dataclasses.asdict(cfg))


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    """Apply `section.key=value` strings to a nested dict; each value is parsed as YAML."""
    valid_sections = [f.name for f in dataclasses.fields(Config)]
    for item in overrides:
        if "=" not in item:
            raise RnnlmError(f"override {item!r} must look like section.key=value, e.g. optim.lr=3e-3")
        dotted, raw = item.split("=", 1)
        parts = dotted.strip().split(".")
        if len(parts) != 2 or not all(parts):
            raise RnnlmError(f"override {item!r} must name section.key, e.g. model.cell=gru")
        section, key = parts
        if section not in valid_sections:
            raise _unknown_key("", section, valid_sections)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw  # not YAML: keep the text as a string; the type check decides.
        sec = values.setdefault(section, {})
        if sec is None:
            sec = values[section] = {}
        sec[key] = value
    return values


def override(key: str, value: str) -> str:
    """A `section.key=value` override that keeps `value` a string, whatever it looks like
    (a folder named null, 1e3 or yes stays that folder): JSON's quoting is YAML's."""
    return f"{key}={json.dumps(str(value), ensure_ascii=False)}"


def builtin_configs() -> dict[str, Path]:
    """{name: file} of the configs that ship with the package, in name order."""
    return {file.stem: file for file in sorted(CONFIGS_DIR.glob("*.yaml"))}


def find_config(name_or_path: str | Path) -> Path:
    """The config file that `name_or_path` names: an existing file as given, else a built-in
    config by its name (``tiny`` or ``tiny.yaml``, no folder). Anything else is one line
    that lists the names."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    configs = builtin_configs()
    name = path.name.removesuffix(".yaml")
    if path.name == str(name_or_path) and name in configs:
        return configs[name]
    if name in configs:
        raise RnnlmError(f"config file {str(name_or_path)!r} not found; the built-in config of that name is "
                         f"--config {name} (rnnlm configs lists them)")
    raise RnnlmError(f"config file {str(name_or_path)!r} not found, nor a built-in config of that name; "
                     f"pass a YAML file or one of {', '.join(configs)} (rnnlm configs lists them)")


def config_summary(file: Path) -> str:
    """A config file's first line, its one-line summary (what it is for, how long it takes)."""
    first = file.read_text(encoding="utf-8").split("\n", 1)[0]
    return first.removeprefix("#").strip()


def load_config(path: Optional[str | Path] = None, overrides: Optional[list[str]] = None) -> Config:
    """Read a YAML config, a file or a built-in config's name (or start from the defaults
    when `path` is None, the default config's values), and apply overrides."""
    return config_from_dict(config_values(path, overrides))


def config_values(path: Optional[str | Path] = None, overrides: Optional[list[str]] = None) -> dict:
    """The sections and keys a YAML config (a file or a built-in config's name) and the
    overrides set, as plain nested dicts, before the defaults fill in the rest."""
    values: Any = {}
    if path is not None:
        path = find_config(path)
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(e, "problem", None) or "invalid YAML"
            raise RnnlmError(f"config file {str(path)!r}: YAML syntax error{where}: {problem}") from None
        except UnicodeDecodeError:
            raise RnnlmError(f"config file {str(path)!r} is not UTF-8 text") from None
        if not isinstance(values, dict):
            raise RnnlmError(f"config file {str(path)!r} must hold a mapping of sections "
                             "(data, tokenizer, model, optim, train, sample)")
    return apply_overrides(values, list(overrides or []))


def dump_config(cfg: Config) -> str:
    """The fully resolved config as YAML text."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def field_docs() -> dict[str, tuple[str, str]]:
    """{'section.key': (default as YAML, docstring line)} for every field, read from this file.

    The docstring line under each field is the single source of its documentation: the
    configuration reference in docs/design.md is checked against it by a test.
    """
    import ast
    import inspect
    import sys

    tree = ast.parse(inspect.getsource(sys.modules[__name__]))
    docs: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            body = node.body
            for field_node, doc_node in zip(body, body[1:]):
                if (isinstance(field_node, ast.AnnAssign) and isinstance(doc_node, ast.Expr)
                        and isinstance(doc_node.value, ast.Constant) and isinstance(doc_node.value.value, str)):
                    docs[f"{node.name}.{field_node.target.id}"] = doc_node.value.value.strip()
    out = {}
    defaults = config_to_dict(Config())
    for section in dataclasses.fields(Config):
        cls = typing.get_type_hints(Config)[section.name]
        for f in dataclasses.fields(cls):
            value = defaults[section.name][f.name]
            if isinstance(value, str) and not value.isprintable():  # "\n": one escaped line, as YAML writes it
                shown = '"' + value.encode("unicode_escape").decode("ascii") + '"'
            else:
                shown = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
            out[f"{section.name}.{f.name}"] = (shown, docs.get(f"{cls.__name__}.{f.name}", ""))
    return out


def reference_table() -> str:
    """The configuration reference as a Markdown table (as in docs/design.md)."""
    rows = ["| key | default | meaning |", "| --- | --- | --- |"]
    for key, (default, doc) in field_docs().items():
        rows.append(f"| `{key}` | `{default}` | {doc.replace('|', chr(92) + '|')} |")
    return "\n".join(rows)
