// Convolution family, CPU kernels (float32 and float64).
//
// Dense convolutions (more than one input channel per group) are matrix products (Chellapilla et
// al. 2006, "High performance convolutional neural networks for document processing"): per sample
// and group, im2col copies the receptive field of every output position into a column,
//   col (Ci·kH·kW, P)  with  col[(c, kh, kw), (oh, ow)] = x[c, oh·S − P + kh·D, ow·S − P + kw·D] (0 outside)
// and then
//   forward          y_g (Co, P)       = W_g (Co, Ci·K) · col                      (core/gemm)
//   backward input   col               = W_gᵀ · dy_g,  then col2im adds col back into dx
//   backward weight  dW_g (Co, Ci·K)  += dy_g · colᵀ
// Pointwise convolutions (1×1, stride 1, no padding) skip im2col: col is x itself.
//
// Why it is written this way:
// - Implicit GEMM: the forward and the weight gradient never store col. x is copied once into
//   zero-padded planes (no element of col then needs a bounds test), and the GEMM asks for blocks of
//   col (blas::gemm_panels, PlanePanels below) that are gathered from those planes in the GEMM's
//   packed layout while they are in cache: col is larger than L2 for the big layers, and writing it
//   only to read it back for packing cost more than building the panels directly.
// - Bounded workspace: col2im (the input gradient where it is not a stride-1 convolution) runs over
//   blocks of output columns (about kColBlockElements elements of col), so a large image never asks
//   for a huge buffer.
// - Small planes: where P is small next to Ci·K, runs of samples share one product (their columns
//   side by side) in the forward, and weight gradients multiply runs of samples at once (k = S·P).
// - Threads: with at least as many samples as threads, samples are spread over threads and each
//   runs single-threaded GEMMs (no synchronization inside a product, packing and GEMM of a sample on
//   the same core); with fewer, samples run one after another on multi-threaded GEMMs
//   (blas::parallel_for_gemm keeps OpenBLAS from oversubscribing OpenMP). Weight gradients of the
//   per-thread samples go to per-chunk partials in the workspace, added in chunk order after the
//   region: deterministic for a given thread count.
// - Depthwise convolutions (one input channel per group, Chollet 2017; Howard et al. 2017) are a
//   poor fit for GEMM (a product with k = kH·kW), so they have direct kernels: each (sample,
//   channel) plane is one task, a few vectors of an output row (stride 1) sum every kernel tap
//   (kh, kw) in registers from contiguous loads of a padded plane, and the weight gradient is a dot product
//   of an output-gradient row with a shifted input row per tap, summed in float along the row and
//   in double across rows.
// - conv_transpose is conv run backwards (Dumoulin & Visin 2016): its forward is conv's backward
//   to the input, its input gradient conv's forward, its weight gradient conv's weight gradient
//   with the roles of x and dy exchanged.
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <climits>
#include <cstring>
#include <optional>
#include <type_traits>
#include <vector>

#include "conv/conv.h"
#include "core/dispatch.h"
#include "core/gemm.h"
#include "core/memory.h"
#include "core/parallel.h"
#include "core/simd.h"

namespace replearn::conv {

namespace {

using blas::Trans;

// Elements of col per im2col block (8 MiB of float32): the workspace does not grow with the image,
// yet the ResNet layers run one GEMM per sample. Blocks of 1 MiB (L2-sized) measured slower here
// (forward of the 64→64 56×56 layer 0.5–1.0 s against 0.46–0.55 s for 8 MiB, same window, loaded
// machine): a product per block pays OpenBLAS's per-call buffer handling, shared by the threads.
// At least kMinBlockColumns columns (or the whole image), so that a GEMM with a large weight matrix
// is not split into slivers that each repack it.
constexpr int64_t kColBlockElements = int64_t{1} << 21;
constexpr int64_t kMinBlockColumns = 256;
// Work (elements touched, or multiply-adds) below which a parallel chunk costs more than it saves.
constexpr int64_t kGrainWork = int64_t{1} << 15;

// Items per parallel chunk when each item costs `work_per_item`.
inline int64_t grain_for(int64_t work_per_item) { return std::max<int64_t>(1, kGrainWork / std::max<int64_t>(1, work_per_item)); }

template <class T>
T* ptr_or_null(const OptView& v) {
  return v ? v->data_as<T>() : nullptr;
}

// Output positions o ∈ [lo, hi) whose input position o·stride + offset lies in [0, size).
struct Range {
  int64_t lo, hi;
};
inline Range valid_outputs(int64_t offset, int64_t stride, int64_t size, int64_t out_size) {
  const int64_t lo = offset >= 0 ? 0 : (-offset + stride - 1) / stride;
  const int64_t hi = size - 1 - offset < 0 ? 0 : (size - 1 - offset) / stride + 1;
  const int64_t lo_clamped = std::min(lo, out_size);
  return {lo_clamped, std::clamp(hi, lo_clamped, out_size)};
}

// --------------------------------------------------------------------------------- im2col/col2im

int64_t block_columns(const Geometry& g) {
  const int64_t by_size = kColBlockElements / std::max<int64_t>(1, g.col_rows());
  return std::clamp<int64_t>(std::max(by_size, kMinBlockColumns), 1, std::max<int64_t>(1, g.out_plane()));
}

// Walks the output positions [p0, p1) row segment by row segment for one (c, kh, kw) row of col:
// f(oh, ow0, ow1, column offset of ow0 in the block).
template <class F>
inline void for_row_segments(const Geometry& g, int64_t p0, int64_t p1, const F& f) {
  for (int64_t p = p0; p < p1;) {
    const int64_t oh = p / g.out_w, ow0 = p % g.out_w;
    const int64_t ow1 = std::min(g.out_w, ow0 + (p1 - p));
    f(oh, ow0, ow1, p - p0);
    p += ow1 - ow0;
  }
}

// ------------------------------------------------------------------ col from padded planes

// The implicit GEMMs read col from x copied once into zero-padded planes (the padded extent an
// output reads: Hp = (out_h − 1)·S + (kH − 1)·D + 1 rows, Wp likewise), so that no element of col
// needs a bounds test: column q (position (oh, ow) of sample s) of row (c, kh, kw) is
//   col[(c, kh, kw), q] = xpad[s, c, oh·S_h + kh·D_h, ow·S_w + kw·D_w] = xp[row(c, kh, kw) + at(q)],
// a sum of a row offset and a column offset. A block of col is then a gather with one index list
// per block, shared by all its rows: with AVX-512, each 16 consecutive columns read a window of at
// most 32 values of the plane whenever the positions do not jump far (stride 1, and stride 2 within
// a row): two loads and a two-register permute with a per-block index vector; other vectors use
// the hardware gather. The earlier im2col walked (row, output-row segment) pairs with bounds and
// masks per segment: at 32² that bookkeeping took a third of the forward, and the 4–16-wide rows of
// the deep layers were worse (bench/RESULTS.md).
struct Planes {
  int64_t rows, cols;  // Hp, Wp
  int64_t plane;       // Hp·Wp
  int64_t sample;      // Ci·Hp·Wp: one sample of one group
};
// Values past the last plane that a window load may read (never used by a permute).
constexpr int64_t kPlaneSlack = 32;

Planes padded_planes(const Geometry& g) {
  const int64_t rows = (g.out_h - 1) * g.stride_h + (g.kernel_h - 1) * g.dilation_h + 1;
  const int64_t cols = (g.out_w - 1) * g.stride_w + (g.kernel_w - 1) * g.dilation_w + 1;
  return {rows, cols, rows * cols, g.in_per_group * rows * cols};
}
// Workspace elements for `count` samples' padded planes.
int64_t planes_elements(const Geometry& g, int64_t count) { return count * padded_planes(g).sample + kPlaneSlack; }

// Copies plane (H, W) into out (rows, cols) at offset (top, left), zeros around it: the padded plane
// a kernel reads without bounds checks. Parts of the plane beyond out are left out.
template <class T>
void pad_plane(const T* __restrict__ plane, int64_t h, int64_t w, int64_t top, int64_t left, int64_t rows,
               int64_t cols, T* __restrict__ out) {
  std::fill(out, out + rows * cols, T(0));
  const int64_t c0 = std::max<int64_t>(0, -left), c1 = std::min(w, cols - left);
  for (int64_t r = std::max<int64_t>(0, top); r < std::min(rows, top + h); ++r)
    if (c0 < c1) std::memcpy(out + r * cols + left + c0, plane + (r - top) * w + c0, sizeof(T) * (c1 - c0));
}

// count samples of one group's x (Ci, H, W), `sample_stride` apart, into xp (count, Ci, Hp, Wp).
template <class T>
void pad_planes(const Geometry& g, const T* x, int64_t count, int64_t sample_stride, T* xp) {
  const Planes pl = padded_planes(g);
  for (int64_t s = 0; s < count; ++s)
    for (int64_t c = 0; c < g.in_per_group; ++c)
      pad_plane(x + s * sample_stride + c * g.in_plane(), g.in_h, g.in_w, g.pad_h, g.pad_w, pl.rows, pl.cols,
                xp + s * pl.sample + c * pl.plane);
  std::fill(xp + count * pl.sample, xp + count * pl.sample + kPlaneSlack, T(0));
}

// f(i, at(q0 + i)) for the columns q of col in [q0, q0 + count): where position q % P of sample q / P
// reads its first tap in the padded planes. Positions are walked, not divided: blocks of the stem's
// product have k = 27 rows, and a division per column would cost more than the rows.
template <class F>
inline void for_column_offsets(const Geometry& g, const Planes& pl, int64_t q0, int64_t count, const F& f) {
  const int64_t position = q0 % g.out_plane();
  int64_t sample = q0 / g.out_plane(), oh = position / g.out_w, ow = position % g.out_w;
  for (int64_t i = 0; i < count; ++i) {
    f(i, sample * pl.sample + oh * g.stride_h * pl.cols + ow * g.stride_w);
    if (++ow == g.out_w) {
      ow = 0;
      if (++oh == g.out_h) oh = 0, ++sample;
    }
  }
}

// Column offsets of a block of col's columns, and dst[i] = src[at(q0 + i)] for one row of the block
// (src: the padded planes plus the row's offset). The generic form, as runs: along a row of output
// positions the offsets step by the stride, so a block is a few runs of equal steps (one per output
// row it covers, fewer where rows meet without a gap), each copied by one loop — a vectorized copy
// for stride 1. One indexed load per value instead spent 22% of a 3×3 ResNet convolution's forward
// on an AVX2 host, where the AVX-512 form below does not exist (bench/RESULTS.md, "an AVX2 host").
template <class T>
class ColumnGather {
 public:
  void prepare(const Geometry& g, const Planes& pl, int64_t q0, int64_t count) {
    runs_.clear();
    step_ = g.stride_w;
    count_ = count;
    for_column_offsets(g, pl, q0, count, [&](int64_t i, int64_t at) {
      if (!runs_.empty() && at == runs_.back().at + runs_.back().length * step_) {
        ++runs_.back().length;
      } else {
        runs_.push_back({i, at, 1});
      }
    });
  }
  // dst[0 : count] = the row's values; dst[count : width] = 0.
  void row(const T* __restrict__ src, T* __restrict__ dst, int64_t width) const {
    for (const Run& run : runs_) {
      const T* __restrict__ from = src + run.at;
      T* __restrict__ to = dst + run.first;
      if (step_ == 1) {
#pragma omp simd
        for (int64_t i = 0; i < run.length; ++i) to[i] = from[i];
      } else {
        for (int64_t i = 0; i < run.length; ++i) to[i] = from[i * step_];
      }
    }
    std::fill(dst + count_, dst + std::max(width, count_), T(0));
  }

 private:
  struct Run {
    int64_t first;   // its first column in the block
    int64_t at;      // that column's offset
    int64_t length;  // columns; column first + i reads offset at + i·step_
  };
  std::vector<Run> runs_;
  int64_t step_ = 1, count_ = 0;
};

#if defined(__AVX512F__)
// float, 16 columns at a time: each vector is a window (its offsets within 32 values of the first:
// two loads, one permute) or a gather; offsets too far apart for a gather's 32-bit indices (a vector
// crossing from one sample's planes into the next, each over 8 GiB) are read one lane at a time.
template <>
class ColumnGather<float> {
 public:
  void prepare(const Geometry& g, const Planes& pl, int64_t q0, int64_t count) {
    vectors_.clear();
    at_.resize(count);
    for_column_offsets(g, pl, q0, count, [&](int64_t i, int64_t at) { at_[i] = at; });
    for (int64_t i0 = 0; i0 < count; i0 += 16) {
      const int lanes = static_cast<int>(std::min<int64_t>(16, count - i0));
      const int64_t* at = at_.data() + i0;
      int64_t lo = at[0], hi = at[0];
      for (int l = 1; l < lanes; ++l) lo = std::min(lo, at[l]), hi = std::max(hi, at[l]);
      alignas(64) int32_t index[16] = {};
      const Kind kind = hi - lo < 32 ? Kind::Window : hi - lo <= INT32_MAX ? Kind::Gather : Kind::Lanes;
      for (int l = 0; l < lanes && kind != Kind::Lanes; ++l) index[l] = static_cast<int32_t>(at[l] - lo);
      vectors_.push_back({lo, _mm512_load_si512(index), lanes_below(lanes), kind});
    }
  }
  void row(const float* __restrict__ src, float* __restrict__ dst, int64_t width) const {
    int64_t i = 0;
    for (const Vector& v : vectors_) {
      const float* base = src + v.base;
      __m512 x;
      if (v.kind == Kind::Window) {
        x = _mm512_maskz_permutex2var_ps(v.lanes, _mm512_loadu_ps(base), v.index, _mm512_loadu_ps(base + 16));
      } else if (v.kind == Kind::Gather) {
        x = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), v.lanes, v.index, base, 4);
      } else {
        alignas(64) float values[16] = {};
        for (int l = 0; l < 16 && ((v.lanes >> l) & 1); ++l) values[l] = src[at_[i + l]];
        x = _mm512_load_ps(values);
      }
      _mm512_mask_storeu_ps(dst + i, lanes_below(width - i), x);
      i += 16;
    }
    for (; i < width; i += 16) _mm512_mask_storeu_ps(dst + i, lanes_below(width - i), _mm512_setzero_ps());
  }

 private:
  enum class Kind : uint8_t { Window, Gather, Lanes };
  struct Vector {
    int64_t base;      // the lowest offset of its lanes
    __m512i index;     // lane offsets from base (Window, Gather)
    __mmask16 lanes;   // lanes holding a column
    Kind kind;
  };
  // The lowest n lanes, n clamped to [0, 16].
  static __mmask16 lanes_below(int64_t n) {
    return n >= 16 ? __mmask16(0xFFFF) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1);
  }
  std::vector<Vector> vectors_;
  std::vector<int64_t> at_;
};
#endif

// col (Ci·kH·kW, count·P) of one group over padded planes xp (count, Ci, Hp, Wp), column q being
// position q % P of sample q / P, or its transpose, as the B operand of an implicit GEMM (core/gemm.h,
// PanelSource): the GEMM asks for blocks and they are gathered where the GEMM reads them.
// - B = col (the forward, y = W·col): blocks in the GEMM's panel layout;
// - B = colᵀ (the weight gradient, dW = dy·colᵀ): blocks of col's rows, which the GEMM transposes.
template <class T>
class PlanePanels final : public blas::PanelSource<T> {
 public:
  using Layout = typename blas::PanelSource<T>::Layout;
  PlanePanels(const Geometry& g, const T* xp, bool transposed)
      : blas::PanelSource<T>(transposed ? Layout::TransposedRows : Layout::Panels),
        g_(g),
        planes_(padded_planes(g)),
        xp_(xp) {}

  void pack(int64_t p0, int64_t kc, int64_t j0, int64_t nc, int64_t nr, T* dst) const override {
    thread_local ColumnGather<T> columns;  // one index list serves every row of the block
    thread_local std::vector<int64_t> rows;
    if (this->layout == Layout::TransposedRows) {  // dst[j·kc + p] = col[j0 + j, p0 + p]
      columns.prepare(g_, planes_, p0, kc);
      row_offsets(j0, nc, rows);
      for (int64_t j = 0; j < nc; ++j) columns.row(xp_ + rows[j], dst + j * kc, kc);
      return;
    }
    row_offsets(p0, kc, rows);
    for (int64_t jr = 0; jr < nc; jr += nr) {  // one panel: dst[p·nr + j] = col[p0 + p, j0 + jr + j]
      T* panel = dst + (jr / nr) * kc * nr;
      columns.prepare(g_, planes_, j0 + jr, std::min(nr, nc - jr));
      for (int64_t p = 0; p < kc; ++p) columns.row(xp_ + rows[p], panel + p * nr, nr);
    }
  }

 private:
  // rows[i]: where row r0 + i = (c, kh, kw) of col starts in a sample's planes, c·Hp·Wp + kh·D·Wp + kw·D.
  void row_offsets(int64_t r0, int64_t count, std::vector<int64_t>& rows) const {
    rows.resize(count);
    const int64_t K = g_.kernel_size();
    for (int64_t i = 0; i < count; ++i) {
      const int64_t r = r0 + i, c = r / K, kh = r % K / g_.kernel_w, kw = r % g_.kernel_w;
      rows[i] = c * planes_.plane + kh * g_.dilation_h * planes_.cols + kw * g_.dilation_w;
    }
  }

  const Geometry& g_;
  Planes planes_;
  const T* xp_;  // (count, Ci, Hp, Wp)
};

// dx (Ci, H, W) of one group += col2im(col), output positions [p0, p1). Threads split channels, so
// no two write the same element.
template <class T>
void col2im_add(const Geometry& g, const T* __restrict__ col, int64_t p0, int64_t p1, T* __restrict__ dx) {
  const int64_t cols = p1 - p0;
  parallel_for(g.in_per_group, grain_for(g.kernel_size() * cols), [&](int, int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
        for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
          const T* row = col + ((c * g.kernel_h + kh) * g.kernel_w + kw) * cols;
          const int64_t offset_w = kw * g.dilation_w - g.pad_w;
          const Range valid = valid_outputs(offset_w, g.stride_w, g.in_w, g.out_w);
          for_row_segments(g, p0, p1, [&](int64_t oh, int64_t ow0, int64_t ow1, int64_t at) {
            const int64_t ih = oh * g.stride_h - g.pad_h + kh * g.dilation_h;
            if (ih < 0 || ih >= g.in_h) return;
            const T* __restrict__ src = row + at - ow0;                          // src[ow]
            T* __restrict__ dst = dx + (c * g.in_h + ih) * g.in_w + offset_w;   // dst[ow·S]
            const int64_t lo = std::clamp(valid.lo, ow0, ow1), hi = std::clamp(valid.hi, lo, ow1);
            if (g.stride_w == 1) {
#pragma omp simd
              for (int64_t ow = lo; ow < hi; ++ow) dst[ow] += src[ow];
            } else {
              for (int64_t ow = lo; ow < hi; ++ow) dst[ow * g.stride_w] += src[ow];
            }
          });
        }
      }
    }
  });
}

// ------------------------------------------------------------------------------ batch splitting

// Chunks the batch is split into: one per thread when there are at least as many samples as
// threads (single-threaded GEMMs inside), else one (multi-threaded GEMMs).
// Small convolutions (less than kGrainWork multiply-adds per sample) stay on one thread.
int batch_chunks(const Geometry& g) {
  const int threads = num_threads();
  const int64_t work = g.out_channels() * g.out_plane() * g.col_rows();
  return threads > 1 && g.batch >= threads && work >= kGrainWork ? parallel_chunk_count(g.batch, 1) : 1;
}

// Samples per weight-gradient product. dW = Σ_n dy_n · col_nᵀ: a product per sample has k = P, and
// where P is a few dozen positions (the deep layers: 8², 4²) each product reads and writes all of
// dW (Co × Ci·K) for little work, so runs of samples make one product of depth about
// kWeightProductDepth (their dy copied side by side, col's columns following sample after sample).
constexpr int64_t kWeightProductDepth = 512;
int64_t samples_per_weight_product(const Geometry& g) {
  if (g.depthwise() || g.pointwise() || g.batch <= 1) return 1;
  const int64_t depth = std::max<int64_t>(1, g.out_plane());
  const int64_t per_chunk = (g.batch + batch_chunks(g) - 1) / batch_chunks(g);
  return std::clamp<int64_t>(kWeightProductDepth / depth, 1, per_chunk);
}

// Workspace elements per chunk of a weight gradient: a run's padded planes and, for runs of more
// than one sample, their dy side by side (Co, S·P) (weight_gradient_run).
int64_t weight_scratch(const Geometry& g) {
  if (g.depthwise() || g.pointwise()) return 0;
  const int64_t samples = samples_per_weight_product(g);
  return planes_elements(g, samples) + (samples > 1 ? samples * g.out_per_group * g.out_plane() : 0);
}

// Workspace elements (of T) of a dense convolution: per chunk one im2col block, plus, with weight
// gradients, one partial dW per chunk but the first (which writes dW itself).
struct DenseScratch {
  int64_t col_elements, partial_elements;
  int64_t bytes_for(int chunks, size_t element) const {
    return (chunks * col_elements + (chunks - 1) * partial_elements) * static_cast<int64_t>(element);
  }
  // Chunks that fit in `elements` (at least 1: the caller validated one chunk's worth).
  int chunks_in(int64_t elements) const {
    const int64_t per = col_elements + partial_elements;
    if (per == 0) return 1 << 30;
    return static_cast<int>(std::max<int64_t>(1, (elements + partial_elements) / per));
  }
};

// `columns`: col2im's blocks (dense_backward's input gradient).
DenseScratch dense_scratch(const Geometry& g, bool columns, bool weight_grad) {
  if (g.depthwise()) return {0, 0};
  int64_t col = g.pointwise() || !columns ? 0 : g.col_rows() * block_columns(g);
  if (weight_grad) col = std::max(col, weight_scratch(g));
  const int64_t partial = weight_grad ? g.out_channels() * g.col_rows() : 0;
  return {col, partial};
}

// With stride 1, the input gradient of a dense convolution is itself a convolution (Dumoulin &
// Visin 2016, §4): dx = conv(dy, W'), W'[g·Ci + c, o, kh, kw] = W[g·Co + o, c, kH−1−kh, kW−1−kw], with
// padding D·(K−1) − P on each side. Run as a forward (im2col + GEMM) it avoids col2im's scattered
// additions. Applies when both of the new paddings are non-negative (conv_transpose with an
// output_padding can leave a negative one: it keeps the col2im path).
std::optional<Geometry> flipped_geometry(const Geometry& g) {
  if (g.depthwise() || g.stride_h != 1 || g.stride_w != 1) return std::nullopt;
  const int64_t span_h = (g.kernel_h - 1) * g.dilation_h, span_w = (g.kernel_w - 1) * g.dilation_w;
  const int64_t end_h = g.out_h + span_h - g.in_h - g.pad_h, end_w = g.out_w + span_w - g.in_w - g.pad_w;
  if (g.pad_h > span_h || g.pad_w > span_w || end_h < 0 || end_w < 0 || end_h > span_h || end_w > span_w)
    return std::nullopt;
  Geometry f = g;
  f.in_per_group = g.out_per_group;
  f.out_per_group = g.in_per_group;
  f.in_h = g.out_h, f.in_w = g.out_w, f.out_h = g.in_h, f.out_w = g.in_w;
  f.pad_h = span_h - g.pad_h, f.pad_w = span_w - g.pad_w;
  return f;
}

// dst[K − 1 − k] = src[k] for k < K.
template <class T>
inline void reverse_taps(const T* __restrict__ src, int64_t K, T* __restrict__ dst) {
  for (int64_t k = 0; k < K; ++k) dst[K - 1 - k] = src[k];
}
#if defined(__AVX512F__)
// Up to 16 taps (3×3, 4×4 kernels) in one masked load, a lane permute and a masked store.
inline void reverse_taps(const float* __restrict__ src, int64_t K, float* __restrict__ dst) {
  if (K > 16) return reverse_taps<float>(src, K, dst);
  const __mmask16 taps = __mmask16((1u << K) - 1);
  const __m512i reversed = _mm512_sub_epi32(_mm512_set1_epi32(static_cast<int>(K) - 1),
                                            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
  _mm512_mask_storeu_ps(dst, taps, _mm512_maskz_permutexvar_ps(taps, reversed, _mm512_maskz_loadu_ps(taps, src)));
}
#endif

// wf (G·Ci, Co, kH, kW) from w (G·Co, Ci, kH, kW), taps reversed: a transpose of (Co, Ci) blocks
// of K taps, 2.4 M elements for the 512-channel layers. Threads split wf's rows (grp, c); within a
// chunk, blocks of 16 output channels keep both the reads (16 rows of w) and the writes (K·16
// contiguous values per row of wf) in cache lines already touched.
template <class T>
void flip_weights(const Geometry& g, const T* __restrict__ w, T* __restrict__ wf) {
  const int64_t K = g.kernel_size(), Ci = g.in_per_group, Co = g.out_per_group;
  parallel_for(g.groups * Ci, grain_for(Co * K), [&](int, int64_t r0, int64_t r1) {
    for (int64_t o0 = 0; o0 < Co; o0 += 16)
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t grp = r / Ci, c = r % Ci;
        for (int64_t o = o0; o < std::min(Co, o0 + 16); ++o)
          reverse_taps(w + ((grp * Co + o) * Ci + c) * K, K, wf + (r * Co + o) * K);
      }
  });
}

// Samples per forward product. A product per sample packs the weights (Co × Ci·K) for only P
// columns; when P is small next to Ci·K (the deep layers: 256 channels on 14², 512 on 4²), packing
// them costs about as much as the product. Consecutive samples of a chunk then share one product
// of about kBatchedColumns columns (B = their col side by side), written to the workspace and
// copied out: Co·P elements per sample, fewer than the Co·Ci·K the per-sample packing reads.
constexpr int64_t kBatchedColumns = 1024;
int64_t samples_per_product(const Geometry& g) {
  if (g.depthwise() || g.pointwise() || g.out_plane() >= g.col_rows() || g.batch <= 1) return 1;
  const int64_t per_chunk = (g.batch + batch_chunks(g) - 1) / batch_chunks(g);
  return std::clamp<int64_t>((kBatchedColumns + g.out_plane() - 1) / g.out_plane(), 1, per_chunk);
}

// Workspace elements per chunk of dense_forward: the padded planes of a run of samples, and the
// batched product's output.
int64_t forward_scratch(const Geometry& g) {
  if (g.depthwise() || g.pointwise()) return 0;
  const int64_t samples = samples_per_product(g);
  return planes_elements(g, samples) + (samples > 1 ? g.out_per_group * samples * g.out_plane() : 0);
}

// Workspace bytes for the dense kernels, for conv's `forward` on g, and/or its input gradient `dx`
// (backward, or conv_transpose's forward) and weight gradient `dw`. The forward: its batched
// products' outputs. The input gradient through the flipped forward: the flipped weights, then the
// larger of that forward's scratch and dense_backward's for `dw`; otherwise dense_backward's (col2im
// blocks, plus partials with `dw`). Passes run one after another, so the total is the largest.
// `minimum`: one chunk's worth, what validation demands; otherwise the split the kernels will use.
int64_t scratch_bytes(const Geometry& g, bool forward, bool dx, bool dw, size_t element, bool minimum) {
  const auto chunks = [&](const Geometry& h) { return minimum ? 1 : batch_chunks(h); };
  const int64_t own_forward = forward ? chunks(g) * forward_scratch(g) * static_cast<int64_t>(element) : 0;
  if (!dx && !dw) return own_forward;
  const std::optional<Geometry> f = dx ? flipped_geometry(g) : std::nullopt;
  const int64_t own = dense_scratch(g, dx && !f, dw).bytes_for(chunks(g), element);
  if (!f) return std::max(own_forward, own);
  const int64_t weights = g.out_channels() * g.col_rows() * static_cast<int64_t>(element);
  const int64_t flipped_forward = chunks(*f) * forward_scratch(*f) * static_cast<int64_t>(element);
  return std::max(own_forward, weights + std::max(flipped_forward, dw ? own : int64_t{0}));
}

// ------------------------------------------------------------------------------- small helpers

// t (N, C, plane) += b[c]
template <class T>
void add_channel_bias(T* t, int64_t batch, int64_t channels, int64_t plane, const T* b) {
  if (!b) return;
  parallel_for(batch * channels, grain_for(plane), [&](int, int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      T* __restrict__ row = t + i * plane;
      const T v = b[i % channels];
#pragma omp simd
      for (int64_t p = 0; p < plane; ++p) row[p] += v;
    }
  });
}

// out[c] = Σ_n Σ_p t[n, c, p], in double
template <class T>
void channel_sums(const T* t, int64_t batch, int64_t channels, int64_t plane, T* out) {
  if (!out) return;
  parallel_for(channels, grain_for(batch * plane), [&](int, int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      double total = 0;
      for (int64_t n = 0; n < batch; ++n) {
        const T* __restrict__ row = t + (n * channels + c) * plane;
        double s = 0;
#pragma omp simd reduction(+ : s)
        for (int64_t p = 0; p < plane; ++p) s += row[p];
        total += s;
      }
      out[c] = static_cast<T>(total);
    }
  });
}

template <class T>
void zero(T* t, int64_t n) {
  if (t && n > 0) std::memset(t, 0, sizeof(T) * n);
}

// --------------------------------------------------------------------------------- dense kernels

// y (N, G·Co, P) = conv(x) + b: implicit GEMMs, one per sample and group, or one per run of
// samples_per_product() samples and group through the workspace.
template <class T>
void dense_forward(const Geometry& g, const T* x, const T* w, const T* b, T* y, T* ws, int64_t ws_elements) {
  const int64_t P = g.out_plane(), R = g.col_rows(), Co = g.out_per_group, S = samples_per_product(g);
  const int64_t x_group = g.in_per_group * g.in_plane(), y_group = Co * P, per_chunk = forward_scratch(g);
  const int max_chunks = per_chunk > 0 ? static_cast<int>(std::max<int64_t>(1, ws_elements / per_chunk)) : 1 << 30;
  const int chunks = std::max(1, std::min(batch_chunks(g), max_chunks));
  blas::parallel_for_gemm(
      g.batch, 1,
      [&](int chunk, int64_t n0, int64_t n1) {
        T* scratch = per_chunk > 0 ? ws + chunk * per_chunk : nullptr;
        for (int64_t n = n0; n < n1; n += S) {
          const int64_t count = std::min(S, n1 - n);
          for (int64_t grp = 0; grp < g.groups; ++grp) {
            const T* xg = x + (n * g.groups + grp) * x_group;  // (Ci, H, W)
            T* yg = y + (n * g.groups + grp) * y_group;        // (Co, P)
            const T* wg = w + grp * Co * R;                    // (Co, Ci·K)
            if (g.pointwise()) {
              blas::gemm<T>(Trans::No, Trans::No, Co, P, R, T(1), wg, R, xg, P, T(0), yg, P);
              continue;
            }
            T* xp = scratch;                                                  // (count, Ci, Hp, Wp)
            T* product = count == 1 ? yg : scratch + planes_elements(g, S);   // (Co, count·P)
            pad_planes(g, xg, count, g.groups * x_group, xp);
            blas::gemm_panels<T>(Trans::No, Co, count * P, R, T(1), wg, R, PlanePanels<T>(g, xp, false), T(0), product,
                                 count * P);
            for (int64_t s = 0; s < count && count > 1; ++s)
              for (int64_t o = 0; o < Co; ++o)
                std::memcpy(yg + s * g.groups * y_group + o * P, product + o * count * P + s * P, sizeof(T) * P);
          }
          add_channel_bias(y + n * g.out_channels() * P, count, g.out_channels(), P, b);
        }
      },
      chunks);
}

// dW_g += dy · colᵀ for `count` samples of one group side by side (k = count·P, or count·E over
// padded planes): dy and x are the group's first sample, the next ones a sample's stride further.
template <class T>
void weight_gradient_run(const Geometry& g, const T* dy, const T* x, int64_t count, T* scratch, T beta, T* dw) {
  const int64_t P = g.out_plane(), R = g.col_rows(), Co = g.out_per_group;
  const int64_t x_stride = g.in_channels() * g.in_plane(), dy_stride = g.out_channels() * P;
  T* xp = scratch;                                         // (count, Ci, Hp, Wp)
  T* side = scratch + planes_elements(g, count);            // (Co, count·P)
  pad_planes(g, x, count, x_stride, xp);
  for (int64_t s = 0; s < count && count > 1; ++s)
    for (int64_t o = 0; o < Co; ++o) std::memcpy(side + (o * count + s) * P, dy + s * dy_stride + o * P, sizeof(T) * P);
  blas::gemm_panels<T>(Trans::No, Co, R, count * P, T(1), count > 1 ? side : dy, count * P,
                       PlanePanels<T>(g, xp, true), beta, dw, R);
}

// dx (x's shape) and dw (weight's shape) from dy; either may be null.
template <class T>
void dense_backward(const Geometry& g, const T* dy, const T* x, const T* w, T* dx, T* dw, T* ws,
                    int64_t ws_elements) {
  const DenseScratch scratch = dense_scratch(g, dx != nullptr, dw != nullptr);
  const int64_t P = g.out_plane(), R = g.col_rows(), Co = g.out_per_group, block = block_columns(g);
  const int64_t x_group = g.in_per_group * g.in_plane(), y_group = Co * P;
  const int64_t run = dw ? samples_per_weight_product(g) : 1;
  const int chunks = std::max(1, std::min(batch_chunks(g), scratch.chunks_in(ws_elements)));
  std::vector<char> started(chunks, 0);  // whether a chunk's dW has received its first product
  blas::parallel_for_gemm(
      g.batch, 1,
      [&](int chunk, int64_t n0, int64_t n1) {
        T* col = ws + chunk * scratch.col_elements;
        // Chunk 0 accumulates in dW itself, the others in their partials after the columns.
        T* dw_chunk = chunk == 0 ? dw : ws + chunks * scratch.col_elements + (chunk - 1) * scratch.partial_elements;
        for (int64_t n = n0; n < n1; n += run) {
          const int64_t count = std::min(run, n1 - n);
          for (int64_t grp = 0; dw && grp < g.groups; ++grp) {
            const T* xg = x + (n * g.groups + grp) * x_group;
            const T* dyg = dy + (n * g.groups + grp) * y_group;
            T* dwg = dw_chunk + grp * Co * R;
            const T beta = started[chunk] ? T(1) : T(0);
            if (g.pointwise())  // run == 1
              blas::gemm<T>(Trans::No, Trans::Yes, Co, R, P, T(1), dyg, P, xg, P, beta, dwg, R);
            else
              weight_gradient_run(g, dyg, xg, count, col, beta, dwg);
          }
          started[chunk] = 1;
          for (int64_t sample = n; dx && sample < n + count; ++sample) {
            zero(dx + sample * g.groups * x_group, g.groups * x_group);
            for (int64_t grp = 0; grp < g.groups; ++grp) {
              const T* dyg = dy + (sample * g.groups + grp) * y_group;
              const T* wg = w + grp * Co * R;
              T* dxg = dx + (sample * g.groups + grp) * x_group;
              if (g.pointwise()) {
                blas::gemm<T>(Trans::Yes, Trans::No, R, P, Co, T(1), wg, R, dyg, P, T(0), dxg, P);
                continue;
              }
              for (int64_t p0 = 0; p0 < P; p0 += block) {
                const int64_t cols = std::min(block, P - p0);
                blas::gemm<T>(Trans::Yes, Trans::No, R, cols, Co, T(1), wg, R, dyg + p0, P, T(0), col, cols);
                col2im_add(g, col, p0, p0 + cols, dxg);
              }
            }
          }
        }
      },
      chunks);
  if (!dw) return;
  if (g.batch == 0) {
    zero(dw, g.out_channels() * R);
    return;
  }
  // dW += the other chunks' partials, in chunk order.
  const int64_t count = g.out_channels() * R;
  parallel_for(count, kGrainWork, [&](int, int64_t i0, int64_t i1) {
    for (int c = 1; c < chunks; ++c) {
      if (!started[c]) continue;
      const T* __restrict__ part = ws + chunks * scratch.col_elements + (c - 1) * scratch.partial_elements;
#pragma omp simd
      for (int64_t i = i0; i < i1; ++i) dw[i] += part[i];
    }
  });
}

// ----------------------------------------------------------------------------- depthwise kernels

// Columns [c, c + B·L) of one output row, B vectors of L = simd::kLanes<T> values: every tap's
// product accumulated in registers, one store per vector. Taps go in (kh, kw) order, as the scalar
// loop adds them, so every column gets the same sum whichever block computes it.
template <int B, class T>
[[gnu::always_inline]] inline void taps_block(const T* __restrict__ base, int64_t in_cols, const T* __restrict__ taps,
                                              int64_t kernel_h, int64_t kernel_w, int64_t tap_step_h,
                                              int64_t tap_step_w, T init, int64_t c, T* __restrict__ row) {
  using V = simd::Vec<T>;
  constexpr int64_t L = simd::kLanes<T>;
  V acc[B];
  for (int b = 0; b < B; ++b) acc[b] = V{} + init;
  for (int64_t kh = 0; kh < kernel_h; ++kh) {
    const T* __restrict__ src_row = base + kh * tap_step_h * in_cols + c;
    for (int64_t kw = 0; kw < kernel_w; ++kw) {
      const T tap = taps[kh * kernel_w + kw];
      const T* __restrict__ src = src_row + kw * tap_step_w;
      for (int b = 0; b < B; ++b) acc[b] += tap * simd::load_unaligned(src + b * L);
    }
  }
  for (int b = 0; b < B; ++b) simd::store_unaligned(row + c + b * L, acc[b]);
}

// Out (n_rows, n_cols) = Σ_{kh, kw} taps[kh, kw] · in[r·S_h + kh·D_h·sign, c·S_w + kw·D_w·sign] read from a
// padded plane (no bounds). Stride 1 (contiguous loads, the common case): blocks of up to
// kTapBlock vectors of output columns hold every tap's product in registers and are stored once;
// the last vector of a row ends at its last column, overlapping the one before it (recomputing a
// column gives the same value). kTapBlock = 8 independent sums keep both FMA pipes busy (latency
// 4); the first version added each tap into the output row in memory, 49 read-modify-writes of
// every output of a 7×7 kernel (bench/RESULTS.md, "depthwise").
template <class T>
void taps_rows(const T* __restrict__ in, int64_t in_cols, const T* __restrict__ taps, int64_t kernel_h,
               int64_t kernel_w, int64_t tap_step_h, int64_t tap_step_w, int64_t stride_h, int64_t stride_w,
               int64_t n_rows, int64_t n_cols, T init, T* __restrict__ out) {
  constexpr int64_t L = simd::kLanes<T>;
  constexpr int kTapBlock = 8;
  for (int64_t r = 0; r < n_rows; ++r) {
    const T* __restrict__ base = in + r * stride_h * in_cols;
    T* __restrict__ row = out + r * n_cols;
    if (stride_w == 1 && n_cols >= L) {
      auto block = [&](auto vectors, int64_t c) {
        taps_block<decltype(vectors)::value>(base, in_cols, taps, kernel_h, kernel_w, tap_step_h, tap_step_w, init,
                                             c, row);
      };
      int64_t c = 0;
      for (; c + kTapBlock * L <= n_cols; c += kTapBlock * L) block(std::integral_constant<int, kTapBlock>{}, c);
      const int64_t whole = (n_cols - c) / L;  // 0 … kTapBlock − 1 vectors left
      switch (whole) {
        case 7: block(std::integral_constant<int, 7>{}, c); break;
        case 6: block(std::integral_constant<int, 6>{}, c); break;
        case 5: block(std::integral_constant<int, 5>{}, c); break;
        case 4: block(std::integral_constant<int, 4>{}, c); break;
        case 3: block(std::integral_constant<int, 3>{}, c); break;
        case 2: block(std::integral_constant<int, 2>{}, c); break;
        case 1: block(std::integral_constant<int, 1>{}, c); break;
        default: break;
      }
      c += whole * L;
      if (c < n_cols) block(std::integral_constant<int, 1>{}, n_cols - L);
      continue;
    }
    for (int64_t c = 0; c < n_cols; ++c) {
      T s = init;
      for (int64_t kh = 0; kh < kernel_h; ++kh)
        for (int64_t kw = 0; kw < kernel_w; ++kw)
          s += taps[kh * kernel_w + kw] * base[kh * tap_step_h * in_cols + c * stride_w + kw * tap_step_w];
      row[c] = s;
    }
  }
}

// y plane (n, co) reads input channel co / Co (one input channel per group), through a padded copy
// of that plane (per thread, in L1/L2).
template <class T>
void depthwise_forward(const Geometry& g, const T* x, const T* w, const T* b, T* y) {
  const int64_t C = g.out_channels(), Co = g.out_per_group, K = g.kernel_size();
  const int64_t rows = (g.out_h - 1) * g.stride_h + (g.kernel_h - 1) * g.dilation_h + 1;
  const int64_t cols = (g.out_w - 1) * g.stride_w + (g.kernel_w - 1) * g.dilation_w + 1;
  parallel_for(g.batch * C, grain_for(g.out_plane() * K), [&](int, int64_t i0, int64_t i1) {
    std::vector<T> padded(rows * cols);
    int64_t padded_plane = -1;  // the input plane held in `padded`
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t n = i / C, co = i % C;
      const int64_t plane = n * g.groups + co / Co;
      if (plane != padded_plane) {
        pad_plane(x + plane * g.in_plane(), g.in_h, g.in_w, g.pad_h, g.pad_w, rows, cols, padded.data());
        padded_plane = plane;
      }
      taps_rows(padded.data(), cols, w + co * K, g.kernel_h, g.kernel_w, g.dilation_h, g.dilation_w, g.stride_h,
                g.stride_w, g.out_h, g.out_w, b ? b[co] : T(0), y + i * g.out_plane());
    }
  });
}

// dx = convᵀ(dy) for stride 1: dx[ih, iw] = Σ_{j, kh, kw} w[c·Co + j, kh, kw] · dy[c·Co + j, ih + P − kh·D, ...],
// a correlation of a padded dy plane with the kernel read backwards (taps_rows with negative steps).
// The padded plane covers dy rows ih + P − kh·D ∈ [−(kH − 1)·D, H + P), zero outside [0, Ho).
template <class T>
void depthwise_backward_input_stride1(const Geometry& g, const T* dy, const T* w, T* dx) {
  const int64_t Cin = g.in_channels(), Co = g.out_per_group, K = g.kernel_size();
  const int64_t margin_h = (g.kernel_h - 1) * g.dilation_h, margin_w = (g.kernel_w - 1) * g.dilation_w;
  const int64_t rows = g.in_h + g.pad_h + margin_h, cols = g.in_w + g.pad_w + margin_w;
  parallel_for(g.batch * Cin, grain_for(g.out_plane() * K * Co), [&](int, int64_t i0, int64_t i1) {
    std::vector<T> padded(rows * cols), part(g.in_plane());
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t n = i / Cin, c = i % Cin;
      T* dxp = dx + i * g.in_plane();
      for (int64_t j = 0; j < Co; ++j) {
        const int64_t co = c * Co + j;
        pad_plane(dy + (n * g.out_channels() + co) * g.out_plane(), g.out_h, g.out_w, margin_h, margin_w, rows, cols,
                  padded.data());
        // Tap (kh, kw) reads padded[ih + P + (kH − 1 − kh)·D, ...]: start at the last tap, step −D.
        const T* start = padded.data() + (g.pad_h + margin_h) * cols + g.pad_w + margin_w;
        taps_rows(start, cols, w + co * K, g.kernel_h, g.kernel_w, -g.dilation_h, -g.dilation_w, 1, 1, g.in_h, g.in_w,
                  T(0), j == 0 ? dxp : part.data());
        if (j > 0)
          for (int64_t p = 0; p < g.in_plane(); ++p) dxp[p] += part[p];
      }
    }
  });
}

// dx plane (n, c) gathers the Co output channels c·Co + j that read it (any stride: a scatter).
template <class T>
void depthwise_backward_input(const Geometry& g, const T* dy, const T* w, T* dx) {
  if (g.stride_h == 1 && g.stride_w == 1) return depthwise_backward_input_stride1(g, dy, w, dx);
  const int64_t Cin = g.in_channels(), Co = g.out_per_group, K = g.kernel_size();
  parallel_for(g.batch * Cin, grain_for(g.out_plane() * K * Co), [&](int, int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t n = i / Cin, c = i % Cin;
      T* dxp = dx + i * g.in_plane();
      std::fill(dxp, dxp + g.in_plane(), T(0));
      for (int64_t j = 0; j < Co; ++j) {
        const int64_t co = c * Co + j;
        const T* dyp = dy + (n * g.out_channels() + co) * g.out_plane();
        const T* wp = w + co * K;
        for (int64_t oh = 0; oh < g.out_h; ++oh) {
          const T* __restrict__ dyr = dyp + oh * g.out_w;
          for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
            const int64_t ih = oh * g.stride_h - g.pad_h + kh * g.dilation_h;
            if (ih < 0 || ih >= g.in_h) continue;
            for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
              const T wv = wp[kh * g.kernel_w + kw];
              const int64_t offset = kw * g.dilation_w - g.pad_w;
              const Range r = valid_outputs(offset, g.stride_w, g.in_w, g.out_w);
              T* __restrict__ dxr = dxp + ih * g.in_w + offset;  // dxr[ow·S]
              if (g.stride_w == 1) {
#pragma omp simd
                for (int64_t ow = r.lo; ow < r.hi; ++ow) dxr[ow] += wv * dyr[ow];
              } else {
                for (int64_t ow = r.lo; ow < r.hi; ++ow) dxr[ow * g.stride_w] += wv * dyr[ow];
              }
            }
          }
        }
      }
    }
  });
}

// dw[co, kh, kw] = Σ_n Σ_oh (Σ_ow dy[n, co, oh, ow] · x_padded[n, co/Co, oh·S + kh·D, ow·S + kw·D]): the
// inner sum in T along a row (vectorized, no bounds: x is read from a padded copy of its plane), the
// outer ones in double. Threads split output channels.
template <class T>
void depthwise_backward_weight(const Geometry& g, const T* dy, const T* x, T* dw) {
  const int64_t C = g.out_channels(), Co = g.out_per_group, K = g.kernel_size();
  const int64_t rows = (g.out_h - 1) * g.stride_h + (g.kernel_h - 1) * g.dilation_h + 1;
  const int64_t cols = (g.out_w - 1) * g.stride_w + (g.kernel_w - 1) * g.dilation_w + 1;
  parallel_for(C, grain_for(g.batch * g.out_plane() * K), [&](int, int64_t c0, int64_t c1) {
    std::vector<double> acc(K);
    std::vector<T> padded(rows * cols);
    for (int64_t co = c0; co < c1; ++co) {
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t n = 0; n < g.batch; ++n) {
        pad_plane(x + (n * g.groups + co / Co) * g.in_plane(), g.in_h, g.in_w, g.pad_h, g.pad_w, rows, cols,
                  padded.data());
        const T* dyp = dy + (n * C + co) * g.out_plane();
        for (int64_t oh = 0; oh < g.out_h; ++oh) {
          const T* __restrict__ dyr = dyp + oh * g.out_w;
          for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
            const T* xrow = padded.data() + (oh * g.stride_h + kh * g.dilation_h) * cols;
            for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
              const T* __restrict__ xr = xrow + kw * g.dilation_w;
              T s = 0;
              if (g.stride_w == 1) {
#pragma omp simd reduction(+ : s)
                for (int64_t ow = 0; ow < g.out_w; ++ow) s += dyr[ow] * xr[ow];
              } else {
                for (int64_t ow = 0; ow < g.out_w; ++ow) s += dyr[ow] * xr[ow * g.stride_w];
              }
              acc[kh * g.kernel_w + kw] += s;
            }
          }
        }
      }
      for (int64_t k = 0; k < K; ++k) dw[co * K + k] = static_cast<T>(acc[k]);
    }
  });
}

// ----------------------------------------------------------------------- the three directions

template <class T>
void forward(const Geometry& g, const T* x, const T* w, const T* b, T* y, T* ws, int64_t ws_elements) {
  if (g.batch == 0 || g.out_channels() == 0) return;
  if (g.depthwise()) {
    depthwise_forward(g, x, w, b, y);
  } else {
    dense_forward(g, x, w, b, y, ws, ws_elements);
  }
}

template <class T>
void backward(const Geometry& g, const T* dy, const T* x, const T* w, T* dx, T* dw, T* ws, int64_t ws_elements) {
  if (g.batch == 0 || g.out_channels() == 0 || g.in_channels() == 0) {
    zero(dx, g.batch * g.in_channels() * g.in_plane());
    zero(dw, g.out_channels() * g.col_rows());
    return;
  }
  if (g.depthwise()) {
    if (dx) depthwise_backward_input(g, dy, w, dx);
    if (dw) depthwise_backward_weight(g, dy, x, dw);
    return;
  }
  const std::optional<Geometry> f = dx ? flipped_geometry(g) : std::nullopt;
  if (!f) {
    dense_backward(g, dy, x, w, dx, dw, ws, ws_elements);
    return;
  }
  const int64_t weights = g.out_channels() * g.col_rows();
  flip_weights(g, w, ws);
  // f may be depthwise (one output channel per group here): forward() picks the kernel.
  forward(*f, dy, static_cast<const T*>(ws), static_cast<const T*>(nullptr), dx, ws + weights, ws_elements - weights);
  if (dw) dense_backward(g, dy, x, w, static_cast<T*>(nullptr), dw, ws + weights, ws_elements - weights);
}

template <class T>
T* workspace_ptr(const OptView& ws) {
  return ws ? ws->data_as<T>() : nullptr;
}
template <class T>
int64_t workspace_elements(const OptView& ws) {
  return ws ? ws->numel() / static_cast<int64_t>(sizeof(T)) : 0;
}

size_t element_size(DType dtype) { return dtype == DType::Float64 ? sizeof(double) : sizeof(float); }

// Geometry for a workspace-size query; nullopt when validation would reject the arguments.
template <class F>
int64_t size_or_zero(const F& f) {
  try {
    return f();
  } catch (const Error&) {
    return 0;
  }
}

}  // namespace

// ------------------------------------------------------------------------------- entry points

template <>
int64_t conv_forward_workspace_size<DeviceType::CPU>(const TensorView& x, const TensorView& weight, const Ints& stride,
                                                     const Ints& padding_begin, const Ints& padding_end,
                                                     const Ints& dilation, int64_t groups, const TensorView& y) {
  return size_or_zero([&] {
    const Geometry g = check_conv_forward(DeviceType::CPU, x, weight, std::nullopt, stride, padding_begin,
                                          padding_end, dilation, groups, y);
    return scratch_bytes(g, true, false, false, element_size(x.dtype), false);
  });
}

template <>
void conv_forward<DeviceType::CPU>(const TensorView& x, const TensorView& weight, const OptView& bias,
                                   const Ints& stride, const Ints& padding_begin, const Ints& padding_end,
                                   const Ints& dilation, int64_t groups, const TensorView& y,
                                   const OptView& workspace, std::uintptr_t) {
  const Geometry g = check_conv_forward(DeviceType::CPU, x, weight, bias, stride, padding_begin, padding_end,
                                        dilation, groups, y);
  prefer_huge_pages(y);
  check_workspace("conv_forward", workspace, scratch_bytes(g, true, false, false, element_size(x.dtype), true), x);
  dispatch_cpu_floating(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    forward<T>(g, x.data_as<T>(), weight.data_as<T>(), ptr_or_null<T>(bias), y.data_as<T>(),
               workspace_ptr<T>(workspace), workspace_elements<T>(workspace));
  });
}

template <>
int64_t conv_backward_workspace_size<DeviceType::CPU>(const TensorView& dy, const TensorView& x,
                                                      const TensorView& weight, const Ints& stride,
                                                      const Ints& padding_begin, const Ints& padding_end,
                                                      const Ints& dilation, int64_t groups) {
  return size_or_zero([&] {
    const Geometry g = check_conv_backward(DeviceType::CPU, dy, x, weight, stride, padding_begin, padding_end,
                                           dilation, groups, std::nullopt, std::nullopt, std::nullopt);
    return scratch_bytes(g, false, true, true, element_size(x.dtype), false);
  });
}

template <>
void conv_backward<DeviceType::CPU>(const TensorView& dy, const TensorView& x, const TensorView& weight,
                                    const Ints& stride, const Ints& padding_begin, const Ints& padding_end,
                                    const Ints& dilation, int64_t groups, const OptView& dx, const OptView& dweight,
                                    const OptView& dbias, const OptView& workspace, std::uintptr_t) {
  const Geometry g = check_conv_backward(DeviceType::CPU, dy, x, weight, stride, padding_begin, padding_end,
                                         dilation, groups, dx, dweight, dbias);
  prefer_huge_pages(dx);
  prefer_huge_pages(dweight);
  if (dx || dweight)
    check_workspace("conv_backward", workspace,
                    scratch_bytes(g, false, dx.has_value(), dweight.has_value(), element_size(x.dtype), true), x);
  dispatch_cpu_floating(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (dx || dweight)
      backward<T>(g, dy.data_as<T>(), x.data_as<T>(), weight.data_as<T>(), ptr_or_null<T>(dx),
                  ptr_or_null<T>(dweight), workspace_ptr<T>(workspace), workspace_elements<T>(workspace));
    channel_sums<T>(dy.data_as<T>(), g.batch, g.out_channels(), g.out_plane(), ptr_or_null<T>(dbias));
  });
}

template <>
int64_t conv_transpose_forward_workspace_size<DeviceType::CPU>(const TensorView& x, const TensorView& weight,
                                                               const Ints& stride, const Ints& padding,
                                                               const Ints& dilation, int64_t groups,
                                                               const TensorView& y) {
  return size_or_zero([&] {
    const Geometry g = check_conv_transpose_forward(DeviceType::CPU, x, weight, std::nullopt, stride, padding,
                                                    dilation, groups, y);
    return scratch_bytes(g, false, true, false, element_size(x.dtype), false);
  });
}

template <>
void conv_transpose_forward<DeviceType::CPU>(const TensorView& x, const TensorView& weight, const OptView& bias,
                                             const Ints& stride, const Ints& padding, const Ints& dilation,
                                             int64_t groups, const TensorView& y, const OptView& workspace,
                                             std::uintptr_t) {
  const Geometry g = check_conv_transpose_forward(DeviceType::CPU, x, weight, bias, stride, padding, dilation,
                                                  groups, y);
  prefer_huge_pages(y);
  check_workspace("conv_transpose_forward", workspace, scratch_bytes(g, false, true, false, element_size(x.dtype), true), x);
  dispatch_cpu_floating(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    // y is conv's input side: y = convᵀ(x), conv's backward to its input with dy = x.
    backward<T>(g, x.data_as<T>(), nullptr, weight.data_as<T>(), y.data_as<T>(), nullptr,
                workspace_ptr<T>(workspace), workspace_elements<T>(workspace));
    add_channel_bias<T>(y.data_as<T>(), g.batch, g.in_channels(), g.in_plane(), ptr_or_null<T>(bias));
  });
}

template <>
int64_t conv_transpose_backward_workspace_size<DeviceType::CPU>(const TensorView& dy, const TensorView& x,
                                                                const TensorView& weight, const Ints& stride,
                                                                const Ints& padding, const Ints& dilation,
                                                                int64_t groups) {
  return size_or_zero([&] {
    const Geometry g = check_conv_transpose_backward(DeviceType::CPU, dy, x, weight, stride, padding, dilation,
                                                     groups, std::nullopt, std::nullopt, std::nullopt);
    // dx is conv's forward, dW conv's weight gradient (no dx there: the flipped path never applies).
    return scratch_bytes(g, true, false, true, element_size(x.dtype), false);
  });
}

template <>
void conv_transpose_backward<DeviceType::CPU>(const TensorView& dy, const TensorView& x, const TensorView& weight,
                                              const Ints& stride, const Ints& padding, const Ints& dilation,
                                              int64_t groups, const OptView& dx, const OptView& dweight,
                                              const OptView& dbias, const OptView& workspace, std::uintptr_t) {
  const Geometry g = check_conv_transpose_backward(DeviceType::CPU, dy, x, weight, stride, padding, dilation,
                                                   groups, dx, dweight, dbias);
  prefer_huge_pages(dx);
  prefer_huge_pages(dweight);
  if (dx || dweight)
    check_workspace("conv_transpose_backward", workspace,
                    scratch_bytes(g, dx.has_value(), false, dweight.has_value(), element_size(x.dtype), true), x);
  dispatch_cpu_floating(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    T* ws = workspace_ptr<T>(workspace);
    const int64_t ws_elements = workspace_elements<T>(workspace);
    // dx = conv(dy): conv's forward with dy on its input side, no bias.
    if (dx) forward<T>(g, dy.data_as<T>(), weight.data_as<T>(), nullptr, dx->data_as<T>(), ws, ws_elements);
    // dW: conv's weight gradient with conv's x = dy and conv's dy = x.
    if (dweight)
      backward<T>(g, x.data_as<T>(), dy.data_as<T>(), weight.data_as<T>(), nullptr, dweight->data_as<T>(), ws,
                  ws_elements);
    channel_sums<T>(dy.data_as<T>(), g.batch, g.in_channels(), g.in_plane(), ptr_or_null<T>(dbias));
  });
}

}  // namespace replearn::conv
