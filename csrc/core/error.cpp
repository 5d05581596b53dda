// Names of dtypes and devices for error messages, and TensorView helpers.
#include "core/tensor_view.h"

namespace replearn {

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::Float32: return "float32";
    case DType::Float64: return "float64";
    case DType::Float16: return "float16";
    case DType::BFloat16: return "bfloat16";
    case DType::Int8: return "int8";
    case DType::Int16: return "int16";
    case DType::Int32: return "int32";
    case DType::Int64: return "int64";
    case DType::UInt8: return "uint8";
    case DType::Bool: return "bool";
    case DType::Complex64: return "complex64";
    case DType::Complex128: return "complex128";
    case DType::Other: break;
  }
  return "an unsupported dtype";
}

int64_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::Float64: case DType::Int64: case DType::Complex64: return 8;
    case DType::Float32: case DType::Int32: return 4;
    case DType::Float16: case DType::BFloat16: case DType::Int16: return 2;
    case DType::Int8: case DType::UInt8: case DType::Bool: return 1;
    case DType::Complex128: return 16;
    case DType::Other: break;
  }
  return 0;
}

std::string device_name(const Device& device) {
  switch (device.type) {
    case DeviceType::CPU: return "cpu";
    case DeviceType::CUDA: return "cuda:" + std::to_string(device.index);
    case DeviceType::Other: break;
  }
  return "an unsupported device";
}

std::string TensorView::shape_string() const {
  std::string s = "(";
  for (int d = 0; d < ndim; ++d) {
    if (d) s += ", ";
    s += std::to_string(sizes[d]);
  }
  return s + ")";
}

TensorView TensorView::contiguous(void* data, DType dtype, Device device, std::initializer_list<int64_t> sizes) {
  TensorView v;
  v.data = data;
  v.dtype = dtype;
  v.device = device;
  v.ndim = static_cast<int>(sizes.size());
  int d = 0;
  for (int64_t s : sizes) v.sizes[d++] = s;
  int64_t stride = 1;
  for (int k = v.ndim - 1; k >= 0; --k) {
    v.strides[k] = stride;
    stride *= v.sizes[k];
  }
  return v;
}

}  // namespace replearn
