// Recurrent family: one layer and one direction of an Elman RNN, LSTM or GRU over a whole sequence.
//
//   rnn_tanh / rnn_relu   h_t = act(W_ih x_t + b_ih + W_hh h_{t−1} + b_hh)                (Elman 1990)
//   lstm    (i, f, g, o) = (σ, σ, tanh, σ)(W_ih x_t + b_ih + W_hh h_{t−1} + b_hh)        (Hochreiter &
//           c_t = f ⊙ c_{t−1} + i ⊙ g,   h_t = o ⊙ tanh(c_t)                             Schmidhuber 1997)
//   gru     (r, z) = σ(W_i{r,z} x_t + b_i{r,z} + W_h{r,z} h_{t−1} + b_h{r,z})               (Cho et al. 2014)
//           n = tanh(W_in x_t + b_in + r ⊙ (W_hn h_{t−1} + b_hn)),   h_t = (1 − z) ⊙ n + z ⊙ h_{t−1}
//
// Gate order inside W_ih (G·H, I), W_hh (G·H, H) and the biases is torch's (LSTM i, f, g, o; GRU r, z, n),
// so torch.nn.LSTM/GRU/RNN weights map one to one. G = 1 (Elman), 4 (LSTM), 3 (GRU).
//
// LSTM with projections (Sak, Senior & Beaufays 2014, "Long short-term memory recurrent neural network
// architectures for large scale acoustic modeling"; torch.nn.LSTM's proj_size): with W_hr (P, H) given,
//           u_t = o ⊙ tanh(c_t),   h_t = W_hr u_t
// so the state h and the outputs y have P features (the state width S = P), W_hh is (4H, P) and c stays
// (B, H). Per step the projection is a second GEMM (B, P) = u (B, H) × W_hrᵀ after the gates; backward
// adds δu_t = δh_t W_hr per step and dW_hr = Σ_t δh_tᵀ u_t as one GEMM over all steps at the end.
// Without W_hr, S = H.
//
// Forward: the input projection of every step is one GEMM, (T·B, I) × W_ihᵀ, written into the
// reserve; then per step one GEMM h_{t−1} W_hhᵀ (B, G·H) and one fused elementwise kernel for all gates.
// Backward (BPTT) in one call: per step (latest first) a fused gate-gradient kernel, then one GEMM
// dh_{t−1} += dgates_t W_hh; at the end dx = dgates W_ih, dW_ih = dgatesᵀ x and dW_hh = dgatesᵀ h_prev
// as one GEMM each over all steps, and the bias gradients as column sums.
//
// Conventions:
// - Time-major and contiguous: x (T, B, I), y (T, B, S); states h (B, S), c (B, H). Callers allocate everything
//   (ARCHITECTURE.md), including the reserve (T, B, reserve_width) that forward fills and backward reads:
//   the activated gates, the states entering each step (and for the GRU, W_hn h + b_hn), in x's
//   accumulation dtype (stats_dtype: float32 for float16/bfloat16 inputs, whose kernels compute in float32).
// - Dtypes: float32 and float64 on the CPU; float32, float16 and bfloat16 on CUDA (ARCHITECTURE.md §5).
// - Variable lengths: `lengths` (B) int64 on the kernels' device, 1 ≤ lengths[b] ≤ T (checked on the CPU;
//   on CUDA a value out of range is clamped, reading it back would synchronize). A sequence is active at
//   time t iff t < lengths[b]: outside, its state is carried unchanged and its output is zero, as with
//   torch's packed sequences. `reverse` runs from t = T − 1 down to 0, so each sequence's reverse pass
//   starts at its own last step, as in a bidirectional torch RNN.
// - Every backward gradient output is optional; grad_y, grad_h_n (and grad_c_n for the LSTM) are not.
// - A batch of 0 sequences (B = 0) is valid, as in torch: forward writes nothing (every output is
//   empty), backward zeroes the parameter gradients.
// - CPU: float32/float64. CUDA: float32 only (docs/design.md, "Recurrent family").
#pragma once

#include <cstdint>
#include <optional>

#include "core/tensor_view.h"

namespace replearn::rnn {

using OptView = std::optional<TensorView>;

enum class Cell : int { Tanh = 0, Relu = 1, Lstm = 2, Gru = 3 };

constexpr int64_t gate_count(Cell cell) { return cell == Cell::Lstm ? 4 : cell == Cell::Gru ? 3 : 1; }

// Columns of the reserve per (t, b): activated gates (G·H), then the cell's saved state columns.
//   Elman: [a | h_prev]   LSTM: [i f g o | c_prev | h_prev]   GRU: [r z n | W_hn h + b_hn | h_prev]
//   LSTM with projection: [i f g o | c_prev | u | h_prev (P)]  (LayerDims::reserve()).
// The two-argument forms below are the layouts without projection.
constexpr int64_t reserve_width(Cell cell, int64_t hidden) {
  switch (cell) {
    case Cell::Lstm: return 6 * hidden;
    case Cell::Gru: return 5 * hidden;
    default: return 2 * hidden;
  }
}
// Column where h_prev starts (the last H columns).
constexpr int64_t reserve_h_prev(Cell cell, int64_t hidden) { return reserve_width(cell, hidden) - hidden; }

struct LayerDims {
  Cell cell;
  int64_t steps, batch, input, hidden;
  int64_t proj = 0;  // P of an LSTM with projection (W_hr given), 0 without
  int64_t gates() const { return gate_count(cell) * hidden; }
  int64_t state() const { return proj > 0 ? proj : hidden; }  // S: features of h and y
  int64_t reserve() const { return proj > 0 ? 6 * hidden + proj : reserve_width(cell, hidden); }
  int64_t reserve_h_prev() const { return reserve() - state(); }
  int64_t reserve_u() const { return 5 * hidden; }  // the LSTM-with-projection's u_t columns
};

// Validation shared by both devices: throws replearn::Error naming the argument, or returns the dims.
LayerDims check_forward(DeviceType device, int cell, const TensorView& x, const TensorView& h0, const OptView& c0,
                        const TensorView& w_ih, const TensorView& w_hh, const OptView& w_hr, const OptView& b_ih,
                        const OptView& b_hh,
                        const OptView& lengths, const TensorView& y, const TensorView& h_n, const OptView& c_n,
                        const TensorView& reserve, const OptView& workspace);
LayerDims check_backward(DeviceType device, int cell, const TensorView& grad_y, const TensorView& grad_h_n,
                         const OptView& grad_c_n, const TensorView& x, const TensorView& w_ih, const TensorView& w_hh,
                         const OptView& w_hr, const OptView& lengths, const TensorView& reserve,
                         const OptView& grad_x, const OptView& grad_h0, const OptView& grad_c0,
                         const OptView& grad_w_ih, const OptView& grad_w_hh, const OptView& grad_w_hr,
                         const OptView& grad_b_ih, const OptView& grad_b_hh, const OptView& workspace);
// The geometry the workspace-size queries need (shapes only; the entry points validate fully).
LayerDims workspace_query_dims(int cell, const TensorView& x, const TensorView& w_hh, const OptView& w_hr);

// Scratch sizes in bytes, in elements of x's accumulation dtype (stats_dtype: float64 for float64,
// float32 otherwise). Forward: one step's W_hh h (B, G·H), the folded biases, a second state buffer
// (B, S); on the CPU W_hh regrouped by thread (G·H, S) and packed (cpu_panel_elements); on CUDA the
// running states (B, S) and (B, H) and, for float16/bfloat16, y (T, B, S) in float32 (the cells
// compute in float32). Backward: the gate gradients of every step and the running δh (B, S) ×2,
// δc (B, H); with projection also δh of every step (T, B, P), for dW_hr, and one step's δu (B, H);
// on the CPU without projection, W_hh's columns packed by thread; on CUDA for float16/bfloat16
// grad_y in float32 (T, B, S).
// Elements of the CPU workspaces' packed-W_hh panels (cpu.cpp; blas::pack_b), alignment slack included.
int64_t cpu_panel_elements(const LayerDims& d, int64_t element_size, bool backward);
int64_t forward_workspace_bytes(const LayerDims& d, DType dtype, DeviceType device);
int64_t backward_workspace_bytes(const LayerDims& d, DType dtype, DeviceType device);

// Entry points; cpu.cpp defines the DeviceType::CPU specializations, cuda.cu the DeviceType::CUDA ones.
// w_hr (P, H): the LSTM's projection, or none; grad_w_hr is optional and needs w_hr.
template <DeviceType D>
int64_t rnn_forward_workspace_size(int cell, const TensorView& x, const TensorView& w_hh, const OptView& w_hr);
template <DeviceType D>
void rnn_forward(int cell, const TensorView& x, const TensorView& h0, const OptView& c0, const TensorView& w_ih,
                 const TensorView& w_hh, const OptView& w_hr, const OptView& b_ih, const OptView& b_hh,
                 const OptView& lengths, bool reverse, const TensorView& y, const TensorView& h_n, const OptView& c_n,
                 const TensorView& reserve, const OptView& workspace, std::uintptr_t stream = 0);
template <DeviceType D>
int64_t rnn_backward_workspace_size(int cell, const TensorView& x, const TensorView& w_hh, const OptView& w_hr);
template <DeviceType D>
void rnn_backward(int cell, const TensorView& grad_y, const TensorView& grad_h_n, const OptView& grad_c_n,
                  const TensorView& x, const TensorView& w_ih, const TensorView& w_hh, const OptView& w_hr,
                  const OptView& lengths, bool reverse, const TensorView& reserve, const OptView& grad_x,
                  const OptView& grad_h0, const OptView& grad_c0, const OptView& grad_w_ih, const OptView& grad_w_hh,
                  const OptView& grad_w_hr, const OptView& grad_b_ih, const OptView& grad_b_hh,
                  const OptView& workspace, std::uintptr_t stream = 0);

}  // namespace replearn::rnn
