"""Sizing: the width (and batch) a run can best afford on this machine in its budget.

A wider network learns more from each character but trains on fewer characters in the same time, and
how many fewer depends on the machine: the best model for 10 minutes on an AVX2 core is narrower than
the best on an AVX512-BF16 one, and the best for 2 minutes narrower still. So when no width is given
(`hidden_size` 0, the default), the run chooses it:

1. The budget in characters. A time budget is turned into characters per candidate width by measuring
   this machine: a training step of the real model, in the run's precision and batch shape, at a few
   widths (a few seconds), interpolated between them by parameter count.
   A step or epoch budget is a number of characters already.
2. The predicted held-out loss of each candidate width after that many characters, from a law of the
   form of Hoffmann et al. (2022), fitted on training runs of charloom itself (`bench/sizing_fit.py`):

       bpc(N, D) = E + A / N**alpha + B / D**beta      (N parameters, D characters trained)

   with repeated epochs worth less than new text, and parameters beyond what the unique text can use
   worth less than the first, as Muennighoff et al. (2023) measured ("Scaling Data-Constrained
   Language Models": decay constants 15.4 epochs and 5.3 times the useful size). A small corpus thus
   gets a small model however long the budget, and never one with more parameters than 1 + 5.3 times the
   useful size: the law has no term for overfitting, so past that it would go on widening.
3. The width with the best prediction. Measured against runs at fixed widths, errors in the rate have
   leaned towards narrow widths, never wide ones, so no narrower width is taken for being "nearly as good".
4. With a time limit and no batch size given, steps 1-3 for each of the batch sizes the run may take, and the
   larger batch only for a clear gain (`fit`): where the CPU multiplies bf16 in tiles, 32 windows cost little
   more per step than 16, so a run reads more characters in its time. At 10 minutes a batch of 32 x 128
   characters learned what the law says of them; with few steps (2 minutes) it learned less, and so did
   64 x 128 at 10 minutes.

The peak learning rate, when none is given (`lr` 0), follows the width: Adam's best rate for the hidden
matrices falls as 1 / width (Yang et al. 2022, "Tensor Programs V"), so the rate the sweep chose at width
640 is scaled by 640 / width. One rate serves every layer (embedding and output too, a simplification of
that paper's per-layer rates), and it is held at or below the highest rate the sweep tried.

The choice, and what it was based on, is returned as a `Fit` that the run stores in its model file.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from .config import ModelConfig, TrainConfig
from .model import CharRNN
from .runtime import Runtime, synchronize

WIDTHS = tuple(range(64, 2049, 32))  # the candidates: multiples of 32 keep the kernels on their fast paths
PROBE_WIDTHS = (256, 512, 768, 1024)  # widths timed on this machine; others are interpolated by parameter count
PROBE_SEQ = 128  # the longest window timed: longer ones cost the same per character, and take longer to time
PROBE_STEPS = (3, 12)  # timed steps per width, fewest and most: the median of those that fit in PROBE_SECONDS
PROBE_SECONDS = 0.4  # per width: a step's time varies by 10-30% on a shared machine, so one step is not enough
EPOCH_DECAY = 15.4  # Muennighoff et al.: the value of the k-th repeated epoch decays as exp(-k / 15.4)
EXCESS_DECAY = 5.3  # ... and of parameters beyond the useful size for the unique text, as exp(-x / 5.3)
LR_WIDTH, LR_AT_WIDTH = 640, 5e-3  # the sweep's best peak rate at this width; other widths scale it by 1 / width
LR_MAX = 1e-2  # the highest peak rate the sweep tried: narrow networks are not given more
BATCH_MARGIN = 0.01  # predicted bpc a larger batch must gain over the smallest to be taken (see `fit`)


@dataclass(frozen=True)
class Law:
    """Held-out bpc after training N parameters on D characters: E + A / N**alpha + B / D**beta."""

    E: float
    A: float
    alpha: float
    B: float
    beta: float
    early_worth: float = 1.0  # D's worth in a run whose batches are cut in pieces early (`early_pieces` > 1)

    def worth(self, characters: float, early: bool) -> float:
        """What `characters` trained are worth to the law: more in a run with the early pieces."""
        return characters * (self.early_worth if early else 1.0)

    def useful_parameters(self, characters: float) -> float:
        """The parameter count the law spends a compute budget of 6 x N x D best on, for D = `characters`:
        N = G * (N * D)**(beta / (alpha + beta)), G = (alpha A / beta B)**(1 / (alpha + beta)), solved for N."""
        log_n = (math.log(self.alpha * self.A / (self.beta * self.B)) + self.beta * math.log(characters)) / self.alpha
        return math.exp(min(log_n, 700.0))  # in logs: the powers overflow for extreme laws a fit may try

    def bpc(self, parameters: float, characters: float, unique: float = math.inf, early: bool = False) -> float:
        """Predicted held-out bpc; `unique`: characters of distinct training text (repeats count for less);
        `early`: the run learns its batches in pieces early in the budget."""
        useful = self.useful_parameters(unique) if math.isfinite(unique) else math.inf
        n, d = discounted(parameters, useful, EXCESS_DECAY), discounted(characters, unique, EPOCH_DECAY)
        return self.E + self.A / n ** self.alpha + self.B / self.worth(d, early) ** self.beta


def discounted(amount: float, useful: float, decay: float) -> float:
    """What `amount` is worth when only `useful` of it is new: each further `useful` counts for less, by
    exp(-k / decay) for the k-th (Muennighoff et al.'s effective data and parameters)."""
    if amount <= useful:
        return amount
    repeats = min(float(amount) / float(useful), 1e9) - 1.0  # past 1e9 the exponential is 0 anyway
    return useful * (1.0 + decay * (1.0 - math.exp(-repeats / decay)))


# fitted by bench/sizing_fit.py on the runs in bench/sweep.jsonl and bench/quality.jsonl (LSTM, Shakespeare,
# both kernel paths), each at the peak learning rate its width is given (`peak_lr`): E to beta on runs of
# whole batches, early_worth on runs with the early pieces. Those runs had a linear head; the head's hidden
# layer is counted as parameters like any other (at 512 wide, 3,000 steps, it scored 0.039 lower where the law
# gives its parameters 0.024), so its widths come out narrower than a linear head's
LAW = Law(E=1.5173, A=194.1, alpha=0.50, B=617.7, beta=0.50, early_worth=1.40)


@dataclass(frozen=True)
class Fit:
    """The width chosen for a run, and what it was chosen from (stored in the model file's info)."""

    hidden_size: int
    parameters: int
    budget: str  # what limited the run: "600 s", "2,000 steps", "3 epochs"
    characters: float  # characters the budget is predicted to train at this width
    chars_per_s: float  # measured rate at this width (0 for a budget in steps or epochs)
    predicted_bpc: float
    batch_size: int = 0  # rows per batch chosen with the width (0: none chosen: given, no other offered, or older)

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        rate = f" at {self.chars_per_s:,.0f} chars/s measured here" if self.chars_per_s else ""
        batch, flags = (f" and batch {self.batch_size}", "--hidden or --batch-size") if self.batch_size \
            else ("", "--hidden")
        return (f"width {self.hidden_size}{batch} chosen for {self.budget}: {self.parameters:,} parameters, about "
                f"{self.characters / 1e6:.3g} M characters{rate}; give {flags} to choose another")


@functools.lru_cache(maxsize=4096)
def parameters(model: ModelConfig, width: int) -> int:
    """Parameters of `model`'s network at `width`, counted from the modules themselves (no weights are kept). The
    hashed context tables are left out: a table read is memory, not the network size the law was fitted on. The
    head's hidden layer counts (see LAW)."""
    with torch.device("meta"):
        return CharRNN(model.replace(hidden_size=width)).num_parameters(tables=False)


def _stepper(model: ModelConfig, shape: tuple[int, int], rt: Runtime, width: int,
             average: bool = True) -> Callable[[], float]:
    """A function that takes one training step at `width` on a batch of `shape` and returns its seconds:
    forward, backward, gradient clipping, the optimizer step and (`average`: once per batch, not per piece)
    the weight average, as the run does them."""
    B, T = shape
    net = CharRNN(model.replace(hidden_size=width)).to(rt.device)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, foreach=True)
    weights = list(net.parameters())
    averaged = [p.detach().clone() for p in weights]
    ids = torch.randint(0, model.vocab_size, (B, T + 1), device=rt.device)

    def one() -> float:
        t0 = time.perf_counter()
        with rt.autocast():
            logits, _ = net(ids[:, :-1])  # (B, T, V)
        torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten()).backward()
        torch.nn.utils.clip_grad_norm_(weights, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if average:
            with torch.no_grad():
                torch._foreach_lerp_(averaged, weights, 0.01)
        synchronize(rt.device)
        return time.perf_counter() - t0

    return one


def _step_seconds(model: ModelConfig, shape: tuple[int, int], rt: Runtime, widths: tuple[int, ...],
                  average: bool = True) -> list[float]:
    """Median seconds of a training step at each of `widths`. The widths take turns, a step each, so a burst
    of other work on the machine slows them all alike rather than bending the comparison between them."""
    steppers = [_stepper(model, shape, rt, w, average) for w in widths]
    for one in steppers:
        one()  # a warm-up: kernels are made on first use
    times: list[list[float]] = [[] for _ in widths]
    start = time.perf_counter()
    while len(times[0]) < PROBE_STEPS[1] and (
            len(times[0]) < PROBE_STEPS[0] or time.perf_counter() - start < PROBE_SECONDS * len(widths)):
        for one, t in zip(steppers, times):
            t.append(one())
    return [float(np.median(t)) for t in times]


def _loglog(x: np.ndarray, y: np.ndarray) -> Callable[[float], float]:
    """y(x) through the measured points, linear in log-log between them; beyond them, the nearest segment's
    slope held within [0, 1] (work never shrinks with size, and grows at most in proportion to it)."""
    lx, ly = np.log(x), np.log(np.maximum(y, 1e-12))
    lo = float(np.clip((ly[1] - ly[0]) / (lx[1] - lx[0]), 0.0, 1.0))
    hi = float(np.clip((ly[-1] - ly[-2]) / (lx[-1] - lx[-2]), 0.0, 1.0))

    def at(v: float) -> float:
        u = math.log(v)
        if u < lx[0]:
            return math.exp(ly[0] + lo * (u - lx[0]))
        if u > lx[-1]:
            return math.exp(ly[-1] + hi * (u - lx[-1]))
        return math.exp(float(np.interp(u, lx, ly)))

    return at


def _early_share(cfg: TrainConfig, pieces: int) -> float:
    """The share of the budget a run learns in pieces: none unless it cuts its batches at all."""
    return cfg.early_share if pieces > 1 else 0.0


def _piece_chars(chars: float, k: int) -> int:
    """Characters per row a step reads where a window of `chars` is cut in `k` pieces (fewer where the window is
    shorter, as Batch.pieces cuts it), as timed: at most PROBE_SEQ, and a whole window at least 8."""
    n = max(1, round(chars))
    return max(8 if k == 1 else 1, min(round(n / min(k, n)), PROBE_SEQ))


def measure(model: ModelConfig, shape: tuple[int, float], cfg: TrainConfig, rt: Runtime,
            pieces: int = 1, late: int = 1) -> Callable[[int], float]:
    """Training characters per second as a function of width, from timing real steps at PROBE_WIDTHS here;
    `shape`: (rows, characters per row) of a training batch; `pieces`: the optimizer steps a batch takes in
    the budget's early share (`cfg.early_share`), each on a piece of the windows, also timed, so that the
    rate is the run's blend of the two; `late`: the pieces it takes after that share (timed on one of them).

    The step is timed at the run's own shape: a narrow model's step at batch 16 is bound by the sequential
    recurrence and the per-step work more than by its products, so it is less faster than its parameter
    count says, and only the real step shows by how much. Other widths are interpolated in parameters;
    evaluation pauses (forward only, about a third of a training pass per character) take their share."""
    B, T, short = shape[0], _piece_chars(shape[1], late), _piece_chars(shape[1], pieces)
    early = cfg.early_share if short != T else 0.0  # the early steps timed apart where their shape differs
    sizes = np.array([parameters(model, w) for w in PROBE_WIDTHS], dtype=float)
    with torch.random.fork_rng(devices=[rt.device] if rt.device.type == "cuda" else []), torch.enable_grad():
        torch.manual_seed(0)
        # the weight average, once a batch, is timed with a whole batch's step only: a piece's leaves it out
        step = _loglog(sizes, np.array(_step_seconds(model, (B, T), rt, PROBE_WIDTHS, average=late == 1)))
        piece = _loglog(sizes, np.array(_step_seconds(model, (B, short), rt, PROBE_WIDTHS, average=pieces == 1))) \
            if early else None
    eval_share = cfg.eval_chars / (3.0 * cfg.eval_every * shape[0] * shape[1]) if cfg.eval_every else 0.0

    def rate(width: int) -> float:
        p = parameters(model, width)
        per_row = T / step(p) if piece is None else (1.0 - early) * T / step(p) + early * short / piece(p)
        return B * rt.procs.world * per_row / (1.0 + eval_share)

    return rate


def choose(model: ModelConfig, budget: str, unique: float, characters: Callable[[int], float],
           rate: Callable[[int], float] | None = None, law: Law = LAW, early: bool = False) -> Fit:
    """The width with the lowest predicted bpc given the characters each width trains (the narrower of a tie).

    Without a time limit (`rate` None) a wider model always predicts lower, however long it would take: the
    candidates are then the widths the law would spend the compute of those characters on best.
    Nor is a width taken with more parameters than useful x (1 + EXCESS_DECAY) for the unique text, where
    each further parameter is worth under 1/e of a useful one: the law knows nothing of overfitting, so on a
    small text repeated for long it would keep buying width that could only memorise (the narrowest width is
    always a candidate). `early`: the run cuts its batches in pieces early, which the law prices as more
    characters (`Law.early_worth`)."""
    cap = law.useful_parameters(unique) * (1.0 + EXCESS_DECAY) if math.isfinite(unique) else math.inf
    rows = []
    for w in WIDTHS:
        p = parameters(model, w)
        d = characters(w)
        if rows and (p > cap or rate is None and p > law.useful_parameters(law.worth(d, early))):
            break
        rows.append((law.bpc(p, d, unique, early), w, p, d))
    bpc, w, p, d = min(rows)
    return Fit(w, p, budget, d, rate(w) if rate else 0.0, bpc)


def peak_lr(width: int) -> float:
    """The peak learning rate for a network `width` units wide when none is given."""
    return min(LR_MAX, LR_AT_WIDTH * LR_WIDTH / width)


def fit(model: ModelConfig, shapes: dict[int, tuple[int, float]], cfg: TrainConfig, rt: Runtime, unique: float,
        pieces: int = 1, late: int = 1) -> Fit:
    """The width and batch size for this run. `model` has its vocabulary size set; `shapes`: for each batch size
    the run may take, (rows, characters per row) of its training batch in one process; `unique`: characters of the
    training split; `pieces` and `late`: see `measure`.

    Each batch size is timed and given its best width; a larger one is taken only where it predicts at least
    BATCH_MARGIN lower than the smallest: the law counts a character the same in any batch, but a larger batch
    has read 0.02-0.04 bpc further above the law where it took few steps (32 x 128 at 2 minutes, 64 x 128 at 10)."""
    if len(shapes) == 1:
        return _fit_at(model, *shapes.values(), cfg, rt, unique, pieces, late)
    fits = [replace(_fit_at(model, shape, cfg, rt, unique, pieces, late), batch_size=rows)
            for rows, shape in sorted(shapes.items())]
    return min(fits, key=lambda f: f.predicted_bpc + (BATCH_MARGIN if f.batch_size > fits[0].batch_size else 0.0))


def _fit_at(model: ModelConfig, shape: tuple[int, float], cfg: TrainConfig, rt: Runtime, unique: float,
            pieces: int, late: int) -> Fit:
    """The width for a run with batches of `shape` (as `fit` says). The tightest of the run's limits (time, steps,
    epochs) sets the characters each width trains."""
    limits: list[tuple[str, Callable[[int], float]]] = []
    per_step = shape[0] * shape[1] * rt.procs.world
    if cfg.max_steps:
        limits.append((f"{cfg.max_steps:,} steps", lambda w: cfg.max_steps * per_step))
    if cfg.epochs:
        limits.append((f"{cfg.epochs:g} epochs", lambda w: cfg.epochs * unique))
    rate = None
    if cfg.seconds:
        rate = measure(model, shape, cfg, rt, pieces, late)
        limits.append((f"{cfg.seconds:g} s", lambda w: cfg.seconds * rate(w)))

    def characters(w: int) -> float:
        return min(f(w) for _, f in limits)

    chosen = choose(model, "", unique, characters, rate, early=_early_share(cfg, pieces) > 0)
    name = min(limits, key=lambda lim: lim[1](chosen.hidden_size))[0]
    return replace(chosen, budget=name)


__all__ = ["LAW", "Fit", "Law", "choose", "discounted", "fit", "measure", "parameters", "peak_lr"]
