"""Fine-tuning: a new run that starts from a trained model's weights, vocabulary and model config.

Ids never shift: the new text is encoded with the parent's vocabulary, so every character keeps the id its
weights were trained for, and characters the parent never saw follow its unknown-character policy (read
as <unk>, or refused). With `extend_vocab` they are added instead, after the parent's own ids: the new
input and output rows start as a fresh model's would, and every old row starts as the parent's.

The new model file records its parent: the file's path, its sha256 and the step it was saved at.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from . import checkpoint
from .config import CorpusConfig, ModelConfig
from .corpus import Corpus
from .corpus import load as load_corpus
from .errors import CharloomError
from .model import CharRNN
from .vocab import Vocab


@dataclass
class Parent:
    """The model a run starts from."""

    ck: checkpoint.Checkpoint
    path: Path  # the model file itself
    sha256: str

    @property
    def lineage(self) -> dict[str, Any]:
        """What the new model file records of its parent."""
        return {"path": str(self.path.resolve()), "sha256": self.sha256, "step": self.ck.info.get("step")}


def load_parent(path: str) -> Parent:
    """The model named by --init-from, loaded and checked as any model file is."""
    try:
        file = checkpoint.model_path(path)
        ck = checkpoint.load(file)
    except CharloomError as e:
        raise CharloomError(f"init_from (--init-from): {e}") from None
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return Parent(ck, file, digest.hexdigest())


def model_config(parent: Parent, asked: ModelConfig) -> ModelConfig:
    """The parent's model config; a model option asked for (given by name, even at its default, or away from its
    default) with another value than the parent's is a mistake said at once, not dropped."""
    mine = parent.ck.config
    for f in fields(ModelConfig):
        value = getattr(asked, f.name)
        if f.name != "vocab_size" and asked.is_set(f.name) and not _same(mine, f.name, value):
            flag = (f.metadata.get("flag") or f.name).replace("_", "-")
            raise CharloomError(f"--{flag} {value}: a fine-tuned model keeps its parent's model config "
                                f"({f.name} {getattr(mine, f.name)!r} in {parent.path}); drop the flag")
    return mine


def _same(mine: ModelConfig, name: str, value: Any) -> bool:
    """Whether a model option given as `value` is `mine`'s; a head's hidden layer is compared by its width (-1,
    as wide as the recurrent layer, is the same layer as that width given)."""
    if name == "head_hidden" and type(value) is int and value >= -1:
        return mine.replace(head_hidden=value).head_width == mine.head_width
    return value == getattr(mine, name)


READING = ("lower", "normalize", "unknown", "min_count")  # the reading options a parent's vocabulary settles


def read_corpus(parent: Parent, cfg: CorpusConfig, extend: bool) -> Corpus:
    """The new text encoded with the parent's vocabulary (extended by its unknown characters if asked), read
    as the parent's vocabulary reads text (normalised and lower-cased as it was)."""
    vocab = parent.ck.vocab
    check_reading(parent, {k: getattr(cfg, k) for k in READING if cfg.is_set(k)}, extend)
    cfg = cfg.replace(lower=vocab.lower, normalize=vocab.normalize)
    if extend:
        vocab = vocab.extended(load_corpus(cfg).vocab.chars)
    return load_corpus(cfg, vocab=vocab)


def check_reading(parent: Parent, given: dict[str, Any], extend: bool) -> None:
    """Each reading option in `given` that the parent's vocabulary settles (its case, normalisation and
    unknown-character policy; --min-count, which built it, unless --extend-vocab adds to it) must be the parent's
    own: another is refused, not dropped."""
    vocab, recorded = parent.ck.vocab, parent.ck.info.get("corpus_config")
    built = recorded.get("min_count") if isinstance(recorded, dict) else None
    theirs = {"lower": vocab.lower, "normalize": vocab.normalize, "unknown": vocab.unknown}
    if not extend:
        theirs["min_count"] = built if isinstance(built, int) else CorpusConfig.min_count
    for name, value in theirs.items():
        if name in given and given[name] != value:
            more = ", or add --extend-vocab to count the new text's characters" if name == "min_count" else ""
            raise CharloomError(f"--{name.replace('_', '-')}: a fine-tuned model reads text as its parent's vocabulary "
                                f"does ({name} {value!r} in {parent.path}); drop the flag{more}")


def outside(parent: Parent, corpus: Corpus) -> str | None:
    """The line that says what of the new text the parent's vocabulary does not hold (None: nothing)."""
    added = len(corpus.vocab) - len(parent.ck.vocab)
    unknown = corpus.stats.get("unknown_characters", 0)
    if added:
        new = "".join(corpus.vocab.chars[-added:])
        return (f"fine-tuning {parent.path}: {added} new character{'s' if added > 1 else ''} added to its vocabulary "
                f"as new ids: {new!r}")
    if unknown:
        return (f"fine-tuning {parent.path}: {unknown:,} character{'s' if unknown > 1 else ''} of the new text "
                f"{'are' if unknown > 1 else 'is'} outside its vocabulary, read as <unk> (--extend-vocab adds them "
                f"as new ids instead)")
    return None


@torch.no_grad()
def start_from(net: CharRNN, parent: Parent) -> None:
    """Copy the parent's weights into `net`; where `net` reads or predicts more ids (an extended vocabulary),
    the parent's rows go first and the others keep `net`'s fresh initialisation."""
    old = len(parent.ck.vocab)
    theirs = parent.ck.model.state_dict()
    for name, mine in net.state_dict().items():
        src = theirs[name].to(mine.dtype)
        if src.shape == mine.shape:
            mine.copy_(src)
        elif name in ("embed.weight", "head.weight", "head.bias"):  # (V, ...): one row per id
            mine[:old].copy_(src)
        elif name == "rnn.weight_ih_l0":  # one-hot input: one column per id
            mine[:, :old].copy_(src)
        elif name.startswith("grams."):  # one-hot input's tables: one column per id
            mine[:, :old].copy_(src)
            mine[:, old:].zero_()  # so that the parent's text reaches the network as it did
        else:
            raise CharloomError(f"init_from (--init-from): {name} is {tuple(src.shape)} in the parent but "
                                f"{tuple(mine.shape)} here")


def same_ids(parent: Vocab, child: Vocab) -> bool:
    """Every id of the parent means the same token in the child."""
    return tuple(child.itos[:len(parent.itos)]) == tuple(parent.itos)
