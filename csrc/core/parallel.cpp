#include "core/parallel.h"

#include <omp.h>

#include <atomic>

namespace replearn {

static std::atomic<int> g_num_threads{0};

int num_threads() {
  const int n = g_num_threads.load(std::memory_order_relaxed);
  return n > 0 ? n : omp_get_max_threads();
}

void set_num_threads(int n) { g_num_threads.store(n > 0 ? n : 0, std::memory_order_relaxed); }

namespace detail {
int omp_thread_index() { return omp_get_thread_num(); }
int omp_team_size() { return omp_get_num_threads(); }
}  // namespace detail

}  // namespace replearn
