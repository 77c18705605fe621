"""The training loop: teacher forcing, evaluation in bits per character, samples as it learns, exact resume.

    result = train(CorpusConfig(...), BatchConfig(...), ModelConfig(...), TrainConfig(...))

Every step feeds a batch of inputs and scores the model's prediction of each next character
(cross-entropy; padding targets of record batches are ignored), and updates an exponential moving
average of the weights: that average is the model evaluated, sampled and saved (`ema`; in a 10-minute
Shakespeare run it scored 0.0065 bpc below the last trained weights). Every `eval_every` steps the held-out
split is scored in bits per character, samples are shown, the metrics log gets a line, and two files
are written atomically in the run folder: model.safetensors (the best so far by validation loss) and
last.safetensors (everything needed to resume exactly). SIGINT and SIGTERM finish the current step,
save and return; a non-finite loss stops before anything of that step is saved.
"""

from __future__ import annotations

import gc
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel

from . import checkpoint
from .batching import Batch, Data, prepare
from .config import BatchConfig, CorpusConfig, ModelConfig, TrainConfig
from .corpus import load as load_corpus
from .errors import CharloomError
from .model import CharRNN, State, detach
from .sampling import sample_texts
from .vocab import Vocab

LN2 = math.log(2)
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}  # --precision -> dtype


# ---- evaluation --------------------------------------------------------------------------------------
@dataclass
class Evaluation:
    loss: float  # mean nats per predicted character
    characters: int  # predicted characters scored

    @property
    def bpc(self) -> float:
        return self.loss / LN2

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)


def batch_loss(model: CharRNN, batch: Batch, state: State | None, device: torch.device,
               autocast: torch.autocast | None = None, reduction: str = "mean") -> tuple[torch.Tensor, State]:
    """Cross-entropy of the next-character predictions of one batch (padding ignored) and the final state."""
    x, y = batch.x.to(device, non_blocking=True), batch.y.to(device, non_blocking=True)
    if autocast is not None:
        with autocast:
            logits, new_state = model(x, state)  # (B, T, V)
    else:
        logits, new_state = model(x, state)
    loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=batch.pad_id, reduction=reduction)
    return loss, new_state


@torch.inference_mode()
def evaluate(model: CharRNN, batches: Iterable[Batch], device: torch.device | str = "cpu",
             max_characters: int = 0, precision: str = "fp32") -> Evaluation:
    """Mean loss over batches; contiguous batches (`continues`) carry the hidden state through.

    precision: "fp32", or "bf16"/"fp16" for the products under autocast (the loss is summed in fp32); training
    evaluates in its own precision, where bf16 takes about half the time and moves bpc by about 1e-4."""
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    autocast = torch.autocast(device.type, dtype=PRECISIONS[precision]) if precision != "fp32" else None
    was_training = model.training
    model.eval()
    total, count, state = 0.0, 0, None
    try:
        for b in batches:
            nll, state = batch_loss(model, b, state if b.continues else None, device, autocast, reduction="sum")
            total += float(nll)
            count += b.tokens
            if max_characters and count >= max_characters:
                break
    finally:
        model.train(was_training)
    if count == 0:
        raise CharloomError("nothing to evaluate: the text has fewer than two characters")
    return Evaluation(total / count, count)


# ---- devices, schedule, signals ----------------------------------------------------------------------
def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CharloomError("--device cuda: no CUDA GPU is available here (use --device auto or cpu)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise CharloomError("--device mps: Apple's MPS is not available here (use --device auto or cpu)")
    return torch.device(name)


def native_bf16(device: torch.device) -> bool:
    """The device computes bfloat16 products in hardware: a CUDA GPU that supports it, or a CPU with
    AVX512-BF16 or AMX (where oneDNN's bf16 LSTM trains 1.4-1.9x as fast as fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        cpu = torch.cpu
        return any(getattr(cpu, f, lambda: False)() for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return False


def resolve_precision(name: str, device: torch.device) -> str:
    """--precision for this device: auto picks bf16 where it is native, else fp32; fp16 needs CUDA."""
    if name == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if name == "fp16" and device.type != "cuda":
        raise CharloomError(f"--precision fp16: fp16 autocast is for a CUDA GPU; on {device.type} use bf16 or fp32")
    if name == "bf16" and device.type == "mps":
        raise CharloomError("--precision bf16: not supported on mps here; use fp32")
    return name


def learning_rate(cfg: TrainConfig, step: int, progress: float) -> float:
    """Linear warm-up over `warmup` steps, then constant or cosine decay to `min_lr_ratio * lr` by the budget's end."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.schedule == "constant":
        return cfg.lr
    low = cfg.lr * cfg.min_lr_ratio
    return low + (cfg.lr - low) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


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


class Processes:
    """The processes of a torchrun launch (RANK, WORLD_SIZE, LOCAL_RANK), or just this one.

    With several, training is DistributedDataParallel (gloo on CPU, NCCL on GPU): each process reads its
    own share of the batches, gradients are averaged, and only rank 0 evaluates, prints and saves.
    """

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self._started = False

    @property
    def many(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def start(self, device: torch.device) -> torch.device:
        """Join the process group; a GPU process takes the GPU of its local rank."""
        if not self.many:
            return device
        if device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            self._started = True
        return device

    def total(self, values: list[float], device: torch.device) -> list[float]:
        """Each value summed over all processes (the values themselves with one process)."""
        if not self.many:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], device=device, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()

    def gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        """`t` from every process, by rank (every process must call this)."""
        if not self.many:
            return [t]
        out = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(out, t.contiguous())
        return out

    def close(self, finished: bool) -> None:
        """Leave the process group. finished: every process got here the same way, so they wait for each
        other first (a process that hangs up while a peer still holds the connection can abort it)."""
        if self._started:
            if finished:
                dist.barrier()
            gc.collect()  # the DDP wrapper's reference cycles hold the group: free it while the peers are alive
            dist.destroy_process_group()
            self._started = False


def _ema(decay: float) -> Callable[[list[torch.Tensor], list[torch.Tensor], torch.Tensor], None]:
    """AveragedModel's update: after n updates, average <- lerp(average, weights, 1 - min(decay, (1+n)/(10+n))),
    so the first steps average over a few steps rather than dragging the initial weights along."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n: torch.Tensor) -> None:
        # the weight stays a tensor on n's device: reading n on the host would wait for the GPU every step
        weight = 1.0 - torch.clamp((1.0 + n) / (10.0 + n), max=decay)
        torch._foreach_lerp_(averaged, current, weight)

    return update


# ---- resume state ------------------------------------------------------------------------------------
def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    sd = opt.state_dict()
    tensors = {f"optim.{i}.{k}": v for i, st in sd["state"].items() for k, v in st.items()}
    return tensors, sd["param_groups"]


def _restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[dict]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, i, name = key.split(".", 2)
            state.setdefault(int(i), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": groups})


@dataclass
class Progress:
    """Where a run is: saved in last.safetensors so a resumed run continues exactly."""

    step: int = 0
    epoch: int = 0
    index: int = 0  # next batch within the epoch
    elapsed: float = 0.0  # seconds of training so far
    characters: int = 0  # predicted characters seen so far
    best_val: float = math.inf  # best validation loss (nats)


# ---- the loop ----------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    out: Path
    model: CharRNN
    vocab: Vocab
    records: bool
    progress: Progress
    val: Evaluation | None
    stopped_by: str  # "budget", "SIGINT", "SIGTERM", "callback"
    history: list[dict[str, Any]] = field(default_factory=list)


class Trainer:
    """Owns the model, optimizer, data and position of one run; `run()` trains until the budget or a stop."""

    def __init__(self, corpus_cfg: CorpusConfig, batch_cfg: BatchConfig, model_cfg: ModelConfig, cfg: TrainConfig,
                 callback: Callable[[dict[str, Any]], bool | None] | None = None, data: Data | None = None):
        self.cfg, self.corpus_cfg, self.batch_cfg = cfg, corpus_cfg, batch_cfg
        self.callback = callback
        self.out = Path(cfg.out).expanduser()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.procs = Processes()
        self.device = self.procs.start(pick_device(cfg.device))
        self.precision = resolve_precision(cfg.precision, self.device)
        self.data = data or prepare(load_corpus(corpus_cfg), batch_cfg, self.procs.rank, self.procs.world)
        self.vocab = self.data.corpus.vocab
        self.records = self.data.corpus.is_records
        torch.manual_seed(cfg.seed)
        self.model = CharRNN(model_cfg.replace(vocab_size=len(self.vocab))).to(self.device)
        self.net: torch.nn.Module = self.model  # what the training step calls
        if self.procs.many:
            torch.manual_seed(cfg.seed + 1_000_003 * self.procs.rank)  # its own dropout masks per process
            self.net = DistributedDataParallel(self.model)  # copies rank 0's weights to every process
        # what is evaluated, sampled and saved: the average of the trained weights (or the weights themselves)
        self.average = AveragedModel(self.model, multi_avg_fn=_ema(cfg.ema)) if cfg.ema else None
        self.final_model: CharRNN = self.average.module if self.average else self.model
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, betas=(0.9, 0.99),
                                     weight_decay=cfg.weight_decay, foreach=True)
        self.autocast = (torch.autocast(self.device.type, dtype=PRECISIONS[self.precision])
                         if self.precision != "fp32" else None)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")
        self.pos = Progress()
        self.carry: State | None = None
        self.history: list[dict[str, Any]] = []
        if cfg.resume:
            self._resume()
        elif (self.out / checkpoint.RESUME_FILE).exists():
            if not cfg.overwrite:
                raise CharloomError(f"--out: {self.out} already holds a run; continue it with --resume, "
                                    f"replace it with --overwrite, or choose another --out")
            (self.out / "metrics.jsonl").unlink(missing_ok=True)
            (self.out / checkpoint.MODEL_FILE).unlink(missing_ok=True)

    # -- persistence
    def _extra_meta(self, groups: list[dict]) -> dict[str, Any]:
        pos = vars(self.pos).copy()
        pos["best_val"] = None if math.isinf(pos["best_val"]) else pos["best_val"]
        pos["world"] = self.procs.world
        pos["averaged"] = int(self.average.n_averaged) if self.average is not None else 0
        return {"progress": pos, "optimizer": groups, "corpus": self.corpus_cfg.to_dict(),
                "batch": self.batch_cfg.to_dict(), "train": self.cfg.to_dict()}

    def info(self, val: Evaluation | None, full: Evaluation | None = None) -> dict[str, Any]:
        return {"step": self.pos.step, "characters_seen": self.pos.characters, "train_seconds": round(self.pos.elapsed, 1),
                "val_loss": val.loss if val else None, "val_bpc": val.bpc if val else None,
                "best_val_bpc": None if math.isinf(self.pos.best_val) else self.pos.best_val / LN2,
                **({"full_val_loss": full.loss, "full_val_bpc": full.bpc} if full else {}),
                "corpus": self.corpus_cfg.source, "corpus_config": self.corpus_cfg.to_dict(),
                "corpus_characters": int(len(self.data.corpus.ids)),
                "parameters": self.model.num_parameters(), "weight_average_decay": self.cfg.ema}

    def save(self, val: Evaluation | None, full: Evaluation | None = None) -> None:
        improved = val is not None and val.loss < self.pos.best_val
        if improved:
            self.pos.best_val = val.loss
        tensors, groups = _optimizer_tensors(self.opt)
        # what differs between processes is saved for each: RNG states and carried hidden state
        mine = {"rng.torch": torch.get_rng_state().to(self.device)}
        if self.device.type == "cuda":
            mine["rng.cuda"] = torch.cuda.get_rng_state(self.device).to(self.device)
        for i, st in enumerate(self.carry or ()):
            mine[f"carry.{i}"] = st
        for name, t in mine.items():
            for r, tr in enumerate(self.procs.gather(t)):
                tensors[f"{name}.r{r}"] = tr
        if not self.procs.main:
            return
        if self.average is not None:  # the file's model is the average; the trained weights ride along
            tensors |= {f"weights.{k}": v for k, v in self.model.state_dict().items()}
        info = self.info(val, full)
        checkpoint.save(self.out / checkpoint.RESUME_FILE, self.final_model, self.vocab, records=self.records,
                        info=info, extra_tensors=tensors, extra_meta=self._extra_meta(groups))
        if improved or val is None or not (self.out / checkpoint.MODEL_FILE).exists():
            checkpoint.save(self.out / checkpoint.MODEL_FILE, self.final_model, self.vocab, records=self.records,
                            info=info)

    def _resume(self) -> None:
        path = self.out / checkpoint.RESUME_FILE
        if not path.exists():
            raise CharloomError(f"--resume: {path} not found; nothing to resume in {self.out}")
        ck = checkpoint.load(path)
        saved = ck.meta
        for name, now, then in (("model", self.model.cfg.to_dict(), ck.config.to_dict()),
                                ("corpus", self.corpus_cfg.replace(cache_dir=saved["corpus"].get("cache_dir"))
                                 .to_dict(), saved["corpus"]),
                                ("batch", self.batch_cfg.to_dict(), saved["batch"])):
            diff = sorted(k for k in now if now[k] != then.get(k))
            if diff:
                k = diff[0]
                raise CharloomError(f"--resume: option {k} is {now[k]!r} but the run in {self.out} used {then.get(k)!r}")
        if ck.vocab != self.vocab:
            raise CharloomError(f"--resume: the corpus now gives a different vocabulary than the run in {self.out}")
        saved_model = ck.model.state_dict()  # the average, when the run kept one
        trained = {k.removeprefix("weights."): v for k, v in ck.tensors.items() if k.startswith("weights.")}
        self.model.load_state_dict(trained or saved_model)
        if self.average is not None:  # a run that kept no average starts one from its weights
            self.average.module.load_state_dict(saved_model)
            self.average.n_averaged.fill_(saved["progress"].get("averaged", 0) if trained else 0)
        _restore_optimizer(self.opt, ck.tensors, saved["optimizer"])
        saved_world = saved["progress"].get("world", 1)
        if saved_world != self.procs.world:
            raise CharloomError(f"--resume: the run in {self.out} trained with {saved_world} process(es), "
                                f"this launch has {self.procs.world}; resume it with the same number")
        r = f"r{self.procs.rank}"
        torch.set_rng_state(ck.tensors[f"rng.torch.{r}"].cpu())
        if f"rng.cuda.{r}" in ck.tensors and self.device.type == "cuda":
            torch.cuda.set_rng_state(ck.tensors[f"rng.cuda.{r}"].cpu(), self.device)
        carry = [ck.tensors[f"carry.{i}.{r}"] for i in range(2) if f"carry.{i}.{r}" in ck.tensors]
        self.carry = tuple(t.to(self.device) for t in carry) or None
        p = saved["progress"]
        p = {k: v for k, v in p.items() if k not in ("world", "averaged")}
        self.pos = Progress(**{**p, "best_val": math.inf if p["best_val"] is None else p["best_val"]})
        metrics = self.out / "metrics.jsonl"
        if metrics.exists():  # drop lines a killed run wrote after its last save
            kept = [ln for ln in metrics.read_text().splitlines() if ln and json.loads(ln)["step"] <= self.pos.step]
            metrics.write_text("".join(ln + "\n" for ln in kept))

    # -- budget
    def fraction_done(self) -> float:
        c, pos = self.cfg, self.pos
        parts = []
        if c.max_steps:
            parts.append(pos.step / c.max_steps)
        if c.seconds:
            parts.append(pos.elapsed / c.seconds)
        if c.epochs:
            per = max(1, self.data.train.batches_in_epoch(pos.epoch))
            parts.append((pos.epoch + pos.index / per) / c.epochs)
        return max(parts) if parts else 0.0

    # -- output
    def _say(self, text: str) -> None:
        if self.cfg.progress and self.procs.main:
            from tqdm import tqdm

            tqdm.write(text, file=sys.stdout)

    def _emit(self, event: dict[str, Any]) -> bool:
        return bool(self.callback(event)) if self.callback else False

    def _evaluate(self, final: bool) -> tuple[Evaluation | None, Evaluation | None]:
        """(the periodic measure, the whole split at the end). Every row scores the same `eval_chars`
        characters, so the curve and the choice of the best model compare like with like."""
        if self.data.val is None:
            return None, None
        val = evaluate(self.final_model, self.data.val_batches(), self.device, self.cfg.eval_chars, self.precision)
        if not final:
            return val, None
        if not self.cfg.eval_chars or val.characters < self.cfg.eval_chars:
            return val, val  # the subset was already the whole split
        return val, evaluate(self.final_model, self.data.val_batches(), self.device, precision=self.precision)

    def _checkpoint(self, train_loss: float, rate: float, final: bool) -> Evaluation | None:
        if not self.procs.main:
            self.save(None)  # takes part in gathering this process's state, writes nothing
            return None
        val, full = self._evaluate(final)
        lr = self.opt.param_groups[0]["lr"]
        row = {"step": self.pos.step, "epoch": round(self.pos.epoch + self.pos.index /
                                                      max(1, self.data.train.batches_in_epoch(self.pos.epoch)), 4),
               "train_loss": train_loss, "train_bpc": train_loss / LN2,
               "val_loss": val.loss if val else None, "val_bpc": val.bpc if val else None,
               "lr": lr, "characters": self.pos.characters, "chars_per_s": round(rate), "seconds": round(self.pos.elapsed, 2)}
        if full:
            row |= {"full_val_loss": full.loss, "full_val_bpc": full.bpc, "full_val_characters": full.characters}
        self.history.append(row)
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        vtxt = f"val {val.bpc:.3f} bpc" if val else "no validation split"
        if full is not None and full is not val:  # a subset: say what the whole split scores
            vtxt += f" (whole validation split, {full.characters:,} characters: {full.bpc:.3f})"
        self._say(f"step {self.pos.step:>6}  train {train_loss / LN2:.3f} bpc  {vtxt}  lr {lr:.2e}  "
                  f"{rate:,.0f} chars/s  {self.pos.elapsed:.0f}s")
        if self.cfg.sample_length and self.cfg.sample_temperatures and self.cfg.progress:
            # records are short: show several at once; a continuous text shows one long passage
            n = 6 if self.records else 1
            for t, texts in sample_texts(self.final_model, self.vocab, self.cfg.sample_start, self.cfg.sample_temperatures,
                                         self.cfg.sample_length, n=n, seed=self.cfg.seed + self.pos.step,
                                         records=self.records):
                shown = " | ".join(self.cfg.sample_start + x for x in texts)
                self._say(f"--- sample at temperature {t:g} ---\n{shown}")
        self.save(val, full)
        self._emit({"event": "eval", **row})
        return full or val

    def run(self) -> TrainResult:
        from tqdm import tqdm

        cfg, pos, model = self.cfg, self.pos, self.model
        model.train()
        contiguous = self.batch_cfg.order == "contiguous" and not self.records
        batches = self.data.train.iterate(pos.epoch, pos.index)
        n_params = model.num_parameters()
        self._say(f"{model.cfg.cell} {model.cfg.num_layers}x{model.cfg.hidden_size}, {n_params:,} parameters, "
                  f"on {self.device.type} ({self.precision}); {self.data.train_size:,} training "
                  f"{'records' if self.records else 'characters'}; run folder {self.out}")
        bar = tqdm(total=1000, disable=None if cfg.progress and self.procs.main else True, leave=False,
                   file=sys.stderr, bar_format="{percentage:3.0f}%|{bar:20}| {desc}",
                   initial=int(1000 * self.fraction_done()))
        stopped_by, val = "budget", None
        loss_sum, loss_n, seen_since, t_since, steps_run = 0.0, 0, 0, 0.0, 0
        finished = False
        try:
            with _StopSignals() as signals:
                t_last = time.perf_counter()
                running = self.fraction_done() < 1.0
                while running:
                    t0 = time.perf_counter()
                    batch = next(batches)
                    lr = learning_rate(cfg, pos.step, self.fraction_done())
                    for g in self.opt.param_groups:
                        g["lr"] = lr
                    state = self.carry if contiguous and cfg.carry_state and batch.continues else None
                    loss, new_state = batch_loss(self.net, batch, state, self.device, self.autocast)
                    value = float(loss.detach())
                    self.opt.zero_grad(set_to_none=True)
                    self.scaler.scale(loss).backward()  # every process joins the gradient average
                    (bad,) = self.procs.total([not math.isfinite(value)], self.device)
                    if bad:
                        where = f"the loss is {value}" if not math.isfinite(value) else "another process's loss is not finite"
                        raise CharloomError(
                            f"step {pos.step + 1}: {where}; training stopped and this step was not saved "
                            f"(the files in {self.out} are from the last good evaluation); try a lower --lr")
                    if cfg.grad_clip:
                        self.scaler.unscale_(self.opt)
                        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    self.scaler.step(self.opt)
                    self.scaler.update()
                    if self.average is not None:
                        self.average.update_parameters(self.model)
                    if contiguous:
                        self.carry = detach(new_state)
                    now = time.perf_counter()
                    steps_run += 1
                    pos.step += 1
                    pos.epoch, pos.index = batch.epoch, batch.index + 1
                    pos.elapsed += now - t_last  # wall time: evaluations count against the budget too
                    t_last = now
                    t_since += now - t0  # training steps alone, for the throughput figure
                    wanted = self._emit({"event": "step", "step": pos.step, "loss": value, "lr": lr})
                    local = signals.received or ("callback" if wanted else None)
                    # every process stops at the same step: a stop anywhere, or the budget, is a stop for all
                    stops, budgets, tokens = self.procs.total(
                        [local is not None, self.fraction_done() >= 1.0, batch.tokens], self.device)
                    pos.characters += int(tokens)
                    loss_sum, loss_n, seen_since = loss_sum + value, loss_n + 1, seen_since + int(tokens)
                    rate = seen_since / t_since if t_since else 0.0
                    bar.n = int(1000 * min(1.0, self.fraction_done()))
                    bar.set_description_str(f"step {pos.step} loss {value:.3f} ({value / LN2:.2f} bpc) "
                                            f"{rate:,.0f} chars/s ETA {self._eta():.0f}s", refresh=False)
                    bar.update(0)
                    if stops:
                        stopped_by = local or "a signal to another process"
                        break
                    if budgets:
                        break
                    if cfg.eval_every and pos.step % cfg.eval_every == 0:
                        self._checkpoint(loss_sum / loss_n, rate, final=False)
                        loss_sum, loss_n, seen_since, t_since = 0.0, 0, 0, 0.0
                bar.close()
                if loss_n:
                    val = self._checkpoint(loss_sum / loss_n, seen_since / t_since if t_since else 0.0,
                                           final=stopped_by == "budget")
                elif not steps_run:
                    self._say(f"nothing to do: the run in {self.out} has already used its budget")
            finished = True
        finally:
            self.net = self.model  # drop the wrapper, and with it the reducer's hold on the process group
            self.procs.close(finished)
        if stopped_by != "budget":
            self._say(f"stopped by {stopped_by} at step {pos.step}; saved {self.out / checkpoint.RESUME_FILE} "
                      f"(continue with --resume)")
        best = pos.best_val / LN2 if math.isfinite(pos.best_val) else None
        self._say(f"model: {self.out / checkpoint.MODEL_FILE}" + (f" (best validation {best:.3f} bpc)" if best else ""))
        return TrainResult(self.out, self.final_model, self.vocab, self.records, pos, val, stopped_by, self.history)

    def _eta(self) -> float:
        done = self.fraction_done()
        return self.pos.elapsed * (1 - done) / done if done > 0 else 0.0


def train(corpus: CorpusConfig | None = None, batch: BatchConfig | None = None, model: ModelConfig | None = None,
          config: TrainConfig | None = None, callback: Callable[[dict[str, Any]], bool | None] | None = None,
          **overrides: Any) -> TrainResult:
    """Train a model; see the module docstring. `callback(event)` sees each step and evaluation; returning
    True stops the run as SIGINT would (finish the step, save, return).

    Keyword overrides go to whichever config has the field: `train(source="names", hidden_size=64, max_steps=100)`.
    """
    cfgs = {"corpus": corpus or CorpusConfig(), "batch": batch or BatchConfig(), "model": model or ModelConfig(),
            "train": config or TrainConfig()}
    for key, value in overrides.items():
        owners = [n for n, c in cfgs.items() if key in c.to_dict()]
        if not owners:
            raise CharloomError(f"train(): unknown option {key!r}")
        for n in owners:
            cfgs[n] = cfgs[n].replace(**{key: value})
    return Trainer(cfgs["corpus"], cfgs["batch"], cfgs["model"], cfgs["train"], callback).run()
