"""Bits per character: how well a model predicts a text it reads, character by character.

    ev = evaluate(model, batches)                  # any batches: held-out windows, padded records
    ev = score(model, corpus, streams=1)           # a whole corpus, as `charloom eval` scores it
    ev.bpc, ev.perplexity, ev.characters

Training, `charloom eval`, the server and the benchmarks all score through here. Contiguous batches
(`Batch.continues`) carry the hidden state through, so a long text is scored as one sequence; padding
targets of record batches are not scored.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import ngram, runtime
from .batching import Batch, RecordBatches, Stream, eval_windows
from .config import FIT_CHARS, BatchConfig, EvalConfig, ModelConfig
from .corpus import Corpus
from .decoding import GATE_ROWS, HEAD_ROWS, attended_rows, memory_cap, recall_floats, state_bytes
from .errors import CharloomError, ConfigError
from .model import CharRNN, State, detach

LN2 = math.log(2)
ADAPT_CLIP = 1.0  # dynamic evaluation: the largest gradient norm of one step
CHOOSE_CHARS = 50_000  # fewer fit characters than this cannot tell orders apart: the longest asked is kept
READ_AHEAD = 16_384  # characters an n-gram counting as it reads takes per call (what it predicts does not depend on it)
# a batch is scored in pieces along time, state carried, of about this much work each: a long window on a large
# vocabulary would otherwise make its (B, T, V) logits at once (a million characters of 17,000: 68 GB)
PIECE_BYTES = 256 * 2**20
LOGIT_ROWS = 3  # (V,) float32 rows per position while a piece is scored: the logits, their fp32 copy, log-softmax
SEGMENT_COPIES = 3  # ... and a segment learned from holds them for the backward pass and its gradients too
STATE_GRADIENTS = 2  # a stream's state, learned through, is held with its gradient


@dataclass
class Evaluation:
    loss: float  # mean nats per predicted character
    characters: int  # predicted characters scored
    network_loss: float | None = None  # for a model with an n-gram: the network's own mean nats, without it

    @property
    def network_bpc(self) -> float | None:
        return None if self.network_loss is None else self.network_loss / LN2

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


def _position_bytes(cfg: ModelConfig) -> int:
    """Bytes one (row, time) position of a forward call computes: its logits, its input row, its gates, the
    head's hidden layer, and an attention head's query, keys, values and scores (over the memory and a piece no
    longer than it: `_pieces` keeps them so)."""
    return 4 * (LOGIT_ROWS * cfg.vocab_size + (cfg.embedding or cfg.vocab_size) + GATE_ROWS * cfg.hidden_size
                + HEAD_ROWS * cfg.head_width + recall_floats(cfg))


def _pieces(model: CharRNN, batch: Batch) -> list[Batch]:
    """`batch` cut along time into as few pieces as keep each piece's work within PIECE_BYTES (one piece, unless
    the batch is long and the vocabulary large; one time step at least); each piece after the first continues
    the one before it, so read in order with the state carried they score as the whole batch does."""
    B, T = batch.x.shape
    steps = attended_rows(model.cfg, max(1, PIECE_BYTES // (B * _position_bytes(model.cfg))))  # per piece
    return batch.pieces(-(-T // steps))  # each at most `steps` wide


@torch.inference_mode()
def evaluate(model: CharRNN, batches: Iterable[Batch], device: torch.device | str = "cpu",
             max_characters: int = 0, precision: str = "fp32") -> Evaluation:
    """Mean loss over batches; contiguous batches carry the hidden state through. A long batch is read in
    pieces (`_pieces`), its state carried, so memory stays bounded however long the window.

    max_characters: stop once this many characters are scored (0: all). precision: a resolved precision
    (see runtime.resolve_precision); the loss is summed in fp32 whatever it is."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    total, count, state = 0.0, 0, None
    try:
        for b in batches:
            for piece in _pieces(model, b):
                nll, state = batch_loss(model, piece, state if piece.continues else None, device, precision,
                                        reduction="sum")
                total += float(nll)
            count += b.tokens
            if max_characters and count >= max_characters:
                break
    finally:
        model.train(was_training)
    if count == 0:
        raise CharloomError("nothing to evaluate: the text has fewer than two characters")
    return Evaluation(total / count, count)


def _target_probs(logits: torch.Tensor, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
    """The network's probability of each scored target of `batch` and its largest probability there (float64,
    each (n,))."""
    return _kept(*_log_probs(logits, batch.y), batch)


def _log_probs(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, V) logits, (B, T) targets -> the log-probability of each target and the largest there, (B, T) each."""
    logp = torch.log_softmax(logits.detach().float(), -1)  # (B, T, V)
    return logp.gather(-1, y.to(logits.device).unsqueeze(-1)).squeeze(-1), logp.max(-1).values


def _kept(target: torch.Tensor, top: torch.Tensor, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
    """(B, T) log-probabilities -> the probabilities of `batch`'s scored positions, row by row (float64, (n,))."""
    keep = (batch.y != batch.pad_id).numpy()
    return np.exp(target.double().cpu().numpy())[keep], np.exp(top.double().cpu().numpy())[keep]


def _scored(batch: Batch, before: np.ndarray | None, order: int, skip: range = range(0)
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The `order` ids before each scored target of `batch` (n, order), the carried ones first when it continues
    (ids in `skip` left out: `ngram.contexts`), the targets (n,), and the ids to carry into the next batch
    (B, order)."""
    ctx = _contexts(batch, before, order, skip)
    keep = (batch.y != batch.pad_id).numpy()
    return ctx[keep], batch.y.numpy()[keep].astype(np.int64), ctx[:, -1]


def _contexts(batch: Batch, before: np.ndarray | None, order: int, skip: range = range(0)) -> np.ndarray:
    """The `order` ids before each position of `batch` (B, T, order); `before` (B, order), the ids carried from
    the batch before, are read first when it continues; ids in `skip` are left out (`ngram.contexts`)."""
    return ngram.contexts(batch.x.numpy(), before if batch.continues else None, order, skip)


def _read(model: CharRNN, batches: Iterable[Batch], order: int, device: torch.device, skip: range = range(0)
          ) -> Iterator[tuple[Batch, Batch, torch.Tensor, np.ndarray, bool]]:
    """Every piece of every batch (`_pieces`) read in order with the state carried: (the batch, the piece, its
    logits (B, t, V), the `order` ids before each of its positions (B, t, order), whether it ends its batch).
    Contexts carry across batches that continue each other, ids in `skip` left out of them."""
    was_training = model.training
    model.eval()
    state, before = None, None
    try:
        with torch.inference_mode():
            for b in batches:
                ctx = _contexts(b, before, order, skip)  # (B, T, order)
                before, pieces, at = ctx[:, -1], _pieces(model, b), 0
                for i, piece in enumerate(pieces):
                    logits, state = model(piece.x.to(device), state if piece.continues else None)
                    width = piece.x.shape[1]
                    yield b, piece, logits, ctx[:, at:at + width], i == len(pieces) - 1
                    del logits  # before the next piece's are made
                    at += width
    finally:
        model.train(was_training)


def _predictions(model: CharRNN, batches: Iterable[Batch], order: int, device: torch.device, every: int = 0
                 ) -> Iterator[tuple[np.ndarray, ...]]:
    """Batch by batch, the scored targets: (the network's probability of each (n,), its largest probability there
    (n,), the `order` ids before each (n, order), the targets (n,)), a batch's rows in turn. every > 0: then also
    every `every`-th scored target's (log-probabilities of every id (m, V), contexts (m, order), targets (m,))."""
    parts: list[tuple[torch.Tensor, torch.Tensor]] = []  # per piece, (B, t) log-probabilities of target and likeliest
    contexts: list[np.ndarray] = []
    sampled: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    seen = 0
    for b, piece, logits, ctx, last in _read(model, batches, order, device):
        parts.append(_log_probs(logits, piece.y))
        contexts.append(ctx)
        if every:
            keep = (piece.y != piece.pad_id).numpy()
            rows = np.flatnonzero((seen + np.arange(keep.sum())) % every == 0)
            chosen = logits.detach().float().cpu()[torch.from_numpy(keep)][torch.from_numpy(rows)]  # (m, V)
            sampled.append((torch.log_softmax(chosen, -1).numpy(), ctx[keep][rows],
                            piece.y.numpy()[keep][rows].astype(np.int64)))
            seen += int(keep.sum())
        del logits
        if last:
            keep = (b.y != b.pad_id).numpy()
            p, top = _kept(*(torch.cat(part, 1) for part in zip(*parts)), b)
            yield p, top, np.concatenate(contexts, 1)[keep], b.y.numpy()[keep].astype(np.int64), *(
                [tuple(np.concatenate(x) for x in zip(*sampled))] if every else [])
            parts, contexts, sampled = [], [], []


def network_predictions(model: CharRNN, batches: Iterable[Batch], order: int, device: torch.device | str = "cpu"
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every scored target of `batches`, joined: (the network's probability of it (N,), its largest probability
    there (N,), the `order` ids before it (N, order), the target (N,)). What a mixture is fitted on."""
    return _joined(list(_predictions(model, batches, order, torch.device(device))))  # type: ignore[return-value]


def _joined(parts: list[tuple]) -> tuple:
    """Batches' predictions joined, field by field (the sampled rows' too)."""
    if not sum(len(part[0]) for part in parts):
        raise CharloomError("nothing to evaluate: the text has fewer than two characters")
    return tuple(np.concatenate(x) if isinstance(x[0], np.ndarray) else _joined(list(x)) for x in zip(*parts))


def evaluate_mixed(model: CharRNN, mixture: ngram.Mixture, batches: Iterable[Batch],
                   device: torch.device | str = "cpu") -> Evaluation:
    """`evaluate` for a model with an n-gram: the mixture's loss, with the network's own beside it. Piece by
    piece: memory stays that of one piece however long the text."""
    mixed = own = 0.0
    count = 0
    for _, piece, logits, ctx, _ in _read(model, batches, mixture.ngram.order, torch.device(device),
                                          mixture.uncounted):
        keep = (piece.y != piece.pad_id).numpy()
        y, ctx = piece.y.numpy()[keep], ctx[keep]
        if mixture.exponents is None:  # the linear mixture needs only the targets' n-gram probabilities
            p_net, top = _kept(*_log_probs(logits, piece.y), piece)
            mixed -= float(np.log(np.maximum(mixture.target_probs(p_net, top, ctx, y), ngram.FLOOR)).sum())
            own -= float(np.log(np.maximum(p_net, ngram.FLOOR)).sum())
        else:
            logp = torch.log_softmax(logits.detach().float(), -1).cpu().numpy()[keep]  # (n, V)
            own -= float(logp[np.arange(len(y)), y].astype(np.float64).sum())
            mixed += _mixed_nats(mixture, logp, ctx, y)
            del logp
        del logits
        count += len(y)
    if not count:
        raise CharloomError("nothing to evaluate: the text has fewer than two characters")
    return Evaluation(mixed / count, count, own / count)


def _mixed_nats(mixture: ngram.Mixture, logits: np.ndarray, ctx: np.ndarray, y: np.ndarray) -> float:
    """The mixture's summed nats on targets y (n,) after contexts (n, order), given the network's logits (n, V):
    a few rows at a time, so that the mixture's float64 copies stay within ngram.MIX_FLOATS each."""
    total, rows = 0.0, max(1, ngram.MIX_FLOATS // logits.shape[1])
    for at in range(0, len(y), rows):
        lp = mixture.log_probs(logits[at:at + rows], ctx[at:at + rows])
        total -= float(lp[np.arange(len(lp)), y[at:at + rows]].astype(np.float64).sum())
    return total


def fit_mixture(model: CharRNN, ids: np.ndarray, vocab_size: int, pad_id: int, order: int, beta: float = 4.0,
                device: torch.device | str = "cpu", held: int | None = None, given: range = range(0)
                ) -> ngram.Mixture:
    """The n-gram of training text `ids` mixed with `model`: its order (at most `order`: `ngram.choose_order`, given
    CHOOSE_CHARS to choose on), weights and last layer fitted on the last `held` ids (None: the last tenth, at most
    FIT_CHARS; best text the network has not trained on, which a network of several passes has all but learned by
    heart), scored by the network and by an n-gram built from the rest; then the n-gram of `ids` at that order.
    Each n-gram counts the last MAX_PAIRS // order characters it is given at most, so the weights are fitted to
    counts of as much text as the model's. The last layer is fitted on evenly spaced characters of the held ones,
    PRODUCT_FLOATS // vocab_size at most, where `held` names characters training left out: on text the network
    has learned by heart it would learn to trust the network more than new text warrants (None: none). `given`:
    ids the text holds that are read, never predicted (a labelled model's label tokens): left out of the fit, and
    never counted as a next id (`NGram.given`)."""
    unseen = held is not None
    held = min(FIT_CHARS, len(ids) // 10) if held is None else min(held, len(ids))
    if held < 2 or len(ids) - held < 2:
        return ngram.Mixture(_capped(ids, vocab_size, order, beta, given), np.ones((order + 1, *ngram.SHAPE)))
    start = len(ids) - held
    batches = (replace(b, y=b.y.masked_fill((b.y >= given.start) & (b.y < given.stop), pad_id))
               for b in eval_windows(Stream(ids, [(start, len(ids))]), 1024, 1, pad_id))
    every = -(-held // max(1, ngram.PRODUCT_FLOATS // vocab_size))
    p_net, top, ctx, y, (logits, sampled_ctx, sampled_y) = _joined(
        list(_predictions(model, batches, order, torch.device(device), every)))
    longest = _capped(ids[:start], vocab_size, order, beta, given)
    kept = ngram.choose_order(longest, p_net, top, ctx, y) if held >= CHOOSE_CHARS else order
    counted = longest.shorter(kept) if len(longest.ids) == min(start, ngram.most_chars(kept)) \
        else _capped(ids[:start], vocab_size, kept, beta, given)  # the kept order may count more of the text
    del longest
    fitted = ngram.fit(counted, p_net, top, ctx[:, -kept:], y)
    exponents = ngram.fit_exponents(fitted, logits, sampled_ctx[:, -kept:], sampled_y) if unseen else None
    return ngram.Mixture(_capped(ids, vocab_size, kept, beta, given), fitted.weights, fitted.reading, exponents)


def _capped(ids: np.ndarray, vocab_size: int, order: int, beta: float, given: range = range(0)) -> ngram.NGram:
    """The n-gram of the last characters of `ids` that an n-gram of `order` may count."""
    return ngram.NGram(ids[-ngram.most_chars(order):], vocab_size, order, beta, given=given)



def corpus_batches(corpus: Corpus, streams: int = 1, window: int = 1024) -> Iterable[Batch]:
    """A whole corpus as evaluation batches: records in order, each wrapped in <bos> ... <eos>; a continuous
    text as `streams` parallel streams fed `window` characters at a time, state carried."""
    if corpus.is_records:
        cfg = BatchConfig(batch_size=streams, seq_len=window, val_fraction=0.0, max_record_len=10**9)
        return RecordBatches(corpus, np.arange(corpus.num_records), cfg, corpus.name).in_order()
    return eval_windows(Stream(corpus.ids, [(0, len(corpus.ids))]), window, streams, corpus.vocab.pad_id)


def _check_scorable(corpus: Corpus, model: CharRNN) -> None:
    """A text's first character is never predicted: one of fewer than two has nothing to score (records always
    have their <eos>). A corpus encoded with another vocabulary than the model's would be read as other
    characters, or with ids the model has no row for."""
    if not corpus.is_records and len(corpus.ids) < 2:
        raise CharloomError(f"{corpus.name}: nothing to evaluate: the text has fewer than two characters")
    V = model.cfg.vocab_size
    if len(corpus.vocab) != V or (len(corpus.ids) and int(corpus.ids.max()) >= V):
        raise CharloomError(f"{corpus.name}: encoded with a vocabulary of {len(corpus.vocab)} ids, not the "
                            f"model's {V}; load it with the model's (load_corpus(..., vocab=checkpoint.vocab))")


def _where(model: CharRNN, cfg: EvalConfig, device: torch.device | str | None) -> torch.device:
    """Where to score: `device`, else the config's unless it is auto, else where the model is."""
    asked = device if device is not None else None if cfg.device == "auto" else cfg.device
    return runtime.device_here(asked, next(model.parameters()).device)


def score(model: CharRNN, corpus: Corpus, cfg: EvalConfig | None = None,
          device: torch.device | str | None = None, mixture: ngram.Mixture | None = None) -> Evaluation:
    """Bits per character of `model` (with its n-gram `mixture`, if it has one) on all of `corpus` (encoded with
    the model's vocabulary), in fp32."""
    cfg = cfg or EvalConfig()
    cfg.check_static()
    _check_scorable(corpus, model)
    device = _where(model, cfg, device)
    if device != next(model.parameters()).device:  # scored as a copy moved there: the caller's model stays put
        model = copy.deepcopy(model).to(device)
    check_streams(model, cfg.streams)
    batches = corpus_batches(corpus, cfg.streams, cfg.window)
    return evaluate_mixed(model, mixture, batches, device) if mixture else evaluate(model, batches, device)


def label_scores(model: CharRNN, corpus: Corpus, indices: np.ndarray | None = None,
                 device: torch.device | str | None = None, batch_size: int = 32) -> list[dict[str, Any]]:
    """Is the label used? For each label of a labelled records corpus, the bpc of its records (those of
    `indices`, default all) given their own label, given each wrong label (and their mean), and given none.
    A model that writes for its label scores its own label lowest. One dict per label, in the vocabulary's
    order: {"label", "records", "characters", "bpc", "wrong_bpc", "wrong_bpc_each", "no_label_bpc"}."""
    if corpus.labels is None:
        raise CharloomError(f"{corpus.name}: the records carry no labels (give --label-column or --label-field)")
    _check_scorable(corpus, model)
    device = runtime.device_here(device, next(model.parameters()).device)
    indices = np.arange(corpus.num_records) if indices is None else np.asarray(indices)
    names = corpus.vocab.labels
    check_streams(model, 1)
    batch_size = min(batch_size, max(1, memory_cap() // state_bytes(model.cfg)))  # records read at once: their states
    cfg = BatchConfig(batch_size=batch_size, val_fraction=0.0, max_record_len=10**9)
    out = []
    for own, name in enumerate(names):
        mine = indices[corpus.labels[indices] == own]
        if not len(mine):
            continue
        records = RecordBatches(corpus, mine, cfg, corpus.name)

        def bpc(label: int | None) -> Evaluation:
            return evaluate(model, records.in_order(label), device)

        given = bpc(None)
        wrong = {other: bpc(i).bpc for i, other in enumerate(names) if i != own}
        out.append({"label": name, "records": int(len(mine)), "characters": given.characters, "bpc": given.bpc,
                    "wrong_bpc": float(np.mean(list(wrong.values()))) if wrong else None,
                    "wrong_bpc_each": wrong, "no_label_bpc": bpc(-1).bpc})
    return out


def adapt(model: CharRNN, batches: Iterable[Batch], lr: float, decay: float = 0.0,
          device: torch.device | str = "cpu", clip: float = ADAPT_CLIP,
          mixture: ngram.Mixture | None = None) -> Evaluation:
    """Dynamic evaluation (Krause et al., 2018): each batch is scored first, then the model takes one SGD step
    on that batch's mean loss (its gradient norm clipped to `clip`, as in training, so a passage unlike anything
    seen cannot throw the weights far), `decay` of the way back towards the trained weights, and reads on with its state
    carried. Every character is scored by weights that have seen only the characters before it, as a
    compressor's model has. With `mixture`, the adapting network is mixed with its n-gram, which counts every
    character once it has predicted it (an `ngram.Reader`, with the weights fitted for reading; mixed linearly,
    without the static mixture's last layer: a Reader gives the probability of the character read, not of every
    one), and the network's own figure goes beside it. lr 0: the network stays as trained and only the n-gram
    learns. Works on a copy: `model` is left as it was."""
    device = torch.device(device)
    work = copy.deepcopy(model).to(device).eval()  # eval: no dropout while it reads
    params = [p for p in work.parameters() if p.requires_grad]
    trained = [p.detach().clone() for p in params]
    total, own, count, state = 0.0, 0.0, 0, None
    with torch.inference_mode(False), torch.set_grad_enabled(lr > 0):
        for b, predicted in _read_ahead(batches, mixture):
            logits, new_state = work(b.x.to(device), state if b.continues else None)
            nll = F.cross_entropy(logits.flatten(0, 1).float(), b.y.to(device).flatten(), ignore_index=b.pad_id,
                                  reduction="sum")
            own, count = own + float(nll.detach()), count + b.tokens
            if lr and not math.isfinite(own):  # the steps threw the weights far: nothing after this scores
                raise ConfigError(f"adapt_lr (--adapt-lr): the network diverged while adapting at a learning rate "
                                  f"of {lr:g} (its loss was {own:g} by character {count:,}); give a smaller one")
            if mixture is None:
                total = own
            else:
                p_net, top = _target_probs(logits, b)
                p = mixture.mix(p_net, top, predicted, reading=True)
                total += float(-np.log(np.maximum(p, 1e-300)).sum())
            if lr:
                _descend(nll / max(1, b.tokens), params, trained, lr, decay, clip)
            state = detach(new_state)
    if count == 0:
        raise CharloomError("nothing to evaluate: the text has fewer than two characters")
    return Evaluation(total / count, count, own / count if mixture is not None else None)


def _read_ahead(batches: Iterable[Batch], mixture: ngram.Mixture | None
                ) -> Iterator[tuple[Batch, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None]]:
    """Each batch with, for a `mixture`, what a Reader of its n-gram predicts for the batch's scored targets (p,
    longest order seen, its count, its different followers; each (n,)): the batches are read in groups of about
    READ_AHEAD characters, one call each, in the order they come (a batch's rows one after another)."""
    if mixture is None:
        yield from ((b, None) for b in batches)
        return
    reader, order, before = ngram.Reader(mixture.ngram), mixture.ngram.order, None
    pending = iter(batches)
    while True:
        group: list[Batch] = []
        contexts: list[np.ndarray] = []
        targets: list[np.ndarray] = []
        size = 0
        for b in pending:
            ctx, y, before = _scored(b, before, order, mixture.uncounted)
            group.append(b)
            contexts.append(ctx)
            targets.append(y)
            size += len(targets[-1])
            if size >= READ_AHEAD:
                break
        if not group:
            return
        read = reader.read(np.concatenate(contexts), np.concatenate(targets))
        at = np.cumsum([len(y) for y in targets])[:-1]
        yield from zip(group, zip(*(np.split(part, at) for part in read)))


def _descend(loss: torch.Tensor, params: list[torch.Tensor], trained: list[torch.Tensor], lr: float, decay: float,
             clip: float) -> None:
    """One clipped SGD step on `loss`, then `decay` of the way back to the trained weights."""
    grads = torch.autograd.grad(loss, params)
    with torch.no_grad():
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        if clip and norm > clip:
            torch._foreach_mul_(grads, clip / float(norm))
        torch._foreach_add_(params, grads, alpha=-lr)
        if decay:
            torch._foreach_lerp_(params, trained, decay)


def check_streams(model: CharRNN, streams: int, copies: int = 1) -> None:
    """Streams whose states (an attention head's memory above all, `copies` of each) would not fit in memory are
    refused before any work, naming the option: a piece's work is bounded, a stream's state is not cut."""
    need = copies * streams * state_bytes(model.cfg)
    if need <= (cap := memory_cap()):
        return
    what = "one stream of this model's state needs" if streams == 1 else \
        f"{streams:,} streams of this model's state need"
    hint = "the model's attention memory is too large for this machine" if streams == 1 else "give fewer streams"
    raise ConfigError(f"streams (--streams): {what} about {need / 1e9:,.1f} GB, more than the {cap / 1e9:,.1f} GB "
                      f"allowed (half of this machine's memory); {hint}")


def _check_segment(model: CharRNN, streams: int, segment: int, longest: int) -> None:
    """A segment learned in one step cannot be cut in pieces as a scored window is (its step would differ): one too
    large for memory, forward and backward, is refused before any work, naming the option. `longest`: the most
    characters any segment of the text can hold (a segment longer than the text holds the text)."""
    check_streams(model, streams, STATE_GRADIENTS)
    need = streams * (SEGMENT_COPIES * min(segment, longest) * _position_bytes(model.cfg)
                      + STATE_GRADIENTS * state_bytes(model.cfg))
    if need > (cap := memory_cap()):
        raise ConfigError(f"adapt_segment (--adapt-segment): segments of {segment:,} characters need about "
                          f"{need / 1e9:,.1f} GB to learn from, more than the {cap / 1e9:,.1f} GB allowed (half of "
                          f"this machine's memory); give a shorter segment")


def score_adapted(model: CharRNN, corpus: Corpus, cfg: EvalConfig | None = None,
                  device: torch.device | str | None = None, mixture: ngram.Mixture | None = None) -> Evaluation:
    """`adapt` over all of `corpus`, in segments of `cfg.adapt_segment` characters: records `cfg.streams` at a
    time, a continuous text as one stream (in several, a stream's first character would be learned from before the
    stream ending there had predicted it)."""
    cfg = cfg or EvalConfig()
    _check_scorable(corpus, model)
    device = _where(model, cfg, device)  # `adapt` works on a copy it moves there itself
    streams = cfg.streams if corpus.is_records else 1
    longest = len(corpus.ids) + (2 * corpus.num_records if corpus.is_records else 0)  # a record with <bos>, <eos>
    _check_segment(model, streams, cfg.adapt_segment, longest)
    return adapt(model, corpus_batches(corpus, streams, cfg.adapt_segment), cfg.adapt_lr, cfg.adapt_decay, device,
                 mixture=mixture)


__all__ = ["Evaluation", "adapt", "batch_loss", "check_streams", "corpus_batches", "evaluate", "evaluate_mixed",
           "label_scores", "fit_mixture", "network_predictions", "score", "score_adapted"]
