// REPLEARN_HD: functions shared by a family's CPU and CUDA kernels (cell math, scale
// parameterizations): __host__ __device__ under nvcc, plain inline in the C++ compiler's files.
#pragma once

#if defined(__CUDACC__)
#define REPLEARN_HD __host__ __device__ __forceinline__
#else
#define REPLEARN_HD inline
#endif
