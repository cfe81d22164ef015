"""Scoring a model on a token sequence: loss, perplexity, bits per character.

The metrics (docs/design.md, "Metrics") mean the same thing everywhere in rnnlm:

    loss        = sum of token NLL / number of scored tokens          (nats per token)
    perplexity  = exp(loss)
    bpc         = sum of token NLL / ln 2 / number of characters      (bits per character)

Every token but the first is scored exactly once: the first has no context to be
predicted from, so it is given as context and its characters are left out of the count.
The text is cut into a few long streams that are run side by side with the hidden state
carried along each stream, as in training.

Dynamic evaluation (`evaluate_ids_dynamic`, ``rnnlm evaluate --dynamic LR``) scores the
same way but lets the model keep learning from the text it has already scored.
"""

from __future__ import annotations

import copy
import math
from typing import Optional

import torch

from rnnlm import tokenizer as tokenization
from rnnlm.data import corpus_from_config, read_text
from rnnlm.errors import RnnlmError
from rnnlm.model import RNNLM, ModelBundle, detach_state, lm_loss


def eval_streams(ids: torch.Tensor, num_streams: int, seq_len: int):
    """Lay ids (L,) out as S overlapping streams so each of tokens 1..L-1 is a target once.

    Stream s holds ids[s*N : s*N + N + 1]: its last token is the next stream's first,
    so the target of one stream's last step is not lost. Short streams are padded; the
    padded targets are -100 (ignored by cross_entropy).

        ids:      0 1 2 3 4 5 6 7 8 9        L = 10, S = 3, N = ceil(9 / 3) = 3
        stream 0: 0 1 2 3
        stream 1: 3 4 5 6
        stream 2: 6 7 8 9
    """
    n_targets = ids.numel() - 1
    num_streams = max(1, min(num_streams, n_targets // max(1, seq_len)))
    n = math.ceil(n_targets / num_streams)
    inputs = torch.zeros(num_streams, n, dtype=torch.long)
    targets = torch.full((num_streams, n), -100, dtype=torch.long)
    for s in range(num_streams):
        chunk = ids[s * n: s * n + n + 1]
        if chunk.numel() < 2:
            break
        inputs[s, : chunk.numel() - 1] = chunk[:-1]
        targets[s, : chunk.numel() - 1] = chunk[1:]
    return inputs, targets


@torch.no_grad()
def evaluate_ids(model: RNNLM, ids: torch.Tensor, *, batch_size: int = 32, seq_len: int = 128,
                 device=None, max_tokens: Optional[int] = None, autocast=None,
                 shard: tuple[int, int] = (0, 1)) -> tuple[float, int]:
    """Total NLL (nats) and the number of scored tokens of `ids` under `model` (eval mode).

    ``shard=(i, n)`` scores only the i-th of n contiguous shares of the streams (one per
    process in distributed training; the sums of all shares are the whole result).
    """
    if max_tokens is not None:
        ids = ids[: max_tokens + 1]
    if ids.numel() < 2:
        return 0.0, 0
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    inputs, targets = eval_streams(ids, batch_size, seq_len)
    inputs, targets = inputs.tensor_split(shard[1])[shard[0]], targets.tensor_split(shard[1])[shard[0]]
    if inputs.size(0) == 0:  # fewer streams than shares
        model.train(was_training)
        return 0.0, 0
    inputs, targets = inputs.to(device), targets.to(device)
    state = None
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    for i in range(0, inputs.size(1), seq_len):
        x, y = inputs[:, i:i + seq_len], targets[:, i:i + seq_len]
        if autocast is not None:
            with autocast():
                logits, state = model(x, state)
        else:
            logits, state = model(x, state)
        total += lm_loss(logits, y, reduction="sum").double()
        count += int((y != -100).sum())
        state = detach_state(state)
    model.train(was_training)
    return float(total), count


# eps of RMS-normalised dynamic evaluation, as a share of the mean gradient RMS. Not
# smaller: the embedding rows of rare tokens have a gradient RMS many orders of magnitude
# below the mean, and with a tiny eps those weights take huge steps and the loss goes
# to NaN (docs/results.md, dynamic evaluation).
RMS_EPS = 0.1


# What each dynamic-evaluation setting must be, one rule for the Python API and the command
# line (`check_dynamic`): key: (test, what the API says it needs, what an option must be).
DYNAMIC_RULES = {
    "dynamic_lr": (lambda v: v >= 0, "a learning rate >= 0", "a learning rate >= 0"),
    "dynamic_decay": (lambda v: 0 <= v < 1, "a decay in [0, 1)", "in [0, 1)"),
    "dynamic_rms": (lambda v: v >= 0, "a number of tokens >= 0", "a number of tokens >= 1 (0 turns it off)"),
}


def check_dynamic(lr: Optional[float], decay: float, rms: int, options: Optional[dict] = None) -> None:
    """Refuse, in one line, the first dynamic-evaluation setting out of its range (none
    when `lr` is None: dynamic evaluation is off). `options` names the command line's
    option of each key; without it the line names the Python API's keyword."""
    if lr is None:
        return
    for key, value in (("dynamic_lr", lr), ("dynamic_decay", decay), ("dynamic_rms", rms)):
        ok, needs, must = DYNAMIC_RULES[key]
        if not (math.isfinite(value) and ok(value)):
            raise RnnlmError(f"{options[key]} must be {must}, got {value}" if options else
                             f"dynamic evaluation needs {needs} ({key}), got {value}")


def gradient_rms(model: RNNLM, ids: torch.Tensor, *, max_tokens: int, batch_size: int = 32, seq_len: int = 128,
                 device=None) -> list[torch.Tensor]:
    """Root mean square of each weight's gradient over up to `max_tokens` tokens of `ids`.

        rms = sqrt( mean over segments of (grad_theta L_segment)^2 )

    The statistic that RMS-normalised dynamic evaluation divides its steps by (Krause et
    al., 2018, section 5). `ids` (the training split) is laid out as `batch_size` streams
    spread over the whole text, so the segments come from all of it, not its first
    pages; each segment's gradient is of its mean loss, with dropout off and the state
    carried along each stream. One tensor per parameter, in ``model.parameters()`` order.
    """
    if ids.numel() < 2:
        raise RnnlmError("the training split is too short to measure gradients on (dynamic_rms)")
    device = device or next(model.parameters()).device
    work = copy.deepcopy(model).eval()  # gradients land on a copy: `model` is not touched
    params = list(work.parameters())
    squares = [torch.zeros_like(p) for p in params]
    inputs, targets = eval_streams(ids, batch_size, seq_len)
    steps = max(1, min(inputs.size(1) // seq_len, max_tokens // (inputs.size(0) * seq_len)))
    inputs, targets = inputs.to(device), targets.to(device)
    state = None
    for i in range(0, steps * seq_len, seq_len):
        x, y = inputs[:, i:i + seq_len], targets[:, i:i + seq_len]
        logits, state = work(x, state)
        loss = lm_loss(logits, y)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        for sq, g in zip(squares, grads):
            if g is not None:
                sq.add_(g.square())
        state = detach_state(state)
    return [(sq / steps).sqrt_() for sq in squares]


def evaluate_ids_dynamic(model: RNNLM, ids: torch.Tensor, *, lr: float, seq_len: int = 128, decay: float = 0.0,
                         grad_rms: Optional[list[torch.Tensor]] = None, device=None) -> tuple[float, int]:
    """Total NLL (nats) and scored tokens of `ids` under dynamic evaluation.

    Dynamic evaluation (Krause et al., 2018, "Dynamic Evaluation of Neural Sequence
    Models") adapts the model to the text as it reads it, as the hidden state does, but
    in the weights: each segment of ``seq_len`` tokens is scored with the weights as they
    stand, and only then one step on that segment's mean loss moves them before the next
    segment is scored. Plain SGD:

        theta <- theta - lr * g,                    g = grad_theta L_segment

    With ``grad_rms`` (`gradient_rms` of the training text) each weight's step is divided
    by its typical gradient size, and with ``decay`` the weights are pulled back towards
    the trained ones, theta_0, hardest where gradients are largest (the paper's "RMS
    with decay to the global prior"):

        theta <- theta - lr * g / (rms + eps) + decay * r * (theta_0 - theta),
        r = min(rms / mean(rms), 1 / decay)          (r = 1 without grad_rms)

    with mean(rms) over all weights and eps = RMS_EPS * mean(rms), so a weight whose
    gradient is almost always zero (the embedding of a rare token) cannot take a huge step.

    One stream (batch 1) with the state carried throughout, so each token is predicted
    from the text before it and nothing after it. Dropout is off. Works on a copy:
    ``model`` keeps its weights.
    """
    if ids.numel() < 2:
        return 0.0, 0
    device = device or next(model.parameters()).device
    adapted = copy.deepcopy(model).eval()  # deepcopy keeps tied weights tied
    params = list(adapted.parameters())
    update = _DynamicUpdate(params, lr=lr, decay=decay, grad_rms=grad_rms, device=device)
    inputs, targets = ids[None, :-1].long().to(device), ids[None, 1:].long().to(device)  # ids may be uint16
    state = None
    total = torch.zeros((), dtype=torch.float64, device=device)
    for i in range(0, inputs.size(1), seq_len):
        x, y = inputs[:, i:i + seq_len], targets[:, i:i + seq_len]
        logits, state = adapted(x, state)
        nll = lm_loss(logits, y, reduction="sum")
        total += nll.detach().double()  # the score, taken before the weights learn from it
        update(torch.autograd.grad(nll / y.numel(), params, allow_unused=True))
        state = detach_state(state)
    # Diverged: not finite, or worse than twice a uniform guess over the vocabulary (a
    # freshly initialised model scores about one uniform guess; a run that blew up can
    # stay finite at an absurd loss).
    mean_loss = float(total) / targets.size(1)
    if not mean_loss <= 2 * math.log(model.vocab_size):
        raise RnnlmError(f"dynamic evaluation diverged (the loss became {mean_loss:.4g} nats/token): "
                         f"use a smaller learning rate than {lr:g} (--dynamic, dynamic_lr)")
    return float(total), targets.size(1)


class _DynamicUpdate:
    """One step of dynamic evaluation on every weight (see `evaluate_ids_dynamic`):

        theta <- theta + pull * (theta_0 - theta) - lr * g * scale

    with scale = 1 / (rms + eps) and pull = decay * r given the gradient RMS, else
    scale = 1 and pull = decay.
    """

    def __init__(self, params: list[torch.Tensor], *, lr: float, decay: float,
                 grad_rms: Optional[list[torch.Tensor]], device):
        self.params, self.lr = params, lr
        self.initial = [p.detach().clone() for p in params] if decay > 0 else None
        if grad_rms is not None:
            mean_rms = sum(float(r.sum()) for r in grad_rms) / sum(r.numel() for r in grad_rms)
            self.scale = [1.0 / (r.to(device) + RMS_EPS * mean_rms) for r in grad_rms]
            self.pull = [(decay * r.to(device) / mean_rms).clamp_(max=1.0) for r in grad_rms]
        else:
            self.scale = [None] * len(params)
            self.pull = [decay] * len(params)

    @torch.no_grad()
    def __call__(self, grads) -> None:
        for k, (p, g) in enumerate(zip(self.params, grads)):
            if self.initial is not None:  # the pull uses theta before this step, as in the formula
                p.add_((self.initial[k] - p).mul_(self.pull[k]))
            if g is not None:
                p.add_(g if self.scale[k] is None else g * self.scale[k], alpha=-self.lr)


def metrics(nll_sum: float, n_tokens: int, n_chars: int) -> dict:
    """loss (nats/token), perplexity and bits per character from a summed NLL."""
    loss = nll_sum / max(1, n_tokens)
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 700.0)),
        "bpc": nll_sum / math.log(2) / max(1, n_chars),
        "tokens": n_tokens,
        "chars": n_chars,
    }


def scored_chars(text_chars: int, first_token_text: str) -> int:
    """Characters that the scored tokens cover: all but those of the first (context) token."""
    return max(1, text_chars - len(first_token_text))


def ids_metrics(nll_sum: float, n_tokens: int, tokenizer, ids: torch.Tensor, n_chars: int) -> dict:
    """`metrics` of token ids scored from their start, `n_chars` characters long: the first
    token is context only, so its characters are not counted."""
    first = tokenization.decode(tokenizer, ids[:1].tolist())
    return metrics(nll_sum, n_tokens, scored_chars(n_chars, first))


def format_metrics(name: str, m: dict) -> str:
    return (f"{name}: loss {m['loss']:.4f} nats/token | perplexity {m['perplexity']:.2f} | "
            f"{m['bpc']:.4f} bits/char | {m['tokens']:,} tokens, {m['chars']:,} chars")


def score_ids(lm: ModelBundle, ids: torch.Tensor, n_chars: int, *, batch_size: int = 32, seq_len: int = 128,
              dynamic_lr: Optional[float] = None, dynamic_decay: float = 0.0, dynamic_rms: int = 0) -> dict:
    """Metrics of a trained model on token ids covering n_chars characters.

    With ``dynamic_lr``, dynamic evaluation at that learning rate (one stream: batch_size
    does not apply), pulled back to the checkpoint's weights at ``dynamic_decay``, and
    with ``dynamic_rms`` > 0 its steps normalised by the gradient RMS over that many
    tokens of the checkpoint's training split (see `evaluate_ids_dynamic`).
    """
    check_dynamic(dynamic_lr, dynamic_decay, dynamic_rms)
    if dynamic_lr is not None:
        rms = None
        if dynamic_rms > 0:
            train_ids = checkpoint_corpus(lm).ids["train"]
            rms = gradient_rms(lm.model, train_ids, max_tokens=dynamic_rms, seq_len=seq_len, device=lm.device)
        nll, n = evaluate_ids_dynamic(lm.model, ids, lr=dynamic_lr, seq_len=seq_len, decay=dynamic_decay,
                                      grad_rms=rms, device=lm.device)
    else:
        nll, n = evaluate_ids(lm.model, ids, batch_size=batch_size, seq_len=seq_len, device=lm.device)
    return ids_metrics(nll, n, lm.tokenizer, ids, n_chars)


def score_text(lm: ModelBundle, text: str, *, batch_size: int = 32, seq_len: int = 128, **dynamic) -> dict:
    """Metrics of a loaded model on any text, the hidden state carried across all of it.

    ``dynamic``: dynamic_lr, dynamic_decay, dynamic_rms of `score_ids`."""
    ids = torch.tensor(tokenization.encode(lm.tokenizer, text), dtype=torch.long)
    if ids.numel() < 2:
        raise RnnlmError("the text is too short to score: it needs at least two tokens")
    return score_ids(lm, ids, len(text), batch_size=batch_size, seq_len=seq_len, **dynamic)


def score_text_file(lm: ModelBundle, path, *, batch_size: int = 32, seq_len: int = 128, encoding: Optional[str] = None,
                    errors: Optional[str] = None, **dynamic) -> dict:
    """score_text on a file read with `encoding` and `errors` (default: the checkpoint's
    data.encoding and data.errors); a bad file is named with the command's flags."""
    dc = lm.config.data
    text = read_text(path, encoding=encoding or dc.encoding, errors=errors or dc.errors, what="text file",
                     settings=("--text", "--encoding", "--errors"))
    return score_text(lm, text, batch_size=batch_size, seq_len=seq_len, **dynamic)


def checkpoint_corpus(lm: ModelBundle):
    """The corpus a loaded model was trained on, encoded with its own tokenizer."""
    return corpus_from_config(lm.config, tokenizer_json=tokenization.to_json(lm.tokenizer), progress=False)


def score_split(lm: ModelBundle, split: str, *, batch_size: int = 32, seq_len: int = 128, **dynamic) -> dict:
    """Metrics of a loaded model on one split of the corpus it was trained on."""
    corpus = checkpoint_corpus(lm)
    if not corpus.chars[split]:
        raise RnnlmError(f"this model's text has no {split} split (data.split is {list(lm.config.data.split)}); "
                         "use --split valid, or --text FILE")
    return score_ids(lm, corpus.ids[split], corpus.chars[split], batch_size=batch_size, seq_len=seq_len, **dynamic)
