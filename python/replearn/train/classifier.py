"""Train a classifier on a held-out split: the first, deliberately small training loop of replearn.

    config = ClassifierConfig(norm="layer")
    result = train_classifier(config)          # scikit-learn's digits, MLP with replearn norms
    print(result.test_accuracy)

The loop is plain minibatch training — shuffle, forward, cross-entropy, backward, AdamW step, a
cosine learning-rate decay — with a tqdm progress bar, then one evaluation on the test split. It is
what `replearn train` runs. The Trainer of the training issue (checkpoints, callbacks, metrics
files, distributed runs) will replace it; until then it stays this size on purpose.
"""

from __future__ import annotations

import dataclasses
import time

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..data.digits import Digits, load_digits
from ..nn.create_norm import NORM_KINDS
from ..nn.mlp import MLP

__all__ = ["ClassifierConfig", "TrainResult", "accuracy", "train_classifier"]


@dataclasses.dataclass
class ClassifierConfig:
    """Everything a run depends on; two runs with equal configs give equal results on the CPU."""

    epochs: int = 20
    """Passes over the training split (23 steps each at the default batch size)."""
    batch_size: int = 64
    """Images per step; batch norm needs at least 2 (a final batch of 1 is dropped)."""
    lr: float = 3e-3
    """Peak AdamW learning rate, decayed to 0 along a cosine over the run."""
    weight_decay: float = 1e-4
    """AdamW's decoupled weight decay."""
    seed: int = 0
    """Seeds the weights, the shuffling and the train/test split."""
    hidden_sizes: tuple[int, ...] = (128, 128)
    """Width of each hidden layer of the MLP."""
    norm: str = "batch"
    """Normalization after each hidden layer: one of batch, layer, rms, group (8 groups)."""
    test_fraction: float = 0.2
    """Share of the 1,797 digits held out for the test accuracy (360 images)."""
    num_threads: int = 1
    """CPU threads for the run (torch's intra-op count, restored afterwards). Tensors of 64×128 are
    too small for threads to pay, and on a busy machine every parallel region waits for a
    descheduled thread: on 2 loaded cores 5 epochs took 0.1 s with 1 thread and 12 s with 2,
    replearn's norms and torch's alike."""
    progress: bool = True
    """Show a progress bar (on stderr)."""

    def __post_init__(self) -> None:
        self.hidden_sizes = tuple(self.hidden_sizes)
        for name in ("epochs", "batch_size", "num_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"ClassifierConfig: '{name}' expected a positive integer but got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"ClassifierConfig: 'lr' expected a positive number but got {self.lr}")
        if self.norm not in NORM_KINDS:
            raise ValueError(f"ClassifierConfig: 'norm' expected one of {', '.join(NORM_KINDS)} but got {self.norm!r}")
        if not self.hidden_sizes or min(self.hidden_sizes) < 1:
            raise ValueError(f"ClassifierConfig: 'hidden_sizes' expected positive widths but got {self.hidden_sizes}")


@dataclasses.dataclass
class TrainResult:
    """What a run produced.

    Attributes:
        model: the trained model, in evaluation mode.
        test_accuracy: share of the test split classified correctly.
        test_correct: number of test images classified correctly.
        test_size: number of test images.
        epoch_losses: mean training loss of each epoch.
        seconds: wall time of the training loop and evaluation (data loading excluded).
    """

    model: nn.Module
    test_accuracy: float
    test_correct: int
    test_size: int
    epoch_losses: list[float]
    seconds: float


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
    """Share and number of the rows of x whose arg-max logit is their label (model in eval mode)."""
    model.eval()
    correct = int((model(x).argmax(dim=1) == y).sum())
    return correct / len(y), correct


def train_classifier(config: ClassifierConfig, data: Digits | None = None) -> TrainResult:
    """Trains an MLP with replearn's norm layers on the digits and measures its test accuracy.

    Args:
        config: the run's settings.
        data: the split to use; by default `load_digits(config.test_fraction, config.seed)`.

    Returns:
        The trained model, its test accuracy and the loss curve.
    """
    if data is None:
        data = load_digits(config.test_fraction, seed=config.seed)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.num_threads)
    try:
        return _train(config, data)
    finally:
        torch.set_num_threads(previous_threads)


def _train(config: ClassifierConfig, data: Digits) -> TrainResult:
    torch.manual_seed(config.seed)  # the initial weights
    shuffle = torch.Generator().manual_seed(config.seed)
    model = MLP(data.num_features, config.hidden_sizes, data.num_classes, norm=config.norm)
    # TODO(optim issue): replearn.optim.AdamW once it exists.
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    num_train = len(data.y_train)
    # A last batch of one image would make batch norm's batch variance undefined: drop it.
    steps_per_epoch = num_train // config.batch_size + (num_train % config.batch_size > 1)
    total_steps = config.epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)

    start = time.perf_counter()
    epoch_losses: list[float] = []
    with tqdm(total=total_steps, desc=f"train {config.norm} norm", unit="step", disable=not config.progress) as bar:
        for epoch in range(config.epochs):
            model.train()
            order = torch.randperm(num_train, generator=shuffle)
            loss_sum = 0.0
            for step in range(steps_per_epoch):
                index = order[step * config.batch_size : (step + 1) * config.batch_size]
                loss = F.cross_entropy(model(data.x_train[index]), data.y_train[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                loss_sum += loss.item()
                bar.update()
            epoch_losses.append(loss_sum / steps_per_epoch)
            bar.set_postfix(epoch=epoch + 1, loss=f"{epoch_losses[-1]:.4f}")

    test_accuracy, correct = accuracy(model, data.x_test, data.y_test)
    return TrainResult(
        model=model,
        test_accuracy=test_accuracy,
        test_correct=correct,
        test_size=len(data.y_test),
        epoch_losses=epoch_losses,
        seconds=time.perf_counter() - start,
    )
