"""Training batches from an encoded corpus: stream windows and padded record batches.

Every batch is a pure function of (seed, epoch, index), so a run resumed at a saved position sees
exactly the batches it would have seen, and nothing per window runs in a Python loop.

Continuous corpora: the training split is a virtual stream (one or more segments of the id array).
  order="shuffle":    each epoch, non-overlapping windows of T+1 ids from a random offset, in random
                      order, B per batch (the last partial batch is dropped, so all are equal-size);
  order="contiguous": the stream is cut into B parallel streams read left to right, so batch i+1 row b
                      continues batch i row b and hidden state can carry across batches (truncated BPTT).
Records: each record becomes <bos> + ids + <eos>, padded with <pad> to the batch's longest; records of
  similar length are batched together (pools of shuffled records sorted by length, batches in random order).
  A labelled record reads <bos> <label:NAME> + ids + <eos>; the label is given, never predicted (its target
  is <pad>), and a share of training records (`label_dropout`) go without it, so that the model also
  writes with no label. Evaluation batches always carry the label.
Targets are inputs shifted by one; padding targets are <pad>, which the loss ignores (`Batch.mask`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from .config import BatchConfig
from .corpus import Corpus
from .errors import CharloomError

SPLIT_BLOCK = 1 << 16  # characters per block when a stream is split at random
BUCKET_POOL = 64  # batches' worth of records sorted together when bucketing
SPLIT_TAG = 1 << 40  # second seed word of the split's generator; epochs (0, 1, ...) seed the batch order
LABEL_TAG = 1 << 41  # last seed word of the label dropout's generator
FIT_TAG = 1 << 42  # second seed word of the generator that picks the records a mixture is fitted on


@dataclass
class Batch:
    x: torch.Tensor  # (B, T) int64 input ids
    y: torch.Tensor  # (B, T) int64 target ids: x shifted by one; pad_id where there is nothing to predict
    pad_id: int
    epoch: int = 0
    index: int = 0  # position of this batch within its epoch
    continues: bool = False  # contiguous order: row b continues row b of the previous batch

    @property
    def mask(self) -> torch.Tensor:
        """(B, T) bool: the positions that count in the loss."""
        return self.y != self.pad_id

    @property
    def tokens(self) -> int:
        return int(self.mask.sum())

    def pieces(self, k: int) -> list[Batch]:
        """The batch cut along time into k consecutive pieces (as equal as T allows; fewer when T < k), each
        after the first continuing the one before it."""
        bounds = np.linspace(0, self.x.shape[1], min(k, self.x.shape[1]) + 1).round().astype(int)
        return [Batch(self.x[:, a:b], self.y[:, a:b], self.pad_id, self.epoch, self.index, self.continues or i > 0)
                for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))]


# ---- continuous --------------------------------------------------------------------------------------
class Stream:
    """A virtual stream made of segments `[(start, end), ...]` of a flat id array, gathered by position."""

    def __init__(self, ids: np.ndarray, segments: list[tuple[int, int]]):
        self.ids = ids
        self.segments = [(s, e) for s, e in segments if e > s]
        lens = np.array([e - s for s, e in self.segments], dtype=np.int64)
        self._cum = np.concatenate([[0], np.cumsum(lens)])  # virtual start of each segment
        self._starts = np.array([s for s, _ in self.segments], dtype=np.int64)

    def __len__(self) -> int:
        return int(self._cum[-1])

    def gather(self, pos: np.ndarray) -> torch.Tensor:
        """Ids at virtual positions `pos` (any shape) as an int64 tensor of the same shape."""
        if len(self.segments) == 1:
            flat = pos + self._starts[0]
        else:
            seg = np.searchsorted(self._cum, pos, side="right") - 1
            flat = self._starts[seg] + (pos - self._cum[seg])
        return torch.from_numpy(np.asarray(self.ids[flat], dtype=np.int64))


def split_stream(n: int, cfg: BatchConfig) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Train and validation segments of a stream of n ids: the tail, or seeded random blocks."""
    n_val = int(round(n * cfg.val_fraction))
    if n_val == 0:
        return [(0, n)], []
    if cfg.split in ("tail", "auto"):
        return [(0, n - n_val)], [(n - n_val, n)]
    blocks = math.ceil(n / SPLIT_BLOCK)
    k = max(1, min(blocks - 1, round(blocks * cfg.val_fraction)))
    held = np.zeros(blocks, dtype=bool)
    held[np.random.default_rng([cfg.seed, SPLIT_TAG]).choice(blocks, size=k, replace=False)] = True
    train, val = [], []
    for b in range(blocks):
        seg = (b * SPLIT_BLOCK, min(n, (b + 1) * SPLIT_BLOCK))
        target = val if held[b] else train
        if target and target[-1][1] == seg[0]:
            target[-1] = (target[-1][0], seg[1])  # merge neighbours into one segment
        else:
            target.append(seg)
    return train, val


def _ways_on(seq_len: int, cfg: BatchConfig) -> str:
    """What a user can change when the training split is shorter than a window: only what is not already least."""
    ways = (["a shorter --seq-len"] if seq_len > 1 else []) + (["a smaller --val-fraction"] if cfg.val_fraction else [])
    ways.append("more text")
    return ways[0] if len(ways) == 1 else ", ".join(ways[:-1]) + (", or " if len(ways) > 2 else " or ") + ways[-1]


class StreamBatches:
    """Equal-size (B, T) batches of windows from a stream; see the module docstring for the orders.

    rank, world: with several processes, process `rank` of `world` gets every world-th batch (shuffle) or
    its own B of the world * B parallel streams (contiguous): disjoint parts of the same epoch.
    """

    def __init__(self, stream: Stream, cfg: BatchConfig, pad_id: int, label: str = "corpus", rank: int = 0,
                 world: int = 1):
        self.stream, self.cfg, self.pad_id = stream, cfg, pad_id
        self.rank, self.world = rank, world
        B, T = cfg.rows * world, cfg.seq_len  # B: rows across all processes
        if len(stream) < T + 1:
            raise CharloomError(
                f"{label}: the training split has {len(stream)} characters, fewer than seq_len + 1 = {T + 1}; "
                f"use {_ways_on(T, cfg)}")
        if cfg.order == "contiguous":
            self.stream_len = (len(stream) - 1) // B  # characters per parallel stream
            if self.stream_len < T:
                raise CharloomError(
                    f"{label}: {len(stream)} training characters cut into {B} streams give {self.stream_len} each, "
                    f"fewer than seq_len {T}; use a smaller --batch-size or --seq-len")
        elif (len(stream) - 1) // T < B:
            raise CharloomError(
                f"{label}: the training split holds {(len(stream) - 1) // T} windows of {T} characters, "
                f"fewer than one batch of {B}{f' ({world} processes)' if world > 1 else ''}; "
                f"use a smaller --batch-size or --seq-len")

    def _epoch_windows(self, epoch: int) -> np.ndarray:
        """Window starts of one epoch in batch order (shuffle order)."""
        T = self.cfg.seq_len
        rng = np.random.default_rng([self.cfg.seed, epoch])
        offset = self._offset(rng)
        count = (len(self.stream) - 1 - offset) // T
        return offset + rng.permutation(count).astype(np.int64) * T

    def _offset(self, rng: np.random.Generator) -> int:
        """Where an epoch's first window starts: a fresh cut every epoch, so no boundary is always a boundary;
        0 where a later cut would leave less than one batch (a split of barely one batch: no epoch is empty)."""
        T = self.cfg.seq_len
        offset = int(rng.integers(0, T))
        return offset if (len(self.stream) - 1 - offset) // T >= self.cfg.rows * self.world else 0

    def batches_in_epoch(self, epoch: int = 0) -> int:
        B, T = self.cfg.rows, self.cfg.seq_len
        if self.cfg.order == "contiguous":
            return self.stream_len // T
        offset = self._offset(np.random.default_rng([self.cfg.seed, epoch]))
        return ((len(self.stream) - 1 - offset) // T) // B // self.world

    def batch(self, epoch: int, index: int, _starts: np.ndarray | None = None) -> Batch:
        B, T = self.cfg.rows, self.cfg.seq_len
        if self.cfg.order == "contiguous":
            rows = self.rank * B + np.arange(B, dtype=np.int64)  # this process's streams
            starts = rows * self.stream_len + index * T
        else:
            g = index * self.world + self.rank  # this process's share of the epoch's batches
            starts = (self._epoch_windows(epoch) if _starts is None else _starts)[g * B:(g + 1) * B]
        chunk = self.stream.gather(starts[:, None] + np.arange(T + 1))  # (B, T+1)
        return Batch(chunk[:, :-1], chunk[:, 1:], self.pad_id, epoch, index,
                     continues=self.cfg.order == "contiguous" and index > 0)

    def __iter__(self) -> Iterator[Batch]:
        return self.iterate()

    def iterate(self, epoch: int = 0, index: int = 0) -> Iterator[Batch]:
        """Batches forever, from (epoch, index) on."""
        while True:
            starts = self._epoch_windows(epoch) if self.cfg.order == "shuffle" else None
            for i in range(index, self.batches_in_epoch(epoch)):
                yield self.batch(epoch, i, starts)
            epoch, index = epoch + 1, 0


def eval_windows(stream: Stream, seq_len: int, batch_size: int, pad_id: int) -> Iterator[Batch]:
    """The whole stream in order as contiguous batches: B parallel streams of ceil(n / B) positions each,
    the last one padded where the text runs out, so every character after the first is scored once."""
    n = len(stream) - 1  # characters to predict
    if n < 1:
        return
    rows = max(1, min(batch_size, n // seq_len or 1))
    per_row = -(-n // rows)
    for i, start in enumerate(range(0, per_row, seq_len)):
        width = min(seq_len, per_row - start)
        pos = (np.arange(rows, dtype=np.int64) * per_row + start)[:, None] + np.arange(width + 1)  # (B, W+1)
        inside = torch.from_numpy(pos <= n)
        chunk = stream.gather(np.minimum(pos, n)).masked_fill(~inside, pad_id)
        yield Batch(chunk[:, :-1], chunk[:, 1:], pad_id, 0, i, continues=i > 0)


# ---- records -----------------------------------------------------------------------------------------
def pad_records(ids: np.ndarray, starts: np.ndarray, lengths: np.ndarray, bos: int, eos: int, pad: int,
                ends: np.ndarray | None = None, heads: np.ndarray | None = None) -> torch.Tensor:
    """(N, L+2) int64: <bos> + record + <eos> per row, <pad> after; vectorised over the whole batch.

    ends: per row, whether the record really ends here (False for a cut record: no <eos> is appended).
    heads: per row, a token read right after <bos> (a label's), or -1 for none; a row with one is one wider.
    """
    n = len(starts)
    shift = np.ones(n, dtype=np.int64) if heads is None else 1 + (heads >= 0)  # where each record's text begins
    width = int((lengths + shift).max()) + 1 if n else 2
    out = np.full((n, width), pad, dtype=np.int64)
    out[:, 0] = bos
    if heads is not None:
        labelled = np.flatnonzero(heads >= 0)
        out[labelled, 1] = heads[labelled]
    col = np.arange(width - 1)
    inside = col[None, :] < lengths[:, None]  # (N, L)
    src = starts[:, None] + col[None, :]
    row, at = np.nonzero(inside)
    out[row, at + shift[row]] = ids[src[inside]]
    rows = np.arange(n) if ends is None else np.flatnonzero(ends)
    out[rows, lengths[rows] + shift[rows]] = eos
    return torch.from_numpy(out)


def label_heads(corpus: Corpus, indices: np.ndarray, drop: np.ndarray | None = None,
                label: int | None = None) -> np.ndarray | None:
    """(N,) the label token each of the records `indices` reads after <bos> (-1: none), or None for an
    unlabelled corpus. drop: (N,) bool, rows read without their label; label: a label index given to every
    row instead of its own (-1: no label for any)."""
    if corpus.labels is None:
        return None
    own = corpus.labels[indices].astype(np.int64) if label is None else np.full(len(indices), label, np.int64)
    first = corpus.vocab.first_char - len(corpus.vocab.labels)  # the id of the first label's token
    heads = np.where(own >= 0, own + first, -1)
    return heads if drop is None else np.where(drop, -1, heads)


class RecordBatches:
    """Padded (B, L) batches of whole records, bucketed by length; see the module docstring."""

    def __init__(self, corpus: Corpus, indices: np.ndarray, cfg: BatchConfig, label: str = "corpus", rank: int = 0,
                 world: int = 1):
        assert corpus.offsets is not None
        self.corpus, self.cfg = corpus, cfg
        self.rank, self.world = rank, world  # process `rank` of `world` takes every world-th batch
        v = corpus.vocab
        self.bos, self.eos, self.pad_id = v.bos_id, v.eos_id, v.pad_id
        lengths = corpus.lengths()[indices]
        over = lengths > cfg.max_record_len
        self.overlong = int(over.sum())
        if cfg.overlong == "skip":
            indices, lengths = indices[~over], lengths[~over]
        self.indices = indices
        self.starts = corpus.offsets[indices]
        self.ends = lengths <= cfg.max_record_len  # False: cut, so no <eos>
        self.lengths = np.minimum(lengths, cfg.max_record_len)
        if len(indices) == 0:
            raise CharloomError(f"{label}: no training records left (all {self.overlong} are longer than "
                                f"--max-record-len {cfg.max_record_len} and --overlong is skip)")
        self.batch_size = min(cfg.rows, len(indices) // world)
        if self.batch_size == 0:
            raise CharloomError(f"{label}: {len(indices)} training records cannot be shared by {world} processes")

    def batches_in_epoch(self, epoch: int = 0) -> int:
        return len(self.indices) // self.batch_size // self.world

    def _epoch_groups(self, epoch: int) -> list[np.ndarray]:
        """Row numbers (into self.indices) of each batch of one epoch, in batch order."""
        B = self.batch_size
        rng = np.random.default_rng([self.cfg.seed, epoch])
        order = rng.permutation(len(self.indices))
        usable = (len(order) // B) * B
        if self.cfg.bucket:
            pool = B * BUCKET_POOL
            # within each pool of shuffled records, sort by length (stable: ties keep the shuffle)
            order = np.concatenate([chunk[np.argsort(self.lengths[chunk], kind="stable")]
                                    for chunk in np.array_split(order, max(1, math.ceil(len(order) / pool)))])
            groups = [order[i:i + B] for i in range(0, len(order) - B + 1, B)]
            return [groups[i] for i in rng.permutation(len(groups))]
        return [order[i:i + B] for i in range(0, usable, B)]

    def make(self, rows: np.ndarray, epoch: int = 0, index: int = 0, heads: np.ndarray | None = None) -> Batch:
        """The batch of `rows` (into self.indices); heads: their label tokens (see label_heads), or None."""
        seq = pad_records(self.corpus.ids, self.starts[rows], self.lengths[rows], self.bos, self.eos, self.pad_id,
                          self.ends[rows], heads)  # (B, L+2), one wider with a label
        x, y = seq[:, :-1], seq[:, 1:].clone()
        if heads is not None:
            y[torch.from_numpy(heads >= 0), 0] = self.pad_id  # the label is given, not predicted: not scored
        return Batch(x, y, self.pad_id, epoch, index)

    def _training(self, rows: np.ndarray, epoch: int, index: int) -> Batch:
        """A training batch: its labels, less a seeded `label_dropout` share, so a resumed run drops the same."""
        drop = None
        if self.corpus.labels is not None and self.cfg.label_dropout:
            rng = np.random.default_rng([self.cfg.seed, epoch, index, self.rank, LABEL_TAG])
            drop = rng.random(len(rows)) < self.cfg.label_dropout
        return self.make(rows, epoch, index, label_heads(self.corpus, self.indices[rows], drop))

    def batch(self, epoch: int, index: int) -> Batch:
        return self._training(self._epoch_groups(epoch)[index * self.world + self.rank], epoch, index)

    def __iter__(self) -> Iterator[Batch]:
        return self.iterate()

    def iterate(self, epoch: int = 0, index: int = 0) -> Iterator[Batch]:
        while True:
            groups = self._epoch_groups(epoch)
            for i in range(index, self.batches_in_epoch(epoch)):
                yield self._training(groups[i * self.world + self.rank], epoch, i)
            epoch, index = epoch + 1, 0

    def in_order(self, label: int | None = None) -> Iterator[Batch]:
        """Every record once, sorted by length (least padding), each with its own label: for evaluation.
        label: a label index given to every record instead (-1: none), to see what the label is worth."""
        order = np.argsort(self.lengths, kind="stable")
        for i in range(0, len(order), self.batch_size):
            rows = order[i:i + self.batch_size]
            yield self.make(rows, 0, i // self.batch_size, label_heads(self.corpus, self.indices[rows], label=label))


def split_records(n: int, cfg: BatchConfig) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation record indices: the last records, or a seeded random share."""
    n_val = int(round(n * cfg.val_fraction))
    if n_val >= n:
        n_val = n - 1
    idx = np.arange(n, dtype=np.int64)
    if cfg.split in ("random", "auto"):
        idx = np.random.default_rng([cfg.seed, SPLIT_TAG]).permutation(n)
        val = np.sort(idx[:n_val])
        return np.sort(idx[n_val:]), val
    return idx[:n - n_val], idx[n - n_val:]


def padding_fraction(batches: list[Batch]) -> float:
    """Share of (B, T) positions that are padding, over some batches."""
    total = sum(b.y.numel() for b in batches)
    return 1.0 - sum(b.tokens for b in batches) / total if total else 0.0


# ---- one entry point for both kinds ------------------------------------------------------------------
@dataclass
class Data:
    """A corpus made ready for training: batches of the training split and the validation split."""

    corpus: Corpus
    cfg: BatchConfig
    train: StreamBatches | RecordBatches
    val: Stream | RecordBatches | None
    train_size: int  # characters (continuous) or records
    val_size: int
    fit: Stream | None = None  # the start of the training split, which training leaves out (`fit_chars`)
    fit_records: np.ndarray | None = None  # records: the training records training leaves out (`fit_chars`)

    @property
    def train_shape(self) -> tuple[int, float]:
        """(rows, characters predicted per row) of one process's training batch."""
        if isinstance(self.train, StreamBatches):
            return self.cfg.rows, float(self.cfg.seq_len)
        return self.train.batch_size, float((self.train.lengths + self.train.ends).mean())  # <eos> where it fits

    @property
    def fit_size(self) -> int:
        """Characters (continuous) or records that training leaves out for a mixture's fit."""
        return len(self.fit) if self.fit is not None else \
            len(self.fit_records) if self.fit_records is not None else 0

    @property
    def train_characters(self) -> int:
        """Characters predicted in one epoch of the training split (its distinct text)."""
        if isinstance(self.train, StreamBatches):
            return self.train_size
        return int((self.train.lengths + self.train.ends).sum())

    def val_batches(self) -> Iterator[Batch]:
        if self.val is None:
            return iter(())
        if isinstance(self.val, Stream):
            return eval_windows(self.val, self.cfg.seq_len, self.cfg.rows, self.corpus.vocab.pad_id)
        return self.val.in_order()


def heldout_batches(corpus: Corpus, cfg: BatchConfig) -> Iterator[Batch]:
    """The held-out split's batches as training scores them (`Data.val_batches`), without building the
    training split: for scoring a model on the text it was trained on, however short its training split."""
    if corpus.offsets is None:
        _, val_seg = split_stream(len(corpus.ids), cfg)
        return eval_windows(Stream(corpus.ids, val_seg), cfg.seq_len, cfg.rows, corpus.vocab.pad_id)
    _, va = split_records(corpus.num_records, cfg)
    return RecordBatches(corpus, va, cfg.replace(overlong="cut"), corpus.name).in_order() if len(va) else iter(())


def training_text(data: Data, most: int) -> tuple[np.ndarray, int | None]:
    """The training split as one id array, its last `most` ids at most, and how many of its last ids training left
    out (None: none; what a mixture is fitted on): a stream's segments joined, the part training leaves out
    (`Data.fit`) last; or each training record wrapped in <bos> ... <eos> as training reads it, a labelled one
    with its label after <bos> (but for a seeded `label_dropout` share), the records training leaves out
    (`Data.fit_records`) last."""
    if isinstance(data.train, StreamBatches):
        stream = data.train.stream
        parts, left = [], most
        for s, e in reversed(stream.segments + (data.fit.segments if data.fit else [])):
            parts.append(stream.ids[max(s, e - left):e])
            left -= len(parts[-1])
            if left <= 0:
                break
        ids = np.concatenate(parts[::-1]).astype(np.int64)
        return ids, min(len(data.fit), len(ids)) if data.fit is not None else None
    corpus, v, cfg = data.corpus, data.corpus.vocab, data.train.cfg
    fit = data.fit_records if data.fit_records is not None else np.zeros(0, np.int64)
    order = np.concatenate([data.train.indices, fit])
    # labels dropped from the share of records training reads without one, so unlabelled writing has counts too
    heads = label_heads(corpus, order, np.random.default_rng([cfg.seed, LABEL_TAG]).random(len(order))
                        < cfg.label_dropout)
    parts, left, held = [], most, 0
    for j in range(len(order) - 1, -1, -1):
        i = order[j]
        rec = corpus.ids[corpus.offsets[i]:corpus.offsets[i + 1]]
        head = [] if heads is None or heads[j] < 0 else [heads[j]]
        parts.append(np.concatenate([[v.bos_id], head, rec, [v.eos_id]])[-left:])
        left -= len(parts[-1])
        held += len(parts[-1]) if j >= len(data.train.indices) else 0
        if left <= 0:
            break
    return np.concatenate(parts[::-1]).astype(np.int64), held if len(fit) else None


def _cut_start(segments: list[tuple[int, int]], n: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """The first `n` ids of `segments` cut off: (what is left, what was cut), both in order. The start, as far as
    can be from a tail split's validation text: the text just before it is the likeliest to share its names."""
    kept, cut = list(segments), []
    while n > 0 and kept:
        s, e = kept.pop(0)
        take = min(n, e - s)
        cut.append((s, s + take))
        if take < e - s:
            kept.insert(0, (s + take, e))
        n -= take
    return kept, cut


def _fit_chars(cfg: BatchConfig, train: int, world: int) -> int:
    """Characters of a training split of `train` that training leaves out for a mixture's fit: `fit_chars` (-1, not
    settled by a run, counts as none), at most a tenth, and none where the rest would hold fewer characters than
    ten batches of windows (records too: the rule is one of text, not of how records are batched)."""
    n = min(max(cfg.fit_chars, 0), train // 10)
    return n if train - n >= 10 * cfg.rows * world * (cfg.seq_len + 1) else 0


_RECORDS_ONLY = ("max_record_len", "overlong", "bucket")  # BatchConfig fields that only records read
# and the one that only continuous text reads; seq_len is one too, but left out: one set of options for texts of
# both kinds is common, and for records it changes nothing
_STREAM_ONLY = ("order",)


def check_options(records: bool, labelled: bool, name: str, cfg: BatchConfig) -> None:
    """Refuse a batch option given (or set away from its default) where a corpus of this kind (`records`,
    `labelled`; `name` for the message) is never batched by it, so that a flag meant to change a run is not
    dropped in silence. A fresh run checks, before its text is read; a resumed one keeps what it saved."""
    corpus_name = name
    for name in _STREAM_ONLY if records else _RECORDS_ONLY:
        if cfg.is_set(name):
            value = getattr(cfg, name)
            flag = "--" + ("no-" if value is False else "") + name.replace("_", "-")
            if records:
                raise CharloomError(f"{flag}: only for continuous text, cut into windows; {corpus_name} is read as "
                                    f"records, each whole in its batch (give --no-records to read it as one text)")
            raise CharloomError(f"{flag}: only for records; {corpus_name} is read as one continuous text (give "
                                f"--records to read it as records)")
    if not labelled and cfg.is_set("label_dropout"):
        raise CharloomError(f"--label-dropout: only for labelled records (--label-column, --label-field); "
                            f"{corpus_name} has no labels")


def prepare(corpus: Corpus, cfg: BatchConfig, rank: int = 0, world: int = 1) -> Data:
    """Split the corpus and set up its batches (checks that it is long enough for `cfg`).

    rank, world: this process's disjoint share of the training batches when `world` processes train together.
    """
    if corpus.offsets is None:
        train_seg, val_seg = split_stream(len(corpus.ids), cfg)
        train_seg, fit_seg = _cut_start(train_seg, _fit_chars(cfg, sum(e - s for s, e in train_seg), world))
        train = StreamBatches(Stream(corpus.ids, train_seg), cfg, corpus.vocab.pad_id, corpus.name, rank, world)
        val = Stream(corpus.ids, val_seg) if val_seg else None
        fit = Stream(corpus.ids, fit_seg) if fit_seg else None
        return Data(corpus, cfg, train, val, len(train.stream), len(val) if val else 0, fit)
    n = corpus.num_records
    if n < 1:
        raise CharloomError(f"{corpus.name}: the corpus holds no records")
    tr, va = split_records(n, cfg)
    tr, fit = _fit_records(corpus, tr, cfg, world)
    train_b = RecordBatches(corpus, tr, cfg, corpus.name, rank, world)
    val_b = RecordBatches(corpus, va, cfg.replace(overlong="cut"), corpus.name) if len(va) else None
    return Data(corpus, cfg, train_b, val_b, len(train_b.indices), len(va), fit_records=fit)


def _fit_records(corpus: Corpus, train: np.ndarray, cfg: BatchConfig, world: int
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """(the training records kept, those training leaves out for a mixture's fit, None for none): a seeded random
    set (a records file is often sorted) of about `_fit_chars` characters of those training reads (an overlong
    record cut as it cuts it, or never one it skips), each counted with its <bos> and <eos>, taken whole."""
    lengths = np.diff(corpus.offsets)[train]
    read = np.flatnonzero(lengths <= cfg.max_record_len) if cfg.overlong == "skip" else np.arange(len(train))
    sizes = np.minimum(lengths[read], cfg.max_record_len) + 2  # (N,) ids of each record training reads
    n = _fit_chars(cfg, int(sizes.sum()), world)
    if not n:
        return train, None
    order = np.random.default_rng([cfg.seed, FIT_TAG]).permutation(len(read))
    k = int(np.searchsorted(np.cumsum(sizes[order]), n)) + 1  # the fewest records that reach n
    if k >= len(read):
        return train, None
    fit = read[order[:k]]
    return np.delete(train, fit), np.sort(train[fit])
