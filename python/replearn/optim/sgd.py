"""SGD with momentum, dampening, Nesterov momentum and weight decay, as torch.optim.SGD.

    b ← μ·b + (1 − τ)·g   (b ← g on the first step)
    p ← p − η·(g + μ·b)   with Nesterov momentum (Sutskever et al. 2013), p ← p − η·b otherwise
where g is the gradient (negated when maximize) plus λ·p for weight decay.
"""

from __future__ import annotations

import torch

from ._native_step import NativeCall, NativeStep, as_float

__all__ = ["SGD"]


class SGD(NativeStep, torch.optim.SGD):
    """torch.optim.SGD with a native multi-tensor step; same arguments, same state ('momentum_buffer').

    `foreach` and `fused` are accepted and ignored: the step is always one fused native pass.
    """

    def _prepare(self, group: dict, params: list[torch.Tensor], grads: list[torch.Tensor]) -> NativeCall:
        momentum = as_float(group["momentum"], "momentum")
        buffers, is_new = [], []
        if momentum != 0:
            for p in params:
                buffer = self.state[p].get("momentum_buffer")
                is_new.append(buffer is None)
                # A new buffer's contents are ignored: the kernel writes b ← g (torch's clone(grad)).
                buffers.append(torch.empty_like(p, memory_format=torch.preserve_format) if buffer is None else buffer)

        def store_buffers() -> None:
            for p, buffer in zip(params, buffers):
                self.state[p]["momentum_buffer"] = buffer

        return NativeCall(
            "sgd_step", [params, grads, buffers],
            (is_new, as_float(group["lr"], "lr"), momentum, as_float(group["dampening"], "dampening"),
             as_float(group["weight_decay"], "weight_decay"), bool(group["nesterov"]), bool(group["maximize"])),
            store_buffers if momentum != 0 else None)
