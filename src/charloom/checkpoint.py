"""Model files that stand alone: weights (safetensors), model config, vocabulary and figures (JSON) in one file.

Two kinds of file share one format:
  model.safetensors  what sampling, evaluation and the server need: weights, config, vocabulary;
  last.safetensors   the same plus everything to resume training exactly (optimizer moments, RNG
                     states, data position, carried hidden state).
A sha256 of the tensor bytes is stored in the header, so a truncated or bit-flipped file is refused.
Loading never unpickles: safetensors holds only raw tensors and a JSON header.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from . import atomic
from .config import ModelConfig
from .errors import CharloomError
from .model import CharRNN
from .vocab import Vocab

FORMAT = "charloom-model"
VERSION = 1
MODEL_FILE = "model.safetensors"
RESUME_FILE = "last.safetensors"


@dataclass
class Checkpoint:
    """A loaded model file: the model (on CPU), its vocabulary, and what is known about it."""

    model: CharRNN
    vocab: Vocab
    records: bool  # trained on records: samples start from <bos>
    info: dict[str, Any] = field(default_factory=dict)  # training figures: step, val_bpc, chars_seen, ...
    path: Path | None = None
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # the extra (non-model) tensors
    meta: dict[str, Any] = field(default_factory=dict)  # the extra JSON fields

    @property
    def config(self) -> ModelConfig:
        return self.model.cfg


def model_path(path: str | Path) -> Path:
    """A run folder means the model file in it."""
    p = Path(path).expanduser()
    if p.is_dir():
        for name in (MODEL_FILE, RESUME_FILE):
            if (p / name).is_file():
                return p / name
        raise CharloomError(f"{p}: folder holds no {MODEL_FILE}")
    if not p.exists():
        raise CharloomError(f"{p}: no such model file or run folder")
    return p


def _digest(blob: bytes) -> str:
    """sha256 of the tensor bytes (everything after the JSON header)."""
    (n,) = struct.unpack("<Q", blob[:8])
    return hashlib.sha256(memoryview(blob)[8 + n:]).hexdigest()


def encode(model: CharRNN, vocab: Vocab, *, records: bool, info: dict[str, Any] | None = None,
           extra_tensors: dict[str, torch.Tensor] | None = None, extra_meta: dict[str, Any] | None = None) -> bytes:
    """The bytes of a model file."""
    tensors = {f"model.{k}": v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    for k, v in (extra_tensors or {}).items():
        tensors[k] = v.detach().to("cpu").contiguous()
    meta = {"format": FORMAT, "version": str(VERSION), "config": json.dumps(model.cfg.to_dict()),
            "vocab": vocab.to_json(), "records": json.dumps(records), "info": json.dumps(info or {}),
            "extra": json.dumps(extra_meta or {})}
    blob = st_save(tensors, metadata=meta)
    # the header holds the checksum of the data that follows it; the data does not change with the header
    return st_save(tensors, metadata={**meta, "sha256": _digest(blob)})


def save(path: str | Path, model: CharRNN, vocab: Vocab, *, records: bool, info: dict[str, Any] | None = None,
         extra_tensors: dict[str, torch.Tensor] | None = None, extra_meta: dict[str, Any] | None = None) -> Path:
    """Write a model file atomically (the previous file survives any failure)."""
    path = Path(path)
    atomic.write_bytes(path, encode(model, vocab, records=records, info=info, extra_tensors=extra_tensors,
                                    extra_meta=extra_meta))
    return path


def _header(blob: bytes, where: str) -> dict[str, str]:
    if len(blob) < 8:
        raise CharloomError(f"{where}: not a charloom model file (only {len(blob)} bytes)")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > len(blob) - 8:
        raise CharloomError(f"{where}: the file is truncated (header says {n} bytes, file has {len(blob) - 8})")
    try:
        head = json.loads(blob[8:8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CharloomError(f"{where}: not a charloom model file (damaged header)") from None
    meta = head.get("__metadata__") if isinstance(head, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CharloomError(f"{where}: not a charloom model file")
    return meta


def load(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Load a model file (or the model in a run folder). Refuses damaged, foreign and newer files."""
    p = model_path(path)
    where = str(p)
    try:
        blob = p.read_bytes()
    except OSError as e:
        raise CharloomError(f"{where}: cannot read ({e.strerror or e})") from None
    meta = _header(blob, where)
    if meta.get("version") != str(VERSION):
        raise CharloomError(f"{where}: model file version {meta.get('version')} is not supported by this charloom "
                            f"(reads version {VERSION})")
    if meta.get("sha256") != _digest(blob):
        raise CharloomError(f"{where}: checksum mismatch: the file is damaged or was changed after saving")
    try:
        tensors = st_load(blob)
        cfg = ModelConfig.from_dict(json.loads(meta["config"]), where=f"{where}: config")
        vocab = Vocab.from_json(meta["vocab"], where=f"{where}: vocabulary")
        records = bool(json.loads(meta["records"]))
        info = json.loads(meta.get("info", "{}"))
        extra = json.loads(meta.get("extra", "{}"))
    except (SafetensorError, KeyError, json.JSONDecodeError) as e:
        raise CharloomError(f"{where}: damaged model file ({e})") from None
    if cfg.vocab_size != len(vocab):
        raise CharloomError(f"{where}: config says {cfg.vocab_size} ids but the vocabulary has {len(vocab)}")
    model = CharRNN(cfg)
    weights = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise CharloomError(f"{where}: weights do not fit the config ({first})") from None
    model.to(device)
    rest = {k: v for k, v in tensors.items() if not k.startswith("model.")}
    return Checkpoint(model, vocab, records, info, p, rest, extra)


# ---- run state: what a resumed run needs beyond the model --------------------------------------------
RUN_CONFIGS = ("corpus", "batch", "train")  # saved beside the model's own config


@dataclass
class Progress:
    """Where a run is: saved in the resume file so a resumed run continues exactly."""

    step: int = 0
    epoch: int = 0
    index: int = 0  # next batch within the epoch
    elapsed: float = 0.0  # seconds of training so far
    characters: int = 0  # predicted characters seen so far
    best_val: float = math.inf  # best validation loss (nats)


@dataclass
class RunState:
    """Everything besides the model that the resume file holds; written and read only here.

    Per-process tensors (RNG states, the carried hidden state) are kept for each rank, so a torchrun
    launch resumes each process where it was; a resumed launch must have as many processes."""

    progress: Progress
    configs: dict[str, dict[str, Any]]  # "corpus", "batch", "train" as the run used them
    optimizer: dict[str, Any]  # the optimizer's state_dict: {"state": {i: {name: tensor}}, "param_groups": [...]}
    ranks: list[dict[str, torch.Tensor]]  # per process: "rng.torch", maybe "rng.cuda", "carry.0", "carry.1", ...
    trained: dict[str, torch.Tensor] | None = None  # the trained weights, when the file's model is their average
    averaged: int = 0  # updates folded into that average

    @property
    def world(self) -> int:
        return len(self.ranks)

    def carry(self, rank: int) -> tuple[torch.Tensor, ...] | None:
        mine = self.ranks[rank]
        return tuple(mine[f"carry.{i}"] for i in range(len(mine)) if f"carry.{i}" in mine) or None


def save_run(path: str | Path, model: CharRNN, vocab: Vocab, run: RunState, *, records: bool,
             info: dict[str, Any] | None = None) -> Path:
    """Write a resume file atomically: the model file (the average, when there is one) plus `run`."""
    tensors = {f"optim.{i}.{k}": v for i, st in run.optimizer["state"].items() for k, v in st.items()}
    for r, mine in enumerate(run.ranks):
        tensors |= {f"{name}.r{r}": t for name, t in mine.items()}
    tensors |= {f"weights.{k}": v for k, v in (run.trained or {}).items()}
    pos = vars(run.progress).copy()
    pos["best_val"] = None if math.isinf(pos["best_val"]) else pos["best_val"]
    meta = {"progress": {**pos, "world": run.world, "averaged": run.averaged},
            "optimizer": run.optimizer["param_groups"], **{k: run.configs[k] for k in RUN_CONFIGS}}
    return save(path, model, vocab, records=records, info=info, extra_tensors=tensors, extra_meta=meta)


_OPTIM_KEY = re.compile(r"optim\.(\d{1,9})\.(\w+)", re.ASCII)  # optim.<param index>.<state name>
_RANK_KEY = re.compile(r"(rng\.torch|rng\.cuda|carry\.\d)\.r(\d{1,5})", re.ASCII)  # <name>.r<rank>
_COUNT = 2**62  # the largest step, epoch, position or count a resume file may hold


def _progress(saved: Any, where: str) -> tuple[Progress, int, int]:
    """(Progress, world, averaged) from the header's progress object, every field checked."""
    names = {f.name for f in dataclasses.fields(Progress)}
    if not isinstance(saved, dict) or set(saved) - {"world", "averaged"} != names:
        raise CharloomError(f"{where}: damaged resume file (progress)")
    p = {k: saved[k] for k in names}
    world, averaged = saved.get("world", 1), saved.get("averaged", 0)
    counts = {k: p[k] for k in ("step", "epoch", "index", "characters")} | {"averaged": averaged}
    for k, v in counts.items():
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < _COUNT:
            raise CharloomError(f"{where}: damaged resume file (progress: {k} is not a count)")
    for k in ("elapsed", "best_val"):
        v = p[k]
        if not (v is None and k == "best_val") and not (isinstance(v, (int, float)) and not isinstance(v, bool)
                                                        and abs(v) < 1e300 and v >= 0):
            raise CharloomError(f"{where}: damaged resume file (progress: {k} is not a finite number)")
    if not isinstance(world, int) or isinstance(world, bool) or not 1 <= world <= 65536:
        raise CharloomError(f"{where}: damaged resume file (processes: {world!r})")
    if averaged > p["step"]:
        raise CharloomError(f"{where}: damaged resume file (progress: more averaged updates than steps)")
    best = math.inf if p["best_val"] is None else float(p["best_val"])
    return Progress(**{k: counts[k] for k in ("step", "epoch", "index", "characters")}, elapsed=float(p["elapsed"]),
                    best_val=best), world, averaged


def _sort_tensors(tensors: dict[str, torch.Tensor], world: int, where: str):
    """The resume file's extra tensors by kind: optimizer state, per-rank tensors, trained weights."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    ranks: list[dict[str, torch.Tensor]] = [{} for _ in range(world)]
    trained: dict[str, torch.Tensor] = {}
    for key, t in tensors.items():
        if m := _OPTIM_KEY.fullmatch(key):
            state.setdefault(int(m[1]), {})[m[2]] = t
        elif (m := _RANK_KEY.fullmatch(key)) and int(m[2]) < world:
            ranks[int(m[2])][m[1]] = t
        elif key.startswith("weights."):
            trained[key.removeprefix("weights.")] = t
        else:
            raise CharloomError(f"{where}: damaged resume file (unexpected tensor {key!r})")
    return state, ranks, trained


def _check_against_model(model: CharRNN, state: dict, ranks: list, trained: dict, where: str) -> None:
    """Every saved tensor has the kind and shape the model needs, so restoring it cannot fail half-way."""
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    params = list(model.parameters())
    if trained and {k: v.shape for k, v in trained.items()} != shapes:
        raise CharloomError(f"{where}: damaged resume file (the trained weights do not fit the model)")
    for i, st in state.items():
        if i >= len(params) or set(st) != {"step", "exp_avg", "exp_avg_sq"} or st["step"].numel() != 1 or \
                st["exp_avg"].shape != params[i].shape or st["exp_avg_sq"].shape != params[i].shape:
            raise CharloomError(f"{where}: damaged resume file (optimizer state of parameter {i})")
    rng = torch.get_rng_state()
    layers, width = model.cfg.num_layers, model.cfg.hidden_size
    for r, mine in enumerate(ranks):
        t = mine.get("rng.torch")
        if t is None or t.dtype != rng.dtype or t.shape != rng.shape:
            raise CharloomError(f"{where}: damaged resume file (the RNG state of process {r})")
        carry = sorted(k for k in mine if k.startswith("carry."))
        if carry and (carry != [f"carry.{i}" for i in range(len(model.cell.state))] or
                      any(not mine[k].is_floating_point() or mine[k].dim() != 3 or
                          mine[k].shape[0] != layers or mine[k].shape[2] != width for k in carry)):
            raise CharloomError(f"{where}: damaged resume file (the carried state of process {r})")


def load_run(path: str | Path, device: str | torch.device = "cpu") -> tuple[Checkpoint, RunState]:
    """Read a resume file: the model file, and its run state checked field by field against the model."""
    ck = load(path, device)
    where = str(ck.path)
    meta = ck.meta
    missing = [k for k in ("progress", "optimizer", *RUN_CONFIGS) if k not in meta]
    if missing:
        raise CharloomError(f"{where}: not a resume file (no {', '.join(missing)}); it is a model file only")
    progress, world, averaged = _progress(meta["progress"], where)
    groups = meta["optimizer"]
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        raise CharloomError(f"{where}: damaged resume file (optimizer)")
    for k in RUN_CONFIGS:
        if not isinstance(meta[k], dict):
            raise CharloomError(f"{where}: damaged resume file ({k} options)")
    state, ranks, trained = _sort_tensors(ck.tensors, world, where)
    if not all("rng.torch" in mine for mine in ranks):
        raise CharloomError(f"{where}: damaged resume file (an RNG state is missing)")
    _check_against_model(ck.model, state, ranks, trained, where)
    run = RunState(progress, {k: meta[k] for k in RUN_CONFIGS}, {"state": state, "param_groups": groups}, ranks,
                   trained or None, averaged)
    return ck, run


def run_configs(path: str | Path) -> dict[str, dict[str, Any]]:
    """The options a resume file's run used: corpus, batch, train, and the model's config."""
    ck, run = load_run(path)
    return {**run.configs, "model": ck.config.to_dict()}
