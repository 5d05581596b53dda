"""Multi-head attention (Vaswani et al. 2017, §3.2.2) on replearn's fused attention kernel.

    MultiheadAttention   torch.nn.MultiheadAttention's constructor, parameters, state_dict keys and
                         forward signature; the attention itself runs `replearn.ops.attention`
    KVCache              keys and values of the tokens decoded so far, for autoregressive decoding

Differences from torch, on purpose:
- A query that may see no key (every key padded or masked) gets a zero output and zero weights;
  torch returns NaN there.
- `need_weights=True` (torch's default) returns the attention weights computed by a separate
  plain-PyTorch path (`replearn.ops.attention_weights`, the (N, H, L, S) matrix the fused kernel never
  builds), with the same dropout mask; the output still comes from the fused kernel. Pass
  need_weights=False to keep memory O(L) per head.
- `is_causal=True` uses the kernel's causal mask (aligned to the bottom-right corner when L < S) and
  needs no attn_mask; an attn_mask given with it is ignored, as torch's fast path does, when L = S
  and no key positions are appended. With add_bias_kv or add_zero_attn the appended positions are
  visible to every query, and with L ≠ S a given attn_mask is applied: the result of the same call
  without the hint. (torch's own fast path, taken with need_weights=False and no key_padding_mask,
  hides the appended positions from every query and aligns L ≠ S top-left; its need_weights=True
  path shows them, as here.)
- forward takes an optional `kv_cache`: the new keys and values are appended to it and the queries
  attend over everything cached (decoding one token, or a chunk with is_causal=True).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Module, Parameter, init

from .. import ops

__all__ = ["KVCache", "MultiheadAttention"]


class KVCache:
    """Keys and values (B, H, T, head_dim) of the tokens seen so far, grown as decoding proceeds.

    `append(k, v)` adds the new tokens along the length dim and returns the whole cache. Storage is
    a buffer with spare capacity (doubled when full), so an append copies only the new tokens; the
    returned views are contiguous only when the buffer is exactly full, and the attention op then
    makes one O(T·head_dim) copy per step (the kernel takes contiguous keys).
    """

    def __init__(self) -> None:
        self._k: Tensor | None = None
        self._v: Tensor | None = None
        self.length = 0

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        new = k.shape[2]
        if self._k is None or self.length + new > self._k.shape[2]:
            capacity = max(2 * (self.length + new), 16)
            grown_k = k.new_empty(k.shape[:2] + (capacity, k.shape[3]))
            grown_v = v.new_empty(v.shape[:2] + (capacity, v.shape[3]))
            if self._k is not None:
                grown_k[:, :, : self.length] = self._k[:, :, : self.length]
                grown_v[:, :, : self.length] = self._v[:, :, : self.length]
            self._k, self._v = grown_k, grown_v
        self._k[:, :, self.length : self.length + new] = k
        self._v[:, :, self.length : self.length + new] = v
        self.length += new
        return self._k[:, :, : self.length], self._v[:, :, : self.length]

    def reset(self) -> None:
        self._k = self._v = None
        self.length = 0


def _check_mask(name: str, mask: Tensor | None) -> None:
    """TypeError naming the argument unless the mask is bool or floating (as torch: an integer mask
    would otherwise be added to the logits, raising the weight of the keys it means to hide)."""
    if mask is not None and mask.dtype != torch.bool and not mask.is_floating_point():
        raise TypeError(f"MultiheadAttention: argument '{name}' expected a bool or floating mask but got {mask.dtype}")


def _mask_to_bias(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """A boolean mask (True = not allowed) as an additive bias; a float mask is already one."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask.to(dtype)


def _causal_bias(length: int, keys: int, pad: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(L, keys + pad) additive bias: query i sees the keys j ≤ i + keys − L (the kernel's causal mask,
    aligned to the bottom-right corner) and every one of the `pad` positions appended after them."""
    i = torch.arange(length, device=device)[:, None]
    j = torch.arange(keys + pad, device=device)[None, :]
    blocked = (j > i + (keys - length)) & (j < keys)
    return torch.zeros(blocked.shape, dtype=dtype, device=device).masked_fill(blocked, float("-inf"))


class MultiheadAttention(Module):
    """torch.nn.MultiheadAttention with the attention computed by `replearn.ops.attention`.

    Args:
        embed_dim: model width E; split into num_heads heads of E // num_heads.
        num_heads: number of heads.
        dropout: dropout on the attention probabilities (training only).
        bias: biases of the input and output projections.
        add_bias_kv: append learned bias_k, bias_v as one extra key/value position.
        add_zero_attn: append a zero key/value position.
        kdim, vdim: widths of key and value inputs (default E); when they differ from E the input
            projection is three separate weights (q_proj_weight, k_proj_weight, v_proj_weight).
        batch_first: inputs and outputs are (N, L, E) instead of (L, N, E).
    """

    __constants__ = ["batch_first"]

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 add_bias_kv: bool = False, add_zero_attn: bool = False, kdim: int | None = None,
                 vdim: int | None = None, batch_first: bool = False, device=None, dtype=None) -> None:  # fmt: skip
        if embed_dim <= 0 or num_heads <= 0:
            raise ValueError(f"MultiheadAttention: embed_dim and num_heads must be positive, got {embed_dim} and {num_heads}")
        factory = {"device": device, "dtype": dtype}
        super().__init__()
        self.embed_dim = embed_dim
        self.kdim = kdim if kdim is not None else embed_dim
        self.vdim = vdim if vdim is not None else embed_dim
        self._qkv_same_embed_dim = self.kdim == embed_dim and self.vdim == embed_dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.batch_first = batch_first
        self.head_dim = embed_dim // num_heads
        if self.head_dim * num_heads != embed_dim:
            raise ValueError(f"MultiheadAttention: embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        if self._qkv_same_embed_dim:
            self.in_proj_weight = Parameter(torch.empty((3 * embed_dim, embed_dim), **factory))
            self.register_parameter("q_proj_weight", None)
            self.register_parameter("k_proj_weight", None)
            self.register_parameter("v_proj_weight", None)
        else:
            self.q_proj_weight = Parameter(torch.empty((embed_dim, embed_dim), **factory))
            self.k_proj_weight = Parameter(torch.empty((embed_dim, self.kdim), **factory))
            self.v_proj_weight = Parameter(torch.empty((embed_dim, self.vdim), **factory))
            self.register_parameter("in_proj_weight", None)
        if bias:
            self.in_proj_bias = Parameter(torch.empty(3 * embed_dim, **factory))
        else:
            self.register_parameter("in_proj_bias", None)
        # torch's NonDynamicallyQuantizableLinear is a Linear: same parameters and state_dict keys.
        self.out_proj = torch.nn.Linear(embed_dim, embed_dim, bias=bias, **factory)
        if add_bias_kv:
            self.bias_k = Parameter(torch.empty((1, 1, embed_dim), **factory))
            self.bias_v = Parameter(torch.empty((1, 1, embed_dim), **factory))
        else:
            self.bias_k = self.bias_v = None
        self.add_zero_attn = add_zero_attn
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # torch's initialization: Xavier-uniform projections, zero biases, Xavier-normal bias_k/v.
        if self._qkv_same_embed_dim:
            init.xavier_uniform_(self.in_proj_weight)
        else:
            init.xavier_uniform_(self.q_proj_weight)
            init.xavier_uniform_(self.k_proj_weight)
            init.xavier_uniform_(self.v_proj_weight)
        if self.in_proj_bias is not None:
            init.constant_(self.in_proj_bias, 0.0)
            init.constant_(self.out_proj.bias, 0.0)
        if self.bias_k is not None:
            init.xavier_normal_(self.bias_k)
        if self.bias_v is not None:
            init.xavier_normal_(self.bias_v)

    def _project(self, query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        E = self.embed_dim
        b = self.in_proj_bias
        bq, bk, bv = (None, None, None) if b is None else (b[:E], b[E : 2 * E], b[2 * E :])
        if self._qkv_same_embed_dim:
            w = self.in_proj_weight
            wq, wk, wv = w[:E], w[E : 2 * E], w[2 * E :]
        else:
            wq, wk, wv = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        return F.linear(query, wq, bq), F.linear(key, wk, bk), F.linear(value, wv, bv)

    def _heads(self, x: Tensor) -> Tensor:
        n, length, _ = x.shape  # (N, L, E) -> (N, H, L, head_dim)
        return x.reshape(n, length, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
                need_weights: bool = True, attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False, kv_cache: KVCache | None = None) -> tuple[Tensor, Tensor | None]:  # fmt: skip
        """Attention of `query` over `key`/`value`, as torch.nn.MultiheadAttention.forward.

        Args:
            query: (L, N, E), or (N, L, E) with batch_first, or unbatched (L, E).
            key, value: (S, N, kdim/vdim) likewise.
            key_padding_mask: (N, S) bool (True = ignore that key) or float (added to the logits).
            need_weights: also return the attention weights (computed separately, module docstring).
            attn_mask: (L, S) or (N·num_heads, L, S); bool (True = not allowed) or float (added).
            average_attn_weights: average the returned weights over heads.
            is_causal: causal attention through the kernel's mask (attn_mask not needed).
            kv_cache: append this call's keys and values to the cache and attend over all of it.

        Returns:
            (output shaped like query, weights (N, L, S) / (N, H, L, S), or None).
        """
        _check_mask("attn_mask", attn_mask)
        _check_mask("key_padding_mask", key_padding_mask)
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        if not self.batch_first or unbatched:  # (L, N, E) -> (N, L, E)
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        n, length, _ = query.shape
        q, k, v = (self._heads(x) for x in self._project(query, key, value))
        if kv_cache is not None:
            k, v = kv_cache.append(k, v)
        pad = 0  # key positions appended after the masks' S columns (bias_k/bias_v, then a zero position)
        if self.bias_k is not None:
            k = torch.cat([k, self._heads(self.bias_k.expand(n, 1, -1))], dim=2)
            v = torch.cat([v, self._heads(self.bias_v.expand(n, 1, -1))], dim=2)
            pad += 1
        if self.add_zero_attn:
            k = torch.cat([k, k.new_zeros(n, self.num_heads, 1, self.head_dim)], dim=2)
            v = torch.cat([v, v.new_zeros(n, self.num_heads, 1, self.head_dim)], dim=2)
            pad += 1

        keys = k.shape[2] - pad  # the masks' S columns
        bias = None
        causal = is_causal
        if is_causal and (pad or (attn_mask is not None and length != keys)):
            # The kernel's causal mask spans every key, appended ones included, aligned to the
            # bottom-right corner. Appended positions must stay visible to every query (as in the
            # masked call without the hint), and with L ≠ S the given attn_mask is the truth: so
            # the mask is spelled out here (module docstring).
            causal = False
            if attn_mask is None:
                bias = _causal_bias(length, keys, pad, q.dtype, q.device)
        if attn_mask is not None and not causal:
            bias = _mask_to_bias(attn_mask, q.dtype)
            if bias.dim() == 3:  # (N·H, L, S) -> (N, H, L, S)
                bias = bias.reshape(n, self.num_heads, bias.shape[-2], bias.shape[-1])
            if pad:
                bias = F.pad(bias, (0, pad))
        padding = None
        if key_padding_mask is not None:
            if pad:
                fill = False if key_padding_mask.dtype == torch.bool else 0.0
                key_padding_mask = F.pad(key_padding_mask, (0, pad), value=fill)
            if key_padding_mask.dtype == torch.bool:
                padding = key_padding_mask
            else:  # a float padding mask is added to the logits
                padding_bias = key_padding_mask.to(q.dtype)[:, None, None, :]
                bias = padding_bias if bias is None else bias + padding_bias
        dropout_p = self.dropout if self.training else 0.0
        seed = int(torch.randint(-(2**63), 2**63 - 1, (), dtype=torch.int64).item()) if dropout_p > 0 else 0
        options = {"causal": causal, "key_padding_mask": padding, "attn_bias": bias, "dropout_p": dropout_p,
                   "seed": seed}  # fmt: skip
        out = ops.attention(q, k, v, **options)  # (N, H, L, head_dim)
        out = self.out_proj(out.transpose(1, 2).reshape(n, length, self.embed_dim))
        weights = None
        if need_weights:
            weights = ops.attention_weights(q, k, **options)  # (N, H, L, S)
            if average_attn_weights:
                weights = weights.mean(dim=1)
        if not self.batch_first or unbatched:
            out = out.transpose(0, 1)
        if unbatched:
            out = out.squeeze(1)
            weights = weights.squeeze(0) if weights is not None else None
        return out, weights
