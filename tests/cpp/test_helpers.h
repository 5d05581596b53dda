// Shared helpers of the C++ unit tests: an owning buffer that hands out TensorViews, seeded random
// values, closeness assertions, central finite differences, and a scoped thread count.
//
// Tests hold every tensor as a Buffer and read and write its elements as doubles whatever the
// dtype, so one test body serves float32 and float64 and the double-precision references are
// computed from exactly the values the kernel saw (float32 inputs rounded once, then widened).
// Each Buffer is surrounded by guard bytes checked when it is destroyed: a kernel writing past the
// end of an output fails the test that owns the buffer.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <optional>
#include <ostream>
#include <sstream>
#include <string>
#include <vector>

#include "core/parallel.h"
#include "core/tensor_view.h"

namespace replearn::test {

inline constexpr Device kCpu{DeviceType::CPU, 0};

// ------------------------------------------------------------------------------------ Buffer

class Buffer {
 public:
  Buffer(DType dtype, std::vector<int64_t> sizes) : dtype_(dtype), sizes_(std::move(sizes)) {
    numel_ = 1;
    for (int64_t s : sizes_) numel_ *= s;
    element_bytes_ = dtype_size(dtype_);
    storage_.assign(2 * kGuardBytes + numel_ * element_bytes_, kGuardByte);
    std::memset(bytes(), 0, numel_ * element_bytes_);
  }
  Buffer(DType dtype, std::vector<int64_t> sizes, const std::vector<double>& values) : Buffer(dtype, std::move(sizes)) {
    set_values(values);
  }
  Buffer(const Buffer&) = default;
  Buffer& operator=(const Buffer&) = default;
  ~Buffer() {
    if (!guards_intact()) ADD_FAILURE() << "a kernel wrote outside a buffer of shape " << view().shape_string();
  }

  // A contiguous CPU view of the whole buffer.
  TensorView view() const {
    TensorView v;
    v.data = const_cast<unsigned char*>(bytes());
    v.dtype = dtype_;
    v.device = kCpu;
    v.ndim = static_cast<int>(sizes_.size());
    int64_t stride = 1;
    for (int d = v.ndim - 1; d >= 0; --d) {
      v.sizes[d] = sizes_[d];
      v.strides[d] = stride;
      stride *= sizes_[d];
    }
    return v;
  }
  std::optional<TensorView> opt() const { return view(); }

  DType dtype() const { return dtype_; }
  int64_t numel() const { return numel_; }
  const std::vector<int64_t>& sizes() const { return sizes_; }

  double get(int64_t i) const {
    const unsigned char* p = bytes() + i * element_bytes_;
    switch (dtype_) {
      case DType::Float32: { float f; std::memcpy(&f, p, 4); return f; }
      case DType::Float64: { double f; std::memcpy(&f, p, 8); return f; }
      case DType::Int64: { int64_t k; std::memcpy(&k, p, 8); return static_cast<double>(k); }
      case DType::UInt8: return *p;
      default: ADD_FAILURE() << "Buffer::get: unsupported dtype " << dtype_name(dtype_); return 0;
    }
  }
  void set(int64_t i, double value) {
    unsigned char* p = bytes() + i * element_bytes_;
    switch (dtype_) {
      case DType::Float32: { const float f = static_cast<float>(value); std::memcpy(p, &f, 4); break; }
      case DType::Float64: std::memcpy(p, &value, 8); break;
      case DType::Int64: { const int64_t k = static_cast<int64_t>(value); std::memcpy(p, &k, 8); break; }
      case DType::UInt8: *p = static_cast<unsigned char>(value); break;
      default: ADD_FAILURE() << "Buffer::set: unsupported dtype " << dtype_name(dtype_);
    }
  }
  std::vector<double> values() const {
    std::vector<double> out(numel_);
    for (int64_t i = 0; i < numel_; ++i) out[i] = get(i);
    return out;
  }
  void set_values(const std::vector<double>& values) {
    EXPECT_EQ(static_cast<int64_t>(values.size()), numel_);
    for (int64_t i = 0; i < numel_ && i < static_cast<int64_t>(values.size()); ++i) set(i, values[i]);
  }
  void fill(double value) {
    for (int64_t i = 0; i < numel_; ++i) set(i, value);
  }

  // Byte-exact "did anything write here since snapshot()" (NaN-safe, unlike comparing values).
  void snapshot() { snapshot_.assign(bytes(), bytes() + numel_ * element_bytes_); }
  bool unchanged_since_snapshot() const {
    return static_cast<int64_t>(snapshot_.size()) == numel_ * element_bytes_ &&
           std::memcmp(snapshot_.data(), bytes(), snapshot_.size()) == 0;
  }

  bool guards_intact() const {
    if (static_cast<int64_t>(storage_.size()) != 2 * kGuardBytes + numel_ * element_bytes_) return false;
    const int64_t tail = kGuardBytes + numel_ * element_bytes_;
    for (int64_t i = 0; i < kGuardBytes; ++i)
      if (storage_[i] != kGuardByte || storage_[tail + i] != kGuardByte) return false;
    return true;
  }

 private:
  static constexpr int64_t kGuardBytes = 64;  // a multiple of 8 keeps doubles aligned
  static constexpr unsigned char kGuardByte = 0xA5;

  unsigned char* bytes() { return storage_.data() + kGuardBytes; }
  const unsigned char* bytes() const { return storage_.data() + kGuardBytes; }

  DType dtype_;
  std::vector<int64_t> sizes_;
  int64_t numel_ = 0, element_bytes_ = 0;
  std::vector<unsigned char> storage_;  // guard | data | guard
  std::vector<unsigned char> snapshot_;
};

// Written into outputs before a call, so that "not written" can be checked; exact in float32.
inline constexpr double kSentinel = -777.25;

inline Buffer sentinel_buffer(DType dtype, std::vector<int64_t> sizes) {
  Buffer b(dtype, std::move(sizes));
  b.fill(kSentinel);
  return b;
}

inline bool all_equal(const Buffer& b, double value) {
  for (int64_t i = 0; i < b.numel(); ++i)
    if (b.get(i) != value) return false;
  return true;
}

// ------------------------------------------------------------------------------- random values

// splitmix64: tiny, seeded, and the same on every platform and standard library.
class Random {
 public:
  explicit Random(uint64_t seed) : state_(seed) {}
  uint64_t next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double uniform(double low, double high) { return low + (high - low) * (next() >> 11) * 0x1.0p-53; }
  std::vector<double> uniform(int64_t n, double low, double high) {
    std::vector<double> out(n);
    for (double& v : out) v = uniform(low, high);
    return out;
  }

 private:
  uint64_t state_;
};

inline Buffer random_buffer(Random& rng, DType dtype, std::vector<int64_t> sizes, double low = -1, double high = 1) {
  int64_t n = 1;
  for (int64_t s : sizes) n *= s;
  return Buffer(dtype, std::move(sizes), rng.uniform(n, low, high));
}

// ---------------------------------------------------------------------------------- tolerances

struct Tolerance {
  double rtol, atol;
};
// Forward kernels against a double-precision reference: float64 to ~1e-12, float32 to ~1e-5.
inline Tolerance forward_tolerance(DType dtype) {
  return dtype == DType::Float64 ? Tolerance{1e-12, 1e-12} : Tolerance{1e-5, 1e-5};
}

// |actual − expected| ≤ atol + rtol·|expected| elementwise; reports the worst element.
inline ::testing::AssertionResult AllClose(const std::vector<double>& actual, const std::vector<double>& expected,
                                           Tolerance tol) {
  if (actual.size() != expected.size())
    return ::testing::AssertionFailure() << "sizes differ: " << actual.size() << " vs " << expected.size();
  int64_t worst = -1, failures = 0;
  double worst_excess = 0;
  for (size_t i = 0; i < actual.size(); ++i) {
    const double err = std::fabs(actual[i] - expected[i]);
    const double allowed = tol.atol + tol.rtol * std::fabs(expected[i]);
    if (!(err <= allowed)) {  // NaN fails
      ++failures;
      const double excess = std::isnan(err) ? INFINITY : err / allowed;
      if (worst < 0 || excess > worst_excess) {
        worst = static_cast<int64_t>(i);
        worst_excess = excess;
      }
    }
  }
  if (failures == 0) return ::testing::AssertionSuccess();
  std::ostringstream out;
  out.precision(17);
  out << failures << " of " << actual.size() << " elements differ (rtol " << tol.rtol << ", atol " << tol.atol
      << "); worst at index " << worst << ": got " << actual[worst] << ", expected " << expected[worst];
  return ::testing::AssertionFailure() << out.str();
}

// ------------------------------------------------------------------------- finite differences

// Σ y·r: the scalar loss whose gradient with respect to y is r, so a backward kernel fed dy = r
// returns ∂L/∂(inputs), which central differences of L check.
inline double dot(const Buffer& y, const std::vector<double>& r) {
  double s = 0;
  for (int64_t i = 0; i < y.numel(); ++i) s += y.get(i) * r[i];
  return s;
}

// ∂loss/∂param by central differences, perturbing each element of the float64 buffer in place.
inline std::vector<double> numeric_gradient(Buffer& param, const std::function<double()>& loss, double h = 1e-6) {
  std::vector<double> grad(param.numel());
  for (int64_t i = 0; i < param.numel(); ++i) {
    const double saved = param.get(i);
    param.set(i, saved + h);
    const double plus = loss();
    param.set(i, saved - h);
    const double minus = loss();
    param.set(i, saved);
    grad[i] = (plus - minus) / (2 * h);
  }
  return grad;
}

// Analytic against numeric gradients in float64: h = 1e-6 leaves ~1e-9 of rounding error in L/h
// and ~1e-12 of truncation, so 1e-6 relative with a 1e-7 floor is tight yet robust.
inline constexpr Tolerance kGradientTolerance{1e-6, 1e-7};

// --------------------------------------------------------------------------------- threads

// Sets the kernels' thread count for one scope, then restores the previous one.
class ScopedThreads {
 public:
  explicit ScopedThreads(int n) : previous_(num_threads()) { set_num_threads(n); }
  ~ScopedThreads() { set_num_threads(previous_); }
  ScopedThreads(const ScopedThreads&) = delete;
  ScopedThreads& operator=(const ScopedThreads&) = delete;

 private:
  int previous_;
};

// Threads for a test's kernel call on `numel` elements: two (a CI machine's cores) once the work is
// large enough to split into chunks, one below that, where an OpenMP team would only add its
// start-up (and, on a loaded machine, its spinning) to the suite's time.
inline int threads_for(int64_t numel) { return numel >= (1 << 12) ? 2 : 1; }

// Name of a DType test parameter, for INSTANTIATE_TEST_SUITE_P.
struct DTypeName {
  std::string operator()(const ::testing::TestParamInfo<DType>& info) const { return dtype_name(info.param); }
};

// Product of sizes[begin, end).
inline int64_t product(const std::vector<int64_t>& sizes, size_t begin, size_t end) {
  int64_t n = 1;
  for (size_t d = begin; d < end; ++d) n *= sizes[d];
  return n;
}

inline std::string shape_name(const std::vector<int64_t>& sizes) {
  std::string s = "(";
  for (size_t i = 0; i < sizes.size(); ++i) s += (i ? ", " : "") + std::to_string(sizes[i]);
  return s + ")";
}

}  // namespace replearn::test

namespace replearn {
// Test names and failure messages print a DType parameter by name rather than as raw bytes.
inline void PrintTo(DType dtype, std::ostream* out) { *out << dtype_name(dtype); }
}  // namespace replearn
