#include "core/memory.h"

#include <cstdlib>
#include <cstring>

#if defined(__linux__)
#include <sys/mman.h>
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

}  // namespace replearn
