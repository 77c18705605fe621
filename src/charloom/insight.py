"""Text as the model sees it: each character's probability, the likeliest alternatives, the hidden units.

    r = read(gen, "To be, or not to be")        # gen: a Generator or an OnnxGenerator
    r.probs                                     # (N,) the probability given to each character before it came
    r.alternatives(3)                           # [(char, p), ...]: the 5 likeliest at position 3
    shade(r)                                    # the text with ANSI colours, surprising characters in red
    a = activations(gen, "if (x) {\\n  y;\\n}")
    a.values["c"][0]                            # (N, H): layer 0's LSTM cell after each character
    a.varying("c", 0)                           # the units whose value moves most over the text

Everything is NumPy and reads the model through the generator's backend, so it runs on the PyTorch model
and on an exported ONNX file alike. The probabilities are the model's own (softmax of its logits),
before any temperature or filter.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import check_text
from .decoding import Writer, prefix_ids, softmax
from .errors import ConfigError
from .vocab import Vocab

ALTERNATIVES = 5  # the likeliest characters reported at each position
READ_ROWS = 2048  # positions whose probabilities are computed at once
# probability -> ANSI 256-colour foreground, from the least expected up: red, orange, yellow, pale green;
# a character the model was sure of (p >= the last bound) keeps the terminal's own colour
SHADES = ((0.02, 196), (0.1, 208), (0.3, 220), (0.6, 150))
RESET = "\033[0m"


@dataclass
class Reading:
    """A text read by a model: for each character, what the model expected just before it."""

    text: str  # the text as the vocabulary reads it (normalised, lower-cased as configured)
    probs: np.ndarray  # (N,) probability of each character
    top_ids: np.ndarray  # (N, k) the k likeliest ids at each position, most likely first
    top_probs: np.ndarray  # (N, k) their probabilities
    vocab: Vocab

    @property
    def bpc(self) -> float:
        """Bits per character over the text."""
        return float(-np.log2(np.maximum(self.probs, 1e-45)).mean()) if len(self.probs) else float("nan")

    def alternatives(self, i: int) -> list[tuple[str, float]]:
        """[(character, probability)] of the likeliest characters at position i (special tokens by name)."""
        return [(self.vocab.itos[j], float(p)) for j, p in zip(self.top_ids[i].tolist(), self.top_probs[i].tolist())]

    def to_json(self, digits: int = 5) -> list[dict[str, Any]]:
        """One object per character: {"char", "p", "top": [[char, p], ...]}, for the HTTP API."""
        return [{"char": ch, "p": round(float(p), digits),
                 "top": [[c, round(q, digits)] for c, q in self.alternatives(i)]}
                for i, (ch, p) in enumerate(zip(self.text, self.probs.tolist()))]


def read(gen: Writer, text: str, context: str = "", k: int = ALTERNATIVES, label: str | None = None,
         ngram: bool = True) -> Reading:
    """What the model behind `gen` expected at each character of `text`, after reading `context` (a records
    model reads <bos> first, then `label`'s token when one is given; with no context a continuous model starts
    after a newline, as sampling does). ngram=False: the network alone, for a model with an n-gram."""
    v = gen.vocab
    check_text("text", text)  # a lone surrogate is no character: no reply or terminal could show it
    check_text("context", context)
    before = prefix_ids(v, gen.records, context, where="context", label=label)
    return read_ids(gen, before, v.encode_array(text, where="text").tolist(), v.prepare(text), k, ngram)


def read_ids(gen: Writer, before: list[int], ids: list[int], shown: str, k: int = ALTERNATIVES,
             ngram: bool = True) -> Reading:
    """`read` of ids already encoded, after the ids `before` (at least one): `shown` is their text."""
    v = gen.vocab
    k = _count("k", k, "the alternatives shown per character")
    if not ids:
        empty = np.zeros((0, k))
        return Reading(shown, np.zeros(0, np.float32), empty.astype(np.int64), empty.astype(np.float32), v)
    logits = gen.read_logits(before + ids, ngram)[len(before) - 1:-1]  # (N, V): row j predicts ids[j]
    k = min(k, logits.shape[-1])
    probs, top_ids, top_probs = [], [], []
    for at in range(0, len(ids), READ_ROWS):  # in pieces: (N, V) in float64 at once can be gigabytes
        p = softmax(logits[at:at + READ_ROWS].astype(np.float64))  # (n, V)
        rows = np.arange(len(p))
        best = np.argpartition(-p, k - 1, axis=-1)[:, :k]  # the k likeliest, in no order
        best = np.take_along_axis(best, np.argsort(-p[rows[:, None], best], axis=-1, kind="stable"), -1)
        probs.append(p[rows, ids[at:at + READ_ROWS]])
        top_ids.append(best)
        top_probs.append(p[rows[:, None], best])
    return Reading(shown, np.concatenate(probs).astype(np.float32), np.concatenate(top_ids),
                   np.concatenate(top_probs).astype(np.float32), v)


@dataclass
class Activations:
    """The recurrent state after each character of a text: values[name][layer] is (N, H)."""

    text: str
    values: dict[str, np.ndarray]  # name ("h", "c") -> (num_layers, N, H)

    def varying(self, name: str = "h", layer: int = 0, k: int = 16) -> list[tuple[int, float]]:
        """[(unit, standard deviation over the text)] of the k units that vary most, the most first."""
        if name not in self.values:
            raise ConfigError(f"name: {name!r} is not a state of this model ({', '.join(map(repr, self.values))})")
        layers = len(self.values[name])
        if not isinstance(layer, numbers.Integral) or isinstance(layer, bool) or not -layers <= layer < layers:
            raise ConfigError(f"layer: {layer!r} is not a layer of this model (0 to {layers - 1})")
        k = _count("k", k, "the units shown")
        values = self.values[name][layer]  # (N, H)
        if not len(values):  # an empty text: nothing varies
            return []
        spread = values.std(0)  # (H,)
        order = np.argsort(-spread, kind="stable")[:k]
        return [(int(u), float(spread[u])) for u in order]


def activations(gen: Writer, text: str, context: str = "") -> Activations:
    """Step the model through `text` one character at a time after `context`, keeping every layer's state."""
    v = gen.vocab
    check_text("text", text)
    check_text("context", context)
    before = prefix_ids(v, gen.records, context, where="context")
    return Activations(v.prepare(text), gen.trace(before, v.encode_array(text, where="text").tolist()))


def _count(name: str, value: Any, what: str) -> int:
    """A count a caller gives (NumPy's integers too): a whole number of at least 1, else one line naming it."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name}: {what} must be a whole number of at least 1, got {value!r}")
    return int(value)


def colour(p: float) -> int | None:
    """The ANSI 256-colour code for a character given probability p (None: the terminal's own colour)."""
    for bound, code in SHADES:
        if p < bound:
            return code
    return None


def shade(reading: Reading) -> str:
    """The text with each character coloured by its probability (ANSI escapes; newlines stay uncoloured)."""
    out = []
    for ch, p in zip(reading.text, reading.probs.tolist()):
        code = colour(p)
        out.append(ch if code is None or ch in "\r\n" else f"\033[38;5;{code}m{ch}{RESET}")
    return "".join(out)


def legend() -> str:
    """One line explaining the colours, in them."""
    parts, low = [], 0.0
    for bound, code in SHADES:
        parts.append(f"\033[38;5;{code}m{low:g}-{bound:g}{RESET}")
        low = bound
    return "probability: " + " ".join(parts) + f" {low:g}-1 (plain)"
