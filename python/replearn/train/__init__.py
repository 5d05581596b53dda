"""Training: the Trainer, its config and callbacks, checkpoints, regularization and the recipes.

    from replearn.train import Trainer, TrainConfig, EarlyStopping
    trainer = Trainer(model, optimizer, TrainConfig(epochs=5, output_dir="run"), callbacks=[EarlyStopping()])
    trainer.fit((x_train, y_train), (x_val, y_val))

`replearn train <recipe>` runs a registered recipe (recipes.py) through the same Trainer.
"""

from . import distributed, regularize
from .bptt import detach_state, truncated_bptt
from .callbacks import Callback, Checkpointer, EarlyStopping, LRScheduler, StopBelow, SurrogateLossStopping, zero_one_error
from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig, with_overrides
from .optimizers import OPTIMIZERS, make_optimizer
from .recipes import DEFAULT_RECIPE, RecipeConfig, evaluate_run, get_recipe, list_recipes, register_recipe, run_recipe, small_cnn
from . import density  # registers the density recipes (flow-moons)
from .retrain import RetrainResult, retrain_on_train_and_val
from . import zoo_recipes  # noqa: E402,F401  (registers zoo-image, wavenet-signal, bytenet-reverse)
from .trainer import FitResult, Trainer, accuracy

__all__ = [
    "Callback",
    "Checkpointer",
    "DEFAULT_RECIPE",
    "EarlyStopping",
    "FitResult",
    "LRScheduler",
    "OPTIMIZERS",
    "RecipeConfig",
    "RetrainResult",
    "StopBelow",
    "SurrogateLossStopping",
    "TrainConfig",
    "Trainer",
    "accuracy",
    "detach_state",
    "distributed",
    "evaluate_run",
    "get_recipe",
    "list_recipes",
    "load_checkpoint",
    "make_optimizer",
    "register_recipe",
    "regularize",
    "retrain_on_train_and_val",
    "run_recipe",
    "save_checkpoint",
    "small_cnn",
    "truncated_bptt",
    "with_overrides",
    "zero_one_error",
]
