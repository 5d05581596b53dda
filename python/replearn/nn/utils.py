"""Weight normalization of a module's parameter: w = g · v / ‖v‖ (Salimans & Kingma 2016).

The hook-based API of `torch.nn.utils.weight_norm`: the parameter `<name>` is replaced by a
magnitude `<name>_g` and a direction `<name>_v`, and a forward pre-hook recomputes `<name>` from
them before every forward, with the native `replearn.ops.weight_norm` kernel forward and backward.
Parameter names, shapes and order are torch's, so the state_dict of a module weight-normalized by
torch loads into the same module weight-normalized here, and back.

We mirror this API rather than torch's newer parametrization one
(`torch.nn.utils.parametrizations.weight_norm`, whose keys read
`parametrizations.weight.original0/1`) because it is the one the course and most published
checkpoints use; the newer API loads these checkpoints too.

Spectral normalization (`spectral_norm`, `remove_spectral_norm`) lives in nn/spectral_norm.py and is
re-exported here, where torch keeps it.
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch
from torch.nn import Module, Parameter

from .. import ops
from ._reparameterize import check_reparameterizable, find_pre_hook
from .spectral_norm import SpectralNorm, remove_spectral_norm, spectral_norm

__all__ = ["WeightNorm", "weight_norm", "remove_weight_norm", "SpectralNorm", "spectral_norm", "remove_spectral_norm"]

ModuleT = TypeVar("ModuleT", bound=Module)


def _magnitude(v: torch.Tensor, dim: int) -> torch.Tensor:
    """‖v‖ over every dim but `dim`, shaped to broadcast against v; over all of v when dim is -1.

    Same value and shape as `torch.norm_except_dim(v, 2, dim)`: (1, …, v.size(dim), …, 1), or a
    0-dim tensor for the whole tensor.
    """
    if dim == -1:
        return torch.linalg.vector_norm(v)
    reduce = [d for d in range(v.dim()) if d != dim]
    if not reduce:  # a 1-D v, one magnitude per element (vector_norm would read [] as every dim)
        return v.abs()
    return torch.linalg.vector_norm(v, dim=reduce, keepdim=True)


class WeightNorm:
    """The forward pre-hook that recomputes `module.<name>` from `<name>_g` and `<name>_v`.

    Attributes:
        name: the name of the reparameterized parameter.
        dim: the dim whose slices are normalized separately; -1 for the whole tensor.
    """

    name: str
    dim: int

    def __init__(self, name: str, dim: int | None) -> None:
        self.name = name
        self.dim = -1 if dim is None else dim

    def compute_weight(self, module: Module) -> torch.Tensor:
        """g · v / ‖v‖ from the module's current `<name>_g` and `<name>_v`."""
        g = getattr(module, self.name + "_g")
        v = getattr(module, self.name + "_v")
        return ops.weight_norm(v, g, self.dim)

    @staticmethod
    def apply(module: Module, name: str, dim: int | None) -> "WeightNorm":
        """Replaces parameter `name` of `module` by `<name>_g`, `<name>_v` and registers the hook."""
        weight = getattr(module, name, None)
        check_reparameterizable(module, name, weight, WeightNorm, "weight_norm", "weight normalization")
        fn = WeightNorm(name, dim)
        if fn.dim != -1 and not -weight.dim() <= fn.dim < weight.dim():
            raise ValueError(
                f"weight_norm: argument 'dim' expected None, -1 or a dimension of {name!r} "
                f"(rank {weight.dim()}) but got {fn.dim}"
            )
        # g starts at ‖v‖, so w equals the original weight until training moves g or v.
        del module._parameters[name]
        with torch.no_grad():
            magnitude = _magnitude(weight, fn.dim % weight.dim() if fn.dim != -1 else -1)
        module.register_parameter(name + "_g", Parameter(magnitude))
        module.register_parameter(name + "_v", Parameter(weight.data))
        setattr(module, name, fn.compute_weight(module))
        module.register_forward_pre_hook(fn)
        return fn

    def remove(self, module: Module) -> None:
        """Folds g and v back into one parameter `<name>` holding the current w."""
        weight = self.compute_weight(module)
        delattr(module, self.name)
        del module._parameters[self.name + "_g"]
        del module._parameters[self.name + "_v"]
        setattr(module, self.name, Parameter(weight.data))

    def __call__(self, module: Module, inputs: Any) -> None:
        setattr(module, self.name, self.compute_weight(module))


def weight_norm(module: ModuleT, name: str = "weight", dim: int | None = 0) -> ModuleT:
    """Reparameterizes `module.<name>` as g · v / ‖v‖ (Salimans & Kingma 2016), like torch's.

    The parameter is replaced by `<name>_g` (the magnitude, shaped (1, …, size(dim), …, 1), or a
    scalar for dim=None) and `<name>_v` (the direction, the original weight's shape), initialized so
    the weight is unchanged; `<name>` is recomputed from them before every forward.

    Args:
        module: the module holding the parameter.
        name: the parameter's name.
        dim: the dim whose slices get their own magnitude (0: one per output channel of a Linear
            or Conv weight); None normalizes the whole tensor.

    Returns:
        The same module, with the reparameterization and its forward pre-hook.

    Raises:
        RuntimeError: the parameter is already weight-normalized.
        ValueError: the module has no such (initialized) parameter, or dim is out of range.
    """
    WeightNorm.apply(module, name, dim)
    return module


def remove_weight_norm(module: ModuleT, name: str = "weight") -> ModuleT:
    """Removes the reparameterization: `<name>` becomes a plain parameter holding the current weight.

    Args:
        module: a module given to `weight_norm`.
        name: the parameter's name.

    Returns:
        The same module.

    Raises:
        ValueError: `name` of this module is not weight-normalized by `replearn.nn.utils.weight_norm`.
    """
    key = find_pre_hook(module, WeightNorm, name)
    if key is not None:
        module._forward_pre_hooks[key].remove(module)
        del module._forward_pre_hooks[key]
        return module
    raise ValueError(f"weight_norm of '{name}' not found in {module}")
