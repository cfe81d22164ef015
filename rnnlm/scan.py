"""The minimal cells' fast path (minGRU, minLSTM): the linear recurrence, with its
backward by hand, and minLSTM's coefficients for all steps at once.

    h_t = a_t * h_{t-1} + b_t          (elementwise; a_t, b_t computed from x_t alone)

Because a_t and b_t do not depend on h, everything but this recurrence runs over all
steps at once (cells.MinGRUCell.coefficients); here only one fused multiply-add per step
is left, forward and backward. The backward is the same recurrence run in reverse:

    g_t    = dL/dy_t + a_{t+1} * g_{t+1}      (g_{T-1} = dL/dy_{T-1} + dL/dh_T)
    dL/da_t = g_t * h_{t-1},   dL/db_t = g_t,   dL/dh_0 = a_0 * g_0

so it keeps no graph of T small operations, as autograd through a Python loop would.
The state is carried in float32 (or float64) even under bf16 autocast: an update
a * h + b that is small next to h would be rounded away in bf16.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


def _forward(a: Tensor, b: Tensor, h0: Tensor) -> Tensor:
    """y (T, B, H) with y_t = a_t * y_{t-1} + b_t, y_{-1} = h0."""
    y = torch.empty_like(b)
    A, B, Y = a.unbind(0), b.unbind(0), y.unbind(0)
    h = h0
    for t in range(len(Y)):
        h = torch.addcmul(B[t], A[t], h, out=Y[t])
    return y


class _LinearRecurrence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, h0: Tensor) -> Tensor:
        y = _forward(a, b, h0)
        ctx.save_for_backward(a, h0, y)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: Tensor):
        a, h0, y = ctx.saved_tensors
        g = torch.empty_like(y)  # g_t = dL/dh_t through every path
        A, DY, G = a.unbind(0), dy.unbind(0), g.unbind(0)
        T = len(G)
        G[T - 1].copy_(DY[T - 1])
        for t in reversed(range(T - 1)):
            torch.addcmul(DY[t], A[t + 1], G[t + 1], out=G[t])
        da = torch.empty_like(g)  # g_t * h_{t-1}, without concatenating h0 and y
        torch.mul(G[0], h0, out=da[0])
        torch.mul(g[1:], y[:-1], out=da[1:])
        dh0 = A[0] * G[0]
        return da, g, dh0


def linear_recurrence(a: Tensor, b: Tensor, h0: Tensor) -> Tensor:
    """y_t = a_t * y_{t-1} + b_t over a time-major (T, B, H) sequence from h0 (B, H).

    Runs in float32 at least (the inputs are cast up, the result stays float32), with
    the hand-written backward when autograd needs one.
    """
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    a, b, h0 = a.to(dtype), b.to(dtype), h0.to(dtype)
    if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad or h0.requires_grad):
        return _LinearRecurrence.apply(a, b, h0)
    return _forward(a, b, h0)


class _MinLSTMCoefficients(torch.autograd.Function):
    """a = f / (f + i), b = i / (f + i) * h~ from the pre-activations (f, i, h~), with
    f = sigmoid(f_pre), i = sigmoid(i_pre). With w = 1 - a = i / (f + i), the backward
    is, by hand (autograd would keep and run twice the elementwise passes):

        dw = db * h~ - da,     dh~ = db * w,     c = dw * a * w
        di_pre = c * (1 - i),  df_pre = -c * (1 - f)
    """

    @staticmethod
    def forward(ctx, gates: Tensor):
        H = gates.shape[-1] // 3
        f_i = gates[..., : 2 * H].sigmoid()
        f, i, h_tilde = f_i[..., :H], f_i[..., H:], gates[..., 2 * H:]
        a = f / (f + i)
        b = torch.addcmul(h_tilde, a, h_tilde, value=-1)  # (1 - a) * h~
        ctx.save_for_backward(f_i, a, h_tilde)
        return a, b

    @staticmethod
    @once_differentiable
    def backward(ctx, da: Tensor, db: Tensor):
        f_i, a, h_tilde = ctx.saved_tensors
        H = a.shape[-1]
        dgates = torch.empty(*a.shape[:-1], 3 * H, dtype=a.dtype, device=a.device)
        torch.addcmul(db, db, a, value=-1, out=dgates[..., 2 * H:])  # dh~ = db * w = db (1 - a)
        c = torch.mul(db, h_tilde).sub_(da).mul_(a)  # dw * a ...
        c.addcmul_(c, a, value=-1)  # ... * w
        c = c.unsqueeze(-2)  # (..., 1, H): the same factor for f and i
        d_f_i = dgates[..., : 2 * H].view(*a.shape[:-1], 2, H)
        torch.addcmul(c, c, f_i.view_as(d_f_i), value=-1, out=d_f_i)  # c (1 - f), c (1 - i)
        d_f_i[..., 0, :].neg_()  # df_pre = -c (1 - f)
        return dgates


def minlstm_coefficients(gates: Tensor) -> tuple[Tensor, Tensor]:
    """minLSTM's a and b (cells.MinLSTMCell.coefficients) from its pre-activations
    (..., 3H) = W x + b for all steps, with the hand-written backward."""
    return _MinLSTMCoefficients.apply(gates)

