#include "core/check.h"

namespace replearn {

bool dtype_supported(DeviceType device, DType dtype) {
  if (device == DeviceType::CPU) return dtype == DType::Float32 || dtype == DType::Float64;
  if (device == DeviceType::CUDA)
    return dtype == DType::Float32 || dtype == DType::Float16 || dtype == DType::BFloat16;
  return false;
}

DType stats_dtype(DType input) { return input == DType::Float64 ? DType::Float64 : DType::Float32; }

static const char* supported_list(DeviceType device) {
  return device == DeviceType::CPU ? "float32 or float64 (on the CPU)"
                                   : "float32, float16 or bfloat16 (on CUDA)";
}

void Checker::on_device(const char* arg, const TensorView& v) {
  REPLEARN_CHECK(v.device.type == device_, Value, function_, ": argument '", arg, "' expected a ",
                 device_ == DeviceType::CPU ? "cpu" : "cuda", " tensor but got one on ",
                 device_name(v.device));
  REPLEARN_CHECK(!v.negated, Value, function_, ": argument '", arg,
                 "' has torch's negative bit set (a lazy negation, from torch._neg_view or .conj().imag): its memory "
                 "holds the negated values; pass it through .resolve_neg() first");
  if (!have_device_) {
    have_device_ = true;
    first_device_ = v.device;
    first_arg_ = arg;
    return;
  }
  REPLEARN_CHECK(v.device == first_device_, Value, function_, ": argument '", arg, "' expected to be on ",
                 device_name(first_device_), " like '", first_arg_, "' but got ", device_name(v.device));
}

void Checker::floating(const char* arg, const TensorView& v) {
  REPLEARN_CHECK(dtype_supported(device_, v.dtype), Type, function_, ": argument '", arg, "' expected ",
                 supported_list(device_), " but got ", dtype_name(v.dtype));
  on_device(arg, v);
  REPLEARN_CHECK(v.ndim <= TensorView::kMaxDims, Value, function_, ": argument '", arg, "' expected at most ",
                 TensorView::kMaxDims, " dimensions but got ", v.ndim);
}

void Checker::buffer(const char* arg, const TensorView& v, DType expected, int64_t count) {
  dtype(arg, v, expected);
  on_device(arg, v);
  numel(arg, v, count);
  contiguous(arg, v);
}

void Checker::dtype(const char* arg, const TensorView& v, DType expected) const {
  REPLEARN_CHECK(v.dtype == expected, Type, function_, ": argument '", arg, "' expected ", dtype_name(expected),
                 " but got ", dtype_name(v.dtype));
}

void Checker::same_dtype(const char* arg, const TensorView& v, const char* ref_arg, const TensorView& ref) const {
  REPLEARN_CHECK(v.dtype == ref.dtype, Type, function_, ": argument '", arg, "' expected dtype ",
                 dtype_name(ref.dtype), " (the dtype of '", ref_arg, "') but got ", dtype_name(v.dtype));
}

void Checker::contiguous(const char* arg, const TensorView& v) const {
  REPLEARN_CHECK(v.is_contiguous(), Value, function_, ": argument '", arg,
                 "' expected contiguous (row-major) strides but got a tensor of shape ", v.shape_string(),
                 " with other strides; call .contiguous() first");
}

void Checker::shape(const char* arg, const TensorView& v, std::initializer_list<int64_t> sizes) const {
  bool ok = v.ndim == static_cast<int>(sizes.size());
  int d = 0;
  std::string expected = "(";
  for (int64_t s : sizes) {
    if (ok && v.sizes[d] != s) ok = false;
    expected += (d++ ? ", " : "") + std::to_string(s);
  }
  expected += ")";
  REPLEARN_CHECK(ok, Value, function_, ": argument '", arg, "' expected shape ", expected, " but got ",
                 v.shape_string());
}

void Checker::same_shape(const char* arg, const TensorView& v, const char* ref_arg, const TensorView& ref) const {
  bool ok = v.ndim == ref.ndim;
  for (int d = 0; ok && d < v.ndim; ++d) ok = v.sizes[d] == ref.sizes[d];
  REPLEARN_CHECK(ok, Value, function_, ": argument '", arg, "' expected shape ", ref.shape_string(),
                 " (the shape of '", ref_arg, "') but got ", v.shape_string());
}

void Checker::numel(const char* arg, const TensorView& v, int64_t expected) const {
  REPLEARN_CHECK(v.numel() == expected, Value, function_, ": argument '", arg, "' expected ", expected,
                 " elements but got ", v.numel(), " (shape ", v.shape_string(), ")");
}

void Checker::min_dim(const char* arg, const TensorView& v, int ndim) const {
  REPLEARN_CHECK(v.ndim >= ndim, Value, function_, ": argument '", arg, "' expected at least ", ndim,
                 " dimensions but got ", v.ndim, " (shape ", v.shape_string(), ")");
}

void Checker::workspace(const std::optional<TensorView>& workspace, int64_t bytes, const char* like_arg,
                        const TensorView& like) const {
  if (bytes == 0) return;
  REPLEARN_CHECK(workspace.has_value(), Value, function_, ": argument 'workspace' expected a buffer of ", bytes,
                 " bytes but got none");
  dtype("workspace", *workspace, DType::UInt8);
  REPLEARN_CHECK(workspace->device == like.device, Value, function_, ": argument 'workspace' expected to be on ",
                 device_name(like.device), " like '", like_arg, "' but got ", device_name(workspace->device));
  contiguous("workspace", *workspace);
  REPLEARN_CHECK(workspace->numel() >= bytes, Value, function_, ": argument 'workspace' expected at least ", bytes,
                 " bytes but got ", workspace->numel());
}

}  // namespace replearn
