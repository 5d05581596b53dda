"""The `replearn` command (also `python -m replearn`).

    replearn train                        # MLP with batch norm on scikit-learn's digits
    replearn train --norm layer --epochs 30 --lr 1e-3 --seed 1

`replearn train` runs `replearn.train.train_classifier` and prints the test accuracy. Its defaults
are those of `ClassifierConfig`: an option left out keeps the config's default, so the two cannot
drift apart. The training issue turns `train` into recipes (`replearn train <recipe> --set k=v`).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Callable, Sequence

from . import __version__
from .nn.create_norm import NORM_KINDS

__all__ = ["build_parser", "main", "parse_train_config"]


def _positive(kind: Callable[[str], int | float]) -> Callable[[str], int | float]:
    """An argparse type: `kind(text)` when it is > 0, otherwise a clear error."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}")
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def build_parser() -> argparse.ArgumentParser:
    """The parser of the `replearn` command and its subcommands."""
    parser = argparse.ArgumentParser(prog="replearn", description="replearn: representation learning on a native core.")
    parser.add_argument("--version", action="version", version=f"replearn {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser(
        "train",
        help="train an MLP with replearn's norm layers on scikit-learn's digits",
        description="Train an MLP (Linear → Norm → ReLU blocks) on scikit-learn's bundled 8×8 digits "
        "and print its accuracy on a held-out 20% split. Options left out keep the defaults shown.",
    )
    # Import here: the config pulls in torch and tqdm, which `replearn --version` does not need.
    from .train.classifier import ClassifierConfig

    defaults = ClassifierConfig()
    train.add_argument("--epochs", type=_positive(int), help=f"passes over the training split (default {defaults.epochs})")
    train.add_argument("--batch-size", type=_positive(int), help=f"images per step (default {defaults.batch_size})")
    train.add_argument("--lr", type=_positive(float), help=f"peak AdamW learning rate (default {defaults.lr})")
    train.add_argument("--seed", type=int, help=f"seed of the weights, shuffling and split (default {defaults.seed})")
    train.add_argument("--norm", choices=NORM_KINDS, help=f"norm after each hidden layer (default {defaults.norm})")
    train.add_argument(
        "--hidden-sizes", type=_positive(int), nargs="+", metavar="WIDTH",
        help=f"hidden layer widths (default {' '.join(map(str, defaults.hidden_sizes))})",
    )  # fmt: skip
    train.add_argument(
        "--threads", dest="num_threads", type=_positive(int),
        help=f"CPU threads (default {defaults.num_threads}: the tensors are too small for more)",
    )  # fmt: skip
    train.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="hide the progress bar")
    train.set_defaults(run=_run_train)
    return parser


def parse_train_config(args: argparse.Namespace) -> "ClassifierConfig":  # noqa: F821
    """The `ClassifierConfig` of parsed `replearn train` arguments: given options over the defaults."""
    from .train.classifier import ClassifierConfig

    fields = {field.name for field in dataclasses.fields(ClassifierConfig)}
    given = {name: value for name, value in vars(args).items() if name in fields and value is not None}
    return ClassifierConfig(**given)


def _run_train(args: argparse.Namespace) -> int:
    from .train.classifier import train_classifier

    config = parse_train_config(args)
    hidden = "-".join(map(str, config.hidden_sizes))
    print(
        f"replearn train: digits, MLP 64-{hidden}-10 with {config.norm} norm, {config.epochs} epochs, "
        f"batch {config.batch_size}, lr {config.lr}, seed {config.seed}",
        flush=True,
    )
    result = train_classifier(config)
    print(
        f"test accuracy: {result.test_accuracy:.4f} ({result.test_correct}/{result.test_size})  "
        f"final train loss {result.epoch_losses[-1]:.4f}  {result.seconds:.1f} s"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the `replearn` command with `argv` (default: the process's arguments).

    Returns:
        The exit status: 0 on success; argparse exits with 2 on bad arguments.
    """
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except ValueError as error:  # a bad combination of valid options, e.g. GroupNorm widths
        print(f"replearn {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
