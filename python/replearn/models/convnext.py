"""ConvNeXt (Liu, Mao, Wu, Feichtenhofer, Darrell & Xie 2022, "A ConvNet for the 2020s", CVPR).

A ResNet modernized step by step towards a vision Transformer (§2): a "patchify" stem (a 4×4
convolution with stride 4, §2.2), stage depths 3:3:9:3 (§2.2), inverted bottlenecks with the depthwise
convolution moved up and enlarged to 7×7 (§2.3–2.4), one GELU and one LayerNorm per block in
channels-last layout instead of ReLU and BN (§2.5), and separate downsampling layers (LayerNorm, then
a 2×2 convolution with stride 2) between stages (§2.5). The block is

    x + DropPath(γ ⊙ Linear(4C→C)(GELU(Linear(C→4C)(LN(dwconv7×7(x))))))

with layer scale γ initialized to 1e-6 (Touvron et al. 2021, "Going deeper with image Transformers")
and stochastic depth (Huang et al. 2016). Variants (§3): T = depths (3, 3, 9, 3), widths (96, 192,
384, 768); S = (3, 3, 27, 3), same widths; B = (3, 3, 27, 3), (128, 256, 512, 1024). ImageNet-1k
stochastic-depth rates 0.1/0.4/0.5 for T/S/B (Appendix A.1, Table 5). LayerNorm ε = 1e-6 and the
weight initialization (truncated normal, std 0.02, zero biases) follow the authors' release.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ._common import ChannelsFirstLayerNorm, ImageClassifier
from ._layers import Conv2d, DropPath, LayerNorm
from ._registry import register_variant

__all__ = ["ConvNeXt", "ConvNeXtBlock", "ConvNeXtConfig"]

LN_EPS = 1e-6


@dataclasses.dataclass
class ConvNeXtConfig:
    """A ConvNeXt; the defaults are ConvNeXt-T's."""

    depths: tuple[int, ...] = (3, 3, 9, 3)
    dims: tuple[int, ...] = (96, 192, 384, 768)
    drop_path_rate: float = 0.1
    """Stochastic-depth rate of the last block, growing linearly from 0 over the blocks."""
    layer_scale_init: float = 1e-6
    """Initial γ of layer scale; 0 disables it."""
    num_classes: int = 1000
    in_channels: int = 3
    patch_size: int = 4
    """Kernel and stride of the stem: 4 in the paper; 1 or 2 for 8×8 images."""
    dropout: float = 0.0

    def __post_init__(self) -> None:
        self.depths, self.dims = tuple(self.depths), tuple(self.dims)
        if len(self.depths) != len(self.dims):
            raise ValueError(f"ConvNeXtConfig: 'depths' and 'dims' expected the same length but got {self.depths} and {self.dims}")


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int, drop_path: float, layer_scale_init: float):
        super().__init__()
        self.dwconv = Conv2d(dim, dim, 7, padding=3, groups=dim)  # depthwise 7×7 (§2.4)
        self.norm = LayerNorm(dim, eps=LN_EPS)  # channels-last
        self.pwconv1 = nn.Linear(dim, 4 * dim)  # inverted bottleneck, expansion 4 (§2.3)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale_init)) if layer_scale_init > 0 else None
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)  # (B, H, W, C): the 1×1 convs are Linear over C
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        if self.gamma is not None:
            y = self.gamma * y
        return x + self.drop_path(y.permute(0, 3, 1, 2))


class ConvNeXt(ImageClassifier):
    def __init__(self, config: ConvNeXtConfig):
        super().__init__()
        self.config = config
        dims = config.dims
        self.stem = nn.Sequential(
            Conv2d(config.in_channels, dims[0], config.patch_size, stride=config.patch_size),  # patchify (§2.2)
            ChannelsFirstLayerNorm(dims[0], eps=LN_EPS),
        )
        total_blocks, block_index = sum(config.depths), 0
        self.downsample = nn.ModuleList()
        self.stages = nn.ModuleList()
        for index, (depth, dim) in enumerate(zip(config.depths, dims)):
            if index > 0:  # separate downsampling layer (§2.5): LN, then 2×2/2 conv
                self.downsample.append(
                    nn.Sequential(ChannelsFirstLayerNorm(dims[index - 1], eps=LN_EPS), Conv2d(dims[index - 1], dim, 2, stride=2))
                )
            rates = [config.drop_path_rate * (block_index + i) / max(1, total_blocks - 1) for i in range(depth)]
            self.stages.append(nn.Sequential(*(ConvNeXtBlock(dim, rate, config.layer_scale_init) for rate in rates)))
            block_index += depth
        self._init_weights()
        self._build_head(dims[-1], config.num_classes, config.dropout, head_norm=LayerNorm(dims[-1], eps=LN_EPS))

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, (Conv2d, nn.Linear)):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def _init_classifier(self, linear: nn.Linear) -> None:
        nn.init.trunc_normal_(linear.weight, std=0.02)
        nn.init.zeros_(linear.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages[0](self.stem(x))
        for downsample, stage in zip(self.downsample, self.stages[1:]):
            x = stage(downsample(x))
        return x  # (B, dims[-1], H/32, W/32)


# ------------------------------------------------------------------------------ constructors


# §3 (depths, widths) and Appendix A.1 (ImageNet-1k stochastic-depth rate) of each variant.
VARIANTS = {
    "tiny": ((3, 3, 9, 3), (96, 192, 384, 768), 0.1),
    "small": ((3, 3, 27, 3), (96, 192, 384, 768), 0.4),
    "base": ((3, 3, 27, 3), (128, 256, 512, 1024), 0.5),
}


def create_convnext(**kwargs) -> ConvNeXt:
    return ConvNeXt(ConvNeXtConfig(**kwargs))


for _variant, (_depths, _dims, _drop_path) in VARIANTS.items():
    register_variant(
        f"convnext_{_variant}", create_convnext, f"ConvNeXt-{_variant[0].upper()}: depths {_depths}, widths {_dims}.",
        depths=_depths, dims=_dims, drop_path_rate=_drop_path,
    )  # fmt: skip
