"""Choosing the next character and writing samples, in NumPy: the part of generation every backend shares.

`choose` is a pure function of logits and options (greedy, temperature, top-k, top-p), and
`apply_repetition_penalty` one of logits and the characters already used. `Writer` runs a generation for
any backend that can read a start text and take one step: the PyTorch model (sampling.Generator) and an
exported ONNX file (onnx_generator.OnnxGenerator). Nothing here imports torch, so the ONNX path runs
without it, and both backends make the same choice from the same uniform draws.

Seeds are per sample: sample i of a call with seed s draws from its own Mersenne Twister seeded with
s + i (its low 32 bits), exactly the float32 stream of `torch.rand` with `torch.Generator().manual_seed`,
so a sample is the same text whether it is made alone or in a batch, with torch or without.
"""

from __future__ import annotations

import os
import secrets
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from .config import ModelConfig, SampleOptions
from .errors import CharloomError, CharloomWarning, ConfigError
from .ngram import MIX_FLOATS, Mixture, contexts
from .vocab import Vocab

UNIFORM_BLOCK = 256  # random numbers drawn per sample at a time
# what one sample holds while it is written, for `Writer.memory_needed` (measured on CPython 3.11):
SAMPLE_FIXED_BYTES = 4096  # its Mersenne Twister state (2.5 KB) and its Python bookkeeping
LOGIT_COPIES = 12  # (V,) float32 rows alive at once while a character is chosen: penalty, filters, sort, cdf
STATE_COPIES = 12  # (H,) float32 rows per layer: the state, the new state and the gates of a step
MIX_COPIES = 14  # (V,) float64 rows per sample while a model's n-gram is mixed in (its inputs, their product)
TEXT_BYTES = 16  # per character kept, besides the characters themselves: the pieces' list until they are joined
# per start-text character, besides what the model computes on it: its prepared copy and code points, its id as
# an int in a Python list (a 32-byte object above 256), as int64 arrays for the model and for an n-gram's contexts
START_BYTES = 96
GATE_ROWS = 5  # (H,) float32 rows a fused layer computes per character read: up to four gates and its output
HEAD_ROWS = 2  # (W,) float32 rows of the head's hidden layer per character: its product and the GELU of it
ATTENTION_ROWS = 6  # (A,) float32 rows of an attention head per character read: query, key and value, read, ...
MEMORY_COPIES = 3  # ... and copies of its memory per sample: the memory, it with the new keys, the new memory


def recall_floats(cfg: ModelConfig, piece: int | None = None) -> int:
    """float32 numbers an attention head computes per character read: its query, keys, values and read, and its
    scores over the memory and the piece read in one call, `piece` characters (None: no longer than the memory, as
    scoring and writing keep it; training learns whole pieces, so its scores grow with theirs); 0 without one. With
    shifted keys also the keys' part from the output before each position, before and after its shift."""
    shifted = 2 * cfg.attention if cfg.shifted_keys else 0
    scores = cfg.memory + (cfg.memory if piece is None else piece)
    return ATTENTION_ROWS * cfg.attention + scores + shifted if cfg.attention else 0


def state_bytes(cfg: ModelConfig) -> int:
    """Bytes one sample's (or stream's) recurrent state holds while a step runs: each layer's state, new state and
    gates, and an attention head's memory of keys and values, with it extended and the new one beside it."""
    memory = MEMORY_COPIES * cfg.memory * (2 * cfg.attention + 1) * 4 if cfg.attention else 0
    return STATE_COPIES * cfg.num_layers * cfg.hidden_size * 4 + memory


def attended_rows(cfg: ModelConfig, rows: int) -> int:
    """Characters one forward call may read: `rows`, or with an attention head no more than its memory (its scores
    grow with the call's length squared; `recall_floats` counts them for a call no longer than that)."""
    return min(rows, cfg.memory) if cfg.attention else rows


READ_BYTES = 64 * 2**20  # a backend that reads its start text in pieces computes about this much per piece
# a smaller temperature is greedy: dividing float32 logits by it could overflow to inf (and inf - inf is
# nan), and at it the choice is the argmax anyway, but for exact ties
GREEDY_BELOW = 1e-30
_MANTISSA = np.float32(2.0 ** -24)  # torch's float32 uniform: the low 24 bits of a 32-bit draw, scaled


def uniforms(seed: int, n: int) -> np.ndarray:
    """(n,) float32 uniforms in [0, 1) from the stream seeded with `seed`: equal to
    `torch.rand(n, generator=torch.Generator().manual_seed(seed))`."""
    return UniformStream(seed).take(n)


class UniformStream:
    """One sample's random numbers: MT19937 seeded as torch seeds its CPU generator (the seed's low 32 bits)."""

    def __init__(self, seed: int):
        legacy = np.random.RandomState(int(seed) & 0xFFFFFFFF).get_state(legacy=False)  # MT19937's own seeding
        self.bits = np.random.MT19937()
        self.bits.state = legacy

    def take(self, n: int) -> np.ndarray:
        raw = self.bits.random_raw(n)  # (n,) 32-bit draws as uint64
        return (raw & 0xFFFFFF).astype(np.float32) * _MANTISSA


def apply_repetition_penalty(logits: np.ndarray, seen: np.ndarray, penalty: float) -> np.ndarray:
    """(B, V) logits with every already-used character made less likely (CTRL, Keskar et al. 2019):
    a positive logit is divided by `penalty`, a negative one multiplied. `seen` is a (B, V) bool mask."""
    if penalty == 1.0:
        return logits
    scaled = np.where(logits > 0, logits / np.float32(penalty), logits * np.float32(penalty))
    return np.where(seen, scaled, logits).astype(logits.dtype, copy=False)


def filter_logits(logits: np.ndarray, top_k: int = 0, top_p: float = 1.0) -> np.ndarray:
    """(B, V) logits with everything outside the top-k and the nucleus set to -inf."""
    logits = np.asarray(logits)
    rows = np.arange(logits.shape[0])[:, None]  # (B, 1): with an (B, k) index array, picks per row
    if top_k and top_k < logits.shape[-1]:
        keep = np.argpartition(logits, -top_k, axis=-1)[:, -top_k:]  # exactly k, even when logits tie
        kept = np.full_like(logits, -np.inf)
        kept[rows, keep] = logits[rows, keep]
        logits = kept
    if top_p < 1.0:
        order = np.argsort(-logits, axis=-1, kind="stable")  # (B, V): most likely first
        probs = softmax(logits[rows, order])
        before = np.cumsum(probs, -1) - probs  # mass of the strictly more likely candidates
        cut = before >= top_p  # (B, V) in `order`: keeps the smallest set whose mass reaches p
        # the most likely always stays: a top_p below float32's least number (~1.4e-45) compares as 0, which
        # the first candidate's 0 "reaches", and a row with nothing kept would sample <pad> (id 0)
        cut[:, 0] = False
        drop = np.empty(logits.shape, dtype=bool)
        drop[rows, order] = cut
        logits = np.where(drop, np.float32(-np.inf), logits).astype(logits.dtype, copy=False)
    return logits


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in x's precision; rows of -inf but one stay finite."""
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def choose(logits: np.ndarray, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           u: np.ndarray | None = None, rng: np.random.Generator | None = None) -> np.ndarray:
    """(B, V) logits -> (B,) next ids. Temperature 0 (or below GREEDY_BELOW) is greedy (argmax).

    u: (B,) uniforms in [0, 1), one per row, used by inverse-CDF sampling (drawn from `rng` if absent).
    The options are checked by SampleOptions' rules, so a bad value reads as it does everywhere else.
    """
    opts = SampleOptions(temperature=temperature, top_k=top_k, top_p=top_p)
    logits = np.asarray(logits, dtype=np.float32)
    if logits.ndim != 2 or not logits.shape[1]:
        raise ConfigError(f"logits: must be (B, V) with V at least 1, got shape {logits.shape}")
    # no id to choose, or none fairly: NaN, +inf (whose softmax is NaN), or a row of -inf alone
    if np.isnan(logits).any() or np.isposinf(logits).any() or not np.isfinite(logits).any(-1).all():
        raise ConfigError("logits: every row needs a finite logit, and none may be NaN or +inf")
    if u is None and opts.temperature >= GREEDY_BELOW:
        u = (rng or np.random.default_rng()).random(logits.shape[0], dtype=np.float32)
    elif u is not None:
        u = np.broadcast_to(np.asarray(u, dtype=np.float64), logits.shape[:1]) if np.ndim(u) == 0 else \
            np.asarray(u, dtype=np.float64)
        if u.shape != logits.shape[:1] or not ((u >= 0) & (u < 1)).all():
            raise ConfigError(f"u: must be ({logits.shape[0]},) uniforms in [0, 1), one per row")
        # in float32, as the generation loop draws them: one just below 1 stays below it
        u = np.minimum(u.astype(np.float32), np.nextafter(np.float32(1), np.float32(0)))
    return choose_checked(logits, opts.temperature, opts.top_k, opts.top_p, u)


def choose_checked(logits: np.ndarray, temperature: float, top_k: int, top_p: float,
                   u: np.ndarray | None) -> np.ndarray:
    """`choose` without the option checks: a generation checks once per call, not once per character."""
    if temperature < GREEDY_BELOW:
        return logits.argmax(-1)
    probs = softmax(filter_logits(logits / np.float32(temperature), top_k, top_p))
    cdf = np.cumsum(probs, -1)  # (B, V)
    # the first id whose cumulative mass exceeds u * total: never an id of zero probability
    threshold = np.asarray(u, dtype=np.float32) * cdf[:, -1]
    idx = (cdf <= threshold[:, None]).sum(-1)
    return np.minimum(idx, probs.shape[-1] - 1)


# ---- the generation loop ----------------------------------------------------------------------------
class Writer:
    """Writes text with a backend: the start text (in pieces of bounded length), then one character at a time,
    state carried.

    A backend subclass gives `_start(prefix, n)` -> ((n, V) float32 logits after the prefix, state for n
    samples) and `_step(ids (n,), state)` -> ((n, V) logits, new state), and sets `vocab`, `records`,
    `num_layers`, `hidden_size`, `head_width` and `config` (the model's). The state is the backend's own; the Writer
    only passes it back.
    A backend whose `_start` reads a long start in pieces of `piece_rows()` characters sets `reads_in_pieces`,
    so the memory check counts one piece's work, not the whole start's.
    """

    vocab: Vocab
    records: bool
    num_layers: int
    hidden_size: int
    head_width: int  # units of the head's hidden layer (0: a linear head)
    config: ModelConfig
    mixture: Mixture | None = None  # the model's n-gram, mixed with the backend's prediction at every step
    reads_in_pieces = False  # whether `_start` reads a long start text `piece_rows()` characters per call

    def _start(self, prefix: list[int], n: int) -> tuple[np.ndarray, Any]:
        raise NotImplementedError

    def _step(self, ids: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        raise NotImplementedError

    def _read_logits(self, ids: Sequence[int]) -> np.ndarray:
        raise NotImplementedError

    def read_logits(self, ids: Sequence[int], ngram: bool = True) -> np.ndarray:
        """(T, V) float32 logits of one text of ids read from a zero state, the state carried through it: row t
        predicts ids[t + 1] (log-probabilities of the mixture, for a model with an n-gram, unless `ngram` is False)."""
        V, given = len(self.vocab), np.asarray(ids)
        if not given.size or given.ndim != 1 or given.dtype.kind not in "iu" or given.min() < 0 or given.max() >= V:
            raise ConfigError(f"ids: must be one or more ids of this model's vocabulary (0 to {V - 1})")
        self.check_reading(len(ids), len(ids) * V * 4)  # and the (T, V) logits returned
        logits = self._read_logits(ids)  # a new array from either backend: rewritten in place below
        if self.mixture is None or not ngram:
            return logits
        ctx = contexts(np.asarray([list(ids)]), None, self.mixture.ngram.order, self.mixture.uncounted)[0]  # (T, order)
        rows = max(1, MIX_FLOATS // logits.shape[1])  # in pieces: the mixture's float64 copies stay small
        for at in range(0, len(logits), rows):
            logits[at:at + rows] = self.mixture.log_probs(logits[at:at + rows], ctx[at:at + rows])
        return logits

    def _mixed(self, logits: np.ndarray, context: np.ndarray | None) -> np.ndarray:
        return logits if context is None else self.mixture.log_probs(logits, context)

    def state_arrays(self, state: Any) -> dict[str, np.ndarray]:
        """The backend's state as named float32 arrays, each (num_layers, B, H): `h`, and `c` for an LSTM."""
        raise NotImplementedError

    def trace(self, before: Sequence[int], ids: Sequence[int]) -> dict[str, np.ndarray]:
        """Every layer's state after each of `ids`, read one at a time after `before`: name -> (L, N, H)."""
        self.check_reading(len(before) + len(ids))
        _, state = self._start(list(before), 1)
        kept: dict[str, list[np.ndarray]] = {name: [] for name in self.state_arrays(state)}
        for i in ids:
            _, state = self._step(np.asarray([i], dtype=np.int64), state)
            for name, s in self.state_arrays(state).items():
                kept[name].append(np.array(s[:, 0], dtype=np.float32))  # (L, H)
        return {name: np.stack(rows, 1) if rows else np.zeros((self.num_layers, 0, self.hidden_size), np.float32)
                for name, rows in kept.items()}

    def banned_ids(self) -> list[int]:
        """Ids a sample may never produce: <pad>, <bos>, <unk>, every label token, and <eos> for a model that never
        saw a record end."""
        v = self.vocab
        return [v.pad_id, v.bos_id, v.unk_id, *v.label_ids] + ([] if self.records else [v.eos_id])

    def unknown_characters(self, start: str) -> list[str]:
        """Characters of `start` the model has never seen (read as <unk>, or refused, by the vocabulary's policy)."""
        text = self.vocab.prepare(start)
        return sorted({ch for ch in text if ch not in self.vocab})

    def _prefix(self, start: str, label: str | None = None) -> list[int]:
        return prefix_ids(self.vocab, self.records, start, label=label)

    def generate(self, options: SampleOptions | str | None = None, length: int | None = None, *,
                 on_text: Callable[[int, str], None] | None = None, **changes: Any) -> list[str]:
        """`options.n` continuations of `options.start` (without it). Each ends at <eos>, after `length`
        characters, or just before the first stop string it writes (where two end at the same character, before
        the longer). `stop` is one string or a list of them. `on_text(i, piece)` sees each sample's text as it is
        made.

        The options are a SampleOptions, or its fields as arguments: `generate("Ma", 20, n=5, seed=1)`
        (see `sample_options`)."""
        opts = sample_options(options, length, **changes)
        self.check_memory(opts)  # before anything per sample is made
        out: list[list[str]] = [[] for _ in range(opts.n)]  # joined once at the end: `+=` on each would be quadratic
        for i, piece in self._warned(opts):
            out[i].append(piece)
            if on_text is not None:
                on_text(i, piece)
        return ["".join(pieces) for pieces in out]

    def stream(self, options: SampleOptions | str | None = None, length: int | None = None,
               **changes: Any) -> Iterator[tuple[int, str]]:
        """Yield (sample index, text) pieces as they are made; joined per sample they are `generate`'s texts.
        The options and the start text are checked here, before the first piece is asked for."""
        return self._warned(sample_options(options, length, **changes))

    def _warned(self, opts: SampleOptions) -> Iterator[tuple[int, str]]:
        """`quietly`'s pieces, after a warning of the start text's unknown characters that points at the line
        that called `stream` or `generate` (stacklevel 3: past this method and the one that called it)."""
        pieces = self.quietly(opts)  # checked first: a refused request has nothing to warn of
        unknown = self.unknown_characters(opts.start)
        if unknown and self.vocab.unknown == "unk":
            warnings.warn(f"start text: {''.join(unknown)!r} not in the model's vocabulary, read as <unk>",
                          CharloomWarning, stacklevel=3)
        return pieces

    def quietly(self, opts: SampleOptions) -> Iterator[tuple[int, str]]:
        """`stream` for a caller that tells its own user of a start text's unknown characters (the server): no
        warning. The options and the memory they need are still checked here."""
        self.check_memory(opts)
        return self._pieces(self._prefix(opts.start, opts.label), opts)

    def _pieces(self, prefix: list[int], opts: SampleOptions) -> Iterator[tuple[int, str]]:
        return self._run(prefix, opts)

    def row_bytes(self) -> int:
        """Bytes a forward call computes per character it reads: (V,) float32 logits, a (V,) one-hot input (or a
        smaller embedded one), a layer's gates and output, the head's hidden layer, and with an attention head its
        query, keys and values and its scores over the memory and the piece (at most twice the memory: a piece
        of more characters than that costs more than this counts, so pieces are kept to it)."""
        return 4 * (2 * len(self.vocab) + GATE_ROWS * self.hidden_size + HEAD_ROWS * self.head_width
                    + recall_floats(self.config))

    def piece_rows(self) -> int:
        """Characters of start text read per call by a backend that reads in pieces: about READ_BYTES of work."""
        return attended_rows(self.config, max(1, READ_BYTES // self.row_bytes()))

    def logit_rows(self) -> int:
        """Characters read per call where every one's logits are kept (`read_logits`): about READ_BYTES of work."""
        return attended_rows(self.config, max(1, READ_BYTES // Writer.row_bytes(self)))

    def reading_bytes(self, chars: int) -> int:
        """Bytes that reading a start text of `chars` characters holds at its peak, roughly: its ids, and the
        model's work on one piece of it (on all of it, for a backend that reads in one call)."""
        rows = min(chars, self.piece_rows()) if self.reads_in_pieces else chars
        return chars * START_BYTES + rows * self.row_bytes() + state_bytes(self.config)

    def check_reading(self, chars: int, kept: int = 0) -> None:
        """Refuse, before any work, reading a text of `chars` characters that would not fit in memory (half of this
        machine's): its state above all, an attention head's memory, which is never cut in pieces; `kept`: bytes
        the reading keeps besides (the logits of every character)."""
        if (need := self.reading_bytes(chars) + kept) > (cap := memory_cap()):
            raise ConfigError(f"text: reading {chars:,} characters with this model needs about {need / 1e9:,.1f} GB, "
                              f"more than the {cap / 1e9:,.1f} GB allowed (half of this machine's memory)")

    def memory_needed(self, n: int, length: int, start_chars: int = 0) -> int:
        """Bytes that n samples of `length` characters after a start text of `start_chars` hold at the peak of a
        generation, roughly: reading the start once, then each sample's random stream and uniforms, a few copies
        of its logits and recurrent state, and its text."""
        vocab_size = len(self.vocab)
        width = 1 if all(ord(c) < 256 for c in self.vocab.chars) else 4  # bytes per character of a str
        per_sample = (SAMPLE_FIXED_BYTES + UNIFORM_BLOCK * 4 * 2 + LOGIT_COPIES * vocab_size * 4
                      + state_bytes(self.config) + HEAD_ROWS * self.head_width * 4
                      + (MIX_COPIES * vocab_size * 8 if self.mixture is not None else 0))
        start = self.reading_bytes(start_chars) if start_chars else 0
        return start + n * (per_sample + length * (TEXT_BYTES + 2 * width))

    def check_memory(self, opts: SampleOptions) -> None:
        """Refuse, before any work, a generation that would not fit in memory (half of this machine's), naming
        the start text where reading it is the larger part."""
        chars = len(opts.start) + 2  # and the <bos> and label a records model reads first
        start, cap = self.reading_bytes(chars), memory_cap()
        need = self.memory_needed(opts.n, opts.length, chars)
        if need <= cap:
            return
        if start > need - start:
            raise ConfigError(f"start (--start): a start text of {len(opts.start):,} characters needs about "
                              f"{start / 1e9:,.1f} GB to read ({need / 1e9:,.1f} GB in all), more than the "
                              f"{cap / 1e9:,.1f} GB allowed (half of this machine's memory); give a shorter start text")
        raise ConfigError(f"n (--num-samples) and length (--length): {opts.n:,} samples of {opts.length:,} "
                          f"characters need about {need / 1e9:,.1f} GB, more than the {cap / 1e9:,.1f} GB allowed "
                          f"(half of this machine's memory); ask for fewer or shorter samples")

    def _run(self, prefix: list[int], opts: SampleOptions) -> Iterator[tuple[int, str]]:
        n, penalty, v = opts.n, opts.repetition_penalty, self.vocab
        if opts.length == 0:
            return
        last, state = self._start(prefix, n)  # (n, V): every sample shares the start
        context = None  # (n, order): the ids the n-gram reads, for a model with one
        if self.mixture is not None and opts.ngram:
            m = self.mixture
            context = contexts(np.asarray([prefix]), None, m.ngram.order, m.uncounted)[0, -1:].repeat(n, 0)
        last = self._mixed(last, context)
        base = secrets.randbits(62) if opts.seed is None else int(opts.seed)
        streams = [UniformStream(base + i) for i in range(n)] if opts.temperature > 0 else []
        banned = np.asarray(self.banned_ids())
        seen = np.zeros((n, len(v)), dtype=bool)
        if penalty != 1.0:
            seen[:, prefix] = True
        done = [False] * n
        itos, n_special, eos = v.itos, v.first_char, v.eos_id
        stops = Stops(opts.stop, n) if any(opts.stop) else None
        u = None
        for t in range(opts.length):
            if streams and t % UNIFORM_BLOCK == 0:
                u = np.stack([s.take(UNIFORM_BLOCK) for s in streams])  # (n, block)
            scores = np.array(last, dtype=np.float32)  # a copy: the backend's array stays as it was
            scores[:, banned] = -np.inf
            scores = apply_repetition_penalty(scores, seen, penalty)
            nxt = choose_checked(scores, opts.temperature, opts.top_k, opts.top_p,
                                 u[:, t % UNIFORM_BLOCK] if u is not None else None)
            for i, tok in enumerate(nxt.tolist()):
                if done[i]:
                    continue
                if tok == eos:
                    done[i] = True
                    continue
                ch = itos[tok] if tok >= n_special else ""
                if stops is None:
                    yield i, ch
                    continue
                shown, done[i] = stops.feed(i, ch)
                if shown:
                    yield i, shown
            if all(done):
                break
            if penalty != 1.0:
                seen[np.arange(n), nxt] = True
            last, state = self._step(nxt, state)
            if context is not None:
                context = np.concatenate([context[:, 1:], nxt[:, None]], axis=1)
            last = self._mixed(last, context)
        for i, rest in enumerate(stops.held if stops else ()):  # what could have begun a stop string, but did not
            if rest:
                yield i, rest


class Stops:
    """Finds stop strings in each sample's text as it is written, and holds back what could begin one.

    Each stop string is followed by a Knuth-Morris-Pratt automaton, so a character costs amortised constant
    time per stop string however long the text or the stop strings: rescanning the text's end for every
    prefix of every stop string costs the square of their length per character."""

    def __init__(self, stops: Sequence[str], n: int):
        self.stops = [s for s in stops if s]
        self.fails = [_failure(s) for s in self.stops]
        self.matched = [[0] * len(self.stops) for _ in range(n)]  # per sample: characters of each stop matched
        self.held = [""] * n  # per sample: the end of its text that begins a stop string, not yet shown

    def feed(self, i: int, text: str) -> tuple[str, bool]:
        """Sample i wrote `text`: (what of it may be shown now, whether a stop string ended the sample there).
        What is held back is always the longest end of the text that begins some stop string."""
        matched, held = self.matched[i], self.held[i]
        for at, ch in enumerate(text):
            hit = 0
            for j, s in enumerate(self.stops):
                k, fail = matched[j], self.fails[j]
                while k and s[k] != ch:
                    k = fail[k - 1]
                k += s[k] == ch
                matched[j] = k
                if k == len(s):
                    hit = max(hit, k)  # of stops ending here, the longer began first
            if hit:
                written = held + text[:at + 1]
                self.held[i] = ""
                return written[:len(written) - hit], True
        written, keep = held + text, max(matched, default=0)
        self.held[i] = written[len(written) - keep:] if keep else ""
        return written[:len(written) - keep], False


def _failure(s: str) -> list[int]:
    """fail[k]: the length of the longest proper prefix of s[:k + 1] that is also its suffix (KMP's table)."""
    fail, k = [0] * len(s), 0
    for i in range(1, len(s)):
        while k and s[i] != s[k]:
            k = fail[k - 1]
        k += s[i] == s[k]
        fail[i] = k
    return fail


def prefix_ids(vocab: Vocab, records: bool, start: str, where: str = "start text",
               label: str | None = None) -> list[int]:
    """The ids a model reads before it writes or scores what follows `start`: the start text, after <bos> for a
    records model, or after a newline for a continuous one given no text (so the first character is predicted).
    label: a labelled records model's label, read right after <bos>; a name the model lacks is refused."""
    head = [] if label is None else [label_token(vocab, label)]
    ids = vocab.encode_array(start, where=where).tolist()  # the vocabulary's unknown policy applies
    if records or not start:
        first = vocab.bos_id if records or "\n" not in vocab else vocab.stoi["\n"]
        ids = [first] + head + ids
    return ids


def label_token(vocab: Vocab, label: str) -> int:
    """The token of `label`, or a ConfigError naming the field and the labels the model knows."""
    try:
        return vocab.label_id(label)
    except CharloomError as e:
        raise ConfigError(str(e)) from None


def memory_cap() -> int:
    """The most memory one generation may take: half of this machine's (8 GB where it cannot be read)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (AttributeError, ValueError, OSError):
        return 8 * 10**9


def sample_options(options: SampleOptions | str | None = None, length: int | None = None,
                   **changes: Any) -> SampleOptions:
    """The SampleOptions a call means: `options` itself (with `changes` applied), or one built from a start
    text, a length and keyword fields. Either way SampleOptions checks them, as it does for the CLI and
    the server."""
    if length is not None:
        changes["length"] = length
    if isinstance(changes.get("stop"), str):  # one stop string, not one per character
        changes["stop"] = (changes["stop"],)
    if isinstance(options, SampleOptions):
        return options.replace(**changes) if changes else options
    if options is not None:
        if changes.get("start") is not None:  # two start texts: neither may be dropped in silence
            raise ConfigError(f"start: given twice, as {options!r} and as start={changes['start']!r}")
        changes["start"] = options
    return SampleOptions(**changes)
