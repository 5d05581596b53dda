// Python bindings of the normalization family, written once for both devices: module_cpu.cpp
// binds bind_norm<DeviceType::CPU>, module_cuda.cpp bind_norm<DeviceType::CUDA>. Every kernel runs
// with the GIL released; tensors arrive as TensorViews (tensor_caster.h).
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "norm/norm.h"
#include "python/tensor_caster.h"

namespace replearn::python {

// The statistics a forward saves for backward (means and reciprocal standard deviations) travel
// through Python as one tensor `stats` of shape (2, *): stats[0] the means, stats[1] the rstds. One
// tensor to allocate and convert instead of two saves about a microsecond per call on small inputs
// (docs/design.md, "per-call overhead"); the kernels' API keeps its two views, and their validation
// checks the halves under the names `mean` and `rstd`.
struct StatsHalves {
  norm::OptView mean, rstd;
};

inline StatsHalves split_stats(const char* fn, const norm::OptView& stats) {
  if (!stats) return {};
  const TensorView& s = *stats;
  REPLEARN_CHECK(s.ndim >= 1 && s.sizes[0] == 2 && s.is_contiguous(), Value, fn,
                 ": argument 'stats' expected a contiguous tensor of shape (2, *) but got ",
                 s.is_contiguous() ? "shape " : "a non-contiguous tensor of shape ", s.shape_string());
  TensorView half = s;
  half.ndim = s.ndim - 1;
  for (int d = 0; d < half.ndim; ++d) {
    half.sizes[d] = s.sizes[d + 1];
    half.strides[d] = s.strides[d + 1];
  }
  TensorView second = half;
  second.data = static_cast<char*>(s.data) + s.strides[0] * dtype_size(s.dtype);
  return {half, second};
}

// layer_norm's and group_norm's kernels have the same shape, their size argument (normalized_ndim,
// num_groups) aside: forward (x, size, weight, bias, eps, y, mean, rstd), backward (dy, x, size, mean,
// rstd, weight, dx, dweight, dbias, workspace). One binding each, taking `stats` for mean and rstd.
template <class Size>
using StatsForward = void (*)(const TensorView&, Size, const norm::OptView&, const norm::OptView&, double,
                              const TensorView&, const norm::OptView&, const norm::OptView&, std::uintptr_t);
template <class Size>
using StatsBackward = void (*)(const TensorView&, const TensorView&, Size, const TensorView&, const TensorView&,
                               const norm::OptView&, const norm::OptView&, const norm::OptView&,
                               const norm::OptView&, const norm::OptView&, std::uintptr_t);

template <class Size>
void def_stats_forward(pybind11::module_& m, const char* name, const char* size_name, StatsForward<Size> kernel) {
  namespace py = pybind11;
  using py::arg;
  using norm::OptView;
  m.def(
      name,
      [name, kernel](const TensorView& x, Size size, const OptView& weight, const OptView& bias, double eps,
                     const TensorView& y, const OptView& stats, std::uintptr_t stream) {
        const auto [mean, rstd] = split_stats(name, stats);
        kernel(x, size, weight, bias, eps, y, mean, rstd, stream);
      },
      arg("x"), arg(size_name), arg("weight").none(true), arg("bias").none(true), arg("eps"), arg("y"),
      arg("stats").none(true), arg("stream") = std::uintptr_t{0}, py::call_guard<py::gil_scoped_release>());
}

template <class Size>
void def_stats_backward(pybind11::module_& m, const char* name, const char* size_name, StatsBackward<Size> kernel) {
  namespace py = pybind11;
  using py::arg;
  using norm::OptView;
  m.def(
      name,
      [name, kernel](const TensorView& dy, const TensorView& x, Size size, const TensorView& stats,
                     const OptView& weight, const OptView& dx, const OptView& dweight, const OptView& dbias,
                     const OptView& workspace, std::uintptr_t stream) {
        const auto [mean, rstd] = split_stats(name, stats);
        kernel(dy, x, size, *mean, *rstd, weight, dx, dweight, dbias, workspace, stream);
      },
      arg("grad_y"), arg("x"), arg(size_name), arg("stats"), arg("weight").none(true), arg("grad_x").none(true),
      arg("grad_weight").none(true), arg("grad_bias").none(true), arg("workspace").none(true),
      arg("stream") = std::uintptr_t{0}, py::call_guard<py::gil_scoped_release>());
}

template <DeviceType D>
void bind_norm(pybind11::module_& m) {
  namespace py = pybind11;
  using py::arg;
  using namespace replearn::norm;
  const auto nogil = py::call_guard<py::gil_scoped_release>();
  const auto stream = arg("stream") = std::uintptr_t{0};

  def_stats_forward<int>(m, "layer_norm_forward", "normalized_ndim", &layer_norm_forward<D>);
  m.def("layer_norm_backward_workspace_size", &layer_norm_backward_workspace_size<D>, arg("x"),
        arg("normalized_ndim"));
  def_stats_backward<int>(m, "layer_norm_backward", "normalized_ndim", &layer_norm_backward<D>);

  m.def("rms_norm_forward", &rms_norm_forward<D>, arg("x"), arg("normalized_ndim"), arg("weight").none(true),
        arg("eps"), arg("y"), arg("rstd").none(true), stream, nogil);
  m.def("rms_norm_backward_workspace_size", &rms_norm_backward_workspace_size<D>, arg("x"), arg("normalized_ndim"));
  m.def("rms_norm_backward", &rms_norm_backward<D>, arg("grad_y"), arg("x"), arg("normalized_ndim"), arg("rstd"),
        arg("weight").none(true), arg("grad_x").none(true), arg("grad_weight").none(true),
        arg("workspace").none(true), stream, nogil);

  m.def(
      "batch_norm_forward",
      [](const TensorView& x, const OptView& weight, const OptView& bias, const OptView& running_mean,
         const OptView& running_var, bool training, double momentum, double eps, const TensorView& y,
         const OptView& stats, std::uintptr_t stream) {
        const auto [mean, rstd] = split_stats("batch_norm_forward", stats);
        batch_norm_forward<D>(x, weight, bias, running_mean, running_var, training, momentum, eps, y, mean, rstd,
                              stream);
      },
      arg("x"), arg("weight").none(true), arg("bias").none(true), arg("running_mean").none(true),
      arg("running_var").none(true), arg("training"), arg("momentum"), arg("eps"), arg("y"), arg("stats").none(true),
      stream, nogil);
  m.def(
      "batch_norm_backward",
      [](const TensorView& dy, const TensorView& x, const TensorView& stats, const OptView& weight, bool training,
         const OptView& dx, const OptView& dweight, const OptView& dbias, std::uintptr_t stream) {
        const auto [mean, rstd] = split_stats("batch_norm_backward", stats);
        batch_norm_backward<D>(dy, x, *mean, *rstd, weight, training, dx, dweight, dbias, stream);
      },
      arg("grad_y"), arg("x"), arg("stats"), arg("weight").none(true), arg("training"), arg("grad_x").none(true),
      arg("grad_weight").none(true), arg("grad_bias").none(true), stream, nogil);

  def_stats_forward<int64_t>(m, "group_norm_forward", "num_groups", &group_norm_forward<D>);
  m.def("group_norm_backward_workspace_size", &group_norm_backward_workspace_size<D>, arg("x"), arg("num_groups"));
  def_stats_backward<int64_t>(m, "group_norm_backward", "num_groups", &group_norm_backward<D>);

  m.def(
      "running_stats_update",
      [](const TensorView& stats, int64_t batch, int64_t channels, int64_t spatial, double momentum, double eps,
         const TensorView& running_mean, const TensorView& running_var, std::uintptr_t stream) {
        const auto [mean, rstd] = split_stats("running_stats_update", stats);
        running_stats_update<D>(*mean, *rstd, batch, channels, spatial, momentum, eps, running_mean, running_var,
                                stream);
      },
      arg("stats"), arg("batch"), arg("channels"), arg("spatial"), arg("momentum"), arg("eps"), arg("running_mean"),
      arg("running_var"), stream, nogil);

  m.def("weight_norm_forward", &weight_norm_forward<D>, arg("v"), arg("g"), arg("dim"), arg("w"),
        arg("norm").none(true), stream, nogil);
  m.def("weight_norm_backward", &weight_norm_backward<D>, arg("grad_w"), arg("v"), arg("g"), arg("norm"), arg("dim"),
        arg("grad_v").none(true), arg("grad_g").none(true), stream, nogil);

  m.def("spectral_norm_forward_workspace_size", &spectral_norm_forward_workspace_size<D>, arg("weight"));
  m.def("spectral_norm_forward", &spectral_norm_forward<D>, arg("weight"), arg("u"), arg("v").none(true),
        arg("n_power_iterations"), arg("eps"), arg("coeff").none(true), arg("w"), arg("u_out"), arg("v_out"),
        arg("sigma"), arg("workspace").none(true), stream, nogil);
  m.def("spectral_norm_backward_workspace_size", &spectral_norm_backward_workspace_size<D>, arg("weight"));
  m.def("spectral_norm_backward", &spectral_norm_backward<D>, arg("grad_w"), arg("grad_sigma").none(true),
        arg("weight"), arg("u"), arg("v"), arg("sigma"), arg("coeff").none(true), arg("grad_weight"),
        arg("workspace").none(true), stream, nogil);
}

}  // namespace replearn::python
