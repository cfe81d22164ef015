"""Command line: `rnnlm COMMAND`, one subcommand for each entry of `COMMANDS` (train,
generate, evaluate, plot, gradient-flow, predict, export, serve, configs); `rnnlm --version`
the version. `rnnlm-train`, `rnnlm-generate`, `rnnlm-evaluate` and scripts/*.py are the
first three on their own; `python -m rnnlm` is the same command.

Every user-facing failure is an RnnlmError, printed here as one line `error: ...` with
exit status 2 (a mistyped option too); a training run stopped by SIGINT or SIGTERM exits
with 128 + the signal number (130, 143) after saving its checkpoint.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from pathlib import Path
from typing import Callable, Optional

from rnnlm.errors import RnnlmError, TrainingInterrupted


def _warning_line(message, category, filename, lineno, file=None, line=None):
    sys.stderr.write(f"warning: {message}\n")


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a usage mistake reported as one `error:` line like every other."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def finite_float(text: str) -> float:
    """The argparse type of every float option: a finite number. NaN would slip past every
    range check (each comparison with it is False) and end deep inside torch."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number (not NaN or infinity), got {text!r}")
    return value


CHECKPOINT_HELP = "a best.pt or last.pt written by training, or a model folder written by rnnlm export --format hf"


def run(fn: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Call a command, turning user errors into one line and a non-zero exit code."""
    warnings.showwarning = _warning_line
    try:
        return fn(args) or 0
    except RnnlmError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingInterrupted as e:
        print(f"interrupted: {e}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


# ---------------------------------------------------------------------------------------
# train


def add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="a built-in config's name (rnnlm configs lists them) or a YAML file "
                                          "(default: the built-in defaults, the same as war_and_peace)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value",
                   help="dotted overrides, each value parsed as YAML, e.g. optim.lr=3e-3 model.cell=gru")
    p.add_argument("--resume", metavar="RUN_DIR", nargs="?", const="",
                   help="continue the run in RUN_DIR (default: the config's train.out_dir) from last.pt")
    p.add_argument("--overwrite", action="store_true", help="start over in an existing run directory")


def cmd_train(args: argparse.Namespace) -> int:
    from rnnlm.config import load_config
    from rnnlm.train import train

    overrides = list(args.overrides)
    config = args.config
    if args.resume is not None:
        overrides.append("train.resume=true")
        if args.resume:
            overrides.append(f"train.out_dir={args.resume}")
            # `--resume RUN_DIR` alone continues with the run's own resolved config.
            if config is None and (Path(args.resume) / "config.yaml").is_file():
                config = Path(args.resume) / "config.yaml"
    if args.overwrite:
        overrides.append("train.overwrite=true")
    cfg = load_config(config, overrides)
    train(cfg)
    return 0


# ---------------------------------------------------------------------------------------
# configs


def add_configs_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="print this config's YAML (to save and edit: rnnlm configs tiny > my.yaml)")


def cmd_configs(args: argparse.Namespace) -> int:
    from rnnlm.config import DEFAULT_CONFIG, builtin_configs, config_summary, find_config

    if args.name is not None:
        print(find_config(args.name).read_text(encoding="utf-8"), end="")
        return 0
    configs = builtin_configs()
    width = max(map(len, configs))
    print("built-in configs: rnnlm train --config NAME (a YAML file works too); rnnlm configs NAME prints one")
    for name, file in configs.items():
        print(f"  {name:<{width}}  {config_summary(file)}")
    print(f"default: {DEFAULT_CONFIG} (rnnlm train with no --config); the files are in {configs[DEFAULT_CONFIG].parent}")
    return 0


# ---------------------------------------------------------------------------------------
# generate


def add_generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prompt", help="text to continue (default: the checkpoint's sample.prompt; '-' reads stdin)")
    src.add_argument("--prompt-file", help="read the prompt from this UTF-8 file (other bytes become U+FFFD)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="tokens to generate (default: sample.max_new_tokens)")
    p.add_argument("--temperature", type=finite_float, default=None, help="softmax temperature; 0 = greedy")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens (0 = all)")
    p.add_argument("--top-p", type=finite_float, default=None, help="nucleus sampling threshold in (0, 1]")
    p.add_argument("--num-samples", type=int, default=1, help="independent continuations to print")
    p.add_argument("--seed", type=int, default=None, help="seed for a reproducible sample")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available, else cpu)")
    p.add_argument("--interactive", "-i", action="store_true",
                   help="keep the model loaded and complete each line typed; /temperature 0.7, /top-k 20, "
                        "/top-p 0.9, /max-new-tokens 50 change the settings; Ctrl-D leaves")


def read_prompt(args: argparse.Namespace, default: str) -> str:
    """The prompt from --prompt-file, stdin ('-' or piped) or the argument, else `default`;
    bytes that are not UTF-8 are replaced by U+FFFD with a warning (see sample.prompt_text)."""
    from rnnlm.sample import prompt_text

    if args.prompt_file:
        from rnnlm.files import regular_file_problem

        path = Path(args.prompt_file)
        problem = regular_file_problem(path, fifo_ok=True)
        if problem:
            raise RnnlmError(f"prompt file {str(path)!r} {problem}; pass a UTF-8 text file with --prompt-file")
        try:
            data = path.read_bytes()
        except OSError as e:
            raise RnnlmError(f"cannot read prompt file {str(path)!r} ({e.strerror}); check its permissions") from None
        return prompt_text(data.decode("utf-8", "surrogateescape").removeprefix("\ufeff"), f"prompt file {path}")
    if args.prompt == "-" or (args.prompt is None and _stdin_has_data()):
        # Piped text is the prompt; an empty stdin (/dev/null under cron or CI) is not.
        return prompt_text(read_stdin(), "stdin") or (default if args.prompt is None else "")
    return default if args.prompt is None else prompt_text(args.prompt, "the command line")


def read_stdin() -> str:
    """All of stdin, its undecodable bytes kept as surrogates for sample.prompt_text (see lenient_stdin)."""
    lenient_stdin()
    return sys.stdin.read()


def lenient_stdin() -> None:
    """Have stdin hand on bytes it cannot decode as surrogates, as the command line does,
    instead of raising in the middle of a read."""
    try:
        sys.stdin.reconfigure(errors="surrogateescape")
    except (AttributeError, ValueError, OSError):  # not a text stream of a file, or already read from
        pass


def _stdin_has_data() -> bool:
    """True when text is piped in (not a terminal, ready to read)."""
    import select
    try:
        if sys.stdin is None or sys.stdin.closed or sys.stdin.isatty():
            return False
        ready, _, _ = select.select([sys.stdin], [], [], 0)
        return bool(ready)
    except (OSError, ValueError):
        return False


def cmd_generate(args: argparse.Namespace) -> int:
    from rnnlm.config import check_sampling
    from rnnlm.inference import load_model
    from rnnlm.sample import generate, print_stream
    from rnnlm.tokenizer import word_separator

    lm = load_model(args.checkpoint, args.device)
    sc = lm.config.sample
    opts = dict(
        max_new_tokens=sc.max_new_tokens if args.max_new_tokens is None else args.max_new_tokens,
        temperature=sc.temperature if args.temperature is None else args.temperature,
        top_k=sc.top_k if args.top_k is None else args.top_k,
        top_p=sc.top_p if args.top_p is None else args.top_p,
        num_samples=args.num_samples, seed=args.seed,
    )
    check_sampling(opts, name=lambda key: "--" + key.replace("_", "-"))
    if args.interactive:
        return interactive_generate(lm, opts)
    prompt = read_prompt(args, sc.prompt)
    separator = word_separator(lm.tokenizer)
    if args.num_samples == 1:
        # The prompt is shown with the first new text, so a bad option or prompt prints nothing.
        shown = []

        def show(piece: str) -> None:
            if not shown:
                print_stream(prompt + separator)
                shown.append(True)
            print_stream(piece)

        generate(lm, prompt, on_text=show, **opts)
        if not shown:
            print_stream(prompt)
        print()
    else:
        for i, text in enumerate(generate(lm, prompt, **opts)):
            print(f"--- sample {i + 1}\n{prompt}{separator}{text}")
    return 0


# ---------------------------------------------------------------------------------------
# evaluate


def add_evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--split", choices=["train", "valid", "test"], default=None,
                     help="a split of the checkpoint's corpus (default: test)")
    src.add_argument("--text", metavar="FILE", help="any UTF-8 text file, scored as a whole")
    p.add_argument("--batch-size", type=int, default=None, help="parallel streams (default: the run's)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per forward pass")
    p.add_argument("--dynamic", type=finite_float, default=None, metavar="LR",
                   help="dynamic evaluation: after scoring each --seq-len segment, one SGD step at this "
                        "learning rate on it (one stream; the checkpoint is not changed)")
    p.add_argument("--dynamic-rms", type=int, nargs="?", const=100_000, default=0, metavar="TOKENS",
                   help="with --dynamic: divide each weight's step by its gradient RMS over about TOKENS tokens "
                        "of the checkpoint's training split (default 100000; needs its data.path)")
    p.add_argument("--dynamic-decay", type=finite_float, default=0.0, metavar="DECAY",
                   help="with --dynamic: pull the weights back towards the checkpoint's by this rate per "
                        "segment (scaled by the gradient RMS with --dynamic-rms), in [0, 1)")
    p.add_argument("--encoding", default=None, help="text encoding of --text (default: the run's data.encoding)")
    p.add_argument("--errors", choices=["strict", "replace", "ignore"], default=None,
                   help="undecodable bytes in --text (default: the run's data.errors)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available, else cpu)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a line")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from rnnlm.evaluate import check_dynamic, format_metrics, score_split, score_text_file
    from rnnlm.inference import load_model

    if args.batch_size is not None and args.batch_size < 1 or args.seq_len < 1:
        raise RnnlmError("--batch-size and --seq-len must be at least 1")
    check_dynamic(args.dynamic, args.dynamic_decay, args.dynamic_rms,
                  options={"dynamic_lr": "--dynamic", "dynamic_decay": "--dynamic-decay",
                           "dynamic_rms": "--dynamic-rms"})
    if args.dynamic is not None and args.batch_size not in (None, 1):
        raise RnnlmError("--dynamic scores the text as one stream: leave out --batch-size")
    if args.dynamic is None and (args.dynamic_rms or args.dynamic_decay):
        raise RnnlmError("--dynamic-rms and --dynamic-decay refine dynamic evaluation: add --dynamic LR")
    lm = load_model(args.checkpoint, args.device)
    batch_size = args.batch_size or lm.config.train.batch_size
    kwargs = dict(batch_size=batch_size, seq_len=args.seq_len, dynamic_lr=args.dynamic,
                  dynamic_decay=args.dynamic_decay, dynamic_rms=args.dynamic_rms)
    if args.text:
        name = args.text
        m = score_text_file(lm, args.text, encoding=args.encoding, errors=args.errors, **kwargs)
    else:
        name = args.split or "test"
        m = score_split(lm, name, **kwargs)
    if args.json:
        print(json.dumps({"checkpoint": args.checkpoint, "source": name, "dynamic_lr": args.dynamic,
                          "dynamic_decay": args.dynamic_decay, "dynamic_rms": args.dynamic_rms, **m}))
    elif args.dynamic is not None:
        how = f"lr {args.dynamic:g}" + (f", rms over {args.dynamic_rms:,} tokens" if args.dynamic_rms else "")
        how += f", decay {args.dynamic_decay:g}" if args.dynamic_decay else ""
        print(format_metrics(f"{name} (dynamic evaluation, {how})", m))
    else:
        print(format_metrics(name, m))
    return 0


def interactive_generate(lm, opts: dict) -> int:
    """generate --interactive: complete lines from the terminal, or from stdin when piped."""
    from rnnlm.interactive import HELP, run_session, terminal_lines

    settings = {k: opts[k] for k in ("max_new_tokens", "temperature", "top_k", "top_p", "seed")}
    lenient_stdin()
    if sys.stdin.isatty():
        print(HELP, file=sys.stderr)
        lines = terminal_lines()
    else:
        lines = sys.stdin
    run_session(lm, settings, lines)
    return 0


# ---------------------------------------------------------------------------------------
# plot


def add_plot_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (train.out_dir) holding metrics.jsonl")
    p.add_argument("--out", "-o", default=None, help="PNG file to write (default: RUN_DIR/training.png)")


def cmd_plot(args: argparse.Namespace) -> int:
    from rnnlm.plots import plot_run

    print(plot_run(args.run_dir, args.out))
    return 0


# ---------------------------------------------------------------------------------------
# gradient-flow


def add_gradient_flow_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", action="append", default=[], metavar="PT",
                   help="a trained model (repeat to compare several); its corpus and tokenizer are used")
    p.add_argument("--config", "-c", help="YAML config for untrained models and the corpus (with --cells)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="dotted overrides of --config")
    p.add_argument("--cells", default=None,
                   help="comma-separated cells to measure untrained, e.g. rnn,gru,lstm (default with "
                        "--config alone: the config's cell)")
    p.add_argument("--seq-len", type=int, default=100, help="window length T (default 100)")
    p.add_argument("--windows", type=int, default=8, help="windows of validation text to average over (default 8)")
    p.add_argument("--hh-scale", type=finite_float, default=None,
                   help="multiply the untrained models' W_hh by this (e.g. 3 for an exploding rnn) and add a "
                        "panel of SGD steps with clipping off and on")
    p.add_argument("--clip", type=finite_float, default=None, help="clip threshold of that panel (default: optim.clip_grad_norm)")
    p.add_argument("--lr", type=finite_float, default=1.0, help="SGD learning rate of that panel (default 1.0)")
    p.add_argument("--steps", type=int, default=30, help="SGD steps of that panel (default 30)")
    p.add_argument("--seed", type=int, default=0, help="seed of the untrained models' initialisation")
    p.add_argument("--out", "-o", default="gradient_flow.png", help="PNG file to write (default gradient_flow.png)")


def cmd_gradient_flow(args: argparse.Namespace) -> int:
    from rnnlm import gradflow
    from rnnlm.inference import load_model

    if not args.checkpoint and not args.config:
        raise RnnlmError("gradient-flow needs --checkpoint PT (trained) or --config FILE (untrained), or both")
    if args.overrides and not args.config:
        raise RnnlmError("overrides need --config; a checkpoint's settings are fixed")
    if args.seq_len < 2 or args.windows < 1 or args.steps < 1:
        raise RnnlmError("--seq-len must be at least 2, --windows and --steps at least 1")
    trained = [load_model(path, "cpu") for path in args.checkpoint]
    cfg, cells = _gradient_flow_setup(args, trained)
    windows, vocab_size = _gradient_flow_windows(args, cfg, trained)

    curves = [gradflow.Curve(f"{lm.config.model.cell}, {Path(path).parent.name} step {lm.checkpoint_step}",
                             "trained", gradflow.gradient_flow(lm.model, windows))
              for path, lm in zip(args.checkpoint, trained)]
    untrained = gradflow.untrained_models(cfg.model, cells, vocab_size, seed=args.seed, hh_scale=args.hh_scale)
    group = "untrained" + (f", W_hh x {args.hh_scale:g}" if args.hh_scale else "")
    curves += [gradflow.Curve(cell, group, gradflow.gradient_flow(model, windows))
               for cell, model in zip(cells, untrained)]
    print(gradflow.format_table(curves))

    clip_runs, clip = None, None
    if args.hh_scale and untrained:
        clip = args.clip if args.clip is not None else (cfg.optim.clip_grad_norm or 1.0)
        clip_runs = [gradflow.clipping_run(untrained[0], windows, steps=args.steps, lr=args.lr, clip=c,
                                           label=f"{cells[0]}, {name}")
                     for c, name in ((0.0, "no clipping"), (clip, f"clip {clip:g}"))]
        for run in clip_runs:
            print(f"{run.label}: gradient norm before clipping {run.grad_norms[0]:.3g} -> {run.grad_norms[-1]:.3g}, "
                  f"loss {run.losses[0]:.3g} -> {run.losses[-1]:.3g} after {len(run.losses)} steps")
    title = f"||dL_T/dh_t|| of the top layer, {windows.size(0)} windows of {args.seq_len} tokens of {Path(cfg.data.path).name}"
    gradflow.plot_gradient_flow(curves, args.out, clip_runs=clip_runs, clip=clip, title=title)
    print(f"wrote {args.out}")
    return 0


def _gradient_flow_setup(args: argparse.Namespace, trained: list):
    """The config (--config, else the first checkpoint's) and the cells to measure untrained."""
    from rnnlm.cells import CELLS
    from rnnlm.config import load_config

    cfg = load_config(args.config, args.overrides) if args.config else trained[0].config
    cells = args.cells.split(",") if args.cells else ([] if trained else [cfg.model.cell])
    for cell in cells:
        if cell not in CELLS:
            raise RnnlmError(f"--cells: unknown cell {cell!r}; use a comma-separated list of {', '.join(CELLS)}")
    return cfg, cells


def _gradient_flow_windows(args: argparse.Namespace, cfg, trained: list):
    """Windows of validation text, one token sequence for every model: the first
    checkpoint's tokenizer, else the config's; and the vocabulary size."""
    from rnnlm import gradflow
    from rnnlm import tokenizer as tokenization
    from rnnlm.data import corpus_from_config

    tokenizer_json = tokenization.to_json(trained[0].tokenizer) if trained else None
    corpus = corpus_from_config(cfg, tokenizer_json=tokenizer_json, progress=False)
    windows = gradflow.text_windows(corpus.ids["valid"], args.windows, args.seq_len)
    vocab_size = corpus.tokenizer.get_vocab_size()
    if any(lm.model.vocab_size != vocab_size for lm in trained[1:]):
        raise RnnlmError("the checkpoints use different tokenizers; compare checkpoints trained on the same one")
    return windows, vocab_size


# ---------------------------------------------------------------------------------------
# predict


def add_predict_args(p: argparse.ArgumentParser) -> None:
    p.epilog = PREDICT_EPILOG
    p.add_argument("prompt", nargs="?", help="text whose next word is predicted ('-' reads stdin)")
    p.add_argument("--prompt-file", help="read the prompt from this UTF-8 file (a long text: a book)")
    p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    p.add_argument("-k", "--top-k", type=int, default=10, help="how many words to list (default 10)")
    p.add_argument("--beam", type=int, default=16,
                   help="partial words kept while searching bpe/char continuations (default 16)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available, else cpu)")


PREDICT_EPILOG = ("With a word tokenizer the next word is the next token. With bpe or char tokenizers a "
                  "small beam search runs over continuations up to the next word boundary (a space, line break "
                  "or punctuation after at least one letter), so the answers are whole words, not fragments; "
                  "a word's probability adds up the ways of spelling it in tokens.")


def cmd_predict(args: argparse.Namespace) -> int:
    from rnnlm.predict import format_table, next_words
    from rnnlm.inference import load_model

    if args.top_k < 1 or args.beam < 1:
        raise RnnlmError("-k/--top-k and --beam must be at least 1")
    if args.prompt is not None and args.prompt_file:
        raise RnnlmError("give the prompt either as an argument or with --prompt-file, not both")
    prompt = read_prompt(args, "")
    lm = load_model(args.checkpoint, args.device)
    print(format_table(next_words(lm, prompt, args.top_k, beam=max(args.beam, args.top_k))))
    return 0


# ---------------------------------------------------------------------------------------
# export


def add_export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    p.add_argument("--out", required=True, metavar="DIR",
                   help="folder to write the export into (new, empty, or an earlier export): model.onnx, tokenizer.json and "
                        "config.json; with --format hf model.safetensors, config.json, tokenizer.json, README.md")
    p.add_argument("--format", default="onnx",
                   help="onnx (default: a step function for onnxruntime) | hf (a model folder in the layout of "
                        "Hugging Face's hub, which rnnlm loads with --checkpoint DIR)")
    p.add_argument("--quantize", choices=["int8"], default=None,
                   help="with --format onnx: int8 weights (onnxruntime's dynamic quantization), a smaller, faster "
                        "graph whose logits move by tenths (default: float32)")
    p.add_argument("--license", default=None,
                   help="with --format hf: the license for the model card's metadata, e.g. mit (default: none)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export's files in --out (other files there are kept)")


def cmd_export(args: argparse.Namespace) -> int:
    from rnnlm.export import export_model

    if args.license is not None and args.format != "hf":
        raise RnnlmError("--license is for the model card of --format hf; leave it out for onnx")
    done = export_model(args.checkpoint, args.out, fmt=args.format, overwrite=args.overwrite, license=args.license,
                        quantize=args.quantize)
    if args.format == "hf":
        print(f"wrote {args.out}: {hf_summary(done)}")
        return 0
    state = ", ".join(s["name"] for s in done["state"])
    weights = f"{args.quantize} weights, " if args.quantize else ""
    check = (f"int8 logits within {done['max_abs_diff']:.2f} of PyTorch's" if args.quantize else
             f"onnxruntime matches PyTorch to {done['max_abs_diff']:.1e}")
    print(f"wrote {args.out}: model.onnx ({weights}{done['cell']} {done['num_layers']}x{done['hidden_size']}, "
          f"vocab {done['vocab_size']}, state {state}), tokenizer.json, config.json; {check}")
    return 0


def hf_summary(done: dict) -> str:
    """What an hf export wrote, with the model card's scores."""
    m, measured = done["model"], done["measured"]
    scores = ", ".join(f"{split} {measured[split]['bpc']:.4f} bpc" for split in ("valid", "test") if split in measured)
    return (f"model.safetensors ({m['cell']} {m['num_layers']}x{m['hidden_size']}, vocab {done['vocab_size']}), "
            f"config.json, tokenizer.json, README.md ({scores or 'not scored: ' + measured.get('missing', '')})")


# ---------------------------------------------------------------------------------------
# serve


def add_serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000; 0 picks a free one)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available, else cpu)")


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from rnnlm import server
    except ImportError as e:
        raise RnnlmError(f"rnnlm serve needs the serve extra ({e}); install it with pip install -e '.[serve]'") from None
    from rnnlm.inference import load_model

    if not 0 <= args.port <= 65535:
        raise RnnlmError(f"--port must be from 0 to 65535, got {args.port}")
    lm = load_model(args.checkpoint, args.device)
    sock = server.listen(args.host, args.port)
    print(f"serving {args.checkpoint} at {server.url_of(sock)}/ (Ctrl-C stops)", flush=True)
    server.make_server(lm, sock).run(sockets=[sock])
    return 0


# ---------------------------------------------------------------------------------------
# entry points

COMMANDS = {
    "train": (add_train_args, cmd_train, "train a model from a built-in config or a YAML file"),
    "configs": (add_configs_args, cmd_configs, "list the built-in configs, one line each, or print one"),
    "generate": (add_generate_args, cmd_generate, "continue a prompt from a checkpoint"),
    "evaluate": (add_evaluate_args, cmd_evaluate, "loss, perplexity and bits per character of a checkpoint"),
    "plot": (add_plot_args, cmd_plot, "draw a run's loss and gradient-norm curves as a PNG"),
    "gradient-flow": (add_gradient_flow_args, cmd_gradient_flow,
                      "plot ||dL_T/dh_t|| against the distance T - t: vanishing and exploding gradients"),
    "predict": (add_predict_args, cmd_predict, "the k most likely next words after a prompt, with probabilities"),
    "export": (add_export_args, cmd_export,
               "write a checkpoint as ONNX to run without PyTorch, or as a model folder to share (--format hf)"),
    "serve": (add_serve_args, cmd_serve, "a local web page: completions, next words and what the hidden units track"),
}


def main(argv: Optional[list[str]] = None) -> int:
    from rnnlm import __version__

    parser = ArgumentParser(prog="rnnlm", description="Recurrent-network language models in PyTorch.")
    parser.add_argument("--version", action="version", version=f"rnnlm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add_args, fn, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.set_defaults(fn=fn)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or a usage mistake already reported in one line
        return e.code
    return run(args.fn, args)


def _single(name: str):
    def entry(argv: Optional[list[str]] = None) -> int:
        add_args, fn, help_text = COMMANDS[name]
        parser = ArgumentParser(prog=f"rnnlm-{name}", description=help_text)
        add_args(parser)
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:
            return e.code
        return run(fn, args)
    return entry


train_main = _single("train")
generate_main = _single("generate")
evaluate_main = _single("evaluate")


if __name__ == "__main__":
    sys.exit(main())
