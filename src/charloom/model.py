"""CharRNN: one model class for every cell type, behind one interface.

    logits, state = model(ids, state)      # ids (B, T) -> logits (B, T, V)

`state` is a tuple of (num_layers, B, H) tensors, (h, c) for an LSTM and (h,) for a GRU or a vanilla
RNN; callers pass it back without looking inside, so training and sampling never ask which cell runs.
What differs between cells (the fused module, the state layout, initialisation) comes from `cells.CELLS`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .cells import CELLS
from .config import ModelConfig

State = tuple[torch.Tensor, ...]


class CharRNN(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size < 1:
            raise ValueError("ModelConfig.vocab_size must be set from the vocabulary before building a model")
        if cfg.hidden_size < 1:
            raise ValueError("ModelConfig.hidden_size must be set before building a model (0 asks a training run "
                             "to choose it: see charloom.sizing)")
        self.cfg = cfg
        self.cell = CELLS[cfg.cell]
        V, H = cfg.vocab_size, cfg.hidden_size
        # one-hot input (embedding=0) feeds V-wide indicator vectors, exactly the notebooks' model
        self.embed = nn.Embedding(V, cfg.embedding) if cfg.embedding else None
        self.rnn = self.cell.make(cfg.embedding or V, H, cfg.num_layers, cfg.dropout)
        self.cell.init(self.rnn, cfg.forget_bias)
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(H, V)

    def inputs(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, T) ids -> (B, T, E) input vectors."""
        if self.embed is not None:
            return self.embed(ids)
        return F.one_hot(ids, self.cfg.vocab_size).to(self.head.weight.dtype)

    def forward(self, ids: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        x = self.inputs(ids)  # (B, T, E)
        out, h = self.rnn(x, self.cell.to_fused(state))  # out (B, T, H); each state tensor (L, B, H)
        return self.head(self.drop(out)), self.cell.from_fused(h)  # (B, T, V)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def forward_flops(cfg: ModelConfig, head: bool = True, lookup: bool = False) -> float:
    """FLOPs of one character through the network (2 x multiply-adds of the matrix products).

    head: count the output layer. lookup: the first layer's input product is a table read, as in the
    sampler's step; otherwise a one-hot input counts as the full (V-wide) product that the fused module
    computes. Training costs about 3x this (the backward pass is about twice the forward)."""
    cell, H, V = CELLS[cfg.cell], cfg.hidden_size, cfg.vocab_size
    layers = sum(cell.layer_flops(cfg.embedding or V if i == 0 else H, H, lookup=lookup and i == 0)
                 for i in range(cfg.num_layers))
    return layers + (2 * H * V if head else 0)


def detach(state: State | None) -> State | None:
    """Cut the graph at a batch boundary (truncated BPTT) while keeping the values."""
    return None if state is None else tuple(s.detach() for s in state)
