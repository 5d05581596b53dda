// Normalization family, CUDA kernels (float32, float16, bfloat16; arithmetic in float32).
//
//   layer_norm   y = (x − μ)·rstd·γ + β, rstd = 1/√(σ² + ε), per row        (Ba et al. 2016)
//   rms_norm     y = x·rstd·γ,           rstd = 1/√(mean(x²) + ε)           (Zhang & Sennrich 2019)
//   group_norm   layer norm of each (sample, group) slab, γ/β per channel   (Wu & He 2018; instance
//                norm is G = C, Ulyanov et al. 2016)
//   batch_norm   statistics per channel over (N, *), running averages      (Ioffe & Szegedy 2015)
//   weight_norm  w = g·v/‖v‖ per slice of v                                 (Salimans & Kingma 2016)
//   spectral_norm w = W/σ, σ = uᵀWv by power iteration (Miyato et al. 2018); with coeff,
//                W/max(1, σ/coeff) (Behrmann et al. 2019)
// Backward (x̂ = (x − μ)·rstd, g = dy·γ, n values per statistic), as in cpu.cpp:
//   dx = rstd·(g − mean(g) − x̂·mean(g·x̂))   rms norm: without mean(g)
//   dx = γ·rstd·dy                           batch norm in evaluation (the statistics are constants)
//   dγ = Σ dy·x̂,  dβ = Σ dy  over the values that share a parameter.
//
// Why it is written this way. Every kernel is memory bound, so each reads its input from DRAM as few
// times as possible and keeps statistics in float32 registers whatever the storage dtype.
// - Rows (layer/rms norm) and group slabs are contiguous, so one kernel serves all three: a team of
//   threads per row — a warp when the row has at most 1024 values (eight rows per block, no barriers),
//   the whole block otherwise. Statistics take two passes, mean then Σ(x − μ)²: the second read of the
//   row hits L1/L2 and is free of the cancellation of E[x²] − E[x]² in float32.
// - Batch norm channels are strided over (N, C, S) and can be far larger than L2, so their statistics
//   take one pass of shifted sums Σ(x − K), Σ(x − K)² with K the channel's first value (as cpu.cpp).
//   The API gives batch norm no workspace, so each channel is reduced by one block (deterministic,
//   no atomics); the forward normalization is a separate kernel over all of x.
// - Parameter gradients are deterministic (no float atomics): partial sums per (row slice, column) or
//   per (sample, channel) go to the caller's workspace, and a second kernel adds them in a fixed order.
//   The workspace size is a function of the shape alone, so the result is bit-identical run to run.
// - Loops that cross a channel boundary (batch norm, group slabs, weight norm slices) keep their
//   (outer, inner) position with one division per thread (IndexWalk), not one per element.
// - Only the three storage dtypes are instantiated; layout choices are runtime arguments.
#include <algorithm>
#include <climits>
#include <cstdint>

#include "core/check.h"
#include "core/cuda_utils.cuh"
#include "norm/norm.h"

namespace replearn::norm {

namespace {

constexpr int kWarpRowMaxCols = 1024;  // rows up to this long get one warp each (32 values per lane)
constexpr int kRowsPerWarpBlock = 8;   // warp-per-row blocks: 8 warps, 256 threads
constexpr int kParamTileCols = 32;     // parameter-gradient partials: one warp-wide read per row ...
constexpr int kParamRowLanes = 8;      // ... by 8 warps, each taking every 8th row of the slice
constexpr int64_t kParamTargetBlocks = 1024;  // ~8 blocks per SM on a 132-SM H100: DRAM saturated
constexpr int64_t kMinRowsPerSlice = 64;      // fewer rows per block would cost more in partials
constexpr int kElementwiseThreads = 256;
// block_threads_for's ceiling. Kernels that may run with it declare __launch_bounds__(kMaxBlockThreads, 1):
// at most 64 registers, so a 1024-thread launch never fails, and without ptxas squeezing them to 32
// (two such blocks per SM) and spilling.
constexpr int kMaxBlockThreads = 1024;
constexpr int64_t kMaxGridX = INT_MAX;  // grid.x limit; kernels stride over what does not fit
constexpr int64_t kNoWrap = INT64_MAX;

// ------------------------------------------------------------------------------- device helpers

// block_sum, then the barrier its contract asks for before `scratch` is reused.
__device__ __forceinline__ float block_total(float v, float* scratch) {
  v = block_sum(v, scratch);
  __syncthreads();
  return v;
}

// The threads that share one row: a warp (several rows per block) or the whole block.
struct RowTeam {
  bool whole_block;
  int lane, size;  // this thread's index in the team; the team's size
  int64_t first_row, row_stride;
};

__device__ __forceinline__ RowTeam row_team(bool warp_per_row) {
  if (warp_per_row) {
    const int warps = static_cast<int>(blockDim.x >> 5);
    return {false, static_cast<int>(threadIdx.x & 31), 32,
            static_cast<int64_t>(blockIdx.x) * warps + static_cast<int64_t>(threadIdx.x >> 5),
            static_cast<int64_t>(gridDim.x) * warps};
  }
  return {true, static_cast<int>(threadIdx.x), static_cast<int>(blockDim.x), static_cast<int64_t>(blockIdx.x),
          static_cast<int64_t>(gridDim.x)};
}

// Sum over the team; `whole_block` is uniform across the block, so the barriers in block_total are safe.
__device__ __forceinline__ float team_sum(const RowTeam& team, float v, float* scratch) {
  return team.whole_block ? block_total(v, scratch) : warp_sum(v);
}

// A thread's strided walk over flat indices i = start, start + step, ... of an (outer, inner) layout,
// keeping outer = i / inner_size and inner = i % inner_size current with one division up front. With
// wrap ≥ 1 the outer index is kept modulo wrap (the channel of an (N, C, S) index); kNoWrap: never.
struct IndexWalk {
  int64_t outer, inner;
  int64_t step_outer, step_inner, inner_size, wrap;

  __device__ IndexWalk(int64_t start, int64_t step, int64_t inner_size_, int64_t wrap_)
      : inner_size(inner_size_ > 0 ? inner_size_ : 1), wrap(wrap_) {
    outer = (start / inner_size) % wrap;
    inner = start % inner_size;
    step_outer = (step / inner_size) % wrap;
    step_inner = step % inner_size;
  }
  // outer + step_outer + carry < 2·wrap, so one subtraction restores outer < wrap.
  __device__ __forceinline__ void advance() {
    inner += step_inner;
    outer += step_outer;
    if (inner >= inner_size) {
      inner -= inner_size;
      ++outer;
    }
    if (outer >= wrap) outer -= wrap;
  }
};

// Which affine parameter belongs to value j of row r. Layer/rms norm: parameter j ({1, cols, 1}).
// Group norm rows are (sample, group) slabs of channels_per_group planes of `spatial` values, and the
// parameter is the channel's: (r % groups)·channels_per_group + j / spatial.
struct ParamMap {
  int64_t groups, channels_per_group, spatial;
};

// ------------------------------------------------------------------------ row norms (+ group norm)

// centered = false: rms norm (μ ≡ 0, no bias); otherwise layer/group norm. mean_out, rstd_out: (rows)
// float, each optional (inference needs only y).
template <class T>
__global__ void __launch_bounds__(kMaxBlockThreads, 1)
    row_norm_forward_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b, RowDims d,
        ParamMap pm, float inv_cols, float eps, bool warp_per_row, bool centered, T* __restrict__ y,
        float* __restrict__ mean_out, float* __restrict__ rstd_out) {
  __shared__ float scratch[32];
  const RowTeam team = row_team(warp_per_row);
  for (int64_t r = team.first_row; r < d.rows; r += team.row_stride) {
    const T* xr = x + r * d.cols;  // (cols)
    float mean = 0.f;
    if (centered) {
      float sum = 0.f;
      for (int64_t j = team.lane; j < d.cols; j += team.size) sum += to_float(xr[j]);
      mean = team_sum(team, sum, scratch) * inv_cols;
    }
    float sq = 0.f;  // second pass: the row is in L1/L2, and (x − μ)² has no cancellation
    for (int64_t j = team.lane; j < d.cols; j += team.size) {
      const float c = to_float(xr[j]) - mean;
      sq += c * c;
    }
    const float rstd = rsqrtf(team_sum(team, sq, scratch) * inv_cols + eps);
    if (team.lane == 0) {
      if (mean_out) mean_out[r] = mean;
      if (rstd_out) rstd_out[r] = rstd;
    }
    T* yr = y + r * d.cols;
    const int64_t param_first = (r % pm.groups) * pm.channels_per_group;
    IndexWalk walk(team.lane, team.size, pm.spatial, kNoWrap);
    for (int64_t j = team.lane; j < d.cols; j += team.size, walk.advance()) {
      const int64_t p = param_first + walk.outer;
      float v = (to_float(xr[j]) - mean) * rstd;
      if (w) v *= to_float(w[p]);
      if (b) v += to_float(b[p]);
      yr[j] = from_float<T>(v);
    }
  }
}

// dx = rstd·(g − mean(g) − x̂·mean(g·x̂)), g = dy·γ, per row; mean == nullptr: rms norm (no mean(g)).
template <class T>
__global__ void __launch_bounds__(kMaxBlockThreads, 1)
    row_norm_backward_dx_kernel(const T* __restrict__ dy, const T* __restrict__ x, const float* __restrict__ mean,
        const float* __restrict__ rstd, const T* __restrict__ w, RowDims d, ParamMap pm, float inv_cols,
        bool warp_per_row, T* __restrict__ dx) {
  __shared__ float scratch[32];
  const RowTeam team = row_team(warp_per_row);
  const bool centered = mean != nullptr;
  for (int64_t r = team.first_row; r < d.rows; r += team.row_stride) {
    if (centered && d.cols == 1) {  // one value per statistic: x̂ = 0, g = mean(g), dx exactly 0
      if (team.lane == 0) dx[r] = from_float<T>(0.f);  // (a contracted Σ g left a residue; cpu.cpp)
      continue;
    }
    const T* xr = x + r * d.cols;
    const T* dyr = dy + r * d.cols;
    const float mu = centered ? mean[r] : 0.f, rs = rstd[r];
    const int64_t param_first = (r % pm.groups) * pm.channels_per_group;
    // g = dy·γ of value j, whose parameter is param_first + (its IndexWalk outer index)
    const auto grad = [&](int64_t j, int64_t outer) {
      return w ? to_float(dyr[j]) * to_float(w[param_first + outer]) : to_float(dyr[j]);
    };
    float sum_g = 0.f, sum_g_xhat = 0.f;
    IndexWalk walk(team.lane, team.size, pm.spatial, kNoWrap);
    for (int64_t j = team.lane; j < d.cols; j += team.size, walk.advance()) {
      const float xhat = (to_float(xr[j]) - mu) * rs;
      const float g = grad(j, walk.outer);
      sum_g += g;
      sum_g_xhat += g * xhat;
    }
    const float mean_g_xhat = team_sum(team, sum_g_xhat, scratch) * inv_cols;
    const float mean_g = centered ? team_sum(team, sum_g, scratch) * inv_cols : 0.f;
    T* dxr = dx + r * d.cols;
    walk = IndexWalk(team.lane, team.size, pm.spatial, kNoWrap);
    for (int64_t j = team.lane; j < d.cols; j += team.size, walk.advance()) {
      const float xhat = (to_float(xr[j]) - mu) * rs;
      dxr[j] = from_float<T>(rs * (grad(j, walk.outer) - mean_g - xhat * mean_g_xhat));
    }
  }
}

// Partial column sums for dγ and dβ of a row norm. Block (column tile, row slice): 8 warps walk the
// slice's rows, each lane one column, then warp 0 adds the 8 lanes' sums in a fixed order.
// partial_dy_xhat, partial_dy: (slices, cols); partial_dy may be null (rms norm); mean null: μ ≡ 0.
template <class T>
__global__ void column_partials_kernel(const T* __restrict__ dy, const T* __restrict__ x,
                                       const float* __restrict__ mean, const float* __restrict__ rstd, RowDims d,
                                       int64_t rows_per_slice, float* __restrict__ partial_dy_xhat,
                                       float* __restrict__ partial_dy) {
  __shared__ float tile_dy_xhat[kParamRowLanes][kParamTileCols];
  __shared__ float tile_dy[kParamRowLanes][kParamTileCols];
  const int tx = static_cast<int>(threadIdx.x) % kParamTileCols;
  const int ty = static_cast<int>(threadIdx.x) / kParamTileCols;
  const int64_t row_begin = static_cast<int64_t>(blockIdx.y) * rows_per_slice;
  const int64_t row_end = row_begin + rows_per_slice < d.rows ? row_begin + rows_per_slice : d.rows;
  const int64_t col_tiles = (d.cols + kParamTileCols - 1) / kParamTileCols;
  for (int64_t tile = blockIdx.x; tile < col_tiles; tile += gridDim.x) {
    const int64_t col = tile * kParamTileCols + tx;
    float s_dy_xhat = 0.f, s_dy = 0.f;
    if (col < d.cols) {
      for (int64_t r = row_begin + ty; r < row_end; r += kParamRowLanes) {
        const int64_t i = r * d.cols + col;
        const float g = to_float(dy[i]);
        const float xhat = (to_float(x[i]) - (mean ? mean[r] : 0.f)) * rstd[r];
        s_dy_xhat += g * xhat;
        s_dy += g;
      }
    }
    tile_dy_xhat[ty][tx] = s_dy_xhat;
    tile_dy[ty][tx] = s_dy;
    __syncthreads();
    if (ty == 0 && col < d.cols) {
      float a = 0.f, c = 0.f;
      for (int k = 0; k < kParamRowLanes; ++k) {
        a += tile_dy_xhat[k][tx];
        c += tile_dy[k][tx];
      }
      const int64_t out = static_cast<int64_t>(blockIdx.y) * d.cols + col;
      partial_dy_xhat[out] = a;
      if (partial_dy) partial_dy[out] = c;
    }
    __syncthreads();  // warp 0 has read the tiles before the next tile overwrites them
  }
}

// out[j] = Σ_s partials[s, j] in order s = 0, 1, ...; partials: (slices, cols), out: (cols).
template <class T>
__global__ void sum_partials_kernel(const float* __restrict__ partials, int64_t slices, int64_t cols,
                                    T* __restrict__ out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < cols; j += stride) {
    float s = 0.f;
    for (int64_t k = 0; k < slices; ++k) s += partials[k * cols + j];
    out[j] = from_float<T>(s);
  }
}

// Group norm parameter gradients, first step: per (sample, channel) plane of `spatial` values,
// sum_dy_xhat = Σ dy·x̂ and sum_dy = Σ dy, with the statistics of the plane's group (plane / Cg).
// sum_dy_xhat, sum_dy: (N·C) float, in the workspace.
template <class T>
__global__ void __launch_bounds__(kMaxBlockThreads, 1)
    plane_sums_kernel(const T* __restrict__ dy, const T* __restrict__ x, const float* __restrict__ mean,
        const float* __restrict__ rstd, RowDims planes, int64_t channels_per_group, bool warp_per_row,
        float* __restrict__ sum_dy_xhat, float* __restrict__ sum_dy) {
  __shared__ float scratch[32];
  const RowTeam team = row_team(warp_per_row);
  for (int64_t p = team.first_row; p < planes.rows; p += team.row_stride) {
    const T* xp = x + p * planes.cols;  // (spatial)
    const T* dyp = dy + p * planes.cols;
    const int64_t stat = p / channels_per_group;
    const float mu = mean[stat], rs = rstd[stat];
    float s = 0.f, s_xc = 0.f;  // Σ dy, Σ dy·(x − μ)
    for (int64_t j = team.lane; j < planes.cols; j += team.size) {
      const float g = to_float(dyp[j]);
      s += g;
      s_xc += g * (to_float(xp[j]) - mu);
    }
    s = team_sum(team, s, scratch);
    s_xc = team_sum(team, s_xc, scratch);
    if (team.lane == 0) {
      sum_dy_xhat[p] = s_xc * rs;
      sum_dy[p] = s;
    }
  }
}

// ------------------------------------------------------------------------------------ batch norm

// Training statistics, one block per channel of x (N, C, S): shifted sums in one pass, then
// save_mean/save_rstd and, when given, the running averages (unbiased variance: `unbiased` = n/(n − 1)).
template <class T>
__global__ void __launch_bounds__(kMaxBlockThreads, 1)
    batch_norm_stats_kernel(const T* __restrict__ x, ChannelDims d, float inv_count, float unbiased, float momentum,
        float eps, T* __restrict__ running_mean, T* __restrict__ running_var, float* __restrict__ save_mean,
        float* __restrict__ save_rstd) {
  __shared__ float scratch[32];
  const int64_t count = d.batch * d.spatial;
  for (int64_t c = blockIdx.x; c < d.channels; c += gridDim.x) {
    const float shift = finite_shift(to_float(x[c * d.spatial]));  // K: the channel's first value
    float sum = 0.f, sum_sq = 0.f;
    IndexWalk ns(threadIdx.x, blockDim.x, d.spatial, kNoWrap);  // (n, s)
    for (int64_t i = threadIdx.x; i < count; i += blockDim.x, ns.advance()) {
      const float v = to_float(x[(ns.outer * d.channels + c) * d.spatial + ns.inner]) - shift;
      sum += v;
      sum_sq += v * v;
    }
    sum = block_total(sum, scratch);
    sum_sq = block_total(sum_sq, scratch);
    if (threadIdx.x == 0) {
      const float centered_mean = sum * inv_count;
      const float var = clamp_nonnegative(sum_sq * inv_count - centered_mean * centered_mean);  // biased
      const float mean = shift + centered_mean;
      save_mean[c] = mean;
      save_rstd[c] = rsqrtf(var + eps);
      if (running_mean) {
        running_mean[c] = from_float<T>((1.f - momentum) * to_float(running_mean[c]) + momentum * mean);
        running_var[c] = from_float<T>((1.f - momentum) * to_float(running_var[c]) + momentum * var * unbiased);
      }
    }
  }
}

// Evaluation: the running averages are the statistics.
template <class T>
__global__ void batch_norm_eval_stats_kernel(const T* __restrict__ running_mean, const T* __restrict__ running_var,
                                             int64_t channels, float eps, float* __restrict__ save_mean,
                                             float* __restrict__ save_rstd) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < channels; c += stride) {
    save_mean[c] = to_float(running_mean[c]);
    save_rstd[c] = rsqrtf(to_float(running_var[c]) + eps);
  }
}

// y = (x − mean_c)·rstd_c·γ_c + β_c over all of x (N, C, S); mean, rstd: (C) float.
template <class T>
__global__ void channel_affine_kernel(const T* __restrict__ x, const float* __restrict__ mean,
                                      const float* __restrict__ rstd, const T* __restrict__ w,
                                      const T* __restrict__ b, int64_t total, int64_t channels, int64_t spatial,
                                      T* __restrict__ y) {
  const int64_t start = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  IndexWalk cs(start, stride, spatial, channels);  // outer: the channel
  for (int64_t i = start; i < total; i += stride, cs.advance()) {
    const int64_t c = cs.outer;
    const float scale = w ? rstd[c] * to_float(w[c]) : rstd[c];
    const float shift = b ? to_float(b[c]) : 0.f;
    y[i] = from_float<T>((to_float(x[i]) - mean[c]) * scale + shift);
  }
}

// One block per channel: Σ dy and Σ dy·(x − μ) over (N, S), dγ/dβ from them, then dx in a second pass
// (the API has no workspace to hand the sums to a grid-wide kernel).
//   training:   dx = γ·rstd·(dy − mean(dy) − (x − μ)·rstd²·mean(dy·(x − μ)))
//   evaluation: the statistics are constants, dx = γ·rstd·dy
template <class T>
__global__ void __launch_bounds__(kMaxBlockThreads, 1)
    batch_norm_backward_kernel(const T* __restrict__ dy, const T* __restrict__ x, const float* __restrict__ save_mean,
        const float* __restrict__ save_rstd, const T* __restrict__ w, bool training, ChannelDims d, float inv_count,
        T* __restrict__ dx, T* __restrict__ dw, T* __restrict__ db) {
  __shared__ float scratch[32];
  const int64_t count = d.batch * d.spatial;
  const bool need_sums = training || dw || db;
  for (int64_t c = blockIdx.x; c < d.channels; c += gridDim.x) {
    const float mu = save_mean[c], rs = save_rstd[c];
    float sum_dy = 0.f, sum_dy_xc = 0.f;
    if (need_sums) {
      IndexWalk ns(threadIdx.x, blockDim.x, d.spatial, kNoWrap);
      for (int64_t i = threadIdx.x; i < count; i += blockDim.x, ns.advance()) {
        const int64_t at = (ns.outer * d.channels + c) * d.spatial + ns.inner;
        const float g = to_float(dy[at]);
        sum_dy += g;
        sum_dy_xc += g * (to_float(x[at]) - mu);
      }
      sum_dy = block_total(sum_dy, scratch);
      sum_dy_xc = block_total(sum_dy_xc, scratch);
      if (threadIdx.x == 0) {
        if (db) db[c] = from_float<T>(sum_dy);
        if (dw) dw[c] = from_float<T>(sum_dy_xc * rs);
      }
    }
    if (!dx) continue;
    // dx = a·dy + bx·(x − μ) + c0
    const float a = (w ? to_float(w[c]) : 1.f) * rs;
    const float bx = training ? -a * rs * rs * sum_dy_xc * inv_count : 0.f;
    const float c0 = training ? -a * sum_dy * inv_count : 0.f;
    IndexWalk ns(threadIdx.x, blockDim.x, d.spatial, kNoWrap);
    for (int64_t i = threadIdx.x; i < count; i += blockDim.x, ns.advance()) {
      const int64_t at = (ns.outer * d.channels + c) * d.spatial + ns.inner;
      const float scaled = a * to_float(dy[at]);  // evaluation: no term in x (a NaN there stays out of dx)
      dx[at] = from_float<T>(training ? scaled + bx * (to_float(x[at]) - mu) + c0 : scaled);
    }
  }
}

// instance norm's running averages from per-(sample, channel) statistics, one thread per channel; the
// variance 1/rstd² − ε is recovered in float64 (norm.h), as on the CPU.
template <class T>
__global__ void running_stats_update_kernel(const float* __restrict__ mean, const float* __restrict__ rstd,
                                            ChannelDims d, double momentum, double eps,
                                            T* __restrict__ running_mean, T* __restrict__ running_var) {
  const double S = static_cast<double>(d.spatial);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < d.channels; c += stride) {
    double sum_mean = 0, sum_var = 0;
    for (int64_t n = 0; n < d.batch; ++n) {
      const double rs = rstd[n * d.channels + c];
      sum_mean += mean[n * d.channels + c];
      sum_var += clamp_nonnegative(1.0 / (rs * rs) - eps) * S / (S - 1);
    }
    const double rm = (1 - momentum) * to_float(running_mean[c]) + momentum * sum_mean / d.batch;
    const double rv = (1 - momentum) * to_float(running_var[c]) + momentum * sum_var / d.batch;
    running_mean[c] = from_float<T>(static_cast<float>(rm));
    running_var[c] = from_float<T>(static_cast<float>(rv));
  }
}

// ----------------------------------------------------------------------------------- weight norm

// One block per slice k of v viewed as (outer, slices, inner): ‖v_k‖, then w_k = (g_k/‖v_k‖)·v_k.
template <class T>
__global__ void __launch_bounds__(kMaxBlockThreads, 1)
    weight_norm_forward_kernel(const T* __restrict__ v, const T* __restrict__ g, SliceDims d, T* __restrict__ w,
        float* __restrict__ norm) {
  __shared__ float scratch[32];
  const int64_t per_slice = d.outer * d.inner;
  for (int64_t k = blockIdx.x; k < d.slices; k += gridDim.x) {
    float sq = 0.f;
    IndexWalk oi(threadIdx.x, blockDim.x, d.inner, kNoWrap);  // (o, i)
    for (int64_t j = threadIdx.x; j < per_slice; j += blockDim.x, oi.advance()) {
      const float value = to_float(v[(oi.outer * d.slices + k) * d.inner + oi.inner]);
      sq += value * value;
    }
    const float n = sqrtf(block_total(sq, scratch));
    if (threadIdx.x == 0 && norm) norm[k] = n;
    const float alpha = to_float(g[k]) / n;
    oi = IndexWalk(threadIdx.x, blockDim.x, d.inner, kNoWrap);
    for (int64_t j = threadIdx.x; j < per_slice; j += blockDim.x, oi.advance()) {
      const int64_t at = (oi.outer * d.slices + k) * d.inner + oi.inner;
      w[at] = from_float<T>(alpha * to_float(v[at]));
    }
  }
}

// s = Σ dw·v per slice; dg = s/‖v‖; dv = (g/‖v‖)·dw − (g·s/‖v‖³)·v. dv, dg optional.
template <class T>
__global__ void __launch_bounds__(kMaxBlockThreads, 1)
    weight_norm_backward_kernel(const T* __restrict__ dw, const T* __restrict__ v, const T* __restrict__ g,
        const float* __restrict__ norm, SliceDims d, T* __restrict__ dv, T* __restrict__ dg) {
  __shared__ float scratch[32];
  const int64_t per_slice = d.outer * d.inner;
  for (int64_t k = blockIdx.x; k < d.slices; k += gridDim.x) {
    float dot = 0.f;
    IndexWalk oi(threadIdx.x, blockDim.x, d.inner, kNoWrap);
    for (int64_t j = threadIdx.x; j < per_slice; j += blockDim.x, oi.advance()) {
      const int64_t at = (oi.outer * d.slices + k) * d.inner + oi.inner;
      dot += to_float(dw[at]) * to_float(v[at]);
    }
    const float s = block_total(dot, scratch);
    const float n = norm[k], gk = to_float(g[k]);
    if (dg && threadIdx.x == 0) dg[k] = from_float<T>(s / n);
    if (!dv) continue;
    const float alpha = gk / n, beta = -gk * s / (n * n * n);
    oi = IndexWalk(threadIdx.x, blockDim.x, d.inner, kNoWrap);
    for (int64_t j = threadIdx.x; j < per_slice; j += blockDim.x, oi.advance()) {
      const int64_t at = (oi.outer * d.slices + k) * d.inner + oi.inner;
      dv[at] = from_float<T>(alpha * to_float(dw[at]) + beta * to_float(v[at]));
    }
  }
}

// --------------------------------------------------------------------------------- spectral norm
// W (rows, cols) row-major. Each power-iteration step is two launches, y = Wᵀx (blocks of 32 columns
// read by 8 warps, so every warp reads 128 contiguous bytes per row) and y = W x (a warp per row);
// each writes its raw result in float to the workspace, and the next launch normalizes its input
// on the fly, so no launch is spent on norms. A last launch computes σ, writes w = W·scale over the
// whole grid, and its first block writes u, v and σ.

constexpr int kSpectralTileCols = 32;
constexpr int kSpectralRowLanes = 8;   // kElementwiseThreads / kSpectralTileCols
constexpr int kSpectralRowsPerBlock = kElementwiseThreads / 32;
constexpr int64_t kSpectralPartials = 256;  // backward: ⟨g, W⟩ over this many fixed slices (deterministic)
constexpr int64_t kSpectralMaxBlocks = 1024;

// The input of a matrix-vector product: the caller's vector (storage dtype, used as given) or the
// previous product's raw float result, normalized by 1/max(‖x‖, eps).
template <class T>
struct PowerVector {
  const T* user;
  const float* raw;
  __device__ __forceinline__ float operator[](int64_t i) const { return user ? to_float(user[i]) : raw[i]; }
};

// 1 for the caller's vector, 1/max(‖x‖, eps) for a raw one. Every block computes it for itself: the
// vector is short next to the matrix, and this saves a launch per step.
template <class T>
__device__ float power_scale(PowerVector<T> x, int64_t n, float eps, float* scratch) {
  if (x.user) return 1.f;
  float sq = 0.f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) sq += x.raw[i] * x.raw[i];
  return 1.f / fmaxf(sqrtf(block_total(sq, scratch)), eps);
}

// y = Wᵀ·(scale·x), y: (cols) float
template <class T>
__global__ void __launch_bounds__(kElementwiseThreads)
    spectral_matvec_t_kernel(const T* __restrict__ W, MatrixDims d, PowerVector<T> x, float eps, float* __restrict__ y) {
  __shared__ float scratch[32];
  __shared__ float partial[kSpectralRowLanes][kSpectralTileCols + 1];
  const float scale = power_scale(x, d.rows, eps, scratch);
  const int col = static_cast<int>(threadIdx.x) % kSpectralTileCols, lane_row = static_cast<int>(threadIdx.x) / kSpectralTileCols;
  for (int64_t tile = blockIdx.x; tile * kSpectralTileCols < d.cols; tile += gridDim.x) {
    const int64_t j = tile * kSpectralTileCols + col;
    float acc = 0.f;
    if (j < d.cols)
      for (int64_t i = lane_row; i < d.rows; i += kSpectralRowLanes) acc += to_float(W[i * d.cols + j]) * x[i];
    partial[lane_row][col] = acc;
    __syncthreads();
    if (lane_row == 0 && j < d.cols) {
      float total = 0.f;
      for (int r = 0; r < kSpectralRowLanes; ++r) total += partial[r][col];
      y[j] = total * scale;
    }
    __syncthreads();
  }
}

// y = W·(scale·x), y: (rows) float; one warp per row
template <class T>
__global__ void __launch_bounds__(kElementwiseThreads)
    spectral_matvec_kernel(const T* __restrict__ W, MatrixDims d, PowerVector<T> x, float eps, float* __restrict__ y) {
  __shared__ float scratch[32];
  const float scale = power_scale(x, d.cols, eps, scratch);
  const int lane = static_cast<int>(threadIdx.x & 31);
  const int64_t warps = blockDim.x >> 5;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * warps + (threadIdx.x >> 5); i < d.rows;
       i += static_cast<int64_t>(gridDim.x) * warps) {
    float acc = 0.f;
    for (int64_t j = lane; j < d.cols; j += 32) acc += to_float(W[i * d.cols + j]) * x[j];
    acc = warp_sum(acc);
    if (lane == 0) y[i] = acc * scale;
  }
}

// t = W v (raw). After power iteration (u_user, v_user null) u = t/max(‖t‖, eps) and v = v_raw
// normalized, so σ = uᵀt = ‖t‖²/max(‖t‖, eps); without it, σ = Σ u_user·t. w = W·scale over the grid.
template <class T>
__global__ void __launch_bounds__(kElementwiseThreads)
    spectral_scale_kernel(const T* __restrict__ W, MatrixDims d, const T* __restrict__ u_user,
        const T* __restrict__ v_user, const float* __restrict__ t, const float* __restrict__ v_raw, float eps,
        bool has_coeff, float coeff, T* __restrict__ w, T* __restrict__ u_out, T* __restrict__ v_out,
        float* __restrict__ sigma_out) {
  __shared__ float scratch[32];
  float part = 0.f;
  for (int64_t i = threadIdx.x; i < d.rows; i += blockDim.x) part += (u_user ? to_float(u_user[i]) : t[i]) * t[i];
  const float total = block_total(part, scratch);
  const float t_scale = u_user ? 1.f : 1.f / fmaxf(sqrtf(total), eps);
  const float sigma = total * t_scale;
  // Behrmann et al. 2019: contract only when σ exceeds coeff.
  const float scale = !has_coeff ? 1.f / sigma : (sigma > coeff ? coeff / sigma : 1.f);
  const int64_t n = d.rows * d.cols, stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += stride)
    w[e] = from_float<T>(scale * to_float(W[e]));
  if (blockIdx.x != 0) return;
  float v_scale = 1.f;
  if (!v_user) {
    float sq = 0.f;
    for (int64_t j = threadIdx.x; j < d.cols; j += blockDim.x) sq += v_raw[j] * v_raw[j];
    v_scale = 1.f / fmaxf(sqrtf(block_total(sq, scratch)), eps);
  }
  for (int64_t i = threadIdx.x; i < d.rows; i += blockDim.x) u_out[i] = u_user ? u_user[i] : from_float<T>(t[i] * t_scale);
  for (int64_t j = threadIdx.x; j < d.cols; j += blockDim.x) v_out[j] = v_user ? v_user[j] : from_float<T>(v_raw[j] * v_scale);
  if (threadIdx.x == 0) *sigma_out = sigma;
}

// partials[p] = Σ g·W over the p-th of kSpectralPartials equal slices of the flat matrix.
template <class T>
__global__ void __launch_bounds__(kElementwiseThreads)
    spectral_dot_partials_kernel(const T* __restrict__ g, const T* __restrict__ W, int64_t n, float* __restrict__ partials) {
  __shared__ float scratch[32];
  const int64_t slice = (n + kSpectralPartials - 1) / kSpectralPartials;
  for (int64_t p = blockIdx.x; p < kSpectralPartials; p += gridDim.x) {
    const int64_t end = (p + 1) * slice < n ? (p + 1) * slice : n;
    float acc = 0.f;
    for (int64_t e = p * slice + threadIdx.x; e < end; e += blockDim.x) acc += to_float(g[e]) * to_float(W[e]);
    acc = block_total(acc, scratch);
    if (threadIdx.x == 0) partials[p] = acc;
  }
}

// dW = α·g + β·u vᵀ (norm.h); every block adds the partials of ⟨g, W⟩ in the same order.
template <class T>
__global__ void __launch_bounds__(kElementwiseThreads)
    spectral_norm_backward_kernel(const T* __restrict__ g, const float* __restrict__ grad_sigma, MatrixDims d,
        const T* __restrict__ u, const T* __restrict__ v, const float* __restrict__ sigma_in,
        const float* __restrict__ partials, bool has_coeff, float coeff, T* __restrict__ dW) {
  __shared__ float scratch[32];
  const float sigma = *sigma_in, g_sigma = grad_sigma ? *grad_sigma : 0.f;
  float alpha = 1.f, beta = g_sigma;
  if (!has_coeff || sigma > coeff) {
    float part = 0.f;
    for (int64_t p = threadIdx.x; p < kSpectralPartials; p += blockDim.x) part += partials[p];
    const float dot = block_total(part, scratch), c = has_coeff ? coeff : 1.f;
    alpha = c / sigma;
    beta = g_sigma - c * dot / (sigma * sigma);
  }
  const int64_t n = d.rows * d.cols, stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t start = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  IndexWalk ij(start, stride, d.cols, kNoWrap);  // (row i, column j)
  for (int64_t e = start; e < n; e += stride, ij.advance())
    dW[e] = from_float<T>(alpha * to_float(g[e]) + beta * to_float(u[ij.outer]) * to_float(v[ij.inner]));
}

// ------------------------------------------------------------------------------- host helpers

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <class T>
T* ptr_or_null(const OptView& v) {
  return v ? v->data_as<T>() : nullptr;
}

unsigned grid_for(int64_t blocks) { return static_cast<unsigned>(std::clamp<int64_t>(blocks, 1, kMaxGridX)); }

// Whole warps, about 8 values per thread, at most 1024 threads.
int block_threads_for(int64_t values) {
  return static_cast<int>(std::clamp<int64_t>(ceil_div(ceil_div(values, 8), 32), 1, kMaxBlockThreads / 32)) * 32;
}

// 1/n in float, rounded once; n = 0 gives inf, so a mean over nothing is 0·inf = NaN as on the CPU.
float inverse(int64_t n) { return static_cast<float>(1.0 / static_cast<double>(n)); }

struct RowLaunch {
  unsigned blocks;
  int threads;
  bool warp_per_row;
};

RowLaunch row_launch(const RowDims& d) {
  if (d.cols <= kWarpRowMaxCols)
    return {grid_for(ceil_div(d.rows, kRowsPerWarpBlock)), kRowsPerWarpBlock * 32, true};
  return {grid_for(d.rows), block_threads_for(d.cols), false};
}

// Row slices of the parameter-gradient partials: enough blocks to fill the GPU, at least
// kMinRowsPerSlice rows each. A function of the shape only, so the workspace size is too.
int64_t row_param_slices(const RowDims& d) {
  const int64_t col_tiles = std::max<int64_t>(1, ceil_div(d.cols, kParamTileCols));
  const int64_t for_occupancy = ceil_div(kParamTargetBlocks, col_tiles);
  return std::max<int64_t>(1, std::min(for_occupancy, ceil_div(d.rows, kMinRowsPerSlice)));
}

// Bytes of the (sums, slices, cols) float partials of a row norm backward (sums: 2 with dβ, 1 without);
// 0 for a normalized_ndim that validation will reject, or an empty normalized shape.
int64_t row_workspace_bytes(const TensorView& x, int normalized_ndim, int sums) {
  if (normalized_ndim < 1 || normalized_ndim > x.ndim) return 0;
  const RowDims d{x.numel_between(0, x.ndim - normalized_ndim), x.numel_between(x.ndim - normalized_ndim, x.ndim)};
  if (d.cols == 0) return 0;
  return sums * row_param_slices(d) * d.cols * static_cast<int64_t>(sizeof(float));
}

// (2, N·C) float sums of group norm's parameter gradients.
int64_t group_workspace_bytes(const TensorView& x) {
  if (x.ndim < 2) return 0;  // validation reports it
  return 2 * x.size(0) * x.size(1) * static_cast<int64_t>(sizeof(float));
}

// Validation (validate.cpp) checks the workspace's dtype, contiguity and size; the kernels also need
// it on x's device and aligned for float.
void check_cuda_workspace(const char* function, const OptView& workspace, int64_t bytes, const TensorView& x) {
  if (bytes == 0) return;
  REPLEARN_CHECK(workspace->device == x.device, Value, function, ": argument 'workspace' expected to be on ",
                 device_name(x.device), " like 'x' but got ", device_name(workspace->device));
  REPLEARN_CHECK(reinterpret_cast<std::uintptr_t>(workspace->data) % alignof(float) == 0, Value, function,
                 ": argument 'workspace' expected an address aligned to ", alignof(float), " bytes but got ",
                 workspace->data);
}

template <class T>
void launch_row_norm_forward(const T* x, const T* w, const T* b, RowDims d, ParamMap pm, double eps, bool centered,
                             T* y, float* mean, float* rstd, cudaStream_t stream) {
  if (d.rows == 0) return;
  const RowLaunch l = row_launch(d);
  row_norm_forward_kernel<T><<<l.blocks, l.threads, 0, stream>>>(
      x, w, b, d, pm, inverse(d.cols), static_cast<float>(eps), l.warp_per_row, centered, y, mean, rstd);
  REPLEARN_CUDA_LAUNCH_CHECK();
}

template <class T>
void launch_row_norm_backward_dx(const T* dy, const T* x, const float* mean, const float* rstd, const T* w,
                                 RowDims d, ParamMap pm, T* dx, cudaStream_t stream) {
  if (!dx || d.rows == 0 || d.cols == 0) return;
  const RowLaunch l = row_launch(d);
  row_norm_backward_dx_kernel<T>
      <<<l.blocks, l.threads, 0, stream>>>(dy, x, mean, rstd, w, d, pm, inverse(d.cols), l.warp_per_row, dx);
  REPLEARN_CUDA_LAUNCH_CHECK();
}

template <class T>
void launch_sum_partials(const float* partials, int64_t slices, int64_t cols, T* out, cudaStream_t stream) {
  if (!out || cols == 0) return;
  sum_partials_kernel<T><<<grid_for(ceil_div(cols, kElementwiseThreads)), kElementwiseThreads, 0, stream>>>(
      partials, slices, cols, out);
  REPLEARN_CUDA_LAUNCH_CHECK();
}

// Layer norm (mean given) and rms norm (mean null, db null). workspace: row_workspace_bytes.
template <class T>
void launch_row_norm_backward(const T* dy, const T* x, const float* mean, const float* rstd, const T* w, RowDims d,
                              T* dx, T* dw, T* db, float* workspace, cudaStream_t stream) {
  if (d.cols == 0) return;  // empty normalized shape: nothing to differentiate
  launch_row_norm_backward_dx<T>(dy, x, mean, rstd, w, d, ParamMap{1, d.cols, 1}, dx, stream);
  if (!dw && !db) return;
  const int64_t slices = row_param_slices(d);
  float* partial_dy_xhat = workspace;                                // (slices, cols)
  float* partial_dy = db ? workspace + slices * d.cols : nullptr;    // (slices, cols)
  const dim3 grid(grid_for(ceil_div(d.cols, kParamTileCols)), static_cast<unsigned>(slices));
  column_partials_kernel<T><<<grid, kParamTileCols * kParamRowLanes, 0, stream>>>(
      dy, x, mean, rstd, d, ceil_div(d.rows, slices), partial_dy_xhat, partial_dy);
  REPLEARN_CUDA_LAUNCH_CHECK();
  launch_sum_partials<T>(partial_dy_xhat, slices, d.cols, dw, stream);
  launch_sum_partials<T>(partial_dy, slices, d.cols, db, stream);
}

}  // namespace

// ------------------------------------------------------------------------------- entry points

template <>
void layer_norm_forward<DeviceType::CUDA>(const TensorView& x, int normalized_ndim, const OptView& weight,
                                          const OptView& bias, double eps, const TensorView& y,
                                          const OptView& mean, const OptView& rstd, std::uintptr_t stream) {
  const RowDims d = check_layer_norm_forward(DeviceType::CUDA, x, normalized_ndim, weight, bias, eps, y, mean, rstd);
  dispatch_cuda_floating(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch_row_norm_forward<T>(x.data_as<T>(), ptr_or_null<T>(weight), ptr_or_null<T>(bias), d,
                               ParamMap{1, d.cols, 1}, eps, /*centered=*/true, y.data_as<T>(),
                               ptr_or_null<float>(mean), ptr_or_null<float>(rstd), as_stream(stream));
  });
}

template <>
int64_t layer_norm_backward_workspace_size<DeviceType::CUDA>(const TensorView& x, int normalized_ndim) {
  return row_workspace_bytes(x, normalized_ndim, 2);
}

template <>
void layer_norm_backward<DeviceType::CUDA>(const TensorView& dy, const TensorView& x, int normalized_ndim,
                                           const TensorView& mean, const TensorView& rstd, const OptView& weight,
                                           const OptView& dx, const OptView& dweight, const OptView& dbias,
                                           const OptView& workspace, std::uintptr_t stream) {
  const int64_t workspace_bytes = dweight || dbias ? row_workspace_bytes(x, normalized_ndim, 2) : 0;
  const RowDims d = check_layer_norm_backward(DeviceType::CUDA, dy, x, normalized_ndim, mean, rstd, weight, dx,
                                              dweight, dbias, workspace, workspace_bytes);
  check_cuda_workspace("layer_norm_backward", workspace, workspace_bytes, x);
  dispatch_cuda_floating(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch_row_norm_backward<T>(dy.data_as<T>(), x.data_as<T>(), mean.data_as<float>(), rstd.data_as<float>(),
                                ptr_or_null<T>(weight), d, ptr_or_null<T>(dx), ptr_or_null<T>(dweight),
                                ptr_or_null<T>(dbias), workspace_bytes ? workspace->data_as<float>() : nullptr,
                                as_stream(stream));
  });
}

template <>
void rms_norm_forward<DeviceType::CUDA>(const TensorView& x, int normalized_ndim, const OptView& weight, double eps,
                                        const TensorView& y, const OptView& rstd, std::uintptr_t stream) {
  const RowDims d = check_rms_norm_forward(DeviceType::CUDA, x, normalized_ndim, weight, eps, y, rstd);
  dispatch_cuda_floating(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch_row_norm_forward<T>(x.data_as<T>(), ptr_or_null<T>(weight), nullptr, d, ParamMap{1, d.cols, 1}, eps,
                               /*centered=*/false, y.data_as<T>(), nullptr, ptr_or_null<float>(rstd),
                               as_stream(stream));
  });
}

template <>
int64_t rms_norm_backward_workspace_size<DeviceType::CUDA>(const TensorView& x, int normalized_ndim) {
  return row_workspace_bytes(x, normalized_ndim, 1);
}

template <>
void rms_norm_backward<DeviceType::CUDA>(const TensorView& dy, const TensorView& x, int normalized_ndim,
                                         const TensorView& rstd, const OptView& weight, const OptView& dx,
                                         const OptView& dweight, const OptView& workspace, std::uintptr_t stream) {
  const int64_t workspace_bytes = dweight ? row_workspace_bytes(x, normalized_ndim, 1) : 0;
  const RowDims d = check_rms_norm_backward(DeviceType::CUDA, dy, x, normalized_ndim, rstd, weight, dx, dweight,
                                            workspace, workspace_bytes);
  check_cuda_workspace("rms_norm_backward", workspace, workspace_bytes, x);
  dispatch_cuda_floating(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch_row_norm_backward<T>(dy.data_as<T>(), x.data_as<T>(), nullptr, rstd.data_as<float>(),
                                ptr_or_null<T>(weight), d, ptr_or_null<T>(dx), ptr_or_null<T>(dweight), nullptr,
                                workspace_bytes ? workspace->data_as<float>() : nullptr, as_stream(stream));
  });
}

template <>
void batch_norm_forward<DeviceType::CUDA>(const TensorView& x, const OptView& weight, const OptView& bias,
                                          const OptView& running_mean, const OptView& running_var, bool training,
                                          double momentum, double eps, const TensorView& y,
                                          const OptView& save_mean, const OptView& save_rstd,
                                          std::uintptr_t stream) {
  const ChannelDims d = check_batch_norm_forward(DeviceType::CUDA, x, weight, bias, running_mean, running_var,
                                                 training, momentum, eps, y, save_mean, save_rstd);
  if (d.channels == 0) return;
  const int64_t count = d.batch * d.spatial;  // values per channel; > 1 when training (validated)
  dispatch_cuda_floating(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const cudaStream_t s = as_stream(stream);
    float* mean = save_mean->data_as<float>();  // required on CUDA (validated)
    float* rstd = save_rstd->data_as<float>();
    if (training) {
      batch_norm_stats_kernel<T><<<grid_for(d.channels), block_threads_for(count), 0, s>>>(
          x.data_as<T>(), d, inverse(count),
          static_cast<float>(static_cast<double>(count) / static_cast<double>(count - 1)),
          static_cast<float>(momentum), static_cast<float>(eps), ptr_or_null<T>(running_mean),
          ptr_or_null<T>(running_var), mean, rstd);
    } else {
      batch_norm_eval_stats_kernel<T>
          <<<grid_for(ceil_div(d.channels, kElementwiseThreads)), kElementwiseThreads, 0, s>>>(
              running_mean->data_as<T>(), running_var->data_as<T>(), d.channels, static_cast<float>(eps), mean,
              rstd);
    }
    REPLEARN_CUDA_LAUNCH_CHECK();
    const int64_t total = x.numel();
    if (total == 0) return;
    // About four values per thread, so the one division in IndexWalk is amortized.
    channel_affine_kernel<T><<<grid_for(ceil_div(total, 4 * kElementwiseThreads)), kElementwiseThreads, 0, s>>>(
        x.data_as<T>(), mean, rstd, ptr_or_null<T>(weight), ptr_or_null<T>(bias), total, d.channels, d.spatial,
        y.data_as<T>());
    REPLEARN_CUDA_LAUNCH_CHECK();
  });
}

template <>
void batch_norm_backward<DeviceType::CUDA>(const TensorView& dy, const TensorView& x, const TensorView& save_mean,
                                           const TensorView& save_rstd, const OptView& weight, bool training,
                                           const OptView& dx, const OptView& dweight, const OptView& dbias,
                                           std::uintptr_t stream) {
  const ChannelDims d =
      check_batch_norm_backward(DeviceType::CUDA, dy, x, save_mean, save_rstd, weight, dx, dweight, dbias);
  if (d.channels == 0 || (!dx && !dweight && !dbias)) return;
  const int64_t count = d.batch * d.spatial;
  dispatch_cuda_floating(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    batch_norm_backward_kernel<T><<<grid_for(d.channels), block_threads_for(count), 0, as_stream(stream)>>>(
        dy.data_as<T>(), x.data_as<T>(), save_mean.data_as<float>(), save_rstd.data_as<float>(),
        ptr_or_null<T>(weight), training, d, inverse(count), ptr_or_null<T>(dx), ptr_or_null<T>(dweight),
        ptr_or_null<T>(dbias));
    REPLEARN_CUDA_LAUNCH_CHECK();
  });
}

template <>
void group_norm_forward<DeviceType::CUDA>(const TensorView& x, int64_t groups, const OptView& weight,
                                          const OptView& bias, double eps, const TensorView& y,
                                          const OptView& mean, const OptView& rstd, std::uintptr_t stream) {
  const ChannelDims d = check_group_norm_forward(DeviceType::CUDA, x, groups, weight, bias, eps, y, mean, rstd);
  const int64_t channels_per_group = d.channels / groups;
  const RowDims slabs{d.batch * groups, channels_per_group * d.spatial};  // (sample, group) slabs are contiguous
  dispatch_cuda_floating(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch_row_norm_forward<T>(x.data_as<T>(), ptr_or_null<T>(weight), ptr_or_null<T>(bias), slabs,
                               ParamMap{groups, channels_per_group, d.spatial}, eps, /*centered=*/true,
                               y.data_as<T>(), ptr_or_null<float>(mean), ptr_or_null<float>(rstd),
                               as_stream(stream));
  });
}

template <>
int64_t group_norm_backward_workspace_size<DeviceType::CUDA>(const TensorView& x, int64_t) {
  return group_workspace_bytes(x);
}

template <>
void group_norm_backward<DeviceType::CUDA>(const TensorView& dy, const TensorView& x, int64_t groups,
                                           const TensorView& mean, const TensorView& rstd, const OptView& weight,
                                           const OptView& dx, const OptView& dweight, const OptView& dbias,
                                           const OptView& workspace, std::uintptr_t stream) {
  // dx needs only each slab's own sums; the workspace holds the per-(sample, channel) sums of dγ, dβ.
  const int64_t workspace_bytes = dweight || dbias ? group_workspace_bytes(x) : 0;
  const ChannelDims d = check_group_norm_backward(DeviceType::CUDA, dy, x, groups, mean, rstd, weight, dx, dweight,
                                                  dbias, workspace, workspace_bytes);
  check_cuda_workspace("group_norm_backward", workspace, workspace_bytes, x);
  const int64_t channels_per_group = d.channels / groups;
  const RowDims slabs{d.batch * groups, channels_per_group * d.spatial};
  dispatch_cuda_floating(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const cudaStream_t s = as_stream(stream);
    const T* dy_data = dy.data_as<T>();
    const T* x_data = x.data_as<T>();
    const float* mean_data = mean.data_as<float>();
    const float* rstd_data = rstd.data_as<float>();
    // As layer norm over each slab, with g = dy·γ_c.
    launch_row_norm_backward_dx<T>(dy_data, x_data, mean_data, rstd_data, ptr_or_null<T>(weight), slabs,
                                   ParamMap{groups, channels_per_group, d.spatial}, ptr_or_null<T>(dx), s);
    if (!dweight && !dbias) return;
    // (N, C) sums Σ dy·x̂ and Σ dy per (sample, channel); with N·C = 0 there are none, and no workspace.
    const RowDims planes{d.batch * d.channels, d.spatial};
    float* sum_dy_xhat = planes.rows > 0 ? workspace->data_as<float>() : nullptr;  // (N, C)
    float* sum_dy = planes.rows > 0 ? sum_dy_xhat + planes.rows : nullptr;         // (N, C)
    if (planes.rows > 0) {
      const RowLaunch l = row_launch(planes);
      plane_sums_kernel<T><<<l.blocks, l.threads, 0, s>>>(dy_data, x_data, mean_data, rstd_data, planes,
                                                          channels_per_group, l.warp_per_row, sum_dy_xhat, sum_dy);
      REPLEARN_CUDA_LAUNCH_CHECK();
    }
    // dγ_c = Σ_n Σ dy·x̂, dβ_c = Σ_n Σ dy: the (N, C) sums added over n in order.
    launch_sum_partials<T>(sum_dy_xhat, d.batch, d.channels, ptr_or_null<T>(dweight), s);
    launch_sum_partials<T>(sum_dy, d.batch, d.channels, ptr_or_null<T>(dbias), s);
  });
}

template <>
void running_stats_update<DeviceType::CUDA>(const TensorView& mean, const TensorView& rstd, int64_t batch,
                                            int64_t channels, int64_t spatial, double momentum, double eps,
                                            const TensorView& running_mean, const TensorView& running_var,
                                            std::uintptr_t stream) {
  const ChannelDims d = check_running_stats_update(DeviceType::CUDA, mean, rstd, batch, channels, spatial, momentum,
                                                   eps, running_mean, running_var);
  dispatch_cuda_floating(running_mean.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    running_stats_update_kernel<T>
        <<<grid_for(ceil_div(d.channels, kElementwiseThreads)), kElementwiseThreads, 0, as_stream(stream)>>>(
            mean.data_as<float>(), rstd.data_as<float>(), d, momentum, eps, running_mean.data_as<T>(),
            running_var.data_as<T>());
    REPLEARN_CUDA_LAUNCH_CHECK();
  });
}

template <>
void weight_norm_forward<DeviceType::CUDA>(const TensorView& v, const TensorView& g, int dim, const TensorView& w,
                                           const OptView& norm, std::uintptr_t stream) {
  const SliceDims d = check_weight_norm_forward(DeviceType::CUDA, v, g, dim, w, norm);
  if (d.slices == 0) return;
  dispatch_cuda_floating(v.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    weight_norm_forward_kernel<T><<<grid_for(d.slices), block_threads_for(d.outer * d.inner), 0, as_stream(stream)>>>(
        v.data_as<T>(), g.data_as<T>(), d, w.data_as<T>(), norm ? norm->data_as<float>() : nullptr);
    REPLEARN_CUDA_LAUNCH_CHECK();
  });
}

template <>
void weight_norm_backward<DeviceType::CUDA>(const TensorView& dw, const TensorView& v, const TensorView& g,
                                            const TensorView& norm, int dim, const OptView& dv, const OptView& dg,
                                            std::uintptr_t stream) {
  const SliceDims d = check_weight_norm_backward(DeviceType::CUDA, dw, v, g, norm, dim, dv, dg);
  if (d.slices == 0 || (!dv && !dg)) return;
  dispatch_cuda_floating(v.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    weight_norm_backward_kernel<T>
        <<<grid_for(d.slices), block_threads_for(d.outer * d.inner), 0, as_stream(stream)>>>(
            dw.data_as<T>(), v.data_as<T>(), g.data_as<T>(), norm.data_as<float>(), d, ptr_or_null<T>(dv),
            ptr_or_null<T>(dg));
    REPLEARN_CUDA_LAUNCH_CHECK();
  });
}

namespace {
int64_t spectral_vectors_bytes(const TensorView& weight) {  // raw v (cols) and t = W v (rows), float
  if (weight.ndim < 1) return 0;
  return (weight.size(0) + weight.numel_between(1, weight.ndim)) * static_cast<int64_t>(sizeof(float));
}
unsigned elementwise_grid(int64_t n) {
  return grid_for(std::min<int64_t>(ceil_div(n, kElementwiseThreads * 4), kSpectralMaxBlocks));
}
}  // namespace

template <>
int64_t spectral_norm_forward_workspace_size<DeviceType::CUDA>(const TensorView& weight) {
  return spectral_vectors_bytes(weight);
}

template <>
void spectral_norm_forward<DeviceType::CUDA>(const TensorView& weight, const TensorView& u, const OptView& v,
                                             int n_power_iterations, double eps, std::optional<double> coeff,
                                             const TensorView& w, const TensorView& u_out, const TensorView& v_out,
                                             const TensorView& sigma, const OptView& workspace,
                                             std::uintptr_t stream) {
  const MatrixDims d = check_spectral_norm_forward(DeviceType::CUDA, weight, u, v, n_power_iterations, eps, coeff,
                                                   w, u_out, v_out, sigma, workspace,
                                                   spectral_vectors_bytes(weight));
  float* v_raw = static_cast<float*>(workspace->data);  // (cols)
  float* t = v_raw + d.cols;                             // (rows)
  const float eps_f = static_cast<float>(eps);
  dispatch_cuda_floating(weight.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* W = weight.data_as<T>();
    const cudaStream_t s = as_stream(stream);
    const unsigned column_grid = grid_for(std::min(ceil_div(d.cols, kSpectralTileCols), kSpectralMaxBlocks));
    const unsigned row_grid = grid_for(std::min(ceil_div(d.rows, kSpectralRowsPerBlock), kSpectralMaxBlocks));
    for (int it = 0; it < n_power_iterations; ++it) {
      const PowerVector<T> x = it == 0 ? PowerVector<T>{u.data_as<T>(), nullptr} : PowerVector<T>{nullptr, t};
      spectral_matvec_t_kernel<T><<<column_grid, kElementwiseThreads, 0, s>>>(W, d, x, eps_f, v_raw);
      REPLEARN_CUDA_LAUNCH_CHECK();
      spectral_matvec_kernel<T><<<row_grid, kElementwiseThreads, 0, s>>>(W, d, PowerVector<T>{nullptr, v_raw},
                                                                          eps_f, t);
      REPLEARN_CUDA_LAUNCH_CHECK();
    }
    const bool iterated = n_power_iterations > 0;
    if (!iterated) {
      spectral_matvec_kernel<T><<<row_grid, kElementwiseThreads, 0, s>>>(W, d, PowerVector<T>{v->data_as<T>(), nullptr},
                                                                          eps_f, t);
      REPLEARN_CUDA_LAUNCH_CHECK();
    }
    spectral_scale_kernel<T><<<elementwise_grid(d.rows * d.cols), kElementwiseThreads, 0, s>>>(
        W, d, iterated ? nullptr : u.data_as<T>(), iterated ? nullptr : v->data_as<T>(), t, v_raw, eps_f,
        coeff.has_value(), static_cast<float>(coeff.value_or(0.0)), w.data_as<T>(), u_out.data_as<T>(),
        v_out.data_as<T>(), sigma.data_as<float>());
    REPLEARN_CUDA_LAUNCH_CHECK();
  });
}

template <>
int64_t spectral_norm_backward_workspace_size<DeviceType::CUDA>(const TensorView&) {
  return kSpectralPartials * static_cast<int64_t>(sizeof(float));
}

template <>
void spectral_norm_backward<DeviceType::CUDA>(const TensorView& grad_w, const OptView& grad_sigma,
                                              const TensorView& weight, const TensorView& u, const TensorView& v,
                                              const TensorView& sigma, std::optional<double> coeff,
                                              const TensorView& grad_weight, const OptView& workspace,
                                              std::uintptr_t stream) {
  const MatrixDims d = check_spectral_norm_backward(DeviceType::CUDA, grad_w, grad_sigma, weight, u, v, sigma, coeff,
                                                    grad_weight, workspace,
                                                    spectral_norm_backward_workspace_size<DeviceType::CUDA>(weight));
  float* partials = static_cast<float*>(workspace->data);
  dispatch_cuda_floating(weight.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const cudaStream_t s = as_stream(stream);
    const int64_t n = d.rows * d.cols;
    spectral_dot_partials_kernel<T><<<grid_for(kSpectralPartials), kElementwiseThreads, 0, s>>>(
        grad_w.data_as<T>(), weight.data_as<T>(), n, partials);
    REPLEARN_CUDA_LAUNCH_CHECK();
    spectral_norm_backward_kernel<T><<<elementwise_grid(n), kElementwiseThreads, 0, s>>>(
        grad_w.data_as<T>(), grad_sigma ? grad_sigma->data_as<float>() : nullptr, d, u.data_as<T>(), v.data_as<T>(),
        sigma.data_as<float>(), partials, coeff.has_value(), static_cast<float>(coeff.value_or(0.0)),
        grad_weight.data_as<T>());
    REPLEARN_CUDA_LAUNCH_CHECK();
  });
}

}  // namespace replearn::norm
