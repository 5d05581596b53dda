// Spectral normalization (csrc/norm): the CPU kernels against a naive double loop written from the
// formulas, the backward against central finite differences (u, v fixed: n_power_iterations = 0),
// thread-count independence, and validation that leaves every output untouched.
#include <cmath>
#include <optional>
#include <vector>

#include "core/error.h"
#include "norm/norm.h"
#include "test_helpers.h"

using namespace replearn;
using namespace replearn::norm;
using namespace replearn::test;

namespace {

constexpr DeviceType CPU = DeviceType::CPU;
using Values = std::vector<double>;

struct SpectralReference {
  Values w, u, v;
  double sigma;
};

// Power iteration written out with double loops: v = normalize(Wᵀu), u = normalize(W v).
SpectralReference spectral_reference(const Buffer& W, int64_t rows, int64_t cols, Values u, Values v,
                                     int iterations, double eps, std::optional<double> coeff) {
  auto normalize = [eps](Values& x) {
    double sq = 0;
    for (double e : x) sq += e * e;
    const double n = std::max(std::sqrt(sq), eps);
    for (double& e : x) e /= n;
  };
  for (int it = 0; it < iterations; ++it) {
    for (int64_t j = 0; j < cols; ++j) {
      v[j] = 0;
      for (int64_t i = 0; i < rows; ++i) v[j] += W.get(i * cols + j) * u[i];
    }
    normalize(v);
    for (int64_t i = 0; i < rows; ++i) {
      u[i] = 0;
      for (int64_t j = 0; j < cols; ++j) u[i] += W.get(i * cols + j) * v[j];
    }
    normalize(u);
  }
  double sigma = 0;
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) sigma += u[i] * W.get(i * cols + j) * v[j];
  const double factor = coeff ? std::max(1.0, sigma / *coeff) : sigma;
  Values w(rows * cols);
  for (int64_t e = 0; e < rows * cols; ++e) w[e] = W.get(e) / factor;
  return {w, u, v, sigma};
}

struct Case {
  std::vector<int64_t> shape;
  int iterations;
  std::optional<double> coeff;
};

const std::vector<Case> kCases = {
    {{5, 3}, 1, std::nullopt}, {{4, 3, 3, 3}, 3, std::nullopt}, {{7}, 2, std::nullopt}, {{1, 1}, 1, std::nullopt},
    {{3, 40}, 2, 0.9},         {{6, 4}, 1, 100.0},              {{300, 70}, 4, std::nullopt}, {{9, 5}, 0, std::nullopt},
    {{9, 5}, 0, 0.5}};

class SpectralNormCpu : public ::testing::TestWithParam<DType> {};

TEST_P(SpectralNormCpu, ForwardMatchesDoubleLoop) {
  const DType dtype = GetParam();
  const Tolerance tol = dtype == DType::Float64 ? Tolerance{1e-10, 1e-12} : Tolerance{2e-4, 2e-5};
  Random rng(11);
  for (const Case& c : kCases) {
    SCOPED_TRACE(shape_name(c.shape) + " iterations " + std::to_string(c.iterations));
    const int64_t rows = c.shape[0], cols = product(c.shape, 1, c.shape.size());
    ScopedThreads threads(threads_for(rows * cols));
    const Buffer W = random_buffer(rng, dtype, c.shape), u = random_buffer(rng, dtype, {rows}),
                 v = random_buffer(rng, dtype, {cols});
    Buffer w = sentinel_buffer(dtype, c.shape), u_out = sentinel_buffer(dtype, {rows}),
           v_out = sentinel_buffer(dtype, {cols}), sigma = sentinel_buffer(dtype, {1});
    spectral_norm_forward<CPU>(W.view(), u.view(), c.iterations == 0 ? v.opt() : std::nullopt, c.iterations, 1e-12,
                               c.coeff, w.view(), u_out.view(), v_out.view(), sigma.view(), std::nullopt);
    const SpectralReference ref =
        spectral_reference(W, rows, cols, u.values(), c.iterations == 0 ? v.values() : Values(cols, 0.0),
                           c.iterations, 1e-12, c.coeff);
    EXPECT_TRUE(AllClose(w.values(), ref.w, tol)) << "w";
    EXPECT_TRUE(AllClose(u_out.values(), ref.u, tol)) << "u";
    EXPECT_TRUE(AllClose(v_out.values(), ref.v, tol)) << "v";
    EXPECT_TRUE(AllClose(sigma.values(), {ref.sigma}, tol)) << "sigma";
  }
}

// Power iteration converges to the largest singular value: a diagonal matrix's is known exactly.
TEST(SpectralNormCpuFloat64, ConvergesToTheLargestSingularValue) {
  const int64_t n = 6;
  Values diag = {0.5, -3.0, 1.0, 2.0, 0.25, 1.5}, values(n * n, 0.0);
  for (int64_t i = 0; i < n; ++i) values[i * n + i] = diag[i];
  const Buffer W(DType::Float64, {n, n}, values), u(DType::Float64, {n}, Values(n, 1.0));
  Buffer w(DType::Float64, {n, n}), u_out(DType::Float64, {n}), v_out(DType::Float64, {n}), sigma(DType::Float64, {1});
  spectral_norm_forward<CPU>(W.view(), u.view(), std::nullopt, 200, 1e-12, std::nullopt, w.view(), u_out.view(),
                             v_out.view(), sigma.view(), std::nullopt);
  EXPECT_NEAR(sigma.get(0), 3.0, 1e-10);
  EXPECT_NEAR(w.get(1 * n + 1), -1.0, 1e-10);
}

// dW against central differences of L = Σ w·r + r_σ·σ with u, v fixed (n_power_iterations = 0).
TEST(SpectralNormCpuFloat64, BackwardMatchesFiniteDifferences) {
  Random rng(5);
  for (const Case& c : kCases) {
    SCOPED_TRACE(shape_name(c.shape) + (c.coeff ? " coeff " + std::to_string(*c.coeff) : ""));
    const int64_t rows = c.shape[0], cols = product(c.shape, 1, c.shape.size());
    if (rows * cols > 200) continue;  // two forwards per element: small problems only
    Buffer W = random_buffer(rng, DType::Float64, c.shape);
    const Buffer u = random_buffer(rng, DType::Float64, {rows}), v = random_buffer(rng, DType::Float64, {cols});
    const Values r = rng.uniform(rows * cols, -1, 1);
    const double r_sigma = 0.7;
    Buffer w(DType::Float64, c.shape), u_out(DType::Float64, {rows}), v_out(DType::Float64, {cols}),
        sigma(DType::Float64, {1});
    auto forward = [&] {
      spectral_norm_forward<CPU>(W.view(), u.view(), v.opt(), 0, 1e-12, c.coeff, w.view(), u_out.view(),
                                 v_out.view(), sigma.view(), std::nullopt);
    };
    const Values numeric = numeric_gradient(W, [&] {
      forward();
      return dot(w, r) + r_sigma * sigma.get(0);
    });
    forward();
    const Buffer grad_w(DType::Float64, c.shape, r), grad_sigma(DType::Float64, {1}, {r_sigma});
    Buffer grad_weight = sentinel_buffer(DType::Float64, c.shape);
    spectral_norm_backward<CPU>(grad_w.view(), grad_sigma.opt(), W.view(), u_out.view(), v_out.view(), sigma.view(),
                                c.coeff, grad_weight.view(), std::nullopt);
    EXPECT_TRUE(AllClose(grad_weight.values(), numeric, kGradientTolerance));
  }
}

TEST(SpectralNormCpuFloat64, DoesNotDependOnThreadCount) {
  Random rng(3);
  const Buffer W = random_buffer(rng, DType::Float64, {257, 131}), u = random_buffer(rng, DType::Float64, {257});
  const Buffer g = random_buffer(rng, DType::Float64, {257, 131});
  std::vector<Values> results;
  for (int threads : {1, 2, 3}) {
    ScopedThreads scope(threads);
    Buffer w(DType::Float64, {257, 131}), u_out(DType::Float64, {257}), v_out(DType::Float64, {131}),
        sigma(DType::Float64, {1}), dW(DType::Float64, {257, 131});
    spectral_norm_forward<CPU>(W.view(), u.view(), std::nullopt, 3, 1e-12, std::nullopt, w.view(), u_out.view(),
                               v_out.view(), sigma.view(), std::nullopt);
    spectral_norm_backward<CPU>(g.view(), std::nullopt, W.view(), u_out.view(), v_out.view(), sigma.view(),
                                std::nullopt, dW.view(), std::nullopt);
    Values all = w.values();
    for (double e : dW.values()) all.push_back(e);
    all.push_back(sigma.get(0));
    results.push_back(all);
  }
  EXPECT_EQ(results[0], results[1]);
  EXPECT_EQ(results[0], results[2]);
}

// Bad arguments throw a replearn::Error naming the argument, and no output is written.
TEST(SpectralNormCpuFloat32, ValidationLeavesOutputsUntouched) {
  const DType f = DType::Float32;
  const Buffer W(f, {4, 3}), u(f, {4}), v(f, {3}), wrong_u(f, {3}), wrong_v(f, {4}), u64(DType::Float64, {4});
  Buffer w = sentinel_buffer(f, {4, 3}), u_out = sentinel_buffer(f, {4}), v_out = sentinel_buffer(f, {3}),
         sigma = sentinel_buffer(f, {1});
  struct Bad {
    const char* arg;
    std::function<void()> call;
  };
  auto forward = [&](const Buffer& uu, std::optional<TensorView> vv, int iterations, double eps,
                     std::optional<double> coeff, const Buffer& sig) {
    spectral_norm_forward<CPU>(W.view(), uu.view(), vv, iterations, eps, coeff, w.view(), u_out.view(), v_out.view(),
                               sig.view(), std::nullopt);
  };
  const Buffer sigma64(DType::Float64, {1});
  const std::vector<Bad> cases = {
      {"'u'", [&] { forward(wrong_u, std::nullopt, 1, 1e-12, std::nullopt, sigma); }},
      {"'u'", [&] { forward(u64, std::nullopt, 1, 1e-12, std::nullopt, sigma); }},
      {"'v'", [&] { forward(u, std::nullopt, 0, 1e-12, std::nullopt, sigma); }},
      {"'v'", [&] { forward(u, wrong_v.view(), 0, 1e-12, std::nullopt, sigma); }},
      {"'n_power_iterations'", [&] { forward(u, std::nullopt, -2, 1e-12, std::nullopt, sigma); }},
      {"'eps'", [&] { forward(u, std::nullopt, 1, -1.0, std::nullopt, sigma); }},
      {"'coeff'", [&] { forward(u, std::nullopt, 1, 1e-12, -0.5, sigma); }},
      {"'sigma'", [&] { forward(u, std::nullopt, 1, 1e-12, std::nullopt, sigma64); }},
  };
  for (const Bad& bad : cases) {
    try {
      bad.call();
      ADD_FAILURE() << "no error for " << bad.arg;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(bad.arg), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("spectral_norm_forward"), std::string::npos) << e.what();
    }
  }
  EXPECT_TRUE(all_equal(w, kSentinel) && all_equal(u_out, kSentinel) && all_equal(v_out, kSentinel) &&
              all_equal(sigma, kSentinel));
  Buffer dW = sentinel_buffer(f, {4, 3});
  try {
    spectral_norm_backward<CPU>(W.view(), std::nullopt, W.view(), wrong_u.view(), v.view(), sigma.view(),
                                std::nullopt, dW.view(), std::nullopt);
    ADD_FAILURE() << "no error for a wrong u in backward";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'u'"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(all_equal(dW, kSentinel));
}

INSTANTIATE_TEST_SUITE_P(Dtypes, SpectralNormCpu, ::testing::Values(DType::Float64, DType::Float32), DTypeName());

}  // namespace
