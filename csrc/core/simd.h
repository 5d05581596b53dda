// SIMD vectors for CPU kernels whose loops the compiler does not vectorize well by itself.
//
// `Vec<T>` is one register's worth of T on the target the code is compiled for: 64 bytes under
// AVX-512 (16 float32 or 8 float64 lanes), 32 under AVX/AVX2, 16 elsewhere (SSE2, every x86-64),
// written with the GCC/Clang vector extensions so that the code builds for any target. Arithmetic
// between a Vec and a scalar broadcasts the scalar. Used by the selective scan's lanes (ssm/lanes.h),
// lane_sums (core/reduce.h) and the attention kernels' register blocks.
//
// Why the register's width and not a fixed 64 bytes: a 64-byte vector type on an AVX2 target is
// lowered piecewise, and GCC 12 kept such values on the stack between operations and read them back
// through general registers (store-forwarding stalls on every vector): layer_norm's forward at
// 8192×1024 ran at a third of torch's speed on a Zen 3 host (bench/RESULTS.md, "an AVX2 host").
#pragma once

#include <cstdint>
#include <type_traits>

#if defined(__SSE2__)
#include <immintrin.h>
#endif

// Every function here is inline, so the vector-argument ABI note (-Wpsabi) for targets without
// AVX-512 concerns no call across translation units.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"

namespace replearn::simd {

// Bytes in one vector register of the target.
#if defined(__AVX512F__)
constexpr int kVectorBytes = 64;
#elif defined(__AVX__)
constexpr int kVectorBytes = 32;
#else
constexpr int kVectorBytes = 16;
#endif

template <class T>
struct LaneTraits;
template <>
struct LaneTraits<float> {
  typedef float vec __attribute__((vector_size(kVectorBytes)));
  typedef int32_t index __attribute__((vector_size(kVectorBytes)));
};
template <>
struct LaneTraits<double> {
  typedef double vec __attribute__((vector_size(kVectorBytes)));
  typedef int64_t index __attribute__((vector_size(kVectorBytes)));
};
template <class T>
using Vec = typename LaneTraits<T>::vec;
template <class T>
constexpr int kLanes = kVectorBytes / sizeof(T);

// x in every lane (x − 0 folds to a broadcast; 0 + x would not, because of −0).
template <class T>
inline Vec<T> splat(T x) {
  return x - Vec<T>{};
}

// A vector from / to kLanes<T> consecutive values at any alignment.
template <class T>
inline Vec<T> load_unaligned(const T* p) {
  Vec<T> v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
template <class T>
inline void store_unaligned(T* p, Vec<T> v) {
  __builtin_memcpy(p, &v, sizeof v);
}

// Asks for the 64-byte line holding p, for reading, into L2 and the caches above it: for streams the
// hardware prefetcher loses at every jump (runs of a strided layout, as in batch norm's channels).
inline void prefetch_line(const void* p) { __builtin_prefetch(p, 0, 2); }

// A V (Vec<T> or T itself) from p: lets one generic lambda, called with either, serve a loop's
// vector body and its scalar tail (see lane_sums in core/reduce.h and store_lanes below).
template <class V, class T>
inline V load(const T* p) {
  if constexpr (std::is_same_v<V, T>) {
    return *p;
  } else {
    return load_unaligned(p);
  }
}

// A vector to p, aligned to its size, with a streaming (non-temporal) store where the target has one
// (core/memory.h: prefer_streaming_stores says when); an ordinary store elsewhere. Streaming stores
// are weakly ordered: a thread that made them calls streaming_fence() before others read the data.
// The integer forms of the instructions move the vector's bytes whatever T is.
template <class T>
inline void store_streaming(T* p, Vec<T> v) {
#if defined(__AVX512F__)
  _mm512_stream_si512(reinterpret_cast<__m512i*>(p), reinterpret_cast<__m512i&>(v));
#elif defined(__AVX__)
  _mm256_stream_si256(reinterpret_cast<__m256i*>(p), reinterpret_cast<__m256i&>(v));
#elif defined(__SSE2__)  // every x86-64: the portable build
  _mm_stream_si128(reinterpret_cast<__m128i*>(p), reinterpret_cast<__m128i&>(v));
#else
  store_unaligned(p, v);
#endif
}

// Orders this thread's streaming stores before its later stores (and so before a barrier's).
inline void streaming_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

// True when p is 64-byte aligned (streaming stores need it).
template <class T>
inline bool aligned64(const T* p) {
  return reinterpret_cast<std::uintptr_t>(p) % 64 == 0;
}

// Writes v, a V as load<V> reads it (Vec<T> or T), to p: a vector with a streaming store when
// `stream` (p 64-byte aligned; the caller fences), else an ordinary unaligned one; a single element
// with an ordinary store. For loops whose vector body and scalar tail share one generic lambda.
template <class V, class T>
inline void put(T* p, V v, bool stream) {
  if constexpr (std::is_same_v<V, T>) {
    *p = v;
  } else if (stream) {
    store_streaming(p, v);
  } else {
    store_unaligned(p, v);
  }
}

// y[j] = value(j) for j ∈ [0, n): value(j, V*) returns the V (Vec<T> or T) starting at element j,
// reading its inputs with load<V>. With `stream`, the vectors are written with streaming stores from
// y's first 64-byte boundary on (the caller fences, see streaming_fence).
template <class T, class Value>
inline void store_lanes(T* y, int64_t n, bool stream, const Value& value) {
  constexpr int64_t L = kLanes<T>;
  int64_t j = 0;
  if (stream)
    for (; j < n && !aligned64(y + j); ++j) y[j] = value(j, static_cast<T*>(nullptr));
  for (; j + L <= n; j += L) put(y + j, value(j, static_cast<Vec<T>*>(nullptr)), stream);
  for (; j < n; ++j) y[j] = value(j, static_cast<T*>(nullptr));
}

}  // namespace replearn::simd

#pragma GCC diagnostic pop
