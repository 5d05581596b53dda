// Python bindings of the state-space family, written once for both devices: module_cpu.cpp binds
// bind_ssm<DeviceType::CPU>, module_cuda.cpp bind_ssm<DeviceType::CUDA>. Every kernel runs with the
// GIL released; tensors arrive as TensorViews (tensor_caster.h).
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "python/tensor_caster.h"
#include "ssm/ssm.h"

namespace replearn::python {

template <DeviceType D>
void bind_ssm(pybind11::module_& m) {
  namespace py = pybind11;
  using py::arg;
  using namespace replearn::ssm;
  const auto nogil = py::call_guard<py::gil_scoped_release>();
  const auto stream = arg("stream") = std::uintptr_t{0};

  m.attr("SSM_SCAN_CHUNK") = kScanChunk;
  m.def("selective_scan_forward", &selective_scan_forward<D>, arg("u"), arg("delta"), arg("A"), arg("B"), arg("C"),
        arg("D").none(true), arg("z").none(true), arg("delta_bias").none(true), arg("delta_softplus"), arg("out"),
        arg("checkpoints").none(true), stream, nogil);
  m.def("selective_scan_backward_workspace_size", &selective_scan_backward_workspace_size<D>, arg("u"), arg("A"),
        arg("B"), arg("C"));
  m.def("selective_scan_backward", &selective_scan_backward<D>, arg("grad_out"), arg("u"), arg("delta"), arg("A"),
        arg("B"), arg("C"), arg("D").none(true), arg("z").none(true), arg("delta_bias").none(true),
        arg("delta_softplus"), arg("checkpoints"), arg("grad_last_state").none(true), arg("grad_u"), arg("grad_delta"), arg("grad_A"), arg("grad_B"),
        arg("grad_C"), arg("grad_D").none(true), arg("grad_z").none(true), arg("grad_delta_bias").none(true),
        arg("workspace").none(true), stream, nogil);

  m.def("causal_conv1d_forward", &causal_conv1d_forward<D>, arg("x"), arg("weight"), arg("bias").none(true),
        arg("initial_state").none(true), arg("activation"), arg("y"), arg("final_state").none(true), stream, nogil);
  m.def("causal_conv1d_backward_workspace_size", &causal_conv1d_backward_workspace_size<D>, arg("x"), arg("weight"));
  m.def("causal_conv1d_backward", &causal_conv1d_backward<D>, arg("grad_y"), arg("x"), arg("weight"),
        arg("bias").none(true), arg("initial_state").none(true), arg("activation"), arg("grad_final_state").none(true), arg("grad_x"),
        arg("grad_weight"), arg("grad_bias").none(true), arg("grad_initial_state").none(true),
        arg("workspace").none(true), stream, nogil);

  m.def("s4d_kernel_forward", &s4d_kernel_forward<D>, arg("log_dt"), arg("A_real"), arg("A_imag"), arg("C_real"),
        arg("C_imag"), arg("K"), stream, nogil);
  m.def("s4d_kernel_backward", &s4d_kernel_backward<D>, arg("grad_K"), arg("log_dt"), arg("A_real"), arg("A_imag"),
        arg("C_real"), arg("C_imag"), arg("grad_log_dt"), arg("grad_A_real"), arg("grad_A_imag"), arg("grad_C_real"),
        arg("grad_C_imag"), stream, nogil);

  m.def("cauchy_forward", &cauchy_forward<D>, arg("v_real"), arg("v_imag"), arg("z_real"), arg("z_imag"),
        arg("w_real"), arg("w_imag"), arg("out_real"), arg("out_imag"), stream, nogil);
  m.def("cauchy_backward", &cauchy_backward<D>, arg("grad_real"), arg("grad_imag"), arg("v_real"), arg("v_imag"),
        arg("z_real"), arg("z_imag"), arg("w_real"), arg("w_imag"), arg("grad_v_real"), arg("grad_v_imag"),
        arg("grad_w_real"), arg("grad_w_imag"), stream, nogil);
}

}  // namespace replearn::python
