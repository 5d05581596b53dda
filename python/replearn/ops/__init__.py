"""replearn's native ops: torch library ops `torch.ops.replearn.<name>` with typed wrappers.

Each public function here mirrors its `torch.nn.functional` counterpart and runs native kernels
(csrc/) forward and backward on CPU and CUDA. `list_ops()` names every registered op; the test
suite is driven by it, so an op is covered by parity, gradcheck, opcheck, compile and bad-input
tests the moment it is registered.
"""

from ._registry import list_ops, op_info
from .norm import batch_norm, group_norm, instance_norm, layer_norm, rms_norm, weight_norm
from .rnn import gru, lstm, rnn_relu, rnn_tanh

__all__ = [
    "list_ops",
    "op_info",
    "batch_norm",
    "group_norm",
    "instance_norm",
    "layer_norm",
    "rms_norm",
    "weight_norm",
    "rnn_tanh",
    "rnn_relu",
    "lstm",
    "gru",
]
