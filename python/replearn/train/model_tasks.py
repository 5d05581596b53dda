"""Learning checks of the model zoo, one function per task, each taking a config dataclass:

    train_image_model(ImageTaskConfig(model="resnet18"))      # digits as 1×8×8 images
    train_wavenet_signal(WaveNetTaskConfig())                 # next-sample μ-law prediction
    train_bytenet_reversal(ByteNetTaskConfig())               # character-level string reversal

Each is a plain loop (AdamW, cosine decay, fixed seed, one CPU thread by default) that returns the
model and its numbers; the tests hold them to stated thresholds. They are meant to become
`replearn train` recipes once the Trainer lands (checkpoints, metrics files and progress bars then
come from it; this file keeps only the task: data, model, loss, metric).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .. import models
from ..data.digits import load_digits
from ..data.sequences import decode_bytes, encode_bytes, periodic_signal, reversal_pairs
from ..models.efficientnet import MBConvStage
from ..models.wavenet import mu_law_encode
from ..optim import AdamW
from .trainer import accuracy

__all__ = [
    "DIGITS_VARIANTS",
    "ByteNetTaskConfig",
    "ImageTaskConfig",
    "TaskResult",
    "WaveNetTaskConfig",
    "train_bytenet_reversal",
    "train_image_model",
    "train_wavenet_signal",
]


@dataclasses.dataclass
class TaskResult:
    """model: trained, in evaluation mode; losses: the training loss of every step; metric: the
    task's score (test accuracy, final loss, exact-match rate), named by `metric_name`."""

    model: nn.Module
    losses: list[float]
    metric: float
    metric_name: str


@contextlib.contextmanager
def _threads(count: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _optimize(model: nn.Module, steps: int, lr: float, weight_decay: float, loss_of_step: Callable[[int], torch.Tensor]) -> list[float]:
    """`steps` AdamW steps on loss_of_step(step), the learning rate decayed to 0 along a cosine."""
    optimizer = AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps)))
    losses = []
    model.train()
    for step in range(steps):
        loss = loss_of_step(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


# ------------------------------------------------------------------------------ digits as images


# Small variants of each image family for 8×8 digits: config overrides of the registered model.
DIGITS_VARIANTS: dict[str, dict] = {
    # ResNet: 3×3/1 stem without max-pool (the CIFAR stem), one basic block per stage, widths 16…128.
    "resnet18": {"small_input": True, "base_width": 16, "layers": (1, 1, 1, 1)},
    # ConvNeXt: 1×1 "patches" (an 8×8 image has no room for 4×4 ones), three stages of one block.
    "convnext_tiny": {"depths": (1, 1, 1), "dims": (16, 32, 64), "patch_size": 1, "drop_path_rate": 0.0},
    # EfficientNet: stride-1 stem, B0's first three MBConv stages at half width, a 256-wide head,
    # BN momentum 0.1 (the reference's 0.01 needs far more steps than this run has).
    "efficientnet_b0": {
        "stem_stride": 1, "width_mult": 0.5, "head_channels": 256, "dropout": 0.0, "drop_path_rate": 0.0, "bn_momentum": 0.1,
        "stages": (MBConvStage(1, 3, 1, 16, 1), MBConvStage(4, 3, 2, 24, 1), MBConvStage(4, 5, 2, 40, 1)),
    },
}  # fmt: skip


@dataclasses.dataclass
class ImageTaskConfig:
    """A zoo image model on scikit-learn's digits, each one a 1×8×8 image."""

    model: str = "resnet18"
    """A registered image model."""
    model_kwargs: dict | None = None
    """Config overrides of the model; by default its small variant in DIGITS_VARIANTS."""
    epochs: int = 8
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    test_fraction: float = 0.2
    num_threads: int = 1


def train_image_model(config: ImageTaskConfig) -> TaskResult:
    """Trains the model on the training split; the metric is the test accuracy."""
    torch.manual_seed(config.seed)
    data = load_digits(config.test_fraction, seed=config.seed)
    x_train, x_test = data.x_train.view(-1, 1, 8, 8), data.x_test.view(-1, 1, 8, 8)
    with _threads(config.num_threads):
        kwargs = DIGITS_VARIANTS.get(config.model, {}) if config.model_kwargs is None else config.model_kwargs
        model = models.create(config.model, num_classes=data.num_classes, in_channels=1, **kwargs)
        generator = torch.Generator().manual_seed(config.seed)
        per_epoch = len(x_train) // config.batch_size  # a last partial batch is dropped (BN needs ≥ 2)
        order: list[torch.Tensor] = []

        def loss_of_step(step: int) -> torch.Tensor:
            if step % per_epoch == 0:
                order[:] = torch.randperm(len(x_train), generator=generator).split(config.batch_size)[:per_epoch]
            batch = order[step % per_epoch]
            return F.cross_entropy(model(x_train[batch]), data.y_train[batch])

        losses = _optimize(model, config.epochs * per_epoch, config.lr, config.weight_decay, loss_of_step)
        model.eval()
        test_accuracy = float(accuracy(model(x_test), data.y_test))
    return TaskResult(model, losses, test_accuracy, "test_accuracy")


# ------------------------------------------------------------------------------ WaveNet


@dataclasses.dataclass
class WaveNetTaskConfig:
    """WaveNet predicting the next μ-law code of `periodic_signal`."""

    period: int = 32
    """Samples per period of the waveform; the model's receptive field should cover it."""
    window: int = 128
    """Samples per training sequence (random crops of the signal)."""
    batch_size: int = 8
    steps: int = 200
    lr: float = 1e-2
    weight_decay: float = 0.0
    seed: int = 0
    num_threads: int = 1
    model_kwargs: dict = dataclasses.field(
        default_factory=lambda: {"layers_per_stack": 5, "stacks": 1, "residual_channels": 16, "gate_channels": 16, "skip_channels": 32}
    )
    """A small WaveNet: dilations 1 … 16, a receptive field of 33 samples."""


def train_wavenet_signal(config: WaveNetTaskConfig) -> TaskResult:
    """Trains on random windows of the signal; the metric is the mean loss (nats per sample) of
    the last 10 steps. Uniform guessing scores ln 256 ≈ 5.55."""
    torch.manual_seed(config.seed)
    codes = mu_law_encode(periodic_signal(config.period * 64 + config.window, config.period))  # (N,)
    with _threads(config.num_threads):
        model = models.create("wavenet", **config.model_kwargs)
        generator = torch.Generator().manual_seed(config.seed)

        def loss_of_step(step: int) -> torch.Tensor:
            starts = torch.randint(0, len(codes) - config.window, (config.batch_size,), generator=generator)
            batch = torch.stack([codes[s : s + config.window] for s in starts.tolist()])  # (B, window)
            return model.loss(batch)

        losses = _optimize(model, config.steps, config.lr, config.weight_decay, loss_of_step)
    return TaskResult(model, losses, sum(losses[-10:]) / 10, "final_loss")


# ------------------------------------------------------------------------------ ByteNet


@dataclasses.dataclass
class ByteNetTaskConfig:
    """ByteNet learning to reverse short strings, a character-level sequence-to-sequence task."""

    min_length: int = 2
    max_length: int = 5
    alphabet: str = "abcdef"
    train_pairs: int = 2000
    test_pairs: int = 100
    batch_size: int = 32
    steps: int = 400
    lr: float = 3e-3
    weight_decay: float = 0.0
    seed: int = 0
    num_threads: int = 1
    model_kwargs: dict = dataclasses.field(
        default_factory=lambda: {
            "hidden_size": 32,
            "encoder_dilations": (1, 2, 4, 1, 2, 4),
            "decoder_dilations": (1, 2, 4),
            "unfold_a": 1.0,
            "unfold_b": 1.0,
        }
    )
    """A small ByteNet; |t̂| = |s| + 1 fits the reversal plus EOS exactly. Reversal needs the encoder
    to move each character by a distance that depends on its position and the length (a copy needs
    none), hence two cycles of dilations in the encoder (field 29) and one in the decoder."""


def train_bytenet_reversal(config: ByteNetTaskConfig) -> TaskResult:
    """Trains on random pairs; the metric is the share of held-out strings reversed exactly by
    greedy dynamic unfolding."""
    torch.manual_seed(config.seed)
    train = reversal_pairs(config.train_pairs, config.min_length, config.max_length, config.alphabet, seed=config.seed)
    test = reversal_pairs(config.test_pairs, config.min_length, config.max_length, config.alphabet, seed=config.seed + 1)
    with _threads(config.num_threads):
        model = models.create("bytenet", **config.model_kwargs)
        generator = torch.Generator().manual_seed(config.seed)

        def loss_of_step(step: int) -> torch.Tensor:
            batch = [train[i] for i in torch.randint(0, len(train), (config.batch_size,), generator=generator).tolist()]
            source, source_lengths = encode_bytes([s for s, _ in batch])
            target, _ = encode_bytes([t for _, t in batch], append_eos=True)
            return model.loss(source, target, source_lengths)

        losses = _optimize(model, config.steps, config.lr, config.weight_decay, loss_of_step)
        source, source_lengths = encode_bytes([s for s, _ in test])
        outputs = decode_bytes(model.generate(source, source_lengths))
    exact = sum(out == target for out, (_, target) in zip(outputs, test)) / len(test)
    return TaskResult(model, losses, exact, "exact_match")
