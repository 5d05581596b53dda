// Convolution family, CUDA kernels (float32, float16, bfloat16; arithmetic in float32).
//
//   forward          y[n, o, oh, ow] = b[o] + Σ_{c, kh, kw} w[o, c, kh, kw] · x[n, g·Ci + c, oh·S − P + kh·D, ...]
//   backward input   dx[n, g·Ci + c, ih, iw] = Σ_{j, kh, kw} w[g·Co + j, c, kh, kw] · dy[n, g·Co + j, oh, ow]
//                    over the (oh, ow) with oh·S − P + kh·D = ih (and the same in w)
//   backward weight  dw[o, c, kh, kw] = Σ_{n, oh, ow} dy[n, o, oh, ow] · x[n, g·Ci + c, ih, iw]
//   bias             db[o] = Σ_{n, p} dy[n, o, p]
// conv_transpose runs the same kernels in the other direction (Dumoulin & Visin 2016), as cpu.cpp:
// its forward is the backward-input kernel (with its bias fused), its input gradient the forward
// kernel, its weight gradient the weight kernel with x and dy exchanged.
//
// Why it is written this way. The forward of dense convolutions is a tiled implicit GEMM (below);
// the rest are direct kernels: one thread per output element for the two data directions (a
// gather, so no atomics and no zero-fill pass: backward input inverts the index map,
// oh = (ih + P − kh·D)/S when divisible), and one block per weight element for the weight
// gradient, reduced with block_sum (deterministic, no float atomics), and one block per channel for
// the bias. Correct for every geometry and dtype, with float32 accumulation, but not tuned: no tensor
// cores, and the backward passes are direct (TODO: implicit-GEMM backward and CuTe/tensor-core tiles
// for dense layers; measure on a GPU).
#include <algorithm>
#include <climits>
#include <cstdint>

#include "conv/conv.h"
#include "core/check.h"
#include "core/cuda_utils.cuh"

namespace replearn::conv {

namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxGridX = INT_MAX;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
unsigned grid_for(int64_t blocks) { return static_cast<unsigned>(std::clamp<int64_t>(blocks, 1, kMaxGridX)); }

template <class T>
T* ptr_or_null(const OptView& v) {
  return v ? v->data_as<T>() : nullptr;
}

// ------------------------------------------------------------------------------------ kernels

// y (N, G·Co, Ho, Wo) = conv(x (N, G·Ci, H, W)) + b; one thread per output element.
template <class T>
__global__ void forward_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b,
                               Geometry g, T* __restrict__ y) {
  const int64_t cout = g.groups * g.out_per_group;
  const int64_t total = g.batch * cout * g.out_h * g.out_w;
  const int64_t K = g.kernel_h * g.kernel_w;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t ow = i % g.out_w;
    int64_t t = i / g.out_w;
    const int64_t oh = t % g.out_h;
    t /= g.out_h;
    const int64_t co = t % cout, n = t / cout;
    const int64_t grp = co / g.out_per_group;
    const T* xg = x + (n * g.groups + grp) * g.in_per_group * g.in_h * g.in_w;  // (Ci, H, W)
    const T* wo = w + co * g.in_per_group * K;                                  // (Ci, kH, kW)
    float acc = b ? to_float(b[co]) : 0.f;
    for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
      const int64_t ih = oh * g.stride_h - g.pad_h + kh * g.dilation_h;
      if (ih < 0 || ih >= g.in_h) continue;
      for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
        const int64_t iw = ow * g.stride_w - g.pad_w + kw * g.dilation_w;
        if (iw < 0 || iw >= g.in_w) continue;
        const T* xp = xg + ih * g.in_w + iw;
        const T* wp = wo + kh * g.kernel_w + kw;
        for (int64_t c = 0; c < g.in_per_group; ++c)
          acc += to_float(wp[c * K]) * to_float(xp[c * g.in_h * g.in_w]);
      }
    }
    y[i] = from_float<T>(acc);
  }
}

// The same forward as a tiled implicit GEMM, for dense convolutions: per (sample, group), the
// product y_g (Co, P) = W_g (Co, Ci·K) · col (Ci·K, P) with col never stored — each block gathers its
// (kTileK × kTileN) slice of col from x into shared memory (zeros for padding), beside the
// (kTileK × kTileM) slice of W_g, and each of its 256 threads accumulates a 4 × 4 tile of y in
// float32 registers. Grid: one block per (sample·group, output-channel tile, output-position tile),
// flattened into grid.x and grid-strided.
constexpr int kTileM = 64, kTileN = 64, kTileK = 16, kTiledThreads = 256;

template <class T>
__global__ void __launch_bounds__(kTiledThreads) forward_tiled_kernel(const T* __restrict__ x,
                                                                      const T* __restrict__ w,
                                                                      const T* __restrict__ b, Geometry g,
                                                                      T* __restrict__ y) {
  __shared__ float w_tile[kTileK][kTileM + 1];  // +1: threads storing along m hit different banks
  __shared__ float col_tile[kTileK][kTileN];
  const int64_t K = g.kernel_h * g.kernel_w, R = g.in_per_group * K, P = g.out_h * g.out_w;
  const int64_t Co = g.out_per_group, cout = g.groups * Co;
  const int64_t m_tiles = (Co + kTileM - 1) / kTileM, p_tiles = (P + kTileN - 1) / kTileN;
  const int64_t tiles = g.batch * g.groups * m_tiles * p_tiles;
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  for (int64_t block = blockIdx.x; block < tiles; block += gridDim.x) {  // grid-stride over tiles
    const int64_t ng = block / (m_tiles * p_tiles), n = ng / g.groups, grp = ng % g.groups;
    const int64_t m0 = (block / p_tiles) % m_tiles * kTileM, p0 = block % p_tiles * kTileN;
    const T* xg = x + ng * g.in_per_group * g.in_h * g.in_w;  // (Ci, H, W)
    const T* wg = w + grp * Co * R;                           // (Co, Ci·K)
    float acc[4][4] = {};
    for (int64_t k0 = 0; k0 < R; k0 += kTileK) {
      for (int e = tid; e < kTileK * kTileM; e += kTiledThreads) {  // W_g slice: runs of kTileK along r
        const int kk = e % kTileK, mm = e / kTileK;
        const int64_t m = m0 + mm, r = k0 + kk;
        w_tile[kk][mm] = (m < Co && r < R) ? to_float(wg[m * R + r]) : 0.f;
      }
      for (int e = tid; e < kTileK * kTileN; e += kTiledThreads) {  // col slice, gathered from x
        const int nn = e % kTileN, kk = e / kTileN;
        const int64_t p = p0 + nn, r = k0 + kk;
        float v = 0.f;
        if (p < P && r < R) {
          const int64_t c = r / K, kh = (r % K) / g.kernel_w, kw = r % g.kernel_w;
          const int64_t ih = (p / g.out_w) * g.stride_h - g.pad_h + kh * g.dilation_h;
          const int64_t iw = (p % g.out_w) * g.stride_w - g.pad_w + kw * g.dilation_w;
          if (ih >= 0 && ih < g.in_h && iw >= 0 && iw < g.in_w) v = to_float(xg[(c * g.in_h + ih) * g.in_w + iw]);
        }
        col_tile[kk][nn] = v;
      }
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < kTileK; ++kk) {
        float a[4], c[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) a[i] = w_tile[kk][ty * 4 + i];
#pragma unroll
        for (int j = 0; j < 4; ++j) c[j] = col_tile[kk][tx * 4 + j];
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * c[j];
      }
      __syncthreads();
    }
    for (int i = 0; i < 4; ++i) {
      const int64_t m = m0 + ty * 4 + i;
      if (m >= Co) continue;
      const int64_t o = grp * Co + m;
      const float bias = b ? to_float(b[o]) : 0.f;
      for (int j = 0; j < 4; ++j) {
        const int64_t p = p0 + tx * 4 + j;
        if (p < P) y[(n * cout + o) * P + p] = from_float<T>(acc[i][j] + bias);
      }
    }
  }
}

// dx (N, G·Ci, H, W) = convᵀ(dy) (+ b per input channel: conv_transpose's bias); one thread per
// element of dx, gathering the outputs whose window covers it.
template <class T>
__global__ void backward_input_kernel(const T* __restrict__ dy, const T* __restrict__ w, const T* __restrict__ b,
                                      Geometry g, T* __restrict__ dx) {
  const int64_t cin = g.groups * g.in_per_group, cout = g.groups * g.out_per_group;
  const int64_t total = g.batch * cin * g.in_h * g.in_w;
  const int64_t K = g.kernel_h * g.kernel_w;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t iw = i % g.in_w;
    int64_t t = i / g.in_w;
    const int64_t ih = t % g.in_h;
    t /= g.in_h;
    const int64_t ci = t % cin, n = t / cin;
    const int64_t grp = ci / g.in_per_group, c = ci % g.in_per_group;
    float acc = b ? to_float(b[ci]) : 0.f;
    for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
      const int64_t th = ih + g.pad_h - kh * g.dilation_h;  // = oh·S
      if (th < 0 || th % g.stride_h) continue;
      const int64_t oh = th / g.stride_h;
      if (oh >= g.out_h) continue;
      for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
        const int64_t tw = iw + g.pad_w - kw * g.dilation_w;
        if (tw < 0 || tw % g.stride_w) continue;
        const int64_t ow = tw / g.stride_w;
        if (ow >= g.out_w) continue;
        for (int64_t j = 0; j < g.out_per_group; ++j) {
          const int64_t co = grp * g.out_per_group + j;
          acc += to_float(w[(co * g.in_per_group + c) * K + kh * g.kernel_w + kw]) *
                 to_float(dy[((n * cout + co) * g.out_h + oh) * g.out_w + ow]);
        }
      }
    }
    dx[i] = from_float<T>(acc);
  }
}

// dw[o, c, kh, kw] = Σ_{n, oh, ow} dy[n, o, oh, ow] · x[n, g·Ci + c, ih, iw]: one block per weight
// element (grid-strided), the block's threads over (n, oh, ow).
template <class T>
__global__ void backward_weight_kernel(const T* __restrict__ dy, const T* __restrict__ x, Geometry g,
                                       T* __restrict__ dw) {
  __shared__ float scratch[32];
  const int64_t cout = g.groups * g.out_per_group;
  const int64_t K = g.kernel_h * g.kernel_w;
  const int64_t weights = cout * g.in_per_group * K;
  const int64_t plane = g.out_h * g.out_w, count = g.batch * plane;
  for (int64_t e = blockIdx.x; e < weights; e += gridDim.x) {
    const int64_t kw = e % g.kernel_w, kh = (e / g.kernel_w) % g.kernel_h;
    const int64_t c = (e / K) % g.in_per_group, co = e / (K * g.in_per_group);
    const int64_t ci = (co / g.out_per_group) * g.in_per_group + c;
    float acc = 0.f;
    for (int64_t q = threadIdx.x; q < count; q += blockDim.x) {
      const int64_t n = q / plane, p = q % plane;
      const int64_t oh = p / g.out_w, ow = p % g.out_w;
      const int64_t ih = oh * g.stride_h - g.pad_h + kh * g.dilation_h;
      const int64_t iw = ow * g.stride_w - g.pad_w + kw * g.dilation_w;
      if (ih < 0 || ih >= g.in_h || iw < 0 || iw >= g.in_w) continue;
      acc += to_float(dy[(n * cout + co) * plane + p]) *
             to_float(x[((n * g.groups * g.in_per_group + ci) * g.in_h + ih) * g.in_w + iw]);
    }
    acc = block_sum(acc, scratch);
    if (threadIdx.x == 0) dw[e] = from_float<T>(acc);
    __syncthreads();
  }
}

// out[c] = Σ_{n, p} t[n, c, p]: one block per channel.
template <class T>
__global__ void channel_sums_kernel(const T* __restrict__ t, int64_t batch, int64_t channels, int64_t plane,
                                    T* __restrict__ out) {
  __shared__ float scratch[32];
  for (int64_t c = blockIdx.x; c < channels; c += gridDim.x) {
    float acc = 0.f;
    for (int64_t q = threadIdx.x; q < batch * plane; q += blockDim.x)
      acc += to_float(t[((q / plane) * channels + c) * plane + q % plane]);
    acc = block_sum(acc, scratch);
    if (threadIdx.x == 0) out[c] = from_float<T>(acc);
    __syncthreads();
  }
}

// ------------------------------------------------------------------------------------ launchers

// Dense convolutions take the tiled kernel, depthwise ones (a product with k = kH·kW) the direct one.
template <class T>
void launch_forward(const Geometry& g, const T* x, const T* w, const T* b, T* y, cudaStream_t s) {
  const int64_t total = g.batch * g.out_channels() * g.out_plane();
  if (total == 0) return;
  if (!g.depthwise()) {
    const int64_t tiles = g.batch * g.groups * ceil_div(g.out_per_group, kTileM) * ceil_div(g.out_plane(), kTileN);
    forward_tiled_kernel<T><<<grid_for(tiles), kTiledThreads, 0, s>>>(x, w, b, g, y);
    REPLEARN_CUDA_LAUNCH_CHECK();
    return;
  }
  forward_kernel<T><<<grid_for(ceil_div(total, kThreads)), kThreads, 0, s>>>(x, w, b, g, y);
  REPLEARN_CUDA_LAUNCH_CHECK();
}

template <class T>
void launch_backward_input(const Geometry& g, const T* dy, const T* w, const T* b, T* dx, cudaStream_t s) {
  const int64_t total = g.batch * g.in_channels() * g.in_plane();
  if (total == 0) return;
  backward_input_kernel<T><<<grid_for(ceil_div(total, kThreads)), kThreads, 0, s>>>(dy, w, b, g, dx);
  REPLEARN_CUDA_LAUNCH_CHECK();
}

template <class T>
void launch_backward_weight(const Geometry& g, const T* dy, const T* x, T* dw, cudaStream_t s) {
  const int64_t weights = g.out_channels() * g.col_rows();
  if (weights == 0) return;
  backward_weight_kernel<T><<<grid_for(weights), kThreads, 0, s>>>(dy, x, g, dw);
  REPLEARN_CUDA_LAUNCH_CHECK();
}

template <class T>
void launch_channel_sums(const T* t, int64_t batch, int64_t channels, int64_t plane, T* out, cudaStream_t s) {
  if (!out || channels == 0) return;
  channel_sums_kernel<T><<<grid_for(channels), kThreads, 0, s>>>(t, batch, channels, plane, out);
  REPLEARN_CUDA_LAUNCH_CHECK();
}

}  // namespace

// ------------------------------------------------------------------------------- entry points
// The direct kernels need no workspace.

template <>
int64_t conv_forward_workspace_size<DeviceType::CUDA>(const TensorView&, const TensorView&, const Ints&, const Ints&,
                                                      const Ints&, const Ints&, int64_t, const TensorView&) {
  return 0;
}

template <>
void conv_forward<DeviceType::CUDA>(const TensorView& x, const TensorView& weight, const OptView& bias,
                                    const Ints& stride, const Ints& padding_begin, const Ints& padding_end,
                                    const Ints& dilation, int64_t groups, const TensorView& y, const OptView&,
                                    std::uintptr_t stream) {
  const Geometry g = check_conv_forward(DeviceType::CUDA, x, weight, bias, stride, padding_begin, padding_end,
                                        dilation, groups, y);
  dispatch_cuda_floating(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch_forward<T>(g, x.data_as<T>(), weight.data_as<T>(), ptr_or_null<T>(bias), y.data_as<T>(), as_stream(stream));
  });
}

template <>
int64_t conv_backward_workspace_size<DeviceType::CUDA>(const TensorView&, const TensorView&, const TensorView&,
                                                       const Ints&, const Ints&, const Ints&, const Ints&, int64_t) {
  return 0;
}

template <>
void conv_backward<DeviceType::CUDA>(const TensorView& dy, const TensorView& x, const TensorView& weight,
                                     const Ints& stride, const Ints& padding_begin, const Ints& padding_end,
                                     const Ints& dilation, int64_t groups, const OptView& dx, const OptView& dweight,
                                     const OptView& dbias, const OptView&, std::uintptr_t stream) {
  const Geometry g = check_conv_backward(DeviceType::CUDA, dy, x, weight, stride, padding_begin, padding_end,
                                         dilation, groups, dx, dweight, dbias);
  const cudaStream_t s = as_stream(stream);
  dispatch_cuda_floating(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (dx) launch_backward_input<T>(g, dy.data_as<T>(), weight.data_as<T>(), nullptr, dx->data_as<T>(), s);
    if (dweight) launch_backward_weight<T>(g, dy.data_as<T>(), x.data_as<T>(), dweight->data_as<T>(), s);
    launch_channel_sums<T>(dy.data_as<T>(), g.batch, g.out_channels(), g.out_plane(), ptr_or_null<T>(dbias), s);
  });
}

template <>
int64_t conv_transpose_forward_workspace_size<DeviceType::CUDA>(const TensorView&, const TensorView&, const Ints&,
                                                                const Ints&, const Ints&, int64_t,
                                                                const TensorView&) {
  return 0;
}

template <>
void conv_transpose_forward<DeviceType::CUDA>(const TensorView& x, const TensorView& weight, const OptView& bias,
                                              const Ints& stride, const Ints& padding, const Ints& dilation,
                                              int64_t groups, const TensorView& y, const OptView&,
                                              std::uintptr_t stream) {
  const Geometry g = check_conv_transpose_forward(DeviceType::CUDA, x, weight, bias, stride, padding, dilation,
                                                  groups, y);
  dispatch_cuda_floating(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch_backward_input<T>(g, x.data_as<T>(), weight.data_as<T>(), ptr_or_null<T>(bias), y.data_as<T>(),
                             as_stream(stream));
  });
}

template <>
int64_t conv_transpose_backward_workspace_size<DeviceType::CUDA>(const TensorView&, const TensorView&,
                                                                 const TensorView&, const Ints&, const Ints&,
                                                                 const Ints&, int64_t) {
  return 0;
}

template <>
void conv_transpose_backward<DeviceType::CUDA>(const TensorView& dy, const TensorView& x, const TensorView& weight,
                                               const Ints& stride, const Ints& padding, const Ints& dilation,
                                               int64_t groups, const OptView& dx, const OptView& dweight,
                                               const OptView& dbias, const OptView&, std::uintptr_t stream) {
  const Geometry g = check_conv_transpose_backward(DeviceType::CUDA, dy, x, weight, stride, padding, dilation,
                                                   groups, dx, dweight, dbias);
  const cudaStream_t s = as_stream(stream);
  dispatch_cuda_floating(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (dx) launch_forward<T>(g, dy.data_as<T>(), weight.data_as<T>(), nullptr, dx->data_as<T>(), s);
    if (dweight) launch_backward_weight<T>(g, x.data_as<T>(), dy.data_as<T>(), dweight->data_as<T>(), s);
    launch_channel_sums<T>(dy.data_as<T>(), g.batch, g.in_channels(), g.in_plane(), ptr_or_null<T>(dbias), s);
  });
}

}  // namespace replearn::conv
