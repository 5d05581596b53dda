// Argument validation for the state-space family, shared by the CPU and CUDA entry points.
// Each check_* function throws replearn::Error naming the argument, or returns the geometry.
#include "core/check.h"
#include "ssm/ssm.h"

namespace replearn::ssm {

namespace {

// A floating tensor of the call's dtype (that of `ref`), on the call's device, contiguous.
void check_floating(Checker& check, const char* arg, const TensorView& t, const char* ref_arg,
                    const TensorView& ref) {
  check.floating(arg, t);
  check.same_dtype(arg, t, ref_arg, ref);
  check.contiguous(arg, t);
}

void check_like(Checker& check, const char* arg, const TensorView& t, const char* ref_arg, const TensorView& ref) {
  check_floating(check, arg, t, ref_arg, ref);
  check.same_shape(arg, t, ref_arg, ref);
}

void check_optional_like(Checker& check, const char* arg, const OptView& t, const char* ref_arg,
                         const TensorView& ref) {
  if (t) check_like(check, arg, *t, ref_arg, ref);
}

// A gradient is given exactly when its input is.
void check_grad_presence(const Checker& check, const char* grad_arg, const OptView& grad, const char* arg,
                         const OptView& input) {
  REPLEARN_CHECK(grad.has_value() == input.has_value(), Value, check.function(), ": argument '", grad_arg,
                 "' expected ", input ? "a tensor" : "None", " because '", arg, "' is ",
                 input ? "given" : "None", " but got ", grad ? "a tensor" : "None");
}

// (batch, dim, L) sequences: u and delta.
ScanDims scan_dims(DeviceType device, Checker& check, const TensorView& u, const TensorView& delta,
                   const TensorView& A, const TensorView& B, const TensorView& C, const OptView& D,
                   const OptView& z, const OptView& delta_bias) {
  check.floating("u", u);
  check.contiguous("u", u);
  REPLEARN_CHECK(u.ndim == 3, Value, check.function(), ": argument 'u' expected shape (batch, dim, L) but got ",
                 u.shape_string());
  check_like(check, "delta", delta, "u", u);
  ScanDims d{u.size(0), u.size(1), u.size(2), 0, 1, false, false};
  check_floating(check, "A", A, "u", u);
  REPLEARN_CHECK(A.ndim == 2 && A.size(0) == d.dim, Value, check.function(), ": argument 'A' expected shape (",
                 d.dim, ", N) but got ", A.shape_string());
  d.states = A.size(1);
  check.value(d.states >= 1, "A", "at least one state (N >= 1)", A.shape_string());
  if (device == DeviceType::CUDA)
    check.value(d.states <= kCudaMaxStates, "A", "at most 64 states per channel on CUDA (N <= 64)",
                A.shape_string());
  int64_t groups = 0;
  auto input_matrix = [&](const char* arg, const TensorView& M) {
    check_floating(check, arg, M, "u", u);
    if (M.ndim == 2) {
      check.shape(arg, M, {d.dim, d.states});
      return false;
    }
    REPLEARN_CHECK(M.ndim == 4 && M.size(0) == d.batch && M.size(2) == d.states && M.size(3) == d.length, Value,
                   check.function(), ": argument '", arg, "' expected shape (", d.dim, ", ", d.states,
                   ") (time-invariant) or (", d.batch, ", groups, ", d.states, ", ", d.length,
                   ") (selective) but got ", M.shape_string());
    const int64_t g = M.size(1);
    REPLEARN_CHECK(g >= 1 && d.dim % g == 0, Value, check.function(), ": argument '", arg,
                   "' expected a group count dividing dim = ", d.dim, " but got ", g, " (shape ",
                   M.shape_string(), ")");
    REPLEARN_CHECK(groups == 0 || groups == g, Value, check.function(), ": argument '", arg, "' expected ", groups,
                   " groups like 'B' but got ", g);
    groups = g;
    return true;
  };
  d.selective_B = input_matrix("B", B);
  d.selective_C = input_matrix("C", C);
  d.groups = groups ? groups : 1;
  if (D) {
    check_floating(check, "D", *D, "u", u);
    check.shape("D", *D, {d.dim});
  }
  check_optional_like(check, "z", z, "u", u);
  if (delta_bias) {
    check_floating(check, "delta_bias", *delta_bias, "u", u);
    check.shape("delta_bias", *delta_bias, {d.dim});
  }
  return d;
}

void check_checkpoints(Checker& check, const TensorView& checkpoints, const ScanDims& d, DType dtype) {
  check.buffer("checkpoints", checkpoints, stats_dtype(dtype), d.batch * d.dim * scan_chunks(d.length) * d.states);
}

ConvDims conv_dims(Checker& check, const TensorView& x, const TensorView& weight, const OptView& bias,
                   const OptView& initial_state) {
  check.floating("x", x);
  check.contiguous("x", x);
  REPLEARN_CHECK(x.ndim == 3, Value, check.function(), ": argument 'x' expected shape (batch, dim, L) but got ",
                 x.shape_string());
  ConvDims d{x.size(0), x.size(1), x.size(2), 0};
  check_floating(check, "weight", weight, "x", x);
  REPLEARN_CHECK(weight.ndim == 2 && weight.size(0) == d.dim && weight.size(1) >= 2 && weight.size(1) <= 4, Value,
                 check.function(), ": argument 'weight' expected shape (", d.dim,
                 ", width) with width 2, 3 or 4 but got ", weight.shape_string());
  d.width = weight.size(1);
  if (bias) {
    check_floating(check, "bias", *bias, "x", x);
    check.shape("bias", *bias, {d.dim});
  }
  if (initial_state) {
    check_floating(check, "initial_state", *initial_state, "x", x);
    check.shape("initial_state", *initial_state, {d.batch, d.dim, d.width - 1});
  }
  return d;
}

VandermondeDims s4d_dims(Checker& check, const TensorView& log_dt, const TensorView& A_real,
                         const TensorView& A_imag, const TensorView& C_real, const TensorView& C_imag) {
  check.floating("log_dt", log_dt);
  check.contiguous("log_dt", log_dt);
  REPLEARN_CHECK(log_dt.ndim == 1, Value, check.function(), ": argument 'log_dt' expected shape (H) but got ",
                 log_dt.shape_string());
  check_floating(check, "A_real", A_real, "log_dt", log_dt);
  REPLEARN_CHECK(A_real.ndim == 2 && A_real.size(0) == log_dt.size(0), Value, check.function(),
                 ": argument 'A_real' expected shape (", log_dt.size(0), ", N) but got ", A_real.shape_string());
  check_like(check, "A_imag", A_imag, "A_real", A_real);
  check_like(check, "C_real", C_real, "A_real", A_real);
  check_like(check, "C_imag", C_imag, "A_real", A_real);
  return {A_real.size(0), A_real.size(1), 0};
}

CauchyDims cauchy_dims(Checker& check, const TensorView& v_real, const TensorView& v_imag, const TensorView& z_real,
                       const TensorView& z_imag, const TensorView& w_real, const TensorView& w_imag) {
  check.floating("v_real", v_real);
  check.contiguous("v_real", v_real);
  REPLEARN_CHECK(v_real.ndim == 2, Value, check.function(), ": argument 'v_real' expected shape (H, N) but got ",
                 v_real.shape_string());
  check_like(check, "v_imag", v_imag, "v_real", v_real);
  check_like(check, "w_real", w_real, "v_real", v_real);
  check_like(check, "w_imag", w_imag, "v_real", v_real);
  check_floating(check, "z_real", z_real, "v_real", v_real);
  REPLEARN_CHECK(z_real.ndim == 1, Value, check.function(), ": argument 'z_real' expected shape (L) but got ",
                 z_real.shape_string());
  check_like(check, "z_imag", z_imag, "z_real", z_real);
  return {v_real.size(0), v_real.size(1), z_real.size(0)};
}

}  // namespace

CauchyDims check_cauchy_forward(DeviceType device, const TensorView& v_real, const TensorView& v_imag,
                                const TensorView& z_real, const TensorView& z_imag, const TensorView& w_real,
                                const TensorView& w_imag, const TensorView& out_real, const TensorView& out_imag) {
  Checker check("cauchy_forward", device);
  const CauchyDims d = cauchy_dims(check, v_real, v_imag, z_real, z_imag, w_real, w_imag);
  check_floating(check, "out_real", out_real, "v_real", v_real);
  check.shape("out_real", out_real, {d.rows, d.nodes});
  check_like(check, "out_imag", out_imag, "out_real", out_real);
  return d;
}

CauchyDims check_cauchy_backward(DeviceType device, const TensorView& grad_real, const TensorView& grad_imag,
                                 const TensorView& v_real, const TensorView& v_imag, const TensorView& z_real,
                                 const TensorView& z_imag, const TensorView& w_real, const TensorView& w_imag,
                                 const TensorView& dv_real, const TensorView& dv_imag, const TensorView& dw_real,
                                 const TensorView& dw_imag) {
  Checker check("cauchy_backward", device);
  const CauchyDims d = cauchy_dims(check, v_real, v_imag, z_real, z_imag, w_real, w_imag);
  check_floating(check, "grad_real", grad_real, "v_real", v_real);
  check.shape("grad_real", grad_real, {d.rows, d.nodes});
  check_like(check, "grad_imag", grad_imag, "grad_real", grad_real);
  check_like(check, "grad_v_real", dv_real, "v_real", v_real);
  check_like(check, "grad_v_imag", dv_imag, "v_real", v_real);
  check_like(check, "grad_w_real", dw_real, "v_real", v_real);
  check_like(check, "grad_w_imag", dw_imag, "v_real", v_real);
  return d;
}

ScanDims check_selective_scan_forward(DeviceType device, const TensorView& u, const TensorView& delta,
                                      const TensorView& A, const TensorView& B, const TensorView& C,
                                      const OptView& D, const OptView& z, const OptView& delta_bias,
                                      const TensorView& out, const OptView& checkpoints) {
  Checker check("selective_scan_forward", device);
  ScanDims d = scan_dims(device, check, u, delta, A, B, C, D, z, delta_bias);
  check_like(check, "out", out, "u", u);
  if (checkpoints) check_checkpoints(check, *checkpoints, d, u.dtype);
  return d;
}

ScanDims check_selective_scan_backward(DeviceType device, const TensorView& grad_out, const TensorView& u,
                                       const TensorView& delta, const TensorView& A, const TensorView& B,
                                       const TensorView& C, const OptView& D, const OptView& z,
                                       const OptView& delta_bias, const TensorView& checkpoints,
                                       const OptView& grad_last_state, const TensorView& du, const TensorView& ddelta, const TensorView& dA,
                                       const TensorView& dB, const TensorView& dC, const OptView& dD,
                                       const OptView& dz, const OptView& ddelta_bias, const OptView& workspace,
                                       int64_t workspace_bytes) {
  Checker check("selective_scan_backward", device);
  ScanDims d = scan_dims(device, check, u, delta, A, B, C, D, z, delta_bias);
  check_like(check, "grad_out", grad_out, "u", u);
  check_checkpoints(check, checkpoints, d, u.dtype);
  if (grad_last_state)
    check.buffer("grad_last_state", *grad_last_state, stats_dtype(u.dtype), d.batch * d.dim * d.states);
  check_like(check, "grad_u", du, "u", u);
  check_like(check, "grad_delta", ddelta, "u", u);
  check_like(check, "grad_A", dA, "A", A);
  check_like(check, "grad_B", dB, "B", B);
  check_like(check, "grad_C", dC, "C", C);
  check_grad_presence(check, "grad_D", dD, "D", D);
  check_grad_presence(check, "grad_z", dz, "z", z);
  check_grad_presence(check, "grad_delta_bias", ddelta_bias, "delta_bias", delta_bias);
  if (dD) check_like(check, "grad_D", *dD, "D", *D);
  if (dz) check_like(check, "grad_z", *dz, "z", *z);
  if (ddelta_bias) check_like(check, "grad_delta_bias", *ddelta_bias, "delta_bias", *delta_bias);
  check.workspace(workspace, workspace_bytes, "u", u);
  return d;
}

ConvDims check_causal_conv1d_forward(DeviceType device, const TensorView& x, const TensorView& weight,
                                     const OptView& bias, const OptView& initial_state, const TensorView& y,
                                     const OptView& final_state) {
  Checker check("causal_conv1d_forward", device);
  ConvDims d = conv_dims(check, x, weight, bias, initial_state);
  check_like(check, "y", y, "x", x);
  if (final_state) {
    check_floating(check, "final_state", *final_state, "x", x);
    check.shape("final_state", *final_state, {d.batch, d.dim, d.width - 1});
  }
  return d;
}

ConvDims check_causal_conv1d_backward(DeviceType device, const TensorView& grad_y, const TensorView& x,
                                      const TensorView& weight, const OptView& bias, const OptView& initial_state,
                                      const OptView& grad_final_state, const TensorView& dx, const TensorView& dweight, const OptView& dbias,
                                      const OptView& dinitial_state, const OptView& workspace,
                                      int64_t workspace_bytes) {
  Checker check("causal_conv1d_backward", device);
  ConvDims d = conv_dims(check, x, weight, bias, initial_state);
  check_like(check, "grad_y", grad_y, "x", x);
  if (grad_final_state) {
    check_floating(check, "grad_final_state", *grad_final_state, "x", x);
    check.shape("grad_final_state", *grad_final_state, {d.batch, d.dim, d.width - 1});
  }
  check_like(check, "grad_x", dx, "x", x);
  check_like(check, "grad_weight", dweight, "weight", weight);
  check_grad_presence(check, "grad_bias", dbias, "bias", bias);
  check_grad_presence(check, "grad_initial_state", dinitial_state, "initial_state", initial_state);
  if (dbias) check_like(check, "grad_bias", *dbias, "bias", *bias);
  if (dinitial_state) check_like(check, "grad_initial_state", *dinitial_state, "initial_state", *initial_state);
  check.workspace(workspace, workspace_bytes, "x", x);
  return d;
}

VandermondeDims check_s4d_kernel_forward(DeviceType device, const TensorView& log_dt, const TensorView& A_real,
                                         const TensorView& A_imag, const TensorView& C_real,
                                         const TensorView& C_imag, const TensorView& K) {
  Checker check("s4d_kernel_forward", device);
  VandermondeDims d = s4d_dims(check, log_dt, A_real, A_imag, C_real, C_imag);
  check_floating(check, "K", K, "log_dt", log_dt);
  REPLEARN_CHECK(K.ndim == 2 && K.size(0) == d.channels, Value, check.function(), ": argument 'K' expected shape (",
                 d.channels, ", L) but got ", K.shape_string());
  d.length = K.size(1);
  return d;
}

VandermondeDims check_s4d_kernel_backward(DeviceType device, const TensorView& grad_K, const TensorView& log_dt,
                                          const TensorView& A_real, const TensorView& A_imag,
                                          const TensorView& C_real, const TensorView& C_imag,
                                          const TensorView& dlog_dt, const TensorView& dA_real,
                                          const TensorView& dA_imag, const TensorView& dC_real,
                                          const TensorView& dC_imag) {
  Checker check("s4d_kernel_backward", device);
  VandermondeDims d = s4d_dims(check, log_dt, A_real, A_imag, C_real, C_imag);
  check_floating(check, "grad_K", grad_K, "log_dt", log_dt);
  REPLEARN_CHECK(grad_K.ndim == 2 && grad_K.size(0) == d.channels, Value, check.function(),
                 ": argument 'grad_K' expected shape (", d.channels, ", L) but got ", grad_K.shape_string());
  d.length = grad_K.size(1);
  check_like(check, "grad_log_dt", dlog_dt, "log_dt", log_dt);
  check_like(check, "grad_A_real", dA_real, "A_real", A_real);
  check_like(check, "grad_A_imag", dA_imag, "A_real", A_real);
  check_like(check, "grad_C_real", dC_real, "A_real", A_real);
  check_like(check, "grad_C_imag", dC_imag, "A_real", A_real);
  return d;
}

}  // namespace replearn::ssm
