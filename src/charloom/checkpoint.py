"""Model files that stand alone: weights (safetensors), model config, vocabulary and figures (JSON) in one file.

Two kinds of file share one format:
  model.safetensors  what sampling, evaluation and the server need: weights, config, vocabulary;
  last.safetensors   the same plus everything to resume training exactly (optimizer moments, RNG
                     states, data position, carried hidden state).
A sha256 of the tensor bytes is stored in the header, so a truncated or bit-flipped file is refused.
Loading never unpickles: safetensors holds only raw tensors and a JSON header.
"""

from __future__ import annotations

import hashlib
import json
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
