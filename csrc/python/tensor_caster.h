// pybind11 conversion of Python tensors to replearn::TensorView, without copying.
//
// Two ways in, one result:
// - any DLPack producer (an object with __dlpack__, e.g. a numpy array or a torch tensor) or a
//   "dltensor" capsule: the general, library-neutral path;
// - a fast path for objects that expose torch's tensor attributes (data_ptr(), shape, stride(),
//   dtype, get_device()). Read through the Python C API, without linking torch, it costs well under
//   a microsecond per tensor where a __dlpack__ export costs about two (docs/design.md, "per-call
//   overhead"), and it also accepts tensors that require grad, which __dlpack__ refuses.
// Conversion never fails on dtype, device or strides: it describes what it was given, and the
// entry point's validation rejects what it cannot take, naming the argument.
#pragma once

#include <pybind11/pybind11.h>

#include "core/tensor_view.h"

namespace replearn::python {

// Fills `view`; returns false when `obj` is not a tensor at all. `keep_alive` receives the capsule
// whose memory the view points into (DLPack path) and must outlive every use of the view.
bool to_tensor_view(pybind11::handle obj, TensorView& view, pybind11::object& keep_alive);

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
