// The recurrent family's CPU kernels (csrc/rnn): forward against a naive double-precision loop over
// the equations of rnn.h, backward against central finite differences of L = Σ y·r + Σ h_n·s (+ Σ c_n·u),
// for every cell, with and without biases, lengths and reverse; and the validation errors.
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
};

std::string config_name(const Config& c) {
  const char* names[] = {"tanh", "relu", "lstm", "gru"};
  return std::string(names[static_cast<int>(c.cell)]) + " T" + std::to_string(c.steps) + " B" +
         std::to_string(c.batch) + " I" + std::to_string(c.input) + " H" + std::to_string(c.hidden) +
         (c.lengths.empty() ? "" : " lengths") + (c.reverse ? " reverse" : "") + (c.biases ? "" : " no-bias");
}

double sigmoid(double v) { return 1 / (1 + std::exp(-v)); }

struct Problem {
  Config c;
  DType dtype;
  Buffer x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths;

  Problem(const Config& config, DType dt, uint64_t seed)
      : c(config), dtype(dt), x(dt, {1}), h0(dt, {1}), c0(dt, {1}), w_ih(dt, {1}), w_hh(dt, {1}), b_ih(dt, {1}),
        b_hh(dt, {1}), lengths(DType::Int64, {c.batch}) {
    Random rng(seed);
    const int64_t G = gate_count(c.cell) * c.hidden;
    const double w = 1 / std::sqrt(static_cast<double>(c.hidden));
    x = test::random_buffer(rng, dt, {c.steps, c.batch, c.input});
    h0 = test::random_buffer(rng, dt, {c.batch, c.hidden}, -0.5, 0.5);
    c0 = test::random_buffer(rng, dt, {c.batch, c.hidden}, -0.5, 0.5);
    w_ih = test::random_buffer(rng, dt, {G, c.input}, -w, w);
    w_hh = test::random_buffer(rng, dt, {G, c.hidden}, -w, w);
    b_ih = test::random_buffer(rng, dt, {G}, -0.3, 0.3);
    b_hh = test::random_buffer(rng, dt, {G}, -0.3, 0.3);
    for (int64_t b = 0; b < c.batch; ++b) lengths.set(b, c.lengths.empty() ? c.steps : c.lengths[b]);
  }
  bool lstm() const { return c.cell == Cell::Lstm; }
  OptView c0_view() const { return lstm() ? c0.opt() : std::nullopt; }
  OptView bias(const Buffer& b) const { return c.biases ? b.opt() : std::nullopt; }
  OptView lengths_view() const { return c.lengths.empty() ? std::nullopt : lengths.opt(); }
};

struct Outputs {
  Buffer y, h_n, c_n, reserve;
};

Outputs run_forward(const Problem& p) {
  Outputs o{Buffer(p.dtype, {p.c.steps, p.c.batch, p.c.hidden}), Buffer(p.dtype, {p.c.batch, p.c.hidden}),
            Buffer(p.dtype, {p.c.batch, p.c.hidden}),
            Buffer(p.dtype, {p.c.steps, p.c.batch, reserve_width(p.c.cell, p.c.hidden)})};
  const int cell = static_cast<int>(p.c.cell);
  Buffer ws(DType::UInt8, {rnn_forward_workspace_size<CPU>(cell, p.x.view(), p.w_hh.view())});
  rnn_forward<CPU>(cell, p.x.view(), p.h0.view(), p.c0_view(), p.w_ih.view(), p.w_hh.view(), p.bias(p.b_ih),
                   p.bias(p.b_hh), p.lengths_view(), p.c.reverse, o.y.view(), o.h_n.view(),
                   p.lstm() ? o.c_n.opt() : std::nullopt, o.reserve.view(), ws.opt());
  return o;
}

// The equations of rnn.h, one (step, row, unit) at a time, in double.
void naive_forward(const Problem& p, std::vector<double>& y, std::vector<double>& h, std::vector<double>& c) {
  const int64_t T = p.c.steps, B = p.c.batch, I = p.c.input, H = p.c.hidden, G = gate_count(p.c.cell);
  y.assign(T * B * H, 0);
  h = p.h0.values();
  c = p.c0.values();
  auto bias = [&](const Buffer& b, int64_t k) { return p.c.biases ? b.get(k) : 0.0; };
  for (int64_t s = 0; s < T; ++s) {
    const int64_t t = p.c.reverse ? T - 1 - s : s;
    std::vector<double> h_new(B * H), c_new(B * H);
    for (int64_t b = 0; b < B; ++b) {
      std::vector<double> gi(G * H), gh(G * H);
      for (int64_t k = 0; k < G * H; ++k) {
        double si = bias(p.b_ih, k), sh = bias(p.b_hh, k);
        for (int64_t i = 0; i < I; ++i) si += p.w_ih.get(k * I + i) * p.x.get((t * B + b) * I + i);
        for (int64_t j = 0; j < H; ++j) sh += p.w_hh.get(k * H + j) * h[b * H + j];
        gi[k] = si, gh[k] = sh;
      }
      for (int64_t j = 0; j < H; ++j) {
        const double hp = h[b * H + j];
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
        const bool active = t < static_cast<int64_t>(p.lengths.get(b));
        h_new[b * H + j] = active ? hn : hp;
        c_new[b * H + j] = active ? cn : c[b * H + j];
        y[(t * B + b) * H + j] = active ? hn : 0;
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
  return out;
}

class RnnForward : public ::testing::TestWithParam<DType> {};

TEST_P(RnnForward, MatchesNaiveLoop) {
  const DType dtype = GetParam();
  const test::Tolerance tol = dtype == DType::Float64 ? test::Tolerance{1e-12, 1e-12} : test::Tolerance{2e-5, 2e-5};
  for (const Config& config : configs()) {
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

TEST(RnnBackward, MatchesFiniteDifferences) {
  for (const Config& config : configs()) {
    SCOPED_TRACE(config_name(config));
    Problem p(config, DType::Float64, 7);
    Random rng(3);
    const auto ry = rng.uniform(config.steps * config.batch * config.hidden, -1, 1);
    const auto rh = rng.uniform(config.batch * config.hidden, -1, 1);
    const auto rc = rng.uniform(config.batch * config.hidden, -1, 1);
    auto loss = [&] {
      const Outputs o = run_forward(p);
      return test::dot(o.y, ry) + test::dot(o.h_n, rh) + (p.lstm() ? test::dot(o.c_n, rc) : 0.0);
    };
    const Outputs o = run_forward(p);
    const DType dt = DType::Float64;
    const int64_t G = gate_count(config.cell) * config.hidden;
    Buffer gy(dt, {config.steps, config.batch, config.hidden}, ry), gh(dt, {config.batch, config.hidden}, rh),
        gc(dt, {config.batch, config.hidden}, rc);
    Buffer dx(dt, p.x.sizes()), dh0(dt, p.h0.sizes()), dc0(dt, p.c0.sizes()), dw_ih(dt, p.w_ih.sizes()),
        dw_hh(dt, p.w_hh.sizes()), db_ih(dt, {G}), db_hh(dt, {G});
    const int cell = static_cast<int>(config.cell);
    Buffer ws(DType::UInt8, {rnn_backward_workspace_size<CPU>(cell, p.x.view(), p.w_hh.view())});
    rnn_backward<CPU>(cell, gy.view(), gh.view(), p.lstm() ? gc.opt() : std::nullopt, p.x.view(), p.w_ih.view(),
                      p.w_hh.view(), p.lengths_view(), config.reverse, o.reserve.view(), dx.opt(), dh0.opt(),
                      p.lstm() ? dc0.opt() : std::nullopt, dw_ih.opt(), dw_hh.opt(), db_ih.opt(), db_hh.opt(), ws.opt());
    EXPECT_TRUE(AllClose(dx.values(), test::numeric_gradient(p.x, loss), kGradientTolerance)) << "grad_x";
    EXPECT_TRUE(AllClose(dh0.values(), test::numeric_gradient(p.h0, loss), kGradientTolerance)) << "grad_h0";
    if (p.lstm()) EXPECT_TRUE(AllClose(dc0.values(), test::numeric_gradient(p.c0, loss), kGradientTolerance)) << "grad_c0";
    EXPECT_TRUE(AllClose(dw_ih.values(), test::numeric_gradient(p.w_ih, loss), kGradientTolerance)) << "grad_w_ih";
    EXPECT_TRUE(AllClose(dw_hh.values(), test::numeric_gradient(p.w_hh, loss), kGradientTolerance)) << "grad_w_hh";
    if (config.biases) {
      EXPECT_TRUE(AllClose(db_ih.values(), test::numeric_gradient(p.b_ih, loss), kGradientTolerance)) << "grad_b_ih";
      EXPECT_TRUE(AllClose(db_hh.values(), test::numeric_gradient(p.b_hh, loss), kGradientTolerance)) << "grad_b_hh";
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
  Buffer ws(DType::UInt8, {rnn_forward_workspace_size<CPU>(cell, p.x.view(), p.w_hh.view())});
  Buffer bad_lengths(DType::Int64, {2}, {4, 5});
  Buffer wrong_w_hh(DType::Float32, {20, 4});
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
  auto forward = [&](int cell_code, const TensorView& w_hh, OptView lengths, OptView c0, OptView workspace) {
    rnn_forward<CPU>(cell_code, p.x.view(), p.h0.view(), c0, p.w_ih.view(), w_hh, p.b_ih.opt(), p.b_hh.opt(), lengths,
                     false, y.view(), h_n.view(), c_n.opt(), reserve.view(), workspace);
  };
  expect_error("cell", [&] { forward(7, p.w_hh.view(), std::nullopt, p.c0.opt(), ws.opt()); });
  expect_error("w_hh", [&] { forward(cell, wrong_w_hh.view(), std::nullopt, p.c0.opt(), ws.opt()); });
  expect_error("lengths", [&] { forward(cell, p.w_hh.view(), bad_lengths.opt(), p.c0.opt(), ws.opt()); });
  expect_error("c0", [&] { forward(cell, p.w_hh.view(), std::nullopt, std::nullopt, ws.opt()); });
  expect_error("workspace", [&] { forward(cell, p.w_hh.view(), std::nullopt, p.c0.opt(), std::nullopt); });
}

}  // namespace
}  // namespace replearn::rnn
