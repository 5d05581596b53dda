// core/gemm: C = alpha·op(A)·op(B) + beta·C against a naive double loop, for float32 and float64,
// every transpose combination, padded leading dimensions, alpha/beta, beta = 0 over a C full of
// NaN (BLAS must not read it), k = 0, and the thread count following set_num_threads both outside
// and inside parallel_for_gemm. float32 runs on both backends (OpenBLAS and, where the CPU has
// AVX-512F, the native kernel of core/gemm_avx512.cpp), with shapes that cross its tile edges (14 and
// 28 rows, 16 and 32 columns) and its cache blocks (MC = 336 rows, KC = 256/512, NC = 4096 columns),
// and products large enough to be split over two threads along m and along n. On AVX2 builds without
// AVX-512 the packed cases with a row hint ≤ 256 run core/gemm_avx2.cpp's kernel instead (its 6-row
// and 16-column edges, k passes of 256 and panels split over threads are crossed by the same cases).
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <vector>

#include "core/error.h"
#include "core/gemm.h"
#include "test_helpers.h"

namespace replearn::blas {
namespace {

using test::AllClose;
using test::Random;
using test::ScopedThreads;

// A (rows, cols) row-major matrix with leading dimension ld ≥ cols; padding holds NaN.
struct Matrix {
  int64_t rows, cols, ld;
  std::vector<double> values;
  Matrix(Random& rng, int64_t rows, int64_t cols, int64_t pad)
      : rows(rows), cols(cols), ld(cols + pad), values(rows * (cols + pad), NAN) {
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < cols; ++j) values[i * ld + j] = rng.uniform(-1, 1);
  }
  double at(int64_t i, int64_t j) const { return values[i * ld + j]; }
  template <class T>
  std::vector<T> as() const {
    return std::vector<T>(values.begin(), values.end());
  }
};

struct Case {
  int64_t m, n, k;
  bool trans_a, trans_b;
  int64_t pad;
  double alpha, beta;
};

// StoredPanels (op(B) of a stored matrix) handed to gemm_panels, so that the panel path is checked on
// the same cases as the stored one; records any request outside B or with an nr the contract does
// not allow.
template <class T>
class CheckedPanels final : public PanelSource<T> {
 public:
  CheckedPanels(const StoredPanels<T>& inner, int64_t k, int64_t n) : PanelSource<T>(inner.layout), inner_(inner), k_(k), n_(n) {}
  void pack(int64_t p0, int64_t kc, int64_t j0, int64_t nc, int64_t nr, T* dst) const override {
    if (p0 < 0 || kc <= 0 || p0 + kc > k_ || j0 < 0 || nc <= 0 || j0 + nc > n_ || nr <= 0) bad_request = true;
    inner_.pack(p0, kc, j0, nc, nr, dst);
  }
  mutable std::atomic<bool> bad_request{false};

 private:
  const StoredPanels<T>& inner_;
  int64_t k_, n_;
};

// gemm, gemm_panels from a source of the given layout, or pack_b + gemm_packed_b (the packed operand
// used twice, a first product into a scratch copy of C, with a row-count hint that differs from m for
// every other case), against a naive double loop.
enum class Via { Stored, Panels, TransposedRows, Packed };
template <class T>
void check(const Case& c, int threads, Via via = Via::Stored) {
  ScopedThreads scoped(threads);
  Random rng(c.m * 131 + c.n * 17 + c.k + (c.trans_a ? 7 : 0) + (c.trans_b ? 3 : 0));
  // op(A) is (m, k): A is stored (m, k), or (k, m) when transposed; likewise B.
  const Matrix a(rng, c.trans_a ? c.k : c.m, c.trans_a ? c.m : c.k, c.pad);
  const Matrix b(rng, c.trans_b ? c.n : c.k, c.trans_b ? c.k : c.n, c.pad);
  Matrix cm(rng, c.m, c.n, c.pad);
  if (c.beta == 0)
    for (int64_t i = 0; i < c.m; ++i)
      for (int64_t j = 0; j < c.n; ++j) cm.values[i * cm.ld + j] = NAN;  // must not be read
  std::vector<T> av = a.as<T>(), bv = b.as<T>(), cv = cm.as<T>();
  const Trans ta = c.trans_a ? Trans::Yes : Trans::No, tb = c.trans_b ? Trans::Yes : Trans::No;
  if (via == Via::Panels || via == Via::TransposedRows) {
    using Layout = typename PanelSource<T>::Layout;
    const StoredPanels<T> stored(via == Via::Panels ? Layout::Panels : Layout::TransposedRows, tb, bv.data(), b.ld);
    const CheckedPanels<T> source(stored, c.k, c.n);
    gemm_panels<T>(ta, c.m, c.n, c.k, T(c.alpha), av.data(), a.ld, source, T(c.beta), cv.data(), cm.ld);
    EXPECT_FALSE(source.bad_request.load()) << "a request outside B";
  } else if (via == Via::Packed) {
    const int64_t m_hint = c.m % 2 ? c.m : 32;
    std::vector<T> buffer(packed_b_size<T>(c.k, c.n, m_hint) + 64);
    T* aligned = reinterpret_cast<T*>((reinterpret_cast<std::uintptr_t>(buffer.data()) + 63) / 64 * 64);
    const PackedB<T> pb = pack_b<T>(tb, c.k, c.n, bv.data(), b.ld, m_hint, aligned);
    std::vector<T> scratch = cv;
    gemm_packed_b<T>(ta, c.m, T(c.alpha), av.data(), a.ld, pb, T(c.beta), scratch.data(), cm.ld);
    gemm_packed_b<T>(ta, c.m, T(c.alpha), av.data(), a.ld, pb, T(c.beta), cv.data(), cm.ld);
  } else {
    gemm<T>(ta, tb, c.m, c.n, c.k, T(c.alpha), av.data(), a.ld, bv.data(), b.ld, T(c.beta), cv.data(), cm.ld);
  }
  std::vector<double> got, want;
  for (int64_t i = 0; i < c.m; ++i)
    for (int64_t j = 0; j < c.n; ++j) {
      double s = 0;
      for (int64_t p = 0; p < c.k; ++p)
        s += double(T(c.trans_a ? a.at(p, i) : a.at(i, p))) * double(T(c.trans_b ? b.at(j, p) : b.at(p, j)));
      const double old = c.beta == 0 ? 0 : double(T(cm.at(i, j))) * c.beta;
      want.push_back(c.alpha * s + old);
      got.push_back(cv[i * cm.ld + j]);
    }
  const double tol = sizeof(T) == 8 ? 1e-12 : 2e-5 * std::sqrt(double(std::max<int64_t>(c.k, 1)));
  EXPECT_TRUE(AllClose(got, want, {tol, tol})) << "via=" << int(via) << " m=" << c.m << " n=" << c.n << " k=" << c.k << " ta=" << c.trans_a
                                               << " tb=" << c.trans_b << " pad=" << c.pad << " threads=" << threads;
  // Padding between rows of C is never written.
  for (int64_t i = 0; i < c.m; ++i)
    for (int64_t j = c.n; j < cm.ld; ++j) EXPECT_TRUE(std::isnan(double(cv[i * cm.ld + j])));
}

const Case kCases[] = {
    {1, 1, 1, false, false, 0, 1, 0},      {5, 7, 3, false, false, 0, 1, 0},   {5, 7, 3, true, false, 2, 1, 0},
    {5, 7, 3, false, true, 1, 0.5, 1},     {5, 7, 3, true, true, 3, -2, 0.25}, {64, 96, 130, false, true, 0, 1, 1},
    {130, 33, 257, true, false, 5, 1, 0},  {17, 300, 64, true, true, 0, 1.5, -1}, {4, 6, 0, false, false, 1, 1, 0.5},
    {200, 150, 120, false, false, 7, 1, 0},
    // Tile and block edges of the native kernel, all four transposes, alpha = 0, k = 0 over NaN.
    {14, 32, 16, false, false, 0, 1, 0},   {15, 33, 17, true, true, 1, 1, 0.5},  {28, 16, 513, false, true, 2, -1, 0},
    {29, 16, 300, true, false, 0, 1, 1},   {50, 1, 700, false, false, 3, 2, 0},  {1, 70, 600, true, true, 0, 1, 0},
    {400, 20, 30, true, true, 4, 1, -0.5}, {337, 45, 257, false, true, 1, 0.5, 0}, {3, 4200, 5, false, false, 0, 1, 1},
    {3, 4200, 5, true, true, 2, 1, 0},     {9, 17, 3, false, false, 0, 0, 0.5},  {6, 5, 0, true, true, 0, 1, 0},
    // Split over threads (≥ 2 M multiply-adds): along n, then along m.
    {130, 300, 64, true, false, 1, 1, 0.5}, {700, 40, 100, false, true, 0, 1, 0}, {700, 15, 250, false, false, 2, 1, 1},
    // pack_b's panels split over threads (k·n ≥ 2¹⁸): partial last panels and k blocks, and two NC
    // blocks of columns (n > 4096), for both layouts of B.
    {40, 700, 420, false, true, 1, 1, 0.5}, {9, 4200, 70, true, false, 0, 1, 0},
};

// Runs f once per float32 backend this CPU has, restoring the default afterwards.
template <class F>
void for_each_float32_backend(const F& f) {
  const Backend saved = float32_backend();
  for (Backend backend : {Backend::OpenBLAS, Backend::Native}) {
    if (backend == Backend::Native && !native_supported()) continue;
    set_float32_backend(backend);
    SCOPED_TRACE(backend == Backend::Native ? "native" : "openblas");
    f();
  }
  set_float32_backend(saved);
}

TEST(Gemm, Float64MatchesNaiveLoop) {
  for (const Case& c : kCases)
    for (int threads : {1, 2}) check<double>(c, threads);
}

TEST(Gemm, Float32MatchesNaiveLoop) {
  for_each_float32_backend([] {
    for (const Case& c : kCases)
      for (int threads : {1, 2}) check<float>(c, threads);
  });
}

// B from a PanelSource (the implicit GEMM of the convolutions), on both float32 backends and float64
// (which multiplies row-major blocks of at most 256 rows: k = 257, 300, 513, 600, 700 cross them).
TEST(Gemm, PanelSourceMatchesNaiveLoop) {
  for (Via via : {Via::Panels, Via::TransposedRows}) {
    for (const Case& c : kCases)
      for (int threads : {1, 2}) check<double>(c, threads, via);
    for_each_float32_backend([via] {
      for (const Case& c : kCases)
        for (int threads : {1, 2}) check<float>(c, threads, via);
    });
  }
}

// The packed-B API on every case (its k blocks, tile shapes and slabs are sgemm's), both backends.
TEST(Gemm, PackedBMatchesNaiveLoop) {
  for (const Case& c : kCases)
    for (int threads : {1, 2}) check<double>(c, threads, Via::Packed);
  for_each_float32_backend([] {
    for (const Case& c : kCases)
      for (int threads : {1, 2}) check<float>(c, threads, Via::Packed);
  });
}

// A native packing survives a switch to OpenBLAS (it falls back to the operand's own pointer).
TEST(Gemm, PackedBAfterBackendSwitch) {
  if (!native_supported()) GTEST_SKIP() << "no AVX-512F";
  const Backend saved = float32_backend();
  set_float32_backend(Backend::Native);
  const int64_t m = 5, n = 70, k = 300;
  std::vector<float> a(m * k, 0.5f), b(k * n, 2.f), c(m * n, NAN);
  std::vector<float> buffer(packed_b_size<float>(k, n, m) + 64);
  float* aligned = reinterpret_cast<float*>((reinterpret_cast<std::uintptr_t>(buffer.data()) + 63) / 64 * 64);
  const PackedB<float> pb = pack_b<float>(Trans::No, k, n, b.data(), n, m, aligned);
  EXPECT_NE(pb.panels, nullptr);
  set_float32_backend(Backend::OpenBLAS);
  gemm_packed_b<float>(Trans::No, m, 1.f, a.data(), k, pb, 0.f, c.data(), n);
  set_float32_backend(saved);
  for (float v : c) EXPECT_EQ(v, 300.f);
}

TEST(Gemm, NativeBackendNeedsAvx512) {
  if (native_supported()) {
    const Backend saved = float32_backend();
    set_float32_backend(Backend::Native);
    EXPECT_EQ(float32_backend(), Backend::Native);
    set_float32_backend(saved);
  } else {
    EXPECT_THROW(set_float32_backend(Backend::Native), Error);
  }
}

// Concurrent native products inside a parallel region, each with its own per-thread packing buffers.
TEST(Gemm, Float32InsideParallelRegion) {
  for_each_float32_backend([] {
    ScopedThreads two(2);
    std::vector<float> results(6, 0);
    parallel_for_gemm(6, 1, [&](int, int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t m = 30 + i, n = 40 + 7 * i, k = 300 + i;
        std::vector<float> x(m * k, float(i)), y(k * n, 0.5f), z(m * n, NAN);
        gemm<float>(Trans::No, Trans::No, m, n, k, 1.f, x.data(), k, y.data(), n, 0.f, z.data(), n);
        results[i] = z[m * n - 1];
      }
    });
    for (int i = 0; i < 6; ++i) EXPECT_EQ(results[i], 0.5f * float(i) * float(300 + i));
  });
}

TEST(Gemm, ThreadCountFollowsTheCoreSetting) {
  {
    ScopedThreads one(1);
    float a = 1, b = 2, c = 0;
    gemm<float>(Trans::No, Trans::No, 1, 1, 1, 1.f, &a, 1, &b, 1, 0.f, &c, 1);
    EXPECT_EQ(gemm_threads(), 1);
    EXPECT_EQ(c, 2.f);
  }
  ScopedThreads two(2);
  float a = 1, b = 3, c = 0;
  gemm<float>(Trans::No, Trans::No, 1, 1, 1, 1.f, &a, 1, &b, 1, 0.f, &c, 1);
  EXPECT_EQ(gemm_threads(), 2);
  // Inside a region of several chunks each GEMM is single-threaded (no oversubscription), and
  // concurrent products are correct.
  std::vector<double> results(8, 0);
  parallel_for_gemm(8, 1, [&](int, int64_t i0, int64_t i1) {
    EXPECT_EQ(gemm_threads(), 1);
    for (int64_t i = i0; i < i1; ++i) {
      std::vector<double> x(64 * 64, double(i)), y(64 * 64, 1.0), z(64 * 64);
      gemm<double>(Trans::No, Trans::No, 64, 64, 64, 1.0, x.data(), 64, y.data(), 64, 0.0, z.data(), 64);
      results[i] = z[64 * 64 - 1];
    }
  });
  for (int i = 0; i < 8; ++i) EXPECT_EQ(results[i], 64.0 * i);
}

}  // namespace
}  // namespace replearn::blas
