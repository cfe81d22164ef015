"""The minimal cells' fast path (rnnlm.scan): a layer's outputs from its gate
pre-activations, the hand-written backward against autograd through the plain per-step
loop of the equations, gradcheck in float64, and float32 at least whatever the inputs'
precision. `minimal_layer` takes the cell (its keep gate), the test the cell's name."""

import pytest
import torch

from rnnlm import scan
from rnnlm.cells import CELLS as CELL_CLASSES

T, B, H = 6, 3, 5
CELLS = ["mingru", "minlstm"]
NUM_GATES = {cell: CELL_CLASSES[cell].num_gates for cell in CELLS}


def minimal_layer(cell: str, gates, h0):
    """scan.minimal_layer with the keep gate of the cell named `cell`."""
    return scan.minimal_layer(CELL_CLASSES[cell](1, H), gates, h0)


def inputs(cell, dtype=torch.float64, steps=T, requires_grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    gates = 2 * torch.randn(steps, B, NUM_GATES[cell] * H, generator=g, dtype=dtype)
    h0 = torch.randn(B, H, generator=g, dtype=dtype)
    return [t.requires_grad_(requires_grad) for t in (gates, h0)]


def by_the_loop(cell, gates, h0):
    """The cell's equations, step by step with plain autograd."""
    h, ys = h0, []
    for x in gates.unbind(0):
        if cell == "mingru":
            z, h_tilde = x.chunk(2, dim=-1)
            h = (1 - torch.sigmoid(z)) * h + torch.sigmoid(z) * h_tilde
        else:
            f, i, h_tilde = x.chunk(3, dim=-1)
            f, i = torch.sigmoid(f), torch.sigmoid(i)
            h = f / (f + i) * h + i / (f + i) * h_tilde
        ys.append(h)
    return torch.stack(ys)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("steps", [1, T])
def test_forward_is_the_recurrence(cell, steps):
    gates, h0 = inputs(cell, steps=steps)
    torch.testing.assert_close(minimal_layer(cell, gates, h0), by_the_loop(cell, gates, h0))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("steps", [1, T])
def test_backward_matches_autograd_through_the_loop(cell, steps):
    gates, h0 = inputs(cell, steps=steps, requires_grad=True)
    dy = torch.randn(steps, B, H, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ours = torch.autograd.grad(minimal_layer(cell, gates, h0), (gates, h0), dy)
    expected = torch.autograd.grad(by_the_loop(cell, gates, h0), (gates, h0), dy)
    for name, got, want in zip(("dgates", "dh0"), ours, expected):
        torch.testing.assert_close(got, want, msg=name)


@pytest.mark.parametrize("cell", CELLS)
def test_gradcheck(cell):
    assert torch.autograd.gradcheck(lambda g, h: minimal_layer(cell, g, h), inputs(cell, steps=4, requires_grad=True))


@pytest.mark.parametrize("cell", CELLS)
def test_runs_in_float32_at_least(cell):
    gates, h0 = inputs(cell, dtype=torch.float32)
    expected = minimal_layer(cell, gates, h0)
    low = minimal_layer(cell, gates.bfloat16(), h0.bfloat16())
    assert low.dtype == torch.float32  # the carried state is not rounded to bf16 at every step
    torch.testing.assert_close(low, minimal_layer(cell, gates.bfloat16().float(), h0.bfloat16().float()))
    torch.testing.assert_close(low, expected, atol=0.05, rtol=0.05)
    assert minimal_layer(cell, *inputs(cell, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("cell", CELLS)
def test_gradients_reach_bf16_inputs_in_their_own_precision(cell):
    gates, h0 = (t.bfloat16().requires_grad_() for t in inputs(cell, dtype=torch.float32))
    minimal_layer(cell, gates, h0).sum().backward()
    assert all(t.grad is not None and t.grad.dtype == torch.bfloat16 for t in (gates, h0))


@pytest.mark.parametrize("cell", CELLS)
def test_without_autograd_the_same_numbers(cell):
    gates, h0 = inputs(cell, requires_grad=True)
    with torch.no_grad():
        y = minimal_layer(cell, gates, h0)
    assert not y.requires_grad
    torch.testing.assert_close(y, minimal_layer(cell, gates, h0).detach())
