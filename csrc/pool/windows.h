// Pooling windows along one spatial axis: which inputs an output reads, and which outputs read an input.
//
// Shared by validation, the CPU kernels and the CUDA kernels (host and device), so that the three can
// never disagree on a window. Every pooling op is separable into two such axes (H and W; a 1-D op is a
// 2-D op whose H axis is the identity), and a 2-D window is the product of its two axis windows.
//
// Strided windows (max and average pooling), output o of an axis with input size `in`:
//   taps   i = o·stride − pad + j·dilation, j = 0 … kernel − 1, those with 0 ≤ i < in
//   size   out = ⌊(in + 2·pad − dilation·(kernel − 1) − 1 + (ceil_mode ? stride − 1 : 0)) / stride⌋ + 1,
//          minus one when ceil_mode made the last window start at or past in + pad (torch's rule: the
//          last window must start inside the input or the left padding).
// Average pooling's divisor with count_include_pad counts the window clipped to the padded input
// [−pad, in + pad), so a ceil_mode window hanging past the right padding is not charged for it.
// Adaptive windows (Lin et al. 2014's network-in-network global pooling, generalized as in torch):
//   [⌊o·in/out⌋, ⌈(o + 1)·in/out⌉)
// and the outputs whose window holds input i are o ∈ [⌊i·out/in⌋, ⌈(i + 1)·out/in⌉).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define REPLEARN_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define REPLEARN_HOST_DEVICE inline
#endif

namespace replearn::pool {

// ⌊a/b⌋ and ⌈a/b⌉ for b > 0 and any sign of a (C++ division truncates toward zero).
REPLEARN_HOST_DEVICE int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
REPLEARN_HOST_DEVICE int64_t ceil_div(int64_t a, int64_t b) { return a >= 0 ? (a + b - 1) / b : -((-a) / b); }
REPLEARN_HOST_DEVICE int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
REPLEARN_HOST_DEVICE int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

// [begin, end) visited with `step`; for average windows `padded` is the divisor's count.
struct Span {
  int64_t begin, end, step, padded;
};

// Default-constructed: the identity axis of a 1-D op seen as 2-D (in = out = kernel = 1).
struct Axis {
  int64_t in = 1, out = 1;
  int64_t kernel = 1, stride = 1, pad = 0, dilation = 1;
  bool adaptive = false;

  // Inputs read by output o: the taps inside [0, in), in increasing order.
  REPLEARN_HOST_DEVICE Span window(int64_t o) const {
    if (adaptive) {
      const int64_t b = floor_div(o * in, out), e = ceil_div((o + 1) * in, out);
      return {b, e, 1, e - b};
    }
    const int64_t first = o * stride - pad;                              // tap j = 0, maybe in the padding
    const int64_t last = first + (kernel - 1) * dilation;                // tap j = kernel − 1
    const int64_t begin = first >= 0 ? first : first + ceil_div(-first, dilation) * dilation;
    const int64_t padded = min64(last + 1, in + pad) - first;            // dilation is 1 for average pooling
    return {begin, min64(last + 1, in), dilation, padded};
  }

  // Outputs whose window holds input i (not every one of them has i as a tap when dilation > 1).
  REPLEARN_HOST_DEVICE Span readers(int64_t i) const {
    if (adaptive) return {floor_div(i * out, in), min64(out, ceil_div((i + 1) * out, in)), 1, 0};
    const int64_t extent = (kernel - 1) * dilation + 1;
    return {max64(0, ceil_div(i + pad - extent + 1, stride)), min64(out, floor_div(i + pad, stride) + 1), 1, 0};
  }
};

// torch's pooling_output_shape; 0 or less means the geometry leaves no output (validation rejects it).
REPLEARN_HOST_DEVICE int64_t pooled_size(int64_t in, int64_t kernel, int64_t stride, int64_t pad, int64_t dilation,
                                         bool ceil_mode) {
  const int64_t span = in + 2 * pad - dilation * (kernel - 1) - 1 + (ceil_mode ? stride - 1 : 0);
  int64_t out = floor_div(span, stride) + 1;
  if (ceil_mode && (out - 1) * stride >= in + pad) --out;
  return out;
}

// The two axes of a pooling op over x viewed as (planes, H, W).
struct Geometry {
  int64_t planes = 0;
  Axis h, w;
  REPLEARN_HOST_DEVICE int64_t in_plane() const { return h.in * w.in; }
  REPLEARN_HOST_DEVICE int64_t out_plane() const { return h.out * w.out; }
};

}  // namespace replearn::pool
