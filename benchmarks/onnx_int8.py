"""The int8 ONNX export against the float32 one: file size, bits per character on a split of
the checkpoint's corpus scored through onnxruntime, and time per generated token.

    python benchmarks/onnx_int8.py --checkpoint runs/war_and_peace/best.pt [--out runs/onnx_int8]

Writes both exports (`rnnlm export` and `rnnlm export --quantize int8`) under --out, scores the
split as `rnnlm evaluate` does (32 streams, 128 tokens a call, the state carried; the
first token is context) with PyTorch and with each graph, then times greedy generation
(a prompt's pass, then one call a token) with both sessions taking turns, so that a change
of load on a shared machine hits both alike. Prints one Markdown table.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from benchmarks.timing import interleaved  # noqa: E402
from rnnlm import tokenizer as tokenization  # noqa: E402
from rnnlm.evaluate import checkpoint_corpus, eval_streams, metrics, score_ids, scored_chars  # noqa: E402
from rnnlm.export import export_model  # noqa: E402
from rnnlm.inference import load_model  # noqa: E402

SEQ_LEN, STREAMS = 128, 32


def session_of(folder: Path, threads: int):
    """An onnxruntime session of an export folder, and its state's (name, width) in input order."""
    import json

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    session = ort.InferenceSession(str(folder / config["model"]), options, providers=["CPUExecutionProvider"])
    return session, [(s["name"], s["shape"][1]) for s in config["state"]]


def onnx_nll(session, state_spec, ids) -> tuple[float, int]:
    """Total NLL (nats) and scored tokens of `ids` through the graph, laid out as `rnnlm evaluate` does."""
    inputs, targets = (t.numpy() for t in eval_streams(ids, STREAMS, SEQ_LEN))
    state = {name: np.zeros((inputs.shape[0], width), np.float32) for name, width in state_spec}
    total, count = 0.0, 0
    for i in range(0, inputs.shape[1], SEQ_LEN):
        x, y = inputs[:, i:i + SEQ_LEN], targets[:, i:i + SEQ_LEN]
        logits, *next_state = session.run(None, {"tokens": x, **state})
        state = dict(zip(state, next_state))
        logits = logits.astype(np.float64)
        top = logits.max(axis=-1, keepdims=True)
        log_z = (top + np.log(np.exp(logits - top).sum(axis=-1, keepdims=True)))[..., 0]
        scored = y != -100
        picked = np.take_along_axis(logits, np.where(scored, y, 0)[..., None], axis=-1)[..., 0]
        total += float(((log_z - picked) * scored).sum())
        count += int(scored.sum())
    return total, count


def greedy(session, state_spec, prompt_ids: list[int], new_tokens: int) -> list[int]:
    """Greedy tokens after the prompt: the prompt in one call, then one call a token."""
    state = {name: np.zeros((1, width), np.float32) for name, width in state_spec}
    tokens, out = np.array([prompt_ids], np.int64), []
    for _ in range(new_tokens):
        logits, *next_state = session.run(None, {"tokens": tokens, **state})
        state = dict(zip(state, next_state))
        out.append(int(logits[0, -1].argmax()))
        tokens = np.array([[out[-1]]], np.int64)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", default="runs/onnx_int8", help="folder for the two exports (replaced)")
    p.add_argument("--split", default="test", choices=["train", "valid", "test"])
    p.add_argument("--prompt", default="Napoleon was the Emperor of")
    p.add_argument("--tokens", type=int, default=200, help="greedy tokens per timed generation")
    p.add_argument("--rounds", type=int, default=5, help="timed generations of each graph, taking turns")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: its default)")
    args = p.parse_args(argv)

    out = Path(args.out)
    folders = {"float32": out / "float32", "int8": out / "int8"}
    for kind, folder in folders.items():
        export_model(args.checkpoint, folder, overwrite=True, quantize=None if kind == "float32" else "int8")
    lm = load_model(args.checkpoint, "cpu")
    corpus = checkpoint_corpus(lm)
    ids, chars = corpus.ids[args.split], corpus.chars[args.split]
    first = tokenization.decode(lm.tokenizer, ids[:1].tolist())
    torch_bpc = score_ids(lm, ids, chars, batch_size=STREAMS, seq_len=SEQ_LEN)["bpc"]

    sessions = {kind: session_of(folder, args.threads) for kind, folder in folders.items()}
    prompt_ids = tokenization.encode(lm.tokenizer, args.prompt)
    texts = {kind: greedy(*s, prompt_ids, args.tokens) for kind, s in sessions.items()}
    seconds = interleaved({kind: (lambda s=s: greedy(*s, prompt_ids, args.tokens)) for kind, s in sessions.items()},
                          rounds=args.rounds, reps=1)
    same = next((i for i, (a, b) in enumerate(zip(*texts.values())) if a != b), args.tokens)

    print(f"{args.checkpoint}, {args.split} split ({chars:,} characters); PyTorch (rnnlm evaluate): "
          f"{torch_bpc:.4f} bpc; greedy texts agree for {same} of {args.tokens} tokens")
    print("| graph | model.onnx | bpc | ms per token |\n| --- | --- | --- | --- |")
    for kind, (session, spec) in sessions.items():
        nll, n = onnx_nll(session, spec, ids)
        bpc = metrics(nll, n, scored_chars(chars, first))["bpc"]
        size = (folders[kind] / "model.onnx").stat().st_size / 2**20
        print(f"| {kind} | {size:.1f} MiB | {bpc:.4f} | {1000 * seconds[kind] / args.tokens:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
