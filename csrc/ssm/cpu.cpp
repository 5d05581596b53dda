// State-space family, CPU kernels (float32 and float64). The formulas are in ssm.h.
//
// Selective scan. The recurrence is sequential in time but independent across (batch, channel) and
// across the N states of a channel, so work items are (batch, group, slice of the group's channels)
// and the N-state loop is the vectorized one. Time is walked in chunks of kScanChunk steps; a chunk's
// selective B_t, C_t (stored (N, L), strided in n) are transposed once per item into (T, N) tiles and
// reused by every channel of the item, and the chunk's Ā = exp(Δ·A) and Δ·B·u are computed first in
// one vectorizable pass (an exp that the compiler can vectorize: `exp_approx`), then the recurrence
// runs over them. The forward saves the state at each chunk's end (ssm.h).
//
// Backward (adjoint of the recurrence, g_t = ∂L/∂h_t, with ḡ_t = dy_t·C_t + Ā_{t+1}⊙ḡ_{t+1}):
//   dC_t += dy_t·h_t,  dΔ_t = Σ_n g·(Ā·A·h_{t−1} + B·u),  dA += g·Ā·h_{t−1}·Δ,
//   dB_t += g·Δ·u,     du_t = D·dy_t + Δ·Σ_n g·B,           dD += dy·u,
// with dy = dout·silu(z), dz = dout·y·σ(z)·(1 + z·(1 − σ(z))), and dδ = dΔ·σ(δ + bias) under softplus.
// Chunks are visited last to first; each restarts from the previous chunk's checkpoint and recomputes
// its T states into a (T + 1, N) tile, through which the adjoint runs backwards. Parameter gradients
// that sum over batch (dA, dD, dδ_bias, time-invariant dB/dC) and over a group's channels (selective
// dB/dC) go to per-channel / per-item partials in the workspace, added in a fixed order afterwards:
// deterministic for a fixed thread count, no atomics.
#include <algorithm>
#include <cmath>
#include <complex>
#include <cstring>
#include <vector>

#include "core/check.h"
#include "core/dispatch.h"
#include "core/parallel.h"
#include "ssm/ssm.h"

namespace replearn::ssm {

namespace {

template <class T>
T* ptr_or_null(const OptView& v) {
  return v ? v->data_as<T>() : nullptr;
}

// exp(x) that GCC vectorizes (glibc's vector expf is only declared under -ffast-math): Cephes'
// expf, x = k·ln2 + r with ln2 split in two, a degree-6 polynomial for e^r on |r| ≤ ln2/2 and 2^k
// built in the exponent bits (S. Moshier, Cephes Math Library, expf.c; ~1 ulp). Arguments are
// clamped to [−87.3, 88.7]: e^−87.3 ≈ 1.2e−38 stands in for anything smaller.
inline float exp_approx(float x) {
  x = std::min(std::max(x, -87.3f), 88.7f);
  const float k = std::nearbyint(x * 1.44269504088896341f);
  float r = x - k * 0.693359375f;
  r = r - k * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  return p * __builtin_bit_cast(float, (static_cast<int32_t>(k) + 127) << 23);
}
inline double exp_approx(double x) { return std::exp(x); }

// log(x) for normal x > 0 that GCC vectorizes: Cephes' logf, x = m·2^e with m ∈ [√½, √2), a
// degree-8 polynomial in m − 1 (S. Moshier, Cephes Math Library, logf.c; ~1 ulp).
inline float log_approx(float x) {
  int32_t bits = __builtin_bit_cast(int32_t, x);
  float e = static_cast<float>(((bits >> 23) & 0xff) - 126);
  bits = (bits & 0x807fffff) | 0x3f000000;  // mantissa in [0.5, 1)
  float m = __builtin_bit_cast(float, bits);
  const bool small = m < 0.707106781186547524f;
  e = small ? e - 1.0f : e;
  m = small ? m + m - 1.0f : m - 1.0f;
  const float z = m * m;
  float y = 7.0376836292e-2f;
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  y += -2.12194440e-4f * e;
  y += -0.5f * z;
  return m + y + 0.693359375f * e;
}
inline double log_approx(double x) { return std::log(x); }

// σ(x) and softplus(x) = max(x, 0) + log1p(e^−|x|), both vectorizable. log1p(y) is log(1 + y)·y/((1 + y) − 1),
// exact to rounding where 1 + y rounds (Goldberg 1991, "What every computer scientist should know
// about floating-point arithmetic", Theorem 4). For x > 20 this is x to within e^−20, torch's threshold.
template <class T>
T sigmoid(T x) {
  return T(1) / (T(1) + exp_approx(-x));
}
template <class T>
T softplus(T x) {
  const T y = exp_approx(-std::abs(x)), one_plus = T(1) + y;
  const T log1p = one_plus == T(1) ? y : log_approx(one_plus) * y / (one_plus - T(1));
  return std::max(x, T(0)) + log1p;
}

// --------------------------------------------------------------------------------- selective scan

// Items: (batch, group, slice); `slices` splits each group's channels so there are about as many
// items as threads even for one batch and one group.
int64_t desired_slices(const ScanDims& d) {
  const int64_t per_group = d.dim / d.groups;
  const int64_t by_threads = (num_threads() + d.batch * d.groups - 1) / (d.batch * d.groups);
  return std::max<int64_t>(1, std::min(per_group, by_threads));
}

// Workspace (in elements of the compute type): per (batch, channel) partials [dA (N), dB (N), dC (N),
// dD, dδ_bias] followed by per-item partials of the selective dB, dC ((N, L) each).
int64_t channel_partials(const ScanDims& d) { return 3 * d.states + 2; }
int64_t item_partials(const ScanDims& d) {
  return (int64_t(d.selective_B) + int64_t(d.selective_C)) * d.states * d.length;
}
int64_t scan_workspace_elements(const ScanDims& d, int64_t slices) {
  return d.batch * d.dim * channel_partials(d) + d.batch * d.groups * slices * item_partials(d);
}

// The view of B or C a channel reads at chunk-local step t: a (T, N) tile (selective, transposed) or
// the channel's own row (time-invariant, step 0).
template <class T>
struct InputRows {
  const T* base;
  int64_t step;
  const T* at(int64_t t) const { return base + t * step; }
};

template <class T>
void transpose_chunk(const T* src, int64_t N, int64_t L, int64_t t0, int64_t len, T* tile) {
  // src (N, L) → tile (len, N)
  for (int64_t n = 0; n < N; ++n)
    for (int64_t t = 0; t < len; ++t) tile[t * N + n] = src[n * L + t0 + t];
}

template <class T>
struct ScanArgs {
  const T *u, *delta, *A, *B, *C, *D, *z, *bias;
  bool softplus;
  ScanDims d;
};

// Δ_t for the chunk, and (when `pre` is given) the pre-activation δ + bias.
template <class T>
void chunk_delta(const ScanArgs<T>& a, int64_t row, int64_t channel, int64_t t0, int64_t len, T* dt, T* pre) {
  const T* delta = a.delta + row * a.d.length + t0;
  const T bias = a.bias ? a.bias[channel] : T(0);
  if (pre)
    for (int64_t t = 0; t < len; ++t) pre[t] = delta[t] + bias;
  if (a.softplus) {
#pragma omp simd
    for (int64_t t = 0; t < len; ++t) dt[t] = softplus(delta[t] + bias);
  } else {
    for (int64_t t = 0; t < len; ++t) dt[t] = delta[t] + bias;
  }
}

// Ā (len, N) and Δ·B·u (len, N) for one channel's chunk.
template <class T>
void chunk_discretize(const T* __restrict__ A, const T* __restrict__ dt, const T* __restrict__ u,
                      InputRows<T> Bt, int64_t len, int64_t N, T* __restrict__ dA, T* __restrict__ dBu) {
  for (int64_t t = 0; t < len; ++t) {
    const T step = dt[t], du = dt[t] * u[t];
    const T* __restrict__ b = Bt.at(t);
    T* __restrict__ ea = dA + t * N;
    T* __restrict__ eb = dBu + t * N;
#pragma omp simd
    for (int64_t n = 0; n < N; ++n) {
      ea[n] = exp_approx(step * A[n]);
      eb[n] = du * b[n];
    }
  }
}

template <class T>
void scan_forward_item(const ScanArgs<T>& a, int64_t b, int64_t g, int64_t c0, int64_t c1, T* out,
                       T* checkpoints) {
  const ScanDims& d = a.d;
  const int64_t N = d.states, L = d.length, chunks = scan_chunks(L);
  std::vector<T> Btile(d.selective_B ? kScanChunk * N : 0), Ctile(d.selective_C ? kScanChunk * N : 0);
  std::vector<T> dA(kScanChunk * N), dBu(kScanChunk * N), dt(kScanChunk), states((c1 - c0) * N, T(0));
  const T* Bsel = d.selective_B ? a.B + (b * d.groups + g) * N * L : nullptr;
  const T* Csel = d.selective_C ? a.C + (b * d.groups + g) * N * L : nullptr;
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t t0 = c * kScanChunk, len = std::min(kScanChunk, L - t0);
    if (Bsel) transpose_chunk(Bsel, N, L, t0, len, Btile.data());
    if (Csel) transpose_chunk(Csel, N, L, t0, len, Ctile.data());
    for (int64_t ch = c0; ch < c1; ++ch) {
      const int64_t row = b * d.dim + ch;
      const InputRows<T> Bt = Bsel ? InputRows<T>{Btile.data(), N} : InputRows<T>{a.B + ch * N, 0};
      const InputRows<T> Ct = Csel ? InputRows<T>{Ctile.data(), N} : InputRows<T>{a.C + ch * N, 0};
      const T* u = a.u + row * L + t0;
      chunk_delta(a, row, ch, t0, len, dt.data(), static_cast<T*>(nullptr));
      chunk_discretize(a.A + ch * N, dt.data(), u, Bt, len, N, dA.data(), dBu.data());
      T* __restrict__ h = states.data() + (ch - c0) * N;
      const T Dd = a.D ? a.D[ch] : T(0);
      T* y = out + row * L + t0;
      const T* z = a.z ? a.z + row * L + t0 : nullptr;
      for (int64_t t = 0; t < len; ++t) {
        const T* __restrict__ ea = dA.data() + t * N;
        const T* __restrict__ eb = dBu.data() + t * N;
        const T* __restrict__ cr = Ct.at(t);
        T acc = 0;
#pragma omp simd reduction(+ : acc)
        for (int64_t n = 0; n < N; ++n) {
          h[n] = ea[n] * h[n] + eb[n];
          acc += cr[n] * h[n];
        }
        y[t] = acc + Dd * u[t];
      }
      if (z) {  // the gate, in one vectorized pass
#pragma omp simd
        for (int64_t t = 0; t < len; ++t) y[t] *= z[t] * sigmoid(z[t]);
      }
      if (checkpoints) std::copy(h, h + N, checkpoints + (row * chunks + c) * N);
    }
  }
}

// Runs f(item, b, g, first channel, end channel) for every (batch, group, slice) item, in parallel.
template <class F>
void for_each_scan_item(const ScanDims& d, int64_t slices, const F& f) {
  const int64_t per_group = d.dim / d.groups;
  parallel_for(d.batch * d.groups * slices, 1, [&](int, int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t s = i % slices, bg = i / slices, g = bg % d.groups, b = bg / d.groups;
      const int64_t first = g * per_group;
      f(i, b, g, first + per_group * s / slices, first + per_group * (s + 1) / slices);
    }
  });
}

template <class T>
void scan_forward(const ScanArgs<T>& a, T* out, T* checkpoints) {
  for_each_scan_item(a.d, desired_slices(a.d), [&](int64_t, int64_t b, int64_t g, int64_t c0, int64_t c1) {
    scan_forward_item(a, b, g, c0, c1, out, checkpoints);
  });
}

template <class T>
struct ScanGrads {
  const T* grad_out;
  const T* checkpoints;
  const T* grad_last_state;  // (batch·dim, N) or null
  T *du, *ddelta, *dz;
  T* channel;  // (batch·dim, channel_partials)
  T* item;     // (items, item_partials)
};

template <class T>
void scan_backward_item(const ScanArgs<T>& a, const ScanGrads<T>& gr, int64_t b, int64_t g, int64_t c0, int64_t c1,
                        T* item_partial) {
  const ScanDims& d = a.d;
  const int64_t N = d.states, L = d.length, chunks = scan_chunks(L), P = channel_partials(d);
  std::vector<T> Btile(d.selective_B ? kScanChunk * N : 0), Ctile(d.selective_C ? kScanChunk * N : 0);
  std::vector<T> dBtile(d.selective_B ? kScanChunk * N : 0), dCtile(d.selective_C ? kScanChunk * N : 0);
  std::vector<T> dA(kScanChunk * N), dBu(kScanChunk * N), H((kScanChunk + 1) * N), dt(kScanChunk),
      pre(kScanChunk), gate(kScanChunk), slope(kScanChunk), carry((c1 - c0) * N, T(0));
  if (gr.grad_last_state)  // the adjoint of the final state seeds the reverse recurrence
    std::copy(gr.grad_last_state + (b * d.dim + c0) * N, gr.grad_last_state + (b * d.dim + c1) * N, carry.begin());
  const T* Bsel = d.selective_B ? a.B + (b * d.groups + g) * N * L : nullptr;
  const T* Csel = d.selective_C ? a.C + (b * d.groups + g) * N * L : nullptr;
  T* dBsel = d.selective_B ? item_partial : nullptr;
  T* dCsel = d.selective_C ? item_partial + (d.selective_B ? N * L : 0) : nullptr;
  for (int64_t c = chunks - 1; c >= 0; --c) {
    const int64_t t0 = c * kScanChunk, len = std::min(kScanChunk, L - t0);
    if (Bsel) transpose_chunk(Bsel, N, L, t0, len, Btile.data());
    if (Csel) transpose_chunk(Csel, N, L, t0, len, Ctile.data());
    std::fill(dBtile.begin(), dBtile.end(), T(0));
    std::fill(dCtile.begin(), dCtile.end(), T(0));
    for (int64_t ch = c0; ch < c1; ++ch) {
      const int64_t row = b * d.dim + ch;
      T* part = gr.channel + row * P;  // dA (N), dB (N), dC (N), dD, dδ_bias
      const InputRows<T> Bt = Bsel ? InputRows<T>{Btile.data(), N} : InputRows<T>{a.B + ch * N, 0};
      const InputRows<T> Ct = Csel ? InputRows<T>{Ctile.data(), N} : InputRows<T>{a.C + ch * N, 0};
      T* dBrow = Bsel ? dBtile.data() : part + N;
      T* dCrow = Csel ? dCtile.data() : part + 2 * N;
      const int64_t dB_step = Bsel ? N : 0, dC_step = Csel ? N : 0;
      const T* u = a.u + row * L + t0;
      const T* A = a.A + ch * N;
      // Recompute the chunk's states from the previous checkpoint: H[t + 1] = h_{t0 + t}.
      if (c == 0) {
        std::fill(H.begin(), H.begin() + N, T(0));
      } else {
        std::copy(gr.checkpoints + (row * chunks + c - 1) * N, gr.checkpoints + (row * chunks + c) * N, H.begin());
      }
      chunk_delta(a, row, ch, t0, len, dt.data(), pre.data());
      chunk_discretize(A, dt.data(), u, Bt, len, N, dA.data(), dBu.data());
      for (int64_t t = 0; t < len; ++t) {
        const T* __restrict__ ea = dA.data() + t * N;
        const T* __restrict__ eb = dBu.data() + t * N;
        const T* __restrict__ hp = H.data() + t * N;
        T* __restrict__ hn = H.data() + (t + 1) * N;
#pragma omp simd
        for (int64_t n = 0; n < N; ++n) hn[n] = ea[n] * hp[n] + eb[n];
      }
      const T Dd = a.D ? a.D[ch] : T(0);
      const T* gout = gr.grad_out + row * L + t0;
      const T* z = a.z ? a.z + row * L + t0 : nullptr;
      T* du = gr.du + row * L + t0;
      T* ddelta = gr.ddelta + row * L + t0;
      T* dz = gr.dz ? gr.dz + row * L + t0 : nullptr;
      T* __restrict__ gcarry = carry.data() + (ch - c0) * N;
      T* __restrict__ dA_acc = part;
      T dD_acc = 0, dbias_acc = 0;
      // σ(z) and the softplus derivative σ(δ + bias) (1 above torch's threshold 20), vectorized.
      if (z) {
#pragma omp simd
        for (int64_t t = 0; t < len; ++t) gate[t] = sigmoid(z[t]);
      }
      if (a.softplus) {
#pragma omp simd
        for (int64_t t = 0; t < len; ++t) slope[t] = pre[t] > T(20) ? T(1) : sigmoid(pre[t]);
      }
      for (int64_t t = len - 1; t >= 0; --t) {
        const T* __restrict__ cr = Ct.at(t);
        const T* __restrict__ br = Bt.at(t);
        const T* __restrict__ ea = dA.data() + t * N;
        const T* __restrict__ hp = H.data() + t * N;
        const T* __restrict__ hn = H.data() + (t + 1) * N;
        T dy = gout[t];
        if (z) {
          T y = 0;
#pragma omp simd reduction(+ : y)
          for (int64_t n = 0; n < N; ++n) y += cr[n] * hn[n];
          y += Dd * u[t];
          const T s = gate[t];
          dz[t] = dy * y * s * (T(1) + z[t] * (T(1) - s));
          dy *= z[t] * s;
        }
        const T step = dt[t], su = step * u[t];
        T* __restrict__ dBr = dBrow + t * dB_step;
        T* __restrict__ dCr = dCrow + t * dC_step;
        T sA = 0, sB = 0;
#pragma omp simd reduction(+ : sA, sB)
        for (int64_t n = 0; n < N; ++n) {
          const T gn = dy * cr[n] + gcarry[n];
          dCr[n] += dy * hn[n];
          const T w = gn * ea[n] * hp[n];
          sA += w * A[n];
          dA_acc[n] += w * step;
          sB += gn * br[n];
          dBr[n] += gn * su;
          gcarry[n] = ea[n] * gn;
        }
        du[t] = dy * Dd + step * sB;
        const T ddt = sA + u[t] * sB;
        const T dpre = a.softplus ? ddt * slope[t] : ddt;
        ddelta[t] = dpre;
        dbias_acc += dpre;
        dD_acc += dy * u[t];
      }
      part[3 * N] += dD_acc;
      part[3 * N + 1] += dbias_acc;
    }
    // The item's selective gradients for this chunk, back to (N, L).
    for (int64_t n = 0; n < N; ++n)
      for (int64_t t = 0; t < len; ++t) {
        if (dBsel) dBsel[n * L + t0 + t] = dBtile[t * N + n];
        if (dCsel) dCsel[n * L + t0 + t] = dCtile[t * N + n];
      }
  }
}

template <class T>
void scan_backward(const ScanArgs<T>& a, const ScanGrads<T>& gr, int64_t slices, T* dA, T* dB, T* dC, T* dD,
                   T* dbias) {
  const ScanDims& d = a.d;
  const int64_t N = d.states, L = d.length, P = channel_partials(d), IP = item_partials(d);
  std::fill(gr.channel, gr.channel + d.batch * d.dim * P, T(0));
  for_each_scan_item(d, slices, [&](int64_t i, int64_t b, int64_t g, int64_t c0, int64_t c1) {
    scan_backward_item(a, gr, b, g, c0, c1, gr.item + i * IP);
  });
  // Sums over batch of the per-channel partials, in batch order.
  parallel_for(d.dim, 64, [&](int, int64_t c0, int64_t c1) {
    for (int64_t ch = c0; ch < c1; ++ch) {
      for (int64_t k = 0; k < P; ++k) {
        T s = 0;
        for (int64_t b = 0; b < d.batch; ++b) s += gr.channel[(b * d.dim + ch) * P + k];
        if (k < N) dA[ch * N + k] = s;
        else if (k < 2 * N) { if (!d.selective_B) dB[ch * N + k - N] = s; }
        else if (k < 3 * N) { if (!d.selective_C) dC[ch * N + k - 2 * N] = s; }
        else if (k == 3 * N) { if (dD) dD[ch] = s; }
        else if (dbias) dbias[ch] = s;
      }
    }
  });
  // Selective dB, dC: sum of the group's slices, in slice order.
  if (IP) {
    parallel_for(d.batch * d.groups, 1, [&](int, int64_t bg0, int64_t bg1) {
      for (int64_t bg = bg0; bg < bg1; ++bg) {
        const T* first = gr.item + bg * slices * IP;
        int64_t offset = 0;
        for (T* out : {d.selective_B ? dB : nullptr, d.selective_C ? dC : nullptr}) {
          if (!out) continue;
          T* o = out + bg * N * L;
          std::copy(first + offset, first + offset + N * L, o);
          for (int64_t s = 1; s < slices; ++s) {
            const T* p = first + s * IP + offset;
#pragma omp simd
            for (int64_t k = 0; k < N * L; ++k) o[k] += p[k];
          }
          offset += N * L;
        }
      }
    });
  }
}

// ---------------------------------------------------------------------------------- causal conv1d

// x̃[i] for i in [−(W−1), L): the initial state (or zero) before the sequence.
template <class T>
struct PaddedRow {
  const T* x;
  const T* init;  // (W − 1) or null
  int64_t W;
  T at(int64_t i) const { return i >= 0 ? x[i] : (init ? init[W - 1 + i] : T(0)); }
};

template <class T>
T silu(T v) {
  return v / (T(1) + exp_approx(-v));
}

template <class T>
void conv_forward_row(PaddedRow<T> row, const T* __restrict__ w, T bias, int64_t L, bool act, T* __restrict__ y) {
  const int64_t W = row.W, head = std::min(L, W - 1);
  for (int64_t t = 0; t < head; ++t) {  // outputs that reach into the initial state
    T acc = bias;
    for (int64_t k = 0; k < W; ++k) acc += w[k] * row.at(t - (W - 1) + k);
    y[t] = acc;
  }
  const T* __restrict__ x = row.x;
  const T w0 = w[0], w1 = w[1], w2 = W > 2 ? w[2] : T(0), w3 = W > 3 ? w[3] : T(0);
  // y[t] = bias + Σ_k w[k]·x[t − (W − 1) + k]; the missing taps of narrower kernels weigh zero.
  const int64_t s = W - 1;
#pragma omp simd
  for (int64_t t = head; t < L; ++t) {
    T acc = bias + w0 * x[t - s] + w1 * x[t - s + 1];
    if (W > 2) acc += w2 * x[t - s + 2];
    if (W > 3) acc += w3 * x[t - s + 3];
    y[t] = acc;
  }
  if (act) {
#pragma omp simd
    for (int64_t t = 0; t < L; ++t) y[t] = silu(y[t]);
  }
}

template <class T>
void conv_forward(const T* x, const T* w, const T* bias, const T* init, bool act, ConvDims d, T* y, T* final_state) {
  const int64_t W = d.width, L = d.length;
  parallel_for(d.batch * d.dim, std::max<int64_t>(1, 8192 / std::max<int64_t>(1, L)), [&](int, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t ch = r % d.dim;
      const PaddedRow<T> row{x + r * L, init ? init + r * (W - 1) : nullptr, W};
      conv_forward_row(row, w + ch * W, bias ? bias[ch] : T(0), L, act, y + r * L);
      if (final_state)
        for (int64_t j = 0; j < W - 1; ++j) final_state[r * (W - 1) + j] = row.at(L - (W - 1) + j);
    }
  });
}

template <class T>
void conv_backward(const T* dy, const T* dfinal, const T* x, const T* w, const T* bias, const T* init, bool act,
                   ConvDims d, T* dx,
                   T* dw, T* dbias, T* dinit, double* partials) {
  const int64_t W = d.width, L = d.length, P = W + 1;
  parallel_for(d.batch * d.dim, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, L)), [&](int, int64_t r0, int64_t r1) {
    std::vector<T> g(L);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t ch = r % d.dim;
      const PaddedRow<T> row{x + r * L, init ? init + r * (W - 1) : nullptr, W};
      const T* wr = w + ch * W;
      // g = ∂L/∂(pre-activation)
      if (act) {
        conv_forward_row(row, wr, bias ? bias[ch] : T(0), L, false, g.data());
        const T* __restrict__ go = dy + r * L;
#pragma omp simd
        for (int64_t t = 0; t < L; ++t) {
          const T s = T(1) / (T(1) + exp_approx(-g[t]));
          g[t] = go[t] * s * (T(1) + g[t] * (T(1) - s));
        }
      } else {
        std::copy(dy + r * L, dy + (r + 1) * L, g.begin());
      }
      // dx̃[p] = Σ_k w[k]·g[p − k] over 0 ≤ p − k < L, p the index into x̃ (x starts at W − 1).
      T* __restrict__ dxr = dx + r * L;
      for (int64_t i = 0; i < L; ++i) {
        const int64_t p = i + W - 1;
        T acc = 0;
        for (int64_t k = 0; k < W; ++k)
          if (p - k < L) acc += wr[k] * g[p - k];
        dxr[i] = acc;
      }
      if (dinit)
        for (int64_t j = 0; j < W - 1; ++j) {
          T acc = 0;
          for (int64_t k = 0; k <= j; ++k)
            if (j - k < L) acc += wr[k] * g[j - k];
          dinit[r * (W - 1) + j] = acc;
        }
      if (dfinal)  // final_state[j] = x̃[L + j], i.e. x[L + j − (W − 1)] or the initial state before it
        for (int64_t j = 0; j < W - 1; ++j) {
          const int64_t i = L + j - (W - 1);
          if (i >= 0) dxr[i] += dfinal[r * (W - 1) + j];
          else if (dinit) dinit[r * (W - 1) + W - 1 + i] += dfinal[r * (W - 1) + j];
        }
      double* part = partials + r * P;
      for (int64_t k = 0; k < W; ++k) {
        double acc = 0;
        const int64_t shift = k - (W - 1);  // x̃ index of tap k at output t is t + shift
        for (int64_t t = 0; t < std::min<int64_t>(L, -shift); ++t) acc += double(g[t]) * row.at(t + shift);
        const T* __restrict__ xs = row.x;
#pragma omp simd reduction(+ : acc)
        for (int64_t t = std::max<int64_t>(0, -shift); t < L; ++t) acc += double(g[t]) * xs[t + shift];
        part[k] = acc;
      }
      double sum = 0;
#pragma omp simd reduction(+ : sum)
      for (int64_t t = 0; t < L; ++t) sum += g[t];
      part[W] = sum;
    }
  });
  for (int64_t ch = 0; ch < d.dim; ++ch)
    for (int64_t k = 0; k < P; ++k) {
      double s = 0;
      for (int64_t b = 0; b < d.batch; ++b) s += partials[(b * d.dim + ch) * P + k];
      if (k < W) dw[ch * W + k] = static_cast<T>(s);
      else if (dbias) dbias[ch] = static_cast<T>(s);
    }
}

// ------------------------------------------------------------------------------------ S4D kernel
//
// Per channel h and state n (complex): a = Δ·A, E = e^a, C' = C·(E − 1)/A;  K[l] = 2·Re Σ_n C'·e^{l·a}.
// Backward with δx = ∂L/∂x for holomorphic intermediates (dL = Re Σ δx·dx), so that a real or
// imaginary part's gradient is Re δx or −Im δx:
//   δC' = 2·Σ_l gK_l·e^{l·a},  δa = 2·C'·Σ_l gK_l·l·e^{l·a} + δC'·C/A·E,
//   δC = δC'·(E − 1)/A,  δA = −δC'·C·(E − 1)/A² + δa·Δ,  ∂L/∂log Δ = Δ·Re Σ_n δa·A.

template <class T>
void s4d_forward(const T* log_dt, const T* Ar, const T* Ai, const T* Cr, const T* Ci, VandermondeDims d, T* K) {
  using cx = std::complex<T>;
  const int64_t N = d.states, L = d.length;
  parallel_for(d.channels, 1, [&](int, int64_t h0, int64_t h1) {
    std::vector<T> Kh(L);
    for (int64_t h = h0; h < h1; ++h) {
      const T dt = std::exp(log_dt[h]);
      std::fill(Kh.begin(), Kh.end(), T(0));
      for (int64_t n = 0; n < N; ++n) {
        const cx A(Ar[h * N + n], Ai[h * N + n]), C(Cr[h * N + n], Ci[h * N + n]);
        const cx a = dt * A;
        const cx Cp = C * (std::exp(a) - T(1)) / A;
        for (int64_t l = 0; l < L; ++l) {
          const T mag = std::exp(T(l) * a.real()), phase = T(l) * a.imag();
          Kh[l] += T(2) * mag * (Cp.real() * std::cos(phase) - Cp.imag() * std::sin(phase));
        }
      }
      std::copy(Kh.begin(), Kh.end(), K + h * L);
    }
  });
}

template <class T>
void s4d_backward(const T* gK, const T* log_dt, const T* Ar, const T* Ai, const T* Cr, const T* Ci,
                  VandermondeDims d, T* dlog_dt, T* dAr, T* dAi, T* dCr, T* dCi) {
  using cx = std::complex<T>;
  const int64_t N = d.states, L = d.length;
  parallel_for(d.channels, 1, [&](int, int64_t h0, int64_t h1) {
    for (int64_t h = h0; h < h1; ++h) {
      const T dt = std::exp(log_dt[h]);
      const T* g = gK + h * L;
      cx ddt(0);
      for (int64_t n = 0; n < N; ++n) {
        const int64_t i = h * N + n;
        const cx A(Ar[i], Ai[i]), C(Cr[i], Ci[i]);
        const cx a = dt * A, E = std::exp(a);
        const cx Cp = C * (E - T(1)) / A;
        cx S(0), S1(0);  // Σ_l g_l·e^{la}, Σ_l g_l·l·e^{la}
        for (int64_t l = 0; l < L; ++l) {
          const T mag = std::exp(T(l) * a.real()), phase = T(l) * a.imag();
          const cx p(mag * std::cos(phase), mag * std::sin(phase));
          S += g[l] * p;
          S1 += (g[l] * T(l)) * p;
        }
        const cx dCp = T(2) * S;
        const cx da = T(2) * Cp * S1 + dCp * C / A * E;
        const cx dC = dCp * (E - T(1)) / A;
        const cx dA = -dCp * C * (E - T(1)) / (A * A) + da * dt;
        ddt += da * A;
        dAr[i] = dA.real();
        dAi[i] = -dA.imag();
        dCr[i] = dC.real();
        dCi[i] = -dC.imag();
      }
      dlog_dt[h] = dt * ddt.real();
    }
  });
}

// ---------------------------------------------------------------------------------------- Cauchy
//
// out_l = Σ_n v_n/(z_l − w_n). With G_l = g_re + i·g_im the output gradient, dL = Re Σ_l conj(G_l)·d out_l,
// so (∂/∂Re + i·∂/∂Im) of L is  dv_n = Σ_l G_l / conj(z_l − w_n),  dw_n = Σ_l G_l·conj(v_n/(z_l − w_n)²).

template <class T>
void cauchy_forward_kernel(const T* vr, const T* vi, const T* zr, const T* zi, const T* wr, const T* wi, CauchyDims d,
                           T* out_r, T* out_i) {
  const int64_t N = d.poles, L = d.nodes;
  parallel_for(d.rows * L, 256, [&](int, int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t h = i / L, l = i % L;
      const T* a = vr + h * N;
      const T* b = vi + h * N;
      const T* pr = wr + h * N;
      const T* pi = wi + h * N;
      const T x = zr[l], y = zi[l];
      T sr = 0, si = 0;
#pragma omp simd reduction(+ : sr, si)
      for (int64_t n = 0; n < N; ++n) {
        const T dr = x - pr[n], di = y - pi[n], inv = T(1) / (dr * dr + di * di);
        // v / d = v·conj(d)/|d|²
        sr += (a[n] * dr + b[n] * di) * inv;
        si += (b[n] * dr - a[n] * di) * inv;
      }
      out_r[i] = sr;
      out_i[i] = si;
    }
  });
}

template <class T>
void cauchy_backward_kernel(const T* gr, const T* gi, const T* vr, const T* vi, const T* zr, const T* zi, const T* wr,
                            const T* wi, CauchyDims d, T* dvr, T* dvi, T* dwr, T* dwi) {
  const int64_t N = d.poles, L = d.nodes;
  parallel_for(d.rows * N, 16, [&](int, int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t h = i / N;
      const T* g_re = gr + h * L;
      const T* g_im = gi + h * L;
      const T pr = wr[i], pi = wi[i];
      T s1r = 0, s1i = 0, s2r = 0, s2i = 0;  // Σ G/conj(d), Σ G/conj(d)²
#pragma omp simd reduction(+ : s1r, s1i, s2r, s2i)
      for (int64_t l = 0; l < L; ++l) {
        const T dr = zr[l] - pr, di = zi[l] - pi, inv = T(1) / (dr * dr + di * di);
        // 1/conj(d) = d/|d|²
        const T qr = dr * inv, qi = di * inv;
        const T q2r = qr * qr - qi * qi, q2i = 2 * qr * qi;
        s1r += g_re[l] * qr - g_im[l] * qi;
        s1i += g_re[l] * qi + g_im[l] * qr;
        s2r += g_re[l] * q2r - g_im[l] * q2i;
        s2i += g_re[l] * q2i + g_im[l] * q2r;
      }
      dvr[i] = s1r;
      dvi[i] = s1i;
      // dw = conj(v)·Σ G/conj(d)²
      dwr[i] = vr[i] * s2r + vi[i] * s2i;
      dwi[i] = vr[i] * s2i - vi[i] * s2r;
    }
  });
}

}  // namespace

// ------------------------------------------------------------------------------- entry points

template <>
void cauchy_forward<DeviceType::CPU>(const TensorView& v_real, const TensorView& v_imag, const TensorView& z_real,
                                     const TensorView& z_imag, const TensorView& w_real, const TensorView& w_imag,
                                     const TensorView& out_real, const TensorView& out_imag, std::uintptr_t) {
  const CauchyDims d =
      check_cauchy_forward(DeviceType::CPU, v_real, v_imag, z_real, z_imag, w_real, w_imag, out_real, out_imag);
  dispatch_cpu_floating(v_real.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    cauchy_forward_kernel(v_real.data_as<T>(), v_imag.data_as<T>(), z_real.data_as<T>(), z_imag.data_as<T>(),
                          w_real.data_as<T>(), w_imag.data_as<T>(), d, out_real.data_as<T>(), out_imag.data_as<T>());
  });
}

template <>
void cauchy_backward<DeviceType::CPU>(const TensorView& grad_real, const TensorView& grad_imag,
                                      const TensorView& v_real, const TensorView& v_imag, const TensorView& z_real,
                                      const TensorView& z_imag, const TensorView& w_real, const TensorView& w_imag,
                                      const TensorView& dv_real, const TensorView& dv_imag,
                                      const TensorView& dw_real, const TensorView& dw_imag, std::uintptr_t) {
  const CauchyDims d = check_cauchy_backward(DeviceType::CPU, grad_real, grad_imag, v_real, v_imag, z_real, z_imag,
                                             w_real, w_imag, dv_real, dv_imag, dw_real, dw_imag);
  dispatch_cpu_floating(v_real.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    cauchy_backward_kernel(grad_real.data_as<T>(), grad_imag.data_as<T>(), v_real.data_as<T>(), v_imag.data_as<T>(),
                           z_real.data_as<T>(), z_imag.data_as<T>(), w_real.data_as<T>(), w_imag.data_as<T>(), d,
                           dv_real.data_as<T>(), dv_imag.data_as<T>(), dw_real.data_as<T>(), dw_imag.data_as<T>());
  });
}

template <>
void selective_scan_forward<DeviceType::CPU>(const TensorView& u, const TensorView& delta, const TensorView& A,
                                             const TensorView& B, const TensorView& C, const OptView& D_skip,
                                             const OptView& z, const OptView& delta_bias, bool delta_softplus,
                                             const TensorView& out, const OptView& checkpoints, std::uintptr_t) {
  const ScanDims d =
      check_selective_scan_forward(DeviceType::CPU, u, delta, A, B, C, D_skip, z, delta_bias, out, checkpoints);
  dispatch_cpu_floating(u.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const ScanArgs<T> a{u.data_as<T>(), delta.data_as<T>(), A.data_as<T>(), B.data_as<T>(), C.data_as<T>(),
                        ptr_or_null<T>(D_skip), ptr_or_null<T>(z), ptr_or_null<T>(delta_bias), delta_softplus, d};
    scan_forward(a, out.data_as<T>(), ptr_or_null<T>(checkpoints));
  });
}

namespace {
ScanDims workspace_dims(const TensorView& u, const TensorView& A, const TensorView& B, const TensorView& C) {
  ScanDims d{u.ndim == 3 ? u.size(0) : 0, u.ndim == 3 ? u.size(1) : 0, u.ndim == 3 ? u.size(2) : 0,
             A.ndim == 2 ? A.size(1) : 0, 1, B.ndim == 4, C.ndim == 4};
  if (B.ndim == 4) d.groups = B.size(1);
  else if (C.ndim == 4) d.groups = C.size(1);
  if (d.groups < 1 || d.dim % d.groups != 0) d.groups = 1;  // validation rejects it, naming the argument
  return d;
}
int64_t scan_workspace_bytes(const ScanDims& d, int64_t slices, DType dtype) {
  return scan_workspace_elements(d, slices) * (dtype == DType::Float64 ? 8 : 4);
}
}  // namespace

template <>
int64_t selective_scan_backward_workspace_size<DeviceType::CPU>(const TensorView& u, const TensorView& A,
                                                                const TensorView& B, const TensorView& C) {
  const ScanDims d = workspace_dims(u, A, B, C);
  if (d.batch * d.dim == 0) return 0;
  return scan_workspace_bytes(d, desired_slices(d), u.dtype);
}

template <>
void selective_scan_backward<DeviceType::CPU>(
    const TensorView& grad_out, const TensorView& u, const TensorView& delta, const TensorView& A,
    const TensorView& B, const TensorView& C, const OptView& D_skip, const OptView& z, const OptView& delta_bias,
    bool delta_softplus, const TensorView& checkpoints, const OptView& grad_last_state, const TensorView& du, const TensorView& ddelta,
    const TensorView& dA, const TensorView& dB, const TensorView& dC, const OptView& dD, const OptView& dz,
    const OptView& ddelta_bias, const OptView& workspace, std::uintptr_t) {
  const ScanDims wd = workspace_dims(u, A, B, C);
  const int64_t minimum = wd.batch * wd.dim == 0 ? 0 : scan_workspace_bytes(wd, 1, u.dtype);
  const ScanDims d = check_selective_scan_backward(DeviceType::CPU, grad_out, u, delta, A, B, C, D_skip, z,
                                                   delta_bias, checkpoints, grad_last_state, du, ddelta, dA, dB, dC, dD, dz,
                                                   ddelta_bias, workspace, minimum);
  dispatch_cpu_floating(u.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (d.batch * d.dim == 0 || d.length == 0) {  // nothing flows: every gradient is zero
      for (const TensorView* v : {&du, &ddelta, &dA, &dB, &dC})
        std::fill(v->data_as<T>(), v->data_as<T>() + v->numel(), T(0));
      for (const OptView* v : {&dD, &dz, &ddelta_bias})
        if (*v) std::fill((*v)->data_as<T>(), (*v)->data_as<T>() + (*v)->numel(), T(0));
      return;
    }
    // As many slices as the workspace holds (at least one), up to the thread-based choice.
    const int64_t available = workspace->numel() / static_cast<int64_t>(sizeof(T));
    const int64_t fixed = d.batch * d.dim * channel_partials(d), per_slice = d.batch * d.groups * item_partials(d);
    int64_t slices = desired_slices(d);
    if (per_slice > 0) slices = std::max<int64_t>(1, std::min(slices, (available - fixed) / per_slice));
    const ScanArgs<T> a{u.data_as<T>(), delta.data_as<T>(), A.data_as<T>(), B.data_as<T>(), C.data_as<T>(),
                        ptr_or_null<T>(D_skip), ptr_or_null<T>(z), ptr_or_null<T>(delta_bias), delta_softplus, d};
    T* ws = workspace->data_as<T>();
    const ScanGrads<T> gr{grad_out.data_as<T>(), checkpoints.data_as<T>(), ptr_or_null<T>(grad_last_state), du.data_as<T>(), ddelta.data_as<T>(),
                          ptr_or_null<T>(dz), ws, ws + fixed};
    scan_backward(a, gr, slices, dA.data_as<T>(), dB.data_as<T>(), dC.data_as<T>(), ptr_or_null<T>(dD),
                  ptr_or_null<T>(ddelta_bias));
  });
}

template <>
void causal_conv1d_forward<DeviceType::CPU>(const TensorView& x, const TensorView& weight, const OptView& bias,
                                            const OptView& initial_state, int activation, const TensorView& y,
                                            const OptView& final_state, std::uintptr_t) {
  const ConvDims d = check_causal_conv1d_forward(DeviceType::CPU, x, weight, bias, initial_state, y, final_state);
  Checker("causal_conv1d_forward", DeviceType::CPU)
      .value(activation == 0 || activation == 1, "activation", "None or 'silu'", activation);
  dispatch_cpu_floating(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    conv_forward(x.data_as<T>(), weight.data_as<T>(), ptr_or_null<T>(bias), ptr_or_null<T>(initial_state),
                 activation == 1, d, y.data_as<T>(), ptr_or_null<T>(final_state));
  });
}

template <>
int64_t causal_conv1d_backward_workspace_size<DeviceType::CPU>(const TensorView& x, const TensorView& weight) {
  if (x.ndim != 3 || weight.ndim != 2) return 0;
  return x.size(0) * x.size(1) * (weight.size(1) + 1) * static_cast<int64_t>(sizeof(double));
}

template <>
void causal_conv1d_backward<DeviceType::CPU>(const TensorView& grad_y, const TensorView& x, const TensorView& weight,
                                             const OptView& bias, const OptView& initial_state, int activation,
                                             const OptView& grad_final_state, const TensorView& dx, const TensorView& dweight, const OptView& dbias,
                                             const OptView& dinitial_state, const OptView& workspace,
                                             std::uintptr_t) {
  const ConvDims d = check_causal_conv1d_backward(DeviceType::CPU, grad_y, x, weight, bias, initial_state, grad_final_state, dx,
                                                  dweight, dbias, dinitial_state, workspace,
                                                  causal_conv1d_backward_workspace_size<DeviceType::CPU>(x, weight));
  Checker("causal_conv1d_backward", DeviceType::CPU)
      .value(activation == 0 || activation == 1, "activation", "None or 'silu'", activation);
  dispatch_cpu_floating(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    conv_backward(grad_y.data_as<T>(), ptr_or_null<T>(grad_final_state), x.data_as<T>(), weight.data_as<T>(), ptr_or_null<T>(bias),
                  ptr_or_null<T>(initial_state), activation == 1, d, dx.data_as<T>(), dweight.data_as<T>(),
                  ptr_or_null<T>(dbias), ptr_or_null<T>(dinitial_state),
                  workspace ? workspace->data_as<double>() : nullptr);
  });
}

template <>
void s4d_kernel_forward<DeviceType::CPU>(const TensorView& log_dt, const TensorView& A_real, const TensorView& A_imag,
                                         const TensorView& C_real, const TensorView& C_imag, const TensorView& K,
                                         std::uintptr_t) {
  const VandermondeDims d = check_s4d_kernel_forward(DeviceType::CPU, log_dt, A_real, A_imag, C_real, C_imag, K);
  dispatch_cpu_floating(log_dt.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    s4d_forward(log_dt.data_as<T>(), A_real.data_as<T>(), A_imag.data_as<T>(), C_real.data_as<T>(),
                C_imag.data_as<T>(), d, K.data_as<T>());
  });
}

template <>
void s4d_kernel_backward<DeviceType::CPU>(const TensorView& grad_K, const TensorView& log_dt,
                                          const TensorView& A_real, const TensorView& A_imag,
                                          const TensorView& C_real, const TensorView& C_imag,
                                          const TensorView& dlog_dt, const TensorView& dA_real,
                                          const TensorView& dA_imag, const TensorView& dC_real,
                                          const TensorView& dC_imag, std::uintptr_t) {
  const VandermondeDims d = check_s4d_kernel_backward(DeviceType::CPU, grad_K, log_dt, A_real, A_imag, C_real,
                                                      C_imag, dlog_dt, dA_real, dA_imag, dC_real, dC_imag);
  dispatch_cpu_floating(log_dt.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    s4d_backward(grad_K.data_as<T>(), log_dt.data_as<T>(), A_real.data_as<T>(), A_imag.data_as<T>(),
                 C_real.data_as<T>(), C_imag.data_as<T>(), d, dlog_dt.data_as<T>(), dA_real.data_as<T>(),
                 dA_imag.data_as<T>(), dC_real.data_as<T>(), dC_imag.data_as<T>());
  });
}

}  // namespace replearn::ssm
