// CPU kernels of the recurrent family (rnn.h): core/gemm.h's GEMMs for every product with a weight,
// W_hh packed once per call for the per-step products (blas::pack_b), and per step one fused
// elementwise pass (cell.h).
//
// Threads. Time is the one sequential dimension; each step splits the hidden units across threads
// in one parallel region (parallel_for_gemm: single-threaded OpenBLAS inside), and each thread does
// its units' share of the step's GEMM and then their gates. One pool per step, not an OpenBLAS
// pool for the GEMM and an OpenMP one for the gates taking turns: on a loaded 2-core machine the
// idle pool's spinning threads made the alternation 30× slower than one thread (measured). A unit's
// gates need only its own columns of W_hh h (forward) and of δh (backward), so no barrier is needed
// between a thread's GEMM and its gates; the step's other threads read the previous state buffer
// (double-buffered) or the previous step's gate gradients, complete when the region opened.
// The all-steps GEMMs (input projection, dx, dW_ih, dW_hh) split their rows on the same pool.
#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "core/dispatch.h"
#include "core/gemm.h"
#include "core/memory.h"
#include "core/parallel.h"
#include "core/vmath.h"
#include "rnn/cell.h"
#include "rnn/rnn.h"

namespace replearn::rnn {

namespace {

using blas::gemm;
using blas::Trans;

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

// C = op(A) op(B) with C's rows split across the OpenMP threads (single-threaded GEMMs in each), op(B)
// packed once into `panels` for all of them (blas::pack_b; all_steps_panel_elements sizes the buffer):
// the all-steps products stay on the same pool as the step loop (see the top of this file).
template <class T>
void gemm_by_rows(Trans trans_a, Trans trans_b, int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b,
                  int64_t ldb, T* c, int64_t ldc, T* panels) {
  const blas::PackedB<T> packed = blas::pack_b(trans_b, k, n, b, ldb, m, panels);
  const int64_t grain = std::max<int64_t>(16, (int64_t{1} << 20) / std::max<int64_t>(1, 2 * n * k));
  blas::parallel_for_gemm(m, grain, [&](int, int64_t m0, int64_t m1) {
    const T* a_rows = trans_a == Trans::Yes ? a + m0 : a + m0 * lda;
    blas::gemm_packed_b(trans_a, m1 - m0, T(1), a_rows, lda, packed, T(0), c + m0 * ldc, ldc);
  });
}

// Elements of gemm_by_rows' panels for the call's all-steps products (backward: the largest of dx's
// op(B) = W_ih, dW_ih's x, dW_hh's h_{t−1} and dW_hr's u, packed one after the other into one buffer).
template <class T>
int64_t all_steps_panel_elements(const LayerDims& d, bool backward) {
  const int64_t TB = d.steps * d.batch, GH = d.gates();
  if (!backward) return blas::packed_b_size<T>(d.input, GH, TB);
  int64_t most = std::max({blas::packed_b_size<T>(GH, d.input, TB), blas::packed_b_size<T>(TB, d.input, GH),
                           blas::packed_b_size<T>(TB, d.state(), GH),
                           blas::packed_b_size<T>(TB, d.state() + d.input, GH)});
  if (d.proj > 0) most = std::max(most, blas::packed_b_size<T>(TB, d.hidden, d.proj));
  return most;
}

// Hidden units per thread: enough that a thread's share of a step (B·G·2H flops per unit) outweighs
// a region's start-up, about 256 kflop.
int64_t unit_grain(const LayerDims& d) {
  return std::max<int64_t>(8, (int64_t{1} << 18) / std::max<int64_t>(1, d.batch * d.gates() * 2 * d.hidden));
}

// The step regions split the units into `chunks` ranges [j0, j1) = [H·c/chunks, H·(c+1)/chunks)
// (parallel_for's split), and each chunk's W_hh operand is packed once per call (blas::pack_b: the
// GEMM's panel layout, reused by every step instead of repacked by each step's GEMM).
//
// Forward: W_hh (G·H, K) is first regrouped so that chunk c's rows are contiguous and gate-major:
// regrouped row G·j0 + g·n + (j − j0) = W_hh row g·H + j (n = j1 − j0). A thread's gate columns of
// h_{t−1} W_hhᵀ are then one GEMM per step (not G) with op(B) = those rows transposed (K, G·n),
// written as one block of hh, hh[b·G·H + G·j0 + g·n + j − j0]: the cell functions read it with gate
// stride n (cell.h). Backward: op(B) = W_hh[:, j0:j1] (G·H, n), for δh[:, j0:j1] += δgates W_hh[:, j0:j1].
struct UnitChunks {
  int count;
  explicit UnitChunks(const LayerDims& d) : count(parallel_chunk_count(d.hidden, unit_grain(d))) {}
  int64_t begin(const LayerDims& d, int c) const { return d.hidden * c / count; }
};

// Where each chunk's packed W_hh starts in the panel buffer (count + 1 entries; the last is the total).
template <class T>
std::vector<int64_t> panel_offsets(const LayerDims& d, const UnitChunks& chunks, bool backward) {
  const int64_t G = gate_count(d.cell);
  std::vector<int64_t> offsets(chunks.count + 1, 0);
  for (int c = 0; c < chunks.count; ++c) {
    const int64_t n = chunks.begin(d, c + 1) - chunks.begin(d, c);
    offsets[c + 1] = offsets[c] + (backward ? blas::packed_b_size<T>(d.gates(), n, d.batch)
                                            : blas::packed_b_size<T>(d.state(), G * n, d.batch));
  }
  return offsets;
}

// The panel buffer inside a workspace: 64-byte aligned (the packed layout's loads are), so the
// workspace holds kPanelSlack elements more than the panels.
constexpr int64_t kPanelSlack = 64;
template <class T>
T* align_panels(T* p) {
  return reinterpret_cast<T*>((reinterpret_cast<std::uintptr_t>(p) + 63) / 64 * 64);
}

// Forward: regroups each chunk's rows of W_hh into `regrouped` (G·H, K) and packs them; each thread
// handles its own chunk (the same split as the steps').
template <class T>
std::vector<blas::PackedB<T>> pack_forward_weights(const LayerDims& d, const UnitChunks& chunks, const T* w_hh,
                                                   T* regrouped, T* panels) {
  const int64_t G = gate_count(d.cell), H = d.hidden, K = d.state();
  const std::vector<int64_t> offsets = panel_offsets<T>(d, chunks, false);
  std::vector<blas::PackedB<T>> packed(chunks.count);
  parallel_for(H, unit_grain(d), [&](int c, int64_t j0, int64_t j1) {
    for (int64_t g = 0; g < G; ++g)
      for (int64_t j = j0; j < j1; ++j)
        std::memcpy(regrouped + (G * j0 + g * (j1 - j0) + j - j0) * K, w_hh + (g * H + j) * K, K * sizeof(T));
    packed[c] = blas::pack_b(Trans::Yes, K, G * (j1 - j0), regrouped + G * j0 * K, K, d.batch, panels + offsets[c]);
  }, chunks.count);
  return packed;
}

// Backward: packs W_hh[:, j0:j1] of each chunk.
template <class T>
std::vector<blas::PackedB<T>> pack_backward_weights(const LayerDims& d, const UnitChunks& chunks, const T* w_hh,
                                                    T* panels) {
  const std::vector<int64_t> offsets = panel_offsets<T>(d, chunks, true);
  std::vector<blas::PackedB<T>> packed(chunks.count);
  parallel_for(d.hidden, unit_grain(d), [&](int c, int64_t j0, int64_t j1) {
    packed[c] = blas::pack_b(Trans::No, d.gates(), j1 - j0, w_hh + j0, d.hidden, d.batch, panels + offsets[c]);
  }, chunks.count);
  return packed;
}

// hh (B, G·n) = h_{t−1} (B, K) × chunk c's packed W_hh rows; returns the pointer through which row
// b's gate g of unit j is hh_rows[b·G·H + g·n + j].
template <class T>
const T* chunk_recurrent_product(const LayerDims& d, int64_t j0, const T* h_prev, const blas::PackedB<T>& w_chunk,
                                 T* hh) {
  const int64_t G = gate_count(d.cell);
  blas::gemm_packed_b(Trans::No, d.batch, T(1), h_prev, d.state(), w_chunk, T(0), hh + G * j0, d.gates());
  return hh + G * j0 - j0;
}

#if defined(__AVX512F__)
// forward_element<Cell::Lstm> (cell.h) over units [j0, j1) of one float row, 16 at a time, with
// vmath's 16-lane σ and tanh: about half the instructions of the auto-vectorized element loop, whose
// scalar activations compile to compares, selects and mask operations. One thread's cell pass at the
// bench shape 2.22 → 1.27 ms, closer to a float64 cell than the element loop (docs/design.md,
// "The LSTM's forward cell in AVX-512 intrinsics").
void lstm_row_forward(int64_t H, int64_t hs, int64_t j0, int64_t j1, float* rsv, const float* hh, const float* bias,
                      const float* h_prev, float* h, float* c, float* y) {
  // Units [j, j + 16) whole, or the first `tail` of them, masked: only the last group takes masked
  // loads and stores, which made the forward slower than the element loop when every group did.
  auto group = [&](int64_t j, auto whole, int64_t tail) {
    const __mmask16 mask = static_cast<__mmask16>((1u << tail) - 1);
    auto load = [&](const float* p) { return whole ? _mm512_loadu_ps(p + j) : _mm512_maskz_loadu_ps(mask, p + j); };
    auto store = [&](float* p, __m512 v) {
      if (whole) _mm512_storeu_ps(p + j, v);
      else _mm512_mask_storeu_ps(p + j, mask, v);
    };
    const __m512 i = vmath::sigmoid(load(rsv) + load(hh) + load(bias));
    const __m512 f = vmath::sigmoid(load(rsv + H) + load(hh + hs) + load(bias + H));
    const __m512 g = vmath::tanh_via_sigmoid(load(rsv + 2 * H) + load(hh + 2 * hs) + load(bias + 2 * H));
    const __m512 o = vmath::sigmoid(load(rsv + 3 * H) + load(hh + 3 * hs) + load(bias + 3 * H));
    const __m512 c_prev = load(c);
    const __m512 c_new = f * c_prev + i * g;
    store(rsv, i);
    store(rsv + H, f);
    store(rsv + 2 * H, g);
    store(rsv + 3 * H, o);
    store(rsv + 4 * H, c_prev);
    store(rsv + reserve_h_prev(Cell::Lstm, H), load(h_prev));
    store(c, c_new);
    const __m512 h_new = o * vmath::tanh_via_sigmoid(c_new);
    store(h, h_new);
    store(y, h_new);
  };
  int64_t j = j0;
  for (; j + 16 <= j1; j += 16) group(j, std::true_type{}, 16);
  if (j < j1) group(j, std::false_type{}, j1 - j);
}
#endif

// One row's cell update at step t for units [j0, j1): hh_b holds the row's W_hh h_{t−1} with gate
// stride hs; hp, hn the row's states entering and leaving the step. Both step splits call it.
template <Cell kind, class T>
void forward_row(const LayerDims& d, int64_t t, int64_t b, int64_t j0, int64_t j1, int64_t hs, const int64_t* lengths,
                 const T* hh_b, const T* bias, const T* bias_hn, const T* hp, T* hn, T* c, T* reserve, T* y) {
  const int64_t H = d.hidden, row = t * d.batch + b;
  T* rsv = reserve + row * d.reserve();
  T* c_b = c ? c + b * H : nullptr;
  T* y_b = y + row * H;
  if (is_active(lengths, b, t)) {
#if defined(__AVX512F__)
    if constexpr (kind == Cell::Lstm && std::is_same_v<T, float>) {
      lstm_row_forward(H, hs, j0, j1, rsv, hh_b, bias, hp, hn, c_b, y_b);
      return;
    }
#endif
#pragma omp simd
    for (int64_t j = j0; j < j1; ++j) cell::forward_element<kind>(j, H, hs, rsv, hh_b, bias, bias_hn, hp, hn, c_b, y_b);
  } else {
    for (int64_t j = j0; j < j1; ++j) cell::forward_inactive_element<kind>(j, H, rsv, hp, hn, y_b);
  }
}

// One row's gate gradients at step t for units [j0, j1), from its complete δh_t (dh_b); writes the
// direct part of δh_{t−1} (dh_next_b) and the row's δgates. Both step splits call it.
template <Cell kind, class T>
void backward_row(const LayerDims& d, int64_t t, int64_t b, int64_t j0, int64_t j1, const int64_t* lengths,
                  const T* reserve, const T* grad_y, const T* dh_b, T* dh_next_b, T* dc, T* dg_ih, T* dg_hh) {
  const int64_t H = d.hidden, GH = d.gates(), row = t * d.batch + b;
  T* dc_b = dc ? dc + b * H : nullptr;
  T* dg_ih_b = dg_ih + row * GH;
  T* dg_hh_b = dg_hh + row * GH;
  if (is_active(lengths, b, t)) {
    const T* rsv = reserve + row * d.reserve();
    const T* dy = grad_y + row * H;
#pragma omp simd
    for (int64_t j = j0; j < j1; ++j) cell::backward_element<kind>(j, H, rsv, dy, dh_b, dh_next_b, dc_b, dg_ih_b, dg_hh_b);
  } else {
    for (int64_t j = j0; j < j1; ++j) cell::backward_inactive_element<kind>(j, H, dh_b, dh_next_b, dg_ih_b, dg_hh_b);
  }
}

// Returns the buffer holding the final state (h or h_spare: they alternate every step).
template <Cell kind, class T>
T* forward_steps(const LayerDims& d, const std::vector<blas::PackedB<T>>& w_chunks, const int64_t* lengths,
                 bool reverse, const T* bias, const T* bias_hn, T* y, T* h, T* h_spare, T* c, T* reserve, T* hh) {
  const int64_t B = d.batch, H = d.hidden, GH = d.gates();
  const UnitChunks chunks(d);
  for (int64_t s = 0; s < d.steps; ++s) {
    const int64_t t = reverse ? d.steps - 1 - s : s;
    const T* h_prev = h;
    T* h_next = h_spare;
    blas::parallel_for_gemm(H, unit_grain(d), [&](int chunk, int64_t j0, int64_t j1) {
      const T* hh_rows = chunk_recurrent_product(d, j0, h_prev, w_chunks[chunk], hh);
      for (int64_t b = 0; b < B; ++b)
        forward_row<kind>(d, t, b, j0, j1, j1 - j0, lengths, hh_rows + b * GH, bias, bias_hn, h_prev + b * H,
                          h_next + b * H, c, reserve, y);
    }, chunks.count);
    std::swap(h, h_spare);
  }
  return h;
}

// db[g·H + j] += Σ_b δgates[b, g·H + j] for the units [j0, j1) of one step's rows (B, G·H).
template <class T>
void add_bias_gradient(const LayerDims& d, int64_t j0, int64_t j1, const T* dg_rows, T* db) {
  const int64_t G = gate_count(d.cell), H = d.hidden, GH = d.gates();
  for (int64_t b = 0; b < d.batch; ++b)
    for (int64_t g = 0; g < G; ++g) {
      const T* row = dg_rows + b * GH + g * H;
      T* out = db + g * H;
#pragma omp simd
      for (int64_t j = j0; j < j1; ++j) out[j] += row[j];
    }
}

// Returns where the final δh_0 is (the two δh buffers swap roles every step).
//
// Region of step t, per thread and its units [j0, j1): first finish δh_t for those units by adding
// δgates_{t+1} W_hh[:, j0:j1] (the previous region wrote every unit's δgates_{t+1}, and this thread's
// direct terms), then the gate gradients of step t for those units, and their sums over the batch
// into the bias gradients db_ih, db_hh when given (zeroed by the caller; each thread owns its units'
// columns, so the sums need no second pass over all steps' δgates). One last region adds the W_hh
// term of step 0's gates into δh_0.
template <Cell kind, class T>
T* backward_steps(const LayerDims& d, const std::vector<blas::PackedB<T>>& w_columns, const int64_t* lengths,
                  bool reverse, const T* reserve, const T* grad_y, T* dh, T* dh_next, T* dc, T* dg_ih, T* dg_hh,
                  T* db_ih, T* db_hh) {
  const int64_t B = d.batch, H = d.hidden, GH = d.gates();
  const T* dg_hh_later = nullptr;  // δgates of the step processed before (t + 1 forward, t − 1 reverse)
  const int chunks = static_cast<int>(w_columns.size());
  for (int64_t s = d.steps; s >= 0; --s) {
    const bool gates = s > 0;
    const int64_t t = reverse ? d.steps - s : s - 1;
    blas::parallel_for_gemm(H, unit_grain(d), [&](int chunk, int64_t j0, int64_t j1) {
      if (dg_hh_later)  // δh[:, j0:j1] += δgates_later (B, G·H) × W_hh[:, j0:j1]
        blas::gemm_packed_b(Trans::No, B, T(1), dg_hh_later, GH, w_columns[chunk], T(1), dh + j0, H);
      if (!gates) return;
      for (int64_t b = 0; b < B; ++b)
        backward_row<kind>(d, t, b, j0, j1, lengths, reserve, grad_y, dh + b * H, dh_next + b * H, dc, dg_ih, dg_hh);
      if (db_ih) add_bias_gradient(d, j0, j1, dg_ih + t * B * GH, db_ih);
      if (db_hh) add_bias_gradient(d, j0, j1, dg_hh + t * B * GH, db_hh);
    }, chunks);
    if (!gates) break;
    dg_hh_later = dg_hh + t * B * GH;
    std::swap(dh, dh_next);
  }
  return dh;
}

// dW_hh and dW_ih as one product when both cells' sides share δgates (every cell but the GRU):
// (G·H, S + I) = δgatesᵀ [h_{t−1} | x] reads δgates (T·B, G·H) once instead of twice. Its buffers,
// after the panels: [h_{t−1} | x] (T·B, S + I) and the product (G·H, S + I), split into the outputs.
int64_t fused_weight_gradient_elements(const LayerDims& d) {
  return d.cell == Cell::Gru ? 0 : (d.steps * d.batch + d.gates()) * (d.state() + d.input);
}

template <class T>
void fused_weight_gradients(const LayerDims& d, const T* dg, const T* x, const T* reserve, T* b_cat, T* c_cat,
                            T* grad_w_ih, T* grad_w_hh, T* panels) {
  const int64_t TB = d.steps * d.batch, S = d.state(), I = d.input, SI = S + I, R = d.reserve();
  parallel_for(TB, 256, [&](int, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      std::memcpy(b_cat + r * SI, reserve + r * R + d.reserve_h_prev(), S * sizeof(T));
      std::memcpy(b_cat + r * SI + S, x + r * I, I * sizeof(T));
    }
  });
  gemm_by_rows(Trans::Yes, Trans::No, d.gates(), SI, TB, dg, d.gates(), b_cat, SI, c_cat, SI, panels);
  parallel_for(d.gates(), 64, [&](int, int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      std::memcpy(grad_w_hh + g * S, c_cat + g * SI, S * sizeof(T));
      std::memcpy(grad_w_ih + g * I, c_cat + g * SI + S, I * sizeof(T));
    }
  });
}

// ------------------------------------------------------------------ steps split by batch rows
// The rows of a batch are independent sequences: when every thread can take at least kMinRows of
// them, each runs its rows through all the steps on its own — no region per step, no barrier, no
// thread reading what another wrote — with the whole W_hh packed once and shared read-only. Per
// step a thread multiplies its rows by all of W_hh (m = rows) instead of all rows by its units'
// share (m = B): the same flops, and one thread's A operand is its own rows, packed once instead of
// once by every thread. Measured on one thread (/tmp bench, packed B, T 128): the forward's product
// 238–243 GFLOP/s at m 16, n 2048, k 512 against 232–233 at m 32, n 1024; the backward's 220–225
// at m 16, n 512, k 2048 against 200–205 at m 32, n 256. Smaller batches (per thread) keep the
// unit split above, whose tiles would otherwise run mostly empty. Not for the projected LSTM.
constexpr int64_t kMinRows = 16;

bool splits_rows(const LayerDims& d) {
  return d.proj == 0 && d.batch >= kMinRows * num_threads();
}

// Rows per thread in that split (the packing's tile-shape hint).
int64_t rows_per_thread(const LayerDims& d) {
  const int chunks = parallel_chunk_count(d.batch, kMinRows);
  return (d.batch + chunks - 1) / chunks;
}

// The forward over rows [b0, b1) of every step; hh: those rows of one step's W_hh h (natural gate
// order: gate g of unit j at g·H + j). Leaves the final states where T swaps of h and h_spare put
// them (all threads swap alike; the caller picks the buffer).
template <Cell kind, class T>
void forward_rows(const LayerDims& d, const blas::PackedB<T>& w, const int64_t* lengths, bool reverse, const T* bias,
                  const T* bias_hn, int64_t b0, int64_t b1, T* y, T* h, T* h_spare, T* c, T* reserve, T* hh) {
  const int64_t H = d.hidden, S = d.state(), GH = d.gates();
  T* h_now = h + b0 * S;
  T* h_next = h_spare + b0 * S;
  for (int64_t s = 0; s < d.steps; ++s) {
    const int64_t t = reverse ? d.steps - 1 - s : s;
    blas::gemm_packed_b(Trans::No, b1 - b0, T(1), h_now, S, w, T(0), hh + b0 * GH, GH);
    for (int64_t b = b0; b < b1; ++b)
      forward_row<kind>(d, t, b, 0, H, H, lengths, hh + b * GH, bias, bias_hn, h_now + (b - b0) * S,
                        h_next + (b - b0) * S, c, reserve, y);
    std::swap(h_now, h_next);
  }
}

// BPTT over rows [b0, b1): per step, δh_t of those rows += δgates_{t+1} W_hh (their rows of
// δgates, written by this thread the step before), then their gate gradients of step t and their
// sums into this thread's bias partials db_ih, db_hh (G·H each, zeroed here, when given). As
// backward_steps, the last pass adds step 0's W_hh term into δh_0; the caller finds it after T swaps.
template <Cell kind, class T>
void backward_rows(const LayerDims& d, const blas::PackedB<T>& w, const int64_t* lengths, bool reverse,
                   const T* reserve, const T* grad_y, int64_t b0, int64_t b1, T* dh, T* dh_next, T* dc, T* dg_ih,
                   T* dg_hh, T* db_ih, T* db_hh) {
  const int64_t B = d.batch, H = d.hidden, GH = d.gates();
  T* dh_now = dh + b0 * H;
  T* dh_then = dh_next + b0 * H;
  if (db_ih) std::fill(db_ih, db_ih + GH, T(0));
  if (db_hh) std::fill(db_hh, db_hh + GH, T(0));
  const T* dg_later = nullptr;  // this thread's rows of the δgates of the step processed before
  for (int64_t s = d.steps; s >= 0; --s) {
    if (dg_later) blas::gemm_packed_b(Trans::No, b1 - b0, T(1), dg_later, GH, w, T(1), dh_now, H);
    if (s == 0) break;
    const int64_t t = reverse ? d.steps - s : s - 1;
    for (int64_t b = b0; b < b1; ++b) {
      backward_row<kind>(d, t, b, 0, H, lengths, reserve, grad_y, dh_now + (b - b0) * H, dh_then + (b - b0) * H, dc,
                         dg_ih, dg_hh);
      const int64_t row = t * B + b;
      if (db_ih) {
#pragma omp simd
        for (int64_t k = 0; k < GH; ++k) db_ih[k] += dg_ih[row * GH + k];
      }
      if (db_hh) {
#pragma omp simd
        for (int64_t k = 0; k < GH; ++k) db_hh[k] += dg_hh[row * GH + k];
      }
    }
    dg_later = dg_hh + (t * B + b0) * GH;
    std::swap(dh_now, dh_then);
  }
}

// Projected state columns per thread: a column's share of the W_hr product is 2·B·H flops.
int64_t state_grain(const LayerDims& d) {
  return std::max<int64_t>(8, (int64_t{1} << 18) / std::max<int64_t>(1, 2 * d.batch * d.hidden));
}

// The LSTM with projection (rnn.h): per step one region over the units (their gate columns of
// h_{t−1} W_hhᵀ, then their cell update, leaving u_t in the reserve) and one over the P state columns
// (their columns of h_t = u_t W_hrᵀ, which needs every unit's u_t: hence the second region). Returns
// the buffer holding the final state.
template <class T>
T* forward_steps_projected(const LayerDims& d, const std::vector<blas::PackedB<T>>& w_chunks, const T* w_hr,
                           const int64_t* lengths, bool reverse, const T* bias, T* y, T* h, T* h_spare, T* c, T* reserve, T* hh) {
  const int64_t B = d.batch, H = d.hidden, P = d.proj, GH = d.gates(), R = d.reserve();
  const UnitChunks chunks(d);
  for (int64_t s = 0; s < d.steps; ++s) {
    const int64_t t = reverse ? d.steps - 1 - s : s;
    const T* h_prev = h;
    T* h_next = h_spare;
    T* rsv_t = reserve + t * B * R;
    blas::parallel_for_gemm(H, unit_grain(d), [&](int chunk, int64_t j0, int64_t j1) {
      const T* hh_rows = chunk_recurrent_product(d, j0, h_prev, w_chunks[chunk], hh);
      for (int64_t b = 0; b < B; ++b) {
        const bool active = is_active(lengths, b, t);
        T* rsv = rsv_t + b * R;
        const T* hh_b = hh_rows + b * GH;
        T* c_b = c + b * H;
#pragma omp simd
        for (int64_t j = j0; j < j1; ++j) cell::proj_unit_forward(j, H, j1 - j0, active, rsv, hh_b, bias, c_b);
      }
    }, chunks.count);
    blas::parallel_for_gemm(P, state_grain(d), [&](int, int64_t p0, int64_t p1) {
      // h_t[:, p0:p1] = u_t (B, H), read from the reserve with leading dimension R, × W_hr[p0:p1]ᵀ
      gemm(Trans::No, Trans::Yes, B, p1 - p0, H, T(1), rsv_t + d.reserve_u(), R, w_hr + p0 * H, H, T(0),
           h_next + p0, P);
      for (int64_t b = 0; b < B; ++b) {
        const bool active = is_active(lengths, b, t);
        const T* hp = h_prev + b * P;
        T* hn = h_next + b * P;
        T* y_b = y + (t * B + b) * P;
        T* saved = rsv_t + b * R + d.reserve_h_prev();
#pragma omp simd
        for (int64_t p = p0; p < p1; ++p) cell::proj_state_forward(p, active, hp, hn, y_b, saved);
      }
    });
    std::swap(h, h_spare);
  }
  return h;
}

// BPTT of the LSTM with projection. Region over the state columns: finish δh_t with the W_hh term of
// the later step's gates, save δh_t + δy_t (dh_all, for dW_hr) and carry what passes a row past its end;
// region over the units: δu_t = δh_t W_hr for their columns, then their gate gradients. A last state
// region adds step 0's W_hh term into δh_0. Returns where δh_0 is.
template <class T>
T* backward_steps_projected(const LayerDims& d, const T* w_hh, const T* w_hr, const int64_t* lengths, bool reverse,
                            const T* reserve, const T* grad_y, T* dh, T* dh_next, T* dc, T* dg, T* dh_all, T* du) {
  const int64_t B = d.batch, H = d.hidden, P = d.proj, GH = d.gates(), R = d.reserve();
  const T* dg_later = nullptr;
  for (int64_t s = d.steps; s >= 0; --s) {
    const bool gates = s > 0;
    const int64_t t = reverse ? d.steps - s : s - 1;
    blas::parallel_for_gemm(P, state_grain(d), [&](int, int64_t p0, int64_t p1) {
      if (dg_later)  // δh[:, p0:p1] += δgates_later (B, 4H) × W_hh[:, p0:p1]
        gemm(Trans::No, Trans::No, B, p1 - p0, GH, T(1), dg_later, GH, w_hh + p0, P, T(1), dh + p0, P);
      if (!gates) return;
      for (int64_t b = 0; b < B; ++b) {
        const int64_t row = t * B + b;
        const bool active = is_active(lengths, b, t);
        const T* dy = grad_y + row * P;
        const T* dh_b = dh + b * P;
        T* dh_next_b = dh_next + b * P;
        T* saved = dh_all + row * P;
#pragma omp simd
        for (int64_t p = p0; p < p1; ++p) cell::proj_state_backward(p, active, dy, dh_b, dh_next_b, saved);
      }
    });
    if (!gates) break;
    const T* dh_t = dh_all + t * B * P;
    blas::parallel_for_gemm(H, unit_grain(d), [&](int, int64_t j0, int64_t j1) {
      // δu[:, j0:j1] = δh_t (B, P) × W_hr[:, j0:j1]
      gemm(Trans::No, Trans::No, B, j1 - j0, P, T(1), dh_t, P, w_hr + j0, H, T(0), du + j0, H);
      for (int64_t b = 0; b < B; ++b) {
        const int64_t row = t * B + b;
        const bool active = is_active(lengths, b, t);
        const T* rsv = reserve + row * R;
        const T* du_b = du + b * H;
        T* dc_b = dc + b * H;
        T* dg_b = dg + row * GH;
#pragma omp simd
        for (int64_t j = j0; j < j1; ++j) cell::proj_unit_backward(j, H, active, rsv, du_b, dc_b, dg_b);
      }
    });
    dg_later = dg + t * B * GH;
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

// The packed W_hh of the step loops: one for the whole matrix when the steps split the batch rows
// (forward: op(B) = W_hhᵀ (S, G·H); backward: W_hh (G·H, H)), else one per unit chunk; none for the
// projected backward, which splits the state columns instead.
template <class T>
int64_t recurrent_panel_elements(const LayerDims& d, bool backward) {
  if (backward && d.proj > 0) return 0;
  if (splits_rows(d))
    return backward ? blas::packed_b_size<T>(d.gates(), d.hidden, rows_per_thread(d))
                    : blas::packed_b_size<T>(d.state(), d.gates(), rows_per_thread(d));
  return panel_offsets<T>(d, UnitChunks(d), backward).back();
}

// Each thread's bias-gradient partials when the backward steps split the batch rows (two per thread:
// the GRU's δgates differ between its sides).
int64_t bias_partial_elements(const LayerDims& d) { return splits_rows(d) ? 2 * num_threads() * d.gates() : 0; }

// Two aligned buffers: the recurrent panels, then gemm_by_rows'; in the backward then the fused
// weight product's buffers and the bias partials.
template <class T>
int64_t panel_elements(const LayerDims& d, bool backward) {
  return recurrent_panel_elements<T>(d, backward) + all_steps_panel_elements<T>(d, backward) + 2 * kPanelSlack +
         (backward ? fused_weight_gradient_elements(d) + bias_partial_elements(d) : 0);
}

int64_t cpu_panel_elements(const LayerDims& d, int64_t element_size, bool backward) {
  return element_size == 4 ? panel_elements<float>(d, backward) : panel_elements<double>(d, backward);
}

template <>
void rnn_forward<DeviceType::CPU>(int cell, const TensorView& x, const TensorView& h0, const OptView& c0,
                                  const TensorView& w_ih, const TensorView& w_hh, const OptView& w_hr,
                                  const OptView& b_ih, const OptView& b_hh, const OptView& lengths, bool reverse,
                                  const TensorView& y, const TensorView& h_n, const OptView& c_n,
                                  const TensorView& reserve, const OptView& workspace, std::uintptr_t) {
  const LayerDims d = check_forward(DeviceType::CPU, cell, x, h0, c0, w_ih, w_hh, w_hr, b_ih, b_hh, lengths, y, h_n,
                                    c_n, reserve, workspace);
  if (d.batch == 0) return;  // every output is empty
  prefer_huge_pages(y);
  prefer_huge_pages(reserve);
  dispatch_cpu_floating(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const int64_t B = d.batch, H = d.hidden, S = d.state(), GH = d.gates(), R = d.reserve();
    T* hh = workspace->data_as<T>();  // (B, G·H)
    T* bias = hh + B * GH;            // (G·H)
    T* bias_hn = bias + GH;           // (H)
    T* h_spare = bias_hn + H;         // (B, S): the states alternate between h_n and this
    T* regrouped = h_spare + B * S;   // (G·H, S): W_hh regrouped by chunk (pack_forward_weights)
    T* panels = align_panels(regrouped + GH * S);  // the packed W_hh (whole or by chunk), then gemm_by_rows'
    T* all_steps_panels = align_panels(panels + recurrent_panel_elements<T>(d, false));
    fold_biases<T>(d, optional_data<T>(b_ih), optional_data<T>(b_hh), bias, bias_hn);
    const bool by_rows = splits_rows(d);
    const std::vector<blas::PackedB<T>> w_chunks =
        by_rows ? std::vector<blas::PackedB<T>>{blas::pack_b(Trans::Yes, S, GH, w_hh.data_as<const T>(), S,
                                                             rows_per_thread(d), panels)}
                : pack_forward_weights(d, UnitChunks(d), w_hh.data_as<const T>(), regrouped, panels);
    T* rsv = reserve.data_as<T>();
    // The input projection of every step at once: reserve[:, :, :G·H] = x W_ihᵀ, (T·B, I) × (I, G·H).
    gemm_by_rows(Trans::No, Trans::Yes, d.steps * B, GH, d.input, x.data_as<const T>(), d.input,
                 w_ih.data_as<const T>(), d.input, rsv, R, all_steps_panels);
    T* h = h_n.data_as<T>();  // the running state lives in the final-state outputs
    std::memcpy(h, h0.data, B * S * sizeof(T));
    T* c = optional_data_mut<T>(c_n);
    if (c) std::memcpy(c, c0->data, B * H * sizeof(T));
    const int64_t* len = lengths ? lengths->data_as<const int64_t>() : nullptr;
    const T* h_final = nullptr;
    if (d.proj > 0) {
      h_final = forward_steps_projected<T>(d, w_chunks, w_hr->data_as<const T>(), len, reverse, bias, y.data_as<T>(),
                                           h, h_spare, c, rsv, hh);
    } else if (by_rows) {
      cell::dispatch_cell(d.cell, [&](auto kind) {
        blas::parallel_for_gemm(B, kMinRows, [&](int, int64_t b0, int64_t b1) {
          forward_rows<decltype(kind)::value, T>(d, w_chunks[0], len, reverse, bias, bias_hn, b0, b1,
                                                 y.data_as<T>(), h, h_spare, c, rsv, hh);
        });
      });
      h_final = d.steps % 2 == 0 ? h : h_spare;  // every row's state swapped buffers once per step
    } else {
      cell::dispatch_cell(d.cell, [&](auto kind) {
        h_final = forward_steps<decltype(kind)::value, T>(d, w_chunks, len, reverse, bias, bias_hn, y.data_as<T>(),
                                                          h, h_spare, c, rsv, hh);
      });
    }
    if (h_final != h) std::memcpy(h, h_final, B * S * sizeof(T));
  });
}

template <>
void rnn_backward<DeviceType::CPU>(int cell, const TensorView& grad_y, const TensorView& grad_h_n,
                                   const OptView& grad_c_n, const TensorView& x, const TensorView& w_ih,
                                   const TensorView& w_hh, const OptView& w_hr, const OptView& lengths,
                                   bool reverse, const TensorView& reserve, const OptView& grad_x,
                                   const OptView& grad_h0, const OptView& grad_c0, const OptView& grad_w_ih,
                                   const OptView& grad_w_hh, const OptView& grad_w_hr, const OptView& grad_b_ih,
                                   const OptView& grad_b_hh, const OptView& workspace, std::uintptr_t) {
  const LayerDims d = check_backward(DeviceType::CPU, cell, grad_y, grad_h_n, grad_c_n, x, w_ih, w_hh, w_hr, lengths,
                                     reserve, grad_x, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_w_hr, grad_b_ih,
                                     grad_b_hh, workspace);
  if (d.batch == 0) {  // the input and state gradients are empty; no sequence contributes to the others
    for (const OptView* g : {&grad_w_ih, &grad_w_hh, &grad_w_hr, &grad_b_ih, &grad_b_hh})
      if (*g) std::memset((*g)->data, 0, (*g)->numel() * dtype_size((*g)->dtype));
    return;
  }
  prefer_huge_pages(grad_x);
  dispatch_cpu_floating(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const int64_t TB = d.steps * d.batch, BH = d.batch * d.hidden, BS = d.batch * d.state(), GH = d.gates();
    const int64_t H = d.hidden, S = d.state();
    T* dg_ih = workspace->data_as<T>();                            // (T, B, G·H)
    T* dg_hh = d.cell == Cell::Gru ? dg_ih + TB * GH : dg_ih;      // the GRU's recurrent side differs
    T* dh = (d.cell == Cell::Gru ? dg_hh : dg_ih) + TB * GH;       // (B, S) ×2: δh, δh_{t−1}
    T* dh_next = dh + BS;
    T* dc = d.cell == Cell::Lstm ? dh_next + BS : nullptr;         // (B, H)
    T* dh_all = dh_next + BS + BH;                                 // projection: (T, B, P), then δu (B, H)
    std::memcpy(dh, grad_h_n.data, BS * sizeof(T));
    if (dc) std::memcpy(dc, grad_c_n->data, BH * sizeof(T));
    const int64_t* len = lengths ? lengths->data_as<const int64_t>() : nullptr;
    const T* rsv = reserve.data_as<const T>();
    const T* dh0 = nullptr;
    // After the projection's buffers: the packed W_hh (no projection), then gemm_by_rows' panels, the
    // fused weight product's buffers and the bias partials (panel_elements).
    T* panels = align_panels(dh_all + (d.proj > 0 ? TB * d.proj + BH : 0));
    T* all_steps_panels = align_panels(panels + recurrent_panel_elements<T>(d, true));
    T* fused_buffers = all_steps_panels + all_steps_panel_elements<T>(d, true);
    T* bias_partials = fused_buffers + fused_weight_gradient_elements(d);
    if (d.proj > 0) {
      dh0 = backward_steps_projected<T>(d, w_hh.data_as<const T>(), w_hr->data_as<const T>(), len, reverse, rsv,
                                        grad_y.data_as<const T>(), dh, dh_next, dc, dg_ih, dh_all,
                                        dh_all + TB * d.proj);
    } else if (splits_rows(d)) {
      const blas::PackedB<T> w = blas::pack_b(Trans::No, GH, H, w_hh.data_as<const T>(), H, rows_per_thread(d), panels);
      const bool sum_ih = grad_b_ih || grad_b_hh, sum_hh = grad_b_hh && dg_hh != dg_ih;
      int used_chunks = 0;
      cell::dispatch_cell(d.cell, [&](auto kind) {
        blas::parallel_for_gemm(d.batch, kMinRows, [&](int chunk, int64_t b0, int64_t b1) {
          T* partial = bias_partials + 2 * chunk * GH;
          backward_rows<decltype(kind)::value, T>(d, w, len, reverse, rsv, grad_y.data_as<const T>(), b0, b1, dh,
                                                  dh_next, dc, dg_ih, dg_hh, sum_ih ? partial : nullptr,
                                                  sum_hh ? partial + GH : nullptr);
        });
        used_chunks = parallel_chunk_count(d.batch, kMinRows);
      });
      dh0 = d.steps % 2 == 0 ? dh : dh_next;  // every row's δh swapped buffers once per step
      // The bias gradients: the threads' partials, summed in chunk order (deterministic).
      const auto sum_partials = [&](const OptView& out, int64_t offset) {
        if (!out) return;
        T* db = out->data_as<T>();
        std::fill(db, db + GH, T(0));
        for (int chunk = 0; chunk < used_chunks; ++chunk) {
          const T* partial = bias_partials + 2 * chunk * GH + offset;
          for (int64_t k = 0; k < GH; ++k) db[k] += partial[k];
        }
      };
      sum_partials(grad_b_ih, 0);
      // Every cell but the GRU: db_hh equals db_ih, copied below when both are asked for.
      if (sum_hh || !grad_b_ih) sum_partials(grad_b_hh, sum_hh ? GH : 0);
    } else {
      const std::vector<blas::PackedB<T>> w_columns =
          pack_backward_weights(d, UnitChunks(d), w_hh.data_as<const T>(), panels);
      // The bias gradients are summed by the step regions (every cell but the GRU has one δgates for
      // both biases: its db_hh is a copy of db_ih, below).
      T* db_ih = optional_data_mut<T>(grad_b_ih);
      T* db_hh = dg_hh != dg_ih || !db_ih ? optional_data_mut<T>(grad_b_hh) : nullptr;
      if (db_ih) std::fill(db_ih, db_ih + GH, T(0));
      if (db_hh) std::fill(db_hh, db_hh + GH, T(0));
      cell::dispatch_cell(d.cell, [&](auto kind) {
        dh0 = backward_steps<decltype(kind)::value, T>(d, w_columns, len, reverse, rsv, grad_y.data_as<const T>(),
                                                       dh, dh_next, dc, dg_ih, dg_hh, db_ih, db_hh);
      });
    }
    if (grad_h0) std::memcpy(grad_h0->data, dh0, BS * sizeof(T));
    if (grad_c0 && dc) std::memcpy(grad_c0->data, dc, BH * sizeof(T));
    // The weight products over all steps at once.
    if (grad_x)  // (T·B, I) = δgates (T·B, G·H) × W_ih (G·H, I)
      gemm_by_rows(Trans::No, Trans::No, TB, d.input, GH, dg_ih, GH, w_ih.data_as<const T>(), d.input,
                   grad_x->data_as<T>(), d.input, all_steps_panels);
    if (grad_w_ih && grad_w_hh && dg_hh == dg_ih) {
      fused_weight_gradients(d, dg_ih, x.data_as<const T>(), rsv, fused_buffers, fused_buffers + TB * (S + d.input),
                             grad_w_ih->data_as<T>(), grad_w_hh->data_as<T>(), all_steps_panels);
    } else {
      if (grad_w_ih)  // (G·H, I) = δgatesᵀ x
        gemm_by_rows(Trans::Yes, Trans::No, GH, d.input, TB, dg_ih, GH, x.data_as<const T>(), d.input,
                     grad_w_ih->data_as<T>(), d.input, all_steps_panels);
      if (grad_w_hh)  // (G·H, S) = δgatesᵀ h_prev, h_prev read from the reserve with leading dimension R
        gemm_by_rows(Trans::Yes, Trans::No, GH, S, TB, dg_hh, GH, rsv + d.reserve_h_prev(), d.reserve(),
                     grad_w_hh->data_as<T>(), S, all_steps_panels);
    }
    if (grad_w_hr)  // (P, H) = δhᵀ u over all steps, u read from the reserve
      gemm_by_rows(Trans::Yes, Trans::No, d.proj, H, TB, dh_all, d.proj, rsv + d.reserve_u(), d.reserve(),
                   grad_w_hr->data_as<T>(), H, all_steps_panels);
    if (d.proj > 0) {  // the projected steps leave the bias sums to one pass over δgates here
      if (grad_b_ih) column_sums(dg_ih, TB, GH, grad_b_ih->data_as<T>());
      if (grad_b_hh && !grad_b_ih) column_sums(dg_hh, TB, GH, grad_b_hh->data_as<T>());
    }
    if (grad_b_hh && grad_b_ih && dg_hh == dg_ih)  // every cell but the GRU: the same sums
      std::memcpy(grad_b_hh->data, grad_b_ih->data, GH * sizeof(T));
  });
}

}  // namespace replearn::rnn
