// State-space family, CUDA kernels (float32, float16, bfloat16 storage; arithmetic in float32).
// The formulas are in ssm.h and, with the backward derivations, in cpu.cpp.
//
// Selective scan. One thread per (batch, channel), one block per (batch, tile of kScanThreads
// channels); a channel's N states live in registers (N ≤ kCudaMaxStates, the register arrays sized by
// a template bucket of 16 or 64 states). Selective B_t, C_t are shared by every channel of a group, so
// the threads of a warp read the same address (a broadcast). The forward saves the state at each
// chunk's end; the backward walks chunks last to first, recomputes the chunk's states from the
// previous checkpoint into a float32 history in the workspace (laid out (step, state, channel) so a
// warp's stores are coalesced), and runs the adjoint recurrence backwards through it.
// Parameter gradients that sum over batch (dA, dD, dδ_bias, time-invariant dB/dC) are per-thread
// register sums written to per-(batch, channel) partials and added in batch order by a second kernel
// (deterministic). Selective dB/dC sum over the channels of a group at every step; they are added
// with float32 atomics into the workspace, then converted — the one non-deterministic summation
// order here (Mamba's kernels do the same).
//
// causal_conv1d: elementwise kernels (one thread per output) for y, dx and the initial-state
// gradient; dweight and dbias are per-row partials (one thread per row) summed over batch in order.
// S4D kernel: one thread per (channel, l) forward; one thread per channel backward. Cauchy: one thread per
// output forward, one per pole backward.
#include <algorithm>
#include <cstdint>

#include "core/check.h"
#include "core/cuda_utils.cuh"
#include "ssm/ssm.h"

namespace replearn::ssm {

namespace {

constexpr int kScanThreads = 64;
constexpr int kThreads = 256;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <class T>
const T* ptr_or_null(const OptView& v) {
  return v ? v->data_as<T>() : nullptr;
}
template <class T>
T* mut_or_null(const OptView& v) {
  return v ? v->data_as<T>() : nullptr;
}

__device__ __forceinline__ float softplus_f(float x) { return x > 20.f ? x : log1pf(expf(x)); }
__device__ __forceinline__ float sigmoid_f(float x) { return 1.f / (1.f + expf(-x)); }

template <class T>
struct ScanParams {
  const T *u, *delta, *A, *B, *C, *D, *z, *bias;
  bool softplus, selective_B, selective_C;
  int64_t batch, dim, length, states, groups;
};

template <class T>
__device__ __forceinline__ float load(const T* p, int64_t i) {
  return to_float(p[i]);
}

// Pointer to B or C of channel (b, ch) and the stride between steps (0: time-invariant).
template <class T>
__device__ __forceinline__ const T* input_matrix(const T* M, bool selective, const ScanParams<T>& p, int64_t b,
                                                  int64_t ch, int64_t& state_stride, int64_t& step) {
  if (selective) {
    const int64_t g = ch / (p.dim / p.groups);
    state_stride = p.length;
    step = 1;
    return M + (b * p.groups + g) * p.states * p.length;
  }
  state_stride = 1;
  step = 0;
  return M + ch * p.states;
}

template <class T>
__device__ __forceinline__ float step_size(const ScanParams<T>& p, int64_t row, int64_t ch, int64_t t, float& pre) {
  pre = load(p.delta, row * p.length + t) + (p.bias ? load(p.bias, ch) : 0.f);
  return p.softplus ? softplus_f(pre) : pre;
}

template <class T, int MaxN>
__global__ void __launch_bounds__(kScanThreads) scan_forward_kernel(ScanParams<T> p, T* out, float* checkpoints) {
  const int64_t ch = static_cast<int64_t>(blockIdx.x) * kScanThreads + threadIdx.x;
  const int64_t b = blockIdx.y;
  if (ch >= p.dim) return;
  const int64_t row = b * p.dim + ch, N = p.states, L = p.length, chunks = scan_chunks(L);
  float A[MaxN], h[MaxN];
#pragma unroll
  for (int n = 0; n < MaxN; ++n) {
    A[n] = n < N ? load(p.A, ch * N + n) : 0.f;
    h[n] = 0.f;
  }
  int64_t Bs, Bt, Cs, Ct;
  const T* Bm = input_matrix(p.B, p.selective_B, p, b, ch, Bs, Bt);
  const T* Cm = input_matrix(p.C, p.selective_C, p, b, ch, Cs, Ct);
  const float Dd = p.D ? load(p.D, ch) : 0.f;
  for (int64_t t = 0; t < L; ++t) {
    float pre;
    const float dt = step_size(p, row, ch, t, pre);
    const float u = load(p.u, row * L + t), du = dt * u;
    float y = 0.f;
#pragma unroll
    for (int n = 0; n < MaxN; ++n) {
      if (n < N) {
        h[n] = expf(dt * A[n]) * h[n] + du * load(Bm, n * Bs + t * Bt);
        y += load(Cm, n * Cs + t * Ct) * h[n];
      }
    }
    y += Dd * u;
    if (p.z) {
      const float z = load(p.z, row * L + t);
      y *= z * sigmoid_f(z);
    }
    out[row * L + t] = from_float<T>(y);
    if (checkpoints && (t + 1 == L || (t + 1) % kScanChunk == 0)) {
      const int64_t c = t / kScanChunk;
#pragma unroll
      for (int n = 0; n < MaxN; ++n)
        if (n < N) checkpoints[(row * chunks + c) * N + n] = h[n];
    }
  }
}

// Workspace of the backward (float32): the chunk history (kScanChunk + 1, N, batch·dim), the
// per-(batch, channel) partials (batch·dim, 3N + 2) and the selective dB, dC accumulators.
struct ScanWorkspace {
  int64_t history, partials, dB, dC;  // element counts
  int64_t total() const { return history + partials + dB + dC; }
};
ScanWorkspace scan_workspace(int64_t batch, int64_t dim, int64_t length, int64_t states, int64_t groups,
                             bool selective_B, bool selective_C) {
  const int64_t rows = batch * dim;
  return {(kScanChunk + 1) * states * rows, rows * (3 * states + 2),
          selective_B ? batch * groups * states * length : 0, selective_C ? batch * groups * states * length : 0};
}

template <class T, int MaxN>
__global__ void __launch_bounds__(kScanThreads)
    scan_backward_kernel(ScanParams<T> p, const T* grad_out, const float* checkpoints, const float* grad_last,
                         T* du_out, T* ddelta_out, T* dz_out, float* history, float* partials, float* dB_sel,
                         float* dC_sel) {
  const int64_t ch = static_cast<int64_t>(blockIdx.x) * kScanThreads + threadIdx.x;
  const int64_t b = blockIdx.y;
  if (ch >= p.dim) return;
  const int64_t rows = p.batch * p.dim, row = b * p.dim + ch, N = p.states, L = p.length, chunks = scan_chunks(L);
  float A[MaxN], carry[MaxN], dA_acc[MaxN], dB_acc[MaxN], dC_acc[MaxN];
#pragma unroll
  for (int n = 0; n < MaxN; ++n) {
    A[n] = n < N ? load(p.A, ch * N + n) : 0.f;
    carry[n] = (grad_last && n < N) ? grad_last[row * N + n] : 0.f;
    dA_acc[n] = dB_acc[n] = dC_acc[n] = 0.f;
  }
  int64_t Bs, Bt, Cs, Ct;
  const T* Bm = input_matrix(p.B, p.selective_B, p, b, ch, Bs, Bt);
  const T* Cm = input_matrix(p.C, p.selective_C, p, b, ch, Cs, Ct);
  const int64_t sel_offset = (b * p.groups + ch / (p.dim / p.groups)) * N * L;
  const float Dd = p.D ? load(p.D, ch) : 0.f;
  float dD_acc = 0.f, dbias_acc = 0.f;
  auto hist = [&](int64_t slot, int n) -> float& { return history[(slot * N + n) * rows + row]; };
  for (int64_t c = chunks - 1; c >= 0; --c) {
    const int64_t t0 = c * kScanChunk, len = L - t0 < kScanChunk ? L - t0 : kScanChunk;
    // Recompute the chunk's states: slot 0 holds h_{t0 − 1}, slot s + 1 holds h_{t0 + s}.
#pragma unroll
    for (int n = 0; n < MaxN; ++n)
      if (n < N) hist(0, n) = c == 0 ? 0.f : checkpoints[(row * chunks + c - 1) * N + n];
    for (int64_t s = 0; s < len; ++s) {
      const int64_t t = t0 + s;
      float pre;
      const float dt = step_size(p, row, ch, t, pre);
      const float du = dt * load(p.u, row * L + t);
#pragma unroll
      for (int n = 0; n < MaxN; ++n)
        if (n < N) hist(s + 1, n) = expf(dt * A[n]) * hist(s, n) + du * load(Bm, n * Bs + t * Bt);
    }
    for (int64_t s = len - 1; s >= 0; --s) {
      const int64_t t = t0 + s;
      float pre;
      const float dt = step_size(p, row, ch, t, pre);
      const float u = load(p.u, row * L + t), su = dt * u;
      float dy = load(grad_out, row * L + t);
      if (p.z) {
        float y = Dd * u;
#pragma unroll
        for (int n = 0; n < MaxN; ++n)
          if (n < N) y += load(Cm, n * Cs + t * Ct) * hist(s + 1, n);
        const float z = load(p.z, row * L + t), sg = sigmoid_f(z);
        dz_out[row * L + t] = from_float<T>(dy * y * sg * (1.f + z * (1.f - sg)));
        dy *= z * sg;
      }
      float sA = 0.f, sB = 0.f;
#pragma unroll
      for (int n = 0; n < MaxN; ++n) {
        if (n < N) {
          const float Cn = load(Cm, n * Cs + t * Ct), Bn = load(Bm, n * Bs + t * Bt);
          const float ea = expf(dt * A[n]), hp = hist(s, n), hn = hist(s + 1, n);
          const float g = dy * Cn + carry[n];
          const float w = g * ea * hp;
          sA += w * A[n];
          dA_acc[n] += w * dt;
          sB += g * Bn;
          if (p.selective_B) atomicAdd(dB_sel + sel_offset + n * L + t, g * su);
          else dB_acc[n] += g * su;
          if (p.selective_C) atomicAdd(dC_sel + sel_offset + n * L + t, dy * hn);
          else dC_acc[n] += dy * hn;
          carry[n] = ea * g;
        }
      }
      du_out[row * L + t] = from_float<T>(dy * Dd + dt * sB);
      const float ddt = sA + u * sB;
      const float dpre = p.softplus ? (pre > 20.f ? ddt : ddt * sigmoid_f(pre)) : ddt;
      ddelta_out[row * L + t] = from_float<T>(dpre);
      dbias_acc += dpre;
      dD_acc += dy * u;
    }
  }
  float* part = partials + row * (3 * N + 2);
#pragma unroll
  for (int n = 0; n < MaxN; ++n) {
    if (n < N) {
      part[n] = dA_acc[n];
      part[N + n] = dB_acc[n];
      part[2 * N + n] = dC_acc[n];
    }
  }
  part[3 * N] = dD_acc;
  part[3 * N + 1] = dbias_acc;
}

__global__ void zero_kernel(float* p, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    p[i] = 0.f;
}

// Sums the per-(batch, channel) partials over batch, in batch order, into the parameter gradients.
template <class T>
__global__ void scan_reduce_kernel(const float* partials, int64_t batch, int64_t dim, int64_t N, T* dA, T* dB_ti,
                                   T* dC_ti, T* dD, T* dbias) {
  const int64_t P = 3 * N + 2;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < dim * P;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t ch = i / P, k = i % P;
    float s = 0.f;
    for (int64_t b = 0; b < batch; ++b) s += partials[(b * dim + ch) * P + k];
    if (k < N) dA[ch * N + k] = from_float<T>(s);
    else if (k < 2 * N) { if (dB_ti) dB_ti[ch * N + k - N] = from_float<T>(s); }
    else if (k < 3 * N) { if (dC_ti) dC_ti[ch * N + k - 2 * N] = from_float<T>(s); }
    else if (k == 3 * N) { if (dD) dD[ch] = from_float<T>(s); }
    else if (dbias) dbias[ch] = from_float<T>(s);
  }
}

template <class T>
__global__ void convert_kernel(const float* src, int64_t n, T* dst) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dst[i] = from_float<T>(src[i]);
}

unsigned grid_for(int64_t n, int threads = kThreads) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(ceil_div(n, threads), 65535)));
}

// ---------------------------------------------------------------------------------- causal conv1d

template <class T>
struct ConvParams {
  const T *x, *w, *bias, *init;
  int64_t rows, dim, length, width;
  bool silu;
};

// x̃[i], i ∈ [−(W − 1), L), of row r.
template <class T>
__device__ __forceinline__ float padded(const ConvParams<T>& p, int64_t r, int64_t i) {
  if (i >= 0) return load(p.x, r * p.length + i);
  return p.init ? load(p.init, r * (p.width - 1) + p.width - 1 + i) : 0.f;
}

template <class T>
__device__ __forceinline__ float conv_pre(const ConvParams<T>& p, int64_t r, int64_t t) {
  const int64_t ch = r % p.dim;
  float acc = p.bias ? load(p.bias, ch) : 0.f;
  for (int64_t k = 0; k < p.width; ++k) acc += load(p.w, ch * p.width + k) * padded(p, r, t - (p.width - 1) + k);
  return acc;
}

// ∂L/∂(pre-activation) at (r, t).
template <class T>
__device__ __forceinline__ float conv_grad_pre(const ConvParams<T>& p, const T* dy, int64_t r, int64_t t) {
  const float g = load(dy, r * p.length + t);
  if (!p.silu) return g;
  const float v = conv_pre(p, r, t), s = sigmoid_f(v);
  return g * s * (1.f + v * (1.f - s));
}

template <class T>
__global__ void conv_forward_kernel(ConvParams<T> p, T* y, T* final_state) {
  const int64_t total = p.rows * p.length;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / p.length, t = i % p.length;
    float v = conv_pre(p, r, t);
    if (p.silu) v *= sigmoid_f(v);
    y[i] = from_float<T>(v);
  }
  if (!final_state) return;
  const int64_t states = p.rows * (p.width - 1);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < states;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / (p.width - 1), j = i % (p.width - 1);
    final_state[i] = from_float<T>(padded(p, r, p.length - (p.width - 1) + j));
  }
}

// dx̃[p] = Σ_k w[k]·g[p − k] (0 ≤ p − k < L) plus the final-state gradient at p ≥ L, for x and the
// initial state alike (p indexes x̃; x starts at W − 1).
template <class T>
__device__ __forceinline__ float conv_grad_padded(const ConvParams<T>& p, const T* dy, const T* dfinal, int64_t r,
                                                  int64_t q) {
  const int64_t ch = r % p.dim;
  float acc = 0.f;
  for (int64_t k = 0; k < p.width; ++k) {
    const int64_t t = q - k;
    if (t >= 0 && t < p.length) acc += load(p.w, ch * p.width + k) * conv_grad_pre(p, dy, r, t);
  }
  if (dfinal && q >= p.length) acc += load(dfinal, r * (p.width - 1) + q - p.length);
  return acc;
}

template <class T>
__global__ void conv_backward_input_kernel(ConvParams<T> p, const T* dy, const T* dfinal, T* dx, T* dinit) {
  const int64_t padded_length = p.length + p.width - 1, total = p.rows * padded_length;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / padded_length, q = i % padded_length;
    if (q >= p.width - 1) dx[r * p.length + q - (p.width - 1)] = from_float<T>(conv_grad_padded(p, dy, dfinal, r, q));
    else if (dinit) dinit[r * (p.width - 1) + q] = from_float<T>(conv_grad_padded(p, dy, dfinal, r, q));
  }
}

// Per-row partials Σ_t g·x̃[t + k] (k < W) and Σ_t g, one thread per row.
template <class T>
__global__ void conv_backward_params_kernel(ConvParams<T> p, const T* dy, float* partials) {
  const int64_t P = p.width + 1;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; r < p.rows;
       r += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float acc[5] = {0.f, 0.f, 0.f, 0.f, 0.f};
    for (int64_t t = 0; t < p.length; ++t) {
      const float g = conv_grad_pre(p, dy, r, t);
      for (int64_t k = 0; k < p.width; ++k) acc[k] += g * padded(p, r, t - (p.width - 1) + k);
      acc[4] += g;
    }
    for (int64_t k = 0; k < p.width; ++k) partials[r * P + k] = acc[k];
    partials[r * P + p.width] = acc[4];
  }
}

template <class T>
__global__ void conv_reduce_kernel(const float* partials, int64_t batch, int64_t dim, int64_t width, T* dw, T* dbias) {
  const int64_t P = width + 1;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < dim * P;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t ch = i / P, k = i % P;
    float s = 0.f;
    for (int64_t b = 0; b < batch; ++b) s += partials[(b * dim + ch) * P + k];
    if (k < width) dw[ch * width + k] = from_float<T>(s);
    else if (dbias) dbias[ch] = from_float<T>(s);
  }
}

// ------------------------------------------------------------------------------------ S4D kernel

struct Complex {
  float re, im;
};
__device__ __forceinline__ Complex cmul(Complex a, Complex b) { return {a.re * b.re - a.im * b.im, a.re * b.im + a.im * b.re}; }
__device__ __forceinline__ Complex cdiv(Complex a, Complex b) {
  const float d = b.re * b.re + b.im * b.im;
  return {(a.re * b.re + a.im * b.im) / d, (a.im * b.re - a.re * b.im) / d};
}
__device__ __forceinline__ Complex cexp(Complex a) {
  const float m = expf(a.re);
  return {m * cosf(a.im), m * sinf(a.im)};
}

template <class T>
__global__ void s4d_forward_kernel(const T* log_dt, const T* Ar, const T* Ai, const T* Cr, const T* Ci, int64_t H,
                                   int64_t N, int64_t L, T* K) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < H * L;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t h = i / L, l = i % L;
    const float dt = expf(load(log_dt, h));
    float acc = 0.f;
    for (int64_t n = 0; n < N; ++n) {
      const Complex A{load(Ar, h * N + n), load(Ai, h * N + n)}, C{load(Cr, h * N + n), load(Ci, h * N + n)};
      const Complex a{dt * A.re, dt * A.im}, E = cexp(a);
      const Complex Cp = cdiv(cmul(C, {E.re - 1.f, E.im}), A);
      const Complex P = cexp({float(l) * a.re, float(l) * a.im});
      acc += 2.f * (Cp.re * P.re - Cp.im * P.im);
    }
    K[i] = from_float<T>(acc);
  }
}

template <class T>
__global__ void s4d_backward_kernel(const T* gK, const T* log_dt, const T* Ar, const T* Ai, const T* Cr, const T* Ci,
                                    int64_t H, int64_t N, int64_t L, T* dlog_dt, T* dAr, T* dAi, T* dCr, T* dCi) {
  for (int64_t h = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; h < H;
       h += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float dt = expf(load(log_dt, h));
    float ddt = 0.f;
    for (int64_t n = 0; n < N; ++n) {
      const int64_t i = h * N + n;
      const Complex A{load(Ar, i), load(Ai, i)}, C{load(Cr, i), load(Ci, i)};
      const Complex a{dt * A.re, dt * A.im}, E = cexp(a), Em1{E.re - 1.f, E.im};
      const Complex Cp = cdiv(cmul(C, Em1), A);
      Complex S{0.f, 0.f}, S1{0.f, 0.f};
      for (int64_t l = 0; l < L; ++l) {
        const float g = load(gK, h * L + l);
        const Complex P = cexp({float(l) * a.re, float(l) * a.im});
        S.re += g * P.re;
        S.im += g * P.im;
        S1.re += g * float(l) * P.re;
        S1.im += g * float(l) * P.im;
      }
      const Complex dCp{2.f * S.re, 2.f * S.im};
      const Complex t1 = cmul(Cp, S1), t2 = cmul(cdiv(cmul(dCp, C), A), E);
      const Complex da{2.f * t1.re + t2.re, 2.f * t1.im + t2.im};
      const Complex dC = cdiv(cmul(dCp, Em1), A);
      const Complex t3 = cdiv(cdiv(cmul(cmul(dCp, C), Em1), A), A);
      const Complex dA{-t3.re + da.re * dt, -t3.im + da.im * dt};
      ddt += cmul(da, A).re;
      dAr[i] = from_float<T>(dA.re);
      dAi[i] = from_float<T>(-dA.im);
      dCr[i] = from_float<T>(dC.re);
      dCi[i] = from_float<T>(-dC.im);
    }
    dlog_dt[h] = from_float<T>(dt * ddt);
  }
}

// ---------------------------------------------------------------------------------------- Cauchy
// out_l = Σ_n v_n/(z_l − w_n); backward as in cpu.cpp. One thread per output (forward) or per pole.

template <class T>
__global__ void cauchy_forward_kernel(const T* vr, const T* vi, const T* zr, const T* zi, const T* wr, const T* wi,
                                      int64_t H, int64_t N, int64_t L, T* out_r, T* out_i) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < H * L;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t h = i / L, l = i % L;
    const float x = load(zr, l), y = load(zi, l);
    float sr = 0.f, si = 0.f;
    for (int64_t n = 0; n < N; ++n) {
      const float a = load(vr, h * N + n), b = load(vi, h * N + n);
      const float dr = x - load(wr, h * N + n), di = y - load(wi, h * N + n), inv = 1.f / (dr * dr + di * di);
      sr += (a * dr + b * di) * inv;
      si += (b * dr - a * di) * inv;
    }
    out_r[i] = from_float<T>(sr);
    out_i[i] = from_float<T>(si);
  }
}

template <class T>
__global__ void cauchy_backward_kernel(const T* gr, const T* gi, const T* vr, const T* vi, const T* zr, const T* zi,
                                       const T* wr, const T* wi, int64_t H, int64_t N, int64_t L, T* dvr, T* dvi,
                                       T* dwr, T* dwi) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < H * N;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t h = i / N;
    const float pr = load(wr, i), pi = load(wi, i);
    float s1r = 0.f, s1i = 0.f, s2r = 0.f, s2i = 0.f;
    for (int64_t l = 0; l < L; ++l) {
      const float dr = load(zr, l) - pr, di = load(zi, l) - pi, inv = 1.f / (dr * dr + di * di);
      const float qr = dr * inv, qi = di * inv, q2r = qr * qr - qi * qi, q2i = 2.f * qr * qi;
      const float g_re = load(gr, h * L + l), g_im = load(gi, h * L + l);
      s1r += g_re * qr - g_im * qi;
      s1i += g_re * qi + g_im * qr;
      s2r += g_re * q2r - g_im * q2i;
      s2i += g_re * q2i + g_im * q2r;
    }
    const float a = load(vr, i), b = load(vi, i);
    dvr[i] = from_float<T>(s1r);
    dvi[i] = from_float<T>(s1i);
    dwr[i] = from_float<T>(a * s2r + b * s2i);
    dwi[i] = from_float<T>(a * s2i - b * s2r);
  }
}

template <class T>
ScanParams<T> scan_params(const ScanDims& d, const TensorView& u, const TensorView& delta, const TensorView& A,
                          const TensorView& B, const TensorView& C, const OptView& D, const OptView& z,
                          const OptView& bias, bool softplus) {
  return {u.data_as<T>(), delta.data_as<T>(), A.data_as<T>(), B.data_as<T>(), C.data_as<T>(), ptr_or_null<T>(D),
          ptr_or_null<T>(z), ptr_or_null<T>(bias), softplus, d.selective_B, d.selective_C, d.batch, d.dim,
          d.length, d.states, d.groups};
}

}  // namespace

// ------------------------------------------------------------------------------- entry points

template <>
void selective_scan_forward<DeviceType::CUDA>(const TensorView& u, const TensorView& delta, const TensorView& A,
                                              const TensorView& B, const TensorView& C, const OptView& D_skip,
                                              const OptView& z, const OptView& delta_bias, bool delta_softplus,
                                              const TensorView& out, const OptView& checkpoints,
                                              std::uintptr_t stream) {
  const ScanDims d =
      check_selective_scan_forward(DeviceType::CUDA, u, delta, A, B, C, D_skip, z, delta_bias, out, checkpoints);
  if (d.batch * d.dim == 0 || d.length == 0) return;
  dispatch_cuda_floating(u.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const ScanParams<T> p = scan_params<T>(d, u, delta, A, B, C, D_skip, z, delta_bias, delta_softplus);
    const dim3 grid(static_cast<unsigned>(ceil_div(d.dim, kScanThreads)), static_cast<unsigned>(d.batch));
    float* ck = mut_or_null<float>(checkpoints);
    if (d.states <= 16)
      scan_forward_kernel<T, 16><<<grid, kScanThreads, 0, as_stream(stream)>>>(p, out.data_as<T>(), ck);
    else
      scan_forward_kernel<T, 64><<<grid, kScanThreads, 0, as_stream(stream)>>>(p, out.data_as<T>(), ck);
    REPLEARN_CUDA_LAUNCH_CHECK();
  });
}

namespace {
ScanWorkspace workspace_for(const TensorView& u, const TensorView& A, const TensorView& B, const TensorView& C) {
  if (u.ndim != 3 || A.ndim != 2) return {0, 0, 0, 0};
  int64_t groups = B.ndim == 4 ? B.size(1) : C.ndim == 4 ? C.size(1) : 1;
  return scan_workspace(u.size(0), u.size(1), u.size(2), A.size(1), std::max<int64_t>(groups, 1), B.ndim == 4,
                        C.ndim == 4);
}
}  // namespace

template <>
int64_t selective_scan_backward_workspace_size<DeviceType::CUDA>(const TensorView& u, const TensorView& A,
                                                                 const TensorView& B, const TensorView& C) {
  return workspace_for(u, A, B, C).total() * static_cast<int64_t>(sizeof(float));
}

template <>
void selective_scan_backward<DeviceType::CUDA>(
    const TensorView& grad_out, const TensorView& u, const TensorView& delta, const TensorView& A,
    const TensorView& B, const TensorView& C, const OptView& D_skip, const OptView& z, const OptView& delta_bias,
    bool delta_softplus, const TensorView& checkpoints, const OptView& grad_last_state, const TensorView& du,
    const TensorView& ddelta, const TensorView& dA, const TensorView& dB, const TensorView& dC, const OptView& dD,
    const OptView& dz, const OptView& ddelta_bias, const OptView& workspace, std::uintptr_t stream) {
  const ScanWorkspace ws = workspace_for(u, A, B, C);
  const ScanDims d = check_selective_scan_backward(DeviceType::CUDA, grad_out, u, delta, A, B, C, D_skip, z,
                                                   delta_bias, checkpoints, grad_last_state, du, ddelta, dA, dB, dC,
                                                   dD, dz, ddelta_bias, workspace,
                                                   ws.total() * static_cast<int64_t>(sizeof(float)));
  if (ws.total() == 0) return;  // no channels: every gradient is empty
  const cudaStream_t s = as_stream(stream);
  float* history = workspace->data_as<float>();
  float* partials = history + ws.history;
  float* dB_sel = partials + ws.partials;
  float* dC_sel = dB_sel + ws.dB;
  zero_kernel<<<grid_for(ws.partials + ws.dB + ws.dC), kThreads, 0, s>>>(partials, ws.partials + ws.dB + ws.dC);
  REPLEARN_CUDA_LAUNCH_CHECK();
  dispatch_cuda_floating(u.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const ScanParams<T> p = scan_params<T>(d, u, delta, A, B, C, D_skip, z, delta_bias, delta_softplus);
    if (d.length > 0) {
      const dim3 grid(static_cast<unsigned>(ceil_div(d.dim, kScanThreads)), static_cast<unsigned>(d.batch));
      const float* gl = ptr_or_null<float>(grad_last_state);
      if (d.states <= 16)
        scan_backward_kernel<T, 16><<<grid, kScanThreads, 0, s>>>(
            p, grad_out.data_as<T>(), checkpoints.data_as<float>(), gl, du.data_as<T>(), ddelta.data_as<T>(),
            mut_or_null<T>(dz), history, partials, dB_sel, dC_sel);
      else
        scan_backward_kernel<T, 64><<<grid, kScanThreads, 0, s>>>(
            p, grad_out.data_as<T>(), checkpoints.data_as<float>(), gl, du.data_as<T>(), ddelta.data_as<T>(),
            mut_or_null<T>(dz), history, partials, dB_sel, dC_sel);
      REPLEARN_CUDA_LAUNCH_CHECK();
    }
    scan_reduce_kernel<T><<<grid_for(d.dim * (3 * d.states + 2)), kThreads, 0, s>>>(
        partials, d.batch, d.dim, d.states, dA.data_as<T>(), d.selective_B ? nullptr : dB.data_as<T>(),
        d.selective_C ? nullptr : dC.data_as<T>(), mut_or_null<T>(dD), mut_or_null<T>(ddelta_bias));
    REPLEARN_CUDA_LAUNCH_CHECK();
    if (d.selective_B) {
      convert_kernel<T><<<grid_for(ws.dB), kThreads, 0, s>>>(dB_sel, ws.dB, dB.data_as<T>());
      REPLEARN_CUDA_LAUNCH_CHECK();
    }
    if (d.selective_C) {
      convert_kernel<T><<<grid_for(ws.dC), kThreads, 0, s>>>(dC_sel, ws.dC, dC.data_as<T>());
      REPLEARN_CUDA_LAUNCH_CHECK();
    }
  });
}

template <>
void causal_conv1d_forward<DeviceType::CUDA>(const TensorView& x, const TensorView& weight, const OptView& bias,
                                             const OptView& initial_state, int activation, const TensorView& y,
                                             const OptView& final_state, std::uintptr_t stream) {
  const ConvDims d = check_causal_conv1d_forward(DeviceType::CUDA, x, weight, bias, initial_state, y, final_state);
  Checker("causal_conv1d_forward", DeviceType::CUDA)
      .value(activation == 0 || activation == 1, "activation", "None or 'silu'", activation);
  const int64_t rows = d.batch * d.dim;
  if (rows == 0) return;
  dispatch_cuda_floating(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const ConvParams<T> p{x.data_as<T>(), weight.data_as<T>(), ptr_or_null<T>(bias), ptr_or_null<T>(initial_state),
                          rows, d.dim, d.length, d.width, activation == 1};
    conv_forward_kernel<T><<<grid_for(std::max(rows * d.length, rows * (d.width - 1))), kThreads, 0,
                             as_stream(stream)>>>(p, y.data_as<T>(), mut_or_null<T>(final_state));
    REPLEARN_CUDA_LAUNCH_CHECK();
  });
}

template <>
int64_t causal_conv1d_backward_workspace_size<DeviceType::CUDA>(const TensorView& x, const TensorView& weight) {
  if (x.ndim != 3 || weight.ndim != 2) return 0;
  return x.size(0) * x.size(1) * (weight.size(1) + 1) * static_cast<int64_t>(sizeof(float));
}

template <>
void causal_conv1d_backward<DeviceType::CUDA>(const TensorView& grad_y, const TensorView& x, const TensorView& weight,
                                              const OptView& bias, const OptView& initial_state, int activation,
                                              const OptView& grad_final_state, const TensorView& dx,
                                              const TensorView& dweight, const OptView& dbias,
                                              const OptView& dinitial_state, const OptView& workspace,
                                              std::uintptr_t stream) {
  const ConvDims d = check_causal_conv1d_backward(DeviceType::CUDA, grad_y, x, weight, bias, initial_state,
                                                  grad_final_state, dx, dweight, dbias, dinitial_state, workspace,
                                                  causal_conv1d_backward_workspace_size<DeviceType::CUDA>(x, weight));
  Checker("causal_conv1d_backward", DeviceType::CUDA)
      .value(activation == 0 || activation == 1, "activation", "None or 'silu'", activation);
  const int64_t rows = d.batch * d.dim;
  const cudaStream_t s = as_stream(stream);
  dispatch_cuda_floating(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const ConvParams<T> p{x.data_as<T>(), weight.data_as<T>(), ptr_or_null<T>(bias), ptr_or_null<T>(initial_state),
                          rows, d.dim, d.length, d.width, activation == 1};
    float* partials = workspace ? workspace->data_as<float>() : nullptr;
    if (rows > 0) {
      conv_backward_input_kernel<T><<<grid_for(rows * (d.length + d.width - 1)), kThreads, 0, s>>>(
          p, grad_y.data_as<T>(), ptr_or_null<T>(grad_final_state), dx.data_as<T>(), mut_or_null<T>(dinitial_state));
      REPLEARN_CUDA_LAUNCH_CHECK();
      conv_backward_params_kernel<T><<<grid_for(rows), kThreads, 0, s>>>(p, grad_y.data_as<T>(), partials);
      REPLEARN_CUDA_LAUNCH_CHECK();
    }
    conv_reduce_kernel<T><<<grid_for(d.dim * (d.width + 1)), kThreads, 0, s>>>(partials, d.batch, d.dim, d.width,
                                                                               dweight.data_as<T>(),
                                                                               mut_or_null<T>(dbias));
    REPLEARN_CUDA_LAUNCH_CHECK();
  });
}

template <>
void s4d_kernel_forward<DeviceType::CUDA>(const TensorView& log_dt, const TensorView& A_real,
                                          const TensorView& A_imag, const TensorView& C_real,
                                          const TensorView& C_imag, const TensorView& K, std::uintptr_t stream) {
  const VandermondeDims d = check_s4d_kernel_forward(DeviceType::CUDA, log_dt, A_real, A_imag, C_real, C_imag, K);
  if (d.channels * d.length == 0) return;
  dispatch_cuda_floating(log_dt.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    s4d_forward_kernel<T><<<grid_for(d.channels * d.length), kThreads, 0, as_stream(stream)>>>(
        log_dt.data_as<T>(), A_real.data_as<T>(), A_imag.data_as<T>(), C_real.data_as<T>(), C_imag.data_as<T>(),
        d.channels, d.states, d.length, K.data_as<T>());
    REPLEARN_CUDA_LAUNCH_CHECK();
  });
}

template <>
void s4d_kernel_backward<DeviceType::CUDA>(const TensorView& grad_K, const TensorView& log_dt,
                                           const TensorView& A_real, const TensorView& A_imag,
                                           const TensorView& C_real, const TensorView& C_imag,
                                           const TensorView& dlog_dt, const TensorView& dA_real,
                                           const TensorView& dA_imag, const TensorView& dC_real,
                                           const TensorView& dC_imag, std::uintptr_t stream) {
  const VandermondeDims d = check_s4d_kernel_backward(DeviceType::CUDA, grad_K, log_dt, A_real, A_imag, C_real,
                                                      C_imag, dlog_dt, dA_real, dA_imag, dC_real, dC_imag);
  if (d.channels == 0) return;
  dispatch_cuda_floating(log_dt.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    s4d_backward_kernel<T><<<grid_for(d.channels), kThreads, 0, as_stream(stream)>>>(
        grad_K.data_as<T>(), log_dt.data_as<T>(), A_real.data_as<T>(), A_imag.data_as<T>(), C_real.data_as<T>(),
        C_imag.data_as<T>(), d.channels, d.states, d.length, dlog_dt.data_as<T>(), dA_real.data_as<T>(),
        dA_imag.data_as<T>(), dC_real.data_as<T>(), dC_imag.data_as<T>());
    REPLEARN_CUDA_LAUNCH_CHECK();
  });
}

template <>
void cauchy_forward<DeviceType::CUDA>(const TensorView& v_real, const TensorView& v_imag, const TensorView& z_real,
                                      const TensorView& z_imag, const TensorView& w_real, const TensorView& w_imag,
                                      const TensorView& out_real, const TensorView& out_imag, std::uintptr_t stream) {
  const CauchyDims d =
      check_cauchy_forward(DeviceType::CUDA, v_real, v_imag, z_real, z_imag, w_real, w_imag, out_real, out_imag);
  if (d.rows * d.nodes == 0) return;
  dispatch_cuda_floating(v_real.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    cauchy_forward_kernel<T><<<grid_for(d.rows * d.nodes), kThreads, 0, as_stream(stream)>>>(
        v_real.data_as<T>(), v_imag.data_as<T>(), z_real.data_as<T>(), z_imag.data_as<T>(), w_real.data_as<T>(),
        w_imag.data_as<T>(), d.rows, d.poles, d.nodes, out_real.data_as<T>(), out_imag.data_as<T>());
    REPLEARN_CUDA_LAUNCH_CHECK();
  });
}

template <>
void cauchy_backward<DeviceType::CUDA>(const TensorView& grad_real, const TensorView& grad_imag,
                                       const TensorView& v_real, const TensorView& v_imag, const TensorView& z_real,
                                       const TensorView& z_imag, const TensorView& w_real, const TensorView& w_imag,
                                       const TensorView& dv_real, const TensorView& dv_imag,
                                       const TensorView& dw_real, const TensorView& dw_imag, std::uintptr_t stream) {
  const CauchyDims d = check_cauchy_backward(DeviceType::CUDA, grad_real, grad_imag, v_real, v_imag, z_real, z_imag,
                                             w_real, w_imag, dv_real, dv_imag, dw_real, dw_imag);
  if (d.rows * d.poles == 0) return;
  dispatch_cuda_floating(v_real.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    cauchy_backward_kernel<T><<<grid_for(d.rows * d.poles), kThreads, 0, as_stream(stream)>>>(
        grad_real.data_as<T>(), grad_imag.data_as<T>(), v_real.data_as<T>(), v_imag.data_as<T>(), z_real.data_as<T>(),
        z_imag.data_as<T>(), w_real.data_as<T>(), w_imag.data_as<T>(), d.rows, d.poles, d.nodes,
        dv_real.data_as<T>(), dv_imag.data_as<T>(), dw_real.data_as<T>(), dw_imag.data_as<T>());
    REPLEARN_CUDA_LAUNCH_CHECK();
  });
}

}  // namespace replearn::ssm
