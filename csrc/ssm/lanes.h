// State-space family: SIMD lanes for the CPU scan, and the exp it is bound by.
//
// The selective scan makes one exp(Δ·A) per (channel, state, step): 50 M of them at Mamba's block size
// (batch 4, dim 768, L 1024, N 16). The CPU scan therefore runs one register's worth of channels at
// once (`Vec<T>`: 16 float32 or 8 float64 lanes under AVX-512, half that under AVX2; GCC/Clang vector
// extensions, so the code builds for any target) and needs an exp that is both vectorized and
// accurate:
//
//   exp(x) = 2^k · e^r,  k = round(x·log2 e),  r = x − k·ln2  (Cody & Waite 1980, "Software Manual for
//   the Elementary Functions": ln2 split in a short high part, so k·ln2_hi is exact, and a low part),
//   e^r on |r| ≤ ln2/2 by Cephes' expf minimax polynomial (S. Moshier, Cephes Math Library, expf.c),
//   2^k applied by AVX-512's vscalefps (exact, handles overflow to inf and gradual underflow) or, on
//   other targets, as two exponent-field multiplications (2^⌊k/2⌋ · 2^(k−⌊k/2⌋): both factors normal,
//   one final rounding). Relative error ≤ 2 ulp against std::exp over all of float32, including
//   denormal results, ±inf and NaN (tests/cpp/test_ssm.cpp checks it).
#pragma once

#include <cmath>
#include <cstdint>

#include "core/simd.h"
#include "core/vmath.h"

#ifdef __AVX512F__
#include <immintrin.h>
#endif

// Every function here is inline, so the vector-argument ABI note (-Wpsabi) for targets without
// AVX-512 concerns no call across translation units.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"

namespace replearn::ssm {

using simd::kLanes;
using simd::load_unaligned;
using simd::splat;
using simd::store_unaligned;
using simd::Vec;

// The scalar exp and its constants live in core/vmath.h, shared with the other families' kernels.
using vmath::exp_approx;
using vmath::expf_reduced;
using vmath::kExpMax;
using vmath::kExpMin;
using vmath::kLn2Hi;
using vmath::kLn2Lo;
using vmath::kLog2e;

// exp of every lane.
inline Vec<float> exp_lanes(Vec<float> x) {
#ifdef __AVX512F__
  // max/min return their second operand when either is NaN: NaN passes through, vscalefps keeps it.
  x = Vec<float>(_mm512_maskz_min_ps(0xffff, __m512(splat(kExpMax)), _mm512_maskz_max_ps(0xffff, __m512(splat(kExpMin)), __m512(x))));
  const __m512 k = _mm512_maskz_roundscale_ps(0xffff, __m512(x * kLog2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const Vec<float> kv = Vec<float>(k);
  const Vec<float> r = (x - kv * kLn2Hi) - kv * kLn2Lo;
  // (maskz forms: GCC 12's plain forms warn on their internal _mm512_undefined_ps)
  return Vec<float>(_mm512_maskz_scalef_ps(0xffff, __m512(expf_reduced(r)), k));
#else
  for (int i = 0; i < kLanes<float>; ++i) x[i] = exp_approx(x[i]);
  return x;
#endif
}
inline Vec<double> exp_lanes(Vec<double> x) {
  for (int i = 0; i < kLanes<double>; ++i) x[i] = std::exp(x[i]);
  return x;
}

// log(1 + y) of every lane, for y ∈ [0, 1] (e^−|x| in softplus). u = 1 + y rounds, but its error
// c = y − (u − 1) is exact (Fast2Sum, since 1 ≥ y), and log(1 + y) = log(u) + c/u to within c² ≤
// 2^−48; log(u), u ∈ [1, 2], by Cephes' logf polynomial after halving u ≥ √2 (core/vmath.h).
inline Vec<float> log1p_lanes(Vec<float> y) {
  const Vec<float> u = 1.0f + y;
  const auto big = u >= 1.41421356237309505f;
  const Vec<float> m = big ? u * 0.5f : u;
  return vmath::logf_reduced(m - 1.0f, big ? splat(1.0f) : Vec<float>{}) + (y - (u - 1.0f)) / u;
}
inline Vec<double> log1p_lanes(Vec<double> y) {
  for (int i = 0; i < kLanes<double>; ++i) y[i] = std::log1p(y[i]);
  return y;
}

// softplus(x) = max(x, 0) + log(1 + e^−|x|) and σ(x) = 1/(1 + e^−x) of every lane. Above torch's
// softplus threshold (x > 20) e^−|x| < 2^−28·x, so the sum is x, as torch returns.
template <class V>  // Vec<float> or Vec<double>
inline V softplus_lanes(V x) {
  const V zero{};
  return (x > zero ? x : zero) + log1p_lanes(exp_lanes(-(x < zero ? -x : x)));
}
template <class V>
inline V sigmoid_lanes(V x) {
  const V one = splat(decltype(x[0] + 0)(1));
  return one / (one + exp_lanes(-x));
}

// Transposes a kLanes × kLanes tile held as kLanes vectors (v[i][j] ↔ v[j][i]): at each scale s the
// off-diagonal s×s blocks of every 2s×2s block swap, two two-source permutes per pair of vectors.
template <class T>
[[gnu::always_inline]] inline void transpose_lanes(Vec<T>* v) {
  constexpr int W = kLanes<T>;
  using Index = typename simd::LaneTraits<T>::index;
  struct Masks {
    Index lo[8], hi[8];
    Masks() {
      int level = 0;
      for (int s = W / 2; s >= 1; s /= 2, ++level)
        for (int j = 0; j < W; ++j) {
          lo[level][j] = (j & s) ? W + j - s : j;  // row i keeps its own left block, takes row i+s's
          hi[level][j] = (j & s) ? W + j : j + s;  // row i+s takes row i's right block, keeps its own
        }
    }
  };
  static const Masks masks;
  int level = 0;
  for (int s = W / 2; s >= 1; s /= 2, ++level)
    for (int i = 0; i < W; ++i)
      if (!(i & s)) {
        const Vec<T> a = v[i], b = v[i + s];
        v[i] = __builtin_shuffle(a, b, masks.lo[level]);
        v[i + s] = __builtin_shuffle(a, b, masks.hi[level]);
      }
}

// Sums across lanes of up to kLanes vectors at once: out[i] = Σ_lanes v[i] (v[i] = 0 for i ≥ count).
// A transposing tree: at each level, pairs of vectors fold their halves into one vector (two
// two-source permutes and an add per output), so kLanes sums cost about 3 instructions each instead
// of a log2(kLanes)-step horizontal reduction per vector. `v` is overwritten.
template <class T>
[[gnu::always_inline]] inline Vec<T> sum_lanes(Vec<T>* v, int count) {
  constexpr int W = kLanes<T>;
  using Index = typename simd::LaneTraits<T>::index;
  struct Masks {  // level ℓ folds segments of 2s lanes into s (s = W/2, W/4, …, 1)
    Index lo[8], hi[8];
    Masks() {
      int level = 0;
      for (int s = W / 2; s >= 1; s /= 2, ++level)
        for (int i = 0; i < W; ++i) {
          const int segment = i / s, from_b = segment % 2;
          lo[level][i] = from_b * W + (segment / 2) * 2 * s + i % s;
          hi[level][i] = lo[level][i] + s;
        }
    }
  };
  static const Masks masks;
  for (int i = count; i < W; ++i) v[i] = Vec<T>{};
  // Pairing vector j with j + half keeps the sums in order: after the last level lane i holds v[i].
  int level = 0;
  for (int half = W / 2; half >= 1; half /= 2, ++level)
    for (int j = 0; j < half; ++j)
      v[j] = __builtin_shuffle(v[j], v[j + half], masks.lo[level]) +
             __builtin_shuffle(v[j], v[j + half], masks.hi[level]);
  return v[0];
}

}  // namespace replearn::ssm

#pragma GCC diagnostic pop
