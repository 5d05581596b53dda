// Host-side work of the optimizer steps, shared by the CPU and CUDA entry points: the per-tensor
// step counters (torch keeps them as one-element tensors in host memory) and the scalars derived
// from them in double, with torch's own expressions (torch/optim/<name>.py, `_single_tensor_<name>`).
#include <cmath>

#include "optim/optim.h"
#include "optim/rules.h"

namespace replearn::optim {

std::vector<double> increment_steps(const TensorList& steps) {
  std::vector<double> values(steps.size());
  for (size_t i = 0; i < steps.size(); ++i) {
    // Validation has checked: one element, float32 or float64, host memory.
    if (steps[i].dtype == DType::Float32) {
      float& step = *steps[i].data_as<float>();
      step += 1.0f;
      values[i] = step;
    } else {
      double& step = *steps[i].data_as<double>();
      step += 1.0;
      values[i] = step;
    }
  }
  return values;
}

std::vector<TensorScalars> adam_scalars(const std::vector<double>& steps, double lr, double beta1, double beta2) {
  std::vector<TensorScalars> out(steps.size());
  for (size_t i = 0; i < steps.size(); ++i) {
    const double bias_correction1 = 1 - std::pow(beta1, steps[i]);
    const double bias_correction2 = 1 - std::pow(beta2, steps[i]);
    out[i].value[0] = lr / bias_correction1;
    out[i].value[1] = std::pow(bias_correction2, 0.5);
  }
  return out;
}

std::vector<TensorScalars> adagrad_scalars(const std::vector<double>& steps, double lr, double lr_decay) {
  std::vector<TensorScalars> out(steps.size());
  for (size_t i = 0; i < steps.size(); ++i) out[i].value[0] = lr / (1 + (steps[i] - 1) * lr_decay);
  return out;
}

// Luo et al. 2019, "Adaptive Gradient Methods with Dynamic Bound of Learning Rate", Algorithm 2/3 as
// the authors implement it (github.com/Luolc/AdaBound): the base rate carries Adam's bias
// corrections, and the final rate follows the schedule's changes to lr through lr/base_lr.
std::vector<TensorScalars> adabound_scalars(const std::vector<double>& steps, double lr, double beta1, double beta2,
                                            double final_lr, double base_lr, double gamma) {
  std::vector<TensorScalars> out(steps.size());
  const double scaled_final_lr = final_lr * lr / base_lr;
  for (size_t i = 0; i < steps.size(); ++i) {
    const double t = steps[i];
    const double bias_correction1 = 1 - std::pow(beta1, t);
    const double bias_correction2 = 1 - std::pow(beta2, t);
    out[i].value[0] = lr * std::sqrt(bias_correction2) / bias_correction1;
    out[i].value[1] = scaled_final_lr * (1 - 1 / (gamma * t + 1));
    out[i].value[2] = scaled_final_lr * (1 + 1 / (gamma * t));
  }
  return out;
}

std::vector<TensorScalars> sgd_scalars(const std::vector<bool>& buffer_is_new) {
  std::vector<TensorScalars> out(buffer_is_new.size());
  for (size_t i = 0; i < buffer_is_new.size(); ++i) out[i].value[0] = buffer_is_new[i] ? 1 : 0;
  return out;
}

}  // namespace replearn::optim
