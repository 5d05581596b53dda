// Optimizer family, CPU kernels (float32 and float64): a multi-tensor apply of the rules in rules.h.
//
// An optimizer step is memory bound (Adam reads p, g, m, v and writes p, m, v: 28 bytes per float32
// parameter for a handful of flops), so the only thing that matters is to stream every tensor once
// with all threads busy. The tensors of a group are treated as one virtual concatenation: its
// [0, Σ numel) range is split into parallel_for chunks, and each chunk walks the tensors it covers,
// running the rule over each contiguous segment in an `omp simd` loop. One parallel region per
// step, whatever the number of tensors (torch's fused CPU path opens one per tensor), and small
// tensors share a chunk instead of each paying a thread hand-off.
//
// Arithmetic is in the parameter dtype, operation for operation as torch's for-loop optimizers,
// so float64 agrees with torch to rounding and float32 drifts from float64 as torch's does.
// Gradient norms accumulate in double whatever the dtype.
#include <algorithm>
#include <array>
#include <cmath>
#include <vector>

#include "core/check.h"
#include "core/dispatch.h"
#include "core/parallel.h"
#include "optim/optim.h"
#include "optim/rules.h"

namespace replearn::optim {

namespace {

// Elements per parallel chunk below which another thread costs more than it saves (~128 KiB of
// float32 traffic per list).
constexpr int64_t kGrainElements = 1 << 15;

// offsets[t] = Σ numel of tensors before t; offsets.back() = the total.
std::vector<int64_t> concatenation_offsets(const TensorList& tensors) {
  std::vector<int64_t> offsets(tensors.size() + 1, 0);
  for (size_t t = 0; t < tensors.size(); ++t) offsets[t + 1] = offsets[t] + tensors[t].numel();
  return offsets;
}

// Calls f(chunk, t, begin, end) for each segment [begin, end) of tensor t (local indices) that
// parallel chunk `chunk` covers; segments of one chunk come in tensor order.
template <class F>
void for_each_segment(const std::vector<int64_t>& offsets, const F& f) {
  parallel_for(offsets.back(), kGrainElements, [&](int chunk, int64_t begin, int64_t end) {
    size_t t = static_cast<size_t>(std::upper_bound(offsets.begin(), offsets.end(), begin) - offsets.begin()) - 1;
    for (; begin < end; ++t) {
      const int64_t segment_end = std::min(end, offsets[t + 1]);
      if (segment_end > begin) f(chunk, t, begin - offsets[t], segment_end - offsets[t]);
      begin = segment_end;
    }
  });
}

// The rule over one contiguous segment: load every list into registers, update, store what it writes.
template <class T, class Rule>
void run_segment(const Rule& rule, T* const (&ptr)[Rule::kLists], const T* per_tensor, int64_t begin, int64_t end) {
  constexpr int L = Rule::kLists;
#pragma omp simd
  for (int64_t i = begin; i < end; ++i) {
    T v[L];
    for (int k = 0; k < L; ++k) v[k] = ptr[k][i];
    rule(v, per_tensor);
    for (int k = 0; k < L; ++k)
      if (Rule::kWrites >> k & 1u) ptr[k][i] = v[k];
  }
}

// lists[k][t]: tensor t of the rule's k-th list (param, grad, state...); scalars: per tensor, or empty.
template <class T, class Rule>
void multi_tensor_apply(const std::array<const TensorList*, Rule::kLists>& lists,
                        const std::vector<TensorScalars>& scalars, const Rule& rule) {
  const TensorList& leading = *lists[0];
  if (leading.empty()) return;
  for_each_segment(concatenation_offsets(leading), [&](int, size_t t, int64_t begin, int64_t end) {
    T* ptr[Rule::kLists];
    for (int k = 0; k < Rule::kLists; ++k) ptr[k] = (*lists[k])[t].template data_as<T>();
    T per_tensor[3] = {0, 0, 0};
    if (!scalars.empty())
      for (int j = 0; j < 3; ++j) per_tensor[j] = static_cast<T>(scalars[t].value[j]);
    run_segment<T>(rule, ptr, per_tensor, begin, end);
  });
}

// ----------------------------------------------------------------------------------- norms

// Σ|x|^p (Two: Σx², P: Σ|x|^p) or max |x| (Inf; NaN wins) of one segment, in double.
template <class T>
double segment_norm_part(const T* __restrict__ x, int64_t n, NormKind kind, double p) {
  double acc = 0;
  if (kind == NormKind::Two) {
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < n; ++i) acc += static_cast<double>(x[i]) * static_cast<double>(x[i]);
  } else if (kind == NormKind::Inf) {
    int64_t nans = 0;
#pragma omp simd reduction(max : acc) reduction(+ : nans)
    for (int64_t i = 0; i < n; ++i) {
      const double a = std::fabs(static_cast<double>(x[i]));
      acc = a > acc ? a : acc;
      nans += a != a;
    }
    if (nans) acc = NAN;
  } else {
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < n; ++i) acc += std::pow(std::fabs(static_cast<double>(x[i])), p);
  }
  return acc;
}

double combine(NormKind kind, double a, double b) { return kind == NormKind::Inf ? nan_max(a, b) : a + b; }

double finish_norm(NormKind kind, double acc, double p) {
  if (kind == NormKind::Two) return std::sqrt(acc);
  if (kind == NormKind::Inf) return acc;
  return std::pow(acc, 1.0 / p);
}

}  // namespace

// ----------------------------------------------------------------------------------- entry points

template <>
void sgd_step<DeviceType::CPU>(const TensorList& params, const TensorList& grads, const TensorList& momentum_buffers,
                               const std::vector<bool>& buffer_is_new, double lr, double momentum, double dampening,
                               double weight_decay, bool nesterov, bool maximize, std::uintptr_t) {
  check_sgd(DeviceType::CPU, params, grads, momentum_buffers, buffer_is_new, lr, momentum, dampening, weight_decay,
            nesterov);
  if (params.empty()) return;
  dispatch_cpu_floating(params[0].dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T sign = maximize ? T(-1) : T(1);
    if (momentum != 0) {
      const SgdRule<T, true> rule{T(lr), T(momentum), T(1 - dampening), T(weight_decay), sign, nesterov};
      multi_tensor_apply<T>(std::array{&params, &grads, &momentum_buffers}, sgd_scalars(buffer_is_new), rule);
    } else {
      const SgdRule<T, false> rule{T(lr), T(momentum), T(1 - dampening), T(weight_decay), sign, nesterov};
      multi_tensor_apply<T>(std::array{&params, &grads}, {}, rule);
    }
  });
}

template <>
void adagrad_step<DeviceType::CPU>(const TensorList& params, const TensorList& grads, const TensorList& state_sums,
                                   const TensorList& steps, double lr, double lr_decay, double weight_decay, double eps,
                                   bool maximize, std::uintptr_t) {
  check_adagrad(DeviceType::CPU, params, grads, state_sums, steps, lr, lr_decay, weight_decay, eps);
  if (params.empty()) return;
  const auto scalars = adagrad_scalars(increment_steps(steps), lr, lr_decay);
  dispatch_cpu_floating(params[0].dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const AdagradRule<T> rule{T(eps), T(weight_decay), maximize ? T(-1) : T(1)};
    multi_tensor_apply<T>(std::array{&params, &grads, &state_sums}, scalars, rule);
  });
}

template <>
void rmsprop_step<DeviceType::CPU>(const TensorList& params, const TensorList& grads, const TensorList& square_avgs,
                                   const TensorList& grad_avgs, const TensorList& momentum_buffers,
                                   const TensorList& steps, double lr, double alpha, double eps, double weight_decay,
                                   double momentum, bool centered, bool maximize, std::uintptr_t) {
  check_rmsprop(DeviceType::CPU, params, grads, square_avgs, grad_avgs, momentum_buffers, steps, lr, alpha, eps,
                weight_decay, momentum, centered);
  if (params.empty()) return;
  increment_steps(steps);  // RMSprop's rule does not depend on t; torch counts it all the same
  dispatch_cpu_floating(params[0].dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T sign = maximize ? T(-1) : T(1);
    auto run = [&](auto centered_tag, auto momentum_tag, auto lists) {
      const RmspropRule<T, decltype(centered_tag)::value, decltype(momentum_tag)::value> rule{
          T(lr), T(alpha), T(1 - alpha), T(eps), T(weight_decay), T(momentum), sign};
      multi_tensor_apply<T>(lists, {}, rule);
    };
    with_rmsprop_variant(centered, momentum > 0, params, grads, square_avgs, grad_avgs, momentum_buffers, run);
  });
}

template <>
void adam_step<DeviceType::CPU>(const TensorList& params, const TensorList& grads, const TensorList& exp_avgs,
                                const TensorList& exp_avg_sqs, const TensorList& max_exp_avg_sqs,
                                const TensorList& steps, double lr, double beta1, double beta2, double eps,
                                double weight_decay, bool amsgrad, bool decoupled_weight_decay, bool maximize,
                                std::uintptr_t) {
  check_adam("adam_step", DeviceType::CPU, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr, beta1,
             beta2, eps, weight_decay, amsgrad);
  if (params.empty()) return;
  const auto scalars = adam_scalars(increment_steps(steps), lr, beta1, beta2);
  const bool decoupled = decoupled_weight_decay && weight_decay != 0;
  dispatch_cpu_floating(params[0].dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T sign = maximize ? T(-1) : T(1);
    const T l2 = decoupled ? T(0) : T(weight_decay);
    const T param_decay = decoupled ? T(1 - lr * weight_decay) : T(1);
    if (amsgrad) {
      const AdamRule<T, true> rule{T(1 - beta1), T(beta2), T(1 - beta2), T(eps), sign, l2, param_decay};
      multi_tensor_apply<T>(std::array{&params, &grads, &exp_avgs, &exp_avg_sqs, &max_exp_avg_sqs}, scalars, rule);
    } else {
      const AdamRule<T, false> rule{T(1 - beta1), T(beta2), T(1 - beta2), T(eps), sign, l2, param_decay};
      multi_tensor_apply<T>(std::array{&params, &grads, &exp_avgs, &exp_avg_sqs}, scalars, rule);
    }
  });
}

template <>
void adabound_step<DeviceType::CPU>(const TensorList& params, const TensorList& grads, const TensorList& exp_avgs,
                                    const TensorList& exp_avg_sqs, const TensorList& max_exp_avg_sqs,
                                    const TensorList& steps, double lr, double beta1, double beta2, double final_lr,
                                    double base_lr, double gamma, double eps, double weight_decay, bool amsbound,
                                    bool maximize, std::uintptr_t) {
  check_adam("adabound_step", DeviceType::CPU, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr, beta1,
             beta2, eps, weight_decay, amsbound);
  check_adabound_bounds(final_lr, base_lr, gamma);
  if (params.empty()) return;
  const auto scalars = adabound_scalars(increment_steps(steps), lr, beta1, beta2, final_lr, base_lr, gamma);
  dispatch_cpu_floating(params[0].dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T sign = maximize ? T(-1) : T(1);
    if (amsbound) {
      const AdaboundRule<T, true> rule{T(beta1), T(1 - beta1), T(beta2), T(1 - beta2), T(eps), T(weight_decay), sign};
      multi_tensor_apply<T>(std::array{&params, &grads, &exp_avgs, &exp_avg_sqs, &max_exp_avg_sqs}, scalars, rule);
    } else {
      const AdaboundRule<T, false> rule{T(beta1), T(1 - beta1), T(beta2), T(1 - beta2), T(eps), T(weight_decay), sign};
      multi_tensor_apply<T>(std::array{&params, &grads, &exp_avgs, &exp_avg_sqs}, scalars, rule);
    }
  });
}

template <>
int64_t grad_norm_workspace_size<DeviceType::CPU>(const TensorList&) {
  return 0;  // per-chunk partials: at most one double per thread, on the stack of the call
}

template <>
void grad_norm<DeviceType::CPU>(const TensorList& grads, double norm_type, const TensorView& total_norm,
                                const TensorView&, std::uintptr_t) {
  const NormKind kind = check_grad_norm(DeviceType::CPU, grads, norm_type, total_norm);
  double total = 0;
  if (!grads.empty()) {
    const std::vector<int64_t> offsets = concatenation_offsets(grads);
    std::vector<double> partial(std::max(1, parallel_chunk_count(offsets.back(), kGrainElements)), 0.0);
    dispatch_cpu_floating(grads[0].dtype, [&](auto tag) {
      using T = typename decltype(tag)::type;
      for_each_segment(offsets, [&](int chunk, size_t t, int64_t begin, int64_t end) {
        const double part = segment_norm_part(grads[t].data_as<T>() + begin, end - begin, kind, norm_type);
        partial[chunk] = combine(kind, partial[chunk], part);
      });
    });
    for (double part : partial) total = combine(kind, total, part);  // fixed order: deterministic
    total = finish_norm(kind, total, norm_type);
  }
  if (total_norm.dtype == DType::Float64)
    *total_norm.data_as<double>() = total;
  else
    *total_norm.data_as<float>() = static_cast<float>(total);
}

template <>
void clip_grads_by_norm<DeviceType::CPU>(const TensorList& grads, const TensorView& total_norm, double max_norm,
                                         std::uintptr_t) {
  check_clip_by_norm(DeviceType::CPU, grads, total_norm, max_norm);
  if (grads.empty()) return;
  dispatch_cpu_floating(grads[0].dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;  // the norm's dtype too: stats_dtype of float32/float64 is itself
    const T coefficient = clip_coefficient(*total_norm.data_as<T>(), static_cast<T>(max_norm));
    if (coefficient >= T(1)) return;  // g·1 = g: skip the pass (a NaN coefficient does not skip)
    multi_tensor_apply<T>(std::array{&grads}, {}, ScaleRule<T>{coefficient});
  });
}

template <>
void clip_grads_by_value<DeviceType::CPU>(const TensorList& grads, double clip_value, std::uintptr_t) {
  check_clip_by_value(DeviceType::CPU, grads, clip_value);
  if (grads.empty()) return;
  dispatch_cpu_floating(grads[0].dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    multi_tensor_apply<T>(std::array{&grads}, {}, ClipValueRule<T>{static_cast<T>(clip_value)});
  });
}

}  // namespace replearn::optim
