// Normalization family: the C++ API (plain functions over TensorViews).
//
//   layer_norm   y = (x − μ) / √(σ² + ε) · γ + β, statistics over the last k dims   (Ba et al. 2016)
//   rms_norm     y = x / √(mean(x²) + ε) · γ, statistics over the last k dims      (Zhang & Sennrich 2019)
//   batch_norm   statistics per channel over (N, *) of x (N, C, *), running averages (Ioffe & Szegedy 2015)
//   group_norm   statistics per (sample, group of C/G channels) over (C/G, *)      (Wu & He 2018)
//   instance_norm is group_norm with G = C (Ulyanov et al. 2016) plus running averages
//   weight_norm  w = g · v / ‖v‖, ‖·‖ over every dim but `dim`                    (Salimans & Kingma 2016)
//   spectral_norm w = W / σ(W), σ by power iteration; with coeff, W / max(1, σ/coeff)   (Miyato et al. 2018;
//                Behrmann et al. 2019)
//
// Conventions shared by every function here:
// - Callers allocate (ARCHITECTURE.md): outputs and workspaces are passed in. Tensors are
//   contiguous; x, y, dy, dx, weight, bias (and running stats) share one dtype; per-row statistics
//   (mean, rstd, norm) are float64 for float64 inputs and float32 otherwise (stats_dtype()).
// - `rstd` is 1/√(σ² + ε): forward saves it so backward never recomputes a square root.
// - Optional gradients (dx, dweight, dbias) are computed only when given. So are the statistics
//   a forward saves for backward (mean, rstd): inference needs only y.
// - Workspaces are UInt8 buffers of at least *_workspace_size() bytes; size 0 means none is needed.
// - Every function validates all of its arguments before it touches memory and throws
//   replearn::Error naming the argument otherwise.
#pragma once

#include <cstdint>
#include <optional>

#include "core/host_device.h"
#include "core/tensor_view.h"

namespace replearn::norm {

// max(v, 0) that keeps NaN. A variance computed as E[x²] − E[x]² (or 1/rstd² − ε) can round below
// zero and is clamped; a NaN (from a NaN or ±inf input) must reach the outputs and the running
// statistics, as torch's do (std::max(0.0, NaN) and fmax(0, NaN) would return 0).
template <class S>
REPLEARN_HD S clamp_nonnegative(S v) {
  return v < S(0) ? S(0) : v;
}

// The shift K of shifted sums Σ(x − K), Σ(x − K)² (one value of the data, so that |mean| ≫ std loses
// nothing): 0 when that value is ±inf or NaN, which would turn an inf elsewhere into inf − inf = NaN
// and lose torch's inf mean. (v − v is 0 exactly for finite v.)
template <class S>
REPLEARN_HD S finite_shift(S v) {
  return v - v == S(0) ? v : S(0);
}

using OptView = std::optional<TensorView>;

// Geometry the kernels work on, derived from the argument shapes by validation (validate.cpp).
struct RowDims {      // layer_norm, rms_norm: x viewed as (rows, cols)
  int64_t rows, cols;
};
struct ChannelDims {  // batch_norm, group_norm: x viewed as (batch, channels, spatial)
  int64_t batch, channels, spatial;
};
struct SliceDims {    // weight_norm: v viewed as (outer, slices, inner); ‖·‖ per slice
  int64_t outer, slices, inner;
};
struct MatrixDims {   // spectral_norm: weight viewed as the matrix (rows = size(0), cols = the rest)
  int64_t rows, cols;
};

// Validation, shared by the CPU and CUDA entry points: throws replearn::Error or returns the geometry.
RowDims check_layer_norm_forward(DeviceType device, const TensorView& x, int normalized_ndim, const OptView& weight,
                                 const OptView& bias, double eps, const TensorView& y, const OptView& mean,
                                 const OptView& rstd);
RowDims check_layer_norm_backward(DeviceType device, const TensorView& dy, const TensorView& x, int normalized_ndim,
                                  const TensorView& mean, const TensorView& rstd, const OptView& weight,
                                  const OptView& dx, const OptView& dweight, const OptView& dbias,
                                  const OptView& workspace, int64_t workspace_bytes);
RowDims check_rms_norm_forward(DeviceType device, const TensorView& x, int normalized_ndim, const OptView& weight,
                               double eps, const TensorView& y, const OptView& rstd);
RowDims check_rms_norm_backward(DeviceType device, const TensorView& dy, const TensorView& x, int normalized_ndim,
                                const TensorView& rstd, const OptView& weight, const OptView& dx,
                                const OptView& dweight, const OptView& workspace, int64_t workspace_bytes);
ChannelDims check_batch_norm_forward(DeviceType device, const TensorView& x, const OptView& weight,
                                     const OptView& bias, const OptView& running_mean, const OptView& running_var,
                                     bool training, double momentum, double eps, const TensorView& y,
                                     const OptView& save_mean, const OptView& save_rstd);
ChannelDims check_batch_norm_backward(DeviceType device, const TensorView& dy, const TensorView& x,
                                      const TensorView& save_mean, const TensorView& save_rstd,
                                      const OptView& weight, const OptView& dx, const OptView& dweight,
                                      const OptView& dbias);
ChannelDims check_group_norm_forward(DeviceType device, const TensorView& x, int64_t groups, const OptView& weight,
                                     const OptView& bias, double eps, const TensorView& y, const OptView& mean,
                                     const OptView& rstd);
ChannelDims check_group_norm_backward(DeviceType device, const TensorView& dy, const TensorView& x, int64_t groups,
                                      const TensorView& mean, const TensorView& rstd, const OptView& weight,
                                      const OptView& dx, const OptView& dweight, const OptView& dbias,
                                      const OptView& workspace, int64_t workspace_bytes);
ChannelDims check_running_stats_update(DeviceType device, const TensorView& mean, const TensorView& rstd,
                                       int64_t batch, int64_t channels, int64_t spatial, double momentum, double eps,
                                       const TensorView& running_mean, const TensorView& running_var);
SliceDims check_weight_norm_forward(DeviceType device, const TensorView& v, const TensorView& g, int dim,
                                    const TensorView& w, const OptView& norm);
SliceDims check_weight_norm_backward(DeviceType device, const TensorView& dw, const TensorView& v,
                                     const TensorView& g, const TensorView& norm, int dim, const OptView& dv,
                                     const OptView& dg);
MatrixDims check_spectral_norm_forward(DeviceType device, const TensorView& weight, const TensorView& u,
                                      const OptView& v, int n_power_iterations, double eps,
                                      std::optional<double> coeff, const TensorView& w, const TensorView& u_out,
                                      const TensorView& v_out, const TensorView& sigma, const OptView& workspace,
                                      int64_t workspace_bytes);
MatrixDims check_spectral_norm_backward(DeviceType device, const TensorView& grad_w, const OptView& grad_sigma,
                                       const TensorView& weight, const TensorView& u, const TensorView& v,
                                       const TensorView& sigma, std::optional<double> coeff,
                                       const TensorView& grad_weight, const OptView& workspace,
                                       int64_t workspace_bytes);

// The entry points. One declaration serves both devices: cpu.cpp defines the DeviceType::CPU
// specializations, cuda.cu the DeviceType::CUDA ones, so bindings and tests are written once.
// `stream` is a cudaStream_t passed as an integer (0: the default stream); the CPU ignores it.

// y = layer_norm(x) over the last normalized_ndim dims; mean, rstd: (rows), optional
template <DeviceType D>
void layer_norm_forward(const TensorView& x, int normalized_ndim, const OptView& weight, const OptView& bias,
                        double eps, const TensorView& y, const OptView& mean, const OptView& rstd,
                        std::uintptr_t stream = 0);
template <DeviceType D>
int64_t layer_norm_backward_workspace_size(const TensorView& x, int normalized_ndim);
template <DeviceType D>
void layer_norm_backward(const TensorView& dy, const TensorView& x, int normalized_ndim, const TensorView& mean,
                         const TensorView& rstd, const OptView& weight, const OptView& dx, const OptView& dweight,
                         const OptView& dbias, const OptView& workspace, std::uintptr_t stream = 0);

// y = rms_norm(x) over the last normalized_ndim dims; rstd: (rows), optional
template <DeviceType D>
void rms_norm_forward(const TensorView& x, int normalized_ndim, const OptView& weight, double eps,
                      const TensorView& y, const OptView& rstd, std::uintptr_t stream = 0);
template <DeviceType D>
int64_t rms_norm_backward_workspace_size(const TensorView& x, int normalized_ndim);
template <DeviceType D>
void rms_norm_backward(const TensorView& dy, const TensorView& x, int normalized_ndim, const TensorView& rstd,
                       const OptView& weight, const OptView& dx, const OptView& dweight, const OptView& workspace,
                       std::uintptr_t stream = 0);

// x (N, C, *). training: batch statistics into save_mean/save_rstd (C) and, when given, running
// averages updated in place: r = (1 − momentum)·r + momentum·s, with the unbiased variance.
// Evaluation: normalizes with the running averages, which are then required, and saves them.
// save_mean/save_rstd are what backward reads: optional on the CPU (a call that records no graph
// needs none; the kernel keeps each channel block's statistics itself), required on CUDA, whose
// kernels pass them from the statistics launch to the normalization launch.
template <DeviceType D>
void batch_norm_forward(const TensorView& x, const OptView& weight, const OptView& bias,
                        const OptView& running_mean, const OptView& running_var, bool training, double momentum,
                        double eps, const TensorView& y, const OptView& save_mean, const OptView& save_rstd,
                        std::uintptr_t stream = 0);
// training=false treats the saved statistics as constants (evaluation mode).
template <DeviceType D>
void batch_norm_backward(const TensorView& dy, const TensorView& x, const TensorView& save_mean,
                         const TensorView& save_rstd, const OptView& weight, bool training, const OptView& dx,
                         const OptView& dweight, const OptView& dbias, std::uintptr_t stream = 0);

// x (N, C, *), C divisible by groups; mean, rstd: (N·groups), optional; weight, bias: (C)
template <DeviceType D>
void group_norm_forward(const TensorView& x, int64_t groups, const OptView& weight, const OptView& bias, double eps,
                        const TensorView& y, const OptView& mean, const OptView& rstd,
                        std::uintptr_t stream = 0);
template <DeviceType D>
int64_t group_norm_backward_workspace_size(const TensorView& x, int64_t groups);
template <DeviceType D>
void group_norm_backward(const TensorView& dy, const TensorView& x, int64_t groups, const TensorView& mean,
                         const TensorView& rstd, const OptView& weight, const OptView& dx, const OptView& dweight,
                         const OptView& dbias, const OptView& workspace, std::uintptr_t stream = 0);

// instance_norm's running averages from per-(sample, channel) statistics mean, rstd: (N·C):
// r_mean = (1 − m)·r_mean + m·avg_n(mean), r_var = (1 − m)·r_var + m·avg_n(var·S/(S − 1)), with
// var = 1/rstd² − eps recovered in float64.
template <DeviceType D>
void running_stats_update(const TensorView& mean, const TensorView& rstd, int64_t batch, int64_t channels,
                          int64_t spatial, double momentum, double eps, const TensorView& running_mean,
                          const TensorView& running_var, std::uintptr_t stream = 0);

// w = g · v / ‖v‖ with ‖·‖ over every dim but `dim` (dim = -1: over all of v, g has one element);
// g has v.size(dim) elements; norm (optional: what backward reads) has as many, dtype stats_dtype(v).
template <DeviceType D>
void weight_norm_forward(const TensorView& v, const TensorView& g, int dim, const TensorView& w,
                         const OptView& norm, std::uintptr_t stream = 0);
template <DeviceType D>
void weight_norm_backward(const TensorView& dw, const TensorView& v, const TensorView& g, const TensorView& norm,
                          int dim, const OptView& dv, const OptView& dg, std::uintptr_t stream = 0);

// Spectral normalization (Miyato et al. 2018), as torch.nn.utils.spectral_norm computes it, of weight
// viewed as W (rows = size(0), cols = the rest). n_power_iterations ≥ 0 steps of
//   v = normalize(Wᵀu), u = normalize(W v),   normalize(x) = x / max(‖x‖, eps),
// starting from u (as given, not renormalized); with 0 steps u and v are used as given (v required).
// σ = uᵀ W v; w = W / σ, or with coeff (i-ResNet, Behrmann et al. 2019) w = W / max(1, σ/coeff).
// u_out (rows), v_out (cols): the vectors σ was computed with, dtype of weight; sigma: one element of
// stats_dtype(weight). u and v are constants for autograd, so backward gives the gradient to W only:
//   dW = (c/σ)·g − (c·⟨g, W⟩/σ²)·u vᵀ + g_σ·u vᵀ   (c = coeff, or 1 without it)
//   dW = g + g_σ·u vᵀ                               (coeff given and σ ≤ coeff)
// where g_σ (grad_sigma, optional) is the gradient reaching σ itself.
template <DeviceType D>
int64_t spectral_norm_forward_workspace_size(const TensorView& weight);
template <DeviceType D>
void spectral_norm_forward(const TensorView& weight, const TensorView& u, const OptView& v, int n_power_iterations,
                           double eps, std::optional<double> coeff, const TensorView& w, const TensorView& u_out,
                           const TensorView& v_out, const TensorView& sigma, const OptView& workspace,
                           std::uintptr_t stream = 0);
template <DeviceType D>
int64_t spectral_norm_backward_workspace_size(const TensorView& weight);
template <DeviceType D>
void spectral_norm_backward(const TensorView& grad_w, const OptView& grad_sigma, const TensorView& weight,
                            const TensorView& u, const TensorView& v, const TensorView& sigma,
                            std::optional<double> coeff, const TensorView& grad_weight, const OptView& workspace,
                            std::uintptr_t stream = 0);

}  // namespace replearn::norm
