// Emulated CUDA kernels of the flow family (csrc/flow/cuda.cu compiled against include/cuda_runtime.h)
// against the CPU kernels in float64 on the same values: outputs, logdets and every gradient of the
// four ops, forward and reverse, at shapes that span several coupling chunks and ActNorm batch
// chunks. Built and run by tests/cuda_emu/run.sh flow.
#include <string>
#include <vector>

#include "emu_test_helpers.h"
#include "flow/flow.h"

using namespace replearn;
using namespace replearn::flow;
using namespace replearn::emu_test;

namespace {

// The same 0/1 mask on both sides (Bool: one byte per feature).
Pair bool_mask(int64_t features) {
  Pair p{make(DType::UInt8, CUDA, {features}), make(DType::UInt8, CPU, {features})};
  for (int64_t j = 0; j < features; ++j) p.dev.mem[j] = p.ref.mem[j] = static_cast<unsigned char>((j * 5) % 3 == 1);
  p.dev.dt = p.ref.dt = DType::Bool;
  return p;
}

Arr workspace_for(DeviceType dev, int64_t bytes_needed) { return bytes(dev, std::max<int64_t>(bytes_needed, 1)); }

void test_coupling(DType dt, std::vector<int64_t> shape, bool masked, int scale, bool has_shift, bool has_scale) {
  const std::string tag = "coupling " + dname(dt) + shape_str(shape) + " scale=" + std::to_string(scale) +
                          (masked ? " masked" : "") + (has_shift ? " t" : "") + (has_scale ? " s" : "");
  int64_t features = 1;
  for (size_t i = 1; i < shape.size(); ++i) features *= shape[i];
  const int64_t batch = shape[0];
  Pair mask = bool_mask(features);
  Pair t = randn(dt, shape), s = randn(dt, shape, 0.0, 0.5);
  const Arr* tp[2] = {has_shift ? &t.dev : nullptr, has_shift ? &t.ref : nullptr};
  const Arr* sp[2] = {has_scale ? &s.dev : nullptr, has_scale ? &s.ref : nullptr};
  const Arr* mp[2] = {masked ? &mask.dev : nullptr, masked ? &mask.ref : nullptr};
  for (bool reverse : {false, true}) {
    Pair x = randn(dt, shape), y = outputs(dt, shape), logdet = outputs(dt, {batch});
    Arr ws = workspace_for(CUDA, affine_coupling_workspace_size<CUDA>(x.dev.view()));
    affine_coupling_forward<CUDA>(x.dev.view(), opt(tp[0]), opt(sp[0]), opt(mp[0]), reverse, scale, y.dev.view(),
                                  logdet.dev.view(), ws.opt());
    affine_coupling_forward<CPU>(x.ref.view(), opt(tp[1]), opt(sp[1]), opt(mp[1]), reverse, scale, y.ref.view(),
                                 logdet.ref.view(), std::nullopt);
    const std::string dir = reverse ? " reverse" : " forward";
    compare(tag + dir + " y", y.dev, y.ref, tol_for(dt));
    compare(tag + dir + " logdet", logdet.dev, logdet.ref, tol_for(dt));
    Pair gy = randn(dt, shape), gl = randn(dt, {batch});
    Pair dx = outputs(dt, shape), dtt = outputs(dt, shape), ds = outputs(dt, shape);
    const Arr* dtp[2] = {has_shift ? &dtt.dev : nullptr, has_shift ? &dtt.ref : nullptr};
    const Arr* dsp[2] = {has_scale ? &ds.dev : nullptr, has_scale ? &ds.ref : nullptr};
    affine_coupling_backward<CUDA>(gy.dev.view(), gl.dev.view(), x.dev.view(), opt(tp[0]), opt(sp[0]), opt(mp[0]),
                                   reverse, scale, dx.dev.opt(), opt(dtp[0]), opt(dsp[0]));
    affine_coupling_backward<CPU>(gy.ref.view(), gl.ref.view(), x.ref.view(), opt(tp[1]), opt(sp[1]), opt(mp[1]),
                                  reverse, scale, dx.ref.opt(), opt(dtp[1]), opt(dsp[1]));
    compare(tag + dir + " dx", dx.dev, dx.ref, tol_for(dt));
    if (has_shift) compare(tag + dir + " dshift", dtt.dev, dtt.ref, tol_for(dt));
    if (has_scale) compare(tag + dir + " dlog_scale", ds.dev, ds.ref, tol_for(dt));
  }
}

// Scales of both signs with |scale| in [0.5, 1.5].
Pair signed_scale(DType dt, int64_t c) {
  Pair p = randn(dt, {c});
  for (int64_t i = 0; i < c; ++i) {
    const double v = (i % 3 == 1 ? -1.0 : 1.0) * (0.5 + std::fmod(std::abs(p.dev.get(i)), 1.0));
    p.dev.set(i, v);
    p.ref.set(i, p.dev.get(i));
  }
  return p;
}

void test_actnorm(DType dt, std::vector<int64_t> shape) {
  const std::string tag = "actnorm " + dname(dt) + shape_str(shape);
  const int64_t batch = shape[0], c = shape[1];
  Pair scale = signed_scale(dt, c), bias = randn(dt, {c});
  for (bool reverse : {false, true}) {
    const std::string dir = reverse ? " reverse" : " forward";
    Pair x = randn(dt, shape, 0.5, 2.0), y = outputs(dt, shape), logdet = outputs(dt, {batch});
    actnorm_forward<CUDA>(x.dev.view(), scale.dev.view(), bias.dev.view(), reverse, y.dev.view(), logdet.dev.view());
    actnorm_forward<CPU>(x.ref.view(), scale.ref.view(), bias.ref.view(), reverse, y.ref.view(), logdet.ref.view());
    compare(tag + dir + " y", y.dev, y.ref, tol_for(dt));
    compare(tag + dir + " logdet", logdet.dev, logdet.ref, tol_for(dt));
    Pair gy = randn(dt, shape), gl = randn(dt, {batch});
    Pair dx = outputs(dt, shape), da = outputs(dt, {c}), db = outputs(dt, {c});
    Arr ws = workspace_for(CUDA, actnorm_backward_workspace_size<CUDA>(x.dev.view()));
    actnorm_backward<CUDA>(gy.dev.view(), gl.dev.view(), x.dev.view(), scale.dev.view(), bias.dev.view(), reverse,
                           dx.dev.opt(), da.dev.opt(), db.dev.opt(), ws.opt());
    actnorm_backward<CPU>(gy.ref.view(), gl.ref.view(), x.ref.view(), scale.ref.view(), bias.ref.view(), reverse,
                          dx.ref.opt(), da.ref.opt(), db.ref.opt(), std::nullopt);
    compare(tag + dir + " dx", dx.dev, dx.ref, tol_for(dt));
    compare(tag + dir + " dscale", da.dev, da.ref, tol_for(dt));
    compare(tag + dir + " dbias", db.dev, db.ref, tol_for(dt));
  }
}

void test_invconv(DType dt, std::vector<int64_t> shape) {
  const std::string tag = "invconv " + dname(dt) + shape_str(shape);
  const int64_t batch = shape[0], c = shape[1];
  Pair perm{make(DType::Int64, CUDA, {c}), make(DType::Int64, CPU, {c})};
  for (int64_t i = 0; i < c; ++i) perm.dev.set(i, (i * 3 + 1) % c), perm.ref.set(i, (i * 3 + 1) % c);
  if (c % 3 == 0)  // (3i + 1) mod c is a permutation only when gcd(3, c) = 1
    for (int64_t i = 0; i < c; ++i) perm.dev.set(i, c - 1 - i), perm.ref.set(i, c - 1 - i);
  Pair lower = randn(dt, {c, c}, 0.0, 0.3), upper = randn(dt, {c, c}, 0.0, 0.3), s = signed_scale(dt, c);
  for (bool reverse : {false, true}) {
    const std::string dir = reverse ? " reverse" : " forward";
    Pair x = randn(dt, shape), y = outputs(dt, shape), logdet = outputs(dt, {batch});
    Arr ws = workspace_for(CUDA, invconv1x1_workspace_size<CUDA>(x.dev.view(), reverse));
    Arr ws_ref = workspace_for(CPU, invconv1x1_workspace_size<CPU>(x.ref.view(), reverse));
    invconv1x1_forward<CUDA>(x.dev.view(), perm.dev.view(), lower.dev.view(), upper.dev.view(), s.dev.view(), reverse,
                             y.dev.view(), logdet.dev.view(), ws.opt());
    invconv1x1_forward<CPU>(x.ref.view(), perm.ref.view(), lower.ref.view(), upper.ref.view(), s.ref.view(), reverse,
                            y.ref.view(), logdet.ref.view(), ws_ref.opt());
    compare(tag + dir + " y", y.dev, y.ref, tol_for(dt));
    compare(tag + dir + " logdet", logdet.dev, logdet.ref, tol_for(dt));
    Pair gy = randn(dt, shape), gl = randn(dt, {batch});
    Pair dx = outputs(dt, shape), dl = outputs(dt, {c, c}), du = outputs(dt, {c, c}), ds = outputs(dt, {c});
    invconv1x1_backward<CUDA>(gy.dev.view(), gl.dev.view(), x.dev.view(), y.dev.view(), perm.dev.view(),
                              lower.dev.view(), upper.dev.view(), s.dev.view(), reverse, dx.dev.view(), dl.dev.opt(),
                              du.dev.opt(), ds.dev.opt(), ws.opt());
    // The reference differentiates at the same output values the CUDA side saw.
    for (int64_t i = 0; i < y.ref.n; ++i) y.ref.set(i, y.dev.get(i));
    invconv1x1_backward<CPU>(gy.ref.view(), gl.ref.view(), x.ref.view(), y.ref.view(), perm.ref.view(),
                             lower.ref.view(), upper.ref.view(), s.ref.view(), reverse, dx.ref.view(), dl.ref.opt(),
                             du.ref.opt(), ds.ref.opt(), ws_ref.opt());
    compare(tag + dir + " dx", dx.dev, dx.ref, tol_for(dt));
    compare(tag + dir + " dlower", dl.dev, dl.ref, tol_for(dt));
    compare(tag + dir + " dupper", du.dev, du.ref, tol_for(dt));
    compare(tag + dir + " ds", ds.dev, ds.ref, tol_for(dt));
  }
}

void test_planar(DType dt, int64_t batch, int64_t features, double u_scale) {
  const std::string tag = "planar " + dname(dt) + shape_str({batch, features}) + " u_scale=" + std::to_string(u_scale);
  Pair w = randn(dt, {features}), u = randn(dt, {features}), b = randn(dt, {1}, 0.0, 0.5);
  for (int64_t i = 0; i < features; ++i) {  // u = u_scale·w + noise: wᵀu far below −1 for u_scale ≪ 0
    u.dev.set(i, u_scale * w.dev.get(i) + 0.1 * u.dev.get(i));
    u.ref.set(i, u.dev.get(i));
  }
  for (bool reverse : {false, true}) {
    const std::string dir = reverse ? " reverse" : " forward";
    Pair z = randn(dt, {batch, features}, 0.0, 0.7), f = outputs(dt, {batch, features}), logdet = outputs(dt, {batch});
    Arr ws = workspace_for(CUDA, planar_flow_workspace_size<CUDA>(z.dev.view(), true));
    Arr ws_ref = workspace_for(CPU, planar_flow_workspace_size<CPU>(z.ref.view(), true));
    planar_flow_forward<CUDA>(z.dev.view(), u.dev.view(), w.dev.view(), b.dev.view(), reverse, f.dev.view(),
                              logdet.dev.view(), ws.opt());
    planar_flow_forward<CPU>(z.ref.view(), u.ref.view(), w.ref.view(), b.ref.view(), reverse, f.ref.view(),
                             logdet.ref.view(), ws_ref.opt());
    compare(tag + dir + " f", f.dev, f.ref, tol_for(dt));
    // Near wᵀû = −1 the logdet log|1 + m·tanh'| loses every digit in float32 (m rounds to −1), on
    // any implementation; the adversarial case checks that the map and its inverse stay exact.
    if (u_scale < 0) continue;
    compare(tag + dir + " logdet", logdet.dev, logdet.ref, tol_for(dt));
    Pair gf = randn(dt, {batch, features}), gl = randn(dt, {batch});
    Pair dz = outputs(dt, {batch, features}), du = outputs(dt, {features}), dw = outputs(dt, {features}),
         db = outputs(dt, {1});
    for (int64_t i = 0; i < f.ref.n; ++i) f.ref.set(i, f.dev.get(i));
    planar_flow_backward<CUDA>(gf.dev.view(), gl.dev.view(), z.dev.view(), f.dev.view(), u.dev.view(), w.dev.view(),
                               b.dev.view(), reverse, dz.dev.opt(), du.dev.opt(), dw.dev.opt(), db.dev.opt(), ws.opt());
    planar_flow_backward<CPU>(gf.ref.view(), gl.ref.view(), z.ref.view(), f.ref.view(), u.ref.view(), w.ref.view(),
                              b.ref.view(), reverse, dz.ref.opt(), du.ref.opt(), dw.ref.opt(), db.ref.opt(),
                              ws_ref.opt());
    compare(tag + dir + " dz", dz.dev, dz.ref, tol_for(dt));
    compare(tag + dir + " du", du.dev, du.ref, tol_for(dt));
    compare(tag + dir + " dw", dw.dev, dw.ref, tol_for(dt));
    compare(tag + dir + " db", db.dev, db.ref, tol_for(dt));
  }
}

}  // namespace

int main(int argc, char** argv) {
  emu::grid_x_cap = argc > 1 ? std::atoi(argv[1]) : 0;
  const bool quick = argc > 2;
  std::printf("grid.x cap: %u\n", emu::grid_x_cap);
  for (DType dt : {DType::Float32, DType::Float16, DType::BFloat16}) {
    const bool f32 = dt == DType::Float32;
    // one chunk, several chunks per row (features > 2048), batch 1, a 1-D sample
    const std::vector<std::vector<int64_t>> coupling_shapes = {{3, 5}, {2, 3, 4, 4}, {1, 5000}, {4, 1}, {2, 2100}};
    for (const auto& shape : coupling_shapes)
      for (int scale : {0, 1, 2})
        for (bool masked : {false, true}) {
          if ((quick || !f32) && scale != (masked ? 2 : 0)) continue;
          test_coupling(dt, shape, masked, scale, true, true);
        }
    test_coupling(dt, {3, 7}, true, 0, true, false);   // additive
    test_coupling(dt, {3, 7}, false, 1, false, true);  // scale only
    for (const auto& shape : std::vector<std::vector<int64_t>>{{2, 3}, {4, 3, 5, 5}, {1, 2, 7}, {20, 2, 33}, {3, 5}})
      test_actnorm(dt, shape);
    for (const auto& shape : std::vector<std::vector<int64_t>>{{2, 4, 3, 3}, {1, 3, 5}, {5, 6}, {2, 1, 4}, {2, 7, 9}})
      test_invconv(dt, shape);
    for (auto [batch, features] : std::vector<std::pair<int64_t, int64_t>>{{7, 5}, {1, 3}, {40, 64}, {3, 1}, {9, 70}})
      test_planar(dt, batch, features, 1.0);
    test_planar(dt, 16, 8, -20.0);  // wᵀu ≪ −1
  }
  std::printf("%d checks, %d failures\n", checks, failures);
  return failures ? 1 : 0;
}
