"""Normalization layers: drop-in replacements for torch.nn's, running replearn's native kernels.

    BatchNorm1d/2d/3d     per channel over the batch (Ioffe & Szegedy 2015)
    InstanceNorm1d/2d/3d  per sample and channel (Ulyanov et al. 2016)
    LayerNorm             per sample over the trailing dims (Ba et al. 2016)
    RMSNorm               LayerNorm without centering (Zhang & Sennrich 2019)
    GroupNorm             per sample over groups of channels (Wu & He 2018)

Each class takes the same constructor arguments, with the same defaults, as its torch.nn
counterpart, and has the same attributes, parameters, buffers and `state_dict` keys (including the
`_version` metadata torch's loaders read), so a checkpoint of a torch network loads into the same
network built from these layers and back (ARCHITECTURE.md, "user-facing layer"). Forward calls
`replearn.ops.*` only; the bookkeeping around it (running-average momentum, the cumulative average
for momentum=None, which statistics evaluation uses) follows torch's modules line by line.

The classes are written here rather than subclassing torch's: a subclass would also inherit
torch's forward for any method we forgot to override, and `isinstance(m, torch.nn.BatchNorm2d)`
checks elsewhere would then treat our layer as torch's. Our errors are ValueErrors that name the
layer and what it expected, where torch raises a mix of ValueError and RuntimeError.
"""

from __future__ import annotations

import numbers
import warnings
from typing import Any, Sequence

import torch
from torch import Tensor
from torch.nn import Module, Parameter, init

from .. import ops

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "LayerNorm",
    "RMSNorm",
    "GroupNorm",
]

_Shape = int | Sequence[int] | torch.Size


def _factory_kwargs(device: Any, dtype: Any) -> dict[str, Any]:
    return {"device": device, "dtype": dtype}


def _register_affine(module: Module, shape: Any, affine: bool, bias: bool, factory_kwargs: dict[str, Any]) -> None:
    """Parameters `weight` and `bias` of `shape` (set by `_reset_affine`), registered as torch does:
    without affine both are None, and without bias only `bias` is None."""
    if affine:
        module.weight = Parameter(torch.empty(shape, **factory_kwargs))
        if bias:
            module.bias = Parameter(torch.empty(shape, **factory_kwargs))
        else:
            module.register_parameter("bias", None)
    else:
        module.register_parameter("weight", None)
        module.register_parameter("bias", None)


def _reset_affine(module: Module) -> None:
    """Weight to 1 and bias to 0, where they exist: the identity transform."""
    if module.weight is not None:
        init.ones_(module.weight)
    if getattr(module, "bias", None) is not None:
        init.zeros_(module.bias)


# =============================================================================== batch / instance


class _NormBase(Module):
    """What batch and instance normalization share: affine parameters and running statistics.

    Parameters `weight`, `bias` (shape (C)) when `affine`; buffers `running_mean`, `running_var`
    (shape (C)) and `num_batches_tracked` (a long scalar) when `track_running_stats`; each is
    registered as None otherwise, as torch does, so attribute access and state_dict keys match.
    """

    # Version 2 added num_batches_tracked; torch writes the same number into state_dict metadata.
    _version = 2

    num_features: int
    eps: float
    momentum: float | None
    affine: bool
    track_running_stats: bool

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
    ) -> None:
        factory_kwargs = _factory_kwargs(device, dtype)
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        _register_affine(self, num_features, affine, bias, factory_kwargs)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory_kwargs))
            self.register_buffer("running_var", torch.ones(num_features, **factory_kwargs))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        """Running mean to 0, running variance to 1, batch count to 0 (when tracked)."""
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        """Running statistics reset; weight to 1 and bias to 0 (when affine)."""
        self.reset_running_stats()
        _reset_affine(self)

    def _check_input_dim(self, input: Tensor) -> None:
        raise NotImplementedError

    def _rank_error(self, expected: str, input: Tensor) -> ValueError:
        # torch's wording ("expected 4D input (got 3D input)"), prefixed with the layer's name.
        return ValueError(f"{type(self).__name__}: expected {expected} input (got {input.dim()}D input)")

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
            f"bias={self.bias is not None}, track_running_stats={self.track_running_stats}"
        )

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # Checkpoints older than version 2 carry no num_batches_tracked: start it at 0, as torch does.
        version = local_metadata.get("version", None)
        if (version is None or version < 2) and self.track_running_stats:
            key = prefix + "num_batches_tracked"
            if key not in state_dict:
                tracked = self.num_batches_tracked
                state_dict[key] = (
                    tracked if tracked.device != torch.device("meta") else torch.tensor(0, dtype=torch.long)
                )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


class _BatchNorm(_NormBase):
    """Batch normalization over (N, C, *): batch statistics in training, running averages in eval.

    In training the running averages move towards the batch statistics,
    r ← (1 − m)·r + m·s with the unbiased batch variance for running_var, where m is `momentum`,
    or 1/num_batches_tracked when momentum is None (a cumulative average of every batch seen).
    Without tracked statistics the batch statistics are used in evaluation too.
    """

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        average_factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                average_factor = 1.0 / float(self.num_batches_tracked)
        # Batch statistics in training, and in evaluation when there are no running averages.
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        # Running averages are passed where they are read (eval) or updated (training, tracked).
        pass_running = not self.training or self.track_running_stats
        return ops.batch_norm(
            input,
            self.running_mean if pass_running else None,
            self.running_var if pass_running else None,
            self.weight,
            self.bias,
            use_batch_stats,
            average_factor,
            self.eps,
        )


class BatchNorm1d(_BatchNorm):
    """Batch normalization of a batch of vectors (N, C) or sequences (N, C, L).

    Same arguments, defaults, parameters, buffers and state_dict keys as `torch.nn.BatchNorm1d`.

    Args:
        num_features: C, the number of features or channels.
        eps: added to the variance.
        momentum: weight of each new batch statistic in the running averages; None for a
            cumulative average over every batch seen.
        affine: learn a per-channel scale `weight` (init 1) and shift `bias` (init 0).
        track_running_stats: keep running averages for evaluation; without them, evaluation
            normalizes with the statistics of its own batch.
        device, dtype: where and how to allocate parameters and buffers.
        bias: with affine, whether to learn the shift (keyword-only).
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() not in (2, 3):
            raise self._rank_error("2D or 3D", input)


class BatchNorm2d(_BatchNorm):
    """Batch normalization of a batch of images (N, C, H, W); arguments as `BatchNorm1d`.

    Same arguments, defaults, parameters, buffers and state_dict keys as `torch.nn.BatchNorm2d`.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 4:
            raise self._rank_error("4D", input)


class BatchNorm3d(_BatchNorm):
    """Batch normalization of a batch of volumes (N, C, D, H, W); arguments as `BatchNorm1d`.

    Same arguments, defaults, parameters, buffers and state_dict keys as `torch.nn.BatchNorm3d`.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 5:
            raise self._rank_error("5D", input)


class _InstanceNorm(_NormBase):
    """Instance normalization over (N, C, *) or unbatched (C, *): statistics per sample and channel.

    With `track_running_stats`, training updates the running averages with the batch mean of the
    per-instance statistics (momentum None counts as 0, and num_batches_tracked is never
    incremented, exactly as in torch), and evaluation normalizes with them.
    """

    _spatial_dims: int  # dims after the channel dim: 1 for InstanceNorm1d, 2 for 2d, 3 for 3d

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = False,
        track_running_stats: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias)

    def _check_input_dim(self, input: Tensor) -> None:
        unbatched = self._spatial_dims + 1
        if input.dim() not in (unbatched, unbatched + 1):
            raise self._rank_error(f"{unbatched}D or {unbatched + 1}D", input)

    def _apply_instance_norm(self, input: Tensor) -> Tensor:
        return ops.instance_norm(
            input,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            self.training or not self.track_running_stats,
            self.momentum if self.momentum is not None else 0.0,
            self.eps,
        )

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        channel_dim = input.dim() - self._spatial_dims - 1
        channels = input.size(channel_dim)
        if channels != self.num_features:
            if self.affine:
                raise ValueError(
                    f"{type(self).__name__}: expected input's size at dim={channel_dim} to match "
                    f"num_features ({self.num_features}), but got: {channels}."
                )
            # torch only warns here: without affine parameters num_features is not used.
            warnings.warn(
                f"input's size at dim={channel_dim} does not match num_features. You can silence this "
                "warning by not passing in num_features, which is not used because affine=False",
                stacklevel=2,
            )
        if channel_dim == 0:  # unbatched (C, *): a batch of one
            return self._apply_instance_norm(input.unsqueeze(0)).squeeze(0)
        return self._apply_instance_norm(input)


class InstanceNorm1d(_InstanceNorm):
    """Instance normalization of sequences (N, C, L) or (C, L).

    Same arguments, defaults, parameters, buffers and state_dict keys as `torch.nn.InstanceNorm1d`.

    Args:
        num_features: C, the number of channels.
        eps: added to the variance.
        momentum: weight of each new statistic in the running averages (None counts as 0).
        affine: learn a per-channel scale `weight` (init 1) and shift `bias` (init 0).
        track_running_stats: keep running averages and normalize with them in evaluation.
        device, dtype: where and how to allocate parameters and buffers.
        bias: with affine, whether to learn the shift (keyword-only).
    """

    _spatial_dims = 1


class InstanceNorm2d(_InstanceNorm):
    """Instance normalization of images (N, C, H, W) or (C, H, W); arguments as `InstanceNorm1d`.

    Same arguments, defaults, parameters, buffers and state_dict keys as `torch.nn.InstanceNorm2d`.
    """

    _spatial_dims = 2


class InstanceNorm3d(_InstanceNorm):
    """Instance normalization of volumes (N, C, D, H, W) or (C, D, H, W); arguments as `InstanceNorm1d`.

    Same arguments, defaults, parameters, buffers and state_dict keys as `torch.nn.InstanceNorm3d`.
    """

    _spatial_dims = 3


# =================================================================================== layer / RMS


def _as_shape(normalized_shape: _Shape) -> tuple[int, ...]:
    if isinstance(normalized_shape, numbers.Integral):
        return (int(normalized_shape),)
    return tuple(normalized_shape)


class LayerNorm(Module):
    """Layer normalization over the trailing `normalized_shape` dims of an input of any leading shape.

    Same arguments, defaults, parameters and state_dict keys as `torch.nn.LayerNorm`; statistics
    come from the input in training and evaluation alike.

    Args:
        normalized_shape: the trailing shape to normalize over (an int for the last dim).
        eps: added to the variance.
        elementwise_affine: learn a per-element scale `weight` (init 1) and shift `bias` (init 0)
            of shape normalized_shape.
        bias: with elementwise_affine, whether to learn the shift.
        device, dtype: where and how to allocate the parameters.
    """

    normalized_shape: tuple[int, ...]
    eps: float
    elementwise_affine: bool

    def __init__(
        self,
        normalized_shape: _Shape,
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        factory_kwargs = _factory_kwargs(device, dtype)
        super().__init__()
        self.normalized_shape = _as_shape(normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        _register_affine(self, self.normalized_shape, elementwise_affine, bias, factory_kwargs)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weight to 1 and bias to 0 (when elementwise_affine)."""
        _reset_affine(self)

    def forward(self, input: Tensor) -> Tensor:
        return ops.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return (
            f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}, "
            f"bias={self.bias is not None}"
        )


class RMSNorm(Module):
    """RMS normalization y = x / √(mean(x²) + ε) · weight over the trailing `normalized_shape` dims.

    Same arguments, defaults, parameters and state_dict keys as `torch.nn.RMSNorm`; any leading shape.

    Args:
        normalized_shape: the trailing shape to normalize over (an int for the last dim).
        eps: added to the mean square; None for the machine epsilon of the input's dtype.
        elementwise_affine: learn a per-element scale `weight` (init 1) of shape normalized_shape.
        device, dtype: where and how to allocate the parameter.
    """

    normalized_shape: tuple[int, ...]
    eps: float | None
    elementwise_affine: bool

    def __init__(
        self,
        normalized_shape: _Shape,
        eps: float | None = None,
        elementwise_affine: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        factory_kwargs = _factory_kwargs(device, dtype)
        super().__init__()
        self.normalized_shape = _as_shape(normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        if elementwise_affine:
            self.weight = Parameter(torch.empty(self.normalized_shape, **factory_kwargs))
        else:
            self.register_parameter("weight", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weight to 1 (when elementwise_affine)."""
        _reset_affine(self)

    def forward(self, x: Tensor) -> Tensor:
        return ops.rms_norm(x, self.normalized_shape, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"


# ========================================================================================= group


class GroupNorm(Module):
    """Group normalization of (N, C, *): statistics per sample over each group of C/G channels.

    Same arguments, defaults, parameters and state_dict keys as `torch.nn.GroupNorm`; statistics
    come from the input in training and evaluation alike.

    Args:
        num_groups: G, the number of groups; must divide num_channels.
        num_channels: C, the number of channels.
        eps: added to the variance.
        affine: learn a per-channel scale `weight` (init 1) and shift `bias` (init 0).
        device, dtype: where and how to allocate the parameters.
        bias: with affine, whether to learn the shift (keyword-only).

    Raises:
        ValueError: num_channels is not divisible by num_groups.
    """

    num_groups: int
    num_channels: int
    eps: float
    affine: bool

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
    ) -> None:
        factory_kwargs = _factory_kwargs(device, dtype)
        super().__init__()
        if num_channels % num_groups != 0:
            raise ValueError(f"num_channels ({num_channels}) must be divisible by num_groups ({num_groups})")
        self.num_groups = num_groups
        self.num_channels = num_channels
        self.eps = eps
        self.affine = affine
        _register_affine(self, num_channels, affine, bias, factory_kwargs)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weight to 1 and bias to 0 (when affine)."""
        _reset_affine(self)

    def forward(self, input: Tensor) -> Tensor:
        if input.dim() < 2:
            raise ValueError(f"GroupNorm: expected at least 2D input (N, C, *) (got {input.dim()}D input)")
        # torch checks the channel count through the weight's size, so only with affine parameters;
        # without them any C divisible by num_groups is accepted, by torch and here alike.
        if self.affine and input.size(1) != self.num_channels:
            raise ValueError(
                f"GroupNorm: expected input with num_channels ({self.num_channels}) at dim=1 "
                f"but got shape {tuple(input.shape)}"
            )
        return ops.group_norm(input, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return (
            f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}, "
            f"bias={self.bias is not None}"
        )
