"""Generating from an exported ONNX file with onnxruntime: no torch, no Python model code, same text.

    gen = OnnxGenerator.load("model.onnx")
    gen.generate("ROMEO.", 200, seed=1)          # the same text as the PyTorch Generator with seed 1

The file is the one `charloom export` writes (see export.py): the graph, and under the metadata key
`charloom` the vocabulary, records flag and model config. Everything is checked before a session is made.
Choosing characters is the shared `decoding.Writer`'s, so at fp32 a seed gives the PyTorch backend's text.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .config import CELL_STATES, ModelConfig
from .decoding import Writer
from .errors import CharloomError
from .vocab import Vocab

METADATA_KEY = "charloom"
FORMAT = "charloom-onnx"
VERSION = 1
MAX_FILE_BYTES = 4 << 30  # a larger file is not a character model (onnx's own protobuf limit is 2 GB)

State = tuple[np.ndarray, ...]  # each (num_layers, B, H) float32


class OnnxModel:
    """An onnxruntime session over an exported file, with the metadata that describes it.

    `forward(ids (B, T) int64, state)` -> (logits (B, T, V) float32, new state), like CharRNN's."""

    def __init__(self, session: Any, meta: dict[str, Any], path: Path):
        self.session, self.meta, self.path = session, meta, path
        self.vocab: Vocab = meta["vocab_obj"]
        self.records: bool = meta["records"]
        self.config: ModelConfig = meta["config"]
        self.state_names: list[str] = meta["state"]
        info = meta.get("info")
        self.info: dict[str, Any] = info if isinstance(info, dict) else {}  # training figures, as a model file's

    @classmethod
    def load(cls, path: str | Path, threads: int = 0) -> OnnxModel:
        """Open an exported file: its metadata checked, then a CPU session (threads: 0 = onnxruntime's choice)."""
        try:
            import onnxruntime as ort
        except ImportError:
            raise CharloomError("an .onnx model needs the 'onnx' extra: pip install 'charloom[onnx]'") from None
        p = Path(path).expanduser()
        where = str(p)
        if not p.is_file():
            raise CharloomError(f"{where}: no such ONNX file")
        if p.stat().st_size > MAX_FILE_BYTES:
            raise CharloomError(f"{where}: {p.stat().st_size:,} bytes is too large for a character model file")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # errors only: warnings are for the exporter's author, not the user
        if threads:
            opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        try:
            session = ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own classes for unreadable and invalid graphs
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise CharloomError(f"{where}: not a model onnxruntime can run ({first})") from None
        meta = _read_metadata(session.get_modelmeta().custom_metadata_map, where)
        _check_graph(session, meta, where)
        return cls(session, meta, p)

    def zero_state(self, batch: int) -> State:
        cfg = self.config
        return tuple(np.zeros((cfg.num_layers, batch, cfg.hidden_size), np.float32) for _ in self.state_names)

    def forward(self, ids: np.ndarray, state: State | None = None) -> tuple[np.ndarray, State]:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        state = self.zero_state(ids.shape[0]) if state is None else state
        feed = {"ids": ids, **{n: np.ascontiguousarray(s, dtype=np.float32) for n, s in zip(self.state_names, state)}}
        logits, *new = self.session.run(None, feed)
        return logits, tuple(new)


def _read_metadata(props: dict[str, str], where: str) -> dict[str, Any]:
    """The `charloom` metadata, checked field by field: a one-line error names what is wrong."""
    raw = props.get(METADATA_KEY)
    if raw is None:
        raise CharloomError(f"{where}: not a charloom model (no '{METADATA_KEY}' metadata; export one with "
                            f"`charloom export`)")
    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise CharloomError(f"{where}: damaged charloom metadata ({type(e).__name__})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CharloomError(f"{where}: not a charloom model (metadata format {str(meta.get('format'))[:40]!r})"
                            if isinstance(meta, dict) else f"{where}: damaged charloom metadata (not an object)")
    if meta.get("version") != VERSION:
        raise CharloomError(f"{where}: charloom ONNX version {str(meta.get('version'))[:20]} is not supported by "
                            f"this charloom (it reads version {VERSION})")
    vocab = Vocab.from_dict(meta.get("vocab"), where=f"{where}: vocabulary", strict_unicode=True)
    if not isinstance(meta.get("records"), bool):
        raise CharloomError(f"{where}: damaged charloom metadata (records is not true or false)")
    cfg = ModelConfig.from_dict(meta.get("model"), where=f"{where}: model")
    if cfg.vocab_size != len(vocab):
        raise CharloomError(f"{where}: model reads {cfg.vocab_size} ids but the vocabulary has {len(vocab)}")
    if meta.get("state") != list(CELL_STATES[cfg.cell]):
        raise CharloomError(f"{where}: state {str(meta.get('state'))[:60]} is not the {cfg.cell}'s "
                            f"{list(CELL_STATES[cfg.cell])}")
    return {**meta, "vocab_obj": vocab, "config": cfg}


def _check_graph(session: Any, meta: dict[str, Any], where: str) -> None:
    """The graph's inputs and outputs are the ones the metadata promises, with the promised widths."""
    cfg, names = meta["config"], meta["state"]
    inputs = {i.name: i.shape for i in session.get_inputs()}
    outputs = {o.name: o.shape for o in session.get_outputs()}
    want_in, want_out = ["ids", *names], ["logits", *[f"{n}_out" for n in names]]
    if sorted(inputs) != sorted(want_in) or sorted(outputs) != sorted(want_out):
        raise CharloomError(f"{where}: graph takes {sorted(inputs)} and gives {sorted(outputs)}, not {want_in} and "
                            f"{want_out}")
    if outputs["logits"][-1] != cfg.vocab_size or any(inputs[n][-1] != cfg.hidden_size for n in names):
        raise CharloomError(f"{where}: graph widths differ from the metadata's (vocabulary {cfg.vocab_size}, "
                            f"hidden {cfg.hidden_size})")


class OnnxGenerator(Writer):
    """The Generator's interface (generate, stream) over an exported file, run by onnxruntime."""

    def __init__(self, model: OnnxModel):
        self.model = model
        self.vocab, self.records = model.vocab, model.records
        self.num_layers, self.hidden_size = model.config.num_layers, model.config.hidden_size
        self.path = model.path

    @classmethod
    def load(cls, path: str | Path, threads: int = 0) -> OnnxGenerator:
        return cls(OnnxModel.load(path, threads))

    def _start(self, prefix: list[int], n: int) -> tuple[np.ndarray, State]:
        logits, state = self.model.forward(np.asarray([prefix], dtype=np.int64))  # the start text in one call
        return np.repeat(logits[:, -1], n, 0), tuple(np.repeat(s, n, 1) for s in state)  # (n, V), (L, n, H)

    def _step(self, ids: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        logits, state = self.model.forward(ids[:, None], state)
        return logits[:, 0], state

    def read_logits(self, ids: Sequence[int]) -> np.ndarray:
        return self.model.forward(np.asarray([list(ids)], dtype=np.int64))[0][0]  # (T, V)

    def state_arrays(self, state: State) -> dict[str, np.ndarray]:
        return dict(zip(self.model.state_names, state))


def heldout_bpc(model: OnnxModel, batches: Iterable[Any], max_characters: int = 0) -> tuple[float, int]:
    """(bits per character, characters scored) of `model` on batches as evaluation.evaluate reads them:
    contiguous batches carry the state, padding targets are not scored."""
    total, count, state = 0.0, 0, None
    for b in batches:
        x, y = np.asarray(b.x), np.asarray(b.y)
        logits, state = model.forward(x, state if b.continues and state is not None else None)
        logits = logits.astype(np.float64)
        top = logits.max(-1, keepdims=True)
        logz = np.log(np.exp(logits - top).sum(-1)) + top[..., 0]  # (B, T)
        nll = logz - np.take_along_axis(logits, y[..., None], -1)[..., 0]
        keep = y != b.pad_id
        total += float(nll[keep].sum())
        count += int(keep.sum())
        if max_characters and count >= max_characters:
            break
    if count == 0:
        raise CharloomError("nothing to score: the held-out text has fewer than two characters")
    return total / count / math.log(2), count
