"""Convolution layers: drop-in replacements for torch.nn's, running replearn's native kernels.

    Conv1d, Conv2d                    y = conv(x, w) + b   (LeCun et al. 1989)
    ConvTranspose1d, ConvTranspose2d  the adjoint of conv in x (Dumoulin & Visin 2016)

Each class takes the same constructor arguments, with the same defaults, as its torch.nn
counterpart, has the same attributes and `state_dict` keys (`weight`, `bias`), and initializes its
parameters the same way (Kaiming-uniform with a = √5 for the weight, U(−1/√fan_in, 1/√fan_in) for the
bias), so a torch checkpoint loads into it and back. Forward calls `replearn.ops.*` only.

padding_mode: "zeros" is the convolution's own zero padding. "reflect", "replicate" and "circular"
(Conv1d/Conv2d only, as in torch) pad with `torch.nn.functional.pad` first and convolve without
padding, which is what torch's layers do too.

As with the norm layers, these are written rather than subclassed from torch's, so that no torch
forward is inherited by accident and `isinstance(m, torch.nn.Conv2d)` stays false.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Module, Parameter, init

from .. import ops

__all__ = ["Conv1d", "Conv2d", "ConvTranspose1d", "ConvTranspose2d"]

_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def _tuple(value: int | Sequence[int], n: int) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * n
    value = tuple(value)
    return value * n if len(value) == 1 else value


class _ConvNd(Module):
    """What the four layers share: arguments, parameters, initialization and the printed form."""

    _spatial: int
    transposed: bool = False

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int],
        padding: str | int | Sequence[int],
        dilation: int | Sequence[int],
        output_padding: int | Sequence[int],
        groups: int,
        bias: bool,
        padding_mode: str,
        device: Any,
        dtype: Any,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if groups <= 0:
            raise ValueError(f"{name}: argument 'groups' expected a positive integer but got {groups}")
        if in_channels % groups:
            raise ValueError(f"{name}: argument 'in_channels' expected a multiple of groups = {groups} but got {in_channels}")
        if out_channels % groups:
            raise ValueError(f"{name}: argument 'out_channels' expected a multiple of groups = {groups} but got "
                             f"{out_channels}")  # fmt: skip
        if padding_mode not in _PADDING_MODES:
            raise ValueError(f"{name}: argument 'padding_mode' expected one of {_PADDING_MODES} but got {padding_mode!r}")
        if self.transposed and padding_mode != "zeros":
            raise ValueError(f"{name}: argument 'padding_mode' expected 'zeros' (the only mode of a transposed "
                             f"convolution) but got {padding_mode!r}")  # fmt: skip
        n = self._spatial
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = _tuple(kernel_size, n)
        self.stride = _tuple(stride, n)
        self.dilation = _tuple(dilation, n)
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"{name}: argument 'padding' expected 'same', 'valid', an int or a tuple but got "
                                 f"{padding!r}")  # fmt: skip
            if padding == "same" and any(s != 1 for s in self.stride):
                raise ValueError(f"{name}: argument 'padding' 'same' expected stride 1 but got stride {self.stride}")
            self.padding: str | tuple[int, ...] = padding
        else:
            self.padding = _tuple(padding, n)
        self.output_padding = _tuple(output_padding, n)
        self.groups = groups
        self.padding_mode = padding_mode
        # F.pad's order: last dim first, (begin, end) each; "same" splits D·(K − 1) with the extra at the end.
        if isinstance(self.padding, str):
            total = [0] * n if self.padding == "valid" else [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size)]
            self._reversed_padding_repeated_twice = [p for t in reversed(total) for p in (t // 2, t - t // 2)]
        else:
            self._reversed_padding_repeated_twice = [p for p in reversed(self.padding) for _ in range(2)]
        factory = {"device": device, "dtype": dtype}
        shape = (in_channels, out_channels // groups) if self.transposed else (out_channels, in_channels // groups)
        self.weight = Parameter(torch.empty(*shape, *self.kernel_size, **factory))
        if bias:
            self.bias = Parameter(torch.empty(out_channels, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # torch's initialization (kaiming_uniform with a = √5 ⇒ U(±1/√fan_in) for the weight too).
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in, _ = init._calculate_fan_in_and_fan_out(self.weight)
            bound = 1 / math.sqrt(fan_in) if fan_in != 0 else 0
            init.uniform_(self.bias, -bound, bound)

    def extra_repr(self) -> str:
        s = "{in_channels}, {out_channels}, kernel_size={kernel_size}, stride={stride}"
        if self.padding != (0,) * self._spatial:
            s += ", padding={padding}"
        if self.dilation != (1,) * self._spatial:
            s += ", dilation={dilation}"
        if self.output_padding != (0,) * self._spatial:
            s += ", output_padding={output_padding}"
        if self.groups != 1:
            s += ", groups={groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += ", padding_mode={padding_mode}"
        return s.format(**self.__dict__)


class _Conv(_ConvNd):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: str | int | Sequence[int] = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, 0, groups, bias,
                         padding_mode, device, dtype)  # fmt: skip

    def forward(self, input: Tensor) -> Tensor:
        conv = ops.conv1d if self._spatial == 1 else ops.conv2d
        if self.padding_mode != "zeros":
            padded = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return conv(padded, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
        return conv(input, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class Conv1d(_Conv):
    """1-D convolution over (N, C_in, L): torch.nn.Conv1d's arguments, parameters and state_dict.

    Args:
        in_channels, out_channels: channels of the input and output.
        kernel_size, stride, dilation: ints or 1-tuples.
        padding: an int, a 1-tuple, "valid" or "same".
        groups: independent channel groups (groups = in_channels: depthwise).
        bias: whether to learn an additive bias.
        padding_mode: "zeros", "reflect", "replicate" or "circular".
        device, dtype: of the parameters.
    """

    _spatial = 1


class Conv2d(_Conv):
    """2-D convolution over (N, C_in, H, W): torch.nn.Conv2d's arguments, parameters and state_dict.

    Args:
        in_channels, out_channels: channels of the input and output.
        kernel_size, stride, dilation: ints or (h, w) pairs.
        padding: an int, an (h, w) pair, "valid" or "same".
        groups: independent channel groups (groups = in_channels: depthwise).
        bias: whether to learn an additive bias.
        padding_mode: "zeros", "reflect", "replicate" or "circular".
        device, dtype: of the parameters.
    """

    _spatial = 2


class _ConvTranspose(_ConvNd):
    transposed = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] = 0,
        output_padding: int | Sequence[int] = 0,
        groups: int = 1,
        bias: bool = True,
        dilation: int | Sequence[int] = 1,
        padding_mode: str = "zeros",
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        if isinstance(padding, str):
            raise ValueError(f"{type(self).__name__}: argument 'padding' expected an int or a tuple but got {padding!r}")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, output_padding, groups,
                         bias, padding_mode, device, dtype)  # fmt: skip

    def _output_padding(self, input: Tensor, output_size: Sequence[int] | None) -> tuple[int, ...]:
        """output_padding, or the one that gives `output_size` (the trailing spatial sizes)."""
        if output_size is None:
            return self.output_padding
        n = self._spatial
        size = list(output_size)[-n:]
        if len(size) != n:
            raise ValueError(f"{type(self).__name__}: argument 'output_size' expected {n} spatial sizes but got "
                             f"{list(output_size)}")  # fmt: skip
        result = []
        for d in range(n):
            base = ((input.shape[input.dim() - n + d] - 1) * self.stride[d] - 2 * self.padding[d]
                    + self.dilation[d] * (self.kernel_size[d] - 1) + 1)  # fmt: skip
            extra = size[d] - base
            if not 0 <= extra < max(self.stride[d], self.dilation[d]):
                raise ValueError(f"{type(self).__name__}: argument 'output_size' expected sizes between {base} and "
                                 f"{base + max(self.stride[d], self.dilation[d]) - 1} in dimension {d} but got "
                                 f"{list(output_size)}")  # fmt: skip
            result.append(extra)
        return tuple(result)

    def forward(self, input: Tensor, output_size: Sequence[int] | None = None) -> Tensor:
        conv = ops.conv_transpose1d if self._spatial == 1 else ops.conv_transpose2d
        output_padding = self._output_padding(input, output_size)
        return conv(input, self.weight, self.bias, self.stride, self.padding, output_padding, self.groups,
                    self.dilation)  # fmt: skip


class ConvTranspose1d(_ConvTranspose):
    """1-D transposed convolution: torch.nn.ConvTranspose1d's arguments, parameters and state_dict.

    Args:
        in_channels, out_channels: channels of the input and output.
        kernel_size, stride, padding, output_padding, dilation: ints or 1-tuples.
        groups: independent channel groups.
        bias: whether to learn an additive bias.
        padding_mode: "zeros" only (as torch).
        device, dtype: of the parameters.
    """

    _spatial = 1


class ConvTranspose2d(_ConvTranspose):
    """2-D transposed convolution: torch.nn.ConvTranspose2d's arguments, parameters and state_dict.

    Args:
        in_channels, out_channels: channels of the input and output.
        kernel_size, stride, padding, output_padding, dilation: ints or (h, w) pairs.
        groups: independent channel groups.
        bias: whether to learn an additive bias.
        padding_mode: "zeros" only (as torch).
        device, dtype: of the parameters.
    """

    _spatial = 2
