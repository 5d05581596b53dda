// Convolution family kernels (csrc/conv) on the CPU:
//   - forward (conv and conv_transpose) against a naive double loop written from the definition,
//     in float32 and float64, over dense, grouped, depthwise (with a channel multiplier), strided,
//     dilated, asymmetrically padded (causal, "same" with an even kernel), pointwise and 1-D cases,
//     on one and two threads (the batch-parallel path with per-thread weight-gradient partials);
//   - every gradient against central finite differences of L = Σ y·r in float64;
//   - a workspace sized under one thread count used under another; validation errors.
#include <gtest/gtest.h>

#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "conv/conv.h"
#include "test_helpers.h"

namespace replearn::conv {
namespace {

using test::AllClose;
using test::Buffer;
using test::kGradientTolerance;
using test::Random;
using test::ScopedThreads;
using test::shape_name;
constexpr auto CPU = DeviceType::CPU;

struct Case {
  int64_t batch, in_channels, out_channels;
  std::vector<int64_t> size, kernel;  // one entry per spatial dim
  Ints stride, pad_begin, pad_end, dilation;
  int64_t groups;
  bool bias;
};

std::string name(const Case& c) {
  return "N" + std::to_string(c.batch) + " C" + std::to_string(c.in_channels) + "->" + std::to_string(c.out_channels) +
         " size" + shape_name(c.size) + " k" + shape_name(c.kernel) + " s" + shape_name(c.stride) + " p" +
         shape_name(c.pad_begin) + shape_name(c.pad_end) + " d" + shape_name(c.dilation) + " g" + std::to_string(c.groups);
}

std::vector<int64_t> with_front(std::vector<int64_t> front, const std::vector<int64_t>& rest) {
  front.insert(front.end(), rest.begin(), rest.end());
  return front;
}

std::vector<int64_t> conv_out(const Case& c) {
  std::vector<int64_t> out;
  for (size_t d = 0; d < c.size.size(); ++d)
    out.push_back((c.size[d] + c.pad_begin[d] + c.pad_end[d] - c.dilation[d] * (c.kernel[d] - 1) - 1) / c.stride[d] + 1);
  return out;
}

// 2-D view of a 1-D or 2-D case, for the naive loops.
struct Dims {
  int64_t h, w, kh, kw, oh, ow, sh, sw, ph, pw, dh, dw;
};
Dims dims(const Case& c, const std::vector<int64_t>& out) {
  const bool two = c.size.size() == 2;
  return {two ? c.size[0] : 1,      c.size.back(),       two ? c.kernel[0] : 1,    c.kernel.back(),
          two ? out[0] : 1,         out.back(),          two ? c.stride[0] : 1,    c.stride.back(),
          two ? c.pad_begin[0] : 0, c.pad_begin.back(),  two ? c.dilation[0] : 1,  c.dilation.back()};
}

// y[n, o, oh, ow] = b[o] + Σ_{c, kh, kw} w[o, c, kh, kw] · x[n, g·Ci + c, oh·S − P + kh·D, ow·S − P + kw·D]
std::vector<double> naive_conv(const Case& c, const Buffer& x, const Buffer& w, const Buffer* b) {
  const std::vector<int64_t> out = conv_out(c);
  const Dims d = dims(c, out);
  const int64_t ci = c.in_channels / c.groups, co = c.out_channels / c.groups;
  std::vector<double> y;
  for (int64_t n = 0; n < c.batch; ++n)
    for (int64_t o = 0; o < c.out_channels; ++o)
      for (int64_t oh = 0; oh < d.oh; ++oh)
        for (int64_t ow = 0; ow < d.ow; ++ow) {
          double s = b ? b->get(o) : 0.0;
          for (int64_t k = 0; k < ci; ++k)
            for (int64_t kh = 0; kh < d.kh; ++kh)
              for (int64_t kw = 0; kw < d.kw; ++kw) {
                const int64_t ih = oh * d.sh - d.ph + kh * d.dh, iw = ow * d.sw - d.pw + kw * d.dw;
                if (ih < 0 || ih >= d.h || iw < 0 || iw >= d.w) continue;
                s += w.get(((o * ci + k) * d.kh + kh) * d.kw + kw) *
                     x.get(((n * c.in_channels + (o / co) * ci + k) * d.h + ih) * d.w + iw);
              }
          y.push_back(s);
        }
  return y;
}

// conv_transpose with the case's stride/dilation, padding = pad_begin and output_padding = pad_end:
// x[n, i, ih, iw] · w[i, o, kh, kw] lands on y[n, g·Co + o, ih·S − P + kh·D, ...].
std::vector<int64_t> transpose_out(const Case& c) {
  std::vector<int64_t> out;
  for (size_t d = 0; d < c.size.size(); ++d)
    out.push_back((c.size[d] - 1) * c.stride[d] - 2 * c.pad_begin[d] + c.dilation[d] * (c.kernel[d] - 1) + 1 +
                  c.pad_end[d]);
  return out;
}
std::vector<double> naive_transpose(const Case& c, const Buffer& x, const Buffer& w, const Buffer* b) {
  const std::vector<int64_t> out = transpose_out(c);
  const bool two = c.size.size() == 2;
  const int64_t h = two ? c.size[0] : 1, wd = c.size.back(), oh_n = two ? out[0] : 1, ow_n = out.back();
  const int64_t kh_n = two ? c.kernel[0] : 1, kw_n = c.kernel.back();
  const int64_t sh = two ? c.stride[0] : 1, sw = c.stride.back(), ph = two ? c.pad_begin[0] : 0, pw = c.pad_begin.back();
  const int64_t dh = two ? c.dilation[0] : 1, dw = c.dilation.back();
  const int64_t ci = c.in_channels / c.groups, co = c.out_channels / c.groups;
  std::vector<double> y(c.batch * c.out_channels * oh_n * ow_n, 0.0);
  for (int64_t n = 0; n < c.batch; ++n)
    for (int64_t i = 0; i < c.in_channels; ++i)
      for (int64_t ih = 0; ih < h; ++ih)
        for (int64_t iw = 0; iw < wd; ++iw)
          for (int64_t o = 0; o < co; ++o)
            for (int64_t kh = 0; kh < kh_n; ++kh)
              for (int64_t kw = 0; kw < kw_n; ++kw) {
                const int64_t yh = ih * sh - ph + kh * dh, yw = iw * sw - pw + kw * dw;
                if (yh < 0 || yh >= oh_n || yw < 0 || yw >= ow_n) continue;
                const int64_t oc = (i / ci) * co + o;
                y[((n * c.out_channels + oc) * oh_n + yh) * ow_n + yw] +=
                    x.get(((n * c.in_channels + i) * h + ih) * wd + iw) * w.get(((i * co + o) * kh_n + kh) * kw_n + kw);
              }
  if (b)
    for (size_t k = 0; k < y.size(); ++k) y[k] += b->get((k / (oh_n * ow_n)) % c.out_channels);
  return y;
}

Buffer workspace(int64_t bytes) { return Buffer(DType::UInt8, {std::max<int64_t>(bytes, 1)}); }

// Dense, grouped, depthwise (multiplier 1 and 2), strided, dilated, causal, "same" with an even
// kernel, pointwise, 1-D, a kernel that fills the padded input, enough samples for two threads.
const std::vector<Case> kCases = {
    {2, 3, 4, {5, 6}, {3, 3}, {1, 1}, {1, 1}, {1, 1}, {1, 1}, 1, true},
    {1, 4, 6, {7, 5}, {3, 2}, {2, 1}, {0, 1}, {0, 0}, {1, 2}, 2, true},
    {3, 4, 4, {6, 7}, {3, 3}, {1, 2}, {2, 1}, {2, 1}, {2, 1}, 4, true},
    {2, 3, 6, {7, 6}, {5, 3}, {2, 1}, {2, 1}, {2, 1}, {1, 1}, 3, false},
    {4, 5, 3, {4, 4}, {1, 1}, {1, 1}, {0, 0}, {0, 0}, {1, 1}, 1, true},
    {1, 2, 2, {3, 4}, {4, 4}, {1, 1}, {1, 1}, {2, 1}, {1, 1}, 1, true},
    {2, 4, 6, {11}, {2}, {1}, {4}, {0}, {4}, 2, true},
    {3, 2, 3, {9}, {3}, {3}, {1}, {1}, {1}, 1, false},
    {5, 3, 3, {10}, {3}, {1}, {2}, {2}, {2}, 3, true},
    {6, 4, 5, {6, 5}, {3, 3}, {1, 1}, {1, 1}, {1, 1}, {1, 1}, 1, true},
    {2, 4, 2, {6, 5}, {3, 3}, {1, 1}, {0, 0}, {0, 0}, {1, 1}, 2, true},  // one output channel per group
    // Depthwise rows wide enough for the register blocks of several vectors and a last vector that
    // overlaps the one before it (70 and 45 columns), multiplier 2 and dilation 2.
    {1, 3, 6, {3, 70}, {3, 7}, {1, 1}, {1, 3}, {1, 3}, {1, 1}, 3, true},
    {2, 2, 2, {2, 45}, {1, 5}, {1, 1}, {0, 4}, {0, 4}, {1, 2}, 2, false},
};

// x, w, b drawn from rng for case c, y = conv_forward (with the workspace it asks for), checked
// against the naive loop; returns the four for further checks.
std::tuple<Buffer, Buffer, Buffer, Buffer> checked_forward(const Case& c, DType dt, Random& rng, int threads) {
  Buffer x = test::random_buffer(rng, dt, with_front({c.batch, c.in_channels}, c.size));
  Buffer w = test::random_buffer(rng, dt, with_front({c.out_channels, c.in_channels / c.groups}, c.kernel));
  Buffer b = test::random_buffer(rng, dt, {c.out_channels});
  Buffer y = test::sentinel_buffer(dt, with_front({c.batch, c.out_channels}, conv_out(c)));
  Buffer ws = workspace(conv_forward_workspace_size<CPU>(x.view(), w.view(), c.stride, c.pad_begin, c.pad_end,
                                                         c.dilation, c.groups, y.view()));
  conv_forward<CPU>(x.view(), w.view(), c.bias ? b.opt() : std::nullopt, c.stride, c.pad_begin, c.pad_end,
                    c.dilation, c.groups, y.view(), ws.opt());
  EXPECT_TRUE(AllClose(y.values(), naive_conv(c, x, w, c.bias ? &b : nullptr), test::forward_tolerance(dt)))
      << name(c) << " threads " << threads;
  return {std::move(x), std::move(w), std::move(b), std::move(y)};
}

class ConvForward : public ::testing::TestWithParam<DType> {};

TEST_P(ConvForward, MatchesNaiveLoop) {
  const DType dt = GetParam();
  for (const Case& c : kCases)
    for (int threads : {1, 2}) {
      ScopedThreads scoped(threads);
      Random rng(17 + c.batch * 7 + c.in_channels);
      auto [x, w, b, y] = checked_forward(c, dt, rng, threads);

      // conv_transpose with the same shapes read the other way: weight (C_in, C_out/G, k).
      Case t = c;
      t.pad_end = Ints(c.size.size(), 0);
      for (size_t d = 0; d < c.size.size(); ++d) {
        t.pad_begin[d] = std::min<int64_t>(c.pad_begin[d], (c.kernel[d] - 1) * c.dilation[d] / 2);
        t.pad_end[d] = std::max(c.stride[d], c.dilation[d]) - 1;  // the largest output_padding
      }
      Buffer wt = test::random_buffer(rng, dt, with_front({c.in_channels, c.out_channels / c.groups}, c.kernel));
      Buffer yt = test::sentinel_buffer(dt, with_front({c.batch, c.out_channels}, transpose_out(t)));
      Buffer wst = workspace(conv_transpose_forward_workspace_size<CPU>(x.view(), wt.view(), t.stride, t.pad_begin,
                                                                        t.dilation, t.groups, yt.view()));
      conv_transpose_forward<CPU>(x.view(), wt.view(), c.bias ? b.opt() : std::nullopt, t.stride, t.pad_begin,
                                  t.dilation, t.groups, yt.view(), wst.opt());
      EXPECT_TRUE(AllClose(yt.values(), naive_transpose(t, x, wt, c.bias ? &b : nullptr), test::forward_tolerance(dt)))
          << "transpose " << name(t) << " threads " << threads;
    }
}

// torch accepts a transposed convolution whose padding removes the whole base output as long as
// output_padding leaves something: the output is then made of output_padding alone (base 0 and −1).
TEST(ConvTransposeForward, OutputMadeOfOutputPaddingMatchesNaiveLoop) {
  const std::vector<Case> cases = {
      {2, 2, 3, {2}, {2}, {2}, {2}, {1}, {1}, 1, true},
      {1, 2, 4, {1, 3}, {1, 2}, {3, 1}, {1, 0}, {2, 0}, {1, 1}, 2, false},
  };
  for (const Case& t : cases) {
    Random rng(5);
    const DType dt = DType::Float64;
    Buffer x = test::random_buffer(rng, dt, with_front({t.batch, t.in_channels}, t.size));
    Buffer w = test::random_buffer(rng, dt, with_front({t.in_channels, t.out_channels / t.groups}, t.kernel));
    Buffer b = test::random_buffer(rng, dt, {t.out_channels});
    Buffer y = test::sentinel_buffer(dt, with_front({t.batch, t.out_channels}, transpose_out(t)));
    Buffer ws = workspace(conv_transpose_forward_workspace_size<CPU>(x.view(), w.view(), t.stride, t.pad_begin,
                                                                     t.dilation, t.groups, y.view()));
    conv_transpose_forward<CPU>(x.view(), w.view(), t.bias ? b.opt() : std::nullopt, t.stride, t.pad_begin,
                                t.dilation, t.groups, y.view(), ws.opt());
    EXPECT_TRUE(AllClose(y.values(), naive_transpose(t, x, w, t.bias ? &b : nullptr), test::forward_tolerance(dt)))
        << name(t);
  }
}

// dW of a 2-D convolution with groups 1, L = Σ y·dy, summed in double: dW[o, c, kh, kw] =
// Σ_{n, oh, ow} dy[n, o, oh, ow] · x[n, c, oh·S − P + kh·D, ow·S − P + kw·D].
std::vector<double> naive_weight_gradient(const Case& c, const Buffer& x, const Buffer& dy) {
  const std::vector<int64_t> out = conv_out(c);
  const int64_t h = c.size[0], wd = c.size[1], K = c.kernel[0] * c.kernel[1];
  std::vector<double> dw(c.out_channels * c.in_channels * K, 0.0);
  for (int64_t n = 0; n < c.batch; ++n)
    for (int64_t o = 0; o < c.out_channels; ++o)
      for (int64_t i = 0; i < c.in_channels; ++i)
        for (int64_t kh = 0; kh < c.kernel[0]; ++kh)
          for (int64_t kw = 0; kw < c.kernel[1]; ++kw)
            for (int64_t oh = 0; oh < out[0]; ++oh)
              for (int64_t ow = 0; ow < out[1]; ++ow) {
                const int64_t ih = oh * c.stride[0] - c.pad_begin[0] + kh * c.dilation[0];
                const int64_t iw = ow * c.stride[1] - c.pad_begin[1] + kw * c.dilation[1];
                if (ih < 0 || ih >= h || iw < 0 || iw >= wd) continue;
                dw[(o * c.in_channels + i) * K + kh * c.kernel[1] + kw] +=
                    dy.get(((n * c.out_channels + o) * out[0] + oh) * out[1] + ow) *
                    x.get(((n * c.in_channels + i) * h + ih) * wd + iw);
              }
  return dw;
}

// Planes larger than the gather's vectors, in float32 (the AVX-512 path): windows of 16 columns
// within a row and across rows (stride 1, dilation, stride 2), vectors whose columns cross from one
// sample into the next (35-position planes in the forward's batched products; 169 in the weight
// gradient's), and gathers where a vector's offsets spread over more than 32 values (stride 3, and
// the sample crossings). Elsewhere (float64, and float32 without AVX-512) the gather copies runs:
// output rows of 70 positions, and a 1×1 kernel without padding, whose runs go on across rows.
TEST(ConvForward, ColumnGathersOnLargerPlanesMatchNaiveLoops) {
  const std::vector<Case> cases = {
      {3, 5, 7, {19, 23}, {3, 3}, {1, 1}, {1, 1}, {1, 1}, {1, 1}, 1, true},
      {4, 6, 5, {13, 13}, {3, 3}, {1, 1}, {1, 1}, {1, 1}, {1, 1}, 1, false},
      {2, 4, 6, {40, 37}, {3, 3}, {2, 2}, {1, 1}, {1, 1}, {1, 1}, 1, true},
      {3, 3, 4, {17, 20}, {3, 2}, {1, 1}, {3, 2}, {3, 2}, {3, 2}, 1, true},
      {2, 3, 5, {16, 50}, {3, 3}, {3, 3}, {2, 0}, {2, 0}, {1, 1}, 1, false},
      {64, 8, 8, {4, 4}, {3, 3}, {1, 1}, {1, 1}, {1, 1}, {1, 1}, 1, false},  // 16-position planes, batched
      {6, 16, 6, {5, 7}, {3, 3}, {1, 1}, {1, 1}, {1, 1}, {1, 1}, 1, true},   // P = 35 < Ci·K: batched
      {2, 3, 4, {6, 70}, {3, 3}, {1, 1}, {1, 1}, {1, 1}, {1, 1}, 1, true},   // runs of 70
      {2, 5, 3, {9, 30}, {1, 1}, {1, 1}, {0, 0}, {0, 0}, {1, 1}, 1, false},  // runs across rows
  };
  const DType dt = DType::Float32;
  for (const Case& c : cases)
    for (int threads : {1, 2}) {
      ScopedThreads scoped(threads);
      Random rng(31 + c.batch + c.in_channels);
      auto [x, w, b, y] = checked_forward(c, dt, rng, threads);

      Buffer dy = test::random_buffer(rng, dt, y.sizes());
      Buffer dw = test::sentinel_buffer(dt, w.sizes());
      Buffer wsb = workspace(conv_backward_workspace_size<CPU>(dy.view(), x.view(), w.view(), c.stride, c.pad_begin,
                                                               c.pad_end, c.dilation, c.groups));
      conv_backward<CPU>(dy.view(), x.view(), w.view(), c.stride, c.pad_begin, c.pad_end, c.dilation, c.groups,
                         std::nullopt, dw.opt(), std::nullopt, wsb.opt());
      EXPECT_TRUE(AllClose(dw.values(), naive_weight_gradient(c, x, dy), {2e-4, 2e-4}))
          << "dw " << name(c) << " threads " << threads;
    }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, ConvForward, ::testing::Values(DType::Float32, DType::Float64), test::DTypeName());

// Gradients of L = Σ y·r by central differences, in float64, for conv and conv_transpose.
void check_gradients(const Case& c, bool transpose, int threads) {
  ScopedThreads scoped(threads);
  const DType dt = DType::Float64;
  Random rng(99 + c.batch + c.out_channels * 3);
  Case t = c;
  if (transpose) {
    for (size_t d = 0; d < c.size.size(); ++d) {
      t.pad_begin[d] = std::min<int64_t>(c.pad_begin[d], (c.kernel[d] - 1) * c.dilation[d] / 2);
      t.pad_end[d] = std::max(c.stride[d], c.dilation[d]) - 1;
    }
  }
  const std::vector<int64_t> out = transpose ? transpose_out(t) : conv_out(c);
  Buffer x = test::random_buffer(rng, dt, with_front({c.batch, c.in_channels}, c.size));
  Buffer w = test::random_buffer(rng, dt, transpose ? with_front({c.in_channels, c.out_channels / c.groups}, c.kernel)
                                                    : with_front({c.out_channels, c.in_channels / c.groups}, c.kernel));
  Buffer b = test::random_buffer(rng, dt, {c.out_channels});
  Buffer y(dt, with_front({c.batch, c.out_channels}, out));
  const std::vector<double> r = rng.uniform(y.numel(), -1, 1);
  Buffer dy(dt, y.sizes(), r);
  auto forward = [&]() {
    if (transpose) {
      Buffer ws = workspace(conv_transpose_forward_workspace_size<CPU>(x.view(), w.view(), t.stride, t.pad_begin,
                                                                       t.dilation, t.groups, y.view()));
      conv_transpose_forward<CPU>(x.view(), w.view(), b.opt(), t.stride, t.pad_begin, t.dilation, t.groups, y.view(),
                                  ws.opt());
    } else {
      Buffer ws = workspace(conv_forward_workspace_size<CPU>(x.view(), w.view(), c.stride, c.pad_begin, c.pad_end,
                                                             c.dilation, c.groups, y.view()));
      conv_forward<CPU>(x.view(), w.view(), b.opt(), c.stride, c.pad_begin, c.pad_end, c.dilation, c.groups, y.view(),
                        ws.opt());
    }
    return test::dot(y, r);
  };
  Buffer dx = test::sentinel_buffer(dt, x.sizes()), dw = test::sentinel_buffer(dt, w.sizes());
  Buffer db = test::sentinel_buffer(dt, b.sizes());
  if (transpose) {
    Buffer ws = workspace(conv_transpose_backward_workspace_size<CPU>(dy.view(), x.view(), w.view(), t.stride,
                                                                      t.pad_begin, t.dilation, t.groups));
    conv_transpose_backward<CPU>(dy.view(), x.view(), w.view(), t.stride, t.pad_begin, t.dilation, t.groups, dx.opt(),
                                 dw.opt(), db.opt(), ws.opt());
  } else {
    Buffer ws = workspace(conv_backward_workspace_size<CPU>(dy.view(), x.view(), w.view(), c.stride, c.pad_begin,
                                                            c.pad_end, c.dilation, c.groups));
    conv_backward<CPU>(dy.view(), x.view(), w.view(), c.stride, c.pad_begin, c.pad_end, c.dilation, c.groups, dx.opt(),
                       dw.opt(), db.opt(), ws.opt());
  }
  const std::string what = std::string(transpose ? "transpose " : "conv ") + name(transpose ? t : c) + " threads " +
                           std::to_string(threads);
  EXPECT_TRUE(AllClose(dx.values(), test::numeric_gradient(x, forward), kGradientTolerance)) << "dx " << what;
  EXPECT_TRUE(AllClose(dw.values(), test::numeric_gradient(w, forward), kGradientTolerance)) << "dw " << what;
  EXPECT_TRUE(AllClose(db.values(), test::numeric_gradient(b, forward), kGradientTolerance)) << "db " << what;
}

TEST(ConvBackward, MatchesFiniteDifferences) {
  for (const Case& c : kCases)
    for (int threads : {1, 2}) check_gradients(c, false, threads);
}

TEST(ConvTransposeBackward, MatchesFiniteDifferences) {
  for (const Case& c : kCases)
    for (int threads : {1, 2}) check_gradients(c, true, threads);
}

TEST(ConvBackward, OnlyRequestedGradientsAndAnyWorkspaceSize) {
  const Case& c = kCases[9];  // six samples, groups 1: two threads split the batch
  Random rng(5);
  Buffer x = test::random_buffer(rng, DType::Float32, with_front({c.batch, c.in_channels}, c.size));
  Buffer w = test::random_buffer(rng, DType::Float32, with_front({c.out_channels, c.in_channels}, c.kernel));
  Buffer dy = test::random_buffer(rng, DType::Float32, with_front({c.batch, c.out_channels}, conv_out(c)));
  auto run = [&](int size_threads, int run_threads, bool want_dx) {
    int64_t bytes;
    {
      ScopedThreads s(size_threads);
      bytes = conv_backward_workspace_size<CPU>(dy.view(), x.view(), w.view(), c.stride, c.pad_begin, c.pad_end,
                                                c.dilation, c.groups);
    }
    ScopedThreads s(run_threads);
    Buffer ws = workspace(bytes);
    Buffer dx = test::sentinel_buffer(DType::Float32, x.sizes()), dw = test::sentinel_buffer(DType::Float32, w.sizes());
    conv_backward<CPU>(dy.view(), x.view(), w.view(), c.stride, c.pad_begin, c.pad_end, c.dilation, c.groups,
                       want_dx ? dx.opt() : std::nullopt, dw.opt(), std::nullopt, ws.opt());
    if (!want_dx) EXPECT_TRUE(test::all_equal(dx, test::kSentinel));
    return dw.values();
  };
  const std::vector<double> reference = run(1, 1, true);
  EXPECT_TRUE(AllClose(run(1, 2, false), reference, {1e-5, 1e-5}));  // sized for one thread, run on two
  EXPECT_TRUE(AllClose(run(2, 1, true), reference, {1e-5, 1e-5}));
  EXPECT_TRUE(AllClose(run(2, 2, true), reference, {1e-5, 1e-5}));
}

TEST(ConvValidation, NamesTheArgumentAndTouchesNothing) {
  Buffer x(DType::Float32, {2, 4, 5, 5}), w(DType::Float32, {6, 2, 3, 3});
  Buffer y = test::sentinel_buffer(DType::Float32, {2, 6, 3, 3});
  auto expect_error = [&](const std::function<void()>& f, const std::string& text) {
    try {
      f();
      ADD_FAILURE() << "no error, expected: " << text;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(text), std::string::npos) << e.what();
    }
    EXPECT_TRUE(test::all_equal(y, test::kSentinel)) << text;
  };
  const Ints one{1, 1}, zero{0, 0};
  expect_error([&] { conv_forward<CPU>(x.view(), w.view(), std::nullopt, one, zero, zero, one, 3, y.view(), std::nullopt); },
               "argument 'groups' expected a positive divisor of the 4 input channels");
  expect_error([&] { conv_forward<CPU>(x.view(), w.view(), std::nullopt, one, zero, zero, one, 1, y.view(), std::nullopt); },
               "argument 'weight' expected 4 input channels per group");
  Buffer big(DType::Float32, {6, 2, 7, 7});
  expect_error([&] { conv_forward<CPU>(x.view(), big.view(), std::nullopt, one, zero, zero, one, 2, y.view(), std::nullopt); },
               "dilated size 7 fits the padded input size 5");
  expect_error([&] { conv_forward<CPU>(x.view(), w.view(), std::nullopt, Ints{0, 1}, zero, zero, one, 2, y.view(), std::nullopt); },
               "argument 'stride' expected positive values");
  expect_error([&] { conv_forward<CPU>(x.view(), w.view(), std::nullopt, one, Ints{1}, zero, one, 2, y.view(), std::nullopt); },
               "argument 'padding' expected 2 value(s)");
  Buffer x64(DType::Float64, {2, 4, 5, 5});
  expect_error([&] { conv_forward<CPU>(x64.view(), w.view(), std::nullopt, one, zero, zero, one, 2, y.view(), std::nullopt); },
               "argument 'weight' expected dtype float64");
  expect_error([&] { conv_forward<CPU>(x.view(), w.view(), std::nullopt, one, one, one, one, 2, y.view(), std::nullopt); },
               "argument 'y' expected shape (2, 6, 5, 5)");
  Buffer wt(DType::Float32, {4, 3, 3, 3}), yt = test::sentinel_buffer(DType::Float32, {2, 6, 9, 9});
  expect_error([&] { conv_transpose_forward<CPU>(x.view(), wt.view(), std::nullopt, one, zero, one, 2, yt.view(), std::nullopt); },
               "expected spatial size 7 + output_padding with 0 <= output_padding < 1");
}

}  // namespace
}  // namespace replearn::conv
