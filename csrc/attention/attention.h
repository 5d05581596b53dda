// Attention family: the C++ API (plain functions over TensorViews).
//
//   attention   O = softmax(c · Q Kᵀ + bias + mask) · V,   c = scale / temperature
//
// computed the flash way (Dao et al. 2022, "FlashAttention", Alg. 1 and 2): key blocks are visited
// with an online softmax (Milakov & Gimelshein 2018) so the (Tq, Tk) score matrix never exists in
// memory; forward saves only O and the per-row log-sum-exp L = log Σ_j exp(s_ij), and backward
// recomputes P = exp(S − L) tile by tile, using D_i = Σ_k dO_ik O_ik (Dao 2023, FlashAttention-2 §3.2)
// so that dS = P ∘ (dP − D) needs no second pass over the keys. Extra memory is O(B·H·Tq).
//
// Shapes: q (B, H, Tq, d), k (B, Hkv, Tk, d), v (B, Hkv, Tk, dv), H % Hkv == 0 (grouped-query and
// multi-query attention: query head h reads key/value head h / (H / Hkv)), d, dv ≤ 256; out
// (B, H, Tq, dv); lse (B, H, Tq) in stats_dtype (float64 for float64 inputs, float32 otherwise).
//
// Masks, all optional and combinable:
// - causal: query i sees key j iff j ≤ i + (Tk − Tq) (aligned to the bottom-right corner, which is
//   what decoding with a key/value cache needs; equal to the usual lower triangle when Tq == Tk);
// - key_padding_mask (B, Tk), Bool or UInt8: nonzero = ignore that key (torch.nn.MultiheadAttention's
//   convention);
// - attn_bias: additive, 4-D, each dim either 1 (broadcast) or the full size of (B, H, Tq, Tk),
//   same dtype as q; -inf entries mask. Its gradient dS is reduced over the broadcast dims.
// A query row that sees no key gets O = 0, L = -inf and zero gradients (never NaN).
//
// Dropout on the probabilities: keep (b, h, i, j) is a pure function of (seed, b, h, i, j)
// (dropout_keep below), so backward regenerates the mask instead of storing it. Kept probabilities
// are scaled by 1 / (1 − p); L is the log-sum-exp before dropout.
//
// Conventions as in the norm family: callers allocate outputs and workspaces, tensors are
// contiguous, and every function validates all of its arguments before it touches memory.
#pragma once

#include <cstdint>
#include <optional>

#include "core/tensor_view.h"

#if defined(__CUDACC__)
#define REPLEARN_HOST_DEVICE __host__ __device__
#else
#define REPLEARN_HOST_DEVICE
#endif

namespace replearn::attention {

using OptView = std::optional<TensorView>;

constexpr int64_t kMaxHeadDim = 256;

// Geometry derived from the argument shapes by validation (validate.cpp).
struct AttentionDims {
  int64_t batch, heads, kv_heads, q_len, k_len, head_dim, value_dim;
  // attn_bias strides in elements, 0 along broadcast dims; has_bias false when there is none.
  bool has_bias = false;
  int64_t bias_stride[4] = {0, 0, 0, 0};
  int64_t bias_numel = 0;
  int64_t group() const { return heads / kv_heads; }
  int64_t causal_offset() const { return k_len - q_len; }  // query i sees keys j ≤ i + offset
  // The bias is shared by several (b, h) pairs: its gradient sums over them.
  bool bias_broadcast_bh() const {
    return has_bias && ((batch > 1 && bias_stride[0] == 0) || (heads > 1 && bias_stride[1] == 0));
  }
};

// ------------------------------------------------------------------------------------ dropout
// A counter-based generator: the splitmix64 finalizer (Steele, Lea & Flood 2014, "Fast splittable
// pseudorandom number generators"; constants from Vigna's splitmix64) applied to a Weyl sequence
// indexed by the element's position. Identical on both devices, so CPU and CUDA draw the same mask.
REPLEARN_HOST_DEVICE inline uint64_t splitmix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// The per-call key: the seed mixed once, so that nearby seeds give unrelated streams.
REPLEARN_HOST_DEVICE inline uint64_t dropout_key(int64_t seed) {
  return splitmix64(static_cast<uint64_t>(seed) + 0x9E3779B97F4A7C15ull);
}

// Elements are dropped with probability threshold / 2^32 (a 32-bit uniform u is kept iff u ≥ threshold).
REPLEARN_HOST_DEVICE inline uint64_t dropout_threshold(double p) {
  if (p <= 0) return 0;
  if (p >= 1) return uint64_t{1} << 32;
  return static_cast<uint64_t>(p * 4294967296.0);
}

// Whether element `index` = ((b·H + h)·Tq + i)·Tk + j is kept.
REPLEARN_HOST_DEVICE inline bool dropout_keep(uint64_t key, uint64_t index, uint64_t threshold) {
  const uint32_t u = static_cast<uint32_t>(splitmix64(key + (index + 1) * 0x9E3779B97F4A7C15ull) >> 32);
  return u >= threshold;
}

// ------------------------------------------------------------------------------------ validation
AttentionDims check_attention_forward(DeviceType device, const TensorView& q, const TensorView& k,
                                      const TensorView& v, const OptView& key_padding_mask,
                                      const OptView& attn_bias, double scale, double dropout_p,
                                      const TensorView& out, const TensorView& lse);
AttentionDims check_attention_backward(DeviceType device, const TensorView& grad_out, const OptView& grad_lse,
                                       const TensorView& q, const TensorView& k, const TensorView& v,
                                       const TensorView& out, const TensorView& lse,
                                       const OptView& key_padding_mask, const OptView& attn_bias, double scale,
                                       double dropout_p, const OptView& grad_q, const OptView& grad_k,
                                       const OptView& grad_v, const OptView& grad_bias, const OptView& workspace,
                                       int64_t workspace_bytes);
void check_dropout_mask(DeviceType device, const TensorView& mask, double dropout_p);

// ------------------------------------------------------------------------------------ entry points
// One declaration serves both devices (cpu.cpp: DeviceType::CPU, cuda.cu: DeviceType::CUDA).
// `scale` is the full logit multiplier c = scale / temperature; `stream` a cudaStream_t as integer.

template <DeviceType D>
void attention_forward(const TensorView& q, const TensorView& k, const TensorView& v,
                       const OptView& key_padding_mask, const OptView& attn_bias, double scale, bool causal,
                       double dropout_p, int64_t seed, const TensorView& out, const TensorView& lse,
                       std::uintptr_t stream = 0);

// Bytes of scratch attention_backward needs (0: none) for these shapes and requested gradients.
template <DeviceType D>
int64_t attention_backward_workspace_size(const TensorView& q, const TensorView& k, const TensorView& v,
                                          const OptView& attn_bias, bool need_grad_bias);

// grad_lse (B, H, Tq), optional: the cotangent of lse (dL_i/ds_ij = P_ij folds into D_i).
// grad_q, grad_k, grad_v, grad_bias are computed when given (grad_bias needs attn_bias).
template <DeviceType D>
void attention_backward(const TensorView& grad_out, const OptView& grad_lse, const TensorView& q,
                        const TensorView& k, const TensorView& v, const TensorView& out, const TensorView& lse,
                        const OptView& key_padding_mask, const OptView& attn_bias, double scale, bool causal,
                        double dropout_p, int64_t seed, const OptView& grad_q, const OptView& grad_k,
                        const OptView& grad_v, const OptView& grad_bias, const OptView& workspace,
                        std::uintptr_t stream = 0);

// The dropout mask the kernels use, materialized for tests: mask (B, H, Tq, Tk), Bool or UInt8,
// 1 where kept.
template <DeviceType D>
void attention_dropout_mask(const TensorView& mask, double dropout_p, int64_t seed, std::uintptr_t stream = 0);

}  // namespace replearn::attention
