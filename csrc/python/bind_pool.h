// Python bindings of the pooling family, written once for both devices: module_cpu.cpp binds
// bind_pool<DeviceType::CPU>, module_cuda.cpp bind_pool<DeviceType::CUDA>. Every kernel runs with the
// GIL released; tensors arrive as TensorViews (tensor_caster.h), integer tuples as lists.
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "pool/pool.h"
#include "python/tensor_caster.h"

namespace replearn::python {

template <DeviceType D>
void bind_pool(pybind11::module_& m) {
  namespace py = pybind11;
  using py::arg;
  using namespace replearn::pool;
  const auto nogil = py::call_guard<py::gil_scoped_release>();
  const auto stream = arg("stream") = std::uintptr_t{0};

  m.def("max_pool_forward", &max_pool_forward<D>, arg("x"), arg("kernel_size"), arg("stride"), arg("padding"),
        arg("dilation"), arg("ceil_mode"), arg("y"), arg("indices").none(true), stream, nogil);
  m.def("max_pool_backward", &max_pool_backward<D>, arg("grad_y"), arg("indices"), arg("kernel_size"), arg("stride"),
        arg("padding"), arg("dilation"), arg("ceil_mode"), arg("grad_x"), stream, nogil);
  m.def("avg_pool_forward", &avg_pool_forward<D>, arg("x"), arg("kernel_size"), arg("stride"), arg("padding"),
        arg("ceil_mode"), arg("count_include_pad"), arg("divisor_override"), arg("y"), stream, nogil);
  m.def("avg_pool_backward", &avg_pool_backward<D>, arg("grad_y"), arg("kernel_size"), arg("stride"), arg("padding"),
        arg("ceil_mode"), arg("count_include_pad"), arg("divisor_override"), arg("grad_x"), stream, nogil);
  m.def("adaptive_avg_pool_forward", &adaptive_avg_pool_forward<D>, arg("x"), arg("spatial_ndim"), arg("y"), stream,
        nogil);
  m.def("adaptive_avg_pool_backward", &adaptive_avg_pool_backward<D>, arg("grad_y"), arg("spatial_ndim"),
        arg("grad_x"), stream, nogil);
}

}  // namespace replearn::python
