// Python bindings of core/gemm for tests and benchmarks (bench/gemm.py, tests/test_gemm.py): the
// product itself on CPU tensors (gemm, gemm_panels with op(b) behind a PanelSource, gemm_packed_b with op(b)
// packed once), and the float32 backend (REPLEARN_GEMM's setting, overridable).
// Not an op: no autograd, no op registry; the library's ops call blas::gemm from C++.
#pragma once

#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/gemm.h"
#include "python/tensor_caster.h"

namespace replearn::python {

namespace gemm_detail {

// A 2-D CPU matrix with unit column stride: (rows, cols, leading dimension).
inline int64_t leading_dim(const TensorView& t, const char* name) {
  REPLEARN_CHECK(t.device.type == DeviceType::CPU, Value, "gemm: ", name, " must be on the CPU");
  REPLEARN_CHECK(t.ndim == 2, Value, "gemm: ", name, " must be 2-D, got ", t.ndim, "-D");
  REPLEARN_CHECK(!t.negated, Value, "gemm: ", name, " has torch's negative bit set; pass it through .resolve_neg()");
  REPLEARN_CHECK(t.size(1) <= 1 || t.stride(1) == 1, Value, "gemm: ", name, " needs unit column stride");
  return std::max<int64_t>({t.stride(0), t.size(1), 1});
}

// source: "" multiplies the stored b (gemm); "panels" or "rows" hands it to gemm_panels through
// StoredPanels in that layout; "packed" packs op(b) once through blas::pack_b (row-count hint m_hint,
// or m when ≤ 0) and multiplies it `uses` times with gemm_packed_b (each product overwrites c with
// alpha·op(a)·op(b) + beta·c of the original c).
template <class T>
void run(const TensorView& a, const TensorView& b, const TensorView& c, bool ta, bool tb, double alpha, double beta,
         const std::string& source, int64_t m_hint = 0, int uses = 1) {
  const int64_t lda = leading_dim(a, "a"), ldb = leading_dim(b, "b"), ldc = leading_dim(c, "c");
  const int64_t m = c.size(0), n = c.size(1), k = ta ? a.size(0) : a.size(1);
  REPLEARN_CHECK((ta ? a.size(1) : a.size(0)) == m && (tb ? b.size(0) : b.size(1)) == n &&
                     (tb ? b.size(1) : b.size(0)) == k,
                 Value, "gemm: op(a) (", m, ", ", k, "), op(b) and c (", m, ", ", n, ") do not match");
  const blas::Trans trans_a = ta ? blas::Trans::Yes : blas::Trans::No;
  const blas::Trans trans_b = tb ? blas::Trans::Yes : blas::Trans::No;
  if (source.empty()) {
    blas::gemm<T>(trans_a, trans_b, m, n, k, T(alpha), a.data_as<const T>(), lda, b.data_as<const T>(), ldb, T(beta),
                  c.data_as<T>(), ldc);
    return;
  }
  if (source == "packed") {
    if (m_hint <= 0) m_hint = m;
    std::vector<T> buffer(blas::packed_b_size<T>(k, n, m_hint) + 64);  // + 64: room to align to 64 bytes
    T* panels = reinterpret_cast<T*>((reinterpret_cast<std::uintptr_t>(buffer.data()) + 63) / 64 * 64);
    const blas::PackedB<T> packed_b = blas::pack_b<T>(trans_b, k, n, b.data_as<const T>(), ldb, m_hint, panels);
    const std::vector<T> original(c.data_as<T>(), c.data_as<T>() + (m - 1) * ldc + n);
    for (int use = 0; use < uses; ++use) {
      std::copy(original.begin(), original.end(), c.data_as<T>());
      blas::gemm_packed_b<T>(trans_a, m, T(alpha), a.data_as<const T>(), lda, packed_b, T(beta), c.data_as<T>(), ldc);
    }
    return;
  }
  REPLEARN_CHECK(source == "panels" || source == "rows", Value, "gemm: source must be '', 'panels' or 'rows', got '",
                 source, "'");
  using Layout = typename blas::PanelSource<T>::Layout;
  const blas::StoredPanels<T> panels(source == "panels" ? Layout::Panels : Layout::TransposedRows, trans_b,
                                     b.data_as<const T>(), ldb);
  blas::gemm_panels<T>(trans_a, m, n, k, T(alpha), a.data_as<const T>(), lda, panels, T(beta), c.data_as<T>(), ldc);
}

}  // namespace gemm_detail

inline void bind_gemm(pybind11::module_& m) {
  namespace py = pybind11;
  using py::arg;
  m.def(
      "gemm",
      [](const TensorView& a, const TensorView& b, const TensorView& c, bool trans_a, bool trans_b, double alpha,
         double beta, const std::string& source) {
        REPLEARN_CHECK(a.dtype == c.dtype && b.dtype == c.dtype, Type, "gemm: a, b and c must share a dtype");
        if (c.dtype == DType::Float32)
          gemm_detail::run<float>(a, b, c, trans_a, trans_b, alpha, beta, source);
        else if (c.dtype == DType::Float64)
          gemm_detail::run<double>(a, b, c, trans_a, trans_b, alpha, beta, source);
        else
          REPLEARN_CHECK(false, Type, "gemm: float32 or float64, got ", dtype_name(c.dtype));
      },
      arg("a"), arg("b"), arg("c"), arg("trans_a") = false, arg("trans_b") = false, arg("alpha") = 1.0,
      arg("beta") = 0.0, arg("source") = "", py::call_guard<py::gil_scoped_release>(),
      "c = alpha·op(a)·op(b) + beta·c through core/gemm (tests and benchmarks); source 'panels' or 'rows' "
      "supplies op(b) through gemm_panels in that PanelSource layout.");
  m.def(
      "gemm_packed_b",
      [](const TensorView& a, const TensorView& b, const TensorView& c, bool trans_a, bool trans_b, double alpha,
         double beta, int64_t m_hint, int uses) {
        REPLEARN_CHECK(a.dtype == c.dtype && b.dtype == c.dtype, Type, "gemm_packed_b: a, b and c must share a dtype");
        REPLEARN_CHECK(uses >= 1, Value, "gemm_packed_b: uses must be ≥ 1, got ", uses);
        if (c.dtype == DType::Float32)
          gemm_detail::run<float>(a, b, c, trans_a, trans_b, alpha, beta, "packed", m_hint, uses);
        else if (c.dtype == DType::Float64)
          gemm_detail::run<double>(a, b, c, trans_a, trans_b, alpha, beta, "packed", m_hint, uses);
        else
          REPLEARN_CHECK(false, Type, "gemm_packed_b: float32 or float64, got ", dtype_name(c.dtype));
      },
      arg("a"), arg("b"), arg("c"), arg("trans_a") = false, arg("trans_b") = false, arg("alpha") = 1.0,
      arg("beta") = 0.0, arg("m_hint") = 0, arg("uses") = 2, py::call_guard<py::gil_scoped_release>(),
      "The same product with op(b) packed once (blas::pack_b) and used `uses` times (gemm_packed_b).");
  m.def("gemm_backend", [] { return blas::float32_backend() == blas::Backend::Native ? "native" : "openblas"; },
        "Who computes float32 GEMMs: 'native' (AVX-512 kernel) or 'openblas' (REPLEARN_GEMM).");
  m.def(
      "set_gemm_backend",
      [](const std::string& name) {
        REPLEARN_CHECK(name == "native" || name == "openblas", Value, "set_gemm_backend: 'native' or 'openblas', got '",
                       name, "'");
        blas::set_float32_backend(name == "native" ? blas::Backend::Native : blas::Backend::OpenBLAS);
      },
      arg("name"));
  m.def("gemm_native_supported", &blas::native_supported);
}

}  // namespace replearn::python
