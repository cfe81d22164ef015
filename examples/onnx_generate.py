"""Greedy text from an `rnnlm export` folder with onnxruntime, numpy and tokenizers only (no torch, no rnnlm).

    python examples/onnx_generate.py EXPORT_DIR "Napoleon was the Emperor of" [MAX_NEW_TOKENS]

Prints the continuation on stdout (as `rnnlm generate --temperature 0` makes it) and the time per token on stderr.
Runs a float32 export and an int8 one (`rnnlm export --quantize int8`) alike: inputs and outputs are the same.
"""
import json, sys, time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

folder, prompt = Path(sys.argv[1]), sys.argv[2]
max_new_tokens = int(sys.argv[3]) if len(sys.argv) > 3 else 40
config = json.loads((folder / "config.json").read_text())
tokenizer = Tokenizer.from_file(str(folder / config["tokenizer"]))
session = ort.InferenceSession(str(folder / config["model"]), providers=["CPUExecutionProvider"])

state = {s["name"]: np.zeros((1, s["shape"][1]), np.float32) for s in config["state"]}  # zeros to start
tokens = np.array([tokenizer.encode(prompt, add_special_tokens=False).ids], np.int64)  # (1, T): the prompt
new, start = [], time.perf_counter()
for _ in range(max_new_tokens):
    logits, *next_state = session.run(None, {"tokens": tokens, **state})
    state = dict(zip(state, next_state))  # outputs come in the inputs' order: h_0_next, c_0_next, ...
    new.append(int(logits[0, -1].argmax()))  # greedy; sample from softmax(logits / temperature) instead
    tokens = np.array([[new[-1]]], np.int64)  # then one token at a time
elapsed = time.perf_counter() - start
print(tokenizer.decode(new, skip_special_tokens=False))
weights = config.get("quantization") or "float32"
print(f"{1000 * elapsed / max_new_tokens:.2f} ms per token ({max_new_tokens} tokens, the prompt's pass included; "
      f"{weights} weights)", file=sys.stderr)
