"""CharRNN: one model class for every cell type, behind one interface.

    logits, state = model(ids, state)      # ids (B, T) -> logits (B, T, V)

`state` is a tuple of (num_layers, B, H) tensors, (h, c) for an LSTM and (h,) for a GRU or a vanilla
RNN; callers pass it back without looking inside, so training and sampling never ask which cell runs.
The recurrent stack is PyTorch's fused nn.LSTM / nn.GRU / nn.RNN (oneDNN on CPU, cuDNN on GPU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig

State = tuple[torch.Tensor, ...]
_CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


class CharRNN(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size < 1:
            raise ValueError("ModelConfig.vocab_size must be set from the vocabulary before building a model")
        self.cfg = cfg
        V, H = cfg.vocab_size, cfg.hidden_size
        # one-hot input (embedding=0) feeds V-wide indicator vectors, exactly the notebooks' model
        self.embed = nn.Embedding(V, cfg.embedding) if cfg.embedding else None
        extra = {"nonlinearity": "tanh"} if cfg.cell == "rnn" else {}
        self.rnn = _CELLS[cfg.cell](cfg.embedding or V, H, num_layers=cfg.num_layers, batch_first=True,
                                    dropout=cfg.dropout if cfg.num_layers > 1 else 0.0, **extra)
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(H, V)
        if cfg.cell == "lstm" and cfg.forget_bias:
            with torch.no_grad():  # gate order i, f, g, o: the forget gate's bias is rows H:2H of the sum b_ih + b_hh
                for k in range(cfg.num_layers):
                    getattr(self.rnn, f"bias_ih_l{k}")[H:2 * H] = cfg.forget_bias
                    getattr(self.rnn, f"bias_hh_l{k}")[H:2 * H] = 0.0

    def inputs(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, T) ids -> (B, T, E) input vectors."""
        if self.embed is not None:
            return self.embed(ids)
        return F.one_hot(ids, self.cfg.vocab_size).to(self.head.weight.dtype)

    def forward(self, ids: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        x = self.inputs(ids)  # (B, T, E)
        lstm = self.cfg.cell == "lstm"
        hx = None if state is None else (state if lstm else state[0])
        out, h = self.rnn(x, hx)  # out (B, T, H); h: (h, c) for an LSTM, else h; each (L, B, H)
        new_state: State = tuple(h) if lstm else (h,)
        return self.head(self.drop(out)), new_state  # (B, T, V)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def detach(state: State | None) -> State | None:
    """Cut the graph at a batch boundary (truncated BPTT) while keeping the values."""
    return None if state is None else tuple(s.detach() for s in state)

