// Attention family, CPU kernels (float32 and float64).
//
// Forward (FlashAttention Alg. 1 with FlashAttention-2's loop order): one task per (b, h, block of
// kRowBlock query rows), run by parallel_for. A task packs its query rows once, then for each
// block of kColBlock keys computes S = c·(Q·Kᵀ) (+ bias, masks; c = scale / temperature),
// updates the running row maximum m and sum l, rescales its output accumulator by exp(m_old − m_new)
// and adds P·V. Only O and L = m + log l are written.
//
// Backward: one task per (b, h), query blocks outer, dK and dV of the whole head accumulated in
// buffers owned by the task. A query block first computes P = exp(S − L) and dP = dO·Vᵀ for every
// key it sees and keeps them (kRowBlock × Tk each); each row's P is then normalized exactly
// (P̃ = P/Σ_j P_j) and D_i = Σ_j P̃_ij dP_ij − dL_i formed as torch's softmax backward does, before
// dS = P̃ ∘ (dP − D), dV += P̃ᵀ·dO, dQ += dS·K, dK += dSᵀ·Q (Dao 2023, FlashAttention-2, Alg. 2, but
// for D and the normalization: see backward_kernel). Gradients of
// a key/value head shared by several query heads (GQA) and of a bias shared by several (b, h) go to
// per-head / per-chunk partial buffers in the workspace and are summed afterwards in a fixed order:
// deterministic, no atomics.
//
// The tile products all have one form, C[M×N] (+)= A[M×K]·B[K×N] (or Aᵀ read in place) with B
// packed row-major and N padded to whole register blocks (gemm): kMicroRows rows × two vectors
// (simd::Vec, the target's register width) of accumulators held in registers. exp() is a
// vectorizable polynomial for float32 (Cephes' expf: Cody–Waite range reduction and a degree-6
// polynomial, ~1 ulp); float64 uses std::exp.
// Measured variants and their GFLOP/s are in bench/RESULTS.md (attention section). There is no
// core/gemm.h yet; these tiles (64×64×d) are small enough that a BLAS call per tile would cost more
// in call overhead and packing than it saves.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "attention/attention.h"
#include "core/check.h"
#include "core/dispatch.h"
#include "core/memory.h"
#include "core/parallel.h"
#include "core/simd.h"
#include "core/vmath.h"

namespace replearn::attention {

namespace {

constexpr int64_t kRowBlock = 64;  // query rows per tile
constexpr int64_t kColBlock = 64;  // keys per tile
// Rows per register block. AVX-512: 8 × 2 accumulators fill 16 of its 32 registers. AVX2 and SSE2
// have 16: 6 × 2 accumulators, the two vectors of B and the broadcast of A fill 15 of them (BLIS's
// 6 × 16 Haswell kernel). 8 rows spilled three accumulators to the stack there, and each k step
// waited on their store-to-load round trip (perf: a quarter of the forward's samples on one spill
// store); 4 rows measured slower than 8 (B reloaded for every 4 rows). Zen 3, 2 threads,
// bench/RESULTS.md ("attention on AVX2").
constexpr int kMicroRows = simd::kVectorBytes == 64 ? 8 : 6;

// Register block width: two vectors.
template <class T>
constexpr int64_t micro_cols() {
  return 2 * simd::kLanes<T>;
}

template <class T>
int64_t padded(int64_t n) {
  constexpr int64_t w = micro_cols<T>();
  return (n + w - 1) / w * w;
}

template <class T>
constexpr T neg_inf() {
  return -std::numeric_limits<T>::infinity();
}

// C[rows × N] (+)= A[rows × K] · B[K × N], rows = R (compile time), N a multiple of micro_cols<T>().
// A is read as A[r·lda + k], or as A[k·lda + r] when kTransA (Aᵀ stored row-major: the products
// Pᵀ·dO and dSᵀ·Q of the backward then need no transposed copy). kAccumulate = false overwrites C;
// true adds the product, summed from zero, to C (C + Σ rather than a sum continued from C: shorter
// rounding chains, see gemm_chunked).
// Written with vector types (simd::Vec) so that the R × 2 accumulators and the two vectors of B stay
// in registers: per k, 2 loads of B and R broadcasts feed 2R FMAs, which keeps the FMA units rather
// than the load ports busy (the compiler's own version reloaded B per row).
template <class T, int R, bool kTransA, bool kAccumulate>
inline void gemm_rows(int64_t N, int64_t K, const T* __restrict__ A, int64_t lda, const T* __restrict__ B,
                      int64_t ldb, T* __restrict__ C, int64_t ldc) {
  using Vec = simd::Vec<T>;
  constexpr int64_t L = simd::kLanes<T>;  // micro_cols<T>() == 2·L
  for (int64_t n0 = 0; n0 < N; n0 += 2 * L) {
    Vec acc0[R], acc1[R];
    for (int r = 0; r < R; ++r) {
      acc0[r] = Vec{};
      acc1[r] = Vec{};
    }
    for (int64_t k = 0; k < K; ++k) {
      Vec b0, b1;
      std::memcpy(&b0, B + k * ldb + n0, sizeof(Vec));
      std::memcpy(&b1, B + k * ldb + n0 + L, sizeof(Vec));
      for (int r = 0; r < R; ++r) {
        const T a = kTransA ? A[k * lda + r] : A[r * lda + k];
        acc0[r] += a * b0;
        acc1[r] += a * b1;
      }
    }
    for (int r = 0; r < R; ++r) {
      if (kAccumulate) {
        Vec c0, c1;
        std::memcpy(&c0, C + r * ldc + n0, sizeof(Vec));
        std::memcpy(&c1, C + r * ldc + n0 + L, sizeof(Vec));
        acc0[r] += c0;
        acc1[r] += c1;
      }
      std::memcpy(C + r * ldc + n0, &acc0[r], sizeof(Vec));
      std::memcpy(C + r * ldc + n0 + L, &acc1[r], sizeof(Vec));
    }
  }
}

template <class T, bool kTransA = false, bool kAccumulate = true>
void gemm(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb, T* C, int64_t ldc) {
  const int64_t row_step = kTransA ? 1 : lda;  // distance between consecutive rows of A
  int64_t m = 0;
  for (; m + kMicroRows <= M; m += kMicroRows)
    gemm_rows<T, kMicroRows, kTransA, kAccumulate>(N, K, A + m * row_step, lda, B, ldb, C + m * ldc, ldc);
  // The rest in blocks of 4, 2 and 1 rows (a 64-row tile over blocks of 6 ends with 4): one row at a
  // time would be a chain of dependent FMAs per accumulator.
  if (m + 4 <= M) {
    gemm_rows<T, 4, kTransA, kAccumulate>(N, K, A + m * row_step, lda, B, ldb, C + m * ldc, ldc);
    m += 4;
  }
  if (m + 2 <= M) {
    gemm_rows<T, 2, kTransA, kAccumulate>(N, K, A + m * row_step, lda, B, ldb, C + m * ldc, ldc);
    m += 2;
  }
  if (m < M) gemm_rows<T, 1, kTransA, kAccumulate>(N, K, A + m * row_step, lda, B, ldb, C + m * ldc, ldc);
}

// C = A·B (overwritten) summed over K in chunks of 32 added together: a dot product rounded along one
// chain of K = 130 FMAs had 2–3x the error of torch's blocked GEMMs, and the softmax turns a score's
// absolute error into P's relative error (a decode case with d = 130 reached 2.2x the parity bound).
template <class T>
void gemm_chunked(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb, T* C,
                  int64_t ldc) {
  constexpr int64_t kChunk = 32;
  gemm<T, false, false>(M, N, std::min(K, kChunk), A, lda, B, ldb, C, ldc);
  for (int64_t k0 = kChunk; k0 < K; k0 += kChunk)
    gemm<T, false, true>(M, N, std::min(K - k0, kChunk), A + k0, lda, B + k0 * ldb, ldb, C, ldc);
}

// e^x of x = s − max ≤ 0 that `omp simd` loops vectorize (core/vmath.h); −inf (a masked score)
// gives exactly 0.
using vmath::exp_nonpositive;

// max(init, s[0..n)). GCC does not vectorize a float max reduction without -ffast-math (it keeps
// std::max's NaN ordering), and this loop ran scalar at a quarter of the forward's softmax time;
// scores are never NaN here, so a vector select is exact.
template <class T>
inline T row_max(const T* s, int64_t n, T init) {
  using Vec = simd::Vec<T>;
  constexpr int64_t L = simd::kLanes<T>;
  T mx = init;
  int64_t j = 0;
  if (n >= L) {
    Vec m;
    std::memcpy(&m, s, sizeof(Vec));
    for (j = L; j + L <= n; j += L) {
      Vec v;
      std::memcpy(&v, s + j, sizeof(Vec));
      m = v > m ? v : m;
    }
    for (int64_t l = 0; l < L; ++l) mx = std::max(mx, m[l]);
  }
  for (; j < n; ++j) mx = std::max(mx, s[j]);
  return mx;
}

// A running sum kept as one vector of per-lane partial sums (summed across lanes by total()).
template <class T>
struct SumVec {
  using Vec = simd::Vec<T>;
  static constexpr int64_t kLanes = simd::kLanes<T>;
  Vec v;
  static SumVec load(const T* p) {
    SumVec s;
    std::memcpy(&s.v, p, sizeof(Vec));
    return s;
  }
  SumVec& operator+=(const SumVec& o) {
    v += o.v;
    return *this;
  }
  SumVec operator*(T a) const { return {v * a}; }
  SumVec operator+(const SumVec& o) const { return {v + o.v}; }
  T total() const {
    T lanes[kLanes];
    std::memcpy(lanes, &v, sizeof(Vec));
    for (int64_t w = kLanes / 2; w > 0; w /= 2)
      for (int64_t l = 0; l < w; ++l) lanes[l] += lanes[l + w];
    return lanes[0];
  }
};

// Read-only description of one call, shared by the kernels.
template <class T>
struct Problem {
  const T* q;                  // (B, H, Tq, d)
  const T* k;                  // (B, Hkv, Tk, d)
  const T* v;                  // (B, Hkv, Tk, dv)
  const uint8_t* key_padding;  // (B, Tk), nonzero = ignore; or null
  const T* bias;               // broadcastable to (B, H, Tq, Tk); or null
  AttentionDims d;
  T scale;
  bool causal;
  uint64_t drop_threshold;  // 0: no dropout
  uint64_t drop_key;
  T keep_scale;  // 1 / (1 − p)

  const T* q_head(int64_t b, int64_t h) const { return q + (b * d.heads + h) * d.q_len * d.head_dim; }
  const T* k_head(int64_t b, int64_t h) const {
    return k + (b * d.kv_heads + h / d.group()) * d.k_len * d.head_dim;
  }
  const T* v_head(int64_t b, int64_t h) const {
    return v + (b * d.kv_heads + h / d.group()) * d.k_len * d.value_dim;
  }
  int64_t bias_offset(int64_t b, int64_t h) const { return b * d.bias_stride[0] + h * d.bias_stride[1]; }
  // Keys a query row may see under the causal mask: [0, key_end(i)).
  int64_t key_end(int64_t i) const {
    return causal ? std::clamp<int64_t>(i + d.causal_offset() + 1, 0, d.k_len) : d.k_len;
  }
};

template <class T>
Problem<T> make_problem(const TensorView& q, const TensorView& k, const TensorView& v, const OptView& kpm,
                        const OptView& bias, const AttentionDims& d, double scale, bool causal, double dropout_p,
                        int64_t seed) {
  Problem<T> p{q.data_as<T>(), k.data_as<T>(), v.data_as<T>(), kpm ? kpm->data_as<uint8_t>() : nullptr,
               bias ? bias->data_as<T>() : nullptr, d, static_cast<T>(scale), causal, dropout_threshold(dropout_p),
               dropout_key(seed), dropout_p < 1 ? static_cast<T>(1.0 / (1.0 - dropout_p)) : T(0)};
  return p;
}

// Packs rows [r0, r0 + rows) of a (len, dim) matrix into dst (rows × ld).
template <class T>
void pack_rows(const T* src, int64_t r0, int64_t rows, int64_t dim, T* dst, int64_t ld) {
  for (int64_t r = 0; r < rows; ++r) std::memcpy(dst + r * ld, src + (r0 + r) * dim, sizeof(T) * dim);
}

// Packs rows [r0, r0 + rows) of a (len, dim) matrix transposed into dst (dim × ld).
template <class T>
void pack_transposed(const T* src, int64_t r0, int64_t rows, int64_t dim, T* dst, int64_t ld) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* s = src + (r0 + r) * dim;
    for (int64_t c = 0; c < dim; ++c) dst[c * ld + r] = s[c];
  }
}

// Score tile S (rows × kColBlock, ld kColBlock) for queries [i0, i0 + rows) and keys [j0, j0 + cols):
// c·(Q·Kᵀ) (Q packed; Kᵀ packed (d × ≥ kColBlock columns from the tile's first key, row stride ldk))
// + bias, -inf where the key padding or causal mask hides a key. The scale multiplies the product,
// not Q: a pre-scaled Q rounds every term of the dot (see gemm_chunked).
template <class T>
void score_tile(const Problem<T>& p, int64_t b, int64_t h, int64_t i0, int64_t rows, int64_t j0, int64_t cols,
                const T* q_packed, int64_t ldq, const T* kt_packed, int64_t ldk, T* S) {
  gemm_chunked<T>(rows, kColBlock, p.d.head_dim, q_packed, ldq, kt_packed, ldk, S, kColBlock);
  for (int64_t r = 0; r < rows; ++r) {
    T* __restrict__ s = S + r * kColBlock;
#pragma omp simd
    for (int64_t j = 0; j < kColBlock; ++j) s[j] *= p.scale;
  }
  if (p.bias) {
    const T* bias = p.bias + p.bias_offset(b, h);
    const int64_t si = p.d.bias_stride[2], sj = p.d.bias_stride[3];
    for (int64_t r = 0; r < rows; ++r) {
      const T* __restrict__ br = bias + (i0 + r) * si;
      T* __restrict__ s = S + r * kColBlock;
      if (sj == 1) {
#pragma omp simd
        for (int64_t j = 0; j < cols; ++j) s[j] += br[j0 + j];
      } else {
        const T bv = br[0];
#pragma omp simd
        for (int64_t j = 0; j < cols; ++j) s[j] += bv;
      }
    }
  }
  if (p.key_padding) {
    const uint8_t* __restrict__ kp = p.key_padding + b * p.d.k_len + j0;
    for (int64_t r = 0; r < rows; ++r) {
      T* __restrict__ s = S + r * kColBlock;
#pragma omp simd
      for (int64_t j = 0; j < cols; ++j) s[j] = kp[j] ? neg_inf<T>() : s[j];
    }
  }
  if (p.causal) {
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t visible = std::max<int64_t>(0, p.key_end(i0 + r) - j0);
      for (int64_t j = visible; j < cols; ++j) S[r * kColBlock + j] = neg_inf<T>();
    }
  }
}

// P̃ = P ∘ keep / (1 − p) on a tile whose rows are query rows i0.. and columns keys j0..
template <class T>
void apply_dropout(const Problem<T>& p, int64_t b, int64_t h, int64_t i0, int64_t rows, int64_t j0, int64_t cols,
                   T* tile, int64_t ld) {
  for (int64_t r = 0; r < rows; ++r) {
    const uint64_t base = ((static_cast<uint64_t>(b) * p.d.heads + h) * p.d.q_len + i0 + r) * p.d.k_len + j0;
    T* __restrict__ t = tile + r * ld;
#pragma omp simd
    for (int64_t j = 0; j < cols; ++j)
      t[j] = dropout_keep(p.drop_key, base + j, p.drop_threshold) ? t[j] * p.keep_scale : T(0);
  }
}

// --------------------------------------------------------------------------------------- forward

template <class T>
void forward_kernel(const Problem<T>& p, T* out, T* lse) {
  const AttentionDims& d = p.d;
  const int64_t row_blocks = (d.q_len + kRowBlock - 1) / kRowBlock;
  const int64_t dpad = padded<T>(d.head_dim), vpad = padded<T>(d.value_dim);
  parallel_for(d.batch * d.heads * row_blocks, 1, [&](int, int64_t t0, int64_t t1) {
    // The key/value head in use, packed once and reused by every query block of this chunk that
    // reads it (tasks of a chunk are consecutive, so a head is packed about once per chunk): Kᵀ as
    // one contiguous (d × kColBlock) tile per key block, so that a score tile reads 16 KiB of
    // consecutive memory rather than d rows a whole head apart (a power-of-two stride that maps
    // every row to the same few L1 sets); V as (Tk × vpad).
    const int64_t key_blocks = (d.k_len + kColBlock - 1) / kColBlock;
    const int64_t kt_block = d.head_dim * kColBlock;
    std::vector<T> q_tile(kRowBlock * dpad, T(0)), kt_head(key_blocks * kt_block, T(0)), v_head(d.k_len * vpad, T(0)),
        S(kRowBlock * kColBlock), acc(kRowBlock * vpad);
    std::vector<T> running_max(kRowBlock);
    std::vector<SumVec<T>> row_sum(kRowBlock);
    const T* packed_k = nullptr;
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t bh = task / row_blocks, b = bh / d.heads, h = bh % d.heads;
      const int64_t i0 = (task % row_blocks) * kRowBlock, rows = std::min(kRowBlock, d.q_len - i0);
      pack_rows(p.q_head(b, h), i0, rows, d.head_dim, q_tile.data(), dpad);
      std::fill(acc.begin(), acc.end(), T(0));
      std::fill(running_max.begin(), running_max.end(), neg_inf<T>());
      std::fill(row_sum.begin(), row_sum.end(), SumVec<T>{});
      if (packed_k != p.k_head(b, h)) {
        packed_k = p.k_head(b, h);
        for (int64_t jb = 0; jb < key_blocks; ++jb)
          pack_transposed(packed_k, jb * kColBlock, std::min(kColBlock, d.k_len - jb * kColBlock), d.head_dim,
                          kt_head.data() + jb * kt_block, kColBlock);
        pack_rows(p.v_head(b, h), 0, d.k_len, d.value_dim, v_head.data(), vpad);
      }
      const int64_t key_end = p.key_end(i0 + rows - 1);
      for (int64_t j0 = 0; j0 < key_end; j0 += kColBlock) {
        const int64_t cols = std::min(kColBlock, key_end - j0);
        score_tile(p, b, h, i0, rows, j0, cols, q_tile.data(), dpad, kt_head.data() + j0 / kColBlock * kt_block,
                   kColBlock, S.data());
        // Online softmax: m ← max(m, max_j s), l ← l·e^{m_old − m} + Σ e^{s − m}, O ← O·e^{m_old − m}.
        for (int64_t r = 0; r < rows; ++r) {
          T* __restrict__ s = S.data() + r * kColBlock;
          const T mx = row_max(s, cols, running_max[r]);
          if (mx == neg_inf<T>()) {  // nothing visible yet in this row: P = 0
            std::fill(s, s + cols, T(0));
            continue;
          }
#pragma omp simd
          for (int64_t j = 0; j < cols; ++j) s[j] = exp_nonpositive(s[j] - mx);
          std::fill(s + cols, s + kColBlock, T(0));  // a last, partial key block
          // l stays a vector of per-lane partial sums until the end: the horizontal sum of an
          // `omp simd reduction` cost 16 dependent scalar adds per row and tile.
          SumVec<T> tile_sum{};
          for (int64_t j = 0; j < kColBlock; j += SumVec<T>::kLanes) tile_sum += SumVec<T>::load(s + j);
          const T alpha = exp_nonpositive(running_max[r] - mx);
          row_sum[r] = row_sum[r] * alpha + tile_sum;
          running_max[r] = mx;
          if (alpha != T(1)) {
            T* __restrict__ o = acc.data() + r * vpad;
#pragma omp simd
            for (int64_t c = 0; c < vpad; ++c) o[c] *= alpha;
          }
        }
        if (p.drop_threshold) apply_dropout(p, b, h, i0, rows, j0, cols, S.data(), kColBlock);
        gemm<T>(rows, vpad, cols, S.data(), kColBlock, v_head.data() + j0 * vpad, vpad, acc.data(), vpad);
      }
      T* o = out + ((b * d.heads + h) * d.q_len + i0) * d.value_dim;
      T* l = lse + (b * d.heads + h) * d.q_len + i0;
      for (int64_t r = 0; r < rows; ++r) {
        const T total = row_sum[r].total();
        const bool empty = total == T(0);
        const T inv = empty ? T(0) : T(1) / total;
        for (int64_t c = 0; c < d.value_dim; ++c) o[r * d.value_dim + c] = acc[r * vpad + c] * inv;
        l[r] = empty ? neg_inf<T>() : running_max[r] + std::log(total);
      }
    }
  });
}

// --------------------------------------------------------------------------------------- backward

// Workspace layout (bytes, each part aligned to 64): [GQA partial dK (B, H, Tk, d) | partial dV
// (B, H, Tk, dv)] when H > Hkv and those gradients are asked for, then [bias partials: one bias-sized
// block per parallel chunk] when the bias is shared by several (b, h) and its gradient is asked for.
struct BackwardLayout {
  int64_t grad_kv_bytes = 0;   // 0 when dK, dV go straight to the outputs
  int64_t bias_chunks = 0;     // 0 when dbias goes straight to the output
  int64_t bias_bytes = 0;
  int64_t total() const { return grad_kv_bytes + bias_chunks * bias_bytes; }
};

int64_t align64(int64_t n) { return (n + 63) / 64 * 64; }

BackwardLayout backward_layout(const AttentionDims& d, int64_t elem, bool need_kv, bool need_bias) {
  BackwardLayout L;
  if (need_kv && d.group() > 1)
    L.grad_kv_bytes = align64(d.batch * d.heads * d.k_len * (d.head_dim + d.value_dim) * elem);
  if (need_bias && d.bias_broadcast_bh()) {
    L.bias_chunks = std::max(1, parallel_chunk_count(d.batch * d.heads, 1));
    L.bias_bytes = align64(d.bias_numel * elem);
  }
  return L;
}

template <class T>
void backward_kernel(const Problem<T>& p, const T* lse, const T* dout, const T* dlse, T* dq, T* dk,
                     T* dv, T* dbias, uint8_t* workspace, int64_t workspace_bytes) {
  const AttentionDims& d = p.d;
  const int64_t dpad = padded<T>(d.head_dim), vpad = padded<T>(d.value_dim);
  const bool need_kv = dk || dv;
  const BackwardLayout layout = backward_layout(d, sizeof(T), need_kv, dbias != nullptr);
  // Per-head dK/dV: the outputs themselves, or the GQA partials in the workspace.
  T* dk_heads = dk;
  T* dv_heads = dv;
  if (layout.grad_kv_bytes) {
    dk_heads = reinterpret_cast<T*>(workspace);
    dv_heads = dk_heads + d.batch * d.heads * d.k_len * d.head_dim;
  }
  const int64_t kv_heads_of_dk = layout.grad_kv_bytes ? d.heads : d.kv_heads;
  // The bias gradient of chunk c: straight into dbias, or into partial c of the workspace.
  const int64_t max_bias_chunks =
      layout.bias_chunks ? (workspace_bytes - layout.grad_kv_bytes) / layout.bias_bytes : int64_t{1} << 30;
  T* bias_partials = layout.bias_chunks ? reinterpret_cast<T*>(workspace + layout.grad_kv_bytes) : nullptr;
  if (dbias && !bias_partials) std::memset(dbias, 0, d.bias_numel * sizeof(T));
  const int chunks = static_cast<int>(std::min<int64_t>(parallel_chunk_count(d.batch * d.heads, 1), max_bias_chunks));

  const int64_t key_blocks = (d.k_len + kColBlock - 1) / kColBlock, tk_pad = key_blocks * kColBlock;
  parallel_for(
      d.batch * d.heads, 1,
      [&](int chunk, int64_t t0, int64_t t1) {
        T* dbias_target = dbias;
        if (bias_partials && dbias) {
          dbias_target = bias_partials + chunk * (layout.bias_bytes / sizeof(T));
          std::memset(dbias_target, 0, d.bias_numel * sizeof(T));
        }
        // The task's key/value head packed once (Kᵀ and Vᵀ per key block as in the forward, K by rows
        // for dQ); P and dP of a whole block of query rows; dK, dV of the whole head.
        const int64_t kt_block = d.head_dim * kColBlock, vt_block = d.value_dim * kColBlock;
        std::vector<T> kt_head(key_blocks * kt_block, T(0)), vt_head(key_blocks * vt_block, T(0)),
            k_rows(tk_pad * dpad, T(0)), q_tile(kRowBlock * dpad, T(0)), do_tile(kRowBlock * vpad, T(0)),
            dq_tile(kRowBlock * dpad), S(kRowBlock * kColBlock), P(kRowBlock * tk_pad), dP(kRowBlock * tk_pad),
            P_dropped(kRowBlock * kColBlock), dk_acc(need_kv ? tk_pad * dpad : 0), dv_acc(need_kv ? tk_pad * vpad : 0),
            delta(kRowBlock), corr(kRowBlock);
        const T* packed_k = nullptr;
        for (int64_t task = t0; task < t1; ++task) {
          const int64_t b = task / d.heads, h = task % d.heads;
          const int64_t row0 = (b * d.heads + h) * d.q_len;
          const T* qh = p.q_head(b, h);
          const T* doh = dout + row0 * d.value_dim;
          if (packed_k != p.k_head(b, h)) {
            packed_k = p.k_head(b, h);
            for (int64_t jb = 0; jb < key_blocks; ++jb) {
              const int64_t j0 = jb * kColBlock, cols = std::min(kColBlock, d.k_len - j0);
              pack_transposed(packed_k, j0, cols, d.head_dim, kt_head.data() + jb * kt_block, kColBlock);
              pack_transposed(p.v_head(b, h), j0, cols, d.value_dim, vt_head.data() + jb * vt_block, kColBlock);
            }
            pack_rows(packed_k, 0, d.k_len, d.head_dim, k_rows.data(), dpad);
          }
          std::fill(dk_acc.begin(), dk_acc.end(), T(0));
          std::fill(dv_acc.begin(), dv_acc.end(), T(0));
          for (int64_t i0 = 0; i0 < d.q_len; i0 += kRowBlock) {
            const int64_t rows = std::min(kRowBlock, d.q_len - i0);
            const int64_t blocks = (p.key_end(i0 + rows - 1) + kColBlock - 1) / kColBlock;
            pack_rows(qh, i0, rows, d.head_dim, q_tile.data(), dpad);
            pack_rows(doh, i0, rows, d.value_dim, do_tile.data(), vpad);
            // Pass 1, every visible key: P = e^{S − L} and dP = dO·Vᵀ (∘ Z/(1−p) under dropout), stored.
            for (int64_t jb = 0; jb < blocks; ++jb) {
              const int64_t j0 = jb * kColBlock, cols = std::min(kColBlock, d.k_len - j0);
              score_tile(p, b, h, i0, rows, j0, cols, q_tile.data(), dpad, kt_head.data() + jb * kt_block, kColBlock,
                         S.data());
              for (int64_t r = 0; r < rows; ++r) {
                const T* __restrict__ s = S.data() + r * kColBlock;
                T* __restrict__ pr = P.data() + r * tk_pad + j0;
                const T l = lse[row0 + i0 + r];
                const T m = l == neg_inf<T>() ? std::numeric_limits<T>::infinity() : l;  // no key seen: P = 0
#pragma omp simd
                for (int64_t j = 0; j < cols; ++j) pr[j] = exp_nonpositive(s[j] - m);
              }
              gemm_chunked<T>(rows, kColBlock, d.value_dim, do_tile.data(), vpad, vt_head.data() + jb * vt_block,
                              kColBlock, dP.data() + j0, tk_pad);
              if (p.drop_threshold) apply_dropout(p, b, h, i0, rows, j0, cols, dP.data() + j0, tk_pad);
            }
            // Each row's P normalized exactly, P̃ = P/z with z = Σ_j P_j, and D = Σ_j P̃_j dP_j − dL, as
            // torch's softmax backward forms it. The FlashAttention-2 shortcuts (P from the rounded L,
            // D = dO·O from the rounded O) reached 1.6x the parity bound on a decode case with a bias.
            for (int64_t r = 0; r < rows; ++r) {
              const T* __restrict__ pr = P.data() + r * tk_pad;
              const T* __restrict__ gr = dP.data() + r * tk_pad;
              const int64_t n = std::min(blocks * kColBlock, d.k_len);
              double z = 0, pdp = 0;  // in double: these sums are the whole point of this pass
#pragma omp simd reduction(+ : z, pdp)
              for (int64_t j = 0; j < n; ++j) {
                z += pr[j];
                pdp += static_cast<double>(pr[j]) * gr[j];
              }
              corr[r] = z > 0 ? static_cast<T>(1 / z) : T(1);
              delta[r] = static_cast<T>(pdp / (z > 0 ? z : 1)) - (dlse ? dlse[row0 + i0 + r] : T(0));
            }
            // Pass 2: dV += P̃ᵀ·dO (P̃ ∘ Z/(1−p) under dropout), dS = P̃ ∘ (dP − D) over dP,
            // dQ += dS·K, dK += dSᵀ·Q, the bias gradient += dS.
            std::fill(dq_tile.begin(), dq_tile.end(), T(0));
            for (int64_t jb = 0; jb < blocks; ++jb) {
              const int64_t j0 = jb * kColBlock, cols = std::min(kColBlock, d.k_len - j0);
              for (int64_t r = 0; r < rows; ++r) {
                T* __restrict__ pr = P.data() + r * tk_pad + j0;
                T* __restrict__ g = dP.data() + r * tk_pad + j0;
                const T c = corr[r], dr = delta[r];
#pragma omp simd
                for (int64_t j = 0; j < cols; ++j) {
                  pr[j] *= c;
                  g[j] = pr[j] * (g[j] - dr);
                }
              }
              if (dv) {
                const T* p_used = P.data() + j0;
                int64_t ld_used = tk_pad;
                if (p.drop_threshold) {
                  for (int64_t r = 0; r < rows; ++r)
                    std::copy(P.data() + r * tk_pad + j0, P.data() + r * tk_pad + j0 + cols,
                              P_dropped.data() + r * kColBlock);
                  apply_dropout(p, b, h, i0, rows, j0, cols, P_dropped.data(), kColBlock);
                  p_used = P_dropped.data();
                  ld_used = kColBlock;
                }
                gemm<T, true>(cols, vpad, rows, p_used, ld_used, do_tile.data(), vpad, dv_acc.data() + j0 * vpad, vpad);
              }
              if (dbias_target) {
                T* db = dbias_target + p.bias_offset(b, h);
                const int64_t si = d.bias_stride[2], sj = d.bias_stride[3];
                for (int64_t r = 0; r < rows; ++r) {
                  T* __restrict__ dbr = db + (i0 + r) * si;
                  const T* __restrict__ g = dP.data() + r * tk_pad + j0;
                  if (sj == 1) {
#pragma omp simd
                    for (int64_t j = 0; j < cols; ++j) dbr[j0 + j] += g[j];
                  } else {
                    T s = 0;
#pragma omp simd reduction(+ : s)
                    for (int64_t j = 0; j < cols; ++j) s += g[j];
                    dbr[0] += s;
                  }
                }
              }
              if (dq)
                gemm<T>(rows, dpad, cols, dP.data() + j0, tk_pad, k_rows.data() + j0 * dpad, dpad, dq_tile.data(), dpad);
              if (dk)
                gemm<T, true>(cols, dpad, rows, dP.data() + j0, tk_pad, q_tile.data(), dpad, dk_acc.data() + j0 * dpad,
                              dpad);
            }
            if (dq) {
              T* o = dq + (row0 + i0) * d.head_dim;
              for (int64_t r = 0; r < rows; ++r)
                for (int64_t c = 0; c < d.head_dim; ++c) o[r * d.head_dim + c] = dq_tile[r * dpad + c] * p.scale;
            }
          }
          if (need_kv) {
            const int64_t head = layout.grad_kv_bytes ? h : h / d.group();
            const int64_t kv_row = (b * kv_heads_of_dk + head) * d.k_len;
            for (int64_t j = 0; j < d.k_len; ++j) {
              if (dk)
                for (int64_t c = 0; c < d.head_dim; ++c)
                  dk_heads[(kv_row + j) * d.head_dim + c] = dk_acc[j * dpad + c] * p.scale;
              if (dv)
                for (int64_t c = 0; c < d.value_dim; ++c) dv_heads[(kv_row + j) * d.value_dim + c] = dv_acc[j * vpad + c];
            }
          }
        }
      },
      chunks);

  // GQA: dK[b, g] = Σ over the query heads of group g of their partials, in head order.
  if (layout.grad_kv_bytes) {
    const int64_t group = d.group();
    auto reduce_heads = [&](const T* partial, T* outp, int64_t dim) {
      if (!outp) return;
      const int64_t per_head = d.k_len * dim;
      parallel_for(d.batch * d.kv_heads, 1, [&](int, int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
          T* o = outp + t * per_head;
          const T* src = partial + t * group * per_head;
          std::copy(src, src + per_head, o);
          for (int64_t g = 1; g < group; ++g) {
            const T* s = src + g * per_head;
#pragma omp simd
            for (int64_t e = 0; e < per_head; ++e) o[e] += s[e];
          }
        }
      });
    };
    reduce_heads(dk_heads, dk, d.head_dim);
    reduce_heads(dv_heads, dv, d.value_dim);
  }
  // A bias shared by several (b, h): sum the per-chunk partials in chunk order.
  if (bias_partials && dbias) {
    const int64_t stride = layout.bias_bytes / sizeof(T);
    parallel_for(d.bias_numel, 1 << 12, [&](int, int64_t e0, int64_t e1) {
      for (int64_t e = e0; e < e1; ++e) {
        T s = 0;
        for (int c = 0; c < chunks; ++c) s += bias_partials[c * stride + e];
        dbias[e] = s;
      }
    });
  }
}

template <class T>
T* ptr_or_null(const OptView& v) {
  return v ? v->data_as<T>() : nullptr;
}

}  // namespace

template <>
void attention_forward<DeviceType::CPU>(const TensorView& q, const TensorView& k, const TensorView& v,
                                        const OptView& key_padding_mask, const OptView& attn_bias, double scale,
                                        bool causal, double dropout_p, int64_t seed, const TensorView& out,
                                        const TensorView& lse, std::uintptr_t) {
  const AttentionDims d =
      check_attention_forward(DeviceType::CPU, q, k, v, key_padding_mask, attn_bias, scale, dropout_p, out, lse);
  prefer_huge_pages(out);
  if (out.numel() == 0) return;
  dispatch_cpu_floating(q.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const auto p = make_problem<T>(q, k, v, key_padding_mask, attn_bias, d, scale, causal, dropout_p, seed);
    forward_kernel(p, out.data_as<T>(), lse.data_as<T>());
  });
}

template <>
int64_t attention_backward_workspace_size<DeviceType::CPU>(const TensorView& q, const TensorView& k,
                                                           const TensorView& v, const OptView& attn_bias,
                                                           bool need_grad_bias) {
  if (q.ndim != 4 || k.ndim != 4 || v.ndim != 4 || k.size(1) < 1 || q.size(1) % k.size(1) != 0) return 0;
  AttentionDims d{q.size(0), q.size(1), k.size(1), q.size(2), k.size(2), q.size(3), v.size(3)};
  if (attn_bias && attn_bias->ndim == 4) {
    d.has_bias = true;
    d.bias_numel = attn_bias->numel();
    d.bias_stride[0] = attn_bias->size(0) == 1 ? 0 : 1;
    d.bias_stride[1] = attn_bias->size(1) == 1 ? 0 : 1;
  }
  return backward_layout(d, dtype_size(q.dtype), true, need_grad_bias && d.has_bias).total();
}

template <>
void attention_backward<DeviceType::CPU>(const TensorView& grad_out, const OptView& grad_lse, const TensorView& q,
                                         const TensorView& k, const TensorView& v, const TensorView& out,
                                         const TensorView& lse, const OptView& key_padding_mask,
                                         const OptView& attn_bias, double scale, bool causal, double dropout_p,
                                         int64_t seed, const OptView& grad_q, const OptView& grad_k,
                                         const OptView& grad_v, const OptView& grad_bias, const OptView& workspace,
                                         std::uintptr_t) {
  const int64_t need_bytes = attention_backward_workspace_size<DeviceType::CPU>(q, k, v, attn_bias, grad_bias.has_value());
  const AttentionDims d = check_attention_backward(DeviceType::CPU, grad_out, grad_lse, q, k, v, out, lse,
                                                   key_padding_mask, attn_bias, scale, dropout_p, grad_q, grad_k,
                                                   grad_v, grad_bias, workspace, need_bytes);
  prefer_huge_pages(grad_q);
  prefer_huge_pages(grad_k);
  prefer_huge_pages(grad_v);
  prefer_huge_pages(grad_bias);
  dispatch_cpu_floating(q.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const auto p = make_problem<T>(q, k, v, key_padding_mask, attn_bias, d, scale, causal, dropout_p, seed);
    // Empty inputs: gradients are zero (a sum over nothing).
    if (q.numel() == 0 || k.numel() == 0 || out.numel() == 0) {
      for (const OptView* g : {&grad_q, &grad_k, &grad_v, &grad_bias})
        if (*g && (*g)->numel()) std::memset((*g)->data, 0, (*g)->numel() * sizeof(T));
      return;
    }
    backward_kernel(p, lse.data_as<T>(), grad_out.data_as<T>(), ptr_or_null<T>(grad_lse),
                    ptr_or_null<T>(grad_q), ptr_or_null<T>(grad_k), ptr_or_null<T>(grad_v), ptr_or_null<T>(grad_bias),
                    workspace ? workspace->data_as<uint8_t>() : nullptr, workspace ? workspace->numel() : 0);
  });
}

template <>
void attention_dropout_mask<DeviceType::CPU>(const TensorView& mask, double dropout_p, int64_t seed, std::uintptr_t) {
  check_dropout_mask(DeviceType::CPU, mask, dropout_p);
  const uint64_t key = dropout_key(seed);
  const uint64_t threshold = dropout_threshold(dropout_p);
  uint8_t* m = mask.data_as<uint8_t>();
  parallel_for(mask.numel(), 1 << 14, [&](int, int64_t e0, int64_t e1) {
    for (int64_t e = e0; e < e1; ++e) m[e] = threshold == 0 || dropout_keep(key, e, threshold);
  });
}

}  // namespace replearn::attention
