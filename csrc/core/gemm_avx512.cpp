// A float32 GEMM for AVX-512F CPUs (core/gemm_native.h), used by blas::gemm<float> instead of
// OpenBLAS where the CPU has AVX-512F (docs/design.md, "GEMM": why, and REPLEARN_GEMM).
//
// The structure is Goto's (K. Goto, R. van de Geijn, "Anatomy of high-performance matrix
// multiplication", ACM TOMS 34(3), 2008) as refined in BLIS (F. Van Zee, R. van de Geijn, "BLIS: a
// framework for rapidly instantiating BLAS functionality", ACM TOMS 41(3), 2015):
//
//   for jc in steps of NC over n:            B block (KC × NC) packed once, lives in L3
//     for pc in steps of KC over k:
//       pack op(B)[pc.., jc..] into NR-wide column panels
//       for ic in steps of MC over m:        A block (MC × KC) packed, lives in L2
//         pack op(A)[ic.., pc..] into MR-tall row panels
//         for each NR panel of B, each MR panel of A: the microkernel (MR × NR of C in registers)
//
// Packing absorbs the transposes and leading dimensions, and pads the edges with zeros so the
// microkernel always runs a full MR × NR tile; edge tiles are written through a small buffer.
// The first KC block applies the caller's beta (beta = 0 never reads C), the later ones add.
//
// This file is compiled for AVX-512 through `#pragma GCC target` (not a per-file -m flag), so the
// module still loads and runs OpenBLAS on CPUs without it; nothing here runs before
// cpu_supported() said yes.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

#include "core/gemm_native.h"
#include "core/parallel.h"

namespace replearn::blas::native {

bool cpu_supported() {
  // libgcc's check includes the OS enabling the zmm state (XGETBV).
  return __builtin_cpu_supports("avx512f");
}

}  // namespace replearn::blas::native

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,fma")
// GCC 12's intrinsics headers trip -Wuninitialized on their own _mm512_undefined_ps().
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
// Lambdas here return __m256 values; in a translation unit built without -mavx (the portable build)
// GCC notes the vector-return ABI, which concerns no call across translation units.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace replearn::blas::native {

namespace {

// Microkernel: MR rows × NV zmm vectors (NR = 16·NV columns) of C accumulate in MR·NV registers; per
// step of k, NV loads of B and MR broadcasts of A (folded into the FMA as {1to16} memory operands).
// Three shapes, measured on Zen 5 (bench/gemm.py; docs/design.md, "GEMM"): 6 × 64 is the fastest
// (4 loads + 6 broadcasts per 24 FMAs), 14 × 32 wastes less of its tile when m is small and just
// above a multiple of 6, 28 × 16 is for n ≤ 16, where wider tiles would compute mostly zeros.
// sgemm() picks the shape with the most useful work per cycle.
// Blocking: the B micro-panel (KC × NR · 4 B, 32–48 KiB) is reused from L1 across an MC block of
// A rows, the A block (MC × KC · 4 B ≤ 800 KiB) stays in the 1 MiB L2, the B block (KC × NC) in L3.
// KC was measured (128–512 tried per shape; differences were mostly within the shared machine's noise).
template <int MR_, int NV_, int64_t KC_, int64_t KC_PACKED_ = KC_>
struct Shape {
  static constexpr int kMR = MR_;
  static constexpr int kNV = NV_;
  static constexpr int kNR = 16 * NV_;
  static constexpr int64_t kKC = KC_;
  static constexpr int64_t kKCPacked = KC_PACKED_;  // the k blocks of a B packed once (blas::pack_b)
  static constexpr int64_t kMC = (336 / MR_) * MR_;
  static constexpr int64_t kNC = 4096;
};
using Big = Shape<6, 4, 192>;
using Wide = Shape<14, 2, 256>;
using Tall = Shape<28, 1, 512>;
// 8 × 48 (24 accumulators; 3 loads + 8 broadcasts per 24 FMAs): measured here (one thread, CPU time,
// shared machine) against 6 × 64 with the same packed B, it ran 32 × 2048 × 512 (an LSTM step, batch
// 32: no padded rows) at 250–262 against 211–221 GFLOP/s, and 1024 × 2048 × 256 / 2048 × 512 × 4096
// at 242–244 against 215–224. KC 256 measured ≥ 192. With B packed once (the RNN's products, the
// only users of blas::pack_b) k blocks of up to 512: an LSTM step 32 × 2048 × 512 (one k block
// instead of two) 251 → 259 GFLOP/s on one thread, 488 → 505 on two sharing the packed W_hh; the
// backward's dx 4096 × 256 × 2048 and dW 2048 × 768 × 4096 0–3% faster, the input projection
// (k 256) unchanged (/tmp C++ bench over the core library, three alternations).
using Square = Shape<8, 3, 256, 512>;

// Per-thread packing buffers, grown on demand and kept (a GEMM per step of an RNN must not allocate).
struct Buffer {
  float* data = nullptr;
  size_t size = 0;
  ~Buffer() { std::free(data); }
  float* get(size_t n) {
    if (n > size) {
      std::free(data);
      data = static_cast<float*>(std::aligned_alloc(64, ((n * sizeof(float) + 63) / 64) * 64));
      if (data == nullptr) throw std::bad_alloc();
      size = n;
    }
    return data;
  }
};
thread_local Buffer t_pack_a, t_pack_b;
thread_local Buffer t_source_rows;  // a PanelSource's block of Bᵀ rows

inline __mmask16 low_mask(int64_t count) {
  return count >= 16 ? __mmask16(0xFFFF) : count <= 0 ? __mmask16(0) : __mmask16((1u << count) - 1);
}

// Where op(M)[r, c] is stored: M row-major with leading dimension ld, or M transposed.
inline const float* op_at(Trans trans, const float* m, int64_t ld, int64_t r, int64_t c) {
  return trans == Trans::No ? m + r * ld + c : m + c * ld + r;
}

// Masked or plain accesses in packing, measured (bench/gemm.py --threads 1, old and new builds
// alternated three times): plain loads and stores where the 8 × 48 tile packs whole 8-row A panels
// (transpose8, the transposed-A copy) and where transpose16 writes B's panels (a row stride of NR
// floats) made the LSTM's products 0.5–2% faster; plain accesses in the 14- and 28-row A panels
// and in B's untransposed copy made ResNet's 4² products (n = 16) 3–9% slower, so those stay masked.

// 16 × 16 transpose: rows src[r·ld : r·ld + cols] (r < rows, others zero) into dst[c·dld + r] for
// c < cols and r < width (a store mask, so that panels narrower than 16 are not overrun).
inline void transpose16(const float* src, int64_t ld, int rows, float* dst, int64_t dld, int cols, int width = 16) {
  __m512 r[16];
  const __mmask16 cmask = low_mask(cols);
  for (int i = 0; i < 16; ++i) r[i] = i < rows ? _mm512_maskz_loadu_ps(cmask, src + i * ld) : _mm512_setzero_ps();
  // Three rounds of interleaving: 32-bit, 64-bit, then 128-bit lanes twice.
  __m512 t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
    r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
    r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
    r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
  }
  // r[4q + s] holds, in each 128-bit lane L, column 4L + s of rows 4q .. 4q + 3.
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_shuffle_f32x4(r[i], r[4 + i], 0x88);       // lanes 0, 2 of r[i], then of r[4 + i]
    t[4 + i] = _mm512_shuffle_f32x4(r[i], r[4 + i], 0xDD);   // lanes 1, 3
    t[8 + i] = _mm512_shuffle_f32x4(r[8 + i], r[12 + i], 0x88);
    t[12 + i] = _mm512_shuffle_f32x4(r[8 + i], r[12 + i], 0xDD);
  }
  for (int i = 0; i < 4; ++i) {
    // column s (lane 0) and 8 + s (lane 2) from t[i], t[8 + i]; 4 + s and 12 + s from t[4 + i], t[12 + i]
    r[i] = _mm512_shuffle_f32x4(t[i], t[8 + i], 0x88);
    r[8 + i] = _mm512_shuffle_f32x4(t[i], t[8 + i], 0xDD);
    r[4 + i] = _mm512_shuffle_f32x4(t[4 + i], t[12 + i], 0x88);
    r[12 + i] = _mm512_shuffle_f32x4(t[4 + i], t[12 + i], 0xDD);
  }
  if (width >= 16 && dld % 16 == 0) {  // B's panels (NR wide); A's (MR = 14, 28) keep masked stores
    for (int c = 0; c < cols; ++c) _mm512_storeu_ps(dst + c * dld, r[c]);
  } else {
    const __mmask16 store = low_mask(width);
    for (int c = 0; c < cols; ++c) _mm512_mask_storeu_ps(dst + c * dld, store, r[c]);
  }
}

// 8 × 16 transpose for panels of at most 8 rows (MR ≤ 8): rows src[r·ld : r·ld + cols] (r < rows,
// others zero) into dst[c·dld + r] for c < cols and r < width. Half the shuffles of transpose16,
// which for such panels transposed 8 rows of zeros too (A's packing was 2.4% of an LSTM forward).
// Each 128-bit lane L of the rows holds columns 4L … 4L + 3: two rounds of in-lane interleaving give,
// per lane, rows 0–3 (u[s]) and rows 4–7 (u[4 + s]) of column 4L + s; lane shuffles then put the two
// halves of a column side by side in one 256-bit half.
inline void transpose8(const float* src, int64_t ld, int rows, float* dst, int64_t dld, int cols, int width) {
  __m512 r[8];
  if (cols >= 16) {
    for (int i = 0; i < 8; ++i) r[i] = i < rows ? _mm512_loadu_ps(src + i * ld) : _mm512_setzero_ps();
  } else {
    const __mmask16 cmask = low_mask(cols);
    for (int i = 0; i < 8; ++i) r[i] = i < rows ? _mm512_maskz_loadu_ps(cmask, src + i * ld) : _mm512_setzero_ps();
  }
  __m512 t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);      // per lane: r_i c0, r_i+1 c0, r_i c1, r_i+1 c1
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);  // per lane: columns 2 and 3
  }
  for (int h = 0; h < 2; ++h) {  // rows 4h … 4h + 3
    const __m512 lo01 = t[4 * h], hi01 = t[4 * h + 1], lo23 = t[4 * h + 2], hi23 = t[4 * h + 3];
    u[4 * h + 0] = _mm512_shuffle_ps(lo01, lo23, 0x44);  // column 4L + 0
    u[4 * h + 1] = _mm512_shuffle_ps(lo01, lo23, 0xEE);  // column 4L + 1
    u[4 * h + 2] = _mm512_shuffle_ps(hi01, hi23, 0x44);  // column 4L + 2
    u[4 * h + 3] = _mm512_shuffle_ps(hi01, hi23, 0xEE);  // column 4L + 3
  }
  const __mmask8 store = static_cast<__mmask8>(width >= 8 ? 0xFF : (1u << width) - 1);
  for (int s = 0; s < 4; ++s) {
    // [u[s].L0, u[s].L1, u[4+s].L0, u[4+s].L1] → [u[s].L0, u[4+s].L0, u[s].L1, u[4+s].L1]: columns s, 4 + s
    const __m512 a01 = _mm512_shuffle_f32x4(u[s], u[4 + s], 0x44);
    const __m512 a23 = _mm512_shuffle_f32x4(u[s], u[4 + s], 0xEE);
    const __m512 c01 = _mm512_shuffle_f32x4(a01, a01, 0xD8);  // lanes 0, 2, 1, 3
    const __m512 c23 = _mm512_shuffle_f32x4(a23, a23, 0xD8);
    const int columns[4] = {s, 4 + s, 8 + s, 12 + s};
    auto high = [](__m512 v) { return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)); };  // F, not DQ
    const __m256 halves[4] = {_mm512_castps512_ps256(c01), high(c01), _mm512_castps512_ps256(c23), high(c23)};
    for (int q = 0; q < 4; ++q) {
      if (columns[q] >= cols) continue;
      if (width >= 8) _mm256_storeu_ps(dst + columns[q] * dld, halves[q]);
      else _mm256_mask_storeu_ps(dst + columns[q] * dld, store, halves[q]);
    }
  }
}

// op(A)[i0 : i0 + mc, p0 : p0 + kc] into ceil(mc / MR) panels, each kc × MR (k-major), zero-padded.
template <class S>
void pack_a(Trans trans, const float* a, int64_t lda, int64_t mc, int64_t kc, float* dst) {
  for (int64_t ir = 0; ir < mc; ir += S::kMR) {
    const int64_t rows = std::min<int64_t>(S::kMR, mc - ir);
    if (trans == Trans::Yes) {  // A(i, p) = a[p·lda + i]: MR contiguous values per p
      for (int q = 0; q < S::kMR; q += 16) {
        const float* src = a + ir + q;
        if (S::kMR == 8 && rows == 8) {  // one 256-bit row per p
          for (int64_t p = 0; p < kc; ++p) _mm256_storeu_ps(dst + p * 8, _mm256_loadu_ps(src + p * lda));
        } else {
          const __mmask16 mask = low_mask(rows - q), full = low_mask(S::kMR - q);
          for (int64_t p = 0; p < kc; ++p)
            _mm512_mask_storeu_ps(dst + p * S::kMR + q, full, _mm512_maskz_loadu_ps(mask, src + p * lda));
        }
      }
    } else if constexpr (S::kMR <= 8) {  // A(i, p) = a[i·lda + p]: 8 × 16 transposes
      const float* src = a + ir * lda;
      for (int64_t p = 0; p < kc; p += 16)
        transpose8(src + p, lda, static_cast<int>(rows), dst + p * S::kMR, S::kMR,
                   static_cast<int>(std::min<int64_t>(16, kc - p)), S::kMR);
    } else {  // A(i, p) = a[i·lda + p]: 16 × 16 transposes, rows i of storage become columns
      for (int q = 0; q < S::kMR; q += 16) {
        const int panel_rows = static_cast<int>(std::clamp<int64_t>(rows - q, 0, 16));
        const float* src = a + (ir + q) * lda;
        for (int64_t p = 0; p < kc; p += 16)
          transpose16(src + p, lda, panel_rows, dst + p * S::kMR + q, S::kMR,
                      static_cast<int>(std::min<int64_t>(16, kc - p)), std::min(16, S::kMR - q));
      }
    }
    dst += kc * S::kMR;
  }
}

// One panel: op(B)[p0 : p0 + kc, j0 : j0 + cols] (cols ≤ NR) into kc × NR (k-major), zero-padded.
template <class S>
void pack_b_panel(Trans trans, const float* b, int64_t ldb, int64_t kc, int64_t cols, float* dst) {
  if (trans == Trans::No) {  // B(p, j) = b[p·ldb + j]: NR contiguous values per p
    for (int64_t p = 0; p < kc; ++p)
      for (int v = 0; v < S::kNV; ++v)
        _mm512_store_ps(dst + p * S::kNR + 16 * v,
                        _mm512_maskz_loadu_ps(low_mask(cols - 16 * v), b + p * ldb + 16 * v));
  } else {  // B(p, j) = b[j·ldb + p]: 16 × 16 transposes, rows j of storage become columns
    for (int v = 0; v < S::kNV; ++v) {
      const int rows = static_cast<int>(std::clamp<int64_t>(cols - 16 * v, 0, 16));
      const float* src = b + 16 * v * ldb;
      for (int64_t p = 0; p < kc; p += 16)
        transpose16(src + p, ldb, rows, dst + p * S::kNR + 16 * v, S::kNR,
                    static_cast<int>(std::min<int64_t>(16, kc - p)));
    }
  }
}

// op(B)[p0 : p0 + kc, j0 : j0 + nc] into ceil(nc / NR) panels, each kc × NR (k-major), zero-padded.
template <class S>
void pack_b(Trans trans, const float* b, int64_t ldb, int64_t kc, int64_t nc, float* dst) {
  for (int64_t jr = 0; jr < nc; jr += S::kNR) {
    pack_b_panel<S>(trans, op_at(trans, b, ldb, 0, jr), ldb, kc, std::min<int64_t>(S::kNR, nc - jr), dst);
    dst += kc * S::kNR;
  }
}

// C[0 : mr, 0 : nr] = alpha · (A panel · B panel) + beta · C over the first NV of the panel's S::kNV
// vectors (a narrower kernel for the last panel of C's columns, instead of multiplying zeros); full
// tiles go straight to C.
template <class S, int NV>
void micro(int64_t kc, const float* __restrict a, const float* __restrict b, float* c, int64_t ldc, float alpha,
           float beta, int64_t mr, int64_t nr) {
  __m512 acc[S::kMR][NV];
#pragma GCC unroll 32
  for (int i = 0; i < S::kMR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_setzero_ps();
  // A k block after the first adds to C: ask for C's lines now, as the k loop only needs them at its
  // end. In products with many k blocks over a C larger than L2 (an RNN's dx and dW: 7–16 blocks)
  // C has left the near caches between passes.
  if (beta != 0.f) {
#pragma GCC unroll 32
    for (int i = 0; i < S::kMR; ++i) {
      const char* row = reinterpret_cast<const char*>(c + i * ldc);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) __builtin_prefetch(row + 64 * v, 1, 3);
      __builtin_prefetch(row + 64 * NV - 1, 1, 3);
    }
  }
  for (int64_t p = 0; p < kc; ++p) {
    __m512 bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = _mm512_load_ps(b + 16 * v);
    _mm_prefetch(reinterpret_cast<const char*>(b + 8 * S::kNR), _MM_HINT_T0);
#pragma GCC unroll 32
    for (int i = 0; i < S::kMR; ++i) {
      const __m512 ai = _mm512_set1_ps(a[i]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_fmadd_ps(ai, bv[v], acc[i][v]);
    }
    a += S::kMR;
    b += S::kNR;
  }
  const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
  if (mr == S::kMR && nr == 16 * NV) {
#pragma GCC unroll 32
    for (int i = 0; i < S::kMR; ++i)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        float* ci = c + i * ldc + 16 * v;
        const __m512 x = _mm512_mul_ps(va, acc[i][v]);
        _mm512_storeu_ps(ci, beta == 0.f ? x : _mm512_fmadd_ps(vb, _mm512_loadu_ps(ci), x));
      }
    return;
  }
  for (int i = 0; i < S::kMR; ++i) {
    if (i >= mr) break;
    for (int v = 0; v < NV; ++v) {
      const int64_t cols = nr - 16 * v;
      if (cols <= 0) break;
      const __mmask16 mask = low_mask(cols);
      float* ci = c + i * ldc + 16 * v;
      const __m512 x = _mm512_mul_ps(va, acc[i][v]);
      _mm512_mask_storeu_ps(ci, mask, beta == 0.f ? x : _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(mask, ci), x));
    }
  }
}

// micro<S, NV> with NV = the vectors that the panel's nr columns need.
template <class S, int NV = S::kNV>
void micro_for(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, float alpha, float beta, int64_t mr,
               int64_t nr) {
  if constexpr (NV > 1) {
    if (nr <= 16 * (NV - 1)) return micro_for<S, NV - 1>(kc, a, b, c, ldc, alpha, beta, mr, nr);
  }
  micro<S, NV>(kc, a, b, c, ldc, alpha, beta, mr, nr);
}

// B is read from b (ldb, tb), or packed by `source` from its column source_j on when one is given.
template <class S>
void sgemm_serial(Trans ta, Trans tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
                  const float* b, int64_t ldb, float beta, float* c, int64_t ldc,
                  const PanelSource<float>* source = nullptr, int64_t source_j = 0) {
  if (k == 0 || alpha == 0.f) {  // C = beta·C (BLAS: A and B are not read)
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == 0.f ? 0.f : beta * c[i * ldc + j];
    return;
  }
  // k in equal blocks of at most 1.25·KC: a last block of a few columns would cost a pass over C.
  const int64_t k_blocks = (k + S::kKC + S::kKC / 4 - 1) / (S::kKC + S::kKC / 4);
  const int64_t kc_max = (k + k_blocks - 1) / k_blocks;
  float* pb = t_pack_b.get(kc_max * ((std::min(n, S::kNC) + S::kNR - 1) / S::kNR) * S::kNR);
  float* pa = t_pack_a.get(kc_max * ((std::min(m, S::kMC) + S::kMR - 1) / S::kMR) * S::kMR);
  for (int64_t jc = 0; jc < n; jc += S::kNC) {
    const int64_t nc = std::min(S::kNC, n - jc);
    for (int64_t pc = 0; pc < k; pc += kc_max) {
      const int64_t kc = std::min(kc_max, k - pc);
      const float beta_block = pc == 0 ? beta : 1.f;
      if (source && source->layout == PanelSource<float>::Layout::Panels) {
        source->pack(pc, kc, source_j + jc, nc, S::kNR, pb);
      } else if (source) {  // Bᵀ rows (nc × kc), transposed into panels here
        float* rows = t_source_rows.get(nc * kc);
        source->pack(pc, kc, source_j + jc, nc, nc, rows);
        pack_b<S>(Trans::Yes, rows, kc, kc, nc, pb);
      } else {
        pack_b<S>(tb, op_at(tb, b, ldb, pc, jc), ldb, kc, nc, pb);
      }
      for (int64_t ic = 0; ic < m; ic += S::kMC) {
        const int64_t mc = std::min(S::kMC, m - ic);
        pack_a<S>(ta, op_at(ta, a, lda, ic, pc), lda, mc, kc, pa);
        for (int64_t jr = 0; jr < nc; jr += S::kNR) {
          const float* bp = pb + (jr / S::kNR) * kc * S::kNR;
          for (int64_t ir = 0; ir < mc; ir += S::kMR) {
            micro_for<S>(kc, pa + (ir / S::kMR) * kc * S::kMR, bp, c + (ic + ir) * ldc + jc + jr, ldc, alpha, beta_block,
                  std::min<int64_t>(S::kMR, mc - ir), std::min<int64_t>(S::kNR, nc - jr));
          }
        }
      }
    }
  }
}

}  // namespace

template <class S>
void sgemm_shape(Trans ta, Trans tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
                 const float* b, int64_t ldb, float beta, float* c, int64_t ldc, int threads,
                 const PanelSource<float>* source = nullptr) {
  // Threads take slabs of C along its longer side, in whole tiles; each packs its own operands
  // (the other operand is packed once per thread, a small cost next to the product).
  const bool split_n = n >= m;
  const int64_t tile = split_n ? S::kNR : S::kMR;
  const int64_t tiles = ((split_n ? n : m) + tile - 1) / tile;
  // Below ~2 M multiply-adds a team's start-up costs more than it saves.
  if (threads <= 1 || tiles < 2 || m * n * k < (int64_t{1} << 21)) {
    sgemm_serial<S>(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, source);
    return;
  }
  const int chunks = static_cast<int>(std::min<int64_t>(threads, tiles));
#pragma omp parallel num_threads(chunks)
  {
    const int team = omp_get_num_threads();
    for (int chunk = omp_get_thread_num(); chunk < chunks; chunk += team) {
      const int64_t t0 = tiles * chunk / chunks, t1 = tiles * (chunk + 1) / chunks;
      const int64_t lo = t0 * tile, hi = std::min(t1 * tile, split_n ? n : m);
      if (lo >= hi) continue;
      if (split_n)
        sgemm_serial<S>(ta, tb, m, hi - lo, k, alpha, a, lda, source ? b : op_at(tb, b, ldb, 0, lo), ldb,
                        beta, c + lo, ldc, source, lo);
      else
        sgemm_serial<S>(ta, tb, hi - lo, n, k, alpha, op_at(ta, a, lda, lo, 0), lda, b, ldb, beta,
                        c + lo * ldc, ldc, source);
    }
  }
}

// Useful fraction of the tiles covering C (columns in vectors of 16: edge panels run narrower),
// weighted by the shape's measured peak (relative to 14 × 32).
template <class S>
double useful_work(int64_t m, int64_t n, double peak) {
  const auto covered = [](int64_t x, int64_t t) { return double(x) / double((x + t - 1) / t * t); };
  return peak * covered(m, S::kMR) * covered(n, 16);
}

namespace {

// The microkernel shape with the most useful work per cycle for C (m, n): 0 = 6 × 64, 1 = 14 × 32,
// 2 = 28 × 16 (n ≤ 16), 3 = 8 × 48; the weights are the shapes' measured peaks relative to 14 × 32.
int choose_shape(int64_t m, int64_t n) {
  if (n <= Tall::kNR) return 2;
  const double big = useful_work<Big>(m, n, 1.1), wide = useful_work<Wide>(m, n, 1.0);
  const double square = useful_work<Square>(m, n, 1.2);
  return square >= std::max(big, wide) ? 3 : big >= wide ? 0 : 1;
}

// Calls f(S{}) for the shape numbered as choose_shape numbers them.
template <class F>
void with_shape(int shape, const F& f) {
  if (shape == 0) f(Big{});
  else if (shape == 1) f(Wide{});
  else if (shape == 2) f(Tall{});
  else f(Square{});
}

void sgemm_any(Trans ta, Trans tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
               const float* b, int64_t ldb, float beta, float* c, int64_t ldc, int threads,
               const PanelSource<float>* source) {
  with_shape(choose_shape(m, n), [&](auto shape) {
    sgemm_shape<decltype(shape)>(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, threads, source);
  });
}

}  // namespace

void sgemm(Trans ta, Trans tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
           const float* b, int64_t ldb, float beta, float* c, int64_t ldc, int threads) {
  sgemm_any(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, threads, nullptr);
}

void sgemm_panels(Trans ta, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
                  const PanelSource<float>& b, float beta, float* c, int64_t ldc, int threads) {
  sgemm_any(ta, Trans::No, m, n, k, alpha, a, lda, nullptr, 0, beta, c, ldc, threads, &b);
}

// ------------------------------------------------------------------ op(B) packed once (gemm.h)
// The same loops as sgemm_serial, with the B blocks read from panels packed by pack_b_panels in
// the order they are visited (NC blocks, then k blocks) instead of packed per call.
namespace {

int64_t round_up(int64_t x, int64_t to) { return (x + to - 1) / to * to; }

// The packed path's k blocks: equal, at most 1.25·kKCPacked (sgemm_serial's rule with its KC).
template <class S>
int64_t k_block(int64_t k) {
  const int64_t blocks = (k + S::kKCPacked + S::kKCPacked / 4 - 1) / (S::kKCPacked + S::kKCPacked / 4);
  return (k + blocks - 1) / blocks;
}


template <class S>
void sgemm_serial_packed_b(Trans ta, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
                           const float* panels, float beta, float* c, int64_t ldc) {
  if (alpha == 0.f) {  // C = beta·C; A and B are not read
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == 0.f ? 0.f : beta * c[i * ldc + j];
    return;
  }
  const int64_t kc_max = k_block<S>(k);
  float* pa = t_pack_a.get(kc_max * round_up(std::min(m, S::kMC), S::kMR));
  const float* pb = panels;
  for (int64_t jc = 0; jc < n; jc += S::kNC) {
    const int64_t nc = std::min(S::kNC, n - jc);
    for (int64_t pc = 0; pc < k; pc += kc_max) {
      const int64_t kc = std::min(kc_max, k - pc);
      const float beta_block = pc == 0 ? beta : 1.f;
      for (int64_t ic = 0; ic < m; ic += S::kMC) {
        const int64_t mc = std::min(S::kMC, m - ic);
        pack_a<S>(ta, op_at(ta, a, lda, ic, pc), lda, mc, kc, pa);
        for (int64_t jr = 0; jr < nc; jr += S::kNR)
          for (int64_t ir = 0; ir < mc; ir += S::kMR)
            micro_for<S>(kc, pa + (ir / S::kMR) * kc * S::kMR, pb + (jr / S::kNR) * kc * S::kNR,
                         c + (ic + ir) * ldc + jc + jr, ldc, alpha, beta_block, std::min<int64_t>(S::kMR, mc - ir),
                         std::min<int64_t>(S::kNR, nc - jr));
      }
      pb += kc * round_up(nc, S::kNR);
    }
  }
}

}  // namespace

int packed_b_shape(int64_t m_hint, int64_t n) { return choose_shape(m_hint, n); }  // sgemm's own choice

int64_t packed_b_floats(int shape, int64_t k, int64_t n) {
  int64_t floats = 0;
  with_shape(shape, [&](auto s) {
    using S = decltype(s);
    for (int64_t jc = 0; jc < n; jc += S::kNC) floats += k * round_up(std::min(S::kNC, n - jc), S::kNR);
  });
  return floats;
}

void pack_b_panels(int shape, Trans tb, int64_t k, int64_t n, const float* b, int64_t ldb, float* panels,
                   int threads) {
  with_shape(shape, [&](auto s) {
    using S = decltype(s);
    const int64_t kc_max = k_block<S>(k);
    // Every panel's place is known up front (NC blocks, then k blocks, then NR columns), so the
    // threads can take panels in any order: the all-steps products of an RNN pack up to 12 MB here
    // while the step loop's threads would otherwise wait for one.
    struct Panel {
      const float* src;  // op(B)[p0, j0]
      int64_t kc, cols;
      float* dst;
    };
    std::vector<Panel> list;
    for (int64_t jc = 0; jc < n; jc += S::kNC) {
      const int64_t nc = std::min(S::kNC, n - jc);
      for (int64_t pc = 0; pc < k; pc += kc_max) {
        const int64_t kc = std::min(kc_max, k - pc);
        for (int64_t jr = 0; jr < nc; jr += S::kNR)
          list.push_back({op_at(tb, b, ldb, pc, jc + jr), kc, std::min<int64_t>(S::kNR, nc - jr), panels + jr * kc});
        panels += kc * round_up(nc, S::kNR);
      }
    }
    const int64_t count = static_cast<int64_t>(list.size());
    auto pack = [&](int64_t i) { pack_b_panel<S>(tb, list[i].src, ldb, list[i].kc, list[i].cols, list[i].dst); };
    if (threads <= 1 || k * n < (int64_t{1} << 18)) {
      for (int64_t i = 0; i < count; ++i) pack(i);
      return;
    }
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < count; ++i) pack(i);
  });
}

void sgemm_packed_b(int shape, Trans ta, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
                    const float* panels, float beta, float* c, int64_t ldc, int threads) {
  with_shape(shape, [&](auto s) {
    using S = decltype(s);
    // Threads take slabs of C's rows in whole tiles, all reading the one packed B.
    const int64_t tiles = (m + S::kMR - 1) / S::kMR;
    const int chunks = static_cast<int>(std::min<int64_t>(threads, tiles));
    if (chunks <= 1 || m * n * k < (int64_t{1} << 21)) {
      sgemm_serial_packed_b<S>(ta, m, n, k, alpha, a, lda, panels, beta, c, ldc);
      return;
    }
#pragma omp parallel num_threads(chunks)
    {
      const int team = omp_get_num_threads();
      for (int chunk = omp_get_thread_num(); chunk < chunks; chunk += team) {
        const int64_t lo = tiles * chunk / chunks * S::kMR, hi = std::min(tiles * (chunk + 1) / chunks * S::kMR, m);
        if (lo < hi)
          sgemm_serial_packed_b<S>(ta, hi - lo, n, k, alpha, op_at(ta, a, lda, lo, 0), lda, panels,
                                   beta, c + lo * ldc, ldc);
      }
    }
  });
}

}  // namespace replearn::blas::native

#pragma GCC pop_options
