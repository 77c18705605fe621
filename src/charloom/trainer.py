"""Training: teacher forcing, evaluation in bits per character, samples as it learns, exact resume.

    result = train(source="names", hidden_size=128, max_time="2m")        # or train(CorpusConfig(...), ...)

Every step feeds a batch of inputs and scores the model's prediction of each next character
(cross-entropy; padding targets of record batches are ignored), updates the weights (once, or once per
piece of the batch's windows: `early_pieces` early in the budget, `late_pieces` after) and then an
exponential moving average of them: that average is the model evaluated, sampled and saved (`ema`). Every
`eval_every` steps the held-out split is scored and the hooks run (hooks.py): the terminal display,
samples, the metrics log, and two files written atomically in the run folder: model.safetensors (the
best so far by validation loss) and last.safetensors (everything needed to resume exactly). SIGINT and
SIGTERM finish the current step, save and return; a non-finite loss stops before that step is saved.

`setup` assembles a run from its configs (runtime, data, model, optimizer, hooks, resumed state);
`Trainer` is the loop alone.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel

from . import atomic, checkpoint, finetune, hooks, sizing
from .batching import Batch, Data, check_options, prepare
from .checkpoint import Progress, RunState
from .config import (BATCH_SIZES, EARLY_PIECE, EXPORTED, EXPORTED_INT8, LATE_PIECE, MAX_PIECES, SPLIT_FIELDS,
                     BatchConfig, Config, CorpusConfig, ModelConfig, TrainConfig, expand)
from .corpus import Corpus, Source, load as load_corpus, resolve
from .decoding import HEAD_ROWS, memory_cap, recall_floats, state_bytes
from .errors import CharloomError, ConfigError
from .evaluation import LN2, STATE_GRADIENTS, Evaluation, batch_loss, evaluate
from .model import CharRNN, State, detach
from .runtime import Runtime
from .vocab import Vocab

CONFIGS: dict[str, type[Config]] = {"corpus": CorpusConfig, "batch": BatchConfig, "model": ModelConfig,
                                    "train": TrainConfig}


def learning_rate(cfg: TrainConfig, step: int, progress: float) -> float:
    """Linear warm-up over `warmup` steps, then constant or cosine decay to `min_lr_ratio * lr` by the budget's end."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.schedule == "constant":
        return cfg.lr
    low = cfg.lr * cfg.min_lr_ratio
    return low + (cfg.lr - low) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# options whose default differs from what runs saved before them did: a resumed older run takes these (it took
# no early or late pieces, and it trained on all of its training split)
PREDATED = {"train": {"early_pieces": 1, "late_pieces": 1}, "batch": {"fit_chars": 0}}
TRAIN_COPIES = 5  # float32 values a parameter holds in training: weight, gradient, Adam's two moments, average
ACTIVATION_COPIES = 4  # ... and a batch's logits and gates: forward, backward, and the softmax's work
STOPS = ("SIGINT", "SIGTERM", "callback")  # what stops a run before its budget, in the order named when several do


class _StopSignals:
    """SIGINT/SIGTERM set a flag that the loop checks after each step; a second SIGINT stops at once."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def _ema(decay: float) -> Callable[[list[torch.Tensor], list[torch.Tensor], torch.Tensor], None]:
    """AveragedModel's update: after n updates, average <- lerp(average, weights, 1 - min(decay, (1+n)/(10+n))),
    so the first steps average over a few steps rather than dragging the initial weights along."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n: torch.Tensor) -> None:
        # the weight stays a tensor on n's device: reading n on the host would wait for the GPU every step
        weight = 1.0 - torch.clamp((1.0 + n) / (10.0 + n), max=decay)
        torch._foreach_lerp_(averaged, current, weight)

    return update


@dataclass
class Window:
    """Training figures since the last evaluation: mean loss and characters per second of the steps alone."""

    loss_sum: float = 0.0
    steps: int = 0
    characters: int = 0
    seconds: float = 0.0  # training steps only: evaluations and saving are left out

    @property
    def rate(self) -> float:
        return self.characters / self.seconds if self.seconds else 0.0


@dataclass
class TrainResult:
    out: Path
    model: CharRNN
    vocab: Vocab
    records: bool
    progress: Progress
    val: Evaluation | None
    stopped_by: str  # "budget", or one of STOPS
    history: list[dict[str, Any]] = field(default_factory=list)
    steps_run: int = 0  # steps taken by this call (a resumed run counts from where it resumed)


class Trainer:
    """The loop: handed the model, data, optimizer and runtime; trains until the budget or a stop, and
    calls its hooks at the start, after each step, at each evaluation and at the end."""

    def __init__(self, model: CharRNN, data: Data, opt: torch.optim.Optimizer, rt: Runtime, cfg: TrainConfig,
                 hook_list: Sequence[hooks.Hook] = (), contiguous: bool = False):
        if not cfg.lr > 0:  # 0 asks setup to set the rate from the width; a Trainer needs the rate itself
            raise ConfigError(f"lr: a Trainer needs a positive peak rate, got {cfg.lr} (setup sets 0 by width)")
        if cfg.early_pieces < 1 or cfg.late_pieces < 1:
            raise ConfigError(f"early_pieces and late_pieces: a Trainer needs 1 or more, got {cfg.early_pieces} and "
                              f"{cfg.late_pieces} (setup sets 0)")
        self.model, self.data, self.opt, self.rt, self.cfg = model, data, opt, rt, cfg
        self.hooks = list(hook_list)
        self.out = expand(cfg.out)
        self.vocab, self.records = data.corpus.vocab, data.corpus.is_records
        self.contiguous = contiguous  # batches continue each other: the hidden state may carry across them
        self.net: torch.nn.Module = model  # what the training step calls
        if rt.procs.many:
            torch.manual_seed(cfg.seed + 1_000_003 * rt.procs.rank)  # its own dropout masks per process
            self.net = DistributedDataParallel(model)  # copies rank 0's weights to every process
        # what is evaluated, sampled and saved: the average of the trained weights (or the weights themselves)
        self.average = AveragedModel(model, multi_avg_fn=_ema(cfg.ema)) if cfg.ema else None
        self.final_model: CharRNN = self.average.module if self.average else model
        self.scaler = torch.amp.GradScaler("cuda", enabled=rt.precision == "fp16")
        self.pos = Progress()
        self.carry: State | None = None
        self.history: list[dict[str, Any]] = []
        self.window = Window()
        self.improved = False  # the last evaluation beat every earlier one
        self.ended: str | None = None  # what stopped the run ("budget", "SIGINT", ...), once it has stopped
        self.lock: IO[str] | None = None  # the run folder's lock (atomic.hold_folder), held until run() ends
        self.closed = False  # close() was called (run() calls it): the folder is no longer this trainer's

    def restore(self, ck: checkpoint.Checkpoint, run: RunState) -> None:
        """Continue from a resume file: weights, average, optimizer, this process's RNG and carried state."""
        if run.world != self.rt.procs.world:
            raise CharloomError(f"resume (--resume): the run in {self.out} trained with {run.world} process(es), "
                                f"this launch has {self.rt.procs.world}; resume it with the same number")
        saved_model = ck.model.state_dict()  # the average, when the run kept one
        self.model.load_state_dict(run.trained or saved_model)
        if self.average is not None:  # a run that kept no average starts one from its weights
            self.average.module.load_state_dict(saved_model)
            self.average.n_averaged.fill_(run.averaged if run.trained else 0)
        # the saved moments, under this run's own settings (the learning rate is set each step anyway)
        self.opt.load_state_dict({"state": run.optimizer["state"], "param_groups": self.opt.state_dict()["param_groups"]})
        mine, device = run.ranks[self.rt.procs.rank], self.rt.device
        torch.set_rng_state(mine["rng.torch"].cpu())
        if "rng.cuda" in mine and device.type == "cuda":
            torch.cuda.set_rng_state(mine["rng.cuda"].cpu(), device)
        carry = run.carry(self.rt.procs.rank)
        self.carry = tuple(t.to(device) for t in carry) if carry else None
        self.pos = run.progress

    def budgets(self) -> dict[str, float]:
        """The share used of each budget, keyed by the flag that sets it (`--max-steps 200`)."""
        c, pos = self.cfg, self.pos
        parts = {}
        if c.max_steps:
            parts[f"--max-steps {c.max_steps}"] = pos.step / c.max_steps
        if c.seconds:
            parts[f"--max-time {c.max_time or '10m'}"] = pos.elapsed / c.seconds
        if c.epochs:
            per = max(1, self.data.train.batches_in_epoch(pos.epoch))
            parts[f"--epochs {c.epochs:g}"] = (pos.epoch + pos.index / per) / c.epochs
        return parts

    def fraction_done(self) -> float:
        return max(self.budgets().values(), default=0.0)

    def eta(self) -> float:
        done = self.fraction_done()
        return self.pos.elapsed * (1 - done) / done if done > 0 else 0.0

    def pieces(self) -> int:
        """Optimizer steps to take on the next batch: the run's early pieces while the budget used is within
        --early-share, else its late pieces (every process reads the same share: the loop shares one clock)."""
        early, late = run_pieces(self.cfg, self.records)
        return early if self.fraction_done() < self.cfg.early_share else late

    def step(self, batch: Batch) -> tuple[float, float]:
        """One batch: (its mean loss in nats, the last learning rate used). Cut into `pieces()` along time, one
        optimizer step on each, the hidden state carried (detached) from each piece to the next."""
        carried = self.contiguous and self.cfg.carry_state and batch.continues
        state, losses, pieces = self.carry if carried else None, [], batch.pieces(self.pieces())
        for piece in pieces:
            value, lr, state = self.update(piece, state)
            losses.append(value)
        if self.average is not None:
            self.average.update_parameters(self.model)
        if self.contiguous:
            self.carry = state
        if len(pieces) == 1:
            return losses[0], lr
        counts = [p.tokens for p in pieces]
        return sum(v * n for v, n in zip(losses, counts)) / max(1, sum(counts)), lr  # per character of the batch

    def update(self, batch: Batch, state: State | None) -> tuple[float, float, State]:
        """One optimizer step on `batch` from `state`: (its mean loss in nats, the learning rate, its final state,
        detached)."""
        cfg = self.cfg
        lr = learning_rate(cfg, self.pos.step, self.fraction_done())
        for g in self.opt.param_groups:
            g["lr"] = lr
        loss, new_state = batch_loss(self.net, batch, state, self.rt.device, self.rt.precision)
        value = float(loss.detach())
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()  # every process joins the gradient average
        (bad,) = self.rt.procs.total([not math.isfinite(value)], self.rt.device)
        if bad:
            where = f"the loss is {value}" if not math.isfinite(value) else "another process's loss is not finite"
            kept = (f"the files in {self.out} are from the last good evaluation"
                    if (self.out / checkpoint.RESUME_FILE).exists() else "no evaluation had been saved yet")
            raise CharloomError(f"step {self.pos.step + 1}: {where}; training stopped and this step was not saved "
                                f"({kept}); try a lower --lr")
        if cfg.grad_clip:
            self.scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        return value, lr, detach(new_state)

    def evaluate(self, final: bool) -> tuple[Evaluation | None, Evaluation | None]:
        """(the periodic measure, the whole split at the end). Every row scores the same `eval_chars`
        characters, so the curve and the choice of the best model compare like with like."""
        if self.data.val is None:
            return None, None
        model, device, precision = self.final_model, self.rt.device, self.rt.precision
        val = evaluate(model, self.data.val_batches(), device, self.cfg.eval_chars, precision)
        if not final:
            return val, None
        if not self.cfg.eval_chars or val.characters < self.cfg.eval_chars:
            return val, val  # the subset was already the whole split
        return val, evaluate(model, self.data.val_batches(), device, precision=precision)

    def scores(self, val: Evaluation | None, full: Evaluation | None) -> dict[str, Any]:
        """What a model file records of the run so far."""
        pos = self.pos
        return {"step": pos.step, "characters_seen": pos.characters, "train_seconds": round(pos.elapsed, 1),
                "val_loss": val.loss if val else None, "val_bpc": val.bpc if val else None,
                "best_val_bpc": None if math.isinf(pos.best_val) else pos.best_val / LN2, "stopped_by": self.ended,
                **({"full_val_loss": full.loss, "full_val_bpc": full.bpc} if full else {})}

    def checkpoint(self, final: bool) -> Evaluation | None:
        """Score the held-out split (first process only), then let every hook see the evaluation."""
        val = full = row = None
        if self.rt.procs.main:
            val, full = self.evaluate(final)
            self.improved = val is not None and val.loss < self.pos.best_val
            if self.improved:
                self.pos.best_val = val.loss
            w, pos = self.window, self.pos
            per = max(1, self.data.train.batches_in_epoch(pos.epoch))
            train_loss = w.loss_sum / w.steps
            row = {"step": pos.step, "epoch": round(pos.epoch + pos.index / per, 4), "train_loss": train_loss,
                   "train_bpc": train_loss / LN2, "val_loss": val.loss if val else None,
                   "val_bpc": val.bpc if val else None, "lr": self.opt.param_groups[0]["lr"],
                   "characters": pos.characters, "chars_per_s": round(w.rate), "seconds": round(pos.elapsed, 2)}
            if full:
                row |= {"full_val_loss": full.loss, "full_val_bpc": full.bpc, "full_val_characters": full.characters}
            self.history.append(row)
        for h in self.hooks:
            h.on_eval(self, row, val, full)
        self.window = Window()
        return full or val

    def run(self) -> TrainResult:
        if self.closed:  # its folder may be another run's by now: writing there would take turns with it
            raise CharloomError(f"out (--out): this trainer has let {self.out} go (it ran, or was closed); set up "
                                f"another to train there")
        try:
            return self._run()
        finally:
            self.close()

    def close(self) -> None:
        """Let the run folder go for the next writer: run() does when it ends; a trainer set up and never run
        holds it until this, the end of a `with` block, or its collection. A closed trainer does not run."""
        self.closed = True
        if self.lock is not None:
            self.lock.close()
            self.lock = None

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _run(self) -> TrainResult:
        self.model.train()
        for h in self.hooks:
            h.on_start(self)
        stopped_by, val, steps_run, finished = "budget", None, 0, False
        try:
            with _StopSignals() as signals:
                stopped_by, steps_run = self._loop(signals)
                self.ended = stopped_by  # recorded by the final save
                if self.window.steps:
                    val = self.checkpoint(final=stopped_by == "budget")
                # a signal during the final evaluation came after the budget's last step: the run is saved whole,
                # and its status still says it was asked to stop
                stopped_by = signals.received if stopped_by == "budget" and signals.received else stopped_by
            finished = True
        finally:
            self.net = self.model  # drop the wrapper, and with it the reducer's hold on the process group
            self.rt.procs.close(finished)
        result = TrainResult(self.out, self.final_model, self.vocab, self.records, self.pos, val, stopped_by,
                             self.history, steps_run)
        for h in self.hooks:
            h.on_end(self, result)
        return result

    def _loop(self, signals: _StopSignals) -> tuple[str, int]:
        """Steps until the budget or a stop, evaluating every `eval_every`: (what stopped it, steps taken)."""
        pos, procs, device = self.pos, self.rt.procs, self.rt.device
        batches = self.data.train.iterate(pos.epoch, pos.index)
        steps_run, t_last = 0, time.perf_counter()
        while self.fraction_done() < 1.0:
            t0 = time.perf_counter()
            batch = next(batches)
            value, lr = self.step(batch)
            now = time.perf_counter()
            steps_run, pos.step = steps_run + 1, pos.step + 1
            pos.epoch, pos.index = batch.epoch, batch.index + 1
            elapsed, pos.elapsed = pos.elapsed, pos.elapsed + now - t_last  # wall time: evaluations count too
            t_last = now
            self.window.seconds += now - t0
            event = {"event": "step", "step": pos.step, "loss": value, "lr": lr}
            if note := self.rt.retune():  # the threads moved as other work on the CPUs came or went
                event["threads"] = note
            wanted = any([h.on_step(self, event) for h in self.hooks])  # every hook sees every step
            local = signals.received or ("callback" if wanted else None)
            *stops, spent, tokens, loss = procs.total(
                [local == why for why in STOPS] + [pos.elapsed - elapsed, batch.tokens, value * batch.tokens], device)
            # one clock for all processes (their mean), so the learning rate, the pieces and the budget's end
            # are the same everywhere; a stop anywhere is a stop for all, named alike everywhere
            pos.elapsed = elapsed + spent / procs.world
            pos.characters += int(tokens)
            w = self.window
            w.loss_sum += loss / tokens if procs.many else value  # per character of all the processes' batches
            w.steps, w.characters = w.steps + 1, w.characters + int(tokens)
            if any(stops):
                return next(why for why, n in zip(STOPS, stops) if n), steps_run
            if self.fraction_done() >= 1.0:
                break
            if self.cfg.eval_every and pos.step % self.cfg.eval_every == 0:
                self.checkpoint(final=False)
        return "budget", steps_run


# ---- assembling a run --------------------------------------------------------------------------------
def configure(corpus: CorpusConfig | None = None, batch: BatchConfig | None = None, model: ModelConfig | None = None,
              config: TrainConfig | None = None, **options: Any) -> dict[str, Config]:
    """The four configs of a run, from config objects and keyword options (each goes to whichever config
    has the field). Resuming, whatever is not given is what the saved run used, so `charloom train
    --resume` and `train(..., resume=True)` continue the same run the same way."""
    given: dict[str, Config | None] = {"corpus": corpus, "batch": batch, "model": model, "train": config}
    names = {kind: {f for f in cls.__dataclass_fields__} for kind, cls in CONFIGS.items()}
    unknown = sorted(k for k in options if not any(k in n for n in names.values()))
    if unknown:
        raise CharloomError(f"train(): unknown option {unknown[0]!r}")
    train_cfg = config or TrainConfig()
    base: dict[str, dict[str, Any]] = {}
    if options.get("resume", train_cfg.resume):
        out = expand(options.get("out", train_cfg.out))
        path = out / checkpoint.RESUME_FILE
        if not path.exists():
            raise CharloomError(f"resume (--resume): {path} not found; nothing to resume in {out}")
        saved = checkpoint.run_configs(path)
        for kind, before in PREDATED.items():
            if isinstance(saved.get(kind), dict):
                saved[kind] = {**before, **saved[kind]}
        base = {k: CONFIGS[k].from_dict(v, where=f"{path}: {k} options").to_dict() for k, v in saved.items()}
        base.get("train", {}).pop("overwrite", None)  # how the run began, not how it goes on
    cfgs = {}
    for kind, cls in CONFIGS.items():
        start = given[kind].to_dict() if given[kind] is not None else base.get(kind, {})
        mine = {k: v for k, v in options.items() if k in names[kind]}
        cfgs[kind] = cls(**{**start, **mine}).marked(mine)  # what was named is checked as given, whatever its value
    return cfgs


def _about_corpus(cfg: CorpusConfig, corpus: Corpus) -> dict[str, Any]:
    """What a run's files say of its corpus: where it came from, its size, and a fingerprint of its encoded text,
    record boundaries and labels (so that a resumed run can tell it reads the same text)."""
    digest = hashlib.blake2b(digest_size=16)
    for part in (corpus.ids, corpus.offsets, corpus.labels):
        digest.update(b"" if part is None else np.ascontiguousarray(part))  # the buffer itself, not a copy
    return {"corpus": cfg.source, "corpus_config": cfg.to_dict(), "corpus_characters": int(len(corpus.ids)),
            "corpus_digest": digest.hexdigest()}


def _check_resumable(out: Path, now: dict[str, Config], ck: checkpoint.Checkpoint, run: RunState,
                     vocab: Vocab, about: dict[str, Any]) -> None:
    """A resumed run must be the same run: same model, corpus, batching, vocabulary and text."""
    if ck.vocab != vocab:  # before the options: the model's vocab_size would differ, a symptom of this
        raise CharloomError(f"resume (--resume): the corpus now gives a different vocabulary than the run in {out} "
                            f"({len(vocab)} ids now, {len(ck.vocab)} then)")
    saved = {"model": ck.config.to_dict(), **run.configs}
    for kind in ("model", "corpus", "batch"):
        # an option the saved run predates has its default there, or what runs did before it (PREDATED)
        mine, then = now[kind].to_dict(), {**type(now[kind])().to_dict(), **PREDATED.get(kind, {}), **saved[kind]}
        if kind == "corpus":  # where encoded ids are cached may move
            mine["cache_dir"] = then.get("cache_dir")
        if kind == "model" and now["model"].head_width == ck.config.head_width:  # its width given, or -1 giving it
            mine["head_hidden"] = then.get("head_hidden")
        diff = sorted(k for k in mine if mine[k] != then.get(k))
        if diff:
            k = diff[0]
            raise CharloomError(f"resume (--resume): option {k} is {mine[k]!r} but the run in {out} used "
                                f"{then.get(k)!r}")
    then = ck.info.get("corpus_digest")  # absent from files written before runs recorded it
    if then is not None and then != about["corpus_digest"]:
        size = ck.info.get("corpus_characters")
        size = f"{size:,}" if isinstance(size, int) else "?"
        raise CharloomError(f"resume (--resume): {about['corpus']} is not the text the run in {out} trained on "
                            f"({about['corpus_characters']:,} characters now, {size} then); give that text again, "
                            f"or start a new run in another --out")


def _check_parent(given: str, started: str, out: Path) -> None:
    """A resumed run goes on from the parent it started from: another given is refused (none given keeps it)."""
    def model(name: str) -> Path | None:
        try:
            return checkpoint.model_path(name).resolve()
        except CharloomError:
            return None
    if given and given != started and (not started or model(given) is None or model(given) != model(started)):
        raise CharloomError(f"resume (--resume): the run in {out} started from {started or 'no parent'}, not "
                            f"{given} (--init-from); resume it without --init-from")


def _with_parent(cfg: TrainConfig, previous: tuple[checkpoint.Checkpoint, RunState] | None) -> TrainConfig:
    """A resumed run's config with the parent it started from (`_check_parent` let no other through), so that a
    resume that named none does not record the run as started from none."""
    return cfg if previous is None else cfg.replace(init_from=_started_from(previous[1]))


def _started_from(run: RunState) -> str:
    """The parent a run started from (--init-from), "" for none."""
    return run.configs.get("train", {}).get("init_from", "")


def _previous_run(cfg: TrainConfig, out: Path) -> tuple[checkpoint.Checkpoint, RunState] | None:
    """The run to continue (--resume), or None for a fresh one (refused where a run is, unless --overwrite)."""
    path = out / checkpoint.RESUME_FILE
    if cfg.resume:
        if not path.exists():
            raise CharloomError(f"resume (--resume): {path} not found; nothing to resume in {out}")
        ck, run = checkpoint.load_run(path)
        _check_parent(cfg.init_from, _started_from(run), out)
        return ck, run
    if path.exists() and not cfg.overwrite:
        raise CharloomError(f"out (--out): {out} already holds a run; continue it (resume, --resume), replace it "
                            f"(overwrite, --overwrite), or choose another folder")
    parent = expand(cfg.init_from)
    folder = parent if parent.is_dir() else parent.parent
    if cfg.init_from and out.is_dir() and folder.is_dir() and out.samefile(folder):
        raise CharloomError(f"init_from (--init-from) {cfg.init_from}: its model is in {out}, the folder this run "
                            f"writes to (--out), which would replace the model it starts from; choose another --out")
    return None


def _check_out(out: Path) -> IO[str] | None:
    """Create the run folder, hold it for this run (see atomic.hold_folder) and write a small file in it, so that
    a folder that cannot hold the run, or that another run is writing, is said before any work rather than at the
    first save; and remove what writers killed mid-save left there. Returns the held lock."""
    if out.exists() and not out.is_dir():
        raise CharloomError(f"out (--out): {out} is a file, not a folder")
    probe = out / f".write-check{atomic.TMP_MARK}{os.getpid()}"  # named as a leftover: a kill here is cleaned up
    lock = None
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock = atomic.hold_folder(out, "out (--out)")
        atomic.remove_leftovers(out)
        probe.write_bytes(b"charloom")
        probe.unlink()
    except OSError as e:
        if lock is not None:  # let go now, not when the error's traceback is
            lock.close()
        raise CharloomError(f"out (--out): cannot write the run folder {out} ({e.strerror or e})") from None
    return lock


def _check_options(kind: tuple[bool, bool, str], batch: BatchConfig, cfg: TrainConfig, saved: dict[str, Any] | None
                   ) -> None:
    """Options a corpus of this kind (records, labelled, its name) is never batched or trained by are refused
    rather than dropped (see check_options). A resumed run (`saved`: the training options it recorded) takes what
    was not given from its file: its batch options must match the file's (resume checks), and a training option
    is refused only where given anew."""
    records, _, name = kind
    if saved is None:
        check_options(*kind, batch)
    defaults = TrainConfig().to_dict()

    def anew(name: str) -> bool:  # given, or neither the default (0: the pieces chosen) nor what the run recorded
        return name in cfg.given or getattr(cfg, name) not in (defaults[name], (saved or defaults).get(name,
                                                                                                   defaults[name]))

    if saved is None and batch.fit_chars > 0 and not cfg.ngram:  # text trained on by nothing
        raise CharloomError("--fit-chars: leaves text out of training for the n-gram's mixture, which --ngram 0 "
                            "never fits; leave --fit-chars out")
    if saved is not None and cfg.overwrite:
        raise CharloomError(f"--overwrite: starts afresh, and --resume continues the run in {cfg.out}; give one or "
                            f"the other")
    if records:  # records are short already: never learned in pieces
        for option in ("early_pieces", "late_pieces", "early_share"):
            if anew(option):
                raise CharloomError(f"--{option.replace('_', '-')}: only for continuous text, whose windows are "
                                    f"learned in pieces; {name} is read as records")
    if anew("carry_state") and (records or batch.order != "contiguous"):
        flag = "--carry-state" if cfg.carry_state else "--no-carry-state"
        raise CharloomError(f"{flag}: only with --order contiguous on continuous text, where the state would carry "
                            f"from batch to batch; shuffled windows and records start from zero")


def _kind(text: Corpus | Source, labelled: bool | None = None) -> tuple[bool, bool, str]:
    """(records, labelled, name) of a corpus read, or of one resolved and yet to be read (`labelled` its config's)."""
    if isinstance(text, Source):
        return text.records, bool(labelled), text.label
    return text.is_records, text.labels is not None, text.name


def _check_reading(data: Data, cfg: BatchConfig, train: TrainConfig) -> None:
    """What the run's evaluations will read is refused now, not at the first one after minutes of training: a
    validation split asked for but too small to score, a samples' start text the vocabulary cannot read."""
    if train.sample_start and train.shows_samples:
        data.corpus.vocab.encode_array(train.sample_start, where="--sample-start")
    records = data.corpus.is_records
    need = 1 if records else 2  # a stream's first character is never predicted
    if cfg.val_fraction == 0 or data.val_size >= need:
        return
    unit = ("record" if records else "character") + ("" if data.val_size == 1 else "s")
    raise CharloomError(f"--val-fraction {cfg.val_fraction:g}: the validation split of {data.corpus.name} holds "
                        f"{data.val_size} {unit}, too few to score (at least {need}); give a larger --val-fraction, "
                        f"or --val-fraction 0 to train without validation")


def _keep_metrics_until(path: Path, step: int) -> None:
    """Drop the lines a killed run wrote after its last save."""
    if path.exists():
        kept = [ln for ln in path.read_text(errors="replace").splitlines() if _step_of(ln) <= step]
        atomic.write_text(path, "".join(ln + "\n" for ln in kept))


def _step_of(line: str) -> float:
    """The step of a metrics line; a line cut short by a kill mid-append counts as past every step."""
    try:
        row = json.loads(line)
        return row["step"] if isinstance(row, dict) and isinstance(row.get("step"), int) else math.inf
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError, as is an over-long integer
        return math.inf


def _hooks(cfgs: dict[str, Config], trainer_info: Callable[[], dict[str, Any]], main: bool,
           callback: Callable[[dict[str, Any]], bool | None] | None) -> list[hooks.Hook]:
    cfg: TrainConfig = cfgs["train"]  # type: ignore[assignment]
    out = expand(cfg.out)
    chosen: list[hooks.Hook] = [hooks.Mixing(cfg.ngram)] if cfg.ngram else []  # before Display reports the model
    if main:  # quiet or not, the run says where its model went
        chosen.append(hooks.Display(trainer_info, quiet=not cfg.progress))
        chosen.append(hooks.MetricsLog(out / "metrics.jsonl"))
    # the files first: what shows the evaluation (chart, samples) cannot lose what it trained
    chosen.append(hooks.Checkpoints(out, {k: cfgs[k].to_dict() for k in checkpoint.RUN_CONFIGS}, trainer_info))
    if main:
        chosen.append(hooks.Chart(out, quiet=not cfg.progress))  # after MetricsLog: it draws the row just written
    if main and cfg.shows_samples:
        chosen.append(hooks.Samples(cfg.sample_start, cfg.sample_temperatures, cfg.sample_length, cfg.seed))
    if callback is not None:
        chosen.append(hooks.Callback(callback))
    return chosen


def _prepared(text: Callable[[], Corpus], batch: BatchConfig, cfg: TrainConfig, rt: Runtime, data: Data | None,
              previous: tuple[checkpoint.Checkpoint, RunState] | None) -> tuple[Data, BatchConfig]:
    """The run's split and batches, and its batch options with the text kept out of training for a mixture to fit
    on settled (what the run records): as the given `data` split it, as the resumed run did, or by the run's
    n-gram on the corpus `text()` reads. The batch size stays 0 where the run is to choose it (`_width`); the
    batches are then of the first of BATCH_SIZES."""
    if data is not None:  # a split made by the caller: -1 there made no cut
        return data, batch.replace(fit_chars=max(data.cfg.fit_chars, 0), batch_size=data.cfg.rows)
    if previous is not None:
        batch = batch.replace(fit_chars=_saved_fit_chars(cfg, previous[1]) if batch.fit_chars < 0 else batch.fit_chars,
                              batch_size=batch.batch_size or _saved_batch_size(cfg, previous[1]))
    corpus = text()
    batch = batch.settled(cfg.ngram)
    return prepare(corpus, batch, rt.procs.rank, rt.procs.world), batch


def _saved_fit_chars(cfg: TrainConfig, run: RunState) -> int:
    """The text a resumed run left out of training for its mixture (none, in a file from before the option)."""
    n = run.configs["batch"].get("fit_chars", PREDATED["batch"]["fit_chars"])
    if isinstance(n, bool) or not isinstance(n, int) or n < -1:
        raise CharloomError(f"{expand(cfg.out) / checkpoint.RESUME_FILE}: damaged resume file "
                            f"(batch fit_chars {n!r})")
    return max(n, 0)


def _saved_batch_size(cfg: TrainConfig, run: RunState) -> int:
    """The batch size a resumed run trained with (chosen or given)."""
    n = run.configs["batch"].get("batch_size")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise CharloomError(f"{expand(cfg.out) / checkpoint.RESUME_FILE}: damaged resume file "
                            f"(batch batch_size {n!r})")
    return n


def _corpus(corpus: CorpusConfig, cfg: TrainConfig, parent: finetune.Parent | None,
            previous: tuple[checkpoint.Checkpoint, RunState] | None):
    """The corpus, encoded with the vocabulary the run must keep: its parent's when fine-tuning (or the one it
    had when resuming a fine-tuned run, or a run whose labels were named as labels were before: with the spaces
    around them, or "2.0" for a JSON 2.0; read now, they would be named otherwise); otherwise one built from the
    text."""
    if parent is not None:
        return finetune.read_corpus(parent, corpus, cfg.extend_vocab)
    if previous is not None and (previous[0].info.get("parent") or previous[0].vocab.earlier_labels):
        return load_corpus(corpus, vocab=previous[0].vocab)
    return load_corpus(corpus)


def _width(model: ModelConfig, cfg: TrainConfig, rt: Runtime, data: Data, batch: BatchConfig,
           previous: tuple[checkpoint.Checkpoint, RunState] | None) -> tuple[ModelConfig, Data, sizing.Fit | None]:
    """The model config with its width set, and the run's batches: as given, as the resumed run had them, or chosen
    for this machine and budget (measured by the first process only, so that the others do not slow its timing;
    all take its choice)."""
    pieces = run_pieces(cfg, data.corpus.is_records)
    if model.hidden_size:
        return _check_size(model, data.train_shape, min(pieces)), data, None
    if previous is not None:
        return model.replace(hidden_size=previous[0].config.hidden_size), data, None
    datas = _batch_choices(data, batch, cfg, rt)
    shapes = {rows: d.train_shape for rows, d in datas.items()}
    fitted = sizing.fit(model, shapes, cfg, rt, data.train_characters, *pieces) if rt.procs.main else None
    (width,) = rt.procs.total([fitted.hidden_size if fitted else 0], rt.device)
    data = datas[fitted.batch_size] if fitted and fitted.batch_size else data  # one process when there is a choice
    return _check_size(model.replace(hidden_size=int(width)), data.train_shape, min(pieces)), data, fitted


def _batch_choices(data: Data, batch: BatchConfig, cfg: TrainConfig, rt: Runtime) -> dict[int, Data]:
    """The batches a run that chooses its width may take, by rows: `data` as prepared, and where no batch size is
    given and a time limit is all that ends the run (a step limit would train more text per step, an epoch limit
    none) each larger size of BATCH_SIZES whose batches hold more rows (a records split may have fewer) on the same
    split (a small text's mixture cut needs ten batches). One process only: the batches are per process, and past
    32 rows in all a batch has learned less per character."""
    datas = {data.train_shape[0]: data}
    if batch.batch_size or not cfg.seconds or cfg.max_steps or cfg.epochs or rt.procs.world > 1:
        return datas
    for rows in BATCH_SIZES[1:]:
        try:
            d = prepare(data.corpus, batch.replace(batch_size=rows), rt.procs.rank, rt.procs.world)
        except CharloomError:  # too few windows or records for a batch of this size
            continue
        if d.train_shape[0] > max(datas) and d.train_characters == data.train_characters:
            datas[d.train_shape[0]] = d
    return datas


def _check_size(model: ModelConfig, shape: tuple[int, float], pieces: int = 1) -> ModelConfig:
    """`model`, refused before anything is allocated where training it on batches of `shape` (rows, characters per
    row) would need more than half of this machine's memory: weights, gradients, Adam's two moments and the weight
    average (TRAIN_COPIES of each parameter), and the logits and gates of the largest piece a batch is learned in
    (`pieces` of it at fewest: each piece's graph is freed by its backward pass before the next is built;
    ACTIVATION_COPIES of each), and each row's state with its gradient (an attention head's memory above all,
    which no piece cuts)."""
    with torch.device("meta"):
        n = CharRNN(model).num_parameters()
    H, V, W, A = model.hidden_size, model.vocab_size, model.head_width, model.attention
    piece = math.ceil(shape[1] / pieces)  # characters per row of the largest piece
    need = 4 * (TRAIN_COPIES * n + ACTIVATION_COPIES * shape[0] * piece
                * (V + HEAD_ROWS * W + 4 * H * model.num_layers + recall_floats(model, piece))) \
        + STATE_GRADIENTS * shape[0] * state_bytes(model)
    if need > (cap := memory_cap()):
        raise ConfigError(f"hidden_size, head_hidden, attention, memory, embedding and num_layers (--hidden {H}, "
                          f"--head-hidden {model.head_hidden}, --attention {A}, --memory {model.memory}, --embedding "
                          f"{model.embedding}, --layers {model.num_layers}): "
                          f"{n:,} parameters and a batch of {shape[0]} x {shape[1]:.0f} learned in pieces of "
                          f"{piece:,} would need about {need / 1e9:,.1f} GB to train, more than the "
                          f"{cap / 1e9:,.1f} GB allowed (half of this machine's memory); give a smaller model, "
                          f"--batch-size or --seq-len")
    return model


def run_pieces(cfg: TrainConfig, records: bool) -> tuple[int, int]:
    """Optimizer steps per batch in the budget's early share and after it: the run's --early-pieces and
    --late-pieces on a continuous corpus; records are short already, so (1, 1)."""
    return (1, 1) if records else (cfg.early_pieces, cfg.late_pieces)


def _settled(config: TrainConfig, precision: str, seq_len: int) -> TrainConfig:
    """The options a run records as it settles them: the precision it resolved (so a resumed run computes as it
    did, however a probe goes) and the pieces its windows of `seq_len` are learned in."""
    cfg = config.replace(precision=precision)
    if not cfg.early_pieces:  # a fine-tune starts from a trained network: its early steps lost with pieces
        cfg = cfg.replace(early_pieces=1 if cfg.init_from else min(MAX_PIECES, -(-seq_len // EARLY_PIECE)))
    if not cfg.late_pieces:
        cfg = cfg.replace(late_pieces=min(MAX_PIECES, -(-seq_len // LATE_PIECE)))
    return cfg


def _peak_lr(cfg: TrainConfig, width: int, previous: tuple[checkpoint.Checkpoint, RunState] | None) -> float:
    """The peak learning rate: as given, as the resumed run recorded it, or the width's (sizing.peak_lr)."""
    if cfg.lr:
        return cfg.lr
    if previous is None:
        return sizing.peak_lr(width)
    lr = previous[1].configs["train"].get("lr")
    if isinstance(lr, bool) or not (isinstance(lr, (int, float)) and 0 < lr < math.inf):
        raise CharloomError(f"{expand(cfg.out) / checkpoint.RESUME_FILE}: damaged resume file "
                            f"(train lr {lr!r})")
    return float(lr)


def _runtime(config: TrainConfig, model: ModelConfig, previous: tuple[checkpoint.Checkpoint, RunState] | None,
             out: Path) -> Runtime:
    """The run's runtime. A resumed run takes the threads it recorded unless --threads says otherwise (torch's sums
    split their work by the thread count, so the resumed losses equal an unbroken run's only at the same count),
    and goes on following the other work on the CPUs if it chose its own; a fresh one leaves the CPUs other work
    keeps busy."""
    threads, follow = config.threads, None
    if previous is not None and not threads:
        saved = previous[0].info.get("threads")
        threads = saved if type(saved) is int and 0 < saved <= (os.cpu_count() or 1) else 0
        follow = previous[0].info.get("threads_chosen") is True or not threads
    asked = config.is_set("precision") if previous is None else "precision" in config.given  # not the record's
    try:
        return Runtime.start(config.device, config.precision, threads, model.cell, watch=previous is None,
                             follow=follow, asked=asked)
    except CharloomError as e:
        if previous is None:
            raise
        raise CharloomError(f"{e} (the run in {out} trained with --precision {config.precision}; give --precision "
                            f"to continue it in another)") from None


def setup(corpus: CorpusConfig, batch: BatchConfig, model: ModelConfig, config: TrainConfig,
          callback: Callable[[dict[str, Any]], bool | None] | None = None, data: Data | None = None) -> Trainer:
    """A Trainer ready to run: runtime, data, model, optimizer and hooks, and the saved state when resuming
    (`setup(*configure(...).values())` takes the configs `configure` makes, in its order)."""
    _check_callback(callback)  # said before an old run in the folder is cleared
    out = expand(config.out)
    seen = atomic.stamp(out / checkpoint.RESUME_FILE)  # as it is read: a run that saves meanwhile replaces it
    previous = _previous_run(config, out)  # before any work: a run folder in the way is a mistake to say at once
    config = _with_parent(config, previous)
    parent = finetune.load_parent(config.init_from) if config.init_from and previous is None else None
    if parent is not None:  # its model, checked before any work: the runtime probes the parent's cell
        model = finetune.model_config(parent, model)
    rt = _runtime(config, model, previous, out)
    made = not out.exists()
    lock = _check_out(out) if rt.procs.main else None  # only the first process writes the run folder
    try:
        if lock is not None and previous is not None and atomic.stamp(out / checkpoint.RESUME_FILE) != seen:
            raise CharloomError(f"resume (--resume): the run in {out} saved again while this start read it (another "
                                f"run was writing the folder until now); start again to continue from its last save")
        trainer = _assembled(corpus, batch, model, config, rt, previous, parent, callback, data)
    except BaseException:
        if lock is not None:  # a start that fails frees the folder now, not when its traceback is let go
            _let_go(lock, out, made)
        raise
    trainer.lock = lock
    return trainer


def _check_callback(callback: Any) -> None:
    """A callback is a function of one event (a dict), or None: anything else would fail at the first step."""
    if callback is None:
        return
    if not callable(callback):
        raise CharloomError(f"callback: {type(callback).__name__} is not callable; give a function of one event "
                            f"(a dict), or None")
    try:
        inspect.signature(callback, follow_wrapped=False).bind({})  # a wrapper takes what it is called with
    except TypeError:
        raise CharloomError(f"callback: {getattr(callback, '__name__', callback)!r} cannot be called with one "
                            f"event (a dict); give a function of one argument") from None
    except ValueError:  # no signature to read (some built-ins): it is called as given
        pass


def _let_go(lock: IO[str], out: Path, made: bool) -> None:
    """Free the run folder of a start that failed; one this start made, holding nothing but its lock, goes too
    (a refused option would otherwise leave an empty run folder behind)."""
    try:
        if made and [p.name for p in out.iterdir()] == [atomic.LOCK_FILE]:
            (out / atomic.LOCK_FILE).unlink()
            out.rmdir()
    except OSError:  # another writer came meanwhile: the folder is its now
        pass
    finally:
        lock.close()


def _assembled(corpus: CorpusConfig, batch: BatchConfig, model: ModelConfig, config: TrainConfig, rt: Runtime,
               previous: tuple[checkpoint.Checkpoint, RunState] | None, parent: finetune.Parent | None,
               callback: Callable[[dict[str, Any]], bool | None] | None, data: Data | None) -> Trainer:
    """setup's work once the run folder is held: data, model, optimizer, hooks and the saved state."""
    out = expand(config.out)
    cfg = _settled(config, rt.precision, batch.seq_len)
    # the kind of text is known before it is read: a refused option is said before a large corpus is encoded
    kind = _kind(data.corpus) if data is not None else _kind(resolve(corpus), corpus.labelled)
    _check_options(kind, batch, config, previous[1].configs.get("train", {}) if previous is not None else None)
    if previous is None:  # a new model (a fine-tune's is its parent's, which setup checked)
        config.check_unused()
        if parent is None:
            model.check_unused()
    data, batch = _prepared(lambda: _corpus(corpus, cfg, parent, previous), batch, cfg, rt, data, previous)
    _check_reading(data, batch, cfg)
    vocab = data.corpus.vocab
    if parent is not None and rt.procs.main and (line := finetune.outside(parent, data.corpus)):
        hooks.say(line)  # before any step: what of the new text the parent cannot read
    model, data, sized = _width(model.replace(vocab_size=len(vocab)), cfg, rt, data, batch, previous)
    batch = batch.replace(batch_size=data.cfg.rows)
    cfg = cfg.replace(lr=_peak_lr(cfg, model.hidden_size, previous))
    torch.manual_seed(cfg.seed)
    net = CharRNN(model).to(rt.device)
    if parent is not None:
        finetune.start_from(net, parent)
    origins = _origins(parent, sized, previous)
    # the fused update where the device has one: one pass over each tensor where foreach makes several, a few
    # times faster on a CPU, which counts most where a batch is learned in many short pieces
    fused = rt.device.type in ("cpu", "cuda")
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay,
                            foreach=not fused, fused=fused)
    cfgs: dict[str, Config] = {"corpus": corpus, "batch": batch, "model": net.cfg, "train": cfg}
    about = _about_corpus(corpus, data.corpus)
    if previous is not None:
        _check_resumable(out, cfgs, *previous, vocab, about)
    else:  # the old run's files go only once the new one is ready to start
        _clear(out, cfg.overwrite)

    def info() -> dict[str, Any]:
        return {**about, "split": {k: getattr(batch, k) for k in SPLIT_FIELDS},
                "device": rt.device.type, "precision": rt.precision, "threads": torch.get_num_threads(),
                "threads_chosen": rt.watch is not None, **origins,
                "parameters": net.num_parameters(), "weight_average_decay": cfg.ema}

    contiguous = batch.order == "contiguous" and not data.corpus.is_records
    trainer = Trainer(net, data, opt, rt, cfg, _hooks(cfgs, info, rt.procs.main, callback), contiguous)
    if previous is not None:
        _restore(trainer, previous)
    return trainer


def _clear(out: Path, overwrite: bool) -> None:
    """A fresh run's start in its folder: with no resume file (--overwrite, or a run killed before its first save),
    the metrics lines there belong to no run that can continue, and left in place this run's would follow them;
    with --overwrite nothing of the old run stays to be resumed or taken for this one's (its exports neither)."""
    (out / "metrics.jsonl").unlink(missing_ok=True)
    if overwrite:
        for name in (checkpoint.MODEL_FILE, checkpoint.RESUME_FILE, EXPORTED, EXPORTED_INT8):
            (out / name).unlink(missing_ok=True)


def _restore(trainer: Trainer, previous: tuple[checkpoint.Checkpoint, RunState]) -> None:
    """A resumed run's saved state into its trainer; what its metrics file holds past the last save is dropped."""
    try:
        trainer.restore(*previous)
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError, OverflowError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CharloomError(f"{trainer.out / checkpoint.RESUME_FILE}: damaged resume file ({first})") from None
    if trainer.rt.procs.main:
        _keep_metrics_until(trainer.out / "metrics.jsonl", trainer.pos.step)


def _origins(parent: finetune.Parent | None, sized: sizing.Fit | None,
             previous: tuple[checkpoint.Checkpoint, RunState] | None) -> dict[str, Any]:
    """Where a run's model came from, as its files record it: the model it was fine-tuned from ("parent") and how
    its width was chosen ("sizing"), as this start made them or as the resumed run recorded them (it keeps both)."""
    before = previous[0].info if previous else {}
    lineage = parent.lineage if parent else before.get("parent")
    chosen = sized.to_dict() if sized else before.get("sizing")
    return {**({"parent": lineage} if lineage else {}), **({"sizing": chosen} if chosen else {})}


def train(corpus: CorpusConfig | None = None, batch: BatchConfig | None = None, model: ModelConfig | None = None,
          config: TrainConfig | None = None, callback: Callable[[dict[str, Any]], bool | None] | None = None,
          **options: Any) -> TrainResult:
    """Train a model; see the module docstring. `callback(event)` sees each step and evaluation; returning
    True stops the run as SIGINT would (finish the step, save, return): at once from a step, after the next
    step from an evaluation.

    Keyword options go to whichever config has the field: `train(source="names", hidden_size=64, max_steps=100)`.
    `charloom train` calls this with the flags it was given.
    """
    cfgs = configure(corpus, batch, model, config, **options)
    return setup(cfgs["corpus"], cfgs["batch"], cfgs["model"], cfgs["train"], callback).run()
