"""Choosing the next character, and a Generator that carries the recurrent state while it writes.

`choose` is a pure function of logits and options. The Generator feeds the start text in one call,
then steps one character at a time with the state carried (never re-running the prefix).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .errors import CharloomError
from .model import CharRNN, State, select
from .vocab import Vocab


def check_options(temperature: float, top_k: int, top_p: float) -> None:
    if not temperature >= 0:
        raise CharloomError(f"--temperature: must be >= 0, got {temperature}")
    if not isinstance(top_k, int) or top_k < 0:
        raise CharloomError(f"--top-k: must be an integer >= 0, got {top_k}")
    if not 0 < top_p <= 1:
        raise CharloomError(f"--top-p: must be in (0, 1], got {top_p}")


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """(B, V) logits with everything outside the top-k / nucleus set to -inf."""
    if top_k and top_k < logits.shape[-1]:
        keep = torch.topk(logits, top_k, dim=-1).indices  # exactly k, even when logits tie
        masked = torch.full_like(logits, float("-inf"))
        logits = masked.scatter(-1, keep, logits.gather(-1, keep))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        before = probs.cumsum(-1) - probs  # mass of the strictly more likely candidates
        drop_sorted = before >= top_p  # the smallest set whose mass reaches p is kept
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def choose(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, V) logits -> (B,) next ids. Temperature 0 is greedy (argmax)."""
    check_options(temperature, top_k, top_p)
    if temperature == 0:
        return logits.argmax(-1)
    logits = filter_logits(logits.float() / temperature, top_k, top_p)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)


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

    @torch.inference_mode()
    def generate(self, start: str = "", length: int = 200, n: int = 1, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, seed: int | None = None, stop_at_eos: bool = True,
                 on_text: Callable[[int, str], None] | None = None) -> list[str]:
        """n continuations of `start` (without it), each at most `length` characters, each ending at <eos>."""
        check_options(temperature, top_k, top_p)
        if length < 0 or n < 1:
            raise CharloomError(f"length must be >= 0 and n >= 1, got length={length}, n={n}")
        v = self.vocab
        # a records model reads <bos> first; a continuous one starts from a newline when given no text
        if self.records or not start:
            prefix = [v.bos_id if self.records or "\n" not in v else v.stoi["\n"]] + v.encode(start)
        else:
            prefix = v.encode(start)
        was_training = self.model.training
        self.model.eval()
        try:
            return self._run(prefix, length, n, temperature, top_k, top_p, seed, stop_at_eos, on_text)
        finally:
            self.model.train(was_training)

    def _run(self, prefix, length, n, temperature, top_k, top_p, seed, stop_at_eos, on_text) -> list[str]:
        v = self.vocab
        gen = torch.Generator(device=self.device)
        if seed is None:
            gen.seed()  # fresh entropy for this generator only; the global RNG is left alone
        else:
            gen.manual_seed(seed)
        ids = torch.tensor([prefix] * n, device=self.device)  # (n, P)
        logits, state = self.model(ids)  # the whole start text in one call
        last = logits[:, -1]  # (n, V)
        out: list[list[int]] = [[] for _ in range(n)]
        alive = torch.arange(n, device=self.device)
        for _ in range(length):
            last = last.index_fill(-1, self._banned, float("-inf"))
            nxt = choose(last, temperature, top_k, top_p, gen)  # (alive,)
            done = nxt == v.eos_id if stop_at_eos else torch.zeros_like(nxt, dtype=torch.bool)
            for row, tok in zip(alive.tolist(), nxt.tolist()):
                if tok != v.eos_id or not stop_at_eos:
                    out[row].append(tok)
                    if on_text is not None:
                        on_text(row, v.itos[tok] if tok >= len(v.specials) else "")
            if bool(done.any()):
                keep = (~done).nonzero().squeeze(-1)
                alive, nxt, state = alive[keep], nxt[keep], select(state, keep)
                if len(alive) == 0:
                    break
            logits, state = self.model(nxt[:, None], state)
            last = logits[:, -1]
        return [v.decode(o) for o in out]


def sample_texts(model: CharRNN, vocab: Vocab, start: str, temperatures: Sequence[float], length: int, n: int = 1,
                 seed: int = 0, records: bool = False) -> list[tuple[float, list[str]]]:
    """(temperature, n texts) at each temperature: what training prints as it learns."""
    g = Generator(model, vocab, records=records)
    return [(t, g.generate(start, length, n=n, temperature=t, seed=seed)) for t in temperatures]


__all__ = ["Generator", "State", "check_options", "choose", "filter_logits", "sample_texts"]
