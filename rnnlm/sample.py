"""Generation: prime the network with the prompt, then sample token by token.

    logits, state = prime(model, prompt_ids)   # the prompt in chunks, once for all samples
    repeat max_new_tokens times:
        p = softmax(logits / temperature)      # filtered by top-k and top-p
        token ~ p                              # (temperature 0: the most likely token)
        logits, state = step(token, state)     # model.stepper(): one token at a time

`lm` below is a model.ModelBundle (the network, its tokenizer, config and device).
"""

from __future__ import annotations

import sys
import warnings
from typing import Callable, Optional

import torch

from rnnlm import tokenizer as tokenization
from rnnlm.config import check_sampling
from rnnlm.errors import RnnlmError
from rnnlm.model import ModelBundle, prime, select_state


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
        drop_sorted[..., 0] = False  # also when top_p is too small for float32 (it rounds to 0)
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(logits: torch.Tensor, temperature: float, top_k: int, top_p: float,
                generator: Optional[torch.Generator]) -> torch.Tensor:
    """One token per row of logits (B, V) -> (B,). A temperature too small for float32 is
    greedy, its limit: the logits are divided after the largest is subtracted, so no row
    overflows to inf - inf."""
    if temperature < torch.finfo(torch.float32).tiny:
        return logits.argmax(dim=-1)
    logits = logits.float()
    logits = filter_logits((logits - logits.max(dim=-1, keepdim=True).values) / temperature, top_k, top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def prompt_text(text: str, source: str) -> str:
    """`text` with the bytes that were not UTF-8 (lone surrogates, as Python reads them from the
    command line, and from stdin once cli.lenient_stdin has run) replaced by U+FFFD, as
    data.errors=replace does for a file; a warning naming `source` says how many, so a prompt
    in another encoding is noticed."""
    text, replaced = tokenization.replace_surrogates(text)
    if replaced:
        warnings.warn(f"the prompt from {source} is not UTF-8: {replaced} byte(s) replaced by U+FFFD; "
                      "give it as UTF-8 (e.g. convert it with iconv -f latin1 -t utf-8)", stacklevel=2)
    return text


def encode_prompt(tok, prompt: str) -> list[int]:
    """Prompt -> ids, refusing an empty prompt and warning about words the tokenizer doesn't know."""
    if not prompt:
        raise RnnlmError("the prompt is empty; give some text with --prompt, --prompt-file or on stdin")
    ids = tokenization.encode(tok, prompt)
    if not ids:
        raise RnnlmError("the prompt encodes to no tokens; give some text with --prompt")
    unk = tokenization.unk_id(tok)
    if unk is not None and unk in ids:
        unknown = tokenization.unknown_words(tok, prompt)
        shown = ", ".join(repr(w) for w in unknown) + (", ..." if ids.count(unk) > len(unknown) else "")
        warnings.warn(f"{ids.count(unk)} prompt token(s) unknown to this tokenizer "
                      f"({shown}) were replaced by {tokenization.UNK}", stacklevel=2)
    return ids


# After max_new_tokens, a sample whose last token ended inside a UTF-8 character gets up
# to this many more tokens to finish it (a character has at most 4 bytes and every token
# adds at least one); what is still cut after that is dropped.
FINISH_CHARACTER_TOKENS = 3


@torch.no_grad()
def generate(lm: ModelBundle, prompt: str, *, max_new_tokens: int = 100, temperature: float = 0.8,
             top_k: int = 0, top_p: float = 1.0, num_samples: int = 1, seed: Optional[int] = None,
             on_text: Optional[Callable[[str], None]] = None) -> list[str]:
    """Continue `prompt` `num_samples` times; returns the continuations (without the prompt).

    With `on_text`, the first sample's new text is passed on piece by piece as it is made;
    the pieces joined are the first continuation. Neither ever holds part of a character
    (see tokenizer.TextStream): a byte-level token that ends inside one is held back, and
    a sample stopped there by max_new_tokens gets up to FINISH_CHARACTER_TOKENS more
    tokens to complete it, else the cut character is dropped.
    """
    check_sampling({"max_new_tokens": max_new_tokens, "temperature": temperature, "top_k": top_k,
                    "top_p": top_p, "num_samples": num_samples})
    vocab_size = lm.model.vocab_size
    if top_k > vocab_size:
        warnings.warn(f"top-k {top_k} is larger than the vocabulary ({vocab_size}); using {vocab_size}",
                      stacklevel=2)
        top_k = vocab_size
    generator = None
    if seed is not None:
        generator = torch.Generator(device=lm.device).manual_seed(seed)
    ids = torch.tensor([encode_prompt(lm.tokenizer, prompt)], dtype=torch.long, device=lm.device)  # (1, P)
    lm.model.eval()
    logits, state = prime(lm.model, ids)  # read once, in chunks, for all samples
    rows = torch.zeros(num_samples, dtype=torch.long, device=lm.device)
    logits, state = logits[rows], select_state(state, rows)  # (S, V)
    table = tokenization.token_bytes(lm.tokenizer)
    streams = [tokenization.TextStream(lm.tokenizer, table) for _ in range(num_samples)]
    step = lm.model.stepper()  # weights laid out for one-token steps once, not every token
    for n in range(max_new_tokens + FINISH_CHARACTER_TOKENS):
        taking = [n < max_new_tokens or s.pending for s in streams]
        if not any(taking):
            break
        if n > 0:
            logits, state = step(token, state)
        token = sample_next(logits, temperature, top_k, top_p, generator)  # (S,)
        for stream, t, take in zip(streams, token.tolist(), taking):
            if take:
                piece = stream.add(t)
                if piece and on_text is not None and stream is streams[0]:
                    on_text(piece)
    last = [stream.close() for stream in streams]
    if last[0] and on_text is not None:
        on_text(last[0])
    return [stream.text for stream in streams]


def print_stream(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()
