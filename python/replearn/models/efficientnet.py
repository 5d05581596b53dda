"""EfficientNet (Tan & Le 2019, "EfficientNet: Rethinking Model Scaling for Convolutional Neural
Networks", ICML).

The baseline B0 (Table 1) is a stack of MBConv blocks — the inverted residual of MobileNetV2
(Sandler et al. 2018): a 1×1 expansion by 6, a depthwise k×k convolution, squeeze-and-excitation,
a linear 1×1 projection, and the identity shortcut with stochastic depth when the shape allows —
with swish activations x·σ(x) (Ramachandran et al. 2017). Compound scaling (§3.3, eq. 3) grows
depth d = α^φ, width w = β^φ and resolution r = γ^φ together, under α·β²·γ² ≈ 2 so that FLOPs grow
about 2^φ; the grid search on B0 found α = 1.2, β = 1.1, γ = 1.15 (§4). `EfficientNetConfig.from_phi`
applies that rule. The released B1–B7 use rounded coefficients that are not exactly α^φ, β^φ, γ^φ;
those are the ones registered here (width, depth, resolution, dropout per variant, from the
authors' reference implementation, `efficientnet_builder.efficientnet_params` in
tensorflow/tpu/models/official/efficientnet), with their training settings: drop-connect (stochastic
depth) rate 0.2, growing linearly with the block index, BN ε = 1e-3 and momentum 0.99 (0.01 in
torch's convention).

Scaling rules (same reference): a width-scaled channel count is rounded to a multiple of 8
(make_divisible), a depth-scaled stage repeats ⌈L·d⌉ blocks, SE squeezes to max(1, ⌊C_in/4⌋)
channels of the block's *input* width, and the head is a 1×1 convolution to 1280·w channels.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from ._common import ImageClassifier, make_divisible
from ._layers import BatchNorm2d, Conv2d, DropPath
from ._registry import register_variant
from .squeeze_excitation import SqueezeExcitation

__all__ = ["EfficientNet", "EfficientNetConfig", "MBConv", "MBConvStage", "compound_coefficients"]

# §4: the grid search's coefficients under α·β²·γ² ≈ 2.
ALPHA, BETA, GAMMA = 1.2, 1.1, 1.15
BASE_RESOLUTION = 224


def compound_coefficients(phi: float) -> tuple[float, float, float]:
    """(depth, width, resolution) multipliers α^φ, β^φ, γ^φ of compound scaling (eq. 3)."""
    return ALPHA**phi, BETA**phi, GAMMA**phi


@dataclasses.dataclass(frozen=True)
class MBConvStage:
    """One row of Table 1: `num_blocks` MBConv blocks, the first with `stride`."""

    expand_ratio: int
    kernel_size: int
    stride: int
    out_channels: int
    num_blocks: int


# Table 1 (stages 2–8; stage 1 is the 3×3/2 stem of 32 channels, stage 9 the 1×1 head of 1280).
B0_STAGES = (
    MBConvStage(1, 3, 1, 16, 1),
    MBConvStage(6, 3, 2, 24, 2),
    MBConvStage(6, 5, 2, 40, 2),
    MBConvStage(6, 3, 2, 80, 3),
    MBConvStage(6, 5, 1, 112, 3),
    MBConvStage(6, 5, 2, 192, 4),
    MBConvStage(6, 3, 1, 320, 1),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280


@dataclasses.dataclass
class EfficientNetConfig:
    """An EfficientNet; the defaults are B0's."""

    width_mult: float = 1.0
    """w: channels of every layer are multiplied by it (then rounded to multiples of 8)."""
    depth_mult: float = 1.0
    """d: every stage repeats ⌈L·d⌉ blocks."""
    resolution: int = BASE_RESOLUTION
    """The input size the variant is meant for (r·224); the network itself takes any size."""
    dropout: float = 0.2
    """Dropout before the classifier."""
    drop_path_rate: float = 0.2
    """Stochastic-depth rate of the last block; block i of n drops with rate·i/n."""
    num_classes: int = 1000
    in_channels: int = 3
    stages: tuple[MBConvStage, ...] = B0_STAGES
    """The baseline architecture to scale (Table 1); smaller ones make small test variants."""
    stem_channels: int = STEM_CHANNELS
    head_channels: int = HEAD_CHANNELS
    stem_stride: int = 2
    """2 in the paper; 1 keeps 8×8 inputs large enough for small variants."""
    se_ratio: float = 0.25
    """SE width as a share of the block's input channels."""
    bn_momentum: float = 0.01
    """BN running-average momentum (torch's convention): the reference's decay 0.99, made for
    ImageNet's hundreds of thousands of steps; short runs need ~0.1 for usable running averages."""

    @classmethod
    def from_phi(cls, phi: float, **kwargs) -> "EfficientNetConfig":
        """A config scaled by the compound rule from B0 (§3.3), for any φ ≥ 0."""
        depth, width, resolution = compound_coefficients(phi)
        return cls(width_mult=width, depth_mult=depth, resolution=round(BASE_RESOLUTION * resolution), **kwargs)

    def channels(self, base: int) -> int:
        return make_divisible(base * self.width_mult)

    def repeats(self, base: int) -> int:
        return int(math.ceil(base * self.depth_mult))


def conv_bn_act(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1, act: bool = True, *,
                bn_momentum: float):
    layers = [
        Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, groups=groups, bias=False),
        BatchNorm2d(out_channels, eps=1e-3, momentum=bn_momentum),
    ]
    if act:
        layers.append(nn.SiLU())  # swish, x·σ(x)
    return nn.Sequential(*layers)


class MBConv(nn.Module):
    """Inverted residual: expand 1×1 → depthwise k×k → SE → project 1×1 (linear), + x if shapes match."""

    def __init__(self, in_channels: int, out_channels: int, stage: MBConvStage, stride: int, drop_path: float,
                 config: EfficientNetConfig):
        super().__init__()
        hidden = in_channels * stage.expand_ratio
        momentum = config.bn_momentum
        layers = [] if stage.expand_ratio == 1 else [conv_bn_act(in_channels, hidden, 1, bn_momentum=momentum)]
        layers += [
            conv_bn_act(hidden, hidden, stage.kernel_size, stride, groups=hidden, bn_momentum=momentum),  # depthwise
            SqueezeExcitation(hidden, max(1, int(in_channels * config.se_ratio)), activation=nn.SiLU),
            # linear bottleneck: no activation after the projection (Sandler et al. 2018 §3.2)
            conv_bn_act(hidden, out_channels, 1, act=False, bn_momentum=momentum),
        ]
        self.branch = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels
        self.drop_path = DropPath(drop_path) if self.use_residual else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.branch(x)
        return x + self.drop_path(y) if self.use_residual else y


class EfficientNet(ImageClassifier):
    def __init__(self, config: EfficientNetConfig):
        super().__init__()
        self.config = config
        in_channels = config.channels(config.stem_channels)
        self.stem = conv_bn_act(config.in_channels, in_channels, 3, stride=config.stem_stride, bn_momentum=config.bn_momentum)
        total_blocks = sum(config.repeats(stage.num_blocks) for stage in config.stages)
        stages, block_index = [], 0
        for stage in config.stages:
            out_channels = config.channels(stage.out_channels)
            blocks = []
            for i in range(config.repeats(stage.num_blocks)):
                drop_path = config.drop_path_rate * block_index / total_blocks
                blocks.append(MBConv(in_channels, out_channels, stage, stage.stride if i == 0 else 1, drop_path, config))
                in_channels, block_index = out_channels, block_index + 1
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        head_channels = config.channels(config.head_channels)
        self.head_conv = conv_bn_act(in_channels, head_channels, 1, bn_momentum=config.bn_momentum)
        self._init_weights()
        self._build_head(head_channels, config.num_classes, config.dropout)

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, Conv2d):  # the reference's conv_kernel_initializer: N(0, 2/fan_out)
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def _init_classifier(self, linear: nn.Linear) -> None:
        # The reference's dense_kernel_initializer: U(−1/√n_out, 1/√n_out), zero bias.
        bound = 1.0 / math.sqrt(linear.out_features)
        nn.init.uniform_(linear.weight, -bound, bound)
        nn.init.zeros_(linear.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head_conv(self.stages(self.stem(x)))  # (B, 1280·w, H/32, W/32)


# ------------------------------------------------------------------------------ constructors

# (width, depth, resolution, dropout) of the released variants: efficientnet_params in the authors'
# reference implementation (see the module docstring).
VARIANTS = {
    "b0": (1.0, 1.0, 224, 0.2),
    "b1": (1.0, 1.1, 240, 0.2),
    "b2": (1.1, 1.2, 260, 0.3),
    "b3": (1.2, 1.4, 300, 0.3),
    "b4": (1.4, 1.8, 380, 0.4),
    "b5": (1.6, 2.2, 456, 0.4),
    "b6": (1.8, 2.6, 528, 0.5),
    "b7": (2.0, 3.1, 600, 0.5),
}


def create_efficientnet(**kwargs) -> EfficientNet:
    return EfficientNet(EfficientNetConfig(**kwargs))


for _variant, (_width, _depth, _resolution, _dropout) in VARIANTS.items():
    register_variant(
        f"efficientnet_{_variant}", create_efficientnet,
        f"EfficientNet-{_variant.upper()}: width {_width}, depth {_depth}, resolution {_resolution}, dropout {_dropout}.",
        width_mult=_width, depth_mult=_depth, resolution=_resolution, dropout=_dropout,
    )  # fmt: skip
