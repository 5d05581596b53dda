"""replearn's native ops: torch library ops `torch.ops.replearn.<name>` with typed wrappers.

Each public function here mirrors its `torch.nn.functional` counterpart and runs native kernels
(csrc/) forward and backward on CPU and CUDA. `list_ops()` names every registered op; the test
suite is driven by it, so an op is covered by parity, gradcheck, opcheck, compile and bad-input
tests the moment it is registered.
"""

from ._registry import list_ops, op_info
from .conv import causal_conv1d, conv1d, conv2d, conv_transpose1d, conv_transpose2d
from .norm import batch_norm, group_norm, instance_norm, layer_norm, rms_norm, weight_norm

__all__ = [
    "list_ops",
    "op_info",
    "causal_conv1d",
    "conv1d",
    "conv2d",
    "conv_transpose1d",
    "conv_transpose2d",
    "batch_norm",
    "group_norm",
    "instance_norm",
    "layer_norm",
    "rms_norm",
    "weight_norm",
]
