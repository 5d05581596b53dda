// CPU kernels of the attention family.
//
//   - forward against a naive double loop (the softmax over each row materialized), float64 and
//     float32, over causal (Tq < Tk and Tq > Tk), key padding, GQA/MQA, broadcast biases, dropout,
//     and sizes that straddle the kernels' 64-row/64-key tiles;
//   - backward in float64 against central finite differences of L = Σ out·r + Σ lse·s, for q, k, v
//     and broadcast biases (with dropout: the same mask in both directions);
//   - rows that see no key: zero output, -inf log-sum-exp, zero and finite gradients;
//   - the dropout mask keeps a fraction 1 − p of elements;
//   - bad arguments throw replearn::Error naming the argument, without writing the outputs.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "attention/attention.h"
#include "core/error.h"
#include "test_helpers.h"

namespace replearn::attention {
namespace {

using test::AllClose;
using test::Buffer;
using test::kGradientTolerance;
using test::kSentinel;
using test::Random;
using test::ScopedThreads;
constexpr auto CPU = DeviceType::CPU;
constexpr double kInf = std::numeric_limits<double>::infinity();

struct Config {
  int64_t B, H, Hkv, Tq, Tk, d, dv;
  std::vector<int64_t> bias_shape;  // empty: no bias
  bool causal = false, padding = false;
  double dropout_p = 0;
};

std::string name(const Config& c) {
  std::string s = "B" + std::to_string(c.B) + " H" + std::to_string(c.H) + "/" + std::to_string(c.Hkv) + " Tq" +
                  std::to_string(c.Tq) + " Tk" + std::to_string(c.Tk) + " d" + std::to_string(c.d) + "/" +
                  std::to_string(c.dv);
  if (!c.bias_shape.empty()) s += " bias" + test::shape_name(c.bias_shape);
  return s + (c.causal ? " causal" : "") + (c.padding ? " padding" : "") + " p=" + std::to_string(c.dropout_p);
}

// Inputs of one call, all in one dtype.
struct Inputs {
  Config c;
  Buffer q, k, v, bias, padding;
  double scale;
  int64_t seed = 99;

  Inputs(DType dt, const Config& cfg, uint64_t rng_seed)
      : c(cfg),
        q(random(dt, {cfg.B, cfg.H, cfg.Tq, cfg.d}, rng_seed)),
        k(random(dt, {cfg.B, cfg.Hkv, cfg.Tk, cfg.d}, rng_seed + 1)),
        v(random(dt, {cfg.B, cfg.Hkv, cfg.Tk, cfg.dv}, rng_seed + 2)),
        bias(random(dt, cfg.bias_shape.empty() ? std::vector<int64_t>{1} : cfg.bias_shape, rng_seed + 3)),
        padding(DType::UInt8, {cfg.B, cfg.Tk}),
        scale(1.3 / std::sqrt(static_cast<double>(cfg.d))) {
    Random rng(rng_seed + 4);
    for (int64_t i = 0; i < padding.numel(); ++i) padding.set(i, rng.uniform(0, 1) < 0.3 ? 1 : 0);
  }
  static Buffer random(DType dt, std::vector<int64_t> sizes, uint64_t seed) {
    Random rng(seed);
    return test::random_buffer(rng, dt, std::move(sizes), -1.5, 1.5);
  }
  OptView bias_view() const { return c.bias_shape.empty() ? std::nullopt : bias.opt(); }
  OptView padding_view() const { return c.padding ? padding.opt() : std::nullopt; }
  double bias_at(int64_t b, int64_t h, int64_t i, int64_t j) const {
    if (c.bias_shape.empty()) return 0;
    const int64_t idx[4] = {b, h, i, j};
    int64_t flat = 0;
    for (int dim = 0; dim < 4; ++dim) flat = flat * c.bias_shape[dim] + (c.bias_shape[dim] == 1 ? 0 : idx[dim]);
    return bias.get(flat);
  }

  void forward(Buffer& out, Buffer& lse) const {
    attention_forward<CPU>(q.view(), k.view(), v.view(), padding_view(), bias_view(), scale, c.causal, c.dropout_p,
                           seed, out.view(), lse.view());
  }

  // The naive reference: out (B, H, Tq, dv), lse (B, H, Tq), in double.
  void naive(std::vector<double>& out, std::vector<double>& lse) const {
    out.assign(c.B * c.H * c.Tq * c.dv, 0.0);
    lse.assign(c.B * c.H * c.Tq, -kInf);
    const uint64_t key = dropout_key(seed);
    const uint64_t threshold = dropout_threshold(c.dropout_p);
    for (int64_t b = 0; b < c.B; ++b)
      for (int64_t h = 0; h < c.H; ++h) {
        const int64_t hk = h / (c.H / c.Hkv);
        for (int64_t i = 0; i < c.Tq; ++i) {
          std::vector<double> s(c.Tk, -kInf);
          double mx = -kInf;
          for (int64_t j = 0; j < c.Tk; ++j) {
            if (c.causal && j > i + c.Tk - c.Tq) continue;
            if (c.padding && padding.get(b * c.Tk + j)) continue;
            double dot = 0;
            for (int64_t e = 0; e < c.d; ++e)
              dot += q.get(((b * c.H + h) * c.Tq + i) * c.d + e) * k.get(((b * c.Hkv + hk) * c.Tk + j) * c.d + e);
            s[j] = dot * scale + bias_at(b, h, i, j);
            mx = std::max(mx, s[j]);
          }
          if (mx == -kInf) continue;
          double total = 0;
          for (int64_t j = 0; j < c.Tk; ++j) total += std::exp(s[j] - mx);
          const int64_t row = (b * c.H + h) * c.Tq + i;
          lse[row] = mx + std::log(total);
          for (int64_t j = 0; j < c.Tk; ++j) {
            double p = std::exp(s[j] - mx) / total;
            if (threshold) p = dropout_keep(key, row * c.Tk + j, threshold) ? p / (1 - c.dropout_p) : 0;
            for (int64_t e = 0; e < c.dv; ++e) out[row * c.dv + e] += p * v.get(((b * c.Hkv + hk) * c.Tk + j) * c.dv + e);
          }
        }
      }
  }
};

const std::vector<Config>& forward_configs() {
  static const std::vector<Config> configs = {
      {2, 3, 3, 17, 17, 16, 16, {}, false, false, 0},
      {1, 4, 2, 70, 130, 33, 20, {1, 4, 70, 130}, true, true, 0},   // GQA, crosses the 64 tiles
      {2, 2, 1, 20, 7, 8, 5, {2, 1, 1, 7}, true, false, 0},        // Tq > Tk: first rows see nothing
      {1, 2, 2, 1, 97, 130, 17, {1, 1, 1, 97}, false, true, 0},    // decoding one token, d = 130
      {2, 2, 2, 65, 66, 12, 12, {1, 2, 65, 1}, false, false, 0.3}, // dropout; bias constant along keys
      {1, 1, 1, 3, 5, 256, 256, {}, true, false, 0},                // largest head dims
  };
  return configs;
}

class AttentionForward : public ::testing::TestWithParam<DType> {};

TEST_P(AttentionForward, MatchesNaiveLoop) {
  const DType dt = GetParam();
  for (const Config& c : forward_configs()) {
    SCOPED_TRACE(name(c));
    Inputs in(dt, c, 11);
    Buffer out = test::sentinel_buffer(dt, {c.B, c.H, c.Tq, c.dv});
    Buffer lse = test::sentinel_buffer(dt, {c.B, c.H, c.Tq});
    ScopedThreads threads(2);
    in.forward(out, lse);
    std::vector<double> want_out, want_lse;
    in.naive(want_out, want_lse);
    const test::Tolerance tol = dt == DType::Float64 ? test::Tolerance{1e-12, 1e-12} : test::Tolerance{2e-5, 2e-5};
    EXPECT_TRUE(AllClose(out.values(), want_out, tol));
    std::vector<double> got_lse = lse.values();
    for (size_t r = 0; r < got_lse.size(); ++r) {
      if (std::isinf(want_lse[r])) {
        EXPECT_EQ(got_lse[r], -kInf) << "row " << r;
        got_lse[r] = want_lse[r] = 0;
      }
    }
    EXPECT_TRUE(AllClose(got_lse, want_lse, tol));
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, AttentionForward, ::testing::Values(DType::Float64, DType::Float32),
                         test::DTypeName());

// ------------------------------------------------------------------------------------ backward

struct Gradients {
  Buffer dq, dk, dv, dbias;
};

// Backward fed grad_out = r and grad_lse = s, so its outputs are ∂L/∂inputs for L = Σ out·r + Σ lse·s.
Gradients run_backward(Inputs& in, const std::vector<double>& r, const std::vector<double>& s) {
  const Config& c = in.c;
  const DType dt = DType::Float64;
  Buffer out(dt, {c.B, c.H, c.Tq, c.dv}), lse(dt, {c.B, c.H, c.Tq});
  in.forward(out, lse);
  Buffer grad_out(dt, {c.B, c.H, c.Tq, c.dv}, r), grad_lse(dt, {c.B, c.H, c.Tq}, s);
  Gradients g{Buffer(dt, in.q.sizes()), Buffer(dt, in.k.sizes()), Buffer(dt, in.v.sizes()), Buffer(dt, in.bias.sizes())};
  const bool has_bias = !c.bias_shape.empty();
  Buffer workspace(DType::UInt8, {std::max<int64_t>(1, attention_backward_workspace_size<CPU>(
                                                          in.q.view(), in.k.view(), in.v.view(), in.bias_view(), has_bias))});
  attention_backward<CPU>(grad_out.view(), grad_lse.opt(), in.q.view(), in.k.view(), in.v.view(), out.view(),
                          lse.view(), in.padding_view(), in.bias_view(), in.scale, c.causal, c.dropout_p, in.seed,
                          g.dq.opt(), g.dk.opt(), g.dv.opt(), has_bias ? g.dbias.opt() : std::nullopt,
                          workspace.opt());
  return g;
}

double loss(const Inputs& in, const std::vector<double>& r, const std::vector<double>& s) {
  const Config& c = in.c;
  Buffer out(DType::Float64, {c.B, c.H, c.Tq, c.dv}), lse(DType::Float64, {c.B, c.H, c.Tq});
  in.forward(out, lse);
  double total = test::dot(out, r);
  for (int64_t i = 0; i < lse.numel(); ++i)
    if (std::isfinite(lse.get(i))) total += lse.get(i) * s[i];
  return total;
}

TEST(AttentionBackward, MatchesFiniteDifferences) {
  const std::vector<Config> configs = {
      {1, 2, 1, 5, 7, 4, 3, {1, 2, 5, 7}, true, true, 0},      // MQA, full bias per head
      {2, 2, 2, 4, 3, 3, 2, {2, 1, 1, 3}, true, false, 0},     // Tq > Tk: empty rows; bias over keys only
      {2, 4, 2, 6, 6, 5, 4, {6, 6}, false, true, 0.25},        // GQA, bias shared by every (b, h), dropout
      {1, 1, 1, 66, 67, 3, 2, {1, 1, 1, 67}, true, false, 0},  // crosses the 64 tiles in both directions
  };
  for (const Config& c0 : configs) {
    Config c = c0;
    if (c.bias_shape.size() == 2) c.bias_shape.insert(c.bias_shape.begin(), {1, 1});
    SCOPED_TRACE(name(c));
    Inputs in(DType::Float64, c, 5);
    Random rng(17);
    const std::vector<double> r = rng.uniform(c.B * c.H * c.Tq * c.dv, -1, 1);
    const std::vector<double> s = rng.uniform(c.B * c.H * c.Tq, -1, 1);
    Gradients g = [&] {
      ScopedThreads threads(2);  // the analytic gradients through the multi-chunk (partials) path
      return run_backward(in, r, s);
    }();
    // Thousands of tiny forwards: one thread, so no OpenMP team is woken per call.
    ScopedThreads one_thread(1);
    auto L = [&] { return loss(in, r, s); };
    EXPECT_TRUE(AllClose(g.dq.values(), test::numeric_gradient(in.q, L), kGradientTolerance)) << "dq";
    EXPECT_TRUE(AllClose(g.dk.values(), test::numeric_gradient(in.k, L), kGradientTolerance)) << "dk";
    EXPECT_TRUE(AllClose(g.dv.values(), test::numeric_gradient(in.v, L), kGradientTolerance)) << "dv";
    EXPECT_TRUE(AllClose(g.dbias.values(), test::numeric_gradient(in.bias, L), kGradientTolerance)) << "dbias";
  }
}

TEST(AttentionBackward, RowsThatSeeNoKeyGiveZerosNotNaN) {
  Config c{2, 1, 1, 3, 4, 2, 2, {}, false, true, 0};
  Inputs in(DType::Float64, c, 3);
  for (int64_t j = 0; j < c.Tk; ++j) in.padding.set(j, 1);  // batch 0 sees nothing
  Buffer out(DType::Float64, {c.B, c.H, c.Tq, c.dv}), lse(DType::Float64, {c.B, c.H, c.Tq});
  in.forward(out, lse);
  for (int64_t i = 0; i < c.Tq; ++i) {
    EXPECT_EQ(lse.get(i), -kInf);
    for (int64_t e = 0; e < c.dv; ++e) EXPECT_EQ(out.get(i * c.dv + e), 0.0);
  }
  const std::vector<double> r(out.numel(), 1.0), s(lse.numel(), 1.0);
  Gradients g = run_backward(in, r, s);
  for (const Buffer* b : {&g.dq, &g.dk, &g.dv})
    for (int64_t i = 0; i < b->numel(); ++i) ASSERT_TRUE(std::isfinite(b->get(i)));
  for (int64_t i = 0; i < c.Tq * c.d; ++i) EXPECT_EQ(g.dq.get(i), 0.0);        // batch 0's queries
  for (int64_t i = 0; i < c.Tk * c.d; ++i) EXPECT_EQ(g.dk.get(i), 0.0);        // batch 0's keys
}

TEST(AttentionDropout, MaskKeepsOneMinusP) {
  for (double p : {0.1, 0.5, 0.9}) {
    Buffer mask(DType::UInt8, {2, 3, 64, 128});
    attention_dropout_mask<CPU>(mask.view(), p, 1234);
    double kept = 0;
    for (int64_t i = 0; i < mask.numel(); ++i) kept += mask.get(i);
    const double n = static_cast<double>(mask.numel());
    // Binomial: 5 standard deviations.
    EXPECT_NEAR(kept / n, 1 - p, 5 * std::sqrt(p * (1 - p) / n)) << "p=" << p;
  }
  Buffer none(DType::UInt8, {1, 1, 4, 4}), all(DType::UInt8, {1, 1, 4, 4});
  attention_dropout_mask<CPU>(none.view(), 0.0, 1);
  attention_dropout_mask<CPU>(all.view(), 1.0, 1);
  EXPECT_TRUE(test::all_equal(none, 1.0));
  EXPECT_TRUE(test::all_equal(all, 0.0));
}

// ---------------------------------------------------------------------------------- validation

void expect_error(const std::function<void()>& call, const std::string& needle) {
  try {
    call();
    ADD_FAILURE() << "expected an error mentioning " << needle;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(AttentionValidation, BadArgumentsThrowAndLeaveOutputsUntouched) {
  const DType f = DType::Float32;
  Buffer q(f, {2, 4, 5, 8}), k(f, {2, 2, 6, 8}), v(f, {2, 2, 6, 8});
  Buffer out = test::sentinel_buffer(f, {2, 4, 5, 8}), lse = test::sentinel_buffer(f, {2, 4, 5});
  out.snapshot();
  lse.snapshot();
  auto fwd = [&](const TensorView& qv, const TensorView& kv, const TensorView& vv, OptView kpm, OptView bias,
                 double scale, double p) {
    attention_forward<CPU>(qv, kv, vv, kpm, bias, scale, false, p, 0, out.view(), lse.view());
  };
  Buffer k3(f, {2, 3, 6, 8}), v3(f, {2, 3, 6, 8}), vlen(f, {2, 2, 7, 8}), kd(DType::Float64, {2, 2, 6, 8});
  Buffer kpm_bad(DType::UInt8, {2, 5}), kpm_float(f, {2, 6}), bias_bad(f, {3, 1, 1, 6}), big(f, {1, 1, 2, 300});
  expect_error([&] { fwd(q.view(), k3.view(), v3.view(), std::nullopt, std::nullopt, 1, 0); }, "'k'");
  expect_error([&] { fwd(q.view(), k.view(), vlen.view(), std::nullopt, std::nullopt, 1, 0); }, "'v'");
  expect_error([&] { fwd(q.view(), kd.view(), v.view(), std::nullopt, std::nullopt, 1, 0); }, "'k'");
  expect_error([&] { fwd(q.view(), k.view(), v.view(), kpm_bad.view(), std::nullopt, 1, 0); }, "'key_padding_mask'");
  expect_error([&] { fwd(q.view(), k.view(), v.view(), kpm_float.view(), std::nullopt, 1, 0); }, "'key_padding_mask'");
  expect_error([&] { fwd(q.view(), k.view(), v.view(), std::nullopt, bias_bad.view(), 1, 0); }, "'attn_bias'");
  expect_error([&] { fwd(q.view(), k.view(), v.view(), std::nullopt, std::nullopt, INFINITY, 0); }, "'scale'");
  expect_error([&] { fwd(q.view(), k.view(), v.view(), std::nullopt, std::nullopt, 1, 1.5); }, "'dropout_p'");
  expect_error([&] { fwd(big.view(), big.view(), big.view(), std::nullopt, std::nullopt, 1, 0); }, "'q'");
  Buffer lse_bad(DType::Float64, {2, 4, 5});
  expect_error([&] {
    attention_forward<CPU>(q.view(), k.view(), v.view(), std::nullopt, std::nullopt, 1, false, 0, 0, out.view(),
                           lse_bad.view());
  }, "'lse'");
  EXPECT_TRUE(out.unchanged_since_snapshot());
  EXPECT_TRUE(lse.unchanged_since_snapshot());

  // Backward: a bias gradient without a bias, and a missing workspace.
  Buffer dq = test::sentinel_buffer(f, {2, 4, 5, 8}), dbias(f, {1, 1, 5, 6});
  dq.snapshot();
  expect_error([&] {
    attention_backward<CPU>(out.view(), std::nullopt, q.view(), k.view(), v.view(), out.view(), lse.view(),
                            std::nullopt, std::nullopt, 1, false, 0, 0, dq.opt(), std::nullopt, std::nullopt,
                            dbias.opt(), std::nullopt);
  }, "'grad_bias'");
  Buffer bias(f, {1, 1, 5, 6});
  expect_error([&] {
    attention_backward<CPU>(out.view(), std::nullopt, q.view(), k.view(), v.view(), out.view(), lse.view(),
                            std::nullopt, bias.opt(), 1, false, 0, 0, dq.opt(), k.opt(), v.opt(), std::nullopt,
                            std::nullopt);
  }, "'workspace'");
  EXPECT_TRUE(dq.unchanged_since_snapshot());
}

}  // namespace
}  // namespace replearn::attention
