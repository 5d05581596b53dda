// Normalizing-flow family: the C++ API (plain functions over TensorViews). Each op maps x to
// (y, logdet) with logdet[b] = log|det ∂y/∂x| per sample (batch = dim 0), and runs in reverse
// (y → x, logdet = −forward logdet at x) with the same entry point.
//
//   affine_coupling  y = m·x + (1−m)·(x·σ(s) + t),  logdet = Σ (1−m)·log σ(s)
//                    RealNVP (Dinh et al. 2017); NICE without s (Dinh et al. 2015)
//                    log σ = s (exp) | tanh(s) (tanh) | logsigmoid(s + 2) (sigmoid, Glow's code)
//   actnorm          y = scale[c]·x + bias[c],  logdet = S·Σ_c log|scale_c|   (Kingma & Dhariwal 2018)
//   invconv1x1       y[:, p] = W·x[:, p],  W = P·L·(U + diag(s)),  logdet = S·Σ log|s|   (Glow, LU form)
//   planar_flow      f = z + û·tanh(wᵀz + b),  logdet = log|1 + ûᵀψ(z)|   (Rezende & Mohamed 2015)
//
// Conventions shared by every function here:
// - Callers allocate (ARCHITECTURE.md): outputs and workspaces are passed in; all tensors contiguous.
//   x, outputs, parameters and gradients share x's dtype; logdet is (batch) in x's dtype.
// - S is the product of the spatial dims of x (B, C, *spatial); 1 for x (B, C).
// - Backward takes the op's input `x` and, where the reverse direction needs it, its output `out`;
//   `reverse` names the direction the forward call ran in. Parameter gradients are reduced over the
//   batch deterministically (fixed-order partial sums, no float atomics).
// - Optional gradients are computed only when given. Workspaces are UInt8 buffers of at least
//   *_workspace_size() bytes (0: none needed).
// - Every function validates all of its arguments before it touches memory.
#pragma once

#include <cstdint>
#include <optional>

#include "core/tensor_view.h"

namespace replearn::flow {

using OptView = std::optional<TensorView>;

// The scale parameterization of affine_coupling (the `scale` argument).
enum class Scale : int { Exp = 0, Tanh = 1, Sigmoid = 2 };

struct RowDims {      // affine_coupling: x viewed as (batch, features); mask (features), shared by the batch
  int64_t batch, features;
};
struct ChannelDims {  // actnorm, invconv1x1: x viewed as (batch, channels, spatial)
  int64_t batch, channels, spatial;
};

// Validation, shared by the CPU and CUDA entry points: throws replearn::Error or returns the geometry.
RowDims check_affine_coupling_forward(DeviceType device, const TensorView& x, const OptView& shift,
                                      const OptView& log_scale, const OptView& mask, int scale, const TensorView& y,
                                      const TensorView& logdet, const OptView& workspace, int64_t workspace_bytes);
RowDims check_affine_coupling_backward(DeviceType device, const TensorView& grad_y, const TensorView& grad_logdet,
                                       const TensorView& x, const OptView& shift, const OptView& log_scale,
                                       const OptView& mask, int scale, const OptView& grad_x,
                                       const OptView& grad_shift, const OptView& grad_log_scale);
ChannelDims check_actnorm_forward(DeviceType device, const TensorView& x, const TensorView& scale,
                                  const TensorView& bias, const TensorView& y, const TensorView& logdet);
ChannelDims check_actnorm_backward(DeviceType device, const TensorView& grad_y, const TensorView& grad_logdet,
                                   const TensorView& x, const TensorView& scale, const TensorView& bias,
                                   const OptView& grad_x, const OptView& grad_scale, const OptView& grad_bias,
                                   const OptView& workspace, int64_t workspace_bytes);
ChannelDims check_invconv1x1_forward(DeviceType device, const TensorView& x, const TensorView& perm,
                                     const TensorView& lower, const TensorView& upper, const TensorView& s,
                                     const TensorView& y, const TensorView& logdet, const OptView& workspace,
                                     int64_t workspace_bytes);
ChannelDims check_invconv1x1_backward(DeviceType device, const TensorView& grad_y, const TensorView& grad_logdet,
                                      const TensorView& x, const TensorView& out, const TensorView& perm,
                                      const TensorView& lower, const TensorView& upper, const TensorView& s,
                                      const TensorView& grad_x, const OptView& grad_lower, const OptView& grad_upper,
                                      const OptView& grad_s, const OptView& workspace, int64_t workspace_bytes);
RowDims check_planar_flow_forward(DeviceType device, const TensorView& z, const TensorView& u, const TensorView& w,
                                  const TensorView& b, const TensorView& f, const TensorView& logdet,
                                  const OptView& workspace, int64_t workspace_bytes);
RowDims check_planar_flow_backward(DeviceType device, const TensorView& grad_f, const TensorView& grad_logdet,
                                   const TensorView& z, const TensorView& out, const TensorView& u,
                                   const TensorView& w, const TensorView& b, const OptView& grad_z,
                                   const OptView& grad_u, const OptView& grad_w, const OptView& grad_b,
                                   const OptView& workspace, int64_t workspace_bytes);

// The entry points. One declaration serves both devices: cpu.cpp defines the DeviceType::CPU
// specializations, cuda.cu the DeviceType::CUDA ones. `stream` is a cudaStream_t as an integer.

// x, y (B, *); shift, log_scale: like x or absent (log_scale absent: additive NICE coupling);
// mask: Bool (features) with 1 = passed through, or absent (every element transformed).
// scale: a Scale. reverse: x = m·y + (1−m)·(y − t)/σ and logdet = −Σ (1−m)·log σ.
template <DeviceType D>
int64_t affine_coupling_workspace_size(const TensorView& x);
template <DeviceType D>
void affine_coupling_forward(const TensorView& x, const OptView& shift, const OptView& log_scale, const OptView& mask,
                             bool reverse, int scale, const TensorView& y, const TensorView& logdet,
                             const OptView& workspace, std::uintptr_t stream = 0);
// x is the forward call's input (y when it ran in reverse).
template <DeviceType D>
void affine_coupling_backward(const TensorView& grad_y, const TensorView& grad_logdet, const TensorView& x,
                              const OptView& shift, const OptView& log_scale, const OptView& mask, bool reverse,
                              int scale, const OptView& grad_x, const OptView& grad_shift,
                              const OptView& grad_log_scale, std::uintptr_t stream = 0);

// x (B, C, *) or (B, C); scale, bias (C). reverse: x = (y − bias)/scale, logdet = −S·Σ log|scale|.
template <DeviceType D>
void actnorm_forward(const TensorView& x, const TensorView& scale, const TensorView& bias, bool reverse,
                     const TensorView& y, const TensorView& logdet, std::uintptr_t stream = 0);
template <DeviceType D>
int64_t actnorm_backward_workspace_size(const TensorView& x);
template <DeviceType D>
void actnorm_backward(const TensorView& grad_y, const TensorView& grad_logdet, const TensorView& x,
                      const TensorView& scale, const TensorView& bias, bool reverse, const OptView& grad_x,
                      const OptView& grad_scale, const OptView& grad_bias, const OptView& workspace,
                      std::uintptr_t stream = 0);

// x (B, C, *) or (B, C); perm Int64 (C), a permutation with (P z)[i] = z[perm[i]]; lower (C, C)
// (strictly lower part used, unit diagonal implied); upper (C, C) (strictly upper part used); s (C).
// reverse: x = W⁻¹ y by Pᵀ, forward substitution with L, back substitution with U + diag(s).
template <DeviceType D>
int64_t invconv1x1_workspace_size(const TensorView& x, bool reverse);
template <DeviceType D>
void invconv1x1_forward(const TensorView& x, const TensorView& perm, const TensorView& lower, const TensorView& upper,
                        const TensorView& s, bool reverse, const TensorView& y, const TensorView& logdet,
                        const OptView& workspace, std::uintptr_t stream = 0);
// x, out: the forward call's input and output. grad_x is required (the reverse direction's
// parameter gradients are built from it); grad_lower/grad_upper are zero outside their strict parts.
template <DeviceType D>
void invconv1x1_backward(const TensorView& grad_y, const TensorView& grad_logdet, const TensorView& x,
                         const TensorView& out, const TensorView& perm, const TensorView& lower,
                         const TensorView& upper, const TensorView& s, bool reverse, const TensorView& grad_x,
                         const OptView& grad_lower, const OptView& grad_upper, const OptView& grad_s,
                         const OptView& workspace, std::uintptr_t stream = 0);

// z, f (B, D); u, w (D); b one element. û = u + (m(wᵀu) − wᵀu)·w/‖w‖², m(a) = −1 + softplus(a)
// (Rezende & Mohamed 2015, appendix A), so wᵀû = m(wᵀu) ≥ −1 and f is invertible.
// reverse: α = wᵀz solves wᵀf = α + m·tanh(α + b) (monotone; safeguarded Newton in float64), then
// z = f − û·tanh(α + b), logdet = −log|1 + m·(1 − tanh²(α + b))|.
template <DeviceType D>
int64_t planar_flow_workspace_size(const TensorView& z, bool backward);
template <DeviceType D>
void planar_flow_forward(const TensorView& z, const TensorView& u, const TensorView& w, const TensorView& b,
                         bool reverse, const TensorView& f, const TensorView& logdet, const OptView& workspace,
                         std::uintptr_t stream = 0);
// z, out: the forward call's input and output (the reverse gradient is taken at its output, by the
// implicit function theorem).
template <DeviceType D>
void planar_flow_backward(const TensorView& grad_f, const TensorView& grad_logdet, const TensorView& z,
                          const TensorView& out, const TensorView& u, const TensorView& w, const TensorView& b,
                          bool reverse, const OptView& grad_z, const OptView& grad_u, const OptView& grad_w,
                          const OptView& grad_b, const OptView& workspace, std::uintptr_t stream = 0);

}  // namespace replearn::flow
