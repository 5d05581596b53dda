"""Recurrent layers: drop-in replacements for torch.nn.RNN, LSTM, GRU and their cells.

Same constructor arguments, parameter names (`weight_ih_l0`, `weight_hh_l1_reverse`, ...), state_dict
keys, initialization (uniform ±1/√hidden) and return conventions as torch, so a torch checkpoint loads
unchanged. Each layer and direction is one native op over the whole sequence (replearn.ops.rnn);
layers and directions are composed here, time steps never are.

Differences from torch, by design:
- `recurrent_init="orthogonal"` initializes each gate's H × H block of the recurrent weights with
  `replearn.nn.init.orthogonal_` (course notes §6.3.1); the default ("uniform") is torch's.
- `forward(input, hx=None, lengths=None)`: variable lengths can be given as a tensor instead of a
  PackedSequence (outputs past a sequence's end are zero, states are taken at its end). A torch
  PackedSequence is also accepted and answered with one, as torch does.
- `proj_size` (LSTM with projections, Sak et al. 2014) as torch's: h_t = W_hr (o_t ⊙ tanh(c_t)) with
  `weight_hr_l{k}` (proj_size, hidden_size); outputs and h_n have proj_size features, c_n hidden_size.
- CUDA tensors: float32, float16 and bfloat16 (float32 states and accumulation inside the kernels).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .. import ops
from .init import orthogonal_

__all__ = ["RNNBase", "RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell"]

_GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}
_OP = {"RNN_TANH": "rnn_tanh", "RNN_RELU": "rnn_relu", "LSTM": "lstm", "GRU": "gru"}
_RECURRENT_INITS = ("uniform", "orthogonal")


def _init_recurrent(weight_hh: torch.Tensor, hidden_size: int, how: str) -> None:
    if how == "orthogonal":
        for block in weight_hh.split(hidden_size, dim=0):
            orthogonal_(block)


def _check_recurrent_init(owner: str, recurrent_init: str) -> None:
    if recurrent_init not in _RECURRENT_INITS:
        raise ValueError(f"{owner}: argument 'recurrent_init' expected one of {_RECURRENT_INITS} but got {recurrent_init!r}")


def _mode_of(nonlinearity: str) -> str:
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"RNN: argument 'nonlinearity' expected 'tanh' or 'relu' but got {nonlinearity!r}")
    return "RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU"


class RNNBase(nn.Module):
    """Multi-layer, optionally bidirectional recurrent layer over native whole-sequence ops."""

    def __init__(
        self,
        mode: str,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device=None,
        dtype=None,
        recurrent_init: str = "uniform",
    ) -> None:
        super().__init__()
        if mode not in _GATES:
            raise ValueError(f"RNNBase: argument 'mode' expected one of {sorted(_GATES)} but got {mode!r}")
        if not isinstance(proj_size, int) or isinstance(proj_size, bool) or proj_size < 0:
            raise ValueError(f"{type(self).__name__}: argument 'proj_size' expected a non-negative int (0 disables the "
                             f"projection) but got {proj_size!r}")  # fmt: skip
        if proj_size and mode != "LSTM":
            raise ValueError(f"{type(self).__name__}: argument 'proj_size' is only supported for the LSTM, not {mode}")
        if proj_size and isinstance(hidden_size, int) and proj_size >= hidden_size:
            raise ValueError(f"{type(self).__name__}: argument 'proj_size' expected a value smaller than hidden_size "
                             f"({hidden_size}) but got {proj_size}")  # fmt: skip
        if not (isinstance(hidden_size, int) and hidden_size > 0):
            raise ValueError(f"{type(self).__name__}: argument 'hidden_size' expected a positive int but got {hidden_size!r}")
        if not (isinstance(num_layers, int) and num_layers > 0):
            raise ValueError(f"{type(self).__name__}: argument 'num_layers' expected a positive int but got {num_layers!r}")
        if not (0.0 <= float(dropout) <= 1.0) or isinstance(dropout, bool):
            raise ValueError(f"{type(self).__name__}: argument 'dropout' expected a number in [0, 1] but got {dropout!r}")
        _check_recurrent_init(type(self).__name__, recurrent_init)
        self.mode = mode
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.proj_size = proj_size
        self.recurrent_init = recurrent_init
        factory = {"device": device, "dtype": dtype}
        gates = _GATES[mode] * hidden_size
        directions = 2 if bidirectional else 1
        state = proj_size or hidden_size  # features of h and of the outputs
        self._flat_weights_names = []
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else state * directions
            for direction in range(directions):
                suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
                params = [("weight_ih", (gates, layer_input)), ("weight_hh", (gates, state))]
                if bias:
                    params += [("bias_ih", (gates,)), ("bias_hh", (gates,))]
                if proj_size:  # torch's order: the projection comes last
                    params += [("weight_hr", (proj_size, hidden_size))]
                for name, shape in params:
                    setattr(self, name + suffix, nn.Parameter(torch.empty(shape, **factory)))
                    self._flat_weights_names.append(name + suffix)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torch's initialization, U(−1/√H, 1/√H) for every parameter, then `recurrent_init`."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        with torch.no_grad():
            for name in self._flat_weights_names:
                param = getattr(self, name)
                param.uniform_(-bound, bound)
                if name.startswith("weight_hh"):
                    _init_recurrent(param, self.hidden_size, self.recurrent_init)

    def flatten_parameters(self) -> None:
        """Does nothing: torch's repacks the weights into one buffer for cuDNN; the native kernels read
        each parameter where it is. Kept so that code written for torch.nn.RNNBase runs unchanged."""

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        """The parameters per layer and direction, in torch's order (w_ih, w_hh, b_ih, b_hh, w_hr)."""
        per_direction = len(self._flat_weights_names) // (self.num_layers * (2 if self.bidirectional else 1))
        names = self._flat_weights_names
        return [[getattr(self, n) for n in names[i : i + per_direction]] for i in range(0, len(names), per_direction)]

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if self.mode == "RNN_RELU":
            s += ", nonlinearity='relu'"
        for key, default in (("bias", True), ("batch_first", False), ("dropout", 0.0), ("bidirectional", False),
                             ("proj_size", 0), ("recurrent_init", "uniform")):  # fmt: skip
            if getattr(self, key) != default:
                s += f", {key}={getattr(self, key)!r}"
        return s

    def _layer_params(self, layer: int, direction: int):
        suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
        get = lambda name: getattr(self, name + suffix) if self.bias or not name.startswith("bias") else None  # noqa: E731
        w_hr = getattr(self, "weight_hr" + suffix) if self.proj_size else None
        return get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh"), w_hr

    def forward(self, input, hx=None, lengths: torch.Tensor | None = None):
        """Runs the stack over a whole sequence.

        Args:
            input: (T, B, I), or (B, T, I) when batch_first, or unbatched (T, I); or a PackedSequence.
            hx: initial states (L·D, B, H) — for the LSTM a pair (h_0, c_0), h_0 (L·D, B, proj_size) with a
                projection — or None for zeros.
            lengths: optional (B) lengths of the sequences in a padded batch (see the module docstring).

        Returns:
            (output, h_n) — for the LSTM (output, (h_n, c_n)) — shaped as torch's.
        """
        packed = isinstance(input, PackedSequence)
        if packed:
            if lengths is not None:
                raise ValueError(f"{type(self).__name__}: pass either a PackedSequence or 'lengths', not both")
            # Back to the caller's batch order, in which torch takes hx and returns h_n as well.
            x, lengths = pad_packed_sequence(input, batch_first=False)
        else:
            x = input
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{type(self).__name__}: argument 'input' expected a Tensor or PackedSequence but got "
                            f"{type(x).__name__}")  # fmt: skip
        unbatched = x.dim() == 2
        if unbatched:
            x = x.unsqueeze(1)
            if hx is not None:
                hx = tuple(h.unsqueeze(1) for h in hx) if self.mode == "LSTM" else hx.unsqueeze(1)
        elif x.dim() != 3:
            raise ValueError(f"{type(self).__name__}: argument 'input' expected 2 or 3 dimensions but got shape "
                             f"{tuple(x.shape)}")  # fmt: skip
        elif self.batch_first and not packed:
            x = x.transpose(0, 1)
        output, h_n, c_n = self._run(x, hx, lengths)
        if packed:
            out = pack_padded_sequence(output, lengths, enforce_sorted=False)
            output = PackedSequence(out.data, input.batch_sizes, input.sorted_indices, input.unsorted_indices)
        elif unbatched:
            output, h_n = output.squeeze(1), h_n.squeeze(1)
            c_n = None if c_n is None else c_n.squeeze(1)
        elif self.batch_first:
            output = output.transpose(0, 1)
        return (output, (h_n, c_n)) if self.mode == "LSTM" else (output, h_n)

    def _run(self, x: torch.Tensor, hx, lengths):
        batch = x.shape[1]
        directions = 2 if self.bidirectional else 1
        lstm = self.mode == "LSTM"
        cell_shape = (self.num_layers * directions, batch, self.hidden_size)
        state_shape = (self.num_layers * directions, batch, self.proj_size or self.hidden_size)
        if hx is None:
            h0 = x.new_zeros(state_shape)
            c0 = x.new_zeros(cell_shape) if lstm else None
        else:
            h0, c0 = hx if lstm else (hx, None)
            for name, s, shape in (("h_0", h0, state_shape), ("c_0", c0, cell_shape)):
                if s is not None and tuple(s.shape) != shape:
                    raise ValueError(f"{type(self).__name__}: initial state '{name}' expected shape {shape} "
                                     f"but got {tuple(s.shape)}")  # fmt: skip
        if lengths is not None:
            lengths = torch.as_tensor(lengths)
        op = getattr(ops, _OP[self.mode])
        h_finals, c_finals = [], []
        layer_input = x
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(directions):
                k = layer * directions + direction
                w_ih, w_hh, b_ih, b_hh, w_hr = self._layer_params(layer, direction)
                reverse = direction == 1
                if w_hr is not None:
                    y, h_n, c_n = ops.lstm_proj(layer_input, h0[k], c0[k], w_ih, w_hh, w_hr, b_ih, b_hh, lengths,
                                                reverse)  # fmt: skip
                    c_finals.append(c_n)
                elif lstm:
                    y, h_n, c_n = op(layer_input, h0[k], c0[k], w_ih, w_hh, b_ih, b_hh, lengths, reverse)
                    c_finals.append(c_n)
                else:
                    y, h_n = op(layer_input, h0[k], w_ih, w_hh, b_ih, b_hh, lengths, reverse)
                outputs.append(y)
                h_finals.append(h_n)
            layer_input = outputs[0] if directions == 1 else torch.cat(outputs, dim=2)
            if self.dropout and self.training and layer < self.num_layers - 1:
                # Inter-layer dropout as torch applies it; autograd keeps the mask for backward.
                layer_input = nn.functional.dropout(layer_input, self.dropout, training=True)
        h_n = torch.stack(h_finals)
        c_n = torch.stack(c_finals) if lstm else None
        return layer_input, h_n, c_n


class RNN(RNNBase):
    """Elman RNN, h_t = tanh or relu(W_ih x_t + b_ih + W_hh h_{t−1} + b_hh); torch.nn.RNN's arguments."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None, recurrent_init: str = "uniform") -> None:  # fmt: skip
        self.nonlinearity = nonlinearity
        super().__init__(_mode_of(nonlinearity), input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, device, dtype, recurrent_init)  # fmt: skip


class LSTM(RNNBase):
    """LSTM (Hochreiter & Schmidhuber 1997) with torch.nn.LSTM's arguments; gates i, f, g, o."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0,
                 device=None, dtype=None, recurrent_init: str = "uniform") -> None:  # fmt: skip
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         proj_size, device, dtype, recurrent_init)  # fmt: skip


class GRU(RNNBase):
    """GRU (Cho et al. 2014) with torch.nn.GRU's arguments; gates r, z, n, h_t = (1 − z) n + z h_{t−1}."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, device=None,
                 dtype=None, recurrent_init: str = "uniform") -> None:  # fmt: skip
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, 0,
                         device, dtype, recurrent_init)  # fmt: skip


class _CellBase(nn.Module):
    """One step of a recurrent cell: the whole-sequence op over a sequence of length one."""

    def __init__(self, mode: str, input_size: int, hidden_size: int, bias: bool, device, dtype,
                 recurrent_init: str) -> None:  # fmt: skip
        super().__init__()
        _check_recurrent_init(type(self).__name__, recurrent_init)
        self.mode = mode
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        self.recurrent_init = recurrent_init
        factory = {"device": device, "dtype": dtype}
        gates = _GATES[mode] * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(gates, input_size, **factory))
        self.weight_hh = nn.Parameter(torch.empty(gates, hidden_size, **factory))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(gates, **factory))
            self.bias_hh = nn.Parameter(torch.empty(gates, **factory))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)
        with torch.no_grad():
            for param in self.parameters():
                param.uniform_(-bound, bound)
            _init_recurrent(self.weight_hh, self.hidden_size, self.recurrent_init)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}" + ("" if self.bias else ", bias=False")

    def _step(self, input: torch.Tensor, hx):
        unbatched = input.dim() == 1
        x = input.unsqueeze(0) if unbatched else input
        if x.dim() != 2:
            raise ValueError(f"{type(self).__name__}: argument 'input' expected 1 or 2 dimensions but got shape "
                             f"{tuple(input.shape)}")  # fmt: skip
        lstm = self.mode == "LSTM"
        if hx is None:
            zeros = x.new_zeros(x.shape[0], self.hidden_size)
            hx = (zeros, zeros) if lstm else zeros
        elif unbatched:
            hx = tuple(h.unsqueeze(0) for h in hx) if lstm else hx.unsqueeze(0)
        op = getattr(ops, _OP[self.mode])
        if lstm:
            _, h, c = op(x.unsqueeze(0), hx[0], hx[1], self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
            return (h.squeeze(0), c.squeeze(0)) if unbatched else (h, c)
        _, h = op(x.unsqueeze(0), hx, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        return h.squeeze(0) if unbatched else h

    def forward(self, input: torch.Tensor, hx=None):
        return self._step(input, hx)


class RNNCell(_CellBase):
    """One Elman step; torch.nn.RNNCell's arguments and parameter names."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh", device=None,
                 dtype=None, recurrent_init: str = "uniform") -> None:  # fmt: skip
        self.nonlinearity = nonlinearity
        super().__init__(_mode_of(nonlinearity), input_size, hidden_size, bias, device, dtype, recurrent_init)


class LSTMCell(_CellBase):
    """One LSTM step, returning (h', c'); torch.nn.LSTMCell's arguments and parameter names."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None,
                 recurrent_init: str = "uniform") -> None:  # fmt: skip
        super().__init__("LSTM", input_size, hidden_size, bias, device, dtype, recurrent_init)


class GRUCell(_CellBase):
    """One GRU step; torch.nn.GRUCell's arguments and parameter names."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None,
                 recurrent_init: str = "uniform") -> None:  # fmt: skip
        super().__init__("GRU", input_size, hidden_size, bias, device, dtype, recurrent_init)
