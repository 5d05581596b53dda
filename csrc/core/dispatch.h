// dtype dispatch: turn a runtime DType into a compile-time scalar type.
//
//   dispatch_cpu_floating(x.dtype, [&](auto tag) {
//     using scalar_t = typename decltype(tag)::type;
//     kernel<scalar_t>(...);
//   });
//
// Only the dtypes a device supports are instantiated (ARCHITECTURE.md: float32/float64 on the CPU);
// validation has rejected the others with a named error before dispatch is reached.
#pragma once

#include "core/error.h"
#include "core/tensor_view.h"

namespace replearn {

template <class T>
struct type_tag {
  using type = T;
};

template <class F>
decltype(auto) dispatch_cpu_floating(DType dtype, F&& f) {
  switch (dtype) {
    case DType::Float32: return f(type_tag<float>{});
    case DType::Float64: return f(type_tag<double>{});
    default: break;
  }
  throw Error(ErrorKind::Type, std::string("CPU kernels support float32 and float64, got ") + dtype_name(dtype));
}

}  // namespace replearn
