// Pooling family (csrc/pool) on the CPU: forward kernels against naive double-precision loops written
// here from the definitions (pool.h), backward kernels against finite differences and against the
// adjoint of the naive forward, output sizes against values torch returns, and validation.
//
// The naive references phrase each rule differently from the kernels: a max window is the list of its
// taps in row-major order (the max is NaN if any tap is, at the last NaN's position, else the first tap
// equal to the max); average divisors count kernel positions inside the padded input; adaptive windows
// use integer division directly.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "core/error.h"
#include "pool/pool.h"
#include "test_helpers.h"

namespace replearn::pool {
namespace {

using test::AllClose;
using test::Buffer;
using test::forward_tolerance;
using test::Random;
using test::random_buffer;
using test::ScopedThreads;
using test::sentinel_buffer;
using test::shape_name;
using test::threads_for;
using Values = std::vector<double>;
constexpr auto CPU = DeviceType::CPU;

// A strided pooling geometry; 1-D when kernel has one value.
struct Strided {
  std::vector<int64_t> shape;
  Ints kernel, stride, padding, dilation;
  bool ceil_mode;
  std::vector<int64_t> out_spatial;  // the output's spatial sizes, as torch computes them

  int spatial() const { return static_cast<int>(kernel.size()); }
  std::vector<int64_t> out_shape() const {
    std::vector<int64_t> s(shape.begin(), shape.end() - spatial());
    s.insert(s.end(), out_spatial.begin(), out_spatial.end());
    return s;
  }
  // (planes, H, W, OH, OW) with H = OH = 1 in 1-D, and per-axis parameters indexed 0 = H, 1 = W.
  int64_t planes() const { return test::product(shape, 0, shape.size() - spatial()); }
  int64_t in(int axis) const { return spatial() == 2 || axis == 1 ? shape[shape.size() - (2 - axis)] : 1; }
  int64_t out(int axis) const { return spatial() == 2 ? out_spatial[axis] : axis == 1 ? out_spatial[0] : 1; }
  int64_t param(const Ints& v, int axis, int64_t identity) const {
    return spatial() == 2 ? v[axis] : axis == 1 ? v[0] : identity;
  }
  std::string name() const {
    return shape_name(shape) + " k" + shape_name(kernel) + " s" + shape_name(stride) + " p" + shape_name(padding) +
           " d" + shape_name(dilation) + (ceil_mode ? " ceil" : "");
  }
};

// Output sizes from torch 2.13 (torch.nn.functional.max_pool{1,2}d(...).shape) for these geometries.
const std::vector<Strided> kGeometries = {
    {{2, 3, 9, 11}, {3, 3}, {2, 2}, {1, 1}, {1, 1}, false, {5, 6}},
    {{1, 2, 10, 10}, {3, 3}, {2, 2}, {0, 0}, {1, 1}, true, {5, 5}},    // ceil_mode adds a window
    {{1, 1, 5, 5}, {2, 2}, {2, 2}, {1, 1}, {1, 1}, true, {3, 3}},      // ... unless it starts in the right padding
    {{1, 4, 10, 13}, {3, 2}, {2, 3}, {1, 0}, {2, 1}, true, {5, 5}},
    {{3, 7, 5}, {3, 2}, {2, 1}, {1, 1}, {1, 1}, true, {4, 6}},         // unbatched
    {{2, 3, 13}, {3}, {2}, {1}, {1}, false, {7}},                      // 1-D
    {{1, 1, 11}, {3}, {2}, {1}, {2}, true, {5}},
    {{1, 1, 1, 1}, {1, 1}, {1, 1}, {0, 0}, {1, 1}, false, {1, 1}},
    {{2, 2, 64, 67}, {3, 3}, {2, 2}, {1, 1}, {1, 1}, false, {32, 34}},  // several chunks
};

// ------------------------------------------------------------------------------ naive references

struct MaxReference {
  Values y, indices;
};

MaxReference max_reference(const Strided& g, const Buffer& x) {
  MaxReference r;
  const int64_t H = g.in(0), W = g.in(1), OH = g.out(0), OW = g.out(1);
  for (int64_t p = 0; p < g.planes(); ++p)
    for (int64_t oh = 0; oh < OH; ++oh)
      for (int64_t ow = 0; ow < OW; ++ow) {
        std::vector<std::pair<double, int64_t>> taps;  // row-major
        for (int64_t kh = 0; kh < g.param(g.kernel, 0, 1); ++kh)
          for (int64_t kw = 0; kw < g.param(g.kernel, 1, 1); ++kw) {
            const int64_t ih = oh * g.param(g.stride, 0, 1) - g.param(g.padding, 0, 0) + kh * g.param(g.dilation, 0, 1);
            const int64_t iw = ow * g.param(g.stride, 1, 1) - g.param(g.padding, 1, 0) + kw * g.param(g.dilation, 1, 1);
            if (ih >= 0 && ih < H && iw >= 0 && iw < W) taps.push_back({x.get(p * H * W + ih * W + iw), ih * W + iw});
          }
        EXPECT_FALSE(taps.empty()) << "a window without taps: " << g.name();
        double best = -INFINITY;
        int64_t at = taps.empty() ? 0 : taps[0].second;
        for (const auto& [v, i] : taps) best = std::max(best, v);
        for (const auto& [v, i] : taps)
          if (std::isnan(v)) best = v, at = i;
        if (!std::isnan(best))
          for (auto it = taps.rbegin(); it != taps.rend(); ++it)
            if (it->first == best) at = it->second;
        r.y.push_back(best);
        r.indices.push_back(static_cast<double>(at));
      }
  return r;
}

Values avg_reference(const Strided& g, const Buffer& x, bool count_include_pad, int64_t divisor_override) {
  Values y;
  const int64_t H = g.in(0), W = g.in(1);
  const int64_t kH = g.param(g.kernel, 0, 1), kW = g.param(g.kernel, 1, 1);
  const int64_t sH = g.param(g.stride, 0, 1), sW = g.param(g.stride, 1, 1);
  const int64_t pH = g.param(g.padding, 0, 0), pW = g.param(g.padding, 1, 0);
  for (int64_t p = 0; p < g.planes(); ++p)
    for (int64_t oh = 0; oh < g.out(0); ++oh)
      for (int64_t ow = 0; ow < g.out(1); ++ow) {
        double sum = 0, inside = 0, in_padded = 0;
        for (int64_t kh = 0; kh < kH; ++kh)
          for (int64_t kw = 0; kw < kW; ++kw) {
            const int64_t ih = oh * sH - pH + kh, iw = ow * sW - pW + kw;
            if (ih >= -pH && ih < H + pH && iw >= -pW && iw < W + pW) ++in_padded;
            if (ih >= 0 && ih < H && iw >= 0 && iw < W) ++inside, sum += x.get(p * H * W + ih * W + iw);
          }
        y.push_back(sum / (divisor_override ? divisor_override : count_include_pad ? in_padded : inside));
      }
  return y;
}

// Adaptive windows per axis: [⌊o·in/out⌋, ⌈(o+1)·in/out⌉).
Values adaptive_reference(const Buffer& x, int64_t planes, int64_t H, int64_t W, int64_t OH, int64_t OW) {
  Values y;
  for (int64_t p = 0; p < planes; ++p)
    for (int64_t oh = 0; oh < OH; ++oh)
      for (int64_t ow = 0; ow < OW; ++ow) {
        const int64_t h0 = oh * H / OH, h1 = ((oh + 1) * H + OH - 1) / OH;
        const int64_t w0 = ow * W / OW, w1 = ((ow + 1) * W + OW - 1) / OW;
        double sum = 0;
        for (int64_t h = h0; h < h1; ++h)
          for (int64_t w = w0; w < w1; ++w) sum += x.get(p * H * W + h * W + w);
        y.push_back(sum / static_cast<double>((h1 - h0) * (w1 - w0)));
      }
  return y;
}

class PoolTest : public ::testing::TestWithParam<DType> {};

// ------------------------------------------------------------------------------------ output size

TEST(PoolGeometry, OutputSizesMatchTorch) {
  for (const Strided& g : kGeometries)
    for (int i = 0; i < g.spatial(); ++i) {
      const int64_t in = g.shape[g.shape.size() - g.spatial() + i];
      EXPECT_EQ(pooled_size(in, g.kernel[i], g.stride[i], g.padding[i], g.dilation[i], g.ceil_mode), g.out_spatial[i])
          << g.name() << " axis " << i;
    }
}

TEST(PoolGeometry, ReadersAreTheOutputsWhoseWindowHoldsTheInput) {
  for (const Axis& a : {Axis{9, 5, 3, 2, 1, 1, false}, Axis{13, 5, 3, 2, 1, 2, false}, Axis{10, 5, 3, 2, 0, 1, false},
                        Axis{9, 4, 0, 0, 0, 1, true}, Axis{3, 7, 0, 0, 0, 1, true}})
    for (int64_t i = 0; i < a.in; ++i) {
      const Span r = a.readers(i);
      for (int64_t o = 0; o < a.out; ++o) {
        const int64_t first = a.adaptive ? o * a.in / a.out : o * a.stride - a.pad;
        const int64_t last = a.adaptive ? ((o + 1) * a.in + a.out - 1) / a.out - 1 : first + (a.kernel - 1) * a.dilation;
        EXPECT_EQ(first <= i && i <= last, r.begin <= o && o < r.end) << "input " << i << " output " << o;
      }
    }
}

// ------------------------------------------------------------------------------------ max pooling

TEST_P(PoolTest, MaxForwardMatchesNaiveLoops) {
  Random rng(1);
  for (const Strided& g : kGeometries) {
    const Buffer x = random_buffer(rng, GetParam(), g.shape, -2, 2);
    Buffer y = sentinel_buffer(GetParam(), g.out_shape()), y_plain = sentinel_buffer(GetParam(), g.out_shape());
    Buffer indices = sentinel_buffer(DType::Int64, g.out_shape());
    ScopedThreads threads(threads_for(x.numel()));
    max_pool_forward<CPU>(x.view(), g.kernel, g.stride, g.padding, g.dilation, g.ceil_mode, y.view(), indices.view());
    max_pool_forward<CPU>(x.view(), g.kernel, g.stride, g.padding, g.dilation, g.ceil_mode, y_plain.view(), std::nullopt);
    const MaxReference r = max_reference(g, x);
    EXPECT_EQ(y.values(), r.y) << g.name();
    EXPECT_EQ(indices.values(), r.indices) << g.name();
    EXPECT_EQ(y_plain.values(), r.y) << g.name();
  }
}

TEST_P(PoolTest, MaxTiesTakeTheFirstMaxAndNaNWins) {
  // Few distinct values: most windows hold ties; every 5th value NaN in the second pass.
  for (bool nans : {false, true}) {
    Random rng(2);
    for (const Strided& g : kGeometries) {
      Buffer x = random_buffer(rng, GetParam(), g.shape, -2, 2);
      for (int64_t i = 0; i < x.numel(); ++i) x.set(i, nans && i % 5 == 2 ? NAN : std::floor(x.get(i)));
      Buffer y(GetParam(), g.out_shape()), indices(DType::Int64, g.out_shape());
      max_pool_forward<CPU>(x.view(), g.kernel, g.stride, g.padding, g.dilation, g.ceil_mode, y.view(), indices.view());
      const MaxReference r = max_reference(g, x);
      EXPECT_EQ(indices.values(), r.indices) << g.name() << (nans ? " with NaNs" : "");
      for (int64_t i = 0; i < y.numel(); ++i)
        EXPECT_TRUE(y.get(i) == r.y[i] || (std::isnan(y.get(i)) && std::isnan(r.y[i]))) << g.name() << " at " << i;
    }
  }
}

TEST_P(PoolTest, MaxBackwardRoutesEachGradientToItsMax) {
  Random rng(3);
  for (const Strided& g : kGeometries) {
    const Buffer x = random_buffer(rng, GetParam(), g.shape, -2, 2);
    Buffer y(GetParam(), g.out_shape()), indices(DType::Int64, g.out_shape());
    max_pool_forward<CPU>(x.view(), g.kernel, g.stride, g.padding, g.dilation, g.ceil_mode, y.view(), indices.view());
    const Buffer dy = random_buffer(rng, GetParam(), g.out_shape());
    Buffer dx = sentinel_buffer(GetParam(), g.shape);
    ScopedThreads threads(threads_for(x.numel()));
    max_pool_backward<CPU>(dy.view(), indices.view(), g.kernel, g.stride, g.padding, g.dilation, g.ceil_mode,
                           dx.view());
    // The adjoint of "y[o] = x[index(o)]", summed per plane in double.
    Values expected(x.numel(), 0.0);
    const int64_t in_plane = g.in(0) * g.in(1), out_plane = g.out(0) * g.out(1);
    for (int64_t o = 0; o < dy.numel(); ++o) expected[o / out_plane * in_plane + indices.get(o)] += dy.get(o);
    EXPECT_TRUE(AllClose(dx.values(), expected, forward_tolerance(GetParam()))) << g.name();
  }
}

TEST(PoolTest64, MaxBackwardMatchesFiniteDifferences) {
  Random rng(4);
  for (const Strided& g : {kGeometries[0], kGeometries[3], kGeometries[6]}) {
    Buffer x = random_buffer(rng, DType::Float64, g.shape, -2, 2);
    const Buffer dy = random_buffer(rng, DType::Float64, g.out_shape());
    Buffer y(DType::Float64, g.out_shape()), indices(DType::Int64, g.out_shape()), dx(DType::Float64, g.shape);
    auto loss = [&] {
      max_pool_forward<CPU>(x.view(), g.kernel, g.stride, g.padding, g.dilation, g.ceil_mode, y.view(), indices.view());
      return test::dot(y, dy.values());
    };
    const Values numeric = test::numeric_gradient(x, loss);
    loss();
    max_pool_backward<CPU>(dy.view(), indices.view(), g.kernel, g.stride, g.padding, g.dilation, g.ceil_mode,
                           dx.view());
    EXPECT_TRUE(AllClose(dx.values(), numeric, test::kGradientTolerance)) << g.name();
  }
}

// -------------------------------------------------------------------------------- average pooling

TEST_P(PoolTest, AvgForwardAndBackwardMatchNaiveLoops) {
  Random rng(5);
  for (Strided g : kGeometries) {
    g.dilation.assign(g.kernel.size(), 1);
    for (int i = 0; i < g.spatial(); ++i)  // output sizes without dilation
      g.out_spatial[i] = pooled_size(g.shape[g.shape.size() - g.spatial() + i], g.kernel[i], g.stride[i],
                                     g.padding[i], 1, g.ceil_mode);
    for (bool include_pad : {true, false})
      for (int64_t divisor : {int64_t{0}, int64_t{3}}) {
        const std::string what = g.name() + (include_pad ? " include_pad" : "") + " divisor " + std::to_string(divisor);
        const Buffer x = random_buffer(rng, GetParam(), g.shape);
        Buffer y = sentinel_buffer(GetParam(), g.out_shape());
        ScopedThreads threads(threads_for(x.numel()));
        avg_pool_forward<CPU>(x.view(), g.kernel, g.stride, g.padding, g.ceil_mode, include_pad, divisor, y.view());
        EXPECT_TRUE(AllClose(y.values(), avg_reference(g, x, include_pad, divisor), forward_tolerance(GetParam())))
            << what;
        // Backward is the adjoint of the (linear) forward: <dy, A x> = <Aᵀ dy, x> for every x, so the
        // gradient of input i is the forward of the i-th unit vector, dotted with dy.
        const Buffer dy = random_buffer(rng, GetParam(), g.out_shape());
        Buffer dx = sentinel_buffer(GetParam(), g.shape);
        avg_pool_backward<CPU>(dy.view(), g.kernel, g.stride, g.padding, g.ceil_mode, include_pad, divisor, dx.view());
        if (x.numel() > 2000) continue;  // the unit-vector loop is quadratic
        Values expected(x.numel());
        Buffer unit(DType::Float64, g.shape);
        for (int64_t i = 0; i < x.numel(); ++i) {
          unit.set(i, 1.0);
          const Values column = avg_reference(g, unit, include_pad, divisor);
          unit.set(i, 0.0);
          double s = 0;
          for (size_t o = 0; o < column.size(); ++o) s += column[o] * dy.get(o);
          expected[i] = s;
        }
        EXPECT_TRUE(AllClose(dx.values(), expected, forward_tolerance(GetParam()))) << what;
      }
  }
}

// ----------------------------------------------------------------------- adaptive average pooling

TEST_P(PoolTest, AdaptiveForwardAndBackwardMatchNaiveLoops) {
  struct Case {
    std::vector<int64_t> shape, out_shape;
    int spatial;
  };
  const std::vector<Case> cases = {{{2, 3, 7, 7}, {2, 3, 1, 1}, 2},   {{1, 2, 9, 11}, {1, 2, 4, 3}, 2},
                                   {{3, 5, 6}, {3, 8, 2}, 2},          {{2, 3, 13}, {2, 3, 4}, 1},
                                   {{2, 3, 13}, {2, 3, 1}, 1},         {{64, 32, 5, 5}, {64, 32, 1, 1}, 2},
                                   {{2, 2, 4, 4}, {2, 2, 0, 2}, 2}};
  Random rng(6);
  for (const Case& c : cases) {
    const int64_t H = c.spatial == 2 ? c.shape[c.shape.size() - 2] : 1, W = c.shape.back();
    const int64_t OH = c.spatial == 2 ? c.out_shape[c.out_shape.size() - 2] : 1, OW = c.out_shape.back();
    const int64_t planes = test::product(c.shape, 0, c.shape.size() - c.spatial);
    const Buffer x = random_buffer(rng, GetParam(), c.shape);
    Buffer y = sentinel_buffer(GetParam(), c.out_shape);
    ScopedThreads threads(threads_for(x.numel()));
    adaptive_avg_pool_forward<CPU>(x.view(), c.spatial, y.view());
    EXPECT_TRUE(AllClose(y.values(), adaptive_reference(x, planes, H, W, OH, OW), forward_tolerance(GetParam())))
        << shape_name(c.shape) << " -> " << shape_name(c.out_shape);
    const Buffer dy = random_buffer(rng, GetParam(), c.out_shape);
    Buffer dx = sentinel_buffer(GetParam(), c.shape);
    adaptive_avg_pool_backward<CPU>(dy.view(), c.spatial, dx.view());
    Values expected(x.numel(), 0.0);  // each output's gradient shared evenly over its window
    for (int64_t p = 0; p < planes; ++p)
      for (int64_t oh = 0; oh < OH; ++oh)
        for (int64_t ow = 0; ow < OW; ++ow) {
          const int64_t h0 = oh * H / OH, h1 = ((oh + 1) * H + OH - 1) / OH;
          const int64_t w0 = ow * W / OW, w1 = ((ow + 1) * W + OW - 1) / OW;
          const double share = dy.get((p * OH + oh) * OW + ow) / static_cast<double>((h1 - h0) * (w1 - w0));
          for (int64_t h = h0; h < h1; ++h)
            for (int64_t w = w0; w < w1; ++w) expected[p * H * W + h * W + w] += share;
        }
    EXPECT_TRUE(AllClose(dx.values(), expected, forward_tolerance(GetParam())))
        << shape_name(c.shape) << " -> " << shape_name(c.out_shape);
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, PoolTest, ::testing::Values(DType::Float32, DType::Float64), test::DTypeName());

// ------------------------------------------------------------------------------------- validation

// Calls that must throw ErrorKind `kind` with `needle` in the message and leave y untouched.
void expect_rejected(const std::function<void()>& call, Buffer& y, ErrorKind kind, const std::string& needle) {
  y.snapshot();
  try {
    call();
    ADD_FAILURE() << "no error; expected one naming " << needle;
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), kind) << e.what();
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
  EXPECT_TRUE(y.unchanged_since_snapshot()) << needle;
}

TEST(PoolValidation, BadGeometryAndArgumentsAreNamedErrors) {
  Random rng(7);
  const Buffer x = random_buffer(rng, DType::Float32, {2, 3, 8, 8});
  Buffer y = sentinel_buffer(DType::Float32, {2, 3, 4, 4});
  Buffer indices = sentinel_buffer(DType::Int64, {2, 3, 4, 4});
  const Ints two{2, 2}, zero{0, 0}, one{1, 1};
  auto max_pool = [&](const TensorView& in, Ints k, Ints s, Ints p, Ints d, const TensorView& out) {
    return [&, in, k, s, p, d, out] { max_pool_forward<CPU>(in, k, s, p, d, false, out, indices.view()); };
  };
  expect_rejected(max_pool(x.view(), {3, 3}, one, {2, 2}, one, y.view()), y, ErrorKind::Value, "'padding'");
  expect_rejected(max_pool(x.view(), {9, 9}, one, zero, one, y.view()), y, ErrorKind::Value, "too small");
  expect_rejected(max_pool(x.view(), {2, 2}, {1, 1}, zero, {8, 8}, y.view()), y, ErrorKind::Value, "too small");
  expect_rejected(max_pool(x.view(), two, {0, 2}, zero, one, y.view()), y, ErrorKind::Value, "'stride'");
  expect_rejected(max_pool(x.view(), two, two, zero, {0, 1}, y.view()), y, ErrorKind::Value, "'dilation'");
  expect_rejected(max_pool(x.view(), {2, 2, 2}, two, zero, one, y.view()), y, ErrorKind::Value, "'kernel_size'");
  expect_rejected(max_pool(x.view(), two, {2}, zero, one, y.view()), y, ErrorKind::Value, "'stride'");
  expect_rejected(max_pool(x.view(), {3, 3}, two, zero, one, y.view()), y, ErrorKind::Value, "'y'");  // 3×3 out
  const Buffer x_int(DType::Int32, {2, 3, 8, 8});
  expect_rejected(max_pool(x_int.view(), two, two, zero, one, y.view()), y, ErrorKind::Type, "'x'");
  TensorView strided = x.view();
  strided.strides[3] = 2;
  strided.sizes[3] = 4;
  Buffer y_small = sentinel_buffer(DType::Float32, {2, 3, 4, 2});
  expect_rejected(max_pool(strided, two, two, zero, one, y_small.view()), y_small, ErrorKind::Value, "'x'");
  const Buffer empty_channels(DType::Float32, {2, 0, 8, 8});
  expect_rejected(max_pool(empty_channels.view(), two, two, zero, one, y.view()), y, ErrorKind::Value, "'x'");
  const Buffer bad_indices(DType::Int32, {2, 3, 4, 4});
  expect_rejected([&] { max_pool_forward<CPU>(x.view(), two, two, zero, one, false, y.view(), bad_indices.view()); },
                  y, ErrorKind::Type, "'indices'");
  expect_rejected([&] { avg_pool_forward<CPU>(x.view(), two, two, zero, false, true, -1, y.view()); }, y,
                  ErrorKind::Value, "'divisor_override'");
  Buffer dx = sentinel_buffer(DType::Float32, {2, 3, 8, 8});
  const Buffer dy_wrong(DType::Float32, {2, 3, 5, 4});
  expect_rejected([&] { avg_pool_backward<CPU>(dy_wrong.view(), two, two, zero, false, true, 0, dx.view()); }, dx,
                  ErrorKind::Value, "'grad_y'");
  expect_rejected([&] { max_pool_backward<CPU>(dy_wrong.view(), indices.view(), two, two, zero, one, false, dx.view()); },
                  dx, ErrorKind::Value, "'grad_y'");
  expect_rejected([&] { adaptive_avg_pool_forward<CPU>(x.view(), 3, y.view()); }, y, ErrorKind::Value, "'spatial_ndim'");
  const Buffer empty_spatial(DType::Float32, {2, 3, 0, 8});
  expect_rejected([&] { adaptive_avg_pool_forward<CPU>(empty_spatial.view(), 2, y.view()); }, y, ErrorKind::Value, "'x'");
  Buffer y_other_batch = sentinel_buffer(DType::Float32, {1, 3, 4, 4});
  expect_rejected([&] { adaptive_avg_pool_forward<CPU>(x.view(), 2, y_other_batch.view()); }, y_other_batch,
                  ErrorKind::Value, "'y'");
}

}  // namespace
}  // namespace replearn::pool
