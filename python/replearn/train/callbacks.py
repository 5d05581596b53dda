"""Callbacks: code that runs at fixed points of `Trainer.fit` and may stop it or change the run.

    trainer = Trainer(model, optimizer, config, callbacks=[EarlyStopping("val_loss", patience=3)])

A callback overrides any of the hooks below; each gets the trainer, whose `model`, `optimizer`,
`step`, `epoch`, `history` and `stop_training` it may read or set. Callbacks with state
(`state_dict` / `load_state_dict`) are saved in checkpoints and restored on resume, so a resumed
run's early stopping or learning-rate schedule continues exactly where it was.

- `EarlyStopping`: stop when a validation metric has not improved for `patience` validations, and
  put back the best weights (Goodfellow et al. 2016, §7.8, Algorithm 7.1).
- `SurrogateLossStopping`: the same on a loss other than the one being minimized — evaluated on the
  validation data at each validation (by default the 0–1 error, the loss a classifier is judged by,
  while training minimizes its cross-entropy surrogate; Goodfellow et al. 2016, §8.1.2).
- `StopBelow`: stop once a metric falls below a threshold (the second retraining strategy,
  Algorithm 7.3, in `retrain.py`).
- `LRScheduler`: step a torch learning-rate scheduler per step, per epoch or per validation
  (`ReduceLROnPlateau` reads a metric). The Trainer's own schedule (`TrainConfig.lr_schedule`)
  runs through it.
- `Checkpointer`: save the trainer's state to the run folder (added by the Trainer when
  `output_dir` is set; always runs last, after every other callback has updated its state).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable

import torch

if TYPE_CHECKING:  # pragma: no cover
    from .trainer import Trainer

__all__ = ["Callback", "Checkpointer", "EarlyStopping", "LRScheduler", "StopBelow", "SurrogateLossStopping", "zero_one_error"]


class Callback:
    """Base class: every hook does nothing. Override the ones you need."""

    def on_fit_start(self, trainer: "Trainer") -> None:
        """Before the first step (also when resuming, after the state has been restored)."""

    def on_step_end(self, trainer: "Trainer", loss: float | None) -> None:
        """After each optimizer step; `loss` is this step's training loss on this process, when
        the trainer read it (at logging steps), else None (reading it forces a device sync)."""

    def on_epoch_end(self, trainer: "Trainer") -> None:
        """After the last step of each epoch."""

    def on_evaluate(self, trainer: "Trainer", metrics: dict[str, float]) -> None:
        """After each validation (every `eval_every` steps, or each epoch), with its metrics
        ("val_loss", "val_accuracy", ...; empty without validation data)."""

    def on_fit_end(self, trainer: "Trainer") -> None:
        """After the last step, or after a callback stopped the run."""

    def state_dict(self) -> dict[str, Any]:
        """What must survive a restart (tensors, JSON scalars, nested dicts/lists)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores `state_dict()`'s output."""


class EarlyStopping(Callback):
    """Stops training when a validation metric stops improving, and restores the best weights.

    Args:
        monitor: the metric's name in the validation metrics ("val_loss", "val_accuracy").
        mode: "min" when lower is better, "max" when higher is better.
        patience: validations without improvement before stopping.
        min_delta: the least change that counts as an improvement.
        restore_best: load the weights of the best validation into the model when fit ends.

    Attributes:
        best: the best value seen (None before the first validation).
        best_step: the optimizer step at which it was seen.
    """

    def __init__(self, monitor: str = "val_loss", mode: str = "min", patience: int = 5, min_delta: float = 0.0, restore_best: bool = True) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"{type(self).__name__}: 'mode' expected one of min, max but got {mode!r}")
        if patience < 1:
            raise ValueError(f"{type(self).__name__}: 'patience' expected a positive integer but got {patience}")
        self.monitor, self.mode, self.patience, self.min_delta, self.restore_best = monitor, mode, patience, min_delta, restore_best
        self.best: float | None = None
        self.best_step: int | None = None
        self.wait = 0
        self.best_weights: dict[str, torch.Tensor] | None = None

    def value(self, trainer: "Trainer", metrics: dict[str, float]) -> float:
        """The monitored value at this validation."""
        if self.monitor not in metrics:
            available = ", ".join(sorted(metrics)) or "none (no validation data was given to fit)"
            raise ValueError(f"{type(self).__name__}: metric {self.monitor!r} not among the validation metrics: {available}")
        return metrics[self.monitor]

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return not math.isnan(value)
        return value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta

    def on_evaluate(self, trainer: "Trainer", metrics: dict[str, float]) -> None:
        value = self.value(trainer, metrics)
        if self._improved(value):
            self.best, self.best_step, self.wait = value, trainer.step, 0
            if self.restore_best:
                self.best_weights = {k: v.detach().to("cpu", copy=True) for k, v in trainer.model.state_dict().items()}
        else:
            self.wait += 1
            if self.wait >= self.patience:
                trainer.stop_training = True

    def on_fit_end(self, trainer: "Trainer") -> None:
        if self.restore_best and self.best_weights is not None:
            trainer.model.load_state_dict(self.best_weights)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_step": self.best_step, "wait": self.wait, "best_weights": self.best_weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_step, self.wait, self.best_weights = state["best"], state["best_step"], state["wait"], state["best_weights"]


def zero_one_error(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Share of misclassified rows: the 0–1 loss that cross-entropy stands in for."""
    return (outputs.argmax(dim=1) != targets).float().mean()


class SurrogateLossStopping(EarlyStopping):
    """Early stopping on a loss other than the training objective, computed on the validation data.

    The network minimizes one loss (cross-entropy: differentiable, a surrogate) but is judged by
    another (the 0–1 error, or any task metric); stopping is decided on the one that matters
    (Goodfellow et al. 2016, §8.1.2, "Surrogate loss functions and early stopping").

    Args:
        loss: `loss(outputs, targets) -> scalar tensor`, a mean over the batch; by default the 0–1 error.
        name: the name under which the value is added to the validation metrics.
        patience, min_delta, restore_best: as in EarlyStopping (lower is better).
    """

    def __init__(self, loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = zero_one_error, name: str = "val_surrogate", patience: int = 5, min_delta: float = 0.0, restore_best: bool = True) -> None:
        super().__init__(monitor=name, mode="min", patience=patience, min_delta=min_delta, restore_best=restore_best)
        self.loss = loss

    def value(self, trainer: "Trainer", metrics: dict[str, float]) -> float:
        if trainer.val_data is None:
            raise ValueError("SurrogateLossStopping: fit was given no validation data")
        value = trainer.evaluate(trainer.val_data, metrics={"surrogate": self.loss}, with_loss=False)["surrogate"]
        metrics[self.monitor] = value  # logged with the other validation metrics
        return value


class StopBelow(Callback):
    """Stops the run at the first validation where `monitor` is below `threshold`."""

    def __init__(self, monitor: str, threshold: float) -> None:
        self.monitor, self.threshold = monitor, threshold

    def on_evaluate(self, trainer: "Trainer", metrics: dict[str, float]) -> None:
        if metrics.get(self.monitor, math.inf) < self.threshold:
            trainer.stop_training = True


class LRScheduler(Callback):
    """Steps a torch learning-rate scheduler.

    Args:
        scheduler: a `torch.optim.lr_scheduler` object built on the trainer's optimizer.
        interval: "step" (after every optimizer step), "epoch" or "eval" (after each validation).
        monitor: for schedulers that read a metric (ReduceLROnPlateau): its name in the validation
            metrics; requires interval="eval".
    """

    def __init__(self, scheduler: Any, interval: str = "step", monitor: str | None = None) -> None:
        if interval not in ("step", "epoch", "eval"):
            raise ValueError(f"LRScheduler: 'interval' expected one of step, epoch, eval but got {interval!r}")
        if monitor is not None and interval != "eval":
            raise ValueError("LRScheduler: a monitored metric needs interval='eval'")
        self.scheduler, self.interval, self.monitor = scheduler, interval, monitor

    def on_step_end(self, trainer: "Trainer", loss: float | None) -> None:
        if self.interval == "step":
            self.scheduler.step()

    def on_epoch_end(self, trainer: "Trainer") -> None:
        if self.interval == "epoch":
            self.scheduler.step()

    def on_evaluate(self, trainer: "Trainer", metrics: dict[str, float]) -> None:
        if self.interval == "eval":
            if self.monitor is None:
                self.scheduler.step()
            elif self.monitor in metrics:
                self.scheduler.step(metrics[self.monitor])

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state)


class Checkpointer(Callback):
    """Saves the trainer's full state to `<output_dir>/checkpoint.safetensors`.

    With `every` None the state is saved at each validation point (every `eval_every` steps or each
    epoch); otherwise every `every` steps. The final state is always saved.
    """

    def __init__(self, every: int | None = None) -> None:
        self.every = every
        self.saved_step: int | None = None

    def _save(self, trainer: "Trainer") -> None:
        if self.saved_step != trainer.step:
            trainer.save_checkpoint()
            self.saved_step = trainer.step

    def on_step_end(self, trainer: "Trainer", loss: float | None) -> None:
        if self.every is not None and trainer.step % self.every == 0:
            self._save(trainer)

    def on_evaluate(self, trainer: "Trainer", metrics: dict[str, float]) -> None:
        if self.every is None:
            self._save(trainer)

    def on_fit_end(self, trainer: "Trainer") -> None:
        self.saved_step = None  # the end state (restored best weights, `finished`) is always saved
        self._save(trainer)
