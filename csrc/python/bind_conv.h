// Python bindings of the convolution family, written once for both devices (bind_conv<CPU> in
// module_cpu.cpp, bind_conv<CUDA> in module_cuda.cpp). Kernels run with the GIL released.
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "conv/conv.h"
#include "python/tensor_caster.h"

namespace replearn::python {

template <DeviceType D>
void bind_conv(pybind11::module_& m) {
  namespace py = pybind11;
  using py::arg;
  using namespace replearn::conv;
  const auto nogil = py::call_guard<py::gil_scoped_release>();
  const auto stream = arg("stream") = std::uintptr_t{0};

  m.def("conv_forward_workspace_size", &conv_forward_workspace_size<D>, arg("x"), arg("weight"), arg("stride"),
        arg("padding_begin"), arg("padding_end"), arg("dilation"), arg("groups"), arg("y"));
  m.def("conv_forward", &conv_forward<D>, arg("x"), arg("weight"), arg("bias").none(true), arg("stride"),
        arg("padding_begin"), arg("padding_end"), arg("dilation"), arg("groups"), arg("y"),
        arg("workspace").none(true), stream, nogil);
  m.def("conv_backward_workspace_size", &conv_backward_workspace_size<D>, arg("grad_y"), arg("x"), arg("weight"),
        arg("stride"), arg("padding_begin"), arg("padding_end"), arg("dilation"), arg("groups"));
  m.def("conv_backward", &conv_backward<D>, arg("grad_y"), arg("x"), arg("weight"), arg("stride"),
        arg("padding_begin"), arg("padding_end"), arg("dilation"), arg("groups"), arg("grad_x").none(true),
        arg("grad_weight").none(true), arg("grad_bias").none(true), arg("workspace").none(true), stream, nogil);

  m.def("conv_transpose_forward_workspace_size", &conv_transpose_forward_workspace_size<D>, arg("x"), arg("weight"),
        arg("stride"), arg("padding"), arg("dilation"), arg("groups"), arg("y"));
  m.def("conv_transpose_forward", &conv_transpose_forward<D>, arg("x"), arg("weight"), arg("bias").none(true),
        arg("stride"), arg("padding"), arg("dilation"), arg("groups"), arg("y"), arg("workspace").none(true), stream,
        nogil);
  m.def("conv_transpose_backward_workspace_size", &conv_transpose_backward_workspace_size<D>, arg("grad_y"),
        arg("x"), arg("weight"), arg("stride"), arg("padding"), arg("dilation"), arg("groups"));
  m.def("conv_transpose_backward", &conv_transpose_backward<D>, arg("grad_y"), arg("x"), arg("weight"),
        arg("stride"), arg("padding"), arg("dilation"), arg("groups"), arg("grad_x").none(true),
        arg("grad_weight").none(true), arg("grad_bias").none(true), arg("workspace").none(true), stream, nogil);
}

}  // namespace replearn::python
