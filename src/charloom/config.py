"""Typed, documented, validated options: one dataclass per concern.

Each field carries its help text in `metadata["help"]`, so the CLI builds its flags from these classes
(no parameter list repeated elsewhere) and `to_dict`/`from_dict` give a JSON round-trip that refuses
unknown keys and ill-typed values.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import ConfigError


def option(default: Any, help: str, *, flag: str | None = None, metavar: str | None = None) -> Any:
    """A dataclass field with its help text (and optionally its CLI flag name)."""
    meta = {"help": help, "flag": flag, "metavar": metavar}
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple for sequence defaults")
    return field(default=default, metadata=meta)


def _check(name: str, value: Any, tp: Any) -> Any:
    """Return `value` checked against annotation `tp` (tuples normalised from lists); raise ConfigError."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arm in args:
            try:
                return _check(name, value, arm)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(f"{name}: {value!r} is not {_describe(tp)}")
    if origin is Literal:
        if value in args and type(value) is type(args[args.index(value)]):
            return value
        raise ConfigError(f"{name}: {value!r} is not one of {', '.join(map(repr, args))}")
    if origin is tuple:
        if not isinstance(value, (tuple, list)):
            raise ConfigError(f"{name}: {value!r} is not a list")
        item = args[0]
        return tuple(_check(f"{name}[{i}]", v, item) for i, v in enumerate(value))
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{name}: {value!r} is not null")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{name}: {value!r} is not a number")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{name}: {value!r} is not an integer")
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise ConfigError(f"{name}: {value!r} is not {_describe(tp)}")
    raise TypeError(f"unsupported annotation {tp!r} on {name}")


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(tp)))
    if origin is tuple:
        return "a list"
    if tp is type(None):
        return "null"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


class Config:
    """Base of the option dataclasses: type checks on construction, strict dict round-trip."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            checked = _check(f.name, getattr(self, f.name), hints[f.name])
            object.__setattr__(self, f.name, checked)
        self.validate()

    def validate(self) -> None:
        """Range checks across fields; subclasses raise ConfigError naming the field."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config"):
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected an object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown option(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        try:
            return cls(**data)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)


def _positive(cfg: Config, *names: str) -> None:
    for n in names:
        if getattr(cfg, n) <= 0:
            raise ConfigError(f"{n}: must be positive, got {getattr(cfg, n)}")


@dataclass(frozen=True)
class CorpusConfig(Config):
    """Where the text is, how to read it, and how its characters become a vocabulary."""

    source: str = option("shakespeare", "a text file, a folder, a glob, or a bundled corpus name", flag="source", metavar="SOURCE")
    format: Literal["auto", "text", "lines", "csv", "tsv", "jsonl"] = option(
        "auto", "how to read the files; auto: from the extension (.csv .tsv .jsonl, else text)")
    records: bool | None = option(
        None, "each record (line, row, JSON object, file) is a separate sample wrapped in <bos>...<eos>; "
        "default: records for a bundled records corpus, one continuous stream otherwise")
    columns: tuple[str, ...] = option(
        (), "CSV/TSV column(s) holding the text, by header name or 0-based index; repeat to join several",
        flag="column", metavar="NAME|INDEX")
    column_sep: str = option(" ", "joins the chosen columns of one row")
    header: bool | None = option(None, "the CSV has a header row; default: yes when a column is chosen by name")
    field: str | None = option(None, "JSONL: the key holding the text (dotted for nested objects: meta.text)")
    extensions: tuple[str, ...] = option(
        (), "folder/glob: only files with this extension (.py); repeatable", flag="ext", metavar="EXT")
    separator: str = option("\n", "continuous corpora: what joins records or files into one stream")
    encoding: str = option("utf-8", "text encoding of the files; a byte-order mark is always stripped")
    decode_errors: Literal["strict", "replace"] = option(
        "strict", "undecodable bytes: strict stops with the file and byte offset, replace puts U+FFFD")
    lower: bool = option(False, "lower-case all text (the vocabulary shrinks)")
    normalize: Literal["none", "NFC", "NFKC"] = option("none", "Unicode normalisation applied to all text")
    unknown: Literal["unk", "error"] = option(
        "unk", "characters outside the vocabulary: map to <unk>, or stop with the character and its position")
    min_count: int = option(1, "characters seen fewer times than this are left out of the vocabulary (become <unk>)")
    cache_dir: str | None = option(
        None, "where encoded ids are cached (default: $CHARLOOM_CACHE_DIR or ~/.cache/charloom)")

    def validate(self) -> None:
        _positive(self, "min_count")
        if self.field is not None and not self.field:
            raise ConfigError("field: must not be empty")
        for ext in self.extensions:
            if not ext or "/" in ext:
                raise ConfigError(f"ext: {ext!r} is not a file extension")


@dataclass(frozen=True)
class BatchConfig(Config):
    """How an encoded corpus becomes training batches and a held-out split."""

    batch_size: int = option(64, "sequences per batch (B)")
    seq_len: int = option(128, "continuous corpora: characters per training window (T)")
    order: Literal["shuffle", "contiguous"] = option(
        "shuffle", "continuous corpora: shuffle = non-overlapping windows in random order each epoch; "
        "contiguous = B parallel streams read in order, so hidden state can carry across batches")
    val_fraction: float = option(0.05, "share of the corpus held out for validation (0 for none)")
    split: Literal["auto", "tail", "random"] = option(
        "auto", "tail = hold out the end of the corpus; random = hold out seeded random blocks or records; "
        "auto = tail for continuous corpora, random for records (a records file is often sorted)")
    max_record_len: int = option(512, "records: characters kept per record")
    overlong: Literal["cut", "skip"] = option("cut", "records longer than max-record-len: cut them, or skip them")
    bucket: bool = option(True, "records: batch records of similar length together, so little compute goes to padding")
    seed: int = option(1337, "seed for the split and the batch order")

    def validate(self) -> None:
        _positive(self, "batch_size", "seq_len", "max_record_len")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction: must be in [0, 1), got {self.val_fraction}")
