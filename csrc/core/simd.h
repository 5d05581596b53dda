// 64-byte SIMD vectors for CPU kernels whose loops the compiler does not vectorize well by itself.
//
// `Vec<T>` is one 64-byte register's worth of T (16 float32 or 8 float64 lanes), written with the
// GCC/Clang vector extensions: the code builds for any target and compiles to AVX-512 under
// -march=native (two AVX2 registers elsewhere). Arithmetic between a Vec and a scalar broadcasts
// the scalar. Used by the selective scan's lanes (ssm/lanes.h) and by lane_sums (core/reduce.h).
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

template <class T>
struct LaneTraits;
template <>
struct LaneTraits<float> {
  typedef float vec __attribute__((vector_size(64)));
  typedef int32_t index __attribute__((vector_size(64)));
};
template <>
struct LaneTraits<double> {
  typedef double vec __attribute__((vector_size(64)));
  typedef int64_t index __attribute__((vector_size(64)));
};
template <class T>
using Vec = typename LaneTraits<T>::vec;
template <class T>
constexpr int kLanes = 64 / sizeof(T);

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

// A vector to 64-byte-aligned p with a streaming (non-temporal) store where the target has one
// (core/memory.h: prefer_streaming_stores says when); an ordinary store elsewhere. Streaming stores
// are weakly ordered: a thread that made them calls streaming_fence() before others read the data.
inline void store_streaming(float* p, Vec<float> v) {
#if defined(__AVX512F__)
  _mm512_stream_ps(p, __m512(v));
#elif defined(__AVX__)
  _mm256_stream_ps(p, _mm256_loadu_ps(reinterpret_cast<const float*>(&v)));
  _mm256_stream_ps(p + 8, _mm256_loadu_ps(reinterpret_cast<const float*>(&v) + 8));
#elif defined(__SSE2__)  // every x86-64: the portable build
  for (int i = 0; i < 16; i += 4) _mm_stream_ps(p + i, _mm_loadu_ps(reinterpret_cast<const float*>(&v) + i));
#else
  store_unaligned(p, v);
#endif
}
inline void store_streaming(double* p, Vec<double> v) {
#if defined(__AVX512F__)
  _mm512_stream_pd(p, __m512d(v));
#elif defined(__AVX__)
  _mm256_stream_pd(p, _mm256_loadu_pd(reinterpret_cast<const double*>(&v)));
  _mm256_stream_pd(p + 4, _mm256_loadu_pd(reinterpret_cast<const double*>(&v) + 4));
#elif defined(__SSE2__)
  for (int i = 0; i < 8; i += 2) _mm_stream_pd(p + i, _mm_loadu_pd(reinterpret_cast<const double*>(&v) + i));
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

// y[j] = value(j) for j ∈ [0, n): value(j, V*) returns the V (Vec<T> or T) starting at element j,
// reading its inputs with load<V>. With `stream`, the vectors are written with streaming stores from
// y's first 64-byte boundary on (the caller fences, see streaming_fence).
template <class T, class Value>
inline void store_lanes(T* y, int64_t n, bool stream, const Value& value) {
  constexpr int64_t L = kLanes<T>;
  int64_t j = 0;
  if (stream) {
    for (; j < n && !aligned64(y + j); ++j) y[j] = value(j, static_cast<T*>(nullptr));
    for (; j + L <= n; j += L) store_streaming(y + j, value(j, static_cast<Vec<T>*>(nullptr)));
  } else {
    for (; j + L <= n; j += L) store_unaligned(y + j, value(j, static_cast<Vec<T>*>(nullptr)));
  }
  for (; j < n; ++j) y[j] = value(j, static_cast<T*>(nullptr));
}

// Writes v, a V as load<V> reads it, to p: a vector with a streaming store (p 64-byte aligned), a
// single element with an ordinary one. For loops that store as a side effect of another loop's
// vector/scalar calls (batch norm's fused passes); the caller fences.
template <class V, class T>
inline void put_streaming(T* p, V v) {
  if constexpr (std::is_same_v<V, T>) {
    *p = v;
  } else {
    store_streaming(p, v);
  }
}

}  // namespace replearn::simd

#pragma GCC diagnostic pop
