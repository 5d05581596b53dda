"""Spectral normalization of a module's parameter: w = W / σ(W) (Miyato et al. 2018).

The hook-based API of `torch.nn.utils.spectral_norm`: the parameter `<name>` becomes `<name>_orig`,
the power-iteration vectors are the buffers `<name>_u` and `<name>_v`, and a forward pre-hook
recomputes `<name>` before every forward with the native `replearn.ops.spectral_norm` kernels
(forward and backward). In training mode each forward runs `n_power_iterations` steps and stores
the new u, v in place; in eval mode it uses the stored ones, as torch does. Names, shapes and the
state_dict's `spectral_norm` version metadata are torch's, so a state_dict saved from a module
spectrally normalized by torch loads here, and back.

`coeff` (a replearn extension, not in torch) gives i-ResNet's soft normalization
w = W / max(1, σ/coeff) (Behrmann et al. 2019), which bounds the spectral norm by coeff instead of
setting it to 1; `replearn.nn.flows.InvertibleResBlock` uses it.
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch
from torch.nn import Module, Parameter

from .. import ops
from ._reparameterize import check_reparameterizable, find_pre_hook

__all__ = ["SpectralNorm", "spectral_norm", "remove_spectral_norm"]

ModuleT = TypeVar("ModuleT", bound=Module)

_VERSION = 1  # torch's SpectralNorm._version: checkpoints carrying it hold `<name>_v`


def _default_dim(module: Module) -> int:
    # torch's rule: the output dim of a transposed convolution's weight (in, out/groups, ...) is 1.
    transposed = (torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)
    return 1 if isinstance(module, transposed) or getattr(module, "transposed", False) else 0


class SpectralNorm:
    """The forward pre-hook that recomputes `module.<name>` from `<name>_orig`, `<name>_u`, `<name>_v`.

    Attributes:
        name: the name of the normalized parameter.
        dim: the weight's dim that becomes the rows of the matrix (the output dim).
        n_power_iterations: power-iteration steps per training forward.
        eps: floor of the norms when normalizing u and v.
        coeff: i-ResNet's bound on σ (None: plain spectral normalization, torch's).
    """

    _version = _VERSION

    def __init__(self, name: str, n_power_iterations: int, dim: int, eps: float, coeff: float | None) -> None:
        if n_power_iterations <= 0:
            raise ValueError(
                f"spectral_norm: argument 'n_power_iterations' expected a positive number but got {n_power_iterations}"
            )
        if coeff is not None and not coeff > 0:
            raise ValueError(f"spectral_norm: argument 'coeff' expected a positive number or None but got {coeff}")
        self.name = name
        self.dim = dim
        self.n_power_iterations = n_power_iterations
        self.eps = eps
        self.coeff = coeff

    def _to_matrix_layout(self, weight: torch.Tensor) -> torch.Tensor:
        # The op views its weight as (size(0), the rest): bring `dim` to the front (torch permutes too).
        if self.dim == 0:
            return weight
        return weight.permute(self.dim, *[d for d in range(weight.dim()) if d != self.dim])

    def _from_matrix_layout(self, weight: torch.Tensor) -> torch.Tensor:
        if self.dim == 0:
            return weight
        order = [self.dim] + [d for d in range(weight.dim()) if d != self.dim]
        inverse = [order.index(d) for d in range(weight.dim())]
        return weight.permute(*inverse)

    def compute_weight(self, module: Module, do_power_iteration: bool) -> torch.Tensor:
        """W / σ (or W / max(1, σ/coeff)); with do_power_iteration, also updates `<name>_u/_v` in place."""
        weight = getattr(module, self.name + "_orig")
        u = getattr(module, self.name + "_u")
        v = getattr(module, self.name + "_v")
        iterations = self.n_power_iterations if do_power_iteration else 0
        w, u_new, v_new, _sigma = ops.spectral_norm(
            self._to_matrix_layout(weight), u, iterations, self.eps, self.coeff, v=v
        )
        if do_power_iteration:
            with torch.no_grad():
                u.copy_(u_new)
                v.copy_(v_new)
        return self._from_matrix_layout(w)

    @staticmethod
    def apply(
        module: Module, name: str, n_power_iterations: int, dim: int, eps: float, coeff: float | None = None
    ) -> "SpectralNorm":
        """Replaces parameter `name` by `<name>_orig` and buffers `<name>_u/_v`, and registers the hooks."""
        weight = module._parameters.get(name)
        check_reparameterizable(module, name, weight, SpectralNorm, "spectral_norm", "spectral normalization")
        if not -weight.dim() <= dim < weight.dim():
            raise ValueError(f"spectral_norm: argument 'dim' expected a dimension of {name!r} (rank {weight.dim()}) but got {dim}")
        fn = SpectralNorm(name, n_power_iterations, dim % weight.dim(), eps, coeff)
        with torch.no_grad():
            rows = weight.shape[fn.dim]
            cols = weight.numel() // rows
            # Random unit vectors, as torch initializes them (its first forward starts from these).
            u = torch.nn.functional.normalize(weight.new_empty(rows).normal_(0, 1), dim=0, eps=eps)
            v = torch.nn.functional.normalize(weight.new_empty(cols).normal_(0, 1), dim=0, eps=eps)
        del module._parameters[name]
        module.register_parameter(name + "_orig", weight)
        setattr(module, name, weight.data)
        module.register_buffer(name + "_u", u)
        module.register_buffer(name + "_v", v)
        module.register_forward_pre_hook(fn)
        module._register_state_dict_hook(_SpectralNormStateDictHook(fn))
        return fn

    def remove(self, module: Module) -> None:
        """Folds the normalization into one parameter `<name>` holding W / σ from the stored u, v."""
        with torch.no_grad():
            weight = self.compute_weight(module, do_power_iteration=False)
        delattr(module, self.name)
        delattr(module, self.name + "_u")
        delattr(module, self.name + "_v")
        delattr(module, self.name + "_orig")
        module.register_parameter(self.name, Parameter(weight.detach()))

    def __call__(self, module: Module, inputs: Any) -> None:
        setattr(module, self.name, self.compute_weight(module, do_power_iteration=module.training))


class _SpectralNormStateDictHook:
    """Writes torch's version metadata, without which torch's loader expects a pre-2019 checkpoint."""

    def __init__(self, fn: SpectralNorm) -> None:
        self.fn = fn

    def __call__(self, module: Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
        local_metadata.setdefault("spectral_norm", {})[self.fn.name + ".version"] = self.fn._version


def spectral_norm(
    module: ModuleT,
    name: str = "weight",
    n_power_iterations: int = 1,
    eps: float = 1e-12,
    dim: int | None = None,
    *,
    coeff: float | None = None,
) -> ModuleT:
    """Spectrally normalizes `module.<name>`: w = W / σ(W) (Miyato et al. 2018), like torch's.

    σ is estimated by power iteration on W, the weight with `dim` moved first and the rest flattened;
    each training-mode forward runs `n_power_iterations` steps from the stored u and updates u, v in
    place; eval mode uses the stored vectors.

    Args:
        module: the module holding the parameter.
        name: the parameter's name.
        n_power_iterations: power-iteration steps per training forward (positive).
        eps: floor of the norms when normalizing u and v.
        dim: the output dim of the weight; None: 1 for transposed convolutions, 0 otherwise.
        coeff: replearn extension for i-ResNet (Behrmann et al. 2019): w = W / max(1, σ/coeff),
            bounding the spectral norm by coeff; None is torch's behaviour.

    Returns:
        The same module, with `<name>_orig`, buffers `<name>_u`, `<name>_v` and the forward pre-hook.

    Raises:
        RuntimeError: the parameter is already spectrally normalized.
        ValueError: no such (initialized) parameter, dim out of range, or n_power_iterations ≤ 0.
    """
    SpectralNorm.apply(module, name, n_power_iterations, _default_dim(module) if dim is None else dim, eps, coeff)
    return module


def remove_spectral_norm(module: ModuleT, name: str = "weight") -> ModuleT:
    """Removes the normalization: `<name>` becomes a plain parameter holding the current W / σ.

    Args:
        module: a module given to `spectral_norm`.
        name: the parameter's name.

    Returns:
        The same module.

    Raises:
        ValueError: `name` of this module is not spectrally normalized by replearn.
    """
    key = find_pre_hook(module, SpectralNorm, name)
    if key is not None:
        hook = module._forward_pre_hooks.pop(key)
        hook.remove(module)
        for state_key, state_hook in list(module._state_dict_hooks.items()):
            if isinstance(state_hook, _SpectralNormStateDictHook) and state_hook.fn is hook:
                del module._state_dict_hooks[state_key]
        return module
    raise ValueError(f"spectral_norm of '{name}' not found in {module}")
