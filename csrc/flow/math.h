// The scalar math of the flow family, shared by cpu.cpp and cuda.cu (host and device).
//
// Coupling scales (the `scale` argument of affine_coupling), with δ = d log σ / ds:
//   exp      log σ = s                       δ = 1                      (RealNVP, Dinh et al. 2017)
//   tanh     log σ = tanh(s)                 δ = 1 − tanh²(s)           (bounded: |log σ| < 1)
//   sigmoid  log σ = logsigmoid(s + 2)       δ = sigmoid(−(s + 2))      (Glow's released code)
// Since dσ/ds = σ·δ, every gradient of the coupling is δ times the gradient with respect to log σ.
//
// Planar flow (Rezende & Mohamed 2015), at a = wᵀz + b with h = tanh(a), h' = 1 − h² and m = wᵀû:
//   logdet = log|1 + m h'|, ∂logdet/∂a = m h''/(1 + m h') with h'' = −2 h h', ∂logdet/∂m = h'/(1 + m h').
#pragma once

#include <cmath>
#include <type_traits>

#include "core/host_device.h"
#include "core/vmath.h"
#include "flow/flow.h"

namespace replearn::flow {

// exp, tanh and log1p of the elementwise kernels: the device's own functions on the GPU, the
// vectorizable ones of core/vmath.h on the CPU (std::exp in a `omp simd` loop stays a scalar call).
template <class A>
REPLEARN_HD A fexp(A x) {
#if defined(__CUDA_ARCH__)
  return std::exp(x);
#else
  return vmath::exp_approx(x);
#endif
}
template <class A>
REPLEARN_HD A ftanh(A x) {
#if defined(__CUDA_ARCH__)
  return std::tanh(x);
#else
  return vmath::tanh_approx(x);
#endif
}
template <class A>
REPLEARN_HD A flog1p(A x) {  // x ≥ 0
#if defined(__CUDA_ARCH__)
  return std::log1p(x);
#else
  return vmath::log1p_approx(x);
#endif
}

// Calls f(std::integral_constant<Scale, scale>{}): the scale becomes a template argument of the kernels
// (validation has rejected other codes).
template <class F>
void dispatch_scale(int scale, const F& f) {
  switch (static_cast<Scale>(scale)) {
    case Scale::Exp: return f(std::integral_constant<Scale, Scale::Exp>{});
    case Scale::Tanh: return f(std::integral_constant<Scale, Scale::Tanh>{});
    case Scale::Sigmoid: return f(std::integral_constant<Scale, Scale::Sigmoid>{});
  }
}

// log σ(s) for the scale parameterization S; its derivative d log σ / ds into `dlog`.
template <Scale S, class A>
REPLEARN_HD A coupling_log_sigma(A s, A& dlog) {
  if constexpr (S == Scale::Exp) {
    dlog = A(1);
    return s;
  } else if constexpr (S == Scale::Tanh) {
    const A t = ftanh(s);
    dlog = A(1) - t * t;
    return t;
  } else {
    // logsigmoid(a) = min(a, 0) − log1p(exp(−|a|)) never overflows; sigmoid(−a) = exp(logsigmoid(a) − a).
    const A a = s + A(2);
    const A ls = (a < A(0) ? a : A(0)) - flog1p(fexp(-std::abs(a)));
    dlog = fexp(ls - a);
    return ls;
  }
}

// softplus and sigmoid without overflow, for the planar reparameterization m(a) = −1 + softplus(a).
template <class A>
REPLEARN_HD A stable_softplus(A a) {
  return (a > A(0) ? a : A(0)) + std::log1p(std::exp(-std::abs(a)));
}
template <class A>
REPLEARN_HD A stable_sigmoid(A a) {
  const A e = std::exp(-std::abs(a));
  return a >= A(0) ? A(1) / (A(1) + e) : e / (A(1) + e);
}

// The per-sample quantities of the planar flow at a = wᵀz + b (see the header comment).
template <class A>
struct PlanarPoint {
  A h, dh, logdet, dlogdet_da, dlogdet_dm;
};
template <class A>
REPLEARN_HD PlanarPoint<A> planar_point(A a, A m) {
  PlanarPoint<A> p;
  p.h = std::tanh(a);
  p.dh = A(1) - p.h * p.h;
  const A det = A(1) + m * p.dh;
  p.logdet = std::log(std::abs(det));
  p.dlogdet_da = m * (A(-2) * p.h * p.dh) / det;
  p.dlogdet_dm = p.dh / det;
  return p;
}

// α such that α + m·tanh(α + b) = c, for m ≥ −1 (the left side is then non-decreasing in α).
// Since |tanh| ≤ 1 the root lies in [c − |m|, c + |m|]; Newton steps are taken inside that bracket
// and replaced by bisection whenever they leave it or the slope 1 + m·tanh' vanishes, so the
// iteration converges for every m ≥ −1 (also near m = −1, where the slope goes to 0 at α = −b),
// down to float64 resolution.
REPLEARN_HD double planar_solve(double c, double m, double b) {
  double lo = c - std::abs(m), hi = c + std::abs(m);
  if (!(hi > lo)) return c;
  double alpha = c - m * std::tanh(c + b);
  if (!(alpha > lo && alpha < hi)) alpha = 0.5 * (lo + hi);
  for (int iteration = 0; iteration < 200; ++iteration) {
    const double th = std::tanh(alpha + b);
    const double g = alpha + m * th - c;
    if (g == 0.0) break;
    if (g < 0.0) lo = alpha;
    else hi = alpha;
    const double slope = 1.0 + m * (1.0 - th * th);
    double next = alpha - g / slope;
    if (!(slope > 0.0) || !(next > lo && next < hi)) next = 0.5 * (lo + hi);
    const double step = std::abs(next - alpha);
    alpha = next;
    const double scale = std::abs(alpha) > 1.0 ? std::abs(alpha) : 1.0;
    if (step <= 1e-16 * scale || hi - lo <= 4e-16 * scale) break;
  }
  return alpha;
}

// The chain rule from (û, m) back to (u, w), with k = (m − wu)/ww, wu = wᵀu, ww = ‖w‖²:
//   û = u + k·w, m = −1 + softplus(wu). Given dk = ∂L/∂û · w and the direct ∂L/∂m, the gradients are
//   ∂L/∂u = ∂L/∂û + dwu·w,   ∂L/∂w = (direct) + k·∂L/∂û + dwu·u + two_dww·w.
template <class A>
struct PlanarChain {
  A k, dwu, two_dww;
};
template <class A>
REPLEARN_HD PlanarChain<A> planar_chain(A wu, A ww, A m, A dk, A dm) {
  PlanarChain<A> c;
  c.k = (m - wu) / ww;
  const A dm_total = dm + dk / ww;  // û depends on m through k
  c.dwu = dm_total * stable_sigmoid(wu) - dk / ww;
  c.two_dww = A(-2) * dk * (m - wu) / (ww * ww);
  return c;
}

// The 1×1 convolution's weight W = P·L·Ũ with L = I + strict_lower(lower), Ũ = strict_upper(upper) +
// diag(s) and (P z)[i] = z[perm[i]]: W[i][j] = Σ_{k ≤ min(r, j)} L[r][k]·Ũ[k][j] with r = perm[i].
// `load(p, index)` reads a parameter as the accumulator type A (the CUDA side converts half types).
template <class A, class T, class Load>
REPLEARN_HD A invconv_weight(int64_t i, int64_t j, int64_t c, const int64_t* perm, const T* lower, const T* upper,
                             const T* s, const Load& load) {
  const int64_t r = perm[i];
  const int64_t last = r < j ? r : j;
  A acc = A(0);
  for (int64_t k = 0; k <= last; ++k) {
    const A l = k == r ? A(1) : load(lower, r * c + k);
    const A u = k == j ? load(s, k) : load(upper, k * c + j);
    acc += l * u;
  }
  return acc;
}

// Gradients of L and Ũ from dM = Pᵀ·dW (dM[perm[i]] = dW[i], read through `dm(r, k)`):
//   dL = strict_lower(dM·Ũᵀ),  dŨ = upper(Lᵀ·dM) (its diagonal is the gradient of s).
// Entry (r, col) of whichever applies: r > col gives dL[r][col], r ≤ col gives dŨ[r][col].
template <class A, class T, class Load, class DM>
REPLEARN_HD A invconv_factor_grad(int64_t r, int64_t col, int64_t c, const T* lower, const T* upper, const T* s,
                                  const Load& load, const DM& dm) {
  A acc = A(0);
  if (r > col) {
    for (int64_t k = col; k < c; ++k) acc += dm(r, k) * (k == col ? load(s, col) : load(upper, col * c + k));
  } else {
    for (int64_t k = r; k < c; ++k) acc += (k == r ? A(1) : load(lower, k * c + r)) * dm(k, col);
  }
  return acc;
}

// The planar flow's workspace in the accumulation type A (cpu.cpp, cuda.cu): û (D) | 8 scalars (wu, ww,
// m, k, Σ e·h, Σ da, Σ dm, unused) | per sample h, da, e·h, dm (4B) | column sums Su, Sw (2D, backward).
template <class A>
struct PlanarScratch {
  A* u_hat;
  A* scalars;
  A* per_sample;
  A* columns;
  PlanarScratch(void* base, RowDims d)
      : u_hat(static_cast<A*>(base)), scalars(u_hat + d.features), per_sample(scalars + 8),
        columns(per_sample + 4 * d.batch) {}
  static int64_t elements(int64_t batch, int64_t features, bool backward) {
    return features + 8 + (backward ? 4 * batch + 2 * features : 0);
  }
};

}  // namespace replearn::flow
