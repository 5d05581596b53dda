// Python bindings of the flow family, written once for both devices: module_cpu.cpp binds
// bind_flow<DeviceType::CPU>, module_cuda.cpp bind_flow<DeviceType::CUDA>. Every kernel runs with the
// GIL released; tensors arrive as TensorViews (tensor_caster.h).
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "flow/flow.h"
#include "python/tensor_caster.h"

namespace replearn::python {

template <DeviceType D>
void bind_flow(pybind11::module_& m) {
  namespace py = pybind11;
  using py::arg;
  using namespace replearn::flow;
  const auto nogil = py::call_guard<py::gil_scoped_release>();
  const auto stream = arg("stream") = std::uintptr_t{0};

  m.def("affine_coupling_workspace_size", &affine_coupling_workspace_size<D>, arg("x"));
  m.def("affine_coupling_forward", &affine_coupling_forward<D>, arg("x"), arg("shift").none(true),
        arg("log_scale").none(true), arg("mask").none(true), arg("reverse"), arg("scale"), arg("y"), arg("logdet"),
        arg("workspace").none(true), stream, nogil);
  m.def("affine_coupling_backward", &affine_coupling_backward<D>, arg("grad_y"), arg("grad_logdet"), arg("x"),
        arg("shift").none(true), arg("log_scale").none(true), arg("mask").none(true), arg("reverse"), arg("scale"),
        arg("grad_x").none(true), arg("grad_shift").none(true), arg("grad_log_scale").none(true), stream, nogil);

  m.def("actnorm_forward", &actnorm_forward<D>, arg("x"), arg("scale"), arg("bias"), arg("reverse"), arg("y"),
        arg("logdet"), stream, nogil);
  m.def("actnorm_backward_workspace_size", &actnorm_backward_workspace_size<D>, arg("x"));
  m.def("actnorm_backward", &actnorm_backward<D>, arg("grad_y"), arg("grad_logdet"), arg("x"), arg("scale"),
        arg("bias"), arg("reverse"), arg("grad_x").none(true), arg("grad_scale").none(true),
        arg("grad_bias").none(true), arg("workspace").none(true), stream, nogil);

  m.def("invconv1x1_workspace_size", &invconv1x1_workspace_size<D>, arg("x"), arg("reverse"));
  m.def("invconv1x1_forward", &invconv1x1_forward<D>, arg("x"), arg("perm"), arg("lower"), arg("upper"), arg("s"),
        arg("reverse"), arg("y"), arg("logdet"), arg("workspace").none(true), stream, nogil);
  m.def("invconv1x1_backward", &invconv1x1_backward<D>, arg("grad_y"), arg("grad_logdet"), arg("x"), arg("out"),
        arg("perm"), arg("lower"), arg("upper"), arg("s"), arg("reverse"), arg("grad_x"),
        arg("grad_lower").none(true), arg("grad_upper").none(true), arg("grad_s").none(true),
        arg("workspace").none(true), stream, nogil);

  m.def("planar_flow_workspace_size", &planar_flow_workspace_size<D>, arg("z"), arg("backward"));
  m.def("planar_flow_forward", &planar_flow_forward<D>, arg("z"), arg("u"), arg("w"), arg("b"), arg("reverse"),
        arg("f"), arg("logdet"), arg("workspace").none(true), stream, nogil);
  m.def("planar_flow_backward", &planar_flow_backward<D>, arg("grad_f"), arg("grad_logdet"), arg("z"), arg("out"),
        arg("u"), arg("w"), arg("b"), arg("reverse"), arg("grad_z").none(true), arg("grad_u").none(true),
        arg("grad_w").none(true), arg("grad_b").none(true), arg("workspace").none(true), stream, nogil);
}

}  // namespace replearn::python
