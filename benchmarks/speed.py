"""Throughput of rnnlm's recurrent layers and language model against torch.nn, side by side.

    python benchmarks/speed.py                    # the full table (minutes)
    python benchmarks/speed.py --quick            # a smoke run in seconds
    python benchmarks/speed.py --json bench.json  # also write the numbers as JSON

Everything is measured in one process, contenders alternating (benchmarks/timing.py):
each round times every contender once (the order reversed every other round), and the
reported number is the median over rounds, so a neighbour's load on the shared cores
hits all of them alike.

* Training: tokens/s of a full step (forward + backward + AdamW step) of a 2-layer stack
  of our ``RecurrentLayer`` against ``torch.nn.LSTM/GRU/RNN(num_layers=2)`` of the same
  sizes (input size = hidden size), and of the whole language model at a config's
  settings against the same network built on ``torch.nn.LSTM``/GRU/RNN.
* Generation: tokens/s of ``step`` at batch 1 and batch 16, against torch's layer run
  one step at a time, and against the time of that step's matrix-vector products alone.
* The machine's matmul peak: GFLOP/s of a 2048 x 2048 fp32 matmul. It is one more
  contender in every training comparison, so each training row's MFU divides by the
  peak measured in the same rounds: a shared machine's speed wanders within minutes,
  and a peak timed minutes earlier would move the MFU by as much. The table's header
  gives the peak timed before and after everything (median), which the generation rows
  use.
* Model FLOP utilisation (MFU) = achieved FLOP/s / matmul peak, counting matmul FLOPs:
  a recurrent layer's forward is 2*B*T*(I+H)*G*H (G gates), the output layer's
  2*B*T*H*V, and a training step ~3x the forward.

Subnormal floats are flushed to zero for every contender (see `measure`).
Results and how to read them: docs/speed.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from a checkout

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks.timing import adamw, at_precision, interleaved, lm_train_step_fn  # noqa: E402
from rnnlm import fused  # noqa: E402
from rnnlm.cells import CELLS, RecurrentLayer  # noqa: E402
from rnnlm.config import load_config  # noqa: E402
from rnnlm.device import native_cpu_bf16  # noqa: E402
from rnnlm.model import RNNLM, count_parameters  # noqa: E402

# The reference each of our cells is measured against; the benchmark's own mapping.
TORCH_LAYER = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}
# (batch, seq_len, hidden, layers): a wide layer at a short length and a narrower one at a long
# length (the speed goals in docs/speed.md), and tiny ones for --quick.
SHAPES = [(32, 64, 512, 2), (64, 128, 256, 2)]
QUICK_SHAPES = [(4, 8, 32, 2)]
GEN_BATCHES = [1, 16]
# The language-model rows of --quick: the config's network shrunk to seconds.
QUICK_LM_OVERRIDES = ["model.hidden_size=32", "train.seq_len=8", "train.batch_size=4", "tokenizer.vocab_size=300"]


@dataclass
class Row:
    """One line of the table: a contender's throughput on one task and shape."""

    task: str  # "train" | "generate" | "lm train" | "lm generate"
    contender: str  # e.g. "ours lstm", "torch.nn.LSTM"
    shape: str
    tokens_per_s: float
    flops_per_token: float
    mfu: float = float("nan")
    ratio: float = float("nan")  # ours / torch, on the "ours" rows
    vs_matvec: float = float("nan")  # generation: time per token / matvec-only time per token
    peak_flops: float = float("nan")  # training: the matmul peak timed in the same rounds
    extra: dict = field(default_factory=dict)


def matmul_peak(n: int = 2048) -> Callable[[], None]:
    """A call that does one n x n fp32 matmul (2 n^3 FLOPs)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    return lambda: torch.mm(a, b, out=out)


def torch_name(cell: str) -> str:
    """The reference contender's name for a cell, e.g. "torch.nn.LSTM"."""
    return f"torch.nn.{TORCH_LAYER[cell].__name__}"


def layer_flops_per_token(cell: str, input_size: int, hidden_size: int) -> float:
    """Forward matmul FLOPs of one recurrent layer per token: 2*(I+H)*G*H, G = the cell's
    num_gates (2*I*G*H for the minimal cells, which have no W_hh)."""
    kind = CELLS[cell]
    return 2.0 * (input_size + (hidden_size if kind.recurrent_weights else 0)) * kind.num_gates * hidden_size


# ------------------------------------------------------------------ layer stacks


class OurStack(nn.Module):
    """`num_layers` RecurrentLayers of one cell; the first reads `input_size` (default: hidden size)."""

    def __init__(self, cell: str, hidden_size: int, num_layers: int, input_size: int | None = None):
        super().__init__()
        sizes = [input_size or hidden_size] + [hidden_size] * (num_layers - 1)
        self.layers = nn.ModuleList(RecurrentLayer(cell, i, hidden_size) for i in sizes)

    def forward(self, x):
        for layer in self.layers:
            x, _ = layer(x, None)
        return x


class TorchStack(nn.Module):
    """torch.nn.LSTM/GRU/RNN(num_layers=...): the reference, never used by the model."""

    def __init__(self, cell: str, hidden_size: int, num_layers: int):
        super().__init__()
        self.rnn = TORCH_LAYER[cell](hidden_size, hidden_size, num_layers=num_layers)

    def forward(self, x):
        return self.rnn(x)[0]


def train_step_fn(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    """One forward + backward + AdamW step on a fixed input (which needs grad, as an embedding's output would)."""
    opt = adamw(model)

    def step():
        opt.zero_grad(set_to_none=True)
        x.grad = None
        model(x).square().mean().backward()
        opt.step()

    return step


def bench_train(cells, shapes, rounds, reps, peak_fn, peak_flops) -> list[Row]:
    """Training rows of the layer stacks: ours against torch's, the matmul peak in the same rounds."""
    rows = []
    for B, T, H, L in shapes:
        shape = f"B={B} T={T} H={H} L={L}"
        contenders, tokens = {"peak": peak_fn}, B * T
        for cell in cells:
            torch.manual_seed(0)
            x = torch.randn(T, B, H, requires_grad=True)
            contenders[f"ours {cell}"] = train_step_fn(OurStack(cell, H, L), x)
            contenders[torch_name(cell)] = train_step_fn(TorchStack(cell, H, L), x)
        secs = interleaved(contenders, rounds, reps)
        peak = peak_flops / secs["peak"]
        for cell in cells:
            flops = 3 * L * layer_flops_per_token(cell, H, H)
            ours, ref = secs[f"ours {cell}"], secs[torch_name(cell)]
            rows.append(Row("train", f"ours {cell}", shape, tokens / ours, flops, ratio=ref / ours, peak_flops=peak))
            rows.append(Row("train", torch_name(cell), shape, tokens / ref, flops, peak_flops=peak))
    return rows


# ------------------------------------------------------------------- generation


def matvec_fn(weights: list[torch.Tensor], batch: int) -> Callable[[], None]:
    """A step's matrix-vector products alone: v @ W^T for each weight, in step's layout."""
    pairs = [(torch.randn(batch, w.shape[1]), w.detach().t().contiguous(), torch.empty(batch, w.shape[0]))
             for w in weights]

    def run():
        for v, w_t, out in pairs:
            torch.mm(v, w_t, out=out)

    return run


def generate_rows(task: str, cell_label: str, ref_name: str, shape: str, batch: int, flops: float,
                  secs: dict[str, float]) -> list[Row]:
    """The two generation rows (ours, torch's) from the seconds per step of "ours", ref_name and "matvec"."""
    ours, ref, matvec = secs["ours"], secs[ref_name], secs["matvec"]
    return [Row(task, cell_label, shape, batch / ours, flops, ratio=ref / ours, vs_matvec=ours / matvec),
            Row(task, ref_name, shape, batch / ref, flops, vs_matvec=ref / matvec)]


def stack_step_fns(ours: OurStack, ref: TorchStack, batch: int) -> tuple[Callable[[], None], Callable[[], None]]:
    """One generation step of each stack at `batch`: ours through its layers' steppers, torch's on a length-1 sequence."""
    x = torch.randn(batch, ours.layers[0].hidden_size)
    states = [layer.init_state(batch) for layer in ours.layers]
    ref_x, ref_state = x[None], [None]  # (1, B, H)
    with torch.no_grad():  # as a generation loop runs it
        steps = [layer.stepper() for layer in ours.layers]

    @torch.no_grad()
    def ours_step():
        h = x
        for i, step in enumerate(steps):
            h, states[i] = step(h, states[i])

    @torch.no_grad()
    def ref_step():
        _, ref_state[0] = ref.rnn(ref_x, ref_state[0])

    return ours_step, ref_step


def bench_generate(cells, shapes, batches, rounds, reps) -> list[Row]:
    """Generation rows of the layer stacks (the first shape's H and L), at each batch size."""
    rows = []
    _B, _T, H, L = shapes[0]
    for cell in cells:
        torch.manual_seed(0)
        ours, ref = OurStack(cell, H, L).eval(), TorchStack(cell, H, L).eval()
        weights = [w for layer in ours.layers for w in (layer.cell.weight_ih, layer.cell.weight_hh)]
        for B in batches:
            ours_step, ref_step = stack_step_fns(ours, ref, B)
            name = torch_name(cell)
            secs = interleaved({"ours": ours_step, name: ref_step, "matvec": matvec_fn(weights, B)}, rounds, reps)
            flops = L * layer_flops_per_token(cell, H, H)
            rows += generate_rows("generate", f"ours {cell}", name, f"B={B} H={H} L={L}", B, flops, secs)
    return rows


# ------------------------------------------------------------ minimal cells

# Each minimal cell against the gated cell it simplifies.
MIN_CELL_OF = {"mingru": "gru", "minlstm": "lstm"}


def equal_parameter_width(cell: str, gated: str, hidden_size: int, num_layers: int) -> int:
    """The width at which a stack of `cell` (reading `hidden_size` inputs) has as many
    parameters as the `gated` stack of width `hidden_size`, to the nearest multiple of 8."""
    target = count_parameters(OurStack(gated, hidden_size, num_layers))
    widths = range(8, 8 * hidden_size, 8)
    return min(widths, key=lambda w: abs(count_parameters(OurStack(cell, w, num_layers, hidden_size)) - target))


def bench_min_train(cells, shapes, precisions, rounds, reps) -> list[Row]:
    """Training rows of the minimal cells: each at the gated cell's width and at equal
    parameter count, against our gated cell and torch's, at each precision (all of a
    shape's contenders in the same rounds)."""
    rows = []
    for B, T, H, L in shapes:
        for cell in cells:
            gated = MIN_CELL_OF[cell]
            wide = equal_parameter_width(cell, gated, H, L)
            torch.manual_seed(0)
            x = torch.randn(T, B, H, requires_grad=True)
            stacks = {f"ours {cell}": OurStack(cell, H, L), f"ours {cell} H={wide}": OurStack(cell, wide, L, H),
                      f"ours {gated}": OurStack(gated, H, L), torch_name(gated): TorchStack(gated, H, L)}
            contenders = {(name, p): at_precision(train_step_fn(stack, x), p)
                          for p in precisions for name, stack in stacks.items()}
            secs = interleaved(contenders, rounds, reps)
            for (name, p), sec in secs.items():
                stack = stacks[name]
                flops = 3 * sum(layer_flops_per_token(layer.cell_name, layer.input_size, layer.hidden_size)
                                for layer in stack.layers) if name.startswith("ours") else \
                    3 * L * layer_flops_per_token(gated, H, H)
                rows.append(Row(f"min train {p}", name, f"B={B} T={T} H={H} L={L}", B * T / sec, flops,
                                ratio=secs[(f"ours {gated}", p)] / sec,
                                extra={"parameters": count_parameters(stack), "vs": f"ours {gated}"}))
    return rows


def bench_min_generate(cells, shapes, rounds, reps) -> list[Row]:
    """Generation rows (batch 1) of the minimal cells against our gated cell of the same width."""
    rows = []
    _B, _T, H, L = shapes[0]
    for cell in cells:
        gated = MIN_CELL_OF[cell]
        torch.manual_seed(0)
        steps = {}
        for name, c in ((f"ours {cell}", cell), (f"ours {gated}", gated)):
            stack = OurStack(c, H, L).eval()
            steps[name] = stack_step_fns(stack, TorchStack(gated, H, L).eval(), 1)[0]
        secs = interleaved(steps, rounds, reps)
        for name, sec in secs.items():
            c = cell if name == f"ours {cell}" else gated
            rows.append(Row("min generate", name, f"B=1 H={H} L={L}", 1 / sec, L * layer_flops_per_token(c, H, H),
                            ratio=secs[f"ours {gated}"] / sec, extra={"vs": f"ours {gated}"}))
    return rows


# --------------------------------------------------------------- language model


class TorchLM(nn.Module):
    """rnnlm.model.RNNLM's network with torch.nn.LSTM/GRU/RNN layers: the reference."""

    def __init__(self, ours: nn.Module):
        super().__init__()
        cfg = ours.cfg
        self.embedding, self.decoder, self.drop = ours.embedding, ours.decoder, ours.drop
        self.layers = nn.ModuleList(
            TORCH_LAYER[cfg.cell](layer.input_size, layer.hidden_size) for layer in ours.layers
        )

    def forward(self, idx, state=None):
        x = self.drop(F.embedding(idx.t(), self.embedding.weight))  # (T, B, E)
        state = state or [None] * len(self.layers)
        new_state = []
        for layer, s in zip(self.layers, state):
            x, s = layer(x, s)
            x = self.drop(x)
            new_state.append(s)
        return self.decoder(x.transpose(0, 1)), new_state  # (B, T, V)


def lm_flops_per_token(ours: RNNLM, vocab_size: int) -> float:
    """Forward matmul FLOPs of the language model per token: its recurrent layers and the output layer."""
    m = ours.cfg
    per_token = sum(layer_flops_per_token(m.cell, layer.input_size, layer.hidden_size) for layer in ours.layers)
    return per_token + 2.0 * m.hidden_size * vocab_size


def bench_lm_train(cfg, ours: RNNLM, ref: TorchLM, rounds: int, reps: int, peak_fn, peak_flops) -> list[Row]:
    """Training rows of the whole language model: ours against TorchLM, the matmul peak in the same rounds."""
    m, V, B, T = cfg.model, cfg.tokenizer.vocab_size, cfg.train.batch_size, cfg.train.seq_len
    idx, target = torch.randint(V, (B, T)), torch.randint(V, (B, T))
    name = f"{torch_name(m.cell)} LM"
    shape = f"{m.cell} B={B} T={T} H={m.hidden_size} L={m.num_layers} V={V}"
    clip = cfg.optim.clip_grad_norm or float("inf")
    flops = 3 * lm_flops_per_token(ours, V)
    ours.train(), ref.train()
    contenders = {"ours": lm_train_step_fn(ours, idx, target, clip),
                  name: lm_train_step_fn(ref, idx, target, clip), "peak": peak_fn}
    low = [p for p in precisions() if p != "fp32"]
    for p in low:  # the same model under autocast, as train.precision=auto runs it here
        contenders[f"ours {p}"] = at_precision(lm_train_step_fn(copy.deepcopy(ours), idx, target, clip), p)
    secs = interleaved(contenders, rounds, reps)
    peak = peak_flops / secs["peak"]
    rows = [Row("lm train", f"ours {m.cell} LM", shape, B * T / secs["ours"], flops,
                ratio=secs[name] / secs["ours"], peak_flops=peak),
            Row("lm train", name, shape, B * T / secs[name], flops, peak_flops=peak)]
    for p in low:
        rows.append(Row(f"lm train {p}", f"ours {m.cell} LM", shape, B * T / secs[f"ours {p}"], flops,
                        ratio=secs["ours"] / secs[f"ours {p}"], peak_flops=peak, extra={"vs": "ours fp32"}))
    return rows


def bench_lm_generate(cfg, ours: RNNLM, ref: TorchLM, rounds: int, reps: int, batches) -> list[Row]:
    """Generation rows of the whole language model: RNNLM.stepper against TorchLM on one token."""
    m, V = cfg.model, cfg.tokenizer.vocab_size
    name = f"{torch_name(m.cell)} LM"
    ours.eval(), ref.eval()
    weights = [w for layer in ours.layers for w in (layer.cell.weight_ih, layer.cell.weight_hh)] + [ours.decoder.weight]
    rows = []
    for b in batches:
        token = torch.randint(V, (b,))
        state, ref_state = [ours.init_state(b)], [None]
        step = ours.stepper()  # as generation runs it

        def ours_step():
            _, state[0] = step(token, state[0])

        @torch.no_grad()
        def ref_step():
            _, ref_state[0] = ref(token[:, None], ref_state[0])

        # 25x the training reps: a timing then spans ~50 tokens in a row, as a generation loop
        # runs them, rather than a few tokens right after the other contender evicted the caches.
        secs = interleaved({"ours": ours_step, name: ref_step, "matvec": matvec_fn(weights, b)}, rounds, reps * 25)
        shape = f"{m.cell} B={b} H={m.hidden_size} L={m.num_layers} V={V}"
        rows += generate_rows("lm generate", f"ours {m.cell} LM", name, shape, b, lm_flops_per_token(ours, V), secs)
    return rows


def bench_lm(config_path: str, overrides: list[str], rounds: int, reps: int, batches, peak_fn, peak_flops) -> list[Row]:
    """The whole language model of a config (vocabulary size from tokenizer.vocab_size): training and generation rows."""
    cfg = load_config(config_path, overrides)
    torch.manual_seed(0)
    ours = RNNLM(cfg.tokenizer.vocab_size, cfg.model)
    ref = TorchLM(copy.deepcopy(ours))
    rows = bench_lm_train(cfg, ours, ref, rounds, reps, peak_fn, peak_flops)
    return rows + bench_lm_generate(cfg, ours, ref, rounds, reps, batches)


# ------------------------------------------------------------------------- main


def format_table(rows: list[Row], peak: float, n: int, flush: bool) -> str:
    """The printed table, one line per row, under a header naming the peak, torch and threads."""
    head = (f"{'task':<15} {'contender':<20} {'shape':<36} {'tokens/s':>10} {'ours/torch':>10} {'MFU':>6} "
            f"{'of peak':>8} {'vs matvec':>9}")
    lines = [f"matmul peak: {peak / 1e9:.1f} GFLOP/s ({n}x{n} fp32, median over rounds; training rows: "
             "'of peak' is the peak in GFLOP/s timed in their own rounds, their MFU's divisor); "
             f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
             f"flush denormals {'on' if flush else 'off'}", head, "-" * len(head)]

    def fmt(v: float, spec: str) -> str:
        return format(v, spec) if v == v else ""  # blank for NaN

    if any("vs" in r.extra for r in rows):
        lines.insert(1, "minimal-cell rows ('min ...'): 'ours/torch' is the ratio to our gated cell of the same "
                        "width (ours gru for mingru, ours lstm for minlstm); 'lm train bf16': the ratio to our "
                        "model in fp32; both timed in the same rounds. MFU divides by the fp32 peak, also for bf16")
    for r in rows:
        matvec = fmt(r.vs_matvec, ">8.2f") + ("x" if r.vs_matvec == r.vs_matvec else "")
        lines.append(
            f"{r.task:<15} {r.contender:<20} {r.shape:<36} {r.tokens_per_s:>10.0f} {fmt(r.ratio, '>10.2f'):>10} "
            f"{fmt(100 * r.mfu, '>5.1f') + '%':>6} {fmt(r.peak_flops / 1e9, '>8.1f'):>8} {matvec:>9}"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; --cells and --min-cells are checked and parsed into lists."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny shapes, one round: a smoke run in seconds")
    p.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds per contender (median taken)")
    p.add_argument("--cells", default="lstm,gru,rnn", help="comma-separated cells to measure")
    p.add_argument("--config", default="configs/war_and_peace.yaml", help="config for the language-model rows")
    p.add_argument("--no-lm", action="store_true", help="skip the language-model rows")
    p.add_argument("--min-cells", default="mingru,minlstm",
                   help="comma-separated minimal cells to measure against their gated cells ('' for none)")
    args = p.parse_args(argv)
    args.cells = [c for c in args.cells.split(",") if c]
    args.min_cells = [c for c in args.min_cells.split(",") if c]
    for c in args.cells:
        if c not in TORCH_LAYER:
            p.error(f"unknown cell {c!r}: valid cells are {', '.join(TORCH_LAYER)}")
    for c in args.min_cells:
        if c not in MIN_CELL_OF:
            p.error(f"unknown minimal cell {c!r}: valid ones are {', '.join(MIN_CELL_OF)}")
    return args


def precisions() -> list[str]:
    """fp32, and bf16 where the CPU multiplies bf16 natively (AMX or AVX-512 BF16)."""
    return ["fp32"] + (["bf16"] if native_cpu_bf16() else [])


def measure(args: argparse.Namespace) -> tuple[list[Row], float, int, bool]:
    """Every row, with its MFU; also the matmul peak (FLOP/s), its matrix size and whether denormals are flushed."""
    # Gradients that vanish through time reach subnormal floats, which the CPU handles
    # up to 100x slower (measured: a (32, 2048) @ (2048, 512) addmm, 0.6 ms -> 67 ms).
    # Flushing them to zero is what a CPU trainer wants anyway; same for all contenders.
    flush = torch.set_flush_denormal(True)
    fused.keep_freed_memory()  # as the trainer does
    quick = args.quick
    rounds = args.rounds or (1 if quick else 7)  # many short rounds: a median robust to a busy neighbour
    shapes = QUICK_SHAPES if quick else SHAPES
    n = 256 if quick else 2048
    peak_fn, peak_flops = matmul_peak(n), 2 * n**3
    peak = peak_flops / interleaved({"peak": peak_fn}, max(rounds, 3), 3)["peak"]

    rows = bench_train(args.cells, shapes, rounds, reps=1 if quick else 2, peak_fn=peak_fn, peak_flops=peak_flops)
    rows += bench_generate(args.cells, shapes, GEN_BATCHES, rounds, reps=5 if quick else 100)
    if args.min_cells:
        rows += bench_min_train(args.min_cells, shapes, precisions(), rounds, reps=1 if quick else 2)
        rows += bench_min_generate(args.min_cells, shapes, rounds, reps=5 if quick else 100)
    if not args.no_lm:
        rows += bench_lm(args.config, QUICK_LM_OVERRIDES if quick else [], rounds, reps=1 if quick else 2,
                         batches=GEN_BATCHES, peak_fn=peak_fn, peak_flops=peak_flops)
    # The peak again after the run, so a change in the machine's load shows up in it.
    peak = statistics.median([peak, peak_flops / interleaved({"peak": peak_fn}, max(rounds, 3), 3)["peak"]])
    for r in rows:
        r.mfu = r.tokens_per_s * r.flops_per_token / (r.peak_flops if r.peak_flops == r.peak_flops else peak)
    return rows, peak, n, flush


def main(argv: list[str] | None = None) -> dict:
    """Measure, print the table, and return (and with --json write) the results."""
    args = parse_args(argv)
    rows, peak, n, flush = measure(args)
    print(format_table(rows, peak, n, flush))
    result = {
        "matmul_peak_flops": peak,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "argv": list(argv) if argv is not None else sys.argv[1:],
        "quick": args.quick,
        "flush_denormal": flush,
        "rows": [asdict(r) for r in rows],
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
