"""Next-word prediction: the k most likely next *words* after a prompt, with probabilities.

With a word tokenizer a token is a word, so this is the softmax's top k. With bpe and
char tokenizers a word takes several tokens, so the continuations are searched token by
token up to the next word boundary, keeping the `beam` most likely partial words:

    partial word w (probability P(w), state after it), next-token distribution p(. | w):
        a token that continues the word (starts with a letter or digit) -> partial word w + token
        a token that starts with a space, newline or punctuation       -> w is finished:
            P(next word is w) += P(w) * sum of p(boundary tokens)

Before the first letter, whitespace tokens are skipped over (the prompt may end before a
space or a line break), and a punctuation token is a "word" of its own, as it is for the
word tokenizer. The prompt's last word counts as complete: when the prompt ends in a
letter, tokens that would glue on to that word are not followed (their probability is
the model's belief that the prompt's word goes on, and is not listed). The search stops when no partial word can beat the k-th finished word
any more (a word's probability is at most that of any of its prefixes) or after
`max_tokens` tokens. Probabilities of the same word reached by different token splits
add up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rnnlm import tokenizer as tokenization
from rnnlm.model import ModelBundle, prime, select_state
from rnnlm.sample import encode_prompt

# Token classes, by the decoded text of the token alone.
WORD, SPACE, LEADING_SPACE_WORD, PUNCT = "word", "space", "leading-space word", "punct"


def is_word_char(c: str) -> bool:
    # U+FFFD: one byte of a multi-byte character (byte-level BPE); letters, in prose.
    return c.isalnum() or c == "\ufffd"


def token_class(text: str) -> str:
    """word ("the", "ing"), space (" ", "\\n"), leading-space word (" the") or punct (",", " “")."""
    if not text:
        return PUNCT
    if is_word_char(text[0]):
        return WORD
    stripped = text.lstrip()
    if not stripped:
        return SPACE
    return LEADING_SPACE_WORD if is_word_char(stripped[0]) else PUNCT


@dataclass
class _Partial:
    ids: list[int]
    text: str
    logprob: float


def token_classes(tok, vocab_size: int) -> list[str]:
    """The class of every token id (see token_class)."""
    return [token_class(tokenization.decode(tok, [i])) for i in range(vocab_size)]


@torch.no_grad()
def next_words(lm: ModelBundle, prompt: str, k: int = 10, *, beam: int = 16, max_tokens: int = 24,
               classes: list[str] | None = None) -> list[tuple[str, float]]:
    """The k most likely next words after `prompt` as (word, probability), most likely first.

    ``classes``: `token_classes` of the model's tokenizer, when the caller keeps them
    (they are decoded from the whole vocabulary otherwise)."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    model = lm.model
    model.eval()
    step = model.stepper()
    ids = encode_prompt(lm.tokenizer, prompt)
    logits, state = prime(model, torch.tensor([ids], device=lm.device))  # (1, V)
    logprobs = torch.log_softmax(logits.float(), dim=-1)  # (1, V)
    if tokenization.tokenizer_kind(lm.tokenizer) == "word":
        top = torch.topk(logprobs[0], min(k, logprobs.size(-1)))
        return [(tokenization.decode(lm.tokenizer, [i]), float(p.exp()))
                for p, i in zip(top.values, top.indices.tolist())]

    if classes is None:
        classes = token_classes(lm.tokenizer, model.vocab_size)
    ends_word = torch.tensor([c != WORD for c in classes], device=lm.device)  # (V,)

    punct = torch.tensor([c == PUNCT for c in classes], device=lm.device)
    continues_word = ~ends_word
    may_start = torch.tensor([c in (WORD, LEADING_SPACE_WORD, SPACE) for c in classes], device=lm.device)
    # Right after a prompt ending in a letter, a word token would extend the prompt's last word.
    may_start_after_prompt = may_start & ~continues_word if is_word_char(prompt[-1]) else may_start

    finished: dict[str, float] = {}
    table = tokenization.token_bytes(lm.tokenizer)

    def mid_character(ids: list[int]) -> bool:
        return tokenization.ends_mid_character(table, ids)

    def finish(word: str, p: float) -> None:
        finished[word] = finished.get(word, 0.0) + p

    partials = [_Partial([], "", 0.0)]
    for _ in range(max_tokens):
        candidates = []  # (logprob of the longer partial word, parent index, token id)
        for b, part in enumerate(partials):
            lp = logprobs[b]  # (V,)
            if mid_character(part.ids):  # a byte-level token cut a character: it must go on
                allowed = continues_word
            elif part.text.strip():  # inside a word: it ends here, or goes on with a word token
                finish(part.text.strip(), math.exp(part.logprob) * float(lp[ends_word].exp().sum()))
                allowed = continues_word
            else:  # before the word: whitespace, the start of a word, or a punctuation "word"
                top_punct = torch.topk(lp.masked_fill(~punct, -math.inf), min(beam, int(punct.sum())))
                for v, i in zip(top_punct.values.tolist(), top_punct.indices.tolist()):
                    finish(tokenization.decode(lm.tokenizer, part.ids + [i]).strip(), math.exp(part.logprob + v))
                allowed = may_start if part.ids else may_start_after_prompt
            top = torch.topk(lp.masked_fill(~allowed, -math.inf), min(beam, int(allowed.sum())))
            candidates += [(part.logprob + v, b, i) for v, i in zip(top.values.tolist(), top.indices.tolist())]
        candidates = sorted(candidates, key=lambda c: -c[0])[:beam]
        # A word is never more likely than its prefix: stop growing what cannot reach the top k.
        kth = sorted(finished.values(), reverse=True)[k - 1] if len(finished) >= k else 0.0
        candidates = [c for c in candidates if math.exp(c[0]) > kth]
        if not candidates:
            break
        parents = torch.tensor([b for _, b, _ in candidates], device=lm.device)
        tokens = torch.tensor([i for _, _, i in candidates], device=lm.device)
        state = select_state(state, parents)  # the state of each one's parent
        logits, state = step(tokens, state)  # (N, V)
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        partials = [_Partial(partials[b].ids + [i], tokenization.decode(lm.tokenizer, partials[b].ids + [i]), lp)
                    for lp, b, i in candidates]
    return sorted(finished.items(), key=lambda kv: -kv[1])[:k]


def format_table(words: list[tuple[str, float]]) -> str:
    """A table of (word, probability) rows; line breaks shown as \\n."""
    shown = [w.replace("\n", "\\n") for w, _ in words]
    width = max([len("next word")] + [len(w) for w in shown])
    lines = [f"{'#':>3}  {'next word':<{width}}  probability", f"{'-' * 3}  {'-' * width}  {'-' * 11}"]
    for n, (w, (_, p)) in enumerate(zip(shown, words), 1):
        lines.append(f"{n:>3}  {w:<{width}}  {p:11.4f}")
    return "\n".join(lines)
