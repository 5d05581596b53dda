// Emulated CUDA kernels of the recurrent family (csrc/rnn/cuda.cu compiled against
// include/cuda_runtime.h), float32, float16 and bfloat16, against the CPU kernels in float64 on the
// same values (the inputs rounded to the device dtype first): outputs, final states and every
// gradient, for each cell with and without lengths, reverse and biases, at sizes that span several
// GEMM tiles; and the LSTM with projection (W_hr, grad_w_hr). Built and run by
// tests/cuda_emu/run.sh rnn.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "core/check.h"
#include "core/cuda_utils.cuh"
#include "rnn/rnn.h"

using namespace replearn;
using namespace replearn::rnn;
constexpr DeviceType CUDA = DeviceType::CUDA, CPU = DeviceType::CPU;

struct Arr {  // exact-size heap buffer in the device dtype ("CUDA") or float64 (CPU reference)
  DType dt;
  DeviceType dev;
  std::vector<int64_t> shape;
  int64_t n = 1;
  std::unique_ptr<unsigned char[]> mem;
  Arr(DType d, DeviceType v, std::vector<int64_t> s) : dt(d), dev(v), shape(std::move(s)) {
    for (auto k : shape) n *= k;
    mem.reset(new unsigned char[std::max<int64_t>(n, 1) * dtype_size(dt)]);
    std::memset(mem.get(), 0xff, std::max<int64_t>(n, 1) * dtype_size(dt));  // NaN garbage
  }
  TensorView view() const {
    TensorView v;
    v.data = mem.get();
    v.dtype = dt;
    v.device = Device{dev, 0};
    v.ndim = static_cast<int>(shape.size());
    int64_t stride = 1;
    for (int k = v.ndim - 1; k >= 0; --k) v.sizes[k] = shape[k], v.strides[k] = stride, stride *= shape[k];
    return v;
  }
  std::optional<TensorView> opt() const { return view(); }
  double get(int64_t i) const {
    switch (dt) {
      case DType::Float64: return reinterpret_cast<const double*>(mem.get())[i];
      case DType::Int64: return static_cast<double>(reinterpret_cast<const int64_t*>(mem.get())[i]);
      case DType::Float16: return to_float(reinterpret_cast<const __half*>(mem.get())[i]);
      case DType::BFloat16: return to_float(reinterpret_cast<const __nv_bfloat16*>(mem.get())[i]);
      default: return reinterpret_cast<const float*>(mem.get())[i];
    }
  }
  void set(int64_t i, double v) {
    switch (dt) {
      case DType::Float64: reinterpret_cast<double*>(mem.get())[i] = v; break;
      case DType::Int64: reinterpret_cast<int64_t*>(mem.get())[i] = static_cast<int64_t>(v); break;
      case DType::Float16: reinterpret_cast<__half*>(mem.get())[i] = from_float<__half>(static_cast<float>(v)); break;
      case DType::BFloat16:
        reinterpret_cast<__nv_bfloat16*>(mem.get())[i] = from_float<__nv_bfloat16>(static_cast<float>(v));
        break;
      default: reinterpret_cast<float*>(mem.get())[i] = static_cast<float>(v);
    }
  }
};

int checks = 0, failures = 0;

// Error normalized by (atol + rtol·|want|): float32 matches to 1e-4; float16/bfloat16 store y, the
// states and the gradients rounded once (relative 2^-11 / 2^-8) after float32 arithmetic, so their
// bound is a few roundings of the tensor's largest value (the rounding of a sum of T·B terms is
// relative to its magnitude, not to a small cancelled result).
void compare(const std::string& what, const Arr& got, const Arr& ref) {
  ++checks;
  double worst = 0, scale = 0;
  int64_t at = 0;
  for (int64_t i = 0; i < ref.n; ++i) scale = std::max(scale, std::fabs(ref.get(i)));
  const double tol = got.dt == DType::Float16 ? 4e-3 : got.dt == DType::BFloat16 ? 3e-2 : 1e-4;
  const double atol = got.dt == DType::Float32 ? 1e-4 : tol * std::max(1.0, scale);
  for (int64_t i = 0; i < ref.n; ++i) {
    const double err = std::fabs(got.get(i) - ref.get(i)) / (atol + tol * std::fabs(ref.get(i)));
    if (!(err <= worst)) worst = std::isnan(err) ? INFINITY : err, at = i;
  }
  if (worst > 1) {
    ++failures;
    std::printf("FAIL %s: normalized error %g at %ld (got %g, want %g)\n", what.c_str(), worst, static_cast<long>(at),
                got.get(at), ref.get(at));
  }
}

struct Side {  // one device's tensors for a problem (S: the state width, P with a projection, else H)
  Arr x, h0, c0, w_ih, w_hh, w_hr, b_ih, b_hh, lengths, y, h_n, c_n, reserve, gy, gh, gc, dx, dh0, dc0, dw_ih, dw_hh,
      dw_hr, db_ih, db_hh;
};

Side make_side(DType dt, DeviceType dev, Cell cell, int64_t T, int64_t B, int64_t I, int64_t H, int64_t P) {
  const int64_t G = gate_count(cell) * H, S = P > 0 ? P : H;
  const LayerDims d{cell, T, B, I, H, P};
  return Side{Arr(dt, dev, {T, B, I}),  Arr(dt, dev, {B, S}),    Arr(dt, dev, {B, H}),     Arr(dt, dev, {G, I}),
              Arr(dt, dev, {G, S}),     Arr(dt, dev, {P, H}),    Arr(dt, dev, {G}),        Arr(dt, dev, {G}),
              Arr(DType::Int64, dev, {B}),                       Arr(dt, dev, {T, B, S}),  Arr(dt, dev, {B, S}),
              Arr(dt, dev, {B, H}),     Arr(stats_dtype(dt), dev, {T, B, d.reserve()}),    Arr(dt, dev, {T, B, S}),
              Arr(dt, dev, {B, S}),     Arr(dt, dev, {B, H}),    Arr(dt, dev, {T, B, I}),  Arr(dt, dev, {B, S}),
              Arr(dt, dev, {B, H}),     Arr(dt, dev, {G, I}),    Arr(dt, dev, {G, S}),     Arr(dt, dev, {P, H}),
              Arr(dt, dev, {G}),        Arr(dt, dev, {G})};
}

template <DeviceType D>
void run(Side& s, Cell cell, bool lengths, bool reverse, bool biases, bool proj) {
  const int c = static_cast<int>(cell);
  const bool lstm = cell == Cell::Lstm;
  auto opt_if = [](bool on, const Arr& a) { return on ? a.opt() : std::nullopt; };
  const OptView w_hr = opt_if(proj, s.w_hr);
  Arr fws(DType::UInt8, s.x.dev, {rnn_forward_workspace_size<D>(c, s.x.view(), s.w_hh.view(), w_hr)});
  rnn_forward<D>(c, s.x.view(), s.h0.view(), opt_if(lstm, s.c0), s.w_ih.view(), s.w_hh.view(), w_hr,
                 opt_if(biases, s.b_ih), opt_if(biases, s.b_hh), opt_if(lengths, s.lengths), reverse, s.y.view(),
                 s.h_n.view(), opt_if(lstm, s.c_n), s.reserve.view(), fws.opt());
  Arr bws(DType::UInt8, s.x.dev, {rnn_backward_workspace_size<D>(c, s.x.view(), s.w_hh.view(), w_hr)});
  rnn_backward<D>(c, s.gy.view(), s.gh.view(), opt_if(lstm, s.gc), s.x.view(), s.w_ih.view(), s.w_hh.view(), w_hr,
                  opt_if(lengths, s.lengths), reverse, s.reserve.view(), s.dx.opt(), s.dh0.opt(), opt_if(lstm, s.dc0),
                  s.dw_ih.opt(), s.dw_hh.opt(), opt_if(proj, s.dw_hr), s.db_ih.opt(), s.db_hh.opt(), bws.opt());
}

void test(DType dt, Cell cell, int64_t T, int64_t B, int64_t I, int64_t H, bool lengths, bool reverse, bool biases,
          int64_t P = 0) {
  const char* names[] = {"tanh", "relu", "lstm", "gru"};
  const std::string tag = std::string(dtype_name(dt)) + " " + names[static_cast<int>(cell)] + " T" + std::to_string(T) + " B" +
                          std::to_string(B) + " I" + std::to_string(I) + " H" + std::to_string(H) +
                          (P ? " P" + std::to_string(P) : "") + (lengths ? " lengths" : "") +
                          (reverse ? " reverse" : "") + (biases ? "" : " no-bias");
  Side dev = make_side(dt, CUDA, cell, T, B, I, H, P);
  Side ref = make_side(DType::Float64, CPU, cell, T, B, I, H, P);
  std::mt19937 rng(static_cast<unsigned>(T * 131 + B * 17 + H));
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  const float w = 1.f / std::sqrt(static_cast<float>(H));
  auto fill = [&](Arr Side::*member, float scale) {
    for (int64_t i = 0; i < (dev.*member).n; ++i) {
      (dev.*member).set(i, scale * u(rng));
      (ref.*member).set(i, (dev.*member).get(i));  // rounded to the device dtype: both sides see the same inputs
    }
  };
  fill(&Side::x, 1.f), fill(&Side::h0, 0.5f), fill(&Side::c0, 0.5f), fill(&Side::w_ih, w), fill(&Side::w_hh, w);
  fill(&Side::w_hr, w);
  fill(&Side::b_ih, 0.3f), fill(&Side::b_hh, 0.3f), fill(&Side::gy, 1.f), fill(&Side::gh, 1.f), fill(&Side::gc, 1.f);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t len = lengths ? 1 + (b * 7 + 3) % T : T;
    dev.lengths.set(b, len), ref.lengths.set(b, len);
  }
  run<CUDA>(dev, cell, lengths, reverse, biases, P > 0);
  run<CPU>(ref, cell, lengths, reverse, biases, P > 0);
  compare(tag + " y", dev.y, ref.y);
  compare(tag + " h_n", dev.h_n, ref.h_n);
  compare(tag + " grad_x", dev.dx, ref.dx);
  compare(tag + " grad_h0", dev.dh0, ref.dh0);
  compare(tag + " grad_w_ih", dev.dw_ih, ref.dw_ih);
  compare(tag + " grad_w_hh", dev.dw_hh, ref.dw_hh);
  compare(tag + " grad_b_ih", dev.db_ih, ref.db_ih);
  compare(tag + " grad_b_hh", dev.db_hh, ref.db_hh);
  if (cell == Cell::Lstm) {
    compare(tag + " c_n", dev.c_n, ref.c_n);
    compare(tag + " grad_c0", dev.dc0, ref.dc0);
  }
  if (P > 0) compare(tag + " grad_w_hr", dev.dw_hr, ref.dw_hr);
}

int main(int argc, char** argv) {
  emu::grid_x_cap = argc > 1 ? std::atoi(argv[1]) : 0;
  const bool quick = argc > 2;
  std::printf("grid.x cap: %u\n", emu::grid_x_cap);
  for (DType dt : {DType::Float32, DType::Float16, DType::BFloat16}) {
    const bool all = dt == DType::Float32 && !quick;
    for (Cell cell : {Cell::Tanh, Cell::Relu, Cell::Lstm, Cell::Gru}) {
      test(dt, cell, 1, 1, 1, 1, false, false, true);
      test(dt, cell, 4, 3, 5, 18, true, false, true);  // G·H and H past one 16-wide tile, k over two tiles
      test(dt, cell, 3, 2, 3, 5, true, true, false);
      if (all) test(dt, cell, 5, 4, 17, 7, false, true, true);
    }
    // The LSTM with projection: P within a tile and past one, with lengths, reverse and no biases.
    test(dt, Cell::Lstm, 1, 1, 1, 2, false, false, true, 1);
    test(dt, Cell::Lstm, 4, 3, 5, 18, true, false, true, 7);
    test(dt, Cell::Lstm, 3, 2, 3, 20, true, true, false, 17);
    if (all) test(dt, Cell::Lstm, 5, 4, 6, 9, false, true, true, 4);
  }
  std::printf("%d checks, %d failures, %ld emulated launches\n", checks, failures, emu::launches.load());
  return failures ? 1 : 0;
}
