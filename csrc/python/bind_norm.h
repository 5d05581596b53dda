// Python bindings of the normalization family, written once for both devices: module_cpu.cpp
// binds bind_norm<DeviceType::CPU>, module_cuda.cpp bind_norm<DeviceType::CUDA>. Every kernel runs
// with the GIL released; tensors arrive as TensorViews (tensor_caster.h).
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "norm/norm.h"
#include "python/tensor_caster.h"

namespace replearn::python {

template <DeviceType D>
void bind_norm(pybind11::module_& m) {
  namespace py = pybind11;
  using py::arg;
  using namespace replearn::norm;
  const auto nogil = py::call_guard<py::gil_scoped_release>();
  const auto stream = arg("stream") = std::uintptr_t{0};

  m.def("layer_norm_forward", &layer_norm_forward<D>, arg("x"), arg("normalized_ndim"), arg("weight").none(true),
        arg("bias").none(true), arg("eps"), arg("y"), arg("mean").none(true), arg("rstd").none(true), stream, nogil);
  m.def("layer_norm_backward_workspace_size", &layer_norm_backward_workspace_size<D>, arg("x"),
        arg("normalized_ndim"));
  m.def("layer_norm_backward", &layer_norm_backward<D>, arg("grad_y"), arg("x"), arg("normalized_ndim"), arg("mean"),
        arg("rstd"), arg("weight").none(true), arg("grad_x").none(true), arg("grad_weight").none(true),
        arg("grad_bias").none(true), arg("workspace").none(true), stream, nogil);

  m.def("rms_norm_forward", &rms_norm_forward<D>, arg("x"), arg("normalized_ndim"), arg("weight").none(true),
        arg("eps"), arg("y"), arg("rstd").none(true), stream, nogil);
  m.def("rms_norm_backward_workspace_size", &rms_norm_backward_workspace_size<D>, arg("x"), arg("normalized_ndim"));
  m.def("rms_norm_backward", &rms_norm_backward<D>, arg("grad_y"), arg("x"), arg("normalized_ndim"), arg("rstd"),
        arg("weight").none(true), arg("grad_x").none(true), arg("grad_weight").none(true),
        arg("workspace").none(true), stream, nogil);

  m.def("batch_norm_forward", &batch_norm_forward<D>, arg("x"), arg("weight").none(true), arg("bias").none(true),
        arg("running_mean").none(true), arg("running_var").none(true), arg("training"), arg("momentum"), arg("eps"),
        arg("y"), arg("save_mean"), arg("save_rstd"), stream, nogil);
  m.def("batch_norm_backward", &batch_norm_backward<D>, arg("grad_y"), arg("x"), arg("save_mean"), arg("save_rstd"),
        arg("weight").none(true), arg("training"), arg("grad_x").none(true), arg("grad_weight").none(true),
        arg("grad_bias").none(true), stream, nogil);

  m.def("group_norm_forward", &group_norm_forward<D>, arg("x"), arg("num_groups"), arg("weight").none(true),
        arg("bias").none(true), arg("eps"), arg("y"), arg("mean").none(true), arg("rstd").none(true), stream,
        nogil);
  m.def("group_norm_backward_workspace_size", &group_norm_backward_workspace_size<D>, arg("x"), arg("num_groups"));
  m.def("group_norm_backward", &group_norm_backward<D>, arg("grad_y"), arg("x"), arg("num_groups"), arg("mean"),
        arg("rstd"), arg("weight").none(true), arg("grad_x").none(true), arg("grad_weight").none(true),
        arg("grad_bias").none(true), arg("workspace").none(true), stream, nogil);

  m.def("running_stats_update", &running_stats_update<D>, arg("mean"), arg("rstd"), arg("batch"), arg("channels"),
        arg("spatial"), arg("momentum"), arg("eps"), arg("running_mean"), arg("running_var"), stream, nogil);

  m.def("weight_norm_forward", &weight_norm_forward<D>, arg("v"), arg("g"), arg("dim"), arg("w"), arg("norm"),
        stream, nogil);
  m.def("weight_norm_backward", &weight_norm_backward<D>, arg("grad_w"), arg("v"), arg("g"), arg("norm"), arg("dim"),
        arg("grad_v").none(true), arg("grad_g").none(true), stream, nogil);

  m.def("spectral_norm_forward_workspace_size", &spectral_norm_forward_workspace_size<D>, arg("weight"));
  m.def("spectral_norm_forward", &spectral_norm_forward<D>, arg("weight"), arg("u"), arg("v").none(true),
        arg("n_power_iterations"), arg("eps"), arg("coeff").none(true), arg("w"), arg("u_out"), arg("v_out"),
        arg("sigma"), arg("workspace").none(true), stream, nogil);
  m.def("spectral_norm_backward_workspace_size", &spectral_norm_backward_workspace_size<D>, arg("weight"));
  m.def("spectral_norm_backward", &spectral_norm_backward<D>, arg("grad_w"), arg("grad_sigma").none(true),
        arg("weight"), arg("u"), arg("v"), arg("sigma"), arg("coeff").none(true), arg("grad_weight"),
        arg("workspace").none(true), stream, nogil);
}

}  // namespace replearn::python
