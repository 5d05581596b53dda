"""WaveNet (van den Oord, Dieleman, Zen, Simonyan, Vinyals, Graves, Kalchbrenner, Senior &
Kavukcuoglu 2016, "WaveNet: A Generative Model for Raw Audio", arXiv:1609.03499).

An autoregressive model of a waveform, p(x) = Π_t p(x_t | x_1, …, x_{t−1}) (eq. 1), built from:
- causal convolutions: the prediction at t sees only samples ≤ t (§2.1, Fig. 2);
- dilated convolutions with the dilation doubling every layer up to a limit and then repeating,
  1, 2, 4, …, 512, 1, 2, 4, …, 512, … (§2.1), so each stack of 10 layers of kernel 2 sees 1024 samples;
- a 256-way softmax over μ-law companded samples, f(x) = sign(x)·ln(1 + μ|x|)/ln(1 + μ) with
  μ = 255 (§2.2, ITU-T G.711);
- gated activations z = tanh(W_f ∗ x) ⊙ σ(W_g ∗ x) (§2.3, eq. 2);
- residual and parameterized skip connections (§2.4, Fig. 4): each layer adds a 1×1 convolution
  of z to its input and another to a sum of skips, which goes through ReLU, 1×1, ReLU, 1×1, softmax;
- optional local conditioning on a second time series h (§2.5, eq. 3): z = tanh(W_f ∗ x + V_f ∗ y) ⊙
  σ(W_g ∗ x + V_g ∗ y), with y = h upsampled to the sample rate by a transposed convolution and
  V ∗ y a 1×1 convolution.

Generation uses the caching of Fast WaveNet (Paine et al. 2016, arXiv:1611.09482): each dilated layer
keeps a queue of its last (k−1)·d inputs, so a new sample costs one matrix product per layer instead
of recomputing the whole receptive field. `generate(..., cached=False)` recomputes from scratch and
must give the same samples (tested).

The paper gives neither channel widths nor the first layer; the defaults (residual 64, gate 64, skip
256 channels, an initial causal convolution of kernel 2 on the one-hot input, as in Fig. 4's
"causal conv") are our choices.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from ._layers import CausalConv1d, Conv1d, ConvTranspose1d
from .causal_cache import TapQueue, causal_conv_step
from ._registry import register_model
from .receptive_field import ConvSpec, receptive_field

__all__ = ["WaveNet", "WaveNetConfig", "mu_law_decode", "mu_law_encode"]

MU = 255  # §2.2


def mu_law_encode(x: torch.Tensor, quantization_channels: int = MU + 1) -> torch.Tensor:
    """Compands x ∈ [−1, 1] with f(x) = sign(x)·ln(1 + μ|x|)/ln(1 + μ) (§2.2) and quantizes f to
    `quantization_channels` integer codes (int64, 0 … μ), rounding to the nearest level."""
    mu = quantization_channels - 1
    x = x.clamp(-1.0, 1.0)
    companded = torch.sign(x) * torch.log1p(mu * x.abs()) / math.log1p(mu)
    return ((companded + 1) / 2 * mu + 0.5).floor().long().clamp(0, mu)


def mu_law_decode(codes: torch.Tensor, quantization_channels: int = MU + 1) -> torch.Tensor:
    """Inverse of `mu_law_encode` up to quantization: x = sign(f)·((1 + μ)^|f| − 1)/μ."""
    mu = quantization_channels - 1
    companded = 2 * codes.to(torch.get_default_dtype()) / mu - 1
    return torch.sign(companded) * torch.expm1(companded.abs() * math.log1p(mu)) / mu


@dataclasses.dataclass
class WaveNetConfig:
    """A WaveNet; the defaults follow §2 where the paper states a number (see the module docstring)."""

    quantization_channels: int = MU + 1
    """Softmax size: 256 μ-law levels (§2.2)."""
    layers_per_stack: int = 10
    """Dilations 1, 2, …, 2^(layers−1) in each stack (§2.1: 1 … 512)."""
    stacks: int = 3
    """Repetitions of the dilation cycle (§2.1 writes it three times)."""
    kernel_size: int = 2
    """Width of every causal convolution (Fig. 3)."""
    residual_channels: int = 64
    gate_channels: int = 64
    """Channels of z = tanh(·) ⊙ σ(·); the dilated convolution outputs twice as many."""
    skip_channels: int = 256
    cond_channels: int = 0
    """Channels of the local conditioning series h; 0 for an unconditioned model."""
    cond_upsample: int = 1
    """h's time steps per sample step: > 1 upsamples h with a transposed convolution (§2.5)."""

    def dilations(self) -> list[int]:
        return [2**layer for _ in range(self.stacks) for layer in range(self.layers_per_stack)]


class ResidualLayer(nn.Module):
    """One dilated gated layer of Fig. 4: returns (x + residual(z), skip(z))."""

    def __init__(self, config: WaveNetConfig, dilation: int, last: bool):
        super().__init__()
        self.dilation = dilation
        self.filter_gate = CausalConv1d(config.residual_channels, 2 * config.gate_channels, config.kernel_size, dilation)
        self.cond = Conv1d(config.cond_channels, 2 * config.gate_channels, 1) if config.cond_channels else None  # V_f, V_g
        # The last layer's residual output would feed nothing (only skips reach the output, Fig. 4).
        self.residual = None if last else Conv1d(config.gate_channels, config.residual_channels, 1)
        self.skip = Conv1d(config.gate_channels, config.skip_channels, 1)

    def gate(self, pre: torch.Tensor, cond: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """pre: (B, 2G, T) dilated-conv output; cond: (B, C_h, T) upsampled conditioning or None."""
        if self.cond is not None:
            pre = pre + self.cond(cond)
        filter_, gate = pre.chunk(2, dim=1)
        return torch.tanh(filter_) * torch.sigmoid(gate)  # eq. 2 / eq. 3, (B, G, T)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.combine(x, self.gate(self.filter_gate(x), cond))

    def combine(self, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x + residual(z), skip(z)) from the layer input x and the gated z."""
        return (x if self.residual is None else x + self.residual(z)), self.skip(z)


class WaveNet(nn.Module):
    def __init__(self, config: WaveNetConfig):
        super().__init__()
        self.config = config
        q = config.quantization_channels
        self.input_conv = CausalConv1d(q, config.residual_channels, config.kernel_size)  # on one-hot x
        dilations = config.dilations()
        self.layers = nn.ModuleList(ResidualLayer(config, d, last=i == len(dilations) - 1) for i, d in enumerate(dilations))
        if config.cond_channels and config.cond_upsample > 1:
            u = config.cond_upsample
            self.cond_upsample = ConvTranspose1d(config.cond_channels, config.cond_channels, u, stride=u)
        else:
            self.cond_upsample = None
        self.output = nn.Sequential(  # ReLU → 1×1 → ReLU → 1×1 → (softmax in the loss), Fig. 4
            nn.ReLU(), Conv1d(config.skip_channels, config.skip_channels, 1),
            nn.ReLU(), Conv1d(config.skip_channels, q, 1),
        )  # fmt: skip

    # ------------------------------------------------------------------ the model

    @property
    def receptive_field(self) -> int:
        """Samples of x that one output sees: the input convolution, then every dilated layer."""
        k = self.config.kernel_size
        return receptive_field([ConvSpec(k)] + [ConvSpec(k, dilation=layer.dilation) for layer in self.layers])

    def upsample_cond(self, cond: torch.Tensor | None) -> torch.Tensor | None:
        """(B, C_h, T/u) → (B, C_h, T): the learned upsampling of §2.5."""
        if cond is None or self.cond_upsample is None:
            return cond
        return self.cond_upsample(cond)

    def forward(self, codes: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Args:
            codes: (B, T) int64 μ-law codes x_1 … x_T.
            cond: (B, C_h, T/cond_upsample) local conditioning, when the model has it.
        Returns:
            (B, 256, T) logits; column t is the distribution of x_{t+1} given x_1 … x_t.
        """
        self._check_cond(cond)
        return self._logits(codes, self.upsample_cond(cond))

    def _logits(self, codes: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """The stack on one-hot codes (B, T) and conditioning already at the sample rate (B, C_h, ≥ T)."""
        one_hot = F.one_hot(codes, self.config.quantization_channels).transpose(1, 2)  # (B, 256, T)
        x = self.input_conv(one_hot.to(self.input_conv.weight.dtype))  # (B, R, T)
        cond = None if cond is None else cond[:, :, : codes.shape[1]]
        skips = 0
        for layer in self.layers:
            x, skip = layer(x, cond)
            skips = skips + skip  # (B, S, T)
        return self.output(skips)

    def loss(self, codes: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Mean next-sample cross-entropy (nats) of the sequences `codes` (B, T)."""
        logits = self(codes[:, :-1], cond)
        return F.cross_entropy(logits, codes[:, 1:])

    def _check_cond(self, cond: torch.Tensor | None) -> None:
        if (cond is None) != (self.config.cond_channels == 0):
            need = "needs" if self.config.cond_channels else "takes no"
            raise ValueError(f"WaveNet: this model {need} local conditioning 'cond' (cond_channels={self.config.cond_channels})")

    # ------------------------------------------------------------------ generation

    @torch.no_grad()
    def generate(
        self,
        num_samples: int,
        start: torch.Tensor,
        cond: torch.Tensor | None = None,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        cached: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples n codes one at a time after the given first codes (a primer).

        Args:
            num_samples: n, the samples to draw.
            start: (B,) int64 first code of each sequence, or (B, P) a primer of P codes that the
                samples continue (the cached path runs the primer through its queues first).
            cond: (B, C_h, ⌈(P+n)/u⌉) conditioning covering the primer and the generated span (when
                the model has it).
            temperature: the logits are divided by it before sampling; 0 takes the arg-max.
            generator: the random source of the draws.
            cached: Fast WaveNet's queues (O(layers) per sample) or a full recompute per sample.

        Returns:
            codes (B, P+n) including the primer, and the logits (B, 256, n) each sample was drawn from.
        """
        self._check_cond(cond)
        cond = self.upsample_cond(cond)
        codes = start[:, None] if start.dim() == 1 else start
        step = self._cached_stepper(codes.shape[0], cond) if cached else None
        if step is not None:
            for t in range(codes.shape[1] - 1):  # the primer's own predictions are not needed
                step(codes[:, t], t)
        all_logits = []
        for _ in range(num_samples):
            # Either path reads the codes so far and the conditioning up to the newest sample.
            t = codes.shape[1] - 1
            logits = step(codes[:, t], t) if step is not None else self._logits(codes, cond)[:, :, -1]
            all_logits.append(logits)
            codes = torch.cat([codes, _draw(logits, temperature, generator)[:, None]], dim=1)
        return codes, torch.stack(all_logits, dim=-1)

    def _cached_stepper(self, batch: int, cond: torch.Tensor | None):
        k = self.config.kernel_size
        weight = self.input_conv.weight
        input_queue = TapQueue(batch, self.config.quantization_channels, k, 1, weight)
        queues = [TapQueue(batch, self.config.residual_channels, k, layer.dilation, weight) for layer in self.layers]

        def step(code: torch.Tensor, t: int) -> torch.Tensor:
            one_hot = F.one_hot(code, self.config.quantization_channels).to(weight.dtype)[:, :, None]  # (B, 256, 1)
            x = causal_conv_step(self.input_conv, input_queue.taps(one_hot))  # (B, R, 1)
            cond_t = None if cond is None else cond[:, :, t : t + 1]
            skips = 0
            for layer, queue in zip(self.layers, queues):
                x, skip = layer.combine(x, layer.gate(causal_conv_step(layer.filter_gate, queue.taps(x)), cond_t))
                skips = skips + skip
            return self.output(skips)[:, :, 0]  # (B, 256)

        return step


def _draw(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.double() / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


# ------------------------------------------------------------------------------ constructors


@register_model
def wavenet(**kwargs) -> WaveNet:
    """Three stacks of dilations 1 … 512 (§2.1): a receptive field of 3071 samples."""
    return WaveNet(WaveNetConfig(**kwargs))
