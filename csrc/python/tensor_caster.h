// pybind11 conversion of Python tensors to replearn::TensorView, without copying.
//
// Three ways in, one result, tried in this order:
// - DLPack's C exchange table (`type(t).__dlpack_c_exchange_api__`, DLPack 1.3), which torch
//   publishes since 2.10: one C call per tensor, no Python attribute read, about 1.9k instructions
//   per tensor argument where the attribute path costs 5.9k (docs/design.md, "per-call overhead");
// - objects that expose torch's tensor attributes (data_ptr(), shape, stride(), dtype, is_cpu):
//   read through the Python C API, without linking torch. Older torch takes this path, and so do
//   tensors the exchange cannot describe (meta), which it reports on a device validation refuses.
//   Both torch paths accept tensors that require grad, which __dlpack__ refuses;
// - any DLPack producer (an object with __dlpack__, e.g. a numpy array) or a "dltensor" capsule:
//   the general, library-neutral path.
// Conversion never fails on dtype, device or strides: it describes what it was given, and the
// entry point's validation rejects what it cannot take, naming the argument. That includes torch's
// negative bit (TensorView::negated), which both torch paths ask for with is_neg().
#pragma once

#include <pybind11/pybind11.h>

#include "core/tensor_view.h"

namespace replearn::python {

// Fills `view`; returns false when `obj` is not a tensor at all. `keep_alive` receives the capsule
// whose memory the view points into (DLPack path) and must outlive every use of the view.
bool to_tensor_view(pybind11::handle obj, TensorView& view, pybind11::object& keep_alive);

// Whether tensors of obj's type are read through the C exchange table (false on a torch without
// one, or after set_tensor_exchange(false)).
bool uses_tensor_exchange(pybind11::handle obj);

// Turns the exchange path off (false) or on; returns the previous setting. For tests that compare
// the two paths.
bool set_tensor_exchange(bool enabled);

// Translates replearn::Error into TypeError / ValueError / RuntimeError.
void register_error_translator();

}  // namespace replearn::python

namespace pybind11::detail {

template <>
struct type_caster<replearn::TensorView> {
  PYBIND11_TYPE_CASTER(replearn::TensorView, const_name("Tensor"));

  bool load(handle src, bool) {
    if (src.is_none()) return false;
    return replearn::python::to_tensor_view(src, value, keep_alive_);
  }

  static handle cast(const replearn::TensorView&, return_value_policy, handle) {
    throw pybind11::type_error("replearn: a TensorView cannot be returned to Python");
  }

 private:
  object keep_alive_;
};

}  // namespace pybind11::detail
