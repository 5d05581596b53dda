// CPU emulation of the small part of the CUDA runtime that csrc/norm/cuda.cu uses: one std::thread per
// CUDA thread, blocks run one after another, __syncthreads = a block barrier, __shfl_xor_sync = a warp
// exchange through a per-warp barrier. Checks: launch limits, barrier/shuffle counts uniform per block/warp.
#pragma once
#include <math.h>
#include <atomic>
#include <barrier>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)

struct uint3 { unsigned x = 0, y = 0, z = 0; };
struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
inline thread_local uint3 threadIdx, blockIdx;
inline thread_local dim3 blockDim, gridDim;

typedef int cudaError_t;
constexpr cudaError_t cudaSuccess = 0;
typedef struct CUstream_st* cudaStream_t;

inline float rsqrtf(float v) { return 1.f / sqrtf(v); }

namespace emu {
inline cudaError_t last_error = cudaSuccess;
inline unsigned grid_x_cap = 0;  // 0: none; else every launch's grid.x is clamped (tests grid-stride loops)
inline std::atomic<long> launches{0};

struct Warp {
  float buf[32];
  std::unique_ptr<std::barrier<>> bar;
};
struct Block {
  std::unique_ptr<std::barrier<>> bar;
  std::vector<Warp> warps;
  std::vector<long> syncs, shuffles;
};
inline Block* block = nullptr;

[[noreturn]] inline void fail(const char* what) {
  std::fprintf(stderr, "EMULATOR ERROR: %s\n", what);
  std::abort();
}

template <class F>
struct Launcher {
  F f;
  dim3 grid, threads;
  template <class... A>
  void operator()(A... args) {
    ++launches;
    if (threads.x == 0 || threads.x > 1024 || threads.y != 1 || threads.z != 1) { last_error = 9; return; }
    if (grid.x == 0 || grid.y == 0 || grid.y > 65535 || grid.z != 1) { last_error = 9; return; }
    dim3 g = grid;
    if (grid_x_cap && g.x > grid_x_cap) g.x = grid_x_cap;
    const unsigned nwarps = (threads.x + 31) / 32;
    for (unsigned by = 0; by < g.y; ++by)
      for (unsigned bx = 0; bx < g.x; ++bx) {
        Block b;
        b.bar = std::make_unique<std::barrier<>>(threads.x);
        b.warps.resize(nwarps);
        for (unsigned w = 0; w < nwarps; ++w)
          b.warps[w].bar = std::make_unique<std::barrier<>>(std::min<unsigned>(32, threads.x - 32 * w));
        b.syncs.assign(threads.x, 0);
        b.shuffles.assign(threads.x, 0);
        block = &b;
        std::vector<std::thread> ts;
        ts.reserve(threads.x);
        for (unsigned t = 0; t < threads.x; ++t)
          ts.emplace_back([&, t] {
            threadIdx = {t, 0, 0};
            blockIdx = {bx, by, 0};
            blockDim = threads;
            gridDim = g;
            f(args...);
            b.warps[t / 32].bar->arrive_and_drop();
            b.bar->arrive_and_drop();
          });
        for (auto& th : ts) th.join();
        for (unsigned t = 0; t < threads.x; ++t) {
          if (b.syncs[t] != b.syncs[0]) fail("__syncthreads count differs between threads of a block");
          if (b.shuffles[t] != b.shuffles[t & ~31u]) fail("shuffle count differs between lanes of a warp");
        }
        block = nullptr;
      }
  }
};
template <class F>
Launcher<F> launch(F f, dim3 grid, dim3 threads, int = 0, cudaStream_t = nullptr) {
  return {f, grid, threads};
}
}  // namespace emu

inline cudaError_t cudaGetLastError() {
  cudaError_t e = emu::last_error;
  emu::last_error = cudaSuccess;
  return e;
}
inline const char* cudaGetErrorString(cudaError_t) { return "emulated invalid configuration"; }

inline void __syncthreads() {
  ++emu::block->syncs[threadIdx.x];
  emu::block->bar->arrive_and_wait();
}
// Float atomics (the selective scan's selective dB/dC): one std::atomic_ref per access.
inline float atomicAdd(float* address, float value) { return std::atomic_ref<float>(*address).fetch_add(value); }
inline float __shfl_xor_sync(unsigned mask, float v, int offset) {
  if (mask != 0xffffffffu) emu::fail("partial shuffle mask");
  auto& w = emu::block->warps[threadIdx.x / 32];
  const unsigned lane = threadIdx.x & 31;
  ++emu::block->shuffles[threadIdx.x];
  w.buf[lane] = v;
  w.bar->arrive_and_wait();
  const float r = w.buf[lane ^ offset];
  w.bar->arrive_and_wait();
  return r;
}
