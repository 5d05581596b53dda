"""Recurrent family: replearn.nn.LSTM/GRU (whole-sequence native ops, BPTT in one call) against
torch.nn.LSTM/GRU and against a Python loop over torch.nn.LSTMCell, float32, in the same run.

Rows: `fwd` (inference, under no_grad) and `fwd+bwd` (forward, then the gradients of the input and of
every weight for a fixed random output gradient). The cell-loop rows time the per-step Python loop that
the whole-sequence ops replace: the "torch" side is `for t: h, c = cell(x[t], (h, c))`.

FLOP model (multiply-add = 2; the elementwise gate math left out, under 2% of the total):
    fwd      2·T·B·G·H·(I + H)          the input projection and the recurrent products
    fwd+bwd  3 × fwd                    backward: dx and dW_ih, dh_{t−1} and dW_hh, two products per forward one
with G = 4 (LSTM) or 3 (GRU) gates. Shape (T, B, I, H) = (128, 32, 256, 512), the issue's. The LSTM with
projection (proj_size P = H/4) replaces the recurrent product by 2·T·B·(4H·P + P·H).

Goals (issue 6): ≥ 1.0× nn.LSTM / nn.GRU, fwd and fwd+bwd; ≥ 1.8× the LSTMCell loop.
This file uses the harness's compute-bound rows (`Case.flops`, GFLOP/s against the GEMM rate).
`python bench/rnn.py [--quick]` prints the same comparison without the harness.
"""

from __future__ import annotations

import sys

import torch

import replearn
from _harness import Case

SHAPE = (128, 32, 256, 512)  # (T, B, I, H)
QUICK_SHAPE = (8, 4, 16, 32)
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def _proj_size(hidden: int) -> int:
    return hidden // 4  # the "LSTM_proj" rows' projection (Sak et al. 2014 project 2048 cells to 512)


def _flops(kind: str, passes: int):
    def flops(shape):
        steps, batch, inputs, hidden = shape
        gates = GATES[kind.split("_")[0]] * hidden
        if kind == "LSTM_proj":
            proj = _proj_size(hidden)
            return passes * 2.0 * steps * batch * (gates * (inputs + proj) + proj * hidden)
        return passes * 2.0 * steps * batch * gates * (inputs + hidden)

    return flops


def _modules(kind, shape, dtype, device):
    """torch's layer and ours with the same weights, and the input, all seeded."""
    steps, batch, inputs, hidden = shape
    torch.manual_seed(0)
    layer, *variant = kind.split("_")  # "RNN_relu": an Elman layer with that nonlinearity; "LSTM_proj"
    if variant == ["proj"]:
        kwargs = {"proj_size": _proj_size(hidden)}
    else:
        kwargs = {"nonlinearity": variant[0]} if variant else {}
    theirs = getattr(torch.nn, layer)(inputs, hidden, **kwargs).to(device=device, dtype=dtype)
    ours = getattr(replearn.nn, layer)(inputs, hidden, **kwargs).to(device=device, dtype=dtype)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(steps, batch, inputs, generator=torch.Generator().manual_seed(1)).to(device=device, dtype=dtype)
    return theirs, ours, x


def _cell_loop(layer: torch.nn.LSTM):
    """The same LSTM as a Python loop over torch.nn.LSTMCell, one call per time step."""
    cell = torch.nn.LSTMCell(layer.input_size, layer.hidden_size).to(layer.weight_ih_l0)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).copy_(getattr(layer, name + "_l0"))

    def run(x):
        h = c = x.new_zeros(x.shape[1], layer.hidden_size)
        outputs = []
        for step in x:
            h, c = cell(step, (h, c))
            outputs.append(h)
        return torch.stack(outputs)

    return run, list(cell.parameters())


def _side_call(kind, shape, dtype, device, side, against_cells):
    theirs, ours, x = _modules(kind, shape, dtype, device)
    if side == "replearn":
        return (lambda inp: ours(inp)[0]), list(ours.parameters()), x
    if against_cells:
        run, params = _cell_loop(theirs)
        return run, params, x
    return (lambda inp: theirs(inp)[0]), list(theirs.parameters()), x


def _build(kind: str, backward: bool, against_cells: bool = False):
    def side(shape, dtype, device, name):
        call, params, x = _side_call(kind, shape, dtype, device, name, against_cells)
        if not backward:
            def forward():
                with torch.no_grad():
                    return call(x)

            return forward
        x.requires_grad_(True)
        inputs = [x, *params]
        with torch.no_grad():
            grad_out = torch.randn(call(x).shape, generator=torch.Generator().manual_seed(2)).to(x)
        return lambda: torch.autograd.grad(call(x), inputs, grad_out)

    return lambda shape, dtype, device: (side(shape, dtype, device, "torch"), side(shape, dtype, device, "replearn"))


def _case(op, kind, backward, min_speedup, against_cells=False):
    return Case(op, SHAPE, QUICK_SHAPE, _build(kind, backward, against_cells), None, min_speedup=min_speedup,
                flops=_flops(kind, 3 if backward else 1))  # fmt: skip


CASES = [
    _case("lstm fwd+bwd", "LSTM", True, 1.0),
    _case("lstm fwd", "LSTM", False, 1.0),
    # proj_size = H/4: torch's oneDNN LSTM does not take projections, so torch runs its generic kernel.
    _case("lstm proj_size=H/4 fwd+bwd", "LSTM_proj", True, None),
    _case("lstm proj_size=H/4 fwd", "LSTM_proj", False, None),
    _case("gru fwd+bwd", "GRU", True, 1.0),
    _case("gru fwd", "GRU", False, 1.0),
    # Elman layers (rnn_tanh, rnn_relu): rows without goals of their own (the issue sets none).
    _case("rnn_tanh fwd+bwd", "RNN_tanh", True, None),
    _case("rnn_tanh fwd", "RNN_tanh", False, None),
    _case("rnn_relu fwd+bwd", "RNN_relu", True, None),
    _case("rnn_relu fwd", "RNN_relu", False, None),
    _case("lstm fwd+bwd vs LSTMCell loop", "LSTM", True, 1.8, against_cells=True),
    _case("lstm fwd vs LSTMCell loop", "LSTM", False, 1.8, against_cells=True),
]


def main(argv: list[str]) -> None:
    """The comparison without run.py: medians of alternating samples, GFLOP/s, ratios."""
    from _harness import time_alternating

    quick = "--quick" in argv
    shape = QUICK_SHAPE if quick else SHAPE
    print(f"shape (T, B, I, H) = {shape}, float32, {torch.get_num_threads()} threads")
    print(f"{'case':34s} {'torch ms':>9s} {'ours ms':>9s} {'speedup':>8s} {'ours GFLOP/s':>13s} {'torch GFLOP/s':>14s}")
    for case in CASES:
        torch_run, ours_run = case.build(shape, torch.float32, "cpu")
        t, o = time_alternating((torch_run, ours_run), "cpu", repeat=3 if quick else 5, warmup=1, min_sample_s=0.0)
        flops = case.flops(shape)
        print(f"{case.op:34s} {t * 1e3:9.1f} {o * 1e3:9.1f} {t / o:8.2f} {flops / o / 1e9:13.1f} {flops / t / 1e9:14.1f}",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])
