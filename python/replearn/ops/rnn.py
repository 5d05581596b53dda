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
entering each step (rnn.h). On CUDA the kernels take float32 only (docs/design.md).
"""

from __future__ import annotations

from typing import Iterable

import torch

from .. import _native
from ._registry import BadInput, OpInfo, Sample, check_tensor, define, register_info

__all__ = ["rnn_tanh", "rnn_relu", "lstm", "gru"]

# The native cell codes (csrc/rnn/rnn.h, enum Cell) and gates per cell.
_CELL = {"rnn_tanh": 0, "rnn_relu": 1, "lstm": 2, "gru": 3}
_GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}
_RESERVE = {"rnn_tanh": 2, "rnn_relu": 2, "lstm": 6, "gru": 5}  # reserve columns per unit of hidden


def _contiguous(t):
    return None if t is None else t.contiguous()


def _hidden(w_hh: torch.Tensor) -> int:
    return w_hh.shape[1] if w_hh.dim() == 2 else 0


def _lengths_on(lengths: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
    """The lengths as the kernels take them: int64, contiguous, on x's device."""
    if lengths is None:
        return None
    return lengths.to(device=x.device, dtype=torch.int64).contiguous()


# ============================================================================= native forward/backward


def _forward_impl(kind, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse):
    cell = _CELL[kind]
    x = x.contiguous()
    w_hh = w_hh.contiguous()
    steps, batch = (x.shape[0], x.shape[1]) if x.dim() == 3 else (0, 0)
    hidden = _hidden(w_hh)
    y = x.new_empty(steps, batch, hidden)
    h_n = x.new_empty(batch, hidden)
    c_n = x.new_empty(batch, hidden) if kind == "lstm" else None
    reserve = x.new_empty(steps, batch, _RESERVE[kind] * hidden)
    ws = _native.workspace("rnn_forward", x, cell, x, w_hh)
    _native.launch("rnn_forward", x, cell, x, h0.contiguous(), _contiguous(c0), w_ih.contiguous(), w_hh,
                   _contiguous(b_ih), _contiguous(b_hh), _contiguous(lengths), reverse, y, h_n, c_n, reserve, ws)
    return y, h_n, c_n, reserve


def _forward_fake(kind, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse):
    for arg, t in dict(h0=h0, c0=c0, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh, lengths=lengths).items():
        if t is not None and t.device != x.device:
            raise ValueError(f"{kind}: argument '{arg}' expected a tensor on {x.device} like 'x' but got one on {t.device}")
    steps, batch, hidden = x.shape[0], x.shape[1], w_hh.shape[1]
    return (x.new_empty(steps, batch, hidden), x.new_empty(batch, hidden),
            x.new_empty(batch, hidden) if kind == "lstm" else None,
            x.new_empty(steps, batch, _RESERVE[kind] * hidden))  # fmt: skip


def _backward_impl(cell, grad_y, grad_h_n, grad_c_n, x, w_ih, w_hh, lengths, reverse, reserve, mask):
    x = x.contiguous()
    w_hh = w_hh.contiguous()
    need_x, need_h0, need_c0, need_w_ih, need_w_hh, need_b_ih, need_b_hh = mask
    grads = (
        x.new_empty(x.shape) if need_x else None,
        x.new_empty(grad_h_n.shape) if need_h0 else None,
        x.new_empty(grad_h_n.shape) if need_c0 and grad_c_n is not None else None,
        x.new_empty(w_ih.shape) if need_w_ih else None,
        x.new_empty(w_hh.shape) if need_w_hh else None,
        x.new_empty(w_hh.shape[0]) if need_b_ih else None,
        x.new_empty(w_hh.shape[0]) if need_b_hh else None,
    )
    ws = _native.workspace("rnn_backward", x, cell, x, w_hh)
    _native.launch("rnn_backward", x, cell, grad_y.contiguous(), grad_h_n.contiguous(), _contiguous(grad_c_n), x,
                   w_ih.contiguous(), w_hh, _contiguous(lengths), reverse, reserve.contiguous(), *grads, ws)
    return grads


def _backward_fake(cell, grad_y, grad_h_n, grad_c_n, x, w_ih, w_hh, lengths, reverse, reserve, mask):
    shapes = (x.shape, grad_h_n.shape, grad_h_n.shape, w_ih.shape, w_hh.shape, w_hh.shape[:1], w_hh.shape[:1])
    mask = list(mask)
    mask[2] = mask[2] and grad_c_n is not None
    return tuple(x.new_empty(s) if m else None for s, m in zip(shapes, mask))


_rnn_backward = define(
    "rnn_backward(int cell, Tensor grad_y, Tensor grad_h_n, Tensor? grad_c_n, Tensor x, Tensor w_ih, Tensor w_hh, "
    "Tensor? lengths, bool reverse, Tensor reserve, bool[7] output_mask) "
    "-> (Tensor?, Tensor?, Tensor?, Tensor?, Tensor?, Tensor?, Tensor?)",
    _backward_impl,
    _backward_fake,
)


def _zeros_if_none(grad, like):
    return torch.zeros_like(like) if grad is None else grad


def _make_op(kind: str):
    """Registers `replearn::<kind>`: the LSTM carries a cell state, the others do not."""
    lstm = kind == "lstm"
    cell = _CELL[kind]

    def setup(ctx, inputs, output):
        x, w_ih, w_hh, lengths, reverse = _unpack(inputs, lstm, "x", "w_ih", "w_hh", "lengths", "reverse")
        reserve = output[-1]
        ctx.mark_non_differentiable(reserve)
        ctx.reverse = reverse
        ctx.save_for_backward(x, w_ih, w_hh, lengths, reserve)

    def backward(ctx, grad_y, grad_h_n, *rest):
        x, w_ih, w_hh, lengths, reserve = ctx.saved_tensors
        grad_c_n = _zeros_if_none(rest[0], reserve.new_empty(_state_shape(x, w_hh))) if lstm else None
        need = ctx.needs_input_grad
        # inputs: (x, h0, [c0,] w_ih, w_hh, b_ih, b_hh, lengths, reverse)
        need_c0 = need[2] if lstm else False
        off = 1 if lstm else 0
        mask = [need[0], need[1], need_c0, need[2 + off], need[3 + off], need[4 + off], need[5 + off]]
        state_like = x.new_empty(_state_shape(x, w_hh))
        grads = _rnn_backward(cell, _zeros_if_none(grad_y, x.new_empty(x.shape[0], x.shape[1], w_hh.shape[1])),
                              _zeros_if_none(grad_h_n, state_like), grad_c_n, x, w_ih, w_hh, lengths, ctx.reverse,
                              reserve, mask)
        dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh = grads
        if lstm:
            return dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, None, None
        return dx, dh0, dw_ih, dw_hh, db_ih, db_hh, None, None

    if lstm:
        schema = (f"{kind}(Tensor x, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "
                  "Tensor? lengths, bool reverse) -> (Tensor, Tensor, Tensor, Tensor)")
        impl = lambda *a: _forward_impl(kind, *a)  # noqa: E731
        fake = lambda *a: _forward_fake(kind, *a)  # noqa: E731
    else:
        schema = (f"{kind}(Tensor x, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "
                  "Tensor? lengths, bool reverse) -> (Tensor, Tensor, Tensor)")

        def impl(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse):
            y, h_n, _, reserve = _forward_impl(kind, x, h0, None, w_ih, w_hh, b_ih, b_hh, lengths, reverse)
            return y, h_n, reserve

        def fake(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse):
            y, h_n, _, reserve = _forward_fake(kind, x, h0, None, w_ih, w_hh, b_ih, b_hh, lengths, reverse)
            return y, h_n, reserve

    return define(schema, impl, fake, backward=backward, setup_context=setup)


def _state_shape(x, w_hh):
    return (x.shape[1], w_hh.shape[1])


_NAMES_LSTM = ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "lengths", "reverse")
_NAMES = ("x", "h0", "w_ih", "w_hh", "b_ih", "b_hh", "lengths", "reverse")


def _unpack(inputs, lstm, *names):
    order = _NAMES_LSTM if lstm else _NAMES
    return [inputs[order.index(n)] for n in names]


_OPS = {kind: _make_op(kind) for kind in _CELL}


# ==================================================================================== public functions


def _check_args(kind, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths):
    check_tensor(kind, "x", x)
    check_tensor(kind, "h0", h0)
    if kind == "lstm":
        check_tensor(kind, "c0", c0)
    check_tensor(kind, "w_ih", w_ih)
    check_tensor(kind, "w_hh", w_hh)
    check_tensor(kind, "b_ih", b_ih, optional=True)
    check_tensor(kind, "b_hh", b_hh, optional=True)
    check_tensor(kind, "lengths", lengths, optional=True)
    if lengths is not None and (lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool):
        raise TypeError(f"{kind}: argument 'lengths' expected an integer tensor but got {lengths.dtype}")


def _layer(kind, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse):
    _check_args(kind, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths)
    lengths = _lengths_on(lengths, x)
    if kind == "lstm":
        y, h_n, c_n, _ = _OPS[kind](x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, bool(reverse))
        return y, h_n, c_n
    y, h_n, _ = _OPS[kind](x, h0, w_ih, w_hh, b_ih, b_hh, lengths, bool(reverse))
    return y, h_n


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


def gru(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, lengths=None, reverse=False):
    """One GRU layer over a whole sequence (gates r, z, n as torch orders them; b_hn inside r ⊙ (·)).

    Args:
        x: (T, B, I); h0: (B, H); w_ih: (3H, I); w_hh: (3H, H); b_ih, b_hh: optional (3H).
        lengths, reverse: as in rnn_tanh.

    Returns:
        (y (T, B, H), h_n (B, H)).
    """
    return _layer("gru", x, h0, None, w_ih, w_hh, b_ih, b_hh, lengths, reverse)


_PUBLIC = {"rnn_tanh": rnn_tanh, "rnn_relu": rnn_relu, "lstm": lstm, "gru": gru}


# ============================================================================= reference and counterpart


def reference(kind, x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, lengths=None, reverse=False):
    """The layer written from the equations above, one step at a time, in plain PyTorch."""
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


def torch_layer(kind, x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, lengths=None, reverse=False):
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
    fn = {"rnn_tanh": torch.rnn_tanh, "rnn_relu": torch.rnn_relu, "lstm": torch.lstm, "gru": torch.gru}[kind]
    inputs = _flip_within(x, lengths) if reverse else x
    hx = (h0.unsqueeze(0), c0.unsqueeze(0)) if kind == "lstm" else h0.unsqueeze(0)
    if lengths is None:
        out = fn(inputs, hx, params, has_bias, 1, 0.0, False, False, False)
        y, states = out[0], out[1:]
    else:
        packed = pack_padded_sequence(inputs, lengths.cpu(), enforce_sorted=False)
        sort = packed.sorted_indices
        hx_sorted = tuple(s.index_select(1, sort) for s in hx) if kind == "lstm" else hx.index_select(1, sort)
        out = fn(packed.data, packed.batch_sizes, hx_sorted, params, has_bias, 1, 0.0, False, False)
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


def _tensors(kind, steps, batch, inputs, hidden, biases, dtype, device, gen):
    gates = _GATES[kind] * hidden
    scale = hidden**-0.5
    x = _randn((steps, batch, inputs), dtype, device, gen)
    h0 = _randn((batch, hidden), dtype, device, gen, 0.5)
    c0 = _randn((batch, hidden), dtype, device, gen, 0.5) if kind == "lstm" else None
    w_ih = _randn((gates, inputs), dtype, device, gen, scale)
    w_hh = _randn((gates, hidden), dtype, device, gen, scale)
    b_ih = _randn((gates,), dtype, device, gen, 0.3) if biases in ("both", "ih") else None
    b_hh = _randn((gates,), dtype, device, gen, 0.3) if biases in ("both", "hh") else None
    return x, h0, c0, w_ih, w_hh, b_ih, b_hh


def _args(kind, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse):
    if kind == "lstm":
        return (x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse)
    return (x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse)


def _samples(kind, device, dtype, gen, cases=_CASES) -> Iterable[Sample]:
    if device.type == "cuda" and dtype != torch.float32:
        return  # the CUDA kernels take float32 only (module docstring)
    for steps, batch, inputs, hidden, lengths, reverse, biases in cases:
        tensors = _tensors(kind, steps, batch, inputs, hidden, biases, dtype, device, gen)
        lengths_t = None if lengths is None else torch.tensor(lengths, dtype=torch.int64)
        name = f"T{steps}B{batch}I{inputs}H{hidden}{'-len' if lengths else ''}{'-rev' if reverse else ''}-{biases}"
        yield Sample(_args(kind, *tensors, lengths_t, reverse), name=name)


def _bad_inputs(kind, device) -> Iterable[BadInput]:
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = _tensors(kind, 4, 2, 3, 5, "both", torch.float32, device,
                                                 torch.Generator().manual_seed(0))  # fmt: skip

    def case(name, error, match, **changes):
        values = dict(x=x, h0=h0, c0=c0, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh, lengths=None, reverse=False)
        values.update(changes)
        return BadInput(_args(kind, *values.values()), {}, error, match, name)

    yield case("integer x", TypeError, "'x'", x=x.long())
    yield case("x not a tensor", TypeError, "'x'", x=x.tolist())
    yield case("x rank", ValueError, "'x'", x=x[0])
    yield case("h0 shape", ValueError, "'h0'", h0=h0[:1])
    yield case("w_ih shape", ValueError, "'w_ih'", w_ih=w_ih[:, :2])
    yield case("w_hh shape", ValueError, "'w_hh'", w_hh=w_hh[:, :4])
    yield case("w_hh dtype", TypeError, "'w_hh'", w_hh=w_hh.double())
    yield case("b_hh shape", ValueError, "'b_hh'", b_hh=b_hh[:3])
    yield case("lengths too long", ValueError, "'lengths'", lengths=torch.tensor([5, 2]))
    yield case("lengths zero", ValueError, "'lengths'", lengths=torch.tensor([0, 2]))
    yield case("lengths count", ValueError, "'lengths'", lengths=torch.tensor([1, 2, 3]))
    yield case("float lengths", TypeError, "'lengths'", lengths=torch.tensor([1.0, 2.0]))
    yield case("w_ih device", ValueError, "'w_ih'", w_ih=torch.empty(w_ih.shape, device="meta"))
    if kind == "lstm":
        yield case("c0 shape", ValueError, "'c0'", c0=c0[:, :2])


def _register(kind: str) -> None:
    lstm_kind = kind == "lstm"

    def ref(*args):
        if not lstm_kind:
            args = args[:2] + (None,) + args[2:]
        return reference(kind, *args)

    def counterpart(*args):
        if not lstm_kind:
            args = args[:2] + (None,) + args[2:]
        return torch_layer(kind, *args)

    register_info(
        OpInfo(
            name=kind,
            public=_PUBLIC[kind],
            reference=ref,
            torch_counterpart=counterpart,
            samples=lambda device, dtype, gen: _samples(kind, device, dtype, gen),
            bad_inputs=lambda device: _bad_inputs(kind, device),
            differentiable_args=tuple(range(7)) if lstm_kind else tuple(range(6)),
            gradcheck_samples=lambda device, gen: _samples(kind, device, torch.float64, gen,
                                                           [_CASES[0], (3, 2, 2, 3, [3, 1], False, "both"),
                                                            (3, 3, 2, 2, [2, 3, 1], True, "ih")]),  # fmt: skip
            backward_ops=("rnn_backward",),
        )
    )


for _kind in _CELL:
    _register(_kind)
