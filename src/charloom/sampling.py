"""The PyTorch backend of generation: a Generator that runs a CharRNN, and its one-character `Stepper`.

The Generator feeds the start text through the model in pieces of bounded size (one call, unless the start
is long or the vocabulary large), then steps one character at a time with the state carried (never re-running
the prefix). Its one-character step is a hand-written cell update on weights prepared once (`Stepper`): at
batch 1 the fused sequence kernels spend most of their time on set-up, and the first layer's input product
becomes a table lookup. Choosing each character, stop strings, seeds and the memory check are the shared
`decoding.Writer`'s, so an exported ONNX file makes the same text from the same seed.

A generation's options are one `SampleOptions` (config.py), the object the CLI and the server build
too, so their defaults and checks are the same everywhere.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from .config import SampleOptions
from .decoding import GATE_ROWS, Writer, apply_repetition_penalty, choose, filter_logits, sample_options
from . import runtime
from .model import CharRNN, RecallStep, State
from .vocab import Vocab

if TYPE_CHECKING:
    from .checkpoint import Checkpoint


# ---- the one-character step --------------------------------------------------------------------------
class Stepper:
    """One time step of a CharRNN for a batch of single ids, as plain matrix products.

    Equal to `model(ids[:, None], state)` (to float rounding) and faster at small batches: the first
    layer's input product and its biases are folded into a (V, G*H) table read by id. Each layer's
    update is its cell's own `step` (cells.py), so the Stepper never asks which cell it runs; an attention
    head's is its own too (`model.RecallStep`).
    """

    def __init__(self, model: CharRNN):
        cell, rnn, L = model.cell, model.rnn, model.cfg.num_layers
        self.step, self.L, self.model = cell.step, L, model

        def input_bias(i: int) -> torch.Tensor:  # (G*H,): b_ih, plus b_hh where the cell can fold it in
            b = getattr(rnn, f"bias_ih_l{i}")
            return b + getattr(rnn, f"bias_hh_l{i}") if cell.folds_hh_bias else b.clone()

        with torch.no_grad():
            w0 = rnn.weight_ih_l0  # (G*H, E)
            inputs = model.embed.weight @ w0.T if model.embed is not None else w0.T  # (V, G*H); one-hot: rows of W
            self.table = (inputs + input_bias(0)).contiguous()
            self.w_grams = w0.T.contiguous() if model.cfg.grams else None  # (E, G*H): hashed contexts' product
            self.w_ih = [None] + [getattr(rnn, f"weight_ih_l{i}").T.contiguous() for i in range(1, L)]
            self.b_ih = [None] + [input_bias(i) for i in range(1, L)]
            self.w_hh = [getattr(rnn, f"weight_hh_l{i}").T.contiguous() for i in range(L)]
            self.b_hh = [getattr(rnn, f"bias_hh_l{i}").clone() for i in range(L)]
            self.w_out, self.b_out = model.head.weight.T.contiguous(), model.head.bias.clone()
            mid = model.readout  # the head's hidden layer: its product as plain matrices, its activation as is
            self.w_mid = mid[0].weight.T.contiguous() if mid is not None else None  # (H, W)
            self.b_mid = mid[0].bias.clone() if mid is not None else None
            self.act = mid[1] if mid is not None else None
        self.recall = RecallStep(model.recall) if model.recall is not None else None

    @torch.inference_mode()
    def __call__(self, ids: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """ids (B,), state tuple (see CharRNN) -> logits (B, V), new state."""
        cells, recent, memory = self.model.split(state, len(ids))
        first, tail = self.table[ids], ()  # (B, G*H)
        if recent is not None:
            more, new_recent = self.model.gram_vectors(ids[:, None], recent)  # (B, 1, E)
            first, tail = torch.addmm(first, more[:, 0], self.w_grams), (new_recent,)
        layers = []
        x = None
        for i in range(self.L):
            gi = first if i == 0 else torch.addmm(self.b_ih[i], x, self.w_ih[i])  # (B, G*H)
            new = self.step(gi, tuple(s[i] for s in cells), self.w_hh[i], self.b_hh[i])  # each (B, H)
            layers.append(new)
            x = new[0]
        if self.recall is not None:
            x, memory = self.recall(x, memory, cells[0][-1])  # h of the last layer before
            tail += (memory,)
        if self.act is not None:
            x = self.act(torch.addmm(self.b_mid, x, self.w_mid))  # (B, W)
        logits = torch.addmm(self.b_out, x, self.w_out)  # (B, V)
        return logits, tuple(torch.stack(parts) for parts in zip(*layers)) + tail


# ---- the Generator -----------------------------------------------------------------------------------
class Generator(Writer):
    """Writes text with a CharRNN: start text in a few calls, then one character at a time, state carried."""

    reads_in_pieces = True

    def __init__(self, model: CharRNN, vocab: Vocab, device: torch.device | str | None = None, records: bool = False):
        """records: the model was trained on records, so every sample starts from <bos> (then the start text)."""
        self.model = model
        self.vocab = vocab
        self.records = records
        self.device = runtime.device_here(device or None, next(model.parameters()).device)
        self.num_layers, self.hidden_size = model.cfg.num_layers, model.cfg.hidden_size
        self.head_width = model.cfg.head_width
        self.config = model.cfg
        self._stepper: Stepper | None = None
        self._version: tuple | None = None

    def stepper(self) -> Stepper:
        # rebuilt when the weights change (a Generator used during training sees new weights each time)
        version = tuple(p._version for p in self.model.parameters())
        if self._stepper is None or version != self._version:
            self._stepper, self._version = Stepper(self.model), version
        return self._stepper

    @classmethod
    def from_checkpoint(cls, ck: Checkpoint, device: torch.device | str | None = None) -> Generator:
        """The Generator for a loaded model file: its model, vocabulary, records flag and n-gram. device: where
        to run (the checkpoint's model is moved there); default: where the model already is."""
        model = ck.model.to(runtime.device_here(device)) if device is not None else ck.model
        gen = cls(model, ck.vocab, device=device, records=ck.records)
        gen.mixture = ck.mixture
        return gen

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        """The model in eval mode (no dropout) and no autograd while it reads or writes; its mode after."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                yield
        finally:
            self.model.train(was_training)

    def _pieces(self, prefix: list[int], opts: SampleOptions) -> Iterator[tuple[int, str]]:
        with self._reading():
            yield from self._run(prefix, opts)

    def trace(self, before: Sequence[int], ids: Sequence[int]) -> dict[str, np.ndarray]:
        with self._reading():
            return super().trace(before, ids)

    def _start(self, prefix: list[int], n: int) -> tuple[np.ndarray, State]:
        last, state = self._read_start(prefix)
        state = tuple(s.expand(-1, n, -1).contiguous() for s in state)  # (L, n, H)
        self._steps = self.stepper()  # checked once per generation: the weights do not change while it writes
        return _numpy(last).repeat(n, 0), state  # (n, V)

    def _read_start(self, prefix: list[int]) -> tuple[torch.Tensor, State]:
        """The start text through the model: (1, V) logits after its last character, and the state (the same as
        one call's, to float rounding). Only the last character's logits are computed; the others are read
        `piece_rows()` per call with the state carried, so one piece's inputs are all that exist at a time."""
        ids = torch.tensor([prefix], device=self.device)  # (1, T)
        rows, last, state = self.piece_rows(), ids.shape[1] - 1, None
        for at in range(0, last, rows):
            _, state = self.model.features(ids[:, at:min(at + rows, last)], state)  # no logits: only the state
        logits, state = self.model(ids[:, last:], state)  # (1, 1, V)
        return logits[:, -1], state

    def row_bytes(self) -> int:
        # no logits while the start is read: its input row (one-hot, or embedded) and a layer's gates and output
        cfg = self.model.cfg
        return 4 * ((cfg.embedding or cfg.vocab_size) + GATE_ROWS * cfg.hidden_size)

    def _step(self, ids: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        logits, state = self._steps(torch.from_numpy(ids).to(self.device), state)
        return _numpy(logits), state


    def _read_logits(self, ids: Sequence[int]) -> np.ndarray:
        """(T, V) logits of `ids` from a zero state, read in pieces with the state carried, each about READ_BYTES
        of work counting its logits (one call's, to float rounding): an attention head's scores over one call
        grow with its length squared."""
        x = torch.tensor([list(ids)], device=self.device)  # (1, T)
        rows, state = self.logit_rows(), None
        out = np.empty((x.shape[1], self.config.vocab_size), np.float32)  # (T, V)
        with self._reading():
            for at in range(0, x.shape[1], rows):
                logits, state = self.model(x[:, at:at + rows], state)  # (1, rows, V)
                out[at:at + rows] = _numpy(logits[0])
        return out

    def state_arrays(self, state: State) -> dict[str, np.ndarray]:
        return {name: s.detach().float().cpu().numpy() for name, s in zip(self.model.cell.state, state)}


def _numpy(logits: torch.Tensor) -> np.ndarray:
    return logits.detach().float().cpu().numpy()


def sample_texts(model: CharRNN, vocab: Vocab, start: str, temperatures: Sequence[float], length: int, n: int = 1,
                 seed: int = 0, records: bool = False) -> list[tuple[float, list[str]]]:
    """(temperature, n texts) at each temperature: what training prints as it learns."""
    g = Generator(model, vocab, records=records)
    return [(t, g.generate(start, length, n=n, temperature=t, seed=seed)) for t in temperatures]


__all__ = ["Generator", "SampleOptions", "State", "Stepper", "apply_repetition_penalty", "choose", "filter_logits",
           "sample_options", "sample_texts"]
