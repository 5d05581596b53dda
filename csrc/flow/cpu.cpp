// Flow family, CPU kernels (float32 and float64). The formulas are in flow.h and math.h.
//
// The elementwise ops (coupling, actnorm) make one pass over memory: each output element and its
// gradient come from one read of the inputs, and the per-sample logdet or per-channel parameter
// gradient is reduced (in double) in the same pass, in a fixed order. The 1×1 convolution is a GEMM
// per sample through core/gemm; its inverse is the triangular solve written out on whole rows of a
// sample's (C, S) block, so every inner loop is a contiguous axpy over S. The planar flow is a pair
// of dot products per sample plus a scalar solve in double for its inverse.
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "core/dispatch.h"
#include "core/gemm.h"
#include "core/memory.h"
#include "core/parallel.h"
#include "flow/flow.h"
#include "flow/math.h"

namespace replearn::flow {

namespace {

constexpr int64_t kGrainElements = 1 << 13;  // ~32 KiB of float32 per parallel chunk at least

int64_t grain_for(int64_t per_item) { return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, per_item)); }

template <class T>
T* ptr_or_null(const OptView& v) {
  return v ? v->data_as<T>() : nullptr;
}

struct Load {  // parameters read as double (math.h's invconv helpers)
  template <class T>
  double operator()(const T* p, int64_t i) const { return static_cast<double>(p[i]); }
};

// ================================================================================ affine coupling

constexpr int64_t kSumBlock = 512;

// The inner loops take no pointer that may be null: an absent shift reads one row of zeros for every
// sample (row stride 0), an absent mask a row of zero bytes, and an absent log_scale (additive
// coupling) is a template flag, so each loop is one straight-line body that the compiler vectorizes
// (with core/vmath.h's exp).
template <class T>
struct CouplingRows {
  std::vector<T> zeros;
  std::vector<uint8_t> no_mask;
  const T* shift;
  int64_t shift_stride;
  const uint8_t* mask;
  CouplingRows(int64_t n, const T* shift_in, const bool* mask_in)
      : zeros(shift_in ? 0 : n), no_mask(mask_in ? 0 : n), shift(shift_in ? shift_in : zeros.data()),
        shift_stride(shift_in ? n : 0),
        mask(mask_in ? reinterpret_cast<const uint8_t*>(mask_in) : no_mask.data()) {}
};

// The mask enters the loops as whole-lane bit patterns (all ones where the element is passed
// through) and selects with bit operations. Written as `keep ? a : b`, GCC compiles the select to
// AVX-512 masked loads of b's inputs (only the lanes it needs), and masked loads that miss the
// cache ran ~3× slower than full ones here (AMD Zen 5; coupling forward, one thread, inputs in
// DRAM: 2.7 ms with the select, 1.0 ms with bit operations, 0.9 ms without a mask); bit operations
// make every input a full load. Passed-through elements still come out exactly as x.
template <class T>
using LaneBits = std::conditional_t<sizeof(T) == 8, uint64_t, uint32_t>;

template <class T>
inline LaneBits<T> lane_mask(uint8_t keep) {  // keep ∈ {0, 1} → all zeros or all ones
  return LaneBits<T>{0} - LaneBits<T>{keep};
}

template <class T>
inline T kept_or(LaneBits<T> keep, T kept, T other) {  // keep ? kept : other, lane-wise
  using U = LaneBits<T>;
  return __builtin_bit_cast(T, (__builtin_bit_cast(U, kept) & keep) | (__builtin_bit_cast(U, other) & ~keep));
}

template <class T>
inline T zero_if_kept(LaneBits<T> keep, T v) {  // keep ? 0 : v, lane-wise
  return __builtin_bit_cast(T, __builtin_bit_cast(LaneBits<T>, v) & ~keep);
}

// One sample's row: y and Σ log σ over the transformed entries. The direction is a template
// constant (a select between the two inside the loop kept GCC from vectorizing it), and the logdet
// is summed in T over blocks of kSumBlock values, the blocks in double (a double reduction inside
// the loop did too).
template <class T, Scale S, bool kScaled, bool kReverse>
double coupling_forward_row(int64_t n, const T* __restrict__ xr, const T* __restrict__ tr, const T* __restrict__ sr,
                            const uint8_t* __restrict__ mask, T* __restrict__ yr) {
  double sum = 0;
  for (int64_t j0 = 0; j0 < n; j0 += kSumBlock) {
    const int64_t j1 = std::min(n, j0 + kSumBlock);
    T block = T(0);
#pragma omp simd reduction(+ : block)
    for (int64_t j = j0; j < j1; ++j) {
      T dlog = T(0);
      const T ls = kScaled ? coupling_log_sigma<S>(sr[j], dlog) : T(0);
      // forward x·σ + t; reverse (x − t)/σ = (x − t)·e^{−log σ}
      T out;
      if constexpr (kReverse) out = (xr[j] - tr[j]) * (kScaled ? fexp(-ls) : T(1));
      else out = xr[j] * (kScaled ? fexp(ls) : T(1)) + tr[j];
      const LaneBits<T> keep = lane_mask<T>(mask[j]);
      yr[j] = kept_or(keep, xr[j], out);
      block += zero_if_kept(keep, ls);
    }
    sum += static_cast<double>(block);
  }
  return sum;
}

template <class T, Scale S, bool kScaled>
void coupling_forward_rows(RowDims d, const T* x, const CouplingRows<T>& rows, const T* log_scale, bool reverse,
                           T* y, T* logdet) {
  const int64_t n = d.features;
  parallel_for(d.batch, grain_for(n), [&](int, int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const T* xr = x + b * n;
      const T* tr = rows.shift + b * rows.shift_stride;
      const T* sr = kScaled ? log_scale + b * n : xr;  // (unread when not scaled)
      const double sum = reverse ? coupling_forward_row<T, S, kScaled, true>(n, xr, tr, sr, rows.mask, y + b * n)
                                 : coupling_forward_row<T, S, kScaled, false>(n, xr, tr, sr, rows.mask, y + b * n);
      logdet[b] = static_cast<T>(reverse ? -sum : sum);
    }
  });
}

template <class T, Scale S>
void coupling_forward(RowDims d, const T* x, const T* shift, const T* log_scale, const bool* mask, bool reverse,
                      T* y, T* logdet) {
  const CouplingRows<T> rows(d.features, shift, mask);
  if (log_scale) coupling_forward_rows<T, S, true>(d, x, rows, log_scale, reverse, y, logdet);
  else coupling_forward_rows<T, S, false>(d, x, rows, nullptr, reverse, y, logdet);
}

template <class T, Scale S, bool kScaled, bool kReverse>
void coupling_backward_row(int64_t n, T gl, const T* __restrict__ g, const T* __restrict__ xr, const T* __restrict__ tr,
                           const T* __restrict__ sr, const uint8_t* __restrict__ mask, T* __restrict__ dx,
                           T* __restrict__ dt, T* __restrict__ ds) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    T dlog = T(0);
    const T ls = kScaled ? coupling_log_sigma<S>(sr[j], dlog) : T(0);
    const T factor = kScaled ? fexp(kReverse ? -ls : ls) : T(1);  // σ forward, 1/σ reverse
    const T gx = g[j] * factor;
    const T d_shift = kReverse ? -gx : g[j];
    const T d_scale = kReverse ? -dlog * (g[j] * (xr[j] - tr[j]) * factor + gl) : dlog * (g[j] * xr[j] * factor + gl);
    const LaneBits<T> keep = lane_mask<T>(mask[j]);
    dx[j] = kept_or(keep, g[j], gx);
    dt[j] = zero_if_kept(keep, d_shift);
    ds[j] = zero_if_kept(keep, d_scale);
  }
}

// Forward: dx = g·σ, dt = g, ds = δ·(g·x·σ + ḡ); reverse (x' = (y − t)/σ): dy = g/σ, dt = −g/σ,
// ds = −δ·(g·x' + ḡ); masked elements pass g through and get no parameter gradient. Absent outputs
// are written to a per-chunk scratch row instead of being tested for inside the loop.
template <class T, Scale S, bool kScaled>
void coupling_backward_rows(RowDims d, const T* grad_y, const T* grad_logdet, const T* x,
                            const CouplingRows<T>& rows, const T* log_scale, bool reverse, T* grad_x, T* grad_shift,
                            T* grad_log_scale) {
  const int64_t n = d.features;
  parallel_for(d.batch, grain_for(n), [&](int, int64_t b0, int64_t b1) {
    std::vector<T> scratch((grad_x ? 0 : n) + (grad_shift ? 0 : n) + (grad_log_scale ? 0 : n));
    T* spare = scratch.data();
    T* dx_spare = grad_x ? nullptr : spare;
    T* dt_spare = grad_shift ? nullptr : spare + (grad_x ? 0 : n);
    T* ds_spare = grad_log_scale ? nullptr : spare + (grad_x ? 0 : n) + (grad_shift ? 0 : n);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t o = b * n;
      const T* xr = x + o;
      const T* tr = rows.shift + b * rows.shift_stride;
      const T* sr = kScaled ? log_scale + o : xr;  // (unread when not scaled)
      T* dx = grad_x ? grad_x + o : dx_spare;
      T* dt = grad_shift ? grad_shift + o : dt_spare;
      T* ds = grad_log_scale ? grad_log_scale + o : ds_spare;
      if (reverse)
        coupling_backward_row<T, S, kScaled, true>(n, grad_logdet[b], grad_y + o, xr, tr, sr, rows.mask, dx, dt, ds);
      else
        coupling_backward_row<T, S, kScaled, false>(n, grad_logdet[b], grad_y + o, xr, tr, sr, rows.mask, dx, dt, ds);
    }
  });
}

template <class T, Scale S>
void coupling_backward(RowDims d, const T* grad_y, const T* grad_logdet, const T* x, const T* shift,
                       const T* log_scale, const bool* mask, bool reverse, T* grad_x, T* grad_shift,
                       T* grad_log_scale) {
  const CouplingRows<T> rows(d.features, shift, mask);
  if (log_scale)
    coupling_backward_rows<T, S, true>(d, grad_y, grad_logdet, x, rows, log_scale, reverse, grad_x, grad_shift,
                                       grad_log_scale);
  else
    coupling_backward_rows<T, S, false>(d, grad_y, grad_logdet, x, rows, nullptr, reverse, grad_x, grad_shift,
                                        grad_log_scale);
}

// ======================================================================================== actnorm

template <class T>
double sum_log_abs(const T* v, int64_t n) {
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += std::log(std::abs(static_cast<double>(v[i])));
  return sum;
}

template <class T>
void fill_logdet(T* logdet, int64_t batch, double value) {
  for (int64_t b = 0; b < batch; ++b) logdet[b] = static_cast<T>(value);
}

template <class T>
void actnorm_forward_cpu(ChannelDims d, const T* x, const T* scale, const T* bias, bool reverse, T* y, T* logdet) {
  const int64_t planes = d.batch * d.channels, sp = d.spatial;
  parallel_for(planes, grain_for(sp), [&](int, int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t c = p % d.channels;
      const T a = scale[c], bb = bias[c];
      const T* xp = x + p * sp;
      T* yp = y + p * sp;
      if (reverse) {
#pragma omp simd
        for (int64_t i = 0; i < sp; ++i) yp[i] = (xp[i] - bb) / a;
      } else {
#pragma omp simd
        for (int64_t i = 0; i < sp; ++i) yp[i] = a * xp[i] + bb;
      }
    }
  });
  const double ld = static_cast<double>(sp) * sum_log_abs(scale, d.channels);
  fill_logdet(logdet, d.batch, reverse ? -ld : ld);
}

// Forward: dx = g·a, da = Σ g·x + S·Σ_b ḡ/a, db = Σ g. Reverse (x' = (y − b)/a): dy = g/a,
// da = −(Σ g·x' + S·Σ_b ḡ)/a, db = −Σ g/a. The planes (sample, channel) are visited in memory order,
// so the pass streams (a channel-major walk reads runs of one plane, C·S apart, which the prefetcher
// restarts on); each plane's sums go to its own slot and are added per channel in sample order, so
// the result does not depend on the thread count.
template <class T>
void actnorm_backward_cpu(ChannelDims d, const T* grad_y, const T* grad_logdet, const T* x, const T* scale,
                          const T* bias, bool reverse, T* grad_x, T* grad_scale, T* grad_bias) {
  const int64_t sp = d.spatial, planes = d.batch * d.channels;
  double gl_sum = 0;
  for (int64_t b = 0; b < d.batch; ++b) gl_sum += static_cast<double>(grad_logdet[b]);
  std::vector<double> plane_gx(planes), plane_g(planes);
  parallel_for(planes, grain_for(sp), [&](int, int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t c = p % d.channels, o = p * sp;
      const T a = scale[c], bb = bias[c];
      const T* g = grad_y + o;
      const T* xp = x + o;
      // One pass per plane: dx written and the two sums taken together, in T over blocks of
      // kSumBlock values (the blocks added in double), which halves the work of converting every
      // element to double.
      double pgx = 0, pg = 0;
      T* dxp = grad_x ? grad_x + o : nullptr;
      for (int64_t i0 = 0; i0 < sp; i0 += kSumBlock) {
        const int64_t i1 = std::min(sp, i0 + kSumBlock);
        T bgx = T(0), bg = T(0);
        if (reverse) {
          if (dxp) {
#pragma omp simd reduction(+ : bgx, bg)
            for (int64_t i = i0; i < i1; ++i) {
              bgx += g[i] * ((xp[i] - bb) / a);
              bg += g[i];
              dxp[i] = g[i] / a;
            }
          } else {
#pragma omp simd reduction(+ : bgx, bg)
            for (int64_t i = i0; i < i1; ++i) {
              bgx += g[i] * ((xp[i] - bb) / a);
              bg += g[i];
            }
          }
        } else {
          if (dxp) {
#pragma omp simd reduction(+ : bgx, bg)
            for (int64_t i = i0; i < i1; ++i) {
              bgx += g[i] * xp[i];
              bg += g[i];
              dxp[i] = g[i] * a;
            }
          } else {
#pragma omp simd reduction(+ : bgx, bg)
            for (int64_t i = i0; i < i1; ++i) {
              bgx += g[i] * xp[i];
              bg += g[i];
            }
          }
        }
        pgx += static_cast<double>(bgx);
        pg += static_cast<double>(bg);
      }
      plane_gx[p] = pgx;
      plane_g[p] = pg;
    }
  });
  for (int64_t c = 0; c < d.channels; ++c) {
    double sum_gx = 0, sum_g = 0;
    for (int64_t b = 0; b < d.batch; ++b) {
      sum_gx += plane_gx[b * d.channels + c];
      sum_g += plane_g[b * d.channels + c];
    }
    const double ad = static_cast<double>(scale[c]), logdet_term = static_cast<double>(sp) * gl_sum;
    if (grad_scale) grad_scale[c] = static_cast<T>(reverse ? -(sum_gx + logdet_term) / ad : sum_gx + logdet_term / ad);
    if (grad_bias) grad_bias[c] = static_cast<T>(reverse ? -sum_g / ad : sum_g);
  }
}

// ===================================================================================== invconv1x1

// The weight gradient Σ_b g_b x_bᵀ is summed per parallel chunk of samples (each chunk's GEMMs on one
// OpenBLAS thread, as parallel_for_gemm arranges) into its own partial, and the partials are added in
// chunk order: deterministic for a given thread count, and no OpenMP team spinning beside OpenBLAS's
// own threads (which cost 10× on this 2-core machine when the products ran one after another).
constexpr int kWeightGradChunks = 8;

// Workspace layout: pinv (C int64, the inverse permutation) | W (C·C T) | dW partials
// (kWeightGradChunks·C·C T).
template <class T>
struct InvconvScratch {
  int64_t* pinv;
  T* w;
  T* dw;
  InvconvScratch(void* base, int64_t c)
      : pinv(static_cast<int64_t*>(base)), w(reinterpret_cast<T*>(pinv + c)), dw(w + c * c) {}
};

template <class T>
void build_weight(int64_t c, const int64_t* perm, const T* lower, const T* upper, const T* s, T* w) {
  for (int64_t i = 0; i < c; ++i)
    for (int64_t j = 0; j < c; ++j)
      w[i * c + j] = static_cast<T>(invconv_weight<double>(i, j, c, perm, lower, upper, s, Load{}));
}

// x' = W⁻¹ y for one sample's (C, S) block: Pᵀ (row perm[i] of x' is row i of y), then L x'' = x'
// (forward substitution, unit diagonal), then (U + diag(s)) x = x'' (back substitution); each step
// is an axpy over the S contiguous values of a row.
template <class T>
void solve_weight(int64_t c, int64_t sp, const int64_t* perm, const T* lower, const T* upper, const T* s,
                  const T* y, T* x) {
  for (int64_t i = 0; i < c; ++i) std::memcpy(x + perm[i] * sp, y + i * sp, sizeof(T) * sp);
  for (int64_t i = 1; i < c; ++i) {
    T* xi = x + i * sp;
    for (int64_t j = 0; j < i; ++j) {
      const T l = lower[i * c + j];
      const T* xj = x + j * sp;
#pragma omp simd
      for (int64_t p = 0; p < sp; ++p) xi[p] -= l * xj[p];
    }
  }
  for (int64_t i = c - 1; i >= 0; --i) {
    T* xi = x + i * sp;
    for (int64_t j = i + 1; j < c; ++j) {
      const T u = upper[i * c + j];
      const T* xj = x + j * sp;
#pragma omp simd
      for (int64_t p = 0; p < sp; ++p) xi[p] -= u * xj[p];
    }
    const T si = s[i];
#pragma omp simd
    for (int64_t p = 0; p < sp; ++p) xi[p] /= si;
  }
}

// g' = W⁻ᵀ g = P·L⁻ᵀ·Ũ⁻ᵀ g for one sample: Ũᵀ a = g (forward substitution, diagonal s), Lᵀ c = a
// (back substitution, unit diagonal), then g'[i] = c[perm[i]]: c's row k is kept at row pinv[k].
template <class T>
void solve_weight_transposed(int64_t c, int64_t sp, const int64_t* pinv, const T* lower, const T* upper,
                             const T* s, const T* g, T* out) {
  auto row = [&](int64_t k) { return out + pinv[k] * sp; };
  for (int64_t i = 0; i < c; ++i) {
    T* ai = row(i);
    std::memcpy(ai, g + i * sp, sizeof(T) * sp);
    for (int64_t j = 0; j < i; ++j) {
      const T u = upper[j * c + i];
      const T* aj = row(j);
#pragma omp simd
      for (int64_t p = 0; p < sp; ++p) ai[p] -= u * aj[p];
    }
    const T si = s[i];
#pragma omp simd
    for (int64_t p = 0; p < sp; ++p) ai[p] /= si;
  }
  for (int64_t i = c - 2; i >= 0; --i) {
    T* ci = row(i);
    for (int64_t j = i + 1; j < c; ++j) {
      const T l = lower[j * c + i];
      const T* cj = row(j);
#pragma omp simd
      for (int64_t p = 0; p < sp; ++p) ci[p] -= l * cj[p];
    }
  }
}

template <class T>
void invconv_forward_cpu(ChannelDims d, const T* x, const int64_t* perm, const T* lower, const T* upper, const T* s,
                         bool reverse, T* y, T* logdet, void* workspace) {
  const int64_t c = d.channels, sp = d.spatial, block = c * sp;
  if (reverse) {
    parallel_for(d.batch, grain_for(block), [&](int, int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) solve_weight(c, sp, perm, lower, upper, s, x + b * block, y + b * block);
    });
  } else {
    InvconvScratch<T> scratch(workspace, c);
    build_weight(c, perm, lower, upper, s, scratch.w);
    blas::parallel_for_gemm(d.batch, grain_for(c * block), [&](int, int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b)
        blas::gemm<T>(blas::Trans::No, blas::Trans::No, c, sp, c, T(1), scratch.w, c, x + b * block, sp, T(0),
                      y + b * block, sp);
    });
  }
  const double ld = static_cast<double>(sp) * sum_log_abs(s, c);
  fill_logdet(logdet, d.batch, reverse ? -ld : ld);
}

// Forward: dx = Wᵀ g, dW = Σ_b g_b x_bᵀ. Reverse (x' = W⁻¹ y): dy = W⁻ᵀ g, dW = −Σ_b dy_b x'_bᵀ.
// Then dL, dŨ from dM = Pᵀ dW (math.h), and ds gains ±S·Σ_b ḡ/s from the logdet.
template <class T>
void invconv_backward_cpu(ChannelDims d, const T* grad_y, const T* grad_logdet, const T* x, const T* out,
                          const int64_t* perm, const T* lower, const T* upper, const T* s, bool reverse, T* grad_x,
                          T* grad_lower, T* grad_upper, T* grad_s, void* workspace) {
  const int64_t c = d.channels, sp = d.spatial, block = c * sp;
  InvconvScratch<T> scratch(workspace, c);
  for (int64_t i = 0; i < c; ++i) scratch.pinv[perm[i]] = i;
  if (reverse) {
    parallel_for(d.batch, grain_for(block), [&](int, int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b)
        solve_weight_transposed(c, sp, scratch.pinv, lower, upper, s, grad_y + b * block, grad_x + b * block);
    });
  } else {
    build_weight(c, perm, lower, upper, s, scratch.w);
    blas::parallel_for_gemm(d.batch, grain_for(c * block), [&](int, int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b)
        blas::gemm<T>(blas::Trans::Yes, blas::Trans::No, c, sp, c, T(1), scratch.w, c, grad_y + b * block, sp, T(0),
                      grad_x + b * block, sp);
    });
  }
  if (!grad_lower && !grad_upper && !grad_s) return;
  const T* cot = reverse ? grad_x : grad_y;
  const T* val = reverse ? out : x;
  const int64_t grain = grain_for(c * block);
  const int chunks = std::min(parallel_chunk_count(d.batch, grain), kWeightGradChunks);
  std::fill(scratch.dw, scratch.dw + c * c, T(0));  // stays zero without samples or pixels
  if (sp > 0)
    blas::parallel_for_gemm(d.batch, grain, [&](int chunk, int64_t b0, int64_t b1) {
      T* partial = scratch.dw + chunk * c * c;
      for (int64_t b = b0; b < b1; ++b)
        blas::gemm<T>(blas::Trans::No, blas::Trans::Yes, c, c, sp, T(reverse ? -1 : 1), cot + b * block, sp,
                      val + b * block, sp, T(b == b0 ? 0 : 1), partial, c);
    }, kWeightGradChunks);
  for (int k = 1; k < chunks && sp > 0; ++k)
    for (int64_t e = 0; e < c * c; ++e) scratch.dw[e] += scratch.dw[k * c * c + e];
  const T* dw = scratch.dw;
  const int64_t* pinv = scratch.pinv;
  auto dm = [&](int64_t r, int64_t k) { return static_cast<double>(dw[pinv[r] * c + k]); };
  double gl_sum = 0;
  for (int64_t b = 0; b < d.batch; ++b) gl_sum += static_cast<double>(grad_logdet[b]);
  const double logdet_term = (reverse ? -1.0 : 1.0) * static_cast<double>(sp) * gl_sum;
  parallel_for(c, grain_for(c * c), [&](int, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t col = 0; col < c; ++col) {
        const int64_t at = r * c + col;
        T* target = r > col ? grad_lower : r < col ? grad_upper : nullptr;  // the factor this entry belongs to
        if (target || (r == col && grad_s)) {
          const double g = invconv_factor_grad<double>(r, col, c, lower, upper, s, Load{}, dm);
          if (target) target[at] = static_cast<T>(g);
          else grad_s[r] = static_cast<T>(g + logdet_term / static_cast<double>(s[r]));
        }
        if (grad_lower && r <= col) grad_lower[at] = T(0);
        if (grad_upper && r >= col) grad_upper[at] = T(0);
      }
  });
}

// ==================================================================================== planar flow

// Accumulation: double for float32, long double for float64 (the float64 results are the tests'
// ground truth for gradcheck and parity, and the chain rule through û loses a few ulps in double).
template <class T>
using Acc = std::conditional_t<std::is_same_v<T, double>, long double, double>;

// Workspace: math.h's PlanarScratch<Acc<T>>.
template <class A, class T>
A dot(const T* a, const T* b, int64_t n) {
  A sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += static_cast<A>(a[i]) * static_cast<A>(b[i]);
  return sum;
}

// û = u + k·w with k = (m(wu) − wu)/‖w‖²; scalars = (wu, ww, m, k).
template <class T>
void planar_prepare(RowDims d, const T* u, const T* w, PlanarScratch<Acc<T>>& scratch) {
  using A = Acc<T>;
  const A wu = dot<A>(w, u, d.features), ww = dot<A>(w, w, d.features);
  const A m = -1.0 + stable_softplus(wu), k = (m - wu) / ww;
  scratch.scalars[0] = wu, scratch.scalars[1] = ww, scratch.scalars[2] = m, scratch.scalars[3] = k;
  for (int64_t i = 0; i < d.features; ++i)
    scratch.u_hat[i] = static_cast<A>(u[i]) + k * static_cast<A>(w[i]);
}

template <class T>
void planar_forward_cpu(RowDims d, const T* z, const T* u, const T* w, const T* bias, bool reverse, T* f, T* logdet,
                        void* workspace) {
  using A = Acc<T>;
  PlanarScratch<A> scratch(workspace, d);
  planar_prepare(d, u, w, scratch);
  const A m = scratch.scalars[2], b = static_cast<A>(bias[0]);
  const A* u_hat = scratch.u_hat;
  const int64_t n = d.features;
  parallel_for(d.batch, grain_for(n), [&](int, int64_t b0, int64_t b1) {
    for (int64_t r = b0; r < b1; ++r) {
      const T* zr = z + r * n;
      T* fr = f + r * n;
      const A c = dot<A>(w, zr, n);
      const A a = reverse ? A(planar_solve(static_cast<double>(c), static_cast<double>(m), static_cast<double>(b))) + b : c + b;
      const PlanarPoint<A> p = planar_point(a, m);
      const A sign = reverse ? -1.0 : 1.0;
      for (int64_t i = 0; i < n; ++i) fr[i] = static_cast<T>(static_cast<A>(zr[i]) + sign * u_hat[i] * p.h);
      logdet[r] = static_cast<T>(sign * p.logdet);
    }
  });
}

// Per sample at the point z where the forward map is evaluated (the input, or the reverse output):
// forward  da = (gᵀû)·h' + ḡ·∂ld/∂a, dz = g + da·w, and for the parameters dû += g·h, dw += da·z,
//          db += da, dm += ḡ·∂ld/∂m;
// reverse  (implicit function theorem, J = I + û h' wᵀ, J⁻¹ by Sherman–Morrison with wᵀû = m)
//          v = g − ḡ·∂ld/∂a·w, q = v − w·h'(ûᵀv)/(1 + m h') = g − e·w is the input gradient, and the
//          parameter gradients are the forward ones at z with cotangents (−q, −ḡ).
// The column sums Su = Σ_b g_b h_b, Sw = Σ_b z_b da_b then give dû = ±Su + (Σ_b e_b h_b)·w.
template <class T>
void planar_backward_cpu(RowDims d, const T* grad_f, const T* grad_logdet, const T* z_in, const T* out, const T* u,
                         const T* w, const T* bias, bool reverse, T* grad_z, T* grad_u, T* grad_w, T* grad_b,
                         void* workspace) {
  using A = Acc<T>;
  PlanarScratch<A> scratch(workspace, d);
  planar_prepare(d, u, w, scratch);
  const A wu = scratch.scalars[0], ww = scratch.scalars[1], m = scratch.scalars[2];
  const A b = static_cast<A>(bias[0]);
  const A* u_hat = scratch.u_hat;
  A* per = scratch.per_sample;
  const int64_t n = d.features;
  const T* z = reverse ? out : z_in;
  parallel_for(d.batch, grain_for(n), [&](int, int64_t b0, int64_t b1) {
    for (int64_t r = b0; r < b1; ++r) {
      const T* zr = z + r * n;
      const T* gr = grad_f + r * n;
      const PlanarPoint<A> p = planar_point(dot<A>(w, zr, n) + b, m);
      const A gl = static_cast<A>(grad_logdet[r]);
      A gu = 0;
      for (int64_t i = 0; i < n; ++i) gu += static_cast<A>(gr[i]) * u_hat[i];
      A da, e = 0, dm;
      if (!reverse) {
        da = gu * p.dh + gl * p.dlogdet_da;
        if (grad_z)
          for (int64_t i = 0; i < n; ++i) grad_z[r * n + i] = static_cast<T>(static_cast<A>(gr[i]) + da * w[i]);
        dm = gl * p.dlogdet_dm;
      } else {
        const A gamma = gl * p.dlogdet_da;            // v = g − γ·w
        const A uv = gu - gamma * m;                   // ûᵀv
        e = gamma + p.dh * uv / (1.0 + m * p.dh);           // q = g − e·w
        if (grad_z)
          for (int64_t i = 0; i < n; ++i) grad_z[r * n + i] = static_cast<T>(static_cast<A>(gr[i]) - e * w[i]);
        const A qu = gu - e * m;                       // qᵀû
        da = -qu * p.dh - gl * p.dlogdet_da;
        dm = -gl * p.dlogdet_dm;
      }
      per[4 * r] = p.h, per[4 * r + 1] = da, per[4 * r + 2] = e * p.h, per[4 * r + 3] = dm;
    }
  });
  if (!grad_u && !grad_w && !grad_b) return;
  A* su = scratch.columns;
  A* sw = su + n;
  parallel_for(n, grain_for(d.batch), [&](int, int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      A a = 0, c = 0;
      for (int64_t r = 0; r < d.batch; ++r) {
        a += static_cast<A>(grad_f[r * n + i]) * per[4 * r];
        c += static_cast<A>(z[r * n + i]) * per[4 * r + 1];
      }
      su[i] = a, sw[i] = c;
    }
  });
  A sum_eh = 0, sum_da = 0, sum_dm = 0;
  for (int64_t r = 0; r < d.batch; ++r) sum_eh += per[4 * r + 2], sum_da += per[4 * r + 1], sum_dm += per[4 * r + 3];
  const A sign = reverse ? -1.0 : 1.0;
  A dk = 0;
  for (int64_t i = 0; i < n; ++i) dk += (sign * su[i] + sum_eh * w[i]) * static_cast<A>(w[i]);
  const PlanarChain<A> chain = planar_chain(wu, ww, m, dk, sum_dm);
  for (int64_t i = 0; i < n; ++i) {
    const A du_hat = sign * su[i] + sum_eh * w[i];
    if (grad_u) grad_u[i] = static_cast<T>(du_hat + chain.dwu * w[i]);
    if (grad_w)
      grad_w[i] = static_cast<T>(sw[i] + chain.k * du_hat + chain.dwu * u[i] + chain.two_dww * w[i]);
  }
  if (grad_b) grad_b[0] = static_cast<T>(sum_da);
}

}  // namespace

// ================================================================================== entry points

template <>
int64_t affine_coupling_workspace_size<DeviceType::CPU>(const TensorView&) {
  return 0;
}

template <>
void affine_coupling_forward<DeviceType::CPU>(const TensorView& x, const OptView& shift, const OptView& log_scale,
                                              const OptView& mask, bool reverse, int scale, const TensorView& y,
                                              const TensorView& logdet, const OptView& workspace, std::uintptr_t) {
  const RowDims d = check_affine_coupling_forward(DeviceType::CPU, x, shift, log_scale, mask, scale, y, logdet,
                                                  workspace, 0);
  prefer_huge_pages(y);
  dispatch_cpu_floating(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    dispatch_scale(scale, [&](auto s) {
      coupling_forward<T, decltype(s)::value>(d, x.data_as<const T>(), ptr_or_null<const T>(shift),
                                              ptr_or_null<const T>(log_scale), ptr_or_null<const bool>(mask), reverse,
                                              y.data_as<T>(), logdet.data_as<T>());
    });
  });
}

template <>
void affine_coupling_backward<DeviceType::CPU>(const TensorView& grad_y, const TensorView& grad_logdet,
                                               const TensorView& x, const OptView& shift, const OptView& log_scale,
                                               const OptView& mask, bool reverse, int scale, const OptView& grad_x,
                                               const OptView& grad_shift, const OptView& grad_log_scale,
                                               std::uintptr_t) {
  const RowDims d = check_affine_coupling_backward(DeviceType::CPU, grad_y, grad_logdet, x, shift, log_scale, mask,
                                                   scale, grad_x, grad_shift, grad_log_scale);
  prefer_huge_pages(grad_x);
  prefer_huge_pages(grad_shift);
  prefer_huge_pages(grad_log_scale);
  dispatch_cpu_floating(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    dispatch_scale(scale, [&](auto s) {
      coupling_backward<T, decltype(s)::value>(
          d, grad_y.data_as<const T>(), grad_logdet.data_as<const T>(), x.data_as<const T>(),
          ptr_or_null<const T>(shift), ptr_or_null<const T>(log_scale), ptr_or_null<const bool>(mask), reverse,
          ptr_or_null<T>(grad_x), ptr_or_null<T>(grad_shift), ptr_or_null<T>(grad_log_scale));
    });
  });
}

template <>
void actnorm_forward<DeviceType::CPU>(const TensorView& x, const TensorView& scale, const TensorView& bias,
                                      bool reverse, const TensorView& y, const TensorView& logdet, std::uintptr_t) {
  const ChannelDims d = check_actnorm_forward(DeviceType::CPU, x, scale, bias, y, logdet);
  prefer_huge_pages(y);
  dispatch_cpu_floating(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    actnorm_forward_cpu<T>(d, x.data_as<const T>(), scale.data_as<const T>(), bias.data_as<const T>(), reverse,
                           y.data_as<T>(), logdet.data_as<T>());
  });
}

template <>
int64_t actnorm_backward_workspace_size<DeviceType::CPU>(const TensorView&) {
  return 0;
}

template <>
void actnorm_backward<DeviceType::CPU>(const TensorView& grad_y, const TensorView& grad_logdet, const TensorView& x,
                                       const TensorView& scale, const TensorView& bias, bool reverse,
                                       const OptView& grad_x, const OptView& grad_scale, const OptView& grad_bias,
                                       const OptView& workspace, std::uintptr_t) {
  const ChannelDims d = check_actnorm_backward(DeviceType::CPU, grad_y, grad_logdet, x, scale, bias, grad_x,
                                               grad_scale, grad_bias, workspace, 0);
  prefer_huge_pages(grad_x);
  dispatch_cpu_floating(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    actnorm_backward_cpu<T>(d, grad_y.data_as<const T>(), grad_logdet.data_as<const T>(), x.data_as<const T>(),
                            scale.data_as<const T>(), bias.data_as<const T>(), reverse, ptr_or_null<T>(grad_x),
                            ptr_or_null<T>(grad_scale), ptr_or_null<T>(grad_bias));
  });
}

template <>
int64_t invconv1x1_workspace_size<DeviceType::CPU>(const TensorView& x, bool) {
  if (x.ndim < 2) return 0;  // validation names the problem
  const int64_t c = x.size(1);
  return (1 + kWeightGradChunks) * c * c * dtype_size(x.dtype) + c * static_cast<int64_t>(sizeof(int64_t));
}

template <>
void invconv1x1_forward<DeviceType::CPU>(const TensorView& x, const TensorView& perm, const TensorView& lower,
                                         const TensorView& upper, const TensorView& s, bool reverse,
                                         const TensorView& y, const TensorView& logdet, const OptView& workspace,
                                         std::uintptr_t) {
  const ChannelDims d = check_invconv1x1_forward(DeviceType::CPU, x, perm, lower, upper, s, y, logdet, workspace,
                                                 invconv1x1_workspace_size<DeviceType::CPU>(x, reverse));
  prefer_huge_pages(y);
  dispatch_cpu_floating(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    invconv_forward_cpu<T>(d, x.data_as<const T>(), perm.data_as<const int64_t>(), lower.data_as<const T>(),
                           upper.data_as<const T>(), s.data_as<const T>(), reverse, y.data_as<T>(), logdet.data_as<T>(),
                           workspace ? workspace->data : nullptr);
  });
}

template <>
void invconv1x1_backward<DeviceType::CPU>(const TensorView& grad_y, const TensorView& grad_logdet,
                                          const TensorView& x, const TensorView& out, const TensorView& perm,
                                          const TensorView& lower, const TensorView& upper, const TensorView& s,
                                          bool reverse, const TensorView& grad_x, const OptView& grad_lower,
                                          const OptView& grad_upper, const OptView& grad_s, const OptView& workspace,
                                          std::uintptr_t) {
  const ChannelDims d =
      check_invconv1x1_backward(DeviceType::CPU, grad_y, grad_logdet, x, out, perm, lower, upper, s, grad_x,
                                grad_lower, grad_upper, grad_s, workspace,
                                invconv1x1_workspace_size<DeviceType::CPU>(x, reverse));
  prefer_huge_pages(grad_x);
  dispatch_cpu_floating(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    invconv_backward_cpu<T>(d, grad_y.data_as<const T>(), grad_logdet.data_as<const T>(), x.data_as<const T>(),
                            out.data_as<const T>(), perm.data_as<const int64_t>(), lower.data_as<const T>(),
                            upper.data_as<const T>(), s.data_as<const T>(), reverse, grad_x.data_as<T>(),
                            ptr_or_null<T>(grad_lower), ptr_or_null<T>(grad_upper), ptr_or_null<T>(grad_s),
                            workspace ? workspace->data : nullptr);
  });
}

template <>
int64_t planar_flow_workspace_size<DeviceType::CPU>(const TensorView& z, bool backward) {
  if (z.ndim != 2) return 0;  // validation names the problem
  const int64_t batch = z.size(0), features = z.size(1);
  const int64_t element = z.dtype == DType::Float64 ? sizeof(long double) : sizeof(double);  // Acc<T>
  return element * PlanarScratch<double>::elements(batch, features, backward);
}

template <>
void planar_flow_forward<DeviceType::CPU>(const TensorView& z, const TensorView& u, const TensorView& w,
                                          const TensorView& b, bool reverse, const TensorView& f,
                                          const TensorView& logdet, const OptView& workspace, std::uintptr_t) {
  const RowDims d = check_planar_flow_forward(DeviceType::CPU, z, u, w, b, f, logdet, workspace,
                                              planar_flow_workspace_size<DeviceType::CPU>(z, false));
  prefer_huge_pages(f);
  dispatch_cpu_floating(z.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    planar_forward_cpu<T>(d, z.data_as<const T>(), u.data_as<const T>(), w.data_as<const T>(), b.data_as<const T>(),
                          reverse, f.data_as<T>(), logdet.data_as<T>(), workspace->data);
  });
}

template <>
void planar_flow_backward<DeviceType::CPU>(const TensorView& grad_f, const TensorView& grad_logdet,
                                           const TensorView& z, const TensorView& out, const TensorView& u,
                                           const TensorView& w, const TensorView& b, bool reverse,
                                           const OptView& grad_z, const OptView& grad_u, const OptView& grad_w,
                                           const OptView& grad_b, const OptView& workspace, std::uintptr_t) {
  const RowDims d = check_planar_flow_backward(DeviceType::CPU, grad_f, grad_logdet, z, out, u, w, b, grad_z, grad_u,
                                               grad_w, grad_b, workspace,
                                               planar_flow_workspace_size<DeviceType::CPU>(z, true));
  prefer_huge_pages(grad_z);
  dispatch_cpu_floating(z.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    planar_backward_cpu<T>(d, grad_f.data_as<const T>(), grad_logdet.data_as<const T>(), z.data_as<const T>(),
                           out.data_as<const T>(), u.data_as<const T>(), w.data_as<const T>(), b.data_as<const T>(),
                           reverse, ptr_or_null<T>(grad_z), ptr_or_null<T>(grad_u), ptr_or_null<T>(grad_w),
                           ptr_or_null<T>(grad_b), workspace->data);
  });
}

}  // namespace replearn::flow
