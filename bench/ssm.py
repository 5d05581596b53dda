"""State-space family: replearn.ops.selective_scan and causal_conv1d against PyTorch, float32.

PyTorch has no scan op, so the selective scan is compared with PyTorch programs written from Mamba's
equations (Gu & Dao 2023), in the same run:
- `loop`: the issue's straightforward per-step loop (`selective_scan_loop` below): at each step
  discretize (Ā = exp(Δ·A), B̄x = Δ·B·x with B broadcast over channels), h = Ā h + B̄x, y = C h;
  forward and forward+backward (autograd through the loop). Issue 7 quotes 269 ms and 2.41 s for it;
- `test reference`: replearn.ops.ssm.selective_scan_reference, the same recurrence written for every
  B/C form (it expands B and C to (batch, dim, N, L) and slices them per step), the parity tests'
  counterpart: slower than the loop above, forward only;
- `vectorized`: Mamba's `selective_scan_ref` style, exp(Δ·A) and Δ·B·u for all steps at once as
  (batch, dim, L, N) tensors, then the L-step state loop; forward only (its backward would hold the
  four (batch, dim, L, N) tensors).
The configuration is Mamba's block: selective B and C (one group), D, z gating, δ bias and softplus.
causal_conv1d is compared with F.conv1d (left padding, groups = dim) followed by silu.

Byte model for achieved GB/s (minimal traffic, each tensor moved once; S = batch·dim·L, M = batch·N·L):
    scan fwd       read u, δ, z, B, C, write out                            = (4·S + 2·M) · itemsize
    scan fwd+bwd   fwd, then read dout, u, δ, z, B, C, write du, dδ, dz, dB, dC = (11·S + 6·M) · itemsize
    conv fwd       read x, write y                                          = 2·S · itemsize
    conv fwd+bwd   fwd, then read dy, x, write dx                           = 5·S · itemsize
The scan is compute bound (one exp per state and step), so its GB/s sits far below the copy rate.

Goals (issue 7, this 2-core CPU): selective_scan ≥ 20× the loop forward, ≥ 50× forward+backward.
RESULTS.md also quotes the ratios to the issue's own times of the loop (269 ms, 2.41 s).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

import replearn.ops as ops
from _harness import Case, forward, forward_backward
from replearn.ops.ssm import cauchy_reference, s4d_kernel_vandermonde, selective_scan_reference


def _scan_inputs(shape, dtype, device):
    """u, δ, A, B, C, D, z, δ_bias for (batch, dim, L, N): the same values for both sides."""
    batch, dim, length, states = shape
    g = torch.Generator().manual_seed(0)

    def randn(*s, scale=1.0, offset=0.0):
        return (torch.randn(s, generator=g) * scale + offset).to(device=device, dtype=dtype)

    A = -torch.arange(1, states + 1, dtype=torch.float32).repeat(dim, 1).to(device=device, dtype=dtype)  # S4D-real
    return [randn(batch, dim, length), randn(batch, dim, length, scale=0.5, offset=-2.0), A,
            randn(batch, 1, states, length), randn(batch, 1, states, length), randn(dim), randn(batch, dim, length),
            randn(dim, scale=0.1)]  # fmt: skip


def selective_scan_loop(u, delta, A, B, C, D, z, delta_bias):
    """The per-step loop of issue 7, for one group of selective B, C: discretize, h = Ā h + B̄x, y = C h."""
    batch, dim, length = u.shape
    dt = F.softplus(delta + delta_bias[:, None])  # (batch, dim, L)
    B, C = B[:, 0], C[:, 0]  # (batch, N, L)
    h = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for t in range(length):
        dA = torch.exp(dt[:, :, t, None] * A)  # Ā = exp(ΔA): (batch, dim, N)
        dBx = (dt[:, :, t] * u[:, :, t])[:, :, None] * B[:, None, :, t]  # B̄x = ΔBx
        h = dA * h + dBx
        ys.append((h * C[:, None, :, t]).sum(-1))  # y = Ch
    y = torch.stack(ys, -1) + D[:, None] * u
    return y * F.silu(z)


def selective_scan_vectorized(u, delta, A, B, C, D, z, delta_bias):
    """Mamba's reference formulation: discretize every step at once, then loop over the states."""
    dt = F.softplus(delta + delta_bias[:, None])
    deltaA = torch.exp(torch.einsum("bdl,dn->bdln", dt, A))
    deltaB_u = torch.einsum("bdl,bnl,bdl->bdln", dt, B[:, 0], u)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[2]):
        h = deltaA[:, :, t] * h + deltaB_u[:, :, t]
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, 0, :, t]))
    y = torch.stack(ys, -1) + D[:, None] * u
    return y * F.silu(z)


def scan_spec(torch_program):
    def spec(shape, dtype, device, side):
        inputs = _scan_inputs(shape, dtype, device)
        u, delta, A, B, C, D, z, bias = inputs
        if side == "torch":
            return inputs, lambda: torch_program(u, delta, A, B, C, D, z, bias)
        return inputs, lambda: ops.selective_scan(u, delta, A, B, C, D, z, bias, True)

    return spec


def _test_reference(u, delta, A, B, C, D, z, bias):
    return selective_scan_reference(u, delta, A, B, C, D, z, bias, True)


def conv_spec(shape, dtype, device, side):
    batch, dim, length, width = shape
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, dim, length, generator=g).to(device=device, dtype=dtype)
    w = (torch.randn(dim, width, generator=g) * 0.5).to(device=device, dtype=dtype)
    b = torch.randn(dim, generator=g).to(device=device, dtype=dtype)
    if side == "torch":
        return [x, w, b], lambda: F.silu(F.conv1d(x, w[:, None, :], b, padding=width - 1, groups=dim)[..., :length])
    return [x, w, b], lambda: ops.causal_conv1d(x, w, b, "silu")


def s4d_spec(shape, dtype, device, side):
    """S4D's kernel K (H, L) from N/2 complex modes per channel; shape = (H, N/2, L). torch: the
    vectorized Vandermonde product (the op's parity counterpart)."""
    channels, modes, length = shape
    g = torch.Generator().manual_seed(0)
    log_dt = (torch.rand(channels, generator=g) * 4 - 7).to(device=device, dtype=dtype)
    a_real = (-0.5 * torch.ones(channels, modes)).to(device=device, dtype=dtype)
    a_imag = (torch.pi * torch.arange(modes, dtype=torch.float32).expand(channels, modes)).to(device=device, dtype=dtype)
    c_real, c_imag = (torch.randn(2, channels, modes, generator=g) * 0.5).to(device=device, dtype=dtype)
    fn = s4d_kernel_vandermonde if side == "torch" else ops.s4d_kernel
    return [log_dt, c_real, c_imag], lambda: fn(log_dt, a_real, a_imag, c_real, c_imag, length)


def cauchy_spec(shape, dtype, device, side):
    """S4's Cauchy product out (H, L) = Σ_n v/(z − w); shape = (H, N, L). torch: the broadcast
    complex division (the op's parity counterpart). The harness times one output tensor, so both
    sides return re + im (one extra elementwise add on each side)."""
    channels, states, length = shape
    g = torch.Generator().manual_seed(0)
    v_real, v_imag, w_imag = torch.randn(3, channels, states, generator=g).to(device=device, dtype=dtype)
    w_real = (-0.5 - torch.rand(channels, states, generator=g)).to(device=device, dtype=dtype)
    angle = 2 * torch.pi * torch.arange(length, dtype=torch.float32) / length
    z_real, z_imag = torch.cos(angle).to(device=device, dtype=dtype), torch.sin(angle).to(device=device, dtype=dtype)
    fn = cauchy_reference if side == "torch" else ops.cauchy

    def call():
        out_real, out_imag = fn(v_real, v_imag, z_real, z_imag, w_real, w_imag)
        return out_real + out_imag

    return [v_real, v_imag, w_real], call


def _kernel_bytes(shape, itemsize):
    """Read the (H, N) parameters, write the (H, L) output."""
    channels, states, length = shape
    return (4 * channels * states + 2 * channels * length) * itemsize


def _scan_bytes(sequences: int, matrices: int):
    def count(shape, itemsize):
        batch, dim, length, states = shape
        return (sequences * batch * dim * length + matrices * batch * states * length) * itemsize

    return count


def _conv_bytes(sequences: int):
    return lambda shape, itemsize: sequences * shape[0] * shape[1] * shape[2] * itemsize


SCAN_SHAPE = (4, 768, 1024, 16)  # batch, dim, L, N: the measurement
SCAN_QUICK = (2, 32, 96, 16)
CONV_SHAPE = (4, 1536, 1024, 4)  # batch, dim (Mamba's 2·d_model), L, width
CONV_QUICK = (2, 32, 96, 4)

_CPU_CASES = [
    Case("selective_scan fwd (vs loop)", SCAN_SHAPE, SCAN_QUICK, forward(scan_spec(selective_scan_loop)),
         _scan_bytes(4, 2), min_speedup=20.0),  # fmt: skip
    Case("selective_scan fwd+bwd (vs loop)", SCAN_SHAPE, SCAN_QUICK, forward_backward(scan_spec(selective_scan_loop)),
         _scan_bytes(11, 6), min_speedup=50.0),  # fmt: skip
    Case("selective_scan fwd (vs test reference)", SCAN_SHAPE, SCAN_QUICK, forward(scan_spec(_test_reference)),
         _scan_bytes(4, 2)),  # fmt: skip
    Case("selective_scan fwd (vs vectorized)", SCAN_SHAPE, SCAN_QUICK, forward(scan_spec(selective_scan_vectorized)),
         _scan_bytes(4, 2)),  # fmt: skip
    Case("causal_conv1d(silu) fwd", CONV_SHAPE, CONV_QUICK, forward(conv_spec), _conv_bytes(2)),
    Case("causal_conv1d(silu) fwd+bwd", CONV_SHAPE, CONV_QUICK, forward_backward(conv_spec), _conv_bytes(5)),
    # S4's kernels: an S4 layer of H = 512 channels, N = 64 states (32 complex modes), L = 4096.
    Case("s4d_kernel fwd", (512, 32, 4096), (16, 8, 256), forward(s4d_spec), _kernel_bytes),
    Case("s4d_kernel fwd+bwd", (512, 32, 4096), (16, 8, 256), forward_backward(s4d_spec), _kernel_bytes),
    Case("cauchy fwd", (512, 32, 2049), (16, 8, 129), forward(cauchy_spec), _kernel_bytes),
    Case("cauchy fwd+bwd", (512, 32, 2049), (16, 8, 129), forward_backward(cauchy_spec), _kernel_bytes),
]
# The same cases on a GPU where one and the CUDA kernels are present, reported without goals.
CASES = _CPU_CASES + [dataclasses.replace(case, device="cuda", min_speedup=None) for case in _CPU_CASES]
