// core/memory.h: huge pages are asked for on fresh large buffers only, and asking never writes.
#include <gtest/gtest.h>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

#include "core/memory.h"

namespace replearn {
namespace {

#if defined(__linux__) && defined(MADV_HUGEPAGE)

// VmFlags of the mapping that holds `address` (/proc/self/smaps), "" when none does.
std::string vm_flags(const void* address) {
  std::ifstream smaps("/proc/self/smaps");
  const auto a = reinterpret_cast<std::uintptr_t>(address);
  bool inside = false;
  for (std::string line; std::getline(smaps, line);) {
    std::uintptr_t begin = 0, end = 0;
    char dash = 0;
    std::istringstream header(line);
    if (header >> std::hex >> begin >> dash >> end && dash == '-') {
      inside = begin <= a && a < end;
    } else if (inside && line.rfind("VmFlags:", 0) == 0) {
      return line;
    }
  }
  return "";
}

bool advised(const void* address) { return vm_flags(address).find(" hg") != std::string::npos; }

// A fresh anonymous mapping of `bytes`, unmapped at scope exit.
struct Mapping {
  explicit Mapping(size_t n) : bytes(n), data(mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)) {}
  ~Mapping() {
    if (data != MAP_FAILED) munmap(data, bytes);
  }
  char* at(size_t offset) const { return static_cast<char*>(data) + offset; }
  size_t bytes;
  void* data;
};

// The first 2 MiB boundary at or after p.
char* huge_boundary(char* p) {
  const auto a = reinterpret_cast<std::uintptr_t>(p);
  return reinterpret_cast<char*>((a + (std::uintptr_t{2} << 20) - 1) & ~((std::uintptr_t{2} << 20) - 1));
}

TEST(HugePages, FreshLargeBufferIsAdvisedAndLeftZero) {
  if (!std::ifstream("/sys/kernel/mm/transparent_hugepage/enabled")) GTEST_SKIP() << "kernel without huge pages";
  Mapping m(size_t{32} << 20);
  ASSERT_NE(m.data, MAP_FAILED);
  prefer_huge_pages(m.data, static_cast<int64_t>(m.bytes));
  char* inner = huge_boundary(m.at(0));
  EXPECT_TRUE(advised(inner)) << vm_flags(inner);
  for (size_t i = 0; i < m.bytes; i += 4096) ASSERT_EQ(*m.at(i), 0) << "byte " << i;  // advice wrote nothing
}

TEST(HugePages, ResidentSmallOrCudaBuffersAreLeftAlone) {
  Mapping resident(size_t{32} << 20), small(size_t{4} << 20);
  ASSERT_NE(resident.data, MAP_FAILED);
  ASSERT_NE(small.data, MAP_FAILED);
  std::memset(resident.data, 1, resident.bytes);  // faulted in: what a caching allocator hands out again
  prefer_huge_pages(resident.data, static_cast<int64_t>(resident.bytes));
  EXPECT_FALSE(advised(huge_boundary(resident.at(0))));
  prefer_huge_pages(small.data, static_cast<int64_t>(small.bytes));  // under kHugePageMinBytes
  EXPECT_FALSE(advised(huge_boundary(small.at(0))));
  Mapping fresh(size_t{32} << 20);
  TensorView cuda = TensorView::contiguous(fresh.data, DType::Float32, {DeviceType::CUDA, 0}, {int64_t{8} << 20});
  prefer_huge_pages(cuda);  // not host memory: never advised
  EXPECT_FALSE(advised(huge_boundary(fresh.at(0))));
  prefer_huge_pages(nullptr, int64_t{1} << 30);  // nothing to advise
  prefer_huge_pages(std::optional<TensorView>{});
}

#endif

// Streaming stores are for outputs at least as large as the last-level cache, which is read from
// sysfs where Linux lists it (the same number lscpu prints for this CPU's own cache).
TEST(StreamingStores, OnlyForOutputsAtLeastTheLastLevelCache) {
  const int64_t llc = last_level_cache_bytes();
  EXPECT_GE(llc, int64_t{1} << 16);
  EXPECT_EQ(llc, last_level_cache_bytes());  // read once
  EXPECT_FALSE(prefer_streaming_stores(llc - 1));
  EXPECT_FALSE(prefer_streaming_stores(0));
  const char* setting = std::getenv("REPLEARN_STREAMING_STORES");
  if (setting == nullptr || std::strcmp(setting, "0") != 0) EXPECT_TRUE(prefer_streaming_stores(llc));
#if defined(__linux__)
  std::ifstream level("/sys/devices/system/cpu/cpu0/cache/index3/level"), size("/sys/devices/system/cpu/cpu0/cache/index3/size");
  int cache_level = 0;
  std::string cache_size;
  if (level >> cache_level && size >> cache_size && cache_level == 3 && cache_size.back() == 'K') {
    EXPECT_EQ(llc, std::stoll(cache_size) * 1024);
  }
#endif
}

// An address at `offset` bytes into a 4 KiB page (never dereferenced).
const void* at(int64_t page, int64_t offset) { return reinterpret_cast<const void*>(page * 4096 + offset); }

// The walk keeps every streamed output out of the zones of measured slowdowns: walking up, from
// kStreamingAliasBehind bytes before an input's offset within the page to kStreamingAliasAhead
// past it; walking down, the mirror image; neither when both apply.
TEST(StreamingWalk, KeepsEveryStoreOutOfEveryLoadsZone) {
  const void* x = at(7, 0);
  EXPECT_EQ(streaming_walk({at(3, 1024)}, {x}), StoreWalk::kUp);
  EXPECT_EQ(streaming_walk({at(3, 4096 - 512)}, {x}), StoreWalk::kUp);  // 512 before: clear of both zones
  EXPECT_EQ(streaming_walk({at(3, 64)}, {x}), StoreWalk::kNormal);      // past x by less than Behind
  EXPECT_EQ(streaming_walk({at(3, 0)}, {x}), StoreWalk::kNormal);       // the same offset: both zones
  EXPECT_EQ(streaming_walk({at(3, 4096 - 64)}, {x}), StoreWalk::kNormal);
  EXPECT_EQ(streaming_walk({at(3, kStreamingAliasBehind)}, {x}), StoreWalk::kNormal);
  EXPECT_EQ(streaming_walk({at(3, kStreamingAliasBehind + 64)}, {x}), StoreWalk::kDown);
  EXPECT_EQ(streaming_walk({at(3, kStreamingAliasAhead - 64)}, {x}), StoreWalk::kDown);
  EXPECT_EQ(streaming_walk({at(3, kStreamingAliasAhead)}, {x}), StoreWalk::kUp);
  EXPECT_EQ(streaming_walk({at(3, 4096 - kStreamingAliasBehind)}, {x}), StoreWalk::kNormal);
  EXPECT_EQ(streaming_walk({at(3, 4096 - kStreamingAliasBehind - 64)}, {x}), StoreWalk::kUp);
  // Every (store, load) pair counts; null pointers do not.
  EXPECT_EQ(streaming_walk({at(3, 1024), at(5, 3072)}, {x, at(9, 2048)}), StoreWalk::kUp);
  EXPECT_EQ(streaming_walk({at(3, 1024)}, {x, at(9, 1024 - 300)}), StoreWalk::kDown);
  EXPECT_EQ(streaming_walk({at(3, 1024), at(5, 64)}, {x}), StoreWalk::kNormal);
  EXPECT_EQ(streaming_walk({at(3, 1024), nullptr}, {x, nullptr}), StoreWalk::kUp);
}

// Scratch goes where no streamed store's zone reaches it, as far as it can from every stream.
TEST(StreamingWalk, ScratchIsPlacedClearOfTheStreams) {
  const void* x = at(1, 0);
  const void* dy = at(2, 2048);
  for (int64_t dx_offset = 0; dx_offset < 4096; dx_offset += 64) {
    const void* dx = at(3, dx_offset);
    const StoreWalk walk = streaming_walk({dx}, {x, dy});
    const int64_t offset = scratch_page_offset({x, dy, dx}, {dx}, walk);
    SCOPED_TRACE("dx at " + std::to_string(dx_offset) + ", scratch at " + std::to_string(offset));
    EXPECT_EQ(offset % 64, 0);
    ASSERT_GE(offset, 0);
    ASSERT_LT(offset, 4096);
    // The scratch, read as a load beside dx, leaves the walk as it was.
    if (walk != StoreWalk::kNormal) EXPECT_EQ(streaming_walk({dx}, {x, dy, at(4, offset)}), walk);
    // Three streams leave a gap of at least a third of the page: the middle of the largest is ≥ 680 away.
    for (const void* stream : {x, dy, dx}) {
      const int64_t gap = std::abs((offset - static_cast<int64_t>(reinterpret_cast<std::uintptr_t>(stream) % 4096) +
                                    4096 + 2048) % 4096 - 2048);
      EXPECT_GE(gap, walk == StoreWalk::kNormal ? 640 : 256);
    }
  }
  EXPECT_EQ(scratch_page_offset({nullptr}, {nullptr}, StoreWalk::kNormal) % 64, 0);
}

TEST(StreamingWalk, AtPageOffsetIsTheFirstSuchAddressAtOrAfter) {
  alignas(4096) static char page[3 * 4096];
  EXPECT_EQ(at_page_offset(page, 0), page);
  EXPECT_EQ(at_page_offset(page, 192), page + 192);
  EXPECT_EQ(at_page_offset(page + 200, 192), page + 4096 + 192);
  EXPECT_EQ(at_page_offset(page + 192, 192), page + 192);
  EXPECT_EQ(at_page_offset(page + 4095, 0), page + 4096);
}

}  // namespace
}  // namespace replearn
