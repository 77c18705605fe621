"""CharRNN: one model class for every cell type, behind one interface.

    logits, state = model(ids, state)      # ids (B, T) -> logits (B, T, V)

`state` is a tuple of (num_layers, B, H) tensors, (h, c) for an LSTM and (h,) for a GRU or a vanilla
RNN (then the hashed contexts' and the attention head's, below); callers pass it back without looking
inside, so training and sampling never ask which cell runs.
What differs between cells (the fused module, the state layout, initialisation) comes from `cells.CELLS`.

The head maps the last layer's output to logits through a hidden layer (`ModelConfig.head_hidden`, GELU;
as wide as the recurrent layer by default, none in model files from before it). Its products take every
character of a batch at once, so its units cost far less time than recurrent ones, whose products wait on
each other from one character to the next.

With an attention head (`ModelConfig.attention`, `Recall`), the last recurrent layer's output at each position
gains what one attention head reads from that layer's last `memory` outputs, before the head. The state then
ends with `memory` (memory, B, 2 * attention + 1): the keys and values of the outputs read before the next call,
so that a text read in pieces is read as whole. Its products, too, take every character of a batch at once.

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


class Recall(nn.Module):
    """One attention head over the last `memory` outputs of the recurrent layer, added to its output: a direct look
    at the recent text's states, where the recurrent state has to squeeze it into one vector. Keys and values of
    the outputs read before a call come in the state, (memory, B, 2 * width + 1): each position's key, its value,
    and 1 where the position holds one (0: before the text).

    With shifted keys, a position's key also reads the output before it: a query that matches the text up to
    position j - 1 then reads the value of position j, whose output holds the character that came next (the
    copy of a name or an identifier seen before)."""

    def __init__(self, hidden: int, width: int, memory: int, shifted: bool = True):
        super().__init__()
        self.width, self.memory = width, memory
        self.query = nn.Linear(hidden, width, bias=False)
        self.keys = nn.Linear(hidden, 2 * width, bias=False)  # key and value
        self.before = nn.Linear(hidden, width, bias=False) if shifted else None  # the key's part from the output before
        self.out = nn.Linear(width, hidden, bias=False)
        nn.init.zeros_(self.out.weight)  # it starts by adding nothing

    def forward(self, x: torch.Tensor, memory: torch.Tensor | None, previous: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, H), memory (M, B, 2W+1) or None, previous (B, H): the output before x's first position, or
        None (zeros: before the text) -> (x plus what the head reads (B, T, H), the new memory)."""
        M, W = self.memory, self.width
        if memory is None:
            memory = x.new_zeros(M, x.shape[0], 2 * W + 1)
        # the query's, key's, value's and shifted key's products as one: one pass over x forward and backward where
        # four would each read it (and, under autocast, cast it); the scores' scale goes on the query, W wide where
        # the scores are M+T wide (the weights stay unscaled: an int8 export quantises the block with one scale)
        made = F.linear(x, self.joined())  # (B, T, 3W or 4W)
        query, new = made[..., :W] * W ** -0.5, made[..., W:3 * W]  # (B, T, W), (B, T, 2W): key and value
        # the ones here and below are made from the input, so that an exported graph never holds an operator
        # that allocates as much as a number in the file says
        one = new[..., :1] * 0 + 1
        if self.before is not None:  # the product before the shift: (B, T, W) moves, not (B, T, H)
            part = made[..., 3 * W:]  # (B, T, W)
            first = part[:, :1] * 0 if previous is None else self.before(previous.to(x.dtype))[:, None]
            earlier = torch.cat([first, part[:, :-1]], 1)  # (B, T, W): each position's from the output before it
            new = torch.cat([new[..., :W] + earlier, new[..., W:], one], -1)  # (B, T, 2W+1)
        else:
            new = torch.cat([new, one], -1)  # (B, T, 2W+1)
        seen = torch.cat([memory.transpose(0, 1).to(new.dtype), new], 1)  # (B, M+T, 2W+1)
        k, v, filled = seen[..., :W], seen[..., W:2 * W], seen[..., 2 * W]
        ones = new[:1, :, 2 * W:] * (seen[:1, :, 2 * W] * 0 + 1)[:, None, :]  # (1, T, M+T); (0, ...) for no rows
        # position t of the call is slot M + t of `seen`: it reads the M slots up to and including its own
        window = torch.triu(torch.tril(ones, M), 1) > 0.5  # (1, T, M+T)
        allowed = window & (filled[:, None, :] > 0.5)  # (B, T, M+T)
        scores = (query @ k.transpose(1, 2)).float()  # (B, T, M+T)
        weights = torch.softmax(scores.masked_fill(~allowed, float("-inf")), -1).to(v.dtype)
        return x + self.out(weights @ v), seen[:, -M:].transpose(0, 1).float()

    def joined(self) -> torch.Tensor:
        """The query's, key's and value's, and shifted key's weights as one, in that order: (3W or 4W, H)."""
        parts = [self.query.weight, self.keys.weight]
        if self.before is not None:
            parts.append(self.before.weight)
        return torch.cat(parts)


class RecallStep:
    """`Recall`'s update for one position of a batch, for the sampler: equal to `recall(x[:, None], memory,
    previous)` to float rounding, in a third of the operations (at batch 1 each costs more than its arithmetic):
    the query's, key's, value's and shifted key's products as one, of x and the output before it together, and
    the memory moved on by one slot, where the whole-text path builds masks for a piece of any length."""

    def __init__(self, recall: Recall):
        W = recall.width
        with torch.no_grad():
            joined = recall.joined()  # the scores' scale folded into the query below
            self.weight = torch.cat([joined[:W] / W ** 0.5, joined[W:]]).T.contiguous()  # (H, 3W or 4W)
            self.out = recall.out.weight.T.contiguous()  # (W, H)
        self.width, self.memory, self.shifted = W, recall.memory, recall.before is not None

    def __call__(self, x: torch.Tensor, memory: torch.Tensor | None, previous: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, H), memory (M, B, 2W+1) or None, previous (B, H) or None (before the text) -> (x plus what the
        head reads (B, H), the new memory)."""
        B, W = x.shape[0], self.width
        if memory is None:
            memory = x.new_zeros(self.memory, B, 2 * W + 1)
        both = self.shifted and previous is not None
        made = (torch.cat([x, previous]) if both else x) @ self.weight  # (B or 2B, 3W or 4W)
        key = made[:B, W:2 * W] + made[B:, 3 * W:] if both else made[:B, W:2 * W]  # (B, W)
        new = torch.cat([key, made[:B, 2 * W:3 * W], x.new_ones(B, 1)], 1)  # (B, 2W+1): key, value, filled
        memory = torch.cat([memory[1:], new[None]])  # (M, B, 2W+1): the oldest slot out, this position's in
        seen = memory.transpose(0, 1)  # (B, M, 2W+1)
        scores = torch.bmm(seen[..., :W], made[:B, :W, None])[..., 0]  # (B, M)
        scores = scores.masked_fill(seen[..., 2 * W] < 0.5, float("-inf"))
        read = torch.bmm(torch.softmax(scores, -1)[:, None], seen[..., W:2 * W])[:, 0]  # (B, W)
        return torch.addmm(x, read, self.out), memory


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
        self.recall = Recall(H, cfg.attention, cfg.memory, cfg.shifted_keys) if cfg.attention else None
        width = cfg.embedding or V  # the tables' rows add to the input vector, one-hot or embedded
        self.grams = nn.ModuleList(nn.Embedding(cfg.gram_buckets, width) for _ in range(2, cfg.grams + 1))
        for table in self.grams:
            nn.init.normal_(table.weight, std=GRAM_STD)
        self.state_names = tuple(state_shapes(cfg))  # the state tuple's tensors, in order

    def split(self, state: State | None, batch: int
              ) -> tuple[State | None, torch.Tensor | None, torch.Tensor | None]:
        """A state tuple -> (the cell's part, recent ids + 1 (B, K-1) int64 or None without hashed contexts, the
        attention's memory (M, B, 2W+1) or None: none yet, or no attention head)."""
        grams, cells = self.cfg.grams, len(self.cell.state)
        if state is None:
            recent = torch.zeros(batch, grams - 1, dtype=torch.long, device=self.head.weight.device) if grams else None
            return None, recent, None
        return state[:cells], state[cells][0].long() if grams else None, state[-1] if self.recall else None

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
        cell_state, recent, memory = self.split(state, ids.shape[0])
        x, tail = self.inputs(ids), ()  # (B, T, E)
        if recent is not None:
            more, new_recent = self.gram_vectors(ids, recent)
            x, tail = x + more, (new_recent,)
        out, h = self.rnn(x, self.cell.to_fused(cell_state))  # out (B, T, H); each state tensor (L, B, H)
        if self.recall is not None:
            # every cell's state starts with h: its last layer is the output before this call
            out, memory = self.recall(out, memory, cell_state[0][-1] if cell_state is not None else None)
            tail += (memory,)
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
    # an attention head: its query, keys (two products with shifted keys) and values, output, and a full memory's
    # scores and values
    A = cfg.attention
    recall = 2 * ((4 + cfg.shifted_keys) * H * A + 2 * cfg.memory * A) if A else 0
    W = cfg.head_width
    return layers + recall + ((2 * H * W + 2 * W * V if W else 2 * H * V) if head else 0)


def detach(state: State | None) -> State | None:
    """Cut the graph at a batch boundary (truncated BPTT) while keeping the values."""
    return None if state is None else tuple(s.detach() for s in state)
