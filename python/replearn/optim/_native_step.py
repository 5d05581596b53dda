"""What every replearn optimizer shares: gathering a group's tensors, bucketing them by (device,
dtype), the host-side step counters, and the checks that run before any tensor is touched.

An optimizer here is its torch counterpart (`class Adam(NativeStep, torch.optim.Adam)`): the
constructor, defaults, param-group handling, `__setstate__` and `state_dict` are torch's own, so a
torch checkpoint of the optimizer loads into ours and back. Only `step` is replaced: one native call
per (device, dtype) bucket of each group, which updates all of the bucket's tensors in one pass over
memory (csrc/optim). State tensors have torch's names, shapes and dtypes; step counters are
one-element float tensors in host memory, as torch keeps them when not `capturable`/`fused`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .. import _native

__all__ = ["NativeCall", "NativeStep", "as_float", "host_step", "new_step", "row_major_lists"]


def as_float(value: Any, name: str) -> float:
    """A hyper-parameter as a Python float.

    A one-element tensor (torch allows a tensor `lr`, e.g. for LR schedules that update it in place)
    is read at every step: its current value is used, on the host. For a CUDA tensor this costs a
    device synchronization per step; keep `lr` a float or a CPU tensor for speed.
    """
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"replearn.optim: hyper-parameter '{name}' must be a number or a one-element tensor, "
                             f"got a tensor of shape {tuple(value.shape)}")
        return float(value.item())
    return float(value)


def new_step() -> torch.Tensor:
    """A fresh step counter, as torch creates it (`torch.tensor(0.0, dtype=_get_scalar_dtype())`)."""
    dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
    return torch.tensor(0.0, dtype=dtype)


def host_step(state: dict) -> torch.Tensor:
    """state['step'] as the native kernels take it: a one-element float tensor in host memory.

    Checkpoints of torch's capturable/fused optimizers keep it on the device, and very old ones as
    a number: such a counter is moved (once) to the host, keeping its value.
    """
    step = state["step"]
    if not isinstance(step, torch.Tensor):
        step = state["step"] = torch.tensor(float(step), dtype=new_step().dtype)
    elif step.device.type != "cpu" or step.dtype not in (torch.float32, torch.float64) or step.dim() != 0:
        dtype = step.dtype if step.dtype in (torch.float32, torch.float64) else torch.float32
        step = state["step"] = step.detach().to("cpu", dtype).reshape(())
    return step


def _is_dense(t: torch.Tensor, order: list[int]) -> bool:
    """Whether t's elements fill its memory without gaps or overlaps when its dims are taken in `order`."""
    expected = 1
    for d in reversed(order):
        if t.shape[d] != 1 and t.stride(d) != expected:
            return False
        expected *= t.shape[d]
    return True


def row_major_lists(tensor_lists: list[list[torch.Tensor]], read_only: tuple[int, ...] = ()) -> tuple[list, list]:
    """The kernels' elementwise updates want every tensor contiguous. A parameter that is not (a
    channels-last convolution's weight, a transposed matrix) but is dense is seen, with its gradient
    and state, through one permutation of the dims that makes it contiguous (dims by decreasing
    stride): the same memory, element for element. A tensor that is still not contiguous through it
    (a gradient expanded from a smaller one, a state loaded in another layout, a parameter with gaps)
    is replaced by a contiguous copy, copied back after the call unless its list is in `read_only`.

    Returns (lists for the kernel, [(destination, copy)] to copy back after it).
    """
    if all(t.is_contiguous() for tensors in tensor_lists for t in tensors):  # the common case: nothing to do
        return tensor_lists, []
    lists = [list(tensors) for tensors in tensor_lists]
    write_back = []
    for i, p in enumerate(tensor_lists[0]):
        column = [tensors[i] for tensors in tensor_lists if i < len(tensors)]
        if all(t.is_contiguous() for t in column):
            continue
        order = sorted(range(p.dim()), key=lambda d: -p.stride(d))
        if not _is_dense(p, order):
            order = list(range(p.dim()))
        for list_index, tensors in enumerate(tensor_lists):
            if i >= len(tensors):
                continue
            view = tensors[i].permute(order)
            if not view.is_contiguous():
                copy = view.contiguous()
                if list_index not in read_only:
                    write_back.append((view, copy))
                view = copy
            lists[list_index][i] = view
    return lists, write_back


class NativeCall:
    """One native step of a bucket: entry point `name`, called as name(*tensor_lists, *rest).

    tensor_lists are parallel to the bucket's params (params, grads, then state buffers; an option
    that is off gives an empty list). `after` runs once the call succeeded (e.g. storing new state).
    """

    __slots__ = ("name", "tensor_lists", "rest", "after")

    def __init__(self, name: str, tensor_lists: list[list[torch.Tensor]], rest: tuple,
                 after: Callable[[], None] | None = None) -> None:
        self.name, self.tensor_lists, self.rest, self.after = name, tensor_lists, rest, after


class NativeStep:
    """Mixin placed before a torch.optim class: replaces `step` with native multi-tensor updates.

    Subclasses implement `_prepare(group, params, grads) -> NativeCall` for the parameters of one
    group that have gradients and share one device and dtype (creating missing state as torch does).
    """

    def _prepare(self, group: dict, params: list[torch.Tensor], grads: list[torch.Tensor]) -> NativeCall:
        raise NotImplementedError

    # torch's constructors set this for fused=True, which makes torch.amp.GradScaler pass grad_scale
    # and found_inf to step(); the native step does not take them, so the scaler must unscale first.
    @property
    def _step_supports_amp_scaling(self) -> bool:
        return False

    @_step_supports_amp_scaling.setter
    def _step_supports_amp_scaling(self, value: bool) -> None:
        pass

    def _check_group_options(self, group: dict) -> None:
        name = type(self).__name__
        if group.get("differentiable", False):
            raise ValueError(f"replearn.optim.{name}: differentiable=True is not supported (the native step is not "
                             f"differentiable); use torch.optim.{name}")
        if group.get("capturable", False):
            raise ValueError(f"replearn.optim.{name}: capturable=True (CUDA graph capture) is not supported: the "
                             "step counters live on the host")

    def _buckets(self, group: dict, group_index: int) -> list[tuple[list[torch.Tensor], list[torch.Tensor]]]:
        """The group's parameters that have gradients, bucketed by (device, dtype)."""
        name = type(self).__name__
        buckets: dict[tuple[torch.device, torch.dtype], tuple[list, list]] = {}
        for index, p in enumerate(group["params"]):
            grad = p.grad
            if grad is None:
                continue
            where = f"parameter {index} of param group {group_index}"
            if grad.is_sparse:
                raise RuntimeError(f"replearn.optim.{name} does not support sparse gradients ({where}); "
                                   "use a dense gradient or torch.optim.SparseAdam")
            if p.is_complex():
                raise TypeError(f"replearn.optim.{name} does not support complex parameters ({where} is "
                                f"{p.dtype}); optimize torch.view_as_real(param) instead")
            params, grads = buckets.setdefault((p.device, p.dtype), ([], []))
            params.append(p)
            grads.append(grad)
        return list(buckets.values())

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Performs one optimization step (one native call per device/dtype bucket of each group).

        Args:
            closure: re-evaluates the model and returns the loss (run with gradients enabled).

        Returns:
            The closure's loss, or None.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        calls = []
        for group_index, group in enumerate(self.param_groups):
            self._check_group_options(group)
            for params, grads in self._buckets(group, group_index):
                calls.append(self._prepare(group, params, grads))
        if len(calls) > 1:
            # Each native call validates its bucket before touching memory; with several, check them
            # all first, so that a bad tensor in one leaves every bucket (and step counter) untouched.
            for call in calls:
                check_lists(type(self).__name__, call.tensor_lists)
        for call in calls:
            lists, write_back = row_major_lists(call.tensor_lists, read_only=(1,))  # the gradients are only read
            _native.launch(call.name, call.tensor_lists[0][0], *lists, *call.rest)
            for destination, copy in write_back:
                destination.copy_(copy)
            if call.after is not None:
                call.after()
        return loss


def check_lists(name: str, tensor_lists: list[list[torch.Tensor]]) -> None:
    """What the native validation checks of a bucket's tensors: shape, dtype and device as the
    parameter's (layouts are made contiguous by `row_major_lists`)."""
    params = tensor_lists[0]
    for list_index, tensors in enumerate(tensor_lists):
        for i, t in enumerate(tensors):
            p = params[i]
            if t.shape != p.shape:
                raise ValueError(f"replearn.optim.{name}: tensor {i} of list {list_index} has shape "
                                 f"{tuple(t.shape)} but its parameter has shape {tuple(p.shape)}")
            if t.dtype != p.dtype or t.device != p.device:
                raise TypeError(f"replearn.optim.{name}: tensor {i} of list {list_index} is {t.dtype} on "
                                f"{t.device} but its parameter is {p.dtype} on {p.device}")
