// gemm: the one dense matrix product of the CPU core (ARCHITECTURE.md §7), backed by OpenBLAS, except
// float32 on CPUs with AVX-512F, which runs our own kernel (core/gemm_avx512.cpp; docs/design.md,
// "GEMM": REPLEARN_GEMM=openblas|native forces either).
//
//   C = alpha · op(A) · op(B) + beta · C      op(X) = X or Xᵀ;  C (m, n), op(A) (m, k), op(B) (k, n)
//
// Row-major throughout, with leading dimensions in elements (lda ≥ columns of A as stored), as in
// CBLAS with CblasRowMajor. float32 and float64. beta = 0 overwrites C without reading it (NaNs in
// an uninitialized C do not propagate), as BLAS specifies.
//
// OpenBLAS is the `scipy-openblas32` wheel's build (the BLAS numpy and scipy ship; symbols prefixed
// `scipy_`, 32-bit integers), linked at build time and loaded by importing the wheel's Python
// module before replearn._C (docs/design.md, "GEMM").
//
// Threads (both backends follow the same rule; the native kernel uses OpenMP). OpenBLAS keeps its own (pthread) pool, separate from OpenMP. To follow torch's thread
// setting and never oversubscribe:
// - gemm() called outside a parallel region runs on num_threads() OpenBLAS threads;
// - kernels that call gemm() from several threads at once (one sample per thread) open the region
//   with parallel_for_gemm(), which first restricts OpenBLAS to one thread per caller; gemm()
//   inside a parallel region never changes OpenBLAS's setting (that would race).
// Products with dimensions beyond 32-bit integers are split into row blocks (m) here.
#pragma once

#include <cstdint>

#include "core/parallel.h"

namespace replearn::blas {

enum class Trans : int8_t { No, Yes };

template <class T>
void gemm(Trans trans_a, Trans trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda,
          const T* b, int64_t ldb, T beta, T* c, int64_t ldc);

// An operand B that the GEMM asks for in its own packed layout instead of reading a stored matrix:
// for products whose B is cheaper to produce than to store and read back. A convolution builds its
// im2col columns straight into the GEMM's panels from the image ("implicit GEMM"), which saves
// writing the column matrix (larger than L2) and reading it again to pack it.
//
// pack(p0, kc, j0, nc, nr, dst) writes the block B[p0 : p0 + kc, j0 : j0 + nc] in the source's layout:
// - Layout::Panels: ⌈nc / nr⌉ panels of nr columns, each kc × nr row-major,
//       dst[(j / nr)·kc·nr + p·nr + j % nr] = B(p0 + p, j0 + j),   zeros for j ≥ nc up to the panel's end;
//   nr is the kernel's choice (the native float32 kernel asks for 16, 32 or 64; other backends for
//   nr = nc, a plain row-major block);
// - Layout::TransposedRows: the block of Bᵀ row-major, dst[j·kc + p] = B(p0 + p, j0 + j) (nr unused),
//   for a B whose columns are stored as rows (a weight gradient's B = colᵀ); the GEMM transposes
//   the block into its panels itself.
// Several threads may call pack at once.
template <class T>
class PanelSource {
 public:
  enum class Layout : int8_t { Panels, TransposedRows };
  explicit PanelSource(Layout layout) : layout(layout) {}
  const Layout layout;
  virtual void pack(int64_t p0, int64_t kc, int64_t j0, int64_t nc, int64_t nr, T* dst) const = 0;

 protected:
  ~PanelSource() = default;
};

// A PanelSource over a stored op(B) (k, n), in either layout: the contract's reference, with which
// the tests check gemm_panels against gemm.
template <class T>
class StoredPanels final : public PanelSource<T> {
 public:
  StoredPanels(typename PanelSource<T>::Layout layout, Trans trans_b, const T* b, int64_t ldb)
      : PanelSource<T>(layout), trans_b_(trans_b), b_(b), ldb_(ldb) {}
  void pack(int64_t p0, int64_t kc, int64_t j0, int64_t nc, int64_t nr, T* dst) const override {
    const bool rows = this->layout == PanelSource<T>::Layout::TransposedRows;
    const int64_t width = rows ? nc : (nc + nr - 1) / nr * nr;
    for (int64_t j = 0; j < width; ++j)
      for (int64_t p = 0; p < kc; ++p)
        dst[rows ? j * kc + p : (j / nr) * kc * nr + p * nr + j % nr] =
            j >= nc ? T(0) : trans_b_ == Trans::Yes ? b_[(j0 + j) * ldb_ + p0 + p] : b_[(p0 + p) * ldb_ + j0 + j];
  }

 private:
  Trans trans_b_;
  const T* b_;
  int64_t ldb_;
};

// C = alpha·op(A)·B + beta·C with B (k, n) supplied by `b`; otherwise the contract of gemm().
// The native float32 kernel packs from b directly; OpenBLAS (float64, or float32 without the native
// kernel) multiplies blocks of B that b writes into a per-thread buffer.
template <class T>
void gemm_panels(Trans trans_a, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda,
                 const PanelSource<T>& b, T beta, T* c, int64_t ldc);
// An op(B) operand packed once and multiplied many times: a recurrent layer's W_hh meets a new
// h_{t−1} every step, and repacking it for each product (a 16 × 16-transpose pass over the whole
// matrix) costs as much as a third of the product itself at batch 32 (docs/design.md, "GEMM").
//
//   buffer.resize(packed_b_size<T>(k, n, m_hint));          // the caller allocates (a workspace)
//   const PackedB<T> w = pack_b(trans, k, n, b, ldb, m_hint, buffer.data());
//   for (...) gemm_packed_b(Trans::No, m, T(1), a, lda, w, T(0), c, ldc);  // C = alpha·op(A)·op(B) + beta·C
//
// Only the native float32 kernel has a packed layout (its NR-wide, k-major panels, zero-padded); for
// float64 and for OpenBLAS, packed_b_size is 0 or unused and the PackedB keeps the operand's own
// pointer, so the same code runs on every backend. Both b and the buffer must outlive the PackedB
// (a backend switched after packing falls back to b). m_hint is the row count of the products to come:
// the native kernel's tile shape is chosen at packing time from (m_hint, n), and products with another
// m are still exact (only the tile fit changes). gemm_packed_b follows gemm()'s thread contract.
template <class T>
struct PackedB {
  Trans trans = Trans::No;
  int64_t k = 0, n = 0;
  const T* b = nullptr;        // op(B) as given
  int64_t ldb = 0;
  const T* panels = nullptr;   // the native kernel's layout, or null
  int shape = -1;              // which native tile shape packed the panels
};

// Elements of the buffer pack_b needs (0 for float64).
template <class T>
int64_t packed_b_size(int64_t k, int64_t n, int64_t m_hint);

template <class T>
PackedB<T> pack_b(Trans trans_b, int64_t k, int64_t n, const T* b, int64_t ldb, int64_t m_hint, T* buffer);

// C (m, n) = alpha · op(A) · op(B) + beta · C with op(A) (m, b.k); the contract of gemm().
template <class T>
void gemm_packed_b(Trans trans_a, int64_t m, T alpha, const T* a, int64_t lda, const PackedB<T>& b, T beta, T* c,
                   int64_t ldc);

// Who computes gemm<float>: OpenBLAS, or the native AVX-512 kernel. The default comes from
// REPLEARN_GEMM (read once): "openblas", "native" (an error on a CPU without AVX-512F), or unset for
// native where the CPU supports it. set_float32_backend overrides it (tests, benchmarks); Native
// without AVX-512F throws. gemm<double> is always OpenBLAS.
enum class Backend : int8_t { OpenBLAS, Native };
Backend float32_backend();
void set_float32_backend(Backend backend);
bool native_supported();

// OpenBLAS's thread count (outside parallel regions it follows num_threads()).
void set_gemm_threads(int n);
int gemm_threads();

// parallel_for whose body may call gemm(): OpenBLAS runs single-threaded in each chunk when the
// region has more than one chunk, and on num_threads() threads when it has one.
template <class F>
void parallel_for_gemm(int64_t n, int64_t grain, const F& f, int max_chunks = 1 << 30) {
  const int chunks = std::min(parallel_chunk_count(n, grain), max_chunks);
  set_gemm_threads(chunks > 1 ? 1 : num_threads());
  parallel_for(n, grain, f, max_chunks);
}

}  // namespace replearn::blas
