// Flow family, CUDA kernels (float32, float16, bfloat16; arithmetic in float32). Formulas: flow.h,
// math.h (shared with cpu.cpp).
//
// - Coupling and ActNorm are elementwise and memory bound: one thread per element, grid-stride.
//   Per-sample logdets (coupling) and per-channel parameter gradients (ActNorm) are reduced in
//   fixed-size chunks whose partial sums go to a workspace and are added in order by a second
//   kernel: deterministic, no float atomics, and every SM busy even at batch 1.
// - invconv1x1 builds W = P·L·(U + diag(s)) (C × C) in the workspace and applies it with one thread
//   per output element; its inverse runs the triangular solves with one thread per (sample, pixel)
//   column, in a float32 workspace. The weight gradient is one block per entry of W.
// - The planar flow takes one warp per sample (two dot products by shuffles); the inverse's scalar
//   equation is solved in float64 by every lane alike (math.h: planar_solve).
// Every kernel loops over its tasks with a grid stride, so any grid size is correct.
#include <algorithm>

#include "core/cuda_utils.cuh"
#include "flow/flow.h"
#include "flow/math.h"

namespace replearn::flow {

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
unsigned grid_for(int64_t tasks) { return static_cast<unsigned>(std::clamp<int64_t>(tasks, 1, 1 << 20)); }

// Chunks per coupling row: ~2048 elements each, at most 64.
int64_t coupling_chunks(int64_t features) { return std::clamp<int64_t>(ceil_div(features, 8 * kThreads), 1, 64); }
// Batch chunks per ActNorm channel for the parameter gradients.
int64_t actnorm_chunks(int64_t batch) { return std::clamp<int64_t>(batch, 1, 16); }

template <class T>
const T* ptr_or_null(const OptView& v) {
  return v ? v->data_as<const T>() : nullptr;
}
template <class T>
T* mut_or_null(const OptView& v) {
  return v ? v->data_as<T>() : nullptr;
}

struct DeviceLoad {  // parameters read as float (math.h's invconv helpers)
  template <class T>
  __device__ float operator()(const T* p, int64_t i) const { return to_float(p[i]); }
};

// out[r] = sign · Σ_k partials[r·chunks + k], k in order.
template <class T>
__global__ void sum_partials_kernel(int64_t rows, int64_t chunks, const float* __restrict__ partials, float sign,
                                    T* __restrict__ out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; r < rows; r += stride) {
    float sum = 0.f;
    for (int64_t k = 0; k < chunks; ++k) sum += partials[r * chunks + k];
    out[r] = from_float<T>(sign * sum);
  }
}

// logdet[b] = factor · Σ_c log|v_c| for every sample (ActNorm: v = scale; invconv: v = s). One block.
template <class T>
__global__ void logdet_from_diagonal_kernel(const T* __restrict__ v, int64_t n, float factor, int64_t batch,
                                            T* __restrict__ logdet) {
  __shared__ float scratch[32];
  float sum = 0.f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) sum += logf(fabsf(to_float(v[i])));
  sum = block_sum(sum, scratch);
  for (int64_t b = threadIdx.x; b < batch; b += blockDim.x) logdet[b] = from_float<T>(factor * sum);
}

template <class T>
void launch_logdet_from_diagonal(const T* v, int64_t n, double factor, int64_t batch, T* logdet, cudaStream_t s) {
  if (batch == 0) return;
  logdet_from_diagonal_kernel<T><<<1, kThreads, 0, s>>>(v, n, static_cast<float>(factor), batch, logdet);
  REPLEARN_CUDA_LAUNCH_CHECK();
}

// ================================================================================ affine coupling

template <class T, Scale S>
__global__ void coupling_forward_kernel(RowDims d, int64_t chunks, const T* __restrict__ x,
                                        const T* __restrict__ shift, const T* __restrict__ log_scale,
                                        const bool* __restrict__ mask, bool reverse, T* __restrict__ y,
                                        float* __restrict__ partials) {
  __shared__ float scratch[32];
  const int64_t tasks = d.batch * chunks;
  for (int64_t task = blockIdx.x; task < tasks; task += gridDim.x) {
    const int64_t b = task / chunks, chunk = task % chunks;
    const int64_t begin = d.features * chunk / chunks, end = d.features * (chunk + 1) / chunks;
    float sum = 0.f;
    for (int64_t j = begin + threadIdx.x; j < end; j += blockDim.x) {
      const int64_t i = b * d.features + j;
      float dlog;
      const float ls = log_scale ? coupling_log_sigma<S>(to_float(log_scale[i]), dlog) : 0.f;
      const float t = shift ? to_float(shift[i]) : 0.f;
      const float xv = to_float(x[i]);
      const bool keep = mask && mask[j];
      const float out = reverse ? (xv - t) * expf(-ls) : xv * expf(ls) + t;
      y[i] = keep ? x[i] : from_float<T>(out);
      if (!keep) sum += ls;
    }
    sum = block_sum(sum, scratch);
    if (threadIdx.x == 0) partials[task] = sum;
  }
}

template <class T, Scale S>
__global__ void coupling_backward_kernel(RowDims d, const T* __restrict__ grad_y, const T* __restrict__ grad_logdet,
                                         const T* __restrict__ x, const T* __restrict__ shift,
                                         const T* __restrict__ log_scale, const bool* __restrict__ mask, bool reverse,
                                         T* __restrict__ grad_x, T* __restrict__ grad_shift,
                                         T* __restrict__ grad_log_scale) {
  const int64_t n = d.batch * d.features;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += stride) {
    const int64_t b = i / d.features, j = i - b * d.features;
    const float g = to_float(grad_y[i]), gl = to_float(grad_logdet[b]);
    float dlog = 0.f;
    const float ls = log_scale ? coupling_log_sigma<S>(to_float(log_scale[i]), dlog) : 0.f;
    const bool keep = mask && mask[j];
    float dx, dt, ds;
    if (!reverse) {
      const float sigma = expf(ls);
      dx = g * sigma;
      dt = g;
      ds = dlog * (g * to_float(x[i]) * sigma + gl);
    } else {
      const float inv_sigma = expf(-ls);
      const float t = shift ? to_float(shift[i]) : 0.f;
      dx = g * inv_sigma;
      dt = -dx;
      ds = -dlog * (g * (to_float(x[i]) - t) * inv_sigma + gl);
    }
    if (grad_x) grad_x[i] = keep ? grad_y[i] : from_float<T>(dx);
    if (grad_shift) grad_shift[i] = from_float<T>(keep ? 0.f : dt);
    if (grad_log_scale) grad_log_scale[i] = from_float<T>(keep ? 0.f : ds);
  }
}

// ======================================================================================== actnorm

template <class T>
__global__ void actnorm_forward_kernel(ChannelDims d, const T* __restrict__ x, const T* __restrict__ scale,
                                       const T* __restrict__ bias, bool reverse, T* __restrict__ y) {
  const int64_t n = d.batch * d.channels * d.spatial;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += stride) {
    const int64_t c = (i / d.spatial) % d.channels;
    const float a = to_float(scale[c]), bb = to_float(bias[c]), v = to_float(x[i]);
    y[i] = from_float<T>(reverse ? (v - bb) / a : a * v + bb);
  }
}

// Task (channel c, batch chunk k): dx for its samples, and partial Σ g·x' and Σ g into
// partials[(c·chunks + k)·2 + {0, 1}] (x' = x forward, (x − b)/a reverse).
template <class T>
__global__ void actnorm_backward_kernel(ChannelDims d, int64_t chunks, const T* __restrict__ grad_y,
                                        const T* __restrict__ x, const T* __restrict__ scale,
                                        const T* __restrict__ bias, bool reverse, T* __restrict__ grad_x,
                                        float* __restrict__ partials) {
  __shared__ float scratch[32];
  const int64_t tasks = d.channels * chunks;
  for (int64_t task = blockIdx.x; task < tasks; task += gridDim.x) {
    const int64_t c = task / chunks, k = task % chunks;
    const int64_t b0 = d.batch * k / chunks, b1 = d.batch * (k + 1) / chunks;
    const float a = to_float(scale[c]), bb = to_float(bias[c]);
    float sum_gx = 0.f, sum_g = 0.f;
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t o = (b * d.channels + c) * d.spatial;
      for (int64_t p = threadIdx.x; p < d.spatial; p += blockDim.x) {
        const float g = to_float(grad_y[o + p]), v = to_float(x[o + p]);
        const float xv = reverse ? (v - bb) / a : v;
        sum_gx += g * xv;
        sum_g += g;
        if (grad_x) grad_x[o + p] = from_float<T>(reverse ? g / a : g * a);
      }
    }
    sum_gx = block_sum(sum_gx, scratch);
    sum_g = block_sum(sum_g, scratch);
    if (threadIdx.x == 0) partials[2 * task] = sum_gx, partials[2 * task + 1] = sum_g;
  }
}

// Forward: da = Σ g·x + S·Σ_b ḡ/a, db = Σ g; reverse: da = −(Σ g·x' + S·Σ_b ḡ)/a, db = −Σ g/a.
template <class T>
__global__ void actnorm_param_grad_kernel(ChannelDims d, int64_t chunks, const float* __restrict__ partials,
                                          const T* __restrict__ grad_logdet, const T* __restrict__ scale,
                                          bool reverse, T* __restrict__ grad_scale, T* __restrict__ grad_bias) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < d.channels; c += stride) {
    float sum_gx = 0.f, sum_g = 0.f, gl = 0.f;
    for (int64_t k = 0; k < chunks; ++k) sum_gx += partials[2 * (c * chunks + k)], sum_g += partials[2 * (c * chunks + k) + 1];
    for (int64_t b = 0; b < d.batch; ++b) gl += to_float(grad_logdet[b]);
    const float a = to_float(scale[c]), logdet_term = static_cast<float>(d.spatial) * gl;
    if (grad_scale) grad_scale[c] = from_float<T>(reverse ? -(sum_gx + logdet_term) / a : sum_gx + logdet_term / a);
    if (grad_bias) grad_bias[c] = from_float<T>(reverse ? -sum_g / a : sum_g);
  }
}

// ===================================================================================== invconv1x1

// Workspace: pinv (C int64) | W (C·C float) | dW (C·C float) | column buffer (B·C·S float, reverse).
struct InvconvScratch {
  int64_t* pinv;
  float* w;
  float* dw;
  float* columns;
  InvconvScratch(void* base, int64_t c)
      : pinv(static_cast<int64_t*>(base)), w(reinterpret_cast<float*>(pinv + c)), dw(w + c * c), columns(dw + c * c) {}
};

template <class T>
__global__ void invconv_prepare_kernel(int64_t c, const int64_t* __restrict__ perm, const T* __restrict__ lower,
                                       const T* __restrict__ upper, const T* __restrict__ s, float* __restrict__ w,
                                       int64_t* __restrict__ pinv) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < c * c; e += stride) {
    w[e] = invconv_weight<float>(e / c, e % c, c, perm, lower, upper, s, DeviceLoad{});
    if (e < c) pinv[perm[e]] = e;
  }
}

// y[b, i, p] = Σ_j W[i][j]·x[b, j, p] (transpose: W[j][i]).
template <class T>
__global__ void invconv_apply_kernel(ChannelDims d, const float* __restrict__ w, bool transpose,
                                     const T* __restrict__ x, T* __restrict__ y) {
  const int64_t c = d.channels, sp = d.spatial, n = d.batch * c * sp;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < n; e += stride) {
    const int64_t b = e / (c * sp), i = (e / sp) % c, p = e % sp;
    const T* xc = x + b * c * sp + p;
    float acc = 0.f;
    for (int64_t j = 0; j < c; ++j) acc += (transpose ? w[j * c + i] : w[i * c + j]) * to_float(xc[j * sp]);
    y[e] = from_float<T>(acc);
  }
}

// One (sample, pixel) column per thread, in `columns` (float, same layout as x):
// x' = W⁻¹ y: Pᵀ, forward substitution with L, back substitution with U + diag(s); out = x'.
template <class T>
__global__ void invconv_solve_kernel(ChannelDims d, const int64_t* __restrict__ perm, const T* __restrict__ lower,
                                     const T* __restrict__ upper, const T* __restrict__ s, const T* __restrict__ y,
                                     float* __restrict__ columns, T* __restrict__ out) {
  const int64_t c = d.channels, sp = d.spatial, n = d.batch * sp;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t col = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; col < n; col += stride) {
    const int64_t base = (col / sp) * c * sp + col % sp;
    float* v = columns + base;
    for (int64_t i = 0; i < c; ++i) v[perm[i] * sp] = to_float(y[base + i * sp]);
    for (int64_t i = 1; i < c; ++i) {
      float acc = v[i * sp];
      for (int64_t j = 0; j < i; ++j) acc -= to_float(lower[i * c + j]) * v[j * sp];
      v[i * sp] = acc;
    }
    for (int64_t i = c - 1; i >= 0; --i) {
      float acc = v[i * sp];
      for (int64_t j = i + 1; j < c; ++j) acc -= to_float(upper[i * c + j]) * v[j * sp];
      v[i * sp] = acc / to_float(s[i]);
    }
    for (int64_t i = 0; i < c; ++i) out[base + i * sp] = from_float<T>(v[i * sp]);
  }
}

// g' = W⁻ᵀ g = P·L⁻ᵀ·Ũ⁻ᵀ g per column: Ũᵀ a = g (forward), Lᵀ c = a (back) in `columns`, then
// grad_x[i] = c[perm[i]].
template <class T>
__global__ void invconv_solve_transposed_kernel(ChannelDims d, const int64_t* __restrict__ perm,
                                                const T* __restrict__ lower, const T* __restrict__ upper,
                                                const T* __restrict__ s, const T* __restrict__ g,
                                                float* __restrict__ columns, T* __restrict__ grad_x) {
  const int64_t c = d.channels, sp = d.spatial, n = d.batch * sp;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t col = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; col < n; col += stride) {
    const int64_t base = (col / sp) * c * sp + col % sp;
    float* v = columns + base;
    for (int64_t i = 0; i < c; ++i) {
      float acc = to_float(g[base + i * sp]);
      for (int64_t j = 0; j < i; ++j) acc -= to_float(upper[j * c + i]) * v[j * sp];
      v[i * sp] = acc / to_float(s[i]);
    }
    for (int64_t i = c - 2; i >= 0; --i) {
      float acc = v[i * sp];
      for (int64_t j = i + 1; j < c; ++j) acc -= to_float(lower[j * c + i]) * v[j * sp];
      v[i * sp] = acc;
    }
    for (int64_t i = 0; i < c; ++i) grad_x[base + i * sp] = from_float<T>(v[perm[i] * sp]);
  }
}

// dW[i][j] = sign · Σ_{b,p} G[b, i, p]·X[b, j, p], one block per entry. G is grad_y (forward) or the
// reverse solve's columns read through the permutation (row perm[i]).
template <class T>
__global__ void invconv_weight_grad_kernel(ChannelDims d, const T* __restrict__ cot, const float* __restrict__ columns,
                                           const int64_t* __restrict__ perm, const T* __restrict__ val, float sign,
                                           float* __restrict__ dw) {
  __shared__ float scratch[32];
  const int64_t c = d.channels, sp = d.spatial, n = d.batch * sp;
  for (int64_t e = blockIdx.x; e < c * c; e += gridDim.x) {
    const int64_t i = e / c, j = e % c;
    float sum = 0.f;
    for (int64_t col = threadIdx.x; col < n; col += blockDim.x) {
      const int64_t base = (col / sp) * c * sp + col % sp;
      const float gv = columns ? columns[base + perm[i] * sp] : to_float(cot[base + i * sp]);
      sum += gv * to_float(val[base + j * sp]);
    }
    sum = block_sum(sum, scratch);
    if (threadIdx.x == 0) dw[e] = sign * sum;
  }
}

template <class T>
__global__ void invconv_factor_grad_kernel(ChannelDims d, const float* __restrict__ dw,
                                           const int64_t* __restrict__ pinv, const T* __restrict__ lower,
                                           const T* __restrict__ upper, const T* __restrict__ s,
                                           const T* __restrict__ grad_logdet, float logdet_sign,
                                           T* __restrict__ grad_lower, T* __restrict__ grad_upper,
                                           T* __restrict__ grad_s) {
  const int64_t c = d.channels;
  const auto dm = [&](int64_t r, int64_t k) { return dw[pinv[r] * c + k]; };
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < c * c; e += stride) {
    const int64_t r = e / c, col = e % c;
    T* target = r > col ? grad_lower : r < col ? grad_upper : nullptr;
    if (target || (r == col && grad_s)) {
      const float g = invconv_factor_grad<float>(r, col, c, lower, upper, s, DeviceLoad{}, dm);
      if (target) {
        target[e] = from_float<T>(g);
      } else {
        float gl = 0.f;
        for (int64_t b = 0; b < d.batch; ++b) gl += to_float(grad_logdet[b]);
        grad_s[r] = from_float<T>(g + logdet_sign * static_cast<float>(d.spatial) * gl / to_float(s[r]));
      }
    }
    if (grad_lower && r <= col) grad_lower[e] = from_float<T>(0.f);
    if (grad_upper && r >= col) grad_upper[e] = from_float<T>(0.f);
  }
}

// ==================================================================================== planar flow

using PlanarFloats = PlanarScratch<float>;  // the workspace, math.h

template <class T>
__global__ void planar_prepare_kernel(RowDims d, const T* __restrict__ u, const T* __restrict__ w,
                                      PlanarFloats scratch) {
  __shared__ float reduce[32];
  float wu = 0.f, ww = 0.f;
  for (int64_t i = threadIdx.x; i < d.features; i += blockDim.x) {
    const float wi = to_float(w[i]);
    wu += wi * to_float(u[i]);
    ww += wi * wi;
  }
  wu = block_sum(wu, reduce);
  ww = block_sum(ww, reduce);
  const float m = -1.f + stable_softplus(wu), k = (m - wu) / ww;
  if (threadIdx.x == 0) scratch.scalars[0] = wu, scratch.scalars[1] = ww, scratch.scalars[2] = m, scratch.scalars[3] = k;
  for (int64_t i = threadIdx.x; i < d.features; i += blockDim.x) scratch.u_hat[i] = to_float(u[i]) + k * to_float(w[i]);
}

// Σ_i a[i]·b[i] over a row, by one warp (every lane gets the sum).
template <class T, class U>
__device__ float warp_dot(const T* a, const U* b, int64_t n, int lane) {
  float sum = 0.f;
  for (int64_t i = lane; i < n; i += 32) sum += to_float(a[i]) * to_float(b[i]);
  return warp_sum(sum);
}

template <class T>
__global__ void planar_forward_kernel(RowDims d, const T* __restrict__ z, const T* __restrict__ w,
                                      const T* __restrict__ bias, bool reverse, PlanarFloats scratch,
                                      T* __restrict__ f, T* __restrict__ logdet) {
  const int lane = threadIdx.x & 31;
  const float m = scratch.scalars[2], b = to_float(bias[0]);
  const int64_t n = d.features;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kWarps;
  for (int64_t r = blockIdx.x * static_cast<int64_t>(kWarps) + (threadIdx.x >> 5); r < d.batch; r += stride) {
    const T* zr = z + r * n;
    const float c = warp_dot(w, zr, n, lane);
    const float a = reverse ? static_cast<float>(planar_solve(c, m, b) + b) : c + b;
    const PlanarPoint<float> p = planar_point(a, m);
    const float sign = reverse ? -1.f : 1.f;
    for (int64_t i = lane; i < n; i += 32) f[r * n + i] = from_float<T>(to_float(zr[i]) + sign * scratch.u_hat[i] * p.h);
    if (lane == 0) logdet[r] = from_float<T>(sign * p.logdet);
  }
}

// Per sample, as planar_backward_cpu in cpu.cpp: grad_z and the scalars (h, da, e·h, dm).
template <class T>
__global__ void planar_backward_sample_kernel(RowDims d, const T* __restrict__ grad_f,
                                              const T* __restrict__ grad_logdet, const T* __restrict__ z,
                                              const T* __restrict__ w, const T* __restrict__ bias, bool reverse,
                                              PlanarFloats scratch, T* __restrict__ grad_z) {
  const int lane = threadIdx.x & 31;
  const float m = scratch.scalars[2], b = to_float(bias[0]);
  const int64_t n = d.features;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kWarps;
  for (int64_t r = blockIdx.x * static_cast<int64_t>(kWarps) + (threadIdx.x >> 5); r < d.batch; r += stride) {
    const T* gr = grad_f + r * n;
    const PlanarPoint<float> p = planar_point(warp_dot(w, z + r * n, n, lane) + b, m);
    const float gu = warp_dot(gr, scratch.u_hat, n, lane);
    const float gl = to_float(grad_logdet[r]);
    float da, e = 0.f, dm;
    if (!reverse) {
      da = gu * p.dh + gl * p.dlogdet_da;
      dm = gl * p.dlogdet_dm;
    } else {
      const float gamma = gl * p.dlogdet_da;
      e = gamma + p.dh * (gu - gamma * m) / (1.f + m * p.dh);
      da = -(gu - e * m) * p.dh - gl * p.dlogdet_da;
      dm = -gl * p.dlogdet_dm;
    }
    if (grad_z)
      for (int64_t i = lane; i < n; i += 32)
        grad_z[r * n + i] = from_float<T>(to_float(gr[i]) + (reverse ? -e : da) * to_float(w[i]));
    if (lane == 0) {
      float* per = scratch.per_sample + 4 * r;
      per[0] = p.h, per[1] = da, per[2] = e * p.h, per[3] = dm;
    }
  }
}

// Tasks 0..D−1: column sums Su[i] = Σ_b g[b, i]·h_b, Sw[i] = Σ_b z[b, i]·da_b; task D: Σ e·h, Σ da, Σ dm.
template <class T>
__global__ void planar_column_kernel(RowDims d, const T* __restrict__ grad_f, const T* __restrict__ z,
                                     PlanarFloats scratch) {
  __shared__ float reduce[32];
  const int64_t n = d.features;
  const float* per = scratch.per_sample;
  for (int64_t task = blockIdx.x; task <= n; task += gridDim.x) {
    float a = 0.f, c = 0.f, e = 0.f;
    for (int64_t r = threadIdx.x; r < d.batch; r += blockDim.x) {
      if (task < n) {
        a += to_float(grad_f[r * n + task]) * per[4 * r];
        c += to_float(z[r * n + task]) * per[4 * r + 1];
      } else {
        a += per[4 * r + 2], c += per[4 * r + 1], e += per[4 * r + 3];
      }
    }
    a = block_sum(a, reduce);
    c = block_sum(c, reduce);
    e = block_sum(e, reduce);
    if (threadIdx.x == 0) {
      if (task < n) scratch.columns[task] = a, scratch.columns[n + task] = c;
      else scratch.scalars[4] = a, scratch.scalars[5] = c, scratch.scalars[6] = e;
    }
  }
}

// One block: dû = ±Su + (Σ e·h)·w, then the chain rule to u, w (math.h: planar_chain); db = Σ da.
template <class T>
__global__ void planar_param_kernel(RowDims d, const T* __restrict__ u, const T* __restrict__ w, bool reverse,
                                    PlanarFloats scratch, T* __restrict__ grad_u, T* __restrict__ grad_w,
                                    T* __restrict__ grad_b) {
  __shared__ float reduce[32];
  const int64_t n = d.features;
  const float sign = reverse ? -1.f : 1.f, sum_eh = scratch.scalars[4];
  float dk = 0.f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const float wi = to_float(w[i]);
    dk += (sign * scratch.columns[i] + sum_eh * wi) * wi;
  }
  dk = block_sum(dk, reduce);
  const PlanarChain<float> chain =
      planar_chain(scratch.scalars[0], scratch.scalars[1], scratch.scalars[2], dk, scratch.scalars[6]);
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const float wi = to_float(w[i]);
    const float du_hat = sign * scratch.columns[i] + sum_eh * wi;
    if (grad_u) grad_u[i] = from_float<T>(du_hat + chain.dwu * wi);
    if (grad_w)
      grad_w[i] = from_float<T>(scratch.columns[n + i] + chain.k * du_hat + chain.dwu * to_float(u[i]) +
                                chain.two_dww * wi);
  }
  if (grad_b && threadIdx.x == 0) grad_b[0] = from_float<T>(scratch.scalars[5]);
}

}  // namespace

// ================================================================================== entry points

template <>
int64_t affine_coupling_workspace_size<DeviceType::CUDA>(const TensorView& x) {
  if (x.ndim < 1) return 0;  // validation names the problem
  return x.size(0) * coupling_chunks(x.numel_between(1, x.ndim)) * static_cast<int64_t>(sizeof(float));
}

template <>
void affine_coupling_forward<DeviceType::CUDA>(const TensorView& x, const OptView& shift, const OptView& log_scale,
                                               const OptView& mask, bool reverse, int scale, const TensorView& y,
                                               const TensorView& logdet, const OptView& workspace,
                                               std::uintptr_t stream) {
  const RowDims d = check_affine_coupling_forward(DeviceType::CUDA, x, shift, log_scale, mask, scale, y, logdet,
                                                  workspace, affine_coupling_workspace_size<DeviceType::CUDA>(x));
  if (d.batch == 0) return;
  const cudaStream_t s = as_stream(stream);
  const int64_t chunks = coupling_chunks(d.features);
  float* partials = workspace->data_as<float>();
  dispatch_cuda_floating(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    dispatch_scale(scale, [&](auto sc) {
      coupling_forward_kernel<T, decltype(sc)::value><<<grid_for(d.batch * chunks), kThreads, 0, s>>>(
          d, chunks, x.data_as<const T>(), ptr_or_null<T>(shift), ptr_or_null<T>(log_scale),
          ptr_or_null<bool>(mask), reverse, y.data_as<T>(), partials);
      REPLEARN_CUDA_LAUNCH_CHECK();
    });
    sum_partials_kernel<T><<<grid_for(ceil_div(d.batch, kThreads)), kThreads, 0, s>>>(
        d.batch, chunks, partials, reverse ? -1.f : 1.f, logdet.data_as<T>());
    REPLEARN_CUDA_LAUNCH_CHECK();
  });
}

template <>
void affine_coupling_backward<DeviceType::CUDA>(const TensorView& grad_y, const TensorView& grad_logdet,
                                                const TensorView& x, const OptView& shift, const OptView& log_scale,
                                                const OptView& mask, bool reverse, int scale, const OptView& grad_x,
                                                const OptView& grad_shift, const OptView& grad_log_scale,
                                                std::uintptr_t stream) {
  const RowDims d = check_affine_coupling_backward(DeviceType::CUDA, grad_y, grad_logdet, x, shift, log_scale, mask,
                                                   scale, grad_x, grad_shift, grad_log_scale);
  const int64_t n = d.batch * d.features;
  if (n == 0) return;
  dispatch_cuda_floating(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    dispatch_scale(scale, [&](auto sc) {
      coupling_backward_kernel<T, decltype(sc)::value><<<grid_for(ceil_div(n, kThreads)), kThreads, 0,
                                                          as_stream(stream)>>>(
          d, grad_y.data_as<const T>(), grad_logdet.data_as<const T>(), x.data_as<const T>(), ptr_or_null<T>(shift),
          ptr_or_null<T>(log_scale), ptr_or_null<bool>(mask), reverse, mut_or_null<T>(grad_x),
          mut_or_null<T>(grad_shift), mut_or_null<T>(grad_log_scale));
      REPLEARN_CUDA_LAUNCH_CHECK();
    });
  });
}

template <>
void actnorm_forward<DeviceType::CUDA>(const TensorView& x, const TensorView& scale, const TensorView& bias,
                                       bool reverse, const TensorView& y, const TensorView& logdet,
                                       std::uintptr_t stream) {
  const ChannelDims d = check_actnorm_forward(DeviceType::CUDA, x, scale, bias, y, logdet);
  const cudaStream_t s = as_stream(stream);
  const int64_t n = x.numel();
  dispatch_cuda_floating(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (n > 0) {
      actnorm_forward_kernel<T><<<grid_for(ceil_div(n, kThreads)), kThreads, 0, s>>>(
          d, x.data_as<const T>(), scale.data_as<const T>(), bias.data_as<const T>(), reverse, y.data_as<T>());
      REPLEARN_CUDA_LAUNCH_CHECK();
    }
    launch_logdet_from_diagonal(scale.data_as<const T>(), d.channels,
                                (reverse ? -1.0 : 1.0) * static_cast<double>(d.spatial), d.batch, logdet.data_as<T>(), s);
  });
}

template <>
int64_t actnorm_backward_workspace_size<DeviceType::CUDA>(const TensorView& x) {
  if (x.ndim < 2) return 0;  // validation names the problem
  return 2 * x.size(1) * actnorm_chunks(x.size(0)) * static_cast<int64_t>(sizeof(float));
}

template <>
void actnorm_backward<DeviceType::CUDA>(const TensorView& grad_y, const TensorView& grad_logdet, const TensorView& x,
                                        const TensorView& scale, const TensorView& bias, bool reverse,
                                        const OptView& grad_x, const OptView& grad_scale, const OptView& grad_bias,
                                        const OptView& workspace, std::uintptr_t stream) {
  const ChannelDims d = check_actnorm_backward(DeviceType::CUDA, grad_y, grad_logdet, x, scale, bias, grad_x,
                                               grad_scale, grad_bias, workspace,
                                               actnorm_backward_workspace_size<DeviceType::CUDA>(x));
  if (d.channels == 0) return;
  const cudaStream_t s = as_stream(stream);
  const int64_t chunks = actnorm_chunks(d.batch);
  float* partials = workspace->data_as<float>();
  dispatch_cuda_floating(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    actnorm_backward_kernel<T><<<grid_for(d.channels * chunks), kThreads, 0, s>>>(
        d, chunks, grad_y.data_as<const T>(), x.data_as<const T>(), scale.data_as<const T>(), bias.data_as<const T>(),
        reverse, mut_or_null<T>(grad_x), partials);
    REPLEARN_CUDA_LAUNCH_CHECK();
    if (grad_scale || grad_bias) {
      actnorm_param_grad_kernel<T><<<grid_for(ceil_div(d.channels, kThreads)), kThreads, 0, s>>>(
          d, chunks, partials, grad_logdet.data_as<const T>(), scale.data_as<const T>(), reverse,
          mut_or_null<T>(grad_scale), mut_or_null<T>(grad_bias));
      REPLEARN_CUDA_LAUNCH_CHECK();
    }
  });
}

template <>
int64_t invconv1x1_workspace_size<DeviceType::CUDA>(const TensorView& x, bool reverse) {
  if (x.ndim < 2) return 0;  // validation names the problem
  const int64_t c = x.size(1);
  return c * static_cast<int64_t>(sizeof(int64_t)) +
         static_cast<int64_t>(sizeof(float)) * (2 * c * c + (reverse ? x.numel() : 0));
}

template <>
void invconv1x1_forward<DeviceType::CUDA>(const TensorView& x, const TensorView& perm, const TensorView& lower,
                                          const TensorView& upper, const TensorView& s, bool reverse,
                                          const TensorView& y, const TensorView& logdet, const OptView& workspace,
                                          std::uintptr_t stream) {
  const ChannelDims d = check_invconv1x1_forward(DeviceType::CUDA, x, perm, lower, upper, s, y, logdet, workspace,
                                                 invconv1x1_workspace_size<DeviceType::CUDA>(x, reverse));
  const cudaStream_t st = as_stream(stream);
  const int64_t c = d.channels;
  dispatch_cuda_floating(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (x.numel() > 0) {
      InvconvScratch scratch(workspace->data, c);
      if (reverse) {
        invconv_solve_kernel<T><<<grid_for(ceil_div(d.batch * d.spatial, kThreads)), kThreads, 0, st>>>(
            d, perm.data_as<const int64_t>(), lower.data_as<const T>(), upper.data_as<const T>(), s.data_as<const T>(),
            x.data_as<const T>(), scratch.columns, y.data_as<T>());
        REPLEARN_CUDA_LAUNCH_CHECK();
      } else {
        invconv_prepare_kernel<T><<<grid_for(ceil_div(c * c, kThreads)), kThreads, 0, st>>>(
            c, perm.data_as<const int64_t>(), lower.data_as<const T>(), upper.data_as<const T>(), s.data_as<const T>(),
            scratch.w, scratch.pinv);
        REPLEARN_CUDA_LAUNCH_CHECK();
        invconv_apply_kernel<T><<<grid_for(ceil_div(x.numel(), kThreads)), kThreads, 0, st>>>(
            d, scratch.w, false, x.data_as<const T>(), y.data_as<T>());
        REPLEARN_CUDA_LAUNCH_CHECK();
      }
    }
    launch_logdet_from_diagonal(s.data_as<const T>(), c, (reverse ? -1.0 : 1.0) * static_cast<double>(d.spatial),
                                d.batch, logdet.data_as<T>(), st);
  });
}

template <>
void invconv1x1_backward<DeviceType::CUDA>(const TensorView& grad_y, const TensorView& grad_logdet,
                                           const TensorView& x, const TensorView& out, const TensorView& perm,
                                           const TensorView& lower, const TensorView& upper, const TensorView& s,
                                           bool reverse, const TensorView& grad_x, const OptView& grad_lower,
                                           const OptView& grad_upper, const OptView& grad_s, const OptView& workspace,
                                           std::uintptr_t stream) {
  const ChannelDims d =
      check_invconv1x1_backward(DeviceType::CUDA, grad_y, grad_logdet, x, out, perm, lower, upper, s, grad_x,
                                grad_lower, grad_upper, grad_s, workspace,
                                invconv1x1_workspace_size<DeviceType::CUDA>(x, reverse));
  const cudaStream_t st = as_stream(stream);
  const int64_t c = d.channels;
  if (c == 0) return;
  InvconvScratch scratch(workspace->data, c);
  dispatch_cuda_floating(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const int64_t* p = perm.data_as<const int64_t>();
    const T *lo = lower.data_as<const T>(), *up = upper.data_as<const T>(), *sv = s.data_as<const T>();
    // W (forward's dx = Wᵀ g) and the inverse permutation (both directions' factor gradients).
    invconv_prepare_kernel<T><<<grid_for(ceil_div(c * c, kThreads)), kThreads, 0, st>>>(c, p, lo, up, sv, scratch.w,
                                                                                        scratch.pinv);
    REPLEARN_CUDA_LAUNCH_CHECK();
    if (x.numel() > 0) {
      if (reverse) {
        invconv_solve_transposed_kernel<T><<<grid_for(ceil_div(d.batch * d.spatial, kThreads)), kThreads, 0, st>>>(
            d, p, lo, up, sv, grad_y.data_as<const T>(), scratch.columns, grad_x.data_as<T>());
      } else {
        invconv_apply_kernel<T><<<grid_for(ceil_div(x.numel(), kThreads)), kThreads, 0, st>>>(
            d, scratch.w, true, grad_y.data_as<const T>(), grad_x.data_as<T>());
      }
      REPLEARN_CUDA_LAUNCH_CHECK();
    }
    if (!grad_lower && !grad_upper && !grad_s) return;
    invconv_weight_grad_kernel<T><<<grid_for(c * c), kThreads, 0, st>>>(
        d, grad_y.data_as<const T>(), reverse ? scratch.columns : nullptr, p,
        reverse ? out.data_as<const T>() : x.data_as<const T>(), reverse ? -1.f : 1.f, scratch.dw);
    REPLEARN_CUDA_LAUNCH_CHECK();
    invconv_factor_grad_kernel<T><<<grid_for(ceil_div(c * c, kThreads)), kThreads, 0, st>>>(
        d, scratch.dw, scratch.pinv, lo, up, sv, grad_logdet.data_as<const T>(), reverse ? -1.f : 1.f,
        mut_or_null<T>(grad_lower), mut_or_null<T>(grad_upper), mut_or_null<T>(grad_s));
    REPLEARN_CUDA_LAUNCH_CHECK();
  });
}

template <>
int64_t planar_flow_workspace_size<DeviceType::CUDA>(const TensorView& z, bool backward) {
  if (z.ndim != 2) return 0;  // validation names the problem
  const int64_t batch = z.size(0), features = z.size(1);
  return static_cast<int64_t>(sizeof(float)) * PlanarFloats::elements(batch, features, backward);
}

template <>
void planar_flow_forward<DeviceType::CUDA>(const TensorView& z, const TensorView& u, const TensorView& w,
                                           const TensorView& b, bool reverse, const TensorView& f,
                                           const TensorView& logdet, const OptView& workspace,
                                           std::uintptr_t stream) {
  const RowDims d = check_planar_flow_forward(DeviceType::CUDA, z, u, w, b, f, logdet, workspace,
                                              planar_flow_workspace_size<DeviceType::CUDA>(z, false));
  const cudaStream_t st = as_stream(stream);
  const PlanarFloats scratch(workspace->data, d);
  dispatch_cuda_floating(z.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    planar_prepare_kernel<T><<<1, kThreads, 0, st>>>(d, u.data_as<const T>(), w.data_as<const T>(), scratch);
    REPLEARN_CUDA_LAUNCH_CHECK();
    if (d.batch == 0) return;
    planar_forward_kernel<T><<<grid_for(ceil_div(d.batch, kWarps)), kThreads, 0, st>>>(
        d, z.data_as<const T>(), w.data_as<const T>(), b.data_as<const T>(), reverse, scratch, f.data_as<T>(),
        logdet.data_as<T>());
    REPLEARN_CUDA_LAUNCH_CHECK();
  });
}

template <>
void planar_flow_backward<DeviceType::CUDA>(const TensorView& grad_f, const TensorView& grad_logdet,
                                            const TensorView& z, const TensorView& out, const TensorView& u,
                                            const TensorView& w, const TensorView& b, bool reverse,
                                            const OptView& grad_z, const OptView& grad_u, const OptView& grad_w,
                                            const OptView& grad_b, const OptView& workspace, std::uintptr_t stream) {
  const RowDims d = check_planar_flow_backward(DeviceType::CUDA, grad_f, grad_logdet, z, out, u, w, b, grad_z,
                                               grad_u, grad_w, grad_b, workspace,
                                               planar_flow_workspace_size<DeviceType::CUDA>(z, true));
  const cudaStream_t st = as_stream(stream);
  const PlanarFloats scratch(workspace->data, d);
  dispatch_cuda_floating(z.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* point = (reverse ? out : z).template data_as<const T>();
    planar_prepare_kernel<T><<<1, kThreads, 0, st>>>(d, u.data_as<const T>(), w.data_as<const T>(), scratch);
    REPLEARN_CUDA_LAUNCH_CHECK();
    if (d.batch > 0) {
      planar_backward_sample_kernel<T><<<grid_for(ceil_div(d.batch, kWarps)), kThreads, 0, st>>>(
          d, grad_f.data_as<const T>(), grad_logdet.data_as<const T>(), point, w.data_as<const T>(),
          b.data_as<const T>(), reverse, scratch, mut_or_null<T>(grad_z));
      REPLEARN_CUDA_LAUNCH_CHECK();
    }
    if (!grad_u && !grad_w && !grad_b) return;
    planar_column_kernel<T><<<grid_for(d.features + 1), kThreads, 0, st>>>(d, grad_f.data_as<const T>(), point,
                                                                           scratch);
    REPLEARN_CUDA_LAUNCH_CHECK();
    planar_param_kernel<T><<<1, kThreads, 0, st>>>(d, u.data_as<const T>(), w.data_as<const T>(), reverse, scratch,
                                                   mut_or_null<T>(grad_u), mut_or_null<T>(grad_w),
                                                   mut_or_null<T>(grad_b));
    REPLEARN_CUDA_LAUNCH_CHECK();
  });
}

}  // namespace replearn::flow
