// Argument validation for the attention family, shared by the CPU and CUDA entry points.
// Each check_* function throws replearn::Error naming the argument, or returns the geometry.
#include <cmath>
#include <string>

#include "attention/attention.h"
#include "core/check.h"

namespace replearn::attention {

namespace {

void check_input(Checker& check, const char* arg, const TensorView& t, const TensorView& q) {
  check.floating(arg, t);
  check.same_dtype(arg, t, "q", q);
  REPLEARN_CHECK(t.ndim == 4, Value, check.function(), ": argument '", arg,
                 "' expected 4 dimensions (batch, heads, length, head_dim) but got shape ", t.shape_string());
  check.contiguous(arg, t);
}

// A tensor that must have exactly the shape and dtype of `ref` (outputs, gradients).
void check_like(Checker& check, const char* arg, const TensorView& t, const char* ref_arg, const TensorView& ref) {
  check.floating(arg, t);
  check.same_dtype(arg, t, ref_arg, ref);
  check.same_shape(arg, t, ref_arg, ref);
  check.contiguous(arg, t);
}

AttentionDims input_dims(Checker& check, const TensorView& q, const TensorView& k, const TensorView& v,
                         const OptView& key_padding_mask, const OptView& attn_bias, double scale, double dropout_p) {
  check_input(check, "q", q, q);
  check_input(check, "k", k, q);
  check_input(check, "v", v, q);
  AttentionDims d{q.size(0), q.size(1), k.size(1), q.size(2), k.size(2), q.size(3), v.size(3)};
  const char* fn = check.function();
  REPLEARN_CHECK(k.size(0) == d.batch && v.size(0) == d.batch, Value, fn, ": arguments 'k' and 'v' expected batch ",
                 d.batch, " (the batch of 'q') but got shapes ", k.shape_string(), " and ", v.shape_string());
  REPLEARN_CHECK(k.size(3) == d.head_dim, Value, fn, ": argument 'k' expected head_dim ", d.head_dim,
                 " (the last dim of 'q') but got shape ", k.shape_string());
  REPLEARN_CHECK(v.size(1) == d.kv_heads && v.size(2) == d.k_len, Value, fn, ": argument 'v' expected shape (", d.batch,
                 ", ", d.kv_heads, ", ", d.k_len, ", dv) (heads and length of 'k') but got ", v.shape_string());
  REPLEARN_CHECK(d.kv_heads >= 1 && d.heads % d.kv_heads == 0, Value, fn, ": argument 'k' expected a number of heads",
                 " that divides the ", d.heads, " heads of 'q' but got ", d.kv_heads);
  REPLEARN_CHECK(d.head_dim >= 1 && d.head_dim <= kMaxHeadDim, Value, fn, ": argument 'q' expected head_dim in [1, ",
                 kMaxHeadDim, "] but got ", d.head_dim);
  REPLEARN_CHECK(d.value_dim >= 1 && d.value_dim <= kMaxHeadDim, Value, fn,
                 ": argument 'v' expected value dim in [1, ", kMaxHeadDim, "] but got ", d.value_dim);
  check.value(std::isfinite(scale), "scale", "a finite number", scale);
  check.value(dropout_p >= 0 && dropout_p <= 1, "dropout_p", "a probability in [0, 1]", dropout_p);
  if (key_padding_mask) {
    const TensorView& m = *key_padding_mask;
    REPLEARN_CHECK(m.dtype == DType::Bool || m.dtype == DType::UInt8, Type, fn,
                   ": argument 'key_padding_mask' expected bool but got ", dtype_name(m.dtype));
    check.buffer("key_padding_mask", m, m.dtype, m.numel());
    check.shape("key_padding_mask", m, {d.batch, d.k_len});
  }
  if (attn_bias) {
    const TensorView& b = *attn_bias;
    check.floating("attn_bias", b);
    check.same_dtype("attn_bias", b, "q", q);
    check.contiguous("attn_bias", b);
    const int64_t full[4] = {d.batch, d.heads, d.q_len, d.k_len};
    bool ok = b.ndim == 4;
    for (int i = 0; ok && i < 4; ++i) ok = b.sizes[i] == 1 || b.sizes[i] == full[i];
    REPLEARN_CHECK(ok, Value, fn, ": argument 'attn_bias' expected 4 dims broadcastable to (", d.batch, ", ", d.heads,
                   ", ", d.q_len, ", ", d.k_len, ") but got shape ", b.shape_string());
    d.has_bias = true;
    d.bias_numel = b.numel();
    int64_t stride = 1;
    for (int i = 3; i >= 0; --i) {
      d.bias_stride[i] = b.sizes[i] == 1 ? 0 : stride;
      stride *= b.sizes[i];
    }
  }
  return d;
}

void check_lse(Checker& check, const char* arg, const TensorView& lse, const TensorView& q, const AttentionDims& d) {
  check.buffer(arg, lse, stats_dtype(q.dtype), d.batch * d.heads * d.q_len);
  check.shape(arg, lse, {d.batch, d.heads, d.q_len});
}

void check_out(Checker& check, const char* arg, const TensorView& out, const TensorView& q, const AttentionDims& d) {
  check.floating(arg, out);
  check.same_dtype(arg, out, "q", q);
  check.shape(arg, out, {d.batch, d.heads, d.q_len, d.value_dim});
  check.contiguous(arg, out);
}

}  // namespace

AttentionDims check_attention_forward(DeviceType device, const TensorView& q, const TensorView& k,
                                      const TensorView& v, const OptView& key_padding_mask,
                                      const OptView& attn_bias, double scale, double dropout_p,
                                      const TensorView& out, const TensorView& lse) {
  Checker check("attention_forward", device);
  AttentionDims d = input_dims(check, q, k, v, key_padding_mask, attn_bias, scale, dropout_p);
  check_out(check, "out", out, q, d);
  check_lse(check, "lse", lse, q, d);
  return d;
}

AttentionDims check_attention_backward(DeviceType device, const TensorView& grad_out, const OptView& grad_lse,
                                       const TensorView& q, const TensorView& k, const TensorView& v,
                                       const TensorView& out, const TensorView& lse,
                                       const OptView& key_padding_mask, const OptView& attn_bias, double scale,
                                       double dropout_p, const OptView& grad_q, const OptView& grad_k,
                                       const OptView& grad_v, const OptView& grad_bias, const OptView& workspace,
                                       int64_t workspace_bytes) {
  Checker check("attention_backward", device);
  AttentionDims d = input_dims(check, q, k, v, key_padding_mask, attn_bias, scale, dropout_p);
  check_out(check, "out", out, q, d);
  check_lse(check, "lse", lse, q, d);
  check_out(check, "grad_out", grad_out, q, d);
  if (grad_lse) check_lse(check, "grad_lse", *grad_lse, q, d);
  if (grad_q) check_like(check, "grad_q", *grad_q, "q", q);
  if (grad_k) check_like(check, "grad_k", *grad_k, "k", k);
  if (grad_v) check_like(check, "grad_v", *grad_v, "v", v);
  if (grad_bias) {
    REPLEARN_CHECK(attn_bias.has_value(), Value, check.function(),
                   ": argument 'grad_bias' expected no tensor when there is no attn_bias but got one");
    check_like(check, "grad_bias", *grad_bias, "attn_bias", *attn_bias);
  }
  check.workspace(workspace, workspace_bytes, "q", q);
  return d;
}

void check_dropout_mask(DeviceType device, const TensorView& mask, double dropout_p) {
  Checker check("attention_dropout_mask", device);
  REPLEARN_CHECK(mask.dtype == DType::Bool || mask.dtype == DType::UInt8, Type, check.function(),
                 ": argument 'mask' expected bool but got ", dtype_name(mask.dtype));
  check.buffer("mask", mask, mask.dtype, mask.numel());
  REPLEARN_CHECK(mask.ndim == 4, Value, check.function(), ": argument 'mask' expected shape (B, H, Tq, Tk) but got ",
                 mask.shape_string());
  check.value(dropout_p >= 0 && dropout_p <= 1, "dropout_p", "a probability in [0, 1]", dropout_p);
}

}  // namespace replearn::attention
