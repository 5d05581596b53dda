"""replearn's native ops: torch library ops `torch.ops.replearn.<name>` with typed wrappers.

Each public function here mirrors its `torch.nn.functional` counterpart and runs native kernels
(csrc/) forward and backward on CPU and CUDA. `list_ops()` names every registered op; the test
suite is driven by it, so an op is covered by parity, gradcheck, opcheck, compile and bad-input
tests the moment it is registered.
"""
from ._registry import list_ops, op_info
from .attention import attention, attention_dropout_mask, attention_weights
from .conv import conv1d, conv2d, conv_transpose1d, conv_transpose2d, dilated_causal_conv1d
from .flow import actnorm, affine_coupling, channel_mask, checkerboard_mask, invconv1x1, planar_flow
from .norm import batch_norm, group_norm, instance_norm, layer_norm, rms_norm, spectral_norm, weight_norm
from .pool import adaptive_avg_pool1d, adaptive_avg_pool2d, avg_pool1d, avg_pool2d, max_pool1d, max_pool2d
from .ssm import cauchy, causal_conv1d, fft_conv, s4_dplr_kernel, s4d_kernel, selective_scan
from .rnn import gru, lstm, lstm_proj, rnn_relu, rnn_tanh

__all__ = [
    "list_ops",
    "op_info",
    "attention",
    "attention_dropout_mask",
    "attention_weights",
    "conv1d",
    "conv2d",
    "conv_transpose1d",
    "conv_transpose2d",
    "dilated_causal_conv1d",
    "batch_norm",
    "group_norm",
    "instance_norm",
    "layer_norm",
    "rms_norm",
    "spectral_norm",
    "weight_norm",
    "max_pool1d",
    "max_pool2d",
    "avg_pool1d",
    "avg_pool2d",
    "adaptive_avg_pool1d",
    "adaptive_avg_pool2d",
    "cauchy",
    "causal_conv1d",
    "fft_conv",
    "s4_dplr_kernel",
    "s4d_kernel",
    "selective_scan",
    "rnn_tanh",
    "rnn_relu",
    "lstm",
    "lstm_proj",
    "gru",
    "affine_coupling",
    "actnorm",
    "invconv1x1",
    "planar_flow",
    "checkerboard_mask",
    "channel_mask",
]
