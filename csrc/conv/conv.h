// Convolution family: the C++ API (plain functions over TensorViews).
//
//   conv            y[n, g·Co+o, p] = b[g·Co+o] + Σ_{c<Ci, k} w[g·Co+o, c, k] · x[n, g·Ci+c, p·S − P + k·D]
//                   over 1-D (N, C, L) or 2-D (N, C, H, W) inputs, with stride S, padding P (zeros
//                   outside x), dilation D and G groups of Ci = C_in/G input and Co = C_out/G output
//                   channels. Out of range positions of x read as zero. (LeCun et al. 1989; dilation:
//                   Yu & Koltun 2016; groups: Krizhevsky et al. 2012; depthwise G = C_in: Chollet 2017)
//   conv_transpose  the adjoint of conv with respect to x (Dumoulin & Visin 2016, "A guide to
//                   convolution arithmetic"): y = convᵀ(x) + b, weight (C_in, C_out/G, k...).
//
// Padding is given per side: `padding_begin` before the first element and `padding_end` after the
// last of each spatial dim, so one entry point serves symmetric padding, torch's "same" for even
// kernels (one more at the end) and causal convolution (D·(K−1) at the beginning only; van den Oord
// et al. 2016, WaveNet). The output size per spatial dim is
//     O = ⌊(I + P_begin + P_end − D·(K − 1) − 1) / S⌋ + 1,
// and must be at least 1. For conv_transpose, the output size y.size(d) = (I − 1)·S − 2P + D·(K − 1)
// + 1 + output_padding with 0 ≤ output_padding < max(S, D), as in torch.
//
// Conventions:
// - Callers allocate (ARCHITECTURE.md): outputs and workspaces are passed in; every tensor is
//   contiguous (N, C, *spatial) with one dtype; stride/padding/dilation have one entry per spatial dim.
// - Optional gradients (grad_x, grad_weight, grad_bias) are computed only when given.
// - Workspaces are UInt8 buffers of at least *_workspace_size() bytes; 0 means none is needed.
// - Every function validates all of its arguments before it touches memory.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "core/tensor_view.h"

namespace replearn::conv {

using OptView = std::optional<TensorView>;
using Ints = std::vector<int64_t>;

// One convolution as the kernels see it: always 2-D (1-D has height 1 and a 1-row kernel), in the
// direction x (N, G·Ci, H, W) → y (N, G·Co, Ho, Wo). conv_transpose runs it backwards: its input is
// this geometry's y and its output this geometry's x.
struct Geometry {
  int64_t batch, groups, in_per_group, out_per_group;  // N, G, Ci, Co
  int64_t in_h, in_w, out_h, out_w, kernel_h, kernel_w;
  int64_t stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;  // pad: at the beginning

  int64_t in_plane() const { return in_h * in_w; }
  int64_t out_plane() const { return out_h * out_w; }
  int64_t kernel_size() const { return kernel_h * kernel_w; }
  int64_t in_channels() const { return groups * in_per_group; }
  int64_t out_channels() const { return groups * out_per_group; }
  // Rows of the im2col matrix of one group: Ci·kH·kW.
  int64_t col_rows() const { return in_per_group * kernel_size(); }
  // One input channel per group (depthwise, with any channel multiplier Co).
  bool depthwise() const { return in_per_group == 1 && groups > 1; }
  // y = W·x per pixel: im2col would copy x unchanged.
  bool pointwise() const {
    return kernel_size() == 1 && stride_h == 1 && stride_w == 1 && pad_h == 0 && pad_w == 0 && in_h == out_h &&
           in_w == out_w;
  }
};

// Validation, shared by the CPU and CUDA entry points: throws replearn::Error or returns the geometry.
Geometry check_conv_forward(DeviceType device, const TensorView& x, const TensorView& weight, const OptView& bias,
                            const Ints& stride, const Ints& padding_begin, const Ints& padding_end,
                            const Ints& dilation, int64_t groups, const TensorView& y);
Geometry check_conv_backward(DeviceType device, const TensorView& dy, const TensorView& x, const TensorView& weight,
                             const Ints& stride, const Ints& padding_begin, const Ints& padding_end,
                             const Ints& dilation, int64_t groups, const OptView& dx, const OptView& dweight,
                             const OptView& dbias);
Geometry check_conv_transpose_forward(DeviceType device, const TensorView& x, const TensorView& weight,
                                      const OptView& bias, const Ints& stride, const Ints& padding,
                                      const Ints& dilation, int64_t groups, const TensorView& y);
Geometry check_conv_transpose_backward(DeviceType device, const TensorView& dy, const TensorView& x,
                                       const TensorView& weight, const Ints& stride, const Ints& padding,
                                       const Ints& dilation, int64_t groups, const OptView& dx,
                                       const OptView& dweight, const OptView& dbias);
// Workspace validation (after the geometry): a UInt8 buffer of at least `bytes` on x's device.
void check_workspace(const char* function, const OptView& workspace, int64_t bytes, const TensorView& x);

// The entry points: cpu.cpp defines the DeviceType::CPU specializations, cuda.cu the CUDA ones.
// `stream` is a cudaStream_t passed as an integer (0: the default stream); the CPU ignores it.
// The *_workspace_size functions take the arguments of their entry point up to the outputs and
// return 0 for arguments that validation will reject.

// y (N, C_out, *O) = conv(x (N, C_in, *I), weight (C_out, C_in/G, *K)) + bias (C_out)
template <DeviceType D>
int64_t conv_forward_workspace_size(const TensorView& x, const TensorView& weight, const Ints& stride,
                                    const Ints& padding_begin, const Ints& padding_end, const Ints& dilation,
                                    int64_t groups, const TensorView& y);
template <DeviceType D>
void conv_forward(const TensorView& x, const TensorView& weight, const OptView& bias, const Ints& stride,
                  const Ints& padding_begin, const Ints& padding_end, const Ints& dilation, int64_t groups,
                  const TensorView& y, const OptView& workspace, std::uintptr_t stream = 0);

// dx = ∂L/∂x (x's shape), dweight, dbias from dy = ∂L/∂y
template <DeviceType D>
int64_t conv_backward_workspace_size(const TensorView& dy, const TensorView& x, const TensorView& weight,
                                     const Ints& stride, const Ints& padding_begin, const Ints& padding_end,
                                     const Ints& dilation, int64_t groups);
template <DeviceType D>
void conv_backward(const TensorView& dy, const TensorView& x, const TensorView& weight, const Ints& stride,
                   const Ints& padding_begin, const Ints& padding_end, const Ints& dilation, int64_t groups,
                   const OptView& dx, const OptView& dweight, const OptView& dbias, const OptView& workspace,
                   std::uintptr_t stream = 0);

// y (N, C_out, *O) = conv_transpose(x (N, C_in, *I), weight (C_in, C_out/G, *K)) + bias (C_out);
// y's size fixes output_padding.
template <DeviceType D>
int64_t conv_transpose_forward_workspace_size(const TensorView& x, const TensorView& weight, const Ints& stride,
                                              const Ints& padding, const Ints& dilation, int64_t groups,
                                              const TensorView& y);
template <DeviceType D>
void conv_transpose_forward(const TensorView& x, const TensorView& weight, const OptView& bias, const Ints& stride,
                            const Ints& padding, const Ints& dilation, int64_t groups, const TensorView& y,
                            const OptView& workspace, std::uintptr_t stream = 0);
template <DeviceType D>
int64_t conv_transpose_backward_workspace_size(const TensorView& dy, const TensorView& x, const TensorView& weight,
                                               const Ints& stride, const Ints& padding, const Ints& dilation,
                                               int64_t groups);
template <DeviceType D>
void conv_transpose_backward(const TensorView& dy, const TensorView& x, const TensorView& weight,
                             const Ints& stride, const Ints& padding, const Ints& dilation, int64_t groups,
                             const OptView& dx, const OptView& dweight, const OptView& dbias,
                             const OptView& workspace, std::uintptr_t stream = 0);

}  // namespace replearn::conv
