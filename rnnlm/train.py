"""Training: one loop you can read top to bottom, with small pure helpers beside it.

The corpus is laid out as B parallel streams (see data.batchify); each step takes the
next seq_len tokens of every stream, carries the hidden state over from the step before
(detached: truncated backpropagation through time), clips the global gradient norm and
takes an optimizer step. Validation runs every `train.eval_every` steps; `last.pt` is
written every `train.checkpoint_every` steps and `best.pt` whenever validation improves.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm

from rnnlm import distributed as ddp
from rnnlm import fused
from rnnlm import tokenizer as tokenization
from rnnlm.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint, unwrap_model
from rnnlm.config import Config, config_to_dict, dump_config
from rnnlm.device import autocast_context, resolve_device
from rnnlm.data import Corpus, batchify, check_enough_tokens, corpus_from_config, get_batch
from rnnlm.errors import RnnlmError
from rnnlm.files import remove_temporaries
from rnnlm.evaluate import evaluate_ids, format_metrics, metrics, scored_chars
from rnnlm.model import RNNLM, count_parameters, detach_state, lm_loss
from rnnlm.optim import ExponentialMovingAverage, build_optimizer, get_lr, run_progress
from rnnlm.plots import log_to_tensorboard, open_tensorboard, plot_run_quietly

# Settings whose change makes a checkpoint's weights or data position meaningless. The
# data itself is checked by the hash of its text (so a moved file may still resume);
# run length, logging, evaluation, checkpointing and optimizer settings may change.
RESUME_MUST_MATCH = ("model", "tokenizer", "train.batch_size")
LIMIT_NEEDED = "training needs a limit: set train.max_steps, train.max_epochs or train.max_minutes"


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM arrived; the checkpoint is written and the run can be resumed."""

    def __init__(self, signum: int, step: int, path: Path):
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name} after step {step}; progress saved to {path} "
                         f"(continue with: rnnlm train --resume {path.parent})")
        self.signum = signum


# ---------------------------------------------------------------------------------------
# Pure helpers


def rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def config_differences(saved: dict, current: dict, keys=RESUME_MUST_MATCH) -> list[str]:
    """`section.key: saved -> current` for each setting that must match on resume."""
    diffs = []
    for key in keys:
        section, _, name = key.partition(".")
        a, b = saved.get(section, {}), current.get(section, {})
        pairs = {name: (a.get(name), b.get(name))} if name else \
            {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b))}
        for k, (x, y) in pairs.items():
            if x != y:
                diffs.append(f"{section}.{k}: {x!r} -> {y!r}")
    return diffs


def all_finite(*tensors: torch.Tensor) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def nonfinite_tensors(tree, prefix: str = "") -> list[str]:
    """Names of the floating-point tensors in nested dicts/lists that hold a NaN or inf."""
    if isinstance(tree, torch.Tensor):
        return [prefix] if tree.is_floating_point() and not bool(torch.isfinite(tree).all()) else []
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else []
    return [name for k, v in items for name in nonfinite_tensors(v, f"{prefix}.{k}" if prefix else str(k))]


# ---------------------------------------------------------------------------------------
# Run directory and corpus


def prepare_run_dir(cfg: Config) -> Optional[dict]:
    """Create out_dir; return the checkpoint to resume from, if resuming.

    A resume is refused, before any data is read, when the architecture, tokenizer or
    batch layout differs from the checkpoint's: its weights or data position would be
    meaningless. A fresh run never overwrites a run directory without train.overwrite.
    """
    out = Path(cfg.train.out_dir)
    last = out / "last.pt"
    if out.exists() and not out.is_dir():
        raise RnnlmError(f"train.out_dir {out} is a file, not a directory; set train.out_dir to a folder")
    if cfg.train.resume:
        if not last.exists():
            raise RnnlmError(f"cannot resume: {last} not found; start a new run without --resume")
        checkpoint = load_checkpoint(last)
        diffs = config_differences(checkpoint["config"], config_to_dict(cfg))
        if diffs:
            raise RnnlmError(f"cannot resume {last}: settings differ from the checkpoint's: " + "; ".join(diffs)
                             + "; undo these changes, or start a new run with another train.out_dir or --overwrite")
        _remove_stale_temporaries(out)
        _truncate_metrics(out / "metrics.jsonl", checkpoint["step"])
        return checkpoint
    if out.exists() and any(out.iterdir()):
        if not cfg.train.overwrite:
            raise RnnlmError(f"run directory {out} already exists; continue it with --resume "
                             "(train.resume=true), start over with --overwrite, or set train.out_dir")
        for name in ("last.pt", "best.pt", "metrics.jsonl", "config.yaml", "tokenizer.json"):
            (out / name).unlink(missing_ok=True)
        _remove_stale_temporaries(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RnnlmError(f"cannot create run directory {out} ({e.strerror}); set train.out_dir to a writable place") from None
    return None


def _remove_stale_temporaries(out: Path) -> None:
    # A process killed while saving leaves its temporary file (never the checkpoint) behind.
    for name in ("last.pt", "best.pt"):
        remove_temporaries(out, name)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop the metrics logged after the checkpoint's step (and a half-written last line):
    the resumed run logs those steps again."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("step", 0) <= step:
            kept.append(line + "\n")
    path.write_text("".join(kept), encoding="utf-8")


def split_metrics(model, corpus: Corpus, split: str, cfg: Config, device, autocast=None,
                  max_tokens: Optional[int] = None) -> dict:
    """loss / perplexity / bpc of `model` on one split of the corpus."""
    ids = corpus.ids[split]
    # Distributed: each rank scores its share of the streams; the sums are added up, so
    # every rank gets the same numbers (and makes the same best-checkpoint decision).
    nll, n = evaluate_ids(model, ids, batch_size=cfg.train.batch_size, seq_len=max(cfg.train.seq_len, 64),
                          device=device, max_tokens=max_tokens, autocast=autocast,
                          shard=(ddp.rank(), ddp.world_size()))
    nll, n = ddp.sum_over_ranks(nll, n)
    n = int(n)
    if max_tokens is not None and ids.numel() > max_tokens + 1:
        text = tokenization.decode(corpus.tokenizer, ids[: max_tokens + 1].tolist())
        chars = len(text)
    else:
        chars = corpus.chars[split]
    first = tokenization.decode(corpus.tokenizer, ids[:1].tolist())
    return metrics(nll, n, scored_chars(chars, first))


# ---------------------------------------------------------------------------------------
# The loop


def train(cfg: Config) -> dict:
    """Train a model as configured; return the final metrics (validation and test).

    Under torchrun this is one of N data-parallel processes (see rnnlm.distributed).
    """
    tc = cfg.train
    if not (tc.max_steps or tc.max_epochs or tc.max_minutes or tc.resume):
        raise RnnlmError(LIMIT_NEEDED)
    device = ddp.local_device(resolve_device(tc.device), tc.device)  # torchrun on GPUs: cuda:LOCAL_RANK
    with ddp.process_group(tc.backend, device):  # a no-op without torchrun
        return _train(cfg, device)


def _train(cfg: Config, device: torch.device) -> dict:
    tc = cfg.train
    ddp.check_batch_split(tc.batch_size, tc.grad_accum_steps)
    with ddp.main_first():  # distributed: rank 0 checks and cleans out_dir first; the others then resume
        resume = prepare_run_dir(cfg) if ddp.is_main() else (load_checkpoint(Path(tc.out_dir) / "last.pt")
                                                              if tc.resume else None)
    if not (tc.max_steps or tc.max_epochs or tc.max_minutes):  # resuming: a missing last.pt was said first
        raise RnnlmError(LIMIT_NEEDED)
    out = Path(tc.out_dir)
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    torch.manual_seed(tc.seed)
    if device.type == "cpu":
        # Gradients that vanish through time become subnormal floats, which the CPU
        # multiplies up to 100x slower (measured); flushing them to zero costs nothing.
        torch.set_flush_denormal(True)
    fused.keep_freed_memory()  # large tensors reuse freed pages instead of faulting in new ones
    autocast = autocast_context(device, tc.precision)

    # --- data: tokenizer trained on the train split (or taken from the checkpoint)
    with ddp.main_first():  # distributed: rank 0 fills the token cache, the others read it
        corpus = corpus_from_config(cfg, tokenizer_json=resume["tokenizer"] if resume else None,
                                      progress=tc.progress and ddp.is_main())
    if resume is not None and resume.get("text_hash") != corpus.text_hash:
        raise RnnlmError(f"cannot resume {out / 'last.pt'}: the text of {cfg.data.path} (after data.encoding/"
                         "data.errors) differs from the one this run was trained on; point data.path at that text")
    vocab_size = corpus.tokenizer.get_vocab_size()
    check_enough_tokens(corpus.ids["train"].numel(), tc.batch_size, tc.seq_len, "train")
    train_data = batchify(corpus.ids["train"], tc.batch_size)  # (B, N)
    train_data = ddp.shard_rows(train_data).to(device)  # distributed: this rank's B/world streams
    stream_len = train_data.size(1)

    # --- model and optimizer
    model = RNNLM(vocab_size, cfg.model).to(device)
    ddp.seed_per_rank(tc.seed)  # distributed: same initial weights, each rank its own dropout masks
    optimizer = build_optimizer(model, cfg.optim)
    # With optim.ema_decay the averaged weights are the run's model: validation, test and
    # the checkpoints' `model` use them; training goes on from the raw ones (`trained_model`).
    ema = ExponentialMovingAverage(model, cfg.optim.ema_decay) if cfg.optim.ema_decay > 0 else None
    eval_model = ema.module if ema is not None else model
    scaler = torch.amp.GradScaler("cuda") if tc.precision == "fp16" else None
    step, epoch, position, tokens_seen, elapsed, bad_steps_skipped = 0, 0, 0, 0, 0.0, 0
    best_val_loss = math.inf
    hidden = None
    if resume is not None:
        model.load_state_dict(resume.get("trained_model", resume["model"]))
        if ema is not None:  # a run that did not average before starts its average here
            ema.module.load_state_dict(resume["model"])
            ema.updates = resume.get("ema_updates", 0)
        optimizer.load_state_dict(resume["optimizer"])
        if scaler is not None and resume.get("scaler"):
            scaler.load_state_dict(resume["scaler"])
        step, epoch, position = resume["step"], resume["epoch"], resume["position"]
        tokens_seen, elapsed = resume["tokens_seen"], resume["elapsed_seconds"]
        bad_steps_skipped, best_val_loss = resume["bad_steps_skipped"], resume["best_val_loss"]
        if resume["hidden"] is not None:  # the global batch's state; distributed: this rank's rows
            hidden = ddp.shard_state([tuple(t.to(device) for t in layer) for layer in resume["hidden"]])
        rng = ddp.own_rng_state(resume)
        if rng is not None:
            set_rng_state(rng, device)
    train_model = ddp.wrap_model(model, device)  # DistributedDataParallel under torchrun
    train_model = torch.compile(train_model) if tc.compile else train_model

    if ddp.is_main():
        (out / "config.yaml").write_text(dump_config(cfg), encoding="utf-8")
        (out / "tokenizer.json").write_text(tokenization.to_json(corpus.tokenizer), encoding="utf-8")
        print(dump_config(cfg).rstrip())
        print(f"device {device} | vocab {vocab_size} | {count_parameters(model):,} parameters | "
              f"train {corpus.ids['train'].numel():,} tokens as {tc.batch_size} streams of {stream_len:,}"
              + (f" | {ddp.describe()}" if ddp.is_distributed() else "")
              + (f" | resuming at step {step}" if resume else ""))

    def checkpoint(path: Path) -> None:
        # Never write a NaN: a checkpoint must always be a state worth resuming from.
        # (Every rank holds the same weights, so every rank decides alike.)
        bad = nonfinite_tensors({"model": model.state_dict(), "optimizer": optimizer.state_dict()["state"],
                                 **({"averaged model": ema.module.state_dict()} if ema is not None else {})})
        if bad:
            where = f"the last good checkpoint is {last_good} (step {last_good_step})" if last_good \
                else "no checkpoint was written"
            raise RnnlmError(f"not writing {path}: {', '.join(bad[:3])} hold NaN or inf after step {step}; "
                             f"{where}; lower optim.lr or set optim.clip_grad_norm")
        # Every rank calls this (the state and RNG gathers are collectives); rank 0 writes.
        global_hidden = ddp.gather_state(hidden)
        rngs = ddp.gather_objects(rng_state(device))
        if ddp.is_main():
            save_checkpoint(path, {
                "format_version": CHECKPOINT_FORMAT,
                "model": unwrap_model(eval_model).state_dict(),
                **({"trained_model": model.state_dict(), "ema_updates": ema.updates} if ema is not None else {}),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "config": config_to_dict(cfg),
                "tokenizer": tokenization.to_json(corpus.tokenizer),
                "vocab_size": vocab_size,
                "step": step, "epoch": epoch, "position": position,
                "tokens_seen": tokens_seen, "elapsed_seconds": elapsed,
                "bad_steps_skipped": bad_steps_skipped, "best_val_loss": best_val_loss,
                "hidden": [list(layer) for layer in global_hidden] if global_hidden is not None else None,
                "rng": rngs[0], "rng_per_rank": rngs,
                "text_hash": corpus.text_hash,
            })
        ddp.barrier()  # nobody reads the file before it is complete

    tensorboard = open_tensorboard(out) if tc.tensorboard and ddp.is_main() else None

    def log(record: dict) -> None:
        if not ddp.is_main():
            return
        with open(out / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if tensorboard is not None:
            log_to_tensorboard(tensorboard, record)

    # SIGINT / SIGTERM: finish the step in flight, save, then stop (see the loop's end).
    # A second signal means "now": it interrupts at once (last.pt is then the periodic one).
    stop_signal = []

    def on_signal(signum, frame):
        if stop_signal:
            raise KeyboardInterrupt
        stop_signal.append(signum)

    previous_handlers = {}
    if _in_main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous_handlers[sig] = signal.signal(sig, on_signal)

    batches_per_epoch = math.ceil((stream_len - 1) / tc.seq_len)
    total = tc.max_steps or (int(tc.max_epochs * batches_per_epoch) if tc.max_epochs else None)
    bar = tqdm(total=total, initial=step, disable=not (tc.progress and ddp.is_main()), dynamic_ncols=True,
               unit="step")
    window_loss, window_steps, window_tokens, window_start = 0.0, 0, 0, time.perf_counter()
    bad_in_a_row = 0
    last_good = out / "last.pt" if resume else None  # the newest last.pt and its step
    last_good_step = step
    run_start = time.perf_counter() - elapsed
    model.train()
    try:
        while True:
            elapsed = ddp.from_main(time.perf_counter() - run_start)  # all ranks: same lr, same time limit
            epoch_float = epoch + position / max(1, stream_len - 1)
            if ((tc.max_steps and step >= tc.max_steps) or (tc.max_epochs and epoch_float >= tc.max_epochs)
                    or (tc.max_minutes and elapsed >= 60 * tc.max_minutes)):
                break
            if position >= stream_len - 1:  # end of the streams: a new epoch starts afresh
                epoch, position, hidden = epoch + 1, 0, None
                continue

            x, y = get_batch(train_data, position, tc.seq_len)  # (B, T), y shifted by one
            lr = get_lr(step, run_progress(step, epoch_float, elapsed, tc), cfg.optim)
            for group in optimizer.param_groups:
                group["lr"] = lr

            # Gradient accumulation: this rank's streams as k groups of B/k, one after another,
            # each carrying its own state; each loss is divided by k, so the summed gradients
            # are those of the mean over all the streams (k = 1: one plain forward/backward).
            k = tc.grad_accum_steps
            optimizer.zero_grad(set_to_none=True)
            loss, new_hidden = torch.zeros((), device=device), []
            for i, (x_i, y_i, hidden_i) in enumerate(ddp.micro_batches(x, y, hidden, k)):
                with ddp.grad_sync(train_model, sync=i == k - 1):  # DDP all-reduces after the last group
                    with autocast():
                        logits, hidden_i = train_model(x_i, hidden_i)  # (B/k, T, V)
                        loss_i = lm_loss(logits, y_i) / k
                    (scaler.scale(loss_i) if scaler is not None else loss_i).backward()
                loss += loss_i.detach()
                new_hidden.append(hidden_i)
            new_hidden = ddp.cat_states(new_hidden)
            loss = ddp.mean(loss)  # distributed: the global batch's loss, the same on every rank
            if scaler is not None:
                scaler.unscale_(optimizer)
            # clip_grad_norm_ returns the norm before clipping; inf = measure only.
            max_norm = cfg.optim.clip_grad_norm if cfg.optim.clip_grad_norm > 0 else math.inf
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)

            if not all_finite(loss.detach(), grad_norm):
                # Skip the update: weights and optimizer state stay as they were; the data
                # moves on. The state after this window is carried on only if it is finite,
                # else the streams restart from zeros, so one bad window cannot poison the next.
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.update()
                bad_steps_skipped += 1
                bad_in_a_row += 1
                position += x.size(1)
                new_hidden = detach_state(new_hidden)
                finite = all_finite(*(t for layer in new_hidden for t in layer))
                finite = float(ddp.mean(torch.tensor(float(finite)))) == 1.0  # all ranks decide alike
                hidden = new_hidden if finite else None
                signum = int(ddp.from_main(stop_signal[0] if stop_signal else 0))
                if signum or bad_in_a_row >= tc.max_bad_steps:
                    # The weights are those of the last good step: save them before stopping.
                    elapsed = time.perf_counter() - run_start
                    checkpoint(out / "last.pt")
                    last_good, last_good_step = out / "last.pt", step
                if signum:
                    raise TrainingInterrupted(signum, step, out / "last.pt")
                if bad_in_a_row >= tc.max_bad_steps:
                    raise RnnlmError(f"stopped: {bad_in_a_row} steps in a row had a non-finite loss or gradient "
                                     f"(after step {step}); the last good weights (step {step}) are saved in "
                                     f"{last_good}; lower optim.lr or set optim.clip_grad_norm, then --resume")
                continue
            bad_in_a_row = 0
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            if ema is not None:
                ema.update_parameters(model)
            hidden = detach_state(new_hidden)
            step += 1
            position += x.size(1)
            tokens_seen += x.numel() * ddp.world_size()  # the global batch

            window_loss += loss.item()
            window_steps += 1
            window_tokens += x.numel() * ddp.world_size()
            if step % tc.log_every == 0:
                now = time.perf_counter()
                train_loss = window_loss / window_steps
                tok_s = window_tokens / max(1e-9, now - window_start)
                log({"step": step, "epoch": round(epoch_float, 4), "tokens": tokens_seen, "train_loss": train_loss,
                     "lr": lr, "grad_norm": float(grad_norm), "tokens_per_s": tok_s,
                     "seconds": round(now - run_start, 2)})
                bar.set_postfix(loss=f"{train_loss:.3f}", ppl=f"{math.exp(min(train_loss, 700)):.1f}",
                                lr=f"{lr:.2e}", tok_s=f"{tok_s:,.0f}", refresh=False)
                window_loss, window_steps, window_tokens, window_start = 0.0, 0, 0, now
            bar.update(1)

            if step % tc.eval_every == 0:
                val = split_metrics(eval_model, corpus, "valid", cfg, device, autocast, tc.eval_tokens)
                log({"step": step, "tokens": tokens_seen, "val_loss": val["loss"], "val_bpc": val["bpc"],
                     "seconds": round(time.perf_counter() - run_start, 2)})
                if ddp.is_main():
                    bar.write(f"step {step}: " + format_metrics("valid", val))
                elapsed = time.perf_counter() - run_start
                if val["loss"] < best_val_loss:
                    best_val_loss = val["loss"]
                    checkpoint(out / "best.pt")
            if step % tc.checkpoint_every == 0:
                elapsed = time.perf_counter() - run_start
                checkpoint(out / "last.pt")
                last_good, last_good_step = out / "last.pt", step
            signum = int(ddp.from_main(stop_signal[0] if stop_signal else 0))  # all ranks stop together
            if signum:
                elapsed = time.perf_counter() - run_start
                checkpoint(out / "last.pt")
                raise TrainingInterrupted(signum, step, out / "last.pt")
        # The run is over (max_steps, max_epochs or max_minutes): save before evaluating.
        elapsed = time.perf_counter() - run_start
        checkpoint(out / "last.pt")
        last_good, last_good_step = out / "last.pt", step
    except (RnnlmError, TrainingInterrupted, KeyboardInterrupt):
        raise
    except Exception:
        # A bug, not bad input: the traceback follows; say where the progress is.
        where = (f"{last_good} holds the last checkpoint, of step {last_good_step} (continue with --resume)"
                 if last_good else "no checkpoint was written yet")
        print(f"training failed after step {step} with an unexpected error; {where}", file=sys.stderr)
        raise
    finally:
        bar.close()
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)

    # --- the end: final validation, checkpoints, test numbers of the best model
    val = split_metrics(eval_model, corpus, "valid", cfg, device, autocast)
    log({"step": step, "tokens": tokens_seen, "val_loss": val["loss"], "val_bpc": val["bpc"],
         "seconds": round(elapsed, 2)})
    if ddp.is_main():
        print(f"step {step}: " + format_metrics("valid", val))
    if val["loss"] < best_val_loss or not ddp.from_main((out / "best.pt").exists()):
        best_val_loss = val["loss"]
        checkpoint(out / "best.pt")
        checkpoint(out / "last.pt")  # again, so a resumed run knows the best loss so far
    if tensorboard is not None:
        tensorboard.close()
    if ddp.is_main():
        plot_run_quietly(out)
    best = load_checkpoint(out / "best.pt", map_location=device)
    eval_model.load_state_dict(best["model"])
    test = split_metrics(eval_model, corpus, "test", cfg, device, autocast)
    minutes = (time.perf_counter() - run_start) / 60
    if ddp.is_main():
        print(f"trained {step} steps, {tokens_seen:,} tokens in {minutes:.1f} min"
              + (f" ({bad_steps_skipped} non-finite steps skipped)" if bad_steps_skipped else ""))
        print(f"best checkpoint {out / 'best.pt'} (step {best['step']}): " + format_metrics("test", test))
    return {"valid": val, "test": test, "steps": step, "tokens": tokens_seen, "minutes": minutes,
            "best_step": best["step"], "out_dir": str(out)}


def _in_main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()
