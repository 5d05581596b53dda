// Normalization family: the C++ API (plain functions over TensorViews).
//
//   layer_norm   y = (x − μ) / √(σ² + ε) · γ + β, statistics over the last k dims   (Ba et al. 2016)
//   rms_norm     y = x / √(mean(x²) + ε) · γ, statistics over the last k dims      (Zhang & Sennrich 2019)
//   batch_norm   statistics per channel over (N, *) of x (N, C, *), running averages (Ioffe & Szegedy 2015)
//   group_norm   statistics per (sample, group of C/G channels) over (C/G, *)      (Wu & He 2018)
//   instance_norm is group_norm with G = C (Ulyanov et al. 2016) plus running averages
//   weight_norm  w = g · v / ‖v‖, ‖·‖ over every dim but `dim`                    (Salimans & Kingma 2016)
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

#include "core/tensor_view.h"

namespace replearn::norm {

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
                                     const TensorView& save_mean, const TensorView& save_rstd);
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
                                    const TensorView& w, const TensorView& norm);
SliceDims check_weight_norm_backward(DeviceType device, const TensorView& dw, const TensorView& v,
                                     const TensorView& g, const TensorView& norm, int dim, const OptView& dv,
                                     const OptView& dg);

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
template <DeviceType D>
void batch_norm_forward(const TensorView& x, const OptView& weight, const OptView& bias,
                        const OptView& running_mean, const OptView& running_var, bool training, double momentum,
                        double eps, const TensorView& y, const TensorView& save_mean, const TensorView& save_rstd,
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
// g has v.size(dim) elements; norm has as many, dtype stats_dtype(v).
template <DeviceType D>
void weight_norm_forward(const TensorView& v, const TensorView& g, int dim, const TensorView& w,
                         const TensorView& norm, std::uintptr_t stream = 0);
template <DeviceType D>
void weight_norm_backward(const TensorView& dw, const TensorView& v, const TensorView& g, const TensorView& norm,
                          int dim, const OptView& dv, const OptView& dg, std::uintptr_t stream = 0);

}  // namespace replearn::norm
