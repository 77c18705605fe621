"""Choosing the next character, and a Generator that carries the recurrent state while it writes.

`choose` is a pure function of logits and options (greedy, temperature, top-k, top-p), and
`apply_repetition_penalty` one of logits and the characters already used. The Generator feeds the start
text through the model in one call, then steps one character at a time with the state carried (never
re-running the prefix). Its one-character step is a hand-written cell update on weights prepared once
(`Stepper`): at batch 1 the fused sequence kernels spend most of their time on set-up, and the first
layer's input product becomes a table lookup.

A generation's options are one `SampleOptions` (config.py), the object the CLI and the server build
too, so their defaults and checks are the same everywhere.

Seeds are per sample: sample i of a call with seed s is drawn from its own stream seeded with s + i, so
a sample is the same text whether it is made alone or in a batch.
"""

from __future__ import annotations

import functools
import os
import secrets
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch

from .config import SampleOptions
from .errors import ConfigError
from .model import CharRNN, State
from .vocab import Vocab

if TYPE_CHECKING:
    from .checkpoint import Checkpoint

UNIFORM_BLOCK = 256  # random numbers drawn per sample at a time
# what one sample holds while it is written, for `Generator.memory_needed` (measured on CPython 3.11, torch 2):
SAMPLE_FIXED_BYTES = 4096  # its torch.Generator (about 2.7 KB) and its Python bookkeeping
LOGIT_COPIES = 12  # (V,) float32 rows alive at once while a character is chosen: penalty, filters, sort, cdf
STATE_COPIES = 12  # (H,) float32 rows per layer: the state, the new state and the gates of a step
TEXT_BYTES = 16  # per character kept, besides the characters themselves: the pieces' list until they are joined
# a smaller temperature is greedy: dividing float32 logits by it could overflow to inf (and inf - inf is
# nan), and at it the choice is the argmax anyway, but for exact ties
GREEDY_BELOW = 1e-30


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """(B, V) logits with every already-used character made less likely (CTRL, Keskar et al. 2019):
    a positive logit is divided by `penalty`, a negative one multiplied. `seen` is a (B, V) bool mask."""
    if penalty == 1.0:
        return logits
    scaled = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, scaled, logits)


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """(B, V) logits with everything outside the top-k and the nucleus set to -inf."""
    if top_k and top_k < logits.shape[-1]:
        keep = torch.topk(logits, top_k, dim=-1).indices  # exactly k, even when logits tie
        logits = torch.full_like(logits, float("-inf")).scatter(-1, keep, logits.gather(-1, keep))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        before = probs.cumsum(-1) - probs  # mass of the strictly more likely candidates
        drop_sorted = before >= top_p  # keeps the smallest set whose mass reaches p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def choose(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           u: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, V) logits -> (B,) next ids. Temperature 0 (or below GREEDY_BELOW) is greedy (argmax).

    u: (B,) uniforms in [0, 1), one per row, used by inverse-CDF sampling (drawn from `generator` if absent).
    The options are checked by SampleOptions' rules, so a bad value reads as it does everywhere else.
    """
    try:
        opts = _checked(temperature, top_k, top_p)
    except TypeError:  # an unhashable value: checked afresh, to be refused with the field's message
        opts = SampleOptions(temperature=temperature, top_k=top_k, top_p=top_p)
    return _choose(logits, opts.temperature, opts.top_k, opts.top_p, u, generator)


@functools.lru_cache(maxsize=64, typed=True)  # typed: True, 1 and 1.0 are checked apart
def _checked(temperature: float, top_k: int, top_p: float) -> SampleOptions:
    """SampleOptions' checks of `choose`'s options, remembered: a caller's loop may choose every character
    with the same few, and building SampleOptions costs more than the choice."""
    return SampleOptions(temperature=temperature, top_k=top_k, top_p=top_p)


def _choose(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, u: torch.Tensor | None = None,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """`choose` without the option checks: the Generator checks once per call, not once per character."""
    if temperature < GREEDY_BELOW:
        return logits.argmax(-1)
    probs = filter_logits(logits.float() / temperature, top_k, top_p).softmax(-1)
    if u is None:
        u = torch.rand(probs.shape[0], generator=generator, device=probs.device)
    cdf = probs.cumsum(-1)  # (B, V)
    # the first id whose cumulative mass exceeds u * total: never an id of zero probability
    idx = torch.searchsorted(cdf, (u.to(cdf.device) * cdf[:, -1])[:, None], right=True)
    return idx.squeeze(-1).clamp_(max=probs.shape[-1] - 1)


# ---- the one-character step --------------------------------------------------------------------------
class Stepper:
    """One time step of a CharRNN for a batch of single ids, as plain matrix products.

    Equal to `model(ids[:, None], state)` (to float rounding) and faster at small batches: the first
    layer's input product and its biases are folded into a (V, G*H) table read by id. Each layer's
    update is its cell's own `step` (cells.py), so the Stepper never asks which cell it runs.
    """

    def __init__(self, model: CharRNN):
        cell, rnn, L = model.cell, model.rnn, model.cfg.num_layers
        self.step, self.L = cell.step, L

        def input_bias(i: int) -> torch.Tensor:  # (G*H,): b_ih, plus b_hh where the cell can fold it in
            b = getattr(rnn, f"bias_ih_l{i}")
            return b + getattr(rnn, f"bias_hh_l{i}") if cell.folds_hh_bias else b.clone()

        with torch.no_grad():
            w0 = rnn.weight_ih_l0  # (G*H, E)
            inputs = model.embed.weight @ w0.T if model.embed is not None else w0.T  # (V, G*H); one-hot: rows of W
            self.table = (inputs + input_bias(0)).contiguous()
            self.w_ih = [None] + [getattr(rnn, f"weight_ih_l{i}").T.contiguous() for i in range(1, L)]
            self.b_ih = [None] + [input_bias(i) for i in range(1, L)]
            self.w_hh = [getattr(rnn, f"weight_hh_l{i}").T.contiguous() for i in range(L)]
            self.b_hh = [getattr(rnn, f"bias_hh_l{i}").clone() for i in range(L)]
            self.w_out, self.b_out = model.head.weight.T.contiguous(), model.head.bias.clone()

    @torch.inference_mode()
    def __call__(self, ids: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """ids (B,), state tuple of (L, B, H) -> logits (B, V), new state."""
        layers = []
        x = None
        for i in range(self.L):
            gi = self.table[ids] if i == 0 else torch.addmm(self.b_ih[i], x, self.w_ih[i])  # (B, G*H)
            new = self.step(gi, tuple(s[i] for s in state), self.w_hh[i], self.b_hh[i])  # each (B, H)
            layers.append(new)
            x = new[0]
        logits = torch.addmm(self.b_out, x, self.w_out)  # (B, V)
        return logits, tuple(torch.stack(parts) for parts in zip(*layers))


# ---- the Generator -----------------------------------------------------------------------------------
class Generator:
    """Writes text with a model: start text in one call, then one character at a time, state carried."""

    def __init__(self, model: CharRNN, vocab: Vocab, device: torch.device | str | None = None, records: bool = False):
        """records: the model was trained on records, so every sample starts from <bos> (then the start text)."""
        self.model = model
        self.vocab = vocab
        self.records = records
        self.device = torch.device(device) if device else next(model.parameters()).device
        # ids a sample may never produce: <pad>, <bos>, <unk>, and <eos> for a model that never saw a record end
        banned = [vocab.pad_id, vocab.bos_id, vocab.unk_id] + ([] if records else [vocab.eos_id])
        self._banned = torch.tensor(banned, device=self.device)
        self._stepper: Stepper | None = None
        self._version: tuple | None = None

    def stepper(self) -> Stepper:
        # rebuilt when the weights change (a Generator used during training sees new weights each time)
        version = tuple(p._version for p in self.model.parameters())
        if self._stepper is None or version != self._version:
            self._stepper, self._version = Stepper(self.model), version
        return self._stepper

    def unknown_characters(self, start: str) -> list[str]:
        """Characters of `start` the model has never seen (read as <unk>, or refused, by the vocabulary's policy)."""
        text = self.vocab.prepare(start)
        return sorted({ch for ch in text if ch not in self.vocab})

    def _prefix(self, start: str) -> list[int]:
        v = self.vocab
        ids = v.encode_array(start, where="start text").tolist()  # the vocabulary's unknown policy applies
        if self.records or not start:
            # a records model reads <bos> first; a continuous one starts from a newline when given no text
            first = v.bos_id if self.records or "\n" not in v else v.stoi["\n"]
            ids = [first] + ids
        return ids

    @classmethod
    def from_checkpoint(cls, ck: Checkpoint, device: torch.device | str | None = None) -> Generator:
        """The Generator for a loaded model file: its model, vocabulary and records flag. device: where to
        run (the checkpoint's model is moved there); default: where the model already is."""
        model = ck.model.to(device) if device is not None else ck.model
        return cls(model, ck.vocab, device=device, records=ck.records)

    def generate(self, options: SampleOptions | str | None = None, length: int | None = None, *,
                 on_text: Callable[[int, str], None] | None = None, **changes: Any) -> list[str]:
        """`options.n` continuations of `options.start` (without it). Each ends at <eos>, after `length`
        characters, or just before the first stop string it writes (where two end at the same character, before
        the longer). `stop` is one string or a list of them. `on_text(i, piece)` sees each sample's text as it is
        made.

        The options are a SampleOptions, or its fields as arguments: `generate("Ma", 20, n=5, seed=1)`
        (see `sample_options`)."""
        opts = sample_options(options, length, **changes)
        out: list[list[str]] = [[] for _ in range(opts.n)]  # joined once at the end: `+=` on each would be quadratic
        for i, piece in self.stream(opts):
            out[i].append(piece)
            if on_text is not None:
                on_text(i, piece)
        return ["".join(pieces) for pieces in out]

    def stream(self, options: SampleOptions | str | None = None, length: int | None = None,
               **changes: Any) -> Iterator[tuple[int, str]]:
        """Yield (sample index, text) pieces as they are made; joined per sample they are `generate`'s texts.
        The options and the start text are checked here, before the first piece is asked for."""
        opts = sample_options(options, length, **changes)
        self.check_memory(opts)
        unknown = self.unknown_characters(opts.start)
        if unknown and self.vocab.unknown == "unk":
            warnings.warn(f"start text: {''.join(unknown)!r} not in the model's vocabulary, read as <unk>",
                          stacklevel=2)
        return self._pieces(self._prefix(opts.start), opts)

    def memory_needed(self, n: int, length: int) -> int:
        """Bytes that n samples of `length` characters hold at the peak of a generation, roughly: each sample's
        random stream and uniforms, a few copies of its logits and recurrent state, and its text."""
        cfg, vocab_size = self.model.cfg, len(self.vocab)
        width = 1 if all(ord(c) < 256 for c in self.vocab.chars) else 4  # bytes per character of a str
        per_sample = (SAMPLE_FIXED_BYTES + UNIFORM_BLOCK * 4 * 2 + LOGIT_COPIES * vocab_size * 4
                      + STATE_COPIES * cfg.num_layers * cfg.hidden_size * 4)
        return n * (per_sample + length * (TEXT_BYTES + 2 * width))

    def check_memory(self, opts: SampleOptions) -> None:
        """Refuse, before any work, a generation that would not fit in memory (half of this machine's)."""
        need, cap = self.memory_needed(opts.n, opts.length), memory_cap()
        if need > cap:
            raise ConfigError(f"n (--num-samples) and length (--length): {opts.n:,} samples of {opts.length:,} "
                              f"characters need about {need / 1e9:,.1f} GB, more than the {cap / 1e9:,.1f} GB allowed "
                              f"(half of this machine's memory); ask for fewer or shorter samples")

    @torch.inference_mode()
    def _pieces(self, prefix: list[int], opts: SampleOptions) -> Iterator[tuple[int, str]]:
        was_training = self.model.training
        self.model.eval()
        try:
            yield from self._run(prefix, opts)
        finally:
            self.model.train(was_training)

    def _run(self, prefix: list[int], opts: SampleOptions) -> Iterator[tuple[int, str]]:
        length, n, temperature, top_k, top_p = opts.length, opts.n, opts.temperature, opts.top_k, opts.top_p
        penalty, seed = opts.repetition_penalty, opts.seed
        v, dev = self.vocab, self.device
        if length == 0:
            return
        logits, state = self.model(torch.tensor([prefix], device=dev))  # the start text in one call
        last = logits[:, -1].expand(n, -1)  # (n, V): every sample shares the start
        state = tuple(s.expand(-1, n, -1).contiguous() for s in state)  # (L, n, H)
        step = self.stepper()
        base = secrets.randbits(62) if seed is None else int(seed)
        gens = [torch.Generator().manual_seed(base + i) for i in range(n)]
        seen = torch.zeros(n, len(v), dtype=torch.bool, device=dev)
        if penalty != 1.0:
            seen[:, torch.tensor(prefix, device=dev)] = True
        done = [False] * n
        itos, n_special, eos = v.itos, len(v.specials), v.eos_id
        stops = _Stops(opts.stop, n) if any(opts.stop) else None
        u = None
        for t in range(length):
            if t % UNIFORM_BLOCK == 0 and temperature > 0:
                u = torch.stack([torch.rand(UNIFORM_BLOCK, generator=g) for g in gens]).to(dev)  # (n, block)
            scores = last.index_fill(-1, self._banned, float("-inf"))
            scores = apply_repetition_penalty(scores, seen, penalty)
            nxt = _choose(scores, temperature, top_k, top_p, u[:, t % UNIFORM_BLOCK] if u is not None else None)
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
                seen.scatter_(1, nxt[:, None], True)
            last, state = step(nxt, state)
        for i, rest in enumerate(stops.held if stops else ()):  # what could have begun a stop string, but did not
            if rest:
                yield i, rest


class _Stops:
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


def memory_cap() -> int:
    """The most memory one generation may take: half of this machine's (8 GB where it cannot be read)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (AttributeError, ValueError, OSError):
        return 8 * 10**9


def sample_texts(model: CharRNN, vocab: Vocab, start: str, temperatures: Sequence[float], length: int, n: int = 1,
                 seed: int = 0, records: bool = False) -> list[tuple[float, list[str]]]:
    """(temperature, n texts) at each temperature: what training prints as it learns."""
    g = Generator(model, vocab, records=records)
    return [(t, g.generate(start, length, n=n, temperature=t, seed=seed)) for t in temperatures]


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
        changes["start"] = options
    return SampleOptions(**changes)


__all__ = ["Generator", "SampleOptions", "State", "Stepper", "apply_repetition_penalty", "choose", "filter_logits",
           "sample_options", "sample_texts"]
