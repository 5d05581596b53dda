// Emulated CUDA kernels (csrc/conv/cuda.cu compiled against include/cuda_runtime.h) against the CPU
// float64 kernels, forward and backward, conv and conv_transpose; built and run by
// tests/cuda_emu/run.sh conv.
#include <cstdlib>
#include <string>
#include <vector>

#include "conv/conv.h"
#include "core/cuda_utils.cuh"
#include "emu_test_helpers.h"

using namespace replearn;
using namespace replearn::conv;
using namespace replearn::emu_test;
using OptView = std::optional<TensorView>;

struct Case {
  int64_t batch, in_channels, out_channels;
  std::vector<int64_t> size, kernel;  // one entry (1-D) or two (2-D)
  Ints stride, pad_begin, pad_end, dilation;
  int64_t groups;
};

std::vector<int64_t> concat(std::vector<int64_t> a, const std::vector<int64_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

std::string case_name(const Case& c, DType dt) {
  return dname(dt) + " x" + shape_str(concat({c.batch, c.in_channels}, c.size)) + " k" + shape_str(c.kernel) + " s" +
         shape_str(c.stride) + " p" + shape_str(c.pad_begin) + shape_str(c.pad_end) + " d" + shape_str(c.dilation) +
         " g" + std::to_string(c.groups);
}

// conv: forward and every gradient, CUDA (dtype dt) against the CPU in float64.
void test_conv(DType dt, const Case& c, bool bias) {
  const std::string tag = "conv " + case_name(c, dt);
  std::vector<int64_t> out;
  for (size_t d = 0; d < c.size.size(); ++d)
    out.push_back((c.size[d] + c.pad_begin[d] + c.pad_end[d] - c.dilation[d] * (c.kernel[d] - 1) - 1) / c.stride[d] + 1);
  const auto x_shape = concat({c.batch, c.in_channels}, c.size);
  const auto w_shape = concat({c.out_channels, c.in_channels / c.groups}, c.kernel);
  const auto y_shape = concat({c.batch, c.out_channels}, out);
  Pair x = randn(dt, x_shape), w = randn(dt, w_shape), b = randn(dt, {c.out_channels}), dy = randn(dt, y_shape);
  Pair y = outputs(dt, y_shape), dx = outputs(dt, x_shape), dw = outputs(dt, w_shape), db = outputs(dt, {c.out_channels});
  Arr ws = bytes(CPU, conv_forward_workspace_size<CPU>(x.ref.view(), w.ref.view(), c.stride, c.pad_begin, c.pad_end,
                                                        c.dilation, c.groups, y.ref.view()));
  conv_forward<CUDA>(x.dev.view(), w.dev.view(), bias ? opt(&b.dev) : std::nullopt, c.stride, c.pad_begin, c.pad_end,
                     c.dilation, c.groups, y.dev.view(), std::nullopt);
  conv_forward<CPU>(x.ref.view(), w.ref.view(), bias ? opt(&b.ref) : std::nullopt, c.stride, c.pad_begin, c.pad_end,
                    c.dilation, c.groups, y.ref.view(), opt(&ws));
  CMP("y", y, dt);
  Arr wsb = bytes(CPU, conv_backward_workspace_size<CPU>(dy.ref.view(), x.ref.view(), w.ref.view(), c.stride,
                                                          c.pad_begin, c.pad_end, c.dilation, c.groups));
  conv_backward<CUDA>(dy.dev.view(), x.dev.view(), w.dev.view(), c.stride, c.pad_begin, c.pad_end, c.dilation, c.groups,
                      opt(&dx.dev), opt(&dw.dev), opt(&db.dev), std::nullopt);
  conv_backward<CPU>(dy.ref.view(), x.ref.view(), w.ref.view(), c.stride, c.pad_begin, c.pad_end, c.dilation, c.groups,
                     opt(&dx.ref), opt(&dw.ref), opt(&db.ref), opt(&wsb));
  CMP("dx", dx, dt);
  CMP("dw", dw, dt);
  CMP("db", db, dt);
}

// conv_transpose with symmetric padding c.pad_begin and output_padding c.pad_end.
void test_transpose(DType dt, const Case& c, bool bias) {
  const std::string tag = "conv_transpose " + case_name(c, dt);
  std::vector<int64_t> out;
  for (size_t d = 0; d < c.size.size(); ++d)
    out.push_back((c.size[d] - 1) * c.stride[d] - 2 * c.pad_begin[d] + c.dilation[d] * (c.kernel[d] - 1) + 1 +
                  c.pad_end[d]);
  const auto x_shape = concat({c.batch, c.in_channels}, c.size);
  const auto w_shape = concat({c.in_channels, c.out_channels / c.groups}, c.kernel);
  const auto y_shape = concat({c.batch, c.out_channels}, out);
  Pair x = randn(dt, x_shape), w = randn(dt, w_shape), b = randn(dt, {c.out_channels}), dy = randn(dt, y_shape);
  Pair y = outputs(dt, y_shape), dx = outputs(dt, x_shape), dw = outputs(dt, w_shape), db = outputs(dt, {c.out_channels});
  Arr ws = bytes(CPU, conv_transpose_forward_workspace_size<CPU>(x.ref.view(), w.ref.view(), c.stride, c.pad_begin,
                                                                  c.dilation, c.groups, y.ref.view()));
  conv_transpose_forward<CUDA>(x.dev.view(), w.dev.view(), bias ? opt(&b.dev) : std::nullopt, c.stride, c.pad_begin,
                               c.dilation, c.groups, y.dev.view(), std::nullopt);
  conv_transpose_forward<CPU>(x.ref.view(), w.ref.view(), bias ? opt(&b.ref) : std::nullopt, c.stride, c.pad_begin,
                              c.dilation, c.groups, y.ref.view(), opt(&ws));
  CMP("y", y, dt);
  Arr wsb = bytes(CPU, conv_transpose_backward_workspace_size<CPU>(dy.ref.view(), x.ref.view(), w.ref.view(), c.stride,
                                                                    c.pad_begin, c.dilation, c.groups));
  conv_transpose_backward<CUDA>(dy.dev.view(), x.dev.view(), w.dev.view(), c.stride, c.pad_begin, c.dilation, c.groups,
                                opt(&dx.dev), opt(&dw.dev), opt(&db.dev), std::nullopt);
  conv_transpose_backward<CPU>(dy.ref.view(), x.ref.view(), w.ref.view(), c.stride, c.pad_begin, c.dilation, c.groups,
                               opt(&dx.ref), opt(&dw.ref), opt(&db.ref), opt(&wsb));
  CMP("dx", dx, dt);
  CMP("dw", dw, dt);
  CMP("db", db, dt);
}

int main(int argc, char** argv) {
  emu::grid_x_cap = argc > 1 ? std::atoi(argv[1]) : 0;
  const bool quick = argc > 2;
  std::printf("grid.x cap: %u\n", emu::grid_x_cap);
  // Dense, grouped, depthwise (with a channel multiplier), strided, dilated, asymmetric (causal and
  // "same" with an even kernel) padding, pointwise, 1-D, a kernel that fills the padded input, batch 1.
  const std::vector<Case> convs = {
      {2, 3, 4, {5, 6}, {3, 3}, {1, 1}, {1, 1}, {1, 1}, {1, 1}, 1},
      {1, 4, 6, {7, 5}, {3, 2}, {2, 1}, {0, 1}, {0, 0}, {1, 2}, 2},
      {2, 4, 8, {6, 7}, {3, 3}, {2, 2}, {2, 1}, {2, 1}, {2, 1}, 4},
      {2, 3, 3, {4, 4}, {1, 1}, {1, 1}, {0, 0}, {0, 0}, {1, 1}, 1},
      {1, 2, 2, {3, 4}, {4, 4}, {1, 1}, {1, 1}, {2, 1}, {1, 1}, 1},
      {2, 4, 6, {9}, {2}, {1}, {4}, {0}, {4}, 2},
      {3, 2, 3, {8}, {3}, {3}, {1}, {1}, {1}, 1},
      {1, 2, 70, {9, 9}, {3, 3}, {1, 1}, {1, 1}, {1, 1}, {1, 1}, 1},  // several tiles of the tiled forward
  };
  const std::vector<Case> transposes = {  // pad_begin: padding, pad_end: output_padding
      {2, 4, 3, {3, 4}, {4, 4}, {2, 2}, {1, 1}, {0, 1}, {1, 1}, 1},
      {1, 4, 6, {3, 3}, {3, 2}, {2, 3}, {1, 0}, {1, 2}, {1, 1}, 2},
      {2, 3, 3, {4, 3}, {3, 3}, {1, 1}, {1, 1}, {1, 0}, {2, 2}, 3},
      {2, 4, 2, {5}, {3}, {2}, {0}, {1}, {1}, 2},
      // outputs made only of output_padding (base size 0 and −1), which torch accepts
      {2, 2, 3, {2}, {2}, {2}, {2}, {1}, {1}, 1},
      {1, 2, 2, {1, 3}, {1, 2}, {3, 1}, {1, 0}, {2, 0}, {1, 1}, 1},
  };
  for (DType dt : {DType::Float32, DType::Float16, DType::BFloat16}) {
    for (size_t i = 0; i < convs.size(); ++i) {
      if (quick && dt != DType::Float32 && i % 2) continue;
      test_conv(dt, convs[i], i % 3 != 2);
    }
    for (size_t i = 0; i < transposes.size(); ++i) {
      if (quick && dt != DType::Float32 && i % 2) continue;
      test_transpose(dt, transposes[i], i != 1);
    }
  }
  std::printf("%d checks, %d failures\n", checks, failures);
  return failures ? 1 : 0;
}
