// Large outputs on transparent huge pages.
//
// Under glibc's default malloc settings every large tensor torch allocates is a fresh mmap, and the
// kernel that first writes it pays a page fault per 4 KiB page: 16 K faults, about 12 ms of a
// 16.5 ms elementwise pass over a 64 MiB output on this machine. Where Linux's transparent huge
// pages are in "madvise" mode (the default of many distributions), asking for them on such a buffer
// before its first write makes the faults 2 MiB each: the same pass took 4.4 ms (bench/RESULTS.md,
// "huge pages"). torch offers the same for its own allocations behind THP_MEM_ALLOC_ENABLE=1, off by
// default. A CPU entry point calls prefer_huge_pages on its large outputs after validation.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <optional>

#include "core/tensor_view.h"

namespace replearn {

// Outputs below this size are left alone: their faults are few, and a 2 MiB page would be mostly
// waste for them.
constexpr int64_t kHugePageMinBytes = int64_t{8} << 20;

// False when the environment variable REPLEARN_HUGE_PAGES is "0" (read once, at the first call):
// for machines where huge-page faults stall on memory compaction, or to measure without them.
bool huge_pages_enabled();

// Advises huge pages (madvise MADV_HUGEPAGE) for the whole 2 MiB-aligned pages inside
// [data, data + bytes) when there are any, bytes ≥ kHugePageMinBytes and the first of them is not
// yet resident (a fresh mapping): memory a caching allocator hands out again is already faulted in
// and is left as it is. Advice only: nothing is written, and a refusal changes nothing. No-op
// outside Linux and when huge_pages_enabled() is false.
void prefer_huge_pages(void* data, int64_t bytes);

// prefer_huge_pages for a CPU view's memory (CUDA views, and absent optional ones, are ignored).
void prefer_huge_pages(const TensorView& view);
void prefer_huge_pages(const std::optional<TensorView>& view);

// Streaming (non-temporal) stores. A store to a line that is not in cache first reads the line from
// memory (read for ownership); a streaming store writes whole lines without that read and without
// evicting other data for them. For an output larger than the last-level cache, which is written
// back to memory before anyone reads it anyway, that saves a third of a copy-like kernel's traffic
// (layer_norm's backward at 8192×1024 float32, 2 threads: 38 → 58 GB/s); for a smaller one it would
// push out of cache what the next kernel is about to read, so such outputs are stored normally.

// The last-level cache's size in bytes (read once from sysfs, else sysconf; 32 MiB where neither says).
int64_t last_level_cache_bytes();

// True when an output of `bytes` should be written with streaming stores: at least the last-level
// cache's size, and REPLEARN_STREAMING_STORES is not "0" (read once; to measure without them).
bool prefer_streaming_stores(int64_t bytes);

// Streaming stores and 4K aliasing. A load whose address agrees in its low 12 bits with a streaming
// store still waiting in a write-combining buffer is held up as if it read that store's line. In a
// loop that walks arrays in step, a streamed output whose offset within the 4 KiB page lies just
// past an input's meets such a store at every vector: rms_norm's backward at 8192×1024 float32
// (2 threads, Zen 3) took 5–6 ms with dx anywhere else and 12–29 ms with dx 64–192 bytes past x,
// or 128–192 before it when the loop also updates the weight-gradient block, and the allocator
// decided which (bench/RESULTS.md, "4K aliasing"). Walking the loop downwards mirrors the zones. The
// zones below are those measurements with margin: walking up, an output from kStreamingAliasBehind
// bytes before an input to kStreamingAliasAhead bytes past it is slowed; walking down, the mirror
// image. An output near an input's offset (or between inputs) takes ordinary stores: 6.5 ms there.
enum class StoreWalk {
  kUp,      // streaming stores, columns in ascending order
  kDown,    // streaming stores, columns in descending order
  kNormal,  // ordinary stores (in ascending order)
};

constexpr int64_t kStreamingAliasAhead = 512;
constexpr int64_t kStreamingAliasBehind = 256;

// The walk for a loop that streams to `stores` while reading `loads`, every pointer advancing by the
// same amount per step (null pointers are ignored): the first of kUp and kDown under which no store
// sits in a load's zone, else kNormal.
StoreWalk streaming_walk(std::initializer_list<const void*> stores, std::initializer_list<const void*> loads);

// Where scratch that such a loop reads and writes in step with `streams` should start within its
// 4 KiB page: the multiple of 64 farthest (circularly) from every stream's own offset, among those
// outside the zones of `stores` under `walk` when there are such (the loop reads the scratch, and
// writes it with ordinary stores). Null pointers are ignored.
int64_t scratch_page_offset(std::initializer_list<const void*> streams, std::initializer_list<const void*> stores,
                            StoreWalk walk);

// The first address at or after `from` whose offset within its 4 KiB page is `page_offset`.
void* at_page_offset(void* from, int64_t page_offset);

}  // namespace replearn
