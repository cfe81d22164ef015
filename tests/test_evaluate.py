"""Honest numbers: evaluate's bits per character agree with a hand computation."""

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

from rnnlm import tokenizer as tokenization
from rnnlm.cli import main
from rnnlm.errors import RnnlmError
from rnnlm.evaluate import RMS_EPS, eval_streams, evaluate_ids, evaluate_ids_dynamic, gradient_rms, score_text
from rnnlm.inference import load_model
from rnnlm.train import train
from tests.conftest import small_text, tiny_config

TEXT = "Prince Andrew looked at Natasha.\nNapoleon was the Emperor of the French.\n" * 3


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One bpe and one char model, trained briefly on the test text."""
    root = tmp_path_factory.mktemp("eval")
    corpus = root / "corpus.txt"
    corpus.write_text(small_text(), encoding="utf-8")
    models = {}
    for kind, extra in (("char", []), ("bpe", ["tokenizer.vocab_size=300"])):
        cfg = tiny_config(root / kind, corpus, f"tokenizer.kind={kind}", "train.max_steps=30", *extra)
        train(cfg)
        models[kind] = load_model(root / kind / "run" / "best.pt", "cpu")
        models[kind].path = root / kind / "run" / "best.pt"
    return models


def hand_bpc(lm, text):
    """Sum of per-token NLL from one full-length forward pass, over the scored characters."""
    ids = tokenization.encode(lm.tokenizer, text)
    with torch.no_grad():
        logits, _ = lm.model(torch.tensor([ids[:-1]]))  # one stream, the state carried throughout
        nll = F.cross_entropy(logits[0], torch.tensor(ids[1:]), reduction="sum").item()
    first = tokenization.decode(lm.tokenizer, ids[:1])
    return nll / math.log(2) / (len(text) - len(first)), nll / (len(ids) - 1), len(ids) - 1


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_bpc_matches_a_hand_computation(trained, kind):
    lm = trained[kind]
    bpc, loss, n_tokens = hand_bpc(lm, TEXT)
    # One stream with the whole text is the same computation as the hand one...
    one = score_text(lm, TEXT, batch_size=1, seq_len=16)
    assert one["bpc"] == pytest.approx(bpc, rel=1e-5)
    assert one["loss"] == pytest.approx(loss, rel=1e-5)
    assert one["tokens"] == n_tokens
    # ...and several streams score every token once, each with a little less context.
    several = score_text(lm, TEXT, batch_size=4, seq_len=16)
    assert several["tokens"] == n_tokens
    assert several["bpc"] == pytest.approx(bpc, rel=0.15)


def test_char_bpc_is_loss_over_ln2(trained):
    m = score_text(trained["char"], TEXT, batch_size=3, seq_len=8)
    assert m["chars"] == m["tokens"]  # one character per token, the first one given as context
    assert m["bpc"] == pytest.approx(m["loss"] / math.log(2), rel=1e-9)
    assert m["perplexity"] == pytest.approx(math.exp(m["loss"]))


def test_eval_streams_score_every_token_but_the_first_once():
    ids = torch.arange(10)
    inputs, targets = eval_streams(ids, 3, 1)
    scored = targets[targets != -100].tolist()
    assert sorted(scored) == list(range(1, 10))
    for s in range(inputs.size(0)):  # each target follows its input in the text
        for t in range(inputs.size(1)):
            if targets[s, t] != -100:
                assert targets[s, t] == inputs[s, t] + 1


def test_evaluate_command_on_a_text_file(trained, tmp_path, capsys):
    path = tmp_path / "other.txt"
    path.write_text(TEXT, encoding="utf-8")
    assert main(["evaluate", "--checkpoint", str(trained["char"].path), "--text", str(path),
                 "--batch-size", "1", "--seq-len", "16", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    expected = score_text(trained["char"], TEXT, batch_size=1, seq_len=16)
    assert out["bpc"] == pytest.approx(expected["bpc"]) and out["tokens"] == expected["tokens"]
    assert main(["evaluate", "--checkpoint", str(trained["char"].path), "--text", str(path)]) == 0
    assert "bits/char" in capsys.readouterr().out


# dynamic evaluation


def test_dynamic_evaluation_scores_before_it_learns(trained):
    lm = trained["bpe"]
    ids = torch.tensor(tokenization.encode(lm.tokenizer, TEXT))
    static_nll, n = evaluate_ids(lm.model, ids, batch_size=1, seq_len=8)
    # At lr 0 nothing moves: the same computation as static evaluation on one stream.
    assert evaluate_ids_dynamic(lm.model, ids, lr=0.0, seq_len=8) == pytest.approx((static_nll, n), rel=1e-6)
    # A single segment is scored before any step, whatever the learning rate.
    one = ids[:9]
    assert evaluate_ids_dynamic(lm.model, one, lr=10.0, seq_len=8)[0] == pytest.approx(
        evaluate_ids(lm.model, one, batch_size=1, seq_len=8)[0], rel=1e-6)


def test_dynamic_evaluation_learns_from_the_text_and_leaves_the_model_alone(trained):
    lm = trained["bpe"]
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    ids = torch.randint(lm.model.vocab_size, (40,)).repeat(4)  # random tokens, seen again and again
    static_nll, n = evaluate_ids(lm.model, ids, batch_size=1, seq_len=10)
    dynamic_nll, n_dynamic = evaluate_ids_dynamic(lm.model, ids, lr=0.5, seq_len=10)
    assert n_dynamic == n == ids.numel() - 1
    assert dynamic_nll < 0.8 * static_nll  # the repeats become predictable
    assert all(torch.equal(v, lm.model.state_dict()[k]) for k, v in before.items())


def test_dynamic_evaluation_that_blows_up_is_one_error_not_a_number(trained):
    lm = trained["bpe"]
    ids = torch.randint(lm.model.vocab_size, (80,))
    with pytest.raises(RnnlmError, match=r"dynamic evaluation diverged .* smaller learning rate than 1e\+06"):
        evaluate_ids_dynamic(lm.model, ids, lr=1e6, seq_len=8)


@pytest.mark.parametrize("lr", [-0.1, float("nan"), float("inf")])
def test_dynamic_evaluation_refuses_a_bad_learning_rate(trained, lr):
    lm = trained["bpe"]
    with pytest.raises(RnnlmError, match="dynamic evaluation needs a learning rate >= 0"):
        lm.score(TEXT, dynamic_lr=lr)


def segment_grads(model, x, y, state=None):
    """Mean-loss gradient of one segment (the reference the update rule is checked with)."""
    logits, state = model(x, state)
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
    return torch.autograd.grad(loss, list(model.parameters())), state, loss.detach()


def test_gradient_rms_is_the_root_mean_square_of_segment_gradients(trained):
    lm = trained["bpe"]
    ids = torch.tensor(tokenization.encode(lm.tokenizer, TEXT))[:33]  # one stream: segments 0-7, 8-15, ...
    rms = gradient_rms(lm.model, ids, max_tokens=16, batch_size=1, seq_len=8)
    model = copy.deepcopy(lm.model).eval()
    g1, state, _ = segment_grads(model, ids[None, 0:8], ids[None, 1:9])
    g2, _, _ = segment_grads(model, ids[None, 8:16], ids[None, 9:17], [tuple(t.detach() for t in s) for s in state])
    assert len(rms) == len(g1) == len(list(lm.model.parameters()))
    for r, a, b in zip(rms, g1, g2):
        torch.testing.assert_close(r, ((a * a + b * b) / 2).sqrt())
    assert all(p.grad is None for p in lm.model.parameters())  # the model itself is not touched


def test_dynamic_evaluation_with_rms_and_decay_follows_its_update_rule(trained):
    lm = trained["bpe"]
    ids = torch.tensor(tokenization.encode(lm.tokenizer, TEXT))[:17]  # two segments of 8 targets
    rms = gradient_rms(lm.model, torch.tensor(tokenization.encode(lm.tokenizer, TEXT * 2)), max_tokens=64,
                       batch_size=2, seq_len=8)
    lr, decay = 0.01, 0.2
    nll, n = evaluate_ids_dynamic(lm.model, ids, lr=lr, seq_len=8, decay=decay, grad_rms=rms)
    # By hand: score segment 1, take one step of the formula in the docstring, score segment 2.
    model = copy.deepcopy(lm.model).eval()
    theta0 = [p.detach().clone() for p in model.parameters()]
    grads, state, loss1 = segment_grads(model, ids[None, 0:8], ids[None, 1:9])
    mean_rms = torch.cat([r.flatten() for r in rms]).mean()
    with torch.no_grad():
        for p, g, r, p0 in zip(model.parameters(), grads, rms, theta0):
            pull = torch.clamp(r / mean_rms, max=1 / decay)
            p.copy_(p - lr * g / (r + RMS_EPS * mean_rms) + decay * pull * (p0 - p))
        logits, _ = model(ids[None, 8:16], state)
        loss2 = F.cross_entropy(logits.reshape(-1, logits.size(-1)), ids[9:17])
    assert n == 16
    assert nll == pytest.approx(8 * loss1.item() + 8 * loss2.item(), rel=1e-5)
    # The RMS step differs from plain SGD's, and decay without steps leaves static scoring.
    assert nll != pytest.approx(evaluate_ids_dynamic(lm.model, ids, lr=lr, seq_len=8, decay=decay)[0], rel=1e-6)
    assert evaluate_ids_dynamic(lm.model, ids, lr=0.0, seq_len=8, decay=0.5, grad_rms=rms)[0] == pytest.approx(
        evaluate_ids(lm.model, ids, batch_size=1, seq_len=8)[0], rel=1e-6)


def test_dynamic_decay_pulls_the_weights_back(trained):
    """On text repeated over and over, plain SGD learns it fastest; decay 0.9 undoes most
    of each step, so it lands between SGD and static scoring."""
    lm = trained["bpe"]
    ids = torch.randint(lm.model.vocab_size, (40,), generator=torch.Generator().manual_seed(0)).repeat(4)
    static = evaluate_ids(lm.model, ids, batch_size=1, seq_len=10)[0]
    sgd = evaluate_ids_dynamic(lm.model, ids, lr=0.5, seq_len=10)[0]
    decayed = evaluate_ids_dynamic(lm.model, ids, lr=0.5, seq_len=10, decay=0.9)[0]
    assert sgd < decayed < static


def test_evaluate_command_dynamic(trained, tmp_path, capsys):
    path = tmp_path / "other.txt"
    path.write_text(TEXT, encoding="utf-8")
    ckpt = str(trained["bpe"].path)
    assert main(["evaluate", "--checkpoint", ckpt, "--text", str(path), "--dynamic", "0.1", "--seq-len", "8",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dynamic_lr"] == 0.1
    assert out["bpc"] == pytest.approx(score_text(trained["bpe"], TEXT, seq_len=8, dynamic_lr=0.1)["bpc"])
    assert main(["evaluate", "--checkpoint", ckpt, "--text", str(path), "--dynamic", "0.1"]) == 0
    assert "(dynamic evaluation, lr 0.1)" in capsys.readouterr().out
    assert main(["evaluate", "--checkpoint", ckpt, "--text", str(path), "--dynamic", "0.01", "--seq-len", "8",
                 "--dynamic-rms", "500", "--dynamic-decay", "0.02", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["dynamic_rms"], out["dynamic_decay"]) == (500, 0.02)
    assert out["bpc"] == pytest.approx(score_text(trained["bpe"], TEXT, seq_len=8, dynamic_lr=0.01,
                                                  dynamic_rms=500, dynamic_decay=0.02)["bpc"])
    assert main(["evaluate", "--checkpoint", ckpt, "--split", "valid", "--dynamic", "0.01", "--dynamic-rms"]) == 0
    assert "(dynamic evaluation, lr 0.01, rms over 100,000 tokens)" in capsys.readouterr().out
    for bad, message in ((["--dynamic", "-1"], "--dynamic must be a learning rate >= 0"),
                         (["--dynamic-rms"], "add --dynamic LR"),
                         (["--dynamic-decay", "0.1"], "add --dynamic LR"),
                         (["--dynamic", "0.1", "--dynamic-decay", "1"], "--dynamic-decay must be in [0, 1)"),
                         (["--dynamic", "0.1", "--dynamic-rms", "-5"], "--dynamic-rms must be a number of tokens"),
                         (["--dynamic", "nan"], "argument --dynamic: must be a finite number"),
                         (["--dynamic", "0.1", "--batch-size", "4"], "one stream: leave out --batch-size")):
        assert main(["evaluate", "--checkpoint", ckpt, "--text", str(path), *bad]) != 0
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err


@pytest.mark.parametrize("dynamic_lr", [None, 0.1])
def test_a_long_text_is_scored_seq_len_tokens_at_a_time(trained, monkeypatch, dynamic_lr):
    # Every position's loss is needed, but never every position's logits at once.
    lm = trained["char"]
    widths = []

    def counting(model):
        forward = model.forward
        model.forward = lambda idx, state=None: widths.append(idx.size(1)) or forward(idx, state)
        return model

    deepcopy = copy.deepcopy
    monkeypatch.setattr(lm, "model", counting(deepcopy(lm.model)))
    monkeypatch.setattr("copy.deepcopy", lambda m: counting(deepcopy(m)))  # dynamic evaluation's copy
    text = TEXT * 20
    m = score_text(lm, text, batch_size=2, seq_len=16, dynamic_lr=dynamic_lr)
    assert m["tokens"] == len(text) - 1 and max(widths) == 16
    assert sum(widths) * (1 if dynamic_lr is not None else 2) >= m["tokens"]


def test_the_python_api_and_the_command_line_refuse_a_negative_gradient_rms_alike(trained):
    # One rule (evaluate.DYNAMIC_RULES) for both: -5 tokens is refused, not taken as "off".
    with pytest.raises(RnnlmError, match=r"^dynamic evaluation needs a number of tokens >= 0 \(dynamic_rms\), got -5$"):
        trained["bpe"].score(TEXT, dynamic_lr=0.1, dynamic_rms=-5)
