// Helpers of the emulated CUDA tests (test_<family>_emulated.cpp): buffers on the emulated device
// and their float64 twins for the CPU kernels, random inputs, and the normalized-error comparison.
#pragma once

#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "core/cuda_utils.cuh"
#include "core/tensor_view.h"

using namespace replearn;
constexpr DeviceType CUDA = DeviceType::CUDA, CPU = DeviceType::CPU;
using OptView = std::optional<TensorView>;

struct Arr {  // exact-size heap buffer (ASan sees any out-of-bounds access)
  DType dt = DType::Float32;
  DeviceType dev = CPU;
  std::vector<int64_t> shape;
  int64_t n = 0;
  std::unique_ptr<unsigned char[]> mem;
  TensorView view() const {
    TensorView v;
    v.data = mem.get();
    v.dtype = dt;
    v.device = Device{dev, 0};
    v.ndim = static_cast<int>(shape.size());
    int64_t stride = 1;
    for (int k = v.ndim - 1; k >= 0; --k) {
      v.sizes[k] = shape[k];
      v.strides[k] = stride;
      stride *= shape[k];
    }
    return v;
  }
  double get(int64_t i) const {
    switch (dt) {
      case DType::Float64: return reinterpret_cast<const double*>(mem.get())[i];
      case DType::Float32: return reinterpret_cast<const float*>(mem.get())[i];
      case DType::Float16: return to_float(reinterpret_cast<const __half*>(mem.get())[i]);
      case DType::BFloat16: return to_float(reinterpret_cast<const __nv_bfloat16*>(mem.get())[i]);
      default: std::abort();
    }
  }
  void set(int64_t i, double v) {
    switch (dt) {
      case DType::Float64: reinterpret_cast<double*>(mem.get())[i] = v; break;
      case DType::Float32: reinterpret_cast<float*>(mem.get())[i] = static_cast<float>(v); break;
      case DType::Float16: reinterpret_cast<__half*>(mem.get())[i] = from_float<__half>(static_cast<float>(v)); break;
      case DType::BFloat16:
        reinterpret_cast<__nv_bfloat16*>(mem.get())[i] = from_float<__nv_bfloat16>(static_cast<float>(v));
        break;
      default: std::abort();
    }
  }
};

Arr make(DType dt, DeviceType dev, std::vector<int64_t> shape, double fill = NAN) {
  Arr a;
  a.dt = dt;
  a.dev = dev;
  a.shape = shape;
  a.n = 1;
  for (auto s : shape) a.n *= s;
  a.mem.reset(new unsigned char[std::max<int64_t>(a.n, 0) * dtype_size(dt)]);
  if (dt != DType::UInt8)
    for (int64_t i = 0; i < a.n; ++i) a.set(i, fill);
  return a;
}
Arr bytes(DeviceType dev, int64_t n) {  // workspace
  Arr a;
  a.dt = DType::UInt8;
  a.dev = dev;
  a.shape = {n};
  a.n = n;
  a.mem.reset(new unsigned char[n]);
  std::memset(a.mem.get(), 0xff, n);  // garbage: kernels must not rely on a zeroed workspace
  return a;
}

std::mt19937_64 rng(1234);
// A pair: the CUDA-side buffer in dtype dt and the float64 reference holding exactly the same values.
struct Pair {
  Arr dev, ref;
};
Pair randn(DType dt, std::vector<int64_t> shape, double mean = 0, double scale = 1) {
  std::normal_distribution<double> nd(mean, scale);
  Pair p{make(dt, CUDA, shape), make(DType::Float64, CPU, shape)};
  for (int64_t i = 0; i < p.dev.n; ++i) {
    p.dev.set(i, nd(rng));
    p.ref.set(i, p.dev.get(i));
  }
  return p;
}
Pair outputs(DType dt, std::vector<int64_t> shape) { return {make(dt, CUDA, shape), make(DType::Float64, CPU, shape)}; }
Pair stats(std::vector<int64_t> shape) { return outputs(DType::Float32, shape); }

int failures = 0, checks = 0;
double tol_for(DType dt) { return dt == DType::Float32 ? 2e-4 : dt == DType::Float16 ? 6e-3 : 3e-2; }
void compare(const std::string& what, const Arr& got, const Arr& ref, double tol) {
  ++checks;
  double scale = 1, worst = 0;
  int64_t worst_i = -1;
  for (int64_t i = 0; i < ref.n; ++i)
    if (std::isfinite(ref.get(i))) scale = std::max(scale, std::abs(ref.get(i)));
  for (int64_t i = 0; i < ref.n; ++i) {
    const double a = got.get(i), b = ref.get(i);
    if (std::isnan(a) && std::isnan(b)) continue;
    const double e = (std::isnan(a) || std::isnan(b)) ? INFINITY : std::abs(a - b) / scale;
    if (e > worst) worst = e, worst_i = i;
  }
  if (worst > tol) {
    ++failures;
    std::printf("FAIL %s: max normalized error %g at %ld (got %g, want %g), n=%ld\n", what.c_str(), worst,
                (long)worst_i, got.get(worst_i), ref.get(worst_i), (long)ref.n);
  }
}
#define CMP(name, p, dt) compare(tag + " " name, (p).dev, (p).ref, tol_for(dt))
inline OptView opt(const Arr* a) { return a ? OptView(a->view()) : std::nullopt; }
std::string dname(DType dt) { return dtype_name(dt); }
std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "(";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? "," : "") + std::to_string(s[i]);
  return r + ")";
}

