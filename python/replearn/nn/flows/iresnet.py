"""Invertible residual blocks: i-ResNet (Behrmann et al. 2019, "Invertible Residual Networks").

A block is y = x + g(x) with Lip(g) < 1, which makes it invertible (Banach's fixed-point theorem:
x = y − g(x) is a contraction in x) with a log-determinant given by a convergent power series:

    log|det(I + J_g)| = Σ_{k≥1} (−1)^{k+1}/k · tr(J_g^k)                     (Behrmann et al., eq. 6)

Lip(g) < 1 comes from building g out of layers whose weights are spectrally normalized with
coefficient coeff < 1 — `replearn.nn.utils.spectral_norm(layer, coeff=coeff)`, w = W / max(1, σ/coeff),
the native `spectral_norm` op — and 1-Lipschitz activations (ELU, or LipSwish x·sigmoid(x)/1.1 of
Chen et al. 2019); Lip(g) ≤ Π coeff.

The series is truncated after `n_series` terms and each trace is estimated with Hutchinson's
estimator tr(A) = E[vᵀAv] for probes v with E[vvᵀ] = I (Gaussian or Rademacher): vᵀJ^k is k
vector–Jacobian products, computed with torch.autograd.grad (create_graph in training, so the
estimate is differentiable). The truncation bias is at most D·Lip^{n+1}/((n+1)(1−Lip)) for D
features. `exact_logdet=True` computes log|det(I + J_g)| from the full Jacobian (D products): for
small D (tests, 2-D demos). The inverse is the fixed-point iteration x ← y − g(x) from x = y.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ..conv import Conv2d
from ..spectral_norm import spectral_norm
from .base import Flow

__all__ = ["InvertibleResBlock", "LipSwish", "lipschitz_mlp", "lipschitz_conv_net"]

PROBES = ("gaussian", "rademacher")


class LipSwish(nn.Module):
    """x·sigmoid(x)/1.1: swish's largest slope is ≈1.0998, so this is 1-Lipschitz (Chen et al. 2019)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x) / 1.1


def _activation(name: str) -> nn.Module:
    if name == "elu":
        return nn.ELU()
    if name == "lipswish":
        return LipSwish()
    raise ValueError(f"InvertibleResBlock: argument 'activation' expected 'elu' or 'lipswish' but got {name!r}")


def lipschitz_mlp(
    dim: int, hidden: int, n_hidden_layers: int = 2, coeff: float = 0.97, n_power_iterations: int = 5,
    activation: str = "elu",
) -> nn.Sequential:  # fmt: skip
    """Linear → act → … → Linear with every weight spectrally normalized to σ ≤ coeff: Lip ≤ coeff^layers."""
    sizes = [dim] + [hidden] * n_hidden_layers + [dim]
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(spectral_norm(nn.Linear(n_in, n_out), n_power_iterations=n_power_iterations, coeff=coeff))
        if i < len(sizes) - 2:
            layers.append(_activation(activation))
    return nn.Sequential(*layers)


def lipschitz_conv_net(
    channels: int, hidden: int, kernel_size: int = 3, coeff: float = 0.97, n_power_iterations: int = 5,
    activation: str = "elu",
) -> nn.Sequential:  # fmt: skip
    """Conv k×k → act → Conv 1×1 → act → Conv k×k (replearn.nn.Conv2d, 'same' padding, stride 1).

    Spectral normalization bounds σ of the weight reshaped to (out, in·k·k), not the operator norm
    of the convolution: with zero padding each input value enters at most k² columns of im2col(x),
    so ‖conv(x)‖ ≤ k·σ·‖x‖. The k×k layers are therefore normalized to coeff/k, which keeps
    Lip(g) ≤ coeff³ (conservative; Behrmann et al. power-iterate the convolution operator itself).
    """
    def conv(n_in: int, n_out: int, k: int) -> nn.Module:
        layer = Conv2d(n_in, n_out, k, padding=k // 2 if k > 1 else 0)
        return spectral_norm(layer, n_power_iterations=n_power_iterations, coeff=coeff / k)

    return nn.Sequential(
        conv(channels, hidden, kernel_size), _activation(activation), conv(hidden, hidden, 1), _activation(activation),
        conv(hidden, channels, kernel_size),
    )  # fmt: skip


class InvertibleResBlock(Flow):
    """y = x + g(x) with Lip(g) < 1 (Behrmann et al. 2019); a `Flow`.

    Args:
        g: the residual branch, whose Lipschitz constant the caller keeps below 1; None builds one
            from spectrally normalized replearn layers: `lipschitz_mlp(dim, hidden)` for an int
            `dim`, `lipschitz_conv_net(C, hidden)` for dim = (C, H, W).
        dim: the event shape of x (an int for vectors); required when g is None.
        hidden: width of the built branch.
        coeff: the bound on each layer's spectral norm (< 1).
        n_power_iterations: power-iteration steps per training forward of each layer.
        n_series: terms of the power series of the log-determinant.
        n_probes: Hutchinson probes per sample (averaged).
        probe: "gaussian" or "rademacher".
        exact_logdet: compute log|det(I + J_g)| from the full Jacobian instead (small dims only).
        inverse_iters: most fixed-point iterations of the inverse.
        inverse_tol: stop when max|x_{k+1} − x_k| ≤ inverse_tol·(1 + max|y|).
        activation: "elu" or "lipswish" for the built branch.
    """

    def __init__(
        self,
        g: nn.Module | None = None,
        dim: int | Sequence[int] | None = None,
        hidden: int = 64,
        coeff: float = 0.97,
        n_power_iterations: int = 5,
        n_series: int = 10,
        n_probes: int = 1,
        probe: str = "gaussian",
        exact_logdet: bool = False,
        inverse_iters: int = 100,
        inverse_tol: float = 1e-6,
        activation: str = "elu",
    ) -> None:
        super().__init__()
        if not 0 < coeff < 1:
            raise ValueError(f"InvertibleResBlock: argument 'coeff' expected a number in (0, 1) but got {coeff}")
        if probe not in PROBES:
            raise ValueError(f"InvertibleResBlock: argument 'probe' expected one of {PROBES} but got {probe!r}")
        if n_series < 1 or n_probes < 1 or inverse_iters < 1:
            raise ValueError(
                "InvertibleResBlock: arguments 'n_series', 'n_probes' and 'inverse_iters' expected positive "
                f"numbers but got {n_series}, {n_probes}, {inverse_iters}"
            )
        if g is None:
            if isinstance(dim, int):
                g = lipschitz_mlp(dim, hidden, coeff=coeff, n_power_iterations=n_power_iterations, activation=activation)
            elif dim is not None and len(dim) == 3:
                g = lipschitz_conv_net(dim[0], hidden, coeff=coeff, n_power_iterations=n_power_iterations,
                                       activation=activation)  # fmt: skip
            else:
                raise ValueError(
                    f"InvertibleResBlock: argument 'dim' expected an int or (C, H, W) when g is None but got {dim!r}"
                )
        self.g = g
        self.n_series = n_series
        self.n_probes = n_probes
        self.probe = probe
        self.exact_logdet = exact_logdet
        self.inverse_iters = inverse_iters
        self.inverse_tol = inverse_tol

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """y = x + g(x) and log|det(I + J_g(x))| per sample (estimated unless exact_logdet)."""
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            x_in = x if x.requires_grad else x.detach().requires_grad_(True)
            gx = self.g(x_in)
            logdet = self._exact_logdet(x_in, gx, create_graph) if self.exact_logdet else self._series_logdet(
                x_in, gx, create_graph
            )
        y = x + (gx if create_graph else gx.detach())
        return y, logdet

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x with x + g(x) = y by fixed-point iteration, and −log|det(I + J_g(x))| per sample.

        In training mode every call of g runs its layers' power iteration (as torch's spectral norm
        does), so σ may still move between iterations; use eval mode for exact round trips.

        Raises:
            RuntimeError: the iteration did not reach inverse_tol in inverse_iters steps.
        """
        with torch.no_grad():
            x = y.clone()
            scale = 1.0 + y.abs().max().item()
            change = math.inf
            for _ in range(self.inverse_iters):
                x_next = y - self.g(x)
                change = (x_next - x).abs().max().item()
                x = x_next
                if change <= self.inverse_tol * scale:
                    break
            else:
                raise RuntimeError(
                    f"InvertibleResBlock.inverse: the fixed-point iteration did not converge in {self.inverse_iters} "
                    f"iterations (last change {change:.3g} > tolerance {self.inverse_tol * scale:.3g}); "
                    "is Lip(g) < 1? raise inverse_iters or inverse_tol"
                )
        _, logdet = self.forward(x)
        return x, -logdet

    # ------------------------------------------------------------------------------ log-determinants

    def _probe(self, like: torch.Tensor) -> torch.Tensor:
        if self.probe == "gaussian":
            return torch.randn_like(like)
        return torch.randint_like(like, 2).mul_(2).sub_(1)

    def _series_logdet(self, x: torch.Tensor, gx: torch.Tensor, create_graph: bool) -> torch.Tensor:
        """Σ_{k=1}^{n} (−1)^{k+1}/k · vᵀJ^k v per sample, averaged over n_probes probes v."""
        batch = x.shape[0]
        total = x.new_zeros(batch)
        for _ in range(self.n_probes):
            v = self._probe(x)
            w = v  # w = vᵀJ^k after k products
            for k in range(1, self.n_series + 1):
                (w,) = torch.autograd.grad(gx, x, w, create_graph=create_graph, retain_graph=True)
                term = (w * v).reshape(batch, -1).sum(1)
                total = total + ((-1) ** (k + 1) / k) * term
        return total / self.n_probes

    def _exact_logdet(self, x: torch.Tensor, gx: torch.Tensor, create_graph: bool) -> torch.Tensor:
        """log|det(I + J_g)| per sample from the full Jacobian, one vector–Jacobian product per feature."""
        batch = x.shape[0]
        features = x[0].numel()
        flat = gx.reshape(batch, features)
        rows = []
        for i in range(features):
            (row,) = torch.autograd.grad(flat[:, i].sum(), x, create_graph=create_graph, retain_graph=True)
            rows.append(row.reshape(batch, features))
        jacobian = torch.stack(rows, 1)  # (B, D, D): jacobian[b, i, j] = ∂g_i/∂x_j
        eye = torch.eye(features, dtype=x.dtype, device=x.device)
        return torch.linalg.slogdet(eye + jacobian).logabsdet
