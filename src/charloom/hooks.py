"""What the training loop tells the world: each concern is a hook the Trainer calls.

A hook sees the run start, each step, each evaluation and the end, and never steers the loop except by
asking it to stop (`on_step` returning True, as the user's callback does). The Trainer knows none of
them by name: the terminal display, samples as it learns, the metrics log, the saved files and the
user's callback are all hooks, so a new report (the chart, a web page) is one more class here.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from . import checkpoint, ngram, sizing
from .batching import training_text
from .config import EXPORTED, EXPORTED_INT8
from .errors import CharloomError
from .evaluation import LN2, Evaluation, evaluate_mixed, fit_mixture
from .runinfo import head_words
from .sampling import sample_texts

if TYPE_CHECKING:
    from .trainer import Trainer, TrainResult


class Hook:
    """Override what you need. `row` is the evaluation's metrics line (None on processes other than the
    first, which do not evaluate); `val` the periodic score, `full` the whole split's (last evaluation)."""

    def on_start(self, t: Trainer) -> None: ...

    def on_step(self, t: Trainer, event: dict[str, Any]) -> bool:
        return False

    def on_eval(self, t: Trainer, row: dict[str, Any] | None, val: Evaluation | None,
                full: Evaluation | None) -> None: ...

    def on_end(self, t: Trainer, result: TrainResult) -> None: ...


def say(text: str) -> None:
    """A line on the terminal that leaves the progress bar intact."""
    from tqdm import tqdm

    tqdm.write(text, file=sys.stdout)


class Display(Hook):
    """The terminal: what runs where, a progress bar, a line per evaluation, and where the model went.

    quiet: only the end (where the model went, its score, why the run stopped), never the rest."""

    def __init__(self, info: Callable[[], dict[str, Any]] = dict, quiet: bool = False) -> None:
        self.bar = None
        self.info = info  # the run's info: the sizing chosen, if any, is said at the start
        self.quiet = quiet

    def on_start(self, t: Trainer) -> None:
        from tqdm import tqdm

        if self.quiet:
            return
        m = t.model.cfg
        kind = "records" if t.records else "characters"
        threads = f", {torch.get_num_threads()} threads" if t.rt.device.type == "cpu" else ""
        head = head_words(m.head_width, m.attention, m.memory, m.shifted_keys)
        say(f"{m.cell} {m.num_layers}x{m.hidden_size}, {head}, {t.model.num_parameters():,} parameters, on "
            f"{t.rt.device.type} ({t.rt.precision}{threads}), peak learning rate {t.cfg.lr:.3g}; {t.data.train_size:,} "
            f"training {kind}; run folder {t.out}")
        if t.rt.note:
            say(t.rt.note)
        sized = self.info().get("sizing")
        if sized:
            say(sizing.Fit(**sized).line())
        self.bar = tqdm(total=1000, disable=None, leave=False, file=sys.stderr, initial=int(1000 * t.fraction_done()),
                        bar_format="{percentage:3.0f}%|{bar:20}| {desc}")

    def on_step(self, t: Trainer, event: dict[str, Any]) -> bool:
        if self.bar is None:
            return False
        if event.get("threads"):  # the runtime moved the threads as other work came or went
            say(event["threads"])
        loss = event["loss"]
        self.bar.n = int(1000 * min(1.0, t.fraction_done()))
        self.bar.set_description_str(f"step {event['step']} loss {loss:.3f} ({loss / LN2:.2f} bpc) "
                                     f"{t.window.rate:,.0f} chars/s ETA {t.eta():.0f}s", refresh=False)
        self.bar.update(0)
        return False

    def on_eval(self, t: Trainer, row: dict[str, Any] | None, val: Evaluation | None,
                full: Evaluation | None) -> None:
        if self.quiet:
            return
        vtxt = f"val {val.bpc:.3f} bpc" if val else "no validation split"
        if full is not None and full is not val:  # a subset: say what the whole split scores
            vtxt += f" (whole validation split, {full.characters:,} characters: {full.bpc:.3f})"
        say(f"step {row['step']:>6}  train {row['train_bpc']:.3f} bpc  {vtxt}  lr {row['lr']:.2e}  "
            f"{row['chars_per_s']:,.0f} chars/s  {row['seconds']:.0f}s")

    def on_end(self, t: Trainer, result: TrainResult) -> None:
        if self.bar is not None:
            self.bar.close()
        if not result.steps_run:
            spent = ", ".join(k for k, v in t.budgets().items() if v >= 1.0)
            say(f"nothing to do: the run in {t.out} already reached its budget ({spent}) at step {t.pos.step}; "
                f"to train on, resume with a larger --max-steps, --max-time or --epochs")
        if result.stopped_by != "budget":
            say(f"stopped by {result.stopped_by} at step {t.pos.step}; saved {t.out / checkpoint.RESUME_FILE} "
                f"(continue with --resume)")
        if math.isfinite(t.pos.best_val):
            score = f" (best validation {t.pos.best_val / LN2:.3f} bpc)"
        else:  # no validation split: the training loss is the only score there is
            score = f" (train {t.history[-1]['train_bpc']:.3f} bpc; no validation split)" if t.history else ""
        say(f"model: {t.out / checkpoint.MODEL_FILE}{score}")
        if (t.out / checkpoint.MODEL_FILE).is_file():  # the run's report, as `charloom info` prints it
            from .runinfo import SAMPLES, describe, lines

            shown = 0 if not t.cfg.sample_length else SAMPLES  # no samples asked for: none at the end either
            try:
                ck = checkpoint.load(t.out / checkpoint.MODEL_FILE)
            except CharloomError as e:  # a model file damaged since it was saved: the run's last weights are not
                raise CharloomError(f"{e}; the run's last weights are in {t.out / checkpoint.RESUME_FILE}, which "
                                    f"charloom sample --checkpoint takes as well") from None
            say("\n".join(lines(describe(t.out, samples=shown, ck=ck))))


def _unfitted(path: Path, order: int) -> bool:
    """Whether a model file's header says it holds no n-gram of the longest order asked yet: none (a run stopped
    while fitting it), or one asked for another order (a resume with another --ngram). One whose header cannot be
    read: unknown, so no: the run's report says what is wrong with it."""
    try:
        figures = checkpoint.header(path)[3].get("ngram")
    except CharloomError:
        return False
    return not isinstance(figures, dict) or figures.get("longest_asked") != order


class Mixing(Hook):
    """At the end of a run, the saved model gains the n-gram of its training text (first process only): the
    mixture's weights, and its last layer where training left characters out for them, are fitted to that model,
    the validation split scored with and without it."""

    def __init__(self, order: int) -> None:
        self.order = order

    def on_end(self, t: Trainer, result: TrainResult) -> None:
        path = t.out / checkpoint.MODEL_FILE
        if not t.rt.procs.main or not path.is_file() or (not result.steps_run and not _unfitted(path, self.order)):
            return
        if result.stopped_by == "SIGTERM":  # a scheduler's stop: its grace period may be shorter than the fit
            say(f"{path} holds the network alone: stopped by SIGTERM, the run exits without fitting its n-gram, "
                f"which it adds when it ends if continued with --resume")
            return
        if result.stopped_by == "SIGINT":
            say(f"adding the n-gram to {path} before exiting (Ctrl-C again leaves the network alone there)")
        try:
            self._add(t, path)
        except (MemoryError, CharloomError) as e:  # the model file stays as it was: the network alone
            say(f"the n-gram was not added to {path} ({str(e) or 'out of memory'}); it holds the network alone")
        except KeyboardInterrupt:
            say(f"the n-gram was not added to {path}; it holds the network alone")
            raise

    def _add(self, t: Trainer, path: Path) -> None:
        t0 = time.perf_counter()
        ck = checkpoint.load(path, t.rt.device)
        ids, held = training_text(t.data, ngram.MAX_CHARS)  # held: the part training left out, last in `ids`
        mixture = fit_mixture(ck.model, ids, len(t.vocab), t.vocab.pad_id, self.order, device=t.rt.device,
                              held=held, given=t.vocab.label_span)
        figures: dict[str, Any] = {"order": mixture.ngram.order, "longest_asked": self.order,
                                   "characters": int(len(mixture.ngram.ids)), checkpoint.LABELS_COUNTED: True}
        if t.data.val is not None:
            ev = evaluate_mixed(ck.model, mixture, t.data.val_batches(), t.rt.device)
            figures |= {"val_bpc": ev.bpc, "network_val_bpc": ev.network_bpc}
        figures["seconds"] = round(time.perf_counter() - t0, 1)
        checkpoint.save(path, ck.model, ck.vocab, records=ck.records, info={**ck.info, "ngram": figures},
                        mixture=mixture)


class Samples(Hook):
    """Samples at a few temperatures after each evaluation, so a user sees what the model has learned."""

    def __init__(self, start: str, temperatures: tuple[float, ...], length: int, seed: int) -> None:
        self.start, self.temperatures, self.length, self.seed = start, temperatures, length, seed

    def on_eval(self, t: Trainer, row: dict[str, Any] | None, val: Evaluation | None,
                full: Evaluation | None) -> None:
        n = 6 if t.records else 1  # records are short: show several at once; a text shows one long passage
        for temp, texts in sample_texts(t.final_model, t.vocab, self.start, self.temperatures, self.length, n=n,
                                        seed=(self.seed + t.pos.step) % 2**62, records=t.records):
            shown = " | ".join(self.start + x for x in texts)
            say(f"--- sample at temperature {temp:g} ---\n{shown}")


class MetricsLog(Hook):
    """One JSON line per evaluation in the run folder's metrics.jsonl."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_eval(self, t: Trainer, row: dict[str, Any] | None, val: Evaluation | None,
                full: Evaluation | None) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


class Chart(Hook):
    """curves.png in the run folder, redrawn from metrics.jsonl at each evaluation, so a user can watch a run
    learn. It must come after MetricsLog, which appends the evaluation's row. Without matplotlib (the `plot`
    extra) it says how to get it once at the start, unless quiet, and draws nothing; a chart that cannot be
    written is said once and left, never stopping the run."""

    def __init__(self, out: Path, quiet: bool = False) -> None:
        self.out, self.quiet = out, quiet
        self.drawing = False

    def on_start(self, t: Trainer) -> None:
        from . import curves

        if not t.rt.procs.main:
            return
        chart, resumed = self.out / curves.CHART_FILE, (self.out / curves.METRICS_FILE).exists()
        if not resumed:  # a fresh run (or --overwrite): an older run's chart must not pass for this one's
            chart.unlink(missing_ok=True)
        self.drawing = curves.available()
        if not self.drawing and not self.quiet:
            say(f"no training curves in {chart}: they need matplotlib ({curves.INSTALL_HINT})")
        if self.drawing and resumed:  # the metrics kept up to the resumed step, at once
            self._draw(t)

    def on_eval(self, t: Trainer, row: dict[str, Any] | None, val: Evaluation | None,
                full: Evaluation | None) -> None:
        if self.drawing and row is not None and t.rt.procs.main:
            self._draw(t)

    def _draw(self, t: Trainer) -> None:
        from . import curves

        m = t.model.cfg
        title = f"{self.out.name}: {m.cell} {m.num_layers}x{m.hidden_size} on {t.data.corpus.name}"
        try:
            curves.draw([curves.read_curve(self.out)], self.out / curves.CHART_FILE, title=title)
        except CharloomError as e:
            self.drawing = False
            say(f"training curves: {e}; the run goes on without them")


class Checkpoints(Hook):
    """At each evaluation: the resume file, and the model file when validation improved (or there is none).

    Every process takes part, since each one's RNG states and carried state go into the resume file;
    only the first writes."""

    def __init__(self, out: Path, configs: dict[str, dict[str, Any]], info: Callable[[], dict[str, Any]]) -> None:
        self.out, self.configs, self.info = out, configs, info

    def on_eval(self, t: Trainer, row: dict[str, Any] | None, val: Evaluation | None,
                full: Evaluation | None) -> None:
        ranks = _gathered(t)
        if not t.rt.procs.main:
            return
        trained = t.model.state_dict() if t.average is not None else None  # the file's model is the average
        averaged = int(t.average.n_averaged) if t.average is not None else 0
        run = checkpoint.RunState(t.pos, self.configs, t.opt.state_dict(), ranks, trained, averaged)
        info = {**self.info(), **t.scores(val, full)}
        checkpoint.save_run(self.out / checkpoint.RESUME_FILE, t.final_model, t.vocab, run, records=t.records,
                            info=info)
        if t.improved or val is None or not (self.out / checkpoint.MODEL_FILE).exists():
            checkpoint.save(self.out / checkpoint.MODEL_FILE, t.final_model, t.vocab, records=t.records, info=info)
            _drop_exports(self.out)


def _drop_exports(out: Path) -> None:
    """A new model file in a run folder: what `charloom export` made there from the one before no longer matches
    it, so it goes (an export running meanwhile sees the model file change and puts nothing in place)."""
    stale = [name for name in (EXPORTED, EXPORTED_INT8) if (out / name).is_file()]
    for name in stale:
        (out / name).unlink(missing_ok=True)
    if stale:
        say(f"{out / checkpoint.MODEL_FILE}: a new model; the {' and '.join(stale)} exported from the one before "
            f"{'is' if len(stale) == 1 else 'are'} removed (charloom export makes them again)")


def _gathered(t: Trainer) -> list[dict[str, torch.Tensor]]:
    """What differs between processes, from every process: RNG states and the carried hidden state."""
    mine = {"rng.torch": torch.get_rng_state().to(t.rt.device)}
    if t.rt.device.type == "cuda":
        mine["rng.cuda"] = torch.cuda.get_rng_state(t.rt.device).to(t.rt.device)
    for i, st in enumerate(t.carry or ()):
        mine[f"carry.{i}"] = st
    ranks: list[dict[str, torch.Tensor]] = [{} for _ in range(t.rt.procs.world)]
    for name, tensor in mine.items():
        for r, tr in enumerate(t.rt.procs.gather(tensor)):
            ranks[r][name] = tr
    return ranks


class Callback(Hook):
    """The user's `callback(event)`: sees each step and each evaluation; returning True stops the run as
    SIGINT would (finish the step, save, return): at once for a step, after the next step for an evaluation
    (the processes of a run agree on a stop once a step)."""

    def __init__(self, fn: Callable[[dict[str, Any]], bool | None]) -> None:
        self.fn = fn
        self.wanted = False  # an evaluation asked to stop

    def on_step(self, t: Trainer, event: dict[str, Any]) -> bool:
        return bool(self.fn(event)) or self.wanted

    def on_eval(self, t: Trainer, row: dict[str, Any] | None, val: Evaluation | None,
                full: Evaluation | None) -> None:
        if row is not None:
            self.wanted = bool(self.fn({"event": "eval", **row})) or self.wanted


__all__ = ["Callback", "Chart", "Checkpoints", "Display", "Hook", "MetricsLog", "Samples", "say"]
