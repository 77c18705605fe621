"""Vocab: the characters a model knows, plus its special tokens, and the maps between text and ids.

Ids are fixed by construction, so two runs on the same text agree: the special tokens come first
(`<pad>`=0, `<bos>`=1, `<eos>`=2, `<unk>`=3), then one `<label:NAME>` token per label of a labelled records
corpus (none for most vocabularies), then the corpus characters sorted by code point.
A character is one Unicode code point; nothing is merged, so `\\r\\n`, combining marks and emoji
round-trip exactly (unless normalisation or lower-casing is switched on).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .config import MAX_LABEL_LENGTH, MAX_LABELS
from .errors import CharloomError

if TYPE_CHECKING:  # torch is needed only to hand out tensors: the ONNX backend runs without it
    import torch

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
FORMAT = "charloom-vocab"
VERSION = 1
NORMALIZATIONS = ("none", "NFC", "NFKC")
POLICIES = ("unk", "error")
# a label as a JSON number of integer value was named before it was named by its value ("2.0", now "2")
INTEGRAL_FLOAT = re.compile(r"-?[0-9]+\.0")
UNPRINTABLE = ("Cc", "Cs", "Zl", "Zp")  # what a label may not hold: controls (escapes, tabs), surrogates, line breaks
FIELDS = frozenset(("format", "version", "specials", "labels", "chars", "unknown", "normalize", "lower"))  # to_dict's


def label_token(name: str) -> str:
    """The token that stands for a label in `itos`: `<label:Sports>`."""
    return f"<label:{name}>"


def check_labelled(labels: Any, records: bool, where: str) -> None:
    """Labels are given after each record's <bos>: training makes no labelled model of continuous text, so a file
    that says it is one is damaged. where: the file and what of it is damaged."""
    if labels and not records:
        raise CharloomError(f"{where} (its vocabulary has labels, which only records take, and records is false)")


def check_labels(labels: Any, where: str) -> tuple[str, ...]:
    """Label names as a tuple, checked: a list of distinct, non-empty strings of bounded length and count."""
    if not isinstance(labels, (list, tuple)) or not all(isinstance(n, str) for n in labels):
        raise CharloomError(f"{where}: field 'labels' must be a list of names")
    if len(labels) > MAX_LABELS:
        raise CharloomError(f"{where}: {len(labels)} labels, more than {MAX_LABELS}")
    for name in labels:
        if not name or len(name) > MAX_LABEL_LENGTH:
            raise CharloomError(f"{where}: label {name[:20]!r} must be 1 to {MAX_LABEL_LENGTH} characters")
        if any(unicodedata.category(ch) in UNPRINTABLE for ch in name):  # a label is printed as it is, in a terminal
            raise CharloomError(f"{where}: label {name[:20]!r} holds a control character, a line break or a lone "
                                f"surrogate")
    if len(set(labels)) != len(labels):
        twice = next(n for n in labels if labels.count(n) > 1)
        raise CharloomError(f"{where}: label {twice!r} appears twice")
    return tuple(labels)


def codepoints(text: str) -> np.ndarray:
    """The code points of `text` as a uint32 array, without a Python loop per character."""
    # surrogatepass: a lone surrogate (legal in a Python str) is still one code point
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def from_codepoints(cps: np.ndarray) -> str:
    return np.ascontiguousarray(cps, dtype=np.uint32).tobytes().decode("utf-32-le", "surrogatepass")


def prepare_text(text: str, normalize: str = "none", lower: bool = False) -> str:
    """Text as a vocabulary with these options reads it: Unicode-normalised, then lower-cased."""
    if normalize != "none":
        text = unicodedata.normalize(normalize, text)
    return text.lower() if lower else text


class Vocab:
    """Characters + special tokens. `encode`/`decode` map between text and ids.

    unknown: what `encode` does with a character the vocabulary has never seen:
        "unk"   -> the `<unk>` id;
        "error" -> CharloomError naming the character and its position.
    normalize, lower: applied to every text before it is encoded (and to the corpus the vocabulary
        was built from), so a start text at sampling time is read the way the corpus was.
    """

    def __init__(self, chars: Iterable[str], *, unknown: str = "unk", normalize: str = "none", lower: bool = False,
                 ordered: bool = False, labels: Sequence[str] = ()):
        """ordered: keep the characters in the order given (their ids follow it), as a saved vocabulary and an
        extended one must; otherwise they are sorted by code point. labels: the label names of a labelled records
        corpus, in order: each gets a token after the special ones."""
        chars = list(dict.fromkeys(chars)) if ordered else sorted(set(chars))
        for c in chars:
            if not isinstance(c, str) or len(c) != 1:
                raise CharloomError(f"vocabulary: {c!r} is not a single character")
        if unknown not in POLICIES:
            raise CharloomError(f"vocabulary: unknown-character policy {unknown!r} is not one of {', '.join(POLICIES)}")
        if normalize not in NORMALIZATIONS:
            raise CharloomError(f"vocabulary: normalisation {normalize!r} is not one of {', '.join(NORMALIZATIONS)}")
        self.chars: tuple[str, ...] = tuple(chars)
        self.specials: tuple[str, ...] = SPECIALS
        self.labels: tuple[str, ...] = check_labels(list(labels), "vocabulary")
        self.unknown = unknown
        self.normalize = normalize
        self.lower = bool(lower)
        self.first_char = len(self.specials) + len(self.labels)  # the id of the first character
        self.itos: tuple[str, ...] = self.specials + tuple(map(label_token, self.labels)) + self.chars
        self.stoi: dict[str, int] = {s: i for i, s in enumerate(self.itos)}
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = (self.stoi[s] for s in SPECIALS)
        self.label_span = range(len(self.specials), self.first_char)  # the label tokens' ids
        self.label_ids: tuple[int, ...] = tuple(self.label_span)
        # dense table code point -> id up to the largest known code point (at most 1.1 M entries, 4.4 MB);
        # anything past it or not in the vocabulary reads <unk>
        cps = codepoints("".join(self.chars))
        self._table = np.full(int(cps.max()) + 1 if len(cps) else 1, self.unk_id, dtype=np.int32)
        self._table[cps] = np.arange(self.first_char, len(self.itos), dtype=np.int32)

    # ---- building --------------------------------------------------------------------------------
    @classmethod
    def from_counts(cls, counts: dict[str, int], *, min_count: int = 1, **options: Any) -> Vocab:
        """A vocabulary of the characters seen at least `min_count` times."""
        return cls((c for c, n in counts.items() if n >= min_count), **options)

    @classmethod
    def build(cls, texts: Iterable[str] | str, *, min_count: int = 1, **options: Any) -> Vocab:
        """A vocabulary from raw texts (normalised and lower-cased as the options say)."""
        if isinstance(texts, str):
            texts = [texts]
        probe = cls((), **options)
        counter = CharCounter()
        for t in texts:
            counter.update(probe.prepare(t))
        return cls.from_counts(counter.counts(), min_count=min_count, **options)

    # ---- the maps ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, char: str) -> bool:
        return self.stoi.get(char, -1) >= self.first_char

    @property
    def earlier_labels(self) -> dict[str, str]:
        """{name as a corpus gives it now: name} for the labels a model holds as labels were read before: with the
        spaces around them kept, or a JSON number of integer value written "2.0" (read now as "2")."""
        out = {}
        for name in self.labels:
            now = name.strip()
            now = str(int(float(now))) if INTEGRAL_FLOAT.fullmatch(now) else now  # "-0.0" is "0" now
            if now != name:
                out[now] = name
        return out

    def label_id(self, name: str, where: str = "label") -> int:
        """The token id of label `name`, its spaces around it aside (as labels read from a corpus lose them; in a
        model from before they did, the label that has them); a name the vocabulary lacks is a one-line error listing
        the known ones."""
        if not self.labels:
            raise CharloomError(f"{where}: this model was not trained on labelled records, so it takes no label")
        if name not in self.labels:  # as a label read from a corpus, without the spaces around it
            name = name.strip() if name.strip() in self.labels else self.earlier_labels.get(name.strip(), name)
        if name not in self.labels:
            raise CharloomError(f"{where}: {name!r} is not one of {', '.join(self.labels)}")
        return self.first_char - len(self.labels) + self.labels.index(name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        labels = f" + {len(self.labels)} labels" if self.labels else ""
        return f"Vocab({len(self.chars)} characters + {len(self.specials)} specials{labels}, unknown={self.unknown!r})"

    def prepare(self, text: str) -> str:
        """The text as the vocabulary sees it: normalised, then lower-cased, as configured."""
        return prepare_text(text, self.normalize, self.lower)

    def _lookup(self, text: str) -> np.ndarray:
        """(N,) int32 ids of already prepared text; unknown characters read <unk>."""
        cps = codepoints(text)
        top = len(self._table) - 1
        if len(cps) and int(cps.max()) > top:
            return np.where(cps <= top, self._table[np.minimum(cps, top)], np.int32(self.unk_id))
        return self._table[cps]

    def encode_array(self, text: str, *, where: str = "text", offset: int = 0, prepared: bool = False,
                     dtype: np.dtype | type = np.int64) -> np.ndarray:
        """Ids of `text` as an array. `where`/`offset` name the source in an unknown-character error."""
        if not prepared:
            text = self.prepare(text)
        ids = self._lookup(text)
        if self.unknown == "error":
            bad = np.flatnonzero(ids == self.unk_id)
            if len(bad):
                i = int(bad[0])
                ch = text[i]
                raise CharloomError(
                    f"{where}: character {ch!r} (U+{ord(ch):04X}) at position {offset + i} is not in the vocabulary")
        return ids.astype(dtype, copy=False)

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def encode_tensor(self, text: str) -> torch.Tensor:
        import torch

        return torch.from_numpy(self.encode_array(text))

    def unknown_count(self, text: str) -> int:
        """How many characters of `text` are outside the vocabulary."""
        return int(np.count_nonzero(self._lookup(self.prepare(text)) == self.unk_id))

    def decode(self, ids: Sequence[int] | np.ndarray | torch.Tensor, *, specials: bool = False) -> str:
        """Text of `ids`. Special and label tokens are dropped, or shown as `<bos>`, `<label:Sports>` etc. when
        `specials` is true."""
        if hasattr(ids, "tolist"):  # a numpy array or a torch tensor
            ids = ids.tolist()
        n_special = self.first_char
        out = []
        for i in ids:
            if not 0 <= i < len(self.itos):
                raise CharloomError(f"id {i} is outside the vocabulary (size {len(self.itos)})")
            if i >= n_special or specials:
                out.append(self.itos[i])
        return "".join(out)

    # ---- persistence ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The vocabulary as JSON-ready data; "labels" only when there are some, so an unlabelled vocabulary
        reads as it always has."""
        labels = {"labels": list(self.labels)} if self.labels else {}
        return {"format": FORMAT, "version": VERSION, "specials": list(self.specials), **labels,
                "chars": "".join(self.chars), "unknown": self.unknown, "normalize": self.normalize, "lower": self.lower}

    @classmethod
    def check_dict(cls, data: Any, where: str = "vocabulary", *, strict_unicode: bool = False) -> int:
        """The number of ids the vocabulary `data` (a to_dict) describes, checked as from_dict checks it but
        without building it, so a model file can be refused on its vocabulary before anything large is made.
        strict_unicode: refuse a lone surrogate (legal in a Python str, but it cannot be printed or encoded
        as UTF-8); model files ask for this, a vocabulary built in Python may hold one."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise CharloomError(f"{where}: not a charloom vocabulary")
        if data.get("version") != VERSION:
            raise CharloomError(f"{where}: vocabulary version {data.get('version')!r} is not supported (expected {VERSION})")
        strange = sorted(set(data) - FIELDS)
        if strange:
            raise CharloomError(f"{where}: unknown field {strange[0]!r}")
        if data.get("specials") != list(SPECIALS):
            raise CharloomError(f"{where}: special tokens {data.get('specials')!r} differ from {list(SPECIALS)}")
        chars = data.get("chars")
        if not isinstance(chars, str):
            raise CharloomError(f"{where}: field 'chars' must be a string")
        cps = codepoints(chars)
        if len(np.unique(cps)) != len(cps):
            raise CharloomError(f"{where}: field 'chars' repeats a character")
        lone = np.flatnonzero((cps >= 0xD800) & (cps <= 0xDFFF)) if strict_unicode else ()
        if len(lone):
            raise CharloomError(f"{where}: field 'chars' holds U+{int(cps[lone[0]]):04X}, a lone surrogate, "
                                f"not a character")
        labels = check_labels(data.get("labels", []), where)
        if not isinstance(data.get("lower", False), bool):
            raise CharloomError(f"{where}: field 'lower' must be true or false")
        for name, allowed, default in (("unknown", POLICIES, "unk"), ("normalize", NORMALIZATIONS, "none")):
            if data.get(name, default) not in allowed:
                raise CharloomError(f"{where}: field {name!r} is {data.get(name)!r}, not one of {', '.join(allowed)}")
        return len(SPECIALS) + len(labels) + len(cps)

    @classmethod
    def from_dict(cls, data: Any, where: str = "vocabulary", *, strict_unicode: bool = False) -> Vocab:
        cls.check_dict(data, where, strict_unicode=strict_unicode)
        return cls(list(data["chars"]), unknown=data.get("unknown", "unk"), normalize=data.get("normalize", "none"),
                   lower=data.get("lower", False), ordered=True, labels=data.get("labels", ()))

    def extended(self, chars: Iterable[str]) -> Vocab:
        """This vocabulary with the characters of `chars` it lacks added after its own, in code-point order:
        every id it had keeps its meaning, so a model's rows for them stay valid."""
        new = sorted(set(chars) - set(self.chars) - set(self.specials))
        return Vocab([*self.chars, *new], unknown=self.unknown, normalize=self.normalize, lower=self.lower,
                     ordered=True, labels=self.labels)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=True)

    @classmethod
    def from_json(cls, text: str, where: str = "vocabulary") -> Vocab:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise CharloomError(f"{where}: not valid JSON ({e.msg} at line {e.lineno})") from None
        except RecursionError:
            raise CharloomError(f"{where}: not a charloom vocabulary (JSON nested too deeply)") from None
        except ValueError as e:  # an integer of thousands of digits
            raise CharloomError(f"{where}: not a charloom vocabulary ({e})") from None
        return cls.from_dict(data, where)


class CharCounter:
    """Counts code points over many chunks of text in O(n) numpy work (no Python loop per character)."""

    _BMP = 0x10000

    def __init__(self) -> None:
        self._bmp = np.zeros(self._BMP, dtype=np.int64)
        self._astral: dict[int, int] = {}

    def update(self, text: str) -> None:
        cps = codepoints(text)
        if len(cps) == 0:
            return
        if int(cps.max()) < self._BMP:  # the common case: no copy
            self._bmp += np.bincount(cps, minlength=self._BMP)
            return
        small = cps[cps < self._BMP]
        self._bmp += np.bincount(small, minlength=self._BMP)
        if len(small) != len(cps):
            big, n = np.unique(cps[cps >= self._BMP], return_counts=True)
            for c, k in zip(big.tolist(), n.tolist()):
                self._astral[c] = self._astral.get(c, 0) + k

    def counts(self) -> dict[str, int]:
        nz = np.flatnonzero(self._bmp)
        out = {from_codepoints(np.array([c])): int(self._bmp[c]) for c in nz.tolist()}
        out.update({from_codepoints(np.array([c])): n for c, n in self._astral.items()})
        return out

    def total(self) -> int:
        return int(self._bmp.sum()) + sum(self._astral.values())
