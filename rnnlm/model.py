"""The language model: embedding -> stacked recurrent layers -> output layer.

For a batch of token ids ``idx`` of shape (B, T) and the state carried from the batch
before, each layer l runs its cell over time,

    h^0_t = E[idx_t]                              (embedding, E is V x H)
    h^l_t = cell_l(h^{l-1}_t, h^l_{t-1})          (the model.cell kind; see cells.py)
    y_t   = W_hy h^L_t + b_y                       (logits over the vocabulary)

and returns the logits with the last state of every layer, which the trainer detaches and
feeds into the next batch (truncated backpropagation through time).

Regularisation from AWD-LSTM (Merity et al. 2017), each off by default:
embedding dropout (drop whole rows of E), locked dropout (one mask per sequence, shared
over time) on every layer's output, and DropConnect on the hidden-to-hidden weights.
With ``tie_weights`` the output layer reuses E (Press & Wolf 2017).

`ModelBundle` is what generation, prediction, scoring and the activations read from a
trained model: the network with its tokenizer, config and device.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from rnnlm import fused
from rnnlm.cells import RecurrentLayer
from rnnlm.config import Config, ModelConfig

if TYPE_CHECKING:
    from tokenizers import Tokenizer

State = list  # one tuple of tensors per layer, the cell's state_names: (h,), or (h, c) for lstm


class LockedDropout(nn.Module):
    """Variational dropout: one mask per sequence, shared by all time steps.

    Ordinary dropout draws a new mask at every step, which lets the noise average out
    along the sequence; a locked mask drops the same units for the whole sequence.
    """

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (T, B, H)
        if not self.training or self.p == 0.0:
            return x
        mask = x.new_empty(1, x.size(1), x.size(2)).bernoulli_(1 - self.p) / (1 - self.p)
        return x * mask  # (T, B, H)


def embedding_dropout(weight: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Drop whole rows of the embedding matrix: a dropped word is dropped everywhere it occurs."""
    if not training or p == 0.0:
        return weight
    mask = weight.new_empty(weight.size(0), 1).bernoulli_(1 - p) / (1 - p)
    return weight * mask  # (V, E)


class RNNLM(nn.Module):
    """A recurrent language model over a vocabulary of ``vocab_size`` tokens."""

    def __init__(self, vocab_size: int, cfg: ModelConfig):
        super().__init__()
        self.vocab_size = vocab_size
        self.cfg = cfg
        H, E = cfg.hidden_size, cfg.embedding_size
        self.embedding = nn.Embedding(vocab_size, E)
        self.layers = nn.ModuleList(
            RecurrentLayer(cfg.cell, E if i == 0 else H, H, weight_drop=cfg.weight_drop, impl=cfg.impl)
            for i in range(cfg.num_layers)
        )
        self.drop = LockedDropout(cfg.dropout)
        self.decoder = nn.Linear(H, vocab_size)
        # Small uniform embeddings as in the classic word-language-model recipe; the
        # recurrent layers keep the PyTorch initialisation of their cells.
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        if cfg.tie_weights:
            self.decoder.weight = self.embedding.weight
        else:
            nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
        # W_hy^T laid out for `step` (on CPU faster than the transposed view, see fused.transposed).
        self._decoder_layout = fused.LayoutCache()

    def init_state(self, batch_size: int, device=None) -> State:
        """Zeros for every layer, the state at the start of a stream."""
        dtype = self.embedding.weight.dtype
        device = device or self.embedding.weight.device
        return [layer.init_state(batch_size, device=device, dtype=dtype) for layer in self.layers]

    def forward(self, idx: torch.Tensor, state: Optional[State] = None):
        """idx (B, T) token ids -> logits (B, T, V) and the state after the last step."""
        x, new_state = self.features(idx, state)
        return self.decoder(x), new_state

    def features(self, idx: torch.Tensor, state: Optional[State] = None):
        """idx (B, T) token ids -> the last layer's output (B, T, H), before the output
        layer, and the state after the last step."""
        if state is None:
            state = self.init_state(idx.size(0), idx.device)
        weight = embedding_dropout(self.embedding.weight, self.cfg.embed_dropout, self.training)
        # Time-major inside: each step then reads one contiguous (B, H) slice.
        x = F.embedding(idx.t(), weight)  # (T, B, E)
        x = self.drop(x)
        new_state = []
        for layer, layer_state in zip(self.layers, state):
            x, layer_state = layer(x, layer_state)  # (T, B, H)
            x = self.drop(x)
            new_state.append(layer_state)
        return x.transpose(0, 1), new_state  # (B, T, H)

    @torch.no_grad()
    def step(self, token: torch.Tensor, state: State):
        """One generation step: token (B,) -> logits (B, V) and the next state (eval mode)."""
        return self.stepper()(token, state)

    @torch.no_grad()
    def stepper(self):
        """`step` for a generation loop: ``step(token (B,), state) -> (logits (B, V), state)``.

        The weights are laid out for one-token steps once, when this is called (see
        `RecurrentLayer.stepper`); call it again after changing them.
        """
        embedding = self.embedding.weight
        layers = [layer.stepper() for layer in self.layers]
        w, b = self.decoder.weight, self.decoder.bias
        w_t = self._decoder_layout.get((w, b), lambda: fused.transposed(w))

        @torch.no_grad()
        def step(token: torch.Tensor, state: State):
            x = F.embedding(token, embedding)  # (B, E)
            new_state = []
            for layer_step, layer_state in zip(layers, state):
                x, layer_state = layer_step(x, layer_state)  # (B, H)
                new_state.append(layer_state)
            return torch.addmm(b, x, w_t), new_state  # W_hy h + b_y

        return step


# Prompt tokens per forward pass when priming (`prime`): enough for the recurrent layers'
# batched input projections to pay off, small enough that a chunk's activations
# (a few times chunk x hidden_size floats per layer) stay a few MB.
PRIME_CHUNK = 1024


@torch.no_grad()
def prime(model: RNNLM, ids: torch.Tensor, state: Optional[State] = None,
          chunk: int = PRIME_CHUNK) -> tuple[torch.Tensor, State]:
    """Read a prompt: ids (B, P) -> the logits after its last token (B, V) and the state.

    The same as ``logits, state = model(ids)`` then ``logits[:, -1]``, but the memory
    does not grow with P and the time grows linearly: the recurrent layers read the
    prompt `chunk` tokens at a time, carrying the state, and only the last position goes
    through the output layer (V logits per token would be most of the memory).
    """
    if ids.size(1) == 0:
        raise ValueError("prime needs at least one token")
    for start in range(0, ids.size(1), chunk):
        h, state = model.features(ids[:, start:start + chunk], state)  # (B, <=chunk, H)
    return model.decoder(h[:, -1]), state


def select_state(state: State, rows: torch.Tensor) -> State:
    """The state of the given batch rows (B,) -> (len(rows), ...); rows may repeat."""
    return [tuple(t[rows] for t in layer) for layer in state]


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of next-token logits (..., V) against the token ids (...) that follow.

    Computed in fp32 whatever the logits' type (under autocast they may be bf16/fp16);
    targets of -100 are padding and not scored.
    """
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1),
                           reduction=reduction, ignore_index=-100)


def detach_state(state: State) -> State:
    """Cut the graph between batches: gradients stop here, the values carry on."""
    return [tuple(t.detach() for t in layer_state) for layer_state in state]


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters, a shared (tied) tensor counted once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class ModelBundle(Protocol):
    """A trained model as generation, prediction, scoring and the activations read it: the
    network in eval mode, its tokenizer, its config and the device it is on."""

    model: RNNLM
    tokenizer: Tokenizer
    config: Config
    device: torch.device
