// Vectorizable elementary functions for CPU kernels: written with selects and bit casts instead of
// library calls, so `#pragma omp simd` loops compile them to SIMD (glibc's vector libm is only
// declared under -ffast-math, which the project does not use). float versions are accurate to a few
// ulp; the double overloads call the C library (float64 is the gradcheck dtype, not a fast path).
//
//   exp: 2^k · e^r, k = round(x·log2 e), r = x − k·ln2 with ln2 split in two (Cody & Waite 1980,
//        "Software Manual for the Elementary Functions"), e^r by Cephes' expf minimax polynomial
//        (S. Moshier, Cephes Math Library, expf.c); 2^k as two exponent-field factors so gradual
//        underflow and overflow to inf come out right. NaN passes through. ≤ 2 ulp against std::exp
//        over all of float32 (tests/cpp/test_ssm.cpp checks it through ssm::scan_exp).
//   log: Cephes' logf (x = m·2^e, m ∈ [√½, √2), degree-8 polynomial in m − 1; ~1 ulp), normal x > 0.
//   log1p: log(1 + y)·y/((1 + y) − 1), exact to rounding where 1 + y rounds (Goldberg 1991, "What
//        every computer scientist should know about floating-point arithmetic", Theorem 4).
//   tanh: Cephes' tanhf (x + x³·P(x²) for |x| < 0.625, else 1 − 2/(e^{2|x|} + 1), sign restored).
//
// Where the compiler targets AVX-512, 16-lane versions of exp, σ and tanh follow for loops written
// with intrinsics (rnn/cpu.cpp's LSTM cell): the same exp with min/max clamps and vscalefps in place
// of the selects and exponent-field integer work that the auto-vectorized scalar code compiles to.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace replearn::vmath {

// Cody–Waite constants and the input range: below kExpMin, e^x < 2^−150 rounds to 0; above kExpMax,
// e^x > FLT_MAX. Clamping to them only keeps k finite (±inf would give r = inf − inf).
constexpr float kLog2e = 1.44269504088896341f, kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
constexpr float kExpMin = -104.0f, kExpMax = 89.0f;

// e^r for |r| ≤ ln2/2 (Cephes expf.c's coefficients); V is float or a float vector type.
template <class V>
inline V expf_reduced(V r) {
  V p = 1.9875691500e-4f * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  return (p * r + 1.0f) * r + 1.0f;  // 1 + r + r²·p as two FMAs
}

inline float exp_approx(float x) {
  const bool nan = x != x;
  x = x < kExpMin ? kExpMin : x;
  x = x > kExpMax ? kExpMax : x;
  const float k = nan ? 0.0f : std::nearbyint(x * kLog2e);
  const float r = (x - k * kLn2Hi) - k * kLn2Lo;
  const int32_t ki = static_cast<int32_t>(k), k1 = ki >> 1, k2 = ki - k1;
  const float e = expf_reduced(r) * __builtin_bit_cast(float, (k1 + 127) << 23) *
                  __builtin_bit_cast(float, (k2 + 127) << 23);
  return nan ? x : e;
}
inline double exp_approx(double x) { return std::exp(x); }

// e^x for callers whose result no longer changes outside [-87, 88] (σ(x) = 1/(1 + e^−x), tanh via
// e^{2|x|}): the argument is clamped to that range, where one exponent-field factor is exact, so the
// two-factor scaling and its integer work go. Same polynomial, same ≤ 2 ulp inside the range;
// e^−87 ≈ 1.6e−38 and e^88 ≈ 1.7e38 leave σ and tanh at their float limits outside it. NaN passes
// through. Measured on an LSTM cell pass (16 × 512 units, T 128, one thread): 20% less time.
inline float exp_saturating(float x) {
  x = x < -87.0f ? -87.0f : x;  // NaN fails both comparisons and stays NaN
  x = x > 88.0f ? 88.0f : x;
  const float k = x != x ? 0.0f : std::nearbyint(x * kLog2e);
  const float r = (x - k * kLn2Hi) - k * kLn2Lo;
  return expf_reduced(r) * __builtin_bit_cast(float, (static_cast<int32_t>(k) + 127) << 23);
}

// e^x for softmax terms, x = s − max ≤ 0 (valid up to 88): exp_saturating, and 0 below −87, where
// it would pin the result at e^−87 ≈ 1.6e−38 (so a masked score, −inf, gives exactly 0). Without
// exp_approx's two-factor scaling, which only matters for subnormal results. NaN passes through.
// Attention's forward and backward.
inline float exp_nonpositive(float x) { return x < -87.0f ? 0.0f : exp_saturating(x); }
inline double exp_nonpositive(double x) { return std::exp(x); }

// log(2^e · (1 + x)) for 1 + x ∈ [√½, √2) (Cephes logf's polynomial); V is float or a float vector type.
template <class V>
inline V logf_reduced(V x, V e) {
  const V z = x * x;
  V y = 7.0376836292e-2f * x - 1.1514610310e-1f;
  y = y * x + 1.1676998740e-1f;
  y = y * x - 1.2420140846e-1f;
  y = y * x + 1.4249322787e-1f;
  y = y * x - 1.6668057665e-1f;
  y = y * x + 2.0000714765e-1f;
  y = y * x - 2.4999993993e-1f;
  y = y * x + 3.3333331174e-1f;
  y = y * x * z;
  y += -2.12194440e-4f * e;
  y += -0.5f * z;
  return x + y + 0.693359375f * e;
}
inline float log_approx(float x) {
  int32_t bits = __builtin_bit_cast(int32_t, x);
  float e = static_cast<float>(((bits >> 23) & 0xff) - 126);
  bits = (bits & 0x807fffff) | 0x3f000000;  // mantissa in [0.5, 1)
  float m = __builtin_bit_cast(float, bits);
  const bool small = m < 0.707106781186547524f;
  e = small ? e - 1.0f : e;
  m = small ? m + m - 1.0f : m - 1.0f;
  return logf_reduced(m, e);
}
inline double log_approx(double x) { return std::log(x); }

// log(1 + y) for y ≥ 0 (log_approx needs 1 + y normal, which y ≥ 0 guarantees).
template <class T>
inline T log1p_approx(T y) {
  const T one_plus = T(1) + y;
  return one_plus == T(1) ? y : log_approx(one_plus) * y / (one_plus - T(1));
}

// tanh given e^{2|x|} from one of the exps above.
inline float tanh_from(float x, float exp_2a) {
  const float a = std::abs(x);
  const float z = x * x;
  const float poly =
      ((((-5.70498872745e-3f * z + 2.06390887954e-2f) * z - 5.37397155531e-2f) * z + 1.33314422036e-1f) * z -
       3.33332819422e-1f) * z * x + x;  // fmt: skip
  const float big = 1.0f - 2.0f / (exp_2a + 1.0f);
  const float r = a < 0.625f ? poly : (x < 0.0f ? -big : big);
  return x != x ? x : r;
}
inline float tanh_approx(float x) { return tanh_from(x, exp_approx(2.0f * std::abs(x))); }
// tanh through exp_saturating: tanh(44) already rounds to 1 in float.
inline float tanh_saturating(float x) { return tanh_from(x, exp_saturating(2.0f * std::abs(x))); }
inline double tanh_approx(double x) { return std::tanh(x); }

#if defined(__AVX512F__)
// e^x on 16 lanes, as exp_saturating: the argument clamped to [−87, 88] (vmaxps and vminps return
// their second operand, x, when it is NaN, so NaN passes through), the same reduction and polynomial,
// and 2^k applied by vscalefps (exact). ≤ 2 ulp inside the range (tests/cpp/test_core.cpp checks
// all three functions).
inline __m512 exp_saturating(__m512 x) {
  x = _mm512_max_ps(_mm512_set1_ps(-87.0f), x);
  x = _mm512_min_ps(_mm512_set1_ps(88.0f), x);
  const __m512 k = _mm512_roundscale_ps(x * kLog2e, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 r = (x - k * kLn2Hi) - k * kLn2Lo;
  return _mm512_scalef_ps(expf_reduced(r), k);
}

// σ(x) = 1/(1 + e^−x) on 16 lanes: within 9e−8 of σ (a 0.00037-step sweep of [−120, 120]).
inline __m512 sigmoid(__m512 x) { return 1.0f / (1.0f + exp_saturating(-x)); }

// tanh(x) = 2σ(2x) − 1 on 16 lanes: one exp and one division, where tanh_saturating spends two
// polynomials and a select. Accurate in absolute terms (within 1.8e−7 over the same sweep, against
// 7e−8 for tanh_saturating), not relatively near 0, where tanh x ≈ x is small: for values used beside
// numbers of order one (an LSTM's gates and state), not where relative accuracy at tiny |x| matters.
inline __m512 tanh_via_sigmoid(__m512 x) { return 2.0f / (1.0f + exp_saturating(-2.0f * x)) - 1.0f; }
#endif

}  // namespace replearn::vmath
