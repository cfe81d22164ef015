"""The minimal cells' fast path (minGRU, minLSTM): every step of a layer from its gate
pre-activations, with the backward pass written by hand, and one token at a time.

Both cells keep a share a_t of the state and take the rest from a candidate h~_t:

    h_t = a_t * h_{t-1} + (1 - a_t) * h~_t       (a_t and h~_t read x_t alone)

Each cell says how a is made from its gates, and how a gradient wrt a goes back to them
(its `KeepGate`: the methods ``keep_share`` and ``keep_share_backward`` of
``rnnlm.cells.MinGRUCell`` and ``MinLSTMCell``); everything else is the same for both.
Because a and h~ do not depend on h, they are computed for all steps at once, and the
time loop holds one fused op per step (torch.lerp). The backward runs the recurrence in
reverse, with g_t = dL/dh_t through every path:

    g_t = dL/dy_t + a_{t+1} * g_{t+1}                 (g_{T-1} = dL/dy_{T-1})
    dL/dh~_t = (1 - a_t) * g_t,   dL/da_t = g_t * (h_{t-1} - h~_t),   dL/dh_0 = a_0 * g_0

and then through the keep gate, with c = dL/da * a * (1 - a) (the cell's
``keep_share_backward``).

Written out, this is one pass over the (T, B, H) tensors per term, where autograd would
keep and run the graph of T small operations and of each elementwise step on its own.
The state is carried in float32 (or float64) even under bf16 autocast: an update that is
small next to h would be rounded away in bf16.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


class KeepGate(Protocol):
    """How a minimal cell makes its keep share a from its gate pre-activations (..., G*H),
    the last H of which are the candidate h~."""

    def keep_share(self, gates: Tensor, H: int) -> tuple[Tensor, Tensor | None]:
        """a (..., H), and what `keep_share_backward` needs besides a (or None)."""

    def keep_share_backward(self, minus_c: Tensor, a: Tensor, saved: Tensor | None, dgates: Tensor) -> None:
        """Write the gradients wrt the gates' pre-activations (all but h~) into ``dgates``,
        from ``minus_c`` = -dL/da * a (it may be overwritten)."""


def _forward(a: Tensor, h_tilde: Tensor, h0: Tensor) -> Tensor:
    """y (T, B, H) with y_t = a_t * y_{t-1} + (1 - a_t) * h~_t, y_{-1} = h0."""
    y = torch.empty_like(a)
    A, C, Y = a.unbind(0), h_tilde.unbind(0), y.unbind(0)
    h = h0
    for t in range(len(Y)):
        h = torch.lerp(C[t], h, A[t], out=Y[t])  # h~ + a (h - h~)
    return y


def _reverse(a: Tensor, dy: Tensor) -> Tensor:
    """g (T, B, H) with g_t = dy_t + a_{t+1} * g_{t+1}: dL/dh_t through every path."""
    g = torch.empty_like(dy)
    A, DY, G = a.unbind(0), dy.unbind(0), g.unbind(0)
    T = len(G)
    G[T - 1].copy_(DY[T - 1])
    for t in reversed(range(T - 1)):
        torch.addcmul(DY[t], A[t + 1], G[t + 1], out=G[t])
    return g


class _MinimalLayer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cell: KeepGate, gates: Tensor, h0: Tensor) -> Tensor:
        H = h0.shape[-1]
        a, saved = cell.keep_share(gates, H)
        h_tilde = gates[..., -H:]
        y = _forward(a, h_tilde, h0)
        ctx.cell, ctx.gates_width = cell, gates.shape[-1]
        ctx.save_for_backward(a, h_tilde, h0, y, saved)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: Tensor):
        a, h_tilde, h0, y, saved = ctx.saved_tensors
        H = h0.shape[-1]
        g = _reverse(a, dy)
        dgates = torch.empty(*g.shape[:-1], ctx.gates_width, dtype=g.dtype, device=g.device)
        torch.addcmul(g, g, a, value=-1, out=dgates[..., -H:])  # dh~ = g (1 - a)
        minus_c = torch.empty_like(g)  # -dL/da * a, then * (1 - a): h~ - h_{t-1}, without concatenating h0 and y
        torch.sub(h_tilde[0], h0, out=minus_c[0])
        torch.sub(h_tilde[1:], y[:-1], out=minus_c[1:])
        minus_c.mul_(g).mul_(a)
        ctx.cell.keep_share_backward(minus_c, a, saved, dgates)
        return None, dgates, a[0] * g[0]


def minimal_layer(cell: KeepGate, gates: Tensor, h0: Tensor) -> Tensor:
    """The outputs y (T, B, H) of a minimal cell's layer from its gate pre-activations
    `gates` (T, B, G*H) = W_ih x + b_ih of all steps and its first state h0 (B, H).

    Runs in float32 at least (the inputs are cast up, the result stays float32), with
    the hand-written backward when autograd needs one.
    """
    dtype = torch.promote_types(torch.promote_types(gates.dtype, h0.dtype), torch.float32)
    gates, h0 = gates.to(dtype), h0.to(dtype)
    if torch.is_grad_enabled() and (gates.requires_grad or h0.requires_grad):
        return _MinimalLayer.apply(cell, gates, h0)
    H = h0.shape[-1]
    return _forward(cell.keep_share(gates, H)[0], gates[..., -H:], h0)


class MinimalToken:
    """``new_state = kernel(x (B, I), state)``: one step of a minimal cell without autograd,
    h' = lerp(h~, h, a) as in the layer's time loop, from W_ih^T laid out for the device
    (``fused.transposed``) and b_ih."""

    def __init__(self, cell: KeepGate, w_ih_t: Tensor, b_ih: Tensor):
        self.cell, self.w_ih_t, self.b = cell, w_ih_t, b_ih.clone()

    def __call__(self, x: Tensor, state: tuple) -> tuple:
        h = state[0]
        H = h.shape[-1]
        gates = torch.addmm(self.b, x, self.w_ih_t)  # (B, G*H), h~ last
        return (torch.lerp(gates[:, -H:], h, self.cell.keep_share(gates, H)[0]),)
