// State-space family, CPU kernels (float32 and float64). The formulas are in ssm.h.
//
// Selective scan. The recurrence is sequential in time but independent across (batch, channel) and
// across the N states of a channel. The kernels run kLanes<T> channels of one (batch, group) at once,
// one per SIMD lane (lanes.h), with the N states as N independent vector chains; Δ and u are
// transposed to (step, lane) tiles (the forward a span of up to 16 chunks at once, the backward one
// chunk of kScanChunk steps), while a selective B_t[n], C_t[n] (one value for the whole block) is
// broadcast from a per-chunk copy of its (N, L) rows. Each (state, step) costs one vector exp
// (`exp_lanes`, lanes.h) and three FMAs for all lanes. The forward saves the state at each chunk's
// end (ssm.h).
//
// Backward (adjoint of the recurrence, g_t = ∂L/∂h_t, with ḡ_t = dy_t·C_t + Ā_{t+1}⊙ḡ_{t+1}):
//   dC_t += dy_t·h_t,  dΔ_t = Σ_n g·(Ā·A·h_{t−1} + B·u),  dA += g·Ā·h_{t−1}·Δ,
//   dB_t += g·Δ·u,     du_t = D·dy_t + Δ·Σ_n g·B,           dD += dy·u,
// with dy = dout·silu(z), dz = dout·y·σ(z)·(1 + z·(1 − σ(z))), and dδ = dΔ·σ(δ + bias) under softplus.
// Chunks are visited last to first; each restarts from the previous chunk's checkpoint and recomputes
// its states and Ā into (T + 1, N) and (T, N) tiles of lanes, through which the adjoint runs
// backwards. Selective dB_t, dC_t sum over the group's channels, i.e. over lanes: per step the N
// lane vectors are summed by a transposing tree (`sum_lanes`) into the item's (L, N) partial.
// Parameter gradients that sum over batch (dA, dD, dδ_bias, time-invariant dB/dC) and over a group's
// slices (selective dB/dC) go to per-channel / per-item partials in the workspace, added in a fixed
// order afterwards: deterministic for a fixed thread count, no atomics.
#include <algorithm>
#include <cmath>
#include <complex>
#include <cstring>
#include <vector>

#include "core/check.h"
#include "core/dispatch.h"
#include "core/memory.h"
#include "core/parallel.h"
#include "ssm/lanes.h"
#include "ssm/ssm.h"

namespace replearn::ssm {

namespace {

template <class T>
T* ptr_or_null(const OptView& v) {
  return v ? v->data_as<T>() : nullptr;
}

// σ(x) for the backward's row loops (vectorizable).
template <class T>
T sigmoid(T x) {
  return T(1) / (T(1) + exp_approx(-x));
}

// --------------------------------------------------------------------------------- selective scan
//
// Lanes are channels. A block is up to kLanes<T> consecutive channels of one (batch, group), one per
// lane (16 float32 lanes under AVX-512), and its N states are N vectors: every (state, step) is one
// vector exp and three FMAs for 16 channels at once, the N states' recurrences are independent
// chains that overlap, and nothing is reduced across lanes in the forward. Blocks never straddle a
// group, so a selective B_t[n] / C_t[n] is one value broadcast to the block (BlockInputs), while Δ,
// u, A, D, and time-invariant B/C differ per lane. Δ and u are transposed to (step, lane) tiles, the
// softplus taken on the tiles (whole vectors), and the output transposed back.

// The forward stages a span of up to kScanSpan steps at a time (16 chunks: Δ, u and y tiles of 64 KiB
// each in float32, in L2): the block's rows are then read and written in runs of up to 4 KiB,
// which the hardware prefetchers stream far better than one 256-byte piece of each of 16 rows per
// 64-step chunk (one core of this machine's EPYC read 16 rows tile by tile at 5-8 GB/s, row after
// row at up to 28 GB/s; spans cut the forward's transposes from 10.0 to 6.0 M TSC ticks).
constexpr int64_t kScanSpan = 16 * kScanChunk;

// Items: (batch, group, slice of the group's blocks); `slices` splits a group so there are about as
// many items as threads even for one batch and one group.
int64_t desired_slices(const ScanDims& d) {
  const int64_t per_group = d.dim / d.groups;
  const int64_t items = std::max<int64_t>(1, d.batch * d.groups);  // empty inputs never get here; no 0 / 0
  const int64_t by_threads = (num_threads() + items - 1) / items;
  return std::max<int64_t>(1, std::min(per_group, by_threads));
}

// Workspace (in elements of the compute type): per (batch, channel) partials [dA (N), dB (N), dC (N),
// dD, dδ_bias] followed by per-item partials of the selective dB, dC ((L, N) each).
int64_t channel_partials(const ScanDims& d) { return 3 * d.states + 2; }
int64_t item_partials(const ScanDims& d) {
  return (int64_t(d.selective_B) + int64_t(d.selective_C)) * d.states * d.length;
}
int64_t scan_workspace_elements(const ScanDims& d, int64_t slices) {
  return d.batch * d.dim * channel_partials(d) + d.batch * d.groups * slices * item_partials(d);
}

template <class T>
struct ScanArgs {
  const T *u, *delta, *A, *B, *C, *D, *z, *bias;
  bool softplus;
  ScanDims d;
};

// rows (count rows of len values, `stride` apart) → lanes[t][row]; lanes ≥ count are zero, so they
// carry no input and add nothing to the parameter gradients. Whole kLanes × kLanes tiles go through
// transpose_lanes, the rest element by element.
template <class T>
void to_lanes(const T* rows, int64_t stride, int64_t count, int64_t len, Vec<T>* lanes) {
  constexpr int64_t W = kLanes<T>;
  const int64_t whole = count == W ? len / W * W : 0;
  for (int64_t lane = 0; lane < (whole ? W : 0); ++lane)
    for (int64_t t = 0; t < whole; t += W) lanes[t + lane] = load_unaligned(rows + lane * stride + t);
  for (int64_t t = 0; t < whole; t += W) transpose_lanes<T>(lanes + t);
  std::fill(lanes + whole, lanes + len, Vec<T>{});
  for (int64_t lane = 0; lane < count; ++lane)
    for (int64_t t = whole; t < len; ++t) lanes[t][lane] = rows[lane * stride + t];
}
template <class T>
void from_lanes(Vec<T>* lanes, int64_t count, int64_t len, T* rows, int64_t stride) {
  constexpr int64_t W = kLanes<T>;
  const int64_t whole = count == W ? len / W * W : 0;
  for (int64_t t = 0; t < whole; t += W) transpose_lanes<T>(lanes + t);
  for (int64_t lane = 0; lane < (whole ? W : 0); ++lane)
    for (int64_t t = 0; t < whole; t += W) store_unaligned(rows + lane * stride + t, lanes[t + lane]);
  for (int64_t lane = 0; lane < count; ++lane)
    for (int64_t t = whole; t < len; ++t) rows[lane * stride + t] = lanes[t][lane];
}

// A row of n values as vectors: f(t, count) for t = 0, W, 2W, … with count = min(W, n − t); the
// last, partial vector goes through load_partial / store_partial (zero-filled lanes).
template <class T>
Vec<T> load_partial(const T* p, int64_t count) {
  if (count == kLanes<T>) return load_unaligned(p);
  Vec<T> v{};
  std::memcpy(&v, p, count * sizeof(T));
  return v;
}
template <class T>
void store_partial(T* p, Vec<T> v, int64_t count) {
  if (count == kLanes<T>) store_unaligned(p, v);
  else std::memcpy(p, &v, count * sizeof(T));
}
template <class T, class F>
void for_row_vectors(int64_t n, const F& f) {
  for (int64_t t = 0; t < n; t += kLanes<T>) f(t, std::min<int64_t>(kLanes<T>, n - t));
}

// N rounded up to whole vectors of lanes.
template <class T>
int64_t padded_states(int64_t N) {
  return (N + kLanes<T> - 1) / kLanes<T> * kLanes<T>;
}

// One thread's tiles (vectors of lanes). Forward: the per-lane constants, the state, a chunk's Δ, u,
// y. Backward adds the chunk's Ā and states, the adjoint, and the gradient accumulators.
template <class T>
struct ScanTiles {
  using V = Vec<T>;
  std::vector<V> A, B, C, h, dt, u, y;  // (N) (N) (N) (N) (T) (T) (T)
  V D{}, bias{};
  std::vector<T> rows;  // (lanes, T) staging for transposes
  std::vector<T> B_chunk, C_chunk;  // (N, T) a chunk of the selective B, C (BlockInputs)
  // (T·N) ((T+1)·N) (T) (T) (T) (N)×4; products: selective dB then dC terms of a step, N each, padded to
  // whole vectors of lanes (sum_lanes zeroes the padding)
  std::vector<V> Abar, H, dy, du, ddt, carry, dA, dB, dC, products;
  // Σ dy·u (dD) and Σ dδ (dδ_bias) over the sequence, per lane in double: summed in T along the
  // steps they reached 10x torch's error (pairwise sums) at 140 terms.
  double dD_total[kLanes<T>], dbias_total[kLanes<T>];
  ScanTiles(int64_t N, bool backward)
      : A(N), B(N), C(N), h(N), dt(backward ? kScanChunk : kScanSpan), u(dt.size()), y(dt.size()),
        rows(kLanes<T> * kScanChunk), B_chunk(N * kScanChunk), C_chunk(N * kScanChunk) {
    if (!backward) return;
    for (auto* v : {&dy, &du, &ddt}) v->resize(kScanChunk);
    for (auto* v : {&carry, &dA, &dB, &dC}) v->resize(N);
    Abar.resize(kScanChunk * N);
    H.resize((kScanChunk + 1) * N);
    products.resize(2 * padded_states<T>(N));
  }
};

// A block: channels [first, first + count) of batch element b and group g.
struct ScanBlock {
  int64_t b, g, first, count;
};

template <class T>
void load_lane_constants(const ScanArgs<T>& a, const ScanBlock& k, ScanTiles<T>& s) {
  const int64_t N = a.d.states;
  for (auto* v : {&s.A, &s.B, &s.C}) std::fill(v->begin(), v->end(), Vec<T>{});
  s.D = s.bias = Vec<T>{};
  for (int64_t lane = 0; lane < k.count; ++lane) {
    const int64_t ch = k.first + lane;
    for (int64_t n = 0; n < N; ++n) {
      s.A[n][lane] = a.A[ch * N + n];
      if (!a.d.selective_B) s.B[n][lane] = a.B[ch * N + n];
      if (!a.d.selective_C) s.C[n][lane] = a.C[ch * N + n];
    }
    s.D[lane] = a.D ? a.D[ch] : T(0);
    s.bias[lane] = a.bias ? a.bias[ch] : T(0);
  }
}

// Δ and u of the block's chunk as lanes. Δ = softplus(δ + bias) is taken after the transpose, on
// whole vectors of lanes (padding lanes get softplus(bias = 0), harmless: their u and state are 0).
template <class T>
void load_lane_inputs(const ScanArgs<T>& a, const ScanBlock& k, int64_t t0, int64_t len, ScanTiles<T>& s) {
  const int64_t row0 = k.b * a.d.dim + k.first, L = a.d.length;
  to_lanes(a.delta + row0 * L + t0, L, k.count, len, s.dt.data());
  to_lanes(a.u + row0 * L + t0, L, k.count, len, s.u.data());
  Vec<T>* __restrict__ dt = s.dt.data();
  if (a.softplus)
    for (int64_t t = 0; t < len; ++t) dt[t] = softplus_lanes(dt[t] + s.bias);
  else if (a.bias)
    for (int64_t t = 0; t < len; ++t) dt[t] += s.bias;
}

// B_t[n] (C_t[n]) for the block's chunk (t counted from the chunk's start): the selective value
// broadcast, or the lane's own row. A selective matrix's chunk is first copied to (N, kScanChunk)
// rows of the tiles: its (N, L) rows lie L apart, and with L a multiple of 1024 all 2N values a
// step reads fall in one L1 set and evict each other (the copy took 18% off the forward's
// recurrence at L = 1024, 13% at L = 1000).
template <class T, bool Selective>
struct InputMatrix {
  const T* row;  // selective: the chunk's (N, kScanChunk) copy
  const Vec<T>* lanes;
  Vec<T> at(int64_t n, int64_t t) const {
    if constexpr (Selective) return splat(row[n * kScanChunk + t]);
    else return lanes[n];
  }
};
template <class T, bool SelB, bool SelC>
struct BlockInputs {
  InputMatrix<T, SelB> B;
  InputMatrix<T, SelC> C;
  BlockInputs(const ScanArgs<T>& a, const ScanBlock& k, ScanTiles<T>& s, int64_t t0, int64_t len) {
    const ScanDims& d = a.d;
    const int64_t offset = (k.b * d.groups + k.g) * d.states * d.length + t0;
    B = {SelB ? stage(a.B + offset, d, len, s.B_chunk.data()) : nullptr, s.B.data()};
    C = {SelC ? stage(a.C + offset, d, len, s.C_chunk.data()) : nullptr, s.C.data()};
  }
  static const T* stage(const T* rows, const ScanDims& d, int64_t len, T* chunk) {
    for (int64_t n = 0; n < d.states; ++n) std::copy(rows + n * d.length, rows + n * d.length + len, chunk + n * kScanChunk);
    return chunk;
  }
};

template <class T, bool SelB, bool SelC>
void scan_forward_block(const ScanArgs<T>& a, const ScanBlock& k, T* out, T* checkpoints, ScanTiles<T>& s) {
  using V = Vec<T>;
  const ScanDims& d = a.d;
  const int64_t N = d.states, L = d.length, chunks = scan_chunks(L), row0 = k.b * d.dim + k.first;
  load_lane_constants(a, k, s);
  std::fill(s.h.begin(), s.h.end(), V{});
  V* __restrict__ h = s.h.data();
  const V* __restrict__ A = s.A.data();
  for (int64_t s0 = 0; s0 < L; s0 += kScanSpan) {
    const int64_t span = std::min(kScanSpan, L - s0);
    load_lane_inputs(a, k, s0, span, s);
    for (int64_t t0 = 0; t0 < span; t0 += kScanChunk) {
      const int64_t len = std::min(kScanChunk, span - t0);
      const BlockInputs<T, SelB, SelC> in(a, k, s, s0 + t0, len);
      for (int64_t t = 0; t < len; ++t) {
        const V dt = s.dt[t0 + t], u = s.u[t0 + t], du = dt * u;
        V y = s.D * u;
        for (int64_t n = 0; n < N; ++n) {
          h[n] = exp_lanes(dt * A[n]) * h[n] + du * in.B.at(n, t);
          y += in.C.at(n, t) * h[n];
        }
        s.y[t0 + t] = y;
      }
      if (checkpoints) {
        const int64_t c = (s0 + t0) / kScanChunk;
        for (int64_t lane = 0; lane < k.count; ++lane)
          for (int64_t n = 0; n < N; ++n) checkpoints[((row0 + lane) * chunks + c) * N + n] = h[n][lane];
      }
    }
    from_lanes(s.y.data(), k.count, span, out + row0 * L + s0, L);
    if (a.z)  // the gate y·silu(z), along each row of the span just written
      for (int64_t lane = 0; lane < k.count; ++lane) {
        const T* z = a.z + (row0 + lane) * L + s0;
        T* y = out + (row0 + lane) * L + s0;
        for_row_vectors<T>(span, [&](int64_t t, int64_t n) {
          const V zv = load_partial(z + t, n);
          store_partial(y + t, load_partial(y + t, n) * zv * sigmoid_lanes(zv), n);
        });
      }
  }
}

// Calls f(std::bool_constant<selective B>, std::bool_constant<selective C>).
template <class F>
void dispatch_selective(const ScanDims& d, const F& f) {
  if (d.selective_B && d.selective_C) f(std::true_type{}, std::true_type{});
  else if (d.selective_B) f(std::true_type{}, std::false_type{});
  else if (d.selective_C) f(std::false_type{}, std::true_type{});
  else f(std::false_type{}, std::false_type{});
}

// Runs f(item, block, tiles) for every block of every (batch, group, slice) item, items in parallel;
// each thread allocates its tiles once.
template <class T, class F>
void for_each_scan_block(const ScanDims& d, int64_t slices, bool backward, const F& f) {
  const int64_t per_group = d.dim / d.groups, blocks = (per_group + kLanes<T> - 1) / kLanes<T>;
  parallel_for(d.batch * d.groups * slices, 1, [&](int, int64_t i0, int64_t i1) {
    ScanTiles<T> tiles(d.states, backward);
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t s = i % slices, bg = i / slices, g = bg % d.groups, b = bg / d.groups;
      for (int64_t blk = blocks * s / slices; blk < blocks * (s + 1) / slices; ++blk) {
        const int64_t first = blk * kLanes<T>;
        f(i, ScanBlock{b, g, g * per_group + first, std::min<int64_t>(kLanes<T>, per_group - first)}, tiles);
      }
    }
  });
}

template <class T>
void scan_forward(const ScanArgs<T>& a, T* out, T* checkpoints) {
  dispatch_selective(a.d, [&](auto sel_B, auto sel_C) {
    for_each_scan_block<T>(a.d, desired_slices(a.d), false, [&](int64_t, const ScanBlock& k, ScanTiles<T>& s) {
      scan_forward_block<T, sel_B(), sel_C()>(a, k, out, checkpoints, s);
    });
  });
}

template <class T>
struct ScanGrads {
  const T* grad_out;
  const T* checkpoints;
  const T* grad_last_state;  // (batch·dim, N) or null
  T *du, *ddelta, *dz;
  T* channel;  // (batch·dim, channel_partials)
  T* item;     // (items, item_partials)
};

// Adds the lane sums of N vectors to out[0..N).
template <class T>
void add_lane_sums(Vec<T>* products, int64_t N, T* __restrict__ out) {
  for (int64_t n0 = 0; n0 < N; n0 += kLanes<T>) {
    const int count = static_cast<int>(std::min<int64_t>(kLanes<T>, N - n0));
    const Vec<T> sums = sum_lanes<T>(products + n0, count);
    for (int i = 0; i < count; ++i) out[n0 + i] += sums[i];
  }
}

template <class T, bool SelB, bool SelC>
void scan_backward_block(const ScanArgs<T>& a, const ScanGrads<T>& gr, const ScanBlock& k, T* dB_item, T* dC_item,
                         ScanTiles<T>& s) {
  using V = Vec<T>;
  const ScanDims& d = a.d;
  const int64_t N = d.states, L = d.length, chunks = scan_chunks(L), row0 = k.b * d.dim + k.first;
  load_lane_constants(a, k, s);
  for (auto* v : {&s.carry, &s.dA, &s.dB, &s.dC}) std::fill(v->begin(), v->end(), V{});
  std::fill(s.dD_total, s.dD_total + kLanes<T>, 0.0);
  std::fill(s.dbias_total, s.dbias_total + kLanes<T>, 0.0);
  if (gr.grad_last_state)  // the adjoint of the final state seeds the reverse recurrence
    for (int64_t lane = 0; lane < k.count; ++lane)
      for (int64_t n = 0; n < N; ++n) s.carry[n][lane] = gr.grad_last_state[(row0 + lane) * N + n];
  const V* __restrict__ A = s.A.data();
  V* __restrict__ Abar = s.Abar.data();
  V* __restrict__ H = s.H.data();
  V* __restrict__ carry = s.carry.data();
  V* __restrict__ dA = s.dA.data();
  V* __restrict__ dB = s.dB.data();
  V* __restrict__ dC = s.dC.data();
  V* __restrict__ pB = s.products.data();
  V* __restrict__ pC = s.products.data() + padded_states<T>(N);
  T* rows = s.rows.data();
  for (int64_t c = chunks - 1; c >= 0; --c) {
    const int64_t t0 = c * kScanChunk, len = std::min(kScanChunk, L - t0);
    load_lane_inputs(a, k, t0, len, s);
    const BlockInputs<T, SelB, SelC> in(a, k, s, t0, len);
    // Recompute the chunk's states from the previous checkpoint (H[t + 1] = h_{t0 + t}), its Ā and y.
    std::fill(H, H + N, V{});
    if (c > 0)
      for (int64_t lane = 0; lane < k.count; ++lane)
        for (int64_t n = 0; n < N; ++n) H[n][lane] = gr.checkpoints[((row0 + lane) * chunks + c - 1) * N + n];
    for (int64_t t = 0; t < len; ++t) {
      const V dt = s.dt[t], u = s.u[t], du = dt * u;
      V y = s.D * u;
      for (int64_t n = 0; n < N; ++n) {
        const V e = exp_lanes(dt * A[n]);
        Abar[t * N + n] = e;
        const V hn = e * H[t * N + n] + du * in.B.at(n, t);
        H[(t + 1) * N + n] = hn;
        y += in.C.at(n, t) * hn;
      }
      s.y[t] = y;
    }
    // dy = dout·silu(z) and dz = dout·y·σ(z)·(1 + z·(1 − σ(z))), per channel along time.
    const T* gout = gr.grad_out + row0 * L + t0;
    if (a.z) {
      from_lanes(s.y.data(), k.count, len, rows, kScanChunk);
      for (int64_t lane = 0; lane < k.count; ++lane) {
        const T* __restrict__ z = a.z + (row0 + lane) * L + t0;
        const T* __restrict__ go = gout + lane * L;
        T* __restrict__ dz = gr.dz + (row0 + lane) * L + t0;
        T* __restrict__ yr = rows + lane * kScanChunk;
#pragma omp simd
        for (int64_t t = 0; t < len; ++t) {
          const T sg = sigmoid(z[t]);
          dz[t] = go[t] * yr[t] * sg * (T(1) + z[t] * (T(1) - sg));
          yr[t] = go[t] * z[t] * sg;
        }
      }
      to_lanes(rows, kScanChunk, k.count, len, s.dy.data());
    } else {
      to_lanes(gout, L, k.count, len, s.dy.data());
    }
    // The adjoint backwards through the chunk (formulas at the top of this file).
    for (int64_t t = len - 1; t >= 0; --t) {
      const V dy = s.dy[t], dt = s.dt[t], u = s.u[t], du = dt * u;
      V sA{}, sB{};
      for (int64_t n = 0; n < N; ++n) {
        const V e = Abar[t * N + n], hn = H[(t + 1) * N + n], bn = in.B.at(n, t);
        const V g = dy * in.C.at(n, t) + carry[n];
        if constexpr (SelC) pC[n] = dy * hn;
        else dC[n] += dy * hn;
        const V w = g * e * H[t * N + n];
        sA += w * A[n];
        dA[n] += w * dt;
        sB += g * bn;
        if constexpr (SelB) pB[n] = g * du;
        else dB[n] += g * du;
        carry[n] = e * g;
      }
      s.du[t] = dy * s.D + dt * sB;
      s.ddt[t] = sA + u * sB;
      const V dyu = dy * u;
      for (int lane = 0; lane < kLanes<T>; ++lane) s.dD_total[lane] += static_cast<double>(dyu[lane]);
      if constexpr (SelB) add_lane_sums(pB, N, dB_item + (t0 + t) * N);
      if constexpr (SelC) add_lane_sums(pC, N, dC_item + (t0 + t) * N);
    }
    from_lanes(s.du.data(), k.count, len, gr.du + row0 * L + t0, L);
    // dδ = dΔ·σ(δ + bias) under softplus (1 above torch's threshold 20), and its sum for dδ_bias.
    from_lanes(s.ddt.data(), k.count, len, gr.ddelta + row0 * L + t0, L);
    for (int64_t lane = 0; lane < k.count; ++lane) {
      T* __restrict__ dd = gr.ddelta + (row0 + lane) * L + t0;
      if (a.softplus) {
        const T* __restrict__ delta = a.delta + (row0 + lane) * L + t0;
        const T bias = a.bias ? a.bias[k.first + lane] : T(0);
#pragma omp simd
        for (int64_t t = 0; t < len; ++t) {
          const T pre = delta[t] + bias;
          dd[t] *= pre > T(20) ? T(1) : sigmoid(pre);
        }
      }
      double sum = 0;
#pragma omp simd reduction(+ : sum)
      for (int64_t t = 0; t < len; ++t) sum += dd[t];
      s.dbias_total[lane] += sum;
    }
  }
  const int64_t P = channel_partials(d);
  for (int64_t lane = 0; lane < k.count; ++lane) {
    T* part = gr.channel + (row0 + lane) * P;  // dA (N), dB (N), dC (N), dD, dδ_bias
    for (int64_t n = 0; n < N; ++n) {
      part[n] = dA[n][lane];
      part[N + n] = dB[n][lane];
      part[2 * N + n] = dC[n][lane];
    }
    part[3 * N] = static_cast<T>(s.dD_total[lane]);
    part[3 * N + 1] = static_cast<T>(s.dbias_total[lane]);
  }
}

template <class T>
void scan_backward(const ScanArgs<T>& a, const ScanGrads<T>& gr, int64_t slices, T* dA, T* dB, T* dC, T* dD,
                   T* dbias) {
  const ScanDims& d = a.d;
  const int64_t N = d.states, L = d.length, P = channel_partials(d), IP = item_partials(d);
  std::fill(gr.item, gr.item + d.batch * d.groups * slices * IP, T(0));
  dispatch_selective(d, [&](auto sel_B, auto sel_C) {
    for_each_scan_block<T>(d, slices, true, [&](int64_t i, const ScanBlock& k, ScanTiles<T>& s) {
      T* item = gr.item + i * IP;
      scan_backward_block<T, sel_B(), sel_C()>(a, gr, k, item, item + (sel_B() ? N * L : 0), s);
    });
  });
  // Sums over batch of the per-channel partials, in batch order.
  parallel_for(d.dim, 64, [&](int, int64_t c0, int64_t c1) {
    for (int64_t ch = c0; ch < c1; ++ch) {
      for (int64_t k = 0; k < P; ++k) {
        T s = 0;
        for (int64_t b = 0; b < d.batch; ++b) s += gr.channel[(b * d.dim + ch) * P + k];
        if (k < N) dA[ch * N + k] = s;
        else if (k < 2 * N) { if (!d.selective_B) dB[ch * N + k - N] = s; }
        else if (k < 3 * N) { if (!d.selective_C) dC[ch * N + k - 2 * N] = s; }
        else if (k == 3 * N) { if (dD) dD[ch] = s; }
        else if (dbias) dbias[ch] = s;
      }
    }
  });
  // Selective dB, dC: the group's slices summed in slice order, (L, N) → (N, L).
  if (IP) {
    parallel_for(d.batch * d.groups, 1, [&](int, int64_t bg0, int64_t bg1) {
      for (int64_t bg = bg0; bg < bg1; ++bg) {
        const T* first = gr.item + bg * slices * IP;
        int64_t offset = 0;
        for (T* out : {d.selective_B ? dB : nullptr, d.selective_C ? dC : nullptr}) {
          if (!out) continue;
          T* o = out + bg * N * L;
          for (int64_t t = 0; t < L; ++t)
            for (int64_t n = 0; n < N; ++n) {
              T s = 0;
              for (int64_t sl = 0; sl < slices; ++sl) s += first[sl * IP + offset + t * N + n];
              o[n * L + t] = s;
            }
          offset += N * L;
        }
      }
    });
  }
}

// ---------------------------------------------------------------------------------- causal conv1d

// x̃[i] for i in [−(W−1), L): the initial state (or zero) before the sequence.
template <class T>
struct PaddedRow {
  const T* x;
  const T* init;  // (W − 1) or null
  int64_t W;
  T at(int64_t i) const { return i >= 0 ? x[i] : (init ? init[W - 1 + i] : T(0)); }
};

template <class T>
T silu(T v) {
  return v / (T(1) + exp_approx(-v));
}

template <class T>
void conv_forward_row(PaddedRow<T> row, const T* __restrict__ w, T bias, int64_t L, bool act, T* __restrict__ y) {
  const int64_t W = row.W, head = std::min(L, W - 1);
  for (int64_t t = 0; t < head; ++t) {  // outputs that reach into the initial state
    T acc = bias;
    for (int64_t k = 0; k < W; ++k) acc += w[k] * row.at(t - (W - 1) + k);
    y[t] = acc;
  }
  const T* __restrict__ x = row.x;
  const T w0 = w[0], w1 = w[1], w2 = W > 2 ? w[2] : T(0), w3 = W > 3 ? w[3] : T(0);
  // y[t] = bias + Σ_k w[k]·x[t − (W − 1) + k]; the missing taps of narrower kernels weigh zero.
  const int64_t s = W - 1;
#pragma omp simd
  for (int64_t t = head; t < L; ++t) {
    T acc = bias + w0 * x[t - s] + w1 * x[t - s + 1];
    if (W > 2) acc += w2 * x[t - s + 2];
    if (W > 3) acc += w3 * x[t - s + 3];
    y[t] = acc;
  }
  if (act) {
#pragma omp simd
    for (int64_t t = 0; t < L; ++t) y[t] = silu(y[t]);
  }
}

template <class T>
void conv_forward(const T* x, const T* w, const T* bias, const T* init, bool act, ConvDims d, T* y, T* final_state) {
  const int64_t W = d.width, L = d.length;
  parallel_for(d.batch * d.dim, std::max<int64_t>(1, 8192 / std::max<int64_t>(1, L)), [&](int, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t ch = r % d.dim;
      const PaddedRow<T> row{x + r * L, init ? init + r * (W - 1) : nullptr, W};
      conv_forward_row(row, w + ch * W, bias ? bias[ch] : T(0), L, act, y + r * L);
      if (final_state)
        for (int64_t j = 0; j < W - 1; ++j) final_state[r * (W - 1) + j] = row.at(L - (W - 1) + j);
    }
  });
}

template <class T>
void conv_backward(const T* dy, const T* dfinal, const T* x, const T* w, const T* bias, const T* init, bool act,
                   ConvDims d, T* dx,
                   T* dw, T* dbias, T* dinit, double* partials) {
  const int64_t W = d.width, L = d.length, P = W + 1;
  parallel_for(d.batch * d.dim, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, L)), [&](int, int64_t r0, int64_t r1) {
    std::vector<T> g(L);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t ch = r % d.dim;
      const PaddedRow<T> row{x + r * L, init ? init + r * (W - 1) : nullptr, W};
      const T* wr = w + ch * W;
      // g = ∂L/∂(pre-activation)
      if (act) {
        conv_forward_row(row, wr, bias ? bias[ch] : T(0), L, false, g.data());
        const T* __restrict__ go = dy + r * L;
#pragma omp simd
        for (int64_t t = 0; t < L; ++t) {
          const T s = T(1) / (T(1) + exp_approx(-g[t]));
          g[t] = go[t] * s * (T(1) + g[t] * (T(1) - s));
        }
      } else {
        std::copy(dy + r * L, dy + (r + 1) * L, g.begin());
      }
      // dx̃[p] = Σ_k w[k]·g[p − k] over 0 ≤ p − k < L, p the index into x̃ (x starts at W − 1).
      T* __restrict__ dxr = dx + r * L;
      for (int64_t i = 0; i < L; ++i) {
        const int64_t p = i + W - 1;
        T acc = 0;
        for (int64_t k = 0; k < W; ++k)
          if (p - k < L) acc += wr[k] * g[p - k];
        dxr[i] = acc;
      }
      if (dinit)
        for (int64_t j = 0; j < W - 1; ++j) {
          T acc = 0;
          for (int64_t k = 0; k <= j; ++k)
            if (j - k < L) acc += wr[k] * g[j - k];
          dinit[r * (W - 1) + j] = acc;
        }
      if (dfinal)  // final_state[j] = x̃[L + j], i.e. x[L + j − (W − 1)] or the initial state before it
        for (int64_t j = 0; j < W - 1; ++j) {
          const int64_t i = L + j - (W - 1);
          if (i >= 0) dxr[i] += dfinal[r * (W - 1) + j];
          else if (dinit) dinit[r * (W - 1) + W - 1 + i] += dfinal[r * (W - 1) + j];
        }
      double* part = partials + r * P;
      for (int64_t k = 0; k < W; ++k) {
        double acc = 0;
        const int64_t shift = k - (W - 1);  // x̃ index of tap k at output t is t + shift
        for (int64_t t = 0; t < std::min<int64_t>(L, -shift); ++t) acc += double(g[t]) * row.at(t + shift);
        const T* __restrict__ xs = row.x;
#pragma omp simd reduction(+ : acc)
        for (int64_t t = std::max<int64_t>(0, -shift); t < L; ++t) acc += double(g[t]) * xs[t + shift];
        part[k] = acc;
      }
      double sum = 0;
#pragma omp simd reduction(+ : sum)
      for (int64_t t = 0; t < L; ++t) sum += g[t];
      part[W] = sum;
    }
  });
  for (int64_t ch = 0; ch < d.dim; ++ch)
    for (int64_t k = 0; k < P; ++k) {
      double s = 0;
      for (int64_t b = 0; b < d.batch; ++b) s += partials[(b * d.dim + ch) * P + k];
      if (k < W) dw[ch * W + k] = static_cast<T>(s);
      else if (dbias) dbias[ch] = static_cast<T>(s);
    }
}

// ------------------------------------------------------------------------------------ S4D kernel
//
// Per channel h and state n (complex): a = Δ·A, E = e^a, C' = C·(E − 1)/A;  K[l] = 2·Re Σ_n C'·e^{l·a}.
// Backward with δx = ∂L/∂x for holomorphic intermediates (dL = Re Σ δx·dx), so that a real or
// imaginary part's gradient is Re δx or −Im δx:
//   δC' = 2·Σ_l gK_l·e^{l·a},  δa = 2·C'·Σ_l gK_l·l·e^{l·a} + δC'·C/A·E,
//   δC = δC'·(E − 1)/A,  δA = −δC'·C·(E − 1)/A² + δa·Δ,  ∂L/∂log Δ = Δ·Re Σ_n δa·A.

template <class T>
void s4d_forward(const T* log_dt, const T* Ar, const T* Ai, const T* Cr, const T* Ci, VandermondeDims d, T* K) {
  using cx = std::complex<T>;
  const int64_t N = d.states, L = d.length;
  parallel_for(d.channels, 1, [&](int, int64_t h0, int64_t h1) {
    std::vector<T> Kh(L);
    for (int64_t h = h0; h < h1; ++h) {
      const T dt = std::exp(log_dt[h]);
      std::fill(Kh.begin(), Kh.end(), T(0));
      for (int64_t n = 0; n < N; ++n) {
        const cx A(Ar[h * N + n], Ai[h * N + n]), C(Cr[h * N + n], Ci[h * N + n]);
        const cx a = dt * A;
        const cx Cp = C * (std::exp(a) - T(1)) / A;
        for (int64_t l = 0; l < L; ++l) {
          const T mag = std::exp(T(l) * a.real()), phase = T(l) * a.imag();
          Kh[l] += T(2) * mag * (Cp.real() * std::cos(phase) - Cp.imag() * std::sin(phase));
        }
      }
      std::copy(Kh.begin(), Kh.end(), K + h * L);
    }
  });
}

template <class T>
void s4d_backward(const T* gK, const T* log_dt, const T* Ar, const T* Ai, const T* Cr, const T* Ci,
                  VandermondeDims d, T* dlog_dt, T* dAr, T* dAi, T* dCr, T* dCi) {
  using cx = std::complex<T>;
  const int64_t N = d.states, L = d.length;
  parallel_for(d.channels, 1, [&](int, int64_t h0, int64_t h1) {
    for (int64_t h = h0; h < h1; ++h) {
      const T dt = std::exp(log_dt[h]);
      const T* g = gK + h * L;
      cx ddt(0);
      for (int64_t n = 0; n < N; ++n) {
        const int64_t i = h * N + n;
        const cx A(Ar[i], Ai[i]), C(Cr[i], Ci[i]);
        const cx a = dt * A, E = std::exp(a);
        const cx Cp = C * (E - T(1)) / A;
        cx S(0), S1(0);  // Σ_l g_l·e^{la}, Σ_l g_l·l·e^{la}
        for (int64_t l = 0; l < L; ++l) {
          const T mag = std::exp(T(l) * a.real()), phase = T(l) * a.imag();
          const cx p(mag * std::cos(phase), mag * std::sin(phase));
          S += g[l] * p;
          S1 += (g[l] * T(l)) * p;
        }
        const cx dCp = T(2) * S;
        const cx da = T(2) * Cp * S1 + dCp * C / A * E;
        const cx dC = dCp * (E - T(1)) / A;
        const cx dA = -dCp * C * (E - T(1)) / (A * A) + da * dt;
        ddt += da * A;
        dAr[i] = dA.real();
        dAi[i] = -dA.imag();
        dCr[i] = dC.real();
        dCi[i] = -dC.imag();
      }
      dlog_dt[h] = dt * ddt.real();
    }
  });
}

// ---------------------------------------------------------------------------------------- Cauchy
//
// out_l = Σ_n v_n/(z_l − w_n). With G_l = g_re + i·g_im the output gradient, dL = Re Σ_l conj(G_l)·d out_l,
// so (∂/∂Re + i·∂/∂Im) of L is  dv_n = Σ_l G_l / conj(z_l − w_n),  dw_n = Σ_l G_l·conj(v_n/(z_l − w_n)²).

template <class T>
void cauchy_forward_kernel(const T* vr, const T* vi, const T* zr, const T* zi, const T* wr, const T* wi, CauchyDims d,
                           T* out_r, T* out_i) {
  const int64_t N = d.poles, L = d.nodes;
  parallel_for(d.rows * L, 256, [&](int, int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t h = i / L, l = i % L;
      const T* a = vr + h * N;
      const T* b = vi + h * N;
      const T* pr = wr + h * N;
      const T* pi = wi + h * N;
      const T x = zr[l], y = zi[l];
      T sr = 0, si = 0;
#pragma omp simd reduction(+ : sr, si)
      for (int64_t n = 0; n < N; ++n) {
        const T dr = x - pr[n], di = y - pi[n], inv = T(1) / (dr * dr + di * di);
        // v / d = v·conj(d)/|d|²
        sr += (a[n] * dr + b[n] * di) * inv;
        si += (b[n] * dr - a[n] * di) * inv;
      }
      out_r[i] = sr;
      out_i[i] = si;
    }
  });
}

template <class T>
void cauchy_backward_kernel(const T* gr, const T* gi, const T* vr, const T* vi, const T* zr, const T* zi, const T* wr,
                            const T* wi, CauchyDims d, T* dvr, T* dvi, T* dwr, T* dwi) {
  const int64_t N = d.poles, L = d.nodes;
  parallel_for(d.rows * N, 16, [&](int, int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t h = i / N;
      const T* __restrict__ g_re = gr + h * L;
      const T* __restrict__ g_im = gi + h * L;
      // Local copies of the captured node pointers: read through the lambda's references, GCC
      // gathered z[l] element by element.
      const T* __restrict__ z_re = zr;
      const T* __restrict__ z_im = zi;
      const T pr = wr[i], pi = wi[i];
      T s1r = 0, s1i = 0, s2r = 0, s2i = 0;  // Σ G/conj(d), Σ G/conj(d)²
#pragma omp simd reduction(+ : s1r, s1i, s2r, s2i)
      for (int64_t l = 0; l < L; ++l) {
        const T dr = z_re[l] - pr, di = z_im[l] - pi, inv = T(1) / (dr * dr + di * di);
        // 1/conj(d) = d/|d|²
        const T qr = dr * inv, qi = di * inv;
        const T q2r = qr * qr - qi * qi, q2i = 2 * qr * qi;
        s1r += g_re[l] * qr - g_im[l] * qi;
        s1i += g_re[l] * qi + g_im[l] * qr;
        s2r += g_re[l] * q2r - g_im[l] * q2i;
        s2i += g_re[l] * q2i + g_im[l] * q2r;
      }
      dvr[i] = s1r;
      dvi[i] = s1i;
      // dw = conj(v)·Σ G/conj(d)²
      dwr[i] = vr[i] * s2r + vi[i] * s2i;
      dwi[i] = vr[i] * s2i - vi[i] * s2r;
    }
  });
}

}  // namespace

// ------------------------------------------------------------------------------- entry points

void scan_exp(const float* x, float* y, int64_t n) {
  constexpr int W = kLanes<float>;
  for (int64_t i = 0; i < n; i += W) {
    Vec<float> v{};
    const int64_t count = std::min<int64_t>(W, n - i);
    for (int64_t j = 0; j < count; ++j) v[j] = x[i + j];
    v = exp_lanes(v);
    for (int64_t j = 0; j < count; ++j) y[i + j] = v[j];
  }
}

template <>
void cauchy_forward<DeviceType::CPU>(const TensorView& v_real, const TensorView& v_imag, const TensorView& z_real,
                                     const TensorView& z_imag, const TensorView& w_real, const TensorView& w_imag,
                                     const TensorView& out_real, const TensorView& out_imag, std::uintptr_t) {
  const CauchyDims d =
      check_cauchy_forward(DeviceType::CPU, v_real, v_imag, z_real, z_imag, w_real, w_imag, out_real, out_imag);
  prefer_huge_pages(out_real);
  prefer_huge_pages(out_imag);
  dispatch_cpu_floating(v_real.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    cauchy_forward_kernel(v_real.data_as<T>(), v_imag.data_as<T>(), z_real.data_as<T>(), z_imag.data_as<T>(),
                          w_real.data_as<T>(), w_imag.data_as<T>(), d, out_real.data_as<T>(), out_imag.data_as<T>());
  });
}

template <>
void cauchy_backward<DeviceType::CPU>(const TensorView& grad_real, const TensorView& grad_imag,
                                      const TensorView& v_real, const TensorView& v_imag, const TensorView& z_real,
                                      const TensorView& z_imag, const TensorView& w_real, const TensorView& w_imag,
                                      const TensorView& dv_real, const TensorView& dv_imag,
                                      const TensorView& dw_real, const TensorView& dw_imag, std::uintptr_t) {
  const CauchyDims d = check_cauchy_backward(DeviceType::CPU, grad_real, grad_imag, v_real, v_imag, z_real, z_imag,
                                             w_real, w_imag, dv_real, dv_imag, dw_real, dw_imag);
  dispatch_cpu_floating(v_real.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    cauchy_backward_kernel(grad_real.data_as<T>(), grad_imag.data_as<T>(), v_real.data_as<T>(), v_imag.data_as<T>(),
                           z_real.data_as<T>(), z_imag.data_as<T>(), w_real.data_as<T>(), w_imag.data_as<T>(), d,
                           dv_real.data_as<T>(), dv_imag.data_as<T>(), dw_real.data_as<T>(), dw_imag.data_as<T>());
  });
}

template <>
void selective_scan_forward<DeviceType::CPU>(const TensorView& u, const TensorView& delta, const TensorView& A,
                                             const TensorView& B, const TensorView& C, const OptView& D_skip,
                                             const OptView& z, const OptView& delta_bias, bool delta_softplus,
                                             const TensorView& out, const OptView& checkpoints, std::uintptr_t) {
  const ScanDims d =
      check_selective_scan_forward(DeviceType::CPU, u, delta, A, B, C, D_skip, z, delta_bias, out, checkpoints);
  if (d.batch * d.dim == 0 || d.length == 0) return;  // nothing to write (as on CUDA)
  prefer_huge_pages(out);
  dispatch_cpu_floating(u.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const ScanArgs<T> a{u.data_as<T>(), delta.data_as<T>(), A.data_as<T>(), B.data_as<T>(), C.data_as<T>(),
                        ptr_or_null<T>(D_skip), ptr_or_null<T>(z), ptr_or_null<T>(delta_bias), delta_softplus, d};
    scan_forward(a, out.data_as<T>(), ptr_or_null<T>(checkpoints));
  });
}

namespace {
ScanDims workspace_dims(const TensorView& u, const TensorView& A, const TensorView& B, const TensorView& C) {
  ScanDims d{u.ndim == 3 ? u.size(0) : 0, u.ndim == 3 ? u.size(1) : 0, u.ndim == 3 ? u.size(2) : 0,
             A.ndim == 2 ? A.size(1) : 0, 1, B.ndim == 4, C.ndim == 4};
  if (B.ndim == 4) d.groups = B.size(1);
  else if (C.ndim == 4) d.groups = C.size(1);
  if (d.groups < 1 || d.dim % d.groups != 0) d.groups = 1;  // validation rejects it, naming the argument
  return d;
}
int64_t scan_workspace_bytes(const ScanDims& d, int64_t slices, DType dtype) {
  return scan_workspace_elements(d, slices) * (dtype == DType::Float64 ? 8 : 4);
}
}  // namespace

template <>
int64_t selective_scan_backward_workspace_size<DeviceType::CPU>(const TensorView& u, const TensorView& A,
                                                                const TensorView& B, const TensorView& C) {
  const ScanDims d = workspace_dims(u, A, B, C);
  if (d.batch * d.dim == 0) return 0;
  return scan_workspace_bytes(d, desired_slices(d), u.dtype);
}

template <>
void selective_scan_backward<DeviceType::CPU>(
    const TensorView& grad_out, const TensorView& u, const TensorView& delta, const TensorView& A,
    const TensorView& B, const TensorView& C, const OptView& D_skip, const OptView& z, const OptView& delta_bias,
    bool delta_softplus, const TensorView& checkpoints, const OptView& grad_last_state, const TensorView& du, const TensorView& ddelta,
    const TensorView& dA, const TensorView& dB, const TensorView& dC, const OptView& dD, const OptView& dz,
    const OptView& ddelta_bias, const OptView& workspace, std::uintptr_t) {
  const ScanDims wd = workspace_dims(u, A, B, C);
  const int64_t minimum = wd.batch * wd.dim == 0 ? 0 : scan_workspace_bytes(wd, 1, u.dtype);
  const ScanDims d = check_selective_scan_backward(DeviceType::CPU, grad_out, u, delta, A, B, C, D_skip, z,
                                                   delta_bias, checkpoints, grad_last_state, du, ddelta, dA, dB, dC, dD, dz,
                                                   ddelta_bias, workspace, minimum);
  prefer_huge_pages(du);
  prefer_huge_pages(ddelta);
  prefer_huge_pages(dB);
  prefer_huge_pages(dC);
  prefer_huge_pages(dz);
  dispatch_cpu_floating(u.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (d.batch * d.dim == 0 || d.length == 0) {  // nothing flows: every gradient is zero
      for (const TensorView* v : {&du, &ddelta, &dA, &dB, &dC})
        std::fill(v->data_as<T>(), v->data_as<T>() + v->numel(), T(0));
      for (const OptView* v : {&dD, &dz, &ddelta_bias})
        if (*v) std::fill((*v)->data_as<T>(), (*v)->data_as<T>() + (*v)->numel(), T(0));
      return;
    }
    // As many slices as the workspace holds (at least one), up to the thread-based choice.
    const int64_t available = workspace->numel() / static_cast<int64_t>(sizeof(T));
    const int64_t fixed = d.batch * d.dim * channel_partials(d), per_slice = d.batch * d.groups * item_partials(d);
    int64_t slices = desired_slices(d);
    if (per_slice > 0) slices = std::max<int64_t>(1, std::min(slices, (available - fixed) / per_slice));
    const ScanArgs<T> a{u.data_as<T>(), delta.data_as<T>(), A.data_as<T>(), B.data_as<T>(), C.data_as<T>(),
                        ptr_or_null<T>(D_skip), ptr_or_null<T>(z), ptr_or_null<T>(delta_bias), delta_softplus, d};
    T* ws = workspace->data_as<T>();
    const ScanGrads<T> gr{grad_out.data_as<T>(), checkpoints.data_as<T>(), ptr_or_null<T>(grad_last_state), du.data_as<T>(), ddelta.data_as<T>(),
                          ptr_or_null<T>(dz), ws, ws + fixed};
    scan_backward(a, gr, slices, dA.data_as<T>(), dB.data_as<T>(), dC.data_as<T>(), ptr_or_null<T>(dD),
                  ptr_or_null<T>(ddelta_bias));
  });
}

template <>
void causal_conv1d_forward<DeviceType::CPU>(const TensorView& x, const TensorView& weight, const OptView& bias,
                                            const OptView& initial_state, int activation, const TensorView& y,
                                            const OptView& final_state, std::uintptr_t) {
  const ConvDims d = check_causal_conv1d_forward(DeviceType::CPU, x, weight, bias, initial_state, y, final_state);
  prefer_huge_pages(y);
  Checker("causal_conv1d_forward", DeviceType::CPU)
      .value(activation == 0 || activation == 1, "activation", "None or 'silu'", activation);
  dispatch_cpu_floating(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    conv_forward(x.data_as<T>(), weight.data_as<T>(), ptr_or_null<T>(bias), ptr_or_null<T>(initial_state),
                 activation == 1, d, y.data_as<T>(), ptr_or_null<T>(final_state));
  });
}

template <>
int64_t causal_conv1d_backward_workspace_size<DeviceType::CPU>(const TensorView& x, const TensorView& weight) {
  if (x.ndim != 3 || weight.ndim != 2) return 0;
  return x.size(0) * x.size(1) * (weight.size(1) + 1) * static_cast<int64_t>(sizeof(double));
}

template <>
void causal_conv1d_backward<DeviceType::CPU>(const TensorView& grad_y, const TensorView& x, const TensorView& weight,
                                             const OptView& bias, const OptView& initial_state, int activation,
                                             const OptView& grad_final_state, const TensorView& dx, const TensorView& dweight, const OptView& dbias,
                                             const OptView& dinitial_state, const OptView& workspace,
                                             std::uintptr_t) {
  const ConvDims d = check_causal_conv1d_backward(DeviceType::CPU, grad_y, x, weight, bias, initial_state, grad_final_state, dx,
                                                  dweight, dbias, dinitial_state, workspace,
                                                  causal_conv1d_backward_workspace_size<DeviceType::CPU>(x, weight));
  prefer_huge_pages(dx);
  Checker("causal_conv1d_backward", DeviceType::CPU)
      .value(activation == 0 || activation == 1, "activation", "None or 'silu'", activation);
  dispatch_cpu_floating(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    conv_backward(grad_y.data_as<T>(), ptr_or_null<T>(grad_final_state), x.data_as<T>(), weight.data_as<T>(), ptr_or_null<T>(bias),
                  ptr_or_null<T>(initial_state), activation == 1, d, dx.data_as<T>(), dweight.data_as<T>(),
                  ptr_or_null<T>(dbias), ptr_or_null<T>(dinitial_state),
                  workspace ? workspace->data_as<double>() : nullptr);
  });
}

template <>
void s4d_kernel_forward<DeviceType::CPU>(const TensorView& log_dt, const TensorView& A_real, const TensorView& A_imag,
                                         const TensorView& C_real, const TensorView& C_imag, const TensorView& K,
                                         std::uintptr_t) {
  const VandermondeDims d = check_s4d_kernel_forward(DeviceType::CPU, log_dt, A_real, A_imag, C_real, C_imag, K);
  prefer_huge_pages(K);
  dispatch_cpu_floating(log_dt.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    s4d_forward(log_dt.data_as<T>(), A_real.data_as<T>(), A_imag.data_as<T>(), C_real.data_as<T>(),
                C_imag.data_as<T>(), d, K.data_as<T>());
  });
}

template <>
void s4d_kernel_backward<DeviceType::CPU>(const TensorView& grad_K, const TensorView& log_dt,
                                          const TensorView& A_real, const TensorView& A_imag,
                                          const TensorView& C_real, const TensorView& C_imag,
                                          const TensorView& dlog_dt, const TensorView& dA_real,
                                          const TensorView& dA_imag, const TensorView& dC_real,
                                          const TensorView& dC_imag, std::uintptr_t) {
  const VandermondeDims d = check_s4d_kernel_backward(DeviceType::CPU, grad_K, log_dt, A_real, A_imag, C_real,
                                                      C_imag, dlog_dt, dA_real, dA_imag, dC_real, dC_imag);
  dispatch_cpu_floating(log_dt.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    s4d_backward(grad_K.data_as<T>(), log_dt.data_as<T>(), A_real.data_as<T>(), A_imag.data_as<T>(),
                 C_real.data_as<T>(), C_imag.data_as<T>(), d, dlog_dt.data_as<T>(), dA_real.data_as<T>(),
                 dA_imag.data_as<T>(), dC_real.data_as<T>(), dC_imag.data_as<T>());
  });
}

}  // namespace replearn::ssm
