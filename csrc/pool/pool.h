// Pooling family: the C++ API (plain functions over TensorViews).
//
//   max_pool             y = max over the window's taps, with the flat index h·W + w of the max in its
//                        input plane (torch's format); NaN is the max of any window holding one
//   avg_pool             y = Σ window / divisor, divisor = divisor_override, or the window counted in
//                        the padded input (count_include_pad), or its taps inside the input
//   adaptive_avg_pool    y = mean over the window [⌊o·in/out⌋, ⌈(o+1)·in/out⌉) per axis; out = 1 is
//                        global average pooling (Lin et al. 2014)
// The windows and output sizes are those of csrc/pool/windows.h. The pooling layers of LeNet
// (LeCun et al. 1998) and AlexNet's overlapping max pooling (Krizhevsky et al. 2012) are instances.
//
// Conventions shared by every function here:
// - x is (N, C, *spatial) or (C, *spatial), contiguous; spatial has `kernel_size.size()` dims
//   (1 or 2; `spatial_ndim` for the adaptive ops). Every leading dim counts as a plane: the kernels
//   see x as (planes, H, W), with H = 1 in 1-D. y has x's leading dims and the pooled spatial sizes.
// - kernel_size, stride, padding, dilation hold one value per spatial dim. Validation follows torch:
//   each positive (padding ≥ 0), padding at most half the kernel, non-batch dims of x non-empty, and
//   an output of at least one element per spatial dim.
// - indices are int64, shaped like y. Backward kernels take the input's shape from grad_x.
// - Backward is deterministic on both devices: no float atomics. Each input gradient is a sum
//   gathered over the outputs that read it, in a fixed order.
// - Callers allocate outputs (ARCHITECTURE.md); nothing here needs a workspace.
// - Every function validates all of its arguments before it touches memory and throws
//   replearn::Error naming the argument otherwise.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "core/tensor_view.h"
#include "pool/windows.h"

namespace replearn::pool {

using OptView = std::optional<TensorView>;
using Ints = std::vector<int64_t>;

// Validation, shared by the CPU and CUDA entry points: throws replearn::Error or returns the geometry.
Geometry check_max_pool_forward(DeviceType device, const TensorView& x, const Ints& kernel_size, const Ints& stride,
                                const Ints& padding, const Ints& dilation, bool ceil_mode, const TensorView& y,
                                const OptView& indices);
Geometry check_max_pool_backward(DeviceType device, const TensorView& dy, const TensorView& indices,
                                 const Ints& kernel_size, const Ints& stride, const Ints& padding,
                                 const Ints& dilation, bool ceil_mode, const TensorView& dx);
Geometry check_avg_pool_forward(DeviceType device, const TensorView& x, const Ints& kernel_size, const Ints& stride,
                                const Ints& padding, bool ceil_mode, int64_t divisor_override, const TensorView& y);
Geometry check_avg_pool_backward(DeviceType device, const TensorView& dy, const Ints& kernel_size, const Ints& stride,
                                 const Ints& padding, bool ceil_mode, int64_t divisor_override, const TensorView& dx);
Geometry check_adaptive_avg_pool_forward(DeviceType device, const TensorView& x, int spatial_ndim,
                                         const TensorView& y);
Geometry check_adaptive_avg_pool_backward(DeviceType device, const TensorView& dy, int spatial_ndim,
                                          const TensorView& dx);

// The entry points. One declaration serves both devices: cpu.cpp defines the DeviceType::CPU
// specializations, cuda.cu the DeviceType::CUDA ones. `stream` is a cudaStream_t passed as an integer
// (0: the default stream); the CPU ignores it.

// y = max pooling of x; indices (int64, y's shape) optional: inference needs only y.
template <DeviceType D>
void max_pool_forward(const TensorView& x, const Ints& kernel_size, const Ints& stride, const Ints& padding,
                      const Ints& dilation, bool ceil_mode, const TensorView& y, const OptView& indices,
                      std::uintptr_t stream = 0);
// grad_x[i] = Σ grad_y[o] over the outputs o whose max was input i (indices[o] == i).
template <DeviceType D>
void max_pool_backward(const TensorView& dy, const TensorView& indices, const Ints& kernel_size, const Ints& stride,
                       const Ints& padding, const Ints& dilation, bool ceil_mode, const TensorView& dx,
                       std::uintptr_t stream = 0);

// divisor_override 0: none (torch's None).
template <DeviceType D>
void avg_pool_forward(const TensorView& x, const Ints& kernel_size, const Ints& stride, const Ints& padding,
                      bool ceil_mode, bool count_include_pad, int64_t divisor_override, const TensorView& y,
                      std::uintptr_t stream = 0);
// grad_x[i] = Σ grad_y[o] / divisor(o) over the outputs o whose window holds i.
template <DeviceType D>
void avg_pool_backward(const TensorView& dy, const Ints& kernel_size, const Ints& stride, const Ints& padding,
                       bool ceil_mode, bool count_include_pad, int64_t divisor_override, const TensorView& dx,
                       std::uintptr_t stream = 0);

// The output size is y's trailing spatial_ndim sizes (each ≥ 1).
template <DeviceType D>
void adaptive_avg_pool_forward(const TensorView& x, int spatial_ndim, const TensorView& y, std::uintptr_t stream = 0);
template <DeviceType D>
void adaptive_avg_pool_backward(const TensorView& dy, int spatial_ndim, const TensorView& dx,
                                std::uintptr_t stream = 0);

}  // namespace replearn::pool
