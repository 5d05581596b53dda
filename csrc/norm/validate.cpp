// Argument validation for the normalization family, shared by the CPU and CUDA entry points.
// Each check_* function throws replearn::Error naming the argument, or returns the geometry.
#include "core/check.h"
#include "norm/norm.h"

namespace replearn::norm {

namespace {

// The optional affine parameters and gradients of a family: same dtype and device as x, the given
// element count, contiguous.
void check_param(Checker& check, const char* arg, const OptView& p, const TensorView& x, int64_t count) {
  if (!p) return;
  check.floating(arg, *p);
  check.same_dtype(arg, *p, "x", x);
  check.numel(arg, *p, count);
  check.contiguous(arg, *p);
}

void check_like(Checker& check, const char* arg, const TensorView& t, const TensorView& x) {
  check.floating(arg, t);
  check.same_dtype(arg, t, "x", x);
  check.same_shape(arg, t, "x", x);
  check.contiguous(arg, t);
}

void check_optional_like(Checker& check, const char* arg, const OptView& t, const TensorView& x) {
  if (t) check_like(check, arg, *t, x);
}

// An optional statistics output: stats_dtype(x), `count` elements, contiguous, on x's device.
void check_stats(Checker& check, const char* arg, const OptView& stats, const TensorView& x, int64_t count) {
  if (stats) check.buffer(arg, *stats, stats_dtype(x.dtype), count);
}

void check_eps(const Checker& check, double eps) { check.value(eps >= 0, "eps", "a non-negative number", eps); }

RowDims row_dims(Checker& check, const TensorView& x, int normalized_ndim) {
  check.floating("x", x);
  check.contiguous("x", x);
  REPLEARN_CHECK(normalized_ndim >= 1 && normalized_ndim <= x.ndim, Value, check.function(),
                 ": argument 'normalized_shape' expected between 1 and ", x.ndim,
                 " trailing dimensions of x (shape ", x.shape_string(), ") but got ", normalized_ndim);
  return {x.numel_between(0, x.ndim - normalized_ndim), x.numel_between(x.ndim - normalized_ndim, x.ndim)};
}

// Affine parameters of a row norm must have the shape of x's normalized (trailing) dims.
void check_row_param(Checker& check, const char* arg, const OptView& p, const TensorView& x, int normalized_ndim) {
  if (!p) return;
  check.floating(arg, *p);
  check.same_dtype(arg, *p, "x", x);
  check.contiguous(arg, *p);
  bool ok = p->ndim == normalized_ndim;
  for (int d = 0; ok && d < normalized_ndim; ++d) ok = p->sizes[d] == x.sizes[x.ndim - normalized_ndim + d];
  std::string expected = "(";
  for (int d = 0; d < normalized_ndim; ++d)
    expected += (d ? ", " : "") + std::to_string(x.sizes[x.ndim - normalized_ndim + d]);
  REPLEARN_CHECK(ok, Value, check.function(), ": argument '", arg, "' expected shape ", expected + ")",
                 " (the normalized shape) but got ", p->shape_string());
}

ChannelDims channel_dims(Checker& check, const TensorView& x) {
  check.floating("x", x);
  check.contiguous("x", x);
  check.min_dim("x", x, 2);
  return {x.size(0), x.size(1), x.numel_between(2, x.ndim)};
}

}  // namespace


RowDims check_layer_norm_forward(DeviceType device, const TensorView& x, int normalized_ndim, const OptView& weight,
                                 const OptView& bias, double eps, const TensorView& y, const OptView& mean,
                                 const OptView& rstd) {
  Checker check("layer_norm_forward", device);
  RowDims dims = row_dims(check, x, normalized_ndim);
  check_row_param(check, "weight", weight, x, normalized_ndim);
  check_row_param(check, "bias", bias, x, normalized_ndim);
  check_eps(check, eps);
  check_like(check, "y", y, x);
  check_stats(check, "mean", mean, x, dims.rows);
  check_stats(check, "rstd", rstd, x, dims.rows);
  return dims;
}

RowDims check_layer_norm_backward(DeviceType device, const TensorView& dy, const TensorView& x, int normalized_ndim,
                                  const TensorView& mean, const TensorView& rstd, const OptView& weight,
                                  const OptView& dx, const OptView& dweight, const OptView& dbias,
                                  const OptView& workspace, int64_t workspace_bytes) {
  Checker check("layer_norm_backward", device);
  RowDims dims = row_dims(check, x, normalized_ndim);
  check_like(check, "grad_y", dy, x);
  check.buffer("mean", mean, stats_dtype(x.dtype), dims.rows);
  check.buffer("rstd", rstd, stats_dtype(x.dtype), dims.rows);
  check_row_param(check, "weight", weight, x, normalized_ndim);
  check_optional_like(check, "grad_x", dx, x);
  check_param(check, "grad_weight", dweight, x, dims.cols);
  check_param(check, "grad_bias", dbias, x, dims.cols);
  check.workspace(workspace, workspace_bytes, "x", x);
  return dims;
}

RowDims check_rms_norm_forward(DeviceType device, const TensorView& x, int normalized_ndim, const OptView& weight,
                               double eps, const TensorView& y, const OptView& rstd) {
  Checker check("rms_norm_forward", device);
  RowDims dims = row_dims(check, x, normalized_ndim);
  check_row_param(check, "weight", weight, x, normalized_ndim);
  check_eps(check, eps);
  check_like(check, "y", y, x);
  check_stats(check, "rstd", rstd, x, dims.rows);
  return dims;
}

RowDims check_rms_norm_backward(DeviceType device, const TensorView& dy, const TensorView& x, int normalized_ndim,
                                const TensorView& rstd, const OptView& weight, const OptView& dx,
                                const OptView& dweight, const OptView& workspace, int64_t workspace_bytes) {
  Checker check("rms_norm_backward", device);
  RowDims dims = row_dims(check, x, normalized_ndim);
  check_like(check, "grad_y", dy, x);
  check.buffer("rstd", rstd, stats_dtype(x.dtype), dims.rows);
  check_row_param(check, "weight", weight, x, normalized_ndim);
  check_optional_like(check, "grad_x", dx, x);
  check_param(check, "grad_weight", dweight, x, dims.cols);
  check.workspace(workspace, workspace_bytes, "x", x);
  return dims;
}

ChannelDims check_batch_norm_forward(DeviceType device, const TensorView& x, const OptView& weight,
                                     const OptView& bias, const OptView& running_mean, const OptView& running_var,
                                     bool training, double momentum, double eps, const TensorView& y,
                                     const OptView& save_mean, const OptView& save_rstd) {
  Checker check("batch_norm_forward", device);
  ChannelDims dims = channel_dims(check, x);
  check_param(check, "weight", weight, x, dims.channels);
  check_param(check, "bias", bias, x, dims.channels);
  check_param(check, "running_mean", running_mean, x, dims.channels);
  check_param(check, "running_var", running_var, x, dims.channels);
  REPLEARN_CHECK(running_mean.has_value() == running_var.has_value(), Value,
                 "batch_norm_forward: arguments 'running_mean' and 'running_var' expected both or neither but got ",
                 running_mean ? "only running_mean" : "only running_var");
  REPLEARN_CHECK(training || running_mean.has_value(), Value,
                 "batch_norm_forward: argument 'running_mean' expected a tensor in evaluation mode "
                 "(training=False) but got none");
  const int64_t per_channel = dims.batch * dims.spatial;
  REPLEARN_CHECK(!training || per_channel > 1, Value, "batch_norm_forward: argument 'x' expected more than 1 value "
                 "per channel when training but got shape ", x.shape_string());
  if (training && running_mean)  // only then is it used (torch checks it never)
    check.value(momentum >= 0 && momentum <= 1, "momentum", "a number in [0, 1]", momentum);
  check_eps(check, eps);
  check_like(check, "y", y, x);
  REPLEARN_CHECK(save_mean.has_value() == save_rstd.has_value(), Value,
                 "batch_norm_forward: arguments 'save_mean' and 'save_rstd' expected both or neither");
  REPLEARN_CHECK(save_mean || device == DeviceType::CPU, Value,
                 "batch_norm_forward: argument 'stats' expected a (2, C) tensor on CUDA (its kernels pass the "
                 "statistics between launches) but got none");
  check_stats(check, "save_mean", save_mean, x, dims.channels);
  check_stats(check, "save_rstd", save_rstd, x, dims.channels);
  return dims;
}

ChannelDims check_batch_norm_backward(DeviceType device, const TensorView& dy, const TensorView& x,
                                      const TensorView& save_mean, const TensorView& save_rstd,
                                      const OptView& weight, const OptView& dx, const OptView& dweight,
                                      const OptView& dbias) {
  Checker check("batch_norm_backward", device);
  ChannelDims dims = channel_dims(check, x);
  check_like(check, "grad_y", dy, x);
  check.buffer("save_mean", save_mean, stats_dtype(x.dtype), dims.channels);
  check.buffer("save_rstd", save_rstd, stats_dtype(x.dtype), dims.channels);
  check_param(check, "weight", weight, x, dims.channels);
  check_optional_like(check, "grad_x", dx, x);
  check_param(check, "grad_weight", dweight, x, dims.channels);
  check_param(check, "grad_bias", dbias, x, dims.channels);
  return dims;
}

ChannelDims check_group_norm_forward(DeviceType device, const TensorView& x, int64_t groups, const OptView& weight,
                                     const OptView& bias, double eps, const TensorView& y, const OptView& mean,
                                     const OptView& rstd) {
  Checker check("group_norm_forward", device);
  ChannelDims dims = channel_dims(check, x);
  REPLEARN_CHECK(groups >= 1 && dims.channels % groups == 0, Value,
                 "group_norm_forward: argument 'num_groups' expected a positive divisor of the ", dims.channels,
                 " channels of x but got ", groups);
  // torch's rule (F.group_norm): N·(C/G)·∏spatial must exceed 1, or every group holds one value.
  REPLEARN_CHECK(x.numel() == 0 || dims.batch * (dims.channels / groups) * dims.spatial > 1, Value,
                 "group_norm_forward: argument 'x' expected more than 1 value per group but got shape ",
                 x.shape_string(), " with num_groups=", groups);
  check_param(check, "weight", weight, x, dims.channels);
  check_param(check, "bias", bias, x, dims.channels);
  check_eps(check, eps);
  check_like(check, "y", y, x);
  check_stats(check, "mean", mean, x, dims.batch * groups);
  check_stats(check, "rstd", rstd, x, dims.batch * groups);
  return dims;
}

ChannelDims check_group_norm_backward(DeviceType device, const TensorView& dy, const TensorView& x, int64_t groups,
                                      const TensorView& mean, const TensorView& rstd, const OptView& weight,
                                      const OptView& dx, const OptView& dweight, const OptView& dbias,
                                      const OptView& workspace, int64_t workspace_bytes) {
  Checker check("group_norm_backward", device);
  ChannelDims dims = channel_dims(check, x);
  REPLEARN_CHECK(groups >= 1 && dims.channels % groups == 0, Value,
                 "group_norm_backward: argument 'num_groups' expected a positive divisor of the ", dims.channels,
                 " channels of x but got ", groups);
  check_like(check, "grad_y", dy, x);
  check.buffer("mean", mean, stats_dtype(x.dtype), dims.batch * groups);
  check.buffer("rstd", rstd, stats_dtype(x.dtype), dims.batch * groups);
  check_param(check, "weight", weight, x, dims.channels);
  check_optional_like(check, "grad_x", dx, x);
  check_param(check, "grad_weight", dweight, x, dims.channels);
  check_param(check, "grad_bias", dbias, x, dims.channels);
  check.workspace(workspace, workspace_bytes, "x", x);
  return dims;
}

ChannelDims check_running_stats_update(DeviceType device, const TensorView& mean, const TensorView& rstd,
                                       int64_t batch, int64_t channels, int64_t spatial, double momentum, double eps,
                                       const TensorView& running_mean, const TensorView& running_var) {
  Checker check("running_stats_update", device);
  check.floating("running_mean", running_mean);
  check.contiguous("running_mean", running_mean);
  check.numel("running_mean", running_mean, channels);
  check.floating("running_var", running_var);
  check.same_dtype("running_var", running_var, "running_mean", running_mean);
  check.contiguous("running_var", running_var);
  check.numel("running_var", running_var, channels);
  check.value(batch >= 1 && channels >= 1, "batch, channels", "positive sizes", batch * channels);
  check.value(spatial >= 2, "spatial", "at least 2 values per channel", spatial);
  check.buffer("mean", mean, stats_dtype(running_mean.dtype), batch * channels);
  check.buffer("rstd", rstd, stats_dtype(running_mean.dtype), batch * channels);
  check.value(momentum >= 0 && momentum <= 1, "momentum", "a number in [0, 1]", momentum);
  check_eps(check, eps);
  return {batch, channels, spatial};
}

namespace {
SliceDims slice_dims(Checker& check, const TensorView& v, const TensorView& g, int dim) {
  check.floating("v", v);
  check.contiguous("v", v);
  check.floating("g", g);
  check.same_dtype("g", g, "v", v);
  check.contiguous("g", g);
  REPLEARN_CHECK(dim == -1 || (dim >= 0 && dim < v.ndim), Value, check.function(),
                 ": argument 'dim' expected -1 (the whole tensor) or a dimension in [0, ", v.ndim, ") but got ", dim);
  SliceDims dims = dim == -1 ? SliceDims{1, 1, v.numel()}
                             : SliceDims{v.numel_between(0, dim), v.sizes[dim], v.numel_between(dim + 1, v.ndim)};
  check.numel("g", g, dims.slices);
  return dims;
}
}  // namespace

SliceDims check_weight_norm_forward(DeviceType device, const TensorView& v, const TensorView& g, int dim,
                                    const TensorView& w, const OptView& norm) {
  Checker check("weight_norm_forward", device);
  SliceDims dims = slice_dims(check, v, g, dim);
  check.floating("w", w);
  check.same_dtype("w", w, "v", v);
  check.same_shape("w", w, "v", v);
  check.contiguous("w", w);
  if (norm) check.buffer("norm", *norm, stats_dtype(v.dtype), dims.slices);
  return dims;
}

SliceDims check_weight_norm_backward(DeviceType device, const TensorView& dw, const TensorView& v,
                                     const TensorView& g, const TensorView& norm, int dim, const OptView& dv,
                                     const OptView& dg) {
  Checker check("weight_norm_backward", device);
  SliceDims dims = slice_dims(check, v, g, dim);
  check.floating("grad_w", dw);
  check.same_dtype("grad_w", dw, "v", v);
  check.same_shape("grad_w", dw, "v", v);
  check.contiguous("grad_w", dw);
  check.buffer("norm", norm, stats_dtype(v.dtype), dims.slices);
  if (dv) {
    check.floating("grad_v", *dv);
    check.same_dtype("grad_v", *dv, "v", v);
    check.same_shape("grad_v", *dv, "v", v);
    check.contiguous("grad_v", *dv);
  }
  if (dg) {
    check.floating("grad_g", *dg);
    check.same_dtype("grad_g", *dg, "g", g);
    check.numel("grad_g", *dg, dims.slices);
    check.contiguous("grad_g", *dg);
  }
  return dims;
}

namespace {
// weight viewed as (size(0), the rest); vectors of the weight's dtype with `count` elements.
MatrixDims matrix_dims(Checker& check, const TensorView& weight) {
  check.floating("weight", weight);
  check.contiguous("weight", weight);
  check.min_dim("weight", weight, 1);
  return {weight.size(0), weight.numel_between(1, weight.ndim)};
}

void check_vector(Checker& check, const char* arg, const TensorView& t, const TensorView& weight, int64_t count) {
  check.floating(arg, t);
  check.same_dtype(arg, t, "weight", weight);
  check.numel(arg, t, count);
  check.contiguous(arg, t);
}

void check_coeff(const Checker& check, std::optional<double> coeff) {
  if (coeff) check.value(*coeff > 0, "coeff", "a positive number or None", *coeff);
}
}  // namespace

MatrixDims check_spectral_norm_forward(DeviceType device, const TensorView& weight, const TensorView& u,
                                      const OptView& v, int n_power_iterations, double eps,
                                      std::optional<double> coeff, const TensorView& w, const TensorView& u_out,
                                      const TensorView& v_out, const TensorView& sigma, const OptView& workspace,
                                      int64_t workspace_bytes) {
  Checker check("spectral_norm_forward", device);
  const MatrixDims dims = matrix_dims(check, weight);
  check.value(dims.rows >= 1 && dims.cols >= 1, "weight", "at least one element", weight.shape_string());
  check_vector(check, "u", u, weight, dims.rows);
  check.value(n_power_iterations >= 0, "n_power_iterations", "a non-negative number", n_power_iterations);
  REPLEARN_CHECK(v || n_power_iterations > 0, Value, check.function(),
                 ": argument 'v' expected a tensor when n_power_iterations is 0 (no power iteration computes it)"
                 " but got None");
  if (v) check_vector(check, "v", *v, weight, dims.cols);
  check_eps(check, eps);
  check_coeff(check, coeff);
  check.floating("w", w);
  check.same_dtype("w", w, "weight", weight);
  check.same_shape("w", w, "weight", weight);
  check.contiguous("w", w);
  check_vector(check, "u_out", u_out, weight, dims.rows);
  check_vector(check, "v_out", v_out, weight, dims.cols);
  check.buffer("sigma", sigma, stats_dtype(weight.dtype), 1);
  check.workspace(workspace, workspace_bytes, "weight", weight);
  return dims;
}

MatrixDims check_spectral_norm_backward(DeviceType device, const TensorView& grad_w, const OptView& grad_sigma,
                                       const TensorView& weight, const TensorView& u, const TensorView& v,
                                       const TensorView& sigma, std::optional<double> coeff,
                                       const TensorView& grad_weight, const OptView& workspace,
                                       int64_t workspace_bytes) {
  Checker check("spectral_norm_backward", device);
  const MatrixDims dims = matrix_dims(check, weight);
  check.floating("grad_w", grad_w);
  check.same_dtype("grad_w", grad_w, "weight", weight);
  check.same_shape("grad_w", grad_w, "weight", weight);
  check.contiguous("grad_w", grad_w);
  if (grad_sigma) check.buffer("grad_sigma", *grad_sigma, stats_dtype(weight.dtype), 1);
  check_vector(check, "u", u, weight, dims.rows);
  check_vector(check, "v", v, weight, dims.cols);
  check.buffer("sigma", sigma, stats_dtype(weight.dtype), 1);
  check_coeff(check, coeff);
  check.floating("grad_weight", grad_weight);
  check.same_dtype("grad_weight", grad_weight, "weight", weight);
  check.same_shape("grad_weight", grad_weight, "weight", weight);
  check.contiguous("grad_weight", grad_weight);
  check.workspace(workspace, workspace_bytes, "weight", weight);
  return dims;
}

}  // namespace replearn::norm
