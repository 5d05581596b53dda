// CUDA helpers shared by every family: error checks with file:line, dtype dispatch over the CUDA
// floating types (float32, float16, bfloat16; arithmetic in float32), and block-wide reductions.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "core/dispatch.h"
#include "core/error.h"

// Throws replearn::Error(Runtime) naming the call, the CUDA error and file:line.
#define REPLEARN_CUDA_CHECK(expr)                                                                   \
  do {                                                                                              \
    cudaError_t replearn_err_ = (expr);                                                             \
    REPLEARN_CHECK(replearn_err_ == cudaSuccess, Runtime, #expr, " failed: ",                      \
                   cudaGetErrorString(replearn_err_), " at ", __FILE__, ":", __LINE__);             \
  } while (0)

// After every kernel launch: a bad launch configuration surfaces here, named.
#define REPLEARN_CUDA_LAUNCH_CHECK() REPLEARN_CUDA_CHECK(cudaGetLastError())

namespace replearn {

template <class F>
decltype(auto) dispatch_cuda_floating(DType dtype, F&& f) {
  switch (dtype) {
    case DType::Float32: return f(type_tag<float>{});
    case DType::Float16: return f(type_tag<__half>{});
    case DType::BFloat16: return f(type_tag<__nv_bfloat16>{});
    default: break;
  }
  throw Error(ErrorKind::Type,
              std::string("CUDA kernels support float32, float16 and bfloat16, got ") + dtype_name(dtype));
}

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <class T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

template <class V>
__device__ __forceinline__ V warp_sum(V v) {  // float, or double where a sum must not round
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Sum over the whole block; every thread gets the result. blockDim.x must be a multiple of 32 and
// at most 1024; `scratch` holds 32 floats in shared memory. Callers __syncthreads() before reusing it.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  v = warp_sum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  const int warps = blockDim.x >> 5;
  float total = lane < warps ? scratch[lane] : 0.f;
  total = warp_sum(total);
  __syncthreads();
  return total;
}

inline cudaStream_t as_stream(std::uintptr_t stream) { return reinterpret_cast<cudaStream_t>(stream); }

}  // namespace replearn
