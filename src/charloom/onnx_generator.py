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

from .config import EXPORTED, MEMORY, RECENT, ModelConfig, expand, state_shapes
from .decoding import Writer
from .errors import CharloomError
from .vocab import Vocab, check_labelled

METADATA_KEY = "charloom"
FORMAT = "charloom-onnx"
VERSION = 1
MAX_FILE_BYTES = 2 << 30  # protobuf's own limit: a larger file is not a model onnxruntime can read
MAX_METADATA_BYTES = 1 << 20  # the charloom entry of a model with a very large vocabulary is a few hundred KB
# the operators charloom's exporter writes (fp32 and int8, every cell and input kind): a file that asks
# for any other cannot be one, and an arbitrary graph may allocate without bound at run time
ALLOWED_OPS = frozenset({("", op) for op in (
    "Add", "Cast", "Concat", "Constant", "DequantizeLinear", "Div", "DynamicQuantizeLinear", "Erf", "GRU", "Gather",
    "Gelu", "LSTM", "MatMul", "MatMulInteger", "Mod", "Mul", "OneHot", "RNN", "Shape", "Slice", "Squeeze", "Sub",
    "Transpose", "Unsqueeze",
    "Identity",  # a weight that two products share (shifted keys)
    # an attention head: its window's mask and its weights (each as large as its inputs)
    "And", "Greater", "Not", "Softmax", "Trilu", "Where")} | {
    ("com.microsoft", "DynamicQuantizeLSTM")})
INT64, FLOAT = 7, 1  # onnx.TensorProto element types

State = tuple[np.ndarray, ...]  # each (first, B, last) float32: config.state_shapes


class OnnxModel:
    """An onnxruntime session over an exported file, with the metadata that describes it.

    `forward(ids (B, T) int64, state)` -> (logits (B, T, V) float32, new state), like CharRNN's."""

    def __init__(self, session: Any, meta: dict[str, Any], path: Path):
        self.session, self.meta, self.path = session, meta, path
        self.vocab: Vocab = meta["vocab_obj"]
        self.records: bool = meta["records"]
        self.config: ModelConfig = meta["config"]
        self.state_names: list[str] = meta["state"]
        self.shapes = list(state_shapes(self.config).values())  # each state tensor's (first, last), once
        info = meta.get("info")
        self.info: dict[str, Any] = info if isinstance(info, dict) else {}  # training figures, as a model file's
        # whether the model file it was exported from mixed in an n-gram, which an ONNX file cannot hold
        self.left_ngram = isinstance(meta.get("left_out"), list) and "ngram" in meta["left_out"]

    @classmethod
    def load(cls, path: str | Path, threads: int = 0) -> OnnxModel:
        """Open an exported file: its metadata checked, then a CPU session (threads: 0 = onnxruntime's choice)."""
        try:
            import onnxruntime as ort
        except ImportError:
            raise CharloomError("an .onnx model needs the 'onnx' extra: pip install 'charloom[onnx]'") from None
        if not str(path).strip():  # Path("") is the current folder
            raise CharloomError("no ONNX file or run folder named (an empty path)")
        p = expand(path)
        if p.is_dir() and (p / EXPORTED).is_file():  # a run folder means the file `charloom export` wrote there
            p = p / EXPORTED
        where = str(p)
        if not p.is_file():
            raise CharloomError(f"{where}: no such ONNX file" + (f" (nor {EXPORTED} in it)" if p.is_dir() else ""))
        if p.stat().st_size > MAX_FILE_BYTES:
            raise CharloomError(f"{where}: {p.stat().st_size:,} bytes is too large for a character model file")
        try:
            data = p.read_bytes()
        except OSError as e:  # a file that opens but fails to read (a disk error, a special file in /proc)
            raise CharloomError(f"{where}: cannot read ({e.strerror or e})") from None
        meta = _read_metadata(_proto(data, where), where)  # the whole file is checked before a session is made
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # errors only: warnings are for the exporter's author, not the user
        if threads:
            opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        try:
            session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own classes for unreadable and invalid graphs
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise CharloomError(f"{where}: not a model onnxruntime can run ({first})") from None
        return cls(session, meta, p)

    def zero_state(self, batch: int) -> State:
        return tuple(np.zeros((first, batch, last), np.float32) for first, last in self.shapes)

    def forward(self, ids: np.ndarray, state: State | None = None) -> tuple[np.ndarray, State]:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        state = self.zero_state(ids.shape[0]) if state is None else state
        feed = {"ids": ids, **{n: np.ascontiguousarray(s, dtype=np.float32) for n, s in zip(self.state_names, state)}}
        try:
            logits, *new = self.session.run(None, feed)
        except Exception as e:  # onnxruntime's own error classes
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise CharloomError(f"{self.path}: the model failed to run ({first})") from None
        (B, T), V = ids.shape, self.config.vocab_size
        want = [(first, B, last) for first, last in self.shapes]
        if logits.shape != (B, T, V) or [x.shape for x in new] != want:
            raise CharloomError(f"{self.path}: the model gave logits {logits.shape} and state "
                                f"{[x.shape for x in new][:4]} for ids {ids.shape}, not ({B}, {T}, {V}) and {want}")
        if not np.isfinite(logits).all():
            raise CharloomError(f"{self.path}: the model gave logits that are not finite numbers (a damaged file)")
        return logits, tuple(new)


def _proto(data: bytes, where: str) -> Any:
    """The file parsed as an ONNX model (the onnx package's protobuf classes), or a one-line error."""
    import onnx

    try:
        return onnx.load_model_from_string(data)
    except Exception as e:  # protobuf's DecodeError, and whatever a damaged file makes of the parser
        raise CharloomError(f"{where}: not an ONNX model ({type(e).__name__})") from None


def _read_metadata(model: Any, where: str) -> dict[str, Any]:
    """The `charloom` metadata checked field by field, then the graph checked against it: a one-line error names
    what is wrong."""
    props = {p.key: p.value for p in model.metadata_props}
    raw = props.get(METADATA_KEY)
    if raw is None:
        raise CharloomError(f"{where}: not a charloom model (no '{METADATA_KEY}' metadata; export one with "
                            f"`charloom export`)")
    if sum(len(k) + len(v) for k, v in props.items()) > MAX_METADATA_BYTES:
        raise CharloomError(f"{where}: metadata of over {MAX_METADATA_BYTES:,} bytes is not a charloom model's")
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
    check_labelled(vocab.labels, meta["records"], f"{where}: damaged charloom metadata")
    ids = {"pad": vocab.pad_id, "bos": vocab.bos_id, "eos": vocab.eos_id, "unk": vocab.unk_id}
    if meta.get("itos") != list(vocab.itos) or meta.get("ids") != ids:  # what the web page reads instead
        raise CharloomError(f"{where}: damaged charloom metadata (itos or ids disagree with the vocabulary)")
    cfg = ModelConfig.from_dict(meta.get("model"), where=f"{where}: model")
    if cfg.vocab_size != len(vocab):
        raise CharloomError(f"{where}: model reads {cfg.vocab_size} ids but the vocabulary has {len(vocab)}")
    if meta.get("state") != list(state_shapes(cfg)):
        raise CharloomError(f"{where}: state {str(meta.get('state'))[:60]} is not the {cfg.cell}'s "
                            f"{list(state_shapes(cfg))}")
    meta = {**meta, "vocab_obj": vocab, "config": cfg}
    _check_graph(model.graph, meta, where)
    return meta


def _check_graph(graph: Any, meta: dict[str, Any], where: str) -> None:
    """The graph is one charloom's exporter writes: its operators only, no data outside the file, and the inputs
    and outputs the metadata promises, with their types and fixed widths."""
    for node in graph.node:
        if (node.domain, node.op_type) not in ALLOWED_OPS or any(a.g.node or a.graphs for a in node.attribute):
            raise CharloomError(f"{where}: operator {node.domain + '.' if node.domain else ''}{node.op_type[:40]} "
                                f"is not one charloom's exporter writes")
    if any(t.data_location == 1 for t in graph.initializer):  # TensorProto.EXTERNAL
        raise CharloomError(f"{where}: weights stored outside the file are not read")
    cfg, V = meta["config"], meta["config"].vocab_size
    shapes = state_shapes(cfg)  # the metadata's state names are these (checked before)
    want_in = {"ids": (INT64, (None, None)), **{n: (FLOAT, (first, None, last)) for n, (first, last) in shapes.items()}}
    want_out = {"logits": (FLOAT, (None, None, V)),
                **{f"{n}_out": (FLOAT, (first, None, last)) for n, (first, last) in shapes.items()}}
    for side, values, want in (("inputs", graph.input, want_in), ("outputs", graph.output, want_out)):
        given = {v.name: v for v in values if v.name not in {t.name for t in graph.initializer}}
        if sorted(given) != sorted(want):
            raise CharloomError(f"{where}: graph {side} are {sorted(given)[:8]}, not {sorted(want)}")
        for name, (kind, dims) in want.items():
            t = given[name].type.tensor_type
            shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
            if t.elem_type != kind or len(shape) != len(dims) or any(w is not None and d != w
                                                                     for d, w in zip(shape, dims)):
                raise CharloomError(f"{where}: graph {side[:-1]} {name} is type {t.elem_type} of shape {shape}, not "
                                    f"type {kind} of shape {dims} (None: any)")


class OnnxGenerator(Writer):
    """The Generator's interface (generate, stream) over an exported file, run by onnxruntime."""

    reads_in_pieces = True

    def __init__(self, model: OnnxModel):
        self.model = model
        self.vocab, self.records = model.vocab, model.records
        self.num_layers, self.hidden_size = model.config.num_layers, model.config.hidden_size
        self.head_width = model.config.head_width
        self.config = model.config
        self.path = model.path

    @classmethod
    def load(cls, path: str | Path, threads: int = 0) -> OnnxGenerator:
        return cls(OnnxModel.load(path, threads))

    def _start(self, prefix: list[int], n: int) -> tuple[np.ndarray, State]:
        """The start text read `piece_rows()` characters per call with the state carried (the graph gives every
        piece's (1, T, V) logits, so one piece bounds the work); the last piece's final row predicts what follows."""
        ids, rows, state = np.asarray([prefix], dtype=np.int64), self.piece_rows(), None  # ids (1, T)
        for at in range(0, max(ids.shape[1], 1), rows):  # an empty prefix still makes its one call
            logits, state = self.model.forward(ids[:, at:at + rows], state)
        return np.repeat(logits[:, -1], n, 0), tuple(np.repeat(s, n, 1) for s in state)  # (n, V), each (first, n, last)

    def _step(self, ids: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        logits, state = self.model.forward(ids[:, None], state)
        return logits[:, 0], state

    def _read_logits(self, ids: Sequence[int]) -> np.ndarray:
        """(T, V) logits of `ids` from a zero state, read as `_start` reads: `logit_rows()` characters per call with
        the state carried, so the graph's work is one piece's whatever the text's length (one call's logits, to
        float rounding). Each piece's rows go straight into the one (T, V) array returned: no second copy."""
        x, rows, state = np.asarray([list(ids)], dtype=np.int64), self.logit_rows(), None  # (1, T)
        out = np.empty((x.shape[1], self.model.config.vocab_size), np.float32)  # (T, V)
        for at in range(0, max(x.shape[1], 1), rows):  # an empty text still makes its one call, as it did
            logits, state = self.model.forward(x[:, at:at + rows], state)  # (1, rows, V)
            out[at:at + rows] = logits[0]
        return out

    def state_arrays(self, state: State) -> dict[str, np.ndarray]:
        # the cell's alone: not the recent ids, nor an attention head's memory
        return {name: s for name, s in zip(self.model.state_names, state) if name not in (RECENT, MEMORY)}


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
