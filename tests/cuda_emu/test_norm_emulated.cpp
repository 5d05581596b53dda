// Emulated CUDA kernels (csrc/norm/cuda.cu compiled against include/cuda_runtime.h) against the CPU
// float64 kernels; built and run by tests/cuda_emu/run.sh norm.
#include <functional>
#include <string>
#include <vector>

#include "emu_test_helpers.h"
#include "norm/norm.h"

using namespace replearn;
using namespace replearn::norm;
using namespace replearn::emu_test;

// ------------------------------------------------------------------------------ layer / rms norm
void test_row(DType dt, std::vector<int64_t> shape, int nd, bool rms, bool affine, int grads) {
  std::vector<int64_t> pshape(shape.end() - nd, shape.end());
  const std::string tag = std::string(rms ? "rms" : "layer") + dname(dt) + shape_str(shape) + " nd=" +
                          std::to_string(nd) + (affine ? " affine" : "") + " grads=" + std::to_string(grads);
  Pair x = randn(dt, shape, 0.5, 2.0), w = randn(dt, pshape, 1.0, 0.5), b = randn(dt, pshape), dy = randn(dt, shape);
  int64_t rows = 1;
  for (size_t i = 0; i + nd < shape.size(); ++i) rows *= shape[i];
  Pair y = outputs(dt, shape), mean = stats({rows}), rstd = stats({rows});
  const double eps = 1e-5;
  if (rms) {
    rms_norm_forward<CUDA>(x.dev.view(), nd, affine ? opt(&w.dev) : std::nullopt, eps, y.dev.view(), rstd.dev.view());
    rms_norm_forward<CPU>(x.ref.view(), nd, affine ? opt(&w.ref) : std::nullopt, eps, y.ref.view(), rstd.ref.view());
  } else {
    layer_norm_forward<CUDA>(x.dev.view(), nd, affine ? opt(&w.dev) : std::nullopt, affine ? opt(&b.dev) : std::nullopt,
                             eps, y.dev.view(), mean.dev.view(), rstd.dev.view());
    layer_norm_forward<CPU>(x.ref.view(), nd, affine ? opt(&w.ref) : std::nullopt, affine ? opt(&b.ref) : std::nullopt,
                            eps, y.ref.view(), mean.ref.view(), rstd.ref.view());
    CMP("mean", mean, DType::Float32);
  }
  CMP("y", y, dt);
  CMP("rstd", rstd, DType::Float32);
  // backward from the CUDA statistics (rounded to float) on both sides
  for (int64_t i = 0; i < rows; ++i) {
    mean.ref.set(i, mean.dev.get(i));
    rstd.ref.set(i, rstd.dev.get(i));
  }
  const bool want_dx = grads & 1, want_dw = grads & 2, want_db = (grads & 4) && !rms;
  Pair dx = outputs(dt, shape), dw = outputs(dt, pshape), db = outputs(dt, pshape);
  if (rms) {
    const int64_t wsb = rms_norm_backward_workspace_size<CUDA>(x.dev.view(), nd);
    Arr ws = bytes(CUDA, wsb), wsr = bytes(CPU, rms_norm_backward_workspace_size<CPU>(x.ref.view(), nd));
    rms_norm_backward<CUDA>(dy.dev.view(), x.dev.view(), nd, rstd.dev.view(), affine ? opt(&w.dev) : std::nullopt,
                            want_dx ? opt(&dx.dev) : std::nullopt, want_dw ? opt(&dw.dev) : std::nullopt,
                            want_dw ? opt(&ws) : std::nullopt);
    rms_norm_backward<CPU>(dy.ref.view(), x.ref.view(), nd, rstd.ref.view(), affine ? opt(&w.ref) : std::nullopt,
                           want_dx ? opt(&dx.ref) : std::nullopt, want_dw ? opt(&dw.ref) : std::nullopt, opt(&wsr));
  } else {
    const int64_t wsb = layer_norm_backward_workspace_size<CUDA>(x.dev.view(), nd);
    Arr ws = bytes(CUDA, wsb), wsr = bytes(CPU, layer_norm_backward_workspace_size<CPU>(x.ref.view(), nd));
    layer_norm_backward<CUDA>(dy.dev.view(), x.dev.view(), nd, mean.dev.view(), rstd.dev.view(),
                              affine ? opt(&w.dev) : std::nullopt, want_dx ? opt(&dx.dev) : std::nullopt,
                              want_dw ? opt(&dw.dev) : std::nullopt, want_db ? opt(&db.dev) : std::nullopt,
                              (want_dw || want_db) ? opt(&ws) : std::nullopt);
    layer_norm_backward<CPU>(dy.ref.view(), x.ref.view(), nd, mean.ref.view(), rstd.ref.view(),
                             affine ? opt(&w.ref) : std::nullopt, want_dx ? opt(&dx.ref) : std::nullopt,
                             want_dw ? opt(&dw.ref) : std::nullopt, want_db ? opt(&db.ref) : std::nullopt, opt(&wsr));
  }
  if (want_dx) CMP("dx", dx, dt);
  if (want_dw) CMP("dw", dw, dt);
  if (want_db) CMP("db", db, dt);
}

// ------------------------------------------------------------------------------------ batch norm
void test_batch(DType dt, std::vector<int64_t> shape, bool training, bool running, bool affine, int grads) {
  const std::string tag = "batch " + dname(dt) + shape_str(shape) + (training ? " train" : " eval") +
                          (running ? " running" : "") + (affine ? " affine" : "") + " grads=" + std::to_string(grads);
  const int64_t C = shape[1];
  Pair x = randn(dt, shape, 3.0, 2.0), w = randn(dt, {C}, 1.0, 0.5), b = randn(dt, {C}), dy = randn(dt, shape);
  Pair rm = randn(dt, {C}), rv = randn(dt, {C}, 2.0, 0.3);
  Pair y = outputs(dt, shape), sm = stats({C}), sr = stats({C});
  const double eps = 1e-5, momentum = 0.1;
  batch_norm_forward<CUDA>(x.dev.view(), affine ? opt(&w.dev) : std::nullopt, affine ? opt(&b.dev) : std::nullopt,
                           running ? opt(&rm.dev) : std::nullopt, running ? opt(&rv.dev) : std::nullopt, training,
                           momentum, eps, y.dev.view(), sm.dev.view(), sr.dev.view());
  batch_norm_forward<CPU>(x.ref.view(), affine ? opt(&w.ref) : std::nullopt, affine ? opt(&b.ref) : std::nullopt,
                          running ? opt(&rm.ref) : std::nullopt, running ? opt(&rv.ref) : std::nullopt, training,
                          momentum, eps, y.ref.view(), sm.ref.view(), sr.ref.view());
  CMP("y", y, dt);
  CMP("save_mean", sm, DType::Float32);
  CMP("save_rstd", sr, DType::Float32);
  if (running) {
    CMP("running_mean", rm, dt);
    CMP("running_var", rv, dt);
  }
  for (int64_t i = 0; i < C; ++i) {
    sm.ref.set(i, sm.dev.get(i));
    sr.ref.set(i, sr.dev.get(i));
  }
  Pair dx = outputs(dt, shape), dw = outputs(dt, {C}), db = outputs(dt, {C});
  const bool want_dx = grads & 1, want_dw = grads & 2, want_db = grads & 4;
  batch_norm_backward<CUDA>(dy.dev.view(), x.dev.view(), sm.dev.view(), sr.dev.view(),
                            affine ? opt(&w.dev) : std::nullopt, training, want_dx ? opt(&dx.dev) : std::nullopt,
                            want_dw ? opt(&dw.dev) : std::nullopt, want_db ? opt(&db.dev) : std::nullopt);
  batch_norm_backward<CPU>(dy.ref.view(), x.ref.view(), sm.ref.view(), sr.ref.view(),
                           affine ? opt(&w.ref) : std::nullopt, training, want_dx ? opt(&dx.ref) : std::nullopt,
                           want_dw ? opt(&dw.ref) : std::nullopt, want_db ? opt(&db.ref) : std::nullopt);
  if (want_dx) CMP("dx", dx, dt);
  if (want_dw) CMP("dw", dw, dt);
  if (want_db) CMP("db", db, dt);
}

// ------------------------------------------------------------------------------------ group norm
void test_group(DType dt, std::vector<int64_t> shape, int64_t G, bool affine, int grads) {
  const std::string tag = "group " + dname(dt) + shape_str(shape) + " G=" + std::to_string(G) +
                          (affine ? " affine" : "") + " grads=" + std::to_string(grads);
  const int64_t N = shape[0], C = shape[1];
  Pair x = randn(dt, shape, -1.0, 1.5), w = randn(dt, {C}, 1.0, 0.5), b = randn(dt, {C}), dy = randn(dt, shape);
  Pair y = outputs(dt, shape), mean = stats({N * G}), rstd = stats({N * G});
  group_norm_forward<CUDA>(x.dev.view(), G, affine ? opt(&w.dev) : std::nullopt, affine ? opt(&b.dev) : std::nullopt,
                           1e-5, y.dev.view(), mean.dev.view(), rstd.dev.view());
  group_norm_forward<CPU>(x.ref.view(), G, affine ? opt(&w.ref) : std::nullopt, affine ? opt(&b.ref) : std::nullopt,
                          1e-5, y.ref.view(), mean.ref.view(), rstd.ref.view());
  CMP("y", y, dt);
  CMP("mean", mean, DType::Float32);
  CMP("rstd", rstd, DType::Float32);
  for (int64_t i = 0; i < N * G; ++i) {
    mean.ref.set(i, mean.dev.get(i));
    rstd.ref.set(i, rstd.dev.get(i));
  }
  Pair dx = outputs(dt, shape), dw = outputs(dt, {C}), db = outputs(dt, {C});
  const bool want_dx = grads & 1, want_dw = grads & 2, want_db = grads & 4;
  Arr ws = bytes(CUDA, group_norm_backward_workspace_size<CUDA>(x.dev.view(), G));
  Arr wsr = bytes(CPU, std::max<int64_t>(1, group_norm_backward_workspace_size<CPU>(x.ref.view(), G)));
  group_norm_backward<CUDA>(dy.dev.view(), x.dev.view(), G, mean.dev.view(), rstd.dev.view(),
                            affine ? opt(&w.dev) : std::nullopt, want_dx ? opt(&dx.dev) : std::nullopt,
                            want_dw ? opt(&dw.dev) : std::nullopt, want_db ? opt(&db.dev) : std::nullopt,
                            (want_dw || want_db) && ws.n ? opt(&ws) : std::nullopt);
  group_norm_backward<CPU>(dy.ref.view(), x.ref.view(), G, mean.ref.view(), rstd.ref.view(),
                           affine ? opt(&w.ref) : std::nullopt, want_dx ? opt(&dx.ref) : std::nullopt,
                           want_dw ? opt(&dw.ref) : std::nullopt, want_db ? opt(&db.ref) : std::nullopt, opt(&wsr));
  if (want_dx) CMP("dx", dx, dt);
  if (want_dw) CMP("dw", dw, dt);
  if (want_db) CMP("db", db, dt);
}

void test_running(DType dt, int64_t N, int64_t C, int64_t S) {
  const std::string tag = "running " + dname(dt) + " N=" + std::to_string(N) + " C=" + std::to_string(C);
  Pair mean = randn(DType::Float32, {N * C}), rstd = randn(DType::Float32, {N * C}, 2.0, 0.3);
  Pair rm = randn(dt, {C}), rv = randn(dt, {C}, 1.0, 0.2);
  running_stats_update<CUDA>(mean.dev.view(), rstd.dev.view(), N, C, S, 0.1, 1e-5, rm.dev.view(), rv.dev.view());
  running_stats_update<CPU>(mean.ref.view(), rstd.ref.view(), N, C, S, 0.1, 1e-5, rm.ref.view(), rv.ref.view());
  CMP("running_mean", rm, dt);
  CMP("running_var", rv, dt);
}

void test_weight(DType dt, std::vector<int64_t> shape, int dim, int grads) {
  const std::string tag = "weight " + dname(dt) + shape_str(shape) + " dim=" + std::to_string(dim) +
                          " grads=" + std::to_string(grads);
  const int64_t K = dim == -1 ? 1 : shape[dim];
  Pair v = randn(dt, shape), g = randn(dt, {K}, 1.0, 0.5), dw = randn(dt, shape);
  Pair w = outputs(dt, shape), norm = stats({K});
  weight_norm_forward<CUDA>(v.dev.view(), g.dev.view(), dim, w.dev.view(), norm.dev.view());
  weight_norm_forward<CPU>(v.ref.view(), g.ref.view(), dim, w.ref.view(), norm.ref.view());
  CMP("w", w, dt);
  CMP("norm", norm, DType::Float32);
  for (int64_t i = 0; i < K; ++i) norm.ref.set(i, norm.dev.get(i));
  Pair dv = outputs(dt, shape), dg = outputs(dt, {K});
  const bool want_dv = grads & 1, want_dg = grads & 2;
  weight_norm_backward<CUDA>(dw.dev.view(), v.dev.view(), g.dev.view(), norm.dev.view(), dim,
                             want_dv ? opt(&dv.dev) : std::nullopt, want_dg ? opt(&dg.dev) : std::nullopt);
  weight_norm_backward<CPU>(dw.ref.view(), v.ref.view(), g.ref.view(), norm.ref.view(), dim,
                            want_dv ? opt(&dv.ref) : std::nullopt, want_dg ? opt(&dg.ref) : std::nullopt);
  if (want_dv) CMP("dv", dv, dt);
  if (want_dg) CMP("dg", dg, dt);
}

// ---------------------------------------------------------------------------------- spectral norm
void test_spectral(DType dt, std::vector<int64_t> shape, int iterations, std::optional<double> coeff) {
  int64_t cols = 1;
  for (size_t i = 1; i < shape.size(); ++i) cols *= shape[i];
  const int64_t rows = shape[0];
  const std::string tag = "spectral" + dname(dt) + shape_str(shape) + " iters=" + std::to_string(iterations) +
                          (coeff ? " coeff=" + std::to_string(*coeff) : "");
  Pair W = randn(dt, shape), u = randn(dt, {rows}), v = randn(dt, {cols}), g = randn(dt, shape);
  Pair grad_sigma = randn(DType::Float32, {1});
  Pair w = outputs(dt, shape), u_out = outputs(dt, {rows}), v_out = outputs(dt, {cols}), sigma = stats({1});
  Arr ws = bytes(CUDA, spectral_norm_forward_workspace_size<CUDA>(W.dev.view()));
  const OptView v_dev = iterations == 0 ? opt(&v.dev) : std::nullopt, v_ref = iterations == 0 ? opt(&v.ref) : std::nullopt;
  spectral_norm_forward<CUDA>(W.dev.view(), u.dev.view(), v_dev, iterations, 1e-12, coeff, w.dev.view(), u_out.dev.view(),
                              v_out.dev.view(), sigma.dev.view(), opt(&ws));
  spectral_norm_forward<CPU>(W.ref.view(), u.ref.view(), v_ref, iterations, 1e-12, coeff, w.ref.view(), u_out.ref.view(),
                             v_out.ref.view(), sigma.ref.view(), std::nullopt);
  CMP("w", w, dt);
  CMP("u", u_out, dt);
  CMP("v", v_out, dt);
  CMP("sigma", sigma, DType::Float32);
  // backward from the CUDA vectors and σ (rounded) on both sides
  for (int64_t i = 0; i < rows; ++i) u_out.ref.set(i, u_out.dev.get(i));
  for (int64_t j = 0; j < cols; ++j) v_out.ref.set(j, v_out.dev.get(j));
  sigma.ref.set(0, sigma.dev.get(0));
  Pair dW = outputs(dt, shape);
  Arr wsb = bytes(CUDA, spectral_norm_backward_workspace_size<CUDA>(W.dev.view()));
  spectral_norm_backward<CUDA>(g.dev.view(), opt(&grad_sigma.dev), W.dev.view(), u_out.dev.view(), v_out.dev.view(),
                               sigma.dev.view(), coeff, dW.dev.view(), opt(&wsb));
  spectral_norm_backward<CPU>(g.ref.view(), opt(&grad_sigma.ref), W.ref.view(), u_out.ref.view(), v_out.ref.view(),
                              sigma.ref.view(), coeff, dW.ref.view(), std::nullopt);
  CMP("dW", dW, dt);
}

void test_bad_workspace() {
  Pair x = randn(DType::Float32, {4, 8}), dy = randn(DType::Float32, {4, 8});
  Pair mean = stats({4}), rstd = stats({4}), dw = outputs(DType::Float32, {8});
  const int64_t n = layer_norm_backward_workspace_size<CUDA>(x.dev.view(), 1);
  Arr ws = bytes(CPU, n);  // on the wrong device
  int thrown = 0;
  try {
    layer_norm_backward<CUDA>(dy.dev.view(), x.dev.view(), 1, mean.dev.view(), rstd.dev.view(), std::nullopt,
                              std::nullopt, opt(&dw.dev), std::nullopt, opt(&ws));
  } catch (const Error& e) {
    ++thrown;
    std::printf("  expected error: %s\n", e.what());
  }
  Arr big = bytes(CUDA, n + 1);
  TensorView mis = big.view();
  mis.data = big.mem.get() + 1;
  mis.sizes[0] = n;
  try {
    layer_norm_backward<CUDA>(dy.dev.view(), x.dev.view(), 1, mean.dev.view(), rstd.dev.view(), std::nullopt,
                              std::nullopt, opt(&dw.dev), std::nullopt, mis);
  } catch (const Error& e) {
    ++thrown;
    std::printf("  expected error: %s\n", e.what());
  }
  ++checks;
  if (thrown != 2) ++failures, std::printf("FAIL bad workspace not rejected\n");
}

int main(int argc, char** argv) {
  emu::grid_x_cap = argc > 1 ? std::atoi(argv[1]) : 0;
  const bool quick = argc > 2;
  std::printf("grid.x cap: %u\n", emu::grid_x_cap);
  const DType dtypes[] = {DType::Float32, DType::Float16, DType::BFloat16};
  for (DType dt : dtypes) {
    const bool f32 = dt == DType::Float32;
    // row norms: warp mode (cols <= 1024), block mode, several row slices, empty rows/cols
    std::vector<std::pair<std::vector<int64_t>, int>> rows = {
        {{1, 1}, 1},     {{3, 5}, 1},      {{37, 64}, 1},  {{5, 1023}, 1}, {{4, 1024}, 1}, {{3, 1025}, 1},
        {{2, 3000}, 1},  {{130, 33}, 1},   {{1000, 7}, 1}, {{2, 3, 4, 5}, 2}, {{0, 8}, 1}, {{4, 0}, 1},
        {{9, 2, 700}, 2}};
    for (auto& [shape, nd] : rows)
      for (bool rms : {false, true})
        for (bool affine : {false, true})
          for (int grads : {7, 1, 2, 4, 6}) {
            if (!f32 && grads != 7) continue;
            if (quick && grads != 7) continue;
            test_row(dt, shape, nd, rms, affine, grads);
          }
    std::vector<std::vector<int64_t>> bshapes = {{4, 3}, {2, 5, 7}, {1, 3, 2, 2}, {8, 2, 300}, {100, 3, 7},
                                                 {2, 2, 5000}, {3, 4, 33, 5}};
    for (auto& shape : bshapes)
      for (bool training : {true, false})
        for (bool running : {false, true})
          for (bool affine : {false, true})
            for (int grads : {7, 1, 6}) {
              if (!training && !running) continue;
              if ((!f32 || quick) && grads != 7) continue;
              test_batch(dt, shape, training, running, affine, grads);
            }
    test_batch(dt, {0, 3, 4}, false, true, true, 7);  // empty batch in evaluation
    std::vector<std::pair<std::vector<int64_t>, int64_t>> gshapes = {
        {{2, 6, 5}, 3},   {{1, 4, 1}, 2},      {{3, 8, 300}, 2}, {{2, 6, 200}, 6}, {{5, 32, 40}, 8},
        {{2, 4, 2000}, 4}, {{2, 4, 2000}, 1}, {{3, 6, 7, 3}, 2}, {{1, 2, 1}, 1},  {{0, 4, 3}, 2}};
    // (one value per group, e.g. (1, 1, 1) with G = 1, is refused by validation as torch refuses it:
    // tests/cpp/test_validation.cpp)
    for (auto& [shape, G] : gshapes)
      for (bool affine : {false, true})
        for (int grads : {7, 1, 2, 4, 6}) {
          if ((!f32 || quick) && grads != 7) continue;
          test_group(dt, shape, G, affine, grads);
        }
    test_running(dt, 1, 1, 2);
    test_running(dt, 4, 300, 17);
    std::vector<std::pair<std::vector<int64_t>, int>> wshapes = {
        {{4, 3, 5}, 0}, {{4, 3, 5}, 1}, {{4, 3, 5}, 2}, {{4, 3, 5}, -1}, {{7}, 0},
        {{3, 2000}, 0}, {{2000, 3}, 1}, {{50, 40}, -1}, {{6, 1, 3, 3}, 0}};
    for (auto& [shape, dim] : wshapes)
      for (int grads : {3, 1, 2}) {
        if ((!f32 || quick) && grads != 3) continue;
        test_weight(dt, shape, dim, grads);
      }
    // spectral norm: one column tile and many, rows over several warps, iterations 0 (eval) to 3,
    // coeff clamping (σ of these randn matrices is well above 0.9) and not (100)
    struct SpectralCase {
      std::vector<int64_t> shape;
      int iterations;
      std::optional<double> coeff;
    };
    const std::vector<SpectralCase> scases = {{{5, 3}, 1, std::nullopt},   {{1, 1}, 1, std::nullopt},
                                              {{7}, 2, std::nullopt},      {{4, 3, 3, 3}, 3, 0.9},
                                              {{70, 300}, 2, std::nullopt}, {{300, 70}, 1, 100.0},
                                              {{9, 5}, 0, std::nullopt},   {{9, 5}, 0, 0.5},
                                              {{33, 2000}, 1, std::nullopt}};
    for (const SpectralCase& c : scases) {
      if (quick && c.shape[0] * (c.shape.size() > 1 ? c.shape[1] : 1) > 30000) continue;
      test_spectral(dt, c.shape, c.iterations, c.coeff);
    }
  }
  test_bad_workspace();
  std::printf("%d checks, %d failures, %ld emulated launches\n", checks, failures, emu::launches.load());
  return failures ? 1 : 0;
}
