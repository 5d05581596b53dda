// Pooling family, CPU kernels (float32 and float64).
//
// Every kernel is memory bound: it reads x (or grad_y) once from DRAM and writes its output once,
// parallel over planes (one plane of 112×112 float32 is 49 KiB, so a plane's repeated reads hit L2).
// Within a plane the strided ops (max and average pooling) sweep one output row at a time: for each
// input row of the window and each kernel tap j, a contiguous run of outputs reads
// x[ih, ow·stride − pad + j·dilation]. The run [lo_j, hi_j) of outputs whose tap j lies inside the
// input is computed once per op (TapRuns), so the inner loop has no bounds test and vectorizes.
//
//   max      y[o] = max over taps, taken in row-major tap order with `v > m || isnan(v)`: ties keep
//            the first max and a NaN wins (the last NaN), torch's convention, so the indices match.
//   average  Σ taps in double, times 1/divisor (windows.h).
//   backward per plane, in a fixed order (deterministic): max scatters grad_y[o] to x[indices[o]];
//            average spreads grad_y[o]/divisor(o) over o's taps.
// Global average pooling (adaptive, output 1×1) is a sum per plane (plane_means).
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "core/check.h"
#include "core/dispatch.h"
#include "core/memory.h"
#include "core/parallel.h"
#include "pool/pool.h"

namespace replearn::pool {

namespace {

// Planes per parallel chunk: at least ~32 KiB of input per chunk, so threads are worth starting.
int64_t plane_grain(const Geometry& g) { return std::max<int64_t>(1, (1 << 13) / std::max<int64_t>(1, g.in_plane())); }

// For each tap j of a strided axis: offset j·dilation − pad, and the outputs [lo, hi) whose tap j is
// inside [0, in).
struct TapRuns {
  std::vector<int64_t> offset, lo, hi;
  explicit TapRuns(const Axis& a) : offset(a.kernel), lo(a.kernel), hi(a.kernel) {
    for (int64_t j = 0; j < a.kernel; ++j) {
      offset[j] = j * a.dilation - a.pad;
      lo[j] = max64(0, ceil_div(-offset[j], a.stride));
      hi[j] = max64(lo[j], min64(a.out, floor_div(a.in - 1 - offset[j], a.stride) + 1));
    }
  }
};

// ------------------------------------------------------------------------------------ max pooling

// One input row's contribution to a row of maxima: m[o] vs x[o·stride + offset] for o in [lo, hi).
template <class T, bool kIndices>
void max_row_tap(const T* __restrict__ xrow, int64_t stride, int64_t offset, int64_t lo, int64_t hi,
                 int64_t index_base, T* __restrict__ m, int64_t* __restrict__ idx) {
#pragma omp simd
  for (int64_t o = lo; o < hi; ++o) {
    const int64_t iw = o * stride + offset;
    const T v = xrow[iw];
    const bool take = v > m[o] || v != v;  // v != v: NaN, which wins
    m[o] = take ? v : m[o];
    if constexpr (kIndices) idx[o] = take ? index_base + iw : idx[o];
  }
}

template <class T, bool kIndices>
void max_pool_forward_kernel(const T* __restrict__ x, const Geometry& g, T* __restrict__ y,
                             int64_t* __restrict__ indices) {
  const TapRuns taps(g.w);
  std::vector<int64_t> first_w(g.w.out);  // the first tap inside the input of each output column
  for (int64_t ow = 0; ow < g.w.out; ++ow) first_w[ow] = g.w.window(ow).begin;
  const int64_t W = g.w.in;
  parallel_for(g.planes, plane_grain(g), [&](int, int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const T* xp = x + p * g.in_plane();  // (H, W)
      for (int64_t oh = 0; oh < g.h.out; ++oh) {
        T* m = y + p * g.out_plane() + oh * g.w.out;  // (OW): the running maxima live in y
        int64_t* idx = kIndices ? indices + p * g.out_plane() + oh * g.w.out : nullptr;
        const Span rows = g.h.window(oh);
        // torch's start: −∞ with the index of the window's first tap (kept when every tap is −∞, and
        // when a dilated window has no tap inside the input at all).
        for (int64_t ow = 0; ow < g.w.out; ++ow) {
          m[ow] = -std::numeric_limits<T>::infinity();
          if constexpr (kIndices) idx[ow] = rows.begin * W + first_w[ow];
        }
        for (int64_t ih = rows.begin; ih < rows.end; ih += rows.step)
          for (int64_t j = 0; j < g.w.kernel; ++j)
            max_row_tap<T, kIndices>(xp + ih * W, g.w.stride, taps.offset[j], taps.lo[j], taps.hi[j], ih * W, m, idx);
      }
    }
  });
}

// grad_x[indices[o]] += grad_y[o] per plane, in output order. Indices outside the plane (not from
// max_pool_forward) are ignored rather than written through.
template <class T>
void max_pool_backward_kernel(const T* __restrict__ dy, const int64_t* __restrict__ indices, const Geometry& g,
                              T* __restrict__ dx) {
  parallel_for(g.planes, plane_grain(g), [&](int, int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      T* dxp = dx + p * g.in_plane();
      std::memset(dxp, 0, sizeof(T) * g.in_plane());
      const T* dyp = dy + p * g.out_plane();
      const int64_t* ip = indices + p * g.out_plane();
      for (int64_t o = 0; o < g.out_plane(); ++o) {
        const int64_t i = ip[o];
        if (static_cast<uint64_t>(i) < static_cast<uint64_t>(g.in_plane())) dxp[i] += dyp[o];
      }
    }
  });
}

// -------------------------------------------------------------------------------- average pooling

struct Divisor {
  int64_t override_;  // 0: none
  bool count_include_pad;
  // The divisor of the output with row window `r` and column window `c`.
  double of(const Span& r, const Span& c) const {
    if (override_) return static_cast<double>(override_);
    return count_include_pad ? static_cast<double>(r.padded * c.padded)
                             : static_cast<double>((r.end - r.begin) * (c.end - c.begin));
  }
};

template <class T>
void avg_pool_forward_kernel(const T* __restrict__ x, const Geometry& g, Divisor divisor, T* __restrict__ y) {
  const TapRuns taps(g.w);
  std::vector<Span> cols(g.w.out);
  for (int64_t ow = 0; ow < g.w.out; ++ow) cols[ow] = g.w.window(ow);
  const int64_t W = g.w.in, OW = g.w.out;
  parallel_for(g.planes, plane_grain(g), [&](int, int64_t p0, int64_t p1) {
    std::vector<double> sums(OW);
    double* __restrict__ s = sums.data();
    for (int64_t p = p0; p < p1; ++p) {
      const T* xp = x + p * g.in_plane();
      for (int64_t oh = 0; oh < g.h.out; ++oh) {
        const Span rows = g.h.window(oh);
        std::fill(s, s + OW, 0.0);
        for (int64_t ih = rows.begin; ih < rows.end; ++ih)
          for (int64_t j = 0; j < g.w.kernel; ++j) {
            const T* xrow = xp + ih * W + taps.offset[j];
            const int64_t stride = g.w.stride;
#pragma omp simd
            for (int64_t o = taps.lo[j]; o < taps.hi[j]; ++o) s[o] += xrow[o * stride];
          }
        T* yrow = y + p * g.out_plane() + oh * OW;
        for (int64_t ow = 0; ow < OW; ++ow) yrow[ow] = static_cast<T>(s[ow] / divisor.of(rows, cols[ow]));
      }
    }
  });
}

template <class T>
void avg_pool_backward_kernel(const T* __restrict__ dy, const Geometry& g, Divisor divisor, T* __restrict__ dx) {
  const TapRuns taps(g.w);
  std::vector<Span> cols(g.w.out);
  for (int64_t ow = 0; ow < g.w.out; ++ow) cols[ow] = g.w.window(ow);
  const int64_t W = g.w.in, OW = g.w.out;
  parallel_for(g.planes, plane_grain(g), [&](int, int64_t p0, int64_t p1) {
    std::vector<T> shares(OW);  // grad_y[o] / divisor(o) of one output row
    T* __restrict__ share = shares.data();
    for (int64_t p = p0; p < p1; ++p) {
      T* dxp = dx + p * g.in_plane();
      std::memset(dxp, 0, sizeof(T) * g.in_plane());
      for (int64_t oh = 0; oh < g.h.out; ++oh) {
        const Span rows = g.h.window(oh);
        const T* dyrow = dy + p * g.out_plane() + oh * OW;
        for (int64_t ow = 0; ow < OW; ++ow) share[ow] = static_cast<T>(dyrow[ow] / divisor.of(rows, cols[ow]));
        for (int64_t ih = rows.begin; ih < rows.end; ++ih)
          for (int64_t j = 0; j < g.w.kernel; ++j) {
            T* dxrow = dxp + ih * W + taps.offset[j];
            const int64_t stride = g.w.stride;
            // Distinct o write distinct columns o·stride + offset: no dependence between iterations.
#pragma omp simd
            for (int64_t o = taps.lo[j]; o < taps.hi[j]; ++o) dxrow[o * stride] += share[o];
          }
      }
    }
  });
}

// ----------------------------------------------------------------------- adaptive average pooling

// Global average pooling sums each plane in blocks of kSumBlock values in T's SIMD lanes (a lane adds
// at most kSumBlock / lanes values, so the rounding error stays that of a handful of additions) and
// adds the block sums in double. For the 7×7 planes of a CNN this runs at the speed of a float sum
// (a double reduction of 49 floats costs twice the instructions), with double's range for large
// planes; planes of one block go four at a time, four independent accumulators (measured on 65536
// planes of 49 floats in L3: 0.46 ms summing in double, 0.41 in blocks, 0.33 four at a time).
constexpr int64_t kSumBlock = 64;
template <class T>
double plane_sum(const T* __restrict__ x, int64_t n) {
  double total = 0;
  for (int64_t b = 0; b < n; b += kSumBlock) {
    const int64_t e = std::min(n, b + kSumBlock);
    T s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t i = b; i < e; ++i) s += x[i];
    total += s;
  }
  return total;
}

// y[p] = mean of x[p·n, (p + 1)·n) for p < count.
template <class T>
void plane_means(const T* __restrict__ x, int64_t count, int64_t n, T* __restrict__ y) {
  const double inv_n = 1.0 / static_cast<double>(n);
  int64_t p = 0;
  if (n <= kSumBlock)
    for (; p + 4 <= count; p += 4) {
      const T* a = x + p * n;
      T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
      for (int64_t i = 0; i < n; ++i) {
        s0 += a[i];
        s1 += a[n + i];
        s2 += a[2 * n + i];
        s3 += a[3 * n + i];
      }
      y[p] = static_cast<T>(s0 * inv_n);
      y[p + 1] = static_cast<T>(s1 * inv_n);
      y[p + 2] = static_cast<T>(s2 * inv_n);
      y[p + 3] = static_cast<T>(s3 * inv_n);
    }
  for (; p < count; ++p) y[p] = static_cast<T>(plane_sum(x + p * n, n) * inv_n);
}

template <class T>
void adaptive_avg_pool_forward_kernel(const T* __restrict__ x, const Geometry& g, T* __restrict__ y) {
  if (g.out_plane() == 1) {  // global average pooling: the mean of each plane
    const int64_t n = g.in_plane();
    parallel_for(g.planes, plane_grain(g), [&](int, int64_t p0, int64_t p1) {
      plane_means(x + p0 * n, p1 - p0, n, y + p0);
    });
    return;
  }
  parallel_for(g.planes, plane_grain(g), [&](int, int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const T* xp = x + p * g.in_plane();
      for (int64_t oh = 0; oh < g.h.out; ++oh) {
        const Span rows = g.h.window(oh);
        for (int64_t ow = 0; ow < g.w.out; ++ow) {
          const Span cols = g.w.window(ow);
          double sum = 0;
          for (int64_t ih = rows.begin; ih < rows.end; ++ih)
            for (int64_t iw = cols.begin; iw < cols.end; ++iw) sum += xp[ih * g.w.in + iw];
          y[p * g.out_plane() + oh * g.w.out + ow] =
              static_cast<T>(sum / static_cast<double>((rows.end - rows.begin) * (cols.end - cols.begin)));
        }
      }
    }
  });
}

template <class T>
void adaptive_avg_pool_backward_kernel(const T* __restrict__ dy, const Geometry& g, T* __restrict__ dx) {
  if (g.out_plane() == 1) {  // global: every input of a plane gets grad_y/(H·W)
    const int64_t n = g.in_plane();
    parallel_for(g.planes, plane_grain(g), [&](int, int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const T share = static_cast<T>(dy[p] / static_cast<double>(n));
        T* dxp = dx + p * n;
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) dxp[i] = share;
      }
    });
    return;
  }
  parallel_for(g.planes, plane_grain(g), [&](int, int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      T* dxp = dx + p * g.in_plane();
      std::memset(dxp, 0, sizeof(T) * g.in_plane());
      for (int64_t oh = 0; oh < g.h.out; ++oh) {
        const Span rows = g.h.window(oh);
        for (int64_t ow = 0; ow < g.w.out; ++ow) {
          const Span cols = g.w.window(ow);
          const T share = static_cast<T>(dy[p * g.out_plane() + oh * g.w.out + ow] /
                                         static_cast<double>((rows.end - rows.begin) * (cols.end - cols.begin)));
          for (int64_t ih = rows.begin; ih < rows.end; ++ih)
            for (int64_t iw = cols.begin; iw < cols.end; ++iw) dxp[ih * g.w.in + iw] += share;
        }
      }
    }
  });
}

}  // namespace

// ---------------------------------------------------------------------------------- entry points

template <>
void max_pool_forward<DeviceType::CPU>(const TensorView& x, const Ints& kernel_size, const Ints& stride,
                                       const Ints& padding, const Ints& dilation, bool ceil_mode, const TensorView& y,
                                       const OptView& indices, std::uintptr_t) {
  const Geometry g = check_max_pool_forward(DeviceType::CPU, x, kernel_size, stride, padding, dilation, ceil_mode, y,
                                            indices);
  prefer_huge_pages(y);
  prefer_huge_pages(indices);
  dispatch_cpu_floating(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (indices)
      max_pool_forward_kernel<T, true>(x.data_as<T>(), g, y.data_as<T>(), indices->data_as<int64_t>());
    else
      max_pool_forward_kernel<T, false>(x.data_as<T>(), g, y.data_as<T>(), nullptr);
  });
}

template <>
void max_pool_backward<DeviceType::CPU>(const TensorView& dy, const TensorView& indices, const Ints& kernel_size,
                                        const Ints& stride, const Ints& padding, const Ints& dilation, bool ceil_mode,
                                        const TensorView& dx, std::uintptr_t) {
  const Geometry g = check_max_pool_backward(DeviceType::CPU, dy, indices, kernel_size, stride, padding, dilation,
                                             ceil_mode, dx);
  prefer_huge_pages(dx);
  dispatch_cpu_floating(dx.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    max_pool_backward_kernel<T>(dy.data_as<T>(), indices.data_as<int64_t>(), g, dx.data_as<T>());
  });
}

template <>
void avg_pool_forward<DeviceType::CPU>(const TensorView& x, const Ints& kernel_size, const Ints& stride,
                                       const Ints& padding, bool ceil_mode, bool count_include_pad,
                                       int64_t divisor_override, const TensorView& y, std::uintptr_t) {
  const Geometry g = check_avg_pool_forward(DeviceType::CPU, x, kernel_size, stride, padding, ceil_mode,
                                            divisor_override, y);
  prefer_huge_pages(y);
  dispatch_cpu_floating(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    avg_pool_forward_kernel<T>(x.data_as<T>(), g, Divisor{divisor_override, count_include_pad}, y.data_as<T>());
  });
}

template <>
void avg_pool_backward<DeviceType::CPU>(const TensorView& dy, const Ints& kernel_size, const Ints& stride,
                                        const Ints& padding, bool ceil_mode, bool count_include_pad,
                                        int64_t divisor_override, const TensorView& dx, std::uintptr_t) {
  const Geometry g = check_avg_pool_backward(DeviceType::CPU, dy, kernel_size, stride, padding, ceil_mode,
                                             divisor_override, dx);
  prefer_huge_pages(dx);
  dispatch_cpu_floating(dx.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    avg_pool_backward_kernel<T>(dy.data_as<T>(), g, Divisor{divisor_override, count_include_pad}, dx.data_as<T>());
  });
}

template <>
void adaptive_avg_pool_forward<DeviceType::CPU>(const TensorView& x, int spatial_ndim, const TensorView& y,
                                                std::uintptr_t) {
  const Geometry g = check_adaptive_avg_pool_forward(DeviceType::CPU, x, spatial_ndim, y);
  prefer_huge_pages(y);
  dispatch_cpu_floating(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    adaptive_avg_pool_forward_kernel<T>(x.data_as<T>(), g, y.data_as<T>());
  });
}

template <>
void adaptive_avg_pool_backward<DeviceType::CPU>(const TensorView& dy, int spatial_ndim, const TensorView& dx,
                                                 std::uintptr_t) {
  const Geometry g = check_adaptive_avg_pool_backward(DeviceType::CPU, dy, spatial_ndim, dx);
  prefer_huge_pages(dx);
  dispatch_cpu_floating(dx.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    adaptive_avg_pool_backward_kernel<T>(dy.data_as<T>(), g, dx.data_as<T>());
  });
}

}  // namespace replearn::pool
