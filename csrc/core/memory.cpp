#include "core/memory.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

namespace replearn {

bool huge_pages_enabled() {
  static const bool enabled = [] {
    const char* value = std::getenv("REPLEARN_HUGE_PAGES");
    return value == nullptr || std::strcmp(value, "0") != 0;
  }();
  return enabled;
}

void prefer_huge_pages(void* data, int64_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (data == nullptr || bytes < kHugePageMinBytes || !huge_pages_enabled()) return;
  constexpr std::uintptr_t kHugePage = std::uintptr_t{2} << 20;
  const std::uintptr_t address = reinterpret_cast<std::uintptr_t>(data);
  const std::uintptr_t begin = (address + kHugePage - 1) & ~(kHugePage - 1);
  const std::uintptr_t end = (address + static_cast<std::uintptr_t>(bytes)) & ~(kHugePage - 1);
  if (end <= begin) return;
  unsigned char resident = 0;
  if (mincore(reinterpret_cast<void*>(begin), 1, &resident) != 0 || (resident & 1) != 0) return;
  madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)data, (void)bytes;
#endif
}

void prefer_huge_pages(const TensorView& view) {
  if (view.device.type == DeviceType::CPU) prefer_huge_pages(view.data, view.numel() * dtype_size(view.dtype));
}

void prefer_huge_pages(const std::optional<TensorView>& view) {
  if (view) prefer_huge_pages(*view);
}

namespace {

// The size of the highest cache level that sysfs lists for cpu0 ("32768K"), or 0. Preferred over
// sysconf, which on some virtual machines reports the whole socket's L3 (384 MiB on a 2-core slice
// of an EPYC whose own L3 is 32 MiB).
int64_t sysfs_last_level_cache_bytes() {
  int64_t bytes = 0;
  int best_level = 0;
  for (int index = 0; index < 16; ++index) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index) + "/";
    std::ifstream level_file(dir + "level"), size_file(dir + "size");
    int level = 0;
    std::string size;
    if (!(level_file >> level) || !(size_file >> size) || level < best_level) continue;
    char* unit = nullptr;
    const long long value = std::strtoll(size.c_str(), &unit, 10);
    const int64_t scale = *unit == 'K' ? 1024 : *unit == 'M' ? 1024 * 1024 : *unit == 'G' ? int64_t{1} << 30 : 1;
    if (value > 0) {
      best_level = level;
      bytes = value * scale;
    }
  }
  return bytes;
}

}  // namespace

int64_t last_level_cache_bytes() {
  static const int64_t bytes = [] {
    int64_t found = sysfs_last_level_cache_bytes();
#if defined(__linux__) && defined(_SC_LEVEL3_CACHE_SIZE)
    if (found <= 0) found = sysconf(_SC_LEVEL3_CACHE_SIZE);
#endif
    return found > 0 ? found : int64_t{32} << 20;
  }();
  return bytes;
}

bool prefer_streaming_stores(int64_t bytes) {
  static const bool enabled = [] {
    const char* value = std::getenv("REPLEARN_STREAMING_STORES");
    return value == nullptr || std::strcmp(value, "0") != 0;
  }();
  return enabled && bytes >= last_level_cache_bytes();
}

namespace {

constexpr int64_t kPage = 4096;

int64_t page_offset(const void* p) { return static_cast<int64_t>(reinterpret_cast<std::uintptr_t>(p) % kPage); }

// (store − load) mod 4096 as a signed distance in (−2048, 2048].
int64_t page_lag(int64_t store_offset, int64_t load_offset) {
  int64_t lag = ((store_offset - load_offset) % kPage + kPage) % kPage;
  return lag > kPage / 2 ? lag - kPage : lag;
}

// Whether a streamed store at this lag past a load is slowed when the loop walks `walk`.
bool slowed(int64_t lag, StoreWalk walk) {
  if (walk == StoreWalk::kUp) return lag >= -kStreamingAliasBehind && lag < kStreamingAliasAhead;
  if (walk == StoreWalk::kDown) return lag <= kStreamingAliasBehind && lag > -kStreamingAliasAhead;
  return false;
}

}  // namespace

StoreWalk streaming_walk(std::initializer_list<const void*> stores, std::initializer_list<const void*> loads) {
  for (const StoreWalk walk : {StoreWalk::kUp, StoreWalk::kDown}) {
    bool clear = true;
    for (const void* store : stores)
      for (const void* load : loads)
        if (store && load && slowed(page_lag(page_offset(store), page_offset(load)), walk)) clear = false;
    if (clear) return walk;
  }
  return StoreWalk::kNormal;
}

int64_t scratch_page_offset(std::initializer_list<const void*> streams, std::initializer_list<const void*> stores,
                            StoreWalk walk) {
  int64_t best = 0, best_distance = -1;
  bool best_clear = false;
  for (int64_t candidate = 0; candidate < kPage; candidate += 64) {
    bool clear = true;
    for (const void* store : stores)
      if (store && slowed(page_lag(page_offset(store), candidate), walk)) clear = false;
    int64_t distance = kPage;
    for (const void* stream : streams)
      if (stream) distance = std::min(distance, std::abs(page_lag(page_offset(stream), candidate)));
    if ((clear && !best_clear) || (clear == best_clear && distance > best_distance)) {
      best = candidate;
      best_distance = distance;
      best_clear = clear;
    }
  }
  return best;
}

void* at_page_offset(void* from, int64_t page_offset_wanted) {
  const int64_t skip = ((page_offset_wanted - page_offset(from)) % kPage + kPage) % kPage;
  return static_cast<char*>(from) + skip;
}

}  // namespace replearn
