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

}  // namespace
}  // namespace replearn
