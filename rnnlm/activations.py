"""What the hidden units do over a text: one value per character for every unit, and the
units that follow simple signals of the text (Karpathy, Johnson & Fei-Fei 2015).

    text -> tokens with their character offsets
         -> step the model token by token from a zero state (RNNLM.stepper), keeping
            every layer's state after each token: h, and for LSTM also the cell state c
         -> each character takes the state after the token that covers it (or, for a
            character no token covers, such as a space the word tokenizer drops, the
            state after the last token before it), so every tokenizer is drawn the same
         -> Pearson correlation of every unit with each signal, over the characters

The signals say, after reading each character: inside a quotation, position within the
line, just after a newline, inside parentheses.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from rnnlm.cells import cell_class
from rnnlm.data import splits_from_config
from rnnlm.errors import RnnlmError
from rnnlm.model import ModelBundle

# Double quotes only: the straight one toggles, curly ones open or close. Single quotes
# are left out, as ’ is also the apostrophe ("Napoleon’s").
OPEN_QUOTES, CLOSE_QUOTES, TOGGLE_QUOTES = "“«", "”»", '"'
SIGNALS = {
    "quote": "inside a quotation",
    "line_position": "position within the line",
    "after_newline": "just after a newline",
    "parentheses": "inside parentheses",
}


@dataclass
class Activations:
    """The hidden states over a text, one row per character.

    ``values[kind]``: (chars, layers, hidden) float32, kind "h" (every cell) or "c" (the
    LSTM's cell state); ``offsets``: the (start, end) characters of each token.
    """

    text: str
    values: dict[str, torch.Tensor]
    offsets: list[tuple[int, int]]

    @property
    def kinds(self) -> list[str]:
        return list(self.values)

    def unit(self, layer: int, kind: str, unit: int) -> torch.Tensor:
        """One unit's value at every character, (chars,); an unknown one is one line."""
        if kind not in self.values:
            raise RnnlmError(f"unknown state {kind!r}: this model has {', '.join(self.values)}")
        _, layers, hidden = self.values[kind].shape
        if not (isinstance(layer, int) and 0 <= layer < layers):
            raise RnnlmError(f"layer must be an integer from 0 to {layers - 1}, got {layer!r}")
        if not (isinstance(unit, int) and 0 <= unit < hidden):
            raise RnnlmError(f"unit must be an integer from 0 to {hidden - 1}, got {unit!r}")
        return self.values[kind][:, layer, unit]


def state_kinds(cell: str) -> list[str]:
    """The parts of a layer's state, in the order the layer keeps them: h, then c for LSTM."""
    return list(cell_class(cell).state_names)


@torch.no_grad()
def activations(lm: ModelBundle, text: str) -> Activations:
    """Step `lm` over `text` from a zero state; see the module doc."""
    if not text:
        raise RnnlmError("the text is empty; give some text to look inside")
    enc = lm.tokenizer.encode(text, add_special_tokens=False)
    if not enc.ids:
        raise RnnlmError("the text encodes to no tokens; give some text to look inside")
    model = lm.model
    kinds = state_kinds(model.cfg.cell)
    layers, hidden = len(model.layers), model.cfg.hidden_size
    # Row 0 is the zero state (characters before the first token), row i + 1 after token i.
    # Kept on the model's device while stepping and copied to the CPU once (not per token).
    per_token = torch.zeros(len(kinds), len(enc.ids) + 1, layers, hidden, device=lm.device)
    state = model.init_state(1, lm.device)
    step = model.stepper()
    tokens = torch.tensor(enc.ids, device=lm.device)
    for i in range(len(enc.ids)):
        _, state = step(tokens[i:i + 1], state)
        for l, layer_state in enumerate(state):
            for k in range(len(kinds)):
                per_token[k, i + 1, l] = layer_state[k][0]
    per_token = per_token.cpu()
    rows = char_rows(enc.offsets, len(text))
    return Activations(text, {kind: per_token[k, rows] for k, kind in enumerate(kinds)},
                       [tuple(o) for o in enc.offsets])


def char_rows(offsets, n_chars: int) -> torch.Tensor:
    """For each character, 1 + the index of the last token starting at or before it (0: none)."""
    starts = torch.full((n_chars,), -1, dtype=torch.long)
    for i, (start, end) in enumerate(offsets):
        if start < n_chars:
            starts[start] = max(int(starts[start]), i)
    return (torch.cummax(starts, dim=0).values + 1).clamp(min=0)


def signals(text: str) -> dict[str, torch.Tensor]:
    """Each signal of SIGNALS after reading each character of `text`, as (chars,) float32."""
    quote, depth, column = False, 0, 0
    out = {name: torch.zeros(len(text)) for name in SIGNALS}
    for i, ch in enumerate(text):
        if ch in OPEN_QUOTES:
            quote = True
        elif ch in CLOSE_QUOTES:
            quote = False
        elif ch in TOGGLE_QUOTES:
            quote = not quote
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth = max(depth - 1, 0)
        column = 0 if ch == "\n" else column + 1
        out["quote"][i] = float(quote)
        out["parentheses"][i] = float(depth > 0)
        out["line_position"][i] = column
        out["after_newline"][i] = float(ch == "\n")
    return out


def correlations(values: torch.Tensor, signal: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each column of values (chars, units) with signal (chars,);
    0 for a unit that does not change. NaN everywhere when the signal does not change."""
    x = values - values.mean(dim=0)
    y = signal - signal.mean()
    denom = x.norm(dim=0) * y.norm()
    r = (x * y[:, None]).sum(dim=0) / denom
    if float(y.norm()) == 0.0:
        return torch.full_like(r, float("nan"))
    return torch.where(denom > 0, r, torch.zeros_like(r))


def ranked_units(acts: Activations, top: int = 5) -> dict[str, list[dict]]:
    """For each signal, the `top` units by |correlation| over the text's characters, as
    {layer, kind, unit, r}; an empty list when the text never shows the signal (no quote)."""
    layers, hidden = next(iter(acts.values.values())).shape[1:]
    flat = torch.cat([acts.values[k].reshape(len(acts.text), -1) for k in acts.kinds], dim=1)
    ranked = {}
    for name, signal in signals(acts.text).items():
        r = correlations(flat, signal)
        if torch.isnan(r).all():
            ranked[name] = []
            continue
        best = torch.topk(r.abs(), min(top, r.numel())).indices.tolist()
        ranked[name] = [{"kind": acts.kinds[i // (layers * hidden)], "layer": i % (layers * hidden) // hidden,
                         "unit": i % hidden, "r": round(float(r[i]), 4)} for i in best]
    return ranked


def validation_text(cfg) -> str:
    """The validation split of the run's data, read as training read it (nothing is
    downloaded); one line saying why when the text is not there any more."""
    try:
        splits = splits_from_config(cfg)
    except (RnnlmError, OSError) as e:
        raise RnnlmError(f"the run's validation text is not available ({e}); paste a text instead") from None
    if not splits.get("valid", "").strip():
        raise RnnlmError("the run has no validation text; paste a text instead")
    return splits["valid"]


def random_window(text: str, chars: int, rng: random.Random) -> str:
    """About `chars` characters of `text` from a random line start (all of it when shorter)."""
    if len(text) <= chars:
        return text
    start = rng.randrange(len(text) - chars)
    line = text.find("\n", start, start + chars // 2)
    start = line + 1 if line != -1 else start
    return text[start:start + chars]
