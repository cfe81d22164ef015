"""On a CUDA GPU: every cell kind trains in fp32 and bf16, resumes, generates, and its
checkpoint loads on the CPU. Skipped (with the reason) where there is no GPU."""

import pytest
import torch

from rnnlm.cells import RecurrentLayer
from rnnlm.checkpoint import load_checkpoint
from rnnlm.cells import CELLS
from rnnlm.inference import load_model
from rnnlm.train import train
from tests.conftest import tiny_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none here)")

PRECISIONS = ["fp32", "bf16"]


def gpu_config(tmp_path, text_file, cell, precision, *overrides):
    return tiny_config(tmp_path, text_file, f"model.cell={cell}", f"train.precision={precision}",
                       "train.device=cuda", "train.max_steps=12", "train.eval_every=6",
                       "train.checkpoint_every=6", *overrides)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("cell", tuple(CELLS))
def test_every_cell_trains_on_the_gpu_and_generates_on_the_cpu(tmp_path, text_file, cell, precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    result = train(gpu_config(tmp_path, text_file, cell, precision))
    assert result["steps"] == 12 and result["valid"]["loss"] == result["valid"]["loss"]  # finite, not NaN
    ckpt = load_checkpoint(tmp_path / "run" / "best.pt", map_location="cpu")
    assert all(t.device.type == "cpu" for t in ckpt["model"].values())
    on_gpu = load_model(tmp_path / "run" / "best.pt", device="cuda")
    on_cpu = load_model(tmp_path / "run" / "best.pt", device="cpu")
    assert on_gpu.generate("The army", max_new_tokens=10, temperature=0) == \
        on_cpu.generate("The army", max_new_tokens=10, temperature=0)


@pytest.mark.parametrize("cell", ["gru", "mingru"])
def test_resume_on_the_gpu_continues_where_it_stopped(tmp_path, text_file, cell):
    straight = train(gpu_config(tmp_path / "a", text_file, cell, "fp32"))
    train(gpu_config(tmp_path / "b", text_file, cell, "fp32", "train.max_steps=6"))
    resumed = train(gpu_config(tmp_path / "b", text_file, cell, "fp32", "train.resume=true"))
    assert resumed["steps"] == straight["steps"] == 12
    assert abs(resumed["valid"]["loss"] - straight["valid"]["loss"]) < 1e-3


@pytest.mark.parametrize("cell", tuple(CELLS))
def test_fast_path_matches_the_reference_on_the_gpu(cell):
    torch.manual_seed(0)
    fast = RecurrentLayer(cell, 16, 32).cuda()
    ref = RecurrentLayer(cell, 16, 32, impl="reference").cuda()
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(20, 4, 16, device="cuda", requires_grad=True)
    y_fast, _ = fast(x)
    y_ref, _ = ref(x)
    assert torch.allclose(y_fast, y_ref, atol=1e-5)
    g_fast = torch.autograd.grad(y_fast.square().sum(), [x, *fast.parameters()])
    g_ref = torch.autograd.grad(y_ref.square().sum(), [x, *ref.parameters()])
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(g_fast, g_ref))
