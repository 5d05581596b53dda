// lane_sums: sums of per-element terms over a contiguous span, in double, fast.
//
// `#pragma omp simd reduction(+ : s)` gives each sum one vector accumulator, so the loop runs at
// the adder's latency, not its throughput: every iteration's add waits for the previous one. With
// the inputs widened to double first (to sum in double), a row of 1024 float32 values cost ~200
// cycles per sum, as much as reading the row from DRAM on a fast host (the layer-norm backward was
// compute bound at 8192×1024). Here the terms are computed a vector (simd::Vec) at a time in the
// inputs' own precision, summed in two independent vector accumulators per sum, and, for float,
// each lane's float partial is added into a double accumulator every kFloatRun vectors: 8 float
// roundings at most (a relative 5e-7 of the terms' magnitudes) before the sum continues in double.
// The lanes are added at the end in a fixed order, so the result depends only on n and the data.
#pragma once

#include <array>
#include <cstdint>
#include <type_traits>

#include "core/simd.h"

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"

namespace replearn {

// Vectors of float summed in float before they are added into the double accumulators.
constexpr int kFloatRun = 8;

using simd::load;

// Returns {Σ_j t_0(j), …, Σ_j t_{K−1}(j)} over j ∈ [0, n), in double. `term` is a generic callable
// term(j, V* t) that writes K terms of type V: V = simd::Vec<T> for the kLanes<T> elements from j, and
// V = T for element j alone (the tail). Writing it once for both with simd::load<V> keeps the vector
// and scalar formulas identical.
template <int K, class T, class Term>
[[gnu::always_inline]] inline std::array<double, K> lane_sums(int64_t n, const Term& term) {
  using V = simd::Vec<T>;
  using Wide = simd::Vec<double>;  // double lanes: one Wide per 8 values
  constexpr int L = simd::kLanes<T>;
  constexpr int widen = L / simd::kLanes<double>;  // Wide vectors per V (2 for float, 1 for double)
  constexpr int run = std::is_same_v<T, float> ? kFloatRun : 1;
  Wide acc[K][2 * widen] = {};
  const int64_t steps = n / (2 * L);  // steps of two vectors
  for (int64_t s0 = 0; s0 < steps; s0 += run) {
    const int64_t s1 = s0 + run < steps ? s0 + run : steps;
    V part[K][2] = {};
    for (int64_t s = s0; s < s1; ++s) {
      V t0[K], t1[K];
      term(s * 2 * L, t0);
      term(s * 2 * L + L, t1);
      for (int k = 0; k < K; ++k) {
        part[k][0] += t0[k];
        part[k][1] += t1[k];
      }
    }
    for (int k = 0; k < K; ++k) {
      for (int h = 0; h < 2; ++h) {
        for (int w = 0; w < widen; ++w) {
          Wide d;
          for (int l = 0; l < simd::kLanes<double>; ++l) d[l] = part[k][h][w * simd::kLanes<double> + l];
          acc[k][h * widen + w] += d;
        }
      }
    }
  }
  int64_t j = steps * 2 * L;
  std::array<double, K> sums{};
  for (; j < n; ++j) {  // fewer than 2·L left: one at a time
    T t[K];
    term(j, t);
    for (int k = 0; k < K; ++k) sums[k] += t[k];
  }
  for (int k = 0; k < K; ++k) {
    Wide total = acc[k][0];
    for (int v = 1; v < 2 * widen; ++v) total += acc[k][v];
    double lanes = 0;
    for (int l = 0; l < simd::kLanes<double>; ++l) lanes += total[l];
    sums[k] += lanes;
  }
  return sums;
}

}  // namespace replearn

#pragma GCC diagnostic pop
