"""ResNet (He, Zhang, Ren & Sun 2016, "Deep Residual Learning for Image Recognition", CVPR).

Stacks of residual blocks y = F(x) + shortcut(x) (eq. 1–2): the layers learn the residual F(x) =
H(x) − x, so the identity is the easy default and very deep networks still train. Table 1 gives the
ImageNet architectures: a 7×7/2 convolution with 64 channels and a 3×3/2 max-pool, then four
stages of widths 64, 128, 256, 512, each downsampling by 2 in its first block (but the first
stage), global average pooling and a 1000-way fully connected layer.
- Basic block (ResNet-18/34): two 3×3 convolutions.
- Bottleneck (ResNet-50/101/152, Fig. 5): 1×1 reduce, 3×3, 1×1 expand ×4.
Batch normalization after every convolution, before the ReLU (§3.4). Where the shape changes, the
shortcut is a 1×1 convolution with stride, then BN (option B of §3.3).

Two choices the paper leaves open, made as in the widely used torchvision models (so the parameter
counts are the published ones): the bottleneck strides in its 3×3 convolution rather than its first
1×1 ("ResNet v1.5"; same parameters, better accuracy), and `zero_init_residual` starts each block's
last BN at γ = 0 so every block begins as the identity (Goyal et al. 2017, "Accurate, Large
Minibatch SGD", §5.1). `small_input` replaces the stem by a 3×3/1 convolution without max-pool for
8×8 to 32×32 images, as He et al. do for CIFAR-10 (§4.2). `se_reduction` > 0 adds a
squeeze-and-excitation block to every residual branch (SE-ResNet; see senet.py).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ._common import ImageClassifier
from ._layers import BatchNorm2d, Conv2d, MaxPool2d
from ._registry import register_variant
from .squeeze_excitation import SqueezeExcitation

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "ResNetConfig"]


@dataclasses.dataclass
class ResNetConfig:
    """A ResNet. Defaults are ImageNet's (Table 1)."""

    block: str = "basic"
    """'basic' (two 3×3) or 'bottleneck' (1×1, 3×3, 1×1 ×4)."""
    layers: tuple[int, ...] = (2, 2, 2, 2)
    """Blocks per stage; the stage widths double from `base_width`."""
    num_classes: int = 1000
    in_channels: int = 3
    base_width: int = 64
    """Channels of the stem and the first stage (64 in the paper)."""
    small_input: bool = False
    """3×3/1 stem without max-pool, for 8×8 to 32×32 images (the CIFAR-10 ResNets of §4.2)."""
    zero_init_residual: bool = False
    """Start each block's last BN at γ = 0, so each block starts as the identity (Goyal et al. 2017)."""
    se_reduction: int = 0
    """Reduction ratio r of a squeeze-and-excitation block on each residual branch; 0 for none
    (SENet uses 16, Hu et al. 2018 §6.1)."""
    dropout: float = 0.0
    """Dropout before the classifier (none in the paper)."""

    def __post_init__(self) -> None:
        self.layers = tuple(self.layers)
        if self.block not in BLOCKS:
            raise ValueError(f"ResNetConfig: 'block' expected one of {', '.join(BLOCKS)} but got {self.block!r}")
        if not self.layers or min(self.layers) < 1:
            raise ValueError(f"ResNetConfig: 'layers' expected positive block counts but got {self.layers}")


def conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Sequential:
    """A bias-free convolution with 'same' padding followed by BN (the bias would be undone by BN)."""
    return nn.Sequential(
        Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
        BatchNorm2d(out_channels),
    )


class _ResidualBlock(nn.Module):
    """y = ReLU(F(x) + shortcut(x)); F ends with BN `last_bn` (zeroed by zero_init_residual)."""

    expansion: int

    def __init__(self, in_channels: int, width: int, stride: int, se_reduction: int):
        super().__init__()
        out_channels = width * self.expansion
        self.branch = self._branch(in_channels, width, stride)
        # SE recalibrates the branch before the addition (Hu et al. 2018, Fig. 3).
        self.se = SqueezeExcitation(out_channels, out_channels // se_reduction) if se_reduction else nn.Identity()
        needs_projection = stride != 1 or in_channels != out_channels
        self.shortcut = conv_bn(in_channels, out_channels, 1, stride) if needs_projection else nn.Identity()

    @property
    def last_bn(self) -> nn.Module:
        return self.branch[-1][1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.se(self.branch(x)) + self.shortcut(x))


class BasicBlock(_ResidualBlock):
    """Two 3×3 convolutions (ResNet-18/34); the first one strides."""

    expansion = 1

    def _branch(self, in_channels: int, width: int, stride: int) -> nn.Sequential:
        return nn.Sequential(conv_bn(in_channels, width, 3, stride), nn.ReLU(), conv_bn(width, width, 3))


class Bottleneck(_ResidualBlock):
    """1×1 reduce to `width`, 3×3 (strided: v1.5), 1×1 expand to 4·width (Fig. 5 right)."""

    expansion = 4

    def _branch(self, in_channels: int, width: int, stride: int) -> nn.Sequential:
        return nn.Sequential(
            conv_bn(in_channels, width, 1), nn.ReLU(),
            conv_bn(width, width, 3, stride), nn.ReLU(),
            conv_bn(width, width * self.expansion, 1),
        )  # fmt: skip


BLOCKS: dict[str, type[_ResidualBlock]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(ImageClassifier):
    def __init__(self, config: ResNetConfig):
        super().__init__()
        self.config = config
        block = BLOCKS[config.block]
        width = config.base_width
        if config.small_input:
            self.stem = nn.Sequential(conv_bn(config.in_channels, width, 3), nn.ReLU())
        else:  # 7×7/2 conv, 3×3/2 max-pool: /4 before the first stage (Table 1, conv1 and conv2_x)
            self.stem = nn.Sequential(
                conv_bn(config.in_channels, width, 7, stride=2), nn.ReLU(), MaxPool2d(3, stride=2, padding=1)
            )
        stages, in_channels = [], width
        for index, depth in enumerate(config.layers):
            stage_width = config.base_width * 2**index
            stride = 1 if index == 0 else 2
            blocks = []
            for block_index in range(depth):
                blocks.append(block(in_channels, stage_width, stride if block_index == 0 else 1, config.se_reduction))
                in_channels = stage_width * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self._init_weights()
        self._build_head(in_channels, config.num_classes, config.dropout)

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, Conv2d):  # He et al. 2015 ("Delving deep into rectifiers"), fan-out
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if self.config.zero_init_residual:
            for module in self.modules():
                if isinstance(module, _ResidualBlock):
                    nn.init.zeros_(module.last_bn.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))  # (B, C·expansion·8, H/32, W/32), or H, W /8 with small_input


# ------------------------------------------------------------------------------ constructors

# Table 1: block type and blocks per stage of each depth.
DEPTHS: dict[int, tuple[str, tuple[int, ...]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


def create_resnet(**kwargs) -> ResNet:
    return ResNet(ResNetConfig(**kwargs))


for _depth, (_block, _layers) in DEPTHS.items():
    register_variant(f"resnet{_depth}", create_resnet, f"ResNet-{_depth} (Table 1).", block=_block, layers=_layers)
