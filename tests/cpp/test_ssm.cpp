// State-space family: CPU kernels against naive double loops and finite differences, and validation.
#include <cmath>
#include <cstring>
#include <limits>

#include "ssm/lanes.h"
#include "ssm/ssm.h"
#include "test_helpers.h"

namespace replearn::test {
namespace {

using ssm::OptView;

// y for (batch, dim, L), selective B/C (batch, groups, N, L), D, softplus, z gate: the naive loop.
std::vector<double> naive_scan(const Buffer& u, const Buffer& delta, const Buffer& A, const Buffer& B, const Buffer& C,
                               const Buffer& D, const Buffer& z, int64_t batch, int64_t dim, int64_t L, int64_t N,
                               int64_t groups) {
  std::vector<double> y(batch * dim * L);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t d = 0; d < dim; ++d) {
      const int64_t g = d / (dim / groups);
      std::vector<double> h(N, 0.0);
      for (int64_t t = 0; t < L; ++t) {
        const int64_t i = (b * dim + d) * L + t;
        const double dt = std::log1p(std::exp(delta.get(i)));
        double acc = 0;
        for (int64_t n = 0; n < N; ++n) {
          const int64_t bi = ((b * groups + g) * N + n) * L + t;
          h[n] = std::exp(dt * A.get(d * N + n)) * h[n] + dt * B.get(bi) * u.get(i);
          acc += C.get(bi) * h[n];
        }
        acc += D.get(d) * u.get(i);
        const double zi = z.get(i);
        y[i] = acc * zi / (1 + std::exp(-zi));
      }
    }
  return y;
}

struct ScanCase {
  int64_t batch = 1, dim = 2, L = 66, N = 2, groups = 2;  // L crosses a checkpoint chunk
};

TEST(SelectiveScan, ForwardMatchesNaiveLoopAndBackwardMatchesFiniteDifferences) {
  ScanCase c;
  ScopedThreads threads(1);
  Random rng(7);
  const DType dt = DType::Float64;
  Buffer u = random_buffer(rng, dt, {c.batch, c.dim, c.L}), delta = random_buffer(rng, dt, {c.batch, c.dim, c.L}, -2, 0);
  Buffer A = random_buffer(rng, dt, {c.dim, c.N}, -1.5, -0.2), D = random_buffer(rng, dt, {c.dim});
  Buffer B = random_buffer(rng, dt, {c.batch, c.groups, c.N, c.L}), C = random_buffer(rng, dt, {c.batch, c.groups, c.N, c.L});
  Buffer z = random_buffer(rng, dt, {c.batch, c.dim, c.L}), y(dt, {c.batch, c.dim, c.L});
  Buffer ck(dt, {c.batch, c.dim, ssm::scan_chunks(c.L), c.N});
  auto forward = [&]() {
    ssm::selective_scan_forward<DeviceType::CPU>(u.view(), delta.view(), A.view(), B.view(), C.view(), D.opt(),
                                                 z.opt(), std::nullopt, true, y.view(), ck.opt());
  };
  forward();
  EXPECT_TRUE(AllClose(y.values(), naive_scan(u, delta, A, B, C, D, z, c.batch, c.dim, c.L, c.N, c.groups),
                       forward_tolerance(dt)));
  const std::vector<double> r = Random(9).uniform(y.numel(), -1, 1);
  Buffer gout(dt, {c.batch, c.dim, c.L}, r);
  Buffer du(dt, u.sizes()), dd(dt, u.sizes()), dA(dt, A.sizes()), dB(dt, B.sizes()), dC(dt, C.sizes()),
      dD(dt, D.sizes()), dz(dt, z.sizes());
  Buffer ws(DType::UInt8, {ssm::selective_scan_backward_workspace_size<DeviceType::CPU>(u.view(), A.view(), B.view(),
                                                                                         C.view())});
  ssm::selective_scan_backward<DeviceType::CPU>(gout.view(), u.view(), delta.view(), A.view(), B.view(), C.view(),
                                                D.opt(), z.opt(), std::nullopt, true, ck.view(), std::nullopt,
                                                du.view(), dd.view(), dA.view(), dB.view(), dC.view(), dD.opt(),
                                                dz.opt(), std::nullopt, ws.opt());
  auto loss = [&]() {
    forward();
    return dot(y, r);
  };
  for (auto [param, grad] : {std::pair{&u, &du}, {&delta, &dd}, {&A, &dA}, {&B, &dB}, {&C, &dC}, {&D, &dD}, {&z, &dz}})
    EXPECT_TRUE(AllClose(grad->values(), numeric_gradient(*param, loss), kGradientTolerance));
}

// Several lane blocks per group and a partial one (20 channels a group: 16 + 4 float32 lanes), N
// above one vector of lanes, L across chunks, two threads: float32 against the double loop.
TEST(SelectiveScan, Float32BlocksOfLanesMatchTheNaiveLoop) {
  const int64_t batch = 2, dim = 40, L = 70, N = 19, groups = 2;
  ScopedThreads threads(2);
  Random rng(11);
  const DType dt = DType::Float32;
  Buffer u = random_buffer(rng, dt, {batch, dim, L}), delta = random_buffer(rng, dt, {batch, dim, L}, -2, 0);
  Buffer A = random_buffer(rng, dt, {dim, N}, -1.5, -0.2), D = random_buffer(rng, dt, {dim});
  Buffer B = random_buffer(rng, dt, {batch, groups, N, L}), C = random_buffer(rng, dt, {batch, groups, N, L});
  Buffer z = random_buffer(rng, dt, {batch, dim, L}), y(dt, {batch, dim, L});
  ssm::selective_scan_forward<DeviceType::CPU>(u.view(), delta.view(), A.view(), B.view(), C.view(), D.opt(), z.opt(),
                                               std::nullopt, true, y.view(), std::nullopt);
  EXPECT_TRUE(AllClose(y.values(), naive_scan(u, delta, A, B, C, D, z, batch, dim, L, N, groups), {1e-5, 2e-5}));
}

// Distance in units in the last place between two finite floats of the same sign (0 and denormals
// included: the bit patterns of same-signed floats are ordered like their values).
int64_t ulp_distance(float a, float b) {
  int32_t ia, ib;
  std::memcpy(&ia, &a, 4);
  std::memcpy(&ib, &b, 4);
  return std::llabs(static_cast<int64_t>(ia) - static_cast<int64_t>(ib));
}

// Checks exp over float32 bit patterns [first, last] with the given stride, both the scan's vector
// exp (built with the kernels' flags) and the portable scalar one (built with the tests' flags),
// against std::exp in double rounded to float.
void expect_exp_within_two_ulp(uint32_t first, uint32_t last, uint32_t stride) {
  std::vector<float> x, y;
  for (uint64_t bits = first; bits <= last; bits += stride) {
    const uint32_t b32 = static_cast<uint32_t>(bits);
    float v;
    std::memcpy(&v, &b32, 4);
    if (!std::isnan(v)) x.push_back(v);
  }
  y.resize(x.size());
  ssm::scan_exp(x.data(), y.data(), static_cast<int64_t>(x.size()));
  int64_t worst = 0, worst_scalar = 0;
  float worst_at = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const float expected = static_cast<float>(std::exp(static_cast<double>(x[i])));
    const float scalar = ssm::exp_approx(x[i]);
    for (float got : {y[i], scalar}) {
      if (std::isinf(expected)) {
        ASSERT_TRUE(std::isinf(got) && got > 0) << "exp(" << x[i] << ") = " << got;
        continue;
      }
      ASSERT_TRUE(std::isfinite(got) && got >= 0) << "exp(" << x[i] << ") = " << got;
    }
    if (std::isinf(expected)) continue;
    const int64_t d = ulp_distance(y[i], expected);
    if (d > worst) worst = d, worst_at = x[i];
    worst_scalar = std::max(worst_scalar, ulp_distance(scalar, expected));
  }
  EXPECT_LE(worst, 2) << "worst at x = " << worst_at;
  EXPECT_LE(worst_scalar, 2);
}

TEST(ScanExp, WithinTwoUlpOfStdExpOverAllFloat32) {
  // Every 251st bit pattern of each sign (normal, denormal, huge), then densely where the result
  // underflows to denormals and to zero (x in [−104, −87]) and where it overflows (x near 88.72).
  expect_exp_within_two_ulp(0x00000000u, 0x7f800000u, 251);
  expect_exp_within_two_ulp(0x80000000u, 0xff800000u, 251);
  expect_exp_within_two_ulp(0xc2ae0000u, 0xc2d00000u, 3);  // −87 … −104
  expect_exp_within_two_ulp(0x42b10000u, 0x42b20000u, 1);  // 88.5 … 89
}

TEST(ScanExp, SpecialValues) {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  const float x[] = {-inf, inf, nan, 0.0f, -0.0f, -1000.0f, 1000.0f, 88.72f, 88.73f, -103.9f, -104.5f};
  float y[std::size(x)];
  ssm::scan_exp(x, y, std::size(x));
  {
    const float* r = y;
    EXPECT_EQ(r[0], 0.0f);
    EXPECT_EQ(r[1], inf);
    EXPECT_TRUE(std::isnan(r[2]));
    EXPECT_EQ(r[3], 1.0f);
    EXPECT_EQ(r[4], 1.0f);
    EXPECT_EQ(r[5], 0.0f);
    EXPECT_EQ(r[6], inf);
    EXPECT_TRUE(std::isfinite(r[7]));
    EXPECT_EQ(r[8], inf);
    EXPECT_GT(r[9], 0.0f);  // e^−103.9 ≈ 7.7e−46 rounds up to the smallest denormal
    EXPECT_EQ(r[10], 0.0f);
  }
  EXPECT_EQ(ssm::exp_approx(-inf), 0.0f);
  EXPECT_EQ(ssm::exp_approx(inf), inf);
  EXPECT_TRUE(std::isnan(ssm::exp_approx(nan)));
}

TEST(SelectiveScan, RejectsBadShapesBeforeWriting) {
  const DType dt = DType::Float32;
  Buffer u(dt, {2, 4, 8}), A(dt, {4, 3}), B(dt, {2, 3, 3, 8}), y = sentinel_buffer(dt, {2, 4, 8});
  y.snapshot();
  try {
    ssm::selective_scan_forward<DeviceType::CPU>(u.view(), u.view(), A.view(), B.view(), B.view(), std::nullopt,
                                                 std::nullopt, std::nullopt, false, y.view(), std::nullopt);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("argument 'B'"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(y.unchanged_since_snapshot());
}

// A batch of 0 sequences (and an empty length): nothing to write, no division by the item count
// (the forward's slice count once divided by batch · groups, a SIGFPE).
TEST(SelectiveScan, EmptyInputsWriteNothing) {
  const DType dt = DType::Float32;
  for (const auto [batch, L] : {std::pair<int64_t, int64_t>{0, 8}, {2, 0}}) {
    SCOPED_TRACE("batch " + std::to_string(batch) + ", L " + std::to_string(L));
    Buffer u(dt, {batch, 4, L}), A(dt, {4, 3}), B(dt, {batch, 2, 3, L}), y(dt, {batch, 4, L});
    TensorView u_view = u.view(), B_view = B.view(), y_view = y.view();
    u_view.data = B_view.data = y_view.data = nullptr;  // as torch hands over empty tensors
    EXPECT_NO_THROW(ssm::selective_scan_forward<DeviceType::CPU>(u_view, u_view, A.view(), B_view, B_view,
                                                                 std::nullopt, std::nullopt, std::nullopt, true,
                                                                 y_view, std::nullopt));
  }
}

TEST(CausalConv1d, ForwardMatchesNaiveLoopAndBackwardMatchesFiniteDifferences) {
  const DType dt = DType::Float64;
  Random rng(3);
  for (int64_t W : {2, 3, 4}) {
    const int64_t batch = 2, dim = 3, L = 11;
    Buffer x = random_buffer(rng, dt, {batch, dim, L}), w = random_buffer(rng, dt, {dim, W});
    Buffer b = random_buffer(rng, dt, {dim}), init = random_buffer(rng, dt, {batch, dim, W - 1});
    Buffer y(dt, {batch, dim, L}), fin(dt, {batch, dim, W - 1});
    auto forward = [&]() {
      ssm::causal_conv1d_forward<DeviceType::CPU>(x.view(), w.view(), b.opt(), init.opt(), 1, y.view(), fin.opt());
    };
    forward();
    std::vector<double> expected(y.numel());
    for (int64_t r = 0; r < batch * dim; ++r)
      for (int64_t t = 0; t < L; ++t) {
        double acc = b.get(r % dim);
        for (int64_t k = 0; k < W; ++k) {
          const int64_t i = t - (W - 1) + k;
          acc += w.get((r % dim) * W + k) * (i >= 0 ? x.get(r * L + i) : init.get(r * (W - 1) + W - 1 + i));
        }
        expected[r * L + t] = acc / (1 + std::exp(-acc));
      }
    EXPECT_TRUE(AllClose(y.values(), expected, forward_tolerance(dt)));
    const std::vector<double> r = Random(5).uniform(y.numel(), -1, 1), rf = Random(6).uniform(fin.numel(), -1, 1);
    Buffer gy(dt, y.sizes(), r), gf(dt, fin.sizes(), rf);
    Buffer dx(dt, x.sizes()), dw(dt, w.sizes()), db(dt, b.sizes()), dinit(dt, init.sizes());
    Buffer ws(DType::UInt8, {ssm::causal_conv1d_backward_workspace_size<DeviceType::CPU>(x.view(), w.view())});
    ssm::causal_conv1d_backward<DeviceType::CPU>(gy.view(), x.view(), w.view(), b.opt(), init.opt(), 1, gf.opt(),
                                                 dx.view(), dw.view(), db.opt(), dinit.opt(), ws.opt());
    auto loss = [&]() {
      forward();
      return dot(y, r) + dot(fin, rf);
    };
    for (auto [param, grad] : {std::pair{&x, &dx}, {&w, &dw}, {&b, &db}, {&init, &dinit}})
      EXPECT_TRUE(AllClose(grad->values(), numeric_gradient(*param, loss), kGradientTolerance)) << "W=" << W;
  }
}

}  // namespace
}  // namespace replearn::test
