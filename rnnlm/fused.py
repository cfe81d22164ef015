"""The recurrent kernels of ``rnnlm.cells``: whole sequences forward and backward by
hand, and one token at a time without autograd.

Same equations as the cells in ``rnnlm.cells`` (read those first; each cell class names
its kernels here), organised for speed:

* The input projection of all T steps is one large matmul before the time loop, with
  the biases folded in. The loop only does ``h @ W_hh^T`` (into preallocated buffers)
  and the gate arithmetic, in place, saving the gate activations.
* The backward pass through time is written out in a ``torch.autograd.Function`` (as
  cuDNN does): walk back over t collecting the gradients wrt the gate pre-activations
  into a (T, B, G*H) buffer; the loop's only matmul carries dL/dh back through W_hh.
  Then each weight gradient is ONE matmul over all steps, dx one more, the biases a sum.
* Without autograd (eval) the same forward runs and nothing is kept.
* One token (generation): `RNNToken`, `GRUToken`, `LSTMToken` hold the weights laid out
  once (`LayoutCache` keeps them until a weight changes) and the gate buffers.

Two CPU-only measures, each chosen per device (CUDA gets plain torch ops, which its
caching allocator and cuBLAS already serve well): the time loops multiply by a weight
packed once per call (`_LoopMatmul`: MKL's packed GEMM in float32, oneDNN's reordered
weight in bfloat16), and large buffers are reused between calls (`Workspace`). In
float32 the rnn and gru backward loops' ``dgates @ W_hh`` is a plain ``addmm``: W_hh's
row-major layout is already the one the product wants there, and packing would first
need a transposed copy (docs/speed.md has the timings); the LSTM's, and every loop's in
bfloat16, is packed.

Notation as in the cells: gates i, f, g, o (lstm) and r, z, n (gru); ``*_pre`` is a
gradient wrt a gate's pre-activation; dX means dL/dX.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

# A private but long-standing API (torch uses it itself); without it, buffers aren't reused.
_storage_use_count = getattr(torch._C, "_storage_Use_Count", None)


class Workspace:
    """Large CPU buffers kept from one call to the next, so their memory stays mapped.

    Why: the CPU allocator hands large blocks back to the OS when they are freed, so
    every training step would write into fresh pages, and the first touch of each 4 KB
    page is a page fault: tens of thousands of faults per step for a two-layer LSTM,
    a sizeable share of the step (docs/speed.md).

    A buffer is handed out again only when nothing else holds its storage any more (an
    earlier output still in use, tensors a graph saved with ``retain_graph=True``, a
    view the caller kept): the test is the storage's use count, so reuse never aliases
    live data. CUDA has its own caching allocator: there this just allocates.
    """

    # Smaller blocks come from malloc's heap, which keeps its pages: nothing to gain there.
    MIN_BYTES = 1 << 20

    def __init__(self, max_per_size: int = 8):
        self.max_per_size = max_per_size
        self._storages: dict[int, list] = {}  # nbytes -> storages of exactly that size

    def empty(self, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """An uninitialised contiguous tensor of ``shape``, with ``like``'s dtype and device."""
        nbytes = like.element_size() * math.prod(shape)
        if like.device.type != "cpu" or _storage_use_count is None or nbytes < self.MIN_BYTES:
            return like.new_empty(shape)
        pool = self._storages.setdefault(nbytes, [])
        for storage in pool:
            if _storage_use_count(storage._cdata) == 1:  # only this pool refers to it
                strides = [math.prod(shape[i + 1 :]) for i in range(len(shape))]
                return like.new_empty(0).set_(storage, 0, shape, strides)
        t = like.new_empty(shape)
        if len(pool) < self.max_per_size:
            pool.append(t.untyped_storage())
        return t

    def clear(self) -> None:
        """Let go of every kept buffer."""
        self._storages.clear()


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed large blocks for reuse; True if it took the settings.

    Workspace covers the recurrent layers' buffers, but every step also allocates the
    logits, their softmax and gradients (16 MB each for 1,024 tokens x 4,096 words) through
    plain malloc, which maps blocks above its mmap threshold fresh and trims the heap when
    they are freed: each step then faults their pages in anew, many times as many faults
    per step as with these settings (docs/speed.md). Both settings are needed: a
    trim threshold alone also freezes the mmap threshold low, and the faults multiply.
    Process-wide and harmless elsewhere (not glibc: nothing happens). Freed memory stays
    with the process, up to the largest step's working set.
    """
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the process already runs on
    except (OSError, AttributeError, TypeError):  # no mallopt (macOS), or Windows
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # from glibc's malloc.h
    # 32 MB is the largest mmap threshold glibc accepts on 64-bit; above it, blocks are mapped.
    return bool(mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(M_TRIM_THRESHOLD, 1 << 30))


def _empty(ws: Workspace | None, shape: tuple[int, ...], like: Tensor) -> Tensor:
    return like.new_empty(shape) if ws is None else ws.empty(shape, like)


def transposed(w: Tensor) -> Tensor:
    """W^T laid out for ``h @ W^T``.

    On CPU, MKL multiplies (B, H) @ (H, G*H) several times faster from a row-major copy
    of W^T than from the transposed view of W; the copy costs about one step's matmul
    per forward call. cuBLAS (and MPS) take the view as it is.
    """
    return w.t().contiguous() if w.device.type == "cpu" else w.t()


_MKL_PACKED = torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_linear")
# oneDNN's bf16 kernels, where the CPU has them (elsewhere bf16 stays on addmm).
_ONEDNN_PACKED = (torch.backends.mkldnn.is_available()
                  and all(hasattr(torch.ops.mkldnn, op) for op in ("_linear_pointwise", "_is_mkldnn_bf16_supported"))
                  and torch.ops.mkldnn._is_mkldnn_bf16_supported())


class _LoopMatmul:
    """``acc + v @ W^T`` for many steps with the same W and batch: the time loops' matmul.

    On CPU, W is packed once per call in the layout of the library that multiplies it,
    as torch.compile's CPU backend does, so no step re-packs it (the packing costs less
    than one step): float32 through MKL's packed GEMM (``cblas_sgemm_pack``), faster per
    step than ``addmm`` at training batch sizes; bfloat16 through oneDNN's reordered
    weight, which AMX / AVX-512 BF16 multiply faster than ``addmm``, which reorders W at
    every call (docs/speed.md). Elsewhere (CUDA, float64, small batches, or float32 with
    `pack_float32` off): ``addmm`` with W^T laid out by `transposed`.
    """

    def __init__(self, w: Tensor, batch: int, steps: int, pack_float32: bool = True):
        self.w, self.batch = w, batch  # w: (out, in), as for F.linear
        self.mkl = self.onednn = None
        if w.device.type == "cpu" and batch >= 8 and steps >= 4:  # below that, packing doesn't pay
            try:  # a build without the packed API: plain matmul
                if _MKL_PACKED and pack_float32 and w.dtype == torch.float32:
                    self.mkl = torch.ops.mkl._mkl_reorder_linear_weight(w, batch)
                elif _ONEDNN_PACKED and w.dtype == torch.bfloat16:
                    self.onednn = torch.ops.mkldnn._reorder_linear_weight(w, batch)
            except RuntimeError:
                pass
        if self.mkl is None and self.onednn is None:
            self.w_t = transposed(w)

    def __call__(self, acc: Tensor, v: Tensor, out: Tensor) -> Tensor:
        """out = acc + v @ W^T (``out`` may be ``acc``)."""
        if self.mkl is not None:
            return torch.add(acc, torch.ops.mkl._mkl_linear(v, self.mkl, self.w, None, self.batch), out=out)
        if self.onednn is not None:
            return torch.add(acc, torch.ops.mkldnn._linear_pointwise(v, self.onednn, None, "none", [], ""), out=out)
        return torch.addmm(acc, v, self.w_t, out=out)


def _flat(t: Tensor) -> Tensor:
    """(T, B, N) -> (T*B, N): all time steps as one batch of rows, for one matmul."""
    return t.reshape(-1, t.shape[-1])


def _input_projection(ws, x: Tensor, w_ih: Tensor, bias: Tensor) -> Tensor:
    """x_t W_ih^T + bias for all T steps as one matmul: (T, B, I) -> (T, B, G*H)."""
    T, B, _ = x.shape
    out = _empty(ws, (T, B, w_ih.shape[0]), x)
    # At T*B rows MKL is as fast from the transposed view as from a copy of W^T (which
    # would cost a copy of W per call), unlike the loop's few-row matmuls.
    torch.addmm(bias, _flat(x), w_ih.t(), out=_flat(out))
    return out


def _grad_weight_hh(dgates: Tensor, h0: Tensor, y: Tensor) -> Tensor:
    """dW_hh = sum_t dgates_t^T @ h_{t-1} as one matmul over steps 1..T-1, plus step 0.

    h_{t-1} is y_{t-1} for t >= 1 and h0 for t = 0; this avoids concatenating them.
    """
    return torch.addmm(dgates[0].t() @ h0, _flat(dgates[1:]).t(), _flat(y[:-1]))


# ---------------------------------------------------------------------------- rnn


def rnn_forward(x, h0, w_ih, w_hh, b_ih, b_hh, ws=None):
    """h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh). Returns y, h_T, saved."""
    T, B, _ = x.shape
    H = h0.shape[1]
    xw = _input_projection(ws, x, w_ih, b_ih + b_hh)  # (T, B, H)
    hh = _LoopMatmul(w_hh, B, T)  # h @ W_hh^T
    y = _empty(ws, (T, B, H), x)  # h_1 .. h_T
    XW, Y = xw.unbind(0), y.unbind(0)
    h = h0
    for t in range(T):
        h = hh(XW[t], h, out=Y[t]).tanh_()
    return y, y[-1].clone(), ()


class _RNN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ws, x, h0, w_ih, w_hh, b_ih, b_hh):
        y, h_T, _ = rnn_forward(x, h0, w_ih, w_hh, b_ih, b_hh, ws)
        ctx.ws = ws
        ctx.save_for_backward(x, h0, w_ih, w_hh, y)
        return y, h_T

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh_T):
        x, h0, w_ih, w_hh, y = ctx.saved_tensors
        T, B, _ = y.shape
        dgates = _empty(ctx.ws, y.shape, y)  # (T, B, H) gradient wrt the pre-activation
        dh = torch.empty_like(h0)  # (B, H)
        u = torch.empty_like(h0)
        back = _LoopMatmul(w_hh.t(), B, T, pack_float32=False)  # dgates @ W_hh
        DY, Y, DG = dy.unbind(0), y.unbind(0), dgates.unbind(0)
        for t in reversed(range(T)):
            # dh_t = dy_t + dgates_{t+1} @ W_hh  (the path through step t+1)
            if t == T - 1:
                torch.add(DY[t], dh_T, out=dh)
            else:
                back(DY[t], DG[t + 1], out=dh)
            # dgates_t = dh_t * (1 - h_t^2)  (tanh')
            torch.mul(dh, Y[t], out=u)
            torch.addcmul(dh, u, Y[t], value=-1, out=DG[t])
        dx, dh0, dw_ih, dw_hh, db = _grads_from_gates(ctx, dgates, x, h0, y, w_ih, w_hh)
        return None, dx, dh0, dw_ih, dw_hh, db, db


def _grads_from_gates(ctx, dgates, x, h0, y, w_ih, w_hh):
    """dx, dh0, dW_ih, dW_hh, db from the gate gradients (rnn, lstm): one matmul each."""
    need = ctx.needs_input_grad[1:]  # [0] is the workspace
    dx = None
    if need[0]:
        dx = _empty(ctx.ws, x.shape, x)  # (T, B, I)
        torch.mm(_flat(dgates), w_ih, out=_flat(dx))
    dh0 = dgates[0] @ w_hh if need[1] else None  # (B, H)
    dw_ih = _flat(dgates).t() @ _flat(x)  # (G*H, I)
    dw_hh = _grad_weight_hh(dgates, h0, y)  # (G*H, H)
    db = dgates.sum((0, 1))  # (G*H,) the same for b_ih and b_hh
    return dx, dh0, dw_ih, dw_hh, db


# --------------------------------------------------------------------------- lstm


def lstm_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, ws=None):
    """The LSTM cell over all T steps. Returns y, h_T, c_T, saved."""
    T, B, _ = x.shape
    H = h0.shape[1]
    # x-part of every step's gates, both biases folded in; the loop adds h @ W_hh^T in
    # place and then overwrites the pre-activations with the activations i, f, g, o.
    gates = _input_projection(ws, x, w_ih, b_ih + b_hh)  # (T, B, 4H)
    hh = _LoopMatmul(w_hh, B, T)  # h @ W_hh^T
    y = _empty(ws, (T, B, H), x)  # h_1 .. h_T
    cs = _empty(ws, (T + 1, B, H), x)  # c_0 .. c_T
    cs[0] = c0
    tanh_cs = _empty(ws, (T, B, H), x)  # tanh(c_1) .. tanh(c_T)
    # Per-step views, made once: indexing inside the loop costs more than the views.
    GATES, Y, C, TC = gates.unbind(0), y.unbind(0), cs.unbind(0), tanh_cs.unbind(0)
    IF = gates[..., : 2 * H].unbind(0)  # i and f are adjacent: one sigmoid for both
    I_, F_, G_, O_ = (gates[..., k * H : (k + 1) * H].unbind(0) for k in range(4))
    h = h0
    for t in range(T):
        hh(GATES[t], h, out=GATES[t])  # (B, 4H) pre-activations
        IF[t].sigmoid_()
        G_[t].tanh_()
        O_[t].sigmoid_()
        torch.mul(F_[t], C[t], out=C[t + 1])  # c' = f * c + i * g
        C[t + 1].addcmul_(I_[t], G_[t])
        torch.tanh(C[t + 1], out=TC[t])
        h = torch.mul(O_[t], TC[t], out=Y[t])  # h' = o * tanh(c')
    return y, y[-1].clone(), cs[-1].clone(), (gates, cs, tanh_cs)


class _LSTM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ws, x, h0, c0, w_ih, w_hh, b_ih, b_hh):
        y, h_T, c_T, (gates, cs, tanh_cs) = lstm_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, ws)
        ctx.ws = ws
        ctx.save_for_backward(x, h0, w_ih, w_hh, y, gates, cs, tanh_cs)
        return y, h_T, c_T

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh_T, dc_T):
        x, h0, w_ih, w_hh, y, gates, cs, tanh_cs = ctx.saved_tensors
        T, B, H = y.shape
        # Every factor that multiplies dh_t or dc_t is known from the forward pass, so all
        # steps' factors are computed before the loop, in a few ops over (T, B, H) that use
        # every core; the loop keeps only the recurrence (4 elementwise ops and the matmul):
        #   h_t = o * tanh(c_t):        dc_t += dh_t * o (1 - tanh(c_t)^2)  = dh_t * A_t
        #                               do_pre = dh_t * tanh(c_t) o (1 - o)
        #   c_t = f c_{t-1} + i g:      di_pre = dc_t * g i (1 - i),  df_pre = dc_t * c_{t-1} f (1 - f),
        #                               dg_pre = dc_t * i (1 - g^2),  dc_{t-1} = dc_t * f
        # The factors go into dgates, which the loop then multiplies in place by dh_t or dc_t.
        dgates = _empty(ctx.ws, gates.shape, gates)  # (T, B, 4H) gradients wrt the pre-activations
        i, f, g, o = gates.chunk(4, dim=2)
        d_if, d_ifg = dgates[..., : 2 * H], dgates[..., : 3 * H]
        d_i, d_f, d_g, d_o = dgates.chunk(4, dim=2)
        s_if = gates[..., : 2 * H]  # the sigmoid gates i and f, side by side
        torch.addcmul(s_if, s_if, s_if, value=-1, out=d_if)  # s (1 - s)
        d_i.mul_(g)  # g i (1 - i)
        d_f.mul_(cs[:-1])  # c_{t-1} f (1 - f)
        torch.mul(i, g, out=d_g)
        torch.addcmul(i, d_g, g, value=-1, out=d_g)  # i (1 - g^2)
        torch.addcmul(o, o, o, value=-1, out=d_o)
        d_o.mul_(tanh_cs)  # tanh(c) o (1 - o)
        a = torch.mul(o, tanh_cs, out=_empty(ctx.ws, tanh_cs.shape, tanh_cs))  # reused, as dgates is
        torch.addcmul(o, a, tanh_cs, value=-1, out=a)  # A = o (1 - tanh(c)^2)
        dh = torch.empty_like(h0)  # (B, H) dL/dh_t
        dc = torch.empty_like(h0).copy_(dc_T)  # (B, H) dL/dc_t, carried back through f
        dc_3 = dc.unsqueeze(1)  # (B, 1, H): broadcast over the i, f, g blocks
        # Packed here, unlike the rnn and gru backward: with the LSTM's 4H-wide gates
        # packing is a little faster than the plain addmm (docs/speed.md).
        back = _LoopMatmul(w_hh.t(), B, T)  # dgates @ W_hh
        DY, DG, A, F_ = dy.unbind(0), dgates.unbind(0), a.unbind(0), f.unbind(0)
        dIFG, dO = d_ifg.unflatten(-1, (3, H)).unbind(0), d_o.unbind(0)
        for t in reversed(range(T)):
            # dh_t = dy_t + dgates_{t+1} @ W_hh  (the path through step t+1)
            if t == T - 1:
                torch.add(DY[t], dh_T, out=dh)
            else:
                back(DY[t], DG[t + 1], out=dh)
            dc.addcmul_(dh, A[t])
            dO[t].mul_(dh)
            dIFG[t].mul_(dc_3)
            dc.mul_(F_[t])  # dL/dc_{t-1} through c_t = f * c_{t-1} + ...
        dx, dh0, dw_ih, dw_hh, db = _grads_from_gates(ctx, dgates, x, h0, y, w_ih, w_hh)
        return None, dx, dh0, dc, dw_ih, dw_hh, db, db


# ---------------------------------------------------------------------------- gru


def gru_forward(x, h0, w_ih, w_hh, b_ih, b_hh, ws=None):
    """The GRU cell over all T steps. Returns y, h_T, saved."""
    T, B, _ = x.shape
    H = h0.shape[1]
    # x-part [W_ir x + b_ir, W_iz x + b_iz, W_in x + b_in] of every step; the loop turns
    # it into the activations [r, z, n] in place.
    gi = _input_projection(ws, x, w_ih, b_ih)  # (T, B, 3H)
    # h-part [W_hr h + b_hr, W_hz h + b_hz, W_hn h + b_hn], kept because the backward
    # needs W_hn h + b_hn (the reset gate multiplies it).
    gh = _empty(ws, (T, B, 3 * H), x)  # (T, B, 3H)
    hh = _LoopMatmul(w_hh, B, T)  # h @ W_hh^T
    y = _empty(ws, (T, B, H), x)  # h_1 .. h_T
    GH, Y = gh.unbind(0), y.unbind(0)
    RZ, GH_RZ = gi[..., : 2 * H].unbind(0), gh[..., : 2 * H].unbind(0)
    R, Z, N = (gi[..., k * H : (k + 1) * H].unbind(0) for k in range(3))
    GH_N = gh[..., 2 * H :].unbind(0)
    h = h0
    for t in range(T):
        hh(b_hh, h, out=GH[t])  # (B, 3H)
        RZ[t].add_(GH_RZ[t]).sigmoid_()  # r, z
        N[t].addcmul_(R[t], GH_N[t]).tanh_()  # n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
        h = torch.lerp(N[t], h, Z[t], out=Y[t])  # h' = n + z * (h - n)
    return y, y[-1].clone(), (gi, gh)


class _GRU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ws, x, h0, w_ih, w_hh, b_ih, b_hh):
        y, h_T, (gi, gh) = gru_forward(x, h0, w_ih, w_hh, b_ih, b_hh, ws)
        ctx.ws = ws
        ctx.save_for_backward(x, h0, w_ih, w_hh, y, gi, gh)
        return y, h_T

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh_T):
        x, h0, w_ih, w_hh, y, gi, gh = ctx.saved_tensors
        T, B, H = y.shape
        # dgh (T, B, 3H) is [dr_pre, dz_pre, dhn], where dhn is the gradient wrt
        # W_hn h + b_hn: what flows into W_hh, each step's block contiguous for the loop's
        # matmul. The x side takes dr_pre, dz_pre from it and dn_pre from its own buffer.
        dgh = _empty(ctx.ws, (T, B, 3 * H), x)
        dn_pre = _empty(ctx.ws, (T, B, H), x)
        r, z, n = (gi[..., k * H : (k + 1) * H] for k in range(3))  # (T, B, H) each
        dr, dz, dhn = (dgh[..., k * H : (k + 1) * H] for k in range(3))
        # With h_t = n + z * (h_{t-1} - n) and n = tanh(W_in x + b_in + r * hn), for each t:
        #   dn_pre = dh * (1 - z) * (1 - n^2)
        #   dz_pre = dh * (h_{t-1} - n) * z * (1 - z)
        #   dr_pre = dn_pre * hn * r * (1 - r),   dhn = dn_pre * r
        # Only dh_t comes from the recurrence; the factors it multiplies are computed here
        # for all steps at once, a few large operations instead of several per step.
        h_prev_minus_n = dn_pre  # borrowed until dn_pre's factor is written
        torch.sub(y[:-1], n[1:], out=h_prev_minus_n[1:])
        torch.sub(h0, n[0], out=h_prev_minus_n[0])
        torch.addcmul(z, z, z, value=-1, out=dz).mul_(h_prev_minus_n)  # (h_{t-1} - n) z (1 - z)
        torch.addcmul(r, r, r, value=-1, out=dr).mul_(gh[..., 2 * H :])  # hn r (1 - r)
        torch.mul(n, n, out=dn_pre).sub_(1).mul_(z - 1)  # (1 - n^2) (1 - z)
        dh = torch.empty_like(h0)  # (B, H) dL/dh_t
        carry = torch.empty_like(h0)  # dy_{t-1} + z_t * dh_t: dL/dh_{t-1} but the path through W_hh
        back = _LoopMatmul(w_hh.t(), B, T, pack_float32=False)  # dgh @ W_hh
        DY, DGH, Z, R = dy.unbind(0), dgh.unbind(0), z.unbind(0), r.unbind(0)
        dN, dZ, dR, dHN = dn_pre.unbind(0), dz.unbind(0), dr.unbind(0), dhn.unbind(0)
        for t in reversed(range(T)):
            # dh_t = dy_t + z_{t+1} * dh_{t+1} + dgh_{t+1} @ W_hh
            if t == T - 1:
                torch.add(DY[t], dh_T, out=dh)
            else:
                back(carry, DGH[t + 1], out=dh)
            dN[t].mul_(dh)
            dZ[t].mul_(dh)
            dR[t].mul_(dN[t])
            torch.mul(dN[t], R[t], out=dHN[t])
            if t > 0:
                torch.addcmul(DY[t - 1], dh, Z[t], out=carry)
            else:
                torch.mul(dh, Z[t], out=carry)
        need = ctx.needs_input_grad[1:]  # [0] is the workspace
        d_rz, d_n = _flat(dgh[..., : 2 * H]), _flat(dn_pre)  # x-side gate grads
        xf = _flat(x)
        dx = None
        if need[0]:
            dx = _empty(ctx.ws, x.shape, x)  # (T, B, I)
            torch.mm(d_rz, w_ih[: 2 * H], out=_flat(dx)).addmm_(d_n, w_ih[2 * H :])
        dh0 = torch.addmm(carry, DGH[0], w_hh) if need[1] else None  # (B, H)
        dw_ih = torch.cat([d_rz.t() @ xf, d_n.t() @ xf])  # (3H, I)
        dw_hh = _grad_weight_hh(dgh, h0, y)  # (3H, H)
        db_hh = dgh.sum((0, 1))  # (3H,)
        db_ih = torch.cat([db_hh[: 2 * H], dn_pre.sum((0, 1))])
        return None, dx, dh0, dw_ih, dw_hh, db_ih, db_hh


# ------------------------------------------------------------------------ dispatch


@dataclass(frozen=True)
class Kernel:
    """A cell's whole-sequence path: its autograd Function (forward and backward by hand,
    ``function.apply(ws, x, *state, w_ih, w_hh, b_ih, b_hh)``) and its plain forward
    (nothing saved, ``forward(x, *state, w_ih, w_hh, b_ih, b_hh, ws=ws)``)."""

    function: type
    forward: Callable


RNN = Kernel(_RNN, rnn_forward)
GRU = Kernel(_GRU, gru_forward)
LSTM = Kernel(_LSTM, lstm_forward)


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The autocast dtype in force for this device, or None."""
    if hasattr(torch, "get_autocast_dtype"):  # torch >= 2.4
        if torch.is_autocast_enabled(device_type):
            return torch.get_autocast_dtype(device_type)
        return None
    if device_type == "cuda" and torch.is_autocast_enabled():
        return torch.get_autocast_gpu_dtype()
    return None


# Under torch.compile this runs as it is (a graph break): it is already written out by
# hand, and inductor cannot lower MKL's packed GEMM (it raises a LoweringException).
@torch.compiler.disable
def run(kernel: Kernel, x: Tensor, state: tuple, w_ih, w_hh, b_ih, b_hh,
        ws: Workspace | None = None) -> tuple[Tensor, tuple]:
    """Run a cell's `Kernel` (`RNN`, `GRU` or `LSTM`) over x (T, B, I) from ``state``.

    Returns (y (T, B, H), new_state). Biases are required. Uses the hand-written
    backward when autograd needs one, else just the forward (nothing saved). ``ws``
    keeps large buffers between calls (see `Workspace`).
    """
    inputs = (x, *state, w_ih, w_hh, b_ih, b_hh)
    autocast = _autocast_dtype(x.device.type)
    if autocast is not None:
        # Autocast does not reach inside a Function: cast here, as it would for a matmul.
        inputs = tuple(t.to(autocast) for t in inputs)
        with torch.autocast(x.device.type, enabled=False):
            return run(kernel, inputs[0], tuple(inputs[1:-4]), *inputs[-4:], ws=ws)
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        y, *new_state = kernel.function.apply(ws, *inputs)
    else:
        y, *new_state, _saved = kernel.forward(*inputs, ws=ws)
    return y, tuple(new_state)




# ------------------------------------------------------------- one token (generation)


class LayoutCache:
    """A value built from some parameters (their layout for one-token steps), rebuilt only
    when one of them changes.

    Generation runs one token at a time; re-laying out the weights for each would cost
    more than the token. The key holds each parameter's storage address, version counter
    and dtype, so an optimizer step, ``load_state_dict`` or ``.to(device)`` rebuilds it.
    """

    def __init__(self):
        self._key: tuple | None = None
        self._value = None

    def get(self, params: tuple, build: Callable[[], object]):
        """``build()`` (run without autograd) when a parameter changed since the last call, else its value then."""
        key = tuple((p.data_ptr(), p._version, p.dtype) for p in params)
        if key != self._key:
            with torch.no_grad():
                self._value = build()
            self._key = key
        return self._value


class _TokenKernel:
    """``new_state = kernel(x (B, I), state)``: one step of a cell without autograd.

    Holds W_ih^T and W_hh^T laid out by `transposed`, and, for the batch shape of the last
    call, the gate buffers with their slices made once (`_buffers`): at batch 1 a slice
    costs about as much as the elementwise op that uses it. The returned state is always
    a new tensor; only the gate buffers are reused, so a kernel is for one loop at a time
    (not for threads sharing it).
    """

    def __init__(self, w_ih: Tensor, w_hh: Tensor, b_x: Tensor, b_h: Tensor | None = None):
        self.w_ih_t, self.w_hh_t, self.b_x, self.b_h = transposed(w_ih), transposed(w_hh), b_x, b_h
        self._key: tuple | None = None

    def _buffers(self, x: Tensor) -> None:
        """(Re)make the gate buffer for x's batch size, device and dtype; subclasses add their slices."""
        self.gates = torch.empty(x.shape[0], self.w_hh_t.shape[1], device=x.device, dtype=x.dtype)
        self._key = (x.shape[0], x.device, x.dtype)

    def _ready(self, x: Tensor) -> Tensor:
        """The gate buffer for x's shape (made again when it changed)."""
        if (x.shape[0], x.device, x.dtype) != self._key:
            self._buffers(x)
        return self.gates


class RNNToken(_TokenKernel):
    """One Elman step: h' = tanh(x W_ih^T + h W_hh^T + b_ih + b_hh), the biases added up once."""

    def __init__(self, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor):
        super().__init__(w_ih, w_hh, b_ih + b_hh)

    def __call__(self, x: Tensor, state: tuple) -> tuple:
        gates = self._ready(x)
        return (torch.addmm(self.b_x, x, self.w_ih_t, out=gates).addmm_(state[0], self.w_hh_t).tanh(),)


def _lstm_ifog(w: Tensor) -> Tensor:
    """Rows of an LSTM weight or bias from PyTorch's gate order (i, f, g, o) to (i, f, o, g).

    `LSTMToken` can then squash the three sigmoid gates with one call and the cell input
    with one more; at batch 1 each elementwise call costs about as much as a small matrix product.
    """
    i, f, g, o = w.chunk(4, dim=0)
    return torch.cat([i, f, o, g])


class LSTMToken(_TokenKernel):
    """One LSTM step, the gates in (i, f, o, g) order (`_lstm_ifog`), the biases added up once."""

    def __init__(self, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor):
        super().__init__(_lstm_ifog(w_ih), _lstm_ifog(w_hh), _lstm_ifog(b_ih) + _lstm_ifog(b_hh))

    def _buffers(self, x: Tensor) -> None:
        super()._buffers(x)
        H, gates = self.w_hh_t.shape[0], self.gates
        self.ifo, self.g = gates[:, : 3 * H], gates[:, 3 * H :]
        self.i, self.f, self.o = gates[:, :H], gates[:, H : 2 * H], gates[:, 2 * H : 3 * H]

    def __call__(self, x: Tensor, state: tuple) -> tuple:
        gates = self._ready(x)
        torch.addmm(self.b_x, x, self.w_ih_t, out=gates).addmm_(state[0], self.w_hh_t)
        self.ifo.sigmoid_()
        self.g.tanh_()
        c_new = torch.mul(self.f, state[1]).addcmul_(self.i, self.g)
        return (torch.tanh(c_new).mul_(self.o), c_new)


class GRUToken(_TokenKernel):
    """One GRU step. The biases stay apart (b_hn sits inside r * (W_hn h + b_hn)), and the
    h-side gates have a buffer of their own."""

    def __init__(self, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor):
        super().__init__(w_ih, w_hh, b_ih.clone(), b_hh.clone())

    def _buffers(self, x: Tensor) -> None:
        super()._buffers(x)
        H, gates = self.w_hh_t.shape[0], self.gates
        gh = torch.empty_like(gates)
        self.gh, self.gx_rz, self.gh_rz = gh, gates[:, : 2 * H], gh[:, : 2 * H]
        self.r, self.z, self.gx_n, self.gh_n = gates[:, :H], gates[:, H : 2 * H], gates[:, 2 * H :], gh[:, 2 * H :]

    def __call__(self, x: Tensor, state: tuple) -> tuple:
        gates, h = self._ready(x), state[0]
        torch.addmm(self.b_x, x, self.w_ih_t, out=gates)  # W_i* x + b_i*, gates (r, z, n)
        torch.addmm(self.b_h, h, self.w_hh_t, out=self.gh)  # W_h* h + b_h*
        self.gx_rz.add_(self.gh_rz).sigmoid_()
        n = self.gx_n.addcmul_(self.r, self.gh_n).tanh_()  # tanh(x_n + r * h_n)
        return (torch.lerp(n, h, self.z),)  # h' = n + z * (h - n)
