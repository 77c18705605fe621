"""Shared by the quality benchmarks: run `charloom train` on Shakespeare for a time, score a model on the
held-out last 5% the two ways the figures use, and score a model file as saved."""

from __future__ import annotations

import json
import os
import resource
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np

import charloom
import charloom.checkpoint  # the package imports its modules lazily
from charloom.batching import Batch, Stream, eval_windows
from charloom.evaluation import Evaluation, evaluate, evaluate_mixed


def train(minutes: float, out: Path, flags: str = "", env: dict | None = None) -> dict:
    """One `charloom train shakespeare --max-time Nm` run in a new process (with `env` added to its environment);
    its last metrics row, its command as a user would type it, and the largest child-process RSS so far (bytes)."""
    args = ["train", "shakespeare", "--max-time", f"{minutes:g}m", *shlex.split(flags)]
    subprocess.run([sys.executable, "-m", "charloom", *args, "--out", str(out), "--no-progress", "--overwrite"],
                   check=True, stdout=subprocess.DEVNULL, env={**os.environ, **(env or {})})
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    return {"command": "charloom " + " ".join(args), "steps": last["step"], "characters": last["characters"],
            "seconds": last["seconds"], "precision": charloom.checkpoint.load(out / "last.safetensors").meta["train"][
                "precision"], "peak_rss": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}


def as_saved(ck, batches) -> Evaluation:
    """A model file scored as `charloom eval` scores it: the network mixed with its n-gram where the file has
    one, else the network alone."""
    return evaluate_mixed(ck.model, ck.mixture, batches) if ck.mixture else evaluate(ck.model, batches)


def held_out(model, data) -> tuple[float, float]:
    """(whole-text bpc with state carried, mean bpc over 2,048 fixed random 64-character windows)."""
    val: Stream = data.val
    pad = data.corpus.vocab.pad_id
    whole = charloom.evaluate(model, eval_windows(val, 1024, 1, pad))
    starts = np.random.default_rng(0).integers(0, len(val) - 65, 2048)
    chunk = val.gather(starts[:, None] + np.arange(65))  # (2048, 65)
    windows = [Batch(chunk[i:i + 256, :-1], chunk[i:i + 256, 1:], pad) for i in range(0, 2048, 256)]
    return whole.bpc, charloom.evaluate(model, windows).bpc


def shakespeare(fit: bool = False):
    """The bundled corpus and its default split (the last 5% held out); with `fit`, the start of the training split
    a default run leaves out for its n-gram's mixture set apart as such a run sets it (`Data.fit`), last in
    `training_text`."""
    corpus = charloom.load_corpus(charloom.CorpusConfig(source="shakespeare"))
    cfg = charloom.BatchConfig()
    return charloom.prepare(corpus, cfg.settled(charloom.TrainConfig().ngram) if fit else cfg)
