// CPU emulation of the small part of the CUDA runtime that replearn's CUDA kernels use. Every CUDA
// thread of a block is a fiber (ucontext) with its own stack, run cooperatively on one OS thread:
// __syncthreads is a block barrier and __shfl_xor_sync a warp exchange through a per-warp barrier,
// both of which switch to the next runnable fiber. Blocks run one after another. Checks: launch
// limits, barrier/shuffle counts uniform per block/warp, and barriers that can never complete.
//
// Fibers rather than one std::thread per CUDA thread: a block of 1024 threads then costs a few
// hundred context switches instead of 1024 thread creations, and a run no longer puts hundreds of
// runnable threads on a shared machine.
#pragma once
#include <math.h>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <memory>
#include <tuple>
#include <ucontext.h>
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

[[noreturn]] inline void fail(const char* what) {
  std::fprintf(stderr, "EMULATOR ERROR: %s\n", what);
  std::abort();
}

// The fibers of the running block and the scheduler's context.
struct Fiber {
  ucontext_t context;
  std::unique_ptr<char[]> stack;
  const struct Barrier* waiting_on = nullptr;  // runnable again once that barrier's generation moves
  unsigned long waiting_generation = 0;
  bool done = false;
};
inline constexpr std::size_t kFiberStack = 256 * 1024;  // kernels keep register tiles in locals
inline std::vector<Fiber> fibers;                        // reused across launches (stacks stay mapped)
inline ucontext_t scheduler;
inline unsigned current = 0;

// A barrier of `expected` fibers (a block or a warp). arrive_and_drop is a fiber leaving for good.
struct Barrier {
  unsigned expected, arrived = 0;
  unsigned long generation = 0;
  explicit Barrier(unsigned n) : expected(n) {}
  void release() {
    arrived = 0;
    ++generation;
  }
  void arrive_and_wait() {
    if (++arrived == expected) {
      release();
      return;
    }
    Fiber& self = fibers[current];
    self.waiting_on = this;
    self.waiting_generation = generation;
    swapcontext(&self.context, &scheduler);
  }
  void arrive_and_drop() {
    --expected;
    if (arrived > 0 && arrived == expected) release();
  }
};

struct Warp {
  double buf[32];  // wide enough for every shuffled type (float, double)
  std::unique_ptr<Barrier> bar;
};
struct Block {
  std::unique_ptr<Barrier> bar;
  std::vector<Warp> warps;
  std::vector<long> syncs, shuffles;
};
inline Block* block = nullptr;

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
    if (fibers.size() < threads.x) fibers.resize(threads.x);
    for (unsigned by = 0; by < g.y; ++by)
      for (unsigned bx = 0; bx < g.x; ++bx) {
        Block b;
        b.bar = std::make_unique<Barrier>(threads.x);
        b.warps.resize(nwarps);
        for (unsigned w = 0; w < nwarps; ++w) b.warps[w].bar = std::make_unique<Barrier>(std::min<unsigned>(32, threads.x - 32 * w));
        b.syncs.assign(threads.x, 0);
        b.shuffles.assign(threads.x, 0);
        block = &b;
        run_block(b, bx, by, g, args...);
        for (unsigned t = 0; t < threads.x; ++t) {
          if (b.syncs[t] != b.syncs[0]) fail("__syncthreads count differs between threads of a block");
          if (b.shuffles[t] != b.shuffles[t & ~31u]) fail("shuffle count differs between lanes of a warp");
        }
        block = nullptr;
      }
  }

  // One block: start every fiber, then resume runnable ones round-robin until all have returned.
  template <class... A>
  void run_block(Block& b, unsigned bx, unsigned by, dim3 g, A... args) {
    static Launcher* self;  // makecontext passes ints only: the entry reads the launch from here
    static std::tuple<A...>* arguments;
    static Block* running;
    std::tuple<A...> packed(args...);
    self = this;
    arguments = &packed;
    running = &b;
    blockIdx = {bx, by, 0};
    blockDim = threads;
    gridDim = g;
    for (unsigned t = 0; t < threads.x; ++t) {
      Fiber& fiber = fibers[t];
      if (!fiber.stack) fiber.stack.reset(new char[kFiberStack]);
      getcontext(&fiber.context);
      fiber.context.uc_stack.ss_sp = fiber.stack.get();
      fiber.context.uc_stack.ss_size = kFiberStack;
      fiber.context.uc_link = &scheduler;
      fiber.done = false;
      fiber.waiting_on = nullptr;
      makecontext(&fiber.context, reinterpret_cast<void (*)()>(+[](unsigned t) {
                    std::apply(self->f, *arguments);
                    running->warps[t / 32].bar->arrive_and_drop();
                    running->bar->arrive_and_drop();
                    fibers[t].done = true;
                  }),
                  1, t);
    }
    for (unsigned alive = threads.x; alive > 0;) {
      bool progressed = false;
      for (unsigned t = 0; t < threads.x; ++t) {
        Fiber& fiber = fibers[t];
        if (fiber.done) continue;
        if (fiber.waiting_on && fiber.waiting_on->generation == fiber.waiting_generation) continue;
        fiber.waiting_on = nullptr;
        current = t;
        threadIdx = {t, 0, 0};
        swapcontext(&scheduler, &fiber.context);
        progressed = true;
        if (fiber.done) --alive;
      }
      if (!progressed) fail("a barrier can never complete (threads of a block wait at different barriers)");
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
template <class V>
inline V __shfl_xor_sync(unsigned mask, V v, int offset) {
  if (mask != 0xffffffffu) emu::fail("partial shuffle mask");
  auto& w = emu::block->warps[threadIdx.x / 32];
  const unsigned lane = threadIdx.x & 31;
  ++emu::block->shuffles[threadIdx.x];
  w.buf[lane] = v;
  w.bar->arrive_and_wait();
  const V r = static_cast<V>(w.buf[lane ^ offset]);
  w.bar->arrive_and_wait();
  return r;
}
