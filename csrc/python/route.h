// NativeOp's per-call routing (python/replearn/ops/_registry.py), written against the CPython API.
//
// Every eager call of a replearn op first decides which of three paths it takes: the plain kernel
// (no argument needs a gradient), the autograd.Function (one does), or torch's dispatcher (a tensor
// subclass, a meta/fake tensor, a mode, anything unusual). In Python that scan cost ~0.8 µs for batch_norm's
// five tensor arguments, as much as a small kernel; here ~80 ns (~50 without grad mode), through one
// METH_FASTCALL function without pybind11's argument machinery, reading one tensor's device and
// requires_grad only until a tensor needs a gradient. It reads tensors the way the tensor caster
// does: by attribute name, without linking torch.
#pragma once

#include <pybind11/pybind11.h>

namespace replearn::python {

// Adds `route(args, tensor_positions) -> int` and `configure_route(tensor_type, parameter_type,
// dispatcher_conditions, grad_enabled, forward_ad)` to module `m`. tensor_positions holds the index
// i of each Tensor argument and ~i of each Tensor? argument. route's answers, as module constants:
// ROUTE_FORWARD_AD (a forward-mode AD level is open), ROUTE_DISPATCHER (one of the
// dispatcher_conditions holds — a dispatch or torch-function mode, a functorch transform — or an
// argument is not a plain cpu/cuda Tensor or Parameter, or None where a Tensor is required),
// ROUTE_FUNCTION (an argument needs a gradient and grad_enabled() holds) and ROUTE_KERNEL.
void bind_route(pybind11::module_& m);

}  // namespace replearn::python
