"""Early stopping, then retraining on train + validation: the course notes' first variant (§4.3.1).

Early stopping spends the validation set on choosing when to stop; these two strategies of
Goodfellow et al. 2016 (§7.8) put it back into training afterwards:

- strategy "steps" (Algorithm 7.2): find the best step count i* with early stopping, then train a
  fresh model on train + validation for i* steps.
- strategy "loss" (Algorithm 7.3): keep the early-stopped model, note its training loss ε, and
  continue training on train + validation until the loss on the validation part falls below ε
  (at most as many steps again as the first phase took).

    result = retrain_on_train_and_val(build, config, (x_train, y_train), (x_val, y_val), strategy="steps")
    result.model   # trained on all the labelled data
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import ConcatDataset, TensorDataset

from .callbacks import EarlyStopping, StopBelow
from .config import TrainConfig
from .trainer import FitResult, Trainer, as_dataset

__all__ = ["RetrainResult", "concat_data", "retrain_on_train_and_val"]


@dataclasses.dataclass
class RetrainResult:
    """Attributes:
    model: the model after the second phase.
    best_step: the early-stopping step i* of the first phase.
    first: the first phase's FitResult (on train, validated on val).
    second: the second phase's FitResult (on train + val).
    threshold: strategy "loss": the training loss ε the validation loss had to fall below.
    """

    model: nn.Module
    best_step: int
    first: FitResult
    second: FitResult
    threshold: float | None


def concat_data(first: Any, second: Any) -> Any:
    """Two datasets as one; tensor datasets stay tensors (so batches are still sliced, not collated)."""
    a, b = as_dataset(first), as_dataset(second)
    if isinstance(a, TensorDataset) and isinstance(b, TensorDataset) and len(a.tensors) == len(b.tensors):
        return TensorDataset(*(torch.cat(pair) for pair in zip(a.tensors, b.tensors)))
    return ConcatDataset([a, b])


def retrain_on_train_and_val(
    build: Callable[[], tuple[nn.Module, torch.optim.Optimizer]],
    config: TrainConfig,
    train_data: Any,
    val_data: Any,
    *,
    strategy: str = "steps",
    monitor: str = "val_loss",
    mode: str = "min",
    patience: int = 5,
    trainer_kwargs: dict[str, Any] | None = None,
) -> RetrainResult:
    """Early stopping on (train, val), then a second phase on train + val.

    Args:
        build: returns a fresh (model, optimizer); called once for "steps", which seeds torch with
            `config.seed` before each call so both models start alike.
        config: the TrainConfig of both phases (its epochs/max_steps bound the first phase).
        train_data, val_data: the two parts.
        strategy: "steps" (Algorithm 7.2) or "loss" (Algorithm 7.3).
        monitor, mode, patience: the early stopping of the first phase.
        trainer_kwargs: extra Trainer arguments (loss_fn, augment, ...) for both phases.

    Returns:
        A RetrainResult.
    """
    if strategy not in ("steps", "loss"):
        raise ValueError(f"retrain_on_train_and_val: 'strategy' expected one of steps, loss but got {strategy!r}")
    kwargs = dict(trainer_kwargs or {})
    torch.manual_seed(config.seed)
    model, optimizer = build()
    stopper = EarlyStopping(monitor, mode, patience, restore_best=True)
    first_trainer = Trainer(model, optimizer, config, callbacks=[stopper, *kwargs.pop("callbacks", [])], **kwargs)
    first = first_trainer.fit(train_data, val_data)
    if stopper.best_step is None:
        raise ValueError("retrain_on_train_and_val: the first phase never validated; give it at least one validation")
    both = concat_data(train_data, val_data)
    if strategy == "steps":
        torch.manual_seed(config.seed)
        model, optimizer = build()
        second_config = dataclasses.replace(config, max_steps=stopper.best_step, output_dir=None)
        second = Trainer(model, optimizer, second_config, **kwargs).fit(both)
        return RetrainResult(model, stopper.best_step, first, second, None)
    threshold = first_trainer.evaluate(train_data)["loss"]  # ε: the training loss at the best step
    second_config = dataclasses.replace(config, max_steps=first.steps, output_dir=None)
    second_trainer = Trainer(model, optimizer, second_config, callbacks=[StopBelow("val_loss", threshold)], **kwargs)
    second = second_trainer.fit(both, val_data)
    return RetrainResult(model, stopper.best_step, first, second, threshold)
