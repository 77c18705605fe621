"""CharRNN: one model class for every cell type, behind one interface.

    logits, state = model(ids, state)      # ids (B, T) -> logits (B, T, V)

`state` is a tuple of (num_layers, B, H) tensors, (h, c) for an LSTM and (h,) for a GRU or a vanilla
RNN; callers pass it back without looking inside, so training and sampling never ask which cell runs.
What differs between cells (the fused module, the state layout, initialisation) comes from `cells.CELLS`.

The head maps the last layer's output to logits through a hidden layer (`ModelConfig.head_hidden`, GELU;
as wide as the recurrent layer by default, none in model files from before it). Its products take every
character of a batch at once, so its units cost far less time than recurrent ones, whose products wait on
each other from one character to the next.

With hashed context inputs (`ModelConfig.grams` = K), each character's input vector is its embedding plus,
for each k in 2..K, a learned vector for the k characters ending at it, read from a table by hash: memory for
frequent short contexts that costs a table read, not a wider network. The state then ends with `recent`
(1, B, K-1): the last K-1 ids before the next call, plus one (0: before the text), so that a text read in
pieces gets the same inputs as read whole.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .cells import CELLS
from .config import ModelConfig, state_shapes

State = tuple[torch.Tensor, ...]
# the context hash, the same in every backend: h = (h * GRAM_MUL + id + 1) mod GRAM_MOD, one id at a time from the
# current one back; GRAM_MOD * GRAM_MUL + GRAM_MOD stays inside int64
GRAM_MUL, GRAM_MOD = 1_000_003, 2_147_483_647
GRAM_STD = 0.1  # the tables' initial spread: small beside the embedding's N(0, 1), so they start as a nudge


def context_rows(ids: torch.Tensor, recent: torch.Tensor, grams: int, buckets: int
                 ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """ids (B, T), recent (B, K-1) int64 ids + 1 before them -> (the table row of each context of 2..K characters
    ending at each position, each (B, T); the new recent (B, K-1))."""
    T = ids.shape[1]
    seq = torch.cat([recent, ids + 1], dim=1)  # (B, K-1+T): 0 before the text
    h, rows = ids + 1, []
    for back in range(1, grams):
        h = (h * GRAM_MUL + seq[:, grams - 1 - back:grams - 1 - back + T]) % GRAM_MOD  # the id `back` places back
        rows.append(h % buckets)
    return rows, seq[:, seq.shape[1] - (grams - 1):]


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
        W = cfg.head_width
        self.readout = nn.Sequential(nn.Linear(H, W), nn.GELU()) if W else None  # the head's hidden layer
        self.head = nn.Linear(W or H, V)
        width = cfg.embedding or V  # the tables' rows add to the input vector, one-hot or embedded
        self.grams = nn.ModuleList(nn.Embedding(cfg.gram_buckets, width) for _ in range(2, cfg.grams + 1))
        for table in self.grams:
            nn.init.normal_(table.weight, std=GRAM_STD)
        self.state_names = tuple(state_shapes(cfg))  # the state tuple's tensors, in order

    def split(self, state: State | None, batch: int) -> tuple[State | None, torch.Tensor | None]:
        """A state tuple -> (the cell's part, recent ids + 1 (B, K-1) int64 or None without hashed contexts)."""
        if not self.cfg.grams:
            return state, None
        if state is None:
            return None, torch.zeros(batch, self.cfg.grams - 1, dtype=torch.long, device=self.head.weight.device)
        return state[:-1], state[-1][0].long()

    def gram_vectors(self, ids: torch.Tensor, recent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids (B, T), recent (B, K-1) -> (the sum of the hashed context vectors (B, T, E), the new recent as the
        state's (1, B, K-1) float tensor)."""
        rows, recent = context_rows(ids, recent, self.cfg.grams, self.cfg.gram_buckets)
        return sum(table(r) for table, r in zip(self.grams, rows)), recent[None].float()

    def inputs(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, T) ids -> (B, T, E) input vectors, hashed contexts aside."""
        if self.embed is not None:
            return self.embed(ids)
        return F.one_hot(ids, self.cfg.vocab_size).to(self.head.weight.dtype)

    def forward(self, ids: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        out, state = self.features(ids, state)
        return self.logits(out), state  # (B, T, V)

    def logits(self, out: torch.Tensor) -> torch.Tensor:
        """The head: the last recurrent layer's output (..., H) -> logits (..., V)."""
        out = self.drop(out)
        return self.head(self.readout(out) if self.readout is not None else out)

    def features(self, ids: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """The recurrent layers' output before the head, and the new state: ids (B, T) -> ((B, T, H), state). What
        only needs the state (a long start text read before writing) skips the head's (B, T, V) product."""
        cell_state, recent = self.split(state, ids.shape[0])
        x, tail = self.inputs(ids), ()  # (B, T, E)
        if recent is not None:
            more, new_recent = self.gram_vectors(ids, recent)
            x, tail = x + more, (new_recent,)
        out, h = self.rnn(x, self.cell.to_fused(cell_state))  # out (B, T, H); each state tensor (L, B, H)
        return out, self.cell.from_fused(h) + tail

    def num_parameters(self, tables: bool = True) -> int:
        """Weights in all; tables=False: the network's alone, leaving out the hashed context tables."""
        skip = {id(p) for p in self.grams.parameters()} if not tables else set()
        return sum(p.numel() for p in self.parameters() if id(p) not in skip)


def forward_flops(cfg: ModelConfig, head: bool = True, lookup: bool = False) -> float:
    """FLOPs of one character through the network (2 x multiply-adds of the matrix products).

    head: count the head, its hidden layer too. lookup: the first layer's input product is a table read, as in
    the sampler's step; otherwise a one-hot input counts as the full (V-wide) product that the fused module
    computes. Training costs about 3x this (the backward pass is about twice the forward)."""
    cell, H, V = CELLS[cfg.cell], cfg.hidden_size, cfg.vocab_size
    layers = sum(cell.layer_flops(cfg.embedding or V if i == 0 else H, H, lookup=lookup and i == 0)
                 for i in range(cfg.num_layers))
    W = cfg.head_width
    return layers + ((2 * H * W + 2 * W * V if W else 2 * H * V) if head else 0)


def detach(state: State | None) -> State | None:
    """Cut the graph at a batch boundary (truncated BPTT) while keeping the values."""
    return None if state is None else tuple(s.detach() for s in state)
