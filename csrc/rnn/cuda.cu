// CUDA kernels of the recurrent family (rnn.h): float32, float16 and bfloat16 storage, float32 arithmetic.
//
// The same algorithm as cpu.cpp: one GEMM for the input projection of all steps, per step one GEMM
// h W_hhᵀ and one fused gate kernel (cell.h), BPTT in one call with the weight gradients as GEMMs
// over all steps. The GEMM is a plain shared-memory tiled kernel (16 × 16 tiles, float accumulation)
// written here: the core links no cuBLAS (static CUDA runtime only, ARCHITECTURE.md §8). At the
// per-step sizes of a recurrence (B × 4H × H with B ≈ 32) the step is latency-bound anyway; a
// CUTLASS kernel is the upgrade path for the large input and weight-gradient GEMMs (TODO, measured on a GPU).
//
// Precision: inputs, weights, outputs and gradients are stored in the caller's dtype T; everything the
// recurrence carries from step to step (the states h and c, the gate pre-activations, the reserve and
// the gate gradients) is float32, and the GEMMs accumulate in float32. So for float16/bfloat16 the only
// roundings are the ones of the stored tensors: y and the final states once per value, not h once per
// step. The cells (cell.h) run on float32 buffers; y and grad_y pass through float32 copies.
#include <algorithm>
#include <type_traits>

#include "core/cuda_utils.cuh"
#include "rnn/cell.h"
#include "rnn/rnn.h"

namespace replearn::rnn {

namespace {

constexpr int kTile = 16;
constexpr int kThreads = 256;

// C (m, n) = alpha · op(A) op(B) + beta · C with op(A)(i, k) = a[i·a_row + k·a_col] and
// op(B)(k, j) = b[k·b_row + j·b_col]: transposes are strides. One 16 × 16 tile of C per block of
// 256 threads, float32 accumulation whatever the storage types; beta = 0 never reads C.
template <class TA, class TB, class TC>
__global__ void gemm_kernel(int64_t m, int64_t n, int64_t k, float alpha, const TA* __restrict__ a, int64_t a_row,
                            int64_t a_col, const TB* __restrict__ b, int64_t b_row, int64_t b_col, float beta,
                            TC* __restrict__ c, int64_t ldc) {
  __shared__ float a_tile[kTile][kTile + 1];
  __shared__ float b_tile[kTile][kTile + 1];
  const int tx = threadIdx.x % kTile, ty = threadIdx.x / kTile;
  const int64_t row = static_cast<int64_t>(blockIdx.y) * kTile + ty;
  // Column tiles stride over grid.x (the grid is sized to cover them; the stride keeps any cap safe).
  for (int64_t col0 = static_cast<int64_t>(blockIdx.x) * kTile; col0 < n; col0 += static_cast<int64_t>(gridDim.x) * kTile) {
    const int64_t col = col0 + tx;
    float acc = 0.f;
    for (int64_t k0 = 0; k0 < k; k0 += kTile) {
      a_tile[ty][tx] = row < m && k0 + tx < k ? to_float(a[row * a_row + (k0 + tx) * a_col]) : 0.f;
      b_tile[ty][tx] = k0 + ty < k && col < n ? to_float(b[(k0 + ty) * b_row + col * b_col]) : 0.f;
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < kTile; ++kk) acc += a_tile[ty][kk] * b_tile[kk][tx];
      __syncthreads();
    }
    if (row < m && col < n) {
      TC* out = c + row * ldc + col;
      *out = from_float<TC>(beta == 0.f ? alpha * acc : alpha * acc + beta * to_float(*out));
    }
  }
}

// Row-major op(A) (m, k), op(B) (k, n) with leading dimensions, as core/gemm.h on the CPU.
template <class TA, class TB, class TC>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const TA* a, int64_t lda,
          const TB* b, int64_t ldb, float beta, TC* c, int64_t ldc, cudaStream_t stream) {
  if (m <= 0 || n <= 0) return;
  const dim3 grid(static_cast<unsigned>(std::min<int64_t>((n + kTile - 1) / kTile, 1 << 30)),
                  static_cast<unsigned>((m + kTile - 1) / kTile));
  REPLEARN_CHECK(grid.y <= 65535, Value, "rnn gemm: ", m, " rows exceed the CUDA grid");
  gemm_kernel<TA, TB, TC><<<grid, kThreads, 0, stream>>>(m, n, k, alpha, a, trans_a ? 1 : lda, trans_a ? lda : 1, b,
                                                           trans_b ? 1 : ldb, trans_b ? ldb : 1, beta, c, ldc);
  REPLEARN_CUDA_LAUNCH_CHECK();
}

unsigned blocks_for(int64_t n) {
  return static_cast<unsigned>(std::min<int64_t>((n + kThreads - 1) / kThreads, 65535));
}

__device__ __forceinline__ bool is_active(const int64_t* lengths, int64_t b, int64_t t, int64_t steps) {
  if (lengths == nullptr) return true;
  const int64_t len = lengths[b] < 1 ? 1 : lengths[b] > steps ? steps : lengths[b];  // clamped (rnn.h)
  return t < len;
}

// dst = src converted between storage types (a copy when both are the same).
template <class From, class To>
__global__ void convert_kernel(const From* __restrict__ src, To* __restrict__ dst, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dst[i] = from_float<To>(to_float(src[i]));
}

template <class From, class To>
void convert(const From* src, To* dst, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  convert_kernel<From, To><<<blocks_for(n), kThreads, 0, stream>>>(src, dst, n);
  REPLEARN_CUDA_LAUNCH_CHECK();
}

// bias (G·H) = b_ih + b_hh except the GRU's n gate (b_in), bias_hn (H) = b_hn: see cpu.cpp.
template <class T>
__global__ void fold_biases_kernel(Cell cell, int64_t H, int64_t GH, const T* b_ih, const T* b_hh, float* bias,
                                   float* bias_hn) {
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < GH;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float bi = b_ih ? to_float(b_ih[k]) : 0.f, bh = b_hh ? to_float(b_hh[k]) : 0.f;
    const bool hn = cell == Cell::Gru && k >= 2 * H;
    bias[k] = hn ? bi : bi + bh;
    if (hn) bias_hn[k - 2 * H] = bh;
  }
}

template <Cell kind>
__global__ void forward_step_kernel(int64_t t, int64_t steps, int64_t B, int64_t H, const int64_t* lengths,
                                    const float* bias, const float* bias_hn, const float* hh, const float* h_prev,
                                    float* h, float* c, float* y, float* reserve) {
  const int64_t GH = gate_count(kind) * H, R = reserve_width(kind, H);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < B * H;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = i / H, j = i % H;
    float* rsv = reserve + (t * B + b) * R;
    float* y_b = y + (t * B + b) * H;
    if (is_active(lengths, b, t, steps))
      cell::forward_element<kind>(j, H, H, rsv, hh + b * GH, bias, bias_hn, h_prev + b * H, h + b * H,
                                  c ? c + b * H : nullptr, y_b);
    else
      cell::forward_inactive_element<kind>(j, H, rsv, h_prev + b * H, h + b * H, y_b);
  }
}

template <Cell kind>
__global__ void backward_step_kernel(int64_t t, int64_t steps, int64_t B, int64_t H, const int64_t* lengths,
                                     const float* reserve, const float* grad_y, const float* dh, float* dh_next,
                                     float* dc, float* dg_ih, float* dg_hh) {
  const int64_t GH = gate_count(kind) * H, R = reserve_width(kind, H);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < B * H;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = i / H, j = i % H, row = t * B + b;
    if (is_active(lengths, b, t, steps))
      cell::backward_element<kind>(j, H, reserve + row * R, grad_y + row * H, dh + b * H, dh_next + b * H,
                                   dc ? dc + b * H : nullptr, dg_ih + row * GH, dg_hh + row * GH);
    else
      cell::backward_inactive_element<kind>(j, H, dh + b * H, dh_next + b * H, dg_ih + row * GH, dg_hh + row * GH);
  }
}

// The LSTM with projection (rnn.h, cell.h): the unit half of a step (before the W_hr GEMM) and the
// state half (after it), one thread per element.
__global__ void proj_unit_forward_kernel(int64_t t, int64_t steps, int64_t B, int64_t H, int64_t R,
                                         const int64_t* lengths, const float* bias, const float* hh, float* c,
                                         float* reserve) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < B * H;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = i / H, j = i % H;
    cell::proj_unit_forward(j, H, H, is_active(lengths, b, t, steps), reserve + (t * B + b) * R, hh + b * 4 * H, bias,
                            c + b * H);
  }
}

__global__ void proj_state_forward_kernel(int64_t t, int64_t steps, int64_t B, int64_t P, int64_t R,
                                          int64_t h_prev_column, const int64_t* lengths, const float* h_prev, float* h,
                                          float* y, float* reserve) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < B * P;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = i / P, p = i % P, row = t * B + b;
    cell::proj_state_forward(p, is_active(lengths, b, t, steps), h_prev + b * P, h + b * P, y + row * P,
                             reserve + row * R + h_prev_column);
  }
}

__global__ void proj_state_backward_kernel(int64_t t, int64_t steps, int64_t B, int64_t P, const int64_t* lengths,
                                           const float* grad_y, const float* dh, float* dh_next, float* dh_all) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < B * P;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = i / P, p = i % P, row = t * B + b;
    cell::proj_state_backward(p, is_active(lengths, b, t, steps), grad_y + row * P, dh + b * P, dh_next + b * P,
                              dh_all + row * P);
  }
}

__global__ void proj_unit_backward_kernel(int64_t t, int64_t steps, int64_t B, int64_t H, int64_t R,
                                          const int64_t* lengths, const float* reserve, const float* du, float* dc,
                                          float* dg) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < B * H;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = i / H, j = i % H, row = t * B + b;
    cell::proj_unit_backward(j, H, is_active(lengths, b, t, steps), reserve + row * R, du + b * H, dc + b * H,
                             dg + row * 4 * H);
  }
}

// out (cols) = Σ over rows of m (rows, cols): one thread per column, rows read coalesced across threads.
template <class T>
__global__ void column_sums_kernel(const float* __restrict__ m, int64_t rows, int64_t cols, T* __restrict__ out) {
  for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < cols;
       c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float sum = 0.f;
    for (int64_t r = 0; r < rows; ++r) sum += m[r * cols + c];
    out[c] = from_float<T>(sum);
  }
}

template <class T>
const T* data_or_null(const OptView& v) {
  return v ? v->data_as<const T>() : nullptr;
}

template <class T>
void forward(const LayerDims& d, const TensorView& x, const TensorView& h0, const OptView& c0, const TensorView& w_ih,
             const TensorView& w_hh, const OptView& w_hr, const OptView& b_ih, const OptView& b_hh,
             const OptView& lengths, bool reverse, const TensorView& y, const TensorView& h_n, const OptView& c_n,
             const TensorView& reserve, const TensorView& workspace, cudaStream_t stream) {
  const int64_t B = d.batch, H = d.hidden, S = d.state(), P = d.proj, GH = d.gates(), R = d.reserve();
  // Workspace (rnn.h: forward_workspace_bytes), float32 throughout.
  float* hh = workspace.data_as<float>();  // (B, G·H)
  float* bias = hh + B * GH;               // (G·H)
  float* bias_hn = bias + GH;              // (H)
  float* h_cur = bias_hn + H;              // (B, S): the running state alternates between these two
  float* h_other = h_cur + B * S;          // (B, S)
  float* c = h_other + B * S;              // (B, H)
  // y straight into the output for float32, through a float32 copy otherwise.
  float* y_f = std::is_same_v<T, float> ? reinterpret_cast<float*>(y.data_as<T>()) : c + B * H;  // (T, B, S)
  const T* w_hh_data = w_hh.data_as<const T>();
  fold_biases_kernel<T><<<blocks_for(GH), kThreads, 0, stream>>>(d.cell, H, GH, data_or_null<T>(b_ih),
                                                                   data_or_null<T>(b_hh), bias, bias_hn);
  REPLEARN_CUDA_LAUNCH_CHECK();
  float* rsv = reserve.data_as<float>();
  gemm(false, true, d.steps * B, GH, d.input, 1.f, x.data_as<const T>(), d.input, w_ih.data_as<const T>(), d.input,
       0.f, rsv, R, stream);
  convert(h0.data_as<const T>(), h_cur, B * S, stream);
  const bool lstm = d.cell == Cell::Lstm;
  if (lstm) convert(c0->data_as<const T>(), c, B * H, stream);
  const int64_t* len = lengths ? lengths->data_as<const int64_t>() : nullptr;
  if (P > 0) {  // the LSTM with projection: gates, then h_t = u_t W_hrᵀ
    for (int64_t s = 0; s < d.steps; ++s) {
      const int64_t t = reverse ? d.steps - 1 - s : s;
      gemm(false, true, B, GH, P, 1.f, h_cur, P, w_hh_data, P, 0.f, hh, GH, stream);
      proj_unit_forward_kernel<<<blocks_for(B * H), kThreads, 0, stream>>>(t, d.steps, B, H, R, len, bias, hh, c,
                                                                            rsv);
      REPLEARN_CUDA_LAUNCH_CHECK();
      gemm(false, true, B, P, H, 1.f, rsv + t * B * R + d.reserve_u(), R, w_hr->data_as<const T>(), H, 0.f, h_other,
           P, stream);
      proj_state_forward_kernel<<<blocks_for(B * P), kThreads, 0, stream>>>(t, d.steps, B, P, R, d.reserve_h_prev(),
                                                                             len, h_cur, h_other, y_f, rsv);
      REPLEARN_CUDA_LAUNCH_CHECK();
      std::swap(h_cur, h_other);
    }
  } else {
    cell::dispatch_cell(d.cell, [&](auto kind) {
      for (int64_t s = 0; s < d.steps; ++s) {
        const int64_t t = reverse ? d.steps - 1 - s : s;
        gemm(false, true, B, GH, H, 1.f, h_cur, H, w_hh_data, H, 0.f, hh, GH, stream);
        forward_step_kernel<decltype(kind)::value><<<blocks_for(B * H), kThreads, 0, stream>>>(
            t, d.steps, B, H, len, bias, bias_hn, hh, h_cur, h_other, lstm ? c : nullptr, y_f, rsv);
        REPLEARN_CUDA_LAUNCH_CHECK();
        std::swap(h_cur, h_other);
      }
    });
  }
  convert(h_cur, h_n.data_as<T>(), B * S, stream);
  if (lstm) convert(c, c_n->data_as<T>(), B * H, stream);
  if (!std::is_same_v<T, float>) convert(y_f, y.data_as<T>(), d.steps * B * S, stream);
}

template <class T>
void backward(const LayerDims& d, const TensorView& grad_y, const TensorView& grad_h_n, const OptView& grad_c_n,
              const TensorView& x, const TensorView& w_ih, const TensorView& w_hh, const OptView& w_hr,
              const OptView& lengths, bool reverse, const TensorView& reserve, const OptView& grad_x,
              const OptView& grad_h0, const OptView& grad_c0, const OptView& grad_w_ih, const OptView& grad_w_hh,
              const OptView& grad_w_hr, const OptView& grad_b_ih, const OptView& grad_b_hh,
              const TensorView& workspace, cudaStream_t stream) {
  const int64_t TB = d.steps * d.batch, B = d.batch, BH = d.batch * d.hidden, GH = d.gates(), H = d.hidden;
  const int64_t S = d.state(), BS = d.batch * S, P = d.proj, R = d.reserve();
  // Workspace layout as on the CPU (cpu.cpp), float32, then grad_y in float32 for float16/bfloat16.
  float* dg_ih = workspace.data_as<float>();
  float* dg_hh = d.cell == Cell::Gru ? dg_ih + TB * GH : dg_ih;
  float* dh = (d.cell == Cell::Gru ? dg_hh : dg_ih) + TB * GH;
  float* dh_next = dh + BS;
  float* dc = d.cell == Cell::Lstm ? dh_next + BS : nullptr;
  float* dh_all = dh_next + BS + BH;  // projection: (T, B, P), then δu (B, H)
  float* du = dh_all + TB * P;
  const float* grad_y_f = reinterpret_cast<const float*>(grad_y.data_as<const T>());
  if constexpr (!std::is_same_v<T, float>) {
    float* copy = du + (P > 0 ? BH : 0);  // (T, B, S)
    convert(grad_y.data_as<const T>(), copy, TB * S, stream);
    grad_y_f = copy;
  }
  convert(grad_h_n.data_as<const T>(), dh, BS, stream);
  if (dc) convert(grad_c_n->data_as<const T>(), dc, BH, stream);
  const int64_t* len = lengths ? lengths->data_as<const int64_t>() : nullptr;
  const float* rsv = reserve.data_as<const float>();
  const T* w_hh_data = w_hh.data_as<const T>();
  if (P > 0) {  // the LSTM with projection (cpu.cpp: backward_steps_projected)
    for (int64_t s = d.steps - 1; s >= 0; --s) {
      const int64_t t = reverse ? d.steps - 1 - s : s;
      proj_state_backward_kernel<<<blocks_for(BS), kThreads, 0, stream>>>(t, d.steps, B, P, len, grad_y_f, dh,
                                                                           dh_next, dh_all);
      REPLEARN_CUDA_LAUNCH_CHECK();
      gemm(false, false, B, H, P, 1.f, dh_all + t * B * P, P, w_hr->data_as<const T>(), H, 0.f, du, H, stream);
      proj_unit_backward_kernel<<<blocks_for(BH), kThreads, 0, stream>>>(t, d.steps, B, H, R, len, rsv, du, dc,
                                                                          dg_ih);
      REPLEARN_CUDA_LAUNCH_CHECK();
      gemm(false, false, B, P, GH, 1.f, dg_ih + t * B * GH, GH, w_hh_data, P, 1.f, dh_next, P, stream);
      std::swap(dh, dh_next);
    }
  } else {
    cell::dispatch_cell(d.cell, [&](auto kind) {
      for (int64_t s = d.steps - 1; s >= 0; --s) {
        const int64_t t = reverse ? d.steps - 1 - s : s;
        backward_step_kernel<decltype(kind)::value><<<blocks_for(BH), kThreads, 0, stream>>>(
            t, d.steps, B, H, len, rsv, grad_y_f, dh, dh_next, dc, dg_ih, dg_hh);
        REPLEARN_CUDA_LAUNCH_CHECK();
        gemm(false, false, B, H, GH, 1.f, dg_hh + t * B * GH, GH, w_hh_data, H, 1.f, dh_next, H, stream);
        std::swap(dh, dh_next);
      }
    });
  }
  if (grad_h0) convert(dh, grad_h0->data_as<T>(), BS, stream);
  if (grad_c0 && dc) convert(dc, grad_c0->data_as<T>(), BH, stream);
  if (grad_x)
    gemm(false, false, TB, d.input, GH, 1.f, static_cast<const float*>(dg_ih), GH, w_ih.data_as<const T>(), d.input,
         0.f, grad_x->data_as<T>(), d.input, stream);
  if (grad_w_ih)
    gemm(true, false, GH, d.input, TB, 1.f, static_cast<const float*>(dg_ih), GH, x.data_as<const T>(), d.input, 0.f,
         grad_w_ih->data_as<T>(), d.input, stream);
  if (grad_w_hh)
    gemm(true, false, GH, S, TB, 1.f, static_cast<const float*>(dg_hh), GH, rsv + d.reserve_h_prev(), R, 0.f,
         grad_w_hh->data_as<T>(), S, stream);
  if (grad_w_hr)
    gemm(true, false, P, H, TB, 1.f, static_cast<const float*>(dh_all), P, rsv + d.reserve_u(), R, 0.f,
         grad_w_hr->data_as<T>(), H, stream);
  if (grad_b_ih) {
    column_sums_kernel<T><<<blocks_for(GH), kThreads, 0, stream>>>(dg_ih, TB, GH, grad_b_ih->data_as<T>());
    REPLEARN_CUDA_LAUNCH_CHECK();
  }
  if (grad_b_hh) {
    column_sums_kernel<T><<<blocks_for(GH), kThreads, 0, stream>>>(dg_hh, TB, GH, grad_b_hh->data_as<T>());
    REPLEARN_CUDA_LAUNCH_CHECK();
  }
}

}  // namespace

template <>
void rnn_forward<DeviceType::CUDA>(int cell, const TensorView& x, const TensorView& h0, const OptView& c0,
                                   const TensorView& w_ih, const TensorView& w_hh, const OptView& w_hr,
                                   const OptView& b_ih, const OptView& b_hh, const OptView& lengths, bool reverse,
                                   const TensorView& y, const TensorView& h_n, const OptView& c_n,
                                   const TensorView& reserve, const OptView& workspace,
                                   std::uintptr_t stream_handle) {
  const LayerDims d = check_forward(DeviceType::CUDA, cell, x, h0, c0, w_ih, w_hh, w_hr, b_ih, b_hh, lengths, y, h_n,
                                    c_n, reserve, workspace);
  if (d.batch == 0) return;  // every output is empty
  dispatch_cuda_floating(x.dtype, [&](auto tag) {
    forward<typename decltype(tag)::type>(d, x, h0, c0, w_ih, w_hh, w_hr, b_ih, b_hh, lengths, reverse, y, h_n, c_n,
                                          reserve, *workspace, as_stream(stream_handle));
  });
}

template <>
void rnn_backward<DeviceType::CUDA>(int cell, const TensorView& grad_y, const TensorView& grad_h_n,
                                    const OptView& grad_c_n, const TensorView& x, const TensorView& w_ih,
                                    const TensorView& w_hh, const OptView& w_hr, const OptView& lengths,
                                    bool reverse, const TensorView& reserve, const OptView& grad_x,
                                    const OptView& grad_h0, const OptView& grad_c0, const OptView& grad_w_ih,
                                    const OptView& grad_w_hh, const OptView& grad_w_hr, const OptView& grad_b_ih,
                                    const OptView& grad_b_hh, const OptView& workspace,
                                    std::uintptr_t stream_handle) {
  const LayerDims d = check_backward(DeviceType::CUDA, cell, grad_y, grad_h_n, grad_c_n, x, w_ih, w_hh, w_hr, lengths,
                                     reserve, grad_x, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_w_hr, grad_b_ih,
                                     grad_b_hh, workspace);
  if (d.batch == 0) {  // the input and state gradients are empty; no sequence contributes to the others
    for (const OptView* g : {&grad_w_ih, &grad_w_hh, &grad_w_hr, &grad_b_ih, &grad_b_hh})
      if (*g) REPLEARN_CUDA_CHECK(cudaMemsetAsync((*g)->data, 0, (*g)->numel() * dtype_size((*g)->dtype),
                                                  as_stream(stream_handle)));
    return;
  }
  dispatch_cuda_floating(x.dtype, [&](auto tag) {
    backward<typename decltype(tag)::type>(d, grad_y, grad_h_n, grad_c_n, x, w_ih, w_hh, w_hr, lengths, reverse,
                                           reserve, grad_x, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_w_hr,
                                           grad_b_ih, grad_b_hh, *workspace, as_stream(stream_handle));
  });
}

}  // namespace replearn::rnn
