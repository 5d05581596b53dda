// Argument validation for the pooling family, shared by the CPU and CUDA entry points.
// Each check_* function throws replearn::Error naming the argument, or returns the geometry.
#include <string>

#include "core/check.h"
#include "pool/pool.h"

namespace replearn::pool {

namespace {

std::string ints_string(const Ints& v) {
  std::string s = "(";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + ")";
}

// x (N, C, *spatial) or (C, *spatial), contiguous, a dtype of this device; the dims that torch asks to
// be non-empty (every non-batch dim, or only the spatial ones for the adaptive ops) are.
void check_input(Checker& check, const char* arg, const TensorView& x, int spatial_ndim, bool channels_may_be_empty) {
  check.floating(arg, x);
  check.contiguous(arg, x);
  REPLEARN_CHECK(x.ndim == spatial_ndim + 1 || x.ndim == spatial_ndim + 2, Value, check.function(), ": argument '",
                 arg, "' expected ", spatial_ndim + 1, " (unbatched) or ", spatial_ndim + 2,
                 " (batched) dimensions but got shape ", x.shape_string());
  const int first = x.ndim == spatial_ndim + 2 ? 1 : 0;  // the batch may be empty
  for (int d = channels_may_be_empty ? x.ndim - spatial_ndim : first; d < x.ndim; ++d)
    REPLEARN_CHECK(x.sizes[d] > 0, Value, check.function(), ": argument '", arg,
                   "' expected non-empty non-batch dimensions but got shape ", x.shape_string());
}

// The spatial dims of a strided op: one per kernel_size value, 1 or 2.
int strided_ndim(const Checker& check, const Ints& kernel_size) {
  REPLEARN_CHECK(kernel_size.size() == 1 || kernel_size.size() == 2, Value, check.function(),
                 ": argument 'kernel_size' expected 1 or 2 values but got ", ints_string(kernel_size));
  return static_cast<int>(kernel_size.size());
}

// One value per spatial dim, each ≥ minimum.
void check_ints(const Checker& check, const char* arg, const Ints& v, size_t count, int64_t minimum) {
  bool ok = v.size() == count;
  for (size_t i = 0; ok && i < v.size(); ++i) ok = v[i] >= minimum;
  REPLEARN_CHECK(ok, Value, check.function(), ": argument '", arg, "' expected ", count, " integer(s) ",
                 minimum == 0 ? "≥ 0" : "> 0", " (one per spatial dim) but got ", ints_string(v));
}

// The planes and the strided axes of x's trailing spatial dims; `dilation` empty: all 1 (average pooling).
Geometry strided_geometry(Checker& check, const TensorView& x, const Ints& kernel_size, const Ints& stride,
                          const Ints& padding, const Ints& dilation, bool ceil_mode) {
  const size_t n = kernel_size.size();
  check_ints(check, "kernel_size", kernel_size, n, 1);
  check_ints(check, "stride", stride, n, 1);
  check_ints(check, "padding", padding, n, 0);
  const Ints ones(n, 1);
  const Ints& dil = dilation.empty() ? ones : dilation;
  check_ints(check, "dilation", dil, n, 1);
  for (size_t i = 0; i < n; ++i)
    REPLEARN_CHECK(padding[i] <= kernel_size[i] / 2, Value, check.function(),
                   ": argument 'padding' expected at most half of kernel_size ", ints_string(kernel_size),
                   " but got ", ints_string(padding));
  Geometry g;
  const int spatial = static_cast<int>(n);
  g.planes = x.numel_between(0, x.ndim - spatial);
  Axis* axes[2] = {&g.h, &g.w};
  for (size_t i = 0; i < n; ++i) {
    Axis& a = *axes[2 - n + i];
    a.in = x.sizes[x.ndim - spatial + i];
    a.kernel = kernel_size[i];
    a.stride = stride[i];
    a.pad = padding[i];
    a.dilation = dil[i];
    a.out = pooled_size(a.in, a.kernel, a.stride, a.pad, a.dilation, ceil_mode);
  }
  REPLEARN_CHECK(g.h.out >= 1 && g.w.out >= 1, Value, check.function(), ": input of shape ", x.shape_string(),
                 " is too small for kernel_size ", ints_string(kernel_size), ", padding ", ints_string(padding),
                 " and dilation ", ints_string(dil), ": the output would be empty (", g.h.out, " x ", g.w.out, ")");
  return g;
}

// An output (or output gradient) shaped like x with the pooled spatial sizes.
void check_pooled(Checker& check, const char* arg, const TensorView& y, const TensorView& x, const char* x_arg,
                  const Geometry& g, int spatial_ndim) {
  check.floating(arg, y);
  check.same_dtype(arg, y, x_arg, x);
  check.contiguous(arg, y);
  bool ok = y.ndim == x.ndim;
  for (int d = 0; ok && d < x.ndim - spatial_ndim; ++d) ok = y.sizes[d] == x.sizes[d];
  if (ok && spatial_ndim == 2) ok = y.sizes[x.ndim - 2] == g.h.out;
  if (ok) ok = y.sizes[x.ndim - 1] == g.w.out;
  if (ok) return;
  std::string expected = "(";  // built only for the message: this runs on every call
  for (int d = 0; d < x.ndim - spatial_ndim; ++d) expected += std::to_string(x.sizes[d]) + ", ";
  expected += (spatial_ndim == 2 ? std::to_string(g.h.out) + ", " : "") + std::to_string(g.w.out) + ")";
  REPLEARN_CHECK(false, Value, check.function(), ": argument '", arg, "' expected shape ", expected, " but got ",
                 y.shape_string());
}

void check_indices(Checker& check, const TensorView& indices, const TensorView& y, const char* y_arg) {
  check.buffer("indices", indices, DType::Int64, indices.numel());
  check.same_shape("indices", indices, y_arg, y);
}

void check_divisor(const Checker& check, int64_t divisor_override) {
  check.value(divisor_override >= 0, "divisor_override", "a positive number or 0 for none", divisor_override);
}

int check_spatial_ndim(const Checker& check, int spatial_ndim) {
  check.value(spatial_ndim == 1 || spatial_ndim == 2, "spatial_ndim", "1 or 2", spatial_ndim);
  return spatial_ndim;
}

// Adaptive axes between x's and y's trailing spatial sizes.
Geometry adaptive_geometry(const TensorView& x, const TensorView& y, int spatial_ndim) {
  Geometry g;
  g.planes = x.numel_between(0, x.ndim - spatial_ndim);
  Axis* axes[2] = {&g.h, &g.w};
  for (int i = 0; i < spatial_ndim; ++i) {
    Axis& a = *axes[2 - spatial_ndim + i];
    a.adaptive = true;
    a.in = x.sizes[x.ndim - spatial_ndim + i];
    a.out = y.sizes[y.ndim - spatial_ndim + i];
  }
  return g;
}

// y of an adaptive op: x's leading dims, any spatial sizes ≥ 0.
void check_adaptive_output(Checker& check, const char* arg, const TensorView& y, const TensorView& x,
                           const char* x_arg, int spatial_ndim) {
  check.floating(arg, y);
  check.same_dtype(arg, y, x_arg, x);
  check.contiguous(arg, y);
  bool ok = y.ndim == x.ndim;
  for (int d = 0; ok && d < x.ndim - spatial_ndim; ++d) ok = y.sizes[d] == x.sizes[d];
  REPLEARN_CHECK(ok, Value, check.function(), ": argument '", arg, "' expected the leading dimensions of '", x_arg,
                 "' (shape ", x.shape_string(), ") followed by ", spatial_ndim, " output size(s) but got shape ",
                 y.shape_string());
}

}  // namespace

Geometry check_max_pool_forward(DeviceType device, const TensorView& x, const Ints& kernel_size, const Ints& stride,
                                const Ints& padding, const Ints& dilation, bool ceil_mode, const TensorView& y,
                                const OptView& indices) {
  Checker check("max_pool_forward", device);
  const int spatial = strided_ndim(check, kernel_size);
  check_input(check, "x", x, spatial, false);
  const Geometry g = strided_geometry(check, x, kernel_size, stride, padding, dilation, ceil_mode);
  check_pooled(check, "y", y, x, "x", g, spatial);
  if (indices) check_indices(check, *indices, y, "y");
  return g;
}

Geometry check_max_pool_backward(DeviceType device, const TensorView& dy, const TensorView& indices,
                                 const Ints& kernel_size, const Ints& stride, const Ints& padding,
                                 const Ints& dilation, bool ceil_mode, const TensorView& dx) {
  Checker check("max_pool_backward", device);
  const int spatial = strided_ndim(check, kernel_size);
  check_input(check, "grad_x", dx, spatial, false);
  const Geometry g = strided_geometry(check, dx, kernel_size, stride, padding, dilation, ceil_mode);
  check_pooled(check, "grad_y", dy, dx, "grad_x", g, spatial);
  check_indices(check, indices, dy, "grad_y");
  return g;
}

Geometry check_avg_pool_forward(DeviceType device, const TensorView& x, const Ints& kernel_size, const Ints& stride,
                                const Ints& padding, bool ceil_mode, int64_t divisor_override, const TensorView& y) {
  Checker check("avg_pool_forward", device);
  const int spatial = strided_ndim(check, kernel_size);
  check_input(check, "x", x, spatial, false);
  const Geometry g = strided_geometry(check, x, kernel_size, stride, padding, {}, ceil_mode);
  check_divisor(check, divisor_override);
  check_pooled(check, "y", y, x, "x", g, spatial);
  return g;
}

Geometry check_avg_pool_backward(DeviceType device, const TensorView& dy, const Ints& kernel_size, const Ints& stride,
                                 const Ints& padding, bool ceil_mode, int64_t divisor_override, const TensorView& dx) {
  Checker check("avg_pool_backward", device);
  const int spatial = strided_ndim(check, kernel_size);
  check_input(check, "grad_x", dx, spatial, false);
  const Geometry g = strided_geometry(check, dx, kernel_size, stride, padding, {}, ceil_mode);
  check_divisor(check, divisor_override);
  check_pooled(check, "grad_y", dy, dx, "grad_x", g, spatial);
  return g;
}

Geometry check_adaptive_avg_pool_forward(DeviceType device, const TensorView& x, int spatial_ndim,
                                         const TensorView& y) {
  Checker check("adaptive_avg_pool_forward", device);
  check_input(check, "x", x, check_spatial_ndim(check, spatial_ndim), true);
  check_adaptive_output(check, "y", y, x, "x", spatial_ndim);
  return adaptive_geometry(x, y, spatial_ndim);
}

Geometry check_adaptive_avg_pool_backward(DeviceType device, const TensorView& dy, int spatial_ndim,
                                          const TensorView& dx) {
  Checker check("adaptive_avg_pool_backward", device);
  check_input(check, "grad_x", dx, check_spatial_ndim(check, spatial_ndim), true);
  check_adaptive_output(check, "grad_y", dy, dx, "grad_x", spatial_ndim);
  return adaptive_geometry(dx, dy, spatial_ndim);
}

}  // namespace replearn::pool
