"""State-space ops: Mamba's selective scan, its causal depthwise conv1d, and the S4D convolution kernel.

Every op here is a torch library op (`torch.ops.replearn.<name>`) whose forward and backward both run
native kernels (csrc/ssm), with a fake implementation for torch.compile and a plain-PyTorch `reference`
written from the equations, which the tests treat as ground truth:

    selective scan (Gu & Dao 2023, Mamba, §3 and Algorithm 2), per batch b and channel d:
        Δ_t = softplus?(δ_t + δ_bias),  h_t = exp(Δ_t·A)⊙h_{t−1} + Δ_t·B_t·u_t,
        y_t = ⟨C_t, h_t⟩ + D·u_t,  out_t = y_t·silu(z_t)
    causal conv1d: y[t] = act(bias + Σ_k w[k]·x̃[t + k]),  x̃ = concat(initial_state, x)
    S4D kernel (Gu et al. 2022, "On the Parameterization and Initialization of Diagonal State Space
    Models", zero-order hold): K[h, l] = 2·Re Σ_n C_n·(e^{ΔA_n} − 1)/A_n · e^{lΔA_n}
    Cauchy kernel (Gu et al. 2021, S4, §3.3): out[h, l] = Σ_n v[h, n]/(z[l] − w[h, n]), from which
    `s4_dplr_kernel` builds S4's generating function at the roots of unity (then an inverse FFT)

There is no PyTorch op for a scan or an SSM kernel, so the "PyTorch counterpart" that the parity rule
compares against (twice its error at the same dtype, ARCHITECTURE.md) is the reference itself run at
the test dtype: the per-step loop for the scan, F.conv1d with left padding for the conv, the
vectorized Vandermonde product (torch complex arithmetic) for the S4D kernel.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F

from .. import _native
from ._registry import BadInput, OpInfo, Sample, check_tensor, define, register_info

__all__ = ["selective_scan", "causal_conv1d", "s4d_kernel", "cauchy", "s4_dplr_kernel", "fft_conv"]

SCAN_CHUNK = 64  # csrc/ssm/ssm.h kScanChunk: the forward saves one state per chunk of this many steps


def _stats_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _contiguous(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.contiguous()


def _randn(shape, dtype, device, generator, scale=1.0, offset=0.0) -> torch.Tensor:
    return (torch.randn(shape, generator=generator, dtype=torch.float64) * scale + offset).to(dtype).to(device)


def _check_devices(fn: str, x: torch.Tensor, **others: torch.Tensor | None) -> None:
    """Fake implementations run where no kernel validates devices (torch.compile, meta): check here."""
    for arg, t in others.items():
        if t is not None and t.device != x.device:
            raise ValueError(f"{fn}: argument '{arg}' expected a tensor on {x.device} like 'u' but got one on {t.device}")


# ================================================================================ selective_scan


def _scan_shapes(fn: str, u: torch.Tensor, A: torch.Tensor):
    if u.dim() != 3:
        raise ValueError(f"{fn}: argument 'u' expected shape (batch, dim, L) but got {tuple(u.shape)}")
    if A.dim() != 2:
        raise ValueError(f"{fn}: argument 'A' expected shape ({u.shape[1]}, N) but got {tuple(A.shape)}")
    batch, dim, length = u.shape
    chunks = (length + SCAN_CHUNK - 1) // SCAN_CHUNK
    return (batch, dim, chunks, A.shape[1]), (batch, dim, A.shape[1])


def _scan_impl(u, delta, A, B, C, D, z, delta_bias, delta_softplus, save=True):
    checkpoint_shape, state_shape = _scan_shapes("selective_scan", u, A)
    u = u.contiguous()
    out = torch.empty_like(u)
    checkpoints = u.new_empty(checkpoint_shape, dtype=_stats_dtype(u))
    args = [_contiguous(t) for t in (delta, A, B, C, D, z, delta_bias)]
    _native.launch("selective_scan_forward", u, u, *args, delta_softplus, out, checkpoints)
    last = checkpoints[:, :, -1] if checkpoints.shape[2] else u.new_zeros(state_shape, dtype=checkpoints.dtype)
    return out, last.clone(), (checkpoints if save else checkpoints.new_empty(0))


def _scan_fake(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    _check_devices("selective_scan", u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias)
    checkpoint_shape, state_shape = _scan_shapes("selective_scan", u, A)
    stats = _stats_dtype(u)
    return u.new_empty(u.shape), u.new_empty(state_shape, dtype=stats), u.new_empty(checkpoint_shape, dtype=stats)


def _scan_backward_impl(grad_out, grad_last, u, delta, A, B, C, D, z, delta_bias, delta_softplus, checkpoints):
    u = u.contiguous()
    grad_out = grad_out.contiguous()
    args = [_contiguous(t) for t in (delta, A, B, C, D, z, delta_bias)]
    grads = [torch.empty_like(t) for t in (u, u, args[1], args[2], args[3])]
    grads += [None if t is None else torch.empty_like(t) for t in (args[4], args[5], args[6])]
    ws = _native.workspace("selective_scan_backward", u, u, args[1], args[2], args[3])
    _native.launch(
        "selective_scan_backward", u, grad_out, u, *args, delta_softplus, checkpoints, _contiguous(grad_last),
        *grads, ws,
    )
    return tuple(grads)


def _scan_backward_fake(grad_out, grad_last, u, delta, A, B, C, D, z, delta_bias, delta_softplus, checkpoints):
    grads = [u.new_empty(t.shape) for t in (u, u, A, B, C)]
    return tuple(grads + [None if t is None else t.new_empty(t.shape) for t in (D, z, delta_bias)])


_scan_backward = define(
    "selective_scan_backward(Tensor grad_out, Tensor? grad_last_state, Tensor u, Tensor delta, Tensor A, Tensor B, "
    "Tensor C, Tensor? D, Tensor? z, Tensor? delta_bias, bool delta_softplus, Tensor checkpoints) -> "
    "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor?, Tensor?, Tensor?)",
    _scan_backward_impl,
    _scan_backward_fake,
)


def _scan_setup(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, delta_softplus = inputs
    _out, _last, checkpoints = output
    ctx.mark_non_differentiable(checkpoints)
    ctx.set_materialize_grads(False)  # no zero "gradient" of the checkpoints per backward (ops/rnn.py: setup)
    ctx.delta_softplus = delta_softplus
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, checkpoints)


def _scan_grad(ctx, grad_out, grad_last, _grad_checkpoints):
    u, delta, A, B, C, D, z, delta_bias, checkpoints = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros_like(u)
    grads = _scan_backward(grad_out, grad_last, u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus, checkpoints)
    return (*grads, None)


_selective_scan = define(
    "selective_scan(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? z, Tensor? delta_bias, "
    "bool delta_softplus) -> (Tensor, Tensor, Tensor)",
    _scan_impl,
    _scan_fake,
    backward=_scan_grad,
    setup_context=_scan_setup,
    inference=lambda *args: _scan_impl(*args, save=False),
)


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Mamba's selective scan (Gu & Dao 2023), `selective_scan_fn`'s arguments and results.

    Args:
        u: input (batch, dim, L).
        delta: step sizes before bias and softplus, (batch, dim, L).
        A: state matrix diagonal, real, (dim, N).
        B: input matrix, (dim, N) (time-invariant) or (batch, groups, N, L) (selective); dim % groups == 0.
        C: output matrix, same forms as B.
        D: optional skip connection (dim).
        z: optional gate (batch, dim, L): the output is multiplied by silu(z).
        delta_bias: optional (dim), added to delta before the softplus.
        delta_softplus: apply softplus to delta + delta_bias.
        return_last_state: also return h_{L−1}, (batch, dim, N), float32 (float64 for float64 inputs).

    Returns:
        out (batch, dim, L), and the last state when asked for.
    """
    for arg, value in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C)):
        check_tensor("selective_scan", arg, value)
    for arg, value in (("D", D), ("z", z), ("delta_bias", delta_bias)):
        check_tensor("selective_scan", arg, value, optional=True)
    out, last, _ = _selective_scan(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus))
    return (out, last) if return_last_state else out


def _expand_input_matrix(M: torch.Tensor, batch: int, dim: int, length: int) -> torch.Tensor:
    """B or C as (batch, dim, N, L) whichever form it takes."""
    if M.dim() == 2:
        return M[None, :, :, None].expand(batch, dim, M.shape[1], length)
    return M.repeat_interleave(dim // M.shape[1], dim=1)


def selective_scan_reference(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                             return_last_state=False):  # fmt: skip
    """The selective scan as the per-step recurrence of Mamba's equations, in plain PyTorch."""
    batch, dim, length = u.shape
    dt = delta if delta_bias is None else delta + delta_bias[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    Bx = _expand_input_matrix(B, batch, dim, length)
    Cx = _expand_input_matrix(C, batch, dim, length)
    h = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for t in range(length):
        dA = torch.exp(dt[:, :, t, None] * A)  # zero-order hold: Ā = exp(ΔA)
        h = dA * h + (dt[:, :, t] * u[:, :, t])[..., None] * Bx[..., t]  # B̄u = ΔBu
        ys.append((h * Cx[..., t]).sum(-1))
    y = torch.stack(ys, -1) if ys else torch.zeros_like(u)
    if D is not None:
        y = y + D[:, None] * u
    if z is not None:
        y = y * F.silu(z)
    return (y, h.to(_stats_dtype(u))) if return_last_state else y


def _scan_inputs(device, dtype, gen, batch, dim, length, states, groups, selective_B=True, selective_C=True):
    u = _randn((batch, dim, length), dtype, device, gen)
    delta = _randn((batch, dim, length), dtype, device, gen, scale=0.5, offset=-1.0)
    A = -torch.rand((dim, states), generator=gen, dtype=torch.float64).add(0.2).mul(2).to(dtype).to(device)
    shape = (batch, groups, states, length)
    B = _randn(shape if selective_B else (dim, states), dtype, device, gen)
    C = _randn(shape if selective_C else (dim, states), dtype, device, gen)
    D = _randn((dim,), dtype, device, gen)
    z = _randn((batch, dim, length), dtype, device, gen)
    bias = _randn((dim,), dtype, device, gen, scale=0.3)
    return u, delta, A, B, C, D, z, bias


def _scan_samples(device, dtype, gen) -> Iterable[Sample]:
    # (batch, dim, L, N, groups, selective B, selective C): L = 1, odd L, L across chunk boundaries
    shapes = [(1, 3, 1, 4, 1, True, True), (2, 4, 7, 3, 2, True, True), (2, 6, 65, 5, 3, True, False),
              (1, 5, 130, 8, 1, False, True), (2, 3, 33, 16, 1, False, False)]  # fmt: skip
    for batch, dim, length, states, groups, sel_B, sel_C in shapes:
        u, delta, A, B, C, D, z, bias = _scan_inputs(device, dtype, gen, batch, dim, length, states, groups, sel_B, sel_C)
        yield Sample((u, delta, A, B, C), {"delta_softplus": True}, name="plain")
        yield Sample((u, delta, A, B, C, D, z, bias, True, True), name="all")
    u, delta, A, B, C, D, z, bias = _scan_inputs(device, dtype, gen, 2, 4, 70, 4, 2)
    yield Sample((u, delta.abs(), A, B, C, D), name="no softplus, D")
    yield Sample((u, delta, A, B, C, None, z, bias, True), name="z, bias")
    yield Sample((u, delta, A, B, C, D, None, None, True, True), name="last state")


def _scan_gradcheck_samples(device, gen) -> Iterable[Sample]:
    dtype = torch.float64
    for batch, dim, length, states, groups, sel in [(1, 2, 1, 2, 1, True), (2, 4, 5, 3, 2, True), (1, 2, 67, 2, 1, False)]:
        u, delta, A, B, C, D, z, bias = _scan_inputs(device, dtype, gen, batch, dim, length, states, groups, sel, sel)
        yield Sample((u, delta, A, B, C, D, z, bias, True, True))
        yield Sample((u, delta.abs(), A, B, C))


def _scan_bad_inputs(device) -> Iterable[BadInput]:
    u = torch.randn(2, 4, 8, device=device)
    A = -torch.ones(4, 3, device=device)
    B = torch.randn(2, 2, 3, 8, device=device)
    yield BadInput((u.long(), u, A, B, B), {}, TypeError, "'u'", "integer u")
    yield BadInput((u, u, A, B, [1.0]), {}, TypeError, "'C'", "C not a tensor")
    yield BadInput((u[0], u[0], A, B, B), {}, ValueError, "'u'", "u rank")
    yield BadInput((u, u[:, :, :7], A, B, B), {}, ValueError, "'delta'", "delta shape")
    yield BadInput((u, u, A[:3], B, B), {}, ValueError, "'A'", "A rows")
    yield BadInput((u, u, A, torch.randn(2, 3, 3, 8, device=device), B), {}, ValueError, "'B'", "groups not dividing")
    yield BadInput((u, u, A, B, torch.randn(2, 4, 3, 8, device=device)), {}, ValueError, "'C'", "groups differ")
    yield BadInput((u, u, A, B, B, torch.ones(3, device=device)), {}, ValueError, "'D'", "D shape")
    yield BadInput((u, u, A, B.double(), B), {}, TypeError, "'B'", "B dtype")
    yield BadInput((u, u, A, B, B, None, None, torch.ones(4, device="meta")), {}, ValueError, "'delta_bias'", "bias device")


register_info(
    OpInfo(
        name="selective_scan",
        public=selective_scan,
        reference=selective_scan_reference,
        # No PyTorch op computes a scan: the counterpart is the per-step loop run at the test dtype.
        torch_counterpart=selective_scan_reference,
        samples=_scan_samples,
        bad_inputs=_scan_bad_inputs,
        differentiable_args=(0, 1, 2, 3, 4, 5, 6, 7),
        gradcheck_samples=_scan_gradcheck_samples,
        backward_ops=("selective_scan_backward",),
    )
)


# ================================================================================= causal_conv1d

_ACTIVATIONS = {None: 0, "silu": 1, "swish": 1}


def _conv_state_shape(fn: str, x: torch.Tensor, weight: torch.Tensor):
    if x.dim() != 3 or weight.dim() != 2:
        raise ValueError(
            f"{fn}: argument 'x' expected shape (batch, dim, L) and 'weight' (dim, width) but got "
            f"{tuple(x.shape)} and {tuple(weight.shape)}"
        )
    return (x.shape[0], x.shape[1], max(weight.shape[1] - 1, 0))


def _conv_impl(x, weight, bias, initial_state, activation):
    state_shape = _conv_state_shape("causal_conv1d", x, weight)
    x = x.contiguous()
    y = torch.empty_like(x)
    final_state = x.new_empty(state_shape)
    _native.launch("causal_conv1d_forward", x, x, _contiguous(weight), _contiguous(bias), _contiguous(initial_state),
                   activation, y, final_state)  # fmt: skip
    return y, final_state


def _conv_fake(x, weight, bias, initial_state, activation):
    _check_devices("causal_conv1d", x, weight=weight, bias=bias, initial_state=initial_state)
    return x.new_empty(x.shape), x.new_empty(_conv_state_shape("causal_conv1d", x, weight))


def _conv_backward_impl(grad_y, grad_final_state, x, weight, bias, initial_state, activation):
    x = x.contiguous()
    weight = weight.contiguous()
    dx, dw = torch.empty_like(x), torch.empty_like(weight)
    # new_empty, not empty_like: the kernel writes row-major gradients whatever the inputs' layouts.
    dbias = None if bias is None else bias.new_empty(bias.shape)
    dinit = None if initial_state is None else initial_state.new_empty(initial_state.shape)
    ws = _native.workspace("causal_conv1d_backward", x, x, weight)
    _native.launch("causal_conv1d_backward", x, grad_y.contiguous(), x, weight, _contiguous(bias),
                   _contiguous(initial_state), activation, _contiguous(grad_final_state), dx, dw, dbias, dinit, ws)  # fmt: skip
    return dx, dw, dbias, dinit


_conv_backward = define(
    "causal_conv1d_backward(Tensor grad_y, Tensor? grad_final_state, Tensor x, Tensor weight, Tensor? bias, "
    "Tensor? initial_state, int activation) -> (Tensor, Tensor, Tensor?, Tensor?)",
    _conv_backward_impl,
    lambda grad_y, grad_final_state, x, weight, bias, initial_state, activation: (
        x.new_empty(x.shape),
        weight.new_empty(weight.shape),
        None if bias is None else bias.new_empty(bias.shape),
        None if initial_state is None else initial_state.new_empty(initial_state.shape),
    ),
)


def _conv_setup(ctx, inputs, output):
    x, weight, bias, initial_state, activation = inputs
    ctx.activation = activation
    ctx.save_for_backward(x, weight, bias, initial_state)


def _conv_grad(ctx, grad_y, grad_final_state):
    x, weight, bias, initial_state = ctx.saved_tensors
    if grad_y is None:
        grad_y = torch.zeros_like(x)
    dx, dw, db, dinit = _conv_backward(grad_y, grad_final_state, x, weight, bias, initial_state, ctx.activation)
    return dx, dw, db, dinit, None


_causal_conv1d = define(
    "causal_conv1d(Tensor x, Tensor weight, Tensor? bias, Tensor? initial_state, int activation) -> (Tensor, Tensor)",
    _conv_impl,
    _conv_fake,
    backward=_conv_grad,
    setup_context=_conv_setup,
)


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Depthwise causal 1-D convolution, Mamba's short conv (Gu & Dao 2023, §3.4).

    y[b, d, t] = act(bias[d] + Σ_k weight[d, k]·x̃[b, d, t + k]) with x̃ = concat(initial_state, x) along
    time: F.conv1d with W − 1 zeros (or the initial state) on the left, groups = dim.

    Args:
        x: (batch, dim, L).
        weight: (dim, W), W in 2..4 (a Conv1d weight (dim, 1, W) may be passed squeezed).
        bias: optional (dim).
        activation: None or "silu" ("swish").
        initial_state: optional (batch, dim, W − 1): the last W − 1 inputs of the previous chunk, for
            streaming a long sequence in pieces.
        return_final_state: also return the last W − 1 values of x̃, the next chunk's initial_state.

    Returns:
        y (batch, dim, L), and the final state when asked for.
    """
    check_tensor("causal_conv1d", "x", x)
    check_tensor("causal_conv1d", "weight", weight)
    check_tensor("causal_conv1d", "bias", bias, optional=True)
    check_tensor("causal_conv1d", "initial_state", initial_state, optional=True)
    if activation not in _ACTIVATIONS:
        raise ValueError(f"causal_conv1d: argument 'activation' expected None or 'silu' but got {activation!r}")
    if weight.dim() == 3 and weight.shape[1] == 1:
        weight = weight.squeeze(1)
    y, final_state = _causal_conv1d(x, weight, bias, initial_state, _ACTIVATIONS[activation])
    return (y, final_state) if return_final_state else y


def causal_conv1d_reference(x, weight, bias=None, activation=None, initial_state=None, return_final_state=False):
    """F.conv1d over x̃ = concat(initial state or zeros, x), depthwise, then the activation."""
    if weight.dim() == 3:
        weight = weight.squeeze(1)
    dim, width = weight.shape
    if initial_state is None:
        initial_state = x.new_zeros(x.shape[0], dim, width - 1)
    padded = torch.cat([initial_state, x], dim=-1)
    y = F.conv1d(padded, weight[:, None, :], bias, groups=dim)
    if activation is not None:
        y = F.silu(y)
    return (y, padded[..., padded.shape[-1] - (width - 1) :]) if return_final_state else y


def _conv_samples(device, dtype, gen) -> Iterable[Sample]:
    for batch, dim, length, width in [(1, 1, 1, 2), (2, 3, 7, 3), (2, 5, 33, 4), (3, 4, 2, 4), (1, 8, 129, 4)]:
        x = _randn((batch, dim, length), dtype, device, gen)
        w = _randn((dim, width), dtype, device, gen, scale=0.5)
        b = _randn((dim,), dtype, device, gen)
        init = _randn((batch, dim, width - 1), dtype, device, gen)
        yield Sample((x, w), name="plain")
        yield Sample((x, w, b, "silu"), name="bias silu")
        yield Sample((x, w, b, None, init, True), name="streaming")
        yield Sample((x, w, None, "silu", init), name="init silu")


def _conv_gradcheck_samples(device, gen) -> Iterable[Sample]:
    for batch, dim, length, width in [(1, 2, 1, 4), (2, 3, 6, 3), (1, 2, 9, 2)]:
        x = _randn((batch, dim, length), torch.float64, device, gen)
        w = _randn((dim, width), torch.float64, device, gen)
        b = _randn((dim,), torch.float64, device, gen)
        init = _randn((batch, dim, width - 1), torch.float64, device, gen)
        yield Sample((x, w, b, "silu", init, True))
        yield Sample((x, w))


def _conv_bad_inputs(device) -> Iterable[BadInput]:
    x = torch.randn(2, 3, 8, device=device)
    w = torch.randn(3, 4, device=device)
    yield BadInput((x.long(), w), {}, TypeError, "'x'", "integer x")
    yield BadInput((x, "w"), {}, TypeError, "'weight'", "weight not a tensor")
    yield BadInput((x, torch.randn(3, 5, device=device)), {}, ValueError, "'weight'", "width 5")
    yield BadInput((x, torch.randn(2, 4, device=device)), {}, ValueError, "'weight'", "weight rows")
    yield BadInput((x, w, torch.ones(2, device=device)), {}, ValueError, "'bias'", "bias shape")
    yield BadInput((x, w, None, "relu"), {}, ValueError, "'activation'", "unknown activation")
    yield BadInput((x, w, None, None, torch.zeros(2, 3, 2, device=device)), {}, ValueError, "'initial_state'", "state width")
    yield BadInput((x, w.double()), {}, TypeError, "'weight'", "weight dtype")


register_info(
    OpInfo(
        name="causal_conv1d",
        public=causal_conv1d,
        reference=causal_conv1d_reference,
        torch_counterpart=causal_conv1d_reference,  # F.conv1d with left padding, at the test dtype
        samples=_conv_samples,
        bad_inputs=_conv_bad_inputs,
        differentiable_args=(0, 1, 2, 4),
        gradcheck_samples=_conv_gradcheck_samples,
        backward_ops=("causal_conv1d_backward",),
    )
)


# ==================================================================================== s4d_kernel


def _s4d_impl(log_dt, A_real, A_imag, C_real, C_imag, length):
    log_dt = log_dt.contiguous()
    K = log_dt.new_empty(log_dt.shape[0], length)
    _native.launch("s4d_kernel_forward", log_dt, log_dt, *[t.contiguous() for t in (A_real, A_imag, C_real, C_imag)], K)
    return K


def _s4d_backward_impl(grad_K, log_dt, A_real, A_imag, C_real, C_imag):
    inputs = [t.contiguous() for t in (log_dt, A_real, A_imag, C_real, C_imag)]
    grads = [torch.empty_like(t) for t in inputs]
    _native.launch("s4d_kernel_backward", inputs[0], grad_K.contiguous(), *inputs, *grads)
    return tuple(grads)


_s4d_backward = define(
    "s4d_kernel_backward(Tensor grad_K, Tensor log_dt, Tensor A_real, Tensor A_imag, Tensor C_real, Tensor C_imag)"
    " -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
    _s4d_backward_impl,
    lambda grad_K, log_dt, *params: tuple(t.new_empty(t.shape) for t in (log_dt, *params)),
)


def _s4d_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:5])


def _s4d_grad(ctx, grad_K):
    return (*_s4d_backward(grad_K, *ctx.saved_tensors), None)


def _s4d_fake(log_dt, A_real, A_imag, C_real, C_imag, length):
    _check_devices("s4d_kernel", log_dt, A_real=A_real, A_imag=A_imag, C_real=C_real, C_imag=C_imag)
    if length < 0:
        raise ValueError(f"s4d_kernel: argument 'length' expected a non-negative int but got {length}")
    return log_dt.new_empty(log_dt.shape[0], length)


_s4d_kernel = define(
    "s4d_kernel(Tensor log_dt, Tensor A_real, Tensor A_imag, Tensor C_real, Tensor C_imag, SymInt length) -> Tensor",
    _s4d_impl,
    _s4d_fake,
    backward=_s4d_grad,
    setup_context=_s4d_setup,
)


def s4d_kernel(
    log_dt: torch.Tensor,
    A_real: torch.Tensor,
    A_imag: torch.Tensor,
    C_real: torch.Tensor,
    C_imag: torch.Tensor,
    length: int,
) -> torch.Tensor:
    """The convolution kernel of a diagonal SSM (S4D, Gu et al. 2022), zero-order hold.

    K[h, l] = 2·Re Σ_n C̃[h, n]·exp(l·Δ_h·A[h, n]), C̃ = C·(exp(ΔA) − 1)/A (B folded into C), Δ_h =
    exp(log_dt[h]); the factor 2 and the real part account for the conjugate half of the N states.

    Args:
        log_dt: (H) log step sizes.
        A_real, A_imag: (H, N) real and imaginary parts of the diagonal state matrix.
        C_real, C_imag: (H, N) real and imaginary parts of C (B already folded in).
        length: L, the kernel length.

    Returns:
        K (H, L).
    """
    for arg, value in (("log_dt", log_dt), ("A_real", A_real), ("A_imag", A_imag), ("C_real", C_real), ("C_imag", C_imag)):
        check_tensor("s4d_kernel", arg, value)
    if isinstance(length, bool) or not isinstance(length, int) or length < 0:
        raise ValueError(f"s4d_kernel: argument 'length' expected a non-negative int but got {length!r}")
    return _s4d_kernel(log_dt, A_real, A_imag, C_real, C_imag, length)


def _s4d_complex(real, imag):
    """real + i·imag as complex128 for float64, else complex64 (torch has no complex bfloat16, and its
    complex32 lacks these ops): the S4D torch functions below compute in it."""
    real_dtype = torch.float64 if real.dtype == torch.float64 else torch.float32
    return torch.complex(real.to(real_dtype), imag.to(real_dtype))


def s4d_kernel_reference(log_dt, A_real, A_imag, C_real, C_imag, length):
    """K_l = C̄·Ā^l·B̄ with Ā = exp(ΔA) taken to the power l by repeated multiplication (B = 1)."""
    A, C = _s4d_complex(A_real, A_imag), _s4d_complex(C_real, C_imag)
    dt = torch.exp(log_dt)[:, None]
    A_bar = torch.exp(dt * A)  # zero-order hold
    B_bar = (A_bar - 1) / A  # (ΔA)^{-1}(exp(ΔA) − I)·ΔB with B = 1
    power = torch.ones_like(A_bar)
    terms = []
    for _ in range(length):
        terms.append(2 * (C * power * B_bar).sum(-1).real)
        power = power * A_bar
    return torch.stack(terms, -1).to(log_dt.dtype) if terms else log_dt.new_zeros(log_dt.shape[0], 0)


def s4d_kernel_vandermonde(log_dt, A_real, A_imag, C_real, C_imag, length):
    """The vectorized Vandermonde product in torch at the input dtype (the parity counterpart)."""
    A, C = _s4d_complex(A_real, A_imag), _s4d_complex(C_real, C_imag)
    dtA = torch.exp(log_dt)[:, None] * A
    C_tilde = C * (torch.exp(dtA) - 1) / A
    powers = torch.exp(dtA[..., None] * torch.arange(length, device=log_dt.device))  # (H, N, L)
    return (2 * torch.einsum("hn,hnl->hl", C_tilde, powers).real).to(log_dt.dtype)


def _s4d_inputs(device, dtype, gen, channels, states):
    log_dt = (torch.rand(channels, generator=gen, dtype=torch.float64) * 3 - 5).to(dtype).to(device)  # Δ ∈ [e^−5, e^−2]
    A_real = (-0.5 - 0.2 * torch.rand(channels, states, generator=gen, dtype=torch.float64)).to(dtype).to(device)
    A_imag = (torch.pi * torch.arange(states, dtype=torch.float64).repeat(channels, 1)).to(dtype).to(device)  # S4D-Lin
    C_real = _randn((channels, states), dtype, device, gen, scale=0.5)
    C_imag = _randn((channels, states), dtype, device, gen, scale=0.5)
    return log_dt, A_real, A_imag, C_real, C_imag


def _s4d_samples(device, dtype, gen) -> Iterable[Sample]:
    for channels, states, length in [(1, 1, 1), (3, 4, 17), (2, 8, 64), (5, 3, 130)]:
        yield Sample((*_s4d_inputs(device, dtype, gen, channels, states), length))


def _s4d_gradcheck_samples(device, gen) -> Iterable[Sample]:
    for channels, states, length in [(1, 2, 3), (2, 3, 9)]:
        yield Sample((*_s4d_inputs(device, torch.float64, gen, channels, states), length))


def _s4d_bad_inputs(device) -> Iterable[BadInput]:
    p = _s4d_inputs(device, torch.float32, torch.Generator().manual_seed(0), 2, 3)
    yield BadInput((p[0].long(), *p[1:], 8), {}, TypeError, "'log_dt'", "integer log_dt")
    yield BadInput((p[0], p[1][:, :2], *p[2:], 8), {}, ValueError, "'A_imag'", "A_imag shape")
    yield BadInput((p[0], *p[1:4], p[4][:1], 8), {}, ValueError, "'C_imag'", "C_imag shape")
    yield BadInput((*p, -1), {}, ValueError, "'length'", "negative length")
    yield BadInput((*p, True), {}, ValueError, "'length'", "bool length")
    yield BadInput((p[0], p[1].double(), *p[2:], 8), {}, TypeError, "'A_real'", "A_real dtype")


register_info(
    OpInfo(
        name="s4d_kernel",
        public=s4d_kernel,
        reference=s4d_kernel_reference,
        torch_counterpart=s4d_kernel_vandermonde,
        samples=_s4d_samples,
        bad_inputs=_s4d_bad_inputs,
        differentiable_args=(0, 1, 2, 3, 4),
        gradcheck_samples=_s4d_gradcheck_samples,
        backward_ops=("s4d_kernel_backward",),
    )
)


# ======================================================================================== cauchy


def _cauchy_shape(v_real, z_real) -> tuple[int, int]:
    if v_real.dim() != 2 or z_real.dim() != 1:
        raise ValueError(
            f"cauchy: argument 'v_real' expected shape (H, N) and 'z_real' (L) but got {tuple(v_real.shape)} and "
            f"{tuple(z_real.shape)}"
        )
    return v_real.shape[0], z_real.shape[0]


def _cauchy_impl(v_real, v_imag, z_real, z_imag, w_real, w_imag):
    v_real = v_real.contiguous()
    out_real = v_real.new_empty(_cauchy_shape(v_real, z_real))
    out_imag = torch.empty_like(out_real)
    rest = [t.contiguous() for t in (v_imag, z_real, z_imag, w_real, w_imag)]
    _native.launch("cauchy_forward", v_real, v_real, *rest, out_real, out_imag)
    return out_real, out_imag


def _cauchy_fake(v_real, v_imag, z_real, z_imag, w_real, w_imag):
    _check_devices("cauchy", v_real, v_imag=v_imag, z_real=z_real, z_imag=z_imag, w_real=w_real, w_imag=w_imag)
    shape = _cauchy_shape(v_real, z_real)
    return v_real.new_empty(shape), v_real.new_empty(shape)


def _cauchy_backward_impl(grad_real, grad_imag, v_real, v_imag, z_real, z_imag, w_real, w_imag):
    inputs = [t.contiguous() for t in (v_real, v_imag, z_real, z_imag, w_real, w_imag)]
    grads = [torch.empty_like(inputs[0]) for _ in range(4)]
    _native.launch("cauchy_backward", inputs[0], grad_real.contiguous(), grad_imag.contiguous(), *inputs, *grads)
    return tuple(grads)


_cauchy_backward = define(
    "cauchy_backward(Tensor grad_real, Tensor grad_imag, Tensor v_real, Tensor v_imag, Tensor z_real, "
    "Tensor z_imag, Tensor w_real, Tensor w_imag) -> (Tensor, Tensor, Tensor, Tensor)",
    _cauchy_backward_impl,
    lambda grad_real, grad_imag, v_real, *rest: tuple(v_real.new_empty(v_real.shape) for _ in range(4)),
)


def _cauchy_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _cauchy_grad(ctx, grad_real, grad_imag):
    v_real = ctx.saved_tensors[0]
    shape = (v_real.shape[0], ctx.saved_tensors[2].shape[0])
    grad_real = v_real.new_zeros(shape) if grad_real is None else grad_real
    grad_imag = v_real.new_zeros(shape) if grad_imag is None else grad_imag
    dvr, dvi, dwr, dwi = _cauchy_backward(grad_real, grad_imag, *ctx.saved_tensors)
    return dvr, dvi, None, None, dwr, dwi  # the nodes z are constants


_cauchy = define(
    "cauchy(Tensor v_real, Tensor v_imag, Tensor z_real, Tensor z_imag, Tensor w_real, Tensor w_imag) "
    "-> (Tensor, Tensor)",
    _cauchy_impl,
    _cauchy_fake,
    backward=_cauchy_grad,
    setup_context=_cauchy_setup,
)


def cauchy(
    v_real: torch.Tensor,
    v_imag: torch.Tensor,
    z_real: torch.Tensor,
    z_imag: torch.Tensor,
    w_real: torch.Tensor,
    w_imag: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Cauchy matrix-vector product of S4 (Gu et al. 2021, §3.3): out[h, l] = Σ_n v[h, n]/(z[l] − w[h, n]).

    Complex numbers are passed as (real, imaginary) pairs of float tensors. Gradients flow to v and w;
    the nodes z (roots of unity under the bilinear map) are treated as constants.

    Args:
        v_real, v_imag: (H, N) numerators.
        z_real, z_imag: (L) nodes.
        w_real, w_imag: (H, N) poles.

    Returns:
        (out_real, out_imag), each (H, L).
    """
    names = ("v_real", "v_imag", "z_real", "z_imag", "w_real", "w_imag")
    for arg, value in zip(names, (v_real, v_imag, z_real, z_imag, w_real, w_imag)):
        check_tensor("cauchy", arg, value)
    return _cauchy(v_real, v_imag, z_real, z_imag, w_real, w_imag)


def cauchy_reference(v_real, v_imag, z_real, z_imag, w_real, w_imag):
    """Σ_n v_n/(z_l − w_n) in torch complex arithmetic (at the input's precision).

    torch has no bfloat16 complex dtype: bfloat16 inputs are computed in complex64 and the result
    rounded back, as a torch user would have to.
    """
    dtype = v_real.dtype
    if dtype == torch.bfloat16:
        v_real, v_imag, z_real, z_imag, w_real, w_imag = (
            t.float() for t in (v_real, v_imag, z_real, z_imag, w_real, w_imag))
    v = torch.complex(v_real, v_imag)
    z = torch.complex(z_real, z_imag)
    w = torch.complex(w_real, w_imag)
    out = (v[:, None, :] / (z[None, :, None] - w[:, None, :])).sum(-1)
    return out.real.to(dtype), out.imag.to(dtype)


def _cauchy_inputs(device, dtype, gen, rows, poles, nodes):
    def r(*shape, scale=1.0, offset=0.0):
        return _randn(shape, dtype, device, gen, scale, offset)

    # Poles left of the imaginary axis, nodes near it: the regime of S4 (Re Λ < 0, nodes on iR).
    return r(rows, poles), r(rows, poles), r(nodes, scale=0.2), r(nodes, scale=3.0), r(rows, poles, scale=0.2, offset=-0.7), r(rows, poles, scale=3.0)  # fmt: skip


def _cauchy_samples(device, dtype, gen) -> Iterable[Sample]:
    for rows, poles, nodes in [(1, 1, 1), (3, 5, 9), (2, 33, 64), (4, 16, 127)]:
        yield Sample(_cauchy_inputs(device, dtype, gen, rows, poles, nodes))


def _cauchy_gradcheck_samples(device, gen) -> Iterable[Sample]:
    for rows, poles, nodes in [(1, 2, 3), (2, 3, 5)]:
        yield Sample(_cauchy_inputs(device, torch.float64, gen, rows, poles, nodes))


def _cauchy_bad_inputs(device) -> Iterable[BadInput]:
    p = _cauchy_inputs(device, torch.float32, torch.Generator().manual_seed(0), 2, 3, 4)
    yield BadInput((p[0].long(), *p[1:]), {}, TypeError, "'v_real'", "integer v_real")
    yield BadInput((p[0], p[1][:, :2], *p[2:]), {}, ValueError, "'v_imag'", "v_imag shape")
    yield BadInput((*p[:3], p[3][:2], *p[4:]), {}, ValueError, "'z_imag'", "z_imag shape")
    yield BadInput((*p[:4], p[4].double(), p[5]), {}, TypeError, "'w_real'", "w_real dtype")
    yield BadInput((p[0][0], *p[1:]), {}, ValueError, "'v_real'", "v_real rank")


register_info(
    OpInfo(
        name="cauchy",
        public=cauchy,
        reference=cauchy_reference,
        torch_counterpart=cauchy_reference,  # broadcasting complex torch ops at the test dtype
        samples=_cauchy_samples,
        bad_inputs=_cauchy_bad_inputs,
        differentiable_args=(0, 1, 4, 5),
        gradcheck_samples=_cauchy_gradcheck_samples,
        backward_ops=("cauchy_backward",),
    )
)


def s4_dplr_kernel(
    log_dt: torch.Tensor, Lambda: torch.Tensor, P: torch.Tensor, B: torch.Tensor, C: torch.Tensor, length: int
) -> torch.Tensor:
    """The S4 convolution kernel of a DPLR state matrix A = diag(Λ) − P·P* (Gu et al. 2021, Algorithm 1).

    Bilinear discretization; C is S4's C̃ = (I − Ā^L)*·C̄, so K̂(ω) = C̃*(I − Āω)⁻¹B̄ at the L-th roots
    of unity ω, where (Lemma C.3) (I − Āω)⁻¹B̄ = 2/(1 + ω)·R(ω)·B with R(ω) = (g(ω) − A)⁻¹,
    g(ω) = (2/Δ)·(1 − ω)/(1 + ω), and the rank-one correction by Woodbury's identity:
        K̂(ω) = 2/(1 + ω)·[k_CB − k_CP·k_PB/(1 + k_PP)],  k_ab = Σ_n conj(a_n)·b_n/(g(ω) − Λ_n).
    Each k is a Cauchy product (`cauchy`, native), written (Δ/2)·Σ conj(a)·b/(t − Δ·Λ/2) with t = (1 − ω)/(1 + ω).
    K = Re ifft(K̂) (torch.fft: docs/design.md).

    Args:
        log_dt: (H) log step sizes Δ.
        Lambda, P, B, C: (H, N) complex tensors (the DPLR form from `replearn.nn.nplr_legs`, one row
            per channel). Every state is listed (no conjugate halving); the kernel is Re K.
        length: L.

    Returns:
        K (H, L), real, in log_dt's dtype.
    """
    real_dtype = log_dt.dtype
    l = torch.arange(length, device=log_dt.device, dtype=torch.float64)
    omega = torch.polar(torch.ones_like(l), -2 * torch.pi * l / length)
    t = ((1 - omega) / (1 + omega)).to(Lambda.dtype)  # the bilinear map of the roots of unity
    dt = torch.exp(log_dt)[:, None]
    poles = dt * Lambda / 2
    H = Lambda.shape[0]
    numerators = torch.cat([C.conj() * B, C.conj() * P, P.conj() * B, P.conj() * P])  # (4H, N)
    k_real, k_imag = cauchy(numerators.real.to(real_dtype), numerators.imag.to(real_dtype), t.real.to(real_dtype),
                            t.imag.to(real_dtype), poles.real.repeat(4, 1).to(real_dtype),
                            poles.imag.repeat(4, 1).to(real_dtype))  # fmt: skip
    k = torch.complex(k_real, k_imag).view(4, H, length) * (dt / 2)
    k_hat = 2 / (1 + omega.to(k.dtype)) * (k[0] - k[1] * k[2] / (1 + k[3]))
    return torch.fft.ifft(k_hat, n=length).real.to(real_dtype)


# ====================================================================================== fft_conv


def fft_conv(u: torch.Tensor, K: torch.Tensor, D: torch.Tensor | None = None) -> torch.Tensor:
    """The long causal convolution y = K * u (+ D·u) by FFT (S4's convolutional mode, Gu et al. 2021).

    u (batch, H, L), K (H, L'), L' ≤ L zero-padded. Both are transformed at length 2L so the circular
    convolution equals the linear (causal) one on the first L outputs. The FFT is torch.fft
    (docs/design.md): a native FFT would add nothing but code here.
    """
    length = u.shape[-1]
    n = 2 * length
    y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(K, n=n), n=n)[..., :length]
    return y if D is None else y + D[:, None] * u
