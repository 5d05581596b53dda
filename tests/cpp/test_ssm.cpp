// State-space family: CPU kernels against naive double loops and finite differences, and validation.
#include <cmath>

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
