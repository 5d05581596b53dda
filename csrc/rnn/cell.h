// The per-element math of the recurrent cells, forward and backward, shared by cpu.cpp and cuda.cu.
//
// Each function handles element j of one batch row at one time step; the caller loops over j (a
// vectorized loop on the CPU, one thread per element on CUDA). Pointers are the row's slices:
//   pre   (G·H)  the input projection W_ih x_t of this row (the reserve's gate columns, overwritten
//                with the activated gates), hh W_hh h_{t−1} with gate g of unit j at hh[g·hs + j] (hs = H
//                on CUDA; on the CPU a thread's own gate-major block, cpu.cpp), bias (G·H) b_ih + b_hh folded
//                (for the GRU's n gate b_in only, b_hn in bias_hn), h_prev (H) the state entering the
//                step, h (H) where the new state goes (another buffer: other threads still read h_prev),
//                c (H) the LSTM's cell state, updated in place.
// Rows past their sequence's end take the *_inactive functions: state kept, output zero, zero gradients.
//
// Backward formulas (δ = ∂L/∂·, σ' = σ(1 − σ), tanh' = 1 − tanh²):
//   Elman  δa = δh · act'(a)
//   LSTM   δc_t += δh · o · tanh'(c_t);  δi = δc_t · g, δf = δc_t · c_{t−1}, δg = δc_t · i, δo = δh · tanh(c_t);
//          δc_{t−1} = δc_t · f
//   GRU    δn = δh (1 − z), δz = δh (h_{t−1} − n), δh_{t−1} ∋ δh · z;  δa_n = δn tanh'(n);
//          δ(W_in x) = δa_n, δ(W_hn h + b_hn) = δa_n · r, δr = δa_n (W_hn h + b_hn)
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "core/host_device.h"
#include "core/vmath.h"
#include "rnn/rnn.h"

namespace replearn::rnn::cell {

// Calls f(std::integral_constant<Cell, cell>{}): the cell becomes a template argument of the kernels.
template <class F>
inline void dispatch_cell(Cell cell, const F& f) {
  switch (cell) {
    case Cell::Tanh: return f(std::integral_constant<Cell, Cell::Tanh>{});
    case Cell::Relu: return f(std::integral_constant<Cell, Cell::Relu>{});
    case Cell::Lstm: return f(std::integral_constant<Cell, Cell::Lstm>{});
    case Cell::Gru: return f(std::integral_constant<Cell, Cell::Gru>{});
  }
}


// e^x and tanh. float on the host: core/vmath.h's saturating versions (Cephes' expf and tanhf,
// written so loops over them vectorize, with the argument clamped where σ and tanh have reached their
// float limits). Device and double: the math library.
REPLEARN_HD float exp_(float x) {
#if defined(__CUDA_ARCH__)
  return expf(x);
#else
  return vmath::exp_saturating(x);
#endif
}
REPLEARN_HD double exp_(double x) { return exp(x); }

template <class T>
REPLEARN_HD T sigmoid(T x) { return T(1) / (T(1) + exp_(-x)); }
REPLEARN_HD float tanh_(float x) {
#if defined(__CUDA_ARCH__)
  return tanhf(x);
#else
  return vmath::tanh_saturating(x);
#endif
}
REPLEARN_HD double tanh_(double x) { return tanh(x); }

// ---------------------------------------------------------------------------------- forward
// The LSTM's cell update for unit j: activates the gates in place in rsv (which holds W_ih x_t on entry),
// saves c_{t−1} (rsv[4H + j]), updates c and returns o ⊙ tanh(c_t) (h_t, or u_t before a projection).
template <class T>
REPLEARN_HD T lstm_cell_forward(int64_t j, int64_t H, int64_t hs, T* rsv, const T* hh, const T* bias, T* c) {
  const T i = sigmoid(rsv[j] + hh[j] + bias[j]);
  const T f = sigmoid(rsv[H + j] + hh[hs + j] + bias[H + j]);
  const T g = tanh_(rsv[2 * H + j] + hh[2 * hs + j] + bias[2 * H + j]);
  const T o = sigmoid(rsv[3 * H + j] + hh[3 * hs + j] + bias[3 * H + j]);
  const T c_prev = c[j];
  const T c_new = f * c_prev + i * g;
  rsv[j] = i, rsv[H + j] = f, rsv[2 * H + j] = g, rsv[3 * H + j] = o;
  rsv[4 * H + j] = c_prev;
  c[j] = c_new;
  return o * tanh_(c_new);
}

// rsv: the row's reserve (reserve_width columns); its first G·H columns hold W_ih x_t on entry.
template <Cell kind, class T>
REPLEARN_HD void forward_element(int64_t j, int64_t H, int64_t hs, T* rsv, const T* hh, const T* bias,
                                 const T* bias_hn, const T* h_prev_row, T* h, T* c, T* y) {
  const T h_prev = h_prev_row[j];
  T h_new;
  switch (kind) {  // a template argument: resolved at compile time
    case Cell::Tanh:
    case Cell::Relu: {
      const T a = rsv[j] + hh[j] + bias[j];
      h_new = kind == Cell::Tanh ? tanh_(a) : (a > T(0) ? a : T(0));
      rsv[j] = h_new;
      break;
    }
    case Cell::Lstm:
      h_new = lstm_cell_forward(j, H, hs, rsv, hh, bias, c);
      break;
    default: {  // Gru
      const T r = sigmoid(rsv[j] + hh[j] + bias[j]);
      const T z = sigmoid(rsv[H + j] + hh[hs + j] + bias[H + j]);
      const T hn = hh[2 * hs + j] + bias_hn[j];
      const T n = tanh_(rsv[2 * H + j] + bias[2 * H + j] + r * hn);
      h_new = (T(1) - z) * n + z * h_prev;
      rsv[j] = r, rsv[H + j] = z, rsv[2 * H + j] = n;
      rsv[3 * H + j] = hn;
      break;
    }
  }
  rsv[reserve_h_prev(kind, H) + j] = h_prev;
  h[j] = h_new;
  y[j] = h_new;
}

// A row past its end: state unchanged, output zero. Its reserve keeps h_prev (read by the dW_hh GEMM,
// where it meets zero gate gradients, so it must be finite), the input projection in the gate columns
// and zeros in the other saved columns (the reserve is an op output: no uninitialized memory in it).
template <Cell kind, class T>
REPLEARN_HD void forward_inactive_element(int64_t j, int64_t H, T* rsv, const T* h_prev, T* h, T* y) {
  for (int64_t k = gate_count(kind) * H; k < reserve_h_prev(kind, H); k += H) rsv[k + j] = T(0);
  rsv[reserve_h_prev(kind, H) + j] = h_prev[j];
  h[j] = h_prev[j];
  y[j] = T(0);
}

// --------------------------------------------------------------------------------- backward
// The LSTM's gate gradients for unit j given d = δ(o ⊙ tanh(c_t)) (δh_t, or δu_t with a projection):
// writes δ(pre-activations) into dg and turns dc from δc_t (later steps' part) into δc_{t−1}.
template <class T>
REPLEARN_HD void lstm_cell_backward(int64_t j, int64_t H, const T* rsv, T d, T* dc, T* dg) {
  const T i = rsv[j], f = rsv[H + j], g = rsv[2 * H + j], o = rsv[3 * H + j], c_prev = rsv[4 * H + j];
  const T tc = tanh_(f * c_prev + i * g);
  const T dct = dc[j] + d * o * (T(1) - tc * tc);
  dg[j] = dct * g * i * (T(1) - i);
  dg[H + j] = dct * c_prev * f * (T(1) - f);
  dg[2 * H + j] = dct * i * (T(1) - g * g);
  dg[3 * H + j] = d * tc * o * (T(1) - o);
  dc[j] = dct * f;
}

// dh: δh_t of this row (running), dy: δy_t; writes δ(pre-activations) for the input side (dg_ih) and
// the recurrent side (dg_hh; the same array except for the GRU), dh_next (δh_{t−1} before the
// W_hh term the caller adds) and updates dc in place.
template <Cell kind, class T>
REPLEARN_HD void backward_element(int64_t j, int64_t H, const T* rsv, const T* dy, const T* dh, T* dh_next,
                                  T* dc, T* dg_ih, T* dg_hh) {
  const T d = dh[j] + dy[j];
  switch (kind) {  // a template argument: resolved at compile time
    case Cell::Tanh: {
      const T a = rsv[j];
      dg_ih[j] = d * (T(1) - a * a);
      dh_next[j] = T(0);
      break;
    }
    case Cell::Relu: {
      dg_ih[j] = rsv[j] > T(0) ? d : T(0);
      dh_next[j] = T(0);
      break;
    }
    case Cell::Lstm:
      lstm_cell_backward(j, H, rsv, d, dc, dg_ih);
      dh_next[j] = T(0);
      break;
    default: {  // Gru
      const T r = rsv[j], z = rsv[H + j], n = rsv[2 * H + j], hn = rsv[3 * H + j], h_prev = rsv[4 * H + j];
      const T dan = d * (T(1) - z) * (T(1) - n * n);
      const T dr = dan * hn * r * (T(1) - r);
      const T dz = d * (h_prev - n) * z * (T(1) - z);
      dg_ih[j] = dg_hh[j] = dr;
      dg_ih[H + j] = dg_hh[H + j] = dz;
      dg_ih[2 * H + j] = dan;
      dg_hh[2 * H + j] = dan * r;
      dh_next[j] = d * z;
      break;
    }
  }
}

// A row past its end: no gate gradients, δh (and δc, untouched) pass through to the previous step.
template <Cell kind, class T>
REPLEARN_HD void backward_inactive_element(int64_t j, int64_t H, const T* dh, T* dh_next, T* dg_ih, T* dg_hh) {
  for (int64_t k = 0; k < gate_count(kind); ++k) {
    dg_ih[k * H + j] = T(0);
    dg_hh[k * H + j] = T(0);
  }
  dh_next[j] = dh[j];
}

// ------------------------------------------------------------------- LSTM with projection
// The per-element halves of a step with h_t = W_hr u_t (rnn.h): the unit half (j < H) runs the cell
// and leaves u_t in the reserve; the state half (p < P) runs after the projection GEMM wrote
// h_t (B, P) into h. Rows past their end: c and h carried, output zero, u and c_prev saved as zero.
template <class T>
REPLEARN_HD void proj_unit_forward(int64_t j, int64_t H, int64_t hs, bool active, T* rsv, const T* hh, const T* bias,
                                   T* c) {
  if (active) {
    rsv[5 * H + j] = lstm_cell_forward(j, H, hs, rsv, hh, bias, c);
  } else {
    rsv[4 * H + j] = T(0);
    rsv[5 * H + j] = T(0);
  }
}

// h: the GEMM's W_hr u_t on entry, the step's state on exit; rsv_h_prev: the reserve's h_{t−1} columns.
template <class T>
REPLEARN_HD void proj_state_forward(int64_t p, bool active, const T* h_prev, T* h, T* y, T* rsv_h_prev) {
  rsv_h_prev[p] = h_prev[p];
  if (!active) h[p] = h_prev[p];
  y[p] = active ? h[p] : T(0);
}

// State half of backward, before the units: dh holds δh_t's later-step part (the W_hh term included);
// δh_t = dh + δy_t is saved in dh_saved (a row of the all-steps δh for dW_hr, zero for a row past its
// end) and the carry into δh_{t−1} (before its W_hh term) goes to dh_next.
template <class T>
REPLEARN_HD void proj_state_backward(int64_t p, bool active, const T* dy, const T* dh, T* dh_next, T* dh_saved) {
  dh_saved[p] = active ? dh[p] + dy[p] : T(0);
  dh_next[p] = active ? T(0) : dh[p];
}

// Unit half: du = δu_t = δh_t W_hr (a GEMM wrote it), then the gate gradients; none past the end.
template <class T>
REPLEARN_HD void proj_unit_backward(int64_t j, int64_t H, bool active, const T* rsv, const T* du, T* dc, T* dg) {
  if (active) {
    lstm_cell_backward(j, H, rsv, du[j], dc, dg);
  } else {
    for (int64_t k = 0; k < 4; ++k) dg[k * H + j] = T(0);
  }
}

}  // namespace replearn::rnn::cell
