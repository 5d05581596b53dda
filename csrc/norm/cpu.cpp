// Normalization family, CPU kernels (float32 and float64).
//
// Every kernel is memory bound, so each is arranged to read its input from DRAM as few times as
// possible: a row (layer/rms norm) or a group slab is reduced and then normalized while it is still
// in L1/L2, and batch norm handles one channel at a time for the same reason. Sums run through
// lane_sums (core/reduce.h): terms in the input's precision, a vector at a time, accumulated in
// double after at most 8 float additions per lane, with independent accumulators so the adds
// overlap; that keeps a row's reductions cheaper than reading it from memory. Batch and group
// statistics use one pass over shifted data, Σ(x−K) and Σ(x−K)² with K the slab's first element,
// which avoids the cancellation of the naive E[x²] − E[x]² when |mean| ≫ std. Outputs at least as
// large as the last-level cache are written with streaming stores (core/memory.h).
//
// The formulas (x̂ = (x − μ)·rstd, g = dy·γ, n values per statistic):
//   layer norm  dx = rstd · (g − mean(g) − x̂ · mean(g·x̂))
//   rms norm    dx = rstd · (g − x̂ · mean(g·x̂))               with x̂ = x·rstd
//   batch/group norm: as layer norm over the values that share a statistic
//   dγ = Σ dy·x̂,  dβ = Σ dy  over the values that share a parameter.
#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "core/check.h"
#include "core/dispatch.h"
#include "core/memory.h"
#include "core/parallel.h"
#include "core/reduce.h"
#include "core/simd.h"
#include "norm/norm.h"

namespace replearn::norm {

namespace {

// Rows per parallel chunk below which threading costs more than it saves (~32 KiB of float32).
constexpr int64_t kGrainElements = 1 << 13;

int64_t row_grain(int64_t cols) { return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, cols)); }

template <class T>
T* ptr_or_null(const OptView& v) {
  return v ? v->data_as<T>() : nullptr;
}

// Σ (x − K) and Σ (x − K)² of one contiguous span, added to sum and sum_sq (in double). K is one of
// the data's own values (T exactly), so x − K is exact in T wherever x is within a factor 2 of K.
// `also(i, V*)` runs beside each term (a prefetch, or another pass fused into this one: see batch
// norm's kernels); the sums do not depend on it.
struct Nothing {
  template <class V>
  void operator()(int64_t, V*) const {}
};
template <class T, class Also = Nothing>
void shifted_sums(const T* __restrict__ x, int64_t n, double shift, double& sum, double& sum_sq,
                  const Also& also = {}) {
  const T k = static_cast<T>(shift);
  const auto [s, q] = lane_sums<2, T>(n, [&](int64_t i, auto* t) {
    using V = std::remove_pointer_t<decltype(t)>;
    also(i, t);
    const V d = load<V>(x + i) - k;
    t[0] = d;
    t[1] = d * d;
  });
  sum += s;
  sum_sq += q;
}

// Mean and 1/√(var + ε) from shifted sums over `count` values; var is the biased variance.
struct Moments {
  double mean, var, rstd;
};
Moments moments_from_shifted(double shift, double sum, double sum_sq, double count, double eps) {
  const double centered_mean = sum / count;
  const double var = clamp_nonnegative(sum_sq / count - centered_mean * centered_mean);
  return {shift + centered_mean, var, 1.0 / std::sqrt(var + eps)};
}

// y = (x − m)·a + b over a span: every normalization once its statistics are known. Subtracting
// the mean first (rather than folding it into b) keeps float32 exact-ish when |mean| ≫ std.
// `stream`: y is written with streaming stores (prefer_streaming_stores; the caller fences).
template <class T>
void center_scale_shift(const T* __restrict__ x, int64_t n, T m, T a, T b, T* __restrict__ y, bool stream) {
  simd::store_lanes(y, n, stream, [&](int64_t i, auto* type) {
    using V = std::remove_pointer_t<decltype(type)>;
    return (load<V>(x + i) - m) * a + b;
  });
}

// Whether a CPU kernel writes an output of `count` values of T with streaming stores.
template <class T>
bool stream_output(int64_t count) {
  return prefer_streaming_stores(count * static_cast<int64_t>(sizeof(T)));
}

// ------------------------------------------------------------------------------- layer/rms norm

template <class T>
void layer_norm_forward_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b,
                               double eps, RowDims d, T* __restrict__ y, T* __restrict__ mean_out,
                               T* __restrict__ rstd_out) {
  const int64_t N = d.cols;
  const bool stream = stream_output<T>(d.rows * N);
  parallel_for(d.rows, row_grain(N), [&](int, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = x + r * N;  // (N)
      T* yr = y + r * N;
      const double first = lane_sums<1, T>(N, [&](int64_t j, auto* t) {
        using V = std::remove_pointer_t<decltype(t)>;
        t[0] = load<V>(xr + j);
      })[0] / N;
      // Second pass: the row is in L1, and (x − μ₁)² has no cancellation. The corrected two-pass
      // algorithm (Chan, Golub & LeVeque 1983): Σ(x − μ₁) is the rounding error of the first mean
      // (and of μ₁'s rounding to T), whose correction makes μ correctly rounded for rows far from
      // 0 (x ≈ 300). x − μ₁ is exact in T wherever x is within a factor 2 of μ₁ (Sterbenz).
      const T first_t = static_cast<T>(first);
      const auto [sq, dev] = lane_sums<2, T>(N, [&](int64_t j, auto* t) {
        using V = std::remove_pointer_t<decltype(t)>;
        const V c = load<V>(xr + j) - first_t;
        t[0] = c * c;
        t[1] = c;
      });
      const double mean = static_cast<double>(first_t) + dev / N;
      const double var = sq / N - (dev / N) * (dev / N);  // ≥ 0 up to rounding; NaN for N = 0, as before
      const double rstd = 1.0 / std::sqrt(clamp_nonnegative(var) + eps);
      if (mean_out) mean_out[r] = static_cast<T>(mean);
      if (rstd_out) rstd_out[r] = static_cast<T>(rstd);
      const T a = static_cast<T>(rstd), m = static_cast<T>(mean);
      simd::store_lanes(yr, N, stream, [&](int64_t j, auto* type) {
        using V = std::remove_pointer_t<decltype(type)>;
        V v = (load<V>(xr + j) - m) * a;
        if (w) v *= load<V>(w + j);
        if (b) v += load<V>(b + j);
        return v;
      });
    }
    if (stream) simd::streaming_fence();
  });
}

template <class T>
void rms_norm_forward_kernel(const T* __restrict__ x, const T* __restrict__ w, double eps, RowDims d,
                             T* __restrict__ y, T* __restrict__ rstd_out) {
  const int64_t N = d.cols;
  const bool stream = stream_output<T>(d.rows * N);
  parallel_for(d.rows, row_grain(N), [&](int, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = x + r * N;
      T* yr = y + r * N;
      const double sq = lane_sums<1, T>(N, [&](int64_t j, auto* t) {
        using V = std::remove_pointer_t<decltype(t)>;
        const V v = load<V>(xr + j);
        t[0] = v * v;
      })[0];
      const double rstd = 1.0 / std::sqrt(sq / N + eps);
      if (rstd_out) rstd_out[r] = static_cast<T>(rstd);
      const T a = static_cast<T>(rstd);
      simd::store_lanes(yr, N, stream, [&](int64_t j, auto* type) {
        using V = std::remove_pointer_t<decltype(type)>;
        V v = load<V>(xr + j) * a;
        if (w) v *= load<V>(w + j);
        return v;
      });
    }
    if (stream) simd::streaming_fence();
  });
}

// Scratch for the parameter gradients of a row norm, one block per parallel chunk, summed after the
// parallel region (deterministic for a fixed thread count):
//   (2, cols) double   Σ dy·x̂ and Σ dy over the chunk's rows
//   2 × (cols) T       the same sums over the last few rows (kParamBlockRows), added into the
//                      doubles and cleared every kParamBlockRows rows; each row placed within its
//                      4 KiB page clear of the rows the loop walks beside it (scratch_page_offset,
//                      core/memory.h), for which the chunk has a page of slack per row
// The T block is what the dx loop updates: adding every row's terms straight into doubles cost two
// conversions and a double read-modify-write per value, and made the backward with parameter
// gradients run at half the speed of dx alone (8192×1024 float32, 2 threads: 42 against 78 GB/s).
// A float sum of 32 terms before the double accumulation is still far more accurate than torch's,
// which sums all of a thread's rows in float.
constexpr int64_t kParamBlockRows = 32;

int row_partials(int64_t rows, int64_t cols) { return parallel_chunk_count(rows, row_grain(cols)); }

// Doubles in one chunk's scratch for rows of `cols` values of `element_bytes` each.
int64_t row_partial_doubles(int64_t cols, int64_t element_bytes) {
  if (cols == 0) return 0;  // an empty normalized shape: no parameter values to sum
  constexpr int64_t kPageSlack = 4096;
  return 2 * cols + (2 * (cols * element_bytes + kPageSlack) + 7) / 8;
}

// Bytes of one chunk's partial sums; 0 for a normalized_ndim that validation will reject.
int64_t row_partial_bytes(const TensorView& x, int normalized_ndim) {
  if (normalized_ndim < 1 || normalized_ndim > x.ndim) return 0;
  const int64_t cols = x.numel_between(x.ndim - normalized_ndim, x.ndim);
  return row_partial_doubles(cols, dtype_size(x.dtype)) * static_cast<int64_t>(sizeof(double));
}

// The kernel splits rows into as many chunks as the workspace holds partials for (at least one),
// so a workspace sized under another thread count is still used correctly.
int64_t row_workspace_bytes(const TensorView& x, int normalized_ndim) {
  const int64_t one = row_partial_bytes(x, normalized_ndim);
  if (one == 0) return 0;
  const int64_t rows = x.numel_between(0, x.ndim - normalized_ndim);
  return std::max(1, row_partials(rows, x.numel_between(x.ndim - normalized_ndim, x.ndim))) * one;
}

// One chunk's scratch (see row_partial_doubles).
template <class T>
struct RowPartials {
  double* sum_w;  // (cols) Σ dy·x̂
  double* sum_b;  // (cols) Σ dy
  T* block_w;     // (cols) Σ dy·x̂ over the current block of rows
  T* block_b;     // (cols) Σ dy over the current block of rows

  // The chunk's scratch at `chunk`, its T rows starting at the given offsets within their pages.
  RowPartials(double* chunk, int64_t cols, int64_t w_page_offset, int64_t b_page_offset)
      : sum_w(chunk),
        sum_b(chunk + cols),
        block_w(static_cast<T*>(at_page_offset(chunk + 2 * cols, w_page_offset))),
        block_b(static_cast<T*>(at_page_offset(block_w + cols, b_page_offset))) {}

  void clear(int64_t cols) {
    std::fill(sum_w, sum_w + 2 * cols, 0.0);
    std::fill(block_w, block_w + cols, T(0));
    std::fill(block_b, block_b + cols, T(0));
  }
  // Moves the block's sums into the doubles and clears the block.
  void flush(int64_t cols) {
#pragma omp simd
    for (int64_t j = 0; j < cols; ++j) {
      sum_w[j] += block_w[j];
      sum_b[j] += block_b[j];
      block_w[j] = T(0);
      block_b[j] = T(0);
    }
  }
};

// Sum the per-chunk partials (row 0: Σ dy·x̂, row 1: Σ dy) into the (cols) outputs.
template <class T>
void reduce_partials(const double* partials, int chunks, int64_t chunk_doubles, int64_t cols, int64_t row, T* out) {
  if (!out) return;
  parallel_for(cols, 1 << 12, [&](int, int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) {
      double s = 0;
      for (int c = 0; c < chunks; ++c) s += partials[c * chunk_doubles + row * cols + j];
      out[j] = static_cast<T>(s);
    }
  });
}

// Rows of the backward handled by one pass over the columns. Their dy·x̂ and dy terms are summed in
// registers before the parameter block is read and written, so the block's traffic (a load and a
// store per value and sum: with one row, three stores per vector with dx, the loop's bottleneck) is
// shared by the rows. Measured at 8192×1024 float32, 2 threads, streaming stores on, fast phase of
// the host: backward with parameter gradients 48–50 GB/s with one row at a time, 58–61 with two;
// four were slower than two with data in cache (register pressure).
constexpr int kRowsAtOnce = 2;

// Rows [r, r + R) of the backward: dx = rstd·g − rstd·mean(g) − x̂·rstd·mean(g·x̂) with g = dy·γ when
// dx is wanted, and the rows' dy·x̂ and dy added into the parameter block (block_w, block_b) when
// those are. Written once for every combination; the flags are template arguments so each loop is
// branch-free. `walk`: how dx's rows are written (streaming stores need them 64-byte aligned) and in
// which order the columns go (streaming_walk, core/memory.h).
template <class T, bool centered, bool has_w, bool has_dx, bool has_params, int R>
void rows_backward(const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ mean,
                   const T* __restrict__ rstd, const T* __restrict__ w, int64_t N, int64_t r, T* __restrict__ dx,
                   StoreWalk walk, T* __restrict__ block_w, T* __restrict__ block_b) {
  const bool stream = walk != StoreWalk::kNormal;
  const T* dyr[R];
  const T* xr[R];
  T* dxr[R];
  T a[R], m[R], bx[R], c[R];
  for (int k = 0; k < R; ++k) {
    dyr[k] = dy + (r + k) * N;
    xr[k] = x + (r + k) * N;
    dxr[k] = has_dx ? dx + (r + k) * N : nullptr;
    const double mu = centered ? static_cast<double>(mean[r + k]) : 0.0, rs = rstd[r + k];
    a[k] = static_cast<T>(rs);
    m[k] = static_cast<T>(mu);
    bx[k] = c[k] = T(0);
    if constexpr (has_dx) {
      const T* __restrict__ d = dyr[k];
      const T* __restrict__ xk = xr[k];
      const T ak = a[k], mk = m[k];
      const auto [sum_g, sum_gx] = lane_sums<2, T>(N, [&](int64_t j, auto* t) {
        using V = std::remove_pointer_t<decltype(t)>;
        V g = load<V>(d + j);
        if constexpr (has_w) g *= load<V>(w + j);
        t[0] = g;
        t[1] = g * ((load<V>(xk + j) - mk) * ak);
      });
      // dx = a·g + b·(x − μ) + c
      bx[k] = static_cast<T>(-rs * rs * sum_gx / N);
      c[k] = static_cast<T>(centered ? -rs * sum_g / N : 0.0);
    }
  }
  if (has_dx && centered && N == 1) {  // x̂ = 0 and g = mean(g): exactly 0, where a·g + c, each
    for (int k = 0; k < R; ++k) {      // term rounded apart, left 1.9e-6 (twice the parity floor)
      dxr[k][0] = T(0);
      if constexpr (has_params) block_b[0] += dyr[k][0];
    }
    return;
  }
  // Columns j (V = T) or j … j + kLanes − 1 (V = simd::Vec<T>) of every row.
  auto columns = [&](int64_t j, auto* type) {
    using V = std::remove_pointer_t<decltype(type)>;
    V sum_w{}, sum_b{};
    const V wj = has_w ? load<V>(w + j) : V{};
    for (int k = 0; k < R; ++k) {
      const V d = load<V>(dyr[k] + j), xc = load<V>(xr[k] + j) - m[k];
      if constexpr (has_dx) {
        const V v = a[k] * (has_w ? d * wj : d) + bx[k] * xc + c[k];
        simd::put(dxr[k] + j, v, stream);
      }
      if constexpr (has_params) {
        sum_w += d * (xc * a[k]);
        sum_b += d;
      }
    }
    if constexpr (has_params) {
      simd::put(block_w + j, load<V>(block_w + j) + sum_w, false);
      simd::put(block_b + j, load<V>(block_b + j) + sum_b, false);
    }
  };
  constexpr int64_t L = simd::kLanes<T>;
  const int64_t vectors = N / L;
  const bool down = walk == StoreWalk::kDown;
  const int64_t first = down ? (vectors - 1) * L : 0, step = down ? -L : L;
  for (int64_t i = 0; i < vectors; ++i) columns(first + i * step, static_cast<simd::Vec<T>*>(nullptr));
  for (int64_t j = vectors * L; j < N; ++j) columns(j, static_cast<T*>(nullptr));
}

// Rows [r0, r1) of a chunk, kRowsAtOnce at a time; the parameter block is flushed into the chunk's
// double sums every kParamBlockRows rows and at the end.
template <class T, bool centered, bool has_w, bool has_dx, bool has_params>
void row_norm_backward_rows(const T* dy, const T* x, const T* mean, const T* rstd, const T* w, int64_t N,
                            int64_t r0, int64_t r1, T* dx, StoreWalk walk, RowPartials<T>* partials) {
  T* block_w = has_params ? partials->block_w : nullptr;
  T* block_b = has_params ? partials->block_b : nullptr;
  int64_t unflushed = 0;
  for (int64_t r = r0; r < r1;) {
    if (r + kRowsAtOnce <= r1) {
      rows_backward<T, centered, has_w, has_dx, has_params, kRowsAtOnce>(dy, x, mean, rstd, w, N, r, dx, walk,
                                                                         block_w, block_b);
      r += kRowsAtOnce;
      unflushed += kRowsAtOnce;
    } else {
      rows_backward<T, centered, has_w, has_dx, has_params, 1>(dy, x, mean, rstd, w, N, r, dx, walk, block_w,
                                                               block_b);
      r += 1;
      unflushed += 1;
    }
    if (has_params && (unflushed >= kParamBlockRows || r == r1)) {
      partials->flush(N);
      unflushed = 0;
    }
  }
  if (walk != StoreWalk::kNormal) simd::streaming_fence();
}

template <class T, bool centered>
void row_norm_backward_kernel(const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ mean,
                              const T* __restrict__ rstd, const T* __restrict__ w, RowDims d, T* __restrict__ dx,
                              T* dw, T* db, double* workspace, int64_t workspace_bytes) {
  const int64_t N = d.cols;
  const bool need_params = dw || db;
  if (N == 0 || (!dx && !need_params)) return;  // nothing to differentiate, or nothing asked for
  const int64_t chunk_doubles = row_partial_doubles(N, sizeof(T));
  const int max_chunks =
      need_params ? static_cast<int>(workspace_bytes / (chunk_doubles * int64_t(sizeof(double)))) : 1 << 30;
  // The region runs exactly this many chunks; each clears its own scratch first.
  const int chunks = std::min(parallel_chunk_count(d.rows, row_grain(N)), max_chunks);
  if (need_params && chunks == 0) RowPartials<T>(workspace, N, 0, 0).clear(N);  // no rows: zero gradients
  // Every dx row 64-byte aligned (so streaming stores apply to each) and dx too large to stay cached.
  const bool stream = dx && simd::aligned64(dx) && (N * sizeof(T)) % 64 == 0 &&
                      prefer_streaming_stores(d.rows * N * static_cast<int64_t>(sizeof(T)));
  parallel_for(
      d.rows, row_grain(N),
      [&](int chunk, int64_t r0, int64_t r1) {
        // The chunk's first two rows of each array: every later pair lies the same way within its pages.
        auto rows = [&](const T* p, int64_t k) -> const void* { return p ? p + (r0 + k) * N : nullptr; };
        const void *x0 = rows(x, 0), *x1 = rows(x, 1), *dy0 = rows(dy, 0), *dy1 = rows(dy, 1);
        const void *dx0 = rows(dx, 0), *dx1 = rows(dx, 1);
        const StoreWalk walk = stream ? streaming_walk({dx0, dx1}, {x0, x1, dy0, dy1}) : StoreWalk::kNormal;
        if (!need_params) {
          if (w) row_norm_backward_rows<T, centered, true, true, false>(dy, x, mean, rstd, w, N, r0, r1, dx, walk, nullptr);
          else row_norm_backward_rows<T, centered, false, true, false>(dy, x, mean, rstd, w, N, r0, r1, dx, walk, nullptr);
          return;
        }
        // The parameter block's rows are read and written beside the data rows: placed clear of them.
        double* scratch = workspace + chunk * chunk_doubles;
        const int64_t w_at = scratch_page_offset({x0, x1, dy0, dy1, dx0, dx1}, {dx0, dx1}, walk);
        const void* block_w = at_page_offset(scratch + 2 * N, w_at);
        const int64_t b_at = scratch_page_offset({x0, x1, dy0, dy1, dx0, dx1, block_w}, {dx0, dx1}, walk);
        RowPartials<T> partials(scratch, N, w_at, b_at);
        partials.clear(N);
        if (!dx) row_norm_backward_rows<T, centered, false, false, true>(dy, x, mean, rstd, w, N, r0, r1, dx, walk, &partials);
        else if (w) row_norm_backward_rows<T, centered, true, true, true>(dy, x, mean, rstd, w, N, r0, r1, dx, walk, &partials);
        else row_norm_backward_rows<T, centered, false, true, true>(dy, x, mean, rstd, w, N, r0, r1, dx, walk, &partials);
      },
      max_chunks);
  if (need_params) {
    reduce_partials(workspace, std::max(chunks, 1), chunk_doubles, N, 0, dw);
    reduce_partials(workspace, std::max(chunks, 1), chunk_doubles, N, 1, db);
  }
}

// ------------------------------------------------------------------------------------ batch norm

// Channels per parallel chunk: enough that a chunk holds kGrainElements values.
int64_t channel_grain(const ChannelDims& d) {
  return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, d.batch * d.spatial));
}

// A channel of x (N, C, S) is N runs of S values, C·S apart, and a block of k consecutive channels N
// runs of k·S contiguous values. Each kernel takes a block's statistics (one pass over x, from DRAM)
// and then writes its output (a second pass, x from L2/L3). Two measured choices (bench/RESULTS.md,
// "batch_norm"; 64×64×56×56 float32, 2 threads, against a memcpy in the same loop):
// - The hardware prefetcher restarts at every run, so the statistics passes prefetch the next run
//   (sample n + 1) line by line at the offset they are summing: forward 0.70–0.75 → 0.82 of the memcpy
//   on the host's fast memory phase, 0.94 → 0.97 on its slow one.
// - Forward, where y is streamed and its runs start on 64-byte boundaries: the statistics pass of
//   block q + 1 runs inside the output pass of block q, one loop over both runs, so that DRAM reads
//   and streaming writes overlap (this host serializes them between separate loops: a memcpy takes as
//   long as a read pass plus a write pass). 3–4% less time on both phases; interleaving the passes a
//   run at a time instead was slower. The same fusion in the backward (channel c + 1's sums inside
//   channel c's dx pass) gained 3% on the slow phase and lost 5% on the fast one: not used.
// Channels per block: the forward is fastest with 4 on the fast phase (1 wins on the slow one by 4%,
// loses by 6% on the fast; with the fusion, 2 wins on the slow one by 5% and loses 2 points of the
// copy on the fast one through the op), the backward with 1 (x and dy of a channel, 1.6 MB at that
// shape, stay in L2/L3 for the dx pass). Every channel's sums are taken over n in order, each run's
// by lane_sums, so the results depend neither on the block size nor on the fusion.
constexpr int64_t kForwardBlock = 4;

// Whether the forward fuses its passes: streamed output whose runs of S values all start 64-byte
// aligned (lane_sums hands its term whole vectors from a run's start, so the fused stores align).
template <class T>
bool fuse_passes(const T* out, int64_t S, bool stream) {
  return stream && simd::aligned64(out) && (S * static_cast<int64_t>(sizeof(T))) % 64 == 0;
}

// Statistics of the channel block [c, c + k), accumulated a run (sample n) at a time.
template <class T>
struct ChannelBlock {
  int64_t c = 0, k = 0;
  double shift[kForwardBlock] = {}, sum[kForwardBlock] = {}, sum_sq[kForwardBlock] = {};

  // x null: an empty input (batch or spatial size 0, evaluation only), nothing to read.
  ChannelBlock(const T* x, int64_t c_, int64_t k_, int64_t S) : c(c_), k(k_) {
    for (int64_t i = 0; i < k; ++i) shift[i] = x ? finite_shift<double>(x[(c + i) * S]) : 0.0;
  }
  // Channel c + i's run of sample n; `also(j, V*)` runs beside each term (the fused output pass).
  template <class Also>
  void accumulate(const T* x, ChannelDims d, int64_t n, int64_t i, const Also& also) {
    const int64_t C = d.channels, S = d.spatial;
    const T* run = x + (n * C + c + i) * S;
    const T* ahead = n + 1 < d.batch ? run + C * S : run;  // the next sample's run (none after the last)
    shifted_sums(run, S, shift[i], sum[i], sum_sq[i], [&](int64_t j, auto* type) {
      simd::prefetch_line(ahead + j);
      also(j, type);
    });
  }
};

template <class T>
void batch_norm_forward_kernel(const T* __restrict__ x, const T* w, const T* b, T* running_mean, T* running_var,
                               bool training, double momentum, double eps, ChannelDims d, T* __restrict__ y,
                               T* save_mean, T* save_rstd) {
  const int64_t C = d.channels, S = d.spatial;
  const double count = static_cast<double>(d.batch * S);
  const bool stream = stream_output<T>(d.batch * C * S);
  const bool fuse = training && fuse_passes(y, S, stream);
  // y = (x − m)·a + s per channel of a block, from its statistics (or the running ones).
  struct Affine {
    T a[kForwardBlock], m[kForwardBlock], s[kForwardBlock];
  };
  auto affine = [&](const ChannelBlock<T>& block) {
    Affine f;
    for (int64_t i = 0; i < block.k; ++i) {
      const int64_t c = block.c + i;
      double mean, rstd;
      if (training) {
        const Moments m = moments_from_shifted(block.shift[i], block.sum[i], block.sum_sq[i], count, eps);
        mean = m.mean;
        rstd = m.rstd;
        if (running_mean) {
          // PyTorch's convention: the running variance is the unbiased one.
          running_mean[c] = static_cast<T>((1 - momentum) * running_mean[c] + momentum * m.mean);
          running_var[c] = static_cast<T>((1 - momentum) * running_var[c] + momentum * m.var * count / (count - 1));
        }
      } else {
        mean = running_mean[c];
        rstd = 1.0 / std::sqrt(static_cast<double>(running_var[c]) + eps);
      }
      if (save_mean) {
        save_mean[c] = static_cast<T>(mean);
        save_rstd[c] = static_cast<T>(rstd);
      }
      f.a[i] = static_cast<T>(rstd * (w ? static_cast<double>(w[c]) : 1.0));
      f.m[i] = static_cast<T>(mean);
      f.s[i] = b ? b[c] : T(0);
    }
    return f;
  };
  parallel_for(C, channel_grain(d), [&](int, int64_t c0, int64_t c1) {
    const T* source = d.batch * S > 0 ? x : nullptr;
    auto block_at = [&](int64_t cb) { return ChannelBlock<T>(source, cb, std::min(kForwardBlock, c1 - cb), S); };
    auto statistics = [&](ChannelBlock<T>& block) {
      for (int64_t n = 0; n < d.batch; ++n)
        for (int64_t i = 0; i < block.k; ++i) block.accumulate(x, d, n, i, Nothing{});
    };
    ChannelBlock<T> next = block_at(c0);
    if (training) statistics(next);
    for (int64_t cb = c0; cb < c1; cb += kForwardBlock) {
      const ChannelBlock<T> current = next;
      const Affine f = affine(current);
      const bool more = cb + kForwardBlock < c1;
      if (more) next = block_at(cb + kForwardBlock);  // never wider than current, which is full
      for (int64_t n = 0; n < d.batch; ++n) {
        for (int64_t i = 0; i < current.k; ++i) {
          const int64_t at = (n * C + cb + i) * S;
          const T m = f.m[i], a = f.a[i], s = f.s[i];
          if (fuse && more && i < next.k) {
            next.accumulate(x, d, n, i, [&](int64_t j, auto* type) {
              using V = std::remove_pointer_t<decltype(type)>;
              simd::put<V>(y + at + j, (load<V>(x + at + j) - m) * a + s, true);
            });
          } else {
            center_scale_shift(x + at, S, m, a, s, y + at, stream);
          }
        }
      }
      if (training && more && !fuse) statistics(next);
    }
    if (stream) simd::streaming_fence();
  });
}

template <class T>
void batch_norm_backward_kernel(const T* __restrict__ dy, const T* __restrict__ x, const T* save_mean,
                                const T* save_rstd, const T* w, bool training, ChannelDims d, T* dx, T* dw, T* db) {
  const int64_t C = d.channels, S = d.spatial;
  const double count = static_cast<double>(d.batch * S);
  const bool stream = dx && stream_output<T>(d.batch * C * S);
  parallel_for(C, channel_grain(d), [&](int, int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {  // one channel at a time (see kForwardBlock)
      const T mu = save_mean[c];
      double sum_dy = 0, sum_dy_xc = 0;  // Σ dy, Σ dy·(x − μ)
      for (int64_t n = 0; n < d.batch; ++n) {
        const T* xs = x + (n * C + c) * S;
        const T* dys = dy + (n * C + c) * S;
        const int64_t ahead = n + 1 < d.batch ? C * S : 0;  // as in the forward
        const auto [s, sx] = lane_sums<2, T>(S, [&](int64_t j, auto* t) {
          using V = std::remove_pointer_t<decltype(t)>;
          simd::prefetch_line(xs + ahead + j);
          simd::prefetch_line(dys + ahead + j);
          const V g = load<V>(dys + j);
          t[0] = g;
          t[1] = g * (load<V>(xs + j) - mu);
        });
        sum_dy += s;
        sum_dy_xc += sx;
      }
      const double rs = save_rstd[c];
      if (db) db[c] = static_cast<T>(sum_dy);
      if (dw) dw[c] = static_cast<T>(sum_dy_xc * rs);
      if (!dx) continue;
      // training: dx = γ·rstd·(dy − mean(dy) − (x − μ)·rstd²·mean(dy·(x − μ)));
      // evaluation: the statistics are constants, dx = γ·rstd·dy, with no term in x (0·(x − μ)
      // would turn a NaN in x into a NaN in dx, where torch's is finite).
      const double gamma = w ? static_cast<double>(w[c]) : 1.0, a = gamma * rs;
      const T ta = static_cast<T>(a);
      const T tb = static_cast<T>(training ? -a * rs * rs * sum_dy_xc / count : 0.0);
      const T tc = static_cast<T>(training ? -a * sum_dy / count : 0.0);
      for (int64_t n = 0; n < d.batch; ++n) {
        const T* xs = x + (n * C + c) * S;
        const T* dys = dy + (n * C + c) * S;
        simd::store_lanes(dx + (n * C + c) * S, S, stream, [&](int64_t j, auto* type) {
          using V = std::remove_pointer_t<decltype(type)>;
          const V scaled = ta * load<V>(dys + j);
          return training ? scaled + tb * (load<V>(xs + j) - mu) + tc : scaled;
        });
      }
    }
    if (stream) simd::streaming_fence();
  });
}

// ------------------------------------------------------------------------------------ group norm

template <class T>
void group_norm_forward_kernel(const T* __restrict__ x, int64_t G, const T* w, const T* b, double eps,
                               ChannelDims d, T* __restrict__ y, T* mean_out, T* rstd_out) {
  const int64_t C = d.channels, S = d.spatial, Cg = C / G;
  const int64_t slab = Cg * S;  // one (sample, group) is contiguous
  const bool stream = stream_output<T>(d.batch * C * S);
  parallel_for(d.batch * G, std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, slab)),
               [&](int, int64_t s0, int64_t s1) {
                 for (int64_t ng = s0; ng < s1; ++ng) {
                   const T* xs = x + ng * slab;
                   double sum = 0, sum_sq = 0;
                   const double shift = slab > 0 ? finite_shift<double>(xs[0]) : 0.0;
                   shifted_sums(xs, slab, shift, sum, sum_sq);
                   const Moments m = moments_from_shifted(shift, sum, sum_sq, static_cast<double>(slab), eps);
                   if (mean_out) mean_out[ng] = static_cast<T>(m.mean);
                   if (rstd_out) rstd_out[ng] = static_cast<T>(m.rstd);
                   const int64_t c_first = (ng % G) * Cg;
                   for (int64_t k = 0; k < Cg; ++k) {
                     const int64_t c = c_first + k;
                     const T a = static_cast<T>(m.rstd * (w ? static_cast<double>(w[c]) : 1.0));
                     center_scale_shift(xs + k * S, S, static_cast<T>(m.mean), a, b ? b[c] : T(0),
                                        y + ng * slab + k * S, stream);
                   }
                 }
                 if (stream) simd::streaming_fence();
               });
}

int64_t group_workspace_bytes(const TensorView& x) {
  if (x.ndim < 2) return 0;  // validation reports it
  return x.size(0) * x.size(1) * 2 * static_cast<int64_t>(sizeof(double));
}

template <class T>
void group_norm_backward_kernel(const T* __restrict__ dy, const T* __restrict__ x, int64_t G, const T* mean,
                                const T* rstd, const T* w, ChannelDims d, T* dx, T* dw, T* db, double* workspace) {
  const int64_t N = d.batch, C = d.channels, S = d.spatial, Cg = C / G;
  const int64_t slab = Cg * S;
  const double count = static_cast<double>(slab);
  const bool stream = dx && stream_output<T>(N * C * S);
  // workspace: (N, C, 2) sums Σ_s dy·x and Σ_s dy of each (sample, channel)
  parallel_for(N * G, std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, slab)),
               [&](int, int64_t s0, int64_t s1) {
                 for (int64_t ng = s0; ng < s1; ++ng) {
                   const int64_t n = ng / G, c_first = (ng % G) * Cg;
                   const double mu = mean[ng], rs = rstd[ng];
                   double sum_g = 0, sum_g_xc = 0;  // Σ γ·dy and Σ γ·dy·(x − μ) over the slab
                   for (int64_t k = 0; k < Cg; ++k) {
                     const int64_t c = c_first + k;
                     const T* xs = x + ng * slab + k * S;
                     const T* dys = dy + ng * slab + k * S;
                     const T mu_t = mean[ng];
                     const auto [s, sx] = lane_sums<2, T>(S, [&](int64_t i, auto* t) {
                       using V = std::remove_pointer_t<decltype(t)>;
                       const V g = load<V>(dys + i);
                       t[0] = g;
                       t[1] = g * (load<V>(xs + i) - mu_t);
                     });
                     workspace[(n * C + c) * 2] = sx * rs;  // Σ dy·x̂
                     workspace[(n * C + c) * 2 + 1] = s;    // Σ dy
                     const double gamma = w ? static_cast<double>(w[c]) : 1.0;
                     sum_g += gamma * s;
                     sum_g_xc += gamma * sx;
                   }
                   if (!dx) continue;
                   if (slab == 1) {  // one value per group: x̂ = 0, dx exactly 0 (see the row norms)
                     dx[ng] = T(0);
                     continue;
                   }
                   for (int64_t k = 0; k < Cg; ++k) {
                     const int64_t c = c_first + k;
                     const double gamma = w ? static_cast<double>(w[c]) : 1.0;
                     // dx = rstd·(γ·dy − mean(g) − (x − μ)·rstd²·mean(g·(x − μ))) with g = γ·dy
                     const T ta = static_cast<T>(gamma * rs);
                     const T tb = static_cast<T>(-rs * rs * rs * sum_g_xc / count);
                     const T tc = static_cast<T>(-rs * sum_g / count);
                     const T m = static_cast<T>(mu);
                     const T* xs = x + ng * slab + k * S;
                     const T* dys = dy + ng * slab + k * S;
                     T* dxs = dx + ng * slab + k * S;
                     simd::store_lanes(dxs, S, stream, [&](int64_t i, auto* type) {
                       using V = std::remove_pointer_t<decltype(type)>;
                       return ta * load<V>(dys + i) + tb * (load<V>(xs + i) - m) + tc;
                     });
                   }
                 }
                 if (stream) simd::streaming_fence();
               });
  if (!dw && !db) return;
  parallel_for(C, 64, [&](int, int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      double sw = 0, sb = 0;
      for (int64_t n = 0; n < N; ++n) {
        sw += workspace[(n * C + c) * 2];
        sb += workspace[(n * C + c) * 2 + 1];
      }
      if (dw) dw[c] = static_cast<T>(sw);
      if (db) db[c] = static_cast<T>(sb);
    }
  });
}

template <class T>
void running_stats_update_kernel(const T* mean, const T* rstd, ChannelDims d, double momentum, double eps,
                                 T* running_mean, T* running_var) {
  const double S = static_cast<double>(d.spatial);
  for (int64_t c = 0; c < d.channels; ++c) {
    double sum_mean = 0, sum_var = 0;
    for (int64_t n = 0; n < d.batch; ++n) {
      const double rs = rstd[n * d.channels + c];
      sum_mean += mean[n * d.channels + c];
      sum_var += clamp_nonnegative(1.0 / (rs * rs) - eps) * S / (S - 1);
    }
    running_mean[c] = static_cast<T>((1 - momentum) * running_mean[c] + momentum * sum_mean / d.batch);
    running_var[c] = static_cast<T>((1 - momentum) * running_var[c] + momentum * sum_var / d.batch);
  }
}

// ----------------------------------------------------------------------------------- weight norm

// ‖v‖ of every slice d of v viewed as (outer, slices, inner); or, with `other`, Σ v·other per slice.
template <class T>
void slice_dot(const T* __restrict__ a, const T* __restrict__ b, SliceDims d, double* out) {
  parallel_for(d.slices, std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, d.outer * d.inner)),
               [&](int, int64_t k0, int64_t k1) {
                 for (int64_t k = k0; k < k1; ++k) out[k] = 0;
                 for (int64_t o = 0; o < d.outer; ++o) {
                   for (int64_t k = k0; k < k1; ++k) {
                     const T* as = a + (o * d.slices + k) * d.inner;
                     const T* bs = b + (o * d.slices + k) * d.inner;
                     out[k] += lane_sums<1, T>(d.inner, [&](int64_t i, auto* t) {
                       using V = std::remove_pointer_t<decltype(t)>;
                       t[0] = load<V>(as + i) * load<V>(bs + i);
                     })[0];
                   }
                 }
               });
}

// out[o, k, i] = α_k·p[o, k, i] + β_k·q[o, k, i]  (q optional)
template <class T>
void slice_combine(const T* __restrict__ p, const double* alpha, const T* __restrict__ q, const double* beta,
                   SliceDims d, T* __restrict__ out) {
  const bool stream = stream_output<T>(d.outer * d.slices * d.inner);
  parallel_for(d.outer * d.slices, std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, d.inner)),
               [&](int, int64_t r0, int64_t r1) {
                 for (int64_t r = r0; r < r1; ++r) {
                   const int64_t k = r % d.slices;
                   const T a = static_cast<T>(alpha[k]), b = q ? static_cast<T>(beta[k]) : T(0);
                   const T* ps = p + r * d.inner;
                   const T* qs = q ? q + r * d.inner : nullptr;
                   simd::store_lanes(out + r * d.inner, d.inner, stream, [&](int64_t i, auto* type) {
                     using V = std::remove_pointer_t<decltype(type)>;
                     V v = a * load<V>(ps + i);
                     if (qs) v += b * load<V>(qs + i);
                     return v;
                   });
                 }
                 if (stream) simd::streaming_fence();
               });
}

// Weight norm with contiguous slices (dim = 0 or the whole tensor: outer = 1): each slice is reduced
// and then scaled while it is still in cache, one pass over memory instead of two.
// Forward: w = (g/‖v‖)·v. Backward (dw given): s = Σ dw·v, dg = s/‖v‖, dv = (g/‖v‖)·dw − (g·s/‖v‖³)·v.
template <class T>
void weight_norm_rows_kernel(const T* __restrict__ v, const T* __restrict__ g, const T* __restrict__ dw,
                             SliceDims d, T* __restrict__ out, T* norm_out, T* dg) {
  const int64_t n = d.inner;
  const bool stream = out && stream_output<T>(d.slices * n);
  parallel_for(d.slices, std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, n)), [&](int, int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      const T* vs = v + k * n;
      T* os = out ? out + k * n : nullptr;
      if (!dw) {  // forward
        const double norm = std::sqrt(lane_sums<1, T>(n, [&](int64_t i, auto* t) {
          using V = std::remove_pointer_t<decltype(t)>;
          const V x = load<V>(vs + i);
          t[0] = x * x;
        })[0]);
        if (norm_out) norm_out[k] = static_cast<T>(norm);
        const T a = static_cast<T>(g[k] / norm);
        simd::store_lanes(os, n, stream, [&](int64_t i, auto* type) {
          using V = std::remove_pointer_t<decltype(type)>;
          return a * load<V>(vs + i);
        });
        continue;
      }
      const T* dws = dw + k * n;
      const double dot = lane_sums<1, T>(n, [&](int64_t i, auto* t) {
        using V = std::remove_pointer_t<decltype(t)>;
        t[0] = load<V>(dws + i) * load<V>(vs + i);
      })[0];
      const double norm = norm_out[k];
      if (dg) dg[k] = static_cast<T>(dot / norm);
      if (!os) continue;
      const T a = static_cast<T>(g[k] / norm), b = static_cast<T>(-g[k] * dot / (norm * norm * norm));
      simd::store_lanes(os, n, stream, [&](int64_t i, auto* type) {
        using V = std::remove_pointer_t<decltype(type)>;
        return a * load<V>(dws + i) + b * load<V>(vs + i);
      });
    }
    if (stream) simd::streaming_fence();
  });
}

// ---------------------------------------------------------------------------------- spectral norm
// W (rows, cols) row-major, read in storage order by both products of a power-iteration step:
// Wᵀx adds rows into a column-vector accumulator (a chunk of columns per thread, which stays in
// L1/L2), W x takes row dots. They accumulate in T like torch's mv (measured: OpenBLAS's gemm with
// n = 1 packs W and was 4× slower than these loops; converting every element to double, 2.5×);
// norms, σ and the gradient's ⟨g, W⟩ accumulate in double.

// x ← x / max(‖x‖, eps)
template <class T>
void normalize_in_place(std::vector<T>& x, double eps) {
  double sq = 0;
  for (T value : x) sq += static_cast<double>(value) * value;
  const double scale = 1.0 / std::max(std::sqrt(sq), eps);
  for (T& value : x) value = static_cast<T>(value * scale);
}

// y = W x (transpose: y = Wᵀ x)
template <class T>
void matvec(const T* __restrict__ W, MatrixDims d, bool transpose, const T* __restrict__ x, T* __restrict__ y) {
  if (transpose) {
    parallel_for(d.cols, std::max<int64_t>(256, kGrainElements / std::max<int64_t>(1, d.rows)),
                 [&](int, int64_t j0, int64_t j1) {
                   T* __restrict__ ys = y + j0;
                   const int64_t n = j1 - j0;
                   std::fill(ys, ys + n, T(0));
                   for (int64_t i = 0; i < d.rows; ++i) {
                     const T* __restrict__ row = W + i * d.cols + j0;
                     const T xi = x[i];
#pragma omp simd
                     for (int64_t j = 0; j < n; ++j) ys[j] += xi * row[j];
                   }
                 });
    return;
  }
  const int64_t cols = d.cols;  // a local bound: through the captured d, GCC gathered (see row_dots)
  parallel_for(d.rows, row_grain(cols), [&](int, int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const T* __restrict__ row = W + i * cols;
      y[i] = static_cast<T>(lane_sums<1, T>(cols, [&](int64_t j, auto* t) {
        using V = std::remove_pointer_t<decltype(t)>;
        t[0] = load<V>(row + j) * load<V>(x + j);
      })[0]);
    }
  });
}

// out[i] = Σ_j a[i, j]·b[i, j] in double over the rows of a (rows × cols, row-major); b advances by
// b_row_stride per row (0: the same vector for every row). Row pointers are hoisted: indexing
// a[i·d.cols + j] through the captured dims made GCC gather every element (10x slower).
template <class T>
void row_dots(const T* a, const T* b, int64_t b_row_stride, MatrixDims d, double* out) {
  const int64_t cols = d.cols;
  parallel_for(d.rows, row_grain(cols), [&](int, int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const T* __restrict__ ar = a + i * cols;
      const T* __restrict__ br = b + i * b_row_stride;
      out[i] = lane_sums<1, T>(cols, [&](int64_t j, auto* t) {
        using V = std::remove_pointer_t<decltype(t)>;
        t[0] = load<V>(ar + j) * load<V>(br + j);
      })[0];
    }
  });
}

template <class T>
void spectral_norm_forward_kernel(const T* W, MatrixDims d, const T* u_in, const T* v_in, int iterations, double eps,
                                  std::optional<double> coeff, T* w, T* u_out, T* v_out, T* sigma_out) {
  std::vector<T> u(u_in, u_in + d.rows), v(d.cols), t(d.rows);  // t = W v
  if (v_in) std::copy(v_in, v_in + d.cols, v.begin());
  for (int it = 0; it < iterations; ++it) {
    matvec(W, d, true, u.data(), v.data());
    normalize_in_place(v, eps);
    matvec(W, d, false, v.data(), t.data());
    u = t;
    normalize_in_place(u, eps);
  }
  // σ = uᵀ W v needs W v for the final v: after an iteration that is t already (the same product
  // that u was normalized from), which saves a pass over W; without iterations it is computed here.
  double sigma = 0;  // σ = uᵀ W v
  if (iterations == 0) {
    // u and v as given: uᵀ W v may cancel down to far below its terms (σ = 0.02 from terms of order 1
    // took 24x torch's error with W v rounded to T), so this one product is taken in double.
    std::vector<double> dots(d.rows);
    row_dots(W, v.data(), 0, d, dots.data());
    for (int64_t i = 0; i < d.rows; ++i) sigma += static_cast<double>(u[i]) * dots[i];
  } else {
    for (int64_t i = 0; i < d.rows; ++i) sigma += static_cast<double>(u[i]) * t[i];  // = ‖W v‖: no cancellation
  }
  // w = W / σ, or W / max(1, σ/coeff) (Behrmann et al. 2019: only contract when σ exceeds coeff)
  const double scale = !coeff ? 1.0 / sigma : (sigma > *coeff ? *coeff / sigma : 1.0);
  const int64_t total = d.rows * d.cols;
  const T a = static_cast<T>(scale);
  parallel_for(total, kGrainElements, [&](int, int64_t e0, int64_t e1) {
#pragma omp simd
    for (int64_t e = e0; e < e1; ++e) w[e] = a * W[e];
  });
  std::copy(u.begin(), u.end(), u_out);
  std::copy(v.begin(), v.end(), v_out);
  *sigma_out = static_cast<T>(sigma);
}

// dW = α·g + β·u vᵀ (see norm.h); ⟨g, W⟩ as row dots summed in row order, so the result does not
// depend on the thread count.
template <class T>
void spectral_norm_backward_kernel(const T* g, const T* grad_sigma, const T* W, MatrixDims d, const T* u, const T* v,
                                   double sigma, std::optional<double> coeff, T* dW) {
  const double g_sigma = grad_sigma ? static_cast<double>(*grad_sigma) : 0.0;
  double alpha = 1, beta = g_sigma;
  if (!coeff || sigma > *coeff) {
    std::vector<double> dots(d.rows);
    row_dots(g, W, d.cols, d, dots.data());
    double dot = 0;
    for (double value : dots) dot += value;
    const double c = coeff ? *coeff : 1.0;
    alpha = c / sigma;
    beta = g_sigma - c * dot / (sigma * sigma);
  }
  parallel_for(d.rows, row_grain(d.cols), [&](int, int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const T a = static_cast<T>(alpha), b = static_cast<T>(beta * static_cast<double>(u[i]));
      const T* __restrict__ gs = g + i * d.cols;
      T* __restrict__ out = dW + i * d.cols;
#pragma omp simd
      for (int64_t j = 0; j < d.cols; ++j) out[j] = a * gs[j] + b * v[j];
    }
  });
}

}  // namespace

// ------------------------------------------------------------------------------- entry points

template <>
void layer_norm_forward<DeviceType::CPU>(const TensorView& x, int normalized_ndim, const OptView& weight, const OptView& bias,
                        double eps, const TensorView& y, const OptView& mean, const OptView& rstd, std::uintptr_t) {
  const RowDims d = check_layer_norm_forward(DeviceType::CPU, x, normalized_ndim, weight, bias, eps, y, mean, rstd);
  prefer_huge_pages(y);
  dispatch_cpu_floating(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    layer_norm_forward_kernel<T>(x.data_as<T>(), ptr_or_null<T>(weight), ptr_or_null<T>(bias), eps, d,
                                 y.data_as<T>(), ptr_or_null<T>(mean), ptr_or_null<T>(rstd));
  });
}

template <>
int64_t layer_norm_backward_workspace_size<DeviceType::CPU>(const TensorView& x, int normalized_ndim) {
  return row_workspace_bytes(x, normalized_ndim);
}

template <>
void layer_norm_backward<DeviceType::CPU>(const TensorView& dy, const TensorView& x, int normalized_ndim, const TensorView& mean,
                         const TensorView& rstd, const OptView& weight, const OptView& dx, const OptView& dweight,
                         const OptView& dbias, const OptView& workspace, std::uintptr_t) {
  const bool need_params = dweight || dbias;
  const RowDims d = check_layer_norm_backward(DeviceType::CPU, dy, x, normalized_ndim, mean, rstd, weight, dx,
                                              dweight, dbias, workspace,
                                              need_params ? row_partial_bytes(x, normalized_ndim) : 0);
  prefer_huge_pages(dx);
  dispatch_cpu_floating(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    row_norm_backward_kernel<T, true>(dy.data_as<T>(), x.data_as<T>(), mean.data_as<T>(), rstd.data_as<T>(),
                                      ptr_or_null<T>(weight), d, dx ? dx->data_as<T>() : nullptr,
                                      ptr_or_null<T>(dweight), ptr_or_null<T>(dbias),
                                      need_params ? ptr_or_null<double>(workspace) : nullptr,
                                      need_params && workspace ? workspace->numel() : 0);
  });
}

template <>
void rms_norm_forward<DeviceType::CPU>(const TensorView& x, int normalized_ndim, const OptView& weight, double eps, const TensorView& y,
                      const OptView& rstd, std::uintptr_t) {
  const RowDims d = check_rms_norm_forward(DeviceType::CPU, x, normalized_ndim, weight, eps, y, rstd);
  prefer_huge_pages(y);
  dispatch_cpu_floating(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    rms_norm_forward_kernel<T>(x.data_as<T>(), ptr_or_null<T>(weight), eps, d, y.data_as<T>(), ptr_or_null<T>(rstd));
  });
}

template <>
int64_t rms_norm_backward_workspace_size<DeviceType::CPU>(const TensorView& x, int normalized_ndim) {
  return row_workspace_bytes(x, normalized_ndim);
}

template <>
void rms_norm_backward<DeviceType::CPU>(const TensorView& dy, const TensorView& x, int normalized_ndim, const TensorView& rstd,
                       const OptView& weight, const OptView& dx, const OptView& dweight, const OptView& workspace, std::uintptr_t) {
  const bool need_params = dweight.has_value();
  const RowDims d = check_rms_norm_backward(DeviceType::CPU, dy, x, normalized_ndim, rstd, weight, dx, dweight,
                                            workspace, need_params ? row_partial_bytes(x, normalized_ndim) : 0);
  prefer_huge_pages(dx);
  dispatch_cpu_floating(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    row_norm_backward_kernel<T, false>(dy.data_as<T>(), x.data_as<T>(), nullptr, rstd.data_as<T>(),
                                       ptr_or_null<T>(weight), d, dx ? dx->data_as<T>() : nullptr,
                                       ptr_or_null<T>(dweight), nullptr,
                                       need_params ? ptr_or_null<double>(workspace) : nullptr,
                                       need_params && workspace ? workspace->numel() : 0);
  });
}

template <>
void batch_norm_forward<DeviceType::CPU>(const TensorView& x, const OptView& weight, const OptView& bias, const OptView& running_mean,
                        const OptView& running_var, bool training, double momentum, double eps, const TensorView& y,
                        const OptView& save_mean, const OptView& save_rstd, std::uintptr_t) {
  const ChannelDims d = check_batch_norm_forward(DeviceType::CPU, x, weight, bias, running_mean, running_var, training,
                                                 momentum, eps, y, save_mean, save_rstd);
  prefer_huge_pages(y);
  dispatch_cpu_floating(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    batch_norm_forward_kernel<T>(x.data_as<T>(), ptr_or_null<T>(weight), ptr_or_null<T>(bias),
                                 running_mean ? running_mean->data_as<T>() : nullptr,
                                 running_var ? running_var->data_as<T>() : nullptr, training, momentum, eps, d,
                                 y.data_as<T>(), ptr_or_null<T>(save_mean), ptr_or_null<T>(save_rstd));
  });
}

template <>
void batch_norm_backward<DeviceType::CPU>(const TensorView& dy, const TensorView& x, const TensorView& save_mean,
                         const TensorView& save_rstd, const OptView& weight, bool training, const OptView& dx,
                         const OptView& dweight, const OptView& dbias, std::uintptr_t) {
  const ChannelDims d =
      check_batch_norm_backward(DeviceType::CPU, dy, x, save_mean, save_rstd, weight, dx, dweight, dbias);
  prefer_huge_pages(dx);
  dispatch_cpu_floating(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    batch_norm_backward_kernel<T>(dy.data_as<T>(), x.data_as<T>(), save_mean.data_as<T>(), save_rstd.data_as<T>(),
                                  ptr_or_null<T>(weight), training, d, dx ? dx->data_as<T>() : nullptr,
                                  ptr_or_null<T>(dweight), ptr_or_null<T>(dbias));
  });
}

template <>
void group_norm_forward<DeviceType::CPU>(const TensorView& x, int64_t groups, const OptView& weight, const OptView& bias, double eps,
                        const TensorView& y, const OptView& mean, const OptView& rstd, std::uintptr_t) {
  const ChannelDims d = check_group_norm_forward(DeviceType::CPU, x, groups, weight, bias, eps, y, mean, rstd);
  prefer_huge_pages(y);
  dispatch_cpu_floating(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    group_norm_forward_kernel<T>(x.data_as<T>(), groups, ptr_or_null<T>(weight), ptr_or_null<T>(bias), eps, d,
                                 y.data_as<T>(), ptr_or_null<T>(mean), ptr_or_null<T>(rstd));
  });
}

template <>
int64_t group_norm_backward_workspace_size<DeviceType::CPU>(const TensorView& x, int64_t) { return group_workspace_bytes(x); }

template <>
void group_norm_backward<DeviceType::CPU>(const TensorView& dy, const TensorView& x, int64_t groups, const TensorView& mean,
                         const TensorView& rstd, const OptView& weight, const OptView& dx, const OptView& dweight,
                         const OptView& dbias, const OptView& workspace, std::uintptr_t) {
  const ChannelDims d = check_group_norm_backward(DeviceType::CPU, dy, x, groups, mean, rstd, weight, dx, dweight,
                                                  dbias, workspace, group_workspace_bytes(x));
  prefer_huge_pages(dx);
  dispatch_cpu_floating(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    group_norm_backward_kernel<T>(dy.data_as<T>(), x.data_as<T>(), groups, mean.data_as<T>(), rstd.data_as<T>(),
                                  ptr_or_null<T>(weight), d, dx ? dx->data_as<T>() : nullptr,
                                  ptr_or_null<T>(dweight), ptr_or_null<T>(dbias), ptr_or_null<double>(workspace));
  });
}

template <>
void running_stats_update<DeviceType::CPU>(const TensorView& mean, const TensorView& rstd, int64_t batch, int64_t channels,
                          int64_t spatial, double momentum, double eps, const TensorView& running_mean,
                          const TensorView& running_var, std::uintptr_t) {
  const ChannelDims d = check_running_stats_update(DeviceType::CPU, mean, rstd, batch, channels, spatial, momentum,
                                                   eps, running_mean, running_var);
  dispatch_cpu_floating(running_mean.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    running_stats_update_kernel<T>(mean.data_as<T>(), rstd.data_as<T>(), d, momentum, eps,
                                   running_mean.data_as<T>(), running_var.data_as<T>());
  });
}

template <>
void weight_norm_forward<DeviceType::CPU>(const TensorView& v, const TensorView& g, int dim, const TensorView& w,
                         const OptView& norm, std::uintptr_t) {
  const SliceDims d = check_weight_norm_forward(DeviceType::CPU, v, g, dim, w, norm);
  prefer_huge_pages(w);
  dispatch_cpu_floating(v.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (d.outer == 1) {
      weight_norm_rows_kernel<T>(v.data_as<T>(), g.data_as<T>(), nullptr, d, w.data_as<T>(), ptr_or_null<T>(norm),
                                 nullptr);
      return;
    }
    std::vector<double> sq(d.slices), alpha(d.slices);
    slice_dot<T>(v.data_as<T>(), v.data_as<T>(), d, sq.data());
    T* norm_out = ptr_or_null<T>(norm);
    const T* gp = g.data_as<T>();
    for (int64_t k = 0; k < d.slices; ++k) {
      const double n = std::sqrt(sq[k]);
      if (norm_out) norm_out[k] = static_cast<T>(n);
      alpha[k] = gp[k] / n;
    }
    slice_combine<T>(v.data_as<T>(), alpha.data(), nullptr, nullptr, d, w.data_as<T>());
  });
}

template <>
void weight_norm_backward<DeviceType::CPU>(const TensorView& dw, const TensorView& v, const TensorView& g, const TensorView& norm,
                          int dim, const OptView& dv, const OptView& dg, std::uintptr_t) {
  const SliceDims d = check_weight_norm_backward(DeviceType::CPU, dw, v, g, norm, dim, dv, dg);
  prefer_huge_pages(dv);
  dispatch_cpu_floating(v.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (d.outer == 1) {
      weight_norm_rows_kernel<T>(v.data_as<T>(), g.data_as<T>(), dw.data_as<T>(), d,
                                 dv ? dv->data_as<T>() : nullptr, norm.data_as<T>(), ptr_or_null<T>(dg));
      return;
    }
    // s = Σ dw·v per slice; dg = s/‖v‖; dv = (g/‖v‖)·dw − (g·s/‖v‖³)·v
    std::vector<double> s(d.slices), alpha(d.slices), beta(d.slices);
    slice_dot<T>(dw.data_as<T>(), v.data_as<T>(), d, s.data());
    const T* gp = g.data_as<T>();
    const T* np = norm.data_as<T>();
    for (int64_t k = 0; k < d.slices; ++k) {
      const double n = np[k];
      if (dg) dg->data_as<T>()[k] = static_cast<T>(s[k] / n);
      alpha[k] = gp[k] / n;
      beta[k] = -gp[k] * s[k] / (n * n * n);
    }
    if (dv) slice_combine<T>(dw.data_as<T>(), alpha.data(), v.data_as<T>(), beta.data(), d, dv->data_as<T>());
  });
}

template <>
int64_t spectral_norm_forward_workspace_size<DeviceType::CPU>(const TensorView&) { return 0; }

template <>
void spectral_norm_forward<DeviceType::CPU>(const TensorView& weight, const TensorView& u, const OptView& v,
                                            int n_power_iterations, double eps, std::optional<double> coeff,
                                            const TensorView& w, const TensorView& u_out, const TensorView& v_out,
                                            const TensorView& sigma, const OptView& workspace, std::uintptr_t) {
  const MatrixDims d = check_spectral_norm_forward(DeviceType::CPU, weight, u, v, n_power_iterations, eps, coeff, w,
                                                   u_out, v_out, sigma, workspace, 0);
  prefer_huge_pages(w);
  dispatch_cpu_floating(weight.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    spectral_norm_forward_kernel<T>(weight.data_as<T>(), d, u.data_as<T>(), ptr_or_null<T>(v), n_power_iterations,
                                    eps, coeff, w.data_as<T>(), u_out.data_as<T>(), v_out.data_as<T>(),
                                    sigma.data_as<T>());
  });
}

template <>
int64_t spectral_norm_backward_workspace_size<DeviceType::CPU>(const TensorView&) { return 0; }

template <>
void spectral_norm_backward<DeviceType::CPU>(const TensorView& grad_w, const OptView& grad_sigma,
                                             const TensorView& weight, const TensorView& u, const TensorView& v,
                                             const TensorView& sigma, std::optional<double> coeff,
                                             const TensorView& grad_weight, const OptView& workspace, std::uintptr_t) {
  const MatrixDims d = check_spectral_norm_backward(DeviceType::CPU, grad_w, grad_sigma, weight, u, v, sigma, coeff,
                                                    grad_weight, workspace, 0);
  dispatch_cpu_floating(weight.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    spectral_norm_backward_kernel<T>(grad_w.data_as<T>(), ptr_or_null<T>(grad_sigma), weight.data_as<T>(), d,
                                     u.data_as<T>(), v.data_as<T>(), static_cast<double>(*sigma.data_as<T>()), coeff,
                                     grad_weight.data_as<T>());
  });
}

}  // namespace replearn::norm
