"""replearn's user-facing layers: drop-in replacements for their torch.nn counterparts.

Each layer takes the same constructor arguments and has the same state_dict keys as the torch.nn
layer of the same name, so `torch.nn.LayerNorm` can be swapped for `replearn.nn.LayerNorm` and the
same checkpoint loaded; forward runs replearn's native ops. `replearn.nn.utils` holds
`weight_norm` / `remove_weight_norm`; `create_norm` builds a norm layer by name and `MLP` stacks
Linear → Norm → ReLU blocks.
"""

from . import init, utils
from .create_norm import NORM_KINDS, create_norm
from .mlp import MLP
from .rnn import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell
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
    "MLP",
    "NORM_KINDS",
    "RMSNorm",
    "create_norm",
    "utils",
    "init",
    "RNN",
    "LSTM",
    "GRU",
    "RNNCell",
    "LSTMCell",
    "GRUCell",
]
