// Attention family, CUDA kernels (float32, float16, bfloat16; arithmetic and accumulation in float32).
//
// Tiled flash attention (Dao et al. 2022; loop order of FlashAttention-2, Dao 2023) with shared-memory
// tiles sized for head dims up to 256 inside the 48 KiB of static shared memory:
//
// forward      one block (4 warps) per (b, h, 16 query rows); each warp owns 4 rows. For every tile
//              of 32 keys, lane j computes the scores of key j against its warp's rows (query rows in
//              shared memory, the key tile staged 64 dims at a time), the warp updates the online
//              softmax with shuffles, and each lane adds P·V to the output dims it owns
//              (lane, lane + 32, ...). Writes O and L = m + log l.
// backward     (1) the L used for recomputation (+inf for rows that saw no key, so P = e^{S − L} = 0);
//              (2) dQ: blocks laid out like the forward; a first pass over the key tiles computes each
//              row's D = Σ_j P_j dP_j − dL and the factor that normalizes the recomputed P exactly
//              (see backward_dq_kernel: the parity rule), then per key tile P, dP = dO·Vᵀ,
//              dS = P ∘ (dP − D), dQ += dS·K; dS also goes to the bias gradient;
//              (3) dK, dV: one block per (b, kv head, 16 keys), query tiles of 32 in the lanes, looping
//              over the query heads that share the kv head (GQA), so every gradient element has
//              exactly one writer: no atomics, deterministic.
// A bias gradient is written straight into grad_bias when the bias has the full (B, H, Tq, Tk)
// shape; a broadcast bias takes dS through a float32 (B, H, Tq, Tk) workspace and a reduction kernel
// sums it over the broadcast dims in a fixed order (the one case with O(T²) scratch: the gradient of
// a broadcast bias).
//
// Recomputing the key tile for dQ and the query tile for dK (two passes instead of FlashAttention-2's
// atomic dQ) costs two extra tile products out of seven and keeps the result deterministic.
#include <cstdint>

#include "attention/attention.h"
#include "core/check.h"
#include "core/cuda_utils.cuh"

namespace replearn::attention {

namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kRowsPerWarp = 4;
constexpr int kBlockRows = kWarps * kRowsPerWarp;  // query rows (forward, dQ) or keys (dK, dV) per block
constexpr int kTileKeys = 32;                      // keys (forward, dQ) or queries (dK, dV) per tile: one per lane
constexpr int kChunk = 64;                         // head dims staged in shared memory at a time
constexpr int kMaxChunks = kMaxHeadDim / kChunk;
constexpr int kDimsPerLane = kMaxHeadDim / 32;

struct Geometry {
  int64_t batch, heads, kv_heads, q_len, k_len, head_dim, value_dim;
  int64_t bias_stride[4];
  float scale;
  bool causal;
  uint64_t drop_key, drop_threshold;
  float keep_scale;

  __device__ int64_t group() const { return heads / kv_heads; }
  __device__ int64_t key_end(int64_t i) const {
    if (!causal) return k_len;
    const int64_t e = i + k_len - q_len + 1;
    return e < 0 ? 0 : (e > k_len ? k_len : e);
  }
  // -inf when query i may not see key j (out of range, padding, causal).
  __device__ bool visible(const uint8_t* kpm, int64_t b, int64_t i, int64_t j) const {
    if (i >= q_len || j >= k_len) return false;
    if (kpm && kpm[b * k_len + j]) return false;
    return !causal || j <= i + k_len - q_len;
  }
  __device__ float dropout_factor(int64_t b, int64_t h, int64_t i, int64_t j) const {
    if (!drop_threshold) return 1.f;
    const uint64_t index = ((static_cast<uint64_t>(b) * heads + h) * q_len + i) * k_len + j;
    return dropout_keep(drop_key, index, drop_threshold) ? keep_scale : 0.f;
  }
  __device__ int64_t bias_index(int64_t b, int64_t h, int64_t i, int64_t j) const {
    return b * bias_stride[0] + h * bias_stride[1] + i * bias_stride[2] + j * bias_stride[3];
  }
  // S = (q·k)·scale + bias, the one expression every kernel uses (see dot_rows_with_tile).
  template <class T>
  __device__ float logit(float dot, const T* bias, int64_t b, int64_t h, int64_t i, int64_t j) const {
    return dot * scale + (bias ? to_float(bias[bias_index(b, h, i, j)]) : 0.f);
  }
};

__device__ __forceinline__ float warp_max(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Stages rows [r0, r0 + 32) × dims [c0, c0 + kChunk) of a (len, dim) matrix into tile (zeros outside).
template <class T>
__device__ void stage_chunk(const T* src, int64_t r0, int64_t len, int64_t c0, int64_t dim,
                            float (*tile)[kChunk + 1]) {
  for (int e = threadIdx.x; e < kTileKeys * kChunk; e += kThreads) {
    const int r = e / kChunk, c = e % kChunk;
    const bool in = r0 + r < len && c0 + c < dim;
    tile[r][c] = in ? to_float(src[(r0 + r) * dim + c0 + c]) : 0.f;
  }
}

// Stages kBlockRows rows from r0 of a (len, dim) matrix into rows (zeros past len; only the first
// dim columns are read).
template <class T>
__device__ void stage_rows(const T* src, int64_t r0, int64_t len, int64_t dim, float (*rows)[kMaxHeadDim]) {
  for (int64_t e = threadIdx.x; e < kBlockRows * dim; e += kThreads) {
    const int64_t r = e / dim, c = e % dim;
    rows[r][c] = r0 + r < len ? to_float(src[(r0 + r) * dim + c]) : 0.f;
  }
}

// score[rr] += Σ_c rows[warp·4 + rr][c] · M[m0 + lane][c] over all `dim` dims, M (len, dim) in global
// memory staged through `tile`. Block-wide: every thread calls it.
//
// Every kernel computes a score S = (q·k)·scale + bias with exactly the same operations (partial
// sums of 32 dims added in order), so that the backward's P = e^{S − L} matches the forward's. The
// scale multiplies the dot product, not q (a pre-scaled q rounds every term), and the partial sums
// keep the rounding chains short: on the CPU, one chain of 130 FMAs and a pre-scaled q put a decode
// case with a bias at up to 2.2x the parity bound; see gemm_chunked in cpu.cpp.
template <class T>
__device__ void dot_rows_with_tile(const float (*rows)[kMaxHeadDim], const T* M, int64_t m0, int64_t len, int64_t dim,
                                   float (*tile)[kChunk + 1], float score[kRowsPerWarp]) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int64_t c0 = 0; c0 < dim; c0 += kChunk) {
    __syncthreads();
    stage_chunk(M, m0, len, c0, dim, tile);
    __syncthreads();
    const int n = dim - c0 < kChunk ? static_cast<int>(dim - c0) : kChunk;
    for (int rr = 0; rr < kRowsPerWarp; ++rr) {
      const float* row = rows[warp * kRowsPerWarp + rr] + c0;
      for (int h = 0; h < n; h += 32) {  // partial sums of 32 dims (the CPU kernels' gemm_chunked)
        float s = 0.f;
        for (int c = h; c < (n < h + 32 ? n : h + 32); ++c) s += row[c] * tile[lane][c];
        score[rr] += s;
      }
    }
  }
}

// acc[rr][·] += Σ_t weights[warp][rr][t] · M[m0 + t][dims of this lane]: each lane owns dims
// lane + 32·slot. M (len, dim) in global memory, staged through `tile`. Block-wide.
template <class T>
__device__ void weighted_sum_of_tile(const float (*weights)[kRowsPerWarp][kTileKeys], const T* M, int64_t m0,
                                     int64_t len, int64_t dim, float (*tile)[kChunk + 1],
                                     float acc[kRowsPerWarp][kDimsPerLane]) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
  for (int chunk = 0; chunk < kMaxChunks; ++chunk) {
    const int64_t c0 = chunk * kChunk;
    if (c0 >= dim) break;
    __syncthreads();
    stage_chunk(M, m0, len, c0, dim, tile);
    __syncthreads();
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int c = lane + 32 * half;
#pragma unroll
      for (int rr = 0; rr < kRowsPerWarp; ++rr) {
        float s = 0.f;
        for (int t = 0; t < kTileKeys; ++t) s += weights[warp][rr][t] * tile[t][c];
        acc[rr][2 * chunk + half] += s;
      }
    }
  }
}

// ------------------------------------------------------------------------------------- forward

template <class T>
__global__ void __launch_bounds__(kThreads) forward_kernel(const T* q, const T* k, const T* v, const uint8_t* kpm,
                                                           const T* bias, Geometry g, T* out, float* lse) {
  __shared__ float q_rows[kBlockRows][kMaxHeadDim];
  __shared__ float tile[kTileKeys][kChunk + 1];
  __shared__ float probs[kWarps][kRowsPerWarp][kTileKeys];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row_blocks = (g.q_len + kBlockRows - 1) / kBlockRows;
  const int64_t bh = blockIdx.x / row_blocks, b = bh / g.heads, h = bh % g.heads;
  const int64_t i0 = (blockIdx.x % row_blocks) * kBlockRows;
  const int64_t kv = b * g.kv_heads + h / g.group();
  const T* kh = k + kv * g.k_len * g.head_dim;
  const T* vh = v + kv * g.k_len * g.value_dim;
  stage_rows(q + bh * g.q_len * g.head_dim, i0, g.q_len, g.head_dim, q_rows);

  float m[kRowsPerWarp], l[kRowsPerWarp], acc[kRowsPerWarp][kDimsPerLane];
  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    m[rr] = -INFINITY;
    l[rr] = 0.f;
    for (int c = 0; c < kDimsPerLane; ++c) acc[rr][c] = 0.f;
  }
  const int64_t last_row = (i0 + kBlockRows < g.q_len ? i0 + kBlockRows : g.q_len) - 1;
  const int64_t key_end = g.key_end(last_row);
  for (int64_t j0 = 0; j0 < key_end; j0 += kTileKeys) {
    float s[kRowsPerWarp] = {};
    dot_rows_with_tile(q_rows, kh, j0, g.k_len, g.head_dim, tile, s);
    const int64_t j = j0 + lane;
    for (int rr = 0; rr < kRowsPerWarp; ++rr) {
      const int64_t i = i0 + warp * kRowsPerWarp + rr;
      float x = -INFINITY;
      if (g.visible(kpm, b, i, j)) x = g.logit(s[rr], bias, b, h, i, j);
      const float m_new = fmaxf(m[rr], warp_max(x));
      float p = 0.f, alpha = 1.f;
      if (m_new != -INFINITY) {
        p = expf(x - m_new);
        alpha = expf(m[rr] - m_new);
      }
      l[rr] = l[rr] * alpha + warp_sum(p);
      m[rr] = m_new;
      for (int c = 0; c < kDimsPerLane; ++c) acc[rr][c] *= alpha;
      probs[warp][rr][lane] = i < g.q_len && j < g.k_len ? p * g.dropout_factor(b, h, i, j) : 0.f;
    }
    weighted_sum_of_tile(probs, vh, j0, g.k_len, g.value_dim, tile, acc);
  }
  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    const int64_t i = i0 + warp * kRowsPerWarp + rr;
    if (i >= g.q_len) continue;
    const float inv = l[rr] > 0.f ? 1.f / l[rr] : 0.f;
    T* o = out + (bh * g.q_len + i) * g.value_dim;
#pragma unroll
    for (int c = 0; c < kDimsPerLane; ++c) {
      const int64_t dim = (c / 2) * kChunk + (c % 2) * 32 + lane;
      if (dim < g.value_dim) o[dim] = from_float<T>(acc[rr][c] * inv);
    }
    if (lane == 0) lse[bh * g.q_len + i] = l[rr] > 0.f ? m[rr] + logf(l[rr]) : -INFINITY;
  }
}

// ------------------------------------------------------------------------------------- backward

// lse_use = L, or +inf for a row that saw no key (so P = e^{S − L} = 0 there).
__global__ void __launch_bounds__(kThreads) backward_prepare_kernel(const float* lse, int64_t rows, float* lse_use) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; r < rows; r += step)
    lse_use[r] = lse[r] == -INFINITY ? INFINITY : lse[r];
}

// Row statistics, dQ, and dS into the bias gradient. Blocks as in the forward.
//
// A first pass over the key tiles computes each row's D and a correction of P, written to `delta`
// and `row_corr` for the dK/dV kernel. Measured on an H200 against the float64 reference, the
// FlashAttention-2 shortcuts gave key gradients at 6x torch's error (the parity rule allows 2x):
// D = dO·O takes O as rounded to the output dtype, and P = e^{S − L} from the float32 L = m + log l
// is off by a factor e^{ε}, ε ≈ ulp(L), in a whole row. Here P̃ = e^{S − L}/z with
// z = Σ_j e^{S_j − L}, and D = Σ_j P̃_j z_j dP_j − dL (z_j the dropout factor), as torch's softmax
// backward forms it; the errors of dP then cancel in dP − D. Costs two tile products of nine.
template <class T>
__global__ void __launch_bounds__(kThreads)
    backward_dq_kernel(const T* q, const T* k, const T* v, const uint8_t* kpm, const T* bias, Geometry g,
                       const T* dout, const float* dlse, const float* lse_use, T* dq, T* dbias_full,
                       float* ds_scratch, float* delta, float* row_corr) {
  __shared__ float q_rows[kBlockRows][kMaxHeadDim];
  __shared__ float do_rows[kBlockRows][kMaxHeadDim];
  __shared__ float tile[kTileKeys][kChunk + 1];
  __shared__ float grads[kWarps][kRowsPerWarp][kTileKeys];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row_blocks = (g.q_len + kBlockRows - 1) / kBlockRows;
  const int64_t bh = blockIdx.x / row_blocks, b = bh / g.heads, h = bh % g.heads;
  const int64_t i0 = (blockIdx.x % row_blocks) * kBlockRows;
  const int64_t kv = b * g.kv_heads + h / g.group();
  const T* kh = k + kv * g.k_len * g.head_dim;
  const T* vh = v + kv * g.k_len * g.value_dim;
  stage_rows(q + bh * g.q_len * g.head_dim, i0, g.q_len, g.head_dim, q_rows);
  stage_rows(dout + bh * g.q_len * g.value_dim, i0, g.q_len, g.value_dim, do_rows);

  const int64_t last_row = (i0 + kBlockRows < g.q_len ? i0 + kBlockRows : g.q_len) - 1;
  const int64_t key_end = g.key_end(last_row);
  // Every key tile of this block's rows: per_key(rr, i, j, seen, p, dp) for each row rr of the warp and
  // key j = j0 + lane, with p = e^{S − L} (0 where hidden) and dp = dO_i·V_j times the dropout factor;
  // then per_tile(j0). Both passes below walk the keys this way.
  const auto key_tiles = [&](auto per_key, auto per_tile) {
    for (int64_t j0 = 0; j0 < key_end; j0 += kTileKeys) {
      float s[kRowsPerWarp] = {}, dp[kRowsPerWarp] = {};
      dot_rows_with_tile(q_rows, kh, j0, g.k_len, g.head_dim, tile, s);
      dot_rows_with_tile(do_rows, vh, j0, g.k_len, g.value_dim, tile, dp);
      const int64_t j = j0 + lane;
      for (int rr = 0; rr < kRowsPerWarp; ++rr) {
        const int64_t i = i0 + warp * kRowsPerWarp + rr;
        const bool seen = g.visible(kpm, b, i, j);
        const float p = seen ? expf(g.logit(s[rr], bias, b, h, i, j) - lse_use[bh * g.q_len + i]) : 0.f;
        per_key(rr, i, j, seen, p, seen ? dp[rr] * g.dropout_factor(b, h, i, j) : 0.f);
      }
      per_tile(j0);
    }
  };
  double z_sum[kRowsPerWarp] = {}, pdp_sum[kRowsPerWarp] = {};  // in double: these sums are the point
  key_tiles(
      [&](int rr, int64_t, int64_t, bool seen, float p, float dp) {
        if (!seen) return;
        z_sum[rr] += p;
        pdp_sum[rr] += static_cast<double>(p) * dp;
      },
      [](int64_t) {});
  float corr[kRowsPerWarp], row_delta[kRowsPerWarp];
  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    const double z = warp_sum(z_sum[rr]);
    const double nonzero = z > 0 ? z : 1.0;  // z = 0: a row that saw no key (P = 0 throughout)
    corr[rr] = static_cast<float>(1.0 / nonzero);
    const int64_t i = i0 + warp * kRowsPerWarp + rr;
    row_delta[rr] = static_cast<float>(warp_sum(pdp_sum[rr]) / nonzero) -
                    (dlse && i < g.q_len ? dlse[bh * g.q_len + i] : 0.f);
    if (lane == 0 && i < g.q_len) {
      row_corr[bh * g.q_len + i] = corr[rr];
      delta[bh * g.q_len + i] = row_delta[rr];
    }
  }
  if (!dq && !dbias_full && !ds_scratch) return;

  float acc[kRowsPerWarp][kDimsPerLane] = {};
  key_tiles(
      [&](int rr, int64_t i, int64_t j, bool seen, float p, float dp) {
        const float ds = seen ? p * corr[rr] * (dp - row_delta[rr]) : 0.f;
        if (i < g.q_len && j < g.k_len) {
          if (dbias_full) dbias_full[(bh * g.q_len + i) * g.k_len + j] = from_float<T>(ds);
          if (ds_scratch) ds_scratch[(bh * g.q_len + i) * g.k_len + j] = ds;
        }
        grads[warp][rr][lane] = ds;
      },
      [&](int64_t j0) { weighted_sum_of_tile(grads, kh, j0, g.k_len, g.head_dim, tile, acc); });
  if (!dq) return;
  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    const int64_t i = i0 + warp * kRowsPerWarp + rr;
    if (i >= g.q_len) continue;
    T* o = dq + (bh * g.q_len + i) * g.head_dim;
#pragma unroll
    for (int c = 0; c < kDimsPerLane; ++c) {
      const int64_t dim = (c / 2) * kChunk + (c % 2) * 32 + lane;
      if (dim < g.head_dim) o[dim] = from_float<T>(acc[rr][c] * g.scale);
    }
  }
}

// dK, dV: one block per (b, kv head, 16 keys); lanes are queries. Loops over the query heads of the group.
template <class T>
__global__ void __launch_bounds__(kThreads)
    backward_dkdv_kernel(const T* q, const T* k, const T* v, const uint8_t* kpm, const T* bias, Geometry g,
                         const T* dout, const float* delta, const float* lse_use, const float* row_corr, T* dk,
                         T* dv) {
  __shared__ float k_rows[kBlockRows][kMaxHeadDim];
  __shared__ float v_rows[kBlockRows][kMaxHeadDim];
  __shared__ float tile[kTileKeys][kChunk + 1];
  __shared__ float probs[kWarps][kRowsPerWarp][kTileKeys];
  __shared__ float grads[kWarps][kRowsPerWarp][kTileKeys];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t key_blocks = (g.k_len + kBlockRows - 1) / kBlockRows;
  const int64_t kv = blockIdx.x / key_blocks, b = kv / g.kv_heads, hk = kv % g.kv_heads;
  const int64_t j0 = (blockIdx.x % key_blocks) * kBlockRows;
  stage_rows(k + kv * g.k_len * g.head_dim, j0, g.k_len, g.head_dim, k_rows);
  stage_rows(v + kv * g.k_len * g.value_dim, j0, g.k_len, g.value_dim, v_rows);

  float dk_acc[kRowsPerWarp][kDimsPerLane] = {}, dv_acc[kRowsPerWarp][kDimsPerLane] = {};
  // Causal: query i sees key j0 from i = j0 − (Tk − Tq) on.
  int64_t first_row = g.causal ? j0 - (g.k_len - g.q_len) : 0;
  first_row = first_row < 0 ? 0 : first_row;
  for (int64_t h = hk * g.group(); h < (hk + 1) * g.group(); ++h) {
    const int64_t bh = b * g.heads + h;
    const T* qh = q + bh * g.q_len * g.head_dim;
    const T* doh = dout + bh * g.q_len * g.value_dim;
    for (int64_t i0 = first_row / kTileKeys * kTileKeys; i0 < g.q_len; i0 += kTileKeys) {
      float s[kRowsPerWarp] = {}, dp[kRowsPerWarp] = {};
      dot_rows_with_tile(k_rows, qh, i0, g.q_len, g.head_dim, tile, s);
      dot_rows_with_tile(v_rows, doh, i0, g.q_len, g.value_dim, tile, dp);
      const int64_t i = i0 + lane;
      for (int rr = 0; rr < kRowsPerWarp; ++rr) {
        const int64_t j = j0 + warp * kRowsPerWarp + rr;
        float p_dropped = 0.f, ds = 0.f;
        if (g.visible(kpm, b, i, j)) {
          const int64_t row = bh * g.q_len + i;
          const float x = g.logit(s[rr], bias, b, h, i, j);
          const float p = expf(x - lse_use[row]) * row_corr[row];
          const float z = g.dropout_factor(b, h, i, j);
          p_dropped = p * z;
          ds = p * (dp[rr] * z - delta[row]);
        }
        probs[warp][rr][lane] = p_dropped;
        grads[warp][rr][lane] = ds;
      }
      weighted_sum_of_tile(probs, doh, i0, g.q_len, g.value_dim, tile, dv_acc);
      weighted_sum_of_tile(grads, qh, i0, g.q_len, g.head_dim, tile, dk_acc);
    }
  }
  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    const int64_t j = j0 + warp * kRowsPerWarp + rr;
    if (j >= g.k_len) continue;
#pragma unroll
    for (int c = 0; c < kDimsPerLane; ++c) {
      const int64_t dim = (c / 2) * kChunk + (c % 2) * 32 + lane;
      if (dk && dim < g.head_dim) dk[(kv * g.k_len + j) * g.head_dim + dim] = from_float<T>(dk_acc[rr][c] * g.scale);
      if (dv && dim < g.value_dim) dv[(kv * g.k_len + j) * g.value_dim + dim] = from_float<T>(dv_acc[rr][c]);
    }
  }
}

// grad_bias[e] = Σ of dS over the (b, h, i, j) that read bias element e, in index order.
template <class T>
__global__ void __launch_bounds__(kThreads) reduce_bias_kernel(const float* ds, Geometry g, int64_t bias_sizes0,
                                                               int64_t bias_sizes1, int64_t bias_sizes2,
                                                               int64_t bias_sizes3, int64_t numel, T* dbias) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; e < numel; e += step) {
    int64_t rest = e;
    const int64_t jj = rest % bias_sizes3;
    rest /= bias_sizes3;
    const int64_t ii = rest % bias_sizes2;
    rest /= bias_sizes2;
    const int64_t hh = rest % bias_sizes1;
    const int64_t bb = rest / bias_sizes1;
    float s = 0.f;
    for (int64_t b = bias_sizes0 == 1 ? 0 : bb; b < (bias_sizes0 == 1 ? g.batch : bb + 1); ++b)
      for (int64_t h = bias_sizes1 == 1 ? 0 : hh; h < (bias_sizes1 == 1 ? g.heads : hh + 1); ++h)
        for (int64_t i = bias_sizes2 == 1 ? 0 : ii; i < (bias_sizes2 == 1 ? g.q_len : ii + 1); ++i)
          for (int64_t j = bias_sizes3 == 1 ? 0 : jj; j < (bias_sizes3 == 1 ? g.k_len : jj + 1); ++j)
            s += ds[((b * g.heads + h) * g.q_len + i) * g.k_len + j];
    dbias[e] = from_float<T>(s);
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads) fill_zero_kernel(T* data, int64_t n) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; e < n; e += step)
    data[e] = from_float<T>(0.f);
}

__global__ void __launch_bounds__(kThreads) dropout_mask_kernel(uint8_t* mask, int64_t n, uint64_t key,
                                                                uint64_t threshold) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; e < n; e += step)
    mask[e] = threshold == 0 || dropout_keep(key, e, threshold);
}

unsigned elementwise_blocks(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < 4096 ? (blocks > 0 ? blocks : 1) : 4096);
}

template <class T>
void fill_zero(T* data, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  fill_zero_kernel<T><<<elementwise_blocks(n), kThreads, 0, stream>>>(data, n);
  REPLEARN_CUDA_LAUNCH_CHECK();
}

Geometry make_geometry(const AttentionDims& d, double scale, bool causal, double dropout_p, int64_t seed) {
  Geometry g{d.batch, d.heads, d.kv_heads, d.q_len, d.k_len, d.head_dim, d.value_dim,
             {d.bias_stride[0], d.bias_stride[1], d.bias_stride[2], d.bias_stride[3]},
             static_cast<float>(scale), causal, dropout_key(seed), dropout_threshold(dropout_p),
             dropout_p < 1 ? static_cast<float>(1.0 / (1.0 - dropout_p)) : 0.f};
  return g;
}

// A bias that is not full-shaped sends dS through the scratch buffer (see the header comment).
bool bias_is_full(const AttentionDims& d) {
  return d.bias_numel == d.batch * d.heads * d.q_len * d.k_len;
}

int64_t align256(int64_t n) { return (n + 255) / 256 * 256; }

template <class T>
const T* ptr_or_null(const OptView& v) {
  return v ? v->data_as<T>() : nullptr;
}

}  // namespace

template <>
void attention_forward<DeviceType::CUDA>(const TensorView& q, const TensorView& k, const TensorView& v,
                                         const OptView& key_padding_mask, const OptView& attn_bias, double scale,
                                         bool causal, double dropout_p, int64_t seed, const TensorView& out,
                                         const TensorView& lse, std::uintptr_t stream) {
  const AttentionDims d =
      check_attention_forward(DeviceType::CUDA, q, k, v, key_padding_mask, attn_bias, scale, dropout_p, out, lse);
  if (out.numel() == 0) return;
  const Geometry g = make_geometry(d, scale, causal, dropout_p, seed);
  const int64_t blocks = d.batch * d.heads * ((d.q_len + kBlockRows - 1) / kBlockRows);
  dispatch_cuda_floating(q.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    forward_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, as_stream(stream)>>>(
        q.data_as<T>(), k.data_as<T>(), v.data_as<T>(), ptr_or_null<uint8_t>(key_padding_mask),
        ptr_or_null<T>(attn_bias), g, out.data_as<T>(), lse.data_as<float>());
    REPLEARN_CUDA_LAUNCH_CHECK();
  });
}

template <>
int64_t attention_backward_workspace_size<DeviceType::CUDA>(const TensorView& q, const TensorView& k,
                                                            const TensorView& v, const OptView& attn_bias,
                                                            bool need_grad_bias) {
  if (q.ndim != 4 || k.ndim != 4 || v.ndim != 4) return 0;
  const int64_t rows = q.size(0) * q.size(1) * q.size(2);
  int64_t bytes = 3 * align256(rows * static_cast<int64_t>(sizeof(float)));  // delta, lse_use, row_corr
  const int64_t full = rows * k.size(2);
  if (need_grad_bias && attn_bias && attn_bias->numel() != full) bytes += align256(full * sizeof(float));
  return bytes;
}

template <>
void attention_backward<DeviceType::CUDA>(const TensorView& grad_out, const OptView& grad_lse, const TensorView& q,
                                          const TensorView& k, const TensorView& v, const TensorView& out,
                                          const TensorView& lse, const OptView& key_padding_mask,
                                          const OptView& attn_bias, double scale, bool causal, double dropout_p,
                                          int64_t seed, const OptView& grad_q, const OptView& grad_k,
                                          const OptView& grad_v, const OptView& grad_bias, const OptView& workspace,
                                          std::uintptr_t stream) {
  const int64_t need_bytes =
      attention_backward_workspace_size<DeviceType::CUDA>(q, k, v, attn_bias, grad_bias.has_value());
  const AttentionDims d = check_attention_backward(DeviceType::CUDA, grad_out, grad_lse, q, k, v, out, lse,
                                                   key_padding_mask, attn_bias, scale, dropout_p, grad_q, grad_k,
                                                   grad_v, grad_bias, workspace, need_bytes);
  const Geometry g = make_geometry(d, scale, causal, dropout_p, seed);
  const cudaStream_t s = as_stream(stream);
  dispatch_cuda_floating(q.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    T* dq = grad_q ? grad_q->data_as<T>() : nullptr;
    T* dk = grad_k ? grad_k->data_as<T>() : nullptr;
    T* dv = grad_v ? grad_v->data_as<T>() : nullptr;
    T* dbias = grad_bias ? grad_bias->data_as<T>() : nullptr;
    if (q.numel() == 0 || k.numel() == 0 || out.numel() == 0) {  // gradients of a sum over nothing
      if (dq) fill_zero(dq, grad_q->numel(), s);
      if (dk) fill_zero(dk, grad_k->numel(), s);
      if (dv) fill_zero(dv, grad_v->numel(), s);
      if (dbias) fill_zero(dbias, grad_bias->numel(), s);
      return;
    }
    const int64_t rows = d.batch * d.heads * d.q_len;
    float* delta = reinterpret_cast<float*>(workspace->data);
    float* lse_use = reinterpret_cast<float*>(workspace->data_as<uint8_t>() + align256(rows * sizeof(float)));
    float* row_corr = reinterpret_cast<float*>(workspace->data_as<uint8_t>() + 2 * align256(rows * sizeof(float)));
    float* ds_scratch = nullptr;
    T* dbias_full = nullptr;
    if (dbias) {
      if (bias_is_full(d)) {
        dbias_full = dbias;
        fill_zero(dbias, d.bias_numel, s);  // tiles the causal mask skips are never written
      } else {
        ds_scratch = reinterpret_cast<float*>(workspace->data_as<uint8_t>() + 3 * align256(rows * sizeof(float)));
        fill_zero(ds_scratch, rows * d.k_len, s);
      }
    }
    const T* qp = q.data_as<T>();
    const T* kp = k.data_as<T>();
    const T* vp = v.data_as<T>();
    const uint8_t* kpm = ptr_or_null<uint8_t>(key_padding_mask);
    const T* bias = ptr_or_null<T>(attn_bias);
    const T* dout = grad_out.data_as<T>();
    backward_prepare_kernel<<<elementwise_blocks(rows), kThreads, 0, s>>>(lse.data_as<float>(), rows, lse_use);
    REPLEARN_CUDA_LAUNCH_CHECK();
    {  // always: it also computes the row corrections the dK/dV kernel reads
      const int64_t blocks = d.batch * d.heads * ((d.q_len + kBlockRows - 1) / kBlockRows);
      backward_dq_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, s>>>(
          qp, kp, vp, kpm, bias, g, dout, ptr_or_null<float>(grad_lse), lse_use, dq, dbias_full, ds_scratch, delta,
          row_corr);
      REPLEARN_CUDA_LAUNCH_CHECK();
    }
    if (dk || dv) {
      const int64_t blocks = d.batch * d.kv_heads * ((d.k_len + kBlockRows - 1) / kBlockRows);
      backward_dkdv_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, s>>>(qp, kp, vp, kpm, bias, g, dout,
                                                                                  delta, lse_use, row_corr, dk, dv);
      REPLEARN_CUDA_LAUNCH_CHECK();
    }
    if (ds_scratch) {
      const TensorView& bv = *attn_bias;
      reduce_bias_kernel<T><<<elementwise_blocks(d.bias_numel), kThreads, 0, s>>>(
          ds_scratch, g, bv.size(0), bv.size(1), bv.size(2), bv.size(3), d.bias_numel, dbias);
      REPLEARN_CUDA_LAUNCH_CHECK();
    }
  });
}

template <>
void attention_dropout_mask<DeviceType::CUDA>(const TensorView& mask, double dropout_p, int64_t seed,
                                              std::uintptr_t stream) {
  check_dropout_mask(DeviceType::CUDA, mask, dropout_p);
  const int64_t n = mask.numel();
  if (n == 0) return;
  dropout_mask_kernel<<<elementwise_blocks(n), kThreads, 0, as_stream(stream)>>>(
      mask.data_as<uint8_t>(), n, dropout_key(seed), dropout_threshold(dropout_p));
  REPLEARN_CUDA_LAUNCH_CHECK();
}

}  // namespace replearn::attention
