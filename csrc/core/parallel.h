// parallel_for: the one way CPU kernels use threads (OpenMP underneath).
//
// The thread count follows torch.get_num_threads(): the Python layer forwards it through
// set_num_threads(). Work is split into at most num_threads() contiguous chunks of at least
// `grain` items; each chunk runs f(chunk, begin, end) exactly once, so per-chunk scratch (partial
// sums for a reduction) can be indexed by `chunk` without atomics. Kernels must not throw inside f:
// every check happens before the parallel region.
#pragma once

#include <algorithm>
#include <cstdint>

namespace replearn {

int num_threads();
void set_num_threads(int n);

// Number of chunks parallel_for(n, grain, f) will use.
inline int parallel_chunk_count(int64_t n, int64_t grain) {
  if (n <= 0) return 0;
  const int64_t by_grain = std::max<int64_t>(1, n / std::max<int64_t>(1, grain));
  return static_cast<int>(std::min<int64_t>(num_threads(), by_grain));
}

namespace detail {
int omp_thread_index();
int omp_team_size();
}

// max_chunks caps the split (a kernel whose scratch holds that many partial results).
template <class F>
void parallel_for(int64_t n, int64_t grain, const F& f, int max_chunks = 1 << 30) {
  const int chunks = std::min(parallel_chunk_count(n, grain), max_chunks);
  if (chunks <= 0) return;
  if (chunks == 1) {
    f(0, int64_t{0}, n);
    return;
  }
#pragma omp parallel num_threads(chunks)
  {
    // The runtime may grant fewer threads than asked (nested regions, OMP_THREAD_LIMIT): stride
    // over chunks so that every chunk still runs exactly once.
    const int team = detail::omp_team_size();
    for (int chunk = detail::omp_thread_index(); chunk < chunks; chunk += team) {
      const int64_t begin = n * chunk / chunks;
      const int64_t end = n * (chunk + 1) / chunks;
      if (begin < end) f(chunk, begin, end);
    }
  }
}

}  // namespace replearn
