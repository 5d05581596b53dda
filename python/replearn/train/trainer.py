"""The Trainer: minibatch training with validation, callbacks, checkpoints, resume and data parallelism.

    trainer = Trainer(model, torch.optim.AdamW(model.parameters(), lr=3e-3), TrainConfig(epochs=5, output_dir="run"))
    result = trainer.fit((x_train, y_train), (x_val, y_val))     # tensors or any torch Dataset
    print(trainer.evaluate((x_test, y_test)))                    # {"loss": ..., "accuracy": ...}
    trainer.fit(train, val, resume="run")                        # continue a killed run exactly

One step: the batch of `batch_size` samples is split into `grad_accumulation` micro-batches and, under
torchrun, each micro-batch into one shard per process; each shard's loss is weighted by its share of
the batch, so that after DistributedDataParallel averages the gradients they are the gradient of the
mean loss over the whole batch — the same as one process with the same batch (tested). Then the
gradient norm is clipped, the optimizer steps and the callbacks run (the learning-rate schedule is
one of them).

Data order. Epoch e visits the training samples in `randperm(N)` of a generator seeded with
(seed, e), so the order depends on nothing but the seed and the epoch: a resumed run picks up the
permutation where it stopped, and every process of a distributed run sees the same batches.

Determinism. `fit` seeds torch's global generator (dropout, stochastic depth) and the augmentation
generator from the config's seed (plus the rank), and a checkpoint stores every generator's state,
so on the CPU equal seeds give equal runs and a run resumed from a checkpoint ends with the same
weights as one never interrupted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, TensorDataset, default_collate
from tqdm.auto import tqdm

from . import distributed
from .callbacks import Callback, Checkpointer, LRScheduler
from .checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from .config import TrainConfig
from .records import MetricsLog, plot_curves, read_metrics

__all__ = ["FitResult", "Trainer", "accuracy", "as_dataset", "lr_multiplier", "CHECKPOINT_NAME"]

CHECKPOINT_NAME = "checkpoint.safetensors"
Batch = Sequence[Any]
LossFn = Callable[[Any, Any], torch.Tensor]
MetricFn = Callable[[Any, Any], torch.Tensor]


def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Share of rows whose arg-max output is the target class (targets: class indices or probabilities)."""
    if targets.dim() == outputs.dim():  # soft targets (MixUp, CutMix): their arg-max
        targets = targets.argmax(dim=-1)
    return (outputs.argmax(dim=-1) == targets).float().mean()


def as_dataset(data: Any) -> Dataset:
    """A Dataset of `data`: a Dataset is kept, a tensor or tuple of tensors becomes a TensorDataset."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, torch.Tensor):
        return TensorDataset(data)
    if isinstance(data, (tuple, list)) and data and all(isinstance(t, torch.Tensor) for t in data):
        return TensorDataset(*data)
    raise TypeError(f"Trainer: expected a torch Dataset, a tensor or a tuple of tensors but got {type(data).__name__}")


def _fetch(dataset: Dataset, indices: torch.Tensor) -> list[Any]:
    if isinstance(dataset, TensorDataset):  # index the tensors directly: no per-sample Python loop
        return [t[indices] for t in dataset.tensors]
    return list(default_collate([dataset[int(i)] for i in indices]))


def _to(batch: list[Any], device: torch.device) -> list[Any]:
    return [b.to(device, non_blocking=True) if isinstance(b, torch.Tensor) else b for b in batch]


def lr_multiplier(step: int, total_steps: int, schedule: str, warmup_steps: int = 0, min_ratio: float = 0.0) -> float:
    """The factor on the peak learning rate at `step`: linear warm-up, then constant, cosine or linear decay.

    Cosine decay is Loshchilov & Hutter 2017 (SGDR) without restarts: min + (1 − min)·(1 + cos πt)/2
    for t the share of the post-warm-up steps done.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "cosine":
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "linear":
        return min_ratio + (1.0 - min_ratio) * (1.0 - progress)
    raise ValueError(f"lr_multiplier: unknown schedule {schedule!r}")


@dataclasses.dataclass
class _Multiplier:
    """A picklable LambdaLR factor (LambdaLR saves the attributes of callable objects in its state_dict)."""

    total_steps: int
    schedule: str
    warmup_steps: int
    min_ratio: float

    def __call__(self, step: int) -> float:
        return lr_multiplier(step, self.total_steps, self.schedule, self.warmup_steps, self.min_ratio)


@dataclasses.dataclass
class FitResult:
    """What `Trainer.fit` did.

    Attributes:
        steps: optimizer steps taken in all (including those before a resume).
        epochs: passes over the training data, fractional.
        seconds: wall time of this call to fit.
        samples_per_second: training throughput of this call (all processes together).
        train_loss: the last logged training loss.
        val_metrics: the last validation's metrics ({} without validation data).
        stopped_early: whether a callback stopped the run.
        history: every record written to metrics.jsonl during this call.
    """

    steps: int
    epochs: float
    seconds: float
    samples_per_second: float
    train_loss: float | None
    val_metrics: dict[str, float]
    stopped_early: bool
    history: list[dict[str, Any]]


def _classification_forward(model: nn.Module, batch: Batch) -> tuple[Any, Any]:
    return model(batch[0]), batch[1]


class Trainer:
    """Trains `model` with `optimizer` as `config` says.

    Args:
        model: the network; moved to `config.device`.
        optimizer: an optimizer over the model's parameters.
        config: the TrainConfig (or a recipe config that extends it).
        loss_fn: `loss_fn(outputs, targets) -> mean loss`; default cross-entropy (class indices or
            probabilities as targets).
        forward: `forward(model, batch) -> (outputs, targets)`; default `model(batch[0]), batch[1]`.
        metrics: validation metrics `name -> fn(outputs, targets) -> batch mean`; default accuracy.
        callbacks: run in order at each hook (see callbacks.py).
        scheduler: a torch LR scheduler stepped after every optimizer step; default the config's
            `lr_schedule`. Wrap it in `callbacks.LRScheduler` for other intervals.
        augment: `augment(inputs, targets, generator) -> (inputs, targets)` on training batches
            (replearn.data.augment).
        penalty: `penalty(model) -> scalar` added to each step's loss (replearn.train.regularize).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        config: TrainConfig,
        *,
        loss_fn: LossFn | None = None,
        forward: Callable[[nn.Module, Batch], tuple[Any, Any]] | None = None,
        metrics: dict[str, MetricFn] | None = None,
        callbacks: Iterable[Callback] = (),
        scheduler: Any | None = None,
        augment: Callable[..., tuple[Any, Any]] | None = None,
        penalty: Callable[[nn.Module], torch.Tensor] | None = None,
    ) -> None:
        self.config = config
        self.device = self._resolve_device(config.device)
        self.model = model.to(self.device)
        self.optimizer = optimizer
        self.loss_fn = loss_fn or F.cross_entropy
        self.forward = forward or _classification_forward
        self.metrics = {"accuracy": accuracy} if metrics is None else dict(metrics)
        self.user_callbacks = list(callbacks)
        self.scheduler = scheduler
        self.augment = augment
        self.penalty = penalty
        self.run_dir = Path(config.output_dir) if config.output_dir else None
        self.step = 0
        self.stop_training = False
        self.finished = False
        self.steps_per_epoch = 1
        self.total_steps = 0
        self.val_data: Dataset | None = None
        self.history: list[dict[str, Any]] = []
        self.callbacks: list[Callback] = []
        self.generator = torch.Generator().manual_seed(config.seed)
        self._train_model: nn.Module = self.model
        self._last_fit: FitResult | None = None
        # (Σ loss·n, Σ n) over this process's samples since the last train record.
        self._window = torch.zeros(2, dtype=torch.float64, device=self.device)

    @staticmethod
    def _resolve_device(name: str) -> torch.device:
        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(name)
        if device.type == "cuda" and device.index is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return device

    # ----------------------------------------------------------------------------------------- state

    @property
    def epoch(self) -> float:
        """Passes over the training data so far, fractional."""
        return self.step / self.steps_per_epoch

    @property
    def is_main(self) -> bool:
        return distributed.is_main_process()

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs, plus the config for the record."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "callbacks": {f"{i}:{type(c).__name__}": c.state_dict() for i, c in enumerate(self.callbacks)},
            # Per process: its generators and the training loss it is averaging for the next record.
            "per_rank": distributed.all_gather_objects(
                {"rng": capture_rng_state(), "augment": self.generator.get_state(), "log_window": self._window.cpu()}
            ),
            "step": self.step,
            "finished": self.finished,
            "stopped_early": self.stop_training,  # a resumed run that a callback stopped stays stopped
            "config": json.dumps(dataclasses.asdict(self.config)),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        saved = state["callbacks"]
        for i, callback in enumerate(self.callbacks):
            key = f"{i}:{type(callback).__name__}"
            if key not in saved:
                raise ValueError(f"Trainer: the checkpoint has no state for callback {key}; it has {', '.join(saved) or 'none'}")
            callback.load_state_dict(saved[key])
        per_rank = state["per_rank"]
        if len(per_rank) != distributed.world_size():
            raise ValueError(f"Trainer: the checkpoint was written by {len(per_rank)} process(es), this run has {distributed.world_size()}")
        mine = per_rank[distributed.rank()]
        restore_rng_state(mine["rng"])
        self.generator.set_state(mine["augment"])
        self._window = mine["log_window"].to(self.device)
        self.step = int(state["step"])
        self.finished = bool(state["finished"])
        self.stop_training = bool(state["stopped_early"])

    def save_checkpoint(self, path: str | Path | None = None) -> Path | None:
        """Writes the state to `path` (default `<output_dir>/checkpoint.safetensors`) on rank 0.

        Every process must call it (the generators' states are gathered from all ranks).
        """
        state = self.state_dict()
        path = Path(path) if path is not None else (self.run_dir / CHECKPOINT_NAME if self.run_dir else None)
        if path is None:
            raise ValueError("Trainer.save_checkpoint: no path given and the config has no output_dir")
        if self.is_main:
            save_checkpoint(path, state)
        return path

    def load_checkpoint(self, path: str | Path) -> None:
        """Restores a state saved by `save_checkpoint` (a file, or a run folder holding one)."""
        path = Path(path)
        if path.is_dir():
            path = path / CHECKPOINT_NAME
        self.load_state_dict(load_checkpoint(path, device="cpu"))

    # -------------------------------------------------------------------------------------- training

    def _plan(self, num_samples: int) -> None:
        cfg = self.config
        full, rest = divmod(num_samples, cfg.batch_size)
        self.steps_per_epoch = max(1, full + (0 if cfg.drop_last or rest == 0 else 1))
        self.total_steps = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * self.steps_per_epoch

    def _epoch_order(self, epoch: int, num_samples: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
        return torch.randperm(num_samples, generator=generator)

    def _build_callbacks(self) -> None:
        cfg = self.config
        # A constant schedule without warm-up is no schedule: then a scheduler callback of the user's
        # (ReduceLROnPlateau) owns the learning rate alone; LambdaLR would reset it every step.
        if self.scheduler is None and (cfg.lr_schedule != "constant" or cfg.warmup_steps > 0):
            factor = _Multiplier(self.total_steps, cfg.lr_schedule, cfg.warmup_steps, cfg.min_lr_ratio)
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)
        self.callbacks = ([LRScheduler(self.scheduler, "step")] if self.scheduler is not None else []) + self.user_callbacks
        if self.run_dir is not None:
            self.callbacks.append(Checkpointer(self.config.checkpoint_every))  # last: saves everyone's state

    def _call(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    def fit(self, train_data: Any, val_data: Any = None, *, resume: str | Path | None = None) -> FitResult:
        """Trains until `max_steps` / `epochs`, or until a callback stops the run.

        Args:
            train_data: a Dataset, or a tuple of tensors (inputs, targets) indexed on their first dim.
            val_data: the same for validation (optional).
            resume: a checkpoint file or run folder to continue from (the same data, config and
                callbacks as the run that wrote it).

        Returns:
            A FitResult.
        """
        cfg = self.config
        distributed_run = distributed.init_from_environment(self.device)
        train_set = as_dataset(train_data)
        self.val_data = None if val_data is None else as_dataset(val_data)
        self._plan(len(train_set))
        self.stop_training = False
        self._train_model = self.model
        if distributed_run and distributed.world_size() > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self._train_model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        previous_threads = torch.get_num_threads()
        if cfg.num_threads is not None:
            torch.set_num_threads(cfg.num_threads)
        try:
            self._build_callbacks()
            if resume is not None:
                self.load_checkpoint(resume)
            else:
                self.step, self.finished = 0, False
                self._window.zero_()
                torch.manual_seed(cfg.seed + distributed.rank())
                self.generator.manual_seed(cfg.seed * 7919 + distributed.rank())
            log = MetricsLog(self.run_dir / "metrics.jsonl" if self.run_dir is not None and self.is_main else None)
            if resume is not None:
                log.truncate_after(self.step)
            elif self.run_dir is not None and self.is_main:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)
            return self._loop(train_set, log)
        finally:
            torch.set_num_threads(previous_threads)
            # Release the DDP wrapper while the process group lives: destroyed after the group
            # (at interpreter exit), its reducer waits forever on gloo.
            self._train_model = self.model

    def _loop(self, train_set: Dataset, log: MetricsLog) -> FitResult:
        cfg = self.config
        num_samples = len(train_set)
        self.history = []
        start_step, start = self.step, time.perf_counter()
        window_start, window_samples = time.perf_counter(), 0
        last_loss: float | None = None
        val_metrics: dict[str, float] = {}
        order, order_epoch = None, -1
        self._call("on_fit_start")
        # Redrawn every 0.1 s on a terminal; every 5 s into a log file, where each redraw is a line.
        bar = tqdm(total=self.total_steps, initial=self.step, unit="step", desc="train", dynamic_ncols=True,
                   mininterval=0.1 if sys.stderr.isatty() else 5.0, disable=not (cfg.progress and self.is_main),
                   file=sys.stderr)  # fmt: skip
        with bar:
            while self.step < self.total_steps and not self.stop_training:
                epoch, position = divmod(self.step, self.steps_per_epoch)
                if epoch != order_epoch:
                    order, order_epoch = self._epoch_order(epoch, num_samples), epoch
                indices = order[position * cfg.batch_size : (position + 1) * cfg.batch_size]
                window_samples += len(indices)
                self._train_step(train_set, indices)
                self.step += 1
                bar.update()
                loss_now = None
                if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                    totals = distributed.all_reduce_sum(self._window.clone())
                    seconds = time.perf_counter() - window_start
                    last_loss = loss_now = float(totals[0] / totals[1])
                    record = {"step": self.step, "epoch": round(self.epoch, 4), "split": "train", "loss": last_loss,
                              "lr": self.optimizer.param_groups[0]["lr"], "samples_per_s": window_samples / max(seconds, 1e-9)}  # fmt: skip
                    self._record(log, record)
                    bar.set_postfix(loss=f"{last_loss:.4f}", samples_per_s=f"{record['samples_per_s']:.0f}", refresh=False)
                    self._window.zero_()
                    window_start, window_samples = time.perf_counter(), 0
                self._call("on_step_end", loss_now)
                epoch_done = self.step % self.steps_per_epoch == 0
                if epoch_done:
                    self._call("on_epoch_end")
                at_eval = self.step % cfg.eval_every == 0 if cfg.eval_every is not None else epoch_done
                if at_eval or self.step == self.total_steps:
                    val_metrics = self._validate(log)
        self.finished = True
        self._call("on_fit_end")
        seconds = time.perf_counter() - start
        samples = (self.step - start_step) * cfg.batch_size
        if self.run_dir is not None and self.is_main and cfg.plots:
            self._save_plots()
        self._last_fit = FitResult(
            steps=self.step, epochs=self.epoch, seconds=seconds, samples_per_second=samples / max(seconds, 1e-9),
            train_loss=last_loss, val_metrics=val_metrics, stopped_early=self.stop_training, history=self.history,
        )  # fmt: skip
        return self._last_fit

    def _record(self, log: MetricsLog, record: dict[str, Any]) -> None:
        self.history.append(record)
        log.write(record)

    def _validate(self, log: MetricsLog) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if self.val_data is not None:
            metrics = {f"val_{k}": v for k, v in self.evaluate(self.val_data).items()}
        self._call("on_evaluate", metrics)  # callbacks may add metrics (SurrogateLossStopping)
        if metrics:
            self._record(log, {"step": self.step, "epoch": round(self.epoch, 4), "split": "val", **metrics})
        return metrics

    def _train_step(self, train_set: Dataset, indices: torch.Tensor) -> None:
        cfg = self.config
        world, rank = distributed.world_size(), distributed.rank()
        model = self._train_model
        model.train()
        micro_batches = [m for m in indices.tensor_split(cfg.grad_accumulation) if len(m) >= world]
        batch_size = sum(len(m) for m in micro_batches)
        for i, micro in enumerate(micro_batches):
            shard = micro.tensor_split(world)[rank]
            inputs, targets, *rest = _to(_fetch(train_set, shard), self.device)
            if self.augment is not None:
                inputs, targets = self.augment(inputs, targets, self.generator)
            last = i == len(micro_batches) - 1
            sync = contextlib.nullcontext() if last or world == 1 else model.no_sync()
            with sync:
                outputs, targets = self.forward(model, [inputs, targets, *rest])
                loss = self.loss_fn(outputs, targets)
                # Each shard's mean loss, weighted by its share of the batch; DDP then averages over
                # the `world` processes, so the gradient is that of the batch's mean loss.
                objective = loss * (len(shard) * world / batch_size)
                if last and self.penalty is not None:
                    objective = objective + self.penalty(self.model)  # once per step, equal on every rank
                objective.backward()
            self._window[0] += loss.detach().double() * len(shard)
            self._window[1] += len(shard)
        if cfg.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _save_plots(self) -> None:
        try:
            plot_curves(read_metrics(self.run_dir / "metrics.jsonl"), self.run_dir / "curves.png")
        except ImportError as error:
            print(f"replearn: curves not saved: {error}", file=sys.stderr)

    # ------------------------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def evaluate(self, data: Any, *, metrics: dict[str, MetricFn] | None = None, with_loss: bool = True) -> dict[str, float]:
        """Mean loss and metrics over `data`, in evaluation mode (each process takes a shard; summed over all).

        Args:
            data: a Dataset or tuple of tensors.
            metrics: `name -> fn(outputs, targets)`; default the trainer's metrics.
            with_loss: include the loss under "loss".

        Returns:
            {"loss": ..., name: ...} averaged over the samples.
        """
        dataset = as_dataset(data)
        metrics = self.metrics if metrics is None else metrics
        names = (["loss"] if with_loss else []) + list(metrics)
        sums = torch.zeros(len(names) + 1, dtype=torch.float64, device=self.device)
        shard = torch.arange(len(dataset)).tensor_split(distributed.world_size())[distributed.rank()]
        was_training = self.model.training
        self.model.eval()
        try:
            for chunk in shard.split(max(self.config.batch_size, 256)):
                batch = _to(_fetch(dataset, chunk), self.device)
                outputs, targets = self.forward(self.model, batch)
                values = ([self.loss_fn(outputs, targets)] if with_loss else []) + [fn(outputs, targets) for fn in metrics.values()]
                for j, value in enumerate(values):
                    sums[j] += value.double() * len(chunk)
                sums[-1] += len(chunk)
        finally:
            self.model.train(was_training)
        sums = distributed.all_reduce_sum(sums)
        return {name: float(sums[j] / sums[-1]) for j, name in enumerate(names)}

    @torch.no_grad()
    def predict(self, data: Any) -> torch.Tensor:
        """The model's outputs on every sample of `data` (inputs only, or (inputs, targets)), in order.

        Runs on this process alone (no sharding).
        """
        dataset = as_dataset(data)
        was_training = self.model.training
        self.model.eval()
        try:
            outputs = [self.model(_to(_fetch(dataset, chunk), self.device)[0]) for chunk in torch.arange(len(dataset)).split(max(self.config.batch_size, 256))]
        finally:
            self.model.train(was_training)
        return torch.cat(outputs)

    def summary(self) -> str:
        """One line about the last fit: steps, time, throughput, losses and metrics."""
        result = self._last_fit
        if result is None:
            return "not trained yet"
        parts = [f"{result.steps} steps ({result.epochs:.1f} epochs) in {result.seconds:.1f} s, {result.samples_per_second:.0f} samples/s"]
        if result.train_loss is not None:
            parts.append(f"train loss {result.train_loss:.4f}")
        parts += [f"{k} {v:.4f}" for k, v in result.val_metrics.items()]
        if result.stopped_early:
            parts.append("stopped early")
        return ", ".join(parts)
