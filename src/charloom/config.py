"""Typed, documented, validated options: one dataclass per concern.

Each field carries its help text in `metadata["help"]`, so the CLI builds its flags from these classes
(no parameter list repeated elsewhere) and `to_dict`/`from_dict` give a JSON round-trip that refuses
unknown keys and ill-typed values.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import numbers
import os
import re
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from .errors import ConfigError

_SURROGATE = re.compile("[\ud800-\udfff]")  # half of a UTF-16 pair alone: no character
# a web origin as a browser sends it: scheme://host[:port], no user, path or wildcard, and no port its scheme
# implies (a browser leaves :443 out of an https origin, :80 out of an http one); a file's page sends null
_ORIGIN = re.compile(r"(?!https://[^/]*:0*443$|http://[^/]*:0*80$|file:)[a-z][a-z0-9+.-]*://[^/?#@*\s]+", re.I)

# a Host header's value as a browser sends it: a name or IPv4 address, or an IPv6 one in brackets, with a port or
# not; a bare IPv6 address (two colons at least, no port); or * for any
_HOST = re.compile(r"\*|(?:[a-z0-9_-]+(?:\.[a-z0-9_-]+)*\.?|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?"
                   r"|[0-9a-f]*:[0-9a-f]*:[0-9a-f:.]*", re.I)


FLOAT32_MAX = 3.4028234663852886e38  # the largest finite float32
MAX_SAMPLE_LENGTH = 100_000  # characters of each sample a run shows at its evaluations
MAX_RECORD_LEN = 2**40  # characters a record may keep: far past any record, within an int64 length's range
MAX_LR = 10.0  # the highest peak learning rate taken


def option(default: Any, help: str, *, flag: str | None = None, metavar: str | None = None, path: bool = False) -> Any:
    """A dataclass field with its help text (and optionally its CLI flag name). path: the value names a file or
    folder, so it may hold the escaped bytes of a name that is not UTF-8 (legal on Linux); other text may not."""
    meta = {"help": help, "flag": flag, "metavar": metavar, "path": path}
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple for sequence defaults")
    return field(default=default, metadata=meta)


def expand(path: str | Path) -> Path:
    """`path` with a leading ~ or ~user made the home folder it names, as a shell makes it: where no such user is
    known it stays as written (pathlib's expanduser raises a bare RuntimeError there)."""
    return Path(os.path.expanduser(os.fspath(path)))


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
        # numbers.Real: a NumPy scalar (np.float32(0.5), a model's output) is a number as a float is
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            value = int(value) if isinstance(value, numbers.Integral) else float(value)
            if isinstance(value, int) and abs(value) > 2**1023:  # a JSON integer past float's range
                raise ConfigError(f"{name}: integer too large to be a number")
            if not math.isfinite(value):
                raise ConfigError(f"{name}: {value!r} is not a finite number")
            if abs(value) > FLOAT32_MAX:  # options reach float32 tensors, where such a value turns to inf
                raise ConfigError(f"{name}: {value!r} is beyond the range of a float32 ({FLOAT32_MAX:.3g})")
            return float(value)
        raise ConfigError(f"{name}: {value!r} is not a number")
    if tp is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
        raise ConfigError(f"{name}: {value!r} is not an integer")
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise ConfigError(f"{name}: {value!r} is not {_describe(tp)}")
    raise TypeError(f"unsupported annotation {tp!r} on {name}")


def check_text(name: str, value: Any, cause: str = "bytes that are not UTF-8?") -> None:
    """Text that is not text is refused: a lone surrogate (what bytes that are not UTF-8 on the command line, or a
    JSON escape, become) is not a character; no UTF-8 file, terminal or reply can hold it, and it would fail at a
    save or a sample minutes later. `cause`: what the message says it likely came from."""
    items = [(f"{name}[{i}]", v) for i, v in enumerate(value)] if isinstance(value, tuple) else [(name, value)]
    for where, text in items:
        if isinstance(text, str) and not text.isascii() and (bad := _SURROGATE.search(text)):
            raise ConfigError(f"{where}: U+{ord(bad.group()):04X} at position {bad.start()} is a lone surrogate, not "
                              f"a character ({cause})")


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
            object.__setattr__(self, f.name, _check(f.name, getattr(self, f.name), hints[f.name]))
        self.validate()  # first: a class's own check of a text may name it better (a sample's start, by its flag)
        for f in dataclasses.fields(self):
            if not f.metadata.get("path"):
                check_text(f.name, getattr(self, f.name))

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
        return dataclasses.replace(self, **changes).marked(self.given)

    @property
    def given(self) -> frozenset[str]:
        """The options the user named (flags on the command line, keywords to `train`), whatever their value."""
        return self.__dict__.get("_given", frozenset())

    def marked(self, names: Iterable[str]):
        """A copy with `names` marked as given too (see `is_set`)."""
        new = copy.copy(self)
        object.__setattr__(new, "_given", self.given | frozenset(names))  # not a field: no file or dict holds it
        return new

    def is_set(self, name: str) -> bool:
        """Whether option `name` asks for something: given by name, or away from its default. A check that refuses an
        option its other options leave unread asks this, so a flag given at its default is refused too."""
        return name in self.given or getattr(self, name) != type(self).__dataclass_fields__[name].default


MAX_LABEL_LENGTH = 64  # characters of one label name
MAX_LABELS = 1024  # label names one vocabulary may hold


def _positive(cfg: Config, *names: str) -> None:
    for n in names:
        if getattr(cfg, n) <= 0:
            raise ConfigError(f"{n}: must be positive, got {getattr(cfg, n)}")


def _seed(seed: int) -> None:
    if not 0 <= seed < 2**62:
        raise ConfigError(f"seed: must be in [0, 2**62), got {seed}")


@dataclass(frozen=True)
class CorpusConfig(Config):
    """Where the text is, how to read it, and how its characters become a vocabulary."""

    source: str = option("shakespeare", "a text file, a folder, a glob, or a bundled corpus name", flag="source",
                         metavar="SOURCE", path=True)
    format: Literal["auto", "text", "lines", "csv", "tsv", "jsonl"] = option(
        "auto", "how to read the files; auto: from the extension (.csv .tsv .jsonl, else text)")
    records: bool | None = option(
        None, "each record (line, row, JSON object, file) is a separate sample wrapped in <bos>...<eos>; "
        "default: records for a bundled records corpus, one continuous stream otherwise (eval: as the model trained)")
    columns: tuple[str, ...] = option(
        (), "CSV/TSV column(s) holding the text, by header name or 0-based index; repeat to join several",
        flag="column", metavar="NAME|INDEX")
    column_sep: str = option(" ", "joins the chosen columns of one row")
    header: bool | None = option(None, "the CSV has a header row; default: yes when a column is chosen by name")
    field: str | None = option(None, "JSONL: the key holding the text (dotted for nested objects: meta.text; a key "
                                           "holding the dots itself comes first)")
    extensions: tuple[str, ...] = option(
        (), "folder/glob: only files with this extension (.py); repeatable", flag="ext", metavar="EXT")
    separator: str = option("\n", "continuous corpora: what joins records or files into one stream")
    encoding: str = option("utf-8", "text encoding of the files; a leading byte-order mark (U+FEFF) is dropped")
    decode_errors: Literal["strict", "replace"] = option(
        "strict", "undecodable bytes: strict stops with the file and byte offset, replace puts U+FFFD")
    lower: bool = option(False, "lower-case all text (the vocabulary shrinks)")
    normalize: Literal["none", "NFC", "NFKC"] = option("none", "Unicode normalisation applied to all text")
    unknown: Literal["unk", "error"] = option(
        "unk", "characters outside the vocabulary: map to <unk>, or stop with the character and its position")
    min_count: int = option(1, "characters seen fewer times than this are left out of the vocabulary (become <unk>)")
    cache_dir: str | None = option(
        None, "where encoded ids are cached (default: $CHARLOOM_CACHE_DIR or ~/.cache/charloom)", path=True)
    label_column: str | None = option(
        None, "records from a CSV/TSV: the column holding each record's label (World, Sports...), by header name or "
              "0-based index; the model learns to write for a chosen label", metavar="NAME|INDEX")
    label_field: str | None = option(
        None, "records from JSONL: the key holding each record's label (dotted as --field is)")
    label_map: str | None = option(
        None, "label values to names, RAW=NAME pairs joined by commas: \"1=World,2=Sports\"; a value not in the "
              "map is refused (default: the values themselves are the names)", metavar="PAIRS")

    def validate(self) -> None:
        _positive(self, "min_count")
        if not self.source.strip():  # Path("") is the current folder: every file under it would be read
            raise ConfigError("source: must name a corpus, a file, a folder or a glob")
        if self.field is not None and not self.field:
            raise ConfigError("field: must not be empty")
        if self.label_field is not None and not self.label_field:
            raise ConfigError("label_field: must not be empty")
        if self.label_column is not None and self.label_field is not None:
            raise ConfigError("label_column and label_field: give one (a CSV column or a JSONL field), not both")
        if self.records is False and self.labelled:
            raise ConfigError("label_column/label_field: labels belong to records; drop --no-records")
        if self.label_map is not None and not self.labelled:
            raise ConfigError("label_map: only means something with --label-column or --label-field")
        if self.label_column is not None and self.label_column in self.columns:  # every text its own label
            raise ConfigError(f"label_column: {self.label_column!r} is also a text column (--column); the label is "
                              f"another column")
        if self.label_field is not None and self.label_field == self.field:
            raise ConfigError(f"label_field: {self.label_field!r} is also the text's field (--field); the label is "
                              f"another field")
        self.label_names()  # checks the map
        for ext in self.extensions:
            if not ext or "/" in ext:
                raise ConfigError(f"ext: {ext!r} is not a file extension")

    @property
    def labelled(self) -> bool:
        """Each record carries a label."""
        return self.label_column is not None or self.label_field is not None

    def label_names(self) -> dict[str, str] | None:
        """`label_map` as {raw value: name}, or None when the raw values are the names."""
        if self.label_map is None:
            return None
        pairs: dict[str, str] = {}
        for piece in self.label_map.split(","):
            raw, eq, name = (part.strip() for part in piece.partition("="))
            if not eq or not name:  # an empty raw value names the records whose label is empty
                raise ConfigError(f"label_map (--label-map): {piece.strip()!r} is not RAW=NAME "
                                  f"(example: \"1=World,2=Sports\")")
            if raw in pairs:
                raise ConfigError(f"label_map (--label-map): value {raw!r} is mapped twice")
            if len(name) > MAX_LABEL_LENGTH:
                raise ConfigError(f"label_map (--label-map): name {name[:20]!r}... is longer than "
                                  f"{MAX_LABEL_LENGTH} characters")
            pairs[raw] = name
        return pairs

    @classmethod
    def recorded(cls, saved: Any) -> CorpusConfig:
        """The training corpus a model file records (its info's corpus_config), to be read as it was read then; but
        never cached where the file says: a file a user loads must not choose where anything is written, so this
        machine's cache serves (--cache-dir, $CHARLOOM_CACHE_DIR or the default)."""
        return cls.from_dict(saved, where="model file: corpus_config").replace(cache_dir=None)


FIT_CHARS = 200_000  # characters of training text an n-gram mixture's weights are fitted on, at most
# the batch sizes a run that chooses its width for a time limit chooses among (the first: any other run's); a
# batch of 32 costs little more per step than 16 where the CPU multiplies bf16 in tiles (AMX)
BATCH_SIZES = (16, 32)


@dataclass(frozen=True)
class BatchConfig(Config):
    """How an encoded corpus becomes training batches and a held-out split."""

    batch_size: int = option(0, "sequences per batch (B); 0: 16, or 32 where the run chooses its width for a time "
                                "limit and this machine trains enough faster at 32 (see sizing)")
    seq_len: int = option(256, "continuous corpora: characters per training window (T); the hidden state runs "
                               "through a whole window, learned in pieces of it (--early-pieces, --late-pieces)")
    order: Literal["shuffle", "contiguous"] = option(
        "shuffle", "continuous corpora: shuffle = non-overlapping windows in random order each epoch; "
        "contiguous = B parallel streams read in order, so hidden state can carry across batches")
    val_fraction: float = option(0.05, "share of the corpus held out for validation (0 for none)")
    split: Literal["auto", "tail", "random"] = option(
        "auto", "tail = hold out the end of the corpus; random = hold out seeded random blocks or records; "
        "auto = tail for continuous corpora, random for records (a records file is often sorted)")
    fit_chars: int = option(-1, "characters of the training split that training leaves out, at most a tenth of it "
                                "(the split's start, or seeded random whole records), so that the n-gram's mixture "
                                "(--ngram) is fitted on text the network has not learned by heart (0: none; -1: "
                                "200,000 in a run that mixes in an n-gram, else none; a split that would keep "
                                "fewer characters than ten batches of --seq-len windows keeps them all)")
    max_record_len: int = option(512, "records: characters kept per record")
    overlong: Literal["cut", "skip"] = option("cut", "records longer than max-record-len: cut them, or skip them")
    bucket: bool = option(True, "records: batch records of similar length together, so little compute goes to padding")
    label_dropout: float = option(
        0.1, "labelled records: the share of training records read without their label token, so that the model "
             "also writes when no label is asked for (evaluation always gives the label)")
    seed: int = option(1337, "seed for the split and the batch order (and, on the command line, the weights, "
                             "dropout and samples)")

    def settled(self, ngram: int) -> BatchConfig:
        """fit_chars -1 made what a run with `ngram` (TrainConfig.ngram) takes."""
        if self.fit_chars >= 0:
            return self
        return self.replace(fit_chars=FIT_CHARS if ngram else 0)

    @property
    def rows(self) -> int:
        """Sequences per batch: batch_size, or where it is 0 (chosen by a run) the first of BATCH_SIZES."""
        return self.batch_size or BATCH_SIZES[0]

    def validate(self) -> None:
        _positive(self, "seq_len", "max_record_len")
        if self.max_record_len > MAX_RECORD_LEN:  # lengths are cut to it in int64 arrays
            raise ConfigError(f"max_record_len: at most {MAX_RECORD_LEN:,}, got {self.max_record_len:,}")
        if self.batch_size < 0:
            raise ConfigError(f"batch_size: must be 0 (chosen) or positive, got {self.batch_size}")
        _seed(self.seed)
        if self.fit_chars < -1:
            raise ConfigError(f"fit_chars: must be -1 (by the run's n-gram) or more, got {self.fit_chars}")
        if not 0.0 <= self.label_dropout <= 1.0:
            raise ConfigError(f"label_dropout: must be in [0, 1], got {self.label_dropout}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction: must be in [0, 1), got {self.val_fraction}")


SPLIT_FIELDS = ("split", "val_fraction", "seed")  # the BatchConfig fields that decide a run's held-out split
EXPORTED = "model.onnx"  # the file `charloom export` writes into a run folder by default ...
EXPORTED_INT8 = "model.int8.onnx"  # ... and its int8 twin (--int8)


def onnx_named(path: str | Path) -> bool:
    """Whether a path names an exported ONNX file (model.onnx, or MODEL.ONNX as a case-blind file system keeps it)."""
    return str(path).lower().endswith(".onnx")


# each recurrent cell's state tensors by name, each (num_layers, B, H): the cells of cells.CELLS, named here
# without torch so that a config and an exported file's state can be checked where torch is absent
CELL_STATES: dict[str, tuple[str, ...]] = {"lstm": ("h", "c"), "gru": ("h",), "rnn": ("h",)}
MAX_GRAMS = 8  # the longest hashed context (ModelConfig.grams)
RECENT = "recent"  # the state tensor of a model with hashed contexts that holds the last ids it read
MAX_GRAM_BUCKETS = 2**22  # rows of one hashed context table at most
MAX_HEAD_HIDDEN = 2**16  # units of the head's hidden layer at most (a model file holds no wider)
MAX_WIDTH = 2**16  # units of a recurrent layer, and of the embedding, at most (a model file holds no wider)
MAX_LAYERS = 256  # recurrent layers at most (a model file holds no deeper)
MAX_MEMORY = 4096  # outputs an attention head looks back over at most
MEMORY = "memory"  # the state tensor of a model with an attention head: its keys and values, and which are filled


@dataclass(frozen=True)
class ModelConfig(Config):
    """The network: a recurrent cell stack between a character input and a head that gives the logits."""

    cell: str = option("lstm", "recurrent cell: lstm, gru, or rnn (vanilla tanh); the entries of cells.CELLS")
    num_layers: int = option(1, "stacked recurrent layers", flag="layers")
    hidden_size: int = option(0, "units per recurrent layer (0: the width that predicts the lowest held-out bpc for "
                                 "this machine and budget, measured at the start; see sizing)", flag="hidden")
    embedding: int = option(64, "input: 0 = one-hot characters (as in the notebooks), N = a learned N-wide embedding")
    grams: int = option(0, "hashed context inputs: each character's input vector adds a learned one for each run of "
                           "2..N characters ending at it, found by hash in a table (0: none; 4 helped Shakespeare "
                           "but not code or names: see README)")
    gram_buckets: int = option(8192, "rows of each hashed context table (--grams); contexts beyond it share rows")
    head_hidden: int = option(-1, "a hidden layer of this many units (GELU) between the last recurrent layer and the "
                                  "logits: a deeper readout, whose products are large ones, so it costs a fraction "
                                  "of what widening the recurrent layers would (-1: as wide as the recurrent layer; "
                                  "0: none, a linear head, as in model files from before it)")
    attention: int = option(64, "one attention head over the last recurrent layer's most recent outputs (--memory "
                                "of them, carried in the state), added to its output before the head: the width of "
                                "its keys and values (0: none, as in model files from before it)")
    memory: int = option(256, "outputs the attention head (--attention) looks back over")
    shifted_keys: bool = option(True, "attention head: each position's key also reads the output before it, so a "
                                      "query that matches the text up to a position reads the character that "
                                      "came next (off: keys from the position's own output, as in model files "
                                      "from before it)")
    dropout: float = option(0.0, "dropout between recurrent layers and before the head")
    forget_bias: float = option(0.0, "lstm: initial bias of the forget gate (0: PyTorch's initialisation; 1 opens "
                                     "the memory from the first step, as Keras does)")
    vocab_size: int = option(0, "ids the model reads and predicts (set from the vocabulary, not by hand)")

    def check_unused(self) -> None:
        """Refuse, for a new model, an option set that its other options leave unread (a model file that holds one
        still loads: this is not part of validate)."""
        if self.is_set("forget_bias") and self.cell != "lstm":
            raise ConfigError(f"forget_bias: only for --cell lstm; the {self.cell} cell has no forget gate")
        if self.is_set("gram_buckets") and not self.grams:
            raise ConfigError("gram_buckets: only with --grams N, whose tables it sizes")
        for name in ("memory", "shifted_keys"):
            if not self.attention and self.is_set(name):
                raise ConfigError(f"{name}: only with an attention head, which --attention 0 leaves out")

    def validate(self) -> None:
        if self.cell not in CELL_STATES:
            raise ConfigError(f"cell: {self.cell!r} is not one of {', '.join(map(repr, CELL_STATES))}")
        _positive(self, "num_layers")
        if self.hidden_size < 0:
            raise ConfigError(f"hidden_size: must be positive (or 0: sized for the run), got {self.hidden_size}")
        if self.embedding < 0:
            raise ConfigError(f"embedding: must be 0 (one-hot) or positive, got {self.embedding}")
        # refused before any work: a run would train a model its own file could not hold
        for name, most in (("num_layers", MAX_LAYERS), ("hidden_size", MAX_WIDTH), ("embedding", MAX_WIDTH)):
            if getattr(self, name) > most:
                raise ConfigError(f"{name}: {getattr(self, name):,} is more than a model file may hold ({most:,})")
        if not -1 <= self.head_hidden <= MAX_HEAD_HIDDEN:
            raise ConfigError(f"head_hidden: must be -1 (as wide as the recurrent layer), 0 (none) or from 1 to "
                              f"{MAX_HEAD_HIDDEN:,}, got {self.head_hidden}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout: must be in [0, 1), got {self.dropout}")
        if not 0 <= self.attention <= MAX_HEAD_HIDDEN:
            raise ConfigError(f"attention: must be 0 (none) or from 1 to {MAX_HEAD_HIDDEN:,}, got {self.attention}")
        if not 1 <= self.memory <= MAX_MEMORY:
            raise ConfigError(f"memory: must be from 1 to {MAX_MEMORY:,}, got {self.memory}")
        if self.grams and not 2 <= self.grams <= MAX_GRAMS:
            raise ConfigError(f"grams: must be 0 (none) or from 2 to {MAX_GRAMS}, got {self.grams}")
        if not 1 <= self.gram_buckets <= MAX_GRAM_BUCKETS:
            raise ConfigError(f"gram_buckets: must be from 1 to {MAX_GRAM_BUCKETS:,}, got {self.gram_buckets}")
        if self.vocab_size < 0:
            raise ConfigError(f"vocab_size: must not be negative, got {self.vocab_size}")

    @property
    def head_width(self) -> int:
        """Units of the head's hidden layer (0: a linear head)."""
        return self.hidden_size if self.head_hidden == -1 else self.head_hidden

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config"):
        # a model saved before the head's hidden layer existed has a linear head; one saved before the attention
        # head existed has none
        if isinstance(data, dict) and "head_hidden" not in data:
            data = {**data, "head_hidden": 0}
        if isinstance(data, dict) and "attention" not in data:
            data = {**data, "attention": 0}
        if isinstance(data, dict) and "shifted_keys" not in data:  # one saved before shifted keys had own-position keys
            data = {**data, "shifted_keys": False}
        return super().from_dict(data, where)


def state_shapes(cfg: ModelConfig) -> dict[str, tuple[int, int]]:
    """Each tensor of the model's state by name -> (its first dimension, its last): every one is (first, B, last).
    The cell's (num_layers, B, H), then with hashed contexts `recent` (1, B, grams - 1): the last ids read, plus
    one (0: before the text), held as float32 (exact for every id) so that every state tensor is a float."""
    shapes = {name: (cfg.num_layers, cfg.hidden_size) for name in CELL_STATES[cfg.cell]}
    shapes |= {RECENT: (1, cfg.grams - 1)} if cfg.grams else {}
    return shapes | ({MEMORY: (cfg.memory, 2 * cfg.attention + 1)} if cfg.attention else {})


def parse_duration(text: str, name: str = "max_time") -> float:
    """'90s', '10m', '1.5h', '2m30s' or plain seconds -> seconds."""
    import re

    t = text.strip().lower()
    if not t:
        return 0.0
    if re.fullmatch(r"\d+(\.\d+)?", t):
        t += "s"  # plain seconds
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", t)
    if not parts or "".join(a + b for a, b in parts) != t.replace(" ", ""):
        raise ConfigError(f"{name}: {text!r} is not a duration (examples: 90s, 10m, 1.5h, 2m30s)")
    seconds = sum(float(a) * {"h": 3600, "m": 60, "s": 1}[b] for a, b in parts)
    if not math.isfinite(seconds):  # digits past a float's range read as inf: no budget at all
        raise ConfigError(f"{name}: {text[:40]!r}{'...' if len(text) > 40 else ''} is too long a duration")
    return seconds


MAX_PIECES = 64  # TrainConfig.early_pieces and late_pieces at most: each piece costs an optimizer step's fixed work
EARLY_PIECE = 32  # characters per row of an early piece where --early-pieces is 0 (a fresh run)
LATE_PIECE = 128  # characters per row of a late piece where --late-pieces is 0


@dataclass(frozen=True)
class TrainConfig(Config):
    """How long and how to train, how often to evaluate and show samples, where to save."""

    out: str = option("runs/latest", "run folder: model.safetensors (best), last.safetensors (resume), metrics.jsonl",
                      path=True)
    max_steps: int = option(0, "stop after this many steps, a batch each (0: no step limit)")
    epochs: float = option(0.0, "stop after this many passes over the training split (0: no epoch limit)")
    max_time: str = option("", "stop after this much training time: 90s, 10m, 1.5h (default 10m when no "
                               "budget is given)")
    lr: float = option(0.0, "peak learning rate of AdamW (0: 5e-3 x 640 / the width, at most 1e-2); a resumed "
                            "run keeps the rate it trained with unless this is given")
    min_lr_ratio: float = option(0.1, "cosine schedule: the final learning rate as a share of --lr")
    warmup: int = option(50, "steps (batches) of linear learning-rate warm-up")
    schedule: Literal["cosine", "constant"] = option("cosine", "learning rate after warm-up: cosine decay over "
                                                                "the budget, or constant")
    weight_decay: float = option(0.1, "AdamW's decoupled weight decay: each step shrinks every weight by lr x this "
                                      "(0: off)")
    grad_clip: float = option(1.0, "clip the gradient norm to this (0: no clipping)")
    ema: float = option(0.998, "the model evaluated, sampled and saved is an exponential moving average of the "
                               "trained weights with this decay per step, a batch each (the first steps average "
                               "over fewer: decay min(ema, (1 + n) / (10 + n)) after n updates); 0: the trained "
                               "weights")
    carry_state: bool = option(True, "contiguous order: carry the hidden state from batch to batch (detached)")
    early_pieces: int = option(0, "continuous corpora, early in the budget: each step's windows are learned in this "
                                  "many consecutive pieces, one optimizer update each, the hidden state carried from "
                                  "piece to piece: more updates while the loss falls fastest (0: one per 32 "
                                  "characters of --seq-len for a fresh run, 8 at 256; 1 for a fine-tune, which lost "
                                  "with them; 1: off)")
    early_share: float = option(0.3, "the share of the budget over which --early-pieces applies")
    late_pieces: int = option(0, "continuous corpora, after the early share: each step's windows are learned in "
                                 "this many consecutive pieces, as early, so that the state runs through a longer "
                                 "window than an update learns from (0: one per 128 characters of --seq-len, 2 at "
                                 "256; 1: whole windows)")
    ngram: int = option(12, "at the end, mix the network with an n-gram of the training text (0: none) of at most this "
                           "order: the shortest order that mixes as well as any longer one on the last of the "
                           "training text (given 50,000 characters there to choose on; else this order); the "
                           "model file then holds the training text, its last 64 M / order characters at most (at "
                           "12, 5.3 M: longer orders count less of a longer text)")
    eval_every: int = option(200, "evaluate on the validation split every N steps (0: only at the end)")
    eval_chars: int = option(65536, "characters (or records' characters) of the validation split used by the "
                                    "evaluations (the same ones each time, so they compare); 0 = all; the final "
                                    "evaluation also scores the whole split")
    sample_length: int = option(200, "characters per sample shown at each evaluation (0: no samples)")
    sample_temperatures: tuple[float, ...] = option(
        (0.5, 1.0), "temperatures of the samples shown at each evaluation; repeatable",
        flag="sample_temperature", metavar="T")
    sample_start: str = option("", "start text of the samples shown during training")
    device: Literal["auto", "cpu", "cuda", "mps"] = option("auto", "auto: cuda, then mps, then cpu")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = option(
        "auto", "matrix products under autocast, in training and its evaluations (weights and optimizer stay "
                "fp32); auto: bf16 where a probe of this machine's kernel finds that it runs and is faster, else "
                "fp32; fp16 is for a CUDA GPU only")
    threads: int = option(0, "CPU threads for torch (0: the CPUs this process may use, less those other work keeps "
                             "busy when the run starts)")
    seed: int = option(1337, "seed for weights, dropout and samples (on the command line, --seed sets this "
                             "and the batch order's seed together)")
    resume: bool = option(False, "continue the run in --out from last.safetensors, exactly where it stopped")
    init_from: str = option("", "fine-tune: start from this run folder's (or model file's) weights, keeping its "
                                "vocabulary and model config; characters outside its vocabulary follow its "
                                "unknown-character policy", metavar="RUN", path=True)
    extend_vocab: bool = option(False, "with --init-from: add the new text's unknown characters to the vocabulary as "
                                       "new ids (new rows in the input and output layers; the old rows unchanged)")
    overwrite: bool = option(False, "start afresh even if --out already holds a run (its files are replaced)")
    progress: bool = option(True, "show a progress bar, evaluations and samples on the terminal while it trains "
                                  "(off: only the end: where the model went, its score and the run's report)")

    def check_unused(self) -> None:
        """Refuse, for a new run, an option its other options leave unread (not part of validate: a resumed run's
        file may hold one)."""
        if self.schedule == "constant" and self.is_set("min_lr_ratio"):
            raise ConfigError("min_lr_ratio: the cosine schedule's end, and --schedule constant never decays")

    @property
    def shows_samples(self) -> bool:
        """Whether the run's evaluations print samples on the terminal."""
        return bool(self.progress and self.sample_length and self.sample_temperatures)

    def validate(self) -> None:
        if not self.out.strip():  # Path("") is the current folder, whose files a run would write over
            raise ConfigError("out: must name a run folder")
        for n in ("max_steps", "warmup", "eval_every", "eval_chars", "sample_length", "threads", "ngram"):
            if getattr(self, n) < 0:
                raise ConfigError(f"{n}: must not be negative, got {getattr(self, n)}")
        if self.epochs < 0:
            raise ConfigError(f"epochs: must not be negative, got {self.epochs}")
        if self.sample_length > MAX_SAMPLE_LENGTH:  # else refused at the first evaluation, the run cut short there
            raise ConfigError(f"sample_length: at most {MAX_SAMPLE_LENGTH:,} characters per sample shown, got "
                              f"{self.sample_length:,}")
        if self.ngram > 16:
            raise ConfigError(f"ngram: at most 16, got {self.ngram}")
        if self.extend_vocab and not self.init_from:
            raise ConfigError("extend_vocab: only means something with --init-from RUN (the vocabulary it extends)")
        if not 0 <= self.lr <= MAX_LR:  # Adam's steps are about lr in size: past this the first one ruins a network
            raise ConfigError(f"lr: must be positive and at most {MAX_LR:g} (or 0: set by the width), got {self.lr}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"min_lr_ratio: must be in [0, 1], got {self.min_lr_ratio}")
        if not 0.0 <= self.ema < 1.0:
            raise ConfigError(f"ema: must be in [0, 1), got {self.ema}")
        if not 0 <= self.early_pieces <= MAX_PIECES:
            raise ConfigError(f"early_pieces: must be in [0, {MAX_PIECES}], got {self.early_pieces}")
        if not 0 <= self.late_pieces <= MAX_PIECES:
            raise ConfigError(f"late_pieces: must be in [0, {MAX_PIECES}], got {self.late_pieces}")
        if not 0.0 <= self.early_share <= 1.0:
            raise ConfigError(f"early_share: must be in [0, 1], got {self.early_share}")
        if self.grad_clip < 0 or self.weight_decay < 0:
            raise ConfigError("grad_clip and weight_decay: must not be negative")
        for t in self.sample_temperatures:  # the samples shown while training follow the samplers' rules
            try:
                SampleOptions(temperature=t)
            except ConfigError as e:
                raise ConfigError(f"sample_{e}") from None
        # a duration of 0 reads as no time limit, so `--max-time 0` alone would never end
        if self.max_time.strip() and parse_duration(self.max_time) <= 0:
            raise ConfigError(f"max_time (--max-time): must be longer than zero, got {self.max_time!r}")
        _seed(self.seed)

    @property
    def seconds(self) -> float:
        """The time budget in seconds (10 minutes when no budget of any kind is set)."""
        if not self.max_time and not self.max_steps and not self.epochs:
            return 600.0
        return parse_duration(self.max_time)


@dataclass(frozen=True)
class SampleOptions(Config):
    """How each sample is made: the same options on the command line, over HTTP and in Python.

    Their defaults and ranges are declared here and nowhere else: `charloom sample` builds its flags
    from these fields, the server its request model, and the Generator takes an instance.
    """

    start: str = option("", "text to continue (a records model reads <bos> before it)")
    length: int = option(500, "characters to generate per sample (a records model also stops at <eos>)")
    n: int = option(1, "samples per start text and temperature, generated in parallel", flag="num_samples")
    temperature: float = option(0.8, "sampling temperature, 0-10: lower is safer, higher more varied; "
                                     "0 = greedy (always the most likely character)")
    top_k: int = option(0, "sample among the k most likely characters only (0: all)")
    top_p: float = option(1.0, "sample from the smallest set of characters whose probability reaches p (1: all)")
    repetition_penalty: float = option(1.0, "make characters already used less likely, 1-10 (1: off; 1.1-1.3 is mild)")
    seed: int | None = option(None, "random seed, 0 to 2**62 - 1: the same seed gives the same text; sample i "
                                    "uses seed + i, of which only the low 32 bits count (as torch's seeds: "
                                    "2**32 writes what 0 does)")
    stop: tuple[str, ...] = option((), "end a sample just before this text appears; give several to stop at any "
                                       "(on the command line, \\n is a newline)", metavar="TEXT")
    label: str | None = option(None, "a model trained on labelled records: write for this label (Sports); "
                                     "default: no label", metavar="NAME")
    ngram: bool = option(True, "a model with an n-gram of its training text: mix it in (off: the network alone, which "
                               "copies less of the training text and writes faster)")

    def validate(self) -> None:  # start, stop and label are text, checked as every text option is
        if self.length < 0:
            raise ConfigError(f"length: must be >= 0, got {self.length}")
        if self.n < 1:
            raise ConfigError(f"n (--num-samples): must be >= 1, got {self.n}")
        if not 0.0 <= self.temperature <= 10.0:
            raise ConfigError(f"temperature: must be in [0, 10] (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            raise ConfigError(f"top_k: must be >= 0 (0 = all), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p: must be in (0, 1], got {self.top_p}")
        if not 1.0 <= self.repetition_penalty <= 10.0:
            raise ConfigError(f"repetition_penalty: must be in [1, 10] (1 = off), got {self.repetition_penalty}")
        if self.seed is not None and not 0 <= self.seed < 2**62:
            raise ConfigError(f"seed: must be in [0, 2**62), got {self.seed}")
        if "" in self.stop:  # it would stop every sample before its first character, so it was dropped
            raise ConfigError(f"stop[{self.stop.index('')}]: an empty stop string; give one of one character or more")
        if self.label is not None:
            if not self.label or len(self.label) > MAX_LABEL_LENGTH:
                raise ConfigError(f"label: must be 1 to {MAX_LABEL_LENGTH} characters, got {len(self.label)}")



@dataclass(frozen=True)
class SampleConfig(Config):
    """Start texts and temperatures, each repeatable for a sweep.

    What `charloom sample` adds to SampleOptions: each start and temperature becomes one SampleOptions.
    """

    starts: tuple[str, ...] = option((), "start text; repeat for several (default: the model's own start)",
                                     flag="start", metavar="TEXT")
    temperatures: tuple[float, ...] = option(
        (), "sampling temperature, 0-10; repeat for a sweep (the notebooks': 0.3 0.8 1.0 1.3 1.8); 0 = greedy; "
        f"default {SampleOptions.temperature}", flag="temperature", metavar="T")
    greedy: bool = option(False, "always take the most likely character (same as --temperature 0)")

    def validate(self) -> None:
        # each start and temperature becomes a SampleOptions: checked by its rules, before any is generated
        for text in self.starts:
            SampleOptions(start=text)
        for t in self.temperatures:
            SampleOptions(temperature=t)
        if self.greedy and any(self.temperatures):  # one would be dropped in silence
            given = " ".join(f"{t:g}" for t in self.temperatures if t)
            raise ConfigError(f"greedy: means --temperature 0, and --temperature {given} was given too; give one or "
                              f"the other")

    @property
    def temperature_list(self) -> tuple[float, ...]:
        if self.greedy:
            return (0.0,)
        return self.temperatures or (SampleOptions.temperature,)

    def each(self, base: SampleOptions) -> list[SampleOptions]:
        """`base` at every temperature and start text: a sweep's generations, in the order shown."""
        return [base.replace(start=s, temperature=t) for t in self.temperature_list for s in self.starts or ("",)]


@dataclass(frozen=True)
class EvalConfig(Config):
    """How a model is scored on a text."""

    streams: int = option(1, "score the text as N parallel streams (1: the whole text in order, state carried "
                             "from character to character; more is faster on long texts; --adapt reads a text as one)")
    window: int = option(1024, "characters fed per forward call (the state carries across calls)")
    device: Literal["auto", "cpu", "cuda", "mps"] = option("auto", "auto: cuda, then mps, then cpu")
    adapt: bool = option(False, "also score the text as a compressor does (dynamic evaluation): each segment is "
                                "scored, then the network takes a gradient step on it, its n-gram counts it, and "
                                "it reads on; reported beside the static figure, and the model file is never "
                                "changed")
    adapt_lr: float = option(0.1, "dynamic evaluation: learning rate of the step after each segment (0: the network "
                                  "stays as trained, only its n-gram counts what it reads)")
    adapt_segment: int = option(32, "dynamic evaluation: characters per segment (one step each)")
    adapt_decay: float = option(0.0, "dynamic evaluation: each step pulls the weights this share of the way back "
                                     "to the trained ones (0: no pull)")
    ngram: bool = option(True, "a model with an n-gram of its training text: score with it mixed in, the network "
                               "alone beside it (the n-gram has memorised the training text: score other text)")

    def validate(self) -> None:
        _positive(self, "streams", "window", "adapt_segment")
        if self.adapt_lr < 0:
            raise ConfigError(f"adapt_lr: must not be negative, got {self.adapt_lr}")
        if not 0.0 <= self.adapt_decay < 1.0:
            raise ConfigError(f"adapt_decay: must be in [0, 1), got {self.adapt_decay}")

    def check_static(self) -> None:
        """Scoring as the model stands (`evaluation.score`) with an adapting option set and `adapt` not: nothing would
        read it. (A caller of `score_adapted` asks for adapting by calling it.)"""
        given = next((k for k in ("adapt_lr", "adapt_segment", "adapt_decay") if self.is_set(k)), None)
        if given and not self.adapt:
            raise ConfigError(f"{given}: only means something with --adapt (dynamic evaluation), which was not given")


@dataclass(frozen=True)
class ServeConfig(Config):
    """The HTTP server: where it listens and what one request may ask for."""

    host: str = option("127.0.0.1", "address to listen on (0.0.0.0: every interface)")
    port: int = option(8000, "port to listen on")
    default_length: int = option(500, "characters per sample when a request does not say (as `charloom sample`)")
    max_length: int = option(2000, "the most characters per sample a request may ask for")
    max_n: int = option(16, "the most samples one request may ask for")
    max_start: int = option(2000, "the longest start text a request may send, in characters")
    max_body: int = option(65536, "the largest request body, in bytes (larger: 413)")
    max_concurrent: int = option(4, "generations running at once; more requests wait for none and get 429")
    max_stops: int = option(8, "the most stop strings one request may give")
    max_stop_length: int = option(64, "the longest stop string a request may give, in characters")
    max_score: int = option(20000, "the longest text a scoring request (/v1/score) may send, in characters")
    max_trace: int = option(2000, "the longest text whose hidden units a request (/v1/activations) may ask for")
    allow_hosts: tuple[str, ...] = option(
        (), "a Host header to accept besides localhost, 127.0.0.1, [::1] and the address listened on; repeatable "
            "(others get 403, which stops DNS rebinding)", flag="allow_host", metavar="HOST")
    cors_origins: tuple[str, ...] = option(
        (), "a web origin allowed to call the API from its pages (CORS); repeatable; none by default",
        flag="cors_origin", metavar="ORIGIN")

    def validate(self) -> None:
        _positive(self, "default_length", "max_length", "max_n", "max_start", "max_body", "max_concurrent",
                  "max_score", "max_trace", "max_stops", "max_stop_length")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port: must be in 0-65535, got {self.port}")
        for i, host in enumerate(self.allow_hosts):
            if not _HOST.fullmatch(host):
                raise ConfigError(f"allow_hosts[{i}]: {host!r} is not a Host header as a browser sends it: a name or "
                                  f"address with a port or not (box.lan, 192.168.1.5:8000, [fd00::7]; no scheme, path "
                                  f"or wildcard part; a name outside ASCII in its xn-- form), or * for any")
        for i, origin in enumerate(self.cors_origins):  # what a browser sends: no path, never without a scheme
            if origin not in ("*", "null") and not _ORIGIN.fullmatch(origin.rstrip("/")):
                raise ConfigError(f"cors_origins[{i}]: {origin!r} is not a web origin as a browser sends it: "
                                  f"scheme://host[:port] (https://example.com, no path, user or wildcard, and no "
                                  f"port its scheme implies), null (a page opened from a file), or * for any")
        if self.default_length > self.max_length:
            said = "" if self.default_length != ServeConfig.default_length else " (its default)"
            raise ConfigError(f"default_length: {self.default_length}{said} is more than --max-length "
                              f"{self.max_length}; give --default-length {self.max_length} or less")


@dataclass(frozen=True)
class ExportConfig(Config):
    """Exporting a model to ONNX, and to a web page that generates with it in the browser."""

    out: str = option("", "the ONNX file to write (default: model.onnx in the run folder, or beside the model file)",
                      metavar="FILE", path=True)
    int8: bool = option(False, "also write FILE's int8 twin (NAME.int8.onnx: weights quantised by onnxruntime, about "
                               "4x smaller) and report its held-out bpc beside fp32's")
    text: str = option("", "the text the int8 file is scored on: a file, folder or bundled corpus (default: the "
                           "corpus the model was trained on); its held-out split, as training splits it, is "
                           "scored", metavar="SOURCE", path=True)
    score_chars: int = option(100_000, "the most held-out characters scored for the int8 comparison")
    web: str = option("", "also write a static web page that generates in the browser into this folder",
                      metavar="DIR", path=True)
    runtime: str = option("", "onnxruntime-web's dist folder (node_modules/onnxruntime-web/dist: ort.wasm.min.mjs, "
                              "ort-wasm-simd-threaded.mjs and .wasm), copied into the page so it works with no "
                              "network (default: the page loads them from the pinned public package URL)",
                          metavar="DIR", path=True)
    opset: int = option(17, "the ONNX opset to write")

    def validate(self) -> None:
        _positive(self, "score_chars")
        if not 14 <= self.opset <= 21:
            raise ConfigError(f"opset: must be in [14, 21] (onnxruntime and onnxruntime-web run them), got {self.opset}")
        if self.runtime and not self.web:
            raise ConfigError("runtime: only means something with --web DIR (it is copied into the page)")

    def check_unused(self) -> None:
        """Refuse an option of the int8 file's score without --int8, which leaves it unread (a flag given at its
        default too: see is_set)."""
        name = next((n for n in ("text", "score_chars") if self.is_set(n)), None)
        if name and not self.int8:
            raise ConfigError(f"{name}: only means something with --int8 (the held-out text the int8 file is scored "
                              f"on)")
