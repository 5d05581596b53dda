// Backward kernels of the normalization family.
//
// Each op is set up as a Problem: inputs, a fixed random r, the scalar loss L = Σ y·r of its
// forward, and its backward fed dy = r, so the backward kernel's outputs are ∂L/∂(inputs). Then
//   - in float64, every gradient matches central finite differences of L (batch norm in both
//     training and evaluation mode);
//   - in float32, every gradient matches the float64 kernel on the same (rounded) inputs, at sizes
//     large enough to split the work across threads;
//   - a gradient that is not requested (nullopt) is not written, the requested ones do not change,
//     and no input of backward is modified;
//   - a workspace sized by *_workspace_size under one thread count is used correctly under another.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/memory.h"
#include "norm/norm.h"
#include "test_helpers.h"

namespace replearn::norm {
namespace {

using test::AllClose;
using test::Buffer;
using test::kGradientTolerance;
using test::kSentinel;
using test::Random;
using test::ScopedThreads;
using test::product;
using test::shape_name;
constexpr auto CPU = DeviceType::CPU;

struct Affine {
  bool weight, bias;
};
constexpr Affine kAffines[] = {{false, false}, {true, false}, {false, true}, {true, true}};
constexpr Affine kBoth{true, true};
std::string affine_name(Affine a) {
  return std::string(a.weight ? ", weight" : ", no weight") + (a.bias ? ", bias" : ", no bias");
}

// ------------------------------------------------------------------------------------ Problem

// A differentiable input and the buffer its gradient is written to.
struct Param {
  std::string grad_name;
  Buffer* input;
  Buffer* grad;
};

class Problem {
 public:
  Problem(DType dtype, uint64_t seed, std::string description)
      : dtype(dtype), description(std::move(description)), rng_(seed) {}
  virtual ~Problem() = default;
  Problem(const Problem&) = delete;
  Problem& operator=(const Problem&) = delete;

  virtual void forward() = 0;
  // forward(), then the backward kernel with dy, asking for params[i]'s gradient iff requested[i];
  // every gradient buffer is filled with the sentinel first.
  virtual void backward(const std::vector<bool>& requested) = 0;

  double loss() {
    forward();
    return test::dot(*output, dy->values());
  }
  void backward_all() { backward(std::vector<bool>(params.size(), true)); }

  const DType dtype;
  const std::string description;
  std::vector<Param> params;
  std::vector<Buffer*> inputs;  // every input of forward and backward, dy included
  Buffer* output = nullptr;     // y (w for weight norm)
  Buffer* dy = nullptr;         // r

 protected:
  Buffer* input(std::vector<int64_t> sizes, double low, double high) {
    Buffer* b = &storage_.emplace_back(test::random_buffer(rng_, dtype, std::move(sizes), low, high));
    inputs.push_back(b);
    return b;
  }
  Buffer* optional_input(bool present, std::vector<int64_t> sizes, double low, double high) {
    return present ? input(std::move(sizes), low, high) : nullptr;
  }
  Buffer* buffer(DType buffer_dtype, std::vector<int64_t> sizes) {
    return &storage_.emplace_back(buffer_dtype, std::move(sizes));
  }
  // An input that is differentiated: its gradient buffer, of the same shape, joins params.
  void differentiate(const std::string& grad_name, Buffer* b) {
    if (b) params.push_back({grad_name, b, buffer(dtype, b->sizes())});
  }
  void sentinel_gradients() {
    for (Param& p : params) p.grad->fill(kSentinel);
  }
  // The gradient view for params that are present and requested; nullopt otherwise.
  OptView grad_of(const Buffer* b, const std::vector<bool>& requested) const {
    for (size_t i = 0; i < params.size(); ++i)
      if (params[i].input == b && requested[i]) return params[i].grad->view();
    return std::nullopt;
  }
  static OptView view_of(const Buffer* b) { return b ? b->opt() : std::nullopt; }
  Random& rng() { return rng_; }

 private:
  Random rng_;
  std::deque<Buffer> storage_;  // stable addresses
};

using ProblemFactory = std::function<std::unique_ptr<Problem>(DType)>;

// ------------------------------------------------------------------------------------ layer norm

class LayerNormProblem : public Problem {
 public:
  LayerNormProblem(DType dtype, uint64_t seed, std::vector<int64_t> sizes, int normalized_ndim, Affine affine)
      : Problem(dtype, seed,
                "layer_norm " + shape_name(sizes) + " normalized_ndim " + std::to_string(normalized_ndim) +
                    affine_name(affine)),
        normalized_ndim_(normalized_ndim) {
    const size_t first = sizes.size() - normalized_ndim;
    const std::vector<int64_t> param_sizes(sizes.begin() + first, sizes.end());
    const int64_t rows = product(sizes, 0, first);
    x_ = input(sizes, -2, 3);
    weight_ = optional_input(affine.weight, param_sizes, 0.5, 1.5);
    bias_ = optional_input(affine.bias, param_sizes, -1, 1);
    dy = input(sizes, -1, 1);
    output = buffer(dtype, sizes);
    mean_ = buffer(dtype, {rows});
    rstd_ = buffer(dtype, {rows});
    differentiate("grad_x", x_);
    differentiate("grad_weight", weight_);
    differentiate("grad_bias", bias_);
  }
  void forward() override {
    layer_norm_forward<CPU>(x_->view(), normalized_ndim_, view_of(weight_), view_of(bias_), 1e-5, output->view(),
                            mean_->view(), rstd_->view());
  }
  void backward(const std::vector<bool>& requested) override {
    forward();
    sentinel_gradients();
    const OptView dweight = grad_of(weight_, requested), dbias = grad_of(bias_, requested);
    // The workspace is needed only for parameter gradients: pass none otherwise.
    Buffer workspace(DType::UInt8, {layer_norm_backward_workspace_size<CPU>(x_->view(), normalized_ndim_)});
    layer_norm_backward<CPU>(dy->view(), x_->view(), normalized_ndim_, mean_->view(), rstd_->view(),
                             view_of(weight_), grad_of(x_, requested), dweight, dbias,
                             dweight || dbias ? workspace.opt() : std::nullopt);
  }

 private:
  int normalized_ndim_;
  Buffer *x_, *weight_, *bias_, *mean_, *rstd_;
};

// -------------------------------------------------------------------------------------- rms norm

class RmsNormProblem : public Problem {
 public:
  RmsNormProblem(DType dtype, uint64_t seed, std::vector<int64_t> sizes, int normalized_ndim, bool with_weight)
      : Problem(dtype, seed,
                "rms_norm " + shape_name(sizes) + " normalized_ndim " + std::to_string(normalized_ndim) +
                    (with_weight ? ", weight" : ", no weight")),
        normalized_ndim_(normalized_ndim) {
    const size_t first = sizes.size() - normalized_ndim;
    const std::vector<int64_t> param_sizes(sizes.begin() + first, sizes.end());
    x_ = input(sizes, -2, 3);
    weight_ = optional_input(with_weight, param_sizes, 0.5, 1.5);
    dy = input(sizes, -1, 1);
    output = buffer(dtype, sizes);
    rstd_ = buffer(dtype, {product(sizes, 0, first)});
    differentiate("grad_x", x_);
    differentiate("grad_weight", weight_);
  }
  void forward() override {
    rms_norm_forward<CPU>(x_->view(), normalized_ndim_, view_of(weight_), 1e-5, output->view(), rstd_->view());
  }
  void backward(const std::vector<bool>& requested) override {
    forward();
    sentinel_gradients();
    const OptView dweight = grad_of(weight_, requested);
    Buffer workspace(DType::UInt8, {rms_norm_backward_workspace_size<CPU>(x_->view(), normalized_ndim_)});
    rms_norm_backward<CPU>(dy->view(), x_->view(), normalized_ndim_, rstd_->view(), view_of(weight_),
                           grad_of(x_, requested), dweight, dweight ? workspace.opt() : std::nullopt);
  }

 private:
  int normalized_ndim_;
  Buffer *x_, *weight_, *rstd_;
};

// ------------------------------------------------------------------------------------ batch norm

// Training without running averages (so that repeated forwards are pure), or evaluation with them.
class BatchNormProblem : public Problem {
 public:
  BatchNormProblem(DType dtype, uint64_t seed, std::vector<int64_t> sizes, bool training, Affine affine)
      : Problem(dtype, seed,
                "batch_norm " + shape_name(sizes) + (training ? " training" : " evaluation") + affine_name(affine)),
        training_(training) {
    const int64_t C = sizes[1];
    x_ = input(sizes, -2, 3);
    weight_ = optional_input(affine.weight, {C}, 0.5, 1.5);
    bias_ = optional_input(affine.bias, {C}, -1, 1);
    running_mean_ = optional_input(!training, {C}, -1, 1);
    running_var_ = optional_input(!training, {C}, 0.5, 2);
    dy = input(sizes, -1, 1);
    output = buffer(dtype, sizes);
    save_mean_ = buffer(dtype, {C});
    save_rstd_ = buffer(dtype, {C});
    differentiate("grad_x", x_);
    differentiate("grad_weight", weight_);
    differentiate("grad_bias", bias_);
  }
  void forward() override {
    batch_norm_forward<CPU>(x_->view(), view_of(weight_), view_of(bias_), view_of(running_mean_),
                            view_of(running_var_), training_, 0.1, 1e-5, output->view(), save_mean_->view(),
                            save_rstd_->view());
  }
  void backward(const std::vector<bool>& requested) override {
    forward();
    sentinel_gradients();
    batch_norm_backward<CPU>(dy->view(), x_->view(), save_mean_->view(), save_rstd_->view(), view_of(weight_),
                             training_, grad_of(x_, requested), grad_of(weight_, requested),
                             grad_of(bias_, requested));
  }

 private:
  bool training_;
  Buffer *x_, *weight_, *bias_, *running_mean_, *running_var_, *save_mean_, *save_rstd_;
};

// ------------------------------------------------------------------------------------ group norm

class GroupNormProblem : public Problem {
 public:
  GroupNormProblem(DType dtype, uint64_t seed, std::vector<int64_t> sizes, int64_t groups, Affine affine)
      : Problem(dtype, seed,
                "group_norm " + shape_name(sizes) + " groups " + std::to_string(groups) + affine_name(affine)),
        groups_(groups) {
    const int64_t C = sizes[1];
    x_ = input(sizes, -2, 3);
    weight_ = optional_input(affine.weight, {C}, 0.5, 1.5);
    bias_ = optional_input(affine.bias, {C}, -1, 1);
    dy = input(sizes, -1, 1);
    output = buffer(dtype, sizes);
    mean_ = buffer(dtype, {sizes[0] * groups});
    rstd_ = buffer(dtype, {sizes[0] * groups});
    differentiate("grad_x", x_);
    differentiate("grad_weight", weight_);
    differentiate("grad_bias", bias_);
  }
  void forward() override {
    group_norm_forward<CPU>(x_->view(), groups_, view_of(weight_), view_of(bias_), 1e-5, output->view(),
                            mean_->view(), rstd_->view());
  }
  void backward(const std::vector<bool>& requested) override {
    forward();
    sentinel_gradients();
    Buffer workspace(DType::UInt8, {group_norm_backward_workspace_size<CPU>(x_->view(), groups_)});
    group_norm_backward<CPU>(dy->view(), x_->view(), groups_, mean_->view(), rstd_->view(), view_of(weight_),
                             grad_of(x_, requested), grad_of(weight_, requested), grad_of(bias_, requested),
                             workspace.opt());
  }

 private:
  int64_t groups_;
  Buffer *x_, *weight_, *bias_, *mean_, *rstd_;
};

// ----------------------------------------------------------------------------------- weight norm

class WeightNormProblem : public Problem {
 public:
  WeightNormProblem(DType dtype, uint64_t seed, std::vector<int64_t> sizes, int dim)
      : Problem(dtype, seed, "weight_norm " + shape_name(sizes) + " dim " + std::to_string(dim)), dim_(dim) {
    const int64_t slices = dim == -1 ? 1 : sizes[dim];
    v_ = input(sizes, -2, 2);
    g_ = input({slices}, 0.5, 2);
    dy = input(sizes, -1, 1);
    output = buffer(dtype, sizes);
    norm_ = buffer(dtype, {slices});
    differentiate("grad_v", v_);
    differentiate("grad_g", g_);
  }
  void forward() override { weight_norm_forward<CPU>(v_->view(), g_->view(), dim_, output->view(), norm_->view()); }
  void backward(const std::vector<bool>& requested) override {
    forward();
    sentinel_gradients();
    weight_norm_backward<CPU>(dy->view(), v_->view(), g_->view(), norm_->view(), dim_, grad_of(v_, requested),
                              grad_of(g_, requested));
  }

 private:
  int dim_;
  Buffer *v_, *g_, *norm_;
};

// Small problems for finite differences: every case of every op, odd sizes included.
std::vector<ProblemFactory> small_problems() {
  std::vector<ProblemFactory> out;
  uint64_t seed = 100;
  struct RowShape {
    std::vector<int64_t> sizes;
    int normalized_ndim;
  };
  for (const RowShape& s : {RowShape{{3, 5}, 1}, RowShape{{1, 4}, 1}, RowShape{{4, 1}, 1}, RowShape{{6}, 1},
                            RowShape{{2, 3, 4}, 2}}) {
    for (const Affine a : kAffines)
      out.push_back([=](DType d) { return std::make_unique<LayerNormProblem>(d, seed, s.sizes, s.normalized_ndim, a); });
    for (const bool w : {false, true})
      out.push_back([=](DType d) { return std::make_unique<RmsNormProblem>(d, seed, s.sizes, s.normalized_ndim, w); });
    ++seed;
  }
  // {2, 9, 2}: nine channels, so one thread walks several channel blocks and a partial last one
  // (cpu.cpp's kForwardBlock).
  for (const std::vector<int64_t>& sizes :
       {std::vector<int64_t>{4, 3}, {2, 3, 5}, {1, 2, 3}, {3, 2, 2, 2}, {5, 1}, {2, 9, 2}}) {
    for (const bool training : {true, false})
      for (const Affine a : kAffines)
        out.push_back([=](DType d) { return std::make_unique<BatchNormProblem>(d, seed, sizes, training, a); });
    ++seed;
  }
  out.push_back([=](DType d) { return std::make_unique<BatchNormProblem>(d, seed, std::vector<int64_t>{1, 3}, false,
                                                                         Affine{true, true}); });
  struct GroupShape {
    std::vector<int64_t> sizes;
    int64_t groups;
  };
  for (const GroupShape& s : {GroupShape{{2, 6, 3}, 1}, GroupShape{{2, 6, 3}, 2}, GroupShape{{2, 6, 3}, 3},
                              GroupShape{{2, 6, 3}, 6}, GroupShape{{1, 4}, 2}, GroupShape{{3, 4, 2, 2}, 2}}) {
    for (const Affine a : kAffines)
      out.push_back([=](DType d) { return std::make_unique<GroupNormProblem>(d, seed, s.sizes, s.groups, a); });
    ++seed;
  }
  struct SliceShape {
    std::vector<int64_t> sizes;
    int dim;
  };
  for (const SliceShape& s : {SliceShape{{4, 3, 5}, 0}, SliceShape{{4, 3, 5}, 1}, SliceShape{{4, 3, 5}, 2},
                              SliceShape{{4, 3, 5}, -1}, SliceShape{{7}, 0}, SliceShape{{7}, -1},
                              SliceShape{{3, 1, 4}, 1}}) {
    out.push_back([=](DType d) { return std::make_unique<WeightNormProblem>(d, seed, s.sizes, s.dim); });
    ++seed;
  }
  return out;
}

// Larger problems for float32 against float64: 1000+ columns, several parallel chunks.
std::vector<ProblemFactory> large_problems() {
  std::vector<ProblemFactory> out;
  out.push_back([](DType d) { return std::make_unique<LayerNormProblem>(d, 1, std::vector<int64_t>{64, 1031}, 1, kBoth); });
  out.push_back([](DType d) { return std::make_unique<LayerNormProblem>(d, 2, std::vector<int64_t>{7, 1031}, 1, Affine{}); });
  out.push_back([](DType d) { return std::make_unique<RmsNormProblem>(d, 3, std::vector<int64_t>{64, 1031}, 1, true); });
  out.push_back([](DType d) { return std::make_unique<RmsNormProblem>(d, 4, std::vector<int64_t>{1, 1031}, 1, false); });
  out.push_back([](DType d) { return std::make_unique<BatchNormProblem>(d, 5, std::vector<int64_t>{8, 6, 257}, true, kBoth); });
  out.push_back([](DType d) { return std::make_unique<BatchNormProblem>(d, 6, std::vector<int64_t>{8, 6, 257}, false, kBoth); });
  // 19 channels over 2 or 3 threads: several channel blocks per thread, the last one partial.
  out.push_back([](DType d) { return std::make_unique<BatchNormProblem>(d, 12, std::vector<int64_t>{5, 19, 67}, true, kBoth); });
  out.push_back([](DType d) { return std::make_unique<GroupNormProblem>(d, 7, std::vector<int64_t>{3, 8, 1031}, 4, kBoth); });
  out.push_back([](DType d) { return std::make_unique<GroupNormProblem>(d, 8, std::vector<int64_t>{64, 6, 7}, 3, kBoth); });
  out.push_back([](DType d) { return std::make_unique<WeightNormProblem>(d, 9, std::vector<int64_t>{1031, 3}, 0); });
  out.push_back([](DType d) { return std::make_unique<WeightNormProblem>(d, 10, std::vector<int64_t>{64, 300}, 1); });
  out.push_back([](DType d) { return std::make_unique<WeightNormProblem>(d, 11, std::vector<int64_t>{8, 9, 300}, -1); });
  return out;
}

// ----------------------------------------------------------------------------------- the tests

// The small problems run on one thread: each is one chunk of work, and OpenMP teams spinning on a
// loaded 2-core CI machine would only add time. Threading is covered by the large problems.
TEST(NormBackward, Float64MatchesFiniteDifferences) {
  ScopedThreads threads(1);
  for (const ProblemFactory& make : small_problems()) {
    std::unique_ptr<Problem> problem = make(DType::Float64);
    SCOPED_TRACE(problem->description);
    problem->backward_all();
    for (const Param& p : problem->params) {
      const std::vector<double> numeric = test::numeric_gradient(*p.input, [&] { return problem->loss(); });
      EXPECT_TRUE(AllClose(p.grad->values(), numeric, kGradientTolerance)) << p.grad_name;
    }
  }
}

TEST(NormBackward, Float64DoesNotDependOnThreadCount) {
  for (const ProblemFactory& make : large_problems()) {
    std::unique_ptr<Problem> reference = make(DType::Float64);
    SCOPED_TRACE(reference->description);
    {
      ScopedThreads threads(1);
      reference->backward_all();
    }
    for (const int thread_count : {2, 3}) {
      SCOPED_TRACE(std::to_string(thread_count) + " threads");
      std::unique_ptr<Problem> threaded = make(DType::Float64);
      ScopedThreads threads(thread_count);
      threaded->backward_all();
      for (size_t i = 0; i < threaded->params.size(); ++i)
        EXPECT_TRUE(AllClose(threaded->params[i].grad->values(), reference->params[i].grad->values(),
                             {1e-12, 1e-12}))
            << threaded->params[i].grad_name;
    }
  }
}

TEST(NormBackward, Float32MatchesFloat64) {
  ScopedThreads threads(2);
  for (const ProblemFactory& make : large_problems()) {
    std::unique_ptr<Problem> single = make(DType::Float32), reference = make(DType::Float64);
    SCOPED_TRACE(single->description);
    // The float64 run starts from the float32-rounded inputs: only the kernel's rounding differs.
    for (size_t i = 0; i < single->inputs.size(); ++i) reference->inputs[i]->set_values(single->inputs[i]->values());
    single->backward_all();
    reference->backward_all();
    for (size_t i = 0; i < single->params.size(); ++i) {
      const std::vector<double> expected = reference->params[i].grad->values();
      double scale = 1;
      for (double v : expected) scale = std::max(scale, std::fabs(v));
      // Gradients are sums whose terms cancel: bound the error relative to the largest one.
      EXPECT_TRUE(AllClose(single->params[i].grad->values(), expected, {1e-5, 1e-5 * scale}))
          << single->params[i].grad_name;
    }
  }
}

TEST(NormBackward, UnrequestedGradientsAreNotWritten) {
  ScopedThreads threads(1);
  for (const ProblemFactory& make : small_problems()) {
    std::unique_ptr<Problem> problem = make(DType::Float64);
    SCOPED_TRACE(problem->description);
    problem->backward_all();
    std::vector<std::vector<double>> full;
    for (const Param& p : problem->params) full.push_back(p.grad->values());
    for (Buffer* b : problem->inputs) b->snapshot();
    const size_t n = problem->params.size();
    for (unsigned mask = 0; mask < (1u << n); ++mask) {
      std::vector<bool> requested(n);
      std::string which;
      for (size_t i = 0; i < n; ++i) {
        requested[i] = (mask >> i) & 1;
        if (requested[i]) which += " " + problem->params[i].grad_name;
      }
      SCOPED_TRACE("requested:" + (which.empty() ? std::string(" none") : which));
      problem->backward(requested);
      for (size_t i = 0; i < n; ++i) {
        const Param& p = problem->params[i];
        if (requested[i])
          EXPECT_TRUE(AllClose(p.grad->values(), full[i], {1e-14, 1e-14})) << p.grad_name << " changed";
        else
          EXPECT_TRUE(test::all_equal(*p.grad, kSentinel)) << p.grad_name << " was written without being requested";
      }
      for (Buffer* b : problem->inputs) EXPECT_TRUE(b->unchanged_since_snapshot()) << "an input was modified";
    }
  }
}

// --------------------------------------------------------------------------------- workspaces

struct ThreadCounts {
  int query, run;
};
constexpr ThreadCounts kThreadMismatches[] = {{1, 2}, {2, 1}, {1, 3}, {3, 2}};

// layer_norm / rms_norm: the workspace holds one block of partial sums per parallel chunk, so its
// size depends on the thread count. A workspace sized under `query` threads and used under `run`
// threads must give the same gradients (to rounding) and stay within its bounds (guard bytes).
template <class Run>
void check_row_workspace(const char* op, int64_t rows, int64_t cols, const Run& run) {
  SCOPED_TRACE(std::string(op) + " " + std::to_string(rows) + "x" + std::to_string(cols));
  Random rng(42);
  const Buffer x = test::random_buffer(rng, DType::Float64, {rows, cols}, -2, 3);
  const Buffer dy = test::random_buffer(rng, DType::Float64, {rows, cols}, -1, 1);
  const Buffer weight = test::random_buffer(rng, DType::Float64, {cols}, 0.5, 1.5);
  auto workspace_bytes = [&](int threads) {
    ScopedThreads scoped(threads);
    return std::string(op) == "layer_norm" ? layer_norm_backward_workspace_size<CPU>(x.view(), 1)
                                           : rms_norm_backward_workspace_size<CPU>(x.view(), 1);
  };
  ASSERT_LT(workspace_bytes(1), workspace_bytes(2)) << "the shape must split into chunks for the test to bite";
  // Reference: one thread, its own workspace.
  Buffer ref_dx(DType::Float64, {rows, cols}), ref_dw(DType::Float64, {cols}), ref_db(DType::Float64, {cols});
  {
    ScopedThreads scoped(1);
    Buffer workspace(DType::UInt8, {workspace_bytes(1)});
    run(x, dy, weight, ref_dx, ref_dw, ref_db, workspace);
  }
  for (const ThreadCounts t : kThreadMismatches) {
    SCOPED_TRACE("workspace sized under " + std::to_string(t.query) + " threads, run under " +
                 std::to_string(t.run));
    Buffer workspace(DType::UInt8, {workspace_bytes(t.query)});
    Buffer dx(DType::Float64, {rows, cols}), dw(DType::Float64, {cols}), db(DType::Float64, {cols});
    ScopedThreads scoped(t.run);
    run(x, dy, weight, dx, dw, db, workspace);
    EXPECT_TRUE(AllClose(dx.values(), ref_dx.values(), {1e-12, 1e-12})) << "grad_x";
    EXPECT_TRUE(AllClose(dw.values(), ref_dw.values(), {1e-12, 1e-12})) << "grad_weight";
    EXPECT_TRUE(AllClose(db.values(), ref_db.values(), {1e-12, 1e-12})) << "grad_bias";
  }
}

// Outputs at least the last-level cache's size are streamed, in the column order that keeps dx's
// stores out of the 4K-aliasing zones of x and dy (core/memory.h, streaming_walk), and the
// parameter-gradient block is placed clear of all three. x and dy sit at fixed offsets within
// their pages, dx at three others, so that each walk is taken: every gradient must be bit for bit
// the same as with ordinary stores (the column order changes no arithmetic). Rows of 1024 float32
// lie the same way in every page; rows of 1040 shift by 64 bytes a row.
TEST(NormBackwardBeyondTheCache, RowNormsTakeEveryWalk) {
  const int64_t llc = last_level_cache_bytes();
  if (llc > (int64_t{256} << 20)) GTEST_SKIP() << "a last-level cache of " << llc << " bytes";
  ScopedThreads threads(2);
  for (const int64_t cols : {1024, 1040}) {
    const int64_t rows = llc / (cols * 4) + 1, count = rows * cols;
    SCOPED_TRACE("rows " + std::to_string(rows) + ", cols " + std::to_string(cols));
    const int64_t region = (count * 4 + 4095) / 4096 * 4096 + 4096;  // an array and a page of slack
    std::unique_ptr<char, decltype(&std::free)> arena(static_cast<char*>(std::aligned_alloc(4096, 3 * region)),
                                                      &std::free);
    ASSERT_NE(arena, nullptr);
    float* x = reinterpret_cast<float*>(arena.get());
    float* dy = reinterpret_cast<float*>(arena.get() + region + 2048);
    Random rng(5);
    const std::vector<double> x_values = rng.uniform(count, -2, 3), dy_values = rng.uniform(count, -1, 1);
    std::copy(x_values.begin(), x_values.end(), x);
    std::copy(dy_values.begin(), dy_values.end(), dy);
    const Buffer weight = test::random_buffer(rng, DType::Float32, {cols}, 0.5, 1.5);
    TensorView x_view = weight.view(), dy_view = weight.view(), dx_view = weight.view();
    x_view.ndim = 2;
    x_view.sizes[0] = rows;
    x_view.sizes[1] = cols;
    x_view.strides[0] = cols;
    x_view.strides[1] = 1;
    x_view.data = x;
    dy_view = x_view;
    dy_view.data = dy;
    Buffer y(DType::Float32, {rows, cols}), mean(DType::Float32, {rows}), rstd(DType::Float32, {rows});
    Buffer dw(DType::Float32, {cols}), db(DType::Float32, {cols});
    Buffer workspace(DType::UInt8, {layer_norm_backward_workspace_size<CPU>(x_view, 1)});
    ASSERT_EQ(workspace.numel(), rms_norm_backward_workspace_size<CPU>(x_view, 1));

    // (op, with parameter gradients) → dx, dw, db of the run with ordinary stores.
    std::vector<std::vector<float>> expected;
    for (const int64_t dx_offset : {0, 1024, 384}) {  // ordinary stores, walking up, walking down
      float* dx = reinterpret_cast<float*>(arena.get() + 2 * region + dx_offset);
      dx_view.data = dx;
      dx_view.ndim = 2;
      dx_view.sizes[0] = rows;
      dx_view.sizes[1] = cols;
      dx_view.strides[0] = cols;
      dx_view.strides[1] = 1;
      const StoreWalk walk = streaming_walk({dx, dx + cols}, {x, x + cols, dy, dy + cols});
      if (cols == 1024) {
        const StoreWalk wanted = dx_offset == 0 ? StoreWalk::kNormal : dx_offset == 1024 ? StoreWalk::kUp : StoreWalk::kDown;
        EXPECT_EQ(walk, wanted) << "dx at " << dx_offset;
      }
      int run = 0;
      for (const bool layer : {true, false}) {
        for (const bool params : {true, false}) {
          SCOPED_TRACE(std::string(layer ? "layer_norm" : "rms_norm") + (params ? ", dx dw db" : ", dx") +
                       ", dx at " + std::to_string(dx_offset));
          std::fill(dx, dx + count, std::nanf(""));
          dw.fill(kSentinel);
          db.fill(kSentinel);
          const OptView dw_out = params ? dw.opt() : std::nullopt;
          const OptView ws = params ? workspace.opt() : std::nullopt;
          if (layer) {
            layer_norm_forward<CPU>(x_view, 1, weight.opt(), std::nullopt, 1e-5, y.view(), mean.view(), rstd.view());
            layer_norm_backward<CPU>(dy_view, x_view, 1, mean.view(), rstd.view(), weight.opt(), dx_view, dw_out,
                                     params ? db.opt() : std::nullopt, ws);
          } else {
            rms_norm_forward<CPU>(x_view, 1, weight.opt(), 1e-5, y.view(), rstd.view());
            rms_norm_backward<CPU>(dy_view, x_view, 1, rstd.view(), weight.opt(), dx_view, dw_out, ws);
          }
          std::vector<float> got(dx, dx + count);
          for (double v : dw.values()) got.push_back(static_cast<float>(v));
          for (double v : db.values()) got.push_back(static_cast<float>(v));
          if (dx_offset == 0) {
            expected.push_back(got);
          } else {
            const std::vector<float>& want = expected[run];
            ASSERT_EQ(got.size(), want.size());
            int64_t differ = 0, first = -1;
            for (size_t i = 0; i < got.size(); ++i)
              if (std::memcmp(&got[i], &want[i], sizeof(float)) != 0 && differ++ == 0) first = static_cast<int64_t>(i);
            EXPECT_EQ(differ, 0) << "first at " << first << " (dx has " << count << ")";
          }
          ++run;
        }
      }
    }
  }
}

TEST(NormBackward, LayerNormWorkspaceSizedUnderAnotherThreadCount) {
  auto run = [](const Buffer& x, const Buffer& dy, const Buffer& weight, Buffer& dx, Buffer& dw, Buffer& db,
                Buffer& workspace) {
    const int64_t rows = x.sizes()[0];
    Buffer y(DType::Float64, x.sizes()), mean(DType::Float64, {rows}), rstd(DType::Float64, {rows});
    layer_norm_forward<CPU>(x.view(), 1, weight.opt(), std::nullopt, 1e-5, y.view(), mean.view(), rstd.view());
    layer_norm_backward<CPU>(dy.view(), x.view(), 1, mean.view(), rstd.view(), weight.opt(), dx.opt(), dw.opt(),
                             db.opt(), workspace.opt());
  };
  check_row_workspace("layer_norm", 64, 1031, run);
  check_row_workspace("layer_norm", 6000, 3, run);
}

TEST(NormBackward, RmsNormWorkspaceSizedUnderAnotherThreadCount) {
  auto run = [](const Buffer& x, const Buffer& dy, const Buffer& weight, Buffer& dx, Buffer& dw, Buffer& db,
                Buffer& workspace) {
    const int64_t rows = x.sizes()[0];
    Buffer y(DType::Float64, x.sizes()), rstd(DType::Float64, {rows});
    rms_norm_forward<CPU>(x.view(), 1, weight.opt(), 1e-5, y.view(), rstd.view());
    rms_norm_backward<CPU>(dy.view(), x.view(), 1, rstd.view(), weight.opt(), dx.opt(), dw.opt(), workspace.opt());
    db.fill(0);  // rms norm has no bias
  };
  check_row_workspace("rms_norm", 64, 1031, run);
  check_row_workspace("rms_norm", 6000, 3, run);
}

TEST(NormBackward, GroupNormWorkspaceSizedUnderAnotherThreadCount) {
  Random rng(43);
  const int64_t N = 16, C = 6, S = 700, G = 3;
  const Buffer x = test::random_buffer(rng, DType::Float64, {N, C, S}, -2, 3);
  const Buffer dy = test::random_buffer(rng, DType::Float64, {N, C, S}, -1, 1);
  const Buffer weight = test::random_buffer(rng, DType::Float64, {C}, 0.5, 1.5);
  Buffer y(DType::Float64, {N, C, S}), mean(DType::Float64, {N * G}), rstd(DType::Float64, {N * G});
  group_norm_forward<CPU>(x.view(), G, weight.opt(), std::nullopt, 1e-5, y.view(), mean.view(), rstd.view());
  auto run = [&](Buffer& dx, Buffer& dw, Buffer& db, Buffer& workspace) {
    group_norm_backward<CPU>(dy.view(), x.view(), G, mean.view(), rstd.view(), weight.opt(), dx.opt(), dw.opt(),
                             db.opt(), workspace.opt());
  };
  Buffer ref_dx(DType::Float64, {N, C, S}), ref_dw(DType::Float64, {C}), ref_db(DType::Float64, {C});
  {
    ScopedThreads scoped(1);
    Buffer workspace(DType::UInt8, {group_norm_backward_workspace_size<CPU>(x.view(), G)});
    run(ref_dx, ref_dw, ref_db, workspace);
  }
  for (const ThreadCounts t : kThreadMismatches) {
    SCOPED_TRACE("workspace sized under " + std::to_string(t.query) + " threads, run under " +
                 std::to_string(t.run));
    int64_t bytes;
    {
      ScopedThreads scoped(t.query);
      bytes = group_norm_backward_workspace_size<CPU>(x.view(), G);
    }
    Buffer workspace(DType::UInt8, {bytes});
    Buffer dx(DType::Float64, {N, C, S}), dw(DType::Float64, {C}), db(DType::Float64, {C});
    ScopedThreads scoped(t.run);
    run(dx, dw, db, workspace);
    EXPECT_TRUE(AllClose(dx.values(), ref_dx.values(), {1e-12, 1e-12})) << "grad_x";
    EXPECT_TRUE(AllClose(dw.values(), ref_dw.values(), {1e-12, 1e-12})) << "grad_weight";
    EXPECT_TRUE(AllClose(db.values(), ref_db.values(), {1e-12, 1e-12})) << "grad_bias";
  }
}

TEST(NormBackward, WorkspaceSizeOfAnInvalidNormalizedShapeIsZero) {
  // The size query never throws; the backward call's validation reports the bad argument.
  Buffer x(DType::Float64, {3, 4});
  EXPECT_EQ(layer_norm_backward_workspace_size<CPU>(x.view(), 0), 0);
  EXPECT_EQ(layer_norm_backward_workspace_size<CPU>(x.view(), 3), 0);
  EXPECT_EQ(rms_norm_backward_workspace_size<CPU>(x.view(), 0), 0);
  EXPECT_GT(layer_norm_backward_workspace_size<CPU>(x.view(), 2), 0);
}


// Empty tensors (torch's modules accept an empty batch): nothing to normalize, parameter gradients
// are zero. A workspace size of 0 means "none needed" (norm.h), so passing none must work: the entry
// points must not read the absent optional (built with -D_GLIBCXX_ASSERTIONS, that aborts).
TEST(NormBackward, EmptyTensors) {
  const DType t = DType::Float64;
  Buffer x(t, {0, 6, 5}), dy(t, {0, 6, 5}), y(t, {0, 6, 5}), dx(t, {0, 6, 5});
  Buffer weight(t, {6}), dw = test::sentinel_buffer(t, {6}), db = test::sentinel_buffer(t, {6});
  weight.fill(1);
  {
    SCOPED_TRACE("group_norm");
    Buffer mean(t, {0}), rstd(t, {0});
    group_norm_forward<CPU>(x.view(), 3, weight.opt(), std::nullopt, 1e-5, y.view(), mean.view(), rstd.view());
    const int64_t bytes = group_norm_backward_workspace_size<CPU>(x.view(), 3);
    EXPECT_EQ(bytes, 0);
    group_norm_backward<CPU>(dy.view(), x.view(), 3, mean.view(), rstd.view(), weight.opt(), dx.opt(), dw.opt(),
                             db.opt(), std::nullopt);
    EXPECT_TRUE(test::all_equal(dw, 0));
    EXPECT_TRUE(test::all_equal(db, 0));
  }
  {
    SCOPED_TRACE("batch_norm evaluation");
    Buffer running_mean(t, {6}), running_var(t, {6}), save_mean(t, {6}), save_rstd(t, {6});
    running_var.fill(1);
    dw.fill(kSentinel);
    db.fill(kSentinel);
    batch_norm_forward<CPU>(x.view(), weight.opt(), std::nullopt, running_mean.opt(), running_var.opt(), false, 0.1,
                            1e-5, y.view(), save_mean.view(), save_rstd.view());
    batch_norm_backward<CPU>(dy.view(), x.view(), save_mean.view(), save_rstd.view(), weight.opt(), false, dx.opt(),
                             dw.opt(), db.opt());
    EXPECT_TRUE(test::all_equal(dw, 0));
    EXPECT_TRUE(test::all_equal(db, 0));
  }
  {
    SCOPED_TRACE("layer_norm");
    Buffer rows_x(t, {0, 5}), rows_y(t, {0, 5}), rows_dx(t, {0, 5}), mean(t, {0}), rstd(t, {0});
    Buffer row_weight(t, {5}), row_dw = test::sentinel_buffer(t, {5}), row_db = test::sentinel_buffer(t, {5});
    row_weight.fill(1);
    layer_norm_forward<CPU>(rows_x.view(), 1, row_weight.opt(), std::nullopt, 1e-5, rows_y.view(), mean.view(),
                            rstd.view());
    Buffer workspace(DType::UInt8, {layer_norm_backward_workspace_size<CPU>(rows_x.view(), 1)});
    layer_norm_backward<CPU>(rows_x.view(), rows_x.view(), 1, mean.view(), rstd.view(), row_weight.opt(),
                             rows_dx.opt(), row_dw.opt(), row_db.opt(), workspace.opt());
    EXPECT_TRUE(test::all_equal(row_dw, 0));
    EXPECT_TRUE(test::all_equal(row_db, 0));
  }
  {
    SCOPED_TRACE("layer_norm and rms_norm over an empty normalized shape");
    // Parameter gradients with no elements need a workspace of 0 bytes, that is none.
    Buffer empty_rows(t, {3, 0}), mean(t, {3}), rstd(t, {3}), empty_params(t, {0});
    EXPECT_EQ(layer_norm_backward_workspace_size<CPU>(empty_rows.view(), 1), 0);
    EXPECT_EQ(rms_norm_backward_workspace_size<CPU>(empty_rows.view(), 1), 0);
    layer_norm_backward<CPU>(empty_rows.view(), empty_rows.view(), 1, mean.view(), rstd.view(), std::nullopt,
                             empty_rows.opt(), empty_params.opt(), empty_params.opt(), std::nullopt);
    rms_norm_backward<CPU>(empty_rows.view(), empty_rows.view(), 1, rstd.view(), std::nullopt, empty_rows.opt(),
                           empty_params.opt(), std::nullopt);
  }
}

}  // namespace
}  // namespace replearn::norm
