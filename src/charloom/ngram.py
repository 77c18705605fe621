"""A character n-gram of the training text, mixed with the network's prediction.

A network trained for minutes has not yet memorised the text's long exact repeats (names, stage directions,
refrains, identifiers); counts of what followed each context in the training text have. The model a run
saves predicts with both:

    p(x | context) = w * p_network(x) + (1 - w) * p_ngram(x | the last `order` characters)

p_ngram interpolates the counts of every order from `order` down to a unigram (Witten-Bell, each order's
escape weighted by `beta`), and w depends on how long a context the training text has seen, how often, how
many different characters followed it there, and how sure the network is (`bucket`), fitted by EM on training
text the counts were not built from (`fit`). A last layer then takes a normalised product of powers of the three,

    q(x) ∝ p_network(x)^a · p_ngram(x)^b · p(x)^c,

with (a, b, c) for each longest order held (`fit_exponents`): where the training text never held the context, a
network trained for several passes is surer than it should be, and the powers soften it. Nothing here needs
torch: the PyTorch and the ONNX backends share it.

Counts are kept as sorted 64-bit keys: a context of order k is a polynomial hash of its k characters, and a
(context, next character) pair is that hash shifted left with the character in the low bits, so that sorting
the pairs groups them by context. A model file holds the text (at most MAX_CHARS ids), not the counts: they
are rebuilt, one sort per order, the first time they are used.

A `Reader` is the n-gram that keeps counting as it reads a text, as a compressor's model does: each character is
predicted from the counts of the training text and of every character read before it (`charloom eval --adapt`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import numpy as np

MAX_ORDER = 16
MAX_CHARS = 8_000_000  # ids of training text a model keeps for its n-gram (the last ones)
MAX_PAIRS = 8 * MAX_CHARS  # order x ids at most: the counts hold at most this many pairs, 12 bytes each
READ_PAIRS = MAX_PAIRS // 8  # order x characters a Reader counts at most; past them it reads on without counting
BUCKETS = 12  # mixing weights per (longest context seen, log2 of its count, ...
FOLLOWERS = 4  # ... how many different characters have followed it (1, 2, 3-4, 5 or more), ...
CONFIDENCE = 5  # ... and the network's largest probability there, in fifths)
SHAPE = (BUCKETS, FOLLOWERS, CONFIDENCE)  # the weights of one order: a model's are (order + 1, *SHAPE)
EARLIER_SHAPE = (BUCKETS, CONFIDENCE)  # weights saved before followers were told apart: one for any number
PRIOR = 0.8, 4.0  # the weight a bucket starts from in `fit`, and how many characters that guess is worth
_MUL = np.uint64(0x9E3779B97F4A7C15)  # odd: the context hash's multiplier
_MISSING = -1  # a context position before the start of the text
BUILD_THREADS = 2  # orders sorted at once when the counts are built
EXPONENTS = 3  # the last layer's inputs: log-probabilities of the network, the n-gram, and their linear mixture
MOST_EXPONENT = 16.0  # the largest power of one input: a model file's are checked against it
LINEAR = np.array([0.0, 0.0, 1.0])  # the powers that leave the linear mixture as it is: where the fit starts
EXPONENT_PRIOR = 10.0  # how strongly each order's powers are held to LINEAR, in nats of the fit text
ACTIVE = 1e-3  # a power this near a bound, its gradient pointing past it, is held there for a Newton step
SETTLED = 1e-3  # nats of the whole fit text a Newton round must save for another to run
PRODUCT_FLOATS = 6_000_000  # (character, id) pairs the last layer is fitted on at most (rows = this // V): its
# fit holds about ten float64 copies of them, some 0.5 GB
MIX_FLOATS = 2**20  # (character, id) pairs a mixture mixes at once when it reads a text: each copy stays 8 MB
FLOOR = 1e-300  # the least probability an input's logarithm is taken of (a network's softmax may underflow to 0)
# bits per character a longer order must save on the fit text to be kept: a tie goes to the shorter order. Small,
# since the fit text understates what long orders save on new text: it is scored by the linear mixture, where the
# last layer makes more of them, and on 10-minute Shakespeare models order 3 cost 0.007 there and 0.023 on the
# held-out tail (and where the fit text is training text the network has learned, it understates them more)
ORDER_GAIN = 0.0001


def most_chars(order: int) -> int:
    """Characters an n-gram of `order` counts at most: MAX_PAIRS (context, next character) pairs in all."""
    return min(MAX_CHARS, MAX_PAIRS // order)


@dataclass
class _Order:
    """Counts of one order: every (context, next id) pair the text holds, sorted, so that the pairs of one context
    lie together; a context's count and its number of different followers come from its run of pairs."""

    pairs: np.ndarray  # (P,) uint64, sorted: context key << bits | next id
    cum: np.ndarray  # (P + 1,) uint32: counts of the pairs before each; pair j was seen cum[j + 1] - cum[j] times


def _counted(pairs: np.ndarray) -> _Order:
    """The distinct pairs of an unsorted array and their running counts."""
    pairs.sort()
    new = np.empty(len(pairs), dtype=bool)  # where a distinct pair begins
    new[:1] = True
    np.not_equal(pairs[1:], pairs[:-1], out=new[1:])
    first = np.flatnonzero(new)
    cum = np.zeros(len(first) + 1, dtype=np.uint32)
    cum[1:-1], cum[-1] = first[1:], len(pairs)  # sorted: the pairs before each distinct one
    return _Order(pairs[first], cum)


@dataclass
class NGram:
    """Counts of every order up to `order` over `ids` (ids of one vocabulary of `vocab_size`)."""

    ids: np.ndarray  # (N,) the text the counts come from
    vocab_size: int
    order: int = 10
    beta: float = 4.0  # weight of each order's escape to the order below: higher trusts short contexts more
    _orders: list[_Order] | None = field(default=None, repr=False)
    # ids the text holds that are read, never predicted (a labelled model's label tokens, after each <bos>): they
    # are in the contexts, and never counted as what follows one, so the counts predict characters alone
    given: range = range(0)

    def __post_init__(self) -> None:
        self.ids = np.asarray(self.ids, dtype=np.int64)
        self.bits = max(1, (self.vocab_size - 1).bit_length())
        self.mask = np.uint64((1 << (64 - self.bits)) - 1)  # a context key's bits
        self.low = np.uint64((1 << self.bits) - 1)  # a pair's next-id bits
        self.counts = np.bincount(self.ids, minlength=self.vocab_size)[:self.vocab_size].astype(np.int64)  # (V,)
        self.counts[self.given.start:self.given.stop] = 0
        self.unigram = (self.counts + 1.0) / (self.counts.sum() + self.vocab_size)  # (V,), add-one

    def orders(self) -> list[_Order]:
        if self._orders is None:
            self._orders = self._build()
        return self._orders

    def _build(self) -> list[_Order]:
        """One sort per order, two at a time (NumPy sorts without holding the GIL): the orders' hashes come one
        from the other, so they are made here in turn and each is sorted on a worker."""
        n, shift = len(self.ids), np.uint64(self.bits)
        a = self.ids.astype(np.uint64)  # converted once, not once per order
        one = np.uint64(1)
        h = np.zeros(n, dtype=np.uint64)  # h[i]: hash of the k ids before position i
        starts = self._unlabelled_starts() if len(self.given) else None
        pending: list[Future] = []
        with ThreadPoolExecutor(BUILD_THREADS) as pool:
            for k in range(1, min(self.order, n - 1) + 1):
                # in place: each order's hashes and pairs cost a few passes over the text, no temporaries
                h[k:] *= _MUL
                h[k:] += a[:n - k]
                h[k:] += one
                pairs = np.bitwise_and(h[k:], self.mask)
                pairs <<= shift
                pairs |= a[k:]
                if starts is not None:
                    pairs = np.concatenate([pairs[_outside(self.ids[k:], self.given)], self._start_pairs(*starts, k)])
                running = [f for f in pending if not f.done()]
                if len(running) >= BUILD_THREADS:  # at most a few orders' unsorted pairs in memory at once
                    wait(running, return_when=FIRST_COMPLETED)
                pending.append(pool.submit(_counted, pairs))
            return [f.result() for f in pending]

    def _unlabelled_starts(self) -> tuple[np.ndarray, np.ndarray]:
        """Where each labelled record's start lies, to be read without its label: (R,) the labels' positions, and
        (R,) where each record ends: at the next <bos> (the id before the first label), or the text's end."""
        at = np.flatnonzero(~_outside(self.ids[1:], self.given)) + 1
        if not len(at):
            return at, at
        starts = np.append(np.flatnonzero(self.ids == self.ids[at[0] - 1]), len(self.ids))
        return at, starts[np.searchsorted(starts, at, side="right")]

    def _start_pairs(self, at: np.ndarray, ends: np.ndarray, k: int) -> np.ndarray:
        """Order k's pairs of the labelled records' starts read without their labels (`_unlabelled_starts`): each
        context <bos> c1 .. c(k-1) and the c(k) after it, where c(k) is still the record's (its <eos> at most).
        Only contexts that begin at <bos> are added, so a record's other contexts are counted once, and a labelled
        context (which holds its label) reads as before."""
        last = len(self.ids) - 1
        h = np.zeros(len(at), dtype=np.uint64)
        for j in range(1, k + 1):  # as `_build` hashes: nearest id first; column 0 is the <bos> before the label
            h = h * _MUL + self.ids[at - 1 if j == k else np.minimum(at + k - j, last)].astype(np.uint64) + 1
        y = self.ids[np.minimum(at + k, last)]
        keep = (at + k < ends) & _outside(y, self.given)
        return ((h & self.mask) << np.uint64(self.bits) | y.astype(np.uint64))[keep]

    def _runs(self, t: _Order, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(first pair, count, different followers) of each context key (R,); count 0 where the text lacks it."""
        shift = np.uint64(self.bits)
        lo = np.searchsorted(t.pairs, keys << shift)
        hi = np.searchsorted(t.pairs, (keys << shift) | self.low, side="right")
        return lo, (t.cum[hi] - t.cum[lo]).astype(np.int64), hi - lo

    def _pair_counts(self, t: _Order, keys: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Counts of (key, id) pairs: keys (R,), ids (R, C) -> (R, C)."""
        if not len(t.pairs):  # an order whose every pair was of a given id: nothing counted
            return np.zeros(ids.shape, dtype=np.int64)
        q = (keys[:, None] << np.uint64(self.bits)) | ids.astype(np.uint64)
        j = np.minimum(np.searchsorted(t.pairs, q), len(t.pairs) - 1)
        return np.where(t.pairs[j] == q, t.cum[j + 1].astype(np.int64) - t.cum[j], 0)

    def probs(self, context: np.ndarray, candidates: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """context (N, order) ids, the nearest last (-1: before the text's start); candidates (N, C) ids, or None
        for every id. -> (p (N, C or V) float64, the longest order whose context the text holds (N,), that
        context's count (N,), the different characters that followed it (N,))."""
        if candidates is None and len(context) == 1:  # one sample writing: the same sums on scalars, faster
            one, *held = self._one(context[0])
            return (one[None], *(np.array([x]) for x in held))
        for found in self._interpolated(context, candidates):
            pass
        return found

    def by_order(self, context: np.ndarray, targets: np.ndarray
                 ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """What `probs` gives for targets (N,) at each order 1 .. order in turn, all from one pass: the k-th is
        (p (N,), longest, count, followers) of the n-gram cut to its first k orders (`shorter(k)`)."""
        k, last = 0, None
        for k, (p, *held) in enumerate(self._interpolated(context, targets[:, None])):
            last = (p[:, 0].copy(), *(x.copy() for x in held))
            if k:
                yield last
        for _ in range(k, self.order):  # no longer context is held: p stays
            yield last

    def shorter(self, order: int) -> NGram:
        """This n-gram cut to its first `order` orders, sharing its counts (none are rebuilt)."""
        return NGram(self.ids, self.vocab_size, order, self.beta, self.orders()[:order], self.given)

    def _interpolated(self, context: np.ndarray, candidates: np.ndarray | None
                      ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """`probs`' (p, longest, count, followers) from the unigram up, after each order that some context is held
        at."""
        n = len(context)
        every = candidates is None
        p = np.tile(self.unigram, (n, 1)) if every else self.unigram[candidates].astype(np.float64)
        longest, count, followers = (np.zeros(n, dtype=np.int64) for _ in range(3))
        yield p, longest, count, followers
        h, alive = np.zeros(n, dtype=np.uint64), np.ones(n, dtype=bool)
        for k, t in enumerate(self.orders()[:self.order], 1):
            prev = context[:, -k]
            alive &= prev != _MISSING
            h = h * _MUL + (np.maximum(prev, 0) + 1).astype(np.uint64)
            rows = np.flatnonzero(alive)
            lo, seen, u = self._runs(t, h[rows] & self.mask)
            held = seen > 0
            rows, lo, seen, u = rows[held], lo[held], seen[held], u[held]
            if not len(rows):
                return  # no longer context can be held either
            key = h[rows] & self.mask
            pair = self._all_pairs(t, lo, u) if every else self._pair_counts(t, key, candidates[rows])
            p[rows] = (pair + self.beta * u[:, None] * p[rows]) / (seen + self.beta * u)[:, None]
            longest[rows], count[rows], followers[rows] = k, seen, u
            alive[:] = False
            alive[rows] = True
            yield p, longest, count, followers

    def _one(self, context: np.ndarray) -> tuple[np.ndarray, int, int, int]:
        """`probs` of every id after one context (order,)."""
        p, h, longest, count, followers = self.unigram.copy(), 0, 0, 0, 0
        mul, mask, bits = int(_MUL), int(self.mask), self.bits
        for k, t in enumerate(self.orders()[:self.order], 1):
            prev = int(context[-k])
            if prev == _MISSING:
                break
            h = (h * mul + prev + 1) & 0xFFFFFFFFFFFFFFFF
            base = (h & mask) << bits
            lo = int(t.pairs.searchsorted(np.uint64(base)))
            hi = int(t.pairs.searchsorted(np.uint64(base | int(self.low)), side="right"))
            if hi == lo:
                break
            c, u = int(t.cum[hi]) - int(t.cum[lo]), hi - lo
            pair = np.zeros(self.vocab_size)
            pair[(t.pairs[lo:hi] & self.low).astype(np.int64)] = t.cum[lo + 1:hi + 1] - t.cum[lo:hi]
            p = (pair + self.beta * u * p) / (c + self.beta * u)
            longest, count, followers = k, c, u
        return p, longest, count, followers

    def _all_pairs(self, t: _Order, lo: np.ndarray, followers: np.ndarray) -> np.ndarray:
        """(R, V) counts of every id after each of R held contexts, whose pairs start at lo (R,)."""
        row = np.repeat(np.arange(len(lo)), followers)
        at = np.arange(len(row)) - np.repeat(np.cumsum(followers) - followers, followers) + np.repeat(lo, followers)
        out = np.zeros((len(lo), self.vocab_size))
        out[row, (t.pairs[at] & self.low).astype(np.int64)] = t.cum[at + 1].astype(np.int64) - t.cum[at]
        return out


class _Tally:
    """A growing multiset of 64-bit keys: levels of sorted distinct keys with their counts, each level at least
    twice the size of the next, so that adding n keys in pieces costs O(n log n) and counting a key one search
    per level. 12 bytes a distinct key, and a merge's copies while it runs."""

    def __init__(self) -> None:
        self.levels: list[tuple[np.ndarray, np.ndarray]] = []  # (sorted distinct keys, their counts as uint32)

    def add(self, keys: np.ndarray) -> None:
        if not len(keys):
            return
        level = _summed(keys, np.ones(len(keys), dtype=np.uint32))
        while self.levels and len(self.levels[-1][0]) <= 2 * len(level[0]):
            older = self.levels.pop()
            level = _summed(np.concatenate([older[0], level[0]]), np.concatenate([older[1], level[1]]))
        self.levels.append(level)

    def count(self, keys: np.ndarray) -> np.ndarray:
        """How many times each of keys (R,) was added -> (R,) int64."""
        out = np.zeros(len(keys), dtype=np.int64)
        for distinct, counts in self.levels:
            j = np.minimum(np.searchsorted(distinct, keys), len(distinct) - 1)
            out += np.where(distinct[j] == keys, counts[j], 0)
        return out


def _summed(keys: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keys (R,) with counts (R,) -> (their distinct keys sorted, each one's summed count)."""
    by_key = np.argsort(keys, kind="stable")
    keys, counts = keys[by_key], counts[by_key]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    return keys[starts], np.add.reduceat(counts, starts).astype(np.uint32)


def _earlier(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each of keys (R,): how many keys before it are equal to it; and the permutation that sorts the keys
    (equal ones in their original order), and the index of each sorted key's run of equal keys."""
    by_key = np.argsort(keys, kind="stable")
    ranked = keys[by_key]
    first = np.r_[True, ranked[1:] != ranked[:-1]] if len(keys) else np.zeros(0, dtype=bool)
    run = np.cumsum(first) - 1
    rank = np.empty(len(keys), dtype=np.int64)
    rank[by_key] = np.arange(len(keys)) - np.flatnonzero(first)[run]
    return rank, by_key, run


class Reader:
    """The n-gram counting the text it reads: `read` predicts each target from the counts of the n-gram's text
    plus those of every character read before it (earlier calls, and earlier rows of the same call), then counts
    it. Probabilities are the n-gram's (`NGram.probs`) over the summed counts. The counts of what was read keep
    every order in one tally (a context's hash differs between orders as between any two contexts), three tallies
    of 12 bytes a distinct key; it counts the first READ_PAIRS // order characters it reads, and reads the rest
    with the counts it has by then."""

    def __init__(self, ngram: NGram):
        self.ngram = ngram
        self.unigram = ngram.counts.copy()  # (V,): each id's count, growing as it reads
        self.contexts, self.pairs = _Tally(), _Tally()  # contexts read, (context, next id) pairs read
        self.followers = _Tally()  # a context, once for each follower new to it
        self.counted = 0  # characters counted

    def read(self, context: np.ndarray, targets: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """context (N, order) ids, the nearest last (-1: before the text's start), targets (N,), in the order read
        -> (p of each target (N,), the longest order whose context was seen (N,), that context's count (N,), the
        different characters that followed it (N,))."""
        ng, n = self.ngram, len(targets)
        room = max(0, READ_PAIRS // ng.order - self.counted)  # characters it may still count
        if 0 < room < n:  # the counted ones, then the rest
            return tuple(np.concatenate(parts) for parts in zip(self.read(context[:room], targets[:room]),
                                                                self.read(context[room:], targets[room:])))
        y = np.asarray(targets, dtype=np.int64)
        learn = room > 0
        rank, rows_before = (_earlier(y)[0], np.arange(n)) if learn else (0, 0)  # counted only while counting
        p = (self.unigram[y] + rank + 1.0) / (self.unigram.sum() + rows_before + ng.vocab_size)
        seen, paired, followers = self._counts(context, y, learn)  # (N, K): K orders
        held = np.cumprod(seen > 0, axis=1, dtype=bool)  # a longer context is seen only where the shorter one was
        longest = held.sum(axis=1)
        for k in range(held.shape[1]):
            r = held[:, k]
            p[r] = (paired[r, k] + ng.beta * followers[r, k] * p[r]) / (seen[r, k] + ng.beta * followers[r, k])
        count, different = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
        some = longest > 0
        count[some], different[some] = seen[some, longest[some] - 1], followers[some, longest[some] - 1]
        if learn:
            np.add.at(self.unigram, y, 1)
            self.counted += n
        return p, longest, count, different

    def _counts(self, context: np.ndarray, y: np.ndarray, learn: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Before each of N rows read in order, for each order k: (the count of its context of k ids, of that
        context followed by its target, the context's different followers) in the n-gram's text, earlier reads and
        the rows before it, each (N, K); then, if `learn`, counts the rows. 0 where a row has fewer than k ids."""
        ng, orders = self.ngram, self.ngram.orders()
        n, K = len(y), len(orders)
        keys, h = np.zeros((n, K), dtype=np.uint64), np.zeros(n, dtype=np.uint64)
        for k in range(K):
            h = h * _MUL + (np.maximum(context[:, -k - 1], 0) + 1).astype(np.uint64)
            keys[:, k] = h & ng.mask
        valid = context[:, ::-1][:, :K] != _MISSING  # (N, K): rows with k + 1 ids of context
        pairs = (keys << np.uint64(ng.bits)) | y[:, None].astype(np.uint64)
        seen, paired, followers = (np.zeros((n, K), dtype=np.int64) for _ in range(3))
        for k, t in enumerate(orders):
            rows = np.flatnonzero(valid[:, k])
            _, seen[rows, k], followers[rows, k] = ng._runs(t, keys[rows, k])
            paired[rows, k] = ng._pair_counts(t, keys[rows, k], y[rows, None])[:, 0]
        key, pair = keys[valid], pairs[valid]  # row by row, so that earlier rows come first
        got = seen[valid] + self.contexts.count(key), paired[valid] + self.pairs.count(pair), \
            followers[valid] + self.followers.count(key)
        if learn and len(key):
            context_rank, by_context, run = _earlier(key)
            pair_rank = _earlier(pair)[0]
            new = (got[1] == 0) & (pair_rank == 0)  # a follower this context has had in neither text
            earlier = np.cumsum(new[by_context]) - new[by_context]  # new followers before each, in context order
            fresh = np.empty(len(key), dtype=np.int64)
            fresh[by_context] = earlier - earlier[np.flatnonzero(np.r_[True, run[1:] != run[:-1]])][run]
            self.contexts.add(key)
            self.pairs.add(pair)
            self.followers.add(key[new])
            got = got[0] + context_rank, got[1] + pair_rank, got[2] + fresh
        for out, value in zip((seen, paired, followers), got):
            out[valid] = value
        return seen, paired, followers


def contexts(x: np.ndarray, before: np.ndarray | None, order: int, skip: range = range(0)) -> np.ndarray:
    """x (B, T) ids read in order, `before` (B, order) the ids read before them (None: nothing) -> (B, T, order):
    [:, t] holds the `order` ids up to and including x[:, t], the context of the character after it.

    skip: ids the counts never hold (a labelled model's label tokens, which the network reads after <bos> and the
    n-gram's text leaves out): left out of every context, so that the characters after a label are looked up
    as the text holds them."""
    if before is None:
        before = np.full((len(x), order), _MISSING, dtype=np.int64)
    full = np.concatenate([before, np.asarray(x, dtype=np.int64)], axis=1)  # (B, order + T)
    if len(skip) and ((full >= skip.start) & (full < skip.stop)).any():
        return _contexts_without(full, order, skip)
    return np.lib.stride_tricks.sliding_window_view(full, order, axis=1)[:, 1:]


def _outside(ids: np.ndarray, span: range) -> np.ndarray:
    """Where `ids` fall outside `span` (a labelled model's label ids): the ids counted and read as characters."""
    return (ids < span.start) | (ids >= span.stop)


def _contexts_without(full: np.ndarray, order: int, skip: range) -> np.ndarray:
    """`contexts` of the ids `full` (B, order + T), `before` first, with the ids in `skip` left out: each row's
    other ids moved to its end (in order, _MISSING before them), and each position's context read from there."""
    B, width = full.shape
    kept = _outside(full, skip)  # (B, order + T)
    packed = np.full((B, order + width), _MISSING, dtype=np.int64)  # room for `order` _MISSING before any id
    last = np.cumsum(kept, axis=1) - 1 + order  # (B, order + T): where each position's last kept id lies in packed
    rows, cols = np.nonzero(kept)
    packed[rows, last[rows, cols]] = full[rows, cols]
    ends = last[:, order:]  # (B, T)
    at = ends[..., None] + np.arange(1 - order, 1)  # (B, T, order)
    return np.take_along_axis(packed[:, None, :], at, axis=2)


def bucket(longest: np.ndarray, count: np.ndarray, followers: np.ndarray, p_max: np.ndarray) -> np.ndarray:
    """The mixing weight's index (flat, into (order + 1, *SHAPE)): the longest context held (0 .. order), the log2
    of its count (capped), how many different characters followed it (1, 2, 3-4, 5+: a context always followed by
    the same character is one the counts can be trusted in), and the network's largest probability at that
    character, in CONFIDENCE steps. Each (N,)."""
    counted = np.minimum(np.log2(count + 1.0).astype(np.int64), BUCKETS - 1)
    different = np.minimum(np.ceil(np.log2(np.maximum(followers, 1))).astype(np.int64), FOLLOWERS - 1)
    sure = p_max * CONFIDENCE
    sure = np.where(sure >= 0, np.minimum(sure, CONFIDENCE - 1), 0).astype(np.int64)  # NaN: the least sure
    return ((longest * BUCKETS + counted) * FOLLOWERS + different) * CONFIDENCE + sure


@dataclass
class Mixture:
    """The n-gram and the network's weight in each bucket: (order + 1, *SHAPE) in [0, 1]; `reading`, the same for
    an n-gram that counts the text as it reads it (a `Reader`): None takes `weights`. Weights of EARLIER_SHAPE
    (saved before followers were told apart) take the same weight for any number of followers. `exponents`: the
    last layer's powers of (network, n-gram, linear mixture) for each longest order held, (order + 1, EXPONENTS)
    in [0, MOST_EXPONENT]; None (files from before it): the linear mixture is the prediction. A Reader's mixture
    stays linear: its counts give the probability of the character read, not of every one."""

    ngram: NGram
    weights: np.ndarray
    reading: np.ndarray | None = None
    exponents: np.ndarray | None = None
    # ids the counts never hold, left out of the contexts a text is scored with (`contexts`' skip): the label tokens
    # of a labelled model whose n-gram text holds records without them (files from before it held them: `given`)
    uncounted: range = range(0)

    def __post_init__(self) -> None:
        self.weights = _current(self.weights)
        self.reading = None if self.reading is None else _current(self.reading)
        if self.exponents is not None and np.shape(self.exponents) != (self.ngram.order + 1, EXPONENTS):
            raise ValueError(f"exponents must be {(self.ngram.order + 1, EXPONENTS)}, are {np.shape(self.exponents)}")

    def target_probs(self, p_network: np.ndarray, p_max: np.ndarray, context: np.ndarray,
                     targets: np.ndarray) -> np.ndarray:
        """The network's probability of targets (N,) and its largest one (N,), after context (N, order) -> the
        linear mixture's probability of targets (N,), before the last layer (which needs every id's)."""
        p, *held = self.ngram.probs(context, targets[:, None])
        return self.mix(p_network, p_max, (p[:, 0], *held))

    def mix(self, p_network: np.ndarray, p_max: np.ndarray, predicted: tuple[np.ndarray, ...],
            reading: bool = False) -> np.ndarray:
        """The network's probability of N targets and its largest one, each (N,), with the n-gram's (p, longest
        order seen, its count, its followers), each (N,), from `NGram.probs` or (reading) a `Reader` -> the
        linear mixture's p (N,)."""
        p, *held = predicted
        weights = self.reading if reading and self.reading is not None else self.weights
        w = weights.reshape(-1)[bucket(*held, p_max)]
        return w * p_network + (1 - w) * p

    def inputs(self, logits: np.ndarray, context: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """logits (N, V) of the network after context (N, order) -> the last layer's inputs (EXPONENTS, N, V)
        float64: log-probabilities of the network, the n-gram and their linear mixture (at least log FLOOR); and
        the longest order held (N,)."""
        *parts, longest = self._parts(logits, context)
        out = np.stack(parts)
        return np.log(np.maximum(out, FLOOR, out=out), out=out), longest

    def log_probs(self, logits: np.ndarray, context: np.ndarray) -> np.ndarray:
        """logits (N, V) of the network after context (N, order) -> (N, V) float32 log-probabilities of the
        mixture: what a Writer chooses from, as from logits, and what a text is scored by."""
        if self.exponents is None:  # a file from before the last layer: the linear mixture alone
            return np.log(np.maximum(self._parts(logits, context)[2], FLOOR)).astype(np.float32)
        inputs, longest = self.inputs(logits, context)
        return _log_normalised(_scores(self.exponents[longest], inputs)).astype(np.float32)

    def _parts(self, logits: np.ndarray, context: np.ndarray) -> tuple[np.ndarray, ...]:
        """logits (N, V) after context (N, order) -> the network's probabilities, the n-gram's and their linear
        mixture's, (N, V) float64 each; and the longest order held (N,)."""
        p_net = np.exp(_log_normalised(logits.astype(np.float64)))
        p, longest, *held = self.ngram.probs(context)
        w = self.weights.reshape(-1)[bucket(longest, *held, p_net.max(axis=-1))][:, None]
        return p_net, p, w * p_net + (1 - w) * p, longest


def fit(ngram: NGram, p_network: np.ndarray, p_max: np.ndarray, context: np.ndarray, targets: np.ndarray,
        rounds: int = 50) -> Mixture:
    """The weights that best mix the network with `ngram` on these characters, given the network's probability
    of each (N,) and its largest (N,): as the n-gram stands, and as a `Reader` that counts them in the order given.
    The characters must be ones `ngram` was not built from."""
    p_network = _finite(p_network)
    p, *held = ngram.probs(context, targets[:, None])
    static = _em(p_network, p[:, 0], bucket(*held, p_max), ngram.order, rounds)
    reader, piece = Reader(ngram), 16_384  # read in pieces: the same counts, a piece's working memory
    p, *held = (np.concatenate(part) for part in zip(*(
        reader.read(context[i:i + piece], targets[i:i + piece]) for i in range(0, max(1, len(targets)), piece))))
    return Mixture(ngram, static, _em(p_network, p, bucket(*held, p_max), ngram.order, rounds))


def fit_exponents(mixture: Mixture, logits: np.ndarray, context: np.ndarray, targets: np.ndarray,
                  rounds: int = 50) -> np.ndarray:
    """The last layer's powers (order + 1, EXPONENTS) that best predict targets (N,) from the network's logits
    (N, V) and contexts (N, order) under `mixture` (whose n-gram was not built from these characters): for each
    longest order held, a log-linear fit by Newton's method, each step halved until it lowers that order's loss,
    the powers kept within [0, MOST_EXPONENT] and held to LINEAR by EXPONENT_PRIOR."""
    inputs, groups = mixture.inputs(logits, context)
    finite = np.isfinite(inputs).all(axis=(0, 2))  # a diverged network's rows say nothing
    inputs, groups, targets = inputs[:, finite], groups[finite], targets[finite]
    size = mixture.ngram.order + 1
    theta = np.tile(LINEAR, (size, 1))
    loss = _group_loss(inputs, targets, groups, theta, size)
    chosen = inputs[:, np.arange(len(targets)), targets].T  # (N, EXPONENTS): the inputs at each target
    for _ in range(rounds):
        q = np.exp(_log_normalised(_scores(theta[groups], inputs)))  # (N, V)
        expected = np.stack([(q * x).sum(1) for x in inputs], 1)  # (N, K)
        spread = np.stack([np.stack([(q * x * u).sum(1) for u in inputs], 1) for x in inputs], 1) \
            - expected[:, :, None] * expected[:, None, :]  # (N, K, K): each row's covariance of the inputs
        grad = _by_group(expected - chosen, groups, size) + EXPONENT_PRIOR * (theta - LINEAR)
        hess = _by_group(spread, groups, size) + EXPONENT_PRIOR * np.eye(EXPONENTS)
        theta, fell = _halving(inputs, targets, groups, theta, _free_step(theta, grad, hess), loss)
        loss = loss - fell
        if fell.sum() < SETTLED:
            break
    return theta


def _free_step(theta: np.ndarray, grad: np.ndarray, hess: np.ndarray) -> np.ndarray:
    """Each group's Newton step (G, K) over the powers a bound does not hold: one at a bound (or within `near` of
    it, Bertsekas' epsilon-active set) whose gradient points past it stays (projected Newton: a step of the others
    alone, so that clipping cannot undo the descent)."""
    near = np.minimum(ACTIVE, np.abs(theta - np.clip(theta - grad, 0.0, MOST_EXPONENT)).max(axis=1, keepdims=True))
    held = ((theta <= near) & (grad > 0)) | ((theta >= MOST_EXPONENT - near) & (grad < 0))  # (G, K)
    free = ~held
    hess = np.where(free[:, :, None] & free[:, None, :], hess, 0.0) + np.eye(theta.shape[1]) * held[:, None, :]
    return np.linalg.solve(hess, np.where(held, 0.0, grad)[:, :, None])[:, :, 0]


def _halving(inputs: np.ndarray, targets: np.ndarray, groups: np.ndarray, theta: np.ndarray, step: np.ndarray,
             loss: np.ndarray, tries: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Each group's powers moved by its Newton step (G, K), halved until its loss (G,) falls (or not moved at
    all): the new powers, and how far each group's loss fell."""
    rate, out, fell = np.ones(len(theta)), theta.copy(), np.zeros(len(theta))
    pending = np.abs(step).max(axis=1) > 1e-9  # a group with no rows, or settled, has nowhere to go
    for _ in range(tries):
        trial = np.clip(theta - rate[:, None] * step, 0.0, MOST_EXPONENT)
        got = _group_loss(inputs, targets, groups, trial, len(theta))
        better = pending & (got < loss)
        out[better], fell[better] = trial[better], (loss - got)[better]
        pending &= ~better
        rate[pending] /= 2
        if not pending.any():
            break
    return out, fell


def _group_loss(inputs: np.ndarray, targets: np.ndarray, groups: np.ndarray, theta: np.ndarray,
                size: int) -> np.ndarray:
    """Each group's summed loss in nats under powers theta (G, K), with the prior's: (G,)."""
    lp = _log_normalised(_scores(theta[groups], inputs))
    nll = -lp[np.arange(len(targets)), targets]
    return np.bincount(groups, nll, minlength=size) + EXPONENT_PRIOR / 2 * ((theta - LINEAR) ** 2).sum(1)


def _scores(powers: np.ndarray, inputs: np.ndarray) -> np.ndarray:
    """Each row's powers (N, K) of inputs (K, N, V) -> the product's logarithm, unnormalised (N, V)."""
    out = powers[:, :1] * inputs[0]
    for k in range(1, len(inputs)):
        out += powers[:, k:k + 1] * inputs[k]
    return out


def _by_group(rows: np.ndarray, groups: np.ndarray, size: int) -> np.ndarray:
    """rows (N, ...) summed by group (N,) -> (size, ...)."""
    out = np.zeros((size, *rows.shape[1:]))
    np.add.at(out, groups, rows)
    return out


def _log_normalised(z: np.ndarray) -> np.ndarray:
    """Scores (N, V) -> log-probabilities (N, V): z less its log-sum-exp over each row."""
    top = z.max(axis=-1, keepdims=True)
    return z - top - np.log(np.exp(z - top).sum(axis=-1, keepdims=True))


def choose_order(ngram: NGram, p_network: np.ndarray, p_max: np.ndarray, context: np.ndarray, targets: np.ndarray,
                 rounds: int = 50) -> int:
    """The order to cut `ngram` to for mixing with this network (`shortest_best` of the mixture's bits per
    character at each order), each order's figure cross-fitted: weights fitted on one half of these characters
    score the other, so an order's extra weights cannot flatter it. The characters must be ones `ngram` was not
    built from."""
    p_network, half = _finite(p_network), len(targets) // 2
    if half < 1:
        return ngram.order
    scored = []
    for k, (p, *held) in enumerate(ngram.by_order(context, targets), 1):
        groups = bucket(*held, p_max)
        total = 0.0
        for fit_on, score_on in ((slice(0, half), slice(half, None)), (slice(half, None), slice(0, half))):
            w = _em(p_network[fit_on], p[fit_on], groups[fit_on], k, rounds).reshape(-1)[groups[score_on]]
            total += bits(w * p_network[score_on] + (1 - w) * p[score_on]) * len(p[score_on])
        scored.append(total / len(targets))
    return shortest_best(scored)


def shortest_best(bpc: list[float]) -> int:
    """The order to keep, given the mixture's bits per character at orders 1, 2, ...: the shortest that no longer
    order beats by ORDER_GAIN (each order costs memory and time wherever the model is loaded)."""
    return next(k for k in range(1, len(bpc) + 1) if bpc[k - 1] - min(bpc[k - 1:]) < ORDER_GAIN)


def _finite(p_network: np.ndarray) -> np.ndarray:
    """The network's probabilities as float64 with NaN and infinities replaced (a diverged network's output)."""
    return np.nan_to_num(np.asarray(p_network, dtype=np.float64), nan=0.0, posinf=1.0, neginf=0.0)


def _em(p_network: np.ndarray, p_ngram: np.ndarray, groups: np.ndarray, order: int, rounds: int) -> np.ndarray:
    """EM for one weight per bucket: the network's and the n-gram's probabilities of N characters and each one's
    bucket, each (N,) -> weights (order + 1, *SHAPE); each starts from PRIOR and an empty bucket keeps it."""
    size = (order + 1) * math.prod(SHAPE)
    start, strength = PRIOR
    n = np.bincount(groups, minlength=size)
    w = np.full(size, start)
    for _ in range(rounds):
        a = w[groups] * p_network
        share = a / np.maximum(a + (1 - w[groups]) * p_ngram, 1e-300)  # the network's share of each character
        w = (np.bincount(groups, share, minlength=size) + start * strength) / (n + strength)
    return w.reshape(order + 1, *SHAPE)


def _current(weights: np.ndarray) -> np.ndarray:
    """Mixing weights (order + 1, *SHAPE), from weights of SHAPE or of EARLIER_SHAPE (the same for any followers)."""
    weights = np.asarray(weights)
    if weights.shape[1:] == EARLIER_SHAPE:
        return np.repeat(weights[:, :, None, :], FOLLOWERS, axis=2)
    return weights


def bits(p: np.ndarray) -> float:
    """Mean bits per character of probabilities p."""
    return float(-np.log2(np.maximum(p, 1e-300)).mean()) if len(p) else math.nan


__all__ = ["BUCKETS", "CONFIDENCE", "EARLIER_SHAPE", "EXPONENTS", "FOLLOWERS", "SHAPE",
           "MAX_CHARS", "MAX_ORDER", "MAX_PAIRS", "MIX_FLOATS", "Mixture", "NGram", "ORDER_GAIN",
           "READ_PAIRS", "Reader", "bits", "bucket", "choose_order", "contexts", "fit", "fit_exponents", "most_chars",
           "shortest_best"]
