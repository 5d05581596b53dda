// Emulated CUDA kernels of the optimizer family (csrc/optim/cuda.cu compiled against
// include/cuda_runtime.h) against the CPU kernels in float64; built and run by
// tests/cuda_emu/run.sh optim. Covers tensors that span several chunks, empty tensors, groups that
// need several launches (more tensors than a batch holds), every rule variant, the norms and clipping.
#include <cstring>
#include <type_traits>
#include <random>
#include <string>
#include <vector>

#include "core/cuda_utils.cuh"
#include "optim/optim.h"

using namespace replearn;
using namespace replearn::optim;

namespace {

std::mt19937_64 rng(7);
int failures = 0, checks = 0;

// One tensor in a storage dtype, with typed element access through double.
struct Tensor {
  DType dtype;
  DeviceType device;
  std::vector<int64_t> shape;
  std::vector<unsigned char> bytes;

  Tensor(DType dt, DeviceType dev, std::vector<int64_t> s) : dtype(dt), device(dev), shape(std::move(s)) {
    bytes.resize(numel() * dtype_size(dt));
  }
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    return n;
  }
  double get(int64_t i) const {
    const unsigned char* p = bytes.data() + i * dtype_size(dtype);
    switch (dtype) {
      case DType::Float64: return *reinterpret_cast<const double*>(p);
      case DType::Float32: return *reinterpret_cast<const float*>(p);
      case DType::Float16: return to_float(*reinterpret_cast<const __half*>(p));
      case DType::BFloat16: return to_float(*reinterpret_cast<const __nv_bfloat16*>(p));
      default: std::abort();
    }
  }
  void set(int64_t i, double v) {
    unsigned char* p = bytes.data() + i * dtype_size(dtype);
    switch (dtype) {
      case DType::Float64: *reinterpret_cast<double*>(p) = v; break;
      case DType::Float32: *reinterpret_cast<float*>(p) = static_cast<float>(v); break;
      case DType::Float16: *reinterpret_cast<__half*>(p) = from_float<__half>(static_cast<float>(v)); break;
      case DType::BFloat16:
        *reinterpret_cast<__nv_bfloat16*>(p) = from_float<__nv_bfloat16>(static_cast<float>(v));
        break;
      default: std::abort();
    }
  }
  TensorView view() {
    TensorView v;
    v.data = bytes.data();
    v.dtype = dtype;
    v.device = Device{device, 0};
    v.ndim = static_cast<int>(shape.size());
    int64_t stride = 1;
    for (int d = v.ndim - 1; d >= 0; --d) {
      v.sizes[d] = shape[d];
      v.strides[d] = stride;
      stride *= shape[d];
    }
    return v;
  }
};

// A list of tensors on the emulated device and its float64 twin on the CPU, holding equal values.
struct ListPair {
  std::vector<Tensor> dev, ref;
  TensorList dev_views() {
    TensorList out;
    for (auto& t : dev) out.push_back(t.view());
    return out;
  }
  TensorList ref_views() {
    TensorList out;
    for (auto& t : ref) out.push_back(t.view());
    return out;
  }
};

ListPair random_list(DType dt, const std::vector<std::vector<int64_t>>& shapes, double low, double high) {
  std::uniform_real_distribution<double> u(low, high);
  ListPair l;
  for (const auto& s : shapes) {
    l.dev.emplace_back(dt, DeviceType::CUDA, s);
    l.ref.emplace_back(DType::Float64, DeviceType::CPU, s);
    for (int64_t i = 0; i < l.dev.back().numel(); ++i) {
      l.dev.back().set(i, u(rng));
      l.ref.back().set(i, l.dev.back().get(i));  // the value the device holds, rounded
    }
  }
  return l;
}

// Step counters: host float32 tensors, one set per side.
struct Steps {
  std::vector<Tensor> dev, ref;
  explicit Steps(size_t n, double start) {
    for (size_t i = 0; i < n; ++i) {
      dev.emplace_back(DType::Float32, DeviceType::CPU, std::vector<int64_t>{});
      ref.emplace_back(DType::Float32, DeviceType::CPU, std::vector<int64_t>{});
      dev.back().set(0, start + static_cast<double>(i % 3));  // per-tensor step counts differ
      ref.back().set(0, start + static_cast<double>(i % 3));
    }
  }
  TensorList views(std::vector<Tensor>& ts) {
    TensorList out;
    for (auto& t : ts) out.push_back(t.view());
    return out;
  }
};

double tolerance(DType dt) { return dt == DType::Float32 ? 1e-5 : dt == DType::Float16 ? 2e-3 : 2e-2; }

// max |dev − ref| / max(1, max |ref|) over each tensor of the list.
void compare(const std::string& what, const ListPair& l, DType dt) {
  for (size_t t = 0; t < l.dev.size(); ++t) {
    ++checks;
    double scale = 1, worst = 0;
    for (int64_t i = 0; i < l.ref[t].numel(); ++i) scale = std::max(scale, std::abs(l.ref[t].get(i)));
    int64_t worst_i = -1;
    for (int64_t i = 0; i < l.ref[t].numel(); ++i) {
      const double e = std::abs(l.dev[t].get(i) - l.ref[t].get(i)) / scale;
      if (!(e <= worst)) worst = e, worst_i = i;
    }
    if (worst > tolerance(dt)) {
      ++failures;
      std::printf("FAIL %s tensor %zu: error %g at %ld (got %g, want %g)\n", what.c_str(), t, worst, (long)worst_i,
                  l.dev[t].get(worst_i), l.ref[t].get(worst_i));
    }
  }
}

const char* name(DType dt) { return dtype_name(dt); }

// Shapes: chunk-crossing (16384 elements per chunk), empty, scalar-like and tiny tensors.
std::vector<std::vector<int64_t>> group_shapes(bool many) {
  std::vector<std::vector<int64_t>> shapes = {{3, 5}, {40000}, {0}, {1}, {16384}, {16385}, {7, 0, 2}, {129, 3}};
  if (many)  // more than a batch holds for every rule: several launches
    for (int i = 0; i < 130; ++i) shapes.push_back({1 + i % 5});
  return shapes;
}

struct Group {
  ListPair params, grads;
  std::vector<ListPair> states;
  Steps steps;
  Group(DType dt, const std::vector<std::vector<int64_t>>& shapes, int state_count, double state_low)
      : params(random_list(dt, shapes, -1, 1)), grads(random_list(dt, shapes, -1, 1)), steps(shapes.size(), 1) {
    for (int k = 0; k < state_count; ++k) states.push_back(random_list(dt, shapes, state_low, 1));
  }
  TensorList state(int k, bool device) { return device ? states[k].dev_views() : states[k].ref_views(); }
  void check(const std::string& tag, DType dt) {
    compare(tag + " params", params, dt);
    for (size_t k = 0; k < states.size(); ++k) compare(tag + " state" + std::to_string(k), states[k], dt);
  }
};

void test_sgd(DType dt, bool many, bool nesterov, bool with_momentum) {
  const std::string tag = std::string("sgd ") + name(dt) + (nesterov ? " nesterov" : "") +
                          (with_momentum ? " momentum" : "");
  const auto shapes = group_shapes(many);
  Group g(dt, shapes, with_momentum ? 1 : 0, -1);
  std::vector<bool> is_new;
  for (size_t i = 0; i < shapes.size() && with_momentum; ++i) is_new.push_back(i % 2 == 0);
  const double momentum = with_momentum ? 0.9 : 0, dampening = nesterov ? 0 : 0.1;
  const TensorList dev_buffers = with_momentum ? g.state(0, true) : TensorList{};
  const TensorList ref_buffers = with_momentum ? g.state(0, false) : TensorList{};
  sgd_step<DeviceType::CUDA>(g.params.dev_views(), g.grads.dev_views(), dev_buffers, is_new, 0.05, momentum, dampening,
                             0.01, nesterov, !nesterov);
  sgd_step<DeviceType::CPU>(g.params.ref_views(), g.grads.ref_views(), ref_buffers, is_new, 0.05, momentum, dampening,
                            0.01, nesterov, !nesterov);
  g.check(tag, dt);
}

template <DeviceType D>
using On = std::integral_constant<DeviceType, D>;

// Runs step(On<D>{}, params, grads, steps) on the emulated device, then on the CPU, and compares
// parameters, state and step counters.
template <class Step>
void both(Group& g, const std::string& tag, DType dt, const Step& step) {
  step(On<DeviceType::CUDA>{}, g.params.dev_views(), g.grads.dev_views(), g.steps.views(g.steps.dev));
  step(On<DeviceType::CPU>{}, g.params.ref_views(), g.grads.ref_views(), g.steps.views(g.steps.ref));
  g.check(tag, dt);
  for (size_t i = 0; i < g.steps.dev.size(); ++i) {
    ++checks;
    if (g.steps.dev[i].get(0) != g.steps.ref[i].get(0) || g.steps.dev[i].get(0) != 2 + static_cast<double>(i % 3))
      ++failures, std::printf("FAIL %s: step counter %zu\n", tag.c_str(), i);
  }
}

template <class Device>
constexpr bool on_cuda(Device) {
  return Device::value == DeviceType::CUDA;
}

void test_adagrad(DType dt, bool many) {
  Group g(dt, group_shapes(many), 1, 0);
  both(g, std::string("adagrad ") + name(dt), dt, [&](auto device, TensorList p, TensorList gr, TensorList s) {
    adagrad_step<decltype(device)::value>(p, gr, g.state(0, on_cuda(device)), s, 0.1, 0.01, 0.01, 1e-10, false);
  });
}

void test_rmsprop(DType dt, bool many, bool centered, bool with_momentum) {
  // square_avg ≥ grad_avg² keeps the centered variance positive: states drawn in [0.5, 1] and [-0.5, 0.5].
  Group g(dt, group_shapes(many), 1, 0.5);
  g.states.push_back(random_list(dt, group_shapes(many), -0.5, 0.5));
  g.states.push_back(random_list(dt, group_shapes(many), -1, 1));
  const std::string tag = std::string("rmsprop ") + name(dt) + (centered ? " centered" : "") +
                          (with_momentum ? " momentum" : "");
  both(g, tag, dt, [&](auto device, TensorList p, TensorList gr, TensorList s) {
    const bool dev = on_cuda(device);
    const TensorList avg = centered ? g.state(1, dev) : TensorList{};
    const TensorList buf = with_momentum ? g.state(2, dev) : TensorList{};
    rmsprop_step<decltype(device)::value>(p, gr, g.state(0, dev), avg, buf, s, 0.01, 0.99, 1e-8, 0.01,
                                          with_momentum ? 0.9 : 0, centered, true);
  });
}

void test_adam(DType dt, bool many, bool amsgrad, bool decoupled) {
  Group g(dt, group_shapes(many), 2, 0);
  g.states.push_back(random_list(dt, group_shapes(many), 0, 1));
  const std::string tag =
      std::string("adam ") + name(dt) + (amsgrad ? " amsgrad" : "") + (decoupled ? " decoupled" : "");
  both(g, tag, dt, [&](auto device, TensorList p, TensorList gr, TensorList s) {
    const bool dev = on_cuda(device);
    const TensorList vmax = amsgrad ? g.state(2, dev) : TensorList{};
    adam_step<decltype(device)::value>(p, gr, g.state(0, dev), g.state(1, dev), vmax, s, 1e-2, 0.9, 0.999, 1e-8, 0.1,
                                       amsgrad, decoupled, false);
  });
}

void test_adabound(DType dt, bool many, bool amsbound) {
  Group g(dt, group_shapes(many), 2, 0);
  g.states.push_back(random_list(dt, group_shapes(many), 0, 1));
  const std::string tag = std::string("adabound ") + name(dt) + (amsbound ? " amsbound" : "");
  both(g, tag, dt, [&](auto device, TensorList p, TensorList gr, TensorList s) {
    const bool dev = on_cuda(device);
    const TensorList vmax = amsbound ? g.state(2, dev) : TensorList{};
    adabound_step<decltype(device)::value>(p, gr, g.state(0, dev), g.state(1, dev), vmax, s, 1e-2, 0.9, 0.999, 0.1,
                                           2e-2, 1e-3, 1e-8, 0.01, amsbound, false);
  });
}

void test_clipping(DType dt, bool many) {
  for (double norm_type : {2.0, double(INFINITY), 1.0, 3.0}) {
    const std::string tag = std::string("grad_norm ") + name(dt) + " p=" + std::to_string(norm_type);
    ListPair grads = random_list(dt, group_shapes(many), -2, 2);
    Tensor dev_norm(DType::Float32, DeviceType::CUDA, {}), ref_norm(DType::Float64, DeviceType::CPU, {});
    TensorList dev_grads = grads.dev_views();
    Tensor workspace(DType::UInt8, DeviceType::CUDA, {grad_norm_workspace_size<DeviceType::CUDA>(dev_grads)});
    std::memset(workspace.bytes.data(), 0xff, workspace.bytes.size());  // garbage: must be overwritten
    grad_norm<DeviceType::CUDA>(dev_grads, norm_type, dev_norm.view(), workspace.view());
    Tensor no_workspace(DType::UInt8, DeviceType::CPU, {0});
    grad_norm<DeviceType::CPU>(grads.ref_views(), norm_type, ref_norm.view(), no_workspace.view());
    ++checks;
    if (std::abs(dev_norm.get(0) - ref_norm.get(0)) > 1e-5 * ref_norm.get(0))
      ++failures, std::printf("FAIL %s: %.9g vs %.9g\n", tag.c_str(), dev_norm.get(0), ref_norm.get(0));
    // clip to half the norm: every gradient scaled by the same coefficient on both sides
    clip_grads_by_norm<DeviceType::CUDA>(dev_grads, dev_norm.view(), ref_norm.get(0) / 2);
    ref_norm.set(0, dev_norm.get(0));  // the coefficient from the same norm value
    clip_grads_by_norm<DeviceType::CPU>(grads.ref_views(), ref_norm.view(), ref_norm.get(0) / 2);
    compare(tag + " clipped", grads, dt);
    // a max_norm above the norm writes nothing
    std::vector<std::vector<unsigned char>> before;
    for (auto& t : grads.dev) before.push_back(t.bytes);
    clip_grads_by_norm<DeviceType::CUDA>(dev_grads, dev_norm.view(), dev_norm.get(0) * 2);
    ++checks;
    for (size_t t = 0; t < before.size(); ++t)
      if (before[t] != grads.dev[t].bytes) {
        ++failures, std::printf("FAIL %s: a coefficient of 1 changed tensor %zu\n", tag.c_str(), t);
        break;
      }
  }
  ListPair grads = random_list(dt, group_shapes(many), -2, 2);
  clip_grads_by_value<DeviceType::CUDA>(grads.dev_views(), 0.5);
  clip_grads_by_value<DeviceType::CPU>(grads.ref_views(), 0.5);
  compare(std::string("clip_grads_by_value ") + name(dt), grads, dt);
}

}  // namespace

int main(int argc, char** argv) {
  emu::grid_x_cap = argc > 1 ? std::atoi(argv[1]) : 0;
  (void)argv;  // "quick" (argv[2]) changes nothing: the full run takes well under a minute
  std::printf("grid.x cap: %u\n", emu::grid_x_cap);
  for (DType dt : {DType::Float32, DType::Float16, DType::BFloat16}) {
    const bool f32 = dt == DType::Float32;
    for (bool many : {false, true}) {
      if (many && !f32) continue;  // several launches per group: the indexing is dtype-independent
      for (bool nesterov : {false, true})
        for (bool momentum : {false, true})
          if (momentum || !nesterov) test_sgd(dt, many, nesterov, momentum);
      test_adagrad(dt, many);
      for (bool centered : {false, true})
        for (bool momentum : {false, true}) test_rmsprop(dt, many, centered, momentum);
      for (bool amsgrad : {false, true})
        for (bool decoupled : {false, true}) test_adam(dt, many, amsgrad, decoupled);
      for (bool amsbound : {false, true}) test_adabound(dt, many, amsbound);
      test_clipping(dt, many);
    }
  }
  std::printf("%d checks, %d failures, %ld emulated launches\n", checks, failures, emu::launches.load());
  return failures ? 1 : 0;
}
