"""A trained model loaded from its checkpoint or model folder, ready to generate, predict and score.

    lm = load_model("runs/war_and_peace/best.pt")
    lm.generate("Napoleon was the Emperor of", max_new_tokens=50, temperature=0.8)
    lm.next_words("Napoleon was the Emperor of", k=5)   # [(word, probability), ...]
    lm.score(text)                                       # loss, perplexity, bpc, ...

`path` is a ``.pt`` checkpoint or a folder written by ``rnnlm export --format hf``
(model_folder.read_model reads either). Loading needs no GPU: the weights are read onto
the CPU and moved to whatever device is asked for. Nothing here imports the training code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Optional

import torch

from rnnlm import tokenizer as tokenization
from rnnlm.config import Config, check_number, config_from_dict
from rnnlm.device import resolve_device
from rnnlm.errors import RnnlmError
from rnnlm.evaluate import score_text
from rnnlm.model import RNNLM
from rnnlm.model_folder import read_model
from rnnlm.predict import next_words, token_classes
from rnnlm.sample import generate


@dataclass
class LoadedModel:
    """A model in eval mode with its tokenizer, config and device (a `model.ModelBundle`)
    and the step of its checkpoint. Settings of `generate` left as None come from the
    checkpoint's `sample` section. `trained`: how far the model was trained (step, epoch,
    tokens_seen, elapsed_seconds, as far as known)."""

    model: RNNLM
    tokenizer: object
    config: Config
    device: torch.device
    checkpoint_step: int
    trained: dict = field(default_factory=dict)

    def generate(self, prompt: str, *, max_new_tokens: Optional[int] = None, temperature: Optional[float] = None,
                 top_k: Optional[int] = None, top_p: Optional[float] = None, seed: Optional[int] = None) -> str:
        """One continuation of `prompt` (the new text only)."""
        sc = self.config.sample
        return generate(self, prompt, seed=seed,
                        max_new_tokens=sc.max_new_tokens if max_new_tokens is None else max_new_tokens,
                        temperature=sc.temperature if temperature is None else temperature,
                        top_k=sc.top_k if top_k is None else top_k,
                        top_p=sc.top_p if top_p is None else top_p)[0]

    def next_words(self, prompt: str, k: int = 10, *, beam: int = 16) -> list[tuple[str, float]]:
        """The k most likely next words after `prompt`, as (word, probability) pairs (see predict.py)."""
        check_number("k", k, integer=True)
        check_number("beam", beam, integer=True)
        return next_words(self, prompt, k, beam=beam, classes=self.token_classes)

    def score(self, text: str, *, batch_size: int = 32, seq_len: int = 128, dynamic_lr: Optional[float] = None,
              dynamic_decay: float = 0.0, dynamic_rms: int = 0) -> dict:
        """loss (nats/token), perplexity, bpc (bits per character), tokens and chars of `text`.

        ``dynamic_lr``: dynamic evaluation at this learning rate, with ``dynamic_decay``
        and ``dynamic_rms`` (training tokens for the gradient RMS) as in
        `rnnlm.evaluate.evaluate_ids_dynamic` (one stream; the model itself is not changed).
        """
        for name, value in (("batch_size", batch_size), ("seq_len", seq_len), ("dynamic_rms", dynamic_rms)):
            check_number(name, value, integer=True)  # the ranges: evaluate.check_dynamic
        return score_text(self, text, batch_size=batch_size, seq_len=seq_len, dynamic_lr=dynamic_lr,
                          dynamic_decay=dynamic_decay, dynamic_rms=dynamic_rms)

    @cached_property
    def token_classes(self) -> list[str]:
        """word / space / punctuation class of every token id, for next_words (decoded once)."""
        return token_classes(self.tokenizer, self.model.vocab_size)


def load_model(path, device: Optional[str] = None) -> LoadedModel:
    """Rebuild the model from a checkpoint or a model folder on `device` (default: cuda if available, else cpu)."""
    dev = resolve_device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    parent = read_model(path)
    cfg = config_from_dict(parent.config)
    tok = tokenization.from_json(parent.tokenizer_json)
    model = RNNLM(parent.vocab_size, cfg.model)
    try:
        model.load_state_dict(parent.weights)
    except RuntimeError as e:
        raise RnnlmError(f"checkpoint {path} does not match its own model config ({str(e).splitlines()[0]})") from None
    model.to(dev).eval()
    return LoadedModel(model, tok, cfg, dev, int(parent.trained.get("step", 0)), parent.trained)
