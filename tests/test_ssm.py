"""State-space family beyond the registry tests: streaming, chunk recomputation, HiPPO, the layers."""

from __future__ import annotations

import pytest
import torch

import replearn
from replearn.ops import ssm as ssm_ops


def _scan_inputs(gen, batch=2, dim=4, length=150, states=6, groups=2):
    return ssm_ops._scan_inputs("cpu", torch.float64, gen, batch, dim, length, states, groups)


def test_scan_last_state_equals_the_loops_and_continues_a_split_sequence(gen):
    u, delta, A, B, C, D, z, bias = _scan_inputs(gen)
    out, last = replearn.ops.selective_scan(u, delta, A, B, C, D, z, bias, True, return_last_state=True)
    ref_out, ref_last = ssm_ops.selective_scan_reference(u, delta, A, B, C, D, z, bias, True, return_last_state=True)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(last, ref_last, rtol=1e-10, atol=1e-12)


def test_scan_gradients_across_many_chunks_match_autograd_of_the_loop(gen):
    # L = 200 spans four checkpoint chunks, the last one partial: the backward's recomputation.
    args = [t.requires_grad_(True) for t in _scan_inputs(gen, batch=1, dim=3, length=200, states=4, groups=1)]
    out = replearn.ops.selective_scan(*args, True)
    ref = ssm_ops.selective_scan_reference(*args, True)
    cot = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    mine = torch.autograd.grad(out, args, cot)
    theirs = torch.autograd.grad(ref, args, cot)
    for a, b in zip(mine, theirs):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("selective_B, selective_C", [(True, True), (True, False), (False, True), (False, False)])
def test_scan_blocks_of_lanes_match_the_loop(gen, selective_B, selective_C):
    # The CPU scan runs 16 float32 (8 float64) channels of one group at once: 20 channels a group give
    # full and partial blocks, N = 19 spans more than one vector of lanes, L = 130 three chunks.
    shape = dict(batch=2, dim=40, length=130, states=19, groups=2, selective_B=selective_B, selective_C=selective_C)
    inputs = ssm_ops._scan_inputs("cpu", torch.float64, gen, **shape)
    cot = torch.randn(2, 40, 130, generator=gen, dtype=torch.float64)
    args = [t.clone().requires_grad_(True) for t in inputs]
    ref = ssm_ops.selective_scan_reference(*args, True)
    ref_grads = torch.autograd.grad(ref, args, cot)
    for dtype, rtol, atol in ((torch.float64, 1e-9, 1e-10), (torch.float32, 2e-4, 2e-4)):
        ours = [t.to(dtype).requires_grad_(True) for t in inputs]
        out = replearn.ops.selective_scan(*ours, True)
        torch.testing.assert_close(out.double(), ref.detach(), rtol=rtol, atol=atol)
        grads = torch.autograd.grad(out, ours, cot.to(dtype))
        for name, a, b in zip("u delta A B C D z delta_bias".split(), grads, ref_grads):
            scale = b.abs().max().item()
            torch.testing.assert_close(a.double(), b, rtol=rtol, atol=atol * max(1.0, scale), msg=lambda m: f"{name}: {m}")


def test_causal_conv1d_streaming_in_chunks_equals_one_pass(gen):
    x = torch.randn(2, 5, 40, generator=gen, dtype=torch.float64)
    w = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    b = torch.randn(5, generator=gen, dtype=torch.float64)
    whole = replearn.ops.causal_conv1d(x, w, b, "silu")
    state, pieces = None, []
    for piece in x.split([1, 2, 13, 24], dim=-1):  # pieces shorter than the kernel too
        y, state = replearn.ops.causal_conv1d(piece, w, b, "silu", initial_state=state, return_final_state=True)
        pieces.append(y)
    torch.testing.assert_close(torch.cat(pieces, -1), whole, rtol=1e-12, atol=1e-12)


def test_hippo_legs_matches_its_definition_and_nplr_reconstructs_it():
    N = 6
    A, B = replearn.nn.hippo_legs(N)
    for n in range(N):
        assert B[n] == (2 * n + 1) ** 0.5
        for k in range(N):
            expected = -((2 * n + 1) ** 0.5) * (2 * k + 1) ** 0.5 if n > k else (-(n + 1) if n == k else 0.0)
            assert abs(A[n, k].item() - expected) < 1e-12
    Lambda, P, Bt, V = replearn.nn.nplr_legs(N)
    rebuilt = V @ (torch.diag(Lambda) - P[:, None] * P.conj()[None, :]) @ V.conj().T
    torch.testing.assert_close(rebuilt.real, A, rtol=1e-9, atol=1e-9)
    assert rebuilt.imag.abs().max() < 1e-9
    torch.testing.assert_close(Lambda.real, torch.full((N,), -0.5, dtype=torch.float64))


def test_s4d_kernel_equals_direct_matrix_powers_of_the_discretized_system(gen):
    # K_l = C̄·Ā^l·B̄ with dense (2N × 2N) real block matrices of the conjugate pairs: no diagonal shortcut.
    log_dt, Ar, Ai, Cr, Ci = ssm_ops._s4d_inputs("cpu", torch.float64, gen, 2, 3)
    K = replearn.ops.s4d_kernel(log_dt, Ar, Ai, Cr, Ci, 12)
    for h in range(2):
        A = torch.complex(Ar[h], Ai[h])
        Afull = torch.diag(torch.cat([A, A.conj()]))
        dt = log_dt[h].exp()
        Abar = torch.linalg.matrix_exp(dt * Afull)
        Bbar = torch.linalg.solve(Afull, Abar - torch.eye(6, dtype=Abar.dtype)) @ torch.ones(6, dtype=Abar.dtype)
        Cfull = torch.cat([torch.complex(Cr[h], Ci[h]), torch.complex(Cr[h], -Ci[h])])
        direct = torch.stack([(Cfull @ torch.linalg.matrix_power(Abar, l) @ Bbar).real for l in range(12)])
        torch.testing.assert_close(K[h], direct, rtol=1e-9, atol=1e-10)


def test_mamba_block_and_s4_layer_shapes_and_gradients():
    torch.manual_seed(0)
    x = torch.randn(2, 37, 16, requires_grad=True)
    block = replearn.nn.MambaBlock(16, d_state=8)
    y, _ = block(x)
    assert y.shape == x.shape
    y.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in block.parameters())
    for kwargs in ({"init": "lin"}, {"init": "inv"}, {"init": "legs"}, {"kernel": "dplr"}):
        layer = replearn.nn.S4Layer(16, d_state=8, **kwargs)
        out, _ = layer(x)
        assert out.shape == x.shape and torch.isfinite(out).all(), kwargs
        out.square().mean().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters()), kwargs


def _dplr_reference(log_dt, Lambda, P, B, C, length):
    """K_l = C̄*·Ā^l·B̄ by dense matrix powers, bilinear discretization, C̄* = C̃*(I − Ā^L)⁻¹ (S4, App. C)."""
    out = []
    for h in range(Lambda.shape[0]):
        N = Lambda.shape[1]
        eye = torch.eye(N, dtype=torch.complex128)
        A = torch.diag(Lambda[h]) - P[h][:, None] * P[h].conj()[None, :]
        dt = log_dt[h].exp()
        back = torch.linalg.inv(eye - dt / 2 * A)
        A_bar, B_bar = back @ (eye + dt / 2 * A), back @ (dt * B[h])
        C_bar_star = C[h].conj() @ torch.linalg.inv(eye - torch.linalg.matrix_power(A_bar, length))
        out.append(torch.stack([(C_bar_star @ torch.linalg.matrix_power(A_bar, l) @ B_bar).real for l in range(length)]))
    return torch.stack(out)


def test_s4_dplr_kernel_from_cauchy_products_equals_matrix_powers(gen):
    Lambda, P, B, _ = replearn.nn.nplr_legs(6)
    H = 2
    Lambda, P, B = (t.repeat(H, 1) for t in (Lambda, P, B))
    C = torch.complex(*torch.randn(2, H, 6, generator=gen, dtype=torch.float64))
    log_dt = torch.tensor([-2.0, -1.0], dtype=torch.float64)
    for length in (7, 16):  # odd and even L (ω = −1 is a root of unity for even L)
        K = replearn.ops.s4_dplr_kernel(log_dt, Lambda, P, B, C, length)
        torch.testing.assert_close(K, _dplr_reference(log_dt, Lambda, P, B, C, length), rtol=1e-7, atol=1e-8)


def test_fft_conv_equals_the_direct_causal_convolution(gen):
    """y[b, h, t] = Σ_{s ≤ t} K[h, s]·u[b, h, t − s] (+ D[h]·u[b, h, t]), K shorter than u and as long,
    against the sum written out; gradients to u, K and D by gradcheck."""
    for length, k_len in ((1, 1), (7, 7), (33, 5), (64, 64)):
        u = torch.randn(2, 3, length, generator=gen, dtype=torch.float64)
        K = torch.randn(3, k_len, generator=gen, dtype=torch.float64)
        D = torch.randn(3, generator=gen, dtype=torch.float64)
        direct = torch.zeros_like(u)
        for t in range(length):
            for s in range(min(t + 1, k_len)):
                direct[..., t] += K[:, s] * u[..., t - s]
        torch.testing.assert_close(replearn.ops.fft_conv(u, K), direct, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(replearn.ops.fft_conv(u, K, D), direct + D[:, None] * u, rtol=1e-10, atol=1e-10)
    args = (u.requires_grad_(), K.requires_grad_(), D.requires_grad_())
    assert torch.autograd.gradcheck(replearn.ops.fft_conv, args)


def test_empty_batch_and_float64_modules_and_strided_initial_state():
    """Edge cases a fuzzer found: a batch of 0 sequences (the forward divided by it), a float64
    SelectiveSSM (A was cast to float32), a non-contiguous initial_state that needs a gradient (its
    gradient was allocated in its layout, which the kernel refuses)."""
    u = torch.randn(0, 2, 5)
    out = replearn.ops.selective_scan(u, u, -torch.ones(2, 3), torch.randn(2, 3), torch.randn(2, 3))
    assert out.shape == (0, 2, 5)

    torch.manual_seed(0)
    layer = replearn.nn.SelectiveSSM(8).double()
    x = torch.randn(1, 4, 8, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    y = y[0] if isinstance(y, tuple) else y
    assert y.dtype == torch.float64
    torch.autograd.grad(y.sum(), x)

    x = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    strided = torch.randn(2, 3, 5, dtype=torch.float64).transpose(1, 2).requires_grad_()  # (2, 5, 3)
    grads = []
    for initial in (strided, strided.detach().contiguous().requires_grad_()):
        out = replearn.ops.causal_conv1d(x, weight, initial_state=initial)
        grads.append(torch.autograd.grad(out.square().sum(), [x, weight, initial]))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
