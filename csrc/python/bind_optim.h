// Python bindings of the optimizer family, written once for both devices: module_cpu.cpp binds
// bind_optim<DeviceType::CPU>, module_cuda.cpp bind_optim<DeviceType::CUDA>. Tensor lists arrive
// as std::vector<TensorView> (one conversion per tensor, tensor_caster.h; the caller's Python
// lists keep the tensors alive for the call). Every kernel runs with the GIL released.
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "optim/optim.h"
#include "python/tensor_caster.h"

namespace replearn::python {

template <DeviceType D>
void bind_optim(pybind11::module_& m) {
  namespace py = pybind11;
  using py::arg;
  using namespace replearn::optim;
  const auto nogil = py::call_guard<py::gil_scoped_release>();
  const auto stream = arg("stream") = std::uintptr_t{0};

  m.def("sgd_step", &sgd_step<D>, arg("params"), arg("grads"), arg("momentum_buffers"), arg("buffer_is_new"),
        arg("lr"), arg("momentum"), arg("dampening"), arg("weight_decay"), arg("nesterov"), arg("maximize"), stream,
        nogil);
  m.def("adagrad_step", &adagrad_step<D>, arg("params"), arg("grads"), arg("state_sums"), arg("steps"), arg("lr"),
        arg("lr_decay"), arg("weight_decay"), arg("eps"), arg("maximize"), stream, nogil);
  m.def("rmsprop_step", &rmsprop_step<D>, arg("params"), arg("grads"), arg("square_avgs"), arg("grad_avgs"),
        arg("momentum_buffers"), arg("steps"), arg("lr"), arg("alpha"), arg("eps"), arg("weight_decay"),
        arg("momentum"), arg("centered"), arg("maximize"), stream, nogil);
  m.def("adam_step", &adam_step<D>, arg("params"), arg("grads"), arg("exp_avgs"), arg("exp_avg_sqs"),
        arg("max_exp_avg_sqs"), arg("steps"), arg("lr"), arg("beta1"), arg("beta2"), arg("eps"), arg("weight_decay"),
        arg("amsgrad"), arg("decoupled_weight_decay"), arg("maximize"), stream, nogil);
  m.def("adabound_step", &adabound_step<D>, arg("params"), arg("grads"), arg("exp_avgs"), arg("exp_avg_sqs"),
        arg("max_exp_avg_sqs"), arg("steps"), arg("lr"), arg("beta1"), arg("beta2"), arg("final_lr"), arg("base_lr"),
        arg("gamma"), arg("eps"), arg("weight_decay"), arg("amsbound"), arg("maximize"), stream, nogil);
  m.def("grad_norm_workspace_size", &grad_norm_workspace_size<D>, arg("grads"));
  m.def("grad_norm", &grad_norm<D>, arg("grads"), arg("norm_type"), arg("total_norm"), arg("workspace"), stream,
        nogil);
  m.def("clip_grads_by_norm", &clip_grads_by_norm<D>, arg("grads"), arg("total_norm"), arg("max_norm"), stream,
        nogil);
  m.def("clip_grads_by_value", &clip_grads_by_value<D>, arg("grads"), arg("clip_value"), stream, nogil);
}

}  // namespace replearn::python
