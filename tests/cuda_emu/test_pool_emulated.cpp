// Emulated CUDA kernels (csrc/pool/cuda.cu compiled against include/cuda_runtime.h) against the CPU
// float64 kernels; built and run by tests/cuda_emu/run.sh pool.
//
// Max pooling must agree exactly (values and int64 indices: both sides see the same values, rounded to
// the test dtype once), including windows with ties and NaNs. Average pooling and every backward agree
// to the dtype's rounding.
#include <string>
#include <vector>

#include "emu_test_helpers.h"
#include "pool/pool.h"

using namespace replearn;
using namespace replearn::pool;
using namespace replearn::emu_test;

struct Strided {  // one geometry of a strided op; 1-D when kernel has one value
  std::vector<int64_t> shape, kernel, stride, padding, dilation;
  bool ceil_mode;
};

std::string ints_str(const std::vector<int64_t>& v) { return shape_str(v); }

std::vector<int64_t> pooled_shape(const Strided& s) {
  std::vector<int64_t> out = s.shape;
  const size_t n = s.kernel.size();
  for (size_t i = 0; i < n; ++i) {
    const size_t d = s.shape.size() - n + i;
    out[d] = pooled_size(s.shape[d], s.kernel[i], s.stride[i], s.padding[i], s.dilation[i], s.ceil_mode);
  }
  return out;
}

// Exact equality (NaN equals NaN): max pooling values and indices.
void compare_exact(const std::string& what, const Arr& got, const Arr& ref) {
  ++checks;
  for (int64_t i = 0; i < ref.n; ++i) {
    const double a = got.get(i), b = ref.get(i);
    if (a == b || (std::isnan(a) && std::isnan(b))) continue;
    ++failures;
    std::printf("FAIL %s: at %ld got %g, want %g\n", what.c_str(), (long)i, a, b);
    return;
  }
}

// Integer-valued inputs in a small range give many ties; `nans` sets every 7th value to NaN.
Pair tie_input(DType dt, const std::vector<int64_t>& shape, bool nans) {
  Pair p = randn(dt, shape);
  for (int64_t i = 0; i < p.dev.n; ++i) {
    const double v = nans && i % 7 == 3 ? NAN : std::floor(p.ref.get(i) * 1.5);
    p.dev.set(i, v);
    p.ref.set(i, p.dev.get(i));
  }
  return p;
}

void test_max(DType dt, const Strided& s, int inputs) {  // inputs: 0 random, 1 ties, 2 ties and NaNs
  const std::string tag = "max " + dname(dt) + shape_str(s.shape) + " k" + ints_str(s.kernel) + " s" +
                          ints_str(s.stride) + " p" + ints_str(s.padding) + " d" + ints_str(s.dilation) +
                          (s.ceil_mode ? " ceil" : "") + " inputs=" + std::to_string(inputs);
  const std::vector<int64_t> out = pooled_shape(s);
  Pair x = inputs ? tie_input(dt, s.shape, inputs == 2) : randn(dt, s.shape);
  Pair y = outputs(dt, out), y_plain = outputs(dt, out);
  Arr idx = make(DType::Int64, CUDA, out), idx_ref = make(DType::Int64, CPU, out);
  for (int64_t i = 0; i < idx.n; ++i) idx.set(i, -5);  // garbage: every index must be written
  max_pool_forward<CUDA>(x.dev.view(), s.kernel, s.stride, s.padding, s.dilation, s.ceil_mode, y.dev.view(),
                         idx.view());
  max_pool_forward<CPU>(x.ref.view(), s.kernel, s.stride, s.padding, s.dilation, s.ceil_mode, y.ref.view(),
                        idx_ref.view());
  compare_exact(tag + " y", y.dev, y.ref);
  compare_exact(tag + " indices", idx, idx_ref);
  max_pool_forward<CUDA>(x.dev.view(), s.kernel, s.stride, s.padding, s.dilation, s.ceil_mode, y_plain.dev.view(),
                         std::nullopt);
  compare_exact(tag + " y without indices", y_plain.dev, y.ref);
  Pair dy = randn(dt, out), dx = outputs(dt, s.shape);
  max_pool_backward<CUDA>(dy.dev.view(), idx.view(), s.kernel, s.stride, s.padding, s.dilation, s.ceil_mode,
                          dx.dev.view());
  max_pool_backward<CPU>(dy.ref.view(), idx_ref.view(), s.kernel, s.stride, s.padding, s.dilation, s.ceil_mode,
                         dx.ref.view());
  CMP("dx", dx, dt);
}

void test_avg(DType dt, const Strided& s, bool count_include_pad, int64_t divisor_override) {
  const std::string tag = "avg " + dname(dt) + shape_str(s.shape) + " k" + ints_str(s.kernel) + " s" +
                          ints_str(s.stride) + " p" + ints_str(s.padding) + (s.ceil_mode ? " ceil" : "") +
                          (count_include_pad ? " include_pad" : "") + " divisor=" + std::to_string(divisor_override);
  const std::vector<int64_t> out = pooled_shape(s);
  Pair x = randn(dt, s.shape), y = outputs(dt, out), dy = randn(dt, out), dx = outputs(dt, s.shape);
  avg_pool_forward<CUDA>(x.dev.view(), s.kernel, s.stride, s.padding, s.ceil_mode, count_include_pad,
                         divisor_override, y.dev.view());
  avg_pool_forward<CPU>(x.ref.view(), s.kernel, s.stride, s.padding, s.ceil_mode, count_include_pad, divisor_override,
                        y.ref.view());
  CMP("y", y, dt);
  avg_pool_backward<CUDA>(dy.dev.view(), s.kernel, s.stride, s.padding, s.ceil_mode, count_include_pad,
                          divisor_override, dx.dev.view());
  avg_pool_backward<CPU>(dy.ref.view(), s.kernel, s.stride, s.padding, s.ceil_mode, count_include_pad,
                         divisor_override, dx.ref.view());
  CMP("dx", dx, dt);
}

void test_adaptive(DType dt, const std::vector<int64_t>& shape, const std::vector<int64_t>& out, int spatial) {
  const std::string tag = "adaptive " + dname(dt) + shape_str(shape) + " -> " + shape_str(out);
  Pair x = randn(dt, shape), y = outputs(dt, out), dy = randn(dt, out), dx = outputs(dt, shape);
  adaptive_avg_pool_forward<CUDA>(x.dev.view(), spatial, y.dev.view());
  adaptive_avg_pool_forward<CPU>(x.ref.view(), spatial, y.ref.view());
  CMP("y", y, dt);
  adaptive_avg_pool_backward<CUDA>(dy.dev.view(), spatial, dx.dev.view());
  adaptive_avg_pool_backward<CPU>(dy.ref.view(), spatial, dx.ref.view());
  CMP("dx", dx, dt);
}

void test_bad_geometry() {
  Pair x = randn(DType::Float32, {1, 2, 4, 4}), y = outputs(DType::Float32, {1, 2, 1, 1});
  int thrown = 0;
  const std::vector<Strided> bad = {
      {{1, 2, 4, 4}, {3, 3}, {1, 1}, {2, 2}, {1, 1}, false},  // padding over half the kernel
      {{1, 2, 4, 4}, {5, 5}, {1, 1}, {0, 0}, {1, 1}, false},  // kernel larger than the input
      {{1, 2, 4, 4}, {2, 2}, {0, 1}, {0, 0}, {1, 1}, false},  // zero stride
  };
  for (const Strided& s : bad) {
    try {
      max_pool_forward<CUDA>(x.dev.view(), s.kernel, s.stride, s.padding, s.dilation, s.ceil_mode, y.dev.view(),
                             std::nullopt);
    } catch (const Error& e) {
      ++thrown;
      std::printf("  expected error: %s\n", e.what());
    }
  }
  ++checks;
  if (thrown != static_cast<int>(bad.size())) ++failures, std::printf("FAIL bad geometry not rejected\n");
}

int main(int argc, char** argv) {
  emu::grid_x_cap = argc > 1 ? std::atoi(argv[1]) : 0;
  const bool quick = argc > 2;
  std::printf("grid.x cap: %u\n", emu::grid_x_cap);
  const std::vector<Strided> geometries = {
      {{2, 3, 9, 11}, {3, 3}, {2, 2}, {1, 1}, {1, 1}, false},  // the ResNet stem's pooling
      {{2, 3, 9, 11}, {3, 3}, {2, 2}, {1, 1}, {1, 1}, true},
      {{1, 2, 8, 8}, {2, 2}, {2, 2}, {0, 0}, {1, 1}, false},
      {{1, 4, 10, 13}, {3, 2}, {2, 3}, {1, 0}, {2, 1}, true},   // dilated, uneven
      {{3, 7, 5}, {3, 2}, {2, 1}, {1, 1}, {1, 1}, true},        // unbatched
      {{2, 2, 6, 5}, {4, 4}, {3, 3}, {2, 2}, {1, 1}, true},
      {{2, 3, 13}, {3}, {2}, {1}, {1}, false},                  // 1-D
      {{4, 11}, {3}, {2}, {1}, {2}, true},
      {{0, 3, 5, 5}, {2, 2}, {2, 2}, {0, 0}, {1, 1}, false},    // empty batch
  };
  const DType dtypes[] = {DType::Float32, DType::Float16, DType::BFloat16};
  for (DType dt : dtypes) {
    const bool f32 = dt == DType::Float32;
    for (const Strided& s : geometries) {
      for (int inputs : {0, 1, 2}) {
        if ((quick || !f32) && inputs == 1) continue;
        test_max(dt, s, inputs);
      }
      Strided avg = s;
      avg.dilation.assign(s.kernel.size(), 1);
      for (bool include_pad : {true, false}) test_avg(dt, avg, include_pad, 0);
      if (avg.kernel.size() == 2 && (f32 || !quick)) test_avg(dt, avg, true, 3);
    }
    test_adaptive(dt, {2, 3, 7, 7}, {2, 3, 1, 1}, 2);  // global
    test_adaptive(dt, {1, 2, 9, 11}, {1, 2, 4, 3}, 2);
    test_adaptive(dt, {3, 5, 6}, {3, 8, 2}, 2);        // unbatched, growing one axis
    test_adaptive(dt, {2, 3, 13}, {2, 3, 4}, 1);
    test_adaptive(dt, {2, 3, 13}, {2, 3, 1}, 1);
    test_adaptive(dt, {2, 2, 4, 4}, {2, 2, 0, 2}, 2);  // an empty output: grad_x is zero
  }
  test_bad_geometry();
  std::printf("%d checks, %d failures, %ld emulated launches\n", checks, failures, emu::launches.load());
  return failures ? 1 : 0;
}
