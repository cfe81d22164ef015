"""The cells against torch's references, the minimal cells (minGRU, minLSTM) against their
equations, and the fast path against the reference path."""

import pytest
import torch

from rnnlm import fused
from rnnlm.cells import CELLS, GRUCell, LSTMCell, MinGRUCell, MinLSTMCell, RecurrentLayer, RNNCell
from rnnlm.errors import RnnlmError

KINDS = ["rnn", "gru", "lstm"]
TORCH_CELL = {"rnn": torch.nn.RNNCell, "gru": torch.nn.GRUCell, "lstm": torch.nn.LSTMCell}
TORCH_LAYER = {"rnn": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}
PARAMS = ["weight_ih", "weight_hh", "bias_ih", "bias_hh"]
T, B, I, H = 7, 3, 5, 6


def num_states(kind):
    return 2 if kind == "lstm" else 1


def random_state(kind, batch=B, hidden=H, dtype=torch.float32):
    return tuple(torch.randn(batch, hidden, dtype=dtype, requires_grad=True) for _ in range(num_states(kind)))


def grads(outputs, inputs, seed=0):
    """Gradients of a random linear function of ``outputs`` wrt ``inputs``."""
    g = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in outputs)
    return torch.autograd.grad(loss, inputs, retain_graph=True)


def assert_close_all(xs, ys, atol=1e-5):
    assert len(xs) == len(ys)
    for a, b in zip(xs, ys):
        torch.testing.assert_close(a, b, atol=atol, rtol=1e-5)


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


def test_registry():
    assert CELLS == {"rnn": RNNCell, "gru": GRUCell, "lstm": LSTMCell, "mingru": MinGRUCell, "minlstm": MinLSTMCell}


@pytest.mark.parametrize("kind", KINDS)
def test_cell_matches_torch_cell(kind):
    ours, ref = CELLS[kind](I, H), TORCH_CELL[kind](I, H)
    with torch.no_grad():
        for name in PARAMS:
            getattr(ref, name).copy_(getattr(ours, name))
    x = torch.randn(B, I, requires_grad=True)
    state = random_state(kind)
    out = ours(x, state)
    ref_out = ref(x, state if kind == "lstm" else state[0])
    ref_out = tuple(ref_out) if kind == "lstm" else (ref_out,)
    assert isinstance(out, tuple) and len(out) == num_states(kind)
    assert_close_all(out, ref_out)
    inputs = [x, *state, *ours.parameters()]
    ref_inputs = [x, *state, *(getattr(ref, n) for n in PARAMS)]
    assert_close_all(grads(out, inputs), grads(ref_out, ref_inputs))


@pytest.mark.parametrize("kind", KINDS)
def test_cell_init_and_names(kind):
    cell = CELLS[kind](I, H)
    G = {"rnn": 1, "gru": 3, "lstm": 4}[kind]
    shapes = {n: tuple(p.shape) for n, p in cell.named_parameters()}
    assert shapes == {"weight_ih": (G * H, I), "weight_hh": (G * H, H), "bias_ih": (G * H,), "bias_hh": (G * H,)}
    bound = H**-0.5
    assert all(p.abs().max() <= bound for p in cell.parameters())
    assert [n for n, _ in CELLS[kind](I, H, bias=False).named_parameters()] == ["weight_ih", "weight_hh"]


@pytest.mark.parametrize("impl", ["fast", "reference"])
@pytest.mark.parametrize("kind", KINDS)
def test_layer_matches_torch_layer(kind, impl):
    layer, ref = RecurrentLayer(kind, I, H, impl=impl), TORCH_LAYER[kind](I, H)
    with torch.no_grad():
        for name in PARAMS:
            getattr(ref, name + "_l0").copy_(getattr(layer.cell, name))
    assert sorted(layer.state_dict()) == sorted("cell." + n for n in PARAMS)
    x = torch.randn(T, B, I, requires_grad=True)
    state = random_state(kind)
    y, new_state = layer(x, state)
    if kind == "lstm":
        ref_y, (h, c) = ref(x, (state[0][None], state[1][None]))
        ref_state = (h[0], c[0])
    else:
        ref_y, h = ref(x, state[0][None])
        ref_state = (h[0],)
    assert y.shape == (T, B, H)
    assert_close_all((y, *new_state), (ref_y, *ref_state))
    inputs = [x, *state, *layer.cell.parameters()]
    ref_inputs = [x, *state, *(getattr(ref, n + "_l0") for n in PARAMS)]
    assert_close_all(grads((y, *new_state), inputs), grads((ref_y, *ref_state), ref_inputs))


def twins(kind, input_size=I, hidden_size=H, **kwargs):
    """A fast and a reference layer with the same weights."""
    fast = RecurrentLayer(kind, input_size, hidden_size, impl="fast", **kwargs)
    ref = RecurrentLayer(kind, input_size, hidden_size, impl="reference", **kwargs)
    ref.load_state_dict(fast.state_dict())
    return fast, ref


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("steps,batch", [(1, 1), (7, 3), (20, 4), (6, 10)])  # (6, 10): MKL-packed matmul
def test_fast_matches_reference(kind, steps, batch):
    fast, ref = twins(kind, I, 16)
    x = torch.randn(steps, batch, I, requires_grad=True)
    state = random_state(kind, batch, 16)
    out, ref_out = fast(x, state), ref(x, state)
    assert_close_all((out[0], *out[1]), (ref_out[0], *ref_out[1]))
    for which in [(0,), (1,), (0, 1)]:  # loss on y only, on the final state only, on both
        pick = lambda o: [o[0]] * (0 in which) + list(o[1]) * (1 in which)  # noqa: E731
        assert_close_all(
            grads(pick(out), [x, *state, *fast.parameters()], seed=len(which)),
            grads(pick(ref_out), [x, *state, *ref.parameters()], seed=len(which)),
        )


@pytest.mark.parametrize("kind", KINDS)
def test_fast_path_default_and_zero_state(kind):
    fast, ref = twins(kind)
    assert RecurrentLayer(kind, I, H).impl == "fast"
    x = torch.randn(T, B, I)
    y, state = fast(x, None)
    ref_y, ref_state = ref(x, ref.init_state(B))
    assert_close_all((y, *state), (ref_y, *ref_state))
    with torch.no_grad():  # the forward-only path (nothing saved) gives the same
        y2, state2 = fast(x, None)
    assert_close_all((y2, *state2), (y, *state))


@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck_fast_path(kind):
    layer = RecurrentLayer(kind, 3, 4).double()
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    state = random_state(kind, 2, 4, torch.float64)
    weights = tuple(p.detach().clone().requires_grad_() for p in layer.cell.parameters())
    n = len(state)

    def f(x, *args):  # the fast path with every weight an input of gradcheck
        y, new_state = fused.run(CELLS[kind].kernel, x, args[:n], *args[n:])
        return (y, *new_state)

    assert torch.autograd.gradcheck(f, (x, *state, *weights), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_step_agrees_with_forward(kind):
    layer = RecurrentLayer(kind, I, H).eval()
    x = torch.randn(1, B, I)
    state = random_state(kind)
    with torch.no_grad():
        y, new_state = layer(x, state)
        h, step_state = layer.step(x[0], state)
        assert_close_all((h, *step_state), (y[0], *new_state))
        # the cached transposed weights follow an in-place weight update
        layer.cell.weight_hh.mul_(0.5)
        y, new_state = layer(x, state)
        h, step_state = layer.step(x[0], state)
        assert_close_all((h, *step_state), (y[0], *new_state))
    h, step_state = layer.step(x[0], state)  # with autograd
    h.sum().backward()
    assert layer.cell.weight_hh.grad is not None


@pytest.mark.parametrize("kind", KINDS)
def test_stepper_over_a_sequence_keeps_every_state(kind):
    """A stepper reuses its gate buffers, never the states it returned; batch sizes may change."""
    layer = RecurrentLayer(kind, I, H).eval()
    with torch.no_grad():
        step = layer.stepper()
        for batch in (B, 1, B):  # a new batch size remakes the buffers
            x, state = torch.randn(T, batch, I), tuple(t.detach() for t in random_state(kind, batch))
            y, last = layer(x, state)
            states = [state]
            for t in range(T):
                states.append(step(x[t], states[-1])[1])
            # every state kept along the way still holds its own step's value
            assert_close_all([s[0] for s in states[1:]], list(y))
            assert_close_all(states[-1], last)

@pytest.mark.parametrize("impl", ["fast", "reference"])
@pytest.mark.parametrize("kind", KINDS)
def test_weight_drop(kind, impl):
    layer = RecurrentLayer(kind, I, H, weight_drop=0.5, impl=impl)
    plain = RecurrentLayer(kind, I, H, impl=impl)
    plain.load_state_dict(layer.state_dict())
    x = torch.randn(T, B, I)
    layer.eval()
    y1, _ = layer(x, None)
    y2, _ = layer(x, None)
    assert torch.equal(y1, y2)
    torch.testing.assert_close(y1, plain(x, None)[0])
    layer.train()
    y3, _ = layer(x, None)
    assert not torch.allclose(y3, y1)
    y3.sum().backward()
    assert layer.cell.weight_hh.grad is not None


def test_weight_drop_same_mask_both_impls():
    fast, ref = twins("lstm", weight_drop=0.3)
    x = torch.randn(T, B, I)
    torch.manual_seed(5)
    y_fast, _ = fast(x, None)
    torch.manual_seed(5)
    y_ref, _ = ref(x, None)
    torch.testing.assert_close(y_fast, y_ref, atol=1e-5, rtol=1e-5)


def test_unknown_cell_names_valid_ones():
    with pytest.raises(RnnlmError, match="rnn, gru, lstm") as info:
        RecurrentLayer("transformer", I, H)
    assert "transformer" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(RnnlmError, match="fast, reference"):
        RecurrentLayer("lstm", I, H, impl="cudnn")


@pytest.mark.parametrize("kind", KINDS)
def test_fast_path_under_autocast(kind):
    layer = RecurrentLayer(kind, I, H)
    x = torch.randn(T, B, I)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, state = layer(x, None)
    assert y.dtype == torch.bfloat16 and all(s.dtype == torch.bfloat16 for s in state)
    y.float().sum().backward()
    assert layer.cell.weight_ih.grad.dtype == torch.float32
    torch.testing.assert_close(y.float(), layer(x, None)[0], atol=0.05, rtol=0.05)


@pytest.mark.parametrize("kind", KINDS)
def test_workspace_reuse_never_aliases_live_tensors(kind):
    """Reused buffers (fused.Workspace) must not clobber outputs or saved tensors still alive."""
    fast, ref = twins(kind)
    fast._workspace.MIN_BYTES = 0  # pool even these small buffers
    x1, x2 = torch.randn(T, B, I, requires_grad=True), torch.randn(T, B, I, requires_grad=True)
    y1, _ = fast(x1, None)
    y2, _ = fast(x2, None)  # a second graph while the first is alive
    kept = y1.detach().clone()
    g1 = grads([y1], [x1, *fast.parameters()], seed=1)  # retain_graph=True: saved tensors stay
    y3, _ = fast(x1, None)  # may reuse only what is free
    g1_again = grads([y1], [x1, *fast.parameters()], seed=1)
    g2 = grads([y2], [x2, *fast.parameters()], seed=2)
    assert torch.equal(y1, kept) and torch.equal(y3, y1)
    assert_close_all(g1, g1_again)
    assert_close_all(g1, grads([ref(x1, None)[0]], [x1, *ref.parameters()], seed=1))
    assert_close_all(g2, grads([ref(x2, None)[0]], [x2, *ref.parameters()], seed=2))
    del y1, y2, y3, g1, g1_again, g2
    addresses = set()
    for _ in range(3):  # steady state: a training loop gets the same buffers back
        y, _ = fast(x1, None)
        y.sum().backward()
        addresses.add(y.data_ptr())
        del y
    assert len(addresses) == 1
    pooled = sum(len(pool) for pool in fast._workspace._storages.values())
    for _ in range(3):  # and the pool stops growing
        fast(x1, None)[0].sum().backward()
    assert sum(len(pool) for pool in fast._workspace._storages.values()) == pooled


@pytest.mark.slow
def test_fast_path_under_torch_compile():
    """torch.compile runs the hand-written path as it is (inductor can't lower MKL packing)."""
    layer = RecurrentLayer("lstm", I, 16)
    x = torch.randn(6, 10, I, requires_grad=True)  # big enough for the MKL-packed matmul
    y, state = layer(x, None)
    y_c, state_c = torch.compile(layer)(x, None)
    assert_close_all((y_c, *state_c), (y, *state))
    params = [x, *layer.parameters()]
    assert_close_all(grads([y_c], params), grads([y], params))


# ---------------------------------------------------------------------------------------
# The minimal cells (minGRU, minLSTM): gates from x_t alone, a linear recurrence in h

MIN_KINDS = ["mingru", "minlstm"]


def minimal_by_hand(kind, cell, x, h):
    """h' of the cell's equations, written out from its weights."""
    gates = x @ cell.weight_ih.t() + cell.bias_ih
    if kind == "mingru":
        z, h_tilde = gates.chunk(2, dim=-1)
        z = torch.sigmoid(z)
        return (1 - z) * h + z * h_tilde
    f, i, h_tilde = gates.chunk(3, dim=-1)
    f, i = torch.sigmoid(f), torch.sigmoid(i)
    return f / (f + i) * h + i / (f + i) * h_tilde


@pytest.mark.parametrize("kind", MIN_KINDS)
def test_minimal_cell_follows_its_equations_with_input_weights_only(kind):
    cell = CELLS[kind](I, H)
    G = {"mingru": 2, "minlstm": 3}[kind]
    assert {n: tuple(p.shape) for n, p in cell.named_parameters()} == {"weight_ih": (G * H, I), "bias_ih": (G * H,)}
    assert not cell.recurrent_weights and cell.num_states == 1
    x, h = torch.randn(B, I), torch.randn(B, H)
    (h_new,) = cell(x, (h,))
    torch.testing.assert_close(h_new, minimal_by_hand(kind, cell, x, h))
    gates = torch.nn.functional.linear(x, cell.weight_ih, cell.bias_ih)
    a, _ = cell.keep_share(gates, H)
    torch.testing.assert_close(h_new, a * h + (1 - a) * gates[:, -H:])


@pytest.mark.parametrize("kind", MIN_KINDS)
@pytest.mark.parametrize("steps,batch", [(1, 1), (7, 3), (20, 4)])
def test_minimal_fast_path_matches_reference(kind, steps, batch):
    fast, ref = twins(kind, I, 16)
    x = torch.randn(steps, batch, I, requires_grad=True)
    state = random_state(kind, batch, 16)
    out, ref_out = fast(x, state), ref(x, state)
    assert out[0].shape == (steps, batch, 16) and len(out[1]) == 1
    assert_close_all((out[0], *out[1]), (ref_out[0], *ref_out[1]))
    assert_close_all(grads((out[0], *out[1]), [x, *state, *fast.parameters()]),
                     grads((ref_out[0], *ref_out[1]), [x, *state, *ref.parameters()]))


@pytest.mark.parametrize("kind", MIN_KINDS)
def test_minimal_step_and_stepper_agree_with_forward(kind):
    layer = RecurrentLayer(kind, I, H).eval()
    x, state = torch.randn(T, B, I), (torch.randn(B, H),)
    with torch.no_grad():
        y, last = layer(x, state)
        step, states = layer.stepper(), [state]
        for t in range(T):
            out, new_state = step(x[t], states[-1])
            torch.testing.assert_close(out, y[t])
            states.append(new_state)
        assert_close_all(states[-1], last)
        assert_close_all([s[0] for s in states[1:]], list(y))  # every state kept its own step's value
        h, step_state = layer.step(x[0], state)
        assert_close_all((h, *step_state), (y[0], layer(x[:1], state)[1][0]))
    h, _ = layer.step(x[0], state)  # with autograd
    h.sum().backward()
    assert layer.cell.weight_ih.grad is not None


@pytest.mark.parametrize("kind", MIN_KINDS)
def test_minimal_cells_refuse_weight_drop(kind):
    with pytest.raises(RnnlmError) as e:
        RecurrentLayer(kind, I, H, weight_drop=0.1)
    assert str(e.value) == (f"weight_drop (DropConnect on W_hh) needs a cell with hidden-to-hidden weights; "
                            f"{kind} has none: set it to 0")
    from rnnlm.config import load_config

    with pytest.raises(RnnlmError) as e:
        load_config(None, [f"model.cell={kind}", "model.weight_drop=0.1"])
    assert str(e.value) == (f"config: model.weight_drop (DropConnect on W_hh) must be 0 for {kind}, which has no "
                            "hidden-to-hidden weights")


@pytest.mark.parametrize("kind", MIN_KINDS)
def test_minimal_fast_path_under_autocast_carries_the_state_in_fp32(kind):
    layer = RecurrentLayer(kind, I, H)
    x = torch.randn(T, B, I)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, (h,) = layer(x, None)
    assert y.dtype == h.dtype == torch.float32
    y.sum().backward()
    assert layer.cell.weight_ih.grad.dtype == torch.float32
    torch.testing.assert_close(y, layer(x, None)[0], atol=0.05, rtol=0.05)
