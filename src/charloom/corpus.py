"""Corpus sources: every way text gets in, read once and cached on disk as ids.

A source is a text file, a folder or glob of files, a CSV/TSV with chosen columns, a JSONL field, one
record per line, or a bundled corpus by name. It is read as one of two kinds:
  continuous: one long stream (files and records joined by a separator), cut into windows for training;
  records:    a list of separate samples (tweets, titles, names), each later wrapped in <bos> ... <eos>.

Files are streamed in chunks, never read whole: a first pass counts characters (the vocabulary), a
second writes ids into a memory-mapped array in the cache. The cache is keyed by the files' content
hashes, the reading options and the vocabulary, so a second run on the same corpus only maps the array.
"""

from __future__ import annotations

import bz2
import codecs
import csv
import errno
import fnmatch
import functools
import glob as globmod
import gzip
import hashlib
import json
import lzma
import math
import os
import re
import shutil
import sys
import unicodedata
import warnings
import zlib
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import IO, Any

import numpy as np

from . import atomic
from .config import CorpusConfig, check_text, expand
from .errors import CharloomError, CharloomWarning
from .vocab import INTEGRAL_FLOAT, CharCounter, Vocab, check_labels, prepare_text

CHUNK_BYTES = 1 << 22  # 4 MiB of file read per step: bounds memory for any file size
# where a piece of a stream may end when a line runs on past CHUNK_BYTES: before one of these, neither Unicode
# normalisation (no character composes with a following one of them) nor lower-casing (they are neither cased
# nor case-ignorable, so a final sigma reads the same) depends on what lies across the cut
_CUTS = " \t,;-()0123456789"
_SCAN = 1 << 16  # how far back from a long piece's end another safe place to cut is looked for
_JOINS_BACK = (("\u1160", "\u11ff"), ("\ud7b0", "\ud7ff"))  # Hangul vowel and final jamo join the syllable before
CACHE_VERSION = 5  # 2: a lone "\r" ends a line; 3: JSONL refuses lone surrogates, NUL-filled files are refused;
# 4: labels lose the spaces around them, and a JSON key holding dots is read before the nested path; 5: a JSON
# number label is named by its value (1.0 is "1")
_COMPRESSED = {".xz": lzma.open, ".gz": gzip.open, ".bz2": bz2.open}
# a line and its end: "\n", "\r\n" or a lone "\r" (old Mac files), and nothing else: str.splitlines would also
# split on \x0b, \x0c, \x1c-\x1e, \x85, U+2028 and U+2029, which are text inside a record
NUL_SHARE = 0.1  # a first piece this much U+0000 (and NUL_LEAST of them), or NUL_LEAST in a row, is not text:
NUL_LEAST = 16  # UTF-16 read as UTF-8, or an archive; a stray NUL or two in text is data
_DAMAGED = (OSError, ValueError, KeyError, TypeError, CharloomError)  # what reading a damaged cache entry raises
_LINE = re.compile(r"[^\r\n]*(?:\r\n?|\n)|[^\r\n]+")


# ---- bundled corpora -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Bundled:
    name: str
    path: Path
    kind: str  # "continuous" | "records"
    characters: int
    records: int | None
    license: str
    description: str

    @property
    def compressed_bytes(self) -> int:
        return self.path.stat().st_size


def bundled() -> dict[str, Bundled]:
    """The corpora shipped inside the package, by name."""
    folder = Path(str(resources.files("charloom") / "corpora"))
    index = json.loads((folder / "index.json").read_text())
    return {
        e["name"]: Bundled(e["name"], folder / e["file"], e["kind"], e["characters"], e["records"], e["license"],
                           e["description"])
        for e in index
    }


# ---- finding the files -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    """A CorpusConfig resolved against the file system: which files, which reader, which kind."""

    label: str  # what the user gave, for messages
    files: tuple[Path, ...]
    format: str  # text | lines | csv | tsv | jsonl
    records: bool


def _inner_suffix(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSED:
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def _format_of(path: Path, records: bool) -> str:
    ext = _inner_suffix(path)
    if ext in (".csv", ".tsv"):
        return ext[1:]
    if ext in (".jsonl", ".ndjson"):
        return "jsonl"
    return "lines" if records else "text"


def _shown(path: Path | str) -> str:
    """A file name as a message can print it. A Linux name may hold bytes that are not UTF-8; Python carries
    them as lone surrogates, which stdout, a UTF-8 log or a JSON reply cannot encode, so they read as \\xff."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _each_file_once(files: list[Path]) -> list[Path]:
    """`files` without a second name for a file already listed, in their order: a symlink (a loop such as
    `sub/loop -> ..` under a recursive glob above all) would read the same text several times, and copies of it
    could land in both the training and the validation split."""
    seen: set[str] = set()
    kept = []
    for p in files:
        real = os.path.realpath(p)
        if real not in seen:
            seen.add(real)
            kept.append(p)
    return kept


def resolve(cfg: CorpusConfig) -> Source:
    """Find the files of `cfg.source` and decide the reader and the corpus kind."""
    label = _shown(cfg.source)
    corpora = bundled()
    path = expand(cfg.source)
    if cfg.source in corpora and not path.exists():
        entry = corpora[cfg.source]
        records = entry.kind == "records" if cfg.records is None else cfg.records
        fmt = cfg.format if cfg.format != "auto" else ("lines" if entry.kind == "records" or records else "text")
        _check_applies(cfg, fmt, label, one_file=True)
        _check_separator(cfg, records, label)
        return Source(label, (entry.path,), fmt, records)  # a text read as records: a record a line, as a file's
    records = bool(cfg.records)
    try:
        files = _each_file_once(_files_of(cfg, path, label))
    except OSError as e:  # a folder on the way that cannot be read (e.filename names it), or a file's stat
        raise CharloomError(f"{_shown(e.filename or label)}: cannot read ({e.strerror or e})") from None
    if cfg.format != "auto":
        fmt = cfg.format
    else:
        formats = {_format_of(p, records) for p in files}
        if len(formats) > 1:
            raise CharloomError(f"{label}: files of mixed formats ({', '.join(sorted(formats))}); choose with --format or --ext")
        fmt = formats.pop()
    if fmt == "text" and records and cfg.format == "auto":
        fmt = "lines"
    _check_applies(cfg, fmt, label, path.is_file())
    _check_separator(cfg, records, label)
    return Source(label, tuple(files), fmt, records)


def _files_of(cfg: CorpusConfig, path: Path, label: str) -> list[Path]:
    """The files `cfg.source` names, sorted: one file, a folder's visible files, or a glob's matches. Neither a
    folder nor a glob's `**` follows a link to a folder, so a link loop is not walked round and round (a link to
    a file is read, once: `_each_file_once`). A folder that cannot be read raises OSError naming it."""
    exts = {e.lower() if e.startswith(".") else "." + e.lower() for e in cfg.extensions}

    def wanted(p: Path) -> bool:  # .py takes a.py and a.py.gz; .gz and .py.gz take a.py.gz
        name = p.name.lower()
        return p.is_file() and (not exts or _inner_suffix(p) in exts or any(name.endswith(e) for e in exts))

    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in _walk(path) if wanted(p))
        if not files:
            what = f"with extension {', '.join(sorted(exts))} " if exts else ""
            raise CharloomError(f"{label}: folder has no files {what}to read")
        return files
    if any(ch in cfg.source for ch in "*?["):
        files = sorted(p for p in _globbed(str(expand(cfg.source))) if wanted(p))
        if not files:
            raise CharloomError(f"{label}: no files match this pattern")
        return files
    if path.exists() or path.is_symlink():
        raise CharloomError(f"{label}: not a file or a folder (a device, a pipe, or a link to nothing?)")
    names = ", ".join(sorted(bundled()))
    raise CharloomError(f"{label}: no such file, folder or bundled corpus (bundled: {names})")


def _walk(root: Path, hidden: bool = False) -> Iterator[Path]:
    """Every file under `root` (but, unless `hidden`, those with a part below root starting with "."), links to
    folders not followed; a folder that cannot be listed raises its OSError rather than being passed over."""
    def fail(e: OSError) -> None:
        raise e

    for folder, subfolders, names in os.walk(root, onerror=fail):
        subfolders[:] = sorted(d for d in subfolders if hidden or not d.startswith("."))
        yield from (Path(folder) / n for n in names if hidden or not n.startswith("."))


def _globbed(pattern: str) -> Iterator[Path]:
    """The files `pattern` matches, as glob.glob(recursive=True) finds them, but with `**` walking the folders
    below (`_walk`) without following links to folders, which glob.glob does: two link loops made it run for
    ever. A pattern without a `**` part recurses into nothing and is glob.glob's, as is one with a `.` or `..`
    part after its first wildcard."""
    parts = Path(pattern).parts
    fixed = next((i for i, part in enumerate(parts) if globmod.has_magic(part)), len(parts))
    if "**" not in parts or {".", ".."} & set(pattern.split(os.sep)[fixed:]):  # `.`, `..`: left to glob.glob
        yield from (Path(p) for p in globmod.glob(pattern, recursive="**" in parts))
        return
    base, rest = Path(*parts[:fixed]) if fixed else Path(), [p if p == "**" else p.replace("**", "*")
                                                             for p in parts[fixed:]]
    if pattern.endswith(os.sep) or not base.is_dir():  # a pattern of folders, or nowhere to walk: no files
        return
    dotted = any(p.startswith(".") for p in rest)
    yield from (p for p in _walk(base, hidden=dotted) if _matches(p.relative_to(base).parts, rest))


def _matches(names: tuple[str, ...], pattern: list[str]) -> bool:
    """glob's rule for a path's parts below the walk's base: `**` takes any number of parts, none hidden; any
    other pattern part takes one, by fnmatch, a hidden one only where the pattern's part starts with "."."""
    if not pattern:
        return not names
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(_matches(names[i:], rest) for i in range(len(names) + 1)
                   if not any(n.startswith(".") for n in names[:i]))
    return len(names) > bool(rest) and (head.startswith(".") or not names[0].startswith(".")) \
        and fnmatch.fnmatchcase(names[0], head) and _matches(names[1:], rest)  # a part before another: a folder


def _check_applies(cfg: CorpusConfig, fmt: str, label: str, one_file: bool) -> None:
    """Options for another kind of file are refused, not ignored: whoever gave them expected them to act."""
    for formats, given in ((("csv", "tsv"), {"--column": cfg.columns, "--header": cfg.header is not None,
                                             "--label-column": cfg.label_column is not None}),
                           (("jsonl",), {"--field": cfg.field is not None, "--label-field": cfg.label_field is not None})):
        flag = next((f for f, on in given.items() if on), None)
        if fmt not in formats and flag:
            kinds = " or ".join(f.upper() for f in formats)
            raise CharloomError(f"{flag}: only for {kinds} files; {label} is read as {fmt} (give --format if it is "
                                f"{kinds})")
    if one_file and cfg.extensions:
        raise CharloomError(f"--ext: chooses the files of a folder or a glob; {label} is one file")
    if fmt not in ("csv", "tsv") and cfg.is_set("column_sep"):
        raise CharloomError(f"--column-sep: joins the chosen columns of a CSV or TSV row; {label} is read as {fmt}")


def _check_separator(cfg: CorpusConfig, records: bool, label: str) -> None:
    """--separator joins a continuous text's pieces: on records (asked for, or a bundled corpus's kind) it would be
    dropped."""
    if records and cfg.is_set("separator"):
        raise CharloomError(f"--separator: joins records or files into one stream; {label} is read as records "
                            f"(give --no-records to join them)")


# ---- reading one file ------------------------------------------------------------------------------
def _open_binary(path: Path) -> IO[bytes]:
    opener = _COMPRESSED.get(path.suffix.lower())
    try:
        return opener(path, "rb") if opener else open(path, "rb")
    except OSError as e:
        raise CharloomError(f"{_shown(path)}: cannot open ({e.strerror or e})") from None


def _text_decoder(encoding: str, errors: str) -> codecs.IncrementalDecoder:
    """An incremental decoder for `encoding`, refused unless it is a text encoding: Python's codec registry also
    holds codecs from bytes to bytes (hex, zlib, base64) and from text to text (rot13), which would fail later
    on the first piece with their own error, or give bytes where text is wanted."""
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise CharloomError(f"--encoding: {encoding!r} is not a known text encoding") from None
    try:
        "".encode(encoding)  # str.encode and bytes.decode take text encodings only
        b"".decode(encoding)
    except (LookupError, UnicodeError):
        raise CharloomError(f"--encoding: {encoding!r} is a Python codec but not a text encoding (e.g. utf-8, "
                            f"latin-1, utf-16)") from None
    return codecs.getincrementaldecoder(encoding)(errors)


def _undecodable(path: Path, encoding: str, at: int, e: UnicodeError) -> CharloomError:
    """The one-line error for bytes `encoding` cannot read; `at` is the byte offset where the decoder's input began
    (in a compressed file, of the text it decompresses to)."""
    of = " of the decompressed text" if path.suffix.lower() in _COMPRESSED else ""
    if isinstance(e, UnicodeDecodeError):
        bad = e.object[e.start:e.end][:4].hex(" ")
        return CharloomError(
            f"{_shown(path)}: byte offset {at + e.start}{of}: bytes {bad} are not valid {encoding} "
            f"(set --encoding or --decode-errors replace; a file that is not text is best left out, as "
            f"--ext does for a folder)")
    # a plain UnicodeError carries no position: UTF-16 and UTF-32 read incrementally demand a byte-order mark
    order = ""
    if codecs.lookup(encoding).name in ("utf-16", "utf-32"):
        order = " (a file without a byte-order mark needs one that names the order, e.g. utf-16-le)"
    return CharloomError(f"{_shown(path)}: byte offset {at}{of}: not valid {encoding} ({e}); set --encoding{order}")


def _check_not_binary(path: Path, encoding: str, text: str) -> None:
    """A file whose first piece is NUL_SHARE or more U+0000 (at least NUL_LEAST), or holds NUL_LEAST of them in a
    row, is refused: it decodes, but is not text in `encoding` (UTF-16 without a byte-order mark read as UTF-8
    has every other character NUL; an archive's headers are padded with runs of them), and read as text would
    train a model on NULs."""
    nul = text.count("\0")
    if nul >= max(NUL_LEAST, NUL_SHARE * len(text)) or "\0" * NUL_LEAST in text:  # a run of them: padding
        raise CharloomError(f"{_shown(path)}: {nul:,} of its first {len(text):,} characters are NUL (U+0000), so it "
                            f"is not {encoding} text: UTF-16 without a byte-order mark needs --encoding utf-16-le "
                            f"(or -be); an archive (.tar, .zip) must be unpacked first")


def read_chunks(path: Path, encoding: str = "utf-8", errors: str = "strict", lines: bool = True, *,
                as_is: bool = False) -> Iterator[str]:
    """Decoded text of `path` in pieces that end at a line end ("\\n", "\\r\\n" or a lone "\\r"), so that
    per-piece normalisation is safe and lines are whole. With `lines` False a line longer than CHUNK_BYTES is cut
    too, where `_stream_cut` finds a safe place: a file without newlines is then read in bounded pieces rather
    than held whole. `as_is` says the pieces will be neither normalised nor lower-cased, so any place is safe.

    A byte-order mark is dropped. An undecodable byte raises CharloomError with the file and byte offset.
    """
    decoder = _text_decoder(encoding, errors)
    consumed = 0  # bytes fed to the decoder so far
    carry = ""  # text after the last cut, held back for the next piece
    first = True
    with _open_binary(path) as f:
        while True:
            try:
                data = f.read(CHUNK_BYTES)
            except (OSError, EOFError, lzma.LZMAError, zlib.error) as e:
                raise CharloomError(f"{_shown(path)}: cannot read ({e})") from None
            final = not data
            buffered = len(decoder.getstate()[0])
            try:
                text = decoder.decode(data, final)
            except UnicodeError as e:
                raise _undecodable(path, encoding, consumed - buffered, e) from None
            consumed += len(data)
            if first and text:
                text = text.removeprefix("\ufeff")
                _check_not_binary(path, encoding, text)
                first = False
            text = carry + text
            if final:
                if text:
                    yield text
                return
            # a "\r" ending the text may be the first half of a "\r\n" whose "\n" comes with the next read
            cut = max(text.rfind("\n"), text.rfind("\r", 0, len(text) - 1)) + 1
            if not cut and not lines and len(text) >= CHUNK_BYTES:
                cut = len(text) if as_is else _stream_cut(text)
            carry = text[cut:]
            if cut:
                yield text[:cut]


def _stream_cut(text: str) -> int:
    """Where a long piece of a stream without newlines may end (0: nowhere yet): before the last character of
    `_CUTS`, or, when there is none in the last `_SCAN` characters (prose in a script without spaces, such as
    Chinese), at the last place `_parts_cleanly` allows there."""
    cut = max(text.rfind(c, 1) for c in _CUTS)
    start = max(cut, len(text) - _SCAN, 0)
    for i in range(len(text) - 1, start, -1):
        if _parts_cleanly(text[i - 1], text[i]):
            return i
    return max(cut, 0)


@functools.lru_cache(maxsize=1 << 16)
def _edge(c: str) -> tuple[bool, bool, bool, bool]:
    """How `c` sits beside a cut, judged on `c` and on the first character of each of its decompositions, so
    that it holds under every normalisation a vocabulary may apply (none, NFC, NFKC) and for lower-casing after it:
      fresh:   combining class 0, no combining mark, no Hangul vowel or final jamo: nothing before it composes
               with it (every second half of a composition is one of those), and canonical reordering, which
               moves only marks of a nonzero class, never crosses it;
      stops:   neither case-ignorable nor Σ, so a final-sigma scan from either side ends at it;
      uncased: not cased either, so a Σ before it reads as a Σ before the end of the text;
      bare:    `c` has no decomposition, so text that ends with it still does after normalisation."""
    heads = {c, unicodedata.normalize("NFD", c)[0], unicodedata.normalize("NFKD", c)[0]}
    fresh = all(unicodedata.combining(h) == 0 and not unicodedata.category(h).startswith("M")
                and not any(lo <= h <= hi for lo, hi in _JOINS_BACK) for h in heads)
    reads = [_sigma_reads(h) for h in heads]
    stops = all(stop for stop, _ in reads) and "\u03a3" not in heads
    uncased = not any(cased for _, cased in reads)
    return fresh, stops, uncased, unicodedata.normalize("NFKD", c) == c


def _sigma_reads(c: str) -> tuple[bool, bool]:
    """(a final-sigma scan stops at `c`, `c` is cased). The one rule of str.lower that looks at neighbours: Σ
    after a cased letter reads ς unless a cased letter follows, case-ignorable characters (marks, apostrophes,
    modifier letters...) skipped both ways. Asked of str.lower itself, the answer follows the running Python."""
    then_cased = ("A\u03a3" + c + "B").lower()[1] == "\u03c3"  # c is cased, or skipped to reach B
    then_digit = ("A\u03a3" + c + "1").lower()[1] == "\u03c3"  # the scan stopped at c, and c is cased
    return not (then_cased and not then_digit), then_digit


def _parts_cleanly(a: str, b: str) -> bool:
    """Normalising and lower-casing the text before a cut between `a` and `b` and the text after it apart gives
    what they give together (see `_edge`): nothing composes or reorders across the cut, and no final-sigma scan
    reaches it, because either `b` is uncased or `a`, with no decomposition, stays the last character."""
    fresh, stops, uncased, _ = _edge(b)
    if not (fresh and stops):
        return False
    a_fresh, a_stops, _, a_bare = _edge(a)
    return uncased or (a_fresh and a_stops and a_bare)


def _lines(path: Path, cfg: CorpusConfig) -> Iterator[str]:
    """Lines of a file, each with its line end (the last may lack one); see `_LINE` for what ends a line."""
    for chunk in read_chunks(path, cfg.encoding, cfg.decode_errors):
        yield from (m.group() for m in _LINE.finditer(chunk))


def _strip_eol(line: str) -> str:
    return line.rstrip("\r\n")


def _csv_records(path: Path, cfg: CorpusConfig, delimiter: str) -> Iterator[tuple[str, str | None]]:
    """(the chosen columns of a row joined by `cfg.column_sep`, its label column or None) for each row of a CSV/TSV."""
    csv.field_size_limit(2**31 - 1)
    # newline="" semantics: keep line ends so quoted fields may hold newlines
    raw: list[str] = []  # the lines read since the last row ended

    def kept() -> Iterator[str]:
        for line in _lines(path, cfg):
            raw.append(line)
            yield line
    reader = csv.reader(kept(), delimiter=delimiter)
    wanted = cfg.columns + ((cfg.label_column,) if cfg.label_column is not None else ())
    by_name = [c for c in wanted if not _is_index(c)]
    header = cfg.header if cfg.header is not None else bool(by_name)
    if by_name and not header:
        raise CharloomError(f"{_shown(path)}: column {by_name[0]!r} is chosen by name but --no-header says there is "
                            f"no header row")
    try:
        head = next(reader, None) if header else None
        if header and head is None:
            return
        picks: list[int] | None = None
        lines = raw[:]  # the header's lines, should no row follow it
        raw.clear()
        for row in reader:
            lines = raw[:]
            raw.clear()
            if not row or row == [""]:
                continue
            if picks is None:
                picks = _pick_columns(path, cfg.columns, head, len(row))
                if cfg.label_column is not None:
                    at = _pick_columns(path, (cfg.label_column,), head, len(row))[0]
                    unchecked, ragged = True, min(*picks, at) < 0  # counted from each row's end: each checked
            if max(picks) >= len(row) or -min(picks) > len(row):
                raise CharloomError(
                    f"{_shown(path)}: line {reader.line_num}: row has {len(row)} columns, column {max(picks)} was "
                    f"asked for")
            label = None
            if cfg.label_column is not None:
                if not -len(row) <= at < len(row):
                    raise CharloomError(f"{_shown(path)}: line {reader.line_num}: row has {len(row)} columns, "
                                        f"label column {at} was asked for")
                if unchecked or ragged:
                    _check_label_apart(path, cfg, picks, at, len(row), reader.line_num)
                    unchecked = False
                label = row[at]
            yield cfg.column_sep.join(row[i] for i in picks), label
        _check_closed(path, lines, delimiter, reader.line_num)
    except csv.Error as e:
        raise CharloomError(f"{_shown(path)}: line {reader.line_num}: not valid CSV ({e})") from None


def _check_label_apart(path: Path, cfg: CorpusConfig, picks: list[int], at: int, width: int, line: int) -> None:
    """A label column that is also a text column, named another way (a name and its index, -1 and the last), in a
    row `width` columns wide: the record would be its own label. (The config refuses the same name given twice.)"""
    if at % width in {p % width for p in picks}:
        raise CharloomError(f"--label-column: {cfg.label_column!r} names column {at % width} of {_shown(path)} (line "
                            f"{line}, {width} columns), which --column also chose; the label is another column")


def _check_closed(path: Path, lines: list[str], delimiter: str, end: int) -> None:
    """Refuses a last row (or header) that ran to the end of the file inside a quoted field: read leniently, it
    would hold the rest of the file as one field. Only a strict reread of its lines tells that case from a
    literal quote inside an unquoted field."""
    if not lines:
        return
    try:
        for _ in csv.reader(lines, delimiter=delimiter, strict=True):
            pass
    except csv.Error as e:
        if "unexpected end of data" in str(e):
            rest = "the rest of the line" if len(lines) == 1 else f"the file's last {len(lines)} lines"
            raise CharloomError(f"{_shown(path)}: line {end - len(lines) + 1}: a quoted field opened in this row is "
                                f"never closed, so {rest} would be one field") from None


def _is_index(col: str) -> bool:
    return re.fullmatch(r"-?[0-9]+", col) is not None  # not str.isdigit, which takes "²" and other digits


def _pick_columns(path: Path, columns: tuple[str, ...], head: list[str] | None, width: int) -> list[int]:
    if not columns:
        if width == 1:
            return [0]
        names = f" ({', '.join(head)})" if head else ""
        raise CharloomError(f"{_shown(path)}: has {width} columns{names}; choose the text with --column NAME or "
                            f"--column INDEX")
    picks = []
    for col in columns:
        if _is_index(col):  # digits are an index, even where a header names a column so
            i = int(col)
            if not -width <= i < width:
                raise CharloomError(f"{_shown(path)}: column {i} out of range (rows have {width} columns)")
            picks.append(i)
        else:
            assert head is not None
            if head.count(col) > 1:
                at = ", ".join(str(i) for i, name in enumerate(head) if name == col)
                raise CharloomError(f"{_shown(path)}: the header names columns {at} {col!r}; choose one by index")
            if col not in head:
                raise CharloomError(f"{_shown(path)}: column {col!r} not found (columns: {', '.join(head)})")
            picks.append(head.index(col))
    return picks


def _jsonl_records(path: Path, cfg: CorpusConfig) -> Iterator[tuple[str, str | None]]:
    """(the `cfg.field` value, the `cfg.label_field` value or None) of each JSON object, one object per line."""
    if not cfg.field:
        raise CharloomError(f"{_shown(path)}: JSONL needs --field to name the key holding the text")
    for n, line in enumerate(_lines(path, cfg), 1):
        if not line.strip():
            continue
        try:
            obj: Any = _json_object(line)
        except RecursionError:  # the parser recurses once per level of nesting
            raise CharloomError(f"{_shown(path)}: line {n}: JSON nested too deeply to read") from None
        except ValueError as e:  # a JSONDecodeError, or an integer too long to convert
            what = f"{e.msg.removesuffix(' at')} at column {e.colno}" if isinstance(e, json.JSONDecodeError) else e
            raise CharloomError(f"{_shown(path)}: line {n}: not valid JSON ({what})") from None
        text = _json_field(obj, cfg.field, f"{_shown(path)}: line {n}")
        if text is None:  # a record without text: skipped, and counted, as an empty one is
            yield "", None
            continue
        if not isinstance(text, str):
            raise CharloomError(f"{_shown(path)}: line {n}: field {cfg.field!r} is {_json_type(text)}, not text")
        _check_characters(text, f"{_shown(path)}: line {n}: field {cfg.field!r}")
        label = None
        if cfg.label_field is not None:
            value = _json_field(obj, cfg.label_field, f"{_shown(path)}: line {n}")
            # NaN and Infinity: Python's json writes and reads them (allow_nan), but they are no JSON value
            odd = isinstance(value, float) and not math.isfinite(value)
            if isinstance(value, (dict, list)) or value is None or odd:
                what = "null" if value is None else json.dumps(value) if isinstance(value, float) else _json_type(value)
                raise CharloomError(f"{_shown(path)}: line {n}: label field {cfg.label_field!r} is {what}, not a "
                                    f"label")
            label = _json_label(value)
            _check_characters(label, f"{_shown(path)}: line {n}: label field {cfg.label_field!r}")
        yield text, label


def _json_label(value: Any) -> str:
    """A JSON label value's name: text as it is; 1 and true as "1" and "true"; a long integer as its digits; a
    number by its value, so that 1, 1.0 and 1e0 are one label ("1") and 1e3 is "1000", as 0.5 is "0.5"."""
    if isinstance(value, str):
        return value
    if isinstance(value, _LongInteger):
        return str(value)
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return json.dumps(value)


@dataclass(frozen=True)
class _LongInteger:
    """An integer of more digits than Python converts by default (4,300): kept as its digits, so that a field the
    corpus does not read may hold one, and a text field that holds one is refused as a number, not as broken
    JSON. A label reads as its digits, as a shorter integer does."""

    digits: str

    def __str__(self) -> str:
        return self.digits


def _json_int(digits: str) -> int | _LongInteger:
    limit = sys.get_int_max_str_digits()  # 0: no limit
    return _LongInteger(digits) if limit and len(digits.lstrip("-")) > limit else int(digits)


def _json_object(line: str) -> Any:
    """A JSON line parsed; one with an integer longer than Python converts is parsed again with it kept as
    digits (parse_int costs a Python call for each integer, so only such a line pays it)."""
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        raise
    except ValueError:
        return json.loads(line, parse_int=_json_int)


def _json_type(value: Any) -> str:
    return "int" if isinstance(value, _LongInteger) else type(value).__name__


def _check_characters(text: str, where: str) -> None:
    """A JSON string's lone surrogate refused when read: a run that read it would fail only when it saves."""
    check_text(where, text, cause="an escape such as \\ud800 without the other half of its pair")


_MISSING = object()


def _json_field(obj: Any, name: str, where: str) -> Any:
    """The value of a dotted field of a JSON object, through nested objects; at each level a key that holds dots
    itself ("meta.title", as flattened exports write them) is tried before a shorter one."""
    found = _json_path(obj, name.split("."))
    if found is _MISSING:
        have = f" (fields: {', '.join(obj)})" if isinstance(obj, dict) else ""
        raise CharloomError(f"{where}: field {name!r} not found{have}")
    return found


def _json_path(obj: Any, parts: list[str]) -> Any:
    if not parts:
        return obj
    if isinstance(obj, dict):
        for n in range(len(parts), 0, -1):  # the longest key first
            key = ".".join(parts[:n])
            if key in obj and (found := _json_path(obj[key], parts[n:])) is not _MISSING:
                return found
    return _MISSING


def iter_records(source: Source, cfg: CorpusConfig) -> Iterator[str]:
    """Raw records of a source (before normalisation): lines, rows, objects, or whole files."""
    return (text for text, _ in iter_labelled(source, cfg))


def iter_labelled(source: Source, cfg: CorpusConfig) -> Iterator[tuple[str, str | None]]:
    """(raw record, its raw label or None) of a source: a label comes from `cfg.label_column` (CSV/TSV) or
    `cfg.label_field` (JSONL)."""
    _check_label_source(source, cfg)
    for path in source.files:
        if source.format == "lines":
            yield from ((_strip_eol(ln), None) for ln in _lines(path, cfg))
        elif source.format in ("csv", "tsv"):
            yield from _csv_records(path, cfg, "," if source.format == "csv" else "\t")
        elif source.format == "jsonl":
            yield from _jsonl_records(path, cfg)
        else:  # text: one file is one record
            yield "".join(read_chunks(path, cfg.encoding, cfg.decode_errors)), None


def _check_label_source(source: Source, cfg: CorpusConfig) -> None:
    """Labels come from a records corpus, from the kind of file the option reads."""
    if not cfg.labelled:
        return
    flag = "--label-column" if cfg.label_column is not None else "--label-field"
    if not source.records:
        raise CharloomError(f"{flag}: labels belong to records; {source.label} is read as a continuous text "
                            f"(add --records)")
    want = ("csv", "tsv") if cfg.label_column is not None else ("jsonl",)
    if source.format not in want:
        raise CharloomError(f"{flag}: {source.label} is read as {source.format}; this option reads "
                            f"{' or '.join(want)} ({'--label-field' if flag == '--label-column' else '--label-column'} "
                            f"is for the other)")


def iter_stream(source: Source, cfg: CorpusConfig) -> Iterator[str]:
    """A continuous source as pieces of one stream: files/records joined by `cfg.separator`."""
    first = True
    if source.format == "text":
        for path in source.files:
            if not first and cfg.separator:
                yield cfg.separator
            first = False
            yield from read_chunks(path, cfg.encoding, cfg.decode_errors, lines=False,
                                   as_is=cfg.normalize == "none" and not cfg.lower)
        return
    for rec in iter_records(source, cfg):
        if not first and cfg.separator:
            yield cfg.separator
        first = False
        yield rec


# ---- the encoded corpus ----------------------------------------------------------------------------
@dataclass
class Corpus:
    """A corpus as ids. `ids` is one flat array (often memory-mapped from the cache).

    continuous: `offsets` is None and `ids` is the whole stream.
    records:    record i is `ids[offsets[i]:offsets[i+1]]` (without <bos>/<eos>; batching adds them).
    labels:     labelled records: (records,) the label of each, an index into `vocab.labels`; else None.
    """

    name: str
    vocab: Vocab
    ids: np.ndarray
    offsets: np.ndarray | None
    stats: dict[str, Any] = field(default_factory=dict)
    labels: np.ndarray | None = None

    @property
    def is_records(self) -> bool:
        return self.offsets is not None

    @property
    def num_records(self) -> int:
        return 0 if self.offsets is None else len(self.offsets) - 1

    def record(self, i: int) -> str:
        assert self.offsets is not None
        return self.vocab.decode(self.ids[self.offsets[i]:self.offsets[i + 1]])

    def lengths(self) -> np.ndarray:
        assert self.offsets is not None
        return np.diff(self.offsets)

    def counts(self) -> np.ndarray:
        """(V,) int64 occurrences of each id, counted a piece at a time: counting the whole array at once
        would widen all of it to int64, 8 bytes per character."""
        out = np.zeros(len(self.vocab), dtype=np.int64)
        for i in range(0, len(self.ids), CHUNK_BYTES):
            out += np.bincount(self.ids[i:i + CHUNK_BYTES], minlength=len(self.vocab))[:len(self.vocab)]
        return out

    def text(self) -> str:
        """The whole corpus as text (records joined by newlines): for small corpora and tests."""
        if self.offsets is None:
            return self.vocab.decode(self.ids)
        return "\n".join(self.record(i) for i in range(self.num_records))


def default_cache_dir() -> Path:
    env = os.environ.get("CHARLOOM_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "charloom"


def _content_hash(path: Path, cache: Path) -> str:
    """sha256 of a file's bytes, remembered by (path, size, mtime, ctime, inode) so an unchanged file is hashed
    once. The ctime too: a tool can write a file and set its mtime back, but any change to a file sets its ctime."""
    try:
        st = path.stat()
        # os.fsencode: a name's bytes, which need not be UTF-8
        stat_key = hashlib.sha256(b"%s|%d|%d|%d|%d" % (os.fsencode(path.resolve()), st.st_size, st.st_mtime_ns,
                                                       st.st_ctime_ns, st.st_ino)).hexdigest()
    except OSError as e:
        raise CharloomError(f"{_shown(path)}: cannot read ({e.strerror or e})") from None
    memo = cache / "hashes" / stat_key[:32]
    try:
        return memo.read_text().strip()
    except OSError:
        pass
    digest = _file_digest(path)
    try:
        atomic.write_text(memo, digest)
    except CharloomError:
        pass  # the note only spares hashing the file again; a cache that cannot take it still serves the ids in it
    return digest


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(CHUNK_BYTES):
                h.update(block)
    except OSError as e:
        raise CharloomError(f"{_shown(path)}: cannot read ({e.strerror or e})") from None
    return h.hexdigest()


def _id_dtype(vocab_size: int) -> np.dtype:
    # the smallest type that holds every id: a 1 GB ASCII corpus costs 1 GB of disk, not 8
    if vocab_size <= 256:
        return np.dtype(np.uint8)
    if vocab_size <= 2**15:
        return np.dtype(np.int16)
    return np.dtype(np.int32)


def _buffered(pieces: Iterator[str], size: int = CHUNK_BYTES) -> Iterator[str]:
    """Join small pieces (records) into large strings so numpy work is done in big steps."""
    buf: list[str] = []
    n = 0
    for p in pieces:
        buf.append(p)
        n += len(p)
        if n >= size:
            yield "".join(buf)
            buf, n = [], 0
    if buf:
        yield "".join(buf)


def load(cfg: CorpusConfig, *, vocab: Vocab | None = None, progress: bool = False) -> Corpus:
    """Read, encode and cache the corpus `cfg` describes.

    vocab: encode with this vocabulary (e.g. a trained model's) instead of building one from the corpus, its
        Unicode normalisation and lower-casing taken over cfg's; characters outside it follow its
        unknown-character policy.
    """
    if vocab is not None:  # read as the vocabulary reads: capitals of a lower-cased model's text are its letters
        cfg = cfg.replace(lower=vocab.lower, normalize=vocab.normalize)
    source = resolve(cfg)
    cache = expand(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CharloomError(f"--cache-dir: cannot create {cache} ({e.strerror or e})") from None
    atomic.remove_leftovers(cache / "hashes")  # what hash notes killed mid-write left
    reading = {k: v for k, v in cfg.to_dict().items() if k not in ("source", "cache_dir", "unknown")}
    key_src = {
        "v": CACHE_VERSION, "format": source.format, "records": source.records, "reading": reading,
        "files": [_content_hash(p, cache) for p in source.files],
        "vocab": vocab.to_dict() if vocab is not None else None,
    }
    key = hashlib.sha256(json.dumps(key_src, sort_keys=True).encode()).hexdigest()[:32]
    folder = cache / "ids" / key
    if (folder / "meta.json").exists():
        try:
            return _open_cached(folder, source.label, vocab, cfg.unknown)
        except _DAMAGED as e:  # damaged on disk since it was written: read the text again
            warnings.warn(f"{_shown(folder)}: the cached ids of {source.label} are damaged ({e}); reading the text "
                          f"again", CharloomWarning, stacklevel=2)
    if folder.exists():  # an entry is renamed into place whole: one here that cannot be read was damaged since
        _set_aside(folder)
    _encode_to_cache(source, cfg, vocab, folder)
    try:
        return _open_cached(folder, source.label, vocab, cfg.unknown)
    except _DAMAGED as e:  # damaged again, or set aside by another process between its checks and this one's
        raise CharloomError(f"{_shown(folder)}: the encoded corpus cannot be read back ({e}); run again") from None


def _set_aside(folder: Path) -> None:
    """A damaged cache entry renamed out of the way, then removed: the rename is atomic, so a process that put a
    whole entry in place meanwhile loses it to a reread, never to a half-removed folder."""
    aside = folder.with_name(f".{folder.name}{atomic.TMP_MARK}{os.getpid()}-damaged")
    try:
        os.replace(folder, aside)
    except OSError:
        return  # left in place: the encoding's own rename then finds it and keeps it, and the read back says so
    shutil.rmtree(aside, ignore_errors=True)


def _prepared(source: Source, cfg: CorpusConfig, skipped: list[int], labels: list[str] | None = None) -> Iterator[str]:
    """Normalised, lower-cased pieces: records (records kind) or stream pieces (continuous kind).
    labels: where the raw label of each record kept is appended (labelled records)."""
    if source.records:
        for rec, label in iter_labelled(source, cfg):
            rec = prepare_text(rec, cfg.normalize, cfg.lower)
            if not rec:
                skipped[0] += 1
                continue
            if labels is not None and label is not None:
                labels.append(label)
            yield rec
    else:
        for piece in iter_stream(source, cfg):
            yield prepare_text(piece, cfg.normalize, cfg.lower)


def label_names(raw: list[str], cfg: CorpusConfig) -> list[str]:
    """Each record's label name: its raw value through `cfg.label_map` (a value outside it is refused), or the
    raw value itself when there is no map; either without the spaces around it, which `text, label` rows of a CSV
    put before every label, and which would otherwise make ' Sports' and 'Sports' two labels that print alike."""
    mapping = cfg.label_names()
    raw = [r.strip() for r in raw]
    if mapping is None:
        return raw
    given = mapping
    if cfg.label_field is not None:  # a map written for JSON numbers as they were named before ("2.0=ok")
        mapping = {**{str(int(float(k))): v for k, v in given.items() if INTEGRAL_FLOAT.fullmatch(k)}, **given}
    bad = next((r for r in dict.fromkeys(raw) if r not in mapping), None)
    if bad is not None:
        # the first row's value, in no other row: most often a header row the reading was not told of
        header = bad == raw[0] and raw.count(bad) == 1 and not cfg.header and cfg.label_column is not None
        raise CharloomError(f"--label-map: label value {bad!r} is not in the map (it maps "
                            f"{', '.join(map(repr, given))})"
                            + ("; if the file's first row names its columns, give --header" if header else ""))
    return [mapping[r] for r in raw]


def label_indices(names: list[str], cfg: CorpusConfig, vocab: Vocab | None) -> tuple[tuple[str, ...], np.ndarray]:
    """(the vocabulary's label names, each record's index into them). A new vocabulary takes the names the
    records use, in the map's order (sorted without a map); a given one (a model's) must hold every name."""
    flag = "--label-column" if cfg.label_column is not None else "--label-field"
    if vocab is None:
        used = set(names)
        mapping = cfg.label_names()
        order = list(dict.fromkeys(mapping.values())) if mapping is not None else sorted(used)
        known = tuple(n for n in order if n in used)
    else:
        known = vocab.labels
        if not known:
            raise CharloomError(f"{flag}: the model was not trained on labelled records, so it has no labels")
        earlier = vocab.earlier_labels  # a model from before labels lost their spaces, or were named by value
        if earlier:
            names = [n if n in known else earlier.get(n, n) for n in names]
        bad = next((n for n in dict.fromkeys(names) if n not in known), None)
        if bad is not None:  # a name the map gave is the map's to fix
            named = "--label-map" if cfg.label_map is not None else flag
            raise CharloomError(f"{named}: label {bad!r} is not one of the model's ({', '.join(known)})")
    if "" in known:
        raise CharloomError(f"{flag}: {names.count(''):,} of {len(names):,} records have an empty label; give each one "
                            f"a label, or name the empty value with --label-map (\"=unlabelled\" beside the others)")
    try:
        check_labels(list(known), flag)
    except CharloomError as e:
        raise CharloomError(f"{e} (a label map, --label-map, can name them)") from None
    at = {n: i for i, n in enumerate(known)}
    return known, np.fromiter((at[n] for n in names), dtype=np.int16, count=len(names))


def _encode_to_cache(source: Source, cfg: CorpusConfig, vocab: Vocab | None, folder: Path) -> None:
    """Read the corpus twice, counting then encoding, into `folder` of the cache (through a temporary folder
    renamed into place)."""
    tmp = _cache_folder(folder)  # first, so that a cache that cannot be written stops before the text is read
    try:
        # pass 1: count characters (the vocabulary) and record lengths, holding nothing but counts (and labels)
        counter = CharCounter()
        lengths = array("q")
        skipped = [0]
        raw_labels: list[str] | None = [] if cfg.labelled else None

        def measured(pieces: Iterator[str]) -> Iterator[str]:
            for piece in pieces:
                lengths.append(len(piece))
                yield piece
        pieces = _prepared(source, cfg, skipped, raw_labels)
        for big in _buffered(measured(pieces)) if source.records else pieces:  # records counted many at a time
            counter.update(big)
        total = counter.total()
        if total == 0:
            what = "records" if source.records else "characters"
            raise CharloomError(f"{source.label}: the corpus is empty (0 {what} after reading {len(source.files)} "
                                f"file(s))")
        counts = counter.counts()
        names, labels = ((), None) if raw_labels is None else label_indices(label_names(raw_labels, cfg), cfg, vocab)
        if vocab is None:
            vocab = _vocab_of(counts, cfg, names)
            encoder = vocab if vocab.unknown == "unk" else Vocab(vocab.chars, normalize=vocab.normalize,
                                                                 lower=vocab.lower, ordered=True, labels=vocab.labels)
        else:
            encoder = vocab
        # pass 2: the ids, then what reading them back needs
        _write_ids(tmp / "ids.npy", source, cfg, encoder, total)
        if source.records:
            offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
            np.cumsum(np.frombuffer(lengths, dtype=np.int64), out=offsets[1:])
            np.save(tmp / "offsets.npy", offsets)
        if labels is not None:
            np.save(tmp / "labels.npy", labels)
        unknown = sum(n for c, n in counts.items() if c not in encoder)
        meta = {"vocab": vocab.to_dict(), "records": source.records, "format": source.format,
                "files": len(source.files), "characters": total, "empty_records_skipped": skipped[0],
                "unknown_characters": unknown}
        (tmp / "meta.json").write_text(json.dumps(meta))
        try:
            os.replace(tmp, folder)
        except OSError:  # another process cached the same corpus first: theirs is identical
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):  # reading the text turns its own errors into CharloomError: this is the cache's
            raise _unwritable(folder, e) from None
        raise


def _cache_folder(folder: Path) -> Path:
    """A new temporary folder beside `folder`, to be renamed to it once the encoding is whole."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        atomic.remove_leftovers(folder.parent)  # what encodings killed before their rename left
        return atomic.temporary_folder(folder)
    except OSError as e:
        raise _unwritable(folder, e) from None


def _unwritable(folder: Path, e: OSError) -> CharloomError:
    # the ids are memory-mapped from the cache, which is what keeps a large corpus out of memory: without a
    # cache to write them to there is no bounded way to load it, so this stops, as a cache folder that cannot be
    # made does, rather than reading the text whole
    cache = folder.parent.parent
    if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):  # the disk, or the user's quota, is full
        fix = "free space there, or name a folder on a disk with room for it"
    else:
        fix = "name a folder that can be written"
    return CharloomError(f"--cache-dir: cannot write the encoded corpus in {_shown(cache)} ({e.strerror or e}); "
                         f"{fix}")


def _vocab_of(counts: dict[str, int], cfg: CorpusConfig, labels: tuple[str, ...]) -> Vocab:
    """The vocabulary of the characters counted at least `cfg.min_count` times; refused when that leaves none,
    since every id would then be <unk> and a model would learn nothing."""
    vocab = Vocab.from_counts(counts, min_count=cfg.min_count, unknown=cfg.unknown, normalize=cfg.normalize,
                              lower=cfg.lower, labels=labels)
    if not vocab.chars:
        raise CharloomError(f"--min-count {cfg.min_count}: no character occurs that often, so the vocabulary would be "
                            f"empty (the text has {len(counts)} distinct characters, the most frequent "
                            f"{max(counts.values()):,} times)")
    return vocab


def _write_ids(path: Path, source: Source, cfg: CorpusConfig, encoder: Vocab, total: int) -> None:
    """The corpus's ids as an .npy file of `total` ids."""
    # plain sequential writes after an .npy header: a memory map being written would count every
    # page of the array in this process's memory; a 4 MiB piece at a time keeps it bounded
    dtype = _id_dtype(len(encoder))
    pos = 0
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (total,)})
        for big in _buffered(_prepared(source, cfg, [0])):
            enc = encoder.encode_array(big, where=source.label, offset=pos, prepared=True, dtype=dtype)
            f.write(enc.tobytes())
            pos += len(enc)
    if pos != total:
        raise CharloomError(f"{source.label}: the corpus changed while it was being read; run again")


def _open_cached(folder: Path, label: str, vocab: Vocab | None, unknown: str) -> Corpus:
    """The cached corpus; without `vocab`, the vocabulary it built, under this read's unknown-character policy
    (the ids do not depend on it, so reads differing only in the policy share them)."""
    meta = json.loads((folder / "meta.json").read_text())
    # copy-on-write: a writable view for torch.from_numpy that never changes the cached file
    ids = np.load(folder / "ids.npy", mmap_mode="c")
    offsets = np.load(folder / "offsets.npy") if meta["records"] else None
    labels = np.load(folder / "labels.npy") if (folder / "labels.npy").exists() else None
    stats = {k: meta[k] for k in ("format", "files", "characters", "empty_records_skipped", "unknown_characters")}
    vocab = vocab or Vocab.from_dict({**meta["vocab"], "unknown": unknown}, where=str(folder))
    _check_cached(ids, offsets, labels, meta["characters"], len(vocab))
    return Corpus(label, vocab, ids, offsets, stats, labels)


def _check_cached(ids: np.ndarray, offsets: np.ndarray | None, labels: np.ndarray | None, characters: int,
                  vocab_size: int) -> None:
    """Raises ValueError where a cached entry no longer holds what its meta.json says: the ids' count and type,
    record offsets from 0 to the last id, and one label per record. The ids themselves are not scanned: that
    would read a large corpus whole at every load, where mapping it reads only what training asks for."""
    if ids.shape != (characters,) or ids.dtype != _id_dtype(vocab_size):
        raise ValueError(f"ids.npy holds {ids.shape} {ids.dtype}, not {characters:,} ids")
    if offsets is not None and (offsets.ndim != 1 or len(offsets) < 2 or offsets[0] != 0 or offsets[-1] != characters
                                or (np.diff(offsets) < 0).any()):
        raise ValueError("offsets.npy does not cut the ids into records")
    records = None if offsets is None else len(offsets) - 1
    if labels is not None and labels.shape != (records,):
        raise ValueError(f"labels.npy holds {labels.shape}, not one label per record")


__all__ = ["Bundled", "Corpus", "Source", "bundled", "iter_labelled", "iter_records", "iter_stream", "load",
           "read_chunks", "resolve"]
