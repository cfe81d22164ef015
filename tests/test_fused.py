"""The fast path's machinery (rnnlm.fused): `keep_freed_memory` makes large tensors freed
in one step reuse their pages in the next, and `run` under autocast runs the recurrence in
the low precision while the gradients land in the fp32 weights. The fast path's numbers
against the reference cells are in test_cells.py."""

import resource
import sys

import pytest
import torch

from rnnlm import fused
from rnnlm.config import ModelConfig
from rnnlm.model import RNNLM


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
def test_large_tensors_reuse_freed_pages():
    if not fused.keep_freed_memory():
        pytest.skip("this C library has no mallopt")
    a, w = torch.randn(1024, 448), torch.randn(4096, 448)

    def step():  # the default config's logits and their softmax: 16 MB each, freed at the end
        logits = a @ w.t()
        return (torch.softmax(logits, 1) - torch.log_softmax(logits, 1).exp()).sum()

    # Warm up: the heap first grows to the steady state's size, faulting in each new page
    # once; under pytest that takes up to ~6 calls (measured), not one.
    for _ in range(8):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        step()
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10
    # Measured without the settings: ~4,500 page faults (4 KB each) per call, the freed
    # 16 MB blocks mapped anew; with them 0 once warm (409.6 when one block's first touch
    # still falls in the window).
    assert faults < 2000


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("batch", [3, 16])  # 16: the loops' matmuls run on packed weights (fused._LoopMatmul)
def test_fast_path_under_autocast_gives_fp32_gradients_close_to_fp32(cell, batch):
    # CUDA is not available here; CPU autocast to bfloat16 exercises the same casting in fused.run.
    torch.manual_seed(0)
    model = RNNLM(13, ModelConfig(cell=cell, hidden_size=16, num_layers=2, dropout=0.0))
    x = torch.randint(0, 13, (batch, 10))

    def loss_and_grads():
        model.zero_grad()
        logits, state = model(x)
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, 13), x.reshape(-1))
        loss.backward()
        return loss.detach(), state, [p.grad.clone() for p in model.parameters()]

    loss32, _, grads32 = loss_and_grads()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss16, state16, grads16 = loss_and_grads()
    assert state16[0][0].dtype == torch.bfloat16  # the recurrence really ran in bf16
    assert loss16 == pytest.approx(float(loss32), abs=0.05)
    for g32, g16, p in zip(grads32, grads16, model.parameters()):
        assert g16.dtype == p.dtype == torch.float32  # gradients land in the fp32 master weights
        assert torch.isfinite(g16).all()
        cos = torch.nn.functional.cosine_similarity(g32.flatten(), g16.flatten(), dim=0)
        assert cos > 0.98, cos


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("pack_float32", [True, False])
def test_step_matmul_is_acc_plus_v_times_w_transposed(dtype, pack_float32):
    torch.manual_seed(0)
    w, v, acc = torch.randn(48, 32), torch.randn(16, 32), torch.randn(16, 48)
    mm = fused._LoopMatmul(w.to(dtype), batch=16, steps=8, pack_float32=pack_float32)
    if dtype == torch.bfloat16 and fused._ONEDNN_PACKED:
        assert mm.onednn is not None  # the reordered weight, not addmm's per-call reorder
    if dtype == torch.float32 and fused._MKL_PACKED:
        assert (mm.mkl is not None) == pack_float32
    out = mm(acc.to(dtype), v.to(dtype), out=torch.empty(16, 48, dtype=dtype))
    expected = acc + v.to(dtype).float() @ w.to(dtype).float().t()
    tol = 1e-5 if dtype == torch.float32 else 0.1
    torch.testing.assert_close(out.float(), expected, atol=tol, rtol=tol / 10)
