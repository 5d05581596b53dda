// The packed-B float32 product for few rows on AVX2 CPUs without AVX-512 (core/gemm_native.h,
// namespace avx2), behind blas::pack_b / gemm_packed_b.
//
// Why: a recurrent layer multiplies the same W_hh by a batch of rows at every step. Without
// AVX-512 the float32 products run OpenBLAS, which packs its operands anew in every call: for an
// LSTM step (32 × 512 by 512 × 2048) packing W_hh took 23% of the forward's time on a Zen 3 host
// (perf: sgemm_incopy_HASWELL), and the forward ran at 0.81× torch. Here op(B) is packed once into
// NR = 16-column panels, k-major and zero-padded, and each product reads them straight from cache.
//
// The microkernel holds MR = 6 rows × 2 vectors of C in 12 ymm registers; per step of k it loads
// two vectors of B and broadcasts 6 values of op(A) (15 of the 16 registers; BLIS's Haswell shape,
// F. Van Zee, R. van de Geijn, "BLIS: a framework for rapidly instantiating BLAS functionality",
// ACM TOMS 41(3), 2015). op(A) is read in place (rows of a few KiB that stay in L1/L2 while the
// panels go by), so there is no A packing: the products this serves have few rows. Loop order:
// panel outer, k in passes of kKC (the panel's 16 KiB slice stays in L1 for every row block), rows
// inner; threads take disjoint panels. Products with many rows (the all-steps input projection, the backward's
// weight gradients) keep OpenBLAS, whose blocked kernel is faster there: see kMaxRowsHint.
//
// Compiled only where the target has AVX2 and FMA and not AVX-512F (a native build on such a CPU):
// an AVX-512 build uses core/gemm_avx512.cpp for every float32 product.
#include "core/gemm_native.h"

#if defined(__AVX2__) && defined(__FMA__) && !defined(__AVX512F__)

#include <immintrin.h>

#include <algorithm>

#include "core/parallel.h"

namespace replearn::blas::avx2 {

namespace {

constexpr int64_t kNR = 16;  // columns per panel: two ymm vectors
constexpr int kMR = 6;       // rows per register block
// k per pass over a panel: its 16 KiB slice and the A rows' stay in L1 across the row blocks.
// Measured on an LSTM step's product (32 × 512 by 512 × 1024, one thread): 76–82 GFLOP/s against
// 68–84 with the whole k at once (the host's noise is as large as the difference); kept for k
// beyond 512, where a whole panel no longer fits L1 at all.
constexpr int64_t kKC = 256;

// C[0 : R, 0 : cols] = alpha · op(A)[0 : R, 0 : k] · panel + beta · C (beta = 0: C is not read).
// op(A)[r, p] = a[r · row_step + p · k_step].
template <int R>
void tile(int64_t k, const float* __restrict a, int64_t row_step, int64_t k_step, const float* __restrict panel,
          float alpha, float beta, float* __restrict c, int64_t ldc, int64_t cols) {
  // Every loop over r is unrolled: otherwise GCC turns the zeroing into memset calls and keeps the
  // accumulators in memory, storing all twelve at every step of k (half the speed).
  __m256 acc0[R], acc1[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    acc0[r] = _mm256_setzero_ps();
    acc1[r] = _mm256_setzero_ps();
  }
  for (int64_t p = 0; p < k; ++p) {
    const __m256 b0 = _mm256_load_ps(panel + p * kNR), b1 = _mm256_load_ps(panel + p * kNR + 8);
    const float* ap = a + p * k_step;
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m256 ar = _mm256_broadcast_ss(ap + r * row_step);
      acc0[r] = _mm256_fmadd_ps(ar, b0, acc0[r]);
      acc1[r] = _mm256_fmadd_ps(ar, b1, acc1[r]);
    }
  }
  const __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    float* cr = c + r * ldc;
    __m256 v0 = _mm256_mul_ps(va, acc0[r]), v1 = _mm256_mul_ps(va, acc1[r]);
    if (cols == kNR) {
      if (beta != 0.f) {
        v0 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(cr), v0);
        v1 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(cr + 8), v1);
      }
      _mm256_storeu_ps(cr, v0);
      _mm256_storeu_ps(cr + 8, v1);
    } else {  // the last panel's columns: through a small buffer
      alignas(32) float row[kNR];
      _mm256_store_ps(row, v0);
      _mm256_store_ps(row + 8, v1);
      for (int64_t j = 0; j < cols; ++j) cr[j] = beta == 0.f ? row[j] : row[j] + beta * cr[j];
    }
  }
}

// Every row of C against one panel: blocks of kMR rows, the rest in blocks of 4, 2 and 1.
void panel_rows(int64_t m, int64_t k, const float* a, int64_t row_step, int64_t k_step, const float* panel,
                float alpha, float beta, float* c, int64_t ldc, int64_t cols) {
  int64_t i = 0;
  for (; i + kMR <= m; i += kMR)
    tile<kMR>(k, a + i * row_step, row_step, k_step, panel, alpha, beta, c + i * ldc, ldc, cols);
  if (i + 4 <= m) {
    tile<4>(k, a + i * row_step, row_step, k_step, panel, alpha, beta, c + i * ldc, ldc, cols);
    i += 4;
  }
  if (i + 2 <= m) {
    tile<2>(k, a + i * row_step, row_step, k_step, panel, alpha, beta, c + i * ldc, ldc, cols);
    i += 2;
  }
  if (i < m) tile<1>(k, a + i * row_step, row_step, k_step, panel, alpha, beta, c + i * ldc, ldc, cols);
}

int64_t panel_count(int64_t n) { return (n + kNR - 1) / kNR; }

}  // namespace

bool used_for(int64_t m_hint, int64_t k, int64_t n) { return k > 0 && n > 0 && m_hint <= kMaxRowsHint; }

int64_t packed_floats(int64_t k, int64_t n) { return panel_count(n) * kNR * k; }

void pack_b_panels(Trans trans_b, int64_t k, int64_t n, const float* b, int64_t ldb, float* panels, int threads) {
  const int64_t count = panel_count(n);
  auto pack = [&](int, int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t j0 = q * kNR, cols = std::min(kNR, n - j0);
      float* dst = panels + q * kNR * k;
      for (int64_t p = 0; p < k; ++p) {
        float* row = dst + p * kNR;
        for (int64_t j = 0; j < kNR; ++j)
          row[j] = j >= cols ? 0.f : trans_b == Trans::No ? b[p * ldb + j0 + j] : b[(j0 + j) * ldb + p];
      }
    }
  };
  if (threads > 1) parallel_for(count, std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, k * kNR)), pack,
                                threads);
  else pack(0, 0, count);
}

void sgemm_packed_b(Trans trans_a, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
                    const float* panels, float beta, float* c, int64_t ldc, int threads) {
  const int64_t row_step = trans_a == Trans::No ? lda : 1, k_step = trans_a == Trans::No ? 1 : lda;
  auto run = [&](int, int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t j0 = q * kNR, cols = std::min(kNR, n - j0);
      for (int64_t p0 = 0; p0 < k; p0 += kKC)
        panel_rows(m, std::min(kKC, k - p0), a + p0 * k_step, row_step, k_step, panels + q * kNR * k + p0 * kNR, alpha,
                   p0 == 0 ? beta : 1.f, c + j0, ldc, cols);
    }
  };
  const int64_t count = panel_count(n);
  // Threads take panels when each has a few (≥ 64 K multiply-adds); otherwise one thread runs all.
  if (threads > 1)
    parallel_for(count, std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, m * k * kNR)), run, threads);
  else run(0, 0, count);
}

}  // namespace replearn::blas::avx2

#endif
