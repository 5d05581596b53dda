"""RMSprop (Tieleman & Hinton 2012; centered variant from Graves 2013), as torch.optim.RMSprop.

    v ← α·v + (1 − α)·g²;  centered: ḡ ← lerp(ḡ, g, 1 − α), v̂ = v − ḡ², else v̂ = v
    p ← p − η·g/(√v̂ + ε), or with momentum: b ← μ·b + g/(√v̂ + ε), p ← p − η·b
where g is the gradient (negated when maximize) plus λ·p for weight decay.
"""

from __future__ import annotations

import torch

from ._native_step import NativeCall, NativeStep, as_float, host_step, new_step

__all__ = ["RMSprop"]


class RMSprop(NativeStep, torch.optim.RMSprop):
    """torch.optim.RMSprop with a native multi-tensor step; same arguments, same state ('step',
    'square_avg', 'momentum_buffer' when momentum > 0, 'grad_avg' when centered).

    torch has no fused RMSprop; `foreach` is accepted and ignored.
    """

    def _prepare(self, group: dict, params: list[torch.Tensor], grads: list[torch.Tensor]) -> NativeCall:
        momentum = as_float(group["momentum"], "momentum")
        centered = bool(group["centered"])
        states = [self.state[p] for p in params]
        for p, state in zip(params, states):
            if len(state) == 0:
                state["step"] = new_step()
                state["square_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if momentum > 0 and "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if centered and "grad_avg" not in state:
                state["grad_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return NativeCall(
            "rmsprop_step",
            [params, grads, [s["square_avg"] for s in states], [s["grad_avg"] for s in states] if centered else [],
             [s["momentum_buffer"] for s in states] if momentum > 0 else []],
            ([host_step(s) for s in states], as_float(group["lr"], "lr"), as_float(group["alpha"], "alpha"),
             as_float(group["eps"], "eps"), as_float(group["weight_decay"], "weight_decay"), momentum, centered,
             bool(group["maximize"])))
