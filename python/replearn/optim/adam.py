"""Adam (Kingma & Ba 2015), AMSGrad (Reddi, Kale & Kumar 2018) and AdamW (Loshchilov & Hutter 2019),
as torch.optim.Adam and torch.optim.AdamW.

    m ← lerp(m, g, 1 − β₁);  v ← β₂·v + (1 − β₂)·g²;  AMSGrad: v̂ ← max(v̂, v), else v̂ = v
    p ← p − η/(1 − β₁ᵗ) · m/(√v̂/√(1 − β₂ᵗ) + ε)
where g is the gradient (negated when maximize); weight decay is L2 for Adam (g ← g + λ·p) and
decoupled for AdamW (p ← (1 − ηλ)·p before the update). The bias corrections are computed per
tensor from its own step count t, on the host in double.
"""

from __future__ import annotations

import torch

from ._native_step import NativeCall, NativeStep, as_float, host_step, new_step

__all__ = ["Adam", "AdamW"]


def adam_states(optimizer: torch.optim.Optimizer, params: list[torch.Tensor], amsgrad: bool) -> list[dict]:
    """The params' states, created as torch.optim.Adam creates them where missing."""
    states = [optimizer.state[p] for p in params]
    for p, state in zip(params, states):
        if len(state) == 0:
            state["step"] = new_step()
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if amsgrad and "max_exp_avg_sq" not in state:
            state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    return states


class _AdamStep(NativeStep):
    def _prepare(self, group: dict, params: list[torch.Tensor], grads: list[torch.Tensor]) -> NativeCall:
        amsgrad = bool(group["amsgrad"])
        states = adam_states(self, params, amsgrad)
        beta1, beta2 = group["betas"]
        # torch ≥ 2.6 keeps AdamW's decoupling in the group; earlier AdamW is a class of its own.
        decoupled = bool(group.get("decoupled_weight_decay", isinstance(self, torch.optim.AdamW)))
        return NativeCall(
            "adam_step",
            [params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
             [s["max_exp_avg_sq"] for s in states] if amsgrad else []],
            ([host_step(s) for s in states], as_float(group["lr"], "lr"), as_float(beta1, "beta1"),
             as_float(beta2, "beta2"), as_float(group["eps"], "eps"), as_float(group["weight_decay"], "weight_decay"),
             amsgrad, decoupled, bool(group["maximize"])))


class Adam(_AdamStep, torch.optim.Adam):
    """torch.optim.Adam with a native multi-tensor step; same arguments, same state ('step',
    'exp_avg', 'exp_avg_sq', 'max_exp_avg_sq' with amsgrad).

    `foreach` and `fused` are accepted and ignored (the step is always one fused native pass);
    `capturable` and `differentiable` are refused at the first step.
    """


class AdamW(_AdamStep, torch.optim.AdamW):
    """torch.optim.AdamW with a native multi-tensor step (decoupled weight decay); as Adam."""
