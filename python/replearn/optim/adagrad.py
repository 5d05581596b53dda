"""Adagrad (Duchi, Hazan & Singer 2011), as torch.optim.Adagrad.

    s ← s + g²;  p ← p − η/(1 + (t − 1)·lr_decay) · g/(√s + ε)
where g is the gradient (negated when maximize) plus λ·p for weight decay, t the tensor's step count.
"""

from __future__ import annotations

import torch

from ._native_step import NativeCall, NativeStep, as_float, host_step, new_step

__all__ = ["Adagrad"]


class Adagrad(NativeStep, torch.optim.Adagrad):
    """torch.optim.Adagrad with a native multi-tensor step; same arguments, same state ('step', 'sum').

    State is created in the constructor, as torch does. Sparse gradients, which torch's Adagrad
    accepts, are refused with an error; `foreach` and `fused` are accepted and ignored.
    """

    def _prepare(self, group: dict, params: list[torch.Tensor], grads: list[torch.Tensor]) -> NativeCall:
        states = [self.state[p] for p in params]
        for p, state in zip(params, states):
            if "sum" not in state:  # a parameter added without going through the constructor's loop
                initial = as_float(group["initial_accumulator_value"], "initial_accumulator_value")
                state["sum"] = torch.full_like(p, initial, memory_format=torch.preserve_format)
            if "step" not in state:
                state["step"] = new_step()
        return NativeCall(
            "adagrad_step", [params, grads, [s["sum"] for s in states]],
            ([host_step(s) for s in states], as_float(group["lr"], "lr"), as_float(group["lr_decay"], "lr_decay"),
             as_float(group["weight_decay"], "weight_decay"), as_float(group["eps"], "eps"), bool(group["maximize"])))
