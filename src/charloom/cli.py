"""The command line: the only place that reads argv. Each command is a thin map onto library calls.

Flags are built from the option dataclasses in `config.py` (help text, types and choices included),
so an option is declared once.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import signal
import sys
import time
import types
import typing
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn

from .config import (BatchConfig, Config, CorpusConfig, EvalConfig, ExportConfig, ModelConfig, SampleConfig,
                     SampleOptions, ServeConfig, TrainConfig, expand, onnx_named)
from .errors import CharloomError, CharloomWarning, ConfigError

if TYPE_CHECKING:  # the corpus module (and torch) load only for the commands that read text
    from .corpus import Corpus

COLOUR_CHARS = 10_000  # eval --color shows this much of the text
MAX_INFO_SAMPLES = 100  # a report's samples are a glimpse; `charloom sample` makes many
# how long, in spins, torch's OpenMP threads (libgomp) wait busily for more work before they sleep, in training;
# libgomp's own 300,000 keeps a waiting thread on its CPU for milliseconds, so two runs whose threads outnumber the
# cores spend their time spinning for each other. Writing at batch 1 keeps the default: its threads wait between
# characters, and waking them cost more. Read once, when torch loads: the CLI sets it first (a user's value wins)
SPIN_COUNT = "10000"

# ---- flags from dataclasses --------------------------------------------------------------------------
_ESCAPES = {"\\n": "\n", "\\t": "\t", "\\r": "\r", "\\0": "\0", "\\\\": "\\"}
# a help text that states its default in words ("(default: the run folder)", "; default: no label"), which says
# more than the field's value would ('' or 0 standing for "chosen for you"): that value is not appended to it
_STATES_DEFAULT = re.compile(r"(?:^|[(;]\s*)default\b")


def _unescape(value: str) -> str:
    r"""Let `--separator '\n\n'` mean two newlines, as a user types it in a shell."""
    out, i = [], 0
    while i < len(value):
        pair = value[i:i + 2]
        if pair in _ESCAPES:
            out.append(_ESCAPES[pair])
            i += 2
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def _flag_type(name: str, base: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return base(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if base is int else 'a number'}") from None

    convert.__name__ = name
    return convert


def add_options(parser: argparse.ArgumentParser, cls: type[Config], skip: Sequence[str] = ()) -> None:
    """Add one flag per field of `cls` (help, type and choices from the field); unset flags stay unset."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(cls.__doc__.splitlines()[0] if cls.__doc__ else cls.__name__)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        tp = hints[f.name]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
            tp = args[0]  # X | None: the flag takes an X
        flag = f.metadata.get("flag") or f.name
        default, text = f.default, f.metadata.get("help", "")
        if not (default is None or isinstance(default, tuple) or _STATES_DEFAULT.search(text)):
            text += f" (default: {default!r})"
        kw: dict[str, Any] = {"help": text, "default": argparse.SUPPRESS}
        if f.metadata.get("metavar"):
            kw["metavar"] = f.metadata["metavar"]
        if flag == "source":
            parser.add_argument("source", nargs="?", **kw)
            continue
        name = "--" + flag.replace("_", "-")
        kw["dest"] = f.name
        if tp is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(tp) is Literal:
            kw["choices"] = typing.get_args(tp)
        elif typing.get_origin(tp) is tuple:
            kw["action"] = "append"
            item = typing.get_args(tp)[0]
            if item in (int, float):
                kw["type"] = _flag_type(item.__name__, item)
        elif tp in (int, float):
            kw["type"] = _flag_type(tp.__name__, tp)
        elif f.name in ("separator", "column_sep"):
            kw["type"] = _unescape
        if f.name == "stop":
            kw["type"] = _unescape
        group.add_argument(name, **kw)


def options(ns: argparse.Namespace, cls: type[Config]) -> Any:
    """The `cls` instance for the flags the user gave (defaults for the rest), each marked as given."""
    names = {f.name for f in dataclasses.fields(cls)}
    given = {k: v for k, v in vars(ns).items() if k in names}
    return cls(**given).marked(given)


# ---- commands ----------------------------------------------------------------------------------------
def cmd_corpora(ns: argparse.Namespace) -> None:
    from . import corpus

    rows = [("name", "kind", "characters", "records", "stored", "licence")]
    for b in corpus.bundled().values():
        rows.append((b.name, b.kind, f"{b.characters:,}", f"{b.records:,}" if b.records else "-",
                     f"{b.compressed_bytes / 1e6:.2f} MB", b.license))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def corpus_info(ccfg: CorpusConfig, bcfg: BatchConfig) -> dict[str, Any]:
    """Figures about a corpus and its split, as `charloom corpus-info` prints them. A corpus these options cannot
    split for training still has its figures: the split's are None and `split_error` says why."""
    import numpy as np

    from . import corpus

    t0 = time.perf_counter()
    c = corpus.load(ccfg)
    load_s = time.perf_counter() - t0
    v = c.vocab
    counts = [(int(n), v.itos[i]) for i, n in enumerate(c.counts()) if n]
    counts.sort(reverse=True)
    info: dict[str, Any] = {
        "source": c.name,  # printable: a file name that is not UTF-8 shows its bytes escaped
        "kind": "records" if c.is_records else "continuous",
        "format": c.stats["format"],
        "files": c.stats["files"],
        "characters": int(len(c.ids)),
        "vocab_size": len(v),
        "vocab_characters": len(v.chars),
        "unknown_characters": c.stats["unknown_characters"],
        "split": bcfg.split,
        **_split_figures(c, bcfg),
        "most_common": "".join(ch for _, ch in counts[:40]),
        "load_seconds": round(load_s, 3),
    }
    if c.is_records:
        lengths = c.lengths()
        info.update({
            "records": c.num_records,
            "record_length": {"min": int(lengths.min()), "mean": round(float(lengths.mean()), 1),
                              "max": int(lengths.max())},
            "empty_records_skipped": c.stats["empty_records_skipped"],
            "overlong_records": int((lengths > bcfg.max_record_len).sum()),
        })
    if c.labels is not None:
        info["labels"] = {name: int(n) for name, n in zip(v.labels, np.bincount(c.labels, minlength=len(v.labels)))}
    return info


def _split_figures(c: Corpus, bcfg: BatchConfig) -> dict[str, Any]:
    """The split a default run makes of corpus c: its sizes, or None for each and why it cannot be made."""
    from . import batching

    try:
        batching.check_options(c.is_records, c.labels is not None, c.name, bcfg)
        data = batching.prepare(c, bcfg.settled(TrainConfig().ngram))
    except CharloomError as e:
        return dict.fromkeys(("train", "validation", "fit", "batches_per_epoch")) | {"split_error": str(e)}
    return {"train": data.train_size, "validation": data.val_size,
            "fit": data.fit_size,  # training text (or records) left out for the n-gram's mixture
            "batches_per_epoch": data.train.batches_in_epoch(0)}


def cmd_corpus_info(ns: argparse.Namespace) -> None:
    info = corpus_info(options(ns, CorpusConfig), options(ns, BatchConfig))
    if ns.json:
        print(json.dumps(info, indent=2))
    else:
        _print_corpus_info(info)
    if "split_error" in info:  # the figures stand; training with these options would stop here
        raise CharloomError(info["split_error"])


def _print_corpus_info(info: dict[str, Any]) -> None:
    """`corpus_info`'s figures as `charloom corpus-info` prints them for a person."""
    unit = "records" if info["kind"] == "records" else "characters"
    print(f"source           {info['source']} ({info['kind']}, {info['format']}, {info['files']} file(s))")
    print(f"characters       {info['characters']:,}")
    if "records" in info:
        rl = info["record_length"]
        print(f"records          {info['records']:,} (length {rl['min']}-{rl['max']}, mean {rl['mean']}; "
              f"{info['empty_records_skipped']} empty skipped, {info['overlong_records']} over the length limit)")
    labels = info.get("labels")
    print(f"vocabulary       {info['vocab_size']} ids: {info['vocab_characters']} characters + 4 special tokens"
          + (f" + {len(labels)} label tokens" if labels else ""))
    if labels:
        print("labels           " + ", ".join(f"{name} ({n:,} records)" for name, n in labels.items()))
    if info["unknown_characters"]:
        print(f"unknown          {info['unknown_characters']:,} characters below --min-count, read as <unk>")
    if "split_error" not in info:
        fit = f" (and {info['fit']:,} left out of training to fit the n-gram's mixture on)" if info["fit"] else ""
        print(f"split ({info['split']})     {info['train']:,} train / {info['validation']:,} validation {unit}{fit}")
        print(f"batches/epoch    {info['batches_per_epoch']:,}")
    print(f"most common      {info['most_common']!r}")
    print(f"loaded in        {info['load_seconds']:.3f} s")


def cmd_train(ns: argparse.Namespace) -> int:
    """Train; the exit status is 0 when the budget ran out, 128 + the signal's number when a signal stopped the
    run (saved, to continue with --resume), as a shell expects of a program a signal ended."""
    from .trainer import CONFIGS, train

    names = {f.name for cls in CONFIGS.values() for f in dataclasses.fields(cls)}
    given = {k: v for k, v in vars(ns).items() if k in names}  # only the flags given: resuming keeps the rest
    _check_sample_flags(given)
    stopped_by = train(**given).stopped_by
    return 128 + signal.Signals[stopped_by] if stopped_by in ("SIGINT", "SIGTERM") else 0


def _check_sample_flags(given: dict[str, Any]) -> None:
    """--sample-start and --sample-temperature shape the samples a run shows: beside --no-progress or
    --sample-length 0, which show none, they would be dropped. (Python's progress=False is its usual quiet call,
    where a caller's own sample options are left alone.)"""
    none = "--no-progress" if given.get("progress") is False else "--sample-length 0" \
        if given.get("sample_length") == 0 else None
    for name in ("sample_start", "sample_temperatures"):
        if none and name in given:
            flag = "--sample-start" if name == "sample_start" else "--sample-temperature"
            raise CharloomError(f"{flag}: shapes the samples shown at each evaluation, and {none} shows none; "
                                f"leave one out")


class _Output:
    """The file `--output` names, open for writing. A failed write (a full disk, /dev/full) is one line naming
    the flag, whether it shows at a write or only at the final flush."""

    def __init__(self, path: str, reading: str | Path | None = None):
        """reading: the model file the samples come from, which the output must not replace."""
        self.path = path
        self.jsonl = path.lower().endswith((".jsonl", ".ndjson"))
        from .checkpoint import MODEL_FILE
        from .curves import CHART_FILE, METRICS_FILE

        target = expand(path)
        if target.suffix.lower() in (".safetensors", ".onnx") or (
                reading is not None and target.exists() and Path(reading).exists() and target.samefile(reading)):
            raise CharloomError(f"--output: {path} is a model file's name; samples are written to a .txt or "
                                f".jsonl file, never over a model")
        if target.name in (METRICS_FILE, CHART_FILE) and (target.parent / MODEL_FILE).exists():
            raise CharloomError(f"--output: {path} is a file of the run in {target.parent}; write the samples to "
                                f"another name")
        try:
            self.file = open(target, "w", encoding="utf-8")
        except OSError as e:
            raise self._error(e) from None

    def _error(self, e: OSError) -> CharloomError:
        return CharloomError(f"--output: cannot write {self.path} ({e.strerror or e})")

    def write(self, text: str) -> None:
        try:
            self.file.write(text)
        except OSError as e:
            raise self._error(e) from None

    def close(self, failed: bool = False) -> None:
        """Flush and close; after another failure, quietly (that one is the error to show)."""
        try:
            self.file.close()
        except OSError as e:
            if not failed:
                raise self._error(e) from None


def _typed_starts() -> Iterator[str]:
    """Start texts typed one per line, until an empty line or the end of input. The bytes are decoded here, so
    that ones the terminal's encoding cannot read are one line naming the flag, whatever Python's stdin does."""
    raw = getattr(sys.stdin, "buffer", None)
    encoding = sys.stdin.encoding or "utf-8"
    while True:
        print("start text (empty line or Ctrl-D to end)> ", end="", file=sys.stderr, flush=True)
        line = raw.readline() if raw is not None else sys.stdin.readline()
        if isinstance(line, bytes):
            try:
                line = line.decode(encoding)
            except UnicodeDecodeError as e:
                raise CharloomError(f"--interactive: the line typed is not valid {encoding} (bytes "
                                    f"{line[e.start:e.end].hex(' ')} at byte {e.start})") from None
        if not line.strip():
            return
        yield line.rstrip("\r\n")


def _sample_row(opts: Any, i: int, text: str, mark: Any, model_file: Any) -> str:
    """One JSON line: sample i with the options that made it, the seed being its own (seed + i)."""
    seed = None if opts.seed is None else opts.seed + i
    row = {**opts.to_dict(), "seed": seed, "text": text, "index": i, "checkpoint": str(model_file)}
    if mark is not None:
        row.update({"new": mark.new, "copied": mark.copied})
    return json.dumps(row, ensure_ascii=False) + "\n"


def _show(i: int, piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()


def _novelty_summary(verdicts: list[bool]) -> None:
    new = sum(verdicts)
    print(f"charloom: novelty: {new} of {len(verdicts)} samples are new ({new / len(verdicts):.0%}); "
          f"the rest copy the training corpus", file=sys.stderr)


def _novelty(ns: argparse.Namespace, ck: Any) -> Any:
    """The novelty check `--novelty` asks for (None without it)."""
    if not (ns.novelty or ns.novelty_source):
        return None
    from .novelty import Novelty

    return Novelty.for_checkpoint(ck, ns.novelty_source)


def _runs(interactive: bool, cfg: SampleConfig, base: SampleOptions) -> list[SampleOptions] | None:
    """The generations the flags ask for; None for --interactive, whose start texts are the lines typed."""
    if not interactive:
        return cfg.each(base)
    if cfg.starts:
        raise CharloomError("--start: with --interactive the start texts are the lines typed; give one or the other")
    if len(cfg.temperature_list) > 1:  # one sample set a line: a sweep's other temperatures would be dropped
        raise CharloomError("--temperature: with --interactive each line typed is written at one temperature; give "
                            "one")
    return None


def _seeded(base: SampleOptions, output: str | None) -> SampleOptions:
    """Samples written to a file without --seed: a seed drawn here (for each line typed, with --interactive), so
    that each record names the one that made it and the text can be made again (as the server says the seed it
    drew)."""
    if output and base.seed is None:
        return base.replace(seed=int.from_bytes(os.urandom(6), "big"))
    return base


def _check_asked(gen: Any, runs: Sequence[SampleOptions], label: str | None) -> None:
    """Start texts and a label the model cannot read are refused, like the memory, before anything is written:
    a sample set's heading, or the file --output names."""
    for opts in runs:
        _check_start(gen, opts.start, notes=False)
    if label is not None:
        from .decoding import label_token

        label_token(gen.vocab, label)


def cmd_sample(ns: argparse.Namespace) -> None:
    if ns.color and ns.output:  # the file holds the text alone: the colours would be dropped
        raise CharloomError("--color: not with --output (the colours are for a person reading a terminal)")
    cfg, base = options(ns, SampleConfig), options(ns, SampleOptions)
    gen, ck = _generator(ns.checkpoint, ns.device)
    ngram_note = _ngram_note(ns, gen)
    gen.check_memory(base)  # every generation has base's count and length: refused before any file is touched
    runs = _runs(ns.interactive, cfg, _seeded(base, ns.output))
    _check_asked(gen, runs or (), base.label)
    novelty = _novelty(ns, ck)
    sink = _Output(ns.output, getattr(gen, "path", None) or ns.checkpoint) if ns.output else None
    colour = ns.color and _colour_terminal()
    if colour:
        from .insight import legend

        print(legend(), file=sys.stderr)  # once, before the samples
    verdicts: list[bool] = []

    def one(opts: SampleOptions) -> None:
        _check_start(gen, opts.start)
        stream = opts.n == 1 and sink is None and not colour  # one text at a time: show it as it is made
        if stream:
            sys.stdout.write(opts.start)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the note above already said it
            texts = gen.generate(opts, on_text=_show if stream else None)
        shown = texts
        if colour:  # what the model expected of each character it wrote, after the start text
            from .insight import read, shade

            shown = [shade(read(gen, text, context=opts.start, label=opts.label, ngram=opts.ngram)) for text in texts]
        for i, (text, seen) in enumerate(zip(texts, shown)):
            mark = novelty.check(opts.start + text) if novelty else None  # the sample as shown, start and all
            if mark is not None:
                verdicts.append(mark.new)
            if sink is not None:
                sink.write(_sample_row(opts, i, text, mark, gen.path) if sink.jsonl else opts.start + text + "\n")
            else:
                print("" if stream else opts.start + seen)
            if mark is not None and not mark.new:
                print(f"charloom: sample {i} copies the training corpus: {mark.copied[0]!r}", file=sys.stderr)

    try:
        if ns.interactive:
            for start in _typed_starts():
                one(_seeded(base, ns.output).replace(start=start, temperature=cfg.temperature_list[0]))  # each its own
        else:
            labelled = len(runs) > 1 or base.n > 1
            for opts in runs:
                if labelled and sink is None:
                    print(f"--- temperature {opts.temperature:g}" + (f", start {opts.start!r}" if opts.start else "")
                          + " ---")
                one(opts)
    except BaseException:
        if sink is not None:
            sink.close(failed=True)
        raise
    if sink is not None:
        sink.close()
    _closing_notes(verdicts, ngram_note)


def _ngram_note(ns: argparse.Namespace, gen: Any) -> str | None:
    """--ngram given for a model that holds no n-gram is refused: an .onnx file (export writes the network alone)
    or a model file trained without one. Left to its default, the note to show after the samples where an .onnx
    file's model had an n-gram (None: nothing to say). A flag that was not given is absent from `ns` (add_options'
    defaults are SUPPRESS)."""
    onnx = onnx_named(ns.checkpoint)
    if getattr(ns, "ngram", None) and gen.mixture is None:
        what = ("an ONNX file, which holds no n-gram (export writes the network alone); sample the model file it came "
                "from to mix one in") if onnx else "a model with no n-gram (trained with --ngram 0)"
        raise CharloomError(f"--ngram: {ns.checkpoint} is {what}, or leave --ngram out")
    if not onnx or hasattr(ns, "ngram") or not gen.model.left_ngram:  # --no-ngram as asked, or nothing left out
        return None
    return (f"charloom: note: {ns.checkpoint} is an ONNX file, which holds no n-gram: the samples are the network's "
            f"alone, without the n-gram its model file mixes in (--no-ngram says so, without this note)")


def _closing_notes(verdicts: list[bool], ngram_note: str | None) -> None:
    """What stderr says after the samples: the novelty summary (with --novelty), and the n-gram note."""
    if verdicts:
        _novelty_summary(verdicts)
    if ngram_note:
        print(ngram_note, file=sys.stderr)


def _check_start(gen: Any, start: str, notes: bool = True) -> None:
    """A start text a strict model cannot read is refused in one line naming --start; otherwise, with `notes`,
    each character it will read as <unk> is noted."""
    if gen.vocab.unknown == "error":
        gen.vocab.encode_array(start, where="--start")
    elif notes:
        for ch in gen.unknown_characters(start):
            print(f"charloom: note: start text character {ch!r} is not in the model's vocabulary; read as <unk>",
                  file=sys.stderr)


def _colour_terminal() -> bool:
    """ANSI colours only where a person reads them: stdout a terminal, and NO_COLOR unset."""
    import os

    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def _coloured_corpus(ck: Any, c: Any, ngram: bool = True) -> None:
    """The scored text's first COLOUR_CHARS characters, each shaded by what the model expected of it, as scoring
    reads them (a record after its <bos> and label, one per line); on a terminal only, plain text elsewhere."""
    from .decoding import prefix_ids
    from .insight import legend, read_ids, shade
    from .sampling import Generator

    gen, v = Generator.from_checkpoint(ck), ck.vocab
    shown = lambda ids: "".join(v.itos[i] if i >= v.first_char else "\ufffd" for i in ids)  # noqa: E731
    if c.offsets is None:  # one stream: its first character is read, not predicted
        ids = c.ids[:COLOUR_CHARS].tolist()
        pieces = [(ids[:1], ids[1:])] if ids else []
    else:
        pieces, total = [], 0
        for i in range(c.num_records):
            if total >= COLOUR_CHARS:
                break
            label = None if c.labels is None else v.labels[int(c.labels[i])]
            ids = c.ids[c.offsets[i]:c.offsets[i + 1]].tolist()
            pieces.append((prefix_ids(v, True, "", label=label), ids))
            total += len(ids)
    colour = _colour_terminal()
    if colour:
        print(legend(), file=sys.stderr)
    for before, ids in pieces:
        head = shown(before) if c.offsets is None else ""
        print(head + (shade(read_ids(gen, before, ids, shown(ids), ngram=ngram)) if colour else shown(ids)),
              end="" if c.offsets is None else "\n")
    if c.offsets is None:
        print()


def _generator(path: str, device: str) -> tuple[Any, Any]:
    """(the Generator, what it was loaded from) for a model file or run folder, or for an exported .onnx file,
    which runs on onnxruntime without torch."""
    if onnx_named(path):
        if device not in ("cpu", "auto"):
            raise CharloomError(f"--device {device}: an .onnx model runs on onnxruntime's CPU backend; use --device cpu")
        from .onnx_generator import OnnxGenerator

        gen = OnnxGenerator.load(path)
        return gen, gen.model
    from . import checkpoint
    from .runtime import pick_device
    from .sampling import Generator

    ck = checkpoint.load(path, device=pick_device(device))
    gen = Generator.from_checkpoint(ck)
    gen.path = ck.path
    return gen, ck


def cmd_info(ns: argparse.Namespace) -> None:
    from .runinfo import describe, lines

    if not 0 <= ns.samples <= MAX_INFO_SAMPLES:
        raise CharloomError(f"--samples: must be from 0 to {MAX_INFO_SAMPLES}, got {ns.samples}")
    report = describe(ns.path, samples=ns.samples, seed=ns.seed)
    print(json.dumps(report, ensure_ascii=False) if ns.json else "\n".join(lines(report)))


def cmd_plot(ns: argparse.Namespace) -> None:
    from .curves import plot_runs

    drawn = plot_runs(ns.runs, ns.out)
    print(f"wrote {ns.out}: " + "; ".join(d.label for d in drawn))


def cmd_export(ns: argparse.Namespace) -> None:
    from . import checkpoint
    from .export import export
    from .config import EXPORTED

    cfg = options(ns, ExportConfig)
    ck = checkpoint.load(ns.checkpoint)
    out = expand(cfg.out) if cfg.out else (ck.path.parent / EXPORTED)
    for line in export(ck, cfg, out).lines():
        print(f"charloom: {line}", file=sys.stderr)


def cmd_eval(ns: argparse.Namespace) -> None:
    from . import checkpoint, corpus
    from .evaluation import check_streams, label_scores, score, score_adapted
    from .runtime import pick_device

    ecfg = options(ns, EvalConfig)
    ecfg.check_static()  # before the model and the text are read
    if ns.color and ns.json:
        raise CharloomError("--color: not with --json (the colours are for a person reading a terminal)")
    device = pick_device(ecfg.device)
    ck = checkpoint.load(ns.checkpoint, device=device)
    check_streams(ck.model, ecfg.streams)  # before the text is read: its states do not depend on it
    v = ck.vocab
    ccfg = options(ns, CorpusConfig)  # read as the model reads: corpus.load takes its case and normalisation
    if ccfg.records is None:  # neither --records nor --no-records: records for a model of records, as it trained
        if ccfg.labelled and not ck.records:  # else the records check would name a --no-records never given
            flag = "--label-column" if ccfg.label_column is not None else "--label-field"
            raise CharloomError(f"{flag}: {ck.path} was trained on continuous text, which has no labels")
        ccfg = ccfg.replace(records=ck.records)
    _check_eval_flags(ns, ck, bool(ccfg.records))
    c = corpus.load(ccfg, vocab=v)
    mixture = ck.mixture if ecfg.ngram else None
    result = score(ck.model, c, ecfg, device, mixture)
    try:
        adapted = score_adapted(ck.model, c, ecfg, device, mixture) if ecfg.adapt else None  # beside, never instead
    except ConfigError as e:  # the adapting network diverged: the static figure, already made, is still said
        raise ConfigError(f"{e} (static, without adapting: {result.bpc:.4f} bits per character)") from None
    if ns.color:
        _coloured_corpus(ck, c, ecfg.ngram)
    unknown = c.stats["unknown_characters"]
    figures = {"source": ccfg.source, "bpc": round(result.bpc, 4), "perplexity": round(result.perplexity, 4),
               "loss_nats": round(result.loss, 5), "characters_scored": result.characters,
               "unknown_characters": unknown}
    if result.network_bpc is not None:
        figures["network_bpc"] = round(result.network_bpc, 4)
    if adapted is not None:
        figures |= {"adapted_bpc": round(adapted.bpc, 4), "adapted_perplexity": round(adapted.perplexity, 4),
                    "adapt": {k: getattr(ecfg, k) for k in ("adapt_lr", "adapt_segment", "adapt_decay")}}
        if adapted.network_bpc is not None:
            figures["adapted_network_bpc"] = round(adapted.network_bpc, 4)
    per_label = label_scores(ck.model, c, device=device) if c.labels is not None else None
    if per_label is not None:
        figures["labels"] = per_label
    print(json.dumps(figures) if ns.json else "\n".join(_eval_lines(ccfg.source, result, adapted, ecfg, unknown)))
    if per_label is not None and not ns.json:
        print("\n".join(label_table(per_label, alone=ck.mixture is not None)))


def _eval_lines(source: str, result: Any, adapted: Any, ecfg: EvalConfig, unknown: int) -> list[str]:
    def alone(ev: Any) -> str:  # a model with an n-gram: the network's own figure beside the model's
        return f" (the network alone, without its n-gram: {ev.network_bpc:.4f})" if ev.network_bpc is not None else ""

    out = [f"{source}: {result.bpc:.4f} bits per character{alone(result)}, perplexity {result.perplexity:.3f} over "
           f"{result.characters:,} predicted characters; {unknown:,} characters outside the model's vocabulary "
           f"(read as <unk>)"]
    if adapted is not None:
        counting = ", its n-gram counting what it reads" if adapted.network_bpc is not None else ""
        out.append(f"adapted while reading (dynamic evaluation, lr {ecfg.adapt_lr:g}, segments of "
                   f"{ecfg.adapt_segment}{counting}): {adapted.bpc:.4f} bits per character{alone(adapted)}")
    return out


def _check_eval_flags(ns: argparse.Namespace, ck: Any, records: bool) -> None:
    """Flags given (present in `ns`) that this model or text would leave unread are refused before it is read."""
    if getattr(ns, "ngram", None) and ck.mixture is None:
        raise CharloomError(f"--ngram: {ck.path} is a model with no n-gram (trained with --ngram 0), or leave "
                            f"--ngram out")
    if hasattr(ns, "window") and records:
        raise CharloomError("--window: records are scored each whole, from <bos> through <eos>; --window is how "
                            "much of a continuous text one call reads")


def label_table(rows: list[dict[str, Any]], alone: bool = False) -> list[str]:
    """Bits per character of each label's records given their own label, a wrong one (the mean) and none."""
    table = [("label", "records", "characters", "own label", "wrong label", "no label")]
    table += [(r["label"], f"{r['records']:,}", f"{r['characters']:,}", f"{r['bpc']:.4f}",
               "-" if r["wrong_bpc"] is None else f"{r['wrong_bpc']:.4f}", f"{r['no_label_bpc']:.4f}") for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = [f"bits per character of each label's records{' (the network alone)' if alone else ''}, given:"]
    for row in table:
        lines.append("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))))
    return lines


def cmd_serve(ns: argparse.Namespace) -> None:
    from .checkpoint import model_path

    path = model_path(ns.checkpoint)  # a clear error before any server starts
    try:
        from .server import serve
    except ImportError:
        raise CharloomError("serve: the server needs the 'serve' extra: pip install 'charloom[serve]'") from None
    serve(path, options(ns, ServeConfig))


class _Parser(argparse.ArgumentParser):
    """argparse's parser (its subcommands' too), with a way out where a value starting with '-' (a start text, a
    negative figure with a unit) was taken for a flag: argparse says only that the flag expected a value."""

    def error(self, message: str) -> NoReturn:
        if message.startswith("argument ") and message.endswith(": expected one argument"):
            flag = message[len("argument "):-len(": expected one argument")].split("/")[0]
            message += f" (a value that starts with '-' goes after '=': {flag}=-VALUE)"
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="charloom", description="Character-level RNN, LSTM and GRU text generation.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    s = sub.add_parser("corpora", help="list the bundled corpora and their sizes")
    s.set_defaults(run=cmd_corpora)

    s = sub.add_parser("corpus-info", help="read a corpus and show its size, vocabulary and split",
                       description="Read a corpus (a file, folder, glob or bundled name) and show its figures.")
    add_options(s, CorpusConfig)
    add_options(s, BatchConfig)
    s.add_argument("--json", action="store_true", help="print the figures as JSON")
    s.set_defaults(run=cmd_corpus_info)

    s = sub.add_parser("train", help="train a model on a corpus (default: the bundled Shakespeare for 10 minutes)",
                       description="Train an RNN, LSTM or GRU on a corpus; writes a run folder with the model.")
    add_options(s, CorpusConfig)
    add_options(s, BatchConfig)
    add_options(s, ModelConfig, skip=("vocab_size",))
    add_options(s, TrainConfig, skip=("seed",))
    s.set_defaults(run=cmd_train)

    s = sub.add_parser("sample", help="generate text from a trained model")
    s.add_argument("--checkpoint", required=True, metavar="PATH", help="a run folder, a model file, or an exported "
                   ".onnx file (run with onnxruntime, no torch needed)")
    add_options(s, SampleConfig)
    add_options(s, SampleOptions, skip=("start", "temperature"))  # SampleConfig has them, repeatable
    s.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda", "mps"), help="where to run (default: cpu)")
    s.add_argument("--output", metavar="FILE", help="write the samples to FILE: JSON lines with their settings if it "
                   "ends in .jsonl, else plain text")
    s.add_argument("--interactive", action="store_true", help="read start texts from the terminal, one per line, "
                   "and continue each")
    s.add_argument("--color", action="store_true", help="shade each generated character by the probability the "
                   "model gave it (red: surprising); on a terminal only, plain text elsewhere")
    s.add_argument("--novelty", action="store_true", help="mark each sample as new or copied from the training "
                   "corpus, and report the share that is new")
    s.add_argument("--novelty-source", metavar="SOURCE", help="the corpus to check against (default: the one the "
                   "model was trained on)")
    s.set_defaults(run=cmd_sample)

    s = sub.add_parser("eval", help="bits per character of a model on a text",
                       description="Score a model on a text file or corpus: bits per character and perplexity.")
    s.add_argument("--checkpoint", required=True, metavar="PATH", help="a run folder or a model file")
    add_options(s, CorpusConfig, skip=("lower", "normalize", "unknown", "min_count"))
    add_options(s, EvalConfig)
    s.add_argument("--json", action="store_true", help="print the figures as JSON")
    s.add_argument("--color", action="store_true", help=f"also print the text's first {COLOUR_CHARS:,} characters "
                   "shaded by the probability the model gave each (red: surprising); on a terminal only")
    s.set_defaults(run=cmd_eval)
    _add_model_commands(sub)
    return p


def _add_model_commands(sub: Any) -> None:
    """The commands about a trained model: its report, its curves, its export, its server."""
    s = sub.add_parser("info", help="a run's report: corpus, model, training, bpc and a few samples",
                       description="Describe a run folder or a model file on its own (the corpus is not needed).")
    s.add_argument("path", metavar="PATH", help="a run folder or a model file")
    s.add_argument("--samples", type=_flag_type("int", int), default=3, metavar="N",
                   help="samples to show (default: 3; 0: none)")
    s.add_argument("--seed", type=_flag_type("int", int), default=0, help="the samples' seed (default: 0)")
    s.add_argument("--json", action="store_true", help="print the report as JSON")
    s.set_defaults(run=cmd_info)

    s = sub.add_parser("plot", help="draw the training curves of one or more runs into a PNG",
                       description="Draw bits per character against characters seen and wall time for one or more "
                                   "run folders, each run labelled by the settings that differ between them.")
    s.add_argument("runs", nargs="+", metavar="RUN", help="a run folder (it holds metrics.jsonl)")
    s.add_argument("--out", required=True, metavar="FILE", help="the PNG file to write")
    s.set_defaults(run=cmd_plot)

    s = sub.add_parser("export", help="write a model as ONNX (and int8, and a web page that generates in the browser)",
                       description="Export a model to ONNX, checked with onnxruntime against PyTorch; optionally an "
                                   "int8 twin and a static web page that runs it with onnxruntime-web.")
    s.add_argument("--checkpoint", required=True, metavar="PATH", help="a run folder or a model file")
    add_options(s, ExportConfig)
    s.set_defaults(run=cmd_export)

    s = sub.add_parser("serve", help="an HTTP generation API and a web playground for a model",
                       description="Serve a model: POST /v1/generate, GET /v1/model, the playground at /.")
    s.add_argument("--checkpoint", required=True, metavar="PATH", help="a run folder or a model file")
    add_options(s, ServeConfig)
    s.set_defaults(run=cmd_serve)


def _flagged(e: CharloomError, parser: argparse.ArgumentParser, ns: argparse.Namespace) -> str:
    """A config's refusal names its field (`threads: must not be negative`); the user typed a flag, so the command's
    flag for that field is named too (`threads (--threads): ...`), once. A message naming no flag of the command
    (a positional argument, a field it has no flag for) stays as it is."""
    name, colon, rest = str(e).partition(":")
    command = next((p for a in parser._actions if isinstance(a, argparse._SubParsersAction)
                    for p in a.choices.values() if p.get_default("run") is ns.run), None)
    flags = {key: long[0] for a in (command._actions if command else ())
             if (long := [o for o in a.option_strings if o.startswith("--")])
             for key in (a.dest, long[0][2:].replace("-", "_"))}  # a field, or the flag's own name (--temperature)
    field_name = re.sub(r"\[\d+\]$", "", name)  # one value of a repeated flag: temperatures[0]
    if not isinstance(e, ConfigError) or not colon or field_name not in flags:
        return str(e)
    return f"{name} ({flags[field_name]}):{rest}"


def _reading_threads(ns: argparse.Namespace) -> None:
    """A command that runs a model without training it takes the threads other work leaves idle, as a run does
    at its start (`runtime.set_threads`): a thread that waits for a busy CPU stalls every step, and a sample of
    3,000 characters that takes 2.5 s alone ran past 40 s beside a busy CPU. An .onnx file runs on onnxruntime's
    threads, without torch, which is then never imported."""
    if onnx_named(getattr(ns, "checkpoint", "") or ""):
        return
    from .runtime import READ_IDLE_SECONDS, set_threads

    set_threads(0, seconds=READ_IDLE_SECONDS)


def _line(message: str) -> str:
    """A message kept to one line: a line break inside it (a codec's own message may hold one) written as \\n."""
    return message.replace("\r", "\\r").replace("\n", "\\n")


def _one_line(show: Callable[..., None]) -> Callable[..., None]:
    """warnings.showwarning that says charloom's own warnings in one line, as errors are said, and passes any
    other library's to `show`, as Python shows them."""
    def said(message: Warning | str, category: type[Warning], *rest: Any, **kw: Any) -> None:
        if issubclass(category, CharloomWarning):
            print(f"charloom: warning: {_line(str(message))}", file=sys.stderr)
        else:
            show(message, category, *rest, **kw)
    return said


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    if ns.run is cmd_train:
        os.environ.setdefault("GOMP_SPINCOUNT", SPIN_COUNT)
    try:
        with warnings.catch_warnings():  # the library's warnings, said as the errors are: one line each
            warnings.showwarning = _one_line(warnings.showwarning)
            if ns.run in (cmd_sample, cmd_eval, cmd_info, cmd_export):
                _reading_threads(ns)
            code = ns.run(ns)
    except CharloomError as e:
        print(f"charloom: error: {_line(_flagged(e, parser, ns))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("charloom: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `charloom ... | head`
        return 0
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
