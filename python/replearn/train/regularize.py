"""Regularization (course notes §4): penalties, dropout, stochastic depth, label smoothing, multi-task
heads, and the helpers of transfer learning.

    trainer = Trainer(model, optimizer, config, penalty=Penalty(l1=1e-5, l2=1e-4),
                      loss_fn=LabelSmoothingCrossEntropy(0.1))
    freeze(model, "features.*"); replace_head(model, num_classes=5)
    optimizer = make_optimizer("adamw", discriminative_lr_groups(model, lr=1e-3), lr=1e-3)

Dropout is torch's `nn.Dropout` (Srivastava et al. 2014); `set_dropout` changes its rate across a
model. L2 decoupled from the gradient is AdamW's weight decay (`optimizers.py`).
"""

from __future__ import annotations

import fnmatch
from typing import Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.drop import DropPath, drop_path  # stochastic depth is a layer; re-exported here

__all__ = [
    "DropPath",
    "LabelSmoothingCrossEntropy",
    "MultiTaskLoss",
    "MultiTaskModel",
    "Penalty",
    "discriminative_lr_groups",
    "drop_path",
    "freeze",
    "label_smoothing_cross_entropy",
    "l1_penalty",
    "l2_penalty",
    "replace_head",
    "set_dropout",
    "stochastic_depth_rates",
    "unfreeze",
]


# ------------------------------------------------------------------------------------------ penalties


def _penalized(model: nn.Module, include_vectors: bool) -> Iterable[torch.Tensor]:
    """The weights a penalty applies to: matrices and kernels; biases and norm gains only if asked
    (shrinking a norm layer's gain towards 0 fights the normalization rather than regularizing)."""
    return (p for p in model.parameters() if p.requires_grad and (include_vectors or p.dim() > 1))


def l1_penalty(model: nn.Module, include_vectors: bool = False) -> torch.Tensor:
    """Σ|w| over the model's weights: pushes weights to exactly zero (sparse solutions)."""
    return sum((p.abs().sum() for p in _penalized(model, include_vectors)), torch.zeros(()))


def l2_penalty(model: nn.Module, include_vectors: bool = False) -> torch.Tensor:
    """½·Σw² over the model's weights: its gradient is w, i.e. coupled weight decay."""
    return 0.5 * sum((p.square().sum() for p in _penalized(model, include_vectors)), torch.zeros(()))


class Penalty:
    """`penalty(model) = l1·Σ|w| + l2·½Σw²`, for `Trainer(penalty=...)`.

    Args:
        l1: weight of the L1 penalty.
        l2: weight of the L2 penalty (coupled: gradient l2·w, rescaled by adaptive optimizers).
        include_vectors: also penalize biases and norm parameters.
    """

    def __init__(self, l1: float = 0.0, l2: float = 0.0, include_vectors: bool = False) -> None:
        if l1 < 0 or l2 < 0:
            raise ValueError(f"Penalty: weights must be non-negative but got l1={l1}, l2={l2}")
        self.l1, self.l2, self.include_vectors = l1, l2, include_vectors

    def __call__(self, model: nn.Module) -> torch.Tensor:
        total = torch.zeros((), device=next(model.parameters()).device)
        if self.l1:
            total = total + self.l1 * l1_penalty(model, self.include_vectors).to(total.device)
        if self.l2:
            total = total + self.l2 * l2_penalty(model, self.include_vectors).to(total.device)
        return total


# --------------------------------------------------------------------------- dropout, stochastic depth


def set_dropout(model: nn.Module, p: float) -> int:
    """Sets the rate of every dropout layer of `model` to `p`; returns how many were changed."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"set_dropout: 'p' expected a value in [0, 1) but got {p}")
    changed = 0
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.p = p
            changed += 1
    return changed


def stochastic_depth_rates(num_blocks: int, last_rate: float) -> list[float]:
    """Drop rates rising linearly with depth, from 0 for the first block to `last_rate` for the
    last (Huang et al. 2016's linear decay rule: early blocks extract features every later block needs)."""
    if num_blocks < 1:
        raise ValueError(f"stochastic_depth_rates: 'num_blocks' expected a positive integer but got {num_blocks}")
    return [last_rate * i / max(1, num_blocks - 1) for i in range(num_blocks)]


# ------------------------------------------------------------------------------------ label smoothing


def label_smoothing_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, smoothing: float = 0.1) -> torch.Tensor:
    """Cross-entropy against targets mixed with the uniform distribution: (1−ε)·target + ε/K.

    Szegedy et al. 2016 (§7, "label-smoothing regularization"). `targets` are class indices (N,) or
    probabilities (N, K) — MixUp and CutMix give the latter. Returns the batch mean.
    """
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"label_smoothing_cross_entropy: 'smoothing' expected a value in [0, 1) but got {smoothing}")
    num_classes = logits.shape[-1]
    if targets.dim() == logits.dim():
        probabilities = targets.to(logits.dtype)
    else:
        probabilities = F.one_hot(targets, num_classes).to(logits.dtype)
    probabilities = probabilities * (1.0 - smoothing) + smoothing / num_classes
    return -(probabilities * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()


class LabelSmoothingCrossEntropy:
    """`label_smoothing_cross_entropy` with a fixed ε, as a Trainer `loss_fn`."""

    def __init__(self, smoothing: float = 0.1) -> None:
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"LabelSmoothingCrossEntropy: 'smoothing' expected a value in [0, 1) but got {smoothing}")
        self.smoothing = smoothing

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return label_smoothing_cross_entropy(logits, targets, self.smoothing)


# ----------------------------------------------------------------------------------------- multi-task


class MultiTaskModel(nn.Module):
    """A shared trunk and one head per task: forward returns {task: head(trunk(x))}.

    Learning several related tasks through shared features regularizes the trunk (Caruana 1997).
    """

    def __init__(self, trunk: nn.Module, heads: Mapping[str, nn.Module]) -> None:
        super().__init__()
        if not heads:
            raise ValueError("MultiTaskModel: expected at least one head")
        self.trunk = trunk
        self.heads = nn.ModuleDict(dict(heads))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.trunk(x)
        return {name: head(features) for name, head in self.heads.items()}


class MultiTaskLoss:
    """Σ_t w_t·loss_t(outputs[t], targets[t]), for `Trainer(loss_fn=...)` with a MultiTaskModel.

    Args:
        losses: task name -> loss function (default cross-entropy for every task named in `weights`).
        weights: task name -> weight (default 1 each).

    `forward_fn()` gives the Trainer a `forward` that pairs the batch's tensors after the inputs
    with the tasks, in order: batch (x, y_task1, y_task2, ...).
    """

    def __init__(self, losses: Mapping[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]], weights: Mapping[str, float] | None = None) -> None:
        self.losses = dict(losses)
        self.weights = {name: 1.0 for name in self.losses} if weights is None else dict(weights)
        if set(self.weights) != set(self.losses):
            raise ValueError(f"MultiTaskLoss: weights name tasks {sorted(self.weights)} but losses name {sorted(self.losses)}")

    def __call__(self, outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return sum(self.weights[name] * fn(outputs[name], targets[name]) for name, fn in self.losses.items())

    def forward_fn(self) -> Callable[[nn.Module, Sequence[torch.Tensor]], tuple[dict, dict]]:
        names = list(self.losses)

        def forward(model: nn.Module, batch: Sequence[torch.Tensor]) -> tuple[dict, dict]:
            if len(batch) != 1 + len(names):
                raise ValueError(f"MultiTaskLoss: expected batches (inputs, {', '.join(names)}) but got {len(batch)} tensors")
            return model(batch[0]), dict(zip(names, batch[1:]))

        return forward

    def task_metric(self, task: str, metric: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable[[dict, dict], torch.Tensor]:
        """A Trainer metric on one task's outputs (e.g. accuracy of task "digit")."""
        if task not in self.losses:
            raise ValueError(f"MultiTaskLoss: unknown task {task!r}; tasks: {', '.join(self.losses)}")
        return lambda outputs, targets: metric(outputs[task], targets[task])


# ---------------------------------------------------------------------------------- transfer learning


def _matching(model: nn.Module, patterns: str | Sequence[str]) -> list[tuple[str, nn.Parameter]]:
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    matched = [(n, p) for n, p in model.named_parameters() if any(fnmatch.fnmatchcase(n, pat) for pat in patterns)]
    if not matched:
        names = ", ".join(n for n, _ in model.named_parameters())
        raise ValueError(f"no parameter matches {patterns}; the parameters are: {names}")
    return matched


def freeze(model: nn.Module, patterns: str | Sequence[str] = "*") -> list[str]:
    """Stops gradients to the parameters whose names match a glob pattern ("features.*"); returns their names.

    Frozen parameters keep their values; pass only trainable ones to the optimizer, or give it all
    (their gradients stay None, so torch's optimizers skip them).
    """
    matched = _matching(model, patterns)
    for _, parameter in matched:
        parameter.requires_grad_(False)
    return [name for name, _ in matched]


def unfreeze(model: nn.Module, patterns: str | Sequence[str] = "*") -> list[str]:
    """Lets gradients flow again to the parameters matching a pattern; returns their names."""
    matched = _matching(model, patterns)
    for _, parameter in matched:
        parameter.requires_grad_(True)
    return [name for name, _ in matched]


def replace_head(model: nn.Module, num_classes: int, name: str | None = None) -> nn.Linear:
    """Replaces the classifier (a Linear layer) by a freshly initialized one with `num_classes` outputs.

    Args:
        model: the network.
        num_classes: outputs of the new head.
        name: the head's module path ("head", "fc", "classifier.2"); default the model's last Linear.

    Returns:
        The new head (on the old head's device and dtype).
    """
    if name is None:
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError("replace_head: the model has no Linear layer; pass name=")
        name = linears[-1]
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, child, None)
    if not isinstance(old, nn.Linear):
        raise ValueError(f"replace_head: {name!r} is {type(old).__name__}, not a Linear layer")
    new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None, device=old.weight.device, dtype=old.weight.dtype)
    setattr(parent, child, new)
    return new


def discriminative_lr_groups(model: nn.Module, lr: float, factor: float = 2.6, groups: Sequence[str | Sequence[str]] | None = None) -> list[dict]:
    """Parameter groups whose learning rate falls by `factor` per group towards the input.

    Discriminative fine-tuning (Howard & Ruder 2018, ULMFiT: lr_{l−1} = lr_l / 2.6): the layers
    nearest the input hold the most general features and should move least. The last group gets
    `lr`, the one before lr/factor, and so on. Frozen parameters are left out.

    Args:
        model: the network.
        lr: learning rate of the last group (the head).
        factor: ratio between consecutive groups.
        groups: glob patterns (or lists of them) of parameter names, input side first; default one
            group per top-level child module that has trainable parameters.

    Returns:
        A list of {"params": [...], "lr": ...} for any torch optimizer (or `make_optimizer`).
    """
    if groups is None:
        groups = [f"{name}.*" for name, child in model.named_children() if any(p.requires_grad for p in child.parameters())]
    result, taken = [], set()
    for depth, patterns in enumerate(groups):
        params = [p for n, p in _matching(model, patterns) if p.requires_grad and id(p) not in taken]
        taken.update(id(p) for p in params)
        result.append({"params": params, "lr": lr / factor ** (len(groups) - 1 - depth)})
    return result
