"""Train/validation/test splits of a labelled set: one container and one seeded, stratified splitter.

    splits = load_mnist(seed=0)                  # every image loader returns a Splits
    x, y = splits.train                          # (N, 1, 28, 28) float32, (N,) int64
    trainer.fit(splits.train, splits.val)
"""

from __future__ import annotations

import dataclasses

import torch

__all__ = ["Splits", "stratified_split"]


@dataclasses.dataclass(frozen=True)
class Splits:
    """Inputs and integer labels of the three parts of a dataset (a part may be empty).

    Attributes:
        x_train, y_train: training inputs (N_train, ...) and labels (N_train,) int64.
        x_val, y_val: validation part (possibly 0 rows).
        x_test, y_test: held-out test part.
        num_classes: number of classes.
        source: where the data come from, for run summaries.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    source: str = ""

    @property
    def train(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x_train, self.y_train

    @property
    def val(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The validation part, or None when it is empty."""
        return (self.x_val, self.y_val) if len(self.y_val) else None

    @property
    def test(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x_test, self.y_test

    @property
    def num_features(self) -> int:
        """Values per input (64 for the 8×8 digits)."""
        return self.x_train[0].numel()

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def stratified_split(labels: torch.Tensor, val_fraction: float, test_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Index tensors (train, val, test) that keep each class's share in every part.

    Each class's indices are shuffled with a generator seeded by `seed`; the first round(n·test)
    go to test, the next round(n·val) to validation, the rest to training. Parts are sorted.

    Raises:
        ValueError: fractions outside [0, 1) or summing to 1 or more.
    """
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"stratified_split: argument '{name}' expected a value in [0, 1) but got {value}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(f"stratified_split: val_fraction + test_fraction must be below 1 but is {val_fraction + test_fraction}")
    generator = torch.Generator().manual_seed(seed)
    parts: tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]] = ([], [], [])
    for label in torch.unique(labels):
        members = torch.nonzero(labels == label).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        num_test = round(len(members) * test_fraction)
        num_val = round(len(members) * val_fraction)
        parts[2].append(members[:num_test])
        parts[1].append(members[num_test : num_test + num_val])
        parts[0].append(members[num_test + num_val :])
    train, val, test = (torch.sort(torch.cat(p)).values for p in parts)
    return train, val, test
