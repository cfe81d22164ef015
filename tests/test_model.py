"""The language model (rnnlm.model): its one-token `step` (generation) against its `forward`
(training), for every cell kind, and the training loss `lm_loss`."""

import pytest
import torch

from rnnlm.config import ModelConfig
from rnnlm.model import RNNLM, lm_loss, prime

V, B, T = 11, 3, 5


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("kind", ["rnn", "gru", "lstm"])
def test_step_by_step_equals_forward_and_follows_weight_updates(kind, tie):
    torch.manual_seed(0)
    model = RNNLM(V, ModelConfig(cell=kind, hidden_size=8, num_layers=2, tie_weights=tie)).eval()
    idx = torch.randint(V, (B, T))

    def compare():
        with torch.no_grad():
            logits, state = model(idx)
            step_state = model.init_state(B)
            for t in range(T):
                step_logits, step_state = model.step(idx[:, t], step_state)
                torch.testing.assert_close(step_logits, logits[:, t], atol=1e-5, rtol=1e-5)
            for a, b in zip(step_state, state):
                torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        return logits

    before = compare()
    # An optimizer step changes every weight in place (the tied decoder included): the
    # weights `step` caches in its own layout must follow.
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    logits, _ = model(idx)
    logits.logsumexp(-1).sum().backward()
    optimizer.step()
    model.eval()
    after = compare()
    assert not torch.allclose(before, after)
    # So must a load_state_dict of other weights.
    other = RNNLM(V, ModelConfig(cell=kind, hidden_size=8, num_layers=2, tie_weights=tie))
    model.load_state_dict(other.state_dict())
    compare()


@pytest.mark.parametrize("kind", ["rnn", "gru", "lstm"])
def test_stepper_equals_step_and_falls_back_when_training(kind):
    torch.manual_seed(0)
    model = RNNLM(V, ModelConfig(cell=kind, hidden_size=8, num_layers=2, weight_drop=0.5)).eval()
    idx = torch.randint(V, (B, T))
    step = model.stepper()
    state, step_state = model.init_state(B), model.init_state(B)
    for t in range(T):
        logits, state = model.step(idx[:, t], state)
        step_logits, step_state = step(idx[:, t], step_state)
        assert torch.equal(logits, step_logits)
    # In training mode (DropConnect drawing masks) the layers take their general path.
    model.train()
    assert [layer.stepper() for layer in model.layers] == [layer.step for layer in model.layers]


def test_lm_loss_is_the_fp32_cross_entropy_of_every_position_skipping_padding():
    torch.manual_seed(0)
    logits, targets = torch.randn(B, T, V), torch.randint(V, (B, T))
    by_hand = -torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T)
    assert lm_loss(logits, targets) == pytest.approx(float(by_hand.mean()), rel=1e-6)
    assert lm_loss(logits, targets, reduction="sum") == pytest.approx(float(by_hand.sum()), rel=1e-6)
    padded = targets.clone()
    padded[:, -2:] = -100  # padding is not scored
    assert lm_loss(logits, padded) == pytest.approx(float(by_hand[:, :-2].mean()), rel=1e-6)
    low = lm_loss(logits.bfloat16(), targets)  # logits under autocast: the loss is still fp32
    assert low.dtype == torch.float32
    assert low == pytest.approx(float(lm_loss(logits.bfloat16().float(), targets)), rel=1e-6)


@pytest.mark.parametrize("kind", ["mingru", "minlstm"])
def test_minimal_cells_step_by_step_equals_forward(kind):
    torch.manual_seed(0)
    model = RNNLM(V, ModelConfig(cell=kind, hidden_size=8, num_layers=2)).eval()
    idx = torch.randint(V, (B, T))
    with torch.no_grad():
        logits, state = model(idx)
        step = model.stepper()
        step_state = model.init_state(B)
        for t in range(T):
            step_logits, step_state = step(idx[:, t], step_state)
            torch.testing.assert_close(step_logits, logits[:, t], atol=1e-5, rtol=1e-5)
    for a, b in zip(step_state, state):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", ["fast", "reference"])
@pytest.mark.parametrize("kind", ["rnn", "gru", "lstm", "mingru", "minlstm"])
def test_priming_in_chunks_gives_the_logits_and_state_of_one_pass(kind, impl):
    torch.manual_seed(0)
    model = RNNLM(V, ModelConfig(cell=kind, hidden_size=8, num_layers=2, impl=impl)).eval()
    ids = torch.randint(0, V, (B, 23))
    with torch.no_grad():
        logits, state = model(ids)
    for chunk in (1, 4, 23, 100):  # one token at a time, a ragged last chunk, exactly one, more than all
        last, primed = prime(model, ids, chunk=chunk)
        torch.testing.assert_close(last, logits[:, -1], rtol=1e-5, atol=1e-6)
        for layer, primed_layer in zip(state, primed):
            for t, p in zip(layer, primed_layer):
                torch.testing.assert_close(p, t, rtol=1e-5, atol=1e-6)


def test_priming_runs_at_most_chunk_tokens_and_only_the_last_through_the_output_layer(monkeypatch):
    model = RNNLM(V, ModelConfig(cell="gru", hidden_size=8)).eval()
    widths, decoded = [], []
    features, decoder = model.features, model.decoder.forward
    monkeypatch.setattr(model, "features", lambda idx, state=None: widths.append(idx.size(1)) or features(idx, state))
    monkeypatch.setattr(model.decoder, "forward", lambda h: decoded.append(tuple(h.shape)) or decoder(h))
    prime(model, torch.randint(0, V, (2, 1000)), chunk=64)
    assert widths == [64] * 15 + [40]
    assert decoded == [(2, 8)]  # one position per row, never (2, 1000, V) logits
    with pytest.raises(ValueError):
        prime(model, torch.zeros(1, 0, dtype=torch.long))
