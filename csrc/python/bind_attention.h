// Python bindings of the attention family, written once for both devices: module_cpu.cpp binds
// bind_attention<DeviceType::CPU>, module_cuda.cpp bind_attention<DeviceType::CUDA>. Every kernel
// runs with the GIL released; tensors arrive as TensorViews (tensor_caster.h).
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "attention/attention.h"
#include "python/tensor_caster.h"

namespace replearn::python {

template <DeviceType D>
void bind_attention(pybind11::module_& m) {
  namespace py = pybind11;
  using py::arg;
  using namespace replearn::attention;
  const auto nogil = py::call_guard<py::gil_scoped_release>();
  const auto stream = arg("stream") = std::uintptr_t{0};

  m.def("attention_forward", &attention_forward<D>, arg("q"), arg("k"), arg("v"), arg("key_padding_mask").none(true),
        arg("attn_bias").none(true), arg("scale"), arg("causal"), arg("dropout_p"), arg("seed"), arg("out"),
        arg("lse"), stream, nogil);
  m.def("attention_backward_workspace_size", &attention_backward_workspace_size<D>, arg("q"), arg("k"), arg("v"),
        arg("attn_bias").none(true), arg("need_grad_bias"));
  m.def("attention_backward", &attention_backward<D>, arg("grad_out"), arg("grad_lse").none(true), arg("q"), arg("k"),
        arg("v"), arg("out"), arg("lse"), arg("key_padding_mask").none(true), arg("attn_bias").none(true),
        arg("scale"), arg("causal"), arg("dropout_p"), arg("seed"), arg("grad_q").none(true),
        arg("grad_k").none(true), arg("grad_v").none(true), arg("grad_bias").none(true),
        arg("workspace").none(true), stream, nogil);
  m.def("attention_dropout_mask", &attention_dropout_mask<D>, arg("mask"), arg("dropout_p"), arg("seed"), stream,
        nogil);
}

}  // namespace replearn::python
