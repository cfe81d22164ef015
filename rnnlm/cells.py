"""Hand-written recurrent cells and the layer that runs one over a sequence.

Three cells, each a plain per-step ``nn.Module`` that reads like its equations. They use
PyTorch's parameter names, shapes and gate orders, so a test can copy the weights of
``torch.nn.RNNCell`` / ``GRUCell`` / ``LSTMCell`` into them and compare:

    weight_ih (G*H, I)   weight_hh (G*H, H)   bias_ih (G*H,)   bias_hh (G*H,)

with G = 1 (rnn), 3 (gru: r, z, n) or 4 (lstm: i, f, g, o). The state is always a tuple:
``(h,)`` for rnn and gru, ``(h, c)`` for lstm; the cell's output is ``state[0]``.

Two minimal cells (Feng et al., 2024, "Were RNNs All We Needed?"), minGRU and minLSTM,
have no hidden-to-hidden weights: their gates read x_t alone, so the state follows a
linear recurrence h_t = a_t * h_{t-1} + (1 - a_t) * h~_t (see scan.py). They hold
``weight_ih`` and ``bias_ih`` only, and their state is ``(h,)``.

``RecurrentLayer`` unrolls a cell over a time-major sequence (T, B, I). Its default
``impl="fast"`` runs the whole sequence through ``rnnlm.fused``: the input projection of
all steps in one matmul, a time loop that only does ``h @ W_hh^T`` and the gate
arithmetic, and a backward pass through time written out by hand (for the minimal
cells: their gates for all steps in one matmul, then ``scan.minimal_layer``).
``impl="reference"`` unrolls the per-step cell with plain autograd; tests hold the fast
path to it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnlm import fused, scan
from rnnlm.config import CELL_KINDS, MINIMAL_CELLS
from rnnlm.errors import RnnlmError

State = tuple[Tensor, ...]


class _Cell(nn.Module):
    """Shared parameters and PyTorch's initialisation: uniform(-1/sqrt(H), 1/sqrt(H))."""

    num_gates = 1
    state_names = ("h",)  # the parts of the state tuple, in order
    recurrent_weights = True  # weight_hh and bias_hh; False for the minimal cells

    @property
    def num_states(self) -> int:
        return len(self.state_names)

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        gh = self.num_gates * hidden_size
        # In PyTorch's order (weight_ih, weight_hh, bias_ih, bias_hh), which `RecurrentLayer._stepper` reads.
        self.weight_ih = nn.Parameter(torch.empty(gh, input_size))
        if self.recurrent_weights:
            self.weight_hh = nn.Parameter(torch.empty(gh, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(gh)) if bias else None
        if self.recurrent_weights:
            self.bias_hh = nn.Parameter(torch.empty(gh)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, bias={self.bias_ih is not None}"


class RNNCell(_Cell):
    """The Elman cell:

        h' = tanh(W_ih x + b_ih + W_hh h + b_hh)

    ``forward(x (B, I), (h,)) -> (h',)``. ``weight_hh`` overrides ``self.weight_hh``
    (``RecurrentLayer`` passes its DropConnect-ed copy).
    """

    def forward(self, x: Tensor, state: State, weight_hh: Tensor | None = None) -> State:
        (h,) = state
        W_hh = self.weight_hh if weight_hh is None else weight_hh
        h_new = torch.tanh(F.linear(x, self.weight_ih, self.bias_ih) + F.linear(h, W_hh, self.bias_hh))
        return (h_new,)


class GRUCell(_Cell):
    """The gated recurrent unit, in PyTorch's convention (gates r, z, n):

        r  = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
        z  = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
        n  = tanh(W_in x + b_in + r * (W_hn h + b_hn))
        h' = (1 - z) * n + z * h

    ``forward(x (B, I), (h,)) -> (h',)``.
    """

    num_gates = 3

    def forward(self, x: Tensor, state: State, weight_hh: Tensor | None = None) -> State:
        (h,) = state
        W_hh = self.weight_hh if weight_hh is None else weight_hh
        W_ir_x, W_iz_x, W_in_x = F.linear(x, self.weight_ih, self.bias_ih).chunk(3, dim=1)
        W_hr_h, W_hz_h, W_hn_h = F.linear(h, W_hh, self.bias_hh).chunk(3, dim=1)  # biases included
        r = torch.sigmoid(W_ir_x + W_hr_h)
        z = torch.sigmoid(W_iz_x + W_hz_h)
        n = torch.tanh(W_in_x + r * W_hn_h)
        h_new = (1 - z) * n + z * h
        return (h_new,)


class LSTMCell(_Cell):
    """The long short-term memory cell, in PyTorch's convention (gates i, f, g, o):

        i  = sigmoid(W_ii x + b_ii + W_hi h + b_hi)
        f  = sigmoid(W_if x + b_if + W_hf h + b_hf)
        g  = tanh(W_ig x + b_ig + W_hg h + b_hg)
        o  = sigmoid(W_io x + b_io + W_ho h + b_ho)
        c' = f * c + i * g
        h' = o * tanh(c')

    ``forward(x (B, I), (h, c)) -> (h', c')``.
    """

    num_gates = 4
    state_names = ("h", "c")

    def forward(self, x: Tensor, state: State, weight_hh: Tensor | None = None) -> State:
        h, c = state
        W_hh = self.weight_hh if weight_hh is None else weight_hh
        gates = F.linear(x, self.weight_ih, self.bias_ih) + F.linear(h, W_hh, self.bias_hh)  # (B, 4H)
        i, f, g, o = gates.chunk(4, dim=1)
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        c_new = f * c + i * g
        h_new = o * torch.tanh(c_new)
        return (h_new, c_new)


class _MinimalCell(_Cell):
    """A cell whose gates read x_t alone: h' = a * h + (1 - a) * h~ with (a, h~) =
    `coefficients(x)`, for one step or all steps at once ((..., I) -> (..., H) each)."""

    recurrent_weights = False

    def coefficients(self, x: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def forward(self, x: Tensor, state: State, weight_hh: Tensor | None = None) -> State:
        (h,) = state
        a, h_tilde = self.coefficients(x)
        return (a * h + (1 - a) * h_tilde,)


class MinGRUCell(_MinimalCell):
    """minGRU: the GRU without the hidden state in its gates (Feng et al., 2024):

        z  = sigmoid(W_z x + b_z)
        h~ = W_h x + b_h
        h' = (1 - z) * h + z * h~                 (a = 1 - z: the share of h kept)

    ``forward(x (B, I), (h,)) -> (h',)``.
    """

    num_gates = 2

    def coefficients(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z, h_tilde = F.linear(x, self.weight_ih, self.bias_ih).chunk(2, dim=-1)
        return 1 - torch.sigmoid(z), h_tilde


class MinLSTMCell(_MinimalCell):
    """minLSTM: the LSTM without the hidden state in its gates, and without c (Feng et al., 2024):

        f  = sigmoid(W_f x + b_f),   i = sigmoid(W_i x + b_i),   h~ = W_h x + b_h
        h' = f / (f + i) * h + i / (f + i) * h~   (a = f / (f + i))

    The two gates are normalised to sum to one, so h stays a weighted average of the h~
    seen so far. ``forward(x (B, I), (h,)) -> (h',)``.
    """

    num_gates = 3

    def coefficients(self, x: Tensor) -> tuple[Tensor, Tensor]:
        f, i, h_tilde = F.linear(x, self.weight_ih, self.bias_ih).chunk(3, dim=-1)
        f, i = torch.sigmoid(f), torch.sigmoid(i)
        return f / (f + i), h_tilde


# The class of each cell kind that config.CELL_KINDS names (and model.cell takes).
CELLS = {"rnn": RNNCell, "gru": GRUCell, "lstm": LSTMCell, "mingru": MinGRUCell, "minlstm": MinLSTMCell}
if tuple(CELLS) != CELL_KINDS or {k for k, c in CELLS.items() if not c.recurrent_weights} != set(MINIMAL_CELLS):
    raise ImportError(f"cells.CELLS {tuple(CELLS)} must hold one class for each of config.CELL_KINDS {CELL_KINDS}, "
                      f"those of config.MINIMAL_CELLS {MINIMAL_CELLS} without recurrent weights")
IMPLS = ("fast", "reference")


class RecurrentLayer(nn.Module):
    """One recurrent layer: a cell unrolled over a time-major sequence.

    ``forward(x (T, B, I), state | None) -> (y (T, B, H), new_state)``; ``state=None``
    starts from zeros. ``step(x_t (B, I), state) -> (h (B, H), new_state)`` runs one step
    (generation). ``weight_drop`` is DropConnect on ``weight_hh`` (AWD-LSTM): in training
    mode one dropout mask on the weight matrix per forward call, shared by all time steps.
    """

    def __init__(
        self,
        cell: str,
        input_size: int,
        hidden_size: int,
        weight_drop: float = 0.0,
        impl: str = "fast",
    ):
        super().__init__()
        if cell not in CELLS:
            raise RnnlmError(f"unknown cell {cell!r}: valid cells are {', '.join(CELLS)}")
        if impl not in IMPLS:
            raise RnnlmError(f"unknown recurrent impl {impl!r}: valid impls are {', '.join(IMPLS)}")
        if not 0.0 <= weight_drop < 1.0:
            raise RnnlmError(f"weight_drop must be in [0, 1), got {weight_drop}")
        if weight_drop > 0 and not CELLS[cell].recurrent_weights:
            raise RnnlmError(f"weight_drop (DropConnect on W_hh) needs a cell with hidden-to-hidden weights; "
                             f"{cell} has none: set it to 0")
        self.cell_name = cell
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.weight_drop = weight_drop
        self.impl = impl
        self.cell = CELLS[cell](input_size, hidden_size)
        # A fused.Stepper (transposed weights) for `step`, rebuilt whenever a parameter changes.
        self._step_cache = fused.StepCache()
        # Large buffers of the fast path, reused from call to call (see fused.Workspace).
        self._workspace = fused.Workspace()

    def extra_repr(self) -> str:
        return f"{self.cell_name!r}, weight_drop={self.weight_drop}, impl={self.impl!r}"

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        w = self.cell.weight_ih
        zeros = lambda: torch.zeros(batch_size, self.hidden_size, device=device or w.device, dtype=dtype or w.dtype)  # noqa: E731
        return tuple(zeros() for _ in range(self.cell.num_states))

    def _weight_hh(self) -> Tensor | None:
        """W_hh, with this forward call's DropConnect mask applied when training (None
        for the minimal cells, which have no W_hh)."""
        if not self.cell.recurrent_weights:
            return None
        w = self.cell.weight_hh
        if self.training and self.weight_drop > 0:
            w = F.dropout(w, self.weight_drop, training=True)
        return w

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        T, B, _ = x.shape
        if state is None:
            state = self.init_state(B, x.device, x.dtype)
        weight_hh = self._weight_hh()
        if self.impl == "fast" and not self.cell.recurrent_weights:
            gates = F.linear(x, self.cell.weight_ih, self.cell.bias_ih)  # (T, B, G*H): all steps in one matmul
            y = scan.minimal_layer(self.cell_name, gates, state[0])
            return y, (y[-1],)
        if self.impl == "fast":
            c = self.cell
            return fused.run(
                self.cell_name, x, tuple(state), c.weight_ih, weight_hh, c.bias_ih, c.bias_hh, ws=self._workspace
            )
        ys = []
        for t in range(T):
            state = self.cell(x[t], state, weight_hh=weight_hh)
            ys.append(state[0])
        return torch.stack(ys), state  # (T, B, H)

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        """One time step; lean when no gradient is wanted (generation)."""
        c = self.cell
        needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (x_t, *state, *c.parameters()))
        if needs_grad or (self.training and self.weight_drop > 0) or self.impl == "reference":
            state = c(x_t, state, weight_hh=self._weight_hh())
        else:
            state = self._stepper()(x_t, state)
        return state[0], state

    def stepper(self):
        """`step` for a loop that leaves the weights alone, e.g. generating a text.

        Returns ``step(x_t, state) -> (h, new_state)`` with the weights laid out for a
        `fused.Stepper` once, here, instead of checking the layout's cache every token: at
        batch 1 the weights streaming through the CPU caches make each line of Python per
        step cost several times what it costs alone. Call it again after a weight changes.
        Where `step` needs autograd, the reference cell or DropConnect, returns `step` itself.
        """
        if torch.is_grad_enabled() or self.training or self.impl == "reference":
            return self.step
        stepper = self._stepper()

        def step(x_t: Tensor, state: State) -> tuple[Tensor, State]:
            state = stepper(x_t, state)
            return state[0], state

        return step

    def _stepper(self) -> fused.Stepper | fused.MinStepper:
        """A `fused.Stepper` (or `MinStepper`) of the cell's current weights (see `fused.StepCache`)."""
        params = tuple(self.cell._parameters.values())  # weight_ih, weight_hh, bias_ih, bias_hh
        if not self.cell.recurrent_weights:  # weight_ih, bias_ih
            return self._step_cache.get(params, lambda w, b: fused.MinStepper(self.cell_name, w, b))
        return self._step_cache.get(
            params, lambda *p: fused.Stepper(self.cell_name, *fused.step_weights(self.cell_name, *p))
        )
