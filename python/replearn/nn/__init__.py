"""replearn's user-facing layers: drop-in replacements for their torch.nn counterparts.

Each layer takes the same constructor arguments and has the same state_dict keys as the torch.nn
layer of the same name, so `torch.nn.LayerNorm` can be swapped for `replearn.nn.LayerNorm` and the
same checkpoint loaded; forward runs replearn's native ops. `replearn.nn.utils` holds
`weight_norm` / `remove_weight_norm`.
"""

from . import utils
from .norm import (
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    GroupNorm,
    InstanceNorm1d,
    InstanceNorm2d,
    InstanceNorm3d,
    LayerNorm,
    RMSNorm,
)

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "GroupNorm",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "LayerNorm",
    "RMSNorm",
    "utils",
]
