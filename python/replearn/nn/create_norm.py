"""Normalization layers by name, for models whose norm is a configuration choice.

    create_norm("batch", 128)    ->  BatchNorm1d(128)
    create_norm("layer", 128)    ->  LayerNorm(128)
    create_norm("rms", 128)      ->  RMSNorm(128)
    create_norm("group", 128)    ->  GroupNorm(8, 128)

The layers normalize feature vectors (N, C); batch and group norm also take (N, C, L).
"""

from __future__ import annotations

from torch.nn import Module

from .norm import BatchNorm1d, GroupNorm, LayerNorm, RMSNorm

__all__ = ["NORM_KINDS", "create_norm"]

NORM_KINDS = ("batch", "layer", "rms", "group")


def create_norm(kind: str, num_features: int, *, num_groups: int = 8) -> Module:
    """A normalization layer over `num_features` features, chosen by name.

    Args:
        kind: one of NORM_KINDS: "batch" (BatchNorm1d), "layer" (LayerNorm), "rms" (RMSNorm) or
            "group" (GroupNorm).
        num_features: the number of features C.
        num_groups: the number of groups of a "group" norm; must divide num_features.

    Returns:
        The layer, with torch's default arguments otherwise.

    Raises:
        ValueError: an unknown kind, or num_groups not dividing num_features.
    """
    if kind == "batch":
        return BatchNorm1d(num_features)
    if kind == "layer":
        return LayerNorm(num_features)
    if kind == "rms":
        return RMSNorm(num_features)
    if kind == "group":
        return GroupNorm(num_groups, num_features)
    raise ValueError(f"create_norm: argument 'kind' expected one of {', '.join(NORM_KINDS)} but got {kind!r}")
