"""AdaBound and AMSBound (Luo, Xiong, Liu & Sun 2019, "Adaptive Gradient Methods with Dynamic Bound of
Learning Rate", ICLR; Algorithms 2 and 3).

Adam's (or AMSGrad's) per-element rate, clipped into bounds that start wide and close on a final
SGD rate η*, so that training moves from Adam to SGD:

    m ← β₁·m + (1 − β₁)·g;  v ← β₂·v + (1 − β₂)·g²;  AMSBound: v̂ ← max(v̂, v), else v̂ = v
    η_l(t) = η*·(1 − 1/(γt + 1)),  η_u(t) = η*·(1 + 1/(γt))
    p ← p − clip(η·√(1 − β₂ᵗ)/(1 − β₁ᵗ) / (√v̂ + ε), η_l(t), η_u(t)) · m

As the authors implement it (github.com/Luolc/AdaBound, adabound/adabound.py), which this follows
where the paper's algorithm box differs: Adam's bias corrections go into the base rate, ε is added
to √v̂, the step is not divided by √t, weight decay is L2 (g ← g + λ·p), and the final rate follows
the learning-rate schedule through the ratio to the initial rate, η* = final_lr·η/η₀. η₀ is kept
in each param group as 'base_lr' (set when the group is added), so it survives state_dict round
trips, which the authors' optimizer attribute does not.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from ._native_step import NativeCall, NativeStep, as_float, host_step
from .adam import adam_states

__all__ = ["AdaBound", "AMSBound"]


class AdaBound(NativeStep, torch.optim.Optimizer):
    """AdaBound; with `amsbound=True` (or the AMSBound class), AMSBound.

    Args:
        params: parameters or param groups, as for any torch optimizer.
        lr: the Adam-phase learning rate η (the group's initial value is η₀).
        betas: (β₁, β₂), the moment coefficients.
        final_lr: the SGD rate η* the bounds converge to (scaled by lr/η₀ under a schedule).
        gamma: how fast the bounds close (γ; the bounds are within 1/(γt) of η* at step t).
        eps: ε added to √v̂.
        weight_decay: L2 penalty λ.
        amsbound: use max(v̂, v) (AMSGrad's second moment).
        maximize: maximize the objective instead of minimizing it.

    State per parameter: 'step' (a one-element float tensor on the host), 'exp_avg', 'exp_avg_sq',
    and 'max_exp_avg_sq' for AMSBound, as torch.optim.Adam names them.
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 final_lr: float = 0.1, gamma: float = 1e-3, eps: float = 1e-8, weight_decay: float = 0,
                 amsbound: bool = False, *, maximize: bool = False) -> None:
        if not 0.0 <= as_float(lr, "lr"):
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        if not 0.0 <= final_lr:
            raise ValueError(f"Invalid final learning rate: {final_lr}")
        if not 0.0 <= gamma < 1.0:
            raise ValueError(f"Invalid gamma parameter: {gamma}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        defaults = dict(lr=lr, betas=betas, final_lr=final_lr, gamma=gamma, eps=eps, weight_decay=weight_decay,
                        amsbound=amsbound, maximize=maximize)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        group.setdefault("base_lr", as_float(group["lr"], "lr"))

    def _prepare(self, group: dict, params: list[torch.Tensor], grads: list[torch.Tensor]) -> NativeCall:
        amsbound = bool(group["amsbound"])
        states = adam_states(self, params, amsbound)
        beta1, beta2 = group["betas"]
        return NativeCall(
            "adabound_step",
            [params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
             [s["max_exp_avg_sq"] for s in states] if amsbound else []],
            ([host_step(s) for s in states], as_float(group["lr"], "lr"), as_float(beta1, "beta1"),
             as_float(beta2, "beta2"), as_float(group["final_lr"], "final_lr"), as_float(group["base_lr"], "base_lr"),
             as_float(group["gamma"], "gamma"), as_float(group["eps"], "eps"),
             as_float(group["weight_decay"], "weight_decay"), amsbound, bool(group.get("maximize", False))))


class AMSBound(AdaBound):
    """AMSBound: AdaBound with AMSGrad's running maximum of the second moment (Luo et al. 2019, Alg. 3)."""

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 final_lr: float = 0.1, gamma: float = 1e-3, eps: float = 1e-8, weight_decay: float = 0,
                 amsbound: bool = True, *, maximize: bool = False) -> None:
        super().__init__(params, lr, betas, final_lr, gamma, eps, weight_decay, amsbound, maximize=maximize)
