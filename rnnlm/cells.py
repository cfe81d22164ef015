"""The recurrent cells, one class per kind, registered by name, and the layer that runs
one over a sequence.

A cell class owns everything about its kind:

* ``forward(x (B, I), state) -> new_state``: the reference, a plain per-step module that
  reads like the cell's equations;
* ``sequence(x (T, B, I), state, weight_hh, ws) -> (y, new_state)``: the fast path over a
  whole sequence (the kernels of ``rnnlm.fused`` and ``rnnlm.scan``), held to the
  reference by tests; by default ``unroll``, the reference step by step;
* ``token_kernel() -> kernel(x_t, state) -> new_state``: one step without autograd, its
  weights laid out once (generation); by default the reference;
* its name (``kind``), its state's parts (``state_names``) and whether it has
  hidden-to-hidden weights (``recurrent_weights``).

``@register`` puts a class in `CELLS` under its ``kind``, the names ``model.cell``
takes; nothing else in rnnlm knows the names. docs/design.md, "Adding a cell", says how
to add one.

The built-in cells use PyTorch's parameter names, shapes and gate orders, so a test can
copy the weights of ``torch.nn.RNNCell`` / ``GRUCell`` / ``LSTMCell`` into them and compare:

    weight_ih (G*H, I)   weight_hh (G*H, H)   bias_ih (G*H,)   bias_hh (G*H,)

with G = 1 (rnn), 3 (gru: r, z, n) or 4 (lstm: i, f, g, o). The state is always a tuple:
``(h,)`` for rnn and gru, ``(h, c)`` for lstm; the cell's output is ``state[0]``.

Two minimal cells (Feng et al., 2024, "Were RNNs All We Needed?"), minGRU and minLSTM,
have no hidden-to-hidden weights: their gates read x_t alone, so the state follows a
linear recurrence h_t = a_t * h_{t-1} + (1 - a_t) * h~_t (see scan.py). They hold
``weight_ih`` and ``bias_ih`` only, and their state is ``(h,)``.

``RecurrentLayer`` runs a cell over a time-major sequence (T, B, I): with
``impl="fast"`` (the default) through the cell's ``sequence``, with ``impl="reference"``
through its ``unroll``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnlm import fused, scan
from rnnlm.errors import RnnlmError

State = tuple[Tensor, ...]
# One step without autograd: kernel(x_t (B, I), state) -> new_state.
TokenKernel = Callable[[Tensor, State], State]

# Every cell kind by name (the values model.cell takes), filled by `register`.
CELLS: dict[str, type[Cell]] = {}


def register(cls: type[Cell]) -> type[Cell]:
    """Class decorator: make ``cls`` the cell of kind ``cls.kind`` (a new name only)."""
    if not isinstance(getattr(cls, "kind", None), str) or not cls.kind:
        raise TypeError(f"{cls.__name__} needs a class attribute kind, the name model.cell takes")
    if cls.kind in CELLS and CELLS[cls.kind] is not cls:
        raise ValueError(f"cell kind {cls.kind!r} is already {CELLS[cls.kind].__name__}")
    CELLS[cls.kind] = cls
    return cls


def cell_class(kind: str) -> type[Cell]:
    """The class registered for ``kind``; one line naming the valid kinds for any other."""
    if kind not in CELLS:
        raise RnnlmError(f"unknown cell {kind!r}: valid cells are {', '.join(CELLS)}")
    return CELLS[kind]


class Cell(nn.Module):
    """The base of every cell: its parameters with PyTorch's initialisation,
    uniform(-1/sqrt(H), 1/sqrt(H)), and the default fast paths (the reference itself).

    A subclass sets ``kind`` and ``num_gates`` (weight_ih is (num_gates * H, I)), and
    ``state_names`` and ``recurrent_weights`` when they differ from these, and writes
    ``forward``; it overrides ``sequence`` and ``token_kernel`` for speed.
    """

    kind: str
    num_gates = 1
    state_names = ("h",)  # the parts of the state tuple, in order; the output is the first
    recurrent_weights = True  # weight_hh and bias_hh; False for a cell whose gates read x alone

    @property
    def num_states(self) -> int:
        return len(self.state_names)

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        gh = self.num_gates * hidden_size
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

    def forward(self, x: Tensor, state: State, weight_hh: Tensor | None = None) -> State:
        """One step, as the equations say: ``(x (B, I), state) -> new_state``. ``weight_hh``
        overrides ``self.weight_hh`` (``RecurrentLayer`` passes its DropConnect-ed copy)."""
        raise NotImplementedError

    def unroll(self, x: Tensor, state: State, weight_hh: Tensor | None) -> tuple[Tensor, State]:
        """The reference over x (T, B, I) from ``state``, one step at a time with plain
        autograd: (y (T, B, H), the last state)."""
        ys = []
        for x_t in x:
            state = self(x_t, state, weight_hh=weight_hh)
            ys.append(state[0])
        return torch.stack(ys), state

    def sequence(self, x: Tensor, state: State, weight_hh: Tensor | None,
                 ws: fused.Workspace | None = None) -> tuple[Tensor, State]:
        """The fast path over x (T, B, I) from ``state``: (y (T, B, H), the last state),
        as `unroll`; ``ws`` keeps its buffers between calls. Here `unroll` itself."""
        return self.unroll(x, state, weight_hh)

    def token_kernel(self) -> TokenKernel:
        """One step without autograd, the weights laid out for it once (``RecurrentLayer``
        builds it again after a weight changes). Here the reference."""
        return self


class _FusedCell(Cell):
    """A cell whose fast paths are kernels of rnnlm.fused: ``kernel`` (a `fused.Kernel`) for
    sequences and ``token`` (built from weight_ih, weight_hh, bias_ih, bias_hh) for one step."""

    kernel: fused.Kernel
    token: type

    def sequence(self, x: Tensor, state: State, weight_hh: Tensor | None,
                 ws: fused.Workspace | None = None) -> tuple[Tensor, State]:
        return fused.run(self.kernel, x, tuple(state), self.weight_ih, weight_hh, self.bias_ih, self.bias_hh, ws=ws)

    def token_kernel(self) -> TokenKernel:
        return self.token(self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)


@register
class RNNCell(_FusedCell):
    """The Elman cell:

        h' = tanh(W_ih x + b_ih + W_hh h + b_hh)

    ``forward(x (B, I), (h,)) -> (h',)``.
    """

    kind = "rnn"
    kernel, token = fused.RNN, fused.RNNToken

    def forward(self, x: Tensor, state: State, weight_hh: Tensor | None = None) -> State:
        (h,) = state
        W_hh = self.weight_hh if weight_hh is None else weight_hh
        h_new = torch.tanh(F.linear(x, self.weight_ih, self.bias_ih) + F.linear(h, W_hh, self.bias_hh))
        return (h_new,)


@register
class GRUCell(_FusedCell):
    """The gated recurrent unit, in PyTorch's convention (gates r, z, n):

        r  = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
        z  = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
        n  = tanh(W_in x + b_in + r * (W_hn h + b_hn))
        h' = (1 - z) * n + z * h

    ``forward(x (B, I), (h,)) -> (h',)``.
    """

    kind = "gru"
    num_gates = 3
    kernel, token = fused.GRU, fused.GRUToken

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


@register
class LSTMCell(_FusedCell):
    """The long short-term memory cell, in PyTorch's convention (gates i, f, g, o):

        i  = sigmoid(W_ii x + b_ii + W_hi h + b_hi)
        f  = sigmoid(W_if x + b_if + W_hf h + b_hf)
        g  = tanh(W_ig x + b_ig + W_hg h + b_hg)
        o  = sigmoid(W_io x + b_io + W_ho h + b_ho)
        c' = f * c + i * g
        h' = o * tanh(c')

    ``forward(x (B, I), (h, c)) -> (h', c')``.
    """

    kind = "lstm"
    num_gates = 4
    state_names = ("h", "c")
    kernel, token = fused.LSTM, fused.LSTMToken

    def forward(self, x: Tensor, state: State, weight_hh: Tensor | None = None) -> State:
        h, c = state
        W_hh = self.weight_hh if weight_hh is None else weight_hh
        gates = F.linear(x, self.weight_ih, self.bias_ih) + F.linear(h, W_hh, self.bias_hh)  # (B, 4H)
        i, f, g, o = gates.chunk(4, dim=1)
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        c_new = f * c + i * g
        h_new = o * torch.tanh(c_new)
        return (h_new, c_new)


class MinimalCell(Cell):
    """A cell whose gates read x_t alone: h' = a * h + (1 - a) * h~, with the keep share a
    from the cell's ``keep_share`` and the candidate h~ the last H of the gates
    W_ih x + b_ih. Its fast paths are rnnlm.scan's, which read the same two methods."""

    recurrent_weights = False

    def keep_share(self, gates: Tensor, H: int) -> tuple[Tensor, Tensor | None]:
        """a (..., H) from the gate pre-activations (..., G*H), and what `keep_share_backward`
        needs besides a (or None)."""
        raise NotImplementedError

    def keep_share_backward(self, minus_c: Tensor, a: Tensor, saved: Tensor | None, dgates: Tensor) -> None:
        """The gradients wrt the gate pre-activations but h~'s, written into ``dgates``
        (..., G*H), from minus_c = -dL/da * a (overwritten)."""
        raise NotImplementedError

    def forward(self, x: Tensor, state: State, weight_hh: Tensor | None = None) -> State:
        (h,) = state
        gates = F.linear(x, self.weight_ih, self.bias_ih)
        a, _ = self.keep_share(gates, self.hidden_size)
        h_tilde = gates[..., -self.hidden_size:]
        return (a * h + (1 - a) * h_tilde,)

    def sequence(self, x: Tensor, state: State, weight_hh: Tensor | None,
                 ws: fused.Workspace | None = None) -> tuple[Tensor, State]:
        gates = F.linear(x, self.weight_ih, self.bias_ih)  # (T, B, G*H): all steps in one matmul
        y = scan.minimal_layer(self, gates, state[0])
        return y, (y[-1],)

    def token_kernel(self) -> TokenKernel:
        return scan.MinimalToken(self, fused.transposed(self.weight_ih), self.bias_ih)


@register
class MinGRUCell(MinimalCell):
    """minGRU: the GRU without the hidden state in its gates (Feng et al., 2024):

        z  = sigmoid(W_z x + b_z)
        h~ = W_h x + b_h
        h' = (1 - z) * h + z * h~                 (a = 1 - z = sigmoid(-(W_z x + b_z)))

    ``forward(x (B, I), (h,)) -> (h',)``.
    """

    kind = "mingru"
    num_gates = 2

    def keep_share(self, gates: Tensor, H: int) -> tuple[Tensor, None]:
        return torch.neg(gates[..., :H]).sigmoid_(), None

    def keep_share_backward(self, minus_c: Tensor, a: Tensor, saved: None, dgates: Tensor) -> None:
        H = a.shape[-1]
        torch.addcmul(minus_c, minus_c, a, value=-1, out=dgates[..., :H])  # dz_pre = -dL/da * a (1 - a)


@register
class MinLSTMCell(MinimalCell):
    """minLSTM: the LSTM without the hidden state in its gates, and without c (Feng et al., 2024):

        f  = sigmoid(W_f x + b_f),   i = sigmoid(W_i x + b_i),   h~ = W_h x + b_h
        h' = f / (f + i) * h + i / (f + i) * h~   (a = f / (f + i))

    The two gates are normalised to sum to one, so h stays a weighted average of the h~
    seen so far. ``forward(x (B, I), (h,)) -> (h',)``.
    """

    kind = "minlstm"
    num_gates = 3

    def keep_share(self, gates: Tensor, H: int) -> tuple[Tensor, Tensor]:
        f_i = gates[..., : 2 * H].sigmoid()  # (..., 2H): f and i side by side, kept for the backward
        f, i = f_i[..., :H], f_i[..., H:]
        return f / (f + i), f_i

    def keep_share_backward(self, minus_c: Tensor, a: Tensor, f_i: Tensor, dgates: Tensor) -> None:
        # With c = dL/da * a (1 - a): df_pre = c (1 - f), di_pre = -c (1 - i).
        H = a.shape[-1]
        minus_c.addcmul_(minus_c, a, value=-1)
        d_f_i = dgates[..., : 2 * H].unflatten(-1, (2, H))
        m = minus_c.unsqueeze(-2)  # (..., 1, H): the same factor for f and i
        torch.addcmul(m, m, f_i.view_as(d_f_i), value=-1, out=d_f_i)  # -c (1 - f), -c (1 - i)
        d_f_i[..., 0, :].neg_()


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
        kind = cell_class(cell)
        if impl not in IMPLS:
            raise RnnlmError(f"unknown recurrent impl {impl!r}: valid impls are {', '.join(IMPLS)}")
        if not 0.0 <= weight_drop < 1.0:
            raise RnnlmError(f"weight_drop must be in [0, 1), got {weight_drop}")
        if weight_drop > 0 and not kind.recurrent_weights:
            raise RnnlmError(f"weight_drop (DropConnect on W_hh) needs a cell with hidden-to-hidden weights; "
                             f"{cell} has none: set it to 0")
        self.cell_name = cell
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.weight_drop = weight_drop
        self.impl = impl
        self.cell = kind(input_size, hidden_size)
        # The cell's token kernel for `step`, built again whenever a parameter changes.
        self._token_kernel = fused.LayoutCache()
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
        for a cell without W_hh)."""
        if not self.cell.recurrent_weights:
            return None
        w = self.cell.weight_hh
        if self.training and self.weight_drop > 0:
            w = F.dropout(w, self.weight_drop, training=True)
        return w

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        if state is None:
            state = self.init_state(x.shape[1], x.device, x.dtype)
        weight_hh = self._weight_hh()
        if self.impl == "fast":
            return self.cell.sequence(x, tuple(state), weight_hh, ws=self._workspace)
        return self.cell.unroll(x, state, weight_hh)

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        """One time step; lean when no gradient is wanted (generation)."""
        c = self.cell
        needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (x_t, *state, *c.parameters()))
        if needs_grad or (self.training and self.weight_drop > 0) or self.impl == "reference":
            state = c(x_t, state, weight_hh=self._weight_hh())
        else:
            state = self._kernel()(x_t, state)
        return state[0], state

    def stepper(self):
        """`step` for a loop that leaves the weights alone, e.g. generating a text.

        Returns ``step(x_t, state) -> (h, new_state)`` with the cell's token kernel built
        once, here, instead of checking its cache every token: at batch 1 the weights
        streaming through the CPU caches make each line of Python per step cost several
        times what it costs alone. Call it again after a weight changes. Where `step`
        needs autograd, the reference cell or DropConnect, returns `step` itself.
        """
        if torch.is_grad_enabled() or self.training or self.impl == "reference":
            return self.step
        kernel = self._kernel()

        def step(x_t: Tensor, state: State) -> tuple[Tensor, State]:
            state = kernel(x_t, state)
            return state[0], state

        return step

    def _kernel(self) -> TokenKernel:
        """The cell's token kernel for its current weights (see `fused.LayoutCache`)."""
        return self._token_kernel.get(tuple(self.cell.parameters()), self.cell.token_kernel)
