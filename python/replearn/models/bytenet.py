"""ByteNet (Kalchbrenner, Espeholt, Simonyan, van den Oord, Graves & Kavukcuoglu 2016, "Neural
Machine Translation in Linear Time", arXiv:1610.10099).

A character-level sequence-to-sequence model made of two stacks of dilated 1-D convolutions:
- the source network (encoder) is a stack of residual blocks with dilated, non-causal convolutions
  over the embedded source (§3);
- the target network (decoder) is stacked on top of it, preserving the temporal resolution (§3.1):
  at target position t it reads the encoder's representation at position t together with the
  embedding of the previous target token, through masked (causal) dilated convolutions (§3.4), so it
  can be trained on all positions in parallel and decoded one token at a time;
- dynamic unfolding (§3.2): the source representation is computed for |t̂| = a·|s| + b positions
  (a = 1.20, b = 0 for English→German), and the decoder unfolds step by step over it until it emits
  end-of-sequence, with zero conditioning past |t̂|;
- residual blocks (§3.6, Fig. 3 left, the ReLU version used for translation): LayerNorm, ReLU,
  1×1 convolution 2d → d, LayerNorm, ReLU, k-wide dilated convolution d → d, LayerNorm, ReLU, 1×1
  convolution d → 2d, plus the input; dilations 1, 2, 4, 8, 16 repeated (§3.5).
Settings for translation (§6): d = 800 hidden units, 30 residual blocks in the encoder and 30 in the
decoder (six sets of the five dilation rates), kernel size 3 in both, a = 1.20 and b = 0.

Choices the paper leaves open, made here: LayerNorm normalizes each position over its channels
(statistics across time would let the causal decoder see the future); the concatenated
[encoder output; target embedding] (4d channels) is mixed to 2d by a 1×1 convolution; padded
source positions are held at zero after every encoder block, so a padded batch encodes each
sequence exactly as it would be encoded alone; decoding is greedy.

Decoding caches each decoder block's masked-convolution inputs in a queue of its last (k−1)·d
positions (Fast WaveNet's cache, Paine et al. 2016; `causal_cache.py`), so dynamic unfolding costs
O(blocks) per emitted token instead of a recompute of the whole prefix (`decode_step`;
`generate(cached=False)` keeps the recompute, and both emit the same tokens).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..data.sequences import BOS_ID, EOS_ID, PAD_ID
from ._common import ChannelsFirstLayerNorm
from ._layers import CausalConv1d, Conv1d
from ._registry import register_model
from .causal_cache import TapQueue, causal_conv_step
from .receptive_field import ConvSpec, receptive_field

__all__ = ["ByteNet", "ByteNetConfig", "DecoderState"]


@dataclasses.dataclass
class ByteNetConfig:
    """A ByteNet; defaults are the translation model of §6, over bytes."""

    source_vocab_size: int = 259
    """256 byte values and PAD, BOS, EOS (the special tokens are the first three ids)."""
    target_vocab_size: int = 259
    hidden_size: int = 800
    """d of §6; the residual stream has 2d channels."""
    encoder_dilations: tuple[int, ...] = (1, 2, 4, 8, 16) * 6
    decoder_dilations: tuple[int, ...] = (1, 2, 4, 8, 16) * 6
    encoder_kernel_size: int = 3
    decoder_kernel_size: int = 3
    unfold_a: float = 1.20
    """|t̂| = a·|s| + b (§3.2)."""
    unfold_b: float = 0.0
    pad_id: int = PAD_ID
    bos_id: int = BOS_ID
    eos_id: int = EOS_ID

    def __post_init__(self) -> None:
        self.encoder_dilations, self.decoder_dilations = tuple(self.encoder_dilations), tuple(self.decoder_dilations)
        if self.encoder_kernel_size % 2 == 0:
            raise ValueError(f"ByteNetConfig: 'encoder_kernel_size' expected an odd size (centered) but got {self.encoder_kernel_size}")

    def unfolded_length(self, source_length: int) -> int:
        """|t̂| = ⌈a·|s| + b⌉, at least |s| so the whole source is encoded."""
        return max(source_length, math.ceil(self.unfold_a * source_length + self.unfold_b))


class ResidualBlock(nn.Module):
    """Fig. 3 (left): x + 1×1(ReLU(LN(conv_k(ReLU(LN(1×1(ReLU(LN(x))))))))), 2d → d → d → 2d."""

    def __init__(self, hidden_size: int, kernel_size: int, dilation: int, causal: bool):
        super().__init__()
        d = hidden_size
        if causal:  # masked convolution (§3.4)
            conv = CausalConv1d(d, d, kernel_size, dilation=dilation)
        else:
            conv = Conv1d(d, d, kernel_size, dilation=dilation, padding=(kernel_size - 1) // 2 * dilation)
        self.dilation, self.kernel_size = dilation, kernel_size
        self.norm_in, self.reduce = ChannelsFirstLayerNorm(2 * d), Conv1d(2 * d, d, 1)
        self.norm_mid, self.conv = ChannelsFirstLayerNorm(d), conv
        self.norm_out, self.expand = ChannelsFirstLayerNorm(d), Conv1d(d, 2 * d, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, 2d, T); mask: (B, 1, T), 0 past each sequence's end (the encoder's padding), which
        the k-wide convolution must read as zeros, as it reads the padding past T."""
        h = self._narrow(x)
        if mask is not None:
            h = h * mask
        return self._widen(x, self.conv(h))

    def step(self, x: torch.Tensor, queue: TapQueue) -> torch.Tensor:
        """The block at the newest position of a causal decoder: x (B, 2d, 1) → (B, 2d, 1), the
        masked convolution's earlier inputs read from `queue` (Fast WaveNet's cache, O(1) per step)."""
        return self._widen(x, causal_conv_step(self.conv, queue.taps(self._narrow(x))))

    def _narrow(self, x: torch.Tensor) -> torch.Tensor:
        """ReLU(LN(1×1(ReLU(LN(x))))): 2d → d channels, position by position."""
        return torch.relu(self.norm_mid(self.reduce(torch.relu(self.norm_in(x)))))

    def _widen(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """x + 1×1(ReLU(LN(h))), h the k-wide convolution's output: d → 2d channels plus the input."""
        return x + self.expand(torch.relu(self.norm_out(h)))


@dataclasses.dataclass
class DecoderState:
    """Where cached decoding stands: the source representation, one queue per decoder block and the
    position of the next target token. Made by `ByteNet.start_decoding`, advanced by `decode_step`.

    Attributes:
        encoded: (B, 2d, T̂) from `ByteNet.encode`.
        queues: the last (k−1)·d inputs of each decoder block's masked convolution.
        position: t, the target position the next `decode_step` predicts (0 for t_1).
    """

    encoded: torch.Tensor
    queues: list[TapQueue]
    position: int = 0


class ByteNet(nn.Module):
    def __init__(self, config: ByteNetConfig):
        super().__init__()
        self.config = config
        d2 = 2 * config.hidden_size
        self.source_embedding = nn.Embedding(config.source_vocab_size, d2, padding_idx=config.pad_id)
        self.target_embedding = nn.Embedding(config.target_vocab_size, d2, padding_idx=config.pad_id)
        self.encoder = nn.ModuleList(
            ResidualBlock(config.hidden_size, config.encoder_kernel_size, d, causal=False) for d in config.encoder_dilations
        )
        self.merge = Conv1d(2 * d2, d2, 1)  # [encoder; target embedding] → 2d channels
        self.decoder = nn.ModuleList(
            ResidualBlock(config.hidden_size, config.decoder_kernel_size, d, causal=True) for d in config.decoder_dilations
        )
        self.output = nn.Sequential(nn.ReLU(), Conv1d(d2, config.target_vocab_size, 1))

    @property
    def decoder_receptive_field(self) -> int:
        """Target tokens one prediction sees (through the decoder's masked convolutions)."""
        return receptive_field(ConvSpec(block.kernel_size, dilation=block.dilation) for block in self.decoder)

    def encode(self, source: torch.Tensor, source_lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Args:
            source: (B, S) token ids, PAD after each sequence's end.
            source_lengths: (B,) true lengths |s|; by default every row is full.
        Returns:
            (B, 2d, T̂) the source representation unfolded to T̂ = max |t̂|, zero past each |t̂|.
        """
        batch, width = source.shape
        if source_lengths is None:
            source_lengths = torch.full((batch,), width, dtype=torch.long, device=source.device)
        unfolded = torch.tensor([self.config.unfolded_length(int(n)) for n in source_lengths], device=source.device)
        length = int(unfolded.max())
        source = F.pad(source, (0, max(0, length - width)), value=self.config.pad_id)[:, :length]
        mask = (torch.arange(length, device=source.device)[None, :] < unfolded[:, None])[:, None, :]  # (B, 1, T̂)
        x = self.source_embedding(source).transpose(1, 2) * mask  # (B, 2d, T̂)
        for block in self.encoder:
            x = block(x, mask) * mask
        return x

    def decode(self, encoded: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        """Args:
            encoded: (B, 2d, T̂) from `encode`.
            previous: (B, T) the decoder's inputs BOS, t_1, …, t_{T−1}.
        Returns:
            (B, V, T) logits of t_1 … t_T.
        """
        length = previous.shape[1]
        encoded = F.pad(encoded, (0, max(0, length - encoded.shape[-1])))[:, :, :length]  # zero past |t̂|
        x = self.merge(torch.cat([encoded, self.target_embedding(previous).transpose(1, 2)], dim=1))
        for block in self.decoder:
            x = block(x)
        return self.output(x)

    def forward(self, source: torch.Tensor, target: torch.Tensor, source_lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced logits (B, V, T) of `target` (B, T) given `source` (B, S)."""
        return self.decode(self.encode(source, source_lengths), self.shift_right(target))

    def shift_right(self, target: torch.Tensor) -> torch.Tensor:
        bos = torch.full_like(target[:, :1], self.config.bos_id)
        return torch.cat([bos, target[:, :-1]], dim=1)

    def loss(self, source: torch.Tensor, target: torch.Tensor, source_lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Mean cross-entropy over the non-PAD target tokens."""
        return F.cross_entropy(self(source, target, source_lengths), target, ignore_index=self.config.pad_id)

    def start_decoding(self, encoded: torch.Tensor) -> DecoderState:
        """Empty decoder caches for the source representation `encoded` (B, 2d, T̂) of `encode`."""
        d, batch = self.config.hidden_size, encoded.shape[0]
        queues = [TapQueue(batch, d, block.kernel_size, block.dilation, encoded) for block in self.decoder]
        return DecoderState(encoded, queues)

    def decode_step(self, state: DecoderState, previous: torch.Tensor) -> torch.Tensor:
        """One position of the decoder with cached activations: O(decoder blocks), whatever t is.

        Args:
            state: from `start_decoding`, advanced by one position here.
            previous: (B,) the decoder's input at this position: BOS first, then t_1, t_2, …
        Returns:
            (B, V) logits of the token at this position; equal to `decode(encoded, prefix)[:, :, -1]`
            for the prefix of every `previous` given so far (tested).
        """
        t, encoded = state.position, state.encoded
        # Zero conditioning past |t̂| (§3.2), as `decode`'s padding.
        source_t = encoded[:, :, t : t + 1] if t < encoded.shape[-1] else encoded.new_zeros(encoded.shape[0], encoded.shape[1], 1)
        x = self.merge(torch.cat([source_t, self.target_embedding(previous)[:, :, None]], dim=1))  # (B, 2d, 1)
        for block, queue in zip(self.decoder, state.queues):
            x = block.step(x, queue)
        state.position += 1
        return self.output(x)[:, :, 0]

    @torch.no_grad()
    def generate(
        self, source: torch.Tensor, source_lengths: torch.Tensor | None = None, max_length: int | None = None, cached: bool = True
    ) -> torch.Tensor:
        """Greedy dynamic unfolding: one token per step until every row has emitted EOS.

        Args:
            source: (B, S) token ids; source_lengths: (B,) true lengths.
            max_length: the most tokens to emit (default 2·T̂, a guard against a model that never ends).
            cached: per-block activation caches (`decode_step`, O(blocks) per token) or a full
                recompute of the decoder over the prefix per token (O(t·blocks)); the same tokens.
        Returns:
            (B, T) the emitted tokens, EOS included; PAD after a row's EOS.
        """
        encoded = self.encode(source, source_lengths)
        max_length = max_length or 2 * encoded.shape[-1]
        state = self.start_decoding(encoded) if cached else None
        previous = torch.full((source.shape[0], 1), self.config.bos_id, dtype=torch.long, device=source.device)
        finished = torch.zeros(source.shape[0], dtype=torch.bool, device=source.device)
        for _ in range(max_length):
            logits = self.decode_step(state, previous[:, -1]) if state is not None else self.decode(encoded, previous)[:, :, -1]
            token = logits.argmax(dim=1)
            token = torch.where(finished, torch.full_like(token, self.config.pad_id), token)
            previous = torch.cat([previous, token[:, None]], dim=1)
            finished |= token == self.config.eos_id
            if bool(finished.all()):
                break
        return previous[:, 1:]


# ------------------------------------------------------------------------------ constructors


@register_model
def bytenet(**kwargs) -> ByteNet:
    """The character-level translation ByteNet of §6 (d = 800, 30 + 30 residual blocks)."""
    return ByteNet(ByteNetConfig(**kwargs))
