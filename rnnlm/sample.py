"""Generation: prime the network with the prompt in one pass, then sample token by token.

    logits, state = model(prompt_ids)          # the whole prompt in one forward pass
    repeat max_new_tokens times:
        p = softmax(logits / temperature)      # filtered by top-k and top-p
        token ~ p                              # (temperature 0: the most likely token)
        logits, state = model.step(token, state)

Loading a checkpoint needs no GPU: its tensors are stored on the CPU and
``map_location`` puts them on whatever device is asked for.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Optional

import torch

from rnnlm import tokenizer as tokenization
from rnnlm.checkpoint import load_checkpoint
from rnnlm.config import Config, config_from_dict
from rnnlm.device import resolve_device
from rnnlm.errors import RnnlmError
from rnnlm.model import RNNLM


@dataclass
class LoadedModel:
    """A model in eval mode with its tokenizer and config, ready to generate or score."""

    model: RNNLM
    tokenizer: object
    config: Config
    device: torch.device
    checkpoint_step: int

    # The Python API (``from rnnlm import load_model``): settings left as None come from
    # the checkpoint's `sample` section.

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
        from rnnlm.predict import next_words
        return next_words(self, prompt, k, beam=beam)

    def score(self, text: str, *, batch_size: int = 32, seq_len: int = 128, dynamic_lr: Optional[float] = None,
              dynamic_decay: float = 0.0, dynamic_rms: int = 0) -> dict:
        """loss (nats/token), perplexity, bpc (bits per character), tokens and chars of `text`.

        ``dynamic_lr``: dynamic evaluation at this learning rate, with ``dynamic_decay``
        and ``dynamic_rms`` (training tokens for the gradient RMS) as in
        `rnnlm.evaluate.evaluate_ids_dynamic` (one stream; the model itself is not changed).
        """
        from rnnlm.evaluate import score_text
        return score_text(self, text, batch_size=batch_size, seq_len=seq_len, dynamic_lr=dynamic_lr,
                          dynamic_decay=dynamic_decay, dynamic_rms=dynamic_rms)

    @cached_property
    def token_classes(self) -> list[str]:
        """word / space / punctuation class of every token id, for next_words (decoded once)."""
        from rnnlm.predict import token_classes
        return token_classes(self.tokenizer, self.model.vocab_size)


def load_model_from_checkpoint(path, device: Optional[str] = None) -> LoadedModel:
    """Rebuild the model from a checkpoint on `device` (default: cuda if available, else cpu)."""
    dev = resolve_device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    ckpt = load_checkpoint(path, map_location=dev)
    cfg = config_from_dict(ckpt["config"])
    tok = tokenization.from_json(ckpt["tokenizer"])
    model = RNNLM(ckpt["vocab_size"], cfg.model)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise RnnlmError(f"checkpoint {path} does not match its own model config ({str(e).splitlines()[0]})") from None
    model.to(dev).eval()
    return LoadedModel(model, tok, cfg, dev, int(ckpt.get("step", 0)))


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set to -inf every logit outside the top-k and outside the top-p nucleus. logits: (B, V)."""
    if top_k and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # Drop a token when the tokens before it already cover top_p; the first always stays.
        drop_sorted = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(logits: torch.Tensor, temperature: float, top_k: int, top_p: float,
                generator: Optional[torch.Generator]) -> torch.Tensor:
    """One token per row of logits (B, V) -> (B,)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits.float() / temperature, top_k, top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def encode_prompt(tok, prompt: str) -> list[int]:
    """Prompt -> ids, refusing an empty prompt and warning about words the tokenizer doesn't know."""
    if not prompt:
        raise RnnlmError("the prompt is empty; give some text with --prompt, --prompt-file or on stdin")
    ids = tokenization.encode(tok, prompt)
    if not ids:
        raise RnnlmError("the prompt encodes to no tokens; give some text with --prompt")
    unk = tokenization.unk_id(tok)
    if unk is not None and unk in ids:
        enc = tok.encode(prompt, add_special_tokens=False)
        unknown = [prompt[a:b] for i, (a, b) in zip(enc.ids, enc.offsets) if i == unk]
        shown = ", ".join(repr(w) for w in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        warnings.warn(f"{len(unknown) or ids.count(unk)} prompt token(s) unknown to this tokenizer "
                      f"({shown}) were replaced by {tokenization.UNK}", stacklevel=2)
    return ids


@torch.no_grad()
def generate(lm: LoadedModel, prompt: str, *, max_new_tokens: int = 100, temperature: float = 0.8,
             top_k: int = 0, top_p: float = 1.0, num_samples: int = 1, seed: Optional[int] = None,
             on_text: Optional[Callable[[str], None]] = None) -> list[str]:
    """Continue `prompt` `num_samples` times; returns the continuations (without the prompt).

    With `on_text`, the first sample's new text is passed on piece by piece as it is made.
    """
    if temperature < 0:
        raise RnnlmError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if not 0 < top_p <= 1:
        raise RnnlmError(f"top-p must be in (0, 1], got {top_p}")
    if num_samples < 1:
        raise RnnlmError(f"num-samples must be at least 1, got {num_samples}")
    vocab_size = lm.model.vocab_size
    if top_k > vocab_size:
        warnings.warn(f"top-k {top_k} is larger than the vocabulary ({vocab_size}); using {vocab_size}",
                      stacklevel=2)
        top_k = vocab_size
    generator = None
    if seed is not None:
        generator = torch.Generator(device=lm.device).manual_seed(seed)
    ids = encode_prompt(lm.tokenizer, prompt)
    idx = torch.tensor([ids] * num_samples, dtype=torch.long, device=lm.device)  # (S, P)
    lm.model.eval()
    logits, state = lm.model(idx)  # the prompt in one pass
    logits = logits[:, -1]  # (S, V)
    new = [[] for _ in range(num_samples)]
    shown = ""
    step = lm.model.stepper()  # weights laid out for one-token steps once, not every token
    for _ in range(max_new_tokens):
        token = sample_next(logits, temperature, top_k, top_p, generator)  # (S,)
        for s, t in enumerate(token.tolist()):
            new[s].append(t)
        if on_text is not None:
            # Decode the whole continuation: a byte-level token can end mid-character.
            text = tokenization.decode(lm.tokenizer, new[0])
            if not text.endswith("\ufffd") and text.startswith(shown):
                on_text(text[len(shown):])
                shown = text
        logits, state = step(token, state)
    texts = [tokenization.decode(lm.tokenizer, n) for n in new]
    if on_text is not None and texts[0].startswith(shown) and len(texts[0]) > len(shown):
        on_text(texts[0][len(shown):])
    return texts


def print_stream(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()
