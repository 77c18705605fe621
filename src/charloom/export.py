"""A model as an ONNX file that any ONNX runtime can run, checked against PyTorch, and as a web page.

One graph serves both uses: `ids` (B, T) and the state in, `logits` (B, T, V) and the new state out, with
B and T free, so a sampler feeds a start text in a few calls (pieces of bounded length, the state carried) and
then one character per call. The state tensors are named after the cell's (`h`, and `c` for an LSTM), each
(num_layers, B, H), and come back as `h_out` (`c_out`); a model with hashed context inputs adds `recent`
(1, B, grams - 1), its hashes computed in the graph. The recurrent layers are ONNX's own LSTM, GRU and RNN
operators.

The vocabulary, the records flag, the model config and the sampling defaults are stored in the file's
metadata under `charloom` (JSON), so the file stands alone: `onnx_generator.OnnxGenerator` and the web
page read everything they need from it.

Needs the `onnx` extra (onnx, onnxruntime); the web page, onnxruntime-web in the browser.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import atomic
from .checkpoint import Checkpoint, plain
from .config import (EXPORTED, RECENT, SPLIT_FIELDS, BatchConfig, CorpusConfig, ExportConfig, SampleOptions,
                     expand, onnx_named, state_shapes)
from .errors import CharloomError
from .onnx_generator import FORMAT, METADATA_KEY, VERSION, OnnxModel, heldout_bpc

FP32_TOLERANCE = 1e-4  # the largest logit or state difference from PyTorch an fp32 export may show
ORT_WEB_VERSION = "1.31.1"  # the onnxruntime-web the page loads when no runtime is copied in
ORT_WEB_URL = f"https://cdn.jsdelivr.net/npm/onnxruntime-web@{ORT_WEB_VERSION}/dist/"
RUNTIME_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
WEB_FILES = ("index.html", "charloom.js")  # the page's own files, package data under charloom/web
PAGE_TITLE = "<title>charloom</title>"  # what tells a page an export wrote from another in a --web folder
HELDOUT_BATCH = BatchConfig(batch_size=16, seq_len=256)  # how the int8 comparison reads the held-out split


@dataclass
class ExportReport:
    """What an export wrote and how close it came to PyTorch."""

    path: Path
    max_difference: float  # largest |ONNX - PyTorch| over logits and state on the check text
    bytes: int
    int8_path: Path | None = None
    int8_bytes: int = 0
    int8_difference: float = 0.0  # largest logit difference of the int8 file from PyTorch
    bpc: dict[str, float] = field(default_factory=dict)  # held-out bpc: "fp32", "int8"
    scored_characters: int = 0
    split_recorded: bool = True  # the model file says how its run split the text (files before it: the default)
    web: Path | None = None
    without: dict[str, Any] | None = None  # a model with an n-gram: its figures (the file holds the network alone)

    def lines(self) -> list[str]:
        out = [f"wrote {self.path} ({self.bytes / 1e6:.2f} MB); onnxruntime matches PyTorch within "
               f"{self.max_difference:.1e} (largest logit or state difference on the check text)"]
        if self.int8_path is not None:
            out.append(f"wrote {self.int8_path} ({self.int8_bytes / 1e6:.2f} MB, int8 weights); largest logit "
                       f"difference from PyTorch {self.int8_difference:.3f}")
            if self.bpc:
                out.append(f"held-out bpc over {self.scored_characters:,} characters: fp32 {self.bpc['fp32']:.4f}, "
                           f"int8 {self.bpc['int8']:.4f} ({self.bpc['int8'] - self.bpc['fp32']:+.4f})"
                           + ("" if self.split_recorded else "; the model file does not say how its run split the "
                              "text, so these are of the default split, which may hold text it trained on"))
        if self.without is not None:
            g = self.without
            figures = (f" (whole validation split: {g['network_val_bpc']:.3f} bpc alone, {g['val_bpc']:.3f} with it)"
                       if isinstance(g.get("val_bpc"), float) and isinstance(g.get("network_val_bpc"), float) else "")
            out.append(f"the model's n-gram of its training text is not exported: the ONNX file writes with the "
                       f"network alone{figures}")
        if self.web is not None:
            out.append(f"wrote a web page to {self.web}: serve the folder over HTTP (any static host, or `python -m "
                       f"http.server -d {self.web}`), not as a file")
        return out


class _Graph(nn.Module):
    """The model with its state as separate tensors, the shape an exporter and a runtime want."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, new = self.model(ids, tuple(state))
        return (logits, *new)


def metadata(ck: Checkpoint) -> dict[str, Any]:
    """What a runtime needs besides the weights: everything to encode, decode and sample."""
    v, cfg = ck.vocab, ck.config
    return {"format": FORMAT, "version": VERSION, "vocab": v.to_dict(), "itos": list(v.itos),
            "ids": {"pad": v.pad_id, "bos": v.bos_id, "eos": v.eos_id, "unk": v.unk_id},
            "records": bool(ck.records), "state": list(ck.model.state_names), "model": cfg.to_dict(),
            "sampling": SampleOptions().to_dict(),
            "info": _shared_info(ck.info),
            "left_out": ["ngram"] if ck.mixture is not None else []}  # what the model file mixes in and this cannot


def _shared_info(info: dict[str, Any]) -> dict[str, Any]:
    """The training figures an exported file carries, as strict JSON (a web page's JSON.parse takes no NaN), and
    its corpus's reading options without the folder this machine cached it in."""
    kept = {k: info[k] for k in ("step", "val_bpc", "chars_seen", "corpus", "corpus_config") if k in info}
    if isinstance(kept.get("corpus_config"), dict):
        kept["corpus_config"] = {k: v for k, v in kept["corpus_config"].items() if k != "cache_dir"}
    return plain(kept)


def export(ck: Checkpoint, cfg: ExportConfig, out: Path) -> ExportReport:
    """Write `out` (and its int8 twin, the web page, as `cfg` asks), each checked before it is reported."""
    cfg.check_unused()
    _need_onnx()
    _check_targets(ck, cfg, out)  # checks only: nothing is made on disk until every refusal has been said
    if cfg.int8:
        _heldout_corpus(ck, cfg)  # a text that cannot be read is said before any file is written
    model = ck.model.float().eval()
    # each file is made, checked and scored in a folder of this process's own beside --out, then renamed into
    # place: an export writing the same --out at the same time cannot swap a file under this one's checks
    tmp = _own_folder(out)
    try:
        made = tmp / "model.onnx"
        write_onnx(model, metadata(ck), made, cfg.opset)
        report = ExportReport(out, _checked(model, made, out), made.stat().st_size)
        if ck.mixture is not None:
            report.without = ck.info.get("ngram") if isinstance(ck.info.get("ngram"), dict) else {}
        if report.max_difference > FP32_TOLERANCE:
            _check_unreplaced(ck)
            _put(made, out)
            raise CharloomError(f"{out}: onnxruntime differs from PyTorch by {report.max_difference:.2e} (more "
                                f"than {FP32_TOLERANCE:g}); the file is kept for inspection")
        if cfg.int8:
            int8 = tmp / "model.int8.onnx"
            quantize(made, int8)
            report.int8_path, report.int8_bytes = _int8_path(out), int8.stat().st_size
            report.int8_difference = check(model, int8)
            report.bpc, report.scored_characters = compare_bpc(ck, cfg, {"fp32": made, "int8": int8})
            report.split_recorded = isinstance(ck.info.get("split"), dict)
        _check_unreplaced(ck)  # before any file is put in place
        if cfg.web:  # from this export's own file, before any is put in place
            report.web = write_web(made, expand(cfg.web), expand(cfg.runtime) if cfg.runtime else None)
        if cfg.int8:
            _put(int8, _int8_path(out))
        _put(made, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report


def _check_unreplaced(ck: Checkpoint) -> None:
    """The model file as loaded is still the one at its path: a run training in its folder may have saved a newer
    one since, whose folder's exports it removed then; this export's files would stay beside it."""
    if ck.path is not None and ck.stamp is not None and atomic.stamp(ck.path) != ck.stamp:
        raise CharloomError(f"{ck.path}: replaced since it was read for this export (a run training in its folder "
                            f"saved a new model); export again for the new one, or after the run ends")


def _own_folder(out: Path) -> Path:
    """A new folder for this export's files in the nearest folder of `out`'s that exists (so on its file system,
    and making none of the folders --out names before its files are whole), once what exports killed there
    left is gone."""
    above = next(a for a in (out.parent, *out.parent.parents) if a.is_dir())
    atomic.remove_leftovers(above)
    try:
        return atomic.temporary_folder(above / out.name)
    except OSError as e:
        raise CharloomError(f"--out {out}: cannot write in the folder {above} ({e.strerror or e})") from None


def _put(made: Path, out: Path) -> None:
    """A file this export made renamed to its place, the folders --out names made where missing."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(made, out)
    except OSError as e:
        raise CharloomError(f"--out {out}: cannot write in the folder {out.parent} ({e.strerror or e})") from None


def _checked(model: nn.Module, made: Path, out: Path) -> float:
    """`check` of the file made; one onnxruntime cannot run is put at `out` for inspection, and said so."""
    try:
        return check(model, made)
    except CharloomError as e:
        _put(made, out)
        raise CharloomError(f"{str(e).replace(str(made), str(out))}; the file is kept for inspection") from None


def write_onnx(model: nn.Module, meta: dict[str, Any], out: Path, opset: int = 17) -> None:
    """The model as ONNX with `meta` stored under `charloom`, written atomically."""
    import onnx

    shapes = state_shapes(model.cfg)
    names, ids = list(shapes), torch.zeros(1, 2, dtype=torch.long)
    state = tuple(torch.zeros(first, 1, last) for first, last in shapes.values())
    axes = {"ids": {0: "batch", 1: "time"}, "logits": {0: "batch", 1: "time"},
            **{n: {1: "batch"} for n in names}, **{f"{n}_out": {1: "batch"} for n in names}}
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # torch.export fixes the time axis of a fused recurrent module; the TorchScript-based exporter maps it to
        # ONNX's own LSTM/GRU/RNN operators, which take any length (it warns that it is the older path)
        warnings.simplefilter("ignore")
        raw = Path(tmp) / "model.onnx"
        # eval: the exporter puts the module back in the mode it found it in, dropout and all
        torch.onnx.export(_Graph(model).eval(), (ids, *state), str(raw), dynamo=False, opset_version=opset,
                          input_names=["ids", *names], output_names=["logits", *[f"{n}_out" for n in names]],
                          dynamic_axes=axes)
        graph = onnx.load(str(raw))
    for value in graph.graph.output:  # the recent ids' width and the memory's length are slices', left unnamed
        if value.name.removesuffix("_out") in shapes:
            first, last = shapes[value.name.removesuffix("_out")]
            dims = value.type.tensor_type.shape.dim
            dims[0].dim_value, dims[2].dim_value = first, last
    graph.producer_name = "charloom"
    graph.doc_string = "charloom character model: ids (batch, time) and state in, logits and state out"
    del graph.metadata_props[:]
    onnx.helper.set_model_props(graph, {METADATA_KEY: json.dumps(meta, ensure_ascii=False)})
    onnx.checker.check_model(graph)
    atomic.write_bytes(out, graph.SerializeToString())


def check_inputs(model: nn.Module, rows: int = 2, length: int = 48) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """A fixed check text (every id in turn, from two offsets) and a fixed non-zero state (recent ids: ids + 1)."""
    V, cfg = model.cfg.vocab_size, model.cfg
    ids = (torch.arange(length)[None] * 7 + torch.arange(rows)[:, None] * 3) % V  # (rows, length)
    g = torch.Generator().manual_seed(0)
    state = tuple(torch.randint(1, V + 1, (first, rows, last), generator=g).float() if name == RECENT
                  else torch.randn(first, rows, last, generator=g) * 0.5
                  for name, (first, last) in state_shapes(cfg).items())
    return ids, state


@torch.inference_mode()
def check(model: nn.Module, path: Path) -> float:
    """The largest |ONNX - PyTorch| over logits and state: the check text in one call, then one step."""
    onnx_model = OnnxModel.load(path)
    model.eval()  # no dropout: the graph has none
    ids, state = check_inputs(model)
    worst = 0.0
    for chunk in (ids, ids[:, :1]):
        want_logits, want_state = model(chunk, state)
        got_logits, got_state = onnx_model.forward(chunk.numpy(), tuple(s.numpy() for s in state))
        for got, want in zip((got_logits, *got_state), (want_logits, *want_state)):
            worst = max(worst, float(np.abs(got - want.numpy()).max()))
        state = want_state
    return worst


def quantize(src: Path, out: Path) -> None:
    """Dynamic int8 quantisation (weights int8, activations quantised per call) with onnxruntime's tools. Weights
    keep to 7 bits: without VNNI (AVX2 CPUs), onnxruntime sums pairs of uint8 x int8 products in int16, which
    saturates with 8-bit weights, and a file made on one machine runs on any."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))  # onnxruntime logs advice on pre-processing as a warning
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp_out = Path(tmp) / out.name
            quantize_dynamic(str(src), str(tmp_out), weight_type=QuantType.QInt8, reduce_range=True)
            atomic.write_bytes(out, tmp_out.read_bytes())
    finally:
        root.setLevel(level)


def _heldout_corpus(ck: Checkpoint, cfg: ExportConfig):
    """The text the int8 file is scored on, read as the model reads text: --text, or the training corpus."""
    from .batching import heldout_batches
    from .corpus import load as load_corpus

    saved = ck.info.get("corpus_config")
    if not cfg.text and not saved:
        raise CharloomError("--int8: the model file does not say which corpus it was trained on; give the text to "
                            "score with --text SOURCE")
    ccfg = CorpusConfig.recorded(saved) if saved else CorpusConfig()
    ccfg = ccfg.replace(records=ck.records, lower=ck.vocab.lower, normalize=ck.vocab.normalize)
    try:
        if cfg.text:
            ccfg = _reading_of(ccfg, cfg.text)
        corpus = load_corpus(ccfg, vocab=ck.vocab)
    except CharloomError as e:
        flag = "--text" if cfg.text else "--int8"
        hint = _text_hint(str(e)) if cfg.text else (" (the corpus the model was trained on); give the text to score "
                                                    "with --text SOURCE")
        raise CharloomError(f"{flag}: {e}{hint}") from None
    if next(heldout_batches(corpus, heldout_batch(ck)), None) is None:
        raise CharloomError(f"{'--text' if cfg.text else '--int8'}: {ccfg.source} has no held-out split to score the int8 file on (the text is too "
                            f"short); give a longer one with --text SOURCE")
    return corpus


def _text_hint(message: str) -> str:
    """A reading error about --text may name a corpus flag (--column) that export has not: say what it reads."""
    own = {f"--{f.name.replace('_', '-')}" for f in fields(ExportConfig)}
    if all(flag in own for flag in re.findall(r"--[a-z][a-z-]*", message)):
        return ""
    return ("; export has no such flag: it reads --text as the model's training corpus was read, with its columns "
            "or fields, so give a plain text file or one laid out as the training corpus was")


_FILE_OPTIONS = {  # CorpusConfig fields that choose text within one kind of file, by the formats that read them
    ("csv", "tsv"): ("columns", "column_sep", "header", "label_column"),
    ("jsonl",): ("field", "label_field"),
}


def _reading_of(trained: CorpusConfig, text: str) -> CorpusConfig:
    """How --text is read: as the training corpus was (encoding, case, normalisation, records, format, --ext), but
    where --text is a CSV, TSV or JSONL file by its name and the training corpus was not read as one, in that
    format; and with the training corpus's columns or fields only where --text is a file of their kind. So a model
    trained on a CSV's column can be scored on a plain text, and one trained on a text on a JSONL file's "text"
    field; a training corpus read with --format (a CSV named .txt, a file a record) keeps it."""
    from .corpus import bundled, resolve

    one_file = text in bundled() or expand(text).is_file()  # --ext chooses among a folder's files
    extensions = () if one_file else trained.extensions
    found = resolve(CorpusConfig(source=text, records=trained.records, encoding=trained.encoding,
                                 extensions=extensions)).format
    fmt = found if trained.format == "auto" or found in ("csv", "tsv", "jsonl") else trained.format
    reset = {name: getattr(CorpusConfig(), name) for formats, names in _FILE_OPTIONS.items() if fmt not in formats
             for name in names}
    if not any(getattr(trained, k) is not None and k not in reset for k in ("label_column", "label_field")):
        reset["label_map"] = None  # no column or field of labels in this kind of file
    if fmt == "jsonl" and trained.field is None:  # a JSONL file's text needs a field: the usual one
        reset["field"] = "text"
    return trained.replace(source=text, format=fmt if fmt == trained.format else "auto", extensions=extensions,
                           **reset)


def heldout_batch(ck: Checkpoint) -> BatchConfig:
    """HELDOUT_BATCH with the split the model's run made (its split, fraction and seed, which its model file
    records), so that the held-out text is the one the run held out; the default split for files before it."""
    split = ck.info.get("split")
    if not isinstance(split, dict):
        return HELDOUT_BATCH
    try:
        return HELDOUT_BATCH.replace(**{k: split[k] for k in SPLIT_FIELDS})
    except (KeyError, TypeError, CharloomError) as e:
        raise CharloomError(f"{ck.path}: the run's split it records is not one a run makes ({e})") from None


def compare_bpc(ck: Checkpoint, cfg: ExportConfig, files: dict[str, Path]) -> tuple[dict[str, float], int]:
    """Held-out bpc of each file on the same characters: the text's held-out split as training makes it."""
    from .batching import heldout_batches

    corpus, batch = _heldout_corpus(ck, cfg), heldout_batch(ck)
    figures, scored = {}, 0
    for name, path in files.items():
        figures[name], scored = heldout_bpc(OnnxModel.load(path), heldout_batches(corpus, batch), cfg.score_chars)
    return figures, scored


def write_web(onnx_path: Path, folder: Path, runtime: Path | None) -> Path:
    """A static page that generates in the browser: index.html, charloom.js, model.onnx, and the runtime's
    files in ort/ when `runtime` is given (otherwise the page loads them from ORT_WEB_URL)."""
    if runtime is not None:
        _check_runtime(runtime)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _copy_page(onnx_path, folder, runtime)
    except OSError as e:
        raise CharloomError(f"--web {folder}: cannot write the page ({e.strerror or e})") from None
    return folder


def _copy_page(onnx_path: Path, folder: Path, runtime: Path | None) -> None:
    if runtime is not None:
        (folder / "ort").mkdir(exist_ok=True)
        for name in RUNTIME_FILES:
            shutil.copyfile(runtime / name, folder / "ort" / name)
    source = resources.files("charloom") / "web"
    page = (source / "index.html").read_text(encoding="utf-8")
    where = "./ort/" if runtime is not None else ORT_WEB_URL
    page = page.replace("{{ORT_BASE}}", where).replace("{{ORT_VERSION}}", ORT_WEB_VERSION)
    atomic.write_bytes(folder / "index.html", page.encode("utf-8"))
    atomic.write_bytes(folder / "charloom.js", (source / "charloom.js").read_bytes())
    if onnx_path.resolve() != (folder / "model.onnx").resolve():
        shutil.copyfile(onnx_path, folder / "model.onnx")


def _check_runtime(runtime: Path) -> None:
    """A --runtime folder holds the three files the page loads, of the version it is written for."""
    missing = [n for n in RUNTIME_FILES if not (runtime / n).is_file()]
    if missing:
        raise CharloomError(f"--runtime {runtime}: no {missing[0]} there (give onnxruntime-web's dist folder, "
                            f"e.g. node_modules/onnxruntime-web/dist)")
    version = _runtime_version(runtime)
    if version not in (None, ORT_WEB_VERSION):
        raise CharloomError(f"--runtime {runtime}: onnxruntime-web {version}, but the page is written for "
                            f"{ORT_WEB_VERSION} (npm install onnxruntime-web@{ORT_WEB_VERSION})")


def _check_targets(ck: Checkpoint, cfg: ExportConfig, out: Path) -> None:
    """Where the files will go, checked before any is written and without making anything, so that a refusal
    (here or later, as --int8's text) leaves nothing behind: an .onnx name that is not a folder and not a model
    file, in a folder that can be written or made, and a --web folder that is a folder or can become one. The
    folders are made when their files are written."""
    if out.is_dir():
        raise CharloomError(f"--out {out}: is a folder; give the name of the ONNX file to write (e.g. "
                            f"{out / 'model.onnx'})")
    if not onnx_named(out):
        raise CharloomError(f"--out {out}: give a file name ending in .onnx (sample and the web page know an "
                            f"exported model by it)")
    if ck.path is not None and out.resolve() == ck.path.resolve():
        raise CharloomError(f"--out {out}: that is the model file being exported; choose another name")
    if cfg.int8 and _int8_path(out).is_dir():
        raise CharloomError(f"--out {out}: its int8 twin {_int8_path(out)} is a folder")
    _check_folder(out.parent, f"--out {out}")
    if cfg.web:
        if cfg.runtime:
            _check_runtime(expand(cfg.runtime))
        web = expand(cfg.web)
        if web.exists() and not web.is_dir():
            raise CharloomError(f"--web {web}: not a folder")
        _check_page_folder(web, out)
        try:
            _probe_folder(web)
        except OSError as e:  # a file in the way is "Not a directory", as mkdir says
            what = "write the page" if web.is_dir() else "make the folder"
            raise CharloomError(f"--web {web}: cannot {what} ({e.strerror or e})") from None


def _check_page_folder(web: Path, out: Path) -> None:
    """The page's files are not written over another page's or a user's: a --web folder may hold none of them, or
    the page an earlier export wrote there (its index.html is titled charloom), or --out's own model.onnx."""
    index = web / "index.html"
    try:
        if index.is_file() and PAGE_TITLE in index.read_text(encoding="utf-8", errors="replace")[:4096]:
            return
    except OSError:
        pass  # unreadable: not known to be a page an export wrote
    taken = [n for n in (*WEB_FILES, EXPORTED) if (web / n).exists()
             and not (n == EXPORTED and (web / n).resolve() == out.resolve())]
    if taken:
        raise CharloomError(f"--web {web}: holds a {taken[0]} that is not a page an export wrote, which the page "
                            f"would replace; choose an empty folder, or remove it")


def _check_folder(folder: Path, flag: str) -> None:
    """`folder` is a folder a file can be written in, or can be made one, checked without making it; otherwise a
    one-line error led by `flag`."""
    try:
        _probe_folder(folder)
    except NotADirectoryError as e:
        raise CharloomError(f"{flag}: {e.filename} is not a folder") from None
    except OSError as e:
        raise CharloomError(f"{flag}: cannot write in the folder {folder} ({e.strerror or e})") from None


def _probe_folder(folder: Path) -> None:
    """That `folder` is, or can be made, a folder to write in, checked without making anything: the nearest part of
    its path that exists (itself, if it does; where making it would start) is a folder a file can be made in.
    Otherwise NotADirectoryError naming that part (a file, or a link to nothing, can hold no folder), or the
    OSError a write there gets."""
    above = next(a for a in (folder, *folder.parents) if a.exists() or a.is_symlink())
    if not above.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(above))
    # what making the folder, or writing in it, finds: permissions, a read-only file system; the file has no name
    # on Linux and is removed on close elsewhere
    with tempfile.TemporaryFile(dir=above):
        pass


def _int8_path(out: Path) -> Path:
    return out.with_name(out.name[:-len(".onnx")] + ".int8.onnx")  # out is onnx_named, in any case


def _runtime_version(dist: Path) -> str | None:
    """The onnxruntime-web version of a dist folder, from its package.json one level up (None: not said)."""
    try:
        return str(json.loads((dist.parent / "package.json").read_text(encoding="utf-8")).get("version"))
    except (OSError, ValueError, AttributeError):
        return None


def _need_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise CharloomError("export: needs the 'onnx' extra: pip install 'charloom[onnx]'") from None
