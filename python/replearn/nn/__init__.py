"""replearn's user-facing layers: drop-in replacements for their torch.nn counterparts.

Each layer takes the same constructor arguments and has the same state_dict keys as the torch.nn
layer of the same name, so `torch.nn.LayerNorm` can be swapped for `replearn.nn.LayerNorm` and the
same checkpoint loaded; forward runs replearn's native ops. `replearn.nn.utils` holds
`weight_norm` / `remove_weight_norm`; `create_norm` builds a norm layer by name and `MLP` stacks
Linear → Norm → ReLU blocks. Pooling layers (MaxPool, AvgPool, AdaptiveAvgPool) have no state.
"""

from . import flows, init, utils
from .attention import KVCache, MultiheadAttention
from .conv import Conv1d, Conv2d, ConvTranspose1d, ConvTranspose2d
from .create_norm import NORM_KINDS, create_norm
from .drop import DropPath
from .mlp import MLP
from .ssm import MambaBlock, S4Layer, SelectiveSSM, hippo_legs, nplr_legs, s4d_init
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
from .pool import AdaptiveAvgPool1d, AdaptiveAvgPool2d, AvgPool1d, AvgPool2d, MaxPool1d, MaxPool2d

__all__ = [
    "DropPath",
    "AdaptiveAvgPool1d",
    "AdaptiveAvgPool2d",
    "AvgPool1d",
    "AvgPool2d",
    "MaxPool1d",
    "MaxPool2d",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "Conv1d",
    "Conv2d",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "GroupNorm",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "KVCache",
    "LayerNorm",
    "MambaBlock",
    "MLP",
    "MultiheadAttention",
    "NORM_KINDS",
    "RMSNorm",
    "S4Layer",
    "SelectiveSSM",
    "create_norm",
    "hippo_legs",
    "nplr_legs",
    "s4d_init",
    "utils",
    "flows",
    "init",
    "RNN",
    "LSTM",
    "GRU",
    "RNNCell",
    "LSTMCell",
    "GRUCell",
]
