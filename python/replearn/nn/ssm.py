"""State-space building blocks: HiPPO/S4D initializations, S4Layer, SelectiveSSM and MambaBlock.

- HiPPO-LegS (Gu et al. 2020, "HiPPO: Recurrent Memory with Optimal Polynomial Projections", eq. for
  LegS): A[n, k] = −√(2n+1)·√(2k+1) for n > k, −(n+1) for n = k, 0 for n < k; B[n] = √(2n+1).
- Its normal-plus-low-rank form (Gu et al. 2021, "Efficiently Modeling Long Sequences with Structured
  State Spaces", §3.1 and Appendix C.1): A = S − P·Pᵀ with P[n] = √(n + ½), where S = A + P·Pᵀ is
  −½·I plus a skew-symmetric matrix, hence normal: S = V·Λ·V*, giving the DPLR form Λ − (V*P)(V*P)*.
- Diagonal initializations (Gu et al. 2022, "On the Parameterization and Initialization of Diagonal
  State Space Models", §4): S4D-LegS takes Λ (the diagonal of the DPLR form), S4D-Lin A_n = −½ + iπn,
  S4D-Inv A_n = −½ + i·(N/π)·(N/(2n+1) − 1).
- S4Layer: a diagonal SSM kernel per channel (replearn.ops.s4d_kernel), the long convolution by FFT,
  a D skip, then activation and a GLU output projection, as in the S4D paper's layer.
- SelectiveSSM / MambaBlock (Gu & Dao 2023, §3.4 and Figure 3): in_proj → causal depthwise conv → silu
  → x_proj (Δ, B, C) → dt_proj → selective scan gated by silu(z) → out_proj; MambaBlock adds a
  pre-norm and a residual connection.

`S4Layer(kernel="s4d")` computes its kernel with the native Vandermonde op (replearn.ops.s4d_kernel);
`S4Layer(kernel="dplr")` is full S4: HiPPO-LegS in DPLR form, its kernel from native Cauchy products
(replearn.ops.s4_dplr_kernel).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from .norm import RMSNorm

__all__ = ["hippo_legs", "nplr_legs", "s4d_init", "S4Layer", "SelectiveSSM", "MambaBlock"]


def hippo_legs(N: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """The HiPPO-LegS state matrix A (N, N) and input vector B (N) (Gu et al. 2020)."""
    n = torch.arange(N, dtype=dtype)
    root = torch.sqrt(2 * n + 1)
    A = -torch.tril(root[:, None] * root[None, :], diagonal=-1) - torch.diag(n + 1)
    return A, root.clone()


def nplr_legs(N: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """HiPPO-LegS in diagonal-plus-low-rank form (Gu et al. 2021, App. C.1).

    Returns (Λ, P̃, B̃, V): A = V·(diag Λ − P̃·P̃*)·V* with P̃ = V*·P, B̃ = V*·B, all complex128, the N
    eigenvalues of the normal part S = A + P·Pᵀ.
    """
    A, B = hippo_legs(N)
    P = torch.sqrt(torch.arange(N, dtype=torch.float64) + 0.5)
    S = A + P[:, None] * P[None, :]
    # S = −½·I + skew-symmetric: diagonalize the skew part as a Hermitian matrix i·(S + ½I).
    skew = S + 0.5 * torch.eye(N, dtype=torch.float64)
    eig, V = torch.linalg.eigh(-1j * skew.to(torch.complex128))  # −i·skew is Hermitian
    Lambda = -0.5 + 1j * eig
    Vh = V.conj().T
    return Lambda, Vh @ P.to(torch.complex128), Vh @ B.to(torch.complex128), V


def s4d_init(N: int, kind: str = "lin") -> torch.Tensor:
    """N diagonal state eigenvalues (one of each conjugate pair), complex128 (Gu et al. 2022, §4).

    kind: "lin" (A_n = −½ + iπn), "inv" (−½ + i·(N/π)·(N/(2n+1) − 1)) or "legs" (the eigenvalues of
    the normal part of HiPPO-LegS with positive imaginary part, from a 2N-state LegS matrix).
    """
    n = torch.arange(N, dtype=torch.float64)
    if kind == "lin":
        return torch.complex(torch.full_like(n, -0.5), math.pi * n)
    if kind == "inv":
        return torch.complex(torch.full_like(n, -0.5), N / math.pi * (N / (2 * n + 1) - 1))
    if kind == "legs":
        Lambda = nplr_legs(2 * N)[0]
        Lambda = Lambda[Lambda.imag > 0] if int((Lambda.imag > 0).sum()) >= N else Lambda
        return Lambda[torch.argsort(Lambda.imag)][:N]
    raise ValueError(f"s4d_init: argument 'kind' expected 'lin', 'inv' or 'legs' but got {kind!r}")


class S4Layer(nn.Module):
    """An S4 layer: y = GLU(W·act(K * u + D·u)) per channel (Gu et al. 2021; 2022).

    Args:
        d_model: channels H.
        d_state: N. For kernel="s4d", complex states each standing for a conjugate pair; for
            kernel="dplr", the states of the HiPPO-LegS matrix (conjugate pairs listed explicitly).
        kernel: "s4d" (diagonal, Vandermonde) or "dplr" (diagonal plus low rank, Cauchy).
        init: for "s4d": "lin", "inv" or "legs" (s4d_init).
        dt_min, dt_max: the range of the log-uniform initial step sizes Δ.
        dropout: after the activation.

    Input and output: (batch, L, d_model). `forward(x, state=None)` returns (y, None): the layer runs
    in its convolutional mode and keeps no recurrent state.
    """

    def __init__(self, d_model: int, d_state: int = 64, kernel: str = "s4d", init: str = "lin", dt_min: float = 1e-3,
                 dt_max: float = 1e-1, dropout: float = 0.0):  # fmt: skip
        super().__init__()
        if kernel not in ("s4d", "dplr"):
            raise ValueError(f"S4Layer: argument 'kernel' expected 's4d' or 'dplr' but got {kernel!r}")
        self.kernel_kind = kernel
        self.log_dt = nn.Parameter(torch.empty(d_model).uniform_(math.log(dt_min), math.log(dt_max)))
        if kernel == "s4d":
            A = s4d_init(d_state, init).repeat(d_model, 1)  # (H, N)
            C = torch.randn(d_model, d_state, dtype=torch.complex128) * (0.5**0.5)  # variance-½ complex normal
        else:
            Lambda, P, B, _ = nplr_legs(d_state)
            A = Lambda.repeat(d_model, 1)
            self.P_real, self.P_imag = self._pair(P.repeat(d_model, 1))
            self.B_real, self.B_imag = self._pair(B.repeat(d_model, 1))
            C = torch.randn(d_model, d_state, dtype=torch.complex128) * (0.5**0.5)
        # A's real part is kept negative through a log parameter (S4D §3).
        self.A_log_neg_real = nn.Parameter(torch.log(-A.real).float())
        self.A_imag = nn.Parameter(A.imag.float())
        self.C_real, self.C_imag = self._pair(C)
        self.D = nn.Parameter(torch.randn(d_model))
        self.activation = nn.GELU()
        self.dropout = nn.Dropout(dropout)
        self.output_linear = nn.Linear(d_model, 2 * d_model)  # GLU halves it back

    @staticmethod
    def _pair(z: torch.Tensor) -> tuple[nn.Parameter, nn.Parameter]:
        return nn.Parameter(z.real.float().clone()), nn.Parameter(z.imag.float().clone())

    def kernel(self, length: int) -> torch.Tensor:
        """K (H, L)."""
        A_real = -torch.exp(self.A_log_neg_real)
        if self.kernel_kind == "s4d":
            return ops.s4d_kernel(self.log_dt, A_real, self.A_imag, self.C_real, self.C_imag, length)
        Lambda = torch.complex(A_real, self.A_imag)
        P = torch.complex(self.P_real, self.P_imag)
        B = torch.complex(self.B_real, self.B_imag)
        C = torch.complex(self.C_real, self.C_imag)
        return ops.s4_dplr_kernel(self.log_dt, Lambda, P, B, C, length)

    def forward(self, x: torch.Tensor, state=None) -> tuple[torch.Tensor, None]:
        u = x.transpose(1, 2)  # (B, H, L)
        y = ops.fft_conv(u, self.kernel(u.shape[-1]), self.D)
        y = self.dropout(self.activation(y)).transpose(1, 2)  # (B, L, H)
        return F.glu(self.output_linear(y), dim=-1), None


class SelectiveSSM(nn.Module):
    """Mamba's selective SSM mixer (Gu & Dao 2023, Figure 3), (batch, L, d_model) → same.

    Args:
        d_model: model width.
        d_state: N, states per channel (Mamba: 16).
        d_conv: causal conv width (Mamba: 4).
        expand: d_inner = expand·d_model (Mamba: 2).
        dt_rank: rank of the Δ projection ("auto": ⌈d_model/16⌉, as in Mamba).
        dt_min, dt_max: initial Δ range, log-uniform; dt_proj's bias is softplus⁻¹(Δ).
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2, dt_rank: int | str = "auto",
                 dt_min: float = 1e-3, dt_max: float = 1e-1, bias: bool = False):  # fmt: skip
        super().__init__()
        self.d_inner = expand * d_model
        self.d_state = d_state
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus⁻¹(Δ)
        # S4D-Real initialization A_n = −(n + 1), stored as log(−A) (Mamba §3.6).
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(self.d_inner, 1))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)

    def forward(self, x: torch.Tensor, state=None) -> tuple[torch.Tensor, None]:
        batch, length, _ = x.shape
        xz = self.in_proj(x).transpose(1, 2)  # (B, 2·d_inner, L)
        u, z = xz.chunk(2, dim=1)
        u = ops.causal_conv1d(u, self.conv1d.weight.squeeze(1), self.conv1d.bias, "silu")
        dbc = self.x_proj(u.transpose(1, 2))  # (B, L, dt_rank + 2N)
        dt, B, C = torch.split(dbc, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = (dt @ self.dt_proj.weight.T).transpose(1, 2)  # (B, d_inner, L); bias goes in the scan
        B = B.transpose(1, 2).unsqueeze(1)  # (B, 1, N, L)
        C = C.transpose(1, 2).unsqueeze(1)
        A = -torch.exp(self.A_log.to(torch.promote_types(self.A_log.dtype, torch.float32)))  # float32 at least
        y = ops.selective_scan(u, delta, A, B, C, self.D, z, self.dt_proj.bias, True)
        return self.out_proj(y.transpose(1, 2)), None


class MambaBlock(nn.Module):
    """Pre-norm residual block around SelectiveSSM: x + mixer(RMSNorm(x)) (Mamba's Block)."""

    def __init__(self, d_model: int, **mixer_kwargs):
        super().__init__()
        self.norm = RMSNorm(d_model)
        self.mixer = SelectiveSSM(d_model, **mixer_kwargs)

    def forward(self, x: torch.Tensor, state=None) -> tuple[torch.Tensor, None]:
        y, _ = self.mixer(self.norm(x))
        return x + y, None
