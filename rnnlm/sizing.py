"""What `auto` means for the keys that take it, resolved in one place: `resolve_auto`.

`train.precision: auto` is the device's (device.choose_precision); the others are sized
to the training text.

A model and tokenizer that suit War and Peace's 2.56 million training characters
overfit a book a fifth its size within two minutes (docs/tuning.md#your-own-text).
Each rule is anchored at War and Peace, where it gives the main config's own value, and
scales with r = training characters / War and Peace's:

    tokenizer.vocab_size   up to War and Peace: 4096 * sqrt(r), to the nearest power of
                           two, at least 512; above it: 4096
    model.dropout          0.15 * r ** -0.5, two decimals, in [0.05, 0.5]; 0 for a text
                           read at most once (max_epochs 1)
    train.max_epochs       up to War and Peace: the larger of 50 * r and 4 / sqrt(r);
                           above it: 50 / r, at least 1

so a smaller text gets fewer, better-seen BPE merges, stronger dropout and a cosine
schedule that ends after about 10 passes (for 500 K characters; more for a text of
100 K, whose stronger dropout slows the learning), when a model of this size has learned
what it can from it: in minutes the schedule would still be high when it starts to learn
the text by heart. A larger text keeps War and Peace's vocabulary (in the minutes of a
CPU run a larger output layer costs more steps than its shorter token sequences win
back), gets less dropout, and as many tokens as War and Peace's 50 passes (fewer
passes the larger it is: one from 86 million characters on, too much to learn by
heart, hence no dropout); on a CPU its minutes end the schedule first, on a GPU its
passes. The rules up to War and Peace were chosen by
measurement on four texts (docs/tuning.md#your-own-text), each kept only because it won
there; above it the vocabulary was measured on a 21 MB text and the passes follow from the
token budget (docs/tuning.md#your-own-text, docs/scaling.md#corpora-larger-than-memory).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from rnnlm.config import AUTO, Config
from rnnlm.device import choose_precision

# War and Peace's train split (80% of the cleaned Gutenberg text), where every rule gives
# the main config's value.
ANCHOR_CHARS = 2_561_316
ANCHOR_VOCAB = 4096
ANCHOR_DROPOUT = 0.15
ANCHOR_EPOCHS = 50


def _ratio(train_chars: int) -> float:
    """r: the training text's size as a fraction of War and Peace's."""
    return max(train_chars, 1) / ANCHOR_CHARS


def vocab_size_for(train_chars: int) -> int:
    """BPE / word vocabulary for a training text of `train_chars` characters."""
    r = _ratio(train_chars)
    return int(max(2 ** round(math.log2(ANCHOR_VOCAB * math.sqrt(min(r, 1)))), 512))


def dropout_for(train_chars: int) -> float:
    """Locked dropout on each layer's output for a training text of `train_chars` characters."""
    if max_epochs_for(train_chars) <= 1:
        return 0.0
    return round(min(max(ANCHOR_DROPOUT * _ratio(train_chars) ** -0.5, 0.05), 0.5), 2)


def max_epochs_for(train_chars: int) -> int:
    """Passes over a training text of `train_chars` characters before the schedule ends."""
    r = _ratio(train_chars)
    if r > 1:  # War and Peace's 50 passes of tokens, spread over the larger text
        return max(1, round(ANCHOR_EPOCHS / r))
    return round(max(ANCHOR_EPOCHS * r, 4 / math.sqrt(r)))


# (section, key) of each setting that takes `auto`, and its rule.
RULES = {("tokenizer", "vocab_size"): vocab_size_for, ("model", "dropout"): dropout_for,
         ("train", "max_epochs"): max_epochs_for}


def fit_to_corpus(cfg: Config, train_chars: int) -> tuple[Config, list[str]]:
    """`cfg` with every `auto` value resolved for the training text, and `key value` notes
    of what was chosen (empty when nothing was `auto`)."""
    sections, chosen = {}, []
    for (section, key), rule in RULES.items():
        part = sections.get(section, getattr(cfg, section))
        if getattr(part, key) == AUTO:
            sections[section] = dataclasses.replace(part, **{key: rule(train_chars)})
            chosen.append(f"{section}.{key} {getattr(sections[section], key)}")
    return dataclasses.replace(cfg, **sections), chosen


def needs_text(cfg: Config) -> bool:
    """True when a setting of `cfg` is `auto` that is sized to the training text."""
    return any(getattr(getattr(cfg, section), key) == AUTO for section, key in RULES)


@dataclass(frozen=True)
class Resolved:
    """A config with no `auto` left, and what was chosen."""

    cfg: Config
    sized: list[str]
    """`section.key value` of each setting sized to the text (empty when none was `auto`)."""
    precision_reason: str
    """Why train.precision is what it is (device.choose_precision)."""


def resolve_auto(cfg: Config, device: torch.device, train_chars: int | None = None) -> Resolved:
    """`cfg` with every `auto` resolved: the sizes for a training text of `train_chars`
    characters (None when the text was not read: then nothing may be sized to it) and
    train.precision for `device`. A config with nothing to change comes back as it is."""
    if train_chars is None and needs_text(cfg):
        raise ValueError("resolve_auto needs the training text's characters to size `auto` settings")
    resolved, sized = fit_to_corpus(cfg, train_chars) if needs_text(cfg) else (cfg, [])
    precision, reason = choose_precision(device, cfg.train.precision)
    if precision != cfg.train.precision:
        resolved = dataclasses.replace(resolved, train=dataclasses.replace(resolved.train, precision=precision))
    return Resolved(resolved, sized, reason)
