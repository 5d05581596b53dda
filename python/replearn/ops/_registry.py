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
import functools
import operator
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.autograd.forward_ad as _forward_ad

from .._native import _C

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
        double_backward: its gradients can be differentiated again (`define(differentiable_backward=True)`):
            the tests run gradgradcheck; without it, they check that a second differentiation raises.
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
    double_backward: bool = False


# The C entry point under `torch.autograd.Function.apply`. The Python classmethod above it binds
# default arguments (only for Functions with a separate setup_context; ours have none) and unwraps
# dead functorch wrappers (only possible for wrapped tensors, which take the Python path); calling
# the C entry directly saves ~1 µs per call.
_function_apply = torch._C._FunctionBase.__dict__["apply"]
_functorch_wrapped = torch._C._functorch.is_functorch_wrapped_tensor
_unwrap_dead_wrappers = torch._functorch.utils.unwrap_dead_wrappers


def _has_functorch_wrapper(args) -> bool:
    return any(_functorch_wrapped(a) for a in args if isinstance(a, torch.Tensor))


# Per-call routing in C (csrc/python/route.h): forward-mode AD, then the states that need torch's
# dispatcher (a dispatch or torch-function mode, a functorch transform), then the arguments.
_functorch_active = torch._C._are_functorch_transforms_active
_dispatch_stack_length = torch._C._len_torch_dispatch_stack
_torch_function_mode = torch._C._is_torch_function_mode_enabled
_is_compiling = torch.compiler.is_compiling
_grad_enabled = torch.is_grad_enabled
_C.configure_route(
    torch.Tensor,
    torch.nn.Parameter,
    (_dispatch_stack_length, _torch_function_mode, _functorch_active),
    _grad_enabled,
    _forward_ad,
)
_route = _C.route
_ROUTE_KERNEL, _ROUTE_FUNCTION, _ROUTE_FORWARD_AD = _C.ROUTE_KERNEL, _C.ROUTE_FUNCTION, _C.ROUTE_FORWARD_AD
_ROUTE_DISPATCHER = _C.ROUTE_DISPATCHER

_substitute_in_graph = getattr(torch.compiler, "substitute_in_graph", None)
if _substitute_in_graph is not None:  # torch >= 2.5

    @_substitute_in_graph(_route, skip_signature_check=True)
    def _route_while_tracing(args, tensor_positions):
        """What torch.compile and export see of `route`: every call goes to the dispatcher, so the
        graph holds `torch.ops.replearn.<name>` with its fake implementation and autograd formula.
        Eager calls never run this: they call the C function."""
        return _ROUTE_DISPATCHER

# Without the substitution, NativeOp asks torch.compiler.is_compiling() first (~1.4k instructions).
_CHECK_COMPILING = _substitute_in_graph is None


_DelayedError = torch._C._functions.DelayedError


def first_order_only(name: str, backward: Callable) -> Callable:
    """The autograd formula `backward` of op `name`, made to refuse a second differentiation.

    Backward formulas run native backward kernels, which have no derivatives of their own. Under
    `create_graph=True` (grad mode on during backward) their results would carry no graph, and
    differentiating them again (double backward: a gradient penalty, MAML) would silently give
    zeros. Each result then comes out of a node that raises, naming the op, when it is differentiated.
    This is torch's `once_differentiable`, except that torch attaches the node only when an incoming
    gradient requires grad, and to nothing else: differentiating for an input of the op (which the
    gradient depends on through the saved tensors) never reaches it. A plain backward (grad mode
    off) calls `backward` directly: nothing added to a training step.
    """
    message = (
        f"replearn::{name}: its gradient was computed by native kernels that have no derivative of their own, "
        "so it cannot be differentiated again (double backward is not supported)"
    ).encode()

    @functools.wraps(backward)
    def formula(ctx, *grads):
        if not _grad_enabled():
            return backward(ctx, *grads)
        with torch.no_grad():
            result = backward(ctx, *grads)
        single = not isinstance(result, tuple)
        results = [result] if single else list(result)
        present = [i for i, g in enumerate(results) if isinstance(g, torch.Tensor)]
        if not present:
            return result
        # The node's inputs: the results, and whatever they depend on that requires grad (the incoming
        # gradients, the saved inputs), so that differentiating a result reaches the node and raises.
        links = [t for t in (*grads, *ctx.saved_tensors) if isinstance(t, torch.Tensor) and t.requires_grad]
        detached = [results[i].detach().requires_grad_(True) for i in present]
        refusing = _DelayedError(message, len(detached) + len(links))(*detached, *links)
        for i, g in zip(present, refusing if isinstance(refusing, tuple) else (refusing,)):
            results[i] = g
        return results[0] if single else tuple(results)

    return formula


def _is_tensor_type(t) -> bool:
    """Whether a schema argument type is Tensor or Tensor?."""
    if isinstance(t, torch.OptionalType):
        t = t.getElementType()
    return isinstance(t, torch.TensorType)


class NativeOp:
    """A registered op and the three ways of calling it, chosen per call (docs/design.md).

    - `torch.ops.replearn.<name>` (the dispatcher) whenever torch.compile is tracing, a dispatch
      or torch-function mode is active, or an argument is not a plain cpu/cuda Tensor (subclasses,
      fake and meta tensors): torch then sees a real op, with its fake implementation and autograd
      formula. Under a torch.func transform alone, the op's `transformable` Function, which calls
      the dispatcher from its forward (`_transformable`: torch's own Function refuses transforms).
    - In plain eager mode, the implementation directly when no argument needs a gradient, and an
      `autograd.Function` built from the same `setup_context` and `backward` otherwise. The
      dispatcher adds ~6 µs to every call and torch's `register_autograd` path ~15 µs more, which
      would dominate small ops; these paths skip both and run the same native kernels.
    - `eager`, when given, replaces `impl` inside that `autograd.Function`: ops whose schema returns
      updated copies of mutated arguments (running statistics) update them in place there, as the
      inference path does, instead of copying them twice.
    - `differentiable_outputs=k`, when given, declares that only the first k outputs have
      gradients (the rest are statistics saved for backward, indices, ...). That `autograd.Function`
      then returns only those k: the others reach `setup_context` but are not outputs of the graph
      node, which saves their wrapping and marking (~0.2 µs each). The call returns the k outputs
      followed by None for the rest, like the inference path; `backward` receives k gradients there
      and one per output through the dispatcher, where `define` marks the rest non-differentiable.
    """

    def __init__(
        self,
        name,
        overload,
        impl,
        setup_context=None,
        backward=None,
        inference=None,
        eager=None,
        differentiable_outputs=None,
        differentiable_backward=False,
    ):
        self.name = name
        self.overload = overload
        self.impl = impl
        self.inference = inference or impl
        self.function = None
        self._apply = None
        self.transformable = None  # set by define(): the op's Function for torch.func transforms
        self.differentiable_backward = differentiable_backward
        # The schema's Tensor arguments (index i) and Tensor? arguments (~i), for route.
        schema_args = overload._schema.arguments
        self._tensor_args = tuple(
            ~i if isinstance(arg.type, torch.OptionalType) else i
            for i, arg in enumerate(schema_args)
            if _is_tensor_type(arg.type)
        )
        self._tensor_names = {i: arg.name for i, arg in enumerate(schema_args)}
        k = differentiable_outputs
        self._single = k == 1
        self._padding = () if k is None else (None,) * (len(overload._schema.returns) - k)
        if backward is not None:
            if not differentiable_backward:
                backward = first_order_only(name, backward)
            eager_impl = eager or impl

            if k is None:

                def forward(ctx, *args):
                    output = eager_impl(*args)
                    setup_context(ctx, args, output)
                    return output

            elif k == 1:

                def forward(ctx, *args):
                    output = eager_impl(*args)
                    setup_context(ctx, args, output)
                    return output[0]

            else:

                def forward(ctx, *args):
                    output = eager_impl(*args)
                    setup_context(ctx, args, output)
                    return output[:k]

            self.function = type(
                f"{name}_function",
                (torch.autograd.Function,),
                {"forward": staticmethod(forward), "backward": staticmethod(backward)},
            )
            self._apply = _function_apply.__get__(None, self.function)

    def __call__(self, *args):
        if _CHECK_COMPILING and _is_compiling():
            return self.overload(*args)
        # In C (csrc/python/route.h): forward AD, modes and transforms, then the schema's Tensor and
        # Tensor? arguments (positions read once at definition): plain cpu/cuda Tensors and
        # Parameters, or None, stay on the fast paths; whether one needs a gradient picks the kernel
        # or the autograd.Function. Under torch.compile, `_route_while_tracing` answers instead.
        route = _route(args, self._tensor_args)
        if route == _ROUTE_KERNEL:
            try:
                return self.inference(*args)
            except Exception:
                # A functorch wrapper that outlived its transform, e.g. a tensor saved for backward
                # by torch.func.vjp, whose vjp_fn runs outside it: as below, looked for on failure only.
                if not _has_functorch_wrapper(args):
                    raise
                return self.inference(*_unwrap_dead_wrappers(args))
        if route == _ROUTE_FUNCTION and self.function is not None:
            try:
                output = self._apply(*args)
            except Exception:
                # A functorch wrapper that outlived its transform (it has no storage, so the kernel's
                # tensor conversion refuses it before anything runs): the Python Function.apply unwraps
                # it. Looked for only here, on failure: a check per tensor would cost every call.
                if not _has_functorch_wrapper(args):
                    raise
                output = self.function.apply(*args)
            if self._single:
                return (output, *self._padding)
            return output if not self._padding else (*output, *self._padding)
        if route == _ROUTE_FORWARD_AD:
            self._refuse_tangents(args)
        if route != _ROUTE_FUNCTION:  # a Function-less op needing a gradient: torch's own error
            self._check_tensors(args)
        if self.transformable is not None and self._under_functorch():
            return self._transformed(args)
        return self.overload(*args)

    def _under_functorch(self) -> bool:
        """A torch.func transform (grad, vjp, vmap, jacrev, ...) is active, and nothing else that
        needs the dispatcher (a mode, torch.compile tracing)."""
        return (  # is_compiling first: dynamo reads it as a constant
            not _is_compiling()
            and _functorch_active()
            and not _dispatch_stack_length()
            and not _torch_function_mode()
        )

    def _transformed(self, args):
        """The op under torch.func: `transformable`, a Function with the setup_context and vmap rule
        that torch.func needs (torch's own Function for Library ops has neither, and refuses)."""
        if not self.differentiable_backward and _levels_that_may_differentiate() > 1:
            raise NotImplementedError(
                f"replearn::{self.name}: nested torch.func differentiation (grad of grad, hessian, jacfwd of "
                "jacrev) is not supported: its gradient is computed by native kernels that have no derivative "
                "of their own (double backward is not supported)"
            )
        return self.transformable.apply(*args)

    def _refuse_tangents(self, args) -> None:
        """NotImplementedError when an argument carries a forward-mode tangent: the ops have no
        forward-mode formula, and torch would drop the tangent silently (a zero derivative)."""
        if any(isinstance(a, torch.Tensor) and _forward_ad.unpack_dual(a).tangent is not None for a in args):
            raise NotImplementedError(
                f"replearn::{self.name}: forward-mode AD (torch.func.jvp, jacfwd, torch.autograd.forward_ad) is not "
                "supported: the op has no forward-mode formula, and its tangent would be lost"
            )

    def _check_tensors(self, args) -> None:
        """TypeError naming the argument where the schema wants a Tensor (or None) and got something else.

        Public functions need not check their tensor arguments themselves: a wrong one takes the
        dispatcher route, and this check runs before the dispatcher sees it."""
        for position in self._tensor_args:
            optional = position < 0
            i = ~position if optional else position
            if i < len(args):
                check_tensor(self.name, self._tensor_names[i], args[i], optional)


def define(
    schema: str,
    impl: Callable,
    fake: Callable,
    *,
    backward: Callable | None = None,
    setup_context: Callable | None = None,
    inference: Callable | None = None,
    eager: Callable | None = None,
    differentiable_outputs: int | None = None,
    differentiable_backward: bool = False,
) -> NativeOp:
    """Registers `replearn::<schema>` with one implementation for CPU and CUDA, a fake, and autograd.

    `impl` is device-generic: it allocates outputs with torch on the input's device and calls the
    native kernel through `replearn._native.launch`, which picks `_C` or `_C_cuda`. `inference`,
    when given, replaces `impl` in eager calls that need no gradient: it may leave outputs that only
    backward uses (saved statistics) as None; write it as a plain function, not a `functools.partial`
    with keywords, which builds a dict on every call (~0.3 µs). `eager`, when given, replaces `impl`
    in eager calls that record the autograd graph. `differentiable_outputs=k` declares that only the
    first k outputs have gradients (see `NativeOp`). `differentiable_backward=True` declares that
    the backward ops `backward` calls have autograd formulas of their own, so that a gradient taken
    with create_graph=True can be differentiated again; otherwise that raises (`first_order_only`).
    Returns the `NativeOp` that public functions and backward formulas call.
    """
    name = schema.split("(", 1)[0]
    LIBRARY.define(schema)
    LIBRARY.impl(name, impl, "CPU")
    LIBRARY.impl(name, impl, "CUDA")
    torch.library.register_fake(f"replearn::{name}", fake, lib=LIBRARY)
    if backward is not None:
        dispatcher_setup = setup_context
        if differentiable_outputs is not None:
            dispatcher_setup = functools.partial(_setup_marking, setup_context, differentiable_outputs)
        formula = backward if differentiable_backward else first_order_only(name, backward)
        torch.library.register_autograd(f"replearn::{name}", formula, setup_context=dispatcher_setup, lib=LIBRARY)
    overload = getattr(torch.ops.replearn, name).default
    op = NativeOp(
        name, overload, impl, setup_context, backward, inference, eager, differentiable_outputs, differentiable_backward
    )
    if _register_vmap is not None:  # torch >= 2.4
        _register_vmap(f"replearn::{name}", _vmap_by_samples(overload), lib=LIBRARY)
    if backward is not None and _FUNCTORCH_STACK is not None:
        # torch.func runs backward with grad mode on whatever the nesting; nesting is refused before
        # (NativeOp._transformed), so first_order_only's guard is not needed there (and its
        # requires_grad_ is refused under a transform).
        transformed_backward = backward if differentiable_backward else _without_grad(backward)
        op.transformable = _transformable(name, overload, dispatcher_setup, transformed_backward)
    return op


def _without_grad(backward: Callable) -> Callable:
    @functools.wraps(backward)
    def formula(ctx, *grads):
        with torch.no_grad():
            return backward(ctx, *grads)

    return formula


_register_vmap = getattr(torch.library, "register_vmap", None)
# What the nesting rule reads (torch's private functorch API; without it, ops under torch.func take
# the dispatcher as before and raise torch's own error).
_FUNCTORCH_STACK = getattr(torch._C._functorch, "get_interpreter_stack", None)
_current_graph_task_id = getattr(torch._C, "_current_graph_task_id", None)  # -1 outside a backward pass
if _current_graph_task_id is None:
    _FUNCTORCH_STACK = None
_DIFFERENTIATING = {torch._C._functorch.TransformType.Grad, torch._C._functorch.TransformType.Jvp}


def _levels_that_may_differentiate() -> int:
    """How many active torch.func levels may differentiate what an op returns now: the transforms
    that differentiate (grad, vjp, jacrev: Grad; jvp, jacfwd: Jvp), less the innermost when the op
    runs inside its backward pass (that level is computing its gradient, and will not differentiate
    it again). An op whose gradient is first-order only (first_order_only) allows one; this is the
    same rule torch.func nesting gets as create_graph=True gets in eager mode."""
    stack = _FUNCTORCH_STACK() or ()
    levels = sum(1 for interpreter in stack if interpreter.key() in _DIFFERENTIATING)
    return levels - 1 if levels and _current_graph_task_id() != -1 else levels


def _vmap_by_samples(overload) -> Callable:
    """The op's vmap rule: the op once per sample, the results stacked along dim 0.

    torch's own fallback does the same but cannot for ops that return optional tensors (the backward
    ops), so every op registers this instead (`torch.library.register_vmap`). Per-sample calls of
    the native kernels: correct, not fast.
    """

    def select(arg, dim, b):  # in_dims mirror the arguments: an int, None, or a list for a list
        if dim is None:
            return arg
        if isinstance(dim, int):
            return arg.select(dim, b)
        return type(arg)(select(a, d, b) for a, d in zip(arg, dim))

    def rule(info, in_dims, *args):
        samples = [overload(*(select(a, d, b) for a, d in zip(args, in_dims))) for b in range(info.batch_size)]
        if not samples:
            raise ValueError(f"{overload}: vmap over a batch of size 0 is not supported")
        if not isinstance(samples[0], tuple):
            return torch.stack(samples), 0
        outputs = tuple(
            None if samples[0][k] is None else torch.stack([s[k] for s in samples]) for k in range(len(samples[0]))
        )
        return outputs, tuple(None if o is None else 0 for o in outputs)

    return rule


def _transformable(name: str, overload, setup_context: Callable, formula: Callable) -> type:
    """The op as an autograd.Function that torch.func transforms accept (NativeOp._transformed).

    torch.func (grad, vjp, jacrev, vmap over them: per-sample gradients) runs an autograd.Function
    only when it has a separate setup_context and a vmap rule; the Function torch generates for
    `register_autograd` has neither, so torch's own Library and custom ops raise under them (torch
    2.13). This one: forward calls the op through the dispatcher (below the transform's level, where
    vmap batches it with `_vmap_by_samples`), setup_context and backward are the op's own
    (the dispatcher's: one gradient per output, the non-differentiable ones marked), and vmap's rule
    is generated from them (`generate_vmap_rule`).
    """

    def forward(*args):
        return overload(*args)

    return type(
        f"{name}_transformable",
        (torch.autograd.Function,),
        {
            "generate_vmap_rule": True,
            "forward": staticmethod(forward),
            "setup_context": staticmethod(setup_context),
            "backward": staticmethod(formula),
        },
    )


def _setup_marking(setup_context, differentiable_outputs, ctx, inputs, output):
    ctx.mark_non_differentiable(*[t for t in output[differentiable_outputs:] if t is not None])
    setup_context(ctx, inputs, output)


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


def as_int(value: Any) -> int | None:
    """`value` as an int if it is one for Python's indexing (an int, a numpy integer, a 0-dim integer
    tensor: what torch.nn.functional takes for sizes), else None. bool is not an int here."""
    if type(value) is int:
        return value
    if isinstance(value, bool) or (isinstance(value, torch.Tensor) and value.is_floating_point()):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def check_tensor(fn: str, arg: str, value: Any, optional: bool = False) -> None:
    """TypeError naming the argument unless `value` is a Tensor (or None when optional)."""
    if value is None and optional:
        return
    if not isinstance(value, torch.Tensor):
        expected = "a Tensor or None" if optional else "a Tensor"
        raise TypeError(f"{fn}: argument '{arg}' expected {expected} but got {type(value).__name__}")
