"""The model registry: family files register small constructor functions by name.

    @register_model
    def resnet18(**kw) -> ResNet:
        return _create_resnet(BASIC, (2, 2, 2, 2), **kw)

    replearn.models.create("resnet18", num_classes=10)
    replearn.models.list()          # sorted names
"""

from __future__ import annotations

from typing import Callable, TypeVar

import torch

__all__ = ["create", "list_models", "register_model", "register_variant"]

_MODELS: dict[str, Callable[..., torch.nn.Module]] = {}

Constructor = TypeVar("Constructor", bound=Callable[..., torch.nn.Module])


def register_model(fn: Constructor) -> Constructor:
    """Registers `fn` under its function name; a second registration of a name is an error."""
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"register_model: a model named {name!r} is already registered")
    _MODELS[name] = fn
    return fn


def register_variant(name: str, build: Callable[..., torch.nn.Module], doc: str, **defaults) -> None:
    """Registers `name` as `build(**defaults)`, where a caller's keyword arguments override the
    defaults (the way a family registers a table of published variants)."""

    def constructor(**kwargs) -> torch.nn.Module:
        return build(**{**defaults, **kwargs})

    constructor.__name__ = constructor.__qualname__ = name
    constructor.__doc__ = doc
    register_model(constructor)


def create(name: str, **kwargs) -> torch.nn.Module:
    """Builds the registered model `name`; keyword arguments override fields of its config.

    Args:
        name: a name from `list_models()`.
        **kwargs: fields of the family's config dataclass (for example `num_classes=10`).

    Returns:
        The model, freshly initialized.

    Raises:
        ValueError: no model of that name is registered.
    """
    if name not in _MODELS:
        raise ValueError(f"create: argument 'name' expected one of {', '.join(sorted(_MODELS))} but got {name!r}")
    return _MODELS[name](**kwargs)


def list_models() -> list[str]:
    """The registered model names, sorted."""
    return sorted(_MODELS)
