// Emulated CUDA kernels (csrc/ssm/cuda.cu compiled against include/cuda_runtime.h) against the CPU
// float64 kernels; built and run by tests/cuda_emu/run.sh ssm.
#include <cstdio>
#include <cstdlib>
#include <optional>

#include "emu_test_helpers.h"
#include "ssm/ssm.h"

using namespace replearn;
using namespace replearn::emu_test;
using namespace replearn::ssm;

OptView opt_if(bool on, const Arr& a) { return on ? OptView(a.view()) : std::nullopt; }
#define CMP(name, p, dt) compare(tag + " " name, (p).dev, (p).ref, tol_for(dt))

// ------------------------------------------------------------------------------ selective scan
void test_scan(DType dt, int64_t batch, int64_t dim, int64_t L, int64_t N, int64_t groups, bool selB, bool selC,
               bool full) {
  const std::string tag = std::string("scan ") + dtype_name(dt) + " b" + std::to_string(batch) + " d" +
                          std::to_string(dim) + " L" + std::to_string(L) + " N" + std::to_string(N) + " g" +
                          std::to_string(groups) + (selB ? " selB" : "") + (selC ? " selC" : "") +
                          (full ? " D,z,bias,softplus,last" : "");
  const std::vector<int64_t> seq{batch, dim, L}, sel{batch, groups, N, L}, ti{dim, N};
  Pair u = randn(dt, seq), delta = randn(dt, seq, full ? -1.0 : 0.3, full ? 0.5 : 0.1), z = randn(dt, seq);
  Pair A = randn(dt, {dim, N}, -1.0, 0.3), B = randn(dt, selB ? sel : ti), C = randn(dt, selC ? sel : ti);
  Pair D = randn(dt, {dim}), bias = randn(dt, {dim}, 0, 0.3), gout = randn(dt, seq);
  const int64_t chunks = scan_chunks(L);
  Pair out = outputs(dt, seq);
  Arr ck_dev = make(DType::Float32, CUDA, {batch, dim, chunks, N});
  Arr ck_ref = make(DType::Float64, CPU, {batch, dim, chunks, N});
  selective_scan_forward<CUDA>(u.dev.view(), delta.dev.view(), A.dev.view(), B.dev.view(), C.dev.view(),
                               opt_if(full, D.dev), opt_if(full, z.dev), opt_if(full, bias.dev), full,
                               out.dev.view(), ck_dev.view());
  selective_scan_forward<CPU>(u.ref.view(), delta.ref.view(), A.ref.view(), B.ref.view(), C.ref.view(),
                              opt_if(full, D.ref), opt_if(full, z.ref), opt_if(full, bias.ref), full, out.ref.view(),
                              ck_ref.view());
  CMP("out", out, dt);
  compare(tag + " checkpoints", ck_dev, ck_ref, tol_for(dt));
  Pair gl = {make(DType::Float32, CUDA, {batch, dim, N}), make(DType::Float64, CPU, {batch, dim, N})};
  for (int64_t i = 0; i < gl.dev.n; ++i) {
    gl.dev.set(i, std::sin(double(i)));
    gl.ref.set(i, gl.dev.get(i));
  }
  Pair du = outputs(dt, seq), dd = outputs(dt, seq), dA = outputs(dt, {dim, N}), dB = outputs(dt, B.ref.shape),
       dC = outputs(dt, C.ref.shape), dD = outputs(dt, {dim}), dz = outputs(dt, seq), db = outputs(dt, {dim});
  Arr ws = bytes(CUDA, selective_scan_backward_workspace_size<CUDA>(u.dev.view(), A.dev.view(), B.dev.view(),
                                                                     C.dev.view()));
  Arr wsr = bytes(CPU, selective_scan_backward_workspace_size<CPU>(u.ref.view(), A.ref.view(), B.ref.view(),
                                                                    C.ref.view()));
  selective_scan_backward<CUDA>(gout.dev.view(), u.dev.view(), delta.dev.view(), A.dev.view(), B.dev.view(),
                                C.dev.view(), opt_if(full, D.dev), opt_if(full, z.dev), opt_if(full, bias.dev), full,
                                ck_dev.view(), opt_if(full, gl.dev), du.dev.view(), dd.dev.view(), dA.dev.view(),
                                dB.dev.view(), dC.dev.view(), opt_if(full, dD.dev), opt_if(full, dz.dev),
                                opt_if(full, db.dev), ws.opt());
  selective_scan_backward<CPU>(gout.ref.view(), u.ref.view(), delta.ref.view(), A.ref.view(), B.ref.view(),
                               C.ref.view(), opt_if(full, D.ref), opt_if(full, z.ref), opt_if(full, bias.ref), full,
                               ck_ref.view(), opt_if(full, gl.ref), du.ref.view(), dd.ref.view(), dA.ref.view(),
                               dB.ref.view(), dC.ref.view(), opt_if(full, dD.ref), opt_if(full, dz.ref),
                               opt_if(full, db.ref), wsr.opt());
  CMP("du", du, dt);
  CMP("ddelta", dd, dt);
  CMP("dA", dA, dt);
  CMP("dB", dB, dt);
  CMP("dC", dC, dt);
  if (full) {
    CMP("dD", dD, dt);
    CMP("dz", dz, dt);
    CMP("ddelta_bias", db, dt);
  }
}

// ------------------------------------------------------------------------------ causal conv1d
void test_conv(DType dt, int64_t batch, int64_t dim, int64_t L, int64_t W, bool full) {
  const std::string tag = std::string("conv ") + dtype_name(dt) + shape_str({batch, dim, L}) + " W" +
                          std::to_string(W) + (full ? " bias,init,silu,final" : "");
  const std::vector<int64_t> seq{batch, dim, L}, st{batch, dim, W - 1};
  Pair x = randn(dt, seq), w = randn(dt, {dim, W}, 0, 0.5), b = randn(dt, {dim}), init = randn(dt, st);
  Pair y = outputs(dt, seq), fin = outputs(dt, st), gy = randn(dt, seq), gf = randn(dt, st);
  causal_conv1d_forward<CUDA>(x.dev.view(), w.dev.view(), opt_if(full, b.dev), opt_if(full, init.dev), full,
                              y.dev.view(), fin.dev.opt());
  causal_conv1d_forward<CPU>(x.ref.view(), w.ref.view(), opt_if(full, b.ref), opt_if(full, init.ref), full,
                             y.ref.view(), fin.ref.opt());
  CMP("y", y, dt);
  CMP("final_state", fin, dt);
  Pair dx = outputs(dt, seq), dw = outputs(dt, {dim, W}), db = outputs(dt, {dim}), dinit = outputs(dt, st);
  Arr ws = bytes(CUDA, causal_conv1d_backward_workspace_size<CUDA>(x.dev.view(), w.dev.view()));
  Arr wsr = bytes(CPU, causal_conv1d_backward_workspace_size<CPU>(x.ref.view(), w.ref.view()));
  causal_conv1d_backward<CUDA>(gy.dev.view(), x.dev.view(), w.dev.view(), opt_if(full, b.dev),
                               opt_if(full, init.dev), full, opt_if(full, gf.dev), dx.dev.view(), dw.dev.view(),
                               opt_if(full, db.dev), opt_if(full, dinit.dev), ws.opt());
  causal_conv1d_backward<CPU>(gy.ref.view(), x.ref.view(), w.ref.view(), opt_if(full, b.ref), opt_if(full, init.ref),
                              full, opt_if(full, gf.ref), dx.ref.view(), dw.ref.view(), opt_if(full, db.ref),
                              opt_if(full, dinit.ref), wsr.opt());
  CMP("dx", dx, dt);
  CMP("dweight", dw, dt);
  if (full) {
    CMP("dbias", db, dt);
    CMP("dinitial_state", dinit, dt);
  }
}

// --------------------------------------------------------------------------------- S4D kernel
void test_s4d(DType dt, int64_t H, int64_t N, int64_t L) {
  const std::string tag = std::string("s4d ") + dtype_name(dt) + " H" + std::to_string(H) + " N" +
                          std::to_string(N) + " L" + std::to_string(L);
  Pair log_dt = randn(dt, {H}, -3.5, 0.5), Ar = randn(dt, {H, N}, -0.5, 0.05), Ai = randn(dt, {H, N}, 0, 3);
  Pair Cr = randn(dt, {H, N}, 0, 0.5), Ci = randn(dt, {H, N}, 0, 0.5), gK = randn(dt, {H, L});
  Pair K = outputs(dt, {H, L});
  s4d_kernel_forward<CUDA>(log_dt.dev.view(), Ar.dev.view(), Ai.dev.view(), Cr.dev.view(), Ci.dev.view(),
                           K.dev.view());
  s4d_kernel_forward<CPU>(log_dt.ref.view(), Ar.ref.view(), Ai.ref.view(), Cr.ref.view(), Ci.ref.view(),
                          K.ref.view());
  CMP("K", K, dt);
  Pair g0 = outputs(dt, {H}), g1 = outputs(dt, {H, N}), g2 = outputs(dt, {H, N}), g3 = outputs(dt, {H, N}),
       g4 = outputs(dt, {H, N});
  s4d_kernel_backward<CUDA>(gK.dev.view(), log_dt.dev.view(), Ar.dev.view(), Ai.dev.view(), Cr.dev.view(),
                            Ci.dev.view(), g0.dev.view(), g1.dev.view(), g2.dev.view(), g3.dev.view(), g4.dev.view());
  s4d_kernel_backward<CPU>(gK.ref.view(), log_dt.ref.view(), Ar.ref.view(), Ai.ref.view(), Cr.ref.view(),
                           Ci.ref.view(), g0.ref.view(), g1.ref.view(), g2.ref.view(), g3.ref.view(), g4.ref.view());
  CMP("dlog_dt", g0, dt);
  CMP("dA_real", g1, dt);
  CMP("dA_imag", g2, dt);
  CMP("dC_real", g3, dt);
  CMP("dC_imag", g4, dt);
}

// -------------------------------------------------------------------------------------- Cauchy
void test_cauchy(DType dt, int64_t H, int64_t N, int64_t L) {
  const std::string tag = std::string("cauchy ") + dtype_name(dt) + " H" + std::to_string(H) + " N" +
                          std::to_string(N) + " L" + std::to_string(L);
  Pair vr = randn(dt, {H, N}), vi = randn(dt, {H, N}), zr = randn(dt, {L}, 0, 0.3), zi = randn(dt, {L}, 0, 2);
  Pair wr = randn(dt, {H, N}, -1.0, 0.2), wi = randn(dt, {H, N}, 0, 3), gr = randn(dt, {H, L}), gi = randn(dt, {H, L});
  Pair outr = outputs(dt, {H, L}), outi = outputs(dt, {H, L});
  cauchy_forward<CUDA>(vr.dev.view(), vi.dev.view(), zr.dev.view(), zi.dev.view(), wr.dev.view(), wi.dev.view(),
                       outr.dev.view(), outi.dev.view());
  cauchy_forward<CPU>(vr.ref.view(), vi.ref.view(), zr.ref.view(), zi.ref.view(), wr.ref.view(), wi.ref.view(),
                      outr.ref.view(), outi.ref.view());
  CMP("out_real", outr, dt);
  CMP("out_imag", outi, dt);
  Pair a = outputs(dt, {H, N}), b = outputs(dt, {H, N}), c = outputs(dt, {H, N}), e = outputs(dt, {H, N});
  cauchy_backward<CUDA>(gr.dev.view(), gi.dev.view(), vr.dev.view(), vi.dev.view(), zr.dev.view(), zi.dev.view(),
                        wr.dev.view(), wi.dev.view(), a.dev.view(), b.dev.view(), c.dev.view(), e.dev.view());
  cauchy_backward<CPU>(gr.ref.view(), gi.ref.view(), vr.ref.view(), vi.ref.view(), zr.ref.view(), zi.ref.view(),
                       wr.ref.view(), wi.ref.view(), a.ref.view(), b.ref.view(), c.ref.view(), e.ref.view());
  CMP("dv_real", a, dt);
  CMP("dv_imag", b, dt);
  CMP("dw_real", c, dt);
  CMP("dw_imag", e, dt);
}

int main(int argc, char** argv) {
  emu::grid_x_cap = argc > 1 ? std::atoi(argv[1]) : 0;
  const bool quick = argc > 2;
  std::printf("grid.x cap: %u\n", emu::grid_x_cap);
  for (DType dt : {DType::Float32, DType::Float16, DType::BFloat16}) {
    const bool f32 = dt == DType::Float32;
    // L = 1, odd L, L across chunk boundaries; N in both register buckets; groups; mixed B/C forms
    test_scan(dt, 1, 3, 1, 4, 1, true, true, true);
    test_scan(dt, 2, 6, 7, 3, 2, true, false, true);
    test_scan(dt, 2, 5, 130, 20, 1, false, true, false);
    if (f32 || !quick) {
      test_scan(dt, 1, 70, 65, 16, 5, true, true, true);
      test_scan(dt, 2, 4, 33, 5, 1, false, false, true);
    }
    for (int64_t W : {2, 3, 4}) {
      test_conv(dt, 2, 3, 9, W, true);
      test_conv(dt, 1, 2, 1, W, true);
      if (f32 || !quick) test_conv(dt, 3, 5, 300, W, false);
    }
    test_s4d(dt, 3, 4, 17);
    test_cauchy(dt, 3, 5, 9);
    if (f32 || !quick) test_cauchy(dt, 2, 33, 300);
    if (f32 || !quick) test_s4d(dt, 2, 8, 70);
  }
  std::printf("%d checks, %d failures\n", checks, failures);
  return failures ? 1 : 0;
}
