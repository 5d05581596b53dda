// The recurrent family's CPU kernels (csrc/rnn): forward against a naive double-precision loop over
// the equations of rnn.h, backward against central finite differences of L = Σ y·r + Σ h_n·s (+ Σ c_n·u),
// for every cell, with and without biases, lengths and reverse, and the LSTM with projection
// (h_t = W_hr u_t, Sak et al. 2014); and the validation errors.
#include <gtest/gtest.h>

#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "core/error.h"
#include "rnn/rnn.h"
#include "test_helpers.h"

namespace replearn::rnn {
namespace {

using test::AllClose;
using test::Buffer;
using test::kGradientTolerance;
using test::kSentinel;
using test::Random;
constexpr auto CPU = DeviceType::CPU;

struct Config {
  Cell cell;
  int64_t steps, batch, input, hidden;
  std::vector<int64_t> lengths;  // empty: all full length
  bool reverse, biases;
  int64_t proj = 0;  // the LSTM's projection size P, 0 without
  int64_t state() const { return proj > 0 ? proj : hidden; }
};

std::string config_name(const Config& c) {
  const char* names[] = {"tanh", "relu", "lstm", "gru"};
  return std::string(names[static_cast<int>(c.cell)]) + " T" + std::to_string(c.steps) + " B" +
         std::to_string(c.batch) + " I" + std::to_string(c.input) + " H" + std::to_string(c.hidden) +
         (c.lengths.empty() ? "" : " lengths") + (c.reverse ? " reverse" : "") + (c.biases ? "" : " no-bias") +
         (c.proj ? " P" + std::to_string(c.proj) : "");
}

double sigmoid(double v) { return 1 / (1 + std::exp(-v)); }

struct Problem {
  Config c;
  DType dtype;
  Buffer x, h0, c0, w_ih, w_hh, w_hr, b_ih, b_hh, lengths;

  Problem(const Config& config, DType dt, uint64_t seed)
      : c(config), dtype(dt), x(dt, {1}), h0(dt, {1}), c0(dt, {1}), w_ih(dt, {1}), w_hh(dt, {1}), w_hr(dt, {1}),
        b_ih(dt, {1}), b_hh(dt, {1}), lengths(DType::Int64, {c.batch}) {
    Random rng(seed);
    const int64_t G = gate_count(c.cell) * c.hidden;
    const double w = 1 / std::sqrt(static_cast<double>(c.hidden));
    x = test::random_buffer(rng, dt, {c.steps, c.batch, c.input});
    h0 = test::random_buffer(rng, dt, {c.batch, c.state()}, -0.5, 0.5);
    c0 = test::random_buffer(rng, dt, {c.batch, c.hidden}, -0.5, 0.5);
    w_ih = test::random_buffer(rng, dt, {G, c.input}, -w, w);
    w_hh = test::random_buffer(rng, dt, {G, c.state()}, -w, w);
    if (c.proj) w_hr = test::random_buffer(rng, dt, {c.proj, c.hidden}, -w, w);
    b_ih = test::random_buffer(rng, dt, {G}, -0.3, 0.3);
    b_hh = test::random_buffer(rng, dt, {G}, -0.3, 0.3);
    for (int64_t b = 0; b < c.batch; ++b) lengths.set(b, c.lengths.empty() ? c.steps : c.lengths[b]);
  }
  bool lstm() const { return c.cell == Cell::Lstm; }
  OptView c0_view() const { return lstm() ? c0.opt() : std::nullopt; }
  OptView bias(const Buffer& b) const { return c.biases ? b.opt() : std::nullopt; }
  OptView lengths_view() const { return c.lengths.empty() ? std::nullopt : lengths.opt(); }
  OptView w_hr_view() const { return c.proj ? w_hr.opt() : std::nullopt; }
  LayerDims dims() const { return {c.cell, c.steps, c.batch, c.input, c.hidden, c.proj}; }
};

struct Outputs {
  Buffer y, h_n, c_n, reserve;
};

Outputs run_forward(const Problem& p) {
  Outputs o{Buffer(p.dtype, {p.c.steps, p.c.batch, p.c.state()}), Buffer(p.dtype, {p.c.batch, p.c.state()}),
            Buffer(p.dtype, {p.c.batch, p.c.hidden}), Buffer(p.dtype, {p.c.steps, p.c.batch, p.dims().reserve()})};
  const int cell = static_cast<int>(p.c.cell);
  Buffer ws(DType::UInt8, {rnn_forward_workspace_size<CPU>(cell, p.x.view(), p.w_hh.view(), p.w_hr_view())});
  rnn_forward<CPU>(cell, p.x.view(), p.h0.view(), p.c0_view(), p.w_ih.view(), p.w_hh.view(), p.w_hr_view(),
                   p.bias(p.b_ih),
                   p.bias(p.b_hh), p.lengths_view(), p.c.reverse, o.y.view(), o.h_n.view(),
                   p.lstm() ? o.c_n.opt() : std::nullopt, o.reserve.view(), ws.opt());
  return o;
}

// The equations of rnn.h, one (step, row, unit) at a time, in double.
void naive_forward(const Problem& p, std::vector<double>& y, std::vector<double>& h, std::vector<double>& c) {
  const int64_t T = p.c.steps, B = p.c.batch, I = p.c.input, H = p.c.hidden, G = gate_count(p.c.cell);
  const int64_t S = p.c.state();
  y.assign(T * B * S, 0);
  h = p.h0.values();
  c = p.c0.values();
  auto bias = [&](const Buffer& b, int64_t k) { return p.c.biases ? b.get(k) : 0.0; };
  for (int64_t s = 0; s < T; ++s) {
    const int64_t t = p.c.reverse ? T - 1 - s : s;
    std::vector<double> h_new(B * S), c_new(B * H);
    for (int64_t b = 0; b < B; ++b) {
      std::vector<double> gi(G * H), gh(G * H);
      for (int64_t k = 0; k < G * H; ++k) {
        double si = bias(p.b_ih, k), sh = bias(p.b_hh, k);
        for (int64_t i = 0; i < I; ++i) si += p.w_ih.get(k * I + i) * p.x.get((t * B + b) * I + i);
        for (int64_t j = 0; j < S; ++j) sh += p.w_hh.get(k * S + j) * h[b * S + j];
        gi[k] = si, gh[k] = sh;
      }
      std::vector<double> out(H);  // the cell's output: h_t, or u_t before the projection
      const bool active = t < static_cast<int64_t>(p.lengths.get(b));
      for (int64_t j = 0; j < H; ++j) {
        const double hp = S == H ? h[b * H + j] : 0;  // the GRU reads h_{t−1} per unit (no projection there)
        double hn = 0, cn = c[b * H + j];
        switch (p.c.cell) {
          case Cell::Tanh: hn = std::tanh(gi[j] + gh[j]); break;
          case Cell::Relu: hn = std::max(0.0, gi[j] + gh[j]); break;
          case Cell::Lstm: {
            const double i = sigmoid(gi[j] + gh[j]), f = sigmoid(gi[H + j] + gh[H + j]);
            const double g = std::tanh(gi[2 * H + j] + gh[2 * H + j]), o = sigmoid(gi[3 * H + j] + gh[3 * H + j]);
            cn = f * c[b * H + j] + i * g;
            hn = o * std::tanh(cn);
            break;
          }
          case Cell::Gru: {
            const double r = sigmoid(gi[j] + gh[j]), z = sigmoid(gi[H + j] + gh[H + j]);
            const double n = std::tanh(gi[2 * H + j] + r * gh[2 * H + j]);
            hn = (1 - z) * n + z * hp;
            break;
          }
        }
        out[j] = hn;
        c_new[b * H + j] = active ? cn : c[b * H + j];
      }
      for (int64_t q = 0; q < S; ++q) {  // h_t = W_hr u_t with a projection
        double hn = out[q];
        if (p.c.proj) {
          hn = 0;
          for (int64_t j = 0; j < H; ++j) hn += p.w_hr.get(q * H + j) * out[j];
        }
        h_new[b * S + q] = active ? hn : h[b * S + q];
        y[(t * B + b) * S + q] = active ? hn : 0;
      }
    }
    h = h_new;
    c = c_new;
  }
}

std::vector<Config> configs() {
  std::vector<Config> out;
  for (Cell cell : {Cell::Tanh, Cell::Relu, Cell::Lstm, Cell::Gru}) {
    out.push_back({cell, 1, 1, 1, 1, {}, false, true});
    out.push_back({cell, 5, 3, 4, 6, {}, false, true});
    out.push_back({cell, 6, 4, 3, 5, {6, 2, 5, 1}, false, true});
    out.push_back({cell, 6, 4, 3, 5, {3, 6, 1, 4}, true, false});
    out.push_back({cell, 4, 2, 5, 3, {}, true, true});
  }
  out.push_back({Cell::Lstm, 5, 3, 4, 6, {}, false, true, 3});
  out.push_back({Cell::Lstm, 6, 4, 3, 5, {6, 2, 5, 1}, false, true, 2});
  out.push_back({Cell::Lstm, 6, 4, 3, 5, {3, 6, 1, 4}, true, false, 4});
  out.push_back({Cell::Lstm, 3, 2, 2, 4, {}, true, true, 1});
  return out;
}

// Forward only (finite differences at these sizes would take long): shapes that take each step
// split on two threads and the vectorized LSTM cell's whole and partial 16-unit groups (cpu.cpp) —
// 33 rows split by rows (≥ 16 a thread), 16 rows split by units (two chunks of 35 at H 70), 37 and
// 70 units = full groups and a tail; lengths that end rows at every step.
std::vector<Config> split_configs() {
  std::vector<Config> out;
  std::vector<int64_t> lengths33, lengths16;
  for (int64_t b = 0; b < 33; ++b) lengths33.push_back(1 + b % 4);
  for (int64_t b = 0; b < 16; ++b) lengths16.push_back(4 - b % 4);
  for (Cell cell : {Cell::Tanh, Cell::Lstm, Cell::Gru}) {
    out.push_back({cell, 4, 33, 5, 37, {}, false, true});
    out.push_back({cell, 4, 33, 5, 37, lengths33, true, true});
    out.push_back({cell, 4, 16, 3, 70, lengths16, false, true});
    out.push_back({cell, 3, 16, 3, 70, {}, true, false});
  }
  return out;
}

class RnnForward : public ::testing::TestWithParam<DType> {};

TEST_P(RnnForward, MatchesNaiveLoop) {
  const DType dtype = GetParam();
  const test::Tolerance tol = dtype == DType::Float64 ? test::Tolerance{1e-12, 1e-12} : test::Tolerance{2e-5, 2e-5};
  std::vector<Config> all = configs();
  for (const Config& config : split_configs()) all.push_back(config);
  for (const Config& config : all) {
    SCOPED_TRACE(config_name(config));
    Problem p(config, dtype, 42);
    const Outputs o = run_forward(p);
    std::vector<double> y, h, c;
    naive_forward(p, y, h, c);
    EXPECT_TRUE(AllClose(o.y.values(), y, tol));
    EXPECT_TRUE(AllClose(o.h_n.values(), h, tol));
    if (p.lstm()) EXPECT_TRUE(AllClose(o.c_n.values(), c, tol));
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, RnnForward, ::testing::Values(DType::Float32, DType::Float64), test::DTypeName());

// The gradients of loss = Σ y·ry + Σ h_n·rh (+ Σ c_n·rc) for every input, from rnn_backward.
struct Gradients {
  Buffer dx, dh0, dc0, dw_ih, dw_hh, dw_hr, db_ih, db_hh;
};

Gradients run_backward(const Problem& p, const Outputs& o, const std::vector<double>& ry, const std::vector<double>& rh,
                       const std::vector<double>& rc) {
  const Config& config = p.c;
  const DType dt = p.dtype;
  const int64_t G = gate_count(config.cell) * config.hidden;
  Buffer gy(dt, {config.steps, config.batch, config.state()}, ry), gh(dt, {config.batch, config.state()}, rh),
      gc(dt, {config.batch, config.hidden}, rc);
  Gradients g{Buffer(dt, p.x.sizes()),     Buffer(dt, p.h0.sizes()),    Buffer(dt, p.c0.sizes()),
              Buffer(dt, p.w_ih.sizes()),  Buffer(dt, p.w_hh.sizes()),  Buffer(dt, p.w_hr.sizes()),
              Buffer(dt, {G}),             Buffer(dt, {G})};
  const int cell = static_cast<int>(config.cell);
  Buffer ws(DType::UInt8, {rnn_backward_workspace_size<CPU>(cell, p.x.view(), p.w_hh.view(), p.w_hr_view())});
  rnn_backward<CPU>(cell, gy.view(), gh.view(), p.lstm() ? gc.opt() : std::nullopt, p.x.view(), p.w_ih.view(),
                    p.w_hh.view(), p.w_hr_view(), p.lengths_view(), config.reverse, o.reserve.view(), g.dx.opt(),
                    g.dh0.opt(), p.lstm() ? g.dc0.opt() : std::nullopt, g.dw_ih.opt(), g.dw_hh.opt(),
                    config.proj ? g.dw_hr.opt() : std::nullopt, g.db_ih.opt(), g.db_hh.opt(), ws.opt());
  return g;
}

TEST(RnnBackward, MatchesFiniteDifferences) {
  for (const Config& config : configs()) {
    SCOPED_TRACE(config_name(config));
    Problem p(config, DType::Float64, 7);
    Random rng(3);
    const auto ry = rng.uniform(config.steps * config.batch * config.state(), -1, 1);
    const auto rh = rng.uniform(config.batch * config.state(), -1, 1);
    const auto rc = rng.uniform(config.batch * config.hidden, -1, 1);
    auto loss = [&] {
      const Outputs o = run_forward(p);
      return test::dot(o.y, ry) + test::dot(o.h_n, rh) + (p.lstm() ? test::dot(o.c_n, rc) : 0.0);
    };
    const Gradients g = run_backward(p, run_forward(p), ry, rh, rc);
    EXPECT_TRUE(AllClose(g.dx.values(), test::numeric_gradient(p.x, loss), kGradientTolerance)) << "grad_x";
    EXPECT_TRUE(AllClose(g.dh0.values(), test::numeric_gradient(p.h0, loss), kGradientTolerance)) << "grad_h0";
    if (p.lstm())
      EXPECT_TRUE(AllClose(g.dc0.values(), test::numeric_gradient(p.c0, loss), kGradientTolerance)) << "grad_c0";
    EXPECT_TRUE(AllClose(g.dw_ih.values(), test::numeric_gradient(p.w_ih, loss), kGradientTolerance)) << "grad_w_ih";
    EXPECT_TRUE(AllClose(g.dw_hh.values(), test::numeric_gradient(p.w_hh, loss), kGradientTolerance)) << "grad_w_hh";
    if (config.proj)
      EXPECT_TRUE(AllClose(g.dw_hr.values(), test::numeric_gradient(p.w_hr, loss), kGradientTolerance)) << "grad_w_hr";
    if (config.biases) {
      EXPECT_TRUE(AllClose(g.db_ih.values(), test::numeric_gradient(p.b_ih, loss), kGradientTolerance)) << "grad_b_ih";
      EXPECT_TRUE(AllClose(g.db_hh.values(), test::numeric_gradient(p.b_hh, loss), kGradientTolerance)) << "grad_b_hh";
    }
  }
}

// A batch of no sequences, as torch allows: forward has nothing to write, backward zeroes every
// parameter gradient (sentinels before) and touches nothing else.
TEST(RnnBackward, EmptyBatchZeroesParameterGradients) {
  for (const Config& config : {Config{Cell::Tanh, 3, 0, 4, 5, {}, false, true}, Config{Cell::Gru, 2, 0, 3, 4, {}, true, true},
                               Config{Cell::Lstm, 3, 0, 4, 6, {}, false, true, 2}}) {
    SCOPED_TRACE(config_name(config));
    const Problem p(config, DType::Float32, 5);
    const Outputs o = run_forward(p);
    const int64_t G = gate_count(config.cell) * config.hidden;
    Buffer gy(DType::Float32, {config.steps, 0, config.state()}), gh(DType::Float32, {0, config.state()}),
        gc(DType::Float32, {0, config.hidden});
    Buffer dw_ih = test::sentinel_buffer(DType::Float32, p.w_ih.sizes()),
           dw_hh = test::sentinel_buffer(DType::Float32, p.w_hh.sizes()),
           dw_hr = test::sentinel_buffer(DType::Float32, p.w_hr.sizes()),
           db_ih = test::sentinel_buffer(DType::Float32, {G}), db_hh = test::sentinel_buffer(DType::Float32, {G});
    const int cell = static_cast<int>(config.cell);
    Buffer ws(DType::UInt8, {std::max<int64_t>(1, rnn_backward_workspace_size<CPU>(cell, p.x.view(), p.w_hh.view(),
                                                                                    p.w_hr_view()))});
    rnn_backward<CPU>(cell, gy.view(), gh.view(), p.lstm() ? gc.opt() : std::nullopt, p.x.view(), p.w_ih.view(),
                      p.w_hh.view(), p.w_hr_view(), std::nullopt, config.reverse, o.reserve.view(), std::nullopt,
                      std::nullopt, std::nullopt, dw_ih.opt(), dw_hh.opt(), config.proj ? dw_hr.opt() : std::nullopt,
                      db_ih.opt(), db_hh.opt(), ws.opt());
    for (const Buffer* g : {&dw_ih, &dw_hh, &db_ih, &db_hh})
      for (double v : g->values()) EXPECT_EQ(v, 0.0);
    if (config.proj)
      for (double v : dw_hr.values()) EXPECT_EQ(v, 0.0);
  }
}

// float32's forward and backward (the vectorized LSTM cells, both step splits) against float64's
// on the same inputs, which the finite differences above check.
TEST(RnnBackward, Float32MatchesFloat64) {
  std::vector<Config> all = configs();
  for (const Config& config : split_configs()) all.push_back(config);
  for (const Config& config : all) {
    SCOPED_TRACE(config_name(config));
    Random rng(5);
    const auto ry = rng.uniform(config.steps * config.batch * config.state(), -1, 1);
    const auto rh = rng.uniform(config.batch * config.state(), -1, 1);
    const auto rc = rng.uniform(config.batch * config.hidden, -1, 1);
    Problem p32(config, DType::Float32, 11), p64(config, DType::Float64, 11);
    const Gradients g32 = run_backward(p32, run_forward(p32), ry, rh, rc);
    const Gradients g64 = run_backward(p64, run_forward(p64), ry, rh, rc);
    const test::Tolerance tol{1e-4, 1e-4};
    EXPECT_TRUE(AllClose(g32.dx.values(), g64.dx.values(), tol)) << "grad_x";
    EXPECT_TRUE(AllClose(g32.dh0.values(), g64.dh0.values(), tol)) << "grad_h0";
    if (p32.lstm()) EXPECT_TRUE(AllClose(g32.dc0.values(), g64.dc0.values(), tol)) << "grad_c0";
    EXPECT_TRUE(AllClose(g32.dw_ih.values(), g64.dw_ih.values(), tol)) << "grad_w_ih";
    EXPECT_TRUE(AllClose(g32.dw_hh.values(), g64.dw_hh.values(), tol)) << "grad_w_hh";
    if (config.proj) EXPECT_TRUE(AllClose(g32.dw_hr.values(), g64.dw_hr.values(), tol)) << "grad_w_hr";
    if (config.biases) {
      EXPECT_TRUE(AllClose(g32.db_ih.values(), g64.db_ih.values(), tol)) << "grad_b_ih";
      EXPECT_TRUE(AllClose(g32.db_hh.values(), g64.db_hh.values(), tol)) << "grad_b_hh";
    }
  }
}

// Bad arguments throw replearn::Error naming the argument, before any output is written.
TEST(RnnValidation, NamesTheArgumentAndLeavesOutputsUntouched) {
  const Config config{Cell::Lstm, 4, 2, 3, 5, {}, false, true};
  Problem p(config, DType::Float32, 1);
  const int cell = static_cast<int>(config.cell);
  Buffer y = test::sentinel_buffer(DType::Float32, {4, 2, 5}), h_n = test::sentinel_buffer(DType::Float32, {2, 5}),
         c_n = test::sentinel_buffer(DType::Float32, {2, 5}),
         reserve = test::sentinel_buffer(DType::Float32, {4, 2, reserve_width(Cell::Lstm, 5)});
  Buffer ws(DType::UInt8, {rnn_forward_workspace_size<CPU>(cell, p.x.view(), p.w_hh.view(), std::nullopt)});
  Buffer bad_lengths(DType::Int64, {2}, {4, 5});
  Buffer wrong_w_hh(DType::Float32, {20, 4});
  Buffer w_hr(DType::Float32, {3, 5}), gru_w_hh(DType::Float32, {15, 5});
  auto expect_error = [&](const std::string& arg, auto&& call) {
    try {
      call();
      ADD_FAILURE() << "no error for " << arg;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("'" + arg + "'"), std::string::npos) << e.what();
    }
    EXPECT_TRUE(test::all_equal(y, kSentinel) && test::all_equal(h_n, kSentinel) && test::all_equal(c_n, kSentinel))
        << arg;
  };
  auto forward = [&](int cell_code, const TensorView& w_hh, OptView lengths, OptView c0, OptView workspace,
                     OptView w_hr_arg = std::nullopt) {
    rnn_forward<CPU>(cell_code, p.x.view(), p.h0.view(), c0, p.w_ih.view(), w_hh, w_hr_arg, p.b_ih.opt(),
                     p.b_hh.opt(), lengths, false, y.view(), h_n.view(), c_n.opt(), reserve.view(), workspace);
  };
  expect_error("cell", [&] { forward(7, p.w_hh.view(), std::nullopt, p.c0.opt(), ws.opt()); });
  expect_error("w_hh", [&] { forward(cell, wrong_w_hh.view(), std::nullopt, p.c0.opt(), ws.opt()); });
  expect_error("lengths", [&] { forward(cell, p.w_hh.view(), bad_lengths.opt(), p.c0.opt(), ws.opt()); });
  expect_error("c0", [&] { forward(cell, p.w_hh.view(), std::nullopt, std::nullopt, ws.opt()); });
  expect_error("workspace", [&] { forward(cell, p.w_hh.view(), std::nullopt, p.c0.opt(), std::nullopt); });
  // A projection (3, 5) needs W_hh (20, 3), h0 (2, 3); and only the LSTM takes one.
  expect_error("w_hh", [&] { forward(cell, p.w_hh.view(), std::nullopt, p.c0.opt(), ws.opt(), w_hr.opt()); });
  expect_error("w_hr", [&] { forward(3, gru_w_hh.view(), std::nullopt, std::nullopt, ws.opt(), w_hr.opt()); });
}

}  // namespace
}  // namespace replearn::rnn
