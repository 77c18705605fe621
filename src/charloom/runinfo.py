"""A run's report: what a model was trained on, what it is, how training went, how good it is, and what it
writes. `charloom info PATH` prints it (or its JSON), and training ends by printing it.

    describe("runs/quick")          # a run folder, or a model file on its own
    lines(describe("runs/quick"))   # the same as the lines `charloom info` prints

Everything comes from the model file (its config, vocabulary and info), plus the run folder's
metrics.jsonl when there is one; the corpus itself is never read, so a model file that travelled
without its corpus is described all the same.
"""

from __future__ import annotations

import copy
import functools
import math
import unicodedata
from pathlib import Path
from typing import Any

from . import decoding
from .checkpoint import MODEL_FILE, RESUME_FILE, Checkpoint, header, load, model_path, number, plain
from .curves import read_rows
from .errors import CharloomError, ConfigError
from .sampling import Generator
from .vocab import UNPRINTABLE

SAMPLES = 3  # samples in a report (six for a records model: they are short)
SAMPLE_LENGTH = 200


def describe(path: str | Path, samples: int = SAMPLES, seed: int = 0, ck: Checkpoint | None = None) -> dict[str, Any]:
    """The report of a run folder or model file as plain data (JSON-ready)."""
    file = model_path(path)
    ck = ck or load(file)
    rows = _rows(file.parent)
    info, cfg, v = ck.info, ck.config, ck.vocab
    run = _run_end(file, ck)  # the run as a whole: where it ended, which the model file may be from before
    last = rows[-1] if rows else {}
    seconds, chars = number(run.get("train_seconds")), number(run.get("characters_seen"))
    rate = chars / seconds if chars and seconds else None
    return plain({
        "path": str(file),
        "corpus": {"source": info.get("corpus"), "characters": info.get("corpus_characters"), "records": ck.records,
                   "vocabulary": len(v.chars), "characters_known": "".join(v.chars), "unknown": v.unknown,
                   "lower": v.lower, "normalize": v.normalize, "labels": list(v.labels)},
        "model": {"cell": cfg.cell, "layers": cfg.num_layers, "hidden_size": cfg.hidden_size,
                  "embedding": cfg.embedding, "grams": cfg.grams, "head_hidden": cfg.head_width,
                  "attention": cfg.attention, "memory": cfg.memory if cfg.attention else 0,
                  "shifted_keys": cfg.shifted_keys and cfg.attention > 0,
                  "dropout": cfg.dropout,
                  "parameters": ck.model.num_parameters()},
        "training": {"steps": run.get("step"), "model_step": info.get("step"), "characters_seen": chars,
                     "seconds": seconds,
                     "chars_per_s": round(rate) if rate is not None and math.isfinite(rate) else None,
                     "device": info.get("device"), "precision": info.get("precision"),
                     "ended": run.get("stopped_by"), "sizing": info.get("sizing"), "evaluations": len(rows)},
        "bpc": {"best_validation": run.get("best_val_bpc"), "last_validation": last.get("val_bpc", run.get("val_bpc")),
                "whole_validation_split": info.get("full_val_bpc"), "last_train": last.get("train_bpc"),
                "whole_validation_split_last": run.get("full_val_bpc")},
        "ngram": info.get("ngram") if ck.mixture is not None else None,
        "samples": _samples(ck, samples, seed) if samples else [],
    })




def _run_end(file: Path, ck: Checkpoint) -> dict[str, Any]:
    """How the run went: a run folder's model file is its best evaluated model, which may be from before the
    run's end; the resume file beside it, when it is of the same run and further on, holds the end (its steps,
    time, what ended it). A model file alone tells what it knows itself."""
    if file.name != MODEL_FILE:
        return ck.info
    end = file.with_name(RESUME_FILE)
    try:
        st = end.stat()
        cfg, vocab, records, later = _header_of(str(end), st.st_ino, st.st_mtime_ns, st.st_size)
    except (OSError, CharloomError):
        return ck.info
    same = (cfg, vocab, records) == (ck.config, ck.vocab.to_dict(), ck.records)
    if not same or not isinstance(later.get("step"), int) or later["step"] < (number(ck.info.get("step")) or 0):
        return ck.info
    return copy.deepcopy(later)


@functools.lru_cache(maxsize=8)
def _header_of(path: str, inode: int, mtime_ns: int, size: int) -> tuple[Any, dict, bool, dict[str, Any]]:
    """A model file's header fields, read once per version of the file (a server's report asks on every
    request; each save replaces the file, so a new version is a new inode)."""
    return header(path)


def _rows(folder: Path) -> list[dict[str, Any]]:
    """The run folder's metrics rows; none where there is no log or it is unreadable (the model file still
    describes the run)."""
    try:
        return read_rows(folder) if (folder / "metrics.jsonl").is_file() else []
    except CharloomError:
        return []


def _samples(ck: Checkpoint, count: int, seed: int) -> list[str]:
    n = 2 * count if ck.records else count
    gen = Generator.from_checkpoint(ck)
    if gen.memory_needed(n, SAMPLE_LENGTH) > decoding.memory_cap():  # the generation's own refusal names sample's flags
        raise ConfigError(f"samples (--samples): {n:,} samples of {SAMPLE_LENGTH} characters from this model would "
                          f"need more than half of this machine's memory; give --samples 0 for the report without "
                          f"them")
    return gen.generate("", SAMPLE_LENGTH, n=n, temperature=0.8, seed=seed)


def _figure(value: Any, fmt: str = "{:,}", missing: str = "unknown") -> str:
    """A figure from the file as printed: text with its control characters escaped (a hostile file's escape codes
    would otherwise reach the terminal as commands)."""
    if value is None:
        return missing
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return fmt.format(value)
    return "".join(ch.encode("unicode_escape").decode() if unicodedata.category(ch) in UNPRINTABLE else ch
                   for ch in str(value))


def _whole(b: dict[str, Any]) -> str:
    """The whole validation split's bpc: this model's, or where only the run's last weights were scored on it,
    theirs, named so."""
    if b["whole_validation_split"] is None and isinstance(b.get("whole_validation_split_last"), float):
        return f"{b['whole_validation_split_last']:.3f} (the last weights)"
    return _figure(b["whole_validation_split"], "{:.3f}", "none")


def head_words(width: int | None, attention: int | None = 0, memory: int | None = 0,
               shifted: bool | None = False) -> str:
    """The head in words: a hidden layer's width, or linear; and the attention head before it, where there is one
    (and whether its keys are shifted)."""
    head = f"head with a {width}-unit hidden layer" if width else "linear head"
    if not attention:
        return head
    keys = " (shifted keys)" if shifted else ""
    return f"attention {attention} wide{keys} over the last {memory} characters, {head}"


def lines(report: dict[str, Any]) -> list[str]:
    """The report as the lines a person reads."""
    c, m, t, b = report["corpus"], report["model"], report["training"], report["bpc"]
    kind = "records" if c["records"] else "a continuous text"
    out = [f"model file   {report['path']}",
           f"corpus       {_figure(c['source'])}: {_figure(c['characters'])} characters, read as {kind}; "
           f"vocabulary of {c['vocabulary']} characters (unknown ones: {c['unknown']})",
           *([f"labels       {len(c['labels'])}, one given after <bos> to write for it: {', '.join(c['labels'])}"]
             if c.get("labels") else []),
           f"model        {m['cell']} {m['layers']}x{m['hidden_size']}, "
           f"{'embedding ' + str(m['embedding']) if m['embedding'] else 'one-hot input'}, "
           f"{head_words(m.get('head_hidden'), m.get('attention'), m.get('memory'), m.get('shifted_keys'))}"
           f", {m['parameters']:,} parameters",
           f"training     {_figure(t['steps'])} steps, {_figure(t['characters_seen'])} characters in "
           f"{_figure(t['seconds'], '{:,.0f}')} s ({_figure(t['chars_per_s'])} characters/s) on "
           f"{_figure(t['device'])} ({_figure(t['precision'])}); ended: {_figure(t['ended'])}"
           + (f"; this model file is from step {t['model_step']:,}, the best evaluated"
              if isinstance(t.get("model_step"), int) and t["model_step"] != t["steps"] else ""),
           f"bpc          best validation {_figure(b['best_validation'], '{:.3f}', 'none')}, last validation "
           f"{_figure(b['last_validation'], '{:.3f}', 'none')}, whole validation split {_whole(b)}, last train "
           f"{_figure(b['last_train'], '{:.3f}', 'unknown')}"]
    if isinstance(t.get("sizing"), dict):
        fit = t["sizing"]
        batch = f" and batch {fit['batch_size']}" if type(fit.get("batch_size")) is int and fit["batch_size"] else ""
        out.append(f"sizing       width {_figure(fit.get('hidden_size'), '{}')}{batch} chosen for "
                   f"{_figure(fit.get('budget'))}, predicted {_figure(fit.get('predicted_bpc'), '{:.3f}')} bpc")
    if isinstance(report.get("ngram"), dict):
        g = report["ngram"]
        asked = g.get("longest_asked")
        asked = f" (of at most {asked})" if isinstance(asked, int) and asked != g.get("order") else ""
        out.append(f"n-gram       order {_figure(g.get('order'))}{asked} over {_figure(g.get('characters'))} "
                   f"characters of the training text, mixed in: whole validation split "
                   f"{_figure(g.get('val_bpc'), '{:.3f}', 'none')} "
                   f"(the network alone {_figure(g.get('network_val_bpc'), '{:.3f}', 'none')})")
    if report["samples"]:
        joiner = " | " if c["records"] else "\n---\n"
        out.append("samples (temperature 0.8):\n" + joiner.join(report["samples"]))
    return out
