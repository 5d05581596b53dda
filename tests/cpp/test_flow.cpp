// Flow family: CPU kernels against naive double loops written from the equations, backward kernels
// against central differences (float64), round trips, and validation.
#include <cmath>
#include <functional>

#include "flow/flow.h"
#include "test_helpers.h"

namespace replearn::test {
namespace {

using flow::OptView;

// A Bool (features) mask view over a UInt8 buffer (Buffer has no Bool accessors).
TensorView bool_view(const Buffer& b) {
  TensorView v = b.view();
  v.dtype = DType::Bool;
  return v;
}

// Checks a backward kernel: fills the gradient buffers for L = Σ y·r + Σ logdet·rl, then compares each
// with central differences of L through `forward` (which recomputes y and logdet from the buffers).
void check_gradients(const std::function<void()>& forward, const Buffer& y, const Buffer& logdet,
                     const std::vector<double>& r, const std::vector<double>& rl,
                     std::vector<std::pair<Buffer*, const Buffer*>> params_and_grads, const std::string& what) {
  auto loss = [&] {
    forward();
    return dot(y, r) + dot(logdet, rl);
  };
  for (auto& [param, grad] : params_and_grads)
    EXPECT_TRUE(AllClose(grad->values(), numeric_gradient(*param, loss), kGradientTolerance)) << what;
}

// ================================================================================ affine coupling

double naive_log_sigma(double s, int scale) {
  if (scale == 0) return s;
  if (scale == 1) return std::tanh(s);
  return -std::log1p(std::exp(-(s + 2)));  // logsigmoid(s + 2)
}

class CouplingTest : public ::testing::TestWithParam<std::tuple<DType, int, bool>> {};

TEST_P(CouplingTest, ForwardReverseAndRoundTripMatchTheEquations) {
  const auto [dtype, scale, masked] = GetParam();
  Random rng(11 + scale);
  const int64_t batch = 3, features = 37;
  Buffer x = random_buffer(rng, dtype, {batch, 37}), t = random_buffer(rng, dtype, {batch, 37});
  Buffer s = random_buffer(rng, dtype, {batch, 37}, -1.5, 1.5);
  Buffer mask(DType::UInt8, {features});
  for (int64_t j = 0; j < features; ++j) mask.set(j, (j * 7) % 3 == 0);
  const OptView mview = masked ? OptView(bool_view(mask)) : std::nullopt;
  Buffer y(dtype, {batch, features}), logdet(dtype, {batch}), back(dtype, {batch, features}), ld_back(dtype, {batch});
  flow::affine_coupling_forward<DeviceType::CPU>(x.view(), t.opt(), s.opt(), mview, false, scale, y.view(),
                                                 logdet.view(), std::nullopt);
  std::vector<double> want(batch * features), want_ld(batch, 0.0);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t j = 0; j < features; ++j) {
      const int64_t i = b * features + j;
      const bool keep = masked && mask.get(j) != 0;
      const double ls = naive_log_sigma(s.get(i), scale);
      want[i] = keep ? x.get(i) : x.get(i) * std::exp(ls) + t.get(i);
      if (!keep) want_ld[b] += ls;
    }
  const Tolerance tol = dtype == DType::Float64 ? Tolerance{1e-12, 1e-12} : Tolerance{2e-5, 2e-5};
  EXPECT_TRUE(AllClose(y.values(), want, tol));
  EXPECT_TRUE(AllClose(logdet.values(), want_ld, tol));
  flow::affine_coupling_forward<DeviceType::CPU>(y.view(), t.opt(), s.opt(), mview, true, scale, back.view(),
                                                 ld_back.view(), std::nullopt);
  EXPECT_TRUE(AllClose(back.values(), x.values(), tol));
  for (auto& v : want_ld) v = -v;
  EXPECT_TRUE(AllClose(ld_back.values(), want_ld, tol));
}

TEST_P(CouplingTest, BackwardMatchesFiniteDifferencesInBothDirections) {
  const auto [dtype, scale, masked] = GetParam();
  if (dtype != DType::Float64) GTEST_SKIP() << "finite differences need float64";
  Random rng(23 + scale);
  const int64_t batch = 2, features = 5;
  Buffer mask(DType::UInt8, {features}, {1, 0, 0, 1, 0});
  const OptView mview = masked ? OptView(bool_view(mask)) : std::nullopt;
  for (bool reverse : {false, true}) {
    Buffer x = random_buffer(rng, dtype, {batch, features}), t = random_buffer(rng, dtype, {batch, features});
    Buffer s = random_buffer(rng, dtype, {batch, features});
    Buffer y(dtype, {batch, features}), logdet(dtype, {batch});
    const std::vector<double> r = rng.uniform(batch * features, -1, 1), rl = rng.uniform(batch, -1, 1);
    Buffer gy(dtype, {batch, features}, r), gl(dtype, {batch}, rl);
    Buffer dx(dtype, {batch, features}), dt(dtype, {batch, features}), ds(dtype, {batch, features});
    flow::affine_coupling_backward<DeviceType::CPU>(gy.view(), gl.view(), x.view(), t.opt(), s.opt(), mview, reverse,
                                                    scale, dx.opt(), dt.opt(), ds.opt());
    check_gradients(
        [&] {
          flow::affine_coupling_forward<DeviceType::CPU>(x.view(), t.opt(), s.opt(), mview, reverse, scale, y.view(),
                                                         logdet.view(), std::nullopt);
        },
        y, logdet, r, rl, {{&x, &dx}, {&t, &dt}, {&s, &ds}}, reverse ? "reverse" : "forward");
  }
}

INSTANTIATE_TEST_SUITE_P(Flow, CouplingTest,
                         ::testing::Combine(::testing::Values(DType::Float32, DType::Float64), ::testing::Values(0, 1, 2),
                                            ::testing::Bool()));

TEST(CouplingValidation, RejectsBadArgumentsWithoutWriting) {
  Buffer x(DType::Float32, {2, 4}), t(DType::Float32, {2, 3}), y = sentinel_buffer(DType::Float32, {2, 4});
  Buffer logdet = sentinel_buffer(DType::Float32, {2});
  auto call = [&](const OptView& shift, const OptView& log_scale, const OptView& mask, int scale) {
    flow::affine_coupling_forward<DeviceType::CPU>(x.view(), shift, log_scale, mask, false, scale, y.view(),
                                                   logdet.view(), std::nullopt);
  };
  Buffer good(DType::Float32, {2, 4}), float_mask(DType::Float32, {4});
  EXPECT_THROW(call(t.opt(), std::nullopt, std::nullopt, 0), Error);          // shift shape
  EXPECT_THROW(call(std::nullopt, std::nullopt, std::nullopt, 0), Error);     // neither
  EXPECT_THROW(call(good.opt(), good.opt(), float_mask.opt(), 0), Error);     // mask dtype
  EXPECT_THROW(call(good.opt(), good.opt(), std::nullopt, 3), Error);         // scale code
  EXPECT_TRUE(all_equal(y, kSentinel));
  EXPECT_TRUE(all_equal(logdet, kSentinel));
}

// ======================================================================================== actnorm

TEST(ActNorm, ForwardReverseAndGradientsMatchTheEquations) {
  for (DType dtype : {DType::Float32, DType::Float64}) {
    Random rng(5);
    const int64_t batch = 3, channels = 4, spatial = 6;
    Buffer x = random_buffer(rng, dtype, {batch, channels, 2, 3});
    Buffer scale(dtype, {channels}, {0.7, -1.3, 1.1, 0.5}), bias = random_buffer(rng, dtype, {channels});
    Buffer y(dtype, {batch, channels, 2, 3}), logdet(dtype, {batch}), back(dtype, {batch, channels, 2, 3});
    flow::actnorm_forward<DeviceType::CPU>(x.view(), scale.view(), bias.view(), false, y.view(), logdet.view());
    std::vector<double> want(x.numel()), want_ld(batch, 0.0);
    double sum_log = 0;
    for (int64_t c = 0; c < channels; ++c) sum_log += std::log(std::abs(scale.get(c)));
    for (int64_t i = 0; i < x.numel(); ++i) {
      const int64_t c = (i / spatial) % channels;
      want[i] = scale.get(c) * x.get(i) + bias.get(c);
    }
    for (auto& v : want_ld) v = spatial * sum_log;
    const Tolerance tol = forward_tolerance(dtype);
    EXPECT_TRUE(AllClose(y.values(), want, tol));
    EXPECT_TRUE(AllClose(logdet.values(), want_ld, tol));
    Buffer ld_back(dtype, {batch});
    flow::actnorm_forward<DeviceType::CPU>(y.view(), scale.view(), bias.view(), true, back.view(), ld_back.view());
    EXPECT_TRUE(AllClose(back.values(), x.values(), Tolerance{1e-5, 1e-5}));
    if (dtype != DType::Float64) continue;
    for (bool reverse : {false, true}) {
      const std::vector<double> r = rng.uniform(x.numel(), -1, 1), rl = rng.uniform(batch, -1, 1);
      Buffer gy(dtype, {batch, channels, 2, 3}, r), gl(dtype, {batch}, rl);
      Buffer dx(dtype, {batch, channels, 2, 3}), da(dtype, {channels}), db(dtype, {channels});
      flow::actnorm_backward<DeviceType::CPU>(gy.view(), gl.view(), x.view(), scale.view(), bias.view(), reverse,
                                              dx.opt(), da.opt(), db.opt(), std::nullopt);
      check_gradients(
          [&] {
            flow::actnorm_forward<DeviceType::CPU>(x.view(), scale.view(), bias.view(), reverse, y.view(),
                                                   logdet.view());
          },
          y, logdet, r, rl, {{&x, &dx}, {&scale, &da}, {&bias, &db}}, reverse ? "reverse" : "forward");
    }
  }
}

// ===================================================================================== invconv1x1

struct Invconv {
  int64_t c;
  Buffer perm, lower, upper, s;
  Invconv(Random& rng, DType dtype, int64_t channels, std::vector<double> permutation)
      : c(channels), perm(DType::Int64, {channels}, permutation), lower(random_buffer(rng, dtype, {channels, channels})),
        upper(random_buffer(rng, dtype, {channels, channels})), s(dtype, {channels}) {
    for (int64_t i = 0; i < c; ++i) s.set(i, (i % 2 ? -1.0 : 1.0) * (0.6 + 0.2 * i));
  }
  // W = P·L·(U + diag(s)) by the definition, in double.
  std::vector<double> weight() const {
    std::vector<double> lu(c * c, 0.0), w(c * c);
    for (int64_t i = 0; i < c; ++i)
      for (int64_t j = 0; j < c; ++j)
        for (int64_t k = 0; k < c; ++k) {
          const double l = k < i ? lower.get(i * c + k) : k == i ? 1.0 : 0.0;
          const double u = k < j ? upper.get(k * c + j) : k == j ? s.get(k) : 0.0;
          lu[i * c + j] += l * u;
        }
    for (int64_t i = 0; i < c; ++i)
      for (int64_t j = 0; j < c; ++j) w[i * c + j] = lu[static_cast<int64_t>(perm.get(i)) * c + j];
    return w;
  }
};

TEST(Invconv1x1, ForwardMatchesTheFactorProductAndReverseInvertsIt) {
  for (DType dtype : {DType::Float32, DType::Float64}) {
    Random rng(3);
    const int64_t batch = 2, c = 5, spatial = 7;
    Invconv p(rng, dtype, c, {3, 0, 4, 1, 2});
    Buffer x = random_buffer(rng, dtype, {batch, c, spatial});
    Buffer y(dtype, {batch, c, spatial}), logdet(dtype, {batch}), back(dtype, {batch, c, spatial}), ld(dtype, {batch});
    Buffer ws(DType::UInt8, {flow::invconv1x1_workspace_size<DeviceType::CPU>(x.view(), false)});
    flow::invconv1x1_forward<DeviceType::CPU>(x.view(), p.perm.view(), p.lower.view(), p.upper.view(), p.s.view(),
                                              false, y.view(), logdet.view(), ws.opt());
    const std::vector<double> w = p.weight();
    std::vector<double> want(x.numel(), 0.0), want_ld(batch, 0.0);
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t i = 0; i < c; ++i)
        for (int64_t q = 0; q < spatial; ++q)
          for (int64_t j = 0; j < c; ++j) want[(b * c + i) * spatial + q] += w[i * c + j] * x.get((b * c + j) * spatial + q);
    double sum_log = 0;
    for (int64_t i = 0; i < c; ++i) sum_log += std::log(std::abs(p.s.get(i)));
    for (auto& v : want_ld) v = spatial * sum_log;
    const Tolerance tol = dtype == DType::Float64 ? Tolerance{1e-12, 1e-12} : Tolerance{1e-5, 1e-5};
    EXPECT_TRUE(AllClose(y.values(), want, tol));
    EXPECT_TRUE(AllClose(logdet.values(), want_ld, tol));
    flow::invconv1x1_forward<DeviceType::CPU>(y.view(), p.perm.view(), p.lower.view(), p.upper.view(), p.s.view(),
                                              true, back.view(), ld.view(), ws.opt());
    EXPECT_TRUE(AllClose(back.values(), x.values(), dtype == DType::Float64 ? Tolerance{1e-11, 1e-11}
                                                                            : Tolerance{2e-5, 2e-5}));
  }
}

TEST(Invconv1x1, BackwardMatchesFiniteDifferencesInBothDirections) {
  const DType dtype = DType::Float64;
  Random rng(9);
  const int64_t batch = 2, c = 4, spatial = 3;
  for (bool reverse : {false, true}) {
    Invconv p(rng, dtype, c, {2, 3, 1, 0});
    Buffer x = random_buffer(rng, dtype, {batch, c, spatial});
    Buffer y(dtype, {batch, c, spatial}), logdet(dtype, {batch});
    Buffer ws(DType::UInt8, {flow::invconv1x1_workspace_size<DeviceType::CPU>(x.view(), reverse)});
    auto forward = [&] {
      flow::invconv1x1_forward<DeviceType::CPU>(x.view(), p.perm.view(), p.lower.view(), p.upper.view(), p.s.view(),
                                                reverse, y.view(), logdet.view(), ws.opt());
    };
    forward();
    const Buffer out = y;
    const std::vector<double> r = rng.uniform(x.numel(), -1, 1), rl = rng.uniform(batch, -1, 1);
    Buffer gy(dtype, {batch, c, spatial}, r), gl(dtype, {batch}, rl);
    Buffer dx(dtype, {batch, c, spatial}), dl(dtype, {c, c}), du(dtype, {c, c}), ds(dtype, {c});
    flow::invconv1x1_backward<DeviceType::CPU>(gy.view(), gl.view(), x.view(), out.view(), p.perm.view(),
                                               p.lower.view(), p.upper.view(), p.s.view(), reverse, dx.view(), dl.opt(),
                                               du.opt(), ds.opt(), ws.opt());
    // The unused triangles have no influence, so their numeric gradient is 0 like the kernel's.
    check_gradients(forward, y, logdet, r, rl, {{&x, &dx}, {&p.lower, &dl}, {&p.upper, &du}, {&p.s, &ds}},
                    reverse ? "reverse" : "forward");
  }
}

TEST(Invconv1x1, RejectsANonPermutation) {
  Random rng(1);
  Invconv p(rng, DType::Float32, 3, {0, 2, 2});
  Buffer x(DType::Float32, {1, 3, 2}), y = sentinel_buffer(DType::Float32, {1, 3, 2});
  Buffer logdet = sentinel_buffer(DType::Float32, {1});
  Buffer ws(DType::UInt8, {flow::invconv1x1_workspace_size<DeviceType::CPU>(x.view(), false)});
  try {
    flow::invconv1x1_forward<DeviceType::CPU>(x.view(), p.perm.view(), p.lower.view(), p.upper.view(), p.s.view(),
                                              false, y.view(), logdet.view(), ws.opt());
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'perm' expected a permutation"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(all_equal(y, kSentinel));
}

// ==================================================================================== planar flow

struct PlanarNaive {
  std::vector<double> u_hat;
  double m;
  PlanarNaive(const Buffer& u, const Buffer& w) {
    const int64_t d = u.numel();
    double wu = 0, ww = 0;
    for (int64_t i = 0; i < d; ++i) wu += w.get(i) * u.get(i), ww += w.get(i) * w.get(i);
    const double mwu = -1 + std::log1p(std::exp(wu));
    u_hat.resize(d);
    m = 0;
    for (int64_t i = 0; i < d; ++i) u_hat[i] = u.get(i) + (mwu - wu) * w.get(i) / ww, m += w.get(i) * u_hat[i];
  }
};

TEST(PlanarFlow, ForwardMatchesTheEquationsAndReverseInvertsIt) {
  for (DType dtype : {DType::Float32, DType::Float64}) {
    Random rng(17);
    const int64_t batch = 6, d = 9;
    Buffer z = random_buffer(rng, dtype, {batch, d}), u = random_buffer(rng, dtype, {d}, -2, 2);
    Buffer w = random_buffer(rng, dtype, {d}), b(dtype, {1}, {0.3});
    Buffer f(dtype, {batch, d}), logdet(dtype, {batch}), back(dtype, {batch, d}), ld(dtype, {batch});
    Buffer ws(DType::UInt8, {flow::planar_flow_workspace_size<DeviceType::CPU>(z.view(), false)});
    flow::planar_flow_forward<DeviceType::CPU>(z.view(), u.view(), w.view(), b.view(), false, f.view(), logdet.view(),
                                               ws.opt());
    const PlanarNaive naive(u, w);
    std::vector<double> want(z.numel()), want_ld(batch);
    for (int64_t r = 0; r < batch; ++r) {
      double a = 0.3;
      for (int64_t i = 0; i < d; ++i) a += w.get(i) * z.get(r * d + i);
      const double h = std::tanh(a);
      for (int64_t i = 0; i < d; ++i) want[r * d + i] = z.get(r * d + i) + naive.u_hat[i] * h;
      want_ld[r] = std::log(std::abs(1 + (1 - h * h) * naive.m));
    }
    const Tolerance tol = dtype == DType::Float64 ? Tolerance{1e-12, 1e-12} : Tolerance{2e-5, 2e-5};
    EXPECT_TRUE(AllClose(f.values(), want, tol));
    EXPECT_TRUE(AllClose(logdet.values(), want_ld, tol));
    flow::planar_flow_forward<DeviceType::CPU>(f.view(), u.view(), w.view(), b.view(), true, back.view(), ld.view(),
                                               ws.opt());
    EXPECT_TRUE(AllClose(back.values(), z.values(), tol));
    for (auto& v : want_ld) v = -v;
    EXPECT_TRUE(AllClose(ld.values(), want_ld, Tolerance{tol.rtol * 10, tol.atol * 10}));
  }
}

TEST(PlanarFlow, InvertsWhenWTransposeUIsFarBelowMinusOne) {
  Random rng(29);
  const int64_t batch = 64, d = 4;
  Buffer w = random_buffer(rng, DType::Float64, {d}), u(DType::Float64, {d}), b(DType::Float64, {1}, {-0.2});
  for (int64_t i = 0; i < d; ++i) u.set(i, -30 * w.get(i));  // wᵀu ≪ −1, so wᵀû → −1
  Buffer z = random_buffer(rng, DType::Float64, {batch, d}, -3, 3);
  Buffer f(DType::Float64, {batch, d}), back(DType::Float64, {batch, d}), l1(DType::Float64, {batch}),
      l2(DType::Float64, {batch});
  Buffer ws(DType::UInt8, {flow::planar_flow_workspace_size<DeviceType::CPU>(z.view(), false)});
  flow::planar_flow_forward<DeviceType::CPU>(z.view(), u.view(), w.view(), b.view(), false, f.view(), l1.view(), ws.opt());
  flow::planar_flow_forward<DeviceType::CPU>(f.view(), u.view(), w.view(), b.view(), true, back.view(), l2.view(), ws.opt());
  EXPECT_TRUE(AllClose(back.values(), z.values(), Tolerance{1e-9, 1e-9}));
}

TEST(PlanarFlow, BackwardMatchesFiniteDifferencesInBothDirections) {
  const DType dtype = DType::Float64;
  Random rng(31);
  const int64_t batch = 3, d = 4;
  for (bool reverse : {false, true}) {
    Buffer z = random_buffer(rng, dtype, {batch, d}), u = random_buffer(rng, dtype, {d}, -2, 2);
    Buffer w = random_buffer(rng, dtype, {d}), b(dtype, {1}, {0.1});
    Buffer f(dtype, {batch, d}), logdet(dtype, {batch});
    Buffer ws(DType::UInt8, {flow::planar_flow_workspace_size<DeviceType::CPU>(z.view(), true)});
    auto forward = [&] {
      flow::planar_flow_forward<DeviceType::CPU>(z.view(), u.view(), w.view(), b.view(), reverse, f.view(),
                                                 logdet.view(), ws.opt());
    };
    forward();
    const Buffer out = f;
    const std::vector<double> r = rng.uniform(z.numel(), -1, 1), rl = rng.uniform(batch, -1, 1);
    Buffer gf(dtype, {batch, d}, r), gl(dtype, {batch}, rl);
    Buffer dz(dtype, {batch, d}), du(dtype, {d}), dw(dtype, {d}), db(dtype, {1});
    flow::planar_flow_backward<DeviceType::CPU>(gf.view(), gl.view(), z.view(), out.view(), u.view(), w.view(),
                                                b.view(), reverse, dz.opt(), du.opt(), dw.opt(), db.opt(), ws.opt());
    check_gradients(forward, f, logdet, r, rl, {{&z, &dz}, {&u, &du}, {&w, &dw}, {&b, &db}},
                    reverse ? "reverse" : "forward");
  }
}

}  // namespace
}  // namespace replearn::test
