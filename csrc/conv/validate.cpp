// Argument validation for the convolution family, shared by the CPU and CUDA entry points.
// Each check_* function throws replearn::Error naming the argument, or returns the geometry.
#include <algorithm>
#include <string>

#include "conv/conv.h"
#include "core/check.h"

namespace replearn::conv {

namespace {

std::string ints_string(const int64_t* v, size_t n) {
  std::string s = "(";
  for (size_t i = 0; i < n; ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + ")";
}

void check_sizes(const Checker& check, const char* arg, const TensorView& v, const std::vector<int64_t>& sizes,
                 const char* what) {
  bool ok = v.ndim == static_cast<int>(sizes.size());
  for (int d = 0; ok && d < v.ndim; ++d) ok = v.sizes[d] == sizes[d];
  REPLEARN_CHECK(ok, Value, check.function(), ": argument '", arg, "' expected shape ",
                 ints_string(sizes.data(), sizes.size()), what, " but got ", v.shape_string());
}

void check_tensor(Checker& check, const char* arg, const TensorView& v, const TensorView& x) {
  check.floating(arg, v);
  check.same_dtype(arg, v, "x", x);
  check.contiguous(arg, v);
}

void check_list(const Checker& check, const char* arg, const Ints& v, int spatial, int64_t min_value,
                const char* expected) {
  REPLEARN_CHECK(static_cast<int>(v.size()) == spatial, Value, check.function(), ": argument '", arg,
                 "' expected ", spatial, " value(s), one per spatial dimension, but got ",
                 ints_string(v.data(), v.size()));
  for (int64_t value : v)
    REPLEARN_CHECK(value >= min_value, Value, check.function(), ": argument '", arg, "' expected ", expected,
                   " but got ", ints_string(v.data(), v.size()));
}

// What conv and conv_transpose share: x (N, C_in, *I) with 1 or 2 spatial dims, the weight's rank,
// dtype and channel counts, the stride/padding/dilation lists and groups. Fills every field of the
// geometry but the output sizes (in the conv direction: `in` is conv's input).
struct Layout {
  int spatial;        // 1 or 2
  int64_t out_channels;
};

Layout check_layout(Checker& check, const TensorView& x, const TensorView& weight, const Ints& stride,
                    const Ints& padding, const Ints& dilation, int64_t groups, bool transpose) {
  check.floating("x", x);
  check.contiguous("x", x);
  REPLEARN_CHECK(x.ndim == 3 || x.ndim == 4, Value, check.function(),
                 ": argument 'x' expected 3 dimensions (N, C, L) or 4 (N, C, H, W) but got shape ", x.shape_string());
  const int spatial = x.ndim - 2;
  check_tensor(check, "weight", weight, x);
  REPLEARN_CHECK(weight.ndim == x.ndim, Value, check.function(), ": argument 'weight' expected ", x.ndim,
                 " dimensions like x (", transpose ? "C_in, C_out/groups" : "C_out, C_in/groups",
                 ", kernel) but got shape ", weight.shape_string());
  check_list(check, "stride", stride, spatial, 1, "positive values");
  check_list(check, "dilation", dilation, spatial, 1, "positive values");
  check_list(check, "padding", padding, spatial, 0, "non-negative values");
  for (int d = 2; d < weight.ndim; ++d)
    REPLEARN_CHECK(weight.sizes[d] >= 1, Value, check.function(), ": argument 'weight' expected a kernel of at "
                   "least one element per dimension but got shape ", weight.shape_string());
  const int64_t in_channels = x.size(1);
  REPLEARN_CHECK(groups >= 1 && in_channels % groups == 0, Value, check.function(),
                 ": argument 'groups' expected a positive divisor of the ", in_channels, " input channels of x but got ",
                 groups);
  int64_t out_channels;
  if (transpose) {  // weight (C_in, C_out/G, *K)
    REPLEARN_CHECK(weight.size(0) == in_channels, Value, check.function(), ": argument 'weight' expected ",
                   in_channels, " rows (the input channels of x) in shape (C_in, C_out/groups, kernel) but got ",
                   weight.shape_string());
    out_channels = weight.size(1) * groups;
  } else {  // weight (C_out, C_in/G, *K)
    REPLEARN_CHECK(weight.size(1) == in_channels / groups, Value, check.function(),
                   ": argument 'weight' expected ", in_channels / groups, " input channels per group (x has ",
                   in_channels, " channels in ", groups, " groups) in shape (C_out, C_in/groups, kernel) but got ",
                   weight.shape_string());
    out_channels = weight.size(0);
    REPLEARN_CHECK(out_channels % groups == 0, Value, check.function(), ": argument 'weight' expected a number of "
                   "output channels divisible by groups = ", groups, " but got shape ", weight.shape_string());
  }
  return {spatial, out_channels};
}

// Conv geometry with x as conv's input and the given per-side padding.
Geometry conv_direction(const TensorView& in, const TensorView& weight, int64_t out_channels, int64_t groups,
                        const Ints& stride, const Ints& pad_begin, const Ints& dilation, const int64_t* out_sizes) {
  const int spatial = in.ndim - 2;
  const bool two = spatial == 2;
  Geometry g{};
  g.batch = in.size(0);
  g.groups = groups;
  g.in_per_group = in.size(1) / groups;
  g.out_per_group = out_channels / groups;
  g.in_h = two ? in.size(2) : 1;
  g.in_w = in.size(-1);
  g.out_h = two ? out_sizes[0] : 1;
  g.out_w = out_sizes[spatial - 1];
  g.kernel_h = two ? weight.size(2) : 1;
  g.kernel_w = weight.size(-1);
  g.stride_h = two ? stride[0] : 1;
  g.stride_w = stride[spatial - 1];
  g.pad_h = two ? pad_begin[0] : 0;
  g.pad_w = pad_begin[spatial - 1];
  g.dilation_h = two ? dilation[0] : 1;
  g.dilation_w = dilation[spatial - 1];
  return g;
}

// Output sizes of conv over x; a clear error when the dilated kernel does not fit the padded input.
std::vector<int64_t> conv_out_sizes(const Checker& check, const TensorView& x, const TensorView& weight,
                                    const Ints& stride, const Ints& pad_begin, const Ints& pad_end,
                                    const Ints& dilation) {
  const int spatial = x.ndim - 2;
  std::vector<int64_t> out(spatial);
  for (int d = 0; d < spatial; ++d) {
    const int64_t padded = x.size(2 + d) + pad_begin[d] + pad_end[d];
    const int64_t span = dilation[d] * (weight.size(2 + d) - 1) + 1;  // the dilated kernel's extent
    REPLEARN_CHECK(padded >= span, Value, check.function(), ": argument 'weight' expected a kernel whose dilated "
                   "size ", span, " fits the padded input size ", padded, " in spatial dimension ", d,
                   " but got kernel shape ", weight.shape_string(), " for x of shape ", x.shape_string());
    out[d] = (padded - span) / stride[d] + 1;
  }
  return out;
}

void check_bias(Checker& check, const char* arg, const OptView& bias, const TensorView& x, int64_t out_channels) {
  if (!bias) return;
  check_tensor(check, arg, *bias, x);
  check_sizes(check, arg, *bias, {out_channels}, " (the output channels)");
}

void check_optional_like(Checker& check, const char* arg, const OptView& t, const TensorView& x,
                         const TensorView& like, const char* like_arg) {
  if (!t) return;
  check_tensor(check, arg, *t, x);
  check.same_shape(arg, *t, like_arg, like);
}

std::vector<int64_t> output_shape(const TensorView& x, int64_t out_channels, const std::vector<int64_t>& spatial) {
  std::vector<int64_t> shape{x.size(0), out_channels};
  shape.insert(shape.end(), spatial.begin(), spatial.end());
  return shape;
}

// conv_transpose: output_padding from y's size, checked as torch does (0 ≤ op < max(stride, dilation)).
std::vector<int64_t> transpose_out_sizes(const Checker& check, const char* arg, const TensorView& x,
                                         const TensorView& weight, const TensorView& y, const Ints& stride,
                                         const Ints& padding, const Ints& dilation, int64_t out_channels) {
  const int spatial = x.ndim - 2;
  REPLEARN_CHECK(y.ndim == x.ndim && y.size(0) == x.size(0) && y.size(1) == out_channels, Value, check.function(),
                 ": argument '", arg, "' expected shape (", x.size(0), ", ", out_channels,
                 ", spatial...) but got ", y.shape_string());
  std::vector<int64_t> out(spatial);
  for (int d = 0; d < spatial; ++d) {
    const int64_t base = (x.size(2 + d) - 1) * stride[d] - 2 * padding[d] + dilation[d] * (weight.size(2 + d) - 1) + 1;
    const int64_t output_padding = y.size(2 + d) - base;
    const int64_t limit = std::max(stride[d], dilation[d]);
    // As torch: the output may be all output_padding (base ≤ 0) as long as it is not empty.
    REPLEARN_CHECK(y.size(2 + d) >= 1 && output_padding >= 0 && output_padding < limit, Value, check.function(),
                   ": argument '", arg, "' expected spatial size ", base, " + output_padding with 0 <= output_padding < ",
                   limit, " (max of stride and dilation) in dimension ", d, " but got shape ", y.shape_string(),
                   y.size(2 + d) < 1 ? " (the padding removes the whole output)" : "");
    out[d] = y.size(2 + d);
  }
  return out;
}

// conv's direction of a transposed convolution: conv's input is the transpose's output y (C_out
// channels), conv's output is x; weight (C_in, C_out/G, *K) is conv's (C_out_conv, C_in_conv/G, *K).
Geometry transpose_geometry(const TensorView& x, const TensorView& weight, const TensorView& y, const Ints& stride,
                            const Ints& padding, const Ints& dilation, int64_t groups) {
  std::vector<int64_t> x_sizes(x.ndim - 2);
  for (int d = 0; d < x.ndim - 2; ++d) x_sizes[d] = x.size(2 + d);
  return conv_direction(y, weight, x.size(1), groups, stride, padding, dilation, x_sizes.data());
}

}  // namespace

void check_workspace(const char* function, const OptView& workspace, int64_t bytes, const TensorView& x) {
  Checker(function, x.device.type).workspace(workspace, bytes, "x", x);
}

Geometry check_conv_forward(DeviceType device, const TensorView& x, const TensorView& weight, const OptView& bias,
                            const Ints& stride, const Ints& padding_begin, const Ints& padding_end,
                            const Ints& dilation, int64_t groups, const TensorView& y) {
  Checker check("conv_forward", device);
  const Layout l = check_layout(check, x, weight, stride, padding_begin, dilation, groups, false);
  check_list(check, "padding_end", padding_end, l.spatial, 0, "non-negative values");
  const std::vector<int64_t> out = conv_out_sizes(check, x, weight, stride, padding_begin, padding_end, dilation);
  check_bias(check, "bias", bias, x, l.out_channels);
  check_tensor(check, "y", y, x);
  check_sizes(check, "y", y, output_shape(x, l.out_channels, out), " (the convolution's output)");
  return conv_direction(x, weight, l.out_channels, groups, stride, padding_begin, dilation, out.data());
}

Geometry check_conv_backward(DeviceType device, const TensorView& dy, const TensorView& x, const TensorView& weight,
                             const Ints& stride, const Ints& padding_begin, const Ints& padding_end,
                             const Ints& dilation, int64_t groups, const OptView& dx, const OptView& dweight,
                             const OptView& dbias) {
  Checker check("conv_backward", device);
  const Layout l = check_layout(check, x, weight, stride, padding_begin, dilation, groups, false);
  check_list(check, "padding_end", padding_end, l.spatial, 0, "non-negative values");
  const std::vector<int64_t> out = conv_out_sizes(check, x, weight, stride, padding_begin, padding_end, dilation);
  check_tensor(check, "grad_y", dy, x);
  check_sizes(check, "grad_y", dy, output_shape(x, l.out_channels, out), " (the convolution's output)");
  check_optional_like(check, "grad_x", dx, x, x, "x");
  check_optional_like(check, "grad_weight", dweight, x, weight, "weight");
  check_bias(check, "grad_bias", dbias, x, l.out_channels);
  return conv_direction(x, weight, l.out_channels, groups, stride, padding_begin, dilation, out.data());
}

Geometry check_conv_transpose_forward(DeviceType device, const TensorView& x, const TensorView& weight,
                                      const OptView& bias, const Ints& stride, const Ints& padding,
                                      const Ints& dilation, int64_t groups, const TensorView& y) {
  Checker check("conv_transpose_forward", device);
  const Layout l = check_layout(check, x, weight, stride, padding, dilation, groups, true);
  check_bias(check, "bias", bias, x, l.out_channels);
  check_tensor(check, "y", y, x);
  transpose_out_sizes(check, "y", x, weight, y, stride, padding, dilation, l.out_channels);
  return transpose_geometry(x, weight, y, stride, padding, dilation, groups);
}

Geometry check_conv_transpose_backward(DeviceType device, const TensorView& dy, const TensorView& x,
                                       const TensorView& weight, const Ints& stride, const Ints& padding,
                                       const Ints& dilation, int64_t groups, const OptView& dx,
                                       const OptView& dweight, const OptView& dbias) {
  Checker check("conv_transpose_backward", device);
  const Layout l = check_layout(check, x, weight, stride, padding, dilation, groups, true);
  check_tensor(check, "grad_y", dy, x);
  transpose_out_sizes(check, "grad_y", x, weight, dy, stride, padding, dilation, l.out_channels);
  check_optional_like(check, "grad_x", dx, x, x, "x");
  check_optional_like(check, "grad_weight", dweight, x, weight, "weight");
  check_bias(check, "grad_bias", dbias, x, l.out_channels);
  return transpose_geometry(x, weight, dy, stride, padding, dilation, groups);
}

}  // namespace replearn::conv
