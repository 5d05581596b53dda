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

import math
from collections.abc import Iterable
from typing import Any

import torch

from ._native_step import NativeCall, NativeStep, as_float, host_step
from .adam import adam_states

__all__ = ["AdaBound", "AMSBound", "adabound_reference_step"]


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


@torch.no_grad()
def adabound_reference_step(params: list[torch.Tensor], states: list[dict], *, lr: float, betas: tuple[float, float],
                            final_lr: float, base_lr: float, gamma: float, eps: float, weight_decay: float,
                            amsbound: bool) -> None:
    """One AdaBound/AMSBound step in plain torch, tensor by tensor: the reference the tests and the
    benchmark compare the native step with.

    Written from Luo et al. 2019 (Algorithms 2 and 3) as the authors' implementation computes the
    update (github.com/Luolc/AdaBound): Adam's bias corrections in the base rate, ε added to √v̂,
    bounds η*(1 − 1/(γt + 1)) and η*(1 + 1/(γt)) with η* = final_lr·lr/base_lr, the clipped rate
    times m. `states[i]` starts empty and holds 't', 'm', 'v', 'v_max'; parameters without a
    gradient are skipped.
    """
    beta1, beta2 = betas
    for p, state in zip(params, states):
        if p.grad is None:
            continue
        if not state:
            state.update(t=0, m=torch.zeros_like(p), v=torch.zeros_like(p), v_max=torch.zeros_like(p))
        state["t"] += 1
        t = state["t"]
        g = p.grad + weight_decay * p if weight_decay else p.grad
        state["m"].mul_(beta1).add_(g, alpha=1 - beta1)
        state["v"].mul_(beta2).addcmul_(g, g, value=1 - beta2)
        if amsbound:
            torch.maximum(state["v_max"], state["v"], out=state["v_max"])
        denom = (state["v_max"] if amsbound else state["v"]).sqrt().add_(eps)
        eta = final_lr * lr / base_lr
        rate = torch.full_like(denom, lr * math.sqrt(1 - beta2**t) / (1 - beta1**t))
        rate.div_(denom).clamp_(eta * (1 - 1 / (gamma * t + 1)), eta * (1 + 1 / (gamma * t))).mul_(state["m"])
        p.sub_(rate)

