"""Optimizers by name, so a recipe's optimizer is a config choice (`--set optimizer=sgd`).

    optimizer = make_optimizer("adamw", model.parameters(), lr=3e-3, weight_decay=1e-4)

Weight decay means two different things here, as in the course notes' L2 regularization: for "adam"
and "sgd" it is coupled — λ·w added to the gradient, the gradient of the penalty λ/2·‖w‖², which
Adam then rescales per coordinate — and for "adamw" decoupled — w shrunk by lr·λ after the
adaptive step (Loshchilov & Hutter 2019), which is what makes decay and learning rate independent
for Adam. An explicit coupled penalty for any optimizer is `regularize.Penalty(l2=...)`.

Every optimizer here is replearn.optim's (a native multi-tensor step; torch's state_dict layout).
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

from .. import optim

__all__ = ["OPTIMIZERS", "make_optimizer"]

OPTIMIZERS = ("adamw", "adam", "sgd", "rmsprop", "adagrad", "adabound", "amsbound")


def make_optimizer(name: str, params: Iterable[Any], lr: float, weight_decay: float = 0.0, momentum: float = 0.9) -> torch.optim.Optimizer:
    """The optimizer `name` over `params` (parameters or parameter groups with their own "lr").

    Args:
        name: one of OPTIMIZERS; "sgd" uses Nesterov momentum when momentum > 0.
        params: parameters, or dicts of parameter groups (`regularize.discriminative_lr_groups`).
        lr: learning rate (groups that set their own keep it).
        weight_decay: coupled L2 for every optimizer but adamw, decoupled for adamw.
        momentum: SGD's momentum.

    Raises:
        ValueError: an unknown name; the message lists the known ones.
    """
    if name == "adamw":
        return optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "adam":
        return optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return optim.SGD(params, lr=lr, momentum=momentum, nesterov=momentum > 0, weight_decay=weight_decay)
    if name == "rmsprop":
        return optim.RMSprop(params, lr=lr, weight_decay=weight_decay)
    if name == "adagrad":
        return optim.Adagrad(params, lr=lr, weight_decay=weight_decay)
    if name == "adabound":
        return optim.AdaBound(params, lr=lr, weight_decay=weight_decay)
    if name == "amsbound":
        return optim.AMSBound(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"make_optimizer: unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
