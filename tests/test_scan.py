"""The minimal cells' linear recurrence (rnnlm.scan): y_t = a_t * y_{t-1} + b_t forward,
its hand-written backward against autograd through the plain loop, and float32 at least
whatever the inputs' precision."""

import pytest
import torch

from rnnlm.scan import linear_recurrence

T, B, H = 6, 3, 5


def inputs(dtype=torch.float64, steps=T, requires_grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(steps, B, H, generator=g, dtype=dtype)  # in (0, 1), as 1 - z and f / (f + i) are
    b = torch.randn(steps, B, H, generator=g, dtype=dtype)
    h0 = torch.randn(B, H, generator=g, dtype=dtype)
    return [t.requires_grad_(requires_grad) for t in (a, b, h0)]


def by_the_loop(a, b, h0):
    """The recurrence as written, step by step with plain autograd."""
    h, ys = h0, []
    for t in range(a.size(0)):
        h = a[t] * h + b[t]
        ys.append(h)
    return torch.stack(ys)


@pytest.mark.parametrize("steps", [1, T])
def test_forward_is_the_recurrence(steps):
    a, b, h0 = inputs(steps=steps)
    torch.testing.assert_close(linear_recurrence(a, b, h0), by_the_loop(a, b, h0))


@pytest.mark.parametrize("steps", [1, T])
def test_backward_matches_autograd_through_the_loop(steps):
    a, b, h0 = inputs(steps=steps, requires_grad=True)
    dy = torch.randn(steps, B, H, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ours = torch.autograd.grad(linear_recurrence(a, b, h0), (a, b, h0), dy)
    expected = torch.autograd.grad(by_the_loop(a, b, h0), (a, b, h0), dy)
    for name, got, want in zip(("da", "db", "dh0"), ours, expected):
        torch.testing.assert_close(got, want, msg=name)


def test_gradcheck():
    assert torch.autograd.gradcheck(linear_recurrence, inputs(steps=4, requires_grad=True))


def test_runs_in_float32_at_least():
    a, b, h0 = inputs(dtype=torch.float32)
    expected = linear_recurrence(a, b, h0)
    low = linear_recurrence(a.bfloat16(), b.bfloat16(), h0.bfloat16())
    assert low.dtype == torch.float32  # the carried state is not rounded to bf16 at every step
    torch.testing.assert_close(low, linear_recurrence(*(t.bfloat16().float() for t in (a, b, h0))))
    torch.testing.assert_close(low, expected, atol=0.05, rtol=0.05)
    assert linear_recurrence(*inputs(dtype=torch.float64)).dtype == torch.float64


def test_gradients_reach_bf16_inputs_in_their_own_precision():
    a, b, h0 = (t.bfloat16().requires_grad_() for t in inputs(dtype=torch.float32))
    linear_recurrence(a, b, h0).sum().backward()
    assert all(t.grad is not None and t.grad.dtype == torch.bfloat16 for t in (a, b, h0))


def test_without_autograd_the_same_numbers():
    a, b, h0 = inputs(requires_grad=True)
    with torch.no_grad():
        y = linear_recurrence(a, b, h0)
    assert not y.requires_grad
    torch.testing.assert_close(y, linear_recurrence(a, b, h0).detach())


def test_minlstm_coefficients_match_the_cell_and_pass_gradcheck():
    from rnnlm.cells import MinLSTMCell
    from rnnlm.scan import minlstm_coefficients

    torch.manual_seed(0)
    cell = MinLSTMCell(6, 4).double()
    x = torch.randn(5, 3, 6, dtype=torch.float64, requires_grad=True)
    gates = torch.nn.functional.linear(x, cell.weight_ih, cell.bias_ih)
    fast, ref = minlstm_coefficients(gates), cell.coefficients(x)
    assert all(torch.allclose(f, r, atol=1e-12) for f, r in zip(fast, ref))
    w = [torch.randn_like(t) for t in ref]
    g_fast = torch.autograd.grad(sum((t * v).sum() for t, v in zip(fast, w)), [x, *cell.parameters()])
    g_ref = torch.autograd.grad(sum((t * v).sum() for t, v in zip(ref, w)), [x, *cell.parameters()])
    assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(g_fast, g_ref))
    assert torch.autograd.gradcheck(minlstm_coefficients, (gates.detach().requires_grad_(),))
