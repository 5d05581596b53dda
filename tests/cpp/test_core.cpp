// The core's building blocks: TensorView geometry, dtype and device names, errors and the check
// macro, dtype support per device, and parallel_for's promise that every index is covered exactly
// once by at most num_threads() chunks of at least `grain` items.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "core/check.h"
#include "core/error.h"
#include "core/vmath.h"
#include "core/parallel.h"
#include "core/reduce.h"
#include "core/simd.h"
#include "core/tensor_view.h"
#include "test_helpers.h"

namespace replearn {
namespace {

using test::ScopedThreads;

TensorView strided(std::initializer_list<int64_t> sizes, std::initializer_list<int64_t> strides) {
  TensorView v;
  v.ndim = static_cast<int>(sizes.size());
  int d = 0;
  for (int64_t s : sizes) v.sizes[d++] = s;
  d = 0;
  for (int64_t s : strides) v.strides[d++] = s;
  return v;
}

// ------------------------------------------------------------------------------------ TensorView

TEST(TensorView, NumelAndNegativeIndexing) {
  EXPECT_EQ(strided({}, {}).numel(), 1);  // a 0-dim tensor holds one value
  EXPECT_EQ(strided({7}, {1}).numel(), 7);
  EXPECT_EQ(strided({2, 3, 5}, {15, 5, 1}).numel(), 30);
  EXPECT_EQ(strided({2, 0, 5}, {5, 5, 1}).numel(), 0);
  const TensorView v = strided({2, 3, 5}, {15, 5, 1});
  EXPECT_EQ(v.numel_between(1, 3), 15);
  EXPECT_EQ(v.numel_between(0, 1), 2);
  EXPECT_EQ(v.numel_between(2, 2), 1);
  EXPECT_EQ(v.size(-1), 5);
  EXPECT_EQ(v.size(-3), 2);
  EXPECT_EQ(v.stride(-2), 5);
}

TEST(TensorView, ContiguousFactoryAndShapeString) {
  float storage[60];
  const TensorView v = TensorView::contiguous(storage, DType::Float32, test::kCpu, {3, 4, 5});
  EXPECT_EQ(v.ndim, 3);
  EXPECT_EQ(v.strides[0], 20);
  EXPECT_EQ(v.strides[1], 5);
  EXPECT_EQ(v.strides[2], 1);
  EXPECT_TRUE(v.is_contiguous());
  EXPECT_EQ(v.data_as<float>(), storage);
  EXPECT_EQ(v.shape_string(), "(3, 4, 5)");
  EXPECT_EQ(strided({}, {}).shape_string(), "()");
  EXPECT_EQ(strided({7}, {1}).shape_string(), "(7)");
}

TEST(TensorView, IsContiguous) {
  EXPECT_TRUE(strided({}, {}).is_contiguous());
  EXPECT_TRUE(strided({5}, {1}).is_contiguous());
  EXPECT_TRUE(strided({2, 3}, {3, 1}).is_contiguous());
  EXPECT_TRUE(strided({2, 3, 4}, {12, 4, 1}).is_contiguous());

  EXPECT_FALSE(strided({5}, {2}).is_contiguous());            // every other element
  EXPECT_FALSE(strided({2, 3}, {1, 2}).is_contiguous());      // a transpose
  EXPECT_FALSE(strided({2, 3}, {4, 1}).is_contiguous());      // padded rows
  EXPECT_FALSE(strided({2, 3, 4}, {12, 1, 3}).is_contiguous());
  EXPECT_FALSE(strided({3, 2}, {0, 1}).is_contiguous());      // an expanded (broadcast) dim
}

TEST(TensorView, SizeOneDimsMayCarryAnyStride) {
  // torch gives size-1 dims arbitrary strides (unsqueeze, slicing to one element, DLPack producers).
  EXPECT_TRUE(strided({1}, {7}).is_contiguous());
  EXPECT_TRUE(strided({1, 3}, {99, 1}).is_contiguous());
  EXPECT_TRUE(strided({3, 1}, {1, 42}).is_contiguous());
  EXPECT_TRUE(strided({2, 1, 3}, {3, -5, 1}).is_contiguous());
  EXPECT_TRUE(strided({1, 1, 1}, {0, 0, 0}).is_contiguous());
  EXPECT_TRUE(strided({2, 1, 3, 1}, {3, 1, 1, 1000}).is_contiguous());
  // A size-1 dim does not excuse the others.
  EXPECT_FALSE(strided({2, 1, 3}, {4, 3, 1}).is_contiguous());
  EXPECT_FALSE(strided({1, 3}, {99, 2}).is_contiguous());
}

TEST(TensorView, EmptyTensorsAreContiguousWhateverTheirStrides) {
  // torch calls every tensor without elements contiguous: x[:, :0] of a (4, 5) tensor has sizes
  // (4, 0), strides (5, 1), and .contiguous() returns it unchanged, so rejecting it would leave the
  // Python layer no way to satisfy the check.
  EXPECT_TRUE(strided({4, 0}, {5, 1}).is_contiguous());
  EXPECT_TRUE(strided({0, 3}, {3, 1}).is_contiguous());
  EXPECT_TRUE(strided({2, 0, 3}, {17, 3, 1}).is_contiguous());
}

TEST(DType, Names) {
  EXPECT_STREQ(dtype_name(DType::Float32), "float32");
  EXPECT_STREQ(dtype_name(DType::Float64), "float64");
  EXPECT_STREQ(dtype_name(DType::Float16), "float16");
  EXPECT_STREQ(dtype_name(DType::BFloat16), "bfloat16");
  EXPECT_STREQ(dtype_name(DType::Int8), "int8");
  EXPECT_STREQ(dtype_name(DType::Int16), "int16");
  EXPECT_STREQ(dtype_name(DType::Int32), "int32");
  EXPECT_STREQ(dtype_name(DType::Int64), "int64");
  EXPECT_STREQ(dtype_name(DType::UInt8), "uint8");
  EXPECT_STREQ(dtype_name(DType::Bool), "bool");
  EXPECT_STREQ(dtype_name(DType::Complex64), "complex64");
  EXPECT_STREQ(dtype_name(DType::Complex128), "complex128");
  EXPECT_STREQ(dtype_name(DType::Other), "an unsupported dtype");
}

TEST(DType, Sizes) {
  EXPECT_EQ(dtype_size(DType::Float32), 4);
  EXPECT_EQ(dtype_size(DType::Float64), 8);
  EXPECT_EQ(dtype_size(DType::Float16), 2);
  EXPECT_EQ(dtype_size(DType::BFloat16), 2);
  EXPECT_EQ(dtype_size(DType::Int64), 8);
  EXPECT_EQ(dtype_size(DType::UInt8), 1);
  EXPECT_EQ(dtype_size(DType::Complex64), 8);
  EXPECT_EQ(dtype_size(DType::Complex128), 16);
}

TEST(DType, SupportAndStatistics) {
  EXPECT_TRUE(dtype_supported(DeviceType::CPU, DType::Float32));
  EXPECT_TRUE(dtype_supported(DeviceType::CPU, DType::Float64));
  EXPECT_FALSE(dtype_supported(DeviceType::CPU, DType::Float16));
  EXPECT_FALSE(dtype_supported(DeviceType::CPU, DType::BFloat16));
  EXPECT_FALSE(dtype_supported(DeviceType::CPU, DType::Int64));
  EXPECT_TRUE(dtype_supported(DeviceType::CUDA, DType::Float16));
  EXPECT_TRUE(dtype_supported(DeviceType::CUDA, DType::BFloat16));
  EXPECT_FALSE(dtype_supported(DeviceType::CUDA, DType::Float64));
  EXPECT_FALSE(dtype_supported(DeviceType::Other, DType::Float32));
  EXPECT_EQ(stats_dtype(DType::Float64), DType::Float64);
  EXPECT_EQ(stats_dtype(DType::Float32), DType::Float32);
  EXPECT_EQ(stats_dtype(DType::Float16), DType::Float32);
  EXPECT_EQ(stats_dtype(DType::BFloat16), DType::Float32);
}

TEST(Device, NamesAndEquality) {
  EXPECT_EQ(device_name({DeviceType::CPU, 0}), "cpu");
  EXPECT_EQ(device_name({DeviceType::CUDA, 3}), "cuda:3");
  EXPECT_EQ(device_name({DeviceType::Other, 0}), "an unsupported device");
  EXPECT_EQ((Device{DeviceType::CPU, 0}), (Device{DeviceType::CPU, 5}));  // the CPU has no ordinal
  EXPECT_NE((Device{DeviceType::CUDA, 0}), (Device{DeviceType::CUDA, 1}));
  EXPECT_NE((Device{DeviceType::CPU, 0}), (Device{DeviceType::CUDA, 0}));
}

// ---------------------------------------------------------------------------------- errors

TEST(Error, CheckMacroThrowsTheKindWithTheConcatenatedMessage) {
  EXPECT_NO_THROW(REPLEARN_CHECK(true, Value, "never built"));
  try {
    REPLEARN_CHECK(1 + 1 == 3, Type, "f: argument '", "x", "' expected ", 3, " but got ", 2.5);
    FAIL() << "REPLEARN_CHECK did not throw";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::Type);
    EXPECT_STREQ(e.what(), "f: argument 'x' expected 3 but got 2.5");
  }
}

// Messages are built without iostreams (core/error.h); each kind of part prints as ostream's defaults did.
TEST(Error, ConcatFormatsEveryPartAsOstreamDid) {
  const std::string owned = "owned";
  const char* raw = "raw";
  EXPECT_EQ(detail::concat("lit ", raw, ' ', owned, std::string_view(" view")), "lit raw owned view");
  EXPECT_EQ(detail::concat(int64_t{-7}, " ", 3u, " ", size_t{12}, " ", true, false), "-7 3 12 10");
  EXPECT_EQ(detail::concat(1e-5, " ", 2.5f, " ", -0.0, " ", 123456789.0, " ", 1.0 / 3), "1e-05 2.5 -0 1.23457e+08 0.333333");
  EXPECT_EQ(detail::concat(std::numeric_limits<double>::infinity(), " ", -std::numeric_limits<double>::infinity()),
            "inf -inf");
  const std::string pointer = detail::concat(reinterpret_cast<const void*>(uintptr_t{0x1234}));
  EXPECT_EQ(pointer, "0x1234");
}

TEST(Error, CheckerNamesFunctionAndArgument) {
  Checker check("some_op", DeviceType::CPU);
  float storage[6];
  const TensorView ok = TensorView::contiguous(storage, DType::Float32, test::kCpu, {2, 3});
  EXPECT_NO_THROW(check.floating("x", ok));
  try {
    check.shape("weight", ok, {3, 2});
    FAIL() << "shape check did not throw";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::Value);
    EXPECT_STREQ(e.what(), "some_op: argument 'weight' expected shape (3, 2) but got (2, 3)");
  }
}

TEST(Error, CheckerRefusesNegatedMemory) {
  // torch's negative bit: the memory holds −value, which no kernel reads correctly.
  float storage[6];
  TensorView negated = TensorView::contiguous(storage, DType::Float32, test::kCpu, {2, 3});
  negated.negated = true;
  for (const bool as_buffer : {false, true}) {
    Checker check("some_op", DeviceType::CPU);
    try {
      if (as_buffer)
        check.buffer("stats", negated, DType::Float32, 6);
      else
        check.floating("stats", negated);
      FAIL() << "a negated view passed";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::Value);
      EXPECT_NE(std::string(e.what()).find("some_op: argument 'stats' has torch's negative bit set"), std::string::npos)
          << e.what();
    }
  }
}

// ----------------------------------------------------------------------------- parallel_for

TEST(Parallel, SetNumThreads) {
  {
    ScopedThreads threads(3);
    EXPECT_EQ(num_threads(), 3);
  }
  set_num_threads(0);  // 0 (or less) restores the default, OpenMP's maximum
  EXPECT_EQ(num_threads(), omp_get_max_threads());
  set_num_threads(-4);
  EXPECT_EQ(num_threads(), omp_get_max_threads());
}

TEST(Parallel, ChunkCount) {
  ScopedThreads threads(4);
  EXPECT_EQ(parallel_chunk_count(0, 1), 0);
  EXPECT_EQ(parallel_chunk_count(-3, 1), 0);
  EXPECT_EQ(parallel_chunk_count(1, 1), 1);
  EXPECT_EQ(parallel_chunk_count(3, 1), 3);
  EXPECT_EQ(parallel_chunk_count(100, 1), 4);
  EXPECT_EQ(parallel_chunk_count(100, 30), 3);
  EXPECT_EQ(parallel_chunk_count(100, 1000), 1);
  EXPECT_EQ(parallel_chunk_count(100, 0), 4);  // grain below 1 counts as 1
}

// Runs parallel_for(n, grain, ·, max_chunks) and checks its contract.
void check_parallel_for(int64_t n, int64_t grain, int max_chunks) {
  const int expected_chunks = std::min(parallel_chunk_count(n, grain), max_chunks);
  const int64_t slots = std::max<int64_t>(n, 0);
  std::unique_ptr<std::atomic<int>[]> hits(new std::atomic<int>[slots]);
  for (int64_t i = 0; i < slots; ++i) hits[i] = 0;
  std::vector<int64_t> begins(std::max(expected_chunks, 1), -1), ends(std::max(expected_chunks, 1), -1);
  std::atomic<int> calls{0}, bad_chunk{0};
  parallel_for(
      n, grain,
      [&](int chunk, int64_t begin, int64_t end) {
        ++calls;
        if (chunk < 0 || chunk >= expected_chunks || begins[chunk] != -1 || begin >= end) {
          ++bad_chunk;
          return;
        }
        begins[chunk] = begin;  // each chunk index is owned by one call, so no race
        ends[chunk] = end;
        for (int64_t i = begin; i < end; ++i) ++hits[i];
      },
      max_chunks);
  ASSERT_EQ(bad_chunk, 0) << "a chunk index out of range, repeated, or an empty range";
  ASSERT_EQ(calls, n > 0 ? expected_chunks : 0);
  for (int64_t i = 0; i < slots; ++i) {
    ASSERT_EQ(hits[i], 1) << "index " << i;
  }
  // Chunks are contiguous, in order, and hold at least `grain` items when there is more than one.
  for (int c = 0; n > 0 && c < expected_chunks; ++c) {
    EXPECT_EQ(begins[c], c == 0 ? 0 : ends[c - 1]);
    if (expected_chunks > 1) {
      EXPECT_GE(ends[c] - begins[c], grain);
    }
  }
  if (n > 0) {
    EXPECT_EQ(ends[expected_chunks - 1], n);
  }
}

TEST(Parallel, EveryIndexExactlyOnce) {
  for (int threads : {1, 2, 3, 8}) {
    ScopedThreads scoped(threads);
    for (int64_t n : {-1, 0, 1, 2, 3, 7, 64, 1000, 4097}) {
      for (int64_t grain : {1, 3, 64, 1 << 13}) {
        for (int max_chunks : {1 << 30, 1, 3}) {
          SCOPED_TRACE("threads " + std::to_string(threads) + ", n " + std::to_string(n) + ", grain " +
                       std::to_string(grain) + ", max_chunks " + std::to_string(max_chunks));
          check_parallel_for(n, grain, max_chunks);
          if (HasFatalFailure()) return;
        }
      }
    }
  }
}

TEST(Parallel, EveryIndexExactlyOnceWhenTheRuntimeGrantsFewerThreads) {
  // Inside another parallel region with nesting off, OpenMP gives a team of one thread where
  // parallel_for asks for four: it must still run every chunk.
  ScopedThreads scoped(4);
  const int saved_levels = omp_get_max_active_levels();
  omp_set_max_active_levels(1);
  std::atomic<int> failures{0};
#pragma omp parallel num_threads(2)
  {
    std::vector<int> hits(1000, 0);
    std::vector<int> chunk_calls(4, 0);
    parallel_for(1000, 1, [&](int chunk, int64_t begin, int64_t end) {
      ++chunk_calls[chunk];  // a team of one: no race
      for (int64_t i = begin; i < end; ++i) ++hits[i];
    });
    for (int h : hits)
      if (h != 1) ++failures;
    for (int c : chunk_calls)
      if (c != 1) ++failures;
  }
  omp_set_max_active_levels(saved_levels);
  EXPECT_EQ(failures, 0);
}

}  // namespace
}  // namespace replearn

// vmath's saturating exp and tanh (the recurrent cells' activations): exp within 2 ulp of the C
// library inside [-87, 88] and pinned to its ends outside; tanh and σ = 1/(1 + e^−x) within a few
// float ulp of the double results everywhere; NaN through.
TEST(VMath, SaturatingExpAndTanh) {
  double worst_exp = 0, worst_tanh = 0, worst_sigmoid = 0;
  for (double xd = -120.0; xd <= 120.0; xd += 0.0037) {
    const float x = static_cast<float>(xd);
    const double e = std::exp(static_cast<double>(x));
    const float ours = replearn::vmath::exp_saturating(x);
    if (x >= -87.0f && x <= 88.0f) worst_exp = std::max(worst_exp, std::abs(ours - e) / e);
    else EXPECT_EQ(ours, replearn::vmath::exp_saturating(x < 0 ? -87.0f : 88.0f)) << x;
    worst_tanh = std::max(worst_tanh, std::abs(replearn::vmath::tanh_saturating(x) - std::tanh(static_cast<double>(x))));
    const double sigmoid = 1.0 / (1.0 + std::exp(-static_cast<double>(x)));
    worst_sigmoid = std::max(worst_sigmoid, std::abs(1.0f / (1.0f + replearn::vmath::exp_saturating(-x)) - sigmoid));
  }
  EXPECT_LT(worst_exp, 2.5e-7);
  EXPECT_LT(worst_tanh, 2.5e-7);
  EXPECT_LT(worst_sigmoid, 2.5e-7);
  EXPECT_TRUE(std::isnan(replearn::vmath::exp_saturating(std::nanf(""))));
  EXPECT_TRUE(std::isnan(replearn::vmath::tanh_saturating(std::nanf(""))));
}

// The softmax terms' exp: within 2 ulp of the C library on [−87, 88], exactly 0 below that and for
// −inf, NaN through.
TEST(VMath, NonpositiveExp) {
  double worst = 0;
  for (double xd = -120.0; xd <= 88.0; xd += 0.0037) {
    const float x = static_cast<float>(xd);
    const float ours = replearn::vmath::exp_nonpositive(x);
    if (x < -87.0f) {
      EXPECT_EQ(ours, 0.0f) << x;
      continue;
    }
    const double e = std::exp(static_cast<double>(x));
    worst = std::max(worst, std::abs(ours - e) / e);
  }
  EXPECT_LT(worst, 2.5e-7);
  EXPECT_EQ(replearn::vmath::exp_nonpositive(0.0f), 1.0f);
  EXPECT_EQ(replearn::vmath::exp_nonpositive(-std::numeric_limits<float>::infinity()), 0.0f);
  EXPECT_TRUE(std::isnan(replearn::vmath::exp_nonpositive(std::nanf(""))));
}

#if defined(__AVX512F__)
// The 16-lane exp, σ and tanh: the exp within 2 ulp of the C library inside [-87, 88] (as the scalar
// one, from which it differs by at most an ulp: where the compiler fuses the reduction's last
// multiply-subtract) and pinned to its ends outside; σ within 1.2e−7 and tanh within 2.5e−7 of the
// double results (measured 8.9e−8 and 1.8e−7 at a finer step); NaN through and ±inf handled.
TEST(VMath, SixteenLanes) {
  namespace vm = replearn::vmath;
  auto lanes = [](__m512 v) {
    std::array<float, 16> out;
    _mm512_storeu_ps(out.data(), v);
    return out;
  };
  double worst_exp = 0, worst_sigmoid = 0, worst_tanh = 0;
  for (double start = -120.0; start <= 120.0; start += 16 * 0.0037) {
    std::array<float, 16> x;
    for (int i = 0; i < 16; ++i) x[i] = static_cast<float>(start + i * 0.0037);
    const __m512 v = _mm512_loadu_ps(x.data());
    const auto e = lanes(vm::exp_saturating(v)), s = lanes(vm::sigmoid(v)), t = lanes(vm::tanh_via_sigmoid(v));
    for (int i = 0; i < 16; ++i) {
      const double xd = x[i];
      if (x[i] >= -87.0f && x[i] <= 88.0f)
        worst_exp = std::max(worst_exp, std::abs(e[i] - std::exp(xd)) / std::exp(xd));
      else
        EXPECT_EQ(e[i], vm::exp_saturating(x[i] < 0 ? -87.0f : 88.0f)) << x[i];
      worst_sigmoid = std::max(worst_sigmoid, std::abs(s[i] - 1.0 / (1.0 + std::exp(-xd))));
      worst_tanh = std::max(worst_tanh, std::abs(t[i] - std::tanh(xd)));
    }
  }
  EXPECT_LT(worst_exp, 2.5e-7);
  EXPECT_LT(worst_sigmoid, 1.2e-7);
  EXPECT_LT(worst_tanh, 2.5e-7);
  const float inf = std::numeric_limits<float>::infinity();
  const __m512 special = _mm512_setr_ps(-inf, inf, std::nanf(""), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
  const auto s = lanes(vm::sigmoid(special)), t = lanes(vm::tanh_via_sigmoid(special));
  EXPECT_LT(s[0], 1e-37f);
  EXPECT_EQ(s[1], 1.0f);
  EXPECT_TRUE(std::isnan(s[2]));
  EXPECT_EQ(s[3], 0.5f);
  EXPECT_EQ(t[0], -1.0f);
  EXPECT_EQ(t[1], 1.0f);
  EXPECT_TRUE(std::isnan(t[2]));
  EXPECT_EQ(t[3], 0.0f);
}
#endif

// core/reduce.h lane_sums against a long-double loop: every length from 0 to past three float runs
// (the vector steps, the float-run boundaries and the scalar tail), float and double terms, two sums
// at once. Float terms carry at most kFloatRun float roundings per lane before the double sum, so
// the error is bounded by ~kFloatRun·2⁻²⁴ of the terms' magnitudes; double terms by a few 2⁻⁵³.
template <class T>
void check_lane_sums(double tolerance) {
  std::vector<T> x(3 * replearn::kFloatRun * 2 * replearn::simd::kLanes<T> + 37);
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<T>(std::sin(0.37 * i) * 3 + 0.5);
  for (int64_t n = 0; n <= static_cast<int64_t>(x.size()); ++n) {
    const auto sums = replearn::lane_sums<2, T>(n, [&](int64_t j, auto* t) {
      using V = std::remove_pointer_t<decltype(t)>;
      const V v = replearn::simd::load<V>(x.data() + j);
      t[0] = v;
      t[1] = v * v;
    });
    long double sum = 0, sum_sq = 0, magnitude = 0;
    for (int64_t j = 0; j < n; ++j) {
      sum += x[j];
      sum_sq += static_cast<long double>(x[j]) * x[j];
      magnitude += std::abs(static_cast<long double>(x[j]));
    }
    EXPECT_NEAR(sums[0], static_cast<double>(sum), tolerance * (1 + static_cast<double>(magnitude))) << n;
    EXPECT_NEAR(sums[1], static_cast<double>(sum_sq), tolerance * (1 + static_cast<double>(sum_sq))) << n;
  }
}

TEST(Reduce, LaneSumsMatchALongDoubleLoopAtEveryLength) {
  check_lane_sums<float>(replearn::kFloatRun * 6e-8);
  check_lane_sums<double>(1e-14);
}

TEST(Reduce, LaneSumsDependOnlyOnTheData) {
  // The same span summed twice, and the same values at another address, give bit-identical sums.
  std::vector<float> a(1000), b(1000 + 5);
  for (size_t i = 0; i < a.size(); ++i) a[i] = b[i + 5] = static_cast<float>(std::cos(1.3 * i));
  auto sum = [](const float* p) {
    return replearn::lane_sums<1, float>(1000, [&](int64_t j, auto* t) {
      using V = std::remove_pointer_t<decltype(t)>;
      t[0] = replearn::simd::load<V>(p + j);
    })[0];
  };
  EXPECT_EQ(sum(a.data()), sum(a.data()));
  EXPECT_EQ(sum(a.data()), sum(b.data() + 5));
}

// core/simd.h store_lanes: every element written once with the value asked for, with and without
// streaming stores, from every alignment of the destination, nothing written outside [y, y + n).
TEST(Simd, StoreLanesWritesEveryElementFromAnyAlignment) {
  for (bool stream : {false, true}) {
    for (int offset = 0; offset < 17; ++offset) {
      for (int64_t n : {0, 1, 15, 16, 17, 40, 100}) {
        std::vector<float> out(n + 40, -7.0f);
        float* y = out.data() + offset;
        replearn::simd::store_lanes(y, n, stream, [&](int64_t j, auto* type) {
          using V = std::remove_pointer_t<decltype(type)>;
          if constexpr (std::is_same_v<V, float>) {
            return static_cast<float>(j) * 0.5f;
          } else {
            V v;
            for (int l = 0; l < replearn::simd::kLanes<float>; ++l) v[l] = static_cast<float>(j + l) * 0.5f;
            return v;
          }
        });
        replearn::simd::streaming_fence();
        for (int64_t i = 0; i < static_cast<int64_t>(out.size()); ++i) {
          const bool inside = i >= offset && i < offset + n;
          EXPECT_EQ(out[i], inside ? static_cast<float>(i - offset) * 0.5f : -7.0f)
              << "stream " << stream << " offset " << offset << " n " << n << " i " << i;
        }
      }
    }
  }
}
