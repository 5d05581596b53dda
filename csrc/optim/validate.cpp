// Argument validation for the optimizer family, shared by the CPU and CUDA entry points. Every
// list is checked in full, step counters included, before an entry point touches any memory: a bad
// tensor at index 50 must not leave tensors 0..49 updated.
#include <cmath>
#include <deque>
#include <string>

#include "core/check.h"
#include "optim/optim.h"

namespace replearn::optim {

namespace {

// A Checker over lists: argument names are "list[i]", kept alive here because the Checker
// remembers the first tensor's name for its device messages.
class ListChecker {
 public:
  ListChecker(const char* function, DeviceType device) : check_(function, device) {}

  const Checker& checker() const { return check_; }

  // The leading list (params, or grads for clipping): a supported floating dtype, the same for
  // all, this device, contiguous.
  void leading(const char* list, const TensorList& tensors) {
    for (size_t i = 0; i < tensors.size(); ++i) {
      const char* arg = name(list, i);
      check_.floating(arg, tensors[i]);
      if (i > 0) check_.same_dtype(arg, tensors[i], name(list, 0), tensors[0]);
      check_.contiguous(arg, tensors[i]);
    }
  }

  // A list parallel to params: the same length, and each tensor shaped, typed and placed like its
  // parameter.
  void like_params(const char* list, const TensorList& tensors, const TensorList& params) {
    REPLEARN_CHECK(tensors.size() == params.size(), Value, check_.function(), ": argument '", list, "' expected ",
                   params.size(), " tensors (one per parameter) but got ", tensors.size());
    for (size_t i = 0; i < tensors.size(); ++i) {
      const char* arg = name(list, i);
      const char* param = name("params", i);
      check_.floating(arg, tensors[i]);
      check_.same_dtype(arg, tensors[i], param, params[i]);
      check_.same_shape(arg, tensors[i], param, params[i]);
      check_.contiguous(arg, tensors[i]);
    }
  }

  // Optional lists that an option turns on: present exactly when `enabled`.
  void option_list(const char* list, const TensorList& tensors, const TensorList& params, bool enabled,
                   const char* option) {
    if (!enabled) {
      REPLEARN_CHECK(tensors.empty(), Value, check_.function(), ": argument '", list, "' expected no tensors when ",
                     option, " is off but got ", tensors.size());
      return;
    }
    REPLEARN_CHECK(!params.empty() || tensors.empty(), Value, check_.function(), ": argument '", list,
                   "' expected no tensors for an empty parameter list");
    like_params(list, tensors, params);
  }

  // Step counters: one element each, float32 or float64, in host memory (torch keeps them there
  // for CUDA parameters too unless capturable or fused).
  void steps(const TensorList& steps, const TensorList& params) {
    REPLEARN_CHECK(steps.size() == params.size(), Value, check_.function(), ": argument 'steps' expected ",
                   params.size(), " step counters (one per parameter) but got ", steps.size());
    for (size_t i = 0; i < steps.size(); ++i) {
      const TensorView& s = steps[i];
      REPLEARN_CHECK(s.dtype == DType::Float32 || s.dtype == DType::Float64, Type, check_.function(),
                     ": argument 'steps[", i, "]' expected float32 or float64 but got ", dtype_name(s.dtype));
      REPLEARN_CHECK(s.device.type == DeviceType::CPU, Value, check_.function(), ": argument 'steps[", i,
                     "]' expected a step counter in host (cpu) memory but got one on ", device_name(s.device));
      REPLEARN_CHECK(s.numel() == 1, Value, check_.function(), ": argument 'steps[", i,
                     "]' expected one element but got ", s.numel(), " (shape ", s.shape_string(), ")");
    }
  }

  void non_negative(const char* arg, double value) { check_.value(value >= 0, arg, "a non-negative number", value); }

 private:
  const char* name(const char* list, size_t i) {
    names_.push_back(std::string(list) + "[" + std::to_string(i) + "]");
    return names_.back().c_str();
  }

  Checker check_;
  std::deque<std::string> names_;  // stable addresses
};

void check_beta(const Checker& check, const char* arg, double beta) {
  check.value(beta >= 0 && beta < 1, arg, "a number in [0, 1)", beta);
}

}  // namespace

void check_sgd(DeviceType device, const TensorList& params, const TensorList& grads,
               const TensorList& momentum_buffers, const std::vector<bool>& buffer_is_new, double lr, double momentum,
               double dampening, double weight_decay, bool nesterov) {
  ListChecker check("sgd_step", device);
  check.non_negative("lr", lr);
  check.non_negative("momentum", momentum);
  check.non_negative("weight_decay", weight_decay);
  check.checker().value(std::isfinite(dampening), "dampening", "a finite number", dampening);
  check.checker().value(!nesterov || (momentum > 0 && dampening == 0), "nesterov",
                        "momentum > 0 and zero dampening for Nesterov momentum", nesterov ? "true" : "false");
  check.leading("params", params);
  check.like_params("grads", grads, params);
  check.option_list("momentum_buffers", momentum_buffers, params, momentum != 0, "momentum");
  REPLEARN_CHECK(buffer_is_new.size() == momentum_buffers.size(), Value, "sgd_step: argument 'buffer_is_new' expected ",
                 momentum_buffers.size(), " flags (one per momentum buffer) but got ", buffer_is_new.size());
}

void check_adagrad(DeviceType device, const TensorList& params, const TensorList& grads, const TensorList& state_sums,
                   const TensorList& steps, double lr, double lr_decay, double weight_decay, double eps) {
  ListChecker check("adagrad_step", device);
  check.non_negative("lr", lr);
  check.non_negative("lr_decay", lr_decay);
  check.non_negative("weight_decay", weight_decay);
  check.non_negative("eps", eps);
  check.leading("params", params);
  check.like_params("grads", grads, params);
  check.like_params("state_sums", state_sums, params);
  check.steps(steps, params);
}

void check_rmsprop(DeviceType device, const TensorList& params, const TensorList& grads,
                   const TensorList& square_avgs, const TensorList& grad_avgs, const TensorList& momentum_buffers,
                   const TensorList& steps, double lr, double alpha, double eps, double weight_decay, double momentum,
                   bool centered) {
  ListChecker check("rmsprop_step", device);
  check.non_negative("lr", lr);
  check.non_negative("alpha", alpha);
  check.non_negative("eps", eps);
  check.non_negative("weight_decay", weight_decay);
  check.non_negative("momentum", momentum);
  check.leading("params", params);
  check.like_params("grads", grads, params);
  check.like_params("square_avgs", square_avgs, params);
  check.option_list("grad_avgs", grad_avgs, params, centered, "centered");
  check.option_list("momentum_buffers", momentum_buffers, params, momentum > 0, "momentum");
  check.steps(steps, params);
}

void check_adam(const char* function, DeviceType device, const TensorList& params, const TensorList& grads,
                const TensorList& exp_avgs, const TensorList& exp_avg_sqs, const TensorList& max_exp_avg_sqs,
                const TensorList& steps, double lr, double beta1, double beta2, double eps, double weight_decay,
                bool amsgrad) {
  ListChecker check(function, device);
  check.non_negative("lr", lr);
  check_beta(check.checker(), "beta1", beta1);
  check_beta(check.checker(), "beta2", beta2);
  check.non_negative("eps", eps);
  check.non_negative("weight_decay", weight_decay);
  check.leading("params", params);
  check.like_params("grads", grads, params);
  check.like_params("exp_avgs", exp_avgs, params);
  check.like_params("exp_avg_sqs", exp_avg_sqs, params);
  check.option_list("max_exp_avg_sqs", max_exp_avg_sqs, params, amsgrad, "amsgrad");
  check.steps(steps, params);
}

void check_adabound_bounds(double final_lr, double base_lr, double gamma) {
  const Checker check("adabound_step", DeviceType::CPU);
  check.value(final_lr >= 0, "final_lr", "a non-negative number", final_lr);
  check.value(base_lr > 0, "base_lr", "a positive number (the initial learning rate)", base_lr);
  check.value(gamma >= 0 && gamma < 1, "gamma", "a number in [0, 1)", gamma);
}

NormKind check_grad_norm(DeviceType device, const TensorList& grads, double norm_type, const TensorView& total_norm) {
  ListChecker check("grad_norm", device);
  check.checker().value(norm_type > 0, "norm_type", "a positive number or inf", norm_type);
  check.leading("grads", grads);
  Checker out("grad_norm", device);
  if (grads.empty()) {
    out.floating("total_norm", total_norm);  // the norm of nothing, 0, in either stats dtype
    out.buffer("total_norm", total_norm, stats_dtype(total_norm.dtype), 1);
  } else {
    out.floating("grads[0]", grads[0]);
    out.buffer("total_norm", total_norm, stats_dtype(grads[0].dtype), 1);
  }
  if (std::isinf(norm_type)) return NormKind::Inf;
  return norm_type == 2 ? NormKind::Two : NormKind::P;
}

void check_clip_by_norm(DeviceType device, const TensorList& grads, const TensorView& total_norm, double max_norm) {
  ListChecker check("clip_grads_by_norm", device);
  check.checker().value(!std::isnan(max_norm), "max_norm", "a number", max_norm);
  check.leading("grads", grads);
  if (grads.empty()) return;
  Checker out("clip_grads_by_norm", device);
  out.floating("grads[0]", grads[0]);
  out.buffer("total_norm", total_norm, stats_dtype(grads[0].dtype), 1);
}

void check_clip_by_value(DeviceType device, const TensorList& grads, double clip_value) {
  ListChecker check("clip_grads_by_value", device);
  check.checker().value(!std::isnan(clip_value), "clip_value", "a number", clip_value);
  check.leading("grads", grads);
}

}  // namespace replearn::optim
