"""Training: truncated backpropagation through time over B parallel streams of the text.

The corpus is laid out as B parallel streams (see data.batchify); each step takes the
next seq_len tokens of every stream, carries the hidden state over from the step before
(detached: truncated backpropagation through time), clips the global gradient norm and
takes an optimizer step. Validation runs every `train.eval_every` steps; `last.pt` is
written every `train.checkpoint_every` steps and `best.pt` whenever validation improves.

A run's life is `Trainer(cfg, device)` (run directory, data, model, optimizer, resume:
built whole, in one visible order), `Trainer.fit()` (the loop) and `Trainer.finish()`
(final validation and test numbers).
"""

from __future__ import annotations

import contextlib
import gc
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm

from rnnlm import distributed as ddp
from rnnlm import finetune, fused
from rnnlm import tokenizer as tokenization
from rnnlm.checkpoint import (BEST_VAL_LOSS, EMA_UPDATES, MODEL, OPTIMIZER, PARENT, SCALER, STEP, TEXT_HASH,
                              TRAIN_CHARS, TRAINED_MODEL, SavedModel, field, load_checkpoint, make_checkpoint,
                              save_checkpoint, unwrap_model)
from rnnlm.config import Config, TrainConfig, config_to_dict, dump_config
from rnnlm.data import Corpus, batchify, check_enough_tokens, check_scorable, get_batch, read_corpus, tokenize_corpus
from rnnlm.device import autocast_context, resolve_device
from rnnlm.errors import CannotWrite, RnnlmError, TrainingInterrupted
from rnnlm.evaluate import evaluate_ids, format_metrics, ids_metrics
from rnnlm.files import write_text_atomic
from rnnlm.model import RNNLM, State, count_parameters, detach_state, lm_loss
from rnnlm.optim import ExponentialMovingAverage, build_optimizer, get_lr, run_progress
from rnnlm.plots import plot_run_quietly
from rnnlm.run_dir import MetricsLog, prepare_run_dir
from rnnlm.sizing import Resolved, resolve_auto
from rnnlm.train_state import TrainState, all_finite, nonfinite_tensors

LIMIT_NEEDED = "training needs a limit: set train.max_steps, train.max_epochs or train.max_minutes"
ELSEWHERE = "set train.out_dir to another disk"  # the way out of a full run directory


def train(cfg: Config) -> dict:
    """Train a model as configured; return the final metrics (validation and test).

    Under torchrun this is one of N data-parallel processes (see rnnlm.distributed).
    """
    tc = cfg.train
    if not (tc.max_steps or tc.max_epochs or tc.max_minutes or tc.resume):
        raise RnnlmError(LIMIT_NEEDED)
    device = ddp.local_device(resolve_device(tc.device), tc.device)  # torchrun on GPUs: cuda:LOCAL_RANK
    with ddp.process_group(tc.backend, device):  # a no-op without torchrun
        trainer = Trainer(cfg, device)
        try:
            try:
                trainer.fit()
            except (RnnlmError, TrainingInterrupted, KeyboardInterrupt):
                raise
            except Exception:  # a bug, not bad input: the traceback follows
                trainer.report_failure()
                raise
            return trainer.finish()
        finally:
            trainer.cleanup()


# --- the parts of a run, built in this order by Trainer.__init__


def open_run(cfg: Config, out: Path) -> Optional[dict]:
    """Prepare the run directory; the checkpoint to resume from, when resuming.
    Distributed: rank 0 checks and cleans out_dir first; the others then read last.pt."""
    with ddp.main_first():
        resume = prepare_run_dir(cfg) if ddp.is_main() else (load_checkpoint(out / "last.pt") if cfg.train.resume
                                                              else None)
    tc = cfg.train
    if not (tc.max_steps or tc.max_epochs or tc.max_minutes):  # resuming: a missing last.pt was said first
        raise RnnlmError(LIMIT_NEEDED)
    return resume


def configure_torch(tc: TrainConfig, device: torch.device) -> None:
    """Threads, the seed, and the CPU's handling of tiny floats and freed memory."""
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    torch.manual_seed(tc.seed)
    if device.type == "cpu":
        # Gradients that vanish through time become subnormal floats, which the CPU
        # multiplies many times slower; flushing them to zero costs nothing.
        torch.set_flush_denormal(True)
    fused.keep_freed_memory()  # large tensors reuse freed pages instead of faulting in new ones


def prepare_corpus(cfg: Config, device: torch.device, resume: Optional[dict], out: Path,
                   tokenizer_json: Optional[str]) -> tuple[Resolved, Corpus]:
    """The run's config with every `auto` resolved, and its corpus: the text read, then
    tokenized by `tokenizer_json` (the resumed run's own, or the parent's) or else by a
    tokenizer trained on the train split.
    Distributed: rank 0 reads first (it downloads and fills the token cache), the others then."""
    with ddp.main_first():
        text = read_corpus(cfg.data, progress=cfg.train.progress and ddp.is_main())
        if resume is not None and field(resume, TEXT_HASH) != text.text_hash:
            raise RnnlmError(f"cannot resume {out / 'last.pt'}: the text of {cfg.data.path} (after "
                             "data.encoding/data.errors) differs from the one this run was trained on; "
                             "point data.path at that text")
        if resume is not None and field(resume, TRAIN_CHARS) not in (None, text.chars["train"]):
            raise RnnlmError(f"cannot resume {out / 'last.pt'}: this run trained on {field(resume, TRAIN_CHARS):,} "
                             f"characters of the text, where data.split and data.max_eval_chars now leave "
                             f"{text.chars['train']:,}; set them as the run had them (its config.yaml)")
        resolved = resolve_auto(cfg, device, text.chars["train"])  # the checkpoints keep the values
        corpus = tokenize_corpus(text, resolved.cfg.data, resolved.cfg.tokenizer, tokenizer_json)
    return resolved, corpus


def training_streams(corpus: Corpus, tc: TrainConfig, device: torch.device) -> torch.Tensor:
    """The train split as batch_size streams (distributed: this rank's B/world of them) on
    `device`, once every split is checked to be long enough."""
    check_enough_tokens(corpus.ids["train"].numel(), tc.batch_size, tc.seq_len, "train")
    check_scorable(corpus.ids["valid"].numel(), "valid")
    if corpus.chars["test"]:  # data.split may leave no test split at all
        check_scorable(corpus.ids["test"].numel(), "test")
    return ddp.shard_rows(batchify(corpus.ids["train"], tc.batch_size)).to(device)


def build_model(vocab_size: int, cfg: Config, device: torch.device):
    """(model, optimizer, weight average or None, fp16 gradient scaler or None)."""
    model = RNNLM(vocab_size, cfg.model).to(device)
    ddp.seed_per_rank(cfg.train.seed)  # distributed: same initial weights, each rank its own dropout masks
    optimizer = build_optimizer(model, cfg.optim)
    ema = ExponentialMovingAverage(model, cfg.optim.ema_decay) if cfg.optim.ema_decay > 0 else None
    scaler = torch.amp.GradScaler("cuda") if cfg.train.precision == "fp16" else None
    return model, optimizer, ema, scaler


def restore_training(resume: dict, model, ema, optimizer, scaler) -> None:
    """The weights, weight average, optimizer and gradient scaler saved in `resume`."""
    trained = field(resume, TRAINED_MODEL)
    model.load_state_dict(trained if trained is not None else resume[MODEL])
    if ema is not None:  # a run that did not average before starts its average here
        ema.module.load_state_dict(resume[MODEL])
        ema.updates = field(resume, EMA_UPDATES)
    optimizer.load_state_dict(resume[OPTIMIZER])
    if scaler is not None and field(resume, SCALER):
        scaler.load_state_dict(resume[SCALER])


@dataclass
class StepOutcome:
    """What one training step did: `ok` is False when the update was skipped (non-finite)."""

    ok: bool
    loss: torch.Tensor
    grad_norm: torch.Tensor
    hidden: State


@dataclass
class CheckpointsOnDisk:
    """The run's checkpoint files as they stand: the newest good last.pt and its step, and
    the validation loss of the best.pt on disk."""

    last: Optional[Path] = None
    last_step: int = 0
    best_loss: float = math.inf


class Trainer:
    """One training run; see the module docstring for its life.

    A Trainer is whole once built: `__init__` sets every attribute, in the order the run
    needs them, and nothing sets a new one later.
    """

    def __init__(self, cfg: Config, device: torch.device):
        """Build the run: the parent (train.init_from), the run directory (and the checkpoint
        to resume), torch's settings, the text, every `auto` resolved, the tokens, the model
        and optimizer (from the parent's weights, or the resumed ones), the start-up lines
        and files, the metrics log, and last the model as trained (DistributedDataParallel
        under torchrun, and/or compiled)."""
        tc = cfg.train
        ddp.check_batch_split(tc.batch_size, tc.grad_accum_steps)
        self.device, self.out = device, Path(tc.out_dir)
        cfg, start = finetune.open_parent(cfg)  # before the run directory is touched; None unless init_from
        resume = open_run(cfg, self.out)
        configure_torch(tc, device)
        # The tokenizer is the resumed run's or the parent's, else trained on this text.
        given = SavedModel.of(resume).tokenizer if resume else start.parent.tokenizer_json if start else None
        resolved, self.corpus = prepare_corpus(cfg, device, resume, self.out, given)
        self.tokenizer_json = given if given is not None else tokenization.to_json(self.corpus.tokenizer)
        self.cfg, self.tc = resolved.cfg, resolved.cfg.train
        # Where the weights came from: the parent of a new run, or a resumed run's record of it.
        self.parent = start.record if start is not None else field(resume, PARENT) if resume is not None else None
        self.unknown_share = finetune.unknown_share(self.corpus.tokenizer, self.corpus.ids["train"],
                                                    self.tc.max_unknown_share) if start is not None else None
        self.sized, self.precision_reason = resolved.sized, resolved.precision_reason
        self.autocast = autocast_context(device, self.tc.precision)
        self.vocab_size = self.corpus.tokenizer.get_vocab_size()
        self.train_data = training_streams(self.corpus, self.tc, device)  # (B/world, N): this rank's streams
        self.stream_len = self.train_data.size(1)
        self.model, self.optimizer, self.ema, self.scaler = build_model(self.vocab_size, self.cfg, device)
        # With optim.ema_decay the averaged weights are the run's model: validation, test and
        # the checkpoints' `model` use them; training goes on from the raw ones (`trained_model`).
        self.eval_model = self.ema.module if self.ema is not None else self.model
        if start is not None:
            finetune.load_weights(start, self.model, self.ema)
        self.state, self.on_disk = TrainState(), CheckpointsOnDisk()
        if resume is not None:
            restore_training(resume, self.model, self.ema, self.optimizer, self.scaler)
            self.state = TrainState.from_checkpoint(resume, device)  # last: it restores the RNG
            self.on_disk = CheckpointsOnDisk(self.out / "last.pt", self.state.step, self.state.best_val_loss)
        self.stop_signal: list[int] = []  # SIGINT/SIGTERM received, see stop_on_signals
        self.run_start = time.perf_counter()
        if ddp.is_main():
            self._announce(resume is not None)
        self.log = MetricsLog(self.out, self.tc.tensorboard)
        wrapped = ddp.wrap_model(self.model, device)  # DistributedDataParallel under torchrun
        self.train_model: Optional[torch.nn.Module] = torch.compile(wrapped) if self.tc.compile else wrapped

    def _announce(self, resuming: bool) -> None:
        tc = self.tc
        write_text_atomic(self.out / "config.yaml", dump_config(self.cfg), elsewhere=ELSEWHERE)
        write_text_atomic(self.out / "tokenizer.json", self.tokenizer_json, elsewhere=ELSEWHERE)
        print(dump_config(self.cfg).rstrip())
        print(f"device {self.device} | precision {tc.precision} ({self.precision_reason}) | "
              f"vocab {self.vocab_size} | {count_parameters(self.model):,} parameters | "
              f"train {self.corpus.ids['train'].numel():,} tokens as {tc.batch_size} streams of {self.stream_len:,}"
              + (f" | {ddp.describe()}" if ddp.is_distributed() else "")
              + (f" | resuming at step {self.state.step}" if resuming else ""))
        cache = self.cfg.data.cache_dir
        relative = cache is not None and not (Path(cache).is_absolute() and Path(self.cfg.data.path).is_absolute())
        where = f", relative to {Path.cwd()}" if relative else ""  # e.g. data/ of the current folder
        print(f"data: {self.corpus.source}, split {self.corpus.chars['train']:,} / {self.corpus.chars['valid']:,} / "
              f"{self.corpus.chars['test']:,} characters (train / valid / test)"
              + (f"; {self.corpus.cleaning}" if self.corpus.cleaning else "")
              + (f"; token cache {cache}{where}" if cache is not None else "; no token cache (data.cache_dir null)"))
        if self.sized:
            print(f"sized to the {self.corpus.chars['train']:,} training characters (auto): " + ", ".join(self.sized))
        if self.parent is not None:
            print(finetune.describe(self.parent) + (f"; <unk> is {self.unknown_share:.2%} of the training tokens"
                                                    if self.unknown_share is not None else ""))

    # --- the loop

    def fit(self) -> None:
        """Train until the run's limit (steps, epochs or minutes), a signal or too many bad steps."""
        tc, s = self.tc, self.state
        self.run_start = time.perf_counter() - s.elapsed
        window = LossWindow()
        self.model.train()
        done = run_progress(s.step, s.epoch_float(self.stream_len), s.elapsed, tc)
        with stop_on_signals(self.stop_signal), ProgressBar(tc.progress and ddp.is_main(), s.step, done) as bar:
            if self.parent is not None and s.step == 0 and s.best_val_loss == math.inf:
                self._validate(bar.write)  # the parent on the new text: best.pt is never worse than it
            while True:
                s.elapsed = ddp.from_main(time.perf_counter() - self.run_start)  # all ranks: same lr, same limit
                progress = run_progress(s.step, s.epoch_float(self.stream_len), s.elapsed, tc)
                if self._limit_reached():
                    bar.show(s.step, 1.0)
                    break
                bar.show(s.step, progress)
                if self._out_of_patience(bar.write):
                    break
                if s.position >= self.stream_len - 1:  # end of the streams: a new epoch starts afresh
                    s.epoch, s.position, s.hidden = s.epoch + 1, 0, None
                    continue
                x, y = get_batch(self.train_data, s.position, tc.seq_len)  # (B, T), y shifted by one
                lr = self._set_lr(get_lr(s.step, progress, self.cfg.optim))
                outcome = self.train_step(x, y)
                s.position += x.size(1)
                if not outcome.ok:
                    self._after_bad_step(outcome.hidden)
                    continue
                s.bad_in_a_row = 0
                s.hidden, s.step = outcome.hidden, s.step + 1
                s.tokens_seen += x.numel() * ddp.world_size()  # the global batch
                window.add(outcome.loss.item(), x.numel() * ddp.world_size())
                if s.step % tc.log_every == 0:
                    self._log_training(window, lr, outcome.grad_norm, bar)
                self._after_step(bar)
        # The run is over (its limit, or early stopping): save before evaluating.
        self.save_last()

    def _out_of_patience(self, write=print) -> bool:
        """train.patience validations in a row without a new best (also of a resumed run): say so."""
        patience, s = self.tc.patience, self.state
        if not patience or s.evals_since_best < patience:
            return False
        if ddp.is_main():
            write(f"stopping early at step {s.step}: the validation loss has not improved for {patience} "
                  f"evaluations (train.patience={patience}); best.pt holds the best")
        return True

    def _limit_reached(self) -> bool:
        tc, s = self.tc, self.state
        return bool((tc.max_steps and s.step >= tc.max_steps)
                    or (tc.max_epochs and s.epoch_float(self.stream_len) >= tc.max_epochs)
                    or (tc.max_minutes and s.elapsed >= 60 * tc.max_minutes))

    def _set_lr(self, lr: float) -> float:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> StepOutcome:
        """One optimizer step on the batch (B, T) from the carried state.

        The update is skipped (weights and optimizer state stay as they were) when the
        loss or the gradient norm is not finite.
        """
        # Gradient accumulation: this rank's streams as k groups of B/k, one after another,
        # each carrying its own state; each loss is divided by k, so the summed gradients
        # are those of the mean over all the streams (k = 1: one plain forward/backward).
        k = self.tc.grad_accum_steps
        self.optimizer.zero_grad(set_to_none=True)
        loss, hidden = torch.zeros((), device=self.device), []
        for i, (x_i, y_i, hidden_i) in enumerate(ddp.micro_batches(x, y, self.state.hidden, k)):
            with ddp.grad_sync(self.train_model, sync=i == k - 1):  # DDP all-reduces after the last group
                with self.autocast():
                    logits, hidden_i = self.train_model(x_i, hidden_i)  # (B/k, T, V)
                    loss_i = lm_loss(logits, y_i) / k
                (self.scaler.scale(loss_i) if self.scaler is not None else loss_i).backward()
            loss += loss_i.detach()
            hidden.append(hidden_i)
        # Detached: the next batch starts from these values, but gradients stop here.
        hidden = detach_state(ddp.cat_states(hidden))
        loss = ddp.mean(loss)  # distributed: the global batch's loss, the same on every rank
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        # clip_grad_norm_ returns the norm before clipping; inf = measure only.
        max_norm = self.cfg.optim.clip_grad_norm if self.cfg.optim.clip_grad_norm > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        if not all_finite(loss, grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.update()
            return StepOutcome(False, loss, grad_norm, hidden)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        return StepOutcome(True, loss, grad_norm, hidden)

    def _after_bad_step(self, hidden: State) -> None:
        """Count a skipped step; save and stop on a signal or after too many in a row.

        The data moves on. The state after the bad window is carried on only if it is
        finite, else the streams restart from zeros, so one bad window cannot poison the next.
        """
        s, tc = self.state, self.tc
        s.bad_steps_skipped += 1
        s.bad_in_a_row += 1
        finite = all_finite(*(t for layer in hidden for t in layer))
        finite = float(ddp.mean(torch.tensor(float(finite)))) == 1.0  # all ranks decide alike
        s.hidden = hidden if finite else None
        signum = self._signal_received()
        if signum or s.bad_in_a_row >= tc.max_bad_steps:
            self.save_last()  # the weights are those of the last good step
        if signum:
            raise TrainingInterrupted(signum, s.step, self.out / "last.pt")
        if s.bad_in_a_row >= tc.max_bad_steps:
            raise RnnlmError(f"stopped: {s.bad_in_a_row} steps in a row had a non-finite loss or gradient "
                             f"(after step {s.step}); the last good weights (step {s.step}) are saved in "
                             f"{self.on_disk.last}; lower optim.lr or set optim.clip_grad_norm, then --resume")

    def _after_step(self, bar: "ProgressBar") -> None:
        """Validation, checkpoints and signals, each on its schedule."""
        s, tc = self.state, self.tc
        if s.step % tc.eval_every == 0:
            self._validate(bar.write)
        if s.step % tc.checkpoint_every == 0:
            self.save_last()
        signum = self._signal_received()
        if signum:
            self.save_last()
            raise TrainingInterrupted(signum, s.step, self.out / "last.pt")

    def _validate(self, write=print) -> None:
        """A periodic validation: logged, and best.pt written when it is the best so far."""
        s = self.state
        val = self.evaluate("valid", self.tc.eval_tokens)
        self._log_validation(val, time.perf_counter() - self.run_start, write)
        if val["loss"] < s.best_val_loss:
            s.best_val_loss, s.best_val_bpc, s.evals_since_best = val["loss"], val["bpc"], 0
            s.elapsed = time.perf_counter() - self.run_start
            self.save(self.out / "best.pt")
        else:
            s.evals_since_best += 1

    def _signal_received(self) -> int:
        return int(ddp.from_main(self.stop_signal[0] if self.stop_signal else 0))  # all ranks stop together

    def _log_training(self, window: "LossWindow", lr: float, grad_norm: torch.Tensor, bar: "ProgressBar") -> None:
        s = self.state
        train_loss, tok_s = window.flush()
        self.log({"step": s.step, "epoch": round(s.epoch_float(self.stream_len), 4), "tokens": s.tokens_seen,
                  "train_loss": train_loss, "lr": lr, "grad_norm": float(grad_norm), "tokens_per_s": tok_s,
                  "seconds": round(time.perf_counter() - self.run_start, 2)})
        bar.set_postfix(loss=f"{train_loss:.3f}", ppl=f"{math.exp(min(train_loss, 700)):.1f}",
                        lr=f"{lr:.2e}", tok_s=f"{tok_s:,.0f}")

    def _log_validation(self, val: dict, seconds: float, write=print) -> None:
        s = self.state
        self.log({"step": s.step, "tokens": s.tokens_seen, "val_loss": val["loss"], "val_bpc": val["bpc"],
                  "seconds": round(seconds, 2)})
        if ddp.is_main():
            write(f"step {s.step}: " + format_metrics("valid", val))

    # --- evaluation and checkpoints

    def evaluate(self, split: str, max_tokens: Optional[int] = None) -> dict:
        """loss / perplexity / bpc of the run's model (the average, with optim.ema_decay)."""
        return split_metrics(self.eval_model, self.corpus, split, self.cfg, self.device, self.autocast, max_tokens)

    def save_last(self) -> None:
        """Write last.pt with the time so far; it is then the last good checkpoint."""
        self.state.elapsed = time.perf_counter() - self.run_start
        self.save(self.out / "last.pt")
        self.on_disk.last, self.on_disk.last_step = self.out / "last.pt", self.state.step

    def save(self, path: Path) -> None:
        """Write a checkpoint (every rank calls this: it gathers state; rank 0 writes).

        Never a NaN: a checkpoint must always be a state worth resuming from (every rank
        holds the same weights, so every rank decides alike).
        """
        ema = self.ema
        bad = nonfinite_tensors({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()["state"],
                                 **({"averaged model": ema.module.state_dict()} if ema is not None else {})})
        if bad:
            last = self.on_disk
            where = f"the last good checkpoint is {last.last} (step {last.last_step})" if last.last else \
                "no checkpoint was written"
            raise RnnlmError(f"not writing {path}: {', '.join(bad[:3])} hold NaN or inf after step "
                             f"{self.state.step}; {where}; lower optim.lr or set optim.clip_grad_norm")
        state = self.state.checkpoint_fields(self.device)
        if ddp.is_main():
            checkpoint = self._checkpoint(state)
            try:
                save_checkpoint(path, checkpoint, elsewhere=ELSEWHERE)
            except CannotWrite as failed:
                raise RnnlmError(self._stop_without_room(failed, checkpoint)) from None
            if path.name == "best.pt":
                self.on_disk.best_loss = self.state.best_val_loss
        ddp.barrier()  # nobody reads the file before it is complete

    def _checkpoint(self, state: dict) -> dict:
        """The run as a checkpoint: the model, the optimizer and the state `state` (TrainState's part)."""
        model = SavedModel(weights=unwrap_model(self.eval_model).state_dict(), config=config_to_dict(self.cfg),
                           tokenizer=self.tokenizer_json, vocab_size=self.vocab_size)
        fields = {OPTIMIZER: self.optimizer.state_dict(),
                  SCALER: self.scaler.state_dict() if self.scaler is not None else None,
                  **state, TEXT_HASH: self.corpus.text_hash, TRAIN_CHARS: self.corpus.chars["train"],
                  PARENT: self.parent}
        if self.ema is not None:
            fields |= {TRAINED_MODEL: self.model.state_dict(), EMA_UPDATES: self.ema.updates}
        return make_checkpoint(model, fields)

    def _stop_without_room(self, failed: CannotWrite, checkpoint: dict) -> str:
        """The line training stops with when a checkpoint cannot be written (a full disk, ...).

        Saves what it can first: when best.pt failed, the same state goes to last.pt (which
        replaces a file already there, so it may still fit), remembering the best.pt on disk
        as the best so far, so the resumed run writes best.pt again at its next validation.
        The line names the checkpoint that holds the progress, and its step.
        """
        s, last = self.state, self.out / "last.pt"
        saved = ""
        if failed.path != last:
            try:
                save_checkpoint(last, {**checkpoint, BEST_VAL_LOSS: self.on_disk.best_loss}, elsewhere=ELSEWHERE)
                self.on_disk.last, self.on_disk.last_step = last, s.step
                saved = f"saved {last} (step {s.step}) instead; "
            except CannotWrite:
                saved = f"{last.name} could not be written either; "
        if self.on_disk.last is None:
            return (f"{failed.what}; training stopped after step {s.step}; {saved}no checkpoint was written; "
                    f"{failed.fix} or {ELSEWHERE}, then train again")
        where = "" if self.on_disk.last_step == s.step and saved.startswith("saved") else \
            f"the last good checkpoint is {self.on_disk.last} (step {self.on_disk.last_step}); "
        return (f"{failed.what}; training stopped after step {s.step}; {saved}{where}"
                f"{failed.fix}, then continue with: rnnlm train --resume {self.out}")

    # --- the end

    def cleanup(self) -> None:
        """Release what holds the process group (the DistributedDataParallel wrapper) while
        the group still exists: destroyed after it, gloo's destructor can wait forever."""
        self.train_model = None
        if ddp.is_distributed():
            gc.collect()  # the wrapper may sit in a reference cycle
        if self.log is not None:
            self.log.close()

    def report_failure(self) -> None:
        """Say where the progress is when training stopped on a bug (not bad input or a signal)."""
        where = (f"{self.on_disk.last} holds the last checkpoint, of step {self.on_disk.last_step} "
                 "(continue with --resume)" if self.on_disk.last else "no checkpoint was written yet")
        print(f"training failed after step {self.state.step} with an unexpected error; {where}", file=sys.stderr)

    def finish(self) -> dict:
        """Final validation, best.pt if it is the best, then the test numbers of best.pt."""
        s, out = self.state, self.out
        val = self.evaluate("valid")
        self._log_validation(val, s.elapsed)
        if val["loss"] < s.best_val_loss or not ddp.from_main((out / "best.pt").exists()):
            s.best_val_loss, s.best_val_bpc = val["loss"], val["bpc"]
            self.save(out / "best.pt")
            self.save(out / "last.pt")  # again, so a resumed run knows the best loss so far
        if ddp.is_main():
            plot_run_quietly(out)
        best = load_checkpoint(out / "best.pt", map_location=self.device)
        self.eval_model.load_state_dict(best[MODEL])
        test = self.evaluate("test") if self.corpus.chars["test"] else None  # data.split may leave none
        minutes = (time.perf_counter() - self.run_start) / 60
        if ddp.is_main():
            print(f"trained {s.step} steps, {s.tokens_seen:,} tokens in {minutes:.1f} min"
                  + (f" ({s.bad_steps_skipped} non-finite steps skipped)" if s.bad_steps_skipped else ""))
            print(f"best checkpoint {out / 'best.pt'} (step {best[STEP]}): "
                  + (format_metrics("test", test) if test else "no test split (data.split gives it 0)"))
        return {"valid": val, "test": test, "steps": s.step, "tokens": s.tokens_seen, "minutes": minutes,
                "best_step": best[STEP], "out_dir": str(out)}


def split_metrics(model, corpus: Corpus, split: str, cfg: Config, device, autocast=None,
                  max_tokens: Optional[int] = None) -> dict:
    """loss / perplexity / bpc of `model` on one split of the corpus (its first `max_tokens`
    + 1 tokens when given)."""
    ids = corpus.ids[split]
    # Distributed: each rank scores its share of the streams; the sums are added up, so
    # every rank gets the same numbers (and makes the same best-checkpoint decision).
    nll, n = evaluate_ids(model, ids, batch_size=cfg.train.batch_size, seq_len=max(cfg.train.seq_len, 64),
                          device=device, max_tokens=max_tokens, autocast=autocast,
                          shard=(ddp.rank(), ddp.world_size()))
    nll, n = ddp.sum_over_ranks(nll, n)
    if max_tokens is not None and ids.numel() > max_tokens + 1:
        ids = ids[: max_tokens + 1]
        chars = len(tokenization.decode(corpus.tokenizer, ids.tolist()))
    else:
        chars = corpus.chars[split]
    return ids_metrics(nll, int(n), corpus.tokenizer, ids, chars)


class LossWindow:
    """Mean training loss and tokens per second since the last log line."""

    def __init__(self):
        self.loss, self.steps, self.tokens, self.start = 0.0, 0, 0, time.perf_counter()

    def add(self, loss: float, tokens: int) -> None:
        self.loss += loss
        self.steps += 1
        self.tokens += tokens

    def flush(self) -> tuple[float, float]:
        now = time.perf_counter()
        result = self.loss / self.steps, self.tokens / max(1e-9, now - self.start)
        self.loss, self.steps, self.tokens, self.start = 0.0, 0, 0, now
        return result


class ProgressBar:
    """How far the run is towards its limit (steps, epochs or minutes), and the time left."""

    SCALE = 1000  # the bar counts thousandths of the run

    def __init__(self, enabled: bool, step: int, fraction: float):
        self.bar = tqdm(total=self.SCALE, initial=self._ticks(fraction), disable=not enabled, dynamic_ncols=True,
                        desc=f"step {step}", bar_format="{desc} {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]")

    def show(self, step: int, fraction: float) -> None:
        self.bar.set_description_str(f"step {step}", refresh=False)
        self.bar.update(self._ticks(fraction) - self.bar.n)

    def _ticks(self, fraction: float) -> int:
        return min(self.SCALE, round(fraction * self.SCALE))

    def set_postfix(self, **values) -> None:
        self.bar.set_postfix(refresh=False, **values)

    def write(self, line: str) -> None:
        self.bar.write(line)

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()


@contextlib.contextmanager
def stop_on_signals(received: list):
    """SIGINT / SIGTERM append their number to `received`: the loop finishes the step in
    flight, saves and stops. A second signal means "now": it interrupts at once (last.pt
    is then the periodic one). Only the main thread can install handlers; elsewhere
    (e.g. a test's thread) signals keep their usual meaning."""
    def on_signal(signum, frame):
        if received:
            raise KeyboardInterrupt
        received.append(signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
