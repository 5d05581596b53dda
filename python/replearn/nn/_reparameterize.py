"""What weight_norm and spectral_norm share: finding a reparameterization's forward pre-hook on a
module, and torch's checks before a parameter is replaced (nn/utils.py, nn/spectral_norm.py)."""

from __future__ import annotations

from typing import Any

from torch.nn import Module, Parameter
from torch.nn.parameter import UninitializedParameter


def find_pre_hook(module: Module, kind: type, name: str) -> int | None:
    """The key of `module`'s forward pre-hook of type `kind` that reparameterizes `name`, or None."""
    for key, hook in module._forward_pre_hooks.items():
        if isinstance(hook, kind) and hook.name == name:
            return key
    return None


def check_reparameterizable(module: Module, name: str, weight: Any, kind: type, fn: str, what: str) -> None:
    """The checks torch makes before weight_norm / spectral_norm replace parameter `name` (same errors).

    Args:
        module: the module to reparameterize.
        name: the parameter's name; `weight` is what the caller looked up under it.
        weight: the looked-up value.
        kind: the hook class (WeightNorm, SpectralNorm); one per parameter.
        fn: the public function's name, for the messages.
        what: the reparameterization in words ("weight normalization").

    Raises:
        RuntimeError: `name` already has a hook of this kind.
        ValueError: `weight` is not a parameter, or is uninitialized.
    """
    if find_pre_hook(module, kind, name) is not None:
        raise RuntimeError(f"Cannot register two {fn} hooks on the same parameter {name}")
    if not isinstance(weight, Parameter):
        raise ValueError(f"{fn}: {type(module).__name__} has no parameter named {name!r}")
    if isinstance(weight, UninitializedParameter):
        raise ValueError(
            f"The module passed to `{kind.__name__}` can't have uninitialized parameters. "
            f"Make sure to run the dummy forward before applying {what}"
        )
