// Optimizer family, CPU kernels: each update rule against a scalar double-precision reference
// written from the formulas (not from rules.h), over several tensors (sizes that cross the
// parallel chunks, empty ones) and several steps; then the validation errors, which must leave
// every tensor and step counter untouched.
#include <algorithm>
#include <cmath>
#include <functional>
#include <memory>
#include <vector>

#include "optim/optim.h"
#include "test_helpers.h"

namespace replearn::test {
namespace {

using optim::TensorList;

// A group of tensors (one Buffer per parameter) and its double-precision twin.
struct Lists {
  std::vector<Buffer> buffers;
  std::vector<std::vector<double>> ref;

  TensorList views() const {
    TensorList out;
    for (const Buffer& b : buffers) out.push_back(b.view());
    return out;
  }
};

const std::vector<std::vector<int64_t>> kShapes = {{3, 5}, {0}, {1}, {70001}, {129, 7}, {2, 2, 2}};

Lists random_lists(Random& rng, DType dtype, double low, double high) {
  Lists l;
  for (const auto& shape : kShapes) {
    l.buffers.push_back(random_buffer(rng, dtype, shape, low, high));
    l.ref.push_back(l.buffers.back().values());  // exactly what the kernel sees
  }
  return l;
}

// Step counters in host memory, float32 as torch keeps them; tensor i starts at i % 3.
struct Steps {
  std::vector<Buffer> buffers;
  Steps() {
    for (size_t i = 0; i < kShapes.size(); ++i) buffers.emplace_back(DType::Float32, std::vector<int64_t>{}, std::vector<double>{double(i % 3)});
  }
  TensorList views() const {
    TensorList out;
    for (const Buffer& b : buffers) out.push_back(b.view());
    return out;
  }
};

// Tolerance after a few steps: float64 to rounding, float32 a few ulps of growth per step.
Tolerance step_tolerance(DType dtype) { return dtype == DType::Float64 ? Tolerance{1e-12, 1e-13} : Tolerance{2e-5, 2e-6}; }

void expect_close(const Lists& l, DType dtype, const char* what) {
  for (size_t t = 0; t < l.buffers.size(); ++t)
    EXPECT_TRUE(AllClose(l.buffers[t].values(), l.ref[t], step_tolerance(dtype))) << what << " tensor " << t;
}

// The gradient a rule follows: negated when maximizing, plus λ·p.
double effective(double g, double p, bool maximize, double weight_decay) {
  return (maximize ? -g : g) + weight_decay * p;
}

class OptimRules : public ::testing::TestWithParam<DType> {
 protected:
  void SetUp() override { threads_ = std::make_unique<ScopedThreads>(2); }
  std::unique_ptr<ScopedThreads> threads_;
};

TEST_P(OptimRules, Sgd) {
  const DType dtype = GetParam();
  for (bool nesterov : {false, true})
    for (double momentum : {0.0, 0.9}) {
      if (nesterov && momentum == 0) continue;
      Random rng(11);
      Lists p = random_lists(rng, dtype, -1, 1), b = random_lists(rng, dtype, -1, 1);
      const double lr = 0.05, dampening = nesterov ? 0 : 0.2, wd = 0.01;
      for (int step = 0; step < 3; ++step) {
        Lists g = random_lists(rng, dtype, -1, 1);
        std::vector<bool> is_new(momentum != 0 ? kShapes.size() : 0, step == 0);
        optim::sgd_step<DeviceType::CPU>(p.views(), g.views(), momentum != 0 ? b.views() : TensorList{}, is_new, lr,
                                         momentum, dampening, wd, nesterov, step == 1);
        for (size_t t = 0; t < kShapes.size(); ++t)
          for (size_t i = 0; i < p.ref[t].size(); ++i) {
            double d = effective(g.ref[t][i], p.ref[t][i], step == 1, wd);
            if (momentum != 0) {
              b.ref[t][i] = step == 0 ? d : momentum * b.ref[t][i] + (1 - dampening) * d;
              d = nesterov ? d + momentum * b.ref[t][i] : b.ref[t][i];
            }
            p.ref[t][i] -= lr * d;
          }
      }
      expect_close(p, dtype, "sgd params");
      if (momentum != 0) expect_close(b, dtype, "sgd momentum buffers");
    }
}

TEST_P(OptimRules, Adagrad) {
  const DType dtype = GetParam();
  Random rng(12);
  Lists p = random_lists(rng, dtype, -1, 1), sum = random_lists(rng, dtype, 0, 1);
  Steps steps;
  const double lr = 0.1, lr_decay = 0.05, wd = 0.02, eps = 1e-10;
  for (int step = 0; step < 3; ++step) {
    Lists g = random_lists(rng, dtype, -1, 1);
    optim::adagrad_step<DeviceType::CPU>(p.views(), g.views(), sum.views(), steps.views(), lr, lr_decay, wd, eps,
                                         step == 2);
    for (size_t t = 0; t < kShapes.size(); ++t) {
      const double count = double(t % 3) + step + 1;
      const double rate = lr / (1 + (count - 1) * lr_decay);
      for (size_t i = 0; i < p.ref[t].size(); ++i) {
        const double d = effective(g.ref[t][i], p.ref[t][i], step == 2, wd);
        sum.ref[t][i] += d * d;
        p.ref[t][i] -= rate * d / (std::sqrt(sum.ref[t][i]) + eps);
      }
    }
  }
  expect_close(p, dtype, "adagrad params");
  expect_close(sum, dtype, "adagrad sums");
  for (size_t t = 0; t < kShapes.size(); ++t) EXPECT_EQ(steps.buffers[t].get(0), double(t % 3) + 3);
}

TEST_P(OptimRules, Rmsprop) {
  const DType dtype = GetParam();
  for (bool centered : {false, true})
    for (double momentum : {0.0, 0.8}) {
      Random rng(13);
      Lists p = random_lists(rng, dtype, -1, 1), sq = random_lists(rng, dtype, 0.5, 1),
            avg = random_lists(rng, dtype, -0.3, 0.3), buf = random_lists(rng, dtype, -1, 1);
      Steps steps;
      const double lr = 0.01, alpha = 0.9, eps = 1e-8, wd = 0.01;
      for (int step = 0; step < 3; ++step) {
        Lists g = random_lists(rng, dtype, -1, 1);
        optim::rmsprop_step<DeviceType::CPU>(p.views(), g.views(), sq.views(), centered ? avg.views() : TensorList{},
                                             momentum > 0 ? buf.views() : TensorList{}, steps.views(), lr, alpha, eps,
                                             wd, momentum, centered, false);
        for (size_t t = 0; t < kShapes.size(); ++t)
          for (size_t i = 0; i < p.ref[t].size(); ++i) {
            const double d = effective(g.ref[t][i], p.ref[t][i], false, wd);
            sq.ref[t][i] = alpha * sq.ref[t][i] + (1 - alpha) * d * d;
            double v = sq.ref[t][i];
            if (centered) {
              avg.ref[t][i] = alpha * avg.ref[t][i] + (1 - alpha) * d;
              v -= avg.ref[t][i] * avg.ref[t][i];
            }
            const double scaled = d / (std::sqrt(v) + eps);
            if (momentum > 0) {
              buf.ref[t][i] = momentum * buf.ref[t][i] + scaled;
              p.ref[t][i] -= lr * buf.ref[t][i];
            } else {
              p.ref[t][i] -= lr * scaled;
            }
          }
      }
      expect_close(p, dtype, "rmsprop params");
      expect_close(sq, dtype, "rmsprop square averages");
      if (centered) expect_close(avg, dtype, "rmsprop gradient averages");
      if (momentum > 0) expect_close(buf, dtype, "rmsprop momentum buffers");
    }
}

// Adam and AdaBound share their moments; `bound` switches to AdaBound's rate.
void check_adam_family(DType dtype, bool adabound, bool max_variant, bool decoupled) {
  Random rng(14);
  Lists p = random_lists(rng, dtype, -1, 1), m = random_lists(rng, dtype, -0.1, 0.1),
        v = random_lists(rng, dtype, 0, 0.01), vmax = random_lists(rng, dtype, 0, 0.02);
  Steps steps;
  const double lr = 1e-2, beta1 = 0.9, beta2 = 0.99, eps = 1e-8, wd = 0.05;
  const double final_lr = 0.1, base_lr = 2e-2, gamma = 1e-2;
  for (int step = 0; step < 3; ++step) {
    Lists g = random_lists(rng, dtype, -1, 1);
    const TensorList maxes = max_variant ? vmax.views() : TensorList{};
    if (adabound)
      optim::adabound_step<DeviceType::CPU>(p.views(), g.views(), m.views(), v.views(), maxes, steps.views(), lr,
                                            beta1, beta2, final_lr, base_lr, gamma, eps, wd, max_variant, step == 1);
    else
      optim::adam_step<DeviceType::CPU>(p.views(), g.views(), m.views(), v.views(), maxes, steps.views(), lr, beta1,
                                        beta2, eps, wd, max_variant, decoupled, step == 1);
    for (size_t t = 0; t < kShapes.size(); ++t) {
      const double count = double(t % 3) + step + 1;
      const double c1 = 1 - std::pow(beta1, count), c2 = 1 - std::pow(beta2, count);
      const double final_rate = final_lr * lr / base_lr;
      const double lower = final_rate * (1 - 1 / (gamma * count + 1)), upper = final_rate * (1 + 1 / (gamma * count));
      for (size_t i = 0; i < p.ref[t].size(); ++i) {
        double& x = p.ref[t][i];
        if (decoupled) x *= 1 - lr * wd;
        const double d = effective(g.ref[t][i], x, step == 1, decoupled ? 0 : wd);
        m.ref[t][i] = beta1 * m.ref[t][i] + (1 - beta1) * d;
        v.ref[t][i] = beta2 * v.ref[t][i] + (1 - beta2) * d * d;
        double second = v.ref[t][i];
        if (max_variant) second = vmax.ref[t][i] = std::max(vmax.ref[t][i], second);
        if (adabound) {
          const double rate = std::clamp(lr * std::sqrt(c2) / c1 / (std::sqrt(second) + eps), lower, upper);
          x -= rate * m.ref[t][i];
        } else {
          x -= lr / c1 * m.ref[t][i] / (std::sqrt(second) / std::sqrt(c2) + eps);
        }
      }
    }
  }
  expect_close(p, dtype, "params");
  expect_close(m, dtype, "exp_avg");
  expect_close(v, dtype, "exp_avg_sq");
  if (max_variant) expect_close(vmax, dtype, "max_exp_avg_sq");
}

TEST_P(OptimRules, Adam) {
  for (bool amsgrad : {false, true})
    for (bool decoupled : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "amsgrad " << amsgrad << " decoupled " << decoupled);
      check_adam_family(GetParam(), false, amsgrad, decoupled);
    }
}

TEST_P(OptimRules, AdaBound) {
  for (bool amsbound : {false, true}) {
    SCOPED_TRACE(::testing::Message() << "amsbound " << amsbound);
    check_adam_family(GetParam(), true, amsbound, false);
  }
}

TEST_P(OptimRules, GradNormAndClipping) {
  const DType dtype = GetParam();
  for (double norm_type : {2.0, double(INFINITY), 1.0, 3.5}) {
    Random rng(15);
    Lists g = random_lists(rng, dtype, -2, 2);
    double acc = 0;
    for (const auto& t : g.ref)
      for (double x : t) acc = std::isinf(norm_type) ? std::max(acc, std::fabs(x)) : acc + std::pow(std::fabs(x), norm_type);
    const double expected = std::isinf(norm_type) ? acc : std::pow(acc, 1 / norm_type);
    Buffer norm(dtype, {});
    optim::grad_norm<DeviceType::CPU>(g.views(), norm_type, norm.view(), Buffer(DType::UInt8, {0}).view());
    EXPECT_NEAR(norm.get(0), expected, (dtype == DType::Float64 ? 1e-12 : 1e-6) * expected) << "p = " << norm_type;

    optim::clip_grads_by_norm<DeviceType::CPU>(g.views(), norm.view(), 2 * expected);  // coefficient 1: untouched
    expect_close(g, dtype, "clip above the norm");
    const double max_norm = expected / 4;
    optim::clip_grads_by_norm<DeviceType::CPU>(g.views(), norm.view(), max_norm);
    const double coefficient = max_norm / (norm.get(0) + 1e-6);
    for (auto& t : g.ref)
      for (double& x : t) x *= coefficient;
    expect_close(g, dtype, "clip below the norm");
  }
  Random rng(16);
  Lists g = random_lists(rng, dtype, -2, 2);
  g.buffers[0].set(1, NAN);
  g.ref[0][1] = NAN;
  optim::clip_grads_by_value<DeviceType::CPU>(g.views(), 0.75);
  for (auto& t : g.ref)
    for (double& x : t) x = std::isnan(x) ? x : std::clamp(x, -0.75, 0.75);
  EXPECT_TRUE(std::isnan(g.buffers[0].get(1)));
  g.buffers[0].set(1, 0);
  g.ref[0][1] = 0;
  expect_close(g, dtype, "clip by value");
}

// Updates are elementwise: bit-identical whatever the thread count. The norm's partial sums follow
// the chunks, so it may differ in the last bits between thread counts (never between runs).
TEST_P(OptimRules, ThreadCountDoesNotChangeResults) {
  const DType dtype = GetParam();
  std::vector<std::vector<double>> params;
  std::vector<double> norms;
  for (int threads : {1, 2, 3, 3}) {
    ScopedThreads scope(threads);
    Random rng(17);
    Lists p = random_lists(rng, dtype, -1, 1), g = random_lists(rng, dtype, -1, 1), m = random_lists(rng, dtype, 0, 0),
          v = random_lists(rng, dtype, 0, 0);
    Steps steps;
    optim::adam_step<DeviceType::CPU>(p.views(), g.views(), m.views(), v.views(), {}, steps.views(), 1e-3, 0.9, 0.999,
                                      1e-8, 0, false, false, false);
    Buffer norm(dtype, {});
    optim::grad_norm<DeviceType::CPU>(g.views(), 2, norm.view(), Buffer(DType::UInt8, {0}).view());
    params.push_back(p.buffers[3].values());
    norms.push_back(norm.get(0));
  }
  for (size_t i = 1; i < params.size(); ++i) {
    EXPECT_EQ(params[0], params[i]);
    EXPECT_NEAR(norms[0], norms[i], 1e-14 * norms[0]);
  }
  EXPECT_EQ(norms[2], norms[3]);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, OptimRules, ::testing::Values(DType::Float64, DType::Float32), DTypeName());

// ----------------------------------------------------------------------------------- validation

// A small Adam group whose every tensor and step counter is snapshotted, so that a rejected call
// can be shown to have touched nothing.
struct AdamGroup {
  Random rng{18};
  std::vector<Buffer> p, g, m, v;
  std::vector<Buffer> steps;
  AdamGroup() {
    for (auto shape : std::vector<std::vector<int64_t>>{{4, 3}, {5}}) {
      for (auto* list : {&p, &g, &m, &v}) list->push_back(random_buffer(rng, DType::Float32, shape));
      steps.emplace_back(DType::Float32, std::vector<int64_t>{}, std::vector<double>{0});
    }
    for (auto* list : {&p, &g, &m, &v, &steps})
      for (Buffer& b : *list) b.snapshot();
  }
  static TensorList views(const std::vector<Buffer>& l) {
    TensorList out;
    for (const Buffer& b : l) out.push_back(b.view());
    return out;
  }
  void step(TensorList params, TensorList grads, TensorList exp_avgs, TensorList steps_list, double lr = 1e-3) {
    optim::adam_step<DeviceType::CPU>(params, grads, exp_avgs, views(v), {}, steps_list, lr, 0.9, 0.999, 1e-8, 0,
                                      false, false, false);
  }
  bool untouched() const {
    for (auto* list : {&p, &g, &m, &v, &steps})
      for (const Buffer& b : *list)
        if (!b.unchanged_since_snapshot()) return false;
    return true;
  }
};

void expect_rejected(const std::function<void(AdamGroup&)>& call, ErrorKind kind, const std::string& fragment) {
  AdamGroup group;
  try {
    call(group);
    ADD_FAILURE() << "expected an error mentioning " << fragment;
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), kind) << e.what();
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
  }
  EXPECT_TRUE(group.untouched()) << "a rejected call wrote memory (" << fragment << ")";
}

TEST(OptimValidation, MismatchedShape) {
  expect_rejected([](AdamGroup& a) {
    TensorList grads = AdamGroup::views(a.g);
    grads[1] = a.g[0].view();  // (4, 3) for a (5) parameter
    a.step(AdamGroup::views(a.p), grads, AdamGroup::views(a.m), AdamGroup::views(a.steps));
  }, ErrorKind::Value, "'grads[1]' expected shape (5)");
}

TEST(OptimValidation, MismatchedStateShapeInLastTensor) {
  expect_rejected([](AdamGroup& a) {
    TensorList exp_avgs = AdamGroup::views(a.m);
    exp_avgs[1].sizes[0] = 4;
    a.step(AdamGroup::views(a.p), AdamGroup::views(a.g), exp_avgs, AdamGroup::views(a.steps));
  }, ErrorKind::Value, "'exp_avgs[1]'");
}

TEST(OptimValidation, WrongDtype) {
  expect_rejected([](AdamGroup& a) {
    TensorList grads = AdamGroup::views(a.g);
    grads[0].dtype = DType::Float64;
    a.step(AdamGroup::views(a.p), grads, AdamGroup::views(a.m), AdamGroup::views(a.steps));
  }, ErrorKind::Type, "'grads[0]' expected dtype float32");
}

TEST(OptimValidation, NonContiguousParam) {
  expect_rejected([](AdamGroup& a) {
    TensorList params = AdamGroup::views(a.p);
    std::swap(params[0].strides[0], params[0].strides[1]);
    a.step(params, AdamGroup::views(a.g), AdamGroup::views(a.m), AdamGroup::views(a.steps));
  }, ErrorKind::Value, "'params[0]' expected contiguous");
}

TEST(OptimValidation, ListLengths) {
  expect_rejected([](AdamGroup& a) {
    TensorList grads = AdamGroup::views(a.g);
    grads.pop_back();
    a.step(AdamGroup::views(a.p), grads, AdamGroup::views(a.m), AdamGroup::views(a.steps));
  }, ErrorKind::Value, "'grads' expected 2 tensors");
}

TEST(OptimValidation, StepCounters) {
  expect_rejected([](AdamGroup& a) {
    TensorList steps = AdamGroup::views(a.steps);
    steps[1].device = Device{DeviceType::CUDA, 0};
    a.step(AdamGroup::views(a.p), AdamGroup::views(a.g), AdamGroup::views(a.m), steps);
  }, ErrorKind::Value, "'steps[1]' expected a step counter in host (cpu) memory");
  expect_rejected([](AdamGroup& a) {
    TensorList steps = AdamGroup::views(a.steps);
    steps[0] = a.p[1].view();
    a.step(AdamGroup::views(a.p), AdamGroup::views(a.g), AdamGroup::views(a.m), steps);
  }, ErrorKind::Value, "'steps[0]' expected one element");
}

TEST(OptimValidation, HyperParameters) {
  expect_rejected([](AdamGroup& a) {
    a.step(AdamGroup::views(a.p), AdamGroup::views(a.g), AdamGroup::views(a.m), AdamGroup::views(a.steps), -1);
  }, ErrorKind::Value, "'lr' expected a non-negative number");
  expect_rejected([](AdamGroup& a) {
    a.step(AdamGroup::views(a.p), AdamGroup::views(a.g), AdamGroup::views(a.m), AdamGroup::views(a.steps), NAN);
  }, ErrorKind::Value, "'lr'");
}

TEST(OptimValidation, OptionalListsFollowTheirOption) {
  AdamGroup a;
  EXPECT_THROW(optim::sgd_step<DeviceType::CPU>(AdamGroup::views(a.p), AdamGroup::views(a.g), {}, {}, 0.1, 0.9, 0, 0,
                                                false, false),
               Error);  // momentum without buffers
  EXPECT_THROW(optim::rmsprop_step<DeviceType::CPU>(AdamGroup::views(a.p), AdamGroup::views(a.g),
                                                    AdamGroup::views(a.m), {}, {}, AdamGroup::views(a.steps), 0.1,
                                                    0.99, 1e-8, 0, 0, /*centered=*/true, false),
               Error);  // centered without gradient averages
  EXPECT_TRUE(a.untouched());
}

TEST(OptimValidation, GradNormOutput) {
  AdamGroup a;
  Buffer wrong(DType::Float64, {});  // float32 gradients take a float32 norm
  EXPECT_THROW(optim::grad_norm<DeviceType::CPU>(AdamGroup::views(a.g), 2, wrong.view(), Buffer(DType::UInt8, {0}).view()),
               Error);
  Buffer norm(DType::Float32, {});
  EXPECT_THROW(optim::grad_norm<DeviceType::CPU>(AdamGroup::views(a.g), -1, norm.view(), Buffer(DType::UInt8, {0}).view()),
               Error);
  EXPECT_TRUE(a.untouched());
}

}  // namespace
}  // namespace replearn::test
