"""Model files that stand alone: weights (safetensors), model config, vocabulary and figures (JSON) in one file.

Two kinds of file share one format:
  model.safetensors  what sampling, evaluation and the server need: weights, config, vocabulary;
  last.safetensors   the same plus everything to resume training exactly (optimizer moments, RNG
                     states, data position, carried hidden state).
The header holds two sha256 digests: `sha256` of the tensor bytes, and `sha256_all` of what the header
means (its fields and tensor table) together with those bytes, so a truncated or bit-flipped file is refused.
Loading never unpickles: safetensors holds only raw tensors and a JSON header. A file costs little to
refuse: it is read only if it is a regular file whose size is what its header describes, and weights are
made only once the config's shapes are the ones its header lists.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import stat
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch.overrides import TorchFunctionMode
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from . import atomic, ngram, runtime
from .config import RECENT, ModelConfig, expand, onnx_named, state_shapes
from .errors import CharloomError
from .model import CharRNN
from .vocab import SPECIALS, Vocab, check_labelled

FORMAT = "charloom-model"
VERSION = 1
MODEL_FILE = "model.safetensors"
RESUME_FILE = "last.safetensors"
LABELS_COUNTED = "labels_counted"  # in a model's n-gram figures: its text holds records' labels (_labels_counted)
DIGEST = "sha256"  # of the tensor bytes: what every charloom writes and checks
FULL_DIGEST = "sha256_all"  # of the header's meaning and the tensor bytes (see _full_digest)
FIELDS = ("format", "version", "config", "vocab", "records", "info", "extra")  # the header's fields, digests aside
MAX_HEADER = 16 * 2**20  # bytes; a header is a few KB, a vocabulary of every code point about 13 MB
MAX_VALUES = 2**17  # JSON values in a header (bounded by its commas and brackets): parsing stays in tens of MB
# the sizes a model file may hold: the config refuses deeper and wider models (MAX_LAYERS, MAX_WIDTH) itself
LIMITS = {"vocab_size": len(SPECIALS) + 0x110000}
MAX_MESSAGE = 500  # characters of a refusal, which may quote a name or value from the file
WEIGHTS = "F32"  # the dtype save writes a model's weights in, and the only one load takes
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}  # the safetensors dtypes a charloom file may hold


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
    mixture: ngram.Mixture | None = None  # the n-gram of the training text mixed with the network, if it has one
    stamp: tuple[int, int, int] | None = None  # atomic.stamp of the file as it was read: a later save changes it

    @property
    def config(self) -> ModelConfig:
        return self.model.cfg


def model_path(path: str | Path) -> Path:
    """A run folder means the model file in it."""
    if not str(path).strip():  # Path("") is the current folder
        raise CharloomError("no model file or run folder named (an empty path)")
    p = expand(path)
    if p.is_dir():
        for name in (MODEL_FILE, RESUME_FILE):
            if (p / name).is_file():
                return p / name
        raise CharloomError(f"{p}: folder holds no {MODEL_FILE}")
    if not p.exists():
        raise CharloomError(f"{p}: no such model file or run folder")
    if onnx_named(p):
        raise CharloomError(f"{p}: an exported ONNX file runs with `charloom sample` (or OnnxGenerator in Python); "
                            f"here give the run folder or its model.safetensors")
    return p


def _full_digest(meta: dict[str, str], table: dict[str, Any], data_digest: str) -> str:
    """sha256 of what a header means: its fields (all but the digests), its tensor table and the tensor bytes'
    digest, as canonical JSON (sorted keys, no spaces, ASCII), so one meaning has exactly one digest."""
    fields = {k: v for k, v in meta.items() if k not in (DIGEST, FULL_DIGEST)}
    text = json.dumps({"fields": fields, "tensors": table, DIGEST: data_digest}, sort_keys=True,
                      separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def encode(model: CharRNN, vocab: Vocab, *, records: bool, info: dict[str, Any] | None = None,
           extra_tensors: dict[str, torch.Tensor] | None = None, extra_meta: dict[str, Any] | None = None) -> bytes:
    """The bytes of a model file."""
    lone = next((c for c in vocab.chars if "\ud800" <= c <= "\udfff"), None)
    if lone is not None:  # load refuses it: a model file's vocabulary must be printable
        raise CharloomError(f"vocabulary: U+{ord(lone):04X} is a lone surrogate, not a character; a model file "
                            f"holds valid Unicode only")
    tensors = {f"model.{k}": v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    for k, v in (extra_tensors or {}).items():
        tensors[k] = v.detach().to("cpu").contiguous()
    meta = {"format": FORMAT, "version": str(VERSION), "config": json.dumps(model.cfg.to_dict()),
            "vocab": vocab.to_json(), "records": json.dumps(records),
            # strict JSON, which every reader takes (the web page's JSON.parse too): NaN and Infinity are null
            "info": json.dumps(plain(info or {}), allow_nan=False),
            "extra": json.dumps(plain(extra_meta or {}), allow_nan=False)}
    blob = st_save(tensors, metadata=meta)
    (n,) = struct.unpack("<Q", blob[:8])
    table = {k: v for k, v in json.loads(blob[8:8 + n]).items() if k != "__metadata__"}
    data = hashlib.sha256(memoryview(blob)[8 + n:]).hexdigest()
    # the digests go into the header; the tensor table and bytes do not change with it
    return st_save(tensors, metadata={**meta, DIGEST: data, FULL_DIGEST: _full_digest(meta, table, data)})


def save(path: str | Path, model: CharRNN, vocab: Vocab, *, records: bool, info: dict[str, Any] | None = None,
         extra_tensors: dict[str, torch.Tensor] | None = None, extra_meta: dict[str, Any] | None = None,
         mixture: ngram.Mixture | None = None) -> Path:
    """Write a model file atomically (the previous file survives any failure); with `mixture`, its n-gram's text
    and weights go in too."""
    path = Path(path)
    if mixture is not None:
        extra_tensors, extra_meta = {**(extra_tensors or {}), **_mixture_tensors(mixture)}, \
            {**(extra_meta or {}), NGRAM: {"order": mixture.ngram.order, "beta": mixture.ngram.beta}}
    atomic.write_bytes(path, encode(model, vocab, records=records, info=info, extra_tensors=extra_tensors,
                                    extra_meta=extra_meta))
    return path


NGRAM = "ngram"  # the extra field, and the prefix of the tensors, of a model's n-gram
_NGRAM_IDS = {"U8": 2**8, "I16": 2**15, "I32": 2**31}  # dtypes of the n-gram's text, and the ids each can hold


def _mixture_tensors(mixture: ngram.Mixture) -> dict[str, torch.Tensor]:
    ids, vocab_size, shape = mixture.ngram.ids, mixture.ngram.vocab_size, (mixture.ngram.order + 1, *ngram.SHAPE)
    for w in (mixture.weights, mixture.reading):
        w = np.asarray(w if w is not None else mixture.weights)
        if w.shape != shape or not _within(w, 1.0):  # what load refuses
            raise CharloomError(f"n-gram: its mixing weights must be {shape} numbers in [0, 1]; the model file was "
                                f"not written")
    e = mixture.exponents
    if e is not None and (np.shape(e) != (shape[0], ngram.EXPONENTS) or not _within(e, ngram.MOST_EXPONENT)):
        raise CharloomError(f"n-gram: its last layer's powers must be {(shape[0], ngram.EXPONENTS)} numbers in "
                            f"[0, {ngram.MOST_EXPONENT:g}]; the model file was not written")
    dtype = next(_DTYPES[name] for name, most in _NGRAM_IDS.items() if vocab_size <= most)
    out = {f"{NGRAM}.ids": torch.from_numpy(ids.astype(np.int64)).to(dtype),
           f"{NGRAM}.weights": torch.from_numpy(np.asarray(mixture.weights, dtype=np.float32))}
    if mixture.reading is not None:
        out[f"{NGRAM}.reading"] = torch.from_numpy(np.asarray(mixture.reading, dtype=np.float32))
    if e is not None:
        out[f"{NGRAM}.exponents"] = torch.from_numpy(np.asarray(e, dtype=np.float32))
    return out


def _within(values: np.ndarray, most: float) -> bool:
    """Every value finite and in [0, most]."""
    values = np.asarray(values)
    return bool(np.isfinite(values).all() and (values >= 0).all() and (values <= most).all())


def _check_ngram_header(extra: dict[str, Any], table: dict[str, Any], where: str) -> None:
    """An n-gram's fields and tensor shapes, before any byte of it is read: both or neither, within bounds."""
    names = {k for k in table if k.startswith(f"{NGRAM}.")}
    if NGRAM not in extra and not names:
        return
    spec = extra.get(NGRAM)
    needed = {f"{NGRAM}.ids", f"{NGRAM}.weights"}
    optional = {f"{NGRAM}.reading", f"{NGRAM}.exponents"}
    if names - optional != needed or not isinstance(spec, dict) or set(spec) != {"order", "beta"}:
        raise CharloomError(f"{where}: damaged model file (its n-gram needs the field {NGRAM!r} with order and beta, "
                            f"and the tensors {NGRAM}.ids and {NGRAM}.weights, {NGRAM}.reading and "
                            f"{NGRAM}.exponents at most beside them)")
    order, beta = spec["order"], spec["beta"]
    if not isinstance(order, int) or isinstance(order, bool) or not 1 <= order <= ngram.MAX_ORDER:
        raise CharloomError(f"{where}: n-gram order {order!r} is not an integer in 1..{ngram.MAX_ORDER}")
    if not isinstance(beta, (int, float)) or isinstance(beta, bool) or not 0 < beta <= 1e6:
        raise CharloomError(f"{where}: n-gram beta {beta!r} is not a number in (0, 1e6]")
    ids = table[f"{NGRAM}.ids"]
    if ids["dtype"] not in _NGRAM_IDS or len(ids["shape"]) != 1 or not 0 < ids["shape"][0] <= ngram.MAX_CHARS:
        raise CharloomError(f"{where}: tensor '{NGRAM}.ids' must be 1 to {ngram.MAX_CHARS:,} integers, is "
                            f"{ids['dtype']} {ids['shape']}")
    if order * ids["shape"][0] > ngram.MAX_PAIRS:  # what rebuilding its counts may hold
        raise CharloomError(f"{where}: an n-gram of order {order} over {ids['shape'][0]:,} characters is more than a "
                            f"model file may ask for (order x characters at most {ngram.MAX_PAIRS:,})")
    shapes = [order + 1, *ngram.SHAPE], [order + 1, *ngram.EARLIER_SHAPE]  # the earlier: older model files
    _check_exponents_header(table, order, where)
    for name in sorted(names - {f"{NGRAM}.ids", f"{NGRAM}.exponents"}):
        weights = table[name]
        if weights["dtype"] != "F32" or weights["shape"] not in shapes:
            raise CharloomError(f"{where}: tensor '{name}' must be F32 {shapes[0]} (or {shapes[1]}), is "
                                f"{weights['dtype']} {weights['shape']}")
    if f"{NGRAM}.reading" in names and table[f"{NGRAM}.reading"]["shape"] != table[f"{NGRAM}.weights"]["shape"]:
        raise CharloomError(f"{where}: tensor '{NGRAM}.reading' must have the shape of '{NGRAM}.weights' "
                            f"{table[f'{NGRAM}.weights']['shape']}, is {table[f'{NGRAM}.reading']['shape']}")


def _check_exponents_header(table: dict[str, Any], order: int, where: str) -> None:
    """The n-gram's last layer, where a file has one: F32 (order + 1, EXPONENTS)."""
    e = table.get(f"{NGRAM}.exponents")
    shape = [order + 1, ngram.EXPONENTS]
    if e is not None and (e["dtype"] != "F32" or e["shape"] != shape):
        raise CharloomError(f"{where}: tensor '{NGRAM}.exponents' must be F32 {shape}, is {e['dtype']} {e['shape']}")


def _mixture(extra: dict[str, Any], tensors: dict[str, torch.Tensor], vocab_size: int,
             where: str, given: range = range(0)) -> ngram.Mixture | None:
    """The model's n-gram from its checked header and tensors: every id in the vocabulary, weights in [0, 1];
    `given`: the ids its text holds that it never predicts (`NGram.given`)."""
    if NGRAM not in extra:
        return None
    ids = tensors[f"{NGRAM}.ids"].numpy()
    if ids.min() < 0 or ids.max() >= vocab_size:
        raise CharloomError(f"{where}: tensor '{NGRAM}.ids' holds ids outside the vocabulary of {vocab_size}")
    mixing = {}  # a file from before the weights for reading has none: reading mixes with the static ones
    for name in ("weights", "reading"):
        if f"{NGRAM}.{name}" in tensors:
            w = mixing[name] = tensors[f"{NGRAM}.{name}"].numpy().astype(np.float64)
            if not _within(w, 1.0):
                raise CharloomError(f"{where}: tensor '{NGRAM}.{name}' holds values outside [0, 1]")
    exponents = tensors.get(f"{NGRAM}.exponents")  # a file from before the last layer: the linear mixture alone
    if exponents is not None:
        exponents = exponents.numpy().astype(np.float64)
        if not _within(exponents, ngram.MOST_EXPONENT):
            raise CharloomError(f"{where}: tensor '{NGRAM}.exponents' holds values outside "
                                f"[0, {ngram.MOST_EXPONENT:g}]")
    spec = extra[NGRAM]
    counts = ngram.NGram(ids, vocab_size, spec["order"], float(spec["beta"]), given=given)
    return ngram.Mixture(counts, mixing["weights"], mixing.get("reading"), exponents)


# ---- reading: every check that needs only the header comes before any tensor byte is read ----------------
@dataclass(frozen=True)
class _Layout:
    """A model file's header, checked against the file's size."""

    meta: dict[str, str]  # the __metadata__ fields
    table: dict[str, dict[str, Any]]  # tensor name -> {"dtype", "shape", "data_offsets"}, as listed
    head: bytes  # the length and the header: the file's first `start` bytes
    data: int  # bytes of tensor data the table describes, which end the file

    @property
    def start(self) -> int:
        return len(self.head)


def _json(text: str | bytes, where: str, name: str | None = None, *, constants: bool = True) -> Any:
    """JSON from a model file (`name`: the header field it is in; None: the header itself). A repeated key,
    nesting past Python's recursion limit or an integer of thousands of digits is a damaged file.
    constants: NaN and Infinity are taken (Python's json writes them in info); the header never holds them."""
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        if len(found := dict(items)) != len(items):
            raise ValueError("a key is repeated")
        return found

    def constant(word: str) -> Any:
        raise ValueError(f"{word} is not JSON")

    try:
        text = text.decode("utf-8") if isinstance(text, bytes) else text
        return json.loads(text, object_pairs_hook=pairs, **({} if constants else {"parse_constant": constant}))
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        reason = "nested too deeply" if isinstance(e, RecursionError) else str(e).splitlines()[0]
        if name is None:
            raise CharloomError(f"{where}: not a charloom model file (damaged header: {reason})") from None
        raise CharloomError(f"{where}: damaged model file ({name}: {reason})") from None


def _open(p: Path, where: str) -> tuple[BinaryIO, int]:
    """The file open for reading, and its size; refused unless it is a regular file (a FIFO or a device may
    block or never end). O_NONBLOCK: opening a FIFO must not wait for a writer before fstat sees what it is."""
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as e:
        raise CharloomError(f"{where}: cannot read ({e.strerror or e})") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise CharloomError(f"{where}: not a regular file, so not a model file")
    return os.fdopen(fd, "rb"), info.st_size


def _counts(value: Any, most: int) -> bool:
    """`value` is a list of at most `most` non-negative integers."""
    return isinstance(value, list) and len(value) <= most and \
        all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)


def _table(head: dict[str, Any], where: str) -> tuple[dict[str, dict[str, Any]], int]:
    """The tensor table, and the bytes of data it describes: each entry a known dtype and a shape whose
    bytes its offsets span exactly, the entries end to end from offset 0."""
    table = {k: v for k, v in head.items() if k != "__metadata__"}
    spans = []
    for name, entry in table.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"} or \
                not isinstance(entry["dtype"], str) or entry["dtype"] not in _DTYPES or \
                not _counts(entry["shape"], 8) or not _counts(entry["data_offsets"], 2) or \
                len(entry["data_offsets"]) != 2:
            raise CharloomError(f"{where}: damaged model file (the header's entry for tensor {name!r})")
        begin, end = entry["data_offsets"]
        if end - begin != math.prod(entry["shape"]) * _DTYPES[entry["dtype"]].itemsize:
            raise CharloomError(f"{where}: damaged model file (tensor {name!r}: its offsets do not fit its shape)")
        spans.append((begin, end, name))
    at = 0
    for begin, end, name in sorted(spans):
        if begin != at:
            raise CharloomError(f"{where}: damaged model file (tensor {name!r}: its bytes do not follow the "
                                f"previous tensor's)")
        at = end
    return table, at


def _read_layout(f: BinaryIO, size: int, where: str) -> _Layout:
    """The header of an open model file, checked against the file's size before any tensor byte is read."""
    prefix = f.read(8)
    if len(prefix) < 8:
        raise CharloomError(f"{where}: not a charloom model file (only {len(prefix)} bytes)")
    (n,) = struct.unpack("<Q", prefix)
    if n > min(size - 8, MAX_HEADER):
        raise CharloomError(f"{where}: the file is truncated (header says {n} bytes, file has {size - 8})"
                            if n <= MAX_HEADER else f"{where}: not a charloom model file (a header of {n:,} "
                                                    f"bytes; at most {MAX_HEADER:,})")
    raw = f.read(n)
    if raw.count(b",") + raw.count(b"{") + raw.count(b"[") > MAX_VALUES:
        raise CharloomError(f"{where}: not a charloom model file (a header of over {MAX_VALUES:,} JSON values)")
    head = _json(raw, where, constants=False)
    meta = head.get("__metadata__") if isinstance(head, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CharloomError(f"{where}: not a charloom model file")
    if meta.get("version") != str(VERSION):
        raise CharloomError(f"{where}: model file version {meta.get('version')} is not supported by this charloom "
                            f"(reads version {VERSION})")
    table, data = _table(head, where)
    if 8 + n + data != size:
        raise CharloomError(f"{where}: " + ("the file is truncated" if 8 + n + data > size else "damaged model file")
                            + f" ({size:,} bytes; its header describes {8 + n + data:,})")
    return _Layout(meta, table, prefix + raw, data)


def _fields(meta: dict[str, Any], where: str) -> tuple[ModelConfig, dict[str, Any], bool, dict, dict]:
    """The header's fields, parsed and checked: (config, vocabulary as a dict, records, info, extra).

    Files written before `sha256_all` existed have no digest of their header: they load, their fields
    checked as any file's are, provided the header holds no field beyond those such files hold; otherwise a
    bit flipped in that digest's own name would pass a damaged file off as an older one."""
    unknown = sorted(set(meta) - {*FIELDS, DIGEST}) if FULL_DIGEST not in meta else []
    missing = [k for k in (*FIELDS, DIGEST) if k not in meta]
    if unknown or missing:
        what = f"unknown field {unknown[0]!r}" if unknown else f"no field {missing[0]!r}"
        raise CharloomError(f"{where}: damaged model file ({what} in the header)")
    if not all(isinstance(v, str) for v in meta.values()):
        raise CharloomError(f"{where}: damaged model file (a header field is not a string)")
    cfg = ModelConfig.from_dict(_json(meta["config"], where, "config"), where=f"{where}: config")
    vocab = _json(meta["vocab"], where, "vocabulary")
    records, info, extra = (_json(meta[k], where, k) for k in ("records", "info", "extra"))
    if not isinstance(records, bool):
        raise CharloomError(f"{where}: damaged model file (records: {meta['records'][:20]!r} is not true or false)")
    for name, value in (("info", info), ("extra", extra)):
        if not isinstance(value, dict):
            raise CharloomError(f"{where}: damaged model file ({name}: not a JSON object)")
    check_labelled(vocab.get("labels") if isinstance(vocab, dict) else None, records, f"{where}: damaged model file")
    return cfg, vocab, records, info, extra


class _SkipInit(TorchFunctionMode):
    """Makes torch.nn.init's initialisers do nothing: on the meta device their values are never read, and the
    first random one there imports torch's compiler (seconds and about 70 MB) to produce none."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__module__", None) == "torch.nn.init":
            return args[0] if args else kwargs["tensor"]
        return func(*args, **(kwargs or {}))


def _unbuilt(cfg: ModelConfig) -> CharRNN:
    """The model as shapes only: every tensor on the meta device, no storage, nothing initialised."""
    with torch.device("meta"), _SkipInit():
        return CharRNN(cfg)


def _check_config(cfg: ModelConfig, vocab: dict[str, Any], table: dict[str, Any], where: str) -> None:
    """The config within bounds, and its weights exactly the tensors, shapes and dtype the header lists.

    The expected shapes come from the model built as shapes only (see _unbuilt), so no config can make loading
    allocate more than the file holds."""
    for k, most in LIMITS.items():
        if getattr(cfg, k) > most:
            raise CharloomError(f"{where}: config: {k} {getattr(cfg, k):,} is more than a model file may hold "
                                f"({most:,})")
    if cfg.hidden_size < 1:
        raise CharloomError(f"{where}: config: hidden_size must be positive, got {cfg.hidden_size}")
    ids = Vocab.check_dict(vocab, where=f"{where}: vocabulary", strict_unicode=True)
    if cfg.vocab_size != ids:
        raise CharloomError(f"{where}: config says {cfg.vocab_size} ids but the vocabulary has {ids}")
    listed = {k.removeprefix("model."): e for k, e in table.items() if k.startswith("model.")}
    if 2 * cfg.num_layers > len(listed):  # each layer has at least its two weight matrices
        raise CharloomError(f"{where}: config: num_layers {cfg.num_layers:,} needs more weight tensors than the "
                            f"file's {len(listed)}")
    shapes = {k: list(v.shape) for k, v in _unbuilt(cfg).state_dict().items()}
    for k in sorted(shapes.keys() | listed.keys()):
        if k not in listed or k not in shapes:
            what = f"no tensor 'model.{k}'" if k not in listed else f"unexpected tensor 'model.{k}'"
            raise CharloomError(f"{where}: weights do not fit the config ({what})")
        if listed[k]["shape"] != shapes[k]:
            raise CharloomError(f"{where}: weights do not fit the config (tensor 'model.{k}' is {listed[k]['shape']}, "
                                f"the config makes it {shapes[k]})")
        if listed[k]["dtype"] != WEIGHTS:
            raise CharloomError(f"{where}: tensor 'model.{k}' is {listed[k]['dtype']}; a model file's weights are "
                                f"{WEIGHTS}")


def _read_data(f: BinaryIO, layout: _Layout, where: str) -> bytes:
    """The whole file, once its header has passed: checked against both digests."""
    f.seek(0)
    blob = f.read(layout.start + layout.data)
    if len(blob) != layout.start + layout.data or blob[:layout.start] != layout.head:
        raise CharloomError(f"{where}: the file changed while it was read")
    data = hashlib.sha256(memoryview(blob)[layout.start:]).hexdigest()
    if layout.meta[DIGEST] != data:
        raise CharloomError(f"{where}: checksum mismatch: the file is damaged or was changed after saving")
    if FULL_DIGEST in layout.meta and layout.meta[FULL_DIGEST] != _full_digest(layout.meta, layout.table, data):
        raise CharloomError(f"{where}: checksum mismatch: the header is damaged or was changed after saving")
    return blob


def _tensors(blob: bytes, table: dict[str, Any], where: str) -> dict[str, torch.Tensor]:
    """The file's tensors, as its header lists them; the model's weights finite."""
    try:
        tensors = st_load(blob)
    except SafetensorError as e:
        raise CharloomError(f"{where}: damaged model file ({str(e).splitlines()[0]})") from None
    if {k: (t.dtype, list(t.shape)) for k, t in tensors.items()} != \
            {k: (_DTYPES[e["dtype"]], e["shape"]) for k, e in table.items()}:
        raise CharloomError(f"{where}: damaged model file (its tensors differ from its header)")
    for k, t in tensors.items():
        if k.startswith("model.") and not bool(torch.isfinite(t).all()):
            raise CharloomError(f"{where}: tensor {k!r} holds NaN or infinite values")
    return tensors


@contextmanager
def _short_refusals() -> Iterator[None]:
    """A refusal quotes what the file holds (a tensor's name, a field's value): it stays one short line however
    long that is (repr has already escaped any line break)."""
    try:
        yield
    except CharloomError as e:
        if len(str(e)) <= MAX_MESSAGE:
            raise
        raise type(e)(str(e)[:MAX_MESSAGE] + "...") from None


def load(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Load a model file (or the model in a run folder). Refuses damaged, foreign and newer files, each with
    one line, before reading more than the header of any file whose header does not hold."""
    device = runtime.device_here(device)  # before the file is read: a device not here is the caller's mistake
    p = model_path(path)
    with _short_refusals():
        try:
            return _load(p, str(p), device)
        except OSError as e:  # a file that opens but fails to read (a disk error, a special file in /proc)
            raise CharloomError(f"{p}: cannot read ({e.strerror or e})") from None


def _load(p: Path, where: str, device: str | torch.device) -> Checkpoint:
    """Header, then fields, then shapes, then data: each step reads or builds only once the ones before held."""
    f, size = _open(p, where)
    with f:
        st = os.fstat(f.fileno())  # the very file read, whatever replaces it at its path meanwhile
        layout = _read_layout(f, size, where)
        cfg, vocab_data, records, info, extra = _fields(layout.meta, where)
        _check_config(cfg, vocab_data, layout.table, where)
        _check_ngram_header(extra, layout.table, where)
        blob = _read_data(f, layout, where)
    tensors = _tensors(blob, layout.table, where)
    del blob
    vocab = Vocab.from_dict(vocab_data, where=f"{where}: vocabulary", strict_unicode=True)
    # the file's own tensors become the weights (assign): no storage is made and initialised only to be
    # overwritten, and no meta tensor is copied (which would import torch's symbolic-shape machinery)
    model = _unbuilt(cfg)
    model.load_state_dict({k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")},
                          assign=True)
    model.to(device)
    rest = {k: v for k, v in tensors.items() if not k.startswith("model.")}
    counted = _labels_counted(info)
    mixture = _mixture(extra, rest, cfg.vocab_size, where, vocab.label_span if counted else range(0))
    if mixture is not None and not counted:
        mixture.uncounted = vocab.label_span
    return Checkpoint(model, vocab, records, info, p, rest, extra, mixture, (st.st_ino, st.st_mtime_ns, st.st_size))


def number(value: Any) -> int | float | None:
    """A figure from a model file's info: a finite number, else None (a file is read, not trusted: text, NaN, or an
    integer past a float's range, which its JSON may hold)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return value if math.isfinite(value) else None
    except OverflowError:
        return None


def plain(value: Any) -> Any:
    """Figures from a model file's info as strict JSON takes them: one that is not finite (NaN or Infinity, which
    Python's json writes and no other reader takes) becomes None, in nested objects and lists too."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def _labels_counted(info: dict) -> bool:
    """Whether a model's n-gram text holds records' labels after <bos>, as the network reads them (and its counts
    never predict them: `NGram.given`). Files from before it did hold records without labels: their mixtures score
    and write with the labels left out of the contexts (`Mixture.uncounted`)."""
    figures = info.get("ngram")
    return isinstance(figures, dict) and figures.get(LABELS_COUNTED) is True


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


def _finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t).all())


def _check_optimizer(model: CharRNN, state: dict, groups: list, where: str) -> None:
    """AdamW's state as the trainer saves it: groups that number the model's parameters in order, and for each
    parameter float32 moments of its shape (the second non-negative) and a finite step count."""
    params = list(model.parameters())
    numbered = [i for g in groups for i in (g.get("params") if isinstance(g.get("params"), list) else [None])]
    if numbered != list(range(len(params))):
        raise CharloomError(f"{where}: damaged resume file (optimizer: the parameter groups do not number the "
                            f"model's {len(params)} parameters)")
    for i, st in sorted(state.items()):
        if i >= len(params) or set(st) != {"step", "exp_avg", "exp_avg_sq"} or \
                any(t.dtype != torch.float32 or not _finite(t) for t in st.values()) or st["step"].numel() != 1 or \
                float(st["step"]) < 0 or st["exp_avg"].shape != params[i].shape or \
                st["exp_avg_sq"].shape != params[i].shape or bool((st["exp_avg_sq"] < 0).any()):
            raise CharloomError(f"{where}: damaged resume file (optimizer state of parameter {i})")


def _check_ranks(model: CharRNN, ranks: list, batch_size: Any, where: str) -> None:
    """Each process's RNG states as torch makes them, and its carried state one finite tensor per state name, each
    (first, batch, last) as config.state_shapes says, the batch the run's batch size; recent ids whole numbers."""
    rng = torch.get_rng_state()
    rows = batch_size if isinstance(batch_size, int) and not isinstance(batch_size, bool) else None
    for r, mine in enumerate(ranks):
        t = mine.get("rng.torch")
        if t is None or t.dtype != rng.dtype or t.shape != rng.shape:
            raise CharloomError(f"{where}: damaged resume file (the RNG state of process {r})")
        t = mine.get("rng.cuda")
        if t is not None and (t.dtype != torch.uint8 or t.dim() != 1):
            raise CharloomError(f"{where}: damaged resume file (the CUDA RNG state of process {r})")
        names = sorted(k for k in mine if k.startswith("carry."))
        if names and not _carry_ok([mine[k] for k in names], names, model.cfg, rows):
            raise CharloomError(f"{where}: damaged resume file (the carried state of process {r})")


def _carry_ok(carry: list[torch.Tensor], names: list[str], cfg: ModelConfig, rows: int | None) -> bool:
    shapes = list(state_shapes(cfg).items())
    if names != [f"carry.{i}" for i in range(len(shapes))]:
        return False
    batch = rows if rows is not None else carry[0].shape[1] if carry[0].dim() == 3 else -1
    for c, (name, (first, last)) in zip(carry, shapes):
        if tuple(c.shape) != (first, batch, last) or c.dtype not in (torch.float32, torch.bfloat16, torch.float16) \
                or not _finite(c):
            return False
        if name == RECENT and not (c.dtype == torch.float32 and bool(((c >= 0) & (c <= cfg.vocab_size)
                                                                        & (c == c.round())).all())):
            return False
    return True


def _check_against_model(model: CharRNN, run: RunState, where: str) -> None:
    """Every saved tensor has the kind and shape the model needs, so restoring it cannot fail half-way."""
    trained = run.trained or {}
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    if trained and ({k: v.shape for k, v in trained.items()} != shapes or
                    any(v.dtype != torch.float32 or not _finite(v) for v in trained.values())):
        raise CharloomError(f"{where}: damaged resume file (the trained weights do not fit the model)")
    _check_optimizer(model, run.optimizer["state"], run.optimizer["param_groups"], where)
    _check_ranks(model, run.ranks, run.configs["batch"].get("batch_size"), where)


def load_run(path: str | Path, device: str | torch.device = "cpu") -> tuple[Checkpoint, RunState]:
    """Read a resume file: the model file, and its run state checked field by field against the model."""
    ck = load(path, device)
    with _short_refusals():
        return ck, _run_state(ck, str(ck.path))


def _run_state(ck: Checkpoint, where: str) -> RunState:
    """The run state a loaded resume file holds, each field checked before it is used."""
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
    run = RunState(progress, {k: meta[k] for k in RUN_CONFIGS}, {"state": state, "param_groups": groups}, ranks,
                   trained or None, averaged)
    _check_against_model(ck.model, run, where)
    return run


def header(path: str | Path) -> tuple[ModelConfig, dict[str, Any], bool, dict[str, Any]]:
    """A model file's (config, vocabulary as a dict, records, info), from its header alone: checked as `load`
    checks them, without reading or checksumming the tensors (for a report, not for loading weights)."""
    p = model_path(path)
    with _short_refusals():
        f, size = _open(p, str(p))
        with f:
            cfg, vocab, records, info, _ = _fields(_read_layout(f, size, str(p)).meta, str(p))
    return cfg, vocab, records, info


def run_configs(path: str | Path) -> dict[str, dict[str, Any]]:
    """The options a resume file's run used: corpus, batch, train, and the model's config."""
    ck, run = load_run(path)
    return {**run.configs, "model": ck.config.to_dict()}
