"""Is a sample new, or does the model recite its training data?

Records: a generated record is copied when it equals a training record exactly.
Continuous text: a sample is copied when it, or any of its lines of at least `min_chars` characters,
appears verbatim in the training corpus.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .config import CorpusConfig
from .corpus import Corpus
from .corpus import load as load_corpus
from .errors import CharloomError


@dataclass
class Mark:
    new: bool
    copied: list[str] = field(default_factory=list)  # the copied record or lines


class Novelty:
    def __init__(self, corpus: Corpus, min_chars: int = 20):
        self.min_chars = min_chars
        if corpus.is_records:
            self.records: set[str] | None = {corpus.record(i) for i in range(corpus.num_records)}
            self.text = ""
        else:
            self.records = None
            self.text = corpus.text()

    @classmethod
    def for_checkpoint(cls, ck, source: str | None = None, min_chars: int = 20) -> Novelty:
        """The corpus a checkpoint was trained on (as its info records it), or `source` instead."""
        saved = ck.info.get("corpus_config")
        if saved is None and source is None:
            raise CharloomError("--novelty: the model file does not say which corpus it was trained on; "
                                "give it with --novelty-source SOURCE")
        # without the saved reading options, read the source as the model was trained: records or one stream
        cfg = CorpusConfig.recorded(saved) if saved else CorpusConfig(records=ck.records)
        if source is not None:
            cfg = cfg.replace(source=source)
        try:
            corpus = load_corpus(cfg)
        except CharloomError as e:
            raise CharloomError(f"--novelty: cannot read the training corpus ({e}); give it with --novelty-source") from None
        return cls(corpus, min_chars)

    def check(self, sample: str) -> Mark:
        """Judge `sample` as a reader sees it: give the start text with the continuation, since a copied
        record or line often begins in the start text."""
        if self.records is not None:
            return Mark(False, [sample]) if sample in self.records else Mark(True)
        pieces = [sample] if len(sample) >= self.min_chars else []
        pieces += [ln.strip() for ln in sample.split("\n") if len(ln.strip()) >= self.min_chars]
        copied = list(dict.fromkeys(p for p in pieces if p in self.text))
        return Mark(not copied, copied)
