// Optimizer family: the C++ API (plain functions over lists of TensorViews).
//
// Each *_step updates every tensor of one parameter group (one dtype, one device) in a single pass
// over memory — a multi-tensor apply: the CPU splits the concatenation of all tensors into chunks
// for parallel_for, CUDA launches one kernel over a table of (tensor, chunk) pairs. The per-element
// rules live in rules.h, shared by both devices; they follow torch.optim's for-loop implementations
// operation by operation (torch 2.x `_single_tensor_<name>`), so float64 results agree with torch's
// to rounding and a torch checkpoint resumes here with the same trajectory.
//
//   sgd       b ← μ·b + (1 − τ)·g (b ← g on the first step);  p ← p − η·(g + μ·b if Nesterov else b)
//   adagrad   s ← s + g²;  p ← p − η/(1 + (t − 1)·λ) · g/(√s + ε)                (Duchi et al. 2011)
//   rmsprop   v ← α·v + (1 − α)·g²;  centered: ḡ ← lerp(ḡ, g, 1 − α), v̂ = v − ḡ²;
//             p ← p − η·g/(√v̂ + ε), or through a momentum buffer b ← μ·b + g/(√v̂ + ε)  (Tieleman & Hinton 2012)
//   adam      m ← lerp(m, g, 1 − β₁);  v ← β₂·v + (1 − β₂)·g²;  AMSGrad: v̂ = max(v̂, v);
//             p ← p − η/(1 − β₁ᵗ) · m/(√v̂/√(1 − β₂ᵗ) + ε)       (Kingma & Ba 2015; Reddi et al. 2018)
//             weight decay: L2 (g ← g + λ·p) or decoupled, AdamW (p ← (1 − ηλ)·p; Loshchilov & Hutter 2019)
//   adabound  Adam's moments (m ← β₁·m + (1 − β₁)·g), then
//             p ← p − clip(η·√(1 − β₂ᵗ)/(1 − β₁ᵗ) / (√v + ε), η_l(t), η_u(t)) · m,
//             η_l = η*·(1 − 1/(γt + 1)), η_u = η*·(1 + 1/(γt)), η* = final_lr·η/η₀    (Luo et al. 2019)
// where g is the gradient (negated when maximize, then plus λ·p for L2 weight decay).
//
// Conventions:
// - Lists are parallel: element i of every list belongs to params[i] and has its shape and dtype.
//   Every tensor is contiguous and on the device of the entry point. Optional state lists (momentum
//   buffers, max_exp_avg_sqs, grad_avgs) are empty when the option is off and full otherwise.
// - `steps` are the optimizer's per-parameter step counters, as torch keeps them: one-element float32
//   or float64 tensors in host memory, whatever the device of the parameters. The entry point adds
//   one to each and computes that tensor's bias corrections on the host in double.
// - Hyper-parameters are doubles; the kernels compute in the parameter dtype on the CPU (as torch's
//   for-loop does) and in float32 on CUDA.
// - Every function validates all of its arguments before it touches memory (steps included) and
//   throws replearn::Error naming the list and index otherwise.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor_view.h"

namespace replearn::optim {

using TensorList = std::vector<TensorView>;

// The norm clip_grad_norm_ computes: Σ|g|^p over every element of every tensor, then ^(1/p);
// p = ∞ is the largest |g|.
enum class NormKind { Two, Inf, P };

// Validation, shared by the CPU and CUDA entry points (validate.cpp).
void check_sgd(DeviceType device, const TensorList& params, const TensorList& grads,
               const TensorList& momentum_buffers, const std::vector<bool>& buffer_is_new, double lr, double momentum,
               double dampening, double weight_decay, bool nesterov);
void check_adagrad(DeviceType device, const TensorList& params, const TensorList& grads, const TensorList& state_sums,
                   const TensorList& steps, double lr, double lr_decay, double weight_decay, double eps);
void check_rmsprop(DeviceType device, const TensorList& params, const TensorList& grads,
                   const TensorList& square_avgs, const TensorList& grad_avgs, const TensorList& momentum_buffers,
                   const TensorList& steps, double lr, double alpha, double eps, double weight_decay, double momentum,
                   bool centered);
void check_adam(const char* function, DeviceType device, const TensorList& params, const TensorList& grads,
                const TensorList& exp_avgs, const TensorList& exp_avg_sqs, const TensorList& max_exp_avg_sqs,
                const TensorList& steps, double lr, double beta1, double beta2, double eps, double weight_decay,
                bool amsgrad);
void check_adabound_bounds(double final_lr, double base_lr, double gamma);
NormKind check_grad_norm(DeviceType device, const TensorList& grads, double norm_type, const TensorView& total_norm);
void check_clip_by_norm(DeviceType device, const TensorList& grads, const TensorView& total_norm, double max_norm);
void check_clip_by_value(DeviceType device, const TensorList& grads, double clip_value);

// Adds one to each step counter; returns the new values.
std::vector<double> increment_steps(const TensorList& steps);

// The entry points. One declaration serves both devices: cpu.cpp defines the DeviceType::CPU
// specializations, cuda.cu the DeviceType::CUDA ones. `stream` is a cudaStream_t passed as an
// integer (0: the default stream); the CPU ignores it.

// buffer_is_new[i]: params[i]'s momentum buffer has no history yet (its contents are ignored and
// replaced by the gradient, torch's `clone(grad)`). momentum_buffers is empty when momentum == 0.
template <DeviceType D>
void sgd_step(const TensorList& params, const TensorList& grads, const TensorList& momentum_buffers,
              const std::vector<bool>& buffer_is_new, double lr, double momentum, double dampening,
              double weight_decay, bool nesterov, bool maximize, std::uintptr_t stream = 0);

template <DeviceType D>
void adagrad_step(const TensorList& params, const TensorList& grads, const TensorList& state_sums,
                  const TensorList& steps, double lr, double lr_decay, double weight_decay, double eps,
                  bool maximize, std::uintptr_t stream = 0);

// grad_avgs is empty unless centered; momentum_buffers is empty unless momentum > 0.
template <DeviceType D>
void rmsprop_step(const TensorList& params, const TensorList& grads, const TensorList& square_avgs,
                  const TensorList& grad_avgs, const TensorList& momentum_buffers, const TensorList& steps, double lr,
                  double alpha, double eps, double weight_decay, double momentum, bool centered, bool maximize,
                  std::uintptr_t stream = 0);

// Adam and AdamW (decoupled_weight_decay); max_exp_avg_sqs is empty unless amsgrad.
template <DeviceType D>
void adam_step(const TensorList& params, const TensorList& grads, const TensorList& exp_avgs,
               const TensorList& exp_avg_sqs, const TensorList& max_exp_avg_sqs, const TensorList& steps, double lr,
               double beta1, double beta2, double eps, double weight_decay, bool amsgrad, bool decoupled_weight_decay,
               bool maximize, std::uintptr_t stream = 0);

// AdaBound and AMSBound (amsbound). base_lr is the group's learning rate when the optimizer was
// built: the bounds follow a schedule that changes lr, η* = final_lr·lr/base_lr (the authors'
// implementation, github.com/Luolc/AdaBound). max_exp_avg_sqs is empty unless amsbound.
template <DeviceType D>
void adabound_step(const TensorList& params, const TensorList& grads, const TensorList& exp_avgs,
                   const TensorList& exp_avg_sqs, const TensorList& max_exp_avg_sqs, const TensorList& steps,
                   double lr, double beta1, double beta2, double final_lr, double base_lr, double gamma, double eps,
                   double weight_decay, bool amsbound, bool maximize, std::uintptr_t stream = 0);

// total_norm (one element, float64 for float64 grads and float32 otherwise) ← ‖grads‖_p over all
// tensors; norm_type > 0 or +∞. CPU sums in double; CUDA in float32, deterministically (per-block
// partials in the workspace, added in a fixed order).
template <DeviceType D>
int64_t grad_norm_workspace_size(const TensorList& grads);
template <DeviceType D>
void grad_norm(const TensorList& grads, double norm_type, const TensorView& total_norm, const TensorView& workspace,
               std::uintptr_t stream = 0);

// g ← g·c with c = min(1, max_norm/(total_norm + 1e-6)), computed where total_norm lives (on the
// device for CUDA: no host synchronization) in its dtype, as torch.nn.utils.clip_grad_norm_ does;
// nothing is written when c ≥ 1. A NaN norm gives NaN gradients, as in torch.
template <DeviceType D>
void clip_grads_by_norm(const TensorList& grads, const TensorView& total_norm, double max_norm,
                        std::uintptr_t stream = 0);

// g ← clamp(g, −clip_value, clip_value); NaN stays NaN.
template <DeviceType D>
void clip_grads_by_value(const TensorList& grads, double clip_value, std::uintptr_t stream = 0);

}  // namespace replearn::optim
