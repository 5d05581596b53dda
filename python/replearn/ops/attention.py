"""Fused scaled dot-product attention: flash-style tiling, masks, additive bias, dropout (csrc/attention).

    O = softmax(q·kᵀ · scale / temperature + attn_bias + mask) · v

computed with an online softmax over key tiles (Dao et al. 2022, "FlashAttention"; Dao 2023,
"FlashAttention-2"): the forward keeps only O and the per-row log-sum-exp, and the backward
recomputes the probabilities tile by tile, so extra memory is O(B·H·Tq), never O(Tq·Tk). The
temperature is the course notes' softmax temperature T (§ attention): logits are divided by it.

Masks follow torch.nn.MultiheadAttention: `key_padding_mask` is boolean (B, Tk) with True = ignore
that key; `causal` aligns the lower triangle to the bottom-right corner when Tq < Tk (query i sees
keys j ≤ i + Tk − Tq, what decoding with a key/value cache needs). A row that sees no key returns
zeros (and zero gradients) rather than NaN. `attn_bias` is additive, broadcastable to (B, H, Tq, Tk),
and receives a gradient (relative-position biases: Transformer-XL, T5, Swin).

Dropout (on the probabilities) draws keep/drop from a counter-based hash of (seed, b, h, i, j)
(csrc/attention/attention.h), so backward regenerates the mask; `attention_dropout_mask` exposes it.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch

from .. import _native
from ._registry import BadInput, OpInfo, Sample, check_tensor, define, register_info

__all__ = ["attention", "attention_dropout_mask", "attention_weights"]

MAX_HEAD_DIM = 256  # csrc/attention/attention.h: kMaxHeadDim


def _stats_dtype(q: torch.Tensor) -> torch.dtype:
    return torch.float64 if q.dtype == torch.float64 else torch.float32


def _contiguous(t):
    return None if t is None else t.contiguous()


def _out_shape(q, v):
    return (q.shape[0], q.shape[1], q.shape[2], v.shape[3])


# ======================================================================================== the op


def _attention_impl(q, k, v, key_padding_mask, attn_bias, scale, causal, dropout_p, seed):
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    out = q.new_empty(_out_shape(q, v))
    lse = q.new_empty(q.shape[:3], dtype=_stats_dtype(q))
    _native.launch("attention_forward", q, q, k, v, _contiguous(key_padding_mask), _contiguous(attn_bias), scale,
                   causal, dropout_p, seed, out, lse)  # fmt: skip
    return out, lse


def _check_devices(q, **others):
    """Fake implementations run where no kernel validates devices (torch.compile, meta): check here."""
    for arg, t in others.items():
        if t is not None and t.device != q.device:
            raise ValueError(f"attention: argument '{arg}' expected a tensor on {q.device} like 'q' but got one on {t.device}")


def _attention_fake(q, k, v, key_padding_mask, attn_bias, scale, causal, dropout_p, seed):
    _check_devices(q, k=k, v=v, key_padding_mask=key_padding_mask, attn_bias=attn_bias)
    return q.new_empty(_out_shape(q, v)), q.new_empty(q.shape[:3], dtype=_stats_dtype(q))


def _attention_backward_impl(grad_out, grad_lse, q, k, v, out, lse, key_padding_mask, attn_bias, scale, causal,
                             dropout_p, seed, mask):  # fmt: skip
    q, k, v, out, grad_out = (t.contiguous() for t in (q, k, v, out, grad_out))
    attn_bias = _contiguous(attn_bias)
    grads = [q.new_empty(t.shape) if need and t is not None else None for need, t in zip(mask, (q, k, v, attn_bias))]
    workspace = _native.workspace("attention_backward", q, q, k, v, attn_bias, grads[3] is not None)
    _native.launch("attention_backward", q, grad_out, _contiguous(grad_lse), q, k, v, out, lse,
                   _contiguous(key_padding_mask), attn_bias, scale, causal, dropout_p, seed, *grads, workspace)  # fmt: skip
    return tuple(grads)


def _attention_backward_fake(grad_out, grad_lse, q, k, v, out, lse, key_padding_mask, attn_bias, scale, causal,
                             dropout_p, seed, mask):  # fmt: skip
    return tuple(t.new_empty(t.shape) if need and t is not None else None for need, t in zip(mask, (q, k, v, attn_bias)))


_attention_backward = define(
    "attention_backward(Tensor grad_out, Tensor? grad_lse, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, "
    "Tensor? key_padding_mask, Tensor? attn_bias, float scale, bool causal, float dropout_p, int seed, "
    "bool[4] output_mask) -> (Tensor?, Tensor?, Tensor?, Tensor?)",
    _attention_backward_impl,
    _attention_backward_fake,
)


def _attention_setup(ctx, inputs, output):
    q, k, v, key_padding_mask, attn_bias, scale, causal, dropout_p, seed = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, key_padding_mask, attn_bias)
    ctx.arguments = (scale, causal, dropout_p, seed)


def _attention_grad(ctx, grad_out, grad_lse):
    q, k, v, out, lse, key_padding_mask, attn_bias = ctx.saved_tensors
    need = ctx.needs_input_grad  # (q, k, v, key_padding_mask, attn_bias, scale, causal, dropout_p, seed)
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    dq, dk, dv, dbias = _attention_backward(grad_out, grad_lse, q, k, v, out, lse, key_padding_mask, attn_bias,
                                            *ctx.arguments, [need[0], need[1], need[2], need[4]])  # fmt: skip
    return dq, dk, dv, None, dbias, None, None, None, None


_attention = define(
    "attention(Tensor q, Tensor k, Tensor v, Tensor? key_padding_mask, Tensor? attn_bias, float scale, bool causal, "
    "float dropout_p, int seed) -> (Tensor, Tensor)",
    _attention_impl,
    _attention_fake,
    backward=_attention_grad,
    setup_context=_attention_setup,
)


def _logit_scale(fn: str, q: torch.Tensor, scale: float | None, temperature: float) -> float:
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"{fn}: argument 'temperature' expected a positive finite number but got {temperature!r}")
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1]) if q.shape[-1] > 0 else 1.0
    return float(scale) / float(temperature)


def _check_rank(fn: str, **tensors: torch.Tensor) -> None:
    for arg, t in tensors.items():
        if t.dim() != 4:
            raise ValueError(f"{fn}: argument '{arg}' expected 4 dimensions (batch, heads, length, head_dim) but got "
                             f"shape {tuple(t.shape)}")  # fmt: skip


def _as_4d_bias(attn_bias: torch.Tensor | None) -> torch.Tensor | None:
    if attn_bias is None or attn_bias.dim() == 4:
        return attn_bias
    if attn_bias.dim() > 4:
        raise ValueError(f"attention: argument 'attn_bias' expected at most 4 dimensions but got shape "
                         f"{tuple(attn_bias.shape)}")  # fmt: skip
    return attn_bias.reshape((1,) * (4 - attn_bias.dim()) + tuple(attn_bias.shape))


def _draw_seed(dropout_p: float, seed: int | None, generator: torch.Generator | None) -> int:
    if dropout_p == 0:
        return 0
    if seed is not None:
        return int(seed)
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(-(2**63), 2**63 - 1, (), generator=generator, device=device, dtype=torch.int64).item())


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float | None = None,
    temperature: float = 1.0,
    causal: bool = False,
    key_padding_mask: torch.Tensor | None = None,
    attn_bias: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention, fused and tiled (flash attention), forward and backward native.

    Args:
        q: queries (B, H, Tq, d); float32/float64 on CPU, float32/float16/bfloat16 on CUDA.
        k: keys (B, Hkv, Tk, d) with H % Hkv == 0 (Hkv < H: grouped-query / multi-query attention).
        v: values (B, Hkv, Tk, dv); d, dv ≤ 256.
        scale: logit multiplier, 1/√d by default.
        temperature: logits are divided by it (softmax temperature); must be > 0.
        causal: query i sees keys j ≤ i + Tk − Tq (bottom-right aligned lower triangle).
        key_padding_mask: bool (B, Tk), True = ignore that key (torch.nn.MultiheadAttention's convention).
        attn_bias: additive bias broadcastable to (B, H, Tq, Tk) (fewer dims align to the right), same
            dtype as q; differentiable. -inf entries mask.
        dropout_p: probability of zeroing an attention probability (kept ones scale by 1/(1 − p)).
        seed: dropout seed; when None it is drawn from `generator` (or torch's default generator).
        generator: torch.Generator to draw the seed from.
        return_lse: also return the per-row log-sum-exp of the logits (B, H, Tq), float32 (float64
            for float64 inputs); -inf for rows that see no key.

    Returns:
        The output (B, H, Tq, dv), and the log-sum-exp when return_lse is set.
    """
    for arg, t in (("q", q), ("k", k), ("v", v)):
        check_tensor("attention", arg, t)
    check_tensor("attention", "key_padding_mask", key_padding_mask, optional=True)
    check_tensor("attention", "attn_bias", attn_bias, optional=True)
    _check_rank("attention", q=q, k=k, v=v)
    c = _logit_scale("attention", q, scale, temperature)
    if key_padding_mask is not None and key_padding_mask.dtype != torch.bool:
        raise TypeError(f"attention: argument 'key_padding_mask' expected bool but got {key_padding_mask.dtype}")
    if not 0.0 <= dropout_p <= 1.0:
        raise ValueError(f"attention: argument 'dropout_p' expected a probability in [0, 1] but got {dropout_p}")
    out, lse = _attention(q, k, v, key_padding_mask, _as_4d_bias(attn_bias), c, bool(causal), float(dropout_p),
                          _draw_seed(dropout_p, seed, generator))  # fmt: skip
    return (out, lse) if return_lse else out


def attention_dropout_mask(shape, dropout_p: float, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The keep-mask (True = kept) that `attention(..., dropout_p, seed)` applies to P of shape (B, H, Tq, Tk).

    Drawn by the same native generator the kernels use (identical on CPU and CUDA).
    """
    mask = torch.empty(tuple(shape), dtype=torch.bool, device=device)
    _native.launch("attention_dropout_mask", mask, mask, float(dropout_p), int(seed))
    return mask


# ================================================================================ the reference


def _visible(B, Tq, Tk, causal, key_padding_mask, device):
    """Bool (B, 1, Tq, Tk): which key each query may see under the causal and key-padding masks."""
    visible = torch.ones(B, 1, Tq, Tk, dtype=torch.bool, device=device)
    if causal:
        rows = torch.arange(Tq, device=device)[:, None] + (Tk - Tq)
        visible = visible & (torch.arange(Tk, device=device)[None, :] <= rows)
    if key_padding_mask is not None:
        visible = visible & ~key_padding_mask[:, None, None, :]
    return visible


def _softmax_rows(q, k, scale, temperature, causal, key_padding_mask, attn_bias):
    """P (B, H, Tq, Tk) before dropout, the row sums of e^{s − m}, the row maxima m, and which rows see a key."""
    B, H, Tq, _ = q.shape
    Tk = k.shape[2]
    k = k.repeat_interleave(H // k.shape[1], dim=1)
    s = q @ k.transpose(-1, -2) * _logit_scale("attention", q, scale, temperature)
    if attn_bias is not None:
        s = s + attn_bias
    s = s.masked_fill(~_visible(B, Tq, Tk, causal, key_padding_mask, q.device), -math.inf)
    m = s.amax(-1, keepdim=True)
    seen = m > -math.inf  # rows that see at least one key
    m = torch.where(seen, m, torch.zeros_like(m))
    e = torch.exp(s - m)
    total = e.sum(-1, keepdim=True)
    return e / torch.where(seen, total, torch.ones_like(total)), total, m, seen


def attention_weights(q, k, *, scale=None, temperature=1.0, causal=False, key_padding_mask=None, attn_bias=None,
                      dropout_p=0.0, seed=None):  # fmt: skip
    """The attention probabilities (B, H, Tq, Tk), in plain PyTorch: what `attention` never materializes.

    For callers that must return the weights (nn.MultiheadAttention with need_weights=True). With
    dropout and the same seed, they are the dropped and rescaled probabilities `attention` applied.
    Rows that see no key are zero.
    """
    p, _, _, _ = _softmax_rows(q, k, scale, temperature, causal, key_padding_mask, attn_bias)
    if dropout_p > 0:
        keep = attention_dropout_mask(p.shape, dropout_p, _draw_seed(dropout_p, seed, None), q.device)
        p = p * keep / (1.0 - dropout_p) if dropout_p < 1 else p * 0
    return p


def attention_reference(q, k, v, *, scale=None, temperature=1.0, causal=False, key_padding_mask=None, attn_bias=None,
                        dropout_p=0.0, seed=None, generator=None, return_lse=False):  # fmt: skip
    """Softmax attention written from the formula in plain PyTorch (materializes the score matrix).

    Dropout uses `attention_dropout_mask` with the same seed, so it agrees with the native op.
    """
    seed = _draw_seed(dropout_p, seed, generator)
    p = attention_weights(q, k, scale=scale, temperature=temperature, causal=causal, key_padding_mask=key_padding_mask,
                          attn_bias=attn_bias, dropout_p=dropout_p, seed=seed)  # fmt: skip
    out = p @ v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    if not return_lse:
        return out
    _, total, m, seen = _softmax_rows(q, k, scale, temperature, causal, key_padding_mask, attn_bias)
    lse = torch.where(seen, torch.log(total) + m, torch.full_like(m, -math.inf)).squeeze(-1)
    return out, lse.to(_stats_dtype(q))


def _torch_attention(q, k, v, *, scale=None, temperature=1.0, causal=False, key_padding_mask=None, attn_bias=None,
                     dropout_p=0.0, seed=None, generator=None, return_lse=False):  # fmt: skip
    """torch's own op on the same inputs: F.scaled_dot_product_attention with an explicit mask.

    The tests' same-dtype comparison. Differences it papers over: torch aligns `is_causal` to the
    top-left and returns NaN for rows that see no key (here such rows are opened and then zeroed,
    which also zeroes their gradients); torch's dropout mask cannot be reproduced, so dropout
    samples compare with the reference computed at the input dtype.
    """
    kwargs = dict(scale=scale, temperature=temperature, causal=causal, key_padding_mask=key_padding_mask,
                  attn_bias=attn_bias, dropout_p=dropout_p, seed=seed, generator=generator, return_lse=return_lse)  # fmt: skip
    if dropout_p > 0:
        return attention_reference(q, k, v, **kwargs)
    B, H, Tq, _ = q.shape
    Tk = k.shape[2]
    c = _logit_scale("attention", q, scale, temperature)
    visible = _visible(B, Tq, Tk, causal, key_padding_mask, q.device)
    seen = visible.any(-1, keepdim=True)
    mask = (visible | ~seen).to(q.dtype).log()  # 0 where visible, -inf where hidden; empty rows opened
    if attn_bias is not None:
        mask = mask + attn_bias
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=c, enable_gqa=k.shape[1] != H)
    out = out * seen
    if not return_lse:
        return out
    group = H // k.shape[1]
    logits = q @ k.repeat_interleave(group, 1).transpose(-1, -2) * c + mask
    lse = torch.logsumexp(logits, -1).masked_fill(~seen.squeeze(-1), -math.inf)
    return out, lse.to(_stats_dtype(q))


# ================================================================================== test samples


def _randn(shape, dtype, device, gen, scale=1.0):
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype).to(device)


def _attention_with_bias(q, k, v, attn_bias=None, **kwargs):
    """The public op with attn_bias positional, so the registry-driven tests differentiate it."""
    return attention(q, k, v, attn_bias=attn_bias, **kwargs)


def _reference_with_bias(q, k, v, attn_bias=None, **kwargs):
    return attention_reference(q, k, v, attn_bias=attn_bias, **kwargs)


def _torch_with_bias(q, k, v, attn_bias=None, **kwargs):
    return _torch_attention(q, k, v, attn_bias=attn_bias, **kwargs)


# (B, H, Hkv, Tq, Tk, d, dv, bias shape or None, keyword arguments, name); a key padding mask is
# drawn when kwargs asks for "kpm" (a fraction of keys hidden; "kpm_full" hides every key of batch 0).
_CASES = [
    (2, 3, 3, 17, 17, 16, 16, None, {}, "plain"),
    (2, 2, 2, 17, 33, 8, 8, None, {"causal": True}, "causal-Tq<Tk"),
    (1, 2, 2, 1, 97, 130, 17, (1, 2, 1, 97), {"scale": 0.2, "temperature": 0.5}, "decode-d130-bias"),
    (2, 4, 2, 33, 33, 32, 32, None, {"kpm": 0.3}, "gqa-kpm"),
    (1, 2, 2, 20, 7, 16, 16, None, {"causal": True}, "causal-Tq>Tk-empty-rows"),
    (2, 4, 1, 19, 23, 16, 24, (2, 4, 19, 23), {"causal": True, "kpm": 0.3}, "mqa-full-bias-causal-kpm"),
    (2, 3, 3, 17, 29, 16, 16, (17, 29), {"kpm_full": True}, "bias2d-kpm-empty-batch"),
    (2, 2, 2, 13, 21, 8, 8, (2, 1, 1, 21), {"return_lse": True}, "key-bias-lse"),
    (2, 2, 1, 15, 17, 16, 16, (2, 2, 15, 17), {"dropout_p": 0.3, "seed": 123, "kpm": 0.2}, "dropout"),
    (1, 1, 1, 130, 130, 64, 64, (1, 1, 130, 130), {"causal": True, "return_lse": True}, "multi-tile-causal"),
    (1, 2, 2, 97, 97, 1, 1, None, {"causal": True}, "d1"),
]


def _kwargs(kw, B, Tk, device, gen):
    kw = dict(kw)
    frac = kw.pop("kpm", None)
    if frac is not None:
        kpm = torch.rand(B, Tk, generator=gen) < frac
        kpm[:, 0] = False
        kw["key_padding_mask"] = kpm.to(device)
    if kw.pop("kpm_full", False):
        kpm = torch.rand(B, Tk, generator=gen) < 0.3
        kpm[0] = True
        kw["key_padding_mask"] = kpm.to(device)
    return kw


def _samples(device, dtype, gen) -> Iterable[Sample]:
    for B, H, Hkv, Tq, Tk, d, dv, bias_shape, kw, name in _CASES:
        q = _randn((B, H, Tq, d), dtype, device, gen)
        k = _randn((B, Hkv, Tk, d), dtype, device, gen)
        v = _randn((B, Hkv, Tk, dv), dtype, device, gen)
        args = (q, k, v) if bias_shape is None else (q, k, v, _randn(bias_shape, dtype, device, gen))
        yield Sample(args, _kwargs(kw, B, Tk, device, gen), name=name)


def _gradcheck_samples(device, gen) -> Iterable[Sample]:
    f64 = torch.float64
    for B, H, Hkv, Tq, Tk, d, dv, bias_shape, kw, name in [
        (1, 2, 1, 3, 5, 4, 3, (2, 1, 5), {"causal": True, "kpm": 0.3}, "gqa-causal-kpm-bias"),
        (2, 2, 2, 4, 3, 3, 2, (2, 2, 4, 3), {"return_lse": True, "temperature": 0.7}, "full-bias-lse"),
        (1, 1, 1, 4, 2, 2, 2, None, {"causal": True}, "empty-rows"),
        (1, 2, 2, 3, 4, 2, 2, (1, 1, 3, 4), {"dropout_p": 0.4, "seed": 7}, "dropout"),
    ]:
        args = [_randn((B, H, Tq, d), f64, device, gen), _randn((B, Hkv, Tk, d), f64, device, gen),
                _randn((B, Hkv, Tk, dv), f64, device, gen)]  # fmt: skip
        if bias_shape is not None:
            args.append(_randn(bias_shape, f64, device, gen))
        yield Sample(tuple(args), _kwargs(kw, B, Tk, device, gen), name=name)


def _bad_inputs(device) -> Iterable[BadInput]:
    q = torch.randn(2, 4, 5, 8, device=device)
    k = torch.randn(2, 2, 6, 8, device=device)
    v = torch.randn(2, 2, 6, 8, device=device)
    yield BadInput((q[0], k, v), {}, ValueError, "'q'", "q not 4-D")
    yield BadInput(([[1.0]], k, v), {}, TypeError, "'q'", "q not a tensor")
    yield BadInput((q, k.double(), v), {}, TypeError, "'k'", "k dtype")
    yield BadInput((q, torch.randn(2, 3, 6, 8, device=device), torch.randn(2, 3, 6, 8, device=device)), {},
                   ValueError, "'k'", "heads not divisible")  # fmt: skip
    yield BadInput((q, k, torch.randn(2, 2, 7, 8, device=device)), {}, ValueError, "'v'", "v length")
    yield BadInput((q, k[..., :4], v), {}, ValueError, "'k'", "k head dim")
    big = torch.randn(1, 1, 2, 300, device=device)
    yield BadInput((big, big, big), {}, ValueError, "'q'", "head dim over 256")
    yield BadInput((q, k, v), {"key_padding_mask": torch.zeros(2, 5, dtype=torch.bool, device=device)}, ValueError,
                   "'key_padding_mask'", "mask length")  # fmt: skip
    yield BadInput((q, k, v), {"key_padding_mask": torch.zeros(2, 6, device=device)}, TypeError, "'key_padding_mask'",
                   "float mask")  # fmt: skip
    yield BadInput((q, k, v, torch.zeros(3, 1, 1, 6, device=device)), {}, ValueError, "'attn_bias'", "bias shape")
    yield BadInput((q, k, v, torch.zeros(5, 6, device=device, dtype=torch.float64)), {}, TypeError, "'attn_bias'",
                   "bias dtype")  # fmt: skip
    yield BadInput((q, k, v), {"dropout_p": 1.5}, ValueError, "'dropout_p'", "dropout_p > 1")
    yield BadInput((q, k, v), {"temperature": 0.0}, ValueError, "'temperature'", "zero temperature")
    yield BadInput((q, k, v), {"scale": math.inf}, ValueError, "'scale'", "infinite scale")
    yield BadInput((q, k, torch.randn(2, 2, 6, 8, device="meta")), {}, ValueError, "'v'", "v on another device")


register_info(
    OpInfo(
        name="attention",
        public=_attention_with_bias,
        reference=_reference_with_bias,
        torch_counterpart=_torch_with_bias,
        samples=_samples,
        bad_inputs=_bad_inputs,
        differentiable_args=(0, 1, 2, 3),
        gradcheck_samples=_gradcheck_samples,
        backward_ops=("attention_backward",),
    )
)
