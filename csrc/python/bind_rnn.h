// Python bindings of the recurrent family, written once for both devices (bind_rnn<CPU> in
// module_cpu.cpp, bind_rnn<CUDA> in module_cuda.cpp). Kernels run with the GIL released.
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "python/tensor_caster.h"
#include "rnn/rnn.h"

namespace replearn::python {

template <DeviceType D>
void bind_rnn(pybind11::module_& m) {
  namespace py = pybind11;
  using py::arg;
  using namespace replearn::rnn;
  const auto nogil = py::call_guard<py::gil_scoped_release>();
  const auto stream = arg("stream") = std::uintptr_t{0};

  m.def("rnn_forward_workspace_size", &rnn_forward_workspace_size<D>, arg("cell"), arg("x"), arg("w_hh"),
        arg("w_hr").none(true));
  m.def("rnn_forward", &rnn_forward<D>, arg("cell"), arg("x"), arg("h0"), arg("c0").none(true), arg("w_ih"),
        arg("w_hh"), arg("w_hr").none(true), arg("b_ih").none(true), arg("b_hh").none(true), arg("lengths").none(true), arg("reverse"),
        arg("y"), arg("h_n"), arg("c_n").none(true), arg("reserve"), arg("workspace").none(true), stream, nogil);
  m.def("rnn_backward_workspace_size", &rnn_backward_workspace_size<D>, arg("cell"), arg("x"), arg("w_hh"),
        arg("w_hr").none(true));
  m.def("rnn_backward", &rnn_backward<D>, arg("cell"), arg("grad_y"), arg("grad_h_n"), arg("grad_c_n").none(true),
        arg("x"), arg("w_ih"), arg("w_hh"), arg("w_hr").none(true), arg("lengths").none(true), arg("reverse"), arg("reserve"),
        arg("grad_x").none(true), arg("grad_h0").none(true), arg("grad_c0").none(true), arg("grad_w_ih").none(true),
        arg("grad_w_hh").none(true), arg("grad_w_hr").none(true), arg("grad_b_ih").none(true), arg("grad_b_hh").none(true),
        arg("workspace").none(true), stream, nogil);
}

}  // namespace replearn::python
