"""Pieces shared by the image families: the classifier interface, a channels-first LayerNorm and
the channel rounding of width-scaled networks."""

from __future__ import annotations

import torch
from torch import nn

from ._layers import AdaptiveAvgPool2d, LayerNorm

__all__ = ["ChannelsFirstLayerNorm", "ImageClassifier", "make_divisible"]


def make_divisible(channels: float, divisor: int = 8) -> int:
    """Rounds a scaled channel count to the nearest multiple of `divisor`, never going below 90% of
    it (the rounding of MobileNetV2, Sandler et al. 2018, that EfficientNet's width scaling uses)."""
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * channels:
        rounded += divisor
    return rounded


class ChannelsFirstLayerNorm(LayerNorm):
    """LayerNorm over the channel dimension of a (B, C, *) tensor: each position is normalized over
    its C features alone, as ConvNeXt's stem and downsampling layers do (Liu et al. 2022, §2.5) and as
    a causal decoder needs (no statistics across time). Same parameters and keys as LayerNorm(C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


class ImageClassifier(nn.Module):
    """The interface every image model of the zoo shares (timm's):

    forward(x) = forward_head(forward_features(x)); forward_features gives the last feature map
    (B, num_features, H', W'); forward_head pools it globally, applies the head's norm (ConvNeXt) and
    dropout, then the linear classifier; reset_classifier swaps the classifier for a new task.

    Subclasses build their trunk, then call `_build_head(num_features, num_classes, dropout)`.
    """

    num_features: int

    def _build_head(self, num_features: int, num_classes: int, dropout: float, head_norm: nn.Module | None = None) -> None:
        self.num_features = num_features
        self.global_pool = AdaptiveAvgPool2d(1)
        self.head_norm = head_norm if head_norm is not None else nn.Identity()
        self.head_drop = nn.Dropout(dropout)
        self.reset_classifier(num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Args: x: (B, num_features, H, W) features; pre_logits: stop before the classifier.
        Returns: (B, num_classes) logits, or the (B, num_features) pooled features."""
        x = self.global_pool(x).flatten(1)  # (B, num_features)
        x = self.head_drop(self.head_norm(x))
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """Replaces the classifier by a freshly initialized Linear(num_features, num_classes);
        num_classes = 0 leaves the pooled features as the output (an Identity)."""
        self.num_classes = num_classes
        if num_classes > 0:
            self.classifier = nn.Linear(self.num_features, num_classes)
            self._init_classifier(self.classifier)
        else:
            self.classifier = nn.Identity()

    def _init_classifier(self, linear: nn.Linear) -> None:
        """torch's default Linear initialization; families that prescribe another override this."""
