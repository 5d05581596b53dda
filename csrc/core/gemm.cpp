// gemm over OpenBLAS (scipy-openblas32), or for float32 on AVX-512 CPUs the native kernel: see gemm.h.
#include "core/gemm.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <type_traits>
#include <vector>

#include "core/error.h"
#include "core/gemm_native.h"

// The scipy-openblas32 wheel's CBLAS, declared here rather than through its cblas.h: that header
// needs BLAS_SYMBOL_PREFIX gymnastics and declares hundreds of functions we never call.
extern "C" {
enum ScipyCblasOrder { kCblasRowMajor = 101 };
enum ScipyCblasTranspose { kCblasNoTrans = 111, kCblasTrans = 112 };
void scipy_cblas_sgemm(int order, int trans_a, int trans_b, int m, int n, int k, float alpha, const float* a,
                       int lda, const float* b, int ldb, float beta, float* c, int ldc);
void scipy_cblas_dgemm(int order, int trans_a, int trans_b, int m, int n, int k, double alpha, const double* a,
                       int lda, const double* b, int ldb, double beta, double* c, int ldc);
void scipy_openblas_set_num_threads(int n);
}

namespace replearn::blas {

namespace {

std::atomic<int> g_threads{0};  // what OpenBLAS was last told; 0: not yet
std::mutex g_threads_mutex;

int blas_int(int64_t v, const char* what) {
  REPLEARN_CHECK(v <= INT_MAX, Value, "gemm: ", what, " = ", v, " exceeds the 32-bit BLAS interface");
  return static_cast<int>(v);
}

inline void cblas_gemm(int ta, int tb, int m, int n, int k, float alpha, const float* a, int lda, const float* b,
                       int ldb, float beta, float* c, int ldc) {
  scipy_cblas_sgemm(kCblasRowMajor, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
inline void cblas_gemm(int ta, int tb, int m, int n, int k, double alpha, const double* a, int lda, const double* b,
                       int ldb, double beta, double* c, int ldc) {
  scipy_cblas_dgemm(kCblasRowMajor, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

Backend backend_from_environment() {
  const char* env = std::getenv("REPLEARN_GEMM");
  if (env == nullptr || *env == '\0') return native::cpu_supported() ? Backend::Native : Backend::OpenBLAS;
  if (std::strcmp(env, "openblas") == 0) return Backend::OpenBLAS;
  REPLEARN_CHECK(std::strcmp(env, "native") == 0, Value, "REPLEARN_GEMM=", env,
                 " is not a GEMM backend: use 'openblas' or 'native'");
  REPLEARN_CHECK(native::cpu_supported(), Value,
                 "REPLEARN_GEMM=native needs a CPU with AVX-512F; this one has none (use 'openblas')");
  return Backend::Native;
}

// -1: not yet decided (the environment is read on first use, so a bad value raises from a call).
std::atomic<int> g_backend{-1};

// PackedB::shape of panels packed for avx2::sgemm_packed_b (the native kernel's shapes are 0 … 3).
constexpr int kAvx2Panels = 100;

}  // namespace

bool native_supported() { return native::cpu_supported(); }

Backend float32_backend() {
  int b = g_backend.load(std::memory_order_relaxed);
  if (b < 0) {
    b = static_cast<int>(backend_from_environment());
    g_backend.store(b, std::memory_order_relaxed);
  }
  return static_cast<Backend>(b);
}

void set_float32_backend(Backend backend) {
  REPLEARN_CHECK(backend != Backend::Native || native::cpu_supported(), Value,
                 "the native GEMM needs a CPU with AVX-512F");
  g_backend.store(static_cast<int>(backend), std::memory_order_relaxed);
}

void set_gemm_threads(int n) {
  n = std::max(1, n);
  if (g_threads.load(std::memory_order_relaxed) == n) return;
  std::lock_guard<std::mutex> lock(g_threads_mutex);
  if (g_threads.load(std::memory_order_relaxed) == n) return;
  scipy_openblas_set_num_threads(n);
  g_threads.store(n, std::memory_order_relaxed);
}

int gemm_threads() { return std::max(1, g_threads.load(std::memory_order_relaxed)); }

template <class T>
void gemm(Trans trans_a, Trans trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda,
          const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  const bool nested = omp_in_parallel();
  if (!nested) set_gemm_threads(num_threads());
  if constexpr (std::is_same_v<T, float>) {
    if (float32_backend() == Backend::Native) {
      native::sgemm(trans_a, trans_b, m, n, std::max<int64_t>(k, 0), alpha, a, lda, b, ldb, beta, c, ldc,
                    nested ? 1 : num_threads());
      return;
    }
  }
  if (k <= 0) {  // C = beta·C; BLAS does this too, but some builds read A/B pointers first
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == T(0) ? T(0) : beta * c[i * ldc + j];
    return;
  }
  const int ta = trans_a == Trans::Yes ? kCblasTrans : kCblasNoTrans;
  const int tb = trans_b == Trans::Yes ? kCblasTrans : kCblasNoTrans;
  const int n32 = blas_int(n, "n"), k32 = blas_int(k, "k");
  const int lda32 = blas_int(lda, "lda"), ldb32 = blas_int(ldb, "ldb"), ldc32 = blas_int(ldc, "ldc");
  // Row blocks of C keep m within int; op(A)'s rows start at a + i·lda (no transpose) or a + i.
  constexpr int64_t kMaxRows = INT_MAX;
  for (int64_t i = 0; i < m; i += kMaxRows) {
    const int rows = static_cast<int>(std::min(kMaxRows, m - i));
    const T* a_block = trans_a == Trans::Yes ? a + i : a + i * lda;
    cblas_gemm(ta, tb, rows, n32, k32, alpha, a_block, lda32, b, ldb32, beta, c + i * ldc, ldc32);
  }
}

template <class T>
void gemm_panels(Trans trans_a, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda,
                 const PanelSource<T>& b, T beta, T* c, int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  if constexpr (std::is_same_v<T, float>) {
    if (float32_backend() == Backend::Native) {
      const bool nested = omp_in_parallel();
      if (!nested) set_gemm_threads(num_threads());
      native::sgemm_panels(trans_a, m, n, std::max<int64_t>(k, 0), alpha, a, lda, b, beta, c, ldc,
                           nested ? 1 : num_threads());
      return;
    }
  }
  if (k <= 0) return gemm<T>(trans_a, Trans::No, m, n, 0, alpha, a, lda, nullptr, n, beta, c, ldc);
  // OpenBLAS: b writes row-major blocks of B (one panel as wide as the block) or of Bᵀ into a
  // per-thread buffer, each multiplied in turn; the first block of k applies beta.
  constexpr int64_t kBlockRows = 256, kBlockColumns = 4096;
  const bool transposed = b.layout == PanelSource<T>::Layout::TransposedRows;
  thread_local std::vector<T> block;
  block.resize(std::min(k, kBlockRows) * std::min(n, kBlockColumns));
  for (int64_t j0 = 0; j0 < n; j0 += kBlockColumns) {
    const int64_t nc = std::min(kBlockColumns, n - j0);
    for (int64_t p0 = 0; p0 < k; p0 += kBlockRows) {
      const int64_t kc = std::min(kBlockRows, k - p0);
      b.pack(p0, kc, j0, nc, nc, block.data());
      gemm<T>(trans_a, transposed ? Trans::Yes : Trans::No, m, nc, kc, alpha,
              trans_a == Trans::No ? a + p0 : a + p0 * lda, lda, block.data(), transposed ? kc : nc,
              p0 == 0 ? beta : T(1), c + j0, ldc);
    }
  }
}

template void gemm_panels<float>(Trans, int64_t, int64_t, int64_t, float, const float*, int64_t,
                                 const PanelSource<float>&, float, float*, int64_t);
template void gemm_panels<double>(Trans, int64_t, int64_t, int64_t, double, const double*, int64_t,
                                  const PanelSource<double>&, double, double*, int64_t);

template <class T>
int64_t packed_b_size(int64_t k, int64_t n, int64_t m_hint) {
  // Whatever the backend now: a workspace sized here stays valid if it changes before pack_b.
  if constexpr (std::is_same_v<T, float>) {
    if (native::cpu_supported() && k > 0 && n > 0)
      return native::packed_b_floats(native::packed_b_shape(m_hint, n), k, n);
    if constexpr (avx2::kCompiled)
      if (avx2::used_for(m_hint, k, n)) return avx2::packed_floats(k, n);
  }
  return 0;
}

template <class T>
PackedB<T> pack_b(Trans trans_b, int64_t k, int64_t n, const T* b, int64_t ldb, int64_t m_hint, T* buffer) {
  PackedB<T> packed;
  packed.trans = trans_b, packed.k = k, packed.n = n, packed.b = b, packed.ldb = ldb;
  if constexpr (std::is_same_v<T, float>) {
    if (float32_backend() == Backend::Native && k > 0 && n > 0) {
      packed.shape = native::packed_b_shape(m_hint, n);
      native::pack_b_panels(packed.shape, trans_b, k, n, b, ldb, buffer, omp_in_parallel() ? 1 : num_threads());
      packed.panels = buffer;
      return packed;
    }
    if constexpr (avx2::kCompiled) {
      if (!native::cpu_supported() && avx2::used_for(m_hint, k, n)) {
        packed.shape = kAvx2Panels;
        avx2::pack_b_panels(trans_b, k, n, b, ldb, buffer, omp_in_parallel() ? 1 : num_threads());
        packed.panels = buffer;
      }
    }
  }
  return packed;
}

template <class T>
void gemm_packed_b(Trans trans_a, int64_t m, T alpha, const T* a, int64_t lda, const PackedB<T>& b, T beta, T* c,
                   int64_t ldc) {
  if constexpr (std::is_same_v<T, float>) {
    if constexpr (avx2::kCompiled) {
      if (b.panels != nullptr && m > 0 && b.shape == kAvx2Panels) {
        // alpha = 0: C = beta·C, A and B not read (BLAS), as gemm() does for k = 0.
        if (alpha == 0.f) return gemm<T>(trans_a, Trans::No, m, b.n, 0, alpha, a, lda, nullptr, b.n, beta, c, ldc);
        avx2::sgemm_packed_b(trans_a, m, b.n, b.k, alpha, a, lda, b.panels, beta, c, ldc,
                             omp_in_parallel() ? 1 : num_threads());
        return;
      }
    }
    if (b.panels != nullptr && m > 0 && float32_backend() == Backend::Native) {
      native::sgemm_packed_b(b.shape, trans_a, m, b.n, b.k, alpha, a, lda, b.panels, beta, c, ldc,
                             omp_in_parallel() ? 1 : num_threads());
      return;
    }
  }
  gemm(trans_a, b.trans, m, b.n, b.k, alpha, a, lda, b.b, b.ldb, beta, c, ldc);
}

template void gemm<float>(Trans, Trans, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*,
                          int64_t, float, float*, int64_t);
template void gemm<double>(Trans, Trans, int64_t, int64_t, int64_t, double, const double*, int64_t, const double*,
                           int64_t, double, double*, int64_t);

#define REPLEARN_PACKED_B(T)                                                                                   \
  template int64_t packed_b_size<T>(int64_t, int64_t, int64_t);                                               \
  template PackedB<T> pack_b<T>(Trans, int64_t, int64_t, const T*, int64_t, int64_t, T*);                    \
  template void gemm_packed_b<T>(Trans, int64_t, T, const T*, int64_t, const PackedB<T>&, T, T*, int64_t);
REPLEARN_PACKED_B(float)
REPLEARN_PACKED_B(double)
#undef REPLEARN_PACKED_B

}  // namespace replearn::blas
