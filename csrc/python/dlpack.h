// The DLPack C ABI (https://dmlc.github.io/dlpack/latest/c_api.html): the version 0.8 structures a
// producer's __dlpack__() capsule points to, and the 1.3 C exchange table. Declared here from the published
// specification so the core needs no third-party header.
#pragma once

#include <cstdint>

extern "C" {

enum DLDeviceType : int32_t {
  kDLCPU = 1,
  kDLCUDA = 2,
  kDLCUDAHost = 3,
  kDLCUDAManaged = 13,
};

struct DLDevice {
  int32_t device_type;  // DLDeviceType
  int32_t device_id;
};

enum DLDataTypeCode : uint8_t {
  kDLInt = 0,
  kDLUInt = 1,
  kDLFloat = 2,
  kDLBfloat = 4,
  kDLComplex = 5,
  kDLBool = 6,
};

struct DLDataType {
  uint8_t code;
  uint8_t bits;
  uint16_t lanes;
};

struct DLTensor {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;  // in elements; NULL means compact row-major
  uint64_t byte_offset;
};

struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor* self);
};

// The C exchange table of DLPack 1.3 (`type(tensor).__dlpack_c_exchange_api__`, a capsule named
// "dlpack_exchange_api"): function pointers a producer publishes so that a consumer describes its
// tensors from C, with no Python call per attribute. Only the header (stable across versions) and
// the entry this package calls are typed; the other producer functions are declared as opaque
// pointers to keep the layout.
struct DLPackVersion {
  uint32_t major;
  uint32_t minor;
};

struct DLPackExchangeAPIHeader {
  DLPackVersion version;
  DLPackExchangeAPIHeader* prev_api;  // an older table in the chain, or NULL
};

// Fills `out` with a non-owning description of `py_object` (shape and strides point into the
// producer's tensor, valid while it lives and is not resized). 0, or -1 with a Python error set.
typedef int (*DLPackDLTensorFromPyObjectNoSync)(void* py_object, DLTensor* out);

struct DLPackExchangeAPI {
  DLPackExchangeAPIHeader header;
  void* managed_tensor_allocator;
  void* managed_tensor_from_py_object_no_sync;
  void* managed_tensor_to_py_object_no_sync;
  DLPackDLTensorFromPyObjectNoSync dltensor_from_py_object_no_sync;  // may be NULL
  void* current_work_stream;
};

}  // extern "C"
