// Validation of the normalization family's entry points ("validate, then touch": ARCHITECTURE.md).
//
// Each entry point is set up as a Case: valid arguments, every output filled with a sentinel. A test
// breaks one argument at a time and expects replearn::Error of the right kind (Type for a dtype,
// Value for everything else) whose message names the function and the argument, and every buffer
// of the call (outputs, running averages, inputs) byte-for-byte unchanged.
//
// The per-argument tests run over every tensor argument of every entry point: wrong device (a CUDA
// view passed to the CPU function), a dtype no kernel takes (int64), a float dtype other than x's,
// non-contiguous strides, a wrong shape. The per-function tests cover the scalar arguments and the
// rules between arguments (num_groups, eps, momentum, running averages, workspace, ...).
#include <gtest/gtest.h>

#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/error.h"
#include "norm/norm.h"
#include "test_helpers.h"

namespace replearn::norm {
namespace {

using test::Buffer;
constexpr auto CPU = DeviceType::CPU;

// How an argument's checks relate to the others'.
enum class Role {
  Plain,          // its dtype and shape are checked against x's (or fixed ones)
  Reference,      // x or v: the others' dtype and shape are checked against it
  DtypeReference, // running_mean of running_stats_update: the others' dtype follows it, its shape is fixed
  Workspace,      // a UInt8 buffer of at least so many bytes: any larger size is valid
};

struct Arg {
  std::string name;
  Buffer* buffer;
  TensorView view;  // what the call passes: the buffer's view, or a broken copy of it
  bool present = true;
  Role role = Role::Plain;
};

class Case {
 public:
  explicit Case(std::string function) : function(std::move(function)) {}
  Case(const Case&) = delete;
  Case& operator=(const Case&) = delete;

  // A tensor argument: inputs hold valid random values in [low, high], outputs the sentinel.
  void input(const std::string& name, DType dtype, std::vector<int64_t> sizes, double low = -1, double high = 1,
             Role role = Role::Plain) {
    add(name, test::random_buffer(rng_, dtype, std::move(sizes), low, high), role);
  }
  void output(const std::string& name, DType dtype, std::vector<int64_t> sizes) {
    add(name, test::sentinel_buffer(dtype, std::move(sizes)), Role::Plain);
  }
  void workspace(int64_t bytes) { add("workspace", Buffer(DType::UInt8, {bytes}), Role::Workspace); }

  Arg& arg(const std::string& name) {
    for (Arg& a : args)
      if (a.name == name) return a;
    ADD_FAILURE() << function << " has no argument '" << name << "'";
    return args.front();
  }
  const TensorView& view(const std::string& name) { return arg(name).view; }
  OptView opt(const std::string& name) {
    const Arg& a = arg(name);
    return a.present ? OptView(a.view) : std::nullopt;
  }
  // Views back to their buffers', every optional argument present.
  void reset() {
    for (Arg& a : args) {
      a.view = a.buffer->view();
      a.present = true;
    }
  }

  void snapshot() {
    for (Arg& a : args) a.buffer->snapshot();
  }
  ::testing::AssertionResult unchanged() const {
    for (const Arg& a : args)
      if (!a.buffer->unchanged_since_snapshot()) return ::testing::AssertionFailure() << "'" << a.name << "' was written";
    return ::testing::AssertionSuccess();
  }

  const std::string function;
  std::deque<Arg> args;  // stable addresses
  std::function<void()> call;
  // The scalar arguments; each case reads the ones its entry point takes.
  int normalized_ndim = 1;
  int64_t groups = 1, batch = 1, channels = 1, spatial = 1;
  int dim = 0;
  bool training = true;
  double eps = 1e-5, momentum = 0.1;

 private:
  void add(const std::string& name, Buffer buffer, Role role) {
    Buffer* b = &buffers_.emplace_back(std::move(buffer));
    args.push_back({name, b, b->view(), true, role});
  }
  test::Random rng_{2024};
  std::deque<Buffer> buffers_;
};

// ----------------------------------------------------------------------------- the cases

// Every entry point with valid arguments: x (3, 4, 5) or the like, float32 unless asked otherwise.
std::unique_ptr<Case> layer_norm_forward_case(DType t = DType::Float32) {
  auto c = std::make_unique<Case>("layer_norm_forward");
  c->normalized_ndim = 2;  // 2-D weight and bias, so that their strides can be broken
  c->input("x", t, {3, 4, 5}, -1, 1, Role::Reference);
  c->input("weight", t, {4, 5});
  c->input("bias", t, {4, 5});
  c->output("y", t, {3, 4, 5});
  c->output("mean", t, {3});
  c->output("rstd", t, {3});
  c->call = [c = c.get()] {
    layer_norm_forward<CPU>(c->view("x"), c->normalized_ndim, c->opt("weight"), c->opt("bias"), c->eps, c->view("y"),
                            c->view("mean"), c->view("rstd"));
  };
  return c;
}

std::unique_ptr<Case> layer_norm_backward_case(DType t = DType::Float32) {
  auto c = std::make_unique<Case>("layer_norm_backward");
  c->normalized_ndim = 2;
  c->input("grad_y", t, {3, 4, 5});
  c->input("x", t, {3, 4, 5}, -1, 1, Role::Reference);
  c->input("mean", t, {3});
  c->input("rstd", t, {3}, 0.5, 2);
  c->input("weight", t, {4, 5});
  c->output("grad_x", t, {3, 4, 5});
  c->output("grad_weight", t, {4, 5});
  c->output("grad_bias", t, {4, 5});
  c->workspace(layer_norm_backward_workspace_size<CPU>(c->view("x"), 2));
  c->call = [c = c.get()] {
    layer_norm_backward<CPU>(c->view("grad_y"), c->view("x"), c->normalized_ndim, c->view("mean"), c->view("rstd"),
                             c->opt("weight"), c->opt("grad_x"), c->opt("grad_weight"), c->opt("grad_bias"),
                             c->opt("workspace"));
  };
  return c;
}

std::unique_ptr<Case> rms_norm_forward_case(DType t = DType::Float32) {
  auto c = std::make_unique<Case>("rms_norm_forward");
  c->normalized_ndim = 2;
  c->input("x", t, {3, 4, 5}, -1, 1, Role::Reference);
  c->input("weight", t, {4, 5});
  c->output("y", t, {3, 4, 5});
  c->output("rstd", t, {3});
  c->call = [c = c.get()] {
    rms_norm_forward<CPU>(c->view("x"), c->normalized_ndim, c->opt("weight"), c->eps, c->view("y"), c->view("rstd"));
  };
  return c;
}

std::unique_ptr<Case> rms_norm_backward_case(DType t = DType::Float32) {
  auto c = std::make_unique<Case>("rms_norm_backward");
  c->normalized_ndim = 2;
  c->input("grad_y", t, {3, 4, 5});
  c->input("x", t, {3, 4, 5}, -1, 1, Role::Reference);
  c->input("rstd", t, {3}, 0.5, 2);
  c->input("weight", t, {4, 5});
  c->output("grad_x", t, {3, 4, 5});
  c->output("grad_weight", t, {4, 5});
  c->workspace(rms_norm_backward_workspace_size<CPU>(c->view("x"), 2));
  c->call = [c = c.get()] {
    rms_norm_backward<CPU>(c->view("grad_y"), c->view("x"), c->normalized_ndim, c->view("rstd"), c->opt("weight"),
                           c->opt("grad_x"), c->opt("grad_weight"), c->opt("workspace"));
  };
  return c;
}

std::unique_ptr<Case> batch_norm_forward_case(bool training, DType t = DType::Float32) {
  auto c = std::make_unique<Case>("batch_norm_forward");
  c->training = training;
  c->input("x", t, {4, 3, 5}, -1, 1, Role::Reference);
  c->input("weight", t, {3});
  c->input("bias", t, {3});
  c->input("running_mean", t, {3});
  c->input("running_var", t, {3}, 0.5, 2);
  c->output("y", t, {4, 3, 5});
  c->output("save_mean", t, {3});
  c->output("save_rstd", t, {3});
  c->call = [c = c.get()] {
    batch_norm_forward<CPU>(c->view("x"), c->opt("weight"), c->opt("bias"), c->opt("running_mean"),
                            c->opt("running_var"), c->training, c->momentum, c->eps, c->view("y"),
                            c->view("save_mean"), c->view("save_rstd"));
  };
  return c;
}

std::unique_ptr<Case> batch_norm_backward_case(DType t = DType::Float32) {
  auto c = std::make_unique<Case>("batch_norm_backward");
  c->input("grad_y", t, {4, 3, 5});
  c->input("x", t, {4, 3, 5}, -1, 1, Role::Reference);
  c->input("save_mean", t, {3});
  c->input("save_rstd", t, {3}, 0.5, 2);
  c->input("weight", t, {3});
  c->output("grad_x", t, {4, 3, 5});
  c->output("grad_weight", t, {3});
  c->output("grad_bias", t, {3});
  c->call = [c = c.get()] {
    batch_norm_backward<CPU>(c->view("grad_y"), c->view("x"), c->view("save_mean"), c->view("save_rstd"),
                             c->opt("weight"), c->training, c->opt("grad_x"), c->opt("grad_weight"),
                             c->opt("grad_bias"));
  };
  return c;
}

std::unique_ptr<Case> group_norm_forward_case(DType t = DType::Float32) {
  auto c = std::make_unique<Case>("group_norm_forward");
  c->groups = 3;
  c->input("x", t, {2, 6, 5}, -1, 1, Role::Reference);
  c->input("weight", t, {6});
  c->input("bias", t, {6});
  c->output("y", t, {2, 6, 5});
  c->output("mean", t, {6});
  c->output("rstd", t, {6});
  c->call = [c = c.get()] {
    group_norm_forward<CPU>(c->view("x"), c->groups, c->opt("weight"), c->opt("bias"), c->eps, c->view("y"),
                            c->view("mean"), c->view("rstd"));
  };
  return c;
}

std::unique_ptr<Case> group_norm_backward_case(DType t = DType::Float32) {
  auto c = std::make_unique<Case>("group_norm_backward");
  c->groups = 3;
  c->input("grad_y", t, {2, 6, 5});
  c->input("x", t, {2, 6, 5}, -1, 1, Role::Reference);
  c->input("mean", t, {6});
  c->input("rstd", t, {6}, 0.5, 2);
  c->input("weight", t, {6});
  c->output("grad_x", t, {2, 6, 5});
  c->output("grad_weight", t, {6});
  c->output("grad_bias", t, {6});
  c->workspace(group_norm_backward_workspace_size<CPU>(c->view("x"), 3));
  c->call = [c = c.get()] {
    group_norm_backward<CPU>(c->view("grad_y"), c->view("x"), c->groups, c->view("mean"), c->view("rstd"),
                             c->opt("weight"), c->opt("grad_x"), c->opt("grad_weight"), c->opt("grad_bias"),
                             c->opt("workspace"));
  };
  return c;
}

std::unique_ptr<Case> running_stats_update_case(DType t = DType::Float32) {
  auto c = std::make_unique<Case>("running_stats_update");
  c->batch = 2;
  c->channels = 3;
  c->spatial = 5;
  c->input("mean", t, {6});
  c->input("rstd", t, {6}, 0.5, 2);
  c->input("running_mean", t, {3}, -1, 1, Role::DtypeReference);
  c->input("running_var", t, {3}, 0.5, 2);
  c->call = [c = c.get()] {
    running_stats_update<CPU>(c->view("mean"), c->view("rstd"), c->batch, c->channels, c->spatial, c->momentum,
                              c->eps, c->view("running_mean"), c->view("running_var"));
  };
  return c;
}

std::unique_ptr<Case> weight_norm_forward_case(DType t = DType::Float32) {
  auto c = std::make_unique<Case>("weight_norm_forward");
  c->dim = 1;
  c->input("v", t, {4, 3, 5}, -1, 1, Role::Reference);
  c->input("g", t, {3}, 0.5, 2);
  c->output("w", t, {4, 3, 5});
  c->output("norm", t, {3});
  c->call = [c = c.get()] {
    weight_norm_forward<CPU>(c->view("v"), c->view("g"), c->dim, c->view("w"), c->view("norm"));
  };
  return c;
}

std::unique_ptr<Case> weight_norm_backward_case(DType t = DType::Float32) {
  auto c = std::make_unique<Case>("weight_norm_backward");
  c->dim = 1;
  c->input("grad_w", t, {4, 3, 5});
  c->input("v", t, {4, 3, 5}, -1, 1, Role::Reference);
  c->input("g", t, {3}, 0.5, 2);
  c->input("norm", t, {3}, 0.5, 2);
  c->output("grad_v", t, {4, 3, 5});
  c->output("grad_g", t, {3});
  c->call = [c = c.get()] {
    weight_norm_backward<CPU>(c->view("grad_w"), c->view("v"), c->view("g"), c->view("norm"), c->dim,
                              c->opt("grad_v"), c->opt("grad_g"));
  };
  return c;
}

std::vector<std::unique_ptr<Case>> all_cases(DType t) {
  std::vector<std::unique_ptr<Case>> out;
  out.push_back(layer_norm_forward_case(t));
  out.push_back(layer_norm_backward_case(t));
  out.push_back(rms_norm_forward_case(t));
  out.push_back(rms_norm_backward_case(t));
  out.push_back(batch_norm_forward_case(true, t));
  out.push_back(batch_norm_forward_case(false, t));
  out.push_back(batch_norm_backward_case(t));
  out.push_back(group_norm_forward_case(t));
  out.push_back(group_norm_backward_case(t));
  out.push_back(running_stats_update_case(t));
  out.push_back(weight_norm_forward_case(t));
  out.push_back(weight_norm_backward_case(t));
  return out;
}

// ------------------------------------------------------------------------------ expectations

const char* kind_name(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::Value: return "Value";
    case ErrorKind::Type: return "Type";
    case ErrorKind::Runtime: return "Runtime";
  }
  return "?";
}

// The call throws replearn::Error of `kind` naming the function and `expected_in_message` (an
// argument name in quotes, usually), and leaves every buffer of the case as it was.
void expect_error(Case& c, ErrorKind kind, const std::string& expected_in_message) {
  c.snapshot();
  try {
    c.call();
    ADD_FAILURE() << c.function << " did not throw; expected a " << kind_name(kind) << " error naming "
                  << expected_in_message;
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_EQ(kind_name(e.kind()), std::string(kind_name(kind))) << message;
    EXPECT_NE(message.find(expected_in_message), std::string::npos)
        << "message does not name " << expected_in_message << ": " << message;
    EXPECT_EQ(message.rfind(c.function + ":", 0), 0u) << "message does not start with the function: " << message;
  } catch (const std::exception& e) {
    ADD_FAILURE() << c.function << " threw something other than replearn::Error: " << e.what();
  }
  EXPECT_TRUE(c.unchanged());
}

std::string in_quotes(const std::string& name) { return "'" + name + "'"; }

// Each present argument of each case, broken by `breaker` (which returns false to skip the
// argument), must be reported as `kind` under its own name.
template <class Breaker>
void for_each_argument(DType dtype, ErrorKind kind, const Breaker& breaker) {
  for (const auto& c : all_cases(dtype)) {
    for (Arg& a : c->args) {
      c->reset();
      if (!breaker(a)) continue;
      SCOPED_TRACE(c->function + (c->function == "batch_norm_forward" ? (c->training ? " (training)" : " (eval)") : "") +
                   ", argument '" + a.name + "'");
      expect_error(*c, kind, in_quotes(a.name));
    }
  }
}

TensorView with_sizes(TensorView v, const std::vector<int64_t>& sizes) {
  v.ndim = static_cast<int>(sizes.size());
  int64_t stride = 1;
  for (int d = v.ndim - 1; d >= 0; --d) {
    v.sizes[d] = sizes[d];
    v.strides[d] = stride;
    stride *= sizes[d];
  }
  return v;
}

class ValidationOfEveryArgument : public ::testing::TestWithParam<DType> {};

// ---------------------------------------------------------------------- every argument, every op

TEST_P(ValidationOfEveryArgument, ValidArgumentsAreAccepted) {
  for (const auto& c : all_cases(GetParam())) {
    SCOPED_TRACE(c->function);
    EXPECT_NO_THROW(c->call());
  }
}

TEST_P(ValidationOfEveryArgument, EveryArgumentOnTheWrongDevice) {
  for_each_argument(GetParam(), ErrorKind::Value, [](Arg& a) {
    a.view.device = Device{DeviceType::CUDA, 0};
    return true;
  });
}

TEST_P(ValidationOfEveryArgument, EveryArgumentWithAnIntegerDtype) {
  for_each_argument(GetParam(), ErrorKind::Type, [](Arg& a) {
    a.view.dtype = DType::Int64;
    return true;
  });
}

TEST_P(ValidationOfEveryArgument, EveryArgumentWithAnotherFloatDtype) {
  // float32 where float64 is expected and back: a mismatch is an error, never a silent cast.
  for_each_argument(GetParam(), ErrorKind::Type, [](Arg& a) {
    if (a.role == Role::Reference || a.role == Role::DtypeReference) return false;  // the others follow it
    a.view.dtype = a.view.dtype == DType::Float32 ? DType::Float64 : DType::Float32;
    return true;
  });
}

TEST_P(ValidationOfEveryArgument, EveryArgumentNonContiguous) {
  for_each_argument(GetParam(), ErrorKind::Value, [](Arg& a) {
    if (a.view.numel() < 2) return false;
    for (int d = 0; d < a.view.ndim; ++d) a.view.strides[d] *= 2;  // every other element
    return true;
  });
}

TEST_P(ValidationOfEveryArgument, EveryArgumentWithTheWrongShape) {
  for_each_argument(GetParam(), ErrorKind::Value, [](Arg& a) {
    if (a.role == Role::Reference || a.role == Role::Workspace) return false;  // see the tests below
    std::vector<int64_t> sizes(a.view.sizes, a.view.sizes + a.view.ndim);
    sizes.back() += 1;
    a.view = with_sizes(a.view, sizes);
    return true;
  });
}

TEST_P(ValidationOfEveryArgument, OptionalArgumentsMayBeAbsent) {
  // Everything optional at once (batch_norm_forward in training: running averages too); the
  // workspace of layer/rms norm is optional once no parameter gradient is asked for.
  const std::vector<std::string> optional = {"weight", "bias", "running_mean", "running_var", "grad_x",
                                             "grad_weight", "grad_bias", "grad_v", "grad_g"};
  for (const auto& c : all_cases(GetParam())) {
    if (c->function == "batch_norm_forward" && !c->training) continue;
    SCOPED_TRACE(c->function);
    for (Arg& a : c->args)
      for (const std::string& name : optional)
        if (a.name == name) a.present = false;
    if (c->function == "layer_norm_backward" || c->function == "rms_norm_backward") c->arg("workspace").present = false;
    EXPECT_NO_THROW(c->call());
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, ValidationOfEveryArgument, ::testing::Values(DType::Float32, DType::Float64), test::DTypeName());

// ---------------------------------------------------------------------------- row norms

TEST(Validation, NormalizedShapeOutOfRange) {
  for (auto make : {layer_norm_forward_case, layer_norm_backward_case, rms_norm_forward_case, rms_norm_backward_case}) {
    for (const int normalized_ndim : {0, -1, 4}) {
      auto c = make(DType::Float32);
      SCOPED_TRACE(c->function + " normalized_ndim " + std::to_string(normalized_ndim));
      c->normalized_ndim = normalized_ndim;
      expect_error(*c, ErrorKind::Value, "'normalized_shape'");
    }
  }
}

TEST(Validation, RowNormWeightMustHaveTheNormalizedShape) {
  // Same element count, other shape: (5, 4) for a normalized shape (4, 5), or flattened to (20).
  for (auto make : {layer_norm_forward_case, layer_norm_backward_case, rms_norm_forward_case, rms_norm_backward_case}) {
    for (const std::vector<int64_t>& sizes : {std::vector<int64_t>{5, 4}, {20}}) {
      auto c = make(DType::Float32);
      SCOPED_TRACE(c->function + " weight " + test::shape_name(sizes));
      c->arg("weight").view = with_sizes(c->arg("weight").view, sizes);
      expect_error(*c, ErrorKind::Value, "'weight'");
    }
  }
}

TEST(Validation, MismatchedXShape) {
  // x itself the wrong shape: the first argument checked against it is reported.
  auto c = layer_norm_forward_case();
  c->arg("x").view = with_sizes(c->arg("x").view, {3, 4, 6});
  expect_error(*c, ErrorKind::Value, "'weight'");
  auto b = batch_norm_backward_case();
  b->arg("x").view = with_sizes(b->arg("x").view, {4, 3, 6});
  expect_error(*b, ErrorKind::Value, "'grad_y'");
}

// ------------------------------------------------------------------------- statistics buffers

TEST(Validation, StatisticsBuffersFollowTheInputDtype) {
  // float64 statistics for float32 inputs and the other way round are Type errors.
  for (const DType dtype : {DType::Float32, DType::Float64}) {
    const DType other = dtype == DType::Float32 ? DType::Float64 : DType::Float32;
    struct Target {
      std::function<std::unique_ptr<Case>(DType)> make;
      std::string arg;
    };
    const std::vector<Target> targets = {
        {layer_norm_forward_case, "mean"},   {layer_norm_forward_case, "rstd"},   {layer_norm_backward_case, "rstd"},
        {rms_norm_forward_case, "rstd"},     {group_norm_forward_case, "mean"},   {group_norm_backward_case, "rstd"},
        {weight_norm_forward_case, "norm"},  {weight_norm_backward_case, "norm"}, {running_stats_update_case, "mean"},
        {[](DType t) { return batch_norm_forward_case(true, t); }, "save_rstd"},
        {batch_norm_backward_case, "save_mean"}};
    for (const Target& target : targets) {
      auto c = target.make(dtype);
      SCOPED_TRACE(c->function + " " + target.arg + " " + dtype_name(other) + " for " + dtype_name(dtype));
      c->arg(target.arg).view.dtype = other;
      expect_error(*c, ErrorKind::Type, in_quotes(target.arg));
    }
  }
}

TEST(Validation, StatisticsBuffersOfTheWrongSize) {
  struct Target {
    std::function<std::unique_ptr<Case>(DType)> make;
    std::string arg;
  };
  const std::vector<Target> targets = {
      {layer_norm_forward_case, "mean"},  {layer_norm_backward_case, "rstd"}, {rms_norm_forward_case, "rstd"},
      {group_norm_forward_case, "rstd"},  {group_norm_backward_case, "mean"}, {weight_norm_forward_case, "norm"},
      {running_stats_update_case, "rstd"}, {batch_norm_backward_case, "save_rstd"},
      {[](DType t) { return batch_norm_forward_case(true, t); }, "save_mean"}};
  for (const Target& target : targets) {
    for (const int64_t delta : {-1, 1}) {
      auto c = target.make(DType::Float32);
      SCOPED_TRACE(c->function + " " + target.arg + " size " + std::to_string(delta));
      Arg& a = c->arg(target.arg);
      a.view = with_sizes(a.view, {a.view.numel() + delta});
      expect_error(*c, ErrorKind::Value, in_quotes(target.arg));
    }
  }
}

// ------------------------------------------------------------------------------------ scalars

TEST(Validation, NegativeEps) {
  for (auto make : std::vector<std::function<std::unique_ptr<Case>(DType)>>{
           layer_norm_forward_case, rms_norm_forward_case, group_norm_forward_case, running_stats_update_case,
           [](DType t) { return batch_norm_forward_case(true, t); },
           [](DType t) { return batch_norm_forward_case(false, t); }}) {
    auto c = make(DType::Float32);
    SCOPED_TRACE(c->function);
    c->eps = -1e-5;
    expect_error(*c, ErrorKind::Value, "'eps'");
  }
  auto zero = layer_norm_forward_case();
  zero->eps = 0;  // allowed: the caller knows its variance is positive
  EXPECT_NO_THROW(zero->call());
}

TEST(Validation, MomentumOutsideTheUnitInterval) {
  for (const double momentum : {-0.1, 1.5}) {
    for (auto make : std::vector<std::function<std::unique_ptr<Case>(DType)>>{
             running_stats_update_case, [](DType t) { return batch_norm_forward_case(true, t); }}) {
      auto c = make(DType::Float32);
      SCOPED_TRACE(c->function + " momentum " + std::to_string(momentum));
      c->momentum = momentum;
      expect_error(*c, ErrorKind::Value, "'momentum'");
    }
    auto evaluation = batch_norm_forward_case(false);  // momentum is unused there: torch accepts any
    evaluation->momentum = momentum;
    EXPECT_NO_THROW(evaluation->call());
  }
}

TEST(Validation, NumGroupsMustDivideChannels) {
  for (auto make : {group_norm_forward_case, group_norm_backward_case}) {
    for (const int64_t groups : {4, 5, 7, 12, 0, -3}) {  // 6 channels
      auto c = make(DType::Float32);
      SCOPED_TRACE(c->function + " num_groups " + std::to_string(groups));
      c->groups = groups;
      // mean/rstd sized for 3 groups would be rejected too; resize them to the new count so that
      // num_groups itself is the reason (negative counts keep the old size).
      const int64_t stats = 2 * std::max<int64_t>(groups, 1);
      c->arg("mean").view = with_sizes(c->arg("mean").view, {stats});
      c->arg("rstd").view = with_sizes(c->arg("rstd").view, {stats});
      expect_error(*c, ErrorKind::Value, "'num_groups'");
    }
  }
}

TEST(Validation, GroupNormNeedsMoreThanOneValuePerGroup) {
  // torch's rule (F.group_norm): N·(C/G)·∏spatial must exceed 1. x (1, 6) in 6 groups: one value each.
  auto c = group_norm_forward_case(DType::Float32);
  c->groups = 6;
  for (const char* name : {"x", "y"}) c->arg(name).view = with_sizes(c->arg(name).view, {1, 6});
  for (const char* name : {"mean", "rstd"}) c->arg(name).view = with_sizes(c->arg(name).view, {6});
  expect_error(*c, ErrorKind::Value, "'x' expected more than 1 value per group");
  c->groups = 3;  // two values per group: accepted
  for (const char* name : {"mean", "rstd"}) c->arg(name).view = with_sizes(c->arg(name).view, {3});
  c->call();
}

TEST(Validation, WeightNormDimOutOfRange) {
  for (auto make : {weight_norm_forward_case, weight_norm_backward_case}) {
    for (const int dim : {3, -2, -4, 100}) {
      auto c = make(DType::Float32);
      SCOPED_TRACE(c->function + " dim " + std::to_string(dim));
      c->dim = dim;
      expect_error(*c, ErrorKind::Value, "'dim'");
    }
  }
}

TEST(Validation, RunningStatsUpdateSizes) {
  {
    auto c = running_stats_update_case();
    c->spatial = 1;  // the unbiased variance divides by S − 1
    expect_error(*c, ErrorKind::Value, "'spatial'");
  }
  {
    auto c = running_stats_update_case();
    c->channels = 4;  // running averages hold 3
    expect_error(*c, ErrorKind::Value, "'running_mean'");
  }
  {
    auto c = running_stats_update_case();
    c->batch = 3;  // mean/rstd hold 2·3
    expect_error(*c, ErrorKind::Value, "'mean'");
  }
}

// ---------------------------------------------------------------------------------- batch norm

TEST(Validation, BatchNormEvaluationNeedsRunningAverages) {
  auto c = batch_norm_forward_case(false);
  c->arg("running_mean").present = false;
  c->arg("running_var").present = false;
  expect_error(*c, ErrorKind::Value, "'running_mean'");
}

TEST(Validation, BatchNormRunningAveragesBothOrNeither) {
  for (const bool training : {true, false}) {
    for (const char* missing : {"running_mean", "running_var"}) {
      auto c = batch_norm_forward_case(training);
      SCOPED_TRACE(std::string(training ? "training" : "evaluation") + ", no " + missing);
      c->arg(missing).present = false;
      expect_error(*c, ErrorKind::Value, in_quotes(missing));
    }
  }
}

TEST(Validation, BatchNormTrainingNeedsMoreThanOneValuePerChannel) {
  for (const std::vector<int64_t>& sizes : {std::vector<int64_t>{1, 3}, {1, 3, 1}, {1, 3, 1, 1}}) {
    SCOPED_TRACE(test::shape_name(sizes));
    auto c = batch_norm_forward_case(true);
    c->arg("x").view = with_sizes(c->arg("x").view, sizes);
    c->arg("y").view = with_sizes(c->arg("y").view, sizes);
    expect_error(*c, ErrorKind::Value, "'x'");
    // Evaluation normalizes with the running averages: one value per channel is fine.
    auto eval = batch_norm_forward_case(false);
    eval->arg("x").view = with_sizes(eval->arg("x").view, sizes);
    eval->arg("y").view = with_sizes(eval->arg("y").view, sizes);
    EXPECT_NO_THROW(eval->call());
  }
}

TEST(Validation, ChannelNormsNeedABatchAndChannelDim) {
  for (auto make : std::vector<std::function<std::unique_ptr<Case>(DType)>>{
           [](DType t) { return batch_norm_forward_case(true, t); }, batch_norm_backward_case,
           group_norm_forward_case, group_norm_backward_case}) {
    auto c = make(DType::Float32);
    SCOPED_TRACE(c->function);
    c->arg("x").view = with_sizes(c->arg("x").view, {6});
    expect_error(*c, ErrorKind::Value, "'x'");
  }
}

// ---------------------------------------------------------------------------------- workspaces

TEST(Validation, MissingWorkspace) {
  // layer/rms norm need it for parameter gradients only; group norm always.
  for (auto make : {layer_norm_backward_case, rms_norm_backward_case, group_norm_backward_case}) {
    auto c = make(DType::Float32);
    SCOPED_TRACE(c->function);
    c->arg("workspace").present = false;
    expect_error(*c, ErrorKind::Value, "'workspace'");
  }
  auto c = group_norm_backward_case();
  c->arg("workspace").present = false;
  c->arg("grad_weight").present = false;
  c->arg("grad_bias").present = false;
  expect_error(*c, ErrorKind::Value, "'workspace'");
}

TEST(Validation, WorkspaceTooSmall) {
  for (auto make : {layer_norm_backward_case, rms_norm_backward_case, group_norm_backward_case}) {
    auto c = make(DType::Float32);
    SCOPED_TRACE(c->function);
    Arg& workspace = c->arg("workspace");
    // One chunk's partial sums (the size asked for with one thread) is the least a row norm accepts;
    // group norm needs all it asked for.
    int64_t least = workspace.view.numel();
    if (c->function != "group_norm_backward") {
      test::ScopedThreads one(1);
      least = c->function == "layer_norm_backward" ? layer_norm_backward_workspace_size<CPU>(c->view("x"), 2)
                                                   : rms_norm_backward_workspace_size<CPU>(c->view("x"), 2);
      EXPECT_GE(least, 2 * 20 * 8);  // at least the (2, 20) double sums
    }
    workspace.view = with_sizes(workspace.view, {least - 1});
    expect_error(*c, ErrorKind::Value, "'workspace'");
    workspace.view = with_sizes(workspace.view, {least});
    EXPECT_NO_THROW(c->call());
  }
}

// ------------------------------------------------------------------------------------ devices

TEST(Validation, AllArgumentsOnCudaAreRejectedByTheCpuFunction) {
  // Every tensor on one CUDA device (consistent among themselves): still not the CPU's.
  for (const auto& c : all_cases(DType::Float32)) {
    SCOPED_TRACE(c->function);
    for (Arg& a : c->args) a.view.device = Device{DeviceType::CUDA, 1};
    expect_error(*c, ErrorKind::Value, "expected a cpu tensor but got one on cuda:1");
  }
}

}  // namespace
}  // namespace replearn::norm
