// TensorView: a non-owning view of strided memory (pointer, dtype, device, sizes, strides).
//
// The native core knows nothing of torch or Python: kernels take TensorViews, and the bindings
// (csrc/python/tensor_caster.cpp) build them from any DLPack producer without copying. Strides are
// counted in elements, as in DLPack and torch.
#pragma once

#include <cstdint>
#include <string>

#include "core/error.h"

namespace replearn {

enum class DType : int8_t {
  Float32, Float64, Float16, BFloat16,
  Int8, Int16, Int32, Int64, UInt8, Bool, Complex64, Complex128,
  Other,  // anything else a producer can describe (fp8, uint16, ...): always rejected by name
};

enum class DeviceType : int8_t { CPU, CUDA, Other };

struct Device {
  DeviceType type = DeviceType::CPU;
  int index = 0;  // CUDA ordinal; 0 for the CPU
  bool operator==(const Device& o) const { return type == o.type && (type != DeviceType::CUDA || index == o.index); }
  bool operator!=(const Device& o) const { return !(*this == o); }
};

const char* dtype_name(DType dtype);
std::string device_name(const Device& device);
int64_t dtype_size(DType dtype);

struct TensorView {
  static constexpr int kMaxDims = 16;

  void* data = nullptr;
  DType dtype = DType::Float32;
  Device device;
  int ndim = 0;
  int64_t sizes[kMaxDims] = {};
  int64_t strides[kMaxDims] = {};  // in elements
  // torch's negative bit (torch._neg_view, a contiguous .conj().imag): the memory holds the negated
  // values. The caster reports it; Checker::on_device, which sees every tensor argument, refuses it.
  bool negated = false;

  int64_t size(int dim) const { return sizes[dim < 0 ? dim + ndim : dim]; }
  int64_t stride(int dim) const { return strides[dim < 0 ? dim + ndim : dim]; }

  int64_t numel() const {
    int64_t n = 1;
    for (int d = 0; d < ndim; ++d) n *= sizes[d];
    return n;
  }

  // Product of sizes in [begin, end).
  int64_t numel_between(int begin, int end) const {
    int64_t n = 1;
    for (int d = begin; d < end; ++d) n *= sizes[d];
    return n;
  }

  // Row-major contiguous; size-1 dimensions may carry any stride, and a tensor without elements is
  // contiguous whatever its strides (both as torch has it: x[:, :0] of a (4, 5) tensor keeps strides
  // (5, 1), and its .contiguous() returns it unchanged).
  bool is_contiguous() const {
    if (numel() == 0) return true;
    int64_t expected = 1;
    for (int d = ndim - 1; d >= 0; --d) {
      if (sizes[d] != 1 && strides[d] != expected) return false;
      expected *= sizes[d];
    }
    return true;
  }

  template <class T>
  T* data_as() const { return static_cast<T*>(data); }

  // "(8, 16, 3)"
  std::string shape_string() const;

  // A view of contiguous memory with the given sizes.
  static TensorView contiguous(void* data, DType dtype, Device device, std::initializer_list<int64_t> sizes);
};

}  // namespace replearn
