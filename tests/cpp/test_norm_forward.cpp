// Forward kernels of the normalization family against naive double-precision references written
// here from the math (norm.h), in float64 and float32, over odd shapes (a single row, a single
// column, 1000+ columns, spatial size 1), with and without the affine parameters, and with a
// thread count that splits the work into several chunks.
//
// The references read the inputs back from the buffers, so a float32 test compares against the
// exact math on the float32-rounded inputs: what remains is the kernel's own rounding.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/memory.h"
#include "norm/norm.h"
#include "test_helpers.h"

namespace replearn::norm {
namespace {

using test::AllClose;
using test::Buffer;
using test::forward_tolerance;
using test::Random;
using test::random_buffer;
using test::ScopedThreads;
using test::threads_for;
using test::sentinel_buffer;
using test::product;
using test::shape_name;
using test::Tolerance;
using Values = std::vector<double>;
constexpr auto CPU = DeviceType::CPU;

// Affine parameters of a test: none, weight only, bias only, or both.
struct Affine {
  bool weight, bias;
  std::string name() const { return std::string(weight ? "weight" : "no weight") + (bias ? ", bias" : ", no bias"); }
};
constexpr Affine kAffines[] = {{false, false}, {true, false}, {false, true}, {true, true}};

std::optional<Buffer> maybe_random(bool present, Random& rng, DType dtype, std::vector<int64_t> sizes, double low,
                                   double high) {
  if (!present) return std::nullopt;
  return random_buffer(rng, dtype, std::move(sizes), low, high);
}
OptView view_of(const std::optional<Buffer>& b) { return b ? b->opt() : std::nullopt; }
double value_or(const std::optional<Buffer>& b, int64_t i, double fallback) { return b ? b->get(i) : fallback; }

class NormForward : public ::testing::TestWithParam<DType> {};

// ------------------------------------------------------------------------------------ layer norm

struct RowReference {
  Values y, mean, rstd;
};

// y = (x − μ)/√(σ² + ε)·γ + β per row of x viewed as (rows, cols); σ² the biased variance.
RowReference layer_norm_reference(const Buffer& x, int64_t rows, int64_t cols, const std::optional<Buffer>& weight,
                                  const std::optional<Buffer>& bias, double eps) {
  RowReference out{Values(rows * cols), Values(rows), Values(rows)};
  for (int64_t r = 0; r < rows; ++r) {
    double sum = 0;
    for (int64_t j = 0; j < cols; ++j) sum += x.get(r * cols + j);
    const double mean = sum / cols;
    double sq = 0;
    for (int64_t j = 0; j < cols; ++j) sq += (x.get(r * cols + j) - mean) * (x.get(r * cols + j) - mean);
    const double rstd = 1 / std::sqrt(sq / cols + eps);
    out.mean[r] = mean;
    out.rstd[r] = rstd;
    for (int64_t j = 0; j < cols; ++j)
      out.y[r * cols + j] = (x.get(r * cols + j) - mean) * rstd * value_or(weight, j, 1) + value_or(bias, j, 0);
  }
  return out;
}

TEST_P(NormForward, LayerNorm) {
  const DType dtype = GetParam();
  const Tolerance tol = forward_tolerance(dtype);
  Random rng(1);
  struct Shape {
    std::vector<int64_t> sizes;
    int normalized_ndim;
  };
  const std::vector<Shape> shapes = {{{1, 1}, 1},    {{1, 3}, 1},   {{7, 1}, 1},    {{7, 3}, 1},
                                     {{1, 1031}, 1}, {{7, 1031}, 1}, {{64, 1031}, 1}, {{5}, 1},
                                     {{2, 7, 3, 5}, 2}, {{3, 4, 5}, 3}};
  for (const Shape& shape : shapes) {
    for (const Affine affine : kAffines) {
      SCOPED_TRACE(shape_name(shape.sizes) + " normalized_ndim " + std::to_string(shape.normalized_ndim) + ", " +
                   affine.name());
      const size_t first = shape.sizes.size() - shape.normalized_ndim;
      ScopedThreads threads(threads_for(product(shape.sizes, 0, shape.sizes.size())));
      const int64_t rows = product(shape.sizes, 0, first), cols = product(shape.sizes, first, shape.sizes.size());
      const std::vector<int64_t> param_sizes(shape.sizes.begin() + first, shape.sizes.end());
      const Buffer x = random_buffer(rng, dtype, shape.sizes, -2, 3);
      const auto weight = maybe_random(affine.weight, rng, dtype, param_sizes, 0.5, 1.5);
      const auto bias = maybe_random(affine.bias, rng, dtype, param_sizes, -1, 1);
      Buffer y = sentinel_buffer(dtype, shape.sizes), mean = sentinel_buffer(dtype, {rows}),
             rstd = sentinel_buffer(dtype, {rows});
      layer_norm_forward<CPU>(x.view(), shape.normalized_ndim, view_of(weight), view_of(bias), 1e-5, y.view(),
                              mean.view(), rstd.view());
      const RowReference ref = layer_norm_reference(x, rows, cols, weight, bias, 1e-5);
      EXPECT_TRUE(AllClose(y.values(), ref.y, tol)) << "y";
      EXPECT_TRUE(AllClose(mean.values(), ref.mean, tol)) << "mean";
      EXPECT_TRUE(AllClose(rstd.values(), ref.rstd, tol)) << "rstd";
    }
  }
}

// ------------------------------------------------------------------------------------- rms norm

// y = x/√(mean(x²) + ε)·γ per row.
RowReference rms_norm_reference(const Buffer& x, int64_t rows, int64_t cols, const std::optional<Buffer>& weight,
                                double eps) {
  RowReference out{Values(rows * cols), {}, Values(rows)};
  for (int64_t r = 0; r < rows; ++r) {
    double sq = 0;
    for (int64_t j = 0; j < cols; ++j) sq += x.get(r * cols + j) * x.get(r * cols + j);
    const double rstd = 1 / std::sqrt(sq / cols + eps);
    out.rstd[r] = rstd;
    for (int64_t j = 0; j < cols; ++j) out.y[r * cols + j] = x.get(r * cols + j) * rstd * value_or(weight, j, 1);
  }
  return out;
}

TEST_P(NormForward, RmsNorm) {
  const DType dtype = GetParam();
  const Tolerance tol = forward_tolerance(dtype);
  Random rng(2);
  struct Shape {
    std::vector<int64_t> sizes;
    int normalized_ndim;
  };
  const std::vector<Shape> shapes = {{{1, 1}, 1},     {{1, 3}, 1},      {{7, 1}, 1},     {{7, 3}, 1},
                                     {{1, 1031}, 1},  {{64, 1031}, 1},  {{5}, 1},         {{2, 7, 3, 5}, 2}};
  for (const Shape& shape : shapes) {
    for (const bool with_weight : {false, true}) {
      SCOPED_TRACE(shape_name(shape.sizes) + " normalized_ndim " + std::to_string(shape.normalized_ndim) +
                   (with_weight ? ", weight" : ", no weight"));
      const size_t first = shape.sizes.size() - shape.normalized_ndim;
      ScopedThreads threads(threads_for(product(shape.sizes, 0, shape.sizes.size())));
      const int64_t rows = product(shape.sizes, 0, first), cols = product(shape.sizes, first, shape.sizes.size());
      const std::vector<int64_t> param_sizes(shape.sizes.begin() + first, shape.sizes.end());
      const Buffer x = random_buffer(rng, dtype, shape.sizes, -2, 3);
      const auto weight = maybe_random(with_weight, rng, dtype, param_sizes, 0.5, 1.5);
      Buffer y = sentinel_buffer(dtype, shape.sizes), rstd = sentinel_buffer(dtype, {rows});
      rms_norm_forward<CPU>(x.view(), shape.normalized_ndim, view_of(weight), 1e-5, y.view(), rstd.view());
      const RowReference ref = rms_norm_reference(x, rows, cols, weight, 1e-5);
      EXPECT_TRUE(AllClose(y.values(), ref.y, tol)) << "y";
      EXPECT_TRUE(AllClose(rstd.values(), ref.rstd, tol)) << "rstd";
    }
  }
}

// ----------------------------------------------------------------------------------- batch norm

struct ChannelReference {
  Values y, save_mean, save_rstd, running_mean, running_var;
};

// x (N, C, S). Training: per-channel batch statistics, running r = (1 − m)·r + m·s with the
// unbiased variance; evaluation: the running averages normalize and are saved.
ChannelReference batch_norm_reference(const Buffer& x, int64_t N, int64_t C, int64_t S,
                                      const std::optional<Buffer>& weight, const std::optional<Buffer>& bias,
                                      const std::optional<Buffer>& running_mean,
                                      const std::optional<Buffer>& running_var, bool training, double momentum,
                                      double eps) {
  ChannelReference out{Values(N * C * S), Values(C), Values(C), {}, {}};
  if (running_mean) {
    out.running_mean = running_mean->values();
    out.running_var = running_var->values();
  }
  const double count = static_cast<double>(N * S);
  for (int64_t c = 0; c < C; ++c) {
    double mean, rstd;
    if (training) {
      double sum = 0;
      for (int64_t n = 0; n < N; ++n)
        for (int64_t s = 0; s < S; ++s) sum += x.get((n * C + c) * S + s);
      mean = sum / count;
      double sq = 0;
      for (int64_t n = 0; n < N; ++n)
        for (int64_t s = 0; s < S; ++s) sq += std::pow(x.get((n * C + c) * S + s) - mean, 2);
      const double var = sq / count;
      rstd = 1 / std::sqrt(var + eps);
      if (running_mean) {
        out.running_mean[c] = (1 - momentum) * out.running_mean[c] + momentum * mean;
        out.running_var[c] = (1 - momentum) * out.running_var[c] + momentum * sq / (count - 1);
      }
    } else {
      mean = running_mean->get(c);
      rstd = 1 / std::sqrt(running_var->get(c) + eps);
    }
    out.save_mean[c] = mean;
    out.save_rstd[c] = rstd;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t s = 0; s < S; ++s) {
        const int64_t i = (n * C + c) * S + s;
        out.y[i] = (x.get(i) - mean) * rstd * value_or(weight, c, 1) + value_or(bias, c, 0);
      }
  }
  return out;
}

TEST_P(NormForward, BatchNorm) {
  const DType dtype = GetParam();
  const Tolerance tol = forward_tolerance(dtype);
  Random rng(3);
  // {0, 3, 5} and {2, 3, 0}: empty inputs, which evaluation takes (torch returns an empty y).
  const std::vector<std::vector<int64_t>> shapes = {{2, 1},      {2, 3},       {1, 3, 2}, {7, 3, 5},    {1, 4, 1031},
                                                    {3, 2, 2, 3}, {7, 1, 1},    {2, 5, 1, 3}, {3, 9, 5}, {4, 19, 67},
                                                    {0, 3, 5},    {2, 3, 0}};
  for (const auto& sizes : shapes) {
    const int64_t N = sizes[0], C = sizes[1], S = product(sizes, 2, sizes.size());
    ScopedThreads threads(threads_for(N * C * S));
    for (const bool training : {true, false}) {
      for (const bool with_running : {true, false}) {
        if (!training && !with_running) continue;  // evaluation needs running averages
        if (training && N * S < 2) continue;       // training needs two values per channel (validation)
        for (const Affine affine : kAffines) {
          for (const double momentum : {0.1, 0.0, 1.0}) {
            if (momentum != 0.1 && !(training && with_running)) continue;  // momentum is unused
            SCOPED_TRACE(shape_name(sizes) + (training ? " training" : " evaluation") +
                         (with_running ? ", running stats, " : ", no running stats, ") + affine.name() +
                         ", momentum " + std::to_string(momentum));
            const Buffer x = random_buffer(rng, dtype, sizes, -2, 3);
            const auto weight = maybe_random(affine.weight, rng, dtype, {C}, 0.5, 1.5);
            const auto bias = maybe_random(affine.bias, rng, dtype, {C}, -1, 1);
            auto running_mean = maybe_random(with_running, rng, dtype, {C}, -1, 1);
            auto running_var = maybe_random(with_running, rng, dtype, {C}, 0.5, 2);
            const ChannelReference ref = batch_norm_reference(x, N, C, S, weight, bias, running_mean, running_var,
                                                              training, momentum, 1e-5);
            // The same call without saved statistics (a call that records no graph), on copies.
            auto unsaved_mean = running_mean, unsaved_var = running_var;
            Buffer unsaved_y = sentinel_buffer(dtype, sizes);
            if (running_mean) {
              running_mean->snapshot();
              running_var->snapshot();
            }
            Buffer y = sentinel_buffer(dtype, sizes), save_mean = sentinel_buffer(dtype, {C}),
                   save_rstd = sentinel_buffer(dtype, {C});
            TensorView x_view = x.view(), y_view = y.view(), unsaved_y_view = unsaved_y.view();
            if (N * S == 0) x_view.data = y_view.data = unsaved_y_view.data = nullptr;  // as torch hands over an empty tensor
            batch_norm_forward<CPU>(x_view, view_of(weight), view_of(bias), view_of(running_mean),
                                    view_of(running_var), training, momentum, 1e-5, y_view, save_mean.view(),
                                    save_rstd.view());
            batch_norm_forward<CPU>(x_view, view_of(weight), view_of(bias), view_of(unsaved_mean),
                                    view_of(unsaved_var), training, momentum, 1e-5, unsaved_y_view, std::nullopt,
                                    std::nullopt);
            EXPECT_EQ(unsaved_y.values(), y.values()) << "y without saved statistics";
            if (running_mean) {
              EXPECT_EQ(unsaved_mean->values(), running_mean->values()) << "running_mean without saved statistics";
              EXPECT_EQ(unsaved_var->values(), running_var->values()) << "running_var without saved statistics";
            }
            EXPECT_TRUE(AllClose(y.values(), ref.y, tol)) << "y";
            EXPECT_TRUE(AllClose(save_mean.values(), ref.save_mean, tol)) << "save_mean";
            EXPECT_TRUE(AllClose(save_rstd.values(), ref.save_rstd, tol)) << "save_rstd";
            if (running_mean && training) {
              EXPECT_TRUE(AllClose(running_mean->values(), ref.running_mean, tol)) << "running_mean";
              EXPECT_TRUE(AllClose(running_var->values(), ref.running_var, tol)) << "running_var";
            } else if (running_mean) {
              EXPECT_TRUE(running_mean->unchanged_since_snapshot()) << "evaluation must not update running_mean";
              EXPECT_TRUE(running_var->unchanged_since_snapshot()) << "evaluation must not update running_var";
            }
          }
        }
      }
    }
  }
}

// Outputs at least the last-level cache's size take the streaming path; with runs of S values that
// start 64-byte aligned (S = 256 float32) the forward also fuses block q + 1's statistics into block
// q's output pass (csrc/norm/cpu.cpp). 30 channels on 2 threads: 15 each, the last block partial.
TEST(NormForwardBeyondTheCache, BatchNormTraining) {
  const int64_t C = 30;
  for (const int64_t S : {256, 49}) {  // fused; streamed but not fused
    SCOPED_TRACE("S = " + std::to_string(S));
    const int64_t N = last_level_cache_bytes() / static_cast<int64_t>(sizeof(float)) / (C * S) + 1;
    const std::vector<int64_t> sizes = {N, C, S};
    ScopedThreads threads(2);
    Random rng(11);
    const Buffer x = random_buffer(rng, DType::Float32, sizes, -2, 3);
    const Buffer weight = random_buffer(rng, DType::Float32, {C}, 0.5, 1.5);
    const Buffer bias = random_buffer(rng, DType::Float32, {C}, -1, 1);
    std::optional<Buffer> running_mean = random_buffer(rng, DType::Float32, {C}, -1, 1);
    std::optional<Buffer> running_var = random_buffer(rng, DType::Float32, {C}, 0.5, 2);
    const ChannelReference ref =
        batch_norm_reference(x, N, C, S, weight, bias, running_mean, running_var, true, 0.1, 1e-5);
    // y 64-byte aligned (test Buffers are not: their guard bytes sit in front), NaN-filled.
    const int64_t count = N * C * S;
    std::unique_ptr<float, decltype(&std::free)> y_data(
        static_cast<float*>(std::aligned_alloc(64, (count * sizeof(float) + 63) / 64 * 64)), &std::free);
    ASSERT_NE(y_data, nullptr);
    std::fill(y_data.get(), y_data.get() + count, std::nanf(""));
    TensorView y = x.view();
    y.data = y_data.get();
    Buffer save_mean = sentinel_buffer(DType::Float32, {C}), save_rstd = sentinel_buffer(DType::Float32, {C});
    batch_norm_forward<CPU>(x.view(), weight.view(), bias.view(), running_mean->view(), running_var->view(), true,
                            0.1, 1e-5, y, save_mean.view(), save_rstd.view());
    const Tolerance tol = forward_tolerance(DType::Float32);
    EXPECT_TRUE(AllClose(Values(y_data.get(), y_data.get() + count), ref.y, tol)) << "y";
    EXPECT_TRUE(AllClose(save_mean.values(), ref.save_mean, tol)) << "save_mean";
    EXPECT_TRUE(AllClose(save_rstd.values(), ref.save_rstd, tol)) << "save_rstd";
    EXPECT_TRUE(AllClose(running_mean->values(), ref.running_mean, tol)) << "running_mean";
    EXPECT_TRUE(AllClose(running_var->values(), ref.running_var, tol)) << "running_var";
  }
}

// ----------------------------------------------------------------------------------- group norm

// x (N, C, S); statistics per (sample, group of C/G consecutive channels); γ, β per channel.
ChannelReference group_norm_reference(const Buffer& x, int64_t N, int64_t C, int64_t S, int64_t G,
                                      const std::optional<Buffer>& weight, const std::optional<Buffer>& bias,
                                      double eps) {
  const int64_t Cg = C / G, slab = Cg * S;
  ChannelReference out{Values(N * C * S), Values(N * G), Values(N * G), {}, {}};
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t g = 0; g < G; ++g) {
      const int64_t first = (n * C + g * Cg) * S;  // a (sample, group) is a contiguous slab
      double sum = 0;
      for (int64_t i = 0; i < slab; ++i) sum += x.get(first + i);
      const double mean = sum / slab;
      double sq = 0;
      for (int64_t i = 0; i < slab; ++i) sq += std::pow(x.get(first + i) - mean, 2);
      const double rstd = 1 / std::sqrt(sq / slab + eps);
      out.save_mean[n * G + g] = mean;
      out.save_rstd[n * G + g] = rstd;
      for (int64_t i = 0; i < slab; ++i) {
        const int64_t c = g * Cg + i / S;
        out.y[first + i] = (x.get(first + i) - mean) * rstd * value_or(weight, c, 1) + value_or(bias, c, 0);
      }
    }
  }
  return out;
}

TEST_P(NormForward, GroupNorm) {
  const DType dtype = GetParam();
  const Tolerance tol = forward_tolerance(dtype);
  Random rng(4);
  struct Shape {
    std::vector<int64_t> sizes;
    std::vector<int64_t> groups;
  };
  const std::vector<Shape> shapes = {{{2, 6, 5}, {1, 2, 3, 6}}, {{1, 4}, {1, 2}},  {{7, 3, 1}, {1, 3}},
                                     {{1, 1, 7}, {1}},          {{3, 8, 1031}, {4}}, {{2, 4, 3, 3}, {2}},
                                     {{64, 6, 7}, {3}}};
  for (const Shape& shape : shapes) {
    const int64_t N = shape.sizes[0], C = shape.sizes[1], S = product(shape.sizes, 2, shape.sizes.size());
    ScopedThreads threads(threads_for(N * C * S));
    for (const int64_t G : shape.groups) {
      for (const Affine affine : kAffines) {
        SCOPED_TRACE(shape_name(shape.sizes) + " groups " + std::to_string(G) + ", " + affine.name());
        const Buffer x = random_buffer(rng, dtype, shape.sizes, -2, 3);
        const auto weight = maybe_random(affine.weight, rng, dtype, {C}, 0.5, 1.5);
        const auto bias = maybe_random(affine.bias, rng, dtype, {C}, -1, 1);
        Buffer y = sentinel_buffer(dtype, shape.sizes), mean = sentinel_buffer(dtype, {N * G}),
               rstd = sentinel_buffer(dtype, {N * G});
        group_norm_forward<CPU>(x.view(), G, view_of(weight), view_of(bias), 1e-5, y.view(), mean.view(),
                                rstd.view());
        const ChannelReference ref = group_norm_reference(x, N, C, S, G, weight, bias, 1e-5);
        EXPECT_TRUE(AllClose(y.values(), ref.y, tol)) << "y";
        EXPECT_TRUE(AllClose(mean.values(), ref.save_mean, tol)) << "mean";
        EXPECT_TRUE(AllClose(rstd.values(), ref.save_rstd, tol)) << "rstd";
      }
    }
  }
}

// ------------------------------------------------------------------------- running stats update

TEST_P(NormForward, RunningStatsUpdate) {
  const DType dtype = GetParam();
  const Tolerance tol = forward_tolerance(dtype);
  Random rng(5);
  const double eps = 1e-5;
  struct Geometry {
    int64_t batch, channels, spatial;
  };
  for (const Geometry geometry : {Geometry{1, 1, 2}, Geometry{7, 3, 5}, Geometry{2, 5, 1031}, Geometry{1, 4, 3}}) {
    for (const double momentum : {0.1, 0.0, 1.0}) {
      SCOPED_TRACE("batch " + std::to_string(geometry.batch) + ", channels " + std::to_string(geometry.channels) +
                   ", spatial " + std::to_string(geometry.spatial) + ", momentum " + std::to_string(momentum));
      const int64_t N = geometry.batch, C = geometry.channels;
      const double S = static_cast<double>(geometry.spatial);
      const Buffer mean = random_buffer(rng, dtype, {N * C}, -1, 1);
      const Buffer rstd = random_buffer(rng, dtype, {N * C}, 0.5, 2);
      Buffer running_mean = random_buffer(rng, dtype, {C}, -1, 1);
      Buffer running_var = random_buffer(rng, dtype, {C}, 0.5, 2);
      // r_mean = (1 − m)·r_mean + m·avg_n(mean); r_var likewise with var = 1/rstd² − ε made unbiased.
      Values expected_mean(C), expected_var(C);
      for (int64_t c = 0; c < C; ++c) {
        double sum_mean = 0, sum_var = 0;
        for (int64_t n = 0; n < N; ++n) {
          sum_mean += mean.get(n * C + c);
          sum_var += (1 / std::pow(rstd.get(n * C + c), 2) - eps) * S / (S - 1);
        }
        expected_mean[c] = (1 - momentum) * running_mean.get(c) + momentum * sum_mean / N;
        expected_var[c] = (1 - momentum) * running_var.get(c) + momentum * sum_var / N;
      }
      running_stats_update<CPU>(mean.view(), rstd.view(), N, C, geometry.spatial, momentum, eps, running_mean.view(),
                                running_var.view());
      EXPECT_TRUE(AllClose(running_mean.values(), expected_mean, tol)) << "running_mean";
      EXPECT_TRUE(AllClose(running_var.values(), expected_var, tol)) << "running_var";
    }
  }
}

// Instance norm end to end: group_norm with one group per channel, then running_stats_update, gives
// the average over samples of each (sample, channel)'s mean and unbiased variance.
TEST(NormForwardFloat64, InstanceNormRunningStatsFromGroupNorm) {
  Random rng(6);
  const int64_t N = 3, C = 4, S = 10;
  const double eps = 1e-5, momentum = 0.25;
  const Buffer x = random_buffer(rng, DType::Float64, {N, C, S}, -2, 3);
  Buffer y(DType::Float64, {N, C, S}), mean(DType::Float64, {N * C}), rstd(DType::Float64, {N * C});
  group_norm_forward<CPU>(x.view(), C, std::nullopt, std::nullopt, eps, y.view(), mean.view(), rstd.view());
  Buffer running_mean(DType::Float64, {C}), running_var(DType::Float64, {C});
  running_mean.fill(0);
  running_var.fill(1);
  running_stats_update<CPU>(mean.view(), rstd.view(), N, C, S, momentum, eps, running_mean.view(),
                            running_var.view());
  Values expected_mean(C), expected_var(C);
  for (int64_t c = 0; c < C; ++c) {
    double sum_mean = 0, sum_var = 0;
    for (int64_t n = 0; n < N; ++n) {
      double s = 0, sq = 0;
      for (int64_t i = 0; i < S; ++i) s += x.get((n * C + c) * S + i);
      for (int64_t i = 0; i < S; ++i) sq += std::pow(x.get((n * C + c) * S + i) - s / S, 2);
      sum_mean += s / S;
      sum_var += sq / (S - 1);
    }
    expected_mean[c] = momentum * sum_mean / N;
    expected_var[c] = (1 - momentum) + momentum * sum_var / N;
  }
  EXPECT_TRUE(AllClose(running_mean.values(), expected_mean, {1e-12, 1e-12}));
  EXPECT_TRUE(AllClose(running_var.values(), expected_var, {1e-12, 1e-12}));
}

// ---------------------------------------------------------------------------------- weight norm

struct WeightNormReference {
  Values w, norm;
};

// w = g·v/‖v‖ with ‖·‖ over every dim but `dim` (over all of v for dim = -1).
WeightNormReference weight_norm_reference(const Buffer& v, const Buffer& g, int dim) {
  const std::vector<int64_t>& sizes = v.sizes();
  const int64_t outer = dim == -1 ? 1 : product(sizes, 0, dim);
  const int64_t slices = dim == -1 ? 1 : sizes[dim];
  const int64_t inner = dim == -1 ? v.numel() : product(sizes, dim + 1, sizes.size());
  WeightNormReference out{Values(v.numel()), Values(slices, 0.0)};
  auto index = [&](int64_t o, int64_t k, int64_t i) { return (o * slices + k) * inner + i; };
  for (int64_t k = 0; k < slices; ++k) {
    double sq = 0;
    for (int64_t o = 0; o < outer; ++o)
      for (int64_t i = 0; i < inner; ++i) sq += std::pow(v.get(index(o, k, i)), 2);
    out.norm[k] = std::sqrt(sq);
    for (int64_t o = 0; o < outer; ++o)
      for (int64_t i = 0; i < inner; ++i) out.w[index(o, k, i)] = g.get(k) * v.get(index(o, k, i)) / out.norm[k];
  }
  return out;
}

TEST_P(NormForward, WeightNorm) {
  const DType dtype = GetParam();
  const Tolerance tol = forward_tolerance(dtype);
  Random rng(7);
  struct Shape {
    std::vector<int64_t> sizes;
    std::vector<int> dims;
  };
  const std::vector<Shape> shapes = {{{4, 3, 5}, {0, 1, 2, -1}}, {{7}, {0, -1}},       {{1}, {0, -1}},
                                     {{1031, 3}, {0, 1, -1}},     {{3, 1, 7}, {0, 1, 2}}, {{2, 3, 4, 5}, {1, 2}},
                                     {{64, 300}, {0, 1}}};
  for (const Shape& shape : shapes) {
    ScopedThreads threads(threads_for(product(shape.sizes, 0, shape.sizes.size())));
    for (const int dim : shape.dims) {
      SCOPED_TRACE(shape_name(shape.sizes) + " dim " + std::to_string(dim));
      const int64_t slices = dim == -1 ? 1 : shape.sizes[dim];
      const Buffer v = random_buffer(rng, dtype, shape.sizes, -2, 2);
      const Buffer g = random_buffer(rng, dtype, {slices}, 0.5, 2);
      Buffer w = sentinel_buffer(dtype, shape.sizes), norm = sentinel_buffer(dtype, {slices});
      weight_norm_forward<CPU>(v.view(), g.view(), dim, w.view(), norm.view());
      Buffer unsaved_w = sentinel_buffer(dtype, shape.sizes);  // without the norms backward reads
      weight_norm_forward<CPU>(v.view(), g.view(), dim, unsaved_w.view(), std::nullopt);
      EXPECT_EQ(unsaved_w.values(), w.values()) << "w without norms";
      const WeightNormReference ref = weight_norm_reference(v, g, dim);
      EXPECT_TRUE(AllClose(w.values(), ref.w, tol)) << "w";
      EXPECT_TRUE(AllClose(norm.values(), ref.norm, tol)) << "norm";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, NormForward, ::testing::Values(DType::Float64, DType::Float32), test::DTypeName());

// ------------------------------------------------------------------------ statistics far from 0

// Inputs with |mean| ≫ std: the one-pass shifted sums (batch and group norm) and the two-pass row
// statistics must keep the variance to full precision, where E[x²] − E[x]² would lose ~8 digits.
// y keeps ~1e-12 of the mean's rounding (1e4·ε) amplified by rstd, hence its looser bound.
TEST(NormForwardFloat64, StatisticsOfDataFarFromZero) {
  Random rng(8);
  const double offset = 1e4;
  const Tolerance stats_tol{1e-12, 0}, y_tol{0, 1e-10};
  {
    SCOPED_TRACE("layer_norm");
    const Buffer x = random_buffer(rng, DType::Float64, {5, 333}, offset - 1, offset + 1);
    Buffer y(DType::Float64, {5, 333}), mean(DType::Float64, {5}), rstd(DType::Float64, {5});
    layer_norm_forward<CPU>(x.view(), 1, std::nullopt, std::nullopt, 0.0, y.view(), mean.view(), rstd.view());
    const RowReference ref = layer_norm_reference(x, 5, 333, std::nullopt, std::nullopt, 0.0);
    EXPECT_TRUE(AllClose(rstd.values(), ref.rstd, stats_tol));
    EXPECT_TRUE(AllClose(mean.values(), ref.mean, stats_tol));
    EXPECT_TRUE(AllClose(y.values(), ref.y, y_tol));
  }
  {
    SCOPED_TRACE("batch_norm");
    const Buffer x = random_buffer(rng, DType::Float64, {6, 3, 111}, offset - 1, offset + 1);
    Buffer y(DType::Float64, {6, 3, 111}), mean(DType::Float64, {3}), rstd(DType::Float64, {3});
    batch_norm_forward<CPU>(x.view(), std::nullopt, std::nullopt, std::nullopt, std::nullopt, true, 0.1, 0.0,
                            y.view(), mean.view(), rstd.view());
    const ChannelReference ref = batch_norm_reference(x, 6, 3, 111, std::nullopt, std::nullopt, std::nullopt,
                                                      std::nullopt, true, 0.1, 0.0);
    EXPECT_TRUE(AllClose(rstd.values(), ref.save_rstd, stats_tol));
    EXPECT_TRUE(AllClose(mean.values(), ref.save_mean, stats_tol));
    EXPECT_TRUE(AllClose(y.values(), ref.y, y_tol));
  }
  {
    SCOPED_TRACE("group_norm");
    const Buffer x = random_buffer(rng, DType::Float64, {4, 6, 111}, offset - 1, offset + 1);
    Buffer y(DType::Float64, {4, 6, 111}), mean(DType::Float64, {8}), rstd(DType::Float64, {8});
    group_norm_forward<CPU>(x.view(), 2, std::nullopt, std::nullopt, 0.0, y.view(), mean.view(), rstd.view());
    const ChannelReference ref = group_norm_reference(x, 4, 6, 111, 2, std::nullopt, std::nullopt, 0.0);
    EXPECT_TRUE(AllClose(rstd.values(), ref.save_rstd, stats_tol));
    EXPECT_TRUE(AllClose(mean.values(), ref.save_mean, stats_tol));
    EXPECT_TRUE(AllClose(y.values(), ref.y, y_tol));
  }
}

// The kernels split work by thread count; the results must not depend on it beyond rounding.
TEST(NormForwardFloat64, ThreadCountDoesNotChangeResults) {
  Random rng(9);
  const Buffer x = random_buffer(rng, DType::Float64, {64, 1031}, -2, 3);
  const Buffer weight = random_buffer(rng, DType::Float64, {1031}, 0.5, 1.5);
  Values first;
  for (const int threads : {1, 2, 3}) {
    ScopedThreads scoped(threads);
    Buffer y(DType::Float64, {64, 1031}), mean(DType::Float64, {64}), rstd(DType::Float64, {64});
    layer_norm_forward<CPU>(x.view(), 1, weight.opt(), std::nullopt, 1e-5, y.view(), mean.view(), rstd.view());
    if (first.empty())
      first = y.values();
    else
      EXPECT_TRUE(AllClose(y.values(), first, {0, 0})) << threads << " threads";  // rows are independent
  }
}

}  // namespace
}  // namespace replearn::norm
