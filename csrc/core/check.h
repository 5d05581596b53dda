// Argument validation shared by every entry point ("validate, then touch": ARCHITECTURE.md).
//
// A Checker is built with the entry point's name and the device its kernels run on; each method
// checks one property of one named argument and throws replearn::Error naming both:
//   Checker check("layer_norm_forward", DeviceType::CPU);
//   check.floating("x", x);              // a dtype this device's kernels support
//   check.same_dtype("weight", weight, "x", x);
//   check.shape("weight", weight, {N});
#pragma once

#include <initializer_list>
#include <optional>
#include <string>

#include "core/tensor_view.h"

namespace replearn {

// The dtypes kernels accept: float32/float64 on the CPU, float32/float16/bfloat16 on CUDA.
bool dtype_supported(DeviceType device, DType dtype);
// Per-row statistics (mean, rstd, ...) are kept in float64 for float64 inputs, float32 otherwise.
DType stats_dtype(DType input);

class Checker {
 public:
  Checker(const char* function, DeviceType device) : function_(function), device_(device) {}

  const char* function() const { return function_; }

  // Floating dtype supported on this device, memory on this device (and on `x`'s CUDA ordinal
  // once `x` is known), at most TensorView::kMaxDims dimensions.
  void floating(const char* arg, const TensorView& v);
  void dtype(const char* arg, const TensorView& v, DType expected) const;
  void same_dtype(const char* arg, const TensorView& v, const char* ref_arg, const TensorView& ref) const;
  void contiguous(const char* arg, const TensorView& v) const;
  void shape(const char* arg, const TensorView& v, std::initializer_list<int64_t> sizes) const;
  void same_shape(const char* arg, const TensorView& v, const char* ref_arg, const TensorView& ref) const;
  void numel(const char* arg, const TensorView& v, int64_t expected) const;
  void min_dim(const char* arg, const TensorView& v, int ndim) const;
  // Same role as floating() for buffers of a fixed dtype (statistics, running averages).
  void buffer(const char* arg, const TensorView& v, DType expected, int64_t numel);

  // The scratch buffer a kernel asked for through its *_workspace_size(): `bytes` or more uint8,
  // contiguous, on the device of `like` (a CUDA buffer handed to a CPU kernel would be read on the
  // host). Nothing is required when bytes is 0.
  void workspace(const std::optional<TensorView>& workspace, int64_t bytes, const char* like_arg,
                 const TensorView& like) const;

  // A free-form condition on values: `check.value(eps >= 0, "eps", "a non-negative number", eps)`.
  template <class T>
  void value(bool ok, const char* arg, const char* expected, const T& got) const {
    REPLEARN_CHECK(ok, Value, function_, ": argument '", arg, "' expected ", expected, " but got ", got);
  }

 private:
  void on_device(const char* arg, const TensorView& v);

  const char* function_;
  DeviceType device_;
  bool have_device_ = false;
  Device first_device_;
  const char* first_arg_ = nullptr;
};

}  // namespace replearn
