// Argument validation for the flow family, shared by the CPU and CUDA entry points.
// Each check_* function throws replearn::Error naming the argument, or returns the geometry.
#include <vector>

#include "core/check.h"
#include "flow/flow.h"

namespace replearn::flow {

namespace {

// A tensor of x's dtype, device and shape, contiguous.
void check_like(Checker& check, const char* arg, const TensorView& t, const char* ref_arg, const TensorView& ref) {
  check.floating(arg, t);
  check.same_dtype(arg, t, ref_arg, ref);
  check.same_shape(arg, t, ref_arg, ref);
  check.contiguous(arg, t);
}

void check_optional_like(Checker& check, const char* arg, const OptView& t, const char* ref_arg,
                         const TensorView& ref) {
  if (t) check_like(check, arg, *t, ref_arg, ref);
}

// A parameter of x's dtype with the given shape, contiguous.
void check_param(Checker& check, const char* arg, const TensorView& p, const TensorView& x,
                 std::initializer_list<int64_t> shape, const char* x_arg = "x") {
  check.floating(arg, p);
  check.same_dtype(arg, p, x_arg, x);
  check.shape(arg, p, shape);
  check.contiguous(arg, p);
}

void check_optional_param(Checker& check, const char* arg, const OptView& p, const TensorView& x,
                          std::initializer_list<int64_t> shape, const char* x_arg = "x") {
  if (p) check_param(check, arg, *p, x, shape, x_arg);
}

// logdet and its gradient: (batch) in x's dtype.
void check_logdet(Checker& check, const char* arg, const TensorView& logdet, const TensorView& x,
                  const char* x_arg = "x") {
  check_param(check, arg, logdet, x, {x.size(0)}, x_arg);
}

int64_t batch_of(Checker& check, const TensorView& x) {
  check.floating("x", x);
  check.contiguous("x", x);
  check.min_dim("x", x, 1);
  return x.size(0);
}

ChannelDims channel_dims(Checker& check, const TensorView& x) {
  check.floating("x", x);
  check.contiguous("x", x);
  check.min_dim("x", x, 2);
  return {x.size(0), x.size(1), x.numel_between(2, x.ndim)};
}

RowDims coupling_dims(Checker& check, const TensorView& x, const OptView& shift, const OptView& log_scale,
                      const OptView& mask, int scale) {
  const int64_t batch = batch_of(check, x);
  const RowDims dims{batch, x.numel_between(1, x.ndim)};
  REPLEARN_CHECK(shift || log_scale, Value, check.function(),
                 ": arguments 'shift' and 'log_scale' expected at least one tensor but got neither");
  check_optional_like(check, "shift", shift, "x", x);
  check_optional_like(check, "log_scale", log_scale, "x", x);
  if (mask) check.buffer("mask", *mask, DType::Bool, dims.features);
  check.value(scale >= 0 && scale <= 2, "scale", "0 (exp), 1 (tanh) or 2 (sigmoid)", scale);
  return dims;
}

ChannelDims actnorm_dims(Checker& check, const TensorView& x, const TensorView& scale, const TensorView& bias) {
  const ChannelDims dims = channel_dims(check, x);
  check_param(check, "scale", scale, x, {dims.channels});
  check_param(check, "bias", bias, x, {dims.channels});
  return dims;
}

ChannelDims invconv_dims(Checker& check, const TensorView& x, const TensorView& perm, const TensorView& lower,
                         const TensorView& upper, const TensorView& s) {
  const ChannelDims dims = channel_dims(check, x);
  const int64_t c = dims.channels;
  check.buffer("perm", perm, DType::Int64, c);
  check.shape("perm", perm, {c});
  check_param(check, "lower", lower, x, {c, c});
  check_param(check, "upper", upper, x, {c, c});
  check_param(check, "s", s, x, {c});
  // A permutation's values can be read here only where they live in host memory; the op layer
  // checks CUDA permutations before the call (ops/flow.py).
  if (perm.device.type == DeviceType::CPU) {
    const int64_t* p = perm.data_as<const int64_t>();
    std::vector<char> seen(static_cast<size_t>(c), 0);
    for (int64_t i = 0; i < c; ++i) {
      const bool ok = p[i] >= 0 && p[i] < c && !seen[static_cast<size_t>(p[i])];
      REPLEARN_CHECK(ok, Value, check.function(), ": argument 'perm' expected a permutation of 0..", c - 1,
                     " but got ", p[i], " at position ", i, ok ? "" : " (out of range or repeated)");
      seen[static_cast<size_t>(p[i])] = 1;
    }
  }
  return dims;
}

RowDims planar_dims(Checker& check, const TensorView& z, const TensorView& u, const TensorView& w,
                    const TensorView& b) {
  check.floating("z", z);
  check.contiguous("z", z);
  REPLEARN_CHECK(z.ndim == 2, Value, check.function(), ": argument 'z' expected 2 dimensions (batch, features) but got ",
                 z.ndim, " (shape ", z.shape_string(), ")");
  const RowDims dims{z.size(0), z.size(1)};
  check_param(check, "u", u, z, {dims.features}, "z");
  check_param(check, "w", w, z, {dims.features}, "z");
  check.floating("b", b);
  check.same_dtype("b", b, "z", z);
  check.numel("b", b, 1);
  REPLEARN_CHECK(b.ndim <= 1, Value, check.function(), ": argument 'b' expected shape () or (1) but got ",
                 b.shape_string());
  return dims;
}

}  // namespace

RowDims check_affine_coupling_forward(DeviceType device, const TensorView& x, const OptView& shift,
                                      const OptView& log_scale, const OptView& mask, int scale, const TensorView& y,
                                      const TensorView& logdet, const OptView& workspace, int64_t workspace_bytes) {
  Checker check("affine_coupling_forward", device);
  const RowDims dims = coupling_dims(check, x, shift, log_scale, mask, scale);
  check_like(check, "y", y, "x", x);
  check_logdet(check, "logdet", logdet, x);
  check.workspace(workspace, workspace_bytes, "x", x);
  return dims;
}

RowDims check_affine_coupling_backward(DeviceType device, const TensorView& grad_y, const TensorView& grad_logdet,
                                       const TensorView& x, const OptView& shift, const OptView& log_scale,
                                       const OptView& mask, int scale, const OptView& grad_x,
                                       const OptView& grad_shift, const OptView& grad_log_scale) {
  Checker check("affine_coupling_backward", device);
  const RowDims dims = coupling_dims(check, x, shift, log_scale, mask, scale);
  check_like(check, "grad_y", grad_y, "x", x);
  check_logdet(check, "grad_logdet", grad_logdet, x);
  check_optional_like(check, "grad_x", grad_x, "x", x);
  REPLEARN_CHECK(!grad_shift || shift, Value, check.function(), ": argument 'grad_shift' given without 'shift'");
  REPLEARN_CHECK(!grad_log_scale || log_scale, Value, check.function(),
                 ": argument 'grad_log_scale' given without 'log_scale'");
  check_optional_like(check, "grad_shift", grad_shift, "x", x);
  check_optional_like(check, "grad_log_scale", grad_log_scale, "x", x);
  return dims;
}

ChannelDims check_actnorm_forward(DeviceType device, const TensorView& x, const TensorView& scale,
                                  const TensorView& bias, const TensorView& y, const TensorView& logdet) {
  Checker check("actnorm_forward", device);
  const ChannelDims dims = actnorm_dims(check, x, scale, bias);
  check_like(check, "y", y, "x", x);
  check_logdet(check, "logdet", logdet, x);
  return dims;
}

ChannelDims check_actnorm_backward(DeviceType device, const TensorView& grad_y, const TensorView& grad_logdet,
                                   const TensorView& x, const TensorView& scale, const TensorView& bias,
                                   const OptView& grad_x, const OptView& grad_scale, const OptView& grad_bias,
                                   const OptView& workspace, int64_t workspace_bytes) {
  Checker check("actnorm_backward", device);
  const ChannelDims dims = actnorm_dims(check, x, scale, bias);
  check_like(check, "grad_y", grad_y, "x", x);
  check_logdet(check, "grad_logdet", grad_logdet, x);
  check_optional_like(check, "grad_x", grad_x, "x", x);
  check_optional_param(check, "grad_scale", grad_scale, x, {dims.channels});
  check_optional_param(check, "grad_bias", grad_bias, x, {dims.channels});
  check.workspace(workspace, workspace_bytes, "x", x);
  return dims;
}

ChannelDims check_invconv1x1_forward(DeviceType device, const TensorView& x, const TensorView& perm,
                                     const TensorView& lower, const TensorView& upper, const TensorView& s,
                                     const TensorView& y, const TensorView& logdet, const OptView& workspace,
                                     int64_t workspace_bytes) {
  Checker check("invconv1x1_forward", device);
  const ChannelDims dims = invconv_dims(check, x, perm, lower, upper, s);
  check_like(check, "y", y, "x", x);
  check_logdet(check, "logdet", logdet, x);
  check.workspace(workspace, workspace_bytes, "x", x);
  return dims;
}

ChannelDims check_invconv1x1_backward(DeviceType device, const TensorView& grad_y, const TensorView& grad_logdet,
                                      const TensorView& x, const TensorView& out, const TensorView& perm,
                                      const TensorView& lower, const TensorView& upper, const TensorView& s,
                                      const TensorView& grad_x, const OptView& grad_lower, const OptView& grad_upper,
                                      const OptView& grad_s, const OptView& workspace, int64_t workspace_bytes) {
  Checker check("invconv1x1_backward", device);
  const ChannelDims dims = invconv_dims(check, x, perm, lower, upper, s);
  const int64_t c = dims.channels;
  check_like(check, "out", out, "x", x);
  check_like(check, "grad_y", grad_y, "x", x);
  check_logdet(check, "grad_logdet", grad_logdet, x);
  check_like(check, "grad_x", grad_x, "x", x);
  check_optional_param(check, "grad_lower", grad_lower, x, {c, c});
  check_optional_param(check, "grad_upper", grad_upper, x, {c, c});
  check_optional_param(check, "grad_s", grad_s, x, {c});
  check.workspace(workspace, workspace_bytes, "x", x);
  return dims;
}

RowDims check_planar_flow_forward(DeviceType device, const TensorView& z, const TensorView& u, const TensorView& w,
                                  const TensorView& b, const TensorView& f, const TensorView& logdet,
                                  const OptView& workspace, int64_t workspace_bytes) {
  Checker check("planar_flow_forward", device);
  const RowDims dims = planar_dims(check, z, u, w, b);
  check_like(check, "f", f, "z", z);
  check_logdet(check, "logdet", logdet, z, "z");
  check.workspace(workspace, workspace_bytes, "z", z);
  return dims;
}

RowDims check_planar_flow_backward(DeviceType device, const TensorView& grad_f, const TensorView& grad_logdet,
                                   const TensorView& z, const TensorView& out, const TensorView& u,
                                   const TensorView& w, const TensorView& b, const OptView& grad_z,
                                   const OptView& grad_u, const OptView& grad_w, const OptView& grad_b,
                                   const OptView& workspace, int64_t workspace_bytes) {
  Checker check("planar_flow_backward", device);
  const RowDims dims = planar_dims(check, z, u, w, b);
  check_like(check, "out", out, "z", z);
  check_like(check, "grad_f", grad_f, "z", z);
  check_logdet(check, "grad_logdet", grad_logdet, z, "z");
  check_optional_like(check, "grad_z", grad_z, "z", z);
  check_optional_param(check, "grad_u", grad_u, z, {dims.features}, "z");
  check_optional_param(check, "grad_w", grad_w, z, {dims.features}, "z");
  if (grad_b) {
    check.floating("grad_b", *grad_b);
    check.same_dtype("grad_b", *grad_b, "z", z);
    check.numel("grad_b", *grad_b, 1);
  }
  check.workspace(workspace, workspace_bytes, "z", z);
  return dims;
}

}  // namespace replearn::flow
