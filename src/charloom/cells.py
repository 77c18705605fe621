"""One entry per recurrent cell type: everything that differs between an LSTM, a GRU and a vanilla RNN.

An entry gives the fused sequence module (oneDNN on CPU, cuDNN on GPU) that training and evaluation run,
the one-step update that sampling runs, the layout of the state, the initialisation, and the FLOPs a
character costs. The model, the sampler, the runtime's probe and the benchmarks read these entries and
never ask which cell they run; a new cell is one more entry in `CELLS`.

The one-step update works on one layer of a batch: `gi` is the layer's input product with its input
bias, (B, G*H) where G is the number of gate blocks, and the state is the layer's tuple of (B, H).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .config import CELL_STATES

LayerState = tuple[torch.Tensor, ...]  # one layer's state: each (B, H)
Step = Callable[[torch.Tensor, LayerState, torch.Tensor, torch.Tensor], LayerState]


def _lstm_step(gi: torch.Tensor, state: LayerState, w_hh: torch.Tensor, b_hh: torch.Tensor) -> LayerState:
    """gi already holds b_hh (folded), so the recurrent product adds onto it. Gate order i, f, g, o."""
    h, c = state
    i, f, g, o = torch.addmm(gi, h, w_hh).chunk(4, 1)  # each (B, H)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def _gru_step(gi: torch.Tensor, state: LayerState, w_hh: torch.Tensor, b_hh: torch.Tensor) -> LayerState:
    """b_hh stays apart: the candidate reads r * (W_hn h + b_hn). Gate order r, z, n."""
    (h,) = state
    ir, iz, in_ = gi.chunk(3, 1)
    hr, hz, hn = torch.addmm(b_hh, h, w_hh).chunk(3, 1)  # each (B, H)
    r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
    n = torch.tanh(in_ + r * hn)
    return (n + z * (h - n),)


def _rnn_step(gi: torch.Tensor, state: LayerState, w_hh: torch.Tensor, b_hh: torch.Tensor) -> LayerState:
    (h,) = state
    return (torch.tanh(torch.addmm(gi, h, w_hh)),)


def _lstm_init(module: nn.Module, forget_bias: float) -> None:
    """forget_bias != 0: the forget gate's bias (rows H:2H of the sum b_ih + b_hh) starts at it."""
    if not forget_bias:
        return
    H = module.hidden_size
    with torch.no_grad():
        for k in range(module.num_layers):
            getattr(module, f"bias_ih_l{k}")[H:2 * H] = forget_bias
            getattr(module, f"bias_hh_l{k}")[H:2 * H] = 0.0


def _keep_init(module: nn.Module, forget_bias: float) -> None:
    """PyTorch's own initialisation (forget_bias has no meaning without a forget gate)."""


@dataclass(frozen=True)
class Cell:
    name: str
    gates: int  # G: gate blocks per layer; a layer's weights are (G*H, E) and (G*H, H)
    fused: type[nn.RNNBase]  # the whole-sequence module
    state: tuple[str, ...]  # names of the state tensors, each (num_layers, B, H)
    step: Step  # one time step of one layer (see the module docstring)
    folds_hh_bias: bool  # b_hh can be added to the input product once, before the recurrent product
    init: Callable[[nn.Module, float], None]  # after PyTorch's initialisation: (module, forget_bias)
    options: tuple[tuple[str, str], ...] = ()  # extra keyword arguments of the fused module

    def make(self, input_size: int, hidden_size: int, num_layers: int, dropout: float = 0.0) -> nn.RNNBase:
        """The fused module, batch first: (B, T, E) -> (B, T, H)."""
        return self.fused(input_size, hidden_size, num_layers=num_layers, batch_first=True,
                          dropout=dropout if num_layers > 1 else 0.0, **dict(self.options))

    def to_fused(self, state: tuple[torch.Tensor, ...] | None):
        """charloom's state tuple -> what the fused module takes as its initial state."""
        if state is None:
            return None
        return tuple(state) if len(self.state) > 1 else state[0]

    def from_fused(self, h) -> tuple[torch.Tensor, ...]:
        """What the fused module returns as its final state -> charloom's state tuple."""
        return tuple(h) if len(self.state) > 1 else (h,)

    def layer_flops(self, input_size: int, hidden_size: int, lookup: bool = False) -> float:
        """FLOPs per character of one layer: 2 x multiply-adds of the input and recurrent products.
        lookup: the input product is a table read (the sampler's first layer), so it costs nothing."""
        return 2 * self.gates * hidden_size * ((0 if lookup else input_size) + hidden_size)


CELLS: dict[str, Cell] = {
    "lstm": Cell("lstm", 4, nn.LSTM, CELL_STATES["lstm"], _lstm_step, True, _lstm_init),
    "gru": Cell("gru", 3, nn.GRU, CELL_STATES["gru"], _gru_step, False, _keep_init),
    "rnn": Cell("rnn", 1, nn.RNN, CELL_STATES["rnn"], _rnn_step, True, _keep_init, (("nonlinearity", "tanh"),)),
}
assert {name: cell.state for name, cell in CELLS.items()} == CELL_STATES, "config.CELL_STATES names each cell's state"
