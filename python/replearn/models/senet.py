"""SE-ResNet (Hu, Shen & Sun 2018, "Squeeze-and-Excitation Networks", CVPR).

ResNet with a squeeze-and-excitation block (squeeze_excitation.py) on every residual branch,
recalibrating the branch's channels before the addition (Fig. 3, "SE-ResNet module"). The paper
uses the reduction ratio r = 16 throughout (§6.1; Table 10 studies r). Everything else is the ResNet
of resnet.py, at the same depths; `se_reduction` may be overridden
(`create("seresnet50", se_reduction=8)`).
"""

from __future__ import annotations

from ._registry import register_variant
from .resnet import DEPTHS, create_resnet

__all__: list[str] = []

SE_REDUCTION = 16  # r of §6.1

for _depth, (_block, _layers) in DEPTHS.items():
    register_variant(
        f"seresnet{_depth}", create_resnet, f"SE-ResNet-{_depth}, r = {SE_REDUCTION}.",
        block=_block, layers=_layers, se_reduction=SE_REDUCTION,
    )  # fmt: skip
