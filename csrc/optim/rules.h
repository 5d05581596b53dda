// The per-element update rules of the optimizer family, written once for both devices.
//
// A rule is a small struct: its hyper-parameters as members (in the compute type S: the parameter
// dtype on the CPU, float on CUDA), `kLists` (how many tensors it reads per element: the parameter,
// its gradient, then its state buffers, in the order of the entry point's arguments), `kWrites` (a
// bit per list it writes back), and `operator()(S (&v)[kLists], const S* per_tensor)` which updates
// one element in registers. `per_tensor` holds up to three scalars that differ between tensors of
// one group: whatever depends on the tensor's own step count (bias corrections, Adagrad's decayed
// rate, AdaBound's bounds), computed on the host in double (host.cpp).
//
// cpu.cpp runs a rule inside an `omp simd` loop over each contiguous segment; cuda.cu inside the
// multi-tensor kernel. Options that change which buffers exist (momentum, centered, amsgrad) are
// template arguments, so an absent buffer is never read; options that only change arithmetic
// (maximize, weight decay, Nesterov) are loop-invariant values the compiler turns into selects.
//
// Each rule mirrors torch.optim's for-loop implementation operation by operation (torch 2.x,
// `_single_tensor_<name>` in torch/optim/<name>.py), e.g. `lerp` with torch's own formula, so that
// float64 results agree with torch's to rounding.
#pragma once

#include <array>
#include <cmath>
#include <type_traits>
#include <vector>

#include "optim/optim.h"

#ifdef __CUDACC__
#define REPLEARN_RULE __host__ __device__ __forceinline__
#else
#define REPLEARN_RULE inline
#endif

namespace replearn::optim {

// torch.lerp: a + w·(b − a) for w < 0.5, else b − (b − a)·(1 − w) (exact at both ends).
template <class S>
REPLEARN_RULE S lerp(S a, S b, S w) {
  return w < S(0.5) ? a + w * (b - a) : b - (b - a) * (S(1) - w);
}

// torch.maximum: NaN in either argument gives NaN.
template <class S>
REPLEARN_RULE S nan_max(S a, S b) {
  return (a > b || a != a) ? a : b;
}

// torch.clamp(x, lo, hi) = min(max(x, lo), hi), NaN kept; hi wins where lo > hi (a negative clip value).
template <class S>
REPLEARN_RULE S clamp(S x, S lo, S hi) {
  const S raised = x < lo ? lo : x;
  return raised > hi ? hi : raised;
}

template <class S>
REPLEARN_RULE S square_root(S x) {
#ifdef __CUDA_ARCH__
  return sqrt(x);  // CUDA's device overloads (float and double)
#else
  return std::sqrt(x);
#endif
}

// The gradient a rule steps along: negated when maximizing, plus λ·p for L2 weight decay
// (torch: `grad = -grad`, then `grad = grad.add(param, alpha=weight_decay)` when λ ≠ 0).
template <class S>
REPLEARN_RULE S effective_grad(S g, S p, S sign, S weight_decay) {
  g = sign * g;
  return weight_decay != S(0) ? g + weight_decay * p : g;
}

// ------------------------------------------------------------------------------------------- SGD
// lists: param, grad, [momentum_buffer]; per_tensor[0]: 1 when the buffer is new (b ← g).
template <class S, bool kMomentum>
struct SgdRule {
  static constexpr int kLists = kMomentum ? 3 : 2;
  static constexpr unsigned kWrites = kMomentum ? 0b101u : 0b001u;
  S lr, momentum, one_minus_dampening, weight_decay, sign;
  bool nesterov;

  REPLEARN_RULE void operator()(S (&v)[kLists], const S* per_tensor) const {
    S g = effective_grad(v[1], v[0], sign, weight_decay);
    if constexpr (kMomentum) {
      const S b = per_tensor[0] != S(0) ? g : v[2] * momentum + one_minus_dampening * g;
      v[2] = b;
      g = nesterov ? g + momentum * b : b;
    }
    v[0] = v[0] + (-lr) * g;
  }
};

// --------------------------------------------------------------------------------------- Adagrad
// lists: param, grad, sum; per_tensor[0]: η/(1 + (t − 1)·lr_decay).
template <class S>
struct AdagradRule {
  static constexpr int kLists = 3;
  static constexpr unsigned kWrites = 0b101u;
  S eps, weight_decay, sign;

  REPLEARN_RULE void operator()(S (&v)[kLists], const S* per_tensor) const {
    const S g = effective_grad(v[1], v[0], sign, weight_decay);
    v[2] = v[2] + g * g;
    const S std_dev = square_root(v[2]) + eps;
    v[0] = v[0] + (-per_tensor[0]) * (g / std_dev);
  }
};

// --------------------------------------------------------------------------------------- RMSprop
// lists: param, grad, square_avg, [grad_avg if centered], [momentum_buffer if momentum].
template <class S, bool kCentered, bool kMomentum>
struct RmspropRule {
  static constexpr int kGradAvg = 3;
  static constexpr int kBuffer = kCentered ? 4 : 3;
  static constexpr int kLists = 3 + kCentered + kMomentum;
  static constexpr unsigned kWrites = 0b101u | (kCentered ? 1u << kGradAvg : 0u) | (kMomentum ? 1u << kBuffer : 0u);
  S lr, alpha, one_minus_alpha, eps, weight_decay, momentum, sign;

  REPLEARN_RULE void operator()(S (&v)[kLists], const S*) const {
    const S g = effective_grad(v[1], v[0], sign, weight_decay);
    v[2] = v[2] * alpha + one_minus_alpha * g * g;
    S avg;
    if constexpr (kCentered) {
      v[kGradAvg] = lerp(v[kGradAvg], g, one_minus_alpha);
      avg = square_root(v[2] + S(-1) * v[kGradAvg] * v[kGradAvg]);
    } else {
      avg = square_root(v[2]);
    }
    avg = avg + eps;
    if constexpr (kMomentum) {
      v[kBuffer] = v[kBuffer] * momentum + g / avg;
      v[0] = v[0] + (-lr) * v[kBuffer];
    } else {
      v[0] = v[0] + (-lr) * (g / avg);
    }
  }
};

// ------------------------------------------------------------------------------------ Adam/AdamW
// lists: param, grad, exp_avg, exp_avg_sq, [max_exp_avg_sq]; per_tensor: η/(1 − β₁ᵗ), √(1 − β₂ᵗ).
template <class S, bool kAmsgrad>
struct AdamRule {
  static constexpr int kLists = kAmsgrad ? 5 : 4;
  static constexpr unsigned kWrites = kAmsgrad ? 0b11101u : 0b1101u;
  S one_minus_beta1, beta2, one_minus_beta2, eps, sign;
  S l2_weight_decay;  // λ for Adam's L2 penalty, 0 for AdamW
  S param_decay;      // 1 − ηλ for AdamW's decoupled decay, 1 otherwise (p·1 is exact)

  REPLEARN_RULE void operator()(S (&v)[kLists], const S* per_tensor) const {
    v[0] = v[0] * param_decay;
    const S g = effective_grad(v[1], v[0], sign, l2_weight_decay);
    v[2] = lerp(v[2], g, one_minus_beta1);
    v[3] = v[3] * beta2 + one_minus_beta2 * g * g;
    S second = v[3];
    if constexpr (kAmsgrad) {
      v[4] = nan_max(v[4], v[3]);
      second = v[4];
    }
    const S denom = square_root(second) / per_tensor[1] + eps;
    v[0] = v[0] + (-per_tensor[0]) * (v[2] / denom);
  }
};

// -------------------------------------------------------------------------------- AdaBound/AMSBound
// lists as Adam; per_tensor: η·√(1 − β₂ᵗ)/(1 − β₁ᵗ), η_l(t), η_u(t). Follows the authors'
// implementation (github.com/Luolc/AdaBound, adabound/adabound.py): L2 weight decay, moments by
// mul/add (no lerp), ε added to √v before bias correction, the clipped rate multiplies m.
template <class S, bool kAmsbound>
struct AdaboundRule {
  static constexpr int kLists = kAmsbound ? 5 : 4;
  static constexpr unsigned kWrites = kAmsbound ? 0b11101u : 0b1101u;
  S beta1, one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay, sign;

  REPLEARN_RULE void operator()(S (&v)[kLists], const S* per_tensor) const {
    const S g = effective_grad(v[1], v[0], sign, weight_decay);
    v[2] = v[2] * beta1 + one_minus_beta1 * g;
    v[3] = v[3] * beta2 + one_minus_beta2 * g * g;
    S second = v[3];
    if constexpr (kAmsbound) {
      v[4] = nan_max(v[4], v[3]);
      second = v[4];
    }
    const S denom = square_root(second) + eps;
    const S rate = clamp(per_tensor[0] / denom, per_tensor[1], per_tensor[2]);
    v[0] = v[0] - rate * v[2];
  }
};

// ---------------------------------------------------------------------------------- gradient clipping
// lists: grad.
template <class S>
struct ClipValueRule {
  static constexpr int kLists = 1;
  static constexpr unsigned kWrites = 0b1u;
  S clip_value;

  REPLEARN_RULE void operator()(S (&v)[kLists], const S*) const { v[0] = clamp(v[0], -clip_value, clip_value); }
};

template <class S>
struct ScaleRule {
  static constexpr int kLists = 1;
  static constexpr unsigned kWrites = 0b1u;
  S factor;

  REPLEARN_RULE void operator()(S (&v)[kLists], const S*) const { v[0] = v[0] * factor; }
};

// clip_grad_norm_'s coefficient as torch computes it, in the norm's dtype: `max_norm / (norm + 1e-6)`
// is Tensor.__rdiv__, i.e. reciprocal() * max_norm, then clamp(max=1).
template <class S>
REPLEARN_RULE S clip_coefficient(S norm, S max_norm) {
  const S coefficient = S(1) / (norm + S(1e-6)) * max_norm;
  return coefficient > S(1) ? S(1) : coefficient;
}

// ------------------------------------------------------------------ per-tensor scalars (host.cpp)

// Up to three scalars per tensor, in double; the kernels cast them to their compute type.
struct TensorScalars {
  double value[3] = {0, 0, 0};
};

// From each tensor's step count t (after this step's increment), as torch computes them in Python
// floats (double): Adam η/(1 − β₁ᵗ) and (1 − β₂ᵗ)^0.5; Adagrad η/(1 + (t − 1)·lr_decay); AdaBound
// η·√(1 − β₂ᵗ)/(1 − β₁ᵗ), η_l(t), η_u(t) with η* = final_lr·η/η₀.
std::vector<TensorScalars> adam_scalars(const std::vector<double>& steps, double lr, double beta1, double beta2);
std::vector<TensorScalars> adagrad_scalars(const std::vector<double>& steps, double lr, double lr_decay);
std::vector<TensorScalars> adabound_scalars(const std::vector<double>& steps, double lr, double beta1, double beta2,
                                            double final_lr, double base_lr, double gamma);
// SGD: 1 for each tensor whose momentum buffer is new.
std::vector<TensorScalars> sgd_scalars(const std::vector<bool>& buffer_is_new);

// RMSprop's four variants differ in which buffers exist: calls
// run(std::bool_constant<centered>, std::bool_constant<momentum>, lists) with that variant's lists.
template <class Run>
void with_rmsprop_variant(bool centered, bool momentum, const TensorList& params, const TensorList& grads,
                          const TensorList& square_avgs, const TensorList& grad_avgs,
                          const TensorList& momentum_buffers, const Run& run) {
  using Yes = std::true_type;
  using No = std::false_type;
  if (centered && momentum)
    run(Yes{}, Yes{}, std::array{&params, &grads, &square_avgs, &grad_avgs, &momentum_buffers});
  else if (centered)
    run(Yes{}, No{}, std::array{&params, &grads, &square_avgs, &grad_avgs});
  else if (momentum)
    run(No{}, Yes{}, std::array{&params, &grads, &square_avgs, &momentum_buffers});
  else
    run(No{}, No{}, std::array{&params, &grads, &square_avgs});
}

}  // namespace replearn::optim
