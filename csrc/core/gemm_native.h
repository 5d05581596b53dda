// The float32 GEMM of our own for CPUs with AVX-512F (core/gemm_avx512.cpp), behind blas::gemm<float>,
// and the packed-B product for few rows on AVX2 CPUs (core/gemm_avx2.cpp).
// Internal to core/gemm.cpp and its tests: callers use blas::gemm (core/gemm.h).
#pragma once

#include <cstdint>

#include "core/gemm.h"

namespace replearn::blas::native {

// Whether this CPU (and its OS) run AVX-512F code; the kernels must not be entered otherwise.
bool cpu_supported();

// C = alpha·op(A)·op(B) + beta·C, row-major, the contract of blas::gemm. m, n > 0, k ≥ 0.
// `threads` > 1 splits C into that many slabs (the caller is outside any parallel region);
// 1 runs on the calling thread.
void sgemm(Trans trans_a, Trans trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
           const float* b, int64_t ldb, float beta, float* c, int64_t ldc, int threads);

// The same with B packed by `b` (blas::gemm_panels).
void sgemm_panels(Trans trans_a, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
                  const PanelSource<float>& b, float beta, float* c, int64_t ldc, int threads);
// The packed op(B) of blas::pack_b (gemm.h). `shape` names the tile shape sgemm would pick for an
// (m_hint, n) product; the buffer holds, per NC block of columns and per k block, that shape's
// NR-wide panels; sgemm_packed_b is sgemm with op(B) read from them (`threads` as in sgemm; the
// slabs are rows of C).
int packed_b_shape(int64_t m_hint, int64_t n);
int64_t packed_b_floats(int shape, int64_t k, int64_t n);
void pack_b_panels(int shape, Trans trans_b, int64_t k, int64_t n, const float* b, int64_t ldb, float* panels,
                   int threads);
void sgemm_packed_b(int shape, Trans trans_a, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                    int64_t lda, const float* panels, float beta, float* c, int64_t ldc, int threads);

}  // namespace replearn::blas::native

// The packed-B product for few rows on AVX2 CPUs without AVX-512 (core/gemm_avx2.cpp), compiled
// where the target has AVX2 and FMA and not AVX-512F (kCompiled); blas::pack_b uses it there for
// products of at most kMaxRowsHint rows, whatever the float32 backend, and leaves larger ones to
// OpenBLAS.
namespace replearn::blas::avx2 {

#if defined(__AVX2__) && defined(__FMA__) && !defined(__AVX512F__)
constexpr bool kCompiled = true;
#else
constexpr bool kCompiled = false;
#endif

// Rows (the m_hint of pack_b) up to which the packed panels beat OpenBLAS, which packs B in every
// call; an LSTM's per-step products have the batch's rows, its all-steps ones steps × batch.
constexpr int64_t kMaxRowsHint = 256;

// Whether pack_b packs for this kernel (kCompiled aside).
bool used_for(int64_t m_hint, int64_t k, int64_t n);
// Floats of the panels of a (k, n) op(B): ceil(n / 16) panels of k × 16, k-major, zero-padded.
int64_t packed_floats(int64_t k, int64_t n);
void pack_b_panels(Trans trans_b, int64_t k, int64_t n, const float* b, int64_t ldb, float* panels, int threads);
// C = alpha·op(A)·op(B) + beta·C with op(B) from the panels (64-byte aligned), alpha ≠ 0 (the
// caller scales C itself otherwise); `threads` as in native::sgemm (the slabs are panels of C's
// columns).
void sgemm_packed_b(Trans trans_a, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
                    const float* panels, float beta, float* c, int64_t ldc, int threads);

}  // namespace replearn::blas::avx2
