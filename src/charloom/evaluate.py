"""Bits per character: how well a model predicts a text it reads, character by character.

    ev = evaluate(model, batches)                  # any batches: held-out windows, padded records
    ev = score(model, corpus, streams=1)           # a whole corpus, as `charloom eval` scores it
    ev.bpc, ev.perplexity, ev.characters

Training, `charloom eval`, the server and the benchmarks all score through here. Contiguous batches
(`Batch.continues`) carry the hidden state through, so a long text is scored as one sequence; padding
targets of record batches are not scored.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import runtime
from .batching import Batch, RecordBatches, Stream, eval_windows
from .config import BatchConfig, EvalConfig
from .corpus import Corpus
from .errors import CharloomError
from .model import CharRNN, State

LN2 = math.log(2)


@dataclass
class Evaluation:
    loss: float  # mean nats per predicted character
    characters: int  # predicted characters scored

    @property
    def bpc(self) -> float:
        return self.loss / LN2

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)


def batch_loss(model: torch.nn.Module, batch: Batch, state: State | None, device: torch.device,
               precision: str = "fp32", reduction: str = "mean") -> tuple[torch.Tensor, State]:
    """Cross-entropy of the next-character predictions of one batch (padding ignored) and the final state.
    The model's products run in `precision` (the runtime's autocast); the loss is always taken in fp32."""
    x, y = batch.x.to(device, non_blocking=True), batch.y.to(device, non_blocking=True)
    with runtime.autocast(device, precision):
        logits, new_state = model(x, state)  # (B, T, V)
    loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=batch.pad_id, reduction=reduction)
    return loss, new_state


@torch.inference_mode()
def evaluate(model: CharRNN, batches: Iterable[Batch], device: torch.device | str = "cpu",
             max_characters: int = 0, precision: str = "fp32") -> Evaluation:
    """Mean loss over batches; contiguous batches carry the hidden state through.

    max_characters: stop once this many characters are scored (0: all). precision: a resolved precision
    (see runtime.resolve_precision); the loss is summed in fp32 whatever it is."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    total, count, state = 0.0, 0, None
    try:
        for b in batches:
            nll, state = batch_loss(model, b, state if b.continues else None, device, precision, reduction="sum")
            total += float(nll)
            count += b.tokens
            if max_characters and count >= max_characters:
                break
    finally:
        model.train(was_training)
    if count == 0:
        raise CharloomError("nothing to evaluate: the text has fewer than two characters")
    return Evaluation(total / count, count)


def corpus_batches(corpus: Corpus, streams: int = 1, window: int = 1024) -> Iterable[Batch]:
    """A whole corpus as evaluation batches: records in order, each wrapped in <bos> ... <eos>; a continuous
    text as `streams` parallel streams fed `window` characters at a time, state carried."""
    if corpus.is_records:
        cfg = BatchConfig(batch_size=streams, seq_len=window, val_fraction=0.0, max_record_len=10**9)
        return RecordBatches(corpus, np.arange(corpus.num_records), cfg, corpus.name).in_order()
    return eval_windows(Stream(corpus.ids, [(0, len(corpus.ids))]), window, streams, corpus.vocab.pad_id)


def score(model: CharRNN, corpus: Corpus, cfg: EvalConfig | None = None,
          device: torch.device | str | None = None) -> Evaluation:
    """Bits per character of `model` on all of `corpus` (encoded with the model's vocabulary), in fp32."""
    cfg = cfg or EvalConfig()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    return evaluate(model, corpus_batches(corpus, cfg.streams, cfg.window), device)


__all__ = ["Evaluation", "batch_loss", "corpus_batches", "evaluate", "score"]
