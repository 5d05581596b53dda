"""The op registry: every native op is a torch library op `torch.ops.replearn.<name>`.

`define()` registers one op in a single place, in the order a reader expects (STYLE.md, "schemas are
the API"): its schema, its device implementation (which allocates with torch and calls the native
kernel), its fake implementation for torch.compile/export, its autograd formula, and the test
description (`OpInfo`) that the registry-driven test-suite reads. `list_ops()` names them all, so an
op is tested the moment it is registered.

Registration goes through `torch.library.Library.define/impl` (cheaper per call than
`torch.library.custom_op`, ARCHITECTURE.md), and `NativeOp` skips the dispatcher in plain eager
calls: see docs/design.md, "per-call overhead".
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Sequence

import torch

LIBRARY = torch.library.Library("replearn", "DEF")

_OPS: dict[str, "OpInfo"] = {}


@dataclasses.dataclass
class Sample:
    """One call of a public op: `public(*args, **kwargs)`."""

    args: tuple
    kwargs: dict = dataclasses.field(default_factory=dict)
    name: str = ""

    def __repr__(self) -> str:
        shapes = [tuple(a.shape) if isinstance(a, torch.Tensor) else a for a in self.args]
        return f"Sample({self.name or ''} {shapes} {self.kwargs})"


@dataclasses.dataclass
class BadInput:
    """A call that must raise `error` with `match` in its message, touching no tensor in `untouched`."""

    args: tuple
    kwargs: dict
    error: type
    match: str
    name: str = ""


@dataclasses.dataclass
class OpInfo:
    """What the tests need to know of a public op (PyTorch's OpInfo, reduced to our rules).

    Attributes:
        name: the op's name in `torch.ops.replearn`.
        public: the user-facing function `replearn.ops.<name>`; returns a Tensor or tuple of Tensors.
        reference: the same computation written from the math in plain PyTorch; the tests run it in
            float64 as the ground truth.
        torch_counterpart: PyTorch's own op for the same computation, run at the test dtype: the
            parity rule bounds our error by twice its error (ARCHITECTURE.md).
        samples: `samples(device, dtype, generator)` yields `Sample`s covering odd shapes, batch 1,
            optional arguments; the harness adds non-contiguous variants itself.
        bad_inputs: `bad_inputs(device)` yields `BadInput`s.
        differentiable_args: positions of the tensor arguments that take gradients.
        gradcheck_samples: small float64 samples for torch.autograd.gradcheck (default: samples).
        mutated_args: positions of tensor arguments the public op updates in place (running stats),
            compared after each call like outputs.
        backward_ops: the `torch.ops.replearn` ops its autograd formula calls (checked to exist).
    """

    name: str
    public: Callable
    reference: Callable
    torch_counterpart: Callable | None
    samples: Callable[[torch.device, torch.dtype, torch.Generator], Iterable[Sample]]
    bad_inputs: Callable[[torch.device], Iterable[BadInput]]
    differentiable_args: Sequence[int] = ()
    gradcheck_samples: Callable[[torch.device, torch.Generator], Iterable[Sample]] | None = None
    mutated_args: Sequence[int] = ()
    backward_ops: Sequence[str] = ()


_Tensor = torch.Tensor
_Parameter = torch.nn.Parameter
_dispatch_stack_len = torch._C._len_torch_dispatch_stack
_function_mode_on = torch._C._is_torch_function_mode_enabled
_functorch_on = torch._C._are_functorch_transforms_active
_functorch_wrapped = torch._C._functorch.is_functorch_wrapped_tensor
# The C++ entry point under `torch.autograd.Function.apply`. The Python classmethod above it binds
# default arguments (only for Functions with a separate setup_context; ours have none) and unwraps
# dead functorch wrappers (only possible for wrapped tensors, which take the Python path); calling
# the C++ entry directly saves ~1 µs per call.
_function_apply = torch._C._FunctionBase.__dict__["apply"]


class NativeOp:
    """A registered op and the three ways of calling it, chosen per call (docs/design.md).

    - `torch.ops.replearn.<name>` (the dispatcher) whenever torch.compile is tracing, a dispatch
      or torch-function mode or a functorch transform is active, or an argument is not a plain
      cpu/cuda Tensor (subclasses, fake and meta tensors): torch then sees a real op, with its fake
      implementation and autograd formula.
    - In plain eager mode, the implementation directly when no argument needs a gradient, and an
      `autograd.Function` built from the same `setup_context` and `backward` otherwise. The
      dispatcher adds ~6 µs to every call and torch's `register_autograd` path ~15 µs more, which
      would dominate small ops; these paths skip both and run the same native kernels.
    - `eager`, when given, replaces `impl` inside that `autograd.Function`: ops whose schema returns
      updated copies of mutated arguments (running statistics) update them in place there, as the
      inference path does, instead of copying them twice.
    """

    def __init__(self, name, overload, impl, setup_context=None, backward=None, inference=None, eager=None):
        self.name = name
        self.overload = overload
        self.impl = impl
        self.inference = inference or impl
        self.function = None
        self._apply = None
        if backward is not None:
            eager_impl = eager or impl

            def forward(ctx, *args):
                output = eager_impl(*args)
                setup_context(ctx, args, output)
                return output

            self.function = type(
                f"{name}_function",
                (torch.autograd.Function,),
                {"forward": staticmethod(forward), "backward": staticmethod(backward)},
            )
            self._apply = _function_apply.__get__(None, self.function)

    def __call__(self, *args):
        if torch.compiler.is_compiling() or _dispatch_stack_len() or _function_mode_on() or _functorch_on():
            return self.overload(*args)
        grad = torch.is_grad_enabled()
        needs_grad = wrapped = False
        for a in args:
            if isinstance(a, _Tensor):
                kind = type(a)
                if (kind is not _Tensor and kind is not _Parameter) or not (a.is_cpu or a.is_cuda):
                    return self.overload(*args)
                if grad and a.requires_grad:
                    needs_grad = True
                    wrapped = wrapped or _functorch_wrapped(a)
        if not needs_grad:
            return self.inference(*args)
        if self.function is None:  # no formula: the dispatcher raises torch's own error
            return self.overload(*args)
        if wrapped:  # a functorch wrapper outliving its transform: the Python apply unwraps it
            return self.function.apply(*args)
        return self._apply(*args)


def define(
    schema: str,
    impl: Callable,
    fake: Callable,
    *,
    backward: Callable | None = None,
    setup_context: Callable | None = None,
    inference: Callable | None = None,
    eager: Callable | None = None,
) -> NativeOp:
    """Registers `replearn::<schema>` with one implementation for CPU and CUDA, a fake, and autograd.

    `impl` is device-generic: it allocates outputs with torch on the input's device and calls the
    native kernel through `replearn._native.launch`, which picks `_C` or `_C_cuda`. `inference`,
    when given, replaces `impl` in eager calls that need no gradient: it may leave outputs that only
    backward uses (saved statistics) as None. `eager`, when given, replaces `impl` in eager calls that
    record the autograd graph (see `NativeOp`). Returns the `NativeOp` that public functions and
    backward formulas call.
    """
    name = schema.split("(", 1)[0]
    LIBRARY.define(schema)
    LIBRARY.impl(name, impl, "CPU")
    LIBRARY.impl(name, impl, "CUDA")
    torch.library.register_fake(f"replearn::{name}", fake, lib=LIBRARY)
    if backward is not None:
        torch.library.register_autograd(f"replearn::{name}", backward, setup_context=setup_context, lib=LIBRARY)
    return NativeOp(name, getattr(torch.ops.replearn, name).default, impl, setup_context, backward, inference, eager)


def register_info(info: OpInfo) -> None:
    if info.name in _OPS:
        raise ValueError(f"replearn op {info.name!r} is registered twice")
    _OPS[info.name] = info


def list_ops() -> list[str]:
    """Names of every public native op, as in `torch.ops.replearn.<name>` and `replearn.ops.<name>`."""
    return sorted(_OPS)


def op_info(name: str) -> OpInfo:
    """The test description of op `name` (see `OpInfo`)."""
    try:
        return _OPS[name]
    except KeyError:
        raise ValueError(f"no replearn op named {name!r}; registered: {', '.join(list_ops())}") from None


def check_tensor(fn: str, arg: str, value: Any, optional: bool = False) -> None:
    """TypeError naming the argument unless `value` is a Tensor (or None when optional)."""
    if value is None and optional:
        return
    if not isinstance(value, torch.Tensor):
        expected = "a Tensor or None" if optional else "a Tensor"
        raise TypeError(f"{fn}: argument '{arg}' expected {expected} but got {type(value).__name__}")
