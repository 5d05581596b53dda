"""Recurrent ops: one layer and one direction of an Elman RNN (tanh or ReLU), an LSTM or a GRU over a
whole sequence, forward and backpropagation through time each in one native call (csrc/rnn).

Equations (course notes, "Recurrent neural networks"; torch's gate order, so weights map one to one):

    Elman  h_t = act(W_ih x_t + b_ih + W_hh h_{t−1} + b_hh)
    LSTM   i, f, g, o = σ, σ, tanh, σ of (W_ih x_t + b_ih + W_hh h_{t−1} + b_hh) split in four
           c_t = f ⊙ c_{t−1} + i ⊙ g,    h_t = o ⊙ tanh(c_t)                   (Hochreiter & Schmidhuber 1997)
    GRU    r, z = σ(W_i{r,z} x_t + b_i{r,z} + W_h{r,z} h_{t−1} + b_h{r,z})
           n = tanh(W_in x_t + b_in + r ⊙ (W_hn h_{t−1} + b_hn)),  h_t = (1 − z) ⊙ n + z ⊙ h_{t−1}  (Cho et al. 2014)

Every op takes time-major x (T, B, I), initial states (B, H), weights W_ih (G·H, I), W_hh (G·H, H),
optional biases (G·H), optional `lengths` (B) and `reverse`; it returns the outputs y (T, B, H) and the
final states. With `lengths`, sequence b is active at t < lengths[b]: its final state is the one at
its own end and its outputs past the end are zero (torch's packed-sequence semantics); `reverse`
processes each sequence from its own last step back to t = 0. Multi-layer and bidirectional stacks
are composed of these in `replearn.nn.RNN/LSTM/GRU` (no Python loop over time anywhere).

The torch ops also return the `reserve` (T, B, ·) that backward reads: activated gates and the states
entering each step (rnn.h), in float32 for float16/bfloat16 inputs (float64 for float64). Dtypes:
float32/float64 on the CPU; float32, float16 and bfloat16 on CUDA, where the states, gates and GEMM
accumulators are float32 and only stored tensors are rounded to the input dtype.
"""

from __future__ import annotations

from typing import Iterable

import torch

from .. import _native
from ._registry import BadInput, OpInfo, Sample, check_tensor, define, register_info

__all__ = ["rnn_tanh", "rnn_relu", "lstm", "lstm_proj", "gru"]

# The native cell codes (csrc/rnn/rnn.h, enum Cell) and gates per cell; `lstm_proj` is the LSTM with a
# projection W_hr (Sak et al. 2014), the same native kernels given w_hr.
_CELL = {"rnn_tanh": 0, "rnn_relu": 1, "lstm": 2, "gru": 3, "lstm_proj": 2}
_GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3, "lstm_proj": 4}
_RESERVE = {"rnn_tanh": 2, "rnn_relu": 2, "lstm": 6, "gru": 5, "lstm_proj": 6}  # reserve columns per hidden unit

# Each op's arguments in schema order; the differentiable ones are the tensors before `lengths`.
_ARGS = {
    "rnn_tanh": ("x", "h0", "w_ih", "w_hh", "b_ih", "b_hh", "lengths", "reverse"),
    "lstm": ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "lengths", "reverse"),
    "lstm_proj": ("x", "h0", "c0", "w_ih", "w_hh", "w_hr", "b_ih", "b_hh", "lengths", "reverse"),
}
_ARGS["rnn_relu"] = _ARGS["gru"] = _ARGS["rnn_tanh"]
# The gradients rnn_backward returns, in order.
_GRADS = ("x", "h0", "c0", "w_ih", "w_hh", "w_hr", "b_ih", "b_hh")


def _contiguous(t):
    return None if t is None else t.contiguous()


def _sizes(w_hh: torch.Tensor, w_hr: torch.Tensor | None) -> tuple[int, int]:
    """(hidden H, state width S): S = P with a projection W_hr (P, H), else H."""
    if w_hr is not None:
        return (w_hr.shape[1], w_hr.shape[0]) if w_hr.dim() == 2 else (0, 0)
    hidden = w_hh.shape[1] if w_hh.dim() == 2 else 0
    return hidden, hidden


def _reserve_width(kind: str, hidden: int, state: int) -> int:
    return _RESERVE[kind] * hidden + (state if kind == "lstm_proj" else 0)


def _lengths_on(lengths: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
    """The lengths as the kernels take them: int64, contiguous, on x's device."""
    if lengths is None:
        return None
    return lengths.to(device=x.device, dtype=torch.int64).contiguous()


# ============================================================================= native forward/backward


def _accumulation_dtype(x: torch.Tensor) -> torch.dtype:
    # The reserve's dtype (csrc/rnn/rnn.h): what the kernels compute in.
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _forward_impl(kind, x, h0, c0, w_ih, w_hh, w_hr, b_ih, b_hh, lengths, reverse):
    cell = _CELL[kind]
    x = x.contiguous()
    w_hh = w_hh.contiguous()
    w_hr = _contiguous(w_hr)
    steps, batch = (x.shape[0], x.shape[1]) if x.dim() == 3 else (0, 0)
    hidden, state = _sizes(w_hh, w_hr)
    y = x.new_empty(steps, batch, state)
    h_n = x.new_empty(batch, state)
    c_n = x.new_empty(batch, hidden) if c0 is not None else None
    reserve = x.new_empty(steps, batch, _reserve_width(kind, hidden, state), dtype=_accumulation_dtype(x))
    ws = _native.workspace("rnn_forward", x, cell, x, w_hh, w_hr)
    _native.launch("rnn_forward", x, cell, x, h0.contiguous(), _contiguous(c0), w_ih.contiguous(), w_hh, w_hr,
                   _contiguous(b_ih), _contiguous(b_hh), _contiguous(lengths), reverse, y, h_n, c_n, reserve, ws)
    return y, h_n, c_n, reserve


def _forward_fake(kind, x, h0, c0, w_ih, w_hh, w_hr, b_ih, b_hh, lengths, reverse):
    for arg, t in dict(h0=h0, c0=c0, w_ih=w_ih, w_hh=w_hh, w_hr=w_hr, b_ih=b_ih, b_hh=b_hh, lengths=lengths).items():
        if t is not None and t.device != x.device:
            raise ValueError(f"{kind}: argument '{arg}' expected a tensor on {x.device} like 'x' but got one on {t.device}")
    steps, batch = x.shape[0], x.shape[1]
    hidden, state = _sizes(w_hh, w_hr)
    return (x.new_empty(steps, batch, state), x.new_empty(batch, state),
            x.new_empty(batch, hidden) if c0 is not None else None,
            x.new_empty(steps, batch, _reserve_width(kind, hidden, state), dtype=_accumulation_dtype(x)))  # fmt: skip


def _grad_shapes(x, w_ih, w_hh, w_hr):
    hidden, state = _sizes(w_hh, w_hr)
    batch = x.shape[1]
    return (x.shape, (batch, state), (batch, hidden), w_ih.shape, w_hh.shape,
            None if w_hr is None else w_hr.shape, w_hh.shape[:1], w_hh.shape[:1])  # fmt: skip


def _backward_mask(mask, grad_c_n, w_hr):
    mask = list(mask)
    mask[2] = mask[2] and grad_c_n is not None
    mask[5] = mask[5] and w_hr is not None
    return mask


def _backward_impl(cell, grad_y, grad_h_n, grad_c_n, x, w_ih, w_hh, w_hr, lengths, reverse, reserve, mask):
    x = x.contiguous()
    w_hh = w_hh.contiguous()
    w_hr = _contiguous(w_hr)
    mask = _backward_mask(mask, grad_c_n, w_hr)
    grads = tuple(x.new_empty(shape) if need else None for shape, need in zip(_grad_shapes(x, w_ih, w_hh, w_hr), mask))
    ws = _native.workspace("rnn_backward", x, cell, x, w_hh, w_hr)
    _native.launch("rnn_backward", x, cell, grad_y.contiguous(), grad_h_n.contiguous(), _contiguous(grad_c_n), x,
                   w_ih.contiguous(), w_hh, w_hr, _contiguous(lengths), reverse, reserve.contiguous(), *grads, ws)
    return grads


def _backward_fake(cell, grad_y, grad_h_n, grad_c_n, x, w_ih, w_hh, w_hr, lengths, reverse, reserve, mask):
    mask = _backward_mask(mask, grad_c_n, w_hr)
    return tuple(x.new_empty(s) if m else None for s, m in zip(_grad_shapes(x, w_ih, w_hh, w_hr), mask))


_rnn_backward = define(
    "rnn_backward(int cell, Tensor grad_y, Tensor grad_h_n, Tensor? grad_c_n, Tensor x, Tensor w_ih, Tensor w_hh, "
    "Tensor? w_hr, Tensor? lengths, bool reverse, Tensor reserve, bool[8] output_mask) "
    "-> (Tensor?, Tensor?, Tensor?, Tensor?, Tensor?, Tensor?, Tensor?, Tensor?)",
    _backward_impl,
    _backward_fake,
)


def _zeros_if_none(grad, like):
    return torch.zeros_like(like) if grad is None else grad


def _make_op(kind: str):
    """Registers `replearn::<kind>`; the LSTMs carry a cell state, `lstm_proj` a projection too."""
    names = _ARGS[kind]
    cell = _CELL[kind]
    has_cell_state = "c0" in names
    differentiable = names[: names.index("lengths")]

    def named(values):
        args = dict(zip(names, values))
        return {name: args.get(name) for name in ("x", "h0", "c0", "w_ih", "w_hh", "w_hr", "b_ih", "b_hh", "lengths",
                                                   "reverse")}  # fmt: skip

    def setup(ctx, inputs, output):
        a = named(inputs)
        reserve = output[-1]
        ctx.mark_non_differentiable(reserve)
        # Outputs without a gradient reach backward as None, not as zeros: torch would otherwise fill
        # a zero "gradient" of the reserve (T, B, ~6H) on every backward — 4 ms of the 95 ms
        # LSTM step (profiled: aten::fill_ of (128, 32, 3072)). backward makes the zeros it needs.
        ctx.set_materialize_grads(False)
        ctx.reverse = a["reverse"]
        ctx.save_for_backward(a["x"], a["w_ih"], a["w_hh"], a["w_hr"], a["lengths"], reserve)

    def backward(ctx, grad_y, grad_h_n, *rest):
        x, w_ih, w_hh, w_hr, lengths, reserve = ctx.saved_tensors
        hidden, state = _sizes(w_hh, w_hr)
        batch = x.shape[1]
        grad_c_n = _zeros_if_none(rest[0], x.new_empty(batch, hidden)) if has_cell_state else None
        need = dict(zip(differentiable, ctx.needs_input_grad))
        mask = [need.get(name, False) for name in _GRADS]
        grads = _rnn_backward(cell, _zeros_if_none(grad_y, x.new_empty(x.shape[0], batch, state)),
                              _zeros_if_none(grad_h_n, x.new_empty(batch, state)), grad_c_n, x, w_ih, w_hh, w_hr,
                              lengths, ctx.reverse, reserve, mask)  # fmt: skip
        by_name = dict(zip(_GRADS, grads))
        return tuple(by_name[name] for name in differentiable) + (None, None)

    tensors = ", ".join(f"Tensor{'?' if name in ('b_ih', 'b_hh') else ''} {name}" for name in differentiable)
    outputs = "(Tensor, Tensor, Tensor, Tensor)" if has_cell_state else "(Tensor, Tensor, Tensor)"
    schema = f"{kind}({tensors}, Tensor? lengths, bool reverse) -> {outputs}"

    def run(fn, values):
        a = named(values)
        y, h_n, c_n, reserve = fn(kind, a["x"], a["h0"], a["c0"], a["w_ih"], a["w_hh"], a["w_hr"], a["b_ih"],
                                  a["b_hh"], a["lengths"], a["reverse"])  # fmt: skip
        return (y, h_n, c_n, reserve) if has_cell_state else (y, h_n, reserve)

    return define(schema, lambda *values: run(_forward_impl, values), lambda *values: run(_forward_fake, values),
                  backward=backward, setup_context=setup)  # fmt: skip


_OPS = {kind: _make_op(kind) for kind in _CELL}


# ==================================================================================== public functions


def _check_args(kind, x, h0, c0, w_ih, w_hh, w_hr, b_ih, b_hh, lengths):
    check_tensor(kind, "x", x)
    check_tensor(kind, "h0", h0)
    if "c0" in _ARGS[kind]:
        check_tensor(kind, "c0", c0)
    check_tensor(kind, "w_ih", w_ih)
    check_tensor(kind, "w_hh", w_hh)
    if "w_hr" in _ARGS[kind]:
        check_tensor(kind, "w_hr", w_hr)
    check_tensor(kind, "b_ih", b_ih, optional=True)
    check_tensor(kind, "b_hh", b_hh, optional=True)
    check_tensor(kind, "lengths", lengths, optional=True)
    if lengths is not None and (lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool):
        raise TypeError(f"{kind}: argument 'lengths' expected an integer tensor but got {lengths.dtype}")
    if lengths is not None and x.is_cuda and x.dim() == 3 and lengths.numel() and not torch.compiler.is_compiling():
        # The CPU kernels check the values (rnn/validate.cpp); the CUDA kernels only clamp them, since
        # reading them there would synchronize. So eager CUDA calls check them here (a host read of a
        # small tensor; torch's packed sequences keep lengths on the CPU anyway).
        low, high = (int(v) for v in torch.aminmax(lengths.detach()))
        if low < 1 or high > x.shape[0]:
            raise ValueError(f"{kind}: argument 'lengths' expected values in [1, {x.shape[0]}] but got values "
                             f"from {low} to {high}")


def _layer(kind, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, w_hr=None):
    _check_args(kind, x, h0, c0, w_ih, w_hh, w_hr, b_ih, b_hh, lengths)
    values = dict(x=x, h0=h0, c0=c0, w_ih=w_ih, w_hh=w_hh, w_hr=w_hr, b_ih=b_ih, b_hh=b_hh,
                  lengths=_lengths_on(lengths, x), reverse=bool(reverse))  # fmt: skip
    outputs = _OPS[kind](*(values[name] for name in _ARGS[kind]))
    return tuple(outputs[:-1])


def rnn_tanh(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, lengths=None, reverse=False):
    """One Elman layer, h_t = tanh(W_ih x_t + b_ih + W_hh h_{t−1} + b_hh), over a whole sequence.

    Args:
        x: (T, B, I) time-major input.
        h0: (B, H) initial state.
        w_ih: (H, I); w_hh: (H, H); b_ih, b_hh: optional (H).
        lengths: optional (B) integer lengths in [1, T] (any device); outputs past a sequence's end are
            zero and its final state is the one at its end.
        reverse: run each sequence from its last step back to the first (a bidirectional layer's second half).

    Returns:
        (y (T, B, H), h_n (B, H)).
    """
    return _layer("rnn_tanh", x, h0, None, w_ih, w_hh, b_ih, b_hh, lengths, reverse)


def rnn_relu(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, lengths=None, reverse=False):
    """One Elman layer with ReLU, h_t = max(0, W_ih x_t + b_ih + W_hh h_{t−1} + b_hh); see rnn_tanh."""
    return _layer("rnn_relu", x, h0, None, w_ih, w_hh, b_ih, b_hh, lengths, reverse)


def lstm(x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, lengths=None, reverse=False):
    """One LSTM layer over a whole sequence (gates i, f, g, o as torch orders them).

    Args:
        x: (T, B, I); h0, c0: (B, H); w_ih: (4H, I); w_hh: (4H, H); b_ih, b_hh: optional (4H).
        lengths, reverse: as in rnn_tanh.

    Returns:
        (y (T, B, H), h_n (B, H), c_n (B, H)).
    """
    return _layer("lstm", x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse)


def lstm_proj(x, h0, c0, w_ih, w_hh, w_hr, b_ih=None, b_hh=None, lengths=None, reverse=False):
    """One LSTM layer with projection (Sak et al. 2014; torch.nn.LSTM's proj_size): h_t = W_hr (o ⊙ tanh(c_t)).

    Args:
        x: (T, B, I); h0: (B, P); c0: (B, H); w_ih: (4H, I); w_hh: (4H, P); w_hr: (P, H);
        b_ih, b_hh: optional (4H). lengths, reverse: as in rnn_tanh.

    Returns:
        (y (T, B, P), h_n (B, P), c_n (B, H)).
    """
    return _layer("lstm_proj", x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, w_hr)


def gru(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, lengths=None, reverse=False):
    """One GRU layer over a whole sequence (gates r, z, n as torch orders them; b_hn inside r ⊙ (·)).

    Args:
        x: (T, B, I); h0: (B, H); w_ih: (3H, I); w_hh: (3H, H); b_ih, b_hh: optional (3H).
        lengths, reverse: as in rnn_tanh.

    Returns:
        (y (T, B, H), h_n (B, H)).
    """
    return _layer("gru", x, h0, None, w_ih, w_hh, b_ih, b_hh, lengths, reverse)


_PUBLIC = {"rnn_tanh": rnn_tanh, "rnn_relu": rnn_relu, "lstm": lstm, "gru": gru, "lstm_proj": lstm_proj}


# ============================================================================= reference and counterpart


def reference(kind, x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, lengths=None, reverse=False, w_hr=None):
    """The layer written from the equations above, one step at a time, in plain PyTorch (`lstm` with
    `w_hr` given is the LSTM with projection)."""
    steps = x.shape[0]
    h, c = h0, c0
    outputs = [None] * steps
    for t in (reversed(range(steps)) if reverse else range(steps)):
        gi = x[t] @ w_ih.T + (0 if b_ih is None else b_ih)
        gh = h @ w_hh.T + (0 if b_hh is None else b_hh)
        c_new = None
        if kind == "rnn_tanh":
            h_new = torch.tanh(gi + gh)
        elif kind == "rnn_relu":
            h_new = torch.relu(gi + gh)
        elif kind == "lstm":
            i, f, g, o = (gi + gh).chunk(4, dim=1)
            c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h_new = torch.sigmoid(o) * torch.tanh(c_new)
            if w_hr is not None:
                h_new = h_new @ w_hr.T
        else:
            ir, iz, in_ = gi.chunk(3, dim=1)
            hr, hz, hn = gh.chunk(3, dim=1)
            r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
            n = torch.tanh(in_ + r * hn)
            h_new = (1 - z) * n + z * h
        if lengths is None:
            active = torch.ones(x.shape[1], 1, dtype=torch.bool, device=x.device)
        else:
            active = (t < lengths.to(x.device)).unsqueeze(1)
        h = torch.where(active, h_new, h)
        if c_new is not None:
            c = torch.where(active, c_new, c)
        outputs[t] = torch.where(active, h_new, torch.zeros_like(h_new))
    y = torch.stack(outputs)
    return (y, h, c) if kind == "lstm" else (y, h)


def _flip_within(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Reverses each sequence of time-major x within its own length (padding stays in place)."""
    steps, batch = x.shape[0], x.shape[1]
    if lengths is None:
        return x.flip(0)
    t = torch.arange(steps, device=x.device).unsqueeze(1)
    lengths = lengths.to(x.device).unsqueeze(0)
    index = torch.where(t < lengths, lengths - 1 - t, t)  # (T, B)
    return x.gather(0, index.unsqueeze(2).expand(-1, -1, x.shape[2]))


def torch_layer(kind, x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, lengths=None, reverse=False, w_hr=None):
    """The same layer through torch's own fused RNN kernels (torch.lstm/gru/rnn_*), at x's dtype.

    Reverse is a forward pass over each sequence flipped within its length; lengths go through a
    PackedSequence, as torch.nn.LSTM/GRU/RNN take them.
    """
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    has_bias = b_ih is not None or b_hh is not None
    params = [w_ih, w_hh]
    if has_bias:
        params += [b_ih if b_ih is not None else w_ih.new_zeros(w_ih.shape[0]),
                   b_hh if b_hh is not None else w_hh.new_zeros(w_hh.shape[0])]  # fmt: skip
    if w_hr is not None:
        params.append(w_hr)  # torch's flat weights of an LSTM with projection: ..., weight_hr
    fn = {"rnn_tanh": torch.rnn_tanh, "rnn_relu": torch.rnn_relu, "lstm": torch.lstm, "gru": torch.gru}[kind]
    inputs = _flip_within(x, lengths) if reverse else x
    hx = (h0.unsqueeze(0), c0.unsqueeze(0)) if kind == "lstm" else h0.unsqueeze(0)
    # train=True with dropout 0 is the same computation, and cuDNN refuses a backward of train=False.
    if lengths is None:
        out = fn(inputs, hx, params, has_bias, 1, 0.0, True, False, False)
        y, states = out[0], out[1:]
    else:
        packed = pack_padded_sequence(inputs, lengths.cpu(), enforce_sorted=False)
        sort = packed.sorted_indices
        hx_sorted = tuple(s.index_select(1, sort) for s in hx) if kind == "lstm" else hx.index_select(1, sort)
        out = fn(packed.data, packed.batch_sizes, hx_sorted, params, has_bias, 1, 0.0, True, False)
        y, _ = pad_packed_sequence(packed._replace(data=out[0]), total_length=x.shape[0])
        states = tuple(s.index_select(1, packed.unsorted_indices) for s in out[1:])
    if reverse:
        y = _flip_within(y, lengths)
    return (y,) + tuple(s.squeeze(0) for s in states)


# ========================================================================================== OpInfos


def _randn(shape, dtype, device, gen, scale=1.0):
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype).to(device)


# (T, B, I, H, lengths or None, reverse, biases): odd sizes, batch 1, one step, unsorted lengths.
_CASES = [
    (1, 1, 1, 1, None, False, "both"),
    (5, 3, 4, 7, None, False, "both"),
    (6, 4, 3, 5, [6, 2, 5, 1], False, "both"),
    (6, 4, 3, 5, [3, 6, 1, 4], True, "both"),
    (4, 2, 5, 3, None, True, "ih"),
    (7, 1, 2, 9, [4], False, "none"),
    (3, 5, 8, 2, [1, 3, 2, 3, 1], True, "hh"),
]
# lstm_proj: the same with the projection size P appended (P < H as torch requires, and P = 1).
_PROJ_CASES = [
    (1, 1, 1, 2, None, False, "both", 1),
    (5, 3, 4, 7, None, False, "both", 3),
    (6, 4, 3, 5, [6, 2, 5, 1], False, "both", 2),
    (6, 4, 3, 5, [3, 6, 1, 4], True, "both", 4),
    (7, 1, 2, 9, [4], False, "none", 5),
    (3, 5, 8, 3, [1, 3, 2, 3, 1], True, "hh", 1),
]


def _tensors(kind, steps, batch, inputs, hidden, biases, dtype, device, gen, proj=0):
    gates = _GATES[kind] * hidden
    state = proj or hidden
    scale = hidden**-0.5
    x = _randn((steps, batch, inputs), dtype, device, gen)
    h0 = _randn((batch, state), dtype, device, gen, 0.5)
    c0 = _randn((batch, hidden), dtype, device, gen, 0.5) if "c0" in _ARGS[kind] else None
    w_ih = _randn((gates, inputs), dtype, device, gen, scale)
    w_hh = _randn((gates, state), dtype, device, gen, state**-0.5)
    w_hr = _randn((proj, hidden), dtype, device, gen, scale) if proj else None
    b_ih = _randn((gates,), dtype, device, gen, 0.3) if biases in ("both", "ih") else None
    b_hh = _randn((gates,), dtype, device, gen, 0.3) if biases in ("both", "hh") else None
    return dict(x=x, h0=h0, c0=c0, w_ih=w_ih, w_hh=w_hh, w_hr=w_hr, b_ih=b_ih, b_hh=b_hh)


def _args(kind, values):
    return tuple(values[name] for name in _ARGS[kind])


def _samples(kind, device, dtype, gen, cases=None) -> Iterable[Sample]:
    cases = cases or (_PROJ_CASES if kind == "lstm_proj" else _CASES)
    for steps, batch, inputs, hidden, lengths, reverse, biases, *proj in cases:
        values = _tensors(kind, steps, batch, inputs, hidden, biases, dtype, device, gen, *proj)
        values["lengths"] = None if lengths is None else torch.tensor(lengths, dtype=torch.int64)
        values["reverse"] = reverse
        name = (f"T{steps}B{batch}I{inputs}H{hidden}{f'P{proj[0]}' if proj else ''}{'-len' if lengths else ''}"
                f"{'-rev' if reverse else ''}-{biases}")  # fmt: skip
        yield Sample(_args(kind, values), name=name)


def _bad_inputs(kind, device) -> Iterable[BadInput]:
    proj = 3 if kind == "lstm_proj" else 0
    tensors = _tensors(kind, 4, 2, 3, 5, "both", torch.float32, device, torch.Generator().manual_seed(0), proj)
    x, h0, c0, w_ih, w_hh, w_hr, b_hh = (tensors[k] for k in ("x", "h0", "c0", "w_ih", "w_hh", "w_hr", "b_hh"))

    def case(name, error, match, **changes):
        values = dict(tensors, lengths=None, reverse=False)
        values.update(changes)
        return BadInput(_args(kind, values), {}, error, match, name)

    yield case("integer x", TypeError, "'x'", x=x.long())
    yield case("x not a tensor", TypeError, "'x'", x=x.tolist())
    yield case("x rank", ValueError, "'x'", x=x[0])
    yield case("h0 shape", ValueError, "'h0'", h0=h0[:1])
    yield case("w_ih shape", ValueError, "'w_ih'", w_ih=w_ih[:, :2])
    yield case("w_hh shape", ValueError, "'w_hh'", w_hh=w_hh[:, :2])
    yield case("w_hh dtype", TypeError, "'w_hh'", w_hh=w_hh.double())
    yield case("b_hh shape", ValueError, "'b_hh'", b_hh=b_hh[:3])
    yield case("lengths too long", ValueError, "'lengths'", lengths=torch.tensor([5, 2]))
    yield case("lengths zero", ValueError, "'lengths'", lengths=torch.tensor([0, 2]))
    yield case("lengths count", ValueError, "'lengths'", lengths=torch.tensor([1, 2, 3]))
    yield case("float lengths", TypeError, "'lengths'", lengths=torch.tensor([1.0, 2.0]))
    yield case("w_ih device", ValueError, "'w_ih'", w_ih=torch.empty(w_ih.shape, device="meta"))
    if c0 is not None:
        yield case("c0 shape", ValueError, "'c0'", c0=c0[:, :2])
    if w_hr is not None:
        yield case("w_hr rank", ValueError, "'w_hr'", w_hr=w_hr[0])
        yield case("w_hr dtype", TypeError, "'w_hr'", w_hr=w_hr.double())
        yield case("w_hr hidden", ValueError, "'w_hh'", w_hr=w_hr[:, :4])
        yield case("h0 of hidden width", ValueError, "'h0'", h0=c0)


def _register(kind: str) -> None:
    names = _ARGS[kind]

    def keywords(args):
        values = dict(zip(names, args))
        c0, w_hr = values.pop("c0", None), values.pop("w_hr", None)
        base = "lstm" if kind == "lstm_proj" else kind
        return base, values, c0, w_hr

    def ref(*args):
        base, v, c0, w_hr = keywords(args)
        return reference(base, v["x"], v["h0"], c0, v["w_ih"], v["w_hh"], v["b_ih"], v["b_hh"], v["lengths"],
                         v["reverse"], w_hr)  # fmt: skip

    def counterpart(*args):
        base, v, c0, w_hr = keywords(args)
        return torch_layer(base, v["x"], v["h0"], c0, v["w_ih"], v["w_hh"], v["b_ih"], v["b_hh"], v["lengths"],
                           v["reverse"], w_hr)  # fmt: skip

    gradcheck_cases = ([_PROJ_CASES[0], (3, 2, 2, 3, [3, 1], False, "both", 2), (3, 3, 2, 4, [2, 3, 1], True, "ih", 1)]
                       if kind == "lstm_proj" else
                       [_CASES[0], (3, 2, 2, 3, [3, 1], False, "both"), (3, 3, 2, 2, [2, 3, 1], True, "ih")])  # fmt: skip
    register_info(
        OpInfo(
            name=kind,
            public=_PUBLIC[kind],
            reference=ref,
            torch_counterpart=counterpart,
            samples=lambda device, dtype, gen: _samples(kind, device, dtype, gen),
            bad_inputs=lambda device: _bad_inputs(kind, device),
            differentiable_args=tuple(range(names.index("lengths"))),
            gradcheck_samples=lambda device, gen: _samples(kind, device, torch.float64, gen, gradcheck_cases),
            backward_ops=("rnn_backward",),
        )
    )


for _kind in _CELL:
    _register(_kind)
