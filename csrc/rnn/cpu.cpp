// CPU kernels of the recurrent family (rnn.h): OpenBLAS GEMMs (core/gemm.h) for every product with
// a weight, and per step one fused elementwise pass over the batch rows (cell.h).
//
// Threads: the GEMMs run outside parallel regions on OpenBLAS's num_threads() threads; the
// elementwise passes split the batch rows with parallel_for. The per-step GEMM is small
// (B × G·H × H), so the step loop stays serial: time is the one truly sequential dimension.
#include <algorithm>
#include <cstring>
#include <vector>

#include "core/dispatch.h"
#include "core/gemm.h"
#include "core/parallel.h"
#include "rnn/cell.h"
#include "rnn/rnn.h"

namespace replearn::rnn {

namespace {

using blas::gemm;
using blas::Trans;

// Elements per thread below which a step's elementwise pass is not worth a parallel region: a step
// is short, and an OpenMP team start (or, on a loaded machine, its spinning) would dominate it.
constexpr int64_t kElementGrain = 1 << 14;

int64_t row_grain(const LayerDims& d) { return std::max<int64_t>(1, kElementGrain / d.gates()); }

bool is_active(const int64_t* lengths, int64_t b, int64_t t) { return lengths == nullptr || t < lengths[b]; }

template <class T>
const T* optional_data(const OptView& v) { return v ? v->data_as<const T>() : nullptr; }

template <class T>
T* optional_data_mut(const OptView& v) { return v ? v->data_as<T>() : nullptr; }

// Folds the biases into what the gate pass adds: b_ih + b_hh per gate, except the GRU's n gate, where
// b_hn sits inside r ⊙ (W_hn h + b_hn) and goes to bias_hn.
template <class T>
void fold_biases(const LayerDims& d, const T* b_ih, const T* b_hh, T* bias, T* bias_hn) {
  const int64_t GH = d.gates(), H = d.hidden;
  for (int64_t k = 0; k < GH; ++k) bias[k] = (b_ih ? b_ih[k] : T(0)) + (b_hh ? b_hh[k] : T(0));
  if (d.cell == Cell::Gru) {
    for (int64_t j = 0; j < H; ++j) {
      bias_hn[j] = b_hh ? b_hh[2 * H + j] : T(0);
      bias[2 * H + j] = b_ih ? b_ih[2 * H + j] : T(0);
    }
  }
}

template <Cell kind, class T>
void forward_steps(const LayerDims& d, const T* w_hh, const int64_t* lengths, bool reverse, const T* bias,
                   const T* bias_hn, T* y, T* h, T* c, T* reserve, T* hh) {
  const int64_t B = d.batch, H = d.hidden, GH = d.gates(), R = d.reserve();
  for (int64_t s = 0; s < d.steps; ++s) {
    const int64_t t = reverse ? d.steps - 1 - s : s;
    gemm(Trans::No, Trans::Yes, B, GH, H, T(1), h, H, w_hh, H, T(0), hh, GH);  // (B, G·H) = h W_hhᵀ
    parallel_for(B, row_grain(d), [&](int, int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        T* rsv = reserve + (t * B + b) * R;
        const T* hh_b = hh + b * GH;
        T* h_b = h + b * H;
        T* c_b = c ? c + b * H : nullptr;
        T* y_b = y + (t * B + b) * H;
        if (is_active(lengths, b, t)) {
#pragma omp simd
          for (int64_t j = 0; j < H; ++j) cell::forward_element<kind>(j, H, rsv, hh_b, bias, bias_hn, h_b, c_b, y_b);
        } else {
          for (int64_t j = 0; j < H; ++j) cell::forward_inactive_element<kind>(j, H, rsv, h_b, y_b);
        }
      }
    });
  }
}

// Returns where the final δh_0 is (the two δh buffers swap roles every step).
template <Cell kind, class T>
T* backward_steps(const LayerDims& d, const T* w_hh, const int64_t* lengths, bool reverse, const T* reserve,
                    const T* grad_y, T* dh, T* dh_next, T* dc, T* dg_ih, T* dg_hh) {
  const int64_t B = d.batch, H = d.hidden, GH = d.gates(), R = d.reserve();
  for (int64_t s = d.steps - 1; s >= 0; --s) {
    const int64_t t = reverse ? d.steps - 1 - s : s;
    parallel_for(B, row_grain(d), [&](int, int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t row = t * B + b;
        const T* rsv = reserve + row * R;
        const T* dy = grad_y + row * H;
        T* dc_b = dc ? dc + b * H : nullptr;
        const T* dh_b = dh + b * H;
        T* dh_next_b = dh_next + b * H;
        T* dg_ih_b = dg_ih + row * GH;
        T* dg_hh_b = dg_hh + row * GH;
        if (is_active(lengths, b, t)) {
#pragma omp simd
          for (int64_t j = 0; j < H; ++j)
            cell::backward_element<kind>(j, H, rsv, dy, dh_b, dh_next_b, dc_b, dg_ih_b, dg_hh_b);
        } else {
          for (int64_t j = 0; j < H; ++j) cell::backward_inactive_element<kind>(j, H, dh_b, dh_next_b, dg_ih_b, dg_hh_b);
        }
      }
    });
    // δh_{t−1} += δgates_t W_hh: (B, G·H) × (G·H, H)
    gemm(Trans::No, Trans::No, B, H, GH, T(1), dg_hh + t * B * GH, GH, w_hh, H, T(1), dh_next, H);
    std::swap(dh, dh_next);
  }
  return dh;
}

// Σ over rows of a (rows, cols) matrix, columns split across threads.
template <class T>
void column_sums(const T* m, int64_t rows, int64_t cols, T* out) {
  parallel_for(cols, 64, [&](int, int64_t c0, int64_t c1) {
    std::fill(out + c0, out + c1, T(0));
    for (int64_t r = 0; r < rows; ++r) {
      const T* row = m + r * cols;
#pragma omp simd
      for (int64_t k = c0; k < c1; ++k) out[k] += row[k];
    }
  });
}

}  // namespace

template <>
void rnn_forward<DeviceType::CPU>(int cell, const TensorView& x, const TensorView& h0, const OptView& c0,
                                  const TensorView& w_ih, const TensorView& w_hh, const OptView& b_ih,
                                  const OptView& b_hh, const OptView& lengths, bool reverse, const TensorView& y,
                                  const TensorView& h_n, const OptView& c_n, const TensorView& reserve,
                                  const OptView& workspace, std::uintptr_t) {
  const LayerDims d = check_forward(DeviceType::CPU, cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, y, h_n, c_n,
                                    reserve, workspace);
  dispatch_cpu_floating(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const int64_t B = d.batch, H = d.hidden, GH = d.gates(), R = d.reserve();
    T* hh = workspace->data_as<T>();  // (B, G·H)
    T* bias = hh + B * GH;            // (G·H)
    T* bias_hn = bias + GH;           // (H)
    fold_biases<T>(d, optional_data<T>(b_ih), optional_data<T>(b_hh), bias, bias_hn);
    T* rsv = reserve.data_as<T>();
    // The input projection of every step at once: reserve[:, :, :G·H] = x W_ihᵀ, (T·B, I) × (I, G·H).
    gemm(Trans::No, Trans::Yes, d.steps * B, GH, d.input, T(1), x.data_as<const T>(), d.input,
         w_ih.data_as<const T>(), d.input, T(0), rsv, R);
    T* h = h_n.data_as<T>();  // the running state lives in the final-state outputs
    std::memcpy(h, h0.data, B * H * sizeof(T));
    T* c = optional_data_mut<T>(c_n);
    if (c) std::memcpy(c, c0->data, B * H * sizeof(T));
    const int64_t* len = lengths ? lengths->data_as<const int64_t>() : nullptr;
    cell::dispatch_cell(d.cell, [&](auto kind) {
      forward_steps<decltype(kind)::value, T>(d, w_hh.data_as<const T>(), len, reverse, bias, bias_hn,
                                              y.data_as<T>(), h, c, rsv, hh);
    });
  });
}

template <>
void rnn_backward<DeviceType::CPU>(int cell, const TensorView& grad_y, const TensorView& grad_h_n,
                                   const OptView& grad_c_n, const TensorView& x, const TensorView& w_ih,
                                   const TensorView& w_hh, const OptView& lengths, bool reverse,
                                   const TensorView& reserve, const OptView& grad_x, const OptView& grad_h0,
                                   const OptView& grad_c0, const OptView& grad_w_ih, const OptView& grad_w_hh,
                                   const OptView& grad_b_ih, const OptView& grad_b_hh, const OptView& workspace,
                                   std::uintptr_t) {
  const LayerDims d = check_backward(DeviceType::CPU, cell, grad_y, grad_h_n, grad_c_n, x, w_ih, w_hh, lengths,
                                     reserve, grad_x, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh,
                                     workspace);
  dispatch_cpu_floating(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const int64_t TB = d.steps * d.batch, BH = d.batch * d.hidden, GH = d.gates(), H = d.hidden;
    T* dg_ih = workspace->data_as<T>();                            // (T, B, G·H)
    T* dg_hh = d.cell == Cell::Gru ? dg_ih + TB * GH : dg_ih;      // the GRU's recurrent side differs
    T* dh = (d.cell == Cell::Gru ? dg_hh : dg_ih) + TB * GH;       // (B, H) ×3: δh, δh_{t−1}, δc
    T* dh_next = dh + BH;
    T* dc = d.cell == Cell::Lstm ? dh_next + BH : nullptr;
    std::memcpy(dh, grad_h_n.data, BH * sizeof(T));
    if (dc) std::memcpy(dc, grad_c_n->data, BH * sizeof(T));
    const int64_t* len = lengths ? lengths->data_as<const int64_t>() : nullptr;
    const T* rsv = reserve.data_as<const T>();
    const T* dh0 = nullptr;
    cell::dispatch_cell(d.cell, [&](auto kind) {
      dh0 = backward_steps<decltype(kind)::value, T>(d, w_hh.data_as<const T>(), len, reverse, rsv,
                                                     grad_y.data_as<const T>(), dh, dh_next, dc, dg_ih, dg_hh);
    });
    if (grad_h0) std::memcpy(grad_h0->data, dh0, BH * sizeof(T));
    if (grad_c0 && dc) std::memcpy(grad_c0->data, dc, BH * sizeof(T));
    // The weight products over all steps at once.
    if (grad_x)  // (T·B, I) = δgates (T·B, G·H) × W_ih (G·H, I)
      gemm(Trans::No, Trans::No, TB, d.input, GH, T(1), dg_ih, GH, w_ih.data_as<const T>(), d.input, T(0),
           grad_x->data_as<T>(), d.input);
    if (grad_w_ih)  // (G·H, I) = δgatesᵀ x
      gemm(Trans::Yes, Trans::No, GH, d.input, TB, T(1), dg_ih, GH, x.data_as<const T>(), d.input, T(0),
           grad_w_ih->data_as<T>(), d.input);
    if (grad_w_hh)  // (G·H, H) = δgatesᵀ h_prev, h_prev read from the reserve with leading dimension R
      gemm(Trans::Yes, Trans::No, GH, H, TB, T(1), dg_hh, GH, rsv + reserve_h_prev(d.cell, H), d.reserve(), T(0),
           grad_w_hh->data_as<T>(), H);
    if (grad_b_ih) column_sums(dg_ih, TB, GH, grad_b_ih->data_as<T>());
    if (grad_b_hh) column_sums(dg_hh, TB, GH, grad_b_hh->data_as<T>());
  });
}

}  // namespace replearn::rnn
